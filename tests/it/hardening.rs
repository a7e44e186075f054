//! API hardening (issue 5, item 7): slow clients are cut off, connections are capped, heads
//! and bodies are bounded with JSON errors, each key is rate limited, and state-changing
//! calls leave an audit line naming the key, never the token.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{self, ADMIN_TOKEN};

/// Sends `bytes` one byte a second until the server closes the connection (or `limit`);
/// returns how long the server kept it open.
async fn trickle(addr: std::net::SocketAddr, bytes: &[u8], limit: Duration) -> Duration {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    for byte in bytes.iter().cycle() {
        if started.elapsed() > limit {
            break;
        }
        if stream.write_all(&[*byte]).await.is_err() {
            break;
        }
        let mut buf = [0u8; 4096];
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) | Err(_) => {}
        }
    }
    started.elapsed()
}

/// A slowloris client (one byte a second, head never finished) is disconnected at the read
/// timeout, and other clients are answered at once meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn a_slowloris_client_is_cut_off_and_others_are_served() {
    let daemon = support::start(&["--allow-http", "--api-read-timeout", "2s"]);
    let addr = daemon.addr;
    let slow = tokio::spawn(async move {
        trickle(
            addr,
            b"POST /api/events HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            Duration::from_secs(20),
        )
        .await
    });
    for _ in 0..5 {
        let started = Instant::now();
        let (status, _) = daemon.call("GET", "/api/webhooks", None).await;
        assert_eq!(status, 200);
        assert!(started.elapsed() < Duration::from_millis(500));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let held = slow.await.unwrap();
    assert!(
        held < Duration::from_secs(6),
        "the slow client was held {held:?} with --api-read-timeout 2s"
    );
}

/// Without a valid token, a body is never read: a 1 MiB upload announced by a client with a
/// wrong token is answered 401 at once, before any of it arrives.
#[tokio::test(flavor = "multi_thread")]
async fn a_body_is_not_read_before_the_token_is_checked() {
    let daemon = support::start(&["--allow-http", "--api-read-timeout", "5s"]);
    let mut stream = TcpStream::connect(daemon.addr).await.unwrap();
    let head = "POST /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\nContent-Type: application/json\r\nContent-Length: 1048000\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf))
        .await
        .expect("answered before the body")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// A client that sends its head but trickles its body gets 408 at the read timeout.
#[tokio::test(flavor = "multi_thread")]
async fn a_trickled_body_gets_408_at_the_read_timeout() {
    let daemon = support::start(&["--allow-http", "--api-read-timeout", "2s"]);
    let mut stream = TcpStream::connect(daemon.addr).await.unwrap();
    let head = format!(
        "POST /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while started.elapsed() < Duration::from_secs(10) {
        let _ = stream.write_all(b" ").await;
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
                    break;
                }
            }
            Err(_) => {}
        }
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"request_timeout\""), "{text}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// With `--max-connections 2`, two stuck clients hold both slots; a third client is served
/// as soon as the read timeout frees one.
#[tokio::test(flavor = "multi_thread")]
async fn the_connection_cap_holds_and_frees_at_the_read_timeout() {
    let daemon = support::start(&[
        "--allow-http",
        "--api-read-timeout",
        "2s",
        "--max-connections",
        "2",
    ]);
    let mut stuck = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(daemon.addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\n")
            .await
            .unwrap();
        stuck.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let (status, _) = daemon.call("GET", "/api/webhooks", None).await;
    let waited = started.elapsed();
    assert_eq!(status, 200);
    assert!(
        waited > Duration::from_millis(1000) && waited < Duration::from_secs(5),
        "the third client waited {waited:?}"
    );
}

/// Oversized heads get our JSON error shape: 414 for a 100 KB path, 431 for big headers.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_heads_get_json_errors() {
    let daemon = support::start(&["--allow-http"]);
    let long_path = format!("/api/webhooks/{}", "a".repeat(20_000));
    let (status, body) = daemon.call("GET", &long_path, None).await;
    assert_eq!(status, 414, "{body}");
    assert_eq!(body["error"]["code"], "uri_too_long");
    // Past 64 KiB no `http::Uri` can hold the target: hyper answers 414 itself, bodiless.
    let mut stream = TcpStream::connect(daemon.addr).await.unwrap();
    let head = format!(
        "GET /api/webhooks/{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(100_000)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 414"), "{text}");
    // ... in our JSON shape all the same (`server::parse_errors`).
    assert!(text.contains("content-type: application/json"), "{text}");
    assert!(text.contains(r#""code":"uri_too_long""#), "{text}");
    let (status, _) = daemon.call("GET", "/api/webhooks", None).await;
    assert_eq!(status, 200, "the daemon still serves");
    let big = "b".repeat(40_000);
    let (status, bytes) = daemon
        .raw_with_header("GET", "/api/webhooks", &format!("Bearer {big}"))
        .await;
    let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(status, 431, "{body}");
    assert_eq!(body["error"]["code"], "headers_too_large");
}

/// Sends `head` then `body` on a new connection and reads the whole answer (the connection
/// closed by the server, or 10 s).
async fn exchange(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> (String, bool) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let sent = stream.write_all(body).await.is_ok();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    (String::from_utf8_lossy(&answer).into_owned(), sent)
}

/// A control byte in a header is refused before any handler by hyper's parser: the answer is
/// our JSON 400 all the same, not hyper's bare one.
#[tokio::test(flavor = "multi_thread")]
async fn a_control_byte_in_a_header_gets_a_json_400() {
    let daemon = support::start(&["--allow-http"]);
    let (answer, _) = exchange(
        daemon.addr,
        &format!("GET /api/webhooks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nX-Note: a\u{1}b\r\n\r\n"),
        b"",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("content-type: application/json"),
        "{answer}"
    );
    let body: serde_json::Value =
        serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "bad_request", "{body}");
    let (status, _) = daemon.call("GET", "/api/webhooks", None).await;
    assert_eq!(status, 200, "the daemon still serves");
}

/// A body over `--max-body` is read and thrown away, then answered 413 in JSON: an ordinary
/// client, still sending when the answer comes, reads it instead of a broken pipe. Past
/// `DRAIN_MAX_BYTES` (declared), the answer comes at once and the connection closes.
#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_body_gets_a_readable_413() {
    let daemon = support::start(&["--allow-http", "--max-body", "65536"]);
    let body = vec![b'x'; 4 * 1024 * 1024];
    for declared in [true, false] {
        let head = if declared {
            format!("POST /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n", body.len())
        } else {
            format!("POST /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n")
        };
        let payload = if declared {
            body.clone()
        } else {
            let mut chunked = format!("{:x}\r\n", body.len()).into_bytes();
            chunked.extend_from_slice(&body);
            chunked.extend_from_slice(b"\r\n0\r\n\r\n");
            chunked
        };
        let (answer, sent) = exchange(daemon.addr, &head, &payload).await;
        assert!(sent, "the whole body could be sent (declared: {declared})");
        assert!(
            answer.starts_with("HTTP/1.1 413"),
            "declared {declared}: {answer}"
        );
        assert!(answer.contains(r#""code":"payload_too_large""#), "{answer}");
    }
    let (status, body) = daemon.call("GET", "/api/events", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"].as_array().unwrap().len(),
        0,
        "nothing was accepted"
    );
}

/// Each key has its own budget: past it, 429 with Retry-After; another key is unaffected.
#[tokio::test(flavor = "multi_thread")]
async fn each_key_is_rate_limited_with_retry_after() {
    let daemon = support::start(&["--allow-http", "--rate-limit", "5"]);
    let (status, key) = daemon
        .call(
            "POST",
            "/api/keys",
            Some(json!({"organization_id": "org_a"})),
        )
        .await;
    assert_eq!(status, 201);
    let key = key["key"].as_str().unwrap().to_owned();
    let mut limited = None;
    for _ in 0..30 {
        let (status, headers, body) = daemon
            .request_with_headers("GET", "/api/webhooks", &key)
            .await;
        if status == 429 {
            limited = Some((headers, body));
            break;
        }
        assert_eq!(status, 200, "{body}");
    }
    let (headers, body) = limited.expect("30 quick calls with --rate-limit 5 must be limited");
    assert!(body.contains("\"rate_limited\""), "{body}");
    let retry_after: u64 = headers
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    // Failed tokens are charged to the client's address, not to any key: past the budget,
    // guessing gets 429 instead of 401.
    let mut codes = Vec::new();
    for i in 0..12 {
        let (status, _, _) = daemon
            .request_with_headers("GET", "/api/webhooks", &format!("pwk_guess_{i}"))
            .await;
        codes.push(status);
    }
    assert!(codes.contains(&401) && codes.contains(&429), "{codes:?}");
    assert!(daemon
        .log_text()
        .contains("rejected: missing or invalid token"));
    // The admin token has its own budget (the key's calls above did not spend it).
    let (status, _) = daemon.call("GET", "/api/webhooks", None).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let (status, _, _) = daemon
        .request_with_headers("GET", "/api/webhooks", &key)
        .await;
    assert_eq!(status, 200, "the budget refills");
}

/// State-changing calls are logged as audit lines naming the principal (admin or the key's
/// id), the method, the path and the status; never the token.
#[tokio::test(flavor = "multi_thread")]
async fn state_changing_calls_leave_audit_lines_without_tokens() {
    let daemon = support::start(&["--allow-http"]);
    let (_, key) = daemon
        .call(
            "POST",
            "/api/keys",
            Some(json!({"organization_id": "org_a"})),
        )
        .await;
    let key_id = key["id"].as_str().unwrap().to_owned();
    let key_text = key["key"].as_str().unwrap().to_owned();
    let (status, webhook) = daemon
        .call_as(
            &key_text,
            "POST",
            "/api/webhooks",
            Some(json!({"url": "http://127.0.0.1:9/h", "events": ["*"]})),
        )
        .await;
    assert_eq!(status, 201, "{webhook}");
    let (status, _) = daemon
        .call_as(
            &key_text,
            "DELETE",
            &format!("/api/webhooks/{}", webhook["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, 204);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = daemon.log_text();
    let audit: Vec<&str> = log.lines().filter(|l| l.contains("audit")).collect();
    let principal = format!("key:{key_id}");
    assert!(
        audit
            .iter()
            .any(|l| l.contains("principal=admin") && l.contains("/api/keys") && l.contains("201")),
        "{audit:#?}"
    );
    assert!(
        audit
            .iter()
            .any(|l| l.contains(&principal) && l.contains("POST") && l.contains("/api/webhooks")),
        "{audit:#?}"
    );
    assert!(
        audit
            .iter()
            .any(|l| l.contains(&principal) && l.contains("DELETE") && l.contains("204")),
        "{audit:#?}"
    );
    assert!(!log.contains(&key_text) && !log.contains(ADMIN_TOKEN));
}
