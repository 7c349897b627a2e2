//! [`RefreshConfig`]: where and how to refresh.

use std::time::Duration;

/// The real token endpoint.
pub const DEFAULT_TOKEN_URL: &str = "https://auth.openai.com/oauth/token";
/// The environment variable that overrides the token URL (tests point it at a fake endpoint).
pub const TOKEN_URL_ENV: &str = "CODEX_REFRESH_TOKEN_URL_OVERRIDE";
/// Codex's OAuth client id.
pub const CLIENT_ID: &str = "app_EMoamEEZ73f0CkXaXp7hrann";

/// How [`crate::AuthManager`] refreshes.
///
/// ```
/// use std::time::Duration;
/// use codex_refresh::RefreshConfig;
/// let config = RefreshConfig { http_timeout: Duration::from_secs(5), ..RefreshConfig::default() };
/// assert_eq!(config.reuse_wait, Duration::from_secs(8));
/// ```
#[derive(Clone, Debug)]
pub struct RefreshConfig {
    /// The token endpoint. Default: [`TOKEN_URL_ENV`] if set, else [`DEFAULT_TOKEN_URL`]. A
    /// variable that is set but empty (or blank, or not UTF-8) is taken as it is, so that the
    /// manager refuses it naming the variable ([`crate::RefreshError::TokenUrl`]): it never
    /// silently means the real endpoint.
    pub token_url: String,
    /// The OAuth client id. Default: [`CLIENT_ID`].
    pub client_id: String,
    /// The longest a refresh request may take. Default: 30 s.
    pub http_timeout: Duration,
    /// After `refresh_token_reused`, how long to watch auth.json for the rotation the refusal
    /// means (another process's answer landing late) before reporting it. Default: 8 s.
    pub reuse_wait: Duration,
    /// Refresh when the access token expires within this window. Default: 5 minutes.
    pub refresh_window: Duration,
    /// When the access token has no readable `exp`: refresh when `last_refresh` is older than
    /// this. Default: 8 days.
    pub max_token_age: Duration,
    /// After a transient failure, `auth()` does not try again for this long (it returns the
    /// cached, still valid credentials). Default: 10 s.
    pub min_retry_interval: Duration,
    /// The limit for a host application's refresh callback. Default: 10 s.
    pub host_refresh_timeout: Duration,
    /// Workspace ids the credentials may belong to; empty allows every workspace.
    pub allowed_workspaces: Vec<String>,
    /// What [`crate::AuthManager::auth`] does with due but still valid credentials while
    /// another refresh is under way. Default: [`WhileRefreshing::UseValidToken`].
    pub while_refreshing: WhileRefreshing,
}

/// What [`crate::AuthManager::auth`] does when the credentials are due (within
/// [`RefreshConfig::refresh_window`]) but not expired, and another refresh (in another process,
/// or another task of this one) is under way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WhileRefreshing {
    /// Return the still-valid credentials at once; the next call after that refresh adopts its
    /// tokens. Expired credentials always wait.
    #[default]
    UseValidToken,
    /// Wait for that refresh (up to the store's lock wait) and return its tokens.
    Wait,
}

impl Default for RefreshConfig {
    fn default() -> Self {
        let http_timeout = Duration::from_secs(30);
        RefreshConfig {
            token_url: token_url_from_env(),
            client_id: CLIENT_ID.to_owned(),
            http_timeout,
            reuse_wait: Duration::from_secs(8),
            refresh_window: Duration::from_secs(5 * 60),
            max_token_age: Duration::from_secs(8 * 24 * 3600),
            min_retry_interval: Duration::from_secs(10),
            host_refresh_timeout: Duration::from_secs(10),
            allowed_workspaces: Vec::new(),
            while_refreshing: WhileRefreshing::default(),
        }
    }
}

/// The token URL of [`RefreshConfig::default`]: [`TOKEN_URL_ENV`] whenever it is set, whatever
/// it holds (checked when the client is built, where a bad value is an error naming the
/// variable), else [`DEFAULT_TOKEN_URL`].
fn token_url_from_env() -> String {
    match std::env::var_os(TOKEN_URL_ENV) {
        Some(value) => value.to_string_lossy().into_owned(),
        None => DEFAULT_TOKEN_URL.to_owned(),
    }
}
