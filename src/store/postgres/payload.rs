//! PgStore operations on event payloads (issue 15, item 7): deleting one (`body` emptied,
//! `payload_deleted_at_ms` set, the event's unfinished deliveries cancelled, out of the retry
//! and held indexes), and payload retention (`--payload-retention`).
//!
//! Invariant (checked by `check`): an event with `payload_deleted_at_ms` has an empty body
//! and no unfinished delivery; its deliveries and their attempt logs stay.

use std::collections::HashSet;

use super::{rows, PgStore};
use crate::ids::{DeliveryId, EventKey, WebhookId};
use crate::model::{DeliveryStatus, Event};
use crate::store::{BlankReport, Change, StoreError};

fn parse<T: std::str::FromStr>(table: &'static str, text: &str) -> Result<T, StoreError> {
    text.parse().map_err(|_| StoreError::Corrupt {
        table,
        reason: format!("bad id {text:?}"),
    })
}

/// The final statuses, for `status = ANY($n)`.
fn finals() -> Vec<&'static str> {
    DeliveryStatus::ALL
        .iter()
        .filter(|s| s.is_final())
        .map(|s| s.as_str())
        .collect()
}

/// Tombstones the event `key` inside `txn` (if it is not one yet) and cancels its unfinished
/// deliveries; returns the changes to publish.
async fn tombstone(
    txn: &deadpool_postgres::Transaction<'_>,
    key: &str,
    now_ms: u64,
) -> Result<Vec<Change>, StoreError> {
    let mut changes = Vec::new();
    let blanked = txn
        .execute(
            "UPDATE events SET body = ''::bytea, payload_deleted_at_ms = $2 \
             WHERE key = $1 AND payload_deleted_at_ms IS NULL",
            &[&key, &rows::ms(now_ms)],
        )
        .await?;
    if blanked > 0 {
        changes.push(Change::PayloadDeleted {
            event: parse("events", key)?,
        });
    }
    let cancelled = txn
        .query(
            "UPDATE deliveries d SET status = 'cancelled', next_attempt_at_ms = NULL, \
             held_due_ms = NULL, updated_at_ms = $2 FROM (SELECT id, next_attempt_at_ms AS due \
             FROM deliveries WHERE event_key = $1 AND NOT (status = ANY($3)) FOR UPDATE) o \
             WHERE d.id = o.id RETURNING d.id, d.webhook_id, o.due",
            &[&key, &rows::ms(now_ms), &finals()],
        )
        .await?;
    for row in cancelled {
        let delivery: DeliveryId = parse("deliveries", row.try_get(0)?)?;
        let webhook: WebhookId = parse("deliveries", row.try_get(1)?)?;
        if let Some(due) = row.try_get::<_, Option<i64>>(2)? {
            changes.push(Change::Index {
                webhook,
                delivery,
                from: Some(rows::from_ms(due)),
                to: None,
            });
        }
    }
    Ok(changes)
}

impl PgStore {
    /// See [`crate::store::Store::delete_event_payload`]. The event's row is locked first, so
    /// two deletions of it, or a deletion and payload retention, run one after the other.
    pub fn delete_event_payload(
        &self,
        organization_id: &str,
        event_id: &str,
        now_ms: u64,
    ) -> Result<Option<Event>, StoreError> {
        let store = self.clone();
        let (org, id) = (organization_id.to_owned(), event_id.to_owned());
        self.block(async move {
            store
                .write_txn(move |txn| {
                    Box::pin(async move {
                        let Some(row) = txn
                            .query_opt(
                                "SELECT key FROM events WHERE event_id = $1 \
                                 AND organization_id = $2 FOR UPDATE",
                                &[&id, &org],
                            )
                            .await?
                        else {
                            return Ok((None, Vec::new()));
                        };
                        let key: String = row.try_get(0)?;
                        let changes = tombstone(txn, &key, now_ms).await?;
                        let row = txn
                            .query_one(
                                &format!("SELECT {} FROM events WHERE key = $1", rows::EVENT_COLS),
                                &[&key],
                            )
                            .await?;
                        Ok((Some(rows::event(&row)?), changes))
                    })
                })
                .await
        })
    }

    /// See [`crate::store::Store::blank_expired_payloads`]. The candidates' rows are locked,
    /// and the condition on their deliveries is checked again by the update itself.
    pub fn blank_expired_payloads(
        &self,
        cutoff_ms: u64,
        after: Option<EventKey>,
        max_events: usize,
        now_ms: u64,
    ) -> Result<BlankReport, StoreError> {
        let end = EventKey(u128::from(cutoff_ms) << 80).to_string();
        let start = after.map_or_else(String::new, |k| k.to_string());
        let scan_limit = max_events.saturating_mul(4).max(1);
        let store = self.clone();
        self.block(async move {
            store
                .write_txn(move |txn| {
                    Box::pin(async move {
                        let mut report = BlankReport::default();
                        if start >= end {
                            return Ok((report, Vec::new()));
                        }
                        // Eligible: every delivery final and unchanged since the cutoff.
                        const ELIGIBLE: &str = "NOT EXISTS (SELECT 1 FROM deliveries d \
                             WHERE d.event_key = e.key AND (NOT (d.status = ANY($2)) \
                             OR d.updated_at_ms >= $3))";
                        let candidates: Vec<String> = txn
                            .query(
                                "SELECT key FROM events WHERE key > $1 AND key < $2 \
                                 AND received_at_ms < $3 AND payload_deleted_at_ms IS NULL \
                                 ORDER BY key LIMIT $4 FOR UPDATE",
                                &[
                                    &start,
                                    &end,
                                    &rows::ms(cutoff_ms),
                                    &i64::try_from(scan_limit).unwrap_or(i64::MAX),
                                ],
                            )
                            .await?
                            .iter()
                            .map(|r| r.try_get(0))
                            .collect::<Result<_, _>>()?;
                        if candidates.len() == scan_limit {
                            report.resume_after =
                                candidates.last().map(|k| parse("events", k)).transpose()?;
                        }
                        let eligible: HashSet<String> = txn
                            .query(
                                &format!(
                                    "SELECT e.key FROM events e WHERE e.key = ANY($1) \
                                     AND {ELIGIBLE}"
                                ),
                                &[&candidates, &finals(), &rows::ms(cutoff_ms)],
                            )
                            .await?
                            .iter()
                            .map(|r| r.try_get(0))
                            .collect::<Result<_, _>>()?;
                        let mut chosen = Vec::new();
                        for key in &candidates {
                            if chosen.len() == max_events {
                                report.resume_after = report.last_seen;
                                break;
                            }
                            let event: EventKey = parse("events", key)?;
                            report.last_seen = Some(event);
                            if eligible.contains(key) {
                                chosen.push(key.clone());
                            } else {
                                report.kept += 1;
                                report.first_kept.get_or_insert(event);
                            }
                        }
                        let blanked: HashSet<String> = txn
                            .query(
                                &format!(
                                    "UPDATE events e SET body = ''::bytea, \
                                     payload_deleted_at_ms = $4 WHERE e.key = ANY($1) \
                                     AND e.payload_deleted_at_ms IS NULL AND {ELIGIBLE} \
                                     RETURNING e.key"
                                ),
                                &[&chosen, &finals(), &rows::ms(cutoff_ms), &rows::ms(now_ms)],
                            )
                            .await?
                            .iter()
                            .map(|r| r.try_get(0))
                            .collect::<Result<_, _>>()?;
                        let mut changes = Vec::new();
                        for key in &chosen {
                            let event: EventKey = parse("events", key)?;
                            if blanked.contains(key) {
                                report.blanked += 1;
                                changes.push(Change::PayloadDeleted { event });
                            } else {
                                // A delivery changed since the first look: kept for now.
                                report.kept += 1;
                                report.first_kept =
                                    Some(report.first_kept.map_or(event, |k| k.min(event)));
                            }
                        }
                        Ok((report, changes))
                    })
                })
                .await
        })
    }
}
