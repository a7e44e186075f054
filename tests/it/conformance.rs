//! The store's conformance suite (issue 14, item 1): every operation of `store::Store`, its
//! outcomes and the invariants `check` verifies, called directly on the backend of the test
//! binary: a temporary redb file in `tests/it`, a fresh PostgreSQL database in
//! `tests/postgres.rs`. The integration tests cover the same operations through the API.

use palo_webhooks::event::{self, EventInput, EventType};
use palo_webhooks::ids::{DeliveryId, KeyId, WebhookId};
use palo_webhooks::model::{
    ApiKey, Attempt, AttemptError, AttemptOutcome, DeliveryStatus, EventFilter, Secret, Trigger,
    Webhook, WebhookChanges,
};
use palo_webhooks::retry::RetrySchedule;
use palo_webhooks::store::{AcceptOutcome, DeliverySearch, EventQuery, FanOut, Store};
use serde_json::value::RawValue;

use crate::support::{self, Backend};

/// A fresh, empty store of this binary's backend; the temp dir lives as long as it.
fn open() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = match support::backend() {
        Backend::Redb => Store::open(&dir.path().join("c.redb")).unwrap(),
        Backend::Postgres => {
            let options = palo_webhooks::store::postgres::PgOptions::new(support::pg_database());
            Store::open_postgres(&options, None, None).unwrap()
        }
    };
    (store, dir)
}

fn webhook(org: &str, events: EventFilter, now: u64) -> Webhook {
    Webhook {
        id: WebhookId::generate(),
        organization_id: org.into(),
        url: "https://example.invalid/hook".into(),
        events,
        secret: Secret(support::SECRET.into()),
        previous_secret: None,
        disabled: None,
        failing_since_ms: None,
        active: true,
        description: "conformance".into(),
        options: Default::default(),
        created_at_ms: now,
        updated_at_ms: now,
    }
}

fn prepared(org: &str, id: &str, title: &str, now: u64) -> event::PreparedEvent {
    let data = RawValue::from_string(format!(
        r#"{{"ticket_id":"T","title":"{title}","priority":"p3","project_id":"p","created_by":"u"}}"#
    ))
    .unwrap();
    event::prepare(
        EventInput {
            event_id: Some(id.into()),
            event_type: "ticket.created".into(),
            timestamp: None,
            organization_id: org.into(),
            data: &data,
        },
        now,
        false,
    )
    .unwrap()
}

fn attempt(number: u32, status: u16, now: u64) -> Attempt {
    Attempt {
        number,
        started_at_ms: now,
        duration_ms: 5,
        status_code: Some(status),
        error: None,
        response_body: "body".into(),
        response_body_truncated: false,
        trigger: Trigger::Scheduled,
        retry_after_ms: None,
        error_detail: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_store_operation_behaves_the_same_on_this_backend() {
    let (store, _dir) = open();
    let now = palo_webhooks::clock::now_ms();
    let schedule = RetrySchedule::default();

    // Webhooks: create, read, list by organization with a cursor, update, all.
    let all = webhook("org_a", EventFilter::All, now);
    let only_resolved = webhook(
        "org_a",
        EventFilter::Only(vec![EventType::TicketResolved]),
        now,
    );
    let other_org = webhook("org_b", EventFilter::All, now);
    for w in [&all, &only_resolved, &other_org] {
        store.create_webhook(w).unwrap();
    }
    assert_eq!(store.get_webhook(all.id).unwrap().as_ref(), Some(&all));
    assert_eq!(store.get_webhook(WebhookId::generate()).unwrap(), None);
    let page = store.list_webhooks(Some("org_a"), None, 1).unwrap();
    assert_eq!(page.len(), 1);
    let rest = store
        .list_webhooks(Some("org_a"), Some(page[0].id), 10)
        .unwrap();
    assert_eq!(rest.len(), 1);
    assert_ne!(rest[0].id, page[0].id);
    assert_eq!(store.list_webhooks(None, None, 10).unwrap().len(), 3);
    assert_eq!(store.all_webhooks().unwrap().len(), 3);
    let changes = WebhookChanges {
        description: Some("changed".into()),
        ..WebhookChanges::default()
    };
    let updated = store
        .update_webhook(all.id, changes.clone(), now + 1)
        .unwrap()
        .unwrap();
    assert_eq!(updated.description, "changed");
    assert_eq!(updated.updated_at_ms, now + 1);
    assert!(store
        .update_webhook(WebhookId::generate(), changes, now)
        .unwrap()
        .is_none());

    // API keys: create, find by hash, list, delete (twice: the second says false).
    let key = ApiKey {
        id: KeyId::generate(),
        organization_id: "org_a".into(),
        description: "k".into(),
        created_at_ms: now,
        key_hash: [7; 32],
    };
    store.create_api_key(&key).unwrap();
    assert_eq!(store.find_api_key(&[7; 32]).unwrap(), Some(key.clone()));
    assert_eq!(store.list_api_keys().unwrap(), vec![key.clone()]);
    assert!(store.delete_api_key(key.id).unwrap());
    assert!(!store.delete_api_key(key.id).unwrap());
    assert_eq!(store.find_api_key(&[7; 32]).unwrap(), None);

    // Ingest: fan-out to the subscribed active webhooks of the organization only; replay;
    // conflict; the test endpoint's single target.
    let first = prepared("org_a", "evt_1", "one", now);
    let AcceptOutcome::Accepted { event, deliveries } = store
        .accept_event(first.clone(), FanOut::Subscribers, now, now)
        .await
        .unwrap()
    else {
        panic!("a new event is accepted");
    };
    assert_eq!(
        deliveries.len(),
        1,
        "only the webhook subscribed to everything"
    );
    assert_eq!(deliveries[0].webhook_id, all.id);
    assert_eq!(event.delivery_ids, vec![deliveries[0].id]);
    assert!(matches!(
        store
            .accept_event(first, FanOut::Subscribers, now, now)
            .await
            .unwrap(),
        AcceptOutcome::Replayed { .. }
    ));
    assert!(matches!(
        store
            .accept_event(
                prepared("org_a", "evt_1", "other", now),
                FanOut::Subscribers,
                now,
                now
            )
            .await
            .unwrap(),
        AcceptOutcome::Conflict
    ));
    let AcceptOutcome::Accepted {
        deliveries: only, ..
    } = store
        .accept_event(
            prepared("org_a", "evt_2", "two", now),
            FanOut::Only(only_resolved.id),
            now,
            now,
        )
        .await
        .unwrap()
    else {
        panic!("accepted");
    };
    assert_eq!(only.len(), 1);
    assert_eq!(
        store.get_event("org_a", "evt_1").unwrap().unwrap().key,
        event.key
    );
    assert_eq!(store.get_event("org_b", "evt_1").unwrap(), None);
    assert_eq!(
        store.organizations_with_event_id("evt_1").unwrap(),
        vec!["org_a".to_owned()]
    );
    let listed = store
        .list_events(
            &EventQuery {
                organization_id: Some("org_a".into()),
                ..EventQuery::default()
            },
            None,
            10,
        )
        .unwrap();
    assert_eq!(listed.len(), 2, "newest first");
    assert_eq!(listed[0].event_id, "evt_2");

    // The retry index: heads, per-webhook entries, summary, pending count.
    let d1 = deliveries[0].id;
    assert_eq!(store.pending_count().unwrap(), 2);
    let heads = store.webhook_due_heads().unwrap();
    assert_eq!(heads.len(), 2);
    assert!(heads.contains(&(all.id, now, d1)));
    assert_eq!(
        store.webhook_due_entries(&[(all.id, None, 10)]).unwrap(),
        vec![vec![(now, d1)]]
    );
    assert_eq!(
        store
            .webhook_due_entries(&[(all.id, Some((now, d1)), 10)])
            .unwrap(),
        vec![vec![]]
    );
    assert_eq!(store.due_summary(now).unwrap(), (2, 0, Some(now)));
    assert_eq!(store.due_entries(None, now + 1, 10).unwrap().len(), 2);

    // Attempts: a failure schedules the next one; the log reads back in order; a success
    // makes the delivery final and takes it out of the index.
    let after_fail = store
        .record_attempt(d1, attempt(1, 500, now), schedule.clone(), now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after_fail.status, DeliveryStatus::Retrying);
    let next = after_fail.next_attempt_at_ms.unwrap();
    assert!(next > now);
    assert_eq!(store.webhook_due_heads().unwrap().len(), 2);
    let ok = store
        .record_attempt(d1, attempt(2, 200, next), schedule.clone(), next)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ok.status, DeliveryStatus::Succeeded);
    assert_eq!(ok.next_attempt_at_ms, None);
    let (read, attempts) = store.get_delivery_with_attempts(d1).unwrap().unwrap();
    assert_eq!(read, ok);
    assert_eq!(
        attempts.iter().map(|a| a.number).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(store
        .record_attempt(
            DeliveryId::generate(),
            attempt(1, 200, now),
            schedule.clone(),
            now
        )
        .await
        .unwrap()
        .is_none());
    assert_eq!(store.pending_count().unwrap(), 1);
    let by_status = store
        .list_webhook_deliveries(all.id, Some(DeliveryStatus::Succeeded), None, None, 10)
        .unwrap();
    assert_eq!(by_status.len(), 1);
    assert!(store
        .list_webhook_deliveries(all.id, Some(DeliveryStatus::Failed), None, None, 10)
        .unwrap()
        .is_empty());
    let activity = store
        .webhook_activity(all.id, now.saturating_sub(1000), 10)
        .unwrap();
    assert_eq!(activity.deliveries.len(), 1);
    assert_eq!(activity.attempts.len(), 2);
    assert!(!activity.truncated);
    let (delivery, body) = store.delivery_for_attempt(d1, |_| false).unwrap().unwrap();
    assert_eq!(delivery.id, d1);
    assert_eq!(body.unwrap(), event.body);

    // Postpone (only when due), resume what was held, clamp a far due time.
    let d2 = only[0].id;
    assert!(
        !store.postpone(d2, now - 1, now + 60_000).unwrap(),
        "not due yet at now - 1"
    );
    assert!(store.postpone(d2, now, now + 60_000).unwrap());
    assert_eq!(
        store.resume_held(&[(d2, now + 60_000)], now + 5).unwrap(),
        vec![d2]
    );
    assert_eq!(
        store.get_deliveries(&[d2]).unwrap()[0].next_attempt_at_ms,
        Some(now + 5)
    );
    assert!(store.postpone(d2, now + 5, now + 10_000_000_000).unwrap());
    let clamped = store.clamp_far_due(now, &schedule, 1_000).unwrap();
    assert_eq!(clamped.moved, 1);

    // Status, deletion (cancels what is unfinished), retention, check.
    let status = store.status_summary(now).unwrap();
    assert_eq!(status.by_status.iter().sum::<u64>(), 2);
    assert_eq!(
        store.delete_webhook(only_resolved.id, now).unwrap(),
        Some(1)
    );
    assert_eq!(store.delete_webhook(only_resolved.id, now).unwrap(), None);
    assert_eq!(
        store.get_deliveries(&[d2]).unwrap()[0].status,
        DeliveryStatus::Cancelled
    );
    assert_eq!(store.pending_count().unwrap(), 0);
    let purged = store
        .purge_expired(now + 10_000_000_000, None, 10, |_| false)
        .unwrap();
    assert_eq!(
        (purged.events, purged.deliveries, purged.attempts),
        (2, 2, 2)
    );
    let report = store.check().unwrap();
    assert!(report.is_ok(), "{:?}", report.violations);
    assert_eq!(
        (report.webhooks, report.events, report.deliveries),
        (2, 0, 0)
    );
    assert!(store.quick_check().unwrap().is_empty());
    assert!(store.size_bytes().unwrap() > 0);
}

/// Issue 15: a webhook's lifecycle (disable holds, fan-out records held deliveries, enable
/// releases in due order or cancels) and recovery/replay jobs, on this backend.
#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_and_jobs_behave_the_same_on_this_backend() {
    use palo_webhooks::ids::JobId;
    use palo_webhooks::model::{DisableReason, Disabled, Job, JobKind, JobLimits, JobState};
    use palo_webhooks::store::Lifecycle;

    let (store, _dir) = open();
    let now = palo_webhooks::clock::now_ms();
    let schedule = RetrySchedule::default();
    let hook = webhook("org_a", EventFilter::All, now);
    store.create_webhook(&hook).unwrap();
    let accept = |id: &str, at: u64| {
        let prepared = prepared("org_a", id, "t", at);
        let store = &store;
        async move {
            match store
                .accept_event(prepared, FanOut::Subscribers, at, at)
                .await
                .unwrap()
            {
                AcceptOutcome::Accepted { deliveries, .. } => deliveries,
                other => panic!("{other:?}"),
            }
        }
    };
    let first = accept("l1", now).await;
    assert_eq!(first[0].status, DeliveryStatus::Pending);

    // Disable: the pending delivery is held; disabling again changes nothing.
    let disabled = Disabled {
        reason: DisableReason::Gone,
        at_ms: now,
        delivery_id: Some(first[0].id),
        status_code: Some(410),
        failing_since_ms: None,
        last_error: None,
    };
    let outcome = store
        .set_webhook_lifecycle(hook.id, Lifecycle::Disable(disabled.clone()), now)
        .unwrap()
        .unwrap();
    assert!(outcome.changed);
    assert_eq!(outcome.deliveries, 1);
    assert_eq!(outcome.webhook.disabled.as_ref(), Some(&disabled));
    assert_eq!(
        store.get_webhook(hook.id).unwrap().unwrap().disabled,
        Some(disabled.clone())
    );
    assert!(
        !store
            .set_webhook_lifecycle(hook.id, Lifecycle::Disable(disabled.clone()), now)
            .unwrap()
            .unwrap()
            .changed
    );
    assert_eq!(store.pending_count().unwrap(), 0);
    // New events are recorded held.
    let second = accept("l2", now + 1).await;
    let third = accept("l3", now + 2).await;
    assert_eq!(second[0].status, DeliveryStatus::Held);
    assert_eq!(second[0].next_attempt_at_ms, None);
    assert_eq!(store.held_count(hook.id).unwrap(), 3);
    assert_eq!(store.check().unwrap().violations, Vec::<String>::new());
    // Enable and deliver: due again, in due order.
    let outcome = store
        .set_webhook_lifecycle(hook.id, Lifecycle::Enable { deliver_held: true }, now + 3)
        .unwrap()
        .unwrap();
    assert!(outcome.changed && outcome.deliveries == 3);
    assert_eq!(store.held_count(hook.id).unwrap(), 0);
    let due = store
        .webhook_due_entries(&[(hook.id, None, 10)])
        .unwrap()
        .remove(0);
    let order: Vec<DeliveryId> = due.iter().map(|(_, id)| *id).collect();
    assert_eq!(order, vec![first[0].id, second[0].id, third[0].id]);
    // Disable again; a due entry that reaches the scheduler is held by hold_delivery.
    store
        .set_webhook_lifecycle(hook.id, Lifecycle::Disable(disabled.clone()), now + 4)
        .unwrap();
    assert!(
        !store.hold_delivery(first[0].id, now + 4).unwrap(),
        "held already"
    );
    // Enable and discard: cancelled.
    store
        .set_webhook_lifecycle(
            hook.id,
            Lifecycle::Enable {
                deliver_held: false,
            },
            now + 5,
        )
        .unwrap();
    let all = store
        .get_deliveries(&[first[0].id, second[0].id, third[0].id])
        .unwrap();
    assert!(
        all.iter().all(|d| d.status == DeliveryStatus::Cancelled),
        "{all:?}"
    );
    // The failing streak's start.
    let outcome = store
        .set_webhook_lifecycle(hook.id, Lifecycle::FailingSince(Some(now)), now)
        .unwrap()
        .unwrap();
    assert_eq!(outcome.webhook.failing_since_ms, Some(now));

    // Jobs: a failed delivery recovered once, then the job finishes with its outcome.
    let fourth = accept("l4", now + 6).await;
    let failed = store
        .record_attempt(
            fourth[0].id,
            attempt(1, 500, now + 6),
            RetrySchedule::parse("").unwrap(),
            now + 6,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(failed.status, DeliveryStatus::Failed);
    let job = Job {
        id: JobId::generate(),
        organization_id: "org_a".into(),
        webhook_id: hook.id,
        kind: JobKind::Recover {
            statuses: vec![DeliveryStatus::Failed],
        },
        since_ms: now - 1_000,
        until_ms: now + 60_000,
        state: JobState::Queued,
        cursor: None,
        scan_done: false,
        matched: 0,
        queued: 0,
        succeeded: 0,
        failed: 0,
        created_at_ms: now,
        started_at_ms: None,
        finished_at_ms: None,
    };
    store.create_job(&job).unwrap();
    assert_eq!(store.get_job(job.id).unwrap().as_ref(), Some(&job));
    assert_eq!(store.active_jobs().unwrap(), vec![job.id]);
    let limits = JobLimits {
        scan: 2,
        window: 8,
        max_attempts: schedule.max_attempts(),
    };
    let mut stepped = store.job_step(job.id, limits, now + 7).unwrap().unwrap();
    for _ in 0..5 {
        if stepped.scan_done {
            break;
        }
        stepped = store.job_step(job.id, limits, now + 7).unwrap().unwrap();
    }
    assert_eq!(
        (stepped.state, stepped.matched, stepped.queued),
        (JobState::Running, 1, 1)
    );
    let requeued = store.get_deliveries(&[fourth[0].id]).unwrap().remove(0);
    assert_eq!(requeued.status, DeliveryStatus::Retrying);
    assert_eq!(requeued.next_attempt_at_ms, Some(now + 7));
    // It had spent a one-attempt schedule: one more (its scheduled attempts never exceed
    // its attempts).
    assert_eq!(requeued.scheduled_attempts, 1);
    store
        .record_attempt(
            fourth[0].id,
            attempt(2, 200, now + 8),
            schedule.clone(),
            now + 8,
        )
        .await
        .unwrap();
    let done = store.job_step(job.id, limits, now + 9).unwrap().unwrap();
    assert_eq!(done.state, JobState::Finished);
    assert_eq!((done.succeeded, done.failed), (1, 0));
    assert_eq!(done.finished_at_ms, Some(now + 9));
    assert!(store.active_jobs().unwrap().is_empty());
    // A finished job stays as it is; cancel of an active one; list newest first.
    let again = Job {
        id: JobId::generate(),
        kind: JobKind::Replay { event_types: None },
        ..job.clone()
    };
    store.create_job(&again).unwrap();
    let cancelled = store.cancel_job(again.id, now + 10).unwrap().unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    let listed = store.list_jobs(Some("org_a"), None, 10).unwrap();
    assert_eq!(
        listed.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![again.id, job.id]
    );
    assert_eq!(store.list_jobs(Some("org_b"), None, 10).unwrap(), vec![]);
    assert_eq!(store.check().unwrap().violations, Vec::<String>::new());
}

/// An event of type `t` with the `data` fields its type requires.
fn prepared_of(org: &str, id: &str, t: EventType, now: u64) -> event::PreparedEvent {
    let data = match t {
        EventType::TicketCreated => {
            r#"{"ticket_id":"T","title":"t","priority":"p3","project_id":"p","created_by":"u"}"#
        }
        EventType::TicketStatusChanged => {
            r#"{"ticket_id":"T","old_status":"a","new_status":"b","changed_by":"u"}"#
        }
        EventType::TicketResolved => {
            r#"{"ticket_id":"T","resolved_by":"u","resolution_time_hours":2}"#
        }
        _ => r#"{"incident_id":"I","severity":"high","affected_services":["api"],"status":"open"}"#,
    };
    let data = RawValue::from_string(data.into()).unwrap();
    event::prepare(
        EventInput {
            event_id: Some(id.into()),
            event_type: t.as_str().into(),
            timestamp: None,
            organization_id: org.into(),
            data: &data,
        },
        now,
        false,
    )
    .unwrap()
}

/// Every page of a search, cursor after cursor, as the API pages it (`limit + 1` read).
fn search_all(store: &Store, search: &DeliverySearch, limit: usize) -> Vec<DeliveryId> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.search_deliveries(search, cursor, limit + 1).unwrap();
        let more = page.len() > limit;
        out.extend(page.iter().take(limit).map(|d| d.id));
        if !more {
            return out;
        }
        cursor = out.last().copied();
        assert!(out.len() < 10_000, "the pages never end");
    }
}

/// Issue 15, item 6: the search answers exactly the deliveries a full scan filtered by
/// `DeliverySearch::matches` gives, newest first (ties in the same millisecond by id), page
/// after page, for every combination of filters; `check` holds over the index.
#[tokio::test(flavor = "multi_thread")]
async fn delivery_search_returns_exactly_the_rows_a_scan_matches() {
    let (store, _dir) = open();
    let base = 1_771_497_000_000u64;
    let (a, b) = ("org_search_a", "org_search_b");
    let w1 = webhook(a, EventFilter::All, base);
    let w2 = webhook(a, EventFilter::All, base);
    let w3 = webhook(
        a,
        EventFilter::Only(vec![EventType::TicketCreated, EventType::SystemIncident]),
        base,
    );
    let wb = webhook(b, EventFilter::All, base);
    for w in [&w1, &w2, &w3, &wb] {
        store.create_webhook(w).unwrap();
    }
    // One scheduled attempt only: a failed attempt makes the delivery `failed`.
    let once = RetrySchedule::parse("").unwrap();
    let retried = RetrySchedule::default();
    let mut ids = Vec::new();
    for i in 0..45u64 {
        let org = if i % 7 == 3 { b } else { a };
        let t = EventType::PUBLIC[(i % 4) as usize];
        // Three events per millisecond: ties are broken by the delivery id.
        let now = base + (i / 3) * 1000;
        let outcome = store
            .accept_event(
                prepared_of(org, &format!("evt_{i}"), t, now),
                FanOut::Subscribers,
                now,
                now,
            )
            .await
            .unwrap();
        let AcceptOutcome::Accepted { deliveries, .. } = outcome else {
            panic!("accepted")
        };
        for (j, d) in deliveries.iter().enumerate() {
            ids.push(d.id);
            let at = now + 10;
            let (status, error, schedule) = match (i as usize + j) % 7 {
                0 => continue,
                1 => (Some(200), None, &retried),
                2 => (Some(500), None, &retried),
                3 => (Some(404), None, &once),
                4 => (None, Some(AttemptError::Timeout), &once),
                5 => (Some(302), None, &retried),
                _ => (None, Some(AttemptError::Connect), &retried),
            };
            let mut first = attempt(1, status.unwrap_or(0), at);
            first.status_code = status;
            first.error = error;
            store
                .record_attempt(d.id, first, schedule.clone(), at)
                .await
                .unwrap()
                .unwrap();
            if i % 5 == 0 {
                // A second, manual attempt: the last outcome is its own.
                let mut second = attempt(2, 200, at + 1);
                second.trigger = Trigger::Manual;
                store
                    .record_attempt(d.id, second, schedule.clone(), at + 1)
                    .await
                    .unwrap()
                    .unwrap();
            }
        }
    }
    // Deleting a webhook cancels its unfinished deliveries: their status moves in the index.
    store.delete_webhook(w2.id, base + 60_000).unwrap();
    let all = store.get_deliveries(&ids).unwrap();
    assert_eq!(all.len(), ids.len());
    for status in [
        DeliveryStatus::Pending,
        DeliveryStatus::Retrying,
        DeliveryStatus::Succeeded,
        DeliveryStatus::Failed,
        DeliveryStatus::Cancelled,
    ] {
        assert!(
            all.iter().any(|d| d.status == status),
            "{status:?} is covered"
        );
    }
    let report = store.check().unwrap();
    assert!(report.is_ok(), "{:?}", report.violations);

    let time = |i: u64| Some(base + i * 1000);
    let (mut searches, mut found_some, mut several_pages) = (0, 0, 0);
    for org in [a, b] {
        for webhook_id in [None, Some(w1.id), Some(w2.id), Some(w3.id), Some(wb.id)] {
            for statuses in [
                vec![],
                vec![DeliveryStatus::Failed],
                vec![DeliveryStatus::Retrying, DeliveryStatus::Pending],
                vec![DeliveryStatus::Succeeded, DeliveryStatus::Cancelled],
            ] {
                for outcomes in [
                    vec![],
                    vec![AttemptOutcome::Status2xx],
                    vec![AttemptOutcome::Status5xx, AttemptOutcome::Timeout],
                    vec![AttemptOutcome::Status3xx, AttemptOutcome::Connect],
                ] {
                    for (k, event_type) in [None, Some(EventType::TicketCreated)]
                        .into_iter()
                        .enumerate()
                    {
                        for (since_ms, until_ms) in [(None, None), (time(3), time(11))] {
                            let search = DeliverySearch {
                                organization_id: org.into(),
                                webhook_id,
                                statuses: statuses.clone(),
                                event_type,
                                event_id: (k == 1 && since_ms.is_none())
                                    .then(|| "evt_12".to_owned()),
                                outcomes: outcomes.clone(),
                                since_ms,
                                until_ms,
                            };
                            let mut expected: Vec<&palo_webhooks::model::Delivery> =
                                all.iter().filter(|d| search.matches(d)).collect();
                            expected.sort_by_key(|d| {
                                std::cmp::Reverse(palo_webhooks::store::search::order_key(d))
                            });
                            let expected: Vec<DeliveryId> = expected.iter().map(|d| d.id).collect();
                            for limit in [4, 50] {
                                assert_eq!(
                                    search_all(&store, &search, limit),
                                    expected,
                                    "{search:?}, limit {limit}"
                                );
                            }
                            searches += 1;
                            found_some += usize::from(!expected.is_empty());
                            several_pages += usize::from(expected.len() > 4);
                        }
                    }
                }
            }
        }
    }
    assert_eq!(searches, 2 * 5 * 4 * 4 * 2 * 2);
    assert!(
        found_some > 150 && several_pages > 40,
        "{found_some} searches found rows, {several_pages} spanned pages"
    );
    // Each page of one row, and a search that only the event id narrows.
    let every = DeliverySearch {
        organization_id: a.into(),
        ..DeliverySearch::default()
    };
    let newest_first = search_all(&store, &every, 1);
    assert_eq!(newest_first, search_all(&store, &every, 500));
    assert_eq!(
        newest_first.len(),
        all.iter().filter(|d| d.organization_id == a).count()
    );
    let one_event = DeliverySearch {
        event_id: Some("evt_1".into()),
        ..every.clone()
    };
    let found = store.search_deliveries(&one_event, None, 10).unwrap();
    assert!(!found.is_empty() && found.iter().all(|d| d.event_id == "evt_1"));

    // Events with a delivery of a status (Stripe's "events not delivered").
    let failed_events = store
        .list_events(
            &EventQuery {
                organization_id: Some(a.into()),
                delivery_status: Some(DeliveryStatus::Failed),
                ..EventQuery::default()
            },
            None,
            500,
        )
        .unwrap();
    let mut expected: Vec<String> = all
        .iter()
        .filter(|d| d.organization_id == a && d.status == DeliveryStatus::Failed)
        .map(|d| d.event_id.clone())
        .collect();
    expected.sort();
    expected.dedup();
    let mut listed: Vec<String> = failed_events.iter().map(|e| e.event_id.clone()).collect();
    listed.sort();
    assert!(!listed.is_empty());
    assert_eq!(listed, expected);
}

/// Payload deletion and payload retention (issue 15, item 7) on this backend: the tombstone,
/// the cancelled deliveries (out of the retry and held indexes, the changes published), the
/// attempt log kept, idempotency, and what retention blanks and keeps.
#[tokio::test(flavor = "multi_thread")]
async fn payload_deletion_leaves_a_tombstone_cancels_what_is_unfinished_and_keeps_the_log() {
    use palo_webhooks::model::{DisableReason, Disabled};
    use palo_webhooks::store::{Change, Lifecycle};
    use std::sync::{Arc, Mutex};

    let (store, _dir) = open();
    let seen: Arc<Mutex<Vec<Change>>> = Arc::default();
    let sink = Arc::clone(&seen);
    assert!(store.subscribe(Box::new(move |changes| {
        sink.lock().unwrap().extend(changes);
    })));
    let now = palo_webhooks::clock::now_ms();
    let schedule = RetrySchedule::default();
    let retrying = webhook("org_a", EventFilter::All, now);
    let disabled = webhook("org_a", EventFilter::All, now);
    let succeeding = webhook("org_a", EventFilter::All, now);
    for w in [&retrying, &disabled, &succeeding] {
        store.create_webhook(w).unwrap();
    }
    let AcceptOutcome::Accepted { event, deliveries } = store
        .accept_event(
            prepared("org_a", "evt_p", "private", now),
            FanOut::Subscribers,
            now,
            now,
        )
        .await
        .unwrap()
    else {
        panic!("accepted");
    };
    let of = |w: &Webhook| deliveries.iter().find(|d| d.webhook_id == w.id).unwrap().id;
    let (d_retrying, d_held, d_done) = (of(&retrying), of(&disabled), of(&succeeding));
    store
        .record_attempt(d_retrying, attempt(1, 500, now), schedule.clone(), now)
        .await
        .unwrap();
    store
        .record_attempt(d_done, attempt(1, 200, now), schedule.clone(), now)
        .await
        .unwrap();
    let disable = Disabled {
        reason: DisableReason::Gone,
        at_ms: now,
        delivery_id: None,
        status_code: Some(410),
        failing_since_ms: None,
        last_error: None,
    };
    store
        .set_webhook_lifecycle(disabled.id, Lifecycle::Disable(disable), now)
        .unwrap();
    assert_eq!(store.held_count(disabled.id).unwrap(), 1);
    let logs_before: Vec<_> = [d_retrying, d_done]
        .iter()
        .map(|id| store.get_delivery_with_attempts(*id).unwrap().unwrap().1)
        .collect();
    seen.lock().unwrap().clear();

    let tombstone = store
        .delete_event_payload("org_a", "evt_p", now + 10)
        .unwrap()
        .unwrap();
    assert!(tombstone.body.is_empty());
    assert_eq!(tombstone.payload_deleted_at_ms, Some(now + 10));
    assert_eq!(tombstone.delivery_ids, event.delivery_ids);
    let statuses: Vec<DeliveryStatus> = store
        .get_deliveries(&[d_retrying, d_held, d_done])
        .unwrap()
        .iter()
        .map(|d| d.status)
        .collect();
    assert_eq!(
        statuses,
        [
            DeliveryStatus::Cancelled,
            DeliveryStatus::Cancelled,
            DeliveryStatus::Succeeded
        ]
    );
    assert_eq!(store.pending_count().unwrap(), 0);
    assert_eq!(store.held_count(disabled.id).unwrap(), 0);
    assert!(store.webhook_due_heads().unwrap().is_empty());
    {
        let changes = seen.lock().unwrap();
        assert!(changes
            .iter()
            .any(|c| matches!(c, Change::PayloadDeleted { event: e } if *e == event.key)));
        assert!(
            changes.iter().any(|c| matches!(c,
                Change::Index { delivery, from: Some(_), to: None, .. } if *delivery == d_retrying)),
            "the retry-index entry's removal is published: {changes:?}"
        );
    }
    let logs_after: Vec<_> = [d_retrying, d_done]
        .iter()
        .map(|id| store.get_delivery_with_attempts(*id).unwrap().unwrap().1)
        .collect();
    assert_eq!(logs_after, logs_before, "the attempt log stays");
    let (_, body) = store
        .delivery_for_attempt(d_done, |_| false)
        .unwrap()
        .unwrap();
    assert_eq!(
        body.unwrap(),
        Vec::<u8>::new(),
        "an attempt reads the tombstone"
    );

    // Idempotent: nothing changes, nothing is published.
    seen.lock().unwrap().clear();
    let again = store
        .delete_event_payload("org_a", "evt_p", now + 20)
        .unwrap()
        .unwrap();
    assert_eq!(again, tombstone);
    assert!(seen.lock().unwrap().is_empty());
    assert_eq!(
        store.delete_event_payload("org_b", "evt_p", now).unwrap(),
        None
    );
    assert_eq!(
        store.delete_event_payload("org_a", "nope", now).unwrap(),
        None
    );
    let report = store.check().unwrap();
    assert!(report.is_ok(), "{:?}", report.violations);
    assert_eq!(report.payloads_deleted, 1);

    // Retention: a finished event's body goes; one with a delivery unfinished stays; a
    // tombstone is not counted again.
    let later = now + 1_000;
    let AcceptOutcome::Accepted {
        deliveries: finished,
        ..
    } = store
        .accept_event(
            prepared("org_a", "evt_f", "old", later),
            FanOut::Only(succeeding.id),
            later,
            later,
        )
        .await
        .unwrap()
    else {
        panic!("accepted");
    };
    store
        .record_attempt(
            finished[0].id,
            attempt(1, 200, later),
            schedule.clone(),
            later,
        )
        .await
        .unwrap();
    store
        .accept_event(
            prepared("org_a", "evt_u", "open", later),
            FanOut::Only(retrying.id),
            later,
            later,
        )
        .await
        .unwrap();
    let far = later + 10_000_000_000;
    let report = store.blank_expired_payloads(far, None, 10, far).unwrap();
    assert_eq!((report.blanked, report.kept), (1, 1), "{report:?}");
    assert_eq!(
        report.first_kept,
        Some(store.get_event("org_a", "evt_u").unwrap().unwrap().key)
    );
    assert_eq!(report.resume_after, None);
    let blanked = store.get_event("org_a", "evt_f").unwrap().unwrap();
    assert!(blanked.body.is_empty());
    assert_eq!(blanked.payload_deleted_at_ms, Some(far));
    assert!(!store
        .get_event("org_a", "evt_u")
        .unwrap()
        .unwrap()
        .body
        .is_empty());
    let report = store.blank_expired_payloads(far, None, 10, far).unwrap();
    assert_eq!((report.blanked, report.kept), (0, 1), "{report:?}");
    // Not yet old enough: nothing.
    let report = store.blank_expired_payloads(now, None, 10, far).unwrap();
    assert_eq!(report, palo_webhooks::store::BlankReport::default());
    let report = store.check().unwrap();
    assert!(report.is_ok(), "{:?}", report.violations);
    assert_eq!(report.payloads_deleted, 2);
}

/// The held sweep (issue 15): disable, discard, re-disable, release and delete each move a
/// backlog of several chunks (`HELD_CHUNK`) the same way on both backends, and the store
/// checks clean between steps.
#[tokio::test(flavor = "multi_thread")]
async fn the_held_sweep_moves_a_backlog_a_chunk_at_a_time_on_this_backend() {
    use palo_webhooks::model::{DisableReason, Disabled};
    use palo_webhooks::store::{Lifecycle, HELD_CHUNK};

    let (store, _dir) = open();
    let now = palo_webhooks::clock::now_ms();
    let hook = webhook("org_s", EventFilter::All, now);
    store.create_webhook(&hook).unwrap();
    let load = |tag: &str, n: usize| {
        let events = (0..n)
            .map(|i| prepared("org_s", &format!("{tag}{i}"), "t", now))
            .collect();
        store.bulk_load(events, hook.id, now, now).unwrap();
    };
    let count = |status: DeliveryStatus| {
        let summary = store.status_summary(now).unwrap();
        let i = DeliveryStatus::ALL
            .iter()
            .position(|s| *s == status)
            .unwrap();
        summary.by_status[i]
    };
    let sweep = || {
        let mut steps = 0;
        while store.sweep_held(4, now).unwrap().more {
            steps += 1;
            assert!(steps < 1_000, "the sweep does not end");
        }
    };
    let checks = || {
        let report = store.check().unwrap();
        assert!(report.is_ok(), "{:?}", report.violations);
    };
    let gone = || {
        Lifecycle::Disable(Disabled {
            reason: DisableReason::Gone,
            at_ms: now,
            delivery_id: None,
            status_code: Some(410),
            failing_since_ms: None,
            last_error: None,
        })
    };
    let n = HELD_CHUNK * 2 + 10;
    load("a", n);

    // Disable: one chunk now, the rest by the sweep.
    let outcome = store
        .set_webhook_lifecycle(hook.id, gone(), now)
        .unwrap()
        .unwrap();
    assert_eq!(outcome.deliveries, n as u64);
    assert_eq!(store.held_count(hook.id).unwrap(), HELD_CHUNK as u64);
    checks();
    // What a discarding enable does first: the rest of the hold, chunk by chunk.
    while store.hold_chunk(hook.id, now).unwrap() {}
    assert_eq!(store.held_count(hook.id).unwrap(), n as u64);
    checks();

    // Discard, then disabled again with new deliveries before the cancel sweep ends: those
    // are not cancelled.
    store
        .set_webhook_lifecycle(
            hook.id,
            Lifecycle::Enable {
                deliver_held: false,
            },
            now,
        )
        .unwrap()
        .unwrap();
    checks();
    store
        .set_webhook_lifecycle(hook.id, gone(), now)
        .unwrap()
        .unwrap();
    load("b", 50);
    sweep();
    assert_eq!(count(DeliveryStatus::Cancelled), n as u64);
    assert_eq!(store.held_count(hook.id).unwrap(), 50);
    checks();

    // Release: every held delivery due again.
    store
        .set_webhook_lifecycle(hook.id, Lifecycle::Enable { deliver_held: true }, now)
        .unwrap()
        .unwrap();
    sweep();
    assert_eq!(store.held_count(hook.id).unwrap(), 0);
    assert_eq!(count(DeliveryStatus::Pending), 50);
    checks();

    // Delete with a backlog of several chunks: all cancelled, the first chunk at once.
    load("c", HELD_CHUNK * 2);
    let concerned = store.delete_webhook(hook.id, now).unwrap().unwrap();
    assert_eq!(concerned, (HELD_CHUNK * 2 + 50) as u64);
    checks();
    sweep();
    assert_eq!(count(DeliveryStatus::Pending), 0);
    assert_eq!(count(DeliveryStatus::Cancelled), n as u64 + concerned);
    assert_eq!(store.sweep_held(4, now).unwrap().moved, 0);
    checks();
}

/// Issue 16 on this backend: a webhook's delivery options round-trip (credentials opened
/// again), fan-out applies wildcards and filters, events and deliveries keep their ordering
/// key, and the ordering reads follow each delivery's status: the blocker is the earliest
/// unfinished delivery of the same webhook and key before a delivery, the head the first.
#[tokio::test(flavor = "multi_thread")]
async fn delivery_options_fan_out_and_ordering_reads_behave_the_same_on_this_backend() {
    use palo_webhooks::filter::Filter;
    use palo_webhooks::model::{CustomHeader, DeliveryOptions, Ordering, ReceiverAuth};
    let (store, _dir) = open();
    let now = palo_webhooks::clock::now_ms();
    let mut ordered = webhook(
        "org_o",
        EventFilter::from_names(&["ticket.*"]).unwrap(),
        now,
    );
    ordered.options = DeliveryOptions {
        ordering: Ordering::Key,
        rate_limit: Some(5),
        headers: vec![CustomHeader {
            name: "x-key".into(),
            value: Secret("v".into()),
            secret: true,
        }],
        auth: Some(ReceiverAuth::Bearer {
            token: Secret("tok".into()),
        }),
        ..DeliveryOptions::default()
    };
    store.create_webhook(&ordered).unwrap();
    assert_eq!(store.get_webhook(ordered.id).unwrap().unwrap(), ordered);
    let mut filtered = webhook("org_o", EventFilter::All, now);
    filtered.options.filter =
        Some(Filter::parse(&serde_json::json!({"data.title": {"$in": ["b", "c"]}})).unwrap());
    store.create_webhook(&filtered).unwrap();
    let changes = WebhookChanges {
        options: Some(DeliveryOptions {
            max_in_flight: Some(2),
            ..ordered.options.clone()
        }),
        ..WebhookChanges::default()
    };
    let updated = store
        .update_webhook(ordered.id, changes, now + 1)
        .unwrap()
        .unwrap();
    assert_eq!(updated.options.max_in_flight, Some(2));
    assert_eq!(
        store.get_webhook(ordered.id).unwrap().unwrap().options,
        updated.options
    );

    // Three events of key "T" (prepared() gives ticket_id T): fan-out by wildcard to the
    // ordered webhook, by filter (titles b and c) to the other.
    let mut ids = Vec::new();
    for title in ["a", "b", "c"] {
        let outcome = store
            .accept_event(
                prepared("org_o", &format!("evt_o_{title}"), title, now),
                FanOut::Subscribers,
                now,
                now,
            )
            .await
            .unwrap();
        let AcceptOutcome::Accepted { event, deliveries } = outcome else {
            panic!("not accepted")
        };
        assert_eq!(event.ordering_key.as_deref(), Some("T"));
        let to: Vec<WebhookId> = deliveries.iter().map(|d| d.webhook_id).collect();
        let expected = if title == "a" {
            vec![ordered.id]
        } else {
            vec![ordered.id, filtered.id]
        };
        assert_eq!(to.len(), expected.len(), "{title}: {to:?}");
        assert!(expected.iter().all(|w| to.contains(w)), "{title}");
        let mine = deliveries
            .iter()
            .find(|d| d.webhook_id == ordered.id)
            .unwrap()
            .clone();
        assert_eq!(mine.ordering_key.as_deref(), Some("T"));
        ids.push(mine);
    }
    let stored = store
        .get_delivery_with_attempts(ids[2].id)
        .unwrap()
        .unwrap()
        .0;
    assert_eq!(stored.ordering_key.as_deref(), Some("T"));
    // The first blocks the other two; the head is the first.
    assert_eq!(store.ordering_blocker(&ids[0]).unwrap(), None);
    assert_eq!(
        store.ordering_blocker(&ids[2]).unwrap().unwrap().id,
        ids[0].id
    );
    assert_eq!(
        store.ordering_head(ordered.id, "T").unwrap().unwrap().id,
        ids[0].id
    );
    // The first succeeds: the second is the head and blocks the third.
    store
        .record_attempt(
            ids[0].id,
            attempt(1, 200, now),
            RetrySchedule::default(),
            now,
        )
        .await
        .unwrap();
    assert_eq!(
        store.ordering_head(ordered.id, "T").unwrap().unwrap().id,
        ids[1].id
    );
    assert_eq!(store.ordering_blocker(&ids[1]).unwrap(), None);
    assert_eq!(
        store.ordering_blocker(&ids[2]).unwrap().unwrap().id,
        ids[1].id
    );
    // Another key is never blocked by this one.
    assert_eq!(store.ordering_head(ordered.id, "other").unwrap(), None);
    // Deleting the webhook cancels the rest: nothing of it is left to order.
    store.delete_webhook(ordered.id, now).unwrap();
    while store.sweep_held(4, now).unwrap().more {}
    assert_eq!(store.ordering_head(ordered.id, "T").unwrap(), None);
    assert_eq!(store.check().unwrap().violations, Vec::<String>::new());
}
