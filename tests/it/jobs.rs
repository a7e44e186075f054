//! Recovery and replay jobs (issue 15, item 5), against the real binary and real receivers:
//! a recovery survives kill -9 and re-sends each delivery once (at-least-once: those in
//! flight at the kill may go twice), cancel stops it, replay creates only what a webhook
//! never had.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{self, Behaviour, Receiver};

fn ticket(org: &str, id: &str, event_type: &str) -> Value {
    let data = match event_type {
        "ticket.resolved" => {
            json!({"ticket_id": id, "resolved_by": "u", "resolution_time_hours": 1})
        }
        _ => {
            json!({"ticket_id": id, "title": "t", "priority": "p3", "project_id": "p", "created_by": "u"})
        }
    };
    json!({"event_type": event_type, "organization_id": org, "event_id": id, "data": data})
}

async fn wait_job(daemon: &support::Daemon, job: &str, timeout: Duration) -> Value {
    daemon
        .wait_until(&format!("/api/jobs/{job}"), timeout, |b| {
            b["state"] == "finished" || b["state"] == "cancelled"
        })
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recovery_of_5000_failed_deliveries_survives_kill_9_and_resends_each_once() {
    const N: usize = 5_000;
    let receiver = Receiver::start(Behaviour::Status(500)).await;
    let dir = tempfile::tempdir().unwrap();
    // One attempt per delivery: an empty retry schedule.
    let args = [
        "--allow-http",
        "--retry-schedule",
        "",
        "--disable-after",
        "30d",
    ];
    let mut daemon = support::start_in(dir.path(), &args);
    let webhook = daemon.create_webhook("org_a", &receiver.url, &["*"]).await;
    let since = palo_webhooks::clock::format_ms(palo_webhooks::clock::now_ms() - 1_000);
    let daemon_ref = Arc::new(daemon);
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let d = Arc::clone(&daemon_ref);
        tasks.push(tokio::spawn(async move {
            for i in (worker..N).step_by(16) {
                let (status, body) = d
                    .call(
                        "POST",
                        "/api/events",
                        Some(ticket("org_a", &format!("e{i}"), "ticket.created")),
                    )
                    .await;
                assert_eq!(status, 202, "{body}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    daemon = Arc::try_unwrap(daemon_ref).ok().unwrap();
    daemon
        .wait_until("/api/admin/status", Duration::from_secs(120), |b| {
            b["deliveries"]["failed"] == N
        })
        .await;
    let failed_attempts = receiver.received().len();
    assert_eq!(failed_attempts, N);

    // The receiver works again (a little slowly, so the kill falls mid-job).
    receiver.set(Behaviour::Slow(5));
    let (status, job) = daemon
        .call(
            "POST",
            &format!("/api/webhooks/{webhook}/recover"),
            Some(json!({"since": since})),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["state"], "queued");
    let job_id = job["id"].as_str().unwrap().to_owned();
    daemon
        .wait_until(
            &format!("/api/jobs/{job_id}"),
            Duration::from_secs(60),
            |b| b["succeeded"].as_u64().unwrap_or(0) >= 500,
        )
        .await;
    daemon.kill9();
    let daemon = support::start_in(dir.path(), &args);
    let done = wait_job(&daemon, &job_id, Duration::from_secs(180)).await;
    assert_eq!(done["state"], "finished", "{done}");
    assert_eq!(done["matched"], N, "{done}");
    assert_eq!(done["queued"], N, "{done}");
    assert_eq!(done["succeeded"], N, "{done}");
    assert_eq!(done["failed"], 0, "{done}");
    assert!(done["started_at"].is_string() && done["finished_at"].is_string());

    // Each delivery re-sent once; only attempts in flight at the kill may repeat.
    let mut per_delivery: HashMap<String, usize> = HashMap::new();
    for r in &receiver.received()[failed_attempts..] {
        *per_delivery.entry(r.header("x-palo-delivery")).or_default() += 1;
    }
    assert_eq!(per_delivery.len(), N, "every delivery was re-sent");
    let repeated: usize = per_delivery.values().map(|n| n - 1).sum();
    assert!(
        repeated <= 64,
        "{repeated} repeats: more than the job's window in flight"
    );
    let (_, status_body) = daemon.call("GET", "/api/admin/status", None).await;
    assert_eq!(status_body["deliveries"]["succeeded"], N, "{status_body}");

    // A second recovery of the succeeded ones, cancelled at once, stops queuing.
    let (status, job) = daemon
        .call(
            "POST",
            &format!("/api/webhooks/{webhook}/recover"),
            Some(json!({"since": since, "statuses": ["succeeded"]})),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    let second = job["id"].as_str().unwrap().to_owned();
    let (status, cancelled) = daemon
        .call("POST", &format!("/api/jobs/{second}/cancel"), None)
        .await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["state"], "cancelled");
    let queued = cancelled["queued"].as_u64().unwrap();
    assert!(
        queued < N as u64,
        "cancelled before it queued everything: {cancelled}"
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (_, later) = daemon
        .call("GET", &format!("/api/jobs/{second}"), None)
        .await;
    assert_eq!(
        later["queued"].as_u64().unwrap(),
        queued,
        "nothing queued after cancel"
    );
    let (status, again) = daemon
        .call("POST", &format!("/api/jobs/{second}/cancel"), None)
        .await;
    assert_eq!(status, 409, "{again}");
    // What it queued before the cancel is still counted, then it is finished.
    let ended = daemon
        .wait_until(
            &format!("/api/jobs/{second}"),
            Duration::from_secs(60),
            |b| b["finished_at"].is_string(),
        )
        .await;
    assert_eq!(ended["state"], "cancelled", "{ended}");
    assert_eq!(
        ended["succeeded"].as_u64().unwrap() + ended["failed"].as_u64().unwrap(),
        ended["queued"].as_u64().unwrap(),
        "{ended}"
    );
    let (status, list) = daemon
        .call("GET", "/api/jobs?organization_id=org_a", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(list["data"].as_array().unwrap().len(), 2, "{list}");
    assert_eq!(list["data"][0]["id"], second.as_str(), "newest first");
    let mut daemon = daemon;
    daemon.terminate();
    let (ok, text) = support::check(&daemon.dir);
    assert!(ok, "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_creates_deliveries_only_for_events_the_webhook_never_had() {
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let late = Receiver::start(Behaviour::Status(200)).await;
    let watcher = Receiver::start(Behaviour::Status(200)).await;
    let daemon = support::start(&["--allow-http"]);
    let since = palo_webhooks::clock::format_ms(palo_webhooks::clock::now_ms() - 1_000);
    let webhook = daemon
        .create_webhook("org_a", &receiver.url, &["ticket.created"])
        .await;
    daemon
        .create_webhook("org_a", &watcher.url, &["recovery.finished"])
        .await;
    for (id, t) in [
        ("r1", "ticket.created"),
        ("r2", "ticket.resolved"),
        ("r3", "ticket.created"),
    ] {
        let (status, body) = daemon
            .call("POST", "/api/events", Some(ticket("org_a", id, t)))
            .await;
        assert_eq!(status, 202, "{body}");
    }
    // Another organization's events are never replayed.
    daemon
        .call(
            "POST",
            "/api/events",
            Some(ticket("org_b", "x1", "ticket.resolved")),
        )
        .await;
    receiver.wait_for(2, Duration::from_secs(10)).await;
    // The webhook subscribes to more, and a new webhook appears after the events.
    let (status, body) = daemon
        .call(
            "PATCH",
            &format!("/api/webhooks/{webhook}"),
            Some(json!({"events": ["*"]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let newcomer = daemon.create_webhook("org_a", &late.url, &["*"]).await;

    let (status, job) = daemon
        .call(
            "POST",
            &format!("/api/webhooks/{webhook}/replay"),
            Some(json!({"since": since})),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    let done = wait_job(
        &daemon,
        job["id"].as_str().unwrap(),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        (done["matched"].as_u64(), done["succeeded"].as_u64()),
        (Some(1), Some(1)),
        "{done}"
    );
    let got: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.json()["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got.iter().filter(|i| *i == "r2").count(), 1, "{got:?}");
    assert_eq!(got.len(), 3, "r1 and r3 were had already: {got:?}");

    // Only the named types, for the webhook created after the events.
    let (status, job) = daemon
        .call(
            "POST",
            &format!("/api/webhooks/{newcomer}/replay"),
            Some(json!({"since": since, "event_types": ["ticket.created"]})),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    let done = wait_job(
        &daemon,
        job["id"].as_str().unwrap(),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(done["matched"], 2, "{done}");
    late.wait_for(2, Duration::from_secs(10)).await;
    let mut ids: Vec<String> = late
        .received()
        .iter()
        .map(|r| r.json()["event_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, ["r1", "r3"]);

    // Run again: nothing is left that it never had.
    let (_, job) = daemon
        .call(
            "POST",
            &format!("/api/webhooks/{newcomer}/replay"),
            Some(json!({"since": since, "event_types": ["ticket.created"]})),
        )
        .await;
    let done = wait_job(
        &daemon,
        job["id"].as_str().unwrap(),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(done["matched"], 0, "{done}");

    // Bad input changes nothing.
    for body in [
        json!({"since": "yesterday"}),
        json!({"since": since, "until": since}),
        json!({"since": since, "event_types": ["nope"]}),
        json!({"since": since, "event_types": ["webhook.disabled"]}),
        json!({"since": since, "extra": 1}),
    ] {
        let (status, answer) = daemon
            .call(
                "POST",
                &format!("/api/webhooks/{webhook}/replay"),
                Some(body),
            )
            .await;
        assert_eq!(status, 422, "{answer}");
    }
    let (status, answer) = daemon
        .call(
            "POST",
            &format!("/api/webhooks/{webhook}/recover"),
            Some(json!({"since": since, "statuses": ["pending"]})),
        )
        .await;
    assert_eq!(status, 422, "{answer}");

    // `recovery.finished` reached the webhook that names it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while watcher.received().len() < 3 {
        assert!(
            Instant::now() < deadline,
            "recovery.finished did not arrive"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first = watcher.received()[0].json();
    assert_eq!(first["event_type"], "recovery.finished");
    assert_eq!(first["data"]["state"], "finished");
    let mut daemon = daemon;
    daemon.terminate();
    let (ok, text) = support::check(&daemon.dir);
    assert!(ok, "{text}");
}

/// Regression (adversarial pass): deleting a webhook while its recovery job runs left the
/// job running for ever and re-queued deliveries of the deleted webhook (`check` failed).
#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_webhook_mid_recovery_ends_the_job_and_leaves_nothing_unfinished() {
    let receiver = Receiver::start(Behaviour::Status(500)).await;
    let daemon = support::start(&["--allow-http", "--retry-schedule", ""]);
    let since = palo_webhooks::clock::format_ms(palo_webhooks::clock::now_ms() - 1_000);
    let webhook = daemon.create_webhook("org_a", &receiver.url, &["*"]).await;
    for i in 0..300 {
        let (status, _) = daemon
            .call(
                "POST",
                "/api/events",
                Some(ticket("org_a", &format!("d{i}"), "ticket.created")),
            )
            .await;
        assert_eq!(status, 202);
    }
    daemon
        .wait_until("/api/admin/status", Duration::from_secs(60), |b| {
            b["deliveries"]["failed"] == 300
        })
        .await;
    receiver.set(Behaviour::Slow(20));
    let (status, job) = daemon
        .call(
            "POST",
            &format!("/api/webhooks/{webhook}/recover"),
            Some(json!({"since": since})),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    daemon
        .wait_until(&format!("/api/jobs/{id}"), Duration::from_secs(30), |b| {
            b["queued"].as_u64().unwrap_or(0) > 0
        })
        .await;
    let (status, _) = daemon
        .call("DELETE", &format!("/api/webhooks/{webhook}"), None)
        .await;
    assert_eq!(status, 204);
    let done = wait_job(&daemon, &id, Duration::from_secs(30)).await;
    assert_eq!(done["state"], "finished", "{done}");
    assert_eq!(
        done["succeeded"].as_u64().unwrap() + done["failed"].as_u64().unwrap(),
        done["queued"].as_u64().unwrap(),
        "{done}"
    );
    let mut daemon = daemon;
    daemon.terminate();
    let (ok, text) = support::check(&daemon.dir);
    assert!(ok, "{text}");
}
