//! The fleet coordinator's publication of a run: the reservation released when no request
//! went, the answer uploaded (the installed one from auth.json, or one this machine did not
//! install), a refusal remembered for the fleet, the record watched after a reuse refusal.

use std::sync::Arc;

use codex_store::AuthDotJson;

use super::super::Ended;
use super::{FleetCoordinator, FleetEnd, FleetStop, Upload, UploadRefused};
use crate::error::{PermanentReason, RefreshError};
use crate::fleet::fence::FleetFence;
use crate::fleet::record::Reservation;
use crate::fleet::{FleetLock, FleetRecord, Put, RotationKind, RotationMeta};
use crate::outcome::RefreshOutcome;
use crate::state::Inner;

impl FleetCoordinator {
    /// Publishes the run's `result` with what this holder held: the reservation is released
    /// if no request went; an answer not installed here goes to the record; an installed one
    /// is uploaded from auth.json; a refusal is remembered for the fleet.
    pub(super) async fn publish(
        &self,
        inner: &Inner,
        result: Result<Ended<FleetStop>, RefreshError>,
    ) -> FleetEnd {
        let held = std::mem::take(&mut *self.held.lock().await);
        // Once the request is over the fence is this holder's alone again, and so is the
        // reservation. If no check ever let a request go, nothing was sent: the reservation is
        // not needed, and must not hold the others back.
        let (passed, mut reservation) = match held.fence {
            Some(fence) => (
                fence.passed(),
                Arc::try_unwrap(fence)
                    .ok()
                    .map(FleetFence::into_reservation),
            ),
            None => (false, None),
        };
        if !passed {
            if let Some(reservation) = reservation.take() {
                self.plan.fleet.release_reservation(reservation).await;
            }
        }
        let result = match result {
            Ok(Ended::Stopped(stop)) => return FleetEnd::Stopped(stop),
            Ok(Ended::Done(outcome)) => Ok(outcome),
            Err(e) => Err(e),
        };
        let (Some(lock), Some((current, read_revision))) = (held.lock, held.current) else {
            // Ended before the fleet lock (this process's own checks).
            return FleetEnd::Local(result);
        };
        // An answer this machine did not install (a sign-out or another account here during
        // the request) is still the fleet's only live token: it goes to the record.
        let answer = self.answer.lock().unwrap_or_else(|p| p.into_inner()).take();
        let installed = matches!(result, Ok(RefreshOutcome::Refreshed));
        if let (false, Some(answer)) = (installed, answer) {
            return self
                .upload_answer(&lock, &current, answer, reservation)
                .await;
        }
        match result {
            Ok(RefreshOutcome::Refreshed) => {
                self.upload_installed(inner, &lock, &current, reservation)
                    .await
            }
            Err(RefreshError::Permanent {
                reason: PermanentReason::Reused,
            }) if matches!(
                self.plan
                    .fleet
                    .wait_change(read_revision, self.plan.reuse_wait)
                    .await,
                Ok(true)
            ) =>
            {
                // Another machine rotated (a local process's upload): adopt it.
                FleetEnd::Rotated
            }
            Err(RefreshError::Permanent { reason }) => {
                if let Some(fp) = current.refresh_fingerprint() {
                    if let Err(e) = self.plan.fleet.remember_refusal(&fp, &reason.code()).await {
                        tracing::warn!(error = %e, "could not record the refusal in the fleet");
                    }
                }
                FleetEnd::Refused(reason)
            }
            other => FleetEnd::Local(other),
        }
    }

    /// Uploads the tokens this holder installed in auth.json, over `current`.
    async fn upload_installed(
        &self,
        inner: &Inner,
        lock: &FleetLock,
        current: &FleetRecord,
        reservation: Option<Reservation>,
    ) -> FleetEnd {
        let fleet = &self.plan.fleet;
        let Some(auth) = inner.cached() else {
            return FleetEnd::Unreadable;
        };
        let snapshot = inner.store.load();
        let doc = snapshot.as_ref().ok().and_then(|s| s.auth().cloned());
        let local = snapshot
            .map(|s| s.generation())
            .unwrap_or(codex_store::Generation::Absent);
        let Some(doc) = doc else {
            return FleetEnd::Unreadable;
        };
        let meta = RotationMeta::now(
            fleet,
            RotationKind::Refreshed,
            &doc,
            current.refresh_fingerprint(),
        );
        let upload = match self.put(lock, current, &doc, &meta).await {
            Ok(Put::Written { revision }) => {
                // The upload deleted the reservation's key; its lease goes too.
                if let Some(reservation) = reservation {
                    fleet.release_reservation(reservation).await;
                }
                Upload::Written { revision, local }
            }
            // The record moved on (a local rotation elsewhere, a new sign-in): the next step
            // reconciles; the tokens stay durable in this machine's auth.json.
            Ok(Put::Moved { .. }) => {
                tracing::warn!("the fleet record changed during the refresh; reconciling");
                Upload::Moved
            }
            // etcd unreachable: the tokens are durable here; the upload is retried with
            // backoff (the next step finds auth.json newer than the record).
            Err(e) => {
                tracing::warn!(error = %e, "the new tokens could not be uploaded yet; they are kept in auth.json");
                Upload::Failed
            }
        };
        FleetEnd::Refreshed { auth, upload }
    }

    /// Uploads `answer`, a refresh's answer this machine did not install (auth.json here was
    /// signed out or switched to another account during the request), over `current`.
    async fn upload_answer(
        &self,
        lock: &FleetLock,
        current: &FleetRecord,
        answer: AuthDotJson,
        reservation: Option<Reservation>,
    ) -> FleetEnd {
        let meta = RotationMeta::now(
            &self.plan.fleet,
            RotationKind::Refreshed,
            &answer,
            current.refresh_fingerprint(),
        );
        let why = match self.put(lock, current, &answer, &meta).await {
            Ok(Put::Written { revision }) => {
                if let Some(reservation) = reservation {
                    self.plan.fleet.release_reservation(reservation).await;
                }
                tracing::warn!(revision, "auth.json here changed during the refresh; the new tokens went to the fleet only");
                return FleetEnd::AnswerUploaded {
                    revision,
                    refresh: meta.refresh,
                };
            }
            Ok(Put::Moved { .. }) => UploadRefused::Moved,
            Err(e) => UploadRefused::Failed(e),
        };
        FleetEnd::AnswerNotUploaded {
            answer: Box::new(answer),
            why,
        }
    }

    /// The fenced write of `doc` over `current`: only over the revision this holder read, and
    /// only while it holds the lock (one transaction, the first etcd call after the answer is
    /// durable here); if the lease was lost meanwhile but the record is still the one read (the
    /// failed transaction says what it holds), the revision alone still fences it (a second
    /// one). A record that moved on is not written again: that write would compare the same
    /// revision, and fail.
    async fn put(
        &self,
        lock: &FleetLock,
        current: &FleetRecord,
        doc: &AuthDotJson,
        meta: &RotationMeta,
    ) -> Result<Put, crate::fleet::FleetError> {
        let fleet = &self.plan.fleet;
        let put = fleet
            .put_fenced(current.revision, Some(lock.revision), doc, meta)
            .await;
        match put {
            Ok(Put::Moved { current: Some(now) }) if now.revision == current.revision => {
                fleet.put_if(current.revision, doc, meta).await
            }
            put => put,
        }
    }
}
