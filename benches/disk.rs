//! Disk use per event (issue 7, "State the disk use per 1M events"): N events ingested
//! through the store's real write path (`accept_event`, one delivery each to one webhook),
//! each delivery then logged as one successful attempt (the common final state), and the db
//! file's size measured; then everything purged by retention and the size measured again,
//! then N/10 more events ingested into the freed pages.
//!
//! `cargo bench --bench disk` (N = 1,000,000; `DISK_EVENTS=100000` for a quicker run).
//! The event is the spec's `ticket.created` example (about 400 bytes of envelope).

use std::sync::Arc;
use std::time::Instant;

use palo_webhooks::event::{self, EventInput};
use palo_webhooks::ids::WebhookId;
use palo_webhooks::model::{Attempt, EventFilter, Secret, Trigger, Webhook};
use palo_webhooks::retry::RetrySchedule;
use palo_webhooks::store::{FanOut, Store};
use serde_json::value::RawValue;

/// Concurrent writers: enough to fill the group commit's batches.
const CONCURRENCY: usize = 256;

fn size(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

async fn ingest(store: &Arc<Store>, webhook: WebhookId, from: usize, count: usize) {
    let data = RawValue::from_string(
        r#"{"ticket_id":"TKT-00512","title":"Imprimante en panne au 3e étage","priority":"p3","project_id":"prj_7f3a2b","created_by":"user_42"}"#
            .to_owned(),
    )
    .unwrap();
    let data: Arc<RawValue> = Arc::from(data);
    let mut next = from;
    let end = from + count;
    let mut tasks = tokio::task::JoinSet::new();
    while next < end || !tasks.is_empty() {
        while next < end && tasks.len() < CONCURRENCY {
            let (store, data, i) = (Arc::clone(store), Arc::clone(&data), next);
            tasks.spawn(async move {
                let now = palo_webhooks::clock::now_ms();
                let prepared = event::prepare(
                    EventInput {
                        event_id: Some(format!("evt_{i:016}")),
                        event_type: "ticket.created".into(),
                        timestamp: None,
                        organization_id: "org_disk".into(),
                        data: &data,
                    },
                    now,
                    false,
                )
                .unwrap();
                let outcome = store
                    .accept_event(prepared, FanOut::Only(webhook), now, now)
                    .await
                    .unwrap();
                let palo_webhooks::store::AcceptOutcome::Accepted { deliveries, .. } = outcome
                else {
                    panic!("not accepted");
                };
                for d in deliveries {
                    let attempt = Attempt {
                        number: 1,
                        started_at_ms: now,
                        duration_ms: 42,
                        status_code: Some(200),
                        error: None,
                        response_body: r#"{"received":true}"#.into(),
                        response_body_truncated: false,
                        trigger: Trigger::Scheduled,
                        retry_after_ms: None,
                        error_detail: None,
                    };
                    store
                        .record_attempt(d.id, attempt, RetrySchedule::default(), now)
                        .await
                        .unwrap();
                }
            });
            next += 1;
        }
        if let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
    }
}

fn main() {
    let n: usize = std::env::var("DISK_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.redb");
    let store = Arc::new(Store::open(&path).unwrap());
    let now = palo_webhooks::clock::now_ms();
    let webhook = Webhook {
        id: WebhookId::generate(),
        organization_id: "org_disk".into(),
        url: "https://receiver.example/hook".into(),
        events: EventFilter::All,
        secret: Secret("disk_bench_secret_with_at_least_32_chars".into()),
        previous_secret: None,
        disabled: None,
        failing_since_ms: None,
        active: true,
        description: "disk bench".into(),
        options: Default::default(),
        created_at_ms: now,
        updated_at_ms: now,
    };
    store.create_webhook(&webhook).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let empty = size(&path);
    let started = Instant::now();
    runtime.block_on(ingest(&store, webhook.id, 0, n));
    let full = size(&path);
    println!(
        "disk: {n} events, 1 delivery + 1 attempt each, in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    println!(
        "  empty file {:>8.1} MiB | after {n} events {:>8.1} MiB = {:.0} bytes per event",
        empty as f64 / 1048576.0,
        full as f64 / 1048576.0,
        (full - empty) as f64 / n as f64
    );
    for t in store.space().unwrap() {
        if t.entries > 0 {
            println!(
                "  (store) {:<20} {:>9} entries  stored {:>6.1} MiB  metadata {:>5.1} MiB  fragmented {:>5.1} MiB",
                t.table,
                t.entries,
                t.stored_bytes as f64 / 1048576.0,
                t.metadata_bytes as f64 / 1048576.0,
                t.fragmented_bytes as f64 / 1048576.0
            );
        }
    }
    // Retention: everything is final, so a cutoff in the future purges it all.
    let started = Instant::now();
    let cutoff = palo_webhooks::clock::now_ms() + 1;
    let mut after = None;
    let mut purged = 0;
    loop {
        let report = store.purge_expired(cutoff, after, 500, |_| false).unwrap();
        purged += report.events;
        match report.resume_after {
            Some(key) => after = Some(key),
            None => break,
        }
    }
    let purged_size = size(&path);
    println!(
        "  purged {purged} events in {:.0} s (500 per transaction); file {:.1} MiB (redb keeps the file and reuses its free pages)",
        started.elapsed().as_secs_f64(),
        purged_size as f64 / 1048576.0
    );
    let again = n / 10;
    runtime.block_on(ingest(&store, webhook.id, n, again));
    println!(
        "  {again} more events after the purge: file {:.1} MiB (no growth means the freed pages were reused)",
        size(&path) as f64 / 1048576.0
    );
}
