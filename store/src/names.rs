//! The names of auth.json and of every file the store keeps beside it: the one place they are
//! spelled.
//!
//! Codex's two locks live in the home (`auth.lock`, `auth.json.lock`). Every other side file is
//! named after auth.json, or after the final target of its symbolic link, so that the stores of
//! two files in one directory (two homes linking to `alice.json` and `bob.json`) never take each
//! other's: [`Sidecar`] names the single files (`<name>.journal`), [`Numbered`] the numbered ones
//! (`.<name>.codex-store-tmp.<pid>.<n>`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The file name of the credentials inside the store directory.
pub const AUTH_FILE: &str = "auth.json";
/// Codex 0.171.0's outer lock, taken before [`LOCK_FILE`] by every write (ours too).
pub const CODEX_LOCK_FILE: &str = "auth.lock";
/// The store's lock, shared with Codex 0.171.0: held only while re-reading and writing.
pub const LOCK_FILE: &str = "auth.json.lock";
/// codex-store's single-flight lock, held across a refresh request; Codex never takes it.
pub const REFRESH_LOCK_FILE: &str = "auth.json.refresh.lock";
/// The journal of refresh outcomes (JSON lines, fingerprints only).
pub const JOURNAL_FILE: &str = "auth.json.journal";

/// Every temp file the store creates beside auth.json starts with this name (followed by pid and
/// a counter); beside a link's target named otherwise, with `.<name>.codex-store-tmp.` (see
/// [`Numbered::prefix`]). Leftovers of a crashed writer are swept, under the lock, by this exact
/// prefix.
pub const TEMP_PREFIX: &str = ".auth.json.codex-store-tmp.";

/// Leftovers of an in-place write interrupted by a crash start with this; they are finished or
/// removed under the lock, never swept blindly. (For auth.json; beside a link's target named
/// otherwise, `.<name>.codex-store-inplace.`.)
pub const IN_PLACE_PREFIX: &str = ".auth.json.codex-store-inplace.";

/// Every rotation file's name starts with this, followed by
/// `<replaced generation>.<fingerprint of the redeemed refresh token>.<pid>.<n>`. Rotation files
/// hold redeemed tokens: they are never swept as temp files, only installed or discarded by
/// the recovery, under the refresh lock. (For auth.json; beside a link's target named
/// otherwise, `.<name>.codex-store-rotation.`, so that two stores in one directory never take
/// each other's.)
pub const ROTATION_PREFIX: &str = ".auth.json.codex-store-rotation.";

/// Appended to a rotation file's name while it is being installed in place: only then may the
/// recovery take an empty or cut-short auth.json for that install's interrupted write (and not
/// for a writer ignoring the locks, half way).
pub(crate) const IN_PLACE_SUFFIX: &str = ".inplace";

/// Appended to a side file's name for the temp file it is replaced through.
const TEMP_SUFFIX: &str = ".tmp";

/// A single side file named after auth.json (or its link's target) with a suffix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sidecar {
    /// `auth.json.lock` beside the file: the lock every path to it meets.
    Lock,
    /// `auth.json.refresh.lock`: codex-store's single-flight refresh lock.
    RefreshLock,
    /// `auth.json.journal`: the journal of refresh outcomes.
    Journal,
    /// `auth.json.agent.lock`: the claim an agent holds for its lifetime.
    AgentLock,
    /// `auth.json.agent`: the status an agent publishes.
    AgentStatus,
    /// `auth.json.agent.tmp`: where the agent writes its status before renaming it.
    AgentStatusTemp,
    /// `auth.json.fleet`: a fleet agent's record of what was last in sync.
    FleetState,
    /// `auth.json.fleet.tmp`: where a fleet agent writes that record before renaming it.
    FleetStateTemp,
}

impl Sidecar {
    /// Every side file, in the order `inspect` reports them.
    pub const ALL: [Sidecar; 8] = [
        Sidecar::Lock,
        Sidecar::RefreshLock,
        Sidecar::Journal,
        Sidecar::AgentLock,
        Sidecar::AgentStatus,
        Sidecar::AgentStatusTemp,
        Sidecar::FleetState,
        Sidecar::FleetStateTemp,
    ];

    /// What follows auth.json's name (`.lock`, `.journal`, ...).
    pub const fn suffix(self) -> &'static str {
        match self {
            Sidecar::Lock => ".lock",
            Sidecar::RefreshLock => ".refresh.lock",
            Sidecar::Journal => ".journal",
            Sidecar::AgentLock => ".agent.lock",
            Sidecar::AgentStatus => ".agent",
            Sidecar::AgentStatusTemp => ".agent.tmp",
            Sidecar::FleetState => ".fleet",
            Sidecar::FleetStateTemp => ".fleet.tmp",
        }
    }

    /// The side file beside `auth` (auth.json, or the final target of its link).
    pub fn beside(self, auth: &Path) -> PathBuf {
        sibling(auth, self.suffix())
    }
}

/// The store's numbered files of one kind beside auth.json: `.<name>.codex-store-<kind>.`
/// followed by a pid and a counter (and, for a rotation file, its generation and fingerprint
/// first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Numbered {
    /// Temp files of a replacement ([`TEMP_PREFIX`]): swept under the lock.
    Temp,
    /// Leftovers of an in-place write ([`IN_PLACE_PREFIX`]): finished or removed under the lock.
    InPlace,
    /// Rotation files ([`ROTATION_PREFIX`]): installed or discarded by the recovery.
    Rotation,
}

impl Numbered {
    /// Every kind.
    pub const ALL: [Numbered; 3] = [Numbered::Temp, Numbered::InPlace, Numbered::Rotation];

    fn kind(self) -> &'static str {
        match self {
            Numbered::Temp => "tmp",
            Numbered::InPlace => "inplace",
            Numbered::Rotation => "rotation",
        }
    }

    /// The prefix of these files beside `auth`: `.<file name>.codex-store-<kind>.`. Named after
    /// the file, so that the stores of two files in one directory never sweep, judge or install
    /// each other's files.
    pub fn prefix(self, auth: &Path) -> String {
        let name = auth
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(AUTH_FILE);
        format!(".{name}.codex-store-{}.", self.kind())
    }
}

/// A sibling of `path` named after it with `suffix` appended (`auth.json` + `.lock`).
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// The temp file a side file at `path` is replaced through: `<path>.tmp`.
pub fn temp_of(path: &Path) -> PathBuf {
    let mut temp = OsString::from(path.as_os_str());
    temp.push(TEMP_SUFFIX);
    PathBuf::from(temp)
}

/// The prefix of the journal's compaction temp files: `<journal name>.compact.`.
pub(crate) fn journal_compact_prefix(journal: &Path) -> Option<String> {
    let name = journal.file_name()?.to_str()?;
    Some(format!("{name}.compact."))
}

/// The temp file this process compacts the journal at `journal` through.
pub(crate) fn journal_compact(journal: &Path) -> PathBuf {
    sibling(journal, &format!(".compact.{}", std::process::id()))
}

/// The copy of auth.json a fleet agent keeps before the fleet's login replaces it:
/// `auth.json.fleet-replaced.<unix seconds>.<pid>`, then `.<n>` for the `n`th of one second.
pub fn fleet_replaced_copy(auth: &Path, unix_seconds: u64, n: u32) -> PathBuf {
    let mut suffix = format!(".fleet-replaced.{unix_seconds}.{}", std::process::id());
    if n > 0 {
        suffix.push_str(&format!(".{n}"));
    }
    sibling(auth, &suffix)
}

/// `from` with [`IN_PLACE_SUFFIX`] appended: a rotation file being installed in place.
pub(crate) fn in_place_marked(from: &Path) -> PathBuf {
    let mut marked = from.as_os_str().to_os_string();
    marked.push(IN_PLACE_SUFFIX);
    PathBuf::from(marked)
}

/// Whether `path` is a rotation file marked [`IN_PLACE_SUFFIX`].
pub(crate) fn is_in_place_marked(path: &Path) -> bool {
    path.to_str().is_some_and(|p| p.ends_with(IN_PLACE_SUFFIX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_names_are_what_the_builders_make_for_auth_json() {
        let auth = Path::new("/home/codex").join(AUTH_FILE);
        let name = |p: PathBuf| p.file_name().unwrap().to_str().unwrap().to_owned();
        assert_eq!(name(Sidecar::Lock.beside(&auth)), LOCK_FILE, "the lock");
        assert_eq!(
            name(Sidecar::RefreshLock.beside(&auth)),
            REFRESH_LOCK_FILE,
            "the refresh lock"
        );
        assert_eq!(
            name(Sidecar::Journal.beside(&auth)),
            JOURNAL_FILE,
            "the journal"
        );
        assert_eq!(Numbered::Temp.prefix(&auth), TEMP_PREFIX, "temp prefix");
        assert_eq!(
            Numbered::InPlace.prefix(&auth),
            IN_PLACE_PREFIX,
            "in-place prefix"
        );
        assert_eq!(
            Numbered::Rotation.prefix(&auth),
            ROTATION_PREFIX,
            "rotation prefix"
        );
    }

    #[test]
    fn side_files_of_a_link_target_are_named_after_the_target() {
        let target = Path::new("/dotfiles/alice.json");
        assert_eq!(
            Sidecar::AgentStatusTemp.beside(target),
            Path::new("/dotfiles/alice.json.agent.tmp"),
            "the agent's temp status is not beside the target"
        );
        assert_eq!(
            Numbered::Rotation.prefix(target),
            ".alice.json.codex-store-rotation.",
            "the rotation prefix is not named after the target"
        );
        assert_eq!(
            temp_of(&Sidecar::FleetState.beside(target)),
            Sidecar::FleetStateTemp.beside(target),
            "the fleet state's temp file is not <state>.tmp"
        );
    }

    #[test]
    fn no_two_side_files_share_a_name() {
        let auth = Path::new("auth.json");
        let mut names: Vec<PathBuf> = Sidecar::ALL.iter().map(|s| s.beside(auth)).collect();
        names.push(auth.to_path_buf());
        names.sort();
        names.dedup();
        assert_eq!(
            names.len(),
            Sidecar::ALL.len() + 1,
            "two side files collide"
        );
    }

    #[test]
    fn copies_kept_for_the_fleet_are_numbered_after_the_first_of_a_second() {
        let auth = Path::new("/h/auth.json");
        let pid = std::process::id();
        assert_eq!(
            fleet_replaced_copy(auth, 7, 0),
            PathBuf::from(format!("/h/auth.json.fleet-replaced.7.{pid}")),
            "the first copy of a second carries no number"
        );
        assert_eq!(
            fleet_replaced_copy(auth, 7, 2),
            PathBuf::from(format!("/h/auth.json.fleet-replaced.7.{pid}.2")),
            "later copies of a second are numbered"
        );
    }
}
