//! The consistency check of the store (`palo-webhooks check`, issue 4).
//!
//! Owner's rule: read-only, over one read snapshot, and never loads a whole table into
//! memory: every cross-reference is a point lookup, so a store of millions of deliveries
//! is checked in one pass per table. It verifies the invariants of docs/ARCHITECTURE.md:
//!
//! 1. A delivery that is not final has exactly one `retry_index` entry, at its
//!    `next_attempt_at_ms`; a final one has none; every index entry names such a delivery.
//! 2. A delivery's attempts are numbered 1..=`attempt_count` without gaps, and
//!    `scheduled_attempts <= attempt_count`; every attempt log entry has its delivery.
//! 3. A delivery's event exists and lists it; a non-final delivery's webhook exists.
//! 4. Every secondary table (`org_webhooks`, `org_events`, `event_ids`,
//!    `webhook_deliveries`, `api_key_hashes`) matches its primary table both ways.
//! 5. Every record decodes.
//! 6. `delivery_search` holds exactly the facets of the stored deliveries, and each
//!    delivery's `last_outcome` is its last attempt's ([`super::search::check`]).

use redb::{ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata};

use crate::ids::{DeliveryId, EventKey, KeyId, WebhookId};
use crate::model::{Delivery, DeliveryStatus};

use super::deliveries::{load_delivery, load_event};
use super::ordering::ORDERING;
use super::records::{
    decode, ApiKeyRecord, AttemptRecord, DeliveryRecord, EventRecord, WebhookRecord,
};
use super::search::DELIVERY_SEARCH;
use super::{
    FileStore, StoreError, API_KEYS, API_KEY_HASHES, ATTEMPTS, DELIVERIES, EVENTS, EVENT_IDS, HELD,
    HELD_SWEEPS, JOBS, JOB_ITEMS, JOB_OUTSTANDING, ORG_EVENTS, ORG_WEBHOOKS, RETRY_INDEX, WEBHOOKS,
    WEBHOOK_DELIVERIES, WEBHOOK_DUE,
};

/// At most this many violations are described; the rest are only counted.
pub const MAX_DESCRIBED: usize = 100;

/// What [`FileStore::check`] found: record counts and every invariant violation.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// Webhooks stored.
    pub webhooks: u64,
    /// Events stored.
    pub events: u64,
    /// Deliveries stored.
    pub deliveries: u64,
    /// Deliveries not final (pending or retrying).
    pub not_final: u64,
    /// Events whose payload was deleted (tombstones, issue 15).
    pub payloads_deleted: u64,
    /// Attempt log entries.
    pub attempts: u64,
    /// Retry-index entries.
    pub retry_index: u64,
    /// API keys.
    pub api_keys: u64,
    /// Violations found (all of them, described or not).
    pub violation_count: u64,
    /// The first [`MAX_DESCRIBED`] violations, in words.
    pub violations: Vec<String>,
}

impl CheckReport {
    /// True when no invariant is violated.
    pub fn is_ok(&self) -> bool {
        self.violation_count == 0
    }

    pub(crate) fn violation(&mut self, text: String) {
        self.violation_count += 1;
        if self.violations.len() < MAX_DESCRIBED {
            self.violations.push(text);
        }
    }
}

/// The table sizes that must agree, from each table's stored length (no scan): what the
/// daemon checks at start-up. Returns the disagreements in words (empty when consistent).
///
/// # Errors
/// [`StoreError`] when a table cannot be read.
pub(super) fn quick(txn: &ReadTransaction) -> Result<Vec<String>, StoreError> {
    let len = |n: u64, name: &str| (n, name.to_owned());
    let pairs = [
        (
            len(txn.open_table(WEBHOOKS)?.len()?, "webhooks"),
            len(txn.open_table(ORG_WEBHOOKS)?.len()?, "org_webhooks"),
        ),
        (
            len(txn.open_table(EVENTS)?.len()?, "events"),
            len(txn.open_table(ORG_EVENTS)?.len()?, "org_events"),
        ),
        (
            len(txn.open_table(EVENTS)?.len()?, "events"),
            len(txn.open_table(EVENT_IDS)?.len()?, "event_ids"),
        ),
        (
            len(txn.open_table(DELIVERIES)?.len()?, "deliveries"),
            len(
                txn.open_table(WEBHOOK_DELIVERIES)?.len()?,
                "webhook_deliveries",
            ),
        ),
        (
            len(txn.open_table(API_KEYS)?.len()?, "api_keys"),
            len(txn.open_table(API_KEY_HASHES)?.len()?, "api_key_hashes"),
        ),
    ];
    let mut problems: Vec<String> = pairs
        .iter()
        .filter(|((a, _), (b, _))| a != b)
        .map(|((a, an), (b, bn))| format!("{an} has {a} entries but {bn} has {b}"))
        .collect();
    let index = txn.open_table(RETRY_INDEX)?.len()?;
    let by_webhook = txn.open_table(WEBHOOK_DUE)?.len()?;
    if index != by_webhook {
        problems.push(format!(
            "retry_index has {index} entries but webhook_due has {by_webhook}"
        ));
    }
    let deliveries = txn.open_table(DELIVERIES)?.len()?;
    if index > deliveries {
        problems.push(format!(
            "retry_index has {index} entries, more than the {deliveries} deliveries"
        ));
    }
    Ok(problems)
}

/// Space used by one table, from redb's statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpace {
    /// The table's name.
    pub table: &'static str,
    /// Entries.
    pub entries: u64,
    /// Bytes of keys and values stored.
    pub stored_bytes: u64,
    /// Bytes of B-tree branch pages and other metadata.
    pub metadata_bytes: u64,
    /// Bytes lost to partly filled pages.
    pub fragmented_bytes: u64,
}

/// A point read, with a record that does not decode told apart from a storage error.
enum Readable<T> {
    Found(T),
    Missing,
    Corrupt,
}

fn readable<T>(read: Result<Option<T>, StoreError>) -> Result<Readable<T>, StoreError> {
    match read {
        Ok(Some(value)) => Ok(Readable::Found(value)),
        Ok(None) => Ok(Readable::Missing),
        Err(StoreError::Corrupt { .. }) => Ok(Readable::Corrupt),
        Err(e) => Err(e),
    }
}

impl FileStore {
    /// See [`Store::space`](crate::store::Store::space).
    pub fn space(&self) -> Result<Vec<TableSpace>, StoreError> {
        let txn = self.slot.get()?.begin_read()?;
        let mut out = Vec::new();
        macro_rules! measure {
            ($($def:ident => $name:literal),* $(,)?) => {$(
                let table = txn.open_table($def)?;
                let stats = table.stats()?;
                out.push(TableSpace {
                    table: $name,
                    entries: table.len()?,
                    stored_bytes: stats.stored_bytes(),
                    metadata_bytes: stats.metadata_bytes(),
                    fragmented_bytes: stats.fragmented_bytes(),
                });
            )*};
        }
        measure!(
            WEBHOOKS => "webhooks",
            ORG_WEBHOOKS => "org_webhooks",
            EVENTS => "events",
            ORG_EVENTS => "org_events",
            EVENT_IDS => "event_ids",
            DELIVERIES => "deliveries",
            WEBHOOK_DELIVERIES => "webhook_deliveries",
            ATTEMPTS => "attempts",
            RETRY_INDEX => "retry_index",
            WEBHOOK_DUE => "webhook_due",
            API_KEYS => "api_keys",
            API_KEY_HASHES => "api_key_hashes",
            HELD => "held",
            HELD_SWEEPS => "held_sweeps",
            JOBS => "jobs",
            JOB_ITEMS => "job_items",
            JOB_OUTSTANDING => "job_outstanding",
            DELIVERY_SEARCH => "delivery_search",
            ORDERING => "ordering",
        );
        Ok(out)
    }

    /// See [`Store::check`](crate::store::Store::check).
    pub fn check(&self) -> Result<CheckReport, StoreError> {
        check_snapshot(&self.slot.get()?.begin_read()?)
    }

    /// [`FileStore::check`] on a file opened read-only (redb's `ReadOnlyDatabase`): not one byte
    /// of the file changes. For `palo-webhooks check` on a stopped daemon's file.
    ///
    /// # Errors
    /// [`StoreError::Locked`] while a daemon has the file open; [`StoreError::NeedsRecovery`]
    /// when the file was not closed cleanly (a crash): only a read-write open, which the
    /// daemon does at start, can recover it; [`StoreError::Backend`] for what is not a redb
    /// file or cannot be read.
    pub fn check_file_read_only(path: &std::path::Path) -> Result<CheckReport, StoreError> {
        let db = match redb::ReadOnlyDatabase::open(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::RepairAborted) => return Err(StoreError::NeedsRecovery),
            Err(e) => return Err(e.into()),
        };
        check_snapshot(&db.begin_read()?)
    }

    /// Recovers a file that was not closed cleanly (redb's repair, as at every daemon start)
    /// and closes it again, touching nothing else: no layout write, no key needed for
    /// sealed secrets. For `palo-webhooks check` after a crash.
    ///
    /// # Errors
    /// [`StoreError::Locked`] while a daemon has the file open; [`StoreError::Backend`] when
    /// redb cannot repair it.
    pub fn recover_file(path: &std::path::Path) -> Result<(), StoreError> {
        drop(redb::Database::open(path)?);
        Ok(())
    }

    /// See [`Store::quick_check`](crate::store::Store::quick_check).
    pub fn quick_check(&self) -> Result<Vec<String>, StoreError> {
        quick(&self.slot.get()?.begin_read()?)
    }
}

/// Every invariant over one snapshot.
fn check_snapshot(txn: &ReadTransaction) -> Result<CheckReport, StoreError> {
    let mut report = CheckReport::default();
    check_webhooks(txn, &mut report)?;
    check_events(txn, &mut report)?;
    check_deliveries(txn, &mut report)?;
    check_index_tables(txn, &mut report)?;
    check_api_keys(txn, &mut report)?;
    super::search::check(txn, &mut report)?;
    super::ordering::check(txn, &mut report)?;
    Ok(report)
}

fn check_webhooks(txn: &ReadTransaction, report: &mut CheckReport) -> Result<(), StoreError> {
    let webhooks = txn.open_table(WEBHOOKS)?;
    let by_org = txn.open_table(ORG_WEBHOOKS)?;
    for entry in webhooks.iter()? {
        let (id, bytes) = entry?;
        let id = WebhookId(id.value());
        report.webhooks += 1;
        let webhook = match decode::<WebhookRecord>("webhooks", bytes.value())
            .and_then(|r| r.into_domain(id, None))
        {
            Ok(w) => w,
            Err(e) => {
                report.violation(format!("webhook {id}: {e}"));
                continue;
            }
        };
        if by_org
            .get((webhook.organization_id.as_str(), id.0))?
            .is_none()
        {
            report.violation(format!("webhook {id}: missing from org_webhooks"));
        }
    }
    for entry in by_org.iter()? {
        let (key, _) = entry?;
        let (org, id) = key.value();
        if webhooks.get(id)?.is_none() {
            report.violation(format!(
                "org_webhooks ({org}, {}) names no webhook",
                WebhookId(id)
            ));
        }
    }
    Ok(())
}

fn check_events(txn: &ReadTransaction, report: &mut CheckReport) -> Result<(), StoreError> {
    let events = txn.open_table(EVENTS)?;
    let by_org = txn.open_table(ORG_EVENTS)?;
    let by_event_id = txn.open_table(EVENT_IDS)?;
    let deliveries = txn.open_table(DELIVERIES)?;
    for entry in events.iter()? {
        let (key, bytes) = entry?;
        let key = EventKey(key.value());
        report.events += 1;
        let event =
            match decode::<EventRecord>("events", bytes.value()).and_then(|r| r.into_domain(key)) {
                Ok(e) => e,
                Err(e) => {
                    report.violation(format!("event {key}: {e}"));
                    continue;
                }
            };
        let org = event.organization_id.as_str();
        if by_org.get((org, key.0))?.is_none() {
            report.violation(format!("event {}: missing from org_events", event.event_id));
        }
        match by_event_id.get((event.event_id.as_str(), org))? {
            Some(k) if k.value() == key.0 => {}
            _ => report.violation(format!(
                "event {} of {org}: event_ids does not point to it",
                event.event_id
            )),
        }
        for id in &event.delivery_ids {
            match readable(load_delivery(&deliveries, *id))? {
                Readable::Missing => report.violation(format!(
                    "event {}: lists delivery {id}, which does not exist",
                    event.event_id
                )),
                // A tombstone (issue 15): nothing of it may still be attempted.
                Readable::Found(d)
                    if event.payload_deleted_at_ms.is_some() && !d.status.is_final() =>
                {
                    report.violation(format!(
                        "event {}: payload deleted but delivery {id} is {}",
                        event.event_id,
                        d.status.as_str()
                    ));
                }
                _ => {} // A corrupt delivery is reported by check_deliveries.
            }
        }
        if event.payload_deleted_at_ms.is_some() {
            report.payloads_deleted += 1;
            if !event.body.is_empty() {
                report.violation(format!(
                    "event {}: payload deleted but {} bytes of body stored",
                    event.event_id,
                    event.body.len()
                ));
            }
        }
    }
    Ok(())
}

fn check_deliveries(txn: &ReadTransaction, report: &mut CheckReport) -> Result<(), StoreError> {
    let deliveries = txn.open_table(DELIVERIES)?;
    let events = txn.open_table(EVENTS)?;
    let webhooks = txn.open_table(WEBHOOKS)?;
    let by_webhook = txn.open_table(WEBHOOK_DELIVERIES)?;
    let attempts = txn.open_table(ATTEMPTS)?;
    let index = txn.open_table(RETRY_INDEX)?;
    let due_by_webhook = txn.open_table(WEBHOOK_DUE)?;
    for entry in deliveries.iter()? {
        let (id, bytes) = entry?;
        let id = DeliveryId(id.value());
        report.deliveries += 1;
        let delivery = match decode::<DeliveryRecord>("deliveries", bytes.value())
            .and_then(|r| r.into_domain(id))
        {
            Ok(d) => d,
            Err(e) => {
                report.violation(format!("delivery {id}: {e}"));
                continue;
            }
        };
        // Its event exists and lists it.
        match readable(load_event(&events, delivery.event_key))? {
            Readable::Missing => {
                report.violation(format!("delivery {id}: its event does not exist"));
            }
            Readable::Found(event) if !event.delivery_ids.contains(&id) => {
                report.violation(format!("delivery {id}: its event does not list it"));
            }
            Readable::Found(event) if event.organization_id != delivery.organization_id => {
                report.violation(format!(
                    "delivery {id}: organization differs from its event's"
                ));
            }
            _ => {} // A corrupt event is reported by check_events.
        }
        if by_webhook.get((delivery.webhook_id.0, id.0))?.is_none() {
            report.violation(format!("delivery {id}: missing from webhook_deliveries"));
        }
        // The held index (issue 15): an entry exactly for a held delivery, which has no due
        // time and no retry-index entry.
        let held_entry = txn
            .open_table(HELD)?
            .get((delivery.webhook_id.0, id.0))?
            .is_some();
        if held_entry != (delivery.status == DeliveryStatus::Held) {
            report.violation(format!(
                "delivery {id}: {} but {} the held index",
                delivery.status.as_str(),
                if held_entry { "in" } else { "missing from" }
            ));
        }
        // The retry index: one entry at its due time when not final, none when final.
        if delivery.status == DeliveryStatus::Held {
            report.not_final += 1;
            if let Some(due) = delivery.next_attempt_at_ms {
                report.violation(format!("delivery {id}: held but due at {due}"));
            }
        } else if delivery.status.is_final() {
            if let Some(due) = delivery.next_attempt_at_ms {
                report.violation(format!(
                    "delivery {id}: final ({}) but due at {due}",
                    delivery.status.as_str()
                ));
            }
        } else {
            report.not_final += 1;
            match delivery.next_attempt_at_ms {
                None => report.violation(format!(
                    "delivery {id}: {} but has no due time",
                    delivery.status.as_str()
                )),
                Some(due) if index.get((due, id.0))?.is_none() => report.violation(format!(
                    "delivery {id}: due at {due} but missing from retry_index"
                )),
                Some(due)
                    if due_by_webhook
                        .get((delivery.webhook_id.0, due, id.0))?
                        .is_none() =>
                {
                    report.violation(format!(
                        "delivery {id}: due at {due} but missing from webhook_due"
                    ));
                }
                Some(_) => {}
            }
            // A deleted webhook's unfinished deliveries are cancelled by its sweep.
            if webhooks.get(delivery.webhook_id.0)?.is_none()
                && txn
                    .open_table(HELD_SWEEPS)?
                    .get(delivery.webhook_id.0)?
                    .is_none()
            {
                report.violation(format!(
                    "delivery {id}: {} but its webhook {} does not exist (and no sweep cancels it)",
                    delivery.status.as_str(),
                    delivery.webhook_id
                ));
            }
        }
        // Attempts numbered 1..=attempt_count.
        let mut expected = 1u32;
        for entry in attempts.range((id.0, 0)..=(id.0, u32::MAX))? {
            let (key, bytes) = entry?;
            let number = key.value().1;
            report.attempts += 1;
            if number != expected {
                report.violation(format!(
                    "delivery {id}: attempt {number} where {expected} was expected"
                ));
            }
            expected = number.saturating_add(1);
            if let Err(e) = decode::<AttemptRecord>("attempts", bytes.value())
                .and_then(|r| r.into_domain(number))
            {
                report.violation(format!("delivery {id}, attempt {number}: {e}"));
            }
        }
        let logged = expected - 1;
        if logged != delivery.attempt_count {
            report.violation(format!(
                "delivery {id}: attempt_count is {} but {logged} attempts are logged",
                delivery.attempt_count
            ));
        }
        if delivery.scheduled_attempts > delivery.attempt_count {
            report.violation(format!(
                "delivery {id}: {} scheduled attempts of {} in all",
                delivery.scheduled_attempts, delivery.attempt_count
            ));
        }
    }
    Ok(())
}

fn check_index_tables(txn: &ReadTransaction, report: &mut CheckReport) -> Result<(), StoreError> {
    let deliveries = txn.open_table(DELIVERIES)?;
    // A corrupt delivery is reported by check_deliveries; here it counts as absent.
    let load = |id: u128| -> Result<Option<Delivery>, StoreError> {
        Ok(
            match readable(load_delivery(&deliveries, DeliveryId(id)))? {
                Readable::Found(delivery) => Some(delivery),
                Readable::Missing | Readable::Corrupt => None,
            },
        )
    };
    for entry in txn.open_table(RETRY_INDEX)?.iter()? {
        let (key, _) = entry?;
        let (due, id) = key.value();
        report.retry_index += 1;
        match load(id)? {
            None => report.violation(format!(
                "retry_index ({due}, {}) names no delivery",
                DeliveryId(id)
            )),
            Some(d) if d.status.is_final() => report.violation(format!(
                "retry_index ({due}, {}) names a final delivery",
                d.id
            )),
            Some(d) if d.next_attempt_at_ms != Some(due) => report.violation(format!(
                "retry_index ({due}, {}) disagrees with the delivery's due time {:?}",
                d.id, d.next_attempt_at_ms
            )),
            Some(_) => {}
        }
    }
    for entry in txn.open_table(WEBHOOK_DUE)?.iter()? {
        let (key, _) = entry?;
        let (webhook, due, id) = key.value();
        match load(id)? {
            Some(d) if d.webhook_id.0 == webhook && d.next_attempt_at_ms == Some(due) => {}
            _ => report.violation(format!(
                "webhook_due ({}, {due}, {}) disagrees with the delivery",
                crate::ids::WebhookId(webhook),
                DeliveryId(id)
            )),
        }
    }
    // Jobs: what a job waits for, it queued; what it queued belongs to a job.
    let jobs = txn.open_table(JOBS)?;
    let items = txn.open_table(JOB_ITEMS)?;
    for entry in txn.open_table(JOB_OUTSTANDING)?.iter()? {
        let (key, _) = entry?;
        let (job, id) = key.value();
        if items.get((job, id))?.is_none() {
            report.violation(format!(
                "job_outstanding ({}, {}) is not in job_items",
                crate::ids::JobId(job),
                DeliveryId(id)
            ));
        }
    }
    for entry in items.iter()? {
        let (key, _) = entry?;
        let (job, id) = key.value();
        if jobs.get(job)?.is_none() {
            report.violation(format!(
                "job_items ({}, {}) names no job",
                crate::ids::JobId(job),
                DeliveryId(id)
            ));
        }
    }
    let sweeps = txn.open_table(HELD_SWEEPS)?;
    let webhooks = txn.open_table(WEBHOOKS)?;
    let mut swept_checked = None;
    for entry in txn.open_table(HELD)?.iter()? {
        let (key, _) = entry?;
        let (webhook, id) = key.value();
        // An enabled webhook's held deliveries are being released or cancelled: its sweep
        // entry must be there, or they would stay held for good.
        if swept_checked != Some(webhook) {
            swept_checked = Some(webhook);
            let enabled = match webhooks.get(webhook)? {
                Some(bytes) => decode::<WebhookRecord>("webhooks", bytes.value())
                    .and_then(|r| r.into_domain(WebhookId(webhook), None))
                    .is_ok_and(|w| w.disabled.is_none()),
                None => false,
            };
            if enabled && sweeps.get(webhook)?.is_none() {
                report.violation(format!(
                    "webhook {}: enabled with held deliveries and no held_sweeps entry",
                    WebhookId(webhook)
                ));
            }
        }
        match load(id)? {
            Some(d) if d.webhook_id.0 == webhook && d.status == DeliveryStatus::Held => {}
            _ => report.violation(format!(
                "held ({}, {}) names no held delivery of that webhook",
                WebhookId(webhook),
                DeliveryId(id)
            )),
        }
    }
    for entry in txn.open_table(WEBHOOK_DELIVERIES)?.iter()? {
        let (key, _) = entry?;
        let (webhook, id) = key.value();
        match load(id)? {
            Some(d) if d.webhook_id.0 == webhook => {}
            _ => report.violation(format!(
                "webhook_deliveries ({}, {}) names no delivery of that webhook",
                WebhookId(webhook),
                DeliveryId(id)
            )),
        }
    }
    for entry in txn.open_table(ATTEMPTS)?.iter()? {
        let (key, _) = entry?;
        let (id, number) = key.value();
        if deliveries.get(id)?.is_none() {
            report.violation(format!(
                "attempt {number} of {} has no delivery",
                DeliveryId(id)
            ));
        }
    }
    let events = txn.open_table(EVENTS)?;
    for entry in txn.open_table(ORG_EVENTS)?.iter()? {
        let (key, _) = entry?;
        let (org, event) = key.value();
        if events.get(event)?.is_none() {
            report.violation(format!(
                "org_events ({org}, {}) names no event",
                EventKey(event)
            ));
        }
    }
    for entry in txn.open_table(EVENT_IDS)?.iter()? {
        let (key, value) = entry?;
        let (event_id, org) = key.value();
        if events.get(value.value())?.is_none() {
            report.violation(format!("event_ids ({event_id}, {org}) names no event"));
        }
    }
    Ok(())
}

fn check_api_keys(txn: &ReadTransaction, report: &mut CheckReport) -> Result<(), StoreError> {
    let keys = txn.open_table(API_KEYS)?;
    let hashes = txn.open_table(API_KEY_HASHES)?;
    for entry in keys.iter()? {
        let (id, bytes) = entry?;
        let id = KeyId(id.value());
        report.api_keys += 1;
        match decode::<ApiKeyRecord>("api_keys", bytes.value()) {
            Err(e) => report.violation(format!("api key {id}: {e}")),
            Ok(record) => {
                let key = record.into_domain(id);
                match hashes.get(key.key_hash.as_slice())? {
                    Some(v) if v.value() == id.0 => {}
                    _ => report.violation(format!("api key {id}: missing from api_key_hashes")),
                }
            }
        }
    }
    for entry in hashes.iter()? {
        let (_, id) = entry?;
        if keys.get(id.value())?.is_none() {
            report.violation(format!("api_key_hashes names no key {}", KeyId(id.value())));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{self, EventInput};
    use crate::model::{EventFilter, Secret, Webhook};

    /// A store holding one webhook and `n` events, each with one pending delivery.
    fn store_with_backlog(n: usize) -> (tempfile::TempDir, FileStore, WebhookId) {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(&dir.path().join("c.redb")).unwrap();
        let webhook = Webhook {
            id: WebhookId::generate(),
            organization_id: "org_1".into(),
            url: "https://example.com/hook".into(),
            events: EventFilter::All,
            secret: Secret("s".into()),
            previous_secret: None,
            disabled: None,
            failing_since_ms: None,
            active: true,
            description: String::new(),
            options: Default::default(),
            created_at_ms: 1,
            updated_at_ms: 1,
        };
        store.create_webhook(&webhook).unwrap();
        let data = serde_json::value::RawValue::from_string(
            r#"{"ticket_id":"T","title":"t","priority":"p3","project_id":"p","created_by":"u"}"#
                .into(),
        )
        .unwrap();
        let events = (0..n)
            .map(|i| {
                event::prepare(
                    EventInput {
                        event_id: Some(format!("evt_{i}")),
                        event_type: "ticket.created".into(),
                        timestamp: None,
                        organization_id: "org_1".into(),
                        data: &data,
                    },
                    1_000,
                    false,
                )
                .unwrap()
            })
            .collect();
        store.bulk_load(events, webhook.id, 1_000, 2_000).unwrap();
        (dir, store, webhook.id)
    }

    #[test]
    fn an_in_memory_store_passes_and_decode_record_refuses_garbage() {
        let store = FileStore::open_in_memory().unwrap();
        assert!(store.check().unwrap().is_ok());
        for table in [
            "webhooks",
            "events",
            "deliveries",
            "attempts",
            "api_keys",
            "nope",
        ] {
            assert!(super::super::decode_record(table, &[0xff, 0xff, 0xff]).is_err());
        }
    }

    #[test]
    fn a_consistent_store_passes() {
        let (_dir, store, _) = store_with_backlog(3);
        let report = store.check().unwrap();
        assert!(report.is_ok(), "{report:?}");
        assert_eq!(
            (
                report.webhooks,
                report.events,
                report.deliveries,
                report.not_final,
                report.retry_index
            ),
            (1, 3, 3, 3, 3)
        );
        assert!(store.quick_check().unwrap().is_empty());
    }

    #[test]
    fn each_broken_invariant_is_reported() {
        let (_dir, store, webhook) = store_with_backlog(3);
        let ids: Vec<u128> = store
            .read(|txn| {
                let table = txn.open_table(DELIVERIES)?;
                let ids: Result<Vec<u128>, redb::StorageError> =
                    table.iter()?.map(|e| e.map(|(k, _)| k.value())).collect();
                Ok(ids?)
            })
            .unwrap();
        store
            .write(move |txn| {
                // A pending delivery loses its index entry; an index entry gains a twin at
                // another time; an attempt log entry appears with a gap and no count.
                let mut index = txn.open_table(RETRY_INDEX)?;
                index.remove((2_000, ids[0]))?;
                index.insert((9_000, ids[1]), ())?;
                txn.open_table(ATTEMPTS)?
                    .insert((ids[2], 2), [0u8].as_slice())?;
                txn.open_table(WEBHOOK_DELIVERIES)?
                    .insert((webhook.0, 42), ())?;
                Ok(())
            })
            .unwrap();
        let report = store.check().unwrap();
        let all = report.violations.join("\n");
        assert!(!report.is_ok());
        assert!(all.contains("missing from retry_index"), "{all}");
        assert!(
            all.contains("disagrees with the delivery's due time"),
            "{all}"
        );
        assert!(all.contains("attempt 2 where 1 was expected"), "{all}");
        assert!(
            all.contains("attempt_count is 0 but 2 attempts are logged"),
            "{all}"
        );
        assert!(all.contains("names no delivery of that webhook"), "{all}");
        assert_eq!(
            store.quick_check().unwrap(),
            vec!["deliveries has 3 entries but webhook_deliveries has 4".to_owned()]
        );
    }
}
