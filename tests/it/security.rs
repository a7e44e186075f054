//! Security (issue 5): the outbound address policy (SSRF) on real sockets.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{self, Behaviour, Daemon, Receiver, SECRET};

fn event(id: &str) -> Value {
    json!({"event_id": id, "event_type": "ticket.created", "organization_id": "org_s",
           "data": {"ticket_id": id, "title": "ssrf", "priority": "p2", "project_id": "prj", "created_by": "u"}})
}

async fn create(daemon: &Daemon, url: &str) -> (u16, Value) {
    daemon
        .call(
            "POST",
            "/api/webhooks",
            Some(
                json!({"url": url, "events": ["*"], "secret": SECRET, "organization_id": "org_s"}),
            ),
        )
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn ip_literals_in_forbidden_ranges_are_refused_at_creation() {
    let daemon = support::start_strict(&["--allow-http"]);
    for url in [
        "http://127.0.0.1:9/hook",
        "http://10.0.0.1/hook",
        "http://172.16.5.4/hook",
        "http://192.168.1.10/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://100.64.0.1/hook",
        "http://0.0.0.0/hook",
        "http://224.0.0.1/hook",
        "http://255.255.255.255/hook",
        "http://[::1]:9/hook",
        "http://[::ffff:127.0.0.1]:9/hook",
        "http://[::ffff:169.254.169.254]/hook",
        "http://[fd00::1]/hook",
        "http://[fe80::1]/hook",
    ] {
        let (status, body) = create(&daemon, url).await;
        assert_eq!(status, 422, "{url}: {body}");
        assert_eq!(body["error"]["field"], "url", "{url}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("--allow-network"), "{url}: {message}");
    }
    // A global unicast literal is accepted (nothing is connected at creation).
    let (status, body) = create(&daemon, "https://93.184.216.34/hook").await;
    assert_eq!(status, 201, "{body}");
    let (_, list) = daemon.call("GET", "/api/webhooks?limit=100", None).await;
    assert_eq!(
        list["data"].as_array().unwrap().len(),
        1,
        "refusals wrote nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_name_resolving_to_loopback_is_refused_at_connect_and_nothing_connects() {
    let daemon = support::start_strict(&["--allow-http", "--retry-schedule", "1h"]);
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    // `localhost` is a name (checked at every attempt, after resolution), not a literal.
    let url = receiver.url.replace("127.0.0.1", "localhost");
    let delivery = daemon.after_first_attempt(&url, event("evt_ssrf_1")).await;
    assert_eq!(
        delivery["attempts"][0]["error"], "blocked_address",
        "{delivery}"
    );
    assert_eq!(
        delivery["status"], "retrying",
        "retried on the schedule, not sooner"
    );
    assert!(
        receiver.received().is_empty(),
        "nothing may connect to a forbidden address"
    );
    let log = daemon.log_text();
    assert!(
        log.contains("refused by the outbound address policy") && log.contains("loopback"),
        "the log says what was refused and why"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn allow_network_opens_loopback_for_names_and_literals() {
    let daemon = support::start(&["--allow-http"]); // adds --allow-network 127.0.0.0/8
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    for url in [
        receiver.url.clone(),
        receiver.url.replace("127.0.0.1", "localhost"),
    ] {
        let (status, body) = create(&daemon, &url).await;
        assert_eq!(status, 201, "{body}");
    }
    daemon
        .call("POST", "/api/events", Some(event("evt_open_1")))
        .await;
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2);
    // ::1 is not in 127.0.0.0/8: still refused.
    let (status, _) = create(&daemon, "http://[::1]:9/hook").await;
    assert_eq!(status, 422);
}

#[tokio::test(flavor = "multi_thread")]
async fn standard_webhooks_headers_verify_with_the_reference_python_library() {
    let daemon = support::start(&["--allow-http", "--retry-schedule", "1s"]);
    let receiver = Receiver::start(Behaviour::Sequence(vec![500, 200])).await;
    let (status, body) = create(&daemon, &receiver.url).await;
    assert_eq!(status, 201, "{body}");
    daemon
        .call("POST", "/api/events", Some(event("evt_std_1")))
        .await;
    // Two attempts of one delivery: same webhook-id, each its own timestamp and signature.
    let got = receiver.wait_for(2, Duration::from_secs(15)).await;
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
    assert_eq!(
        got[0].header("webhook-id"),
        got[0].header("x-palo-delivery")
    );
    assert!(got[0].header("webhook-signature").starts_with("v1,"));
    let (ok, output) = support::python_standard_verifies(&got, SECRET);
    assert!(ok, "standardwebhooks refused our headers: {output}");
    // A tampered body is refused by the same library (the check is real).
    let mut tampered = got[0].clone();
    tampered.body = bytes::Bytes::from_static(b"{}");
    let (ok, _) = support::python_standard_verifies(&[tampered], SECRET);
    assert!(!ok);
}

#[tokio::test(flavor = "multi_thread")]
async fn secret_rotation_signs_with_both_secrets_during_the_grace_period_only() {
    const NEW: &str = "new_secret_rotated_in_0123456789abcdef";
    const NEWER: &str = "newer_secret_rotated_again_0123456789ab";
    let daemon = support::start(&["--allow-http"]);
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let (_, body) = create(&daemon, &receiver.url).await;
    let id = body["id"].as_str().unwrap().to_owned();
    let rotate = |body: Value| {
        let path = format!("/api/webhooks/{id}/rotate-secret");
        let daemon = &daemon;
        async move { daemon.call("POST", &path, Some(body)).await }
    };
    // Refusals change nothing.
    let (status, _) = rotate(json!({"grace": "8d"})).await;
    assert_eq!(status, 422);
    let (status, _) = rotate(json!({"secret": "short"})).await;
    assert_eq!(status, 422);

    let (status, out) = rotate(json!({"secret": NEW, "grace": "1h"})).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["secret"], NEW, "the new secret is shown this once");
    assert!(out["previous_secret_expires_at"].is_string(), "{out}");
    assert!(
        out["standard_webhooks_secret"]
            .as_str()
            .unwrap()
            .starts_with("whsec_"),
        "{out}"
    );
    // A retried rotation to the same secret changes nothing: the old one keeps signing.
    let (status, again) = rotate(json!({"secret": NEW, "grace": "1h"})).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        again["previous_secret_expires_at"], out["previous_secret_expires_at"],
        "{again}"
    );
    assert_eq!(again["updated_at"], out["updated_at"], "{again}");
    // A body must be sent as JSON.
    let (status, _) = daemon
        .raw(
            "POST",
            &format!("/api/webhooks/{id}/rotate-secret"),
            Some(support::ADMIN_TOKEN),
            Some("text/plain"),
            br#"{"secret":"plain_text_secret_0123456789abcdefgh"}"#.to_vec(),
        )
        .await;
    assert_eq!(status, 415);
    let (_, shown) = daemon
        .call("GET", &format!("/api/webhooks/{id}"), None)
        .await;
    assert!(shown.get("secret").is_none(), "{shown}");
    daemon
        .call("POST", "/api/events", Some(event("evt_rot_1")))
        .await;
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    // X-Palo-Signature: the new secret only, as the spec's verify_signature expects.
    assert!(support::python_verifies(&got, NEW));
    assert!(!support::python_verifies(&got, SECRET));
    // webhook-signature: either secret verifies during the grace period.
    assert_eq!(got[0].header("webhook-signature").split(' ').count(), 2);
    for secret in [NEW, SECRET] {
        let (ok, output) = support::python_standard_verifies(&got, secret);
        assert!(ok, "{secret}: {output}");
    }

    // Rotate again with a 1 s grace; once it is over only the newest secret signs.
    let (status, _) = rotate(json!({"secret": NEWER, "grace": "1s"})).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    daemon
        .call("POST", "/api/events", Some(event("evt_rot_2")))
        .await;
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    let last = &got[1..];
    assert_eq!(last[0].header("webhook-signature").split(' ').count(), 1);
    assert!(support::python_verifies(last, NEWER));
    assert!(support::python_standard_verifies(last, NEWER).0);
    assert!(!support::python_standard_verifies(last, NEW).0);
    let (_, shown) = daemon
        .call("GET", &format!("/api/webhooks/{id}"), None)
        .await;
    assert!(shown["previous_secret_expires_at"].is_null(), "{shown}");
    // An empty body generates the secret and uses the default 24 h grace.
    let (status, out) = daemon
        .raw(
            "POST",
            &format!("/api/webhooks/{id}/rotate-secret"),
            Some(support::ADMIN_TOKEN),
            None,
            Vec::new(),
        )
        .await;
    assert_eq!(status, 200, "{out}");
    assert!(out["secret"].as_str().unwrap().starts_with("pwsec_"));
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_key_or_token_leaks_into_logs_answers_or_errors() {
    const ROTATED: &str = "rotated_secret_for_the_leak_test_0123456789";
    let daemon = support::start(&["--allow-http", "--retry-schedule", "1h"]);
    let failing = Receiver::start(Behaviour::Status(500)).await;
    let mut answers: Vec<String> = Vec::new();
    // Creation answers may show what they create: they are the only ones not searched.
    let (status, key) = daemon
        .call(
            "POST",
            "/api/keys",
            Some(json!({"organization_id": "org_s", "description": "leak"})),
        )
        .await;
    assert_eq!(status, 201);
    let api_key = key["key"].as_str().unwrap().to_owned();
    let (_, webhook) = create(&daemon, &failing.url).await;
    let id = webhook["id"].as_str().unwrap().to_owned();
    let (status, _) = daemon
        .call(
            "POST",
            &format!("/api/webhooks/{id}/rotate-secret"),
            Some(json!({"secret": ROTATED, "grace": "1h"})),
        )
        .await;
    assert_eq!(status, 200);
    let mut record = |status: u16, body: &Value| answers.push(format!("{status} {body}"));
    // Deliveries that fail, a redelivery, a test event, listings, and errors of every kind.
    let (s, b) = daemon
        .call_as(&api_key, "POST", "/api/events", Some(event("evt_leak_1")))
        .await;
    record(s, &b);
    let page = daemon
        .wait_until(
            &format!("/api/webhooks/{id}/deliveries"),
            Duration::from_secs(10),
            |b| b["data"][0]["attempt_count"] == 1,
        )
        .await;
    record(200, &page);
    let delivery = page["data"][0]["id"].as_str().unwrap().to_owned();
    for (method, path, body) in [
        (
            "POST",
            format!("/api/deliveries/{delivery}/redeliver"),
            None,
        ),
        ("GET", format!("/api/deliveries/{delivery}"), None),
        ("POST", format!("/api/webhooks/{id}/test"), None),
        ("GET", format!("/api/webhooks/{id}"), None),
        ("GET", "/api/webhooks".to_owned(), None),
        ("GET", "/api/keys".to_owned(), None),
        (
            "GET",
            "/api/events/evt_leak_1?organization_id=org_s".to_owned(),
            None,
        ),
        (
            "PATCH",
            format!("/api/webhooks/{id}"),
            Some(json!({"secret": "short"})),
        ),
        (
            "PATCH",
            format!("/api/webhooks/{id}"),
            Some(json!({"secret": ROTATED, "bogus": 1})),
        ),
        (
            "POST",
            "/api/webhooks".to_owned(),
            Some(
                json!({"url": "ftp://x", "events": ["*"], "secret": ROTATED, "organization_id": "org_s"}),
            ),
        ),
        (
            "POST",
            format!("/api/webhooks/{id}/rotate-secret"),
            Some(json!({"secret": ROTATED, "grace": "99d"})),
        ),
    ] {
        let (s, b) = daemon.call(method, &path, body).await;
        record(s, &b);
    }
    // Wrong tokens, including one that differs from the admin token by one character.
    let near = format!(
        "{}x",
        &support::ADMIN_TOKEN[..support::ADMIN_TOKEN.len() - 1]
    );
    for token in [near.as_str(), "nope", api_key.as_str()] {
        let (s, b) = daemon.call_as(token, "GET", "/api/keys", None).await;
        record(s, &b);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = daemon.log_text();
    assert!(log.contains("DEBUG"), "debug logging is on");
    let haystacks = [
        ("the daemon's log", log),
        ("API answers", answers.join("\n")),
    ];
    for (what, text) in &haystacks {
        for (name, secret) in [
            ("webhook secret", SECRET),
            ("rotated secret", ROTATED),
            ("API key", api_key.as_str()),
            ("admin token", support::ADMIN_TOKEN),
        ] {
            assert!(!text.contains(secret), "the {name} appears in {what}");
        }
    }
}

file_only! {
/// Runs `palo-webhooks serve` on `db` with `extra` flags and expects it to refuse to start;
/// returns its stderr.
fn refused_start(db: &std::path::Path, extra: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_palo-webhooks"))
        .args([
            "serve",
            "--db",
            db.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .args(extra)
        .env("PALO_WEBHOOKS_ADMIN_TOKEN", support::ADMIN_TOKEN)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "it started: {stderr}");
    stderr
}
}

file_only! {
/// With `--secrets-key-file`, webhook secrets are sealed in the db file (the file never
/// holds them in clear, whatever was rotated), deliveries are still signed with them, and
/// the file cannot be served without the same key. Secrets stored in clear before a key
/// was set are sealed at the next start with one.
#[tokio::test(flavor = "multi_thread")]
async fn secrets_are_sealed_at_rest_with_the_key_file() {
    const ROTATED: &str = "rotated_secret_sealed_at_rest_0123456789abc";
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("secrets.key");
    let key_path = key_file.to_str().unwrap().to_owned();
    let gen = std::process::Command::new(env!("CARGO_BIN_EXE_palo-webhooks"))
        .args(["gen-key", "--out", &key_path])
        .output()
        .unwrap();
    assert!(gen.status.success());
    assert!(gen.stdout.is_empty(), "the key is written to the file only");
    let text = std::fs::read_to_string(&key_file).unwrap();
    assert_eq!(text.trim().len(), 64);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_palo-webhooks"))
        .args(["gen-key", "--out", &key_path])
        .output()
        .unwrap();
    assert!(!again.status.success(), "gen-key never overwrites a key");

    let flags = [
        "--allow-http",
        "--retry-schedule",
        "1h",
        "--secrets-key-file",
        &key_path,
    ];
    let mut daemon = support::start(&flags);
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let delivery = daemon
        .after_first_attempt(&receiver.url, event("evt_sealed_1"))
        .await;
    assert_eq!(delivery["status"], "succeeded", "{delivery}");
    assert!(support::python_verifies(&receiver.received(), SECRET));
    let webhook = delivery["webhook_id"].as_str().unwrap().to_owned();
    let (status, _) = daemon
        .call(
            "POST",
            &format!("/api/webhooks/{webhook}/rotate-secret"),
            Some(json!({"secret": ROTATED, "grace": "1h"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(daemon.terminate(), Some(0));
    let db = daemon.dir.join("palo.redb");
    let bytes = std::fs::read(&db).unwrap();
    for secret in [SECRET, ROTATED] {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "a secret is in clear in the db file"
        );
    }

    // Restarted with the key: the rotated secret signs, the previous one still verifies.
    let restarted = support::start_in(&daemon.dir, &flags);
    let (status, _) = restarted
        .call("POST", &format!("/api/webhooks/{webhook}/test"), None)
        .await;
    assert_eq!(status, 200);
    let received = receiver.received();
    assert!(support::python_verifies(&received[1..], ROTATED));
    drop(restarted);

    // Without the key, or with another one, the daemon refuses the file, saying why.
    let stderr = refused_start(&db, &[]);
    assert!(stderr.contains("--secrets-key-file"), "{stderr}");
    assert_eq!(
        stderr.matches("encrypted").count(),
        1,
        "the reason is said once: {stderr}"
    );
    let other = keys.path().join("other.key");
    std::fs::write(&other, format!("{}\n", "ab".repeat(32))).unwrap();
    let stderr = refused_start(&db, &["--secrets-key-file", other.to_str().unwrap()]);
    assert!(stderr.contains("does not open"), "{stderr}");
    assert!(
        !stderr.contains(&"ab".repeat(32)),
        "the key is never printed"
    );

    // Replacing the key: one start with the new key and the old one as previous reseals
    // every secret; from then on the new key alone opens the file, the old one no longer.
    let new_key = keys.path().join("new.key");
    std::fs::write(&new_key, format!("{}\n", "cd".repeat(32))).unwrap();
    let new_path = new_key.to_str().unwrap().to_owned();
    let rekeyed = support::start_in(
        &daemon.dir,
        &[
            "--allow-http",
            "--secrets-key-file",
            &new_path,
            "--previous-secrets-key-file",
            &key_path,
        ],
    );
    assert!(
        rekeyed.log_text().contains("previous key"),
        "{}",
        rekeyed.log_text()
    );
    drop(rekeyed);
    let stderr = refused_start(&db, &["--secrets-key-file", &key_path]);
    assert!(stderr.contains("does not open"), "{stderr}");
    let after = support::start_in(
        &daemon.dir,
        &["--allow-http", "--secrets-key-file", &new_path],
    );
    let (status, _) = after
        .call("POST", &format!("/api/webhooks/{webhook}/test"), None)
        .await;
    assert_eq!(status, 200);
    let received = receiver.received();
    assert!(support::python_verifies(
        &received[received.len() - 1..],
        ROTATED
    ));
    drop(after);

    // `check` needs no key, even on a sealed file left by kill -9.
    let mut crashed = support::start_in(
        &daemon.dir,
        &["--allow-http", "--secrets-key-file", &new_path],
    );
    crashed.kill9();
    let (ok, report) = support::check(&daemon.dir);
    assert!(ok, "{report}");
    assert!(report.contains("not closed cleanly"), "{report}");
    drop(crashed);

    // A db written without a key has its secrets sealed at the first start with one.
    let mut plain = support::start(&["--allow-http", "--retry-schedule", "1h"]);
    let plain_receiver = Receiver::start(Behaviour::Status(200)).await;
    plain
        .create_webhook("org_s", &plain_receiver.url, &["*"])
        .await;
    assert_eq!(plain.terminate(), Some(0));
    let sealed = support::start_in(&plain.dir, &flags);
    assert!(
        sealed.log_text().contains("sealed webhook secrets (plain"),
        "{}",
        sealed.log_text()
    );
    let (status, _) = sealed
        .call("POST", "/api/events", Some(event("evt_sealed_2")))
        .await;
    assert_eq!(status, 202);
    plain_receiver.wait_for(1, Duration::from_secs(10)).await;
    assert!(support::python_verifies(&plain_receiver.received(), SECRET));
    drop(sealed);
    drop(plain);
}
}
