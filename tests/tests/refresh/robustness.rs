//! A rotated refresh token must never be lost: what cannot be written is found before the
//! request, and what the endpoint sends that the store would refuse is not stored.

use codex_refresh::RefreshError;
use codex_store::StoreError;
use codex_store_tests::fake_idp::Behavior;
use codex_store_tests::fixtures::{config, manager, read_text, Identity, Setup};
use codex_store_tests::jwt;
use rustix::fs::{mkfifoat, Mode, CWD};

const IDENTITY: Identity = Identity::new(
    "acc-robust",
    "robust@example.com",
    "plus",
    "rt_initial_robust",
);

#[tokio::test(flavor = "multi_thread")]
async fn a_hard_linked_auth_json_is_refused_before_the_refresh_token_is_redeemed() {
    let setup = Setup::new(IDENTITY, -60);
    let link = setup.home.path().join("backup.json");
    std::fs::hard_link(setup.store.path(), &link).expect("cannot create the hard link");
    let manager = manager(&setup.store, config(setup.fake.url()));
    let err = manager
        .refresh()
        .await
        .expect_err("a refresh went ahead although its result could not be written");
    assert!(
        matches!(err, RefreshError::Store(StoreError::HardLinked { .. })),
        "expected HardLinked, got {err}"
    );
    setup.fake.expect_requests(
        0,
        "the refresh token was redeemed although the new one could not have been stored",
    );
    assert_eq!(
        setup.fake.current_refresh_token(),
        IDENTITY.initial_rt,
        "the live refresh token changed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_id_token_from_the_endpoint_that_does_not_decode_keeps_the_old_one_and_stores_the_rest()
{
    let setup = Setup::new(IDENTITY, -60);
    let new_access = jwt::access_token(jwt::now_unix() + 3600, "at_after_bad_id");
    let body = serde_json::json!({
        "id_token": "not-a-jwt",
        "access_token": new_access,
        "refresh_token": "rt_after_bad_id",
    });
    setup.fake.set_behavior(Behavior::Status {
        status: 200,
        body: body.to_string(),
    });
    let manager = manager(&setup.store, config(setup.fake.url()));
    manager
        .refresh()
        .await
        .expect("a refresh with a usable access and refresh token failed");
    let doc = setup
        .store
        .load()
        .expect("auth.json does not load after the refresh")
        .into_auth()
        .expect("auth.json disappeared");
    let tokens = doc.tokens.expect("the tokens disappeared");
    assert_eq!(
        tokens.refresh_token.expose(),
        "rt_after_bad_id",
        "the rotated refresh token was not stored"
    );
    assert_eq!(
        tokens.access_token.expose(),
        new_access,
        "the new access token was not stored"
    );
    assert_eq!(
        tokens.id_token.expose(),
        IDENTITY.id_token(),
        "the undecodable id token replaced the old one"
    );
    assert!(
        !read_text(setup.store.path()).contains("not-a-jwt"),
        "the undecodable id token reached the file"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_that_could_not_be_written_are_written_by_the_next_call_without_a_second_request() {
    let setup = Setup::new(IDENTITY, -60);
    setup.fake.set_delay(std::time::Duration::from_millis(300));
    let manager = manager(&setup.store, config(setup.fake.url()));
    let path = setup.store.path().to_path_buf();
    let aside = setup.home.path().join("auth.json.aside");
    let original = std::fs::read(&path).expect("read auth.json");

    let refreshing = tokio::spawn({
        let manager = manager.clone();
        async move { manager.refresh().await }
    });
    // While the request is in flight, auth.json becomes something that cannot be written.
    let seen = tokio::task::block_in_place(|| {
        setup
            .fake
            .wait_for_requests(1, std::time::Duration::from_secs(10))
    });
    assert!(seen, "the refresh request never reached the endpoint");
    std::fs::rename(&path, &aside).expect("move auth.json aside");
    assert_eq!(
        mkfifoat(CWD, &path, Mode::RUSR | Mode::WUSR),
        Ok(()),
        "mkfifo {} failed",
        path.display()
    );

    let err = refreshing
        .await
        .expect("the refresh task panicked")
        .expect_err("the refresh reported success although nothing could be written");
    // The new tokens are safe in the rotation file; only the rename over the FIFO was refused.
    assert!(
        matches!(&err, RefreshError::Store(StoreError::NotInstalled { reason, .. })
            if reason.contains("not a regular file")),
        "expected the install to fail on the FIFO with the tokens kept aside, got {err}"
    );
    assert_eq!(
        setup.fake.successes(),
        1,
        "the endpoint did not rotate the token"
    );

    // The file comes back as it was: the next call writes the kept tokens, with no new request.
    std::fs::remove_file(&path).expect("remove the FIFO");
    std::fs::rename(&aside, &path).expect("move auth.json back");
    assert_eq!(
        std::fs::read(&path).expect("read"),
        original,
        "the restored file differs"
    );
    manager
        .auth()
        .await
        .expect("the next call could not use the kept tokens");
    let doc = setup
        .store
        .load()
        .expect("auth.json does not load")
        .into_auth()
        .expect("auth.json disappeared");
    assert_eq!(
        doc.tokens
            .expect("tokens disappeared")
            .refresh_token
            .expose(),
        setup.fake.current_refresh_token(),
        "the live refresh token was not written to auth.json"
    );
    setup.fake.expect_requests(1, "a second request was sent");
}
