//! Group commit: one thread owns every write transaction.
//!
//! Callers hand a closure to [`Writer::write`] (blocking) or [`Writer::write_async`] and wait
//! until the transaction holding it is committed (fsync). The thread takes the first waiting job, drains up to [`MAX_BATCH`] more
//! that are already queued, runs them all in one transaction and commits once, so N
//! concurrent writers cost about one fsync instead of N. A lone job commits at once: there is
//! no artificial wait. If any job of a batch fails (or panics), the whole transaction is
//! aborted and every job of the batch gets an error: nothing of a batch is half-written.
//!
//! Jobs write through a [`Txn`], which records what they changed in the retry index and in
//! the webhooks ([`Change`]); once the batch is committed, and before any caller is answered,
//! the thread hands the batch's changes to the subscriber ([`Writer::subscribe`], the
//! scheduler). A write therefore never has to remember to tell the scheduler, and nothing a
//! caller was told about can be missing from the scheduler's view.

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};

use redb::{Database, WriteTransaction};

use super::slot::Slot;
use super::StoreError;

/// Most jobs committed in one transaction.
pub const MAX_BATCH: usize = 256;

/// Jobs waiting for the writer beyond this block their callers (backpressure).
const QUEUE_BOUND: usize = 4096;

/// What a job tells its caller once the transaction's fate is known.
type Finish = Box<dyn FnOnce(Option<&StoreError>) + Send>;

/// A committed change the scheduler must hear about (issue 13, item 5).
#[derive(Debug, Clone)]
pub enum Change {
    /// A delivery's retry-index entry appeared (`from: None`), moved, or went away
    /// (`to: None`). Times are ms since the epoch.
    Index {
        /// The delivery's webhook.
        webhook: crate::ids::WebhookId,
        /// The delivery.
        delivery: crate::ids::DeliveryId,
        /// Its previous due time, if it had an entry.
        from: Option<u64>,
        /// Its new due time, if it has an entry now.
        to: Option<u64>,
    },
    /// An event was accepted: its envelope bytes (shared, not copied) and its deliveries as
    /// stored, so their first attempts need no read. Published before the deliveries'
    /// `Index` changes.
    Accepted {
        /// The event.
        event: crate::ids::EventKey,
        /// The envelope bytes as stored.
        body: bytes::Bytes,
        /// Its new deliveries, as stored.
        deliveries: Vec<crate::model::Delivery>,
    },
    /// An event's payload was deleted (issue 15, item 7): whoever holds its body in memory
    /// drops it, so no later attempt can send it.
    PayloadDeleted {
        /// The event.
        event: crate::ids::EventKey,
    },
    /// API keys were created or deleted (other daemons of a cluster reload theirs).
    Keys,
    /// A webhook was created, changed (`Some`, as stored now, secrets opened) or deleted.
    Webhook {
        /// The webhook.
        id: crate::ids::WebhookId,
        /// Its new state; `None` once deleted.
        webhook: Option<Arc<crate::model::Webhook>>,
    },
}

/// Receives each committed batch's changes, on the writer thread: it must only update memory.
pub type Subscriber = Box<dyn Fn(Vec<Change>) + Send + Sync>;

/// A job's view of the shared write transaction: the transaction itself (by `Deref`) and the
/// changes the job made, published only if the batch commits.
pub struct Txn<'a> {
    inner: &'a WriteTransaction,
    changes: RefCell<Vec<Change>>,
}

impl std::ops::Deref for Txn<'_> {
    type Target = WriteTransaction;

    fn deref(&self) -> &WriteTransaction {
        self.inner
    }
}

impl Txn<'_> {
    /// Records a change made in this transaction, to be published after the commit.
    pub(crate) fn publish(&self, change: Change) {
        self.changes.borrow_mut().push(change);
    }
}
/// How a job went inside the shared transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobOutcome {
    Ok,
    /// Its own error (not found, conflict, ...): the batch aborts, the disk is fine.
    Failed,
    /// redb failed under it (an I/O error while writing pages, say): the batch aborts and
    /// the store is no longer writable.
    StorageFailed,
}

/// A write: runs inside the shared transaction (`None` when none could be opened), says how
/// it went, what it changed, and how to answer its caller.
type Job = Box<dyn FnOnce(Option<&WriteTransaction>) -> (JobOutcome, Finish, Vec<Change>) + Send>;

/// What the writer thread is asked to do.
enum Message {
    /// A write of the next group transaction.
    Job(Job),
    /// Check whether the store can commit again (and reopen it if needed), answering here.
    Recover(SyncSender<Result<(), StoreError>>),
}

/// Counters of the group commit, for benchmarks and metrics.
#[derive(Debug, Default)]
pub struct CommitStats {
    /// Transactions committed or aborted.
    pub batches: AtomicU64,
    /// Jobs run.
    pub jobs: AtomicU64,
    /// Largest batch seen.
    pub max_batch: AtomicU64,
}

/// Handle to the writer thread. Dropping it lets the thread finish the jobs already queued
/// and waits for it, so the database is closed (its file lock released) when the drop returns.
pub struct Writer {
    jobs: Option<SyncSender<Message>>,
    thread: Option<std::thread::JoinHandle<()>>,
    stats: Arc<CommitStats>,
    subscriber: Arc<OnceLock<Subscriber>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Writer {
    /// Starts the writer thread over the database in `slot`.
    ///
    /// # Errors
    /// The OS error when the thread cannot be spawned.
    pub(super) fn start(slot: Arc<Slot>) -> std::io::Result<Writer> {
        let (jobs, queue) = mpsc::sync_channel::<Message>(QUEUE_BOUND);
        let stats = Arc::new(CommitStats::default());
        let thread_stats = Arc::clone(&stats);
        let subscriber = Arc::new(OnceLock::new());
        let thread_subscriber = Arc::clone(&subscriber);
        let thread = std::thread::Builder::new()
            .name("palo-store-writer".into())
            .spawn(move || run(&slot, &queue, &thread_stats, &thread_subscriber))?;
        Ok(Writer {
            jobs: Some(jobs),
            thread: Some(thread),
            stats,
            subscriber,
        })
    }

    /// Sets the one subscriber of committed changes. Returns false if one was already set.
    pub fn subscribe(&self, subscriber: Subscriber) -> bool {
        self.subscriber.set(subscriber).is_ok()
    }

    /// Runs `f` in the next group transaction and returns its result once that transaction
    /// is durably committed. Blocks the calling thread (call it from a blocking context).
    ///
    /// # Errors
    /// `f`'s own error; [`StoreError::CommitFailed`] when the commit fails or another job of
    /// the same batch failed (nothing of the batch was written); [`StoreError::Interrupted`]
    /// if `f` panicked or the writer is gone.
    pub fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Txn<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = mpsc::sync_channel::<Result<T, StoreError>>(1);
        let job = job(f, move |result| {
            let _ = reply.send(result);
        });
        let jobs = self.jobs.as_ref().ok_or(StoreError::Interrupted)?;
        jobs.send(Message::Job(job))
            .map_err(|_| StoreError::Interrupted)?;
        answer.recv().map_err(|_| StoreError::Interrupted)?
    }

    /// Asks the writer thread whether the store can commit again after a failure: it
    /// probes with a small write and reopens the file if redb latched the I/O error. Blocks.
    ///
    /// # Errors
    /// The probe's error while the disk is still full or failing.
    pub fn recover(&self) -> Result<(), StoreError> {
        let (reply, answer) = mpsc::sync_channel(1);
        let jobs = self.jobs.as_ref().ok_or(StoreError::Interrupted)?;
        jobs.send(Message::Recover(reply))
            .map_err(|_| StoreError::Interrupted)?;
        answer.recv().map_err(|_| StoreError::Interrupted)?
    }

    /// [`Writer::write`] for async callers: the task waits for the commit without holding a
    /// thread, so the number of writes waiting for one commit (the batch size) is not capped
    /// by the blocking pool. Same errors as [`Writer::write`].
    pub async fn write_async<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Txn<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel::<Result<T, StoreError>>();
        let job = job(f, move |result| {
            let _ = reply.send(result);
        });
        let jobs = self.jobs.as_ref().ok_or(StoreError::Interrupted)?;
        match jobs.try_send(Message::Job(job)) {
            Ok(()) => {}
            Err(TrySendError::Disconnected(_)) => return Err(StoreError::Interrupted),
            // A full queue is backpressure: wait for room on the blocking pool, not here.
            Err(TrySendError::Full(job)) => {
                let jobs = jobs.clone();
                tokio::task::spawn_blocking(move || jobs.send(job))
                    .await
                    .map_err(|_| StoreError::Interrupted)?
                    .map_err(|_| StoreError::Interrupted)?;
            }
        }
        answer.await.map_err(|_| StoreError::Interrupted)?
    }

    /// The group-commit counters.
    pub fn stats(&self) -> &CommitStats {
        &self.stats
    }
}

/// Wraps `f` as a job of the shared transaction that answers through `reply` once the
/// batch's fate is known.
fn job<T, F>(f: F, reply: impl FnOnce(Result<T, StoreError>) + Send + 'static) -> Job
where
    T: Send + 'static,
    F: FnOnce(&Txn<'_>) -> Result<T, StoreError> + Send + 'static,
{
    Box::new(move |txn| {
        let mut changes = Vec::new();
        let result = txn.map(|txn| {
            let txn = Txn {
                inner: txn,
                changes: RefCell::new(Vec::new()),
            };
            let result =
                catch_unwind(AssertUnwindSafe(|| f(&txn))).unwrap_or(Err(StoreError::Interrupted));
            changes = txn.changes.into_inner();
            result
        });
        let outcome = match &result {
            Some(Ok(_)) => JobOutcome::Ok,
            Some(Err(StoreError::Backend(_))) => JobOutcome::StorageFailed,
            _ => JobOutcome::Failed,
        };
        let finish: Finish = Box::new(move |batch_error| {
            reply(match (result, batch_error) {
                (Some(Err(own)), _) => Err(own),
                (_, Some(e)) => Err(StoreError::CommitFailed(e.to_string())),
                (Some(Ok(value)), None) => Ok(value),
                (None, None) => Err(StoreError::Interrupted),
            });
        });
        (outcome, finish, changes)
    })
}

fn run(
    slot: &Slot,
    queue: &Receiver<Message>,
    stats: &CommitStats,
    subscriber: &OnceLock<Subscriber>,
) {
    while let Ok(first) = queue.recv() {
        let mut batch = Vec::new();
        let mut recoveries = Vec::new();
        match first {
            Message::Job(job) => batch.push(job),
            Message::Recover(reply) => recoveries.push(reply),
        }
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(Message::Job(job)) => batch.push(job),
                Ok(Message::Recover(reply)) => recoveries.push(reply),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            stats.batches.fetch_add(1, Ordering::Relaxed);
            stats.jobs.fetch_add(batch.len() as u64, Ordering::Relaxed);
            stats
                .max_batch
                .fetch_max(batch.len() as u64, Ordering::Relaxed);
            match slot.get() {
                Ok(db) => {
                    // Only the storage's verdict counts (a batch aborted by a job's own error says
                    // nothing about the disk), and only a failure: the store becomes writable
                    // again through a probe (`Slot::recover`), not by a lucky small commit.
                    if commit_batch(&db, batch, subscriber.get()) == Some(false) {
                        slot.set_writable(false);
                    }
                }
                Err(e) => {
                    for job in batch {
                        let (_, finish, _) = job(None);
                        finish(Some(&e));
                    }
                }
            }
        }
        if !recoveries.is_empty() {
            let outcome = if slot.is_writable() {
                Ok(())
            } else {
                slot.recover()
            };
            for reply in recoveries {
                let _ = reply.send(match &outcome {
                    Ok(()) => Ok(()),
                    Err(e) => Err(StoreError::CommitFailed(e.to_string())),
                });
            }
        }
    }
}

/// Runs and commits one batch. Returns `Some(true)` when it committed, `Some(false)` when the
/// storage failed (begin, a write under a job, or commit), `None` when a job's own error
/// aborted it.
fn commit_batch(db: &Database, batch: Vec<Job>, subscriber: Option<&Subscriber>) -> Option<bool> {
    let txn = match db.begin_write() {
        Ok(txn) => txn,
        Err(e) => {
            let error = StoreError::from(e);
            for job in batch {
                let (_, finish, _) = job(None);
                finish(Some(&error));
            }
            return Some(false);
        }
    };
    let mut finishes = Vec::with_capacity(batch.len());
    let mut all_ok = true;
    let mut storage_failed = false;
    let mut changes = Vec::new();
    for job in batch {
        let (outcome, finish, job_changes) = job(Some(&txn));
        all_ok &= outcome == JobOutcome::Ok;
        storage_failed |= outcome == JobOutcome::StorageFailed;
        finishes.push(finish);
        changes.extend(job_changes);
    }
    let (outcome, verdict) = if all_ok {
        let started = std::time::Instant::now();
        let jobs = finishes.len();
        match txn.commit() {
            Ok(()) => {
                metrics::histogram!(crate::metrics::COMMIT_SECONDS)
                    .record(started.elapsed().as_secs_f64());
                metrics::histogram!(crate::metrics::COMMIT_BATCH).record(jobs as f64);
                // Published before any caller hears of the commit.
                if let (Some(subscriber), false) = (subscriber, changes.is_empty()) {
                    subscriber(changes);
                }
                (None, Some(true))
            }
            Err(e) => (Some(StoreError::from(e)), Some(false)),
        }
    } else {
        drop(txn); // Aborts: nothing of this batch is written.
        (
            Some(StoreError::CommitFailed(
                "another write in the same transaction failed".into(),
            )),
            storage_failed.then_some(false),
        )
    };
    for finish in finishes {
        finish(outcome.as_ref());
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableDatabase, TableDefinition};

    const T: TableDefinition<u64, u64> = TableDefinition::new("t");

    fn writer() -> (tempfile::TempDir, Arc<Slot>, Arc<Writer>) {
        let dir = tempfile::tempdir().unwrap();
        let slot = Arc::new(Slot::open(&dir.path().join("w.redb")).unwrap());
        let writer = Arc::new(Writer::start(Arc::clone(&slot)).unwrap());
        (dir, slot, writer)
    }

    fn count(slot: &Slot) -> u64 {
        use redb::ReadableTableMetadata;
        let txn = slot.get().unwrap().begin_read().unwrap();
        txn.open_table(T).map(|t| t.len().unwrap()).unwrap_or(0)
    }

    #[test]
    fn dropping_the_store_closes_the_file_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        for _ in 0..20 {
            let store =
                crate::store::FileStore::open(&path).expect("the previous store must be closed");
            drop(store);
        }
    }

    #[test]
    fn concurrent_writes_share_commits() {
        let (_dir, db, writer) = writer();
        let threads: Vec<_> = (0..64u64)
            .map(|i| {
                let writer = Arc::clone(&writer);
                std::thread::spawn(move || {
                    writer.write(move |txn| {
                        txn.open_table(T)?.insert(i, i)?;
                        Ok(i)
                    })
                })
            })
            .collect();
        for (i, t) in threads.into_iter().enumerate() {
            assert_eq!(t.join().unwrap().unwrap(), i as u64);
        }
        assert_eq!(count(&db), 64);
        let stats = writer.stats();
        assert_eq!(stats.jobs.load(Ordering::Relaxed), 64);
        assert!(stats.batches.load(Ordering::Relaxed) <= 64);
    }

    #[test]
    fn async_writers_are_not_capped_by_a_thread_pool() {
        let (_dir, db, writer) = writer();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        // 200 writes from one thread: only async waiting lets them share commits.
        let results = runtime.block_on(async {
            let mut writes = tokio::task::JoinSet::new();
            for i in 0..200u64 {
                let writer = Arc::clone(&writer);
                writes.spawn(async move {
                    writer
                        .write_async(move |txn| {
                            txn.open_table(T)?.insert(i, i)?;
                            Ok(i)
                        })
                        .await
                });
            }
            writes.join_all().await
        });
        assert_eq!(results.len(), 200);
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(count(&db), 200);
        assert!(writer.stats().max_batch.load(Ordering::Relaxed) > 32);
    }

    #[test]
    fn a_failing_or_panicking_job_aborts_its_batch_and_the_writer_survives() {
        let (_dir, db, writer) = writer();
        let failed = writer.write(|txn| -> Result<(), StoreError> {
            txn.open_table(T)?.insert(1, 1)?;
            Err(StoreError::Interrupted)
        });
        assert!(matches!(failed, Err(StoreError::Interrupted)));
        let panicked = writer.write(|_txn| -> Result<(), StoreError> { panic!("boom") });
        assert!(matches!(panicked, Err(StoreError::Interrupted)));
        assert_eq!(count(&db), 0, "nothing of a failed batch is written");
        writer
            .write(|txn| {
                txn.open_table(T)?.insert(2, 2)?;
                Ok(())
            })
            .unwrap();
        assert_eq!(count(&db), 1);
    }
}
