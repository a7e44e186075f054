//! Online backup (issue 7, item 5): a consistent copy of the store written to a new redb
//! file while the daemon runs.
//!
//! Owner's rule: the copy is read from ONE read transaction, so it is the state after some
//! commit and before the next (never a torn copy), whatever is written meanwhile; the new file
//! is written in one transaction and committed with fsync before the call returns. Sealed
//! secrets are copied sealed: the backup needs the same `--secrets-key-file` to be served.

use std::path::Path;

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle};

use super::{
    Store, StoreError, API_KEYS, API_KEY_HASHES, ATTEMPTS, DELIVERIES, EVENTS, EVENT_IDS, META,
    ORG_EVENTS, ORG_WEBHOOKS, RETRY_INDEX, WEBHOOKS, WEBHOOK_DELIVERIES,
};

/// Every table of the layout, by name; [`Store::backup_to`] copies each.
const TABLES: [&str; 12] = [
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
    "api_keys",
    "api_key_hashes",
];

/// What [`Store::backup_to`] copied.
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

/// Copies every row of `table` from the snapshot into the new file's transaction.
fn copy<K, V>(
    from: &redb::ReadTransaction,
    to: &redb::WriteTransaction,
    table: TableDefinition<K, V>,
) -> Result<u64, StoreError>
where
    K: redb::Key + 'static,
    V: redb::Value + 'static,
{
    let source = from.open_table(table)?;
    let mut target = to.open_table(table)?;
    let mut rows = 0;
    for row in source.iter()? {
        let (k, v) = row?;
        target.insert(k.value(), v.value())?;
        rows += 1;
    }
    Ok(rows)
}

impl Store {
    /// Writes a consistent copy of the whole store to a new redb file at `path` (which must
    /// not exist), from one read transaction, committed with fsync. Meanwhile ingest and
    /// attempts go on: they commit after the snapshot and are not in the copy.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when `path` exists or cannot be created, or on a read or write
    /// failure (a partial file may then be left at `path`; the caller removes it).
    pub fn backup_to(&self, path: &Path) -> Result<BackupReport, StoreError> {
        let io = |e: std::io::Error| StoreError::Backend(Box::new(redb::Error::Io(e)));
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
        let target = redb::Database::create(path)?;
        let txn = target.begin_write()?;
        let mut report = BackupReport::default();
        report.rows += copy(&snapshot, &txn, META)?;
        report.rows += copy(&snapshot, &txn, WEBHOOKS)?;
        report.rows += copy(&snapshot, &txn, ORG_WEBHOOKS)?;
        report.rows += copy(&snapshot, &txn, EVENTS)?;
        report.rows += copy(&snapshot, &txn, ORG_EVENTS)?;
        report.rows += copy(&snapshot, &txn, EVENT_IDS)?;
        report.rows += copy(&snapshot, &txn, DELIVERIES)?;
        report.rows += copy(&snapshot, &txn, WEBHOOK_DELIVERIES)?;
        report.rows += copy(&snapshot, &txn, ATTEMPTS)?;
        report.rows += copy(&snapshot, &txn, RETRY_INDEX)?;
        report.rows += copy(&snapshot, &txn, API_KEYS)?;
        report.rows += copy(&snapshot, &txn, API_KEY_HASHES)?;
        report.events = txn.open_table(EVENTS)?.len()?;
        report.deliveries = txn.open_table(DELIVERIES)?.len()?;
        txn.commit()?;
        drop(target);
        report.bytes = std::fs::metadata(path).map_err(io)?.len();
        Ok(report)
    }
}
