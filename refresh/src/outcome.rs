//! [`RefreshOutcome`]: what a refresh did.

/// What a refresh did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// This process redeemed the refresh token and stored the new tokens.
    Refreshed,
    /// Another process (or task) had already refreshed; its tokens were adopted, no request sent.
    AdoptedFromDisk,
    /// Nothing to refresh (API key, or the tokens are not due and nothing was forced).
    NotNeeded,
}
