//! The CLI client against a running daemon, and the example receiver of the README.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::KillOnDrop;
use crate::support::{self, Behaviour, Receiver, ADMIN_TOKEN};

fn cli(daemon: &support::Daemon, args: &[&str]) -> (i32, String, String) {
    support::cli_as(daemon, ADMIN_TOKEN, args)
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_manages_webhooks_sends_events_and_redelivers() {
    let daemon = support::start(&["--allow-http", "--retry-schedule", "1h"]);
    let receiver = Receiver::start(Behaviour::Status(500)).await;
    let (code, out, err) = cli(
        &daemon,
        &[
            "webhooks",
            "create",
            &receiver.url,
            "--events",
            "ticket.created,ticket.resolved",
            "--organization-id",
            "org_a",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let webhook: Value = serde_json::from_str(&out).unwrap();
    let id = webhook["id"].as_str().unwrap().to_owned();
    assert!(webhook["secret"].as_str().unwrap().starts_with("pwsec_"));

    let (code, out, _) = cli(&daemon, &["webhooks", "list"]);
    assert_eq!(code, 0);
    assert!(out.lines().next().unwrap().starts_with("ID"), "{out}");
    assert!(
        out.contains(&id) && out.contains("ticket.created,ticket.resolved"),
        "{out}"
    );

    let file = daemon.dir.join("event.json");
    std::fs::write(&file, r#"{"event_type":"ticket.resolved","organization_id":"org_a","data":{"ticket_id":"T","resolved_by":"u","resolution_time_hours":1}}"#).unwrap();
    let (code, out, err) = cli(
        &daemon,
        &["events", "send", file.to_str().unwrap(), "--json"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["deliveries"],
        1
    );
    receiver.wait_for(1, Duration::from_secs(10)).await;
    // For people: the event id and the ids of the deliveries it created.
    std::fs::write(&file, r#"{"event_id":"evt_cli_2","event_type":"ticket.resolved","organization_id":"org_a","data":{"ticket_id":"T","resolved_by":"u","resolution_time_hours":1}}"#).unwrap();
    let (code, out, err) = cli(&daemon, &["events", "send", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("event_id: evt_cli_2")
            && out.contains("deliveries: 1")
            && out.contains("dlv_"),
        "{out}"
    );
    receiver.wait_for(2, Duration::from_secs(10)).await;

    let page = daemon
        .wait_until(
            &format!("/api/webhooks/{id}/deliveries"),
            Duration::from_secs(10),
            |b| b["data"][0]["attempt_count"] == 1,
        )
        .await;
    let delivery = page["data"][0]["id"].as_str().unwrap().to_owned();
    let (code, out, _) = cli(&daemon, &["deliveries", "list", "--webhook", &id]);
    assert_eq!(code, 0);
    assert!(out.contains(&delivery) && out.contains("retrying"), "{out}");

    receiver.set(Behaviour::Status(200));
    let (code, out, err) = cli(&daemon, &["deliveries", "redeliver", &delivery]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("succeeded") && out.contains("manual"), "{out}");
    let (code, out, _) = cli(&daemon, &["deliveries", "get", &delivery]);
    assert_eq!(code, 0);
    assert!(
        out.contains("attempts:") && out.contains("scheduled") && out.contains("manual"),
        "{out}"
    );

    let (code, _, err) = cli(
        &daemon,
        &["webhooks", "get", "wh_01ARZ3NDEKTSV4RRFFQ69G5FAV"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("404 not_found"), "{err}");

    let (code, out, _) = cli(
        &daemon,
        &["keys", "create", "--organization-id", "org_a", "--json"],
    );
    assert_eq!(code, 0);
    assert!(serde_json::from_str::<Value>(&out).unwrap()["key"]
        .as_str()
        .unwrap()
        .starts_with("pwk_"));
}

#[tokio::test(flavor = "multi_thread")]
async fn example_receiver_verifies_and_deduplicates_real_deliveries() {
    let daemon = support::start(&["--allow-http", "--retry-schedule", "1h"]);
    let mut python = KillOnDrop(
        Command::new("python3")
            .args([
                concat!(env!("CARGO_MANIFEST_DIR"), "/examples/receiver.py"),
                "--port",
                "0",
                "--secret",
                support::SECRET,
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3"),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = python.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next = || {
        rx.recv_timeout(Duration::from_secs(10))
            .expect("receiver output")
    };
    let url = next()
        .split("listening on ")
        .nth(1)
        .unwrap()
        .trim()
        .to_owned();
    daemon.create_webhook("org_a", &url, &["*"]).await;
    let event = serde_json::json!({"event_id": "evt_py", "event_type": "ticket.created", "organization_id": "org_a",
        "data": {"ticket_id": "TKT-1", "title": "Café ☕", "priority": "p3", "project_id": "p", "created_by": "u"}});
    let (status, _) = daemon.call("POST", "/api/events", Some(event)).await;
    assert_eq!(status, 202);
    let line = next();
    assert!(line.starts_with("verified ticket.created evt_py"), "{line}");
    assert!(next().contains("Café ☕"));

    // The attempt is logged after the receiver answers: wait for it before redelivering.
    let page = daemon
        .wait_until("/api/events/evt_py", Duration::from_secs(10), |b| {
            b["deliveries"][0]["status"] == "succeeded"
        })
        .await;
    let delivery = page["deliveries"][0]["id"].as_str().unwrap();
    let (status, result) = daemon
        .call(
            "POST",
            &format!("/api/deliveries/{delivery}/redeliver"),
            None,
        )
        .await;
    assert_eq!(
        (status, result["attempt"]["status_code"].as_u64()),
        (200, Some(200))
    );
    let line = next();
    assert!(
        line.starts_with("duplicate ticket.created evt_py") && line.contains("attempt=2"),
        "{line}"
    );
}

/// Output piped into a reader that goes away (`| head -1`) ends the command quietly.
#[tokio::test(flavor = "multi_thread")]
async fn a_closed_stdout_ends_the_command_without_a_panic() {
    let daemon = support::start(&["--allow-http", "--retry-schedule", "1h"]);
    for i in 0..30 {
        daemon
            .create_webhook("org_a", &format!("http://127.0.0.1:9/h{i}"), &["*"])
            .await;
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_palo-webhooks"))
        .args(["webhooks", "list", "--limit", "30"])
        .env("PALO_WEBHOOKS_URL", format!("http://{}", daemon.addr))
        .env("PALO_WEBHOOKS_TOKEN", ADMIN_TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.code(), Some(0), "{stderr}");
}

/// Issue 15: `webhooks recover`, `webhooks replay` and `jobs list|get|cancel`.
#[tokio::test(flavor = "multi_thread")]
async fn cli_recovers_replays_and_follows_jobs() {
    let daemon = support::start(&["--allow-http", "--retry-schedule", ""]);
    let receiver = Receiver::start(Behaviour::Status(500)).await;
    let since = palo_webhooks::clock::format_ms(palo_webhooks::clock::now_ms() - 1_000);
    let webhook = daemon.create_webhook("org_a", &receiver.url, &["*"]).await;
    let (status, _) = daemon
        .call(
            "POST",
            "/api/events",
            Some(
                serde_json::json!({"event_type": "ticket.resolved", "organization_id": "org_a",
                "data": {"ticket_id": "T", "resolved_by": "u", "resolution_time_hours": 1}}),
            ),
        )
        .await;
    assert_eq!(status, 202);
    daemon
        .wait_until("/api/admin/status", Duration::from_secs(10), |b| {
            b["deliveries"]["failed"] == 1
        })
        .await;
    receiver.set(Behaviour::Status(200));
    let (code, out, err) = cli(
        &daemon,
        &[
            "webhooks", "recover", &webhook, "--since", &since, "--status", "failed", "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let job: Value = serde_json::from_str(&out).unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(job["kind"], "recover");
    daemon
        .wait_until(&format!("/api/jobs/{id}"), Duration::from_secs(10), |b| {
            b["state"] == "finished"
        })
        .await;
    let (code, out, _) = cli(&daemon, &["jobs", "get", &id]);
    assert_eq!(code, 0);
    assert!(out.contains("finished"), "{out}");
    let (code, out, _) = cli(&daemon, &["jobs", "list", "--organization-id", "org_a"]);
    assert_eq!(code, 0);
    assert!(
        out.lines().next().unwrap().starts_with("ID") && out.contains(&id),
        "{out}"
    );
    let (code, _, err) = cli(&daemon, &["jobs", "cancel", &id]);
    assert_eq!(code, 1, "a finished job cannot be cancelled");
    assert!(err.contains("job_finished"), "{err}");
    let (code, out, err) = cli(
        &daemon,
        &[
            "webhooks",
            "replay",
            &webhook,
            "--since",
            &since,
            "--event-type",
            "ticket.created",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["kind"],
        "replay"
    );
    let (code, _, err) = cli(
        &daemon,
        &["webhooks", "recover", &webhook, "--since", "nope"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("since"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_enables_a_disabled_webhook_and_deletes_a_payload() {
    // The held delivery keeps the due time its 410 gave it: short, to see it go.
    let daemon = support::start(&["--allow-http", "--retry-schedule", "300ms"]);
    let receiver = Receiver::start(Behaviour::Status(410)).await;
    let id = daemon.create_webhook("org_a", &receiver.url, &["*"]).await;
    let event = serde_json::json!({"event_id": "e1", "event_type": "ticket.resolved",
        "organization_id": "org_a", "data": {"ticket_id": "T", "resolved_by": "u",
        "resolution_time_hours": 1}});
    let (status, body) = daemon.call("POST", "/api/events", Some(event)).await;
    assert_eq!(status, 202, "{body}");
    daemon
        .wait_until(
            &format!("/api/webhooks/{id}"),
            Duration::from_secs(15),
            |b| !b["disabled"].is_null(),
        )
        .await;

    // The choice is required, and only one of the two.
    let (code, _, err) = cli(&daemon, &["webhooks", "enable", &id]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--deliver-held"), "{err}");
    let (code, _, err) = cli(
        &daemon,
        &[
            "webhooks",
            "enable",
            &id,
            "--deliver-held",
            "--discard-held",
        ],
    );
    assert_eq!(code, 2, "{err}");
    receiver.set(Behaviour::Status(200));
    let (code, out, err) = cli(
        &daemon,
        &["webhooks", "enable", &id, "--deliver-held", "--json"],
    );
    assert_eq!(code, 0, "{err}");
    let enabled: Value = serde_json::from_str(&out).unwrap();
    assert!(enabled["disabled"].is_null(), "{out}");
    receiver.wait_for(2, Duration::from_secs(15)).await;
    let (code, _, err) = cli(&daemon, &["webhooks", "enable", &id, "--discard-held"]);
    assert_eq!(code, 1, "not disabled any more");
    assert!(err.contains("not_disabled"), "{err}");

    let (code, out, err) = cli(
        &daemon,
        &[
            "events",
            "delete-payload",
            "e1",
            "--organization-id",
            "org_a",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let deleted: Value = serde_json::from_str(&out).unwrap();
    assert!(deleted["data"].is_null(), "{out}");
    assert!(deleted["payload_deleted_at"].is_string(), "{out}");
    let (code, out, _) = cli(&daemon, &["events", "get", "e1"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("payload_deleted_at: 20") && out.contains("data: null"),
        "{out}"
    );
    let (code, _, err) = cli(&daemon, &["events", "delete-payload", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("404"), "{err}");
}

/// The delivery options from the command line (issue 16): create with options, read them
/// back, change some, show the Ed25519 public key; credentials come from files.
#[tokio::test(flavor = "multi_thread")]
async fn webhook_delivery_options_are_set_and_changed_from_the_cli() {
    let daemon = support::start(&["--allow-http"]);
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "cli-bearer-token\n").unwrap();
    let (code, out, err) = cli(
        &daemon,
        &[
            "webhooks",
            "create",
            "http://127.0.0.1:9/hook",
            "--events",
            "ticket.*",
            "--organization-id",
            "org_cli",
            "--ordering",
            "key",
            "--rate-limit",
            "20",
            "--max-in-flight",
            "2",
            "--filter",
            r#"{"data.priority":{"$in":["p1","p2"]}}"#,
            "--header",
            "X-Tenant: acme",
            "--auth",
            "bearer",
            "--auth-secret-file",
            token.to_str().unwrap(),
            "--signature-scheme",
            "hmac,ed25519",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(created["ordering"], "key");
    assert_eq!(created["rate_limit"], 20);
    assert_eq!(created["max_in_flight"], 2);
    assert_eq!(created["events"], serde_json::json!(["ticket.*"]));
    assert_eq!(created["filter"]["data.priority"]["$in"][1], "p2");
    assert_eq!(created["headers"][0]["name"], "x-tenant");
    assert_eq!(
        created["auth"],
        serde_json::json!({"type": "bearer", "configured": true})
    );
    assert!(!out.contains("cli-bearer-token"));
    let id = created["id"].as_str().unwrap();
    let (code, out, err) = cli(
        &daemon,
        &[
            "webhooks",
            "update",
            id,
            "--rate-limit",
            "none",
            "--ordering",
            "none",
            "--auth",
            "none",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let updated: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(updated["rate_limit"], serde_json::Value::Null);
    assert_eq!(updated["ordering"], "none");
    assert_eq!(updated["auth"], serde_json::Value::Null);
    assert_eq!(
        updated["max_in_flight"], 2,
        "flags not given change nothing"
    );
    let (code, out, err) = cli(&daemon, &["webhooks", "public-key", id, "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("whpk_"), "{out}");
    // A missing credential file is an error before anything is sent.
    let (code, _, err) = cli(&daemon, &["webhooks", "update", id, "--auth", "bearer"]);
    assert_ne!(code, 0);
    assert!(err.contains("--auth-secret-file"), "{err}");
}
