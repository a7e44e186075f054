//! A palo-webhooks receiver in Rust (tokio and hyper 1): the same receiver as
//! examples/receiver.py. From this repository:
//!
//! ```sh
//! PALO_WEBHOOK_SECRET=<the webhook's secret> cargo run --example receiver -- --port 9000
//! ```
//!
//! Elsewhere, it needs tokio (rt-multi-thread, macros, net), hyper 1 (server, http1),
//! hyper-util (tokio), http-body-util, bytes, hmac 0.13, sha2 0.11, hex, base64 0.22 and
//! serde_json.
//!
//! Every check is over the raw body bytes, before parsing them:
//! - `X-Palo-Signature: sha256=<hex HMAC-SHA256 of the body>` (the spec's signature);
//! - the Standard Webhooks `webhook-signature`: one `v1,<base64 HMAC-SHA256 of
//!   "<webhook-id>.<webhook-timestamp>.<body>">` entry must match (`v1a,` Ed25519 entries are
//!   skipped);
//! - `webhook-timestamp` (Unix seconds) within 5 minutes of now, so a captured request cannot
//!   be replayed later.
//!
//! Both HMACs are keyed with the UTF-8 bytes of the webhook's secret, and compared in
//! constant time (`verify_slice`). During a secret rotation, give both secrets,
//! comma-separated (`--secret new,old`): a signature that verifies with either is accepted.
//!
//! Then it answers 200 at once and deduplicates on `event_id` (deliveries are
//! at-least-once). Prints one line per request: `verified`, `duplicate` or `rejected:
//! <reason>`, then the event's data for a new event.

use std::collections::HashSet;
use std::convert::Infallible;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use sha2::Sha256;
use tokio::net::TcpListener;

/// How far `webhook-timestamp` may be from now, either way, in seconds.
const TOLERANCE_S: u64 = 5 * 60;

struct Receiver {
    /// The current secret, and the previous one during a rotation.
    secrets: Vec<String>,
    /// The `event_id`s already processed; a real receiver keeps these in its database.
    seen: Mutex<HashSet<String>>,
}

impl Receiver {
    /// Why this request is not a genuine, fresh delivery; `Ok` when it is.
    fn check(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), &'static str> {
        let (Some(signature), Some(id), Some(timestamp), Some(standard)) = (
            header(headers, "x-palo-signature"),
            header(headers, "webhook-id"),
            header(headers, "webhook-timestamp"),
            header(headers, "webhook-signature"),
        ) else {
            return Err("missing headers");
        };
        let sent: u64 = timestamp.parse().map_err(|_| "bad timestamp")?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        if now.abs_diff(sent) > TOLERANCE_S {
            return Err("stale timestamp"); // a replay (or a clock far off)
        }
        // `sha256=` and the hex HMAC-SHA256 of the body.
        let palo = signature
            .strip_prefix("sha256=")
            .and_then(|digest| hex::decode(digest).ok())
            .is_some_and(|digest| {
                self.secrets
                    .iter()
                    .any(|secret| mac(secret).chain_update(body).verify_slice(&digest).is_ok())
            });
        if !palo {
            return Err("bad signature");
        }
        // Space-separated entries; a `v1,` one is the base64 HMAC-SHA256 of
        // "<webhook-id>.<webhook-timestamp>.<body>".
        let signed_prefix = format!("{id}.{timestamp}.");
        let standard_ok = standard
            .split(' ')
            .filter_map(|entry| entry.strip_prefix("v1,"))
            .filter_map(|digest| {
                base64::engine::general_purpose::STANDARD
                    .decode(digest)
                    .ok()
            })
            .any(|digest| {
                self.secrets.iter().any(|secret| {
                    mac(secret)
                        .chain_update(&signed_prefix)
                        .chain_update(body)
                        .verify_slice(&digest)
                        .is_ok()
                })
            });
        if !standard_ok {
            return Err("bad webhook-signature");
        }
        Ok(())
    }
}

/// An HMAC-SHA256 keyed with the UTF-8 bytes of `secret`.
fn mac(secret: &str) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length")
}

/// A header's value, when present, non-empty and text.
fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)?
        .to_str()
        .ok()
        .filter(|value| !value.is_empty())
}

fn answer(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}

async fn handle(
    receiver: Arc<Receiver>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != Method::POST {
        return Ok(answer(StatusCode::METHOD_NOT_ALLOWED, "POST only"));
    }
    let (parts, body) = request.into_parts();
    // The raw bytes: the signatures cover exactly these.
    let Ok(body) = body.collect().await.map(|collected| collected.to_bytes()) else {
        return Ok(answer(StatusCode::BAD_REQUEST, "unreadable body"));
    };
    let event = receiver.check(&parts.headers, &body).and_then(|()| {
        serde_json::from_slice::<Value>(&body)
            .ok()
            .filter(|event| event["event_id"].is_string())
            .ok_or("bad payload")
    });
    let event = match event {
        Ok(event) => event,
        Err(reason) => {
            println!("rejected: {reason}");
            return Ok(answer(StatusCode::UNAUTHORIZED, "rejected"));
        }
    };
    let event_id = event["event_id"].as_str().unwrap_or_default().to_owned();
    let duplicate = !receiver.seen.lock().unwrap().insert(event_id);
    let delivery = header(&parts.headers, "x-palo-delivery")
        .unwrap_or_default()
        .to_owned();
    let attempt = header(&parts.headers, "x-palo-attempt")
        .unwrap_or_default()
        .to_owned();
    // Answer first, process after (the spec asks for < 5 s): hyper sends the response when
    // this function returns, and the processing runs in a task of its own.
    tokio::spawn(async move { process(&event, duplicate, &delivery, &attempt) });
    Ok(answer(StatusCode::OK, "ok"))
}

/// What the receiver does with an event: here, print it.
fn process(event: &Value, duplicate: bool, delivery: &str, attempt: &str) {
    let status = if duplicate { "duplicate" } else { "verified" };
    let kind = event["event_type"].as_str().unwrap_or_default();
    let id = event["event_id"].as_str().unwrap_or_default();
    // One lock for both lines, so that another request's lines cannot come between.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{status} {kind} {id} delivery={delivery} attempt={attempt}"
    );
    if !duplicate {
        let _ = writeln!(out, "{}", event["data"]);
    }
}

/// `--port N` (9000 by default; 0 picks a free port) and `--secret S` (or
/// PALO_WEBHOOK_SECRET): the webhook's secret, or several comma-separated during a rotation.
fn parse_args() -> Result<(u16, Vec<String>), String> {
    let mut port = 9000;
    let mut secret = std::env::var("PALO_WEBHOOK_SECRET").unwrap_or_default();
    let mut args = std::env::args().skip(1);
    while let Some(name) = args.next() {
        let value = args.next().ok_or_else(|| format!("{name} needs a value"))?;
        match name.as_str() {
            "--port" => port = value.parse().map_err(|_| format!("not a port: {value}"))?,
            "--secret" => secret = value,
            _ => return Err(format!("unknown option {name}: use --port N --secret S")),
        }
    }
    let secrets: Vec<String> = secret
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if secrets.is_empty() {
        return Err("set PALO_WEBHOOK_SECRET (or --secret) to the webhook's secret".to_owned());
    }
    Ok((port, secrets))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (port, secrets) = parse_args().unwrap_or_else(|message| {
        eprintln!("{message}");
        std::process::exit(2)
    });
    let receiver = Arc::new(Receiver {
        secrets,
        seen: Mutex::default(),
    });
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let port = listener.local_addr()?.port();
    println!("receiver listening on http://127.0.0.1:{port}/webhook");
    std::io::stdout().flush()?;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                eprintln!("accept: {error}");
                continue;
            }
        };
        let receiver = Arc::clone(&receiver);
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(Arc::clone(&receiver), request));
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                eprintln!("connection: {error}");
            }
        });
    }
}
