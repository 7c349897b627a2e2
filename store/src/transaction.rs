//! Every write under the write locks: [`Store::compare_and_swap`], and the [`Transaction`] (the
//! exclusive lock plus the snapshot read under it) for a read-modify-write.

use crate::auth_json::AuthDotJson;
use crate::core::{Held, Locked};
use crate::error::StoreError;
use crate::generation::{Expect, Generation};
use crate::snapshot::Snapshot;
use crate::store::Store;

impl Store {
    /// Writes `auth` (or, for `None`, deletes the file) if the file on disk matches `expect`,
    /// under the lock. Returns the new generation; a mismatch is [`StoreError::Conflict`] and
    /// writes nothing. This is the one way to replace a corrupt file: name its generation (from
    /// [`StoreError::Corrupt`]) or use [`Expect::Any`].
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the file on disk does not match `expect` (nothing written).
    /// [`StoreError::LockTimeout`] when another process holds a write lock longer than
    /// [`crate::StoreOptions::lock_timeout`]; [`StoreError::Lock`] when `flock` fails (the store
    /// never proceeds unlocked); [`StoreError::NotARegularFile`] for a lock file that is not a
    /// regular file. [`StoreError::InvalidDocument`] for a document that would not load back
    /// (nothing written); [`StoreError::Symlink`] or [`StoreError::HardLinked`] for a file that may
    /// not be replaced; [`StoreError::Io`] when the write fails (the old file stays);
    /// [`StoreError::NotDurable`] when the new file is in place but its directory could not be
    /// fsynced ([`StoreError::accept_not_durable`] takes it as success).
    pub fn compare_and_swap(
        &self,
        expect: Expect,
        auth: Option<&AuthDotJson>,
    ) -> Result<Generation, StoreError> {
        let _lock = self.lock_and_tidy()?;
        let actual = self.generation()?;
        if !expect.matches(actual) {
            return Err(StoreError::Conflict {
                path: self.path().to_path_buf(),
                expected: expect,
                actual,
            });
        }
        self.write_locked(actual, auth)
    }

    /// [`Store::compare_and_swap`] for a document of the caller's own serde type (a login
    /// crate's): `auth` is converted to an [`AuthDotJson`] through `serde_json` (with its
    /// checks) and written, pretty-printed and 0600, under the lock, if the file on disk matches
    /// `expect`. Keys the type does not name are lost unless it keeps them (a
    /// `#[serde(flatten)]` map); read the document with [`crate::Snapshot::auth_as`].
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = std::env::temp_dir().join(format!("codex-store-doc-as-{}", std::process::id()));
    /// use codex_store::{Expect, Store};
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Serialize, Deserialize)]
    /// struct MyAuth {
    ///     #[serde(rename = "OPENAI_API_KEY")]
    ///     api_key: Option<String>,
    ///     #[serde(flatten)]
    ///     rest: serde_json::Map<String, serde_json::Value>,
    /// }
    ///
    /// let store = Store::open(&dir)?;
    /// let mine = MyAuth { api_key: Some("sk-1".into()), rest: Default::default() };
    /// let g = store.compare_and_swap_as(Expect::Absent, Some(&mine))?;
    /// let snap = store.load()?;
    /// assert_eq!(snap.generation(), g);
    /// let read: MyAuth = snap.auth_as()?.expect("written above");
    /// assert_eq!(read.api_key.as_deref(), Some("sk-1"));
    /// # std::fs::remove_dir_all(&dir).ok();
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`StoreError::InvalidDocument`] (nothing written) when `auth` does not serialize to an
    /// auth.json document (not an object, a known key of the wrong type, an id token that is
    /// not a JWT); otherwise those of [`Store::compare_and_swap`].
    pub fn compare_and_swap_as<T: serde::Serialize>(
        &self,
        expect: Expect,
        auth: Option<&T>,
    ) -> Result<Generation, StoreError> {
        let invalid = |reason: String| StoreError::InvalidDocument {
            path: self.path().to_path_buf(),
            reason,
        };
        let doc = match auth {
            None => None,
            Some(auth) => {
                // serde_json's message could quote a value: it is not passed on.
                let value = serde_json::to_value(auth)
                    .map_err(|_| invalid("the document does not serialize to JSON".into()))?;
                Some(AuthDotJson::from_value(value).map_err(|e| invalid(e.to_string()))?)
            }
        };
        self.compare_and_swap(expect, doc.as_ref())
    }

    /// Takes the exclusive lock, sweeps leftover temp files and re-reads auth.json under it.
    /// The returned [`Transaction`] holds the lock until it is committed or dropped.
    ///
    /// # Errors
    /// [`StoreError::LockTimeout`] when another process holds a write lock longer than
    /// [`crate::StoreOptions::lock_timeout`]; [`StoreError::Lock`] when `flock` fails (the store
    /// never proceeds unlocked); [`StoreError::NotARegularFile`] for a lock file that is not a
    /// regular file. Then those of [`Store::load`]: a corrupt file is [`StoreError::Corrupt`]
    /// (replace it with [`Store::compare_and_swap`] naming its generation).
    pub fn transaction(&self) -> Result<Transaction, StoreError> {
        let locked = Held::read(self, self.lock_and_tidy()?)?;
        Ok(Transaction { locked })
    }
}

/// An open transaction: the store's exclusive lock is held, and [`Transaction::snapshot`] is
/// what was on disk when it was taken. Writing is only possible through [`Transaction::commit`],
/// which consumes it; dropping it instead writes nothing and releases the lock.
#[derive(Debug)]
#[must_use = "dropping a transaction releases the lock without writing"]
pub struct Transaction {
    locked: Locked,
}

impl Transaction {
    /// What was on disk when the lock was taken.
    pub fn snapshot(&self) -> &Snapshot {
        self.locked.snapshot()
    }

    /// The store this transaction belongs to.
    pub fn store(&self) -> &Store {
        self.locked.store()
    }

    /// Reads auth.json again under the lock still held, to see what a writer ignoring the lock
    /// wrote meanwhile. Never hold a transaction across slow work (a network request): Codex
    /// 0.171.0 gives up on `auth.json.lock` after 5 s; slow work belongs under
    /// [`crate::Store::begin_rotation`]. On error the previous snapshot stays.
    ///
    /// # Errors
    /// Those of [`Store::load`](crate::Store::load).
    pub fn reread(&mut self) -> Result<(), StoreError> {
        self.locked.reread()
    }

    /// Checks that a commit will be allowed to replace the file (not a symlink, not
    /// hard-linked), so that a holder can find out before slow, irreversible work.
    ///
    /// # Errors
    /// [`StoreError::Symlink`] or [`StoreError::HardLinked`] when auth.json may not be replaced;
    /// [`StoreError::NotARegularFile`] for a FIFO or device; [`StoreError::Io`] when it cannot be
    /// inspected.
    pub fn check_writable(&self) -> Result<(), StoreError> {
        crate::replace::check_replaceable(self.store().path())
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
        self.locked.write(auth)
    }
}
