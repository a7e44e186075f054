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
mod oauth;
mod proxy;
mod request;
mod tls;

pub use classify::parse_retry_after;
pub use connect::{
    build_client, build_delivery_client, BlockedAddress, DnsFailure, GuardedConnector, HttpsClient,
    Pooling, Resolver,
};
pub use proxy::{parse_no_proxy, Proxy, ProxyFailure, ProxyRoute};
pub use request::SignatureCache;
pub use tls::{
    client_identity, tls_config, tls_config_of, ClientIdentity, TlsSettings, TlsSetupError,
};

use classify::{classify, find_cause, innermost_text, is_stale_connection, read_capped};
use request::build_request;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::Request;
use tokio::time::{timeout_at, Instant};

use crate::address::PolicyCell;
use crate::clock;
use crate::event::EventType;
use crate::ids::{DeliveryId, EventKey, WebhookId};
use crate::model::{Attempt, AttemptError, ProxyChoice, Secret, Trigger};

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
    /// The webhook's custom headers, receiver authentication and signature schemes
    /// (issue 16).
    pub options: &'a crate::model::DeliveryOptions,
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
    /// The clients (pooled, and fresh for resends) and the policy version they were built
    /// under.
    clients: Arc<std::sync::RwLock<Clients>>,
    /// Clients of the webhooks that present a client certificate (mutual TLS, issue 16),
    /// by webhook, with the certificate's fingerprint: each has its own connection pool.
    identities: Arc<std::sync::Mutex<lru::LruCache<WebhookId, (IdentityKey, Clients)>>>,
    policy: Arc<PolicyCell>,
    roots: Arc<rustls::RootCertStore>,
    tokens: oauth::TokenCache,
    tls: rustls::ClientConfig,
    /// The daemon's proxy route, if `--proxy` is set.
    proxy: Option<Arc<ProxyRoute>>,
    timeout: Duration,
    pool_idle: Duration,
    signatures: Arc<SignatureCache>,
}

/// Webhooks whose mutual-TLS clients are kept (each with its own pool); past this, the
/// least recently used is dropped and rebuilt on its next attempt.
pub const IDENTITY_CLIENTS: usize = 256;

/// What a webhook's mutual-TLS clients were built for.
#[derive(Clone, Copy, PartialEq, Eq)]
struct IdentityKey {
    version: u64,
    fingerprint: [u8; 32],
}

/// The delivery clients of one address-policy version.
#[derive(Clone)]
struct Clients {
    version: u64,
    /// Keep-alive, idle connections closed after `pool_idle`.
    pooled: HttpsClient,
    /// A new connection per request: the resend after a stale pooled connection.
    fresh: HttpsClient,
}

impl Sender {
    /// Builds the clients. `timeout` bounds each whole attempt; `policy` says which
    /// addresses may be connected to; `tls` which CAs are trusted; `pool_idle` how long an
    /// idle keep-alive connection is kept (`--pool-idle-timeout`; zero keeps none); `proxy`
    /// the daemon's outbound proxy (`--proxy`, `--no-proxy`).
    ///
    /// # Errors
    /// [`TlsSetupError`] when the configured roots cannot be loaded.
    pub fn new(
        timeout: Duration,
        policy: Arc<PolicyCell>,
        tls: &TlsSettings,
        pool_idle: Duration,
        proxy: Option<ProxyRoute>,
    ) -> Result<Sender, TlsSetupError> {
        let roots = Arc::new(tls::tls_roots(tls)?);
        let tls = tls_config_of(&roots)?;
        let proxy = proxy.map(Arc::new);
        let clients = Self::build_clients(timeout, &policy, &tls, pool_idle, proxy.clone());
        Ok(Sender {
            clients: Arc::new(std::sync::RwLock::new(clients)),
            identities: Arc::new(std::sync::Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(IDENTITY_CLIENTS).expect("non-zero"),
            ))),
            policy,
            roots,
            tokens: oauth::TokenCache::default(),
            tls,
            proxy,
            timeout,
            pool_idle,
            signatures: Arc::new(SignatureCache::new(SIGNATURE_CACHE_ENTRIES)),
        })
    }

    fn build_clients(
        timeout: Duration,
        policy: &Arc<PolicyCell>,
        tls: &rustls::ClientConfig,
        pool_idle: Duration,
        proxy: Option<Arc<ProxyRoute>>,
    ) -> Clients {
        let pooling = if pool_idle.is_zero() {
            Pooling::Fresh
        } else {
            Pooling::Idle(pool_idle)
        };
        let client = |pooling| {
            build_delivery_client(
                timeout,
                Arc::clone(policy),
                tls.clone(),
                pooling,
                proxy.clone(),
            )
        };
        Clients {
            version: policy.version(),
            pooled: client(pooling),
            fresh: client(Pooling::Fresh),
        }
    }

    /// The clients to use now: rebuilt, with an empty connection pool, when the address
    /// policy changed since they were built (SIGHUP), so no attempt reuses a connection to
    /// a network the new policy forbids. Attempts in flight finish on the old ones.
    fn clients(&self) -> Clients {
        let version = self.policy.version();
        {
            let current = match self.clients.read() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            if current.version == version {
                return current.clone();
            }
        }
        let mut current = match self.clients.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if current.version != version {
            *current = Self::build_clients(
                self.timeout,
                &self.policy,
                &self.tls,
                self.pool_idle,
                self.proxy.clone(),
            );
        }
        current.clone()
    }

    /// The clients for `options`: the shared ones, or those of its client certificate or its
    /// own proxy choice (built on first use and kept per webhook, [`IDENTITY_CLIENTS`] at
    /// most; rebuilt when either or the address policy changes).
    ///
    /// # Errors
    /// Why the certificate or the proxy cannot be used (both were checked when saved, so
    /// only a key type rustls cannot sign with).
    fn clients_for(
        &self,
        attempt: &OutgoingAttempt<'_>,
    ) -> Result<Clients, (AttemptError, String)> {
        let options = attempt.options;
        if options.client_certificate.is_none() && options.proxy == ProxyChoice::Default {
            return Ok(self.clients());
        }
        let key = IdentityKey {
            version: self.policy.version(),
            fingerprint: {
                use sha2::Digest;
                let mut hash = sha2::Sha256::new();
                if let Some(cert) = &options.client_certificate {
                    hash.update(cert.certificate_pem.as_bytes());
                    hash.update([0]);
                    hash.update(cert.private_key_pem.0.as_bytes());
                }
                hash.update([1]);
                match &options.proxy {
                    ProxyChoice::Default => hash.update(b"default"),
                    ProxyChoice::None => hash.update(b"none"),
                    ProxyChoice::Url(url) => hash.update(url.0.as_bytes()),
                }
                hash.finalize().into()
            },
        };
        let mut cache = self.identities.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((built_for, clients)) = cache.get(&attempt.webhook_id) {
            if *built_for == key {
                return Ok(clients.clone());
            }
        }
        let config = match &options.client_certificate {
            None => self.tls.clone(),
            Some(cert) => {
                // Expiry is the receiver's to judge: the certificate was valid when saved.
                let unusable = |e: String| {
                    (
                        AttemptError::Tls,
                        format!("the client certificate cannot be used: {e}"),
                    )
                };
                let identity =
                    tls::client_identity(&cert.certificate_pem, &cert.private_key_pem.0, None)
                        .map_err(unusable)?;
                tls::with_client_identity(&self.roots, identity)
                    .map_err(|e| unusable(e.to_string()))?
            }
        };
        let proxy = match &options.proxy {
            ProxyChoice::Default => self.proxy.clone(),
            ProxyChoice::None => None,
            ProxyChoice::Url(url) => Some(Arc::new(ProxyRoute {
                proxy: Proxy::parse(&url.0).map_err(|e| {
                    (
                        AttemptError::Connect,
                        format!("the webhook's proxy cannot be used: {e}"),
                    )
                })?,
                no_proxy: Vec::new(),
            })),
        };
        let clients =
            Self::build_clients(self.timeout, &self.policy, &config, self.pool_idle, proxy);
        cache.put(attempt.webhook_id, (key, clients.clone()));
        Ok(clients)
    }

    /// Sends `request` and waits for the response head, until `deadline`. When it fails on
    /// a connection the receiver was closing under it (a stale keep-alive connection, see
    /// [`is_stale_connection`]), the same request (same signature, same timestamp) is sent
    /// once more on a fresh connection, within the same deadline and the same attempt: the
    /// receiver got no complete request it could answer, so this costs no scheduled retry.
    async fn exchange(
        &self,
        attempt: &OutgoingAttempt<'_>,
        clients: Clients,
        request: Request<Full<Bytes>>,
        deadline: Instant,
    ) -> Exchanged {
        let again = clone_request(&request);
        match timeout_at(deadline, clients.pooled.request(request)).await {
            Ok(Err(e)) if is_stale_connection(&e) => {
                tracing::debug!(
                    delivery = %attempt.delivery_id,
                    origin = %log_origin(attempt.url),
                    error = %innermost_text(&e),
                    "the connection closed under the request; sending it again on a fresh one"
                );
                timeout_at(deadline, clients.fresh.request(again)).await
            }
            other => other,
        }
    }

    /// [`Self::exchange`] with the webhook's OAuth 2.0 access token, when it has one: the
    /// kept token, or a new one; a 401 answer gets one more try with a new token, in the
    /// same attempt (the receiver may have revoked the first).
    ///
    /// # Errors
    /// Why no token could be had (the attempt's `auth` error); nothing was sent then.
    async fn authorized_exchange(
        &self,
        attempt: &OutgoingAttempt<'_>,
        clients: Clients,
        mut request: Request<Full<Bytes>>,
        deadline: Instant,
    ) -> Result<Exchanged, String> {
        let Some(settings) = oauth_settings(attempt.options) else {
            return Ok(self.exchange(attempt, clients, request, deadline).await);
        };
        let token = self
            .tokens
            .bearer(
                &clients.pooled,
                attempt.webhook_id,
                settings,
                None,
                deadline,
            )
            .await?;
        set_bearer(&mut request, &token);
        let mut again = clone_request(&request);
        let first = self
            .exchange(attempt, clients.clone(), request, deadline)
            .await;
        if !matches!(&first, Ok(Ok(r)) if r.status() == hyper::StatusCode::UNAUTHORIZED) {
            return Ok(first);
        }
        drop(first);
        let fresh = self
            .tokens
            .bearer(
                &clients.pooled,
                attempt.webhook_id,
                settings,
                Some(&token),
                deadline,
            )
            .await?;
        set_bearer(&mut again, &fresh);
        Ok(self.exchange(attempt, clients, again, deadline).await)
    }

    /// Token requests sent to OAuth 2.0 token endpoints since start.
    pub fn tokens_fetched(&self) -> u64 {
        self.tokens.fetched()
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
        let request = build_request(&attempt, signature, started_at_ms / 1000);
        match (request, self.clients_for(&attempt)) {
            (None, _) => {
                log.error = Some(AttemptError::Connect);
                log.error_detail = Some("the URL cannot be requested".to_owned());
            }
            (Some(_), Err((kind, reason))) => {
                log.error = Some(kind);
                log.error_detail = Some(reason);
            }
            (Some(request), Ok(clients)) => {
                match self
                    .authorized_exchange(&attempt, clients, request, deadline)
                    .await
                {
                    Err(reason) => {
                        log.error = Some(AttemptError::Auth);
                        tracing::warn!(
                            delivery = %attempt.delivery_id,
                            origin = %log_origin(attempt.url),
                            reason = %reason,
                            "no access token for the receiver; nothing was sent"
                        );
                        log.error_detail = Some(reason);
                    }
                    Ok(Err(_)) => {
                        log.error = Some(AttemptError::Timeout);
                        log.error_detail = Some(format!(
                            "no response within {}",
                            humantime::format_duration(self.timeout)
                        ));
                    }
                    Ok(Ok(Err(e))) => {
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
                    Ok(Ok(Ok(response))) => {
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
                        let read =
                            read_capped(response.into_body(), deadline, close_delimited).await;
                        log.response_body = String::from_utf8_lossy(&read.bytes).into_owned();
                        log.response_body_truncated = read.truncated;
                        if let Some((kind, detail)) = read.error {
                            log.error = Some(kind);
                            log.error_detail = Some(detail);
                        }
                    }
                }
            }
        }
        log.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        log
    }
}

/// What an exchange came to: the response head, the client's error, or the deadline.
type Exchanged = Result<
    Result<hyper::Response<Incoming>, hyper_util::client::legacy::Error>,
    tokio::time::error::Elapsed,
>;

/// The OAuth 2.0 settings of `options`, if its receiver takes client-credentials tokens.
fn oauth_settings(options: &crate::model::DeliveryOptions) -> Option<oauth::OAuth2Settings<'_>> {
    match &options.auth {
        Some(crate::model::ReceiverAuth::OAuth2 {
            token_url,
            client_id,
            client_secret,
            scope,
            audience,
        }) => Some(oauth::OAuth2Settings {
            token_url,
            client_id,
            client_secret,
            scope: scope.as_deref(),
            audience: audience.as_deref(),
        }),
        _ => None,
    }
}

/// Puts `Authorization: Bearer <token>` on `request`, marked sensitive.
fn set_bearer(request: &mut Request<Full<Bytes>>, token: &crate::model::Secret) {
    if let Ok(mut value) = hyper::header::HeaderValue::from_str(&format!("Bearer {}", token.0)) {
        value.set_sensitive(true);
        request
            .headers_mut()
            .insert(hyper::header::AUTHORIZATION, value);
    }
}

/// A copy of a request whose body is in memory (method, URI, version, headers, body).
fn clone_request(request: &Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let mut copy = Request::new(request.body().clone());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    copy
}
