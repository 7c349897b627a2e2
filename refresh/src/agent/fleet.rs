//! The agent with a fleet: the record in etcd is the login of every machine. Each step
//! reconciles the record with the local auth.json (mirror it down, or upload a rotation a local
//! process made), and when the tokens are due, refreshes for the whole fleet under the fleet's
//! lease-backed lock, through the local guarded protocol (reservation, durable save, journal),
//! then uploads the new tokens with a write fenced by the revision it read.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use codex_store::{AgentClaim, AgentState, AuthDotJson, Expect, Generation, Snapshot, StoreError};

use super::event::{rfc3339, AgentEvent, AgentEventKind};
use super::{Agent, Plan};
use crate::error::{PermanentReason, RefreshError};
use crate::fleet::{Fleet, FleetError, FleetRecord, RotationMeta};
use crate::outcome::RefreshOutcome;
use crate::protocol::Urgency;

/// How long a machine that found the fleet lock held waits before it looks again (a change of
/// the record wakes it sooner).
const LOCK_BUSY_RETRY: Duration = Duration::from_secs(5);

/// The fleet side of an agent.
pub(crate) struct FleetSync {
    pub(crate) fleet: Arc<Fleet>,
    /// The record's revision and the local generation after the last mirror or upload: what
    /// tells a local change from a remote one.
    synced: Option<(i64, Generation)>,
    /// The last record revision seen (the watch starts after it).
    pub(crate) seen: i64,
}

impl FleetSync {
    pub(crate) fn new(fleet: Fleet) -> Self {
        FleetSync {
            fleet: Arc::new(fleet),
            synced: None,
            seen: 0,
        }
    }
}

fn refresh_of(doc: Option<&AuthDotJson>) -> Option<String> {
    doc.and_then(|d| d.tokens.as_ref())
        .map(|t| t.refresh_token.expose().to_owned())
}

fn same_tokens(a: Option<&AuthDotJson>, b: Option<&AuthDotJson>) -> bool {
    let tokens = |d: Option<&AuthDotJson>| {
        d.and_then(|d| d.tokens.as_ref()).map(|t| {
            (
                t.refresh_token.expose().to_owned(),
                t.access_token.expose().to_owned(),
            )
        })
    };
    tokens(a) == tokens(b)
        && a.map(|d| d.openai_api_key.clone()) == b.map(|d| d.openai_api_key.clone())
}

fn last_refresh(doc: Option<&AuthDotJson>) -> Option<SystemTime> {
    doc.and_then(|d| d.last_refresh.as_ref()).map(|t| t.time())
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
        let record = match fleet.read().await {
            Ok(Some(record)) => record,
            Ok(None) => {
                if let Some(sync) = self.fleet.as_mut() {
                    sync.seen = sync.seen.max(1);
                }
                return self.go_idle(
                    "fleet_empty",
                    "the fleet holds no login: seed it from a signed-in machine with `codex-store fleet seed --fleet ENDPOINTS`",
                    on_event,
                );
            }
            Err(e) => return self.fleet_failed(&e, on_event),
        };
        if let Some(sync) = self.fleet.as_mut() {
            sync.seen = record.revision;
        }
        let store = self.manager.store().clone();
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

    /// Mirrors the record into auth.json, or uploads a rotation made locally. `None` when they
    /// already agree.
    async fn reconcile(
        &mut self,
        fleet: &Fleet,
        record: &FleetRecord,
        local: &Snapshot,
        on_event: &mut impl FnMut(&AgentEvent),
    ) -> Option<Plan> {
        let sync = self.fleet.as_ref().expect("fleet mode");
        if same_tokens(Some(&record.document), local.auth()) {
            let synced = (record.revision, local.generation());
            self.fleet.as_mut().expect("fleet mode").synced = Some(synced);
            return None;
        }
        let local_changed = sync.synced.is_none_or(|(_, g)| g != local.generation());
        let remote_changed = sync.synced.is_none_or(|(r, _)| r != record.revision);
        let same_account = local
            .auth()
            .and_then(|d| d.tokens.as_ref())
            .and_then(|t| t.account())
            == record.document.tokens.as_ref().and_then(|t| t.account());
        let local_newer = last_refresh(local.auth()) > last_refresh(Some(&record.document));
        let upload = local.auth().is_some()
            && same_account
            && refresh_of(local.auth()).is_some()
            && match (local_changed, remote_changed) {
                (true, false) => true,
                (false, _) => false,
                (true, true) => local_newer,
            };
        if upload {
            let doc = local.auth().cloned().unwrap_or_default();
            let meta = RotationMeta::now(fleet, "uploaded", &doc);
            return Some(match fleet.put_if(record.revision, &doc, &meta).await {
                Ok(Ok(revision)) => {
                    let sync = self.fleet.as_mut().expect("fleet mode");
                    sync.synced = Some((revision, local.generation()));
                    sync.seen = revision;
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
        // The fleet's login wins: mirror it (unless the local file is a newer rotation of the
        // same account that could not be uploaded, which the next step uploads).
        let written = store_mirror(&self.manager, local.generation(), &record.document);
        Some(match written {
            Ok(generation) => {
                let sync = self.fleet.as_mut().expect("fleet mode");
                sync.synced = Some((record.revision, generation));
                on_event(&AgentEvent::now(AgentEventKind::Mirrored {
                    revision: record.revision,
                    refresh: record.refresh_fingerprint(),
                }));
                Plan::Again
            }
            Err(StoreError::Conflict { .. }) => Plan::Again,
            Err(e) => self.failed(&RefreshError::from(e), on_event),
        })
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
        let current = match fleet.read().await {
            Ok(Some(current)) if current.revision == record.revision => current,
            Ok(_) => {
                lock.release(fleet).await;
                return Plan::Again;
            }
            Err(e) => {
                lock.release(fleet).await;
                return self.fleet_failed(&e, on_event);
            }
        };
        // Reserve before redeem, fleet-wide. A previous holder that reserved this very token
        // may have redeemed it and hold the answer on its machine (it crashed, or lost etcd,
        // before the upload): wait for that upload up to the reuse wait from its reservation.
        let Some(fp) = current.refresh_fingerprint() else {
            lock.release(fleet).await;
            return Plan::Again;
        };
        match fleet.redeeming().await {
            Ok(Some(mark)) if mark.refresh == fp && mark.lock != lock.revision => {
                let since = codex_store::Timestamp::parse(&mark.at)
                    .map(|t| t.time())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                let until = since + self.reuse_wait;
                if until > SystemTime::now() {
                    lock.release(fleet).await;
                    tracing::info!(machine = %mark.machine, "a previous lock holder reserved this refresh token; waiting for its upload");
                    return Plan::At(until, AgentState::Waiting);
                }
            }
            Ok(_) => {}
            Err(e) => {
                lock.release(fleet).await;
                return self.fleet_failed(&e, on_event);
            }
        }
        match fleet.reserve_redemption(&fp, lock.revision).await {
            Ok(true) => {}
            Ok(false) => {
                lock.release(fleet).await;
                return Plan::At(SystemTime::now() + LOCK_BUSY_RETRY, AgentState::Waiting);
            }
            Err(e) => {
                lock.release(fleet).await;
                return self.fleet_failed(&e, on_event);
            }
        }
        // Losing the lease aborts the holder before it sends anything: the lease must be known
        // alive for a third of its time to live (the keep-alive renews it every third).
        let margin = (fleet.config().lock_ttl / 3).min(self.manager.config().http_timeout);
        if !lock.alive_for(margin) {
            lock.release(fleet).await;
            return Plan::At(SystemTime::now() + LOCK_BUSY_RETRY, AgentState::Waiting);
        }
        self.publish(claim, AgentState::Refreshing, None);
        let result = self.manager.run(Urgency::IfDueUnlessBusy).await;
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
                match put {
                    Ok(Ok(revision)) => {
                        let sync = self.fleet.as_mut().expect("fleet mode");
                        sync.synced = Some((revision, local_generation));
                        sync.seen = revision;
                    }
                    // The record moved on (a local rotation elsewhere, a new sign-in): the next
                    // step reconciles; the tokens stay durable in this machine's auth.json.
                    Ok(Err(_)) => {
                        tracing::warn!("the fleet record changed during the refresh; reconciling")
                    }
                    // etcd unreachable: the tokens are durable here and uploaded when it is back.
                    Err(e) => {
                        tracing::warn!(error = %e, "the new tokens could not be uploaded yet; they are kept in auth.json")
                    }
                }
                self.backoff.reset();
                let next = self.next_due(&auth);
                self.not_before = Some((auth.generation(), next));
                on_event(&AgentEvent::now(AgentEventKind::Refreshed {
                    access: auth.bearer().fingerprint(),
                    refresh: auth.refresh_fingerprint().map(str::to_owned),
                    next_refresh: Some(rfc3339(next)),
                }));
                Plan::At(next, AgentState::Waiting)
            }
            // A local process holds the refresh lock: look again soon (its write wakes us).
            Ok(RefreshOutcome::NotNeeded) if self.still_due() => {
                Plan::At(SystemTime::now() + super::BUSY_RETRY, AgentState::Waiting)
            }
            Ok(_) => Plan::Again,
            Err(RefreshError::Permanent {
                reason: PermanentReason::Reused,
            }) if self.await_fleet_rotation(fleet, current.revision).await => {
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
