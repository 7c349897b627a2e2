//! Guarded OAuth token refresh for Codex's `auth.json`, across processes.
//!
//! Every refresh, in every process, runs one protocol over a [`codex_store::Store`]: **lock ->
//! re-read -> compare account -> refresh only if still unchanged and still due -> persist by
//! compare-and-swap -> unlock**. The lock held across the request is codex-store's own
//! single-flight lock (`auth.json.refresh.lock`, see [`codex_store::Rotation`]); the write locks
//! that Codex 0.171.0 shares (`auth.lock`, then `auth.json.lock`, in its order) are taken only
//! for the save, for milliseconds, so that no Codex process waiting for them gives up and drops
//! its tokens. However many processes race, the token endpoint sees one request, and all of
//! them end with the same new token.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use codex_refresh::{AuthManager, RefreshConfig};
//! use codex_store::Store;
//!
//! let store = Store::open(std::env::var("CODEX_HOME")?)?;
//! let manager = AuthManager::new(store, RefreshConfig::default())?;
//! let auth = manager.auth().await?;               // cached; refreshed first when due
//! let _bearer = auth.bearer().expose();            // Authorization: Bearer ...
//! // After the API answered 401:
//! let mut recovery = manager.unauthorized_recovery();
//! while recovery.has_next() {
//!     recovery.next().await?;                      // then retry the request
//!     break;
//! }
//! # Ok(()) }
//! ```
//!
//! A runnable example against a local endpoint:
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = std::env::temp_dir().join(format!("codex-refresh-doc-{}", std::process::id()));
//! use codex_refresh::{AuthManager, Mode, RefreshConfig, RefreshOutcome};
//! use codex_store::{Secret, Store};
//!
//! let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! runtime.block_on(async {
//!     let config = RefreshConfig { token_url: "http://127.0.0.1:9/unused".into(), ..Default::default() };
//!     let manager = AuthManager::new(Store::open(&dir)?, config)?;
//!     manager.login_with_api_key(Secret::new("sk-example")).await?;
//!     let auth = manager.auth().await?;             // API keys never refresh: no request
//!     assert_eq!(auth.mode(), Mode::ApiKey);
//!     assert_eq!(manager.refresh().await?, RefreshOutcome::NotNeeded);
//!     manager.logout().await?;
//!     Ok::<_, Box<dyn std::error::Error>>(())
//! })?;
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(()) }
//! ```
//!
//! # Guarantees
//! - **Nothing redeemed is lost.** Before the refresh token is sent the save is reserved (a
//!   rotation file with room for the answer; if that fails, nothing is sent); the answer is
//!   durable in it before anything else; a crash is recovered by the next process.
//! - **A reuse refusal waits for the rotation it means**: on `refresh_token_reused` every lock is
//!   released and auth.json watched for [`RefreshConfig::reuse_wait`] for a newer token of the
//!   same account, which is adopted; only then is the refusal reported.
//! - **One request per rotation.** Under the refresh lock the file is re-read; if another process
//!   already refreshed (the generation moved on and the tokens are not due), its tokens are
//!   adopted without a request. The request always uses the refresh token *just read*.
//! - **Stale caches heal.** A process that cached credentials long ago adopts whatever another
//!   process stored, instead of redeeming a dead token.
//! - **Account changes and logouts are noticed**: [`RefreshError::AccountChanged`] and
//!   [`RefreshError::LoggedOut`], with no request sent.
//! - **Cancellation-safe.** The protocol runs in a task of its own: once the request is sent,
//!   its answer is persisted even if the caller's future is dropped.
//! - **Single flight in a process**: concurrent callers share one refresh.
//! - **No waiting while the token is valid**: when a refresh is already under way (in another
//!   process, or another task of this one) and the cached access token has not expired,
//!   [`AuthManager::auth`] returns it at once instead of waiting for that request
//!   ([`RefreshConfig::while_refreshing`]); an expired token waits.
//! - **Unmodified Codex shares it too**: [`Broker`] is a local token endpoint (Codex pointed at it
//!   with [`TOKEN_URL_ENV`]) that refreshes the current token through this protocol, answers a
//!   token rotated away moments ago with the current tokens, and forwards any other request to
//!   the real endpoint unchanged.
//! - **One refresher per login**: [`Agent`] (the `codex-store agent` command) refreshes a lead
//!   time before Codex's own 5-minute window opens, so that the other processes only read.
//! - **Errors are classified** ([`RefreshError::class`]): `refresh_token_expired`, `_reused`,
//!   `_invalidated`, `400 invalid_grant` and any 401 are permanent (sign in again) and remembered
//!   for that generation, in this process and in the store's journal for every other process,
//!   so a dead token is not sent twice; 5xx, 429, timeouts, refused connections and unparseable
//!   answers are transient and leave the store untouched. On `refresh_token_reused` the file is
//!   re-read first, and a newer token for the same account is adopted. Credentials are never
//!   deleted because a refresh failed.
//! - The fast path of [`AuthManager::auth`] (cached, not due) takes no file lock and makes no
//!   system call.
//!
//! # Limitations
//! - Processes that do not use this protocol (older installations) can still redeem the same
//!   token; the `refresh_token_reused` adoption and the store's compare-and-swap limit the damage
//!   but cannot prevent the server's verdict.
//! - The refresh lock is held for the whole request (bounded by
//!   [`RefreshConfig::http_timeout`]); other codex-store processes wait up to
//!   the store's lock wait ([`codex_store::StoreOptions::lock_timeout`]). Codex processes do
//!   not wait for it.
//! - If the new tokens are durable in the rotation file but cannot be installed (auth.json keeps
//!   changing, is corrupt, or the write locks are held too long), the error names the file; the
//!   next refresh or write of any codex-store process installs it. If no file could take them at
//!   all, they are kept in this process's memory (one more attempt is made at once, through a
//!   fresh file) and a process that exits first loses them.
//! - A crash between the answer and the fsync of the rotation file loses that rotation.
//! - JWT signatures are not checked: the claims are read for display and for the account
//!   comparison only.
//!
//! # Security
//! - Tokens and keys are [`codex_store::Secret`]s; [`CodexAuth`]'s `Debug` shows none, and no
//!   error or log line contains one.
//! - Host-supplied tokens are never written to disk.
//! - A proxy from the environment is not used for a loopback token URL.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod agent;
mod auth;
mod boottime;
mod broker;
mod client;
mod config;
mod due;
mod error;
mod external;
pub mod fleet;
mod host;
mod http_body;
mod login;
mod manager;
mod outcome;
mod protocol;
mod recovery;
mod state;

pub use agent::{
    refresh_asks, Agent, AgentConfig, AgentError, AgentEvent, AgentEventKind, FailureClass,
    IdleReason, ReattachReason, RefreshAsker, RefreshAsks, ResumedFrom, StopReason,
    CODEX_REFRESH_WINDOW,
};
pub use auth::{CodexAuth, Mode};
pub use broker::{
    Broker, BrokerConfig, BrokerError, DEFAULT_BROKER_ADDR, HEALTH_PATH as BROKER_HEALTH_PATH,
    TOKEN_PATH as BROKER_TOKEN_PATH,
};
pub use config::{RefreshConfig, WhileRefreshing, CLIENT_ID, DEFAULT_TOKEN_URL, TOKEN_URL_ENV};
pub use due::refresh_due;
pub use error::{ErrorClass, PermanentReason, RefreshError, TransientReason, UrlOrigin};
pub use host::{HostRefreshFuture, HostRefreshRequest, HostRefresher, HostTokens};
pub use login::{
    Durability, FleetLogin, FleetRemoval, LocalRemoval, Login, Removal, SeedError, Seeded,
    SignInError, SignOutError, SignedIn, SignedOut, Stored,
};
pub use manager::AuthManager;
pub use outcome::RefreshOutcome;
pub use recovery::{RecoveryStep, UnauthorizedRecovery};
