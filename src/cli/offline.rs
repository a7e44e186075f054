//! The commands that need no daemon: `gen-key`, `check`, and the shell completions and man
//! pages generated from the command line's own definition (clap_complete, clap_mangen).

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde_json::json;

use crate::store::{Store, StoreError};

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

/// `palo-webhooks completions SHELL`: the completion script of `shell` on stdout.
pub fn print_completions(shell: clap_complete::Shell) {
    let mut command = <super::Cli as clap::CommandFactory>::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "palo-webhooks", &mut script);
    // A closed stdout (`| head`) ends the command quietly, as for every other output.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
}

/// `palo-webhooks man [--out-dir DIR]`: the main man page (section 1, roff) on stdout, or
/// `palo-webhooks.1` and one `palo-webhooks-<subcommand>.1` per subcommand (nested ones
/// joined by `-`) written into `DIR`.
///
/// # Errors
/// Writing fails.
pub fn write_man(out_dir: Option<&std::path::Path>) -> Result<()> {
    let command = <super::Cli as clap::CommandFactory>::command();
    match out_dir {
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(command).render(&mut page)?;
            std::io::Write::write_all(&mut std::io::stdout(), &page)?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(command, dir)
                .with_context(|| format!("cannot write the man pages into {}", dir.display()))?;
        }
    }
    Ok(())
}
