//! One request: the rate, the path, the body, the route, and the answer.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request};

use codex_store::{Generation, JournalEvent, JournalRecord, Secret, Timestamp, TokenData};

use super::answer::{self, Answer};
use super::home::{Home, JournalCache};
use super::limit::TokenBucket;
use super::request::{read_body, refresh_token_of};
use super::route::{merged, route, Route};
use super::{BrokerConfig, HEALTH_PATH, TOKEN_PATH};
use crate::agent::{AskEnd, RefreshAsker, Rotations, Tokens};
use crate::error::{PermanentReason, RefreshError};
use crate::manager::AuthManager;

/// What a caller is told when auth.json moved to another login (or none) meanwhile.
const CHANGED: &str = "auth.json changed to another login (or none) during the refresh; try again";

/// What a caller is told when the home cannot be read (the details, which name paths, go to
/// the log only).
const HOME_UNREADABLE: &str = "the broker cannot read its home for now; try again later";

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
    /// The rotations seen in this process, beside the journal's: the agent's mirrors (known
    /// before auth.json is written, journaled or not yet) and the refreshes this broker saw the
    /// agent make (a token presented, another answered).
    pub(crate) rotations: Rotations,
    /// The journal as last parsed ([`JournalCache`]).
    pub(crate) journal: Arc<JournalCache>,
    /// How many token requests arrived (each takes a ticket before it waits for [`Shared::decide`]).
    pub(crate) arrivals: AtomicU64,
    /// The tokens the last refresh for a caller ended with, and how many requests had arrived
    /// when it did: a caller that arrived before and finds them still current was waiting for
    /// that very refresh, and is answered them (an endpoint that keeps the refresh token leaves
    /// it the current one). No clock decides it.
    pub(crate) fresh: std::sync::Mutex<Option<(Tokens, u64)>>,
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
    let ticket = shared.arrivals.fetch_add(1, Ordering::SeqCst);
    let decision = shared.decide.lock().await;
    let Some((home, route)) = decide(shared, &presented, &fingerprint).await else {
        return answer::unavailable(HOME_UNREADABLE);
    };
    tracing::info!(presented = %fingerprint, route = route.name(), "token request");
    match route {
        Route::Current if shared.fresh_for(ticket, &home) => {
            // Refreshed for another caller while this one waited (an answer that kept the
            // refresh token): the same new tokens, not one more request.
            tracing::info!(presented = %fingerprint, "refreshed while the caller waited: the tokens answered");
            home.tokens
                .as_ref()
                .map_or_else(|| answer::unavailable(CHANGED), answer::tokens)
        }
        Route::Current => match &shared.refresher {
            Refresher::Itself => refresh(shared, &fingerprint, &home).await,
            Refresher::Agent(asker) => {
                refresh_through_agent(shared, asker, &fingerprint, &home).await
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
            let after = match Home::read(manager, &shared.journal).await {
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
                    // Only new tokens: a caller waiting for a refresh is never given back the
                    // very tokens it wanted refreshed.
                    if before.tokens.as_ref().map(fingerprints) != Some(fingerprints(tokens)) {
                        shared.answered_fresh(tokens);
                    }
                    answer::tokens(tokens)
                }
                None => answer::unavailable(CHANGED),
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
    /// Remembers that a refresh for a caller ended with `tokens`.
    fn answered_fresh(&self, tokens: &TokenData) {
        let arrived = self.arrivals.load(Ordering::SeqCst);
        *self.fresh.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((fingerprints(tokens), arrived));
    }

    /// Whether the caller of `ticket` waited for the last refresh for a caller, whose tokens
    /// `home` still holds.
    fn fresh_for(&self, ticket: u64, home: &Home) -> bool {
        let fresh = self.fresh.lock().unwrap_or_else(|p| p.into_inner());
        match (fresh.as_ref(), home.tokens.as_ref()) {
            (Some((tokens, arrived)), Some(current)) => {
                ticket < *arrived && fingerprints(current) == *tokens
            }
            _ => false,
        }
    }
}

/// Reads the home and routes `presented` (of fingerprint `fingerprint`). When the broker is to
/// refresh the current token itself, the manager's cache is made what auth.json holds first,
/// and the home read and routed again: a rotation by another process between the two is then a
/// token the manager adopts, never one it sends because a caller presented its predecessor.
/// `None` when the home cannot be read (said in the log).
async fn decide(shared: &Shared, presented: &Secret, fingerprint: &str) -> Option<(Home, Route)> {
    let routed = |home: &Home| {
        let seen = shared.rotations.records();
        route(
            presented,
            home.refresh_token(),
            &merged(&home.records, &seen),
            SystemTime::now(),
            shared.config.grace,
        )
    };
    let home = read_home(shared, fingerprint).await?;
    let route = routed(&home);
    if route != Route::Current || !matches!(shared.refresher, Refresher::Itself) {
        return Some((home, route));
    }
    if let Err(e) = adopt_home(&shared.manager).await {
        tracing::warn!(presented = %fingerprint, error = %e, "the home cannot be adopted: answered 503");
        return None;
    }
    let home = read_home(shared, fingerprint).await?;
    let route = routed(&home);
    Some((home, route))
}

/// The home, read for the caller presenting the token of fingerprint `fingerprint`; `None`
/// when it cannot be read (said in the log).
async fn read_home(shared: &Shared, fingerprint: &str) -> Option<Home> {
    match Home::read(&shared.manager, &shared.journal).await {
        Ok(home) => Some(home),
        Err(e) => {
            tracing::warn!(presented = %fingerprint, error = %e, "the home cannot be read: answered 503");
            None
        }
    }
}

/// The fingerprints of `tokens`, as an ask names them.
fn fingerprints(tokens: &TokenData) -> Tokens {
    Tokens {
        refresh: tokens.refresh_token.fingerprint(),
        access: tokens.access_token.fingerprint(),
    }
}

/// The `mirrored` record of a refresh this broker saw: the token of fingerprint `from` moved on
/// to `to` (of `account`), dated `at` (when the broker asked: before any later rotation).
fn seen(from: &str, to: &str, account: Option<String>, at: &Timestamp) -> JournalRecord {
    let mut record = JournalRecord::new(JournalEvent::Mirrored, Generation::Absent);
    record.at = at.as_str().to_owned();
    record.generation = None;
    record.account = account;
    record.refresh = Some(from.to_owned());
    record.new_refresh = Some(to.to_owned());
    record
}

/// Has the home's agent refresh the current tokens (read with `before`, whose refresh token,
/// of fingerprint `fingerprint`, the caller presented) and answers the tokens auth.json then
/// holds: the agent's new ones (also an answer that kept the refresh token), or those of
/// another machine's rotation it mirrored meanwhile. The endpoint's refusal when it refused;
/// the broker's own refresh when the agent leaves that login alone (not the fleet's); 503 when
/// the agent could not refresh, stopped, or took longer than [`BrokerConfig::agent_wait`].
async fn refresh_through_agent(
    shared: &Shared,
    asker: &RefreshAsker,
    fingerprint: &str,
    before: &Home,
) -> Answer {
    let Some(asked) = before.tokens.as_ref().map(fingerprints) else {
        return answer::unavailable("the home holds no tokens");
    };
    let wait = shared.config.agent_wait;
    let asked_at = Timestamp::now();
    let end = tokio::time::timeout(wait, asker.ask(asked.clone())).await;
    let after = match Home::read(&shared.manager, &shared.journal).await {
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
        .filter(|tokens| fingerprints(tokens) != asked)
        .filter(|_| after.account() == before.account());
    if let Some(tokens) = moved {
        let answered = tokens.refresh_token.fingerprint();
        if answered != fingerprint {
            shared
                .rotations
                .push(seen(fingerprint, &answered, after.account(), &asked_at));
        }
        tracing::info!(presented = %fingerprint, answered = %answered, "refreshed by the agent for a caller");
        shared.answered_fresh(tokens);
        return answer::tokens(tokens);
    }
    let unchanged = after.tokens.as_ref().map(fingerprints) == Some(asked.clone());
    match end {
        Ok(AskEnd::LeftAlone) if unchanged => {
            // Another account's login than the fleet's: refreshed here, as any process would,
            // through the guarded protocol; only while it is still the one the caller presented.
            tracing::info!(presented = %fingerprint, "the agent leaves this login alone: refreshed by the broker");
            if let Err(e) = adopt_home(&shared.manager).await {
                tracing::warn!(presented = %fingerprint, error = %e, "the home cannot be adopted: answered 503");
                return answer::unavailable(HOME_UNREADABLE);
            }
            let cached = shared.manager.cached().map(|auth| Tokens {
                refresh: auth.refresh_fingerprint().unwrap_or_default().to_owned(),
                access: auth.bearer().fingerprint(),
            });
            if cached != Some(asked) {
                return answer::unavailable(CHANGED);
            }
            refresh(shared, fingerprint, before).await
        }
        Ok(AskEnd::Refused { reason, answer }) => {
            tracing::info!(presented = %fingerprint, code = %reason.code(), "the token endpoint refused the refresh: its refusal answered");
            answer::refused(answer, &reason)
        }
        Ok(AskEnd::Failed(why)) => {
            tracing::warn!(presented = %fingerprint, error = %why, "the agent could not refresh: answered 503");
            answer::unavailable("the refresh failed for now; try again later")
        }
        Ok(AskEnd::Moved | AskEnd::LeftAlone) => answer::unavailable(CHANGED),
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
