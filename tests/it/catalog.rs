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
