//! Test support: the real daemon binary on 127.0.0.1 with a temporary db, a JSON client,
//! and a real HTTP receiver whose behaviour can change mid-test.
//!
//! The same test modules run on each store backend: every test binary's root says which
//! with `const BACKEND` (`tests/it/main.rs` and `tests/engine.rs`: redb; `tests/postgres.rs`:
//! PostgreSQL, in a throwaway cluster of `postgres_cluster`). The daemon's temporary
//! directory exists on both; on PostgreSQL it holds the URL of the daemon's database, so a
//! restart in the same directory (`start_in`) and `check(dir)` find the same store.

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::Notify;

#[path = "support/postgres_cluster.rs"]
mod postgres_cluster;

pub use postgres_cluster::{pg_database, pg_drop_database};
// For the tests of the harness itself, in tests/postgres.rs only.
#[allow(unused_imports)]
pub use postgres_cluster::psql;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";
pub const SECRET: &str = "test_secret_that_is_at_least_32_chars_long_é";

/// The store backend of this test binary's daemons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A redb file in the daemon's directory: `--db <dir>/palo.redb`.
    Redb,
    /// A database of its own in the test cluster: `--store postgres://...`.
    // Named by tests/postgres.rs only: the other binaries would call it dead.
    #[allow(dead_code)]
    Postgres,
}

/// The backend of this test binary, from its root's `const BACKEND`.
pub fn backend() -> Backend {
    crate::BACKEND
}

/// Where a daemon keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A redb file.
    File(PathBuf),
    /// A PostgreSQL database, by URL.
    Postgres(String),
}

impl StoreLocation {
    /// The flag and value that point `serve` and `check` at this store.
    pub fn args(&self) -> [String; 2] {
        match self {
            StoreLocation::File(path) => ["--db".to_owned(), path.to_str().unwrap().to_owned()],
            StoreLocation::Postgres(url) => ["--store".to_owned(), url.clone()],
        }
    }
}

/// In a daemon's directory on PostgreSQL: the URL of its database.
pub const STORE_URL_FILE: &str = "palo.store-url";

/// The store of the daemons started in `dir`: `<dir>/palo.redb` on redb; on PostgreSQL,
/// the database named in `dir`, or a new one (then named there) at the first start in `dir`.
pub fn store_in(dir: &Path) -> StoreLocation {
    match backend() {
        Backend::Redb => StoreLocation::File(dir.join("palo.redb")),
        Backend::Postgres => {
            let file = dir.join(STORE_URL_FILE);
            let url = std::fs::read_to_string(&file).unwrap_or_else(|_| {
                let url = pg_database();
                std::fs::write(&file, &url).expect("write the store URL");
                url
            });
            StoreLocation::Postgres(url)
        }
    }
}

/// A running daemon process.
pub struct Daemon {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    /// The store it was started on.
    pub store: StoreLocation,
    _tempdir: Option<tempfile::TempDir>,
    pub log: Arc<Mutex<Vec<String>>>,
    client: palo_webhooks::delivery::HttpsClient,
}

/// Starts `palo-webhooks serve` with a fresh temp db and the given extra flags.
pub fn start(extra: &[&str]) -> Daemon {
    let tempdir = tempfile::tempdir().expect("tempdir");
    let daemon = start_in(tempdir.path(), extra);
    owning(daemon, tempdir)
}

/// `daemon`, made the owner of its temp dir and store: both go when it is dropped (on
/// PostgreSQL, the database is dropped after the daemon is killed).
fn owning(mut daemon: Daemon, tempdir: tempfile::TempDir) -> Daemon {
    daemon._tempdir = Some(tempdir);
    daemon
}

/// Starts the daemon on the db in `dir` (kept by the caller), e.g. to restart after a crash.
pub fn start_in(dir: &Path, extra: &[&str]) -> Daemon {
    launch(dir, extra, None, true)
}

/// [`start_in`] with extra environment variables (`LD_PRELOAD` of libfaketime, say). Used
/// by the `engine` test binary, which shares this module.
#[allow(dead_code)]
pub fn start_in_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
    launch_with_env(dir, extra, None, true, env)
}

/// Starts the daemon with a fresh temp db and the default outbound address policy: unlike
/// the other starters, loopback receivers are NOT allowed (`--allow-network 127.0.0.0/8`).
pub fn start_strict(extra: &[&str]) -> Daemon {
    let tempdir = tempfile::tempdir().expect("tempdir");
    let daemon = launch(tempdir.path(), extra, None, false);
    owning(daemon, tempdir)
}

/// Starts the daemon with a fresh temp db whose process may not write files larger than
/// `limit_kib` KiB (RLIMIT_FSIZE; the daemon handles SIGXFSZ itself, so writes fail with
/// EFBIG): a full disk, for one process.
pub fn start_with_file_limit(limit_kib: u64, extra: &[&str]) -> Daemon {
    let tempdir = tempfile::tempdir().expect("tempdir");
    let daemon = launch(tempdir.path(), extra, Some(limit_kib), true);
    owning(daemon, tempdir)
}

/// Starts the daemon; `allow_loopback` opens 127.0.0.0/8 to deliveries, since the tests'
/// receivers listen there (the quick start does the same).
fn launch(dir: &Path, extra: &[&str], file_limit_kib: Option<u64>, allow_loopback: bool) -> Daemon {
    launch_with_env(dir, extra, file_limit_kib, allow_loopback, &[])
}

fn launch_with_env(
    dir: &Path,
    extra: &[&str],
    file_limit_kib: Option<u64>,
    allow_loopback: bool,
    env: &[(&str, &str)],
) -> Daemon {
    let store = store_in(dir);
    let binary = env!("CARGO_BIN_EXE_palo-webhooks");
    let mut args = vec!["serve".to_owned()];
    args.extend(store.args());
    if let StoreLocation::Postgres(_) = store {
        // With --store, --db's directory keeps the daemon's side files (its cluster node id).
        let side = dir.join("palo.redb");
        args.extend(["--db".to_owned(), side.to_str().unwrap().to_owned()]);
    }
    args.extend(["--listen".to_owned(), "127.0.0.1:0".to_owned()]);
    // Debug logs unless the test sets the level itself (`--log`, or a config file's `log`
    // with `--config`, which a flag would override).
    if !extra.iter().any(|a| *a == "--log" || *a == "--config") {
        args.extend(["--log".to_owned(), "debug".to_owned()]);
    }
    if allow_loopback {
        args.extend(["--allow-network".to_owned(), "127.0.0.0/8".to_owned()]);
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    let mut command = match file_limit_kib {
        None => Command::new(binary),
        Some(kib) => {
            // `ulimit -f` counts 512-byte blocks in POSIX sh. Only the soft limit is set, so
            // a test can lift it again (prlimit) without privileges: space "returns".
            let mut sh = Command::new("sh");
            sh.args([
                "-c",
                "ulimit -S -f \"$0\" && exec \"$@\"",
                &(kib * 2).to_string(),
                binary,
            ]);
            sh
        }
    };
    let mut child = command
        .args(&args)
        .env("PALO_WEBHOOKS_ADMIN_TOKEN", ADMIN_TOKEN)
        // Load tests would hit the default per-key limit; the limit's own test sets a flag.
        .env("PALO_WEBHOOKS_RATE_LIMIT", "0")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn palo-webhooks");
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(rest.trim().to_owned());
                }
            }
            sink.lock().unwrap().push(line);
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("daemon did not start; log: {:?}", log.lock().unwrap()));
    Daemon {
        child: Some(child),
        addr: addr.parse().expect("listen address"),
        dir: dir.to_owned(),
        store,
        _tempdir: None,
        log,
        client: palo_webhooks::delivery::build_client(Duration::from_secs(5)),
    }
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, then wait for exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take().unwrap();
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident memory of the daemon in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// A raw request: returns the status and the JSON body (Null when empty).
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let (status, bytes) = self
            .raw_bytes(method, path, token, content_type, body)
            .await;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| panic!("not JSON: {:?}", String::from_utf8_lossy(&bytes)))
        };
        (status, value)
    }

    /// A raw request: returns the status and the body bytes.
    pub async fn raw_bytes(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (u16, Bytes) {
        let mut headers = Vec::new();
        if let Some(token) = token {
            headers.push(("authorization", format!("Bearer {token}")));
        }
        if let Some(ct) = content_type {
            headers.push(("content-type", ct.to_owned()));
        }
        self.send(method, path, &headers, body).await
    }

    /// A request with a literal `Authorization` header value and no body.
    pub async fn raw_with_header(
        &self,
        method: &str,
        path: &str,
        authorization: &str,
    ) -> (u16, Bytes) {
        self.send(
            method,
            path,
            &[("authorization", authorization.to_owned())],
            Vec::new(),
        )
        .await
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> (u16, Bytes) {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.addr, path));
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = self
            .client
            .request(request.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .unwrap();
        let status = response.status().as_u16();
        (
            status,
            response.into_body().collect().await.unwrap().to_bytes(),
        )
    }

    /// A bodiless request with the given token: status, headers, body text.
    pub async fn request_with_headers(
        &self,
        method: &str,
        path: &str,
        token: &str,
    ) -> (u16, HeaderMap, String) {
        self.request_full(
            method,
            path,
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await
    }

    /// A bodiless request with these header fields: status, headers, body text.
    pub async fn request_full(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, HeaderMap, String) {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.addr, path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::new())).unwrap();
        let response = self.client.request(request).await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    /// A JSON request with the given token.
    pub async fn call_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        self.raw(method, path, Some(token), Some("application/json"), bytes)
            .await
    }

    /// A JSON request with the admin token.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_as(ADMIN_TOKEN, method, path, body).await
    }

    /// Creates a webhook for `org` at `url` subscribed to `events`; returns its id.
    pub async fn create_webhook(&self, org: &str, url: &str, events: &[&str]) -> String {
        let (status, body) = self
            .call(
                "POST",
                "/api/webhooks",
                Some(serde_json::json!({"url": url, "events": events, "secret": SECRET, "organization_id": org})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    /// Creates an organization API key; returns the key (shown once).
    pub async fn create_key(&self, org: &str) -> String {
        let (status, body) = self
            .call(
                "POST",
                "/api/keys",
                Some(serde_json::json!({"organization_id": org, "description": "test"})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["key"].as_str().unwrap().to_owned()
    }

    /// The id of `webhook`'s only delivery, once it exists.
    pub async fn only_delivery(&self, webhook: &str) -> String {
        let body = self
            .wait_until(
                &format!("/api/webhooks/{webhook}/deliveries"),
                Duration::from_secs(10),
                |b| b["data"].as_array().is_some_and(|d| d.len() == 1),
            )
            .await;
        body["data"][0]["id"].as_str().unwrap().to_owned()
    }

    /// Creates a webhook at `url` for the event's organization, ingests `event` (202), and
    /// returns the one delivery (with its attempts) once its first attempt is logged.
    pub async fn after_first_attempt(&self, url: &str, event: Value) -> Value {
        let org = event["organization_id"].as_str().unwrap().to_owned();
        let webhook = self.create_webhook(&org, url, &["*"]).await;
        let (status, body) = self.call("POST", "/api/events", Some(event)).await;
        assert_eq!(status, 202, "{body}");
        let id = self.only_delivery(&webhook).await;
        self.wait_until(
            &format!("/api/deliveries/{id}"),
            Duration::from_secs(15),
            |b| b["attempt_count"] == 1,
        )
        .await
    }

    /// The newest delivery of `webhook` with its attempts, once its first attempt is logged
    /// (within 10 s).
    pub async fn first_attempt_of(&self, webhook: &str) -> Value {
        let page = self
            .wait_until(
                &format!("/api/webhooks/{webhook}/deliveries"),
                Duration::from_secs(10),
                |b| b["data"][0]["attempt_count"] == 1,
            )
            .await;
        let delivery = page["data"][0]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        self.call("GET", &format!("/api/deliveries/{delivery}"), None)
            .await
            .1
    }

    /// Polls `GET path` until `done(body)` or the timeout; returns the last body.
    pub async fn wait_until(
        &self,
        path: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (_, body) = self.call("GET", path, None).await;
            if done(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting on {path}: last {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Its temp dir goes with it (a field); so does its database, which nothing could
        // reach again without the URL in that dir. Best effort: a database left behind
        // goes with the test cluster.
        if let (Some(_), StoreLocation::Postgres(url)) = (&self._tempdir, &self.store) {
            let _ = pg_drop_database(url);
        }
    }
}

/// How the receiver answers.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// This status, body "ok".
    Status(u16),
    /// These statuses in order, then the last one forever.
    Sequence(Vec<u16>),
    /// This status with this body.
    Reply(u16, &'static str),
    /// Never answer.
    Hang,
    /// 200 after this many ms (an attempt in flight for that long; the cluster test).
    #[allow(dead_code)]
    Slow(u64),
    /// 302 to /moved.
    Redirect,
    /// 200 with an endless (1 GiB) streamed body.
    Endless,
    /// 500 for about `percent`% of attempts 1 and 2 (decided by a hash of the delivery id
    /// and attempt number, so the same attempt always gets the same answer), else 200: every
    /// delivery succeeds by its third attempt.
    Flaky(u64),
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

struct ReceiverState {
    behaviour: Mutex<Behaviour>,
    served: Mutex<usize>,
    requests: Mutex<Vec<Received>>,
    arrived: Notify,
}

/// Whether [`Behaviour::Flaky`] answers 500 to the request with these headers.
pub fn flaky_fails(headers: &HeaderMap, percent: u64) -> bool {
    let attempt: u32 = headers
        .get("x-palo-attempt")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let delivery = headers
        .get("x-palo-delivery")
        .map(|v| v.as_bytes().to_vec())
        .unwrap_or_default();
    // FNV-1a over (delivery id, attempt).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in delivery.iter().chain(attempt.to_le_bytes().iter()) {
        hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
    }
    attempt < 3 && hash % 100 < percent
}

/// Runs `palo-webhooks check` on the store of the daemons started in `dir` (`--db
/// <dir>/palo.redb`, or `--store <url>` on PostgreSQL); returns (exit success, stdout +
/// stderr).
pub fn check(dir: &Path) -> (bool, String) {
    let store = match backend() {
        Backend::Redb => store_in(dir),
        Backend::Postgres => {
            let url = std::fs::read_to_string(dir.join(STORE_URL_FILE))
                .unwrap_or_else(|_| panic!("no daemon was started in {}", dir.display()));
            StoreLocation::Postgres(url)
        }
    };
    let output = Command::new(env!("CARGO_BIN_EXE_palo-webhooks"))
        .arg("check")
        .args(store.args())
        .output()
        .expect("run palo-webhooks check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// A real HTTP/1.1 receiver on 127.0.0.1.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    state: Arc<ReceiverState>,
}

/// 1 GiB in 64 KiB chunks.
struct EndlessBody {
    remaining: u64,
}

impl Body for EndlessBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(64 * 1024);
        self.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; n as usize])))))
    }
}

type AnyBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn never(e: Infallible) -> std::io::Error {
    match e {}
}

impl Receiver {
    pub async fn start(behaviour: Behaviour) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ReceiverState {
            behaviour: Mutex::new(behaviour),
            served: Mutex::new(0),
            requests: Mutex::new(Vec::new()),
            arrived: Notify::new(),
        });
        let shared = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(Arc::clone(&state), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver {
            url: format!("http://{addr}/hook"),
            state,
        }
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.state.behaviour.lock().unwrap() = behaviour;
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived, or panics after `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.state.arrived.notified();
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "receiver got {} of {n} requests in {timeout:?}",
                got.len()
            );
            let _ = tokio::time::timeout(left, notified).await;
        }
    }
}

async fn handle(
    state: Arc<ReceiverState>,
    req: Request<Incoming>,
) -> Result<Response<AnyBody>, Infallible> {
    let path = req.uri().path().to_owned();
    let headers = req.headers().clone();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    state.requests.lock().unwrap().push(Received {
        path,
        headers: headers.clone(),
        body,
        at: Instant::now(),
    });
    state.arrived.notify_waiters();
    let behaviour = state.behaviour.lock().unwrap().clone();
    let full = |status: u16, text: &'static str| {
        Response::builder()
            .status(status)
            .body(Full::new(Bytes::from(text)).map_err(never).boxed())
            .unwrap()
    };
    Ok(match behaviour {
        Behaviour::Status(code) => full(code, "ok"),
        Behaviour::Reply(code, text) => full(code, text),
        Behaviour::Sequence(codes) => {
            let mut served = state.served.lock().unwrap();
            let code = codes[(*served).min(codes.len() - 1)];
            *served += 1;
            full(code, if code < 300 { "ok" } else { "receiver error" })
        }
        Behaviour::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            full(200, "late")
        }
        Behaviour::Slow(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            full(200, "ok")
        }
        Behaviour::Redirect => Response::builder()
            .status(302)
            .header("location", "/moved")
            .body(Full::new(Bytes::new()).map_err(never).boxed())
            .unwrap(),
        Behaviour::Flaky(percent) => {
            if flaky_fails(&headers, percent) {
                full(500, "flaky")
            } else {
                full(200, "ok")
            }
        }
        Behaviour::Endless => Response::builder()
            .status(200)
            .body(EndlessBody { remaining: 1 << 30 }.map_err(never).boxed())
            .unwrap(),
    })
}

fn python_block(spec: &str) -> String {
    let start = spec.find("```python\n").expect("spec has a python block") + "```python\n".len();
    let end = start + spec[start..].find("```").unwrap();
    spec[start..end].to_owned()
}

/// The spec's Python `verify_signature`, taken from the spec's copy in docs/. When the
/// product's master copy (../shared/spec beside the repository) is reachable, the copy in
/// docs/ must hold the same function, so a spec change cannot go unnoticed.
pub fn spec_verify_signature_code() -> String {
    let code = python_block(include_str!("../../docs/webhooks-spec.fr.md"));
    assert!(
        include_str!("../../examples/receiver.py").contains(&code[code.find("def ").unwrap()..]),
        "examples/receiver.py must carry the spec's verify_signature unchanged"
    );
    let master = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/spec/webhooks-spec.fr.md");
    if let Ok(text) = std::fs::read_to_string(master) {
        assert_eq!(
            python_block(&text),
            code,
            "docs/webhooks-spec.fr.md is behind the product spec"
        );
    }
    code
}

/// Runs the spec's `verify_signature` in python3 on each (body, signature) with `secret`.
pub fn python_verifies(requests: &[Received], secret: &str) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let mut cases = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        let path = dir.path().join(format!("body{i}"));
        std::fs::write(&path, &r.body).unwrap();
        cases.push(serde_json::json!([
            path.to_str().unwrap(),
            r.header("x-palo-signature")
        ]));
    }
    let script = format!(
        "{}\nimport json, sys\ncases = json.loads(sys.argv[1])\nsecret = sys.argv[2]\nok = all(verify_signature(open(p, 'rb').read(), s, secret) for p, s in cases)\nprint('VERIFIED' if ok else 'REJECTED')\nsys.exit(0 if ok else 1)\n",
        spec_verify_signature_code()
    );
    let output = Command::new("python3")
        .args([
            "-c",
            &script,
            &serde_json::to_string(&cases).unwrap(),
            secret,
        ])
        .output()
        .expect("python3 must be installed");
    String::from_utf8_lossy(&output.stdout).contains("VERIFIED") && output.status.success()
}

/// Verifies each request's Standard Webhooks headers with the reference Python library
/// (PyPI `standardwebhooks`, installed by `.ci/run`), keyed with `whsec_` + base64 of the
/// secret's UTF-8 bytes. Returns (every request verified, the library's output).
pub fn python_standard_verifies(requests: &[Received], secret: &str) -> (bool, String) {
    let script = "import base64, json, sys
try:
    from standardwebhooks.webhooks import Webhook
except ImportError:
    print('MISSING: pip install standardwebhooks'); sys.exit(2)
cases = json.loads(sys.argv[1])
wh = Webhook('whsec_' + base64.b64encode(sys.argv[2].encode()).decode())
for c in cases:
    wh.verify(open(c['body'], 'rb').read(), c['headers'])
print('VERIFIED')
";
    python_over_requests(requests, script, secret)
}

/// Runs a python3 `script` that checks requests: `sys.argv[1]` is a JSON list of
/// `{"body": <file with the raw body>, "headers": {"webhook-id", "webhook-timestamp",
/// "webhook-signature"}}`, `sys.argv[2]` is `key`; it prints `VERIFIED` when all pass.
/// Returns (it did, its output).
pub fn python_over_requests(requests: &[Received], script: &str, key: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cases = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        let path = dir.path().join(format!("body{i}"));
        std::fs::write(&path, &r.body).unwrap();
        cases.push(serde_json::json!({
            "body": path.to_str().unwrap(),
            "headers": {
                "webhook-id": r.header("webhook-id"),
                "webhook-timestamp": r.header("webhook-timestamp"),
                "webhook-signature": r.header("webhook-signature"),
            }
        }));
    }
    let output = Command::new("python3")
        .args(["-c", script, &serde_json::to_string(&cases).unwrap(), key])
        .output()
        .expect("python3 must be installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (text.contains("VERIFIED") && output.status.success(), text)
}

/// A receiver that answers every connection with `reply` written verbatim, then closes it:
/// for responses no well-behaved HTTP server would send. Returns its URL.
pub async fn raw_receiver(reply: &'static [u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(reply).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    url
}

/// Runs the CLI against `daemon` with `token`: (exit code, stdout, stderr).
pub fn cli_as(daemon: &Daemon, token: &str, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_palo-webhooks"))
        .args(args)
        .env("PALO_WEBHOOKS_URL", format!("http://{}", daemon.addr))
        .env("PALO_WEBHOOKS_TOKEN", token)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Ends a child process when the test ends, even by a failed assertion.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
