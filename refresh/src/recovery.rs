//! [`UnauthorizedRecovery`]: what to do, step by step, when the API answers 401.

use crate::auth::Mode;
use crate::error::RefreshError;
use crate::manager::AuthManager;

/// What a recovery step did; after each, retry the request that was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryStep {
    /// Another process had stored newer credentials for the same account; they were adopted.
    Reloaded,
    /// The tokens were refreshed at the endpoint (or by the host).
    Refreshed,
}

/// The 401 recovery: step 1 re-reads auth.json under the lock and adopts a newer generation of
/// the same account; step 2 refreshes at the endpoint under the lock; then it is exhausted.
/// For host-supplied tokens there is one step: ask the host. API keys have none.
///
/// ```no_run
/// # async fn demo(manager: codex_refresh::AuthManager) -> Result<(), codex_refresh::RefreshError> {
/// let mut recovery = manager.unauthorized_recovery();
/// while recovery.has_next() {
///     recovery.next().await?;
///     // retry the request with manager.auth().await?; stop when it succeeds
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct UnauthorizedRecovery {
    manager: AuthManager,
    steps_left: u8,
    host: bool,
}

impl UnauthorizedRecovery {
    pub(crate) fn new(manager: AuthManager) -> Self {
        let mode = manager.cached().map(|a| a.mode());
        let (steps_left, host) = match mode {
            Some(Mode::HostTokens) => (1, true),
            Some(Mode::ApiKey) => (0, false),
            _ => (2, false),
        };
        UnauthorizedRecovery {
            manager,
            steps_left,
            host,
        }
    }

    /// Whether a step is left.
    pub fn has_next(&self) -> bool {
        self.steps_left > 0
    }

    /// Runs the next step. When step 1 finds nothing newer on disk it goes straight on to
    /// step 2. Errors are those of [`AuthManager::refresh`]; when no step is left, the last
    /// error stands and this returns [`RefreshError::Permanent`] with `Unauthorized`.
    pub async fn next(&mut self) -> Result<RecoveryStep, RefreshError> {
        if self.steps_left == 0 {
            return Err(RefreshError::Permanent {
                reason: crate::error::PermanentReason::Unauthorized { code: None },
            });
        }
        if self.host {
            self.steps_left = 0;
            self.manager.refresh().await?;
            return Ok(RecoveryStep::Refreshed);
        }
        if self.steps_left == 2 {
            self.steps_left = 1;
            if self.manager.adopt_if_newer().await? {
                return Ok(RecoveryStep::Reloaded);
            }
        }
        self.steps_left = 0;
        self.manager.refresh().await?;
        Ok(RecoveryStep::Refreshed)
    }
}
