//! [`FileBackend`]: the whole-document load / save / delete trio a login crate's storage backend
//! calls, each routed through the store's lock. Adopting the store is a swap of one backend.

use std::path::Path;

use crate::auth_json::AuthDotJson;
use crate::error::StoreError;
use crate::generation::Expect;
use crate::store::Store;

/// A storage backend over a [`Store`].
///
/// ```
/// # fn main() -> Result<(), codex_store::StoreError> {
/// # let dir = std::env::temp_dir().join(format!("codex-store-doc-backend-{}", std::process::id()));
/// use codex_store::{backend::FileBackend, AuthDotJson, Secret};
/// let backend = FileBackend::new(&dir)?;
/// let auth = AuthDotJson { openai_api_key: Some(Secret::new("sk-test")), ..Default::default() };
/// backend.save(&auth)?;
/// assert_eq!(backend.load()?.and_then(|a| a.openai_api_key), Some(Secret::new("sk-test")));
/// assert!(backend.delete()?, "there was a file to delete");
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct FileBackend {
    store: Store,
}

impl FileBackend {
    /// A backend over the store in `codex_home`.
    ///
    /// # Errors
    /// Those of [`Store::open`].
    pub fn new(codex_home: impl AsRef<Path>) -> Result<Self, StoreError> {
        Ok(FileBackend {
            store: Store::open(codex_home)?,
        })
    }

    /// A backend over an existing store.
    pub fn from_store(store: Store) -> Self {
        FileBackend { store }
    }

    /// The underlying store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The document, or `None` when there is no file.
    ///
    /// # Errors
    /// Those of [`Store::load`].
    pub fn load(&self) -> Result<Option<AuthDotJson>, StoreError> {
        Ok(self.store.load()?.into_auth())
    }

    /// Replaces the whole document (a sign-in), under the lock, durably.
    ///
    /// # Errors
    /// Those of [`Store::compare_and_swap`] with [`Expect::Any`] (never a conflict).
    pub fn save(&self, auth: &AuthDotJson) -> Result<(), StoreError> {
        self.store
            .compare_and_swap(Expect::Any, Some(auth))
            .map(|_| ())
    }

    /// Deletes the file (a sign-out), under the lock. Returns whether there was one.
    ///
    /// # Errors
    /// Those of [`Store::transaction`] and [`crate::Transaction::commit`]; a corrupt file is
    /// deleted, not an error.
    pub fn delete(&self) -> Result<bool, StoreError> {
        match self.store.transaction() {
            Ok(tx) => {
                let existed = !tx.snapshot().generation().is_absent();
                tx.commit(None)?;
                Ok(existed)
            }
            // A corrupt file can still be signed out of: delete exactly the bytes we saw.
            Err(StoreError::Corrupt { generation, .. }) => {
                self.store
                    .compare_and_swap(Expect::Generation(generation), None)?;
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }
}
