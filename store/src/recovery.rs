//! Recovery: installing the rotation files of refreshes that crashed after the answer.
//!
//! A rotation file that holds a document is the only copy of redeemed tokens. Under the refresh
//! lock and the write locks, each rotation file whose own lock (`flock`, taken by its owner from
//! reserving until its save ends) is free is:
//! - left alone while its lock is held: a refresh is under way and owns it (its refresh lock
//!   may be another file than ours, if the lock file was deleted and re-created);
//! - removed, when it is not a regular file (a FIFO, a device or a link planted at such a name
//!   holds no tokens of ours, and is never opened blocking or followed);
//! - removed, when it holds only its reserved spaces (the request was never answered);
//! - renamed over auth.json, when auth.json is still the generation it replaces (roll forward);
//! - merged into auth.json, when auth.json changed but still holds the redeemed refresh token
//!   of the same account (a writer ignoring the locks rewrote it);
//! - discarded, when auth.json holds another account, other tokens, or none: they win;
//! - discarded and its token journaled as spent, when it is cut short by a crash before its
//!   fsync: an answer existed, so that token must never be sent again;
//! - left alone, when it cannot be read (`inspect` reports it); and when auth.json cannot be
//!   read (a writer ignoring the locks, half way), the recovery fails with that error, so that
//!   no refresh goes on to redeem the token the rotation already redeemed.

use std::fs::{self, File};
use std::io::{self, Read};

use crate::auth_json::AuthDotJson;
use crate::error::StoreError;
use crate::generation::Generation;
use crate::journal::{self, JournalEvent, JournalRecord};
use crate::lock::{self, StoreLock};
use crate::names;
use crate::read::{self, RawFile, MAX_FILE_SIZE};
use crate::replace;
use crate::rotation_file::{merge, RotationName, SENT_MARK};
use crate::secret::Secret;
use crate::side_file::{self, SideFile};
use crate::store::Store;

/// What to do with one rotation file.
enum Verdict {
    RemoveUnused,
    RemoveForeign,
    /// No answer to keep, but an outcome to journal before the file goes.
    Outcome(JournalEvent, &'static str),
    RollForward(Generation),
    FinishInPlace(Vec<u8>),
    Merge(Box<AuthDotJson>, Generation),
    Discard(&'static str),
    Leave,
}

impl Store {
    /// Installs (or discards) the rotation files a crashed refresh left, if no refresh is
    /// running now. Never waits for the refresh lock; returns whether it could look.
    ///
    /// # Errors
    /// Errors of the write locks, of reading auth.json, or of the installation.
    pub fn recover(&self) -> Result<bool, StoreError> {
        let rotations = !replace::rotation_files(self.path()).is_empty();
        let in_place = replace::has_in_place(self.path());
        if !rotations && !in_place {
            return Ok(true);
        }
        // An interrupted in-place write needs only the write locks; a rotation file also needs
        // the refresh lock (a running refresh owns its own).
        let flight = if rotations {
            lock::try_acquire(self.refresh_lock_path())?
        } else {
            None
        };
        let _locked = self.lock()?;
        replace::finish_in_place(self.path());
        if flight.is_some() {
            recover_locked(self)?;
        }
        Ok(!rotations || flight.is_some())
    }

    /// Takes the write locks, sweeps leftover temp files, and installs the rotations of crashed
    /// refreshes when no refresh is running.
    pub(crate) fn lock_and_tidy(&self) -> Result<StoreLock, StoreError> {
        let lock = self.lock()?;
        let leftovers = replace::sweep_temps(self.path());
        if leftovers.rotations {
            // Non-blocking: a refresh running now owns its rotation file.
            if let Some(_flight) = lock::try_acquire(self.refresh_lock_path())? {
                // A recovery that cannot finish (auth.json corrupt) must not block this write
                // (the one way to replace a corrupt file): the rotation file stays, and no
                // refresh goes on while it does (`Store::begin_rotation` fails).
                let _ = recover_locked(self);
            }
        }
        Ok(lock)
    }
}

/// Runs the recovery. The caller holds the refresh lock and the write locks.
pub(crate) fn recover_locked(store: &Store) -> Result<(), StoreError> {
    for name in replace::rotation_files(store.path()) {
        let Some(parsed) = RotationName::parse(store.path(), &name) else {
            continue;
        };
        let path = store.dir().join(&name);
        // The rotation file's lock, held until its verdict is carried out.
        let (verdict, _owned) = judge(store, &path, &parsed)?;
        let base = parsed.base.clone();
        // The new refresh token's fingerprint goes with `recovered`: only a rotation to another
        // token makes the redeemed one spent (an answer may keep it).
        let record = |event, written: Option<&[u8]>, code: Option<&str>| {
            let mut r = JournalRecord::new(event, Generation::Absent);
            r.generation = Some(base.clone());
            r.new_generation = written.map(|w| Generation::of_bytes(w).to_string());
            r.refresh = Some(parsed.redeemed.clone());
            r.new_refresh = written
                .and_then(|w| AuthDotJson::from_json(w).ok())
                .and_then(|d| d.tokens.map(|t| t.refresh_token.fingerprint()));
            r.code = code.map(str::to_owned);
            journal::append(store.journal_path(), &r)
        };
        match verdict {
            Verdict::RemoveUnused | Verdict::RemoveForeign => {
                let _ = fs::remove_file(&path);
            }
            Verdict::Outcome(event, why) => {
                // Journaled before the file goes. If the journal cannot say it, the file stays
                // and says it (the next recovery tries again; meanwhile no refresh sends that
                // token, see `Rotation::reserve`).
                if record(event, None, Some(why)).is_ok() {
                    let _ = fs::remove_file(&path);
                }
            }
            Verdict::RollForward(current) => {
                replace::recheck(store.path(), current)?;
                let document = match side_file::read_bounded(&path, MAX_FILE_SIZE) {
                    Ok(side_file::SideBytes::Bytes(bytes)) => bytes,
                    Ok(_) => continue,
                    Err(e) => return Err(StoreError::io("read the rotation file", &path, e)),
                };
                replace::install(&path, store.path(), &document, true).map_err(|e| {
                    StoreError::io("rename the rotation file over", store.path(), e)
                })?;
                replace::sync_dir(store.dir())?;
                let _ = record(JournalEvent::Recovered, Some(&document), None);
            }
            Verdict::FinishInPlace(document) => {
                replace::write_in_place_verified(store.path(), &document)
                    .map_err(|e| StoreError::io("finish the in-place write of", store.path(), e))?;
                let _ = fs::remove_file(&path);
                let _ = record(JournalEvent::Recovered, Some(&document), Some("in place"));
            }
            Verdict::Merge(doc, current) => {
                let bytes = doc.to_json();
                replace::replace(store.path(), current, &bytes)
                    .or_else(StoreError::accept_not_durable)?;
                let _ = fs::remove_file(&path);
                let _ = record(JournalEvent::Recovered, Some(&bytes), Some("merged"));
            }
            Verdict::Discard(why) => {
                let _ = fs::remove_file(&path);
                let _ = record(JournalEvent::Discarded, None, Some(why));
            }
            Verdict::Leave => {}
        }
    }
    Ok(())
}

fn judge(
    store: &Store,
    path: &std::path::Path,
    name: &RotationName,
) -> Result<(Verdict, Option<File>), StoreError> {
    let file = match side_file::open(path) {
        Ok(SideFile::Regular(file)) => file,
        Ok(SideFile::NotRegular) => return Ok((Verdict::RemoveForeign, None)),
        Ok(SideFile::Missing) | Err(_) => return Ok((Verdict::Leave, None)),
    };
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        // Its owner is reserving or saving: it is theirs.
        Err(e) if io::Error::from(e).kind() == io::ErrorKind::WouldBlock => {
            return Ok((Verdict::Leave, None))
        }
        Err(_) => return Ok((Verdict::Leave, None)),
    }
    let mut bytes = Vec::new();
    if (&file)
        .take(MAX_FILE_SIZE + 1)
        .read_to_end(&mut bytes)
        .is_err()
    {
        return Ok((Verdict::Leave, None));
    }
    let verdict = judge_bytes(store, path, name, bytes)?;
    Ok((verdict, Some(file)))
}

fn judge_bytes(
    store: &Store,
    path: &std::path::Path,
    name: &RotationName,
    bytes: Vec<u8>,
) -> Result<Verdict, StoreError> {
    if bytes.iter().all(|b| *b == b' ') {
        return Ok(Verdict::RemoveUnused);
    }
    if let Some(outcome) = bytes.strip_prefix(SENT_MARK) {
        // Sent, and its outcome could not be journaled then: journal it now.
        let name = String::from_utf8_lossy(outcome);
        let event = JournalEvent::from_name(name.trim()).unwrap_or(JournalEvent::Unanswered);
        return Ok(Verdict::Outcome(event, "journaled late"));
    }
    let Ok(rotated) = AuthDotJson::from_json(&bytes) else {
        // Cut off by a crash before its fsync: nothing in it can be used. The token it
        // redeemed is spent if what reached the disk names another refresh token; an answer
        // may also have kept it (no new refresh token), so without that proof it is only
        // "sent, outcome unknown": the next sender waits for a rotation, then sends it once.
        let spent = partial_refresh_token(&bytes)
            .is_some_and(|new| Secret::new(new).fingerprint() != name.redeemed);
        return Ok(if spent {
            Verdict::Outcome(JournalEvent::Spent, "cut off by a crash")
        } else {
            Verdict::Outcome(JournalEvent::Unanswered, "cut off by a crash")
        });
    };
    // An in-place install of this very document (a single-file bind mount; the file is marked)
    // that a crash cut short: auth.json is empty or a strict prefix of it. Without the mark an
    // empty auth.json may be a writer ignoring the locks, half way: never written over. Finish it; the rotation file goes
    // only once auth.json reads back as the document.
    let marked = names::is_in_place_marked(path);
    let current_bytes = || match read::read_raw(store.path()) {
        Ok(Some(RawFile::Bytes(raw))) => Some(raw),
        _ => None,
    };
    if let Some(raw) = Some(marked).filter(|m| *m).and_then(|_| current_bytes()) {
        if replace::interrupted_in_place(&raw, &bytes) {
            return Ok(Verdict::FinishInPlace(bytes));
        }
    }
    // A corrupt auth.json is an error, not a reason to leave the rotation behind: the caller
    // would otherwise re-read a whole file a moment later and redeem the spent token.
    let current = store.load()?;
    let generation = current.generation();
    if generation.to_string() == name.base {
        return Ok(Verdict::RollForward(generation));
    }
    let Some(doc) = current.auth() else {
        return Ok(Verdict::Discard("logged out"));
    };
    let still_redeemed = doc
        .tokens
        .as_ref()
        .is_some_and(|t| t.refresh_token.fingerprint() == name.redeemed);
    match merge(doc, &rotated) {
        Some(merged) if still_redeemed => Ok(Verdict::Merge(Box::new(merged), generation)),
        Some(_) => Ok(Verdict::Discard("auth.json holds newer tokens")),
        None => Ok(Verdict::Discard("auth.json holds another account")),
    }
}

/// The value of the first `"refresh_token"` string that reached the disk whole in a document cut
/// short (a crash before its fsync), if any.
fn partial_refresh_token(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let key = "\"refresh_token\"";
    let after = &text[text.find(key)? + key.len()..];
    let value = after.trim_start().strip_prefix(':')?.trim_start();
    if !value.starts_with('"') {
        return None;
    }
    // The string with its quotes, read by the JSON parser (escapes included); a cut-off one
    // does not parse.
    let mut stream = serde_json::Deserializer::from_str(value).into_iter::<String>();
    stream.next()?.ok().filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::partial_refresh_token;

    #[test]
    fn a_refresh_token_is_read_from_a_cut_document_only_when_it_reached_the_disk_whole() {
        let whole = br#"{"tokens": {"id_token": "x", "refresh_token": "rt_new\"q", "acc"#;
        assert_eq!(
            partial_refresh_token(whole).as_deref(),
            Some("rt_new\"q"),
            "a whole refresh token string should be read"
        );
        let cut = br#"{"tokens": {"id_token": "x", "refresh_token": "rt_ne"#;
        assert_eq!(
            partial_refresh_token(cut),
            None,
            "a cut-off string is no token"
        );
        assert_eq!(
            partial_refresh_token(br#"{"tokens": {"id_tok"#),
            None,
            "no refresh token reached the disk"
        );
    }
}
