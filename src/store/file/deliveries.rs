//! FileStore operations on events, deliveries, attempts and the retry index.

use redb::{ReadableTable, WriteTransaction};

use super::due::move_index_entry;
use super::search::{reindex, DELIVERY_SEARCH};
use super::writer::{Change, Txn};

use super::records::{decode, encode, AttemptRecord, DeliveryRecord, EventRecord, WebhookRecord};
use super::{
    FileStore, StoreError, ATTEMPTS, DELIVERIES, EVENTS, EVENT_IDS, ORG_EVENTS, ORG_WEBHOOKS,
    RETRY_INDEX, WEBHOOKS, WEBHOOK_DELIVERIES, WEBHOOK_DUE,
};
use crate::event::{EventType, PreparedEvent};
use crate::ids::{DeliveryId, EventKey, WebhookId};
use crate::model::{Attempt, Delivery, DeliveryStatus, Event};
use crate::retry::RetrySchedule;

/// Which webhooks an accepted event fans out to.
#[derive(Debug, Clone, Copy)]
pub enum FanOut {
    /// Every active webhook of the event's organization subscribed to its type.
    Subscribers,
    /// Exactly this webhook (the test-delivery endpoint), if it belongs to the organization.
    Only(WebhookId),
    /// As `Subscribers`, except this webhook (an operational event about it, issue 15: a
    /// webhook never receives its own `webhook.disabled`); an event no webhook receives is
    /// not stored (the answer is `Accepted` with no deliveries).
    SubscribersExcept(WebhookId),
}

/// The result of [`FileStore::accept_event`].
#[derive(Debug)]
pub enum AcceptOutcome {
    /// New event stored with its deliveries (possibly none).
    Accepted {
        /// The stored event.
        event: Event,
        /// Its deliveries, each with a retry-index entry at the first due time.
        deliveries: Vec<Delivery>,
    },
    /// The same (organization, `event_id`) with the same content was accepted before;
    /// nothing was written.
    Replayed {
        /// The original event.
        event: Event,
    },
    /// The same (organization, `event_id`) exists with different content; nothing was written.
    Conflict,
}

/// Filters of [`FileStore::list_events`]; bounds compare against the time of ingest.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    /// Only this organization's events.
    pub organization_id: Option<String>,
    /// Only this type.
    pub event_type: Option<EventType>,
    /// Received at or after, ms since the epoch.
    pub since_ms: Option<u64>,
    /// Received at or before, ms since the epoch.
    pub until_ms: Option<u64>,
    /// Only events of which at least one delivery has this status (issue 15: Stripe's
    /// "events not delivered" is `failed`).
    pub delivery_status: Option<DeliveryStatus>,
}

impl EventQuery {
    /// The event keys to scan, `(low, high)` inclusive, strictly older than `before`, or
    /// `None` when no key can match. An event key is a ULID whose top 48 bits are the time
    /// of ingest, so the time bounds are key bounds.
    pub(crate) fn key_range(&self, before: Option<EventKey>) -> Option<(u128, u128)> {
        let low = u128::from(self.since_ms.unwrap_or(0)) << 80;
        let mut high = self.until_ms.map_or(u128::MAX, |ms| {
            ((u128::from(ms) + 1) << 80).saturating_sub(1)
        });
        if let Some(cursor) = before {
            high = high.min(cursor.0.saturating_sub(1));
        }
        (low <= high).then_some((low, high))
    }
}

/// The result of [`FileStore::webhook_activity`].
#[derive(Debug, Clone)]
pub struct WebhookActivity {
    /// Deliveries created in the window, newest first.
    pub deliveries: Vec<Delivery>,
    /// Every attempt of those deliveries (manual ones included), in no particular order.
    pub attempts: Vec<Attempt>,
    /// The webhook's newest delivery, in the window or not; `None` if it has none.
    pub last: Option<Delivery>,
    /// Whether the scan stopped at `cap` deliveries before reaching the window's start.
    pub truncated: bool,
}

/// A delivery and, unless it was known to the caller, its event's body (the envelope bytes).
pub type DeliveryForAttempt = (Delivery, Option<Vec<u8>>);

impl FileStore {
    /// See [`Store::accept_event`](crate::store::Store::accept_event).
    pub async fn accept_event(
        &self,
        prepared: PreparedEvent,
        fan_out: FanOut,
        now_ms: u64,
        first_due_ms: u64,
    ) -> Result<AcceptOutcome, StoreError> {
        self.write_async(move |txn| {
            let prepared = &prepared;
            let org = prepared.organization_id.as_str();
            let existing = txn
                .open_table(EVENT_IDS)?
                .get((prepared.event_id.as_str(), org))?
                .map(|v| v.value());
            if let Some(key) = existing {
                let event = load_event(&txn.open_table(EVENTS)?, EventKey(key))?;
                return Ok(match event {
                    Some(event) if event.content_hash == prepared.content_hash => {
                        AcceptOutcome::Replayed { event }
                    }
                    _ => AcceptOutcome::Conflict,
                });
            }
            let targets = fan_out_targets(txn, prepared, fan_out)?;
            if targets.is_empty() && matches!(fan_out, FanOut::SubscribersExcept(_)) {
                // An operational event nobody receives is not stored.
                let (event, _) = crate::store::new_event(prepared, &[], now_ms, first_due_ms);
                return Ok(AcceptOutcome::Accepted {
                    event,
                    deliveries: Vec::new(),
                });
            }
            let (event, deliveries) =
                store_new_event(txn, prepared, &targets, now_ms, first_due_ms)?;
            Ok(AcceptOutcome::Accepted { event, deliveries })
        })
        .await
    }

    /// See [`Store::get_event`](crate::store::Store::get_event).
    pub fn get_event(
        &self,
        organization_id: &str,
        event_id: &str,
    ) -> Result<Option<Event>, StoreError> {
        self.read(|txn| {
            let Some(key) = txn
                .open_table(EVENT_IDS)?
                .get((event_id, organization_id))?
                .map(|v| v.value())
            else {
                return Ok(None);
            };
            load_event(&txn.open_table(EVENTS)?, EventKey(key))
        })
    }

    /// See [`Store::organizations_with_event_id`](crate::store::Store::organizations_with_event_id).
    pub fn organizations_with_event_id(&self, event_id: &str) -> Result<Vec<String>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(EVENT_IDS)?;
            let mut orgs = Vec::new();
            for row in table.range((event_id, "")..)? {
                let (k, _) = row?;
                let (id, org) = k.value();
                if id != event_id {
                    break;
                }
                orgs.push(org.to_owned());
            }
            Ok(orgs)
        })
    }

    /// See [`Store::list_events`](crate::store::Store::list_events).
    pub fn list_events(
        &self,
        query: &EventQuery,
        before: Option<EventKey>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let Some((low, high)) = query.key_range(before) else {
            return Ok(Vec::new());
        };
        self.read(|txn| {
            let events = txn.open_table(EVENTS)?;
            let deliveries = txn.open_table(DELIVERIES)?;
            let keys: Box<dyn Iterator<Item = Result<u128, redb::StorageError>>> =
                match &query.organization_id {
                    Some(org) => Box::new(
                        txn.open_table(ORG_EVENTS)?
                            .range((org.as_str(), low)..=(org.as_str(), high))?
                            .rev()
                            .map(|row| row.map(|(k, _)| k.value().1)),
                    ),
                    None => Box::new(
                        events
                            .range(low..=high)?
                            .rev()
                            .map(|row| row.map(|(k, _)| k.value())),
                    ),
                };
            let mut out = Vec::new();
            for key in keys {
                let Some(event) = load_event(&events, EventKey(key?))? else {
                    continue;
                };
                if query.event_type.is_none_or(|t| t == event.event_type)
                    && has_delivery_status(&deliveries, &event, query.delivery_status)?
                {
                    out.push(event);
                    if out.len() == limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
    }

    /// See [`Store::get_deliveries`](crate::store::Store::get_deliveries).
    pub fn get_deliveries(&self, ids: &[DeliveryId]) -> Result<Vec<Delivery>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(DELIVERIES)?;
            ids.iter()
                .filter_map(|id| load_delivery(&table, *id).transpose())
                .collect()
        })
    }

    /// See [`Store::get_delivery_with_attempts`](crate::store::Store::get_delivery_with_attempts).
    pub fn get_delivery_with_attempts(
        &self,
        id: DeliveryId,
    ) -> Result<Option<(Delivery, Vec<Attempt>)>, StoreError> {
        self.read(|txn| {
            let Some(delivery) = load_delivery(&txn.open_table(DELIVERIES)?, id)? else {
                return Ok(None);
            };
            let mut attempts = Vec::new();
            for row in txn
                .open_table(ATTEMPTS)?
                .range((id.0, 0)..=(id.0, u32::MAX))?
            {
                let (k, v) = row?;
                attempts.push(
                    decode::<AttemptRecord>("attempts", v.value())?.into_domain(k.value().1)?,
                );
            }
            Ok(Some((delivery, attempts)))
        })
    }

    /// See [`Store::list_webhook_deliveries`](crate::store::Store::list_webhook_deliveries).
    pub fn list_webhook_deliveries(
        &self,
        webhook_id: WebhookId,
        status: Option<DeliveryStatus>,
        event_type: Option<EventType>,
        before: Option<DeliveryId>,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let high = before.map_or(u128::MAX, |id| id.0.saturating_sub(1));
        self.read(|txn| {
            let table = txn.open_table(DELIVERIES)?;
            let mut out = Vec::new();
            for row in txn
                .open_table(WEBHOOK_DELIVERIES)?
                .range((webhook_id.0, 0)..=(webhook_id.0, high))?
                .rev()
            {
                let (k, _) = row?;
                let Some(delivery) = load_delivery(&table, DeliveryId(k.value().1))? else {
                    continue;
                };
                if status.is_none_or(|s| s == delivery.status)
                    && event_type.is_none_or(|t| t == delivery.event_type)
                {
                    out.push(delivery);
                    if out.len() == limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
    }

    /// See [`Store::webhook_activity`](crate::store::Store::webhook_activity).
    pub fn webhook_activity(
        &self,
        webhook_id: WebhookId,
        since_ms: u64,
        cap: usize,
    ) -> Result<WebhookActivity, StoreError> {
        self.read(|txn| {
            let deliveries = txn.open_table(DELIVERIES)?;
            let attempts_table = txn.open_table(ATTEMPTS)?;
            let index = txn.open_table(WEBHOOK_DELIVERIES)?;
            let last = match index
                .range((webhook_id.0, 0)..=(webhook_id.0, u128::MAX))?
                .next_back()
            {
                Some(row) => load_delivery(&deliveries, DeliveryId(row?.0.value().1))?,
                None => None,
            };
            // A delivery id is a ULID whose top 48 bits are its creation time in ms.
            let low = u128::from(since_ms) << 80;
            let mut out = WebhookActivity {
                deliveries: Vec::new(),
                attempts: Vec::new(),
                last,
                truncated: false,
            };
            for row in index
                .range((webhook_id.0, low)..=(webhook_id.0, u128::MAX))?
                .rev()
            {
                let id = DeliveryId(row?.0.value().1);
                let Some(delivery) = load_delivery(&deliveries, id)? else {
                    continue;
                };
                if delivery.created_at_ms < since_ms {
                    continue;
                }
                if out.deliveries.len() == cap {
                    out.truncated = true;
                    break;
                }
                for row in attempts_table.range((id.0, 0)..=(id.0, u32::MAX))? {
                    let (k, v) = row?;
                    let attempt =
                        decode::<AttemptRecord>("attempts", v.value())?.into_domain(k.value().1)?;
                    out.attempts.push(attempt);
                }
                out.deliveries.push(delivery);
            }
            Ok(out)
        })
    }

    /// See [`Store::delivery_for_attempt`](crate::store::Store::delivery_for_attempt).
    pub fn delivery_for_attempt(
        &self,
        id: DeliveryId,
        body_known: impl FnOnce(EventKey) -> bool,
    ) -> Result<Option<DeliveryForAttempt>, StoreError> {
        self.read(|txn| {
            let Some(delivery) = load_delivery(&txn.open_table(DELIVERIES)?, id)? else {
                return Ok(None);
            };
            if body_known(delivery.event_key) {
                return Ok(Some((delivery, None)));
            }
            let Some(event) = load_event(&txn.open_table(EVENTS)?, delivery.event_key)? else {
                return Err(StoreError::Corrupt {
                    table: "events",
                    reason: format!("missing event of {id}"),
                });
            };
            Ok(Some((delivery, Some(event.body))))
        })
    }

    /// See [`Store::record_attempt`](crate::store::Store::record_attempt).
    pub async fn record_attempt(
        &self,
        id: DeliveryId,
        attempt: Attempt,
        schedule: RetrySchedule,
        now_ms: u64,
    ) -> Result<Option<Delivery>, StoreError> {
        self.write_async(move |txn| {
            let (attempt, schedule) = (&attempt, &schedule);
            let mut table = txn.open_table(DELIVERIES)?;
            let Some(mut delivery) = load_delivery(&table, id)? else {
                return Ok(None);
            };
            let stored = delivery.clone();
            txn.open_table(ATTEMPTS)?.insert(
                (id.0, attempt.number),
                encode(&AttemptRecord::from_domain(attempt)).as_slice(),
            )?;
            let was_held = delivery.status == DeliveryStatus::Held;
            let before = crate::store::apply_attempt(&mut delivery, attempt, schedule, now_ms);
            if was_held && delivery.status != DeliveryStatus::Held {
                super::lifecycle::take_held(txn, delivery.webhook_id, id)?;
            }
            move_index_entry(
                txn,
                delivery.webhook_id,
                id,
                before,
                delivery.next_attempt_at_ms,
            )?;
            put_delivery(txn, &mut table, Some(&stored), &delivery)?;
            Ok(Some(delivery))
        })
        .await
    }

    /// See [`Store::delete_webhook`](crate::store::Store::delete_webhook).
    pub fn delete_webhook(&self, id: WebhookId, now_ms: u64) -> Result<Option<u64>, StoreError> {
        // Counted before, in a snapshot: counting inside the write would make every other
        // writer wait for it.
        let concerned = self.unfinished_count(id)? + self.held_count(id)?;
        self.write(move |txn| {
            let Some(bytes) = txn
                .open_table(WEBHOOKS)?
                .remove(id.0)?
                .map(|v| v.value().to_vec())
            else {
                return Ok(None);
            };
            // Only the organization is read: the secret is not opened.
            let webhook = decode::<WebhookRecord>("webhooks", &bytes)?.into_domain(id, None)?;
            txn.open_table(ORG_WEBHOOKS)?
                .remove((webhook.organization_id.as_str(), id.0))?;
            txn.publish(Change::Webhook { id, webhook: None });
            // The first chunk of its unfinished deliveries is cancelled here, the rest by
            // the sweep (`lifecycle::sweep_deleted`).
            super::lifecycle::sweep_deleted(txn, id, now_ms)?;
            Ok(Some(concerned))
        })
    }
}

/// Writes a new event, one delivery per target webhook and their retry-index entries (due at
/// `first_due_ms`) into `txn`. The caller has checked idempotency.
fn store_new_event(
    txn: &Txn<'_>,
    prepared: &PreparedEvent,
    targets: &[(WebhookId, bool)],
    now_ms: u64,
    first_due_ms: u64,
) -> Result<(Event, Vec<Delivery>), StoreError> {
    let org = prepared.organization_id.as_str();
    let (event, deliveries) = crate::store::new_event(prepared, targets, now_ms, first_due_ms);
    let key = event.key;
    txn.open_table(EVENTS)?
        .insert(key.0, encode(&EventRecord::from_domain(&event)).as_slice())?;
    txn.open_table(ORG_EVENTS)?.insert((org, key.0), ())?;
    txn.open_table(EVENT_IDS)?
        .insert((prepared.event_id.as_str(), org), key.0)?;
    let mut table = txn.open_table(DELIVERIES)?;
    let mut by_webhook = txn.open_table(WEBHOOK_DELIVERIES)?;
    let mut index = txn.open_table(RETRY_INDEX)?;
    let mut due_by_webhook = txn.open_table(WEBHOOK_DUE)?;
    let mut search = txn.open_table(DELIVERY_SEARCH)?;
    if !deliveries.is_empty() {
        txn.publish(Change::Accepted {
            event: key,
            body: bytes::Bytes::from(event.body.clone()),
            deliveries: deliveries.clone(),
        });
    }
    for delivery in &deliveries {
        table.insert(
            delivery.id.0,
            encode(&DeliveryRecord::from_domain(delivery)).as_slice(),
        )?;
        by_webhook.insert((delivery.webhook_id.0, delivery.id.0), ())?;
        reindex(&mut search, None, Some(delivery))?;
        super::ordering::reorder(txn, None, Some(delivery))?;
        if delivery.status == DeliveryStatus::Held {
            super::lifecycle::put_held(txn, delivery.webhook_id, delivery.id, first_due_ms)?;
            continue;
        }
        index.insert((first_due_ms, delivery.id.0), ())?;
        due_by_webhook.insert((delivery.webhook_id.0, first_due_ms, delivery.id.0), ())?;
        txn.publish(Change::Index {
            webhook: delivery.webhook_id,
            delivery: delivery.id,
            from: None,
            to: Some(first_due_ms),
        });
    }
    Ok((event, deliveries))
}

/// Webhooks whose fan-out view (subscriptions, parsed filter, switches) is kept between
/// events, by id, with the record bytes it was decoded from: an event in an organization of
/// many webhooks then decodes no record and parses no filter that did not change (issue
/// 16: 10k filtered webhooks cost 28 ms per event without it, `cargo bench --bench micro`).
const FAN_OUT_CACHE: usize = 32_768;

/// A full fan-out cache takes a new view only in place of one unused for this long. Plain
/// LRU would let an organization of more webhooks than [`FAN_OUT_CACHE`] evict each view
/// just before its next use (a scan longer than the cache), so every event decoded every
/// record (40k filtered webhooks: 218 ms per event, `cargo bench --bench micro --
/// fan_out_store`); kept views stay, and only the overflow is decoded each time.
const FAN_OUT_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// One cached fan-out view.
struct FanOutEntry {
    /// The record bytes it was decoded from: it is used only while they are unchanged.
    made_from: Vec<u8>,
    /// The view.
    target: std::sync::Arc<crate::store::FanOutTarget>,
    /// When an event last used it.
    used: std::time::Instant,
}

thread_local! {
    /// Fan-out runs in the writer thread only, so the cache is that thread's.
    static FAN_OUT_TARGETS: std::cell::RefCell<lru::LruCache<u128, FanOutEntry>> =
        std::cell::RefCell::new(lru::LruCache::new(
            std::num::NonZeroUsize::new(FAN_OUT_CACHE).expect("non-zero"),
        ));
}

/// The fan-out view of webhook `id`, from the cache while its record is unchanged; `now` is
/// the time of this event's fan-out.
fn fan_out_target(
    webhooks: &impl ReadableTable<u128, &'static [u8]>,
    id: WebhookId,
    now: std::time::Instant,
) -> Result<Option<std::sync::Arc<crate::store::FanOutTarget>>, StoreError> {
    let Some(bytes) = webhooks.get(id.0)? else {
        return Ok(None);
    };
    let bytes = bytes.value();
    let kept = FAN_OUT_TARGETS.with(|cache| {
        cache
            .borrow_mut()
            .get_mut(&id.0)
            .filter(|entry| entry.made_from.as_slice() == bytes)
            .map(|entry| {
                entry.used = now;
                std::sync::Arc::clone(&entry.target)
            })
    });
    if let Some(target) = kept {
        return Ok(Some(target));
    }
    // Secrets stay sealed: fan-out reads no credential.
    let webhook = decode::<WebhookRecord>("webhooks", bytes)?.into_domain(id, None)?;
    let target = std::sync::Arc::new(crate::store::FanOutTarget::of(webhook));
    FAN_OUT_TARGETS.with(|cache| {
        let mut cache = cache.borrow_mut();
        let room = cache.len() < cache.cap().get()
            || cache.contains(&id.0)
            || cache
                .peek_lru()
                .is_some_and(|(_, lru)| now.duration_since(lru.used) >= FAN_OUT_IDLE);
        if room {
            cache.put(
                id.0,
                FanOutEntry {
                    made_from: bytes.to_vec(),
                    target: std::sync::Arc::clone(&target),
                    used: now,
                },
            );
        }
    });
    Ok(Some(target))
}

/// The webhooks an event goes to. Only ids and subscriptions are read: secrets stay sealed.
fn fan_out_targets(
    txn: &WriteTransaction,
    prepared: &PreparedEvent,
    fan_out: FanOut,
) -> Result<Vec<(WebhookId, bool)>, StoreError> {
    let webhooks = txn.open_table(WEBHOOKS)?;
    let org = prepared.organization_id.as_str();
    let envelope = crate::store::Envelope::new(&prepared.body);
    let now = std::time::Instant::now();
    let target = |w: std::sync::Arc<crate::store::FanOutTarget>| {
        crate::store::fan_out_to(fan_out, prepared.event_type, &w, &envelope)
            .map(|held| (w.id, held))
    };
    match fan_out {
        FanOut::Only(id) => Ok(fan_out_target(&webhooks, id, now)?
            .filter(|w| w.organization_id == org)
            .and_then(target)
            .into_iter()
            .collect()),
        FanOut::Subscribers | FanOut::SubscribersExcept(_) => {
            let mut targets = Vec::new();
            for row in txn
                .open_table(ORG_WEBHOOKS)?
                .range((org, 0)..=(org, u128::MAX))?
            {
                let (k, _) = row?;
                if let Some(webhook) = fan_out_target(&webhooks, WebhookId(k.value().1), now)? {
                    targets.extend(target(webhook));
                }
            }
            Ok(targets)
        }
    }
}

/// Whether `status` is `None` or one of `event`'s deliveries has it.
fn has_delivery_status(
    deliveries: &impl ReadableTable<u128, &'static [u8]>,
    event: &Event,
    status: Option<DeliveryStatus>,
) -> Result<bool, StoreError> {
    let Some(status) = status else {
        return Ok(true);
    };
    for id in &event.delivery_ids {
        if load_delivery(deliveries, *id)?.is_some_and(|d| d.status == status) {
            return Ok(true);
        }
    }
    Ok(false)
}

pub(super) fn load_event(
    table: &impl ReadableTable<u128, &'static [u8]>,
    key: EventKey,
) -> Result<Option<Event>, StoreError> {
    match table.get(key.0)? {
        None => Ok(None),
        Some(bytes) => Ok(Some(
            decode::<EventRecord>("events", bytes.value())?.into_domain(key)?,
        )),
    }
}

/// Writes a delivery's record and moves its search-index entries from `before` (its stored
/// state, `None` when new) in the same transaction: every write of a delivery that may change
/// its status or outcome goes through here, so the index never disagrees with the record.
pub(super) fn put_delivery(
    txn: &Txn<'_>,
    table: &mut redb::Table<'_, u128, &'static [u8]>,
    before: Option<&Delivery>,
    after: &Delivery,
) -> Result<(), StoreError> {
    table.insert(
        after.id.0,
        encode(&DeliveryRecord::from_domain(after)).as_slice(),
    )?;
    super::ordering::reorder(txn, before, Some(after))?;
    reindex(&mut txn.open_table(DELIVERY_SEARCH)?, before, Some(after))
}

pub(super) fn load_delivery(
    table: &impl ReadableTable<u128, &'static [u8]>,
    id: DeliveryId,
) -> Result<Option<Delivery>, StoreError> {
    match table.get(id.0)? {
        None => Ok(None),
        Some(bytes) => Ok(Some(
            decode::<DeliveryRecord>("deliveries", bytes.value())?.into_domain(id)?,
        )),
    }
}

impl FileStore {
    /// See [`Store::bulk_load`](crate::store::Store::bulk_load).
    #[doc(hidden)]
    pub fn bulk_load(
        &self,
        events: Vec<PreparedEvent>,
        webhook: WebhookId,
        now_ms: u64,
        due_ms: u64,
    ) -> Result<(), StoreError> {
        self.write(move |txn| {
            for prepared in &events {
                store_new_event(txn, prepared, &[(webhook, false)], now_ms, due_ms)?;
            }
            Ok(())
        })
    }
}
