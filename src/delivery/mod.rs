//! The delivery engine's HTTP side: one signed POST per attempt, classified and timed.
//!
//! Owner's rule: this module sends and measures; it never touches the store and never
//! decides what happens next (that is `retry` policy, applied by the store). One pooled
//! hyper client (keep-alive per origin, rustls with the webpki roots, HTTP/1.1 and h2 by
//! ALPN) serves every attempt. Redirects are never followed. The attempt timeout covers the
//! whole exchange: connect, TLS, headers and the (capped) response body.
//!
//! One room per concern: `tls` (roots, and the TLS configuration), `connect` (the resolver
//! and connector that apply the address policy, and the pooled client), `request` (the
//! signed request and the signature cache), `classify` (reading the capped response and
//! naming what went wrong); this file holds the attempt and the [`Sender`] that runs it.

mod classify;
mod connect;
mod request;
mod tls;

pub use classify::parse_retry_after;
pub use connect::{
    build_client, build_delivery_client, BlockedAddress, DnsFailure, GuardedConnector, HttpsClient,
    Resolver,
};
pub use request::SignatureCache;
pub use tls::{tls_config, TlsSettings, TlsSetupError};

use classify::{classify, find_cause, read_capped};
use request::build_request;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::{timeout_at, Instant};

use crate::address::PolicyCell;
use crate::clock;
use crate::event::EventType;
use crate::ids::{DeliveryId, EventKey, WebhookId};
use crate::model::{Attempt, AttemptError, Secret, Trigger};

/// How much of a response body is stored (64 KiB); reading stops there.
pub const MAX_STORED_RESPONSE_BYTES: usize = 64 * 1024;

/// How many signatures [`SignatureCache`] keeps (about 250 bytes each, so about 2 MiB).
pub const SIGNATURE_CACHE_ENTRIES: usize = 8192;

/// The `User-Agent` of every attempt.
pub const USER_AGENT: &str = concat!("palo-webhooks/", env!("CARGO_PKG_VERSION"));

/// One attempt to send: what to POST, where, and the numbers that go in its headers.
#[derive(Debug)]
pub struct OutgoingAttempt<'a> {
    /// Absolute http(s) URL.
    pub url: &'a str,
    /// The envelope bytes, shared between attempts.
    pub body: Bytes,
    /// The webhook's signing secret.
    pub secret: &'a Secret,
    /// The secret before the last rotation while it still signs (`webhook-signature` only).
    pub previous_secret: Option<&'a Secret>,
    /// The event's internal key: with `webhook_id`, names the signed (body, secret) pair.
    pub event_key: EventKey,
    /// The target webhook.
    pub webhook_id: WebhookId,
    /// For `X-Palo-Event`.
    pub event_type: EventType,
    /// For `X-Palo-Event-Id`.
    pub event_id: &'a str,
    /// For `X-Palo-Delivery`.
    pub delivery_id: DeliveryId,
    /// For `X-Palo-Attempt`, 1-based.
    pub number: u32,
    /// Recorded in the attempt log.
    pub trigger: Trigger,
}

/// The scheme, host and port of a webhook URL, for log lines: paths and query strings often
/// carry a receiver's token, so they are never logged.
fn log_origin(url: &str) -> String {
    url::Url::parse(url).map_or_else(
        |_| "(unparsable URL)".to_owned(),
        |u| u.origin().ascii_serialization(),
    )
}

/// The HTTP sender. Cheap to clone (the pool and the signature cache are shared).
#[derive(Clone)]
pub struct Sender {
    /// The pooled client and the policy version it was built under.
    client: Arc<std::sync::RwLock<(u64, HttpsClient)>>,
    policy: Arc<PolicyCell>,
    tls: rustls::ClientConfig,
    timeout: Duration,
    signatures: Arc<SignatureCache>,
}

impl Sender {
    /// Builds the pooled client. `timeout` bounds each whole attempt; `policy` says which
    /// addresses may be connected to; `tls` which CAs are trusted.
    ///
    /// # Errors
    /// [`TlsSetupError`] when the configured roots cannot be loaded.
    pub fn new(
        timeout: Duration,
        policy: Arc<PolicyCell>,
        tls: &TlsSettings,
    ) -> Result<Sender, TlsSetupError> {
        let tls = tls_config(tls)?;
        Ok(Sender {
            client: Arc::new(std::sync::RwLock::new((
                policy.version(),
                build_delivery_client(timeout, Arc::clone(&policy), tls.clone()),
            ))),
            policy,
            tls,
            timeout,
            signatures: Arc::new(SignatureCache::new(SIGNATURE_CACHE_ENTRIES)),
        })
    }

    /// The client to use now: rebuilt, with an empty connection pool, when the address
    /// policy changed since it was built (SIGHUP), so no attempt reuses a connection to a
    /// network the new policy forbids. Attempts in flight finish on the old one.
    fn client(&self) -> HttpsClient {
        let version = self.policy.version();
        {
            let current = match self.client.read() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            if current.0 == version {
                return current.1.clone();
            }
        }
        let mut current = match self.client.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if current.0 != version {
            *current = (
                version,
                build_delivery_client(self.timeout, Arc::clone(&self.policy), self.tls.clone()),
            );
        }
        current.1.clone()
    }

    /// Makes one attempt and returns its log entry. Never fails: every problem becomes the
    /// attempt's `error` (timeout, connect, dns, tls, io) or a non-2xx `status_code`.
    pub async fn send(&self, attempt: OutgoingAttempt<'_>) -> Attempt {
        let started_at_ms = clock::now_ms();
        let started = Instant::now();
        let deadline = started + self.timeout;
        let mut log = Attempt {
            number: attempt.number,
            started_at_ms,
            duration_ms: 0,
            status_code: None,
            error: None,
            response_body: String::new(),
            response_body_truncated: false,
            trigger: attempt.trigger,
            retry_after_ms: None,
            error_detail: None,
        };
        let signature = self.signatures.signature(
            attempt.event_key,
            attempt.webhook_id,
            attempt.secret,
            &attempt.body,
        );
        match build_request(&attempt, signature, started_at_ms / 1000) {
            None => {
                log.error = Some(AttemptError::Connect);
                log.error_detail = Some("the URL cannot be requested".to_owned());
            }
            Some(request) => match timeout_at(deadline, self.client().request(request)).await {
                Err(_) => {
                    log.error = Some(AttemptError::Timeout);
                    log.error_detail = Some(format!(
                        "no response within {}",
                        humantime::format_duration(self.timeout)
                    ));
                }
                Ok(Err(e)) => {
                    let (kind, detail) = classify(&e);
                    log.error = Some(kind);
                    if kind == AttemptError::Tls {
                        tracing::warn!(
                            delivery = %attempt.delivery_id,
                            origin = %log_origin(attempt.url),
                            reason = %detail,
                            "TLS handshake failed"
                        );
                    }
                    log.error_detail = Some(detail);
                    if let Some(blocked) = find_cause::<BlockedAddress>(&e) {
                        tracing::warn!(
                            delivery = %attempt.delivery_id,
                            origin = %log_origin(attempt.url),
                            reason = %blocked,
                            "attempt refused by the outbound address policy (open a network with --allow-network)"
                        );
                    }
                }
                Ok(Ok(response)) => {
                    log.status_code = Some(response.status().as_u16());
                    if matches!(response.status().as_u16(), 429 | 503) {
                        log.retry_after_ms = response
                            .headers()
                            .get(hyper::header::RETRY_AFTER)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()))
                            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                    }
                    // HTTP/1 without Content-Length or chunked: the body ends when the
                    // connection closes (RFC 9112 §6.3).
                    let close_delimited = response.version() <= hyper::Version::HTTP_11
                        && !response
                            .headers()
                            .contains_key(hyper::header::CONTENT_LENGTH)
                        && !response
                            .headers()
                            .contains_key(hyper::header::TRANSFER_ENCODING);
                    let read = read_capped(response.into_body(), deadline, close_delimited).await;
                    log.response_body = String::from_utf8_lossy(&read.bytes).into_owned();
                    log.response_body_truncated = read.truncated;
                    if let Some((kind, detail)) = read.error {
                        log.error = Some(kind);
                        log.error_detail = Some(detail);
                    }
                }
            },
        }
        log.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        log
    }
}
