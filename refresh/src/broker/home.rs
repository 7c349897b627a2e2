//! What the broker reads of the home for each decision: auth.json's ChatGPT tokens, then the
//! journal.

use codex_store::{read_journal, AuthMode, JournalRecord, Secret, TokenData};

use crate::error::RefreshError;
use crate::manager::AuthManager;

/// The home as read for one decision.
pub(crate) struct Home {
    /// auth.json's ChatGPT tokens; `None` when it holds none (signed out, an API key).
    pub(crate) tokens: Option<TokenData>,
    /// The journal's records, oldest first; empty when it cannot be read.
    pub(crate) records: Vec<JournalRecord>,
    /// The journal could not be read (not a regular file, an I/O error): a token that is not
    /// the current one cannot be told from one this home redeemed.
    pub(crate) journal_unreadable: bool,
}

impl Home {
    /// Reads auth.json, then the journal (in that order: a rotation is journaled after it is
    /// installed, so the journal read second knows how the tokens read first came to be).
    ///
    /// # Errors
    /// The store's errors when auth.json cannot be read (corrupt, I/O);
    /// [`RefreshError::TaskFailed`] when the reading thread failed.
    pub(crate) async fn read(manager: &AuthManager) -> Result<Home, RefreshError> {
        let store = manager.store().clone();
        tokio::task::spawn_blocking(move || {
            let snapshot = store.load()?;
            let tokens = snapshot
                .auth()
                .filter(|doc| doc.resolved_mode() == AuthMode::Chatgpt)
                .and_then(|doc| doc.tokens.clone());
            let (records, journal_unreadable) = match read_journal(store.journal_path()) {
                Ok(records) => (records, false),
                Err(e) => {
                    tracing::warn!(error = %e, "the journal cannot be read: only the current token is served");
                    (Vec::new(), true)
                }
            };
            Ok(Home {
                tokens,
                records,
                journal_unreadable,
            })
        })
        .await
        .map_err(|e| RefreshError::TaskFailed {
            message: format!("reading the home failed: {e}"),
        })?
    }

    /// The current refresh token.
    pub(crate) fn refresh_token(&self) -> Option<&Secret> {
        self.tokens.as_ref().map(|t| &t.refresh_token)
    }

    /// The account of the tokens.
    pub(crate) fn account(&self) -> Option<String> {
        self.tokens.as_ref().and_then(TokenData::account)
    }
}
