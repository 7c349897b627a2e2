//! [`CodexAuth`]: one immutable credential state and the generation it was read at.

use std::time::SystemTime;

use codex_store::{AuthDotJson, AuthMode, Generation, IdTokenClaims, Secret};

use crate::due::refresh_due;
use crate::error::RefreshError;
use crate::RefreshConfig;

/// Which kind of credentials a [`CodexAuth`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// An API key; never refreshed.
    ApiKey,
    /// ChatGPT OAuth tokens from auth.json.
    Chatgpt,
    /// Tokens supplied by a host application; memory only.
    HostTokens,
}

/// One credential state, immutable and shared as `Arc<CodexAuth>`.
#[derive(Clone, Debug)]
pub struct CodexAuth {
    pub(crate) mode: Mode,
    pub(crate) bearer: Secret,
    pub(crate) account_id: Option<String>,
    pub(crate) claims: IdTokenClaims,
    pub(crate) expires_at: Option<SystemTime>,
    pub(crate) last_refresh: Option<SystemTime>,
    pub(crate) generation: Generation,
    /// The refresh token's fingerprint (never the token), when there is one.
    pub(crate) refresh_fingerprint: Option<String>,
}

impl CodexAuth {
    /// Builds the state from a document read at `generation`. `Ok(None)` when the document holds
    /// no usable credentials (signed out).
    ///
    /// # Errors
    /// [`RefreshError::Malformed`] when the id token does not decode;
    /// [`RefreshError::UnsupportedMode`] for a mode codex-refresh does not serve (Bedrock, personal
    /// access token, ...).
    pub fn from_document(
        doc: &AuthDotJson,
        generation: Generation,
    ) -> Result<Option<CodexAuth>, RefreshError> {
        match doc.resolved_mode() {
            AuthMode::ApiKey => Ok(doc.openai_api_key.as_ref().map(|key| CodexAuth {
                mode: Mode::ApiKey,
                bearer: key.clone(),
                account_id: None,
                claims: IdTokenClaims::default(),
                expires_at: None,
                last_refresh: None,
                generation,
                refresh_fingerprint: None,
            })),
            AuthMode::Chatgpt => {
                let Some(tokens) = &doc.tokens else {
                    return Ok(None);
                };
                let claims = tokens.id_claims().map_err(|e| RefreshError::Malformed {
                    field: "tokens.id_token",
                    reason: e.to_string(),
                })?;
                Ok(Some(CodexAuth {
                    mode: Mode::Chatgpt,
                    bearer: tokens.access_token.clone(),
                    account_id: tokens
                        .account_id
                        .clone()
                        .or_else(|| claims.account_id.clone()),
                    claims,
                    // An access token without a readable exp falls back to last_refresh.
                    expires_at: tokens.access_token_expiry().ok().flatten(),
                    last_refresh: doc.last_refresh.as_ref().map(|t| t.time()),
                    generation,
                    refresh_fingerprint: Some(tokens.refresh_token.fingerprint()),
                }))
            }
            other => Err(RefreshError::UnsupportedMode {
                mode: other.as_str().to_owned(),
            }),
        }
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The bearer: the access token, or the API key.
    pub fn bearer(&self) -> &Secret {
        &self.bearer
    }

    /// The ChatGPT account (workspace) id: `tokens.account_id`, else the id token's claim.
    pub fn account_id(&self) -> Option<&str> {
        self.account_id.as_deref()
    }

    /// The workspace named by the id token (`chatgpt_account_id`).
    pub fn workspace_id(&self) -> Option<&str> {
        self.claims
            .account_id
            .as_deref()
            .or(self.account_id.as_deref())
    }

    /// The user's email, from the id token.
    pub fn email(&self) -> Option<&str> {
        self.claims.email.as_deref()
    }

    /// The plan (free, plus, pro, team, ... or unknown values as written).
    pub fn plan_type(&self) -> Option<&str> {
        self.claims.plan_type.as_deref()
    }

    /// The user id, from the id token.
    pub fn user_id(&self) -> Option<&str> {
        self.claims.user_id.as_deref()
    }

    /// When the access token expires, if it says.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    /// The fingerprint of the refresh token ([`codex_store::Secret::fingerprint`]), for telling
    /// rotations apart without showing a token; `None` without one (API keys, host tokens).
    pub fn refresh_fingerprint(&self) -> Option<&str> {
        self.refresh_fingerprint.as_deref()
    }

    /// When a refresh becomes due under `config`: `None` when it never does (API keys).
    pub fn due_at(&self, config: &RefreshConfig) -> Option<SystemTime> {
        match self.mode {
            Mode::ApiKey => None,
            Mode::Chatgpt | Mode::HostTokens => Some(crate::due::due_at(
                self.expires_at,
                self.last_refresh,
                config.refresh_window,
                config.max_token_age,
            )),
        }
    }

    /// When the tokens were last obtained, if known.
    pub fn last_refresh(&self) -> Option<SystemTime> {
        self.last_refresh
    }

    /// The generation of auth.json this was read from ([`Generation::Absent`] for host tokens).
    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// Whether a refresh is due at `now` under `config`. API keys never are.
    pub fn is_due(&self, now: SystemTime, config: &RefreshConfig) -> bool {
        match self.mode {
            Mode::ApiKey => false,
            Mode::Chatgpt | Mode::HostTokens => refresh_due(
                self.expires_at,
                self.last_refresh,
                now,
                config.refresh_window,
                config.max_token_age,
            ),
        }
    }

    /// Whether the bearer is still accepted at `now` (not past its `exp`; unknown counts as yes).
    pub fn is_usable(&self, now: SystemTime) -> bool {
        self.expires_at.is_none_or(|exp| exp > now)
    }

    /// Refuses credentials of a workspace the configuration does not allow.
    pub(crate) fn check_workspace(&self, config: &RefreshConfig) -> Result<(), RefreshError> {
        if config.allowed_workspaces.is_empty() || self.mode == Mode::ApiKey {
            return Ok(());
        }
        let actual = self.workspace_id();
        if actual.is_some_and(|id| config.allowed_workspaces.iter().any(|a| a == id)) {
            return Ok(());
        }
        Err(RefreshError::WorkspaceNotAllowed {
            allowed: config.allowed_workspaces.clone(),
            actual: actual.unwrap_or("<none>").to_owned(),
        })
    }
}
