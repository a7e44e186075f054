//! Crash torture (issue 4): the real binary under ingest load, receivers that fail some of
//! the time, SIGKILL at random moments (so mid-commit and mid-attempt), restart, repeat;
//! then drain and check that every acknowledged event reached every subscribed receiver.
//!
//! `PALO_TORTURE_CYCLES` (default 30, about 40 s) and `PALO_TORTURE_SEED` (default: from the clock,
//! printed) make a longer soak or a replay: `PALO_TORTURE_CYCLES=200 cargo test --locked
//! torture -- --nocapture`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use serde_json::json;

use crate::support::{self, Behaviour, Receiver, ADMIN_TOKEN};

/// xorshift64*: a small seeded generator, so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

fn event(id: &str) -> serde_json::Value {
    json!({"event_id": id, "event_type": "ticket.created", "organization_id": "org_t",
           "data": {"ticket_id": id, "title": "torture", "priority": "p2", "project_id": "prj", "created_by": "u"}})
}

/// Posts events `evt_<cycle>_<n>` from `workers` connections until `stop`; records the ids
/// that were answered 202.
pub(crate) async fn load(
    addr: std::net::SocketAddr,
    cycle: u64,
    workers: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
) {
    let client = palo_webhooks::delivery::build_client(Duration::from_secs(5));
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (client, stop, acked) = (client.clone(), Arc::clone(&stop), Arc::clone(&acked));
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let id = format!("evt_{cycle}_{w}_{n}");
                    let request = Request::post(format!("http://{addr}/api/events"))
                        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(event(&id).to_string())))
                        .unwrap();
                    match client.request(request).await {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            // The 202 counts once its body is read: the ack is complete.
                            if response.into_body().collect().await.is_ok() && status == 202 {
                                acked.lock().unwrap().push(id);
                            }
                        }
                        Err(_) => return, // The daemon was killed.
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_under_load_loses_no_acknowledged_event() {
    let cycles: u64 = std::env::var("PALO_TORTURE_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let seed: u64 = std::env::var("PALO_TORTURE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| palo_webhooks::clock::now_ms() | 1);
    println!("torture: {cycles} cycles, PALO_TORTURE_SEED={seed}");
    let mut rng = Rng(seed);
    // Three webhooks of one organization: two fail a share of their first two attempts.
    let receivers = [
        Receiver::start(Behaviour::Flaky(30)).await,
        Receiver::start(Behaviour::Flaky(60)).await,
        Receiver::start(Behaviour::Status(200)).await,
    ];
    let flags = [
        "--allow-http",
        "--retry-schedule",
        "300ms,300ms,300ms,300ms",
        "--attempt-timeout",
        "2s",
    ];
    let first = support::start(&flags);
    for receiver in &receivers {
        first.create_webhook("org_t", &receiver.url, &["*"]).await;
    }
    let dir = first.dir.clone();
    let mut holder = first; // Owns the temp dir to the end.
    holder.kill9();

    let acked = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    for cycle in 0..cycles {
        let mut daemon = support::start_in(&dir, &flags);
        let stop = Arc::new(AtomicBool::new(false));
        let load = tokio::spawn(load(
            daemon.addr,
            cycle,
            8,
            Arc::clone(&stop),
            Arc::clone(&acked),
        ));
        tokio::time::sleep(Duration::from_millis(rng.between(200, 1500))).await;
        daemon.kill9();
        stop.store(true, Ordering::Relaxed);
        let _ = load.await;
    }
    let acked: Vec<String> = acked.lock().unwrap().clone();
    assert!(!acked.is_empty(), "no event was accepted");

    // Drain: restart once more and wait for every (event, webhook) pair.
    let mut daemon = support::start_in(&dir, &flags);
    let deadline = Instant::now() + Duration::from_secs(90);
    let want: HashSet<&str> = acked.iter().map(String::as_str).collect();
    let delivered = |r: &Receiver, percent: Option<u64>| -> HashMap<String, usize> {
        // Successful receipts (answered 2xx) per event id.
        let mut counts = HashMap::new();
        for received in r.received() {
            if percent.is_some_and(|p| support::flaky_fails(&received.headers, p)) {
                continue;
            }
            *counts
                .entry(received.header("x-palo-event-id"))
                .or_insert(0) += 1;
        }
        counts
    };
    let percents = [Some(30), Some(60), None];
    loop {
        let complete = receivers.iter().zip(percents).all(|(r, p)| {
            let got = delivered(r, p);
            want.iter().all(|id| got.contains_key(*id))
        });
        if complete {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every acknowledged event reached every webhook (seed {seed})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Every acknowledged event exists with one delivery per webhook, and each delivery ends
    // `succeeded` (its last receipt may be a moment ahead of its attempt log).
    let settle = Instant::now() + Duration::from_secs(30);
    for id in &acked {
        loop {
            let (status, body) = daemon.call("GET", &format!("/api/events/{id}"), None).await;
            assert_eq!(status, 200, "acknowledged event {id} is missing: {body}");
            let deliveries = body["deliveries"].as_array().expect("deliveries");
            assert_eq!(deliveries.len(), 3, "{body}");
            if deliveries.iter().all(|d| d["status"] == "succeeded") {
                break;
            }
            assert!(Instant::now() < settle, "event {id} did not settle: {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(daemon.terminate(), Some(0));
    let (ok, report) = support::check(&dir);
    assert!(
        ok,
        "check failed after the torture (seed {seed}):\n{report}"
    );

    // Duplicates: successful receipts beyond the first per (event, webhook).
    let pairs = acked.len() * receivers.len();
    let extra: usize = receivers
        .iter()
        .zip(percents)
        .map(|(r, p)| {
            delivered(r, p)
                .iter()
                .filter(|(id, _)| want.contains(id.as_str()))
                .map(|(_, n)| n - 1)
                .sum::<usize>()
        })
        .sum();
    println!(
        "torture: {cycles} cycles in {:.1} s, {} events acknowledged, {pairs} (event, webhook) pairs, \
         0 lost, {extra} duplicate receipts ({:.2}%)",
        started.elapsed().as_secs_f64(),
        acked.len(),
        extra as f64 * 100.0 / pairs as f64
    );
}
