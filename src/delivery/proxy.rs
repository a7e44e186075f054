//! The outbound proxy (issue 16): `--proxy http://host:port` or `https://host:port` (with
//! `--no-proxy` hosts that go direct) and a webhook's own `proxy` (`"none"` or a URL).
//! Deliveries go through an HTTP `CONNECT` tunnel (RFC 9110 §9.3.6), for http and https
//! receivers alike; to an `https://` proxy, the CONNECT itself goes over TLS (verified with
//! the delivery roots), and an https receiver's TLS runs inside that.
//!
//! The address policy still holds: the daemon resolves the receiver's host itself, checks
//! every address against the policy, and asks the proxy for the checked address
//! (`CONNECT 203.0.113.7:443`), never for the name, so a proxy cannot be used to reach a
//! private range. TLS to an https receiver runs inside the tunnel with the receiver's name
//! (SNI and certificate checks as without a proxy). The proxy's own address is the
//! operator's choice and is not checked.

use std::net::SocketAddr;
use std::time::Duration;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// A proxy failed or refused the tunnel: found in an error's source chain, the attempt is
/// a `connect` error with this reason.
#[derive(Debug, thiserror::Error)]
#[error("proxy {origin}: {reason}")]
pub struct ProxyFailure {
    /// `http://host:port` of the proxy (never its credentials).
    pub origin: String,
    /// What went wrong.
    pub reason: String,
}

/// An HTTP proxy that tunnels with `CONNECT`.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    /// Whether the connection to the proxy is TLS (`https://`).
    tls: bool,
    host: String,
    port: u16,
    /// `Proxy-Authorization: Basic ...` from the URL's user:password, when given.
    authorization: Option<String>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Proxy({})", self.origin())
    }
}

/// Largest CONNECT answer head read, bytes.
const MAX_CONNECT_HEAD_BYTES: usize = 8 * 1024;

impl Proxy {
    /// Parses `http://[user:password@]host:port` or `https://...`.
    ///
    /// # Errors
    /// A sentence for the operator or the API: not a URL, another scheme, a path, or no
    /// host.
    pub fn parse(text: &str) -> Result<Proxy, String> {
        let url = url::Url::parse(text.trim())
            .map_err(|_| "must be a URL like http://proxy.internal:3128".to_owned())?;
        let tls = match url.scheme() {
            "http" => false,
            "https" => true,
            _ => {
                return Err(
                    "must be an http:// or https:// URL like http://proxy.internal:3128".to_owned(),
                )
            }
        };
        if !matches!(url.path(), "" | "/") || url.query().is_some() {
            return Err("must name only a host and port, like http://proxy.internal:3128".into());
        }
        let host = match url.host() {
            Some(url::Host::Domain(d)) if !d.is_empty() => d.to_owned(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            _ => return Err("must name a host".to_owned()),
        };
        let authorization = (!url.username().is_empty()).then(|| {
            let decode = |s: &str| percent_decode(s);
            let pair = format!(
                "{}:{}",
                decode(url.username()),
                decode(url.password().unwrap_or(""))
            );
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        });
        Ok(Proxy {
            tls,
            host,
            port: url.port().unwrap_or(if tls { 443 } else { 80 }),
            authorization,
        })
    }

    /// `http://host:port` (or `https://`), without credentials: what logs and errors may
    /// show.
    pub fn origin(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }

    fn fail(&self, reason: impl Into<String>) -> ProxyFailure {
        ProxyFailure {
            origin: self.origin(),
            reason: reason.into(),
        }
    }

    /// Opens a tunnel to `target` (an address the policy permitted) through the proxy,
    /// within `connect_timeout` for the connection, the TLS handshake with an `https://`
    /// proxy (`tls`: the delivery roots) and the proxy's answer together.
    ///
    /// # Errors
    /// [`ProxyFailure`]: the proxy could not be reached, its certificate was refused, or it
    /// answered other than 2xx.
    pub async fn tunnel(
        &self,
        target: SocketAddr,
        connect_timeout: Duration,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Result<Conn, ProxyFailure> {
        tokio::time::timeout(connect_timeout, self.open(target, tls))
            .await
            .map_err(|_| self.fail("no tunnel within the connect timeout"))?
    }

    async fn open(
        &self,
        target: SocketAddr,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Result<Conn, ProxyFailure> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| self.fail(format!("cannot connect: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let mut stream = if self.tls {
            let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                .map_err(|_| self.fail("its host is not a valid TLS server name"))?;
            // The CONNECT is HTTP/1.1: no ALPN toward the proxy.
            let mut config = (**tls).clone();
            config.alpn_protocols.clear();
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| self.fail(format!("TLS with the proxy failed: {e}")))?;
            Conn::Tls(Box::new(tls))
        } else {
            Conn::Plain(tcp)
        };
        let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(authorization) = &self.authorization {
            head.push_str(&format!("Proxy-Authorization: {authorization}\r\n"));
        }
        head.push_str("\r\n");
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| self.fail(format!("cannot send CONNECT: {e}")))?;
        // Read the answer head byte by byte: nothing after its blank line may be consumed
        // (it belongs to the tunnel).
        let mut answer = Vec::with_capacity(128);
        while !answer.ends_with(b"\r\n\r\n") {
            if answer.len() >= MAX_CONNECT_HEAD_BYTES {
                return Err(self.fail("its CONNECT answer is too long"));
            }
            let byte = stream
                .read_u8()
                .await
                .map_err(|_| self.fail("closed the connection before answering CONNECT"))?;
            answer.push(byte);
        }
        let status_line = String::from_utf8_lossy(&answer);
        let status_line = status_line.lines().next().unwrap_or_default();
        let code = status_line.split_whitespace().nth(1).unwrap_or_default();
        if !code.starts_with('2') || code.len() != 3 {
            return Err(self.fail(format!(
                "refused the tunnel to {target}: {}",
                status_line.chars().take(100).collect::<String>()
            )));
        }
        Ok(stream)
    }
}

/// A delivery connection: plain TCP (direct, or a tunnel through an `http://` proxy), or a
/// TLS connection to an `https://` proxy with the tunnel inside it.
#[derive(Debug)]
pub enum Conn {
    /// TCP.
    Plain(TcpStream),
    /// TLS to the proxy.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    // Vectored writes let hyper send a body from its shared bytes: without them hyper
    // flattens every request into a buffer of its own, one copy of the body per connection
    // (a 900 KB event to 2,000 webhooks took the RSS up by 390 MB; tests/engine.rs).
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl hyper_util::client::legacy::connect::Connection for Conn {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        match self {
            Conn::Plain(s) => s.connected(),
            Conn::Tls(s) => s.get_ref().0.connected(),
        }
    }
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Where a connection goes: through `proxy` unless the host is in `no_proxy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyRoute {
    /// The proxy.
    pub proxy: Proxy,
    /// Hosts that go direct: `*` for all, a name (its subdomains too: `example.com` and
    /// `.example.com` both take `api.example.com`), or an IP address.
    pub no_proxy: Vec<String>,
}

impl ProxyRoute {
    /// Whether a connection to `host` goes through the proxy.
    pub fn applies_to(&self, host: &str) -> bool {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        !self.no_proxy.iter().any(|entry| {
            let entry = entry.trim().trim_start_matches('.').to_ascii_lowercase();
            entry == "*"
                || host == entry
                || host
                    .strip_suffix(&entry)
                    .is_some_and(|rest| rest.ends_with('.'))
        })
    }
}

/// Parses a `--no-proxy` list: comma-separated hosts, names or `*`.
pub fn parse_no_proxy(list: &[String]) -> Vec<String> {
    list.iter()
        .flat_map(|item| item.split(','))
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls_parse_and_never_show_their_credentials() {
        let p = Proxy::parse("http://user:p%40ss@proxy.internal:3128").unwrap();
        assert_eq!(p.origin(), "http://proxy.internal:3128");
        assert_eq!(format!("{p:?}"), "Proxy(http://proxy.internal:3128)");
        let expected = base64::engine::general_purpose::STANDARD.encode("user:p@ss");
        assert_eq!(
            p.authorization.as_deref(),
            Some(&*format!("Basic {expected}"))
        );
        assert_eq!(
            Proxy::parse("http://[::1]:8080").unwrap().origin(),
            "http://[::1]:8080"
        );
        let tls = Proxy::parse("https://proxy.internal").unwrap();
        assert_eq!(tls.origin(), "https://proxy.internal:443");
        assert!(Proxy::parse("socks5://proxy:1080").is_err());
        assert!(Proxy::parse("http://proxy:3128/path").is_err());
        assert!(Proxy::parse("proxy:3128").is_err());
    }

    #[test]
    fn no_proxy_takes_names_their_subdomains_addresses_and_star() {
        let route = |list: &[&str]| ProxyRoute {
            proxy: Proxy::parse("http://p:1").unwrap(),
            no_proxy: list.iter().map(|s| (*s).to_owned()).collect(),
        };
        let r = route(&["example.com", ".internal", "10.0.0.5", "::1"]);
        assert!(!r.applies_to("example.com"));
        assert!(!r.applies_to("API.example.com"));
        assert!(r.applies_to("notexample.com"));
        assert!(!r.applies_to("svc.internal"));
        assert!(!r.applies_to("10.0.0.5"));
        assert!(!r.applies_to("[::1]"));
        assert!(r.applies_to("10.0.0.6"));
        assert!(!route(&["*"]).applies_to("anything"));
        assert_eq!(
            parse_no_proxy(&["a.com, b.com".into(), "c".into()]),
            vec!["a.com", "b.com", "c"]
        );
    }
}
