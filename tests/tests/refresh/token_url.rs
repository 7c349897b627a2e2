//! A token URL that answers as no token endpoint does (404, 405, another 4xx without an OAuth
//! error code, an HTML page) is a configuration error, [`RefreshError::TokenUrl`], naming the
//! URL and where it came from; it is neither transient ("try again later") nor a refusal, it
//! changes nothing and spends nothing: the same refresh token is sent again once the URL is
//! right.

use codex_refresh::{ErrorClass, RefreshError, RefreshOutcome, TOKEN_URL_ENV};
use codex_store_tests::fake_idp::Behavior;
use codex_store_tests::fixtures::{config, manager, read, Identity, Setup};
use codex_store_tests::secrets::{assert_error_hides, fingerprint};

const IDENTITY: Identity = Identity::new(
    "acc-token-url",
    "token-url@example.com",
    "plus",
    "rt_initial_token_url",
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_of_no_token_endpoint_are_token_url_errors_that_change_and_spend_nothing() {
    let setup = Setup::new(IDENTITY, -60);
    let before = read(setup.store.path());
    let url = setup.fake.url();
    for behavior in [
        Behavior::page(404, "<html><body>Not Found</body></html>"),
        Behavior::status(404, r#"{"error":"not_found"}"#),
        Behavior::status(405, ""),
        Behavior::page(403, "<html><body>Forbidden</body></html>"),
    ] {
        setup.fake.set_behavior(behavior.clone());
        let error = manager(&setup.store, config(url.clone()))
            .refresh()
            .await
            .expect_err("a refresh against no token endpoint succeeded");
        let RefreshError::TokenUrl { origin, .. } = &error else {
            panic!("{behavior:?} is not a token URL error: {error} ({error:?})");
        };
        assert_eq!(
            *origin,
            codex_refresh::UrlOrigin::Configuration,
            "{behavior:?}: the URL set by the program is said to come from elsewhere: {error}"
        );
        assert_eq!(
            error.class(),
            ErrorClass::Other,
            "{behavior:?}: a configuration error has the wrong class: {error}"
        );
        assert!(
            !error.is_transient() && !error.is_permanent(),
            "{behavior:?}: a configuration error counts as transient or as a refusal: {error}"
        );
        let message = error.to_string();
        assert!(
            message.contains(&format!("\"{url}\""))
                && message.contains(TOKEN_URL_ENV)
                && !message.contains("try again later"),
            "{behavior:?}: the message does not name the URL and the variable, or says to try \
             again later: {message}"
        );
        assert_error_hides("the error", &error, &[IDENTITY.initial_rt]);
        assert!(
            read(setup.store.path()) == before,
            "{behavior:?}: auth.json changed after an answer of no token endpoint"
        );
    }
    setup.fake.set_behavior(Behavior::Normal);
    let outcome = manager(&setup.store, config(url))
        .refresh()
        .await
        .unwrap_or_else(|e| panic!("the refresh with a working endpoint failed: {e}"));
    assert_eq!(
        outcome,
        RefreshOutcome::Refreshed,
        "the refresh with a working endpoint did not refresh"
    );
    let presented: Vec<String> = setup
        .fake
        .presented_refresh_tokens()
        .iter()
        .map(|t| fingerprint(t))
        .collect();
    assert_eq!(
        presented,
        vec![fingerprint(IDENTITY.initial_rt); 5],
        "every attempt must present the one refresh token on disk: none of the failed ones spent \
         it (fingerprints)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_url_error_is_shared_by_the_callers_within_the_retry_interval_not_asked_again() {
    let setup = Setup::new(IDENTITY, -60);
    setup
        .fake
        .set_behavior(Behavior::page(404, "<html><body>Not Found</body></html>"));
    let manager = manager(&setup.store, config(setup.fake.url()));
    for attempt in 1..=3 {
        let error = manager
            .auth()
            .await
            .expect_err("auth() with an expired token against no token endpoint succeeded");
        assert!(
            matches!(error, RefreshError::TokenUrl { .. }),
            "attempt {attempt}: not a token URL error: {error}"
        );
    }
    assert_eq!(
        setup.fake.requests(),
        1,
        "every caller within the retry interval asked the wrong URL again: a failure must back off"
    );
}
