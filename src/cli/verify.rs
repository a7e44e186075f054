//! `palo-webhooks verify`: checks a captured webhook request's signatures, for support
//! staff and receiver authors, and says why a signature does not verify. [`check`] is also
//! what `palo-webhooks listen` runs on every request it receives.
//!
//! What is checked (README, "Verifying signatures"): `X-Palo-Signature` (HMAC-SHA256 of the
//! raw body, the spec's `verify_signature`), each `v1,` entry of the Standard Webhooks
//! `webhook-signature` (HMAC-SHA256 of `"<webhook-id>.<webhook-timestamp>.<body>"`), each
//! `v1a,` entry with `--public-key` (Ed25519, RFC 8032), and the age of `webhook-timestamp`.
//! An HMAC that does not match cannot by itself tell a wrong secret from a changed body;
//! the report uses what else it has: another signature that verifies over the same body
//! (then the secret is the problem), or a body that verifies once a trailing newline, a
//! byte-order mark or re-formatted JSON is undone (then the capture changed the body).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use base64::Engine;
use clap::Args;

use crate::signature::{
    verify as verify_palo, verify_ed25519, verify_standard, SIGNATURE_HEADER, WEBHOOK_ID_HEADER,
    WEBHOOK_SIGNATURE_HEADER, WEBHOOK_TIMESTAMP_HEADER,
};

/// Options of `palo-webhooks verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The webhook's secret; during a rotation, several comma-separated (new,old).
    #[arg(
        long,
        env = "PALO_WEBHOOK_SECRET",
        hide_env_values = true,
        value_delimiter = ',',
        required_unless_present = "public_key"
    )]
    pub secret: Vec<String>,
    /// The webhook's Ed25519 public key (`whpk_...`, from `webhooks public-key`, which
    /// support staff can read, unlike the secret), to check `v1a` signatures; alone, without
    /// `--secret`, only they are checked.
    #[arg(long, value_name = "whpk_...")]
    pub public_key: Option<String>,
    /// A whole captured request in one file (`-` for stdin): optional request line, the
    /// headers, an empty line, then the body byte for byte.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["headers", "body"])]
    pub request: Option<PathBuf>,
    /// The captured headers, one `Name: value` per line (lines of `curl -v` with `> ` work
    /// too; a request line is skipped).
    #[arg(long, value_name = "FILE")]
    pub headers: Option<PathBuf>,
    /// The raw body as received (`-` for stdin); required unless `--request` is given.
    #[arg(long, value_name = "FILE", required_unless_present = "request")]
    pub body: Option<PathBuf>,
    /// A signature to check instead of the captured headers: `sha256=<hex>`
    /// (`X-Palo-Signature`) or a `webhook-signature` value (`v1,<base64> ...`, needs `--id`
    /// and `--timestamp`). Repeatable.
    #[arg(long = "signature", value_name = "SIGNATURE")]
    pub signatures: Vec<String>,
    /// `webhook-timestamp`: Unix seconds.
    #[arg(long)]
    pub timestamp: Option<String>,
    /// `webhook-id`: the delivery id.
    #[arg(long)]
    pub id: Option<String>,
    /// How old (or how far ahead) `webhook-timestamp` may be, e.g. 5m; receivers reject
    /// older requests as possible replays. Raise it to check an old capture.
    #[arg(long, default_value = "5m", value_name = "DURATION")]
    pub tolerance: humantime::Duration,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The signed parts of a request.
#[derive(Debug, Default, Clone)]
pub struct Captured {
    /// `X-Palo-Signature`.
    pub palo_signature: Option<String>,
    /// `webhook-signature` (space-separated entries).
    pub webhook_signature: Option<String>,
    /// `webhook-id`.
    pub webhook_id: Option<String>,
    /// `webhook-timestamp` (Unix seconds, as text).
    pub webhook_timestamp: Option<String>,
    /// The raw body.
    pub body: Vec<u8>,
}

impl Captured {
    /// Takes the signature headers from `(name, value)` pairs (names compared
    /// case-insensitively).
    pub fn from_headers<'a>(
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
        body: Vec<u8>,
    ) -> Captured {
        let mut captured = Captured {
            body,
            ..Captured::default()
        };
        for (name, value) in headers {
            let value = Some(value.trim().to_owned());
            if name.eq_ignore_ascii_case(SIGNATURE_HEADER) {
                captured.palo_signature = value;
            } else if name.eq_ignore_ascii_case(WEBHOOK_SIGNATURE_HEADER) {
                captured.webhook_signature = value;
            } else if name.eq_ignore_ascii_case(WEBHOOK_ID_HEADER) {
                captured.webhook_id = value;
            } else if name.eq_ignore_ascii_case(WEBHOOK_TIMESTAMP_HEADER) {
                captured.webhook_timestamp = value;
            }
        }
        captured
    }
}

/// The verdict on one part of a request.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Finding {
    /// `X-Palo-Signature`, `webhook-signature v1`, `webhook-signature v1a` or
    /// `webhook-timestamp`.
    pub check: &'static str,
    /// `ok`, `failed`, `absent` or `not_checked`.
    pub result: &'static str,
    /// Why, in words.
    pub detail: String,
}

/// What [`check`] found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// True when at least one signature verifies with a given secret or key and the
    /// timestamp (when present) is within the tolerance.
    pub verified: bool,
    /// One finding per signature scheme and the timestamp.
    pub findings: Vec<Finding>,
    /// The short reason when not verified: `no signature`, `wrong secret`, `body changed`,
    /// `wrong secret or body changed`, `stale timestamp`.
    pub reason: Option<String>,
}

impl Report {
    /// The finding of `check`, if any.
    pub fn finding(&self, check: &str) -> Option<&Finding> {
        self.findings.iter().find(|f| f.check == check)
    }
}

/// The body as a capture may have changed it, undone: without a trailing newline, without
/// a UTF-8 byte-order mark, and JSON re-written compactly in the same key order. Each comes
/// with what was undone.
fn body_variants(body: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let mut variants = Vec::new();
    for suffix in [&b"\r\n"[..], b"\n"] {
        if let Some(stripped) = body.strip_suffix(suffix) {
            variants.push(("a trailing newline was added", stripped.to_vec()));
        }
    }
    if let Some(stripped) = body.strip_prefix(b"\xEF\xBB\xBF") {
        variants.push(("a byte-order mark was added", stripped.to_vec()));
    }
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Ok(compact) = serde_json::to_vec(&value) {
            if compact != body {
                variants.push((
                    "the JSON was re-formatted (whitespace or escapes); verify the raw bytes as received, not a parsed and re-serialized body",
                    compact,
                ));
            }
        }
    }
    variants
}

/// `"secret 2 of 2"`, or `"the secret"` when only one was given.
fn secret_name(index: usize, count: usize) -> String {
    if count == 1 {
        "the secret".to_owned()
    } else {
        format!("secret {} of {count}", index + 1)
    }
}

/// How strict [`check`] is about what a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A capture or a signature given by hand (`verify`): what is absent is not checked.
    Capture,
    /// A request from the daemon (`listen`): it always sends `X-Palo-Signature`,
    /// `webhook-signature`, `webhook-id` and `webhook-timestamp`, so a missing one fails.
    Delivery,
}

/// One signature's verdict, before it becomes a [`Finding`].
struct Verdict {
    result: &'static str,
    detail: String,
    reason: Option<&'static str>,
}

impl Verdict {
    fn ok(detail: String) -> Verdict {
        Verdict {
            result: "ok",
            detail,
            reason: None,
        }
    }

    fn failed(reason: &'static str, detail: impl Into<String>) -> Verdict {
        Verdict {
            result: "failed",
            detail: detail.into(),
            reason: Some(reason),
        }
    }

    fn other(result: &'static str, detail: impl Into<String>) -> Verdict {
        Verdict {
            result,
            detail: detail.into(),
            reason: None,
        }
    }
}

/// Checks `captured` against `secrets` (none: only `v1a` can be checked) and the Ed25519
/// `public_key` (32 bytes) at `now_s` (Unix seconds), with a timestamp tolerance of
/// `tolerance_s` seconds. The request verifies when at least one signature verifies, none
/// that could be checked fails (a receiver checking it would refuse the request), and the
/// timestamp, when present, is within the tolerance.
pub fn check(
    captured: &Captured,
    secrets: &[String],
    public_key: Option<&[u8]>,
    now_s: u64,
    tolerance_s: u64,
    mode: Mode,
) -> Report {
    let body = &captured.body;
    let count = secrets.len();
    let ids = captured
        .webhook_id
        .as_deref()
        .zip(captured.webhook_timestamp.as_deref());
    let v1_with = |secret: &str, b: &[u8]| match (captured.webhook_signature.as_deref(), ids) {
        (Some(signature), Some((id, timestamp))) => {
            verify_standard(signature, secret.as_bytes(), id, timestamp, b)
        }
        _ => false,
    };
    let v1_ok = secrets.iter().any(|s| v1_with(s, body));
    let palo_ok = captured
        .palo_signature
        .as_deref()
        .is_some_and(|signature| secrets.iter().any(|s| verify_palo(s, body, signature)));
    // What explains a mismatch: a capture that changed the body (it verifies once that is
    // undone), or a body another signature vouches for (then the secret is the problem).
    let changed_body = |verifies: &dyn Fn(&[u8]) -> bool| {
        body_variants(body)
            .into_iter()
            .find(|(_, variant)| verifies(variant))
            .map(|(what, _)| what)
    };
    let missing = |what: &str| {
        if mode == Mode::Delivery {
            Verdict::failed(
                "missing signature",
                format!("no {what} header: the daemon always sends one"),
            )
        } else {
            Verdict::other("absent", format!("no {what} header"))
        }
    };
    let palo = match captured.palo_signature.as_deref() {
        None => missing("X-Palo-Signature"),
        Some(_) if secrets.is_empty() => Verdict::other("not_checked", "no --secret given"),
        Some(signature) => match secrets.iter().position(|s| verify_palo(s, body, signature)) {
            Some(i) => Verdict::ok(format!("verifies with {}", secret_name(i, count))),
            None => {
                let malformed = signature.strip_prefix("sha256=").is_none_or(|hex| {
                    hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                });
                if malformed {
                    Verdict::failed(
                        "malformed signature",
                        "malformed: expected sha256= and 64 lowercase hex digits",
                    )
                } else if let Some(what) =
                    changed_body(&|b| secrets.iter().any(|s| verify_palo(s, b, signature)))
                {
                    Verdict::failed(
                        "body changed",
                        format!("body changed: {what} (it verifies without that)"),
                    )
                } else if v1_ok {
                    Verdict::failed("wrong secret", "wrong secret: the body is intact (webhook-signature verifies over it), but X-Palo-Signature was signed with another secret; after a rotation it is signed with the new secret only")
                } else {
                    Verdict::failed("wrong secret or body changed", "does not match: the secret is not the webhook's current one, or the body is not the exact bytes that were sent")
                }
            }
        },
    };
    let v1 = match (captured.webhook_signature.as_deref(), ids) {
        (None, _) => missing("webhook-signature"),
        (Some(signature), _) if !signature.split(' ').any(|e| e.starts_with("v1,")) => {
            if mode == Mode::Delivery {
                Verdict::failed("missing signature", "no v1 entry in webhook-signature")
            } else {
                Verdict::other("absent", "no v1 entry in webhook-signature")
            }
        }
        (Some(_), None) => Verdict::failed(
            "missing webhook-id or webhook-timestamp",
            "webhook-id or webhook-timestamp is missing: they are part of what is signed (--id and --timestamp)",
        ),
        (Some(_), Some(_)) if secrets.is_empty() => {
            Verdict::other("not_checked", "no --secret given")
        }
        (Some(_), Some(_)) => match secrets.iter().position(|s| v1_with(s, body)) {
            Some(i) => Verdict::ok(format!("verifies with {}", secret_name(i, count))),
            None => {
                if let Some(what) = changed_body(&|b| secrets.iter().any(|s| v1_with(s, b))) {
                    Verdict::failed("body changed", format!("body changed: {what} (it verifies without that)"))
                } else if palo_ok {
                    Verdict::failed("wrong secret or changed id or timestamp", "does not match, though X-Palo-Signature verifies the body: webhook-id or webhook-timestamp is not what was signed, or the secret is one webhook-signature no longer carries")
                } else {
                    Verdict::failed("wrong secret or body changed", "does not match: the secret is not one the webhook signs with, or the body is not the exact bytes that were sent")
                }
            }
        },
    };
    let v1a = match (captured.webhook_signature.as_deref(), ids) {
        (Some(signature), _) if !signature.split(' ').any(|e| e.starts_with("v1a,")) => None,
        (None, _) => None,
        (Some(_), _) if public_key.is_none() => Some(Verdict::other(
            "not_checked",
            "a v1a (Ed25519) entry is present: give --public-key to check it",
        )),
        (Some(_), None) => Some(Verdict::failed(
            "missing webhook-id or webhook-timestamp",
            "webhook-id or webhook-timestamp is missing: they are part of what is signed",
        )),
        (Some(signature), Some((id, timestamp))) => {
            let key = public_key.expect("checked above");
            Some(if verify_ed25519(signature, key, id, timestamp, body) {
                Verdict::ok("verifies with the public key".to_owned())
            } else if changed_body(&|b| verify_ed25519(signature, key, id, timestamp, b)).is_some()
            {
                Verdict::failed(
                    "body changed",
                    "body changed: it verifies once the capture's changes are undone",
                )
            } else {
                Verdict::failed("wrong public key or body changed", "does not verify with this public key: another webhook's key, or the body, id or timestamp changed")
            })
        }
    };
    let timestamp = match captured.webhook_timestamp.as_deref() {
        None if mode == Mode::Delivery => Verdict::failed(
            "missing timestamp",
            "no webhook-timestamp: the daemon always sends one",
        ),
        None => Verdict::other("absent", "no webhook-timestamp: its age cannot be checked"),
        Some(text) => match text.parse::<u64>() {
            Err(_) => Verdict::failed(
                "malformed timestamp",
                format!("{text:?} is not Unix seconds"),
            ),
            Ok(ts) => {
                // i128: a hostile timestamp (2^64 - 1) cannot overflow the difference.
                let age = i128::from(now_s) - i128::from(ts);
                let span =
                    |secs: u64| humantime::format_duration(std::time::Duration::from_secs(secs));
                let distance = u64::try_from(age.unsigned_abs()).unwrap_or(u64::MAX);
                let when = if age >= 0 {
                    format!("signed {} ago", span(distance))
                } else {
                    format!("dated {} in the future", span(distance))
                };
                if distance <= tolerance_s {
                    Verdict::ok(format!("{when} (tolerance {})", span(tolerance_s)))
                } else {
                    Verdict::failed("stale timestamp", format!("stale: {when}, beyond the tolerance of {}; receivers refuse it as a possible replay", span(tolerance_s)))
                }
            }
        },
    };
    let mut verdicts = vec![("X-Palo-Signature", palo), ("webhook-signature v1", v1)];
    if let Some(v1a) = v1a {
        verdicts.push(("webhook-signature v1a", v1a));
    }
    let any_signature_ok = verdicts.iter().any(|(_, v)| v.result == "ok");
    verdicts.push(("webhook-timestamp", timestamp));
    let first_failure = verdicts.iter().find_map(|(_, v)| v.reason);
    let verified = any_signature_ok && first_failure.is_none();
    let reason = match first_failure {
        Some(reason) => Some(reason.to_owned()),
        None if !any_signature_ok => Some("no signature checked".to_owned()),
        None => None,
    };
    Report {
        verified,
        findings: verdicts
            .into_iter()
            .map(|(check, v)| Finding {
                check,
                result: v.result,
                detail: v.detail,
            })
            .collect(),
        reason,
    }
}

/// The 32 bytes of a Standard Webhooks public key, `whpk_` + base64.
///
/// # Errors
/// Not that form (the message names `--public-key`).
pub fn public_key_bytes(key: &str) -> Result<Vec<u8>> {
    key.strip_prefix("whpk_")
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .filter(|k| k.len() == 32)
        .context("--public-key: expected whpk_ and the base64 of 32 bytes")
}

/// `Name: value` pairs of a header block (a request line, `> `/`< ` prefixes of `curl -v`
/// and lines without a colon are skipped).
fn parse_header_lines(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(|line| line.trim_start_matches(['>', '<']).trim())
        .filter_map(|line| line.split_once(':'))
        .filter(|(name, _)| !name.is_empty() && !name.contains(' '))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect()
}

/// Runs `palo-webhooks verify`: prints the report and returns whether the request verifies.
///
/// # Errors
/// A file cannot be read; nothing to check; `--public-key` is not a `whpk_` key (`main`
/// exits 2 for these, 1 for a request that does not verify).
pub fn run(args: &VerifyArgs) -> Result<bool> {
    let secrets: Vec<String> = args
        .secret
        .iter()
        .filter(|s| !s.is_empty())
        .cloned()
        .collect();
    if secrets.is_empty() && args.public_key.is_none() {
        bail!("--secret is empty");
    }
    let public_key = args
        .public_key
        .as_deref()
        .map(public_key_bytes)
        .transpose()?;
    let (mut headers, body) = if let Some(path) = &args.request {
        let raw = super::read_input(path)?;
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|i| (i, i + 4))
            .or_else(|| {
                raw.windows(2)
                    .position(|w| w == b"\n\n")
                    .map(|i| (i, i + 2))
            });
        let Some((end, start)) = split else {
            bail!(
                "{}: no empty line between the headers and the body",
                path.display()
            );
        };
        (
            parse_header_lines(&String::from_utf8_lossy(&raw[..end])),
            raw[start..].to_vec(),
        )
    } else {
        let headers = match &args.headers {
            Some(path) => parse_header_lines(&String::from_utf8_lossy(&super::read_input(path)?)),
            None => Vec::new(),
        };
        let body_path = args
            .body
            .clone()
            .context("--body is required (or --request)")?;
        (headers, super::read_input(&body_path)?)
    };
    for signature in &args.signatures {
        let name = if signature.starts_with("sha256=") {
            SIGNATURE_HEADER
        } else {
            WEBHOOK_SIGNATURE_HEADER
        };
        headers.push((name.to_owned(), signature.clone()));
    }
    if let Some(id) = &args.id {
        headers.push((WEBHOOK_ID_HEADER.to_owned(), id.clone()));
    }
    if let Some(timestamp) = &args.timestamp {
        headers.push((WEBHOOK_TIMESTAMP_HEADER.to_owned(), timestamp.clone()));
    }
    let captured =
        Captured::from_headers(headers.iter().map(|(n, v)| (n.as_str(), v.as_str())), body);
    if captured.palo_signature.is_none() && captured.webhook_signature.is_none() {
        bail!("no signature to check: give --headers (or --request) with X-Palo-Signature or webhook-signature, or --signature");
    }
    let now_s = crate::clock::now_ms() / 1000;
    let report = check(
        &captured,
        &secrets,
        public_key.as_deref(),
        now_s,
        args.tolerance.as_secs(),
        Mode::Capture,
    );
    if args.json {
        out!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for finding in &report.findings {
            out!(
                "{:<22} {:<11} {}",
                finding.check,
                finding.result.replace('_', " "),
                finding.detail
            );
        }
        let signatures_ok = report
            .findings
            .iter()
            .filter(|f| f.check != "webhook-timestamp")
            .all(|f| f.result != "failed");
        match report.reason.as_deref() {
            None => out!("verified"),
            Some("stale timestamp") if signatures_ok => out!(
                "NOT VERIFIED: stale timestamp (the signatures are right; only the timestamp is too old for a receiver)"
            ),
            Some(reason) => out!("NOT VERIFIED: {reason}"),
        }
    }
    Ok(report.verified)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::{sign, standard_signature};

    const SECRET: &str = "a-secret-of-at-least-32-characters!!";
    const OLD: &str = "the-previous-secret-of-32-characters";

    fn signed(secret: &str, body: &[u8], timestamp: u64) -> Captured {
        Captured {
            palo_signature: Some(sign(secret, body)),
            webhook_signature: Some(standard_signature(
                secret.as_bytes(),
                "dlv_1",
                timestamp,
                body,
            )),
            webhook_id: Some("dlv_1".into()),
            webhook_timestamp: Some(timestamp.to_string()),
            body: body.to_vec(),
        }
    }

    #[test]
    fn a_genuine_request_verifies_and_each_fault_is_named() {
        let now = 1_800_000_000;
        let body = br#"{"event_id":"evt_1","data":{"a":1}}"#;
        let good = signed(SECRET, body, now - 10);
        let report = check(&good, &[SECRET.into()], None, now, 300, Mode::Capture);
        assert!(report.verified, "{report:?}");

        let report = check(&good, &["x".repeat(32)], None, now, 300, Mode::Capture);
        assert!(!report.verified);
        assert_eq!(
            report.reason.as_deref(),
            Some("wrong secret or body changed")
        );

        let mut newline = good.clone();
        newline.body.push(b'\n');
        let report = check(&newline, &[SECRET.into()], None, now, 300, Mode::Capture);
        assert_eq!(report.reason.as_deref(), Some("body changed"));
        assert!(report.findings[0].detail.contains("trailing newline"));

        let mut pretty = good.clone();
        pretty.body =
            serde_json::to_vec_pretty(&serde_json::from_slice::<serde_json::Value>(body).unwrap())
                .unwrap();
        let report = check(&pretty, &[SECRET.into()], None, now, 300, Mode::Capture);
        assert_eq!(report.reason.as_deref(), Some("body changed"));
        assert!(report.findings[0].detail.contains("re-formatted"));

        let stale = signed(SECRET, body, now - 3600);
        let report = check(&stale, &[SECRET.into()], None, now, 300, Mode::Capture);
        assert!(!report.verified);
        assert_eq!(report.reason.as_deref(), Some("stale timestamp"));
        assert_eq!(report.finding("X-Palo-Signature").unwrap().result, "ok");
    }

    #[test]
    fn during_a_rotation_the_old_secret_alone_does_not_verify() {
        let now = 1_800_000_000;
        let body = br#"{"event_id":"evt_2"}"#;
        // The daemon signs X-Palo-Signature with the new secret, webhook-signature with both.
        let mut captured = signed(SECRET, body, now);
        let old_entry = standard_signature(OLD.as_bytes(), "dlv_1", now, body);
        captured.webhook_signature = Some(format!(
            "{} {old_entry}",
            captured.webhook_signature.unwrap()
        ));
        // A receiver holding only the old secret refuses it: X-Palo-Signature is the new one's.
        let report = check(&captured, &[OLD.into()], None, now, 300, Mode::Capture);
        assert!(!report.verified, "{report:?}");
        assert_eq!(report.reason.as_deref(), Some("wrong secret"));
        assert_eq!(report.finding("webhook-signature v1").unwrap().result, "ok");
        let palo = report.finding("X-Palo-Signature").unwrap();
        assert_eq!(palo.result, "failed");
        assert!(palo.detail.starts_with("wrong secret"), "{}", palo.detail);
        let report = check(
            &captured,
            &[SECRET.into(), OLD.into()],
            None,
            now,
            300,
            Mode::Capture,
        );
        assert!(report.verified);
    }

    #[test]
    fn a_hostile_timestamp_is_stale_not_a_panic() {
        let now = 1_800_000_000;
        let mut captured = signed(SECRET, b"{}", now);
        for ts in ["9223372036854775808", "18446744073709551615", "0"] {
            captured.webhook_timestamp = Some(ts.to_owned());
            let report = check(&captured, &[SECRET.into()], None, now, 300, Mode::Capture);
            assert!(!report.verified, "{ts}");
        }
    }

    #[test]
    fn a_delivery_must_carry_every_signature() {
        let now = 1_800_000_000;
        let mut captured = signed(SECRET, b"{}", now);
        captured.palo_signature = None;
        let report = check(&captured, &[SECRET.into()], None, now, 300, Mode::Capture);
        assert!(report.verified, "a capture may lack a header: {report:?}");
        let report = check(&captured, &[SECRET.into()], None, now, 300, Mode::Delivery);
        assert!(!report.verified);
        assert_eq!(report.reason.as_deref(), Some("missing signature"));
        // v1 without the id and timestamp it signs cannot verify.
        let mut captured = signed(SECRET, b"{}", now);
        captured.webhook_id = None;
        let report = check(&captured, &[SECRET.into()], None, now, 300, Mode::Capture);
        assert_eq!(
            report.reason.as_deref(),
            Some("missing webhook-id or webhook-timestamp")
        );
    }

    #[test]
    fn v1a_entries_verify_with_the_public_key() {
        let now = 1_800_000_000;
        let body = b"{}";
        let seed = [7u8; 32];
        let mut captured = signed(SECRET, body, now);
        let v1a = crate::signature::ed25519_signature(&seed, "dlv_1", now, body);
        captured.webhook_signature = Some(format!("{} {v1a}", captured.webhook_signature.unwrap()));
        let public = crate::signature::ed25519_public_key(&seed);
        let key = base64::engine::general_purpose::STANDARD
            .decode(public.strip_prefix("whpk_").unwrap())
            .unwrap();
        let report = check(
            &captured,
            &[SECRET.into()],
            Some(&key),
            now,
            300,
            Mode::Capture,
        );
        assert_eq!(
            report.finding("webhook-signature v1a").unwrap().result,
            "ok"
        );
        let report = check(
            &captured,
            &[SECRET.into()],
            Some(&[1u8; 32]),
            now,
            300,
            Mode::Capture,
        );
        assert_eq!(
            report.finding("webhook-signature v1a").unwrap().result,
            "failed"
        );
        // The public key alone (support staff cannot read the secret): only v1a is checked.
        let report = check(&captured, &[], Some(&key), now, 300, Mode::Capture);
        assert!(report.verified, "{report:?}");
        assert_eq!(
            report.finding("X-Palo-Signature").unwrap().result,
            "not_checked"
        );
        // A wrong key fails the request even when the secret verifies the rest.
        let report = check(
            &captured,
            &[SECRET.into()],
            Some(&[1u8; 32]),
            now,
            300,
            Mode::Capture,
        );
        assert!(!report.verified);
    }
}
