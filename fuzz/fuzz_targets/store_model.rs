//! Model-based test of the store: random operations run against `Store::open_in_memory()`
//! and against a small in-memory model, compared after every step (the redb fuzzer's
//! approach, with a `Vec`/`BTreeMap` model instead of a `BTreeMap` of bytes).
//!
//! Operations: create a webhook (organization from a small set, active or not, `"*"` or
//! only `ticket.created`), activate or deactivate one, delete one, accept an event
//! (organization and `event_id` from small sets so replays and conflicts happen, content
//! variants so they differ), record an attempt of a known delivery (success, failure,
//! 429 with `Retry-After`, timeout; scheduled or manual), postpone a delivery, move the
//! clock.
//!
//! The model keeps, independently of the store's code: which events exist per
//! (organization, `event_id`) and their deliveries; each delivery's status, attempt log,
//! scheduled-attempt count and due time, by its own copy of the retry rules. After each
//! step the store's answers (`get_event`, `get_deliveries`, `get_delivery_with_attempts`,
//! `list_webhook_deliveries`, `due_entries`, `pending_count`, `get_webhook`) must equal
//! the model's, and `Store::check` must find no violation: a lost delivery, a wrong status,
//! a stale or missing retry-index entry or a broken secondary table all fail here.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use palo_webhooks::clock;
use palo_webhooks::event::{self, EventInput, EventType};
use palo_webhooks::ids::{DeliveryId, EventKey, WebhookId};
use palo_webhooks::model::{
    Attempt, AttemptError, AttemptOutcome, Delivery, DeliveryStatus, EventFilter, Secret, Trigger,
    Webhook, WebhookChanges,
};
use palo_webhooks::retry::RetrySchedule;
use palo_webhooks::store::{AcceptOutcome, FanOut, Store};
use serde::Deserialize;
use serde_json::value::RawValue;

const ORGANIZATIONS: [&str; 3] = ["org_a", "org_b", "org_c"];
const EVENT_IDS: [&str; 3] = ["evt_1", "evt_2", "evt_3"];
/// The retry schedule under test: short, so deliveries reach `failed` within a few steps.
const SCHEDULE: &str = "1s,1m,1h";
const DELAYS_MS: [u64; 3] = [1_000, 60_000, 3_600_000];
const LONGEST_DELAY_MS: u64 = 3_600_000;
/// 2026-02-19T10:30:00Z.
const START_MS: u64 = 1_771_497_000_000;
/// Longer sequences add little coverage and slow every execution down.
const MAX_OPS: usize = 64;

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime builds")
});

static RETRY_SCHEDULE: LazyLock<RetrySchedule> = LazyLock::new(|| {
    let schedule = RetrySchedule::parse(SCHEDULE).expect("the schedule parses");
    let delays: Vec<u64> = schedule
        .delays()
        .iter()
        .map(|d| u64::try_from(d.as_millis()).expect("small delays"))
        .collect();
    assert_eq!(delays, DELAYS_MS, "the model's delays are the schedule's");
    schedule
});

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Op {
    CreateWebhook {
        organization: u8,
        active: bool,
        only_ticket_created: bool,
    },
    SetActive {
        webhook: u8,
        active: bool,
    },
    DeleteWebhook {
        webhook: u8,
    },
    AcceptEvent {
        organization: u8,
        event_id: u8,
        kind: Kind,
        second_variant: bool,
        timestamp: Timestamp,
    },
    RecordAttempt {
        delivery: u8,
        outcome: Outcome,
        manual: bool,
    },
    Postpone {
        delivery: u8,
        by_seconds: u16,
    },
    AdvanceClock {
        seconds: u16,
    },
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    TicketCreated,
    SystemIncident,
}

impl Kind {
    fn event_type(self) -> EventType {
        match self {
            Kind::TicketCreated => EventType::TicketCreated,
            Kind::SystemIncident => EventType::SystemIncident,
        }
    }

    /// The `data` text of each content variant; each has the type's required fields.
    /// The ordering key ingest takes from `data` (issue 16): `ticket_id` or `incident_id`.
    fn ordering_key(self) -> &'static str {
        match self {
            Kind::TicketCreated => "TKT-00512",
            Kind::SystemIncident => "INC-001",
        }
    }

    fn data(self, second_variant: bool) -> &'static str {
        match (self, second_variant) {
            (Kind::TicketCreated, false) => {
                r#"{"ticket_id":"TKT-00512","title":"Printer on fire","priority":"p3","project_id":"prj_1","created_by":"user_1"}"#
            }
            (Kind::TicketCreated, true) => {
                r#"{"ticket_id":"TKT-00512","title":"Printer on fire","priority":"p1","project_id":"prj_1","created_by":"user_1"}"#
            }
            (Kind::SystemIncident, false) => {
                r#"{"incident_id":"INC-001","severity":"critical","affected_services":["api","ui"],"status":"investigating"}"#
            }
            (Kind::SystemIncident, true) => {
                r#"{"incident_id":"INC-001","severity":"critical","affected_services":["api", "ui"],"status":"investigating"}"#
            }
        }
    }
}

/// The producer's `timestamp`: two spellings of one instant, another instant, or none.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Timestamp {
    Absent,
    Utc,
    SameInstantWithOffset,
    Later,
}

impl Timestamp {
    fn text(self) -> Option<&'static str> {
        match self {
            Timestamp::Absent => None,
            Timestamp::Utc => Some("2026-02-19T10:30:00Z"),
            Timestamp::SameInstantWithOffset => Some("2026-02-19T11:30:00+01:00"),
            Timestamp::Later => Some("2026-02-19T10:45:00.125Z"),
        }
    }

    /// The envelope timestamp (normalized to UTC), `None` when generated at ingest.
    fn normalized(self) -> Option<&'static str> {
        match self {
            Timestamp::Absent => None,
            Timestamp::Utc | Timestamp::SameInstantWithOffset => Some("2026-02-19T10:30:00Z"),
            Timestamp::Later => Some("2026-02-19T10:45:00.125Z"),
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Outcome {
    Ok,
    ServerError,
    RateLimited { retry_after_seconds: u16 },
    Timeout,
}

impl Outcome {
    fn status_code(self) -> Option<u16> {
        match self {
            Outcome::Ok => Some(200),
            Outcome::ServerError => Some(500),
            Outcome::RateLimited { .. } => Some(429),
            Outcome::Timeout => None,
        }
    }

    fn retry_after_ms(self) -> Option<u64> {
        match self {
            Outcome::RateLimited {
                retry_after_seconds,
            } => Some(u64::from(retry_after_seconds) * 1000),
            _ => None,
        }
    }
}

struct ModelWebhook {
    id: WebhookId,
    organization: &'static str,
    active: bool,
    only_ticket_created: bool,
    deleted: bool,
}

impl ModelWebhook {
    fn receives(&self, organization: &str, kind: Kind) -> bool {
        !self.deleted
            && self.active
            && self.organization == organization
            && (!self.only_ticket_created || kind == Kind::TicketCreated)
    }
}

/// What the content hash covers: type, normalized timestamp if given, data text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Content {
    kind: Kind,
    second_variant: bool,
    timestamp: Option<&'static str>,
}

struct ModelEvent {
    key: EventKey,
    content: Content,
    timestamp: String,
    received_at_ms: u64,
    delivery_ids: Vec<DeliveryId>,
}

struct ModelDelivery {
    id: DeliveryId,
    organization: &'static str,
    webhook_id: WebhookId,
    event_key: EventKey,
    event_id: &'static str,
    kind: Kind,
    status: DeliveryStatus,
    /// (trigger, status code) of attempts 1, 2, ...
    attempts: Vec<(Trigger, Option<u16>)>,
    scheduled_attempts: u32,
    next_attempt_at_ms: Option<u64>,
    created_at_ms: u64,
    updated_at_ms: u64,
}

impl ModelDelivery {
    /// The retry rules (spec "Retries automatiques", docs of `retry::after_attempt`),
    /// written out again so the store's use of the policy is checked, not assumed.
    fn apply_attempt(&mut self, trigger: Trigger, outcome: Outcome, now_ms: u64) {
        self.attempts.push((trigger, outcome.status_code()));
        self.updated_at_ms = now_ms;
        if self.status == DeliveryStatus::Cancelled {
            return;
        }
        if matches!(outcome, Outcome::Ok) {
            // A late scheduled success on a final delivery is not counted: the count never
            // passes the schedule's maximum.
            let counts = trigger == Trigger::Scheduled && !self.status.is_final();
            self.scheduled_attempts += u32::from(counts);
            self.status = DeliveryStatus::Succeeded;
            self.next_attempt_at_ms = None;
            return;
        }
        if trigger == Trigger::Manual || self.status.is_final() {
            return;
        }
        self.scheduled_attempts += 1;
        let failed = usize::try_from(self.scheduled_attempts).expect("small counts");
        match DELAYS_MS.get(failed - 1) {
            Some(&delay) => {
                let asked = outcome.retry_after_ms().unwrap_or(0).min(LONGEST_DELAY_MS);
                self.status = DeliveryStatus::Retrying;
                self.next_attempt_at_ms = Some(now_ms + delay.max(asked));
            }
            None => {
                self.status = DeliveryStatus::Failed;
                self.next_attempt_at_ms = None;
            }
        }
    }

    fn assert_matches(&self, stored: &Delivery) {
        let expected = Delivery {
            id: self.id,
            organization_id: self.organization.to_owned(),
            webhook_id: self.webhook_id,
            event_key: self.event_key,
            event_id: self.event_id.to_owned(),
            event_type: self.kind.event_type(),
            status: self.status,
            attempt_count: u32::try_from(self.attempts.len()).expect("small counts"),
            scheduled_attempts: self.scheduled_attempts,
            next_attempt_at_ms: self.next_attempt_at_ms,
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
            // Timeouts are the only attempts without a status here.
            last_outcome: self.attempts.last().map(|(_, code)| match code {
                Some(code) => AttemptOutcome::of(Some(*code), None),
                None => AttemptOutcome::Timeout,
            }),
            ordering_key: Some(self.kind.ordering_key().to_owned()),
        };
        assert_eq!(stored, &expected, "delivery differs from the model");
    }
}

struct Model {
    now_ms: u64,
    webhooks: Vec<ModelWebhook>,
    events: BTreeMap<(&'static str, &'static str), ModelEvent>,
    deliveries: Vec<ModelDelivery>,
    /// Positions in `webhooks` the last operation changed (or tried to).
    touched_webhooks: BTreeSet<usize>,
    /// Positions in `deliveries` the last operation changed (or tried to).
    touched_deliveries: BTreeSet<usize>,
}

/// The delivered envelope, read back with `data` as raw text.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<'a> {
    event_id: String,
    event_type: String,
    timestamp: String,
    organization_id: String,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// The position an operation's `index` names among `len` known items, if there are any.
fn pick(len: usize, index: u8) -> Option<usize> {
    (len > 0).then(|| usize::from(index) % len)
}

fn create_webhook(
    store: &Store,
    model: &mut Model,
    organization: u8,
    active: bool,
    only_ticket_created: bool,
) {
    let organization = ORGANIZATIONS[usize::from(organization) % ORGANIZATIONS.len()];
    let webhook = Webhook {
        id: WebhookId::generate(),
        organization_id: organization.to_owned(),
        url: "https://example.com/hook".to_owned(),
        events: if only_ticket_created {
            EventFilter::Only(vec![EventType::TicketCreated])
        } else {
            EventFilter::All
        },
        secret: Secret("s3cret-s3cret-s3cret-s3cret-s3cret".to_owned()),
        previous_secret: None,
        disabled: None,
        failing_since_ms: None,
        active,
        description: String::new(),
        options: Default::default(),
        created_at_ms: model.now_ms,
        updated_at_ms: model.now_ms,
    };
    store.create_webhook(&webhook).expect("create_webhook");
    assert_eq!(
        store.get_webhook(webhook.id).expect("get_webhook").as_ref(),
        Some(&webhook)
    );
    model.webhooks.push(ModelWebhook {
        id: webhook.id,
        organization,
        active,
        only_ticket_created,
        deleted: false,
    });
    model.touched_webhooks.insert(model.webhooks.len() - 1);
}

fn set_active(store: &Store, model: &mut Model, webhook: u8, active: bool) {
    let Some(index) = pick(model.webhooks.len(), webhook) else {
        return;
    };
    model.touched_webhooks.insert(index);
    let target = &mut model.webhooks[index];
    let changes = WebhookChanges {
        active: Some(active),
        ..WebhookChanges::default()
    };
    let updated = store
        .update_webhook(target.id, changes, model.now_ms)
        .expect("update_webhook");
    if target.deleted {
        assert!(updated.is_none(), "a deleted webhook was updated");
        return;
    }
    let updated = updated.expect("an existing webhook is updated");
    assert_eq!((updated.id, updated.active), (target.id, active));
    assert_eq!(updated.updated_at_ms, model.now_ms);
    target.active = active;
}

fn delete_webhook(store: &Store, model: &mut Model, webhook: u8) {
    let Some(index) = pick(model.webhooks.len(), webhook) else {
        return;
    };
    model.touched_webhooks.insert(index);
    let target = &mut model.webhooks[index];
    let cancelled = store
        .delete_webhook(target.id, model.now_ms)
        .expect("delete_webhook");
    if target.deleted {
        assert!(cancelled.is_none(), "a deleted webhook was deleted again");
        return;
    }
    target.deleted = true;
    let id = target.id;
    let mut expected = Vec::new();
    for (i, delivery) in model.deliveries.iter_mut().enumerate() {
        if delivery.webhook_id == id && !delivery.status.is_final() {
            delivery.status = DeliveryStatus::Cancelled;
            delivery.next_attempt_at_ms = None;
            delivery.updated_at_ms = model.now_ms;
            expected.push(delivery.id);
            model.touched_deliveries.insert(i);
        }
    }
    let cancelled = cancelled.expect("an existing webhook is deleted");
    assert_eq!(cancelled, expected.len() as u64, "cancelled deliveries");
    // A backlog past one chunk is cancelled by the held sweep: run it to the end.
    while store.sweep_held(4, model.now_ms).expect("sweep_held").more {}
}

fn accept_event(
    store: &Store,
    model: &mut Model,
    organization: u8,
    event_id: u8,
    content: Content,
    timestamp: Timestamp,
) {
    let organization = ORGANIZATIONS[usize::from(organization) % ORGANIZATIONS.len()];
    let event_id = EVENT_IDS[usize::from(event_id) % EVENT_IDS.len()];
    let data_text = content.kind.data(content.second_variant);
    let data = RawValue::from_string(data_text.to_owned()).expect("valid data");
    let prepared = event::prepare(
        EventInput {
            event_id: Some(event_id.to_owned()),
            event_type: content.kind.event_type().as_str().to_owned(),
            timestamp: timestamp.text().map(str::to_owned),
            organization_id: organization.to_owned(),
            data: &data,
        },
        model.now_ms,
        false,
    )
    .expect("the model's events are valid");
    let now = model.now_ms;
    let outcome = RUNTIME
        .block_on(store.accept_event(prepared, FanOut::Subscribers, now, now))
        .expect("accept_event");
    let key = (organization, event_id);
    match (model.events.get(&key), outcome) {
        (Some(known), AcceptOutcome::Replayed { event }) => {
            assert_eq!(known.content, content, "replayed with different content");
            assert_eq!(event.delivery_ids, known.delivery_ids);
        }
        (Some(known), AcceptOutcome::Conflict) => {
            assert_ne!(known.content, content, "same content refused as a conflict");
        }
        (None, AcceptOutcome::Accepted { event, deliveries }) => {
            let mut expected = Vec::new();
            for (i, webhook) in model.webhooks.iter().enumerate() {
                if webhook.receives(organization, content.kind) {
                    expected.push(webhook.id);
                    model.touched_webhooks.insert(i);
                }
            }
            let mut got: Vec<WebhookId> = deliveries.iter().map(|d| d.webhook_id).collect();
            expected.sort();
            got.sort();
            assert_eq!(got, expected, "fan-out targets");
            let ids: Vec<DeliveryId> = deliveries.iter().map(|d| d.id).collect();
            assert_eq!(event.delivery_ids, ids);
            for delivery in &deliveries {
                let modelled = ModelDelivery {
                    id: delivery.id,
                    organization,
                    webhook_id: delivery.webhook_id,
                    event_key: event.key,
                    event_id,
                    kind: content.kind,
                    status: DeliveryStatus::Pending,
                    attempts: Vec::new(),
                    scheduled_attempts: 0,
                    next_attempt_at_ms: Some(now),
                    created_at_ms: now,
                    updated_at_ms: now,
                };
                modelled.assert_matches(delivery);
                model.deliveries.push(modelled);
                model.touched_deliveries.insert(model.deliveries.len() - 1);
            }
            model.events.insert(
                key,
                ModelEvent {
                    key: event.key,
                    content,
                    timestamp: content
                        .timestamp
                        .map_or_else(|| clock::format_seconds(now), str::to_owned),
                    received_at_ms: now,
                    delivery_ids: ids,
                },
            );
        }
        (known, outcome) => panic!(
            "accept of {key:?} (known: {}) answered {outcome:?}",
            known.is_some()
        ),
    }
}

fn record_attempt(store: &Store, model: &mut Model, delivery: u8, outcome: Outcome, manual: bool) {
    let Some(index) = pick(model.deliveries.len(), delivery) else {
        return;
    };
    model.touched_deliveries.insert(index);
    let now = model.now_ms;
    let target = &mut model.deliveries[index];
    let trigger = if manual {
        Trigger::Manual
    } else {
        Trigger::Scheduled
    };
    let attempt = Attempt {
        number: u32::try_from(target.attempts.len() + 1).expect("small counts"),
        started_at_ms: now,
        duration_ms: 12,
        status_code: outcome.status_code(),
        error: matches!(outcome, Outcome::Timeout).then_some(AttemptError::Timeout),
        response_body: String::new(),
        response_body_truncated: false,
        trigger,
        retry_after_ms: outcome.retry_after_ms(),
        error_detail: matches!(outcome, Outcome::Timeout)
            .then(|| "no response within 10s".to_owned()),
    };
    let updated = RUNTIME
        .block_on(store.record_attempt(target.id, attempt, RETRY_SCHEDULE.clone(), now))
        .expect("record_attempt")
        .expect("a known delivery exists");
    target.apply_attempt(trigger, outcome, now);
    target.assert_matches(&updated);
}

fn postpone(store: &Store, model: &mut Model, delivery: u8, by_seconds: u16) {
    let Some(index) = pick(model.deliveries.len(), delivery) else {
        return;
    };
    model.touched_deliveries.insert(index);
    let now = model.now_ms;
    let to = now + u64::from(by_seconds) * 1000;
    let target = &mut model.deliveries[index];
    let moved = store.postpone(target.id, now, to).expect("postpone");
    let due = target.next_attempt_at_ms.filter(|due| *due <= now);
    let expected = due.is_some() && !target.status.is_final();
    assert_eq!(moved, expected, "postpone of {:?}", target.id);
    if moved {
        target.next_attempt_at_ms = Some(to);
    }
}

fn apply(store: &Store, model: &mut Model, op: Op) {
    match op {
        Op::CreateWebhook {
            organization,
            active,
            only_ticket_created,
        } => create_webhook(store, model, organization, active, only_ticket_created),
        Op::SetActive { webhook, active } => set_active(store, model, webhook, active),
        Op::DeleteWebhook { webhook } => delete_webhook(store, model, webhook),
        Op::AcceptEvent {
            organization,
            event_id,
            kind,
            second_variant,
            timestamp,
        } => {
            let content = Content {
                kind,
                second_variant,
                timestamp: timestamp.normalized(),
            };
            accept_event(store, model, organization, event_id, content, timestamp);
        }
        Op::RecordAttempt {
            delivery,
            outcome,
            manual,
        } => record_attempt(store, model, delivery, outcome, manual),
        Op::Postpone {
            delivery,
            by_seconds,
        } => postpone(store, model, delivery, by_seconds),
        Op::AdvanceClock { seconds } => model.now_ms += u64::from(seconds) * 1000,
    }
}

fn compare_events(store: &Store, model: &Model) {
    for organization in ORGANIZATIONS {
        for event_id in EVENT_IDS {
            let stored = store.get_event(organization, event_id).expect("get_event");
            let Some(known) = model.events.get(&(organization, event_id)) else {
                assert!(
                    stored.is_none(),
                    "{organization}/{event_id} should not exist"
                );
                continue;
            };
            let stored = stored.unwrap_or_else(|| panic!("{organization}/{event_id} lost"));
            assert_eq!(stored.key, known.key);
            assert_eq!(stored.event_id, event_id);
            assert_eq!(stored.organization_id, organization);
            assert_eq!(stored.event_type, known.content.kind.event_type());
            assert_eq!(stored.timestamp, known.timestamp);
            assert_eq!(stored.received_at_ms, known.received_at_ms);
            assert_eq!(stored.delivery_ids, known.delivery_ids);
            let body = std::str::from_utf8(&stored.body).expect("UTF-8 body");
            let envelope: Envelope<'_> = serde_json::from_str(body).expect("envelope JSON");
            assert_eq!(envelope.event_id, event_id);
            assert_eq!(
                envelope.event_type,
                known.content.kind.event_type().as_str()
            );
            assert_eq!(envelope.timestamp, known.timestamp);
            assert_eq!(envelope.organization_id, organization);
            assert_eq!(
                envelope.data.get(),
                known.content.kind.data(known.content.second_variant)
            );
        }
    }
}

/// Every delivery, from one read: none lost, each as the model says.
fn compare_deliveries(store: &Store, model: &Model) {
    let ids: Vec<DeliveryId> = model.deliveries.iter().map(|d| d.id).collect();
    let stored = store.get_deliveries(&ids).expect("get_deliveries");
    assert_eq!(stored.len(), ids.len(), "a delivery was lost");
    for (known, stored) in model.deliveries.iter().zip(&stored) {
        known.assert_matches(stored);
    }
}

/// The attempt logs of these deliveries (one read each, so only the ones an operation
/// touched, and all of them at the end).
fn compare_attempt_logs(store: &Store, model: &Model, deliveries: impl Iterator<Item = usize>) {
    for known in deliveries.map(|i| &model.deliveries[i]) {
        let (delivery, attempts) = store
            .get_delivery_with_attempts(known.id)
            .expect("get_delivery_with_attempts")
            .expect("the delivery exists");
        known.assert_matches(&delivery);
        let log: Vec<(u32, Trigger, Option<u16>)> = attempts
            .iter()
            .map(|a| (a.number, a.trigger, a.status_code))
            .collect();
        let expected: Vec<(u32, Trigger, Option<u16>)> = (1..)
            .zip(&known.attempts)
            .map(|(n, (trigger, code))| (n, *trigger, *code))
            .collect();
        assert_eq!(log, expected, "attempt log of {:?}", known.id);
    }
}

/// These webhooks and their delivery lists (two reads each, like the attempt logs).
fn compare_webhooks(store: &Store, model: &Model, webhooks: impl Iterator<Item = usize>) {
    for webhook in webhooks.map(|i| &model.webhooks[i]) {
        let mut listed: Vec<DeliveryId> = store
            .list_webhook_deliveries(webhook.id, None, None, None, usize::MAX)
            .expect("list_webhook_deliveries")
            .iter()
            .map(|d| d.id)
            .collect();
        let mut expected: Vec<DeliveryId> = model
            .deliveries
            .iter()
            .filter(|d| d.webhook_id == webhook.id)
            .map(|d| d.id)
            .collect();
        listed.sort();
        expected.sort();
        assert_eq!(listed, expected, "deliveries of {:?}", webhook.id);
        match store.get_webhook(webhook.id).expect("get_webhook") {
            Some(stored) => {
                assert!(!webhook.deleted, "a deleted webhook is still stored");
                assert_eq!(stored.active, webhook.active);
                assert_eq!(stored.organization_id, webhook.organization);
            }
            None => assert!(webhook.deleted, "webhook {:?} lost", webhook.id),
        }
    }
}

fn compare_retry_index(store: &Store, model: &Model) {
    let mut expected: Vec<(u64, DeliveryId)> = model
        .deliveries
        .iter()
        .filter_map(|d| {
            assert_eq!(d.status.is_final(), d.next_attempt_at_ms.is_none(), "model");
            d.next_attempt_at_ms.map(|due| (due, d.id))
        })
        .collect();
    expected.sort();
    let all = store
        .due_entries(None, u64::MAX, usize::MAX)
        .expect("due_entries");
    assert_eq!(all, expected, "retry index");
    let now = model.now_ms;
    let due_now: Vec<_> = expected
        .iter()
        .copied()
        .filter(|(due, _)| *due <= now)
        .collect();
    assert_eq!(
        store
            .due_entries(None, now + 1, usize::MAX)
            .expect("due_entries"),
        due_now,
        "entries due now"
    );
    // Paging with the cursor, as the scheduler's loader does, sees every entry once.
    let mut paged = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.due_entries(cursor, u64::MAX, 2).expect("due_entries");
        let Some(last) = page.last().copied() else {
            break;
        };
        paged.extend(page);
        cursor = Some(last);
    }
    assert_eq!(paged, expected, "paged retry index");
    assert_eq!(
        store.pending_count().expect("pending_count"),
        u64::try_from(expected.len()).expect("small counts")
    );
}

fn compare_check(store: &Store, model: &Model) {
    let report = store.check().expect("check");
    assert!(report.is_ok(), "check: {:#?}", report.violations);
    let count = |n: usize| u64::try_from(n).expect("small counts");
    let not_final = model
        .deliveries
        .iter()
        .filter(|d| !d.status.is_final())
        .count();
    let attempts: usize = model.deliveries.iter().map(|d| d.attempts.len()).sum();
    assert_eq!(
        (
            report.webhooks,
            report.events,
            report.deliveries,
            report.not_final,
            report.attempts,
            report.retry_index,
        ),
        (
            count(model.webhooks.iter().filter(|w| !w.deleted).count()),
            count(model.events.len()),
            count(model.deliveries.len()),
            count(not_final),
            count(attempts),
            count(not_final),
        ),
        "check's counts"
    );
    assert!(store.quick_check().expect("quick_check").is_empty());
}

fuzz_target!(|ops: Vec<Op>| {
    let store = Store::open_in_memory().expect("an in-memory store opens");
    let mut model = Model {
        now_ms: START_MS,
        webhooks: Vec::new(),
        events: BTreeMap::new(),
        deliveries: Vec::new(),
        touched_webhooks: BTreeSet::new(),
        touched_deliveries: BTreeSet::new(),
    };
    for op in ops.into_iter().take(MAX_OPS) {
        apply(&store, &mut model, op);
        compare_events(&store, &model);
        compare_deliveries(&store, &model);
        compare_retry_index(&store, &model);
        compare_check(&store, &model);
        let deliveries = std::mem::take(&mut model.touched_deliveries);
        compare_attempt_logs(&store, &model, deliveries.into_iter());
        let webhooks = std::mem::take(&mut model.touched_webhooks);
        compare_webhooks(&store, &model, webhooks.into_iter());
    }
    compare_attempt_logs(&store, &model, 0..model.deliveries.len());
    compare_webhooks(&store, &model, 0..model.webhooks.len());
});
