//! The agent with a fleet: the record in etcd is the login of every machine. Each step
//! reconciles the record with the local auth.json (mirror it down, or upload a rotation a local
//! process made), and when the tokens are due, refreshes for the whole fleet under the fleet's
//! lease-backed lock: the one guarded protocol over the fleet's coordinator (`refresh`), which
//! reserves fleet-wide, saves durably here, and uploads the new tokens with a write fenced by
//! the revision it read. `busy` reports what holds it back (a lock, a reservation).

mod busy;
pub(crate) mod feed;
mod refresh;

use std::sync::Arc;
use std::time::SystemTime;

use codex_store::{
    AgentClaim, AgentState, AuthDotJson, Expect, Generation, JournalEvent, JournalRecord, Snapshot,
    StoreError,
};

use super::ask::AskEnd;
use super::event::{rfc3339, AgentEvent, AgentEventKind};
use super::fleet_sync::{self, Link, Reconcile, Synced, Upload};
use super::kinds::{FailureClass, IdleReason};
use super::{Core, Plan};
use crate::error::RefreshError;
use crate::fleet::{
    Fleet, FleetError, FleetRecord, Found, Put, RecordRead, RotationKind, RotationMeta,
};
use crate::protocol::Urgency;
use busy::{LockBusy, ReservationWait};

/// The fleet side of an agent.
pub(crate) struct FleetSync {
    pub(crate) fleet: Arc<Fleet>,
    /// What was in sync last (loaded from `auth.json.fleet` on the first step): what tells a
    /// local change from a remote one, across restarts.
    synced: Option<Synced>,
    loaded: bool,
    /// The fleet's keys as the watch tells them (started at the first step).
    feed: Option<feed::Feed>,
    /// The record's revision the last step looked at (`-1`: unknown): a change of the record in
    /// the feed wakes the agent.
    used: i64,
    /// etcd's revision of what the last step looked at.
    looked_at: i64,
    /// The feed's view is used only once it is at least at this revision: it has heard of what
    /// this agent wrote, of what a read under the lock found, and of the record a read of its
    /// own found.
    fresh_from: i64,
    /// How many failures of the feed's watch were reported.
    pub(crate) reported_failures: u64,
    /// The lock another holder holds, while this agent finds it held.
    lock_busy: Option<LockBusy>,
    /// The reservation of another holder this agent waits for.
    reservation_wait: Option<ReservationWait>,
    /// The record's revision when a refusal stopped this agent: any change of the record (a
    /// `fleet seed --force`, which also clears the refusal) makes it look again.
    refused_at: Option<i64>,
    /// The unusable record's revision last reported.
    unusable_reported: Option<i64>,
}

impl FleetSync {
    pub(crate) fn new(fleet: Fleet) -> Self {
        FleetSync {
            fleet: Arc::new(fleet),
            synced: None,
            loaded: false,
            feed: None,
            used: -1,
            looked_at: 0,
            fresh_from: 0,
            reported_failures: 0,
            lock_busy: None,
            reservation_wait: None,
            refused_at: None,
            unusable_reported: None,
        }
    }
}

/// Text from the fleet (a holder's name, a machine's), escaped for a message.
fn escaped(text: &str) -> String {
    text.escape_debug().to_string()
}

impl FleetSync {
    fn fleet(&self) -> Arc<Fleet> {
        Arc::clone(&self.fleet)
    }

    fn fleet_failed(
        &mut self,
        core: &mut Core,
        error: &FleetError,
        on_event: &mut impl FnMut(&AgentEvent),
    ) -> Plan {
        core.ask_end = Some(AskEnd::Failed(error.to_string()));
        let delay = core.backoff.next_delay();
        let at = SystemTime::now() + delay;
        on_event(&AgentEvent::now(AgentEventKind::Failed {
            class: FailureClass::Fleet,
            message: error.to_string(),
            next_attempt: Some(rfc3339(at)),
        }));
        Plan::At(at, AgentState::Retrying)
    }

    /// One step with a fleet.
    pub(super) async fn step(
        &mut self,
        core: &mut Core,
        claim: &AgentClaim,
        on_event: &mut impl FnMut(&AgentEvent),
    ) -> Plan {
        let fleet = self.fleet();
        let store = core.manager.store().clone();
        let state_path = fleet_sync::state_path(&store);
        {
            if !self.loaded {
                self.synced = fleet_sync::load(&state_path, &fleet.config().prefix);
                self.loaded = true;
            }
        }
        let RecordRead {
            record,
            rotation,
            revision,
        } = match self.look(&fleet).await {
            Ok(read) => read,
            Err(e) => return self.fleet_failed(core, &e, on_event),
        };
        let record = match record {
            Found::Record(record) => record,
            Found::Absent => return self.fleet_signed_out(core, &store, revision, on_event),
            Found::Invalid(e) => return self.fleet_failed(core, &e, on_event),
        };
        {
            // A refusal stopped this agent at another revision of the record: the record changed
            // since (a seed, which clears the refusal, or a rotation), so look again.
            if self.refused_at.is_some_and(|at| at != record.revision) {
                self.refused_at = None;
                core.refused = None;
            }
        }
        if let Some(why) = record.unusable() {
            return self.fleet_record_unusable(core, &fleet, &record, &why, on_event);
        }
        self.unusable_reported = None;
        let local = match store.load() {
            Ok(local) => local,
            Err(e) => return core.failed(&RefreshError::from(e), on_event),
        };
        if let Some(plan) = self
            .reconcile(core, &fleet, &record, rotation.as_ref(), &local, on_event)
            .await
        {
            return plan;
        }
        // Local and fleet agree: the usual schedule, on the fleet's tokens; or now, when a
        // token broker asked about the current token.
        let plan = core.step_local_schedule(on_event);
        let urgency = core.urgency();
        let plan = plan.filter(|p| urgency != Urgency::Now || !p.not_due());
        let Some(due) = plan else {
            if urgency != Urgency::Now {
                if let Some(later) = self.deferred(core, &record, rotation.as_ref()) {
                    return Plan::At(later, AgentState::Waiting);
                }
            }
            return self
                .refresh_for_fleet(core, claim, &fleet, *record, urgency, on_event)
                .await;
        };
        due
    }

    /// The record and its last rotation: the feed's view when it is fresh enough (no etcd
    /// request), else a read. Remembers what was looked at.
    async fn look(&mut self, fleet: &Arc<Fleet>) -> Result<RecordRead, FleetError> {
        let feed = self
            .feed
            .get_or_insert_with(|| feed::Feed::start(Arc::clone(fleet)));
        let read = match feed.view().filter(|view| view.revision >= self.fresh_from) {
            Some(view) => {
                self.used = view.record_at;
                view.read(fleet)
            }
            None => {
                let read = fleet.read_with_rotation().await?;
                self.used = match &read.record {
                    Found::Record(record) => record.revision,
                    Found::Absent | Found::Invalid(_) => -1,
                };
                // A view that has not heard of the record this read found is older than it (the
                // feed's first read can land before a change this read saw): it is neither used
                // nor news until it has. The record's own revision is an event on the prefix,
                // which the feed hears.
                if let Found::Record(record) = &read.record {
                    self.fresh_from = self.fresh_from.max(record.revision);
                }
                read
            }
        };
        self.looked_at = read.revision;
        Ok(read)
    }

    /// What the last look found is older than etcd's record (a write fenced by its revision
    /// was refused): the next look reads, unless the feed heard of something newer meanwhile.
    pub(super) fn distrust_last_look(&mut self) {
        self.fresh_from = self.fresh_from.max(self.looked_at + 1);
    }

    /// This agent wrote the record at `revision`: the feed's view is used again once it heard
    /// of it.
    pub(super) fn wrote(&mut self, revision: i64) {
        self.fresh_from = self.fresh_from.max(revision);
    }

    /// What the agent's wait listens to. `None` before the first step.
    pub(super) fn news(&self) -> Option<FeedNews> {
        let feed = self.feed.as_ref()?;
        Some(FeedNews {
            feed: feed.subscribe(),
            used: self.used,
            fresh_from: self.fresh_from,
            reported: self.reported_failures,
        })
    }

    /// When a machine that did not make the record's last change tries the fleet lock: the
    /// machine that did (the last rotation names it, and describes this very record) refreshes
    /// at the due time; the others let it go first, and look again a grace after it (a quarter
    /// of the lead beyond Codex's own window, at most 30 s), by when its rotation has usually
    /// reached them and nothing is due any more. `None`: try now.
    ///
    /// Only when to try: whether a token may be sent is still decided by the fleet lock and the
    /// reservation in etcd, never by this. If that machine is gone, the others refresh a grace
    /// later, still before Codex's window.
    fn deferred(
        &self,
        core: &Core,
        record: &FleetRecord,
        rotation: Option<&RotationMeta>,
    ) -> Option<SystemTime> {
        let last = rotation.filter(|meta| meta.refresh == record.refresh_fingerprint())?;
        if last.machine == self.fleet.config().machine {
            return None;
        }
        let due = core.manager.cached()?.due_at(core.manager.config())?;
        let until = due + deferral(core.config.lead);
        (SystemTime::now() < until).then_some(until)
    }

    /// The fleet holds no login (etcd's revision `revision`). If this machine had the fleet's
    /// login and nobody changed it here since, the fleet was signed out (`logout --fleet`): so is
    /// this machine. Unless etcd itself went back before that sync (restored from a snapshot
    /// older than the login, or its data lost): then auth.json is kept and it is reported.
    fn fleet_signed_out(
        &mut self,
        core: &mut Core,
        store: &codex_store::Store,
        revision: i64,
        on_event: &mut impl FnMut(&AgentEvent),
    ) -> Plan {
        let synced = self.synced.clone();
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
                if core.idle != Some(IdleReason::FleetWentBack) {
                    tracing::warn!("{message}");
                }
                return core.go_idle(IdleReason::FleetWentBack, &message, on_event);
            }
            if local.auth().is_some() && synced.local_generation == local.generation().to_string() {
                match store
                    .compare_and_swap(Expect::Generation(local.generation()), None)
                    .or_else(|e| e.accept_not_durable())
                {
                    Ok(_) => {
                        self.remember_fleet_signed_out(store, revision);
                        return core.go_idle(IdleReason::FleetSignedOut,
                            "the fleet's login was removed (logout --fleet): this machine is signed out too; seed the fleet again to resume",
                            on_event,
                        );
                    }
                    Err(e) => return core.failed(&RefreshError::from(e), on_event),
                }
            }
            if local.auth().is_none() {
                // Signed out here while the fleet is signed out too (`logout --fleet` removes
                // the record, then this machine's auth.json, perhaps before this agent mirrors
                // the sign-out): that is the fleet's sign-out, and the next fleet login is this
                // machine's as well.
                if synced.local_generation != local.generation().to_string() {
                    self.remember_fleet_signed_out(store, revision);
                }
                return core.go_idle(IdleReason::FleetSignedOut,
                    "the fleet's login was removed (logout --fleet) and this machine is signed out; the next fleet login (`fleet seed`, `login --fleet`) reaches it",
                    on_event,
                );
            }
        }
        core.go_idle(IdleReason::FleetEmpty,
            "the fleet holds no login: seed it from a signed-in machine with `codex-store fleet seed --fleet ENDPOINTS`",
            on_event,
        )
    }

    /// Remembers that the fleet was signed out (no record at etcd's revision `revision`) with
    /// this machine: no auth.json in sync with no record, so that the next record is mirrored.
    fn remember_fleet_signed_out(&mut self, store: &codex_store::Store, revision: i64) {
        let next = Synced::after(
            self.synced.as_ref(),
            &self.fleet.config().prefix,
            revision,
            &Generation::Absent,
            None,
            Link::Superseded,
        );
        fleet_sync::remember(&mut self.synced, &fleet_sync::state_path(store), next);
    }

    /// The record holds no usable credentials (empty tokens; neither tokens nor a key): never
    /// mirrored over auth.json nor sent; reported once per revision; the agent idles until the
    /// record (or auth.json) changes.
    fn fleet_record_unusable(
        &mut self,
        core: &mut Core,
        fleet: &Fleet,
        record: &FleetRecord,
        why: &str,
        on_event: &mut impl FnMut(&AgentEvent),
    ) -> Plan {
        let message = format!(
            "the fleet's login ({} at revision {}) holds no usable credentials ({why}): it is not \
             written to auth.json and nothing is sent; auth.json is left as it is. Seed the fleet \
             from a signed-in machine (`codex-store fleet seed --force`), or sign the fleet out \
             (`codex-store logout --fleet ENDPOINTS`)",
            fleet.record_key(),
            record.revision
        );
        if self.unusable_reported != Some(record.revision) {
            self.unusable_reported = Some(record.revision);
            tracing::warn!("{message}");
            // Reported again for every new revision, even if the idle reason stays.
            if core.idle == Some(IdleReason::FleetRecordUnusable) {
                core.idle = None;
            }
        }
        core.go_idle(IdleReason::FleetRecordUnusable, &message, on_event)
    }

    /// Remembers that the record at `revision` and auth.json at `local` are in sync, the fleet's
    /// login having moved on from the token in sync before, if another ([`Link::Superseded`]).
    fn remember_sync(&mut self, core: &mut Core, revision: i64, local: Generation) {
        let store = core.manager.store().clone();
        let refresh = fleet_sync::refresh_at(&store, &local);
        let next = Synced::after(
            self.synced.as_ref(),
            &self.fleet.config().prefix,
            revision,
            &local,
            refresh,
            Link::Superseded,
        );
        fleet_sync::remember(&mut self.synced, &fleet_sync::state_path(&store), next);
    }

    /// Mirrors the record into auth.json, or uploads a rotation made locally, by causality (see
    /// [`fleet_sync::decide`]): only a refresh token that descends from the record's is
    /// uploaded, the record is never written over a newer token, and what no known rotation
    /// relates is kept on both sides and reported. `None` when they already agree.
    async fn reconcile(
        &mut self,
        core: &mut Core,
        fleet: &Fleet,
        record: &FleetRecord,
        rotation: Option<&RotationMeta>,
        local: &Snapshot,
        on_event: &mut impl FnMut(&AgentEvent),
    ) -> Option<Plan> {
        let store = core.manager.store().clone();
        let state_path = fleet_sync::state_path(&store);
        let synced = self.synced.clone();
        let lineage = fleet_sync::Lineage::gather(&store, synced.as_ref(), record, rotation);
        let (keep_copy, link, finding) =
            match fleet_sync::decide(record, local, synced.as_ref(), &lineage) {
                Reconcile::InSync => {
                    self.remember_sync(core, record.revision, local.generation());
                    return None;
                }
                Reconcile::Upload(why) => {
                    let doc = local.auth().cloned().unwrap_or_default();
                    if let Some(reason) = crate::fleet::unusable(&doc) {
                        // Never made the fleet's login (decide does not ask for it: a guard).
                        return Some(self.fleet_failed(core,
                            &FleetError::UnusableLogin {
                                what: "auth.json".into(),
                                reason,
                            },
                            on_event,
                        ));
                    }
                    // A token that descends from the record's names it as its parent; one new
                    // to this machine names none (nothing vouches for the succession).
                    let parent = match why {
                        Upload::NewHere => None,
                        Upload::Descends | Upload::Repairs(_) => record.refresh_fingerprint(),
                    };
                    let meta = RotationMeta::now(fleet, why.kind(), &doc, parent);
                    return Some(match fleet.put_if(record.revision, &doc, &meta).await {
                        Ok(Put::Written { revision }) => {
                            self.wrote(revision);
                            if let Upload::Repairs(finding) = &why {
                                tracing::warn!("{}", finding.uploaded());
                            }
                            if why == Upload::NewHere {
                                // Nothing known leads to it from the record's token: remembered
                                // as unverified, no succession.
                                let next = Synced::after(
                                    self.synced.as_ref(),
                                    &self.fleet.config().prefix,
                                    revision,
                                    &local.generation(),
                                    meta.refresh.clone(),
                                    Link::Unverified,
                                );
                                fleet_sync::remember(&mut self.synced, &state_path, next);
                            } else {
                                self.remember_sync(core, revision, local.generation());
                            }
                            on_event(&AgentEvent::now(AgentEventKind::Uploaded {
                                revision,
                                refresh: meta.refresh.clone(),
                            }));
                            Plan::Again
                        }
                        // The record moved meanwhile: look again.
                        Ok(Put::Moved { .. }) => {
                            self.distrust_last_look();
                            Plan::Again
                        }
                        Err(e) => self.fleet_failed(core, &e, on_event),
                    });
                }
                Reconcile::KeepLocal(reason) => return Some(core.go_idle(
                    reason,
                    "this machine's auth.json holds another login than the fleet's (another account, or signed out here): it is left alone; `codex-store fleet seed --force` makes it the fleet's, `codex-store logout` lets the fleet's in",
                    on_event,
                )),
                Reconcile::Conflict(finding) => {
                    // Nothing can decide safely: both kept, reported once, looked at again on
                    // any change of either.
                    let (reason, message) = (finding.reason(), finding.conflict());
                    if core.idle != Some(reason) {
                        tracing::warn!("{message}");
                    }
                    return Some(core.go_idle(reason, &message, on_event));
                }
                Reconcile::Mirror => (false, Link::Superseded, None),
                Reconcile::MirrorKeepingCopy(finding) => (true, Link::Superseded, finding),
                Reconcile::MirrorMovedOn => {
                    // Another machine's rotation; or a token another machine uploaded without a
                    // known rotation to it (or a rotation this read does not describe): then
                    // auth.json is kept beside it.
                    let verified = rotation.is_some_and(|meta| {
                        meta.kind != RotationKind::UploadedUnverified
                            && meta.refresh == record.refresh_fingerprint()
                    });
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
                return Some(self.fleet_failed(core,
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
        // Journaled before it is written: a token broker that finds the new token in auth.json
        // then finds how it came there (it reads auth.json first, the journal second).
        // A broker in this process knows it at once (whether or not the journal takes it now).
        let mirror = mirrored(local, &record.document);
        if let (Some(mirror), Some(rotations)) = (&mirror, &core.rotations) {
            rotations.push(mirror.clone());
        }
        let unjournaled = mirror.and_then(|mirror| journal_now(&store, mirror));
        Some(
            match store_mirror(&core.manager, local.generation(), &record.document) {
                Ok(generation) => {
                    if let Some(mirror) = unjournaled {
                        journal_later(&store, mirror);
                    }
                    if link == Link::Unverified {
                        let next = Synced::after(
                            self.synced.as_ref(),
                            &self.fleet.config().prefix,
                            record.revision,
                            &generation,
                            record.refresh_fingerprint(),
                            Link::Unverified,
                        );
                        fleet_sync::remember(&mut self.synced, &state_path, next);
                    } else {
                        self.remember_sync(core, record.revision, generation);
                    }
                    // Its own write is no news to the next look: not reported again as adopted.
                    if let Err(e) = core.manager.reload() {
                        tracing::debug!(error = %e, "could not re-read the mirrored auth.json");
                    }
                    on_event(&AgentEvent::now(AgentEventKind::Mirrored {
                        revision: record.revision,
                        refresh: record.refresh_fingerprint(),
                    }));
                    Plan::Again
                }
                Err(StoreError::Conflict { .. }) => Plan::Again,
                Err(e) => core.failed(&RefreshError::from(e), on_event),
            },
        )
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

/// The `mirrored` record of auth.json's refresh token (in `before`) replaced by the fleet's
/// (`doc`, about to be written into auth.json): so that this machine's token broker knows the
/// token its Codex processes may still present as a predecessor of the current one (they read
/// it from this auth.json; the fleet's login moved on from it, by a rotation or a replacement,
/// true whether or not the write then succeeds). Only for the same account; `None` otherwise.
/// It names no generation: it says nothing of a generation's fate.
fn mirrored(before: &Snapshot, doc: &AuthDotJson) -> Option<JournalRecord> {
    let (old, new) = (
        before.auth().and_then(|d| d.tokens.as_ref())?,
        doc.tokens.as_ref()?,
    );
    let (account, refresh, new_refresh) = (
        old.account(),
        old.refresh_token.fingerprint(),
        new.refresh_token.fingerprint(),
    );
    if account.is_none() || account != new.account() || refresh == new_refresh {
        return None;
    }
    let mut record = JournalRecord::new(JournalEvent::Mirrored, before.generation());
    record.generation = None;
    record.account = account;
    record.refresh = Some(refresh);
    record.new_refresh = Some(new_refresh);
    Some(record)
}

/// Journals `record` under the refresh lock, as every journal record, if it is free; else
/// gives it back, for [`journal_later`].
fn journal_now(store: &codex_store::Store, record: JournalRecord) -> Option<JournalRecord> {
    match store.try_begin_rotation() {
        Ok(Some(rotation)) => {
            rotation.record(&record);
            None
        }
        Ok(None) => Some(record),
        Err(e) => {
            tracing::warn!(error = %e, "a mirror of the fleet's login could not be journaled");
            None
        }
    }
}

/// Journals `record` once the local refresh that holds the refresh lock ends: a thread of its
/// own waits for the lock (within the store's lock timeout), so that the agent never waits.
/// The broker orders records by their times; until then, it takes the token as one it does not
/// know.
fn journal_later(store: &codex_store::Store, record: JournalRecord) {
    let store = store.clone();
    let spawned = std::thread::Builder::new()
        .name("journal-mirror".into())
        .spawn(move || match store.begin_rotation() {
            Ok(rotation) => rotation.record(&record),
            Err(e) => {
                tracing::warn!(error = %e, "a mirror of the fleet's login could not be journaled");
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "a mirror of the fleet's login could not be journaled");
    }
}

/// How long after the due time a machine that did not make the record's last change waits
/// before it tries the fleet lock ([`FleetSync::deferred`]): a quarter of the lead beyond
/// Codex's own refresh window, at most 30 s.
fn deferral(lead: std::time::Duration) -> std::time::Duration {
    (lead.saturating_sub(super::CODEX_REFRESH_WINDOW) / 4).min(std::time::Duration::from_secs(30))
}

/// What the agent's wait listens to in the fleet: the feed, the record's revision the last step
/// looked at (`used`), the revision a view must have reached to be believed (`fresh_from`), and
/// the failures of the watch already reported.
pub(crate) struct FeedNews {
    pub(crate) feed: tokio::sync::watch::Receiver<feed::FeedState>,
    pub(crate) used: i64,
    pub(crate) fresh_from: i64,
    pub(crate) reported: u64,
}
