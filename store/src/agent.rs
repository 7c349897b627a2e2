//! One agent per auth.json: the claim an agent holds for its lifetime (`auth.json.agent.lock`)
//! and the status it publishes beside it (`auth.json.agent`), which `inspect` reads.
//!
//! The claim is an exclusive `flock` held until the agent exits (a crash releases it with the
//! process). The status file is only believed while the claim is held, so a stale one left by a
//! killed agent is ignored and replaced by the next agent.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::lock::{self, LockGuard};
use crate::names::Sidecar;
use crate::side_file::{self, SideBytes};
use crate::store::Store;
use crate::timestamp::Timestamp;

/// The largest status file read back (it is a few hundred bytes).
const STATUS_LIMIT: u64 = 16 * 1024;

/// What an agent publishes about itself. Holds no secret: fingerprints at most.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// The agent's process id.
    pub pid: u32,
    /// When it started (RFC 3339).
    pub started: String,
    /// What it is doing.
    pub state: AgentState,
    /// When it will next try to refresh (RFC 3339), if it knows.
    pub next_refresh: Option<String>,
    /// The URL of the local token broker served beside it (`codex-store agent --serve`), e.g.
    /// `http://127.0.0.1:14550/oauth/token`: what `CODEX_REFRESH_TOKEN_URL_OVERRIDE` names to
    /// send Codex's refreshes there. Absent (and not written) without one; a status written
    /// before the field existed reads as without one. Outside text when read back: check it
    /// before use, escape it before printing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
}

impl AgentStatus {
    /// The status of this process, started at `started`, in `state`, next refreshing at `next`.
    pub fn new(started: SystemTime, state: AgentState, next: Option<SystemTime>) -> Self {
        AgentStatus {
            pid: std::process::id(),
            started: Timestamp::from_system_time(started).as_str().to_owned(),
            state,
            next_refresh: next.map(|t| Timestamp::from_system_time(t).as_str().to_owned()),
            broker: None,
        }
    }

    /// The same status naming the token broker at `url` ([`AgentStatus::broker`]).
    pub fn with_broker(mut self, url: impl Into<String>) -> Self {
        self.broker = Some(url.into());
        self
    }

    /// [`AgentStatus::next_refresh`] as a time, when it is set and readable.
    pub fn next_refresh_time(&self) -> Option<SystemTime> {
        let text = self.next_refresh.as_deref()?;
        Timestamp::parse(text).ok().map(|t| t.time())
    }
}

/// What an agent is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    /// Waiting for the next refresh.
    Waiting,
    /// Refreshing now.
    Refreshing,
    /// A refresh failed for now; it tries again at the next refresh time.
    Retrying,
    /// The token endpoint refused these credentials for good: waiting for a new sign-in.
    Refused,
    /// No credentials that refresh (signed out, an API key, another mode): waiting for a sign-in.
    Idle,
}

/// Whether an agent runs for a store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentPresence {
    /// No agent holds the claim.
    NotRunning,
    /// An agent holds the claim; its status when it could be read.
    Running(Option<AgentStatus>),
}

/// An agent's claim on a store: while it lives, no other agent can claim the store. Dropping it
/// removes the status file (unless the claim file was removed or replaced meanwhile: then the
/// status there is not this claim's) and releases the claim.
#[derive(Debug)]
pub struct AgentClaim {
    _lock: LockGuard,
    lock_path: PathBuf,
    /// The device and inode of the claim file this claim locked.
    identity: Option<(u64, u64)>,
    status_path: PathBuf,
    temp_path: PathBuf,
    /// The token broker's URL of the store ([`Store::with_agent_broker`]), published in every
    /// status that names none.
    broker: Option<String>,
    /// Set by [`AgentClaim::abandon`]: release the lock, touch no file.
    abandoned: bool,
}

impl Store {
    /// The agent's claim file, `auth.json.agent.lock` beside auth.json (its target for a link).
    pub fn agent_lock_path(&self) -> PathBuf {
        Sidecar::AgentLock.beside(self.path())
    }

    /// The agent's status file, `auth.json.agent` beside the claim.
    pub fn agent_status_path(&self) -> PathBuf {
        Sidecar::AgentStatus.beside(self.path())
    }

    /// Where the agent writes its status before renaming it over
    /// [`agent_status_path`](Store::agent_status_path): `auth.json.agent.tmp`.
    pub fn agent_status_temp_path(&self) -> PathBuf {
        Sidecar::AgentStatusTemp.beside(self.path())
    }

    /// A fleet agent's record of what was last in sync, `auth.json.fleet` beside auth.json (its
    /// target for a link).
    pub fn fleet_state_path(&self) -> PathBuf {
        Sidecar::FleetState.beside(self.path())
    }

    /// Where a fleet agent writes its state before renaming it over
    /// [`fleet_state_path`](Store::fleet_state_path): `auth.json.fleet.tmp`.
    pub fn fleet_state_temp_path(&self) -> PathBuf {
        Sidecar::FleetStateTemp.beside(self.path())
    }

    /// Claims the store for an agent, never waiting, and publishes `status` (naming the token
    /// broker of [`Store::with_agent_broker`] when it names none, as every status this claim
    /// publishes).
    ///
    /// # Errors
    /// [`StoreError::AgentRunning`] (with the other agent's pid when it published one) when
    /// another agent holds the claim; [`StoreError::Lock`], [`StoreError::NotARegularFile`] and
    /// [`StoreError::Io`] for the claim or status file.
    pub fn claim_agent(&self, status: &AgentStatus) -> Result<AgentClaim, StoreError> {
        let lock_path = self.agent_lock_path();
        // `inspect` probes the claim with a shared lock for an instant: look a few times
        // before calling it taken.
        let mut guard = None;
        for attempt in 0..3 {
            if attempt > 0 {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            guard = lock::try_acquire(&lock_path)?;
            if guard.is_some() {
                break;
            }
        }
        let Some(guard) = guard else {
            let pid = read_status(&self.agent_status_path())
                .map(|s| s.pid)
                .filter(|pid| process_alive(*pid));
            return Err(StoreError::AgentRunning {
                path: lock_path,
                pid,
            });
        };
        // `try_acquire` checked that the path names the file it locked; what it names now is
        // that file unless it was replaced in between (then the next `is_current` says so).
        let identity = file_identity(&lock_path);
        let claim = AgentClaim {
            _lock: guard,
            lock_path,
            identity,
            status_path: self.agent_status_path(),
            temp_path: self.agent_status_temp_path(),
            broker: self.agent_broker().map(str::to_owned),
            abandoned: false,
        };
        claim.publish(status)?;
        Ok(claim)
    }

    /// Whether an agent runs for this store, and what it published. Never waits and creates
    /// nothing.
    ///
    /// # Errors
    /// [`StoreError::Lock`], [`StoreError::NotARegularFile`] and [`StoreError::Io`] for the claim
    /// file.
    pub fn agent_presence(&self) -> Result<AgentPresence, StoreError> {
        if !lock::is_held(&self.agent_lock_path())? {
            return Ok(AgentPresence::NotRunning);
        }
        Ok(AgentPresence::Running(read_status(
            &self.agent_status_path(),
        )))
    }
}

impl AgentClaim {
    /// Replaces the published status (written beside it and renamed over it, so readers see
    /// the old one or the new one). A status naming no token broker is published naming the
    /// store's ([`Store::with_agent_broker`]), if any.
    ///
    /// # Errors
    /// [`StoreError::Io`] naming the file that could not be written or renamed.
    pub fn publish(&self, status: &AgentStatus) -> Result<(), StoreError> {
        let temp = &self.temp_path;
        let bytes = match (&status.broker, &self.broker) {
            (None, Some(broker)) => serde_json::to_vec(&status.clone().with_broker(broker.clone())),
            _ => serde_json::to_vec(status),
        }
        .unwrap_or_default();
        let write = || -> io::Result<()> {
            // Only the claim holder writes here; whatever is in the way (a leftover, or a FIFO
            // or link someone planted) is removed, and the file is created anew, exclusively,
            // without following a link and without blocking: nothing here can block or write
            // elsewhere.
            side_file::remove(temp)?;
            let mut file = side_file::create_new(temp)?;
            file.write_all(&bytes)
        };
        if let Err(e) = write() {
            let _ = side_file::remove(temp);
            return Err(StoreError::io("write the agent status", temp, e));
        }
        // The rename replaces whatever entry is at the status name without opening it.
        std::fs::rename(temp, &self.status_path)
            .map_err(|e| StoreError::io("rename the agent status over", &self.status_path, e))
    }
}

impl AgentClaim {
    /// Whether the claim file at its path is still the one this claim locked. It is not when the
    /// file, or the whole directory, was removed or replaced while the agent ran (someone
    /// re-created `CODEX_HOME`): then this claim keeps nobody out, `inspect` cannot see it, and
    /// the agent must claim the store again ([`Store::claim_agent`]).
    pub fn is_current(&self) -> bool {
        self.identity.is_some() && file_identity(&self.lock_path) == self.identity
    }

    /// Releases a claim that is no longer current, leaving the files at its paths alone (they
    /// may be another claim's now).
    pub fn abandon(mut self) {
        self.abandoned = true;
    }
}

impl Drop for AgentClaim {
    fn drop(&mut self) {
        if self.abandoned || !self.is_current() {
            return;
        }
        let _ = side_file::remove(&self.status_path);
        let _ = side_file::remove(&self.temp_path);
    }
}

/// The device and inode at `path` (not following a link), if there is a file.
fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|meta| (meta.dev(), meta.ino()))
}

/// Whether a process with this id exists (a stale status file may name a dead agent).
fn process_alive(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        // It exists, but belongs to someone else.
        Err(e) => e == rustix::io::Errno::PERM,
    }
}

/// The status at `path`, read as every side file is ([`side_file::read_bounded`]): a FIFO, a
/// device or a link there, or a file over [`STATUS_LIMIT`], is no status.
fn read_status(path: &Path) -> Option<AgentStatus> {
    match side_file::read_bounded(path, STATUS_LIMIT).ok()? {
        SideBytes::Bytes(bytes) => serde_json::from_slice(&bytes).ok(),
        SideBytes::Missing | SideBytes::NotRegular | SideBytes::TooLarge => None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::{AgentPresence, AgentState, AgentStatus};
    use crate::Store;

    const BROKER: &str = "http://127.0.0.1:14550/oauth/token";

    #[test]
    fn a_status_written_before_the_broker_field_existed_reads_as_one_without_a_broker() {
        let old =
            r#"{"pid":42,"started":"2026-11-24T10:00:00Z","state":"waiting","next_refresh":null}"#;
        let status: AgentStatus = serde_json::from_str(old)
            .unwrap_or_else(|e| panic!("an older agent's status no longer parses ({e}): {old}"));
        assert_eq!(
            status.broker, None,
            "an older agent's status must read as without a broker: {status:?}"
        );
    }

    #[test]
    fn a_status_without_a_broker_is_written_without_the_key_and_one_with_it_round_trips() {
        let bare = AgentStatus::new(SystemTime::now(), AgentState::Idle, None);
        let text = serde_json::to_string(&bare).expect("a status encodes");
        assert!(
            !text.contains("broker"),
            "a status without a broker must not write the key (older readers): {text}"
        );
        let serving = bare.with_broker(BROKER);
        let text = serde_json::to_string(&serving).expect("a status encodes");
        let back: AgentStatus = serde_json::from_str(&text).expect("a status decodes");
        assert_eq!(
            back.broker.as_deref(),
            Some(BROKER),
            "the broker's URL did not survive a round trip: {text}"
        );
    }

    /// The status `inspect` would read.
    fn published(store: &Store) -> AgentStatus {
        match store.agent_presence().expect("the claim can be probed") {
            AgentPresence::Running(Some(status)) => status,
            other => panic!("a claimed store must show its agent's status: {other:?}"),
        }
    }

    #[test]
    fn every_status_a_claim_publishes_names_the_stores_broker_unless_it_names_one() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Store::open(dir.path())
            .expect("the store opens")
            .with_agent_broker(Some(BROKER.to_owned()));
        let started = SystemTime::now();
        let claim = store
            .claim_agent(&AgentStatus::new(started, AgentState::Idle, None))
            .expect("the store can be claimed");
        assert_eq!(
            published(&store).broker.as_deref(),
            Some(BROKER),
            "the first status of a claim must name the store's broker"
        );
        claim
            .publish(&AgentStatus::new(started, AgentState::Waiting, None))
            .expect("a status can be published");
        let later = published(&store);
        assert_eq!(
            (later.state, later.broker.as_deref()),
            (AgentState::Waiting, Some(BROKER)),
            "a later status must be the new one and still name the store's broker"
        );
        let other = "http://[::1]:14551/oauth/token";
        claim
            .publish(&AgentStatus::new(started, AgentState::Waiting, None).with_broker(other))
            .expect("a status can be published");
        assert_eq!(
            published(&store).broker.as_deref(),
            Some(other),
            "a status naming its own broker must be published as it is"
        );
    }
}
