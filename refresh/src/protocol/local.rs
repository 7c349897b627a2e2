//! [`Local`]: the guarded refresh coordinated by this machine alone: its refresh lock and
//! rotation files ([`codex_store::Rotation`]), its journal, and the watch of auth.json for a
//! rotation.

use std::convert::Infallible;
use std::time::{Duration, SystemTime};

use codex_store::{AuthDotJson, Rotation, Secret, Snapshot};

use super::coordinator::{Adopted, Coordinator, Locked, Reserve, Step};
use super::wait::poll_for_rotation;
use super::{Ended, Urgency};
use crate::error::RefreshError;
use crate::outcome::RefreshOutcome;
use crate::state::{blocking, Inner, Known};

/// The coordination of this machine's processes (see the module).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Local {
    /// Whether the waits for a rotation last the configured reuse wait (`false`: one look, for
    /// a coordinator that waits for the rotation elsewhere).
    pub(crate) no_reuse_wait: bool,
}

impl Local {
    /// This machine's refresh lock: waited for, unless `urgency` is
    /// [`Urgency::IfDueUnlessBusy`] and there are cached credentials to keep.
    ///
    /// # Errors
    /// The store's errors ([`codex_store::StoreError::LockTimeout`]).
    pub(crate) async fn take_lock<S>(
        inner: &Inner,
        urgency: Urgency,
    ) -> Result<Locked<S>, RefreshError> {
        let store = inner.store.clone();
        Ok(match (urgency, inner.cached()) {
            (Urgency::IfDueUnlessBusy, Some(cached)) => {
                match blocking(move || store.try_begin_rotation()).await? {
                    Some(rotation) => Locked::Held(Box::new(rotation)),
                    // Another process is refreshing and ours are still valid: keep them, do
                    // not wait for its request.
                    None => Locked::Busy(cached),
                }
            }
            // Waits the store's one lock-wait setting; another process may hold the refresh
            // lock across its request, so it should exceed `http_timeout` (the default does).
            _ => Locked::Held(Box::new(blocking(move || store.begin_rotation()).await?)),
        })
    }

    /// Reserves `token`'s redemption in the rotation files.
    ///
    /// # Errors
    /// [`codex_store::StoreError::Conflict`] when auth.json changed since the read,
    /// [`codex_store::StoreError::AlreadyRedeemed`] when another refresh has the token; the
    /// store's other errors.
    pub(crate) async fn reserve_here<S>(
        rotation: Rotation,
        token: &Secret,
    ) -> Result<Reserve<S>, RefreshError> {
        let token = token.clone();
        blocking(move || rotation.reserve(&token))
            .await
            .map(|reserved| Reserve::Reserved(Box::new(reserved)))
    }
}

impl Coordinator for Local {
    type Stop = Infallible;
    type Report = Result<RefreshOutcome, RefreshError>;

    fn lock<'a>(
        &'a self,
        inner: &'a Inner,
        urgency: Urgency,
    ) -> Step<'a, Result<Locked<Infallible>, RefreshError>> {
        Box::pin(Local::take_lock(inner, urgency))
    }

    fn reuse_wait(&self, inner: &Inner) -> Duration {
        if self.no_reuse_wait {
            Duration::ZERO
        } else {
            inner.config.reuse_wait
        }
    }

    fn reserve<'a>(
        &'a self,
        rotation: Rotation,
        token: &'a Secret,
    ) -> Step<'a, Result<Reserve<Infallible>, RefreshError>> {
        Box::pin(Local::reserve_here(rotation, token))
    }

    fn before_send(&self) -> Step<'_, Result<Option<Duration>, RefreshError>> {
        Box::pin(async { Ok(None) })
    }

    fn answered(&self, _document: &AuthDotJson) {}

    fn wait_for_rotation<'a>(
        &'a self,
        inner: &'a Inner,
        known: &'a Known,
        refused: &'a Snapshot,
        since: Option<SystemTime>,
    ) -> Step<'a, Result<Option<Adopted>, RefreshError>> {
        let reuse_wait = self.reuse_wait(inner);
        Box::pin(poll_for_rotation(inner, known, refused, since, reuse_wait))
    }

    fn finish<'a>(
        &'a self,
        _inner: &'a Inner,
        result: Result<Ended<Infallible>, RefreshError>,
    ) -> Step<'a, Result<RefreshOutcome, RefreshError>> {
        Box::pin(async move {
            match result? {
                Ended::Done(outcome) => Ok(outcome),
                Ended::Stopped(never) => match never {},
            }
        })
    }
}
