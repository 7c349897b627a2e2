//! Running the `codex-store` command from tests and examples: locating the binary, running it
//! with a clean environment, and recording everything it printed for the leak scan of
//! [`crate::secrets`] ([`crate::secrets::assert_no_secret_leaked`]).
//!
//! Messages never show a raw secret: [`redact`] replaces every registered secret by its
//! [`fingerprint`]. Credentials to run it on come from [`crate::fixtures`].

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::secrets::record;
/// How the messages of a run name and hide secrets (the kit's one scanner, [`crate::secrets`]).
pub use crate::secrets::{fingerprint, redact};
use crate::worker::Worker;

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
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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

fn build_command(
    home: Option<&Path>,
    args: &[&str],
    envs: &[(&str, &str)],
    stdin: bool,
) -> Command {
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
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Runs `codex-store --home HOME ARGS...` to the end with `stdin` (none: /dev/null) and `envs`
/// added to an environment without [`SCRUBBED_ENV`] (the token URL defaults to
/// [`DEAD_TOKEN_URL`]). Records what it printed. Panics if it runs longer than [`RUN_TIMEOUT`].
pub fn run(home: &Path, args: &[&str], stdin: Option<&str>, envs: &[(&str, &str)]) -> CliOutput {
    spawn(home, args, stdin, envs).finish(RUN_TIMEOUT)
}

/// A running `codex-store`. Its stderr lines arrive as events; dropping it kills and reaps the
/// process and records what it printed.
pub struct Running {
    args: Vec<String>,
    child: Child,
    stdout: Receiver<String>,
    stderr_lines: Receiver<String>,
    stderr_all: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    finished: bool,
}

/// Starts `codex-store --home HOME ARGS...` like [`run`], without waiting for it. `stdin` is
/// written and closed at once; `None` leaves stdin at /dev/null.
pub fn spawn(home: &Path, args: &[&str], stdin: Option<&str>, envs: &[(&str, &str)]) -> Running {
    spawn_command(
        build_command(Some(home), args, envs, stdin.is_some()),
        args,
        stdin,
    )
}

/// Runs `codex-store ARGS...` like [`run`] but without `--home`, so that the home comes from
/// `CODEX_HOME` or `HOME` in `envs` (the inherited `CODEX_HOME` is removed all the same).
pub fn run_without_home(args: &[&str], stdin: Option<&str>, envs: &[(&str, &str)]) -> CliOutput {
    spawn_command(
        build_command(None, args, envs, stdin.is_some()),
        args,
        stdin,
    )
    .finish(RUN_TIMEOUT)
}

fn spawn_command(mut command: Command, args: &[&str], stdin: Option<&str>) -> Running {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start codex-store {}: {e}", redact(&args.join(" "))));
    let mut readers = Vec::new();
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let input = input.to_owned();
        // A child that exits without reading makes the write fail; that is its business.
        readers.push(std::thread::spawn(move || {
            let _ = pipe.write_all(input.as_bytes());
        }));
    }
    let mut out_pipe = child.stdout.take().expect("stdout was piped");
    let (out_tx, stdout) = mpsc::channel();
    readers.push(std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = out_pipe.read_to_end(&mut bytes);
        let _ = out_tx.send(String::from_utf8_lossy(&bytes).into_owned());
    }));
    let err_pipe = child.stderr.take().expect("stderr was piped");
    let (line_tx, stderr_lines) = mpsc::channel();
    let stderr_all = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&stderr_all);
    readers.push(std::thread::spawn(move || {
        let mut reader = BufReader::new(err_pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    lock(&sink).push_str(&text);
                    let _ = line_tx.send(text.trim_end_matches('\n').to_owned());
                }
            }
        }
    }));
    Running {
        args,
        child,
        stdout,
        stderr_lines,
        stderr_all,
        readers,
        finished: false,
    }
}

impl Running {
    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// What it wrote to stderr so far, redacted.
    pub fn stderr_so_far(&self) -> String {
        redact(&lock(&self.stderr_all))
    }

    /// Waits for a stderr line containing `needle` and returns it; panics (with the stderr so
    /// far, redacted) if the process closes stderr first or `timeout` passes.
    pub fn wait_for_stderr_line(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => panic!(
                    "`codex-store {}` printed no stderr line containing {needle:?} within \
                     {timeout:?}; stderr so far:\n{}",
                    redact(&self.args.join(" ")),
                    self.stderr_so_far()
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "`codex-store {}` closed stderr without a line containing {needle:?}; \
                     stderr:\n{}",
                    redact(&self.args.join(" ")),
                    self.stderr_so_far()
                ),
            }
        }
    }

    /// Waits for the process to close its output and exit, reaps it and records what it
    /// printed. Kills it and panics if that takes longer than `timeout`.
    pub fn finish(mut self, timeout: Duration) -> CliOutput {
        let deadline = Instant::now() + timeout;
        let stdout = match self
            .stdout
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(text) => text,
            Err(_) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.finished = true;
                self.join_and_record("");
                panic!(
                    "`codex-store {}` still ran after {timeout:?} and was killed; stderr:\n{}",
                    redact(&self.args.join(" ")),
                    self.stderr_so_far()
                );
            }
        };
        let status = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("cannot reap codex-store: {e}"));
        self.finished = true;
        self.join_and_record(&stdout);
        let stderr = lock(&self.stderr_all).clone();
        CliOutput {
            args: self.args.clone(),
            status,
            stdout,
            stderr,
        }
    }

    fn join_and_record(&mut self, stdout: &str) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let stderr = lock(&self.stderr_all).clone();
        record(&self.args, stdout, &stderr);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.finished = true;
            let stdout = self.stdout.try_recv().unwrap_or_default();
            self.join_and_record(&stdout);
        }
    }
}

/// A `store-worker hold-lock HOME` child (the `store-worker` binary of this package, whose path
/// integration tests get from `env!("CARGO_BIN_EXE_store-worker")`) that has printed `locked`.
/// Closing its stdin (or dropping it) releases the lock.
pub fn hold_lock(store_worker: &str, home: &Path) -> Worker {
    let holder = Worker::spawn(store_worker, ["hold-lock".as_ref(), home.as_os_str()]);
    holder.expect_line("locked");
    holder
}
