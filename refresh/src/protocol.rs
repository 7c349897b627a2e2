//! The guarded refresh, run under the store's exclusive lock:
//! lock -> re-read -> compare account -> refresh only if still unchanged and still due ->
//! persist by compare-and-swap -> unlock.

use std::sync::Arc;
use std::time::SystemTime;

use codex_store::{AuthDotJson, Generation, Snapshot, StoreError, Timestamp, Transaction};

use crate::auth::{CodexAuth, Mode};
use crate::client::TokenAnswer;
use crate::error::{PermanentReason, RefreshError};
use crate::manager::Inner;

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

/// What the caller knew when it asked.
pub(crate) struct Known {
    pub(crate) account_id: Option<String>,
    pub(crate) generation: Option<Generation>,
    pub(crate) had_credentials: bool,
}

/// Runs a blocking store operation off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, RefreshError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(RefreshError::from),
        Err(e) => Err(RefreshError::TaskFailed {
            message: format!("a blocking store operation failed: {e}"),
        }),
    }
}

fn signed_out(inner: &Inner, known: &Known) -> RefreshError {
    let path = inner.store.path().to_path_buf();
    if known.had_credentials {
        RefreshError::LoggedOut { path }
    } else {
        RefreshError::NotSignedIn { path }
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
    if let Some(expected) = &known.account_id {
        if disk.account_id() != Some(expected.as_str()) {
            return Err(RefreshError::AccountChanged {
                expected: expected.clone(),
                found: disk.account_id().unwrap_or("<none>").to_owned(),
            });
        }
    }
    Ok(disk)
}

/// Runs the protocol once. `force`: refresh even when the tokens on disk are not due (an
/// explicit refresh, or the 401 recovery), unless another process already refreshed.
pub(crate) async fn guarded_refresh(
    inner: Arc<Inner>,
    known: Known,
    force: bool,
) -> Result<(RefreshOutcome, Arc<CodexAuth>), RefreshError> {
    if let Some(saved) = save_unsaved(&inner).await? {
        return Ok((RefreshOutcome::Refreshed, saved));
    }
    let store = inner.store.clone();
    let tx: Transaction = blocking(move || store.transaction()).await?;
    let snap = tx.snapshot().clone();
    let disk = check_disk(&inner, &known, &snap)?;
    let generation = snap.generation();
    let now = SystemTime::now();
    if disk.mode() == Mode::ApiKey {
        return Ok((RefreshOutcome::NotNeeded, Arc::new(disk)));
    }
    let moved_on = known.generation != Some(generation);
    if moved_on && !disk.is_due(now, &inner.config) {
        return Ok((RefreshOutcome::AdoptedFromDisk, Arc::new(disk)));
    }
    if !force && !disk.is_due(now, &inner.config) {
        return Ok((RefreshOutcome::NotNeeded, Arc::new(disk)));
    }
    if let Some(remembered) = inner.remembered_failure(generation) {
        return Err(remembered);
    }
    let doc = snap.auth().cloned().unwrap_or_default();
    let Some(tokens) = &doc.tokens else {
        return Err(signed_out(&inner, &known));
    };
    // A commit that cannot happen must be found before the token is redeemed, or the rotated
    // token would be lost.
    tx.check_writable()?;
    tracing::debug!(generation = %generation, "refreshing tokens under the store lock");
    match inner.client.refresh(&tokens.refresh_token).await {
        Ok(answer) => {
            let (new_doc, new_gen) = persist(&inner, tx, doc, answer).await?;
            let auth = CodexAuth::from_document(&new_doc, new_gen)?
                .ok_or_else(|| signed_out(&inner, &known))?;
            tracing::info!(generation = %new_gen, "tokens refreshed");
            Ok((RefreshOutcome::Refreshed, Arc::new(auth)))
        }
        Err(RefreshError::Permanent {
            reason: PermanentReason::Reused,
        }) => {
            // A writer that ignores the lock may have rotated the token: adopt what it wrote.
            let store = inner.store.clone();
            let again = blocking(move || store.load()).await;
            drop(tx);
            if let Ok(again) = again {
                // Adopt only a file that really holds another refresh token: a rewrite that kept
                // the dead one is no rescue.
                let rotated = again
                    .auth()
                    .and_then(|d| d.tokens.as_ref())
                    .is_some_and(|t| t.refresh_token != tokens.refresh_token);
                if again.generation() != generation && rotated {
                    if let Ok(newer) = check_disk(&inner, &known, &again) {
                        tracing::info!("refresh token was rotated outside the lock; adopted it");
                        return Ok((RefreshOutcome::AdoptedFromDisk, Arc::new(newer)));
                    }
                }
            }
            Err(inner.remember_failure(
                generation,
                RefreshError::Permanent {
                    reason: PermanentReason::Reused,
                },
            ))
        }
        Err(e) => Err(inner.remember_failure(generation, e)),
    }
}

/// Applies the answer: new tokens, missing fields keep their old value, `last_refresh` = now.
/// An id token that does not decode is not stored (the old one is kept): the store would refuse
/// the whole document, and the new refresh token with it.
fn apply(doc: &mut AuthDotJson, answer: &TokenAnswer) {
    if let Some(tokens) = doc.tokens.as_mut() {
        if let Some(t) = &answer.id_token {
            if codex_store::jwt::IdTokenClaims::decode(t.expose()).is_ok() {
                tokens.id_token = t.clone();
            } else {
                tracing::warn!(
                    "the token endpoint sent an id token that does not decode; kept the old one"
                );
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
}

/// Persists the answer under the lock still held. The file is read again first: if a writer
/// that ignores the lock changed it during the request, the new tokens (the only live ones now)
/// are applied to what it wrote, as long as it is the same account. If the write fails, the new
/// credentials are kept in this process's cache, so the live refresh token is not dropped here.
async fn persist(
    inner: &Inner,
    tx: Transaction,
    doc: AuthDotJson,
    answer: TokenAnswer,
) -> Result<(AuthDotJson, Generation), RefreshError> {
    let read_at = tx.snapshot().generation();
    let mut refreshed = doc.clone();
    apply(&mut refreshed, &answer);
    let account = effective_account(&doc);
    let path = inner.store.path().to_path_buf();
    let attempt = refreshed.clone();
    let written = blocking(move || {
        let mut tx = tx;
        tx.reread()?;
        let current = tx.snapshot();
        if current.generation() == read_at {
            return tx.commit(Some(&attempt)).map(|g| Ok((attempt, g)));
        }
        tracing::warn!(
            "auth.json changed during the refresh (a writer ignoring the lock); merging"
        );
        let Some(mut merged) = current.auth().cloned() else {
            return Ok(Err(None));
        };
        let found = effective_account(&merged);
        if merged.tokens.is_none() || account.is_none() || found != account {
            // Another account signed in meanwhile (or we cannot tell): its credentials win.
            return Ok(Err(Some(found.unwrap_or_else(|| "<unknown>".into()))));
        }
        apply(&mut merged, &answer);
        tx.commit(Some(&merged)).map(|g| Ok((merged, g)))
    })
    .await;
    match written {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(None)) => Err(RefreshError::LoggedOut { path }),
        Ok(Err(Some(found))) => Err(RefreshError::AccountChanged {
            expected: effective_account(&doc).unwrap_or_else(|| "<unknown>".into()),
            found,
        }),
        Err(e) => {
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
        tx.commit(Some(&attempt)).map(Some)
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

/// The account a document belongs to: `tokens.account_id`, else the id token's workspace.
fn effective_account(doc: &AuthDotJson) -> Option<String> {
    let tokens = doc.tokens.as_ref()?;
    tokens
        .account_id
        .clone()
        .or_else(|| tokens.id_claims().ok().and_then(|c| c.account_id))
}
