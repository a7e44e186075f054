//! OAuth 2.0 client credentials for receivers (issue 16; RFC 6749 §4.4): the daemon asks the
//! webhook's token endpoint for an access token, sends it as `Authorization: Bearer`, keeps
//! it until shortly before it expires, and asks again once when the receiver answers 401.
//!
//! The token request goes through the delivery clients, so the outbound address policy and
//! the TLS rules hold for the token endpoint too. The client authenticates with HTTP Basic
//! (RFC 6749 §2.3.1, id and secret form-encoded first). Tokens stay in memory only and
//! never reach a log or an answer.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use tokio::time::{timeout_at, Instant};

use super::connect::HttpsClient;
use super::USER_AGENT;
use crate::ids::WebhookId;
use crate::model::Secret;

/// The settings of [`crate::model::ReceiverAuth::OAuth2`], borrowed.
#[derive(Debug, Clone, Copy)]
pub struct OAuth2Settings<'a> {
    /// The token endpoint (https, or http with `--allow-http`).
    pub token_url: &'a str,
    /// The client id.
    pub client_id: &'a str,
    /// The client secret.
    pub client_secret: &'a Secret,
    /// `scope`, when set.
    pub scope: Option<&'a str>,
    /// `audience`, when set (Auth0 and others).
    pub audience: Option<&'a str>,
}

/// Webhooks whose token is kept; past this, the least recently used one asks again.
pub const CACHED_TOKENS: usize = 1024;

/// A token is not used in its last this many seconds (or its last tenth, if shorter).
const EXPIRY_MARGIN_S: u64 = 30;

/// How long a token without `expires_in` is kept.
const DEFAULT_LIFETIME_S: u64 = 300;

/// Largest token answer read, bytes.
const MAX_TOKEN_ANSWER_BYTES: usize = 64 * 1024;

#[derive(Clone)]
struct Token {
    /// What it was fetched for: a changed setting fetches anew.
    fingerprint: [u8; 32],
    value: Secret,
    use_until: Instant,
}

/// A webhook's token, locked while it is fetched.
type TokenSlot = Arc<tokio::sync::Mutex<Option<Token>>>;

/// The tokens in use, one per webhook. Fetching one holds its webhook's lock, so attempts
/// that need it at once wait for one request instead of each sending their own.
#[derive(Clone)]
pub struct TokenCache {
    entries: Arc<Mutex<lru::LruCache<WebhookId, TokenSlot>>>,
    /// Token requests sent, for the status line and tests.
    fetched: Arc<std::sync::atomic::AtomicU64>,
}

impl Default for TokenCache {
    fn default() -> TokenCache {
        TokenCache {
            entries: Arc::new(Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(CACHED_TOKENS).expect("non-zero"),
            ))),
            fetched: Arc::default(),
        }
    }
}

fn fingerprint(settings: &OAuth2Settings<'_>) -> [u8; 32] {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    for part in [
        settings.token_url,
        settings.client_id,
        &settings.client_secret.0,
        settings.scope.unwrap_or("\u{0}"),
        settings.audience.unwrap_or("\u{0}"),
    ] {
        hash.update(part.as_bytes());
        hash.update([0xff]);
    }
    hash.finalize().into()
}

impl TokenCache {
    /// The access token for `webhook`: the kept one while it is good, else a new one from
    /// the token endpoint. `stale` names a token the receiver just refused (401): it is not
    /// returned again.
    ///
    /// # Errors
    /// A sentence for the attempt's `auth` error: the endpoint could not be reached, did not
    /// answer 200 before `deadline`, or answered without an `access_token`.
    pub async fn bearer(
        &self,
        client: &HttpsClient,
        webhook: WebhookId,
        settings: OAuth2Settings<'_>,
        stale: Option<&Secret>,
        deadline: Instant,
    ) -> Result<Secret, String> {
        let slot = {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(entries.get_or_insert(webhook, Arc::default))
        };
        let mut kept = slot.lock().await;
        let wanted = fingerprint(&settings);
        if let Some(token) = kept.as_ref() {
            let good = token.fingerprint == wanted
                && Instant::now() < token.use_until
                && stale != Some(&token.value);
            if good {
                return Ok(token.value.clone());
            }
        }
        let token = self.fetch(client, settings, wanted, deadline).await?;
        let value = token.value.clone();
        *kept = Some(token);
        Ok(value)
    }

    /// Token requests sent since start.
    pub fn fetched(&self) -> u64 {
        self.fetched.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn fetch(
        &self,
        client: &HttpsClient,
        settings: OAuth2Settings<'_>,
        fingerprint: [u8; 32],
        deadline: Instant,
    ) -> Result<Token, String> {
        self.fetched
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let form = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        // Built in a block: the serializer is not `Send`, and the request awaits below.
        let body = {
            let mut body = url::form_urlencoded::Serializer::new(String::new());
            body.append_pair("grant_type", "client_credentials");
            if let Some(scope) = settings.scope {
                body.append_pair("scope", scope);
            }
            if let Some(audience) = settings.audience {
                body.append_pair("audience", audience);
            }
            body.finish()
        };
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            form(settings.client_id),
            form(&settings.client_secret.0)
        ));
        let mut authorization = hyper::header::HeaderValue::from_str(&format!("Basic {basic}"))
            .map_err(|_| "the client id or secret cannot be sent in a header".to_owned())?;
        authorization.set_sensitive(true);
        let request = Request::post(settings.token_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .header("user-agent", USER_AGENT)
            .header(hyper::header::AUTHORIZATION, authorization)
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| "the token_url cannot be requested".to_owned())?;
        let response = match timeout_at(deadline, client.request(request)).await {
            Err(_) => return Err("the token endpoint did not answer in time".to_owned()),
            Ok(Err(e)) => {
                let (kind, detail) = super::classify::classify(&e);
                return Err(format!(
                    "the token endpoint failed ({}): {detail}",
                    kind.as_str()
                ));
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        let read = timeout_at(
            deadline,
            Limited::new(response.into_body(), MAX_TOKEN_ANSWER_BYTES).collect(),
        )
        .await;
        let bytes = match read {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(_)) => return Err("the token endpoint's answer could not be read".to_owned()),
            Err(_) => return Err("the token endpoint did not answer in time".to_owned()),
        };
        if status != hyper::StatusCode::OK {
            // The body of an error answer says why (`invalid_client`), never a token.
            let reason = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_default();
            return Err(format!(
                "the token endpoint answered {}{}",
                status.as_u16(),
                if reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", reason.chars().take(100).collect::<String>())
                }
            ));
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            access_token: String,
            expires_in: Option<u64>,
        }
        let answer: Answer = serde_json::from_slice(&bytes)
            .map_err(|_| "the token endpoint's answer has no access_token".to_owned())?;
        if answer.access_token.is_empty()
            || hyper::header::HeaderValue::from_str(&answer.access_token).is_err()
        {
            return Err("the token endpoint's access_token cannot be sent in a header".to_owned());
        }
        let lifetime = answer.expires_in.unwrap_or(DEFAULT_LIFETIME_S);
        let margin = EXPIRY_MARGIN_S.min(lifetime / 10);
        Ok(Token {
            fingerprint,
            value: Secret(answer.access_token),
            use_until: Instant::now() + Duration::from_secs(lifetime.saturating_sub(margin)),
        })
    }
}
