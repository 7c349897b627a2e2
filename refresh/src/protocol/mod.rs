//! The guarded refresh, once, over a [`Coordinator`]: lock -> re-read -> compare account ->
//! refresh only if still unchanged and still due (the save reserved first, and checked by the
//! coordinator right before the send) -> persist by compare-and-swap under the write locks ->
//! unlock -> publish.
//!
//! [`local::Local`] coordinates through this machine's rotation files and journal;
//! [`fleet::FleetCoordinator`] through a fleet's record in etcd, with `Local` for this
//! machine's durable copy.

mod coordinator;
mod decide;
mod disk;
pub(crate) mod fleet;
pub(crate) mod local;
mod persist;
mod wait;

use std::sync::Arc;
use std::time::SystemTime;

use codex_store::{JournalEvent, JournalRecord, Reserved, Secret, Snapshot, StoreError};

pub(crate) use coordinator::Coordinator;
use coordinator::{Locked, Reserve};
use decide::{may_be_spent, without_request, Verdict};
use disk::signed_out;
pub(crate) use disk::{auth_from_snapshot, check_disk};
use persist::{persist, save_unsaved};
use wait::await_rotation;

use crate::auth::CodexAuth;
use crate::error::{PermanentReason, RefreshError, TransientReason};
use crate::outcome::RefreshOutcome;
use crate::state::{Inner, Known};

/// When a refresh asks for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Urgency {
    /// Only when the tokens are due (and no recent transient failure is shared).
    IfDue,
    /// Like [`Urgency::IfDue`], but when another refresh (in this process or another) is under
    /// way, does not wait for it: the caller's credentials are still valid, and it keeps them.
    IfDueUnlessBusy,
    /// Even when they are not due (an explicit refresh, or the 401 recovery), unless another
    /// process already refreshed.
    Now,
}

impl Urgency {
    /// Whether credentials that are not due are left alone.
    pub(crate) fn only_if_due(self) -> bool {
        matches!(self, Urgency::IfDue | Urgency::IfDueUnlessBusy)
    }
}

/// How a run of the protocol ended, when not with an error.
#[derive(Debug)]
pub(crate) enum Ended<S> {
    /// What the refresh did (new or adopted credentials are in the cache).
    Done(RefreshOutcome),
    /// The coordinator stopped it (not an error of the refresh).
    Stopped(S),
}

/// How many times a refresh starts again from the lock (auth.json changed between the read
/// and the reservation, or a token sent without a known outcome was waited out) before the
/// last reason is returned.
const RESTARTS: u32 = 4;

/// What one pass of the protocol ended with.
enum Pass<S> {
    /// The refresh's result.
    Done((RefreshOutcome, Arc<CodexAuth>)),
    /// The coordinator stopped it.
    Stopped(S),
    /// Start again from the lock, for this reason.
    Again(RefreshError),
}

/// What [`guarded_refresh`] returns: the credentials it ended with, or the coordinator's stop.
pub(crate) enum Guarded<S> {
    /// The refresh's outcome and the credentials to cache.
    Done(RefreshOutcome, Arc<CodexAuth>),
    /// The coordinator stopped it.
    Stopped(S),
}

/// Runs the protocol over `coordinator`, with `urgency` saying whether tokens that are not due
/// are refreshed.
///
/// Single flight across processes is the refresh lock ([`codex_store::Rotation`], taken by the
/// coordinator last), held across the request; the write locks (`auth.lock`, `auth.json.lock`,
/// shared with Codex) are taken only to check the reservation and by the save, for
/// milliseconds, so that no Codex process waiting for them gives up.
///
/// # Errors
/// The refresh's errors (see [`crate::AuthManager::refresh`]).
pub(crate) async fn guarded_refresh<C: Coordinator + ?Sized>(
    coordinator: &C,
    inner: &Arc<Inner>,
    known: Known,
    urgency: Urgency,
) -> Result<Guarded<C::Stop>, RefreshError> {
    let mut last = None;
    for _ in 0..RESTARTS {
        match pass(coordinator, inner, &known, urgency).await? {
            Pass::Done((outcome, auth)) => return Ok(Guarded::Done(outcome, auth)),
            Pass::Stopped(stop) => return Ok(Guarded::Stopped(stop)),
            Pass::Again(why) => last = Some(why),
        }
    }
    Err(last.unwrap_or(RefreshError::Transient {
        reason: TransientReason::Stopping,
    }))
}

/// One pass: locks -> recovery -> re-read -> checks -> reserve and check again -> the
/// coordinator's last check -> send -> persist.
async fn pass<C: Coordinator + ?Sized>(
    coordinator: &C,
    inner: &Arc<Inner>,
    known: &Known,
    urgency: Urgency,
) -> Result<Pass<C::Stop>, RefreshError> {
    let rotation = match coordinator.lock(inner, urgency).await? {
        Locked::Held(rotation) => *rotation,
        Locked::Busy(cached) => return Ok(Pass::Done((RefreshOutcome::NotNeeded, cached))),
        Locked::Stopped(stop) => return Ok(Pass::Stopped(stop)),
    };
    // Under the refresh lock, after the recovery: tokens this process could not write before.
    if let Some(saved) = save_unsaved(inner).await? {
        return Ok(Pass::Done((RefreshOutcome::Refreshed, saved)));
    }
    let snap = rotation.snapshot().clone();
    let disk = check_disk(inner, known, &snap)?;
    let generation = snap.generation();
    let moved_on = known.generation() != Some(generation);
    let due = disk.is_due(SystemTime::now(), &inner.config);
    if let Some(outcome) = without_request(urgency, disk.mode(), moved_on, due) {
        return Ok(Pass::Done((outcome, Arc::new(disk))));
    }
    if let Some(remembered) = inner.remembered_failure(generation) {
        return Err(remembered);
    }
    // What the journal knows of this very token decides whether it may be sent.
    let reuse_wait = coordinator.reuse_wait(inner);
    if let Some(verdict) = Verdict::of(rotation.fate(), reuse_wait, SystemTime::now()) {
        drop(rotation);
        return heed(coordinator, inner, known, &snap, verdict).await;
    }
    let Some(refresh_token) = snap
        .auth()
        .and_then(|d| d.tokens.as_ref())
        .map(|t| t.refresh_token.clone())
    else {
        return Err(signed_out(inner, known));
    };
    // Everything the save needs is reserved, and checked again under the write locks, before
    // the token is redeemed; if that fails, nothing is sent.
    let reserved = match coordinator.reserve(rotation, &refresh_token).await {
        Ok(Reserve::Reserved(reserved)) => *reserved,
        Ok(Reserve::Stopped(stop)) => return Ok(Pass::Stopped(stop)),
        // auth.json changed between the read and the reservation: look again.
        Err(e @ RefreshError::Store(StoreError::Conflict { .. })) => return Ok(Pass::Again(e)),
        // Another refresh (whose refresh lock is another file) has this token: wait for
        // its rotation.
        Err(e @ RefreshError::Store(StoreError::AlreadyRedeemed { .. })) => {
            // Its request may fail without redeeming anything: if no rotation comes, look
            // again from the lock (the journal then says what became of the token).
            tracing::warn!(error = %e, "waiting for the rotation of another refresh");
            return Ok(
                match coordinator
                    .wait_for_rotation(inner, known, &snap, Some(SystemTime::now()))
                    .await?
                {
                    Some(found) => Pass::Done(found),
                    None => Pass::Again(e),
                },
            );
        }
        Err(e) => return Err(e),
    };
    send(
        coordinator,
        inner,
        known,
        reserved,
        &snap,
        &disk,
        refresh_token,
    )
    .await
}

/// Acts on the journal's `verdict` on the token of `snap`, every lock released: the refusal,
/// or the wait for the rotation.
async fn heed<C: Coordinator + ?Sized, S>(
    coordinator: &C,
    inner: &Inner,
    known: &Known,
    snap: &Snapshot,
    verdict: Verdict,
) -> Result<Pass<S>, RefreshError> {
    match verdict {
        Verdict::Refused(reason) => {
            tracing::info!(code = %reason.code(), "another process was refused this refresh token; not sending it again");
            Err(inner.remember_failure(snap.generation(), RefreshError::Permanent { reason }))
        }
        Verdict::Reused(since) => {
            tracing::info!(code = %PermanentReason::Reused.code(), "another process was refused this refresh token; not sending it again");
            await_rotation(coordinator, inner, known, snap, since)
                .await
                .map(Pass::Done)
        }
        Verdict::Spent(since) => {
            // Redeemed already (its answer installed elsewhere, or lost): the endpoint would
            // refuse it. Wait for the rotation, as after a reuse refusal.
            tracing::info!("this refresh token was already redeemed; not sending it again");
            await_rotation(coordinator, inner, known, snap, since)
                .await
                .map(Pass::Done)
        }
        Verdict::Unanswered(since) => {
            // Sent before without a known outcome: the answer may still land. Wait for it (the
            // reuse wait from that send); only then is the token sent again, once.
            tracing::info!("this refresh token was sent without a known outcome; waiting for its rotation before sending it again");
            Ok(
                match coordinator
                    .wait_for_rotation(inner, known, snap, since)
                    .await?
                {
                    Some(found) => Pass::Done(found),
                    None => Pass::Again(RefreshError::Transient {
                        reason: TransientReason::Timeout,
                    }),
                },
            )
        }
    }
}

/// Sends `refresh_token` (of `snap`, credentials `disk`) once the coordinator's last check
/// allows it, and persists the answer through `reserved`; a refusal or a failure that may have
/// spent the token is journaled before the reservation goes.
async fn send<C: Coordinator + ?Sized, S>(
    coordinator: &C,
    inner: &Inner,
    known: &Known,
    reserved: Reserved,
    snap: &Snapshot,
    disk: &CodexAuth,
    refresh_token: Secret,
) -> Result<Pass<S>, RefreshError> {
    // From here until the answer is durable, a stopping process waits (see
    // `AuthManager::stop`); once it is stopping, nothing new is sent.
    let Some(_sending) = inner.begin_send() else {
        drop(reserved.abandon());
        return Err(RefreshError::Transient {
            reason: TransientReason::Stopping,
        });
    };
    // The last check before the bytes leave: what coordinates beyond this machine (the
    // fleet's lease and reservation) still allows it, and for how long.
    let within = match coordinator.before_send().await {
        Ok(within) => within,
        Err(e) => {
            drop(reserved.abandon());
            return Err(e);
        }
    };
    let generation = snap.generation();
    tracing::debug!(generation = %generation, "refreshing tokens (refresh lock held, write locks free)");
    let fingerprint = refresh_token.fingerprint();
    let outcome = |event, code: String| {
        let mut record = JournalRecord::new(event, generation);
        record.account = disk.account_id().map(str::to_owned);
        record.refresh = Some(fingerprint.clone());
        // Bounded, so that the journal's line limit never hides it.
        record.code = Some(code.chars().take(64).collect());
        record
    };
    match inner.client.refresh(&refresh_token, within).await {
        Ok(answer) => {
            let doc = snap.auth().cloned().unwrap_or_default();
            persist(coordinator, inner, known, reserved, doc, answer)
                .await
                .map(Pass::Done)
        }
        Err(RefreshError::Permanent { reason }) => {
            // Journaled before the reservation goes, so that no process that takes it for
            // unused sends the token again.
            drop(reserved.abandon_recorded(&outcome(JournalEvent::Refused, reason.code())));
            if reason == PermanentReason::Reused {
                return await_rotation(coordinator, inner, known, snap, Some(SystemTime::now()))
                    .await
                    .map(Pass::Done);
            }
            Err(inner.remember_failure(generation, RefreshError::Permanent { reason }))
        }
        Err(e) => {
            if may_be_spent(&e) {
                drop(reserved.abandon_recorded(&outcome(JournalEvent::Unanswered, e.to_string())));
            } else {
                drop(reserved.abandon());
            }
            Err(e)
        }
    }
}
