//! What the protocol reads from auth.json: the credentials of a snapshot, checked against what
//! the caller knew.

use codex_store::Snapshot;

use crate::auth::CodexAuth;
use crate::error::RefreshError;
use crate::state::{Inner, Known};

/// The error for auth.json found signed out under the lock.
pub(crate) fn signed_out(inner: &Inner, known: &Known) -> RefreshError {
    let path = inner.store.path().to_path_buf();
    match known {
        Known::Credentials { .. } => RefreshError::LoggedOut { path },
        Known::SignedOut => RefreshError::NotSignedIn { path },
    }
}

/// The credentials of a snapshot, refused when their workspace is not allowed; `None` when
/// signed out.
///
/// # Errors
/// The errors of credentials that cannot be used (malformed, an unsupported mode), and
/// [`RefreshError::WorkspaceNotAllowed`].
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
///
/// # Errors
/// [`RefreshError::AccountChanged`] for credentials of another account;
/// [`RefreshError::LoggedOut`]/[`RefreshError::NotSignedIn`] when signed out; what
/// [`auth_from_snapshot`] refuses.
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
