//! `palo-webhooks listen`: a local test receiver, the spec's "distinct test endpoint"
//! (`/webhook-test`) as a tool. It checks both signature schemes and the timestamp (the
//! same [`super::verify::check`] as `verify`), deduplicates on `event_id`, prints one line
//! per request, and can fail or stall on purpose so a developer can watch the retry
//! schedule, like `stripe listen`.
//!
//! Answers: 401 when no signature verifies or the timestamp is stale; the `--status` of
//! `--fail-first` for the first N attempts of each delivery (counted by `webhook-id`); 200
//! otherwise, after `--delay`. A duplicate (an `event_id` seen before) is answered 200 and
//! marked `duplicate`.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, Response, StatusCode};

use super::verify::{check, Captured, Mode, Report};

/// The largest body `listen` reads, bytes (the daemon's default `--max-body` is smaller).
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Delivery ids whose attempts `--fail-first` counts, and event ids kept for deduplication,
/// at most each: past it, that set starts over (a delivery may then be failed on purpose
/// again, an event seen long ago is shown as new), so memory stays bounded however long
/// `listen` runs.
const MAX_TRACKED: usize = 100_000;
/// Time a client has to send a request's head, then its body, before the connection is
/// closed (as the daemon's own API does with a slow client).
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of `palo-webhooks listen`.
#[derive(Debug, Args)]
pub struct ListenArgs {
    /// Port to listen on (0 picks a free one, printed at start).
    #[arg(long, default_value_t = 9000)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    /// The path deliveries are posted to.
    #[arg(long, default_value = "/webhook-test")]
    pub path: String,
    /// The webhook's secret; during a rotation, several comma-separated (new,old).
    #[arg(
        long,
        env = "PALO_WEBHOOK_SECRET",
        hide_env_values = true,
        value_delimiter = ',',
        required = true
    )]
    pub secret: Vec<String>,
    /// The webhook's Ed25519 public key (`whpk_...`), to check `v1a` signatures too.
    #[arg(long, value_name = "whpk_...")]
    pub public_key: Option<String>,
    /// Answer the first N attempts of each delivery with `--status` (then 200), to watch
    /// the retry schedule.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub fail_first: u32,
    /// The status `--fail-first` answers with (300-599: what the daemon counts as a failure).
    #[arg(long, default_value_t = 503, value_parser = clap::value_parser!(u16).range(100..=599))]
    pub status: u16,
    /// Wait this long before answering each request, e.g. 2s; longer than the daemon's
    /// attempt timeout (10 s by default), the attempt times out and is retried.
    #[arg(long, value_name = "DURATION")]
    pub delay: Option<humantime::Duration>,
    /// How old `webhook-timestamp` may be, e.g. 5m.
    #[arg(long, default_value = "5m", value_name = "DURATION")]
    pub tolerance: humantime::Duration,
}

/// What every connection shares.
struct Listener {
    args: ListenArgs,
    public_key: Option<Vec<u8>>,
    state: Mutex<Seen>,
}

/// Event ids seen, and attempts counted per delivery, each at most `cap` entries.
struct Seen {
    cap: usize,
    events: HashSet<String>,
    attempts: HashMap<String, u32>,
}

impl Seen {
    fn new(cap: usize) -> Seen {
        Seen {
            cap,
            events: HashSet::new(),
            attempts: HashMap::new(),
        }
    }

    /// Counts one more attempt of `delivery`; returns the count.
    fn attempt(&mut self, delivery: &str) -> u32 {
        if self.attempts.len() >= self.cap && !self.attempts.contains_key(delivery) {
            self.attempts.clear();
        }
        let count = self.attempts.entry(delivery.to_owned()).or_insert(0);
        *count += 1;
        *count
    }

    /// Whether `event_id` was answered 200 before (and remembers it).
    fn duplicate(&mut self, event_id: &str) -> bool {
        if self.events.contains(event_id) {
            return true;
        }
        if self.events.len() >= self.cap {
            self.events.clear();
        }
        self.events.insert(event_id.to_owned());
        false
    }
}

/// Runs `palo-webhooks listen` until Ctrl-C.
///
/// # Errors
/// The address cannot be bound; `--public-key` is not a `whpk_` key.
pub async fn run(args: ListenArgs) -> Result<()> {
    if args.secret.iter().all(String::is_empty) {
        bail!("--secret is empty");
    }
    if args.fail_first == 0 && args.status != 503 {
        bail!("--status is the answer of --fail-first: give --fail-first N too");
    }
    if args.fail_first > 0 && !(300..=599).contains(&args.status) {
        bail!(
            "--status {}: --fail-first needs a status the daemon counts as a failure (300-599)",
            args.status
        );
    }
    if args.secret.iter().any(|s| !s.is_empty() && s.len() < 32) {
        eprintln!("warning: a webhook secret has at least 32 characters; this one is shorter, so no delivery will verify with it");
    }
    if !args.path.starts_with('/') {
        bail!("--path must start with /");
    }
    let public_key = args
        .public_key
        .as_deref()
        .map(super::verify::public_key_bytes)
        .transpose()?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(args.host, args.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
    let local = listener.local_addr()?;
    let host = match local.ip() {
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    out!(
        "listening on http://{host}:{}{} ({} secret(s){}{})",
        local.port(),
        args.path,
        args.secret.len(),
        if args.fail_first > 0 {
            format!(
                "; answering {} to the first {} attempt(s) of each delivery",
                args.status, args.fail_first
            )
        } else {
            String::new()
        },
        args.delay
            .map(|d| format!("; answering after {d}"))
            .unwrap_or_default()
    );
    out!(
        "point a webhook at it with the same secret: palo-webhooks webhooks create http://{host}:{}{} --events '*' --secret <SECRET> --organization-id <ORG> (the daemon needs --allow-http and --allow-network 127.0.0.0/8)",
        local.port(),
        args.path
    );
    let shared = Arc::new(Listener {
        args,
        public_key,
        state: Mutex::new(Seen::new(MAX_TRACKED)),
    });
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&shared, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(READ_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A plain-text answer.
fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response
}

/// Checks, prints and answers one request.
async fn answer(
    shared: &Listener,
    request: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let args = &shared.args;
    if request.uri().path() != args.path {
        out!(
            "{} {} {} -> 404 (listening on {})",
            crate::clock::format_ms(crate::clock::now_ms()),
            request.method(),
            request.uri().path(),
            args.path
        );
        return text(
            StatusCode::NOT_FOUND,
            &format!(
                "not found: palo-webhooks listen takes deliveries on {}",
                args.path
            ),
        );
    }
    if request.method() != hyper::Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "POST only");
    }
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let delivery = header("x-palo-delivery").or_else(|| header("webhook-id"));
    let attempt = header("x-palo-attempt");
    let pairs: Vec<(String, String)> = request
        .headers()
        .iter()
        .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let read = tokio::time::timeout(
        READ_TIMEOUT,
        Limited::new(request.into_body(), MAX_BODY_BYTES).collect(),
    )
    .await;
    let body = match read {
        Ok(Ok(collected)) => collected.to_bytes().to_vec(),
        Ok(Err(_)) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body over 16 MiB (palo-webhooks listen's limit) or broken off",
            )
        }
        Err(_) => {
            return text(
                StatusCode::REQUEST_TIMEOUT,
                "the body did not arrive within 10 s",
            )
        }
    };
    let captured =
        Captured::from_headers(pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())), body);
    let report = check(
        &captured,
        &args.secret,
        shared.public_key.as_deref(),
        crate::clock::now_ms() / 1000,
        args.tolerance.as_secs(),
        Mode::Delivery,
    );
    let envelope: serde_json::Value =
        serde_json::from_slice(&captured.body).unwrap_or(serde_json::Value::Null);
    let event_type = envelope["event_type"].as_str().unwrap_or("?").to_owned();
    let event_id = envelope["event_id"].as_str().unwrap_or("?").to_owned();
    let time = crate::clock::format_ms(crate::clock::now_ms());
    let who = format!(
        "{event_type} {event_id} delivery={} attempt={}",
        delivery.as_deref().unwrap_or("-"),
        attempt.as_deref().unwrap_or("-")
    );
    if !report.verified {
        out!(
            "{time} rejected {who} -> 401 ({})",
            report.reason.as_deref().unwrap_or("not verified")
        );
        for finding in report.findings.iter().filter(|f| f.result == "failed") {
            out!("    {}: {}", finding.check, finding.detail);
        }
        return text(StatusCode::UNAUTHORIZED, "signature not verified");
    }
    let (duplicate, failing) = {
        let mut seen = shared.state.lock().expect("listen state");
        let failing = match &delivery {
            Some(id) if args.fail_first > 0 => {
                Some(seen.attempt(id)).filter(|count| *count <= args.fail_first)
            }
            _ => None,
        };
        // An event counts as seen once it was answered 200.
        let duplicate = failing.is_none() && seen.duplicate(&event_id);
        (duplicate, failing)
    };
    // Printed before any --delay: an attempt the daemon gives up on (its timeout) still shows.
    let verdict = verdict(&report);
    let after = args
        .delay
        .map(|d| format!(" after {d}"))
        .unwrap_or_default();
    let answer = if let Some(n) = failing {
        out!(
            "{time} failing {who} -> {}{after} (on purpose: {n} of {}) [{verdict}]",
            args.status,
            args.fail_first
        );
        let status = StatusCode::from_u16(args.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        text(
            status,
            "failing on purpose (palo-webhooks listen --fail-first)",
        )
    } else {
        if duplicate {
            out!("{time} duplicate {who} -> 200{after} [{verdict}]");
        } else {
            out!("{time} verified {who} -> 200{after} [{verdict}]");
            out!("    data: {}", envelope["data"]);
        }
        text(StatusCode::OK, "ok")
    };
    if let Some(delay) = args.delay {
        tokio::time::sleep(Duration::from(delay)).await;
    }
    answer
}

/// `X-Palo-Signature ok, v1 ok, timestamp 0 s old` in short.
fn verdict(report: &Report) -> String {
    report
        .findings
        .iter()
        .filter(|f| f.result != "absent")
        .map(|f| {
            let name = match f.check {
                "X-Palo-Signature" => "X-Palo-Signature",
                "webhook-signature v1" => "v1",
                "webhook-signature v1a" => "v1a",
                _ => "timestamp",
            };
            format!("{name} {}", f.result.replace('_', " "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::Seen;

    #[test]
    fn what_listen_remembers_stays_within_its_cap() {
        let mut seen = Seen::new(3);
        for i in 0..10 {
            assert!(!seen.duplicate(&format!("evt_{i}")));
            assert_eq!(seen.attempt(&format!("dlv_{i}")), 1);
            assert!(seen.events.len() <= 3 && seen.attempts.len() <= 3);
        }
        // Within the cap, a repeat is a duplicate and attempts add up.
        assert!(seen.duplicate("evt_9"));
        assert_eq!(seen.attempt("dlv_9"), 2);
        // Past it, what was forgotten reads as new.
        assert!(!seen.duplicate("evt_0"));
        assert_eq!(seen.attempt("dlv_0"), 1);
    }
}
