//! What every request passes before a handler (issue 5, item 7): size limits on the request
//! head and body, a deadline for reading the body, authentication, a per-key rate limit, and
//! an audit line for every state-changing call.
//!
//! Owner's rule: handlers never read the socket themselves. In order: [`check_head`] (every
//! route), [`authenticate`] (resolves the [`Caller`] once into the request's extensions and
//! charges its rate limit; failed tokens are charged to the client's address), then
//! [`read_body`] buffers the body under the API read timeout (so a client sending one byte a
//! second gets 408 at the deadline, whatever its pace; a client without a valid token never
//! gets a body buffered). The head's own deadline and the connection cap are the server's
//! (`server::serve_api`).

use std::num::NonZeroU32;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use subtle::ConstantTimeEq;

use super::extract::token_hash;
use super::{ApiError, AppState, Caller};

/// Longest request target (path and query) accepted: 8 KiB; longer gets 414. Past 64 KiB
/// the `http` crate cannot hold the target and hyper answers a bare 414 itself.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Most bytes of request header fields (names and values) accepted: 32 KiB; more gets 431.
/// A head past the server's read buffer (256 KiB) is refused by hyper itself, with a bare 431.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Who made an authenticated request, for the rate limit and the audit log: `admin` or
/// `key:<key id>`. Never the token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal(pub String);

/// The client's address, put in each request's extensions by the server.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// Requests per second allowed per principal, with bursts of as many.
pub type RateLimiter = DefaultKeyedRateLimiter<String>;

/// The per-key limiter for `per_second` requests per second (`None` when 0: no limit).
/// Call [`forget_idle`] now and then: it holds one entry per key and client address seen.
pub fn rate_limiter(per_second: u32) -> Option<Arc<RateLimiter>> {
    NonZeroU32::new(per_second).map(|n| Arc::new(RateLimiter::hashmap(Quota::per_second(n))))
}

/// Requests with a missing or invalid token allowed per second per client address, with
/// bursts of as many (10), whatever `rate_limit` says: guessing keys costs time even when
/// valid keys are not limited.
pub const FAILED_TOKENS_PER_SECOND: u32 = 10;

/// The per-key rate limit in force, replaced when SIGHUP reloads `rate_limit` (the new
/// limiter starts with full budgets), and the fixed limit on failed tokens per address.
#[derive(Debug)]
pub struct RateLimit {
    current: std::sync::RwLock<(u32, Option<Arc<RateLimiter>>)>,
    failed_tokens: Arc<RateLimiter>,
}

impl Default for RateLimit {
    fn default() -> RateLimit {
        RateLimit::new(0)
    }
}

impl RateLimit {
    /// `per_second` requests per second per key (0: no limit, the default since issue 13).
    pub fn new(per_second: u32) -> RateLimit {
        RateLimit {
            current: std::sync::RwLock::new((per_second, rate_limiter(per_second))),
            failed_tokens: Arc::new(RateLimiter::hashmap(Quota::per_second(
                NonZeroU32::new(FAILED_TOKENS_PER_SECOND).unwrap_or(NonZeroU32::MIN),
            ))),
        }
    }

    /// The limiter of failed tokens, keyed by client address ([`FAILED_TOKENS_PER_SECOND`]).
    pub fn failed_tokens(&self) -> Arc<RateLimiter> {
        Arc::clone(&self.failed_tokens)
    }

    /// The limiter in force, `None` when there is no limit.
    pub fn limiter(&self) -> Option<Arc<RateLimiter>> {
        match self.current.read() {
            Ok(guard) => guard.1.clone(),
            Err(poisoned) => poisoned.into_inner().1.clone(),
        }
    }

    /// Puts `per_second` in force (0: no limit); returns whether it changed.
    pub fn set(&self, per_second: u32) -> bool {
        let mut guard = match self.current.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if guard.0 == per_second {
            return false;
        }
        *guard = (per_second, rate_limiter(per_second));
        true
    }
}

/// Drops the limiter's entries whose budget is full again (keys and addresses not seen
/// lately), so its memory follows the clients of the last second, not all clients ever.
pub fn forget_idle(limiter: &RateLimiter) {
    limiter.retain_recent();
    limiter.shrink_to_fit();
}

/// Checks the head's size: 414 over [`MAX_URI_BYTES`], 431 over [`MAX_HEADER_BYTES`]. Runs
/// first, on every route.
pub(super) async fn check_head(request: Request, next: Next) -> Response {
    // The request target as sent (origin form): path and query, no allocation.
    let target_len = request
        .uri()
        .path_and_query()
        .map_or(0, |pq| pq.as_str().len());
    if target_len > MAX_URI_BYTES {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request target is over {MAX_URI_BYTES} bytes"),
        )
        .into_response();
    }
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("the request's header fields are over {MAX_HEADER_BYTES} bytes"),
        )
        .into_response();
    }
    next.run(request).await
}

/// Bytes of an over-limit body read and thrown away before the 413 (16 MiB): a client still
/// sending its body then reads the answer, where closing at once would reset the connection
/// under it (a broken pipe instead of a 413). Past this, or past the read timeout, the
/// connection is closed after the answer.
pub const DRAIN_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// How reading a body ended.
enum BodyRead {
    /// The whole body, within the limit.
    Complete(bytes::Bytes),
    /// Over the limit; `drained` when the rest was read to its end (the connection can
    /// carry on), not when it passed [`DRAIN_MAX_BYTES`].
    TooLarge { drained: bool },
    /// The client's stream broke.
    Broken,
}

/// Reads `body` up to `limit` bytes; past it, reads on without keeping anything up to
/// [`DRAIN_MAX_BYTES`] in all.
async fn read_limited(mut body: Body, limit: usize) -> BodyRead {
    use http_body_util::BodyExt;
    let mut kept = bytes::BytesMut::new();
    let mut seen: u64 = 0;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return BodyRead::Broken;
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len() as u64;
        if seen > DRAIN_MAX_BYTES {
            return BodyRead::TooLarge { drained: false };
        }
        if seen <= limit as u64 {
            kept.extend_from_slice(&data);
        }
    }
    if seen > limit as u64 {
        BodyRead::TooLarge { drained: true }
    } else {
        BodyRead::Complete(kept.freeze())
    }
}

/// Reads the whole body within the API read timeout (408 after it) and the body limit (413
/// over it, once the body was read and discarded up to [`DRAIN_MAX_BYTES`]), so no handler
/// waits on a slow client. Runs after [`authenticate`], so a client without a valid token
/// never gets a body buffered.
pub(super) async fn read_body(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let close = |mut response: Response| {
        response.headers_mut().insert(
            header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
        response
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > DRAIN_MAX_BYTES) {
        return close(too_large().into_response());
    }
    let (parts, body) = request.into_parts();
    let read =
        tokio::time::timeout(state.read_timeout, read_limited(body, state.max_body_bytes)).await;
    let bytes = match read {
        Ok(BodyRead::Complete(bytes)) => bytes,
        Ok(BodyRead::TooLarge { drained: true }) => return too_large().into_response(),
        Ok(BodyRead::TooLarge { drained: false }) => return close(too_large().into_response()),
        Ok(BodyRead::Broken) => {
            return close(ApiError::bad_json("could not read the request body").into_response())
        }
        Err(_) => {
            // A body declared too large and still arriving after the timeout: 413 says more
            // than 408.
            if declared.is_some_and(|n| n > state.max_body_bytes as u64) {
                return close(too_large().into_response());
            }
            return close(
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    format!(
                        "the request body did not arrive within {}",
                        humantime::format_duration(state.read_timeout)
                    ),
                )
                .into_response(),
            );
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "the request body is over the size limit",
    )
}

/// Resolves the bearer token to a [`Caller`] (401 when missing or unknown), charges its
/// rate limit (429 with Retry-After beyond it), runs the handler, and writes an audit line
/// (target `audit`, level info) for every state-changing call with the principal, the
/// method, the path and the status. Event ingest is the data path, not administration: it
/// is logged at debug instead, so a busy producer does not flood the audit log.
pub(super) async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let (caller, principal) = match resolve(&state, &request) {
        Ok(found) => found,
        Err(unauthorized) => {
            // Failed tokens are charged to the client's address: past its budget they get
            // 429 instead of 401, so guessing costs time. Valid keys never share it.
            let peer = request
                .extensions()
                .get::<PeerAddr>()
                .map_or_else(|| "unknown".to_owned(), |p| p.0.ip().to_string());
            let path = format!("/api{}", request.uri().path());
            if let Err(not_until) = state
                .rate_limit
                .failed_tokens()
                .check_key(&format!("peer:{peer}"))
            {
                // Past the budget, rejections are not logged at info: a flood of bad
                // tokens cannot flood the log.
                tracing::debug!(target: "audit", peer = %peer, path, "rejected and rate limited");
                return Err(rate_limited(&not_until));
            }
            tracing::info!(target: "audit", peer = %peer, path, "rejected: missing or invalid token");
            return Err(unauthorized);
        }
    };
    if let Some(limiter) = state.rate_limit.limiter() {
        if let Err(not_until) = limiter.check_key(&principal.0) {
            tracing::debug!(principal = %principal.0, "rate limited");
            return Err(rate_limited(&not_until));
        }
    }
    let method = request.method().clone();
    // This layer sits on the router nested under `/api`, which sees paths without it.
    let path = format!("/api{}", request.uri().path());
    request.extensions_mut().insert(caller);
    let response = next.run(request).await;
    let changes_state = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    if changes_state {
        let status = response.status().as_u16();
        if path == "/api/events" {
            tracing::debug!(target: "audit", principal = %principal.0, %method, path, status, "api call");
        } else {
            tracing::info!(target: "audit", principal = %principal.0, %method, path, status, "api call");
        }
    }
    Ok(response)
}

/// 429 `rate_limited` with the seconds until the bucket has room again (at least 1).
fn rate_limited(not_until: &governor::NotUntil<<DefaultClock as Clock>::Instant>) -> ApiError {
    let wait = not_until.wait_time_from(DefaultClock::default().now());
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "too many requests; retry after the delay in Retry-After",
    )
    .with_retry_after(seconds.max(1))
}

fn resolve(state: &AppState, request: &Request) -> Result<(Caller, Principal), ApiError> {
    let unauthorized = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid bearer token",
        )
    };
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|t| !t.is_empty())
        .ok_or_else(unauthorized)?;
    let hash = token_hash(token);
    if bool::from(hash.ct_eq(&state.admin_token_hash)) {
        return Ok((Caller::Admin, Principal("admin".to_owned())));
    }
    // Keys are looked up by the SHA-256 of the presented token, answered from memory.
    let key = state.store.find_api_key(&hash)?.ok_or_else(unauthorized)?;
    Ok((
        Caller::Organization(key.organization_id),
        Principal(format!("key:{}", key.id)),
    ))
}

#[cfg(test)]
mod tests {
    use super::RateLimit;

    #[test]
    fn a_reloaded_rate_limit_replaces_the_limiter() {
        let limit = RateLimit::new(0);
        assert!(limit.limiter().is_none());
        assert!(!limit.set(0));
        assert!(limit.set(1));
        let limiter = limit.limiter().expect("a limit of 1/s");
        assert!(limiter.check_key(&"k".to_owned()).is_ok());
        assert!(
            limiter.check_key(&"k".to_owned()).is_err(),
            "second call within the second"
        );
        assert!(!limit.set(1), "same value: unchanged");
        assert!(limit.set(0));
        assert!(limit.limiter().is_none());
    }
}
