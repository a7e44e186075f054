//! Tenancy: an organization key acts for its organization only; bad tokens get 401.

use serde_json::json;

use crate::support::{self, Behaviour, Receiver};

async fn key_for(daemon: &support::Daemon, org: &str) -> String {
    let (status, body) = daemon
        .call(
            "POST",
            "/api/keys",
            Some(json!({"organization_id": org, "description": "test"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["key"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn organization_key_cannot_touch_another_organization() {
    let daemon = support::start(&["--allow-http", "--retry-schedule", "1h"]);
    let receiver = Receiver::start(Behaviour::Status(500)).await;
    let key_a = key_for(&daemon, "org_a").await;
    let key_b = key_for(&daemon, "org_b").await;

    let (status, webhook) = daemon
        .call_as(
            &key_a,
            "POST",
            "/api/webhooks",
            Some(json!({"url": receiver.url, "events": ["*"], "secret": support::SECRET})),
        )
        .await;
    assert_eq!(status, 201, "{webhook}");
    assert_eq!(webhook["organization_id"], "org_a");
    let wh = webhook["id"].as_str().unwrap().to_owned();
    let event = json!({"event_id": "evt_a1", "event_type": "ticket.status_changed",
                       "data": {"ticket_id": "T", "old_status": "open", "new_status": "closed", "changed_by": "u"}});
    let (status, _) = daemon
        .call_as(&key_a, "POST", "/api/events", Some(event.clone()))
        .await;
    assert_eq!(status, 202);
    let delivery = daemon
        .wait_until(
            &format!("/api/webhooks/{wh}/deliveries"),
            std::time::Duration::from_secs(10),
            |b| b["data"][0]["attempt_count"] == 1,
        )
        .await;
    let dlv = delivery["data"][0]["id"].as_str().unwrap().to_owned();

    // org_b sees nothing of org_a: 404, never 403.
    for (method, path, body) in [
        ("GET", format!("/api/webhooks/{wh}"), None),
        (
            "PATCH",
            format!("/api/webhooks/{wh}"),
            Some(json!({"active": false})),
        ),
        ("DELETE", format!("/api/webhooks/{wh}"), None),
        ("GET", format!("/api/webhooks/{wh}/deliveries"), None),
        ("POST", format!("/api/webhooks/{wh}/test"), None),
        ("GET", format!("/api/deliveries/{dlv}"), None),
        ("POST", format!("/api/deliveries/{dlv}/redeliver"), None),
        ("GET", "/api/events/evt_a1".to_owned(), None),
        (
            "GET",
            "/api/events/evt_a1?organization_id=org_a".to_owned(),
            None,
        ),
    ] {
        let (status, answer) = daemon.call_as(&key_b, method, &path, body).await;
        assert_eq!(status, 404, "{method} {path}: {answer}");
    }
    let (_, list) = daemon.call_as(&key_b, "GET", "/api/webhooks", None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0);
    let (_, list) = daemon
        .call_as(&key_b, "GET", "/api/webhooks?organization_id=org_a", None)
        .await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0);
    let (_, list) = daemon.call_as(&key_b, "GET", "/api/events", None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0);

    // Writing for another organization is 403.
    let mut foreign = event.clone();
    foreign["organization_id"] = json!("org_a");
    let (status, answer) = daemon
        .call_as(&key_b, "POST", "/api/events", Some(foreign))
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let (status, _) = daemon
        .call_as(
            &key_b,
            "POST",
            "/api/webhooks",
            Some(json!({"url": receiver.url, "events": ["*"], "organization_id": "org_a"})),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = daemon.call_as(&key_b, "GET", "/api/keys", None).await;
    assert_eq!(status, 403, "keys are admin only");

    // org_a still sees its own; the webhook is untouched.
    let (status, own) = daemon
        .call_as(&key_a, "GET", &format!("/api/webhooks/{wh}"), None)
        .await;
    assert_eq!((status, own["active"].as_bool()), (200, Some(true)));
    assert_eq!(receiver.received().len(), 1, "org_b's calls sent nothing");

    // Bad tokens: 401 with the JSON error.
    for token in [None, Some("wrong"), Some("")] {
        let (status, answer) = daemon
            .raw("GET", "/api/webhooks", token, None, Vec::new())
            .await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (401, Some("unauthorized"))
        );
    }
    // The scheme is case-insensitive (RFC 7235).
    let (status, _) = daemon
        .raw("GET", "/api/webhooks", None, None, Vec::new())
        .await;
    assert_eq!(status, 401);
    let (status, _) = daemon
        .raw_with_header("GET", "/api/webhooks", &format!("bearer {key_a}"))
        .await;
    assert_eq!(status, 200);
    // A deleted key stops working.
    let (_, keys) = daemon.call("GET", "/api/keys", None).await;
    assert!(
        keys.to_string().find("pwk_").is_none(),
        "key text is never listed"
    );
    let id = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["organization_id"] == "org_b")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = daemon
        .call("DELETE", &format!("/api/keys/{id}"), None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = daemon.call_as(&key_b, "GET", "/api/webhooks", None).await;
    assert_eq!(status, 401);
    let (status, _) = daemon.call("GET", "/healthz", None).await;
    assert_eq!(status, 200);
}
