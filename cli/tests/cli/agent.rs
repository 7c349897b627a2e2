//! `codex-store agent` (issue 10): one refresher per login, so that the other processes only
//! read; and readers with a still-valid token that never wait for a refresh under way.
//!
//! Every test runs the real binary on a temporary home against the fake token endpoint on
//! 127.0.0.1. Orders are made by waiting for the agent's event lines on stderr (each wait is
//! bounded, to turn a hang into a failure), never by sleeping.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::kit::{
    assert_no_secret_leaked, exit, fingerprint, hold_lock, redact, register_issued,
    register_last_issued, run, spawn, ChatgptCreds, CliOutput, Running,
};
use codex_store_tests::fake_idp::{Behavior, FakeIdp};
use codex_store_tests::jwt;
use tempfile::TempDir;

const URL_ENV: &str = "CODEX_REFRESH_TOKEN_URL_OVERRIDE";
/// The lead of the agents in these tests: just above Codex's 5 minutes, so that a token made to
/// expire a few seconds beyond it becomes due for the agent within the test.
const LEAD: &str = "310";
const LEAD_SECS: i64 = 310;
/// The bound on the agent's exit after SIGTERM or SIGINT ("within a second or two").
const STOP: Duration = Duration::from_secs(3);

/// A home signed in with `creds`, and the fake endpoint for them issuing access tokens that live
/// `lifetime` seconds.
fn signed_in(creds: &ChatgptCreds, lifetime: i64) -> (TempDir, FakeIdp) {
    let home = crate::kit::temp_home();
    creds.write_to(home.path());
    let idp = creds.start_idp();
    idp.set_access_token_lifetime(lifetime);
    (home, idp)
}

/// SIGTERM, and the agent must exit 0 within [`STOP`].
fn stop(agent: Running) -> CliOutput {
    signal(&agent, "TERM");
    let out = agent.finish(STOP);
    out.expect_code(exit::OK, "the agent did not stop cleanly");
    out
}

fn start_agent(home: &Path, url: &str, extra: &[&str]) -> Running {
    let mut args = vec!["agent", "--lead", LEAD];
    args.extend_from_slice(extra);
    let agent = spawn(home, &args, None, &[(URL_ENV, url)]);
    // `started:` in text, `"event":"started"` in JSON.
    agent.wait_for_stderr_line("started");
    agent
}

/// Waits until the agent has read auth.json and plans its next refresh (`inspect` shows it
/// waiting), so that a change made after this is a change to it.
fn wait_until_waiting(home: &Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let report = inspect(home);
        if report["agent"]["state"] == "waiting" {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent did not settle into waiting within 20 s: {report}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(agent: &Running, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(agent.id().to_string())
        .status()
        .expect("cannot run kill");
    assert!(status.success(), "kill -{name} {} failed", agent.id());
}

/// `codex-store inspect --json` of `home`.
fn inspect(home: &Path) -> serde_json::Value {
    let out = run(home, &["inspect", "--json"], None, &[]);
    out.expect_code(exit::OK, "inspect failed");
    out.json()
}

/// The names in `home` that are neither auth.json nor one of the store's lock files and its
/// journal: what a stopped agent must not leave behind.
fn leftovers(home: &Path) -> Vec<String> {
    let kept = [
        "auth.json",
        "auth.lock",
        "auth.json.lock",
        "auth.json.refresh.lock",
        "auth.json.agent.lock",
        "auth.json.journal",
    ];
    let mut names: Vec<String> = std::fs::read_dir(home)
        .expect("cannot list the home")
        .map(|e| {
            e.expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| !kept.contains(&n.as_str()))
        .collect();
    names.sort();
    names
}

fn rfc3339_secs(text: &str) -> i64 {
    let time = humantime::parse_rfc3339_weak(text.trim_end_matches('Z'))
        .unwrap_or_else(|e| panic!("{text} is not an RFC 3339 time: {e}"));
    time.duration_since(SystemTime::UNIX_EPOCH)
        .expect("a time after the epoch")
        .as_secs() as i64
}

#[test]
fn a_second_agent_exits_at_once_non_zero_naming_the_pid_of_the_agent_that_runs() {
    let creds = ChatgptCreds::fresh();
    let (home, idp) = signed_in(&creds, 3600);
    let first = start_agent(home.path(), &idp.url(), &[]);

    let second = run(
        home.path(),
        &["agent", "--lead", LEAD],
        None,
        &[(URL_ENV, &idp.url())],
    );
    second.expect_code(
        exit::AGENT_RUNNING,
        "a second agent on one home must refuse to run",
    );
    second.expect_stderr_contains(
        &[
            "another codex-store agent already runs",
            &format!("pid {}", first.id()),
        ],
        "the refusal must name the agent that runs, with its pid",
    );
    let report = inspect(home.path());
    assert_eq!(
        report["agent"]["pid"].as_u64(),
        Some(u64::from(first.id())),
        "inspect does not show the running agent's pid: {report}"
    );
    assert_eq!(idp.requests(), 0, "no agent should refresh a fresh token");
    signal(&first, "TERM");
    first
        .finish(STOP)
        .expect_code(exit::OK, "the first agent did not stop cleanly");
}

#[test]
fn sigterm_and_sigint_stop_the_agent_with_exit_0_leaving_nothing_locked_and_no_temp_file() {
    for name in ["TERM", "INT"] {
        let creds = ChatgptCreds::fresh();
        let (home, idp) = signed_in(&creds, 3600);
        let agent = start_agent(home.path(), &idp.url(), &[]);
        signal(&agent, name);
        let out = agent.finish(STOP);
        out.expect_code(
            exit::OK,
            &format!("SIG{name} must stop the agent with exit 0"),
        );
        out.expect_stderr_contains(&["stopped:"], "the agent must say that it stopped");
        assert_eq!(
            inspect(home.path())["agent"]["running"],
            serde_json::Value::Bool(false),
            "after SIG{name} the agent's claim is still held"
        );
        assert!(
            leftovers(home.path()).is_empty(),
            "after SIG{name} the agent left files behind: {:?}",
            leftovers(home.path())
        );
        // The home is free for the next agent.
        let next = start_agent(home.path(), &idp.url(), &[]);
        signal(&next, "TERM");
        next.finish(STOP)
            .expect_code(exit::OK, "the next agent did not stop cleanly");
    }
}

#[test]
fn the_agent_refreshes_a_lead_time_before_expiry_and_reports_fingerprints_never_tokens() {
    // Due for the agent 3 s from now; for Codex (5 minutes) only 13 s from now.
    let creds = ChatgptCreds::expiring_in(LEAD_SECS + 3);
    let (home, idp) = signed_in(&creds, 3600);
    let agent = start_agent(home.path(), &idp.url(), &[]);
    wait_until_waiting(home.path());
    let before = inspect(home.path());
    assert_eq!(
        idp.requests(),
        0,
        "the agent refreshed before the lead time"
    );
    assert_eq!(
        before["agent"]["state"], "waiting",
        "the agent should be waiting for the due time: {before}"
    );
    let planned =
        rfc3339_secs(before["agent"]["next_refresh"].as_str().unwrap_or_else(|| {
            panic!("inspect shows no next refresh time for the agent: {before}")
        }));
    let expires = jwt::exp_of(&creds.access_token).expect("the access token has an exp");
    assert!(
        (planned - (expires - LEAD_SECS)).abs() <= 1,
        "the agent plans to refresh at {planned}, not the lead time before expiry {}",
        expires - LEAD_SECS
    );

    let line = agent.wait_for_stderr_line("refreshed:");
    assert_eq!(
        idp.requests(),
        1,
        "the agent sent more than one request for one rotation"
    );
    let issued = idp.last_issued().expect("the endpoint issued nothing");
    register_issued(&issued);
    for (what, token) in [
        ("access", &issued.access_token),
        ("refresh", &issued.refresh_token),
    ] {
        assert!(
            line.contains(&fingerprint(token)),
            "the refreshed line does not name the new {what} token's fingerprint: {line}"
        );
    }
    assert_eq!(
        codex_store_tests::codex_sim::refresh_token_on_disk(home.path()).as_deref(),
        Some(issued.refresh_token.as_str()),
        "auth.json does not hold the agent's new refresh token"
    );
    let after = inspect(home.path());
    let next = rfc3339_secs(after["agent"]["next_refresh"].as_str().unwrap_or_else(|| {
        panic!("inspect shows no next refresh time after the refresh: {after}")
    }));
    let new_expiry = jwt::exp_of(&issued.access_token).expect("the new access token has an exp");
    assert!(
        (next - (new_expiry - LEAD_SECS)).abs() <= 1,
        "after the refresh the agent plans {next}, not the lead time before the new expiry"
    );
    stop(agent);
    assert_no_secret_leaked();
}

#[test]
fn the_agent_adopts_what_another_process_writes_without_a_request_and_says_so_in_json() {
    let creds = ChatgptCreds::fresh();
    let (home, idp) = signed_in(&creds, 3600);
    let agent = start_agent(home.path(), &idp.url(), &["--json"]);
    wait_until_waiting(home.path());

    // Another process rotates (out of band) and stores the result.
    let issued = idp.rotate_out_of_band();
    register_issued(&issued);
    let doc = jwt::auth_json(
        &issued.access_token,
        &issued.refresh_token,
        &issued.id_token,
        &creds.account_id,
    );
    crate::kit::write_file(&home.path().join("auth.json"), &doc, 0o600);

    let line = agent.wait_for_stderr_line("\"adopted\"");
    let event: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("the --json line is not JSON ({e}): {}", redact(&line)));
    assert_eq!(event["event"], "adopted", "not an adopted event: {event}");
    assert_eq!(
        event["refresh"].as_str(),
        Some(fingerprint(&issued.refresh_token).as_str()),
        "the adopted event does not name the new refresh token's fingerprint: {event}"
    );
    assert_eq!(
        idp.requests(),
        0,
        "the agent sent a request although it could adopt"
    );
    let out = stop(agent);
    for line in out.stderr.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("with --json, a stderr line is not JSON ({e}): {line}"));
    }
    assert_no_secret_leaked();
}

#[test]
fn a_transient_failure_is_retried_with_backoff_until_the_endpoint_answers() {
    let creds = ChatgptCreds::expiring_in(200);
    let (home, idp) = signed_in(&creds, 3600);
    idp.set_behavior(Behavior::status(
        503,
        r#"{"error":"temporarily_unavailable"}"#,
    ));
    let agent = start_agent(home.path(), &idp.url(), &["--json"]);

    let failed = agent.wait_for_stderr_line("\"failed\"");
    let event: serde_json::Value = serde_json::from_str(&failed)
        .unwrap_or_else(|e| panic!("the --json line is not JSON ({e}): {failed}"));
    assert_eq!(
        event["class"], "transient",
        "not a transient failure: {event}"
    );
    let at = rfc3339_secs(event["at"].as_str().expect("an `at` time"));
    let next = rfc3339_secs(
        event["next_attempt"]
            .as_str()
            .unwrap_or_else(|| panic!("a transient failure must say when it retries: {event}")),
    );
    // The first retry waits 2 s with jitter, drawn from [1 s, 2 s] (times to the second).
    assert!(
        (1..=3).contains(&(next - at)),
        "the first retry is planned {} s after the failure, outside the backoff's band of 1-2 s",
        next - at
    );
    assert_eq!(
        idp.requests(),
        1,
        "the agent retried at once instead of backing off"
    );
    idp.set_behavior(Behavior::Normal);
    agent.wait_for_stderr_line("\"refreshed\"");
    assert_eq!(
        idp.requests(),
        2,
        "one failed attempt and one retry should make two requests"
    );
    stop(agent);
}

#[test]
fn tokens_living_shorter_than_the_lead_are_refreshed_at_half_their_life_not_in_a_loop() {
    // The endpoint issues tokens living 200 s, less than the lead of 310 s: every new token is
    // due for the agent at once.
    let creds = ChatgptCreds::expiring_in(200);
    let (home, idp) = signed_in(&creds, 200);
    let agent = start_agent(home.path(), &idp.url(), &[]);
    agent.wait_for_stderr_line("refreshed:");
    // Its own write has woken it by the time inspect answers; a loop would have sent more.
    let report = inspect(home.path());
    let next = rfc3339_secs(
        report["agent"]["next_refresh"]
            .as_str()
            .unwrap_or_else(|| panic!("inspect shows no next refresh time: {report}")),
    );
    assert!(
        next - jwt::now_unix() >= 90,
        "with 200 s tokens the agent should refresh again at half their life (~100 s), but \
         plans to in {} s",
        next - jwt::now_unix()
    );
    assert_eq!(
        idp.requests(),
        1,
        "the agent refreshed again at once: tokens living shorter than the lead made it loop"
    );
    stop(agent);
}

#[test]
fn sigterm_or_sighup_during_a_slow_answer_saves_the_redeemed_token_before_exiting() {
    for name in ["TERM", "HUP"] {
        let creds = ChatgptCreds::expiring_in(200);
        let (home, idp) = signed_in(&creds, 3600);
        idp.set_delay(Duration::from_secs(2));
        let agent = start_agent(home.path(), &idp.url(), &[]);
        assert!(
            idp.wait_for_requests(1, Duration::from_secs(20)),
            "the agent sent no request for its due token"
        );
        signal(&agent, name);
        let out = agent.finish(Duration::from_secs(15));
        out.expect_code(
            exit::OK,
            &format!("SIG{name} during a request must still exit 0"),
        )
        .expect_stderr_contains(&["stopped"], "the agent must say that it stopped");
        register_last_issued(&idp);
        assert_eq!(
            codex_store_tests::codex_sim::refresh_token_on_disk(home.path()),
            Some(idp.current_refresh_token()),
            "SIG{name}: the agent stopped without saving the token the endpoint had already \
             rotated"
        );
        assert!(
            leftovers(home.path()).is_empty(),
            "SIG{name}: the stopped agent left files behind: {:?}",
            leftovers(home.path())
        );
    }
}

#[test]
fn sigterm_while_another_process_holds_the_refresh_lock_stops_at_once() {
    let store_worker = crate::kit::helper("store-worker");
    let creds = ChatgptCreds::expiring_in(200);
    let (home, idp) = signed_in(&creds, 3600);
    let holder = hold_lock(&store_worker, home.path());
    let agent = start_agent(home.path(), &idp.url(), &[]);
    // An agent finding the refresh lock held waits for the holder's write.
    wait_until_waiting(home.path());
    signal(&agent, "TERM");
    agent.finish(STOP).expect_code(
        exit::OK,
        "the agent must not wait behind another process's lock to stop",
    );
    assert_eq!(
        idp.requests(),
        0,
        "a request was sent while another process held the lock"
    );
    drop(holder);
}

#[test]
fn a_permanent_refusal_is_not_retried_and_a_new_sign_in_resumes_the_agent() {
    let creds = ChatgptCreds::expiring_in(200);
    let (home, idp) = signed_in(&creds, 200);
    idp.set_behavior(Behavior::status(
        401,
        r#"{"error":{"code":"refresh_token_expired"}}"#,
    ));
    let agent = start_agent(home.path(), &idp.url(), &[]);

    let failed = agent.wait_for_stderr_line("failed (sign_in_required)");
    assert!(
        failed.contains("sign in again"),
        "a permanent refusal must tell the user to sign in again: {failed}"
    );
    let report = inspect(home.path());
    assert_eq!(report["agent"]["state"], "refused", "inspect: {report}");
    assert!(
        report["agent"]["next_refresh"].is_null(),
        "a refused agent must not plan another attempt: {report}"
    );
    assert_eq!(idp.requests(), 1, "the refused token was sent again");

    // A new sign-in: new tokens for the account, due for the agent.
    idp.set_behavior(Behavior::Normal);
    let signed_in = idp.rotate_out_of_band();
    register_issued(&signed_in);
    // The sign-in's token is due for the agent; what the agent obtains then lives long.
    idp.set_access_token_lifetime(3600);
    let doc = jwt::auth_json(
        &signed_in.access_token,
        &signed_in.refresh_token,
        &signed_in.id_token,
        &creds.account_id,
    );
    crate::kit::write_file(&home.path().join("auth.json"), &doc, 0o600);
    agent.wait_for_stderr_line("refreshed:");
    assert_eq!(
        idp.requests(),
        2,
        "after the new sign-in the agent should have refreshed exactly once"
    );
    stop(agent);
}

#[test]
fn a_signed_out_agent_idles_and_takes_over_when_a_sign_in_appears() {
    let creds = ChatgptCreds::expiring_in(200);
    let home = crate::kit::temp_home();
    let idp = creds.start_idp();
    idp.set_access_token_lifetime(3600);
    let agent = start_agent(home.path(), &idp.url(), &[]);
    agent.wait_for_stderr_line("idle (signed_out)");
    assert_eq!(
        inspect(home.path())["agent"]["state"],
        "idle",
        "a signed-out agent is not idle"
    );

    creds.write_to(home.path());
    agent.wait_for_stderr_line("refreshed:");
    assert_eq!(
        idp.requests(),
        1,
        "the agent should refresh the new sign-in once"
    );
    stop(agent);
}

#[test]
fn a_lead_of_five_minutes_or_less_is_a_usage_error_naming_codex_s_window() {
    let home = crate::kit::temp_home();
    let out = run(home.path(), &["agent", "--lead", "5m"], None, &[]);
    out.expect_code(exit::USAGE, "a lead of 5 minutes must be refused");
    out.expect_stderr_contains(
        &["does not exceed Codex's own refresh window"],
        "the refusal must say why",
    );
}

#[test]
fn a_due_but_valid_token_is_returned_at_once_while_another_process_refreshes_and_an_expired_one_waits(
) {
    let store_worker = crate::kit::helper("store-worker");
    // Due (within 5 minutes) but valid for 2 more minutes.
    let creds = ChatgptCreds::due_but_valid();
    let (home, idp) = signed_in(&creds, 3600);
    let holder = hold_lock(&store_worker, home.path());
    let out = run(
        home.path(),
        &["token", "--lock-timeout", "30s"],
        None,
        &[(URL_ENV, &idp.url())],
    );
    out.expect_code(
        exit::OK,
        "a valid token must be returned while the refresh lock is held",
    )
    .expect_token(
        &creds.access_token,
        "the still-valid token must be returned as it is",
    );
    assert_eq!(
        idp.requests(),
        0,
        "no request may be sent while another process refreshes"
    );
    drop(holder);

    let expired = ChatgptCreds::expired();
    let home = crate::kit::temp_home();
    expired.write_to(home.path());
    let idp = expired.start_idp();
    let holder = hold_lock(&store_worker, home.path());
    let out = run(
        home.path(),
        &["token", "--lock-timeout", "1s"],
        None,
        &[(URL_ENV, &idp.url())],
    );
    out.expect_code(
        exit::LOCK_TIMEOUT,
        "an expired token must wait for the refresh under way (and time out here)",
    );
    drop(holder);
}

/// The agent's tokens, from its `refreshed:` lines: the refresh and access token fingerprints.
fn agent_rotations(stderr: &str) -> Vec<(String, String)> {
    stderr
        .lines()
        .filter(|l| l.contains("refreshed:"))
        .map(|l| {
            let value = |key: &str| {
                l.split(key)
                    .nth(1)
                    .and_then(|rest| rest.split([',', ' ']).next())
                    .unwrap_or_default()
                    .to_owned()
            };
            (value("refresh "), value("access "))
        })
        .collect()
}

/// What is wrong when the endpoint read requests other than the agent's `rotations` refreshes,
/// or refused one as reused: every request must be the agent's, one per rotation.
fn requests_not_the_agents(idp: &FakeIdp, rotations: usize) -> Vec<String> {
    let mut problems = Vec::new();
    if idp.requests() != rotations || idp.successes() != rotations {
        problems.push(format!(
            "the endpoint read {} request(s) and rotated {} time(s), but the agent refreshed \
             {rotations} time(s): every request must be the agent's, one per rotation",
            idp.requests(),
            idp.successes(),
        ));
    }
    if idp.reuse_refusals() != 0 {
        problems.push(format!("{} reuse refusal(s)", idp.reuse_refusals()));
    }
    problems
}

/// Access tokens issued for `LIFETIME` seconds: the agent (lead 310 s) refreshes 3 s after each
/// issue, a Codex process (5 minutes) would only 13 s after it.
const LIFETIME: i64 = LEAD_SECS + 3;

#[test]
fn codex_processes_living_across_expiries_beside_the_agent_send_nothing_and_end_on_its_tokens() {
    const K: usize = 4;
    let sim = crate::kit::helper("codex-sim");
    // Due for the agent 2 s from now; for Codex 12 s from now, within the processes' lives.
    let creds = ChatgptCreds::expiring_in(LEAD_SECS + 2);
    let (home, idp) = signed_in(&creds, LIFETIME);
    let url = idp.url();
    // The Codex stand-ins start first and hold the initial token, like processes already running.
    let mut sims: Vec<codex_store_tests::process::Process> = (0..K)
        .map(|i| {
            let mut command = Command::new(&sim);
            command
                .args(["--live", "16", "--no-wait"])
                .env("CODEX_HOME", home.path())
                .env(URL_ENV, &url)
                .env_remove("RUST_LOG");
            codex_store_tests::process::Process::spawn_command(
                format!("codex-sim --live #{i}"),
                command,
            )
        })
        .collect();
    for sim in &sims {
        sim.line("read");
    }
    let agent = start_agent(home.path(), &url, &[]);
    let finished: Vec<(Vec<String>, std::process::ExitStatus)> = sims
        .iter_mut()
        .map(|s| {
            let out = s.finish(Duration::from_secs(40));
            (out.lines(), out.status)
        })
        .collect();
    let out = stop(agent);
    let rotations = agent_rotations(&out.stderr);
    let agent_refresh: Vec<&str> = rotations.iter().map(|(r, _)| r.as_str()).collect();

    let mut problems = requests_not_the_agents(&idp, rotations.len());
    if rotations.len() < 2 {
        problems.push(format!(
            "the agent rotated {} time(s) in 16 s; with tokens living {LIFETIME} s and a lead of \
             {LEAD_SECS} s it should have rotated every 3 s",
            rotations.len()
        ));
    }
    for (i, (lines, status)) in finished.iter().enumerate() {
        let requested = lines
            .iter()
            .filter(|l| l.starts_with("requesting "))
            .count();
        let end = lines
            .iter()
            .rev()
            .find(|l| l.starts_with("end "))
            .cloned()
            .unwrap_or_default();
        let rt = end
            .split(' ')
            .find_map(|kv| kv.strip_prefix("rt="))
            .unwrap_or_default();
        let adopted = lines.iter().any(|l| l.starts_with("adopted "));
        if status.code() != Some(codex_store_tests::codex_sim::exit::LIVED)
            || requested != 0
            || !adopted
            || !agent_refresh.contains(&rt)
        {
            problems.push(format!(
                "codex-sim #{i} should live its span without a request, adopting the agent's \
                 tokens when its own became due, and end on one of them ({agent_refresh:?}); it \
                 exited {status} after {requested} request(s): {lines:?}"
            ));
        }
    }
    assert_eq!(
        codex_store_tests::codex_sim::refresh_token_on_disk(home.path()),
        Some(idp.current_refresh_token()),
        "auth.json does not hold the endpoint's live refresh token"
    );
    assert!(
        problems.is_empty(),
        "Codex processes beside the agent:\n- {}\nagent stderr:\n{}",
        problems.join("\n- "),
        redact(&out.stderr)
    );
}

#[test]
fn real_codex_app_servers_living_across_an_expiry_beside_the_agent_send_nothing_and_adopt_its_token(
) {
    use codex_store_tests::real_codex::{codex_binary, AppServer, BackendStub, CodexSetup};
    const K: usize = 3;
    let bin = codex_binary();
    // Due for Codex (5 minutes) 16 s from now, for the agent 6 s from now.
    let creds = ChatgptCreds::expiring_in(300 + 16);
    let (home, idp) = signed_in(&creds, LIFETIME);
    let url = idp.url();
    let backend = BackendStub::start(&creds.account_id, &creds.plan);
    let user_home = crate::kit::temp_home();
    let setup = CodexSetup {
        bin: &bin,
        codex_home: home.path(),
        user_home: user_home.path(),
        token_url: &url,
        backend: &backend,
    };
    let mut codex: Vec<AppServer> = (0..K)
        .map(|i| AppServer::spawn(&setup, &format!("codex #{}", i + 1)))
        .collect();
    // Running before the agent, holding the initial token.
    for server in &mut codex {
        assert_eq!(
            server.access_token().as_deref(),
            Some(creds.access_token.as_str()),
            "{} does not start with the token on disk",
            server.label()
        );
    }
    let agent = start_agent(home.path(), &url, &[]);
    agent.wait_for_stderr_line("refreshed:");
    // Past the initial token's due time for Codex: waiting for the clock, not for a race.
    let codex_due = jwt::exp_of(&creds.access_token).expect("an exp") - 300;
    while jwt::now_unix() <= codex_due {
        std::thread::sleep(Duration::from_millis(200));
    }
    let held: Vec<Option<String>> = codex.iter_mut().map(AppServer::access_token).collect();
    let out = stop(agent);
    let rotations = agent_rotations(&out.stderr);
    let agent_access: Vec<&str> = rotations.iter().map(|(_, a)| a.as_str()).collect();

    let mut problems = requests_not_the_agents(&idp, rotations.len());
    for (server, token) in codex.iter().zip(&held) {
        match token {
            Some(token) if agent_access.contains(&fingerprint(token).as_str()) => {}
            other => problems.push(format!(
                "{} ends with {}, not one of the agent's access tokens {agent_access:?}; \
                 stderr:\n{}",
                server.label(),
                other.as_deref().map_or("no token".to_owned(), fingerprint),
                server.stderr()
            )),
        }
    }
    assert!(
        backend.escapes().is_empty(),
        "Codex tried to reach other hosts: {:?}",
        backend.escapes()
    );
    assert!(
        problems.is_empty(),
        "real Codex beside the agent:\n- {}\nagent stderr:\n{}",
        problems.join("\n- "),
        redact(&out.stderr)
    );
}

#[test]
fn a_fifo_planted_at_the_status_temp_file_neither_hangs_nor_stops_the_agent() {
    let creds = ChatgptCreds::fresh();
    let (home, idp) = signed_in(&creds, 3600);
    let fifo = home.path().join("auth.json.agent.tmp");
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("cannot run mkfifo");
    assert!(made.success(), "mkfifo {} failed", fifo.display());
    let agent = start_agent(home.path(), &idp.url(), &[]);
    wait_until_waiting(home.path());
    stop(agent);
}

#[test]
fn an_error_code_from_the_endpoint_with_control_characters_is_printed_as_one_clean_line() {
    let creds = ChatgptCreds::expired();
    let (home, idp) = signed_in(&creds, 3600);
    let evil = format!(
        r#"{{"error":{{"code":"bad\nforged line\u001b[31m{}"}}}}"#,
        "x".repeat(500)
    );
    idp.set_behavior(Behavior::status(401, evil));
    let out = run(home.path(), &["refresh"], None, &[(URL_ENV, &idp.url())]);
    out.expect_code(
        exit::SIGN_IN_REQUIRED,
        "a 401 is a sign-in-required refusal",
    );
    let error_line = out
        .stderr
        .lines()
        .find(|l| l.contains("error:"))
        .unwrap_or_else(|| panic!("no error line: {}", out.stderr));
    assert!(
        !out.stderr.contains('\u{1b}') && !out.stderr.contains("forged line"),
        "the server's code reached stderr with its control characters: {:?}",
        out.stderr
    );
    assert!(
        error_line.len() < 400,
        "the server's code was not bounded: {} characters",
        error_line.len()
    );
}
