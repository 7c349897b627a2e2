//! [`Coordinator`]: what the guarded refresh asks of whatever coordinates refreshes (this
//! machine's rotation files and journal, or a fleet's record in etcd on top of them), one method
//! per step of the protocol.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use codex_store::{AuthDotJson, Reserved, Rotation, Secret, Snapshot};

use super::{Ended, Urgency};
use crate::auth::CodexAuth;
use crate::error::RefreshError;
use crate::outcome::RefreshOutcome;
use crate::state::{Inner, Known};

/// A step's future: boxed and `Send`, since the protocol runs in a task of its own.
pub(crate) type Step<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What [`Coordinator::lock`] ended with.
pub(crate) enum Locked<S> {
    /// Every lock is held; this machine's refresh lock is the rotation (its snapshot is the
    /// current document, with its generation).
    Held(Box<Rotation>),
    /// Another refresh is under way and the caller's credentials are still valid
    /// ([`Urgency::IfDueUnlessBusy`]): keep them.
    Busy(Arc<CodexAuth>),
    /// The coordination says to stop here (not an error of the refresh).
    Stopped(S),
}

/// What [`Coordinator::reserve`] ended with.
pub(crate) enum Reserve<S> {
    /// Reserved: the token may be sent once [`Coordinator::before_send`] allows it.
    Reserved(Box<Reserved>),
    /// The coordination says to stop here (the rotation is dropped: nothing reserved).
    Stopped(S),
}

/// A rotation found while waiting for one.
pub(crate) type Adopted = (RefreshOutcome, Arc<CodexAuth>);

/// What coordinates the guarded refresh: one method per step of the protocol
/// ([`super::guarded_refresh`]). Object-safe; its futures are boxed and `Send`.
pub(crate) trait Coordinator: Send + Sync {
    /// Why a refresh stops without being an error of the refresh (another holder's lock, ...).
    type Stop: Send + 'static;
    /// What a whole run reports ([`Coordinator::finish`]).
    type Report: Send + 'static;

    /// Takes the locks, this machine's refresh lock last (waiting for it unless `urgency` is
    /// [`Urgency::IfDueUnlessBusy`] and the caller has valid credentials).
    fn lock<'a>(
        &'a self,
        inner: &'a Inner,
        urgency: Urgency,
    ) -> Step<'a, Result<Locked<Self::Stop>, RefreshError>>;

    /// How long the protocol waits here for the rotation a reuse refusal, a spent token or an
    /// unanswered request means (from when it happened).
    fn reuse_wait(&self, inner: &Inner) -> Duration;

    /// Reserves the redemption of `token` through `rotation`: checked again under the write
    /// locks, before anything is sent.
    fn reserve<'a>(
        &'a self,
        rotation: Rotation,
        token: &'a Secret,
    ) -> Step<'a, Result<Reserve<Self::Stop>, RefreshError>>;

    /// The last check before the request is sent: `Some(left)` bounds the request's time; an
    /// error forbids sending.
    fn before_send(&self) -> Step<'_, Result<Option<Duration>, RefreshError>>;

    /// The document the answer made, as soon as it exists and before it is saved.
    fn answered(&self, document: &AuthDotJson);

    /// Waits, every lock released, for a refresh token of the same account other than
    /// `refused`'s, until `since` + [`Coordinator::reuse_wait`]; adopts it. `None` when none
    /// came.
    fn wait_for_rotation<'a>(
        &'a self,
        inner: &'a Inner,
        known: &'a Known,
        refused: &'a Snapshot,
        since: Option<SystemTime>,
    ) -> Step<'a, Result<Option<Adopted>, RefreshError>>;

    /// Publishes a whole run's result (`result`: the new tokens are in the cache when
    /// refreshed) beyond this machine, records a refusal where others see it, and says what
    /// happened.
    fn finish<'a>(
        &'a self,
        inner: &'a Inner,
        result: Result<Ended<Self::Stop>, RefreshError>,
    ) -> Step<'a, Self::Report>;
}
