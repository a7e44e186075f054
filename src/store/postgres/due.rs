//! The retry index on PostgreSQL: the partial indexes `retry_index (next_attempt_at_ms, id)`
//! and `webhook_due (webhook_id, next_attempt_at_ms, id)` over the deliveries that are not
//! final. Moving an entry is updating `next_attempt_at_ms`, so the index and the delivery
//! can never disagree.

use super::{rows, PgStore};
use crate::ids::{DeliveryId, WebhookId};
use crate::retry::RetrySchedule;
use crate::store::{Change, ClampReport, DueRead, StoreError};

fn delivery_id(text: &str) -> Result<DeliveryId, StoreError> {
    text.parse().map_err(|_| StoreError::Corrupt {
        table: "deliveries",
        reason: format!("bad id {text:?}"),
    })
}

/// An index key `(due, id)` as SQL parameters; `None` (from the start) sorts before all.
fn key_params(after: Option<(u64, DeliveryId)>) -> (i64, String) {
    match after {
        None => (-1, String::new()),
        Some((due, id)) => (rows::ms(due), id.to_string()),
    }
}

impl PgStore {
    /// See [`crate::store::Store::clamp_far_due`].
    pub fn clamp_far_due(
        &self,
        now_ms: u64,
        schedule: &RetrySchedule,
        floor_ms: u64,
    ) -> Result<ClampReport, StoreError> {
        let floor = rows::ms(now_ms.saturating_add(floor_ms));
        let store = self.clone();
        let schedule = schedule.clone();
        self.block(async move {
            let rows = store
                .conn()
                .await?
                .query(
                    "SELECT d.id, d.next_attempt_at_ms, d.scheduled_attempts, a.retry_after_ms \
                     FROM deliveries d LEFT JOIN attempts a ON a.delivery_id = d.id \
                     AND a.number = d.attempt_count WHERE d.next_attempt_at_ms > $1",
                    &[&floor],
                )
                .await?;
            let mut moves: Vec<(String, i64, i64)> = Vec::new();
            for row in rows {
                let due: i64 = row.try_get(1)?;
                let scheduled = u32::try_from(row.try_get::<_, i32>(2)?).unwrap_or(0);
                let retry_after = row.try_get::<_, Option<i64>>(3)?.map(rows::from_ms);
                let step = crate::retry::longest_wait(&schedule, scheduled, retry_after);
                let to = rows::ms(now_ms.saturating_add(step));
                if due > to {
                    moves.push((row.try_get(0)?, due, to));
                }
            }
            if moves.is_empty() {
                return Ok(ClampReport::default());
            }
            store
                .write_txn(move |txn| {
                    Box::pin(async move {
                        let mut report = ClampReport::default();
                        let mut changes = Vec::new();
                        for (id, due, to) in moves {
                            // Moved or finished since the scan: its new time is its own.
                            if let Some(row) = txn
                                .query_opt(
                                    "UPDATE deliveries SET next_attempt_at_ms = $3 \
                                     WHERE id = $1 AND next_attempt_at_ms = $2 \
                                     AND status = ANY($4) RETURNING webhook_id",
                                    &[&id, &due, &to, &rows::not_final()],
                                )
                                .await?
                            {
                                let webhook: WebhookId = row
                                    .try_get::<_, &str>(0)?
                                    .parse()
                                    .map_err(|_| StoreError::Corrupt {
                                        table: "deliveries",
                                        reason: "bad webhook id".into(),
                                    })?;
                                report.moved += 1;
                                report.max_shift_ms =
                                    report.max_shift_ms.max(rows::from_ms(due - to));
                                changes.push(Change::Index {
                                    webhook,
                                    delivery: delivery_id(&id)?,
                                    from: Some(rows::from_ms(due)),
                                    to: Some(rows::from_ms(to)),
                                });
                            }
                        }
                        Ok((report, changes))
                    })
                })
                .await
        })
    }

    /// See [`crate::store::Store::due_entries`].
    pub fn due_entries(
        &self,
        after: Option<(u64, DeliveryId)>,
        due_before_ms: u64,
        limit: usize,
    ) -> Result<Vec<(u64, DeliveryId)>, StoreError> {
        let store = self.clone();
        let (due, id) = key_params(after);
        let before = rows::ms(due_before_ms);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.block(async move {
            let rows = store
                .conn()
                .await?
                .query(
                    "SELECT next_attempt_at_ms, id FROM deliveries \
                     WHERE next_attempt_at_ms IS NOT NULL \
                     AND (next_attempt_at_ms, id) > ($1, $2) AND next_attempt_at_ms < $3 \
                     ORDER BY next_attempt_at_ms, id LIMIT $4",
                    &[&due, &id, &before, &limit],
                )
                .await?;
            rows.iter()
                .map(|r| Ok((rows::from_ms(r.try_get(0)?), delivery_id(r.try_get(1)?)?)))
                .collect()
        })
    }

    /// See [`crate::store::Store::webhook_due_entries`]: one statement for all the reads.
    pub fn webhook_due_entries(
        &self,
        asks: &[DueRead],
    ) -> Result<Vec<Vec<(u64, DeliveryId)>>, StoreError> {
        let store = self.clone();
        let asks = asks.to_vec();
        self.block(async move {
            let webhooks: Vec<String> = asks.iter().map(|a| a.0.to_string()).collect();
            let (dues, ids): (Vec<i64>, Vec<String>) = asks.iter().map(|a| key_params(a.1)).unzip();
            let limits: Vec<i64> = asks
                .iter()
                .map(|a| i64::try_from(a.2).unwrap_or(i64::MAX))
                .collect();
            let rows = store
                .conn()
                .await?
                .query(
                    "SELECT a.n, d.next_attempt_at_ms, d.id FROM unnest($1::text[], \
                     $2::bigint[], $3::text[], $4::bigint[]) WITH ORDINALITY \
                     AS a(webhook, due, id, lim, n) CROSS JOIN LATERAL \
                     (SELECT next_attempt_at_ms, id FROM deliveries \
                      WHERE webhook_id = a.webhook AND next_attempt_at_ms IS NOT NULL \
                      AND (next_attempt_at_ms, id) > (a.due, a.id COLLATE \"C\") \
                      ORDER BY next_attempt_at_ms, id LIMIT a.lim) d \
                     ORDER BY a.n, d.next_attempt_at_ms, d.id",
                    &[&webhooks, &dues, &ids, &limits],
                )
                .await?;
            let mut answers = vec![Vec::new(); asks.len()];
            for row in rows {
                let n = usize::try_from(row.try_get::<_, i64>(0)?).unwrap_or(0);
                if let Some(answer) = n.checked_sub(1).and_then(|i| answers.get_mut(i)) {
                    answer.push((
                        rows::from_ms(row.try_get(1)?),
                        delivery_id(row.try_get(2)?)?,
                    ));
                }
            }
            Ok(answers)
        })
    }

    /// See [`crate::store::Store::webhook_due_heads`].
    pub fn webhook_due_heads(&self) -> Result<Vec<(WebhookId, u64, DeliveryId)>, StoreError> {
        self.due_heads(None)
    }

    /// The earliest due entry of every webhook that has one, of all webhooks or of `only`.
    pub(super) fn due_heads(
        &self,
        only: Option<Vec<WebhookId>>,
    ) -> Result<Vec<(WebhookId, u64, DeliveryId)>, StoreError> {
        let store = self.clone();
        self.block(async move {
            let conn = store.conn().await?;
            let sql = "SELECT w.id, d.next_attempt_at_ms, d.id FROM webhooks w CROSS JOIN LATERAL \
                 (SELECT next_attempt_at_ms, id FROM deliveries \
                  WHERE webhook_id = w.id AND next_attempt_at_ms IS NOT NULL \
                  ORDER BY next_attempt_at_ms, id LIMIT 1) d";
            let rows = match only {
                None => conn.query(&format!("{sql} ORDER BY w.id"), &[]).await?,
                Some(ids) => {
                    let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
                    conn.query(
                        &format!("{sql} WHERE w.id = ANY($1) ORDER BY w.id"),
                        &[&ids],
                    )
                    .await?
                }
            };
            rows.iter()
                .map(|r| {
                    let webhook: WebhookId =
                        r.try_get::<_, &str>(0)?
                            .parse()
                            .map_err(|_| StoreError::Corrupt {
                                table: "webhooks",
                                reason: "bad id".into(),
                            })?;
                    Ok((
                        webhook,
                        rows::from_ms(r.try_get(1)?),
                        delivery_id(r.try_get(2)?)?,
                    ))
                })
                .collect()
        })
    }

    /// See [`crate::store::Store::pending_count`].
    pub fn pending_count(&self) -> Result<u64, StoreError> {
        let store = self.clone();
        self.block(async move {
            let row = store
                .conn()
                .await?
                .query_one(
                    "SELECT count(*) FROM deliveries WHERE next_attempt_at_ms IS NOT NULL",
                    &[],
                )
                .await?;
            Ok(rows::from_ms(row.try_get(0)?))
        })
    }

    /// See [`crate::store::Store::due_summary`]: for the whole cluster.
    pub fn due_summary(&self, now_ms: u64) -> Result<(u64, u64, Option<u64>), StoreError> {
        let store = self.clone();
        self.block(async move {
            let conn = store.conn().await?;
            due_in(&**conn, now_ms).await
        })
    }

    /// See [`crate::store::Store::postpone`].
    pub fn postpone(&self, id: DeliveryId, now_ms: u64, to_ms: u64) -> Result<bool, StoreError> {
        let store = self.clone();
        self.block(async move {
            store
                .write_txn(move |txn| {
                    Box::pin(async move {
                        let moved = reschedule(txn, id, to_ms, "<=", now_ms).await?;
                        Ok((moved.is_some(), moved.into_iter().collect()))
                    })
                })
                .await
        })
    }

    /// See [`crate::store::Store::resume_held`].
    pub fn resume_held(
        &self,
        held: &[(DeliveryId, u64)],
        now_ms: u64,
    ) -> Result<Vec<DeliveryId>, StoreError> {
        let store = self.clone();
        let held = held.to_vec();
        self.block(async move {
            store
                .write_txn(move |txn| {
                    Box::pin(async move {
                        let mut moved = Vec::new();
                        let mut changes = Vec::new();
                        for (id, until) in held {
                            if let Some(change) = reschedule(txn, id, now_ms, "=", until).await? {
                                moved.push(id);
                                changes.push(change);
                            }
                        }
                        Ok((moved, changes))
                    })
                })
                .await
        })
    }
}

/// Moves a delivery that is not final to `to_ms` if its due time `op` `than` holds (`<=`
/// or `=`); returns the index move.
async fn reschedule(
    txn: &deadpool_postgres::Transaction<'_>,
    id: DeliveryId,
    to_ms: u64,
    op: &'static str,
    than: u64,
) -> Result<Option<Change>, StoreError> {
    let row = txn
        .query_opt(
            &format!(
                "UPDATE deliveries d SET next_attempt_at_ms = $2 FROM (SELECT id, \
                 next_attempt_at_ms AS due FROM deliveries WHERE id = $1 FOR UPDATE) o \
                 WHERE d.id = o.id AND o.due {op} $3 AND d.status = ANY($4) \
                 RETURNING d.webhook_id, o.due"
            ),
            &[
                &id.to_string(),
                &rows::ms(to_ms),
                &rows::ms(than),
                &rows::not_final(),
            ],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let webhook: WebhookId =
        row.try_get::<_, &str>(0)?
            .parse()
            .map_err(|_| StoreError::Corrupt {
                table: "deliveries",
                reason: "bad webhook id".into(),
            })?;
    let due: i64 = row.try_get(1)?;
    Ok(Some(Change::Index {
        webhook,
        delivery: id,
        from: Some(rows::from_ms(due)),
        to: Some(to_ms),
    }))
}

/// (due at or before `now_ms`, due later, the oldest due time if past), over the cluster.
pub(super) async fn due_in<C: tokio_postgres::GenericClient + Sync>(
    conn: &C,
    now_ms: u64,
) -> Result<(u64, u64, Option<u64>), StoreError> {
    let now = rows::ms(now_ms);
    let row = conn
        .query_one(
            "SELECT count(*) FILTER (WHERE next_attempt_at_ms <= $1), \
             count(*) FILTER (WHERE next_attempt_at_ms > $1), min(next_attempt_at_ms) \
             FROM deliveries WHERE next_attempt_at_ms IS NOT NULL",
            &[&now],
        )
        .await?;
    let oldest: Option<i64> = row.try_get(2)?;
    Ok((
        rows::from_ms(row.try_get(0)?),
        rows::from_ms(row.try_get(1)?),
        oldest.filter(|o| *o <= now).map(rows::from_ms),
    ))
}
