//! Signed delivery, retry schedule, attempt log, timeouts, redirects, redelivery.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{self, python_verifies, Behaviour, Receiver, SECRET};

const FAST: &[&str] = &[
    "--allow-http",
    "--retry-schedule",
    "300ms,300ms,300ms,300ms",
    "--attempt-timeout",
    "2s",
];

fn spec_events() -> Vec<Value> {
    vec![
        json!({"event_type": "ticket.created", "organization_id": "org_a", "event_id": "evt_created_1",
               "timestamp": "2026-02-19T12:30:00+02:00",
               "data": {"ticket_id": "TKT-00512", "title": "Crème brûlée \"urgente\" 🎉 \\ ok", "priority": "p3",
                        "project_id": "prj_1", "created_by": "user_1", "big": 12345678901234567890u64}}),
        json!({"event_type": "ticket.status_changed", "organization_id": "org_a",
               "data": {"ticket_id": "TKT-00512", "old_status": "open", "new_status": "in_progress", "changed_by": "user_1"}}),
        json!({"event_type": "ticket.resolved", "organization_id": "org_a",
               "data": {"ticket_id": "TKT-00512", "resolved_by": "user_1", "resolution_time_hours": 2.5}}),
        json!({"event_type": "system.incident", "organization_id": "org_a",
               "data": {"incident_id": "INC-001", "severity": "critical", "affected_services": ["api", "ui"], "status": "investigating"}}),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn spec_events_arrive_verbatim_and_signed_for_the_spec_verifier() {
    let daemon = support::start(FAST);
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    daemon.create_webhook("org_a", &receiver.url, &["*"]).await;

    // Sent as raw text so the exact bytes of `data` (escapes, spacing, big integer) are known.
    let raw_data = r#"{ "ticket_id":"TKT-1","title":"Cr\u00e8me \"br\u00fbl\u00e9e\" 🎉 é","priority":"p3","project_id":"p","created_by":"u","n":12345678901234567890,"x":1e400 }"#;
    let raw_event = format!(
        r#"{{"event_type":"ticket.created","organization_id":"org_a","event_id":"evt_raw","data":{raw_data}}}"#
    );
    let (status, body) = daemon
        .raw(
            "POST",
            "/api/events",
            Some(support::ADMIN_TOKEN),
            Some("application/json"),
            raw_event.into_bytes(),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    for event in spec_events() {
        let (status, body) = daemon.call("POST", "/api/events", Some(event)).await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["deliveries"], 1);
    }
    let got = receiver.wait_for(5, Duration::from_secs(10)).await;
    assert!(
        python_verifies(&got, SECRET),
        "the spec's verify_signature must accept every signature"
    );

    // The raw event holds 1e400, which a double cannot hold: compare text, not values.
    let raw = got
        .iter()
        .find(|r| r.header("x-palo-event-id") == "evt_raw")
        .unwrap();
    let text = String::from_utf8(raw.body.to_vec()).unwrap();
    assert!(
        text.ends_with(&format!(r#","data":{raw_data}}}"#)),
        "data must pass byte for byte: {text}"
    );
    assert!(
        text.starts_with(r#"{"event_id":"evt_raw","event_type":"ticket.created","timestamp":""#)
    );
    let (status, stored) = daemon
        .raw_bytes(
            "GET",
            "/api/events/evt_raw",
            Some(support::ADMIN_TOKEN),
            None,
            Vec::new(),
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        String::from_utf8_lossy(&stored).contains(&format!(r#""data":{raw_data}"#)),
        "GET shows the same data"
    );

    for r in got
        .iter()
        .filter(|r| r.header("x-palo-event-id") != "evt_raw")
    {
        let envelope = r.json();
        let keys: Vec<&String> = envelope.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "event_id",
                "event_type",
                "timestamp",
                "organization_id",
                "data"
            ]
        );
        assert_eq!(r.header("content-type"), "application/json");
        assert!(r.header("user-agent").starts_with("palo-webhooks/"));
        assert_eq!(r.header("x-palo-event"), envelope["event_type"]);
        assert_eq!(r.header("x-palo-event-id"), envelope["event_id"]);
        assert!(r.header("x-palo-delivery").starts_with("dlv_"));
        assert_eq!(r.header("x-palo-attempt"), "1");
        assert!(envelope["timestamp"].as_str().unwrap().ends_with('Z'));

        // GET /api/events/{id} shows the same envelope.
        let id = envelope["event_id"].as_str().unwrap();
        let (status, stored) = daemon.call("GET", &format!("/api/events/{id}"), None).await;
        assert_eq!(status, 200);
        for key in [
            "event_id",
            "event_type",
            "timestamp",
            "organization_id",
            "data",
        ] {
            assert_eq!(stored[key], envelope[key], "{key}");
        }
        assert_eq!(stored["deliveries"][0]["status"], "succeeded");
    }
    let created = got
        .iter()
        .find(|r| r.header("x-palo-event-id") == "evt_created_1")
        .unwrap()
        .json();
    assert_eq!(created["timestamp"], "2026-02-19T10:30:00Z");
    assert_eq!(created["data"], spec_events()[0]["data"]);
    assert_eq!(created["data"]["big"].as_u64(), Some(12345678901234567890));
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_attempt_is_retried_at_the_configured_offset_then_succeeds() {
    let daemon = support::start(&[
        "--allow-http",
        "--retry-schedule",
        "2s,4s",
        "--attempt-timeout",
        "2s",
    ]);
    let receiver = Receiver::start(Behaviour::Sequence(vec![500, 200])).await;
    let webhook = daemon
        .create_webhook("org_a", &receiver.url, &["ticket.created"])
        .await;
    let (status, _) = daemon
        .call("POST", "/api/events", Some(spec_events().remove(0)))
        .await;
    assert_eq!(status, 202);
    let got = receiver.wait_for(2, Duration::from_secs(15)).await;
    let offset = got[1].at - got[0].at;
    assert!(
        offset >= Duration::from_millis(1600) && offset <= Duration::from_millis(2400),
        "retry came {offset:?} after the failure, expected 2s ±20%"
    );
    assert_eq!(got[1].header("x-palo-attempt"), "2");
    assert_eq!(
        got[0].body, got[1].body,
        "every attempt sends the same bytes"
    );
    assert_eq!(
        got[0].header("x-palo-signature"),
        got[1].header("x-palo-signature")
    );

    let id = daemon.only_delivery(&webhook).await;
    let delivery = daemon
        .wait_until(
            &format!("/api/deliveries/{id}"),
            Duration::from_secs(5),
            |b| b["status"] == "succeeded",
        )
        .await;
    assert_eq!(delivery["attempt_count"], 2);
    assert_eq!(delivery["next_attempt_at"], Value::Null);
    let attempts = delivery["attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["number"], 1);
    assert_eq!(attempts[0]["status_code"], 500);
    assert_eq!(attempts[0]["response_body"], "receiver error");
    assert_eq!(attempts[0]["trigger"], "scheduled");
    assert_eq!(attempts[1]["number"], 2);
    assert_eq!(attempts[1]["status_code"], 200);
    assert_eq!(attempts[1]["response_body"], "ok");
    assert!(attempts
        .iter()
        .all(|a| a["duration_ms"].is_u64() && a["error"].is_null()));
}

#[tokio::test(flavor = "multi_thread")]
async fn five_failed_attempts_mark_failed_then_manual_redelivery_succeeds() {
    let daemon = support::start(FAST);
    let receiver = Receiver::start(Behaviour::Status(503)).await;
    let webhook = daemon.create_webhook("org_a", &receiver.url, &["*"]).await;
    daemon
        .call("POST", "/api/events", Some(spec_events().remove(1)))
        .await;
    let id = daemon.only_delivery(&webhook).await;
    let failed = daemon
        .wait_until(
            &format!("/api/deliveries/{id}"),
            Duration::from_secs(15),
            |b| b["status"] == "failed",
        )
        .await;
    assert_eq!(failed["attempt_count"], 5);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        receiver.received().len(),
        5,
        "no attempt after the 5th failure"
    );

    // A failed manual attempt changes nothing else.
    let (status, result) = daemon
        .call("POST", &format!("/api/deliveries/{id}/redeliver"), None)
        .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["attempt"]["number"], 6);
    assert_eq!(result["attempt"]["trigger"], "manual");
    assert_eq!(result["delivery"]["status"], "failed");

    receiver.set(Behaviour::Status(200));
    let (status, result) = daemon
        .call("POST", &format!("/api/deliveries/{id}/redeliver"), None)
        .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["attempt"]["number"], 7);
    assert_eq!(result["attempt"]["status_code"], 200);
    assert_eq!(result["delivery"]["status"], "succeeded");
    let (_, delivery) = daemon
        .call("GET", &format!("/api/deliveries/{id}"), None)
        .await;
    let triggers: Vec<&str> = delivery["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["trigger"].as_str().unwrap())
        .collect();
    assert_eq!(
        triggers,
        [
            "scheduled",
            "scheduled",
            "scheduled",
            "scheduled",
            "scheduled",
            "manual",
            "manual"
        ]
    );
    assert_eq!(
        receiver.received().last().unwrap().header("x-palo-attempt"),
        "7"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hanging_receiver_is_logged_as_timeout() {
    let daemon = support::start(&[
        "--allow-http",
        "--retry-schedule",
        "1h",
        "--attempt-timeout",
        "1s",
    ]);
    let receiver = Receiver::start(Behaviour::Hang).await;
    let delivery = daemon
        .after_first_attempt(&receiver.url, spec_events().remove(2))
        .await;
    let attempt = &delivery["attempts"][0];
    assert_eq!(attempt["error"], "timeout");
    assert_eq!(attempt["status_code"], Value::Null);
    let ms = attempt["duration_ms"].as_u64().unwrap();
    assert!((1000..2000).contains(&ms), "timeout after {ms} ms");
    assert_eq!(delivery["status"], "retrying");
}

#[tokio::test(flavor = "multi_thread")]
async fn redirect_is_a_failed_attempt_and_is_not_followed() {
    let daemon = support::start(&["--allow-http", "--retry-schedule", "1h"]);
    let receiver = Receiver::start(Behaviour::Redirect).await;
    let delivery = daemon
        .after_first_attempt(&receiver.url, spec_events().remove(3))
        .await;
    assert_eq!(delivery["attempts"][0]["status_code"], 302);
    assert_eq!(delivery["status"], "retrying");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let paths: Vec<String> = receiver.received().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, ["/hook"], "the redirect must not be followed");
}

#[tokio::test(flavor = "multi_thread")]
async fn endless_response_body_is_capped_without_growing_memory() {
    let daemon = support::start(&[
        "--allow-http",
        "--retry-schedule",
        "1h",
        "--attempt-timeout",
        "5s",
    ]);
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let webhook = daemon.create_webhook("org_a", &receiver.url, &["*"]).await;
    // Warm up the client, pool and store so the measurement sees only the body.
    daemon
        .call("POST", "/api/events", Some(spec_events().remove(3)))
        .await;
    receiver.wait_for(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = daemon.rss_kib();

    receiver.set(Behaviour::Endless);
    daemon
        .call("POST", "/api/events", Some(spec_events().remove(2)))
        .await;
    receiver.wait_for(2, Duration::from_secs(10)).await;
    let body = daemon
        .wait_until(
            &format!("/api/webhooks/{webhook}/deliveries?status=succeeded"),
            Duration::from_secs(10),
            |b| b["data"].as_array().is_some_and(|d| d.len() == 2),
        )
        .await;
    let after = daemon.rss_kib();
    let id = body["data"][0]["id"].as_str().unwrap();
    let (_, delivery) = daemon
        .call("GET", &format!("/api/deliveries/{id}"), None)
        .await;
    let attempt = &delivery["attempts"][0];
    assert_eq!(attempt["status_code"], 200);
    assert_eq!(attempt["response_body_truncated"], true);
    assert_eq!(attempt["response_body"].as_str().unwrap().len(), 64 * 1024);
    let growth_mib = after.saturating_sub(before) as f64 / 1024.0;
    assert!(
        growth_mib < 8.0,
        "RSS grew by {growth_mib:.1} MiB reading a 1 GiB body"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn test_endpoint_makes_an_attempt_now_and_delete_cancels_pending() {
    let daemon = support::start(&["--allow-http", "--retry-schedule", "1h"]);
    let receiver = Receiver::start(Behaviour::Status(500)).await;
    let webhook = daemon
        .create_webhook("org_a", &receiver.url, &["ticket.created"])
        .await;
    let (status, result) = daemon
        .call("POST", &format!("/api/webhooks/{webhook}/test"), None)
        .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["attempt"]["status_code"], 500);
    assert_eq!(result["delivery"]["event_type"], "webhook.test");
    assert_eq!(result["delivery"]["status"], "retrying");
    let got = receiver.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].json()["data"]["webhook_id"], webhook.as_str());

    let id = result["delivery"]["id"].as_str().unwrap().to_owned();
    let (status, _) = daemon
        .call("DELETE", &format!("/api/webhooks/{webhook}"), None)
        .await;
    assert_eq!(status, 204);
    let (status, delivery) = daemon
        .call("GET", &format!("/api/deliveries/{id}"), None)
        .await;
    assert_eq!(status, 200, "the log stays readable");
    assert_eq!(delivery["status"], "cancelled");
    assert_eq!(delivery["next_attempt_at"], Value::Null);
    assert_eq!(delivery["attempts"].as_array().unwrap().len(), 1);
    let (status, _) = daemon
        .call("GET", &format!("/api/webhooks/{webhook}"), None)
        .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn inactive_and_unsubscribed_webhooks_receive_nothing() {
    let daemon = support::start(FAST);
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let subscribed = daemon
        .create_webhook("org_a", &receiver.url, &["system.incident"])
        .await;
    let other = Receiver::start(Behaviour::Status(200)).await;
    daemon
        .create_webhook("org_a", &other.url, &["ticket.created"])
        .await;
    let (status, _) = daemon
        .call(
            "PATCH",
            &format!("/api/webhooks/{subscribed}"),
            Some(json!({"active": false})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = daemon
        .call("POST", "/api/events", Some(spec_events().remove(3)))
        .await;
    assert_eq!(status, 202);
    assert_eq!(body["deliveries"], 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(receiver.received().is_empty() && other.received().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn second_redelivery_while_one_is_in_flight_is_409_and_sends_once() {
    let daemon = support::start(&[
        "--allow-http",
        "--retry-schedule",
        "1h",
        "--attempt-timeout",
        "2s",
    ]);
    let receiver = Receiver::start(Behaviour::Status(500)).await;
    let webhook = daemon.create_webhook("org_a", &receiver.url, &["*"]).await;
    daemon
        .call("POST", "/api/events", Some(spec_events().remove(0)))
        .await;
    let id = daemon.only_delivery(&webhook).await;
    daemon
        .wait_until(
            &format!("/api/deliveries/{id}"),
            Duration::from_secs(10),
            |b| b["attempt_count"] == 1,
        )
        .await;

    receiver.set(Behaviour::Hang);
    let path = format!("/api/deliveries/{id}/redeliver");
    let (first, second) = tokio::join!(daemon.call("POST", &path, None), async {
        receiver.wait_for(2, Duration::from_secs(5)).await;
        daemon.call("POST", &path, None).await
    });
    assert_eq!(second.0, 409, "{}", second.1);
    assert_eq!(second.1["error"]["code"], "attempt_in_flight");
    assert_eq!(first.0, 200, "{}", first.1);
    assert_eq!(first.1["attempt"]["error"], "timeout");
    assert_eq!(
        first.1["delivery"]["status"], "retrying",
        "a failed manual attempt changes nothing else"
    );
    assert_eq!(
        receiver.received().len(),
        2,
        "the refused redelivery sent nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_2xx_whose_body_breaks_off_is_a_failed_attempt() {
    let daemon = support::start(&["--allow-http", "--retry-schedule", "1h"]);
    let url = support::raw_receiver(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial").await;
    let delivery = daemon
        .after_first_attempt(&url, spec_events().remove(0))
        .await;
    assert_eq!(delivery["attempts"][0]["status_code"], 200);
    assert_eq!(delivery["attempts"][0]["error"], "io");
    assert_eq!(
        delivery["status"], "retrying",
        "the exchange did not complete: retry"
    );
}

/// Regression: attempts waiting for the per-webhook slot used the webhook as it was before
/// they waited, so a deleted, deactivated or re-pointed webhook still got them.
#[tokio::test(flavor = "multi_thread")]
async fn attempts_waiting_for_a_slot_see_webhook_changes_made_meanwhile() {
    let flags = [
        "--allow-http",
        "--retry-schedule",
        "1h",
        "--attempt-timeout",
        "2s",
        "--max-in-flight-per-webhook",
        "1",
    ];
    let daemon = support::start(&flags);
    let old = Receiver::start(Behaviour::Hang).await;
    let new = Receiver::start(Behaviour::Status(200)).await;
    let webhook = daemon.create_webhook("org_a", &old.url, &["*"]).await;
    for mut event in spec_events().into_iter().skip(1) {
        event["event_id"] = json!(format!(
            "evt_wait_{}",
            event["event_type"].as_str().unwrap()
        ));
        daemon.call("POST", "/api/events", Some(event)).await;
    }
    old.wait_for(1, Duration::from_secs(10)).await;
    let (status, _) = daemon
        .call(
            "PATCH",
            &format!("/api/webhooks/{webhook}"),
            Some(json!({"url": new.url})),
        )
        .await;
    assert_eq!(status, 200);
    new.wait_for(2, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        old.received().len(),
        1,
        "only the attempt already in flight went to the old URL"
    );
    assert_eq!(new.received().len(), 2);
}

/// Regression: concurrent PATCHes of different fields each rewrote the whole record, so all
/// but one change was lost.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_patches_of_different_fields_all_survive() {
    let daemon = support::start(&["--allow-http"]);
    let webhook = daemon
        .create_webhook("org_a", "http://127.0.0.1:9/hook", &["*"])
        .await;
    let path = format!("/api/webhooks/{webhook}");
    let (a, b, c) = tokio::join!(
        daemon.call("PATCH", &path, Some(json!({"active": false}))),
        daemon.call("PATCH", &path, Some(json!({"description": "d"}))),
        daemon.call("PATCH", &path, Some(json!({"events": ["ticket.created"]}))),
    );
    assert_eq!((a.0, b.0, c.0), (200, 200, 200));
    let (_, got) = daemon.call("GET", &path, None).await;
    assert_eq!(got["active"], false);
    assert_eq!(got["description"], "d");
    assert_eq!(got["events"], json!(["ticket.created"]));
}

/// An inactive webhook's due deliveries are held (postponed by 10 minutes at a time, not
/// every minute), and reactivating it brings them back at once.
#[tokio::test(flavor = "multi_thread")]
async fn reactivation_brings_held_deliveries_back_at_once() {
    let daemon = support::start(&["--allow-http", "--retry-schedule", "2s,2s"]);
    let receiver = Receiver::start(Behaviour::Status(500)).await;
    let delivery = daemon
        .after_first_attempt(&receiver.url, spec_events().remove(0))
        .await;
    let id = delivery["id"].as_str().unwrap().to_owned();
    let path = format!("/api/webhooks/{}", delivery["webhook_id"].as_str().unwrap());
    let (status, _) = daemon
        .call("PATCH", &path, Some(json!({"active": false})))
        .await;
    assert_eq!(status, 200);
    // The retry falls due while inactive: held about 10 minutes ahead, nothing sent.
    let held = daemon
        .wait_until(
            &format!("/api/deliveries/{id}"),
            Duration::from_secs(10),
            |b| {
                b["next_attempt_at"].as_str().is_some_and(|at| {
                    let at = time::OffsetDateTime::parse(
                        at,
                        &time::format_description::well_known::Rfc3339,
                    )
                    .unwrap();
                    at - time::OffsetDateTime::now_utc() > time::Duration::seconds(500)
                })
            },
        )
        .await;
    assert_eq!(held["attempt_count"], 1, "{held}");
    assert_eq!(receiver.received().len(), 1);

    receiver.set(Behaviour::Status(200));
    let (status, _) = daemon
        .call("PATCH", &path, Some(json!({"active": true})))
        .await;
    assert_eq!(status, 200);
    let done = daemon
        .wait_until(
            &format!("/api/deliveries/{id}"),
            Duration::from_secs(5),
            |b| b["status"] == "succeeded",
        )
        .await;
    assert_eq!(done["attempt_count"], 2, "{done}");
}

/// A daemon whose webhook may have one attempt in flight, one delivery whose first attempt
/// failed (500), and a second delivery whose attempt hangs in the webhook's only slot for
/// `attempt_timeout`. Returns the daemon, the receiver (now hanging), the failed delivery's
/// id and the webhook's id.
async fn failed_then_slot_held(
    attempt_timeout: &str,
) -> (support::Daemon, Receiver, String, String) {
    let daemon = support::start(&[
        "--allow-http",
        "--retry-schedule",
        "1h",
        "--attempt-timeout",
        attempt_timeout,
        "--max-in-flight-per-webhook",
        "1",
    ]);
    let receiver = Receiver::start(Behaviour::Status(500)).await;
    let delivery = daemon
        .after_first_attempt(&receiver.url, spec_events().remove(0))
        .await;
    let failed = delivery["id"].as_str().unwrap().to_owned();
    let webhook = delivery["webhook_id"].as_str().unwrap().to_owned();
    receiver.set(Behaviour::Hang);
    daemon
        .call("POST", "/api/events", Some(spec_events().remove(1)))
        .await;
    receiver.wait_for(2, Duration::from_secs(10)).await;
    (daemon, receiver, failed, webhook)
}

/// Manual attempts obey the webhook's in-flight limit: while an attempt hangs in the
/// webhook's one slot, a redelivery of another of its deliveries waits for the slot, then
/// answers 503 `webhook_busy` with Retry-After, and sends nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_redelivery_waits_for_the_webhooks_slot_then_answers_busy() {
    let (daemon, receiver, failed, _) = failed_then_slot_held("30s").await;
    let started = std::time::Instant::now();
    let (status, bytes) = daemon
        .raw_bytes(
            "POST",
            &format!("/api/deliveries/{failed}/redeliver"),
            Some(support::ADMIN_TOKEN),
            None,
            Vec::new(),
        )
        .await;
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "webhook_busy");
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "it waited for the slot"
    );
    assert_eq!(
        receiver.received().len(),
        2,
        "the refused redelivery sent nothing"
    );
    let (_, delivery) = daemon
        .call("GET", &format!("/api/deliveries/{failed}"), None)
        .await;
    assert_eq!(
        delivery["attempt_count"], 1,
        "nothing was logged: {delivery}"
    );
    // A test event finds the slot taken too: 503, and nothing is written.
    let webhook = delivery["webhook_id"].as_str().unwrap().to_owned();
    let (status, body) = daemon
        .call("POST", &format!("/api/webhooks/{webhook}/test"), None)
        .await;
    assert_eq!(status, 503, "{body}");
    let (_, page) = daemon
        .call("GET", &format!("/api/webhooks/{webhook}/deliveries"), None)
        .await;
    assert_eq!(page["data"].as_array().unwrap().len(), 2, "{page}");
}

/// A redelivery that waited for a slot reads its webhook afresh: a URL changed meanwhile is
/// where it goes.
#[tokio::test(flavor = "multi_thread")]
async fn a_redelivery_that_waited_goes_to_the_webhooks_current_url() {
    let (daemon, old, failed, webhook) = failed_then_slot_held("2s").await;
    let new = Receiver::start(Behaviour::Status(200)).await;
    let path = format!("/api/deliveries/{failed}/redeliver");
    let (redelivered, patched) = tokio::join!(daemon.call("POST", &path, None), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        daemon
            .call(
                "PATCH",
                &format!("/api/webhooks/{webhook}"),
                Some(json!({"url": new.url})),
            )
            .await
    });
    assert_eq!(patched.0, 200);
    assert_eq!(redelivered.0, 200, "{}", redelivered.1);
    assert_eq!(redelivered.1["attempt"]["status_code"], 200);
    assert_eq!(
        new.received().len(),
        1,
        "the waiting redelivery used the new URL"
    );
    assert_eq!(old.received().len(), 2);
}

/// Turning a webhook off and on again does not pull its scheduled retries forward.
#[tokio::test(flavor = "multi_thread")]
async fn an_off_and_on_toggle_keeps_the_retry_schedule() {
    let daemon = support::start(&["--allow-http", "--retry-schedule", "1h"]);
    let receiver = Receiver::start(Behaviour::Status(500)).await;
    let delivery = daemon
        .after_first_attempt(&receiver.url, spec_events().remove(0))
        .await;
    let path = format!("/api/webhooks/{}", delivery["webhook_id"].as_str().unwrap());
    for active in [false, true] {
        let (status, _) = daemon
            .call("PATCH", &path, Some(json!({"active": active})))
            .await;
        assert_eq!(status, 200);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, after) = daemon
        .call(
            "GET",
            &format!("/api/deliveries/{}", delivery["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(after["attempt_count"], 1, "{after}");
    assert_eq!(after["next_attempt_at"], delivery["next_attempt_at"]);
    assert_eq!(receiver.received().len(), 1);
}
