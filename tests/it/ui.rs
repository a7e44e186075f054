//! The web UI's server side, over plain HTTP: the assets and their headers, and the API
//! calls the UI relies on (`/api/me`, `/api/event-types`, webhook stats, the event-type
//! filter). The browser itself is driven in `browser.rs`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{self, Behaviour, Receiver};

fn ticket(event_id: &str, org: &str) -> Value {
    json!({"event_id": event_id, "event_type": "ticket.created", "organization_id": org,
           "data": {"ticket_id": "TKT-1", "title": "t", "priority": "p1", "project_id": "p",
                    "created_by": "u"}})
}

fn incident(event_id: &str, org: &str) -> Value {
    json!({"event_id": event_id, "event_type": "system.incident", "organization_id": org,
           "data": {"incident_id": "INC-1", "severity": "high", "affected_services": ["api"],
                    "status": "open"}})
}

#[tokio::test]
async fn the_ui_is_served_from_the_binary_with_a_strict_policy_and_the_browsers_language() {
    let daemon = support::start(&[]);
    // `/` leads to the UI; no token is needed for the page (it holds no data).
    let (status, headers, _) = daemon.request_full("GET", "/", &[]).await;
    assert!((300..400).contains(&status), "{status}");
    assert_eq!(headers["location"], "/ui/");
    let (status, headers, html) = daemon
        .request_full(
            "GET",
            "/ui/",
            &[("accept-language", "fr-FR,fr;q=0.9,en;q=0.5")],
        )
        .await;
    assert_eq!(status, 200);
    assert!(html.contains("<html lang=\"fr\">"), "{html}");
    let csp = headers["content-security-policy"].to_str().unwrap();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ] {
        assert!(csp.contains(directive), "CSP {csp:?} lacks {directive}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["x-frame-options"], "DENY");
    // No inline script: the only script tag loads /ui/app.js.
    assert_eq!(html.matches("<script").count(), 1);
    assert!(html.contains("<script src=\"/ui/app.js\" defer></script>"));
    let (_, _, english) = daemon
        .request_full("GET", "/ui/", &[("accept-language", "en-US,en;q=0.9")])
        .await;
    assert!(english.contains("<html lang=\"en\">"));

    // Assets: the right types, revalidated by ETag.
    let (status, headers, js) = daemon.request_full("GET", "/ui/app.js", &[]).await;
    assert_eq!(status, 200);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    assert!(js.contains("Re-déclencher") && js.contains("Paramètres"));
    let etag = headers["etag"].to_str().unwrap().to_owned();
    let (status, _, body) = daemon
        .request_full("GET", "/ui/app.js", &[("if-none-match", &etag)])
        .await;
    assert_eq!((status, body.as_str()), (304, ""));
    let (status, headers, _) = daemon.request_full("GET", "/ui/app.css", &[]).await;
    assert_eq!(status, 200);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/css"));
    // Every other answer (redirects, errors, API JSON) may not be sniffed or framed either.
    for path in ["/", "/ui", "/ui/nope", "/nope", "/api/me"] {
        let (_, headers, _) = daemon.request_full("GET", path, &[]).await;
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["x-frame-options"], "DENY", "{path}");
        assert!(
            headers["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("frame-ancestors 'none'"),
            "{path}"
        );
    }
    // The start-up log says where the UI is.
    let addr = daemon.addr;
    assert!(daemon
        .log_text()
        .contains(&format!("web UI at http://{addr}/ui/")));
}

#[tokio::test]
async fn me_and_event_types_tell_the_ui_who_is_signed_in_and_what_to_offer() {
    let daemon = support::start(&[]);
    let key = daemon.create_key("org_a").await;
    let (status, me) = daemon.call("GET", "/api/me", None).await;
    assert_eq!((status, me), (200, json!({"principal": "admin"})));
    let (status, me) = daemon.call_as(&key, "GET", "/api/me", None).await;
    assert_eq!(
        (status, me),
        (
            200,
            json!({"principal": "organization", "organization_id": "org_a"})
        )
    );
    let (status, _) = daemon.call_as("wrong", "GET", "/api/me", None).await;
    assert_eq!(status, 401);
    let (status, types) = daemon.call_as(&key, "GET", "/api/event-types", None).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = types["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "ticket.created",
            "ticket.status_changed",
            "ticket.resolved",
            "system.incident",
            // Issue 17: the whole catalog; the UI offers the subscribable ones.
            "webhook.test",
            // Issue 15: the operational types, made by the daemon, offered by name.
            "webhook.disabled",
            "webhook.enabled",
            "delivery.exhausted",
            "recovery.finished"
        ]
    );
    assert_eq!(types["data"][5]["operational"], true);
    assert_eq!(
        (
            &types["data"][4]["subscribable"],
            &types["data"][4]["ingestible"]
        ),
        (&json!(false), &json!(false)),
        "webhook.test goes only to the webhook being tested"
    );
    assert_eq!(types["data"][0]["operational"], false);
    assert_eq!(
        types["data"][3]["required_fields"],
        json!(["incident_id", "severity", "affected_services", "status"])
    );
}

#[tokio::test]
async fn stats_count_the_last_day_by_outcome_with_latency_and_the_last_delivery() {
    // No retries: a failed attempt makes a failed delivery at once.
    let daemon = support::start(&["--allow-http", "--retry-schedule", ""]);
    let good = Receiver::start(Behaviour::Status(200)).await;
    let bad = Receiver::start(Behaviour::Status(500)).await;
    let ok_hook = daemon
        .create_webhook("org_a", &good.url, &["ticket.created"])
        .await;
    let ko_hook = daemon
        .create_webhook("org_a", &bad.url, &["system.incident"])
        .await;
    for i in 0..3 {
        let (status, _) = daemon
            .call(
                "POST",
                "/api/events",
                Some(ticket(&format!("t{i}"), "org_a")),
            )
            .await;
        assert_eq!(status, 202);
    }
    let (status, _) = daemon
        .call("POST", "/api/events", Some(incident("i0", "org_a")))
        .await;
    assert_eq!(status, 202);
    good.wait_for(3, Duration::from_secs(10)).await;
    let stats = daemon
        .wait_until(
            &format!("/api/webhooks/{ok_hook}/stats"),
            Duration::from_secs(10),
            |b| b["totals"]["succeeded"] == 3,
        )
        .await;
    assert_eq!(stats["hours"], 24);
    let buckets = stats["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 24);
    // Everything happened in the current hour, the last bucket.
    assert_eq!(buckets[23]["succeeded"], 3);
    assert_eq!(buckets[23]["attempts"], 3);
    assert!(buckets[23]["latency_p50_ms"].is_u64());
    assert!(buckets[23]["latency_p95_ms"].as_u64() >= buckets[23]["latency_p50_ms"].as_u64());
    assert!(buckets[..23].iter().all(|b| b["attempts"] == 0));
    assert_eq!(stats["success_rate"], 1.0);
    assert_eq!(
        (
            stats["attempts"].clone(),
            stats["attempts_succeeded"].clone()
        ),
        (json!(3), json!(3))
    );
    assert_eq!(stats["last_delivery"]["status"], "succeeded");
    assert_eq!(stats["last_delivery"]["webhook_id"], ok_hook.as_str());
    assert_eq!(stats["truncated"], false);

    let stats = daemon
        .wait_until(
            &format!("/api/webhooks/{ko_hook}/stats?hours=1"),
            Duration::from_secs(10),
            |b| b["totals"]["failed"] == 1,
        )
        .await;
    assert_eq!(stats["buckets"].as_array().unwrap().len(), 1);
    assert_eq!(stats["success_rate"], 0.0);
    assert_eq!(stats["last_delivery"]["status"], "failed");

    // A webhook without deliveries, bad windows, another organization.
    let idle = daemon
        .create_webhook("org_a", &good.url, &["ticket.resolved"])
        .await;
    let (status, stats) = daemon
        .call("GET", &format!("/api/webhooks/{idle}/stats"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            stats["success_rate"].clone(),
            stats["last_delivery"].clone()
        ),
        (Value::Null, Value::Null)
    );
    for bad_window in ["0", "169", "x"] {
        let (status, body) = daemon
            .call(
                "GET",
                &format!("/api/webhooks/{idle}/stats?hours={bad_window}"),
                None,
            )
            .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("invalid_query"))
        );
    }
    let other = daemon.create_key("org_b").await;
    let (status, _) = daemon
        .call_as(
            &other,
            "GET",
            &format!("/api/webhooks/{ok_hook}/stats"),
            None,
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn deliveries_can_be_filtered_by_event_type() {
    let daemon = support::start(&["--allow-http"]);
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let hook = daemon.create_webhook("org_a", &receiver.url, &["*"]).await;
    for event in [
        ticket("t1", "org_a"),
        incident("i1", "org_a"),
        ticket("t2", "org_a"),
    ] {
        let (status, _) = daemon.call("POST", "/api/events", Some(event)).await;
        assert_eq!(status, 202);
    }
    let path = format!("/api/webhooks/{hook}/deliveries");
    let (status, page) = daemon
        .call("GET", &format!("{path}?event_type=system.incident"), None)
        .await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["i1"]);
    let (_, page) = daemon
        .call(
            "GET",
            &format!("{path}?event_type=ticket.created&limit=1"),
            None,
        )
        .await;
    assert_eq!(page["data"][0]["event_id"], "t2");
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let (_, page) = daemon
        .call(
            "GET",
            &format!("{path}?event_type=ticket.created&limit=1&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(page["data"][0]["event_id"], "t1");
    let (status, body) = daemon
        .call("GET", &format!("{path}?event_type=ticket.deleted"), None)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_query"))
    );
}
