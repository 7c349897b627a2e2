//! The journal of refresh outcomes: `auth.json.journal`, one JSON object per line, beside
//! auth.json.
//!
//! It tells every codex-store process what the others did with a refresh token: a refusal
//! recorded for a generation stops the others from sending that generation's token again, and
//! `codex-store inspect --history` shows who rotated what and when. It holds fingerprints (the
//! first 12 hex characters of a token's SHA-256), never a token. Records are appended only by a
//! holder of the refresh lock, in one `write` each; the file is compacted (by an atomic rename)
//! when it grows past [`JOURNAL_LIMIT`]. It is untrusted input when read: lines that do not
//! parse are skipped, and only its last [`JOURNAL_LIMIT`] bytes are read.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::generation::Generation;
use crate::names;
use crate::side_file::{self, NO_FOLLOW};
use crate::timestamp::Timestamp;

/// The journal is compacted to about half of this when it grows past it, and no more than this
/// is read back.
pub const JOURNAL_LIMIT: u64 = 64 * 1024;

/// The longest line read back; longer ones are skipped.
const MAX_LINE: usize = 4096;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JournalEvent {
    /// A refresh token is about to be sent (its rotation file is reserved).
    Redeeming,
    /// The new tokens were installed in auth.json.
    Saved,
    /// The token endpoint refused the refresh token for good (`code` says why).
    Refused,
    /// A crashed refresh's rotation file was installed by a later process.
    Recovered,
    /// A rotation file was discarded: auth.json holds another account, or none, or it was
    /// unreadable.
    Discarded,
    /// After a refusal, a newer token of the same account was adopted from auth.json.
    Adopted,
    /// The refresh token was redeemed but its answer is lost for good (`code` says how: a
    /// rotation file cut short by a crash and discarded, an answer that could not be used). No
    /// process sends it again: the endpoint would refuse it.
    Spent,
    /// The refresh token was sent and no usable answer came back (a timeout after sending, a
    /// connection cut, a 200 whose body is cut off or unusable): it may be spent. The next
    /// sender first waits for the rotation to appear, like after a reuse refusal.
    Unanswered,
    /// A fleet agent wrote the fleet's login into auth.json, its refresh token moving on from
    /// `refresh` (auth.json's before) to `new_refresh` (another machine's rotation, or a
    /// succession of the fleet's login this machine was in sync with). Nothing was sent here.
    Mirrored,
}

impl JournalEvent {
    /// Its name in the journal (`refused`, `unanswered`, ...).
    pub fn name(self) -> &'static str {
        match self {
            JournalEvent::Redeeming => "redeeming",
            JournalEvent::Saved => "saved",
            JournalEvent::Refused => "refused",
            JournalEvent::Recovered => "recovered",
            JournalEvent::Discarded => "discarded",
            JournalEvent::Adopted => "adopted",
            JournalEvent::Spent => "spent",
            JournalEvent::Unanswered => "unanswered",
            JournalEvent::Mirrored => "mirrored",
        }
    }

    /// The event of that name.
    pub fn from_name(name: &str) -> Option<JournalEvent> {
        serde_json::from_value(serde_json::Value::String(name.to_owned())).ok()
    }
}

/// What the journal knows about one refresh token, strongest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenFate {
    /// The endpoint refused it for good.
    Refused(JournalRecord),
    /// It was redeemed: a successor was saved or recovered, or the answer was lost ([`JournalEvent::Spent`]).
    Spent(JournalRecord),
    /// It was sent, and whether the endpoint redeemed it is unknown.
    Unanswered(JournalRecord),
}

impl TokenFate {
    /// The record that decided it.
    pub fn record(&self) -> &JournalRecord {
        match self {
            TokenFate::Refused(r) | TokenFate::Spent(r) | TokenFate::Unanswered(r) => r,
        }
    }
}

/// One line of the journal. Every field but `at`, `pid` and `event` is optional.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalRecord {
    /// When (RFC 3339, UTC).
    pub at: String,
    /// The process that wrote it.
    pub pid: u32,
    /// What happened.
    pub event: JournalEvent,
    /// The generation of auth.json the event concerns (the one a rotation replaces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<String>,
    /// The generation written, for `saved` and `recovered`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_generation: Option<String>,
    /// The account id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Fingerprint of the refresh token sent (or refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<String>,
    /// Fingerprint of the refresh token obtained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_refresh: Option<String>,
    /// The endpoint's error code, for `refused`; the reason, for `discarded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

impl JournalRecord {
    /// A record of `event` now, by this process, about `generation`.
    pub fn new(event: JournalEvent, generation: Generation) -> Self {
        JournalRecord {
            at: Timestamp::now().as_str().to_owned(),
            pid: std::process::id(),
            event,
            generation: Some(generation.to_string()),
            new_generation: None,
            account: None,
            refresh: None,
            new_refresh: None,
            code: None,
        }
    }

    /// When it happened, if `at` parses.
    pub fn time(&self) -> Option<std::time::SystemTime> {
        Timestamp::parse(&self.at).ok().map(|t| t.time())
    }
}

/// Opens the journal for appending, never through a symlink, never blocking (on a FIFO), and
/// only a regular file. Something else planted at its name (a FIFO, a link, a device) holds no
/// record of ours: only the refresh lock's holder appends, so it removes it and starts a new
/// journal rather than lose the record it is about to write.
fn open_append(path: &Path) -> io::Result<File> {
    let open = || {
        OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(side_file::custom(NO_FOLLOW))
            .open(path)
    };
    match open() {
        Ok(file) if file.metadata()?.is_file() => return Ok(file),
        Ok(_) => {}
        // A link (O_NOFOLLOW), a FIFO without a reader or a device without a driver.
        Err(e)
            if matches!(
                side_file::errno(&e),
                Some(Errno::LOOP | Errno::NXIO | Errno::NODEV)
            ) => {}
        Err(e) => return Err(e),
    }
    if side_file::is_regular(path) {
        return Err(io::Error::other("the journal changed while it was opened"));
    }
    fs::remove_file(path)?;
    let file = open()?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("the journal is not a regular file"));
    }
    Ok(file)
}

/// Appends `record` in one write. Only a holder of the refresh lock calls this.
pub(crate) fn append(path: &Path, record: &JournalRecord) -> Result<(), StoreError> {
    let mut line = serde_json::to_vec(record).unwrap_or_default();
    line.push(b'\n');
    let mut file = open_append(path).map_err(|e| StoreError::io("open the journal", path, e))?;
    file.write_all(&line)
        .map_err(|e| StoreError::io("append to the journal", path, e))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    drop(file);
    if size > JOURNAL_LIMIT {
        compact(path)?;
    }
    Ok(())
}

/// Keeps the newest half of the journal, replacing it by an atomic rename.
fn compact(path: &Path) -> Result<(), StoreError> {
    let keep = tail_bytes(path, JOURNAL_LIMIT / 2)?;
    let tmp = names::journal_compact(path);
    // Only the refresh lock's holder compacts: anything at this name is a leftover of a crash,
    // or planted (a FIFO would hang an open for writing). Removed, then created exclusively.
    let _ = fs::remove_file(&tmp);
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(side_file::custom(NO_FOLLOW))
        .open(&tmp)
        .and_then(|mut f| f.write_all(&keep))
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(StoreError::io("compact the journal", path, e));
    }
    Ok(())
}

/// The last `limit` bytes of the file, starting at a line boundary.
fn tail_bytes(path: &Path, limit: u64) -> Result<Vec<u8>, StoreError> {
    let mut file = match side_file::open_read(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io("open the journal", path, e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| StoreError::io("inspect the journal", path, e))?;
    if !meta.is_file() {
        return Err(StoreError::NotARegularFile {
            path: path.to_path_buf(),
        });
    }
    let start = meta.len().saturating_sub(limit);
    file.seek(SeekFrom::Start(start))
        .map_err(|e| StoreError::io("read the journal", path, e))?;
    let mut bytes = Vec::new();
    file.take(limit)
        .read_to_end(&mut bytes)
        .map_err(|e| StoreError::io("read the journal", path, e))?;
    if start > 0 {
        // The first line is probably cut: drop it.
        let cut = bytes.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
        bytes.drain(..cut);
    }
    Ok(bytes)
}

/// The records of the journal's last [`JOURNAL_LIMIT`] bytes, oldest first. Lines that do not
/// parse are skipped; no journal is an empty list.
///
/// # Errors
/// [`StoreError::Io`] when the journal exists but cannot be read, and
/// [`StoreError::NotARegularFile`] when it is not a regular file.
pub fn read_journal(path: &Path) -> Result<Vec<JournalRecord>, StoreError> {
    let bytes = tail_bytes(path, JOURNAL_LIMIT)?;
    Ok(bytes
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty() && line.len() <= MAX_LINE)
        .filter_map(|line| serde_json::from_slice(line).ok())
        .collect())
}

/// What the journal says of the refresh token whose fingerprint is `refresh` (in any file:
/// a rewrite of the same token by another writer must not make it look new), or, for a
/// refusal, of `generation` when the last record about that generation is one.
pub(crate) fn fate_of(
    path: &Path,
    generation: Generation,
    refresh: Option<&str>,
) -> Option<TokenFate> {
    // A journal that is not a regular file was planted: it holds none of our records (the next
    // append replaces it). One that cannot be read is no reason to think a token unsent either,
    // but the caller has no better knowledge: see `Rotation::reserve`, which keeps any rotation
    // file that could not be journaled.
    let records = read_journal(path).ok()?;
    let about = |r: &&JournalRecord| refresh.is_some() && r.refresh.as_deref() == refresh;
    if let Some(refused) = records
        .iter()
        .rev()
        .filter(about)
        .find(|r| r.event == JournalEvent::Refused)
    {
        return Some(TokenFate::Refused(refused.clone()));
    }
    let wanted = generation.to_string();
    if let Some(last) = records
        .iter()
        .rev()
        .find(|r| r.generation.as_deref() == Some(wanted.as_str()))
        .filter(|r| r.event == JournalEvent::Refused)
    {
        return Some(TokenFate::Refused(last.clone()));
    }
    // Redeemed for another token (an answer that keeps the refresh token leaves it live), or
    // its answer lost.
    let rotated_away = |r: &&JournalRecord| match r.event {
        JournalEvent::Saved | JournalEvent::Recovered => {
            r.new_refresh.is_some() && r.new_refresh != r.refresh
        }
        JournalEvent::Spent => true,
        _ => false,
    };
    if let Some(spent) = records.iter().rev().filter(about).find(rotated_away) {
        return Some(TokenFate::Spent(spent.clone()));
    }
    records
        .iter()
        .rev()
        .filter(about)
        .find(|r| r.event == JournalEvent::Unanswered)
        .map(|r| TokenFate::Unanswered(r.clone()))
}
