//! A transactional store for Codex's `auth.json`.
//!
//! Several processes (terminals, editor extensions, app servers) share one `$CODEX_HOME/auth.json`.
//! This crate makes every access to it a transaction: an advisory lock on a sidecar file, atomic
//! and durable rename writes, and a *generation* (the SHA-256 of the file's bytes) so that every
//! write is a compare-and-swap.
//!
//! ```
//! # fn main() -> Result<(), codex_store::StoreError> {
//! # let codex_home = std::env::temp_dir().join(format!("codex-store-doc-{}", std::process::id()));
//! use codex_store::{AuthDotJson, Expect, Generation, Secret, Store, StoreError};
//!
//! let store = Store::open(&codex_home)?;            // creates the directory 0700 when missing
//! let snap = store.load()?;                         // no lock: atomic renames make reads whole
//! assert_eq!(snap.generation(), Generation::Absent);
//!
//! let auth = AuthDotJson { openai_api_key: Some(Secret::new("sk-example")), ..Default::default() };
//! let g1 = store.compare_and_swap(Expect::Absent, Some(&auth))?;     // create only
//! assert_eq!(store.load()?.generation(), g1);
//!
//! // A stale expectation writes nothing.
//! let stale = store.compare_and_swap(Expect::Absent, Some(&auth));
//! assert!(matches!(stale, Err(StoreError::Conflict { .. })));
//!
//! // Read-modify-write under the exclusive lock.
//! let tx = store.transaction()?;
//! let mut doc = tx.snapshot().auth().cloned().unwrap_or_default();
//! doc.openai_api_key = Some(Secret::new("sk-rotated"));
//! let g2 = tx.commit(Some(&doc))?;                   // consumes tx; dropping it would roll back
//! assert_ne!(g1, g2);
//!
//! store.compare_and_swap(Expect::Any, None)?;         // None deletes (logout)
//! # std::fs::remove_dir_all(&codex_home).ok();
//! # Ok(()) }
//! ```
//!
//! # Guarantees
//! - **No lost updates** among processes that use this store: every write happens under an
//!   exclusive `flock` on `auth.lock` and then on `auth.json.lock`, sidecars that are never
//!   renamed, deleted or truncated (locking `auth.json` itself fails: a rename swaps the inode
//!   under the lock).
//! - **Safe beside Codex 0.171.0**, which takes the same two locks in the same order (so no
//!   process holding one waits for one holding the other) and gives up on `auth.json.lock`
//!   after 5 s: the store holds the write locks only for one re-read and write. A slow operation
//!   (a refresh request) holds [`REFRESH_LOCK_FILE`] instead ([`Store::begin_rotation`]), which
//!   Codex never takes.
//! - **Redeemed tokens are not lost**: a [`Rotation`] reserves the save before the refresh token
//!   is sent ([`Rotation::reserve`]: a rotation file with room for the answer, fsynced), makes the
//!   answer durable in it before anything else, and installs it under the write locks
//!   ([`Reserved::save`]), merging into what a writer ignoring the locks wrote meanwhile. A crash
//!   leaves the rotation file, and the next process that takes the refresh lock or writes rolls it
//!   forward (rename, or merge when the file still holds the redeemed token of the same account),
//!   or discards it when auth.json now holds another account or none.
//! - **A journal** ([`JOURNAL_FILE`], [`read_journal`]) records redemptions, saves, refusals and
//!   recoveries with token fingerprints, never tokens; a refusal recorded for a generation tells
//!   every other process not to send that generation's token again ([`Rotation::refusal`]).
//! - **No torn reads**: a write goes to an exclusive 0600 temp file in the same directory, is
//!   fsynced, renamed over `auth.json`, and the directory is fsynced. A reader sees the old bytes
//!   or the new ones, and after a crash the file is one of the committed documents.
//! - **Compare-and-swap**: a write names the [`Generation`] it expects ([`Expect`]); a mismatch
//!   is [`StoreError::Conflict`] and writes nothing. Just before the rename the file is hashed
//!   again, so a writer that ignores the lock is caught rather than overwritten.
//! - **Bad input loses nothing**: an empty, cut-off, non-JSON, mistyped, over-1-MiB file, or one
//!   whose id token is not a JWT, is [`StoreError::Corrupt`] with its generation, and is only
//!   ever replaced by a compare-and-swap naming that generation or [`Expect::Any`].
//! - **Compatibility**: every file existing installations write loads; keys this crate does not
//!   know survive a rewrite in their order; the output is pretty-printed like theirs.
//! - Files are always written with mode 0600, whatever the old mode or the umask.
//!
//! # Policies
//! - Every lock wait is bounded by one setting, [`StoreOptions::lock_timeout`] (default
//!   45 s; [`Store::open`] takes it from `CODEX_STORE_LOCK_TIMEOUT` when set, and a value that
//!   is not a duration is [`StoreError::InvalidSetting`]); a timeout is
//!   [`StoreError::LockTimeout`]. A failing lock call (no `flock` support) is
//!   [`StoreError::Lock`]: the store never proceeds unlocked. Lock files that are not regular
//!   files (a planted FIFO) are refused without blocking.
//! - A symlinked `auth.json` is resolved when the store opens ([`Store::link`]), as git
//!   resolves a file it must lock: the lock beside the final target (taken after Codex's two
//!   locks in the home), the temp and rotation files and the rename all happen beside it, so
//!   every path to the file meets one lock, and the link survives writes. A target (or, for a
//!   dangling link, its directory) owned by another user is [`StoreError::ForeignTarget`]; a
//!   loop, or a link that appears after the store was opened, is [`StoreError::Symlink`]. A
//!   hard-linked `auth.json` (link count above 1) is not written: [`StoreError::HardLinked`].
//! - An `auth.json` that is not a regular file (a FIFO, a device) is refused with
//!   [`StoreError::NotARegularFile`]; it is opened non-blocking, so nothing hangs on it.
//! - Temp files (prefix [`TEMP_PREFIX`]) left by a crashed writer are swept under the lock by the
//!   next transaction or compare-and-swap. Rotation files ([`ROTATION_PREFIX`]) are never swept:
//!   they are installed or discarded by the recovery, only while no refresh holds the refresh
//!   lock.
//! - A [`Transaction`] holds both write locks until it is committed or dropped: keep it short
//!   (no network, no user input), or a Codex 0.171.0 process waiting for `auth.json.lock` gives
//!   up after 5 s and drops the tokens it just obtained.
//!
//! # Limitations
//! - Advisory locks bind only processes that take them. Existing installations write in place
//!   without a lock: the re-hash just before the rename narrows, but cannot close, the window in
//!   which such a write is overwritten (between the re-hash and the rename, microseconds), and a
//!   reader can catch such a writer half way (the store re-reads briefly, then reports Corrupt).
//! - Local file systems only: `flock` over NFS or other network file systems may be emulated,
//!   per-host, or absent.
//! - A lock wait that times out leaves a helper thread blocked in the kernel until the holder
//!   releases the lock; it then releases it at once.
//! - Taking the lock twice in one thread (a transaction inside a transaction) waits for itself
//!   until the timeout.
//! - Known keys are written in their file order; numbers in unknown keys are kept as
//!   `serde_json` represents them (very large or very precise numbers may be rewritten).
//!
//! # Security
//! - Secrets are [`Secret`]s: `Debug` redacts, there is no `Display`, and
//!   [`Secret::expose`] is the only way to the value. Errors name keys and paths, never values.
//! - The lock and temp files are created 0600 without following symlinks (`O_NOFOLLOW`), temp
//!   files exclusively (`O_EXCL`). [`Store::diagnose`] reports wide permissions, foreign owners,
//!   links, leftover temps and a directory writable by others.
//! - Secrets are not zeroed in memory when dropped.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

// The modules in layers, each using only those above it (and the leaves: `error`, `generation`,
// `options`, `secret`, `timestamp`, `jwt`, `auth_json`):
// names, side_file -> read -> snapshot -> replace, lock, link -> store (the handle) -> core
// (locks + snapshot) -> rotation_file -> recovery -> transaction, rotation -> journal users
// (agent, diagnose, backend).
mod agent;
mod auth_json;
pub mod backend;
pub mod codex_config;
mod core;
mod diagnose;
mod error;
mod generation;
mod journal;
mod jwt;
mod link;
mod lock;
pub mod names;
mod options;
mod read;
mod recovery;
mod replace;
mod rotation;
mod rotation_file;
mod secret;
pub mod side_file;
mod snapshot;
mod store;
mod timestamp;
mod transaction;

pub use agent::{AgentClaim, AgentPresence, AgentState, AgentStatus};
pub use auth_json::{AuthDotJson, AuthMode, FormatError, KeyOrder, TokenData};
pub use diagnose::Problem;
pub use error::{NotInstalledCause, Redeemer, StoreError};
pub use generation::{Expect, Generation};
pub use journal::{read_journal, JournalEvent, JournalRecord, TokenFate, JOURNAL_LIMIT};
pub use jwt::{token_expiry, IdTokenClaims, JwtError};
pub use names::{
    AUTH_FILE, CODEX_LOCK_FILE, IN_PLACE_PREFIX, JOURNAL_FILE, LOCK_FILE, REFRESH_LOCK_FILE,
    ROTATION_PREFIX, TEMP_PREFIX,
};
pub use options::{StoreOptions, WaitNotice, DEFAULT_LOCK_TIMEOUT, LOCK_TIMEOUT_ENV};
pub use read::MAX_FILE_SIZE;
pub use rotation::{Durability, Reserved, Rotation, SaveOutcome};
pub use rotation_file::merge as merge_rotated;
pub use secret::Secret;
pub use snapshot::Snapshot;
pub use store::Store;
pub use timestamp::Timestamp;
pub use transaction::Transaction;
