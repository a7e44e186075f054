//! Endpoint lifecycle (issue 15): 410 Gone and a failing streak disable a webhook, its
//! deliveries are held (nothing lost), enabling delivers or cancels them, and operational
//! events reach the webhooks that name them and the operator endpoint.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{self, Behaviour, Receiver};

const OPERATOR_SECRET: &str = "operator-secret-0123456789";

fn ticket(org: &str, id: &str) -> Value {
    json!({"event_type": "ticket.created", "organization_id": org, "event_id": id,
           "data": {"ticket_id": id, "title": "t", "priority": "p3", "project_id": "p", "created_by": "u"}})
}

/// The `event_id`s of the ticket events a receiver got, in arrival order.
fn ticket_ids(receiver: &Receiver) -> Vec<String> {
    receiver
        .received()
        .iter()
        .map(|r| r.json())
        .filter(|b| b["event_type"] == "ticket.created")
        .map(|b| b["event_id"].as_str().unwrap().to_owned())
        .collect()
}

/// The `data` of every operational event of `event_type` a receiver got.
fn operational(receiver: &Receiver, event_type: &str) -> Vec<Value> {
    receiver
        .received()
        .iter()
        .map(|r| r.json())
        .filter(|b| b["event_type"] == event_type)
        .map(|b| b["data"].clone())
        .collect()
}

async fn wait_for_operational(receiver: &Receiver, event_type: &str, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let got = operational(receiver, event_type);
        if got.len() >= n {
            return got;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {event_type} arrived: {:?}",
            receiver
                .received()
                .iter()
                .map(|r| r.json())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_410_disables_the_webhook_holds_later_events_and_enable_delivers_or_cancels_them() {
    let gone = Receiver::start(Behaviour::Status(410)).await;
    let watcher = Receiver::start(Behaviour::Status(200)).await;
    let operator = Receiver::start(Behaviour::Status(200)).await;
    let daemon = support::start(&[
        "--allow-http",
        "--retry-schedule",
        "300ms,300ms,300ms,300ms",
        // One attempt at a time, so arrival order is dispatch order.
        "--max-in-flight-per-webhook",
        "1",
        "--operator-webhook-url",
        &operator.url,
        "--operator-webhook-secret",
        OPERATOR_SECRET,
    ]);
    let webhook = daemon.create_webhook("org_a", &gone.url, &["*"]).await;
    let watching = daemon
        .create_webhook(
            "org_a",
            &watcher.url,
            &["webhook.disabled", "webhook.enabled"],
        )
        .await;
    // A `*` subscription never receives operational events.
    let star = Receiver::start(Behaviour::Status(200)).await;
    daemon.create_webhook("org_a", &star.url, &["*"]).await;

    let (status, body) = daemon
        .call("POST", "/api/events", Some(ticket("org_a", "e1")))
        .await;
    assert_eq!(status, 202, "{body}");
    let first = daemon
        .wait_until(
            &format!("/api/webhooks/{webhook}"),
            Duration::from_secs(15),
            |b| !b["disabled"].is_null(),
        )
        .await;
    assert_eq!(first["disabled"]["reason"], "gone", "{first}");
    assert_eq!(first["disabled"]["status_code"], 410);
    assert_eq!(first["active"], true, "disabled and active are distinct");
    let decided_by = first["disabled"]["delivery_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, delivery) = daemon
        .call("GET", &format!("/api/deliveries/{decided_by}"), None)
        .await;
    assert_eq!(delivery["event_id"], "e1");
    assert_eq!(delivery["status"], "held", "{delivery}");

    // `webhook.disabled` reaches the webhook that names it and the operator endpoint.
    let disabled = wait_for_operational(&watcher, "webhook.disabled", 1).await;
    assert_eq!(disabled[0]["webhook_id"], webhook.as_str());
    assert_eq!(disabled[0]["reason"], "gone");
    let copy = wait_for_operational(&operator, "webhook.disabled", 1).await;
    assert_eq!(copy[0]["webhook_id"], webhook.as_str());
    assert!(crate::support::python_verifies(
        &operator.received(),
        OPERATOR_SECRET
    ));

    // Events that arrive now are held: recorded, counted, not attempted.
    for id in ["e2", "e3", "e4"] {
        let (status, body) = daemon
            .call("POST", "/api/events", Some(ticket("org_a", id)))
            .await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(
            body["deliveries"], 2,
            "the held delivery and the `*` one: {body}"
        );
    }
    let (_, held) = daemon
        .call(
            "GET",
            &format!("/api/webhooks/{webhook}/deliveries?status=held"),
            None,
        )
        .await;
    assert_eq!(held["data"].as_array().unwrap().len(), 4, "{held}");
    let (_, got) = daemon
        .call("GET", &format!("/api/webhooks/{webhook}"), None)
        .await;
    assert_eq!(got["held_deliveries"], 4, "{got}");
    // Regression (new-user pass): the status answered 500 once a delivery was held.
    let (status, body) = daemon.call("GET", "/api/admin/status", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["deliveries"]["held"], 4, "{body}");
    // A job on a disabled webhook would only hold what it queues: refused.
    let (status, body) = daemon
        .call(
            "POST",
            &format!("/api/webhooks/{webhook}/recover"),
            Some(json!({"since": "2020-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("webhook_disabled")),
        "{body}"
    );
    // The operator endpoint's webhook belongs to the configuration.
    let operator_hook = "wh_00000000000000000000000001";
    let (status, body) = daemon
        .call(
            "PATCH",
            &format!("/api/webhooks/{operator_hook}"),
            Some(json!({"active": false})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("managed_by_config")),
        "{body}"
    );
    let (status, _) = daemon
        .call("DELETE", &format!("/api/webhooks/{operator_hook}"), None)
        .await;
    assert_eq!(status, 409);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(
        gone.received().len(),
        1,
        "nothing is attempted while disabled"
    );

    // Enabling with deliver_held: every held delivery goes, in due order.
    gone.set(Behaviour::Status(200));
    let (status, body) = daemon
        .call(
            "POST",
            &format!("/api/webhooks/{webhook}/enable"),
            Some(json!({"deliver_held": true})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["disabled"].is_null(), "{body}");
    gone.wait_for(5, Duration::from_secs(15)).await;
    let ids = ticket_ids(&gone);
    let later: Vec<&str> = ids
        .iter()
        .map(String::as_str)
        .filter(|i| *i != "e1")
        .collect();
    assert_eq!(
        later,
        ["e2", "e3", "e4"],
        "held deliveries go in due order: {ids:?}"
    );
    assert_eq!(
        ids.iter().filter(|i| *i == "e1").count(),
        2,
        "e1 again after the 410: {ids:?}"
    );
    let enabled = wait_for_operational(&watcher, "webhook.enabled", 1).await;
    assert_eq!(enabled[0]["deliver_held"], true);
    assert_eq!(enabled[0]["held"], 4);
    // Enabling an enabled webhook is refused.
    let (status, body) = daemon
        .call(
            "POST",
            &format!("/api/webhooks/{webhook}/enable"),
            Some(json!({"deliver_held": true})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "not_disabled");

    // Disabled again; enabling without deliver_held cancels what was held.
    gone.set(Behaviour::Status(410));
    daemon
        .call("POST", "/api/events", Some(ticket("org_a", "e5")))
        .await;
    daemon
        .wait_until(
            &format!("/api/webhooks/{webhook}"),
            Duration::from_secs(15),
            |b| !b["disabled"].is_null(),
        )
        .await;
    daemon
        .call("POST", "/api/events", Some(ticket("org_a", "e6")))
        .await;
    let before = gone.received().len();
    gone.set(Behaviour::Status(200));
    let (status, body) = daemon
        .call(
            "POST",
            &format!("/api/webhooks/{webhook}/enable"),
            Some(json!({"deliver_held": false})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, cancelled) = daemon
        .call(
            "GET",
            &format!("/api/webhooks/{webhook}/deliveries?status=cancelled"),
            None,
        )
        .await;
    assert_eq!(
        cancelled["data"].as_array().unwrap().len(),
        2,
        "{cancelled}"
    );
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(
        gone.received().len(),
        before,
        "cancelled deliveries are not sent"
    );
    assert!(
        operational(&star, "webhook.disabled").is_empty(),
        "a `*` subscription receives no operational event"
    );
    assert!(
        watcher
            .received()
            .iter()
            .all(|r| r.json()["event_type"] != "ticket.created"),
        "the watcher names only operational types"
    );
    let _ = watching;
    let mut daemon = daemon;
    daemon.terminate();
    let (ok, text) = support::check(&daemon.dir);
    assert!(ok, "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_streak_longer_than_the_window_disables_and_a_success_resets_it() {
    let failing = Receiver::start(Behaviour::Status(500)).await;
    // Fails twice, succeeds once, then fails for ever.
    let recovering = Receiver::start(Behaviour::Sequence(vec![500, 500, 200, 500])).await;
    let daemon = support::start(&[
        "--allow-http",
        "--retry-schedule",
        "300ms,300ms,300ms,300ms",
        "--disable-after",
        "2s",
        "--disable-after-attempts",
        "3",
    ]);
    let failing_id = daemon.create_webhook("org_a", &failing.url, &["*"]).await;
    let recovering_id = daemon
        .create_webhook("org_b", &recovering.url, &["*"])
        .await;

    // Five failed attempts over about 1.2 s: not yet long enough.
    daemon
        .call("POST", "/api/events", Some(ticket("org_a", "a1")))
        .await;
    daemon
        .call("POST", "/api/events", Some(ticket("org_b", "b1")))
        .await;
    failing.wait_for(5, Duration::from_secs(15)).await;
    let (_, got) = daemon
        .call("GET", &format!("/api/webhooks/{failing_id}"), None)
        .await;
    assert!(got["disabled"].is_null(), "{got}");
    // b1 succeeded at its third attempt: the streak ended.
    recovering.wait_for(3, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;

    // More failures after the window: disabled with the streak's start and last error.
    daemon
        .call("POST", "/api/events", Some(ticket("org_a", "a2")))
        .await;
    daemon
        .call("POST", "/api/events", Some(ticket("org_b", "b2")))
        .await;
    let got = daemon
        .wait_until(
            &format!("/api/webhooks/{failing_id}"),
            Duration::from_secs(15),
            |b| !b["disabled"].is_null(),
        )
        .await;
    assert_eq!(got["disabled"]["reason"], "failing", "{got}");
    assert_eq!(got["disabled"]["last_error"], "HTTP 500");
    assert!(got["disabled"]["failing_since"].is_string());
    // b2's failures began after b1's success: less than the window, so still enabled.
    recovering.wait_for(5, Duration::from_secs(15)).await;
    let (_, other) = daemon
        .call("GET", &format!("/api/webhooks/{recovering_id}"), None)
        .await;
    assert!(
        other["disabled"].is_null(),
        "a success inside the window resets it: {other}"
    );
    let mut daemon = daemon;
    daemon.terminate();
    let (ok, text) = support::check(&daemon.dir);
    assert!(ok, "{text}");
}

/// Posts `ids` to `org` over 16 connections, each answered 202.
async fn ingest_many(daemon: &std::sync::Arc<support::Daemon>, org: &str, ids: Vec<String>) {
    let ids = std::sync::Arc::new(ids);
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let (d, ids, org) = (
            std::sync::Arc::clone(daemon),
            std::sync::Arc::clone(&ids),
            org.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            for id in ids.iter().skip(worker).step_by(16) {
                let (status, body) = d.call("POST", "/api/events", Some(ticket(&org, id))).await;
                assert_eq!(status, 202, "{body}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// A webhook's deliveries with this status (counted over every page).
async fn count_status(daemon: &support::Daemon, webhook: &str, status: &str) -> usize {
    let mut count = 0;
    let mut cursor = String::new();
    loop {
        let (code, page) = daemon
            .call(
                "GET",
                &format!("/api/webhooks/{webhook}/deliveries?status={status}&limit=100{cursor}"),
                None,
            )
            .await;
        assert_eq!(code, 200, "{page}");
        count += page["data"].as_array().unwrap().len();
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return count,
        }
    }
}

/// A backlog many times the chunk a lifecycle change moves per transaction
/// (`store::HELD_CHUNK`, 256): the disable holds all of it, the enable releases all of it
/// even when the daemon is killed (-9) right after answering, and a discarding enable
/// cancels exactly what was held then, while events that arrive after it are delivered.
#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_of_many_chunks_is_held_released_across_kill_9_and_discarded() {
    const N: usize = 3_000;
    let receiver = Receiver::start(Behaviour::Slow(1_500)).await;
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--allow-http",
        "--retry-schedule",
        "1h",
        "--max-in-flight-per-webhook",
        "1",
    ];
    let daemon = std::sync::Arc::new(support::start_in(dir.path(), &args));
    let webhook = daemon.create_webhook("org_a", &receiver.url, &["*"]).await;
    let ids: Vec<String> = (0..N).map(|i| format!("b{i}")).collect();
    ingest_many(&daemon, "org_a", ids).await;
    // One attempt at a time, 1.5 s each: nearly all of the backlog is still due. The
    // receiver now answers 410: the next attempt disables the webhook.
    receiver.set(Behaviour::Status(410));
    let disabled = daemon
        .wait_until(
            &format!("/api/webhooks/{webhook}"),
            Duration::from_secs(60),
            |b| !b["disabled"].is_null(),
        )
        .await;
    assert_eq!(disabled["disabled"]["reason"], "gone", "{disabled}");
    // Every delivery not sent before the 410 is held: none left pending or retrying.
    let succeeded = count_status(&daemon, &webhook, "succeeded").await;
    daemon
        .wait_until(
            &format!("/api/webhooks/{webhook}"),
            Duration::from_secs(60),
            |b| b["held_deliveries"].as_u64() == Some((N - succeeded) as u64),
        )
        .await;
    assert!(succeeded < 50, "{succeeded} sent before the 410");
    assert_eq!(count_status(&daemon, &webhook, "pending").await, 0);
    assert_eq!(count_status(&daemon, &webhook, "retrying").await, 0);

    // Enabled with deliver_held; killed right after the answer, mid-sweep.
    receiver.set(Behaviour::Status(200));
    let before = receiver.received().len();
    let (status, body) = daemon
        .call(
            "POST",
            &format!("/api/webhooks/{webhook}/enable"),
            Some(json!({"deliver_held": true})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["held_deliveries"].as_u64().unwrap() > 0,
        "a backlog past one chunk is left to the sweep: {body}"
    );
    let mut daemon = std::sync::Arc::try_unwrap(daemon).ok().unwrap();
    daemon.kill9();
    let daemon = std::sync::Arc::new(support::start_in(dir.path(), &args));
    daemon
        .wait_until(
            &format!("/api/webhooks/{webhook}"),
            Duration::from_secs(60),
            |b| b["held_deliveries"] == 0,
        )
        .await;
    // No attempt starts after the 410 (one at a time here): only that one failed and waits
    // for its next scheduled attempt (1 h); every other held delivery is sent.
    let retrying = count_status(&daemon, &webhook, "retrying").await;
    assert!(retrying <= 1, "{retrying} attempts answered 410");
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let got: std::collections::HashSet<String> = receiver.received()[before..]
            .iter()
            .map(|r| r.json()["event_id"].as_str().unwrap_or_default().to_owned())
            .collect();
        if got.len() >= N - succeeded - retrying {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {} held deliveries sent",
            got.len(),
            N - succeeded - retrying
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        count_status(&daemon, &webhook, "succeeded").await,
        N - retrying
    );

    // Disabled again, with a held backlog made by fan-out; a discarding enable cancels what
    // is held at that moment, and what arrives right after is delivered.
    receiver.set(Behaviour::Status(410));
    daemon
        .call("POST", "/api/events", Some(ticket("org_a", "gone")))
        .await;
    daemon
        .wait_until(
            &format!("/api/webhooks/{webhook}"),
            Duration::from_secs(30),
            |b| !b["disabled"].is_null(),
        )
        .await;
    const M: usize = 1_000;
    ingest_many(&daemon, "org_a", (0..M).map(|i| format!("h{i}")).collect()).await;
    let (_, got) = daemon
        .call("GET", &format!("/api/webhooks/{webhook}"), None)
        .await;
    // Held: the new ones, the one answered 410, and the retrying ones of the first 410s.
    assert_eq!(got["held_deliveries"], M + 1 + retrying, "{got}");
    receiver.set(Behaviour::Status(200));
    let before = receiver.received().len();
    let (status, body) = daemon
        .call(
            "POST",
            &format!("/api/webhooks/{webhook}/enable"),
            Some(json!({"deliver_held": false})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    ingest_many(&daemon, "org_a", (0..20).map(|i| format!("n{i}")).collect()).await;
    daemon
        .wait_until(
            &format!("/api/webhooks/{webhook}"),
            Duration::from_secs(60),
            |b| b["held_deliveries"] == 0,
        )
        .await;
    receiver
        .wait_for(before + 20, Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent: Vec<String> = receiver.received()[before..]
        .iter()
        .map(|r| r.json()["event_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(sent.len(), 20, "only the new events are sent: {sent:?}");
    assert!(sent.iter().all(|id| id.starts_with('n')), "{sent:?}");
    assert_eq!(
        count_status(&daemon, &webhook, "cancelled").await,
        M + 1 + retrying
    );
    let mut daemon = std::sync::Arc::try_unwrap(daemon).ok().unwrap();
    daemon.terminate();
    let (ok, text) = support::check(&daemon.dir);
    assert!(ok, "{text}");
}
