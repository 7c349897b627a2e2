//! [`AgentEvent`]: what the agent reports, one per line (text or JSON), never a secret.

use std::fmt;
use std::path::PathBuf;
use std::time::SystemTime;

use serde::Serialize;

/// One thing the agent did or saw. `Display` is the text line; `Serialize` is the JSON line.
/// Tokens appear only as fingerprints ([`codex_store::Secret::fingerprint`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AgentEvent {
    /// When (RFC 3339).
    pub at: String,
    /// What.
    #[serde(flatten)]
    pub kind: AgentEventKind,
}

/// What an [`AgentEvent`] says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AgentEventKind {
    /// The agent claimed the store and watches it.
    Started {
        /// The agent's process id.
        pid: u32,
        /// The file it keeps fresh.
        auth_json: PathBuf,
        /// How long before expiry it refreshes, in seconds.
        lead_seconds: u64,
    },
    /// The agent redeemed the refresh token and stored the new tokens.
    Refreshed {
        /// The new access token's fingerprint.
        access: String,
        /// The new refresh token's fingerprint.
        refresh: Option<String>,
        /// When the agent will refresh next (RFC 3339).
        next_refresh: Option<String>,
    },
    /// Another process wrote newer credentials (a refresh or a sign-in); the agent took them.
    Adopted {
        /// The access token's fingerprint.
        access: String,
        /// The refresh token's fingerprint.
        refresh: Option<String>,
        /// When the agent will refresh next (RFC 3339).
        next_refresh: Option<String>,
    },
    /// The fleet's login (a rotation another machine made) was written into auth.json.
    Mirrored {
        /// The fleet record's revision.
        revision: i64,
        /// The refresh token's fingerprint.
        refresh: Option<String>,
    },
    /// A rotation a local process made (outside the agent) was uploaded to the fleet.
    Uploaded {
        /// The fleet record's new revision.
        revision: i64,
        /// The refresh token's fingerprint.
        refresh: Option<String>,
    },
    /// A refresh (or a read) failed.
    Failed {
        /// `transient` (retried), `sign_in_required` (not retried for these credentials),
        /// `lock_timeout`, `corrupt`, `other`.
        class: String,
        /// What went wrong and what to do (no secret).
        message: String,
        /// When the agent tries again (RFC 3339); `None`: not until the file changes.
        next_attempt: Option<String>,
    },
    /// Nothing to refresh until the file changes.
    Idle {
        /// Why: `signed_out`, `api_key`, `unsupported_mode`, `refused`.
        reason: String,
        /// What the user can do.
        hint: String,
    },
    /// The agent stopped; nothing is left locked.
    Stopped {
        /// Why.
        reason: String,
    },
}

impl AgentEvent {
    pub(crate) fn now(kind: AgentEventKind) -> Self {
        AgentEvent {
            at: rfc3339(SystemTime::now()),
            kind,
        }
    }
}

/// RFC 3339 text of `time`, to the second.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

fn or_dash(value: &Option<String>) -> &str {
    value.as_deref().unwrap_or("-")
}

impl fmt::Display for AgentEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", self.at)?;
        match &self.kind {
            AgentEventKind::Started {
                pid,
                auth_json,
                lead_seconds,
            } => write!(
                f,
                "started: pid {pid}, keeping {} fresh, refreshing {lead_seconds} s before expiry",
                auth_json.display()
            ),
            AgentEventKind::Refreshed {
                access,
                refresh,
                next_refresh,
            } => write!(
                f,
                "refreshed: access {access}, refresh {}, next refresh {}",
                or_dash(refresh),
                or_dash(next_refresh)
            ),
            AgentEventKind::Adopted {
                access,
                refresh,
                next_refresh,
            } => write!(
                f,
                "adopted: another process wrote access {access}, refresh {}; next refresh {}",
                or_dash(refresh),
                or_dash(next_refresh)
            ),
            AgentEventKind::Mirrored { revision, refresh } => write!(
                f,
                "mirrored: the fleet's login (revision {revision}, refresh {}) written to auth.json",
                or_dash(refresh)
            ),
            AgentEventKind::Uploaded { revision, refresh } => write!(
                f,
                "uploaded: a local rotation (refresh {}) is now the fleet's login (revision {revision})",
                or_dash(refresh)
            ),
            AgentEventKind::Failed {
                class,
                message,
                next_attempt,
            } => match next_attempt {
                Some(at) => write!(f, "failed ({class}): {message}; next attempt {at}"),
                None => write!(
                    f,
                    "failed ({class}): {message}; no further attempt until auth.json changes"
                ),
            },
            AgentEventKind::Idle { reason, hint } => write!(f, "idle ({reason}): {hint}"),
            AgentEventKind::Stopped { reason } => write!(f, "stopped: {reason}"),
        }
    }
}
