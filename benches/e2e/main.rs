//! End-to-end benchmark: the real daemon (release binary) on loopback against a fast hyper
//! receiver, printed next to baselines measured in the same run on the same machine:
//! a bare hyper server answering the same ingest requests without storing, raw redb commits
//! of the same record sizes, and a bare hyper client sending the same signed requests.
//!
//! Run: `cargo bench --bench e2e` (sections (a)-(f) of issue 13 and ingest, see
//! `engine.rs`; about 12 minutes on 2 cores). `E2E_ONLY=a,c,...` runs some sections (`a` `b`
//! `c` `d` `e` `f` `g` `ingest` `pg` `recovery` `lifecycle`, and `slow`, not run by default);
//! `E2E_BURST_SECONDS`, `E2E_B_SECONDS`, `E2E_OUTAGE_EVENTS`, `E2E_BACKLOG`,
//! `E2E_FAIRNESS_BACKLOG`, `E2E_RECOVERY`, `E2E_LIFECYCLE` size them.

mod backlog;
mod engine;
mod lifecycle;
mod postgres;
mod recovery;
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
use tokio::net::TcpListener;

const TOKEN: &str = "bench-admin-token";

/// Builds request `i` of a load run: URL, body, extra headers.
type MakeRequest =
    Arc<dyn Fn(usize) -> (String, Vec<u8>, Vec<(&'static str, String)>) + Send + Sync>;
const SECRET: &str = "bench_secret_that_is_at_least_32_characters";

fn event_body(i: usize) -> Vec<u8> {
    event_body_for("org_bench", &format!("evt_bench_{i}"))
}

/// About 1 KiB of data, like a real ticket event, for `org` with this `event_id`.
fn event_body_for(org: &str, event_id: &str) -> Vec<u8> {
    let filler = "x".repeat(800);
    format!(
        r#"{{"event_id":"{event_id}","event_type":"ticket.created","organization_id":"{org}","data":{{"ticket_id":"TKT-{event_id}","title":"{filler}","priority":"p3","project_id":"prj","created_by":"user"}}}}"#
    )
    .into_bytes()
}

/// Arrival times (by `X-Palo-Event-Id`), a request count, and requests per second since the
/// receiver started.
struct Arrivals {
    count: AtomicUsize,
    first_byte: Mutex<HashMap<String, Instant>>,
    per_second: Mutex<std::collections::BTreeMap<u64, usize>>,
    epoch: Instant,
}

impl Default for Arrivals {
    fn default() -> Arrivals {
        Arrivals {
            count: AtomicUsize::new(0),
            first_byte: Mutex::new(HashMap::new()),
            per_second: Mutex::new(std::collections::BTreeMap::new()),
            epoch: Instant::now(),
        }
    }
}

/// A fast receiver: answers 200 at once and records when each event first arrived.
async fn start_receiver(arrivals: Arc<Arrivals>) -> SocketAddr {
    start_receiver_on("127.0.0.1:0".parse().unwrap(), arrivals).await
}

/// [`start_receiver`] on a given address (a port that refused connections until now).
async fn start_receiver_on(addr: SocketAddr, arrivals: Arc<Arrivals>) -> SocketAddr {
    let listener = TcpListener::bind(addr).await.unwrap();
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
                        *arrivals
                            .per_second
                            .lock()
                            .unwrap()
                            .entry(at.duration_since(arrivals.epoch).as_secs())
                            .or_default() += 1;
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

pub(crate) struct Daemon {
    child: Child,
    addr: SocketAddr,
    _dir: Option<tempfile::TempDir>,
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
    start_daemon_with(&["--max-in-flight-per-webhook", "64"])
}

/// A daemon on a fresh db with `extra` flags (none: the default settings).
fn start_daemon_with(extra: &[&str]) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = start_daemon_at(&dir.path().join("bench.redb"), extra);
    daemon._dir = Some(dir);
    daemon
}

/// A daemon whose side files (node id) are in `dir`, on the PostgreSQL database `url`.
fn start_daemon_on_postgres(dir: &std::path::Path, url: &str, extra: &[&str]) -> Daemon {
    let mut args = vec!["--store", url];
    args.extend(extra);
    start_daemon_at(&dir.join("bench.redb"), &args)
}

fn start_daemon_at(db: &std::path::Path, extra: &[&str]) -> Daemon {
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
        .args(["--db", db.to_str().unwrap()])
        .args(extra)
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
    create_webhooks_for(daemon, receiver, count, "org_bench").await;
}

async fn create_webhooks_for(daemon: &Daemon, receiver: SocketAddr, count: usize, org: &str) {
    let client = build_client(Duration::from_secs(10));
    for _ in 0..count {
        let body = format!(
            r#"{{"url":"http://{receiver}/hook","events":["*"],"secret":"{SECRET}","organization_id":"{org}"}}"#
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

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    println!(
        "palo-webhooks e2e benchmark, {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("{:<72} result", "measurement");
    let mut rows = 0usize;
    let mut add = |name: &str, value: String| {
        println!("{name:<72} {value}");
        rows += 1;
    };
    // `E2E_ONLY=a,c` runs those sections (baselines always run: every ratio needs them).
    // Sections: a b c d e f (issue 13), g (10,000 webhooks × 100 due at restart), ingest
    // (durable ingest by clients and webhooks), pg (the burst on PostgreSQL with one and
    // three daemons, next to redb's, issue 14), slow (one slow webhook among 100, issue 3).
    let only = std::env::var("E2E_ONLY")
        .unwrap_or_else(|_| "a,b,c,d,e,f,g,ingest,pg,recovery,lifecycle".to_owned());
    let wants = |s: &str| only.split(',').any(|w| w.trim() == s);
    let seconds = |name: &str, default: u64| -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let base = engine::baselines(&mut add).await;
    let mut a_rate = None;
    if wants("a") {
        a_rate =
            Some(engine::burst(&base, 1, seconds("E2E_BURST_SECONDS", 30), "(a)", &mut add).await);
    }
    if wants("b") {
        for webhooks in [10, 100] {
            engine::burst(
                &base,
                webhooks,
                seconds("E2E_B_SECONDS", 10),
                "(b)",
                &mut add,
            )
            .await;
        }
    }
    if wants("c") {
        engine::outage(
            &base,
            seconds("E2E_OUTAGE_EVENTS", 100_000) as usize,
            &mut add,
        )
        .await;
    }
    if wants("d") {
        engine::restart_backlog(&base, seconds("E2E_BACKLOG", 1_000_000) as usize, &mut add).await;
    }
    if wants("e") {
        engine::fairness(seconds("E2E_FAIRNESS_BACKLOG", 500_000) as usize, &mut add).await;
    }
    if wants("f") {
        let rate = match a_rate {
            Some(rate) => rate,
            None => engine::burst(&base, 1, 10, "(f: max rate)", &mut add).await,
        };
        engine::steady(rate, &mut add).await;
    }
    if wants("g") {
        engine::many_webhooks(
            &base,
            seconds("E2E_MANY_WEBHOOKS", 10_000) as usize,
            100,
            &mut add,
        )
        .await;
    }
    if wants("ingest") {
        engine::ingest_rows(&base, &mut add).await;
    }
    if wants("pg") {
        postgres::rows(&base, seconds("E2E_BURST_SECONDS", 30), &mut add).await;
    }
    if wants("recovery") {
        recovery::run(seconds("E2E_RECOVERY", 50_000) as usize, &mut add).await;
    }
    if wants("lifecycle") {
        lifecycle::run(seconds("E2E_LIFECYCLE", 60_000) as usize, &mut add).await;
        lifecycle::run_delete(seconds("E2E_LIFECYCLE", 60_000) as usize, &mut add).await;
    }
    if wants("slow") {
        let mut offset = 0;
        slow::run(1_000, &mut offset, &mut add).await;
    }
    println!("\n{rows} measurements; baselines and daemon ran in this process on this machine.");
}
