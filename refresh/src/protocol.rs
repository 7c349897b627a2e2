//! The guarded refresh: refresh lock -> re-read -> compare account -> refresh only if still
//! unchanged and still due (the save reserved first) -> persist by compare-and-swap under the
//! write locks -> unlock.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use codex_store::{
    AuthDotJson, Durability, JournalEvent, JournalRecord, Reserved, Rotation, SaveOutcome,
    Snapshot, Timestamp,
};

use crate::auth::{CodexAuth, Mode};
use crate::client::TokenAnswer;
use crate::error::{PermanentReason, RefreshError, TransientReason};
use crate::outcome::RefreshOutcome;
use crate::state::{blocking, warn_not_durable, Inner, Known};

fn signed_out(inner: &Inner, known: &Known) -> RefreshError {
    let path = inner.store.path().to_path_buf();
    match known {
        Known::Credentials { .. } => RefreshError::LoggedOut { path },
        Known::SignedOut => RefreshError::NotSignedIn { path },
    }
}

/// The credentials of a snapshot, refused when their workspace is not allowed; `None` when
/// signed out.
pub(crate) fn auth_from_snapshot(
    snap: &Snapshot,
    config: &crate::RefreshConfig,
) -> Result<Option<CodexAuth>, RefreshError> {
    let Some(doc) = snap.auth() else {
        return Ok(None);
    };
    let auth = CodexAuth::from_document(doc, snap.generation())?;
    if let Some(auth) = &auth {
        auth.check_workspace(config)?;
    }
    Ok(auth)
}

/// Checks the snapshot read under the lock against what the caller knew.
pub(crate) fn check_disk(
    inner: &Inner,
    known: &Known,
    snap: &Snapshot,
) -> Result<CodexAuth, RefreshError> {
    let disk = auth_from_snapshot(snap, &inner.config)?.ok_or_else(|| signed_out(inner, known))?;
    if let Some(expected) = known.account_id() {
        if disk.account_id() != Some(expected) {
            return Err(RefreshError::AccountChanged {
                expected: expected.to_owned(),
                found: disk.account_id().unwrap_or("<none>").to_owned(),
            });
        }
    }
    Ok(disk)
}

/// When a refresh asks for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Urgency {
    /// Only when the tokens are due (and no recent transient failure is shared).
    IfDue,
    /// Like [`Urgency::IfDue`], but when another refresh (in this process or another) is under
    /// way, does not wait for it: the caller's credentials are still valid, and it keeps them.
    IfDueUnlessBusy,
    /// Even when they are not due (an explicit refresh, or the 401 recovery), unless another
    /// process already refreshed.
    Now,
}

impl Urgency {
    /// Whether credentials that are not due are left alone.
    pub(crate) fn only_if_due(self) -> bool {
        matches!(self, Urgency::IfDue | Urgency::IfDueUnlessBusy)
    }
}

/// Runs the protocol once, with `urgency` saying whether tokens that are not due are refreshed.
///
/// Single flight across processes is the refresh lock ([`codex_store::Rotation`]), held across
/// the request; the write locks (`auth.lock`, `auth.json.lock`, shared with Codex) are taken only
/// by the save, for milliseconds, so that no Codex process waiting for them gives up.
pub(crate) async fn guarded_refresh(
    inner: Arc<Inner>,
    known: Known,
    urgency: Urgency,
) -> Result<(RefreshOutcome, Arc<CodexAuth>), RefreshError> {
    let store = inner.store.clone();
    // The store's one lock-wait setting; another process may hold the refresh lock across its
    // request, so it should exceed `http_timeout` (the default does).
    let wait = inner.store.options().lock_timeout;
    let rotation: Rotation = match (urgency, inner.cached()) {
        (Urgency::IfDueUnlessBusy, Some(cached)) => {
            match blocking(move || store.try_begin_rotation()).await? {
                Some(rotation) => rotation,
                // Another process is refreshing and ours are still valid: keep them, do not
                // wait for its request.
                None => return Ok((RefreshOutcome::NotNeeded, cached)),
            }
        }
        _ => blocking(move || store.begin_rotation(wait)).await?,
    };
    // Under the refresh lock, after the recovery: tokens this process could not write before.
    if let Some(saved) = save_unsaved(&inner).await? {
        return Ok((RefreshOutcome::Refreshed, saved));
    }
    let snap = rotation.snapshot().clone();
    let disk = check_disk(&inner, &known, &snap)?;
    let generation = snap.generation();
    let now = SystemTime::now();
    if disk.mode() == Mode::ApiKey {
        return Ok((RefreshOutcome::NotNeeded, Arc::new(disk)));
    }
    let moved_on = known.generation() != Some(generation);
    if moved_on && !disk.is_due(now, &inner.config) {
        return Ok((RefreshOutcome::AdoptedFromDisk, Arc::new(disk)));
    }
    if urgency.only_if_due() && !disk.is_due(now, &inner.config) {
        return Ok((RefreshOutcome::NotNeeded, Arc::new(disk)));
    }
    if let Some(remembered) = inner.remembered_failure(generation) {
        return Err(remembered);
    }
    // Another process was refused this very token: do not send it again.
    if let Some(refusal) = rotation.refusal() {
        drop(rotation);
        let reason = PermanentReason::from_code(refusal.code.as_deref().unwrap_or(""));
        tracing::info!(code = ?refusal.code, "another process was refused this refresh token; not sending it again");
        if reason == PermanentReason::Reused {
            return await_rotation(&inner, &known, &snap, refusal.time()).await;
        }
        return Err(inner.remember_failure(generation, RefreshError::Permanent { reason }));
    }
    let doc = snap.auth().cloned().unwrap_or_default();
    let Some(refresh_token) = doc.tokens.as_ref().map(|t| t.refresh_token.clone()) else {
        return Err(signed_out(&inner, &known));
    };
    // Everything the save needs is reserved before the token is redeemed; if that fails, nothing
    // is sent.
    let to_redeem = refresh_token.clone();
    let reserved: Reserved = blocking(move || rotation.reserve(&to_redeem)).await?;
    if inner.stopping.load(std::sync::atomic::Ordering::Acquire) {
        // Stopping: nothing is sent (the reservation is removed with it).
        drop(reserved.abandon());
        return Err(RefreshError::Transient {
            reason: TransientReason::Stopping,
        });
    }
    tracing::debug!(generation = %generation, "refreshing tokens (refresh lock held, write locks free)");
    match inner.client.refresh(&refresh_token).await {
        Ok(answer) => persist(&inner, &known, reserved, doc, answer).await,
        Err(RefreshError::Permanent { reason }) => {
            let rotation = reserved.abandon();
            let mut record = JournalRecord::new(JournalEvent::Refused, generation);
            record.account = disk.account_id().map(str::to_owned);
            record.refresh = Some(refresh_token.fingerprint());
            // Bounded, so that the journal's line limit never hides a refusal.
            record.code = Some(reason.code().chars().take(64).collect());
            rotation.record(&record);
            drop(rotation);
            if reason == PermanentReason::Reused {
                return await_rotation(&inner, &known, &snap, Some(SystemTime::now())).await;
            }
            Err(inner.remember_failure(generation, RefreshError::Permanent { reason }))
        }
        Err(e) => Err(e),
    }
}

/// After `refresh_token_reused` (ours, or one the journal recorded at `since`): with every lock
/// released, watches auth.json until `since` + [`crate::RefreshConfig::reuse_wait`] for a newer
/// refresh token of the same account (the rotation the refusal means, landing late), and
/// adopts it. Only then is the refusal reported.
async fn await_rotation(
    inner: &Arc<Inner>,
    known: &Known,
    refused: &Snapshot,
    since: Option<SystemTime>,
) -> Result<(RefreshOutcome, Arc<CodexAuth>), RefreshError> {
    let dead = refused
        .auth()
        .and_then(|d| d.tokens.as_ref())
        .map(|t| t.refresh_token.clone());
    let waited = since
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .unwrap_or_default();
    let deadline = Instant::now() + inner.config.reuse_wait.saturating_sub(waited);
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
                return Ok((RefreshOutcome::AdoptedFromDisk, Arc::new(newer)));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        tokio::time::sleep(left.min(REUSE_POLL)).await;
    }
    Err(inner.remember_failure(
        refused.generation(),
        RefreshError::Permanent {
            reason: PermanentReason::Reused,
        },
    ))
}

/// How often auth.json is re-read while waiting for the rotation a reuse refusal means.
const REUSE_POLL: Duration = Duration::from_millis(20);

/// Applies the answer: new tokens, missing fields keep their old value, `last_refresh` = now.
/// An id token that does not decode is not stored (the old one is kept): the store would refuse
/// the whole document, and the new refresh token with it. An id token of another account is an
/// error: nothing is applied, so that two accounts never mix in one file.
fn apply(doc: &mut AuthDotJson, answer: &TokenAnswer) -> Result<(), RefreshError> {
    if let Some(tokens) = doc.tokens.as_mut() {
        if let Some(t) = &answer.id_token {
            match codex_store::IdTokenClaims::decode(t.expose()) {
                Ok(claims) => {
                    let ours = tokens.account();
                    if claims.account_id.is_some() && ours.is_some() && claims.account_id != ours {
                        return Err(RefreshError::Transient {
                            reason: TransientReason::InvalidAnswer(
                                "its id token belongs to another account".into(),
                            ),
                        });
                    }
                    tokens.id_token = t.clone();
                }
                Err(_) => tracing::warn!(
                    "the token endpoint sent an id token that does not decode; kept the old one"
                ),
            }
        }
        if let Some(t) = &answer.access_token {
            tokens.access_token = t.clone();
        }
        if let Some(t) = &answer.refresh_token {
            tokens.refresh_token = t.clone();
        }
    }
    doc.last_refresh = Some(Timestamp::now());
    Ok(())
}

/// Persists the answer through the reservation: durable in the rotation file first, then
/// installed under the write locks (merged into what a writer ignoring the locks wrote
/// meanwhile, for the same account). If no file could take the new credentials, they are kept
/// in this process's memory and written by its next attempt.
async fn persist(
    inner: &Inner,
    known: &Known,
    reserved: Reserved,
    doc: AuthDotJson,
    answer: TokenAnswer,
) -> Result<(RefreshOutcome, Arc<CodexAuth>), RefreshError> {
    let read_at = reserved.rotation().snapshot().generation();
    let redeemed = doc.tokens.as_ref().map(|t| t.refresh_token.fingerprint());
    let mut refreshed = doc;
    if let Err(e) = apply(&mut refreshed, &answer) {
        tracing::error!(error = %e, "the token endpoint's answer was refused; nothing stored");
        // The token was redeemed all the same: it is spent, and no process may send it again
        // (the next one would be told "already used"). Recorded as refused.
        let rotation = reserved.abandon();
        let mut record = JournalRecord::new(JournalEvent::Refused, read_at);
        record.refresh = redeemed;
        record.code = Some("unusable_answer".into());
        rotation.record(&record);
        return Err(e);
    }
    let attempt = refreshed.clone();
    let saved = blocking(move || reserved.save(&attempt)).await;
    match saved {
        Ok(SaveOutcome::Installed {
            generation,
            document,
            merged,
            durability,
        }) => {
            if merged {
                tracing::warn!("auth.json changed during the refresh (a writer ignoring the locks); merged the new tokens into it");
            }
            if let Durability::NotDurable { reason } = &durability {
                tracing::warn!(%reason, "the new tokens are in auth.json but not known to be on disk");
            }
            let auth = CodexAuth::from_document(&document, generation)?
                .ok_or_else(|| signed_out(inner, known))?;
            tracing::info!(generation = %generation, "tokens refreshed");
            Ok((RefreshOutcome::Refreshed, Arc::new(auth)))
        }
        Ok(SaveOutcome::Superseded { current }) => {
            // Another account signed in, or a logout, during the request: theirs wins.
            check_disk(inner, known, &current)?;
            Err(signed_out(inner, known))
        }
        Err(e) => {
            // Also when they are safe in a rotation file (`NotInstalled`): the next attempt of
            // this process then does not stop at its cache, and installs them (the recovery, or
            // this copy).
            tracing::error!(error = %e, "new tokens could not be stored; keeping them in memory");
            if let Ok(Some(auth)) = CodexAuth::from_document(&refreshed, read_at) {
                inner.set_cache(Some(Arc::new(auth)));
            }
            inner.keep_unsaved(read_at, refreshed);
            Err(e)
        }
    }
}

/// Writes credentials an earlier attempt obtained but could not write, if the file is still
/// what they replace. If someone else wrote since, what is on disk wins and they are dropped.
async fn save_unsaved(inner: &Inner) -> Result<Option<Arc<CodexAuth>>, RefreshError> {
    let Some((base, doc)) = inner.take_unsaved() else {
        return Ok(None);
    };
    let store = inner.store.clone();
    let attempt = doc.clone();
    let saved = blocking(move || {
        let tx = store.transaction()?;
        if tx.snapshot().generation() != base {
            return Ok(None);
        }
        tx.commit(Some(&attempt))
            .or_else(|e| {
                warn_not_durable(&e);
                e.accept_not_durable()
            })
            .map(Some)
    })
    .await;
    match saved {
        Ok(Some(generation)) => {
            tracing::info!(generation = %generation, "stored the tokens an earlier write failed to store");
            Ok(CodexAuth::from_document(&doc, generation)?.map(Arc::new))
        }
        Ok(None) => {
            tracing::warn!(
                "auth.json changed since the failed write; the unsaved tokens are dropped"
            );
            Ok(None)
        }
        Err(e) => {
            inner.keep_unsaved(base, doc);
            Err(e)
        }
    }
}
