//! The moments around the redeeming of a refresh token, with the real binary and the fake
//! endpoint: the refresh lock file deleted under a request in flight, a signal while the answer
//! is on its way, a request that timed out, and write locks held past the lock timeout. In each,
//! the token is presented once and the rotation it buys ends in auth.json. Every step waits for
//! an event (a request seen by the endpoint, a line on stderr), never for time to pass.

use std::path::Path;
use std::time::Duration;

use crate::kit::{
    assert_no_secret_leaked, auth_path, exit, register_last_issued, run, sha256sum, signed_in_home,
    spawn, write_file, ChatgptCreds, RUN_TIMEOUT,
};
use codex_store_tests::fake_idp::{Behavior, FakeIdp};

const URL_ENV: &str = "CODEX_REFRESH_TOKEN_URL_OVERRIDE";

/// auth.json's refresh token.
fn refresh_token_in(home: &Path) -> String {
    let text = std::fs::read_to_string(auth_path(home)).expect("auth.json must be readable");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("auth.json must be JSON");
    doc["tokens"]["refresh_token"]
        .as_str()
        .expect("auth.json must hold a refresh token")
        .to_owned()
}

/// The journal's lines whose event is `event`.
fn journal_events(home: &Path, event: &str) -> usize {
    let journal = std::fs::read_to_string(home.join("auth.json.journal")).unwrap_or_default();
    let needle = format!("\"event\":\"{event}\"");
    journal.lines().filter(|l| l.contains(&needle)).count()
}

fn waits_for_first_request(idp: &FakeIdp) {
    assert!(
        idp.wait_for_requests(1, RUN_TIMEOUT),
        "the first command never sent its refresh request"
    );
}

#[test]
fn a_refresh_lock_deleted_during_a_request_neither_sends_the_token_twice_nor_loses_its_rotation() {
    let creds = ChatgptCreds::expired();
    let (home, _path, _before, idp) = signed_in_home(&creds);
    // The endpoint rotates on receipt and answers two seconds later: the request is in flight.
    idp.set_behavior(Behavior::late_winner(Duration::from_secs(2)));
    let url = idp.url();
    let env = [(URL_ENV, url.as_str())];
    let first = spawn(home.path(), &["token"], None, &env);
    waits_for_first_request(&idp);
    // The advice for a "stuck lock": remove it. A second process then takes a new lock file.
    std::fs::remove_file(home.path().join("auth.json.refresh.lock"))
        .expect("the refresh lock file of the first command must exist");
    let second = run(home.path(), &["--reuse-wait", "60s", "token"], None, &env);
    let first = first.finish(RUN_TIMEOUT);
    register_last_issued(&idp);
    let issued = idp.last_issued().expect("the endpoint issued the rotation");
    first
        .expect_code(exit::OK, "the command whose lock file was deleted")
        .expect_token(&issued.access_token, "the first command's token");
    second
        .expect_code(exit::OK, "the command that took the new lock file")
        .expect_token(
            &issued.access_token,
            "the second command must adopt the first one's rotation, not redeem again",
        );
    assert_eq!(
        idp.presented_refresh_tokens(),
        vec![creds.refresh_token.clone()],
        "the refresh token must be presented once, by the first command only"
    );
    assert_eq!(
        refresh_token_in(home.path()),
        issued.refresh_token,
        "auth.json must end on the refresh token the endpoint issued"
    );
    assert_no_secret_leaked();
}

#[test]
fn sigint_or_sighup_during_a_request_waits_for_the_answer_and_saves_it_before_exiting() {
    for (name, signal, code) in [
        ("SIGINT", rustix::process::Signal::INT, 130),
        ("SIGHUP", rustix::process::Signal::HUP, 129),
        ("SIGTERM", rustix::process::Signal::TERM, 143),
    ] {
        let creds = ChatgptCreds::expired();
        let (home, _path, _before, idp) = signed_in_home(&creds);
        idp.set_behavior(Behavior::late_winner(Duration::from_secs(2)));
        let url = idp.url();
        let running = spawn(home.path(), &["token"], None, &[(URL_ENV, url.as_str())]);
        waits_for_first_request(&idp);
        let pid = rustix::process::Pid::from_raw(running.id() as i32).expect("a pid");
        rustix::process::kill_process(pid, signal)
            .unwrap_or_else(|e| panic!("cannot send {name} to `codex-store token`: {e}"));
        let out = running.finish(RUN_TIMEOUT);
        register_last_issued(&idp);
        let issued = idp.last_issued().expect("the endpoint issued the rotation");
        out.expect_code(code, &format!("`token` stopped by {name} mid-request"));
        assert_eq!(
            refresh_token_in(home.path()),
            issued.refresh_token,
            "{name} during the request lost the rotation: auth.json is not on the issued token"
        );
        assert_eq!(idp.requests(), 1, "{name}: one request and no more");
    }
    assert_no_secret_leaked();
}

#[test]
fn a_request_that_timed_out_makes_the_next_process_wait_for_its_rotation_instead_of_sending() {
    let creds = ChatgptCreds::expired();
    let (home, _path, _before, idp) = signed_in_home(&creds);
    // Rotated on receipt, answered far later than the client waits: the token is spent, and the
    // client cannot know it.
    idp.set_behavior(Behavior::late_winner(Duration::from_secs(30)));
    let url = idp.url();
    let env = [(URL_ENV, url.as_str())];
    let timed_out = run(home.path(), &["--http-timeout", "1s", "token"], None, &env);
    timed_out.expect_code(exit::TRANSIENT, "a request that timed out");
    assert_eq!(
        journal_events(home.path(), "unanswered"),
        1,
        "a request sent without an answer must be journaled as unanswered"
    );
    // The next process, with its log at info level so that the test sees it waiting.
    let waiting = spawn(
        home.path(),
        &["--reuse-wait", "60s", "token"],
        None,
        &[(URL_ENV, url.as_str()), ("RUST_LOG", "codex_refresh=info")],
    );
    waiting.wait_for_stderr_line("sent without a known outcome");
    // The rotation lands (the answer reached another process, which wrote it).
    register_last_issued(&idp);
    let issued = idp.last_issued().expect("the endpoint rotated on receipt");
    write_file(
        &auth_path(home.path()),
        ChatgptCreds {
            access_token: issued.access_token.clone(),
            refresh_token: issued.refresh_token.clone(),
            id_token: issued.id_token.clone(),
            ..creds.clone()
        }
        .auth_json(),
        0o600,
    );
    let out = waiting.finish(RUN_TIMEOUT);
    out.expect_code(exit::OK, "the process that waited")
        .expect_token(&issued.access_token, "the rotation that landed");
    assert_eq!(
        idp.requests(),
        1,
        "the process after the timeout must wait for the rotation, not present the token again"
    );
    assert_no_secret_leaked();
}

#[test]
fn write_locks_held_past_the_lock_timeout_send_nothing_and_exit_5_with_one_message() {
    let creds = ChatgptCreds::expired();
    let (home, path, before, idp) = signed_in_home(&creds);
    let worker = crate::kit::helper("store-worker");
    let holder = codex_store_tests::process::Process::spawn(
        &worker,
        ["hold-write-locks".as_ref(), home.path().as_os_str()],
    );
    holder.expect_line("locked");
    let url = idp.url();
    let out = run(
        home.path(),
        &["--lock-timeout", "1s", "token"],
        None,
        &[(URL_ENV, url.as_str())],
    );
    out.expect_code(exit::LOCK_TIMEOUT, "token while the write locks stay held");
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("error") || l.contains("ERROR"))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "a lock timeout must be said once, as one error\n{}",
        out.describe()
    );
    idp.expect_requests(
        0,
        "a token whose answer could not be installed was redeemed",
    );
    assert_eq!(sha256sum(&path), before, "auth.json must be untouched");
    assert_no_secret_leaked();
}

#[test]
fn an_answer_that_keeps_the_refresh_token_leaves_it_live_for_the_next_refresh() {
    let creds = ChatgptCreds::expired();
    let (home, _path, _before, idp) = signed_in_home(&creds);
    idp.set_behavior(Behavior::OmitRefreshToken);
    let url = idp.url();
    for run_no in 1..=2 {
        let out = run(home.path(), &["refresh"], None, &[(URL_ENV, url.as_str())]);
        out.expect_code(
            exit::OK,
            &format!("refresh {run_no}: the refresh token the endpoint kept is still live"),
        );
        assert_eq!(
            idp.requests(),
            run_no,
            "refresh {run_no} must send its request (the kept token is not spent)"
        );
    }
    register_last_issued(&idp);
    assert_no_secret_leaked();
}

#[test]
fn a_gateway_error_after_the_endpoint_rotated_makes_the_next_process_wait_instead_of_sending() {
    let creds = ChatgptCreds::expired();
    let (home, _path, _before, idp) = signed_in_home(&creds);
    idp.set_behavior(Behavior::RotateThenStatus { status: 504 });
    let url = idp.url();
    let env = [(URL_ENV, url.as_str())];
    run(home.path(), &["token"], None, &env).expect_code(exit::TRANSIENT, "a 504");
    assert_eq!(
        journal_events(home.path(), "unanswered"),
        1,
        "a 5xx may come after the token was redeemed: it must be journaled as unanswered"
    );
    idp.set_behavior(Behavior::Normal);
    let out = run(home.path(), &["--reuse-wait", "1s", "token"], None, &env);
    register_last_issued(&idp);
    // The token was spent by the first request: after waiting for a rotation that never comes,
    // the next process sends it once more and is told so.
    out.expect_code(exit::SIGN_IN_REQUIRED, "the token the 504 spent");
    assert_eq!(
        idp.requests(),
        2,
        "the dead token must be sent once more at most"
    );
    assert_no_secret_leaked();
}

#[test]
fn a_fifo_planted_as_the_journal_is_replaced_so_that_an_unanswered_request_is_still_recorded() {
    let creds = ChatgptCreds::expired();
    let (home, _path, _before, idp) = signed_in_home(&creds);
    let journal = home.path().join("auth.json.journal");
    codex_store_tests::fixtures::make_fifo(&journal);
    idp.set_behavior(Behavior::late_winner(Duration::from_secs(30)));
    let url = idp.url();
    let out = run(
        home.path(),
        &["--http-timeout", "1s", "token"],
        None,
        &[(URL_ENV, url.as_str())],
    );
    out.expect_code(exit::TRANSIENT, "a request that timed out");
    assert!(
        std::fs::symlink_metadata(&journal).is_ok_and(|m| m.is_file()),
        "the planted FIFO must have been replaced by a journal"
    );
    assert_eq!(
        journal_events(home.path(), "unanswered"),
        1,
        "the unanswered request must be journaled although a FIFO stood at the journal's name"
    );
    assert_no_secret_leaked();
}

#[test]
fn a_process_that_waited_for_another_ones_request_which_redeemed_nothing_is_not_told_to_sign_in() {
    let creds = ChatgptCreds::expired();
    let (home, _path, _before, idp) = signed_in_home(&creds);
    // The first request is answered 503 after two seconds: nothing is redeemed.
    idp.set_behavior(Behavior::status(503, "{}"));
    idp.set_delay(Duration::from_secs(2));
    let url = idp.url();
    let env = [(URL_ENV, url.as_str())];
    let first = spawn(home.path(), &["token"], None, &env);
    waits_for_first_request(&idp);
    std::fs::remove_file(home.path().join("auth.json.refresh.lock"))
        .expect("the refresh lock file of the first command must exist");
    let second = spawn(home.path(), &["--reuse-wait", "10s", "token"], None, &env);
    first
        .finish(RUN_TIMEOUT)
        .expect_code(exit::TRANSIENT, "the first command, answered 503");
    idp.set_delay(Duration::ZERO);
    idp.set_behavior(Behavior::Normal);
    let out = second.finish(RUN_TIMEOUT);
    register_last_issued(&idp);
    let issued = idp.last_issued().expect("the second command refreshed");
    out.expect_code(
        exit::OK,
        "the token was never redeemed: the waiting process must refresh, not ask for a sign-in",
    )
    .expect_token(&issued.access_token, "the second command's token");
    assert_eq!(idp.requests(), 2, "one request each");
    assert_no_secret_leaked();
}

#[test]
fn sigint_during_a_lock_wait_exits_at_once_without_waiting_for_the_lock() {
    let creds = ChatgptCreds::expired();
    let (home, path, before, idp) = signed_in_home(&creds);
    let worker = crate::kit::helper("store-worker");
    let mut holder = crate::kit::hold_lock(&worker, home.path());
    let url = idp.url();
    let waiting = spawn(
        home.path(),
        &["--lock-timeout", "10m", "token"],
        None,
        &[(URL_ENV, url.as_str())],
    );
    waiting.wait_for_stderr_line("waiting for another process that holds the lock");
    let pid = rustix::process::Pid::from_raw(waiting.id() as i32).expect("a pid");
    rustix::process::kill_process(pid, rustix::process::Signal::INT).expect("SIGINT");
    let out = waiting.finish(RUN_TIMEOUT);
    out.expect_code(130, "SIGINT while waiting for the refresh lock");
    assert!(
        holder.try_status().is_none(),
        "the lock holder must still be holding: the command must not have waited for it"
    );
    holder.close_stdin();
    holder.expect_line("released");
    idp.expect_requests(0, "a command stopped while waiting sent a request");
    assert_eq!(sha256sum(&path), before, "auth.json must be untouched");
    assert_no_secret_leaked();
}
