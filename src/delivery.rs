//! The delivery engine's HTTP side: one signed POST per attempt, classified and timed.
//!
//! Owner's rule: this module sends and measures; it never touches the store and never
//! decides what happens next (that is `retry` policy, applied by the store). One pooled
//! hyper client (keep-alive per origin, rustls with the webpki roots, HTTP/1.1 and h2 by
//! ALPN) serves every attempt. Redirects are never followed. The attempt timeout covers the
//! whole exchange: connect, TLS, headers and the (capped) response body.

use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::{timeout_at, Instant};

use crate::address::{self, PolicyCell};
use crate::clock;
use crate::event::EventType;
use crate::ids::{DeliveryId, EventKey, WebhookId};
use crate::model::{Attempt, AttemptError, Secret, Trigger};
use crate::signature::{
    sign, standard_signature, SIGNATURE_HEADER, WEBHOOK_ID_HEADER, WEBHOOK_SIGNATURE_HEADER,
    WEBHOOK_TIMESTAMP_HEADER,
};

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

/// A resolver failure: the host name has no address. Found in an error's source chain to
/// classify the attempt as `dns` rather than `connect`.
#[derive(Debug, thiserror::Error)]
#[error("the host name did not resolve")]
pub struct DnsFailure;

/// The address policy refused every address of the host: nothing was connected to. Found in
/// an error's source chain to classify the attempt as `blocked_address`.
#[derive(Debug, thiserror::Error)]
#[error("refused by the outbound address policy: {range}")]
pub struct BlockedAddress {
    /// The forbidden range, by name (e.g. `loopback (127.0.0.0/8)`).
    pub range: &'static str,
}

type BoxError = Box<dyn StdError + Send + Sync>;

/// Resolves host names with the system resolver (tokio's `lookup_host`) and, with a policy,
/// keeps only the addresses it permits: the connector then connects only to those, at every
/// attempt, so a name that turns private between two attempts is still refused.
#[derive(Debug, Clone, Default)]
pub struct Resolver {
    policy: Option<Arc<PolicyCell>>,
}

impl tower::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.policy.as_ref().map(|cell| cell.load());
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
                .await
                .map_err(|_| Box::new(DnsFailure) as BoxError)?
                .collect();
            if addrs.is_empty() {
                return Err(Box::new(DnsFailure) as BoxError);
            }
            let Some(policy) = policy else {
                return Ok(addrs.into_iter());
            };
            let refused = addrs.iter().find_map(|a| policy.refusal(a.ip()));
            let permitted: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| policy.permits(a.ip()))
                .collect();
            match refused {
                Some(range) if permitted.is_empty() => {
                    Err(Box::new(BlockedAddress { range }) as BoxError)
                }
                _ => Ok(permitted.into_iter()),
            }
        })
    }
}

/// The TCP connector with the address policy applied to IP-literal hosts too (the resolver
/// is not asked about those).
#[derive(Debug, Clone)]
pub struct GuardedConnector {
    inner: HttpConnector<Resolver>,
    policy: Option<Arc<PolicyCell>>,
}

impl tower::Service<Uri> for GuardedConnector {
    type Response = <HttpConnector<Resolver> as tower::Service<Uri>>::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        tower::Service::<Uri>::poll_ready(&mut self.inner, cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        if let (Some(policy), Some(ip)) = (
            self.policy.as_ref().map(|cell| cell.load()),
            uri.host().and_then(address::literal),
        ) {
            if let Some(range) = policy.refusal(ip) {
                return Box::pin(
                    async move { Err(Box::new(BlockedAddress { range }) as BoxError) },
                );
            }
        }
        let connecting = tower::Service::<Uri>::call(&mut self.inner, uri);
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

/// The pooled HTTP(S) client type used for deliveries and by the CLI.
pub type HttpsClient = Client<HttpsConnector<GuardedConnector>, Full<Bytes>>;

/// Which certificate authorities deliveries trust (issue 5, item 2). The webpki roots
/// (Mozilla's list, compiled in) always; the operating system's store and an operator's
/// PEM file on request. There is deliberately no way to skip verification.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// A PEM file with one or more CA certificates (an internal CA), `--extra-ca-file`.
    pub extra_ca_file: Option<std::path::PathBuf>,
    /// Whether the OS store (as `rustls-native-certs` finds it) is trusted too.
    pub system_roots: bool,
}

/// Why the delivery client's TLS roots could not be set up (the daemon does not start).
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The extra CA file could not be read or holds no usable certificate.
    #[error("extra CA file {path}: {reason}")]
    ExtraCaFile {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// `tls_system_roots` is on but the OS store yielded no certificate.
    #[error("the system CA store has no usable certificate: {0}")]
    SystemRoots(String),
    /// rustls refused the protocol versions (cannot happen with the ring provider).
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Builds the rustls client configuration for `settings`: its roots, TLS 1.2 and 1.3 with
/// the ring provider. ALPN (h2, http/1.1) is added by the connector.
///
/// # Errors
/// [`TlsSetupError`] for an unreadable or empty CA file, or an empty system store.
pub fn tls_config(settings: &TlsSettings) -> Result<rustls::ClientConfig, TlsSetupError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if settings.system_roots {
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
            return Err(TlsSetupError::SystemRoots(errors.join("; ")));
        }
        tracing::info!(
            certificates = added,
            "trusting the system CA store for deliveries"
        );
    }
    if let Some(path) = &settings.extra_ca_file {
        let err = |reason: String| TlsSetupError::ExtraCaFile {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        // A private key has no business in a trust file (and may be the receiver's own).
        if text
            .windows(b"PRIVATE KEY-----".len())
            .any(|w| w == b"PRIVATE KEY-----")
        {
            return Err(err(
                "it holds a private key: give only the CA's certificate".to_owned(),
            ));
        }
        let certs = CertificateDer::pem_slice_iter(&text)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| err("malformed PEM (a section is cut short or not base64)".to_owned()))?;
        if certs.is_empty() {
            return Err(err("no PEM certificate in it".to_owned()));
        }
        for (n, cert) in certs.into_iter().enumerate() {
            // webpki takes any certificate as a trust anchor; a leaf (CA:FALSE) put there would
            // let its key vouch for every host name, so only CA certificates are accepted.
            if !is_ca_certificate(&cert) {
                return Err(err(format!(
                    "certificate {} is not a CA certificate (basicConstraints CA:TRUE); to trust a self-signed receiver, give the CA that signed its certificate",
                    n + 1
                )));
            }
            roots
                .add(cert)
                .map_err(|e| err(format!("not a usable CA certificate: {e}")))?;
        }
        tracing::info!(file = %path.display(), "trusting an extra CA file for deliveries");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The scheme, host and port of a webhook URL, for log lines: paths and query strings often
/// carry a receiver's token, so they are never logged.
fn log_origin(url: &str) -> String {
    url::Url::parse(url).map_or_else(
        |_| "(unparsable URL)".to_owned(),
        |u| u.origin().ascii_serialization(),
    )
}

/// Whether `cert` says it is a CA (X.509 basicConstraints `cA` true, RFC 5280 §4.2.1.9).
fn is_ca_certificate(cert: &rustls::pki_types::CertificateDer<'_>) -> bool {
    x509_parser::parse_x509_certificate(cert)
        .ok()
        .and_then(|(_, parsed)| {
            parsed
                .basic_constraints()
                .ok()
                .flatten()
                .map(|bc| bc.value.ca)
        })
        .unwrap_or(false)
}

/// Builds a pooled client without an address policy (the CLI, tests and benchmarks talk to
/// the local daemon): system resolver, TCP connect bounded by `connect_timeout`, rustls (ring
/// provider, webpki roots) offering h2 and http/1.1, keep-alive per origin.
pub fn build_client(connect_timeout: Duration) -> HttpsClient {
    let tls = tls_config(&TlsSettings::default()).expect("the webpki roots alone always load");
    build(connect_timeout, None, tls)
}

/// Builds the delivery client: as [`build_client`] with the roots of `tls`, and every
/// connection is checked against `policy` (resolved addresses and IP literals alike) before
/// it is made.
pub fn build_delivery_client(
    connect_timeout: Duration,
    policy: Arc<PolicyCell>,
    tls: rustls::ClientConfig,
) -> HttpsClient {
    build(connect_timeout, Some(policy), tls)
}

fn build(
    connect_timeout: Duration,
    policy: Option<Arc<PolicyCell>>,
    tls: rustls::ClientConfig,
) -> HttpsClient {
    let mut http = HttpConnector::new_with_resolver(Resolver {
        policy: policy.clone(),
    });
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    // Both protocols are offered by ALPN, so an h2-only receiver works.
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(GuardedConnector {
            inner: http,
            policy,
        });
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(32)
        .build(https)
}

/// Signatures already computed, by (event, webhook), with the secret they were made with.
///
/// An event's body never changes, so a retry or a redelivery reuses the `X-Palo-Signature`
/// of the first attempt instead of hashing the body again, as long as the webhook's secret
/// is the same (a changed secret is noticed by comparison and signs anew). Bounded LRU of
/// [`SIGNATURE_CACHE_ENTRIES`]; in memory only, so after a restart or an eviction the
/// signature is computed once more (1.7 µs for a 1 KiB body, `cargo bench --bench micro`).
pub struct SignatureCache {
    entries: Mutex<lru::LruCache<(EventKey, WebhookId), (Secret, HeaderValue)>>,
}

impl SignatureCache {
    /// An empty cache holding at most `capacity` signatures (at least 1).
    pub fn new(capacity: usize) -> SignatureCache {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        SignatureCache {
            entries: Mutex::new(lru::LruCache::new(capacity)),
        }
    }

    /// The `X-Palo-Signature` value of `body` under `secret`, computed at most once per
    /// (event, webhook, secret) while it stays cached.
    pub fn signature(
        &self,
        event_key: EventKey,
        webhook_id: WebhookId,
        secret: &Secret,
        body: &[u8],
    ) -> HeaderValue {
        let key = (event_key, webhook_id);
        if let Some((signed_with, value)) = self.lock().get(&key) {
            if signed_with == secret {
                return value.clone();
            }
        }
        // Hashing happens outside the lock. `sha256=` + hex is always a valid header value.
        let value = HeaderValue::try_from(sign(&secret.0, body)).expect("hex is a valid header");
        self.lock().put(key, (secret.clone(), value.clone()));
        value
    }

    /// How many signatures are cached.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, lru::LruCache<(EventKey, WebhookId), (Secret, HeaderValue)>>
    {
        // The critical sections cannot panic half-way, so a poisoned lock holds sound data.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
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

/// Parses a `Retry-After` value (RFC 9110 §10.2.3): delta-seconds (`120`) or an HTTP-date
/// (`Wed, 21 Oct 2026 07:28:00 GMT`, read relative to `now`; a past date is zero), capped at
/// 30 days. `None` when it is neither.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    // Anything longer is capped at 30 days, the longest a schedule step may be (a longer
    // ask could not lengthen a delay further), so what is logged stays a sane number.
    let cap = crate::retry::MAX_DELAY;
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Delta-seconds too large for u64 are still "a very long time".
        let seconds = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(seconds).min(cap));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO).min(cap))
}

fn build_request(
    attempt: &OutgoingAttempt<'_>,
    signature: HeaderValue,
    timestamp: u64,
) -> Option<Request<Full<Bytes>>> {
    let delivery_id = attempt.delivery_id.to_string();
    // One `v1,` entry per secret that signs: the current one, then a rotated-out one during
    // its grace period, so a receiver holding either verifies.
    let mut standard = standard_signature(
        attempt.secret.0.as_bytes(),
        &delivery_id,
        timestamp,
        &attempt.body,
    );
    if let Some(previous) = attempt.previous_secret {
        standard.push(' ');
        standard.push_str(&standard_signature(
            previous.0.as_bytes(),
            &delivery_id,
            timestamp,
            &attempt.body,
        ));
    }
    Request::post(attempt.url)
        .header("content-type", "application/json")
        .header("user-agent", USER_AGENT)
        .header(SIGNATURE_HEADER, signature)
        .header("x-palo-event", attempt.event_type.as_str())
        .header("x-palo-event-id", attempt.event_id)
        .header("x-palo-delivery", delivery_id.as_str())
        .header("x-palo-attempt", attempt.number.to_string())
        .header(WEBHOOK_ID_HEADER, delivery_id.as_str())
        .header(WEBHOOK_TIMESTAMP_HEADER, timestamp.to_string())
        .header(WEBHOOK_SIGNATURE_HEADER, standard)
        .body(Full::new(attempt.body.clone()))
        .ok()
}

struct CappedBody {
    bytes: Vec<u8>,
    truncated: bool,
    /// What ended the read early, and why in words.
    error: Option<(AttemptError, String)>,
}

/// Reads at most [`MAX_STORED_RESPONSE_BYTES`] of a response body before `deadline`, then
/// stops (dropping the rest closes the connection instead of draining an endless body). A
/// `close_delimited` body that ends with a TLS connection closed without `close_notify` is
/// complete: many servers close that way, and the close is how such a body ends.
async fn read_capped(mut body: Incoming, deadline: Instant, close_delimited: bool) -> CappedBody {
    let mut out = CappedBody {
        bytes: Vec::new(),
        truncated: false,
        error: None,
    };
    loop {
        match timeout_at(deadline, body.frame()).await {
            Err(_) => {
                out.error = Some((
                    AttemptError::Timeout,
                    "the response body did not end within the attempt timeout".to_owned(),
                ));
                return out;
            }
            Ok(None) => return out,
            Ok(Some(Err(e))) => {
                let eof = find_cause::<std::io::Error>(&e)
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::UnexpectedEof);
                if close_delimited && eof {
                    return out;
                }
                out.error = Some((
                    AttemptError::Io,
                    format!("the response body broke off: {}", innermost_text(&e)),
                ));
                return out;
            }
            Ok(Some(Ok(frame))) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                let room = MAX_STORED_RESPONSE_BYTES - out.bytes.len();
                if data.len() > room {
                    out.bytes.extend_from_slice(&data[..room]);
                    out.truncated = true;
                    return out;
                }
                out.bytes.extend_from_slice(&data);
            }
        }
    }
}

/// The first cause of type `T` in an error's source chain.
fn find_cause<'a, T: StdError + 'static>(error: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(found) = inner.downcast_ref::<T>() {
                return Some(found);
            }
        }
        current = e.source();
    }
    None
}

/// Classifies a client error by walking its source chain for typed causes
/// (never by matching message text).
/// Longest [`Attempt::error_detail`] kept (256 bytes).
const MAX_ERROR_DETAIL: usize = 256;

/// The kind of a failed exchange and a short reason in words: for TLS the certificate
/// problem (`certificate expired`, `unknown issuer`, `certificate not valid for this host
/// name`, else rustls's text), otherwise the innermost error's text.
fn classify(error: &hyper_util::client::legacy::Error) -> (AttemptError, String) {
    let mut current: Option<&(dyn StdError + 'static)> = Some(error);
    let mut innermost: &(dyn StdError + 'static) = error;
    while let Some(e) = current {
        innermost = e;
        if e.is::<DnsFailure>() {
            return (AttemptError::Dns, e.to_string());
        }
        if let Some(blocked) = e.downcast_ref::<BlockedAddress>() {
            return (AttemptError::BlockedAddress, blocked.to_string());
        }
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return (AttemptError::Tls, tls_reason(tls));
        }
        // `io::Error::source` skips a custom error's own payload, and the TLS connector
        // wraps tokio-rustls's `io::Error` in another one: look inside each layer.
        let mut io = e.downcast_ref::<std::io::Error>();
        while let Some(inner) = io.and_then(std::io::Error::get_ref) {
            if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                return (AttemptError::Tls, tls_reason(tls));
            }
            if inner.is::<DnsFailure>() {
                return (AttemptError::Dns, inner.to_string());
            }
            io = inner.downcast_ref::<std::io::Error>();
        }
        current = e.source();
    }
    let kind = if error.is_connect() {
        AttemptError::Connect
    } else {
        AttemptError::Io
    };
    (kind, bounded(innermost.to_string()))
}

/// The text of the deepest cause of `error`, at most [`MAX_ERROR_DETAIL`] bytes.
fn innermost_text(error: &(dyn StdError + 'static)) -> String {
    let mut innermost = error;
    while let Some(next) = innermost.source() {
        innermost = next;
    }
    bounded(innermost.to_string())
}

/// `text` cut to at most [`MAX_ERROR_DETAIL`] bytes, on a character boundary.
fn bounded(mut text: String) -> String {
    if text.len() > MAX_ERROR_DETAIL {
        let mut cut = MAX_ERROR_DETAIL;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// The words for a TLS failure (issue 5: expired, unknown issuer, name mismatch).
fn tls_reason(error: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match error {
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "certificate expired".to_owned()
        }
        rustls::Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "certificate not valid yet".to_owned()
        }
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => {
            "unknown issuer (add the CA with --extra-ca-file)".to_owned()
        }
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => "certificate not valid for this host name".to_owned(),
        // webpki's own error type arrives wrapped in `Other` and is not re-exported by
        // rustls, so this one case is recognised by its name.
        rustls::Error::InvalidCertificate(C::Other(other))
            if other.to_string().contains("CaUsedAsEndEntity") =>
        {
            "the receiver presents a CA certificate as its own (self-signed); give it a certificate signed by a CA, and that CA with --extra-ca-file".to_owned()
        }
        rustls::Error::InvalidCertificate(C::BadSignature) => "bad certificate signature".to_owned(),
        rustls::Error::InvalidCertificate(C::Revoked) => "certificate revoked".to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // 21 Oct 2015 07:28:00
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:30:00 GMT", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(crate::retry::MAX_DELAY)
        );
    }

    #[test]
    fn signature_cache_reuses_a_signature_until_the_secret_changes() {
        let cache = SignatureCache::new(2);
        let (event, webhook) = (EventKey(1), WebhookId(2));
        let body = br#"{"event_id":"evt_1"}"#;
        let old = Secret("old-secret".to_owned());
        let first = cache.signature(event, webhook, &old, body);
        assert_eq!(first.to_str().unwrap(), sign("old-secret", body));
        // A retry reuses the cached value: even a different body (which cannot happen for one
        // event) gets the first signature back, which shows no hashing took place.
        assert_eq!(cache.signature(event, webhook, &old, b"other"), first);
        assert_eq!(cache.len(), 1);
        // A new secret signs anew and replaces the entry.
        let new = Secret("new-secret".to_owned());
        let rotated = cache.signature(event, webhook, &new, body);
        assert_eq!(rotated.to_str().unwrap(), sign("new-secret", body));
        assert_eq!(cache.len(), 1);
        // Bounded: a third (event, webhook) pair evicts the least recently used one.
        cache.signature(EventKey(3), webhook, &old, body);
        cache.signature(EventKey(4), webhook, &old, body);
        assert_eq!(cache.len(), 2);
    }
}
