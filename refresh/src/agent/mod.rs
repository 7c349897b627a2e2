//! [`Agent`]: one refresher per login, so that the processes sharing auth.json (Codex terminals,
//! editor extensions, app servers) never have to refresh.
//!
//! The agent keeps one store's credentials fresh through the guarded protocol, a lead time
//! ([`AgentConfig::lead`]) before the access token expires. A Codex process refreshes only
//! within 5 minutes of expiry, and re-reads auth.json first: with a lead above 5 minutes it
//! finds fresh tokens on disk and sends nothing. The agent sleeps until the next due time or a
//! change of the file (the platform's file notifications, no polling), adopts what others
//! write, retries transient failures with capped exponential backoff and jitter, stops retrying
//! credentials the endpoint refused for good, and resumes when a new sign-in appears.
//!
//! Modelled on HashiCorp Vault Agent's auto-auth: one process owns the renewal, the others read
//! the sink (here: auth.json itself).

mod event;
mod fleet;
mod fleet_sync;
mod schedule;
mod watch;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use codex_store::{AgentClaim, AgentState, AgentStatus, Store, StoreError};

use crate::auth::{CodexAuth, Mode};
use crate::config::{RefreshConfig, WhileRefreshing};
use crate::error::{ErrorClass, RefreshError};
use crate::manager::AuthManager;
use crate::outcome::RefreshOutcome;
use crate::protocol::Urgency;

use event::rfc3339;
pub use event::{AgentEvent, AgentEventKind};
use schedule::{wake_at, Backoff};
use watch::FileWatch;

/// Codex's own refresh window: it refreshes when the access token expires within 5 minutes.
/// The agent's lead must exceed it.
pub const CODEX_REFRESH_WINDOW: Duration = Duration::from_secs(5 * 60);

/// After a refresh, the agent does not refresh again for at least this long, even if the new
/// token is already within the lead time (a lead longer than the tokens' lifetime).
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(60);

/// When another process holds the refresh lock, the agent looks again after this long (its
/// write wakes the agent sooner).
const BUSY_RETRY: Duration = Duration::from_secs(2);

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

/// What the agent does next.
enum Plan {
    /// Refresh at this time (the next due time, or the next retry).
    At(SystemTime, AgentState),
    /// Nothing until auth.json changes.
    UntilChange(AgentState),
    /// Look again at once (the file changed under a refresh).
    Again,
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
    manager: AuthManager,
    config: AgentConfig,
    backoff: Backoff,
    /// The generation the endpoint refused for good: not retried until the file changes.
    refused: Option<codex_store::Generation>,
    /// The reason of the last idle report, so that it is reported once.
    idle: Option<&'static str>,
    started: SystemTime,
    /// The fleet this machine belongs to, if any.
    fleet: Option<fleet::FleetSync>,
    /// After this agent's own refresh: the generation it wrote and the earliest time to
    /// refresh it again (its own write wakes it; tokens living shorter than the lead must not
    /// make it loop).
    not_before: Option<(codex_store::Generation, SystemTime)>,
    /// How long a `refresh_token_reused` answer waits for the rotation it means.
    reuse_wait: Duration,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("store", &self.manager.store().path())
            .field("lead", &self.config.lead)
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
            manager,
            backoff: Backoff::new(config.retry_initial, config.retry_max),
            config,
            refused: None,
            idle: None,
            started: SystemTime::now(),
            fleet: None,
            not_before: None,
            reuse_wait: manager_reuse_wait,
        })
    }

    /// The same agent for a machine of `fleet`: the login lives in etcd; this agent mirrors it
    /// into the local auth.json, uploads rotations made locally, and refreshes for every
    /// machine when it holds the fleet's lock (see [`crate::fleet`]).
    ///
    /// # Errors
    /// [`AgentError::Refresh`] when the refresh set-up cannot be rebuilt (it was built once
    /// already, so only in theory).
    pub fn with_fleet(mut self, fleet: crate::fleet::Fleet) -> Result<Agent, AgentError> {
        // With a fleet, the wait after `refresh_token_reused` watches the fleet record (where
        // another machine's rotation arrives), not the local file.
        let config = RefreshConfig {
            reuse_wait: Duration::ZERO,
            ..self.manager.config().clone()
        };
        self.manager = AuthManager::unloaded(self.manager.store().clone(), config)?;
        self.fleet = Some(fleet::FleetSync::new(fleet));
        Ok(self)
    }

    /// Runs until `shutdown` resolves: claims the store (one agent per auth.json), then keeps
    /// its credentials fresh, reporting each event to `on_event`. On shutdown no new request is
    /// sent; a request already sent is awaited (at most the HTTP timeout) so that its answer is
    /// saved, never lost. Nothing is left locked.
    ///
    /// # Errors
    /// [`AgentError::Store`] with [`StoreError::AgentRunning`] when another agent runs for this
    /// store (with its pid); [`AgentError::Watch`] when the directory cannot be watched. Refresh
    /// failures are events, not errors.
    ///
    /// # Security
    /// Events and the published status carry fingerprints of tokens, never tokens.
    pub async fn run(
        mut self,
        shutdown: impl Future<Output = ()>,
        mut on_event: impl FnMut(&AgentEvent),
    ) -> Result<(), AgentError> {
        let store = self.manager.store().clone();
        let claim = store.claim_agent(&AgentStatus::new(self.started, AgentState::Idle, None))?;
        let mut watch = FileWatch::new(&watch::dir_of(store.path()), store.path())?;
        on_event(&AgentEvent::now(AgentEventKind::Started {
            pid: std::process::id(),
            auth_json: store.path().to_path_buf(),
            lead_seconds: self.config.lead.as_secs(),
        }));
        tokio::pin!(shutdown);
        let manager = self.manager.clone();
        let grace = self.manager.config().http_timeout + Duration::from_secs(5);
        // Events are reported after the status is published, so that whoever reacts to an event
        // finds the status (`inspect`) already telling the same.
        let mut pending: Vec<AgentEvent> = Vec::new();
        let mut fleet_watch = WatchRetry::new();
        let reason = loop {
            // Changes signalled before this look are covered by it.
            watch.clear();
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
                            break "asked to stop; the token endpoint did not answer the request in flight within the HTTP timeout";
                        }
                        break "asked to stop";
                    }
                }
            };
            let (state, wake) = match plan {
                Plan::Again => {
                    pending.drain(..).for_each(|e| on_event(&e));
                    continue;
                }
                Plan::At(at, state) => (state, Some(at)),
                Plan::UntilChange(state) => (state, None),
            };
            self.publish(&claim, state, wake);
            pending.drain(..).for_each(|e| on_event(&e));
            let remote = self.fleet.as_ref().map(|f| (Arc::clone(&f.fleet), f.seen));
            // A failed watch of the fleet record is reported and retried after its backoff,
            // in every state, without a new step: a machine never goes deaf to the fleet.
            let stop = loop {
                tokio::select! {
                    () = sleep_until(wake) => break false,
                    () = watch.changed() => break false,
                    failure = fleet_changed(remote.clone(), &mut fleet_watch) => match failure {
                        None => break false,
                        Some(event) => on_event(&event),
                    },
                    () = &mut shutdown => break true,
                }
            };
            if stop {
                break "asked to stop";
            }
        };
        pending.drain(..).for_each(|e| on_event(&e));
        on_event(&AgentEvent::now(AgentEventKind::Stopped {
            reason: reason.to_owned(),
        }));
        drop(claim);
        Ok(())
    }

    fn publish(&self, claim: &AgentClaim, state: AgentState, next: Option<SystemTime>) {
        if let Err(e) = claim.publish(&AgentStatus::new(self.started, state, next)) {
            tracing::warn!(error = %e, "could not publish the agent's status");
        }
    }

    /// Reads auth.json, and refreshes when it is due.
    async fn step(&mut self, claim: &AgentClaim, on_event: &mut impl FnMut(&AgentEvent)) -> Plan {
        if self.fleet.is_some() {
            return self.step_fleet(claim, on_event).await;
        }
        if let Some(plan) = self.step_local_schedule(on_event) {
            return plan;
        }
        self.refresh_local(claim, on_event).await
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
            return Some(self.go_idle(
                "signed_out",
                "no credentials in auth.json; sign in (`codex login`) and the agent takes over",
                on_event,
            ));
        };
        if auth.mode() != Mode::Chatgpt {
            return Some(self.go_idle(
                "api_key",
                "API keys never need a refresh; nothing to do until a ChatGPT sign-in",
                on_event,
            ));
        }
        self.idle = None;
        if let Some(before) = before.filter(|b| b.generation() != auth.generation()) {
            if before.refresh_fingerprint() != auth.refresh_fingerprint()
                || before.bearer().fingerprint() != auth.bearer().fingerprint()
            {
                on_event(&self.adopted(&auth));
            }
        }
        if self.refused == Some(auth.generation()) {
            return Some(Plan::UntilChange(AgentState::Refused));
        }
        self.refused = None;
        let config = self.manager.config().clone();
        let mut due = auth.due_at(&config).unwrap_or(SystemTime::UNIX_EPOCH);
        if let Some((generation, not_before)) = self.not_before {
            if generation == auth.generation() {
                due = due.max(not_before);
            }
        }
        if due > SystemTime::now() {
            return Some(Plan::At(due, AgentState::Waiting));
        }
        None
    }

    /// Refreshes this machine's auth.json through the guarded protocol.
    async fn refresh_local(
        &mut self,
        claim: &AgentClaim,
        on_event: &mut impl FnMut(&AgentEvent),
    ) -> Plan {
        self.publish(claim, AgentState::Refreshing, None);
        // Never waits for the refresh lock: if another process is refreshing, its write wakes
        // the agent (and a stop never waits behind it).
        match self.manager.run(Urgency::IfDueUnlessBusy).await {
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
        let now = SystemTime::now();
        let due = auth
            .due_at(self.manager.config())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        if due > now {
            return due;
        }
        let left = auth
            .expires_at()
            .and_then(|exp| exp.duration_since(now).ok())
            .unwrap_or_default();
        now + (left / 2).max(MIN_REFRESH_INTERVAL)
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

    fn go_idle(
        &mut self,
        reason: &'static str,
        hint: &str,
        on_event: &mut impl FnMut(&AgentEvent),
    ) -> Plan {
        self.backoff.reset();
        if self.idle != Some(reason) {
            self.idle = Some(reason);
            on_event(&AgentEvent::now(AgentEventKind::Idle {
                reason: reason.to_owned(),
                hint: hint.to_owned(),
            }));
        }
        Plan::UntilChange(AgentState::Idle)
    }

    fn failed(&mut self, error: &RefreshError, on_event: &mut impl FnMut(&AgentEvent)) -> Plan {
        let class = error.class();
        if class == ErrorClass::UnsupportedMode {
            return self.go_idle(
                "unsupported_mode",
                "auth.json holds credentials of a mode codex-store does not refresh; `codex` itself keeps them",
                on_event,
            );
        }
        if class == ErrorClass::SignInRequired {
            self.refused = self.manager.cached().map(|a| a.generation());
            on_event(&AgentEvent::now(AgentEventKind::Failed {
                class: "sign_in_required".into(),
                message: format!(
                    "{error}; the agent will not send these credentials again: sign in again \
                     (`codex login`), and it resumes by itself"
                ),
                next_attempt: None,
            }));
            return Plan::UntilChange(AgentState::Refused);
        }
        let delay = self.backoff.next_delay();
        let at = SystemTime::now() + delay;
        on_event(&AgentEvent::now(AgentEventKind::Failed {
            class: class_name(class).into(),
            message: error.to_string(),
            next_attempt: Some(rfc3339(at)),
        }));
        Plan::At(at, AgentState::Retrying)
    }
}

fn class_name(class: ErrorClass) -> &'static str {
    match class {
        ErrorClass::SignInRequired => "sign_in_required",
        ErrorClass::Transient => "transient",
        ErrorClass::LockTimeout => "lock_timeout",
        ErrorClass::Corrupt => "corrupt",
        ErrorClass::UnsupportedMode => "unsupported_mode",
        ErrorClass::Other => "other",
    }
}

/// The first delay before a failed watch of the fleet record is tried again; it doubles with
/// each failure in a row, up to [`WATCH_RETRY_MAX`].
const WATCH_RETRY_INITIAL: Duration = Duration::from_secs(1);

/// The longest delay between two attempts to watch the fleet record.
const WATCH_RETRY_MAX: Duration = Duration::from_secs(60);

/// The backoff of the fleet record's watch, kept across the agent's steps: a watch that fails
/// at once (etcd refusing it, a connection refused) is tried again only when its delay passed,
/// whatever woke the agent meanwhile.
struct WatchRetry {
    backoff: Backoff,
    /// No new watch before this.
    not_before: Option<tokio::time::Instant>,
    /// What the last watch reported, for the read it started from: `(seen, revision)`. Until
    /// the agent reads again (a step whose read failed retries on its own backoff), the next
    /// watch starts after `revision`, so that one change never wakes the agent twice.
    heard: Option<(i64, i64)>,
}

impl WatchRetry {
    fn new() -> Self {
        WatchRetry {
            backoff: Backoff::new(WATCH_RETRY_INITIAL, WATCH_RETRY_MAX),
            not_before: None,
            heard: None,
        }
    }
}

/// Resolves with `None` when the fleet record changes after `seen`, when etcd compacted the
/// history since (read again), or when the watch ran for [`schedule::MAX_SLEEP`]; with a
/// `failed (fleet_watch)` event when the watch failed (etcd unreachable, the stream broken, a
/// member without a leader, the watch refused): the next call watches again from `seen`, after
/// the backoff, so that a change made meanwhile is still seen. Never resolves without a fleet.
async fn fleet_changed(
    remote: Option<(Arc<crate::fleet::Fleet>, i64)>,
    retry: &mut WatchRetry,
) -> Option<AgentEvent> {
    let Some((fleet, seen)) = remote else {
        return std::future::pending().await;
    };
    if let Some(at) = retry.not_before {
        tokio::time::sleep_until(at).await;
    }
    let after = match retry.heard {
        Some((from, revision)) if from == seen => revision.max(seen),
        _ => seen,
    };
    let started = tokio::time::Instant::now();
    match fleet
        .etcd
        .wait_change(&fleet.record_key(), after, schedule::MAX_SLEEP)
        .await
    {
        Ok(watched) => {
            retry.backoff.reset();
            retry.not_before = None;
            if let Some(revision) = watched.heard() {
                retry.heard = Some((seen, revision));
            }
            None
        }
        Err(e) => {
            // A watch that stayed open for the longest delay was working: its end starts a new
            // series of attempts.
            if started.elapsed() >= WATCH_RETRY_MAX {
                retry.backoff.reset();
            }
            let delay = retry.backoff.next_delay();
            retry.not_before = Some(tokio::time::Instant::now() + delay);
            Some(AgentEvent::now(AgentEventKind::Failed {
                class: "fleet_watch".into(),
                message: format!("cannot watch the fleet record for changes: {e}"),
                next_attempt: Some(rfc3339(SystemTime::now() + delay)),
            }))
        }
    }
}

async fn sleep_until(at: Option<SystemTime>) {
    match at {
        Some(at) => tokio::time::sleep_until(wake_at(at).into()).await,
        None => std::future::pending().await,
    }
}
