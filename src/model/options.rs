//! A webhook's delivery options (issue 16): what a receiver asks of the sender beyond a URL
//! and a secret. Plain data like the rest of `model`: the API validates and converts its
//! JSON to these, the store seals the credentials among them ([`DeliveryOptions::credentials`])
//! and keeps them as one versioned document, the delivery engine and the scheduler read them.

use crate::filter::Filter;
use crate::model::Secret;

/// Everything a webhook can change about how its deliveries are sent. `Default` is what a
/// webhook created before issue 16 has: no ordering, the global limits, no filter, no extra
/// headers, no receiver authentication, the daemon's proxy, HMAC signatures only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryOptions {
    /// Whether deliveries of one ordering key go one at a time, in ingest order.
    pub ordering: Ordering,
    /// With [`Ordering::Key`]: how long, ms, an unfinished delivery may hold its key before
    /// the next one goes anyway; `None` holds until it ends.
    pub ordering_hold_max_ms: Option<u64>,
    /// Requests open at once to this webhook, 1..=[`MAX_IN_FLIGHT_LIMIT`]; `None` is the
    /// daemon's per-webhook value (`--max-in-flight-per-webhook`).
    pub max_in_flight: Option<u32>,
    /// Requests started per second (token bucket, bursts up to as many); `None` for none.
    pub rate_limit: Option<u32>,
    /// A condition on the envelope an event must meet to fan out to this webhook.
    pub filter: Option<Filter>,
    /// Extra request headers, in order; at most [`MAX_CUSTOM_HEADERS`].
    pub headers: Vec<CustomHeader>,
    /// How the request authenticates to the receiver.
    pub auth: Option<ReceiverAuth>,
    /// The certificate presented when the receiver asks for one (mutual TLS).
    pub client_certificate: Option<ClientCertificate>,
    /// Which outbound proxy its deliveries use.
    pub proxy: ProxyChoice,
    /// The Ed25519 signing key's 32-byte seed as 64 hex characters, when the webhook also
    /// signs with Standard Webhooks `v1a`; `None` for HMAC only.
    pub ed25519_seed: Option<Secret>,
}

/// Most requests a webhook may set open at once.
pub const MAX_IN_FLIGHT_LIMIT: u32 = 64;

/// Most custom headers on one webhook.
pub const MAX_CUSTOM_HEADERS: usize = 20;

/// Delivery order within a webhook.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Ordering {
    /// Deliveries go as soon as they are due and a slot is free (the default).
    #[default]
    None,
    /// A delivery waits while an earlier one of the same webhook and ordering key is
    /// unfinished.
    Key,
}

impl Ordering {
    /// The API name: `none` or `key`.
    pub fn as_str(self) -> &'static str {
        match self {
            Ordering::None => "none",
            Ordering::Key => "key",
        }
    }

    /// Parses an API name.
    pub fn parse(name: &str) -> Option<Ordering> {
        match name {
            "none" => Some(Ordering::None),
            "key" => Some(Ordering::Key),
            _ => None,
        }
    }
}

/// One extra request header. A secret one is sealed at rest like a webhook secret and never
/// shown again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomHeader {
    /// An HTTP token (RFC 9110 §5.1), lowercased.
    pub name: String,
    /// A valid header value (visible ASCII, spaces and tabs inside).
    pub value: Secret,
    /// Write-only: the API answers `"secret": true` without the value.
    pub secret: bool,
}

/// A webhook's outbound proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ProxyChoice {
    /// The daemon's `--proxy` (with its `--no-proxy` list), if any.
    #[default]
    Default,
    /// Direct, even when the daemon has a proxy.
    None,
    /// This `http://[user:password@]host:port` proxy, for every host. Sealed at rest (it
    /// may hold a password); the API shows only its origin.
    Url(Secret),
}

/// A client certificate for mutual TLS: checked when saved (the key belongs to the first
/// certificate, which is valid then).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    /// PEM certificate chain, end-entity first. Shown only as its subject and expiry.
    pub certificate_pem: String,
    /// PEM private key. Write-only.
    pub private_key_pem: Secret,
}

/// How a request proves itself to the receiver. Every credential is write-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiverAuth {
    /// `Authorization: Basic base64(username:password)` (RFC 7617).
    Basic {
        /// Shown by the API.
        username: String,
        /// Write-only.
        password: Secret,
    },
    /// `Authorization: Bearer <token>` (RFC 6750).
    Bearer {
        /// Write-only.
        token: Secret,
    },
    /// `Authorization: Bearer <access token>` fetched from `token_url` with the client
    /// credentials grant (RFC 6749 §4.4), kept until shortly before it expires.
    OAuth2 {
        /// The token endpoint, an absolute http(s) URL.
        token_url: String,
        /// Shown by the API.
        client_id: String,
        /// Write-only.
        client_secret: Secret,
        /// `scope` of the token request.
        scope: Option<String>,
        /// `audience` of the token request.
        audience: Option<String>,
    },
}

impl ReceiverAuth {
    /// The API name of its type: `basic`, `bearer` or `oauth2_client_credentials`.
    pub fn kind(&self) -> &'static str {
        match self {
            ReceiverAuth::Basic { .. } => "basic",
            ReceiverAuth::Bearer { .. } => "bearer",
            ReceiverAuth::OAuth2 { .. } => "oauth2_client_credentials",
        }
    }

    /// Its write-only credential.
    pub fn credential(&self) -> &Secret {
        match self {
            ReceiverAuth::Basic { password, .. } => password,
            ReceiverAuth::Bearer { token } => token,
            ReceiverAuth::OAuth2 { client_secret, .. } => client_secret,
        }
    }

    fn credential_mut(&mut self) -> &mut Secret {
        match self {
            ReceiverAuth::Basic { password, .. } => password,
            ReceiverAuth::Bearer { token } => token,
            ReceiverAuth::OAuth2 { client_secret, .. } => client_secret,
        }
    }
}

impl DeliveryOptions {
    /// Every credential it holds, to seal and open at rest: secret header values, the
    /// receiver's password or token, the Ed25519 seed. Public header values are not sealed.
    pub fn credentials_mut(&mut self) -> Vec<&mut Secret> {
        let mut all: Vec<&mut Secret> = self
            .headers
            .iter_mut()
            .filter(|h| h.secret)
            .map(|h| &mut h.value)
            .collect();
        if let Some(auth) = &mut self.auth {
            all.push(auth.credential_mut());
        }
        if let Some(cert) = &mut self.client_certificate {
            all.push(&mut cert.private_key_pem);
        }
        if let ProxyChoice::Url(url) = &mut self.proxy {
            all.push(url);
        }
        if let Some(seed) = &mut self.ed25519_seed {
            all.push(seed);
        }
        all
    }

    /// As [`DeliveryOptions::credentials_mut`], read-only.
    pub fn credentials(&self) -> Vec<&Secret> {
        let mut all: Vec<&Secret> = self
            .headers
            .iter()
            .filter(|h| h.secret)
            .map(|h| &h.value)
            .collect();
        if let Some(auth) = &self.auth {
            all.push(auth.credential());
        }
        if let Some(cert) = &self.client_certificate {
            all.push(&cert.private_key_pem);
        }
        if let ProxyChoice::Url(url) = &self.proxy {
            all.push(url);
        }
        if let Some(seed) = &self.ed25519_seed {
            all.push(seed);
        }
        all
    }
}
