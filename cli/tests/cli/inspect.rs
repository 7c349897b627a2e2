//! `codex-store inspect`: what is on disk, as a report for people and as JSON, without any
//! secret, without waiting for the lock, and with exit 0 whenever a report was produced.

use std::fs;
use std::os::unix::fs::symlink;

use crate::kit::{
    api_key, api_key_home, assert_hides, assert_no_secret_leaked, auth_path, entries, exit,
    fingerprint, hold_lock, home_with_auth, register_issued, register_secret, run, sha256sum,
    signed_in_home, temp_home, unique, write_file, ChatgptCreds, CliOutput,
};
use codex_store_tests::jwt;
use serde_json::Value;

static WORKER: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| crate::kit::helper("store-worker"));

/// The keys `inspect --json` documents (the README lists them all; `history` and `fleet` come
/// only with `--history` and `--fleet`).
const KEYS: [&str; 24] = [
    "format_version",
    "path",
    "link_target",
    "exists",
    "generation",
    "auth_mode",
    "account_id",
    "email",
    "plan_type",
    "access_token_expires_at",
    "last_refresh",
    "refresh_due",
    "file_mode",
    "lock_path",
    "lock_held",
    "unknown_fields",
    "problems",
    "error",
    "user_id",
    "file_size",
    "refresh_lock_held",
    "agent",
    "fingerprints",
    "credentials_store",
];

/// Runs `inspect --json`, checks exit 0 and that every documented key is there with the right
/// JSON type for `problems` and `unknown_fields`.
fn inspect_json(home: &std::path::Path) -> (Value, CliOutput) {
    let out = run(home, &["inspect", "--json"], None, &[]);
    out.expect_code(exit::OK, "inspect --json");
    let report = out.json();
    let object = report
        .as_object()
        .unwrap_or_else(|| panic!("inspect --json is not an object\n{}", out.describe()));
    for key in KEYS {
        assert!(
            object.contains_key(key),
            "inspect --json lacks the key {key}\n{}",
            out.describe()
        );
    }
    assert!(
        is_array_of_strings(&report["problems"]),
        "problems must be an array of strings\n{}",
        out.describe()
    );
    assert!(
        is_array_of_strings(&report["unknown_fields"]),
        "unknown_fields must be an array of names\n{}",
        out.describe()
    );
    assert!(
        report["error"].is_null() || report["error"].is_string(),
        "error must be null or a string\n{}",
        out.describe()
    );
    (report, out)
}

fn is_array_of_strings(value: &Value) -> bool {
    value
        .as_array()
        .is_some_and(|a| a.iter().all(Value::is_string))
}

fn problems(report: &Value) -> Vec<String> {
    report["problems"]
        .as_array()
        .map(|p| {
            p.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn inspect_json_reports_every_documented_key_for_valid_chatgpt_credentials() {
    let creds = ChatgptCreds::fresh();
    let (home, path) = home_with_auth(creds.auth_json(), 0o600);
    let (report, out) = inspect_json(home.path());
    let expect = |key: &str, want: Value| {
        assert_eq!(
            report[key],
            want,
            "inspect --json: wrong {key}\n{}",
            out.describe()
        );
    };
    expect("path", Value::from(path.display().to_string()));
    expect("exists", Value::from(true));
    expect("generation", Value::from(sha256sum(&path)));
    expect("auth_mode", Value::from("chatgpt"));
    expect("account_id", Value::from(creds.account_id.as_str()));
    expect("email", Value::from(creds.email.as_str()));
    expect("plan_type", Value::from(creds.plan.as_str()));
    expect("refresh_due", Value::from(false));
    expect("file_mode", Value::from("0600"));
    expect(
        "lock_path",
        Value::from(home.path().join("auth.json.lock").display().to_string()),
    );
    expect("lock_held", Value::from(false));
    expect("unknown_fields", Value::Array(Vec::new()));
    expect("problems", Value::Array(Vec::new()));
    expect("error", Value::Null);
    for key in ["access_token_expires_at", "last_refresh"] {
        assert!(
            report[key].as_str().is_some_and(|t| t.ends_with('Z')),
            "inspect --json: {key} should be an RFC 3339 UTC time\n{}",
            out.describe()
        );
    }
    assert_no_secret_leaked();
}

#[test]
fn inspect_says_an_expired_access_token_is_due_for_refresh_without_refreshing_it() {
    let (home, path) = home_with_auth(ChatgptCreds::expired().auth_json(), 0o600);
    let before = sha256sum(&path);
    let (report, out) = inspect_json(home.path());
    assert_eq!(
        report["refresh_due"],
        true,
        "an expired access token must be due\n{}",
        out.describe()
    );
    assert_eq!(sha256sum(&path), before, "inspect must never write");
    assert_no_secret_leaked();
}

#[test]
fn inspect_of_an_api_key_reports_apikey_mode_and_no_account() {
    let (home, _) = api_key_home(&api_key());
    let (report, out) = inspect_json(home.path());
    assert!(
        report["auth_mode"] == "apikey"
            && report["account_id"].is_null()
            && report["refresh_due"] == false,
        "wrong report for an API key\n{}",
        out.describe()
    );
    assert_no_secret_leaked();
}

#[test]
fn inspect_shows_fingerprints_of_the_tokens_in_the_human_report_and_never_the_tokens() {
    let creds = ChatgptCreds::fresh();
    let (home, path) = home_with_auth(creds.auth_json(), 0o600);
    let out = run(home.path(), &["inspect"], None, &[]);
    out.expect_code(exit::OK, "inspect");
    for (what, value) in [
        ("access token", &creds.access_token),
        ("refresh token", &creds.refresh_token),
    ] {
        out.expect_stdout_contains(
            &[&fingerprint(value)],
            &format!(
                "inspect should show the {what} fingerprint {}",
                fingerprint(value)
            ),
        );
    }
    for needle in [
        path.display().to_string(),
        creds.email.clone(),
        creds.account_id.clone(),
        sha256sum(&path),
    ] {
        out.expect_stdout_contains(&[&needle], &format!("inspect should show {needle}"));
    }
    assert_no_secret_leaked();
}

#[test]
fn inspect_of_a_missing_file_exits_0_and_says_it_does_not_exist_with_a_null_generation() {
    let home = temp_home();
    let (report, out) = inspect_json(home.path());
    for (key, want) in [
        ("exists", Value::from(false)),
        ("generation", Value::Null),
        ("auth_mode", Value::Null),
        ("file_mode", Value::Null),
        ("lock_held", Value::from(false)),
        ("error", Value::Null),
    ] {
        assert_eq!(
            report[key],
            want,
            "inspect of a missing file: wrong {key}\n{}",
            out.describe()
        );
    }
    assert_eq!(
        entries(home.path()),
        Vec::<String>::new(),
        "inspect created a file"
    );
    let human = run(home.path(), &["inspect"], None, &[]);
    human.expect_code(exit::OK, "inspect of a missing file");
    assert!(
        human
            .stdout
            .lines()
            .any(|l| l.starts_with("exists") && l.ends_with("false")),
        "the human report should say the file does not exist\n{}",
        human.describe()
    );
    assert_no_secret_leaked();
}

#[test]
fn inspect_of_a_cut_off_file_exits_0_with_the_error_set_and_the_generation_of_its_bytes() {
    let text = ChatgptCreds::fresh().auth_json();
    let (home, path) = home_with_auth(&text[..text.len() * 2 / 3], 0o600);
    let (report, out) = inspect_json(home.path());
    assert!(
        report["error"]
            .as_str()
            .is_some_and(|e| e.contains("corrupt")),
        "the error should say the file is corrupt\n{}",
        out.describe()
    );
    assert_eq!(
        report["generation"].as_str(),
        Some(sha256sum(&path).as_str()),
        "the generation of a corrupt file is still the sha256sum of its bytes\n{}",
        out.describe()
    );
    assert_eq!(
        report["exists"],
        true,
        "a corrupt file exists\n{}",
        out.describe()
    );
    let human = run(home.path(), &["inspect"], None, &[]);
    human.expect_code(exit::OK, "inspect (human) of a corrupt file");
    human.expect_stdout_contains(&["corrupt"], "the human report should name the error");
    assert_no_secret_leaked();
}

#[test]
fn inspect_of_a_symlinked_file_shows_the_link_and_its_target_and_reads_the_target() {
    let home = temp_home();
    let elsewhere = home.path().join("real-auth.json");
    let creds = ChatgptCreds::fresh();
    write_file(&elsewhere, creds.auth_json(), 0o600);
    symlink(&elsewhere, auth_path(home.path())).expect("create the symlink");
    let (report, out) = inspect_json(home.path());
    assert_eq!(
        report["link_target"].as_str(),
        Some(elsewhere.to_str().expect("UTF-8 temp path")),
        "the report should name the link's target\n{}",
        out.describe()
    );
    assert!(
        problems(&report)
            .iter()
            .any(|p| p.contains("symbolic link") && p.contains("real-auth.json")),
        "the problems should say what a symbolic link means beside Codex\n{}",
        out.describe()
    );
    assert!(
        report["error"].is_null(),
        "the target should be read through the link\n{}",
        out.describe()
    );
    assert_eq!(
        report["account_id"].as_str(),
        Some(creds.account_id.as_str()),
        "the target's account is not shown\n{}",
        out.describe()
    );
    assert_eq!(
        report["file_mode"], "0600",
        "the mode shown is not the target's"
    );
    assert_no_secret_leaked();
}

#[test]
fn inspect_of_a_0644_file_names_the_mode_among_the_problems() {
    let (home, _) = home_with_auth(ChatgptCreds::fresh().auth_json(), 0o644);
    let (report, out) = inspect_json(home.path());
    assert_eq!(
        report["file_mode"],
        "0644",
        "wrong file_mode\n{}",
        out.describe()
    );
    assert!(
        problems(&report)
            .iter()
            .any(|p| p.contains("0644") && p.contains("chmod 600")),
        "the problems should name mode 0644 and the fix\n{}",
        out.describe()
    );
    assert_eq!(
        report["error"],
        Value::Null,
        "a 0644 file still reads\n{}",
        out.describe()
    );
    assert_no_secret_leaked();
}

#[test]
fn inspect_lists_an_unknown_key_by_name_and_never_shows_its_value() {
    let creds = ChatgptCreds::fresh();
    let value = format!("pat-{}", unique("unknown-value"));
    register_secret(&value);
    let mut doc: Value = serde_json::from_str(&creds.auth_json()).expect("fixture is JSON");
    doc["personal_access_token"] = Value::from(value.as_str());
    doc["tokens"]["future_token_field"] = Value::from(value.as_str());
    let (home, _) = home_with_auth(
        serde_json::to_string_pretty(&doc).expect("serialize"),
        0o600,
    );
    let (report, out) = inspect_json(home.path());
    let names: Vec<&str> = report["unknown_fields"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(
        names.contains(&"personal_access_token") && names.contains(&"tokens.future_token_field"),
        "unknown_fields should list both unknown keys by name, got {names:?}\n{}",
        out.describe()
    );
    let human = run(home.path(), &["inspect"], None, &[]);
    human.expect_code(exit::OK, "inspect with an unknown key");
    human.expect_stdout_contains(
        &["personal_access_token"],
        "the human report should name the unknown key",
    );
    for o in [&out, &human] {
        assert_hides(
            &format!(
                "the output of inspect (the value of an unknown key)\n{}",
                o.describe()
            ),
            &format!("{}\n{}", o.stdout, o.stderr),
            &[&value],
        );
    }
    assert_no_secret_leaked();
}

#[test]
fn inspect_reports_the_lock_held_while_another_process_holds_it_without_waiting() {
    let (home, _) = home_with_auth(ChatgptCreds::fresh().auth_json(), 0o600);
    let mut holder = hold_lock(&WORKER, home.path());
    let (report, out) = inspect_json(home.path());
    assert_eq!(
        report["lock_held"],
        true,
        "lock_held must be true while a child holds the lock\n{}",
        out.describe()
    );
    assert!(
        !out.stderr.contains("waiting for another process"),
        "inspect must not wait for the lock\n{}",
        out.describe()
    );
    holder.close_stdin();
    holder.expect_line("released");
    let (report, out) = inspect_json(home.path());
    assert_eq!(
        report["lock_held"],
        false,
        "lock_held must be false once the holder let go\n{}",
        out.describe()
    );
    assert_no_secret_leaked();
}

#[test]
fn inspect_with_a_home_that_is_a_regular_file_is_refused_like_codex_home_and_leaves_it_alone() {
    let dir = temp_home();
    let file = dir.path().join("plain-file");
    write_file(&file, "x", 0o600);
    let out = run(&file, &["inspect", "--json"], None, &[]);
    out.expect_code(exit::OTHER, "inspect with --home naming a regular file")
        .expect_stderr_contains(
            &["--home", "which is not a directory"],
            "the error should say that the --home is not a directory",
        );
    assert_eq!(
        fs::read_to_string(&file).unwrap_or_default(),
        "x",
        "inspect modified the file given as --home"
    );
    assert_no_secret_leaked();
}

#[test]
fn inspect_infers_bedrock_access_keys_like_codex_and_token_exits_7_naming_the_mode() {
    let secret = unique("aws-secret");
    register_secret(&secret);
    let text = format!(
        r#"{{
  "OPENAI_API_KEY": null,
  "bedrock_access_keys": {{"access_key_id": "AKIAEXAMPLE", "secret_access_key": "{secret}"}}
}}"#
    );
    let (home, _) = home_with_auth(&text, 0o600);
    let (report, _) = inspect_json(home.path());
    assert_eq!(
        report["auth_mode"], "bedrockAccessKeys",
        "bedrock_access_keys was not inferred as Codex 0.171.0 does: {report}"
    );
    let out = run(home.path(), &["token"], None, &[]);
    out.expect_code(exit::UNSUPPORTED_MODE, "token on Bedrock access keys")
        .expect_empty_stdout("token printed something for a mode it does not serve")
        .expect_stderr_contains(
            &["bedrockAccessKeys", "codex"],
            "the message should name the mode and what to use instead",
        );
    assert_no_secret_leaked();
}

#[test]
fn inspect_reports_an_apikey_file_without_a_key_as_a_problem() {
    let (home, _) = home_with_auth(r#"{"auth_mode": "apikey", "OPENAI_API_KEY": null}"#, 0o600);
    let (report, _) = inspect_json(home.path());
    assert!(
        problems(&report).iter().any(|p| p.contains("no API key")),
        "an apikey file without a key is not reported as a problem: {:?}",
        problems(&report)
    );
}

#[test]
fn inspect_history_shows_the_rotation_with_fingerprints_and_escapes_what_the_journal_holds() {
    let creds = ChatgptCreds::expired();
    let (home, _path, _before, idp) = signed_in_home(&creds);
    let url = idp.url();
    run(
        home.path(),
        &["token"],
        None,
        &[("CODEX_REFRESH_TOKEN_URL_OVERRIDE", url.as_str())],
    )
    .expect_code(exit::OK, "token on expired credentials");
    let issued = idp.last_issued().expect("the endpoint issued nothing");
    register_issued(&issued);

    let out = run(home.path(), &["inspect", "--history", "--json"], None, &[]);
    out.expect_code(exit::OK, "inspect --history --json");
    let report = out.json();
    let events: Vec<&str> = report["history"]
        .as_array()
        .unwrap_or_else(|| panic!("no history array: {report}"))
        .iter()
        .filter_map(|r| r["event"].as_str())
        .collect();
    assert_eq!(
        events,
        ["redeeming", "saved"],
        "the history does not tell the rotation: {report}"
    );
    let saved = &report["history"][1];
    assert_eq!(
        saved["new_refresh"].as_str(),
        Some(fingerprint(&issued.refresh_token).as_str()),
        "the saved record does not name the new refresh token's fingerprint"
    );

    // The journal is untrusted: a record carrying escape sequences and a newline must not forge
    // report lines.
    let forged = "{\"at\":\"2026-01-01T00:00:00Z\",\"pid\":1,\"event\":\"adopted\",\"account\":\"x\\u001b[2J\\nproblems              none\"}\n";
    let journal = home.path().join("auth.json.journal");
    let mut text = fs::read_to_string(&journal).expect("no journal after a refresh");
    text.push_str(forged);
    fs::write(&journal, text).expect("append the forged record");
    let out = run(home.path(), &["inspect", "--history"], None, &[]);
    out.expect_code(exit::OK, "inspect --history");
    assert!(
        !out.stdout.contains('\u{1b}'),
        "an escape character from the journal reached the terminal:\n{}",
        out.describe()
    );
    assert_eq!(
        out.stdout
            .lines()
            .filter(|l| l.starts_with("problems"))
            .count(),
        1,
        "a journal record forged a report line:\n{}",
        out.describe()
    );
    assert!(
        out.stdout.contains("saved"),
        "the human history does not show the save:\n{}",
        out.describe()
    );
    assert_no_secret_leaked();
}

#[test]
fn inspect_escapes_control_characters_in_claims_and_key_names_so_nothing_forges_a_report_line() {
    let forged_email = "me@example.com\nproblems              none\u{1b}[2J";
    let id_token = jwt::make_jwt(&serde_json::json!({
        "email": forged_email,
        "https://api.openai.com/auth": {
            "chatgpt_account_id": "acct-1\r\nerror                 -",
            "chatgpt_plan_type": "plus\u{7}"
        }
    }));
    let access = jwt::access_token(jwt::now_unix() + 3600, "at");
    let mut text = jwt::auth_json(&access, "rt_escape_test", &id_token, "acct-1");
    text = text.replacen('{', "{\n  \"evil\\nproblems none\": 1,", 1);
    register_secret(&access);
    register_secret("rt_escape_test");
    let (home, _) = home_with_auth(&text, 0o600);
    let out = run(home.path(), &["inspect"], None, &[]);
    out.expect_code(exit::OK, "inspect of a file with hostile claims");
    for c in ['\u{1b}', '\u{7}', '\r'] {
        assert!(
            !out.stdout.contains(c),
            "a control character {c:?} from the file reached the terminal:\n{}",
            out.describe()
        );
    }
    assert_eq!(
        out.stdout
            .lines()
            .filter(|l| l.starts_with("problems") || l.starts_with("error"))
            .count(),
        2,
        "a claim or key name forged a report line:\n{}",
        out.describe()
    );
    assert_no_secret_leaked();
}

#[test]
fn inspect_prints_apostrophes_and_quotes_as_they_are_escaping_only_control_characters() {
    let (home, _path, _before, _idp) = signed_in_home(&ChatgptCreds::fresh());
    // A FIFO planted at the journal's name: its problem line says "codex-store's".
    codex_store_tests::fixtures::make_fifo(&home.path().join("auth.json.journal"));
    let out = run(home.path(), &["inspect"], None, &[]);
    out.expect_code(exit::OK, "inspect of a home with a planted FIFO");
    assert!(
        out.stdout.contains("codex-store's") && !out.stdout.contains("codex-store\\'s"),
        "an apostrophe must be printed as it is, not escaped:\n{}",
        out.describe()
    );
}
