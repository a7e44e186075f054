//! Connecting: the resolver and the connector that apply the outbound address policy to
//! every address (resolved names and IP literals alike) before connecting, and the pooled
//! hyper client built on them.

use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Uri;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::proxy::{Conn, ProxyRoute};
use super::tls::{tls_config, TlsSettings};
use crate::address::{self, PolicyCell};

/// A resolver failure. Found in an error's source chain to classify the attempt as `dns`
/// rather than `connect`; its text says which kind, so an operator can tell a dead host
/// name from a resolver outage (issue 16, item 8).
#[derive(Debug, thiserror::Error)]
pub enum DnsFailure {
    /// The name does not exist, or has no address (NXDOMAIN, NODATA).
    #[error("the host name does not exist (or has no address)")]
    NoSuchName,
    /// The resolver could not answer now (`EAI_AGAIN`: no server reachable, SERVFAIL).
    #[error("the DNS resolver failed temporarily (no answer from its servers)")]
    ResolverUnavailable,
    /// The resolver did not answer within [`DNS_TIMEOUT`].
    #[error("the DNS resolver did not answer within 5s")]
    ResolverTimeout,
    /// Another resolver error, with the system's words.
    #[error("the DNS resolver failed: {0}")]
    Other(String),
}

/// How long a name may take to resolve.
pub const DNS_TIMEOUT: Duration = Duration::from_secs(5);

impl DnsFailure {
    /// The kind of a `getaddrinfo` failure. The system reports it only as text (glibc's
    /// `gai_strerror`), so these are the glibc and musl wordings of `EAI_NONAME`,
    /// `EAI_NODATA` and `EAI_AGAIN`.
    fn of(error: &std::io::Error) -> DnsFailure {
        let text = error.to_string();
        let has = |s: &str| text.contains(s);
        if has("Name or service not known")
            || has("No address associated with hostname")
            || has("Name does not resolve")
            || has("nodename nor servname")
        {
            DnsFailure::NoSuchName
        } else if has("Temporary failure in name resolution") || has("Try again") {
            DnsFailure::ResolverUnavailable
        } else {
            DnsFailure::Other(text.chars().take(200).collect())
        }
    }
}

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
            let addrs: Vec<SocketAddr> =
                tokio::time::timeout(DNS_TIMEOUT, tokio::net::lookup_host((name.as_str(), 0)))
                    .await
                    .map_err(|_| Box::new(DnsFailure::ResolverTimeout) as BoxError)?
                    .map_err(|e| Box::new(DnsFailure::of(&e)) as BoxError)?
                    .collect();
            if addrs.is_empty() {
                return Err(Box::new(DnsFailure::NoSuchName) as BoxError);
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
    /// Connections to hosts it applies to go through this proxy's tunnel (issue 16).
    proxy: Option<Arc<ProxyRoute>>,
    /// The TLS configuration toward an `https://` proxy (the delivery roots).
    proxy_tls: Arc<rustls::ClientConfig>,
    connect_timeout: Duration,
}

impl tower::Service<Uri> for GuardedConnector {
    type Response = hyper_util::rt::TokioIo<Conn>;
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
        if let Some(route) = self
            .proxy
            .clone()
            .filter(|route| uri.host().is_some_and(|host| route.applies_to(host)))
        {
            let resolver = Resolver {
                policy: self.policy.clone(),
            };
            let tls = Arc::clone(&self.proxy_tls);
            return Box::pin(through_proxy(
                route,
                resolver,
                uri,
                self.connect_timeout,
                tls,
            ));
        }
        let connecting = tower::Service::<Uri>::call(&mut self.inner, uri);
        Box::pin(async move {
            let io = connecting.await.map_err(Into::<BoxError>::into)?;
            Ok(hyper_util::rt::TokioIo::new(Conn::Plain(io.into_inner())))
        })
    }
}

/// Connects to `uri` through the proxy of `route`: the host is resolved and checked here
/// (an IP literal was checked by the caller), and the proxy is asked for the first
/// permitted address.
async fn through_proxy(
    route: Arc<ProxyRoute>,
    mut resolver: Resolver,
    uri: Uri,
    connect_timeout: Duration,
    tls: Arc<rustls::ClientConfig>,
) -> Result<hyper_util::rt::TokioIo<Conn>, BoxError> {
    let host = uri.host().unwrap_or_default();
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    let ip = match address::literal(host) {
        Some(ip) => ip,
        None => {
            let name: Name = host
                .parse()
                .map_err(|_| Box::new(DnsFailure::NoSuchName) as BoxError)?;
            let mut addrs = tower::Service::<Name>::call(&mut resolver, name).await?;
            addrs
                .next()
                .ok_or_else(|| Box::new(DnsFailure::NoSuchName) as BoxError)?
                .ip()
        }
    };
    let stream = route
        .proxy
        .tunnel(SocketAddr::new(ip, port), connect_timeout, &tls)
        .await?;
    Ok(hyper_util::rt::TokioIo::new(stream))
}

/// The pooled HTTP(S) client type used for deliveries and by the CLI.
pub type HttpsClient = Client<HttpsConnector<GuardedConnector>, Full<Bytes>>;

/// Builds a pooled client without an address policy (the CLI, tests and benchmarks talk to
/// the local daemon): system resolver, TCP connect bounded by `connect_timeout`, rustls (ring
/// provider, webpki roots) offering h2 and http/1.1, keep-alive per origin.
pub fn build_client(connect_timeout: Duration) -> HttpsClient {
    let tls = tls_config(&TlsSettings::default()).expect("the webpki roots alone always load");
    build(
        connect_timeout,
        None,
        tls,
        Pooling::Idle(Duration::from_secs(60)),
        None,
    )
}

/// How the delivery client keeps connections between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Keep-alive: an idle connection is kept this long (and at most 32 per origin), then
    /// closed. Shorter than receivers' own keep-alive timeouts (Node: 5 s), so we close
    /// first rather than reuse one the receiver is closing.
    Idle(Duration),
    /// No idle connection is kept: every request opens its own (the resend after a stale
    /// pooled connection).
    Fresh,
}

/// Builds the delivery client: as [`build_client`] with the roots of `tls` and the given
/// `pooling`, and every connection is checked against `policy` (resolved addresses and IP
/// literals alike) before it is made; with `proxy`, through its tunnel (issue 16).
pub fn build_delivery_client(
    connect_timeout: Duration,
    policy: Arc<PolicyCell>,
    tls: rustls::ClientConfig,
    pooling: Pooling,
    proxy: Option<Arc<ProxyRoute>>,
) -> HttpsClient {
    build(connect_timeout, Some(policy), tls, pooling, proxy)
}

fn build(
    connect_timeout: Duration,
    policy: Option<Arc<PolicyCell>>,
    tls: rustls::ClientConfig,
    pooling: Pooling,
    proxy: Option<Arc<ProxyRoute>>,
) -> HttpsClient {
    let mut http = HttpConnector::new_with_resolver(Resolver {
        policy: policy.clone(),
    });
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let proxy_tls = Arc::new(tls.clone());
    // Both protocols are offered by ALPN, so an h2-only receiver works.
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(GuardedConnector {
            inner: http,
            policy,
            proxy,
            proxy_tls,
            connect_timeout,
        });
    let (idle, max_idle) = match pooling {
        Pooling::Idle(idle) => (idle, 32),
        Pooling::Fresh => (Duration::ZERO, 0),
    };
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(idle)
        .pool_max_idle_per_host(max_idle)
        .build(https)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolver_errors_say_their_kind() {
        let gai = |text: &str| {
            DnsFailure::of(&std::io::Error::other(format!(
                "failed to lookup address information: {text}"
            )))
        };
        assert!(matches!(
            gai("Name or service not known"),
            DnsFailure::NoSuchName
        ));
        assert!(matches!(
            gai("No address associated with hostname"),
            DnsFailure::NoSuchName
        ));
        assert!(matches!(
            gai("Temporary failure in name resolution"),
            DnsFailure::ResolverUnavailable
        ));
        assert!(matches!(gai("System error"), DnsFailure::Other(_)));
        assert!(DnsFailure::NoSuchName
            .to_string()
            .contains("does not exist"));
    }

    #[tokio::test]
    async fn a_name_under_invalid_does_not_exist() {
        // RFC 6761: `.invalid` never resolves. Without a reachable resolver the answer is
        // "temporarily failed", which is the other kind an operator must tell apart.
        let mut resolver = Resolver::default();
        let name: Name = "no-such-host.invalid".parse().unwrap();
        let err = tower::Service::<Name>::call(&mut resolver, name)
            .await
            .unwrap_err();
        let kind = err.downcast_ref::<DnsFailure>().expect("a DnsFailure");
        assert!(
            matches!(
                kind,
                DnsFailure::NoSuchName | DnsFailure::ResolverUnavailable
            ),
            "{kind:?}"
        );
    }
}
