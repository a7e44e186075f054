//! Several daemons on one PostgreSQL database (issue 14, item 3). PostgreSQL only: compiled
//! into `tests/postgres.rs`, not into `tests/it`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{self, Behaviour, Daemon, Receiver, STORE_URL_FILE};

/// How long a request to the receivers is in flight (ms): two attempts of one delivery that
/// arrive closer than this overlapped.
const IN_FLIGHT_MS: u64 = 150;

fn event(i: usize) -> Value {
    json!({"event_id": format!("c-{i}"), "event_type": "ticket.created", "organization_id": "org_c",
           "data": {"ticket_id": format!("T-{i}"), "title": "t", "priority": "p3",
                    "project_id": "p", "created_by": "u"}})
}

/// A daemon in its own directory on the database `url`.
fn start_on(url: &str, dir: &std::path::Path) -> Daemon {
    start_on_with(url, dir, &[])
}

/// [`start_on`] with more flags.
fn start_on_with(url: &str, dir: &std::path::Path, extra: &[&str]) -> Daemon {
    std::fs::write(dir.join(STORE_URL_FILE), url).unwrap();
    let mut args = vec!["--allow-http", "--attempt-timeout", "2s"];
    args.extend_from_slice(extra);
    support::start_in(dir, &args)
}

async fn send(daemon: &Daemon, i: usize) {
    let (status, body) = daemon.call("POST", "/api/events", Some(event(i))).await;
    assert_eq!(status, 202, "event {i}: {body}");
}

async fn serving(daemon: &Daemon) -> HashSet<String> {
    let (status, body) = daemon.call("GET", "/api/admin/status", None).await;
    assert_eq!(status, 200, "{body}");
    body["cluster"]["serving_webhooks"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Three daemons, three receivers, load spread over the daemons, one daemon killed with -9
/// mid-run and restarted later: every accepted event reaches every webhook, no delivery is
/// ever in flight twice at once, and the dead daemon's webhooks resume within the takeover
/// bound (lease TTL + one tick).
#[tokio::test(flavor = "multi_thread")]
async fn three_daemons_share_the_work_and_survive_a_kill_9() {
    let url = support::pg_database();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut daemons: Vec<Daemon> = dirs.iter().map(|d| start_on(&url, d.path())).collect();
    let receivers = [
        Receiver::start(Behaviour::Slow(IN_FLIGHT_MS)).await,
        Receiver::start(Behaviour::Slow(IN_FLIGHT_MS)).await,
        Receiver::start(Behaviour::Slow(IN_FLIGHT_MS)).await,
    ];
    // Two webhooks per receiver, made on different daemons: every daemon sees them all.
    let mut webhooks = Vec::new();
    for (i, receiver) in receivers.iter().enumerate() {
        for j in 0..2 {
            let url = format!("{}/r{i}/w{j}", receiver.url);
            webhooks.push(
                daemons[(i + j) % 3]
                    .create_webhook("org_c", &url, &["*"])
                    .await,
            );
        }
    }
    // Every webhook is served by exactly one daemon once the leases settle.
    let started = Instant::now();
    loop {
        let mut all = Vec::new();
        for d in &daemons {
            all.extend(serving(d).await);
        }
        let unique: HashSet<&String> = all.iter().collect();
        if all.len() == webhooks.len() && unique.len() == webhooks.len() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "leases did not settle: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let victim_webhooks = serving(&daemons[1]).await;
    let mut sent = 0;
    for _ in 0..60 {
        send(&daemons[sent % 3], sent).await;
        sent += 1;
    }
    daemons[1].kill9();
    let killed_at = Instant::now();
    // Ingest goes on through the live daemons; events for the victim's webhooks wait.
    for _ in 0..60 {
        send(&daemons[[0, 2][sent % 2]], sent).await;
        sent += 1;
    }
    // The victim's webhooks resume once its leases expire.
    let probe = sent;
    send(&daemons[0], probe).await;
    sent += 1;
    let probe_id = format!("c-{probe}");
    let mut resumed_after = None;
    while resumed_after.is_none() {
        let reached: HashSet<String> = receivers
            .iter()
            .flat_map(|r| r.received())
            .filter(|r| r.json()["event_id"] == probe_id.as_str())
            .map(|r| r.path.clone())
            .collect();
        if reached.len() == webhooks.len() {
            resumed_after = Some(killed_at.elapsed());
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(40),
            "the dead daemon's webhooks ({victim_webhooks:?}) did not resume"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resumed_after = resumed_after.unwrap();
    // Lease TTL (14 s) + one tick (1 s), plus the time the probe took to be sent.
    assert!(
        resumed_after < Duration::from_secs(20),
        "takeover took {resumed_after:?}"
    );
    // The victim comes back (a new daemon id) and takes its share again.
    daemons[1] = start_on(&url, dirs[1].path());
    for _ in 0..60 {
        send(&daemons[sent % 3], sent).await;
        sent += 1;
    }
    // Every event reaches every webhook.
    let expected: HashSet<String> = (0..sent).map(|i| format!("c-{i}")).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut by_path: HashMap<String, HashSet<String>> = HashMap::new();
        for r in receivers.iter().flat_map(|r| r.received()) {
            by_path
                .entry(r.path.clone())
                .or_default()
                .insert(r.json()["event_id"].as_str().unwrap_or("").to_owned());
        }
        let complete = by_path.len() == webhooks.len()
            && by_path.values().all(|events| events.is_superset(&expected));
        if complete {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every event reached every webhook: {:?}",
            by_path
                .iter()
                .map(|(p, e)| (p, expected.difference(e).count()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // No delivery was ever in flight twice at once: attempts of one delivery arrive at
    // least the receiver's answer time apart (a kill's repeat comes after the takeover).
    let mut arrivals: HashMap<String, Vec<(Instant, String)>> = HashMap::new();
    for r in receivers.iter().flat_map(|r| r.received()) {
        arrivals
            .entry(r.header("x-palo-delivery"))
            .or_default()
            .push((r.at, r.header("x-palo-attempt")));
    }
    for (delivery, mut times) in arrivals {
        times.sort();
        for pair in times.windows(2) {
            let gap = pair[1].0.duration_since(pair[0].0);
            assert!(
                gap >= Duration::from_millis(IN_FLIGHT_MS - 20),
                "{delivery}: attempts {} and {} overlapped ({gap:?} apart)",
                pair[0].1,
                pair[1].1
            );
        }
    }
    let (ok, report) = support::check(dirs[0].path());
    assert!(ok, "{report}");
}

/// A node id file copied to a second daemon (a cloned state directory): the two processes
/// notice each other within a few heartbeats, one takes a new id, and every webhook ends up
/// served by exactly one of them.
#[tokio::test(flavor = "multi_thread")]
async fn a_copied_node_id_is_noticed_and_replaced() {
    let url = support::pg_database();
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = start_on(&url, one.path());
    for i in 0..6 {
        first
            .create_webhook("org_c", &format!("http://127.0.0.1:9/{i}"), &["*"])
            .await;
    }
    let id_file = |dir: &std::path::Path| dir.join("palo.redb.node-id");
    let started = Instant::now();
    while !id_file(one.path()).exists() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no node id file"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::fs::copy(id_file(one.path()), id_file(two.path())).unwrap();
    let second = start_on(&url, two.path());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (a, b) = (serving(&first).await, serving(&second).await);
        let (sa, sb) = (
            first.call("GET", "/api/admin/status", None).await.1,
            second.call("GET", "/api/admin/status", None).await.1,
        );
        let distinct = sa["cluster"]["node"] != sb["cluster"]["node"];
        if distinct && a.len() + b.len() == 6 && a.is_disjoint(&b) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still sharing an id or webhooks: {a:?} {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let log = format!("{}{}", first.log_text(), second.log_text());
    assert!(
        log.contains("another process uses this daemon's node id"),
        "the duplicate is logged"
    );
}

/// Ordering by key (issue 16) with two daemons on one database: the daemon that serves the
/// ordered webhook is killed with -9 mid-run; the other takes the webhook over and every
/// key's deliveries still arrive in ingest order (a delivery may repeat, never overtake).
#[tokio::test(flavor = "multi_thread")]
async fn ordering_by_key_holds_when_the_serving_daemon_is_killed() {
    use crate::ordering::{
        assert_in_order_per_key, event, ordered_webhook, wait_all_succeeded, EVENTS, FAIL_PERCENT,
    };
    let url = support::pg_database();
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let fast = ["--retry-schedule", "300ms,300ms,300ms,300ms"];
    let mut daemons: Vec<Daemon> = dirs
        .iter()
        .map(|d| start_on_with(&url, d.path(), &fast))
        .collect();
    let receiver = Receiver::start(Behaviour::Flaky(FAIL_PERCENT)).await;
    let webhook = ordered_webhook(&daemons[0], &receiver.url).await;
    let started = Instant::now();
    let server = loop {
        let mut found = None;
        for (i, d) in daemons.iter().enumerate() {
            if serving(d).await.contains(&webhook) {
                found = Some(i);
            }
        }
        if let Some(i) = found {
            break i;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "nobody serves the webhook"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let survivor = 1 - server;
    // Ingest goes through the survivor, one event after the other: that is ingest order.
    for n in 0..EVENTS {
        let (status, body) = daemons[survivor]
            .call("POST", "/api/events", Some(event(n)))
            .await;
        assert_eq!(status, 202, "{body}");
    }
    receiver.wait_for(EVENTS / 3, Duration::from_secs(30)).await;
    daemons[server].kill9();
    wait_all_succeeded(&receiver, Duration::from_secs(120)).await;
    let requests = assert_in_order_per_key(&receiver);
    eprintln!("ordering, two daemons: {requests} requests, the serving one killed mid-run");
    let (ok, report) = support::check(dirs[survivor].path());
    assert!(ok, "{report}");
}
