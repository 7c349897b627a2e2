//! [`Transaction`]: the exclusive lock plus the snapshot read under it.

use crate::auth_json::AuthDotJson;
use crate::error::StoreError;
use crate::generation::Generation;
use crate::lock::StoreLock;
use crate::store::{Snapshot, Store};

/// An open transaction: the store's exclusive lock is held, and [`Transaction::snapshot`] is
/// what was on disk when it was taken. Writing is only possible through [`Transaction::commit`],
/// which consumes it; dropping it instead writes nothing and releases the lock.
#[derive(Debug)]
#[must_use = "dropping a transaction releases the lock without writing"]
pub struct Transaction {
    store: Store,
    _lock: StoreLock,
    snapshot: Snapshot,
}

impl Transaction {
    pub(crate) fn new(store: Store, lock: StoreLock, snapshot: Snapshot) -> Self {
        Transaction {
            store,
            _lock: lock,
            snapshot,
        }
    }

    /// What was on disk when the lock was taken.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The store this transaction belongs to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Reads auth.json again under the lock still held, to see what a writer ignoring the lock
    /// wrote meanwhile. Never hold a transaction across slow work (a network request): Codex
    /// 0.171.0 gives up on `auth.json.lock` after 5 s; slow work belongs under
    /// [`crate::Store::begin_rotation`]. On error the previous snapshot stays.
    ///
    /// # Errors
    /// Those of [`Store::load`](crate::Store::load).
    pub fn reread(&mut self) -> Result<(), StoreError> {
        self.snapshot = self.store.load()?;
        Ok(())
    }

    /// Checks that a commit will be allowed to replace the file (not a symlink, not
    /// hard-linked), so that a holder can find out before slow, irreversible work.
    ///
    /// # Errors
    /// [`StoreError::Symlink`] or [`StoreError::HardLinked`] when auth.json may not be replaced;
    /// [`StoreError::NotARegularFile`] for a FIFO or device; [`StoreError::Io`] when it cannot be
    /// inspected.
    pub fn check_writable(&self) -> Result<(), StoreError> {
        crate::replace::check_replaceable(self.store.path())
    }

    /// Writes `auth` (or deletes the file for `None`) and releases the lock. Returns the new
    /// generation. If a writer that ignores the lock changed the file since the snapshot, this
    /// is [`StoreError::Conflict`] and nothing is written.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when a writer ignoring the lock changed the file since the snapshot
    /// (nothing written). [`StoreError::InvalidDocument`] for a document that would not load back
    /// (nothing written); [`StoreError::Symlink`] or [`StoreError::HardLinked`] for a file that may
    /// not be replaced; [`StoreError::Io`] when the write fails (the old file stays);
    /// [`StoreError::NotDurable`] when the new file is in place but its directory could not be
    /// fsynced ([`StoreError::accept_not_durable`] takes it as success).
    pub fn commit(self, auth: Option<&AuthDotJson>) -> Result<Generation, StoreError> {
        self.store.write_locked(self.snapshot.generation(), auth)
    }
}
