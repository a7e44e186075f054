//! PgStore operations on a webhook's lifecycle (issue 15): disabling holds its unfinished
//! deliveries (`status = 'held'`, `next_attempt_at_ms` moved to `held_due_ms`, so they leave
//! the retry index and keep their due order), enabling releases or cancels them.
//!
//! The change moves at most [`HELD_CHUNK`] deliveries; when more are left the webhook gets a
//! `held_sweeps` row and [`PgStore::sweep_held`] moves the rest a chunk per transaction.
//! Locks, always in this order: the webhook row (the change takes it `FOR UPDATE`, a sweep
//! `FOR NO KEY UPDATE SKIP LOCKED`, so ingest's `KEY SHARE` never waits for a sweep and two
//! daemons never sweep one webhook at once), then delivery rows.
//!
//! Invariant (checked by `check`): `held_due_ms` is set exactly when the status is `held`,
//! and then `next_attempt_at_ms` is `NULL`.

use std::sync::Arc;

use super::{lock_webhook, rows, write_webhook, PgStore};
use crate::ids::{DeliveryId, WebhookId};
use crate::store::{
    Change, Lifecycle, LifecycleMove, LifecycleOutcome, StoreError, SweepReport, HELD_CHUNK,
};

type Txn<'t> = deadpool_postgres::Transaction<'t>;

fn parse_delivery(text: &str) -> Result<DeliveryId, StoreError> {
    text.parse().map_err(|_| StoreError::Corrupt {
        table: "deliveries",
        reason: format!("bad id {text:?}"),
    })
}

impl PgStore {
    /// See [`crate::store::Store::set_webhook_lifecycle`].
    pub fn set_webhook_lifecycle(
        &self,
        id: WebhookId,
        change: Lifecycle,
        now_ms: u64,
    ) -> Result<Option<LifecycleOutcome>, StoreError> {
        let store = self.clone();
        self.block(async move {
            let key = store.secrets_key();
            store
                .write_txn(move |txn| {
                    Box::pin(async move {
                        let Some(mut webhook) = lock_webhook(txn, id, key.as_deref()).await? else {
                            return Ok((None, Vec::new()));
                        };
                        let mut changes = Vec::new();
                        let mut deliveries = 0u64;
                        let step = crate::store::apply_lifecycle(&mut webhook, change, now_ms);
                        let wid = id.to_string();
                        let discard = match step {
                            LifecycleMove::Unchanged | LifecycleMove::RecordOnly => None,
                            LifecycleMove::HoldAll => {
                                deliveries = count(txn, "next_attempt_at_ms", &wid).await?;
                                Some(None)
                            }
                            LifecycleMove::ReleaseAll(deliver) => {
                                deliveries = count(txn, "held_due_ms", &wid).await?;
                                // What is held now is what the person discards; anything
                                // held later (a new disable) is not.
                                Some(if deliver {
                                    None
                                } else {
                                    txn.query_opt(
                                        "SELECT id FROM deliveries WHERE webhook_id = $1 \
                                         AND held_due_ms IS NOT NULL ORDER BY id DESC LIMIT 1",
                                        &[&wid],
                                    )
                                    .await?
                                    .map(|r| r.try_get::<_, String>(0))
                                    .transpose()?
                                })
                            }
                        };
                        if let Some(discard) = discard {
                            let pending = pending_sweep(txn, id).await?.flatten();
                            let discard = discard.max(pending);
                            sweep_one(
                                txn,
                                id,
                                webhook.disabled.is_some(),
                                discard,
                                now_ms,
                                &mut changes,
                            )
                            .await?;
                        }
                        let changed = step != LifecycleMove::Unchanged;
                        if changed {
                            write_webhook(txn, &webhook, key.as_deref(), false).await?;
                            changes.push(Change::Webhook {
                                id,
                                webhook: Some(Arc::new(webhook.clone())),
                            });
                        }
                        Ok((
                            Some(LifecycleOutcome {
                                webhook,
                                changed,
                                deliveries,
                            }),
                            changes,
                        ))
                    })
                })
                .await
        })
    }

    /// See [`crate::store::Store::sweep_held`].
    pub fn sweep_held(&self, webhooks: usize, now_ms: u64) -> Result<SweepReport, StoreError> {
        let store = self.clone();
        let limit = webhooks.max(1);
        self.block(async move {
            store
                .write_txn(move |txn| {
                    Box::pin(async move {
                        let pending = txn
                            .query(
                                "SELECT webhook_id FROM held_sweeps ORDER BY webhook_id LIMIT $1",
                                &[&rows::ms(limit as u64 + 1)],
                            )
                            .await?;
                        let mut report = SweepReport {
                            more: pending.len() > limit,
                            ..SweepReport::default()
                        };
                        let mut changes = Vec::new();
                        for row in pending.iter().take(limit) {
                            let wid: String = row.try_get(0)?;
                            let id: WebhookId = wid.parse().map_err(|_| StoreError::Corrupt {
                                table: "held_sweeps",
                                reason: format!("bad webhook id {wid:?}"),
                            })?;
                            // Skipped while a lifecycle change or another daemon's sweep
                            // holds the webhook: later.
                            let Some(w) = txn
                                .query_opt(
                                    "SELECT disabled IS NOT NULL FROM webhooks WHERE id = $1 \
                                     FOR NO KEY UPDATE SKIP LOCKED",
                                    &[&wid],
                                )
                                .await?
                            else {
                                let exists = txn
                                    .query_opt("SELECT 1 FROM webhooks WHERE id = $1", &[&wid])
                                    .await?
                                    .is_some();
                                // Deleted: its unfinished deliveries are cancelled, one
                                // daemon at a time (the sweep's row).
                                let mine = !exists
                                    && txn
                                        .query_opt(
                                            "SELECT 1 FROM held_sweeps WHERE webhook_id = $1 \
                                             FOR UPDATE SKIP LOCKED",
                                            &[&wid],
                                        )
                                        .await?
                                        .is_some();
                                if mine {
                                    let (moved, left) =
                                        sweep_deleted(txn, id, now_ms, &mut changes).await?;
                                    report.moved += moved;
                                    report.more |= left;
                                } else {
                                    report.more = true;
                                }
                                continue;
                            };
                            let disabled: bool = w.try_get(0)?;
                            // Read again under the webhook's lock: the change may have
                            // rewritten it (or the sweep before it finished it).
                            let Some(discard) = pending_sweep(txn, id).await? else {
                                continue;
                            };
                            let (moved, left) =
                                sweep_one(txn, id, disabled, discard, now_ms, &mut changes).await?;
                            report.moved += moved;
                            report.more |= left;
                        }
                        Ok((report, changes))
                    })
                })
                .await
        })
    }

    /// See [`crate::store::Store::hold_chunk`].
    pub fn hold_chunk(&self, id: WebhookId, now_ms: u64) -> Result<bool, StoreError> {
        let store = self.clone();
        self.block(async move {
            let key = store.secrets_key();
            store
                .write_txn(move |txn| {
                    Box::pin(async move {
                        let Some(webhook) = lock_webhook(txn, id, key.as_deref()).await? else {
                            return Ok((false, Vec::new()));
                        };
                        if webhook.disabled.is_none() {
                            return Ok((false, Vec::new()));
                        }
                        let Some(discard) = pending_sweep(txn, id).await? else {
                            return Ok((false, Vec::new()));
                        };
                        let mut changes = Vec::new();
                        let (_, more) =
                            sweep_one(txn, id, true, discard, now_ms, &mut changes).await?;
                        Ok((more, changes))
                    })
                })
                .await
        })
    }

    /// Records a sweep for every webhook whose deliveries are not where its state says (an
    /// enabled one with held deliveries, a disabled one with due ones, a deleted one with
    /// unfinished ones): what a copy from
    /// another store (`migrate`) brings without the sweeps it had. Returns how many it
    /// recorded. A discard that was under way becomes a release (nothing is cancelled that
    /// was not cancelled in the source).
    ///
    /// # Errors
    /// [`StoreError`] when the statement fails.
    pub fn resume_sweeps(&self) -> Result<u64, StoreError> {
        let store = self.clone();
        self.block(async move {
            let conn = store.conn().await?;
            let live = conn
                .execute(
                    "INSERT INTO held_sweeps (webhook_id) SELECT w.id FROM webhooks w WHERE \
                     (w.disabled IS NULL AND EXISTS (SELECT 1 FROM deliveries d WHERE \
                     d.webhook_id = w.id AND d.held_due_ms IS NOT NULL)) OR (w.disabled IS NOT \
                     NULL AND EXISTS (SELECT 1 FROM deliveries d WHERE d.webhook_id = w.id \
                     AND d.next_attempt_at_ms IS NOT NULL)) ON CONFLICT (webhook_id) DO NOTHING",
                    &[],
                )
                .await?;
            // A deletion whose cancelling was under way.
            let deleted = conn
                .execute(
                    "INSERT INTO held_sweeps (webhook_id) SELECT DISTINCT d.webhook_id FROM \
                     deliveries d WHERE (d.next_attempt_at_ms IS NOT NULL OR d.held_due_ms IS \
                     NOT NULL) AND NOT EXISTS (SELECT 1 FROM webhooks w WHERE w.id = \
                     d.webhook_id) ON CONFLICT (webhook_id) DO NOTHING",
                    &[],
                )
                .await?;
            Ok(live + deleted)
        })
    }

    /// See [`crate::store::Store::hold_delivery`].
    pub fn hold_delivery(&self, id: DeliveryId, now_ms: u64) -> Result<bool, StoreError> {
        let store = self.clone();
        self.block(async move {
            store
                .write_txn(move |txn| {
                    Box::pin(async move {
                        // KEY SHARE on the webhook: a lifecycle change in progress
                        // (FOR UPDATE) commits first, and its `disabled` is what is read.
                        let disabled = txn
                            .query_opt(
                                "SELECT w.disabled IS NOT NULL FROM deliveries d JOIN webhooks w \
                                 ON w.id = d.webhook_id WHERE d.id = $1 FOR KEY SHARE OF w",
                                &[&id.to_string()],
                            )
                            .await?
                            .map(|r| r.try_get::<_, bool>(0))
                            .transpose()?;
                        if disabled != Some(true) {
                            return Ok((false, Vec::new()));
                        }
                        let row = txn
                            .query_opt(
                                "UPDATE deliveries d SET status = 'held', held_due_ms = o.due, \
                                 next_attempt_at_ms = NULL, updated_at_ms = $2 FROM (SELECT \
                                 id, webhook_id, next_attempt_at_ms AS due FROM deliveries \
                                 WHERE id = $1 AND next_attempt_at_ms IS NOT NULL FOR UPDATE) o \
                                 JOIN webhooks w ON w.id = o.webhook_id AND w.disabled IS NOT NULL \
                                 WHERE d.id = o.id RETURNING d.webhook_id, o.due",
                                &[&id.to_string(), &rows::ms(now_ms)],
                            )
                            .await?;
                        let Some(row) = row else {
                            return Ok((false, Vec::new()));
                        };
                        let webhook: WebhookId =
                            row.try_get::<_, &str>(0)?.parse().map_err(|_| {
                                StoreError::Corrupt {
                                    table: "deliveries",
                                    reason: "bad webhook id".into(),
                                }
                            })?;
                        let due: i64 = row.try_get(1)?;
                        Ok((
                            true,
                            vec![Change::Index {
                                webhook,
                                delivery: id,
                                from: Some(rows::from_ms(due)),
                                to: None,
                            }],
                        ))
                    })
                })
                .await
        })
    }

    /// See [`crate::store::Store::held_count`].
    pub fn held_count(&self, webhook: WebhookId) -> Result<u64, StoreError> {
        let store = self.clone();
        self.block(async move {
            let count: i64 = store
                .conn()
                .await?
                .query_one(
                    "SELECT count(*) FROM deliveries WHERE webhook_id = $1 \
                     AND held_due_ms IS NOT NULL",
                    &[&webhook.to_string()],
                )
                .await?
                .try_get(0)?;
            Ok(u64::try_from(count).unwrap_or(0))
        })
    }
}

/// The webhook's deliveries with `column` set (`next_attempt_at_ms`: unfinished, or
/// `held_due_ms`: held).
async fn count(txn: &Txn<'_>, column: &str, webhook: &str) -> Result<u64, StoreError> {
    let n: i64 = txn
        .query_one(
            &format!(
                "SELECT count(*) FROM deliveries WHERE webhook_id = $1 AND {column} IS NOT NULL"
            ),
            &[&webhook],
        )
        .await?
        .try_get(0)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// One chunk (at most [`HELD_CHUNK`] deliveries) of a webhook's sweep: first the held
/// deliveries with an id up to `discard_through` are cancelled; then a disabled webhook's
/// unfinished deliveries are held, an enabled one's held deliveries released. Writes (or
/// deletes) the webhook's `held_sweeps` row. Returns the deliveries moved and whether more
/// may be left. The caller holds the webhook's row.
async fn sweep_one(
    txn: &Txn<'_>,
    webhook: WebhookId,
    disabled: bool,
    discard_through: Option<String>,
    now_ms: u64,
    changes: &mut Vec<Change>,
) -> Result<(u64, bool), StoreError> {
    let chunk = HELD_CHUNK as u64;
    let mut moved = 0u64;
    let mut discard = discard_through;
    if let Some(last) = discard.clone() {
        let n = release_some(
            txn,
            webhook,
            None,
            Some(last),
            false,
            chunk,
            now_ms,
            changes,
        )
        .await?;
        moved += n;
        if n < chunk {
            discard = None;
        }
    }
    let budget = chunk - moved;
    let mut more = discard.is_some() || budget == 0;
    if budget > 0 {
        let n = if disabled {
            hold_some(txn, webhook, budget, now_ms, changes).await?
        } else {
            release_some(
                txn,
                webhook,
                discard.clone(),
                None,
                true,
                budget,
                now_ms,
                changes,
            )
            .await?
        };
        moved += n;
        more |= n == budget;
    }
    record_sweep(txn, webhook, more.then_some(discard)).await?;
    Ok((moved, more))
}

/// The webhook's `held_sweeps` row: `None` when it has no sweep, else its discard boundary
/// (`None` inside: no discard).
async fn pending_sweep(
    txn: &Txn<'_>,
    webhook: WebhookId,
) -> Result<Option<Option<String>>, StoreError> {
    Ok(txn
        .query_opt(
            "SELECT discard_through FROM held_sweeps WHERE webhook_id = $1",
            &[&webhook.to_string()],
        )
        .await?
        .map(|r| r.try_get::<_, Option<String>>(0))
        .transpose()?)
}

/// Writes the webhook's `held_sweeps` row (`Some(discard_through)`: work is left) or deletes
/// it (`None`: the sweep is over).
async fn record_sweep(
    txn: &Txn<'_>,
    webhook: WebhookId,
    left: Option<Option<String>>,
) -> Result<(), StoreError> {
    match left {
        Some(discard) => {
            txn.execute(
                "INSERT INTO held_sweeps (webhook_id, discard_through) VALUES ($1, $2) ON \
                 CONFLICT (webhook_id) DO UPDATE SET discard_through = EXCLUDED.discard_through",
                &[&webhook.to_string(), &discard],
            )
            .await?;
        }
        None => {
            txn.execute(
                "DELETE FROM held_sweeps WHERE webhook_id = $1",
                &[&webhook.to_string()],
            )
            .await?;
        }
    }
    Ok(())
}

/// One chunk (at most [`HELD_CHUNK`]) of a deleted webhook's sweep: its unfinished
/// deliveries (due or held) are cancelled; their log stays. Writes (or deletes) its
/// `held_sweeps` row. Returns the deliveries moved and whether more may be left.
pub(super) async fn sweep_deleted(
    txn: &Txn<'_>,
    webhook: WebhookId,
    now_ms: u64,
    changes: &mut Vec<Change>,
) -> Result<(u64, bool), StoreError> {
    let rows = txn
        .query(
            "UPDATE deliveries d SET status = 'cancelled', next_attempt_at_ms = NULL, \
             held_due_ms = NULL, updated_at_ms = $2 FROM (SELECT id, next_attempt_at_ms AS due \
             FROM deliveries WHERE webhook_id = $1 AND (next_attempt_at_ms IS NOT NULL \
             OR held_due_ms IS NOT NULL) LIMIT $3 FOR UPDATE) o \
             WHERE d.id = o.id RETURNING d.id, o.due",
            &[
                &webhook.to_string(),
                &rows::ms(now_ms),
                &rows::ms(HELD_CHUNK as u64),
            ],
        )
        .await?;
    for row in &rows {
        if let Some(due) = row.try_get::<_, Option<i64>>(1)? {
            changes.push(Change::Index {
                webhook,
                delivery: parse_delivery(row.try_get(0)?)?,
                from: Some(rows::from_ms(due)),
                to: None,
            });
        }
    }
    let moved = rows.len() as u64;
    let more = moved == HELD_CHUNK as u64;
    record_sweep(txn, webhook, more.then_some(None)).await?;
    Ok((moved, more))
}

/// Holds at most `limit` unfinished deliveries of `webhook`, in due order; returns how many.
async fn hold_some(
    txn: &Txn<'_>,
    webhook: WebhookId,
    limit: u64,
    now_ms: u64,
    changes: &mut Vec<Change>,
) -> Result<u64, StoreError> {
    let held = txn
        .query(
            "UPDATE deliveries d SET status = 'held', held_due_ms = o.due, \
             next_attempt_at_ms = NULL, updated_at_ms = $2 FROM (SELECT id, \
             next_attempt_at_ms AS due FROM deliveries WHERE webhook_id = $1 \
             AND next_attempt_at_ms IS NOT NULL ORDER BY next_attempt_at_ms, id LIMIT $3 \
             FOR UPDATE) o WHERE d.id = o.id RETURNING d.id, o.due",
            &[&webhook.to_string(), &rows::ms(now_ms), &rows::ms(limit)],
        )
        .await?;
    for row in &held {
        let due: i64 = row.try_get(1)?;
        changes.push(Change::Index {
            webhook,
            delivery: parse_delivery(row.try_get(0)?)?,
            from: Some(rows::from_ms(due)),
            to: None,
        });
    }
    Ok(held.len() as u64)
}

/// Releases (back into the retry index at the due time each kept: `deliver`) or cancels at
/// most `limit` held deliveries of `webhook` with an id after `after` and up to `through`
/// (`None`: no bound), in due order; returns how many.
#[allow(clippy::too_many_arguments)]
async fn release_some(
    txn: &Txn<'_>,
    webhook: WebhookId,
    after: Option<String>,
    through: Option<String>,
    deliver: bool,
    limit: u64,
    now_ms: u64,
    changes: &mut Vec<Change>,
) -> Result<u64, StoreError> {
    let set = if deliver {
        "status = CASE WHEN d.scheduled_attempts = 0 THEN 'pending' ELSE 'retrying' END, \
         next_attempt_at_ms = d.held_due_ms"
    } else {
        "status = 'cancelled'"
    };
    let sql = format!(
        "UPDATE deliveries d SET {set}, held_due_ms = NULL, updated_at_ms = $2 FROM (SELECT id \
         FROM deliveries WHERE webhook_id = $1 AND held_due_ms IS NOT NULL \
         AND ($3::text IS NULL OR id > $3) AND ($4::text IS NULL OR id <= $4) \
         ORDER BY held_due_ms, id LIMIT $5 FOR UPDATE) o WHERE d.id = o.id \
         RETURNING d.id, d.next_attempt_at_ms"
    );
    let released = txn
        .query(
            &sql,
            &[
                &webhook.to_string(),
                &rows::ms(now_ms),
                &after,
                &through,
                &rows::ms(limit),
            ],
        )
        .await?;
    for row in &released {
        if let Some(due) = row.try_get::<_, Option<i64>>(1)? {
            changes.push(Change::Index {
                webhook,
                delivery: parse_delivery(row.try_get(0)?)?,
                from: None,
                to: Some(rows::from_ms(due)),
            });
        }
    }
    Ok(released.len() as u64)
}
