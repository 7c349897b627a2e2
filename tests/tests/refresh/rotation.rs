//! The refresh protocol beside processes that do not run it (issue 7): the write locks are free
//! while the request is in flight, a reuse refusal waits for the rotation it means, a refusal is
//! remembered across processes through the journal, and the save merges into what a writer
//! ignoring the locks wrote meanwhile. Managers over separate `Store` handles share nothing but
//! the files, as separate processes do.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use codex_refresh::{AuthManager, PermanentReason, RefreshConfig, RefreshError, RefreshOutcome};
use codex_store::{read_journal, JournalEvent, Store, ROTATION_PREFIX};
use codex_store_tests::fake_idp::Behavior;
use codex_store_tests::fixtures::{
    cached_bearer, config, entries_starting_with, manager, read_text, Identity, Setup,
    EVENT_TIMEOUT,
};
use codex_store_tests::jwt;
use codex_store_tests::secrets::assert_hides;

const IDENTITY: Identity = Identity::new(
    "acct-rotation",
    "rotation@example.com",
    "pro",
    "rt_rotation_initial",
);

/// A second, independent handle on the same directory: what another process would open.
fn other_process(setup: &Setup, reuse_wait: Duration) -> AuthManager {
    let store = Store::open(setup.home.path()).expect("cannot open a second store handle");
    manager(
        &store,
        RefreshConfig {
            reuse_wait,
            ..config(setup.fake.url())
        },
    )
}

/// Starts `manager.refresh()` in a task and returns once its request reached the endpoint.
fn refresh_in_flight(
    setup: &Setup,
    manager: &AuthManager,
) -> tokio::task::JoinHandle<Result<RefreshOutcome, RefreshError>> {
    let caller = tokio::spawn({
        let manager = manager.clone();
        async move { manager.refresh().await }
    });
    let sent = tokio::task::block_in_place(|| setup.fake.wait_for_requests(1, EVENT_TIMEOUT));
    assert!(sent, "the refresh request never reached the endpoint");
    caller
}

/// Waits (bounded) until `done` holds, polling every 5 ms.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn journal_has(store: &Store, event: JournalEvent) -> bool {
    read_journal(store.journal_path())
        .expect("the journal cannot be read")
        .iter()
        .any(|r| r.event == event)
}

/// Tries an exclusive, non-blocking flock on `path`, as Codex 0.171.0 polls `auth.json.lock`;
/// releases it at once.
fn try_flock(path: &Path) -> bool {
    let file: File = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    // Dropping `file` closes it, which releases the lock.
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok()
}

fn rotation_files(home: &Path) -> Vec<String> {
    entries_starting_with(home, ROTATION_PREFIX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_request_is_in_flight_codex_can_take_both_write_locks_and_only_the_refresh_lock_is_held(
) {
    let setup = Setup::new(IDENTITY, -60);
    setup.fake.set_delay(Duration::from_millis(1500));
    let manager = manager(&setup.store, config(setup.fake.url()));
    let caller = refresh_in_flight(&setup, &manager);
    let home = setup.home.path();
    assert!(
        try_flock(&home.join("auth.lock")),
        "auth.lock is held while the refresh request is in flight: a Codex process would queue"
    );
    assert!(
        try_flock(&home.join("auth.json.lock")),
        "auth.json.lock is held while the refresh request is in flight: Codex 0.171.0 gives up \
         after 5 s and drops its rotation"
    );
    assert!(
        setup
            .store
            .refresh_lock_held()
            .expect("cannot probe the refresh lock"),
        "the single-flight refresh lock is not held during the request"
    );
    let outcome = caller
        .await
        .expect("the refresh task panicked")
        .expect("the refresh failed");
    assert_eq!(outcome, RefreshOutcome::Refreshed, "unexpected outcome");
    assert!(
        read_text(setup.store.path()).contains(&setup.fake.current_refresh_token()),
        "auth.json does not hold the live refresh token after the refresh"
    );
    assert!(
        rotation_files(home).is_empty(),
        "a rotation file was left behind after a successful save: {:?}",
        rotation_files(home)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reuse_refusal_waits_for_the_rotation_it_means_and_adopts_it_when_it_lands_late() {
    let setup = Setup::new(IDENTITY, -60);
    // Another client (Codex, which sends before it locks) redeemed the token first; its answer
    // lands in auth.json only after ours was refused.
    let winner = setup.fake.rotate_out_of_band();
    let manager = manager(&setup.store, config(setup.fake.url()));
    let caller = tokio::spawn({
        let manager = manager.clone();
        async move { manager.refresh().await }
    });
    tokio::task::block_in_place(|| {
        wait_until("the refusal is in the journal", || {
            journal_has(&setup.store, JournalEvent::Refused)
        });
    });
    assert!(
        !caller.is_finished(),
        "the refresh gave up right after the reuse refusal instead of waiting for the rotation"
    );
    IDENTITY.write_tokens(&setup.store, &winner.access_token, &winner.refresh_token);
    let outcome = caller
        .await
        .expect("the refresh task panicked")
        .expect("the refresh reported the reuse refusal although the rotation landed in time");
    assert_eq!(
        outcome,
        RefreshOutcome::AdoptedFromDisk,
        "the late rotation was not adopted"
    );
    assert_eq!(
        cached_bearer(&manager),
        winner.access_token,
        "the manager does not hold the winner's access token"
    );
    setup
        .fake
        .expect_requests(1, "more than one request was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reuse_refusal_with_no_rotation_in_time_is_reported_and_the_next_process_sends_nothing() {
    let setup = Setup::new(IDENTITY, -60);
    setup.fake.rotate_out_of_band(); // the stored token is dead, and no rotation will land
    let first = other_process(&setup, Duration::from_millis(300));
    let err = first
        .refresh()
        .await
        .expect_err("a dead refresh token was reported as refreshed");
    assert!(
        matches!(
            err,
            RefreshError::Permanent {
                reason: PermanentReason::Reused
            }
        ),
        "expected refresh_token_reused, got {err}"
    );
    let second = other_process(&setup, Duration::from_millis(300));
    let err = second
        .refresh()
        .await
        .expect_err("the second process refreshed a token the endpoint refused");
    assert!(
        matches!(
            err,
            RefreshError::Permanent {
                reason: PermanentReason::Reused
            }
        ),
        "the second process reported another error: {err}"
    );
    setup
        .fake
        .expect_requests(1, "the second process sent the refused refresh token again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_refresh_token_refused_once_is_not_sent_again_by_other_processes_until_the_file_changes(
) {
    let setup = Setup::new(IDENTITY, -60);
    setup.fake.set_behavior(Behavior::status(
        401,
        r#"{"error":{"code":"refresh_token_expired"}}"#,
    ));
    for n in 1..=3 {
        let process = other_process(&setup, Duration::from_millis(300));
        let err = process
            .auth()
            .await
            .expect_err("an expired refresh token gave credentials");
        assert!(
            matches!(
                err,
                RefreshError::Permanent {
                    reason: PermanentReason::Expired
                }
            ),
            "process {n} reported another error than the remembered refusal: {err}"
        );
    }
    setup.fake.expect_requests(
        1,
        "three processes on one refused token must make exactly one request",
    );

    // The refused token written back in another file (a writer rewriting it) is still dead:
    // nothing is sent.
    let access = jwt::access_token(jwt::now_unix() - 60, "at_rewritten");
    IDENTITY.write_tokens(&setup.store, &access, &setup.fake.current_refresh_token());
    let err = other_process(&setup, Duration::from_millis(300))
        .auth()
        .await
        .expect_err("a refused refresh token in a rewritten file gave credentials");
    assert!(
        err.is_permanent(),
        "a refused refresh token in a rewritten file gave another error than the refusal: {err}"
    );
    setup.fake.expect_requests(
        1,
        "a refused refresh token must not be sent again because another file holds it",
    );

    // A new sign-in (a new refresh token) changes the file: the refusal no longer applies.
    setup.fake.set_behavior(Behavior::Normal);
    let signed_in = setup.fake.rotate_out_of_band();
    let access = jwt::access_token(jwt::now_unix() - 60, "at_relogin");
    IDENTITY.write_tokens(&setup.store, &access, &signed_in.refresh_token);
    let process = other_process(&setup, Duration::from_millis(300));
    process
        .auth()
        .await
        .expect("after a new sign-in the refresh was still refused from memory");
    setup
        .fake
        .expect_requests(2, "the new sign-in's token was not sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_ignoring_the_locks_during_the_request_is_merged_with_and_the_new_token_kept() {
    let setup = Setup::new(IDENTITY, -60);
    setup.fake.set_delay(Duration::from_millis(800));
    let manager = manager(&setup.store, config(setup.fake.url()));
    let caller = refresh_in_flight(&setup, &manager);
    // An older installation rewrites the file in place, without any lock, adding a key.
    let path = setup.store.path().to_path_buf();
    let mut doc: serde_json::Value =
        serde_json::from_str(&read_text(setup.store.path())).expect("auth.json is not JSON");
    doc["written_by_old_codex"] = serde_json::json!("yes");
    std::fs::write(&path, serde_json::to_vec_pretty(&doc).expect("encode"))
        .expect("the in-place write failed");
    let outcome = caller
        .await
        .expect("the refresh task panicked")
        .expect("the refresh failed");
    assert_eq!(outcome, RefreshOutcome::Refreshed, "unexpected outcome");
    let text = read_text(setup.store.path());
    assert!(
        text.contains(&setup.fake.current_refresh_token()),
        "the redeemed rotation was lost: auth.json does not hold the live refresh token"
    );
    assert!(
        text.contains("written_by_old_codex"),
        "the other writer's change was overwritten instead of merged"
    );
    assert!(
        journal_has(&setup.store, JournalEvent::Saved),
        "the save is not in the journal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_account_signing_in_during_the_request_wins_and_nothing_is_left_behind() {
    let setup = Setup::new(IDENTITY, -60);
    setup.fake.set_delay(Duration::from_millis(800));
    let manager = manager(&setup.store, config(setup.fake.url()));
    let caller = refresh_in_flight(&setup, &manager);
    let other = Identity::new("acct-other", "other@example.com", "plus", "rt_other");
    let other_access = jwt::access_token(jwt::now_unix() + 3600, "at_other");
    other.write_tokens(&setup.store, &other_access, "rt_other");
    let before = read_text(setup.store.path());
    let err = caller
        .await
        .expect("the refresh task panicked")
        .expect_err("the refresh claimed success over another account's sign-in");
    assert!(
        matches!(err, RefreshError::AccountChanged { .. }),
        "expected AccountChanged, got {err}"
    );
    assert_eq!(
        read_text(setup.store.path()),
        before,
        "the other account's credentials were changed"
    );
    assert!(
        rotation_files(setup.home.path()).is_empty(),
        "the discarded rotation was left behind: {:?}",
        rotation_files(setup.home.path())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_records_the_rotation_with_fingerprints_and_never_a_token() {
    let setup = Setup::new(IDENTITY, -60);
    let manager = manager(&setup.store, config(setup.fake.url()));
    manager.refresh().await.expect("the refresh failed");
    let issued = setup.fake.last_issued().expect("nothing was issued");
    let journal = std::fs::read_to_string(setup.store.journal_path()).expect("no journal");
    for (name, secret) in [
        ("initial refresh token", IDENTITY.initial_rt),
        ("new refresh token", issued.refresh_token.as_str()),
        ("new access token", issued.access_token.as_str()),
    ] {
        assert_hides(&format!("the journal (its {name})"), &journal, &[secret]);
    }
    let records = read_journal(setup.store.journal_path()).expect("unreadable journal");
    let saved = records
        .iter()
        .find(|r| r.event == JournalEvent::Saved)
        .expect("no saved record");
    assert_eq!(
        saved.refresh.as_deref(),
        Some(
            codex_store::Secret::new(IDENTITY.initial_rt)
                .fingerprint()
                .as_str()
        ),
        "the saved record does not name the redeemed token's fingerprint"
    );
    assert_eq!(
        saved.new_refresh.as_deref(),
        Some(
            codex_store::Secret::new(issued.refresh_token.clone())
                .fingerprint()
                .as_str()
        ),
        "the saved record does not name the new token's fingerprint"
    );
    assert_eq!(
        saved.account.as_deref(),
        Some(IDENTITY.account),
        "the saved record names another account"
    );
}
