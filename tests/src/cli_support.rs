//! Running the `codex-store` command from tests and examples: locating the binary, running it
//! with a clean environment, and recording everything it printed for the leak scan of
//! [`crate::secrets`] ([`crate::secrets::assert_no_secret_leaked`]).
//!
//! Messages never show a raw secret: [`redact`] replaces every registered secret by its
//! [`fingerprint`]. Credentials to run it on come from [`crate::fixtures`].

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::OnceLock;
use std::time::Duration;

use crate::process::{Finished, Process};
use crate::secrets::record;
/// How the messages of a run name and hide secrets (the kit's one scanner, [`crate::secrets`]).
pub use crate::secrets::{fingerprint, redact};

/// The bound on one run of the command. It only turns a hang into a failure; no test relies on
/// it elapsing.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// Environment variables a run never inherits: a test that wants one passes it explicitly.
pub const SCRUBBED_ENV: [&str; 4] = [
    "CODEX_HOME",
    "CODEX_REFRESH_TOKEN_URL_OVERRIDE",
    "RUST_LOG",
    "CODEX_STORE_LOCK_TIMEOUT",
];

/// Where a run that was given no token URL sends refresh requests: port 9 (discard) on the
/// loopback, where nothing listens, so that no test can ever reach the real endpoint.
pub const DEAD_TOKEN_URL: &str = "http://127.0.0.1:9/oauth/token";

/// The documented exit codes (cli/src/main.rs).
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// Any other error.
    pub const OTHER: i32 = 1;
    /// Usage error.
    pub const USAGE: i32 = 2;
    /// Sign-in required.
    pub const SIGN_IN_REQUIRED: i32 = 3;
    /// Transient refresh failure.
    pub const TRANSIENT: i32 = 4;
    /// Lock timeout.
    pub const LOCK_TIMEOUT: i32 = 5;
    /// Corrupt auth.json.
    pub const CORRUPT: i32 = 6;
    /// A mode codex-store does not serve.
    pub const UNSUPPORTED_MODE: i32 = 7;
    /// `agent`: another agent already runs for the home.
    pub const AGENT_RUNNING: i32 = 8;
    /// `refresh`, or `token` with due tokens, on a fleet machine: the fleet's agents refresh.
    pub const FLEET_REFRESHES: i32 = 9;
    /// `status`: the login works but needs attention.
    pub const ATTENTION: i32 = 10;
}

// ---------------------------------------------------------------------------------------------
// Locating the binary
// ---------------------------------------------------------------------------------------------

static CODEX_STORE: OnceLock<PathBuf> = OnceLock::new();

/// Names the `codex-store` binary under test: the cli package's tests pass
/// `env!("CARGO_BIN_EXE_codex-store")`, the binary cargo built for them. The first call wins.
pub fn use_codex_store_bin(path: &str) {
    let _ = CODEX_STORE.set(PathBuf::from(path));
}

/// The `codex-store` binary: the one given to [`use_codex_store_bin`], else `CODEX_STORE_BIN`,
/// else `target/<profile>/codex-store` beside the running program (examples, benches), which
/// must already be built (see [`crate::programs::built`]). Nothing here runs cargo.
pub fn codex_store_bin() -> PathBuf {
    if let Some(bin) = CODEX_STORE.get() {
        return bin.clone();
    }
    if let Some(bin) = std::env::var_os("CODEX_STORE_BIN").filter(|v| !v.is_empty()) {
        return PathBuf::from(bin);
    }
    crate::programs::built("codex-store", "codex-store-cli")
}

// ---------------------------------------------------------------------------------------------
// Running the command
// ---------------------------------------------------------------------------------------------

/// The result of a finished run.
#[derive(Clone, Debug)]
pub struct CliOutput {
    /// The arguments after `--home DIR`.
    pub args: Vec<String>,
    /// The exit status.
    pub status: ExitStatus,
    /// Everything written to stdout.
    pub stdout: String,
    /// Everything written to stderr.
    pub stderr: String,
}

impl CliOutput {
    /// The exit code (`None` when killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// A description safe to put in an assertion message: the command, the status, and both
    /// streams with every registered secret redacted.
    pub fn describe(&self) -> String {
        format!(
            "`codex-store {}` exited {}\n--- stdout ---\n{}--- stderr ---\n{}--------------",
            redact(&self.args.join(" ")),
            self.status,
            redact(&self.stdout),
            redact(&self.stderr)
        )
    }

    /// Panics with [`describe`](Self::describe) unless the exit code is `want`.
    #[track_caller]
    pub fn expect_code(&self, want: i32, why: &str) -> &Self {
        assert_eq!(
            self.code(),
            Some(want),
            "{why}: wanted exit code {want}\n{}",
            self.describe()
        );
        self
    }

    /// Panics (showing fingerprints only) unless stdout is exactly `bearer` and one newline.
    #[track_caller]
    pub fn expect_token(&self, bearer: &str, why: &str) -> &Self {
        let printed = self.stdout.strip_suffix('\n').unwrap_or(&self.stdout);
        assert!(
            self.stdout == format!("{bearer}\n"),
            "{why}: stdout should be exactly the bearer (fingerprint {}) and a newline, but it \
             holds {} bytes (fingerprint without the last newline: {})\n{}",
            fingerprint(bearer),
            self.stdout.len(),
            fingerprint(printed),
            self.describe()
        );
        self
    }

    /// Panics with `why` and [`describe`](Self::describe) unless stdout is empty.
    #[track_caller]
    pub fn expect_empty_stdout(&self, why: &str) -> &Self {
        assert!(self.stdout.is_empty(), "{why}\n{}", self.describe());
        self
    }

    /// Panics with `why` and [`describe`](Self::describe) unless stdout contains every one of
    /// `needles`.
    #[track_caller]
    pub fn expect_stdout_contains(&self, needles: &[&str], why: &str) -> &Self {
        self.expect_all_in(&self.stdout, needles, why)
    }

    /// Panics with `why` and [`describe`](Self::describe) unless stderr contains every one of
    /// `needles`.
    #[track_caller]
    pub fn expect_stderr_contains(&self, needles: &[&str], why: &str) -> &Self {
        self.expect_all_in(&self.stderr, needles, why)
    }

    #[track_caller]
    fn expect_all_in(&self, text: &str, needles: &[&str], why: &str) -> &Self {
        assert!(
            needles.iter().all(|n| text.contains(n)),
            "{why}\n{}",
            self.describe()
        );
        self
    }

    /// stdout parsed as JSON; panics (redacted) when it is not.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{}", self.describe()))
    }
}

fn build_command(home: Option<&Path>, args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut command = Command::new(codex_store_bin());
    if let Some(home) = home {
        command.arg("--home").arg(home);
    }
    command.args(args);
    for name in SCRUBBED_ENV {
        command.env_remove(name);
    }
    if !envs
        .iter()
        .any(|(k, _)| *k == "CODEX_REFRESH_TOKEN_URL_OVERRIDE")
    {
        command.env("CODEX_REFRESH_TOKEN_URL_OVERRIDE", DEAD_TOKEN_URL);
    }
    for (name, value) in envs {
        command.env(name, value);
    }
    command
}

/// Runs `codex-store --home HOME ARGS...` to the end with `stdin` (none: an empty stdin) and
/// `envs` added to an environment without [`SCRUBBED_ENV`] (the token URL defaults to
/// [`DEAD_TOKEN_URL`]). Records what it printed. Panics if it runs longer than [`RUN_TIMEOUT`].
pub fn run(home: &Path, args: &[&str], stdin: Option<&str>, envs: &[(&str, &str)]) -> CliOutput {
    spawn(home, args, stdin, envs).finish(RUN_TIMEOUT)
}

/// Runs `codex-store ARGS...` like [`run`] but without `--home`, so that the home comes from
/// `CODEX_HOME` or `HOME` in `envs` (the inherited `CODEX_HOME` is removed all the same).
pub fn run_without_home(args: &[&str], stdin: Option<&str>, envs: &[(&str, &str)]) -> CliOutput {
    Running::start(build_command(None, args, envs), args, stdin).finish(RUN_TIMEOUT)
}

/// Starts `codex-store --home HOME ARGS...` like [`run`], without waiting for it. `stdin` is
/// written and closed at once.
pub fn spawn(home: &Path, args: &[&str], stdin: Option<&str>, envs: &[(&str, &str)]) -> Running {
    Running::start(build_command(Some(home), args, envs), args, stdin)
}

/// A running `codex-store`: a [`Process`] (waiting [`RUN_TIMEOUT`] for each line) whose output is
/// recorded when it ends, finished or dropped (a drop kills it).
pub struct Running {
    process: Process,
    args: Vec<String>,
    recorded: bool,
}

impl Running {
    fn start(command: Command, args: &[&str], stdin: Option<&str>) -> Running {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let name = format!("`codex-store {}`", redact(&args.join(" ")));
        let mut process = Process::spawn_command(name, command).with_event_timeout(RUN_TIMEOUT);
        process.feed_stdin(stdin.unwrap_or_default());
        Running {
            process,
            args,
            recorded: false,
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.process.id()
    }

    /// See [`Process::try_status`].
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.process.try_status()
    }

    /// What it wrote to stderr so far (not redacted).
    pub fn stderr(&self) -> String {
        self.process.stderr()
    }

    /// See [`Process::wait_for_stderr_line`].
    pub fn wait_for_stderr_line(&self, needle: &str) -> String {
        self.process.wait_for_stderr_line(needle)
    }

    /// Waits for the process to end ([`Process::finish`]) and records what it printed.
    pub fn finish(mut self, timeout: Duration) -> CliOutput {
        let finished = self.process.finish(timeout);
        self.record(finished)
    }

    fn record(&mut self, finished: Finished) -> CliOutput {
        self.recorded = true;
        record(&self.args, &finished.stdout, &finished.stderr);
        CliOutput {
            args: self.args.clone(),
            status: finished.status,
            stdout: finished.stdout,
            stderr: finished.stderr,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.recorded {
            let killed = self.process.kill();
            self.record(killed);
        }
    }
}

/// A `store-worker hold-lock HOME` child (the `store-worker` binary of this package, whose path
/// integration tests get from `env!("CARGO_BIN_EXE_store-worker")`) that has printed `locked`.
/// Closing its stdin (or dropping it) releases the lock.
pub fn hold_lock(store_worker: &str, home: &Path) -> Process {
    let holder = Process::spawn(store_worker, ["hold-lock".as_ref(), home.as_os_str()]);
    holder.expect_line("locked");
    holder
}
