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
    next: Step,
}

/// The step an [`UnauthorizedRecovery`] runs next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// ChatGPT tokens, first step: adopt a newer generation on disk, else refresh.
    AdoptOrRefresh,
    /// ChatGPT tokens, second step: refresh at the endpoint.
    Refresh,
    /// Host-supplied tokens: ask the host.
    AskHost,
    /// Nothing left (or nothing to do: an API key).
    Exhausted,
}

impl AuthManager {
    /// The 401 recovery steps for this manager's current mode.
    pub fn unauthorized_recovery(&self) -> UnauthorizedRecovery {
        UnauthorizedRecovery::new(self.clone())
    }
}

impl UnauthorizedRecovery {
    fn new(manager: AuthManager) -> Self {
        let next = match manager.cached().map(|a| a.mode()) {
            Some(Mode::HostTokens) => Step::AskHost,
            Some(Mode::ApiKey) => Step::Exhausted,
            _ => Step::AdoptOrRefresh,
        };
        UnauthorizedRecovery { manager, next }
    }

    /// Whether a step is left.
    pub fn has_next(&self) -> bool {
        self.next != Step::Exhausted
    }

    /// Runs the next step. When step 1 finds nothing newer on disk it goes straight on to
    /// step 2.
    ///
    /// # Errors
    /// Those of [`AuthManager::refresh`] (step 1's re-read under the lock fails with the
    /// store's errors, for example [`RefreshError::AccountChanged`]); when no step is left, the
    /// last error stands and this returns [`RefreshError::Permanent`] with `Unauthorized`.
    pub async fn next(&mut self) -> Result<RecoveryStep, RefreshError> {
        match self.next {
            Step::Exhausted => Err(RefreshError::Permanent {
                reason: crate::error::PermanentReason::Unauthorized { code: None },
            }),
            Step::AskHost => {
                self.next = Step::Exhausted;
                self.manager.refresh().await?;
                Ok(RecoveryStep::Refreshed)
            }
            Step::AdoptOrRefresh => {
                self.next = Step::Refresh;
                if self.manager.adopt_if_newer().await? {
                    return Ok(RecoveryStep::Reloaded);
                }
                self.next = Step::Exhausted;
                self.manager.refresh().await?;
                Ok(RecoveryStep::Refreshed)
            }
            Step::Refresh => {
                self.next = Step::Exhausted;
                self.manager.refresh().await?;
                Ok(RecoveryStep::Refreshed)
            }
        }
    }
}
