//! Single flight across processes: many `refresh-worker` processes holding the same due
//! credentials refresh at once, through real files and a real token endpoint on 127.0.0.1, and
//! the endpoint sees one request.
//!
//! Secrets never appear in messages: tokens are compared by fingerprint
//! (`Secret::fingerprint`, a SHA-256 hex prefix).

use std::path::Path;
use std::time::{Duration, Instant};

use codex_store::AuthDotJson;
use codex_store_tests::fake_idp::FakeIdp;
use codex_store_tests::fixtures::{
    auth_path, expect_ready, parse_token_line, presented_fingerprints, read, sha256sum,
    spawn_refresh_worker, write_auth, Reported,
};
use codex_store_tests::jwt::{access_token, auth_json, id_token, now_unix};
use codex_store_tests::process::Process;
use codex_store_tests::secrets::fingerprint;

const WORKER: &str = env!("CARGO_BIN_EXE_refresh-worker");

const ACCOUNT: &str = "acc-race";
const EMAIL: &str = "race@example.com";
const PLAN: &str = "plus";
const INITIAL_REFRESH_TOKEN: &str = "rt_race_initial";

const PROCESSES: usize = 16;
/// How long the endpoint takes to answer: long enough that the other processes really queue on
/// the store's lock while the one request is in flight.
const ENDPOINT_DELAY: Duration = Duration::from_millis(100);

/// Signed in as [`ACCOUNT`] with [`INITIAL_REFRESH_TOKEN`] and an access token that expired a
/// minute ago: every process finds a refresh due.
fn write_expired_credentials(home: &Path) {
    let text = auth_json(
        &access_token(now_unix() - 60, "expired"),
        INITIAL_REFRESH_TOKEN,
        &id_token(EMAIL, ACCOUNT, PLAN),
        ACCOUNT,
    );
    write_auth(home, text);
}

#[test]
fn sixteen_processes_with_the_same_due_tokens_send_one_request_and_end_with_the_same_token() {
    let started = Instant::now();
    let idp = FakeIdp::start(ACCOUNT, EMAIL, PLAN, INITIAL_REFRESH_TOKEN);
    idp.set_delay(ENDPOINT_DELAY);
    let home = tempfile::tempdir().expect("create a temp CODEX_HOME");
    write_expired_credentials(home.path());
    let before = sha256sum(&auth_path(home.path()));

    let mut workers: Vec<Process> = (0..PROCESSES)
        .map(|_| spawn_refresh_worker(WORKER, "race", home.path(), &idp.url()))
        .collect();
    for worker in &workers {
        expect_ready(worker);
    }
    idp.expect_requests(0, "a worker sent a request before the start signal");
    for worker in &mut workers {
        worker.go();
    }
    let reports: Vec<Reported> = workers
        .iter()
        .map(|w| parse_token_line(w, &w.line("its token")))
        .collect();
    for worker in &mut workers {
        worker.exit_successfully();
    }

    assert_eq!(
        idp.requests(),
        1,
        "{PROCESSES} racing processes must share one refresh request"
    );
    assert_eq!(
        presented_fingerprints(&idp),
        vec![fingerprint(INITIAL_REFRESH_TOKEN)],
        "the one request must redeem the refresh token from the file (fingerprints)"
    );
    let issued = idp
        .last_issued()
        .expect("the endpoint issued no tokens although a request was answered");
    let issued_fp = fingerprint(&issued.access_token);
    for (worker, report) in workers.iter().zip(&reports) {
        assert_eq!(
            report.fingerprint,
            issued_fp,
            "{} ended with another token than the one the endpoint issued (fingerprints)",
            worker.name()
        );
    }

    let after = sha256sum(&auth_path(home.path()));
    assert_ne!(
        after, before,
        "auth.json did not change although the tokens were refreshed"
    );
    let mut generations: Vec<&str> = reports.iter().map(|r| r.generation.as_str()).collect();
    generations.sort_unstable();
    generations.dedup();
    assert_eq!(
        generations,
        vec![after.as_str()],
        "the workers must all report the one generation auth.json now has (its SHA-256)"
    );

    let doc = AuthDotJson::from_json(&read(&auth_path(home.path())))
        .unwrap_or_else(|e| panic!("auth.json does not parse after the race: {e}"));
    let tokens = doc.tokens.expect("auth.json lost its tokens in the race");
    assert_eq!(
        fingerprint(tokens.access_token.expose()),
        issued_fp,
        "auth.json must hold the issued access token (fingerprints)"
    );
    assert_eq!(
        fingerprint(tokens.refresh_token.expose()),
        fingerprint(&issued.refresh_token),
        "auth.json must hold the rotated refresh token (fingerprints)"
    );
    assert!(
        doc.last_refresh.is_some(),
        "auth.json must record last_refresh with the new tokens"
    );
    eprintln!("{PROCESSES} processes raced in {:?}", started.elapsed());
}
