//! `palo-webhooks migrate --from FILE.redb --to postgres://…` (issue 14, item 5): copies a
//! stopped daemon's redb store into a PostgreSQL database.
//!
//! Owner's rule: reads the file through the store's own operations and writes through
//! [`crate::store::postgres::PgStore::import`], one transaction per page of events
//! ([`PAGE`]) with their deliveries and attempts. Rows that exist are skipped, and a page
//! whose events exist is not read again, so an interrupted copy resumes by running the same
//! command. At the end the two stores' counts are compared and the target's invariants are
//! checked (`check`); the command fails unless both agree. Secrets are copied as stored:
//! sealed ones stay sealed, so the daemons on PostgreSQL need the same `--secrets-key-file`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::ids::EventKey;
use crate::store::postgres::{ImportBatch, PgOptions};
use crate::store::{EventQuery, Store};

/// Events copied per transaction.
pub const PAGE: usize = 1000;

/// Options of `palo-webhooks migrate`.
#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    /// The redb file to copy (stop its daemon first: the file is locked while it runs).
    #[arg(long)]
    pub from: PathBuf,
    /// The PostgreSQL database to copy into (`postgres://user@host:port/database`); its
    /// schema is created if missing.
    #[arg(long, hide_env_values = true)]
    pub to: String,
    /// A file holding the PostgreSQL password; or set PALO_WEBHOOKS_STORE_PASSWORD.
    #[arg(long, env = "PALO_WEBHOOKS_STORE_PASSWORD_FILE")]
    pub store_password_file: Option<PathBuf>,
}

/// Runs the copy, printing progress on stderr and the verdict on stdout. Returns whether
/// the counts agree and the target passes its check.
///
/// # Errors
/// The file cannot be opened (missing, or locked by a running daemon), the database cannot
/// be reached, or a read or write fails (what was committed stays; run it again).
pub fn run_migrate(args: &MigrateArgs) -> Result<bool> {
    if !args.from.is_file() {
        bail!("no database file at {}", args.from.display());
    }
    if std::fs::metadata(&args.from).map_or(0, |m| m.len()) == 0 {
        bail!(
            "{} is empty: not a palo-webhooks store",
            args.from.display()
        );
    }
    let options = PgOptions::from_url(&args.to, args.store_password_file.as_deref())
        .map_err(|e| anyhow::anyhow!("--to: {e}"))?;
    let from = Store::open_file_for_tools(&args.from).with_context(|| {
        format!(
            "cannot open {} (a palo-webhooks redb file whose daemon is stopped)",
            args.from.display()
        )
    })?;
    let to_store = Store::open_postgres_for_tools(&options, true)
        .with_context(|| format!("cannot open {}", options.describe()))?;
    let Some(to) = to_store.as_postgres() else {
        bail!("--to must be a PostgreSQL store");
    };
    let webhooks = from.all_webhooks()?;
    let api_keys = from.list_api_keys()?;
    eprintln!(
        "copying {} webhooks and {} API keys",
        webhooks.len(),
        api_keys.len()
    );
    to.import(ImportBatch {
        webhooks,
        api_keys,
        ..ImportBatch::default()
    })?;
    let mut before: Option<EventKey> = None;
    let (mut copied, mut skipped) = (0u64, 0u64);
    loop {
        let events = from.list_events(&EventQuery::default(), before, PAGE)?;
        let Some(last) = events.last() else {
            break;
        };
        before = Some(last.key);
        let keys: Vec<EventKey> = events.iter().map(|e| e.key).collect();
        let present: std::collections::HashSet<EventKey> =
            to.existing_events(&keys)?.into_iter().collect();
        let mut batch = ImportBatch::default();
        for event in events {
            if present.contains(&event.key) {
                skipped += 1;
                continue;
            }
            let mut deliveries = Vec::with_capacity(event.delivery_ids.len());
            for id in &event.delivery_ids {
                if let Some((delivery, attempts)) = from.get_delivery_with_attempts(*id)? {
                    batch
                        .attempts
                        .extend(attempts.into_iter().map(|a| (delivery.id, a)));
                    deliveries.push(delivery);
                }
            }
            batch.events.push((event, deliveries));
        }
        copied += batch.events.len() as u64;
        if !batch.events.is_empty() {
            to.import(batch)?;
        }
        eprintln!("  {copied} events copied, {skipped} already there");
    }
    // A disable or enable whose deliveries were still being moved is moved on there.
    let resumed = to.resume_sweeps()?;
    if resumed > 0 {
        eprintln!("  {resumed} webhooks' held deliveries left to move (the daemon moves them)");
    }
    let source = from.check()?;
    let target = to_store.check()?;
    let pairs = [
        ("webhooks", source.webhooks, target.webhooks),
        ("events", source.events, target.events),
        ("deliveries", source.deliveries, target.deliveries),
        ("attempts", source.attempts, target.attempts),
        ("api keys", source.api_keys, target.api_keys),
    ];
    let mut agree = true;
    for (what, a, b) in pairs {
        println!(
            "{what}: {a} in {}, {b} in {}",
            args.from.display(),
            options.describe()
        );
        agree &= a == b;
    }
    for violation in &target.violations {
        println!("violation in the target: {violation}");
    }
    if agree && target.is_ok() {
        println!("ok: every row is in PostgreSQL and its invariants hold");
        Ok(true)
    } else if !agree {
        println!("FAILED: the counts differ (did the target hold other data, or the file change?)");
        Ok(false)
    } else {
        println!(
            "FAILED: {} violation(s) in the target",
            target.violation_count
        );
        Ok(false)
    }
}
