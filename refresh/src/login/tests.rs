use std::path::PathBuf;

use codex_store::{AuthDotJson, AuthMode, Generation, Secret, Store, StoreError};

use super::*;
use crate::fleet::{Fleet, FleetConfig, FleetError};

fn api_key_login() -> AuthDotJson {
    AuthDotJson {
        auth_mode: Some(AuthMode::ApiKey),
        openai_api_key: Some(Secret::new("sk-login-test")),
        ..Default::default()
    }
}

/// A fleet at a loopback port where nothing listens: every call fails at once.
fn unreachable_fleet() -> Fleet {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port();
    Fleet::new(FleetConfig::new(vec![format!("http://127.0.0.1:{port}")]))
        .expect("a fleet client for a loopback endpoint")
}

fn run<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(future)
}

fn not_durable(generation: Generation) -> StoreError {
    StoreError::NotDurable {
        path: PathBuf::from("/x/auth.json"),
        generation,
        source: std::io::Error::other("fsync failed"),
    }
}

#[test]
fn a_change_in_place_but_not_known_to_be_durable_is_done_and_keeps_its_warning() {
    let generation = Generation::of_bytes(b"{}");
    let (value, durability) = in_place(Err(not_durable(generation)), |g| g)
        .expect("a change in place must be taken as done");
    assert_eq!(
        value, generation,
        "the generation in place was not the value"
    );
    assert!(
        matches!(
            durability,
            Durability::NotDurable(StoreError::NotDurable { .. })
        ),
        "the fsync failure was not kept to be reported: {durability:?}"
    );
}

#[test]
fn a_durable_change_is_durable_and_any_other_error_stays_an_error() {
    let (value, durability) = in_place(Ok(true), |_| false).expect("a success is a success");
    assert!(value, "the change's own value was replaced");
    assert!(
        matches!(durability, Durability::Durable),
        "a synced change was reported not durable: {durability:?}"
    );
    let refused = StoreError::NotARegularFile {
        path: PathBuf::from("/x/auth.json"),
    };
    assert!(
        matches!(
            in_place(Err::<bool, _>(refused), |_| true),
            Err(StoreError::NotARegularFile { .. })
        ),
        "an error that changed nothing was taken as done"
    );
}

#[test]
fn a_local_sign_in_stores_the_login_and_a_sign_out_removes_it_once() {
    let dir = tempfile::tempdir().expect("a temporary home");
    let login = Login::Local(Store::open(dir.path()).expect("a store"));
    let signed_in = run(login.sign_in(&api_key_login())).expect("a local sign-in");
    assert!(signed_in.fleet.is_none(), "a local sign-in touched a fleet");
    let on_disk = login.store().load().expect("the stored login reads back");
    assert_eq!(
        on_disk.generation(),
        signed_in.local.generation,
        "the generation reported is not the one on disk"
    );
    let first = run(login.sign_out()).expect("a local sign-out");
    assert_eq!(
        first.local.removal,
        Removal::Removed,
        "the login was not removed"
    );
    assert!(first.fleet.is_none(), "a local sign-out touched a fleet");
    let second = run(login.sign_out()).expect("a second sign-out");
    assert_eq!(
        second.local.removal,
        Removal::NothingThere,
        "a second sign-out claimed to remove a login"
    );
}

#[test]
fn a_fleet_sign_in_the_fleet_does_not_take_keeps_the_login_stored_here() {
    let dir = tempfile::tempdir().expect("a temporary home");
    let store = Store::open(dir.path()).expect("a store");
    let login = Login::new(store.clone(), Some(unreachable_fleet()));
    match run(login.sign_in(&api_key_login())) {
        Err(SignInError::Fleet { stored, source }) => {
            assert!(
                matches!(source, FleetError::Unreachable { .. }),
                "the fleet's failure is not the unreachable endpoint: {source}"
            );
            assert_eq!(
                store.load().expect("auth.json reads").generation(),
                stored.generation,
                "the login stored here is not the one reported as stored"
            );
        }
        other => panic!("a sign-in with an unreachable fleet did not report it: {other:?}"),
    }
}

#[test]
fn a_fleet_sign_out_that_cannot_reach_the_fleet_leaves_this_machines_credentials() {
    let dir = tempfile::tempdir().expect("a temporary home");
    let store = Store::open(dir.path()).expect("a store");
    run(Login::Local(store.clone()).sign_in(&api_key_login())).expect("a local sign-in");
    let before = store.load().expect("auth.json reads").generation();
    let login = Login::new(store.clone(), Some(unreachable_fleet()));
    let result = run(login.sign_out());
    assert!(
        matches!(
            result,
            Err(SignOutError::Fleet(FleetError::Unreachable { .. }))
        ),
        "a sign-out with an unreachable fleet did not fail on the fleet: {result:?}"
    );
    assert_eq!(
        store.load().expect("auth.json reads").generation(),
        before,
        "this machine's credentials were removed although the fleet was not signed out"
    );
}

#[test]
fn seeding_from_a_home_without_credentials_fails_without_asking_the_fleet() {
    let dir = tempfile::tempdir().expect("a temporary home");
    let store = Store::open(dir.path()).expect("a store");
    let login = FleetLogin::new(store.clone(), unreachable_fleet());
    match run(login.seed(false)) {
        Err(SeedError::NotSignedIn { path }) => {
            assert_eq!(path, store.path(), "the message names another file");
        }
        other => panic!("seeding without credentials was not refused as such: {other:?}"),
    }
}
