//! The event catalog (issue 17): one JSON Schema (2020-12) per event type for its `data`
//! (spec "Événements disponibles"), with an example. `GET /api/event-types` publishes these
//! schemas and ingest validates `data` with them (the `jsonschema` crate), so what the
//! catalog promises and what ingest accepts are one definition and cannot disagree.
//!
//! Owner's rule: the schemas are built from [`EventType::required_fields`], the table of
//! each type's fields and their kinds; a type's fields change there and nowhere else. A
//! schema requires those fields with those kinds and allows any other field (receivers must
//! ignore fields they do not know: spec "Bonnes pratiques").

use std::collections::HashMap;
use std::sync::LazyLock;

use serde_json::{json, Map, Value};

use crate::event::{EventType, FieldKind};

/// Every type in the catalog's order: the spec's four, `webhook.test`, then the operational
/// ones.
pub fn all_types() -> impl Iterator<Item = EventType> {
    EventType::PUBLIC
        .into_iter()
        .chain([EventType::WebhookTest])
        .chain(EventType::OPERATIONAL)
}

/// The JSON Schema of one field kind.
fn kind_schema(kind: FieldKind) -> Value {
    match kind {
        FieldKind::String => json!({"type": "string"}),
        FieldKind::Number => json!({"type": "number"}),
        FieldKind::StringArray => json!({"type": "array", "items": {"type": "string"}}),
        FieldKind::Boolean => json!({"type": "boolean"}),
    }
}

/// A value of `kind` for examples.
fn example_value(name: &str, kind: FieldKind) -> Value {
    match kind {
        FieldKind::String => match name {
            "ticket_id" => json!("TKT-1042"),
            "incident_id" => json!("INC-77"),
            "priority" => json!("p1"),
            "severity" => json!("critical"),
            "old_status" => json!("open"),
            "new_status" => json!("in_progress"),
            "status" => json!("investigating"),
            "title" => json!("Imprimante du 3e étage en panne"),
            "webhook_id" => json!("wh_01JDZ8Q4S7Q2W3E4R5T6Y7U8I9"),
            "delivery_id" => json!("dlv_01JDZ8Q4S7Q2W3E4R5T6Y7U8I9"),
            "event_id" => json!("evt_1042"),
            "event_type" => json!("ticket.created"),
            "url" => json!("https://helpdesk.example.com/webhooks/palo"),
            "disabled_at" => json!("2026-02-19T10:30:00Z"),
            "reason" => json!("gone"),
            "kind" => json!("recover"),
            "state" => json!("finished"),
            "job_id" => json!("job_01JDZ8Q4S7Q2W3E4R5T6Y7U8I9"),
            "message" => json!("Test delivery from palo-webhooks"),
            _ => json!(format!("{name}_1")),
        },
        FieldKind::Number => json!(3),
        FieldKind::StringArray => json!(["api", "web"]),
        FieldKind::Boolean => json!(true),
    }
}

/// A value of the wrong kind for `kind` (a counter-example).
fn wrong_value(kind: FieldKind) -> Value {
    match kind {
        FieldKind::String => json!(42),
        FieldKind::Number => json!("3"),
        FieldKind::StringArray => json!(["api", 7]),
        FieldKind::Boolean => json!("yes"),
    }
}

/// The JSON Schema (2020-12) of the `data` of an event of type `t`, with one example.
pub fn data_schema(t: EventType) -> Value {
    let mut properties = Map::new();
    for (name, kind) in t.required_fields() {
        properties.insert((*name).to_owned(), kind_schema(*kind));
    }
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": format!("{} data", t.as_str()),
        "type": "object",
        "required": t.required_fields().iter().map(|(name, _)| *name).collect::<Vec<_>>(),
        "properties": properties,
        "additionalProperties": true,
        "examples": [example(t)],
    })
}

/// A valid `data` of type `t`: every required field, with a plausible value.
pub fn example(t: EventType) -> Value {
    Value::Object(
        t.required_fields()
            .iter()
            .map(|(name, kind)| ((*name).to_owned(), example_value(name, *kind)))
            .collect(),
    )
}

/// `data` values of type `t` that ingest must refuse, each with the field the refusal names:
/// not an object; each required field missing; each required field of the wrong kind.
pub fn counter_examples(t: EventType) -> Vec<(Value, String)> {
    let mut out = vec![(json!(["not", "an", "object"]), "data".to_owned())];
    for (name, kind) in t.required_fields() {
        let mut missing = example(t);
        missing.as_object_mut().expect("an object").remove(*name);
        out.push((missing, format!("data.{name}")));
        let mut wrong = example(t);
        wrong[*name] = wrong_value(*kind);
        out.push((wrong, format!("data.{name}")));
    }
    out
}

/// The compiled schema of each type.
static VALIDATORS: LazyLock<HashMap<&'static str, jsonschema::Validator>> = LazyLock::new(|| {
    all_types()
        .map(|t| {
            let validator = jsonschema::draft202012::new(&data_schema(t))
                .expect("the catalog's schemas are valid JSON Schema");
            (t.as_str(), validator)
        })
        .collect()
});

/// Why `data` does not match its type's schema: the field (`data`, `data.<name>`) and
/// what is wrong, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// `data` or `data.<field>` (a dotted path).
    pub field: String,
    /// E.g. `is required`, `must be a string`.
    pub message: String,
}

/// Checks `data` against the schema of `t` (the first mismatch, in the schema's order).
///
/// # Errors
/// The first [`Mismatch`].
pub fn validate(t: EventType, data: &Value) -> Result<(), Mismatch> {
    let validator = &VALIDATORS[t.as_str()];
    let Some(error) = validator.iter_errors(data).next() else {
        return Ok(());
    };
    let mut field = String::from("data");
    for segment in error.instance_path().as_str().split('/').skip(1) {
        field.push('.');
        field.push_str(&segment.replace("~1", "/").replace("~0", "~"));
    }
    use jsonschema::error::ValidationErrorKind as Kind;
    let message = match error.kind() {
        Kind::Required { property } => {
            field = format!("{field}.{}", property.as_str().unwrap_or_default());
            "is required".to_owned()
        }
        Kind::Type { .. } => {
            // The expected kind, in words, from the catalog's table.
            let kind = field
                .strip_prefix("data.")
                .and_then(|f| f.split('.').next())
                .and_then(|f| t.required_fields().iter().find(|(n, _)| *n == f))
                .map(|(_, kind)| *kind);
            match (kind, field.as_str()) {
                (_, "data") => "must be a JSON object".to_owned(),
                (Some(FieldKind::String), _) => "must be a string".to_owned(),
                (Some(FieldKind::Number), _) => "must be a number".to_owned(),
                (Some(FieldKind::StringArray), _) => {
                    // An item of the array: name the array.
                    if let Some((array, _)) = field.rsplit_once('.').filter(|(a, _)| *a != "data") {
                        field = array.to_owned();
                    }
                    "must be an array of strings".to_owned()
                }
                (Some(FieldKind::Boolean), _) => "must be true or false".to_owned(),
                (None, _) => error.to_string(),
            }
        }
        _ => error.to_string(),
    };
    Err(Mismatch { field, message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_pass_and_counter_examples_name_their_field() {
        for t in all_types() {
            assert_eq!(validate(t, &example(t)), Ok(()), "{}", t.as_str());
            for (data, field) in counter_examples(t) {
                let mismatch = validate(t, &data).expect_err(&data.to_string());
                assert_eq!(mismatch.field, field, "{} {data}", t.as_str());
            }
        }
    }

    #[test]
    fn extra_fields_are_allowed_and_messages_read_well() {
        let t = EventType::SystemIncident;
        let mut data = example(t);
        data["runbook"] = json!("https://runbooks.example.com/printers");
        assert_eq!(validate(t, &data), Ok(()));
        data["affected_services"] = json!(["api", 7]);
        let mismatch = validate(t, &data).unwrap_err();
        assert_eq!(
            (mismatch.field.as_str(), mismatch.message.as_str()),
            ("data.affected_services", "must be an array of strings")
        );
        let mismatch = validate(EventType::TicketCreated, &json!({})).unwrap_err();
        assert_eq!(mismatch.message, "is required");
    }
}
