//! [`AgentEvent`]: what the agent reports, one per line (text or JSON), never a secret.

use std::fmt;
use std::path::PathBuf;
use std::time::SystemTime;

use serde::Serialize;

use super::kinds::{FailureClass, IdleReason, ReattachReason, ResumedFrom, StopReason};

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
        /// The fleet whose login it keeps (`PREFIX at ENDPOINTS`), if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        fleet: Option<String>,
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
        /// What kind of failure.
        class: FailureClass,
        /// What went wrong and what to do (no secret).
        message: String,
        /// When the agent tries again (RFC 3339); `None`: not until the file changes.
        next_attempt: Option<String>,
    },
    /// The agent left a state in which it sent nothing (idle, or refused): auth.json holds
    /// credentials it keeps fresh again (a sign-in, or a new login after a refusal).
    Resumed {
        /// The state it left.
        from: ResumedFrom,
        /// Why it was idle; `None` after a refusal.
        reason: Option<IdleReason>,
        /// The access token's fingerprint.
        access: String,
        /// The refresh token's fingerprint.
        refresh: Option<String>,
        /// When the agent will refresh next (RFC 3339).
        next_refresh: Option<String>,
    },
    /// The directory of auth.json, or the agent's claim file in it, was removed or replaced
    /// while the agent ran: the agent claimed the store again and watches the new directory.
    Reattached {
        /// The file it keeps fresh.
        auth_json: PathBuf,
        /// What it found.
        reason: ReattachReason,
    },
    /// Nothing to refresh until the file changes.
    Idle {
        /// Why.
        reason: IdleReason,
        /// What the user can do.
        hint: String,
    },
    /// The agent stopped; nothing is left locked.
    Stopped {
        /// Why.
        reason: StopReason,
        /// What stopped it, in words (the error, for [`StopReason::Failed`]).
        message: String,
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
    codex_store::Timestamp::to_seconds(time)
}

/// `value`, or `-` for none, escaped ([`Escaped`]).
fn or_dash(value: &Option<String>) -> Escaped<'_> {
    Escaped(value.as_deref().unwrap_or("-"))
}

/// Text shown with every character that could end a line, move the cursor or drive a terminal
/// (C0 and C1 controls, DEL, the Unicode line and paragraph separators, bidirectional
/// overrides) written as a Rust escape (`\u{1b}`), so that a value from outside (a fleet
/// record, an endpoint's answer, a path) can neither forge a log line nor send a terminal
/// escape. The rest is shown as it is.
pub(crate) struct Escaped<'a>(pub(crate) &'a str);

impl Escaped<'_> {
    fn needs_escape(c: char) -> bool {
        c.is_control()
            || matches!(
                c,
                '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}'
                    | '\u{2066}'..='\u{2069}'
            )
    }
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(Self::needs_escape) {
            f.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().unwrap_or_default();
            write!(f, "{}", c.escape_unicode())?;
            rest = &rest[at + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

impl fmt::Display for AgentEvent {
    /// One line: every string field is shown with its control characters escaped (`\u{1b}`),
    /// whatever its origin (a message may quote a fleet record, an endpoint's answer or a path).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", Escaped(&self.at))?;
        match &self.kind {
            AgentEventKind::Started {
                pid,
                auth_json,
                lead_seconds,
                fleet,
            } => {
                write!(
                    f,
                    "started: pid {pid}, keeping {} fresh, refreshing {lead_seconds} s before expiry",
                    Escaped(&auth_json.to_string_lossy())
                )?;
                match fleet {
                    Some(fleet) => write!(f, ", with the fleet's login {}", Escaped(fleet)),
                    None => Ok(()),
                }
            }
            AgentEventKind::Refreshed {
                access,
                refresh,
                next_refresh,
            } => write!(
                f,
                "refreshed: access {}, refresh {}, next refresh {}",
                Escaped(access),
                or_dash(refresh),
                or_dash(next_refresh)
            ),
            AgentEventKind::Adopted {
                access,
                refresh,
                next_refresh,
            } => write!(
                f,
                "adopted: another process wrote access {}, refresh {}; next refresh {}",
                Escaped(access),
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
            } => {
                let message = Escaped(message);
                match next_attempt {
                    Some(at) => write!(
                        f,
                        "failed ({class}): {message}; next attempt {}",
                        Escaped(at)
                    ),
                    None => write!(
                        f,
                        "failed ({class}): {message}; no further attempt until auth.json changes"
                    ),
                }
            }
            AgentEventKind::Resumed {
                from,
                reason,
                access,
                refresh,
                next_refresh,
            } => {
                write!(f, "resumed: left {from}")?;
                if let Some(reason) = reason {
                    write!(f, " ({reason})")?;
                }
                write!(
                    f,
                    ": auth.json holds credentials to keep fresh (access {}, refresh {}); next \
                     refresh {}",
                    Escaped(access),
                    or_dash(refresh),
                    or_dash(next_refresh)
                )
            }
            AgentEventKind::Reattached { auth_json, reason } => write!(
                f,
                "reattached: {}; claimed again, keeping {} fresh",
                reason.describe(),
                Escaped(&auth_json.to_string_lossy())
            ),
            AgentEventKind::Idle { reason, hint } => {
                write!(f, "idle ({reason}): {}", Escaped(hint))
            }
            AgentEventKind::Stopped { message, .. } => write!(f, "stopped: {}", Escaped(message)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_line_escapes_every_control_character_of_every_field() {
        let event = AgentEvent {
            at: "2026-01-01T00:00:00Z".into(),
            kind: AgentEventKind::Failed {
                class: FailureClass::SignInRequired,
                message: "x\u{1b}[2Jy\nFORGED line\r\u{85}\u{2028}\u{202e}".into(),
                next_attempt: Some("soon\n".into()),
            },
        };
        let line = event.to_string();
        assert!(
            !line.chars().any(Escaped::needs_escape),
            "a control character reached the text line: {line:?}"
        );
        assert!(
            line.contains("x\\u{1b}[2Jy\\u{a}FORGED line"),
            "the escaped characters must stay visible: {line}"
        );
        let json = serde_json::to_string(&event).expect("an event serializes");
        assert!(
            !json.contains('\u{1b}') && !json.contains('\n'),
            "JSON must carry the control characters escaped: {json}"
        );
    }

    #[test]
    fn ordinary_text_is_shown_as_it_is() {
        let text = "the endpoint said \"no\" (`codex login`), é, \\path";
        assert_eq!(Escaped(text).to_string(), text);
    }
}
