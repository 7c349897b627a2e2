//! [`StoreError`]: everything a store operation can report.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::generation::{Expect, Generation};
use crate::options::LOCK_TIMEOUT_ENV;

/// An error from a store operation. Every variant names the path it concerns and says what the
/// user can do; none contains a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The file on disk is not the generation the write expected. Nothing was written.
    #[error(
        "{path} changed under us (expected {expected}, found {actual}); nothing was written: \
         re-read the file and try again"
    )]
    Conflict {
        /// auth.json.
        path: PathBuf,
        /// What the write expected.
        expected: Expect,
        /// What is on disk.
        actual: Generation,
    },

    /// Another process held the lock for longer than the bounded wait.
    #[error(
        "another process holds the lock {path}: waited {:.1} s; let it finish and retry, or wait \
         longer with {LOCK_TIMEOUT_ENV}=60s (or the codex-store command's --lock-timeout 60s)",
        waited.as_secs_f64()
    )]
    LockTimeout {
        /// The lock file.
        path: PathBuf,
        /// How long we waited.
        waited: Duration,
    },

    /// The lock call itself failed (for example, a file system without `flock`). The store never
    /// goes on unlocked.
    #[error(
        "cannot lock {path}: {source}; nothing was read or written: keep CODEX_HOME on a local \
         file system that supports flock"
    )]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// auth.json exists but is not a valid document. It is left untouched.
    #[error(
        "{path} is corrupt: {reason} (generation {generation}); it was left untouched: \
         repair it, or sign in again to replace it"
    )]
    Corrupt {
        /// auth.json.
        path: PathBuf,
        /// The generation of the bad bytes; a compare-and-swap naming it may replace them.
        generation: Generation,
        /// What is wrong, naming the key but never a value.
        reason: String,
    },

    /// auth.json is a chain of symbolic links too long to follow (a loop), or its link changed
    /// (appeared, was retargeted or removed) after the store resolved it.
    #[error(
        "{path} is a symbolic link the store cannot follow (a loop, or a link that appeared or \
         changed after the store was opened); point it straight at a regular file, or open the \
         store again, and retry"
    )]
    Symlink {
        /// auth.json.
        path: PathBuf,
    },

    /// auth.json is a symbolic link whose target (or, dangling, the target's directory) belongs
    /// to another user: the store neither reads nor writes through it.
    #[error(
        "{link} is a symbolic link to {target}, which belongs to uid {uid}, not to you; the store \
         does not read or write other users' credentials: point the link at a file of yours"
    )]
    ForeignTarget {
        /// `CODEX_HOME/auth.json`.
        link: PathBuf,
        /// The final target.
        target: PathBuf,
        /// Its owner.
        uid: u32,
    },

    /// auth.json has other hard links; replacing it would silently split them.
    #[error(
        "{path} has {links} hard links; a replacement would split them: remove the other links \
         (find them with `find / -samefile {path}`)"
    )]
    HardLinked {
        /// auth.json.
        path: PathBuf,
        /// The link count.
        links: u64,
    },

    /// The document to write would not load back (for example an id token that is not a JWT).
    /// Nothing was written.
    #[error("refusing to write {path}: {reason}; nothing was written: fix the credentials first")]
    InvalidDocument {
        /// auth.json.
        path: PathBuf,
        /// What is wrong, naming the key but never a value.
        reason: String,
    },

    /// auth.json (or one of its lock files, or the journal) is not a regular file (a FIFO, a
    /// device, a directory).
    #[error(
        "{path} is not a regular file; move it away (codex-store recreates lock files; for \
         auth.json, sign in again)"
    )]
    NotARegularFile {
        /// auth.json.
        path: PathBuf,
    },

    /// The store directory exists but is not a directory.
    #[error("{path} is not a directory; point CODEX_HOME at a directory")]
    NotADirectory {
        /// The store directory.
        path: PathBuf,
    },

    /// The save of new tokens could not be prepared before the refresh request: the rotation
    /// file could not be created, filled or synced. No request was sent.
    #[error(
        "cannot prepare the save of new tokens at {path}: {source}; no refresh request was sent: \
         free disk space (and inodes) and make the directory writable, then retry"
    )]
    Reserve {
        /// The rotation file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// New tokens were obtained but no file in the store directory could take them: they are
    /// only in this process's memory.
    #[error(
        "the new tokens could not be written (to {path}): {source}; they are only in this \
         process's memory, and the old refresh token is spent: free disk space and retry at once \
         from this process, or sign in again"
    )]
    Unsaved {
        /// The file the write failed on.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// New tokens are safe in a rotation file but could not be installed in auth.json.
    #[error(
        "the new tokens are saved in {pending} but could not be written to {path}: {reason}; the \
         next codex-store command that refreshes or writes installs them (run `codex-store \
         refresh`)"
    )]
    NotInstalled {
        /// auth.json.
        path: PathBuf,
        /// The rotation file holding the tokens.
        pending: PathBuf,
        /// Why, without any secret.
        reason: String,
        /// What kind of failure it was.
        cause: NotInstalledCause,
    },

    /// The refresh token is being redeemed, or already was, by another refresh: it is not sent
    /// again.
    #[error("the refresh token in {path} {by}; it is not sent again")]
    AlreadyRedeemed {
        /// auth.json.
        path: PathBuf,
        /// Who has it.
        by: Redeemer,
    },

    /// The write happened (the new file is in place, or the old one removed) but the directory
    /// could not be fsynced, so a power loss may undo it. Callers may treat it as success with a
    /// warning.
    #[error(
        "{path} was written (generation {generation}) but its directory could not be fsynced: \
         {source}; the change is in place now, but a power loss may undo it: check the disk"
    )]
    NotDurable {
        /// auth.json.
        path: PathBuf,
        /// The generation now in place.
        generation: Generation,
        /// The OS error of the fsync.
        #[source]
        source: io::Error,
    },

    /// A setting (an environment variable) has a value that cannot be used.
    #[error("{name} is set to `{value}`, which is not {expected}; fix or unset it")]
    InvalidSetting {
        /// The variable.
        name: &'static str,
        /// Its value, escaped.
        value: String,
        /// What it should be.
        expected: &'static str,
    },

    /// Another agent already keeps this auth.json fresh.
    #[error(
        "another codex-store agent already runs for this auth.json ({}; it holds {path}): \
         one agent per login is enough; stop it first to start another",
        match pid { Some(pid) => format!("pid {pid}"), None => "pid not published yet".to_owned() }
    )]
    AgentRunning {
        /// The agent's claim file.
        path: PathBuf,
        /// The other agent's process id, when it published one.
        pid: Option<u32>,
    },

    /// An I/O error.
    #[error("cannot {action} {path}: {source}; check that the path exists and is yours")]
    Io {
        /// What was being done (`read`, `create`, `rename over`, ...).
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl StoreError {
    /// For [`StoreError::NotDurable`], the generation that is in place (the write happened);
    /// every other error is returned as it is. For callers that treat a missing directory fsync
    /// as success with a warning.
    ///
    /// # Errors
    /// `self`, unless it is [`StoreError::NotDurable`].
    pub fn accept_not_durable(self) -> Result<Generation, StoreError> {
        match self {
            StoreError::NotDurable { generation, .. } => Ok(generation),
            other => Err(other),
        }
    }

    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StoreError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// Why new tokens safe in a rotation file could not be installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotInstalledCause {
    /// The write locks stayed held past the lock timeout.
    LockTimeout,
    /// Anything else (auth.json unreadable or changing all the time, a failed rename).
    Other,
}

/// Who redeemed a refresh token, for [`StoreError::AlreadyRedeemed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Redeemer {
    /// Another refresh reserved it and may be sending it now.
    InFlight,
    /// The journal recorded it redeemed, refused or sent since it was checked.
    Journaled,
}

impl std::fmt::Display for Redeemer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Redeemer::InFlight => "is being redeemed by another refresh",
            Redeemer::Journaled => "was redeemed by another refresh meanwhile",
        })
    }
}
