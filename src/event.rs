//! Event types, ingest validation and the delivery envelope (spec "Structure du payload"
//! and "Événements disponibles").
//!
//! Owner's rule: the envelope bytes are built here, once per event, and never re-encoded:
//! `data` is copied byte for byte from the producer's (already validated) JSON text.
//! This module is pure: it takes `now` and returns values; it stores and sends nothing.

use std::collections::HashMap;

use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::clock;
use crate::ids::generate_event_id;

/// The kind of a required `data` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// A JSON string.
    String,
    /// A JSON number (any magnitude).
    Number,
    /// A JSON array of strings.
    StringArray,
    /// `true` or `false`.
    Boolean,
}

/// The event types the daemon knows (spec "Événements disponibles", plus `webhook.test`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// `ticket.created`
    TicketCreated,
    /// `ticket.status_changed`
    TicketStatusChanged,
    /// `ticket.resolved`
    TicketResolved,
    /// `system.incident`
    SystemIncident,
    /// `webhook.test`: made only by the test-delivery endpoint, never ingested.
    WebhookTest,
    /// `webhook.disabled`: the daemon disabled a webhook (operational, issue 15).
    WebhookDisabled,
    /// `webhook.enabled`: a person enabled a disabled webhook again (operational).
    WebhookEnabled,
    /// `delivery.exhausted`: a delivery failed after its last scheduled attempt (operational).
    DeliveryExhausted,
    /// `recovery.finished`: a recovery or replay job ended (operational).
    RecoveryFinished,
}

impl EventType {
    /// The types a producer may ingest and a webhook may subscribe to.
    pub const PUBLIC: [EventType; 4] = [
        EventType::TicketCreated,
        EventType::TicketStatusChanged,
        EventType::TicketResolved,
        EventType::SystemIncident,
    ];

    /// The operational types (issue 15, item 4): made by the daemon itself, never ingested,
    /// received only by webhooks that name them (never through `"*"`).
    pub const OPERATIONAL: [EventType; 4] = [
        EventType::WebhookDisabled,
        EventType::WebhookEnabled,
        EventType::DeliveryExhausted,
        EventType::RecoveryFinished,
    ];

    /// Whether this is one of [`EventType::OPERATIONAL`].
    pub fn is_operational(self) -> bool {
        Self::OPERATIONAL.contains(&self)
    }

    /// The wire name, e.g. `ticket.created`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::WebhookDisabled => "webhook.disabled",
            EventType::WebhookEnabled => "webhook.enabled",
            EventType::DeliveryExhausted => "delivery.exhausted",
            EventType::RecoveryFinished => "recovery.finished",
            EventType::TicketCreated => "ticket.created",
            EventType::TicketStatusChanged => "ticket.status_changed",
            EventType::TicketResolved => "ticket.resolved",
            EventType::SystemIncident => "system.incident",
            EventType::WebhookTest => "webhook.test",
        }
    }

    /// Parses a wire name, including `webhook.test`.
    pub fn parse(name: &str) -> Option<EventType> {
        [EventType::WebhookTest]
            .into_iter()
            .chain(Self::PUBLIC)
            .chain(Self::OPERATIONAL)
            .find(|t| t.as_str() == name)
    }

    /// The `data` field whose value is an event's default ordering key: `ticket_id` for the
    /// ticket types, `incident_id` for `system.incident`, none for the rest.
    pub fn ordering_field(self) -> Option<&'static str> {
        match self {
            EventType::TicketCreated
            | EventType::TicketStatusChanged
            | EventType::TicketResolved => Some("ticket_id"),
            EventType::SystemIncident => Some("incident_id"),
            _ => None,
        }
    }

    /// The `data` fields each event of this type must carry, with their kinds.
    pub fn required_fields(self) -> &'static [(&'static str, FieldKind)] {
        use FieldKind::*;
        match self {
            EventType::TicketCreated => &[
                ("ticket_id", String),
                ("title", String),
                ("priority", String),
                ("project_id", String),
                ("created_by", String),
            ],
            EventType::TicketStatusChanged => &[
                ("ticket_id", String),
                ("old_status", String),
                ("new_status", String),
                ("changed_by", String),
            ],
            EventType::TicketResolved => &[
                ("ticket_id", String),
                ("resolved_by", String),
                ("resolution_time_hours", Number),
            ],
            EventType::SystemIncident => &[
                ("incident_id", String),
                ("severity", String),
                ("affected_services", StringArray),
                ("status", String),
            ],
            EventType::WebhookTest => &[("webhook_id", String), ("message", String)],
            EventType::WebhookDisabled => &[
                ("webhook_id", String),
                ("url", String),
                ("reason", String),
                ("disabled_at", String),
            ],
            EventType::WebhookEnabled => &[
                ("webhook_id", String),
                ("url", String),
                ("deliver_held", Boolean),
                ("held", Number),
            ],
            EventType::DeliveryExhausted => &[
                ("delivery_id", String),
                ("webhook_id", String),
                ("event_id", String),
                ("event_type", String),
                ("attempts", Number),
            ],
            EventType::RecoveryFinished => &[
                ("job_id", String),
                ("kind", String),
                ("webhook_id", String),
                ("state", String),
                ("matched", Number),
                ("succeeded", Number),
                ("failed", Number),
            ],
        }
    }
}

/// A producer's event as received, after JSON parsing and before validation.
#[derive(Debug)]
pub struct EventInput<'a> {
    /// Optional idempotency key; generated (`evt_<ULID>`) when absent.
    pub event_id: Option<String>,
    /// Wire name of the event type.
    pub event_type: String,
    /// Optional RFC 3339 time the event happened; the time of ingest when absent.
    pub timestamp: Option<String>,
    /// The organization the event belongs to.
    pub organization_id: String,
    /// The producer's `data`, as the exact JSON text received.
    pub data: &'a RawValue,
}

/// A validated event, with its envelope serialized once.
#[derive(Debug, Clone)]
pub struct PreparedEvent {
    /// The event id (given or generated).
    pub event_id: String,
    /// The event type.
    pub event_type: EventType,
    /// The envelope `timestamp`, RFC 3339 in UTC.
    pub timestamp: String,
    /// The organization.
    pub organization_id: String,
    /// The exact body every attempt sends.
    pub body: Vec<u8>,
    /// SHA-256 over what the producer gave (type, timestamp, data), to tell an idempotent
    /// replay (same hash) from a conflicting reuse of an `event_id` (different hash).
    pub content_hash: [u8; 32],
    /// Deliveries of one webhook with `ordering: "key"` and the same key go one at a time,
    /// in ingest order (issue 16): the producer's `ordering_key`, else `data.ticket_id` or
    /// `data.incident_id` ([`EventType::ordering_field`]); 1 to [`MAX_ORDERING_KEY_CHARS`].
    pub ordering_key: Option<String>,
}

impl PreparedEvent {
    /// Sets the producer's own ordering key, which also becomes part of the idempotency
    /// hash: the same `event_id` sent again with another key is a conflict, not a replay.
    pub fn set_ordering_key(&mut self, key: String) {
        let mut hash = Sha256::new();
        hash.update(self.content_hash);
        hash.update([0]);
        hash.update(key.as_bytes());
        self.content_hash = hash.finalize().into();
        self.ordering_key = Some(key);
    }
}

/// Longest ordering key, in characters.
pub const MAX_ORDERING_KEY_CHARS: usize = 256;

/// Checks a producer's `ordering_key`: 1 to 256 characters, no control characters.
///
/// # Errors
/// [`EventError`] for `ordering_key`.
pub fn check_ordering_key(key: &str) -> Result<(), EventError> {
    let n = key.chars().count();
    if n == 0 || n > MAX_ORDERING_KEY_CHARS || key.chars().any(char::is_control) {
        return Err(invalid(
            "ordering_key",
            "must be 1 to 256 characters, without control characters",
        ));
    }
    Ok(())
}

/// A validation failure, naming the field (`data.ticket_id`, `event_type`, ...). Maps to 422.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct EventError {
    /// The offending field, as a dotted path.
    pub field: String,
    /// What is wrong with it, in words.
    pub message: String,
}

fn invalid(field: &str, message: impl Into<String>) -> EventError {
    EventError {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// Whether `id` is a valid producer-given id: 1-128 characters from `A-Za-z0-9_-.:`.
/// Used for `event_id` and `organization_id`.
pub fn is_valid_external_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

/// Checks a producer-given id (see [`is_valid_external_id`]), naming `field` when it is not.
///
/// # Errors
/// [`EventError`] for `field`.
pub fn check_external_id(field: &str, id: &str) -> Result<(), EventError> {
    if is_valid_external_id(id) {
        Ok(())
    } else {
        Err(invalid(
            field,
            "must be 1-128 characters from A-Z a-z 0-9 _ - . :",
        ))
    }
}

/// Validates a producer's event and builds its envelope.
///
/// `allow_test` admits `webhook.test` (only the test-delivery endpoint sets it).
///
/// # Errors
/// [`EventError`] naming the first invalid field: unknown event type, bad `event_id` or
/// `organization_id`, a timestamp that is not RFC 3339, `data` not an object, or a required
/// `data` field missing or of the wrong JSON type.
pub fn prepare(
    input: EventInput<'_>,
    now_ms: u64,
    allow_test: bool,
) -> Result<PreparedEvent, EventError> {
    if EventType::parse(&input.event_type).is_some_and(EventType::is_operational) {
        return Err(invalid(
            "event_type",
            format!(
                "{:?} is an operational event type: the daemon makes these, they cannot be sent",
                input.event_type
            ),
        ));
    }
    let event_type = EventType::parse(&input.event_type)
        .filter(|t| allow_test || *t != EventType::WebhookTest)
        .ok_or_else(|| {
            invalid(
                "event_type",
                format!("unknown event type {:?}", input.event_type),
            )
        })?;
    if let Some(id) = &input.event_id {
        check_external_id("event_id", id)?;
    }
    check_external_id("organization_id", &input.organization_id)?;
    let timestamp = match &input.timestamp {
        Some(text) => {
            clock::parse_rfc3339(text)
                .map_err(|reason| invalid("timestamp", reason))?
                .0
        }
        None => clock::format_seconds(now_ms),
    };
    let ordering_key = check_data(event_type, input.data)?;

    let content_hash = {
        let mut hash = Sha256::new();
        hash.update(event_type.as_str().as_bytes());
        hash.update([0]);
        hash.update(
            input
                .timestamp
                .as_deref()
                .map(|_| timestamp.as_bytes())
                .unwrap_or_default(),
        );
        hash.update([0]);
        hash.update(input.data.get().as_bytes());
        hash.finalize().into()
    };
    let event_id = input.event_id.unwrap_or_else(generate_event_id);
    let body = envelope(
        &event_id,
        event_type,
        &timestamp,
        &input.organization_id,
        input.data.get(),
    );
    Ok(PreparedEvent {
        event_id,
        event_type,
        timestamp,
        organization_id: input.organization_id,
        body,
        content_hash,
        ordering_key,
    })
}

/// Builds the envelope `{"event_id","event_type","timestamp","organization_id","data"}`
/// with `data_json` inserted verbatim.
pub fn envelope(
    event_id: &str,
    event_type: EventType,
    timestamp: &str,
    organization_id: &str,
    data_json: &str,
) -> Vec<u8> {
    let quoted = |s: &str| serde_json::to_string(s).unwrap_or_default();
    format!(
        "{{\"event_id\":{},\"event_type\":\"{}\",\"timestamp\":{},\"organization_id\":{},\"data\":{}}}",
        quoted(event_id),
        event_type.as_str(),
        quoted(timestamp),
        quoted(organization_id),
        data_json
    )
    .into_bytes()
}

/// Validates `data` for `event_type`; returns its default ordering key (the value of
/// [`EventType::ordering_field`] when it is a string of 1 to 256 characters).
fn check_data(event_type: EventType, data: &RawValue) -> Result<Option<String>, EventError> {
    let fields: HashMap<String, &RawValue> =
        serde_json::from_str(data.get()).map_err(|_| invalid("data", "must be a JSON object"))?;
    // What the type's schema constrains: its required fields (any other field is allowed as
    // it is, so it is not parsed further).
    let constrained: serde_json::Map<String, serde_json::Value> = event_type
        .required_fields()
        .iter()
        .filter_map(|(name, _)| {
            let raw = fields.get(*name)?;
            // A number beyond f64 (1e400) is still a number: check it as one.
            let value = serde_json::from_str(raw.get()).unwrap_or_else(|_| {
                if raw
                    .get()
                    .starts_with(|c: char| c == '-' || c.is_ascii_digit())
                {
                    serde_json::Value::from(0)
                } else {
                    serde_json::Value::Null
                }
            });
            Some(((*name).to_owned(), value))
        })
        .collect();
    crate::catalog::validate(event_type, &serde_json::Value::Object(constrained))
        .map_err(|m| invalid(&m.field, m.message))?;
    Ok(event_type
        .ordering_field()
        .and_then(|name| fields.get(name))
        .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
        .filter(|key| check_ordering_key(key).is_ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(event_type: &str, data: &'a RawValue) -> EventInput<'a> {
        EventInput {
            event_id: Some("evt_1".into()),
            event_type: event_type.into(),
            timestamp: Some("2026-02-19T11:30:00+01:00".into()),
            organization_id: "org_1".into(),
            data,
        }
    }

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    #[test]
    fn envelope_keeps_data_bytes_and_normalizes_timestamp() {
        let data = raw(
            r#"{"ticket_id":"T-1","title":"Crème \"brûlée\" 🎉","priority":"p3","project_id":"p","created_by":"u","n":12345678901234567890}"#,
        );
        let event = prepare(input("ticket.created", &data), 0, false).unwrap();
        let body = String::from_utf8(event.body).unwrap();
        assert_eq!(
            body,
            format!(
                r#"{{"event_id":"evt_1","event_type":"ticket.created","timestamp":"2026-02-19T10:30:00Z","organization_id":"org_1","data":{}}}"#,
                data.get()
            )
        );
    }

    #[test]
    fn missing_or_mistyped_required_fields_are_named() {
        let data = raw(r#"{"ticket_id":"T","resolved_by":"u","resolution_time_hours":"2"}"#);
        let err = prepare(input("ticket.resolved", &data), 0, false).unwrap_err();
        assert_eq!(err.field, "data.resolution_time_hours");
        let data =
            raw(r#"{"incident_id":"I","severity":"s","affected_services":["a",1],"status":"x"}"#);
        assert_eq!(
            prepare(input("system.incident", &data), 0, false)
                .unwrap_err()
                .field,
            "data.affected_services"
        );
        let data = raw(r#"{"ticket_id":"T"}"#);
        assert_eq!(
            prepare(input("ticket.status_changed", &data), 0, false)
                .unwrap_err()
                .field,
            "data.old_status"
        );
    }

    #[test]
    fn webhook_test_type_is_internal_only() {
        let data = raw(r#"{"webhook_id":"wh","message":"m"}"#);
        assert_eq!(
            prepare(input("webhook.test", &data), 0, false)
                .unwrap_err()
                .field,
            "event_type"
        );
        assert!(prepare(input("webhook.test", &data), 0, true).is_ok());
    }

    #[test]
    fn content_hash_ignores_generated_timestamps_but_not_data() {
        let data = raw(r#"{"webhook_id":"wh","message":"m"}"#);
        let mut a = input("webhook.test", &data);
        a.timestamp = None;
        let mut b = input("webhook.test", &data);
        b.timestamp = None;
        let a = prepare(a, 1_000, true).unwrap();
        let b = prepare(b, 99_000, true).unwrap();
        assert_eq!(a.content_hash, b.content_hash);
        let other = raw(r#"{"webhook_id":"wh","message":"n"}"#);
        let c = prepare(input("webhook.test", &other), 0, true).unwrap();
        assert_ne!(a.content_hash, c.content_hash);
    }
}
