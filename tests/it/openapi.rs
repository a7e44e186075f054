//! The OpenAPI document (issue 17): served without a token, valid OpenAPI 3.1, and exactly
//! the router's routes, checked both ways against the running daemon: every documented
//! operation is routed, no undocumented method answers on a documented path, and every
//! `.route(` of the router's source is documented. `.ci/run` also runs schemathesis
//! against a live daemon with this document.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::support::{self, ADMIN_TOKEN};

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// The document, fetched without a token.
async fn document(daemon: &support::Daemon) -> Value {
    let (status, doc) = daemon
        .raw("GET", "/api/openapi.json", None, None, Vec::new())
        .await;
    assert_eq!(status, 200, "{doc}");
    doc
}

/// A path of the document with its parameters filled in (with ids that exist nowhere).
fn concrete(path: &str) -> String {
    path.replace("{id}", "x_unknown")
        .replace("{event_id}", "evt_unknown")
}

/// Whether an answer is the router's own "no such route" or "method not allowed".
fn unrouted(status: u16, body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body);
    status == 405 || (status == 404 && text.contains("no such route"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_document_is_openapi_3_1_and_covers_every_route_and_nothing_else() {
    let daemon = support::start(&["--allow-http"]);
    let doc = document(&daemon).await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let paths = doc["paths"].as_object().unwrap();

    // Documented → routed; and no other method on a documented path.
    for (path, item) in paths {
        for method in METHODS {
            let documented = item.get(method).is_some();
            let body = if matches!(method, "post" | "put" | "patch") {
                b"{}".to_vec()
            } else {
                Vec::new()
            };
            let (status, answer) = daemon
                .raw_bytes(
                    &method.to_uppercase(),
                    &concrete(path),
                    Some(ADMIN_TOKEN),
                    Some("application/json"),
                    body,
                )
                .await;
            if documented {
                assert!(
                    !unrouted(status, &answer),
                    "{method} {path} is documented but not routed: {status} {}",
                    String::from_utf8_lossy(&answer)
                );
            } else {
                assert!(
                    unrouted(status, &answer),
                    "{method} {path} answers {status} but is not documented"
                );
            }
        }
    }

    // Every route of the router's source is documented.
    let documented: BTreeSet<&str> = paths.keys().map(String::as_str).collect();
    let source =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/mod.rs")).unwrap();
    let (nested, rest) = source
        .split_once("    Router::new()\n        .route(\"/healthz\"")
        .expect("the outer router starts with /healthz");
    let outer = format!(".route(\"/healthz\"{rest}");
    let ui =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/ui.rs")).unwrap();
    let mut routed = BTreeSet::new();
    for (text, prefix) in [(nested, "/api"), (outer.as_str(), ""), (ui.as_str(), "")] {
        for piece in text.split(".route(").skip(1) {
            let literal = piece.trim_start();
            let route = if let Some(rest) = literal.strip_prefix('"') {
                rest[..rest.find('"').unwrap()].to_owned()
            } else if literal.starts_with("UI_PATH") {
                "/ui/".to_owned()
            } else {
                panic!(
                    "a route that is not a literal: {}",
                    &literal[..40.min(literal.len())]
                );
            };
            routed.insert(format!("{prefix}{route}"));
        }
    }
    assert!(routed.len() > 30, "{routed:?}");
    for route in &routed {
        assert!(
            documented.contains(route.as_str()),
            "{route} is routed but not in the OpenAPI document"
        );
    }
    for path in &documented {
        assert!(
            routed.contains(*path),
            "{path} is documented but has no .route( in the source"
        );
    }

    // Every operation has a success answer, and every schema it names is defined.
    let text = doc.to_string();
    for piece in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = &piece[..piece.find('"').unwrap()];
        assert!(
            doc["components"]["schemas"].get(name).is_some(),
            "{name} is referenced but not defined"
        );
    }

    // An independent validator, when Python has it (.ci/run installs it).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, &text).unwrap();
    let output = std::process::Command::new("python3")
        .arg("-c")
        .arg("import json, sys\nfrom openapi_spec_validator import validate\nvalidate(json.load(open(sys.argv[1])))")
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("No module named 'openapi_spec_validator'") {
        eprintln!("skipped the validator: pip install openapi-spec-validator");
    } else {
        assert!(output.status.success(), "not valid OpenAPI: {stderr}");
    }
}

/// Answers match the document's schemas for the main resources (schemathesis checks the rest
/// in `.ci/run`): a webhook, a page of them, an event, a delivery, an error.
#[tokio::test(flavor = "multi_thread")]
async fn answers_carry_the_fields_the_document_requires() {
    let daemon = support::start(&["--allow-http", "--retry-schedule", "1h"]);
    let doc = document(&daemon).await;
    let schemas = &doc["components"]["schemas"];
    // A schema's required fields, with those of the parts of an `allOf` (a flattened
    // struct).
    fn required_of(schemas: &Value, schema: &Value, out: &mut Vec<String>) {
        if let Some(name) = schema["$ref"].as_str() {
            let name = name.trim_start_matches("#/components/schemas/");
            return required_of(schemas, &schemas[name], out);
        }
        for field in schema["required"].as_array().into_iter().flatten() {
            out.push(field.as_str().unwrap().to_owned());
        }
        for part in schema["allOf"].as_array().into_iter().flatten() {
            required_of(schemas, part, out);
        }
    }
    let required = |name: &str| -> Vec<String> {
        let mut out = Vec::new();
        required_of(schemas, &schemas[name], &mut out);
        assert!(
            !out.is_empty(),
            "{name} has no required fields: {}",
            schemas[name]
        );
        out
    };
    let receiver = support::Receiver::start(support::Behaviour::Status(200)).await;
    let webhook = daemon.create_webhook("org_a", &receiver.url, &["*"]).await;
    let (_, out) = daemon
        .call("GET", &format!("/api/webhooks/{webhook}"), None)
        .await;
    for field in required("WebhookOut") {
        assert!(
            out.get(&field).is_some(),
            "WebhookOut.{field} missing in {out}"
        );
    }
    let (status, accepted) = daemon
        .call(
            "POST",
            "/api/events",
            Some(serde_json::json!({"event_type": "ticket.created", "organization_id": "org_a",
                "data": {"ticket_id": "T", "title": "t", "priority": "p1", "project_id": "p", "created_by": "u"}})),
        )
        .await;
    assert_eq!(status, 202);
    for field in required("EventAccepted") {
        assert!(
            accepted.get(&field).is_some(),
            "EventAccepted.{field} missing"
        );
    }
    let delivery = accepted["delivery_ids"][0].as_str().unwrap();
    let (_, out) = daemon
        .call("GET", &format!("/api/deliveries/{delivery}"), None)
        .await;
    for field in required("DeliveryOut") {
        assert!(
            out.get(&field).is_some(),
            "DeliveryOut.{field} missing in {out}"
        );
    }
    let (status, out) = daemon.call("GET", "/api/webhooks/wh_nope", None).await;
    assert_eq!(status, 404);
    for field in required("ErrorOut") {
        assert!(
            out.get(&field).is_some(),
            "ErrorOut.{field} missing in {out}"
        );
    }
}
