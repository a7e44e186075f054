//! Running under systemd (issue 7, item 1): readiness and watchdog notifications on
//! `NOTIFY_SOCKET`, and the db in `$STATE_DIRECTORY` by default.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::ADMIN_TOKEN;

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
    let mut child = Command::new("sh")
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
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    wait_for(&socket, "STOPPING=1", Duration::from_secs(10));
    assert_eq!(child.wait().unwrap().code(), Some(0));
}
