//! The event catalog (issue 17): `GET /api/event-types` gives each type's JSON Schema, and
//! ingest agrees with it. Examples and counter-examples are made here from the published
//! schemas alone (not from the daemon's code) and fed through `POST /api/events`; the
//! README's list of types and fields is checked against the catalog.

use serde_json::{json, Value};

use crate::support;

/// A value that is not of the JSON Schema `type` of `property`.
fn wrong_kind(property: &Value) -> Value {
    match property["type"].as_str() {
        Some("string") => json!(42),
        Some("number") => json!("3"),
        Some("boolean") => json!("yes"),
        Some("array") => json!([1, 2]),
        other => panic!("a property type the test does not know: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ingest_accepts_every_schema_example_and_refuses_every_counter_example() {
    let daemon = support::start(&["--allow-http", "--retry-schedule", "1h"]);
    let (status, catalog) = daemon.call("GET", "/api/event-types", None).await;
    assert_eq!(status, 200);
    let types = catalog["data"].as_array().unwrap();
    let names: Vec<&str> = types.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert!(
        names.contains(&"webhook.test") && names.contains(&"delivery.exhausted"),
        "{names:?}"
    );
    let mut n = 0;
    let mut send = |event_type: &str, data: Value| {
        n += 1;
        json!({"event_id": format!("evt_cat_{n}"), "event_type": event_type,
               "organization_id": "org_a", "data": data})
    };
    for entry in types {
        let name = entry["name"].as_str().unwrap();
        let schema = &entry["schema"];
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        assert_eq!(schema["type"], "object");
        let required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            entry["required_fields"].as_array().unwrap().len(),
            required.len(),
            "{name}"
        );
        let example = schema["examples"][0].clone();
        let (status, body) = daemon
            .call("POST", "/api/events", Some(send(name, example.clone())))
            .await;
        if entry["ingestible"] != true {
            // webhook.test and the operational types: made by the daemon only.
            assert_eq!(status, 422, "{name}: {body}");
            assert_eq!(body["error"]["field"], "event_type", "{name}: {body}");
            continue;
        }
        assert_eq!(status, 202, "{name}'s own example: {body}");
        // Extra fields are allowed (additionalProperties).
        let mut extra = example.clone();
        extra["x_custom"] = json!({"nested": [1, 2, 3]});
        let (status, body) = daemon
            .call("POST", "/api/events", Some(send(name, extra)))
            .await;
        assert_eq!(status, 202, "{name} with an extra field: {body}");
        // Not an object.
        let (status, body) = daemon
            .call(
                "POST",
                "/api/events",
                Some(send(name, json!([example.clone()]))),
            )
            .await;
        assert_eq!(
            (status, &body["error"]["field"]),
            (422, &json!("data")),
            "{body}"
        );
        for field in &required {
            let mut missing = example.clone();
            missing.as_object_mut().unwrap().remove(*field);
            let (status, body) = daemon
                .call("POST", "/api/events", Some(send(name, missing)))
                .await;
            assert_eq!(status, 422, "{name} without {field}: {body}");
            assert_eq!(body["error"]["field"], format!("data.{field}"), "{body}");
            let mut wrong = example.clone();
            wrong[*field] = wrong_kind(&schema["properties"][*field]);
            let (status, body) = daemon
                .call("POST", "/api/events", Some(send(name, wrong.clone())))
                .await;
            assert_eq!(status, 422, "{name} with {wrong}: {body}");
            assert_eq!(body["error"]["field"], format!("data.{field}"), "{body}");
        }
    }
}

/// The README's list of event types and their fields says what the catalog says.
#[tokio::test(flavor = "multi_thread")]
async fn the_readme_lists_every_type_with_its_catalog_fields() {
    let daemon = support::start(&["--allow-http"]);
    let (_, catalog) = daemon.call("GET", "/api/event-types", None).await;
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for entry in catalog["data"].as_array().unwrap() {
        let name = entry["name"].as_str().unwrap();
        let start = readme
            .find(&format!("`{name}` {{"))
            .unwrap_or_else(|| panic!("README does not list `{name}` {{fields}}"));
        let fields = &readme[start..start + readme[start..].find('}').unwrap()];
        for field in entry["required_fields"].as_array().unwrap() {
            let field = field.as_str().unwrap();
            assert!(
                fields.contains(field),
                "README's `{name}` lacks {field}: {fields}"
            );
        }
    }
}

/// An accepted event is read whole by envelope filters, whatever `data` holds: a number
/// beyond a double's range (accepted and delivered byte for byte) or deep nesting must not
/// hide the event from filtered webhooks (a hostile test found both silently dropped).
#[tokio::test(flavor = "multi_thread")]
async fn filters_read_events_with_huge_numbers_and_deep_nesting() {
    let daemon = support::start(&["--allow-http", "--retry-schedule", "1h"]);
    let receiver = support::Receiver::start(support::Behaviour::Status(200)).await;
    for filter in [
        json!({"data.ticket_id": "T"}),
        json!({"data.x": {"$exists": true}}),
    ] {
        let (status, body) = daemon
            .call(
                "POST",
                "/api/webhooks",
                Some(
                    json!({"url": receiver.url, "events": ["*"], "organization_id": "org_f",
                    "secret": support::SECRET, "filter": filter}),
                ),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let deep = format!("{}1{}", "[".repeat(120), "]".repeat(120));
    for (i, x) in ["1e400", "-1e400", deep.as_str()].iter().enumerate() {
        let text = format!(
            r#"{{"event_id":"evt_huge_{i}","event_type":"ticket.created","organization_id":"org_f","data":{{"ticket_id":"T","title":"t","priority":"p","project_id":"p","created_by":"u","x":{x}}}}}"#
        );
        let (status, body) = daemon
            .raw(
                "POST",
                "/api/events",
                Some(support::ADMIN_TOKEN),
                Some("application/json"),
                text.clone().into_bytes(),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["deliveries"], 2, "both filters match {x}: {body}");
    }
    let requests = receiver
        .wait_for(6, std::time::Duration::from_secs(10))
        .await;
    assert!(
        requests
            .iter()
            .any(|r| String::from_utf8_lossy(&r.body).contains(r#""x":1e400"#)),
        "delivered byte for byte"
    );
    // A custom header value must be visible ASCII, as its error says.
    let (status, body) = daemon
        .call(
            "POST",
            "/api/webhooks",
            Some(
                json!({"url": receiver.url, "events": ["*"], "organization_id": "org_f",
                "headers": [{"name": "X-Note", "value": "é☃"}]}),
            ),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    for reserved in ["Content-Encoding", "Expect"] {
        let (status, body) = daemon
            .call(
                "POST",
                "/api/webhooks",
                Some(
                    json!({"url": receiver.url, "events": ["*"], "organization_id": "org_f",
                    "headers": [{"name": reserved, "value": "gzip"}]}),
                ),
            )
            .await;
        assert_eq!(status, 422, "{reserved}: {body}");
    }
}
