//! The response side of an attempt: the capped body read, `Retry-After`, and the names of
//! what went wrong (`dns`, `connect`, `tls`, `timeout`, …) with a short reason.

use std::error::Error as StdError;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::{timeout_at, Instant};

use super::connect::{BlockedAddress, DnsFailure};
use super::MAX_STORED_RESPONSE_BYTES;
use crate::model::AttemptError;

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

pub(super) struct CappedBody {
    /// The first bytes of the body, at most [`MAX_STORED_RESPONSE_BYTES`].
    pub(super) bytes: Vec<u8>,
    /// Whether the body went on past them.
    pub(super) truncated: bool,
    /// What ended the read early, and why in words.
    pub(super) error: Option<(AttemptError, String)>,
}

/// Reads at most [`MAX_STORED_RESPONSE_BYTES`] of a response body before `deadline`, then
/// stops (dropping the rest closes the connection instead of draining an endless body). A
/// `close_delimited` body that ends with a TLS connection closed without `close_notify` is
/// complete: many servers close that way, and the close is how such a body ends.
pub(super) async fn read_capped(
    mut body: Incoming,
    deadline: Instant,
    close_delimited: bool,
) -> CappedBody {
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
pub(super) fn find_cause<'a, T: StdError + 'static>(
    error: &'a (dyn StdError + 'static),
) -> Option<&'a T> {
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
pub(super) fn classify(error: &hyper_util::client::legacy::Error) -> (AttemptError, String) {
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
        if let Some(proxy) = e.downcast_ref::<super::proxy::ProxyFailure>() {
            return (AttemptError::Connect, bounded(proxy.to_string()));
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
pub(super) fn innermost_text(error: &(dyn StdError + 'static)) -> String {
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

/// Whether a request failed the way a reused keep-alive connection fails when the receiver
/// closed it as we sent (its idle timeout): no connect error, no response, and the
/// connection closed or reset under the request (hyper's incomplete message, or a reset,
/// broken pipe or early EOF). Such a request is sent again once on a fresh connection.
pub(super) fn is_stale_connection(error: &hyper_util::client::legacy::Error) -> bool {
    if error.is_connect() {
        return false;
    }
    if find_cause::<hyper::Error>(error).is_some_and(hyper::Error::is_incomplete_message) {
        return true;
    }
    find_cause::<std::io::Error>(error).is_some_and(|io| {
        matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::UnexpectedEof
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[allow(unused_imports)]
    use crate::delivery::*;

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
}
