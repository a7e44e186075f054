//! Retention (`--retention`, issue 7): events older than the window whose deliveries are all
//! final are deleted with their deliveries, attempt logs and index entries, a small batch per
//! transaction, so the file stops growing and no commit holds the writer for long.
//!
//! Owner's rule: a delivery that is not final (`pending`, `retrying`) is never purged, nor is
//! its event; a final delivery changed (a manual redelivery) after the cutoff keeps its event.
//! The idempotency key `(organization, event_id)` goes with its event: the window in which a
//! replay is recognized equals the retention.

use redb::ReadableTable;

use super::deliveries::{load_delivery, load_event};
use super::search::{reindex, DELIVERY_SEARCH};
use super::{
    FileStore, StoreError, ATTEMPTS, DELIVERIES, EVENTS, EVENT_IDS, ORG_EVENTS, WEBHOOK_DELIVERIES,
};
use crate::ids::{DeliveryId, EventKey};
use crate::model::DeliveryStatus;

/// What one [`FileStore::purge_expired`] call did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PurgeReport {
    /// Events deleted.
    pub events: u64,
    /// Deliveries deleted.
    pub deliveries: u64,
    /// Attempt log entries deleted.
    pub attempts: u64,
    /// Events old enough that were kept, because a delivery of theirs is unfinished or
    /// changed after the cutoff.
    pub kept: u64,
    /// Where the next call should start: `Some` when the scan stopped at its limit with
    /// older events left to look at, `None` when everything before the cutoff was seen.
    pub resume_after: Option<EventKey>,
}

impl FileStore {
    /// See [`Store::purge_expired`](crate::store::Store::purge_expired).
    pub fn purge_expired(
        &self,
        cutoff_ms: u64,
        after: Option<EventKey>,
        max_events: usize,
        in_use: impl Fn(DeliveryId) -> bool + Send + 'static,
    ) -> Result<PurgeReport, StoreError> {
        // An event key is a ULID whose top 48 bits are the time of ingest in ms.
        let end = u128::from(cutoff_ms) << 80;
        let start = after.map_or(0, |k| k.0.saturating_add(1));
        let scan_limit = max_events.saturating_mul(4).max(1);
        self.write(move |txn| {
            let mut report = PurgeReport::default();
            if start >= end {
                return Ok(report);
            }
            let mut events = txn.open_table(EVENTS)?;
            let mut deliveries = txn.open_table(DELIVERIES)?;
            let mut attempts = txn.open_table(ATTEMPTS)?;
            let mut org_events = txn.open_table(ORG_EVENTS)?;
            let mut event_ids = txn.open_table(EVENT_IDS)?;
            let mut webhook_deliveries = txn.open_table(WEBHOOK_DELIVERIES)?;
            let mut search = txn.open_table(DELIVERY_SEARCH)?;
            let mut candidates = Vec::new();
            let mut scanned = 0;
            for row in events.range(start..end)? {
                let (key, _) = row?;
                let key = EventKey(key.value());
                scanned += 1;
                candidates.push(key);
                if scanned == scan_limit {
                    report.resume_after = Some(key);
                    break;
                }
            }
            for key in candidates {
                if report.events as usize == max_events {
                    // Stop here; the next call starts after the last event handled.
                    break;
                }
                let Some(event) = load_event(&events, key)? else {
                    continue;
                };
                if event.received_at_ms >= cutoff_ms {
                    continue;
                }
                let mut gone = Vec::with_capacity(event.delivery_ids.len());
                let mut keep = false;
                for id in &event.delivery_ids {
                    match load_delivery(&deliveries, *id)? {
                        // Held deliveries are bounded by retention too (issue 15).
                        Some(d)
                            if !(d.status.is_final() || d.status == DeliveryStatus::Held)
                                || d.updated_at_ms >= cutoff_ms
                                || in_use(d.id) =>
                        {
                            keep = true;
                            break;
                        }
                        Some(d) => gone.push(d),
                        None => {}
                    }
                }
                if keep {
                    report.kept += 1;
                    continue;
                }
                for d in gone {
                    if d.status == DeliveryStatus::Held {
                        super::lifecycle::take_held(txn, d.webhook_id, d.id)?;
                    }
                    deliveries.remove(d.id.0)?;
                    webhook_deliveries.remove((d.webhook_id.0, d.id.0))?;
                    reindex(&mut search, Some(&d), None)?;
                    super::ordering::reorder(txn, Some(&d), None)?;
                    let numbers: Vec<u32> = attempts
                        .range((d.id.0, 0)..=(d.id.0, u32::MAX))?
                        .map(|row| row.map(|(k, _)| k.value().1))
                        .collect::<Result<_, _>>()?;
                    for number in numbers {
                        attempts.remove((d.id.0, number))?;
                        report.attempts += 1;
                    }
                    report.deliveries += 1;
                }
                events.remove(key.0)?;
                org_events.remove((event.organization_id.as_str(), key.0))?;
                // `event_ids` is keyed (event_id, organization).
                event_ids.remove((event.event_id.as_str(), event.organization_id.as_str()))?;
                report.events += 1;
                if report.events as usize == max_events {
                    report.resume_after = Some(key);
                }
            }
            Ok(report)
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::ids::EventKey;
    use crate::store::FileStore;

    /// One event with one delivery to a new webhook, its attempt logged as a success.
    fn one_finished_delivery(store: &FileStore) -> crate::ids::DeliveryId {
        use crate::model::{Attempt, EventFilter, Secret, Trigger, Webhook};
        let now = crate::clock::now_ms();
        let webhook = Webhook {
            id: crate::ids::WebhookId::generate(),
            organization_id: "org".into(),
            url: "https://example.com/hook".into(),
            events: EventFilter::All,
            secret: Secret("a_secret_of_at_least_thirty_two_chars".into()),
            previous_secret: None,
            disabled: None,
            failing_since_ms: None,
            active: true,
            description: String::new(),
            options: Default::default(),
            created_at_ms: now,
            updated_at_ms: now,
        };
        store.create_webhook(&webhook).unwrap();
        let data = serde_json::value::RawValue::from_string(
            r#"{"incident_id":"I","severity":"high","affected_services":["api"],"status":"open"}"#
                .to_owned(),
        )
        .unwrap();
        let prepared = crate::event::prepare(
            crate::event::EventInput {
                event_id: Some("evt_r".into()),
                event_type: "system.incident".into(),
                timestamp: None,
                organization_id: "org".into(),
                data: &data,
            },
            now,
            false,
        )
        .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let crate::store::AcceptOutcome::Accepted { deliveries, .. } = store
                .accept_event(prepared, crate::store::FanOut::Only(webhook.id), now, now)
                .await
                .unwrap()
            else {
                panic!("not accepted")
            };
            let id = deliveries[0].id;
            let attempt = Attempt {
                number: 1,
                started_at_ms: now,
                duration_ms: 5,
                status_code: Some(200),
                error: None,
                response_body: String::new(),
                response_body_truncated: false,
                trigger: Trigger::Scheduled,
                retry_after_ms: None,
                error_detail: None,
            };
            store
                .record_attempt(id, attempt, crate::retry::RetrySchedule::default(), now)
                .await
                .unwrap();
            id
        })
    }

    #[test]
    fn a_delivery_with_an_attempt_claimed_is_kept_then_purged_once_free() {
        let store = FileStore::open_in_memory().unwrap();
        let id = one_finished_delivery(&store);
        let cutoff = crate::clock::now_ms() + 1_000;
        let report = store
            .purge_expired(cutoff, None, 10, move |d| d == id)
            .unwrap();
        assert_eq!((report.events, report.kept), (0, 1));
        assert!(store.get_delivery_with_attempts(id).unwrap().is_some());
        let report = store.purge_expired(cutoff, None, 10, |_| false).unwrap();
        assert_eq!(
            (report.events, report.deliveries, report.attempts),
            (1, 1, 1)
        );
        assert!(store.get_delivery_with_attempts(id).unwrap().is_none());
        assert!(store.check().unwrap().is_ok());
    }

    #[test]
    fn an_empty_store_or_window_purges_nothing() {
        let store = FileStore::open_in_memory().unwrap();
        let report = store
            .purge_expired(u64::MAX >> 16, None, 10, |_| false)
            .unwrap();
        assert_eq!(report, super::PurgeReport::default());
        let report = store
            .purge_expired(0, Some(EventKey(5)), 10, |_| false)
            .unwrap();
        assert_eq!(report, super::PurgeReport::default());
    }
}
