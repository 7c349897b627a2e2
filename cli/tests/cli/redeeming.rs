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
