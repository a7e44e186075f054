//! Ordering by key (issue 16): with `ordering: "key"`, deliveries of one key reach the
//! receiver in ingest order, across failures, retries and a kill -9; different keys go
//! concurrently.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{self, flaky_fails, Behaviour, Daemon, Receiver, SECRET};

/// Events per run, and keys they are spread over (event `n` has key `n % KEYS`).
pub const EVENTS: usize = 200;
pub const KEYS: usize = 20;
/// The receiver answers 500 to about this share of first and second attempts.
pub const FAIL_PERCENT: u64 = 30;

pub fn event(n: usize) -> Value {
    json!({"event_id": format!("o-{n}"), "event_type": "ticket.status_changed", "organization_id": "org_k",
           "data": {"ticket_id": format!("T-{}", n % KEYS), "old_status": "a", "new_status": format!("s{n}"),
                    "changed_by": "u"}})
}

pub async fn ordered_webhook(daemon: &Daemon, url: &str) -> String {
    let (status, created) = daemon
        .call(
            "POST",
            "/api/webhooks",
            Some(
                json!({"url": url, "events": ["*"], "secret": SECRET, "organization_id": "org_k",
                        "ordering": "key"}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["ordering"], "key");
    created["id"].as_str().unwrap().to_owned()
}

/// The event number of a received request.
fn number(r: &support::Received) -> usize {
    r.json()["event_id"].as_str().unwrap()[2..].parse().unwrap()
}

/// Waits until every event was answered 2xx at least once.
pub async fn wait_all_succeeded(receiver: &Receiver, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let done: HashSet<usize> = receiver
            .received()
            .iter()
            .filter(|r| !flaky_fails(&r.headers, FAIL_PERCENT))
            .map(number)
            .collect();
        if done.len() == EVENTS {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {EVENTS} events succeeded",
            done.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// No request overtook: when event `n` of a key arrived, every earlier event of that key
/// had already been answered 2xx (the receiver answers at once, so arrival order is the
/// order the daemon learnt the outcomes in). Repeats are allowed (at-least-once). Also
/// checks that keys overlapped in time. Returns how many requests arrived.
pub fn assert_in_order_per_key(receiver: &Receiver) -> usize {
    let mut got = receiver.received();
    got.sort_by_key(|r| r.at);
    let mut succeeded: HashSet<usize> = HashSet::new();
    for r in &got {
        let n = number(r);
        for earlier in (n % KEYS..n).step_by(KEYS) {
            assert!(
                succeeded.contains(&earlier),
                "event {n} (key T-{}) arrived before event {earlier} had succeeded",
                n % KEYS
            );
        }
        if !flaky_fails(&r.headers, FAIL_PERCENT) {
            succeeded.insert(n);
        }
    }
    assert_eq!(succeeded.len(), EVENTS);
    // Different keys went concurrently: the first 40 requests span many keys.
    let early: HashSet<usize> = got.iter().take(40).map(|r| number(r) % KEYS).collect();
    assert!(
        early.len() >= 10,
        "only {} keys in the first 40 requests",
        early.len()
    );
    got.len()
}

#[tokio::test(flavor = "multi_thread")]
async fn deliveries_of_a_key_arrive_in_ingest_order_across_failures_and_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--allow-http",
        "--retry-schedule",
        "300ms,300ms,300ms,300ms",
    ];
    let mut daemon = support::start_in(dir.path(), &args);
    let receiver = Receiver::start(Behaviour::Flaky(FAIL_PERCENT)).await;
    let webhook = ordered_webhook(&daemon, &receiver.url).await;
    for n in 0..EVENTS {
        let (status, body) = daemon.call("POST", "/api/events", Some(event(n))).await;
        assert_eq!(status, 202, "{body}");
    }
    // The default key is data.ticket_id.
    let (_, page) = daemon
        .call(
            "GET",
            &format!("/api/webhooks/{webhook}/deliveries?limit=1"),
            None,
        )
        .await;
    assert!(page["data"][0]["ordering_key"]
        .as_str()
        .unwrap()
        .starts_with("T-"));
    receiver.wait_for(EVENTS / 3, Duration::from_secs(30)).await;
    daemon.kill9();
    let daemon = support::start_in(dir.path(), &args);
    wait_all_succeeded(&receiver, Duration::from_secs(90)).await;
    let requests = assert_in_order_per_key(&receiver);
    eprintln!("ordering: {EVENTS} events over {KEYS} keys, {requests} requests, kill -9 mid-run");
    drop(daemon);
    let (ok, report) = support::check(dir.path());
    assert!(ok, "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_explicit_ordering_key_wins_and_unordered_webhooks_do_not_wait() {
    let daemon = support::start(&["--allow-http", "--retry-schedule", "1h"]);
    // A receiver that fails the first event of the key: the second waits behind it on the
    // ordered webhook, not on the unordered one.
    let ordered = Receiver::start(Behaviour::Status(503)).await;
    let unordered = Receiver::start(Behaviour::Status(503)).await;
    let ordered_id = ordered_webhook(&daemon, &ordered.url).await;
    daemon.create_webhook("org_k", &unordered.url, &["*"]).await;
    for (n, key) in [(0, "K"), (1, "K"), (2, "other")] {
        let mut body = event(n);
        body["ordering_key"] = json!(key);
        let (status, answer) = daemon.call("POST", "/api/events", Some(body)).await;
        assert_eq!(status, 202, "{answer}");
    }
    unordered.wait_for(3, Duration::from_secs(10)).await;
    ordered.wait_for(2, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got: HashMap<usize, usize> = ordered.received().iter().fold(HashMap::new(), |mut m, r| {
        *m.entry(number(r)).or_default() += 1;
        m
    });
    assert_eq!(got.get(&0), Some(&1));
    assert_eq!(got.get(&2), Some(&1), "another key goes");
    assert_eq!(
        got.get(&1),
        None,
        "event 1 waits behind event 0 (same key K)"
    );
    // It waits as pending, without an attempt.
    let (_, page) = daemon
        .call(
            "GET",
            &format!("/api/deliveries?organization_id=org_k&webhook_id={ordered_id}&limit=10"),
            None,
        )
        .await;
    let waiting = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["event_id"] == "o-1")
        .unwrap()
        .clone();
    assert_eq!(waiting["status"], "pending", "{waiting}");
    assert_eq!(waiting["attempt_count"], 0, "{waiting}");
    assert_eq!(waiting["ordering_key"], "K");
    // Bad keys are refused.
    for bad in [
        json!(""),
        json!("x".repeat(257)),
        json!("a\u{7}b"),
        json!(5),
    ] {
        let mut body = event(9);
        body["ordering_key"] = bad.clone();
        let (status, answer) = daemon.call("POST", "/api/events", Some(body)).await;
        assert_eq!(status, 422, "{bad}: {answer}");
    }
}

/// `ordering_hold_max` lets later deliveries of a key pass a failing one after the hold,
/// and the one passed keeps its own retry schedule (regression, new-user pass: when the
/// delivery that passed it ended, the failing one was made due at once, spending a
/// scheduled attempt hours early).
#[tokio::test(flavor = "multi_thread")]
async fn a_hold_max_lets_the_key_go_on_without_hurrying_the_one_it_passed() {
    let daemon = support::start(&["--allow-http", "--retry-schedule", "1h"]);
    // The first event's deliveries fail; the others succeed.
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let failing = Receiver::start(Behaviour::Status(503)).await;
    let (status, created) = daemon
        .call(
            "POST",
            "/api/webhooks",
            Some(json!({"url": failing.url, "events": ["*"], "secret": SECRET, "organization_id": "org_k",
                        "ordering": "key", "ordering_hold_max": "1s"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let (status, answer) = daemon.call("POST", "/api/events", Some(event(0))).await;
    assert_eq!(status, 202, "{answer}");
    failing.wait_for(1, Duration::from_secs(10)).await;
    // Now the receiver answers 200: event 20 (same key T-0) waits, then passes after 1 s.
    let (status, _) = daemon
        .call(
            "PATCH",
            &format!("/api/webhooks/{id}"),
            Some(json!({"url": receiver.url})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = daemon.call("POST", "/api/events", Some(event(20))).await;
    assert_eq!(status, 202);
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].json()["event_id"], "o-20");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, page) = daemon
        .call("GET", &format!("/api/webhooks/{id}/deliveries"), None)
        .await;
    let first = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["event_id"] == "o-0")
        .unwrap()
        .clone();
    assert_eq!(first["attempt_count"], 1, "{first}");
    assert_eq!(first["status"], "retrying", "{first}");
    let next = first["next_attempt_at"].as_str().unwrap();
    let next_s = time::OffsetDateTime::parse(next, &time::format_description::well_known::Rfc3339)
        .unwrap()
        .unix_timestamp();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        next_s - now > 3000,
        "its retry was brought forward: {first}"
    );
    assert_eq!(
        receiver.received().len(),
        1,
        "{:?}",
        receiver.received().len()
    );
}
