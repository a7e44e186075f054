//! The developer tools of issue 17 against real deliveries: `listen` (a local receiver that
//! checks signatures, deduplicates, and fails on purpose), `verify` (a captured request's
//! signatures, and why one does not verify), and the completions and man page generated
//! from the command line's definition.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::KillOnDrop;
use crate::support::{self, Behaviour, Receiver};

const BIN: &str = env!("CARGO_BIN_EXE_palo-webhooks");

/// Starts `palo-webhooks listen` with `args`; returns the process, its URL and its stdout
/// lines.
fn listen(args: &[&str]) -> (KillOnDrop, String, std::sync::mpsc::Receiver<String>) {
    let mut child = KillOnDrop(
        Command::new(BIN)
            .arg("listen")
            .args(["--port", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("listen starts");
    let url = first
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("{first}"))
        .to_owned();
    (child, url, rx)
}

/// The next stdout line of `listen` that is not an indented detail.
fn next_line(rx: &std::sync::mpsc::Receiver<String>) -> String {
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("a line from listen");
        if !line.starts_with(' ') && !line.starts_with("point a webhook") {
            return line;
        }
    }
}

fn ticket(id: &str) -> Value {
    json!({"event_id": id, "event_type": "ticket.created", "organization_id": "org_a",
        "data": {"ticket_id": "TKT-9", "title": "Imprimante", "priority": "p2", "project_id": "p", "created_by": "u"}})
}

/// POSTs `body` with `headers` to `url` (raw HTTP/1.1); returns the status.
async fn post(url: &str, headers: &[(&str, String)], body: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer.split(' ').nth(1).unwrap().parse().unwrap()
}

/// Both signatures of `body` under `secret` at `timestamp`, as headers.
fn signed_headers(
    secret: &str,
    id: &str,
    timestamp: u64,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    vec![
        (
            "X-Palo-Signature",
            palo_webhooks::signature::sign(secret, body),
        ),
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", timestamp.to_string()),
        (
            "webhook-signature",
            palo_webhooks::signature::standard_signature(secret.as_bytes(), id, timestamp, body),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn listen_fails_on_purpose_then_verifies_deduplicates_and_rejects_forgeries() {
    let daemon = support::start(&["--allow-http", "--retry-schedule", "1s"]);
    let (_listen, url, rx) = listen(&[
        "--secret",
        support::SECRET,
        "--fail-first",
        "1",
        "--status",
        "503",
    ]);
    assert!(url.ends_with("/webhook-test"), "{url}");
    daemon.create_webhook("org_a", &url, &["*"]).await;
    let (status, accepted) = daemon
        .call("POST", "/api/events", Some(ticket("evt_listen")))
        .await;
    assert_eq!(status, 202);
    let delivery = accepted["delivery_ids"][0].as_str().unwrap().to_owned();

    let line = next_line(&rx);
    assert!(
        line.contains("failing ticket.created evt_listen")
            && line.contains(&format!("delivery={delivery} attempt=1"))
            && line.contains("-> 503"),
        "{line}"
    );
    // The retry a second later verifies; both signatures and the timestamp check out.
    let line = next_line(&rx);
    assert!(
        line.contains("verified ticket.created evt_listen")
            && line.contains("attempt=2")
            && line.contains("X-Palo-Signature ok, v1 ok, timestamp ok"),
        "{line}"
    );
    daemon
        .wait_until(
            &format!("/api/deliveries/{delivery}"),
            Duration::from_secs(10),
            |d| d["status"] == "succeeded",
        )
        .await;
    let (status, _) = daemon
        .call(
            "POST",
            &format!("/api/deliveries/{delivery}/redeliver"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let line = next_line(&rx);
    assert!(
        line.contains("duplicate ticket.created evt_listen") && line.contains("attempt=3"),
        "{line}"
    );

    // Forgeries, straight to the listener: a changed body, a stale timestamp, another secret.
    let now = palo_webhooks::clock::now_ms() / 1000;
    let body = serde_json::to_vec(
        &json!({"event_id": "evt_forged", "event_type": "ticket.created", "data": {}}),
    )
    .unwrap();
    let mut tampered = body.clone();
    tampered[2] ^= 1;
    assert_eq!(
        post(
            &url,
            &signed_headers(support::SECRET, "dlv_x", now, &body),
            &tampered
        )
        .await,
        401
    );
    let line = next_line(&rx);
    assert!(
        line.contains("rejected") && line.contains("wrong secret or body changed"),
        "{line}"
    );
    assert_eq!(
        post(
            &url,
            &signed_headers(support::SECRET, "dlv_x", now - 3600, &body),
            &body
        )
        .await,
        401
    );
    let line = next_line(&rx);
    assert!(
        line.contains("rejected") && line.contains("stale timestamp"),
        "{line}"
    );
    let other = "another-secret-of-at-least-32-characters";
    assert_eq!(
        post(&url, &signed_headers(other, "dlv_x", now, &body), &body).await,
        401
    );
    assert!(next_line(&rx).contains("rejected"));
}

#[tokio::test(flavor = "multi_thread")]
async fn listen_accepts_the_old_secret_during_a_rotation() {
    let old = "the-old-secret-of-at-least-32-characters";
    let new = "the-new-secret-of-at-least-32-characters";
    let (_listen, url, rx) = listen(&["--secret", &format!("{new},{old}")]);
    let now = palo_webhooks::clock::now_ms() / 1000;
    let body = br#"{"event_id":"evt_rot","event_type":"ticket.created","data":{}}"#;
    assert_eq!(
        post(&url, &signed_headers(old, "dlv_r", now, body), body).await,
        200
    );
    assert!(next_line(&rx).contains("verified ticket.created evt_rot"));
    // A receiver given only the old secret, as the daemon signs after a rotation
    // (X-Palo-Signature with the new secret, webhook-signature with both): 401, like the
    // spec's verify_signature.
    let (_old_only, url, rx) = listen(&["--secret", old]);
    let mut headers = signed_headers(new, "dlv_r2", now, body);
    let old_entry =
        palo_webhooks::signature::standard_signature(old.as_bytes(), "dlv_r2", now, body);
    headers[3].1 = format!("{} {old_entry}", headers[3].1);
    assert_eq!(post(&url, &headers, body).await, 401);
    let line = next_line(&rx);
    assert!(
        line.contains("rejected") && line.contains("wrong secret"),
        "{line}"
    );
}

/// Captures one real delivery: its headers as `Name: value` lines, and its body.
async fn captured_delivery(
    daemon: &support::Daemon,
    receiver: &Receiver,
    event: &str,
) -> (String, Vec<u8>) {
    let (status, _) = daemon
        .call("POST", "/api/events", Some(ticket(event)))
        .await;
    assert_eq!(status, 202);
    let requests = receiver.wait_for(1, Duration::from_secs(10)).await;
    let request = requests
        .iter()
        .find(|r| r.json()["event_id"] == event)
        .unwrap();
    let headers: String = request
        .headers
        .iter()
        .map(|(n, v)| format!("{n}: {}\n", v.to_str().unwrap()))
        .collect();
    (headers, request.body.to_vec())
}

fn verify(dir: &std::path::Path, headers: &str, body: &[u8], extra: &[&str]) -> (i32, String) {
    std::fs::write(dir.join("headers.txt"), headers).unwrap();
    std::fs::write(dir.join("body.json"), body).unwrap();
    let output = Command::new(BIN)
        .arg("verify")
        .arg("--headers")
        .arg(dir.join("headers.txt"))
        .arg("--body")
        .arg(dir.join("body.json"))
        .args(extra)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_explains_good_tampered_stale_and_rotated_requests() {
    let daemon = support::start(&["--allow-http", "--retry-schedule", "1h"]);
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let webhook = daemon.create_webhook("org_a", &receiver.url, &["*"]).await;
    let dir = tempfile::tempdir().unwrap();
    let (headers, body) = captured_delivery(&daemon, &receiver, "evt_v1").await;

    let (code, out) = verify(dir.path(), &headers, &body, &["--secret", support::SECRET]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("verified") && !out.contains("NOT"), "{out}");

    // A capture that added a newline, and one that re-formatted the JSON: "body changed".
    let mut newline = body.clone();
    newline.push(b'\n');
    let (code, out) = verify(
        dir.path(),
        &headers,
        &newline,
        &["--secret", support::SECRET],
    );
    assert_eq!(code, 1);
    assert!(
        out.contains("NOT VERIFIED: body changed") && out.contains("trailing newline"),
        "{out}"
    );
    let pretty =
        serde_json::to_vec_pretty(&serde_json::from_slice::<Value>(&body).unwrap()).unwrap();
    let (code, out) = verify(
        dir.path(),
        &headers,
        &pretty,
        &["--secret", support::SECRET],
    );
    assert_eq!(code, 1);
    assert!(out.contains("re-formatted"), "{out}");
    // An edited value: nothing tells a changed body from a wrong secret.
    let edited = String::from_utf8(body.clone())
        .unwrap()
        .replace("Imprimante", "Imprimantx");
    let (code, out) = verify(
        dir.path(),
        &headers,
        edited.as_bytes(),
        &["--secret", support::SECRET],
    );
    assert_eq!(code, 1);
    assert!(
        out.contains("NOT VERIFIED: wrong secret or body changed"),
        "{out}"
    );

    // Stale: a capture checked an hour after it was signed (webhook-timestamp an hour old).
    let old = palo_webhooks::clock::now_ms() / 1000 - 3600;
    let stale: String = signed_headers(support::SECRET, "dlv_old", old, &body)
        .iter()
        .map(|(n, v)| format!("{n}: {v}\n"))
        .collect();
    let (code, out) = verify(dir.path(), &stale, &body, &["--secret", support::SECRET]);
    assert_eq!(code, 1);
    assert!(out.contains("NOT VERIFIED: stale timestamp"), "{out}");
    let (code, out) = verify(
        dir.path(),
        &stale,
        &body,
        &["--secret", support::SECRET, "--tolerance", "2h"],
    );
    assert_eq!(code, 0, "{out}");

    // Rotated: X-Palo-Signature uses the new secret only; webhook-signature carries both.
    let new_secret = "a-brand-new-secret-of-at-least-32-chars";
    let (status, _) = daemon
        .call(
            "POST",
            &format!("/api/webhooks/{webhook}/rotate-secret"),
            Some(json!({"secret": new_secret, "grace": "1h"})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = daemon
        .call("POST", "/api/events", Some(ticket("evt_v2")))
        .await;
    assert_eq!(status, 202);
    let requests = receiver.wait_for(2, Duration::from_secs(10)).await;
    let rotated = requests
        .iter()
        .find(|r| r.json()["event_id"] == "evt_v2")
        .unwrap();
    let headers: String = rotated
        .headers
        .iter()
        .map(|(n, v)| format!("{n}: {}\n", v.to_str().unwrap()))
        .collect();
    let (code, out) = verify(
        dir.path(),
        &headers,
        &rotated.body,
        &["--secret", support::SECRET],
    );
    // The old secret verifies webhook-signature only: a receiver checking X-Palo-Signature
    // (the spec's) refuses the request, so verify does too, and says why.
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("wrong secret: the body is intact")
            && out.contains("NOT VERIFIED: wrong secret"),
        "{out}"
    );
    let (code, out) = verify(
        dir.path(),
        &headers,
        &rotated.body,
        &["--secret", &format!("{new_secret},{}", support::SECRET)],
    );
    assert_eq!(code, 0, "both secrets, as during the grace period: {out}");
    let (code, out) = verify(
        dir.path(),
        &headers,
        &rotated.body,
        &["--secret", new_secret],
    );
    assert_eq!(code, 0, "{out}");
    // A check that cannot be made exits 2, apart from a request that does not verify.
    let output = Command::new(BIN)
        .args([
            "verify",
            "--secret",
            new_secret,
            "--body",
            "/nonexistent/body.json",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    // The same from flags alone, and as JSON for scripts.
    let signature = rotated.header("x-palo-signature");
    let output = Command::new(BIN)
        .args([
            "verify",
            "--secret",
            new_secret,
            "--signature",
            &signature,
            "--json",
            "--body",
        ])
        .arg(dir.path().join("body.json"))
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(0), "{report}");
    assert_eq!(report["verified"], true);
    assert_eq!(report["findings"][0]["result"], "ok");
}

#[test]
fn completions_and_man_pages_come_from_the_command_line() {
    for shell in ["bash", "zsh", "fish"] {
        let output = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(output.status.success());
        let script = String::from_utf8(output.stdout).unwrap();
        assert!(
            script.contains("palo-webhooks") && script.contains("rotate-secret"),
            "{shell}"
        );
    }
    let output = Command::new(BIN).arg("man").output().unwrap();
    let page = String::from_utf8(output.stdout).unwrap();
    assert!(
        page.starts_with(".ie") || page.contains(".TH palo-webhooks 1"),
        "{page}"
    );
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(BIN)
        .args(["man", "--out-dir"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    for page in [
        "palo-webhooks.1",
        "palo-webhooks-listen.1",
        "palo-webhooks-verify.1",
        "palo-webhooks-webhooks-create.1",
    ] {
        assert!(dir.path().join(page).is_file(), "{page} missing");
    }
    // Every subcommand's --help answers (a broken clap definition panics here, not in use).
    let help = Command::new(BIN).arg("--help").output().unwrap();
    let text = String::from_utf8(help.stdout).unwrap();
    for command in ["listen", "verify", "completions", "man"] {
        assert!(text.contains(command), "{text}");
    }
}
