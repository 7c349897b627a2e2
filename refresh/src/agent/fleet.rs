//! The agent with a fleet: the record in etcd is the login of every machine. Each step
//! reconciles the record with the local auth.json (mirror it down, or upload a rotation a local
//! process made), and when the tokens are due, refreshes for the whole fleet under the fleet's
//! lease-backed lock, through the local guarded protocol (reservation, durable save, journal),
//! then uploads the new tokens with a write fenced by the revision it read.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use codex_store::{AgentClaim, AgentState, AuthDotJson, Expect, Generation, Snapshot, StoreError};

use super::event::{rfc3339, AgentEvent, AgentEventKind};
use super::fleet_sync::{self, Link, Reconcile, Synced, Upload};
use super::{Agent, Plan};
use crate::error::{PermanentReason, RefreshError, TransientReason};
use crate::fleet::{Fleet, FleetError, FleetRecord, RotationMeta};
use crate::outcome::RefreshOutcome;
use crate::protocol::Urgency;

/// How long a machine that found the fleet lock held waits before it looks again (a change of
/// the record wakes it sooner).
const LOCK_BUSY_RETRY: Duration = Duration::from_secs(5);

/// The fleet side of an agent.
pub(crate) struct FleetSync {
    pub(crate) fleet: Arc<Fleet>,
    /// What was in sync last (loaded from `auth.json.fleet` on the first step): what tells a
    /// local change from a remote one, across restarts.
    synced: Option<Synced>,
    loaded: bool,
    /// etcd's revision at the last read of the record: the watch starts after it.
    pub(crate) seen: i64,
}

impl FleetSync {
    pub(crate) fn new(fleet: Fleet) -> Self {
        FleetSync {
            fleet: Arc::new(fleet),
            synced: None,
            loaded: false,
            seen: 0,
        }
    }
}

impl Agent {
    fn fleet(&self) -> Arc<Fleet> {
        Arc::clone(&self.fleet.as_ref().expect("fleet mode").fleet)
    }

    fn fleet_failed(&mut self, error: &FleetError, on_event: &mut impl FnMut(&AgentEvent)) -> Plan {
        let delay = self.backoff.next_delay();
        let at = SystemTime::now() + delay;
        on_event(&AgentEvent::now(AgentEventKind::Failed {
            class: "fleet".into(),
            message: error.to_string(),
            next_attempt: Some(rfc3339(at)),
        }));
        Plan::At(at, AgentState::Retrying)
    }

    /// One step with a fleet.
    pub(super) async fn step_fleet(
        &mut self,
        claim: &AgentClaim,
        on_event: &mut impl FnMut(&AgentEvent),
    ) -> Plan {
        let fleet = self.fleet();
        let store = self.manager.store().clone();
        let state_path = fleet_sync::state_path(&store);
        {
            let sync = self.fleet.as_mut().expect("fleet mode");
            if !sync.loaded {
                sync.synced = fleet_sync::load(&state_path, &fleet.config().prefix);
                sync.loaded = true;
            }
        }
        let (record, revision) = match fleet.read_at().await {
            Ok(read) => read,
            Err(e) => return self.fleet_failed(&e, on_event),
        };
        // The watch starts after this read, whatever it found: never replaying old events.
        self.fleet.as_mut().expect("fleet mode").seen = revision;
        let record = match record {
            Ok(Some(record)) => record,
            Ok(None) => return self.fleet_signed_out(&store, revision, on_event),
            Err(e) => return self.fleet_failed(&e, on_event),
        };
        let local = match store.load() {
            Ok(local) => local,
            Err(e) => return self.failed(&RefreshError::from(e), on_event),
        };
        if let Some(plan) = self.reconcile(&fleet, &record, &local, on_event).await {
            return plan;
        }
        // Local and fleet agree: the usual schedule, on the fleet's tokens.
        let plan = self.step_local_schedule(on_event);
        let Some(due) = plan else {
            return self
                .refresh_for_fleet(claim, &fleet, record, on_event)
                .await;
        };
        due
    }

    /// The fleet holds no login (etcd's revision `revision`). If this machine had the fleet's
    /// login and nobody changed it here since, the fleet was signed out (`logout --fleet`): so is
    /// this machine. Unless etcd itself went back before that sync (restored from a snapshot
    /// older than the login, or its data lost): then auth.json is kept and it is reported.
    fn fleet_signed_out(
        &mut self,
        store: &codex_store::Store,
        revision: i64,
        on_event: &mut impl FnMut(&AgentEvent),
    ) -> Plan {
        let synced = self.fleet.as_ref().and_then(|s| s.synced.clone());
        if let (Some(synced), Ok(local)) = (synced, store.load()) {
            if local.auth().is_some() && synced.revision > revision {
                let message = format!(
                    "the fleet holds no login, and etcd (revision {revision}) is older than what \
                     this machine last synced (revision {}, refresh {}): etcd was restored from a \
                     backup, or lost its data. auth.json is kept; seed the fleet from the machine \
                     that holds the live login (`codex-store fleet seed --fleet ENDPOINTS`)",
                    synced.revision,
                    synced.refresh.as_deref().unwrap_or("none")
                );
                if self.idle != Some("fleet_went_back") {
                    tracing::warn!("{message}");
                }
                return self.go_idle("fleet_went_back", &message, on_event);
            }
            if local.auth().is_some() && synced.local_generation == local.generation().to_string() {
                match store
                    .compare_and_swap(Expect::Generation(local.generation()), None)
                    .or_else(|e| e.accept_not_durable())
                {
                    Ok(_) => {
                        let sync = self.fleet.as_mut().expect("fleet mode");
                        sync.synced = None;
                        let _ = std::fs::remove_file(fleet_sync::state_path(store));
                        return self.go_idle(
                            "fleet_signed_out",
                            "the fleet's login was removed (logout --fleet): this machine is signed out too; seed the fleet again to resume",
                            on_event,
                        );
                    }
                    Err(e) => return self.failed(&RefreshError::from(e), on_event),
                }
            }
        }
        self.go_idle(
            "fleet_empty",
            "the fleet holds no login: seed it from a signed-in machine with `codex-store fleet seed --fleet ENDPOINTS`",
            on_event,
        )
    }

    /// Remembers that the record at `revision` and auth.json at `local` are in sync, the fleet's
    /// login having moved on from the token in sync before, if another ([`Link::Superseded`]).
    fn remember_sync(&mut self, revision: i64, local: Generation) {
        let store = self.manager.store().clone();
        let refresh = fleet_sync::refresh_at(&store, &local);
        let sync = self.fleet.as_mut().expect("fleet mode");
        let next = Synced::after(
            sync.synced.as_ref(),
            &sync.fleet.config().prefix,
            revision,
            &local,
            refresh,
            Link::Superseded,
        );
        fleet_sync::remember(&mut sync.synced, &fleet_sync::state_path(&store), next);
    }

    /// Mirrors the record into auth.json, or uploads a rotation made locally, by causality (see
    /// [`fleet_sync::decide`]): only a refresh token that descends from the record's is
    /// uploaded, the record is never written over a newer token, and what no known rotation
    /// relates is kept on both sides and reported. `None` when they already agree.
    async fn reconcile(
        &mut self,
        fleet: &Fleet,
        record: &FleetRecord,
        local: &Snapshot,
        on_event: &mut impl FnMut(&AgentEvent),
    ) -> Option<Plan> {
        let store = self.manager.store().clone();
        let state_path = fleet_sync::state_path(&store);
        let synced = self.fleet.as_ref().and_then(|s| s.synced.clone());
        let lineage = fleet_sync::Lineage::gather(&store, synced.as_ref());
        let (keep_copy, link, finding) =
            match fleet_sync::decide(record, local, synced.as_ref(), &lineage) {
                Reconcile::InSync => {
                    self.remember_sync(record.revision, local.generation());
                    return None;
                }
                Reconcile::Upload(why) => {
                    let doc = local.auth().cloned().unwrap_or_default();
                    let meta = RotationMeta::now(fleet, why.kind(), &doc);
                    return Some(match fleet.put_if(record.revision, &doc, &meta).await {
                        Ok(Ok(revision)) => {
                            if let Upload::Repairs(finding) = &why {
                                tracing::warn!("{}", finding.uploaded());
                            }
                            if why == Upload::NewHere {
                                // Nothing known leads to it from the record's token: remembered
                                // as unverified, no succession.
                                let sync = self.fleet.as_mut().expect("fleet mode");
                                let next = Synced::after(
                                    sync.synced.as_ref(),
                                    &sync.fleet.config().prefix,
                                    revision,
                                    &local.generation(),
                                    meta.refresh.clone(),
                                    Link::Unverified,
                                );
                                fleet_sync::remember(&mut sync.synced, &state_path, next);
                            } else {
                                self.remember_sync(revision, local.generation());
                            }
                            on_event(&AgentEvent::now(AgentEventKind::Uploaded {
                                revision,
                                refresh: meta.refresh.clone(),
                            }));
                            Plan::Again
                        }
                        // The record moved meanwhile: look again.
                        Ok(Err(_)) => Plan::Again,
                        Err(e) => self.fleet_failed(&e, on_event),
                    });
                }
                Reconcile::KeepLocal(reason) => return Some(self.go_idle(
                    reason,
                    "this machine's auth.json holds another login than the fleet's (another account, or signed out here): it is left alone; `codex-store fleet seed --force` makes it the fleet's, `codex-store logout` lets the fleet's in",
                    on_event,
                )),
                Reconcile::Conflict(finding) => {
                    // Nothing can decide safely: both kept, reported once, looked at again on
                    // any change of either.
                    let (reason, message) = (finding.reason(), finding.conflict());
                    if self.idle != Some(reason) {
                        tracing::warn!("{message}");
                    }
                    return Some(self.go_idle(reason, &message, on_event));
                }
                Reconcile::Mirror => (false, Link::Superseded, None),
                Reconcile::MirrorKeepingCopy(finding) => (true, Link::Superseded, finding),
                Reconcile::MirrorMovedOn => {
                    // Another machine's rotation; or a token another machine uploaded without a
                    // known rotation to it (or a rotation this read does not describe): then
                    // auth.json is kept beside it.
                    let verified = match fleet.etcd.get(&fleet.key("rotation")).await {
                        Ok((kv, _)) => kv
                            .and_then(|kv| serde_json::from_slice::<RotationMeta>(&kv.value).ok())
                            .is_some_and(|meta| {
                                meta.kind != fleet_sync::UPLOADED_UNVERIFIED
                                    && meta.refresh == record.refresh_fingerprint()
                            }),
                        Err(e) => return Some(self.fleet_failed(&e, on_event)),
                    };
                    if verified {
                        (false, Link::Superseded, None)
                    } else {
                        (true, Link::Unverified, None)
                    }
                }
            };
        if keep_copy {
            // Nothing says auth.json is newer: the fleet's login wins, and what auth.json held is
            // kept beside it, never lost.
            let kept = local
                .auth()
                .and_then(|doc| fleet_sync::keep_copy(&store, doc));
            if local.auth().is_some() && kept.is_none() {
                return Some(self.fleet_failed(
                    &FleetError::Setting {
                        message: format!(
                            "auth.json differs from the fleet's login and a copy of it could not be kept beside it; it was left alone: check that {} is writable",
                            store.dir().display()
                        ),
                    },
                    on_event,
                ));
            }
            if let Some(path) = kept {
                match &finding {
                    Some(finding) => tracing::warn!("{}", finding.mirrored(&path)),
                    None => {
                        tracing::warn!(copy = %path.display(), "auth.json held other tokens than the fleet; kept a copy before writing the fleet's login")
                    }
                }
            }
        }
        Some(
            match store_mirror(&self.manager, local.generation(), &record.document) {
                Ok(generation) => {
                    if link == Link::Unverified {
                        let sync = self.fleet.as_mut().expect("fleet mode");
                        let next = Synced::after(
                            sync.synced.as_ref(),
                            &sync.fleet.config().prefix,
                            record.revision,
                            &generation,
                            record.refresh_fingerprint(),
                            Link::Unverified,
                        );
                        fleet_sync::remember(&mut sync.synced, &state_path, next);
                    } else {
                        self.remember_sync(record.revision, generation);
                    }
                    on_event(&AgentEvent::now(AgentEventKind::Mirrored {
                        revision: record.revision,
                        refresh: record.refresh_fingerprint(),
                    }));
                    Plan::Again
                }
                Err(StoreError::Conflict { .. }) => Plan::Again,
                Err(e) => self.failed(&RefreshError::from(e), on_event),
            },
        )
    }

    /// Refreshes for the whole fleet, under its lock.
    async fn refresh_for_fleet(
        &mut self,
        claim: &AgentClaim,
        fleet: &Arc<Fleet>,
        record: FleetRecord,
        on_event: &mut impl FnMut(&AgentEvent),
    ) -> Plan {
        match fleet.refusal().await {
            Ok(Some(refusal))
                if Some(&refusal.refresh) == record.refresh_fingerprint().as_ref() =>
            {
                self.refused = Some(
                    self.manager
                        .cached()
                        .map_or(Generation::Absent, |a| a.generation()),
                );
                on_event(&AgentEvent::now(AgentEventKind::Failed {
                    class: "sign_in_required".into(),
                    message: format!(
                        "the token endpoint refused the fleet's refresh token ({}, seen by {}); \
                         no machine sends it again: sign in on one machine and seed the fleet \
                         (`codex-store fleet seed --force`)",
                        refusal.code, refusal.machine
                    ),
                    next_attempt: None,
                }));
                return Plan::UntilChange(AgentState::Refused);
            }
            Ok(_) => {}
            Err(e) => return self.fleet_failed(&e, on_event),
        }
        let lock = match fleet.try_lock().await {
            Ok(Some(lock)) => lock,
            Ok(None) => {
                // Another machine refreshes; its upload wakes this one.
                return Plan::At(SystemTime::now() + LOCK_BUSY_RETRY, AgentState::Waiting);
            }
            Err(e) => return self.fleet_failed(&e, on_event),
        };
        // Under the lock: the record must still be what was reconciled.
        let (current, read_revision) = match fleet.read_at().await {
            Ok((Ok(Some(current)), revision)) if current.revision == record.revision => {
                (current, revision)
            }
            Ok(_) => {
                lock.release(fleet).await;
                return Plan::Again;
            }
            Err(e) => {
                lock.release(fleet).await;
                return self.fleet_failed(&e, on_event);
            }
        };
        // Reserve before redeem, fleet-wide. A previous holder's reservation of this very token
        // lives on a lease of its own, for as long as its request may take plus the reuse wait:
        // while it exists, the token may be in flight or its answer on its way to the record,
        // so this holder sends nothing and looks again when the record changes or a little
        // later. No clock of that machine, and none of this one's settings, says how long.
        let Some(fp) = current.refresh_fingerprint() else {
            lock.release(fleet).await;
            return Plan::Again;
        };
        match fleet.redeeming().await {
            Ok(Some(mark)) if mark.refresh == fp && mark.lock != lock.revision => {
                lock.release(fleet).await;
                tracing::info!(machine = %mark.machine, "a previous lock holder's reservation of this refresh token still lives; waiting for its upload or its expiry");
                return Plan::At(SystemTime::now() + LOCK_BUSY_RETRY, AgentState::Waiting);
            }
            Ok(_) => {}
            Err(e) => {
                lock.release(fleet).await;
                return self.fleet_failed(&e, on_event);
            }
        }
        let request = self.manager.config().http_timeout;
        let reservation = match fleet
            .reserve_redemption(&fp, lock.revision, request, self.reuse_wait)
            .await
        {
            Ok(Some(reservation)) => Arc::new(reservation),
            Ok(None) => {
                lock.release(fleet).await;
                return Plan::At(SystemTime::now() + LOCK_BUSY_RETRY, AgentState::Waiting);
            }
            Err(e) => {
                lock.release(fleet).await;
                return self.fleet_failed(&e, on_event);
            }
        };
        // Losing the lease aborts the holder before it sends anything: immediately before the
        // request, the lease must be known alive for a third of its time to live (the keep-alive
        // renews it every third), the lock and the reservation must stand, and the send deadline
        // must not have passed.
        let margin = (fleet.config().lock_ttl / 3).min(request);
        let fence = crate::fleet::fence::FleetFence {
            fleet: Arc::clone(fleet),
            lock: lock.liveness(),
            lock_revision: lock.revision,
            reservation: Arc::clone(&reservation),
            margin,
        };
        self.publish(claim, AgentState::Refreshing, None);
        let result = self
            .manager
            .run_fenced(Urgency::IfDueUnlessBusy, Some(Arc::new(fence)))
            .await;
        // Nothing was sent: the reservation is not needed, and must not hold the others back.
        let unsent = matches!(
            result,
            Ok(RefreshOutcome::NotNeeded | RefreshOutcome::AdoptedFromDisk)
                | Err(RefreshError::Transient {
                    reason: TransientReason::Fenced(_) | TransientReason::Stopping,
                })
        );
        // Once the request is over the fence is gone, and the reservation is this holder's
        // alone again.
        let mut reservation = Arc::try_unwrap(reservation).ok();
        if unsent {
            if let Some(reservation) = reservation.take() {
                fleet.release_reservation(reservation).await;
            }
        }
        let plan = match result {
            Ok(RefreshOutcome::Refreshed) => {
                let Some(auth) = self.manager.cached() else {
                    lock.release(fleet).await;
                    return Plan::Again;
                };
                let snapshot = self.manager.store().load();
                let doc = snapshot.as_ref().ok().and_then(|s| s.auth().cloned());
                let local_generation = snapshot
                    .map(|s| s.generation())
                    .unwrap_or(Generation::Absent);
                let Some(doc) = doc else {
                    lock.release(fleet).await;
                    return Plan::Again;
                };
                let meta = RotationMeta::now(fleet, "refreshed", &doc);
                // Fenced: only over the revision this holder read, and only while it holds the
                // lock; if the lease was lost meanwhile, the revision alone still fences it.
                let mut put = fleet
                    .put_fenced(current.revision, Some(lock.revision), &doc, &meta)
                    .await;
                if matches!(put, Ok(Err(_))) {
                    put = fleet.put_if(current.revision, &doc, &meta).await;
                }
                let mut retry_upload = None;
                match put {
                    Ok(Ok(revision)) => {
                        self.remember_sync(revision, local_generation);
                        // The upload deleted the reservation's key; its lease goes too.
                        if let Some(reservation) = reservation.take() {
                            fleet.release_reservation(reservation).await;
                        }
                    }
                    // The record moved on (a local rotation elsewhere, a new sign-in): the next
                    // step reconciles; the tokens stay durable in this machine's auth.json.
                    Ok(Err(_)) => {
                        tracing::warn!("the fleet record changed during the refresh; reconciling");
                        retry_upload = Some(Duration::ZERO);
                    }
                    // etcd unreachable: the tokens are durable here; the upload is retried with
                    // backoff (the next step finds auth.json newer than the record).
                    Err(e) => {
                        tracing::warn!(error = %e, "the new tokens could not be uploaded yet; they are kept in auth.json");
                        retry_upload = Some(self.backoff.next_delay());
                    }
                }
                if retry_upload.is_none() {
                    self.backoff.reset();
                }
                let next = self.next_due(&auth);
                self.not_before = Some((auth.generation(), next));
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
            // A local process holds the refresh lock: look again soon (its write wakes us).
            Ok(RefreshOutcome::NotNeeded) if self.still_due() => {
                Plan::At(SystemTime::now() + super::BUSY_RETRY, AgentState::Waiting)
            }
            Ok(_) => Plan::Again,
            Err(RefreshError::Permanent {
                reason: PermanentReason::Reused,
            }) if self.await_fleet_rotation(fleet, read_revision).await => {
                // Another machine rotated (a local process's upload): adopt it.
                Plan::Again
            }
            Err(RefreshError::Permanent { reason }) => {
                if let Some(fp) = current.refresh_fingerprint() {
                    if let Err(e) = fleet.remember_refusal(&fp, &reason.code()).await {
                        tracing::warn!(error = %e, "could not record the refusal in the fleet");
                    }
                }
                self.failed(&RefreshError::Permanent { reason }, on_event)
            }
            Err(RefreshError::AccountChanged { .. } | RefreshError::LoggedOut { .. }) => {
                Plan::Again
            }
            Err(e) => self.failed(&e, on_event),
        };
        lock.release(fleet).await;
        plan
    }
}

impl Agent {
    /// After `refresh_token_reused`: whether the fleet record changes within the reuse wait
    /// (the rotation the refusal means, uploaded by another machine).
    async fn await_fleet_rotation(&self, fleet: &Fleet, revision: i64) -> bool {
        matches!(fleet.wait_change(revision, self.reuse_wait).await, Ok(true))
    }
}

/// Writes the fleet's document into the local store if auth.json is still at `expected`.
fn store_mirror(
    manager: &crate::manager::AuthManager,
    expected: Generation,
    doc: &AuthDotJson,
) -> Result<Generation, StoreError> {
    manager
        .store()
        .compare_and_swap(Expect::Generation(expected), Some(doc))
        .or_else(|e| e.accept_not_durable())
}
