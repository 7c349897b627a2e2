//! What the broker reads of the home for each decision: auth.json's ChatGPT tokens, then the
//! journal (parsed again only when it changed).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use codex_store::{read_journal, AuthMode, Secret, StoreError, TokenData};

use super::route::{by_time, Dated};

use crate::error::RefreshError;
use crate::manager::AuthManager;

/// The home as read for one decision.
pub(crate) struct Home {
    /// auth.json's ChatGPT tokens; `None` when it holds none (signed out, an API key).
    pub(crate) tokens: Option<TokenData>,
    /// The journal's records, dated and ordered by time; empty when it cannot be read.
    pub(crate) records: Arc<Vec<Dated>>,
    /// The journal could not be read (not a regular file, an I/O error): a token that is not
    /// the current one cannot be told from one this home redeemed.
    pub(crate) journal_unreadable: bool,
}

/// The journal as last parsed, and what identified the file then: a journal whose identity,
/// size and times did not change since is not read and parsed again (a burst of callers costs
/// one `lstat` each). Appends change its size and times; a compaction replaces the file.
#[derive(Default)]
pub(crate) struct JournalCache {
    last: Mutex<Option<(Stamp, Arc<Vec<Dated>>)>>,
}

/// What identifies one state of a regular file.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    /// The stamp of the regular file at `path` (never following a link); `None` for anything
    /// else, or when it cannot be looked at.
    fn of(path: &Path) -> Option<Stamp> {
        let meta = std::fs::symlink_metadata(path).ok()?;
        meta.file_type().is_file().then(|| Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        })
    }
}

impl JournalCache {
    /// The records of the journal at `path`: the last parse when the file is unchanged since,
    /// else a new one (remembered when the file did not change while it was read).
    ///
    /// # Errors
    /// As [`read_journal`].
    fn records(&self, path: &Path) -> Result<Arc<Vec<Dated>>, StoreError> {
        let before = Stamp::of(path);
        if let Some(stamp) = before {
            let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, records)) = last.as_ref().filter(|(s, _)| *s == stamp) {
                return Ok(Arc::clone(records));
            }
        }
        let records = Arc::new(by_time(read_journal(path)?));
        if let Some(stamp) = before.filter(|b| Stamp::of(path) == Some(*b)) {
            *self.last.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((stamp, Arc::clone(&records)));
        }
        Ok(records)
    }
}

impl Home {
    /// Reads auth.json, then the journal (in that order: a rotation is journaled after it is
    /// installed, so the journal read second knows how the tokens read first came to be; a
    /// mirror of the fleet is journaled before).
    ///
    /// # Errors
    /// The store's errors when auth.json cannot be read (corrupt, I/O);
    /// [`RefreshError::TaskFailed`] when the reading thread failed.
    pub(crate) async fn read(
        manager: &AuthManager,
        journal: &Arc<JournalCache>,
    ) -> Result<Home, RefreshError> {
        let store = manager.store().clone();
        let journal = Arc::clone(journal);
        tokio::task::spawn_blocking(move || {
            let snapshot = store.load()?;
            let tokens = snapshot
                .auth()
                .filter(|doc| doc.resolved_mode() == AuthMode::Chatgpt)
                .and_then(|doc| doc.tokens.clone());
            let (records, journal_unreadable) = match journal.records(store.journal_path()) {
                Ok(records) => (records, false),
                Err(e) => {
                    tracing::warn!(error = %e, "the journal cannot be read: only the current token is served");
                    (Arc::default(), true)
                }
            };
            Ok(Home {
                tokens,
                records,
                journal_unreadable,
            })
        })
        .await
        .map_err(|e| RefreshError::TaskFailed {
            message: format!("reading the home failed: {e}"),
        })?
    }

    /// The current refresh token.
    pub(crate) fn refresh_token(&self) -> Option<&Secret> {
        self.tokens.as_ref().map(|t| &t.refresh_token)
    }

    /// The account of the tokens.
    pub(crate) fn account(&self) -> Option<String> {
        self.tokens.as_ref().and_then(TokenData::account)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::Write;

    /// A journal line rotating `from` to `to` (fingerprints as they are).
    fn line(from: &str, to: &str) -> String {
        format!(
            "{{\"at\":\"2026-12-07T12:00:00Z\",\"pid\":1,\"event\":\"saved\",\"refresh\":\"{from}\",\"new_refresh\":\"{to}\"}}\n"
        )
    }

    fn refreshes(records: &[Dated]) -> Vec<String> {
        records
            .iter()
            .map(|(_, r)| r.refresh.clone().unwrap_or_default())
            .collect()
    }

    #[test]
    fn an_unchanged_journal_is_not_parsed_again_and_a_changed_one_is() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("auth.json.journal");
        std::fs::write(&path, line("aaa", "bbb")).expect("write the journal");
        let cache = JournalCache::default();
        let first = cache.records(&path).expect("read the journal");
        let again = cache.records(&path).expect("read the journal again");
        assert!(
            Arc::ptr_eq(&first, &again),
            "an unchanged journal was parsed again"
        );
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line("bbb", "ccc").as_bytes()))
            .expect("append to the journal");
        let appended = cache.records(&path).expect("read the appended journal");
        assert_eq!(
            refreshes(&appended),
            ["aaa", "bbb"],
            "an appended record was not read"
        );
        // A compaction: another file of the same size renamed over it.
        let other = dir.path().join("compacted");
        std::fs::write(
            &other,
            format!("{}{}", line("xxx", "yyy"), line("yyy", "zzz")),
        )
        .expect("write the compacted journal");
        std::fs::rename(&other, &path).expect("rename it over the journal");
        let compacted = cache.records(&path).expect("read the compacted journal");
        assert_eq!(
            refreshes(&compacted),
            ["xxx", "yyy"],
            "a journal replaced by a file of the same size was not read again"
        );
    }

    #[test]
    fn a_journal_that_is_no_regular_file_is_never_remembered() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("auth.json.journal");
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, line("aaa", "bbb")).expect("write the link's target");
        std::os::unix::fs::symlink(&target, &path).expect("plant a link at the journal's name");
        let cache = JournalCache::default();
        // Read twice (a link is refused, or read through), never remembered.
        let _ = cache.records(&path);
        let _ = cache.records(&path);
        assert!(
            cache
                .last
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_none(),
            "a link at the journal's name left a cached journal"
        );
    }
}
