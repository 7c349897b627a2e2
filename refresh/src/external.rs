//! Host-supplied tokens (`chatgptAuthTokens`): kept in memory only, refreshed by asking the host.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use codex_store::{Generation, IdTokenClaims, Secret};

use crate::auth::{CodexAuth, Mode};
use crate::error::RefreshError;
use crate::manager::{AuthManager, Inner};

/// Tokens a host application hands the process.
#[derive(Clone, Debug)]
pub struct HostTokens {
    /// The bearer.
    pub access_token: Secret,
    /// The ChatGPT account (workspace) id.
    pub account_id: String,
    /// The plan, if the host knows it.
    pub plan_type: Option<String>,
}

/// What the host is asked when its tokens are due or were refused.
#[derive(Clone, Debug)]
pub struct HostRefreshRequest {
    /// The account whose tokens are wanted.
    pub account_id: String,
}

/// The future a host refresher returns.
pub type HostRefreshFuture = Pin<Box<dyn Future<Output = Result<HostTokens, String>> + Send>>;

/// The host's refresh callback. It is given [`crate::RefreshConfig::host_refresh_timeout`]
/// (10 s by default) to answer.
pub type HostRefresher = Arc<dyn Fn(HostRefreshRequest) -> HostRefreshFuture + Send + Sync>;

pub(crate) struct HostState {
    refresher: HostRefresher,
}

fn host_auth(tokens: &HostTokens) -> CodexAuth {
    CodexAuth {
        mode: Mode::HostTokens,
        bearer: tokens.access_token.clone(),
        account_id: Some(tokens.account_id.clone()),
        claims: IdTokenClaims {
            account_id: Some(tokens.account_id.clone()),
            plan_type: tokens.plan_type.clone(),
            ..Default::default()
        },
        expires_at: codex_store::token_expiry(&tokens.access_token)
            .ok()
            .flatten(),
        last_refresh: Some(SystemTime::now()),
        generation: Generation::Absent,
    }
}

impl AuthManager {
    /// Uses tokens supplied by the host application, in memory only (nothing is written to
    /// disk), refreshed by calling `refresher`. Refused when the workspace is not allowed.
    pub fn set_host_tokens(
        &self,
        tokens: HostTokens,
        refresher: HostRefresher,
    ) -> Result<Arc<CodexAuth>, RefreshError> {
        let auth = host_auth(&tokens);
        auth.check_workspace(&self.inner().config)?;
        let auth = Arc::new(auth);
        *self.inner().host.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(HostState { refresher });
        self.inner().set_cache(Some(auth.clone()));
        Ok(auth)
    }
}

/// Asks the host for new tokens, within the time limit; updates the cache.
pub(crate) async fn refresh_host(inner: &Arc<Inner>) -> Result<Arc<CodexAuth>, RefreshError> {
    let refresher = inner
        .host
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|h| h.refresher.clone());
    let cached = inner.cached();
    let (Some(refresher), Some(cached)) = (refresher, cached) else {
        return Err(RefreshError::NotSignedIn {
            path: inner.store.path().to_path_buf(),
        });
    };
    let request = HostRefreshRequest {
        account_id: cached.account_id().unwrap_or_default().to_owned(),
    };
    let limit = inner.config.host_refresh_timeout;
    let tokens = match tokio::time::timeout(limit, refresher(request)).await {
        Err(_) => return Err(RefreshError::HostRefreshTimeout { after: limit }),
        Ok(Err(message)) => return Err(RefreshError::HostRefreshFailed { message }),
        Ok(Ok(tokens)) => tokens,
    };
    if Some(tokens.account_id.as_str()) != cached.account_id() {
        return Err(RefreshError::AccountChanged {
            expected: cached.account_id().unwrap_or("<none>").to_owned(),
            found: tokens.account_id,
        });
    }
    let auth = host_auth(&tokens);
    auth.check_workspace(&inner.config)?;
    let auth = Arc::new(auth);
    inner.set_cache(Some(auth.clone()));
    Ok(auth)
}
