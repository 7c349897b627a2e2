//! The Codex 0.171.0 stand-in, `codex-sim`, on its own: it must do what
//! Codex 0.171.0 was measured to do (strace), or the coexistence tests prove nothing. It sends
//! its request before any lock, takes `auth.lock` then `auth.json.lock`, writes through a renamed
//! `.auth-XXXXXX` in Codex's format, drops its new tokens when `auth.json.lock` stays busy for
//! 5 s, and, racing alone against a late winner, leaves every loser stuck. `--old` writes in
//! place through any lock.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

use crate::kit::coexist::{race, Endpoint, Scenario};
use crate::kit::{
    assert_no_registered_secret, entries_starting_with, fingerprint, mode, register_last_issued,
    signed_in_home, ChatgptCreds, RUN_TIMEOUT,
};
use codex_store_tests::codex_sim::{
    self, refresh_token_on_disk, Outcome, SimOptions, SimRun, STORE_LOCK_PATIENCE, TOKEN_URL_ENV,
};
use codex_store_tests::fake_idp::FakeIdp;
use rustix::fs::FlockOperation;

static SIM: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| crate::kit::helper("codex-sim"));

/// Starts one simulator on `home`, lets it go once it is ready, and returns its run.
fn run_sim(home: &Path, idp: &FakeIdp, options: SimOptions) -> SimRun {
    let mut sim = codex_sim::spawn(Path::new(SIM.as_str()), home, &idp.url(), options);
    sim.wait_for_event("ready");
    sim.go();
    let run = SimRun::from(sim.finish(RUN_TIMEOUT));
    register_last_issued(idp);
    run
}

/// Takes an exclusive `flock` on `home/name` (creating it) in this process, as another process
/// would; released when the file is dropped.
fn hold_flock(home: &Path, name: &str) -> File {
    let path = home.join(name);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let locked = rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive);
    assert_eq!(locked, Ok(()), "the test could not lock {}", path.display());
    file
}

fn assert_no_token_printed(run: &SimRun) {
    for line in &run.lines {
        assert_no_registered_secret(
            &format!(
                "a line of codex-sim (it must print fingerprints, never a token)\n{}",
                run.describe()
            ),
            line,
        );
    }
}

fn temp_files(home: &Path) -> Vec<String> {
    entries_starting_with(home, ".auth-")
}

#[test]
fn a_codex_sim_refreshes_due_tokens_and_leaves_the_file_codex_0_171_writes() {
    let creds = ChatgptCreds::expired();
    let (home, path, _, idp) = signed_in_home(&creds);
    // An unknown key: Codex 0.171.0 rewrites the file with only the keys it knows.
    let mut doc: serde_json::Value =
        serde_json::from_str(&creds.auth_json()).expect("the fixture is JSON");
    doc["unknown_future_key"] = serde_json::json!({"kept": false});
    crate::kit::write_file(
        &path,
        serde_json::to_string_pretty(&doc).expect("serializes"),
        0o600,
    );

    let run = run_sim(home.path(), &idp, SimOptions::default());
    assert_eq!(
        run.outcome(),
        Outcome::Saved,
        "codex-sim should have refreshed and saved\n{}",
        run.describe()
    );
    assert_no_token_printed(&run);
    let order: Vec<&str> = run
        .lines
        .iter()
        .filter_map(|l| l.split(' ').next())
        .filter(|w| ["requesting", "answer", "locked", "saved"].contains(w))
        .collect();
    assert_eq!(
        order,
        ["requesting", "answer", "locked", "locked", "saved"],
        "codex-sim must send its request before taking any lock, then lock twice and save\n{}",
        run.describe()
    );
    let locks: Vec<&String> = run
        .lines
        .iter()
        .filter(|l| l.starts_with("locked "))
        .collect();
    assert!(
        locks[0].starts_with("locked auth.lock ") && locks[1].starts_with("locked auth.json.lock "),
        "the lock order must be auth.lock, then auth.json.lock\n{}",
        run.describe()
    );
    assert_eq!(
        idp.presented_refresh_tokens(),
        vec![creds.refresh_token.clone()],
        "codex-sim must redeem the refresh token of auth.json, once"
    );

    let text = fs::read_to_string(&path).expect("auth.json is readable");
    let written: serde_json::Value = serde_json::from_str(&text).expect("auth.json is JSON");
    let keys: Vec<&str> = written
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        ["auth_mode", "OPENAI_API_KEY", "tokens", "last_refresh"],
        "codex-sim must write only the keys Codex knows, in its order"
    );
    assert!(
        text.starts_with("{\n  \"auth_mode\"") && !text.ends_with('\n'),
        "the file must be pretty-printed with 2 spaces and have no trailing newline"
    );
    let last_refresh = written["last_refresh"].as_str().unwrap_or_default();
    let fraction = last_refresh
        .rsplit_once('.')
        .map_or("", |(_, f)| f.trim_end_matches('Z'));
    assert_eq!(
        fraction.len(),
        9,
        "last_refresh must carry nanoseconds, got {last_refresh:?}"
    );
    assert_eq!(
        refresh_token_on_disk(home.path()).as_deref(),
        Some(idp.current_refresh_token().as_str()),
        "auth.json must hold the rotated refresh token"
    );
    assert_eq!(mode(&path), 0o600, "the renamed temp file must be 0600");
    assert_eq!(
        mode(&home.path().join("auth.lock")),
        0o644,
        "Codex creates auth.lock 0644"
    );
    assert!(
        home.path().join("auth.json.lock").is_file(),
        "codex-sim must have created auth.json.lock"
    );
    assert!(
        temp_files(home.path()).is_empty(),
        "a .auth-XXXXXX temp file was left behind: {:?}",
        temp_files(home.path())
    );

    // codex-store reads what Codex wrote back, without a request.
    let token = crate::kit::run(
        home.path(),
        &["token"],
        None,
        &[(TOKEN_URL_ENV, idp.url().as_str())],
    );
    let issued = idp.last_issued().expect("the endpoint issued tokens");
    token
        .expect_code(0, "codex-store token on the file codex-sim wrote")
        .expect_token(
            &issued.access_token,
            "codex-store must print the access token codex-sim stored",
        );
    idp.expect_requests(1, "codex-store refreshed tokens codex-sim had just stored");
}

#[test]
fn a_codex_sim_whose_tokens_are_not_due_sends_nothing_unless_forced() {
    let creds = ChatgptCreds::fresh();
    let (home, _path, _, idp) = signed_in_home(&creds);
    let mut sim = codex_sim::spawn(
        Path::new(SIM.as_str()),
        home.path(),
        &idp.url(),
        SimOptions::default(),
    );
    sim.wait_for_event("fresh");
    let run = SimRun::from(sim.finish(RUN_TIMEOUT));
    assert_eq!(
        run.outcome(),
        Outcome::NotDue,
        "tokens valid for an hour are not due\n{}",
        run.describe()
    );
    idp.expect_requests(0, "a codex-sim without a due token sent a request");

    let forced = run_sim(
        home.path(),
        &idp,
        SimOptions {
            force: true,
            ..SimOptions::default()
        },
    );
    assert_eq!(
        forced.outcome(),
        Outcome::Saved,
        "--force must refresh tokens that are not due\n{}",
        forced.describe()
    );
    assert!(
        forced
            .lines
            .iter()
            .any(|l| l.starts_with("requesting ") && l.ends_with("reason=forced")),
        "a forced refresh must say refresh_reason forced\n{}",
        forced.describe()
    );
    idp.expect_requests(1, "--force must send exactly one request");
}

#[test]
fn a_codex_sim_drops_its_new_tokens_when_auth_json_lock_stays_busy_for_five_seconds() {
    let creds = ChatgptCreds::expired();
    let (home, _path, _, idp) = signed_in_home(&creds);
    let held = hold_flock(home.path(), "auth.json.lock");

    let run = run_sim(home.path(), &idp, SimOptions::default());
    drop(held);
    assert_eq!(
        run.outcome(),
        Outcome::Dropped,
        "codex-sim must give up on auth.json.lock after 5 s and drop its tokens\n{}",
        run.describe()
    );
    let dropped = run
        .lines
        .iter()
        .find(|l| l.starts_with("dropped "))
        .unwrap_or_else(|| panic!("no `dropped` line\n{}", run.describe()));
    let waited: u128 = dropped
        .split(' ')
        .find_map(|kv| kv.strip_prefix("waited_ms="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("the dropped line has no waited_ms: {dropped}"));
    assert!(
        waited >= STORE_LOCK_PATIENCE.as_millis(),
        "codex-sim dropped its tokens after {waited} ms, before the 5 s Codex waits"
    );
    assert_eq!(
        idp.successes(),
        1,
        "the endpoint should have rotated the token once"
    );
    assert_eq!(
        refresh_token_on_disk(home.path()).as_deref(),
        Some(creds.refresh_token.as_str()),
        "a dropped rotation must leave auth.json untouched"
    );
    assert_ne!(
        idp.current_refresh_token(),
        creds.refresh_token,
        "after a drop the refresh token in auth.json is dead: that is the lost rotation"
    );
}

#[test]
fn an_old_codex_sim_writes_in_place_through_both_locks_without_renaming() {
    let creds = ChatgptCreds::expired();
    let (home, path, _, idp) = signed_in_home(&creds);
    let inode = fs::metadata(&path).expect("stat").ino();
    let outer = hold_flock(home.path(), "auth.lock");
    let inner = hold_flock(home.path(), "auth.json.lock");

    let run = run_sim(
        home.path(),
        &idp,
        SimOptions {
            old: true,
            ..SimOptions::default()
        },
    );
    drop((outer, inner));
    assert_eq!(
        run.outcome(),
        Outcome::Saved,
        "an old codex-sim ignores every lock and saves\n{}",
        run.describe()
    );
    assert!(
        run.has_event("wrote-in-place") && !run.has_event("locked"),
        "an old codex-sim must write in place without locking\n{}",
        run.describe()
    );
    assert_eq!(
        fs::metadata(&path).expect("stat").ino(),
        inode,
        "an old codex-sim must rewrite auth.json in place, not rename a new file over it"
    );
    assert_eq!(
        refresh_token_on_disk(home.path()).as_deref(),
        Some(idp.current_refresh_token().as_str()),
        "auth.json must hold the rotated refresh token"
    );
}

#[test]
fn codex_sims_racing_alone_against_a_late_winner_leave_every_loser_stuck_with_the_good_token_on_disk(
) {
    const SIMS: usize = 3;
    let outcome = race(
        Path::new(SIM.as_str()),
        Scenario::new(SIMS, 0, Endpoint::LateWinner(Duration::from_secs(1))),
    );
    let report = outcome.describe();
    let count = |o: Outcome| outcome.sims.iter().filter(|s| s.outcome() == o).count();
    assert_eq!(
        outcome.requests, SIMS,
        "every codex-sim sends one request\n{report}"
    );
    assert_eq!(
        (count(Outcome::Saved), count(Outcome::Stuck)),
        (1, SIMS - 1),
        "(saved, stuck): one winner, and every loser refused before the winner's answer stays \
         stuck, as the reference says of Codex 0.171.0\n{report}"
    );
    assert_eq!(
        outcome.reuse_refusals,
        SIMS - 1,
        "every loser must have been refused as reused\n{report}"
    );
    assert!(
        outcome.file_holds_live_token(),
        "the winner's tokens must be on disk\n{report}"
    );
    for sim in &outcome.sims {
        assert_no_token_printed(sim);
        assert_eq!(sim.requests(), 1, "a codex-sim sends one request\n{report}");
    }
    let winner = outcome
        .sims
        .iter()
        .find(|s| s.outcome() == Outcome::Saved)
        .expect("a winner was counted above");
    assert_eq!(
        winner.end_value("rt").as_deref(),
        Some(outcome.live_fingerprint().as_str()),
        "the winner's end line must name the live refresh token's fingerprint\n{report}"
    );
    assert_eq!(
        fingerprint(&refresh_token_on_disk(outcome.home.path()).unwrap_or_default()),
        outcome.live_fingerprint(),
        "the file must hold the live token\n{report}"
    );
}
