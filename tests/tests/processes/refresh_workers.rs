//! Cross-process refresh cases with real `refresh-worker` processes, real files and a real token
//! endpoint on 127.0.0.1: a stale cache heals without a request, an account change or a logout in
//! another process is noticed without a request, and a `refresh_token_reused` answer after a
//! lock-ignoring writer rotated the token adopts that writer's token.
//!
//! Secrets never appear in messages: tokens are compared by fingerprint
//! (`Secret::fingerprint`, a SHA-256 hex prefix).

use std::path::Path;
use std::time::Duration;

use codex_store::{AuthDotJson, Expect, Store};
use codex_store_tests::fake_idp::{Behavior, FakeIdp, Issued};
use codex_store_tests::fixtures::{
    auth_path, expect_ready, parse_token_line, presented_fingerprints, sha256_hex, sha256sum,
    spawn_refresh_worker, write_auth, Reported, WORKER_EVENT_TIMEOUT,
};
use codex_store_tests::jwt::{access_token, auth_json, id_token, now_unix};
use codex_store_tests::process::Process;
use codex_store_tests::secrets::fingerprint;
use tempfile::TempDir;

const WORKER: &str = env!("CARGO_BIN_EXE_refresh-worker");

const ACCOUNT: &str = "acc-one";
const OTHER_ACCOUNT: &str = "acc-two";
const EMAIL: &str = "one@example.com";
const OTHER_EMAIL: &str = "two@example.com";
const PLAN: &str = "pro";
const INITIAL_REFRESH_TOKEN: &str = "rt_processes_initial";

/// How long the endpoint holds the worker's request in the lock-ignoring-writer cases: the test
/// rotates the token and rewrites auth.json within it, as soon as the request arrived. The tests
/// check afterwards that the rotation really came first (no request succeeded).
const IN_FLIGHT: Duration = Duration::from_secs(2);

/// Credentials for [`ACCOUNT`] with [`INITIAL_REFRESH_TOKEN`], the access token
/// [`cached_access_token`] and `last_refresh` = now.
fn credentials_text(exp: i64) -> String {
    auth_json(
        &cached_access_token(exp),
        INITIAL_REFRESH_TOKEN,
        &id_token(EMAIL, ACCOUNT, PLAN),
        ACCOUNT,
    )
}

/// The access token of [`credentials_text`]: expiring at `exp` (Unix seconds).
fn cached_access_token(exp: i64) -> String {
    access_token(exp, "cached")
}

/// The fake endpoint for [`ACCOUNT`], and a CODEX_HOME whose auth.json is
/// [`credentials_text`]; returns the text written too.
fn signed_in(exp: i64) -> (FakeIdp, TempDir, String) {
    let idp = FakeIdp::start(ACCOUNT, EMAIL, PLAN, INITIAL_REFRESH_TOKEN);
    let home = tempfile::tempdir().expect("create a temp CODEX_HOME");
    let text = credentials_text(exp);
    write_auth(home.path(), &text);
    (idp, home, text)
}

/// An access token that expired a minute ago: due, and no longer usable.
fn expired() -> i64 {
    now_unix() - 60
}

/// An access token that expires in two minutes: still usable, but inside the 5-minute window,
/// so a refresh is due. A failed refresh would fall back to it silently.
fn expiring_soon() -> i64 {
    now_unix() + 120
}

/// Starts a `stale` worker and returns it with the generation it cached.
fn start_stale(home: &Path, idp: &FakeIdp) -> (Process, String) {
    let worker = spawn_refresh_worker(WORKER, "stale", home, &idp.url());
    let line = worker.line("`loaded <generation>`");
    let generation = line
        .strip_prefix("loaded ")
        .unwrap_or_else(|| {
            panic!(
                "{}: expected `loaded <generation>`, got {line:?}",
                worker.name()
            )
        })
        .to_owned();
    (worker, generation)
}

/// Runs a `race` worker to completion (one `auth()`), returning what it reported.
fn refresh_in_another_process(home: &Path, idp: &FakeIdp) -> Reported {
    let mut a = spawn_refresh_worker(WORKER, "race", home, &idp.url());
    expect_ready(&a);
    a.go();
    let report = parse_token_line(&a, &a.line("its token"));
    a.exit_successfully();
    report
}

/// Process B caches due credentials; process A refreshes them; then, with the endpoint failing
/// or not, B asks for its credentials.
fn stale_cache_heals(exp: i64, endpoint_fails_before_b: bool) {
    let (idp, home, _) = signed_in(exp);
    let initial = sha256sum(&auth_path(home.path()));

    let (mut b, b_loaded) = start_stale(home.path(), &idp);
    assert_eq!(
        b_loaded, initial,
        "B must cache the generation of the file it read (its SHA-256)"
    );
    let a = refresh_in_another_process(home.path(), &idp);
    idp.expect_requests(1, "A must have refreshed with one request");
    let issued = idp.last_issued().expect("A's request issued no tokens");
    assert_eq!(
        a.fingerprint,
        fingerprint(&issued.access_token),
        "A must end with the issued token (fingerprints)"
    );
    let refreshed = sha256sum(&auth_path(home.path()));
    assert_eq!(
        a.generation, refreshed,
        "A must report the generation it stored"
    );
    assert_ne!(refreshed, initial, "A's refresh did not change auth.json");

    if endpoint_fails_before_b {
        idp.set_behavior(Behavior::status(
            500,
            r#"{"error":{"code":"server_error"}}"#,
        ));
    }
    b.go();
    let b_report = parse_token_line(&b, &b.line("its token"));
    b.exit_successfully();
    idp.expect_requests(
        1,
        "B must adopt A's tokens instead of sending a request of its own",
    );
    assert_eq!(
        b_report, a,
        "B must end with A's token and generation (fingerprints)"
    );
    assert_eq!(
        sha256sum(&auth_path(home.path())),
        refreshed,
        "B must not rewrite auth.json when it adopts"
    );
}

#[test]
fn a_stale_process_adopts_the_token_another_process_stored_and_sends_no_request() {
    stale_cache_heals(expired(), false);
}

#[test]
fn a_stale_process_adopts_the_stored_token_without_a_request_even_while_the_endpoint_fails() {
    stale_cache_heals(expiring_soon(), true);
}

/// Checks an `error <class> <message>` line and the exit code 1.
fn expect_error(worker: &mut Process, line: &str, class: &str, message_start: &str) {
    let prefix = format!("error {class} {message_start}");
    assert!(
        line.starts_with(&prefix),
        "{}: expected a line starting with {prefix:?}, got {line:?}; stderr: {}",
        worker.name(),
        worker.stderr()
    );
    let status = worker.exit();
    assert_eq!(
        status.code(),
        Some(1),
        "{}: an error must exit 1, got {status}",
        worker.name()
    );
}

#[test]
fn a_process_caching_one_account_refuses_the_account_that_signed_in_since_without_a_request() {
    let (idp, home, _) = signed_in(expiring_soon());
    let (mut b, _) = start_stale(home.path(), &idp);

    // Another account signs in, in another process, through the store.
    let other = auth_json(
        &access_token(now_unix() + 3600, "other-account"),
        "rt_other_account",
        &id_token(OTHER_EMAIL, OTHER_ACCOUNT, PLAN),
        OTHER_ACCOUNT,
    );
    let doc = AuthDotJson::from_json(other.as_bytes()).expect("the fixture parses");
    let store = Store::open(home.path()).expect("open the store");
    let signed_in = store
        .compare_and_swap(Expect::Any, Some(&doc))
        .expect("sign the other account in");

    b.go();
    let line = b.line("its answer");
    expect_error(&mut b, &line, "SignInRequired", "another account signed in");
    assert!(
        line.contains(ACCOUNT) && line.contains(OTHER_ACCOUNT),
        "the message must name both accounts: {line:?}"
    );
    idp.expect_requests(
        0,
        "no refresh may be sent for an account that is no longer signed in",
    );
    assert_eq!(
        sha256sum(&auth_path(home.path())),
        signed_in.to_string(),
        "the other account's credentials must stay untouched"
    );
}

#[test]
fn a_process_caching_credentials_reports_a_logout_elsewhere_without_a_request() {
    let (idp, home, _) = signed_in(expiring_soon());
    let (mut b, _) = start_stale(home.path(), &idp);

    // Logout in another process, through the store.
    let store = Store::open(home.path()).expect("open the store");
    store
        .compare_and_swap(Expect::Any, None)
        .expect("log out through the store");

    b.go();
    let line = b.line("its answer");
    expect_error(&mut b, &line, "SignInRequired", "signed out");
    idp.expect_requests(0, "no refresh may be sent after a logout");
    assert!(
        !auth_path(home.path()).exists(),
        "auth.json must stay deleted after the logout"
    );
}

/// The lock-ignoring writer: once the worker's request is at the endpoint, the token is rotated
/// out of band and `write` puts whatever it decides into auth.json with `std::fs::write`, in
/// place and without the lock. Returns the out-of-band tokens' access-token fingerprint and the
/// SHA-256 of what was written.
fn rotate_and_write_behind_the_lock(
    home: &Path,
    idp: &FakeIdp,
    write: impl FnOnce(&Issued) -> String,
) -> (String, String) {
    assert!(
        idp.wait_for_requests(1, WORKER_EVENT_TIMEOUT),
        "the worker's refresh request did not arrive"
    );
    let issued = idp.rotate_out_of_band();
    let text = write(&issued);
    write_auth(home, &text);
    let written = sha256sum(&auth_path(home));
    (fingerprint(&issued.access_token), written)
}

/// What the endpoint must have seen: the worker's one request with the initial token, refused
/// because the out-of-band rotation came first.
fn assert_reused_once(idp: &FakeIdp) {
    assert_eq!(
        idp.successes(),
        0,
        "the worker's request was answered before the out-of-band rotation: {IN_FLIGHT:?} in \
         flight was not enough on this machine"
    );
    idp.expect_requests(1, "the worker must send exactly one request");
    assert_eq!(
        presented_fingerprints(idp),
        vec![fingerprint(INITIAL_REFRESH_TOKEN)],
        "the worker must have presented the initial refresh token (fingerprints)"
    );
}

/// Reads the worker's `token` line and checks the end of a lock-ignoring-writer case: the worker
/// exited successfully after [`assert_reused_once`], ended with the out-of-band token at the
/// generation the writer wrote (`why` otherwise), and left that file alone.
fn assert_ended_with_the_out_of_band_token(
    worker: &mut Process,
    idp: &FakeIdp,
    home: &Path,
    (oob_fp, written): (String, String),
    why: &str,
) {
    let report = parse_token_line(worker, &worker.line("its token"));
    let status = worker.exit();
    assert!(status.success(), "{} exited with {status}", worker.name());
    assert_reused_once(idp);
    assert_eq!(
        report,
        Reported {
            fingerprint: oob_fp,
            generation: written.clone()
        },
        "{why}"
    );
    assert_eq!(
        sha256sum(&auth_path(home)),
        written,
        "the worker must not overwrite the lock-ignoring writer's live tokens"
    );
}

fn out_of_band_file(issued: &Issued) -> String {
    auth_json(
        &issued.access_token,
        &issued.refresh_token,
        &issued.id_token,
        ACCOUNT,
    )
}

#[test]
fn a_refresh_answered_reused_adopts_the_token_a_lock_ignoring_writer_stored_meanwhile() {
    let (idp, home, _) = signed_in(expired());
    idp.set_delay(IN_FLIGHT);
    let mut worker = spawn_refresh_worker(WORKER, "refresh", home.path(), &idp.url());
    let loaded = worker.line("`loaded <generation>`");
    assert!(
        loaded.starts_with("loaded "),
        "{}: unexpected first line {loaded:?}",
        worker.name()
    );
    worker.go();
    let out_of_band = rotate_and_write_behind_the_lock(home.path(), &idp, out_of_band_file);

    let outcome = worker.line("its outcome");
    assert_eq!(
        outcome,
        "outcome AdoptedFromDisk",
        "{}: a reused token with newer tokens on disk must be adopted; stderr: {}",
        worker.name(),
        worker.stderr()
    );
    assert_ended_with_the_out_of_band_token(
        &mut worker,
        &idp,
        home.path(),
        out_of_band,
        "the worker must end with the out-of-band token, at the generation the writer wrote \
         (fingerprints)",
    );
}

#[test]
fn auth_returns_the_lock_ignoring_writers_token_when_its_own_refresh_token_was_reused() {
    let (idp, home, _) = signed_in(expired());
    idp.set_delay(IN_FLIGHT);
    let mut worker = spawn_refresh_worker(WORKER, "race", home.path(), &idp.url());
    expect_ready(&worker);
    worker.go();
    let out_of_band = rotate_and_write_behind_the_lock(home.path(), &idp, out_of_band_file);

    assert_ended_with_the_out_of_band_token(
        &mut worker,
        &idp,
        home.path(),
        out_of_band,
        "auth() must return the out-of-band token (fingerprints)",
    );
}

#[test]
fn a_reused_answer_is_an_error_when_a_rewrite_meanwhile_kept_the_dead_refresh_token() {
    let exp = expired();
    let (idp, home, initial) = signed_in(exp);
    idp.set_delay(IN_FLIGHT);
    let mut worker = spawn_refresh_worker(WORKER, "race", home.path(), &idp.url());
    expect_ready(&worker);
    worker.go();
    // Someone elsewhere redeems the token and keeps the new ones; meanwhile a lock-ignoring
    // writer rewrites auth.json with the same (now dead) tokens and a new last_refresh.
    let (_, written) = rotate_and_write_behind_the_lock(home.path(), &idp, |_| loop {
        let same_tokens = credentials_text(exp);
        if same_tokens != initial {
            break same_tokens;
        }
    });
    assert_ne!(
        written,
        sha256_hex(initial.as_bytes()),
        "the rewrite must change the file's bytes"
    );

    let line = worker.line("its answer");
    assert_reused_once(&idp);
    assert!(
        !line.starts_with("token "),
        "after `refresh_token_reused` the worker adopted a rewrite that still holds the dead \
         refresh token, and reported success with {line:?} (the expired access token it started \
         with has fingerprint {}); expected `error SignInRequired ...`",
        fingerprint(&cached_access_token(exp))
    );
    expect_error(
        &mut worker,
        &line,
        "SignInRequired",
        "the refresh token was already used",
    );
    assert_eq!(
        sha256sum(&auth_path(home.path())),
        written,
        "credentials are never deleted or rewritten because a refresh failed"
    );
}
