//! One-shot commands on a fleet machine, and a second agent (issue 17, items 1, 2 and 4).
//!
//! - `refresh`, and `token` with due tokens, on a machine whose fleet is named by `--fleet` or
//!   CODEX_STORE_FLEET send nothing and exit 9 pointing at the fleet's agents: a rotation made
//!   there alone would leave the fleet's record with a spent refresh token. `token` with tokens
//!   that are not due prints them.
//! - A plain `logout` with CODEX_STORE_FLEET exported signs out this home only; the fleet's
//!   login goes with `logout --fleet ENDPOINTS` on the command line.
//! - A second agent on a home exits 8 (which the shipped systemd unit does not restart), naming
//!   the pid of the agent that runs, which keeps running.
//!
//! Each fleet test starts a real etcd member; the record is read from etcd itself
//! ([`crate::fleet_kit`]).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::fleet_kit::{etcd_get, new_prefix, URL_ENV};
use crate::kit::{exit, fingerprint, run, spawn, temp_home, ChatgptCreds, CliOutput};
use codex_store_tests::etcd::EtcdCluster;
use codex_store_tests::fake_idp::FakeIdp;
use tempfile::TempDir;

const FLEET_ENV: &str = "CODEX_STORE_FLEET";
const PREFIX_ENV: &str = "CODEX_STORE_FLEET_PREFIX";

/// One machine of a fleet on a real etcd: its home signed in with `creds`, the fleet seeded
/// from it, and the token endpoint of the account.
struct FleetMachine {
    cluster: EtcdCluster,
    prefix: String,
    home: TempDir,
    creds: ChatgptCreds,
    idp: FakeIdp,
}

/// How a command is told about the fleet.
#[derive(Clone, Copy, Debug)]
enum Named {
    /// `--fleet ENDPOINTS --fleet-prefix PREFIX` on the command line (CODEX_STORE_FLEET empty).
    ByFlag,
    /// CODEX_STORE_FLEET and CODEX_STORE_FLEET_PREFIX exported.
    ByEnvironment,
}

impl FleetMachine {
    fn new(creds: ChatgptCreds) -> FleetMachine {
        let cluster = EtcdCluster::start(1);
        let prefix = new_prefix("fleet-commands");
        let home = temp_home();
        creds.write_to(home.path());
        let idp = creds.start_idp();
        let machine = FleetMachine {
            cluster,
            prefix,
            home,
            creds,
            idp,
        };
        machine
            .run(&["fleet", "seed"], Named::ByFlag)
            .expect_code(exit::OK, "seeding the fleet failed");
        machine
    }

    /// `codex-store ARGS` on this machine, the fleet named as `named`, refreshes going to the
    /// fake endpoint.
    fn run(&self, args: &[&str], named: Named) -> CliOutput {
        let endpoints = self.cluster.endpoints();
        let url = self.idp.url();
        let mut all: Vec<&str> = args.to_vec();
        let mut envs = vec![(URL_ENV, url.as_str())];
        match named {
            Named::ByFlag => {
                all.extend(["--fleet", &endpoints, "--fleet-prefix", &self.prefix]);
                // Whatever the test's own environment holds: only the flag names the fleet.
                envs.push((FLEET_ENV, ""));
            }
            Named::ByEnvironment => {
                envs.push((FLEET_ENV, &endpoints));
                envs.push((PREFIX_ENV, &self.prefix));
            }
        }
        run(self.home.path(), &all, None, &envs)
    }

    fn auth_json(&self) -> Vec<u8> {
        std::fs::read(self.home.path().join("auth.json")).unwrap_or_default()
    }

    /// The fleet's login as etcd holds it (`<prefix>/auth.json`), when there is one.
    fn record(&self) -> Option<serde_json::Value> {
        let kv = etcd_get(&self.cluster, &format!("{}/auth.json", self.prefix))?;
        Some(serde_json::from_slice(&kv.value).expect("the record is JSON"))
    }

    /// The fingerprint of the refresh token in the fleet's record.
    fn record_refresh_fingerprint(&self) -> Option<String> {
        self.record()?["tokens"]["refresh_token"]
            .as_str()
            .map(fingerprint)
    }

    /// Panics unless `out` is the refusal of a one-shot refresh on a fleet machine (exit 9,
    /// naming where the fleet came from and how to check its agents), the endpoint saw no
    /// request, and neither auth.json nor the record changed.
    #[track_caller]
    fn expect_refused(&self, out: &CliOutput, named: Named, before: &[u8], what: &str) {
        assert_eq!(
            self.idp.requests(),
            0,
            "{what} on a fleet machine ({named:?}) sent a request to the token endpoint: a \
             local-only rotation spends the fleet's refresh token\n{}",
            out.describe()
        );
        assert!(
            self.auth_json() == before,
            "{what} on a fleet machine ({named:?}) changed auth.json\n{}",
            out.describe()
        );
        assert_eq!(
            self.record_refresh_fingerprint(),
            Some(fingerprint(&self.creds.refresh_token)),
            "the fleet's record no longer holds the seeded refresh token after {what}"
        );
        out.expect_code(
            exit::FLEET_REFRESHES,
            &format!("{what} on a fleet machine ({named:?}) must be refused"),
        );
        let source = match named {
            Named::ByFlag => "--fleet is set",
            Named::ByEnvironment => "CODEX_STORE_FLEET is set",
        };
        out.expect_stderr_contains(
            &[source, "nothing was sent", "inspect --fleet"],
            &format!(
                "the refusal of {what} must say that the fleet ({source}) refreshes, that \
                 nothing was sent, and how to check the fleet's agents"
            ),
        );
        out.expect_empty_stdout(&format!("a refused {what} must print no token"));
    }
}

#[test]
fn refresh_on_a_fleet_machine_sends_nothing_and_exits_9_pointing_at_the_fleets_agents() {
    for named in [Named::ByEnvironment, Named::ByFlag] {
        let machine = FleetMachine::new(ChatgptCreds::expired());
        let before = machine.auth_json();
        let out = machine.run(&["refresh"], named);
        machine.expect_refused(&out, named, &before, "`refresh`");
    }
}

#[test]
fn token_on_a_fleet_machine_refuses_due_tokens_without_a_request_and_prints_fresh_ones() {
    for named in [Named::ByEnvironment, Named::ByFlag] {
        // Due (expired): refused, nothing sent.
        let machine = FleetMachine::new(ChatgptCreds::expired());
        let before = machine.auth_json();
        let out = machine.run(&["token"], named);
        machine.expect_refused(&out, named, &before, "`token` with expired tokens");

        // Due but still usable (it expires in two minutes): refused as well; refreshing it is
        // the fleet's agents' job (they refresh 15 minutes before expiry).
        let machine = FleetMachine::new(ChatgptCreds::due_but_valid());
        let before = machine.auth_json();
        let out = machine.run(&["token"], named);
        machine.expect_refused(&out, named, &before, "`token` with due tokens");

        // Not due: printed, nothing sent.
        let machine = FleetMachine::new(ChatgptCreds::fresh());
        let out = machine.run(&["token"], named);
        out.expect_code(
            exit::OK,
            &format!("`token` with tokens that are not due failed on a fleet machine ({named:?})"),
        )
        .expect_token(
            &machine.creds.access_token,
            "`token` on a fleet machine must print tokens that are not due",
        );
        assert_eq!(
            machine.idp.requests(),
            0,
            "`token` with tokens that are not due sent a request ({named:?})"
        );
    }
}

#[test]
fn a_plain_logout_with_the_fleet_exported_signs_out_this_home_only_and_logout_fleet_signs_out_the_fleet(
) {
    let machine = FleetMachine::new(ChatgptCreds::fresh());
    let out = machine.run(&["logout"], Named::ByEnvironment);
    out.expect_code(exit::OK, "a plain logout on a fleet machine failed");
    assert!(
        !machine.home.path().join("auth.json").exists(),
        "a plain logout left this home's auth.json\n{}",
        out.describe()
    );
    assert_eq!(
        machine.record_refresh_fingerprint(),
        Some(fingerprint(&machine.creds.refresh_token)),
        "a plain logout with only CODEX_STORE_FLEET exported removed the fleet's login: every \
         machine was signed out\n{}",
        out.describe()
    );
    out.expect_stdout_contains(
        &["Removed the credentials in", "this machine only"],
        "a plain logout with CODEX_STORE_FLEET exported must say it signed out this home only",
    );

    let out = machine.run(&["logout"], Named::ByFlag);
    out.expect_code(exit::OK, "logout --fleet failed")
        .expect_stdout_contains(
            &["Removed the fleet's login"],
            "logout --fleet must say it removed the fleet's login",
        );
    assert!(
        machine.record().is_none(),
        "the fleet's login survived `logout --fleet ENDPOINTS`\n{}",
        out.describe()
    );
}

/// SIGTERM to `pid`.
fn terminate(pid: u32) {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .expect("cannot run kill");
    assert!(status.success(), "kill -TERM {pid} failed");
}

#[test]
fn a_second_agent_exits_8_naming_the_first_ones_pid_and_the_first_keeps_running() {
    let creds = ChatgptCreds::fresh();
    let home = temp_home();
    creds.write_to(home.path());
    let idp = creds.start_idp();
    let url = idp.url();
    let mut first = spawn(
        home.path(),
        &["agent", "--lead", "310"],
        None,
        &[(URL_ENV, &url)],
    );
    first.wait_for_stderr_line("started");

    let second = run(
        home.path(),
        &["agent", "--lead", "310"],
        None,
        &[(URL_ENV, &url)],
    );
    second
        .expect_code(
            exit::AGENT_RUNNING,
            "a second agent must exit with the code the service units do not restart",
        )
        .expect_stderr_contains(
            &[
                "another codex-store agent already runs",
                &format!("pid {}", first.id()),
            ],
            "the second agent must name the pid of the agent that runs",
        );
    assert!(
        first.try_status().is_none(),
        "the first agent ended when a second one was started:\n{}",
        first.stderr()
    );
    assert!(
        !first.stderr().contains("stopped"),
        "the first agent stopped when a second one was started:\n{}",
        first.stderr()
    );
    let report = run(home.path(), &["inspect", "--json"], None, &[]);
    report.expect_code(exit::OK, "inspect failed");
    assert_eq!(
        report.json()["agent"]["pid"].as_u64(),
        Some(u64::from(first.id())),
        "inspect no longer shows the first agent running after the second one exited"
    );
    terminate(first.id());
    first
        .finish(Duration::from_secs(10))
        .expect_code(exit::OK, "the first agent did not stop cleanly on SIGTERM")
        .expect_stderr_contains(&["stopped"], "the first agent must say that it stopped");
    assert_eq!(idp.requests(), 0, "no agent should refresh a fresh token");
}

/// The `RestartPreventExitStatus=` codes of the shipped systemd unit.
fn restart_prevented_codes(unit: &Path) -> Vec<i32> {
    let text = std::fs::read_to_string(unit)
        .unwrap_or_else(|e| panic!("the shipped unit {} cannot be read: {e}", unit.display()));
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("RestartPreventExitStatus="))
        .flat_map(|codes| codes.split_whitespace().map(str::to_owned))
        .map(|code| {
            code.parse()
                .unwrap_or_else(|_| panic!("`{code}` in {} is not an exit code", unit.display()))
        })
        .collect()
}

#[test]
fn the_shipped_systemd_unit_restarts_a_failed_agent_but_not_one_that_found_another_running() {
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist");
    let unit = dist.join("codex-store-agent.service");
    let text = std::fs::read_to_string(&unit).unwrap_or_default();
    assert!(
        text.lines().any(|l| l.trim() == "Restart=on-failure"),
        "{} must restart an agent that failed",
        unit.display()
    );
    assert!(
        restart_prevented_codes(&unit).contains(&exit::AGENT_RUNNING),
        "{} restarts an agent that exited {} (another agent runs) every RestartSec, forever: \
         list it in RestartPreventExitStatus=",
        unit.display(),
        exit::AGENT_RUNNING
    );
    assert!(
        restart_prevented_codes(&unit).contains(&exit::USAGE),
        "{} restarts an agent that exited {} (a usage error, such as the socket unit with \
         --fleet) every RestartSec, forever: list it in RestartPreventExitStatus=",
        unit.display(),
        exit::USAGE
    );
    let plist = std::fs::read_to_string(dist.join("com.codex-store.agent.plist"))
        .expect("the shipped launchd plist");
    assert!(
        plist.contains("<key>SuccessfulExit</key><false/>"),
        "the launchd plist must restart the agent only when it fails, not after a clean stop"
    );
}

#[test]
fn a_home_an_agent_synced_with_a_fleet_refuses_a_one_shot_refresh_even_with_no_fleet_option() {
    // The fleet's options may live only in the agent's service unit: the home itself says it
    // is on a fleet (`auth.json.fleet`, the agent's sync state).
    let creds = ChatgptCreds::expired();
    let home = temp_home();
    creds.write_to(home.path());
    std::fs::write(home.path().join("auth.json.fleet"), "{}").expect("write the sync state");
    let idp = creds.start_idp();
    let url = idp.url();
    for args in [&["refresh"][..], &["token"][..]] {
        let out = run(home.path(), args, None, &[(URL_ENV, url.as_str())]);
        out.expect_code(
            exit::FLEET_REFRESHES,
            &format!("{args:?} on a home an agent synced with a fleet"),
        )
        .expect_stderr_contains(
            &["auth.json.fleet"],
            "the refusal must name the file that says this home is on a fleet",
        );
    }
    idp.expect_requests(0, "a one-shot refresh on a fleet home sent a request");
}
