//! [`Rotation`]: the single-flight lock for a refresh, and the rotation file that makes the new
//! tokens durable before anything else happens.
//!
//! A refresh redeems a rotating refresh token: once the endpoint has answered, the new tokens
//! are the only live ones, and losing them means signing in again. So:
//! 1. [`Store::begin_rotation`] takes `auth.json.refresh.lock` (codex-store's own lock, held
//!    across the request; Codex never takes it, so it never waits for it), installs what a
//!    crashed refresh left, and reads auth.json.
//! 2. [`Rotation::reserve`] creates the rotation file in the store directory and fills it with
//!    as many spaces as the answer will need, fsynced: the directory is writable, there is room
//!    and an inode, auth.json is replaceable; if not, nothing is sent. The directory is fsynced
//!    too, so that a crash during the request still finds the token spent (if that fsync
//!    fails, the save fsyncs the directory after the answer).
//! 3. [`Reserved::save`] writes the new document into that file and fsyncs it (and the
//!    directory, if it could not be synced before the request): from then on a crash is
//!    recovered by the next process. Only then does it take
//!    `auth.lock` and `auth.json.lock`, briefly, to rename the file over auth.json, merging into
//!    whatever a writer ignoring the locks wrote meanwhile.

use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use crate::auth_json::AuthDotJson;
use crate::core::{Held, Locked};
use crate::error::{NotInstalledCause, Redeemer, StoreError};
use crate::generation::Generation;
use crate::journal::{self, JournalEvent, JournalRecord, TokenFate};
use crate::lock::{self, LockGuard};
use crate::read::MAX_FILE_SIZE;
use crate::replace;
use crate::rotation_file::{self, merge, PendingFile, RotationName, SENT_MARK};
use crate::secret::Secret;
use crate::snapshot::Snapshot;
use crate::store::Store;

/// How often a save re-reads and merges when auth.json keeps changing under it (writers that
/// ignore the locks) before it gives up, leaving the rotation file for the next process.
const INSTALL_ATTEMPTS: u32 = 8;

/// Room reserved beyond twice the current document, for answers larger than the tokens they
/// replace.
const RESERVE_MARGIN: u64 = 16 * 1024;

/// A refresh in progress: codex-store's single-flight lock is held, and
/// [`Rotation::snapshot`] is what auth.json held once it was taken. Dropping it releases the
/// lock.
#[derive(Debug)]
#[must_use = "dropping a rotation releases the refresh lock"]
pub struct Rotation {
    held: Held<LockGuard>,
    /// What the journal said of the snapshot's refresh token when it was read.
    fate: Option<TokenFate>,
}

impl Store {
    /// Takes the single-flight refresh lock (waiting up to the store's
    /// [`crate::StoreOptions::lock_timeout`], which should exceed the longest refresh request),
    /// installs the rotation files of crashed refreshes, and reads auth.json.
    ///
    /// # Errors
    /// [`StoreError::LockTimeout`] when another process holds the refresh lock for longer than
    /// the lock timeout; any error of the recovery (which takes the write locks) or of the read.
    pub fn begin_rotation(&self) -> Result<Rotation, StoreError> {
        let flight = lock::acquire(self.refresh_lock_path(), self.options())?;
        self.rotation_under(flight)
    }

    /// Like [`Store::begin_rotation`], but never waits for the refresh lock: `None` when another
    /// refresh holds it (for a caller whose credentials are still valid, and who need not wait
    /// for that refresh to end).
    ///
    /// # Errors
    /// Any error of the recovery (which takes the write locks) or of the read.
    pub fn try_begin_rotation(&self) -> Result<Option<Rotation>, StoreError> {
        match lock::try_acquire(self.refresh_lock_path())? {
            Some(flight) => self.rotation_under(flight).map(Some),
            None => Ok(None),
        }
    }

    fn rotation_under(&self, flight: LockGuard) -> Result<Rotation, StoreError> {
        self.check_link_unchanged()?;
        if !replace::rotation_files(self.path()).is_empty() || replace::has_in_place(self.path()) {
            let _locked = self.lock()?;
            replace::finish_in_place(self.path());
            crate::recovery::recover_locked(self)?;
        }
        let held = Held::read(self, flight)?;
        let fate = fate_in_journal(self, held.snapshot());
        Ok(Rotation { held, fate })
    }
}

impl Store {
    /// A refresh must save where every reader looks: if auth.json's symbolic link changed since
    /// the store resolved it (retargeted, removed, or a link where there was none), the store
    /// would write a file nobody reads. Refused before anything is sent.
    fn check_link_unchanged(&self) -> Result<(), StoreError> {
        let in_home = self.home().join(crate::names::AUTH_FILE);
        let now = crate::link::resolve(&in_home)?;
        let opened = self.link().map(|_| self.path().to_path_buf());
        if now != opened {
            return Err(StoreError::Symlink { path: in_home });
        }
        Ok(())
    }
}

impl Rotation {
    /// What auth.json held when the lock was taken (or at the last [`Rotation::reread`]).
    pub fn snapshot(&self) -> &Snapshot {
        self.held.snapshot()
    }

    /// The store.
    pub fn store(&self) -> &Store {
        self.held.store()
    }

    /// Reads auth.json again.
    ///
    /// # Errors
    /// As [`Store::load`]; the previous snapshot stays.
    pub fn reread(&mut self) -> Result<(), StoreError> {
        self.held.reread()?;
        self.fate = fate_in_journal(self.held.store(), self.held.snapshot());
        Ok(())
    }

    /// What the journal said of the snapshot's refresh token when it was read (by
    /// fingerprint, in any file; a refusal also by generation): refused, spent, or sent without
    /// a known outcome. [`Rotation::reserve`] checks that it still says so.
    pub fn fate(&self) -> Option<&TokenFate> {
        self.fate.as_ref()
    }

    /// Appends a record to the journal (best effort: the journal is advice, not state).
    pub fn record(&self, record: &JournalRecord) {
        let _ = journal::append(self.store().journal_path(), record);
    }

    /// Reserves everything the save of the answer to redeeming `redeemed` (the snapshot's
    /// refresh token) needs, before it is sent, and makes sure nobody else can be sending it:
    /// 1. checks that auth.json can be replaced and that no rotation of this token waits;
    /// 2. creates the rotation file in the store directory, locks it (`flock`, held until the
    ///    save ends: no recovery touches a rotation file whose lock is held) and fills it with
    ///    room for the answer, fsynced with the directory; journals `redeeming`;
    /// 3. then, under the write locks (waiting for them within the lock timeout, so that a token
    ///    is never redeemed whose answer could not be installed), checks again: auth.json still
    ///    holds the token (rewritten or not), the journal's word on this token is still [`Rotation::fate`]
    ///    (what the caller judged by), and no other rotation file redeems it. Two refreshes whose refresh locks
    ///    are different files (the lock file was deleted and re-created under one of them) can
    ///    both pass the checks made before either reserved; after reserving, at least one of
    ///    them sees the other's reservation.
    ///
    /// # Errors
    /// [`StoreError::Symlink`], [`StoreError::HardLinked`] when auth.json cannot be replaced;
    /// [`StoreError::Reserve`] when the file cannot be created, locked, filled or synced
    /// (directory not writable, no free inode, disk full); [`StoreError::LockTimeout`] when the
    /// write locks stay held past the lock timeout; [`StoreError::Conflict`] when auth.json
    /// no longer holds that token, or does not read as a document (read it again); [`StoreError::AlreadyRedeemed`] when another
    /// refresh reserved or redeemed this token meanwhile. In every case nothing may be sent,
    /// and the reservation is gone.
    pub fn reserve(self, redeemed: &Secret) -> Result<Reserved, StoreError> {
        replace::check_replaceable(self.store().path())?;
        let fingerprint = redeemed.fingerprint();
        // A rotation of this very token still waiting to be installed means it is spent: sending
        // it again would be refused, and might revoke the whole token family.
        if let Some(pending) = self.rotations_of(&fingerprint, None).into_iter().next() {
            let pending = self.store().dir().join(pending);
            if rotation_file::owned(&pending) {
                // A refresh under another refresh lock file (this one was deleted and
                // re-created) is sending it now.
                return Err(StoreError::AlreadyRedeemed {
                    path: self.store().path().to_path_buf(),
                    by: Redeemer::InFlight,
                });
            }
            return Err(StoreError::NotInstalled {
                path: self.store().path().to_path_buf(),
                pending,
                reason: "this refresh token was already redeemed by an interrupted refresh whose \
                         tokens could not be installed yet; it is not sent again"
                    .into(),
                cause: NotInstalledCause::Other,
            });
        }
        let base = self.snapshot().generation();
        let room = (self.snapshot().len() * 2 + RESERVE_MARGIN).min(MAX_FILE_SIZE);
        let (file, path) =
            rotation_file::create_filled(self.store().path(), base, &fingerprint, room)?;
        // The reservation's name on disk before anything is sent, so that a crash during the
        // request still finds the token spent; and the answer's save after the request has one
        // fsync fewer to wait for (the directory's, done here). If it cannot be synced now, the
        // save syncs it after the answer.
        let name_durable = replace::sync_dir(self.store().dir()).is_ok();
        let mut record = JournalRecord::new(JournalEvent::Redeeming, base);
        record.account = self
            .snapshot()
            .auth()
            .and_then(|d| d.tokens.as_ref())
            .and_then(|t| t.account());
        record.refresh = Some(fingerprint.clone());
        self.record(&record);
        let reserved = Reserved {
            rotation: self,
            pending: PendingFile {
                path,
                file: Some(file),
                keep: false,
                name_durable,
            },
            base,
            redeemed: fingerprint,
        };
        reserved.check_again()?;
        Ok(reserved)
    }

    /// The names of the rotation files that redeem the token of fingerprint `redeemed`, but
    /// `except`.
    fn rotations_of(&self, redeemed: &str, except: Option<&Path>) -> Vec<String> {
        let auth = self.store().path();
        replace::rotation_files(auth)
            .into_iter()
            .filter(|n| RotationName::parse(auth, n).is_some_and(|r| r.redeemed == redeemed))
            .filter(|n| except.and_then(Path::file_name) != Some(std::ffi::OsStr::new(n)))
            .collect()
    }
}

impl Reserved {
    /// Step 3 of [`Rotation::reserve`]: the checks made again, under the write locks, once the
    /// reservation exists.
    fn check_again(&self) -> Result<(), StoreError> {
        let store = self.rotation.store();
        let path = store.path().to_path_buf();
        // auth.json must still hold the token about to be sent. A rewrite of the same tokens (a
        // writer ignoring the locks) is no change: the save merges into it. Anything else (a
        // successor installed by another refresh, Codex's rotation, a sign-in, a file half
        // written) is read again from the start.
        let changed = |actual| StoreError::Conflict {
            path: path.clone(),
            expected: crate::Expect::Generation(self.base),
            actual,
        };
        let locked = match Locked::take(store) {
            Ok(locked) => locked,
            Err(StoreError::Corrupt { generation, .. }) => return Err(changed(generation)),
            Err(e) => return Err(e),
        };
        let current = locked.snapshot();
        let holds_redeemed = current
            .auth()
            .and_then(|d| d.tokens.as_ref())
            .is_some_and(|t| t.refresh_token.fingerprint() == self.redeemed);
        if !holds_redeemed {
            return Err(changed(current.generation()));
        }
        let now = journal::fate_of(store.journal_path(), self.base, Some(&self.redeemed));
        if now.as_ref() != self.rotation.fate() {
            return Err(StoreError::AlreadyRedeemed {
                path,
                by: Redeemer::Journaled,
            });
        }
        if !self
            .rotation
            .rotations_of(&self.redeemed, Some(&self.pending.path))
            .is_empty()
        {
            return Err(StoreError::AlreadyRedeemed {
                path,
                by: Redeemer::InFlight,
            });
        }
        Ok(())
    }
}

impl Store {
    /// What the journal says of the refresh token `snapshot` holds: refused for good, spent, or
    /// sent without a known outcome; `None` when it says nothing (or cannot be read).
    pub fn token_fate(&self, snapshot: &Snapshot) -> Option<TokenFate> {
        fate_in_journal(self, snapshot)
    }
}

/// What the journal says of `snapshot`'s refresh token.
fn fate_in_journal(store: &Store, snapshot: &Snapshot) -> Option<TokenFate> {
    let refresh = snapshot
        .auth()
        .and_then(|d| d.tokens.as_ref())
        .map(|t| t.refresh_token.fingerprint());
    journal::fate_of(
        store.journal_path(),
        snapshot.generation(),
        refresh.as_deref(),
    )
}

/// How durable an installed document is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Durability {
    /// The file and the directory were fsynced.
    Durable,
    /// The document is in place, but an fsync failed: a crash of the machine may lose it.
    NotDurable {
        /// What failed, without any secret.
        reason: String,
    },
}

/// What a [`Reserved::save`] did.
#[derive(Debug)]
pub enum SaveOutcome {
    /// The new tokens are in auth.json.
    Installed {
        /// The generation written.
        generation: Generation,
        /// The document written: the one given, or, when auth.json had changed, the new tokens
        /// merged into what it held.
        document: AuthDotJson,
        /// Whether auth.json had changed since the snapshot and the tokens were merged.
        merged: bool,
        /// Whether it was fsynced.
        durability: Durability,
    },
    /// auth.json now holds another account, no credentials, or newer tokens than the ones
    /// redeemed (another process rotated them, or a new sign-in): they win, and the new tokens
    /// were discarded.
    Superseded {
        /// What auth.json holds.
        current: Snapshot,
    },
}

/// What a save does when auth.json changed since the rotation's base ([`Reserved::rebase`]).
enum Rebase {
    /// The new tokens merged into what auth.json holds now (the document and its bytes), durable
    /// in the pending rotation file.
    Merged(Box<AuthDotJson>, Vec<u8>),
    /// auth.json holds newer tokens, another account or none: the new tokens were discarded.
    Superseded,
}

/// A rotation whose save is prepared: the rotation file exists, filled with room for the answer.
/// Dropping it before [`Reserved::save`] removes the file and releases the refresh lock.
#[derive(Debug)]
#[must_use = "dropping a reservation discards it"]
pub struct Reserved {
    rotation: Rotation,
    pending: PendingFile,
    base: Generation,
    redeemed: String,
}

impl Reserved {
    /// The rotation this reservation belongs to.
    pub fn rotation(&self) -> &Rotation {
        &self.rotation
    }

    /// The rotation file's path.
    pub fn path(&self) -> &Path {
        &self.pending.path
    }

    /// Gives the reservation up after the token was sent without a usable answer, journaling
    /// `record` (refused, unanswered, spent) before the reservation goes. If the journal cannot
    /// take it, the rotation file stays, marked (not a document: the recovery journals its token
    /// as spent when it can, and no refresh sends that token while it stays), so that no process
    /// takes the token for one never sent.
    pub fn abandon_recorded(mut self, record: &JournalRecord) -> Rotation {
        if journal::append(self.rotation.store().journal_path(), record).is_err() {
            let mut mark = SENT_MARK.to_vec();
            mark.extend_from_slice(record.event.name().as_bytes());
            mark.push(b'\n');
            let marked = self
                .pending
                .file
                .as_ref()
                .is_some_and(|file| rotation_file::fill(file, &mark).is_ok());
            self.pending.keep = marked;
        }
        self.abandon()
    }

    /// Gives the reservation up (no answer came): removes the rotation file and returns the
    /// rotation, whose lock is still held.
    pub fn abandon(self) -> Rotation {
        let Reserved {
            rotation, pending, ..
        } = self;
        drop(pending);
        rotation
    }

    /// Makes `doc` (the snapshot's document with the new tokens) durable in the rotation file,
    /// then installs it: under `auth.lock` and `auth.json.lock`, renamed over auth.json if it
    /// is still the snapshot's generation, else merged into what it holds now (same account)
    /// and written again, a bounded number of times.
    ///
    /// # Errors
    /// - [`StoreError::InvalidDocument`] when `doc` would not load back (nothing written; the
    ///   caller should not have asked).
    /// - [`StoreError::Unsaved`] when no file in the store directory could take the new tokens:
    ///   they exist only in the caller's memory.
    /// - [`StoreError::NotInstalled`] when they are safe in the rotation file but auth.json
    ///   could not be replaced (locks, a corrupt file, one changing all the time): the next
    ///   process that takes the refresh lock or writes installs them.
    ///
    /// # Security
    /// The rotation file is 0600, created exclusively without following symlinks.
    pub fn save(mut self, doc: &AuthDotJson) -> Result<SaveOutcome, StoreError> {
        let store = self.rotation.store().clone();
        let auth_path = store.path().to_path_buf();
        crate::store::validate(&auth_path, doc)?;
        let mut doc = doc.clone();
        let mut bytes = doc.to_json();
        let mut durability = self.make_durable(&bytes)?;
        let mut merged = false;
        let mut last_problem = String::from("auth.json kept changing");
        for attempt in 0..INSTALL_ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(2 << attempt.min(5)));
            }
            // Only the locks time out; the read fails otherwise.
            let locked = match Locked::take(&store) {
                Ok(locked) => locked,
                Err(StoreError::Corrupt { reason, .. }) => {
                    // Maybe a writer ignoring the lock, half way: try again.
                    last_problem = format!(
                        "auth.json does not read as a document ({reason}); a writer ignoring the \
                         locks may be half way"
                    );
                    continue;
                }
                Err(e) => {
                    let cause = match e {
                        StoreError::LockTimeout { .. } => NotInstalledCause::LockTimeout,
                        _ => NotInstalledCause::Other,
                    };
                    return Err(self.not_installed_because(e.to_string(), cause));
                }
            };
            let current = locked.snapshot();
            if current.generation() != self.base {
                match self.rebase(current, &doc)? {
                    Rebase::Merged(next, next_bytes) => {
                        doc = *next;
                        bytes = next_bytes;
                        merged = true;
                    }
                    Rebase::Superseded => {
                        return Ok(SaveOutcome::Superseded {
                            current: locked.into_snapshot(),
                        })
                    }
                }
            }
            // A writer ignoring the lock may have written since we read: never overwrite it.
            if replace::recheck(&auth_path, self.base).is_err() {
                last_problem = "auth.json kept changing under the save (a writer ignoring the \
                                locks rewrote it during every attempt)"
                    .into();
                drop(locked);
                continue;
            }
            if let Err(e) = replace::install(&self.pending.path, &auth_path, &bytes, true) {
                return Err(self.not_installed(format!("cannot rename it over auth.json: {e}")));
            }
            self.pending.keep = true; // it is auth.json now
                                      // Its lock now sits on auth.json's inode: let it go at once.
            self.pending.file = None;
            if let Err(e) = replace::sync_dir(store.dir()) {
                durability = Durability::NotDurable {
                    reason: e.to_string(),
                };
            }
            drop(locked);
            let generation = Generation::of_bytes(&bytes);
            self.journal_saved(generation, &doc);
            return Ok(SaveOutcome::Installed {
                generation,
                document: doc,
                merged,
                durability,
            });
        }
        Err(self.not_installed(last_problem))
    }

    /// Auth.json changed since the rotation's base (`current` is what it holds now, read under
    /// the write locks): the new tokens of `doc` merged into it, durable in a fresh rotation file
    /// that becomes the pending one, while it still holds the token this rotation redeemed (a
    /// writer ignoring the locks rewrote it). Newer tokens there (Codex's own rotation, a new
    /// sign-in), another account or none win: merging ours back over them would lose their
    /// rotation, so ours are discarded.
    ///
    /// # Errors
    /// [`StoreError::NotInstalled`] when the merged document cannot be made durable.
    fn rebase(&mut self, current: &Snapshot, doc: &AuthDotJson) -> Result<Rebase, StoreError> {
        let cur = current.auth();
        let holds_redeemed = cur
            .and_then(|d| d.tokens.as_ref())
            .is_some_and(|t| t.refresh_token.fingerprint() == self.redeemed);
        let next = cur.filter(|_| holds_redeemed).and_then(|c| merge(c, doc));
        let Some(next) = next else {
            self.discard(if holds_redeemed || cur.is_none() {
                "superseded"
            } else {
                "auth.json holds newer tokens"
            });
            return Ok(Rebase::Superseded);
        };
        // The new tokens merged into what is there now, durable before the old file goes.
        let next_bytes = next.to_json();
        match rotation_file::write_fresh(
            self.rotation.store().path(),
            current.generation(),
            &self.redeemed,
            &next_bytes,
        ) {
            Ok(fresh) => {
                let mut old = std::mem::replace(&mut self.pending, fresh);
                old.keep = false;
                drop(old);
                self.base = current.generation();
                Ok(Rebase::Merged(Box::new(next), next_bytes))
            }
            Err(e) => Err(self.not_installed(e.to_string())),
        }
    }

    /// Journals that `doc`, of `generation`, was installed over the rotation's base.
    fn journal_saved(&self, generation: Generation, doc: &AuthDotJson) {
        let mut record = JournalRecord::new(JournalEvent::Saved, self.base);
        record.new_generation = Some(generation.to_string());
        record.account = doc.tokens.as_ref().and_then(|t| t.account());
        record.refresh = Some(self.redeemed.clone());
        record.new_refresh = doc.tokens.as_ref().map(|t| t.refresh_token.fingerprint());
        self.rotation.record(&record);
    }

    /// Writes `bytes` into the rotation file durably; on failure, into a fresh one; and when
    /// even that fails but the bytes are in the first file, goes on without the fsync (a
    /// document in place beats one lost), saying so.
    fn make_durable(&mut self, bytes: &[u8]) -> Result<Durability, StoreError> {
        let written = match &self.pending.file {
            Some(file) => file
                .write_all_at(bytes, 0)
                .and_then(|()| file.set_len(bytes.len() as u64)),
            None => Err(io::Error::other("the rotation file is not open")),
        };
        let wrote = written.is_ok();
        let synced = written.and_then(|()| match &self.pending.file {
            Some(file) => file.sync_all(),
            None => Ok(()),
        });
        let dir = self.rotation.store().dir().to_path_buf();
        let first_error = match synced {
            Ok(()) if self.pending.name_durable => {
                self.pending.keep = true;
                return Ok(Durability::Durable);
            }
            Ok(()) => {
                self.pending.keep = true;
                return Ok(match replace::sync_dir(&dir) {
                    Ok(()) => Durability::Durable,
                    Err(e) => Durability::NotDurable {
                        reason: e.to_string(),
                    },
                });
            }
            Err(e) => e,
        };
        let auth = self.rotation.store().path().to_path_buf();
        match rotation_file::write_fresh(&auth, self.base, &self.redeemed, bytes) {
            Ok(fresh) => {
                // The fresh file replaces the failed one (which is removed).
                drop(std::mem::replace(&mut self.pending, fresh));
                Ok(Durability::Durable)
            }
            Err(_) if wrote => {
                // The bytes are in the first file, only not known to be on disk.
                self.pending.keep = true;
                Ok(Durability::NotDurable {
                    reason: format!(
                        "cannot fsync {}: {first_error}",
                        self.pending.path.display()
                    ),
                })
            }
            Err(_) => Err(StoreError::Unsaved {
                path: self.pending.path.clone(),
                source: first_error,
            }),
        }
    }

    fn not_installed(&mut self, reason: String) -> StoreError {
        self.not_installed_because(reason, NotInstalledCause::Other)
    }

    fn not_installed_because(&mut self, reason: String, cause: NotInstalledCause) -> StoreError {
        self.pending.keep = true; // it holds the only live tokens
        StoreError::NotInstalled {
            path: self.rotation.store().path().to_path_buf(),
            pending: self.pending.path.clone(),
            reason,
            cause,
        }
    }

    fn discard(&mut self, why: &str) {
        self.pending.keep = false;
        let _ = fs::remove_file(&self.pending.path);
        self.pending.keep = true; // already gone
        let mut record = JournalRecord::new(JournalEvent::Discarded, self.base);
        record.refresh = Some(self.redeemed.clone());
        record.code = Some(why.to_owned());
        self.rotation.record(&record);
    }
}
