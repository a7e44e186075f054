//! Payload deletion (issue 15, item 7): `DELETE /api/events/{id}/payload` replaces the stored
//! body by a tombstone, cancels what is unfinished and keeps the attempt log; the body is
//! then gone from the API, from every later attempt and from `check`'s view.
//! `--payload-retention` blanks old bodies of events whose deliveries are all final.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{self, Behaviour, Receiver};

/// A word that appears only in the events' payloads.
const MARKER: &str = "personal-data-4711";

fn ticket(org: &str, id: &str) -> Value {
    json!({"event_type": "ticket.created", "organization_id": org, "event_id": id,
           "data": {"ticket_id": id, "title": format!("{MARKER} {id}"), "priority": "p3",
                    "project_id": "p", "created_by": "u"}})
}

/// The delivery of `event_id` to `webhook`.
async fn delivery_of(daemon: &support::Daemon, webhook: &str, event_id: &str) -> String {
    let page = daemon
        .wait_until(
            &format!("/api/webhooks/{webhook}/deliveries"),
            Duration::from_secs(10),
            |b| {
                b["data"]
                    .as_array()
                    .is_some_and(|d| d.iter().any(|d| d["event_id"] == event_id))
            },
        )
        .await;
    let rows = page["data"].as_array().unwrap();
    let row = rows.iter().find(|d| d["event_id"] == event_id).unwrap();
    row["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_payload_is_gone_from_the_api_later_attempts_and_check_and_the_log_stays() {
    let failing = Receiver::start(Behaviour::Status(500)).await;
    let ok = Receiver::start(Behaviour::Status(200)).await;
    // The retry comes 3 s after the first attempt: the deletion happens well before it.
    let daemon = support::start(&["--allow-http", "--retry-schedule", "3s,3s"]);
    let retried = daemon.create_webhook("org_a", &failing.url, &["*"]).await;
    let delivered = daemon.create_webhook("org_a", &ok.url, &["*"]).await;
    for id in ["e1", "e2"] {
        let (status, body) = daemon
            .call("POST", "/api/events", Some(ticket("org_a", id)))
            .await;
        assert_eq!(status, 202, "{body}");
    }
    failing.wait_for(2, Duration::from_secs(10)).await;
    ok.wait_for(2, Duration::from_secs(10)).await;
    let pending = delivery_of(&daemon, &retried, "e1").await;
    let done = delivery_of(&daemon, &delivered, "e1").await;
    let pending_before = daemon
        .wait_until(
            &format!("/api/deliveries/{pending}"),
            Duration::from_secs(10),
            |b| b["status"] == "retrying",
        )
        .await;
    // Received is not yet logged: wait for the log.
    let done_before = daemon
        .wait_until(
            &format!("/api/deliveries/{done}"),
            Duration::from_secs(10),
            |b| b["status"] == "succeeded",
        )
        .await;

    // Deleting: 200 with the event as GET shows it, the pending delivery cancelled.
    let (status, deleted) = daemon.call("DELETE", "/api/events/e1/payload", None).await;
    assert_eq!(status, 200, "{deleted}");
    assert!(deleted["data"].is_null(), "{deleted}");
    let when = deleted["payload_deleted_at"].as_str().unwrap().to_owned();
    let statuses: Vec<(&str, &str)> = deleted["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["id"].as_str().unwrap(), d["status"].as_str().unwrap()))
        .collect();
    assert!(
        statuses.contains(&(pending.as_str(), "cancelled")),
        "{deleted}"
    );
    assert!(
        statuses.contains(&(done.as_str(), "succeeded")),
        "{deleted}"
    );
    // Idempotent: the same answer, the same time.
    let (status, again) = daemon.call("DELETE", "/api/events/e1/payload", None).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["payload_deleted_at"], when.as_str());

    // Nothing of the body reaches a later attempt: the receiver answers 200 now, and the
    // retry that was due 3 s after the first attempt never comes.
    let of_e1 = |r: &Receiver| {
        r.received()
            .iter()
            .filter(|q| q.json()["event_id"] == "e1")
            .count()
    };
    let seen = of_e1(&failing);
    failing.set(Behaviour::Status(200));
    tokio::time::sleep(Duration::from_millis(4_000)).await;
    assert_eq!(of_e1(&failing), seen, "no attempt of e1 after the deletion");
    let (status, refused) = daemon
        .call("POST", &format!("/api/deliveries/{done}/redeliver"), None)
        .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "payload_deleted");
    assert_eq!(of_e1(&ok), 1, "the refused redelivery sent nothing");

    // Gone from the API: the event, the list; e2 keeps its body.
    let (_, event) = daemon.call("GET", "/api/events/e1", None).await;
    assert!(event["data"].is_null(), "{event}");
    assert_eq!(event["payload_deleted_at"], when.as_str());
    let (_, list) = daemon
        .call("GET", "/api/events?organization_id=org_a", None)
        .await;
    let text = list.to_string();
    assert!(!text.contains(&format!("{MARKER} e1")), "{text}");
    assert!(text.contains(&format!("{MARKER} e2")), "{text}");
    // Another organization's key cannot delete it (404, as for GET).
    let other = daemon.create_key("org_b").await;
    let (status, _) = daemon
        .call_as(&other, "DELETE", "/api/events/e1/payload", None)
        .await;
    assert_eq!(status, 404);
    // The organization's own key can; an unknown event is 404.
    let own = daemon.create_key("org_a").await;
    let (status, body) = daemon
        .call_as(&own, "DELETE", "/api/events/e2/payload", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["data"].is_null());
    let (status, _) = daemon
        .call_as(&own, "DELETE", "/api/events/nope/payload", None)
        .await;
    assert_eq!(status, 404);

    // The attempt log is unchanged; only the unfinished delivery's status moved.
    let (_, done_after) = daemon
        .call("GET", &format!("/api/deliveries/{done}"), None)
        .await;
    assert_eq!(done_after, done_before);
    let (_, pending_after) = daemon
        .call("GET", &format!("/api/deliveries/{pending}"), None)
        .await;
    assert_eq!(pending_after["attempts"], pending_before["attempts"]);
    assert_eq!(pending_after["status"], "cancelled");
    assert!(pending_after["next_attempt_at"].is_null());

    let mut daemon = daemon;
    daemon.terminate();
    let (ok_check, text) = support::check(&daemon.dir);
    assert!(ok_check, "{text}");
    assert!(!text.contains(MARKER), "{text}");
    assert!(text.contains("2 payloads deleted"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn payload_retention_blanks_old_bodies_of_finished_events_only() {
    let ok = Receiver::start(Behaviour::Status(200)).await;
    let failing = Receiver::start(Behaviour::Status(500)).await;
    let daemon = support::start(&[
        "--allow-http",
        "--retry-schedule",
        "1h",
        "--payload-retention",
        "2s",
        "--retention",
        "1h",
    ]);
    daemon.create_webhook("org_a", &ok.url, &["*"]).await;
    daemon.create_webhook("org_b", &failing.url, &["*"]).await;
    for (org, id) in [("org_a", "done"), ("org_b", "retrying")] {
        let (status, body) = daemon
            .call("POST", "/api/events", Some(ticket(org, id)))
            .await;
        assert_eq!(status, 202, "{body}");
    }
    ok.wait_for(1, Duration::from_secs(10)).await;
    failing.wait_for(1, Duration::from_secs(10)).await;
    let blanked = daemon
        .wait_until("/api/events/done", Duration::from_secs(20), |b| {
            b["data"].is_null()
        })
        .await;
    assert!(blanked["payload_deleted_at"].is_string(), "{blanked}");
    assert_eq!(blanked["deliveries"][0]["status"], "succeeded");
    // Its delivery still retries: the body stays, whatever its age.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let (_, kept) = daemon.call("GET", "/api/events/retrying", None).await;
    assert_eq!(
        kept["data"]["title"],
        format!("{MARKER} retrying"),
        "{kept}"
    );
    assert!(kept["payload_deleted_at"].is_null());
    let mut daemon = daemon;
    daemon.terminate();
    let (ok_check, text) = support::check(&daemon.dir);
    assert!(ok_check, "{text}");
    assert!(text.contains("1 payloads deleted"), "{text}");
}

#[test]
fn a_payload_retention_not_shorter_than_the_retention_is_a_config_error() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_palo-webhooks"))
        .args([
            "serve",
            "--db",
            "/nonexistent/never-created.redb",
            "--retention",
            "1h",
            "--payload-retention",
            "2h",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("payload_retention"), "{err}");
}
