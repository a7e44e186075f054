//! How both backends keep a webhook's [`DeliveryOptions`] (issue 16): one JSON document per
//! webhook (the file store's record field, PostgreSQL's `webhooks.options` column), with
//! every credential sealed like the webhook secret when a secrets key is set. JSON, not
//! postcard, because the options grow: a field added later is read as its default from an
//! older document, with no new record layout.
//!
//! The default options are stored as the empty string, so webhooks that use none cost
//! nothing.

use serde::{Deserialize, Serialize};

use crate::filter::Filter;
use crate::ids::WebhookId;
use crate::model::{
    ClientCertificate, CustomHeader, DeliveryOptions, Ordering, ProxyChoice, ReceiverAuth, Secret,
};
use crate::store::sealed::{is_sealed, SecretsKey};
use crate::store::StoreError;

#[derive(Serialize, Deserialize, Default)]
struct OptionsDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ordering: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ordering_hold_max_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_in_flight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rate_limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    filter: Option<Box<serde_json::value::RawValue>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    headers: Vec<HeaderDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth: Option<AuthDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ed25519_seed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_certificate: Option<ClientCertificateDoc>,
    /// `"none"`, or the proxy URL (sealed with a key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    proxy: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct ClientCertificateDoc {
    certificate: String,
    private_key: String,
}

#[derive(Serialize, Deserialize)]
struct HeaderDoc {
    name: String,
    value: String,
    #[serde(default)]
    secret: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum AuthDoc {
    Basic {
        username: String,
        password: String,
    },
    Bearer {
        token: String,
    },
    #[serde(rename = "oauth2_client_credentials")]
    OAuth2 {
        token_url: String,
        client_id: String,
        client_secret: String,
        #[serde(default)]
        scope: Option<String>,
        #[serde(default)]
        audience: Option<String>,
    },
}

/// Only the filter, for fan-out (which reads no credential).
#[derive(Deserialize)]
struct FilterOnly {
    #[serde(default)]
    filter: Option<Box<serde_json::value::RawValue>>,
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt {
        table: "webhooks",
        reason: format!("options: {what}"),
    }
}

/// The stored text of `options`; with `key`, credentials are sealed for `webhook`.
pub(crate) fn encode(
    options: &DeliveryOptions,
    webhook: WebhookId,
    key: Option<&SecretsKey>,
) -> String {
    if *options == DeliveryOptions::default() {
        return String::new();
    }
    let stored = |secret: &Secret| match key {
        Some(key) => key.seal(webhook, secret),
        None => secret.0.clone(),
    };
    let doc = OptionsDoc {
        ordering: (options.ordering != Ordering::None).then(|| options.ordering.as_str().into()),
        ordering_hold_max_ms: options.ordering_hold_max_ms,
        max_in_flight: options.max_in_flight,
        rate_limit: options.rate_limit,
        filter: options.filter.as_ref().map(|f| {
            serde_json::value::RawValue::from_string(f.source().to_owned())
                .expect("a filter's source is JSON")
        }),
        headers: options
            .headers
            .iter()
            .map(|h| HeaderDoc {
                name: h.name.clone(),
                value: if h.secret {
                    stored(&h.value)
                } else {
                    h.value.0.clone()
                },
                secret: h.secret,
            })
            .collect(),
        auth: options.auth.as_ref().map(|auth| match auth {
            ReceiverAuth::Basic { username, password } => AuthDoc::Basic {
                username: username.clone(),
                password: stored(password),
            },
            ReceiverAuth::Bearer { token } => AuthDoc::Bearer {
                token: stored(token),
            },
            ReceiverAuth::OAuth2 {
                token_url,
                client_id,
                client_secret,
                scope,
                audience,
            } => AuthDoc::OAuth2 {
                token_url: token_url.clone(),
                client_id: client_id.clone(),
                client_secret: stored(client_secret),
                scope: scope.clone(),
                audience: audience.clone(),
            },
        }),
        ed25519_seed: options.ed25519_seed.as_ref().map(stored),
        client_certificate: options
            .client_certificate
            .as_ref()
            .map(|c| ClientCertificateDoc {
                certificate: c.certificate_pem.clone(),
                private_key: stored(&c.private_key_pem),
            }),
        proxy: match &options.proxy {
            ProxyChoice::Default => None,
            ProxyChoice::None => Some("none".to_owned()),
            ProxyChoice::Url(url) => Some(stored(url)),
        },
    };
    serde_json::to_string(&doc).expect("options serialize")
}

/// The options stored as `text` for `webhook`. With `key`, sealed credentials are opened;
/// without, they stay as stored (for callers that send nothing: fan-out, the checker,
/// `migrate`).
///
/// # Errors
/// [`StoreError::Corrupt`] when the text does not parse; [`StoreError::Sealed`] when a
/// credential does not open with `key`.
pub(crate) fn decode(
    text: &str,
    webhook: WebhookId,
    key: Option<&SecretsKey>,
) -> Result<DeliveryOptions, StoreError> {
    if text.is_empty() {
        return Ok(DeliveryOptions::default());
    }
    let doc: OptionsDoc = serde_json::from_str(text).map_err(|e| corrupt(&e.to_string()))?;
    let open = |stored: String| -> Result<Secret, StoreError> {
        match key {
            Some(key) if is_sealed(&stored) => Ok(key.open(webhook, &stored)?),
            _ => Ok(Secret(stored)),
        }
    };
    Ok(DeliveryOptions {
        ordering: match doc.ordering.as_deref() {
            None => Ordering::None,
            Some(name) => Ordering::parse(name).ok_or_else(|| corrupt("ordering"))?,
        },
        ordering_hold_max_ms: doc.ordering_hold_max_ms,
        max_in_flight: doc.max_in_flight,
        rate_limit: doc.rate_limit,
        filter: parse_filter(doc.filter)?,
        headers: doc
            .headers
            .into_iter()
            .map(|h| {
                Ok::<_, StoreError>(CustomHeader {
                    value: if h.secret {
                        open(h.value)?
                    } else {
                        Secret(h.value)
                    },
                    name: h.name,
                    secret: h.secret,
                })
            })
            .collect::<Result<_, _>>()?,
        auth: doc
            .auth
            .map(|auth| {
                Ok::<_, StoreError>(match auth {
                    AuthDoc::Basic { username, password } => ReceiverAuth::Basic {
                        username,
                        password: open(password)?,
                    },
                    AuthDoc::Bearer { token } => ReceiverAuth::Bearer {
                        token: open(token)?,
                    },
                    AuthDoc::OAuth2 {
                        token_url,
                        client_id,
                        client_secret,
                        scope,
                        audience,
                    } => ReceiverAuth::OAuth2 {
                        token_url,
                        client_id,
                        client_secret: open(client_secret)?,
                        scope,
                        audience,
                    },
                })
            })
            .transpose()?,
        ed25519_seed: doc.ed25519_seed.map(open).transpose()?,
        client_certificate: doc
            .client_certificate
            .map(|c| {
                Ok::<_, StoreError>(ClientCertificate {
                    certificate_pem: c.certificate,
                    private_key_pem: open(c.private_key)?,
                })
            })
            .transpose()?,
        proxy: match doc.proxy {
            None => ProxyChoice::Default,
            Some(none) if none == "none" => ProxyChoice::None,
            Some(url) => ProxyChoice::Url(open(url)?),
        },
    })
}

/// Only the filter of the options stored as `text` (fan-out's read).
///
/// # Errors
/// [`StoreError::Corrupt`] when the text or the filter does not parse.
pub(crate) fn decode_filter(text: &str) -> Result<Option<Filter>, StoreError> {
    if text.is_empty() {
        return Ok(None);
    }
    let doc: FilterOnly = serde_json::from_str(text).map_err(|e| corrupt(&e.to_string()))?;
    parse_filter(doc.filter)
}

/// Webhooks whose parsed filter is kept for fan-out on PostgreSQL, which reads each
/// webhook's options text per event: a filter is parsed again only when its text changed.
const FILTER_CACHE: usize = 32_768;

/// [`decode_filter`], through a cache keyed by webhook and the stored text.
///
/// # Errors
/// As [`decode_filter`].
pub(crate) fn cached_filter(
    webhook: WebhookId,
    text: &str,
) -> Result<Option<std::sync::Arc<Filter>>, StoreError> {
    type Cache = lru::LruCache<WebhookId, (String, Option<std::sync::Arc<Filter>>)>;
    static CACHE: std::sync::OnceLock<std::sync::Mutex<Cache>> = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(|| {
        std::sync::Mutex::new(lru::LruCache::new(
            std::num::NonZeroUsize::new(FILTER_CACHE).expect("non-zero"),
        ))
    });
    let lock = || cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((made_from, filter)) = lock().get(&webhook) {
        if made_from == text {
            return Ok(filter.clone());
        }
    }
    let filter = decode_filter(text)?.map(std::sync::Arc::new);
    lock().put(webhook, (text.to_owned(), filter.clone()));
    Ok(filter)
}

fn parse_filter(
    raw: Option<Box<serde_json::value::RawValue>>,
) -> Result<Option<Filter>, StoreError> {
    raw.map(|raw| Filter::from_source(raw.get()).map_err(|e| corrupt(&e.0)))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> DeliveryOptions {
        DeliveryOptions {
            ordering: Ordering::Key,
            ordering_hold_max_ms: Some(60_000),
            max_in_flight: Some(3),
            rate_limit: Some(20),
            filter: Some(
                Filter::parse(&serde_json::json!({"data.priority": {"$in": ["p1"]}})).unwrap(),
            ),
            headers: vec![
                CustomHeader {
                    name: "x-tenant".into(),
                    value: Secret("acme".into()),
                    secret: false,
                },
                CustomHeader {
                    name: "x-api-key".into(),
                    value: Secret("k-123".into()),
                    secret: true,
                },
            ],
            auth: Some(ReceiverAuth::Basic {
                username: "u".into(),
                password: Secret("p4ss".into()),
            }),
            ed25519_seed: Some(Secret("00".repeat(32))),
            client_certificate: Some(ClientCertificate {
                certificate_pem: "-----BEGIN CERTIFICATE-----".into(),
                private_key_pem: Secret("-----BEGIN PRIVATE KEY-----k3y".into()),
            }),
            proxy: ProxyChoice::Url(Secret("http://u:pr0xy@proxy:3128".into())),
        }
    }

    #[test]
    fn default_options_are_stored_as_nothing() {
        let id = WebhookId(7);
        assert_eq!(encode(&DeliveryOptions::default(), id, None), "");
        assert_eq!(decode("", id, None).unwrap(), DeliveryOptions::default());
    }

    #[test]
    fn options_round_trip_and_credentials_are_sealed_with_a_key() {
        let id = WebhookId(7);
        let options = full();
        assert_eq!(
            decode(&encode(&options, id, None), id, None).unwrap(),
            options
        );
        let key = SecretsKey::from_bytes(&[9; 32]);
        let sealed = encode(&options, id, Some(&key));
        for credential in ["k-123", "p4ss", &"00".repeat(32), "k3y", "pr0xy"] {
            assert!(!sealed.contains(credential), "{credential} in {sealed}");
        }
        assert!(
            sealed.contains("acme"),
            "public header values stay readable"
        );
        assert_eq!(decode(&sealed, id, Some(&key)).unwrap(), options);
        // Without the key, credentials stay sealed; another webhook's id does not open them.
        let as_stored = decode(&sealed, id, None).unwrap();
        assert!(as_stored.credentials().iter().all(|s| is_sealed(&s.0)));
        assert!(decode(&sealed, WebhookId(8), Some(&key)).is_err());
        assert_eq!(decode_filter(&sealed).unwrap(), options.filter);
    }
}
