//! The backlog run: a large number of pending deliveries in the retry index (bulk-loaded,
//! since ingesting a million events over HTTP would take minutes), then the daemon restarted
//! on that file: its restart-to-ready time, its memory, and the drain rate to a receiver.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use palo_webhooks::event::{self, EventInput};
use palo_webhooks::ids::WebhookId;
use palo_webhooks::model::{EventFilter, Secret, Webhook};
use palo_webhooks::store::Store;
use serde_json::value::RawValue;

use super::{start_daemon_at, start_receiver, Arrivals, SECRET};

/// Events per bulk-load transaction.
const CHUNK: usize = 5_000;

fn load(db: &std::path::Path, receiver: std::net::SocketAddr, pending: usize) -> u64 {
    let store = Store::open(db).expect("open store");
    let now = palo_webhooks::clock::now_ms();
    let webhook = Webhook {
        id: WebhookId::generate(),
        organization_id: "org_backlog".into(),
        url: format!("http://{receiver}/hook"),
        events: EventFilter::All,
        secret: Secret(SECRET.into()),
        previous_secret: None,
        active: true,
        description: "backlog bench".into(),
        created_at_ms: now,
        updated_at_ms: now,
    };
    store.create_webhook(&webhook).expect("webhook");
    let filler = "x".repeat(800);
    let mut loaded = 0;
    while loaded < pending {
        let count = CHUNK.min(pending - loaded);
        let events = (loaded..loaded + count)
            .map(|i| {
                let data = RawValue::from_string(format!(
                    r#"{{"ticket_id":"TKT-{i}","title":"{filler}","priority":"p3","project_id":"prj","created_by":"user"}}"#
                ))
                .unwrap();
                event::prepare(
                    EventInput {
                        event_id: Some(format!("evt_backlog_{i}")),
                        event_type: "ticket.created".into(),
                        timestamp: None,
                        organization_id: "org_backlog".into(),
                        data: &data,
                    },
                    now,
                    false,
                )
                .unwrap()
            })
            .collect();
        // Due times in ascending order, all in the past: everything is overdue at restart.
        store
            .bulk_load(
                events,
                webhook.id,
                now,
                now - 60_000 + (loaded / CHUNK) as u64,
            )
            .expect("bulk load");
        loaded += count;
    }
    // Where the bytes are: stored keys and values, B-tree metadata, partly filled pages.
    let mut totals = (0u64, 0u64, 0u64);
    for t in store.space().expect("space") {
        if t.entries > 0 {
            println!(
                "  (store) {:<20} {:>9} entries  stored {:>6.0} MiB  metadata {:>5.0} MiB  fragmented {:>5.0} MiB",
                t.table,
                t.entries,
                t.stored_bytes as f64 / 1048576.0,
                t.metadata_bytes as f64 / 1048576.0,
                t.fragmented_bytes as f64 / 1048576.0
            );
        }
        totals.0 += t.stored_bytes;
        totals.1 += t.metadata_bytes;
        totals.2 += t.fragmented_bytes;
    }
    println!(
        "  (store) per pending delivery: stored {:.0} B, metadata {:.0} B, fragmented {:.0} B",
        totals.0 as f64 / pending as f64,
        totals.1 as f64 / pending as f64,
        totals.2 as f64 / pending as f64
    );
    drop(store);
    std::fs::metadata(db).map(|m| m.len()).unwrap_or(0)
}

/// Runs the backlog scenario with `pending` deliveries and reports through `add`.
pub async fn run(pending: usize, add: &mut impl FnMut(&str, String)) {
    let arrivals = Arc::new(Arrivals::default());
    let receiver = start_receiver(Arc::clone(&arrivals)).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("backlog.redb");
    let load_db = db.clone();
    let started = Instant::now();
    let size = tokio::task::spawn_blocking(move || load(&load_db, receiver, pending))
        .await
        .unwrap();
    add(
        &format!("backlog: bulk-load {pending} pending deliveries of 1 KiB events (s)"),
        format!("{:.1}", started.elapsed().as_secs_f64()),
    );
    add(
        "backlog: db file size (MiB; bytes per pending delivery)",
        format!(
            "{:.0} MiB; {:.0} B",
            size as f64 / 1048576.0,
            size as f64 / pending as f64
        ),
    );

    let started = Instant::now();
    let daemon = start_daemon_at(&db);
    let client = palo_webhooks::delivery::build_client(Duration::from_secs(5));
    loop {
        let request = hyper::Request::get(format!("http://{}/healthz", daemon.addr))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        if client
            .request(request)
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    add(
        "backlog: restart-to-ready, process start → /healthz 200 (ms)",
        format!("{:.0}", started.elapsed().as_secs_f64() * 1e3),
    );
    add(
        "backlog: daemon RSS at ready (MiB)",
        format!("{:.1}", daemon.rss_mib()),
    );

    let before = arrivals.count.load(Ordering::Relaxed);
    let window = Duration::from_secs(15);
    tokio::time::sleep(window).await;
    let drained = arrivals.count.load(Ordering::Relaxed) - before;
    add(
        "backlog: drain rate to a fast receiver over 15 s (deliveries/s)",
        format!("{:.0}", drained as f64 / window.as_secs_f64()),
    );
    add(
        "backlog: daemon RSS while draining (MiB)",
        format!("{:.1}", daemon.rss_mib()),
    );
    drop(daemon);
}
