//! [`FleetCoordinator`]: the guarded refresh coordinated by a fleet's record in etcd, with
//! [`Local`] for this machine's durable copy. The fleet lock (a guard: dropping it frees it) is
//! taken on the first pass and held until the run is published; the fleet-wide refusal, the
//! record and another holder's reservation are read in the lock's own transaction; the token's
//! fleet-wide reservation comes before the local one, and is checked again right before the
//! send.

mod end;
mod publish;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use codex_store::{AuthDotJson, Rotation, Secret, Snapshot};

use super::coordinator::{Adopted, Coordinator, Locked, Reserve, Step};
use super::local::Local;
use super::wait::poll_for_rotation;
use super::{Ended, Urgency};
use crate::error::{RefreshError, TransientReason};
use crate::fleet::fence::FleetFence;
use crate::fleet::record::{FoundReservation, Refusal};
use crate::fleet::{Fleet, FleetLock, FleetRecord, Found, LockAttempt};
use crate::state::{Inner, Known};
use end::reservation_blocks;
pub(crate) use end::{FleetEnd, FleetStop, Upload, UploadRefused};

/// What the fleet coordinator was told of the step that runs it.
pub(crate) struct FleetPlan {
    /// The fleet.
    pub(crate) fleet: Arc<Fleet>,
    /// The record reconciled with auth.json: under the lock it must still be this one.
    pub(crate) record: FleetRecord,
    /// The longest request (the HTTP timeout).
    pub(crate) request: Duration,
    /// How long a reuse refusal waits for the rotation it means (the record's watch).
    pub(crate) reuse_wait: Duration,
    /// Another holder's reservation already waited for as long as this machine waits for any
    /// (its revision): no longer honored.
    pub(crate) overdue: Option<i64>,
}

/// What this holder holds, from the first pass to the publication.
#[derive(Default)]
struct Held {
    /// The fleet lock (freed when dropped).
    lock: Option<FleetLock>,
    /// The record read under it (in the lock's transaction), and etcd's revision at that read.
    current: Option<(FleetRecord, i64)>,
    /// Another holder's reservation read in the lock's transaction, if any: while the lock
    /// stands nobody else writes one, so none not seen then is there later.
    redeeming: Option<FoundReservation>,
    /// The fence over this holder's reservation of the token.
    fence: Option<Arc<FleetFence>>,
}

/// The coordination of a fleet (see the module).
pub(crate) struct FleetCoordinator {
    plan: FleetPlan,
    held: tokio::sync::Mutex<Held>,
    /// The answer's document, once there is one.
    answer: Mutex<Option<AuthDotJson>>,
    /// Told once the token is reserved fleet-wide.
    reserved: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

impl FleetCoordinator {
    /// A coordinator for one refresh of the fleet's login.
    /// A coordinator for one refresh of the fleet's login; `reserved` is told once the token
    /// is reserved fleet-wide (the request is about to go).
    pub(crate) fn new(plan: FleetPlan, reserved: tokio::sync::oneshot::Sender<()>) -> Self {
        FleetCoordinator {
            plan,
            held: tokio::sync::Mutex::default(),
            answer: Mutex::default(),
            reserved: Mutex::new(Some(reserved)),
        }
    }

    /// The fleet-wide steps before this machine's lock, in the fleet lock's one transaction
    /// ([`Fleet::try_lock`]): the lock, the fleet's refusal of its token (also when the lock is
    /// held), the record under the lock and another holder's reservation. `Some` to stop.
    async fn lock_fleet(&self, held: &mut Held) -> Option<FleetStop> {
        let fleet = &self.plan.fleet;
        let token = self.plan.record.refresh_fingerprint();
        let refuses = |refusal: &Refusal| Some(&refusal.refresh) == token.as_ref();
        let (lock, seen) = match fleet.try_lock().await {
            Ok(LockAttempt::Taken { lock, seen }) => (lock, seen),
            // A refusal of the token stops this machine whoever holds the lock.
            Ok(LockAttempt::Held {
                refusal: Some(refusal),
                ..
            }) if refuses(&refusal) => return Some(FleetStop::Refused(refusal)),
            // Another machine refreshes; its upload wakes this one.
            Ok(LockAttempt::Held { holder, .. }) => return Some(FleetStop::LockHeld(holder)),
            Err(e) => return Some(FleetStop::Failed(e)),
        };
        if let Some(refusal) = seen.refusal.filter(refuses) {
            // Nothing is sent: the lock is freed at once, before the stop is reported.
            drop(lock);
            fleet.settle().await;
            return Some(FleetStop::Refused(refusal));
        }
        // Under the lock: the record must still be what was reconciled.
        match seen.record {
            Found::Record(current)
                if current.revision == self.plan.record.revision
                    && current.refresh_fingerprint().is_some() =>
            {
                held.lock = Some(lock);
                held.current = Some((*current, seen.revision));
                held.redeeming = seen.redeeming;
                None
            }
            // The lock is freed as it drops.
            _ => Some(FleetStop::RecordMoved),
        }
    }

    /// Reserve before redeem, fleet-wide. A previous holder's reservation of this very token
    /// lives on a lease of its own, for as long as its request may take plus the reuse wait:
    /// while it exists, the token may be in flight or its answer on its way to the record, so
    /// this holder sends nothing. No clock of that machine, and none of this one's settings,
    /// says how long. The previous holder's reservation is the one read in the lock's
    /// transaction (read again only when it would stop this holder); the reservation itself is
    /// two round trips ([`Fleet::reserve_redemption`]). `Some` to stop.
    async fn reserve_fleet(&self, held: &mut Held) -> Option<FleetStop> {
        let fleet = &self.plan.fleet;
        let (Some(lock), Some((current, _))) = (held.lock.as_ref(), held.current.as_ref()) else {
            return Some(FleetStop::RecordMoved);
        };
        let fp = current.refresh_fingerprint().unwrap_or_default();
        let blocks = |found: &FoundReservation| {
            reservation_blocks(found, &fp, lock.revision, self.plan.overdue)
        };
        // The reservation read in the lock's transaction: none was made since (only this
        // holder could), but one seen then may have gone with its lease. One that would stop
        // this holder is read again (a round trip on that path only), so that only a
        // reservation that still lives is reported and waited for.
        if held.redeeming.as_ref().is_some_and(blocks) {
            match fleet.redeeming().await {
                Ok(Some(found)) if blocks(&found) => {
                    return Some(FleetStop::FoundReservation(found));
                }
                Ok(_) => {}
                Err(e) => return Some(FleetStop::Failed(e)),
            }
        }
        let request = self.plan.request;
        let reservation = match fleet
            .reserve_redemption(
                &fp,
                lock.revision,
                current.revision,
                request,
                self.plan.reuse_wait,
            )
            .await
        {
            Ok(Some(reservation)) => reservation,
            Ok(None) => return Some(FleetStop::LockLost),
            Err(e) => return Some(FleetStop::Failed(e)),
        };
        // Losing the lease aborts the holder before it sends anything: immediately before the
        // request, the lease must be known alive for a third of its time to live (the
        // keep-alive renews it every third), the lock and the reservation must stand, and the
        // send deadline must not have passed.
        held.fence = Some(Arc::new(FleetFence {
            fleet: Arc::clone(fleet),
            lock: lock.liveness(),
            lock_revision: lock.revision,
            reservation,
            margin: (fleet.config().lock_ttl / 3).min(request),
            passed: Default::default(),
        }));
        if let Some(reserved) = self
            .reserved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            // Nobody listening any more is fine: it is a report.
            let _ = reserved.send(());
        }
        None
    }
}

impl Coordinator for FleetCoordinator {
    type Stop = FleetStop;
    type Report = FleetEnd;

    fn lock<'a>(
        &'a self,
        inner: &'a Inner,
        urgency: Urgency,
    ) -> Step<'a, Result<Locked<FleetStop>, RefreshError>> {
        Box::pin(async move {
            {
                let mut held = self.held.lock().await;
                if held.lock.is_none() {
                    if let Some(stop) = self.lock_fleet(&mut held).await {
                        return Ok(Locked::Stopped(stop));
                    }
                }
            }
            Local::take_lock(inner, urgency).await
        })
    }

    /// None here: the fleet's wait is the record's watch, when the run is published.
    fn reuse_wait(&self, _inner: &Inner) -> Duration {
        Duration::ZERO
    }

    fn reserve<'a>(
        &'a self,
        rotation: Rotation,
        token: &'a Secret,
    ) -> Step<'a, Result<Reserve<FleetStop>, RefreshError>> {
        Box::pin(async move {
            {
                let mut held = self.held.lock().await;
                // The token this machine would send must be the record's, which the fleet
                // reserves: a local process may have rotated it since the reconcile (the next
                // step uploads that rotation instead).
                let record = held
                    .current
                    .as_ref()
                    .and_then(|(current, _)| current.refresh_fingerprint());
                if record.as_deref() != Some(token.fingerprint().as_str()) {
                    drop(rotation);
                    return Ok(Reserve::Stopped(FleetStop::RecordMoved));
                }
                if held.fence.is_none() {
                    if let Some(stop) = self.reserve_fleet(&mut held).await {
                        drop(rotation);
                        return Ok(Reserve::Stopped(stop));
                    }
                }
            }
            Local::reserve_here(rotation, token).await
        })
    }

    fn before_send(&self) -> Step<'_, Result<Option<Duration>, RefreshError>> {
        Box::pin(async move {
            let fence = self.held.lock().await.fence.clone();
            match fence {
                Some(fence) => fence.check().await.map(Some),
                None => Err(RefreshError::Transient {
                    reason: TransientReason::Fenced("no reservation of the fleet's token".into()),
                }),
            }
        })
    }

    fn answered(&self, document: &AuthDotJson) {
        *self.answer.lock().unwrap_or_else(|p| p.into_inner()) = Some(document.clone());
    }

    fn wait_for_rotation<'a>(
        &'a self,
        inner: &'a Inner,
        known: &'a Known,
        refused: &'a Snapshot,
        since: Option<SystemTime>,
    ) -> Step<'a, Result<Option<Adopted>, RefreshError>> {
        Box::pin(poll_for_rotation(
            inner,
            known,
            refused,
            since,
            Duration::ZERO,
        ))
    }

    fn finish<'a>(
        &'a self,
        inner: &'a Inner,
        result: Result<Ended<FleetStop>, RefreshError>,
    ) -> Step<'a, FleetEnd> {
        Box::pin(self.publish(inner, result))
    }
}
