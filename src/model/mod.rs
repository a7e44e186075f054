//! Domain types shared by the store, the scheduler, the delivery engine and the API.
//!
//! Owner's rule: plain data, no serde, no I/O. The API converts these to its JSON shapes and
//! the store to its versioned records; neither shape leaks into the other.

use std::fmt;

use crate::event::EventType;
use crate::ids::{DeliveryId, EventKey, JobId, KeyId, WebhookId};

mod options;

pub use options::{
    ClientCertificate, CustomHeader, DeliveryOptions, Ordering, ProxyChoice, ReceiverAuth,
    MAX_CUSTOM_HEADERS, MAX_IN_FLIGHT_LIMIT,
};

/// A webhook secret. Its `Debug` prints stars so it cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(****)")
    }
}

/// For command-line and environment values that are secrets (`--metrics-token`).
impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Secret, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

/// Which event types a webhook receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventFilter {
    /// `"*"`: every public event type (never `webhook.test`, which targets one webhook, nor
    /// the operational types, which a webhook must name).
    All,
    /// An explicit, non-empty list.
    Only(Vec<EventType>),
    /// `"*"` plus the operational types named beside it (`["*", "webhook.disabled"]`).
    AllPlus(Vec<EventType>),
    /// At least one wildcard (`ticket.*`, issue 16): a type matches when its name starts
    /// with one of `prefixes` followed by a dot (never `webhook.test`), when it is one of
    /// `types`, or, with `all`, when `"*"` takes it.
    Wildcards {
        /// Whether `"*"` is in the list.
        all: bool,
        /// The part before `.*`, like `ticket`.
        prefixes: Vec<String>,
        /// Types named in full.
        types: Vec<EventType>,
    },
}

impl EventFilter {
    /// Whether an event of `event_type` fans out to a webhook with this filter.
    pub fn matches(&self, event_type: EventType) -> bool {
        match self {
            EventFilter::All => {
                event_type != EventType::WebhookTest && !event_type.is_operational()
            }
            EventFilter::Only(types) => types.contains(&event_type),
            EventFilter::AllPlus(extra) => {
                EventFilter::All.matches(event_type) || extra.contains(&event_type)
            }
            EventFilter::Wildcards {
                all,
                prefixes,
                types,
            } => {
                (*all && EventFilter::All.matches(event_type))
                    || types.contains(&event_type)
                    || (event_type != EventType::WebhookTest
                        && prefixes.iter().any(|p| wildcard_matches(p, event_type)))
            }
        }
    }

    /// The wire names: `["*"]`, the listed types, `"*"` followed by the extra types, or
    /// `"*"`, the wildcards (`ticket.*`) and the types, in that order.
    pub fn names(&self) -> Vec<String> {
        let types = |types: &[EventType]| -> Vec<String> {
            types.iter().map(|t| t.as_str().to_owned()).collect()
        };
        match self {
            EventFilter::All => vec!["*".to_owned()],
            EventFilter::Only(only) => types(only),
            EventFilter::AllPlus(extra) => {
                let mut names = vec!["*".to_owned()];
                names.extend(types(extra));
                names
            }
            EventFilter::Wildcards {
                all,
                prefixes,
                types: named,
            } => all
                .then(|| "*".to_owned())
                .into_iter()
                .chain(prefixes.iter().map(|p| format!("{p}.*")))
                .chain(types(named))
                .collect(),
        }
    }

    /// Parses stored names as [`EventFilter::names`] writes them; `None` for an unknown name
    /// or an empty list.
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Option<EventFilter> {
        let mut types = Vec::new();
        let mut prefixes = Vec::new();
        let mut all = false;
        for name in names {
            match name.as_ref() {
                "*" => all = true,
                other => match other.strip_suffix(".*") {
                    Some(prefix) if wildcard_prefix_is_valid(prefix) => {
                        prefixes.push(prefix.to_owned())
                    }
                    Some(_) => return None,
                    None => types.push(EventType::parse(other)?),
                },
            }
        }
        if !prefixes.is_empty() {
            return Some(EventFilter::Wildcards {
                all,
                prefixes,
                types,
            });
        }
        match (all, types.is_empty()) {
            (true, true) => Some(EventFilter::All),
            (true, false) => Some(EventFilter::AllPlus(types)),
            (false, false) => Some(EventFilter::Only(types)),
            (false, true) => None,
        }
    }
}

/// Whether `prefix` (of a wildcard `prefix.*`) is one name segment: lowercase letters,
/// digits and `_`, not empty.
pub fn wildcard_prefix_is_valid(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Whether the wildcard `prefix.*` takes `event_type`.
pub fn wildcard_matches(prefix: &str, event_type: EventType) -> bool {
    event_type
        .as_str()
        .strip_prefix(prefix)
        .is_some_and(|rest| rest.starts_with('.'))
}

/// A webhook (endpoint) of an organization (spec "Créer un webhook").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// `wh_<ULID>`.
    pub id: WebhookId,
    /// Owner organization.
    pub organization_id: String,
    /// Absolute http(s) URL deliveries are POSTed to.
    pub url: String,
    /// Subscribed event types.
    pub events: EventFilter,
    /// HMAC key, UTF-8.
    pub secret: Secret,
    /// The secret before the last rotation, which also signs (`webhook-signature`) until it
    /// expires (`POST /api/webhooks/{id}/rotate-secret`).
    pub previous_secret: Option<PreviousSecret>,
    /// Inactive webhooks receive nothing and get no new deliveries (the customer's switch,
    /// spec "Créer un webhook").
    pub active: bool,
    /// Set when the daemon disabled the webhook (410 Gone, or a failing streak; issue 15):
    /// its deliveries are held, not attempted, until a person enables it again.
    pub disabled: Option<Disabled>,
    /// When its current streak of failed attempts began, ms since the epoch; `None` after a
    /// success (or before any failure). What the failing-streak rule measures from.
    pub failing_since_ms: Option<u64>,
    /// Free text.
    pub description: String,
    /// How its deliveries are sent: ordering, limits, filter, headers, authentication,
    /// signature schemes (issue 16).
    pub options: DeliveryOptions,
    /// ms since the epoch.
    pub created_at_ms: u64,
    /// ms since the epoch.
    pub updated_at_ms: u64,
}

/// Why the daemon disabled a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisableReason {
    /// An attempt got `410 Gone` (Standard Webhooks: the receiver asks to stop).
    Gone,
    /// Every attempt failed for longer than `--disable-after` (and at least
    /// `--disable-after-attempts` of them).
    Failing,
}

impl DisableReason {
    /// The API name (`gone`, `failing`).
    pub fn as_str(self) -> &'static str {
        match self {
            DisableReason::Gone => "gone",
            DisableReason::Failing => "failing",
        }
    }

    /// Parses an API name.
    pub fn parse(name: &str) -> Option<DisableReason> {
        [DisableReason::Gone, DisableReason::Failing]
            .into_iter()
            .find(|r| r.as_str() == name)
    }
}

/// How and when the daemon disabled a webhook (issue 15, items 1-2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disabled {
    /// Why.
    pub reason: DisableReason,
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// The delivery whose attempt decided it (the 410, or the last failure).
    pub delivery_id: Option<DeliveryId>,
    /// That attempt's HTTP status, if one arrived.
    pub status_code: Option<u16>,
    /// For `failing`: when the streak of failures began, ms since the epoch.
    pub failing_since_ms: Option<u64>,
    /// For `failing`: the last attempt's error in words (`HTTP 500`, `timeout: …`), at most
    /// 256 bytes.
    pub last_error: Option<String>,
}

/// A rotated-out secret and when it stops signing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousSecret {
    /// The old secret.
    pub secret: Secret,
    /// ms since the epoch; after this, only the new secret signs.
    pub expires_at_ms: u64,
}

impl Webhook {
    /// The previous secret if it still signs at `now_ms`.
    pub fn previous_secret_at(&self, now_ms: u64) -> Option<&PreviousSecret> {
        self.previous_secret
            .as_ref()
            .filter(|p| now_ms < p.expires_at_ms)
    }
}

/// A stored event: its envelope bytes and where it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Internal key (time of ingest).
    pub key: EventKey,
    /// The envelope `event_id`.
    pub event_id: String,
    /// The event type.
    pub event_type: EventType,
    /// The envelope `timestamp` (RFC 3339, UTC).
    pub timestamp: String,
    /// Owner organization.
    pub organization_id: String,
    /// ms since the epoch when accepted.
    pub received_at_ms: u64,
    /// The exact body every attempt sends; empty once the payload was deleted (the
    /// tombstone, issue 15: see `payload_deleted_at_ms`).
    pub body: Vec<u8>,
    /// Hash of the producer's content, for idempotent replays.
    pub content_hash: [u8; 32],
    /// The deliveries made by fan-out, in creation order.
    pub delivery_ids: Vec<DeliveryId>,
    /// When the payload was deleted (`DELETE /api/events/{id}/payload` or
    /// `--payload-retention`), ms since the epoch: the body is then empty and no delivery of
    /// the event is unfinished. `None` while the body is kept.
    pub payload_deleted_at_ms: Option<u64>,
    /// Its ordering key (issue 16; [`crate::event::PreparedEvent::ordering_key`]).
    pub ordering_key: Option<String>,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryStatus {
    /// Created, no scheduled attempt has failed yet.
    Pending,
    /// At least one scheduled attempt failed; another is scheduled.
    Retrying,
    /// An attempt got a 2xx. Final.
    Succeeded,
    /// Every scheduled attempt failed. Final (a manual redelivery may still succeed).
    Failed,
    /// Its webhook was deleted before it finished, held deliveries were discarded at
    /// enable, or its payload was deleted. Final.
    Cancelled,
    /// Its webhook is disabled by the daemon (issue 15): kept, not attempted, until the
    /// webhook is enabled (then due again, in due order) or the held deliveries are
    /// cancelled. Not final, but not in the retry index either.
    Held,
}

impl DeliveryStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [DeliveryStatus; 6] = [
        DeliveryStatus::Pending,
        DeliveryStatus::Retrying,
        DeliveryStatus::Succeeded,
        DeliveryStatus::Failed,
        DeliveryStatus::Cancelled,
        DeliveryStatus::Held,
    ];

    /// The API name (`pending`, `retrying`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Retrying => "retrying",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Cancelled => "cancelled",
            DeliveryStatus::Held => "held",
        }
    }

    /// Parses an API name.
    pub fn parse(name: &str) -> Option<DeliveryStatus> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether no scheduled attempt will follow.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            DeliveryStatus::Succeeded | DeliveryStatus::Failed | DeliveryStatus::Cancelled
        )
    }
}

/// One event to one webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// `dlv_<ULID>`.
    pub id: DeliveryId,
    /// Owner organization (the event's and the webhook's).
    pub organization_id: String,
    /// Target webhook (may since have been deleted).
    pub webhook_id: WebhookId,
    /// The event's internal key.
    pub event_key: EventKey,
    /// The envelope `event_id`.
    pub event_id: String,
    /// The event type.
    pub event_type: EventType,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Every attempt made, manual ones included.
    pub attempt_count: u32,
    /// Scheduled attempts made (manual ones excluded); at most the schedule's maximum.
    pub scheduled_attempts: u32,
    /// When the next scheduled attempt is due, ms since the epoch; `None` when final or
    /// held (a held delivery's place in due order is kept by the store's held index).
    pub next_attempt_at_ms: Option<u64>,
    /// ms since the epoch.
    pub created_at_ms: u64,
    /// ms since the epoch.
    pub updated_at_ms: u64,
    /// What its last attempt (the highest number) came to; `None` before the first attempt.
    pub last_outcome: Option<AttemptOutcome>,
    /// Its event's ordering key: with a webhook's `ordering: "key"`, it waits while an
    /// earlier unfinished delivery of that webhook has the same key (issue 16).
    pub ordering_key: Option<String>,
}

/// What an attempt came to, in the classes the delivery search filters on (issue 15): the
/// status class of the response, or the kind of transport error. A transport error wins over
/// a status (a 2xx whose body timed out is a `timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AttemptOutcome {
    /// A 2xx status: the attempt succeeded.
    Status2xx,
    /// A 3xx status: a redirect, never followed, so a failed attempt.
    Status3xx,
    /// A 4xx status.
    Status4xx,
    /// A 5xx status.
    Status5xx,
    /// Any other status (1xx as a final answer, 600-999): a failed attempt.
    StatusOther,
    /// [`AttemptError::Timeout`].
    Timeout,
    /// [`AttemptError::Connect`].
    Connect,
    /// [`AttemptError::Dns`].
    Dns,
    /// [`AttemptError::Tls`].
    Tls,
    /// [`AttemptError::Io`]: another I/O or protocol error after connecting.
    Io,
    /// [`AttemptError::BlockedAddress`].
    BlockedAddress,
    /// [`AttemptError::Auth`].
    Auth,
}

impl AttemptOutcome {
    /// Every outcome.
    pub const ALL: [AttemptOutcome; 12] = [
        AttemptOutcome::Status2xx,
        AttemptOutcome::Status3xx,
        AttemptOutcome::Status4xx,
        AttemptOutcome::Status5xx,
        AttemptOutcome::StatusOther,
        AttemptOutcome::Timeout,
        AttemptOutcome::Connect,
        AttemptOutcome::Dns,
        AttemptOutcome::Tls,
        AttemptOutcome::Io,
        AttemptOutcome::BlockedAddress,
        AttemptOutcome::Auth,
    ];

    /// The API name: `2xx`, `3xx`, `4xx`, `5xx`, `other_status`, or the error's name
    /// (`timeout`, `connect`, `dns`, `tls`, `io`, `blocked_address`).
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Status2xx => "2xx",
            AttemptOutcome::Status3xx => "3xx",
            AttemptOutcome::Status4xx => "4xx",
            AttemptOutcome::Status5xx => "5xx",
            AttemptOutcome::StatusOther => "other_status",
            AttemptOutcome::Timeout => AttemptError::Timeout.as_str(),
            AttemptOutcome::Connect => AttemptError::Connect.as_str(),
            AttemptOutcome::Dns => AttemptError::Dns.as_str(),
            AttemptOutcome::Tls => AttemptError::Tls.as_str(),
            AttemptOutcome::Io => AttemptError::Io.as_str(),
            AttemptOutcome::BlockedAddress => AttemptError::BlockedAddress.as_str(),
            AttemptOutcome::Auth => AttemptError::Auth.as_str(),
        }
    }

    /// Parses an API name.
    pub fn parse(name: &str) -> Option<AttemptOutcome> {
        Self::ALL.into_iter().find(|o| o.as_str() == name)
    }

    /// The outcome of an attempt that got `status_code` or failed with `error` (the error
    /// wins); an attempt with neither (never logged so) counts as `io`.
    pub fn of(status_code: Option<u16>, error: Option<AttemptError>) -> AttemptOutcome {
        match (error, status_code) {
            (Some(AttemptError::Timeout), _) => AttemptOutcome::Timeout,
            (Some(AttemptError::Connect), _) => AttemptOutcome::Connect,
            (Some(AttemptError::Dns), _) => AttemptOutcome::Dns,
            (Some(AttemptError::Tls), _) => AttemptOutcome::Tls,
            (Some(AttemptError::Io), _) | (None, None) => AttemptOutcome::Io,
            (Some(AttemptError::BlockedAddress), _) => AttemptOutcome::BlockedAddress,
            (Some(AttemptError::Auth), _) => AttemptOutcome::Auth,
            (None, Some(200..=299)) => AttemptOutcome::Status2xx,
            (None, Some(300..=399)) => AttemptOutcome::Status3xx,
            (None, Some(400..=499)) => AttemptOutcome::Status4xx,
            (None, Some(500..=599)) => AttemptOutcome::Status5xx,
            (None, Some(_)) => AttemptOutcome::StatusOther,
        }
    }
}

/// Why an attempt got no usable HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttemptError {
    /// The whole exchange took longer than the attempt timeout.
    Timeout,
    /// TCP connection refused, reset or unreachable.
    Connect,
    /// The host name did not resolve.
    Dns,
    /// The TLS handshake failed.
    Tls,
    /// Any other I/O or protocol error after connecting.
    Io,
    /// The outbound address policy refused every address of the host (SSRF protection):
    /// nothing was connected to.
    BlockedAddress,
    /// The receiver's credentials could not be had: the OAuth 2.0 token endpoint failed or
    /// refused (issue 16). Nothing was sent to the receiver.
    Auth,
}

impl AttemptError {
    /// Every error kind.
    pub const ALL: [AttemptError; 7] = [
        AttemptError::Timeout,
        AttemptError::Connect,
        AttemptError::Dns,
        AttemptError::Tls,
        AttemptError::Io,
        AttemptError::BlockedAddress,
        AttemptError::Auth,
    ];

    /// Parses an API name.
    pub fn parse(name: &str) -> Option<AttemptError> {
        Self::ALL.into_iter().find(|e| e.as_str() == name)
    }

    /// The API name (`timeout`, `connect`, `dns`, `tls`, `io`, `blocked_address`, `auth`).
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptError::Timeout => "timeout",
            AttemptError::Connect => "connect",
            AttemptError::Dns => "dns",
            AttemptError::Tls => "tls",
            AttemptError::Io => "io",
            AttemptError::BlockedAddress => "blocked_address",
            AttemptError::Auth => "auth",
        }
    }
}

/// What started an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// The retry schedule (counts toward the scheduled maximum).
    Scheduled,
    /// A person's redelivery (logged and numbered, not counted toward the maximum).
    Manual,
}

impl Trigger {
    /// Parses an API name.
    pub fn parse(name: &str) -> Option<Trigger> {
        [Trigger::Scheduled, Trigger::Manual]
            .into_iter()
            .find(|t| t.as_str() == name)
    }

    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Scheduled => "scheduled",
            Trigger::Manual => "manual",
        }
    }
}

/// One logged attempt (spec "Logs de livraison").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// 1, 2, … in order; also sent as `X-Palo-Attempt`.
    pub number: u32,
    /// ms since the epoch.
    pub started_at_ms: u64,
    /// Whole exchange, in ms.
    pub duration_ms: u64,
    /// HTTP status, `None` when no response arrived.
    pub status_code: Option<u16>,
    /// Transport error, `None` when a response arrived.
    pub error: Option<AttemptError>,
    /// The response body, UTF-8 lossy, at most the stored cap.
    pub response_body: String,
    /// Whether the body was longer than the cap.
    pub response_body_truncated: bool,
    /// What started it.
    pub trigger: Trigger,
    /// The delay a 429 or 503 asked for in `Retry-After` (RFC 9110 §10.2.3: delta-seconds
    /// or an HTTP-date), in ms; `None` otherwise.
    pub retry_after_ms: Option<u64>,
    /// Why the transport failed, in words (`certificate expired`, `Connection refused (os
    /// error 111)`, the refused range of `blocked_address`), at most 256 bytes; `None` when
    /// a response arrived, and for attempts logged before this field existed.
    pub error_detail: Option<String>,
}

impl Attempt {
    /// An attempt succeeds on a 2xx status whose exchange completed: a body that timed out
    /// or broke off after the status is a failure. A body cut at the stored cap (64 KiB) by
    /// us is not an error, so a truncated 2xx is still a success.
    pub fn succeeded(&self) -> bool {
        self.error.is_none() && matches!(self.status_code, Some(200..=299))
    }

    /// What it came to, for the delivery search ([`AttemptOutcome::of`]).
    pub fn outcome(&self) -> AttemptOutcome {
        AttemptOutcome::of(self.status_code, self.error)
    }
}

/// Changes to a webhook (`PATCH`), already validated; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct WebhookChanges {
    /// New target URL.
    pub url: Option<String>,
    /// New subscriptions.
    pub events: Option<EventFilter>,
    /// New secret, replacing the old one at once (no overlap).
    pub secret: Option<Secret>,
    /// New secret with overlap: the current one becomes the previous secret and keeps
    /// signing `webhook-signature` until the given time (ms since the epoch).
    pub rotate: Option<(Secret, u64)>,
    /// Activate or deactivate.
    pub active: Option<bool>,
    /// New description.
    pub description: Option<String>,
    /// New delivery options, replacing the old ones whole (the API merges a PATCH first).
    pub options: Option<DeliveryOptions>,
}

impl WebhookChanges {
    /// Applies the changes to `webhook`, stamping `updated_at_ms`.
    pub fn apply(self, webhook: &mut Webhook, now_ms: u64) {
        if let Some(url) = self.url {
            webhook.url = url;
        }
        if let Some(events) = self.events {
            webhook.events = events;
        }
        if let Some(secret) = self.secret {
            webhook.secret = secret;
            webhook.previous_secret = None;
        }
        // Rotating to the secret already current is a retried call: it changes nothing, so
        // the previous secret keeps signing until its own expiry.
        if let Some((secret, until_ms)) = self.rotate.filter(|(s, _)| *s != webhook.secret) {
            let old = std::mem::replace(&mut webhook.secret, secret);
            webhook.previous_secret = (until_ms > now_ms).then_some(PreviousSecret {
                secret: old,
                expires_at_ms: until_ms,
            });
        }
        if let Some(active) = self.active {
            webhook.active = active;
        }
        if let Some(description) = self.description {
            webhook.description = description;
        }
        if let Some(options) = self.options {
            webhook.options = options;
        }
        webhook.updated_at_ms = now_ms;
    }
}

/// An organization API key. The key text itself is never stored, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// `key_<ULID>`.
    pub id: KeyId,
    /// The organization it acts for.
    pub organization_id: String,
    /// Free text.
    pub description: String,
    /// ms since the epoch.
    pub created_at_ms: u64,
    /// SHA-256 of the key text.
    pub key_hash: [u8; 32],
}

/// What a job does (issue 15, item 5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobKind {
    /// Re-sends the webhook's deliveries of the window whose status is one of these (final
    /// statuses only): one that spent its retry schedule gets one more scheduled attempt,
    /// one that stopped earlier resumes its schedule; attempts are numbered after the earlier
    /// ones.
    Recover {
        /// The statuses to recover (default `failed`).
        statuses: Vec<DeliveryStatus>,
    },
    /// Creates a delivery to the webhook for each event of its organization in the window
    /// that it never had (of these types; `None`: the types it subscribes to now).
    Replay {
        /// The event types to replay.
        event_types: Option<Vec<EventType>>,
    },
}

impl JobKind {
    /// The API name (`recover`, `replay`).
    pub fn as_str(&self) -> &'static str {
        match self {
            JobKind::Recover { .. } => "recover",
            JobKind::Replay { .. } => "replay",
        }
    }
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Created, no step run yet.
    Queued,
    /// Queuing deliveries, or waiting for the queued ones to end.
    Running,
    /// Every matched delivery was queued and has ended. Final.
    Finished,
    /// Stopped by a person: it queues nothing more; deliveries already queued go on and are
    /// counted until the last ends (then `finished_at` is set). Final.
    Cancelled,
}

impl JobState {
    /// Every state.
    pub const ALL: [JobState; 4] = [
        JobState::Queued,
        JobState::Running,
        JobState::Finished,
        JobState::Cancelled,
    ];

    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Finished => "finished",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Parses an API name.
    pub fn parse(name: &str) -> Option<JobState> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether the job will do nothing more.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Finished | JobState::Cancelled)
    }
}

/// A recovery or replay job, stored so it survives restarts and resumes where it stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// `job_<ULID>`.
    pub id: JobId,
    /// The webhook's organization.
    pub organization_id: String,
    /// The webhook it works for.
    pub webhook_id: WebhookId,
    /// Recover or replay, with its filter.
    pub kind: JobKind,
    /// Start of the window, ms since the epoch (deliveries' or events' creation time).
    pub since_ms: u64,
    /// End of the window (exclusive), ms since the epoch; `None`: the job's creation time.
    pub until_ms: u64,
    /// Where it stands.
    pub state: JobState,
    /// The last delivery id (recover) or event key (replay) looked at; the scan resumes
    /// after it.
    pub cursor: Option<u128>,
    /// Whether the whole window has been looked at.
    pub scan_done: bool,
    /// Deliveries (recover) or events (replay) that matched.
    pub matched: u64,
    /// Deliveries queued for an attempt (recovered, or created by the replay).
    pub queued: u64,
    /// Queued deliveries that ended `succeeded`.
    pub succeeded: u64,
    /// Queued deliveries that ended otherwise (`failed`, `cancelled`, or gone).
    pub failed: u64,
    /// ms since the epoch.
    pub created_at_ms: u64,
    /// When its first step ran, ms since the epoch.
    pub started_at_ms: Option<u64>,
    /// When it became final, ms since the epoch.
    pub finished_at_ms: Option<u64>,
}

/// What a job step may do at most ([`crate::store::Store::job_step`]).
#[derive(Debug, Clone, Copy)]
pub struct JobLimits {
    /// Rows looked at per step.
    pub scan: usize,
    /// Queued deliveries of the job not yet ended, at most: the pacing that keeps the
    /// engine's queues short, so live deliveries keep their latency.
    pub window: u64,
    /// The retry schedule's number of attempts: a recovered delivery gets the last one.
    pub max_attempts: u32,
}
