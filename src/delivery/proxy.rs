//! The outbound proxy (issue 16): `--proxy http://host:port` (with `--no-proxy` hosts that go
//! direct) and a webhook's own `proxy` (`"none"` or a URL). Deliveries go through an HTTP
//! `CONNECT` tunnel (RFC 9110 §9.3.6), for http and https receivers alike.
//!
//! The address policy still holds: the daemon resolves the receiver's host itself, checks
//! every address against the policy, and asks the proxy for the checked address
//! (`CONNECT 203.0.113.7:443`), never for the name, so a proxy cannot be used to reach a
//! private range. TLS to an https receiver runs inside the tunnel with the receiver's name
//! (SNI and certificate checks as without a proxy). The proxy's own address is the
//! operator's choice and is not checked.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    /// Parses `http://[user:password@]host:port`.
    ///
    /// # Errors
    /// A sentence for the operator or the API: not a URL, another scheme (an `https://`
    /// proxy is not supported: the tunnel to the proxy itself is plain HTTP), a path, or no
    /// host.
    pub fn parse(text: &str) -> Result<Proxy, String> {
        let url = url::Url::parse(text.trim())
            .map_err(|_| "must be a URL like http://proxy.internal:3128".to_owned())?;
        match url.scheme() {
            "http" => {}
            "https" => {
                return Err(
                    "must be an http:// proxy (deliveries to https receivers stay encrypted \
                     end to end inside its CONNECT tunnel); https:// proxies are not supported"
                        .to_owned(),
                )
            }
            _ => return Err("must be an http:// URL like http://proxy.internal:3128".to_owned()),
        }
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
            host,
            port: url.port().unwrap_or(80),
            authorization,
        })
    }

    /// `http://host:port`, without credentials: what logs and errors may show.
    pub fn origin(&self) -> String {
        if self.host.contains(':') {
            format!("http://[{}]:{}", self.host, self.port)
        } else {
            format!("http://{}:{}", self.host, self.port)
        }
    }

    fn fail(&self, reason: impl Into<String>) -> ProxyFailure {
        ProxyFailure {
            origin: self.origin(),
            reason: reason.into(),
        }
    }

    /// Opens a tunnel to `target` (an address the policy permitted) through the proxy,
    /// within `connect_timeout` for the TCP connection and the proxy's answer together.
    ///
    /// # Errors
    /// [`ProxyFailure`]: the proxy could not be reached, or answered other than 2xx.
    pub async fn tunnel(
        &self,
        target: SocketAddr,
        connect_timeout: Duration,
    ) -> Result<TcpStream, ProxyFailure> {
        tokio::time::timeout(connect_timeout, self.open(target))
            .await
            .map_err(|_| self.fail("no tunnel within the connect timeout"))?
    }

    async fn open(&self, target: SocketAddr) -> Result<TcpStream, ProxyFailure> {
        let mut stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| self.fail(format!("cannot connect: {e}")))?;
        let _ = stream.set_nodelay(true);
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
        assert!(Proxy::parse("https://proxy:3128")
            .unwrap_err()
            .contains("https://"));
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
