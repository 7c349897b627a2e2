//! Waiting for a rotation: after `refresh_token_reused`, a spent token or a request without a
//! known outcome, auth.json is watched (every lock released) for the newer token another
//! process installs.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use codex_store::Snapshot;

use super::coordinator::{Adopted, Coordinator};
use super::decide::waited;
use super::disk::check_disk;
use crate::error::{PermanentReason, RefreshError};
use crate::outcome::RefreshOutcome;
use crate::state::{blocking, Inner, Known};

/// How often auth.json is re-read while waiting for the rotation a reuse refusal means.
const REUSE_POLL: Duration = Duration::from_millis(20);

/// After `refresh_token_reused` (ours, or one the journal recorded at `since`): waits for the
/// rotation the refusal means (see [`Coordinator::wait_for_rotation`]), and adopts it. Only
/// then is the refusal reported.
///
/// # Errors
/// [`RefreshError::Permanent`] (reused) when no rotation came; the errors of the new
/// credentials (another account).
pub(super) async fn await_rotation<C: Coordinator + ?Sized>(
    coordinator: &C,
    inner: &Inner,
    known: &Known,
    refused: &Snapshot,
    since: Option<SystemTime>,
) -> Result<Adopted, RefreshError> {
    match coordinator
        .wait_for_rotation(inner, known, refused, since)
        .await?
    {
        Some(found) => Ok(found),
        None => Err(inner.remember_failure(
            refused.generation(),
            RefreshError::Permanent {
                reason: PermanentReason::Reused,
            },
        )),
    }
}

/// Watches auth.json until `since` + `reuse_wait` for a refresh token of the same account other
/// than `refused`'s, and adopts it; `None` when none came. (Looks once with no wait.)
///
/// # Errors
/// The errors of the new credentials ([`check_disk`]).
pub(crate) async fn poll_for_rotation(
    inner: &Inner,
    known: &Known,
    refused: &Snapshot,
    since: Option<SystemTime>,
    reuse_wait: Duration,
) -> Result<Option<Adopted>, RefreshError> {
    let dead = refused
        .auth()
        .and_then(|d| d.tokens.as_ref())
        .map(|t| t.refresh_token.clone());
    let deadline = Instant::now() + reuse_wait.saturating_sub(waited(since, SystemTime::now()));
    loop {
        let store = inner.store.clone();
        if let Ok(snap) = blocking(move || store.load()).await {
            let rotated = snap
                .auth()
                .and_then(|d| d.tokens.as_ref())
                .is_some_and(|t| Some(&t.refresh_token) != dead.as_ref());
            if snap.generation() != refused.generation() && rotated {
                let newer = check_disk(inner, known, &snap)?;
                tracing::info!("the refresh token was rotated by another process; adopted it");
                return Ok(Some((RefreshOutcome::AdoptedFromDisk, Arc::new(newer))));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        tokio::time::sleep(left.min(REUSE_POLL)).await;
    }
}
