//! The README's fleet set-up as written (issue 19 item 5): its RBAC recipe, taken from README.md
//! at test time and run line by line (`sh -c`, etcd 3.4's `etcdctl`) against a real etcd, then
//! used as written (`fleet seed`, `inspect --fleet`, an agent refreshing the login) by the user it
//! creates, which etcd refuses anything outside its prefix; and the warning when a password would
//! go over plain `http://` to a host that is not loopback.

use std::process::Command;
use std::time::Duration;

use crate::fleet_kit::{Machine, LEAD, URL_ENV};
use crate::kit::{exit, fingerprint, run, temp_home, ChatgptCreds, CliOutput};
use codex_store_tests::etcd::EtcdCluster;
use codex_store_tests::process::Process;
use serde_json::Value;

/// The README, at the workspace's root.
const README: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
/// The comment line just before the recipe's code block.
const RECIPE_START: &str = "<!-- fleet-rbac-recipe:";
/// The comment line just after it.
const RECIPE_END: &str = "<!-- /fleet-rbac-recipe -->";
/// The endpoint the recipe is written for: the only text the test replaces (with its etcd's).
const README_ENDPOINT: &str = "https://etcd1:2379";
/// The prefix and the user the recipe creates.
const README_PREFIX: &str = "/codex-store/me";
const README_USER: &str = "codex-me";
/// The variables the recipe reads the passwords from, and the passwords the test gives them.
const ROOT_PASSWORD_ENV: &str = "ETCD_ROOT_PASSWORD";
const ROOT_PASSWORD: &str = "root-password-of-the-recipe";
const PASSWORD_ENV: &str = "CODEX_STORE_FLEET_PASSWORD";
const USER_PASSWORD: &str = "codex-me-password";
/// The bound on one `etcdctl` line; it only turns a hang (a prompt for a password) into a
/// failure.
const LINE_LIMIT: Duration = Duration::from_secs(30);
/// An address that is not loopback and that no test needs to answer (TEST-NET-1, RFC 5737).
const REMOTE: &str = "192.0.2.1:2379";

/// The lines of the README's RBAC recipe: the code block between [`RECIPE_START`] and
/// [`RECIPE_END`], without blank lines and comments.
fn recipe() -> Vec<String> {
    let text =
        std::fs::read_to_string(README).unwrap_or_else(|e| panic!("cannot read {README}: {e}"));
    let start = text.find(RECIPE_START).unwrap_or_else(|| {
        panic!("the README has no line starting {RECIPE_START:?}: the RBAC recipe lost its marker")
    });
    let block = &text[start..];
    let end = block
        .find(RECIPE_END)
        .unwrap_or_else(|| panic!("the README's RBAC recipe has no end marker {RECIPE_END:?}"));
    let block = &block[..end];
    let lines: Vec<&str> = block.lines().skip(1).map(str::trim).collect();
    assert!(
        lines.first() == Some(&"```sh")
            && lines.iter().filter(|l| l.starts_with("```")).count() == 2,
        "between the README's recipe markers there must be exactly one ```sh code block: {block}"
    );
    let commands: Vec<String> = lines
        .iter()
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| (*l).to_owned())
        .collect();
    assert!(
        !commands.is_empty(),
        "the README's RBAC recipe is empty: {block}"
    );
    for line in &commands {
        assert!(
            line.contains(README_ENDPOINT),
            "every line of the README's recipe must name the endpoint {README_ENDPOINT} (the only \
             text this test replaces), and this one does not: {line}"
        );
    }
    commands
}

/// `sh -c LINE` with etcdctl's v3 API and the passwords in the environment (and `envs`), the
/// recipe's endpoint replaced by `endpoint`; its output. Panics after [`LINE_LIMIT`].
fn sh(line: &str, endpoint: &str, envs: &[(&str, &str)]) -> (bool, String) {
    let line = line.replace(README_ENDPOINT, endpoint);
    let mut command = Command::new("sh");
    command.arg("-c").arg(&line);
    // Nothing of the environment running the tests decides which etcd or user etcdctl uses.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ETCDCTL_") {
            command.env_remove(key);
        }
    }
    command
        .env("ETCDCTL_API", "3")
        .env(ROOT_PASSWORD_ENV, ROOT_PASSWORD)
        .env(PASSWORD_ENV, USER_PASSWORD)
        .envs(envs.iter().copied());
    let mut process = Process::spawn_command(format!("sh -c {line:?}"), command);
    // A line that prompts for a password reads EOF, and fails.
    process.close_stdin();
    let finished = process.finish(LINE_LIMIT);
    let output = format!("{}{}", finished.stdout, finished.stderr);
    (finished.status.success(), output)
}

/// Runs the README's recipe against `endpoint`, line by line; each must succeed.
fn run_recipe(endpoint: &str) {
    for line in recipe() {
        let (ok, output) = sh(&line, endpoint, &[]);
        assert!(
            ok,
            "the README's RBAC recipe fails (with {}): `{line}` said: {output}",
            etcd_version()
        );
    }
}

/// etcdctl, which runs the recipe. Panics, naming the package, when it is not on PATH.
fn etcdctl() -> std::path::PathBuf {
    codex_store_tests::programs::on_path("etcdctl").unwrap_or_else(|| {
        panic!(
            "etcdctl is not installed: the README's RBAC recipe runs it; install Debian's \
             etcd-client (`apt-get update && apt-get install -y etcd-client`; tests/run does)"
        )
    })
}

/// `etcdctl version`'s first line (for messages).
fn etcd_version() -> String {
    let out = Command::new(etcdctl())
        .arg("version")
        .env("ETCDCTL_API", "3")
        .output()
        .expect("run etcdctl version");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// `codex-store REST... --fleet ENDPOINT --fleet-prefix PREFIX [--fleet-user USER]` in `home`,
/// the recipe's user's password [`USER_PASSWORD`] in its environment.
fn fleet_command(
    home: &std::path::Path,
    rest: &[&str],
    endpoint: &str,
    prefix: &str,
    user: Option<&str>,
) -> CliOutput {
    let mut args: Vec<&str> = rest.to_vec();
    args.extend(["--fleet", endpoint, "--fleet-prefix", prefix]);
    if let Some(user) = user {
        args.extend(["--fleet-user", user]);
    }
    run(home, &args, None, &[(PASSWORD_ENV, USER_PASSWORD)])
}

#[test]
fn the_readmes_rbac_recipe_run_as_written_gives_a_user_who_seeds_inspects_and_refreshes_its_prefix_and_nothing_else(
) {
    etcdctl();
    let cluster = EtcdCluster::start(1);
    let endpoint = cluster.endpoint(0);
    run_recipe(&endpoint);

    // Authentication is on: nobody gets in without a user.
    let creds = ChatgptCreds::expiring_in(LEAD - 60);
    let idp = creds.start_idp();
    let seeder = temp_home();
    creds.write_to(seeder.path());
    let anonymous = fleet_command(
        seeder.path(),
        &["fleet", "seed"],
        &endpoint,
        README_PREFIX,
        None,
    );
    anonymous.expect_code(
        exit::OTHER,
        "after the recipe's `auth enable`, etcd must refuse a seed without a user",
    );
    anonymous.expect_stderr_contains(&["etcd refused the request"], "the refusal must say so");

    // A user without the recipe's role, made by root as the README says a later login is made.
    let root = format!("root:{ROOT_PASSWORD}");
    let (ok, output) = sh(
        &format!("printf '%s\\n' \"${PASSWORD_ENV}\" | etcdctl --endpoints={README_ENDPOINT} user add stranger --interactive=false"),
        &endpoint,
        &[("ETCDCTL_USER", root.as_str())],
    );
    assert!(
        ok,
        "root could not add a user after the recipe (ETCDCTL_USER=root:...): {output}"
    );
    let stranger = fleet_command(
        seeder.path(),
        &["fleet", "seed"],
        &endpoint,
        README_PREFIX,
        Some("stranger"),
    );
    stranger.expect_code(
        exit::OTHER,
        "a user without the recipe's role must not seed its prefix",
    );
    stranger.expect_stderr_contains(&["permission denied"], "etcd's reason must be shown");

    // The recipe's user, outside its prefix: a sibling whose name merely starts the same.
    let outside = fleet_command(
        seeder.path(),
        &["fleet", "seed"],
        &endpoint,
        &format!("{README_PREFIX}-too"),
        Some(README_USER),
    );
    outside.expect_code(
        exit::OTHER,
        "the recipe's user must not write outside its prefix",
    );
    outside.expect_stderr_contains(&["permission denied"], "etcd's reason must be shown");

    // The recipe's user, in its prefix: seed, inspect, and an agent that refreshes the login.
    let seeded = fleet_command(
        seeder.path(),
        &["fleet", "seed"],
        &endpoint,
        README_PREFIX,
        Some(README_USER),
    );
    seeded.expect_code(
        exit::OK,
        "the recipe's user must be able to seed its prefix",
    );
    assert!(
        !seeded.stderr.contains("warning"),
        "a password to a loopback endpoint must not be warned about: {}",
        seeded.stderr
    );
    let inspect = |home: &std::path::Path| -> Value {
        let out = fleet_command(
            home,
            &["inspect", "--json"],
            &endpoint,
            README_PREFIX,
            Some(README_USER),
        );
        out.expect_code(exit::OK, "inspect --fleet must report as the recipe's user");
        out.json()
    };
    let report = inspect(seeder.path());
    assert_eq!(
        report["fleet"]["account_id"].as_str(),
        Some(creds.account_id.as_str()),
        "inspect --fleet, as the recipe's user, does not show the seeded login: {report}"
    );

    let mut machine = Machine::new(&cluster, "recipe-machine");
    let url = idp.url();
    machine.start_agent(
        README_PREFIX,
        &["--fleet-user", README_USER],
        &[(PASSWORD_ENV, USER_PASSWORD), (URL_ENV, url.as_str())],
    );
    machine.expect_event("refreshed:");
    let issued = idp.current_refresh_token();
    machine.wait_for_refresh_token(&issued, "the recipe's user's agent refreshed the login");
    let report = inspect(seeder.path());
    let rotation = &report["fleet"]["last_rotation"];
    assert_eq!(
        (
            report["fleet"]["refresh_token"].as_str(),
            rotation["machine"].as_str()
        ),
        (Some(fingerprint(&issued).as_str()), Some("recipe-machine")),
        "the fleet record must hold the agent's refresh (uploaded as the recipe's user): {report}"
    );
    assert_eq!(
        idp.requests(),
        1,
        "the agent should have refreshed the login once"
    );
    let log = machine.stop_agent(Duration::from_secs(10));
    assert!(
        !log.contains("warning") && !log.contains("failed ("),
        "the recipe's user's agent (on loopback) warned or failed: {log}"
    );
    crate::kit::assert_no_secret_leaked();
}

/// `fleet seed` in a home without a login (it fails before any call to etcd) with the fleet at
/// `endpoints`, and `--fleet-user` when `user`: its stderr.
fn seed_stderr(endpoints: &str, user: bool) -> String {
    let home = temp_home();
    let mut args = vec!["fleet", "seed", "--fleet", endpoints];
    if user {
        args.extend(["--fleet-user", README_USER]);
    }
    let out = run(home.path(), &args, None, &[(PASSWORD_ENV, USER_PASSWORD)]);
    out.expect_code(exit::OTHER, "a seed from a home without a login must fail");
    out.expect_stderr_contains(
        &["sign in"],
        "the seed must fail for the missing login, before etcd",
    );
    out.stderr
}

#[test]
fn a_password_bound_for_plain_http_to_a_host_that_is_not_loopback_is_warned_about_once_naming_it() {
    let remote = format!("http://{REMOTE}");
    let stderr = seed_stderr(&format!("http://127.0.0.1:9,{remote}"), true);
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "one warning line was expected: {stderr}");
    let warning = warnings[0];
    for needle in [
        remote.as_str(),
        "password",
        "token",
        "unencrypted",
        "https://",
        "--fleet-ca",
    ] {
        assert!(
            warning.contains(needle),
            "the warning must name the endpoint and say that the password and the tokens travel \
             unencrypted, and to use https:// with --fleet-ca ({needle} is missing): {warning}"
        );
    }
    assert!(
        !warning.contains("127.0.0.1"),
        "the loopback endpoint must not be named as exposed: {warning}"
    );

    let escaped = seed_stderr("http://evil\u{1b}[2J.example:2379", true);
    assert!(
        escaped.contains("evil\\u{1b}[2J") && !escaped.contains('\u{1b}'),
        "an endpoint's control characters must be escaped in the warning: {escaped:?}"
    );
}

#[test]
fn no_warning_is_printed_for_loopback_or_https() {
    for (endpoints, user, what) in [
        ("http://127.0.0.1:9", true, "a loopback address"),
        ("http://127.3.2.1:9", true, "an address in 127.0.0.0/8"),
        ("http://localhost:9", true, "localhost"),
        ("http://[::1]:9", true, "::1"),
        (&*format!("https://{REMOTE}"), true, "https"),
        (
            &*format!("https://{REMOTE}"),
            false,
            "https without --fleet-user",
        ),
        ("http://127.0.0.1:9", false, "loopback without --fleet-user"),
    ] {
        let stderr = seed_stderr(endpoints, user);
        assert!(
            !stderr.contains("warning"),
            "{what} ({endpoints}) must not be warned about: {stderr}"
        );
    }
}

#[test]
fn tokens_bound_for_plain_http_to_a_host_that_is_not_loopback_are_warned_about_without_a_password()
{
    let remote = format!("http://{REMOTE}");
    let stderr = seed_stderr(&remote, false);
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("warning")).collect();
    assert!(
        warnings.len() == 1
            && warnings[0].contains(&remote)
            && warnings[0].contains("token")
            && !warnings[0].contains("password"),
        "one warning naming the endpoint and the tokens (no password was given) was expected: \
         {stderr}"
    );
}
