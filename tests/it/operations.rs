//! Running under systemd (issue 7, item 1): readiness and watchdog notifications on
//! `NOTIFY_SOCKET`, and the db in `$STATE_DIRECTORY` by default.

file_only! { use std::os::unix::net::UnixDatagram; }
file_only! { use std::process::Stdio; }
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::ADMIN_TOKEN;

file_only! {}

file_only! {
/// Reads notification datagrams until one contains `what` (or panics after `limit`).
fn wait_for(socket: &UnixDatagram, what: &str, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = text.contains(what);
            seen.push(text);
            if done {
                return seen;
            }
        }
    }
    panic!("no {what} within {limit:?}; got {seen:?}");
}
}

file_only! {
/// Started as systemd starts it (`Type=notify`, `WatchdogSec=`, `StateDirectory=`), the
/// daemon puts its db in the state directory, says READY=1 once it serves, feeds the
/// watchdog while its scheduler turns, and says STOPPING=1 on SIGTERM.
#[test]
fn under_systemd_it_notifies_ready_feeds_the_watchdog_and_uses_the_state_directory() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // systemd sets WATCHDOG_PID to the service's pid: `exec` keeps the shell's.
    let child = Command::new("sh")
        .args([
            "-c",
            "WATCHDOG_PID=$$ exec \"$0\" \"$@\"",
            env!("CARGO_BIN_EXE_palo-webhooks"),
            "serve",
            "--listen",
            "127.0.0.1:0",
        ])
        .env("PALO_WEBHOOKS_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("STATE_DIRECTORY", &state)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "1000000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = crate::support::KillOnDrop(child);
    wait_for(&socket, "READY=1", Duration::from_secs(30));
    assert!(
        state.join("palo-webhooks.redb").is_file(),
        "the db is in $STATE_DIRECTORY"
    );
    // WATCHDOG_USEC=1s: fed every 0.5 s while the scheduler turns.
    let started = Instant::now();
    wait_for(&socket, "WATCHDOG=1", Duration::from_secs(5));
    wait_for(&socket, "WATCHDOG=1", Duration::from_secs(5));
    assert!(started.elapsed() < Duration::from_secs(3));
    Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    wait_for(&socket, "STOPPING=1", Duration::from_secs(10));
    assert_eq!(child.0.wait().unwrap().code(), Some(0));
}
}

/// The value of the first sample line of `name` whose labels contain `labels`.
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.split([' ', '{']).next() == Some(name) && l.contains(labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A scrape after a scenario shows its counts: events accepted (a replay not counted),
/// attempts by result, final outcomes, the scheduled backlog, and the store's commits.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_what_happened_and_can_require_a_token() {
    let daemon = crate::support::start(&[
        "--allow-http",
        "--retry-schedule",
        "1h",
        "--metrics-token",
        "metrics_token_0123456789",
    ]);
    let ok = crate::support::Receiver::start(crate::support::Behaviour::Status(200)).await;
    let failing = crate::support::Receiver::start(crate::support::Behaviour::Status(500)).await;
    daemon.create_webhook("org_m", &ok.url, &["*"]).await;
    daemon.create_webhook("org_m", &failing.url, &["*"]).await;
    for i in 0..3 {
        let event = serde_json::json!({"event_id": format!("evt_m_{i}"), "event_type": "ticket.resolved",
            "organization_id": "org_m", "data": {"ticket_id": "T", "resolved_by": "u", "resolution_time_hours": 1}});
        let (status, _) = daemon
            .call("POST", "/api/events", Some(event.clone()))
            .await;
        assert_eq!(status, 202);
        if i == 0 {
            let (status, _) = daemon.call("POST", "/api/events", Some(event)).await;
            assert_eq!(status, 200, "an idempotent replay");
        }
    }
    ok.wait_for(3, Duration::from_secs(10)).await;
    failing.wait_for(3, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (status, _, _) = daemon
        .request_with_headers("GET", "/metrics", "wrong")
        .await;
    assert_eq!(status, 401);
    let (status, headers, text) = daemon
        .request_with_headers("GET", "/metrics", "metrics_token_0123456789")
        .await;
    assert_eq!(status, 200);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let get = |name: &str, labels: &str| {
        sample(&text, name, labels).unwrap_or_else(|| panic!("no {name}{labels} in\n{text}"))
    };
    assert_eq!(get("palo_webhooks_events_accepted_total", ""), 3.0);
    assert_eq!(get("palo_webhooks_attempts_total", "result=\"2xx\""), 3.0);
    assert_eq!(get("palo_webhooks_attempts_total", "result=\"5xx\""), 3.0);
    assert_eq!(
        get(
            "palo_webhooks_deliveries_finished_total",
            "outcome=\"succeeded\""
        ),
        3.0
    );
    assert_eq!(get("palo_webhooks_deliveries_scheduled", ""), 3.0);
    assert_eq!(get("palo_webhooks_deliveries_due", ""), 0.0);
    assert_eq!(get("palo_webhooks_attempts_in_flight", ""), 0.0);
    assert!(get("palo_webhooks_db_size_bytes", "") > 0.0);
    assert_eq!(get("palo_webhooks_attempt_duration_seconds_count", ""), 6.0);
    assert!(get("palo_webhooks_store_commit_duration_seconds_count", "") >= 1.0);
    assert!(text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .all(|l| l.starts_with("palo_webhooks_")));
    // Every metric the Grafana dashboard queries is one this scrape exposes (the purge
    // counter appears once retention has purged something: checked by name in src).
    let dashboard = include_str!("../../packaging/grafana/palo-webhooks-dashboard.json");
    for name in dashboard
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("palo_webhooks_"))
    {
        let family = name
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count");
        assert!(
            text.contains(&format!("# TYPE {family} ")) || family == palo_webhooks::metrics::PURGED,
            "the dashboard queries {name}, which /metrics does not expose"
        );
    }
}

/// SIGHUP reads the config file again and applies its log level at run time; a broken file
/// is refused with an error line and changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_log_level_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "log = \"info\"\nallow_http = true\n").unwrap();
    let daemon = crate::support::start_in(dir.path(), &["--config", config.to_str().unwrap()]);
    let event = |id: &str| {
        serde_json::json!({"event_id": id, "event_type": "ticket.resolved", "organization_id": "org_h",
            "data": {"ticket_id": "T", "resolved_by": "u", "resolution_time_hours": 1}})
    };
    let hup = || {
        Command::new("kill")
            .args(["-HUP", &daemon.pid().to_string()])
            .status()
            .unwrap();
    };
    let wait_log = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !daemon.log_text().contains(what) {
            assert!(
                Instant::now() < deadline,
                "no {what:?} in\n{}",
                daemon.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let (status, _) = daemon
        .call("POST", "/api/events", Some(event("evt_h_1")))
        .await;
    assert_eq!(status, 202);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!daemon.log_text().contains("DEBUG"), "info level at start");

    std::fs::write(&config, "log = \"debug\"\nallow_http = true\n").unwrap();
    hup();
    wait_log("SIGHUP: log filter reloaded");
    daemon
        .call("POST", "/api/events", Some(event("evt_h_2")))
        .await;
    wait_log("event accepted");

    std::fs::write(&config, "log = \"debug\"\nno_such_key = 1\n").unwrap();
    hup();
    wait_log("SIGHUP: settings not reloaded");
    let (status, _) = daemon.call("GET", "/healthz", None).await;
    assert_eq!(status, 200, "the daemon keeps running");
}

/// Retention: with a short `--retention`, old final records go (event, deliveries, attempts,
/// the idempotency key), an old delivery still retrying stays with its event, the purge is
/// counted in /metrics, and the store passes `check` afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn retention_purges_old_final_records_and_keeps_unfinished_ones() {
    let mut daemon = crate::support::start(&[
        "--allow-http",
        "--retry-schedule",
        "1h",
        "--retention",
        "3s",
    ]);
    let ok = crate::support::Receiver::start(crate::support::Behaviour::Status(200)).await;
    let failing = crate::support::Receiver::start(crate::support::Behaviour::Status(500)).await;
    let ok_hook = daemon
        .create_webhook("org_r", &ok.url, &["ticket.created"])
        .await;
    let failing_hook = daemon
        .create_webhook("org_r", &failing.url, &["system.incident"])
        .await;
    let ticket = serde_json::json!({"event_id": "evt_old_done", "event_type": "ticket.created",
        "organization_id": "org_r", "data": {"ticket_id": "T", "title": "t", "priority": "p1",
        "project_id": "p", "created_by": "u"}});
    let incident = serde_json::json!({"event_id": "evt_old_retrying", "event_type": "system.incident",
        "organization_id": "org_r", "data": {"incident_id": "I", "severity": "high",
        "affected_services": ["api"], "status": "open"}});
    for event in [&ticket, &incident] {
        let (status, _) = daemon
            .call("POST", "/api/events", Some(event.clone()))
            .await;
        assert_eq!(status, 202);
    }
    let done = daemon.only_delivery(&ok_hook).await;
    let retrying = daemon.only_delivery(&failing_hook).await;
    ok.wait_for(1, Duration::from_secs(10)).await;
    failing.wait_for(1, Duration::from_secs(10)).await;

    // After the retention (3 s) and a pass (every 1 s here), the finished one is gone.
    daemon
        .wait_until(
            "/api/events/evt_old_done?organization_id=org_r",
            Duration::from_secs(15),
            |b| b["error"]["code"] == "not_found",
        )
        .await;
    let (status, _) = daemon
        .call("GET", &format!("/api/deliveries/{done}"), None)
        .await;
    assert_eq!(status, 404);
    let (_, page) = daemon
        .call("GET", &format!("/api/webhooks/{ok_hook}/deliveries"), None)
        .await;
    assert_eq!(page["data"], serde_json::json!([]));
    // The retrying one stays, with its attempt log and its event.
    let (status, delivery) = daemon
        .call("GET", &format!("/api/deliveries/{retrying}"), None)
        .await;
    assert_eq!(
        (status, delivery["status"].as_str()),
        (200, Some("retrying"))
    );
    assert_eq!(delivery["attempts"].as_array().unwrap().len(), 1);
    let (status, _) = daemon
        .call(
            "GET",
            "/api/events/evt_old_retrying?organization_id=org_r",
            None,
        )
        .await;
    assert_eq!(status, 200);
    // The idempotency window is the retention: the same event_id is a new event now.
    let (status, _) = daemon.call("POST", "/api/events", Some(ticket)).await;
    assert_eq!(status, 202, "accepted anew, not a replay");
    ok.wait_for(2, Duration::from_secs(10)).await;

    let (_, _, text) = daemon.request_with_headers("GET", "/metrics", "").await;
    assert!(sample(&text, "palo_webhooks_purged_total", "kind=\"events\"").unwrap() >= 1.0);
    assert!(sample(&text, "palo_webhooks_purged_total", "kind=\"attempts\"").unwrap() >= 1.0);
    assert!(daemon.log_text().contains("retention: purged"));
    assert_eq!(daemon.terminate(), Some(0));
    let (ok_check, report) = crate::support::check(&daemon.dir);
    assert!(ok_check, "{report}");
}

file_only! {
/// Online backup under ingest load: every event acknowledged before the backup started is in
/// the copy, a second daemon serves the copy, and the copy passes `check`.
#[tokio::test(flavor = "multi_thread")]
async fn an_online_backup_under_load_holds_every_acknowledged_event() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let daemon = Arc::new(crate::support::start(&["--allow-http"]));
    let receiver = crate::support::Receiver::start(crate::support::Behaviour::Status(200)).await;
    daemon.create_webhook("org_bk", &receiver.url, &["*"]).await;
    // (event id, when its 202 arrived)
    let acked: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (daemon, acked, stop) = (Arc::clone(&daemon), Arc::clone(&acked), Arc::clone(&stop));
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("evt_bk_{w}_{i}");
                let event = serde_json::json!({"event_id": id, "event_type": "ticket.created",
                    "organization_id": "org_bk", "data": {"ticket_id": "T", "title": "t",
                    "priority": "p1", "project_id": "p", "created_by": "u"}});
                let (status, _) = daemon.call("POST", "/api/events", Some(event)).await;
                assert_eq!(status, 202);
                acked.lock().unwrap().push((id, Instant::now()));
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let copy_dir = tempfile::tempdir().unwrap();
    let copy = copy_dir.path().join("palo.redb");
    let started = Instant::now();
    let (code, out, err) = {
        let (daemon, copy) = (Arc::clone(&daemon), copy.clone());
        tokio::task::spawn_blocking(move || {
            crate::support::cli_as(
                &daemon,
                ADMIN_TOKEN,
                &["backup", "--out", copy.to_str().unwrap()],
            )
        })
        .await
        .unwrap()
    };
    // Load goes on a little after the backup, then stops.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    assert_eq!(code, 0, "backup failed: {out} {err}");
    assert!(out.contains("check: consistent"), "{out}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the copy holds secrets: owner only");
    }
    let before: Vec<String> = acked
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, at)| *at < started)
        .map(|(id, _)| id.clone())
        .collect();
    let total = acked.lock().unwrap().len();
    assert!(
        before.len() >= 50,
        "only {} events before the backup",
        before.len()
    );
    assert!(total > before.len(), "no load during the backup");
    // An organization key may not take backups.
    let key = daemon.create_key("org_bk").await;
    let (code, _, err) = crate::support::cli_as(
        &daemon,
        &key,
        &[
            "backup",
            "--out",
            copy_dir.path().join("other").to_str().unwrap(),
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("403"), "{err}");
    // An existing file is never overwritten.
    let (code, _, err) = crate::support::cli_as(
        &daemon,
        ADMIN_TOKEN,
        &["backup", "--out", copy.to_str().unwrap()],
    );
    assert_ne!(code, 0);
    assert!(err.contains("exists"), "{err}");

    // Restore: a second daemon on the copy has every event acknowledged before the backup.
    let mut second = crate::support::start_in(copy_dir.path(), &["--allow-http"]);
    for id in &before {
        let (status, body) = second
            .call(
                "GET",
                &format!("/api/events/{id}?organization_id=org_bk"),
                None,
            )
            .await;
        assert_eq!(
            status, 200,
            "{id} acknowledged before the backup is missing: {body}"
        );
    }
    assert_eq!(second.terminate(), Some(0));
    let (ok, report) = crate::support::check(copy_dir.path());
    assert!(ok, "{report}");
    eprintln!(
        "backup under load: {} events acknowledged before it, {total} in all",
        before.len()
    );
}
}

/// `palo-webhooks status`: version, deliveries by status, the backlog, failing webhooks.
#[tokio::test(flavor = "multi_thread")]
async fn status_reports_counts_backlog_and_failure_streaks() {
    let daemon = crate::support::start(&["--allow-http", "--retry-schedule", "1h"]);
    let failing = crate::support::Receiver::start(crate::support::Behaviour::Status(500)).await;
    let ok = crate::support::Receiver::start(crate::support::Behaviour::Status(200)).await;
    let bad_hook = daemon
        .create_webhook("org_s", &failing.url, &["ticket.created"])
        .await;
    daemon
        .create_webhook("org_s", &ok.url, &["ticket.created"])
        .await;
    for i in 0..3 {
        let event = serde_json::json!({"event_id": format!("evt_s_{i}"), "event_type": "ticket.created",
            "organization_id": "org_s", "data": {"ticket_id": "T", "title": "t", "priority": "p1",
            "project_id": "p", "created_by": "u"}});
        let (status, _) = daemon.call("POST", "/api/events", Some(event)).await;
        assert_eq!(status, 202);
    }
    failing.wait_for(3, Duration::from_secs(10)).await;
    ok.wait_for(3, Duration::from_secs(10)).await;
    let status = daemon
        .wait_until("/api/admin/status", Duration::from_secs(10), |b| {
            b["deliveries"]["retrying"] == 3 && b["deliveries"]["succeeded"] == 3
        })
        .await;
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["scheduled_later"], 3);
    assert_eq!(status["due_now"], 0);
    assert!(status["db_size_bytes"].as_u64().unwrap() > 0);
    assert_eq!(
        status["failure_streaks"],
        serde_json::json!([{"webhook_id": bad_hook, "organization_id": "org_s",
                            "url": failing.url, "streak": 3}])
    );
    let (code, out, err) = crate::support::cli_as(&daemon, ADMIN_TOKEN, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("uptime_seconds") && out.contains(&bad_hook),
        "{out}"
    );
    // The streaks table names the streak and the URL.
    let row = out.lines().find(|l| l.contains(&bad_hook)).unwrap();
    assert!(row.contains(" 3 ") && row.contains(&failing.url), "{row}");
    let key = daemon.create_key("org_s").await;
    let (status, _) = daemon.call_as(&key, "GET", "/api/admin/status", None).await;
    assert_eq!(status, 403);
}

/// SIGHUP also reloads the allowed networks: a loopback receiver refused at first is
/// accepted and reached once `allow_network` names it in the config file.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_allowed_networks() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "allow_http = true\n").unwrap();
    let daemon = crate::support::start_strict(&["--config", config.to_str().unwrap()]);
    let receiver = crate::support::Receiver::start(crate::support::Behaviour::Status(200)).await;
    let webhook =
        serde_json::json!({"url": receiver.url, "events": ["*"], "organization_id": "org_n"});
    let (status, body) = daemon
        .call("POST", "/api/webhooks", Some(webhook.clone()))
        .await;
    assert_eq!(status, 422, "loopback is refused by default: {body}");

    std::fs::write(
        &config,
        "allow_http = true\nallow_network = [\"127.0.0.0/8\"]\n",
    )
    .unwrap();
    Command::new("kill")
        .args(["-HUP", &daemon.pid().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemon
        .log_text()
        .contains("SIGHUP: allowed networks reloaded")
    {
        assert!(Instant::now() < deadline, "{}", daemon.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = daemon.call("POST", "/api/webhooks", Some(webhook)).await;
    assert_eq!(status, 201, "{body}");
    let event = serde_json::json!({"event_type": "ticket.resolved", "organization_id": "org_n",
        "data": {"ticket_id": "T", "resolved_by": "u", "resolution_time_hours": 1}});
    let (status, _) = daemon
        .call("POST", "/api/events", Some(event.clone()))
        .await;
    assert_eq!(status, 202);
    receiver.wait_for(1, Duration::from_secs(10)).await;

    // Narrowed again: the next attempt is blocked, although a pooled connection to the
    // receiver is still open from the delivery above.
    std::fs::write(&config, "allow_http = true\nallow_network = []\n").unwrap();
    Command::new("kill")
        .args(["-HUP", &daemon.pid().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon
        .log_text()
        .matches("SIGHUP: allowed networks reloaded")
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "{}", daemon.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, answer) = daemon.call("POST", "/api/events", Some(event)).await;
    assert_eq!(status, 202);
    let event_id = answer["event_id"].as_str().unwrap().to_owned();
    let event = daemon
        .wait_until(
            &format!("/api/events/{event_id}?organization_id=org_n"),
            Duration::from_secs(10),
            |b| b["deliveries"][0]["status"] == "retrying",
        )
        .await;
    let delivery = event["deliveries"][0]["id"].as_str().unwrap();
    let (_, delivery) = daemon
        .call("GET", &format!("/api/deliveries/{delivery}"), None)
        .await;
    assert_eq!(
        delivery["attempts"][0]["error"], "blocked_address",
        "{delivery}"
    );
    assert_eq!(
        receiver.received().len(),
        1,
        "nothing more reached the receiver"
    );
}

file_only! {
/// The copy of a backup interrupted by a crash is removed at the next start.
#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_backups_copy_is_removed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let stale = dir
        .path()
        .join("palo.redb.backup-01JZZZZZZZZZZZZZZZZZZZZZZZ.tmp");
    let unrelated = dir.path().join("palo.redb.keep");
    std::fs::write(&stale, b"half a copy").unwrap();
    std::fs::write(&unrelated, b"not ours").unwrap();
    let daemon = crate::support::start_in(dir.path(), &[]);
    assert!(!stale.exists(), "the stale copy is still there");
    assert!(unrelated.exists());
    // A new db is the owner's only, whatever the umask.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("palo.redb"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(daemon
        .log_text()
        .contains("removed the copy of an interrupted backup"));
}
}
