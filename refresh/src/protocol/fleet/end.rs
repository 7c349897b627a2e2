//! What a fleet's run of the guarded refresh ends with ([`FleetEnd`]), and the pure decision
//! whether another holder's reservation holds this one back ([`reservation_blocks`]).

use std::sync::Arc;

use codex_store::{AuthDotJson, Generation};

use crate::auth::CodexAuth;
use crate::error::{PermanentReason, RefreshError};
use crate::fleet::record::{FoundReservation, Refusal};
use crate::fleet::{FleetError, LockHeld};
use crate::outcome::RefreshOutcome;

/// Why the fleet stopped a refresh before anything was sent (none is an error of the refresh).
#[derive(Debug)]
pub(crate) enum FleetStop {
    /// The fleet remembers a refusal of its token: no machine sends it.
    Refused(Refusal),
    /// Another holder has the fleet lock.
    LockHeld(LockHeld),
    /// Under the lock, the record is not what was reconciled (or holds no refresh token).
    RecordMoved,
    /// Another holder's live reservation of the token: it may be in flight.
    FoundReservation(FoundReservation),
    /// The lock was no longer this holder's when it reserved.
    LockLost,
    /// etcd failed before anything was sent.
    Failed(FleetError),
}

/// How the upload of this holder's installed answer went.
#[derive(Debug)]
pub(crate) enum Upload {
    /// Written at this revision; auth.json here is at `local`.
    Written {
        /// The record's new revision.
        revision: i64,
        /// auth.json's generation that holds the same tokens.
        local: Generation,
    },
    /// The record moved on during the refresh: the next step reconciles.
    Moved,
    /// etcd did not take it (logged): retried with backoff (auth.json here holds the tokens).
    Failed,
}

/// Why an answer this machine did not install could not be uploaded.
#[derive(Debug)]
pub(crate) enum UploadRefused {
    /// The record moved on during the refresh.
    Moved,
    /// etcd did not take it.
    Failed(FleetError),
}

impl std::fmt::Display for UploadRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UploadRefused::Moved => f.write_str("the fleet's record moved on during the refresh"),
            UploadRefused::Failed(e) => write!(f, "{e}"),
        }
    }
}

/// What a fleet's run of the guarded refresh ended with.
#[derive(Debug)]
pub(crate) enum FleetEnd {
    /// Stopped before anything was sent.
    Stopped(FleetStop),
    /// Refreshed and installed here; the upload went as said.
    Refreshed {
        /// The new credentials.
        auth: Arc<CodexAuth>,
        /// The upload.
        upload: Upload,
    },
    /// Refreshed, but auth.json no longer holds the new tokens to upload: look again.
    Unreadable,
    /// An answer this machine did not install (auth.json here changed during the request)
    /// went to the fleet only.
    AnswerUploaded {
        /// The record's new revision.
        revision: i64,
        /// The new refresh token's fingerprint.
        refresh: Option<String>,
    },
    /// An answer this machine did not install could not be uploaded: the fleet's only live
    /// token, to be kept beside auth.json.
    AnswerNotUploaded {
        /// The answer's document.
        answer: Box<AuthDotJson>,
        /// Why.
        why: UploadRefused,
    },
    /// Refused as reused, and the record changed within the reuse wait: the rotation came.
    Rotated,
    /// Refused for good; the refusal is remembered for the fleet.
    Refused(PermanentReason),
    /// Anything else, as this machine's protocol ended.
    Local(Result<RefreshOutcome, RefreshError>),
}

/// Whether `found`, a reservation read under this holder's lock (created at `lock`), holds it
/// back from redeeming the token of fingerprint `refresh`: a reservation of that very token by
/// another lock holder, unless it is `overdue` (one already waited for as long as this machine
/// waits for any).
pub(crate) fn reservation_blocks(
    found: &FoundReservation,
    refresh: &str,
    lock: i64,
    overdue: Option<i64>,
) -> bool {
    found.mark.refresh == refresh && found.mark.lock != lock && overdue != Some(found.revision)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::record::Redeeming;

    fn found(refresh: &str, lock: i64, revision: i64) -> FoundReservation {
        FoundReservation {
            mark: Redeeming {
                refresh: refresh.to_owned(),
                machine: "other".to_owned(),
                at: "2026-01-01T00:00:00Z".to_owned(),
                lock,
            },
            revision,
            lease: 7,
        }
    }

    #[test]
    fn another_holders_reservation_of_the_same_token_holds_this_one_back() {
        assert!(
            reservation_blocks(&found("fp", 10, 20), "fp", 11, None),
            "a live reservation of the token by another lock must be waited for"
        );
    }

    #[test]
    fn a_reservation_of_another_token_or_under_this_lock_holds_nobody_back() {
        assert!(
            !reservation_blocks(&found("old", 10, 20), "fp", 11, None),
            "a reservation of another token must not hold the token due back"
        );
        assert!(
            !reservation_blocks(&found("fp", 11, 20), "fp", 11, None),
            "this holder's own reservation (same lock) must not hold it back"
        );
    }

    #[test]
    fn a_reservation_waited_for_as_long_as_any_holds_nobody_back_any_more() {
        assert!(
            !reservation_blocks(&found("fp", 10, 20), "fp", 11, Some(20)),
            "an overdue reservation must no longer be waited for"
        );
        assert!(
            reservation_blocks(&found("fp", 10, 21), "fp", 11, Some(20)),
            "a new reservation (another revision) must be waited for again"
        );
    }
}
