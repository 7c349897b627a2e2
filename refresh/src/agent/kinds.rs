//! The states an [`super::AgentEvent`] names, as enums. Their `snake_case` names are what the
//! text line and `--json` show, and what the README documents, value by value.

use std::fmt;

use serde::Serialize;

/// Defines a fieldless enum whose variants serialize, and display, as the given names.
macro_rules! named_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant,)+
        }

        impl $name {
            /// Every value, in the order documented.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The name shown in text and JSON.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named_enum! {
    /// What kind of failure a `failed` event reports.
    pub enum FailureClass {
        /// The endpoint refused the credentials for good: not sent again until they change.
        SignInRequired = "sign_in_required",
        /// A timeout, a refused connection, a 5xx or 429: retried after the backoff.
        Transient = "transient",
        /// A lock was held past the store's lock timeout: retried after the backoff.
        LockTimeout = "lock_timeout",
        /// auth.json does not parse: retried after the backoff (nothing is written over it).
        Corrupt = "corrupt",
        /// Any other failure (an I/O error, a bad setting): retried after the backoff.
        Other = "other",
        /// etcd could not be read or written, or the fleet's record could not be used.
        Fleet = "fleet",
        /// The fleet lock has been held longer than any holder needs, or the login will lapse
        /// behind it.
        FleetLock = "fleet_lock",
        /// Another holder's reservation of the fleet's token held this machine back too long.
        FleetReservation = "fleet_reservation",
        /// The watch of the fleet's record failed: retried after its own backoff.
        FleetWatch = "fleet_watch",
    }
}

named_enum! {
    /// Why the agent is idle: it sends nothing until auth.json (or the fleet's record) changes.
    pub enum IdleReason {
        /// auth.json holds no credentials.
        SignedOut = "signed_out",
        /// auth.json holds an API key, which never needs a refresh.
        ApiKey = "api_key",
        /// auth.json holds credentials of a mode codex-store does not refresh.
        UnsupportedMode = "unsupported_mode",
        /// The fleet holds no login.
        FleetEmpty = "fleet_empty",
        /// The fleet's login was removed (`logout --fleet`), and so was this machine's.
        FleetSignedOut = "fleet_signed_out",
        /// etcd holds an older state than this machine last synced (restored, or data lost).
        FleetWentBack = "fleet_went_back",
        /// The fleet's record holds no usable credentials.
        FleetRecordUnusable = "fleet_record_unusable",
        /// This machine was signed out while the fleet holds a login: auth.json is left alone.
        SignedOutHere = "signed_out_here",
        /// This machine holds another account's login than the fleet's: left alone.
        AnotherAccountHere = "another_account_here",
        /// auth.json holds a token older than the record's that no known rotation leads to.
        FleetOlderHere = "fleet_older_here",
        /// auth.json and the record hold tokens no known rotation relates: both kept.
        FleetConflict = "fleet_conflict",
    }
}

named_enum! {
    /// The state a `resumed` event left.
    pub enum ResumedFrom {
        /// The agent was idle ([`IdleReason`]).
        Idle = "idle",
        /// The endpoint had refused the credentials for good.
        Refused = "refused",
    }
}

named_enum! {
    /// Why the agent claimed its store again (a `reattached` event).
    pub enum ReattachReason {
        /// The directory of auth.json was removed or replaced.
        HomeReplaced = "home_replaced",
        /// The agent's claim file was removed or replaced in the same directory.
        ClaimLost = "claim_lost",
    }
}

impl ReattachReason {
    /// What happened, in words.
    pub fn describe(self) -> &'static str {
        match self {
            ReattachReason::HomeReplaced => {
                "the directory of auth.json was removed or replaced while the agent ran"
            }
            ReattachReason::ClaimLost => {
                "the agent's claim file was removed or replaced while the agent ran"
            }
        }
    }
}

named_enum! {
    /// Why the agent stopped (a `stopped` event).
    pub enum StopReason {
        /// Asked to (a signal, or the host's shutdown future).
        Asked = "asked",
        /// Asked to, and the token endpoint did not answer the request in flight within the
        /// HTTP timeout.
        AskedRequestUnanswered = "asked_request_unanswered",
        /// An error it cannot go on after (another agent claimed the store, the home is gone).
        Failed = "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_serializes_as_the_name_it_displays() {
        let names = FailureClass::ALL
            .iter()
            .map(|c| (serde_json::to_string(c), c.as_str()))
            .chain(
                IdleReason::ALL
                    .iter()
                    .map(|r| (serde_json::to_string(r), r.as_str())),
            )
            .chain(
                ResumedFrom::ALL
                    .iter()
                    .map(|r| (serde_json::to_string(r), r.as_str())),
            )
            .chain(
                ReattachReason::ALL
                    .iter()
                    .map(|r| (serde_json::to_string(r), r.as_str())),
            )
            .chain(
                StopReason::ALL
                    .iter()
                    .map(|r| (serde_json::to_string(r), r.as_str())),
            );
        for (json, name) in names {
            let json = json.expect("a state serializes");
            assert_eq!(
                json,
                format!("\"{name}\""),
                "JSON and text must name a state alike"
            );
            assert!(
                name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "a state's name must be snake_case: {name}"
            );
        }
    }

    #[test]
    fn the_readme_documents_every_state_an_event_names() {
        let readme = include_str!("../../../README.md");
        let states = FailureClass::ALL
            .iter()
            .map(|c| c.as_str())
            .chain(IdleReason::ALL.iter().map(|r| r.as_str()))
            .chain(ReattachReason::ALL.iter().map(|r| r.as_str()))
            .chain(StopReason::ALL.iter().map(|r| r.as_str()));
        for name in states {
            assert!(
                readme.contains(&format!("`{name}`")),
                "the README does not document the agent state `{name}`"
            );
        }
    }
}
