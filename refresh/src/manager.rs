//! [`AuthManager`]: the cached credentials, refreshed through the guarded protocol.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime};

use codex_store::backend::FileBackend;
use codex_store::{AuthDotJson, AuthMode, Expect, Generation, Secret, Store, StoreError};

use crate::auth::{CodexAuth, Mode};
use crate::client::TokenClient;
use crate::config::RefreshConfig;
use crate::error::RefreshError;
use crate::external::HostState;
use crate::protocol::{
    auth_from_snapshot, blocking, check_disk, guarded_refresh, Known, RefreshOutcome,
};
use crate::recovery::UnauthorizedRecovery;

/// Shared state of a manager and of the refresh tasks it spawns.
pub(crate) struct Inner {
    pub(crate) store: Store,
    pub(crate) config: RefreshConfig,
    pub(crate) client: TokenClient,
    cache: RwLock<Option<Arc<CodexAuth>>>,
    /// One refresh at a time in this process; the others wait and then share its result.
    gate: tokio::sync::Mutex<()>,
    /// A permanent failure, remembered for the generation it happened at.
    failure: Mutex<Option<(Generation, RefreshError)>>,
    /// The last transient failure and when it happened: callers within
    /// `min_retry_interval` share it instead of sending another request.
    last_transient: Mutex<Option<(Instant, RefreshError)>>,
    pub(crate) host: Mutex<Option<HostState>>,
    /// New credentials the endpoint issued but that could not be written (disk full, I/O
    /// error), with the generation they replace: written first by the next attempt.
    unsaved: Mutex<Option<(Generation, AuthDotJson)>>,
    /// Whether `unsaved` holds something: read on the fast path without a lock.
    has_unsaved: AtomicBool,
}

impl Inner {
    pub(crate) fn cached(&self) -> Option<Arc<CodexAuth>> {
        self.cache.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn set_cache(&self, auth: Option<Arc<CodexAuth>>) {
        *self.cache.write().unwrap_or_else(|p| p.into_inner()) = auth;
    }

    pub(crate) fn remembered_failure(&self, generation: Generation) -> Option<RefreshError> {
        let failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        match &*failure {
            Some((g, e)) if *g == generation => e.remembered(),
            _ => None,
        }
    }

    /// Keeps credentials that could not be written, to be written by the next attempt.
    pub(crate) fn keep_unsaved(&self, base: Generation, doc: AuthDotJson) {
        *self.unsaved.lock().unwrap_or_else(|p| p.into_inner()) = Some((base, doc));
        self.has_unsaved.store(true, Ordering::Release);
    }

    /// Takes the credentials that could not be written, if any.
    pub(crate) fn take_unsaved(&self) -> Option<(Generation, AuthDotJson)> {
        let taken = self
            .unsaved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.has_unsaved.store(false, Ordering::Release);
        taken
    }

    /// Remembers `error` for `generation` when it is permanent; returns it.
    pub(crate) fn remember_failure(
        &self,
        generation: Generation,
        error: RefreshError,
    ) -> RefreshError {
        if let Some(copy) = error.remembered() {
            *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some((generation, copy));
        }
        error
    }

    fn recent_transient(&self) -> Option<RefreshError> {
        let last = self
            .last_transient
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match &*last {
            Some((at, e)) if at.elapsed() < self.config.min_retry_interval => e.transient_copy(),
            _ => None,
        }
    }

    fn note_attempt(&self, result: &Result<RefreshOutcome, RefreshError>) {
        let mut last = self
            .last_transient
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *last = match result {
            Err(e) => e.transient_copy().map(|copy| (Instant::now(), copy)),
            Ok(_) => None,
        };
    }

    /// Whether cached credentials can be handed out as they are: not due, and no unsaved
    /// credentials waiting to be written. Memory only (an atomic load, `now` from the vDSO).
    fn ready(&self, auth: &CodexAuth) -> bool {
        !auth.is_due(SystemTime::now(), &self.config) && !self.has_unsaved.load(Ordering::Acquire)
    }

    fn known(&self) -> Known {
        let cached = self.cached();
        Known {
            account_id: cached
                .as_ref()
                .and_then(|a| a.account_id().map(str::to_owned)),
            generation: cached.as_ref().map(|a| a.generation()),
            had_credentials: cached.is_some(),
        }
    }
}

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
    pub fn new(store: Store, config: RefreshConfig) -> Result<Self, RefreshError> {
        if let Err(e) = store.recover() {
            tracing::warn!(error = %e, "a crashed refresh's tokens could not be installed yet");
        }
        let client = TokenClient::new(&config.token_url, &config.client_id, config.http_timeout)?;
        let manager = AuthManager {
            inner: Arc::new(Inner {
                store,
                config,
                client,
                cache: RwLock::new(None),
                gate: tokio::sync::Mutex::new(()),
                failure: Mutex::new(None),
                last_transient: Mutex::new(None),
                host: Mutex::new(None),
                unsaved: Mutex::new(None),
                has_unsaved: AtomicBool::new(false),
            }),
        };
        manager.reload()?;
        Ok(manager)
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The configuration.
    pub fn config(&self) -> &RefreshConfig {
        &self.inner.config
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
        match self.run(false).await {
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

    /// Refreshes now (for example after the API answered 401), through the guarded protocol
    /// (for host tokens: by asking the host). If another process already refreshed since this
    /// one read the credentials, its tokens are adopted and no request is sent.
    pub async fn refresh(&self) -> Result<RefreshOutcome, RefreshError> {
        self.run(true).await
    }

    /// Runs the protocol (or, for host tokens, asks the host) in a task of its own, so that
    /// once the request is sent its answer is persisted even if the caller stops waiting.
    /// Callers in this process share one attempt: a caller that waited for another's attempt
    /// takes its result (new credentials, or, unless `force`, its transient failure) instead of
    /// sending a request of its own.
    async fn run(&self, force: bool) -> Result<RefreshOutcome, RefreshError> {
        let inner = self.inner.clone();
        let seen = inner.cached();
        let task = tokio::spawn(async move {
            let _gate = inner.gate.lock().await;
            let current = inner.cached();
            // Host tokens all have the generation "absent": tell them apart by identity.
            let replaced = match (&seen, &current) {
                (Some(a), Some(b)) if a.mode() == Mode::HostTokens => !Arc::ptr_eq(a, b),
                (Some(a), Some(b)) => a.generation() != b.generation(),
                (None, None) => false,
                _ => true,
            };
            if let Some(auth) = current.as_ref().filter(|_| replaced) {
                if !auth.is_due(SystemTime::now(), &inner.config) {
                    return Ok(RefreshOutcome::AdoptedFromDisk);
                }
            }
            if !force {
                if let Some(e) = inner.recent_transient() {
                    return Err(e);
                }
            }
            let result = if current.as_ref().map(|a| a.mode()) == Some(Mode::HostTokens) {
                crate::external::refresh_host(&inner)
                    .await
                    .map(|_| RefreshOutcome::Refreshed)
            } else {
                let mut result = guarded_refresh(inner.clone(), inner.known(), force).await;
                if matches!(result, Err(RefreshError::Store(StoreError::Unsaved { .. }))) {
                    // The new tokens are only in memory: one more try, through another file,
                    // before giving up (a one-shot command exits after this).
                    result = guarded_refresh(inner.clone(), inner.known(), false).await;
                }
                result.map(|(outcome, auth)| {
                    inner.set_cache(Some(auth));
                    outcome
                })
            };
            inner.note_attempt(&result);
            result
        });
        match task.await {
            Ok(result) => result,
            Err(e) => Err(RefreshError::TaskFailed {
                message: format!("the refresh task failed: {e}"),
            }),
        }
    }

    /// Re-reads auth.json and replaces the cache (host-supplied tokens are kept). Returns the
    /// new credentials, `None` when signed out.
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
    pub async fn logout(&self) -> Result<bool, RefreshError> {
        let backend = FileBackend::from_store(self.inner.store.clone());
        let existed = blocking(move || {
            backend.delete().or_else(|e| {
                warn_not_durable(&e);
                e.accept_not_durable().map(|_| true)
            })
        })
        .await?;
        *self.inner.host.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.inner.set_cache(None);
        Ok(existed)
    }

    /// Stores an API key (API-key mode), replacing whatever was stored.
    pub async fn login_with_api_key(&self, key: Secret) -> Result<Arc<CodexAuth>, RefreshError> {
        let doc = AuthDotJson {
            auth_mode: Some(AuthMode::ApiKey),
            openai_api_key: Some(key),
            ..Default::default()
        };
        let store = self.inner.store.clone();
        let to_write = doc.clone();
        let generation = blocking(move || {
            store
                .compare_and_swap(Expect::Any, Some(&to_write))
                .or_else(|e| {
                    warn_not_durable(&e);
                    e.accept_not_durable()
                })
        })
        .await?;
        let auth = CodexAuth::from_document(&doc, generation)?.map(Arc::new);
        *self.inner.host.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.inner.set_cache(auth.clone());
        auth.ok_or_else(|| RefreshError::NotSignedIn {
            path: self.inner.store.path().to_path_buf(),
        })
    }

    /// The 401 recovery steps for this manager's current mode.
    pub fn unauthorized_recovery(&self) -> UnauthorizedRecovery {
        UnauthorizedRecovery::new(self.clone())
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
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
        if Some(snap.generation()) == known.generation {
            return Ok(false);
        }
        let disk = check_disk(&inner, &known, &snap)?;
        inner.set_cache(Some(Arc::new(disk)));
        Ok(true)
    }
}

/// Logs a write that happened but whose directory could not be fsynced.
pub(crate) fn warn_not_durable(e: &StoreError) {
    if matches!(e, StoreError::NotDurable { .. }) {
        tracing::warn!(error = %e, "the write is in place but not known to be durable");
    }
}
