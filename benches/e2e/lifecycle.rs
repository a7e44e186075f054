//! Section `lifecycle` (issue 15): a webhook with a backlog of `n` due deliveries is disabled
//! by a 410, then enabled with `deliver_held`, while 10 other webhooks get fresh events at
//! 100/s. Prints, for the fresh events, the ingest latency (request → 202) and the delivery
//! latency (202 → first byte at the receiver) before, during the disable (until every
//! delivery is held) and during the enable (until the last held delivery arrived), and how
//! long the daemon took to hold, then to release and deliver, the backlog.
//!
//! The goal is that neither change makes other writers wait behind the backlog: each moves
//! a chunk of deliveries per transaction (`store::HELD_CHUNK`). Before that, one transaction
//! moved them all (about 16 µs each: 958 ms of stalled ingest for 60,001). `run_delete` does
//! the same for `DELETE` of a webhook with such a backlog.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use palo_webhooks::delivery::build_client;
use tokio::net::TcpListener;

use super::engine::{ms, wait_ready};
use super::recovery::call;
use super::{event_body_for, percentile, post, start_daemon_at, start_receiver, Arrivals, TOKEN};

/// The receiver's answer while it holds requests (no answer yet).
const HANG: u16 = 0;

/// A receiver whose answer is switched by the bench: `HANG` keeps each request waiting
/// (polled every 10 ms) until the status changes. Records the first arrival of each event
/// answered 200.
async fn switchable(status: Arc<AtomicU16>, arrivals: Arc<Arrivals>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (status, arrivals) = (Arc::clone(&status), Arc::clone(&arrivals));
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let (status, arrivals) = (Arc::clone(&status), Arc::clone(&arrivals));
                    async move {
                        let id = req
                            .headers()
                            .get("x-palo-event-id")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        let _ = req.into_body().collect().await;
                        let code = loop {
                            let code = status.load(Ordering::Relaxed);
                            if code != HANG {
                                break code;
                            }
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        };
                        if code == 200 {
                            if let Some(id) = id {
                                arrivals
                                    .first_byte
                                    .lock()
                                    .unwrap()
                                    .entry(id)
                                    .or_insert_with(Instant::now);
                            }
                            arrivals.count.fetch_add(1, Ordering::Relaxed);
                        }
                        let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
                        *response.status_mut() = hyper::StatusCode::from_u16(code).unwrap();
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// One fresh event: when it was sent and answered 202.
struct Probe {
    id: String,
    sent: Instant,
    answered: Instant,
}

/// Sends fresh events at 100/s (round-robin over `org_fresh_<k>`, k < 10) until `stop`.
fn start_probe(addr: SocketAddr, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<Probe>> {
    tokio::spawn(async move {
        let client = build_client(Duration::from_secs(30));
        let out = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let mut tasks = Vec::new();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep_until((started + Duration::from_millis(i * 10)).into()).await;
            let (client, out) = (client.clone(), Arc::clone(&out));
            let id = format!("evt_probe_{i}");
            let body = event_body_for(&format!("org_fresh_{}", i % 10), &id);
            tasks.push(tokio::spawn(async move {
                let sent = Instant::now();
                let (status, answered) = post(
                    &client,
                    &format!("http://{addr}/api/events"),
                    body,
                    &[("authorization", format!("Bearer {TOKEN}"))],
                )
                .await;
                assert_eq!(status, 202);
                out.lock().unwrap().push(Probe { id, sent, answered });
            }));
            i += 1;
        }
        for t in tasks {
            t.await.unwrap();
        }
        let out = std::mem::take(&mut *out.lock().unwrap());
        out
    })
}

/// "p50 / p99 / max" in ms of the ingest and delivery latencies of the probes sent in
/// `from..to`.
fn phase(probes: &[Probe], fresh: &Arrivals, from: Instant, to: Instant) -> String {
    let first = fresh.first_byte.lock().unwrap();
    let mut ingest = Vec::new();
    let mut delivery = Vec::new();
    for p in probes.iter().filter(|p| p.sent >= from && p.sent < to) {
        ingest.push(p.answered.saturating_duration_since(p.sent));
        if let Some(at) = first.get(&p.id) {
            delivery.push(at.saturating_duration_since(p.answered));
        }
    }
    ingest.sort();
    delivery.sort();
    let three = |v: &[Duration]| {
        format!(
            "{:.1} / {:.1} / {:.1}",
            ms(percentile(v, 0.5)),
            ms(percentile(v, 0.99)),
            ms(v.last().copied().unwrap_or_default())
        )
    };
    format!(
        "ingest {}; delivery {} ({} events)",
        three(&ingest),
        three(&delivery),
        ingest.len()
    )
}

/// What both runs start from: a daemon on a db with `n` due deliveries of one webhook (at
/// the switchable receiver, which holds them, recording into `backlog`) and 10 fresh
/// webhooks at a fast receiver.
struct Setup {
    status: Arc<AtomicU16>,
    fresh: Arc<Arrivals>,
    daemon: super::Daemon,
    client: palo_webhooks::delivery::HttpsClient,
    webhook: String,
    _dir: tempfile::TempDir,
}

async fn setup(n: usize, backlog: Arc<Arrivals>) -> Setup {
    let status = Arc::new(AtomicU16::new(HANG));
    let receiver = switchable(Arc::clone(&status), backlog).await;
    let fresh = Arc::new(Arrivals::default());
    let fresh_receiver = start_receiver(Arc::clone(&fresh)).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("lifecycle.redb");
    let load_db = db.clone();
    tokio::task::spawn_blocking(move || {
        super::backlog::load(&load_db, receiver, n, 10, fresh_receiver)
    })
    .await
    .unwrap();
    let daemon = start_daemon_at(&db, &[]);
    wait_ready(&daemon).await;
    let client = build_client(Duration::from_secs(30));
    let webhooks = call(
        &client,
        &daemon,
        "GET",
        "/api/webhooks?organization_id=org_backlog",
        None,
    )
    .await;
    let webhook = webhooks["data"][0]["id"].as_str().unwrap().to_owned();
    Setup {
        status,
        fresh,
        daemon,
        client,
        webhook,
        _dir: dir,
    }
}

pub async fn run(n: usize, add: &mut impl FnMut(&str, String)) {
    let backlog = Arc::new(Arrivals::default());
    let Setup {
        status,
        fresh,
        daemon,
        client,
        webhook,
        _dir,
    } = setup(n, Arc::clone(&backlog)).await;
    let held = |body: &serde_json::Value| body["held_deliveries"].as_u64().unwrap_or(0);

    let stop = Arc::new(AtomicBool::new(false));
    let probe = start_probe(daemon.addr, Arc::clone(&stop));
    // Baseline in the same run: the backlog's first attempts hang, nothing else moves.
    let base_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;

    // The hanging attempts get 410: the webhook is disabled and its backlog held.
    let disable_from = Instant::now();
    status.store(410, Ordering::Relaxed);
    let disabled_at = loop {
        let body = call(
            &client,
            &daemon,
            "GET",
            &format!("/api/webhooks/{webhook}"),
            None,
        )
        .await;
        // Every delivery but the in-flight ones answered 410 (they are held too).
        if held(&body) + 16 >= n as u64 && !body["disabled"].is_null() {
            break Instant::now();
        }
        assert!(
            disable_from.elapsed() < Duration::from_secs(600),
            "hold stuck: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let body = call(
        &client,
        &daemon,
        "GET",
        &format!("/api/webhooks/{webhook}"),
        None,
    )
    .await;
    let held_now = held(&body);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Enabled with deliver_held: every held delivery goes to the (now healthy) receiver.
    status.store(200, Ordering::Relaxed);
    let enable_from = Instant::now();
    let enabled = call(
        &client,
        &daemon,
        "POST",
        &format!("/api/webhooks/{webhook}/enable"),
        Some(r#"{"deliver_held":true}"#.to_owned()),
    )
    .await;
    assert!(enabled["disabled"].is_null(), "{enabled}");
    let answer_ms = enable_from.elapsed();
    let released = loop {
        let body = call(
            &client,
            &daemon,
            "GET",
            &format!("/api/webhooks/{webhook}"),
            None,
        )
        .await;
        if held(&body) == 0 {
            break Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The attempts answered 410 before the disable committed wait for their next scheduled
    // attempt (5 min): not counted.
    let status_now = call(&client, &daemon, "GET", "/api/admin/status", None).await;
    let retrying = status_now["deliveries"]["retrying"].as_u64().unwrap_or(0) as usize;
    let expected = n - retrying;
    loop {
        if backlog.first_byte.lock().unwrap().len() >= expected {
            break;
        }
        assert!(
            enable_from.elapsed() < Duration::from_secs(1_800),
            "backlog not delivered: {} of {expected}",
            backlog.first_byte.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last = backlog
        .first_byte
        .lock()
        .unwrap()
        .values()
        .max()
        .copied()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let probes = probe.await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let name = format!("lifecycle: a webhook with {n} due deliveries disabled (410), then enabled");
    add(
        &format!("{name}: held in (s, from the 410s; held count)"),
        format!(
            "{:.2}; {held_now}",
            disabled_at.duration_since(disable_from).as_secs_f64()
        ),
    );
    add(
        &format!("{name}: enable answered in (ms; held left in the answer); all released in (s)"),
        format!(
            "{:.1}; {}; {:.2}",
            ms(answer_ms),
            enabled["held_deliveries"],
            released.duration_since(enable_from).as_secs_f64()
        ),
    );
    add(
        &format!("{name}: enable → last held delivery arrived (deliveries/s)"),
        format!(
            "{:.0} ({} distinct, {} requests; {retrying} answered 410 wait for their retry)",
            expected as f64 / last.duration_since(enable_from).as_secs_f64(),
            backlog.first_byte.lock().unwrap().len(),
            backlog.count.load(Ordering::Relaxed)
        ),
    );
    add(
        "lifecycle: 10 other webhooks × 10 events/s, p50 / p99 / max (ms), baseline",
        phase(&probes, &fresh, base_from, disable_from),
    );
    add(
        "lifecycle: the same while the backlog is held (goal: no stall)",
        phase(&probes, &fresh, disable_from, disabled_at),
    );
    add(
        "lifecycle: the same from the enable until all released (sweep and drain)",
        phase(&probes, &fresh, enable_from, released),
    );
    add(
        "lifecycle: the same from then to the last held delivery (drain only)",
        phase(&probes, &fresh, released, last),
    );
}

/// Deleting a webhook with `n` due deliveries (its receiver holds every attempt) while the
/// same fresh load runs: the deletion's answer time, how long until none is unfinished,
/// and the fresh events' latency before and during.
pub async fn run_delete(n: usize, add: &mut impl FnMut(&str, String)) {
    let Setup {
        status,
        fresh,
        daemon,
        client,
        webhook,
        _dir,
    } = setup(n, Arc::new(Arrivals::default())).await;
    let stop = Arc::new(AtomicBool::new(false));
    let probe = start_probe(daemon.addr, Arc::clone(&stop));
    let base_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let delete_from = Instant::now();
    call(
        &client,
        &daemon,
        "DELETE",
        &format!("/api/webhooks/{webhook}"),
        None,
    )
    .await;
    let answered = delete_from.elapsed();
    let done = loop {
        let s = call(&client, &daemon, "GET", "/api/admin/status", None).await;
        let unfinished = s["deliveries"]["pending"].as_u64().unwrap_or(u64::MAX)
            + s["deliveries"]["retrying"].as_u64().unwrap_or(0);
        if unfinished == 0 {
            break Instant::now();
        }
        assert!(
            delete_from.elapsed() < Duration::from_secs(600),
            "delete stuck: {s}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    status.store(200, Ordering::Relaxed);
    let probes = probe.await.unwrap();
    add(
        &format!("lifecycle: DELETE of a webhook with {n} due deliveries: answered (ms); all cancelled (s)"),
        format!("{:.1}; {:.2}", ms(answered), done.duration_since(delete_from).as_secs_f64()),
    );
    add(
        "lifecycle: other webhooks p50 / p99 / max (ms), before the DELETE",
        phase(&probes, &fresh, base_from, delete_from),
    );
    add(
        "lifecycle: the same from the DELETE until all cancelled",
        phase(&probes, &fresh, delete_from, done),
    );
}
