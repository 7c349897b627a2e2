//! The state a manager shares with the refresh tasks it spawns ([`Inner`]), and what a refresh
//! knew when it started ([`Known`]). The modules that run the protocol (`protocol`, `external`)
//! and the manager all build on this one; it imports none of them.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime};

use codex_store::{AuthDotJson, Generation, Store, StoreError};

use crate::auth::CodexAuth;
use crate::client::TokenClient;
use crate::config::RefreshConfig;
use crate::error::RefreshError;
use crate::host::HostRefresher;
use crate::outcome::RefreshOutcome;

/// Shared state of a manager and of the refresh tasks it spawns.
pub(crate) struct Inner {
    pub(crate) store: Store,
    pub(crate) config: RefreshConfig,
    pub(crate) client: TokenClient,
    cache: RwLock<Option<Arc<CodexAuth>>>,
    /// One refresh at a time in this process; the others wait and then share its result.
    pub(crate) gate: tokio::sync::Mutex<()>,
    /// A permanent failure, remembered for the generation it happened at.
    failure: Mutex<Option<(Generation, RefreshError)>>,
    /// The last transient failure and when it happened: callers within
    /// `min_retry_interval` share it instead of sending another request.
    last_transient: Mutex<Option<(Instant, RefreshError)>>,
    /// The host's refresh callback, while host-supplied tokens are in use.
    pub(crate) host: Mutex<Option<HostRefresher>>,
    /// New credentials the endpoint issued but that could not be written (disk full, I/O
    /// error), with the fingerprint of the refresh token redeemed for them: written first by
    /// the next attempt, if auth.json still holds that token.
    unsaved: Mutex<Option<(String, AuthDotJson)>>,
    /// Whether `unsaved` holds something: read on the fast path without a lock.
    has_unsaved: AtomicBool,
    /// Set when the process stops: no new request is sent (one already sent is still saved).
    stopping: AtomicBool,
    /// Requests sent whose answers are not durable yet ([`Inner::begin_send`]).
    in_flight: AtomicUsize,
    /// Notified when `in_flight` drops to zero.
    settled: tokio::sync::Notify,
}

impl Inner {
    /// The state of a new manager: nothing cached, nothing remembered.
    pub(crate) fn new(store: Store, config: RefreshConfig, client: TokenClient) -> Self {
        Inner {
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
            stopping: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            settled: tokio::sync::Notify::new(),
        }
    }

    /// A request is about to be sent: counted in flight until the guard is dropped (once its
    /// answer is durable, or it failed). `None`, and nothing may be sent, once the process is
    /// stopping. (Counted before the flag is read, and the flag set before the count is read
    /// by [`Inner::stop`]: one of the two always sees the other.)
    pub(crate) fn begin_send(&self) -> Option<Sending<'_>> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let sending = Sending { inner: self };
        (!self.stopping.load(Ordering::SeqCst)).then_some(sending)
    }

    /// Sends no new request from now on (a request already sent is still awaited and its
    /// answer saved).
    pub(crate) fn stop_sending(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Resolves once no request is in flight and no answer waits in memory to be written:
    /// every answer already on its way is durable (or its request failed). While new tokens
    /// that could not be written are kept for another try, it does not resolve: the caller
    /// waits for that try instead.
    pub(crate) async fn settled(&self) {
        loop {
            let settled = self.settled.notified();
            if self.in_flight.load(Ordering::SeqCst) == 0
                && !self.has_unsaved.load(Ordering::SeqCst)
            {
                return;
            }
            settled.await;
        }
    }

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
    pub(crate) fn keep_unsaved(&self, redeemed: String, doc: AuthDotJson) {
        *self.unsaved.lock().unwrap_or_else(|p| p.into_inner()) = Some((redeemed, doc));
        self.has_unsaved.store(true, Ordering::SeqCst);
    }

    /// Takes the credentials that could not be written, if any.
    pub(crate) fn take_unsaved(&self) -> Option<(String, AuthDotJson)> {
        let taken = self
            .unsaved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.has_unsaved.store(false, Ordering::SeqCst);
        self.settled.notify_waiters();
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

    pub(crate) fn recent_transient(&self) -> Option<RefreshError> {
        let last = self
            .last_transient
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match &*last {
            Some((at, e)) if at.elapsed() < self.config.min_retry_interval => e.transient_copy(),
            _ => None,
        }
    }

    pub(crate) fn note_attempt(&self, result: &Result<RefreshOutcome, RefreshError>) {
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
    pub(crate) fn ready(&self, auth: &CodexAuth) -> bool {
        !auth.is_due(SystemTime::now(), &self.config) && !self.has_unsaved.load(Ordering::Acquire)
    }

    /// What the cache says now: what a refresh compares the file against.
    pub(crate) fn known(&self) -> Known {
        match self.cached() {
            None => Known::SignedOut,
            Some(auth) => Known::Credentials {
                account_id: auth.account_id().map(str::to_owned),
                generation: auth.generation(),
            },
        }
    }
}

/// A request in flight ([`Inner::begin_send`]); dropping it ends it.
pub(crate) struct Sending<'a> {
    inner: &'a Inner,
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        if self.inner.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.inner.settled.notify_waiters();
        }
    }
}

/// What the caller knew when it asked: whether it had credentials, and if so which.
pub(crate) enum Known {
    /// Nothing was cached: signed out as far as the caller knew.
    SignedOut,
    /// Credentials were cached, read at `generation`, of `account_id` (when they name one).
    Credentials {
        /// The account of the cached credentials.
        account_id: Option<String>,
        /// The generation of auth.json they were read at.
        generation: Generation,
    },
}

impl Known {
    /// The account the caller's credentials belong to, if it had any that name one.
    pub(crate) fn account_id(&self) -> Option<&str> {
        match self {
            Known::SignedOut => None,
            Known::Credentials { account_id, .. } => account_id.as_deref(),
        }
    }

    /// The generation the caller's credentials were read at, if it had any.
    pub(crate) fn generation(&self) -> Option<Generation> {
        match self {
            Known::SignedOut => None,
            Known::Credentials { generation, .. } => Some(*generation),
        }
    }
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

/// Logs a write that happened but whose directory could not be fsynced.
pub(crate) fn warn_not_durable(e: &StoreError) {
    if matches!(e, StoreError::NotDurable { .. }) {
        tracing::warn!(error = %e, "the write is in place but not known to be durable");
    }
}
