//! Deferred durability for the SQLite store: commits that return before they are synced, and
//! the handle that syncs them later, from any thread.
//!
//! With `synchronous = FULL` every commit waits for its own fsync of the write-ahead log, and
//! the one writer waits with it. The owner may instead commit a group with the sync deferred
//! (`SqliteStore::defer_durability`) and hand the group's answers to another thread, which
//! syncs the log with [`WalSync::sync`] and only then answers: the writer goes on with the next
//! group while the disk flushes, and one flush covers every commit made before it began.
//!
//! The sync goes through a file handle of our own on the `-wal` file: on Linux an fsync
//! flushes the file's data whichever descriptor asks, and every commit appended its frames to
//! that file before it returned. A log restarted from its start after a checkpoint is safe
//! too: SQLite syncs the log, copies it into the database and syncs the database before it
//! reuses the log, so the frames it overwrites are durable in the database already.
//!
//! Invariant: when `sync` returns `Ok`, every commit that returned before `sync` was called
//! survives a crash of the machine; `synced` never passes `deferred`.

use std::fs::File;
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use flowmark_store::{Durability, Error};

/// Syncs a database's write-ahead log; cheap to clone, shared by the store and a syncer.
#[derive(Clone)]
pub struct WalSync(Arc<Shared>);

struct Shared {
    /// The database's `-wal` file.
    path: PathBuf,
    /// Our handle on it, opened at the first sync, and again if the file was replaced.
    file: Mutex<Option<File>>,
    /// Deferrals ended so far: each may have committed without a sync.
    deferred: AtomicU64,
    /// The `deferred` count the latest finished sync covered.
    synced: AtomicU64,
    /// Syncs made through this handle, and the time they took, in nanoseconds.
    syncs: AtomicU64,
    sync_nanos: AtomicU64,
    /// Has a sync failed? Then every later one fails too: Linux reports a write-back error
    /// once per open file, so a second fsync could succeed over data that was lost.
    failed: AtomicBool,
}

impl WalSync {
    pub(crate) fn new(database: &std::path::Path) -> WalSync {
        let mut path = database.as_os_str().to_owned();
        path.push("-wal");
        WalSync(Arc::new(Shared {
            path: PathBuf::from(path),
            file: Mutex::new(None),
            deferred: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            sync_nanos: AtomicU64::new(0),
            failed: AtomicBool::new(false),
        }))
    }

    fn io_error(&self, doing: &'static str, source: std::io::Error) -> Error {
        Error::Io { doing, path: self.0.path.clone(), source }
    }

    /// A deferral ended: what it committed waits for the next sync.
    pub(crate) fn deferral_ended(&self) {
        self.0.deferred.fetch_add(1, Ordering::AcqRel);
    }
}

impl Durability for WalSync {
    /// Makes every commit that returned before this call durable: one fsync of the log.
    fn sync(&self) -> Result<(), Error> {
        let covers = self.0.deferred.load(Ordering::Acquire);
        let mut file = self.0.file.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.0.failed.load(Ordering::Acquire) {
            let source = std::io::Error::other("an earlier sync of this log failed");
            return Err(self.io_error("sync", source));
        }
        let current = match std::fs::metadata(&self.0.path) {
            Ok(metadata) => metadata.ino(),
            // No log: the last connection closed and checkpointed it into the database, which
            // SQLite synced first.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                self.0.synced.fetch_max(covers, Ordering::AcqRel);
                return Ok(());
            }
            Err(error) => return Err(self.io_error("look at", error)),
        };
        let stale = match file.as_ref() {
            Some(open) => open.metadata().map_err(|e| self.io_error("look at", e))?.ino() != current,
            None => true,
        };
        if stale {
            let opened = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&self.0.path)
                .map_err(|e| self.io_error("open", e))?;
            *file = Some(opened);
        }
        let open = file.as_ref().expect("opened above");
        let started = std::time::Instant::now();
        if let Err(error) = open.sync_data() {
            self.0.failed.store(true, Ordering::Release);
            return Err(self.io_error("sync", error));
        }
        let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.0.synced.fetch_max(covers, Ordering::AcqRel);
        self.0.syncs.fetch_add(1, Ordering::Relaxed);
        self.0.sync_nanos.fetch_add(took, Ordering::Relaxed);
        Ok(())
    }

    /// What this handle did so far: deferrals ended, syncs made, and the time they took.
    fn counts(&self) -> (u64, u64, std::time::Duration) {
        (
            self.0.deferred.load(Ordering::Relaxed),
            self.0.syncs.load(Ordering::Relaxed),
            std::time::Duration::from_nanos(self.0.sync_nanos.load(Ordering::Relaxed)),
        )
    }

    /// Has a deferral ended since the latest sync began?
    fn pending(&self) -> bool {
        self.0.synced.load(Ordering::Acquire) < self.0.deferred.load(Ordering::Acquire)
    }
}
