//! [`Store`]: open, load, compare-and-swap, transaction.

use std::fs::DirBuilder;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::auth_json::AuthDotJson;
use crate::error::StoreError;
use crate::generation::{Expect, Generation};
use crate::lock::{self, LockGuard};
use crate::options::StoreOptions;
use crate::read;
use crate::replace;
use crate::transaction::Transaction;

/// The file name of the credentials inside the store directory.
pub const AUTH_FILE: &str = "auth.json";

/// A read of auth.json: the generation and, when there is a file, the document.
#[derive(Clone)]
pub struct Snapshot {
    /// The exact bytes read; hashed into the generation on first use (most reads never ask).
    bytes: Option<Arc<Vec<u8>>>,
    generation: OnceLock<Generation>,
    auth: Option<AuthDotJson>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The bytes hold secrets: never shown.
        f.debug_struct("Snapshot")
            .field("generation", &self.generation())
            .field("auth", &self.auth)
            .finish()
    }
}

impl Snapshot {
    fn read(path: &Path) -> Result<Snapshot, StoreError> {
        let (bytes, auth) = match read::read_document(path)? {
            Some((bytes, doc)) => (Some(Arc::new(bytes)), Some(doc)),
            None => (None, None),
        };
        Ok(Snapshot {
            bytes,
            generation: OnceLock::new(),
            auth,
        })
    }

    /// The generation this was read at ([`Generation::Absent`] when there is no file).
    pub fn generation(&self) -> Generation {
        *self.generation.get_or_init(|| {
            self.bytes
                .as_deref()
                .map_or(Generation::Absent, |bytes| Generation::of_bytes(bytes))
        })
    }

    /// The document; `None` when there is no file.
    pub fn auth(&self) -> Option<&AuthDotJson> {
        self.auth.as_ref()
    }

    /// The document, by value.
    pub fn into_auth(self) -> Option<AuthDotJson> {
        self.auth
    }
}

/// The transactional store of one `CODEX_HOME` directory. Cheap to clone; clones share nothing
/// mutable, so they may move to other threads freely.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    path: PathBuf,
    lock_path: PathBuf,
    options: StoreOptions,
}

impl Store {
    /// Opens the store in `dir` with default options, creating the directory (mode 0700) when
    /// it is missing.
    pub fn open(dir: impl AsRef<Path>) -> Result<Store, StoreError> {
        Self::with_options(dir, StoreOptions::default())
    }

    /// Opens the store in `dir` with `options`.
    pub fn with_options(dir: impl AsRef<Path>, options: StoreOptions) -> Result<Store, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        match std::fs::metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(StoreError::NotADirectory { path: dir }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&dir)
                    .map_err(|e| StoreError::io("create the directory", &dir, e))?;
            }
            Err(e) => return Err(StoreError::io("inspect", &dir, e)),
        }
        let path = dir.join(AUTH_FILE);
        let lock_path = lock::lock_path_for(&path);
        Ok(Store {
            inner: Arc::new(Inner {
                dir,
                path,
                lock_path,
                options,
            }),
        })
    }

    /// The same store with other options (for example a longer lock wait).
    pub fn with_store_options(&self, options: StoreOptions) -> Store {
        Store {
            inner: Arc::new(Inner {
                dir: self.inner.dir.clone(),
                path: self.inner.path.clone(),
                lock_path: self.inner.lock_path.clone(),
                options,
            }),
        }
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The path of auth.json.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The path of the sidecar lock file.
    pub fn lock_path(&self) -> &Path {
        &self.inner.lock_path
    }

    /// The options in force.
    pub fn options(&self) -> &StoreOptions {
        &self.inner.options
    }

    /// Reads auth.json without the lock. Every writer of this store replaces the file by an
    /// atomic rename, so the read is whole; an empty or unparseable file (a writer ignoring the
    /// lock, mid-write) is re-read briefly before [`StoreError::Corrupt`] is returned.
    pub fn load(&self) -> Result<Snapshot, StoreError> {
        Snapshot::read(self.path())
    }

    /// The generation on disk now, without parsing and without the lock.
    pub fn generation(&self) -> Result<Generation, StoreError> {
        read::current_generation(self.path())
    }

    /// Writes `auth` (or, for `None`, deletes the file) if the file on disk matches `expect`,
    /// under the lock. Returns the new generation; a mismatch is [`StoreError::Conflict`] and
    /// writes nothing. This is the one way to replace a corrupt file: name its generation (from
    /// [`StoreError::Corrupt`]) or use [`Expect::Any`].
    pub fn compare_and_swap(
        &self,
        expect: Expect,
        auth: Option<&AuthDotJson>,
    ) -> Result<Generation, StoreError> {
        let _lock = self.lock()?;
        replace::sweep_temps(self.dir());
        let actual = read::current_generation(self.path())?;
        if !expect.matches(actual) {
            return Err(StoreError::Conflict {
                path: self.path().to_path_buf(),
                expected: expect,
                actual,
            });
        }
        self.write_locked(actual, auth)
    }

    /// Takes the exclusive lock, sweeps leftover temp files and re-reads auth.json under it.
    /// The returned [`Transaction`] holds the lock until it is committed or dropped.
    pub fn transaction(&self) -> Result<Transaction, StoreError> {
        let lock = self.lock()?;
        replace::sweep_temps(self.dir());
        let snapshot = self.load()?;
        Ok(Transaction::new(self.clone(), lock, snapshot))
    }

    /// Whether some process holds the lock right now (found without waiting).
    pub fn lock_held(&self) -> Result<bool, StoreError> {
        lock::is_held(self.lock_path())
    }

    pub(crate) fn lock(&self) -> Result<LockGuard, StoreError> {
        lock::acquire(self.lock_path(), &self.inner.options)
    }

    /// Replaces or deletes the file; `current` is what the caller (holding the lock) read.
    pub(crate) fn write_locked(
        &self,
        current: Generation,
        auth: Option<&AuthDotJson>,
    ) -> Result<Generation, StoreError> {
        replace::check_replaceable(self.path())?;
        if let Some(tokens) = auth.and_then(|a| a.tokens.as_ref()) {
            tokens
                .id_claims()
                .map_err(|e| StoreError::InvalidDocument {
                    path: self.path().to_path_buf(),
                    reason: format!("tokens.id_token cannot be decoded: {e}"),
                })?;
        }
        match auth {
            Some(doc) => replace::replace(self.path(), current, &doc.to_json()),
            None => replace::remove(self.path(), current).map(|()| Generation::Absent),
        }
    }
}
