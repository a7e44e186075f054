//! The delivery engine under backlogs larger than every in-memory bound (issue 13): no
//! silent seconds, fairness between webhooks, honest overdue figures, memory bounded in
//! bytes, hanging endpoints kept to their share, writes scheduled before the queues'
//! position, and due times left far ahead by a clock that was corrected (libfaketime).

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

// Its own test binary (not a module of `tests/it`): cargo runs test binaries one after
// another, so these loads never run beside the timing-sensitive tests of `tests/it`
// (a redelivery test there once missed its 5 s wait while a 20,000-event burst ran).
#[allow(dead_code)]
#[path = "it/support.rs"]
mod support;

/// The store of this binary's daemons (read by `support`).
const BACKEND: support::Backend = support::Backend::Redb;

use support::{Behaviour, Receiver};

/// The tests of this module measure seconds and load the machine: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A receiver that keeps no bodies: it counts requests, records when each event id first
/// arrived, and can answer after `delay_ms`.
#[derive(Default)]
struct Counter {
    count: AtomicUsize,
    delay_ms: AtomicU64,
    first: Mutex<BTreeMap<String, Instant>>,
    per_second: Mutex<BTreeMap<u64, usize>>,
}

impl Counter {
    async fn start() -> (Arc<Counter>, String) {
        let counter = Arc::new(Counter::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let shared = Arc::clone(&counter);
        let epoch = Instant::now();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counter = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let counter = Arc::clone(&counter);
                        async move {
                            let id = req
                                .headers()
                                .get("x-palo-event-id")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned();
                            let _ = req.into_body().collect().await;
                            let delay = counter.delay_ms.load(Ordering::Relaxed);
                            if delay > 0 {
                                tokio::time::sleep(Duration::from_millis(delay)).await;
                            }
                            let now = Instant::now();
                            counter.first.lock().unwrap().entry(id).or_insert(now);
                            *counter
                                .per_second
                                .lock()
                                .unwrap()
                                .entry((now - epoch).as_secs())
                                .or_default() += 1;
                            counter.count.fetch_add(1, Ordering::Relaxed);
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (counter, format!("http://{addr}/hook"))
    }

    fn distinct(&self) -> usize {
        self.first.lock().unwrap().len()
    }

    fn arrived(&self, event_id: &str) -> Option<Instant> {
        self.first.lock().unwrap().get(event_id).copied()
    }

    async fn wait_distinct(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.distinct() < n {
            assert!(
                Instant::now() < deadline,
                "receiver got {} of {n} events in {timeout:?}",
                self.distinct()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The seconds between the first and the last arrival in which nothing arrived.
    fn silent_seconds(&self) -> Vec<u64> {
        let per_second = self.per_second.lock().unwrap();
        let (Some(first), Some(last)) = (
            per_second.keys().next().copied(),
            per_second.keys().last().copied(),
        ) else {
            return Vec::new();
        };
        (first..=last)
            .filter(|s| !per_second.contains_key(s))
            .collect()
    }
}

fn event(org: &str, i: usize, filler: usize) -> Value {
    json!({
        "event_id": format!("evt_{org}_{i}"),
        "event_type": "ticket.created",
        "organization_id": org,
        "data": {"ticket_id": format!("TKT-{i}"), "title": "x".repeat(filler), "priority": "p2",
                 "project_id": "prj", "created_by": "u"}
    })
}

/// Ingests `count` events for `org` from `clients` concurrent clients; every one must get 202.
async fn ingest(daemon: &Arc<support::Daemon>, org: &str, count: usize, clients: usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (daemon, next, org) = (Arc::clone(daemon), Arc::clone(&next), org.to_owned());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return;
                }
                let (status, body) = daemon
                    .call("POST", "/api/events", Some(event(&org, i, 100)))
                    .await;
                assert_eq!(status, 202, "{body}");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

/// Regression (issue 13): beyond 1,000 due deliveries per webhook, the old wheel postponed
/// the rest by 30 s, so the receiver saw waves with silent gaps of ~29 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_20000_events_to_one_webhook_arrives_with_no_silent_second() {
    let _serial = SERIAL.lock().await;
    let daemon = Arc::new(support::start(&["--allow-http"]));
    let (counter, url) = Counter::start().await;
    daemon.create_webhook("org_burst", &url, &["*"]).await;
    ingest(&daemon, "org_burst", 20_000, 32).await;
    counter
        .wait_distinct(20_000, Duration::from_secs(240))
        .await;
    let silent = counter.silent_seconds();
    assert!(
        silent.is_empty(),
        "seconds with no delivery while deliveries were due: {silent:?}"
    );
}

/// Regression (issue 13): while the old wheel postponed a backlog, `due_now` read 0 and
/// `palo_webhooks_oldest_overdue_seconds` 0, so alerts on overdue work never fired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overdue_figures_are_non_zero_while_a_backlog_waits() {
    let _serial = SERIAL.lock().await;
    let daemon = Arc::new(support::start(&["--allow-http", "--max-in-flight", "4"]));
    let hanging = Receiver::start(Behaviour::Hang).await;
    daemon
        .create_webhook("org_late", &hanging.url, &["*"])
        .await;
    ingest(&daemon, "org_late", 300, 8).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let (status, body) = daemon.call("GET", "/api/admin/status", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["due_now"].as_u64().unwrap() >= 290, "{body}");
    assert!(
        body["oldest_overdue_seconds"].as_u64().unwrap() >= 1,
        "{body}"
    );
    let (status, text) = daemon
        .raw_bytes(
            "GET",
            "/metrics",
            Some(support::ADMIN_TOKEN),
            None,
            Vec::new(),
        )
        .await;
    assert_eq!(status, 200);
    let text = String::from_utf8(text.to_vec()).unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in {text}"))
    };
    assert!(
        value("palo_webhooks_oldest_overdue_seconds") >= 1.0,
        "{text}"
    );
}

/// Regression (issue 13): one 900 KB event fanned out to 2,000 webhooks took the RSS from
/// 50 MB to 1.86 GB, one copy of the body per attempt claimed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_900_kb_event_to_2000_webhooks_keeps_rss_within_100_mib_of_idle() {
    let _serial = SERIAL.lock().await;
    let daemon = Arc::new(support::start(&["--allow-http"]));
    let (counter, url) = Counter::start().await;
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in 0..8 {
        let (daemon, url) = (Arc::clone(&daemon), url.clone());
        tasks.spawn(async move {
            for _ in 0..250 {
                daemon.create_webhook("org_big", &url, &["*"]).await;
            }
            chunk
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = daemon.rss_kib();
    let (status, body) = daemon
        .call("POST", "/api/events", Some(event("org_big", 0, 900_000)))
        .await;
    assert_eq!(status, 202, "{body}");
    let mut peak = idle;
    let deadline = Instant::now() + Duration::from_secs(240);
    while counter.count.load(Ordering::Relaxed) < 2_000 {
        peak = peak.max(daemon.rss_kib());
        assert!(
            Instant::now() < deadline,
            "{} of 2000 deliveries arrived",
            counter.count.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    peak = peak.max(daemon.rss_kib());
    assert!(
        peak - idle < 100 * 1024,
        "RSS went from {idle} KiB idle to {peak} KiB"
    );
}

/// Regression (issue 13): hanging endpoints could hold every global slot, so a healthy
/// endpoint's events waited for their timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_hanging_endpoints_do_not_delay_a_healthy_one_by_more_than_a_second() {
    let _serial = SERIAL.lock().await;
    let daemon = Arc::new(support::start(&["--allow-http", "--max-in-flight", "32"]));
    let hanging = Receiver::start(Behaviour::Hang).await;
    let (healthy, url) = Counter::start().await;
    daemon.create_webhook("org_healthy", &url, &["*"]).await;
    // The healthy endpoint answers quickly once: it is proven.
    let (status, _) = daemon
        .call("POST", "/api/events", Some(event("org_healthy", 0, 10)))
        .await;
    assert_eq!(status, 202);
    healthy.wait_distinct(1, Duration::from_secs(10)).await;
    for _ in 0..50 {
        daemon
            .create_webhook("org_hanging", &hanging.url, &["*"])
            .await;
    }
    ingest(&daemon, "org_hanging", 4, 4).await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    for i in 1..=3 {
        let sent = Instant::now();
        let (status, _) = daemon
            .call("POST", "/api/events", Some(event("org_healthy", i, 10)))
            .await;
        assert_eq!(status, 202);
        healthy.wait_distinct(i + 1, Duration::from_secs(15)).await;
        let waited = healthy
            .arrived(&format!("evt_org_healthy_{i}"))
            .unwrap()
            .duration_since(sent);
        assert!(waited < Duration::from_secs(1), "waited {waited:?}");
    }
}

/// Fairness (issue 13): a webhook draining a 20,000 backlog delays another webhook's fresh
/// event by at most a turn of the ring, not by the backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_20000_backlog_does_not_delay_another_webhooks_fresh_event_by_a_second() {
    let _serial = SERIAL.lock().await;
    let daemon = Arc::new(support::start(&["--allow-http"]));
    let (busy, busy_url) = Counter::start().await;
    // 20 ms per request, 8 at a time: the backlog takes about 50 s to drain.
    busy.delay_ms.store(20, Ordering::Relaxed);
    let (fresh, fresh_url) = Counter::start().await;
    daemon.create_webhook("org_busy", &busy_url, &["*"]).await;
    daemon.create_webhook("org_fresh", &fresh_url, &["*"]).await;
    let (status, _) = daemon
        .call("POST", "/api/events", Some(event("org_fresh", 0, 10)))
        .await;
    assert_eq!(status, 202);
    fresh.wait_distinct(1, Duration::from_secs(10)).await;
    ingest(&daemon, "org_busy", 20_000, 32).await;
    assert!(
        busy.distinct() < 19_000,
        "the backlog drained before it could be measured"
    );
    let mut waits = Vec::new();
    for i in 1..=10 {
        let sent = Instant::now();
        let (status, _) = daemon
            .call("POST", "/api/events", Some(event("org_fresh", i, 10)))
            .await;
        assert_eq!(status, 202);
        fresh.wait_distinct(i + 1, Duration::from_secs(15)).await;
        waits.push(
            fresh
                .arrived(&format!("evt_org_fresh_{i}"))
                .unwrap()
                .duration_since(sent),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        busy.distinct() < 20_000,
        "the backlog was gone before the fresh events were sent"
    );
    let worst = waits.iter().max().unwrap();
    assert!(*worst < Duration::from_secs(1), "waits: {waits:?}");
}

/// Regression (issue 13): handlers had to call `schedule_hint` by hand after each write; a
/// delivery written earlier than the position the queues had read up to was then missed.
/// Here 300 retries due in an hour fill the webhook's queue past its window, and then a new
/// event is due now, before all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_due_before_the_queues_position_is_delivered_at_once() {
    let _serial = SERIAL.lock().await;
    let daemon = Arc::new(support::start(&["--allow-http", "--retry-schedule", "1h"]));
    let receiver = Receiver::start(Behaviour::Status(500)).await;
    daemon
        .create_webhook("org_early", &receiver.url, &["*"])
        .await;
    ingest(&daemon, "org_early", 300, 8).await;
    receiver.wait_for(300, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    receiver.set(Behaviour::Status(200));
    let sent = Instant::now();
    let (status, _) = daemon
        .call("POST", "/api/events", Some(event("org_early", 1_000, 10)))
        .await;
    assert_eq!(status, 202);
    let got = receiver.wait_for(301, Duration::from_secs(5)).await;
    let last = got.last().unwrap();
    assert_eq!(last.header("x-palo-event-id"), "evt_org_early_1000");
    assert!(last.at.duration_since(sent) < Duration::from_secs(1));
}

/// A second `serve` on a db another daemon holds is refused and writes nothing: no admin
/// token file that would not match the running daemon's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_serve_on_a_locked_db_leaves_every_file_as_it_was() {
    let _serial = SERIAL.lock().await;
    let daemon = support::start(&["--allow-http"]);
    let listing = |dir: &std::path::Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let before = listing(&daemon.dir);
    let db = daemon.dir.join("palo.redb");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_palo-webhooks"))
        .args([
            "serve",
            "--db",
            db.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .env_remove("PALO_WEBHOOKS_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("already open"), "{stderr}");
    assert_eq!(listing(&daemon.dir), before, "{stderr}");
}

/// The libfaketime preload library, from Debian's `faketime` package (`.ci/run` installs it).
fn libfaketime() -> std::path::PathBuf {
    let path = std::path::PathBuf::from("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1");
    assert!(
        path.exists(),
        "libfaketime missing: apt-get install faketime"
    );
    path
}

/// Starts the daemon on `dir` with its wall clock read through libfaketime from `offset_file`
/// (re-read on every call; the monotonic clock is left alone).
fn start_with_clock(dir: &std::path::Path, offset_file: &std::path::Path) -> support::Daemon {
    support::start_in_with_env(
        dir,
        &["--allow-http", "--retry-schedule", "2s,2s,2s,2s"],
        &[
            ("LD_PRELOAD", libfaketime().to_str().unwrap()),
            ("FAKETIME_TIMESTAMP_FILE", offset_file.to_str().unwrap()),
            ("FAKETIME_NO_CACHE", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    )
}

/// Regression (issue 13, item 9): deliveries scheduled while the clock was a year ahead
/// stayed due a year later after NTP corrected it, and status called them not overdue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_scheduled_by_a_clock_a_year_ahead_is_sent_within_its_step_once_corrected() {
    let _serial = SERIAL.lock().await;
    for restart in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let offset = dir.path().join("faketime");
        std::fs::write(&offset, "+365d\n").unwrap();
        let mut daemon = Arc::new(start_with_clock(dir.path(), &offset));
        let receiver = Receiver::start(Behaviour::Status(503)).await;
        daemon
            .create_webhook("org_clock", &receiver.url, &["*"])
            .await;
        ingest(&daemon, "org_clock", 5, 5).await;
        receiver.wait_for(5, Duration::from_secs(20)).await;
        // Every first attempt failed: the retries are due 2 s later by the wrong clock.
        tokio::time::sleep(Duration::from_millis(300)).await;
        receiver.set(Behaviour::Status(200));
        let seen = receiver.received().len();
        if restart {
            let mut owned = Arc::try_unwrap(daemon).ok().expect("one owner");
            owned.terminate();
            std::fs::write(&offset, "+0\n").unwrap();
            daemon = Arc::new(start_with_clock(dir.path(), &offset));
        } else {
            std::fs::write(&offset, "+0\n").unwrap();
        }
        let corrected = Instant::now();
        let got = receiver.wait_for(seen + 5, Duration::from_secs(10)).await;
        let ids: HashSet<String> = got[seen..]
            .iter()
            .map(|r| r.header("x-palo-event-id"))
            .collect();
        assert_eq!(ids.len(), 5, "restart {restart}: {ids:?}");
        // Within the 2 s step, plus the loop's turn and a restart.
        assert!(
            corrected.elapsed() < Duration::from_secs(6),
            "restart {restart}: {:?}",
            corrected.elapsed()
        );
        assert!(
            daemon.log_text().contains("brought back due times"),
            "restart {restart}"
        );
    }
}

/// A receiver whose n-th request (from 0) answers `script[n]` (status, delay in ms); past the
/// script, 200 at once. Returns its URL and the count of requests.
async fn scripted_receiver(script: Vec<(u16, u64)>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let (shared, script) = (Arc::clone(&count), Arc::new(script));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (count, script) = (Arc::clone(&shared), Arc::clone(&script));
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let (count, script) = (Arc::clone(&count), Arc::clone(&script));
                    async move {
                        let _ = req.into_body().collect().await;
                        let n = count.fetch_add(1, Ordering::SeqCst);
                        let (status, delay) = script.get(n).copied().unwrap_or((200, 0));
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                        let mut response = Response::new(Full::new(Bytes::from_static(b"x")));
                        *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (format!("http://{addr}/hook"), count)
}

/// Regression (issue 13 adversarial pass): a scheduled retry that fell due while a manual
/// redelivery of the same delivery was in flight was skipped, and a failed manual attempt
/// changes no schedule, so the retry stayed due and unsent until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_due_during_a_manual_redelivery_is_still_sent() {
    let _serial = SERIAL.lock().await;
    let daemon = Arc::new(support::start(&[
        "--allow-http",
        "--retry-schedule",
        "3s,3s",
    ]));
    // Attempt 1 fails at once; the manual attempt takes 4 s and fails; then 200.
    let (url, count) = scripted_receiver(vec![(500, 0), (500, 4_000)]).await;
    let webhook = daemon.create_webhook("org_manual", &url, &["*"]).await;
    let (status, _) = daemon
        .call("POST", "/api/events", Some(event("org_manual", 0, 10)))
        .await;
    assert_eq!(status, 202);
    let delivery = daemon.only_delivery(&webhook).await;
    let sent = Instant::now();
    while count.load(Ordering::SeqCst) < 1 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    // The manual attempt runs across the retry's due time (3 s after attempt 1).
    let (status, body) = daemon
        .call(
            "POST",
            &format!("/api/deliveries/{delivery}/redeliver"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let done = daemon
        .wait_until(
            &format!("/api/deliveries/{delivery}"),
            Duration::from_secs(15),
            |b| b["status"] == "succeeded",
        )
        .await;
    assert_eq!(done["attempt_count"], 3, "{done}");
    assert!(sent.elapsed() < Duration::from_secs(12));
}
