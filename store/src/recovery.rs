//! Recovery: installing the rotation files of refreshes that crashed after the answer.
//!
//! A rotation file that holds a document is the only copy of redeemed tokens. Under the refresh
//! lock (so that no refresh of ours owns it) and the write locks, each is:
//! - removed, when it holds only its reserved spaces (the request was never answered);
//! - renamed over auth.json, when auth.json is still the generation it replaces (roll forward);
//! - merged into auth.json, when auth.json changed but still holds the redeemed refresh token
//!   of the same account (a writer ignoring the locks rewrote it);
//! - discarded, when auth.json holds another account, other tokens, or none: they win;
//! - left alone, when it cannot be read (`inspect` reports it); and when auth.json cannot be
//!   read (a writer ignoring the locks, half way), the recovery fails with that error, so that
//!   no refresh goes on to redeem the token the rotation already redeemed.

use std::fs;
use std::io::Read;

use crate::auth_json::AuthDotJson;
use crate::error::StoreError;
use crate::generation::Generation;
use crate::journal::{self, JournalEvent, JournalRecord};
use crate::read::MAX_FILE_SIZE;
use crate::replace;
use crate::rotation::{merge, RotationName};
use crate::store::Store;

/// What to do with one rotation file.
enum Verdict {
    RemoveUnused,
    RollForward(Generation),
    FinishInPlace(Vec<u8>),
    Merge(Box<AuthDotJson>, Generation),
    Discard(&'static str),
    Leave,
}

/// Runs the recovery. The caller holds the refresh lock and the write locks.
pub(crate) fn recover_locked(store: &Store) -> Result<(), StoreError> {
    for name in replace::rotation_files(store.path()) {
        let Some(parsed) = RotationName::parse(store.path(), &name) else {
            continue;
        };
        let path = store.dir().join(&name);
        let verdict = judge(store, &path, &parsed)?;
        let base = parsed.base.clone();
        let record = |event, generation: Option<Generation>, code: Option<&str>| {
            let mut r = JournalRecord::new(event, Generation::Absent);
            r.generation = Some(base.clone());
            r.new_generation = generation.map(|g| g.to_string());
            r.refresh = Some(parsed.redeemed.clone());
            r.code = code.map(str::to_owned);
            let _ = journal::append(store.journal_path(), &r);
        };
        match verdict {
            Verdict::RemoveUnused => {
                let _ = fs::remove_file(&path);
            }
            Verdict::RollForward(current) => {
                replace::recheck(store.path(), current)?;
                let document = fs::read(&path)
                    .map_err(|e| StoreError::io("read the rotation file", &path, e))?;
                replace::install(&path, store.path(), &document, true).map_err(|e| {
                    StoreError::io("rename the rotation file over", store.path(), e)
                })?;
                replace::sync_dir(store.dir())?;
                let now = store.generation()?;
                record(JournalEvent::Recovered, Some(now), None);
            }
            Verdict::FinishInPlace(document) => {
                replace::write_in_place_verified(store.path(), &document)
                    .map_err(|e| StoreError::io("finish the in-place write of", store.path(), e))?;
                let _ = fs::remove_file(&path);
                let written = Some(Generation::of_bytes(&document));
                record(JournalEvent::Recovered, written, Some("in place"));
            }
            Verdict::Merge(doc, current) => {
                let written = replace::replace(store.path(), current, &doc.to_json())
                    .or_else(StoreError::accept_not_durable)?;
                let _ = fs::remove_file(&path);
                record(JournalEvent::Recovered, Some(written), Some("merged"));
            }
            Verdict::Discard(why) => {
                let _ = fs::remove_file(&path);
                record(JournalEvent::Discarded, None, Some(why));
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
) -> Result<Verdict, StoreError> {
    let Ok(file) = fs::File::open(path) else {
        return Ok(Verdict::Leave);
    };
    let mut bytes = Vec::new();
    if file
        .take(MAX_FILE_SIZE + 1)
        .read_to_end(&mut bytes)
        .is_err()
    {
        return Ok(Verdict::Leave);
    }
    if bytes.iter().all(|b| *b == b' ') {
        return Ok(Verdict::RemoveUnused);
    }
    let Ok(rotated) = AuthDotJson::from_json(&bytes) else {
        // Cut off by a crash before its fsync: nothing in it can be used.
        return Ok(Verdict::Discard("unreadable"));
    };
    // An in-place install of this very document (a single-file bind mount; the file is marked)
    // that a crash cut short: auth.json is empty or a strict prefix of it. Without the mark an
    // empty auth.json may be a writer ignoring the locks, half way: never written over. Finish it; the rotation file goes
    // only once auth.json reads back as the document.
    let marked = path
        .to_str()
        .is_some_and(|p| p.ends_with(replace::IN_PLACE_SUFFIX));
    if let Some(raw) = fs::read(store.path()).ok().filter(|_| marked) {
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
