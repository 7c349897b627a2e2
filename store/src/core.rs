//! The locked core shared by a [`crate::Transaction`] and a [`crate::Rotation`]: a lock held
//! over the store and what auth.json held once it was taken, read again on demand.

use crate::auth_json::AuthDotJson;
use crate::error::StoreError;
use crate::generation::Generation;
use crate::lock::StoreLock;
use crate::snapshot::Snapshot;
use crate::store::Store;

/// A lock (`L`) held over `store`, and the snapshot read under it. Dropping it releases the lock.
#[derive(Debug)]
pub(crate) struct Held<L> {
    store: Store,
    _lock: L,
    snapshot: Snapshot,
}

/// The write locks (`auth.lock`, `auth.json.lock`, and the target's for a link) and the snapshot
/// read under them: a transaction, or one attempt of a rotation's check or save.
pub(crate) type Locked = Held<StoreLock>;

impl<L> Held<L> {
    /// Reads auth.json under `lock`, which the caller has just taken.
    ///
    /// # Errors
    /// Those of [`Store::load`]; the lock is released.
    pub(crate) fn read(store: &Store, lock: L) -> Result<Self, StoreError> {
        let snapshot = store.load()?;
        Ok(Held {
            store: store.clone(),
            _lock: lock,
            snapshot,
        })
    }

    /// What was on disk when the lock was taken (or at the last [`Held::reread`]).
    pub(crate) fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The store the lock is held over.
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// Reads auth.json again under the lock still held. On error the previous snapshot stays.
    ///
    /// # Errors
    /// Those of [`Store::load`].
    pub(crate) fn reread(&mut self) -> Result<(), StoreError> {
        self.snapshot = self.store.load()?;
        Ok(())
    }

    /// The snapshot, releasing the lock.
    pub(crate) fn into_snapshot(self) -> Snapshot {
        self.snapshot
    }
}

impl Locked {
    /// Takes the write locks in Codex's order and reads auth.json under them.
    ///
    /// # Errors
    /// Those of the locks ([`StoreError::LockTimeout`], [`StoreError::Lock`],
    /// [`StoreError::NotARegularFile`]) and of [`Store::load`].
    pub(crate) fn take(store: &Store) -> Result<Locked, StoreError> {
        Held::read(store, store.lock()?)
    }

    /// Writes `auth` (or deletes the file for `None`) over the snapshot's generation, under the
    /// locks still held.
    ///
    /// # Errors
    /// Those of [`Store::write_locked`].
    pub(crate) fn write(&self, auth: Option<&AuthDotJson>) -> Result<Generation, StoreError> {
        self.store.write_locked(self.snapshot.generation(), auth)
    }
}
