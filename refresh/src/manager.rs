//! [`AuthManager`]: the cached credentials, refreshed through the guarded protocol.

use std::sync::Arc;
use std::time::SystemTime;

use codex_store::{AuthDotJson, AuthMode, Secret, Store, StoreError};

use crate::auth::{CodexAuth, Mode};
use crate::client::TokenClient;
use crate::config::{RefreshConfig, WhileRefreshing};
use crate::error::RefreshError;
use crate::external::host_auth;
use crate::host::{HostRefresher, HostTokens};
use crate::login::{Durability, Removal};
use crate::outcome::RefreshOutcome;
use crate::protocol::local::Local;
use crate::protocol::{
    auth_from_snapshot, check_disk, guarded_refresh, Coordinator, Ended, Guarded, Urgency,
};
use crate::state::{blocking, warn_not_durable, Inner};

/// The credentials of one process: cached, and refreshed through the guarded protocol so that
/// however many processes race, the token endpoint sees one request.
///
/// Cheap to clone; clones share the cache.
#[derive(Clone)]
pub struct AuthManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AuthManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthManager")
            .field("store", &self.inner.store.path())
            .field("cached", &self.inner.cached())
            .finish()
    }
}

impl AuthManager {
    /// A manager over `store`, loading the current credentials (none is fine: signed out).
    /// First installs what a crashed refresh left in a rotation file, unless a refresh is
    /// running.
    ///
    /// # Errors
    /// [`RefreshError::TokenUrl`] when the token URL is not an absolute http(s) URL (or its
    /// override is set but empty), [`RefreshError::HttpSetup`] when the HTTP client cannot be
    /// built; the store's errors (for example
    /// [`codex_store::StoreError::Corrupt`]) when auth.json cannot be read;
    /// [`RefreshError::WorkspaceNotAllowed`] for credentials of a workspace the configuration does
    /// not allow. A crashed refresh's rotation that cannot be installed yet is logged, not an
    /// error.
    pub fn new(store: Store, config: RefreshConfig) -> Result<Self, RefreshError> {
        let manager = Self::unloaded(store, config)?;
        manager.reload()?;
        Ok(manager)
    }

    /// A manager with nothing loaded yet (the agent loads, and reports what it cannot read).
    pub(crate) fn unloaded(store: Store, config: RefreshConfig) -> Result<Self, RefreshError> {
        if let Err(e) = store.recover() {
            tracing::warn!(error = %e, "a crashed refresh's tokens could not be installed yet");
        }
        let client = TokenClient::new(&config.token_url, &config.client_id, config.http_timeout)?;
        Ok(AuthManager {
            inner: Arc::new(Inner::new(store, config, client)),
        })
    }

    /// From now on, sends no new refresh request, and resolves once every request already
    /// sent has its answer durable (or failed). For a process that is stopping (a signal): its
    /// refresh tasks keep running while this is awaited, and the process may exit when it
    /// resolves without losing a redeemed token.
    pub async fn stop(&self) {
        self.stop_sending();
        self.settled().await;
    }

    /// Sends no new refresh request from now on (one already sent is still awaited and its
    /// answer saved).
    pub fn stop_sending(&self) {
        self.inner.stop_sending();
    }

    /// Resolves once no refresh request is in flight and no new tokens wait in memory for
    /// another try at writing them.
    pub async fn settled(&self) {
        self.inner.settled().await;
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The configuration.
    pub fn config(&self) -> &RefreshConfig {
        &self.inner.config
    }

    /// The token endpoint's client (the broker forwards and relays through it).
    pub(crate) fn client(&self) -> &TokenClient {
        &self.inner.client
    }

    /// The cached credentials, without any check.
    pub fn cached(&self) -> Option<Arc<CodexAuth>> {
        self.inner.cached()
    }

    /// The credentials, refreshed first when due.
    ///
    /// The fast path (cached and not due) takes no lock and makes no system call. When due, the
    /// guarded refresh runs; a transient failure is logged and the cached credentials are
    /// returned while they are still valid; a permanent one is returned as an error.
    ///
    /// # Errors
    /// [`RefreshError::NotSignedIn`] without credentials; a permanent refresh failure
    /// ([`RefreshError::Permanent`], [`RefreshError::AccountChanged`],
    /// [`RefreshError::LoggedOut`]); a transient one only when the cached credentials are no longer
    /// usable; the store's errors.
    pub async fn auth(&self) -> Result<Arc<CodexAuth>, RefreshError> {
        let cached = self.inner.cached();
        if let Some(auth) = cached.as_ref().filter(|a| self.inner.ready(a)) {
            return Ok(auth.clone());
        }
        self.auth_slow(cached).await
    }

    async fn auth_slow(
        &self,
        cached: Option<Arc<CodexAuth>>,
    ) -> Result<Arc<CodexAuth>, RefreshError> {
        let cached = match cached {
            Some(cached) => cached,
            // Signed out as far as we know: someone may have signed in since.
            None => self.reload()?.ok_or_else(|| RefreshError::NotSignedIn {
                path: self.inner.store.path().to_path_buf(),
            })?,
        };
        if self.inner.ready(&cached) {
            return Ok(cached);
        }
        if cached.is_usable(SystemTime::now()) && self.inner.recent_transient().is_some() {
            return Ok(cached);
        }
        // Due but still valid, and someone else already refreshing: keep the valid token
        // rather than wait for their request (unless configured to wait).
        let urgency = match self.inner.config.while_refreshing {
            WhileRefreshing::UseValidToken if cached.is_usable(SystemTime::now()) => {
                Urgency::IfDueUnlessBusy
            }
            _ => Urgency::IfDue,
        };
        // Another refresh under way (a task of this process, or another process holding the
        // refresh lock) while ours are still valid: keep them at once, without a task, a thread
        // hop or the protocol's re-read. What that refresh stores is adopted on a later call.
        if urgency == Urgency::IfDueUnlessBusy && self.refresh_under_way() {
            return Ok(self
                .inner
                .cached()
                .filter(|a| a.is_usable(SystemTime::now()))
                .unwrap_or(cached));
        }
        match self.run(urgency).await {
            Ok(_) => self
                .inner
                .cached()
                .ok_or_else(|| RefreshError::NotSignedIn {
                    path: self.inner.store.path().to_path_buf(),
                }),
            Err(e) if e.is_transient() && cached.is_usable(SystemTime::now()) => {
                tracing::warn!(error = %e, "token refresh failed for now; using the cached credentials");
                Ok(cached)
            }
            Err(e) => Err(e),
        }
    }

    /// Whether a refresh is under way: a task of this process holds its gate, or some process
    /// holds the store's refresh lock (probed without waiting: one open, one non-blocking
    /// `flock`). A probe that fails says nothing: the protocol decides then.
    fn refresh_under_way(&self) -> bool {
        self.inner.gate.try_lock().is_err()
            || matches!(self.inner.store.refresh_lock_held(), Ok(true))
    }

    /// Refreshes now (for example after the API answered 401), through the guarded protocol
    /// (for host tokens: by asking the host). If another process already refreshed since this
    /// one read the credentials, its tokens are adopted and no request is sent.
    ///
    /// # Errors
    /// [`RefreshError::Transient`] (nothing changed; try later) and [`RefreshError::Permanent`]
    /// (sign in again) from the endpoint; [`RefreshError::AccountChanged`] and
    /// [`RefreshError::LoggedOut`] when auth.json changed under the caller (no request sent); for
    /// host tokens [`RefreshError::HostRefreshTimeout`] and [`RefreshError::HostRefreshFailed`];
    /// the store's errors, for example [`codex_store::StoreError::LockTimeout`], or
    /// [`codex_store::StoreError::NotInstalled`] when the new tokens are durable in a rotation file
    /// but not yet in auth.json.
    pub async fn refresh(&self) -> Result<RefreshOutcome, RefreshError> {
        self.run(Urgency::Now).await
    }

    /// Runs the protocol (or, for host tokens, asks the host) in a task of its own, so that
    /// once the request is sent its answer is persisted even if the caller stops waiting.
    /// Callers in this process share one attempt: a caller that waited for another's attempt
    /// takes its result (new credentials, or, unless [`Urgency::Now`], its transient failure) instead of
    /// sending a request of its own.
    pub(crate) async fn run(&self, urgency: Urgency) -> Result<RefreshOutcome, RefreshError> {
        self.run_with(urgency, Arc::new(Local::default()))
            .await
            .and_then(|report| report)
    }

    /// [`AuthManager::run`] over `coordinator` (the fleet's, for example): the protocol's steps
    /// go through it, and its [`Coordinator::finish`] says what the run did.
    ///
    /// # Errors
    /// [`RefreshError::TaskFailed`] when the refresh task failed (the refresh's own errors
    /// are in the report).
    pub(crate) async fn run_with<C: Coordinator + 'static>(
        &self,
        urgency: Urgency,
        coordinator: Arc<C>,
    ) -> Result<C::Report, RefreshError> {
        let inner = self.inner.clone();
        let seen = inner.cached();
        let task = tokio::spawn(async move {
            let result = {
                let gate = match urgency {
                    Urgency::IfDueUnlessBusy => inner.gate.try_lock().ok(),
                    _ => Some(inner.gate.lock().await),
                };
                match gate {
                    // Another task of this process is refreshing: keep the valid credentials.
                    None => Ok(Ended::Done(RefreshOutcome::NotNeeded)),
                    Some(_gate) => attempt(&inner, coordinator.as_ref(), urgency, &seen).await,
                }
            };
            coordinator.finish(&inner, result).await
        });
        task.await.map_err(|e| RefreshError::TaskFailed {
            message: format!("the refresh task failed: {e}"),
        })
    }

    /// Re-reads auth.json and replaces the cache (host-supplied tokens are kept). Returns the
    /// new credentials, `None` when signed out.
    ///
    /// # Errors
    /// The store's errors when auth.json cannot be read (for example
    /// [`codex_store::StoreError::Corrupt`]); [`RefreshError::Malformed`],
    /// [`RefreshError::UnsupportedMode`] and [`RefreshError::WorkspaceNotAllowed`] for credentials
    /// that cannot be used.
    pub fn reload(&self) -> Result<Option<Arc<CodexAuth>>, RefreshError> {
        if let Some(auth) = self.inner.cached().filter(|a| a.mode() == Mode::HostTokens) {
            return Ok(Some(auth));
        }
        let snap = self.inner.store.load()?;
        let auth = auth_from_snapshot(&snap, &self.inner.config)?.map(Arc::new);
        self.inner.set_cache(auth.clone());
        Ok(auth)
    }

    /// Removes the stored credentials (under the lock) and forgets the cached ones, host
    /// tokens included. Returns whether there was a file.
    ///
    /// # Errors
    /// The store's errors (a lock timeout, an I/O error); a deletion that is in place but not known
    /// to be durable is logged, not an error.
    pub async fn logout(&self) -> Result<bool, RefreshError> {
        let removed = crate::login::remove_here(&self.inner.store).await?;
        if let Durability::NotDurable(e) = &removed.durability {
            warn_not_durable(e);
        }
        *self.inner.host.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.inner.set_cache(None);
        Ok(removed.removal == Removal::Removed)
    }

    /// Stores an API key (API-key mode), replacing whatever was stored.
    ///
    /// # Errors
    /// The store's errors (a lock timeout, an I/O error, a file that may not be replaced); a write
    /// that is in place but not known to be durable is logged, not an error.
    pub async fn login_with_api_key(&self, key: Secret) -> Result<Arc<CodexAuth>, RefreshError> {
        let doc = AuthDotJson {
            auth_mode: Some(AuthMode::ApiKey),
            openai_api_key: Some(key),
            ..Default::default()
        };
        let stored = crate::login::store_here(&self.inner.store, &doc).await?;
        if let Durability::NotDurable(e) = &stored.durability {
            warn_not_durable(e);
        }
        let auth = CodexAuth::from_document(&doc, stored.generation)?.map(Arc::new);
        *self.inner.host.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.inner.set_cache(auth.clone());
        auth.ok_or_else(|| RefreshError::NotSignedIn {
            path: self.inner.store.path().to_path_buf(),
        })
    }

    /// Uses tokens supplied by the host application, in memory only (nothing is written to
    /// disk), refreshed by calling `refresher`. Refused when the workspace is not allowed.
    ///
    /// # Errors
    /// [`RefreshError::WorkspaceNotAllowed`] when the tokens' workspace is not allowed by the
    /// configuration; nothing is changed then.
    pub fn set_host_tokens(
        &self,
        tokens: HostTokens,
        refresher: HostRefresher,
    ) -> Result<Arc<CodexAuth>, RefreshError> {
        let auth = host_auth(&tokens);
        auth.check_workspace(&self.inner.config)?;
        let auth = Arc::new(auth);
        *self.inner.host.lock().unwrap_or_else(|p| p.into_inner()) = Some(refresher);
        self.inner.set_cache(Some(auth.clone()));
        Ok(auth)
    }

    /// Under the lock, re-reads auth.json; adopts it when the generation moved on for the same
    /// account. Returns whether something newer was adopted.
    pub(crate) async fn adopt_if_newer(&self) -> Result<bool, RefreshError> {
        let inner = self.inner.clone();
        // Under the gate, so that a refresh of this process cannot land in between and be
        // replaced by this older read.
        let _gate = inner.gate.lock().await;
        let known = inner.known();
        let store = inner.store.clone();
        let snap = blocking(move || store.transaction().map(|tx| tx.snapshot().clone())).await?;
        if Some(snap.generation()) == known.generation() {
            return Ok(false);
        }
        let disk = check_disk(&inner, &known, &snap)?;
        inner.set_cache(Some(Arc::new(disk)));
        Ok(true)
    }
}

/// One attempt of this process, under its gate: adopts what another task installed meanwhile,
/// shares a recent transient failure, or runs the protocol (for host tokens: asks the host),
/// and caches what it ends with.
async fn attempt<C: Coordinator + ?Sized>(
    inner: &Arc<Inner>,
    coordinator: &C,
    urgency: Urgency,
    seen: &Option<Arc<CodexAuth>>,
) -> Result<Ended<C::Stop>, RefreshError> {
    let current = inner.cached();
    // Host tokens all have the generation "absent": tell them apart by identity.
    let replaced = match (seen, &current) {
        (Some(a), Some(b)) if a.mode() == Mode::HostTokens => !Arc::ptr_eq(a, b),
        (Some(a), Some(b)) => a.generation() != b.generation(),
        (None, None) => false,
        _ => true,
    };
    if let Some(auth) = current.as_ref().filter(|_| replaced) {
        if !auth.is_due(SystemTime::now(), &inner.config) {
            return Ok(Ended::Done(RefreshOutcome::AdoptedFromDisk));
        }
    }
    if urgency.only_if_due() {
        if let Some(e) = inner.recent_transient() {
            return Err(e);
        }
    }
    let result = if current.as_ref().map(|a| a.mode()) == Some(Mode::HostTokens) {
        crate::external::refresh_host(inner)
            .await
            .map(|_| Ended::Done(RefreshOutcome::Refreshed))
    } else {
        let mut result = guarded_refresh(coordinator, inner, inner.known(), urgency).await;
        if matches!(result, Err(RefreshError::Store(StoreError::Unsaved { .. }))) {
            // The new tokens are only in memory: one more try, through another file, before
            // giving up (a one-shot command exits after this).
            result = guarded_refresh(coordinator, inner, inner.known(), Urgency::IfDue).await;
        }
        result.map(|guarded| match guarded {
            Guarded::Done(outcome, auth) => {
                inner.set_cache(Some(auth));
                Ended::Done(outcome)
            }
            Guarded::Stopped(stop) => Ended::Stopped(stop),
        })
    };
    let outcome = match result {
        // Stopped by the coordinator: no attempt of this process to note.
        Ok(Ended::Stopped(stop)) => return Ok(Ended::Stopped(stop)),
        Ok(Ended::Done(outcome)) => Ok(outcome),
        Err(e) => Err(e),
    };
    inner.note_attempt(&outcome);
    outcome.map(Ended::Done)
}
