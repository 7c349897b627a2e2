//! A rotated refresh token must never be lost: what cannot be written is found before the
//! request, and what the endpoint sends that the store would refuse is not stored.

use codex_refresh::RefreshError;
use codex_store::StoreError;
use codex_store_tests::fake_idp::Behavior;
use codex_store_tests::jwt;
use codex_store_tests::refresh_fixtures::{config, file_text, manager, Identity, Setup};

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
    assert_eq!(
        setup.fake.requests(),
        0,
        "the refresh token was redeemed although the new one could not have been stored"
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
        !file_text(&setup.store).contains("not-a-jwt"),
        "the undecodable id token reached the file"
    );
}
