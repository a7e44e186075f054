//! Untrusted `POST /api/events` bodies, taken the way the API takes them: strict JSON
//! validation, serde into the API's own `EventIn`, then `event::prepare`.
//!
//! Properties: nothing panics; a prepared event's body is valid JSON (for serde_json and
//! for `json_strict`) whose `data` is the producer's `data` text byte for byte, whose
//! other fields are the prepared ones, and whose `timestamp` is already normalized
//! RFC 3339 UTC; preparing again gives the same content hash (and the same body when
//! nothing was generated).
#![no_main]

use libfuzzer_sys::fuzz_target;
use palo_webhooks::api::types::EventIn;
use palo_webhooks::clock;
use palo_webhooks::event::{self, EventInput, PreparedEvent};
use palo_webhooks::json_strict;
use serde::Deserialize;
use serde_json::value::RawValue;

/// 2026-02-19T10:30:00Z: the time of ingest the target pretends it is.
const NOW_MS: u64 = 1_771_497_000_000;

/// Stands for the organization of the API key when the body names none.
const CALLER_ORGANIZATION: &str = "org_fuzz";

/// The delivered envelope, read back with `data` kept as raw text.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<'a> {
    event_id: String,
    event_type: String,
    timestamp: String,
    organization_id: String,
    #[serde(borrow)]
    data: &'a RawValue,
}

fn prepare(input: &EventIn) -> Result<PreparedEvent, event::EventError> {
    event::prepare(
        EventInput {
            event_id: input.event_id.clone(),
            event_type: input.event_type.clone(),
            timestamp: input.timestamp.clone(),
            organization_id: input
                .organization_id
                .clone()
                .unwrap_or_else(|| CALLER_ORGANIZATION.to_owned()),
            data: &input.data,
        },
        NOW_MS,
        false,
    )
}

fuzz_target!(|bytes: &[u8]| {
    // As `api::extract::parse_json`: a leading UTF-8 BOM is ignored.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    if json_strict::validate(text).is_err() {
        return;
    }
    let Ok(input) = serde_json::from_str::<EventIn>(text) else {
        return;
    };
    let Ok(prepared) = prepare(&input) else {
        return;
    };

    // Valid JSON for serde_json and for the strict validator. Not `serde_json::Value`: it
    // refuses numbers beyond a double's range ("number out of range"), which RFC 8259
    // allows and which `data` deliberately passes through unchanged (see json_strict).
    serde_json::from_slice::<serde::de::IgnoredAny>(&prepared.body)
        .expect("the envelope is valid JSON");
    let body = std::str::from_utf8(&prepared.body).expect("the envelope is UTF-8");
    json_strict::validate(body).expect("the envelope passes the strict validator");
    let envelope: Envelope<'_> = serde_json::from_str(body).expect("the envelope has its shape");
    assert_eq!(
        envelope.data.get(),
        input.data.get(),
        "data is copied byte for byte"
    );
    assert_eq!(envelope.event_id, prepared.event_id);
    assert_eq!(envelope.event_type, prepared.event_type.as_str());
    assert_eq!(envelope.timestamp, prepared.timestamp);
    assert_eq!(envelope.organization_id, prepared.organization_id);
    if let Some(given) = &input.event_id {
        assert_eq!(&prepared.event_id, given);
    }
    assert!(
        prepared.timestamp.ends_with('Z'),
        "{:?}",
        prepared.timestamp
    );
    assert_eq!(
        clock::normalize_rfc3339(&prepared.timestamp).map(|(text, _)| text),
        Some(prepared.timestamp.clone()),
        "the envelope timestamp is already normalized"
    );

    let again = prepare(&input).expect("preparing is deterministic");
    assert_eq!(again.content_hash, prepared.content_hash);
    if input.event_id.is_some() && input.timestamp.is_some() {
        assert_eq!(again.body, prepared.body);
    }
});
