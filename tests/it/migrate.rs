//! `palo-webhooks migrate --from FILE --to postgres://…` (issue 14, item 5). PostgreSQL
//! only: compiled into `tests/postgres.rs`. `PALO_MIGRATE_EVENTS` sizes the store (3,000 by
//! default; the README's 100k figure was measured with 100000 and a release build).

use std::process::Command;
use std::time::Instant;

use palo_webhooks::event::{self, EventInput};
use palo_webhooks::ids::WebhookId;
use palo_webhooks::model::{Attempt, EventFilter, Secret, Trigger, Webhook};
use palo_webhooks::retry::RetrySchedule;
use palo_webhooks::store::{EventQuery, Store};
use serde_json::value::RawValue;

use crate::support;

fn migrate(file: &std::path::Path, url: &str) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_palo-webhooks"))
        .args(["migrate", "--from", file.to_str().unwrap(), "--to", url])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// A redb store with two webhooks, `n` events to both, an attempt logged on a third of the
/// deliveries (some final, some retrying).
async fn file_store(path: &std::path::Path, n: usize) {
    let store = Store::open(path).unwrap();
    let now = palo_webhooks::clock::now_ms();
    let mut webhooks = Vec::new();
    for i in 0..2 {
        let webhook = Webhook {
            id: WebhookId::generate(),
            organization_id: "org_m".into(),
            url: format!("https://example.invalid/{i}"),
            events: EventFilter::All,
            secret: Secret(support::SECRET.into()),
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
        webhooks.push(webhook.id);
    }
    let data = RawValue::from_string(
        r#"{"ticket_id":"T","title":"t","priority":"p3","project_id":"p","created_by":"u"}"#
            .to_owned(),
    )
    .unwrap();
    for chunk in (0..n).collect::<Vec<_>>().chunks(5_000) {
        for webhook in &webhooks {
            let events = chunk
                .iter()
                .map(|i| {
                    event::prepare(
                        EventInput {
                            event_id: Some(format!("m-{i}-{webhook}")),
                            event_type: "ticket.created".into(),
                            timestamp: None,
                            organization_id: "org_m".into(),
                            data: &data,
                        },
                        now,
                        false,
                    )
                    .unwrap()
                })
                .collect();
            store.bulk_load(events, *webhook, now, now).unwrap();
        }
    }
    let schedule = RetrySchedule::default();
    let mut before = None;
    let mut k = 0;
    loop {
        let events = store
            .list_events(&EventQuery::default(), before, 1000)
            .unwrap();
        let Some(last) = events.last() else { break };
        before = Some(last.key);
        for e in events {
            k += 1;
            if k % 3 != 0 {
                continue;
            }
            let attempt = Attempt {
                number: 1,
                started_at_ms: now,
                duration_ms: 12,
                status_code: Some(if k % 2 == 0 { 200 } else { 500 }),
                error: None,
                response_body: "ok".into(),
                response_body_truncated: false,
                trigger: Trigger::Scheduled,
                retry_after_ms: None,
                error_detail: None,
            };
            store
                .record_attempt(e.delivery_ids[0], attempt, schedule.clone(), now)
                .await
                .unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_copies_everything_checks_it_and_resumes() {
    let n: usize = std::env::var("PALO_MIGRATE_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("from.redb");
    file_store(&file, n / 2).await;
    let url = support::pg_database();
    // `check` on a database that holds no store fails and creates nothing there.
    let output = Command::new(env!("CARGO_BIN_EXE_palo-webhooks"))
        .args(["check", "--store", &url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(text.contains("holds no palo-webhooks store"), "{text}");
    let tables = support::psql(
        &url,
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
    );
    assert_eq!(tables.unwrap().trim(), "0");
    let started = Instant::now();
    let (ok, text) = migrate(&file, &url);
    let took = started.elapsed();
    assert!(ok, "{text}");
    println!("migrated {n} events in {took:?}:\n{text}");
    assert!(text.contains(&format!("events: {n} in")), "{text}");
    assert!(text.contains("ok: every row is in PostgreSQL"), "{text}");
    // Run again: nothing is copied twice and the verdict holds.
    let (ok, text) = migrate(&file, &url);
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!("0 events copied, {n} already there")),
        "{text}"
    );
    // The copy passes `check` on PostgreSQL.
    let output = Command::new(env!("CARGO_BIN_EXE_palo-webhooks"))
        .args(["check", "--store", &url])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{report}");
    assert!(report.contains("ok: every invariant holds"), "{report}");
}
