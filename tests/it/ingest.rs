//! Ingest: idempotency on event_id, and bad input answered with the documented JSON errors
//! while nothing is stored.

use std::time::Duration;

use serde_json::json;

use crate::support::{self, Behaviour, Receiver, ADMIN_TOKEN};

fn created(event_id: &str, title: &str) -> serde_json::Value {
    json!({"event_id": event_id, "event_type": "ticket.created", "organization_id": "org_a",
           "data": {"ticket_id": "T-1", "title": title, "priority": "p1", "project_id": "p", "created_by": "u"}})
}

#[tokio::test(flavor = "multi_thread")]
async fn same_event_id_twice_is_one_event_and_different_content_is_409() {
    let daemon = support::start(&["--allow-http"]);
    let a = Receiver::start(Behaviour::Status(200)).await;
    let b = Receiver::start(Behaviour::Status(200)).await;
    daemon.create_webhook("org_a", &a.url, &["*"]).await;
    daemon
        .create_webhook("org_a", &b.url, &["ticket.created"])
        .await;

    let (status, first) = daemon
        .call("POST", "/api/events", Some(created("evt_same", "x")))
        .await;
    assert_eq!(status, 202);
    assert_eq!(
        (&first["event_id"], &first["deliveries"]),
        (&json!("evt_same"), &json!(2))
    );
    assert_eq!(
        first["delivery_ids"].as_array().unwrap().len(),
        2,
        "{first}"
    );
    let (status, again) = daemon
        .call("POST", "/api/events", Some(created("evt_same", "x")))
        .await;
    assert_eq!(status, 200, "an idempotent replay answers 200");
    assert_eq!(again, first);
    let (status, conflict) = daemon
        .call("POST", "/api/events", Some(created("evt_same", "changed")))
        .await;
    assert_eq!(status, 409);
    assert_eq!(conflict["error"]["code"], "event_id_conflict");

    a.wait_for(1, Duration::from_secs(10)).await;
    b.wait_for(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(a.received().len(), 1);
    assert_eq!(b.received().len(), 1);
    let (_, list) = daemon.call("GET", "/api/events", None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    let (_, event) = daemon.call("GET", "/api/events/evt_same", None).await;
    assert_eq!(event["deliveries"].as_array().unwrap().len(), 2);
    assert_eq!(event["data"]["title"], "x");

    // The same event_id in another organization is another event; the admin must then say which.
    let mut other = created("evt_same", "y");
    other["organization_id"] = json!("org_b");
    let (status, _) = daemon.call("POST", "/api/events", Some(other)).await;
    assert_eq!(status, 202);
    let (status, body) = daemon.call("GET", "/api/events/evt_same", None).await;
    assert_eq!(status, 409);
    assert_eq!(body["error"]["code"], "ambiguous_event_id");
    let (status, body) = daemon
        .call("GET", "/api/events/evt_same?organization_id=org_b", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["title"], "y");
}

async fn expect_error(
    daemon: &support::Daemon,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
    status: u16,
    code: &str,
) -> serde_json::Value {
    let (got, answer) = daemon
        .raw("POST", path, Some(ADMIN_TOKEN), content_type, body.to_vec())
        .await;
    assert_eq!(got, status, "{} -> {answer}", String::from_utf8_lossy(body));
    assert_eq!(answer["error"]["code"], code, "{answer}");
    assert!(answer["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    answer
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_the_documented_json_error_and_stores_nothing() {
    let daemon = support::start(&["--max-body", "4096"]);
    let json = Some("application/json");
    let hook = |extra: &str| {
        format!(
            r#"{{"url":"https://example.com/h","events":["*"],"organization_id":"org_a"{extra}}}"#
        )
    };

    // Webhooks.
    expect_error(
        &daemon,
        "/api/webhooks",
        json,
        b"{\"url\": ",
        400,
        "invalid_json",
    )
    .await;
    let e = expect_error(
        &daemon,
        "/api/webhooks",
        json,
        br#"{"url":"https://e.com","events":"ticket.created","organization_id":"o"}"#,
        422,
        "validation_failed",
    )
    .await;
    assert_eq!(e["error"]["field"], "events");
    let e = expect_error(
        &daemon,
        "/api/webhooks",
        json,
        hook(r#","secret":"short""#).as_bytes(),
        422,
        "validation_failed",
    )
    .await;
    assert_eq!(e["error"]["field"], "secret");
    let e = expect_error(
        &daemon,
        "/api/webhooks",
        json,
        br#"{"url":"http://example.com/h","events":["*"],"organization_id":"org_a"}"#,
        422,
        "validation_failed",
    )
    .await;
    assert_eq!(e["error"]["field"], "url");
    let e = expect_error(
        &daemon,
        "/api/webhooks",
        json,
        br#"{"url":"https://example.com/h","events":["ticket.deleted"],"organization_id":"org_a"}"#,
        422,
        "validation_failed",
    )
    .await;
    assert_eq!(e["error"]["field"], "events");
    // An array of the fields in order is not an object (serde would read it positionally).
    let e = expect_error(
        &daemon,
        "/api/webhooks",
        json,
        br#"["https://example.com/h",["*"],"org_a"]"#,
        422,
        "validation_failed",
    )
    .await;
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("JSON object"),
        "{e}"
    );
    // A missing field is named in `field`.
    let e = expect_error(
        &daemon,
        "/api/webhooks",
        json,
        br#"{"events":["*"],"organization_id":"org_a"}"#,
        422,
        "validation_failed",
    )
    .await;
    assert_eq!(e["error"]["field"], "url", "{e}");
    expect_error(
        &daemon,
        "/api/webhooks",
        json,
        hook(r#","url2":1"#).as_bytes(),
        422,
        "validation_failed",
    )
    .await;
    expect_error(
        &daemon,
        "/api/webhooks",
        None,
        hook("").as_bytes(),
        415,
        "unsupported_media_type",
    )
    .await;
    expect_error(
        &daemon,
        "/api/webhooks",
        Some("text/plain"),
        hook("").as_bytes(),
        415,
        "unsupported_media_type",
    )
    .await;

    // Events.
    let event = |data: &str| {
        format!(r#"{{"event_type":"ticket.resolved","organization_id":"org_a","data":{data}}}"#)
    };
    let good = r#"{"ticket_id":"T","resolved_by":"u","resolution_time_hours":2.5}"#;
    for bad in [
        event(r#"{"ticket_id":"T","resolved_by":"u","resolution_time_hours":NaN}"#),
        event(r#"{"ticket_id":"T","resolved_by":"u","resolution_time_hours":Infinity}"#),
        event(r#"{"ticket_id":"\ud800","resolved_by":"u","resolution_time_hours":1}"#),
        event(r#"{"ticket_id":"T","ticket_id":"U","resolved_by":"u","resolution_time_hours":1}"#),
        format!("{} trailing", event(good)),
    ] {
        expect_error(
            &daemon,
            "/api/events",
            json,
            bad.as_bytes(),
            400,
            "invalid_json",
        )
        .await;
    }
    let mut invalid_utf8 = event(good).into_bytes();
    invalid_utf8.insert(20, 0xff);
    expect_error(
        &daemon,
        "/api/events",
        json,
        &invalid_utf8,
        400,
        "invalid_json",
    )
    .await;
    let e = expect_error(
        &daemon,
        "/api/events",
        json,
        br#"{"event_type":"ticket.deleted","organization_id":"org_a","data":{}}"#,
        422,
        "validation_failed",
    )
    .await;
    assert_eq!(e["error"]["field"], "event_type");
    let e = expect_error(
        &daemon,
        "/api/events",
        json,
        event(r#"{"ticket_id":"T","resolved_by":"u"}"#).as_bytes(),
        422,
        "validation_failed",
    )
    .await;
    assert_eq!(e["error"]["field"], "data.resolution_time_hours");
    let e = expect_error(
        &daemon,
        "/api/events",
        json,
        event(r#"{"ticket_id":5,"resolved_by":"u","resolution_time_hours":1}"#).as_bytes(),
        422,
        "validation_failed",
    )
    .await;
    assert_eq!(e["error"]["field"], "data.ticket_id");
    let e = expect_error(&daemon, "/api/events", json, br#"{"event_type":"ticket.created","organization_id":"org_a","data":{},"event_id":"bad id!"}"#, 422, "validation_failed").await;
    assert_eq!(e["error"]["field"], "event_id");
    expect_error(&daemon, "/api/events", json, br#"{"event_type":"ticket.created","organization_id":"org_a","timestamp":"yesterday","data":{"ticket_id":"T","title":"t","priority":"p","project_id":"p","created_by":"u"}}"#, 422, "validation_failed").await;
    let oversized = event(&format!(
        r#"{{"ticket_id":"{}","resolved_by":"u","resolution_time_hours":1}}"#,
        "x".repeat(5000)
    ));
    expect_error(
        &daemon,
        "/api/events",
        json,
        oversized.as_bytes(),
        413,
        "payload_too_large",
    )
    .await;

    // Nothing was stored.
    let (_, webhooks) = daemon.call("GET", "/api/webhooks", None).await;
    assert_eq!(webhooks["data"].as_array().unwrap().len(), 0, "{webhooks}");
    let (_, events) = daemon.call("GET", "/api/events", None).await;
    assert_eq!(events["data"].as_array().unwrap().len(), 0, "{events}");

    // A leading UTF-8 BOM is ignored; unknown routes and methods answer JSON too.
    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend_from_slice(event(good).as_bytes());
    let (status, _) = daemon
        .raw("POST", "/api/events", Some(ADMIN_TOKEN), json, bom)
        .await;
    assert_eq!(status, 202);
    let (status, body) = daemon.call("GET", "/api/nope", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, body) = daemon.call("PUT", "/api/events", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
    let (status, body) = daemon.call("GET", "/api/webhooks/%FF", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, body) = daemon.call("GET", "/api/webhooks?limit=9999", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_query"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_secret_is_shown_once_and_lists_paginate() {
    let daemon = support::start(&[]);
    let (status, created) = daemon
        .call("POST", "/api/webhooks", Some(json!({"url": "https://example.com/a", "events": ["*"], "organization_id": "org_a"})))
        .await;
    assert_eq!(status, 201);
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.len() >= 32);
    let id = created["id"].as_str().unwrap();
    let (_, fetched) = daemon
        .call("GET", &format!("/api/webhooks/{id}"), None)
        .await;
    assert!(fetched.get("secret").is_none());
    assert!(
        !daemon.log_text().contains(&secret),
        "the secret must never be logged"
    );
    for i in 0..4 {
        daemon
            .call("POST", "/api/webhooks", Some(json!({"url": format!("https://example.com/{i}"), "events": ["*"], "organization_id": "org_a", "secret": "s".repeat(32)})))
            .await;
    }
    let (_, page1) = daemon.call("GET", "/api/webhooks?limit=2", None).await;
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2) = daemon
        .call(
            "GET",
            &format!("/api/webhooks?limit=2&cursor={cursor}"),
            None,
        )
        .await;
    let (_, page3) = daemon
        .call(
            "GET",
            &format!(
                "/api/webhooks?limit=2&cursor={}",
                page2["next_cursor"].as_str().unwrap()
            ),
            None,
        )
        .await;
    let ids: Vec<&str> = [&page1, &page2, &page3]
        .iter()
        .flat_map(|p| {
            p["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w["id"].as_str().unwrap())
        })
        .collect();
    assert_eq!(ids.len(), 5);
    assert_eq!(ids[0], id);
    assert!(!fetched.to_string().contains(&secret));
}

file_only! {
/// An answer is never sent before its commit: when the disk is full (the daemon may not
/// grow its db file), ingest answers 503 `store_unavailable`, and every event answered 202
/// before is there while the refused one is not.
#[tokio::test(flavor = "multi_thread")]
async fn full_disk_answers_503_and_keeps_every_accepted_event() {
    let daemon =
        support::start_with_file_limit(3 * 1024, &["--allow-http", "--retry-schedule", "1h"]);
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    daemon.create_webhook("org_a", &receiver.url, &["*"]).await;
    let big_title = "x".repeat(8 * 1024);
    let mut accepted = Vec::new();
    let mut refused = None;
    for i in 0..2000 {
        let id = format!("evt_full_{i}");
        let (status, body) = daemon
            .call("POST", "/api/events", Some(created(&id, &big_title)))
            .await;
        match status {
            202 => accepted.push(id),
            503 => {
                assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
                refused = Some(id);
                break;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let refused = refused.expect("the file-size limit must make a commit fail");
    assert!(!accepted.is_empty());
    let (status, _) = daemon.call("GET", "/healthz", None).await;
    assert_eq!(status, 200, "the daemon stays up");
    // Readiness tells a load balancer the store cannot commit.
    let (status, body) = daemon.call("GET", "/readyz", None).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["reason"].as_str().unwrap().contains("cannot commit"), "{body}");
    // Authentication does not read the file: a wrong token is still 401, not 503.
    let (status, body) = daemon
        .call_as("pwk_wrong", "GET", "/api/webhooks", None)
        .await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = daemon
        .call("GET", &format!("/api/events/{refused}"), None)
        .await;
    assert!(
        status == 404 || status == 503,
        "the refused event must not exist: {status} {body}"
    );
    // After a restart without the limit, every accepted event is there and the refused one is not.
    let mut daemon = daemon;
    daemon.kill9(); // `daemon` keeps owning the temp dir.
    let restarted = support::start_in(&daemon.dir, &["--allow-http", "--retry-schedule", "1h"]);
    for id in &accepted {
        let (status, body) = restarted
            .call("GET", &format!("/api/events/{id}"), None)
            .await;
        assert_eq!(status, 200, "{id} was answered 202 and must exist: {body}");
        assert_eq!(body["deliveries"].as_array().unwrap().len(), 1);
    }
    let (status, _) = restarted
        .call("GET", &format!("/api/events/{refused}"), None)
        .await;
    assert_eq!(status, 404, "an event answered 503 was not written");
    let (status, body) = restarted.call("GET", "/readyz", None).await;
    assert_eq!((status, &body["status"]), (200, &serde_json::json!("ready")));
}
}

file_only! {
#[tokio::test(flavor = "multi_thread")]
async fn full_disk_pauses_deliveries_then_recovers_without_restart() {
    let daemon = support::start_with_file_limit(
        3 * 1024,
        &["--allow-http", "--retry-schedule", "1s,1s,1s,1s"],
    );
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    daemon.create_webhook("org_a", &receiver.url, &["*"]).await;
    let big_title = "x".repeat(8 * 1024);
    let mut accepted = Vec::new();
    for i in 0..2000 {
        let id = format!("evt_pause_{i}");
        let (status, body) = daemon
            .call("POST", "/api/events", Some(created(&id, &big_title)))
            .await;
        match status {
            202 => accepted.push(id),
            503 => break,
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(!accepted.is_empty());
    // While the disk is full, delivery pauses: no attempt is sent that cannot be logged.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = receiver.received().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = receiver.received().len();
    assert!(
        during <= before + 1,
        "attempts went on while nothing could be logged: {before} then {during}"
    );
    assert!(
        daemon.log_text().contains("pausing deliveries"),
        "the pause is logged"
    );

    // Space returns (the file-size limit is lifted): ingest and delivery resume, no restart.
    rlimit::prlimit(
        daemon.pid() as i32,
        rlimit::Resource::FSIZE,
        Some((rlimit::INFINITY, rlimit::INFINITY)),
        None,
    )
    .expect("lift the file-size limit");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = daemon
            .call("POST", "/api/events", Some(created("evt_pause_after", "t")))
            .await;
        if status == 202 {
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            std::time::Instant::now() < deadline,
            "ingest did not recover"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    accepted.push("evt_pause_after".to_owned());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got: std::collections::HashSet<String> = receiver
            .received()
            .iter()
            .map(|r| r.header("x-palo-event-id"))
            .collect();
        if accepted.iter().all(|id| got.contains(id)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not every accepted event was delivered after recovery"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = daemon.log_text();
    assert!(
        log.contains("resuming deliveries"),
        "the resumption is logged"
    );
    for line in log.lines().filter(|l| !l.contains("DEBUG")) {
        println!("{line}");
    }
}
}
