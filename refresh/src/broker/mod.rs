//! [`Broker`]: a local token endpoint for unmodified Codex. `route` decides, `handle` answers
//! one request, `serve` accepts; `request`, `answer`, `home` and `limit` are their parts.

mod answer;
mod error;
mod handle;
mod home;
mod limit;
mod request;
pub(crate) mod route;
mod serve;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use error::BrokerError;

use crate::agent::RefreshAsker;
use crate::manager::AuthManager;
use handle::{Refresher, Shared};
use limit::TokenBucket;

/// The broker's documented address; Codex reaches it at `http://127.0.0.1:14550/oauth/token`.
pub const DEFAULT_BROKER_ADDR: &str = "127.0.0.1:14550";
/// The path the broker answers token requests on (the real endpoint's).
pub const TOKEN_PATH: &str = "/oauth/token";
/// The path of the broker's health probe: `GET` answers 200 `{"ok":true}`.
pub const HEALTH_PATH: &str = "/health";

/// How a [`Broker`] serves.
///
/// ```
/// use std::time::Duration;
/// use codex_refresh::BrokerConfig;
/// let config = BrokerConfig { grace: Duration::from_secs(60), ..BrokerConfig::default() };
/// assert_eq!(config.max_body, 16 * 1024);
/// ```
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// How long after this home rotated a refresh token away a caller presenting it still gets
    /// the current tokens. Default: 10 minutes.
    pub grace: Duration,
    /// The largest request body read; a larger one is refused (400). Default: 16 KiB.
    pub max_body: usize,
    /// Requests a second, in bursts of as many; above it: 429 with `Retry-After`. 0: no limit.
    /// Default: 64 (as many Codex processes refreshing at once are all answered).
    pub rate_per_second: u32,
    /// Connections served at once (1 to 65536); more wait to be accepted. Default: 64.
    pub max_connections: usize,
    /// The longest a request head may take to arrive. Default: 10 s.
    pub header_timeout: Duration,
    /// The longest a refresh through an agent ([`Broker::through_agent`]) is waited for before
    /// the caller is told 503 (another machine's refresh may hold the fleet's lock meanwhile).
    /// Default: 60 s.
    pub agent_wait: Duration,
    /// The longest a request body may take to arrive. Default: 10 s.
    pub body_timeout: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            grace: Duration::from_secs(10 * 60),
            max_body: 16 * 1024,
            rate_per_second: 64,
            max_connections: 64,
            header_timeout: Duration::from_secs(10),
            agent_wait: Duration::from_secs(60),
            body_timeout: Duration::from_secs(10),
        }
    }
}

/// A local token endpoint for unmodified Codex, over one home's [`AuthManager`].
///
/// Codex pointed at it (`CODEX_REFRESH_TOKEN_URL_OVERRIDE=http://127.0.0.1:14550/oauth/token`)
/// sends its refresh requests here instead of to the real endpoint. The broker answers in the
/// real endpoint's format, and decides by the refresh token the request presents, compared
/// with auth.json's (the current one by value, the others by fingerprint through the journal):
///
/// - **the current token**: refreshed through the guarded protocol ([`AuthManager::refresh`]);
///   concurrent callers share one upstream request (the others wait, then find their token
///   rotated away, below) and all get the new tokens;
/// - **a token this home rotated away less than [`BrokerConfig::grace`] ago**, from which the
///   current token descends by the journal's chain of rotations: the current tokens, with no
///   request (a Codex process that lost the race, or read auth.json just before a rotation);
/// - **a token this home redeemed for a successor that is no such predecessor** (rotated
///   away longer ago, or its chain does not lead to the current token): answered
///   `refresh_token_reused` (401) with no request. It is dead, and the endpoint, shown a
///   reused token, may revoke the whole family, the live token included: better than without
///   the broker;
/// - **any other token** (unknown to this home): the request is forwarded unchanged to the
///   real endpoint (the manager's token URL) and its answer relayed, nothing stored. Codex
///   would have sent that very request there without the broker, so the broker is never worse
///   than none (another login's token still refreshes), and it reveals nothing of this home.
///
/// A permanent refusal while refreshing is answered to every waiting caller with the
/// endpoint's status and error code; a transient failure with 503. A request that presents no
/// refresh token gets 400 `invalid_request`. Only `POST /oauth/token` and `GET /health` are
/// served.
///
/// # Security
/// - Loopback only ([`BrokerError::NotLoopback`]); tokens go only to a caller that presented
///   one of this login's refresh tokens. Log lines name tokens by fingerprint.
/// - Bounded: request heads ([`BrokerConfig::header_timeout`], 16 KiB, 32 headers), bodies
///   ([`BrokerConfig::max_body`], [`BrokerConfig::body_timeout`]), one request per
///   connection, [`BrokerConfig::max_connections`] at once, and
///   [`BrokerConfig::rate_per_second`] (429 with `Retry-After` above it).
/// - A predecessor is recognised by the 48-bit fingerprint the journal keeps (the current
///   token is compared whole): within the grace window, a local caller that could read a
///   fingerprint (the journal, a log line) and forge a token with the same fingerprint would
///   be taken for a predecessor.
#[derive(Debug)]
pub struct Broker {
    manager: AuthManager,
    config: BrokerConfig,
    refresher: Refresher,
}

impl Broker {
    /// A broker refreshing through `manager`, whose token URL is the real endpoint (where
    /// unknown tokens are forwarded).
    pub fn new(manager: AuthManager, config: BrokerConfig) -> Broker {
        Broker {
            manager,
            config,
            refresher: Refresher::Itself,
        }
    }

    /// A broker whose refreshes the home's agent makes: a caller presenting the current token
    /// has the agent refresh it now ([`crate::Agent::answering`], the other end of `asker`),
    /// through the agent's own protocol. That is how a fleet machine serves: its agent
    /// refreshes under the fleet's lock and reservation, for every machine, and writes the new
    /// tokens here; the broker then answers them. `manager` (of the same home) reads the home
    /// and forwards unknown tokens; it refreshes nothing.
    ///
    /// On a fleet machine, a token another machine rotated away is a predecessor too: the
    /// agent journals each rotation it mirrors into auth.json (`mirrored`).
    pub fn through_agent(
        manager: AuthManager,
        config: BrokerConfig,
        asker: RefreshAsker,
    ) -> Broker {
        Broker {
            manager,
            config,
            refresher: Refresher::Agent(asker),
        }
    }

    /// Whether `listener` can serve this broker's home, as [`Broker::serve`] checks first: a
    /// caller can refuse to start before anything else runs.
    ///
    /// # Errors
    /// As [`Broker::serve`]'s, but for nothing served.
    pub fn check(&self, listener: &tokio::net::TcpListener) -> Result<(), BrokerError> {
        serve::check(&self.manager, listener)
    }

    /// Serves on `listener` until `shutdown` resolves; then accepts nothing more, lets the
    /// requests under way finish, and returns.
    ///
    /// # Errors
    /// [`BrokerError::NotLoopback`] when `listener` is not on a loopback address;
    /// [`BrokerError::ForwardsToItself`] when the manager's token URL is the listener's own
    /// address; [`BrokerError::Address`] when the listener's address cannot be read. Nothing
    /// is served then.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), BrokerError> {
        let shared = Arc::new(Shared {
            bucket: TokenBucket::new(self.config.rate_per_second),
            manager: self.manager,
            config: self.config,
            rotations: match &self.refresher {
                Refresher::Agent(asker) => asker.rotations.clone(),
                Refresher::Itself => Default::default(),
            },
            refresher: self.refresher,
            decide: tokio::sync::Mutex::new(()),
            journal: Arc::default(),
            arrivals: std::sync::atomic::AtomicU64::new(0),
            fresh: std::sync::Mutex::new(None),
        });
        serve::serve(shared, listener, shutdown).await
    }
}
