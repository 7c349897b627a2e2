//! [`RefreshError`]: why credentials could not be had, classified as permanent or transient.

use std::path::PathBuf;
use std::time::Duration;

use codex_store::StoreError;

/// Why a refresh failed at the token endpoint, for the permanent cases: the user must sign in
/// again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PermanentReason {
    /// `refresh_token_expired`.
    Expired,
    /// `refresh_token_reused`: someone else redeemed this refresh token.
    Reused,
    /// `refresh_token_invalidated`: revoked (logout elsewhere, password change).
    Invalidated,
    /// Another code (or none) with HTTP 401.
    Unauthorized {
        /// The error code the server gave, if any.
        code: Option<String>,
    },
}

impl std::fmt::Display for PermanentReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PermanentReason::Expired => f.write_str("the refresh token has expired"),
            PermanentReason::Reused => {
                f.write_str("the refresh token was already used (another client rotated it)")
            }
            PermanentReason::Invalidated => f.write_str("the refresh token was revoked"),
            PermanentReason::Unauthorized { code: Some(code) } => {
                write!(f, "the token endpoint refused the refresh ({code})")
            }
            PermanentReason::Unauthorized { code: None } => {
                f.write_str("the token endpoint refused the refresh (HTTP 401)")
            }
        }
    }
}

impl PermanentReason {
    /// The endpoint's error code for this reason (`refresh_token_expired`, ...; `http_401` for
    /// a 401 without a code), as the journal records it.
    pub fn code(&self) -> String {
        match self {
            PermanentReason::Expired => "refresh_token_expired".into(),
            PermanentReason::Reused => "refresh_token_reused".into(),
            PermanentReason::Invalidated => "refresh_token_invalidated".into(),
            PermanentReason::Unauthorized { code: Some(code) } => code.clone(),
            PermanentReason::Unauthorized { code: None } => "http_401".into(),
        }
    }

    /// The reason for a code recorded by [`PermanentReason::code`].
    pub fn from_code(code: &str) -> Self {
        match code {
            "refresh_token_expired" => PermanentReason::Expired,
            "refresh_token_reused" => PermanentReason::Reused,
            "refresh_token_invalidated" => PermanentReason::Invalidated,
            "http_401" | "" => PermanentReason::Unauthorized { code: None },
            other => PermanentReason::Unauthorized {
                code: Some(other.to_owned()),
            },
        }
    }
}

/// Why a refresh failed for now; the stored credentials were not touched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransientReason {
    /// The endpoint answered with this status (5xx, 429, 408, or a 4xx other than 401 with an
    /// OAuth error code that is not permanent; a 4xx without one is
    /// [`RefreshError::TokenUrl`]).
    Status(u16),
    /// No answer within the HTTP timeout.
    Timeout,
    /// No connection could be made (refused, DNS, a connect timeout): nothing was sent.
    Connect,
    /// The connection broke after the request may have been sent (reset, closed): whether the
    /// endpoint redeemed the token is unknown.
    Interrupted,
    /// The answer could not be understood.
    UnparseableAnswer,
    /// A 200 answer that is not a usable refresh (no access token, empty strings, wrong types,
    /// too large, another account): nothing of it was stored.
    InvalidAnswer(String),
    /// The endpoint answered with a redirect, which is never followed (it would send the refresh
    /// token to another origin).
    Redirect(u16),
    /// The process is stopping ([`crate::Agent`] on SIGTERM): nothing was sent.
    Stopping,
    /// What coordinates refreshes beyond this machine (the fleet) no longer allows sending:
    /// its lock's lease or the token's reservation is gone, or the send deadline passed.
    /// Nothing was sent.
    Fenced(String),
}

impl std::fmt::Display for TransientReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransientReason::Status(s) => write!(f, "the token endpoint answered HTTP {s}"),
            TransientReason::Timeout => f.write_str("the token endpoint did not answer in time"),
            TransientReason::Connect => f.write_str("the token endpoint could not be reached"),
            TransientReason::Interrupted => {
                f.write_str("the connection to the token endpoint broke before its answer")
            }
            TransientReason::UnparseableAnswer => {
                f.write_str("the token endpoint's answer could not be understood")
            }
            TransientReason::InvalidAnswer(what) => write!(
                f,
                "the token endpoint's answer is not a usable refresh ({what}), so nothing of it \
                 was stored"
            ),
            TransientReason::Fenced(why) => {
                write!(f, "the fleet no longer allows sending the refresh token ({why}), so nothing was sent")
            }
            TransientReason::Stopping => {
                f.write_str("the process is stopping, so no refresh request was sent")
            }
            TransientReason::Redirect(status) => write!(
                f,
                "the token endpoint answered with a redirect (HTTP {status}), which is never \
                 followed: check the token URL ({})",
                crate::config::TOKEN_URL_ENV
            ),
        }
    }
}

/// The class of an error, for callers that map errors to actions or exit codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The user must sign in again (or the credentials are unusable as they are).
    SignInRequired,
    /// Try again later; nothing was changed.
    Transient,
    /// The store's lock could not be had in time.
    LockTimeout,
    /// auth.json is corrupt.
    Corrupt,
    /// The credentials are of a mode this crate does not serve (Bedrock, personal access
    /// tokens, ...): use the tool that wrote them.
    UnsupportedMode,
    /// Anything else (I/O, permissions, configuration such as [`RefreshError::TokenUrl`]).
    Other,
}

/// An error from [`crate::AuthManager`]. Messages say what the user can do and contain no secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RefreshError {
    /// There are no credentials.
    #[error("not signed in: {path} holds no credentials; sign in first")]
    NotSignedIn {
        /// auth.json.
        path: PathBuf,
    },
    /// The credentials were removed (logout in another process) while this one held them.
    #[error("signed out: {path} was removed by another process; sign in again")]
    LoggedOut {
        /// auth.json.
        path: PathBuf,
    },
    /// Another account signed in (in another process) while this one held credentials.
    #[error(
        "another account signed in: this process used account {expected}, the store now holds \
         account {found}; restart with the new account or sign in again"
    )]
    AccountChanged {
        /// The account this process used.
        expected: String,
        /// The account on disk.
        found: String,
    },
    /// The token endpoint refused the refresh for good.
    #[error("{reason}: sign in again")]
    Permanent {
        /// Why.
        reason: PermanentReason,
    },
    /// The refresh failed for now; nothing was changed.
    #[error("{reason}; the stored credentials are unchanged: try again later")]
    Transient {
        /// Why.
        reason: TransientReason,
    },
    /// The credentials belong to a workspace the configuration does not allow.
    #[error(
        "the credentials belong to workspace {actual}, but only {} is allowed: sign in with an \
         allowed workspace",
        allowed.join(", ")
    )]
    WorkspaceNotAllowed {
        /// The allowed workspace ids.
        allowed: Vec<String>,
        /// The credentials' workspace (`<none>` when the id token names none).
        actual: String,
    },
    /// A credential field could not be decoded.
    #[error("{field} cannot be used: {reason}; sign in again")]
    Malformed {
        /// The field (for example `tokens.id_token`).
        field: &'static str,
        /// Why, without the value.
        reason: String,
    },
    /// The credentials are of a mode this crate does not handle.
    #[error(
        "auth.json holds credentials of auth mode `{mode}`, which codex-store does not serve \
         (it serves `chatgpt` tokens and `apikey` keys); use the tool that wrote them (`codex`)"
    )]
    UnsupportedMode {
        /// The mode.
        mode: String,
    },
    /// The host application did not refresh its tokens within the limit.
    #[error("the host application did not refresh its tokens within {after:?}; try again")]
    HostRefreshTimeout {
        /// The limit.
        after: Duration,
    },
    /// The host application failed to refresh its tokens.
    #[error("the host application could not refresh its tokens: {message}")]
    HostRefreshFailed {
        /// What the host said.
        message: String,
    },
    /// A task of the manager failed (a panic or a runtime shutting down).
    #[error("an internal task failed: {message}; try again")]
    TaskFailed {
        /// What happened.
        message: String,
    },
    /// The token URL cannot be used: it is not an absolute http(s) URL, the override is set but
    /// empty, or it answered as no token endpoint does (404, 405, another 4xx without an OAuth
    /// error code, an HTML page). A configuration error, never "try again later": retrying
    /// does not help until the URL is fixed. Nothing was changed, and the refresh token is not
    /// spent (no token endpoint redeemed it).
    #[error("{}", token_url_message(url, *origin, problem))]
    TokenUrl {
        /// The URL as configured, quoted, with control and non-ASCII characters escaped and a
        /// password in it replaced by `***` (it is outside input).
        url: String,
        /// Where it came from.
        origin: UrlOrigin,
        /// What is wrong with it, for example `is not a token endpoint: it answered HTTP 404
        /// without an OAuth error code`.
        problem: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot set up the HTTP client: {message}")]
    HttpSetup {
        /// Why.
        message: String,
    },
    /// A store error (lock timeout, corrupt file, I/O).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where a token URL came from ([`RefreshError::TokenUrl`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UrlOrigin {
    /// The environment variable [`crate::TOKEN_URL_ENV`].
    Environment,
    /// The built-in [`crate::DEFAULT_TOKEN_URL`].
    BuiltIn,
    /// [`crate::RefreshConfig::token_url`], set by the program.
    Configuration,
}

impl std::fmt::Display for UrlOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UrlOrigin::Environment => write!(f, "from {}", crate::config::TOKEN_URL_ENV),
            UrlOrigin::BuiltIn => f.write_str("the built-in default"),
            UrlOrigin::Configuration => f.write_str("set in RefreshConfig::token_url"),
        }
    }
}

/// The message of [`RefreshError::TokenUrl`]: the URL, where it came from, what is wrong, and
/// what to change.
fn token_url_message(url: &str, origin: UrlOrigin, problem: &str) -> String {
    let env = crate::config::TOKEN_URL_ENV;
    let default = crate::config::DEFAULT_TOKEN_URL;
    let fix = match origin {
        UrlOrigin::Environment => {
            format!("set {env} to the token endpoint's http(s) URL, or unset it to use {default}")
        }
        UrlOrigin::BuiltIn => {
            format!("the endpoint may have moved: set {env} to its URL, or update codex-store")
        }
        UrlOrigin::Configuration => {
            format!("set it (or {env}) to the token endpoint's http(s) URL, such as {default}")
        }
    };
    format!("the token URL {url} ({origin}) {problem}; a configuration error, not an outage: {fix}")
}

impl RefreshError {
    /// The error's class.
    pub fn class(&self) -> ErrorClass {
        match self {
            RefreshError::NotSignedIn { .. }
            | RefreshError::LoggedOut { .. }
            | RefreshError::AccountChanged { .. }
            | RefreshError::Permanent { .. }
            | RefreshError::WorkspaceNotAllowed { .. }
            | RefreshError::Malformed { .. } => ErrorClass::SignInRequired,
            RefreshError::Transient { .. }
            | RefreshError::HostRefreshTimeout { .. }
            | RefreshError::HostRefreshFailed { .. } => ErrorClass::Transient,
            RefreshError::Store(StoreError::LockTimeout { .. })
            | RefreshError::Store(StoreError::NotInstalled {
                cause: codex_store::NotInstalledCause::LockTimeout,
                ..
            }) => ErrorClass::LockTimeout,
            RefreshError::Store(StoreError::Corrupt { .. }) => ErrorClass::Corrupt,
            RefreshError::UnsupportedMode { .. } => ErrorClass::UnsupportedMode,
            _ => ErrorClass::Other,
        }
    }

    /// Whether the user must sign in again.
    pub fn is_permanent(&self) -> bool {
        self.class() == ErrorClass::SignInRequired
    }

    /// Whether trying again later may succeed (nothing was changed).
    pub fn is_transient(&self) -> bool {
        self.class() == ErrorClass::Transient
    }

    /// A copy for remembering a permanent failure (only the permanent variants are cloned
    /// exactly; others are never remembered).
    pub(crate) fn remembered(&self) -> Option<RefreshError> {
        match self {
            RefreshError::Permanent { reason } => Some(RefreshError::Permanent {
                reason: reason.clone(),
            }),
            _ => None,
        }
    }

    /// A copy of a transient error, to hand to callers that waited for the same attempt.
    pub(crate) fn transient_copy(&self) -> Option<RefreshError> {
        match self {
            RefreshError::Transient { reason } => Some(RefreshError::Transient {
                reason: reason.clone(),
            }),
            RefreshError::HostRefreshTimeout { after } => {
                Some(RefreshError::HostRefreshTimeout { after: *after })
            }
            RefreshError::HostRefreshFailed { message } => Some(RefreshError::HostRefreshFailed {
                message: message.clone(),
            }),
            // Not transient, but no reason to ask again at once either: callers within the
            // retry interval share it (every failure backs off).
            RefreshError::TokenUrl {
                url,
                origin,
                problem,
            } => Some(RefreshError::TokenUrl {
                url: url.clone(),
                origin: *origin,
                problem: problem.clone(),
            }),
            _ => None,
        }
    }
}
