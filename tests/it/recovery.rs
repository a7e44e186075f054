//! Crash and shutdown: nothing accepted is lost.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{self, Behaviour, Receiver};

fn event(i: usize) -> serde_json::Value {
    json!({"event_id": format!("evt_crash_{i}"), "event_type": "system.incident", "organization_id": "org_a",
           "data": {"incident_id": format!("INC-{i}"), "severity": "major", "affected_services": ["api"], "status": "investigating"}})
}

/// The event ids of the requests that arrived after `since`.
fn event_ids_since(received: &[support::Received], since: Instant) -> HashSet<String> {
    received
        .iter()
        .filter(|r| r.at >= since)
        .map(|r| r.header("x-palo-event-id"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_with_pending_retries_and_attempts_in_flight_loses_nothing() {
    const EVENTS: usize = 20;
    let flags = [
        "--allow-http",
        "--retry-schedule",
        "3s,3s,3s,3s",
        "--attempt-timeout",
        "10s",
    ];
    let mut daemon = support::start(&flags);
    let failing = Receiver::start(Behaviour::Status(500)).await;
    let hanging = Receiver::start(Behaviour::Hang).await;
    daemon.create_webhook("org_a", &failing.url, &["*"]).await;
    daemon
        .create_webhook("org_a", &hanging.url, &["system.incident"])
        .await;
    for i in 0..EVENTS {
        let (status, body) = daemon.call("POST", "/api/events", Some(event(i))).await;
        assert_eq!((status, body["deliveries"].as_u64()), (202, Some(2)));
    }
    // Every first attempt to `failing` failed (retries pending); attempts to `hanging` are in flight.
    failing.wait_for(EVENTS, Duration::from_secs(20)).await;
    hanging.wait_for(1, Duration::from_secs(10)).await;
    let dir = daemon.dir.clone();
    daemon.kill9(); // `daemon` keeps owning the temp dir until the end of the test.

    failing.set(Behaviour::Status(200));
    hanging.set(Behaviour::Status(200));
    let restarted_at = Instant::now();
    let restarted = support::start_in(&dir, &flags);
    let deadline = Instant::now() + Duration::from_secs(40);
    let want: HashSet<String> = (0..EVENTS).map(|i| format!("evt_crash_{i}")).collect();
    loop {
        let a = event_ids_since(&failing.received(), restarted_at);
        let b = event_ids_since(&hanging.received(), restarted_at);
        if a.is_superset(&want) && b.is_superset(&want) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after restart: {} of {EVENTS} to the failing receiver, {} to the hanging one",
            a.len(),
            b.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..EVENTS {
        let body = restarted
            .wait_until(
                &format!("/api/events/evt_crash_{i}"),
                Duration::from_secs(10),
                |b| {
                    b["deliveries"]
                        .as_array()
                        .is_some_and(|d| d.iter().all(|d| d["status"] == "succeeded"))
                },
            )
            .await;
        assert_eq!(body["deliveries"].as_array().unwrap().len(), 2);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_the_attempt_in_flight_logs_it_and_exits_0() {
    let flags = [
        "--allow-http",
        "--retry-schedule",
        "1h",
        "--attempt-timeout",
        "2s",
    ];
    let mut daemon = support::start(&flags);
    let receiver = Receiver::start(Behaviour::Hang).await;
    let webhook = daemon.create_webhook("org_a", &receiver.url, &["*"]).await;
    daemon.call("POST", "/api/events", Some(event(1))).await;
    receiver.wait_for(1, Duration::from_secs(10)).await;
    let started = Instant::now();
    assert_eq!(daemon.terminate(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        started.elapsed()
    );
    let dir = daemon.dir.clone();
    let _tempdir_owner = daemon;

    let restarted = support::start_in(&dir, &flags);
    let (_, page) = restarted
        .call("GET", &format!("/api/webhooks/{webhook}/deliveries"), None)
        .await;
    let delivery = &page["data"][0];
    assert_eq!(
        delivery["attempt_count"], 1,
        "the in-flight attempt was finished and logged: {page}"
    );
    assert_eq!(delivery["status"], "retrying");
    let id = delivery["id"].as_str().unwrap();
    let (_, full) = restarted
        .call("GET", &format!("/api/deliveries/{id}"), None)
        .await;
    assert_eq!(full["attempts"][0]["error"], "timeout");
}

/// Regression: SIGTERM waited without limit for a client that never finished its request.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_a_stuck_client_request_still_exits_within_the_timeout() {
    use tokio::io::AsyncWriteExt;
    let mut daemon = support::start(&["--shutdown-timeout", "1s"]);
    let mut stuck = tokio::net::TcpStream::connect(daemon.addr).await.unwrap();
    stuck
        .write_all(b"POST /api/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    assert_eq!(daemon.terminate(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        started.elapsed()
    );
    drop(stuck);
}

/// Every acknowledged id reached `receiver` (answered 2xx or not) within `timeout`.
async fn all_arrive(receiver: &Receiver, ids: &[String], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let got: HashSet<String> = receiver
            .received()
            .iter()
            .map(|r| r.header("x-palo-event-id"))
            .collect();
        let missing = ids.iter().filter(|id| !got.contains(*id)).count();
        if missing == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} acknowledged events never arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_load_exits_0_within_the_timeout_and_loses_nothing() {
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, Mutex};
    let flags = [
        "--allow-http",
        "--retry-schedule",
        "1s,1s,1s,1s",
        "--attempt-timeout",
        "10s",
        "--shutdown-timeout",
        "3s",
    ];
    let mut daemon = support::start(&flags);
    let fast = Receiver::start(Behaviour::Status(200)).await;
    let hanging = Receiver::start(Behaviour::Hang).await;
    for receiver in [&fast, &hanging] {
        daemon.create_webhook("org_t", &receiver.url, &["*"]).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let load = tokio::spawn(crate::torture::load(
        daemon.addr,
        0,
        8,
        Arc::clone(&stop),
        Arc::clone(&acked),
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let started = Instant::now();
    let code = tokio::task::spawn_blocking(move || {
        let code = daemon.terminate();
        (code, daemon)
    })
    .await
    .unwrap();
    let (code, daemon) = code;
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = load.await;
    assert_eq!(code, Some(0), "SIGTERM under load exits 0");
    assert!(
        took < Duration::from_secs(6),
        "shutdown took {took:?} with --shutdown-timeout 3s"
    );
    let acked: Vec<String> = acked.lock().unwrap().clone();
    assert!(!acked.is_empty());

    // Attempts abandoned to the hanging receiver resume after restart; nothing is lost.
    hanging.set(Behaviour::Status(200));
    let dir = daemon.dir.clone();
    let restarted = support::start_in(&dir, &flags);
    all_arrive(&fast, &acked, Duration::from_secs(30)).await;
    all_arrive(&hanging, &acked, Duration::from_secs(30)).await;
    drop(restarted);
    let (ok, report) = support::check(&dir);
    assert!(ok, "{report}");
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_signal_exits_at_once_and_loses_nothing() {
    let flags = [
        "--allow-http",
        "--retry-schedule",
        "1s",
        "--attempt-timeout",
        "30s",
        "--shutdown-timeout",
        "30s",
    ];
    let mut daemon = support::start(&flags);
    let hanging = Receiver::start(Behaviour::Hang).await;
    daemon.create_webhook("org_a", &hanging.url, &["*"]).await;
    let (status, _) = daemon.call("POST", "/api/events", Some(event(7))).await;
    assert_eq!(status, 202);
    hanging.wait_for(1, Duration::from_secs(10)).await;
    let pid = daemon.pid().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let code = tokio::task::spawn_blocking(move || {
        let code = daemon.terminate(); // The second SIGTERM.
        (code, daemon)
    })
    .await
    .unwrap();
    let (code, daemon) = code;
    assert_eq!(code, Some(130), "a second signal exits at once with 130");
    assert!(started.elapsed() < Duration::from_secs(3));
    hanging.set(Behaviour::Status(200));
    let since = Instant::now();
    let restarted = support::start_in(&daemon.dir, &flags);
    restarted
        .wait_until("/api/events/evt_crash_7", Duration::from_secs(20), |b| {
            b["deliveries"][0]["status"] == "succeeded"
        })
        .await;
    assert!(event_ids_since(&hanging.received(), since).contains("evt_crash_7"));
}

file_only! {
/// `check` opens the file read-only: on a cleanly closed file it changes no byte. A file
/// left by kill -9 needs redb's recovery first, which `check` says it does.
#[tokio::test(flavor = "multi_thread")]
async fn check_changes_nothing_in_a_cleanly_closed_file() {
    let mut daemon = support::start(&["--allow-http", "--retry-schedule", "1h"]);
    daemon
        .create_webhook("org_a", "http://127.0.0.1:9/hook", &["*"])
        .await;
    let (status, body) = daemon
        .call(
            "POST",
            "/api/events",
            Some(
                serde_json::json!({"event_type": "ticket.resolved", "organization_id": "org_a",
                "data": {"ticket_id": "T-1", "resolved_by": "u", "resolution_time_hours": 1}}),
            ),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    daemon.kill9();
    let dir = daemon.dir.clone();
    let (ok, report) = support::check(&dir);
    assert!(ok, "{report}");
    assert!(report.contains("not closed cleanly"), "{report}");

    let file = dir.join("palo.redb");
    let before = std::fs::read(&file).unwrap();
    let (ok, report) = support::check(&dir);
    assert!(ok, "{report}");
    assert!(!report.contains("not closed cleanly"), "{report}");
    assert!(report.contains("events 1"), "{report}");
    assert!(
        before == std::fs::read(&file).unwrap(),
        "check wrote to the file"
    );
    drop(daemon);
}
}
