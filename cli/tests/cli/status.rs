//! `codex-store status`: exit 0 when the login is usable and fresh, else one `problem` line per
//! problem and the exit code of the worst; `--json` on stdout in every case, with its format
//! version. Also: `--json` failures of other commands are JSON on stdout.

use std::path::Path;

use crate::kit::{
    assert_no_secret_leaked, exit, run, signed_in_home, spawn, temp_home, write_file, ChatgptCreds,
    CliOutput,
};
use codex_store_tests::fake_idp::Behavior;
use serde_json::Value;

const URL_ENV: &str = "CODEX_REFRESH_TOKEN_URL_OVERRIDE";

fn status(home: &Path, extra: &[&str]) -> CliOutput {
    let mut args = vec!["status"];
    args.extend_from_slice(extra);
    run(home, &args, None, &[])
}

/// Runs `status` and `status --json`: both exit `code`; the text names `check` on a `problem`
/// line (unless `check` is empty: no problem); the JSON says the same.
#[track_caller]
fn expect_status(home: &Path, extra: &[&str], code: i32, check: &str, why: &str) -> Value {
    let out = status(home, extra);
    out.expect_code(code, why);
    if check.is_empty() {
        out.expect_stdout_contains(&["ok: "], why);
    } else {
        out.expect_stdout_contains(&[&format!("problem ({check}): ")], why);
    }
    let mut json_args = extra.to_vec();
    json_args.push("--json");
    let out = status(home, &json_args);
    out.expect_code(code, why);
    let report = out.json();
    assert_eq!(
        report["format_version"],
        1,
        "status --json must carry its format version: {}",
        out.describe()
    );
    assert_eq!(report["exit_code"], code, "{why}: {}", out.describe());
    assert_eq!(report["ok"], check.is_empty(), "{why}: {}", out.describe());
    if !check.is_empty() {
        let checks: Vec<&str> = report["problems"]
            .as_array()
            .map(|p| p.iter().filter_map(|p| p["check"].as_str()).collect())
            .unwrap_or_default();
        assert!(
            checks.contains(&check),
            "{why}: the JSON problems must name {check}: {}",
            out.describe()
        );
    }
    report
}

#[test]
fn a_fresh_login_is_ok_and_exits_0() {
    let (home, _path, _before, _idp) = signed_in_home(&ChatgptCreds::fresh());
    expect_status(home.path(), &[], exit::OK, "", "a login valid for an hour");
    assert_no_secret_leaked();
}

#[test]
fn no_credentials_exit_3_saying_to_sign_in() {
    let home = temp_home();
    expect_status(
        home.path(),
        &[],
        exit::SIGN_IN_REQUIRED,
        "not_signed_in",
        "a home without auth.json",
    );
}

#[test]
fn a_login_kept_in_the_keyring_is_named_with_the_setting_that_puts_it_back_in_auth_json() {
    for value in ["keyring", "auto"] {
        let home = temp_home();
        write_file(
            &home.path().join("config.toml"),
            format!("model = \"o3\"\ncli_auth_credentials_store = \"{value}\"\n"),
            0o600,
        );
        let report = expect_status(
            home.path(),
            &[],
            exit::SIGN_IN_REQUIRED,
            "login_in_keyring",
            "Codex keeps the login in the keyring",
        );
        let message = report["problems"][0]["message"]
            .as_str()
            .unwrap_or_default();
        assert!(
            message.contains("cli_auth_credentials_store = \\\"file\\\"")
                || message.contains("cli_auth_credentials_store = \"file\""),
            "the problem must name the setting that keeps the login in auth.json: {message}"
        );
        assert_eq!(
            report["credentials_store"], value,
            "the JSON must say where Codex keeps the login"
        );
        // inspect says it as plainly.
        let out = run(home.path(), &["inspect"], None, &[]);
        out.expect_code(exit::OK, "inspect of a keyring home");
        out.expect_stdout_contains(
            &["keyring", "cli_auth_credentials_store"],
            "inspect must say the login is kept in the keyring, not merely 'not signed in'",
        );
        // So does the agent, in its idle line (dropping it kills it).
        let agent = spawn(home.path(), &["agent"], None, &[]);
        let line = agent.wait_for_stderr_line("idle (signed_out)");
        assert!(
            line.contains("keyring") && line.contains("cli_auth_credentials_store"),
            "the agent must say the login is kept in the keyring: {line}"
        );
    }
}

#[test]
fn a_corrupt_auth_json_exits_6_and_inspect_lists_it_under_problems() {
    let home = temp_home();
    write_file(&home.path().join("auth.json"), "{ not json", 0o600);
    expect_status(
        home.path(),
        &[],
        exit::CORRUPT,
        "corrupt",
        "an auth.json that does not parse",
    );
    let out = run(home.path(), &["inspect", "--json"], None, &[]);
    let report = out.json();
    let problems = report["problems"].as_array().cloned().unwrap_or_default();
    assert!(
        !problems.is_empty() && report["format_version"] == 1,
        "inspect --json of a corrupt file must list it under problems, with the format \
         version: {}",
        out.describe()
    );
}

#[test]
fn a_refresh_token_refused_for_good_exits_3() {
    let creds = ChatgptCreds::expired();
    let (home, _path, _before, idp) = signed_in_home(&creds);
    idp.set_behavior(Behavior::status(
        401,
        r#"{"error":{"code":"refresh_token_expired"}}"#,
    ));
    let url = idp.url();
    let out = run(home.path(), &["refresh"], None, &[(URL_ENV, url.as_str())]);
    out.expect_code(exit::SIGN_IN_REQUIRED, "the refresh the endpoint refuses");
    expect_status(
        home.path(),
        &[],
        exit::SIGN_IN_REQUIRED,
        "refresh_refused",
        "a refresh token the journal says was refused",
    );
    assert_no_secret_leaked();
}

#[test]
fn an_expiry_within_fifteen_minutes_without_an_agent_needs_attention_exit_10() {
    let (home, _path, _before, _idp) = signed_in_home(&ChatgptCreds::expiring_in(10 * 60));
    expect_status(
        home.path(),
        &[],
        exit::ATTENTION,
        "expiring_without_agent",
        "a token expiring in 10 minutes with no agent",
    );
}

#[test]
fn an_expired_access_token_needs_attention_exit_10() {
    let (home, _path, _before, _idp) = signed_in_home(&ChatgptCreds::expired());
    expect_status(
        home.path(),
        &[],
        exit::ATTENTION,
        "expired",
        "an expired access token",
    );
}

#[test]
fn an_agent_expected_and_not_running_needs_attention_exit_10() {
    let (home, _path, _before, _idp) = signed_in_home(&ChatgptCreds::fresh());
    expect_status(
        home.path(),
        &["--agent"],
        exit::ATTENTION,
        "agent_not_running",
        "--agent without an agent",
    );
    // The status file of an agent that died says one was expected, without --agent.
    write_file(
        &home.path().join("auth.json.agent"),
        r#"{"pid":999999,"state":"waiting"}"#,
        0o600,
    );
    expect_status(
        home.path(),
        &[],
        exit::ATTENTION,
        "agent_not_running",
        "the status file of a dead agent",
    );
}

#[test]
fn a_rotation_left_over_needs_attention_exit_10() {
    let (home, _path, _before, _idp) = signed_in_home(&ChatgptCreds::fresh());
    write_file(
        &home
            .path()
            .join(format!("{}12345.1", codex_store::ROTATION_PREFIX)),
        "{}",
        0o600,
    );
    expect_status(
        home.path(),
        &[],
        exit::ATTENTION,
        "rotation_left_over",
        "a rotation file left by an interrupted refresh",
    );
}

#[test]
fn an_unreachable_fleet_needs_attention_exit_10() {
    let (home, _path, _before, _idp) = signed_in_home(&ChatgptCreds::fresh());
    // Nothing listens on port 1 of loopback: refused at once.
    expect_status(
        home.path(),
        &["--fleet", "http://127.0.0.1:1"],
        exit::ATTENTION,
        "fleet",
        "a fleet that cannot be reached",
    );
}

#[test]
fn refresh_json_prints_its_failure_as_json_on_stdout() {
    let home = temp_home();
    let out = run(home.path(), &["refresh", "--json"], None, &[]);
    out.expect_code(exit::SIGN_IN_REQUIRED, "refresh --json without credentials");
    let report = out.json();
    assert!(
        report["format_version"] == 1
            && report["ok"] == false
            && report["error"]["exit_code"] == exit::SIGN_IN_REQUIRED
            && report["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("not signed in")),
        "refresh --json must print its failure as JSON on stdout: {}",
        out.describe()
    );
}

#[test]
fn an_auth_json_that_cannot_be_read_exits_1_and_a_missing_home_is_json_too() {
    let home = temp_home();
    codex_store_tests::fixtures::make_fifo(&home.path().join("auth.json"));
    expect_status(
        home.path(),
        &[],
        exit::OTHER,
        "unreadable",
        "an auth.json that is a FIFO",
    );
    let missing = home.path().join("no-such-home");
    let out = crate::kit::run_without_home(
        &["--home", &missing.to_string_lossy(), "status", "--json"],
        None,
        &[],
    );
    let report = out.json();
    assert!(
        report["format_version"] == 1
            && report["ok"] == false
            && report["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("no-such-home")),
        "status --json with a home that does not exist must still print JSON: {}",
        out.describe()
    );
}
