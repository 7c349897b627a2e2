//! The command's side of the agent's token broker (issue 21): `agent --serve [ADDR]` binds a
//! loopback address before the agent starts and publishes its URL (`inspect`, `status`);
//! `env` prints the line that points Codex at it; `exec` runs a command with the variable only
//! while a broker answers `GET /health`, so that a stopped agent never leaves Codex unable to
//! refresh.
//!
//! A broker is stood in for by the kit's HTTP server on 127.0.0.1 answering `/health`; a
//! closed port is one the test bound and closed. No test sends anything beyond loopback.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use codex_store::{AgentState, AgentStatus, Store};
use codex_store_tests::http::{Response, Server, ServerOptions};
use codex_store_tests::process::{Finished, Process};

use crate::kit::{
    exit, run, spawn, temp_home, ChatgptCreds, CliOutput, CODEX_STORE, RUN_TIMEOUT, SCRUBBED_ENV,
};

const URL_ENV: &str = "CODEX_REFRESH_TOKEN_URL_OVERRIDE";
const DEFAULT_URL: &str = "http://127.0.0.1:14550/oauth/token";
/// Prints the variable as the command sees it, or `unset`.
const PRINT_URL: &str = r#"printf %s "${CODEX_REFRESH_TOKEN_URL_OVERRIDE-unset}""#;

/// `codex-store --home HOME ARGS...` with the token URL variable `url` (`None`: unset), every
/// other variable the kit scrubs removed. (The kit's runner always sets the variable.)
fn with_url(home: &Path, args: &[&str], url: Option<&str>) -> Finished {
    let mut command = Command::new(CODEX_STORE);
    command.arg("--home").arg(home).args(args);
    for name in SCRUBBED_ENV {
        command.env_remove(name);
    }
    if let Some(url) = url {
        command.env(URL_ENV, url);
    }
    let name = format!("`codex-store {}` ({URL_ENV}={url:?})", args.join(" "));
    Process::spawn_command(name, command)
        .with_event_timeout(RUN_TIMEOUT)
        .finish(RUN_TIMEOUT)
}

fn describe(out: &Finished) -> String {
    format!(
        "{} exited {}\n--- stdout ---\n{}--- stderr ---\n{}--------------",
        out.name, out.status, out.stdout, out.stderr
    )
}

/// `exec --addr ADDR -- sh -c PRINT_URL`.
fn exec_printing_the_url(home: &Path, addr: &str, url: Option<&str>) -> Finished {
    with_url(
        home,
        &["exec", "--addr", addr, "--", "sh", "-c", PRINT_URL],
        url,
    )
}

/// A loopback address where nothing listens: a port bound and closed again.
fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("cannot bind 127.0.0.1:0");
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    drop(listener);
    addr.to_string()
}

/// A stand-in broker answering `GET /health` with `status` and `body`; the paths it was asked.
fn health_endpoint(status: u16, body: &'static str) -> (Server, Arc<Mutex<Vec<String>>>) {
    let asked = Arc::new(Mutex::new(Vec::new()));
    let seen = asked.clone();
    let server = Server::start(
        ServerOptions {
            name: "broker-health",
            keep_alive: false,
            max_body: 1024,
        },
        move |request| {
            seen.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(format!("{} {}", request.method, request.path));
            Some(Response::json(status, body))
        },
    );
    (server, asked)
}

/// The warning lines of stderr.
fn warnings(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("codex-store: warning:"))
        .collect()
}

#[test]
fn env_prints_the_export_line_the_fish_line_and_a_versioned_json_document() {
    let home = temp_home();
    let out = run(home.path(), &["env"], None, &[]);
    out.expect_code(exit::OK, "`env`");
    assert_eq!(
        out.stdout,
        format!("export {URL_ENV}={DEFAULT_URL}\n"),
        "`env` must print the sh line for the default broker, and nothing else\n{}",
        out.describe()
    );
    let out = run(home.path(), &["env", "--shell", "fish"], None, &[]);
    out.expect_code(exit::OK, "`env --shell fish`");
    assert_eq!(
        out.stdout,
        format!("set -gx {URL_ENV} {DEFAULT_URL}\n"),
        "`env --shell fish` must print fish's line\n{}",
        out.describe()
    );
    let out = run(
        home.path(),
        &["env", "--json", "--addr", "127.0.0.1:14551"],
        None,
        &[],
    );
    out.expect_code(exit::OK, "`env --json --addr`");
    let doc = out.json();
    let url = "http://127.0.0.1:14551/oauth/token";
    for (key, want) in [
        ("format_version", serde_json::json!(1)),
        ("variable", serde_json::json!(URL_ENV)),
        ("value", serde_json::json!(url)),
        ("shell", serde_json::json!("sh")),
        ("line", serde_json::json!(format!("export {URL_ENV}={url}"))),
        ("source", serde_json::json!("addr")),
    ] {
        assert_eq!(doc[key], want, "`env --json`: {key} is wrong in {doc}");
    }
}

#[test]
fn env_warns_on_stderr_when_no_broker_answers_where_its_line_points() {
    let home = temp_home();
    let addr = closed_port();
    let out = run(home.path(), &["env", "--addr", &addr], None, &[]);
    out.expect_code(exit::OK, "`env` with no broker answering");
    let printed = warnings(&out.stderr);
    assert!(
        printed.len() == 1
            && printed[0].contains("no token broker answers")
            && printed[0].contains(&addr)
            && printed[0].contains("codex-store exec"),
        "`env` must say in one warning that nothing answers at {addr} and what is safer\n{}",
        out.describe()
    );
    let (server, _asked) = health_endpoint(200, r#"{"ok":true}"#);
    let out = run(
        home.path(),
        &["env", "--addr", &server.addr().to_string()],
        None,
        &[],
    );
    out.expect_code(exit::OK, "`env` with a broker answering");
    assert!(
        warnings(&out.stderr).is_empty(),
        "`env` must not warn while a broker answers\n{}",
        out.describe()
    );
}

#[test]
fn exec_without_a_broker_runs_the_command_without_the_variable_and_says_why_in_one_warning() {
    let home = temp_home();
    let addr = closed_port();
    let broker_url = format!("http://{addr}/oauth/token");
    // Unset, and set to the broker's own URL (a profile line from `env`): both go.
    for url in [None, Some(broker_url.as_str())] {
        let out = exec_printing_the_url(home.path(), &addr, url);
        assert_eq!(
            (out.status.code(), out.stdout.as_str()),
            (Some(exit::OK), "unset"),
            "with no broker, the command must run without {URL_ENV}\n{}",
            describe(&out)
        );
        let printed = warnings(&out.stderr);
        assert!(
            printed.len() == 1
                && printed[0].contains(&broker_url)
                && printed[0].contains("nothing listens")
                && printed[0].contains("agent --serve"),
            "one warning must name the broker, why it did not answer, and how to start one\n{}",
            describe(&out)
        );
    }
}

#[test]
fn exec_with_a_broker_answering_health_runs_the_command_with_the_variable_naming_it() {
    let home = temp_home();
    let (server, asked) = health_endpoint(200, r#"{"ok":true}"#);
    let addr = server.addr().to_string();
    let out = exec_printing_the_url(home.path(), &addr, None);
    let want = format!("http://{addr}/oauth/token");
    assert_eq!(
        (out.status.code(), out.stdout.as_str()),
        (Some(exit::OK), want.as_str()),
        "with a broker answering, the command must run with {URL_ENV} naming it\n{}",
        describe(&out)
    );
    assert!(
        out.stderr.is_empty(),
        "a broker answering is nothing to warn about\n{}",
        describe(&out)
    );
    assert_eq!(
        asked.lock().unwrap_or_else(|e| e.into_inner()).as_slice(),
        ["GET /health".to_owned()],
        "exec must have asked the broker's health, once"
    );
}

#[test]
fn exec_takes_only_a_brokers_health_answer_for_one_and_runs_without_the_variable_otherwise() {
    let home = temp_home();
    for (status, body, why) in [
        (404, r#"{"error":"not found"}"#, "404"),
        (200, r#"{"ok":false}"#, "not a broker"),
    ] {
        let (server, _asked) = health_endpoint(status, body);
        let out = exec_printing_the_url(home.path(), &server.addr().to_string(), None);
        assert_eq!(
            out.stdout,
            "unset",
            "an endpoint answering {status} {body} is no broker: the command must run without \
             {URL_ENV}\n{}",
            describe(&out)
        );
        assert!(
            warnings(&out.stderr).iter().any(|w| w.contains(why)),
            "the warning must say what the endpoint answered ({why})\n{}",
            describe(&out)
        );
    }
}

#[test]
fn exec_keeps_a_variable_set_to_another_endpoint_and_warns_that_it_did() {
    let home = temp_home();
    let (server, asked) = health_endpoint(200, r#"{"ok":true}"#);
    let chosen = "http://127.0.0.1:9/someone-elses/token";
    let out = exec_printing_the_url(home.path(), &server.addr().to_string(), Some(chosen));
    assert_eq!(
        out.stdout,
        chosen,
        "a variable the user set to another endpoint must reach the command as it was\n{}",
        describe(&out)
    );
    let printed = warnings(&out.stderr);
    assert!(
        printed.len() == 1 && printed[0].contains("already set") && printed[0].contains(chosen),
        "one warning must say that the variable was kept, naming it\n{}",
        describe(&out)
    );
    assert!(
        asked.lock().unwrap_or_else(|e| e.into_inner()).is_empty(),
        "with the user's own endpoint there is no broker to ask"
    );
}

#[test]
fn exec_of_a_missing_command_exits_127_and_of_a_file_that_is_no_program_126_as_a_shell_does() {
    let home = temp_home();
    let addr = closed_port();
    let not_a_program = home.path().join("notes.txt");
    std::fs::write(&not_a_program, "not a program\n").expect("cannot write the file");
    let not_a_program = not_a_program.to_string_lossy().into_owned();
    for (command, code, why) in [
        ("codex-store-test-no-such-command", 127, "command not found"),
        (not_a_program.as_str(), 126, "ermission denied"),
    ] {
        let out = with_url(home.path(), &["exec", "--addr", &addr, "--", command], None);
        assert_eq!(
            out.status.code(),
            Some(code),
            "`exec -- {command}` must exit {code}\n{}",
            describe(&out)
        );
        assert!(
            out.stderr.contains(why)
                && out.stderr.contains(command)
                && out.stderr.lines().any(|l| l.starts_with("hint: ")),
            "the error must name the command, say {why:?}, and have a hint\n{}",
            describe(&out)
        );
    }
}

#[test]
fn agent_serve_on_an_address_that_is_not_loopback_is_a_usage_error_naming_loopback() {
    let home = temp_home();
    for args in [
        &["agent", "--serve", "0.0.0.0:1"][..],
        &["env", "--addr", "0.0.0.0:1"],
        &["exec", "--addr", "0.0.0.0:1", "--", "true"],
    ] {
        let out = run(home.path(), args, None, &[]);
        out.expect_code(exit::USAGE, "a broker address that is not loopback");
        out.expect_stderr_contains(
            &["0.0.0.0:1", "not a loopback address", "hint: "],
            "the usage error must name the address, say loopback, and have a hint",
        );
    }
    assert!(
        !home.path().join("auth.json.agent").exists(),
        "an agent refused for its --serve must not have claimed the home"
    );
}

#[test]
fn agent_serve_on_a_taken_port_fails_naming_the_address_before_it_claims_the_home() {
    let home = temp_home();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("cannot bind 127.0.0.1:0");
    let addr = taken.local_addr().expect("an address").to_string();
    let out = run(home.path(), &["agent", "--serve", &addr], None, &[]);
    out.expect_code(
        exit::OTHER,
        "`agent --serve` on a port another process listens on",
    );
    out.expect_stderr_contains(
        &[
            addr.as_str(),
            "another process listens there",
            "hint: ",
            "--serve",
        ],
        "the error must name the address and say what to do",
    );
    assert!(
        !out.stderr.contains("started"),
        "the agent must fail before it starts\n{}",
        out.describe()
    );
    assert!(
        !home.path().join("auth.json.agent").exists(),
        "an agent that cannot listen must not have claimed the home"
    );
}

/// The agent's broker URL as `inspect --json` shows it.
pub(crate) fn published_broker(home: &Path) -> String {
    let report = run(home, &["inspect", "--json"], None, &[]);
    report.expect_code(exit::OK, "inspect beside the agent");
    report.json()["agent"]["broker"]
        .as_str()
        .unwrap_or_else(|| panic!("the agent published no broker\n{}", report.describe()))
        .to_owned()
}

fn expect_ok(out: &CliOutput, why: &str) {
    out.expect_code(exit::OK, why);
}

/// Panics unless `url` is a broker URL on a port of 127.0.0.1 other than 0: an agent asked to
/// serve on port 0 publishes the port it got.
#[track_caller]
pub(crate) fn assert_published_port(url: &str) {
    let port = url
        .strip_prefix("http://127.0.0.1:")
        .and_then(|rest| rest.strip_suffix("/oauth/token"))
        .and_then(|port| port.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("the published broker {url:?} is not the URL of a port"));
    assert_ne!(port, 0, "the agent must publish the port it got, not 0");
}

#[test]
fn the_agents_broker_url_is_shown_by_inspect_and_status_and_used_by_env() {
    let home = temp_home();
    ChatgptCreds::fresh().write_to(home.path());
    let agent = spawn(home.path(), &["agent", "--serve", "127.0.0.1:0"], None, &[]);
    agent.wait_for_stderr_line("started");
    let url = published_broker(home.path());
    assert_published_port(&url);

    let inspect = run(home.path(), &["inspect"], None, &[]);
    expect_ok(&inspect, "inspect");
    inspect.expect_stdout_contains(
        &[format!("token broker {url}").as_str()],
        "inspect's agent line must name the broker",
    );
    let status = run(home.path(), &["status", "--agent"], None, &[]);
    expect_ok(&status, "status --agent with an agent serving");
    status.expect_stdout_contains(
        &[format!("serves the token broker at {url}").as_str()],
        "status --agent must name the broker",
    );
    let status = run(home.path(), &["status", "--agent", "--json"], None, &[]);
    assert_eq!(
        status.json()["agent_broker"].as_str(),
        Some(url.as_str()),
        "status --json must name the broker as agent_broker\n{}",
        status.describe()
    );
    let env = run(home.path(), &["env", "--json"], None, &[]);
    expect_ok(&env, "env beside the agent");
    let doc = env.json();
    assert_eq!(
        (doc["value"].as_str(), doc["source"].as_str()),
        (Some(url.as_str()), Some("agent")),
        "env must point Codex at the broker the running agent serves\n{}",
        env.describe()
    );
}

#[test]
fn a_second_agent_serving_the_same_address_for_the_home_exits_8_naming_the_first() {
    let home = temp_home();
    let first = spawn(home.path(), &["agent", "--serve", "127.0.0.1:0"], None, &[]);
    first.wait_for_stderr_line("started");
    let url = published_broker(home.path());
    let addr = url
        .strip_prefix("http://")
        .and_then(|rest| rest.strip_suffix("/oauth/token"))
        .expect("a broker URL");
    let out = run(home.path(), &["agent", "--serve", addr], None, &[]);
    out.expect_code(
        exit::AGENT_RUNNING,
        "a second agent of the home on the first one's address",
    );
    out.expect_stderr_contains(
        &[format!("pid {}", first.id()).as_str(), url.as_str()],
        "the error must name the running agent and its broker",
    );
}

#[test]
fn a_broker_url_planted_in_the_agents_status_is_shown_escaped_and_never_given_to_a_command() {
    let home = temp_home();
    ChatgptCreds::fresh().write_to(home.path());
    // Whoever can write the home can write the status: here a URL with a terminal escape and a
    // path that is no broker's, published under a held claim as an agent would.
    let planted = "http://127.0.0.1:9/elsewhere\u{1b}[2J";
    let store = Store::open(home.path()).expect("the store opens");
    let status = AgentStatus::new(std::time::SystemTime::now(), AgentState::Waiting, None)
        .with_broker(planted);
    let _claim = store
        .claim_agent(&status)
        .expect("the test claims the home as an agent");
    for args in [&["inspect"][..], &["status", "--agent"]] {
        let out = run(home.path(), args, None, &[]);
        assert!(
            out.stdout.contains("elsewhere\\u{1b}[2J") && !out.stdout.contains('\u{1b}'),
            "`{}` must show the planted URL escaped\n{}",
            args.join(" "),
            out.describe()
        );
    }
    let env = run(home.path(), &["env", "--json"], None, &[]);
    assert_eq!(
        (env.json()["value"].as_str(), env.json()["source"].as_str()),
        (Some(DEFAULT_URL), Some("default")),
        "env must not take the planted URL\n{}",
        env.describe()
    );
    assert!(
        warnings(&env.stderr)
            .iter()
            .any(|w| w.contains("not a loopback") && !w.contains('\u{1b}')),
        "env must say, escaped, that the status names no usable broker\n{}",
        env.describe()
    );
    let out = with_url(home.path(), &["exec", "--", "sh", "-c", PRINT_URL], None);
    assert!(
        !out.stdout.contains("elsewhere"),
        "exec must never hand the planted URL to the command\n{}",
        describe(&out)
    );
}

/// POSTs Codex's refresh request presenting `refresh_token` to the broker at `url`
/// (`http://ADDR/oauth/token`); its status and JSON body.
pub(crate) fn codex_refresh(url: &str, refresh_token: &str) -> (u16, serde_json::Value) {
    let authority = url
        .strip_prefix("http://")
        .and_then(|rest| rest.strip_suffix("/oauth/token"))
        .unwrap_or_else(|| panic!("{url:?} is not a broker URL"));
    let body = serde_json::json!({
        "client_id": "app_EMoamEEZ73f0CkXaXp7hrann",
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
        "refresh_reason": "proactive_expiry",
    })
    .to_string();
    let answer = codex_store_tests::http::Client::new()
        .post(&codex_store_tests::http::Post {
            authority,
            path: "/oauth/token",
            headers: &[],
            body: &body,
            timeout: RUN_TIMEOUT,
            max_answer: 64 * 1024,
        })
        .unwrap_or_else(|e| panic!("the broker at {url} did not answer a refresh request: {e}"));
    let json = serde_json::from_slice(&answer.body).unwrap_or_else(|e| {
        panic!(
            "the broker answered {} with a body that is not JSON ({e}): {:?}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        )
    });
    (answer.status, json)
}

/// The access and refresh token in `home`'s auth.json.
fn tokens_in(home: &Path) -> (String, String) {
    let doc: serde_json::Value = serde_json::from_slice(
        &std::fs::read(home.join("auth.json")).expect("auth.json is readable"),
    )
    .expect("auth.json is JSON");
    let field = |name: &str| doc["tokens"][name].as_str().unwrap_or_default().to_owned();
    (field("access_token"), field("refresh_token"))
}

#[test]
fn an_agent_serving_answers_codex_for_the_token_it_rotated_away_and_refreshes_the_current_one_once()
{
    let home = temp_home();
    let creds = ChatgptCreds::expired();
    creds.write_to(home.path());
    let idp = creds.start_idp();
    let agent = spawn(
        home.path(),
        &["agent", "--serve", "127.0.0.1:0"],
        None,
        &[(URL_ENV, idp.url().as_str())],
    );
    // The expired token is due at once: the agent refreshes it itself.
    agent.wait_for_stderr_line("refreshed:");
    let url = published_broker(home.path());
    let (access, refresh) = tokens_in(home.path());

    // A Codex process that read auth.json before that rotation presents the old token.
    let (status, answer) = codex_refresh(&url, &creds.refresh_token);
    assert_eq!(
        (
            status,
            answer["access_token"].as_str(),
            answer["refresh_token"].as_str()
        ),
        (200, Some(access.as_str()), Some(refresh.as_str())),
        "the token the agent rotated away must be answered with the current tokens: {answer}"
    );
    assert_eq!(
        idp.requests(),
        1,
        "answering a predecessor must send nothing upstream"
    );

    // A Codex process told 401 presents the current token: one refresh, its tokens answered.
    let (status, answer) = codex_refresh(&url, &refresh);
    let (new_access, new_refresh) = tokens_in(home.path());
    assert_ne!(new_refresh, refresh, "the current token was not refreshed");
    assert_eq!(
        (
            status,
            answer["access_token"].as_str(),
            answer["refresh_token"].as_str()
        ),
        (200, Some(new_access.as_str()), Some(new_refresh.as_str())),
        "the refresh of the current token must answer the tokens now in auth.json: {answer}"
    );
    assert_eq!(
        idp.requests(),
        2,
        "one refresh must take one upstream request"
    );

    // A command run through `exec` beside it is pointed at it.
    let out = exec_printing_the_url(
        home.path(),
        url.trim_start_matches("http://")
            .trim_end_matches("/oauth/token"),
        None,
    );
    assert_eq!(
        out.stdout,
        url,
        "exec beside a serving agent must hand the command its URL\n{}",
        describe(&out)
    );
}

#[test]
fn an_agent_whose_own_token_url_is_its_broker_exits_1_saying_so() {
    let home = temp_home();
    ChatgptCreds::fresh().write_to(home.path());
    let addr = closed_port();
    let own = format!("http://{addr}/oauth/token");
    let out = run(
        home.path(),
        &["agent", "--serve", &addr],
        None,
        &[(URL_ENV, own.as_str())],
    );
    out.expect_code(1, "an agent whose token URL is its own broker");
    out.expect_stderr_contains(
        &[
            "token broker's own address",
            "CODEX_REFRESH_TOKEN_URL_OVERRIDE",
        ],
        "the agent must say that its token URL points at its own broker, and what to unset",
    );
}
