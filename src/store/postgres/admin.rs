//! Status, consistency check and retention on PostgreSQL.
//!
//! The check verifies the invariants of docs/ARCHITECTURE.md that the schema does not
//! enforce by itself, from one repeatable-read snapshot, streaming every table once:
//! 1. a delivery is not final exactly when `next_attempt_at_ms` is set (its retry-index
//!    entry; the partial indexes cannot disagree with the row);
//! 2. a delivery's attempts are numbered 1..=`attempt_count` without gaps, and
//!    `scheduled_attempts <= attempt_count`; every attempt has its delivery;
//! 3. a delivery's event exists and lists it, every delivery an event lists exists, and a
//!    delivery that is not final has its webhook;
//! 4. every row parses (ids, enums, hashes).
//!
//! Secondary indexes (by organization, by `event_id`) are PostgreSQL's own and need no check.

use futures_util::TryStreamExt;
use std::pin::pin;

use super::{rows, PgStore};
use crate::ids::{DeliveryId, EventKey, WebhookId};
use crate::model::DeliveryStatus;
use crate::store::MAX_STREAK;
use crate::store::{CheckReport, FailureStreak, PurgeReport, StatusSummary, StoreError};

type Txn<'a> = deadpool_postgres::Transaction<'a>;

/// A read-only, repeatable-read transaction: one snapshot for several reads.
pub(super) async fn snapshot(conn: &mut deadpool_postgres::Object) -> Result<Txn<'_>, StoreError> {
    Ok(conn
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?)
}

/// Streams the rows of `sql`, calling `each` on every one.
async fn each_row(
    txn: &Txn<'_>,
    sql: &str,
    mut each: impl FnMut(tokio_postgres::Row) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let stream = txn.query_raw(sql, std::iter::empty::<i32>()).await?;
    let mut stream = pin!(stream);
    while let Some(row) = stream.try_next().await? {
        each(row)?;
    }
    Ok(())
}

/// How many ids a violation query lists at most.
const LISTED: i64 = 100;

/// Runs a query whose rows are violations (their first column describes each).
async fn violations(
    txn: &Txn<'_>,
    report: &mut CheckReport,
    sql: &str,
    what: &str,
) -> Result<(), StoreError> {
    let count: i64 = txn
        .query_one(&format!("SELECT count(*) FROM ({sql}) v"), &[])
        .await?
        .try_get(0)?;
    if count == 0 {
        return Ok(());
    }
    let rows = txn.query(&format!("{sql} LIMIT {LISTED}"), &[]).await?;
    let mut listed = 0;
    for row in rows {
        let who: String = row.try_get(0)?;
        report.violation(format!("{who}: {what}"));
        listed += 1;
    }
    for _ in listed..count {
        report.violation(what.to_owned());
    }
    Ok(())
}

pub(super) async fn check(store: &PgStore) -> Result<CheckReport, StoreError> {
    let mut conn = store.conn().await?;
    let txn = snapshot(&mut conn).await?;
    let mut report = CheckReport::default();
    let mut bad = Vec::new();
    each_row(
        &txn,
        &format!("SELECT {} FROM webhooks", rows::WEBHOOK_COLS),
        |row| {
            report.webhooks += 1;
            if let Err(e) = rows::webhook(&row, None) {
                bad.push(format!("webhook row: {e}"));
            }
            Ok(())
        },
    )
    .await?;
    each_row(
        &txn,
        &format!("SELECT {} FROM events", rows::EVENT_COLS),
        |row| {
            report.events += 1;
            match rows::event(&row) {
                Ok(e) if e.payload_deleted_at_ms.is_some() => report.payloads_deleted += 1,
                Ok(_) => {}
                Err(e) => bad.push(format!("event row: {e}")),
            }
            Ok(())
        },
    )
    .await?;
    each_row(
        &txn,
        &format!("SELECT {} FROM deliveries", rows::DELIVERY_COLS),
        |row| {
            report.deliveries += 1;
            match rows::delivery(&row) {
                Ok(d) => {
                    if !d.status.is_final() {
                        report.not_final += 1;
                    }
                    if d.next_attempt_at_ms.is_some() {
                        report.retry_index += 1;
                    }
                }
                Err(e) => bad.push(format!("delivery row: {e}")),
            }
            Ok(())
        },
    )
    .await?;
    each_row(
        &txn,
        &format!("SELECT {} FROM attempts", rows::ATTEMPT_COLS),
        |row| {
            report.attempts += 1;
            if let Err(e) = rows::attempt(&row) {
                bad.push(format!("attempt row: {e}"));
            }
            Ok(())
        },
    )
    .await?;
    each_row(
        &txn,
        &format!("SELECT {} FROM api_keys", rows::API_KEY_COLS),
        |row| {
            report.api_keys += 1;
            if let Err(e) = rows::api_key(&row) {
                bad.push(format!("api key row: {e}"));
            }
            Ok(())
        },
    )
    .await?;
    for text in bad {
        report.violation(text);
    }
    let not_final = rows::not_final()
        .iter()
        .filter(|s| **s != "held")
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ");
    violations(
        &txn,
        &mut report,
        &format!(
            "SELECT id FROM deliveries WHERE (status IN ({not_final})) \
             <> (next_attempt_at_ms IS NOT NULL)"
        ),
        "a delivery that is not final nor held must have a retry-index entry, any other none",
    )
    .await?;
    violations(
        &txn,
        &mut report,
        "SELECT id FROM deliveries WHERE (status = 'held') <> (held_due_ms IS NOT NULL)",
        "a held delivery must have a held due time, any other none",
    )
    .await?;
    violations(
        &txn,
        &mut report,
        "SELECT DISTINCT w.id FROM webhooks w JOIN deliveries d ON d.webhook_id = w.id \
         AND d.held_due_ms IS NOT NULL LEFT JOIN held_sweeps s ON s.webhook_id = w.id \
         WHERE w.disabled IS NULL AND s.webhook_id IS NULL",
        "an enabled webhook with held deliveries must have a held_sweeps row",
    )
    .await?;
    // Tombstones (issue 15): no body, and nothing of the event may still be attempted.
    violations(
        &txn,
        &mut report,
        "SELECT key FROM events WHERE payload_deleted_at_ms IS NOT NULL AND length(body) > 0",
        "an event whose payload was deleted still stores a body",
    )
    .await?;
    violations(
        &txn,
        &mut report,
        &format!(
            "SELECT d.id FROM deliveries d JOIN events e ON e.key = d.event_key \
             WHERE e.payload_deleted_at_ms IS NOT NULL AND d.status IN ({not_final}, 'held')"
        ),
        "a delivery of an event whose payload was deleted is unfinished",
    )
    .await?;
    violations(
        &txn,
        &mut report,
        "SELECT i.delivery_id FROM job_items i LEFT JOIN jobs j ON j.id = i.job_id \
         WHERE j.id IS NULL",
        "a job item must belong to a job",
    )
    .await?;
    violations(
        &txn,
        &mut report,
        "SELECT d.id FROM deliveries d LEFT JOIN (SELECT delivery_id, count(*) AS n, \
         min(number) AS lo, max(number) AS hi FROM attempts GROUP BY delivery_id) a \
         ON a.delivery_id = d.id WHERE coalesce(a.n, 0) <> d.attempt_count \
         OR (a.n > 0 AND (a.lo <> 1 OR a.hi <> d.attempt_count)) \
         OR d.scheduled_attempts > d.attempt_count",
        "attempts are not numbered 1..=attempt_count, or scheduled_attempts > attempt_count",
    )
    .await?;
    violations(
        &txn,
        &mut report,
        "SELECT a.delivery_id || ' #' || a.number FROM attempts a \
         WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.id = a.delivery_id)",
        "attempt of a delivery that does not exist",
    )
    .await?;
    violations(
        &txn,
        &mut report,
        "SELECT d.id FROM deliveries d LEFT JOIN events e ON e.key = d.event_key \
         WHERE e.key IS NULL OR NOT (d.id = ANY(e.delivery_ids))",
        "its event is missing or does not list it",
    )
    .await?;
    violations(
        &txn,
        &mut report,
        "SELECT e.key || ' lists ' || x FROM events e, unnest(e.delivery_ids) AS x \
         WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.id = x)",
        "an event lists a delivery that does not exist",
    )
    .await?;
    violations(
        &txn,
        &mut report,
        &format!(
            "SELECT d.id FROM deliveries d WHERE d.status IN ({not_final}) \
             AND NOT EXISTS (SELECT 1 FROM webhooks w WHERE w.id = d.webhook_id) \
             AND NOT EXISTS (SELECT 1 FROM held_sweeps s WHERE s.webhook_id = d.webhook_id)"
        ),
        "a delivery that is not final has no webhook (and no sweep cancels it)",
    )
    .await?;
    violations(
        &txn,
        &mut report,
        "SELECT d.id FROM deliveries d LEFT JOIN attempts a ON a.delivery_id = d.id \
         AND a.number = d.attempt_count \
         WHERE (a.delivery_id IS NOT NULL \
         AND d.last_outcome IS DISTINCT FROM palo_attempt_outcome(a.status_code, a.error)) \
         OR (d.attempt_count = 0 AND d.last_outcome IS NOT NULL)",
        "its last_outcome is not the outcome of its last attempt",
    )
    .await?;
    txn.commit().await?;
    Ok(report)
}

impl PgStore {
    /// See [`crate::store::Store::quick_check`]: the server answers and the schema is there
    /// (PostgreSQL keeps its own indexes consistent; `check` does the rest).
    pub fn quick_check(&self) -> Result<Vec<String>, StoreError> {
        let store = self.clone();
        self.block(async move {
            let row = store
                .conn()
                .await?
                .query_one("SELECT count(*) FROM webhooks", &[])
                .await?;
            let _: i64 = row.try_get(0)?;
            Ok(Vec::new())
        })
    }

    /// See [`crate::store::Store::status_summary`]: over the whole cluster.
    pub fn status_summary(&self, now_ms: u64) -> Result<StatusSummary, StoreError> {
        let store = self.clone();
        self.block(async move {
            let mut conn = store.conn().await?;
            let txn = snapshot(&mut conn).await?;
            let mut summary = StatusSummary {
                due: super::due::due_in(&*txn, now_ms).await?,
                ..StatusSummary::default()
            };
            for row in txn
                .query(
                    "SELECT status, count(*) FROM deliveries GROUP BY status",
                    &[],
                )
                .await?
            {
                let status: &str = row.try_get(0)?;
                let n: i64 = row.try_get(1)?;
                if let Some(i) = DeliveryStatus::ALL
                    .iter()
                    .position(|s| s.as_str() == status)
                {
                    summary.by_status[i] += rows::from_ms(n);
                }
            }
            // Per webhook: its newest deliveries that are not pending, newest first, up to
            // the streak's bound; the streak is the leading run of failed or retrying.
            let limit = i64::try_from(MAX_STREAK).unwrap_or(i64::MAX);
            let rows = txn
                .query(
                    "SELECT w.id, w.organization_id, w.url, s.status FROM webhooks w \
                     CROSS JOIN LATERAL (SELECT status, id FROM deliveries \
                     WHERE webhook_id = w.id AND status <> 'pending' \
                     ORDER BY id DESC LIMIT $1) s ORDER BY w.id, s.id DESC",
                    &[&limit],
                )
                .await?;
            let mut current: Option<(String, FailureStreak, bool)> = None;
            let finish = |entry: Option<(String, FailureStreak, bool)>,
                          streaks: &mut Vec<FailureStreak>| {
                if let Some((_, streak, _)) = entry {
                    if streak.streak > 0 {
                        streaks.push(streak);
                    }
                }
            };
            for row in rows {
                let id: String = row.try_get(0)?;
                let status: &str = row.try_get(3)?;
                if current.as_ref().is_none_or(|(c, _, _)| *c != id) {
                    finish(current.take(), &mut summary.streaks);
                    let webhook_id: WebhookId = id.parse().map_err(|_| StoreError::Corrupt {
                        table: "webhooks",
                        reason: "bad id".into(),
                    })?;
                    current = Some((
                        id.clone(),
                        FailureStreak {
                            webhook_id,
                            organization_id: row.try_get(1)?,
                            url: row.try_get(2)?,
                            streak: 0,
                        },
                        true,
                    ));
                }
                if let Some((_, streak, running)) = current.as_mut() {
                    let failing = status == DeliveryStatus::Failed.as_str()
                        || status == DeliveryStatus::Retrying.as_str();
                    if *running && failing {
                        streak.streak += 1;
                    } else {
                        *running = false;
                    }
                }
            }
            finish(current.take(), &mut summary.streaks);
            summary.streaks.sort_by_key(|s| std::cmp::Reverse(s.streak));
            txn.commit().await?;
            Ok(summary)
        })
    }

    /// See [`crate::store::Store::purge_expired`]. Rows are locked as they are deleted, so
    /// another daemon's concurrent write waits or is seen.
    pub fn purge_expired(
        &self,
        cutoff_ms: u64,
        after: Option<EventKey>,
        max_events: usize,
        in_use: impl Fn(DeliveryId) -> bool + Send + 'static,
    ) -> Result<PurgeReport, StoreError> {
        let end = EventKey(u128::from(cutoff_ms) << 80).to_string();
        let start = after.map_or_else(String::new, |k| k.to_string());
        let scan_limit = i64::try_from(max_events.saturating_mul(4).max(1)).unwrap_or(i64::MAX);
        let store = self.clone();
        self.block(async move {
            store
                .write_txn(move |txn| {
                    Box::pin(async move {
                        let mut report = PurgeReport::default();
                        if start >= end {
                            return Ok((report, Vec::new()));
                        }
                        let candidates = txn
                            .query(
                                "SELECT key, received_at_ms FROM events WHERE key > $1 \
                                 AND key < $2 ORDER BY key LIMIT $3 FOR UPDATE",
                                &[&start, &end, &scan_limit],
                            )
                            .await?;
                        if candidates.len() as i64 == scan_limit {
                            if let Some(last) = candidates.last() {
                                report.resume_after = Some(parse_key(last.try_get(0)?)?);
                            }
                        }
                        for row in candidates {
                            if report.events as usize == max_events {
                                break;
                            }
                            let key: String = row.try_get(0)?;
                            let received: i64 = row.try_get(1)?;
                            if rows::from_ms(received) >= cutoff_ms {
                                continue;
                            }
                            let deliveries = txn
                                .query(
                                    "SELECT id, status, updated_at_ms FROM deliveries \
                                     WHERE event_key = $1 FOR UPDATE",
                                    &[&key],
                                )
                                .await?;
                            let mut keep = false;
                            let mut gone = Vec::new();
                            for d in &deliveries {
                                let id: String = d.try_get(0)?;
                                let status = DeliveryStatus::parse(d.try_get(1)?);
                                let updated: i64 = d.try_get(2)?;
                                let delivery: DeliveryId =
                                    id.parse().map_err(|_| StoreError::Corrupt {
                                        table: "deliveries",
                                        reason: "bad id".into(),
                                    })?;
                                // Held deliveries are bounded by retention too (issue 15).
                                if status
                                    .is_none_or(|s| !(s.is_final() || s == DeliveryStatus::Held))
                                    || rows::from_ms(updated) >= cutoff_ms
                                    || in_use(delivery)
                                {
                                    keep = true;
                                    break;
                                }
                                gone.push(id);
                            }
                            if keep {
                                report.kept += 1;
                                continue;
                            }
                            report.attempts += txn
                                .execute(
                                    "DELETE FROM attempts WHERE delivery_id = ANY($1)",
                                    &[&gone],
                                )
                                .await?;
                            report.deliveries += txn
                                .execute("DELETE FROM deliveries WHERE id = ANY($1)", &[&gone])
                                .await?;
                            txn.execute("DELETE FROM events WHERE key = $1", &[&key])
                                .await?;
                            report.events += 1;
                            if report.events as usize == max_events {
                                report.resume_after = Some(parse_key(&key)?);
                            }
                        }
                        Ok((report, Vec::new()))
                    })
                })
                .await
        })
    }
}

fn parse_key(text: &str) -> Result<EventKey, StoreError> {
    text.parse().map_err(|_| StoreError::Corrupt {
        table: "events",
        reason: format!("bad key {text:?}"),
    })
}
