//! FileStore operations on event payloads (issue 15, item 7): deleting one (the stored body
//! becomes the tombstone and the event's unfinished deliveries are cancelled), and payload
//! retention (`--payload-retention`), a small batch per transaction.
//!
//! Invariant (checked by `check`): a tombstoned event (`payload_deleted_at_ms` set) has an
//! empty body and no unfinished delivery; its deliveries and their attempt logs stay.

use redb::ReadableTable;

use super::deliveries::{load_delivery, load_event, put_delivery};
use super::due::move_index_entry;
use super::lifecycle::take_held;
use super::records::{encode, EventRecord};
use super::writer::{Change, Txn};
use super::{FileStore, StoreError, DELIVERIES, EVENTS, EVENT_IDS};
use crate::ids::EventKey;
use crate::model::{DeliveryStatus, Event};
use crate::store::BlankReport;

impl FileStore {
    /// See [`Store::delete_event_payload`](crate::store::Store::delete_event_payload).
    pub fn delete_event_payload(
        &self,
        organization_id: &str,
        event_id: &str,
        now_ms: u64,
    ) -> Result<Option<Event>, StoreError> {
        let (org, id) = (organization_id.to_owned(), event_id.to_owned());
        self.write(move |txn| {
            let Some(key) = txn
                .open_table(EVENT_IDS)?
                .get((id.as_str(), org.as_str()))?
                .map(|v| v.value())
            else {
                return Ok(None);
            };
            let Some(mut event) = load_event(&txn.open_table(EVENTS)?, EventKey(key))? else {
                return Ok(None);
            };
            tombstone(txn, &mut event, now_ms)?;
            Ok(Some(event))
        })
    }

    /// See [`Store::blank_expired_payloads`](crate::store::Store::blank_expired_payloads).
    pub fn blank_expired_payloads(
        &self,
        cutoff_ms: u64,
        after: Option<EventKey>,
        max_events: usize,
        now_ms: u64,
    ) -> Result<BlankReport, StoreError> {
        // An event key is a ULID whose top 48 bits are the time of ingest in ms.
        let end = u128::from(cutoff_ms) << 80;
        let start = after.map_or(0, |k| k.0.saturating_add(1));
        let scan_limit = max_events.saturating_mul(4).max(1);
        self.write(move |txn| {
            let mut report = BlankReport::default();
            if start >= end {
                return Ok(report);
            }
            let mut candidates = Vec::new();
            for row in txn.open_table(EVENTS)?.range(start..end)? {
                let key = EventKey(row?.0.value());
                candidates.push(key);
                if candidates.len() == scan_limit {
                    report.resume_after = Some(key);
                    break;
                }
            }
            for key in candidates {
                if report.blanked as usize == max_events {
                    report.resume_after = report.last_seen;
                    break;
                }
                report.last_seen = Some(key);
                let Some(mut event) = load_event(&txn.open_table(EVENTS)?, key)? else {
                    continue;
                };
                if event.payload_deleted_at_ms.is_some() || event.received_at_ms >= cutoff_ms {
                    continue;
                }
                if !all_final_before(txn, &event, cutoff_ms)? {
                    report.kept += 1;
                    report.first_kept.get_or_insert(key);
                    continue;
                }
                tombstone(txn, &mut event, now_ms)?;
                report.blanked += 1;
            }
            Ok(report)
        })
    }
}

/// Whether every delivery of `event` is final and last changed before `cutoff_ms`.
fn all_final_before(txn: &Txn<'_>, event: &Event, cutoff_ms: u64) -> Result<bool, StoreError> {
    let deliveries = txn.open_table(DELIVERIES)?;
    for id in &event.delivery_ids {
        if let Some(d) = load_delivery(&deliveries, *id)? {
            if !d.status.is_final() || d.updated_at_ms >= cutoff_ms {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Makes `event` a tombstone (if it is not one yet: the body goes, the deletion time is set,
/// [`Change::PayloadDeleted`] is published) and cancels each of its unfinished deliveries,
/// out of the retry index (published) or the held index. Attempt logs are not touched.
fn tombstone(txn: &Txn<'_>, event: &mut Event, now_ms: u64) -> Result<(), StoreError> {
    if event.payload_deleted_at_ms.is_none() {
        event.body = Vec::new();
        event.payload_deleted_at_ms = Some(now_ms);
        txn.open_table(EVENTS)?.insert(
            event.key.0,
            encode(&EventRecord::from_domain(event)).as_slice(),
        )?;
        txn.publish(Change::PayloadDeleted { event: event.key });
    }
    let mut table = txn.open_table(DELIVERIES)?;
    for id in &event.delivery_ids {
        let Some(mut delivery) = load_delivery(&table, *id)? else {
            continue;
        };
        if delivery.status.is_final() {
            continue;
        }
        if delivery.status == DeliveryStatus::Held {
            take_held(txn, delivery.webhook_id, delivery.id)?;
        }
        let before = delivery.clone();
        move_index_entry(
            txn,
            delivery.webhook_id,
            delivery.id,
            delivery.next_attempt_at_ms,
            None,
        )?;
        delivery.status = DeliveryStatus::Cancelled;
        delivery.next_attempt_at_ms = None;
        delivery.updated_at_ms = now_ms;
        put_delivery(txn, &mut table, Some(&before), &delivery)?;
    }
    Ok(())
}
