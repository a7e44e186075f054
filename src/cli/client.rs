//! How client subcommands reach the daemon: the connection flags, a small API client over
//! the crate's pooled HTTP client, and [`Request`], one call of the API with the API's own
//! request and answer types.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::delivery::build_client;

/// How client subcommands reach the daemon.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Base URL of the daemon's API.
    #[arg(
        long,
        env = "PALO_WEBHOOKS_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// Bearer token (admin token or organization API key).
    #[arg(
        long,
        env = "PALO_WEBHOOKS_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
    /// File holding the token, used when --token is not given.
    #[arg(
        long,
        env = "PALO_WEBHOOKS_TOKEN_FILE",
        default_value = "palo-webhooks.redb.admin-token",
        global = true
    )]
    pub token_file: PathBuf,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `--limit` and `--cursor` of list commands.
#[derive(Debug, Clone, Args)]
pub struct PageArgs {
    /// Page size (1-500).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Cursor from a previous page.
    #[arg(long)]
    pub cursor: Option<String>,
}

impl PageArgs {
    /// The query pairs of these flags.
    pub(super) fn pairs(self) -> [(&'static str, Option<String>); 2] {
        [
            ("limit", self.limit.map(|l| l.to_string())),
            ("cursor", self.cursor),
        ]
    }
}

/// One call of the API: method, path with its query, the body (the API's request type,
/// serialized), the table columns to print, and the check of the answer against the API's
/// answer type.
pub(super) struct Request {
    /// `GET`, `POST`, `PATCH` or `DELETE`.
    pub method: &'static str,
    /// Path and query, e.g. `/api/webhooks?limit=10`.
    pub path: String,
    /// The JSON body.
    pub body: Option<Vec<u8>>,
    /// Columns of the table the answer prints as.
    pub columns: &'static [&'static str],
    /// Parses the answer's bytes as the API's answer type (an error means this CLI and the
    /// daemon disagree on the API).
    pub answer: fn(&[u8]) -> serde_json::Result<()>,
    /// Printed after the answer for people (not with `--json`).
    pub note: Option<&'static str>,
}

/// Parses `bytes` as `A` (the check of [`Request::answer`]), as deep as an accepted event's
/// `data` may nest.
fn parse_as<A: DeserializeOwned>(bytes: &[u8]) -> serde_json::Result<()> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    deserializer.disable_recursion_limit();
    A::deserialize(&mut deserializer).map(drop)
}

/// An answer as JSON for printing: whatever an accepted event holds (deep nesting, numbers
/// beyond a double) reads ([`crate::json_strict::parse_lenient`]).
fn answer_value(bytes: &[u8]) -> Result<Value> {
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    crate::json_strict::parse_lenient(bytes).context("the daemon did not answer JSON")
}

/// An answer without a body (204).
fn empty(bytes: &[u8]) -> serde_json::Result<()> {
    if bytes.is_empty() {
        Ok(())
    } else {
        parse_as::<serde::de::IgnoredAny>(bytes)
    }
}

impl Request {
    /// A call without a body whose answer is an `A`.
    pub fn without_body<A: DeserializeOwned>(
        method: &'static str,
        path: String,
        columns: &'static [&'static str],
    ) -> Request {
        Request {
            method,
            path,
            body: None,
            columns,
            answer: parse_as::<A>,
            note: None,
        }
    }

    /// A call that sends `body` (an API request type) and reads an `A`.
    pub fn with_body<B: Serialize, A: DeserializeOwned>(
        method: &'static str,
        path: String,
        body: &B,
        columns: &'static [&'static str],
    ) -> Result<Request> {
        Ok(Request {
            method,
            path,
            body: Some(serde_json::to_vec(body)?),
            columns,
            answer: parse_as::<A>,
            note: None,
        })
    }

    /// A call whose success has no body (`204 No Content`).
    pub fn no_content(method: &'static str, path: String) -> Request {
        Request {
            method,
            path,
            body: None,
            columns: &[],
            answer: empty,
            note: None,
        }
    }

    /// The same call with `note` printed after its answer for people.
    pub fn with_note(mut self, note: &'static str) -> Request {
        self.note = Some(note);
        self
    }
}

/// A minimal API client over the crate's pooled HTTP client.
pub struct ApiClient {
    base: String,
    token: String,
    client: crate::delivery::HttpsClient,
}

impl ApiClient {
    /// Builds a client from the connection options.
    ///
    /// # Errors
    /// When no token is given and the token file cannot be read.
    pub fn new(args: &ClientArgs) -> Result<ApiClient> {
        let token = match &args.token {
            Some(t) => t.clone(),
            None => std::fs::read_to_string(&args.token_file)
                .with_context(|| {
                    format!(
                        "no token: set PALO_WEBHOOKS_TOKEN or --token, or point --token-file at the admin token file ({} not readable)",
                        args.token_file.display()
                    )
                })?
                .trim()
                .to_owned(),
        };
        Ok(ApiClient {
            base: args.url.trim_end_matches('/').to_owned(),
            token,
            client: build_client(Duration::from_secs(10)),
        })
    }

    /// Calls the API and returns (status, body bytes).
    ///
    /// # Errors
    /// Connection failures.
    pub async fn call_raw(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Bytes)> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path))
            .header("authorization", format!("Bearer {}", self.token));
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let response = self
            .client
            .request(request)
            .await
            .with_context(|| format!("cannot reach {}", self.base))?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }

    /// Calls the API and returns (status, JSON body or null).
    ///
    /// # Errors
    /// Connection failures and non-JSON answers.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Value)> {
        let (status, bytes) = self.call_raw(method, path, body).await?;
        Ok((status, answer_value(&bytes)?))
    }

    /// Makes `request`; a 2xx answer is checked against its answer type and returned as
    /// JSON (null for none).
    ///
    /// # Errors
    /// Connection failures; a non-2xx answer, as `status code: message`; an answer that is
    /// not the API's answer type.
    pub(super) async fn send(&self, request: &Request) -> Result<Value> {
        Ok(self.send_with_status(request).await?.1)
    }

    /// [`ApiClient::send`], with the answer's status.
    ///
    /// # Errors
    /// As [`ApiClient::send`].
    pub(super) async fn send_with_status(&self, request: &Request) -> Result<(u16, Value)> {
        let (status, bytes) = self
            .call_raw(request.method, &request.path, request.body.clone())
            .await?;
        let value = answer_value(&bytes)?;
        if !(200..300).contains(&status) {
            bail!("{}", error_text(status, &value));
        }
        (request.answer)(&bytes).with_context(|| {
            format!(
                "the daemon's answer to {} {} is not what this version of the CLI expects (a daemon of another version?)",
                request.method, request.path
            )
        })?;
        Ok((status, value))
    }
}

/// `status code: message` of an error answer.
fn error_text(status: u16, value: &Value) -> String {
    format!(
        "{status} {}: {}",
        value["error"]["code"].as_str().unwrap_or("error"),
        value["error"]["message"]
            .as_str()
            .unwrap_or("unexpected answer")
    )
}

/// `?k=v&...` of the pairs that have a value (values percent-encoded), or nothing.
pub(super) fn query<'a>(pairs: impl IntoIterator<Item = (&'a str, Option<String>)>) -> String {
    let parts: Vec<String> = pairs
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={}", encode_component(&v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub(super) fn encode_component(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `palo-webhooks backup --out FILE`: creates `FILE.partial` (new, 0600), downloads `GET
/// /api/admin/backup` into it, checks its length, fsyncs it, links it as `FILE` (never
/// replacing a file), then runs the read-only consistency check on it and prints what it
/// holds.
///
/// # Errors
/// `FILE` exists; the daemon refuses (403 for an organization key); the download breaks off
/// or is short (the partial file is removed); the copy fails its check.
pub(super) async fn backup(args: &ClientArgs, out: &std::path::Path) -> Result<()> {
    use std::io::Write as _;
    if out.exists() {
        bail!("{} exists: choose a new file", out.display());
    }
    let api = ApiClient::new(args)?;
    let mut partial = out.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    // Created before asking the daemon: a path that cannot be written fails now, not after
    // the daemon has made its copy. 0600 like the db: the copy holds every webhook secret
    // (sealed only with a key file).
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let downloaded = async {
        let request = hyper::Request::builder()
            .method("GET")
            .uri(format!("{}/api/admin/backup", api.base))
            .header("authorization", format!("Bearer {}", api.token))
            .body(Full::new(Bytes::new()))?;
        let response = api
            .client
            .request(request)
            .await
            .with_context(|| format!("cannot reach {}", api.base))?;
        let status = response.status().as_u16();
        if status != 200 {
            let bytes = response.into_body().collect().await?.to_bytes();
            let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            bail!("{}", error_text(status, &value));
        }
        let expected: Option<u64> = response
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let mut body = response.into_body();
        let mut written = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.context("the backup download failed")?;
            if let Ok(data) = frame.into_data() {
                file.write_all(&data)?;
                written += data.len() as u64;
            }
        }
        if expected.is_some_and(|e| e != written) {
            bail!("the backup broke off: {written} of {expected:?} bytes");
        }
        file.sync_all()?;
        // A hard link, not a rename: it fails if `out` appeared meanwhile, so nothing is
        // ever replaced.
        std::fs::hard_link(&partial, out).with_context(|| {
            format!(
                "{} appeared during the backup: choose a new file",
                out.display()
            )
        })?;
        anyhow::Ok(written)
    }
    .await;
    let _ = std::fs::remove_file(&partial);
    let written = downloaded?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    let report = crate::store::Store::check_file_read_only(out)
        .with_context(|| format!("{} does not open as a store", out.display()))?;
    if !report.is_ok() {
        bail!(
            "{} fails its check: {}",
            out.display(),
            report.violations.join("; ")
        );
    }
    out!(
        "backup written: {} ({written} bytes; {} events, {} deliveries, {} webhooks); check: consistent",
        out.display(),
        report.events,
        report.deliveries,
        report.webhooks
    );
    Ok(())
}
