//! Host-supplied tokens (`chatgptAuthTokens`): kept in memory only, refreshed by asking the host.

use std::sync::Arc;
use std::time::SystemTime;

use codex_store::{Generation, IdTokenClaims};

use crate::auth::{CodexAuth, Mode};
use crate::error::RefreshError;
use crate::host::{HostRefreshRequest, HostTokens};
use crate::state::Inner;

/// The credentials of host-supplied tokens (memory only: generation "absent").
pub(crate) fn host_auth(tokens: &HostTokens) -> CodexAuth {
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
        refresh_fingerprint: None,
        generation: Generation::Absent,
    }
}

/// Asks the host for new tokens, within the time limit; updates the cache.
pub(crate) async fn refresh_host(inner: &Arc<Inner>) -> Result<Arc<CodexAuth>, RefreshError> {
    let refresher = inner.host.lock().unwrap_or_else(|p| p.into_inner()).clone();
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
