//! The guarded refresh: refresh lock -> re-read -> compare account -> refresh only if still
//! unchanged and still due (the save reserved first) -> persist by compare-and-swap under the
//! write locks -> unlock.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use codex_store::{
    AuthDotJson, Durability, JournalEvent, JournalRecord, Reserved, Rotation, SaveOutcome,
    Snapshot, StoreError, Timestamp, TokenFate,
};

use crate::auth::{CodexAuth, Mode};
use crate::client::TokenAnswer;
use crate::error::{PermanentReason, RefreshError, TransientReason};
use crate::fence::SendFence;
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

/// How many times a refresh starts again from the lock (auth.json changed between the read
/// and the reservation, or a token sent without a known outcome was waited out) before the
/// last reason is returned.
const RESTARTS: u32 = 4;

/// What one pass of the protocol ended with.
enum Pass {
    /// The refresh's result.
    Done((RefreshOutcome, Arc<CodexAuth>)),
    /// Start again from the lock, for this reason.
    Again(RefreshError),
}

/// Runs the protocol, with `urgency` saying whether tokens that are not due are refreshed.
///
/// Single flight across processes is the refresh lock ([`codex_store::Rotation`]), held across
/// the request; the write locks (`auth.lock`, `auth.json.lock`, shared with Codex) are taken only
/// to check the reservation and by the save, for milliseconds, so that no Codex process waiting
/// for them gives up.
///
/// `fence`, when given, is checked immediately before the request is sent (after the local
/// reservation): it may forbid sending, and bounds the request's time.
pub(crate) async fn guarded_refresh(
    inner: Arc<Inner>,
    known: Known,
    urgency: Urgency,
    fence: Option<Arc<dyn SendFence>>,
) -> Result<(RefreshOutcome, Arc<CodexAuth>), RefreshError> {
    let mut last = None;
    for _ in 0..RESTARTS {
        match pass(&inner, &known, urgency, fence.as_deref()).await? {
            Pass::Done(done) => return Ok(done),
            Pass::Again(why) => last = Some(why),
        }
    }
    Err(last.unwrap_or(RefreshError::Transient {
        reason: TransientReason::Stopping,
    }))
}

/// One pass: refresh lock -> recovery -> re-read -> checks -> reserve and check again -> send
/// -> persist.
async fn pass(
    inner: &Arc<Inner>,
    known: &Known,
    urgency: Urgency,
    fence: Option<&dyn SendFence>,
) -> Result<Pass, RefreshError> {
    let store = inner.store.clone();
    let rotation: Rotation = match (urgency, inner.cached()) {
        (Urgency::IfDueUnlessBusy, Some(cached)) => {
            match blocking(move || store.try_begin_rotation()).await? {
                Some(rotation) => rotation,
                // Another process is refreshing and ours are still valid: keep them, do not
                // wait for its request.
                None => return Ok(Pass::Done((RefreshOutcome::NotNeeded, cached))),
            }
        }
        // Waits the store's one lock-wait setting; another process may hold the refresh lock
        // across its request, so it should exceed `http_timeout` (the default does).
        _ => blocking(move || store.begin_rotation()).await?,
    };
    // Under the refresh lock, after the recovery: tokens this process could not write before.
    if let Some(saved) = save_unsaved(inner).await? {
        return Ok(Pass::Done((RefreshOutcome::Refreshed, saved)));
    }
    let snap = rotation.snapshot().clone();
    let disk = check_disk(inner, known, &snap)?;
    let generation = snap.generation();
    let now = SystemTime::now();
    let done = |outcome, auth| Ok(Pass::Done((outcome, Arc::new(auth))));
    if disk.mode() == Mode::ApiKey {
        return done(RefreshOutcome::NotNeeded, disk);
    }
    let moved_on = known.generation() != Some(generation);
    if moved_on && !disk.is_due(now, &inner.config) {
        return done(RefreshOutcome::AdoptedFromDisk, disk);
    }
    if urgency.only_if_due() && !disk.is_due(now, &inner.config) {
        return done(RefreshOutcome::NotNeeded, disk);
    }
    if let Some(remembered) = inner.remembered_failure(generation) {
        return Err(remembered);
    }
    // What the journal knows of this very token decides whether it may be sent.
    match rotation.fate().cloned() {
        Some(TokenFate::Refused(refusal)) => {
            drop(rotation);
            let reason = PermanentReason::from_code(refusal.code.as_deref().unwrap_or(""));
            tracing::info!(code = ?refusal.code, "another process was refused this refresh token; not sending it again");
            if reason == PermanentReason::Reused {
                return await_rotation(inner, known, &snap, refusal.time())
                    .await
                    .map(Pass::Done);
            }
            return Err(inner.remember_failure(generation, RefreshError::Permanent { reason }));
        }
        Some(TokenFate::Spent(spent)) => {
            // Redeemed already (its answer installed elsewhere, or lost): the endpoint would
            // refuse it. Wait for the rotation, as after a reuse refusal.
            drop(rotation);
            tracing::info!(event = ?spent.event, "this refresh token was already redeemed; not sending it again");
            return await_rotation(inner, known, &snap, spent.time())
                .await
                .map(Pass::Done);
        }
        Some(TokenFate::Unanswered(sent)) if waited(sent.time()) < inner.config.reuse_wait => {
            // Sent before without a known outcome: the answer may still land. Wait for it (the
            // reuse wait from that send); only then is the token sent again, once.
            drop(rotation);
            tracing::info!("this refresh token was sent without a known outcome; waiting for its rotation before sending it again");
            return Ok(
                match wait_for_rotation(inner, known, &snap, sent.time()).await? {
                    Some(found) => Pass::Done(found),
                    None => Pass::Again(RefreshError::Transient {
                        reason: TransientReason::Timeout,
                    }),
                },
            );
        }
        _ => {}
    }
    let doc = snap.auth().cloned().unwrap_or_default();
    let Some(refresh_token) = doc.tokens.as_ref().map(|t| t.refresh_token.clone()) else {
        return Err(signed_out(inner, known));
    };
    // Everything the save needs is reserved, and checked again under the write locks, before
    // the token is redeemed; if that fails, nothing is sent.
    let to_redeem = refresh_token.clone();
    let reserved: Reserved = match blocking(move || rotation.reserve(&to_redeem)).await {
        Ok(reserved) => reserved,
        // auth.json changed between the read and the reservation: look again.
        Err(e @ RefreshError::Store(StoreError::Conflict { .. })) => return Ok(Pass::Again(e)),
        // Another refresh (whose refresh lock is another file) has this token: wait for
        // its rotation.
        Err(e @ RefreshError::Store(StoreError::AlreadyRedeemed { .. })) => {
            // Its request may fail without redeeming anything: if no rotation comes, look
            // again from the lock (the journal then says what became of the token).
            tracing::warn!(error = %e, "waiting for the rotation of another refresh");
            return Ok(
                match wait_for_rotation(inner, known, &snap, Some(SystemTime::now())).await? {
                    Some(found) => Pass::Done(found),
                    None => Pass::Again(e),
                },
            );
        }
        Err(e) => return Err(e),
    };
    // From here until the answer is durable, a stopping process waits (see
    // `AuthManager::stop`); once it is stopping, nothing new is sent.
    let Some(_sending) = inner.begin_send() else {
        drop(reserved.abandon());
        return Err(RefreshError::Transient {
            reason: TransientReason::Stopping,
        });
    };
    // The last check before the bytes leave: what coordinates beyond this machine (the
    // fleet's lease and reservation) still allows it, and for how long.
    let within = match fence {
        Some(fence) => match fence.check().await {
            Ok(left) => Some(left),
            Err(e) => {
                drop(reserved.abandon());
                return Err(e);
            }
        },
        None => None,
    };
    tracing::debug!(generation = %generation, "refreshing tokens (refresh lock held, write locks free)");
    let fingerprint = refresh_token.fingerprint();
    let outcome = |event, code: String| {
        let mut record = JournalRecord::new(event, generation);
        record.account = disk.account_id().map(str::to_owned);
        record.refresh = Some(fingerprint.clone());
        // Bounded, so that the journal's line limit never hides it.
        record.code = Some(code.chars().take(64).collect());
        record
    };
    match inner.client.refresh(&refresh_token, within).await {
        Ok(answer) => persist(inner, known, reserved, doc, answer, fence)
            .await
            .map(Pass::Done),
        Err(RefreshError::Permanent { reason }) => {
            // Journaled before the reservation goes, so that no process that takes it for
            // unused sends the token again.
            drop(reserved.abandon_recorded(&outcome(JournalEvent::Refused, reason.code())));
            if reason == PermanentReason::Reused {
                return await_rotation(inner, known, &snap, Some(SystemTime::now()))
                    .await
                    .map(Pass::Done);
            }
            Err(inner.remember_failure(generation, RefreshError::Permanent { reason }))
        }
        Err(e) => {
            if may_be_spent(&e) {
                drop(reserved.abandon_recorded(&outcome(JournalEvent::Unanswered, e.to_string())));
            } else {
                drop(reserved.abandon());
            }
            Err(e)
        }
    }
}

/// How long ago `since` (a journal record's time) was. A time that is missing, unreadable or
/// in the future (a clock stepped back, a forged record) counts as long past: it never makes
/// anyone wait.
fn waited(since: Option<SystemTime>) -> Duration {
    since
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .unwrap_or(Duration::MAX)
}

/// Whether a failed request may have reached the endpoint and redeemed the token: no answer in
/// time, a connection cut after it was made, a 200 that could not be used, or a server error (a
/// gateway's 502/504 may come after the token endpoint behind it rotated). (An OAuth error
/// answer, a 429, a redirect or a connection never made redeemed nothing.)
fn may_be_spent(e: &RefreshError) -> bool {
    match e {
        RefreshError::Transient { reason } => match reason {
            TransientReason::Timeout
            | TransientReason::Interrupted
            | TransientReason::UnparseableAnswer
            | TransientReason::InvalidAnswer(_) => true,
            TransientReason::Status(status) => *status >= 500,
            _ => false,
        },
        _ => false,
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
    match wait_for_rotation(inner, known, refused, since).await? {
        Some(found) => Ok(found),
        None => Err(inner.remember_failure(
            refused.generation(),
            RefreshError::Permanent {
                reason: PermanentReason::Reused,
            },
        )),
    }
}

/// Watches auth.json until `since` + [`crate::RefreshConfig::reuse_wait`] for a refresh token of
/// the same account other than `refused`'s, and adopts it; `None` when none came.
async fn wait_for_rotation(
    inner: &Arc<Inner>,
    known: &Known,
    refused: &Snapshot,
    since: Option<SystemTime>,
) -> Result<Option<(RefreshOutcome, Arc<CodexAuth>)>, RefreshError> {
    let dead = refused
        .auth()
        .and_then(|d| d.tokens.as_ref())
        .map(|t| t.refresh_token.clone());
    let deadline = Instant::now() + inner.config.reuse_wait.saturating_sub(waited(since));
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
    fence: Option<&dyn SendFence>,
) -> Result<(RefreshOutcome, Arc<CodexAuth>), RefreshError> {
    let read_at = reserved.rotation().snapshot().generation();
    let redeemed = doc.tokens.as_ref().map(|t| t.refresh_token.fingerprint());
    let mut refreshed = doc;
    if let Err(e) = apply(&mut refreshed, &answer) {
        tracing::error!(error = %e, "the token endpoint's answer was refused; nothing stored");
        // The token was redeemed all the same: it is spent, and no process may send it again
        // (the next one would be told "already used"). Journaled before the reservation goes.
        let mut record = JournalRecord::new(JournalEvent::Spent, read_at);
        record.refresh = redeemed;
        record.code = Some("unusable_answer".into());
        drop(reserved.abandon_recorded(&record));
        return Err(e);
    }
    if let Some(fence) = fence {
        fence.answered(&refreshed);
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
            // Another account signed in, a logout, or newer tokens of this account (another
            // process rotated them) during the request: theirs win, and are adopted.
            let theirs = check_disk(inner, known, &current)?;
            tracing::warn!("auth.json changed during the refresh to other credentials; they win");
            Ok((RefreshOutcome::AdoptedFromDisk, Arc::new(theirs)))
        }
        Err(e) => {
            // Also when they are safe in a rotation file (`NotInstalled`): the next attempt of
            // this process then does not stop at its cache, and installs them (the recovery, or
            // this copy). The error itself is the caller's to report, once.
            tracing::debug!(error = %e, "new tokens could not be installed; this process keeps a copy for its next attempt");
            if let Ok(Some(auth)) = CodexAuth::from_document(&refreshed, read_at) {
                inner.set_cache(Some(Arc::new(auth)));
            }
            if let Some(redeemed) = redeemed {
                inner.keep_unsaved(redeemed, refreshed);
            }
            Err(e)
        }
    }
}

/// Writes credentials an earlier attempt obtained but could not write, if auth.json still
/// holds the refresh token they were redeemed for (a rewrite of the same tokens, by a writer
/// ignoring the locks, does not count as a change: the new tokens are merged into it). If
/// auth.json holds other tokens (the rotation file installed them, or another process rotated),
/// what is on disk wins and they are dropped.
async fn save_unsaved(inner: &Inner) -> Result<Option<Arc<CodexAuth>>, RefreshError> {
    let Some((redeemed, doc)) = inner.take_unsaved() else {
        return Ok(None);
    };
    let store = inner.store.clone();
    let attempt = doc.clone();
    let wanted = redeemed.clone();
    let saved = blocking(move || {
        let tx = store.transaction()?;
        let current = tx.snapshot().auth();
        let holds_redeemed = current
            .and_then(|d| d.tokens.as_ref())
            .is_some_and(|t| t.refresh_token.fingerprint() == wanted);
        let Some(merged) = current
            .filter(|_| holds_redeemed)
            .and_then(|c| codex_store::merge_rotated(c, &attempt))
        else {
            return Ok(None);
        };
        tx.commit(Some(&merged))
            .or_else(|e| {
                warn_not_durable(&e);
                e.accept_not_durable()
            })
            .map(|generation| Some((generation, merged)))
    })
    .await;
    match saved {
        Ok(Some((generation, merged))) => {
            tracing::info!(generation = %generation, "stored the tokens an earlier write failed to store");
            Ok(CodexAuth::from_document(&merged, generation)?.map(Arc::new))
        }
        Ok(None) => {
            tracing::info!(
                "auth.json no longer holds the refresh token the unsaved tokens replace; what it holds wins"
            );
            Ok(None)
        }
        Err(e) => {
            inner.keep_unsaved(redeemed, doc);
            Err(e)
        }
    }
}
