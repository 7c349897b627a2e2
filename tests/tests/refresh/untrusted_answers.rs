//! The token endpoint's answers are untrusted (issue 8): an answer is validated completely before
//! anything is stored, redirects are never followed, bodies are read only up to a limit, and the
//! classification follows the reference (`400 invalid_grant` is permanent). In each case the
//! stored credentials stay exactly as they were.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use codex_refresh::{AuthManager, PermanentReason, RefreshConfig, RefreshError, TransientReason};
use codex_store_tests::fake_idp::Behavior;
use codex_store_tests::fixtures::{config, manager, read, Identity, Setup, EVENT_TIMEOUT};
use codex_store_tests::jwt;

const IDENTITY: Identity = Identity::new(
    "acct-untrusted",
    "untrusted@example.com",
    "plus",
    "rt_untrusted_initial",
);

/// Runs one refresh on expired credentials against an endpoint answering 200 with `body`, and
/// checks that it failed as an invalid answer and stored nothing.
async fn refused_200(body: &str) -> RefreshError {
    let setup = Setup::new(IDENTITY, -60);
    setup.fake.set_behavior(Behavior::status(200, body));
    let before = read(setup.store.path());
    let manager = manager(&setup.store, config(setup.fake.url()));
    let err = manager
        .refresh()
        .await
        .expect_err(&format!("a 200 answer {body:?} counted as a refresh"));
    assert_eq!(
        read(setup.store.path()),
        before,
        "the answer {body:?} changed auth.json"
    );
    err
}

fn is_invalid_answer(err: &RefreshError) -> bool {
    matches!(
        err,
        RefreshError::Transient {
            reason: TransientReason::InvalidAnswer(_) | TransientReason::UnparseableAnswer
        }
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_answer_without_a_usable_access_token_is_an_error_and_stores_nothing() {
    for body in [
        "{}",
        r#"{"access_token": null}"#,
        r#"{"access_token": ""}"#,
        r#"{"access_token": 42}"#,
        r#"{"error": {"code": "server_busy"}}"#,
        "[]",
        "null",
    ] {
        let err = refused_200(body).await;
        assert!(
            is_invalid_answer(&err),
            "the 200 answer {body:?} gave another error than an invalid answer: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_refresh_or_id_token_in_a_200_answer_never_overwrites_the_live_one() {
    let access = jwt::access_token(jwt::now_unix() + 3600, "at_new");
    for body in [
        format!(r#"{{"access_token": "{access}", "refresh_token": ""}}"#),
        format!(r#"{{"access_token": "{access}", "refresh_token": 7}}"#),
        format!(r#"{{"access_token": "{access}", "id_token": ""}}"#),
    ] {
        let err = refused_200(&body).await;
        assert!(
            is_invalid_answer(&err),
            "the answer {body:?} gave another error: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_token_of_another_account_in_the_answer_is_refused_and_nothing_is_stored() {
    let access = jwt::access_token(jwt::now_unix() + 3600, "at_new");
    let other = jwt::id_token("intruder@example.com", "acct-intruder", "plus");
    let body = format!(
        r#"{{"access_token": "{access}", "refresh_token": "rt_intruder", "id_token": "{other}"}}"#
    );
    let err = refused_200(&body).await;
    assert!(
        matches!(&err, RefreshError::Transient { reason: TransientReason::InvalidAnswer(what) } if what.contains("another account")),
        "an id token of another account gave another error: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_redeemed_for_an_unusable_answer_is_recorded_as_spent_and_not_sent_again() {
    let setup = Setup::new(IDENTITY, -60);
    let access = jwt::access_token(jwt::now_unix() + 3600, "at_new");
    let other = jwt::id_token("intruder@example.com", "acct-intruder", "plus");
    setup.fake.set_behavior(Behavior::status(
        200,
        format!(
            r#"{{"access_token": "{access}", "refresh_token": "rt_x", "id_token": "{other}"}}"#
        ),
    ));
    manager(&setup.store, config(setup.fake.url()))
        .refresh()
        .await
        .expect_err("an answer for another account counted as a refresh");
    // Another process: the token was redeemed for that answer, so it is spent.
    let err = manager(&setup.store, config(setup.fake.url()))
        .refresh()
        .await
        .expect_err("a spent refresh token gave credentials");
    assert!(
        err.is_permanent(),
        "the spent token was not reported as needing a sign-in: {err}"
    );
    setup.fake.expect_requests(
        1,
        "a refresh token redeemed for an unusable answer must not be sent again",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_larger_than_the_limit_is_refused_without_reading_it_all() {
    let huge = "a".repeat(1_100_000);
    let access = jwt::access_token(jwt::now_unix() + 3600, "at_new");
    let body = format!(r#"{{"access_token": "{access}", "refresh_token": "{huge}"}}"#);
    let err = refused_200(&body).await;
    assert!(
        matches!(&err, RefreshError::Transient { reason: TransientReason::InvalidAnswer(what) } if what.contains("larger than")),
        "a 1.1 MB answer gave another error than 'too large': {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_invalid_grant_is_a_permanent_refusal() {
    let setup = Setup::new(IDENTITY, -60);
    setup.fake.set_behavior(Behavior::status(
        400,
        r#"{"error": "invalid_grant", "error_description": "refresh token revoked"}"#,
    ));
    let manager = manager(&setup.store, config(setup.fake.url()));
    let err = manager
        .refresh()
        .await
        .expect_err("invalid_grant counted as a refresh");
    assert!(
        matches!(
            &err,
            RefreshError::Permanent {
                reason: PermanentReason::Unauthorized { code: Some(code) }
            } if code == "invalid_grant"
        ),
        "400 invalid_grant was not a permanent refusal: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_from_the_token_endpoint_is_not_followed_and_the_token_never_reaches_the_other_origin(
) {
    let setup = Setup::new(IDENTITY, -60);
    let before = read(setup.store.path());
    // The "other origin" is the fake endpoint, which would happily answer with tokens.
    let target = setup.fake.url();
    let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind");
    let addr = listener.local_addr().expect("address");
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        stream
            .set_read_timeout(Some(EVENT_TIMEOUT))
            .expect("timeout");
        let mut buf = [0u8; 8192];
        let _ = stream.read(&mut buf);
        let answer = format!(
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: {target}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n"
        );
        stream.write_all(answer.as_bytes()).expect("write");
    });
    let manager = manager(&setup.store, config(format!("http://{addr}/oauth/token")));
    let err = manager
        .refresh()
        .await
        .expect_err("a redirect counted as a refresh");
    server.join().expect("the redirecting server panicked");
    assert!(
        matches!(
            err,
            RefreshError::Transient {
                reason: TransientReason::Redirect(307)
            }
        ),
        "a 307 gave another error: {err}"
    );
    setup.fake.expect_requests(
        0,
        "the redirect was followed: the refresh token reached another origin",
    );
    assert_eq!(
        read(setup.store.path()),
        before,
        "a redirect changed auth.json"
    );
}

#[test]
fn an_unusable_token_url_is_a_configuration_error_naming_the_setting_not_a_transient_one() {
    let setup = Setup::new(IDENTITY, -60);
    for url in ["not a url", "ftp://127.0.0.1/oauth/token", "http://"] {
        let err = AuthManager::new(
            setup.store.clone(),
            RefreshConfig {
                token_url: url.into(),
                http_timeout: Duration::from_secs(1),
                ..RefreshConfig::default()
            },
        )
        .expect_err(&format!("the token URL {url:?} was accepted"));
        assert!(
            !err.is_transient(),
            "an unusable token URL {url:?} is reported as transient: {err}"
        );
        assert!(
            err.to_string().contains("CODEX_REFRESH_TOKEN_URL_OVERRIDE"),
            "the error for {url:?} does not name the setting: {err}"
        );
    }
}
