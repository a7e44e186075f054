//! The store: every piece of state, behind one interface with two backends.
//!
//! Owner's rule: callers (the API, the scheduler, the CLI) use [`Store`]'s domain operations
//! (`accept_event`, `record_attempt`, `webhook_due_entries`, ...), never tables, and never
//! know which backend answers. [`file`] keeps everything in one redb file (the default: one
//! box, nothing else to run); [`postgres`] keeps it in a PostgreSQL database that several
//! daemons share (issue 14). Only `store::file` imports redb and only `store::postgres`
//! imports the PostgreSQL client (checked by `tests/it/layout.rs`).
//!
//! Every call is synchronous and may block on the disk, the network or another write
//! transaction, except `accept_event` and `record_attempt` (async, group-committed): async
//! callers run the others on a blocking thread ([`blocking`]). Every write is durable
//! (fsync, or PostgreSQL's commit with `synchronous_commit` on) before the call returns, so
//! an answer given after a write never speaks of data that a crash could lose.
//!
//! Invariants, on both backends (`palo-webhooks check` verifies them): a delivery that is
//! not final has exactly one retry-index entry, at its `next_attempt_at_ms`; a final one has
//! none; a delivery's attempts are numbered 1..=`attempt_count`; its event exists and lists
//! it; a delivery's `last_outcome` is its last attempt's, and the delivery search's index
//! ([`Store::search_deliveries`], issue 15) answers exactly what [`DeliverySearch::matches`]
//! says; an event whose payload was deleted (a tombstone, issue 15) has an empty body and no
//! unfinished delivery. See docs/ARCHITECTURE.md.

pub mod file;
mod options;
pub mod postgres;
pub mod sealed;
pub mod search;

use std::path::Path;

use crate::event::{EventType, PreparedEvent};
use crate::ids::{DeliveryId, EventKey, JobId, KeyId, WebhookId};
use crate::model::{
    ApiKey, Attempt, Delivery, DeliveryStatus, Disabled, Event, Webhook, WebhookChanges,
};
use crate::retry::RetrySchedule;

use file::FileStore;
pub use file::{
    decode_record, roundtrip_delivery_record, AcceptOutcome, BackupReport, Change, CheckReport,
    ClampReport, CommitStats, DeliveryForAttempt, DueRead, EventQuery, FailureStreak, FanOut,
    PurgeReport, StatusSummary, Subscriber, TableSpace, WebhookActivity, MAX_BATCH, MAX_STREAK,
};
use postgres::PgStore;
pub use search::DeliverySearch;

/// A change of a webhook's lifecycle ([`Store::set_webhook_lifecycle`], issue 15).
#[derive(Debug, Clone)]
pub enum Lifecycle {
    /// The daemon disables it: its deliveries are held.
    Disable(Disabled),
    /// A person enables it: held deliveries are delivered (`true`) or cancelled (`false`).
    Enable {
        /// Whether held deliveries go back to the retry index.
        deliver_held: bool,
    },
    /// The failing streak started at this time (ms since the epoch), or ended (`None`).
    FailingSince(Option<u64>),
}

/// What [`Store::set_webhook_lifecycle`] did.
#[derive(Debug, Clone)]
pub struct LifecycleOutcome {
    /// The webhook as stored now.
    pub webhook: Webhook,
    /// False when nothing changed (disabling a disabled webhook, enabling an enabled one).
    pub changed: bool,
    /// Deliveries concerned, counted just before the change: the unfinished ones a disable
    /// holds, the held ones an enable releases or cancels (the first [`HELD_CHUNK`] moved in
    /// the change's transaction, the rest by [`Store::sweep_held`]).
    pub deliveries: u64,
}

/// Deliveries a lifecycle change moves in its own transaction, and each webhook's share of a
/// [`Store::sweep_held`] step. At about 16 µs per delivery on redb (issue 15 measurements),
/// 256 keep every other writer's wait under about 5 ms however large the backlog.
pub const HELD_CHUNK: usize = 256;

/// What one [`Store::sweep_held`] step did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Deliveries held, released or cancelled by this step.
    pub moved: u64,
    /// Whether work may be left: call again (after letting other writers in).
    pub more: bool,
}

/// What one [`Store::blank_expired_payloads`] call did (issue 15, item 7).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BlankReport {
    /// Event bodies replaced by the tombstone.
    pub blanked: u64,
    /// Events old enough whose body was kept: a delivery of theirs is unfinished (or held)
    /// or changed after the cutoff.
    pub kept: u64,
    /// The oldest of those kept events: a later pass must look at it again, while every
    /// event before it (and after the call's `after`) is a tombstone now.
    pub first_kept: Option<EventKey>,
    /// The last event looked at.
    pub last_seen: Option<EventKey>,
    /// Where the next call should start: `Some` when the scan stopped at its limit with
    /// older events left to look at, `None` when everything before the cutoff was seen.
    pub resume_after: Option<EventKey>,
}

/// Errors of store operations. Callers branch on the variant; none carries secret data.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the database file open (redb's file lock).
    #[error("the database file is already open in another process (is a daemon running on it?)")]
    Locked,
    /// The backend failed: an I/O error, a full disk or corruption detected by redb; a lost
    /// connection or a server error from PostgreSQL. The text never holds credentials.
    #[error("storage error: {0}")]
    Backend(String),
    /// A record could not be decoded.
    #[error("corrupt record in table {table}: {reason}")]
    Corrupt {
        /// The table holding the record.
        table: &'static str,
        /// The decoder's complaint.
        reason: String,
    },
    /// The commit failed, or another write of the same group transaction failed; nothing of
    /// the transaction was written.
    #[error("commit failed: {0}")]
    CommitFailed(String),
    /// The operation's thread panicked or was cancelled; its transaction was not committed.
    #[error("the store operation was interrupted")]
    Interrupted,
    /// The file was not closed cleanly (crash, kill -9) and a read-only open cannot repair
    /// it; opening it read-write (as the daemon does at start) recovers it.
    #[error(
        "the database file was not closed cleanly and needs recovery (a read-write open does it)"
    )]
    NeedsRecovery,
    /// A secrets key problem: the key file, or a sealed secret that does not open with it.
    #[error(transparent)]
    Sealed(#[from] sealed::SealError),
    /// The file holds sealed webhook secrets but no key was given.
    #[error("the webhook secrets in this file are encrypted: start with --secrets-key-file (the key they were sealed with)")]
    SecretsKeyRequired,
    /// The operation exists only on the other backend (the online backup of the file
    /// backend, say); the text says what to do instead.
    #[error("{0}")]
    Unsupported(&'static str),
    /// The file was written by a newer, incompatible layout.
    #[error("unsupported store layout version {0:?}")]
    UnsupportedLayout(String),
}

/// The handle to the open store, whichever its backend. Cheap to share behind an `Arc`; all
/// methods take `&self`.
pub struct Store {
    backend: Backend,
}

enum Backend {
    File(FileStore),
    Postgres(PgStore),
}

impl Store {
    /// Opens the redb file at `path`, creating it and its tables if missing.
    ///
    /// # Errors
    /// [`StoreError::Locked`] if another process has it open; [`StoreError::Backend`] on I/O
    /// errors; [`StoreError::UnsupportedLayout`] for a file of a newer layout.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Ok(Store::from(FileStore::open(path)?))
    }

    /// [`Store::open`] with webhook secrets sealed at rest under `key` (issue 5, item 6).
    /// Secrets stored in plain text (written before a key was set) are sealed at once, and
    /// so are secrets sealed with `previous` (a key being replaced), all in one transaction.
    ///
    /// # Errors
    /// As [`Store::open`]; [`StoreError::SecretsKeyRequired`] when the file holds sealed
    /// secrets and `key` is `None`; [`StoreError::Sealed`] when one opens with neither
    /// `key` nor `previous`.
    pub fn open_with_secrets_key(
        path: &Path,
        key: Option<sealed::SecretsKey>,
        previous: Option<sealed::SecretsKey>,
    ) -> Result<Store, StoreError> {
        Ok(Store::from(FileStore::open_with_secrets_key(
            path, key, previous,
        )?))
    }

    /// A store in memory (redb's in-memory backend), for fuzzing and tests: same tables,
    /// same writer, nothing on disk.
    ///
    /// # Errors
    /// As [`Store::open`].
    #[doc(hidden)]
    pub fn open_in_memory() -> Result<Store, StoreError> {
        Ok(Store::from(FileStore::open_in_memory()?))
    }

    /// Connects to the PostgreSQL database of `options` (`--store postgres://…`), runs the
    /// embedded schema migrations that are missing, and loads the API keys; secrets are
    /// sealed and opened with `key` as on the file backend (`previous`: a key being replaced).
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the server cannot be reached or refuses the login (the
    /// message names the host and database, never the password); [`StoreError::Sealed`] /
    /// [`StoreError::SecretsKeyRequired`] as [`Store::open_with_secrets_key`].
    pub fn open_postgres(
        options: &postgres::PgOptions,
        key: Option<sealed::SecretsKey>,
        previous: Option<sealed::SecretsKey>,
    ) -> Result<Store, StoreError> {
        Ok(Store {
            backend: Backend::Postgres(PgStore::open(options, key, previous)?),
        })
    }

    /// [`Store::open`] for tools (`migrate`): no secrets key, secrets left as stored.
    ///
    /// # Errors
    /// As [`Store::open`].
    pub fn open_file_for_tools(path: &Path) -> Result<Store, StoreError> {
        Ok(Store::from(FileStore::open_for_tools(path)?))
    }

    /// [`Store::open_postgres`] for tools: no secrets key, and secrets are left as stored
    /// (sealed or not), never opened nor resealed. `create`: run the migrations (the target
    /// of `migrate`); without it the schema must exist (`check` writes nothing).
    ///
    /// # Errors
    /// As [`Store::open_postgres`]; [`StoreError::Backend`] without `create` when the
    /// database holds no palo-webhooks schema.
    pub fn open_postgres_for_tools(
        options: &postgres::PgOptions,
        create: bool,
    ) -> Result<Store, StoreError> {
        let how = if create {
            postgres::Open::Import
        } else {
            postgres::Open::Check
        };
        Ok(Store {
            backend: Backend::Postgres(PgStore::open_with(options, None, None, how)?),
        })
    }

    /// [`Store::check`] on a redb file opened read-only (redb's `ReadOnlyDatabase`): not one
    /// byte of the file is written, so it runs beside a daemon or on a copy.
    ///
    /// # Errors
    /// [`StoreError::NeedsRecovery`] when the file was not closed cleanly;
    /// [`StoreError::Backend`] for what is not a redb file.
    pub fn check_file_read_only(path: &Path) -> Result<CheckReport, StoreError> {
        FileStore::check_file_read_only(path)
    }

    /// Repairs a redb file that was not closed cleanly (opens it read-write and closes it).
    ///
    /// # Errors
    /// [`StoreError::Locked`] while a daemon has the file open; [`StoreError::Backend`] when
    /// the file cannot be repaired.
    pub fn recover_file(path: &Path) -> Result<(), StoreError> {
        FileStore::recover_file(path)
    }

    /// The backend's name for logs and status: `file` or `postgres`.
    pub fn backend_name(&self) -> &'static str {
        match &self.backend {
            Backend::File(_) => "file",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// The PostgreSQL backend, when this store is one (cluster status, `migrate`).
    pub fn as_postgres(&self) -> Option<&PgStore> {
        match &self.backend {
            Backend::File(_) => None,
            Backend::Postgres(s) => Some(s),
        }
    }
    /// Writes a consistent copy of the whole store to a new redb file at `path` (which must
    /// not exist), from one read transaction, committed with fsync (in batches of rows: the
    /// file is a usable copy only once this returns `Ok`). Meanwhile ingest and
    /// attempts go on: they commit after the snapshot and are not in the copy.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when `path` exists or cannot be created, or on a read or write
    /// failure (a partial file may then be left at `path`; the caller removes it).
    pub fn backup_to(&self, path: &Path) -> Result<BackupReport, StoreError> {
        match &self.backend {
            Backend::File(s) => s.backup_to(path),
            Backend::Postgres(s) => s.backup_to(path),
        }
    }

    /// Space used per table (one read snapshot): what a pending delivery costs on disk, for
    /// the benchmarks and `check`.
    ///
    /// # Errors
    /// [`StoreError`] when a table cannot be read.
    pub fn space(&self) -> Result<Vec<TableSpace>, StoreError> {
        match &self.backend {
            Backend::File(s) => s.space(),
            Backend::Postgres(s) => s.space(),
        }
    }

    /// Verifies every invariant over one snapshot (see the module docs). Takes time linear
    /// in the store's size; meant for `palo-webhooks check` on a stopped daemon's file.
    ///
    /// # Errors
    /// [`StoreError`] when a table cannot be read. A record that does not decode is a
    /// violation in the report, not an error.
    pub fn check(&self) -> Result<CheckReport, StoreError> {
        match &self.backend {
            Backend::File(s) => s.check(),
            Backend::Postgres(s) => s.check(),
        }
    }

    /// The start-up form of [`FileStore::check`]: compares table lengths only (no scan).
    /// Returns the disagreements in words; empty when consistent.
    ///
    /// # Errors
    /// [`StoreError`] when a table cannot be read.
    pub fn quick_check(&self) -> Result<Vec<String>, StoreError> {
        match &self.backend {
            Backend::File(s) => s.quick_check(),
            Backend::Postgres(s) => s.quick_check(),
        }
    }

    /// Accepts an event: checks idempotency on (organization, `event_id`), fans it out and
    /// stores the event, its deliveries and their retry-index entries (due at `first_due_ms`)
    /// in one durable commit.
    ///
    /// # Errors
    /// [`StoreError`] when the commit fails; nothing is written then.
    pub async fn accept_event(
        &self,
        prepared: PreparedEvent,
        fan_out: FanOut,
        now_ms: u64,
        first_due_ms: u64,
    ) -> Result<AcceptOutcome, StoreError> {
        match &self.backend {
            Backend::File(s) => {
                s.accept_event(prepared, fan_out, now_ms, first_due_ms)
                    .await
            }
            Backend::Postgres(s) => {
                s.accept_event(prepared, fan_out, now_ms, first_due_ms)
                    .await
            }
        }
    }

    /// The event of `organization_id` with this `event_id`.
    ///
    /// # Errors
    /// [`StoreError`] on read or decode failure.
    pub fn get_event(
        &self,
        organization_id: &str,
        event_id: &str,
    ) -> Result<Option<Event>, StoreError> {
        match &self.backend {
            Backend::File(s) => s.get_event(organization_id, event_id),
            Backend::Postgres(s) => s.get_event(organization_id, event_id),
        }
    }

    /// The organizations that have an event with this `event_id` (for the admin, who may
    /// not name one).
    ///
    /// # Errors
    /// [`StoreError`] on read failure.
    pub fn organizations_with_event_id(&self, event_id: &str) -> Result<Vec<String>, StoreError> {
        match &self.backend {
            Backend::File(s) => s.organizations_with_event_id(event_id),
            Backend::Postgres(s) => s.organizations_with_event_id(event_id),
        }
    }

    /// Up to `limit` events, newest first, strictly older than the cursor `before`.
    ///
    /// # Errors
    /// [`StoreError`] on read or decode failure.
    pub fn list_events(
        &self,
        query: &EventQuery,
        before: Option<EventKey>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        match &self.backend {
            Backend::File(s) => s.list_events(query, before, limit),
            Backend::Postgres(s) => s.list_events(query, before, limit),
        }
    }

    /// The deliveries with these ids that still exist, in the given order.
    ///
    /// # Errors
    /// [`StoreError`] on read or decode failure.
    pub fn get_deliveries(&self, ids: &[DeliveryId]) -> Result<Vec<Delivery>, StoreError> {
        match &self.backend {
            Backend::File(s) => s.get_deliveries(ids),
            Backend::Postgres(s) => s.get_deliveries(ids),
        }
    }

    /// The earliest unfinished (pending, retrying or held) delivery of `delivery`'s webhook
    /// with the same ordering key that comes before it in ingest order (event key, then
    /// id): what it waits behind when its webhook orders by key (issue 16). `None` when it
    /// has no key or nothing comes before it.
    ///
    /// # Errors
    /// [`StoreError`] on read or decode failure.
    pub fn ordering_blocker(&self, delivery: &Delivery) -> Result<Option<Delivery>, StoreError> {
        match &self.backend {
            Backend::File(s) => s.ordering_blocker(delivery),
            Backend::Postgres(s) => s.ordering_blocker(delivery),
        }
    }

    /// The first unfinished delivery of `webhook` with ordering key `key`, in ingest order:
    /// the one that goes next when the one before it ends (issue 16).
    ///
    /// # Errors
    /// [`StoreError`] on read or decode failure.
    pub fn ordering_head(
        &self,
        webhook: WebhookId,
        key: &str,
    ) -> Result<Option<Delivery>, StoreError> {
        match &self.backend {
            Backend::File(s) => s.ordering_head(webhook, key),
            Backend::Postgres(s) => s.ordering_head(webhook, key),
        }
    }

    /// A delivery and all its attempts in ascending `number`.
    ///
    /// # Errors
    /// [`StoreError`] on read or decode failure.
    pub fn get_delivery_with_attempts(
        &self,
        id: DeliveryId,
    ) -> Result<Option<(Delivery, Vec<Attempt>)>, StoreError> {
        match &self.backend {
            Backend::File(s) => s.get_delivery_with_attempts(id),
            Backend::Postgres(s) => s.get_delivery_with_attempts(id),
        }
    }

    /// Up to `limit` deliveries of a webhook, newest first, strictly older than `before`,
    /// optionally only those with `status` and only those of `event_type`.
    ///
    /// # Errors
    /// [`StoreError`] on read or decode failure.
    pub fn list_webhook_deliveries(
        &self,
        webhook_id: WebhookId,
        status: Option<DeliveryStatus>,
        event_type: Option<EventType>,
        before: Option<DeliveryId>,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        match &self.backend {
            Backend::File(s) => {
                s.list_webhook_deliveries(webhook_id, status, event_type, before, limit)
            }
            Backend::Postgres(s) => {
                s.list_webhook_deliveries(webhook_id, status, event_type, before, limit)
            }
        }
    }

    /// A webhook's recent activity, from one snapshot: its deliveries created at or after
    /// `since_ms` (newest first, at most `cap` of them) with their attempts, and its newest
    /// delivery whenever it was made. What `GET /api/webhooks/{id}/stats` summarizes.
    ///
    /// # Errors
    /// [`StoreError`] on read or decode failure.
    pub fn webhook_activity(
        &self,
        webhook_id: WebhookId,
        since_ms: u64,
        cap: usize,
    ) -> Result<WebhookActivity, StoreError> {
        match &self.backend {
            Backend::File(s) => s.webhook_activity(webhook_id, since_ms, cap),
            Backend::Postgres(s) => s.webhook_activity(webhook_id, since_ms, cap),
        }
    }

    /// A delivery and its event's body, unless `body_known`: what an attempt needs beyond
    /// the cached webhook. `None` if the delivery does not exist.
    ///
    /// # Errors
    /// [`StoreError`] on read or decode failure; [`StoreError::Corrupt`] when its event is
    /// missing.
    pub fn delivery_for_attempt(
        &self,
        id: DeliveryId,
        body_known: impl FnOnce(EventKey) -> bool,
    ) -> Result<Option<DeliveryForAttempt>, StoreError> {
        match &self.backend {
            Backend::File(s) => s.delivery_for_attempt(id, body_known),
            Backend::Postgres(s) => s.delivery_for_attempt(id, body_known),
        }
    }

    /// Logs an attempt and applies the retry policy in one durable commit: moves the
    /// delivery's retry-index entry to its next due time, or removes it when final.
    /// Returns the delivery as updated, or `None` if it does not exist.
    ///
    /// # Errors
    /// [`StoreError`] when the commit fails; nothing is written then.
    pub async fn record_attempt(
        &self,
        id: DeliveryId,
        attempt: Attempt,
        schedule: RetrySchedule,
        now_ms: u64,
    ) -> Result<Option<Delivery>, StoreError> {
        match &self.backend {
            Backend::File(s) => s.record_attempt(id, attempt, schedule, now_ms).await,
            Backend::Postgres(s) => s.record_attempt(id, attempt, schedule, now_ms).await,
        }
    }

    /// Deletes a webhook and cancels its unfinished deliveries (their log stays): the first
    /// [`HELD_CHUNK`] in the same durable transaction, the rest by [`Store::sweep_held`]
    /// (recorded in that transaction, so a crash resumes it), so a large backlog never makes
    /// other writers wait; no attempt is made to a deleted webhook meanwhile. Returns how
    /// many unfinished deliveries it had (counted just before), or `None` if it did not
    /// exist.
    ///
    /// # Errors
    /// [`StoreError`] when the commit fails; nothing is written then.
    pub fn delete_webhook(&self, id: WebhookId, now_ms: u64) -> Result<Option<u64>, StoreError> {
        match &self.backend {
            Backend::File(s) => s.delete_webhook(id, now_ms),
            Backend::Postgres(s) => s.delete_webhook(id, now_ms),
        }
    }

    /// Changes a webhook's lifecycle (issue 15) in one durable transaction:
    ///
    /// - [`Lifecycle::Disable`]: sets `disabled`; every unfinished delivery of the webhook
    ///   moves out of the retry index into the held index (status `held`, their due order
    ///   kept). Nothing changes if it is disabled already.
    /// - [`Lifecycle::Enable`]: clears `disabled` and the failing streak; with
    ///   `deliver_held`, every held delivery goes back into the retry index at the due time
    ///   it had (`pending`, or `retrying` after a failed scheduled attempt), so the scheduler
    ///   takes them in due order, paced like any backlog; without, the deliveries held at
    ///   this moment are `cancelled` (new events are delivered at once; the API first
    ///   finishes the disable's hold with [`Store::hold_chunk`], so that is every delivery
    ///   that was unfinished while it was disabled). Nothing changes if
    ///   it is not disabled.
    /// - [`Lifecycle::FailingSince`]: sets the failing streak's start (`None`: a success
    ///   ended it); `updated_at` is not touched.
    ///
    /// The transaction moves at most [`HELD_CHUNK`] deliveries; the rest are left to
    /// [`Store::sweep_held`] (recorded in the same transaction, so a crash resumes them), so
    /// a backlog of any size never makes other writers wait. Meanwhile the dispatcher holds
    /// any entry of a disabled webhook it meets ([`Store::hold_delivery`]).
    /// `LifecycleOutcome::deliveries` counts the deliveries concerned (unfinished ones for a
    /// disable, held ones for an enable), counted just before the change.
    ///
    /// Returns `None` if the webhook does not exist.
    ///
    /// # Errors
    /// [`StoreError`] when the commit fails; nothing is written then.
    pub fn set_webhook_lifecycle(
        &self,
        id: WebhookId,
        change: Lifecycle,
        now_ms: u64,
    ) -> Result<Option<LifecycleOutcome>, StoreError> {
        match &self.backend {
            Backend::File(s) => s.set_webhook_lifecycle(id, change, now_ms),
            Backend::Postgres(s) => s.set_webhook_lifecycle(id, change, now_ms),
        }
    }

    /// One step of the held sweep: for at most `webhooks` webhooks whose lifecycle change left
    /// work, moves up to [`HELD_CHUNK`] deliveries each (cancels those an enable discarded,
    /// then holds a disabled webhook's unfinished ones or releases an enabled one's held
    /// ones), in one durable transaction. Several daemons on PostgreSQL skip the webhooks
    /// another is sweeping.
    ///
    /// # Errors
    /// [`StoreError`] when the commit fails; nothing is written then.
    pub fn sweep_held(&self, webhooks: usize, now_ms: u64) -> Result<SweepReport, StoreError> {
        match &self.backend {
            Backend::File(s) => s.sweep_held(webhooks, now_ms),
            Backend::Postgres(s) => s.sweep_held(webhooks, now_ms),
        }
    }

    /// One chunk of a disabled webhook's hold sweep (at most [`HELD_CHUNK`] of its unfinished
    /// deliveries held, in one durable transaction), for a caller that must see everything
    /// held before it goes on: an enable that discards what is held. Returns whether more
    /// may be left; `false` when the webhook is not disabled or has no sweep left.
    ///
    /// # Errors
    /// [`StoreError`] when the commit fails; nothing is written then.
    pub fn hold_chunk(&self, webhook: WebhookId, now_ms: u64) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::File(s) => s.hold_chunk(webhook, now_ms),
            Backend::Postgres(s) => s.hold_chunk(webhook, now_ms),
        }
    }

    /// Moves one unfinished delivery from the retry index to the held index if its webhook is
    /// disabled (an entry that reached the scheduler after the disable: an attempt that was in
    /// flight then, or a test delivery's retry). Returns whether it moved.
    ///
    /// # Errors
    /// [`StoreError`] when the commit fails; nothing is written then.
    pub fn hold_delivery(&self, id: DeliveryId, now_ms: u64) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::File(s) => s.hold_delivery(id, now_ms),
            Backend::Postgres(s) => s.hold_delivery(id, now_ms),
        }
    }

    /// How many deliveries of a webhook are held (one range count of the held index).
    ///
    /// # Errors
    /// [`StoreError`] on read failure.
    pub fn held_count(&self, webhook: WebhookId) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::File(s) => s.held_count(webhook),
            Backend::Postgres(s) => s.held_count(webhook),
        }
    }

    /// Stores a new recovery or replay job (issue 15, item 5), state `queued`.
    ///
    /// # Errors
    /// [`StoreError`] when the commit fails; nothing is written then.
    pub fn create_job(&self, job: &crate::model::Job) -> Result<(), StoreError> {
        match &self.backend {
            Backend::File(s) => s.create_job(job),
            Backend::Postgres(s) => s.create_job(job),
        }
    }

    /// The job with this id, if it exists.
    ///
    /// # Errors
    /// [`StoreError`] on read or decode failure.
    pub fn get_job(&self, id: JobId) -> Result<Option<crate::model::Job>, StoreError> {
        match &self.backend {
            Backend::File(s) => s.get_job(id),
            Backend::Postgres(s) => s.get_job(id),
        }
    }

    /// Up to `limit` jobs, newest first, strictly older than the cursor `before`, of one
    /// organization or of all (`None`).
    ///
    /// # Errors
    /// [`StoreError`] on read or decode failure.
    pub fn list_jobs(
        &self,
        organization_id: Option<&str>,
        before: Option<JobId>,
        limit: usize,
    ) -> Result<Vec<crate::model::Job>, StoreError> {
        match &self.backend {
            Backend::File(s) => s.list_jobs(organization_id, before, limit),
            Backend::Postgres(s) => s.list_jobs(organization_id, before, limit),
        }
    }

    /// The jobs without `finished_at` (`queued`, `running`, or `cancelled` while deliveries
    /// it queued go on): what the job runner steps.
    ///
    /// # Errors
    /// [`StoreError`] on read or decode failure.
    pub fn active_jobs(&self) -> Result<Vec<JobId>, StoreError> {
        match &self.backend {
            Backend::File(s) => s.active_jobs(),
            Backend::Postgres(s) => s.active_jobs(),
        }
    }

    /// Cancels a job that is not final (`cancelled`): it queues nothing more; deliveries it
    /// queued already go on, and later steps count them and set `finished_at` when the last
    /// has ended. Returns the job as stored, or `None`.
    ///
    /// # Errors
    /// [`StoreError`] when the commit fails; nothing is written then.
    pub fn cancel_job(
        &self,
        id: JobId,
        now_ms: u64,
    ) -> Result<Option<crate::model::Job>, StoreError> {
        match &self.backend {
            Backend::File(s) => s.cancel_job(id, now_ms),
            Backend::Postgres(s) => s.cancel_job(id, now_ms),
        }
    }

    /// One step of a job, in one durable transaction: counts the job's queued deliveries
    /// that ended (`succeeded`, or `failed` for any other final status or a delivery gone);
    /// then, while fewer than `limits.window` are still going, looks at up to `limits.scan`
    /// rows of its window after its cursor and queues each match (recover: the delivery
    /// becomes due now with one scheduled attempt left, [`requeue_for_recovery`]; replay: a
    /// new pending delivery, due now, listed by its event); a delivery is queued at most once
    /// per job. The job is `finished` once the window is scanned and everything queued ended.
    /// Returns the job after the step (unchanged when final), or `None`.
    ///
    /// # Errors
    /// [`StoreError`] when the commit fails; nothing of the step is written then.
    pub fn job_step(
        &self,
        id: JobId,
        limits: crate::model::JobLimits,
        now_ms: u64,
    ) -> Result<Option<crate::model::Job>, StoreError> {
        match &self.backend {
            Backend::File(s) => s.job_step(id, limits, now_ms),
            Backend::Postgres(s) => s.job_step(id, limits, now_ms),
        }
    }

    /// Deletes the payload of the event `event_id` of `organization_id` (issue 15, item 7), in
    /// one durable commit: its body becomes the tombstone (empty, `payload_deleted_at_ms` =
    /// `now_ms`), and each of its unfinished deliveries (`pending`, `retrying`, `held`) is
    /// cancelled and leaves the retry index or the held index. The commit publishes
    /// [`Change::PayloadDeleted`] (the scheduler forgets the body it holds) and the index
    /// changes; the attempt log is kept. Idempotent: on a tombstoned event the body and the
    /// deletion time stay as they are, and only a delivery that is unfinished again is
    /// cancelled. Returns the event as stored now, `None` when there is no such event.
    ///
    /// # Errors
    /// [`StoreError`] when the commit fails; nothing is written then.
    pub fn delete_event_payload(
        &self,
        organization_id: &str,
        event_id: &str,
        now_ms: u64,
    ) -> Result<Option<Event>, StoreError> {
        match &self.backend {
            Backend::File(s) => s.delete_event_payload(organization_id, event_id, now_ms),
            Backend::Postgres(s) => s.delete_event_payload(organization_id, event_id, now_ms),
        }
    }

    /// Payload retention (`--payload-retention`): tombstones, as
    /// [`Store::delete_event_payload`] at `now_ms`, up to `max_events` events received before
    /// `cutoff_ms` (ms since the epoch) whose payload is still stored and whose deliveries are
    /// all final and last changed before `cutoff_ms`, in one durable transaction. Looks at
    /// events after `after` (a previous report's `resume_after`) and at most `4 × max_events`
    /// of them; a `held` delivery keeps its event's body (enabling its webhook sends it).
    ///
    /// # Errors
    /// [`StoreError`] when the read or the commit fails; nothing is written then.
    pub fn blank_expired_payloads(
        &self,
        cutoff_ms: u64,
        after: Option<EventKey>,
        max_events: usize,
        now_ms: u64,
    ) -> Result<BlankReport, StoreError> {
        match &self.backend {
            Backend::File(s) => s.blank_expired_payloads(cutoff_ms, after, max_events, now_ms),
            Backend::Postgres(s) => s.blank_expired_payloads(cutoff_ms, after, max_events, now_ms),
        }
    }

    /// Stores prepared events, each with one delivery to `webhook` due at `due_ms`, in one
    /// durable transaction, without the idempotency check or fan-out: a bulk loader for
    /// benchmarks that need a large backlog (`benches/e2e`), not for production paths.
    ///
    /// # Errors
    /// [`StoreError`] when the commit fails; nothing is written then.
    #[doc(hidden)]
    pub fn bulk_load(
        &self,
        events: Vec<PreparedEvent>,
        webhook: WebhookId,
        now_ms: u64,
        due_ms: u64,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::File(s) => s.bulk_load(events, webhook, now_ms, due_ms),
            Backend::Postgres(s) => s.bulk_load(events, webhook, now_ms, due_ms),
        }
    }

    /// Brings back every due time that lies further ahead of `now_ms` than the step that
    /// produced it (issue 13, item 9: a clock that was ahead when it was scheduled, then
    /// corrected). A delivery's step is [`crate::retry::longest_wait`] of its scheduled
    /// attempts and last `Retry-After`; a moved delivery becomes due at `now_ms` + its step.
    /// Only entries due after `now_ms` + `floor_ms` are looked at (the schedule's shortest
    /// step: no retry can be wrong by less). Costs one read of the index's last key when
    /// nothing is that far ahead, else a read scan of those entries, then one transaction
    /// for the ones that move.
    ///
    /// # Errors
    /// [`StoreError`] on a read failure, or when the commit fails (nothing is moved then).
    pub fn clamp_far_due(
        &self,
        now_ms: u64,
        schedule: &RetrySchedule,
        floor_ms: u64,
    ) -> Result<ClampReport, StoreError> {
        match &self.backend {
            Backend::File(s) => s.clamp_far_due(now_ms, schedule, floor_ms),
            Backend::Postgres(s) => s.clamp_far_due(now_ms, schedule, floor_ms),
        }
    }

    /// Up to `limit` retry-index entries `(due ms, delivery)` in due order, strictly after the
    /// cursor `after` and due strictly before `due_before_ms`.
    ///
    /// # Errors
    /// [`StoreError`] on read failure.
    pub fn due_entries(
        &self,
        after: Option<(u64, DeliveryId)>,
        due_before_ms: u64,
        limit: usize,
    ) -> Result<Vec<(u64, DeliveryId)>, StoreError> {
        match &self.backend {
            Backend::File(s) => s.due_entries(after, due_before_ms, limit),
            Backend::Postgres(s) => s.due_entries(after, due_before_ms, limit),
        }
    }

    /// For each `(webhook, after, limit)`: up to `limit` entries `(due ms, delivery)` of that
    /// webhook's due index, in due order, strictly after `after` (from the start when
    /// `None`), whatever their due time. What the scheduler's per-webhook queues are refilled
    /// from, all from one read transaction.
    ///
    /// # Errors
    /// [`StoreError`] on read failure.
    pub fn webhook_due_entries(
        &self,
        asks: &[DueRead],
    ) -> Result<Vec<Vec<(u64, DeliveryId)>>, StoreError> {
        match &self.backend {
            Backend::File(s) => s.webhook_due_entries(asks),
            Backend::Postgres(s) => s.webhook_due_entries(asks),
        }
    }

    /// The earliest due-index entry of every webhook that has one: `(webhook, due ms,
    /// delivery)`, one seek per webhook. What the scheduler starts from.
    ///
    /// # Errors
    /// [`StoreError`] on read failure.
    pub fn webhook_due_heads(&self) -> Result<Vec<(WebhookId, u64, DeliveryId)>, StoreError> {
        match &self.backend {
            Backend::File(s) => s.webhook_due_heads(),
            Backend::Postgres(s) => s.webhook_due_heads(),
        }
    }

    /// Counts of deliveries that are not final (entries in the retry index).
    ///
    /// # Errors
    /// [`StoreError`] on read failure.
    pub fn pending_count(&self) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::File(s) => s.pending_count(),
            Backend::Postgres(s) => s.pending_count(),
        }
    }

    /// The backlog for metrics: (deliveries due at or before `now_ms`, deliveries due later,
    /// the oldest due time if it is past). Counts the due part of the retry index (a scan of
    /// it), so call it at scrape time, not per request.
    ///
    /// # Errors
    /// [`StoreError`] on read failure.
    pub fn due_summary(&self, now_ms: u64) -> Result<(u64, u64, Option<u64>), StoreError> {
        match &self.backend {
            Backend::File(s) => s.due_summary(now_ms),
            Backend::Postgres(s) => s.due_summary(now_ms),
        }
    }

    /// Moves a due, unfinished delivery's next attempt to `to_ms` without logging an attempt
    /// (used while its webhook is inactive). Returns false if it was not due or is final.
    ///
    /// # Errors
    /// [`StoreError`] when the commit fails; nothing is written then.
    pub fn postpone(&self, id: DeliveryId, now_ms: u64, to_ms: u64) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::File(s) => s.postpone(id, now_ms, to_ms),
            Backend::Postgres(s) => s.postpone(id, now_ms, to_ms),
        }
    }

    /// After a webhook is reactivated: each `(delivery, held_until)` the scheduler postponed
    /// while it was inactive is made due at `now_ms`, if it is still due exactly then (not
    /// attempted or rescheduled since). Returns the moved ones, for the scheduler's hints.
    ///
    /// # Errors
    /// [`StoreError`] when the commit fails; nothing is written then.
    pub fn resume_held(
        &self,
        held: &[(DeliveryId, u64)],
        now_ms: u64,
    ) -> Result<Vec<DeliveryId>, StoreError> {
        match &self.backend {
            Backend::File(s) => s.resume_held(held, now_ms),
            Backend::Postgres(s) => s.resume_held(held, now_ms),
        }
    }

    /// The store's size on disk in bytes: the redb file, or the PostgreSQL database
    /// (`pg_database_size`). What `db_size_bytes` in status and metrics reports.
    ///
    /// # Errors
    /// [`StoreError`] when the database cannot be asked (the file backend never fails: an
    /// unreadable file counts 0).
    pub fn size_bytes(&self) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::File(s) => s.size_bytes(),
            Backend::Postgres(s) => s.size_bytes(),
        }
    }

    /// False after a commit failed (disk full, I/O error) until [`FileStore::recover`] succeeds:
    /// the scheduler sends no attempt it could not log meanwhile.
    pub fn is_writable(&self) -> bool {
        match &self.backend {
            Backend::File(s) => s.is_writable(),
            Backend::Postgres(s) => s.is_writable(),
        }
    }

    /// After a failed commit: probes the disk with a 256 KiB write and, if redb latched the
    /// I/O error, closes and reopens the file, so the daemon resumes without a restart.
    /// Blocks (run it on the blocking pool).
    ///
    /// # Errors
    /// The probe's error while the disk is still full or failing.
    pub fn recover(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::File(s) => s.recover(),
            Backend::Postgres(s) => s.recover(),
        }
    }

    /// Sets the one subscriber of committed changes ([`Change`]): it is called on the writer
    /// thread after each commit that changed the retry index or a webhook, before the writers
    /// are answered, and must only update memory. Returns false if one was set already.
    pub fn subscribe(&self, subscriber: Subscriber) -> bool {
        match &self.backend {
            Backend::File(s) => s.subscribe(subscriber),
            Backend::Postgres(s) => s.subscribe(subscriber),
        }
    }

    /// Group-commit counters (transactions, writes, largest batch).
    pub fn commit_stats(&self) -> &CommitStats {
        match &self.backend {
            Backend::File(s) => s.commit_stats(),
            Backend::Postgres(s) => s.commit_stats(),
        }
    }

    /// Stores a new webhook.
    ///
    /// # Errors
    /// [`StoreError`] when the commit fails; nothing is written then.
    pub fn create_webhook(&self, webhook: &Webhook) -> Result<(), StoreError> {
        match &self.backend {
            Backend::File(s) => s.create_webhook(webhook),
            Backend::Postgres(s) => s.create_webhook(webhook),
        }
    }

    /// The webhook with this id, if it exists.
    ///
    /// # Errors
    /// [`StoreError`] on read or decode failure.
    pub fn get_webhook(&self, id: WebhookId) -> Result<Option<Webhook>, StoreError> {
        match &self.backend {
            Backend::File(s) => s.get_webhook(id),
            Backend::Postgres(s) => s.get_webhook(id),
        }
    }

    /// Up to `limit` webhooks in creation order, after the cursor `after`, of one organization
    /// or of all (`None`).
    ///
    /// # Errors
    /// [`StoreError`] on read or decode failure.
    pub fn list_webhooks(
        &self,
        organization_id: Option<&str>,
        after: Option<WebhookId>,
        limit: usize,
    ) -> Result<Vec<Webhook>, StoreError> {
        match &self.backend {
            Backend::File(s) => s.list_webhooks(organization_id, after, limit),
            Backend::Postgres(s) => s.list_webhooks(organization_id, after, limit),
        }
    }

    /// Every webhook, secrets opened: what the scheduler's webhook cache starts from.
    ///
    /// # Errors
    /// [`StoreError`] on read or decode failure.
    pub fn all_webhooks(&self) -> Result<Vec<Webhook>, StoreError> {
        match &self.backend {
            Backend::File(s) => s.all_webhooks(),
            Backend::Postgres(s) => s.all_webhooks(),
        }
    }

    /// Applies `changes` to a webhook inside one transaction (read, change, write), so
    /// concurrent updates of different fields all survive. Returns the updated webhook, or
    /// `None` if it does not exist.
    ///
    /// # Errors
    /// [`StoreError`] when the commit fails; nothing is written then.
    pub fn update_webhook(
        &self,
        id: WebhookId,
        changes: WebhookChanges,
        now_ms: u64,
    ) -> Result<Option<Webhook>, StoreError> {
        match &self.backend {
            Backend::File(s) => s.update_webhook(id, changes, now_ms),
            Backend::Postgres(s) => s.update_webhook(id, changes, now_ms),
        }
    }

    /// Stores a new organization API key (its hash only).
    ///
    /// # Errors
    /// [`StoreError`] when the commit fails; nothing is written then.
    pub fn create_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        match &self.backend {
            Backend::File(s) => s.create_api_key(key),
            Backend::Postgres(s) => s.create_api_key(key),
        }
    }

    /// Every API key, in creation order.
    ///
    /// # Errors
    /// [`StoreError`] on read or decode failure.
    pub fn list_api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        match &self.backend {
            Backend::File(s) => s.list_api_keys(),
            Backend::Postgres(s) => s.list_api_keys(),
        }
    }

    /// Deletes an API key. Returns false if it did not exist.
    ///
    /// # Errors
    /// [`StoreError`] when the commit fails; nothing is written then.
    pub fn delete_api_key(&self, id: KeyId) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::File(s) => s.delete_api_key(id),
            Backend::Postgres(s) => s.delete_api_key(id),
        }
    }

    /// The API key whose SHA-256 is `key_hash`, if any. Answered from memory (kept in step
    /// with every committed create and delete), so it works while the file cannot be read.
    ///
    /// # Errors
    /// None today; the signature leaves room for a backend that must ask a server.
    pub fn find_api_key(&self, key_hash: &[u8; 32]) -> Result<Option<ApiKey>, StoreError> {
        match &self.backend {
            Backend::File(s) => s.find_api_key(key_hash),
            Backend::Postgres(s) => s.find_api_key(key_hash),
        }
    }

    /// Deletes up to `max_events` events received before `cutoff_ms` (ms since the epoch)
    /// whose deliveries are all final and last changed before `cutoff_ms`, with their
    /// deliveries, attempts and the `org_events`, `event_ids` and `webhook_deliveries`
    /// entries, in one durable transaction. Looks at events after `after` (a previous
    /// report's `resume_after`) and at most `4 × max_events` of them. An event with a delivery
    /// for which `in_use` is true (an attempt claimed in this process) is kept, and checked
    /// inside the transaction, so a claim taken before it runs is always seen.
    ///
    /// # Errors
    /// [`StoreError`] when the read or the commit fails; nothing is deleted then.
    pub fn purge_expired(
        &self,
        cutoff_ms: u64,
        after: Option<EventKey>,
        max_events: usize,
        in_use: impl Fn(DeliveryId) -> bool + Send + 'static,
    ) -> Result<PurgeReport, StoreError> {
        match &self.backend {
            Backend::File(s) => s.purge_expired(cutoff_ms, after, max_events, in_use),
            Backend::Postgres(s) => s.purge_expired(cutoff_ms, after, max_events, in_use),
        }
    }

    /// Deliveries by status (one pass over the deliveries table), the due backlog at `now_ms`
    /// and, per webhook, how many of its newest deliveries in a row failed or are retrying,
    /// all from one snapshot, so the counts agree.
    ///
    /// # Errors
    /// [`StoreError`] on read or decode failure.
    pub fn status_summary(&self, now_ms: u64) -> Result<StatusSummary, StoreError> {
        match &self.backend {
            Backend::File(s) => s.status_summary(now_ms),
            Backend::Postgres(s) => s.status_summary(now_ms),
        }
    }

    /// Up to `limit` deliveries of `search.organization_id` that match every filter of
    /// `search` (see [`DeliverySearch::matches`]), newest first (by creation time, then
    /// id), strictly after the cursor `before` in that order (issue 15, item 6). The cursor
    /// is a delivery id; its creation time is read from the store, or taken from the id's
    /// time part when that delivery was purged meanwhile. Backed by indexes on both
    /// backends: the file backend intersects its `delivery_search` entries for each filter,
    /// PostgreSQL its `deliveries_search_*` indexes, so the cost follows the rows that
    /// match, not the rows skipped. Exact: never a row that does not match, never a
    /// matching row left out of its page.
    ///
    /// # Errors
    /// [`StoreError`] on read or decode failure.
    pub fn search_deliveries(
        &self,
        search: &DeliverySearch,
        before: Option<DeliveryId>,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        match &self.backend {
            Backend::File(s) => s.search_deliveries(search, before, limit),
            Backend::Postgres(s) => s.search_deliveries(search, before, limit),
        }
    }
}

impl From<FileStore> for Store {
    fn from(store: FileStore) -> Store {
        Store {
            backend: Backend::File(store),
        }
    }
}

/// What fan-out reads of a webhook (no credential, no URL).
pub(crate) struct FanOutTarget {
    /// The webhook.
    pub id: WebhookId,
    /// Its organization.
    pub organization_id: String,
    /// Its subscribed types.
    pub events: crate::model::EventFilter,
    /// Its envelope filter (issue 16), shared with the caches that keep it parsed.
    pub filter: Option<std::sync::Arc<crate::filter::Filter>>,
    /// The customer's switch.
    pub active: bool,
    /// Whether the daemon disabled it.
    pub disabled: bool,
}

impl FanOutTarget {
    /// The fan-out view of `webhook`.
    pub fn of(webhook: Webhook) -> FanOutTarget {
        FanOutTarget {
            id: webhook.id,
            organization_id: webhook.organization_id,
            events: webhook.events,
            filter: webhook.options.filter.map(std::sync::Arc::new),
            active: webhook.active,
            disabled: webhook.disabled.is_some(),
        }
    }
}

/// An event's envelope, parsed once on first need (by the first webhook with a filter) and
/// shared by the rest of its fan-out.
pub(crate) struct Envelope<'a> {
    body: &'a [u8],
    parsed: std::cell::OnceCell<serde_json::Value>,
}

impl<'a> Envelope<'a> {
    /// The envelope of the delivery body `body` (the API built it: valid JSON).
    pub fn new(body: &'a [u8]) -> Envelope<'a> {
        Envelope {
            body,
            parsed: std::cell::OnceCell::new(),
        }
    }

    fn value(&self) -> &serde_json::Value {
        self.parsed
            // Lenient: a number beyond a double or deep nesting (both accepted at ingest) must
            // not turn the whole envelope into null for every filter.
            .get_or_init(|| {
                crate::json_strict::parse_lenient(self.body).unwrap_or(serde_json::Value::Null)
            })
    }
}

/// Whether an event of `event_type` fans out to `webhook` under `fan_out`: `None` when it
/// does not, `Some(held)` when it does, `held` when the daemon disabled the webhook (the
/// delivery is recorded `held`, issue 15). Subscribers must also pass the webhook's filter
/// (issue 16) on `envelope`; the test endpoint (`Only`) ignores both. The one rule both
/// backends apply.
pub(crate) fn fan_out_to(
    fan_out: FanOut,
    event_type: EventType,
    webhook: &FanOutTarget,
    envelope: &Envelope<'_>,
) -> Option<bool> {
    if !webhook.active {
        return None;
    }
    let subscribed = || {
        webhook.events.matches(event_type)
            && webhook
                .filter
                .as_ref()
                .is_none_or(|f| f.matches(envelope.value()))
    };
    match fan_out {
        // The test endpoint sends at once, disabled or not: that is how a person checks
        // that a disabled endpoint works again.
        FanOut::Only(id) => (id == webhook.id).then_some(false),
        FanOut::Subscribers => subscribed().then_some(webhook.disabled),
        FanOut::SubscribersExcept(id) => {
            (id != webhook.id && subscribed()).then_some(webhook.disabled)
        }
    }
}

/// A new event of `prepared` (its key generated now) and one delivery per target webhook:
/// pending and due at `first_due_ms`, or `held` (no due time) for a target whose flag is set.
/// What both backends store when they accept an event.
pub(crate) fn new_event(
    prepared: &PreparedEvent,
    targets: &[(WebhookId, bool)],
    now_ms: u64,
    first_due_ms: u64,
) -> (Event, Vec<Delivery>) {
    let mut event = Event {
        key: EventKey::generate(),
        event_id: prepared.event_id.clone(),
        event_type: prepared.event_type,
        timestamp: prepared.timestamp.clone(),
        organization_id: prepared.organization_id.clone(),
        received_at_ms: now_ms,
        body: prepared.body.clone(),
        content_hash: prepared.content_hash,
        delivery_ids: Vec::with_capacity(targets.len()),
        payload_deleted_at_ms: None,
        ordering_key: prepared.ordering_key.clone(),
    };
    let deliveries: Vec<Delivery> = targets
        .iter()
        .map(|(webhook, held)| new_delivery(&event, *webhook, *held, now_ms, first_due_ms))
        .collect();
    event.delivery_ids = deliveries.iter().map(|d| d.id).collect();
    (event, deliveries)
}

/// Applies a logged attempt to its delivery with the retry policy
/// ([`crate::retry::after_attempt`], `Retry-After` included): status, scheduled attempts,
/// next due time, attempt count, update time. Returns the due time it had (its retry-index
/// entry before; the new one is `delivery.next_attempt_at_ms`). Both backends' `record_attempt`.
pub(crate) fn apply_attempt(
    delivery: &mut Delivery,
    attempt: &Attempt,
    schedule: &RetrySchedule,
    now_ms: u64,
) -> Option<u64> {
    let before = crate::retry::ScheduleState {
        status: delivery.status,
        scheduled_attempts: delivery.scheduled_attempts,
        next_attempt_at_ms: delivery.next_attempt_at_ms,
    };
    let after = crate::retry::after_attempt(
        before,
        attempt.trigger,
        attempt.succeeded(),
        attempt.retry_after_ms.map(std::time::Duration::from_millis),
        schedule,
        now_ms,
    );
    delivery.status = after.status;
    delivery.scheduled_attempts = after.scheduled_attempts;
    delivery.next_attempt_at_ms = after.next_attempt_at_ms;
    // The last attempt is the highest number; a crash may make a number be logged again,
    // and then the later one is the attempt that counts (as in the attempt log).
    if attempt.number >= delivery.attempt_count {
        delivery.last_outcome = Some(attempt.outcome());
    }
    delivery.attempt_count = delivery.attempt_count.max(attempt.number);
    delivery.updated_at_ms = now_ms;
    before.next_attempt_at_ms
}

/// What a lifecycle change does to a webhook's deliveries ([`apply_lifecycle`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LifecycleMove {
    /// Nothing changed (disabled already, enabled already, same streak start).
    Unchanged,
    /// Only the webhook record changed.
    RecordOnly,
    /// Disabled now: its unfinished deliveries go to the held index (a chunk at a time).
    HoldAll,
    /// Enabled now: its held deliveries go back to the retry index (`true`) or are
    /// cancelled (`false`), a chunk at a time.
    ReleaseAll(bool),
}

/// Applies a lifecycle change to `webhook` (in memory) and says what must happen to its
/// deliveries: the one rule of [`Store::set_webhook_lifecycle`] both backends follow.
pub(crate) fn apply_lifecycle(
    webhook: &mut Webhook,
    change: Lifecycle,
    now_ms: u64,
) -> LifecycleMove {
    match change {
        Lifecycle::Disable(_) if webhook.disabled.is_some() => LifecycleMove::Unchanged,
        Lifecycle::Disable(disabled) => {
            webhook.disabled = Some(disabled);
            LifecycleMove::HoldAll
        }
        Lifecycle::Enable { .. } if webhook.disabled.is_none() => LifecycleMove::Unchanged,
        Lifecycle::Enable { deliver_held } => {
            webhook.disabled = None;
            webhook.failing_since_ms = None;
            webhook.updated_at_ms = now_ms;
            LifecycleMove::ReleaseAll(deliver_held)
        }
        Lifecycle::FailingSince(since) if webhook.failing_since_ms == since => {
            LifecycleMove::Unchanged
        }
        Lifecycle::FailingSince(since) => {
            webhook.failing_since_ms = since;
            LifecycleMove::RecordOnly
        }
    }
}

/// A new delivery of `event` to `webhook`, made at `now_ms`: pending and due at `due_ms`, or
/// `held` (no due time) when `held`. What fan-out and replay jobs create.
pub(crate) fn new_delivery(
    event: &Event,
    webhook: WebhookId,
    held: bool,
    now_ms: u64,
    due_ms: u64,
) -> Delivery {
    Delivery {
        id: DeliveryId::generate(),
        organization_id: event.organization_id.clone(),
        webhook_id: webhook,
        event_key: event.key,
        event_id: event.event_id.clone(),
        event_type: event.event_type,
        status: if held {
            DeliveryStatus::Held
        } else {
            DeliveryStatus::Pending
        },
        attempt_count: 0,
        scheduled_attempts: 0,
        next_attempt_at_ms: (!held).then_some(due_ms),
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
        last_outcome: None,
        ordering_key: event.ordering_key.clone(),
    }
}

/// How a job's queued delivery ended: `Some(true)` succeeded, `Some(false)` any other final
/// status or gone (purged), `None` still going. Both backends' job tally.
pub(crate) fn job_outcome(status: Option<DeliveryStatus>) -> Option<bool> {
    match status {
        None => Some(false),
        Some(DeliveryStatus::Succeeded) => Some(true),
        Some(s) if s.is_final() => Some(false),
        Some(_) => None,
    }
}

/// Makes a final delivery due at `now_ms` again (a recovery, issue 15): one delivery that
/// spent its retry schedule gets one more scheduled attempt (so a failure makes it `failed`
/// again); one that stopped earlier (cancelled) resumes its schedule where it stopped. Its
/// scheduled attempts never exceed its attempts, and its attempts keep their numbers.
pub(crate) fn requeue_for_recovery(delivery: &mut Delivery, max_attempts: u32, now_ms: u64) {
    delivery.scheduled_attempts = max_attempts.saturating_sub(1).min(delivery.attempt_count);
    delivery.status = if delivery.scheduled_attempts == 0 {
        DeliveryStatus::Pending
    } else {
        DeliveryStatus::Retrying
    };
    delivery.next_attempt_at_ms = Some(now_ms);
    delivery.updated_at_ms = now_ms;
}

/// Whether a replay job takes an event of `event_type`: one of `event_types` when given,
/// else what the webhook subscribes to now. Never an operational type: those are about one
/// moment of one webhook (a replay could send a webhook its own `webhook.disabled`).
pub(crate) fn replay_matches(
    event_type: EventType,
    event_types: Option<&[EventType]>,
    subscribed: &crate::model::EventFilter,
) -> bool {
    if event_type.is_operational() {
        return false;
    }
    match event_types {
        Some(types) => types.contains(&event_type),
        None => subscribed.matches(event_type),
    }
}

/// Runs a store operation on tokio's blocking pool, so a store call (which may wait on the
/// disk, the network or another write transaction) never stalls an async worker thread.
///
/// # Errors
/// The operation's own [`StoreError`], or [`StoreError::Interrupted`] if it panicked.
pub async fn blocking<T, F>(store: &std::sync::Arc<Store>, f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
{
    let store = std::sync::Arc::clone(store);
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|_| StoreError::Interrupted)?
}
