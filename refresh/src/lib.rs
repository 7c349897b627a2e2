//! Guarded OAuth token refresh for Codex's `auth.json`, across processes.
//!
//! Every refresh, in every process, runs one protocol under the exclusive lock of a
//! [`codex_store::Store`]: **lock -> re-read -> compare account -> refresh only if still
//! unchanged and still due -> persist by compare-and-swap -> unlock**. However many processes
//! race, the token endpoint sees one request, and all of them end with the same new token.
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
//! - **One request per rotation.** Under the lock the file is re-read; if another process
//!   already refreshed (the generation moved on and the tokens are not due), its tokens are
//!   adopted without a request. The request always uses the refresh token *just read*.
//! - **Stale caches heal.** A process that cached credentials long ago adopts whatever another
//!   process stored, instead of redeeming a dead token.
//! - **Account changes and logouts are noticed**: [`RefreshError::AccountChanged`] and
//!   [`RefreshError::LoggedOut`], with no request sent.
//! - **Cancellation-safe.** The protocol runs in a task of its own: once the request is sent,
//!   its answer is persisted even if the caller's future is dropped.
//! - **Single flight in a process**: concurrent callers share one refresh.
//! - **Errors are classified** ([`RefreshError::class`]): `refresh_token_expired`, `_reused`,
//!   `_invalidated` and any 401 are permanent (sign in again) and remembered for that generation,
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
//! - The lock is held for the whole request (bounded by [`RefreshConfig::http_timeout`]); other
//!   processes wait up to [`RefreshConfig::lock_timeout`].
//! - If the new tokens cannot be written after a successful request (disk full, an I/O error),
//!   the error is returned and they are kept in this process's memory; the next `auth()` or
//!   `refresh()` writes them first, if the file is still what they replace. Until then the file
//!   holds the redeemed token, which other processes will be refused, and a process that exits
//!   first loses them. What can be checked beforehand (a symlinked or hard-linked file) is
//!   checked before the request is sent.
//! - JWT signatures are not checked: the claims are read for display and for the account
//!   comparison only.
//!
//! # Security
//! - Tokens and keys are [`codex_store::Secret`]s; [`CodexAuth`]'s `Debug` shows none, and no
//!   error or log line contains one.
//! - Host-supplied tokens are never written to disk.
//! - A proxy from the environment is not used for a loopback token URL.

#![warn(missing_docs)]

mod auth;
mod client;
mod config;
mod due;
mod error;
mod external;
mod manager;
mod protocol;
mod recovery;

pub use auth::{CodexAuth, Mode};
pub use client::{classify, error_code, TokenAnswer, TokenClient};
pub use config::{RefreshConfig, CLIENT_ID, DEFAULT_TOKEN_URL, TOKEN_URL_ENV};
pub use due::refresh_due;
pub use error::{ErrorClass, PermanentReason, RefreshError, TransientReason};
pub use external::{HostRefreshFuture, HostRefreshRequest, HostRefresher, HostTokens};
pub use manager::AuthManager;
pub use protocol::RefreshOutcome;
pub use recovery::{RecoveryStep, UnauthorizedRecovery};
