//! The protocol's pure decisions: what the journal's word on a token means for sending it, how
//! long ago a record was, and whether a failed request may have redeemed the token.

use std::time::{Duration, SystemTime};

use codex_store::TokenFate;

use super::Urgency;
use crate::auth::Mode;
use crate::error::{PermanentReason, RefreshError, TransientReason};
use crate::outcome::RefreshOutcome;

/// What the journal's word on the token due ([`TokenFate`]) means when it forbids sending it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Refused for good (not as reused): the refusal is the answer, nothing is sent.
    Refused(PermanentReason),
    /// Refused as reused at this time: wait for the rotation the refusal means.
    Reused(Option<SystemTime>),
    /// Redeemed already at this time (its answer installed elsewhere, or lost): wait for the
    /// rotation, as after a reuse refusal.
    Spent(Option<SystemTime>),
    /// Sent at this time without a known outcome, within the reuse wait: the answer may still
    /// land, wait for it before sending the token again, once.
    Unanswered(Option<SystemTime>),
}

impl Verdict {
    /// The verdict on a token the journal says `fate` of, with a reuse wait of `reuse_wait`,
    /// at `now`; `None` when nothing forbids sending it.
    pub(crate) fn of(
        fate: Option<&TokenFate>,
        reuse_wait: Duration,
        now: SystemTime,
    ) -> Option<Self> {
        Some(match fate? {
            TokenFate::Refused(refusal) => {
                match PermanentReason::from_code(refusal.code.as_deref().unwrap_or("")) {
                    PermanentReason::Reused => Verdict::Reused(refusal.time()),
                    reason => Verdict::Refused(reason),
                }
            }
            TokenFate::Spent(spent) => Verdict::Spent(spent.time()),
            TokenFate::Unanswered(sent) if waited(sent.time(), now) < reuse_wait => {
                Verdict::Unanswered(sent.time())
            }
            TokenFate::Unanswered(_) => return None,
        })
    }
}

/// What a refresh ends with before any request, from credentials read under the lock: an API
/// key needs none; credentials another process replaced (`moved_on`) and that are not `due`
/// are adopted; credentials not due are left alone when `urgency` asks only for due ones.
/// `None`: go on towards a request.
pub(crate) fn without_request(
    urgency: Urgency,
    mode: Mode,
    moved_on: bool,
    due: bool,
) -> Option<RefreshOutcome> {
    if mode == Mode::ApiKey {
        return Some(RefreshOutcome::NotNeeded);
    }
    if moved_on && !due {
        return Some(RefreshOutcome::AdoptedFromDisk);
    }
    if urgency.only_if_due() && !due {
        return Some(RefreshOutcome::NotNeeded);
    }
    None
}

/// How long before `now` `since` (a journal record's time) was. A time that is missing,
/// unreadable or in the future (a clock stepped back, a forged record) counts as long past: it
/// never makes anyone wait.
pub(crate) fn waited(since: Option<SystemTime>, now: SystemTime) -> Duration {
    since
        .and_then(|t| now.duration_since(t).ok())
        .unwrap_or(Duration::MAX)
}

/// Whether a failed request may have reached the endpoint and redeemed the token: no answer in
/// time, a connection cut after it was made, a 200 that could not be used, or a server error (a
/// gateway's 502/504 may come after the token endpoint behind it rotated). (An OAuth error
/// answer, a 429, a redirect or a connection never made redeemed nothing.)
pub(crate) fn may_be_spent(e: &RefreshError) -> bool {
    match e {
        RefreshError::Transient { reason } => match reason {
            TransientReason::Timeout
            | TransientReason::Interrupted
            | TransientReason::UnparseableAnswer
            | TransientReason::InvalidAnswer(_) => true,
            TransientReason::Status(status) => *status >= 500,
            _ => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codex_store::{Generation, JournalEvent, JournalRecord, Timestamp};

    const WAIT: Duration = Duration::from_secs(8);

    fn record(event: JournalEvent, code: Option<&str>, ago: Duration) -> JournalRecord {
        let mut record = JournalRecord::new(event, Generation::Absent);
        record.code = code.map(str::to_owned);
        let at = SystemTime::now() - ago;
        record.at = Timestamp::from_system_time(at).as_str().to_owned();
        record
    }

    fn transient(reason: TransientReason) -> RefreshError {
        RefreshError::Transient { reason }
    }

    #[test]
    fn credentials_not_due_need_no_request_unless_asked_for_now() {
        let tokens = Mode::Chatgpt;
        assert_eq!(
            without_request(Urgency::IfDue, Mode::ApiKey, false, true),
            Some(RefreshOutcome::NotNeeded),
            "an API key must never be refreshed"
        );
        assert_eq!(
            without_request(Urgency::Now, tokens, true, false),
            Some(RefreshOutcome::AdoptedFromDisk),
            "credentials another process replaced and not due must be adopted, even when asked now"
        );
        assert_eq!(
            without_request(Urgency::IfDueUnlessBusy, tokens, false, false),
            Some(RefreshOutcome::NotNeeded),
            "credentials not due must be left alone when only due ones are refreshed"
        );
        assert_eq!(
            without_request(Urgency::Now, tokens, false, false),
            None,
            "an explicit refresh of the caller's own credentials must go on to a request"
        );
        assert_eq!(
            without_request(Urgency::IfDue, tokens, true, true),
            None,
            "due credentials must go on to a request, whoever wrote them"
        );
    }

    #[test]
    fn a_token_the_journal_knows_nothing_of_is_sent() {
        assert_eq!(
            Verdict::of(None, WAIT, SystemTime::now()),
            None,
            "a token without a journal record must be sent"
        );
    }

    #[test]
    fn a_token_refused_for_good_is_never_sent_again() {
        let fate = TokenFate::Refused(record(
            JournalEvent::Refused,
            Some("refresh_token_expired"),
            Duration::ZERO,
        ));
        assert_eq!(
            Verdict::of(Some(&fate), WAIT, SystemTime::now()),
            Some(Verdict::Refused(PermanentReason::Expired)),
            "an expired refusal must be the answer, without a request"
        );
    }

    #[test]
    fn a_token_refused_as_reused_waits_for_the_rotation_from_the_refusal() {
        let fate = TokenFate::Refused(record(
            JournalEvent::Refused,
            Some("refresh_token_reused"),
            Duration::from_secs(1),
        ));
        let verdict = Verdict::of(Some(&fate), WAIT, SystemTime::now());
        assert!(
            matches!(verdict, Some(Verdict::Reused(Some(_)))),
            "a reuse refusal must wait for the rotation from its time, got {verdict:?}"
        );
    }

    #[test]
    fn a_spent_token_waits_for_its_rotation_however_old() {
        let fate = TokenFate::Spent(record(JournalEvent::Spent, None, WAIT * 10));
        let verdict = Verdict::of(Some(&fate), WAIT, SystemTime::now());
        assert!(
            matches!(verdict, Some(Verdict::Spent(_))),
            "a spent token must never be sent again, got {verdict:?}"
        );
    }

    #[test]
    fn an_unanswered_token_is_waited_for_within_the_reuse_wait_then_sent_once() {
        let recent = TokenFate::Unanswered(record(
            JournalEvent::Unanswered,
            None,
            Duration::from_secs(1),
        ));
        let verdict = Verdict::of(Some(&recent), WAIT, SystemTime::now());
        assert!(
            matches!(verdict, Some(Verdict::Unanswered(Some(_)))),
            "a token sent 1 s ago without an answer must be waited for, got {verdict:?}"
        );
        let old = TokenFate::Unanswered(record(JournalEvent::Unanswered, None, WAIT * 2));
        assert_eq!(
            Verdict::of(Some(&old), WAIT, SystemTime::now()),
            None,
            "a token unanswered for longer than the reuse wait must be sent again"
        );
        assert_eq!(
            Verdict::of(Some(&recent), Duration::ZERO, SystemTime::now()),
            None,
            "without a reuse wait here (a fleet's reservation covers it) nothing is waited for"
        );
    }

    #[test]
    fn a_time_missing_or_in_the_future_never_makes_anyone_wait() {
        let now = SystemTime::now();
        assert_eq!(
            waited(None, now),
            Duration::MAX,
            "a missing time must count as long past"
        );
        assert_eq!(
            waited(Some(now + Duration::from_secs(60)), now),
            Duration::MAX,
            "a time in the future must count as long past"
        );
        assert_eq!(
            waited(Some(now - Duration::from_secs(3)), now),
            Duration::from_secs(3),
            "a time 3 s ago must count as 3 s"
        );
    }

    #[test]
    fn only_failures_after_which_the_endpoint_may_have_redeemed_the_token_count_as_spent() {
        for reason in [
            TransientReason::Timeout,
            TransientReason::Interrupted,
            TransientReason::UnparseableAnswer,
            TransientReason::InvalidAnswer("x".into()),
            TransientReason::Status(502),
        ] {
            let e = transient(reason);
            assert!(may_be_spent(&e), "{e:?} may have redeemed the token");
        }
        for e in [
            transient(TransientReason::Status(429)),
            transient(TransientReason::Stopping),
            RefreshError::Permanent {
                reason: PermanentReason::Expired,
            },
        ] {
            assert!(!may_be_spent(&e), "{e:?} redeemed nothing");
        }
    }
}
