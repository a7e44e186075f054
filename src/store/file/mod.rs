//! The store: every piece of state in one redb file.
//!
//! Owner's rule: this is the only module that imports redb. It offers domain operations
//! (`accept_event`, `record_attempt`, `due_entries`, ...), never tables. Every call is
//! synchronous and may block on disk or on another write transaction: async callers run it
//! on a blocking thread (`tokio::task::spawn_blocking`). Every write is one transaction
//! committed with `Durability::Immediate` (fsync) before the call returns, so an answer
//! given after a write never speaks of data that a crash could lose.
//!
//! Layout (see docs/ARCHITECTURE.md): records are postcard-encoded versioned enums
//! ([`records`]); ids are the ULID's `u128`, so every id-keyed table is in creation order.
//! Architecture invariant: a delivery that is not final has exactly one entry in
//! `retry_index`, keyed `(next_attempt_at_ms, delivery id)`; a final one has none.

mod backup;
mod check;
mod deliveries;
mod due;
mod jobs;
mod lifecycle;
mod ordering;
mod payload;
mod records;
mod retention;
mod search;
mod slot;
mod status;
mod writer;

use std::path::Path;

use crate::store::sealed;
pub(crate) use crate::store::StoreError;

use redb::{
    ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

use crate::ids::{KeyId, WebhookId};
use crate::model::{ApiKey, Webhook, WebhookChanges};
use records::{decode, encode, ApiKeyRecord, WebhookRecord};

pub use backup::BackupReport;
pub use check::{CheckReport, TableSpace};
pub use deliveries::{AcceptOutcome, DeliveryForAttempt, EventQuery, FanOut, WebhookActivity};
pub use due::{ClampReport, DueRead};
pub use retention::PurgeReport;
pub use status::{FailureStreak, StatusSummary, MAX_STREAK};
pub use writer::{Change, CommitStats, Subscriber, Txn, MAX_BATCH};

pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(crate) const WEBHOOKS: TableDefinition<u128, &[u8]> = TableDefinition::new("webhooks");
pub(crate) const ORG_WEBHOOKS: TableDefinition<(&str, u128), ()> =
    TableDefinition::new("org_webhooks");
pub(crate) const EVENTS: TableDefinition<u128, &[u8]> = TableDefinition::new("events");
pub(crate) const ORG_EVENTS: TableDefinition<(&str, u128), ()> = TableDefinition::new("org_events");
/// `(event_id, organization_id) -> event key`: idempotency and lookup by `event_id`.
pub(crate) const EVENT_IDS: TableDefinition<(&str, &str), u128> = TableDefinition::new("event_ids");
pub(crate) const DELIVERIES: TableDefinition<u128, &[u8]> = TableDefinition::new("deliveries");
pub(crate) const WEBHOOK_DELIVERIES: TableDefinition<(u128, u128), ()> =
    TableDefinition::new("webhook_deliveries");
pub(crate) const ATTEMPTS: TableDefinition<(u128, u32), &[u8]> = TableDefinition::new("attempts");
/// `(due ms since the epoch, delivery id)`: what the scheduler must attempt, in due order.
pub(crate) const RETRY_INDEX: TableDefinition<(u64, u128), ()> =
    TableDefinition::new("retry_index");
/// `(webhook, due ms since the epoch, delivery id)`: the retry index again, per webhook, so
/// the scheduler reads each webhook's due work in due order from where it stopped (issue 13).
/// Same entries as [`RETRY_INDEX`], written and removed in the same transactions.
pub(crate) const WEBHOOK_DUE: TableDefinition<(u128, u64, u128), ()> =
    TableDefinition::new("webhook_due");
/// `(webhook, delivery) -> due ms`: the held deliveries of disabled webhooks (issue 15), with
/// the due time each had, so enabling puts them back in due order.
pub(crate) const HELD: TableDefinition<(u128, u128), u64> = TableDefinition::new("held");
/// `webhook -> discard-through delivery id (0: none)`: webhooks whose lifecycle change left
/// deliveries to hold, release or cancel, a chunk per transaction (`lifecycle::sweep_held`).
pub(crate) const HELD_SWEEPS: TableDefinition<u128, u128> = TableDefinition::new("held_sweeps");
/// Recovery and replay jobs (issue 15): id → record, what each queued, and what it waits for.
pub(crate) const JOBS: TableDefinition<u128, &[u8]> = TableDefinition::new("jobs");
pub(crate) const JOB_ITEMS: TableDefinition<(u128, u128), ()> = TableDefinition::new("job_items");
pub(crate) const JOB_OUTSTANDING: TableDefinition<(u128, u128), ()> =
    TableDefinition::new("job_outstanding");
pub(crate) const API_KEYS: TableDefinition<u128, &[u8]> = TableDefinition::new("api_keys");
pub(crate) const API_KEY_HASHES: TableDefinition<&[u8], u128> =
    TableDefinition::new("api_key_hashes");

/// redb's page cache, in bytes (64 MiB). redb's default is 1 GiB, which a draining backlog
/// fills: the cache is resident memory, while the OS page cache serves misses just as well.
pub const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// The layout version written in `meta` on creation.
const LAYOUT_VERSION: &[u8] = b"1";

macro_rules! backend_error {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                match redb::Error::from(e) {
                    redb::Error::DatabaseAlreadyOpen => StoreError::Locked,
                    other => StoreError::Backend(other.to_string()),
                }
            }
        }
    )*};
}
backend_error!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// The handle to the open database. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct FileStore {
    slot: std::sync::Arc<slot::Slot>,
    writer: writer::Writer,
    /// Every API key by its hash, loaded at open and kept in step with each committed
    /// create/delete: authentication never reads the file, so it answers 401/403 correctly
    /// even while the store is failing (disk full).
    keys: std::sync::RwLock<std::collections::HashMap<[u8; 32], ApiKey>>,
    /// Seals webhook secrets at rest when set (`--secrets-key-file`).
    secrets_key: Option<std::sync::Arc<sealed::SecretsKey>>,
}

impl FileStore {
    /// Opens the database at `path`, creating it and its tables if missing.
    ///
    /// # Errors
    /// [`StoreError::Locked`] if another process has it open; [`StoreError::Backend`] on I/O
    /// errors; [`StoreError::UnsupportedLayout`] for a file of a newer layout.
    pub fn open(path: &Path) -> Result<FileStore, StoreError> {
        let store = FileStore::with_slot(slot::Slot::open(path)?, None)?;
        store.reconcile_sealing(None)?;
        Ok(store)
    }

    /// [`FileStore::open`] for tools (`migrate`): secrets are left as stored (sealed or
    /// not), never checked nor resealed, so no key is needed.
    pub fn open_for_tools(path: &Path) -> Result<FileStore, StoreError> {
        FileStore::with_slot(slot::Slot::open(path)?, None)
    }

    /// [`FileStore::open`] with webhook secrets sealed at rest under `key` (issue 5, item 6).
    /// Secrets stored in plain text (written before a key was set) are sealed at once, and
    /// so are secrets sealed with `previous` (a key being replaced), all in one transaction.
    ///
    /// # Errors
    /// As [`FileStore::open`]; [`StoreError::SecretsKeyRequired`] when the file holds sealed
    /// secrets and `key` is `None`; [`StoreError::Sealed`] when one opens with neither
    /// `key` nor `previous`.
    pub fn open_with_secrets_key(
        path: &Path,
        key: Option<sealed::SecretsKey>,
        previous: Option<sealed::SecretsKey>,
    ) -> Result<FileStore, StoreError> {
        let store = FileStore::with_slot(slot::Slot::open(path)?, key)?;
        store.reconcile_sealing(previous)?;
        Ok(store)
    }

    /// A store in memory (redb's in-memory backend), for fuzzing and tests: same tables,
    /// same writer, nothing on disk.
    ///
    /// # Errors
    /// As [`FileStore::open`].
    #[doc(hidden)]
    pub fn open_in_memory() -> Result<FileStore, StoreError> {
        FileStore::with_slot(slot::Slot::in_memory()?, None)
    }

    fn with_slot(
        slot: slot::Slot,
        key: Option<sealed::SecretsKey>,
    ) -> Result<FileStore, StoreError> {
        let slot = std::sync::Arc::new(slot);
        let writer = writer::Writer::start(std::sync::Arc::clone(&slot)).map_err(|e| {
            StoreError::CommitFailed(format!("cannot start the writer thread: {e}"))
        })?;
        let store = FileStore {
            slot,
            writer,
            keys: std::sync::RwLock::default(),
            secrets_key: key.map(std::sync::Arc::new),
        };
        store.write(|txn| {
            let mut meta = txn.open_table(META)?;
            let layout = meta.get("layout")?.map(|v| v.value().to_vec());
            match layout {
                None => {
                    meta.insert("layout", LAYOUT_VERSION)?;
                }
                Some(v) if v == LAYOUT_VERSION => {}
                Some(v) => {
                    return Err(StoreError::UnsupportedLayout(
                        String::from_utf8_lossy(&v).into_owned(),
                    ))
                }
            }
            drop(meta);
            txn.open_table(WEBHOOKS)?;
            txn.open_table(ORG_WEBHOOKS)?;
            txn.open_table(EVENTS)?;
            txn.open_table(ORG_EVENTS)?;
            txn.open_table(EVENT_IDS)?;
            txn.open_table(DELIVERIES)?;
            txn.open_table(WEBHOOK_DELIVERIES)?;
            txn.open_table(ATTEMPTS)?;
            txn.open_table(RETRY_INDEX)?;
            txn.open_table(API_KEYS)?;
            txn.open_table(API_KEY_HASHES)?;
            txn.open_table(HELD)?;
            txn.open_table(HELD_SWEEPS)?;
            txn.open_table(JOBS)?;
            txn.open_table(JOB_ITEMS)?;
            txn.open_table(JOB_OUTSTANDING)?;
            txn.open_table(search::DELIVERY_SEARCH)?;
            txn.open_table(ordering::ORDERING)?;
            build_webhook_due(txn)?;
            search::build_delivery_search(txn)
        })?;
        let keys = store.list_api_keys()?;
        *store.keys_mut() = keys.into_iter().map(|k| (k.key_hash, k)).collect();
        Ok(store)
    }

    /// At open: with a key, every webhook secret must open with it or with `previous`, and
    /// plain ones and those of `previous` are sealed with it now (one transaction); without a
    /// key, no secret may be sealed.
    fn reconcile_sealing(&self, previous: Option<sealed::SecretsKey>) -> Result<(), StoreError> {
        let key = self.secrets_key.clone();
        let sealed = self.write(move |txn| {
            let mut table = txn.open_table(WEBHOOKS)?;
            let mut rows = Vec::new();
            for row in table.iter()? {
                let (id, bytes) = row?;
                rows.push((WebhookId(id.value()), bytes.value().to_vec()));
            }
            let mut sealed_now = 0usize;
            for (id, bytes) in rows {
                let resealed = sealed::reseal(key.as_deref(), previous.as_ref(), |k| {
                    decode::<WebhookRecord>("webhooks", &bytes)?.into_domain(id, k)
                })?;
                if let Some(webhook) = resealed {
                    table.insert(
                        id.0,
                        encode(&WebhookRecord::from_domain(&webhook, key.as_deref())).as_slice(),
                    )?;
                    sealed_now += 1;
                }
            }
            Ok(sealed_now)
        })?;
        sealed::log_resealed(sealed);
        Ok(())
    }

    fn keys_mut(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, std::collections::HashMap<[u8; 32], ApiKey>> {
        self.keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `f` in the writer thread's next transaction (group commit, see [`writer`]) and
    /// returns once that transaction is durably committed (fsync). Blocks the caller. `f`
    /// must not return `Err` after a partial write unless the whole batch may be aborted,
    /// which is what happens: every write of the batch then fails and nothing is written.
    fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Txn<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        self.writer.write(f)
    }

    /// [`FileStore::write`] for async callers on hot paths (ingest, attempt results): the task
    /// waits for the group commit without holding a blocking-pool thread, so many waiting
    /// writes share one commit.
    async fn write_async<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Txn<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        self.writer.write_async(f).await
    }

    /// See [`Store::size_bytes`](crate::store::Store::size_bytes).
    pub fn size_bytes(&self) -> Result<u64, StoreError> {
        Ok(self.slot.size_bytes())
    }

    /// See [`Store::is_writable`](crate::store::Store::is_writable).
    pub fn is_writable(&self) -> bool {
        self.slot.is_writable()
    }

    /// See [`Store::recover`](crate::store::Store::recover).
    pub fn recover(&self) -> Result<(), StoreError> {
        self.writer.recover()
    }

    /// See [`Store::subscribe`](crate::store::Store::subscribe).
    pub fn subscribe(&self, subscriber: Subscriber) -> bool {
        self.writer.subscribe(subscriber)
    }

    /// See [`Store::commit_stats`](crate::store::Store::commit_stats).
    pub fn commit_stats(&self) -> &CommitStats {
        self.writer.stats()
    }

    fn secrets_key(&self) -> Option<&sealed::SecretsKey> {
        self.secrets_key.as_deref()
    }

    /// Runs `f` on a consistent snapshot.
    fn read<T>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let db = self.slot.get()?;
        let txn = db.begin_read()?;
        f(&txn)
    }

    /// See [`Store::create_webhook`](crate::store::Store::create_webhook).
    pub fn create_webhook(&self, webhook: &Webhook) -> Result<(), StoreError> {
        let webhook = webhook.clone();
        let key = self.secrets_key.clone();
        self.write(move |txn| {
            let webhook = &webhook;
            txn.open_table(WEBHOOKS)?.insert(
                webhook.id.0,
                encode(&WebhookRecord::from_domain(webhook, key.as_deref())).as_slice(),
            )?;
            txn.open_table(ORG_WEBHOOKS)?
                .insert((webhook.organization_id.as_str(), webhook.id.0), ())?;
            txn.publish(Change::Webhook {
                id: webhook.id,
                webhook: Some(std::sync::Arc::new(webhook.clone())),
            });
            Ok(())
        })
    }

    /// See [`Store::get_webhook`](crate::store::Store::get_webhook).
    pub fn get_webhook(&self, id: WebhookId) -> Result<Option<Webhook>, StoreError> {
        self.read(|txn| get_webhook(&txn.open_table(WEBHOOKS)?, id, self.secrets_key()))
    }

    /// See [`Store::list_webhooks`](crate::store::Store::list_webhooks).
    pub fn list_webhooks(
        &self,
        organization_id: Option<&str>,
        after: Option<WebhookId>,
        limit: usize,
    ) -> Result<Vec<Webhook>, StoreError> {
        let start = after.map_or(0, |id| id.0.saturating_add(1));
        self.read(|txn| {
            let webhooks = txn.open_table(WEBHOOKS)?;
            let ids: Vec<u128> = match organization_id {
                Some(org) => txn
                    .open_table(ORG_WEBHOOKS)?
                    .range((org, start)..=(org, u128::MAX))?
                    .take(limit)
                    .map(|row| row.map(|(k, _)| k.value().1))
                    .collect::<Result<_, _>>()?,
                None => webhooks
                    .range(start..)?
                    .take(limit)
                    .map(|row| row.map(|(k, _)| k.value()))
                    .collect::<Result<_, _>>()?,
            };
            ids.into_iter()
                .filter_map(|id| {
                    get_webhook(&webhooks, WebhookId(id), self.secrets_key()).transpose()
                })
                .collect()
        })
    }

    /// See [`Store::all_webhooks`](crate::store::Store::all_webhooks).
    pub fn all_webhooks(&self) -> Result<Vec<Webhook>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(WEBHOOKS)?;
            let mut out = Vec::new();
            for row in table.iter()? {
                let (id, _) = row?;
                if let Some(webhook) =
                    get_webhook(&table, WebhookId(id.value()), self.secrets_key())?
                {
                    out.push(webhook);
                }
            }
            Ok(out)
        })
    }

    /// See [`Store::update_webhook`](crate::store::Store::update_webhook).
    pub fn update_webhook(
        &self,
        id: WebhookId,
        changes: WebhookChanges,
        now_ms: u64,
    ) -> Result<Option<Webhook>, StoreError> {
        let key = self.secrets_key.clone();
        self.write(move |txn| {
            let mut table = txn.open_table(WEBHOOKS)?;
            let Some(mut webhook) = get_webhook(&table, id, key.as_deref())? else {
                return Ok(None);
            };
            changes.apply(&mut webhook, now_ms);
            put_webhook(txn, &mut table, &webhook, key.as_deref())?;
            Ok(Some(webhook))
        })
    }

    /// See [`Store::create_api_key`](crate::store::Store::create_api_key).
    pub fn create_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let stored = key.clone();
        self.write(move |txn| {
            let key = &stored;
            txn.open_table(API_KEYS)?
                .insert(key.id.0, encode(&ApiKeyRecord::from_domain(key)).as_slice())?;
            txn.open_table(API_KEY_HASHES)?
                .insert(key.key_hash.as_slice(), key.id.0)?;
            Ok(())
        })?;
        self.keys_mut().insert(key.key_hash, key.clone());
        Ok(())
    }

    /// See [`Store::list_api_keys`](crate::store::Store::list_api_keys).
    pub fn list_api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(API_KEYS)?;
            let mut keys = Vec::new();
            for row in table.iter()? {
                let (k, v) = row?;
                keys.push(
                    decode::<ApiKeyRecord>("api_keys", v.value())?.into_domain(KeyId(k.value())),
                );
            }
            Ok(keys)
        })
    }

    /// See [`Store::delete_api_key`](crate::store::Store::delete_api_key).
    pub fn delete_api_key(&self, id: KeyId) -> Result<bool, StoreError> {
        // The key stops authenticating before the commit, not a moment after it; it is put
        // back if the commit fails.
        let removed = {
            let mut keys = self.keys_mut();
            let hash = keys.iter().find(|(_, k)| k.id == id).map(|(h, _)| *h);
            hash.and_then(|h| keys.remove(&h))
        };
        let result = self.write(move |txn| {
            let Some(bytes) = txn
                .open_table(API_KEYS)?
                .remove(id.0)?
                .map(|v| v.value().to_vec())
            else {
                return Ok(false);
            };
            let key = decode::<ApiKeyRecord>("api_keys", &bytes)?.into_domain(id);
            txn.open_table(API_KEY_HASHES)?
                .remove(key.key_hash.as_slice())?;
            Ok(true)
        });
        if result.is_err() {
            if let Some(key) = removed {
                self.keys_mut().insert(key.key_hash, key);
            }
        }
        result
    }

    /// See [`Store::find_api_key`](crate::store::Store::find_api_key).
    pub fn find_api_key(&self, key_hash: &[u8; 32]) -> Result<Option<ApiKey>, StoreError> {
        Ok(self
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key_hash)
            .cloned())
    }
}

/// Fills `webhook_due` from the retry index when it is empty and the index is not: a file
/// written before issue 13 gets the per-webhook index at its first open.
/// Rewrites a webhook's record (secrets sealed with `key`) and publishes the change.
pub(super) fn put_webhook(
    txn: &Txn<'_>,
    table: &mut redb::Table<'_, u128, &'static [u8]>,
    webhook: &Webhook,
    key: Option<&sealed::SecretsKey>,
) -> Result<(), StoreError> {
    table.insert(
        webhook.id.0,
        encode(&WebhookRecord::from_domain(webhook, key)).as_slice(),
    )?;
    txn.publish(Change::Webhook {
        id: webhook.id,
        webhook: Some(std::sync::Arc::new(webhook.clone())),
    });
    Ok(())
}

fn build_webhook_due(txn: &Txn<'_>) -> Result<(), StoreError> {
    let mut by_webhook = txn.open_table(WEBHOOK_DUE)?;
    let index = txn.open_table(RETRY_INDEX)?;
    if !by_webhook.is_empty()? || index.is_empty()? {
        return Ok(());
    }
    let deliveries = txn.open_table(DELIVERIES)?;
    let mut built = 0u64;
    for row in index.iter()? {
        let (key, _) = row?;
        let (due, id) = key.value();
        if let Some(delivery) = deliveries::load_delivery(&deliveries, crate::ids::DeliveryId(id))?
        {
            by_webhook.insert((delivery.webhook_id.0, due, id), ())?;
            built += 1;
        }
    }
    tracing::info!(
        entries = built,
        "built the per-webhook due index from the retry index"
    );
    Ok(())
}

/// The webhook `id` from its table, secrets opened with `key`.
fn get_webhook(
    table: &impl ReadableTable<u128, &'static [u8]>,
    id: WebhookId,
    key: Option<&sealed::SecretsKey>,
) -> Result<Option<Webhook>, StoreError> {
    match table.get(id.0)? {
        None => Ok(None),
        Some(bytes) => Ok(Some(
            decode::<WebhookRecord>("webhooks", bytes.value())?.into_domain(id, key)?,
        )),
    }
}

/// Decodes `bytes` as a stored record of `table` (`webhooks`, `events`, `deliveries`,
/// `attempts`, `api_keys`) and converts it to its domain type, the way reads do: for the
/// record-decoding fuzz target. Never panics on any input.
///
/// # Errors
/// [`StoreError::Corrupt`] for bytes that are not such a record, or an unknown table.
#[doc(hidden)]
pub fn decode_record(table: &str, bytes: &[u8]) -> Result<(), StoreError> {
    use crate::ids::{DeliveryId, EventKey};
    match table {
        "webhooks" => decode::<WebhookRecord>("webhooks", bytes)?
            .into_domain(WebhookId(1), None)
            .map(drop),
        "events" => decode::<records::EventRecord>("events", bytes)?
            .into_domain(EventKey(1))
            .map(drop),
        "deliveries" => decode::<records::DeliveryRecord>("deliveries", bytes)?
            .into_domain(DeliveryId(1))
            .map(drop),
        "attempts" => decode::<records::AttemptRecord>("attempts", bytes)?
            .into_domain(1)
            .map(drop),
        "api_keys" => {
            decode::<ApiKeyRecord>("api_keys", bytes)?.into_domain(KeyId(1));
            Ok(())
        }
        _ => Err(StoreError::Corrupt {
            table: "unknown",
            reason: format!("no record type for table {table:?}"),
        }),
    }
}

/// Encodes a delivery as a stored record and decodes it back: the codec cost per delivery,
/// for the micro-benchmark (`benches/micro.rs`).
///
/// # Errors
/// [`StoreError::Corrupt`] if the record does not decode (a codec bug).
#[doc(hidden)]
pub fn roundtrip_delivery_record(
    delivery: &crate::model::Delivery,
) -> Result<crate::model::Delivery, StoreError> {
    let bytes = encode(&records::DeliveryRecord::from_domain(delivery));
    decode::<records::DeliveryRecord>("deliveries", &bytes)?.into_domain(delivery.id)
}
