//! Planted files under the store's own names (issue 15, item 4): anyone who can write the
//! directory can put a FIFO, or a link to `/dev/zero`, where the store keeps a rotation file, an
//! in-place leftover, a temp file, the journal, the agent's status, claim or temp file, or the
//! fleet state. None of that may hang a command (least of all while it holds Codex's locks, which
//! every Codex process then waits for without limit) or make it read without bound: every command
//! must end with its normal outcome.
//!
//! Every run is the real binary under a bounded address space (`ulimit -v` in a `sh` wrapper: an
//! unbounded read of `/dev/zero` fails its allocation instead of eating the machine's memory),
//! with a generous deadline that only turns a hang into a failure naming the command and the
//! file. Orders come from events (a line on stderr, a process exit), never from sleeping.

use std::fs::File;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use crate::kit::{
    assert_no_secret_leaked, auth_path, exit, read_json, register_last_issued, run, temp_home,
    ChatgptCreds, CliOutput, SCRUBBED_ENV,
};
use codex_store::{CODEX_LOCK_FILE, LOCK_FILE};
use codex_store_tests::etcd::EtcdCluster;
use codex_store_tests::fake_idp::FakeIdp;
use codex_store_tests::process::Process;
use codex_store_tests::secrets::record;
use tempfile::TempDir;

const URL_ENV: &str = "CODEX_REFRESH_TOKEN_URL_OVERRIDE";
/// The bound on each run, and on each line awaited: a hang detector, not a timing assertion.
const DEADLINE: Duration = Duration::from_secs(20);
/// The address space of each run, in KiB (`ulimit -v`): about 2 GB, far above what a command
/// needs, far below what reading `/dev/zero` whole asks for.
const MEMORY_LIMIT_KIB: u64 = 2_000_000;

/// One of the store's own file names, and what the store's commands do with an entry there.
struct SideName {
    /// What the file is, for messages.
    what: &'static str,
    /// Its name in the home.
    name: String,
    /// The commands whose write removes a planted entry there (it is theirs to clean up):
    /// in-place leftovers are finished or removed before every write and refresh, temp files
    /// swept by every transaction (`logout`).
    removed_by: &'static [&'static str],
    /// Whether the agent can run with a planted entry there (it cannot claim a store whose
    /// claim file is not a regular file: it refuses at once, naming it).
    agent_runs: bool,
}

fn side_names() -> Vec<SideName> {
    let name = |what, name: &str, removed_by, agent_runs| SideName {
        what,
        name: name.to_owned(),
        removed_by,
        agent_runs,
    };
    let rotation = format!(
        ".auth.json.codex-store-rotation.{}.000000000000.1.0",
        "0".repeat(64)
    );
    vec![
        name("rotation file", &rotation, &[], true),
        name(
            "in-place leftover",
            ".auth.json.codex-store-inplace.1.0",
            &["token", "refresh", "logout"],
            true,
        ),
        name(
            "temp file",
            ".auth.json.codex-store-tmp.1.0",
            &["logout"],
            true,
        ),
        name("journal", "auth.json.journal", &[], true),
        name("agent status", "auth.json.agent", &[], true),
        name("agent status temp file", "auth.json.agent.tmp", &[], true),
        name("agent claim", "auth.json.agent.lock", &[], false),
        name("fleet state", "auth.json.fleet", &[], true),
        name("fleet state temp file", "auth.json.fleet.tmp", &[], true),
    ]
}

/// What is planted.
#[derive(Clone, Copy)]
enum Hostile {
    Fifo,
    DevZeroLink,
}

impl Hostile {
    const ALL: [Hostile; 2] = [Hostile::Fifo, Hostile::DevZeroLink];

    fn describe(self) -> &'static str {
        match self {
            Hostile::Fifo => "a FIFO",
            Hostile::DevZeroLink => "a link to /dev/zero",
        }
    }

    fn plant(self, path: &Path) {
        match self {
            Hostile::Fifo => codex_store_tests::fixtures::make_fifo(path),
            Hostile::DevZeroLink => std::os::unix::fs::symlink("/dev/zero", path)
                .unwrap_or_else(|e| panic!("cannot link {} to /dev/zero: {e}", path.display())),
        }
    }

    /// Whether the entry at `path` is still the planted one.
    fn is_at(self, path: &Path) -> bool {
        use std::os::unix::fs::FileTypeExt;
        std::fs::symlink_metadata(path).is_ok_and(|m| match self {
            Hostile::Fifo => m.file_type().is_fifo(),
            Hostile::DevZeroLink => m.file_type().is_symlink(),
        })
    }
}

/// One run's set-up: a home signed in with an expired access token (every command that can
/// refresh does), the endpoint for it, and the hostile entry planted.
struct Case<'a> {
    side: &'a SideName,
    hostile: Hostile,
    home: TempDir,
    idp: FakeIdp,
}

impl<'a> Case<'a> {
    fn new(side: &'a SideName, hostile: Hostile) -> Case<'a> {
        let creds = ChatgptCreds::expired();
        let home = temp_home();
        creds.write_to(home.path());
        let idp = creds.start_idp();
        hostile.plant(&home.path().join(&side.name));
        Case {
            side,
            hostile,
            home,
            idp,
        }
    }

    /// `` `codex-store ARGS` with a FIFO at NAME (what) ``, for every message.
    fn label(&self, args: &[&str]) -> String {
        format!(
            "`codex-store {}` with {} at {} (the {})",
            args.join(" "),
            self.hostile.describe(),
            self.side.name,
            self.side.what
        )
    }

    fn planted(&self) -> PathBuf {
        self.home.path().join(&self.side.name)
    }
}

/// `codex-store --home HOME ARGS...` through `sh -c 'ulimit -v ...; exec ...'`, with the
/// environment the kit gives every run (nothing inherited that matters, the token URL `url`).
fn bounded_command(home: &Path, args: &[&str], url: &str) -> Command {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!(
            "ulimit -v {MEMORY_LIMIT_KIB} && exec \"$0\" \"$@\""
        ))
        .arg(crate::kit::codex_store_bin())
        .arg("--home")
        .arg(home)
        .args(args);
    for name in SCRUBBED_ENV {
        command.env_remove(name);
    }
    command.env(URL_ENV, url);
    command
}

fn spawn_bounded(label: &str, home: &Path, args: &[&str], url: &str) -> Process {
    Process::spawn_command(label, bounded_command(home, args, url)).with_event_timeout(DEADLINE)
}

/// Waits (at most [`DEADLINE`], else panics naming `label`: it hung) for the end of `process`,
/// records what it printed for the leak scan, and returns it.
fn finish(mut process: Process, args: &[&str]) -> CliOutput {
    let finished = process.finish(DEADLINE);
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    record(&args, &finished.stdout, &finished.stderr);
    CliOutput {
        args,
        status: finished.status,
        stdout: finished.stdout,
        stderr: finished.stderr,
    }
}

/// Panics unless Codex's two locks in `home` (`auth.lock`, `auth.json.lock`) can be taken at
/// once: no codex-store process holds them now.
fn assert_codex_locks_free(home: &Path, label: &str) {
    use rustix::fs::{flock, FlockOperation};
    for name in [CODEX_LOCK_FILE, LOCK_FILE] {
        let path = home.join(name);
        let Ok(file) = File::open(&path) else {
            continue; // never created: nobody holds it
        };
        let taken = flock(&file, FlockOperation::NonBlockingLockExclusive);
        assert!(
            taken.is_ok(),
            "{label}: {name} is held ({taken:?}), so every Codex process waits for it"
        );
        let _ = flock(&file, FlockOperation::Unlock);
    }
}

/// `token`, `refresh`, `logout` and `inspect` each to its end, and the agent started, seen
/// refreshing and stopped, each in a home of its own: each must have its normal outcome. Returns
/// the failures (each names the command and the file).
fn run_every_command(side: &SideName, hostile: Hostile) -> Vec<String> {
    let commands: [fn(&Case); 5] = [token, refresh, logout, inspect, agent];
    commands
        .into_iter()
        .filter_map(|command| {
            catch_unwind(AssertUnwindSafe(|| command(&Case::new(side, hostile))))
                .err()
                .map(|payload| panic_text(payload.as_ref()))
        })
        .collect()
}

fn run_in(case: &Case, args: &[&str]) -> (CliOutput, String) {
    let label = case.label(args);
    let out = finish(
        spawn_bounded(&label, case.home.path(), args, &case.idp.url()),
        args,
    );
    register_last_issued(&case.idp);
    assert_codex_locks_free(case.home.path(), &label);
    (out, label)
}

/// A write removes what is planted at a name that is the store's to clean up.
fn assert_removed_by_a_write(case: &Case, command: &str, label: &str) {
    if case.side.removed_by.contains(&command) {
        assert!(
            !case.hostile.is_at(&case.planted()),
            "{label}: the write left the planted entry in place"
        );
    }
}

fn token(case: &Case) {
    let (out, label) = run_in(case, &["token"]);
    let issued = case
        .idp
        .last_issued()
        .unwrap_or_else(|| panic!("{label}: the endpoint issued nothing\n{}", out.describe()));
    out.expect_code(exit::OK, &label)
        .expect_token(&issued.access_token, &label);
    case.idp
        .expect_requests(1, &format!("{label}: one refresh request"));
    assert_removed_by_a_write(case, "token", &label);
}

fn refresh(case: &Case) {
    let (out, label) = run_in(case, &["refresh"]);
    out.expect_code(exit::OK, &label);
    let issued = case
        .idp
        .last_issued()
        .unwrap_or_else(|| panic!("{label}: the endpoint issued nothing\n{}", out.describe()));
    let stored = read_json(&auth_path(case.home.path()));
    assert!(
        stored["tokens"]["refresh_token"] == issued.refresh_token.as_str(),
        "{label}: auth.json does not hold the issued refresh token\n{}",
        out.describe()
    );
    assert_removed_by_a_write(case, "refresh", &label);
}

fn logout(case: &Case) {
    let (out, label) = run_in(case, &["logout"]);
    out.expect_code(exit::OK, &label);
    assert!(
        !auth_path(case.home.path()).exists(),
        "{label}: auth.json is still there\n{}",
        out.describe()
    );
    assert_removed_by_a_write(case, "logout", &label);
}

fn inspect(case: &Case) {
    let (out, label) = run_in(case, &["inspect", "--json", "--history"]);
    out.expect_code(exit::OK, &label);
    let report = out.json();
    let problems = report["problems"].as_array().cloned().unwrap_or_default();
    assert!(
        problems
            .iter()
            .filter_map(|p| p.as_str())
            .any(|p| p.contains(&case.side.name) && p.contains("not a regular file")),
        "{label}: no problem names the planted file as not a regular file\n{}",
        out.describe()
    );
    assert!(
        case.hostile.is_at(&case.planted()),
        "{label}: inspect changed the planted entry (it must only report)"
    );
    case.idp
        .expect_requests(0, &format!("{label}: inspect never refreshes"));
}

fn agent(case: &Case) {
    let args = ["agent", "--lead", "310"];
    let label = case.label(&args);
    let process = spawn_bounded(&label, case.home.path(), &args, &case.idp.url());
    if !case.side.agent_runs {
        let out = finish(process, &args);
        assert!(
            out.code() != Some(exit::OK) && out.stderr.contains(&case.side.name),
            "{label}: the agent must refuse to claim the store, naming the file\n{}",
            out.describe()
        );
        assert_codex_locks_free(case.home.path(), &label);
        return;
    }
    process.wait_for_stderr_line("started");
    process.wait_for_stderr_line("refreshed");
    register_last_issued(&case.idp);
    // Running, it holds none of Codex's locks.
    assert_codex_locks_free(case.home.path(), &label);
    stop(process, &args, &label);
}

/// SIGTERM, and the agent must exit 0 within [`DEADLINE`].
fn stop(process: Process, args: &[&str], label: &str) -> CliOutput {
    let pid =
        rustix::process::Pid::from_raw(i32::try_from(process.id()).expect("a pid")).expect("a pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM)
        .unwrap_or_else(|e| panic!("{label}: cannot send SIGTERM: {e}"));
    let out = finish(process, args);
    out.expect_code(
        exit::OK,
        &format!("{label}: the agent did not stop cleanly"),
    );
    out
}

/// The text of a caught panic.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

#[test]
fn a_fifo_or_a_dev_zero_link_at_any_side_file_name_ends_every_command_with_its_normal_outcome() {
    let sides = side_names();
    let failures = Mutex::new(Vec::new());
    // One thread per file and kind, so that hangs (each ended by its deadline) do not add up;
    // every case runs, and the failures are listed together.
    std::thread::scope(|scope| {
        for side in &sides {
            for hostile in Hostile::ALL {
                let failures = &failures;
                scope.spawn(move || {
                    let failed = run_every_command(side, hostile);
                    failures
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend(failed);
                });
            }
        }
    });
    let failures = failures.into_inner().unwrap_or_else(|p| p.into_inner());
    assert!(
        failures.is_empty(),
        "{} of {} runs failed with a planted file:\n\n{}",
        failures.len(),
        sides.len() * Hostile::ALL.len() * 5,
        failures.join("\n\n")
    );
    assert_no_secret_leaked();
}

#[test]
fn a_fifo_or_a_dev_zero_link_at_the_fleet_state_lets_a_fleet_agent_refresh_save_its_state_and_stop()
{
    let cluster = EtcdCluster::start(1);
    let side = side_names()
        .into_iter()
        .find(|s| s.name == "auth.json.fleet")
        .expect("the fleet state is a side name");
    for hostile in Hostile::ALL {
        let case = Case::new(&side, hostile);
        let prefix = format!("/codex-store-tests/{}", crate::kit::unique("hostile"));
        let fleet = |rest: &[&str]| -> Vec<String> {
            let mut args: Vec<String> = rest.iter().map(|a| (*a).to_owned()).collect();
            for extra in [
                "--fleet",
                &cluster.endpoint(0),
                "--fleet-prefix",
                &prefix,
                "--machine",
                "m0",
            ] {
                args.push(extra.to_owned());
            }
            args
        };
        let seed = fleet(&["fleet", "seed"]);
        let seed: Vec<&str> = seed.iter().map(String::as_str).collect();
        run(case.home.path(), &seed, None, &[]).expect_code(
            exit::OK,
            &format!("{}: seeding the fleet", case.label(&seed)),
        );
        let args = fleet(&["agent", "--lead", "310"]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let label = case.label(&args);
        let agent = spawn_bounded(&label, case.home.path(), &args, &case.idp.url());
        agent.wait_for_stderr_line("started");
        agent.wait_for_stderr_line("refreshed");
        register_last_issued(&case.idp);
        assert_codex_locks_free(case.home.path(), &label);
        let out = stop(agent, &args, &label);
        // The state the agent saved replaced the planted entry with a regular file of its own.
        let state = case.planted();
        let meta = std::fs::symlink_metadata(&state);
        assert!(
            meta.as_ref().is_ok_and(|m| m.file_type().is_file())
                && read_json(&state)["prefix"] == prefix.as_str(),
            "{label}: the fleet state is not the agent's saved state ({meta:?})\n{}",
            out.describe()
        );
    }
    assert_no_secret_leaked();
}
