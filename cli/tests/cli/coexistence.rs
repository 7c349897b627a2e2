//! codex-store beside Codex 0.171.0 (issue 7): `codex-sim` processes (tests/src/bin/codex-sim.rs,
//! which send their refresh request before any lock and drop the new tokens when
//! `auth.json.lock` stays busy for 5 s) and `codex-store token` processes refreshing the same
//! expired token on one `CODEX_HOME`, at several endpoint speeds (0.1 s, 2 s, 6 s, and a late
//! winner whose answer arrives after the losers' refusals).
//!
//! What codex-store must guarantee beside Codex (`coexist-design.md`):
//! - the file always ends with the endpoint's live refresh token: no rotation is lost;
//! - no Codex process drops a rotation because codex-store held `auth.json.lock` (no `dropped`);
//! - no `codex-store token` exits 3 (sign-in required) when a good rotation lands on disk within
//!   its wait: it adopts the rotation instead;
//! - codex-store processes on a permanently refused refresh token send one request between them.
//!
//! The order of a race is made by waiting for events (`ready` lines, requests counted by the
//! endpoint), never by sleeping. Tokens appear in messages only as fingerprints.

use std::path::Path;
use std::time::Duration;

use crate::kit::coexist::{race, Endpoint, RaceOutcome, Scenario, Start};
use crate::kit::{assert_no_secret_leaked, exit, shows_a_registered_secret};
use codex_store_tests::codex_sim::Outcome;

static SIM: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| crate::kit::helper("codex-sim"));

/// Runs `scenario` with this package's `codex-sim`.
fn run(scenario: Scenario) -> RaceOutcome {
    race(Path::new(SIM.as_str()), scenario)
}

/// Runs `scenario` and checks the coexistence guarantees ([`assert_coexisted`]); returns the
/// outcome and its description, for the messages of further checks.
#[track_caller]
fn run_coexisting(scenario: Scenario) -> (RaceOutcome, String) {
    let outcome = run(scenario);
    assert_coexisted(&outcome);
    let report = outcome.describe();
    (outcome, report)
}

/// Panics with `why` and the race unless its one `codex-sim` saved its rotation.
#[track_caller]
fn assert_codex_saved(outcome: &RaceOutcome, why: &str, report: &str) {
    assert_eq!(outcome.sims[0].outcome(), Outcome::Saved, "{why}\n{report}");
}

/// The coexistence guarantees for a race in which the endpoint rotates normally: no simulator
/// dropped its tokens, no rotation lost, no codex-store process exited 3 although the rotation
/// landed, every codex-store process printed a token, and no simulator printed a token. Every
/// broken guarantee is named, then the whole race is shown.
#[track_caller]
fn assert_coexisted(outcome: &RaceOutcome) {
    let mut problems = Vec::new();
    let dropped: Vec<&str> = outcome.dropped().iter().map(|s| s.name.as_str()).collect();
    if !dropped.is_empty() {
        problems.push(format!(
            "{} threw away the tokens it had obtained because auth.json.lock stayed busy for \
             5 s: codex-store must never hold that lock across a request",
            dropped.join(" and ")
        ));
    }
    if !outcome.file_holds_live_token() {
        problems.push(format!(
            "a rotation was lost: auth.json ends with refresh token {} but the endpoint's live \
             one is {}, so every client must sign in again",
            outcome.file_fingerprint(),
            outcome.live_fingerprint()
        ));
    }
    let false_exits = outcome.false_sign_in_required().len();
    if false_exits > 0 {
        problems.push(format!(
            "{false_exits} of {} codex-store processes exited 3 (sign-in required) although the \
             endpoint rotated the token{}: they must wait for the good rotation and adopt it",
            outcome.stores.len(),
            if outcome.file_holds_live_token() {
                " and the rotation landed on disk"
            } else {
                ""
            }
        ));
    }
    let other_failures = outcome
        .stores
        .iter()
        .filter(|o| o.code() != Some(exit::OK) && o.code() != Some(exit::SIGN_IN_REQUIRED))
        .count();
    if other_failures > 0 {
        problems.push(format!(
            "{other_failures} codex-store processes failed with another exit code: every one \
             must end with a usable token"
        ));
    }
    let leaks = outcome
        .sims
        .iter()
        .flat_map(|s| &s.lines)
        .filter(|l| shows_a_registered_secret(l))
        .count();
    if leaks > 0 {
        problems.push(format!(
            "codex-sim printed a token instead of its fingerprint in {leaks} line(s)"
        ));
    }
    assert!(
        problems.is_empty(),
        "codex-store did not coexist with Codex:\n- {}\n{}",
        problems.join("\n- "),
        outcome.describe()
    );
}

#[test]
fn codex_and_codex_store_started_at_once_lose_no_rotation_at_fast_and_two_second_endpoints() {
    for delay in [Duration::from_millis(100), Duration::from_secs(2)] {
        run_coexisting(Scenario::new(2, 3, Endpoint::Delayed(delay)));
    }
    assert_no_secret_leaked();
}

#[test]
fn a_codex_rotation_answered_after_six_seconds_is_kept_while_codex_store_processes_race_it() {
    // Every answer takes 6 s and Codex's request is read first, so it wins; codex-store
    // processes redeem the same token meanwhile and are refused after 6 s too. Before issue 7,
    // codex-store held auth.json.lock across its own six-second request, Codex gave up on it
    // after 5 s and dropped the only live refresh token.
    let (outcome, report) = run_coexisting(
        Scenario::new(1, 3, Endpoint::FirstReadWins(Duration::from_secs(6)))
            .starting(Start::SimsFirst),
    );
    assert_codex_saved(
        &outcome,
        "Codex won the race at the endpoint and must have saved its rotation",
        &report,
    );
}

#[test]
fn codex_store_processes_refused_before_a_late_codex_winner_is_answered_adopt_its_rotation() {
    // The endpoint rotates Codex's request on receipt but answers it only after 3 s; codex-store
    // requests sent meanwhile are refused as reused at once, with the good token not yet on disk.
    let (outcome, report) = run_coexisting(
        Scenario::new(1, 3, Endpoint::LateWinner(Duration::from_secs(3)))
            .starting(Start::SimsFirst),
    );
    assert_codex_saved(
        &outcome,
        "Codex was the late winner and must have saved its rotation",
        &report,
    );
    let store_requests = outcome.requests - outcome.sims.len();
    assert!(
        store_requests <= 1,
        "the codex-store processes sent {store_requests} requests between them: once one was \
         refused as reused, the others must wait for the rotation instead of redeeming the dead \
         token again\n{report}"
    );
}

#[test]
fn a_late_codex_store_winner_keeps_its_rotation_while_codex_processes_are_refused() {
    // Now codex-store's request is read first and rotated on receipt; Codex's requests are
    // refused before codex-store's answer arrives. Codex stays stuck (its own limitation), but
    // nothing may be dropped and the file must end with codex-store's rotation.
    let (outcome, report) = run_coexisting(
        Scenario::new(2, 2, Endpoint::LateWinner(Duration::from_secs(3)))
            .starting(Start::StoresFirst),
    );
    assert!(
        outcome.sims.iter().all(|s| s.outcome() != Outcome::Saved),
        "no codex-sim can have won: codex-store's request was rotated first\n{report}"
    );
}

#[test]
fn codex_store_processes_on_a_permanently_refused_refresh_token_send_one_request_between_them() {
    const STORES: usize = 4;
    let outcome = run(Scenario::new(0, STORES, Endpoint::Refusing));
    let report = outcome.describe();
    assert_eq!(
        outcome.requests, 1,
        "{STORES} codex-store processes on a refresh token the endpoint refuses for good \
         (refresh_token_expired) sent {} requests: after the first refusal the others must \
         not redeem it again\n{report}",
        outcome.requests
    );
    for store in &outcome.stores {
        assert_eq!(
            store.code(),
            Some(exit::SIGN_IN_REQUIRED),
            "every codex-store process must report sign-in required (exit 3) for a refused \
             refresh token\n{report}"
        );
    }
    assert!(
        outcome.file_holds_live_token(),
        "a refusal must leave the credentials on disk untouched\n{report}"
    );
}
