//! [`Store`]: open, load, compare-and-swap, transaction.

use std::fs::DirBuilder;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::auth_json::{AuthDotJson, FormatError};
use crate::error::StoreError;
use crate::generation::{Expect, Generation};
use crate::lock::{self, StoreLock};
use crate::options::StoreOptions;
use crate::read;
use crate::replace;
use crate::transaction::Transaction;

/// The file name of the credentials inside the store directory.
pub const AUTH_FILE: &str = "auth.json";
/// Codex 0.171.0's outer lock, taken before [`LOCK_FILE`] by every write (ours too).
pub const CODEX_LOCK_FILE: &str = "auth.lock";
/// The store's lock, shared with Codex 0.171.0: held only while re-reading and writing.
pub const LOCK_FILE: &str = "auth.json.lock";
/// codex-store's single-flight lock, held across a refresh request; Codex never takes it.
pub const REFRESH_LOCK_FILE: &str = "auth.json.refresh.lock";
/// The journal of refresh outcomes (JSON lines, fingerprints only).
pub const JOURNAL_FILE: &str = "auth.json.journal";

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

    /// The size of the file read, in bytes (0 with no file).
    pub(crate) fn len(&self) -> u64 {
        self.bytes.as_deref().map_or(0, |b| b.len() as u64)
    }

    /// The document; `None` when there is no file.
    pub fn auth(&self) -> Option<&AuthDotJson> {
        self.auth.as_ref()
    }

    /// The document, by value.
    pub fn into_auth(self) -> Option<AuthDotJson> {
        self.auth
    }

    /// The document as the caller's own serde type (a login crate's), converted through
    /// `serde_json::Value` (keys in file order); `Ok(None)` when there is no file. See
    /// [`Store::compare_and_swap_as`] for an example.
    ///
    /// # Errors
    /// [`FormatError`] when the document does not deserialize into `T`. The message does not
    /// pass on `serde_json`'s, which can quote a value (a secret).
    ///
    /// # Security
    /// `T` receives the secrets in clear; keep them in [`crate::Secret`]s or out of logs.
    pub fn auth_as<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>, FormatError> {
        self.auth()
            .map(|doc| {
                serde_json::from_value(doc.to_value()).map_err(|_| {
                    FormatError::new("auth.json does not match the requested document type")
                })
            })
            .transpose()
    }
}

/// The transactional store of one `CODEX_HOME` directory. Cheap to clone; clones share nothing
/// mutable, so they may move to other threads freely.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug, Clone)]
struct Inner {
    /// The directory the store was opened on (`CODEX_HOME`).
    home: PathBuf,
    /// `home/auth.json` when it is a symbolic link.
    link: Option<PathBuf>,
    /// The directory auth.json really lives in (its target's, for a link).
    dir: PathBuf,
    /// auth.json, or the final target of the link.
    path: PathBuf,
    /// The lock beside `path` that every path to the file meets.
    lock_path: PathBuf,
    /// The write locks, in order: Codex's `home/auth.lock` and `home/auth.json.lock`, then, for
    /// a link, `lock_path` beside the target.
    write_locks: Vec<PathBuf>,
    refresh_lock_path: PathBuf,
    journal_path: PathBuf,
    options: StoreOptions,
}

impl Inner {
    fn new(home: PathBuf, options: StoreOptions) -> Result<Inner, StoreError> {
        let in_home = home.join(AUTH_FILE);
        let target = crate::link::resolve(&in_home)?;
        let path = target.clone().unwrap_or_else(|| in_home.clone());
        let dir = path
            .parent()
            .map_or_else(|| home.clone(), Path::to_path_buf);
        let lock_path = lock::sibling(&path, ".lock");
        let mut write_locks = vec![home.join(CODEX_LOCK_FILE), home.join(LOCK_FILE)];
        if !write_locks.contains(&lock_path) {
            write_locks.push(lock_path.clone());
        }
        Ok(Inner {
            link: target.map(|_| in_home),
            refresh_lock_path: lock::sibling(&path, ".refresh.lock"),
            journal_path: lock::sibling(&path, ".journal"),
            lock_path,
            write_locks,
            path,
            dir,
            home,
            options,
        })
    }
}

impl Store {
    /// Opens the store in `dir` with the options of [`StoreOptions::from_env`] (the lock wait
    /// from `CODEX_STORE_LOCK_TIMEOUT` when set), creating the directory (mode 0700) when it is
    /// missing.
    ///
    /// # Errors
    /// [`StoreError::InvalidSetting`] for a bad `CODEX_STORE_LOCK_TIMEOUT`;
    /// [`StoreError::NotADirectory`] and [`StoreError::Io`] for the directory.
    pub fn open(dir: impl AsRef<Path>) -> Result<Store, StoreError> {
        Self::with_options(dir, StoreOptions::from_env()?)
    }

    /// Opens the store in `dir` with `options`.
    ///
    /// # Errors
    /// [`StoreError::NotADirectory`] when `dir` exists and is not a directory;
    /// [`StoreError::Symlink`] for a symlink loop at auth.json, [`StoreError::ForeignTarget`] for a
    /// link whose target another user owns; [`StoreError::Io`] when the directory cannot be
    /// inspected or created.
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
        Ok(Store {
            inner: Arc::new(Inner::new(dir, options)?),
        })
    }

    /// The same store with other options (for example a longer lock wait).
    pub fn with_store_options(&self, options: StoreOptions) -> Store {
        Store {
            inner: Arc::new(Inner {
                options,
                ..(*self.inner).clone()
            }),
        }
    }

    /// The directory auth.json lives in: the one the store was opened on, or, when auth.json
    /// there is a symbolic link, its target's directory (temp and rotation files go there).
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The directory the store was opened on (`CODEX_HOME`).
    pub fn home(&self) -> &Path {
        &self.inner.home
    }

    /// `CODEX_HOME/auth.json` when it is a symbolic link (then [`Store::path`] is its final
    /// target, resolved when the store was opened).
    pub fn link(&self) -> Option<&Path> {
        self.inner.link.as_deref()
    }

    /// The path of auth.json (the final target, when it is a symbolic link).
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The path of the sidecar lock file ([`LOCK_FILE`]; for a symlinked auth.json, the one
    /// beside its target, which every path to the file meets).
    pub fn lock_path(&self) -> &Path {
        &self.inner.lock_path
    }

    /// The path of Codex's outer lock file ([`CODEX_LOCK_FILE`]) in the home.
    pub fn codex_lock_path(&self) -> &Path {
        &self.inner.write_locks[0]
    }

    /// The path of the single-flight refresh lock ([`REFRESH_LOCK_FILE`]).
    pub fn refresh_lock_path(&self) -> &Path {
        &self.inner.refresh_lock_path
    }

    /// The path of the journal of refresh outcomes ([`JOURNAL_FILE`]).
    pub fn journal_path(&self) -> &Path {
        &self.inner.journal_path
    }

    /// The options in force.
    pub fn options(&self) -> &StoreOptions {
        &self.inner.options
    }

    /// Reads auth.json without the lock. Every writer of this store replaces the file by an
    /// atomic rename, so the read is whole; an empty or unparseable file (a writer ignoring the
    /// lock, mid-write) is re-read briefly before [`StoreError::Corrupt`] is returned.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] (with its generation) when the file is empty, cut off, not JSON,
    /// mistyped or over [`crate::MAX_FILE_SIZE`]; [`StoreError::Symlink`] for a symlink that
    /// appeared after the store was opened; [`StoreError::NotARegularFile`] for a FIFO or device;
    /// [`StoreError::Io`] when it cannot be read.
    pub fn load(&self) -> Result<Snapshot, StoreError> {
        Snapshot::read(self.path())
    }

    /// The generation on disk now, without parsing and without the lock.
    ///
    /// # Errors
    /// [`StoreError::Symlink`], [`StoreError::NotARegularFile`] or [`StoreError::Io`] when the file
    /// cannot be opened or read. A corrupt file has a generation too: it is not an error here.
    pub fn generation(&self) -> Result<Generation, StoreError> {
        read::current_generation(self.path())
    }

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

    /// [`Store::compare_and_swap`] for a document of the caller's own serde type (a login
    /// crate's): `auth` is converted to an [`AuthDotJson`] through `serde_json` (with its
    /// checks) and written, pretty-printed and 0600, under the lock, if the file on disk matches
    /// `expect`. Keys the type does not name are lost unless it keeps them (a
    /// `#[serde(flatten)]` map); read the document with [`Snapshot::auth_as`].
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
        let lock = self.lock_and_tidy()?;
        let snapshot = self.load()?;
        Ok(Transaction::new(self.clone(), lock, snapshot))
    }

    /// Whether some process holds the lock right now (found without waiting).
    ///
    /// # Errors
    /// [`StoreError::NotARegularFile`] when the lock file is not a regular file; [`StoreError::Io`]
    /// when it exists but cannot be opened; [`StoreError::Lock`] when the probe itself fails.
    pub fn lock_held(&self) -> Result<bool, StoreError> {
        lock::is_held(self.lock_path())
    }

    /// Whether some process holds the refresh lock right now, that is, a codex-store refresh
    /// is in flight (found without waiting).
    ///
    /// # Errors
    /// [`StoreError::Io`] when the lock file exists but cannot be opened.
    pub fn refresh_lock_held(&self) -> Result<bool, StoreError> {
        lock::is_held(self.refresh_lock_path())
    }

    /// Takes `auth.lock` and `auth.json.lock` in Codex's order (and, for a symlinked auth.json,
    /// the lock beside its target last).
    pub(crate) fn lock(&self) -> Result<StoreLock, StoreError> {
        lock::acquire_store(&self.inner.write_locks, &self.inner.options)
    }

    /// Takes the write locks, sweeps leftover temp files, and installs the rotations of crashed
    /// refreshes when no refresh is running.
    fn lock_and_tidy(&self) -> Result<StoreLock, StoreError> {
        let lock = self.lock()?;
        let leftovers = replace::sweep_temps(self.path());
        if leftovers.rotations {
            // Non-blocking: a refresh running now owns its rotation file.
            if let Some(_flight) = lock::try_acquire(self.refresh_lock_path())? {
                // A recovery that cannot finish (auth.json corrupt) must not block this write
                // (the one way to replace a corrupt file): the rotation file stays, and no
                // refresh goes on while it does (`Store::begin_rotation` fails).
                let _ = crate::recovery::recover_locked(self);
            }
        }
        Ok(lock)
    }

    /// Replaces or deletes the file; `current` is what the caller (holding the lock) read.
    pub(crate) fn write_locked(
        &self,
        current: Generation,
        auth: Option<&AuthDotJson>,
    ) -> Result<Generation, StoreError> {
        replace::check_replaceable(self.path())?;
        if let Some(doc) = auth {
            validate(self.path(), doc)?;
        }
        match auth {
            Some(doc) => replace::replace(self.path(), current, &doc.to_json()),
            None => replace::remove(self.path(), current).map(|()| Generation::Absent),
        }
    }
}

/// Refuses a document that would not load back: an id token that does not decode, or a size
/// over [`read::MAX_FILE_SIZE`].
pub(crate) fn validate(path: &Path, doc: &AuthDotJson) -> Result<(), StoreError> {
    let invalid = |reason: String| StoreError::InvalidDocument {
        path: path.to_path_buf(),
        reason,
    };
    if let Some(tokens) = doc.tokens.as_ref() {
        tokens
            .id_claims()
            .map_err(|e| invalid(format!("tokens.id_token cannot be decoded: {e}")))?;
    }
    let size = doc.to_json().len() as u64;
    if size > read::MAX_FILE_SIZE {
        return Err(invalid(format!(
            "it would be {size} bytes, over the {} byte limit every reader applies",
            read::MAX_FILE_SIZE
        )));
    }
    Ok(())
}
