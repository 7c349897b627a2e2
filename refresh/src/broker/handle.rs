//! One request: the rate, the path, the body, the route, and the answer.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request};

use codex_store::{Generation, JournalEvent, JournalRecord, Secret};

use super::answer::{self, Answer};
use super::home::Home;
use super::limit::TokenBucket;
use super::request::{read_body, refresh_token_of};
use super::route::{route, same, Route};
use super::{BrokerConfig, HEALTH_PATH, TOKEN_PATH};
use crate::agent::{AskEnd, RefreshAsker};
use crate::error::{PermanentReason, RefreshError};
use crate::manager::AuthManager;

/// What a caller is told when the home cannot be read (the details, which name paths, go to
/// the log only).
const HOME_UNREADABLE: &str = "the broker cannot read its home for now; try again later";

/// How many rotations a broker remembers having seen itself (beside the journal's).
const LEARNED: usize = 64;

/// Who refreshes the current token for a caller.
#[derive(Debug)]
pub(crate) enum Refresher {
    /// The broker, through its manager's guarded protocol.
    Itself,
    /// The home's agent, asked to ([`crate::Agent::answering`]).
    Agent(RefreshAsker),
}

/// What every connection of a broker shares.
pub(crate) struct Shared {
    pub(crate) manager: AuthManager,
    pub(crate) config: BrokerConfig,
    pub(crate) refresher: Refresher,
    pub(crate) bucket: TokenBucket,
    /// The rotations this broker saw itself (a token presented, refreshed by the agent to
    /// another), as journal records, the last [`LEARNED`]: a rotation the agent could not
    /// journal (the refresh lock was busy) still makes its token a predecessor.
    pub(crate) learned: std::sync::Mutex<Vec<JournalRecord>>,
    /// One decision at a time, from reading the home to the answer of its refresh: a caller
    /// that presents the current token while another caller's refresh of it is under way
    /// waits for it and then finds its token a predecessor, instead of refreshing again.
    /// (Forwarding an unknown token happens outside it.)
    pub(crate) decide: tokio::sync::Mutex<()>,
}

/// Answers `request`.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Answer, Infallible> {
    Ok(respond(&shared, request).await)
}

async fn respond(shared: &Shared, request: Request<Incoming>) -> Answer {
    if let Err(wait) = shared.bucket.take(Instant::now()) {
        tracing::debug!(?wait, "over the token broker's rate: answered 429");
        return answer::too_many_requests(wait);
    }
    match (request.uri().path(), request.method()) {
        (TOKEN_PATH, &Method::POST) => token(shared, request).await,
        (TOKEN_PATH, _) => answer::method_not_allowed(),
        (HEALTH_PATH, &Method::GET) => answer::health(),
        _ => answer::not_found(),
    }
}

/// A token request: refused unless it presents a refresh token; then routed.
async fn token(shared: &Shared, request: Request<Incoming>) -> Answer {
    let config = &shared.config;
    let presented = read_body(request, config.max_body, config.body_timeout)
        .await
        .and_then(|body| refresh_token_of(&body).map(|token| (token, body)));
    let (presented, body) = match presented {
        Ok(presented) => presented,
        Err(why) => {
            tracing::info!(
                why,
                "a token request presents no refresh token: answered 400"
            );
            return answer::invalid_request(why);
        }
    };
    let fingerprint = presented.fingerprint();
    let decision = shared.decide.lock().await;
    // The manager's cache first, then the read the route is decided on: a rotation by another
    // process between the two is then a token the manager adopts, never one it sends because a
    // caller presented its predecessor.
    if let Err(e) = adopt_home(&shared.manager).await {
        tracing::warn!(presented = %fingerprint, error = %e, "the home cannot be adopted: answered 503");
        return answer::unavailable(HOME_UNREADABLE);
    }
    let home = match Home::read(&shared.manager).await {
        Ok(home) => home,
        Err(e) => {
            tracing::warn!(presented = %fingerprint, error = %e, "the home cannot be read: answered 503");
            return answer::unavailable(HOME_UNREADABLE);
        }
    };
    let route = route(
        &presented,
        home.refresh_token(),
        &shared.with_learned(&home.records),
        SystemTime::now(),
        config.grace,
    );
    tracing::info!(presented = %fingerprint, route = route.name(), "token request");
    match route {
        Route::Current => match &shared.refresher {
            Refresher::Itself => refresh(shared, &fingerprint, &home).await,
            Refresher::Agent(asker) => {
                refresh_through_agent(shared, asker, &presented, &fingerprint, &home).await
            }
        },
        Route::Predecessor => match &home.tokens {
            Some(tokens) => answer::tokens(tokens),
            None => answer::unavailable("the home holds no tokens"),
        },
        Route::Spent => {
            tracing::info!(presented = %fingerprint, "a token this home redeemed for a successor: answered refresh_token_reused, not sent");
            answer::refused(None, &PermanentReason::Reused)
        }
        Route::Unknown if home.journal_unreadable && home.tokens.is_some() => {
            tracing::warn!(presented = %fingerprint, "the journal cannot be read: a token that is not the current one is not forwarded (it may be one this home redeemed); answered 503");
            answer::unavailable(
                "the broker cannot tell this token from one it redeemed; try again later",
            )
        }
        Route::Unknown => {
            drop(decision);
            forward(shared, &fingerprint, body).await
        }
    }
}

/// Refreshes the current token (of `before`, whose fingerprint `fingerprint` the caller
/// presented) through the guarded protocol and answers the tokens it ends with, or the
/// endpoint's refusal, or 503.
async fn refresh(shared: &Shared, fingerprint: &str, before: &Home) -> Answer {
    let manager = &shared.manager;
    match manager.refresh().await {
        Ok(outcome) => {
            let after = match Home::read(manager).await {
                Ok(after) => after,
                Err(e) => {
                    tracing::warn!(presented = %fingerprint, error = %e, "the home cannot be read after the refresh: answered 503");
                    return answer::unavailable(HOME_UNREADABLE);
                }
            };
            // The caller presented this login's token: it gets this login's tokens, never
            // another account's that signed in meanwhile.
            match after
                .tokens
                .as_ref()
                .filter(|_| after.account() == before.account())
            {
                Some(tokens) => {
                    tracing::info!(
                        presented = %fingerprint,
                        ?outcome,
                        answered = %tokens.refresh_token.fingerprint(),
                        "refreshed for a caller"
                    );
                    answer::tokens(tokens)
                }
                None => answer::unavailable(
                    "auth.json changed to another login (or none) during the refresh; try again",
                ),
            }
        }
        Err(RefreshError::Permanent { reason }) => {
            tracing::info!(presented = %fingerprint, code = %reason.code(), "the token endpoint refused the refresh: its refusal answered");
            answer::refused(manager.client().refusal_of(fingerprint), &reason)
        }
        Err(e) => {
            tracing::warn!(presented = %fingerprint, error = %e, "the refresh failed: answered 503");
            answer::unavailable("the refresh failed for now; try again later")
        }
    }
}

impl Shared {
    /// The journal's `records` and the rotations this broker saw, by time (a `mirrored` record
    /// that waited for the refresh lock is appended after later ones; a record whose time does
    /// not parse counts as the oldest).
    fn with_learned(&self, records: &[JournalRecord]) -> Vec<JournalRecord> {
        let learned = self.learned.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<JournalRecord> = records.iter().chain(learned.iter()).cloned().collect();
        drop(learned);
        all.sort_by_cached_key(|r| r.time().unwrap_or(SystemTime::UNIX_EPOCH));
        all
    }

    /// Remembers that the token of fingerprint `from` moved on to `to` (of `account`).
    fn learn(&self, from: &str, to: &str, account: Option<String>) {
        let mut record = JournalRecord::new(JournalEvent::Mirrored, Generation::Absent);
        record.generation = None;
        record.account = account;
        record.refresh = Some(from.to_owned());
        record.new_refresh = Some(to.to_owned());
        let mut learned = self.learned.lock().unwrap_or_else(|p| p.into_inner());
        learned.push(record);
        let excess = learned.len().saturating_sub(LEARNED);
        learned.drain(..excess);
    }
}

/// Has the home's agent refresh the current token `presented` (of fingerprint `fingerprint`,
/// read with `before`) and answers the tokens auth.json then holds: the agent's new ones, or
/// those of another machine's rotation it mirrored meanwhile. The endpoint's refusal when it
/// refused; 503 when the agent could not refresh, stopped, or took longer than
/// [`BrokerConfig::agent_wait`].
async fn refresh_through_agent(
    shared: &Shared,
    asker: &RefreshAsker,
    presented: &Secret,
    fingerprint: &str,
    before: &Home,
) -> Answer {
    let wait = shared.config.agent_wait;
    let end = tokio::time::timeout(wait, asker.ask(fingerprint.to_owned())).await;
    let after = match Home::read(&shared.manager).await {
        Ok(after) => after,
        Err(e) => {
            tracing::warn!(presented = %fingerprint, error = %e, "the home cannot be read after the agent's refresh: answered 503");
            return answer::unavailable(HOME_UNREADABLE);
        }
    };
    // The caller presented this login's current token: it gets this login's tokens once they
    // moved on, never another account's that signed in meanwhile.
    let moved = after
        .tokens
        .as_ref()
        .filter(|tokens| !same(&tokens.refresh_token, presented))
        .filter(|_| after.account() == before.account());
    if let Some(tokens) = moved {
        let answered = tokens.refresh_token.fingerprint();
        shared.learn(fingerprint, &answered, after.account());
        tracing::info!(presented = %fingerprint, answered = %answered, "refreshed by the agent for a caller");
        return answer::tokens(tokens);
    }
    match end {
        Ok(AskEnd::Refused { reason, answer }) => {
            tracing::info!(presented = %fingerprint, code = %reason.code(), "the token endpoint refused the refresh: its refusal answered");
            answer::refused(answer, &reason)
        }
        Ok(AskEnd::Failed(why)) => {
            tracing::warn!(presented = %fingerprint, error = %why, "the agent could not refresh: answered 503");
            answer::unavailable("the refresh failed for now; try again later")
        }
        Ok(AskEnd::Moved) => answer::unavailable(
            "auth.json changed to another login (or none) during the refresh; try again",
        ),
        Ok(AskEnd::Stopped) => {
            tracing::warn!(presented = %fingerprint, "the agent stopped: answered 503");
            answer::unavailable("the agent is stopping; try again later")
        }
        Err(_) => {
            tracing::warn!(presented = %fingerprint, wait = ?wait, "the agent did not refresh in time: answered 503");
            answer::unavailable("the refresh takes longer than the broker waits; try again later")
        }
    }
}

/// Makes the manager's cache what auth.json holds (so that its refresh redeems the token just
/// decided on, rather than adopting it as another process's new tokens), following a new
/// login or a sign-out: the broker serves whatever login the home holds.
async fn adopt_home(manager: &AuthManager) -> Result<(), RefreshError> {
    match manager.adopt_if_newer().await {
        Ok(_) => Ok(()),
        Err(RefreshError::AccountChanged { .. } | RefreshError::LoggedOut { .. }) => {
            manager.reload().map(drop)
        }
        Err(e) => Err(e),
    }
}

/// Forwards the request of an unknown token (`body`, unchanged) to the real endpoint and relays
/// its answer, storing nothing.
///
/// Why: a token this home does not know is none of its business. Without the broker, Codex
/// would have sent this very request to the endpoint; relaying it unchanged, and its answer
/// unchanged, makes the broker never worse than no broker (another login's token still
/// refreshes, a dead one still hears `refresh_token_reused`), and it reveals nothing of this
/// home to a caller that does not hold one of its tokens.
async fn forward(shared: &Shared, fingerprint: &str, body: Bytes) -> Answer {
    match shared.manager.client().forward(body.to_vec()).await {
        Ok(relayed) => {
            tracing::info!(presented = %fingerprint, status = relayed.status, "forwarded to the token endpoint");
            answer::relayed(relayed)
        }
        Err(e) => {
            tracing::warn!(presented = %fingerprint, error = %e, "forwarding to the token endpoint failed: answered 502");
            answer::no_upstream_answer(&e)
        }
    }
}
