//! The outbound address policy (SSRF protection, issue 5).
//!
//! Owner's rule: pure functions over addresses. By default a delivery may reach only global
//! unicast addresses: never loopback, RFC 1918 private, link-local (169.254.0.0/16, where
//! cloud metadata lives), CGNAT (100.64.0.0/10), "this network" (0.0.0.0/8), multicast,
//! broadcast, reserved (240.0.0.0/4), documentation and benchmarking ranges, IPv6 `::1`,
//! `::`, unique-local `fc00::/7`, link-local `fe80::/10`, multicast `ff00::/8`, nor the
//! IPv4-mapped (`::ffff:0:0/96`), IPv4-compatible and NAT64 (`64:ff9b::/96`) forms of the
//! IPv4 ranges. An operator opens specific networks with `--allow-network CIDR`. The check
//! runs on the addresses actually connected to, after DNS resolution, at every attempt
//! (`delivery`), and on IP-literal URLs at webhook creation (`api`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::IpNet;

/// Which addresses deliveries may connect to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    allowed: Vec<IpNet>,
}

/// The policy in force, shared by the API (URL checks at creation) and the delivery client
/// (every connection), and replaced as a whole when SIGHUP reloads `allow_network`: a
/// connection checks the policy current when it is made.
#[derive(Debug, Default)]
pub struct PolicyCell(
    std::sync::RwLock<std::sync::Arc<AddressPolicy>>,
    std::sync::atomic::AtomicU64,
);

impl PolicyCell {
    /// A cell holding `policy`.
    pub fn new(policy: AddressPolicy) -> PolicyCell {
        PolicyCell(
            std::sync::RwLock::new(std::sync::Arc::new(policy)),
            std::sync::atomic::AtomicU64::new(0),
        )
    }

    /// Counts the changes: a holder of pooled connections made under an older version
    /// drops them (a narrowed list must not ride on connections opened before it).
    pub fn version(&self) -> u64 {
        self.1.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The policy in force now.
    pub fn load(&self) -> std::sync::Arc<AddressPolicy> {
        match self.0.read() {
            Ok(guard) => std::sync::Arc::clone(&guard),
            Err(poisoned) => std::sync::Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Puts `policy` in force for every check from now on; returns whether it differs from
    /// the one it replaces.
    pub fn replace(&self, policy: AddressPolicy) -> bool {
        let mut guard = match self.0.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let changed = **guard != policy;
        *guard = std::sync::Arc::new(policy);
        if changed {
            self.1.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        changed
    }
}

/// A `--allow-network` value that is not a CIDR block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid network {0:?}: expected a CIDR block like 10.0.0.0/8 or fd00::/8")]
pub struct NetworkParseError(pub String);

impl AddressPolicy {
    /// The default policy plus the operator's allowed networks (which win over the
    /// forbidden ranges).
    pub fn new(allowed: Vec<IpNet>) -> AddressPolicy {
        AddressPolicy { allowed }
    }

    /// Parses `--allow-network` values (`10.0.0.0/8`, `fd00::/8`; a bare address is a /32
    /// or /128).
    ///
    /// # Errors
    /// [`NetworkParseError`] naming the first value that is not a network.
    pub fn parse_networks(values: &[String]) -> Result<Vec<IpNet>, NetworkParseError> {
        values
            .iter()
            .map(|v| {
                let v = v.trim();
                IpNet::from_str(v)
                    .or_else(|_| IpAddr::from_str(v).map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| NetworkParseError(v.to_owned()))
            })
            .collect()
    }

    /// The networks the operator opened.
    pub fn allowed(&self) -> &[IpNet] {
        &self.allowed
    }

    /// Whether a delivery may connect to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        if self.allowed.iter().any(|net| net.contains(&ip)) {
            return true;
        }
        // An allowed IPv4 network also opens that network's IPv4-mapped IPv6 form.
        if let Some(v4) = embedded_v4(ip) {
            if self.allowed.iter().any(|net| net.contains(&IpAddr::V4(v4))) {
                return true;
            }
        }
        blocked_range(ip).is_none()
    }

    /// Why `ip` is refused (a short range name for messages and logs), or `None` when the
    /// policy permits it.
    pub fn refusal(&self, ip: IpAddr) -> Option<&'static str> {
        if self.permits(ip) {
            None
        } else {
            blocked_range(ip)
        }
    }
}

/// The IPv4 address inside an IPv4-mapped, IPv4-compatible or NAT64 IPv6 address.
fn embedded_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else {
        return None;
    };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    // NAT64 well-known prefix 64:ff9b::/96.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ));
    }
    // IPv4-compatible (deprecated) ::a.b.c.d, except :: and ::1.
    if s[..6] == [0; 6] && (s[6] != 0 || s[7] > 1) {
        return Some(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ));
    }
    None
}

/// The forbidden range `ip` falls in, by name; `None` for a global unicast address.
pub fn blocked_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => blocked_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(ip) {
            Some(v4) => blocked_v4(v4),
            None => blocked_v6(v6),
        },
    }
}

fn blocked_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => "this network (0.0.0.0/8)",
        (127, _, _) => "loopback (127.0.0.0/8)",
        (10, _, _) => "private (10.0.0.0/8)",
        (172, 16..=31, _) => "private (172.16.0.0/12)",
        (192, 168, _) => "private (192.168.0.0/16)",
        (169, 254, _) => "link-local (169.254.0.0/16)",
        (100, 64..=127, _) => "shared address space (100.64.0.0/10)",
        (192, 0, 0) => "IETF protocol assignments (192.0.0.0/24)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (198, 18..=19, _) => "benchmarking (198.18.0.0/15)",
        (224..=239, _, _) => "multicast (224.0.0.0/4)",
        (240..=255, _, _) => "reserved or broadcast (240.0.0.0/4)",
        _ => return None,
    })
}

fn blocked_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    Some(if ip.is_unspecified() {
        "unspecified (::)"
    } else if ip.is_loopback() {
        "loopback (::1)"
    } else if s[0] & 0xfe00 == 0xfc00 {
        "unique local (fc00::/7)"
    } else if s[0] & 0xffc0 == 0xfe80 {
        "link-local (fe80::/10)"
    } else if s[0] & 0xff00 == 0xff00 {
        "multicast (ff00::/8)"
    } else if s[0] == 0x2001 && s[1] == 0x0db8 {
        "documentation (2001:db8::/32)"
    } else if s[0] & 0xe000 != 0x2000 {
        // Only 2000::/3 is allocated global unicast.
        "not global unicast (outside 2000::/3)"
    } else {
        return None;
    })
}

/// Reads an IP literal host (`127.0.0.1`, `[::1]`) from a URL authority host.
pub fn literal(host: &str) -> Option<IpAddr> {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    IpAddr::from_str(host).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forbidden_ranges_are_refused_by_default() {
        let policy = AddressPolicy::default();
        for refused in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "::127.0.0.1",
        ] {
            assert!(!policy.permits(ip(refused)), "{refused} must be refused");
            assert!(policy.refusal(ip(refused)).is_some());
        }
        for permitted in [
            "93.184.216.34",
            "1.1.1.1",
            "172.32.0.1",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
        ] {
            assert!(
                policy.permits(ip(permitted)),
                "{permitted} must be permitted"
            );
        }
    }

    #[test]
    fn allowed_networks_open_their_ranges_and_mapped_forms_only() {
        let nets = AddressPolicy::parse_networks(&[
            "127.0.0.0/8".into(),
            "fd00::/8".into(),
            "10.0.0.5".into(),
        ])
        .unwrap();
        let policy = AddressPolicy::new(nets);
        assert!(policy.permits(ip("127.0.0.1")));
        assert!(policy.permits(ip("::ffff:127.0.0.1")));
        assert!(policy.permits(ip("fd00::1")));
        assert!(policy.permits(ip("10.0.0.5")));
        assert!(!policy.permits(ip("10.0.0.6")));
        assert!(
            !policy.permits(ip("::1")),
            "IPv6 loopback is not in 127.0.0.0/8"
        );
        assert!(!policy.permits(ip("169.254.169.254")));
        assert!(AddressPolicy::parse_networks(&["nope".into()]).is_err());
    }

    #[test]
    fn literals_parse_with_and_without_brackets() {
        assert_eq!(literal("[::1]"), Some(ip("::1")));
        assert_eq!(literal("127.0.0.1"), Some(ip("127.0.0.1")));
        assert_eq!(literal("example.com"), None);
    }
}
