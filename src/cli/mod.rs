//! The command line: `serve`, client subcommands that call a running daemon's API, and
//! offline tools (`check`, `gen-key`, `verify`, `listen`, completions and the man page).
//!
//! Owner's rule: the client speaks only the documented HTTP API (no store access), so what
//! the CLI can do, a script can do with curl; it sends the API's own request types and checks
//! every answer against the API's own answer types ([`crate::api::types`]), so the server,
//! the OpenAPI document and the CLI share one definition. Tables for people by default,
//! `--json` for scripts. Errors print the API's `status code: message` and exit 1.
//!
//! Rooms: [`client`] (connection flags, the HTTP client, requests), [`output`] (tables and
//! `key: value` lines), one file per noun for the arguments and requests ([`webhooks`],
//! [`options`], [`events`], [`deliveries`], [`keys`], [`jobs`]), and the commands that need
//! no daemon ([`offline`], [`verify`], [`listen`]).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

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

pub mod client;
mod deliveries;
mod events;
mod jobs;
mod keys;
pub mod listen;
pub mod offline;
mod options;
mod output;
pub mod verify;
mod webhooks;

pub use client::{ApiClient, ClientArgs, PageArgs};
pub use deliveries::{DeliveryCommand, ListDeliveries};
pub use events::EventCommand;
pub use jobs::JobCommand;
pub use keys::KeyCommand;
pub use offline::{run_check, run_gen_key, CheckArgs, GenKeyArgs};
pub use webhooks::WebhookCommand;

use crate::config::ServeArgs;
use client::Request;

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
        action: JobCommand,
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
    /// A local test receiver on `http://127.0.0.1:PORT/webhook-test`: checks both signature
    /// schemes and the timestamp, deduplicates on `event_id`, prints each event, and can
    /// fail or stall on purpose to watch the retry schedule (like `stripe listen`).
    Listen(listen::ListenArgs),
    /// Check a captured webhook request's signatures (support staff): says which signatures
    /// verify and, when one does not, why (wrong secret, body changed, stale timestamp).
    /// Exits 0 when the request verifies, 1 when it does not, 2 when it cannot be checked (a
    /// file missing, nothing to check).
    Verify(verify::VerifyArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the main man page (roff) to stdout, or with `--out-dir` write it and one page
    /// per subcommand (`palo-webhooks-listen.1`, ...) into a directory.
    Man {
        /// Write `palo-webhooks.1` and one `palo-webhooks-<command>.1` per subcommand here
        /// instead of printing the main page.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

/// The bytes of `path`, or of stdin for `-` (event files, captured requests, credentials).
///
/// # Errors
/// The file cannot be read (the message names it).
pub(crate) fn read_input(path: &std::path::Path) -> Result<Vec<u8>> {
    use anyhow::Context as _;
    if path.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)?;
        Ok(bytes)
    } else {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    }
}

/// Runs a client subcommand and prints its result.
///
/// # Errors
/// Any API or connection error, as `status code: message`; an answer that does not match
/// the API's answer type (a daemon of another version).
pub async fn run_client(command: Command) -> Result<()> {
    let (client_args, request) = match command {
        Command::Webhooks { client, action } => (client, webhooks::webhook_request(action)?),
        Command::Events { client, action } => {
            if let EventCommand::Send { file } = action {
                return events::send(&client, &file).await;
            }
            (client, events::event_request(action)?)
        }
        Command::Deliveries { client, action } => (client, deliveries::delivery_request(action)),
        Command::Keys { client, action } => (client, keys::key_request(action)?),
        Command::Jobs { client, action } => (client, jobs::job_request(action)?),
        Command::Backup { client, out } => return client::backup(&client, &out).await,
        Command::Status { client } => (
            client,
            Request::without_body::<crate::api::admin::StatusOut>(
                "GET",
                "/api/admin/status".to_owned(),
                output::STREAK_COLUMNS,
            ),
        ),
        Command::Listen(args) => return listen::run(args).await,
        _ => bail!("not a client command"),
    };
    let api = ApiClient::new(&client_args)?;
    let value = api.send(&request).await?;
    if client_args.json {
        out!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        output::print_human(&value, request.columns);
        if let Some(note) = request.note {
            out!("\n{note}");
        }
    }
    Ok(())
}
