//! A webhook's delivery options in the API (issue 16): their JSON shapes, their
//! validation (422 naming the field), how a PATCH merges into what is stored, and
//! `GET /api/webhooks/{id}/public-key`.
//!
//! Credentials (secret header values, passwords, tokens, the Ed25519 key) are write-only:
//! answers say `"configured": true` or leave the value out, never the value.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Deserializer, Serialize};

use super::{ApiError, AppState, Caller};
use crate::filter::Filter;
use crate::model::{
    CustomHeader, DeliveryOptions, Ordering, ProxyChoice, ReceiverAuth, Secret, MAX_CUSTOM_HEADERS,
    MAX_IN_FLIGHT_LIMIT,
};

/// Longest custom header value, bytes.
pub const MAX_HEADER_VALUE_BYTES: usize = 4096;
/// Longest credential (password, token), bytes.
const MAX_CREDENTIAL_BYTES: usize = 4096;
/// Longest `ordering_hold_max`: the default retry schedule's span is about 8.6 h.
const MAX_ORDERING_HOLD: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// Header names the daemon sets itself, that belong to the connection (RFC 9110 §7.6.1), or
/// that would change how the body is read (`content-encoding`) or sent (`expect`): a webhook
/// may not set them.
const RESERVED_HEADERS: [&str; 15] = [
    "content-encoding",
    "expect",
    "content-type",
    "content-length",
    "user-agent",
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
];

/// One custom header in a request: `{"name", "value", "secret"}`. In a PATCH, a secret
/// header sent without `value` keeps the value stored under that name.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderIn {
    /// An HTTP token; compared and stored lowercase.
    pub name: String,
    /// Visible ASCII, spaces and tabs inside; at most 4096 bytes.
    pub value: Option<String>,
    /// Write-only when true (sealed at rest, never answered). Default false.
    #[serde(default)]
    pub secret: bool,
}

/// A custom header as answered: the value only when it is not secret.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HeaderOut {
    /// Lowercase.
    pub name: String,
    /// Absent for a secret header.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub value: Option<String>,
    /// Whether the value is write-only.
    pub secret: bool,
}

/// `auth` in a request.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthIn {
    /// `Authorization: Basic` (RFC 7617).
    Basic {
        /// No `:` (RFC 7617 §2).
        username: String,
        /// Write-only.
        password: String,
    },
    /// `Authorization: Bearer` (RFC 6750).
    Bearer {
        /// Write-only; RFC 6750 token characters.
        token: String,
    },
    /// OAuth 2.0 client credentials (RFC 6749 §4.4): a token fetched from `token_url`.
    Oauth2ClientCredentials {
        /// Absolute https URL (http with `--allow-http`), under the address policy.
        token_url: String,
        /// The client id.
        client_id: String,
        /// Write-only.
        client_secret: String,
        /// Optional `scope`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
        /// Optional `audience`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        audience: Option<String>,
    },
}

/// What validating options needs from the daemon's settings.
#[derive(Debug, Clone, Copy)]
pub struct OptionsContext<'a> {
    /// `--allow-http`: http token endpoints are accepted.
    pub allow_http: bool,
    /// The outbound address policy, for literal addresses in URLs.
    pub policy: &'a crate::address::AddressPolicy,
}

/// `client_certificate` in a request: PEM texts.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientCertificateIn {
    /// The chain, end-entity certificate first.
    pub certificate: String,
    /// Its private key (PKCS#8, PKCS#1 or SEC1). Write-only.
    pub private_key: String,
}

/// `client_certificate` as answered: never the key.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClientCertificateOut {
    /// Always true.
    pub configured: bool,
    /// The end-entity certificate's subject (`CN=...`).
    pub subject: String,
    /// RFC 3339: when it expires.
    pub not_after: String,
}

/// `auth` as answered: its type, what is not a credential, and `configured: true`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuthOut {
    /// `basic`, `bearer` or `oauth2_client_credentials`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Basic only.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub username: Option<String>,
    /// OAuth 2.0 only.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub token_url: Option<String>,
    /// OAuth 2.0 only.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub client_id: Option<String>,
    /// OAuth 2.0 only, when set.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub scope: Option<String>,
    /// OAuth 2.0 only, when set.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub audience: Option<String>,
    /// Always true: the credential is set, and never shown.
    pub configured: bool,
}

impl AuthOut {
    fn of(auth: &ReceiverAuth) -> AuthOut {
        let mut out = AuthOut {
            kind: auth.kind().to_owned(),
            username: None,
            token_url: None,
            client_id: None,
            scope: None,
            audience: None,
            configured: true,
        };
        match auth {
            ReceiverAuth::Basic { username, .. } => out.username = Some(username.clone()),
            ReceiverAuth::Bearer { .. } => {}
            ReceiverAuth::OAuth2 {
                token_url,
                client_id,
                scope,
                audience,
                ..
            } => {
                out.token_url = Some(token_url.clone());
                out.client_id = Some(client_id.clone());
                out.scope = scope.clone();
                out.audience = audience.clone();
            }
        }
        out
    }
}

/// Declares a request body whose own fields are followed by the delivery options' fields,
/// the same in [`OptionsIn`], `WebhookIn` and `WebhookPatch`: absent leaves what is stored,
/// `null` resets a field to its default. (serde's `flatten` would share one struct, but it
/// cannot be combined with the `deny_unknown_fields` the webhook bodies need.)
macro_rules! with_delivery_options {
    ($(#[$meta:meta])* pub struct $name:ident { $($fields:tt)* }) => {
        $(#[$meta])*
        pub struct $name {
            $($fields)*
            /// `none` or `key`.
            #[serde(
                default,
                deserialize_with = "crate::api::options::present",
                skip_serializing_if = "Option::is_none"
            )]
            #[schema(value_type = Option<String>)]
            pub ordering: Option<Option<String>>,
            /// A duration (`30m`): how long one delivery may hold its ordering key; `null`
            /// holds it until the delivery ends.
            #[serde(
                default,
                deserialize_with = "crate::api::options::present",
                skip_serializing_if = "Option::is_none"
            )]
            #[schema(value_type = Option<String>)]
            pub ordering_hold_max: Option<Option<String>>,
            /// 1..=64; `null` for the daemon's per-webhook value.
            #[serde(
                default,
                deserialize_with = "crate::api::options::present",
                skip_serializing_if = "Option::is_none"
            )]
            #[schema(value_type = Option<u32>, minimum = 1, maximum = 64)]
            pub max_in_flight: Option<Option<u32>>,
            /// Requests per second, at least 1; `null` for none.
            #[serde(
                default,
                deserialize_with = "crate::api::options::present",
                skip_serializing_if = "Option::is_none"
            )]
            #[schema(value_type = Option<u32>, minimum = 1)]
            pub rate_limit: Option<Option<u32>>,
            /// A filter document on the envelope ([`crate::filter`]); `null` for none.
            #[serde(
                default,
                deserialize_with = "crate::api::options::present",
                skip_serializing_if = "Option::is_none"
            )]
            #[schema(value_type = Option<serde_json::Value>)]
            pub filter: Option<Option<serde_json::Value>>,
            /// Custom headers, the whole list, replacing the stored one; `null` or `[]` for
            /// none.
            #[serde(
                default,
                deserialize_with = "crate::api::options::present",
                skip_serializing_if = "Option::is_none"
            )]
            #[schema(value_type = Option<Vec<crate::api::options::HeaderIn>>)]
            pub headers: Option<Option<Vec<crate::api::options::HeaderIn>>>,
            /// Receiver authentication; `null` for none.
            #[serde(
                default,
                deserialize_with = "crate::api::options::present",
                skip_serializing_if = "Option::is_none"
            )]
            #[schema(value_type = Option<crate::api::options::AuthIn>)]
            pub auth: Option<Option<crate::api::options::AuthIn>>,
            /// `["hmac"]` or `["hmac", "ed25519"]`.
            #[serde(
                default,
                deserialize_with = "crate::api::options::present",
                skip_serializing_if = "Option::is_none"
            )]
            #[schema(value_type = Option<Vec<String>>)]
            pub signature_scheme: Option<Option<Vec<String>>>,
            /// A client certificate for mutual TLS; `null` for none.
            #[serde(
                default,
                deserialize_with = "crate::api::options::present",
                skip_serializing_if = "Option::is_none"
            )]
            #[schema(value_type = Option<crate::api::options::ClientCertificateIn>)]
            pub client_certificate: Option<Option<crate::api::options::ClientCertificateIn>>,
            /// `"none"` (direct), an `http://[user:password@]host:port` proxy, or `null` for
            /// the daemon's `--proxy`.
            #[serde(
                default,
                deserialize_with = "crate::api::options::present",
                skip_serializing_if = "Option::is_none"
            )]
            #[schema(value_type = Option<String>)]
            pub proxy: Option<Option<String>>,
        }
    };
}
pub(super) use with_delivery_options;

with_delivery_options! {
    /// The delivery options of a create or a PATCH. Absent fields leave what is stored;
    /// `null` resets a field to its default.
    #[derive(Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
    pub struct OptionsIn {}
}

/// A field that is present (`Some`), possibly `null` (`Some(None)`); absent is `None` by
/// `#[serde(default)]`.
pub(super) fn present<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

/// The options fields of a webhook answer.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OptionsOut {
    /// `none` or `key`.
    pub ordering: String,
    /// A duration like `30m`, or null.
    pub ordering_hold_max: Option<String>,
    /// Null: the daemon's per-webhook value.
    pub max_in_flight: Option<u32>,
    /// Requests per second, or null.
    pub rate_limit: Option<u32>,
    /// The filter document, or null.
    pub filter: Option<serde_json::Value>,
    /// Custom headers, secret values left out.
    pub headers: Vec<HeaderOut>,
    /// The receiver authentication, credentials left out.
    pub auth: Option<AuthOut>,
    /// `["hmac"]` or `["hmac", "ed25519"]`.
    pub signature_scheme: Vec<String>,
    /// The mutual-TLS certificate's subject and expiry, or null.
    pub client_certificate: Option<ClientCertificateOut>,
    /// `null` (the daemon's proxy), `"none"`, or the webhook's proxy as `http://host:port`
    /// (its credentials never shown).
    pub proxy: Option<String>,
}

impl From<&DeliveryOptions> for OptionsOut {
    fn from(o: &DeliveryOptions) -> OptionsOut {
        OptionsOut {
            ordering: o.ordering.as_str().to_owned(),
            ordering_hold_max: o.ordering_hold_max_ms.map(|ms| {
                humantime::format_duration(std::time::Duration::from_millis(ms)).to_string()
            }),
            max_in_flight: o.max_in_flight,
            rate_limit: o.rate_limit,
            filter: o
                .filter
                .as_ref()
                .and_then(|f| serde_json::from_str(f.source()).ok()),
            headers: o
                .headers
                .iter()
                .map(|h| HeaderOut {
                    name: h.name.clone(),
                    value: (!h.secret).then(|| h.value.0.clone()),
                    secret: h.secret,
                })
                .collect(),
            auth: o.auth.as_ref().map(AuthOut::of),
            signature_scheme: if o.ed25519_seed.is_some() {
                vec!["hmac".to_owned(), "ed25519".to_owned()]
            } else {
                vec!["hmac".to_owned()]
            },
            proxy: match &o.proxy {
                ProxyChoice::Default => None,
                ProxyChoice::None => Some("none".to_owned()),
                ProxyChoice::Url(url) => Some(
                    crate::delivery::Proxy::parse(&url.0)
                        .map(|p| p.origin())
                        .unwrap_or_default(),
                ),
            },
            client_certificate: o.client_certificate.as_ref().map(|c| {
                // Checked when saved; an unreadable one (it expired since) still shows.
                let identity = crate::delivery::client_identity(
                    &c.certificate_pem,
                    &c.private_key_pem.0,
                    None,
                );
                let (subject, not_after) = match identity {
                    Ok(id) => (
                        id.subject,
                        crate::clock::format_ms(
                            u64::try_from(id.not_after_s)
                                .unwrap_or(0)
                                .saturating_mul(1000),
                        ),
                    ),
                    Err(_) => (String::new(), String::new()),
                };
                ClientCertificateOut {
                    configured: true,
                    subject,
                    not_after,
                }
            }),
        }
    }
}

impl OptionsIn {
    /// The options after this change to `stored` (the default options for a new webhook).
    ///
    /// # Errors
    /// 422 naming the first field that is not valid.
    pub fn apply(
        self,
        stored: &DeliveryOptions,
        context: OptionsContext<'_>,
    ) -> Result<DeliveryOptions, ApiError> {
        let mut options = stored.clone();
        if let Some(ordering) = self.ordering {
            options.ordering = match ordering.as_deref() {
                None => Ordering::None,
                Some(name) => Ordering::parse(name)
                    .ok_or_else(|| ApiError::invalid("ordering", "must be \"none\" or \"key\""))?,
            };
        }
        if let Some(hold) = self.ordering_hold_max {
            options.ordering_hold_max_ms = hold.as_deref().map(parse_hold).transpose()?;
        }
        if let Some(max) = self.max_in_flight {
            if max.is_some_and(|n| !(1..=MAX_IN_FLIGHT_LIMIT).contains(&n)) {
                return Err(ApiError::invalid(
                    "max_in_flight",
                    format!("must be between 1 and {MAX_IN_FLIGHT_LIMIT}, or null"),
                ));
            }
            options.max_in_flight = max;
        }
        if let Some(rate) = self.rate_limit {
            if rate == Some(0) {
                return Err(ApiError::invalid(
                    "rate_limit",
                    "must be at least 1 request per second, or null for no limit",
                ));
            }
            options.rate_limit = rate;
        }
        if let Some(filter) = self.filter {
            options.filter = filter
                .map(|doc| Filter::parse(&doc).map_err(|e| ApiError::invalid("filter", e.0)))
                .transpose()?;
        }
        if let Some(headers) = self.headers {
            options.headers = validate_headers(headers.unwrap_or_default(), &stored.headers)?;
        }
        if let Some(auth) = self.auth {
            options.auth = auth.map(|auth| validate_auth(auth, context)).transpose()?;
        }
        if let Some(proxy) = self.proxy {
            options.proxy = match proxy.as_deref() {
                None => ProxyChoice::Default,
                Some("none") => ProxyChoice::None,
                Some(url) => {
                    crate::delivery::Proxy::parse(url)
                        .map_err(|message| ApiError::invalid("proxy", message))?;
                    ProxyChoice::Url(write_only("proxy", url.to_owned())?)
                }
            };
        }
        if let Some(cert) = self.client_certificate {
            options.client_certificate = cert.map(validate_client_certificate).transpose()?;
        }
        if let Some(schemes) = self.signature_scheme {
            // `null` is the default, HMAC only.
            let ed25519 = schemes
                .as_deref()
                .map(parse_schemes)
                .transpose()?
                .unwrap_or(false);
            options.ed25519_seed = match (ed25519, options.ed25519_seed.take()) {
                (true, Some(seed)) => Some(seed),
                (true, None) => Some(Secret(crate::ids::random_hex(32))),
                (false, _) => None,
            };
        }
        if options.auth.is_some() && options.headers.iter().any(|h| h.name == "authorization") {
            return Err(ApiError::invalid(
                "headers",
                "must not set authorization when auth is set: use one or the other",
            ));
        }
        Ok(options)
    }
}

fn parse_hold(text: &str) -> Result<u64, ApiError> {
    let bad = || ApiError::invalid("ordering_hold_max", "must be a duration like 30m or 2h");
    let hold = humantime::parse_duration(text.trim()).map_err(|_| bad())?;
    if hold.is_zero() || hold > MAX_ORDERING_HOLD {
        return Err(ApiError::invalid(
            "ordering_hold_max",
            "must be between 1s and 7d, or null to hold a key until its delivery ends",
        ));
    }
    Ok(u64::try_from(hold.as_millis()).unwrap_or(u64::MAX))
}

fn parse_schemes(names: &[String]) -> Result<bool, ApiError> {
    let bad = || {
        ApiError::invalid(
            "signature_scheme",
            "must be [\"hmac\"] or [\"hmac\", \"ed25519\"] (X-Palo-Signature is always HMAC)",
        )
    };
    if !names.iter().any(|n| n == "hmac") {
        return Err(bad());
    }
    let mut ed25519 = false;
    for name in names {
        match name.as_str() {
            "hmac" => {}
            "ed25519" => ed25519 = true,
            _ => return Err(bad()),
        }
    }
    Ok(ed25519)
}

fn write_only(field: &str, value: String) -> Result<Secret, ApiError> {
    if value.is_empty() || value.len() > MAX_CREDENTIAL_BYTES {
        return Err(ApiError::invalid(
            field,
            format!("must be between 1 and {MAX_CREDENTIAL_BYTES} bytes"),
        ));
    }
    if crate::store::sealed::is_sealed(&value) {
        return Err(ApiError::invalid(
            field,
            "must not start with \"pwenc1:\" (the store's mark of an encrypted value)",
        ));
    }
    Ok(Secret(value))
}

/// Longest PEM text accepted for a certificate chain or a key, bytes.
const MAX_PEM_BYTES: usize = 64 * 1024;

fn validate_client_certificate(
    input: ClientCertificateIn,
) -> Result<crate::model::ClientCertificate, ApiError> {
    let field = "client_certificate";
    if input.certificate.len() > MAX_PEM_BYTES || input.private_key.len() > MAX_PEM_BYTES {
        return Err(ApiError::invalid(
            field,
            "each PEM text must be at most 64 KiB",
        ));
    }
    let now_s = i64::try_from(crate::clock::now_ms() / 1000).unwrap_or(i64::MAX);
    crate::delivery::client_identity(&input.certificate, &input.private_key, Some(now_s))
        .map_err(|reason| ApiError::invalid(field, reason))?;
    Ok(crate::model::ClientCertificate {
        certificate_pem: input.certificate,
        private_key_pem: write_only("client_certificate.private_key", input.private_key)?,
    })
}

fn validate_auth(auth: AuthIn, context: OptionsContext<'_>) -> Result<ReceiverAuth, ApiError> {
    match auth {
        AuthIn::Basic { username, password } => {
            if username.is_empty()
                || username.contains(':')
                || username.len() > 256
                || username.chars().any(char::is_control)
            {
                return Err(ApiError::invalid(
                    "auth.username",
                    "must be 1 to 256 characters, without ':' or control characters",
                ));
            }
            if password.chars().any(char::is_control) {
                return Err(ApiError::invalid(
                    "auth.password",
                    "must not contain control characters",
                ));
            }
            Ok(ReceiverAuth::Basic {
                username,
                password: write_only("auth.password", password)?,
            })
        }
        AuthIn::Bearer { token } => {
            // RFC 6750 §2.1 b64token.
            if !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b))
            {
                return Err(ApiError::invalid(
                    "auth.token",
                    "must be a bearer token (letters, digits and -._~+/=)",
                ));
            }
            Ok(ReceiverAuth::Bearer {
                token: write_only("auth.token", token)?,
            })
        }
        AuthIn::Oauth2ClientCredentials {
            token_url,
            client_id,
            client_secret,
            scope,
            audience,
        } => {
            let token_url = super::webhooks::validate_url(&token_url, context.allow_http)
                .and_then(|url| {
                    super::webhooks::check_url_address(&url, context.policy)?;
                    Ok(url)
                })
                .map_err(|e| {
                    let message = e.message.strip_prefix("url: ").unwrap_or(&e.message);
                    ApiError::invalid("auth.token_url", message.to_owned())
                })?;
            let plain = |field: &str, value: Option<String>| match value {
                Some(v) if v.is_empty() || v.len() > 1024 || v.chars().any(char::is_control) => {
                    Err(ApiError::invalid(
                        field,
                        "must be 1 to 1024 characters, without control characters",
                    ))
                }
                other => Ok(other),
            };
            Ok(ReceiverAuth::OAuth2 {
                token_url,
                client_id: plain("auth.client_id", Some(client_id))?.unwrap_or_default(),
                client_secret: write_only("auth.client_secret", client_secret)?,
                scope: plain("auth.scope", scope)?,
                audience: plain("auth.audience", audience)?,
            })
        }
    }
}

fn validate_headers(
    headers: Vec<HeaderIn>,
    stored: &[CustomHeader],
) -> Result<Vec<CustomHeader>, ApiError> {
    if headers.len() > MAX_CUSTOM_HEADERS {
        return Err(ApiError::invalid(
            "headers",
            format!("must list at most {MAX_CUSTOM_HEADERS} headers"),
        ));
    }
    let mut out: Vec<CustomHeader> = Vec::with_capacity(headers.len());
    for header in headers {
        let name = hyper::header::HeaderName::from_bytes(header.name.as_bytes())
            .map_err(|_| {
                ApiError::invalid(
                    "headers",
                    format!(
                        "{:?} is not a valid header name (an HTTP token)",
                        header.name
                    ),
                )
            })?
            .as_str()
            .to_owned();
        if RESERVED_HEADERS.contains(&name.as_str())
            || name.starts_with("x-palo-")
            || name.starts_with("webhook-")
        {
            return Err(ApiError::invalid(
                "headers",
                format!(
                    "{name:?} is set by the daemon or the connection and cannot be changed \
                     (refused: X-Palo-*, webhook-*, {})",
                    RESERVED_HEADERS.join(", ")
                ),
            ));
        }
        if out.iter().any(|h| h.name == name) {
            return Err(ApiError::invalid(
                "headers",
                format!("{name:?} is listed twice"),
            ));
        }
        let value = match header.value {
            Some(value) => value,
            // A secret header sent back without its value keeps the stored one.
            None => match stored.iter().find(|h| h.name == name && h.secret) {
                Some(kept) if header.secret => kept.value.0.clone(),
                _ => {
                    return Err(ApiError::invalid(
                        "headers",
                        format!("{name:?} needs a value (only a stored secret header may omit it)"),
                    ))
                }
            },
        };
        if value.len() > MAX_HEADER_VALUE_BYTES
            || !value
                .bytes()
                .all(|b| b == b' ' || b == b'\t' || (0x21..=0x7e).contains(&b))
            || hyper::header::HeaderValue::from_str(&value).is_err()
            || value.starts_with([' ', '\t'])
            || value.ends_with([' ', '\t'])
        {
            return Err(ApiError::invalid(
                "headers",
                format!(
                    "the value of {name:?} must be visible ASCII (spaces inside only), at most \
                     {MAX_HEADER_VALUE_BYTES} bytes"
                ),
            ));
        }
        let value = if header.secret {
            write_only("headers", value)?
        } else {
            Secret(value)
        };
        out.push(CustomHeader {
            name,
            value,
            secret: header.secret,
        });
    }
    Ok(out)
}

/// The answer of `GET /api/webhooks/{id}/public-key`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PublicKeyOut {
    /// `whpk_` + base64 of the 32-byte Ed25519 public key (Standard Webhooks).
    pub public_key: String,
    /// `ed25519`.
    pub scheme: String,
}

/// A webhook's Ed25519 public key (v1a signatures).
///
/// `GET /api/webhooks/{id}/public-key` → the key that verifies the webhook's `v1a`
/// signatures.
///
/// # Errors
/// 404 for an unknown webhook; 409 `ed25519_not_enabled` when its `signature_scheme` does
/// not include `ed25519`.
#[utoipa::path(
    get,
    path = "/api/webhooks/{id}/public-key",
    tag = "webhooks",
    params(("id" = String, Path, description = "The webhook's id (`wh_...`).")),
    responses(
        (status = 200, description = "The Ed25519 key that verifies the webhook's `v1a` signatures", body = PublicKeyOut),
        (status = 404, description = "no such webhook visible to this token", body = crate::api::ErrorOut),
        (status = 409, description = "`ed25519_not_enabled`", body = crate::api::ErrorOut)
    )
)]
pub(super) async fn public_key(
    State(state): State<AppState>,
    caller: Caller,
    super::extract::ApiPath(id): super::extract::ApiPath,
) -> Result<Json<PublicKeyOut>, ApiError> {
    let webhook = super::webhooks::visible_webhook(&state, &caller, &id).await?;
    let seed = webhook
        .options
        .ed25519_seed
        .as_ref()
        .and_then(|s| crate::signature::ed25519_seed(&s.0))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "ed25519_not_enabled",
                "this webhook signs with HMAC only: set \"signature_scheme\": [\"hmac\", \"ed25519\"] first (CLI: webhooks update ID --signature-scheme hmac,ed25519)",
            )
        })?;
    Ok(Json(PublicKeyOut {
        public_key: crate::signature::ed25519_public_key(&seed),
        scheme: "ed25519".to_owned(),
    }))
}
