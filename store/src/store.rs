//! [`Store`]: a handle on one home's auth.json (its paths, resolved once, and its options),
//! opened, read and written under its locks. The operations built on it add their own `impl
//! Store` blocks above it: compare-and-swap and transactions (`transaction`), recovery
//! (`recovery`), refreshes (`rotation`), agents (`agent`), diagnostics (`diagnose`).

use std::fs::DirBuilder;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::auth_json::AuthDotJson;
use crate::error::StoreError;
use crate::generation::Generation;
use crate::lock::{self, StoreLock};
use crate::names::{Sidecar, AUTH_FILE, CODEX_LOCK_FILE, LOCK_FILE};
use crate::options::StoreOptions;
use crate::read;
use crate::replace;
use crate::snapshot::Snapshot;

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
    /// The token broker's URL an agent claiming this store publishes
    /// ([`Store::with_agent_broker`]).
    agent_broker: Option<String>,
}

impl Inner {
    fn new(home: PathBuf, options: StoreOptions) -> Result<Inner, StoreError> {
        let in_home = home.join(AUTH_FILE);
        let target = crate::link::resolve(&in_home)?;
        let path = target.clone().unwrap_or_else(|| in_home.clone());
        let dir = path
            .parent()
            .map_or_else(|| home.clone(), Path::to_path_buf);
        let lock_path = Sidecar::Lock.beside(&path);
        let mut write_locks = vec![home.join(CODEX_LOCK_FILE), home.join(LOCK_FILE)];
        if !write_locks.contains(&lock_path) {
            write_locks.push(lock_path.clone());
        }
        Ok(Inner {
            link: target.map(|_| in_home),
            refresh_lock_path: Sidecar::RefreshLock.beside(&path),
            journal_path: Sidecar::Journal.beside(&path),
            lock_path,
            write_locks,
            path,
            dir,
            home,
            options,
            agent_broker: None,
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

    /// The same store, for an agent that serves a local token broker at `url` beside it
    /// (`codex-store agent --serve`): every status the agent's claim publishes names it
    /// ([`AgentStatus::broker`](crate::AgentStatus::broker)) unless the status names one itself.
    pub fn with_agent_broker(&self, url: Option<String>) -> Store {
        Store {
            inner: Arc::new(Inner {
                agent_broker: url,
                ..(*self.inner).clone()
            }),
        }
    }

    /// The token broker's URL given by [`Store::with_agent_broker`].
    pub fn agent_broker(&self) -> Option<&str> {
        self.inner.agent_broker.as_deref()
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

    /// The path of the sidecar lock file ([`crate::LOCK_FILE`]; for a symlinked auth.json, the one
    /// beside its target, which every path to the file meets).
    pub fn lock_path(&self) -> &Path {
        &self.inner.lock_path
    }

    /// The path of Codex's outer lock file ([`crate::CODEX_LOCK_FILE`]) in the home.
    pub fn codex_lock_path(&self) -> &Path {
        &self.inner.write_locks[0]
    }

    /// The path of the single-flight refresh lock ([`crate::REFRESH_LOCK_FILE`]).
    pub fn refresh_lock_path(&self) -> &Path {
        &self.inner.refresh_lock_path
    }

    /// The path of the journal of refresh outcomes ([`crate::JOURNAL_FILE`]).
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
