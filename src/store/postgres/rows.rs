//! Rows of the PostgreSQL schema to domain types and back.
//!
//! Owner's rule: the only place that knows the column lists and their encodings. Ids are
//! the API's text forms (`wh_<ULID>`, ...), times are ms since the epoch as `bigint`, enums
//! are their API names, so a row reads the same in `psql` as in the API.

use tokio_postgres::Row;

use crate::event::EventType;
use crate::ids::{DeliveryId, EventKey, KeyId, WebhookId};
use crate::model::{
    ApiKey, Attempt, AttemptError, AttemptOutcome, Delivery, DeliveryStatus, DisableReason,
    Disabled, Event, EventFilter, PreviousSecret, Secret, Trigger, Webhook,
};
use crate::store::sealed::{is_sealed, SecretsKey};
use crate::store::StoreError;

/// Columns of `webhooks`, in the order [`webhook`] reads them.
pub(super) const WEBHOOK_COLS: &str = "id, organization_id, url, event_types, secret, \
     previous_secret, previous_expires_at_ms, active, description, created_at_ms, updated_at_ms, \
     disabled, failing_since_ms, options";

/// Columns of `deliveries`, in the order [`delivery`] reads them.
pub(super) const DELIVERY_COLS: &str = "id, organization_id, webhook_id, event_key, event_id, \
     event_type, status, attempt_count, scheduled_attempts, next_attempt_at_ms, created_at_ms, \
     updated_at_ms, last_outcome, ordering_key";

/// Columns of `events`, in the order [`event`] reads them.
pub(super) const EVENT_COLS: &str = "key, event_id, event_type, \"timestamp\", organization_id, \
     received_at_ms, body, content_hash, delivery_ids, payload_deleted_at_ms, ordering_key";

/// Columns of `attempts`, in the order [`attempt`] reads them (after `delivery_id`).
pub(super) const ATTEMPT_COLS: &str = "delivery_id, number, started_at_ms, duration_ms, \
     status_code, error, response_body, response_body_truncated, trigger, retry_after_ms, \
     error_detail";

/// Columns of `api_keys`, in the order [`api_key`] reads them.
pub(super) const API_KEY_COLS: &str = "id, organization_id, description, created_at_ms, key_hash";

/// A time or count for a `bigint` column (saturating: `u64::MAX` means "never").
pub(super) fn ms(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A `bigint` column back to ms (negative values, which we never write, read as 0).
pub(super) fn from_ms(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn corrupt(table: &'static str, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        table,
        reason: reason.into(),
    }
}

fn parse_id<T: std::str::FromStr>(table: &'static str, text: &str) -> Result<T, StoreError> {
    text.parse()
        .map_err(|_| corrupt(table, format!("bad id {text:?}")))
}

fn event_type(table: &'static str, name: &str) -> Result<EventType, StoreError> {
    EventType::parse(name).ok_or_else(|| corrupt(table, format!("unknown event type {name:?}")))
}

fn status(name: &str) -> Result<DeliveryStatus, StoreError> {
    DeliveryStatus::parse(name)
        .ok_or_else(|| corrupt("deliveries", format!("unknown status {name:?}")))
}

fn count(table: &'static str, value: i32) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| corrupt(table, format!("negative count {value}")))
}

/// The statuses of deliveries that are not final, for `status = ANY($n)`.
pub(super) fn not_final() -> Vec<&'static str> {
    DeliveryStatus::ALL
        .iter()
        .filter(|s| !s.is_final())
        .map(|s| s.as_str())
        .collect()
}

/// A stored secret as the domain sees it: opened with `key` when sealed; without a key a
/// sealed secret stays as stored (for callers that never use it, as on the file backend).
fn open_secret(
    id: WebhookId,
    stored: String,
    key: Option<&SecretsKey>,
) -> Result<Secret, StoreError> {
    match key {
        Some(key) if is_sealed(&stored) => Ok(key.open(id, &stored)?),
        _ => Ok(Secret(stored)),
    }
}

/// A secret as stored: sealed with `key` when one is set.
pub(super) fn stored_secret(id: WebhookId, secret: &Secret, key: Option<&SecretsKey>) -> String {
    match key {
        Some(key) => key.seal(id, secret),
        None => secret.0.clone(),
    }
}

/// A webhook from a row of [`WEBHOOK_COLS`], secrets opened with `key`.
///
/// # Errors
/// [`StoreError::Corrupt`] for a value that does not parse; [`StoreError::Sealed`] for a
/// sealed secret that does not open with `key`.
pub(super) fn webhook(row: &Row, key: Option<&SecretsKey>) -> Result<Webhook, StoreError> {
    let id: WebhookId = parse_id("webhooks", row.try_get::<_, &str>(0)?)?;
    let events = event_filter(row, 3)?;
    let previous_secret = match (
        row.try_get::<_, Option<String>>(5)?,
        row.try_get::<_, Option<i64>>(6)?,
    ) {
        (Some(secret), Some(expires)) => Some(PreviousSecret {
            secret: open_secret(id, secret, key)?,
            expires_at_ms: from_ms(expires),
        }),
        _ => None,
    };
    Ok(Webhook {
        id,
        organization_id: row.try_get(1)?,
        url: row.try_get(2)?,
        events,
        secret: open_secret(id, row.try_get(4)?, key)?,
        previous_secret,
        active: row.try_get(7)?,
        description: row.try_get(8)?,
        created_at_ms: from_ms(row.try_get(9)?),
        updated_at_ms: from_ms(row.try_get(10)?),
        disabled: row
            .try_get::<_, Option<String>>(11)?
            .map(|text| {
                serde_json::from_str(&text)
                    .map_err(|_| corrupt("webhooks", "disabled is not JSON"))
                    .and_then(|v| disabled_from_json(&v))
            })
            .transpose()?,
        failing_since_ms: row.try_get::<_, Option<i64>>(12)?.map(from_ms),
        options: crate::store::options::decode(row.try_get(13)?, id, key)?,
    })
}

/// The `disabled` column (JSON text) of a webhook: `{"reason","at_ms","delivery_id",
/// "status_code","failing_since_ms","last_error"}`, `NULL` when enabled.
pub(super) fn disabled_json(disabled: Option<&Disabled>) -> Option<String> {
    disabled.map(|d| {
        serde_json::json!({
            "reason": d.reason.as_str(),
            "at_ms": d.at_ms,
            "delivery_id": d.delivery_id.map(|id| id.to_string()),
            "status_code": d.status_code,
            "failing_since_ms": d.failing_since_ms,
            "last_error": d.last_error,
        })
        .to_string()
    })
}

fn disabled_from_json(v: &serde_json::Value) -> Result<Disabled, StoreError> {
    let bad = || corrupt("webhooks", "disabled".to_owned());
    Ok(Disabled {
        reason: v["reason"]
            .as_str()
            .and_then(DisableReason::parse)
            .ok_or_else(bad)?,
        at_ms: v["at_ms"].as_u64().ok_or_else(bad)?,
        delivery_id: match v["delivery_id"].as_str() {
            Some(id) => Some(parse_id("webhooks", id)?),
            None => None,
        },
        status_code: v["status_code"]
            .as_u64()
            .map(|c| u16::try_from(c).map_err(|_| bad()))
            .transpose()?,
        failing_since_ms: v["failing_since_ms"].as_u64(),
        last_error: v["last_error"].as_str().map(str::to_owned),
    })
}

/// The filter in column `idx` (`event_types`): `NULL` is every public type.
fn event_filter(row: &Row, idx: usize) -> Result<EventFilter, StoreError> {
    Ok(match row.try_get::<_, Option<Vec<String>>>(idx)? {
        None => EventFilter::All,
        Some(names) => EventFilter::from_names(&names)
            .ok_or_else(|| corrupt("webhooks", format!("event types {names:?}")))?,
    })
}

/// The `event_types` column of a filter: `NULL` for every public type.
pub(super) fn event_types(filter: &EventFilter) -> Option<Vec<String>> {
    match filter {
        EventFilter::All => None,
        filter => Some(filter.names()),
    }
}

/// A delivery from a row of [`DELIVERY_COLS`].
///
/// # Errors
/// [`StoreError::Corrupt`] for a value that does not parse.
pub(super) fn delivery(row: &Row) -> Result<Delivery, StoreError> {
    Ok(Delivery {
        id: parse_id("deliveries", row.try_get::<_, &str>(0)?)?,
        organization_id: row.try_get(1)?,
        webhook_id: parse_id("deliveries", row.try_get::<_, &str>(2)?)?,
        event_key: parse_id("deliveries", row.try_get::<_, &str>(3)?)?,
        event_id: row.try_get(4)?,
        event_type: event_type("deliveries", row.try_get::<_, &str>(5)?)?,
        status: status(row.try_get::<_, &str>(6)?)?,
        attempt_count: count("deliveries", row.try_get(7)?)?,
        scheduled_attempts: count("deliveries", row.try_get(8)?)?,
        next_attempt_at_ms: row.try_get::<_, Option<i64>>(9)?.map(from_ms),
        created_at_ms: from_ms(row.try_get(10)?),
        updated_at_ms: from_ms(row.try_get(11)?),
        last_outcome: row
            .try_get::<_, Option<&str>>(12)?
            .map(|name| {
                AttemptOutcome::parse(name)
                    .ok_or_else(|| corrupt("deliveries", format!("unknown outcome {name:?}")))
            })
            .transpose()?,
        ordering_key: row.try_get(13)?,
    })
}

/// An event from a row of [`EVENT_COLS`].
///
/// # Errors
/// [`StoreError::Corrupt`] for a value that does not parse.
pub(super) fn event(row: &Row) -> Result<Event, StoreError> {
    let hash: &[u8] = row.try_get(7)?;
    Ok(Event {
        key: parse_id("events", row.try_get::<_, &str>(0)?)?,
        event_id: row.try_get(1)?,
        event_type: event_type("events", row.try_get::<_, &str>(2)?)?,
        timestamp: row.try_get(3)?,
        organization_id: row.try_get(4)?,
        received_at_ms: from_ms(row.try_get(5)?),
        body: row.try_get(6)?,
        content_hash: hash
            .try_into()
            .map_err(|_| corrupt("events", "content hash is not 32 bytes"))?,
        delivery_ids: row
            .try_get::<_, Vec<&str>>(8)?
            .into_iter()
            .map(|id| parse_id("events", id))
            .collect::<Result<_, _>>()?,
        payload_deleted_at_ms: row.try_get::<_, Option<i64>>(9)?.map(from_ms),
        ordering_key: row.try_get(10)?,
    })
}

/// An attempt from a row of [`ATTEMPT_COLS`], with its delivery.
///
/// # Errors
/// [`StoreError::Corrupt`] for a value that does not parse.
pub(super) fn attempt(row: &Row) -> Result<(DeliveryId, Attempt), StoreError> {
    let delivery: DeliveryId = parse_id("attempts", row.try_get::<_, &str>(0)?)?;
    let error = match row.try_get::<_, Option<&str>>(5)? {
        None => None,
        Some(name) => Some(
            AttemptError::parse(name)
                .ok_or_else(|| corrupt("attempts", format!("unknown error {name:?}")))?,
        ),
    };
    let trigger: &str = row.try_get(8)?;
    let status_code = match row.try_get::<_, Option<i32>>(4)? {
        None => None,
        Some(code) => {
            Some(u16::try_from(code).map_err(|_| corrupt("attempts", format!("status {code}")))?)
        }
    };
    Ok((
        delivery,
        Attempt {
            number: count("attempts", row.try_get(1)?)?,
            started_at_ms: from_ms(row.try_get(2)?),
            duration_ms: from_ms(row.try_get(3)?),
            status_code,
            error,
            response_body: row.try_get(6)?,
            response_body_truncated: row.try_get(7)?,
            trigger: Trigger::parse(trigger)
                .ok_or_else(|| corrupt("attempts", format!("unknown trigger {trigger:?}")))?,
            retry_after_ms: row.try_get::<_, Option<i64>>(9)?.map(from_ms),
            error_detail: row.try_get(10)?,
        },
    ))
}

/// An API key from a row of [`API_KEY_COLS`].
///
/// # Errors
/// [`StoreError::Corrupt`] for a value that does not parse.
pub(super) fn api_key(row: &Row) -> Result<ApiKey, StoreError> {
    let hash: &[u8] = row.try_get(4)?;
    Ok(ApiKey {
        id: parse_id::<KeyId>("api_keys", row.try_get::<_, &str>(0)?)?,
        organization_id: row.try_get(1)?,
        description: row.try_get(2)?,
        created_at_ms: from_ms(row.try_get(3)?),
        key_hash: hash
            .try_into()
            .map_err(|_| corrupt("api_keys", "key hash is not 32 bytes"))?,
    })
}

/// An event key's text form (for range bounds on `events.key`).
pub(super) fn event_key(key: EventKey) -> String {
    key.to_string()
}

/// What fan-out reads of a webhook: `SELECT id, organization_id, event_types, active,
/// disabled IS NOT NULL, options`: its organization and its fan-out view.
///
/// # Errors
/// [`StoreError::Corrupt`] for a value that does not parse.
pub(super) fn fan_out_row(row: &Row) -> Result<(String, crate::store::FanOutTarget), StoreError> {
    let events = event_filter(row, 2)?;
    let organization_id: String = row.try_get(1)?;
    Ok((
        organization_id.clone(),
        crate::store::FanOutTarget {
            id: parse_id("webhooks", row.try_get::<_, &str>(0)?)?,
            organization_id,
            events,
            filter: crate::store::options::cached_filter(
                parse_id("webhooks", row.try_get::<_, &str>(0)?)?,
                row.try_get(5)?,
            )?,
            active: row.try_get(3)?,
            disabled: row.try_get(4)?,
        },
    ))
}
