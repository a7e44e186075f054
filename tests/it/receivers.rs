//! The example receivers, `examples/receiver.{py,js,go,rs}`: customers' servers written
//! from the spec and the README, one per language, all with the same command line and
//! output. Each gets real deliveries from the daemon (verified, then a redelivery is a
//! duplicate), then requests signed here: a genuine one, and one flaw each (a body changed
//! after signing, a stale or future timestamp, a wrong `webhook-signature`, missing
//! headers), which it must refuse with 401; and a receiver holding two secrets during a
//! rotation accepts either. A missing toolchain (node, go) skips its test, saying so.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::KillOnDrop;
use crate::support::{self, SECRET};

/// The new secret of the rotation case; `SECRET` is the old one.
const NEW_SECRET: &str = "new_secret_of_the_rotation_at_least_32_chars";

#[tokio::test(flavor = "multi_thread")]
async fn python_receiver_verifies_deliveries_and_refuses_forgeries() {
    let mut command = Command::new("python3");
    command.arg(example("receiver.py"));
    check_receiver(command).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn node_receiver_verifies_deliveries_and_refuses_forgeries() {
    if !installed("node", "--version") {
        eprintln!("skipped: node is not on PATH (.ci/run installs Debian's nodejs)");
        return;
    }
    let mut command = Command::new("node");
    command.arg(example("receiver.js"));
    check_receiver(command).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn go_receiver_verifies_deliveries_and_refuses_forgeries() {
    if !installed("go", "version") {
        eprintln!("skipped: go is not on PATH (.ci/run installs Debian's golang-go)");
        return;
    }
    // Built, then run: what `go run examples/receiver.go` does, except that a killed `go run`
    // would leave the program it compiled running. The first build takes a while (it
    // compiles net/http into Go's build cache).
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("receiver");
    let mut build = Command::new("go");
    build
        .arg("build")
        .arg("-o")
        .arg(&binary)
        .arg(example("receiver.go"));
    // Go keeps its build cache under $HOME (or XDG_CACHE_HOME); without either, here.
    if ["GOCACHE", "HOME", "XDG_CACHE_HOME"]
        .iter()
        .all(|name| std::env::var_os(name).is_none())
    {
        build.env(
            "GOCACHE",
            std::env::temp_dir().join("palo-webhooks-go-cache"),
        );
    }
    let output = build.output().expect("run go build");
    assert!(
        output.status.success(),
        "go build: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    check_receiver(Command::new(&binary)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rust_receiver_verifies_deliveries_and_refuses_forgeries() {
    // `cargo test` builds the examples beside the daemon's binary.
    let binary = Path::new(env!("CARGO_BIN_EXE_palo-webhooks"))
        .parent()
        .unwrap()
        .join("examples/receiver");
    let Ok(built) = std::fs::metadata(&binary).and_then(|m| m.modified()) else {
        eprintln!(
            "skipped: {} is missing: `cargo test` builds it (so does `cargo build --examples`), \
             `cargo test --test ...` does not",
            binary.display()
        );
        return;
    };
    let source = std::fs::metadata(example("receiver.rs"))
        .and_then(|m| m.modified())
        .unwrap();
    assert!(
        built >= source,
        "{} is older than examples/receiver.rs: `cargo build --examples` to test the current one",
        binary.display()
    );
    check_receiver(Command::new(binary)).await;
}

/// The checks every receiver passes. `command` starts it; the `--port 0 --secret ...`
/// arguments are added here.
async fn check_receiver(command: Command) {
    // Real deliveries, as in the README's quick start.
    let daemon = support::start(&["--allow-http", "--retry-schedule", "1h"]);
    let receiver = Running::start(copy(&command), SECRET);
    daemon.create_webhook("org_a", &receiver.url, &["*"]).await;
    let (status, body) = daemon
        .call("POST", "/api/events", Some(event("evt_real")))
        .await;
    assert_eq!(status, 202, "{body}");
    let line = receiver.line_starting_with("verified ticket.created evt_real delivery=dlv_");
    assert!(line.ends_with(" attempt=1"), "{line}");
    let data = receiver.next();
    assert!(data.contains("Café ☕") && data.contains("TKT-1"), "{data}");

    // The attempt is logged after the receiver answers: wait for it before redelivering.
    let page = daemon
        .wait_until("/api/events/evt_real", Duration::from_secs(10), |b| {
            b["deliveries"][0]["status"] == "succeeded"
        })
        .await;
    let delivery = page["deliveries"][0]["id"].as_str().unwrap().to_owned();
    let (status, result) = daemon
        .call(
            "POST",
            &format!("/api/deliveries/{delivery}/redeliver"),
            None,
        )
        .await;
    assert_eq!(
        (status, result["attempt"]["status_code"].as_u64()),
        (200, Some(200)),
        "{result}"
    );
    receiver.line_starting_with(&format!(
        "duplicate ticket.created evt_real delivery={delivery} attempt=2"
    ));

    // Signed here as the daemon signs (README, "Verifying signatures"), with an Ed25519
    // `v1a,` entry first, which receivers skip: accepted, so each refusal below is for its
    // one flaw.
    let body = event("evt_here").to_string().into_bytes();
    let mut headers = signed(SECRET, "dlv_here_1", now(), &body);
    set(&mut headers, "webhook-signature", |v| {
        format!("v1a,AAAA {v}")
    });
    assert_eq!(post(&receiver.url, &headers, &body).await, 200);
    receiver.line_starting_with("verified ticket.created evt_here delivery=dlv_here_1 attempt=1");
    assert!(receiver.next().contains("Café ☕"));

    // One byte of the body changed after signing (priority p3 to p1).
    let mut tampered = event("evt_tampered").to_string().into_bytes();
    let headers = signed(SECRET, "dlv_here_2", now(), &tampered);
    let at = tampered.windows(4).position(|w| w == b"\"p3\"").unwrap();
    tampered[at + 2] = b'1';
    receiver.refuses(&headers, &tampered, "bad signature").await;

    // Both signatures right, over a timestamp 10 minutes old (a replay), or 10 minutes ahead.
    let body = event("evt_stale").to_string().into_bytes();
    let headers = signed(SECRET, "dlv_here_3", now() - 600, &body);
    receiver.refuses(&headers, &body, "stale timestamp").await;
    let headers = signed(SECRET, "dlv_here_4", now() + 600, &body);
    receiver.refuses(&headers, &body, "stale timestamp").await;

    // X-Palo-Signature right, `webhook-signature` over another message id.
    let mut headers = signed(SECRET, "dlv_here_5", now(), &body);
    set(&mut headers, "webhook-id", |_| "dlv_other".to_owned());
    receiver
        .refuses(&headers, &body, "bad webhook-signature")
        .await;

    // No Standard Webhooks signature at all.
    let mut headers = signed(SECRET, "dlv_here_6", now(), &body);
    headers.retain(|(name, _)| *name != "webhook-signature");
    receiver.refuses(&headers, &body, "missing headers").await;

    // During a rotation (`--secret NEW,OLD`), either secret verifies, a third one does not.
    let rotating = Running::start(copy(&command), &format!("{NEW_SECRET},{SECRET}"));
    for (secret, id) in [(SECRET, "evt_old"), (NEW_SECRET, "evt_new")] {
        let body = event(id).to_string().into_bytes();
        let headers = signed(secret, &format!("dlv_{id}"), now(), &body);
        assert_eq!(post(&rotating.url, &headers, &body).await, 200);
        rotating.line_starting_with(&format!("verified ticket.created {id} delivery=dlv_{id}"));
        assert!(rotating.next().contains("Café ☕"));
    }
    let body = event("evt_other").to_string().into_bytes();
    let headers = signed(
        "a_third_secret_that_is_at_least_32_chars",
        "dlv_x",
        now(),
        &body,
    );
    rotating.refuses(&headers, &body, "bad signature").await;
}

/// A `ticket.created` event of org_a, as sent to `POST /api/events` and delivered.
fn event(id: &str) -> Value {
    json!({"event_id": id, "event_type": "ticket.created", "organization_id": "org_a",
        "data": {"ticket_id": "TKT-1", "title": "Café ☕", "priority": "p3", "project_id": "p", "created_by": "u"}})
}

/// The headers of an attempt of delivery `id` carrying `body`, signed with `secret` at Unix
/// time `timestamp`: `X-Palo-Signature` (hex HMAC-SHA256 of the body) and the Standard
/// Webhooks headers (base64 HMAC-SHA256 of "<id>.<timestamp>.<body>"), both keyed with the
/// secret's UTF-8 bytes.
fn signed(secret: &str, id: &str, timestamp: u64, body: &[u8]) -> Vec<(&'static str, String)> {
    let mac = || Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    let palo = hex::encode(mac().chain_update(body).finalize().into_bytes());
    let standard = base64::engine::general_purpose::STANDARD.encode(
        mac()
            .chain_update(format!("{id}.{timestamp}."))
            .chain_update(body)
            .finalize()
            .into_bytes(),
    );
    vec![
        ("x-palo-signature", format!("sha256={palo}")),
        ("x-palo-event", "ticket.created".to_owned()),
        ("x-palo-delivery", id.to_owned()),
        ("x-palo-attempt", "1".to_owned()),
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", format!("v1,{standard}")),
    ]
}

/// Replaces the value of header `name` in `headers` by `change(value)`.
fn set(headers: &mut [(&str, String)], name: &str, change: impl Fn(&str) -> String) {
    let (_, value) = headers.iter_mut().find(|(n, _)| *n == name).unwrap();
    *value = change(value);
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// POSTs `body` with `headers` to `url` on a connection of its own (`Connection: close`),
/// written by hand so that nothing is added or normalized; returns the response's status.
async fn post(url: &str, headers: &[(&str, String)], body: &[u8]) -> u16 {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut head = format!(
        "POST /{path} HTTP/1.1\r\nhost: {authority}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let exchange = async {
        let mut stream = TcpStream::connect(authority).await?;
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .expect("an answer within 30 s")
        .expect("an HTTP exchange");
    let text = String::from_utf8_lossy(&response);
    text.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"))
}

/// A receiver process: its URL and what it prints, line by line.
struct Running {
    url: String,
    lines: mpsc::Receiver<String>,
    /// Its command line, for messages.
    name: String,
    _child: KillOnDrop,
}

impl Running {
    /// Starts `command --port 0 --secret <secrets>` and reads its URL from its first line.
    fn start(mut command: Command, secrets: &str) -> Running {
        let name = format!("{command:?}");
        let mut child = command
            .args(["--port", "0", "--secret", secrets])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut running = Running {
            url: String::new(),
            lines,
            name,
            _child: KillOnDrop(child),
        };
        let first = running.next_within(Duration::from_secs(60));
        running.url = first
            .strip_prefix("receiver listening on ")
            .unwrap_or_else(|| panic!("{}: startup line {first:?}", running.name))
            .to_owned();
        assert!(
            running.url.starts_with("http://127.0.0.1:") && running.url.ends_with("/webhook"),
            "{first}"
        );
        running
    }

    fn next_within(&self, timeout: Duration) -> String {
        self.lines.recv_timeout(timeout).unwrap_or_else(|e| {
            panic!(
                "{}: no line within {timeout:?} ({e}: it may have exited)",
                self.name
            )
        })
    }

    /// The next line it prints (within 30 s).
    fn next(&self) -> String {
        self.next_within(Duration::from_secs(30))
    }

    /// The next line, which must start with `prefix`.
    fn line_starting_with(&self, prefix: &str) -> String {
        let line = self.next();
        assert!(
            line.starts_with(prefix),
            "{}: expected {prefix:?}, got {line:?}",
            self.name
        );
        line
    }

    /// Asserts that it answers 401 to this request, and prints `rejected: <reason>`.
    async fn refuses(&self, headers: &[(&str, String)], body: &[u8], reason: &str) {
        assert_eq!(post(&self.url, headers, body).await, 401, "{reason}");
        assert_eq!(self.next(), format!("rejected: {reason}"), "{}", self.name);
    }
}

/// A new command like `template`: the same program, arguments, environment and directory.
fn copy(template: &Command) -> Command {
    let mut command = Command::new(template.get_program());
    command.args(template.get_args());
    for (key, value) in template.get_envs() {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    if let Some(dir) = template.get_current_dir() {
        command.current_dir(dir);
    }
    command
}

fn example(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(file)
}

/// Whether `program` starts (`program <arg>` prints its version).
fn installed(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}
