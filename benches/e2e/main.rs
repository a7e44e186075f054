//! End-to-end benchmark: the real daemon (release binary) on loopback against a fast hyper
//! receiver, printed next to baselines measured in the same run on the same machine:
//! a bare hyper server answering the same ingest requests without storing, raw redb commits
//! of the same record sizes, and a bare hyper client sending the same signed requests.
//!
//! Run: `cargo bench --bench e2e` (about 6 minutes on 2 cores). `E2E_EVENTS` sets the
//! events per ingest run (default 20000), `E2E_BACKLOG` the pending deliveries of the
//! backlog run (default 1000000; 0 skips it); `E2E_ONLY=slow|backlog` runs one section.

mod backlog;
mod slow;

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use palo_webhooks::delivery::{build_client, HttpsClient};
use palo_webhooks::signature::sign;
use tokio::net::TcpListener;

const TOKEN: &str = "bench-admin-token";

/// Builds request `i` of a load run: URL, body, extra headers.
type MakeRequest =
    Arc<dyn Fn(usize) -> (String, Vec<u8>, Vec<(&'static str, String)>) + Send + Sync>;
const SECRET: &str = "bench_secret_that_is_at_least_32_characters";

fn event_body(i: usize) -> Vec<u8> {
    // About 1 KiB of data, like a real ticket event.
    let filler = "x".repeat(800);
    format!(
        r#"{{"event_id":"evt_bench_{i}","event_type":"ticket.created","organization_id":"org_bench","data":{{"ticket_id":"TKT-{i}","title":"{filler}","priority":"p3","project_id":"prj","created_by":"user"}}}}"#
    )
    .into_bytes()
}

/// Arrival times (by `X-Palo-Event-Id`) and a request count.
#[derive(Default)]
struct Arrivals {
    count: AtomicUsize,
    first_byte: Mutex<HashMap<String, Instant>>,
}

/// A fast receiver: answers 200 at once and records when each event first arrived.
async fn start_receiver(arrivals: Arc<Arrivals>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let arrivals = Arc::clone(&arrivals);
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let arrivals = Arc::clone(&arrivals);
                    async move {
                        let at = Instant::now();
                        if let Some(id) = req
                            .headers()
                            .get("x-palo-event-id")
                            .and_then(|v| v.to_str().ok())
                        {
                            arrivals
                                .first_byte
                                .lock()
                                .unwrap()
                                .entry(id.to_owned())
                                .or_insert(at);
                        }
                        let _ = req.into_body().collect().await;
                        arrivals.count.fetch_add(1, Ordering::Relaxed);
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
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

/// The baseline server: reads each request and answers 202 with a small JSON, storing nothing.
async fn start_bare_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: Request<Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    let mut response = Response::new(Full::new(Bytes::from_static(
                        br#"{"event_id":"x","deliveries":1}"#,
                    )));
                    *response.status_mut() = hyper::StatusCode::ACCEPTED;
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

struct Daemon {
    child: Child,
    addr: SocketAddr,
    _dir: Option<tempfile::TempDir>,
}

impl Daemon {
    /// Resident memory in MiB, from /proc.
    fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let kib: f64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        kib / 1024.0
    }
}

impl Drop for Daemon {
    /// SIGTERM, so the daemon logs its group-commit totals (echoed by the log reader).
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn start_daemon() -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = start_daemon_at(&dir.path().join("bench.redb"));
    daemon._dir = Some(dir);
    daemon
}

fn start_daemon_at(db: &std::path::Path) -> Daemon {
    let mut child = Command::new(env!("CARGO_BIN_EXE_palo-webhooks"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--allow-http",
            "--allow-network",
            "127.0.0.0/8",
            "--log",
            "warn,palo_webhooks::server=info",
        ])
        .args([
            "--db",
            db.to_str().unwrap(),
            "--max-in-flight-per-webhook",
            "64",
        ])
        .env("PALO_WEBHOOKS_ADMIN_TOKEN", TOKEN)
        // The bench measures the daemon at full speed: no per-key rate limit.
        .env("PALO_WEBHOOKS_RATE_LIMIT", "0")
        .stderr(Stdio::piped())
        .spawn()
        .expect("daemon binary");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.split("listening on http://").nth(1) {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
            if let Some(totals) = line.split("group commit totals").nth(1) {
                println!("{:<64}{totals}", "  (daemon) group commit:");
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("daemon start")
        .parse()
        .unwrap();
    Daemon {
        child,
        addr,
        _dir: None,
    }
}

async fn post(
    client: &HttpsClient,
    url: &str,
    body: Vec<u8>,
    headers: &[(&str, String)],
) -> (u16, Instant) {
    let mut request = Request::post(url).header("content-type", "application/json");
    for (k, v) in headers {
        request = request.header(*k, v);
    }
    let response = client
        .request(request.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .expect("request");
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    (status, Instant::now())
}

/// Sends `n` requests made by `make` over `concurrency` connections; returns requests/s
/// and the completion time of each request (by index).
async fn load(n: usize, concurrency: usize, make: MakeRequest, expect: u16) -> (f64, Vec<Instant>) {
    let client = build_client(Duration::from_secs(10));
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Mutex::new(vec![Instant::now(); n]));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, next, done, make) = (
                client.clone(),
                Arc::clone(&next),
                Arc::clone(&done),
                Arc::clone(&make),
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    let (url, body, headers) = make(i);
                    let (status, at) = post(&client, &url, body, &headers).await;
                    assert_eq!(status, expect, "request {i}");
                    done.lock().unwrap()[i] = at;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let done = done.lock().unwrap().clone();
    (rate, done)
}

async fn create_webhooks(daemon: &Daemon, receiver: SocketAddr, count: usize) {
    let client = build_client(Duration::from_secs(10));
    for _ in 0..count {
        let body = format!(
            r#"{{"url":"http://{receiver}/hook","events":["*"],"secret":"{SECRET}","organization_id":"org_bench"}}"#
        );
        let (status, _) = post(
            &client,
            &format!("http://{}/api/webhooks", daemon.addr),
            body.into_bytes(),
            &[("authorization", format!("Bearer {TOKEN}"))],
        )
        .await;
        assert_eq!(status, 201);
    }
}

async fn wait_for(arrivals: &Arrivals, count: usize, timeout: Duration) -> Instant {
    let deadline = Instant::now() + timeout;
    while arrivals.count.load(Ordering::Relaxed) < count {
        assert!(
            Instant::now() < deadline,
            "only {} of {count} deliveries arrived",
            arrivals.count.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Instant::now()
}

fn ingest_maker(daemon_addr: SocketAddr, offset: usize) -> MakeRequest {
    Arc::new(move |i| {
        (
            format!("http://{daemon_addr}/api/events"),
            event_body(offset + i),
            vec![("authorization", format!("Bearer {TOKEN}"))],
        )
    })
}

/// Raw redb: commits of `batch` records the size of one accepted event (envelope + delivery +
/// index entry, about 1.3 KiB), durably, as fast as possible. Returns records/s.
fn raw_redb_records_per_second(total: usize, batch: usize) -> f64 {
    use redb::{Database, TableDefinition};
    const T: TableDefinition<u128, &[u8]> = TableDefinition::new("t");
    let dir = tempfile::tempdir().unwrap();
    let db = Database::create(dir.path().join("raw.redb")).unwrap();
    let record = vec![7u8; 1300];
    let started = Instant::now();
    let mut key = 0u128;
    for _ in 0..total / batch {
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(T).unwrap();
            for _ in 0..batch {
                key += 1;
                table.insert(key, record.as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    (total / batch * batch) as f64 / started.elapsed().as_secs_f64()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Paced ingest: `n` events at `rate` events/s (ids `evt_bench_<offset + i>`); returns when
/// each was answered 202, by event id.
async fn paced_ingest(
    daemon: &Daemon,
    rate: f64,
    n: usize,
    offset: usize,
) -> HashMap<String, Instant> {
    let client = build_client(Duration::from_secs(10));
    let interval = Duration::from_secs_f64(1.0 / rate);
    let started = Instant::now();
    let answered = Arc::new(Mutex::new(HashMap::new()));
    let mut tasks = Vec::new();
    for i in 0..n {
        tokio::time::sleep_until((started + interval * i as u32).into()).await;
        let (client, answered) = (client.clone(), Arc::clone(&answered));
        let url = format!("http://{}/api/events", daemon.addr);
        tasks.push(tokio::spawn(async move {
            let (status, at) = post(
                &client,
                &url,
                event_body(offset + i),
                &[("authorization", format!("Bearer {TOKEN}"))],
            )
            .await;
            assert_eq!(status, 202);
            answered
                .lock()
                .unwrap()
                .insert(format!("evt_bench_{}", offset + i), at);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let answered = std::mem::take(&mut *answered.lock().unwrap());
    answered
}

/// Paced ingest at `rate` events/s for `n` events; returns 202 → receiver first byte latencies.
async fn latency_run(
    daemon: &Daemon,
    arrivals: &Arc<Arrivals>,
    rate: f64,
    n: usize,
    offset: usize,
) -> Vec<Duration> {
    let answered = paced_ingest(daemon, rate, n, offset).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let arrived = arrivals.first_byte.lock().unwrap();
    let mut latencies: Vec<Duration> = answered
        .iter()
        .filter_map(|(id, ok)| {
            arrived
                .get(id)
                .map(|first| first.saturating_duration_since(*ok))
        })
        .collect();
    latencies.sort();
    latencies
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let n: usize = std::env::var("E2E_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut add = |name: &str, value: String| {
        println!("{name:<64} {value}");
        rows.push((name.to_owned(), value));
    };
    println!(
        "palo-webhooks e2e benchmark: {n} events per ingest run, {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("{:<64} result", "measurement");
    // `E2E_ONLY=slow` or `E2E_ONLY=backlog` runs one section alone.
    let only = std::env::var("E2E_ONLY").ok();
    if let Some(section) = only.as_deref() {
        let mut offset = 0;
        match section {
            "slow" => slow::run(n / 20, &mut offset, &mut add).await,
            "backlog" => {
                let pending = std::env::var("E2E_BACKLOG")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1_000_000);
                backlog::run(pending, &mut add).await;
            }
            other => panic!("E2E_ONLY={other}: expected slow or backlog"),
        }
        return;
    }

    // Baselines.
    let bare = start_bare_server().await;
    let make_bare: MakeRequest =
        Arc::new(move |i| (format!("http://{bare}/api/events"), event_body(i), vec![]));
    for c in [16, 64] {
        let (rate, _) = load(n, c, Arc::clone(&make_bare), 202).await;
        add(
            &format!("baseline: bare hyper server, {c} clients (req/s)"),
            format!("{rate:.0}"),
        );
    }
    for batch in [1, 64] {
        let total = if batch == 1 { 2_000 } else { 64_000 };
        let rate = tokio::task::spawn_blocking(move || raw_redb_records_per_second(total, batch))
            .await
            .unwrap();
        add(
            &format!("baseline: raw redb durable commits, {batch} records/txn (records/s)"),
            format!("{rate:.0}"),
        );
    }
    let arrivals = Arc::new(Arrivals::default());
    let receiver = start_receiver(Arc::clone(&arrivals)).await;
    let make_signed: MakeRequest = Arc::new(move |i| {
        let body = event_body(i);
        let signature = sign(SECRET, &body);
        (
            format!("http://{receiver}/hook"),
            body,
            vec![
                ("x-palo-signature", signature),
                ("x-palo-event-id", format!("base_{i}")),
            ],
        )
    });
    let (rate, _) = load(n, 64, make_signed, 200).await;
    add(
        "baseline: bare hyper client, signed POSTs, 64 in flight (req/s)",
        format!("{rate:.0}"),
    );

    // The daemon: durable ingest with fan-out to 1 and 10 webhooks.
    let mut offset = 0;
    let mut max_one_webhook = 0.0f64;
    for webhooks in [0usize, 1, 10] {
        for c in [16usize, 64] {
            let daemon = start_daemon();
            create_webhooks(&daemon, receiver, webhooks).await;
            let start_count = arrivals.count.load(Ordering::Relaxed);
            let events = if webhooks == 10 { n / 4 } else { n };
            let started = Instant::now();
            let (rate, _) = load(events, c, ingest_maker(daemon.addr, offset), 202).await;
            offset += events;
            add(
                &format!(
                    "palo-webhooks: durable ingest, {c} clients, {webhooks} webhook(s) (events/s)"
                ),
                format!("{rate:.0}"),
            );
            if webhooks > 0 {
                let finished = wait_for(
                    &arrivals,
                    start_count + events * webhooks,
                    Duration::from_secs(300),
                )
                .await;
                let deliveries =
                    (events * webhooks) as f64 / finished.duration_since(started).as_secs_f64();
                if webhooks == 1 {
                    max_one_webhook = max_one_webhook.max(deliveries);
                }
                add(
                    "palo-webhooks: deliveries/s during that run (ingest start → last delivery)",
                    format!("{deliveries:.0}"),
                );
            }
            drop(daemon);
        }
    }

    // Latency 202 → receiver's first byte, paced.
    let daemon = start_daemon();
    create_webhooks(&daemon, receiver, 1).await;
    // At 1k events/s, and at half the measured maximum with one webhook (events delivered/s).
    let half = (max_one_webhook / 2.0).round();
    for (rate, label) in [
        (1_000.0, "1k events/s".to_owned()),
        (half, format!("{half:.0} events/s (50% of max)")),
    ] {
        let count = (rate as usize) * 5;
        let latencies = latency_run(&daemon, &arrivals, rate, count, offset).await;
        offset += count;
        add(
            &format!("palo-webhooks: 202 → receiver first byte at {label} (p50/p99/p999 ms)"),
            format!(
                "{:.2} / {:.2} / {:.2} ({} of {count} matched)",
                percentile(&latencies, 0.5).as_secs_f64() * 1e3,
                percentile(&latencies, 0.99).as_secs_f64() * 1e3,
                percentile(&latencies, 0.999).as_secs_f64() * 1e3,
                latencies.len()
            ),
        );
    }
    drop(daemon);

    slow::run(n / 20, &mut offset, &mut add).await;

    let backlog: usize = std::env::var("E2E_BACKLOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    if backlog > 0 {
        backlog::run(backlog, &mut add).await;
    }
    println!(
        "\n{} measurements; baselines and daemon ran in this process on this machine.",
        rows.len()
    );
}
