//! The conventions people rely on: shell completions and a man page generated from the
//! command-line definition, `NO_COLOR`, a line when the token endpoint is slow, a hint under
//! every error.

use std::process::Command;
use std::time::Duration;

use crate::kit::{exit, run, run_without_home, signed_in_home, temp_home, ChatgptCreds};

const URL_ENV: &str = "CODEX_REFRESH_TOKEN_URL_OVERRIDE";

/// Runs `program args` with `stdin_file` as its input file argument; panics naming the program
/// when it is not installed (tests/run installs it).
fn check_with(program: &str, args: &[&str], why: &str) -> std::process::Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}): {why} needs it; `bash tests/run` installs it")
        })
}

#[test]
fn the_completions_of_bash_zsh_and_fish_parse_in_their_shells() {
    let dir = temp_home();
    for (shell, check) in [
        ("bash", &["-n"][..]),
        ("zsh", &["-n"][..]),
        ("fish", &["--no-execute"][..]),
    ] {
        // No home is needed to print them, not even an existing one.
        let out = run_without_home(
            &["--home", "/nonexistent/home", "completions", shell],
            None,
            &[],
        );
        out.expect_code(exit::OK, "printing completions");
        assert!(
            out.stdout.contains("codex-store") && out.stdout.contains("inspect"),
            "the {shell} completions must name the command and its subcommands: {}",
            out.describe()
        );
        let script = dir.path().join(format!("codex-store.{shell}"));
        std::fs::write(&script, &out.stdout).expect("write the completion script");
        let mut args = check.to_vec();
        let path = script.to_string_lossy().into_owned();
        args.push(&path);
        let parsed = check_with(shell, &args, "the completion check");
        assert!(
            parsed.status.success(),
            "the {shell} completion script does not parse: {}",
            String::from_utf8_lossy(&parsed.stderr)
        );
    }
}

#[test]
fn the_man_page_renders_with_every_subcommand_and_no_warning() {
    let out = run_without_home(&["man"], None, &[]);
    out.expect_code(exit::OK, "printing the man page");
    let dir = temp_home();
    let page = dir.path().join("codex-store.1");
    std::fs::write(&page, &out.stdout).expect("write the man page");
    let rendered = check_with(
        "groff",
        &["-man", "-Tutf8", "-ww", &page.to_string_lossy()],
        "the man page check",
    );
    // grotty emboldens by overstriking (`N\u{8}N`): the character before a backspace goes.
    let mut text = String::new();
    for c in String::from_utf8_lossy(&rendered.stdout).chars() {
        if c == '\u{8}' {
            text.pop();
        } else {
            text.push(c);
        }
    }
    let warnings = String::from_utf8_lossy(&rendered.stderr);
    assert!(
        rendered.status.success() && warnings.trim().is_empty(),
        "groff must render the man page without a warning: {warnings}"
    );
    for needle in [
        "NAME",
        "SYNOPSIS",
        "codex-store",
        "inspect",
        "status",
        "agent",
    ] {
        assert!(
            text.contains(needle),
            "the rendered man page lacks {needle}:\n{text}"
        );
    }
}

/// Runs `codex-store ARGS` on a pseudo-terminal (`script`), where colors would be used, with
/// `envs`; its output.
fn on_a_terminal(args: &str, envs: &[(&str, &str)]) -> String {
    let bin = crate::kit::codex_store_bin();
    let env: Vec<String> = envs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let command = format!("env {} {} {args}", env.join(" "), bin.display());
    let out = check_with(
        "script",
        &["-qec", &command, "/dev/null"],
        "the NO_COLOR check",
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn no_color_keeps_every_output_free_of_escapes_on_a_terminal() {
    let (home, _path, _before, _idp) = signed_in_home(&ChatgptCreds::expired());
    let home = home.path().display().to_string();
    // A refresh that logs (-v) and fails (nothing listens on port 1), and a usage error.
    let refresh = format!("--home {home} -v refresh");
    let envs = [(URL_ENV, "http://127.0.0.1:1/oauth/token")];
    let colored = on_a_terminal(&refresh, &envs);
    assert!(
        colored.contains('\u{1b}'),
        "without NO_COLOR the logs on a terminal are colored (else this test proves nothing): \
         {colored:?}"
    );
    for args in [refresh.as_str(), "--bogus", "inspect --help"] {
        let mut with = envs.to_vec();
        with.push(("NO_COLOR", "1"));
        let plain = on_a_terminal(args, &with);
        assert!(
            !plain.contains('\u{1b}') && !plain.trim().is_empty(),
            "with NO_COLOR, `codex-store {args}` wrote an escape on the terminal: {plain:?}"
        );
    }
}

#[test]
fn a_token_endpoint_that_has_not_answered_within_two_seconds_is_said_on_stderr() {
    let (home, _path, _before, idp) = signed_in_home(&ChatgptCreds::expired());
    idp.set_delay(Duration::from_secs(3));
    let url = idp.url();
    let out = run(home.path(), &["refresh"], None, &[(URL_ENV, url.as_str())]);
    crate::kit::register_last_issued(&idp);
    out.expect_code(exit::OK, "a refresh against a slow endpoint");
    out.expect_stderr_contains(
        &["has not answered within 2 s", "still waiting"],
        "a slow token endpoint must be said while the command waits",
    );
}

#[test]
fn every_error_has_a_hint_line() {
    let home = temp_home();
    let cases: [(&[&str], Option<&str>); 5] = [
        // A usage error of a subcommand points at that subcommand's help.
        (&["agent", "--lead", "1m"], Some("codex-store agent --help")),
        (&["token"], None),
        (&["refresh", "--json"], None),
        (&["login", "--with-api-key"], None),
        (&["fleet", "seed", "--fleet", "http://127.0.0.1:1"], None),
    ];
    for (args, wanted) in cases {
        let out = run(home.path(), args, Some("sk-one\nsk-two\n"), &[]);
        assert!(
            !out.status.success(),
            "`codex-store {}` was expected to fail: {}",
            args.join(" "),
            out.describe()
        );
        let hint = out
            .stderr
            .lines()
            .find(|l| l.starts_with("hint: "))
            .unwrap_or_else(|| {
                panic!(
                    "`codex-store {}` failed without a hint line: {}",
                    args.join(" "),
                    out.describe()
                )
            });
        if let Some(wanted) = wanted {
            assert!(hint.contains(wanted), "the hint must say {wanted}: {hint}");
        }
    }
    // Two keys on two lines are two lines, not "control characters".
    let out = run(
        home.path(),
        &["login", "--with-api-key"],
        Some("sk-one\nsk-two\n"),
        &[],
    );
    out.expect_stderr_contains(&["2 lines"], "two keys on two lines");
}

#[test]
fn an_api_key_replacing_a_chatgpt_login_says_so() {
    let (home, _path, _before, _idp) = signed_in_home(&ChatgptCreds::fresh());
    let out = run(
        home.path(),
        &["login", "--with-api-key"],
        Some("sk-replacing\n"),
        &[],
    );
    out.expect_code(exit::OK, "an API key over a ChatGPT login");
    out.expect_stderr_contains(
        &["replaced the ChatGPT login"],
        "replacing a ChatGPT login must be said",
    );
}

#[test]
fn every_json_line_of_the_agent_carries_the_format_version() {
    let home = temp_home();
    let agent = crate::kit::spawn(home.path(), &["agent", "--json"], None, &[]);
    for event in ["\"started\"", "\"idle\""] {
        let line = agent.wait_for_stderr_line(event);
        let parsed: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert_eq!(
            parsed["format_version"], 1,
            "an agent event in JSON must carry the format version: {line}"
        );
    }
}
