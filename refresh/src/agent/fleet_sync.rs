//! How a machine's auth.json and the fleet record are reconciled, decided by causality, never by
//! clocks: what this machine last synced (kept in `auth.json.fleet` across restarts), and the
//! local journal (a rotation this machine made from the record's token).

use std::io::Write;
use std::path::{Path, PathBuf};

use codex_store::side_file::{self, SideBytes};
use codex_store::{read_journal, AuthDotJson, JournalEvent, Snapshot, Store};
use serde::{Deserialize, Serialize};

use crate::fleet::FleetRecord;

/// What was in sync last: the record's revision and auth.json's generation after the last
/// mirror or upload, for one fleet prefix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Synced {
    pub(crate) prefix: String,
    pub(crate) revision: i64,
    pub(crate) local_generation: String,
}

/// The largest state file read back (it is a few hundred bytes).
const STATE_LIMIT: u64 = 64 * 1024;

/// `auth.json.fleet`, beside auth.json.
pub(crate) fn state_path(store: &Store) -> PathBuf {
    store.fleet_state_path()
}

/// The state saved by [`save`] for `prefix`, if any. Read as every side file is
/// ([`side_file::read_bounded`]): a FIFO, a device or a link at that name, or a file over
/// [`STATE_LIMIT`], is no state (nothing blocks, nothing is read without bound).
pub(crate) fn load(path: &Path, prefix: &str) -> Option<Synced> {
    let SideBytes::Bytes(bytes) = side_file::read_bounded(path, STATE_LIMIT).ok()? else {
        return None;
    };
    let synced: Synced = serde_json::from_slice(&bytes).ok()?;
    (synced.prefix == prefix).then_some(synced)
}

/// Saves the state at `path` durably ([`side_file::replace_durably`]): written to `<path>.tmp`
/// (`auth.json.fleet.tmp`, created anew, exclusively, never through a link, never blocking),
/// fsynced, renamed over, and the directory fsynced, so that a reader sees the old state or the
/// new one, also after a crash.
pub(crate) fn save(path: &Path, synced: &Synced) {
    let mut temp = path.as_os_str().to_os_string();
    temp.push(".tmp");
    let bytes = serde_json::to_vec(synced).unwrap_or_default();
    if let Err(e) = side_file::replace_durably(Path::new(&temp), path, &bytes) {
        tracing::warn!(path = %path.display(), error = %e, "could not save the fleet sync state");
    }
}

/// What to do with a record and auth.json that differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Reconcile {
    /// They hold the same credentials.
    InSync,
    /// Write the record into auth.json.
    Mirror,
    /// Write the record into auth.json, keeping a copy of what auth.json held (both changed, or
    /// nothing says which is newer).
    MirrorKeepingCopy,
    /// auth.json holds a newer rotation of the record's login: upload it.
    Upload,
    /// Leave auth.json alone (it holds another account, or was signed out on purpose).
    KeepLocal(&'static str),
}

fn tokens(doc: Option<&AuthDotJson>) -> Option<(String, String)> {
    doc.and_then(|d| d.tokens.as_ref()).map(|t| {
        (
            t.refresh_token.expose().to_owned(),
            t.access_token.expose().to_owned(),
        )
    })
}

fn account(doc: Option<&AuthDotJson>) -> Option<String> {
    doc.and_then(|d| d.tokens.as_ref())
        .and_then(|t| t.account())
}

/// Whether this machine's journal shows that auth.json's refresh token was obtained by
/// redeeming the record's (a rotation made here, not uploaded yet).
pub(crate) fn descends_from(store: &Store, local: &Snapshot, record: &FleetRecord) -> bool {
    let (Some(parent), Some(child)) = (
        record.refresh_fingerprint(),
        local
            .auth()
            .and_then(|d| d.tokens.as_ref())
            .map(|t| t.refresh_token.fingerprint()),
    ) else {
        return false;
    };
    read_journal(store.journal_path()).is_ok_and(|records| {
        records.iter().any(|r| {
            matches!(r.event, JournalEvent::Saved | JournalEvent::Recovered)
                && r.refresh.as_deref() == Some(parent.as_str())
                && r.new_refresh.as_deref() == Some(child.as_str())
        })
    })
}

/// The decision, from causality only: what was last in sync, and whether this machine's journal
/// shows the local token descending from the record's.
pub(crate) fn decide(
    record: &FleetRecord,
    local: &Snapshot,
    synced: Option<&Synced>,
    descends: bool,
) -> Reconcile {
    let local_doc = local.auth();
    if tokens(Some(&record.document)) == tokens(local_doc)
        && local_doc.map(|d| d.openai_api_key.clone())
            == Some(record.document.openai_api_key.clone())
    {
        return Reconcile::InSync;
    }
    let local_changed = synced.is_none_or(|s| s.local_generation != local.generation().to_string());
    let remote_changed = synced.is_none_or(|s| s.revision != record.revision);
    if local_doc.is_none() {
        // Signed out here on purpose (after a sync), or a machine joining the fleet.
        return if local_changed && synced.is_some() {
            Reconcile::KeepLocal("signed_out_here")
        } else {
            Reconcile::Mirror
        };
    }
    let (ours, theirs) = (account(local_doc), account(Some(&record.document)));
    if ours.is_some() && theirs.is_some() && ours != theirs && local_changed {
        return Reconcile::KeepLocal("another_account_here");
    }
    if descends {
        return Reconcile::Upload;
    }
    match (local_changed, remote_changed) {
        (false, _) => Reconcile::Mirror,
        (true, false) if tokens(local_doc).is_some() => Reconcile::Upload,
        _ => Reconcile::MirrorKeepingCopy,
    }
}

/// Keeps a copy of `local` (0600, beside auth.json) before the fleet's login replaces it;
/// returns its path.
pub(crate) fn keep_copy(store: &Store, local: &AuthDotJson) -> Option<PathBuf> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut name = store.path().file_name().unwrap_or_default().to_os_string();
    name.push(format!(".fleet-replaced.{stamp}.{}", std::process::id()));
    let path = store.path().with_file_name(name);
    // Created exclusively, never through a link, never blocking; fsynced, and so is the
    // directory, before auth.json is replaced.
    let written = side_file::create_new(&path)
        .and_then(|mut f| f.write_all(&local.to_json()).and_then(|()| f.sync_all()))
        .and_then(|()| side_file::sync_dir_of(&path));
    match written {
        Ok(()) => Some(path),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "could not keep a copy of auth.json");
            None
        }
    }
}
