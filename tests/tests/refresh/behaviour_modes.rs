//! The credential modes of `codex-refresh` and the 401 recovery, against the real fake token
//! endpoint on 127.0.0.1: host-supplied tokens (memory only, refreshed by the host within a time
//! limit), API keys (never refreshed), the workspace restriction, the two-step recovery, and
//! `Debug` output that never shows a token.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use codex_refresh::{
    AuthManager, ErrorClass, HostRefreshFuture, HostRefreshRequest, HostRefresher, HostTokens,
    Mode, RecoveryStep, RefreshConfig, RefreshError, RefreshOutcome, UnauthorizedRecovery,
};
use codex_store::{Secret, Store, StoreOptions};
use codex_store_tests::fake_idp::FakeIdp;
use codex_store_tests::fixtures::{
    cached_bearer, concurrent_auth_calls, temp_store_with, write_tokens, Identity, EVENT_TIMEOUT,
};
use codex_store_tests::jwt;
use codex_store_tests::secrets::assert_hides;
use serde_json::Value;

const ACCOUNT: &str = "acc-modes";
const EMAIL: &str = "modes@example.com";
const PLAN: &str = "team";
const INITIAL_RT: &str = "rt_initial_modes";
const IDENTITY: Identity = Identity::new(ACCOUNT, EMAIL, PLAN, INITIAL_RT);
/// The host refresher's limit in these tests.
const HOST_LIMIT: Duration = Duration::from_millis(200);

fn config(token_url: String) -> RefreshConfig {
    RefreshConfig {
        host_refresh_timeout: HOST_LIMIT,
        ..codex_store_tests::fixtures::config(token_url)
    }
}

/// A store in a temp dir, the fake endpoint, and a manager over both.
type Fixture = (tempfile::TempDir, Store, FakeIdp, AuthManager);

/// A manager over an empty store (host tokens, API keys).
fn empty() -> Fixture {
    let (home, store) = temp_store_with(StoreOptions::default());
    let fake = IDENTITY.start_idp();
    let manager = AuthManager::new(store.clone(), config(fake.url()))
        .expect("AuthManager::new failed on an empty store");
    (home, store, fake, manager)
}

/// A manager over ChatGPT credentials of [`ACCOUNT`] with `access`, [`INITIAL_RT`] and
/// `id_token`.
fn signed_in(access: &str, id_token: &str) -> Fixture {
    let (home, store) = temp_store_with(StoreOptions::default());
    let fake = IDENTITY.start_idp();
    write_tokens(&store, access, INITIAL_RT, id_token, ACCOUNT);
    let manager = AuthManager::new(store.clone(), config(fake.url()))
        .expect("AuthManager::new refused valid credentials");
    (home, store, fake, manager)
}

fn access_expiring_in(secs: i64, marker: &str) -> String {
    jwt::access_token(jwt::now_unix() + secs, marker)
}

/// Writes credentials of workspace (account) `workspace` with `access` and [`INITIAL_RT`].
fn write_workspace_tokens(store: &Store, access: &str, workspace: &str) {
    write_tokens(
        store,
        access,
        INITIAL_RT,
        &jwt::id_token(EMAIL, workspace, PLAN),
        workspace,
    );
}

/// Host tokens live in memory only: checks that nothing was written to disk and nothing sent to
/// the token endpoint.
fn assert_nothing_stored_nor_sent(store: &Store, fake: &FakeIdp) {
    assert!(
        !store.path().exists(),
        "host tokens were written to disk: {} exists",
        store.path().display()
    );
    fake.expect_requests(0, "host-token mode contacted the token endpoint");
}

/// Checks that an exhausted 401 recovery runs no other step and says to sign in again.
async fn assert_exhausted(recovery: &mut UnauthorizedRecovery) {
    let exhausted = recovery
        .next()
        .await
        .expect_err("an exhausted recovery ran another step");
    assert_eq!(
        exhausted.class(),
        ErrorClass::SignInRequired,
        "an exhausted recovery does not say to sign in again: {exhausted:?}"
    );
}

fn host_tokens(access: &str) -> HostTokens {
    HostTokens {
        access_token: Secret::new(access),
        account_id: ACCOUNT.to_owned(),
        plan_type: Some(PLAN.to_owned()),
    }
}

/// A host refresher that never answers, counting how often it is asked.
fn silent_host(calls: Arc<AtomicUsize>) -> HostRefresher {
    Arc::new(move |_: HostRefreshRequest| -> HostRefreshFuture {
        calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(std::future::pending())
    })
}

/// A host refresher that answers at once with `access`, counting how often it is asked and
/// checking that it is asked for the right account.
fn working_host(access: String, calls: Arc<AtomicUsize>) -> HostRefresher {
    Arc::new(move |request: HostRefreshRequest| -> HostRefreshFuture {
        calls.fetch_add(1, Ordering::SeqCst);
        let tokens = host_tokens(&access);
        Box::pin(async move {
            if request.account_id == ACCOUNT {
                Ok(tokens)
            } else {
                Err(format!(
                    "asked for the wrong account {}",
                    request.account_id
                ))
            }
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_refresher_that_never_answers_times_out_with_host_refresh_timeout_and_writes_nothing(
) {
    let (_home, store, fake, manager) = empty();
    let expired = access_expiring_in(-60, "host_expired");
    let calls = Arc::new(AtomicUsize::new(0));
    manager
        .set_host_tokens(host_tokens(&expired), silent_host(calls.clone()))
        .expect("set_host_tokens refused valid host tokens");

    let started = Instant::now();
    let error = manager
        .auth()
        .await
        .expect_err("auth() with expired host tokens and a silent host succeeded");
    let waited = started.elapsed();
    assert!(
        matches!(error, RefreshError::HostRefreshTimeout { after } if after == HOST_LIMIT),
        "a silent host did not give HostRefreshTimeout after {HOST_LIMIT:?}: {error:?}"
    );
    assert!(
        waited >= HOST_LIMIT && waited < EVENT_TIMEOUT,
        "the host's limit of {HOST_LIMIT:?} was not kept: auth() returned after {waited:?}"
    );
    assert_eq!(
        error.class(),
        ErrorClass::Transient,
        "a host timeout is not transient: {error:?}"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the host was not asked once"
    );
    assert_hides("the error message", &error.to_string(), &[expired.as_str()]);
    assert_nothing_stored_nor_sent(&store, &fake);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_working_host_refresher_supplies_the_new_token_in_memory_only() {
    let (_home, store, fake, manager) = empty();
    let expired = access_expiring_in(-60, "host_expired");
    let fresh = access_expiring_in(3600, "host_fresh");
    let calls = Arc::new(AtomicUsize::new(0));
    manager
        .set_host_tokens(
            host_tokens(&expired),
            working_host(fresh.clone(), calls.clone()),
        )
        .expect("set_host_tokens refused valid host tokens");

    let auth = manager
        .auth()
        .await
        .expect("auth() with a working host refresher failed");
    assert_eq!(
        auth.bearer().expose(),
        fresh,
        "auth() did not return the host's new token"
    );
    assert_eq!(auth.mode(), Mode::HostTokens, "the mode is not HostTokens");
    assert_eq!(auth.account_id(), Some(ACCOUNT), "the account id was lost");
    assert_eq!(auth.plan_type(), Some(PLAN), "the plan was lost");
    let again = manager.auth().await.expect("a second auth() failed");
    assert_eq!(
        again.bearer().expose(),
        fresh,
        "the second auth() did not return the host's token"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the host was asked again although its new token is not due"
    );
    assert_eq!(
        manager
            .refresh()
            .await
            .expect("an explicit host refresh failed"),
        RefreshOutcome::Refreshed,
        "an explicit refresh in host mode did not ask the host"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "refresh() did not ask the host"
    );
    assert_nothing_stored_nor_sent(&store, &fake);
    let shown = format!("{manager:?} {auth:?} {auth:#?}");
    assert_hides(
        "Debug of host-mode credentials",
        &shown,
        &[expired.as_str(), fresh.as_str()],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_401_recovery_for_host_tokens_has_exactly_one_step_asking_the_host() {
    let (_home, store, fake, manager) = empty();
    let current = access_expiring_in(3600, "host_current");
    let fresh = access_expiring_in(3600, "host_after_401");
    let calls = Arc::new(AtomicUsize::new(0));
    manager
        .set_host_tokens(
            host_tokens(&current),
            working_host(fresh.clone(), calls.clone()),
        )
        .expect("set_host_tokens refused valid host tokens");

    let mut recovery = manager.unauthorized_recovery();
    assert!(recovery.has_next(), "host mode offers no 401 recovery step");
    let step = recovery
        .next()
        .await
        .expect("the host-mode recovery step failed");
    assert_eq!(
        step,
        RecoveryStep::Refreshed,
        "the host-mode step did not refresh"
    );
    assert!(
        !recovery.has_next(),
        "host mode offers a second 401 recovery step"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the host was not asked once"
    );
    assert_eq!(
        cached_bearer(&manager),
        fresh,
        "the recovery did not install the host's new token"
    );
    assert_exhausted(&mut recovery).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "an exhausted recovery asked the host again"
    );
    assert!(
        !store.path().exists(),
        "host tokens were written to disk during the recovery"
    );
    fake.expect_requests(0, "host-mode recovery contacted the endpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_login_is_stored_as_apikey_and_never_contacts_the_token_endpoint() {
    let (_home, store, fake, manager) = empty();
    let key = "sk-test-key-never-shown";

    let login = manager
        .login_with_api_key(Secret::new(key))
        .await
        .expect("login_with_api_key failed");
    assert_eq!(
        login.mode(),
        Mode::ApiKey,
        "the login is not in API-key mode"
    );
    let auth = manager.auth().await.expect("auth() in API-key mode failed");
    assert_eq!(auth.bearer().expose(), key, "the bearer is not the API key");
    assert_eq!(
        manager
            .refresh()
            .await
            .expect("refresh() in API-key mode failed"),
        RefreshOutcome::NotNeeded,
        "an API key was refreshed"
    );
    assert!(
        !manager.unauthorized_recovery().has_next(),
        "API-key mode offers a 401 recovery step"
    );
    fake.expect_requests(0, "API-key mode contacted the token endpoint");

    let file: Value = serde_json::from_slice(
        &std::fs::read(store.path()).expect("auth.json was not written by the login"),
    )
    .expect("auth.json is not JSON");
    assert_eq!(
        file["auth_mode"], "apikey",
        "auth.json does not say auth_mode apikey: {file}"
    );
    assert_eq!(
        file["OPENAI_API_KEY"], key,
        "auth.json does not hold the API key"
    );

    // A fresh manager reading the file agrees, and does not refresh either.
    let reread = AuthManager::new(store.clone(), config(fake.url()))
        .expect("a manager over an API-key file failed to start");
    let auth = reread
        .auth()
        .await
        .expect("auth() of the re-read key failed");
    assert_eq!(
        auth.mode(),
        Mode::ApiKey,
        "the re-read file is not API-key mode"
    );
    assert_eq!(
        reread
            .refresh()
            .await
            .expect("refresh() of the re-read key failed"),
        RefreshOutcome::NotNeeded,
        "a re-read API key was refreshed"
    );
    fake.expect_requests(0, "API-key mode contacted the token endpoint");
    let shown = format!("{manager:?} {reread:?} {auth:?} {auth:#?}");
    assert_hides("Debug in API-key mode", &shown, &[key]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_of_a_workspace_that_is_not_allowed_are_refused_with_a_message_naming_both_workspaces(
) {
    let (_home, store) = temp_store_with(StoreOptions::default());
    let fake = IDENTITY.start_idp();
    let access = access_expiring_in(3600, "ws_other");
    write_workspace_tokens(&store, &access, "ws-other");
    let restricted = RefreshConfig {
        allowed_workspaces: vec!["ws-allowed".to_owned()],
        ..config(fake.url())
    };

    let error = AuthManager::new(store.clone(), restricted.clone())
        .expect_err("a manager accepted credentials of a workspace that is not allowed");
    assert!(
        matches!(
            &error,
            RefreshError::WorkspaceNotAllowed { allowed, actual }
                if allowed == &["ws-allowed".to_owned()] && actual == "ws-other"
        ),
        "the refusal is not WorkspaceNotAllowed(allowed [ws-allowed], actual ws-other): \
         {error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("ws-allowed") && message.contains("ws-other"),
        "the refusal does not name both the allowed and the actual workspace: {message}"
    );
    assert_eq!(
        error.class(),
        ErrorClass::SignInRequired,
        "a refused workspace does not require signing in: {error:?}"
    );
    assert_hides("the refusal", &message, &[access.as_str(), INITIAL_RT]);

    // Credentials of the allowed workspace are accepted; switching to another one on disk is
    // refused again at reload.
    write_workspace_tokens(&store, &access, "ws-allowed");
    let manager = AuthManager::new(store.clone(), restricted)
        .expect("a manager refused credentials of the allowed workspace");
    assert_eq!(
        manager
            .cached()
            .expect("the manager has no credentials")
            .workspace_id(),
        Some("ws-allowed"),
        "the manager reports the wrong workspace"
    );
    write_workspace_tokens(&store, &access, "ws-other");
    let error = manager
        .reload()
        .expect_err("reload() accepted credentials of a workspace that is not allowed");
    let message = error.to_string();
    assert!(
        matches!(error, RefreshError::WorkspaceNotAllowed { .. })
            && message.contains("ws-allowed")
            && message.contains("ws-other"),
        "reload() did not refuse the other workspace naming both: {error:?} / {message}"
    );
    let host = manager
        .set_host_tokens(
            HostTokens {
                account_id: "ws-other".to_owned(),
                ..host_tokens(&access)
            },
            silent_host(Arc::new(AtomicUsize::new(0))),
        )
        .expect_err("host tokens of a workspace that is not allowed were accepted");
    assert!(
        matches!(host, RefreshError::WorkspaceNotAllowed { .. }),
        "host tokens of another workspace were not refused as WorkspaceNotAllowed: {host:?}"
    );
    fake.expect_requests(0, "a refused workspace contacted the endpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_401_recovery_step_adopts_a_newer_generation_written_by_another_process_without_a_request(
) {
    let id_token = jwt::id_token(EMAIL, ACCOUNT, PLAN);
    let old_access = access_expiring_in(3600, "at_before_401");
    let (_home, store, fake, manager) = signed_in(&old_access, &id_token);

    // Another process refreshed and stored its tokens.
    let other = fake.rotate_out_of_band();
    let other_gen = write_tokens(
        &store,
        &other.access_token,
        &other.refresh_token,
        &other.id_token,
        ACCOUNT,
    );

    let mut recovery = manager.unauthorized_recovery();
    assert!(recovery.has_next(), "ChatGPT mode offers no 401 recovery");
    let step = recovery.next().await.expect("recovery step 1 failed");
    assert_eq!(
        step,
        RecoveryStep::Reloaded,
        "step 1 did not adopt the newer generation on disk"
    );
    fake.expect_requests(0, "step 1 sent a refresh request");
    let cached = manager.cached().expect("the manager has no credentials");
    assert_eq!(
        cached.bearer().expose(),
        other.access_token,
        "step 1 did not adopt the other process's access token"
    );
    assert_eq!(
        cached.generation(),
        other_gen,
        "step 1 adopted the wrong generation"
    );

    // The adopted token is refused too: step 2 refreshes with the token on disk.
    assert!(recovery.has_next(), "no second step after a reload");
    let step = recovery.next().await.expect("recovery step 2 failed");
    assert_eq!(step, RecoveryStep::Refreshed, "step 2 did not refresh");
    fake.expect_requests(1, "step 2 did not send exactly one request");
    assert_eq!(
        fake.presented_refresh_tokens(),
        vec![other.refresh_token.clone()],
        "step 2 did not present the adopted refresh token"
    );
    assert!(!recovery.has_next(), "the recovery offers a third step");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_anything_newer_on_disk_the_401_recovery_refreshes_at_once_and_is_then_exhausted() {
    let id_token = jwt::id_token(EMAIL, ACCOUNT, PLAN);
    let old_access = access_expiring_in(3600, "at_before_401");
    let (_home, _store, fake, manager) = signed_in(&old_access, &id_token);

    let mut recovery = manager.unauthorized_recovery();
    assert!(recovery.has_next(), "ChatGPT mode offers no 401 recovery");
    let step = recovery.next().await.expect("the recovery step failed");
    assert_eq!(
        step,
        RecoveryStep::Refreshed,
        "with nothing newer on disk, the first step did not go on to refresh"
    );
    fake.expect_requests(1, "the refresh step did not send exactly one request");
    assert!(
        !recovery.has_next(),
        "the recovery offers another step after refreshing"
    );
    let issued = fake.last_issued().expect("the endpoint issued no tokens");
    assert_eq!(
        cached_bearer(&manager),
        issued.access_token,
        "the manager does not use the refreshed access token"
    );
    assert_exhausted(&mut recovery).await;
    fake.expect_requests(1, "an exhausted recovery sent a request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_of_the_manager_the_credentials_and_the_recovery_never_shows_a_token() {
    let id_token = jwt::id_token(EMAIL, ACCOUNT, PLAN);
    let old_access = access_expiring_in(120, "at_due");
    let (_home, _store, fake, manager) = signed_in(&old_access, &id_token);
    let before = manager.cached().expect("the manager has no credentials");
    let before_shown = format!("{manager:?} {manager:#?} {before:?} {before:#?}");

    let after = manager.auth().await.expect("the due refresh failed");
    let issued = fake.last_issued().expect("the endpoint issued no tokens");
    fake.expect_requests(1, "the due auth() did not refresh once");
    let recovery = manager.unauthorized_recovery();
    let shown = format!(
        "{before_shown} {manager:?} {manager:#?} {after:?} {after:#?} {recovery:?} {:?}",
        manager.config()
    );
    assert_hides(
        "Debug output",
        &shown,
        &[
            old_access.as_str(),
            INITIAL_RT,
            id_token.as_str(),
            issued.access_token.as_str(),
            issued.refresh_token.as_str(),
            issued.id_token.as_str(),
        ],
    );
    assert!(
        shown.contains(ACCOUNT),
        "Debug output does not even name the account (is it empty?): {shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_concurrent_auth_calls_with_due_host_tokens_ask_the_host_once_and_share_its_answer() {
    let (_home, _store, _fake, manager) = empty();
    let expired = access_expiring_in(-60, "host_expired");
    let fresh = access_expiring_in(3600, "host_fresh");
    let calls = Arc::new(AtomicUsize::new(0));
    // The host takes 100 ms to answer (well within the 200 ms limit).
    let refresher: HostRefresher = {
        let calls = calls.clone();
        let fresh = fresh.clone();
        Arc::new(move |_: HostRefreshRequest| -> HostRefreshFuture {
            calls.fetch_add(1, Ordering::SeqCst);
            let tokens = host_tokens(&fresh);
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok(tokens)
            })
        })
    };
    manager
        .set_host_tokens(host_tokens(&expired), refresher)
        .expect("set_host_tokens refused valid host tokens");

    let callers = concurrent_auth_calls(&manager, 8);
    for (i, caller) in callers.into_iter().enumerate() {
        let bearer = caller
            .await
            .expect("an auth() task panicked")
            .unwrap_or_else(|e| panic!("caller {i} failed: {e}"));
        assert!(
            bearer == fresh,
            "caller {i} did not get the host's new token"
        );
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "eight concurrent auth() calls with due host tokens asked the host more than once"
    );
}
