//! The types of host-supplied tokens (`chatgptAuthTokens`): what the host hands over, and its
//! refresh callback.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use codex_store::Secret;

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
