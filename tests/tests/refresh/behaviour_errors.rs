//! How `codex-refresh` classifies a failed refresh, against the real fake token endpoint on
//! 127.0.0.1: permanent answers mean "sign in again" and are remembered for the generation they
//! happened at; everything else is transient; and auth.json is byte-identical after every
//! failure (credentials are never deleted or changed because a refresh failed).

use std::net::TcpListener;
use std::time::Duration;

use codex_refresh::{
    ErrorClass, PermanentReason, RefreshConfig, RefreshError, RefreshOutcome, TransientReason,
};
use codex_store::Expect;
use codex_store_tests::fake_idp::Behavior;
use codex_store_tests::fixtures::{
    config, manager, read, write_json, Identity, Setup, EVENT_TIMEOUT,
};
use codex_store_tests::jwt;
use codex_store_tests::secrets::{assert_error_hides, assert_hides};

const ACCOUNT: &str = "acc-errors";
const EMAIL: &str = "errors@example.com";
const PLAN: &str = "plus";
const INITIAL_RT: &str = "rt_initial_errors";
const IDENTITY: Identity = Identity::new(ACCOUNT, EMAIL, PLAN, INITIAL_RT);

/// A URL on 127.0.0.1 where nothing listens: a port that was just bound and released.
fn refused_url() -> String {
    let listener = TcpListener::bind(("127.0.0.1", 0)).expect("cannot bind 127.0.0.1:0");
    let port = listener
        .local_addr()
        .expect("a bound listener has an address")
        .port();
    drop(listener);
    format!("http://127.0.0.1:{port}/oauth/token")
}

/// Runs one forced refresh against an endpoint that fails, and checks what every failure must
/// do: the error has `class`, auth.json is byte-identical, and the message shows no token.
async fn refresh_fails(setup: &Setup, config: RefreshConfig, class: ErrorClass) -> RefreshError {
    let manager = manager(&setup.store, config);
    let before = read(setup.store.path());
    let error = match manager.refresh().await {
        Ok(outcome) => panic!("the refresh succeeded ({outcome:?}) against a failing endpoint"),
        Err(e) => e,
    };
    assert_eq!(
        error.class(),
        class,
        "the refresh error has the wrong class: {error} ({error:?})"
    );
    assert_eq!(
        error.is_permanent(),
        class == ErrorClass::SignInRequired,
        "is_permanent() disagrees with class() for {error:?}"
    );
    assert_eq!(
        error.is_transient(),
        class == ErrorClass::Transient,
        "is_transient() disagrees with class() for {error:?}"
    );
    assert!(
        read(setup.store.path()) == before,
        "auth.json changed after a failed refresh ({error}):\nbefore: {}\nafter:  {}",
        String::from_utf8_lossy(&before),
        String::from_utf8_lossy(&read(setup.store.path()))
    );
    let message = error.to_string();
    assert_error_hides("the error", &error, &[setup.access.as_str(), INITIAL_RT]);
    if class == ErrorClass::SignInRequired {
        assert!(
            message.contains("sign in again"),
            "a permanent failure does not tell the user to sign in again: {message}"
        );
    } else {
        assert!(
            message.contains("unchanged") && message.contains("try again later"),
            "a transient failure does not say the credentials are unchanged and to retry: \
             {message}"
        );
    }
    error
}

/// Panics with `why` and the error unless it is `RefreshError::Permanent { reason }`.
#[track_caller]
fn assert_permanent(error: &RefreshError, reason: PermanentReason, why: &str) {
    assert!(
        matches!(error, RefreshError::Permanent { reason: r } if *r == reason),
        "{why}: {error:?}"
    );
}

/// Panics with `why` and the error unless it is `RefreshError::Transient { reason }`.
#[track_caller]
fn assert_transient(error: &RefreshError, reason: TransientReason, why: &str) {
    assert!(
        matches!(error, RefreshError::Transient { reason: r } if *r == reason),
        "{why}: {error:?}"
    );
}

/// [`refresh_fails`] for credentials valid for another hour, against the fake endpoint
/// answering as `behavior`; returns the set-up and the error.
async fn refresh_fails_with(behavior: Behavior, class: ErrorClass) -> (Setup, RefreshError) {
    let setup = Setup::new(IDENTITY, 3600);
    setup.fake.set_behavior(behavior);
    let error = refresh_fails(&setup, config(setup.fake.url()), class).await;
    (setup, error)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_token_expired_answer_requires_signing_in_again_and_leaves_auth_json_untouched() {
    let (setup, error) = refresh_fails_with(
        Behavior::status(401, r#"{"error":{"code":"refresh_token_expired"}}"#),
        ErrorClass::SignInRequired,
    )
    .await;
    assert_permanent(
        &error,
        PermanentReason::Expired,
        "refresh_token_expired was not reported as Permanent(Expired)",
    );
    setup
        .fake
        .expect_requests(1, "the refresh sent the wrong number of requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_code_is_permanent_whatever_the_http_status() {
    let (_setup, error) = refresh_fails_with(
        Behavior::status(400, r#"{"error":"REFRESH_TOKEN_EXPIRED"}"#),
        ErrorClass::SignInRequired,
    )
    .await;
    assert_permanent(
        &error,
        PermanentReason::Expired,
        "a 400 with the code refresh_token_expired (upper case, string shape) was not \
         Permanent(Expired)",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_token_invalidated_answer_requires_signing_in_again_and_leaves_auth_json_untouched(
) {
    let (_setup, error) = refresh_fails_with(
        Behavior::status(401, r#"{"error":{"code":"refresh_token_invalidated"}}"#),
        ErrorClass::SignInRequired,
    )
    .await;
    assert_permanent(
        &error,
        PermanentReason::Invalidated,
        "refresh_token_invalidated was not reported as Permanent(Invalidated)",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_refresh_token_is_refused_by_the_real_protocol_as_invalidated() {
    let setup = Setup::new(IDENTITY, 3600);
    // The fake answers refresh_token_invalidated for a token it never issued.
    IDENTITY.write_tokens(&setup.store, &setup.access, "rt_never_issued");
    let error = refresh_fails(&setup, config(setup.fake.url()), ErrorClass::SignInRequired).await;
    assert_permanent(
        &error,
        PermanentReason::Invalidated,
        "a token the endpoint never issued was not Permanent(Invalidated)",
    );
    assert_eq!(
        setup.fake.presented_refresh_tokens(),
        vec!["rt_never_issued".to_owned()],
        "the request did not present the refresh token stored in auth.json"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_401_requires_signing_in_again_and_leaves_auth_json_untouched() {
    let (_setup, error) =
        refresh_fails_with(Behavior::status(401, ""), ErrorClass::SignInRequired).await;
    assert_permanent(
        &error,
        PermanentReason::Unauthorized { code: None },
        "a 401 without a code was not Permanent(Unauthorized { code: None })",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_refresh_token_requires_signing_in_again_when_nothing_newer_is_on_disk() {
    let setup = Setup::new(IDENTITY, 3600);
    // Another client redeemed the stored token without writing auth.json.
    setup.fake.rotate_out_of_band();
    let error = refresh_fails(&setup, config(setup.fake.url()), ErrorClass::SignInRequired).await;
    assert_permanent(
        &error,
        PermanentReason::Reused,
        "a dead refresh token was not reported as Permanent(Reused)",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_is_transient_and_leaves_auth_json_untouched() {
    let (_setup, error) = refresh_fails_with(
        Behavior::status(500, r#"{"error":"server_error"}"#),
        ErrorClass::Transient,
    )
    .await;
    assert_transient(
        &error,
        TransientReason::Status(500),
        "a 500 was not Transient(Status(500))",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_is_transient_and_leaves_auth_json_untouched() {
    let (_setup, error) = refresh_fails_with(
        Behavior::status(429, r#"{"error":{"code":"rate_limited"}}"#),
        ErrorClass::Transient,
    )
    .await;
    assert_transient(
        &error,
        TransientReason::Status(429),
        "a 429 was not Transient(Status(429))",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unparseable_answer_is_transient_and_leaves_auth_json_untouched() {
    let (_setup, error) = refresh_fails_with(Behavior::Garbage, ErrorClass::Transient).await;
    assert_transient(
        &error,
        TransientReason::UnparseableAnswer,
        "a 200 with a non-JSON body was not Transient(UnparseableAnswer)",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_never_answers_times_out_as_transient_and_leaves_auth_json_untouched() {
    let setup = Setup::new(IDENTITY, 3600);
    setup.fake.set_behavior(Behavior::Hang);
    let config = RefreshConfig {
        http_timeout: Duration::from_millis(300),
        ..config(setup.fake.url())
    };
    let started = std::time::Instant::now();
    let error = refresh_fails(&setup, config, ErrorClass::Transient).await;
    assert_transient(
        &error,
        TransientReason::Timeout,
        "a hanging endpoint was not Transient(Timeout)",
    );
    assert!(
        started.elapsed() < EVENT_TIMEOUT,
        "the 300 ms HTTP timeout took {:?} to fire",
        started.elapsed()
    );
    setup.fake.expect_requests(
        1,
        "the hanging endpoint did not receive exactly one request",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_transient_and_leaves_auth_json_untouched() {
    let setup = Setup::new(IDENTITY, 3600);
    let error = refresh_fails(&setup, config(refused_url()), ErrorClass::Transient).await;
    assert_transient(
        &error,
        TransientReason::Connect,
        "a refused connection was not Transient(Connect)",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_returns_the_cached_credentials_when_a_due_but_still_valid_token_cannot_be_refreshed_for_now(
) {
    let setup = Setup::new(IDENTITY, 120);
    setup.fake.set_behavior(Behavior::status(500, "{}"));
    let config = RefreshConfig {
        min_retry_interval: Duration::from_secs(60),
        ..config(setup.fake.url())
    };
    let manager = manager(&setup.store, config);
    let before = read(setup.store.path());

    let auth = manager
        .auth()
        .await
        .expect("auth() returned the transient failure although the cached token is still valid");
    assert_eq!(
        auth.bearer().expose(),
        setup.access,
        "auth() did not return the cached access token"
    );
    setup.fake.expect_requests(
        1,
        "auth() with a due token did not try the refresh exactly once",
    );

    // Within min_retry_interval (60 s here) the failing endpoint is not asked again.
    let again = manager
        .auth()
        .await
        .expect("a second auth() after a transient failure failed");
    assert_eq!(
        again.bearer().expose(),
        setup.access,
        "the second auth() did not return the cached access token"
    );
    setup.fake.expect_requests(
        1,
        "auth() retried a transiently failing endpoint within min_retry_interval",
    );
    assert!(
        read(setup.store.path()) == before,
        "auth.json changed after a transient failure"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_returns_the_transient_error_when_the_cached_token_has_already_expired() {
    let setup = Setup::new(IDENTITY, -60);
    setup.fake.set_behavior(Behavior::status(500, "{}"));
    let manager = manager(&setup.store, config(setup.fake.url()));
    let before = read(setup.store.path());

    let error = manager
        .auth()
        .await
        .expect_err("auth() returned an expired token instead of the transient failure");
    assert_eq!(
        error.class(),
        ErrorClass::Transient,
        "auth() with an expired token and a 500 gave the wrong class: {error:?}"
    );
    assert_transient(
        &error,
        TransientReason::Status(500),
        "auth() did not return the endpoint's 500 as Transient(Status(500))",
    );
    assert_hides(
        "the error message",
        &error.to_string(),
        &[setup.access.as_str(), INITIAL_RT],
    );
    assert!(
        read(setup.store.path()) == before,
        "auth.json changed after a transient failure"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_is_remembered_so_the_dead_token_is_not_sent_again_until_auth_json_changes(
) {
    let setup = Setup::new(IDENTITY, 120);
    setup.fake.set_behavior(Behavior::status(
        401,
        r#"{"error":{"code":"refresh_token_expired"}}"#,
    ));
    let manager = manager(&setup.store, config(setup.fake.url()));

    let first = manager
        .refresh()
        .await
        .expect_err("the refresh succeeded against refresh_token_expired");
    assert_eq!(
        first.class(),
        ErrorClass::SignInRequired,
        "the first failure has the wrong class: {first:?}"
    );
    setup
        .fake
        .expect_requests(1, "the first refresh sent no request");

    let second = manager
        .refresh()
        .await
        .expect_err("a second refresh of the same generation succeeded");
    assert_eq!(
        second.class(),
        ErrorClass::SignInRequired,
        "the remembered failure has the wrong class: {second:?}"
    );
    assert_eq!(
        second.to_string(),
        first.to_string(),
        "the remembered failure differs from the original one"
    );
    let from_auth = manager
        .auth()
        .await
        .expect_err("auth() with due tokens ignored the remembered permanent failure");
    assert_eq!(
        from_auth.class(),
        ErrorClass::SignInRequired,
        "auth() after a permanent failure gave the wrong class: {from_auth:?}"
    );
    setup
        .fake
        .expect_requests(1, "a refresh token known to be dead was sent again");

    // Someone signs in again (a new refresh token, still due tokens): the failure is forgotten.
    setup.fake.set_behavior(Behavior::Normal);
    let signed_in = setup.fake.rotate_out_of_band();
    let new_access = jwt::access_token(jwt::now_unix() + 120, "at_after_sign_in");
    IDENTITY.write_tokens(&setup.store, &new_access, &signed_in.refresh_token);
    let auth = manager
        .auth()
        .await
        .expect("auth() after auth.json changed still failed");
    setup.fake.expect_requests(
        2,
        "no request was sent after auth.json changed (the failure was not forgotten)",
    );
    let issued = setup
        .fake
        .last_issued()
        .expect("the endpoint issued no tokens");
    assert_eq!(
        auth.bearer().expose(),
        issued.access_token,
        "auth() did not return the freshly issued access token"
    );
    for error in [&first, &second, &from_auth] {
        assert_hides(
            "a remembered-failure message",
            &error.to_string(),
            &[setup.access.as_str(), new_access.as_str(), INITIAL_RT],
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_is_not_remembered_and_the_next_refresh_succeeds() {
    let setup = Setup::new(IDENTITY, 3600);
    setup.fake.set_behavior(Behavior::status(503, "{}"));
    let manager = manager(&setup.store, config(setup.fake.url()));
    let error = manager
        .refresh()
        .await
        .expect_err("the refresh succeeded against a 503");
    assert!(error.is_transient(), "a 503 was not transient: {error:?}");

    setup.fake.set_behavior(Behavior::Normal);
    let outcome = manager
        .refresh()
        .await
        .expect("the refresh after a transient failure failed");
    assert_eq!(
        outcome,
        RefreshOutcome::Refreshed,
        "the second refresh did not redeem the token"
    );
    setup
        .fake
        .expect_requests(2, "the refresh after a transient failure sent no request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_account_signing_in_elsewhere_is_reported_naming_both_accounts_without_a_request() {
    let setup = Setup::new(IDENTITY, 120);
    let manager = manager(&setup.store, config(setup.fake.url()));
    let other_access = jwt::access_token(jwt::now_unix() + 120, "at_other_account");
    let text = jwt::auth_json(
        &other_access,
        "rt_other_account",
        &jwt::id_token("other@example.com", "acc-someone-else", PLAN),
        "acc-someone-else",
    );
    write_json(&setup.store, &text);
    let before = read(setup.store.path());

    let error = manager
        .refresh()
        .await
        .expect_err("the refresh went ahead with another account's credentials");
    let message = error.to_string();
    assert!(
        matches!(&error, RefreshError::AccountChanged { expected, found }
            if expected == ACCOUNT && found == "acc-someone-else"),
        "the account change was not reported as AccountChanged({ACCOUNT} -> acc-someone-else): \
         {error:?}"
    );
    assert!(
        message.contains(ACCOUNT) && message.contains("acc-someone-else"),
        "the message does not name both accounts: {message}"
    );
    assert_eq!(
        error.class(),
        ErrorClass::SignInRequired,
        "an account change has the wrong class: {error:?}"
    );
    assert_hides(
        "the error message",
        &message,
        &[
            setup.access.as_str(),
            other_access.as_str(),
            INITIAL_RT,
            "rt_other_account",
        ],
    );
    setup
        .fake
        .expect_requests(0, "a request was sent for another account");
    assert!(
        read(setup.store.path()) == before,
        "the other account's credentials were changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_in_another_process_is_reported_as_signed_out_without_a_request_or_a_new_file() {
    let setup = Setup::new(IDENTITY, 120);
    let manager = manager(&setup.store, config(setup.fake.url()));
    setup
        .store
        .compare_and_swap(Expect::Any, None)
        .expect("deleting auth.json failed");

    let error = manager
        .auth()
        .await
        .expect_err("auth() with due tokens went on after a logout elsewhere");
    assert!(
        matches!(error, RefreshError::LoggedOut { .. }),
        "a logout elsewhere was not reported as LoggedOut: {error:?}"
    );
    assert!(
        error.to_string().contains("sign in again"),
        "the logout message does not say to sign in again: {error}"
    );
    setup
        .fake
        .expect_requests(0, "a request was sent after a logout");
    assert!(
        !setup.store.path().exists(),
        "auth.json was recreated after a logout elsewhere"
    );
}
