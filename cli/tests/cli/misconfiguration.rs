//! Configuration mistakes are configuration errors, never outages and never silent: a token URL
//! that answers as no token endpoint does (404, 405, an HTML page) exits 2 naming the URL and
//! the variable it came from, and spends nothing; an empty `CODEX_REFRESH_TOKEN_URL_OVERRIDE`
//! is refused before any request (it never means the real endpoint); a `--home` that does not
//! exist is refused by every command, as `CODEX_HOME` is, and nothing is created there.

use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::Path;

use crate::kit::{
    api_key, assert_no_secret_leaked, auth_path, exit, fingerprint, read_json,
    register_last_issued, run, run_without_home, sha256sum, signed_in_home, temp_home,
    ChatgptCreds, CliOutput,
};
use codex_store_tests::fake_idp::{Behavior, FakeIdp};

const URL_ENV: &str = "CODEX_REFRESH_TOKEN_URL_OVERRIDE";

/// The events of the home's journal (`auth.json.journal`), in order; none without a journal.
fn journal_events(home: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(home.join("auth.json.journal")).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .map(|record| record["event"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Panics with `why` unless the run exited 2 with nothing on stdout, and stderr names `url`
/// (as given), the variable and what the URL is, and does not say "try again later".
#[track_caller]
fn expect_token_url_error(out: &CliOutput, url: &str, why: &str) {
    out.expect_code(exit::USAGE, why)
        .expect_empty_stdout(&format!("{why}: nothing belongs on stdout"))
        .expect_stderr_contains(
            &[url, URL_ENV, "not a token endpoint", "configuration error"],
            &format!(
                "{why}: the message must name the URL, the variable it came from and say it is \
                 a configuration error"
            ),
        );
    assert!(
        !out.stderr.contains("try again later"),
        "{why}: a configuration error was reported as an outage\n{}",
        out.describe()
    );
}

/// Runs `token` against the endpoint with the right URL and `Behavior::Normal`, and panics with
/// `why` unless it succeeds after presenting the refresh token that was on disk before: the
/// failed attempts did not spend it.
#[track_caller]
fn expect_refresh_token_unspent(idp: &FakeIdp, home: &Path, creds: &ChatgptCreds, why: &str) {
    idp.set_behavior(Behavior::Normal);
    let url = idp.url();
    let out = run(home, &["token"], None, &[(URL_ENV, url.as_str())]);
    register_last_issued(idp);
    out.expect_code(exit::OK, why);
    let presented = idp.presented_refresh_tokens();
    assert!(
        presented.last() == Some(&creds.refresh_token),
        "{why}: the last request presented {:?}, not the refresh token on disk before ({})",
        presented.last().map(|t| fingerprint(t)),
        fingerprint(&creds.refresh_token)
    );
    let stored = read_json(&auth_path(home));
    assert!(
        stored["tokens"]["refresh_token"].as_str() != Some(creds.refresh_token.as_str()),
        "{why}: the refresh after the fix did not store a rotated refresh token"
    );
}

#[test]
fn a_token_url_answering_404_with_an_html_page_is_a_configuration_error_naming_the_url_and_the_variable_and_spends_nothing(
) {
    let creds = ChatgptCreds::expired();
    let (home, path, before, idp) = signed_in_home(&creds);
    idp.set_behavior(Behavior::page(
        404,
        "<!doctype html><html><body><h1>404 Not Found</h1></body></html>",
    ));
    let url = idp.url();
    let out = run(home.path(), &["token"], None, &[(URL_ENV, url.as_str())]);
    expect_token_url_error(&out, &url, "token against a URL that answers an HTML 404");
    out.expect_stderr_contains(
        &["404", "HTML"],
        "the message should say what the URL answered",
    );
    idp.expect_requests(1, "the refresh request must be sent once, and not retried");
    assert_eq!(
        sha256sum(&path),
        before,
        "a 404 from the token URL changed auth.json\n{}",
        out.describe()
    );
    let events = journal_events(home.path());
    assert!(
        !events.iter().any(|e| e == "refused"),
        "a 404 was journaled as a refusal, so the refresh token counts as spent: {events:?}"
    );
    expect_refresh_token_unspent(
        &idp,
        home.path(),
        &creds,
        "token with the right URL after the 404",
    );
    assert_no_secret_leaked();
}

#[test]
fn a_mistyped_token_url_path_and_a_405_are_configuration_errors_with_exit_2_not_transient_ones() {
    let creds = ChatgptCreds::expired();
    let (home, path, before, idp) = signed_in_home(&creds);
    // The fake answers 404 {"error":"not_found"} on any other path: no OAuth error code.
    let typo = idp.url().replace("/oauth/token", "/oauth/tokn");
    let out = run(home.path(), &["refresh"], None, &[(URL_ENV, typo.as_str())]);
    expect_token_url_error(&out, &typo, "refresh against a mistyped token URL path");

    idp.set_behavior(Behavior::status(405, ""));
    let url = idp.url();
    let out = run(home.path(), &["token"], None, &[(URL_ENV, url.as_str())]);
    expect_token_url_error(&out, &url, "token against a URL that answers 405");
    out.expect_stderr_contains(&["405"], "the message should say the URL answered 405");

    assert_eq!(
        sha256sum(&path),
        before,
        "a token URL that is no token endpoint changed auth.json"
    );
    expect_refresh_token_unspent(
        &idp,
        home.path(),
        &creds,
        "token with the right URL after the typo and the 405",
    );
    assert_no_secret_leaked();
}

/// A listener that takes the place of a proxy: every request to a non-loopback URL goes to it
/// (through `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`), so that a request meant for the real
/// endpoint never leaves the machine and is seen. Connections queue in its backlog; none is
/// ever answered.
struct ProxyTrap {
    listener: TcpListener,
    url: String,
}

impl ProxyTrap {
    fn new() -> ProxyTrap {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("cannot bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("cannot make the trap non-blocking");
        let port = listener
            .local_addr()
            .expect("a bound listener has an address")
            .port();
        ProxyTrap {
            listener,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// The proxy variables pointing at the trap, both spellings, and no exception.
    fn env(&self) -> Vec<(&'static str, &str)> {
        let mut env = Vec::new();
        for name in [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
            "all_proxy",
        ] {
            env.push((name, self.url.as_str()));
        }
        env.push(("NO_PROXY", ""));
        env.push(("no_proxy", ""));
        env
    }

    /// Whether any process connected to the trap (checked after the process ended: a connection
    /// it opened is in the backlog by then).
    fn was_connected(&self) -> bool {
        match self.listener.accept() {
            Ok(_) => true,
            Err(e) if e.kind() == ErrorKind::WouldBlock => false,
            Err(e) => panic!("cannot check the proxy trap: {e}"),
        }
    }
}

#[test]
fn an_empty_token_url_override_is_an_error_naming_the_variable_and_sends_no_request() {
    for value in ["", "   "] {
        let creds = ChatgptCreds::expired();
        let (home, path, before, idp) = signed_in_home(&creds);
        for args in [&["token"][..], &["refresh"], &["agent"]] {
            let trap = ProxyTrap::new();
            let mut env = trap.env();
            env.push((URL_ENV, value));
            let out = run(home.path(), args, None, &env);
            let why = format!("`{}` with {URL_ENV}={value:?}", args.join(" "));
            out.expect_code(exit::USAGE, &why)
                .expect_empty_stdout(&format!("{why}: nothing belongs on stdout"))
                .expect_stderr_contains(
                    &[URL_ENV, "set but empty"],
                    &format!("{why}: the message must name the variable and say it is empty"),
                );
            assert!(
                !trap.was_connected(),
                "{why}: a request left for the real token endpoint\n{}",
                out.describe()
            );
            idp.expect_requests(0, &why);
            assert_eq!(
                sha256sum(&path),
                before,
                "{why}: auth.json changed\n{}",
                out.describe()
            );
        }
    }
    assert_no_secret_leaked();
}

#[test]
fn a_home_given_with_home_that_does_not_exist_is_refused_by_every_command_as_codex_home_is_and_nothing_is_created(
) {
    let dir = temp_home();
    let typo = dir.path().join("typo");
    let missing = typo.join("codex");
    let missing_text = missing.display().to_string();
    let key = api_key();
    let commands: [(&[&str], Option<&str>); 8] = [
        (&["token"], None),
        (&["logout"], None),
        (&["refresh"], None),
        (&["refresh", "--json"], None),
        (&["inspect"], None),
        (&["inspect", "--json", "--history"], None),
        (&["agent"], None),
        (&["login", "--with-api-key"], Some(key.as_str())),
    ];
    for (args, stdin) in commands {
        let why = format!("`codex-store --home {missing_text} {}`", args.join(" "));
        let out = run(&missing, args, stdin, &[]);
        out.expect_code(exit::OTHER, &why);
        if args.contains(&"--json") {
            // With --json the failure is a JSON document on stdout too (issue 19).
            let report = out.json();
            assert!(
                report["ok"] == false
                    && report["error"]["exit_code"] == exit::OTHER
                    && report["error"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains(&missing_text)),
                "{why}: the failure must be JSON on stdout, naming the path: {}",
                out.describe()
            );
        } else {
            out.expect_empty_stdout(&format!("{why}: nothing belongs on stdout"));
        }
        out.expect_stderr_contains(
            &["--home", &missing_text, "not an existing directory"],
            &format!("{why}: the message must name --home, the path, and what is wrong"),
        );
        assert!(
            !typo.exists(),
            "{why} created {} (or a part of it)",
            missing.display()
        );
        let via_env = run_without_home(args, stdin, &[("CODEX_HOME", missing_text.as_str())]);
        assert_eq!(
            via_env.code(),
            out.code(),
            "{why}: --home and CODEX_HOME naming the same missing directory exit differently\n{}",
            via_env.describe()
        );
    }
    // The default home is still created by the first login.
    let user_home = dir.path().join("user");
    std::fs::create_dir(&user_home).expect("cannot create the user's home");
    let user_home_text = user_home.display().to_string();
    let out = run_without_home(
        &["login", "--with-api-key"],
        Some(&key),
        &[("HOME", user_home_text.as_str())],
    );
    out.expect_code(exit::OK, "login into a ~/.codex that does not exist yet");
    assert!(
        auth_path(&user_home.join(".codex")).is_file(),
        "login did not create ~/.codex with its auth.json\n{}",
        out.describe()
    );
    assert_no_secret_leaked();
}
