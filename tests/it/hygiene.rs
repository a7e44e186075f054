//! Connection hygiene (issue 16, item 8) against the real binary: a receiver that closes
//! idle keep-alive connections after 50 ms, fed deliveries 45-55 ms apart, so that some
//! requests go out on a connection the receiver is closing. Each must still succeed on its
//! first attempt (sent again once on a fresh connection within the attempt).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support;

/// A bare HTTP/1.1 receiver: keep-alive, but a connection idle for `idle` is closed (as
/// servers do with their keep-alive timeout). Answers 200 to each request; counts them.
async fn closing_receiver(idle: Duration, served: Arc<AtomicUsize>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let served = Arc::clone(&served);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // Read one request: headers, then Content-Length bytes of body.
                    let request_end = loop {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                            let length: usize = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse().ok())
                                .unwrap_or(0);
                            if buf.len() >= end + 4 + length {
                                break end + 4 + length;
                            }
                        }
                        let mut chunk = [0u8; 8192];
                        let wait = if buf.is_empty() {
                            idle
                        } else {
                            Duration::from_secs(10)
                        };
                        match tokio::time::timeout(wait, stream.read(&mut chunk)).await {
                            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            // Idle too long, closed, or broken: the connection ends.
                            _ => return,
                        }
                    };
                    buf.drain(..request_end);
                    served.fetch_add(1, Ordering::Relaxed);
                    if stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}/hook")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_closing_idle_connections_after_50_ms_costs_no_attempt() {
    const N: usize = 600;
    let served = Arc::new(AtomicUsize::new(0));
    let url = closing_receiver(Duration::from_millis(50), Arc::clone(&served)).await;
    let daemon = support::start(&["--allow-http"]);
    daemon.create_webhook("org_a", &url, &["*"]).await;
    let started = std::time::Instant::now();
    for i in 0..N {
        // 45, 47, …, 55 ms apart: around the receiver's 50 ms idle timeout.
        let at = started + Duration::from_millis((0..i).map(|k| 45 + (k % 6) as u64 * 2).sum());
        tokio::time::sleep_until(at.into()).await;
        let (status, body) = daemon
            .call(
                "POST",
                "/api/events",
                Some(
                    json!({"event_type": "ticket.created", "organization_id": "org_a",
                    "event_id": format!("k{i}"),
                    "data": {"ticket_id": "T", "title": "t", "priority": "p3",
                             "project_id": "p", "created_by": "u"}}),
                ),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }
    let done = daemon
        .wait_until("/api/admin/status", Duration::from_secs(30), |b| {
            b["deliveries"]["succeeded"].as_u64().unwrap_or(0)
                + b["deliveries"]["retrying"].as_u64().unwrap_or(0)
                >= N as u64
        })
        .await;
    assert_eq!(
        done["deliveries"]["succeeded"], N,
        "every delivery succeeded on its first attempt (none waits for a retry): {done}"
    );
    assert!(served.load(Ordering::Relaxed) >= N);
}
