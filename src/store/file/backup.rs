//! Online backup (issue 7, item 5): a consistent copy of the store written to a new redb
//! file while the daemon runs.
//!
//! Owner's rule: the copy is read from ONE read transaction, so it is the state after some
//! commit and before the next (never a torn copy), whatever is written meanwhile; every write
//! to the new file is committed with fsync before the call returns. Sealed
//! secrets are copied sealed: the backup needs the same `--secrets-key-file` to be served.
//! The new file is written in transactions of [`ROWS_PER_COMMIT`] rows with a small cache, so
//! a backup's memory does not grow with the store; it is complete once `backup_to` returns.

use std::path::Path;

use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

use super::search::DELIVERY_SEARCH;
use super::{
    FileStore, StoreError, API_KEYS, API_KEY_HASHES, ATTEMPTS, DELIVERIES, EVENTS, EVENT_IDS, HELD,
    HELD_SWEEPS, JOBS, JOB_ITEMS, JOB_OUTSTANDING, META, ORG_EVENTS, ORG_WEBHOOKS, RETRY_INDEX,
    WEBHOOKS, WEBHOOK_DELIVERIES, WEBHOOK_DUE,
};

/// Every table of the layout, by name; [`FileStore::backup_to`] copies each.
const TABLES: [&str; 20] = [
    "meta",
    "webhooks",
    "org_webhooks",
    "events",
    "org_events",
    "event_ids",
    "deliveries",
    "webhook_deliveries",
    "attempts",
    "retry_index",
    "webhook_due",
    "api_keys",
    "api_key_hashes",
    "held",
    "held_sweeps",
    "jobs",
    "job_items",
    "job_outstanding",
    "delivery_search",
    "ordering",
];

/// What [`FileStore::backup_to`] copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackupReport {
    /// Events in the copy.
    pub events: u64,
    /// Deliveries in the copy.
    pub deliveries: u64,
    /// Rows copied, all tables together.
    pub rows: u64,
    /// Size of the new file, bytes.
    pub bytes: u64,
}

/// Rows per transaction of the new file: the copy commits as it goes, so its dirty pages
/// never pile up in memory (a whole-store transaction held about the copy's size).
const ROWS_PER_COMMIT: u64 = 50_000;

/// redb's page cache for the new file: small, the copy is written once and not read.
const COPY_CACHE_BYTES: usize = 16 * 1024 * 1024;

/// Copies every row of `table` from the snapshot into the new file, committing every
/// [`ROWS_PER_COMMIT`] rows. The new file is only used once the last commit is done.
fn copy<K, V>(
    from: &redb::ReadTransaction,
    to: &redb::Database,
    table: TableDefinition<K, V>,
) -> Result<u64, StoreError>
where
    K: redb::Key + 'static,
    V: redb::Value + 'static,
{
    let source = from.open_table(table)?;
    let mut rows = 0;
    let mut txn = to.begin_write()?;
    let mut target = txn.open_table(table)?;
    for row in source.iter()? {
        let (k, v) = row?;
        target.insert(k.value(), v.value())?;
        rows += 1;
        if rows % ROWS_PER_COMMIT == 0 {
            drop(target);
            txn.commit()?;
            txn = to.begin_write()?;
            target = txn.open_table(table)?;
        }
    }
    drop(target);
    txn.commit()?;
    Ok(rows)
}

impl FileStore {
    /// See [`Store::backup_to`](crate::store::Store::backup_to).
    pub fn backup_to(&self, path: &Path) -> Result<BackupReport, StoreError> {
        let io = |e: std::io::Error| StoreError::Backend(redb::Error::Io(e).to_string());
        if path.exists() {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} already exists", path.display()),
            )));
        }
        let snapshot = self.slot.get()?.begin_read()?;
        // A table this copy does not know would be lost silently: refuse instead.
        for table in snapshot.list_tables()? {
            if !TABLES.contains(&table.name()) {
                return Err(StoreError::CommitFailed(format!(
                    "backup does not know table {:?}",
                    table.name()
                )));
            }
        }
        let target = redb::Database::builder()
            .set_cache_size(COPY_CACHE_BYTES)
            .create(path)?;
        let mut report = BackupReport::default();
        report.rows += copy(&snapshot, &target, META)?;
        report.rows += copy(&snapshot, &target, WEBHOOKS)?;
        report.rows += copy(&snapshot, &target, HELD)?;
        report.rows += copy(&snapshot, &target, HELD_SWEEPS)?;
        report.rows += copy(&snapshot, &target, ORG_WEBHOOKS)?;
        report.events = copy(&snapshot, &target, EVENTS)?;
        report.rows += report.events;
        report.rows += copy(&snapshot, &target, ORG_EVENTS)?;
        report.rows += copy(&snapshot, &target, EVENT_IDS)?;
        report.deliveries = copy(&snapshot, &target, DELIVERIES)?;
        report.rows += report.deliveries;
        report.rows += copy(&snapshot, &target, WEBHOOK_DELIVERIES)?;
        report.rows += copy(&snapshot, &target, ATTEMPTS)?;
        report.rows += copy(&snapshot, &target, RETRY_INDEX)?;
        report.rows += copy(&snapshot, &target, WEBHOOK_DUE)?;
        report.rows += copy(&snapshot, &target, API_KEYS)?;
        report.rows += copy(&snapshot, &target, API_KEY_HASHES)?;
        report.rows += copy(&snapshot, &target, JOBS)?;
        report.rows += copy(&snapshot, &target, JOB_ITEMS)?;
        report.rows += copy(&snapshot, &target, JOB_OUTSTANDING)?;
        report.rows += copy(&snapshot, &target, DELIVERY_SEARCH)?;
        report.rows += copy(&snapshot, &target, super::ordering::ORDERING)?;
        drop(target);
        report.bytes = std::fs::metadata(path).map_err(io)?.len();
        Ok(report)
    }
}
