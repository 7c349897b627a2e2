//! How a machine's auth.json and the fleet record are reconciled, decided by causality, never by
//! clocks: what this machine last synced (kept in `auth.json.fleet` across restarts), the
//! rotations it knows (its journal: a refresh token redeemed here for its successor; and the
//! record's successive tokens it was in sync with), and the revisions.
//!
//! The rule: only a refresh token that descends from the record's is uploaded; a record is
//! written into auth.json only over a token that is older than it (or what was last in sync);
//! what no known rotation relates is kept on both sides and reported, never decided blindly.

use super::kinds::IdleReason;
use crate::fleet::RotationKind;
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use codex_store::side_file::{self, SideBytes};
use codex_store::{read_journal, AuthDotJson, Generation, JournalEvent, Snapshot, Store};
use serde::{Deserialize, Serialize};

use crate::fleet::{unusable, FleetRecord, RotationMeta};

/// What was in sync last, for one fleet prefix: the record's revision and auth.json's generation
/// after the last mirror or upload, the refresh token then in sync, and the rotations of the
/// fleet's login this machine saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Synced {
    pub(crate) prefix: String,
    pub(crate) revision: i64,
    pub(crate) local_generation: String,
    /// The fingerprint of the refresh token in sync.
    #[serde(default)]
    pub(crate) refresh: Option<String>,
    /// `(older, newer)` fingerprints: the fleet's login moved on from `older` to `newer` while
    /// this machine was in sync (the last [`MAX_SUPERSEDED`]).
    #[serde(default)]
    pub(crate) superseded: Vec<(String, String)>,
    /// The token in sync was uploaded (here or by another machine) without a known rotation
    /// leading to it from the token before: a rotation by a process that keeps no journal (an
    /// unmodified Codex), or a sign-in. What replaces it keeps a copy of it.
    #[serde(default)]
    pub(crate) unverified: bool,
}

/// How many rotations of the fleet's login `auth.json.fleet` remembers.
const MAX_SUPERSEDED: usize = 64;

/// The longest chain of rotations followed from one token to another.
const MAX_STEPS: usize = 1024;

/// How a sync relates the token in sync before to the one in sync now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Link {
    /// The fleet's login moved on from the token before (a later revision): remembered.
    Superseded,
    /// Nothing known leads from the token before to this one (an upload of a token new to this
    /// machine, or the mirror of one): nothing is remembered, and it is marked unverified.
    Unverified,
}

impl Synced {
    /// What is in sync after a mirror or an upload at `revision`, from what was before.
    pub(crate) fn after(
        before: Option<&Synced>,
        prefix: &str,
        revision: i64,
        local: &Generation,
        refresh: Option<String>,
        link: Link,
    ) -> Synced {
        let mut superseded = before.map(|s| s.superseded.clone()).unwrap_or_default();
        let same_token = before.is_some_and(|s| s.refresh == refresh);
        if let (Link::Superseded, Some(before), Some(new)) = (link, before, &refresh) {
            // Only forwards: a revision below the last synced one is no succession (an etcd
            // restored from a snapshot re-bases the revisions).
            if let Some(old) = before.refresh.as_ref().filter(|old| *old != new) {
                if revision > before.revision {
                    superseded.retain(|(a, b)| !(a == new && b == old));
                    let edge = (old.clone(), new.clone());
                    if !superseded.contains(&edge) {
                        superseded.push(edge);
                    }
                    let excess = superseded.len().saturating_sub(MAX_SUPERSEDED);
                    superseded.drain(..excess);
                }
            }
        }
        let unverified = match link {
            Link::Unverified => true,
            Link::Superseded => same_token && before.is_some_and(|s| s.unverified),
        };
        Synced {
            prefix: prefix.to_owned(),
            revision,
            local_generation: local.to_string(),
            refresh,
            superseded,
            unverified,
        }
    }
}

/// The largest state file read back (it is a few kilobytes).
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
    let temp = codex_store::names::temp_of(path);
    let bytes = serde_json::to_vec(synced).unwrap_or_default();
    if let Err(e) = side_file::replace_durably(&temp, path, &bytes) {
        tracing::warn!(path = %path.display(), error = %e, "could not save the fleet sync state");
    }
}

/// Makes `next` the state in sync, saved at `path` when it differs from `current`.
pub(crate) fn remember(current: &mut Option<Synced>, path: &Path, next: Synced) {
    if current.as_ref() != Some(&next) {
        save(path, &next);
        *current = Some(next);
    }
}

/// The refresh token's fingerprint of auth.json, if it is still at `generation`.
pub(crate) fn refresh_at(store: &Store, generation: &Generation) -> Option<String> {
    let snapshot = store.load().ok()?;
    if snapshot.generation() != *generation {
        return None;
    }
    refresh_of(snapshot.auth())
}

fn refresh_of(doc: Option<&AuthDotJson>) -> Option<String> {
    doc.and_then(|d| d.tokens.as_ref())
        .map(|t| t.refresh_token.fingerprint())
}

/// The rotations this machine knows, as `parent -> child` fingerprints: its journal (a refresh
/// token redeemed here, `saved` or `recovered`) and the successions of the fleet's login it was
/// in sync with.
pub(crate) struct Lineage {
    children: HashMap<String, Vec<String>>,
    known: HashSet<String>,
}

impl Lineage {
    /// What `store`'s journal and `synced` know, and what the record's last rotation says of
    /// its parent ([`Lineage::with_rotation`]).
    pub(crate) fn gather(
        store: &Store,
        synced: Option<&Synced>,
        record: &FleetRecord,
        rotation: Option<&RotationMeta>,
    ) -> Lineage {
        let mut lineage = Lineage {
            children: HashMap::new(),
            known: HashSet::new(),
        };
        if let Ok(records) = read_journal(store.journal_path()) {
            for r in records {
                lineage.known.extend(r.refresh.iter().cloned());
                lineage.known.extend(r.new_refresh.iter().cloned());
                if let (JournalEvent::Saved | JournalEvent::Recovered, Some(parent), Some(child)) =
                    (r.event, r.refresh, r.new_refresh)
                {
                    lineage.add(parent, child);
                }
            }
        }
        if let Some(synced) = synced {
            lineage.known.extend(synced.refresh.iter().cloned());
            for (older, newer) in &synced.superseded {
                lineage.add(older.clone(), newer.clone());
            }
        }
        lineage.with_rotation(record, rotation);
        lineage
    }

    /// Adds the succession the record's last rotation names (`parent -> refresh`), when it
    /// describes this very record (its token) and its writer vouched for it (not an unverified
    /// upload): so a machine that never saw the record before still knows where it comes from.
    fn with_rotation(&mut self, record: &FleetRecord, rotation: Option<&RotationMeta>) {
        let Some(meta) = rotation else {
            return;
        };
        if meta.kind == RotationKind::UploadedUnverified
            || meta.refresh != record.refresh_fingerprint()
        {
            return;
        }
        if let (Some(parent), Some(child)) = (&meta.parent, &meta.refresh) {
            if parent != child {
                self.add(parent.clone(), child.clone());
            }
        }
    }

    fn add(&mut self, parent: String, child: String) {
        self.known.insert(parent.clone());
        self.known.insert(child.clone());
        let children = self.children.entry(parent).or_default();
        if !children.contains(&child) {
            children.push(child);
        }
    }

    /// Whether a chain of known rotations leads from `ancestor` to `descendant` (a different
    /// token), followed for at most [`MAX_STEPS`] tokens.
    pub(crate) fn descends(&self, descendant: &str, ancestor: &str) -> bool {
        if descendant == ancestor {
            return false;
        }
        let mut seen: HashSet<&str> = HashSet::from([ancestor]);
        let mut next = vec![ancestor];
        while let Some(token) = next.pop() {
            for child in self.children.get(token).into_iter().flatten() {
                if child == descendant {
                    return true;
                }
                if seen.len() < MAX_STEPS && seen.insert(child) {
                    next.push(child);
                }
            }
        }
        false
    }

    /// Strictly newer: `descendant` descends from `ancestor`, and not the other way round too
    /// (contradicting facts decide nothing).
    fn newer(&self, descendant: &str, ancestor: &str) -> bool {
        self.descends(descendant, ancestor) && !self.descends(ancestor, descendant)
    }

    /// Whether this machine has seen `token` (in its journal or in sync).
    pub(crate) fn knows(&self, token: &str) -> bool {
        self.known.contains(token)
    }
}

/// What the history shows that is not an ordinary rotation, by fingerprints only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Finding {
    pub(crate) kind: FindingKind,
    /// auth.json's refresh token.
    pub(crate) local: Option<String>,
    /// The record's.
    pub(crate) record: Option<String>,
    /// The record's revision.
    pub(crate) revision: i64,
    /// What was last in sync: the revision and the refresh token.
    pub(crate) synced: Option<(i64, Option<String>)>,
}

/// See [`Finding`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FindingKind {
    /// auth.json holds an older token of the fleet's login: the record descends from it (a
    /// restored backup, an older copy).
    OlderHere,
    /// The record is older than what this machine last synced: its revision is lower, or its
    /// token is an ancestor of the one last synced (etcd restored from a snapshot, an older
    /// login written to it).
    RecordWentBack,
    /// auth.json and the record hold tokens of one account that no known rotation relates.
    Diverged,
}

fn fp(value: &Option<String>) -> &str {
    value.as_deref().unwrap_or("none")
}

impl Finding {
    /// The agent's idle reason when this finding stops it.
    pub(crate) fn reason(&self) -> IdleReason {
        match self.kind {
            FindingKind::OlderHere => IdleReason::FleetOlderHere,
            FindingKind::RecordWentBack => IdleReason::FleetWentBack,
            FindingKind::Diverged => IdleReason::FleetConflict,
        }
    }

    fn record(&self) -> String {
        format!(
            "the fleet's login (revision {}, refresh {})",
            self.revision,
            fp(&self.record)
        )
    }

    fn last_synced(&self) -> String {
        match &self.synced {
            Some((revision, refresh)) => {
                format!("revision {revision}, refresh {}", fp(refresh))
            }
            None => "nothing".to_owned(),
        }
    }

    /// What was found and done, when the fleet's login was written into auth.json (`copy`: where
    /// auth.json was kept).
    pub(crate) fn mirrored(&self, copy: &Path) -> String {
        format!(
            "auth.json held an older refresh token ({}) of the fleet's login: {} descends from \
             it. It was not uploaded; the fleet's login was written to auth.json and the older \
             one kept in {}",
            fp(&self.local),
            self.record(),
            copy.display()
        )
    }

    /// What was found and done, when auth.json was uploaded over the record.
    pub(crate) fn uploaded(&self) -> String {
        format!(
            "{} is older than what this machine last synced ({}): etcd was restored from a \
             backup, or an older login was written to it. auth.json's refresh token ({}) \
             descends from the record's: it was uploaded, and the fleet's login is the live one \
             again",
            self.record(),
            self.last_synced(),
            fp(&self.local)
        )
    }

    /// What was found, why nothing is done, and what the user can do.
    pub(crate) fn conflict(&self) -> String {
        let found = match self.kind {
            FindingKind::RecordWentBack => format!(
                "{} is older than what this machine last synced ({}): etcd was restored from a \
                 backup, or an older login was written to it, and no rotation known here leads \
                 from it to auth.json's refresh token ({})",
                self.record(),
                self.last_synced(),
                fp(&self.local)
            ),
            FindingKind::OlderHere | FindingKind::Diverged => format!(
                "auth.json (refresh {}) and {} are logins of one account that no rotation known \
                 here relates (a copy from elsewhere, or a restored backup)",
                fp(&self.local),
                self.record()
            ),
        };
        format!(
            "{found}; both are kept, nothing is uploaded or written here until one of them \
             changes: make the live login the fleet's with `codex-store fleet seed --force` on \
             the machine that holds it, or copy auth.json from a machine in sync"
        )
    }
}

/// Why auth.json is uploaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Upload {
    /// Its refresh token descends from the record's (a rotation made here, not uploaded yet).
    Descends,
    /// It descends from the record's, and the record is older than what was last synced: the
    /// upload repairs the fleet.
    Repairs(Finding),
    /// A token this machine never saw, over the record last in sync: a rotation by a process
    /// that keeps no journal (an unmodified Codex), or a sign-in. Uploaded as unverified: the
    /// machines that replace it keep a copy.
    NewHere,
}

impl Upload {
    /// The kind of the rotation written with it (`<prefix>/rotation`).
    pub(crate) fn kind(&self) -> RotationKind {
        match self {
            Upload::Descends => RotationKind::Uploaded,
            Upload::Repairs(_) => RotationKind::Repaired,
            Upload::NewHere => RotationKind::UploadedUnverified,
        }
    }
}

/// What to do with a record and auth.json that differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Reconcile {
    /// They hold the same credentials.
    InSync,
    /// Write the record into auth.json: it is newer than auth.json's, which was in sync.
    Mirror,
    /// Write the record into auth.json, which was in sync and which no known rotation relates
    /// to it: the record moved on (another machine's rotation). Kept a copy of auth.json when the
    /// record was uploaded unverified.
    MirrorMovedOn,
    /// Write the record into auth.json, keeping a copy of what auth.json held; with a finding to
    /// report when auth.json held an older token of the fleet's login.
    MirrorKeepingCopy(Option<Finding>),
    /// auth.json holds a newer rotation of the record's login: upload it.
    Upload(Upload),
    /// Leave auth.json alone (it holds another account, or was signed out on purpose).
    KeepLocal(IdleReason),
    /// Keep both, report, and do nothing until one of them changes.
    Conflict(Finding),
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

/// The decision, from causality only: what was last in sync, and the rotations this machine
/// knows ([`Lineage`]).
pub(crate) fn decide(
    record: &FleetRecord,
    local: &Snapshot,
    synced: Option<&Synced>,
    lineage: &Lineage,
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
        // Signed out here on purpose (after a sync), or a machine joining the fleet. A record
        // created after the last sync means the fleet itself was signed out (its record deleted)
        // and signed in again since: whatever sign-out happened here is the fleet's, and the
        // new login is every machine's.
        let signed_in_again = synced.is_some_and(|s| record.created > s.revision);
        return if local_changed && synced.is_some() && !signed_in_again {
            Reconcile::KeepLocal(IdleReason::SignedOutHere)
        } else {
            Reconcile::Mirror
        };
    }
    if local_doc.is_some_and(|d| unusable(d).is_some()) {
        // Nothing usable here (empty tokens): the fleet's login replaces it, a copy is kept.
        return Reconcile::MirrorKeepingCopy(None);
    }
    let (ours, theirs) = (account(local_doc), account(Some(&record.document)));
    if ours.is_some() && theirs.is_some() && ours != theirs {
        return if local_changed {
            Reconcile::KeepLocal(IdleReason::AnotherAccountHere)
        } else {
            // The fleet switched accounts (`fleet seed --force`, a raw put): this machine
            // follows, keeping the login it replaces beside auth.json.
            Reconcile::MirrorKeepingCopy(None)
        };
    }
    let (local_refresh, record_refresh) = (refresh_of(local_doc), record.refresh_fingerprint());
    let finding = |kind| Finding {
        kind,
        local: local_refresh.clone(),
        record: record_refresh.clone(),
        revision: record.revision,
        synced: synced.map(|s| (s.revision, s.refresh.clone())),
    };
    // The record is older than what was last in sync: by revision, or by a known rotation from
    // the record's token to the one last synced.
    let went_back = synced.is_some_and(|s| {
        s.revision > record.revision
            || matches!((&s.refresh, &record_refresh), (Some(last), Some(theirs))
                if lineage.newer(last, theirs))
    });
    let (Some(ours), Some(theirs)) = (&local_refresh, &record_refresh) else {
        // An API key on one side: no rotation to follow; what changed since the last sync
        // decides, and a record older than that never replaces auth.json.
        if went_back {
            return Reconcile::Conflict(finding(FindingKind::RecordWentBack));
        }
        return match (local_changed, remote_changed) {
            // An API key replacing a ChatGPT login in sync: its refresh token is kept aside.
            (false, _) if local_refresh.is_some() => Reconcile::MirrorKeepingCopy(None),
            (false, _) => Reconcile::Mirror,
            (true, false) if local_refresh.is_some() => Reconcile::Upload(Upload::NewHere),
            _ => Reconcile::MirrorKeepingCopy(None),
        };
    };
    if ours == theirs {
        // One refresh token, other access token or API key: no token can be lost either way.
        return match (local_changed, remote_changed) {
            (false, _) => Reconcile::Mirror,
            (true, false) => Reconcile::Upload(Upload::Descends),
            _ => Reconcile::MirrorKeepingCopy(None),
        };
    }
    if lineage.newer(ours, theirs) {
        return Reconcile::Upload(if went_back {
            Upload::Repairs(finding(FindingKind::RecordWentBack))
        } else {
            Upload::Descends
        });
    }
    if went_back {
        // Never an older record over auth.json.
        return Reconcile::Conflict(finding(FindingKind::RecordWentBack));
    }
    if lineage.newer(theirs, ours) {
        return if local_changed {
            // Written here after the sync, and older than the fleet's: a restored backup.
            Reconcile::MirrorKeepingCopy(Some(finding(FindingKind::OlderHere)))
        } else {
            Reconcile::Mirror
        };
    }
    match synced {
        // A machine joining the fleet: the fleet's login, auth.json kept beside it.
        None => Reconcile::MirrorKeepingCopy(None),
        Some(s) if !local_changed => {
            if s.unverified {
                Reconcile::MirrorKeepingCopy(None)
            } else {
                Reconcile::MirrorMovedOn
            }
        }
        // A token this machine never saw, over the record last in sync, is uploaded only when
        // its issuer dated it later than the record's (the access token's `exp`, set by the
        // token endpoint, not by any machine): a rotation or a sign-in made here, never a copy
        // of an older login.
        Some(_)
            if !remote_changed
                && !lineage.knows(ours)
                && issued_later(local_doc, Some(&record.document)) =>
        {
            Reconcile::Upload(Upload::NewHere)
        }
        Some(_) => Reconcile::Conflict(finding(FindingKind::Diverged)),
    }
}

/// Whether `newer`'s access token expires strictly later than `older`'s, by the `exp` claims
/// the token endpoint wrote (unreadable or missing: not later).
fn issued_later(newer: Option<&AuthDotJson>, older: Option<&AuthDotJson>) -> bool {
    let exp = |doc: Option<&AuthDotJson>| {
        doc.and_then(|d| d.tokens.as_ref())
            .and_then(|t| codex_store::token_expiry(&t.access_token).ok().flatten())
    };
    matches!((exp(newer), exp(older)), (Some(a), Some(b)) if a > b)
}

/// Keeps a copy of `local` (0600, beside auth.json) before the fleet's login replaces it;
/// returns its path.
pub(crate) fn keep_copy(store: &Store, local: &AuthDotJson) -> Option<PathBuf> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let name = |n: u32| codex_store::names::fleet_replaced_copy(store.path(), stamp, n);
    // Created exclusively (another copy of the same second gets the next number), never
    // through a link, never blocking; fsynced, and so is the directory, before auth.json is
    // replaced.
    let (mut n, mut path) = (0, name(0));
    let mut created = side_file::create_new(&path);
    while matches!(&created, Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists) && n < 100 {
        n += 1;
        path = name(n);
        created = side_file::create_new(&path);
    }
    let written = created
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lineage(edges: &[(&str, &str)]) -> Lineage {
        let mut lineage = Lineage {
            children: HashMap::new(),
            known: HashSet::new(),
        };
        for (parent, child) in edges {
            lineage.add((*parent).to_owned(), (*child).to_owned());
        }
        lineage
    }

    #[test]
    fn a_token_descends_from_its_ancestors_through_the_chain_and_not_from_itself_or_its_children() {
        let l = lineage(&[("t0", "t1"), ("t1", "t2"), ("x", "y")]);
        assert!(l.descends("t2", "t0"), "t2 descends from t0 through t1");
        assert!(
            !l.descends("t0", "t2"),
            "an ancestor does not descend from its child"
        );
        assert!(
            !l.descends("t1", "t1"),
            "a token does not descend from itself"
        );
        assert!(!l.descends("y", "t0"), "unrelated chains are unrelated");
        assert!(l.knows("y") && !l.knows("z"), "known tokens are those seen");
    }

    #[test]
    fn contradicting_rotations_make_neither_token_newer() {
        let l = lineage(&[("a", "b"), ("b", "a")]);
        assert!(
            !l.newer("a", "b") && !l.newer("b", "a"),
            "a cycle must decide nothing"
        );
    }

    fn synced(revision: i64, refresh: &str) -> Synced {
        Synced {
            prefix: "/p".into(),
            revision,
            local_generation: "g".into(),
            refresh: Some(refresh.into()),
            superseded: Vec::new(),
            unverified: false,
        }
    }

    #[test]
    fn a_later_revision_with_another_token_is_remembered_as_a_succession_an_earlier_one_is_not() {
        let before = synced(5, "t0");
        let next = Synced::after(
            Some(&before),
            "/p",
            7,
            &Generation::Absent,
            Some("t1".into()),
            Link::Superseded,
        );
        assert_eq!(next.superseded, vec![("t0".to_owned(), "t1".to_owned())]);
        let back = Synced::after(
            Some(&next),
            "/p",
            3,
            &Generation::Absent,
            Some("t9".into()),
            Link::Superseded,
        );
        assert_eq!(
            back.superseded, next.superseded,
            "a revision below the last synced one (etcd restored) is no succession"
        );
        let unverified = Synced::after(
            Some(&next),
            "/p",
            8,
            &Generation::Absent,
            Some("t5".into()),
            Link::Unverified,
        );
        assert!(unverified.unverified && unverified.superseded == next.superseded);
        let again = Synced::after(
            Some(&unverified),
            "/p",
            8,
            &Generation::Absent,
            Some("t5".into()),
            Link::Superseded,
        );
        assert!(
            again.unverified,
            "the same token in sync again stays unverified"
        );
    }

    #[test]
    fn a_reversed_succession_replaces_the_one_it_contradicts() {
        let mut before = synced(5, "b");
        before.superseded = vec![("a".into(), "b".into())];
        let next = Synced::after(
            Some(&before),
            "/p",
            6,
            &Generation::Absent,
            Some("a".into()),
            Link::Superseded,
        );
        assert_eq!(next.superseded, vec![("b".to_owned(), "a".to_owned())]);
    }
}
