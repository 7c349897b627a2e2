//! The fleet agent's refresh: the one guarded protocol over the fleet's coordinator
//! ([`FleetCoordinator`]), and what its end means for the agent (a plan, events, what is
//! remembered).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use codex_store::{AgentClaim, AgentState, AuthDotJson, Generation};

use super::super::ask::AskEnd;
use super::super::event::{rfc3339, AgentEvent, AgentEventKind};
use super::super::fleet_sync;
use super::super::kinds::FailureClass;
use super::super::{Core, Plan};
use super::busy::LOCK_BUSY_RETRY;
use super::{escaped, FleetSync};
use crate::auth::CodexAuth;
use crate::error::RefreshError;
use crate::fleet::{Fleet, FleetRecord};
use crate::outcome::RefreshOutcome;
use crate::protocol::fleet::{
    FleetCoordinator, FleetEnd, FleetPlan, FleetStop, Upload as FleetUpload, UploadRefused,
};
use crate::protocol::Urgency;

impl FleetSync {
    /// Refreshes for the whole fleet, under its lock: the one guarded protocol over the
    /// fleet's coordinator (when due, or now when a token broker asked), its end reported and
    /// planned for.
    pub(super) async fn refresh_for_fleet(
        &mut self,
        core: &mut Core,
        claim: &AgentClaim,
        fleet: &Arc<Fleet>,
        record: FleetRecord,
        urgency: Urgency,
        on_event: &mut impl FnMut(&AgentEvent),
    ) -> Plan {
        let revision = record.revision;
        let (reserved_tx, mut reserved) = tokio::sync::oneshot::channel();
        let plan = FleetPlan {
            fleet: Arc::clone(fleet),
            record,
            request: core.manager.config().http_timeout,
            reuse_wait: core.reuse_wait,
            overdue: self
                .reservation_wait
                .as_ref()
                .filter(|w| w.reported)
                .map(|w| w.revision),
        };
        let coordinator = Arc::new(FleetCoordinator::new(plan, reserved_tx));
        let manager = core.manager.clone();
        let run = manager.run_with(urgency, coordinator);
        tokio::pin!(run);
        // The status says "refreshing" once the token is reserved fleet-wide (its request
        // about to go), not while a lock or a reservation of another holds this one back.
        let end = tokio::select! {
            biased;
            Ok(()) = &mut reserved => {
                core.publish(claim, AgentState::Refreshing, None);
                run.await
            }
            end = &mut run => end,
        };
        let end = match end {
            Ok(end) => end,
            Err(e) => return core.failed(&e, on_event),
        };
        if !matches!(end, FleetEnd::Stopped(FleetStop::LockHeld(_))) {
            self.lock_busy = None;
        }
        if !matches!(end, FleetEnd::Stopped(_)) {
            self.reservation_wait = None;
        }
        match end {
            FleetEnd::Stopped(stop) => self.stopped(core, fleet, revision, stop, on_event).await,
            FleetEnd::Refreshed { auth, upload } => self.refreshed(core, &auth, upload, on_event),
            FleetEnd::Unreadable => Plan::Again,
            FleetEnd::Rotated => {
                self.distrust_last_look();
                Plan::Again
            }
            FleetEnd::AnswerUploaded { revision, refresh } => {
                self.wrote(revision);
                on_event(&AgentEvent::now(AgentEventKind::Uploaded {
                    revision,
                    refresh,
                }));
                Plan::Again
            }
            FleetEnd::AnswerNotUploaded { answer, why } => {
                self.answer_not_uploaded(core, &answer, &why, on_event)
            }
            FleetEnd::Refused(reason) => {
                self.refused_at = Some(revision);
                core.failed(&RefreshError::Permanent { reason }, on_event)
            }
            // A local process holds the refresh lock: look again soon (its write wakes us).
            FleetEnd::Local(Ok(RefreshOutcome::NotNeeded)) if core.still_due() => Plan::At(
                SystemTime::now() + super::super::BUSY_RETRY,
                AgentState::Waiting,
            ),
            FleetEnd::Local(Ok(_)) => Plan::Again,
            FleetEnd::Local(Err(
                RefreshError::AccountChanged { .. } | RefreshError::LoggedOut { .. },
            )) => Plan::Again,
            FleetEnd::Local(Err(e)) => core.failed(&e, on_event),
        }
    }

    /// This holder refreshed the fleet's login into `auth` and uploaded it as `upload` says:
    /// reported, and planned for the next due time (or the upload's retry).
    fn refreshed(
        &mut self,
        core: &mut Core,
        auth: &CodexAuth,
        upload: FleetUpload,
        on_event: &mut impl FnMut(&AgentEvent),
    ) -> Plan {
        let retry_upload = match upload {
            FleetUpload::Written { revision, local } => {
                self.wrote(revision);
                self.remember_sync(core, revision, local);
                None
            }
            FleetUpload::Moved => Some(Duration::ZERO),
            FleetUpload::Failed => Some(core.backoff.next_delay()),
        };
        if retry_upload.is_none() {
            core.backoff.reset();
        }
        let next = core.next_due(auth);
        core.not_before = Some((auth.generation(), next));
        on_event(&AgentEvent::now(AgentEventKind::Refreshed {
            access: auth.bearer().fingerprint(),
            refresh: auth.refresh_fingerprint().map(str::to_owned),
            next_refresh: Some(rfc3339(next)),
        }));
        match retry_upload {
            Some(delay) => Plan::At(SystemTime::now() + delay, AgentState::Retrying),
            None => Plan::At(next, AgentState::Waiting),
        }
    }

    /// The fleet stopped the refresh (of the record at `revision`) before anything was sent.
    async fn stopped(
        &mut self,
        core: &mut Core,
        fleet: &Fleet,
        revision: i64,
        stop: FleetStop,
        on_event: &mut impl FnMut(&AgentEvent),
    ) -> Plan {
        match stop {
            FleetStop::Refused(refusal) => {
                core.refused = Some(
                    core.manager
                        .cached()
                        .map_or(Generation::Absent, |a| a.generation()),
                );
                let end = AskEnd::Refused {
                    reason: crate::error::PermanentReason::from_code(&refusal.code),
                    answer: None,
                };
                core.ask_end = Some(end.clone());
                core.refused_end = Some(end);
                self.refused_at = Some(revision);
                on_event(&AgentEvent::now(AgentEventKind::Failed {
                    class: FailureClass::SignInRequired,
                    message: format!(
                        "the token endpoint refused the fleet's refresh token ({}, seen by {}); \
                         no machine sends it again: sign in on one machine and seed the fleet \
                         (`codex-store fleet seed --force`); this agent resumes when the fleet's \
                         login changes",
                        escaped(&refusal.code),
                        escaped(&refusal.machine)
                    ),
                    next_attempt: None,
                }));
                Plan::UntilChange(AgentState::Refused)
            }
            // Another machine refreshes; its upload wakes this one. A lock held for longer
            // than any holder needs is reported.
            FleetStop::LockHeld(held) => self.fleet_lock_busy(core, fleet, &held, on_event),
            FleetStop::RecordMoved => {
                self.distrust_last_look();
                Plan::Again
            }
            FleetStop::FoundReservation(found) => {
                let request = core.manager.config().http_timeout;
                if self
                    .wait_for_reservation(core, fleet, &found, request, on_event)
                    .await
                {
                    tracing::info!(machine = %escaped(&found.mark.machine), "a previous lock holder's reservation of this refresh token still lives; waiting for its upload or its expiry");
                    return Plan::At(SystemTime::now() + LOCK_BUSY_RETRY, AgentState::Waiting);
                }
                // Waited for as long as any: no longer honored, at once.
                Plan::Again
            }
            FleetStop::LockLost => {
                Plan::At(SystemTime::now() + LOCK_BUSY_RETRY, AgentState::Waiting)
            }
            FleetStop::Failed(e) => self.fleet_failed(core, &e, on_event),
        }
    }

    /// A refresh's answer this machine did not install could not be uploaded (`why`): a
    /// durable copy is kept beside auth.json (`auth.json.fleet-replaced.*`) and reported: it
    /// holds the fleet's only live refresh token (`fleet seed --force` from it restores the
    /// fleet).
    fn answer_not_uploaded(
        &mut self,
        core: &mut Core,
        answer: &AuthDotJson,
        why: &UploadRefused,
        on_event: &mut impl FnMut(&AgentEvent),
    ) -> Plan {
        let kept = fleet_sync::keep_copy(core.manager.store(), answer);
        let at = SystemTime::now() + core.backoff.next_delay();
        on_event(&AgentEvent::now(AgentEventKind::Failed {
            class: FailureClass::Fleet,
            message: format!(
                "the new tokens of the fleet's refresh could not be uploaded ({why}) and \
                 auth.json here no longer takes them; they are kept in {}: run `codex-store \
                 fleet seed --force` with that file as auth.json to give them to the fleet",
                kept.map_or_else(
                    || "no file (the copy failed too)".to_owned(),
                    |p| p.display().to_string()
                )
            ),
            next_attempt: Some(rfc3339(at)),
        }));
        Plan::At(at, AgentState::Retrying)
    }
}
