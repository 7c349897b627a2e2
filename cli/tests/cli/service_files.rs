//! The service files shipped in `cli/dist/` (issue 19, item 1): the systemd user unit, its fleet
//! drop-in and `fleet.env.example`, the socket unit of the token broker (issue 21), and the
//! launchd plist.
//!
//! - The unit and the drop-in pass `systemd-analyze --user verify` without a single warning
//!   (unknown keys, unparsable values, a drop-in that does not apply, an `ExecStart=` binary that
//!   is not there). It runs offline, with no systemd as PID 1: the unit is verified in a copy
//!   of `dist/` against a home whose `~/.cargo/bin/codex-store` (where `cargo install` puts it)
//!   is the binary under test, so the unit's binary path is checked as well. A unit with a
//!   misspelled key is reported by the same check, so the check can fail.
//! - The plist is a well-formed property list (parsed by the `plist` crate) whose keys launchd
//!   reads as intended: started at load, restarted only when it fails.
//! - The command of each, run as systemd (`%h` replaced) and launchd (`/bin/sh`, `HOME` set)
//!   run it, starts the installed agent on a signed-in home, which stops cleanly on SIGTERM.
//! - The fleet's settings come from `fleet.env` through `EnvironmentFile=`, never from a
//!   command line, and name only variables the command reads.
//! - The socket unit passes `systemd-analyze --user verify` beside the service it activates,
//!   listens on the broker's default loopback address (the one `codex-store env` names), and the
//!   unit's command, started by systemd's own socket activation (`systemd-socket-activate`),
//!   takes the socket it is passed and publishes its URL.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::kit::{exit, ChatgptCreds, CODEX_STORE, DEAD_TOKEN_URL, SCRUBBED_ENV};
use codex_store_tests::process::Process;
use tempfile::TempDir;

const UNIT: &str = "codex-store-agent.service";
const SOCKET: &str = "codex-store-agent.socket";
const FLEET_DROP_IN: &str = "codex-store-agent.service.d/fleet.conf";
const PLIST: &str = "com.codex-store.agent.plist";
const FLEET_ENV_EXAMPLE: &str = "fleet.env.example";
/// Where `cargo install --locked --path cli` puts the binary, relative to the home.
const INSTALLED: &str = ".cargo/bin/codex-store";
/// How long the agent may take to start or to stop; only turns a hang into a failure.
const DEADLINE: Duration = Duration::from_secs(30);

fn dist() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dist")
}

fn read_dist(name: &str) -> String {
    let path = dist().join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("the shipped {} cannot be read: {e}", path.display()))
}

/// A user's home after `cargo install`: `~/.cargo/bin/codex-store` is the binary under test.
fn installed_home() -> TempDir {
    let home = tempfile::tempdir().expect("cannot create a temp dir for HOME");
    let bin = home.path().join(INSTALLED);
    std::fs::create_dir_all(bin.parent().expect("a directory"))
        .expect("cannot create ~/.cargo/bin");
    std::os::unix::fs::symlink(CODEX_STORE, &bin)
        .unwrap_or_else(|e| panic!("cannot link {} to {CODEX_STORE}: {e}", bin.display()));
    home
}

/// `systemd-analyze --user verify --man=no UNIT` on `unit_dir/UNIT` (and its drop-ins beside
/// it) for a user whose home is `home`. Returns whether it succeeded and everything it printed.
fn systemd_verify(unit_dir: &Path, home: &Path) -> (bool, String) {
    systemd_verify_unit(unit_dir, UNIT, home)
}

/// `systemd-analyze --user verify --man=no` on `unit_dir/name` (its drop-ins, and the units it
/// names, found beside it), for a user whose home is `home`.
fn systemd_verify_unit(unit_dir: &Path, name: &str, home: &Path) -> (bool, String) {
    let runtime = tempfile::tempdir().expect("cannot create a temp XDG_RUNTIME_DIR");
    let out = Command::new("systemd-analyze")
        .args(["--user", "verify", "--man=no"])
        .arg(unit_dir.join(name))
        .env("HOME", home)
        .env("XDG_RUNTIME_DIR", runtime.path())
        .env_remove("SYSTEMD_UNIT_PATH")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run systemd-analyze ({e}): the service-file tests need it (Debian's \
                 `systemd` package; tests/run installs it)"
            )
        });
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), printed)
}

/// A copy of the shipped unit and its fleet drop-in in a new directory, `edit` applied to the
/// unit's text.
fn unit_copy(edit: impl Fn(String) -> String) -> TempDir {
    let dir = tempfile::tempdir().expect("cannot create a temp dir for the unit");
    std::fs::write(dir.path().join(UNIT), edit(read_dist(UNIT))).expect("cannot copy the unit");
    std::fs::write(dir.path().join(SOCKET), read_dist(SOCKET)).expect("cannot copy the socket");
    let drop_in = dir.path().join(FLEET_DROP_IN);
    std::fs::create_dir_all(drop_in.parent().expect("a directory")).expect("cannot create .d");
    std::fs::write(&drop_in, read_dist(FLEET_DROP_IN)).expect("cannot copy the drop-in");
    dir
}

#[test]
fn the_shipped_systemd_unit_and_its_fleet_drop_in_pass_systemd_analyze_verify_without_a_warning() {
    let home = installed_home();
    let units = unit_copy(|text| text);
    let (ok, printed) = systemd_verify(units.path(), home.path());
    assert!(
        ok && printed.trim().is_empty(),
        "systemd-analyze --user verify finds fault with the shipped {UNIT} or {FLEET_DROP_IN} \
         (with ~/{INSTALLED} installed):\n{printed}"
    );
}

#[test]
fn systemd_analyze_verify_as_these_tests_run_it_reports_a_misspelled_key_and_a_missing_binary() {
    let home = installed_home();
    let misspelled = unit_copy(|text| text.replace("Restart=on-failure", "Restart=on-falure"));
    let (_, printed) = systemd_verify(misspelled.path(), home.path());
    assert!(
        printed.contains("on-falure"),
        "systemd-analyze did not report `Restart=on-falure`: the unit check cannot fail\n{printed}"
    );
    let bare_home = tempfile::tempdir().expect("cannot create a temp dir for HOME");
    let units = unit_copy(|text| text);
    let (ok, printed) = systemd_verify(units.path(), bare_home.path());
    assert!(
        !ok && printed.contains(INSTALLED),
        "systemd-analyze accepted the unit in a home without ~/{INSTALLED}: the check does not \
         see the binary path\n{printed}"
    );
}

#[test]
fn the_shipped_socket_unit_passes_systemd_analyze_verify_beside_its_service_and_the_check_can_fail()
{
    let home = installed_home();
    let units = unit_copy(|text| text);
    let (ok, printed) = systemd_verify_unit(units.path(), SOCKET, home.path());
    assert!(
        ok && printed.trim().is_empty(),
        "systemd-analyze --user verify finds fault with the shipped {SOCKET} beside {UNIT}:\n\
         {printed}"
    );
    let misspelled = unit_copy(|text| text);
    let socket = misspelled.path().join(SOCKET);
    std::fs::write(
        &socket,
        read_dist(SOCKET).replace("ListenStream=", "ListenStrem="),
    )
    .expect("cannot write the misspelled socket unit");
    let (ok, printed) = systemd_verify_unit(misspelled.path(), SOCKET, home.path());
    assert!(
        !ok && printed.contains("ListenStrem"),
        "systemd-analyze did not refuse `ListenStrem=` in the socket unit: the check cannot \
         fail\n{printed}"
    );
    let alone = tempfile::tempdir().expect("cannot create a temp dir for the socket");
    std::fs::write(alone.path().join(SOCKET), read_dist(SOCKET)).expect("cannot copy the socket");
    let (ok, printed) = systemd_verify_unit(alone.path(), SOCKET, home.path());
    assert!(
        !ok && printed.contains(UNIT),
        "systemd-analyze accepted {SOCKET} without {UNIT} beside it: the check does not see \
         which service the socket starts\n{printed}"
    );
}

/// The values of the settings `key=` of `text` that are not comments.
fn settings<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    let prefix = format!("{key}=");
    text.lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .collect()
}

#[test]
fn the_shipped_socket_unit_listens_once_on_the_loopback_address_codex_store_env_names() {
    let socket = read_dist(SOCKET);
    let listen = settings(&socket, "ListenStream");
    assert_eq!(
        listen.len(),
        1,
        "{SOCKET} must listen on exactly one address (the agent takes one socket): {listen:?}"
    );
    assert_eq!(
        settings(&socket, "Accept"),
        ["no"],
        "{SOCKET} must pass one listening socket (Accept=no), not one connection per agent"
    );
    // With no agent running, `env` names the broker's default address: the socket's.
    let codex_home = tempfile::tempdir().expect("cannot create a temp dir for CODEX_HOME");
    let out = crate::kit::run(codex_home.path(), &["env", "--json"], None, &[]);
    out.expect_code(exit::OK, "`env --json` with no agent");
    let named = out.json()["value"].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        named,
        format!("http://{}/oauth/token", listen[0]),
        "{SOCKET} listens on {}, but `codex-store env` points Codex elsewhere: one of them is \
         wrong",
        listen[0]
    );
}

/// `systemd-socket-activate -l 127.0.0.1:PORT -E NAME=VALUE... program...` (systemd's own
/// implementation of socket activation, as a socket unit starts its service) listening on a
/// free port; the port. A port taken between the look and the bind is tried again, a few times.
fn socket_activated(program: &[String], envs: &[(&str, &Path)]) -> (Process, u16) {
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("cannot find a free port on 127.0.0.1")
            .port();
        let mut command = Command::new("systemd-socket-activate");
        command.arg(format!("--listen=127.0.0.1:{port}"));
        command.arg(format!(
            "--setenv=CODEX_REFRESH_TOKEN_URL_OVERRIDE={DEAD_TOKEN_URL}"
        ));
        for (name, value) in envs {
            command.arg(format!("--setenv={name}={}", value.display()));
        }
        command.args(program);
        let mut activator =
            Process::spawn_command(format!("systemd-socket-activate {program:?}"), command)
                .with_event_timeout(DEADLINE);
        let deadline = Instant::now() + DEADLINE;
        loop {
            if activator.stderr().contains("Listening on") {
                return (activator, port);
            }
            if activator.try_status().is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "systemd-socket-activate did not say it listens within {DEADLINE:?}:\n{}",
                activator.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let printed = activator.stderr();
        assert!(
            printed.contains("in use"),
            "systemd-socket-activate could not listen on 127.0.0.1:{port} (it is installed with \
             the `systemd` package, which tests/run installs):\n{printed}"
        );
    }
    panic!("no free port on 127.0.0.1 in 5 tries for systemd-socket-activate");
}

#[test]
fn the_units_command_started_by_socket_activation_takes_the_socket_and_publishes_the_brokers_url() {
    let unit = read_dist(UNIT);
    let home = installed_home();
    let codex_home = signed_in_codex_home();
    let home_text = home.path().to_str().expect("a UTF-8 temp path");
    let program: Vec<String> = settings(&unit, "ExecStart")[0]
        .split_whitespace()
        .map(|a| a.replace("%h", home_text))
        .collect();
    let (agent, port) = socket_activated(
        &program,
        &[("HOME", home.path()), ("CODEX_HOME", codex_home.path())],
    );
    // systemd-socket-activate starts the command at the first connection, as a socket unit
    // starts its service.
    let _first = std::net::TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("cannot connect to the activated socket 127.0.0.1:{port}: {e}"));
    agent.wait_for_stderr_line("started");
    let report = crate::kit::run(codex_home.path(), &["inspect", "--json"], None, &[]);
    report.expect_code(exit::OK, "inspect beside the socket-activated agent");
    let want = format!("http://127.0.0.1:{port}/oauth/token");
    assert_eq!(
        report.json()["agent"]["broker"].as_str(),
        Some(want.as_str()),
        "the agent started with the socket systemd passed (LISTEN_FDS) must publish that \
         socket's URL: it ignored the socket, or bound another\n{}",
        report.describe()
    );
    stop(agent, "the socket-activated agent", str::to_owned);
}

/// The shipped plist, parsed.
fn plist() -> plist::Dictionary {
    let path = dist().join(PLIST);
    plist::Value::from_file(&path)
        .unwrap_or_else(|e| panic!("{} is not a well-formed property list: {e}", path.display()))
        .into_dictionary()
        .unwrap_or_else(|| panic!("{} is not a dictionary at the top", path.display()))
}

/// The plist's ProgramArguments.
fn plist_program(plist: &plist::Dictionary) -> Vec<String> {
    let args = plist
        .get("ProgramArguments")
        .and_then(plist::Value::as_array)
        .unwrap_or_else(|| panic!("{PLIST} has no ProgramArguments array"));
    args.iter()
        .map(|a| {
            a.as_string()
                .unwrap_or_else(|| panic!("{PLIST}: ProgramArguments holds {a:?}, not a string"))
                .to_owned()
        })
        .collect()
}

#[test]
fn the_shipped_launchd_plist_is_a_property_list_started_at_load_and_restarted_only_on_failure() {
    let plist = plist();
    assert_eq!(
        plist.get("Label").and_then(plist::Value::as_string),
        Some("com.codex-store.agent"),
        "{PLIST}: the Label must match the file name launchctl is given"
    );
    assert_eq!(
        plist.get("RunAtLoad").and_then(plist::Value::as_boolean),
        Some(true),
        "{PLIST}: the agent must start when the plist is bootstrapped (RunAtLoad true)"
    );
    let keep_alive = plist
        .get("KeepAlive")
        .and_then(plist::Value::as_dictionary)
        .unwrap_or_else(|| panic!("{PLIST}: KeepAlive must be a dictionary (SuccessfulExit)"));
    assert_eq!(
        keep_alive
            .get("SuccessfulExit")
            .and_then(plist::Value::as_boolean),
        Some(false),
        "{PLIST}: KeepAlive must restart the agent only when it fails, not after a clean stop"
    );
    assert_eq!(
        plist
            .get("ThrottleInterval")
            .and_then(plist::Value::as_unsigned_integer),
        Some(10),
        "{PLIST}: a failed agent is restarted after 10 s, as the systemd unit's RestartSec=10"
    );
    let program = plist_program(&plist);
    assert!(
        program
            .iter()
            .any(|a| a.contains(&format!("\"$HOME/{INSTALLED}\" agent"))),
        "{PLIST}: ProgramArguments {program:?} must run the installed ~/{INSTALLED} agent"
    );
}

/// A signed-in `CODEX_HOME` whose tokens are not due: an agent on it starts and waits.
fn signed_in_codex_home() -> TempDir {
    let codex_home = tempfile::tempdir().expect("cannot create a temp dir for CODEX_HOME");
    ChatgptCreds::fresh().write_to(codex_home.path());
    codex_home
}

/// `program args...` as a service manager starts it: `HOME` the user's home, `CODEX_HOME` the
/// signed-in home, no refresh request able to leave the loopback.
fn service_command(program: &[String], home: &Path, codex_home: &Path) -> Command {
    let mut command = Command::new(&program[0]);
    command.args(&program[1..]);
    for name in SCRUBBED_ENV {
        command.env_remove(name);
    }
    command
        .env("HOME", home)
        .env("CODEX_HOME", codex_home)
        .env("CODEX_REFRESH_TOKEN_URL_OVERRIDE", DEAD_TOKEN_URL);
    command
}

/// SIGTERM to the agent; it must exit 0 and say `stopped` (in `stderr()` once it ended).
fn stop(mut agent: Process, label: &str, stderr: impl Fn(&str) -> String) {
    let pid =
        rustix::process::Pid::from_raw(i32::try_from(agent.id()).expect("a pid")).expect("a pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM)
        .unwrap_or_else(|e| panic!("{label}: cannot send SIGTERM: {e}"));
    let finished = agent.finish(DEADLINE);
    let printed = stderr(&finished.stderr);
    assert_eq!(
        finished.status.code(),
        Some(exit::OK),
        "{label}: the agent did not stop cleanly on SIGTERM ({})\n{printed}",
        finished.status
    );
    assert!(
        printed.contains("stopped"),
        "{label}: the agent must say that it stopped\n{printed}"
    );
}

#[test]
fn the_shipped_units_exec_start_run_as_systemd_runs_it_starts_the_installed_agent() {
    let unit = read_dist(UNIT);
    let exec_start: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ExecStart="))
        .collect();
    assert_eq!(
        exec_start.len(),
        1,
        "{UNIT} must have exactly one ExecStart=: {exec_start:?}"
    );
    let home = installed_home();
    let codex_home = signed_in_codex_home();
    let home_text = home.path().to_str().expect("a UTF-8 temp path");
    let program: Vec<String> = exec_start[0]
        .split_whitespace()
        .map(|a| a.replace("%h", home_text))
        .collect();
    assert_eq!(
        program[0],
        home.path().join(INSTALLED).to_string_lossy(),
        "{UNIT}: ExecStart= must run the binary where `cargo install` puts it"
    );
    let command = service_command(&program, home.path(), codex_home.path());
    let agent = Process::spawn_command(format!("{UNIT}'s ExecStart {program:?}"), command)
        .with_event_timeout(DEADLINE);
    let started = agent.wait_for_stderr_line("started");
    assert!(
        started.contains(&format!("pid {}", agent.id())),
        "{UNIT}: ExecStart= must run the agent itself, as the process systemd watches: {started}"
    );
    stop(agent, UNIT, str::to_owned);
}

#[test]
fn the_shipped_plists_program_run_as_launchd_runs_it_starts_the_installed_agent_logging_in_home() {
    let program = plist_program(&plist());
    let home = installed_home();
    // macOS makes ~/Library/Logs for every user; the plist's command appends the agent's log there.
    let log = home.path().join("Library/Logs/codex-store-agent.log");
    std::fs::create_dir_all(log.parent().expect("a directory"))
        .expect("cannot make ~/Library/Logs");
    let codex_home = signed_in_codex_home();
    let command = service_command(&program, home.path(), codex_home.path());
    let agent = Process::spawn_command(format!("{PLIST}'s ProgramArguments {program:?}"), command)
        .with_event_timeout(DEADLINE);
    let read_log = |_: &str| std::fs::read_to_string(&log).unwrap_or_default();
    let want = format!("started: pid {}", agent.id());
    let deadline = Instant::now() + DEADLINE;
    while !read_log("").contains(&want) {
        assert!(
            Instant::now() < deadline,
            "{PLIST}: no `{want}` in {} within {DEADLINE:?} (the agent must be the process \
             launchd starts, exec'd by /bin/sh):\n{}",
            log.display(),
            read_log("")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stop(agent, PLIST, read_log);
}

/// The variables the lines `KEY=value` of `text` set.
fn assigned_names(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(name, _)| name))
        .collect()
}

#[test]
fn the_fleet_drop_in_takes_the_fleet_settings_from_fleet_env_and_never_puts_the_password_on_a_command_line(
) {
    let drop_in = read_dist(FLEET_DROP_IN);
    let settings: Vec<&str> = drop_in
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    assert!(
        settings.contains(&"EnvironmentFile=%h/.config/codex-store/fleet.env"),
        "{FLEET_DROP_IN} must read ~/.config/codex-store/fleet.env (EnvironmentFile=), and \
         not optionally (`-`): a fleet machine without its settings must not start alone"
    );
    for text in [read_dist(UNIT), drop_in.clone()] {
        for line in text.lines().filter(|l| l.contains("ExecStart")) {
            assert!(
                !line.contains("PASSWORD") && !line.contains("--fleet-password"),
                "a command line of the shipped units names the password (`ps` shows it): {line}"
            );
        }
    }
    let example = read_dist(FLEET_ENV_EXAMPLE);
    let names = assigned_names(&example);
    for want in ["CODEX_STORE_FLEET", "CODEX_STORE_FLEET_PASSWORD"] {
        assert!(
            names.contains(&want),
            "{FLEET_ENV_EXAMPLE} must set {want}: {names:?}"
        );
    }
    let help = Command::new(CODEX_STORE)
        .args(["agent", "--help"])
        .output()
        .expect("cannot run codex-store agent --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for name in names {
        assert!(
            help.contains(name),
            "{FLEET_ENV_EXAMPLE} sets {name}, which `codex-store agent --help` does not name: \
             the agent would ignore it"
        );
    }
}

#[test]
fn the_unit_lines_the_readme_shows_are_lines_of_the_shipped_unit() {
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&readme_path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", readme_path.display()));
    let marker = format!("as shipped in `cli/dist/{UNIT}`");
    let after = readme
        .split_once(&marker)
        .unwrap_or_else(|| panic!("the README no longer shows the unit ({marker:?})"))
        .1;
    let block = after
        .split_once("```ini\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .unwrap_or_else(|| panic!("no ```ini block follows {marker:?} in the README"))
        .0;
    let unit = read_dist(UNIT);
    let unit_lines: Vec<&str> = unit.lines().map(str::trim).collect();
    let shown: Vec<&str> = block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert!(!shown.is_empty(), "the README's unit block is empty");
    for line in shown {
        assert!(
            unit_lines.contains(&line),
            "the README shows `{line}`, which is not a line of cli/dist/{UNIT}: update one of them"
        );
    }
}
