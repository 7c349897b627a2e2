//! Saving what the endpoint answered: applied to the redeemed document, made durable through
//! the reservation and installed; or, when no file could take it, kept in memory for the next
//! attempt ([`save_unsaved`]).

use std::sync::Arc;

use codex_store::{
    AuthDotJson, Durability, JournalEvent, JournalRecord, Reserved, SaveOutcome, Timestamp,
};

use super::coordinator::Coordinator;
use super::disk::{check_disk, signed_out};
use crate::auth::CodexAuth;
use crate::client::TokenAnswer;
use crate::error::{RefreshError, TransientReason};
use crate::outcome::RefreshOutcome;
use crate::state::{blocking, warn_not_durable, Inner, Known};

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
pub(super) async fn persist<C: Coordinator + ?Sized>(
    coordinator: &C,
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
        // (the next one would be told "already used"). Journaled before the reservation goes.
        let mut record = JournalRecord::new(JournalEvent::Spent, read_at);
        record.refresh = redeemed;
        record.code = Some("unusable_answer".into());
        drop(reserved.abandon_recorded(&record));
        return Err(e);
    }
    coordinator.answered(&refreshed);
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
pub(super) async fn save_unsaved(inner: &Inner) -> Result<Option<Arc<CodexAuth>>, RefreshError> {
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
