//! The command line: `serve`, and client subcommands that call a running daemon's API.
//!
//! Owner's rule: the client speaks only the documented HTTP API (no store access), so what
//! the CLI can do, a script can do with curl. Tables for people by default, `--json` for
//! scripts. Errors print the API's `code: message` and exit 1.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

mod jobs;
mod options;
mod webhooks;

use webhooks::webhook_request;
pub use webhooks::WebhookCommand;

use crate::config::ServeArgs;
use crate::delivery::build_client;
use crate::store::{Store, StoreError};

/// `println!` for command output: a closed stdout (`palo-webhooks ... | head`) ends the
/// program quietly with status 0 instead of a panic.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}

/// palo-webhooks: durable, signed webhook delivery in one binary and one file.
#[derive(Debug, Parser)]
#[command(name = "palo-webhooks", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Serve(Box<ServeArgs>),
    /// Manage webhooks (endpoints).
    Webhooks {
        /// Connection options.
        #[command(flatten)]
        client: ClientArgs,
        /// Action.
        #[command(subcommand)]
        action: WebhookCommand,
    },
    /// Send and inspect events.
    Events {
        /// Connection options.
        #[command(flatten)]
        client: ClientArgs,
        /// Action.
        #[command(subcommand)]
        action: EventCommand,
    },
    /// Inspect deliveries and redeliver.
    Deliveries {
        /// Connection options.
        #[command(flatten)]
        client: ClientArgs,
        /// Action.
        #[command(subcommand)]
        action: DeliveryCommand,
    },
    /// Follow and cancel recovery and replay jobs (start them with `webhooks recover` or
    /// `webhooks replay`).
    Jobs {
        /// Connection options.
        #[command(flatten)]
        client: ClientArgs,
        /// Action.
        #[command(subcommand)]
        action: jobs::JobCommand,
    },
    /// Manage organization API keys (admin token only).
    Keys {
        /// Connection options.
        #[command(flatten)]
        client: ClientArgs,
        /// Action.
        #[command(subcommand)]
        action: KeyCommand,
    },
    /// Verify the store's invariants: a redb file offline (stop the daemon first), or a
    /// PostgreSQL store (`--store`) while daemons run. Exits 0 when consistent, 1 on any
    /// violation or error.
    Check(CheckArgs),
    /// Copy a stopped daemon's redb file into a PostgreSQL database (idempotent: run it
    /// again to resume), then compare counts and check the copy. Exits 0 when they agree.
    Migrate(crate::migrate::MigrateArgs),
    /// Take a consistent backup of the running daemon's store (admin token) into a new
    /// file, then check it. Restore: start the daemon with `--db` on the copy.
    Backup {
        /// Connection options.
        #[command(flatten)]
        client: ClientArgs,
        /// The file to create (refused if it exists).
        #[arg(long)]
        out: PathBuf,
    },
    /// Show the running daemon's state (admin token): version, uptime, db size, deliveries
    /// by status, the due backlog, the oldest overdue delivery, failing webhooks.
    Status {
        /// Connection options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Create a key file for `--secrets-key-file`: 32 random bytes as 64 hex characters,
    /// mode 0600; refuses to overwrite a file.
    GenKey(GenKeyArgs),
}

/// Options of `palo-webhooks gen-key`.
#[derive(Debug, Clone, Args)]
pub struct GenKeyArgs {
    /// The key file to create.
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `palo-webhooks gen-key`: writes a new secrets key to `--out` (mode 0600, fsynced),
/// never to the terminal.
///
/// # Errors
/// The file exists or cannot be written.
pub fn run_gen_key(args: &GenKeyArgs) -> Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    file.write_all(format!("{}\n", crate::store::sealed::SecretsKey::generate_hex()).as_bytes())?;
    file.sync_all()?;
    eprintln!(
        "wrote a new secrets key to {} (mode 0600); back it up apart from the db",
        args.out.display()
    );
    Ok(())
}

/// Options of `palo-webhooks check`.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// The redb database file to check (the same default as `serve`).
    #[arg(long, env = "PALO_WEBHOOKS_DB", default_value = "palo-webhooks.redb")]
    pub db: PathBuf,
    /// Check this PostgreSQL store instead (`postgres://user@host:port/database`, as
    /// `serve --store`); it may be checked while daemons run (one snapshot).
    #[arg(long, env = "PALO_WEBHOOKS_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// A file holding the PostgreSQL password; or set PALO_WEBHOOKS_STORE_PASSWORD.
    #[arg(long, env = "PALO_WEBHOOKS_STORE_PASSWORD_FILE")]
    pub store_password_file: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `palo-webhooks check`: prints a summary (or JSON) and returns whether the store is
/// consistent.
///
/// # Errors
/// The file is missing, is open in a running daemon (redb's lock), or cannot be read.
pub fn run_check(args: &CheckArgs) -> Result<bool> {
    if let Some(url) = &args.store {
        let options =
            crate::store::postgres::PgOptions::from_url(url, args.store_password_file.as_deref())
                .map_err(|e| anyhow!("--store: {e}"))?;
        let store = Store::open_postgres_for_tools(&options, false)
            .with_context(|| format!("cannot open {}", options.describe()))?;
        let report = store
            .check()
            .with_context(|| format!("cannot check {}", options.describe()))?;
        return print_check(&report, &options.describe(), args.json);
    }
    if !args.db.is_file() {
        bail!("no database file at {}", args.db.display());
    }
    // An empty file would be turned into a fresh, "consistent" store: a lost or truncated
    // db must fail the check instead.
    if std::fs::metadata(&args.db).map(|m| m.len()).unwrap_or(0) == 0 {
        bail!("{} is empty: not a palo-webhooks store", args.db.display());
    }
    let locked = || {
        anyhow!(
            "{} is open in another process, most likely a running daemon: stop it first \
             (the check needs a stable file: check a copy made with `palo-webhooks backup --out FILE`)",
            args.db.display()
        )
    };
    // Read-only: the check changes nothing in the file. A file left by a crash needs redb's
    // recovery, which only a read-write open does (the daemon does it at every start).
    let report = match Store::check_file_read_only(&args.db) {
        Ok(report) => report,
        Err(StoreError::Locked) => return Err(locked()),
        Err(StoreError::NeedsRecovery) => {
            eprintln!(
                "{} was not closed cleanly (crash or kill -9): recovering it first, as the daemon does at start (this writes to the file)",
                args.db.display()
            );
            match Store::recover_file(&args.db) {
                Ok(()) => {}
                Err(StoreError::Locked) => return Err(locked()),
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot recover {}", args.db.display()))
                }
            }
            Store::check_file_read_only(&args.db)
                .with_context(|| format!("cannot read {}", args.db.display()))?
        }
        Err(e) => return Err(e).with_context(|| format!("cannot check {}", args.db.display())),
    };
    print_check(&report, &args.db.display().to_string(), args.json)
}

/// Prints a check report (as JSON with `json`) for the store named `what`; returns whether
/// every invariant holds.
///
/// # Errors
/// Writing to stdout failed.
fn print_check(report: &crate::store::CheckReport, what: &str, json: bool) -> Result<bool> {
    if json {
        let json = json!({
            "ok": report.is_ok(),
            "webhooks": report.webhooks,
            "events": report.events,
            "deliveries": report.deliveries,
            "deliveries_not_final": report.not_final,
            "attempts": report.attempts,
            "payloads_deleted": report.payloads_deleted,
            "retry_index_entries": report.retry_index,
            "api_keys": report.api_keys,
            "violation_count": report.violation_count,
            "violations": report.violations,
        });
        out!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        out!("checked {what}");
        out!(
            "  webhooks {}  events {} ({} payloads deleted)  deliveries {} ({} not final)  attempts {}  retry index {}  api keys {}",
            report.webhooks,
            report.events,
            report.payloads_deleted,
            report.deliveries,
            report.not_final,
            report.attempts,
            report.retry_index,
            report.api_keys
        );
        for violation in &report.violations {
            out!("  violation: {violation}");
        }
        let hidden = report.violation_count - report.violations.len() as u64;
        if hidden > 0 {
            out!("  ... and {hidden} more");
        }
        if report.is_ok() {
            out!("ok: every invariant holds");
        } else {
            out!("FAILED: {} violation(s)", report.violation_count);
        }
    }
    Ok(report.is_ok())
}

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
    fn pairs(self) -> [(&'static str, Option<String>); 2] {
        [
            ("limit", self.limit.map(|l| l.to_string())),
            ("cursor", self.cursor),
        ]
    }
}

/// `events` actions.
#[derive(Debug, Subcommand)]
pub enum EventCommand {
    /// Send an event: JSON `{"event_type","organization_id","data",...}` from a file or stdin.
    Send {
        /// File to read, or - for stdin.
        #[arg(default_value = "-")]
        file: PathBuf,
    },
    /// Show an event and its deliveries.
    Get {
        /// The event_id.
        event_id: String,
        /// Organization (admin, when the id exists in several).
        #[arg(long)]
        organization_id: Option<String>,
    },
    /// Delete an event's payload: its stored body becomes a tombstone and its unfinished
    /// deliveries are cancelled; the deliveries and their attempt logs stay.
    DeletePayload {
        /// The event_id.
        event_id: String,
        /// Organization (admin, when the id exists in several).
        #[arg(long)]
        organization_id: Option<String>,
    },
    /// List events, newest first.
    List {
        /// Only this event type.
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Only this organization (admin).
        #[arg(long)]
        organization_id: Option<String>,
        /// Paging.
        #[command(flatten)]
        page: PageArgs,
    },
}

/// The filters of `deliveries list`.
#[derive(Debug, Args)]
pub struct ListDeliveries {
    /// Only deliveries to this webhook.
    #[arg(long)]
    pub webhook: Option<String>,
    /// The organization whose log to search (required with the admin token).
    #[arg(long)]
    pub organization_id: Option<String>,
    /// Only these statuses, repeated or comma-separated (pending, retrying, held,
    /// succeeded, failed, cancelled).
    #[arg(long, value_delimiter = ',')]
    pub status: Vec<String>,
    /// Only deliveries whose last attempt came to one of these, repeated or
    /// comma-separated (2xx, 3xx, 4xx, 5xx, other_status, timeout, connect, dns, tls,
    /// io, blocked_address, auth).
    #[arg(long, value_delimiter = ',')]
    pub outcome: Vec<String>,
    /// Only this event type.
    #[arg(long, alias = "type")]
    pub event_type: Option<String>,
    /// Only the deliveries of this event.
    #[arg(long)]
    pub event_id: Option<String>,
    /// Created at or after (RFC 3339).
    #[arg(long)]
    pub since: Option<String>,
    /// Created at or before (RFC 3339).
    #[arg(long)]
    pub until: Option<String>,
    /// Paging.
    #[command(flatten)]
    pub page: PageArgs,
}

/// `deliveries` actions.
#[derive(Debug, Subcommand)]
pub enum DeliveryCommand {
    /// Search the delivery log, newest first (`GET /api/deliveries`); with `--webhook`
    /// alone (and at most one `--status`, `--event-type`), that webhook's deliveries, which
    /// needs no `--organization-id` with the admin token.
    List(Box<ListDeliveries>),
    /// Show a delivery and every attempt.
    Get {
        /// Delivery id.
        id: String,
    },
    /// Make one manual attempt now and show it.
    Redeliver {
        /// Delivery id.
        id: String,
    },
}

/// `keys` actions.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create an organization API key; prints the key once.
    Create {
        /// The organization it acts for.
        #[arg(long)]
        organization_id: String,
        /// Free text.
        #[arg(long)]
        description: Option<String>,
    },
    /// List keys (never the key text).
    List,
    /// Delete a key.
    Delete {
        /// Key id.
        id: String,
    },
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
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).context("the daemon did not answer JSON")?
        };
        Ok((status, value))
    }

    async fn expect_ok(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> Result<Value> {
        let (status, value) = self.call(method, path, body).await?;
        if (200..300).contains(&status) {
            return Ok(value);
        }
        let code = value["error"]["code"].as_str().unwrap_or("error");
        let message = value["error"]["message"]
            .as_str()
            .unwrap_or("unexpected answer");
        bail!("{status} {code}: {message}")
    }
}

fn query<'a>(pairs: impl IntoIterator<Item = (&'a str, Option<String>)>) -> String {
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

fn encode_component(text: &str) -> String {
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
async fn backup(args: &ClientArgs, out: &std::path::Path) -> Result<()> {
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
            bail!(
                "{status} {}: {}",
                value["error"]["code"].as_str().unwrap_or("error"),
                value["error"]["message"]
                    .as_str()
                    .unwrap_or("unexpected answer")
            );
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

/// Runs a client subcommand and prints its result.
///
/// # Errors
/// Any API or connection error, as `status code: message`.
pub async fn run_client(command: Command) -> Result<()> {
    let (client_args, request) = match command {
        Command::Serve(_) | Command::Check(_) | Command::GenKey(_) | Command::Migrate(_) => {
            bail!("not a client command")
        }
        Command::Webhooks { client, action } => (client, webhook_request(action)?),
        Command::Events { client, action } => (client, event_request(action)?),
        Command::Deliveries { client, action } => (client, delivery_request(action)),
        Command::Keys { client, action } => (client, key_request(action)?),
        Command::Jobs { client, action } => (client, jobs::job_request(action)?),
        Command::Backup { client, out } => return backup(&client, &out).await,
        Command::Status { client } => (
            client,
            Request {
                method: "GET",
                path: "/api/admin/status".to_owned(),
                body: None,
                columns: &["webhook_id", "organization_id", "streak", "url"],
            },
        ),
    };
    let api = ApiClient::new(&client_args)?;
    let value = api
        .expect_ok(request.method, &request.path, request.body)
        .await?;
    if client_args.json {
        out!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print_human(&value, request.columns);
    }
    Ok(())
}

struct Request {
    method: &'static str,
    path: String,
    body: Option<Vec<u8>>,
    columns: &'static [&'static str],
}

const DELIVERY_COLUMNS: &[&str] = &[
    "id",
    "event_type",
    "event_id",
    "status",
    "last_outcome",
    "attempt_count",
    "created_at",
    "next_attempt_at",
];
const ATTEMPT_COLUMNS: &[&str] = &[
    "number",
    "started_at",
    "duration_ms",
    "status_code",
    "error",
    "trigger",
    "error_detail",
];
const EVENT_COLUMNS: &[&str] = &[
    "event_id",
    "event_type",
    "organization_id",
    "timestamp",
    "received_at",
];
const KEY_COLUMNS: &[&str] = &["id", "organization_id", "description", "created_at"];

fn event_request(action: EventCommand) -> Result<Request> {
    Ok(match action {
        EventCommand::Send { file } => {
            let mut bytes = Vec::new();
            if file.as_os_str() == "-" {
                std::io::stdin().read_to_end(&mut bytes)?;
            } else {
                bytes = std::fs::read(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
            }
            Request {
                method: "POST",
                path: "/api/events".into(),
                body: Some(bytes),
                columns: EVENT_COLUMNS,
            }
        }
        EventCommand::Get {
            event_id,
            organization_id,
        } => Request {
            method: "GET",
            path: format!(
                "/api/events/{}{}",
                encode_component(&event_id),
                query([("organization_id", organization_id)])
            ),
            body: None,
            columns: EVENT_COLUMNS,
        },
        EventCommand::DeletePayload {
            event_id,
            organization_id,
        } => Request {
            method: "DELETE",
            path: format!(
                "/api/events/{}/payload{}",
                encode_component(&event_id),
                query([("organization_id", organization_id)])
            ),
            body: None,
            columns: EVENT_COLUMNS,
        },
        EventCommand::List {
            event_type,
            organization_id,
            page,
        } => Request {
            method: "GET",
            path: format!(
                "/api/events{}",
                query(
                    [("type", event_type), ("organization_id", organization_id),]
                        .into_iter()
                        .chain(page.pairs())
                )
            ),
            body: None,
            columns: EVENT_COLUMNS,
        },
    })
}

fn delivery_request(action: DeliveryCommand) -> Request {
    let (method, path) = match action {
        DeliveryCommand::List(list) => {
            let ListDeliveries {
                webhook,
                organization_id,
                status,
                outcome,
                event_type,
                event_id,
                since,
                until,
                page,
            } = *list;
            let joined = |values: Vec<String>| (!values.is_empty()).then(|| values.join(","));
            let search_only = organization_id.is_some()
                || !outcome.is_empty()
                || status.len() > 1
                || event_id.is_some()
                || since.is_some()
                || until.is_some();
            match webhook {
                Some(webhook) if !search_only => (
                    "GET",
                    format!(
                        "/api/webhooks/{}/deliveries{}",
                        encode_component(&webhook),
                        query(
                            [("status", joined(status)), ("event_type", event_type)]
                                .into_iter()
                                .chain(page.pairs())
                        )
                    ),
                ),
                webhook => (
                    "GET",
                    format!(
                        "/api/deliveries{}",
                        query(
                            [
                                ("organization_id", organization_id),
                                ("webhook_id", webhook),
                                ("status", joined(status)),
                                ("outcome", joined(outcome)),
                                ("event_type", event_type),
                                ("event_id", event_id),
                                ("since", since),
                                ("until", until),
                            ]
                            .into_iter()
                            .chain(page.pairs())
                        )
                    ),
                ),
            }
        }
        DeliveryCommand::Get { id } => {
            ("GET", format!("/api/deliveries/{}", encode_component(&id)))
        }
        DeliveryCommand::Redeliver { id } => (
            "POST",
            format!("/api/deliveries/{}/redeliver", encode_component(&id)),
        ),
    };
    Request {
        method,
        path,
        body: None,
        columns: DELIVERY_COLUMNS,
    }
}

fn key_request(action: KeyCommand) -> Result<Request> {
    let (method, path, body) = match action {
        KeyCommand::Create {
            organization_id,
            description,
        } => (
            "POST",
            "/api/keys".to_owned(),
            Some(
                json!({"organization_id": organization_id, "description": description.unwrap_or_default()}),
            ),
        ),
        KeyCommand::List => ("GET", "/api/keys".to_owned(), None),
        KeyCommand::Delete { id } => (
            "DELETE",
            format!("/api/keys/{}", encode_component(&id)),
            None,
        ),
    };
    Ok(Request {
        method,
        path,
        body: body.map(|b| b.to_string().into_bytes()),
        columns: KEY_COLUMNS,
    })
}

fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) if s.is_empty() => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        // A disabled webhook's `disabled` object: its reason.
        Value::Object(map) if map.contains_key("reason") => cell(&map["reason"]),
        other => other.to_string(),
    }
}

fn print_table(rows: &[Value], columns: &[&str]) {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| columns.iter().map(|c| cell(&r[*c])).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
                .max(c.len())
        })
        .collect();
    let line = |values: Vec<String>| {
        let padded: Vec<String> = values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        out!("{}", padded.join("  ").trim_end());
    };
    line(columns.iter().map(|c| c.to_uppercase()).collect());
    for row in cells {
        line(row);
    }
}

fn print_human(value: &Value, columns: &[&str]) {
    match value {
        Value::Null => out!("done"),
        Value::Array(rows) => print_table(rows, columns),
        Value::Object(map) if map.get("data").is_some_and(Value::is_array) => {
            print_table(
                map["data"].as_array().map_or(&[][..], Vec::as_slice),
                columns,
            );
            if let Some(cursor) = map.get("next_cursor").and_then(Value::as_str) {
                out!("\nnext page: --cursor {cursor}");
            }
        }
        Value::Object(map) => {
            print_object(map, "");
            if map.contains_key("secret") || map.contains_key("key") {
                out!("\nStore this secret now: it is shown only once.");
            }
        }
        other => out!("{other}"),
    }
}

/// Prints an object's scalar fields as `key: value` lines first, then its nested objects
/// (indented) and lists of objects (as tables).
fn print_object(map: &serde_json::Map<String, Value>, indent: &str) {
    for (key, v) in map {
        match v {
            Value::Object(_) => {}
            Value::Array(rows) if rows.first().is_some_and(Value::is_object) => {}
            Value::Array(rows) if rows.is_empty() && key == "failure_streaks" => {
                out!("{indent}{key}: none")
            }
            _ if key == "data" || key == "filter" => out!("{indent}{key}: {v}"),
            _ => out!("{indent}{key}: {}", cell(v)),
        }
    }
    for (key, v) in map {
        match v {
            // An event's data and a webhook's filter read best as the JSON they are.
            Value::Object(inner) if key == "data" || key == "filter" => {
                out!("{indent}{key}: {}", Value::Object(inner.clone()))
            }
            Value::Object(inner) => {
                out!("{indent}{key}:");
                print_object(inner, &format!("{indent}  "));
            }
            Value::Array(rows) if rows.first().is_some_and(Value::is_object) => {
                out!("{indent}{key}:");
                let columns = match key.as_str() {
                    "attempts" => ATTEMPT_COLUMNS,
                    "failure_streaks" => &["webhook_id", "organization_id", "streak", "url"][..],
                    "daemons" => &["id", "address"][..],
                    "headers" => &["name", "value", "secret"][..],
                    _ => &["id", "webhook_id", "status"][..],
                };
                print_table(rows, columns);
            }
            _ => {}
        }
    }
}
