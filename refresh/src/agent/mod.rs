//! [`Agent`]: one refresher per login, so that the processes sharing auth.json (Codex terminals,
//! editor extensions, app servers) never have to refresh.
//!
//! The agent keeps one store's credentials fresh through the guarded protocol, a lead time
//! ([`AgentConfig::lead`]) before the access token expires. A Codex process refreshes only
//! within 5 minutes of expiry, and re-reads auth.json first: with a lead above 5 minutes it
//! finds fresh tokens on disk and sends nothing. The agent sleeps until the next due time (on a
//! clock that counts the time the machine spent suspended) or a change of the file (the
//! platform's file notifications, no polling), adopts what others write, retries transient
//! failures with capped exponential backoff and jitter, stops retrying credentials the endpoint
//! refused for good, and resumes when a new sign-in appears.
//!
//! Modelled on HashiCorp Vault Agent's auto-auth: one process owns the renewal, the others read
//! the sink (here: auth.json itself).

mod ask;
mod event;
mod fleet;
mod fleet_sync;
mod kinds;
mod schedule;
mod timer;
mod watch;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use codex_store::{AgentClaim, AgentState, AgentStatus, Store, StoreError};

use crate::auth::{CodexAuth, Mode};
use crate::config::{RefreshConfig, WhileRefreshing};
use crate::error::{ErrorClass, RefreshError};
use crate::manager::AuthManager;
use crate::outcome::RefreshOutcome;
use crate::protocol::Urgency;

use ask::Ask;
pub use ask::{refresh_asks, RefreshAsker, RefreshAsks};
pub(crate) use ask::{AskEnd, Rotations, Tokens};
use event::rfc3339;
pub use event::{AgentEvent, AgentEventKind};
pub use kinds::{FailureClass, IdleReason, ReattachReason, ResumedFrom, StopReason};
use schedule::{wake_at, Backoff, MAX_SLEEP};
use timer::Alarm;
use watch::{Found, Home};

/// Codex's own refresh window: it refreshes when the access token expires within 5 minutes.
/// The agent's lead must exceed it.
pub const CODEX_REFRESH_WINDOW: Duration = Duration::from_secs(5 * 60);

/// When another process holds the refresh lock, the agent looks again after this long (its
/// write wakes the agent sooner).
const BUSY_RETRY: Duration = Duration::from_secs(2);

/// After a change of auth.json woke the agent, the next change wakes it this long after its last
/// look at the earliest: a storm of changes (an editor, a sync tool) costs a few looks a second,
/// and one change alone is looked at at once.
const COALESCE: Duration = Duration::from_millis(100);

/// When the directory of auth.json, or the agent's claim file, is missing: how long the agent
/// waits (writing nothing) for a re-creation under way to finish before it decides.
const SETTLE: Duration = Duration::from_secs(1);

/// How the agent schedules its work.
///
/// ```
/// use std::time::Duration;
/// use codex_refresh::AgentConfig;
/// let config = AgentConfig::default();
/// assert_eq!(config.lead, Duration::from_secs(15 * 60));
/// ```
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Refresh this long before the access token expires. Must exceed Codex's 5 minutes
    /// ([`CODEX_REFRESH_WINDOW`]), or Codex processes refresh before the agent. Default: 15
    /// minutes.
    pub lead: Duration,
    /// The first retry delay after a transient failure; it doubles with each failure in a row.
    /// Default: 2 s.
    pub retry_initial: Duration,
    /// The longest retry delay. Default: 5 minutes.
    pub retry_max: Duration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            lead: Duration::from_secs(15 * 60),
            retry_initial: Duration::from_secs(2),
            retry_max: Duration::from_secs(5 * 60),
        }
    }
}

/// Why the agent could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The lead time does not exceed Codex's own refresh window.
    #[error(
        "a lead of {} s does not exceed Codex's own refresh window of 300 s: Codex processes \
         would refresh before the agent; use more than 5m (the default is 15m)",
        lead.as_secs()
    )]
    LeadTooShort {
        /// The lead asked for.
        lead: Duration,
    },
    /// The directory of auth.json cannot be watched for changes.
    #[error(
        "cannot watch {path} for changes: {reason}; check that it exists and, on Linux, that \
         fs.inotify.max_user_watches / max_user_instances are not exhausted"
    )]
    Watch {
        /// The directory.
        path: std::path::PathBuf,
        /// The watcher's error.
        reason: String,
    },
    /// The store refused (another agent runs: [`StoreError::AgentRunning`]; an I/O error).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The refresh set-up failed (a bad token URL).
    #[error(transparent)]
    Refresh(#[from] RefreshError),
}

/// What [`Agent::keep_home`] found.
enum Attachment {
    /// The same directory, and the agent's claim in it.
    Intact,
    /// The store was claimed again, and its directory is watched anew: look at auth.json.
    Reattached,
    /// Asked to stop meanwhile.
    Stop,
}

/// What the agent does next.
enum Plan {
    /// Refresh at this time (the next due time, or the next retry).
    At(SystemTime, AgentState),
    /// Nothing until auth.json changes.
    UntilChange(AgentState),
    /// Look again at once (the file changed under a refresh).
    Again,
}

impl Plan {
    /// Whether it only waits for the tokens to be due (which a broker's ask overrides).
    fn not_due(&self) -> bool {
        matches!(self, Plan::At(_, AgentState::Waiting))
    }
}

/// The refresher of one store, as a library: run it in a host application with
/// [`Agent::run`], or use the `codex-store agent` command.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use codex_refresh::{Agent, AgentConfig, RefreshConfig};
/// use codex_store::Store;
///
/// let agent = Agent::new(Store::open("/home/me/.codex")?, RefreshConfig::default(), AgentConfig::default())?;
/// let stop = tokio::time::sleep(std::time::Duration::from_secs(3600)); // or a signal
/// agent.run(stop, |event| eprintln!("{event}")).await?;
/// # Ok(()) }
/// ```
pub struct Agent {
    core: Core,
    /// Where the login comes from.
    source: Source,
    /// A token broker's asks to refresh now ([`Agent::answering`]).
    asks: Option<RefreshAsks>,
}

/// Where an agent's login comes from: what it schedules is the same either way.
enum Source {
    /// This machine's auth.json alone.
    Local,
    /// A fleet's record in etcd, mirrored into auth.json ([`fleet::FleetSync`]).
    Fleet(Box<fleet::FleetSync>),
}

impl Source {
    /// What the wait listens to in the fleet ([`fleet::FleetSync::news`]).
    fn news(&self) -> Option<fleet::FeedNews> {
        match self {
            Source::Fleet(sync) => sync.news(),
            Source::Local => None,
        }
    }

    /// The fleet, as the start line names it (`PREFIX at ENDPOINTS`); `None` without one.
    fn fleet_name(&self) -> Option<String> {
        match self {
            Source::Fleet(sync) => {
                let config = sync.fleet.config();
                Some(format!(
                    "{} at {}",
                    config.prefix,
                    config.endpoints.join(",")
                ))
            }
            Source::Local => None,
        }
    }
}

/// What an agent schedules with, whatever its [`Source`]: the login's manager, the backoff, and
/// what it reported last.
pub(crate) struct Core {
    manager: AuthManager,
    config: AgentConfig,
    backoff: Backoff,
    /// The generation the endpoint refused for good: not retried until the file changes.
    refused: Option<codex_store::Generation>,
    /// The reason of the last idle report, so that it is reported once.
    idle: Option<IdleReason>,
    started: SystemTime,
    /// After this agent's own refresh: the generation it wrote and the earliest time to
    /// refresh it again (its own write wakes it; tokens living shorter than the lead must not
    /// make it loop).
    not_before: Option<(codex_store::Generation, SystemTime)>,
    /// How long a `refresh_token_reused` answer waits for the rotation it means.
    reuse_wait: Duration,
    /// The status last published: an unchanged status is not written again.
    published: Option<AgentStatus>,
    /// The tokens a token broker asked to refresh now, for this step.
    asked: Vec<Tokens>,
    /// The rotations shared with a token broker in this process ([`Agent::answering`]).
    rotations: Option<Rotations>,
    /// How this step ended for the asks, when it cannot refresh the token asked about (a
    /// refusal, a failure); `None`: it refreshed, or it still may.
    ask_end: Option<AskEnd>,
    /// The refusal that stopped the agent (kept while [`Core::refused`] holds): what an ask
    /// about the refused token is answered.
    refused_end: Option<AskEnd>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("store", &self.core.manager.store().path())
            .field("lead", &self.core.config.lead)
            .finish()
    }
}

impl Agent {
    /// An agent for `store`, refreshing through `refresh` (its `refresh_window` becomes the
    /// lead; it always waits for another process's refresh rather than keep a valid token).
    ///
    /// # Errors
    /// [`AgentError::LeadTooShort`] for a lead of 5 minutes or less; [`AgentError::Refresh`]
    /// for a token URL that is not an absolute http(s) URL.
    pub fn new(
        store: Store,
        refresh: RefreshConfig,
        config: AgentConfig,
    ) -> Result<Agent, AgentError> {
        if config.lead <= CODEX_REFRESH_WINDOW {
            return Err(AgentError::LeadTooShort { lead: config.lead });
        }
        let manager_reuse_wait = refresh.reuse_wait;
        let refresh = RefreshConfig {
            refresh_window: config.lead,
            while_refreshing: WhileRefreshing::Wait,
            ..refresh
        };
        let manager = AuthManager::unloaded(store, refresh)?;
        Ok(Agent {
            core: Core {
                manager,
                backoff: Backoff::new(config.retry_initial, config.retry_max),
                config,
                refused: None,
                idle: None,
                started: SystemTime::now(),
                not_before: None,
                reuse_wait: manager_reuse_wait,
                published: None,
                asked: Vec::new(),
                rotations: None,
                ask_end: None,
                refused_end: None,
            },
            source: Source::Local,
            asks: None,
        })
    }

    /// The same agent for a machine of `fleet`: the login lives in etcd; this agent mirrors it
    /// into the local auth.json, uploads rotations made locally, and refreshes for every
    /// machine when it holds the fleet's lock (see [`crate::fleet`]).
    ///
    /// After `refresh_token_reused`, the wait for the rotation it means watches the fleet's
    /// record (where another machine's rotation arrives), not the local file.
    ///
    /// # Errors
    /// None today (the fleet's coordinator needs nothing rebuilt); the `Result` is kept for
    /// callers.
    pub fn with_fleet(mut self, fleet: crate::fleet::Fleet) -> Result<Agent, AgentError> {
        self.source = Source::Fleet(Box::new(fleet::FleetSync::new(fleet)));
        Ok(self)
    }

    /// The same agent, answering a token broker's asks to refresh now (`asks`, the other end of
    /// the broker's [`RefreshAsker`]; see [`crate::Broker::through_agent`]): the token a caller
    /// presented, if it is still the current one, is refreshed at once, due or not, through
    /// this agent's own protocol (on a fleet machine: under the fleet's lock and reservation,
    /// for every machine). An ask is answered once auth.json's token is another, or when it
    /// cannot be refreshed (a refusal, a failure, a login the agent leaves alone); while
    /// another holder refreshes, it waits for its rotation.
    #[must_use]
    pub fn answering(mut self, asks: RefreshAsks) -> Agent {
        self.core.rotations = Some(asks.rotations.clone());
        self.asks = Some(asks);
        self
    }

    /// Runs until `shutdown` resolves: claims the store (one agent per auth.json), then keeps
    /// its credentials fresh, reporting each event to `on_event`. On shutdown no new request is
    /// sent; a request already sent is awaited (at most the HTTP timeout) so that its answer is
    /// saved, never lost. Nothing is left locked.
    ///
    /// A storm of changes of auth.json costs the agent a few looks a second (one per 100 ms at
    /// most), and a change that leaves the file as it was costs one read and nothing else. When
    /// the directory of auth.json or the agent's claim file is removed or replaced while it runs
    /// (checked on each wake, and at least every 10 minutes), the agent claims the store again
    /// and watches the new directory (a `reattached` event).
    ///
    /// The wait for a due time counts the time the machine spent suspended (Linux's
    /// `CLOCK_BOOTTIME` through a timerfd; elsewhere, a look at the boot-time clock every 30 s):
    /// a due time that passed while a laptop slept is acted on at the resume. The runtime needs
    /// its I/O and time drivers (`enable_all`), as every request does.
    ///
    /// # Errors
    /// [`AgentError::Store`] with [`StoreError::AgentRunning`] when another agent runs for this
    /// store (with its pid), at the start or when the agent claims the store again;
    /// [`AgentError::Watch`] when the directory cannot be watched, or was removed for good while
    /// the agent ran. Refresh failures are events, not errors. A `stopped` event precedes every
    /// return after `started`.
    ///
    /// # Security
    /// Events and the published status carry fingerprints of tokens, never tokens.
    pub async fn run(
        mut self,
        shutdown: impl Future<Output = ()>,
        mut on_event: impl FnMut(&AgentEvent),
    ) -> Result<(), AgentError> {
        let store = self.core.manager.store().clone();
        let initial = AgentStatus::new(self.core.started, AgentState::Idle, None);
        let mut claim = store.claim_agent(&initial)?;
        self.core.published = Some(initial);
        let mut home = Home::attach(store.path(), &store.agent_lock_path())?;
        on_event(&AgentEvent::now(AgentEventKind::Started {
            pid: std::process::id(),
            auth_json: store.path().to_path_buf(),
            lead_seconds: self.core.config.lead.as_secs(),
            fleet: self.source.fleet_name(),
        }));
        tokio::pin!(shutdown);
        let manager = self.core.manager.clone();
        let grace = self.core.manager.config().http_timeout + Duration::from_secs(5);
        // Events are reported after the status is published, so that whoever reacts to an event
        // finds the status (`inspect`) already telling the same.
        let mut pending: Vec<AgentEvent> = Vec::new();
        // The due time's timer counts the time the machine spent suspended: a due time that
        // passed during a suspend fires at the resume.
        let mut alarm = Alarm::system();
        // A broker's asks: received while the agent waits, answered after the steps.
        let mut asks = self.asks.take();
        let mut asked: Vec<Ask> = Vec::new();
        let ended: Result<StopReason, AgentError> = 'run: loop {
            // Armed before every look, so that every change after the look began is signalled.
            // A directory that cannot be watched any more was removed or replaced meanwhile.
            if home.watch.arm().is_err() {
                match self
                    .keep_home(&mut claim, &mut home, &mut shutdown, &mut on_event)
                    .await
                {
                    Err(e) => break Err(e),
                    Ok(Attachment::Stop) => break Ok(StopReason::Asked),
                    Ok(Attachment::Intact | Attachment::Reattached) => {}
                }
                if let Err(e) = home.watch.arm() {
                    break Err(e);
                }
            }
            // What this look starts from: a later wake finding the same generation looks no
            // further.
            let looked = store.generation().ok();
            let mut last_look = tokio::time::Instant::now();
            // Whether the fleet record's watch failed since this look: the agent may have missed
            // a change of the record, so a change of auth.json, even to the same bytes, makes it
            // look at the fleet again (once per failure, not at every touch).
            let mut fleet_unsure = false;
            asked.retain(Ask::waited_for);
            self.core.asked = asked.iter().map(|a| a.tokens.clone()).collect();
            self.core.ask_end = None;
            let plan = {
                let mut collect = |event: &AgentEvent| pending.push(event.clone());
                let step = self.step(&claim, &mut collect);
                tokio::pin!(step);
                tokio::select! {
                    plan = &mut step => plan,
                    () = &mut shutdown => {
                        // Nothing new is sent; an answer already on its way is saved first.
                        manager.stop_sending();
                        if tokio::time::timeout(grace, step).await.is_err() {
                            break 'run Ok(StopReason::AskedRequestUnanswered);
                        }
                        break 'run Ok(StopReason::Asked);
                    }
                }
            };
            // In the backoff after a failure, an ask is answered with that failure, and nothing
            // is sent before the retry: a caller retrying at once costs no request.
            let retry_end = match plan {
                Plan::At(_, AgentState::Retrying) => self.core.ask_end.clone(),
                _ => None,
            };
            answer_asks(&mut asked, &store, self.core.ask_end.take());
            let (state, wake) = match plan {
                Plan::Again => {
                    pending.drain(..).for_each(|e| on_event(&e));
                    continue;
                }
                Plan::At(at, state) => (state, Some(at)),
                Plan::UntilChange(state) => (state, None),
            };
            self.core.publish(&claim, state, wake);
            pending.drain(..).for_each(|e| on_event(&e));
            let remote = self.source.news();
            // The due time, or (with nothing due) the periodic check of the home; on the
            // boot-time clock.
            let mut deadline = wake_at(wake, SystemTime::now(), alarm.now());
            // While the watch is disarmed after a change: when to arm it and look again.
            let mut rearm_at: Option<tokio::time::Instant> = None;
            // The fleet's feed watches the record for the agent's whole run, and retries a
            // failed watch after its backoff, in every state: a machine never goes deaf to the
            // fleet. A failure is reported here once; a change of the record ends the wait.
            let mut fleet_wait = Box::pin(fleet_changed(remote));
            loop {
                tokio::select! {
                    () = alarm.until(deadline) => {
                        match self.keep_home(&mut claim, &mut home, &mut shutdown, &mut on_event).await {
                            Err(e) => break 'run Err(e),
                            Ok(Attachment::Stop) => break 'run Ok(StopReason::Asked),
                            Ok(Attachment::Reattached) => break,
                            Ok(Attachment::Intact) if wake.is_some() => break,
                            Ok(Attachment::Intact) => {
                                deadline = alarm.now().after(MAX_SLEEP);
                                if rearm_at.is_none() {
                                    if let Err(e) = home.watch.arm() {
                                        break 'run Err(e);
                                    }
                                }
                            }
                        }
                    }
                    () = home.watch.changed() => {
                        // Coalesced: nothing more is signalled (nor costs anything) until the
                        // next look, at most every COALESCE.
                        home.watch.disarm();
                        rearm_at = Some(tokio::time::Instant::now().max(last_look + COALESCE));
                    }
                    () = sleep_until_some(rearm_at) => {
                        rearm_at = None;
                        match self.keep_home(&mut claim, &mut home, &mut shutdown, &mut on_event).await {
                            Err(e) => break 'run Err(e),
                            Ok(Attachment::Stop) => break 'run Ok(StopReason::Asked),
                            Ok(Attachment::Reattached) => break,
                            Ok(Attachment::Intact) => {}
                        }
                        if let Err(e) = home.watch.arm() {
                            break 'run Err(e);
                        }
                        // The cheap check: an unchanged file (a touch, a rewrite of the same
                        // bytes) costs this read and nothing else.
                        last_look = tokio::time::Instant::now();
                        if fleet_unsure || store.generation().ok() != looked {
                            break;
                        }
                    }
                    news = &mut fleet_wait => match news {
                        FleetNews::Changed => break,
                        FleetNews::Failed(event, failures) => {
                            fleet_unsure = true;
                            on_event(&event);
                            if let Source::Fleet(sync) = &mut self.source {
                                sync.reported_failures = failures;
                            }
                            fleet_wait = Box::pin(fleet_changed(self.source.news()));
                        }
                    },
                    ask = next_ask(&mut asks) => match ask {
                        // Only about the tokens that failed: other tokens (auth.json changed since)
                        // are looked at.
                        Some(ask) => match retry_end
                            .as_ref()
                            .filter(|_| self.core.cached_tokens().as_ref() == Some(&ask.tokens))
                        {
                            Some(end) => ask.answer(end.clone()),
                            None => {
                                asked.push(ask);
                                break;
                            }
                        },
                        // The broker is gone: nothing more to hear.
                        None => asks = None,
                    },
                    () = &mut shutdown => break 'run Ok(StopReason::Asked),
                }
            }
        };
        pending.drain(..).for_each(|e| on_event(&e));
        if let Source::Fleet(sync) = &self.source {
            // A lock dropped by the last step is freed before the agent returns.
            sync.fleet.settle().await;
        }
        on_event(&AgentEvent::now(stopped(&ended)));
        // A claim that is no longer current removes nothing (the files are another's now).
        drop(claim);
        ended.map(|_| ())
    }

    /// Checks that the agent still watches, and holds the claim of, the directory of auth.json
    /// ([`Home::check`]). A directory or claim file found missing may be in the middle of a
    /// re-creation: the agent waits [`SETTLE`] (writing nothing) and looks again. A directory
    /// replaced, or a claim file lost in the same directory: it claims the store again and
    /// watches the directory now there.
    ///
    /// # Errors
    /// [`AgentError::Watch`] when the directory is still gone after [`SETTLE`] or the new one
    /// cannot be watched; [`AgentError::Store`] when the store cannot be claimed again, with
    /// [`StoreError::AgentRunning`] when another agent claimed it meanwhile.
    async fn keep_home<S: Future<Output = ()>>(
        &mut self,
        claim: &mut AgentClaim,
        home: &mut Home,
        shutdown: &mut Pin<&mut S>,
        on_event: &mut impl FnMut(&AgentEvent),
    ) -> Result<Attachment, AgentError> {
        let mut found = home.check(claim);
        if matches!(found, Found::Gone | Found::ClaimLost) {
            home.watch.disarm();
            tokio::select! {
                () = tokio::time::sleep(SETTLE) => {}
                () = shutdown.as_mut() => return Ok(Attachment::Stop),
            }
            found = home.check(claim);
        }
        let reason = match found {
            Found::Intact => return Ok(Attachment::Intact),
            Found::Gone => {
                return Err(AgentError::Watch {
                    path: home.dir.clone(),
                    reason: format!(
                        "it was removed while the agent ran, and nothing replaced it within {} s \
                         (start the agent again once it exists)",
                        SETTLE.as_secs()
                    ),
                })
            }
            Found::Replaced => ReattachReason::HomeReplaced,
            Found::ClaimLost => ReattachReason::ClaimLost,
        };
        let store = self.core.manager.store().clone();
        let status = AgentStatus::new(self.core.started, AgentState::Idle, None);
        let fresh = store.claim_agent(&status)?;
        std::mem::replace(claim, fresh).abandon();
        self.core.published = Some(status);
        *home = Home::attach(store.path(), &store.agent_lock_path())?;
        on_event(&AgentEvent::now(AgentEventKind::Reattached {
            auth_json: store.path().to_path_buf(),
            reason,
        }));
        Ok(Attachment::Reattached)
    }

    /// Reads auth.json (and the fleet's record), and refreshes when it is due.
    async fn step(&mut self, claim: &AgentClaim, on_event: &mut impl FnMut(&AgentEvent)) -> Plan {
        match &mut self.source {
            Source::Fleet(sync) => sync.step(&mut self.core, claim, on_event).await,
            Source::Local => {
                let plan = self.core.step_local_schedule(on_event);
                let urgency = self.core.urgency();
                if let Some(plan) = plan.filter(|p| urgency != Urgency::Now || !p.not_due()) {
                    return plan;
                }
                self.core.refresh_local(claim, urgency, on_event).await
            }
        }
    }
}

impl Core {
    /// Publishes the status, unless it is the one published last.
    fn publish(&mut self, claim: &AgentClaim, state: AgentState, next: Option<SystemTime>) {
        let status = AgentStatus::new(self.started, state, next);
        if self.published.as_ref() == Some(&status) {
            return;
        }
        match claim.publish(&status) {
            Ok(()) => self.published = Some(status),
            Err(e) => tracing::warn!(error = %e, "could not publish the agent's status"),
        }
    }

    /// Reads auth.json: reports what changed, and says what to do unless a refresh is due now
    /// (`None`).
    fn step_local_schedule(&mut self, on_event: &mut impl FnMut(&AgentEvent)) -> Option<Plan> {
        let before = self.manager.cached();
        let current = match self.manager.reload() {
            Ok(current) => current,
            Err(e) => return Some(self.failed(&e, on_event)),
        };
        let Some(auth) = current else {
            let hint = signed_out_hint(self.manager.store());
            return Some(self.go_idle(IdleReason::SignedOut, &hint, on_event));
        };
        if auth.mode() != Mode::Chatgpt {
            return Some(self.go_idle(
                IdleReason::ApiKey,
                "API keys never need a refresh; nothing to do until a ChatGPT sign-in",
                on_event,
            ));
        }
        let was_idle = self.idle.take();
        if let Some(before) = before.filter(|b| b.generation() != auth.generation()) {
            if before.refresh_fingerprint() != auth.refresh_fingerprint()
                || before.bearer().fingerprint() != auth.bearer().fingerprint()
            {
                on_event(&self.adopted(&auth));
            }
        }
        if self.refused == Some(auth.generation()) {
            self.ask_end.clone_from(&self.refused_end);
            return Some(Plan::UntilChange(AgentState::Refused));
        }
        let was_refused = self.refused.take().is_some();
        self.refused_end = None;
        let config = self.manager.config().clone();
        let not_before = self
            .not_before
            .filter(|(generation, _)| *generation == auth.generation())
            .map(|(_, at)| at);
        let due = schedule::refresh_at(auth.due_at(&config), not_before);
        // Leaving a state in which it sent nothing is an event of its own: the log's last word
        // is never `idle` (or a refusal) while the agent works.
        if was_idle.is_some() || was_refused {
            on_event(&AgentEvent::now(AgentEventKind::Resumed {
                from: if was_refused {
                    ResumedFrom::Refused
                } else {
                    ResumedFrom::Idle
                },
                reason: was_idle.filter(|_| !was_refused),
                access: auth.bearer().fingerprint(),
                refresh: auth.refresh_fingerprint().map(str::to_owned),
                next_refresh: Some(rfc3339(due.max(SystemTime::now()))),
            }));
        }
        if due > SystemTime::now() {
            return Some(Plan::At(due, AgentState::Waiting));
        }
        None
    }

    /// Refreshes this machine's auth.json through the guarded protocol, when due or (`urgency`
    /// [`Urgency::Now`]) asked to.
    async fn refresh_local(
        &mut self,
        claim: &AgentClaim,
        urgency: Urgency,
        on_event: &mut impl FnMut(&AgentEvent),
    ) -> Plan {
        self.publish(claim, AgentState::Refreshing, None);
        // Never waits for the refresh lock when due: if another process is refreshing, its
        // write wakes the agent (and a stop never waits behind it).
        match self.manager.run(urgency).await {
            Ok(RefreshOutcome::NotNeeded) if self.still_due() => {
                Plan::At(SystemTime::now() + BUSY_RETRY, AgentState::Waiting)
            }
            Ok(outcome) => {
                self.backoff.reset();
                let Some(now) = self.manager.cached() else {
                    return Plan::Again;
                };
                let next = self.next_due(&now);
                if outcome == RefreshOutcome::Refreshed {
                    self.not_before = Some((now.generation(), next));
                }
                match outcome {
                    RefreshOutcome::Refreshed => {
                        on_event(&AgentEvent::now(AgentEventKind::Refreshed {
                            access: now.bearer().fingerprint(),
                            refresh: now.refresh_fingerprint().map(str::to_owned),
                            next_refresh: Some(rfc3339(next)),
                        }))
                    }
                    RefreshOutcome::AdoptedFromDisk => on_event(&self.adopted(&now)),
                    RefreshOutcome::NotNeeded => {}
                }
                Plan::At(next, AgentState::Waiting)
            }
            Err(RefreshError::AccountChanged { .. } | RefreshError::LoggedOut { .. }) => {
                Plan::Again
            }
            Err(e) => self.failed(&e, on_event),
        }
    }

    /// When to refresh `auth` (just obtained or adopted) next: its due time; when that has
    /// passed already (the tokens live shorter than the lead, or the clock runs ahead), half
    /// the time left, and never sooner than [`MIN_REFRESH_INTERVAL`].
    fn next_due(&self, auth: &CodexAuth) -> SystemTime {
        schedule::next_after_refresh(
            auth.due_at(self.manager.config()),
            auth.expires_at(),
            SystemTime::now(),
        )
    }

    /// Whether the cached credentials are still due (a refresh found another under way).
    fn still_due(&self) -> bool {
        self.manager
            .cached()
            .is_some_and(|a| a.is_due(SystemTime::now(), self.manager.config()))
    }

    fn adopted(&self, auth: &Arc<CodexAuth>) -> AgentEvent {
        AgentEvent::now(AgentEventKind::Adopted {
            access: auth.bearer().fingerprint(),
            refresh: auth.refresh_fingerprint().map(str::to_owned),
            next_refresh: auth.due_at(self.manager.config()).map(rfc3339),
        })
    }

    /// How urgently this step refreshes: now when a broker asked about the current token, else
    /// when due (never waiting for another process's refresh).
    fn urgency(&self) -> Urgency {
        let asked = self
            .cached_tokens()
            .is_some_and(|current| self.asked.contains(&current));
        if asked {
            Urgency::Now
        } else {
            Urgency::IfDueUnlessBusy
        }
    }

    /// The fingerprints of the cached tokens, as an ask names them.
    fn cached_tokens(&self) -> Option<Tokens> {
        self.manager.cached().map(|auth| Tokens {
            refresh: auth.refresh_fingerprint().unwrap_or_default().to_owned(),
            access: auth.bearer().fingerprint(),
        })
    }

    /// What a broker's ask about the token just refused is answered: the refusal, with the
    /// endpoint's own answer when this agent heard it.
    fn refusal_end(&self, reason: &crate::error::PermanentReason) -> AskEnd {
        let answer = self
            .manager
            .cached()
            .and_then(|a| a.refresh_fingerprint().map(str::to_owned))
            .and_then(|fp| self.manager.client().refusal_of(&fp));
        AskEnd::Refused {
            reason: reason.clone(),
            answer,
        }
    }

    fn go_idle(
        &mut self,
        reason: IdleReason,
        hint: &str,
        on_event: &mut impl FnMut(&AgentEvent),
    ) -> Plan {
        self.ask_end = Some(if leaves_login_alone(reason) {
            AskEnd::LeftAlone
        } else {
            AskEnd::Failed(hint.to_owned())
        });
        self.backoff.reset();
        if self.idle != Some(reason) {
            self.idle = Some(reason);
            on_event(&AgentEvent::now(AgentEventKind::Idle {
                reason,
                hint: hint.to_owned(),
            }));
        }
        Plan::UntilChange(AgentState::Idle)
    }

    fn failed(&mut self, error: &RefreshError, on_event: &mut impl FnMut(&AgentEvent)) -> Plan {
        let class = error.class();
        if class == ErrorClass::UnsupportedMode {
            return self.go_idle(
                IdleReason::UnsupportedMode,
                "auth.json holds credentials of a mode codex-store does not refresh; `codex` itself keeps them",
                on_event,
            );
        }
        if class == ErrorClass::SignInRequired {
            self.refused = self.manager.cached().map(|a| a.generation());
            let end = match error {
                RefreshError::Permanent { reason } => self.refusal_end(reason),
                other => AskEnd::Failed(other.to_string()),
            };
            self.ask_end = Some(end.clone());
            self.refused_end = Some(end);
            on_event(&AgentEvent::now(AgentEventKind::Failed {
                class: FailureClass::SignInRequired,
                message: format!(
                    "{error}; the agent will not send these credentials again: sign in again \
                     (`codex login`), and it resumes by itself"
                ),
                next_attempt: None,
            }));
            return Plan::UntilChange(AgentState::Refused);
        }
        self.ask_end = Some(AskEnd::Failed(error.to_string()));
        let delay = self.backoff.next_delay();
        let at = SystemTime::now() + delay;
        on_event(&AgentEvent::now(AgentEventKind::Failed {
            class: FailureClass::from(class),
            message: error.to_string(),
            next_attempt: Some(rfc3339(at)),
        }));
        Plan::At(at, AgentState::Retrying)
    }
}

/// The `stopped` event of a run that `ended` so.
fn stopped(ended: &Result<StopReason, AgentError>) -> AgentEventKind {
    let (reason, message) = match ended {
        Ok(StopReason::AskedRequestUnanswered) => (
            StopReason::AskedRequestUnanswered,
            "asked to stop; the token endpoint did not answer the request in flight within the \
             HTTP timeout"
                .to_owned(),
        ),
        Ok(reason) => (*reason, "asked to stop".to_owned()),
        Err(e) => (StopReason::Failed, e.to_string()),
    };
    AgentEventKind::Stopped { reason, message }
}

/// What to do about a home without credentials: sign in; or, when Codex keeps the login in the
/// OS keyring (`cli_auth_credentials_store` in its `config.toml`), the setting that keeps it in
/// auth.json, where the agent can keep it fresh.
fn signed_out_hint(store: &Store) -> String {
    use codex_store::codex_config::{credentials_store, CREDENTIALS_STORE_KEY};
    match credentials_store(store.home()) {
        Ok(elsewhere) if elsewhere.may_bypass_auth_json() => format!(
            "no credentials in auth.json: Codex's config.toml says `{CREDENTIALS_STORE_KEY} = \
             \"{elsewhere}\"`, so Codex keeps the login in the OS keyring, where the agent cannot \
             keep it fresh; set `{CREDENTIALS_STORE_KEY} = \"file\"` and sign in again (`codex \
             login`), and the agent takes over"
        ),
        _ => "no credentials in auth.json; sign in (`codex login`) and the agent takes over"
            .to_owned(),
    }
}

impl From<ErrorClass> for FailureClass {
    fn from(class: ErrorClass) -> Self {
        match class {
            ErrorClass::SignInRequired => FailureClass::SignInRequired,
            ErrorClass::Transient => FailureClass::Transient,
            ErrorClass::LockTimeout => FailureClass::LockTimeout,
            ErrorClass::Corrupt => FailureClass::Corrupt,
            // Reported as `idle (unsupported_mode)` before a class is named (see `failed`).
            ErrorClass::UnsupportedMode => FailureClass::Other,
            ErrorClass::Other => FailureClass::Other,
        }
    }
}

/// What the fleet's feed said while the agent waited.
enum FleetNews {
    /// The record changed since the agent's last look.
    Changed,
    /// The watch failed: its `failed (fleet_watch)` event, and the feed's count of failures.
    Failed(AgentEvent, u64),
}

/// Resolves when the feed's record changed from the revision the agent last looked at
/// (`used`), in a view recent enough to be believed (`fresh_from`: an older one would only make
/// the agent read again, at once, until the feed caught up), or with a failure of the feed's
/// watch not reported yet (`reported`: how many were); never without a fleet.
async fn fleet_changed(remote: Option<fleet::FeedNews>) -> FleetNews {
    let Some(fleet::FeedNews {
        mut feed,
        used,
        fresh_from,
        reported,
    }) = remote
    else {
        return std::future::pending().await;
    };
    loop {
        {
            let state = feed.borrow_and_update();
            if let Some((message, at)) =
                state.failure.as_ref().filter(|_| state.failures > reported)
            {
                return FleetNews::Failed(
                    AgentEvent::now(AgentEventKind::Failed {
                        class: FailureClass::FleetWatch,
                        message: message.clone(),
                        next_attempt: Some(rfc3339(*at)),
                    }),
                    state.failures,
                );
            }
            if state
                .view
                .as_ref()
                .is_some_and(|view| view.revision >= fresh_from && view.record_at != used)
            {
                return FleetNews::Changed;
            }
        }
        if feed.changed().await.is_err() {
            // The feed lives as long as the agent: nothing more to hear.
            return std::future::pending().await;
        }
    }
}

/// Whether an agent idle for `reason` leaves auth.json's login alone because it is not the
/// fleet's (another account's: a broker then refreshes it as any process would). Every other
/// idle state of a fleet (no login, none usable, an older state, a conflict) is one every
/// machine reaches together, each still holding the fleet's token: only the fleet's lock may
/// decide who sends it, so nothing is sent until the fleet is repaired.
fn leaves_login_alone(reason: IdleReason) -> bool {
    reason == IdleReason::AnotherAccountHere
}

/// Answers the asks whose tokens are no longer auth.json's ([`AskEnd::Moved`]), then, when
/// the step could not refresh (`end`), the others with that; the rest wait for the next step.
fn answer_asks(asked: &mut Vec<Ask>, store: &Store, end: Option<AskEnd>) {
    if asked.is_empty() {
        return;
    }
    let current = store.load().ok().and_then(|snapshot| {
        snapshot
            .auth()
            .and_then(|doc| doc.tokens.as_ref())
            .map(|t| Tokens {
                refresh: t.refresh_token.fingerprint(),
                access: t.access_token.fingerprint(),
            })
    });
    let (moved, still): (Vec<Ask>, Vec<Ask>) = asked
        .drain(..)
        .partition(|ask| current.as_ref() != Some(&ask.tokens));
    moved.into_iter().for_each(|ask| ask.answer(AskEnd::Moved));
    match end {
        Some(end) => still.into_iter().for_each(|ask| ask.answer(end.clone())),
        None => *asked = still,
    }
}

/// The next ask of a broker; never without one.
async fn next_ask(asks: &mut Option<RefreshAsks>) -> Option<Ask> {
    match asks {
        Some(asks) => asks.rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
