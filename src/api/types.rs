//! The API's JSON shapes (requests `*In`, responses `*Out`) and their conversions from
//! domain types. Times are RFC 3339 strings in UTC; durations are integer ms.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::options::with_delivery_options;
use crate::clock::format_ms;
use crate::model::{ApiKey, Attempt, Delivery, Event, Webhook};

with_delivery_options! {
    /// `POST /api/webhooks` (spec "Créer un webhook").
    #[derive(Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    #[schema(example = json!({
        "url": "https://helpdesk.example.com/webhooks/palo",
        "events": ["ticket.created", "ticket.resolved"],
        "description": "Helpdesk sync",
        "organization_id": "org_example"
    }))]
    pub struct WebhookIn {
        /// Absolute https URL (http with `--allow-http`).
        pub url: String,
        /// Event type names, or `["*"]`.
        pub events: Vec<String>,
        /// At least 32 characters; generated when absent.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(min_length = 32)]
        pub secret: Option<String>,
        /// Default true.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub active: Option<bool>,
        /// Free text.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub description: Option<String>,
        /// Required with the admin token.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub organization_id: Option<String>,
    }
}

with_delivery_options! {
    /// `PATCH /api/webhooks/{id}`: any subset of the fields.
    #[derive(Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct WebhookPatch {
        /// New URL.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub url: Option<String>,
        /// New subscriptions.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub events: Option<Vec<String>>,
        /// New secret (at least 32 characters).
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(min_length = 32)]
        pub secret: Option<String>,
        /// Activate or deactivate.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub active: Option<bool>,
        /// New description.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub description: Option<String>,
    }
}

/// The delivery options of a create or a PATCH, moved out of the request.
macro_rules! take_options {
    ($input:expr) => {
        super::options::OptionsIn {
            ordering: $input.ordering.take(),
            ordering_hold_max: $input.ordering_hold_max.take(),
            max_in_flight: $input.max_in_flight.take(),
            rate_limit: $input.rate_limit.take(),
            filter: $input.filter.take(),
            headers: $input.headers.take(),
            auth: $input.auth.take(),
            signature_scheme: $input.signature_scheme.take(),
            client_certificate: $input.client_certificate.take(),
            proxy: $input.proxy.take(),
        }
    };
}

/// Puts delivery options into a create or a PATCH (the CLI builds its requests this way).
macro_rules! put_options {
    ($input:expr, $options:expr) => {{
        let o: super::options::OptionsIn = $options;
        $input.ordering = o.ordering;
        $input.ordering_hold_max = o.ordering_hold_max;
        $input.max_in_flight = o.max_in_flight;
        $input.rate_limit = o.rate_limit;
        $input.filter = o.filter;
        $input.headers = o.headers;
        $input.auth = o.auth;
        $input.signature_scheme = o.signature_scheme;
        $input.client_certificate = o.client_certificate;
        $input.proxy = o.proxy;
    }};
}

impl WebhookIn {
    /// Its delivery options (taken out; the fields are left empty).
    pub fn take_options(&mut self) -> super::options::OptionsIn {
        take_options!(self)
    }

    /// Sets its delivery options to `options` (absent ones stay absent).
    pub fn with_options(mut self, options: super::options::OptionsIn) -> Self {
        put_options!(self, options);
        self
    }
}

impl WebhookPatch {
    /// Its delivery options (taken out; the fields are left empty).
    pub fn take_options(&mut self) -> super::options::OptionsIn {
        take_options!(self)
    }

    /// Sets its delivery options to `options` (absent ones stay absent).
    pub fn with_options(mut self, options: super::options::OptionsIn) -> Self {
        put_options!(self, options);
        self
    }
}

/// A webhook as answered. `secret` appears only in the creation answer, when generated.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookOut {
    /// `wh_<ULID>`.
    pub id: String,
    /// Owner organization.
    pub organization_id: String,
    /// Target URL.
    pub url: String,
    /// Subscribed event types, or `["*"]`.
    pub events: Vec<String>,
    /// Whether it receives deliveries (the customer's switch): an inactive webhook gets no
    /// new deliveries.
    pub active: bool,
    /// Set while the daemon keeps it disabled (410 Gone, or a failing streak): new events
    /// are recorded as `held` deliveries and nothing is attempted until
    /// `POST /api/webhooks/{id}/enable`. `null` otherwise.
    pub disabled: Option<DisabledOut>,
    /// Deliveries held now (only in the answers of `GET /api/webhooks/{id}` and `enable`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub held_deliveries: Option<u64>,
    /// Free text.
    pub description: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// RFC 3339: until then the secret before the last rotation also signs
    /// `webhook-signature`; null when no old secret signs.
    pub previous_secret_expires_at: Option<String>,
    /// The generated or rotated-in secret, shown once (creation, rotation).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub secret: Option<String>,
    /// With `secret`: the same secret in the form Standard Webhooks libraries take,
    /// `whsec_` + base64 of its UTF-8 bytes (see `signature::standard_secret`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub standard_webhooks_secret: Option<String>,
    /// Delivery options (issue 16), credentials left out.
    #[serde(flatten)]
    pub options: super::options::OptionsOut,
}

/// Why and since when the daemon disabled a webhook (issue 15).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DisabledOut {
    /// `gone` (an attempt got 410) or `failing` (every attempt failed for `--disable-after`).
    pub reason: String,
    /// RFC 3339.
    pub at: String,
    /// The delivery whose attempt decided it.
    pub delivery_id: Option<String>,
    /// That attempt's HTTP status, if one arrived.
    pub status_code: Option<u16>,
    /// `failing`: when the streak of failures began, RFC 3339.
    pub failing_since: Option<String>,
    /// `failing`: the last attempt's error in words.
    pub last_error: Option<String>,
}

/// `POST /api/webhooks/{id}/enable`.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnableIn {
    /// `true`: every held delivery is queued again, in due order; `false`: they are
    /// cancelled. Required: the choice is the caller's.
    pub deliver_held: bool,
}

impl WebhookOut {
    /// Shows `secret` in this answer, in both forms (creation and rotation only).
    pub fn show_secret(&mut self, secret: &crate::model::Secret) {
        self.secret = Some(secret.0.clone());
        self.standard_webhooks_secret = Some(crate::signature::standard_secret(&secret.0));
    }
}

impl From<&Webhook> for WebhookOut {
    fn from(w: &Webhook) -> Self {
        WebhookOut {
            id: w.id.to_string(),
            organization_id: w.organization_id.clone(),
            url: w.url.clone(),
            events: w.events.names(),
            active: w.active,
            disabled: w.disabled.as_ref().map(|d| DisabledOut {
                reason: d.reason.as_str().to_owned(),
                at: format_ms(d.at_ms),
                delivery_id: d.delivery_id.map(|id| id.to_string()),
                status_code: d.status_code,
                failing_since: d.failing_since_ms.map(format_ms),
                last_error: d.last_error.clone(),
            }),
            held_deliveries: None,
            description: w.description.clone(),
            created_at: format_ms(w.created_at_ms),
            updated_at: format_ms(w.updated_at_ms),
            previous_secret_expires_at: w
                .previous_secret_at(crate::clock::now_ms())
                .map(|p| format_ms(p.expires_at_ms)),
            secret: None,
            standard_webhooks_secret: None,
            options: super::options::OptionsOut::from(&w.options),
        }
    }
}

/// `POST /api/webhooks/{id}/rotate-secret`: both fields optional.
#[derive(Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateSecretIn {
    /// The new secret (at least 32 characters); generated when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// How long the old secret keeps signing `webhook-signature`, a duration like `24h`
    /// (default 24h, at most 7d; `0s` for no overlap).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grace: Option<String>,
}

/// `POST /api/events`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "event_id": "evt_example_1",
    "event_type": "ticket.created",
    "organization_id": "org_example",
    "data": {"ticket_id": "TKT-1", "title": "Printer on fire", "priority": "p1",
             "project_id": "prj_1", "created_by": "usr_1"}
}))]
pub struct EventIn {
    /// Idempotency key, 1-128 of `A-Za-z0-9_-.:`; generated when absent.
    pub event_id: Option<String>,
    /// Event type name.
    pub event_type: String,
    /// RFC 3339, any offset; time of ingest when absent.
    #[schema(format = DateTime)]
    pub timestamp: Option<String>,
    /// Required with the admin token; defaults to an organization key's own.
    pub organization_id: Option<String>,
    /// The event data, kept as the exact JSON text received.
    #[schema(value_type = serde_json::Value)]
    pub data: Box<RawValue>,
    /// 1-256 characters: deliveries to a webhook with `ordering: "key"` go one at a time per
    /// key, in ingest order (issue 16). Default: `data.ticket_id` or `data.incident_id`.
    pub ordering_key: Option<String>,
}

/// The answer to `POST /api/events`: 202 when accepted, 200 for an idempotent replay.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventAccepted {
    /// The event id (given or generated).
    pub event_id: String,
    /// How many deliveries fan-out created.
    pub deliveries: usize,
    /// Their ids (`dlv_<ULID>`), one per subscribed webhook.
    #[serde(default)]
    pub delivery_ids: Vec<String>,
}

/// A delivery in an event's answer.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventDeliveryOut {
    /// `dlv_<ULID>`.
    pub id: String,
    /// Target webhook.
    pub webhook_id: String,
    /// Current status.
    pub status: String,
}

/// `GET /api/events/{id}`: the envelope's fields exactly as delivered, plus bookkeeping.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventOut {
    /// Envelope `event_id`.
    pub event_id: String,
    /// Envelope `event_type`.
    pub event_type: String,
    /// Envelope `timestamp`.
    pub timestamp: String,
    /// Envelope `organization_id`.
    pub organization_id: String,
    /// Envelope `data`, byte for byte; `null` once the payload was deleted.
    #[schema(value_type = serde_json::Value)]
    pub data: Box<RawValue>,
    /// RFC 3339, when accepted.
    pub received_at: String,
    /// RFC 3339, when the payload was deleted (`DELETE /api/events/{id}/payload` or
    /// `--payload-retention`, issue 15); `null` while it is kept.
    pub payload_deleted_at: Option<String>,
    /// Its deliveries.
    pub deliveries: Vec<EventDeliveryOut>,
    /// Its ordering key, given or taken from `data`; null when it has none.
    #[serde(default)]
    pub ordering_key: Option<String>,
}

#[derive(Deserialize)]
struct EnvelopeData<'a> {
    #[serde(borrow)]
    data: &'a RawValue,
}

impl EventOut {
    /// Builds the answer from a stored event and its deliveries (a tombstone's empty body
    /// gives `data: null`).
    pub fn new(event: &Event, deliveries: &[Delivery]) -> EventOut {
        let data = serde_json::from_slice::<EnvelopeData<'_>>(&event.body)
            .ok()
            .map(|e| e.data.to_owned())
            .unwrap_or_else(|| RawValue::from_string("null".to_owned()).expect("null is JSON"));
        EventOut {
            event_id: event.event_id.clone(),
            event_type: event.event_type.as_str().to_owned(),
            timestamp: event.timestamp.clone(),
            organization_id: event.organization_id.clone(),
            data,
            received_at: format_ms(event.received_at_ms),
            payload_deleted_at: event.payload_deleted_at_ms.map(format_ms),
            ordering_key: event.ordering_key.clone(),
            deliveries: deliveries
                .iter()
                .map(|d| EventDeliveryOut {
                    id: d.id.to_string(),
                    webhook_id: d.webhook_id.to_string(),
                    status: d.status.as_str().to_owned(),
                })
                .collect(),
        }
    }
}

/// One logged attempt.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttemptOut {
    /// 1, 2, … (also sent as `X-Palo-Attempt`).
    pub number: u32,
    /// RFC 3339.
    pub started_at: String,
    /// Whole exchange, ms.
    pub duration_ms: u64,
    /// HTTP status, null when no response.
    pub status_code: Option<u16>,
    /// `timeout` | `connect` | `dns` | `tls` | `io` | `blocked_address` | `auth`, or null.
    pub error: Option<String>,
    /// UTF-8 (lossy), at most 64 KiB.
    pub response_body: String,
    /// Whether the body was cut at 64 KiB.
    pub response_body_truncated: bool,
    /// `scheduled` | `manual`.
    pub trigger: String,
    /// Seconds the receiver asked to wait (`Retry-After` on a 429 or 503), or null.
    pub retry_after_seconds: Option<u64>,
    /// With `error`: why, in words (`certificate expired`, `unknown issuer (...)`,
    /// `Connection refused (os error 111)`), at most 256 bytes; null otherwise.
    pub error_detail: Option<String>,
}

impl From<&Attempt> for AttemptOut {
    fn from(a: &Attempt) -> Self {
        AttemptOut {
            number: a.number,
            started_at: format_ms(a.started_at_ms),
            duration_ms: a.duration_ms,
            status_code: a.status_code,
            error: a.error.map(|e| e.as_str().to_owned()),
            response_body: a.response_body.clone(),
            response_body_truncated: a.response_body_truncated,
            trigger: a.trigger.as_str().to_owned(),
            retry_after_seconds: a.retry_after_ms.map(|ms| ms.div_ceil(1000)),
            error_detail: a.error_detail.clone(),
        }
    }
}

/// A delivery; `attempts` only in `GET /api/deliveries/{id}`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeliveryOut {
    /// `dlv_<ULID>`.
    pub id: String,
    /// Owner organization.
    pub organization_id: String,
    /// Target webhook.
    pub webhook_id: String,
    /// The event's `event_id`.
    pub event_id: String,
    /// The event type.
    pub event_type: String,
    /// `pending` | `retrying` | `succeeded` | `failed` | `cancelled`.
    pub status: String,
    /// Attempts made, manual ones included.
    pub attempt_count: u32,
    /// RFC 3339, null when none is scheduled.
    pub next_attempt_at: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// What its last attempt came to (`2xx`, `3xx`, `4xx`, `5xx`, `other_status`,
    /// `timeout`, `connect`, `dns`, `tls`, `io`, `blocked_address`, `auth`); null before the first.
    #[serde(default)]
    pub last_outcome: Option<String>,
    /// Its event's ordering key (issue 16); null when it has none.
    #[serde(default)]
    pub ordering_key: Option<String>,
    /// Every attempt in ascending `number`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub attempts: Option<Vec<AttemptOut>>,
}

impl From<&Delivery> for DeliveryOut {
    fn from(d: &Delivery) -> Self {
        DeliveryOut {
            id: d.id.to_string(),
            organization_id: d.organization_id.clone(),
            webhook_id: d.webhook_id.to_string(),
            event_id: d.event_id.clone(),
            event_type: d.event_type.as_str().to_owned(),
            status: d.status.as_str().to_owned(),
            attempt_count: d.attempt_count,
            next_attempt_at: d.next_attempt_at_ms.map(format_ms),
            created_at: format_ms(d.created_at_ms),
            updated_at: format_ms(d.updated_at_ms),
            last_outcome: d.last_outcome.map(|o| o.as_str().to_owned()),
            ordering_key: d.ordering_key.clone(),
            attempts: None,
        }
    }
}

/// The answer of a redelivery or a test delivery: the attempt just made and the delivery after it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttemptResultOut {
    /// The attempt just made.
    pub attempt: AttemptOut,
    /// The delivery after it was logged.
    pub delivery: DeliveryOut,
}

/// `POST /api/keys`.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"organization_id": "org_example", "description": "helpdesk"}))]
pub struct KeyIn {
    /// The organization the key acts for.
    pub organization_id: String,
    /// Free text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// An API key as answered; `key` only in the creation answer.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyOut {
    /// `key_<ULID>`.
    pub id: String,
    /// The organization it acts for.
    pub organization_id: String,
    /// Free text.
    pub description: String,
    /// RFC 3339.
    pub created_at: String,
    /// The key itself, shown once.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub key: Option<String>,
}

impl From<&ApiKey> for KeyOut {
    fn from(k: &ApiKey) -> Self {
        KeyOut {
            id: k.id.to_string(),
            organization_id: k.organization_id.clone(),
            description: k.description.clone(),
            created_at: format_ms(k.created_at_ms),
            key: None,
        }
    }
}

/// A page of a list: `{"data":[...],"next_cursor":...}`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Page<T> {
    /// This page's items.
    pub data: Vec<T>,
    /// Pass as `?cursor=` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// A page of the first `limit` of `items` (converted). Callers read `limit + 1` items:
    /// the cursor is given only when one more exists, so the last page has none, even when
    /// it is full.
    pub fn new<S>(
        items: &[S],
        limit: usize,
        cursor_of: impl Fn(&S) -> String,
        convert: impl Fn(&S) -> T,
    ) -> Page<T> {
        let shown = &items[..items.len().min(limit)];
        let next_cursor = (items.len() > limit)
            .then(|| shown.last().map(&cursor_of))
            .flatten();
        Page {
            data: shown.iter().map(convert).collect(),
            next_cursor,
        }
    }
}
