//! The `codex-store` command, subcommand by subcommand and exit code by exit code: `token`,
//! `refresh`, `login --with-api-key`, `logout`, usage errors, and what each leaves on disk.
//! Refreshes go to the in-process fake token endpoint. Every test ends with the leak scan.

use std::fs;
use std::path::Path;

use crate::kit::{
    api_key, api_key_home, api_key_json, assert_no_secret_leaked, auth_path, exit, fingerprint,
    home_with_auth, mode, read_json, register_issued, register_last_issued, run, run_without_home,
    sha256sum, signed_in_home, temp_home, write_file, ChatgptCreds, CliOutput,
};
use codex_store_tests::fake_idp::{Behavior, FakeIdp};
use serde_json::Value;

const URL_ENV: &str = "CODEX_REFRESH_TOKEN_URL_OVERRIDE";

fn stored_token(doc: &Value, name: &str) -> String {
    doc["tokens"][name].as_str().unwrap_or_default().to_owned()
}

fn run_against(idp: &FakeIdp, home: &Path, args: &[&str]) -> CliOutput {
    let url = idp.url();
    let out = run(home, args, None, &[(URL_ENV, url.as_str())]);
    register_last_issued(idp);
    out
}

/// `codex-store login --with-api-key` with `input` on stdin.
fn login_with_api_key(home: &Path, input: &str) -> CliOutput {
    run(home, &["login", "--with-api-key"], Some(input), &[])
}

/// `codex-store ARGS` in a home signed in with `creds` whose endpoint answers as `behavior`;
/// panics with `unchanged` unless auth.json is byte for byte what it was afterwards (credentials
/// are never changed or deleted because a refresh failed). Returns the run and the endpoint.
#[track_caller]
fn run_on_a_failing_endpoint(
    creds: &ChatgptCreds,
    behavior: Behavior,
    args: &[&str],
    unchanged: &str,
) -> (CliOutput, FakeIdp) {
    let (home, path, before, idp) = signed_in_home(creds);
    idp.set_behavior(behavior);
    let out = run_against(&idp, home.path(), args);
    assert_eq!(sha256sum(&path), before, "{unchanged}\n{}", out.describe());
    (out, idp)
}

/// Panics with `why` when `home` holds an auth.json.
#[track_caller]
fn assert_no_auth_json(home: &Path, why: &str) {
    assert!(!auth_path(home).exists(), "{why}");
}

fn refresh_error_body(code: &str) -> String {
    serde_json::json!({"error": {"code": code}}).to_string()
}

// ---------------------------------------------------------------------------------------------
// token
// ---------------------------------------------------------------------------------------------

#[test]
fn token_prints_exactly_the_api_key_and_a_newline_and_nothing_on_stderr() {
    let key = api_key();
    let (home, _) = api_key_home(&key);
    let out = run(home.path(), &["token"], None, &[]);
    out.expect_code(exit::OK, "token with an API key")
        .expect_token(&key, "token with an API key");
    assert!(
        out.stderr.is_empty(),
        "token with an API key wrote to stderr\n{}",
        out.describe()
    );
    assert_no_secret_leaked();
}

#[test]
fn token_prints_a_valid_access_token_without_contacting_the_endpoint() {
    let creds = ChatgptCreds::fresh();
    let (home, _path, _before, idp) = signed_in_home(&creds);
    let out = run_against(&idp, home.path(), &["token"]);
    out.expect_code(exit::OK, "token with a valid access token")
        .expect_token(&creds.access_token, "token with a valid access token");
    idp.expect_requests(0, "a token that is not due must not be refreshed");
    assert_no_secret_leaked();
}

#[test]
fn token_refreshes_an_expired_access_token_once_prints_the_new_one_and_stores_the_rotated_tokens() {
    let creds = ChatgptCreds::expired();
    let (home, path, _before, idp) = signed_in_home(&creds);
    let out = run_against(&idp, home.path(), &["token"]);
    let issued = idp
        .last_issued()
        .unwrap_or_else(|| panic!("the endpoint issued nothing\n{}", out.describe()));
    out.expect_code(exit::OK, "token with an expired access token")
        .expect_token(
            &issued.access_token,
            "token must print the freshly issued access token",
        );
    idp.expect_requests(1, "one token command must send one request");
    let doc = read_json(&path);
    assert!(
        stored_token(&doc, "access_token") == issued.access_token
            && stored_token(&doc, "refresh_token") == issued.refresh_token,
        "auth.json does not hold the issued tokens: access {} (want {}), refresh {} (want {})",
        fingerprint(&stored_token(&doc, "access_token")),
        fingerprint(&issued.access_token),
        fingerprint(&stored_token(&doc, "refresh_token")),
        fingerprint(&issued.refresh_token)
    );
    assert_eq!(
        mode(&path),
        0o600,
        "the refreshed auth.json must stay private"
    );
    assert_no_secret_leaked();
}

#[test]
fn token_without_credentials_exits_3_and_says_to_sign_in() {
    let home = temp_home();
    let out = run(home.path(), &["token"], None, &[]);
    out.expect_code(exit::SIGN_IN_REQUIRED, "token without auth.json");
    out.expect_empty_stdout("token without credentials printed on stdout");
    out.expect_stderr_contains(
        &["not signed in", "hint:"],
        "token without credentials should say it is not signed in, with a hint",
    );
    assert_no_secret_leaked();
}

#[test]
fn token_exits_3_when_the_endpoint_says_the_refresh_token_expired_and_keeps_the_credentials() {
    let (out, idp) = run_on_a_failing_endpoint(
        &ChatgptCreds::expired(),
        Behavior::status(401, refresh_error_body("refresh_token_expired")),
        &["token"],
        "credentials must never be changed or deleted because a refresh failed",
    );
    out.expect_code(
        exit::SIGN_IN_REQUIRED,
        "token when the refresh token expired",
    );
    out.expect_empty_stdout("a failed token command printed on stdout");
    out.expect_stderr_contains(
        &["expired", "sign in"],
        "the message should say the refresh token expired and to sign in again",
    );
    idp.expect_requests(1, "exactly one refresh attempt was expected");
    assert_no_secret_leaked();
}

#[test]
fn token_exits_4_when_the_endpoint_fails_with_500_and_the_access_token_already_expired() {
    let (out, _idp) = run_on_a_failing_endpoint(
        &ChatgptCreds::expired(),
        Behavior::status(500, "{}"),
        &["token"],
        "a transient failure must leave auth.json untouched",
    );
    out.expect_code(exit::TRANSIENT, "token when the endpoint answers 500");
    out.expect_empty_stdout("a failed token command printed on stdout");
    out.expect_stderr_contains(
        &["500", "try again later"],
        "the message should name HTTP 500 and say to try again later",
    );
    assert_no_secret_leaked();
}

#[test]
fn token_prints_the_still_valid_access_token_when_a_due_refresh_fails_transiently() {
    let creds = ChatgptCreds::due_but_valid();
    let (out, idp) = run_on_a_failing_endpoint(
        &creds,
        Behavior::status(503, "{}"),
        &["token"],
        "a 503 must leave auth.json untouched",
    );
    out.expect_code(exit::OK, "token with a due but valid token and a 503")
        .expect_token(
            &creds.access_token,
            "a still valid token must be printed when the refresh fails for now",
        );
    idp.expect_requests(1, "the due token should have been refreshed once");
    assert_no_secret_leaked();
}

#[test]
fn token_and_refresh_exit_6_on_a_cut_off_file_and_leave_it_untouched() {
    let text = ChatgptCreds::fresh().auth_json();
    let (home, path) = home_with_auth(&text[..text.len() / 2], 0o600);
    let before = sha256sum(&path);
    for args in [&["token"][..], &["refresh"][..], &["refresh", "--json"][..]] {
        let out = run(home.path(), args, None, &[]);
        out.expect_code(exit::CORRUPT, "a cut-off auth.json");
        if args.contains(&"--json") {
            // With --json the failure is a JSON document on stdout too (issue 19).
            let report = out.json();
            assert!(
                report["ok"] == false
                    && report["error"]["exit_code"] == exit::CORRUPT
                    && report["error"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("corrupt")),
                "refresh --json must print its failure as JSON on stdout: {}",
                out.describe()
            );
        } else {
            out.expect_empty_stdout("nothing belongs on stdout when the file is corrupt");
        }
        out.expect_stderr_contains(
            &["corrupt", "codex-store inspect"],
            "the message should say the file is corrupt and point at `codex-store inspect`",
        );
        assert_eq!(
            sha256sum(&path),
            before,
            "a corrupt file must be left untouched"
        );
    }
    assert_no_secret_leaked();
}

#[test]
fn a_home_that_is_a_regular_file_exits_1_and_says_it_is_not_a_directory() {
    let dir = temp_home();
    let file = dir.path().join("not-a-dir");
    write_file(&file, "hello", 0o600);
    for args in [&["token"][..], &["refresh"][..], &["logout"][..]] {
        let out = run(&file, args, None, &[]);
        out.expect_code(exit::OTHER, "--home naming a regular file");
        out.expect_stderr_contains(
            &["not a directory"],
            "the message should say the home is not a directory",
        );
    }
    assert_eq!(
        fs::read_to_string(&file).unwrap_or_default(),
        "hello",
        "the regular file given as --home was modified"
    );
    assert_no_secret_leaked();
}

// ---------------------------------------------------------------------------------------------
// usage
// ---------------------------------------------------------------------------------------------

#[test]
fn an_unknown_flag_a_missing_subcommand_and_a_bad_duration_are_usage_errors_with_exit_2() {
    let home = temp_home();
    for args in [
        &["token", "--no-such-flag"][..],
        &["--no-such-flag", "inspect"][..],
        &[][..],
        &["no-such-subcommand"][..],
        &["--lock-timeout", "soon", "token"][..],
    ] {
        let out = run(home.path(), args, None, &[]);
        out.expect_code(exit::USAGE, "a usage error");
        assert!(
            out.stdout.is_empty() && !out.stderr.is_empty(),
            "a usage error belongs on stderr only\n{}",
            out.describe()
        );
    }
    assert_no_auth_json(home.path(), "a usage error created auth.json");
    assert_no_secret_leaked();
}

#[test]
fn login_without_with_api_key_is_a_usage_error_with_exit_2_and_stores_nothing() {
    let home = temp_home();
    let key = api_key();
    let out = run(home.path(), &["login"], Some(&format!("{key}\n")), &[]);
    out.expect_code(exit::USAGE, "login without --with-api-key");
    out.expect_stderr_contains(
        &["--with-api-key"],
        "the usage error should name the missing --with-api-key",
    );
    assert_no_auth_json(home.path(), "login without --with-api-key stored something");
    assert_no_secret_leaked();
}

#[test]
fn help_lists_every_subcommand_and_every_exit_code() {
    let home = temp_home();
    let out = run(home.path(), &["--help"], None, &[]);
    out.expect_code(exit::OK, "--help");
    for word in ["inspect", "token", "refresh", "login", "logout", "--home"] {
        out.expect_stdout_contains(&[word], &format!("--help does not mention {word}"));
    }
    for code in 0..=6 {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{code} "))),
            "--help does not document exit code {code}\n{}",
            out.describe()
        );
    }
    assert_no_secret_leaked();
}

// ---------------------------------------------------------------------------------------------
// refresh
// ---------------------------------------------------------------------------------------------

#[test]
fn refresh_says_refreshed_with_the_generations_before_and_after_as_sha256sum_prints_them() {
    let creds = ChatgptCreds::fresh();
    let (home, path, before, idp) = signed_in_home(&creds);
    let out = run_against(&idp, home.path(), &["refresh"]);
    out.expect_code(exit::OK, "refresh");
    let after = sha256sum(&path);
    assert_ne!(before, after, "a refresh must change auth.json");
    assert!(
        out.stdout
            .lines()
            .next()
            .unwrap_or_default()
            .starts_with("refreshed"),
        "refresh should begin with `refreshed`\n{}",
        out.describe()
    );
    out.expect_stdout_contains(
        &[
            &format!("generation before  {before}"),
            &format!("generation after   {after}"),
        ],
        &format!("refresh should show the generations before ({before}) and after ({after})"),
    );
    idp.expect_requests(1, "an explicit refresh sends one request");
    assert_no_secret_leaked();
}

#[test]
fn refresh_json_reports_the_outcome_and_both_generations() {
    let creds = ChatgptCreds::expired();
    let (home, path, before, idp) = signed_in_home(&creds);
    let out = run_against(&idp, home.path(), &["refresh", "--json"]);
    out.expect_code(exit::OK, "refresh --json");
    let report = out.json();
    assert_eq!(
        report["outcome"],
        "refreshed",
        "wrong outcome\n{}",
        out.describe()
    );
    assert_eq!(
        report["generation_before"].as_str(),
        Some(before.as_str()),
        "generation_before is not the sha256sum of the file before\n{}",
        out.describe()
    );
    assert_eq!(
        report["generation_after"].as_str(),
        Some(sha256sum(&path).as_str()),
        "generation_after is not the sha256sum of the file after\n{}",
        out.describe()
    );
    assert_no_secret_leaked();
}

#[test]
fn refresh_of_an_api_key_says_not_needed_and_leaves_the_file_alone() {
    let (home, path) = api_key_home(&api_key());
    let before = sha256sum(&path);
    let out = run(home.path(), &["refresh"], None, &[]);
    out.expect_code(exit::OK, "refresh with an API key");
    assert!(
        out.stdout.starts_with("not needed"),
        "refresh with an API key should say `not needed`\n{}",
        out.describe()
    );
    out.expect_stdout_contains(
        &[
            &format!("generation before  {before}"),
            &format!("generation after   {before}"),
        ],
        &format!("both generations should be the unchanged file's ({before})"),
    );
    assert_eq!(
        sha256sum(&path),
        before,
        "refresh with an API key changed the file"
    );
    let json = run(home.path(), &["refresh", "--json"], None, &[]);
    json.expect_code(exit::OK, "refresh --json with an API key");
    assert_eq!(
        json.json()["outcome"],
        "not_needed",
        "wrong JSON outcome\n{}",
        json.describe()
    );
    assert_no_secret_leaked();
}

#[test]
fn refresh_without_credentials_exits_3() {
    let home = temp_home();
    let out = run(home.path(), &["refresh"], None, &[]);
    out.expect_code(exit::SIGN_IN_REQUIRED, "refresh without auth.json");
    assert_no_secret_leaked();
}

#[test]
fn refresh_exits_4_on_a_500_and_3_on_a_reused_refresh_token_and_never_touches_the_file() {
    let creds = ChatgptCreds::fresh();
    let (home, path, before, idp) = signed_in_home(&creds);
    idp.set_behavior(Behavior::status(500, "{}"));
    let out = run_against(&idp, home.path(), &["refresh"]);
    out.expect_code(exit::TRANSIENT, "refresh when the endpoint answers 500");
    assert_eq!(sha256sum(&path), before, "a 500 changed auth.json");

    idp.set_behavior(Behavior::Normal);
    let elsewhere = idp.rotate_out_of_band();
    register_issued(&elsewhere);
    let out = run_against(&idp, home.path(), &["refresh"]);
    out.expect_code(
        exit::SIGN_IN_REQUIRED,
        "refresh with a refresh token another client already redeemed",
    );
    out.expect_stderr_contains(
        &["already used"],
        "the message should say the refresh token was already used",
    );
    assert_eq!(
        sha256sum(&path),
        before,
        "a reused refresh token changed auth.json"
    );
    assert_no_secret_leaked();
}

#[test]
fn verbose_and_trace_logging_of_refresh_and_token_never_show_a_secret() {
    let creds = ChatgptCreds::expired();
    let (home, _path, _before, idp) = signed_in_home(&creds);
    let out = run_against(&idp, home.path(), &["-v", "refresh"]);
    out.expect_code(exit::OK, "-v refresh");
    out.expect_stderr_contains(&["refresh"], "-v should log the refresh on stderr");
    // Make the access token due again so that `token` refreshes under trace logging too.
    let expired = creds.with_new_access_token(-3600);
    let path = auth_path(home.path());
    let mut doc = read_json(&path);
    doc["tokens"]["access_token"] = Value::from(expired.access_token.as_str());
    write_file(
        &path,
        serde_json::to_string_pretty(&doc).expect("serialize"),
        0o600,
    );
    let url = idp.url();
    for args in [&["-v", "token"][..], &["refresh", "--json"][..]] {
        let out = run(
            home.path(),
            args,
            None,
            &[(URL_ENV, url.as_str()), ("RUST_LOG", "trace")],
        );
        register_last_issued(&idp);
        out.expect_code(exit::OK, "a refresh under RUST_LOG=trace");
        assert!(
            !out.stderr.is_empty(),
            "RUST_LOG=trace should log on stderr\n{}",
            out.describe()
        );
    }
    idp.expect_requests(3, "three refreshes were expected");
    assert_no_secret_leaked();
}

// ---------------------------------------------------------------------------------------------
// login, logout
// ---------------------------------------------------------------------------------------------

#[test]
fn login_with_api_key_reads_stdin_stores_apikey_mode_in_a_0600_file_and_token_prints_it() {
    let home = temp_home();
    let key = api_key();
    let out = login_with_api_key(home.path(), &format!("{key}\n"));
    out.expect_code(exit::OK, "login --with-api-key");
    let path = auth_path(home.path());
    out.expect_stdout_contains(
        &[&path.display().to_string()],
        "login should say where it stored the key",
    );
    let doc = read_json(&path);
    assert_eq!(doc["auth_mode"], "apikey", "login must store API-key mode");
    assert!(
        doc["OPENAI_API_KEY"].as_str() == Some(key.as_str()),
        "auth.json does not hold the key from stdin (want fingerprint {})",
        fingerprint(&key)
    );
    assert_eq!(mode(&path), 0o600, "a new auth.json must be private");
    let token = run(home.path(), &["token"], None, &[]);
    token
        .expect_code(exit::OK, "token after login")
        .expect_token(&key, "token after login must print the key");
    assert_no_secret_leaked();
}

#[test]
fn login_with_api_key_replaces_chatgpt_credentials() {
    let home = temp_home();
    let creds = ChatgptCreds::fresh();
    let path = creds.write_to(home.path());
    let key = api_key();
    let out = login_with_api_key(home.path(), &key);
    out.expect_code(exit::OK, "login over ChatGPT credentials");
    let doc = read_json(&path);
    assert!(
        doc["auth_mode"] == "apikey" && doc["OPENAI_API_KEY"].as_str() == Some(key.as_str()),
        "login did not replace the ChatGPT credentials with the key"
    );
    assert_no_secret_leaked();
}

#[test]
fn login_with_empty_or_two_keys_on_stdin_exits_1_and_stores_nothing() {
    let home = temp_home();
    let (a, b) = (api_key(), api_key());
    for input in [String::new(), "\n".to_owned(), format!("{a} {b}\n")] {
        let out = login_with_api_key(home.path(), &input);
        out.expect_code(exit::OTHER, "login with no single key on stdin");
        out.expect_stderr_contains(&["hint:"], "a bad key on stdin should come with a hint");
        assert_no_auth_json(home.path(), "a refused login stored something");
    }
    assert_no_secret_leaked();
}

#[test]
fn logout_removes_the_file_and_says_so_then_token_needs_a_sign_in() {
    let home = temp_home();
    let creds = ChatgptCreds::fresh();
    let path = creds.write_to(home.path());
    let out = run(home.path(), &["logout"], None, &[]);
    out.expect_code(exit::OK, "logout");
    out.expect_stdout_contains(
        &["Removed", &path.display().to_string()],
        &format!(
            "logout should say it removed the credentials in {}",
            path.display()
        ),
    );
    assert!(!path.exists(), "logout left auth.json behind");
    run(home.path(), &["token"], None, &[])
        .expect_code(exit::SIGN_IN_REQUIRED, "token after logout");
    assert_no_secret_leaked();
}

#[test]
fn logout_without_a_file_exits_0_and_says_there_was_nothing_to_remove() {
    let home = temp_home();
    let out = run(home.path(), &["logout"], None, &[]);
    out.expect_code(exit::OK, "logout without auth.json");
    out.expect_stdout_contains(
        &["No credentials"],
        "logout without a file should say there was nothing to remove",
    );
    assert_no_auth_json(home.path(), "logout created auth.json");
    assert_no_secret_leaked();
}

#[test]
fn logout_removes_a_corrupt_file() {
    let (home, path) = home_with_auth("{\"OPENAI_API_KEY\": \"sk-cut", 0o600);
    let out = run(home.path(), &["logout"], None, &[]);
    out.expect_code(exit::OK, "logout of a corrupt file");
    assert!(!path.exists(), "logout left the corrupt auth.json behind");
    assert_no_secret_leaked();
}

#[test]
fn login_with_api_key_replaces_a_corrupt_file_as_the_corrupt_error_message_promises() {
    let text = ChatgptCreds::fresh().auth_json();
    let (home, path) = home_with_auth(&text[..text.len() / 2], 0o600);
    // What `token` says about this file: "... it was left untouched: repair it, or sign in again
    // to replace it".
    let token = run(home.path(), &["token"], None, &[]);
    token.expect_code(exit::CORRUPT, "token on a cut-off file");
    token.expect_stderr_contains(
        &["sign in again to replace it"],
        "the corrupt-file message no longer promises that signing in replaces the file",
    );
    let key = api_key();
    let out = login_with_api_key(home.path(), &key);
    out.expect_code(
        exit::OK,
        "signing in with an API key must replace a corrupt auth.json",
    );
    let doc = read_json(&path);
    assert!(
        doc["OPENAI_API_KEY"].as_str() == Some(key.as_str()),
        "after login auth.json should hold the new key (fingerprint {})",
        fingerprint(&key)
    );
    assert_no_secret_leaked();
}

#[test]
fn token_exits_4_when_the_endpoint_answers_429_or_garbage_and_the_access_token_already_expired() {
    for behavior in [Behavior::status(429, "{}"), Behavior::Garbage] {
        let (out, _idp) = run_on_a_failing_endpoint(
            &ChatgptCreds::expired(),
            behavior.clone(),
            &["token"],
            &format!("a transient failure ({behavior:?}) changed auth.json"),
        );
        out.expect_code(
            exit::TRANSIENT,
            &format!("token when the endpoint does {behavior:?}"),
        );
    }
    assert_no_secret_leaked();
}

#[test]
fn a_refresh_answer_without_a_refresh_token_keeps_the_old_one_and_stores_the_new_access_token() {
    let creds = ChatgptCreds::expired();
    let (home, path, _before, idp) = signed_in_home(&creds);
    idp.set_behavior(Behavior::OmitRefreshToken);
    let out = run_against(&idp, home.path(), &["token"]);
    let issued = idp
        .last_issued()
        .unwrap_or_else(|| panic!("the endpoint issued nothing\n{}", out.describe()));
    out.expect_code(exit::OK, "token when the answer omits refresh_token")
        .expect_token(
            &issued.access_token,
            "token must print the new access token",
        );
    let doc = read_json(&path);
    assert!(
        stored_token(&doc, "refresh_token") == creds.refresh_token
            && stored_token(&doc, "access_token") == issued.access_token,
        "auth.json should keep refresh token {} and hold access token {}; it holds {} and {}",
        fingerprint(&creds.refresh_token),
        fingerprint(&issued.access_token),
        fingerprint(&stored_token(&doc, "refresh_token")),
        fingerprint(&stored_token(&doc, "access_token"))
    );
    assert_no_secret_leaked();
}

#[test]
fn a_refresh_keeps_unknown_keys_and_tightens_a_0644_file_to_0600() {
    let home = temp_home();
    let creds = ChatgptCreds::expired();
    let mut doc: Value = serde_json::from_str(&creds.auth_json()).expect("fixture is JSON");
    doc["agent_identity"] = serde_json::json!({"name": "kept", "n": [1, 2, 3]});
    doc["tokens"]["future_field"] = Value::from("kept too");
    let path = auth_path(home.path());
    write_file(
        &path,
        serde_json::to_string_pretty(&doc).expect("serialize"),
        0o644,
    );
    let idp = creds.start_idp();
    run_against(&idp, home.path(), &["token"]).expect_code(exit::OK, "token refreshing");
    idp.expect_requests(1, "one refresh was expected");
    let after = read_json(&path);
    assert_eq!(
        after["agent_identity"], doc["agent_identity"],
        "an unknown top-level key did not survive the refresh"
    );
    assert_eq!(
        after["tokens"]["future_field"], "kept too",
        "an unknown key of tokens did not survive the refresh"
    );
    assert!(
        after["last_refresh"] != doc["last_refresh"] && after["last_refresh"].is_string(),
        "last_refresh must be renewed by a refresh"
    );
    assert_eq!(
        mode(&path),
        0o600,
        "the rewrite should leave auth.json private (inspect promises the next write fixes 0644)"
    );
    assert_no_secret_leaked();
}

#[test]
fn the_home_comes_from_codex_home_else_from_home_dot_codex_and_a_missing_codex_home_exits_1() {
    let dir = temp_home();
    let key = api_key();
    let codex_home = dir.path().join("codex-home");
    fs::create_dir(&codex_home).expect("create CODEX_HOME");
    write_file(&auth_path(&codex_home), api_key_json(&key), 0o600);
    let codex_home_text = codex_home.display().to_string();
    run_without_home(
        &["token"],
        None,
        &[("CODEX_HOME", codex_home_text.as_str())],
    )
    .expect_code(exit::OK, "token with CODEX_HOME")
    .expect_token(&key, "token must read $CODEX_HOME/auth.json");

    let user_home = dir.path().join("user");
    fs::create_dir(&user_home).expect("create HOME");
    let user_home_text = user_home.display().to_string();
    let out = run_without_home(
        &["inspect", "--json"],
        None,
        &[("HOME", user_home_text.as_str())],
    );
    out.expect_code(exit::OK, "inspect with HOME and no CODEX_HOME");
    assert_eq!(
        out.json()["path"].as_str(),
        Some(
            user_home
                .join(".codex")
                .join("auth.json")
                .display()
                .to_string()
                .as_str()
        ),
        "without CODEX_HOME the store is ~/.codex\n{}",
        out.describe()
    );

    let missing = dir.path().join("no-such-dir").display().to_string();
    let out = run_without_home(&["token"], None, &[("CODEX_HOME", missing.as_str())]);
    out.expect_code(exit::OTHER, "token with CODEX_HOME naming no directory");
    out.expect_stderr_contains(
        &["CODEX_HOME", "not an existing directory"],
        "the message should say CODEX_HOME is not an existing directory",
    );
    assert!(
        !dir.path().join("no-such-dir").exists(),
        "a missing CODEX_HOME must not be created"
    );
    assert_no_secret_leaked();
}

#[test]
fn token_exits_3_after_the_reuse_wait_and_the_next_token_run_sends_the_refused_token_no_more() {
    let creds = ChatgptCreds::expired();
    let (home, path, _before, idp) = signed_in_home(&creds);
    let winner = idp.rotate_out_of_band(); // another client redeemed it; no rotation will land
    register_issued(&winner);
    let first = run_against(&idp, home.path(), &["--reuse-wait", "300ms", "token"]);
    first
        .expect_code(
            exit::SIGN_IN_REQUIRED,
            "token on a refresh token redeemed elsewhere",
        )
        .expect_empty_stdout("a refused token run printed a bearer")
        .expect_stderr_contains(&["already used"], "the message should say why");
    let second = run_against(&idp, home.path(), &["--reuse-wait", "300ms", "token"]);
    second.expect_code(exit::SIGN_IN_REQUIRED, "the second token run");
    assert_eq!(
        idp.requests(),
        1,
        "the second run sent the refused refresh token again\n{}",
        second.describe()
    );
    assert_eq!(
        stored_token(&read_json(&path), "refresh_token"),
        creds.refresh_token,
        "a failed refresh changed the stored credentials"
    );
    assert_no_secret_leaked();
}

/// Runs `codex-store --home HOME ARGS` with stdout a pipe whose reading end is already closed,
/// and `stdin` on stdin. Returns the exit code and stderr.
fn run_with_closed_stdout(home: &Path, args: &[&str], stdin: &str) -> (Option<i32>, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    // Close-on-exec, so that no other test's child inherits the writing end; the child's
    // stdout (dup2 onto descriptor 1) is inherited all the same.
    let (read_end, write_end) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .unwrap_or_else(|e| panic!("pipe() failed: {e}"));
    drop(read_end); // every write to stdout now fails with EPIPE
    let mut child = Command::new(crate::kit::codex_store_bin())
        .arg("--home")
        .arg(home)
        .args(args)
        .env(
            "CODEX_REFRESH_TOKEN_URL_OVERRIDE",
            "http://127.0.0.1:9/oauth/token",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start codex-store");
    let mut input = child.stdin.take().expect("stdin");
    let _ = input.write_all(stdin.as_bytes());
    drop(input);
    let out = child
        .wait_with_output()
        .expect("cannot wait for codex-store");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_command_ends_quietly_with_exit_141_when_stdout_is_closed_and_what_it_did_stays_done() {
    let key = api_key();
    let (home, path) = api_key_home(&key);
    for args in [
        &["inspect"][..],
        &["inspect", "--json"],
        &["token"],
        &["refresh"],
    ] {
        let (code, stderr) = run_with_closed_stdout(home.path(), args, "");
        assert_eq!(
            code,
            Some(141),
            "`codex-store {}` with a closed stdout exited {code:?}; stderr: {stderr}",
            args.join(" ")
        );
        assert!(
            stderr.is_empty(),
            "`codex-store {}` with a closed stdout printed to stderr (a panic?): {stderr}",
            args.join(" ")
        );
    }
    let new_key = api_key();
    let (code, stderr) = run_with_closed_stdout(
        home.path(),
        &["login", "--with-api-key"],
        &format!("{new_key}\n"),
    );
    assert_eq!(
        code,
        Some(141),
        "login with a closed stdout exited {code:?}: {stderr}"
    );
    assert!(
        fs::read_to_string(&path)
            .expect("auth.json")
            .contains(&new_key),
        "login stored nothing although it reported only the closed stdout"
    );
    let (code, stderr) = run_with_closed_stdout(home.path(), &["logout"], "");
    assert_eq!(
        code,
        Some(141),
        "logout with a closed stdout exited {code:?}: {stderr}"
    );
    assert!(
        !path.exists(),
        "logout with a closed stdout did not remove the file"
    );
    assert_no_secret_leaked();
}

#[test]
fn login_refuses_an_over_long_key_and_control_characters_and_stores_nothing() {
    let home = temp_home();
    let path = auth_path(home.path());
    let long = format!("sk-{}\n", "a".repeat(70 * 1024));
    for (input, why) in [
        (long.as_str(), "longer than"),
        ("sk-abc\u{0}def\n", "control characters"),
        ("sk-abc\u{1b}[2Jdef\n", "control characters"),
    ] {
        let out = login_with_api_key(home.path(), input);
        out.expect_code(exit::OTHER, "login with a bad key")
            .expect_stderr_contains(&[why, "nothing was stored"], "the message should say why");
        assert!(!path.exists(), "a refused key was stored ({why})");
    }
}
