//! The open database, and its reopening after an I/O failure (disk full, EIO).
//!
//! Owner's rule: redb latches an I/O error: once a write fails, every later operation on
//! that `Database` returns `PreviousIo` until it is closed and opened again. The slot holds
//! the current `Database`; readers borrow an `Arc` of it for one read; the writer thread,
//! the only writer, marks it failed when a commit fails and reopens it when the disk has room
//! again (see [`Slot::recover`]), so the daemon resumes without a restart.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase};

use super::{StoreError, CACHE_BYTES, META};

/// The probe writes this much (256 KiB) to tell whether the disk has room again.
const PROBE_BYTES: usize = 256 * 1024;
/// How long a reopen waits for readers to let go of the old handle (5 s).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// The current database handle, replaceable after an I/O failure.
pub(super) struct Slot {
    /// `None` for an in-memory database (fuzzing, tests), which is never reopened.
    path: Option<PathBuf>,
    current: RwLock<Option<Arc<Database>>>,
    writable: AtomicBool,
}

fn open_database(path: &Path) -> Result<Database, StoreError> {
    let new = !path.exists();
    let db = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(path)?;
    // A new db is the owner's only (0600), whatever the umask: it holds webhook secrets,
    // in clear without a secrets key. An existing file keeps the mode its operator gave it.
    #[cfg(unix)]
    if new {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| StoreError::Backend(redb::Error::Io(e).to_string()))?;
    }
    Ok(db)
}

impl Slot {
    /// The file's size in bytes (0 in memory or when it cannot be read).
    pub(super) fn size_bytes(&self) -> u64 {
        self.path
            .as_deref()
            .and_then(|p| std::fs::metadata(p).ok())
            .map_or(0, |m| m.len())
    }

    /// Opens (or creates) the file at `path`.
    pub(super) fn open(path: &Path) -> Result<Slot, StoreError> {
        Ok(Slot {
            path: Some(path.to_owned()),
            current: RwLock::new(Some(Arc::new(open_database(path)?))),
            writable: AtomicBool::new(true),
        })
    }

    /// A fresh database in memory (redb's `InMemoryBackend`): for fuzzing and tests.
    pub(super) fn in_memory() -> Result<Slot, StoreError> {
        let db = Database::builder().create_with_backend(redb::backends::InMemoryBackend::new())?;
        Ok(Slot {
            path: None,
            current: RwLock::new(Some(Arc::new(db))),
            writable: AtomicBool::new(true),
        })
    }

    fn describe(&self) -> String {
        self.path
            .as_ref()
            .map_or_else(|| "(in memory)".to_owned(), |p| p.display().to_string())
    }

    /// The current handle, for one operation.
    ///
    /// # Errors
    /// [`StoreError::CommitFailed`] while the handle is being reopened.
    pub(super) fn get(&self) -> Result<Arc<Database>, StoreError> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or_else(|| {
                StoreError::CommitFailed("the store is reopening after an I/O error".into())
            })
    }

    /// False after a failed commit, until a probe ([`Slot::recover`]) succeeds.
    pub(super) fn is_writable(&self) -> bool {
        self.writable.load(Ordering::Relaxed)
    }

    /// Records a failed commit (`false`) or a successful probe (`true`).
    pub(super) fn set_writable(&self, writable: bool) {
        let was = self.writable.swap(writable, Ordering::Relaxed);
        if was && !writable {
            tracing::warn!(db = %self.describe(), "a commit failed: the store is not writable (disk full or I/O error)");
        } else if !was && writable {
            tracing::info!(db = %self.describe(), "the store is writable again");
        }
    }

    /// Writer thread only. Tells whether the store can commit again: writes and removes a
    /// 256 KiB probe value; if the handle has latched an I/O error, reopens the file first
    /// (when readers let go within 5 s). Marks the store writable on success.
    ///
    /// # Errors
    /// The probe's or the reopen's error: the store stays not writable.
    pub(super) fn recover(&self) -> Result<(), StoreError> {
        let first = self.get().and_then(|db| probe(&db));
        let result = match first {
            Ok(()) => Ok(()),
            Err(_) => {
                self.reopen()?;
                self.get().and_then(|db| probe(&db))
            }
        };
        if result.is_ok() {
            self.set_writable(true);
        }
        result
    }

    /// Closes the current handle once no reader holds it, and opens the file again.
    fn reopen(&self) -> Result<(), StoreError> {
        let taken = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(mut old) = taken {
            let deadline = Instant::now() + RELEASE_TIMEOUT;
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(still_shared) if Instant::now() < deadline => {
                        old = still_shared;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(still_shared) => {
                        *self
                            .current
                            .write()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) =
                            Some(still_shared);
                        return Err(StoreError::CommitFailed(
                            "readers held the store too long to reopen it".into(),
                        ));
                    }
                }
            }
        }
        let Some(path) = &self.path else {
            return Err(StoreError::CommitFailed(
                "an in-memory store cannot be reopened".into(),
            ));
        };
        let reopened = open_database(path);
        match reopened {
            Ok(db) => {
                *self
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(db));
                tracing::debug!(db = %self.describe(), "reopened the store after an I/O error");
                Ok(())
            }
            // Nothing is open now: reads answer 503 until a later probe reopens the file.
            Err(e) => Err(e),
        }
    }
}

/// One probe: a 256 KiB value written in one commit and removed in the next.
fn probe(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    txn.open_table(META)?
        .insert("probe", vec![0u8; PROBE_BYTES].as_slice())?;
    txn.commit()?;
    let txn = db.begin_write()?;
    txn.open_table(META)?.remove("probe")?;
    txn.commit()?;
    // A read after the writes: the handle is sound for readers too.
    db.begin_read()?;
    Ok(())
}
