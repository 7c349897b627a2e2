//! A check made immediately before a refresh request is sent, by what coordinates refreshes
//! beyond this machine (the fleet: its lock's lease and the token's reservation in etcd). It
//! says whether the token may be sent now and by when the request must be over.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::error::RefreshError;

/// What [`SendFence::check`] returns.
pub(crate) type FenceCheck<'a> =
    Pin<Box<dyn Future<Output = Result<Duration, RefreshError>> + Send + 'a>>;

/// A check made immediately before a refresh request is sent.
pub(crate) trait SendFence: Send + Sync {
    /// `Ok(left)`: the request may be sent, and must be over within `left` (it is cut off
    /// then); an error: nothing may be sent.
    fn check(&self) -> FenceCheck<'_>;

    /// The document the answer made (the redeemed document with the new tokens), as soon as it
    /// exists and before it is saved: whatever happens to this machine's auth.json meanwhile (a
    /// sign-out, another account), the tokens belong to what coordinates the refresh.
    fn answered(&self, document: &codex_store::AuthDotJson);
}
