//! Shared pieces of the multi-process store tests (`tests/tests/store_*.rs`) and of the
//! `store-worker` helper binary: the counter document, child processes whose stdout lines arrive
//! as events, and a tiny seeded random number generator.
//!
//! The counter lives in the top-level key [`COUNTER_KEY`] of auth.json, an unknown key to the
//! store, so it also exercises "unknown keys survive a rewrite". The API key is always set so
//! every document is a valid API-key login.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use codex_store::{AuthDotJson, Secret, Snapshot};
use serde_json::Value;

/// The top-level key holding the counter.
pub const COUNTER_KEY: &str = "counter";

/// The API key every counter document carries.
pub const TEST_API_KEY: &str = "sk-store-test-key";

/// A generous bound for any single event from a child. It only turns a hang into a failure; no
/// test relies on it elapsing.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(60);

/// The counter of a document; a document without one counts as 0.
pub fn counter_of(doc: &AuthDotJson) -> Result<u64, String> {
    match doc.extra.get(COUNTER_KEY) {
        None => Ok(0),
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| format!("{COUNTER_KEY} is not a non-negative integer: {n}")),
        Some(other) => Err(format!("{COUNTER_KEY} is not a number: {other}")),
    }
}

/// The counter of a snapshot; no file counts as 0.
pub fn snapshot_counter(snapshot: &Snapshot) -> Result<u64, String> {
    snapshot.auth().map_or(Ok(0), counter_of)
}

/// `base` (or a new document) with the counter set to `counter` and the test API key set.
pub fn with_counter(base: Option<&AuthDotJson>, counter: u64) -> AuthDotJson {
    let mut doc = base.cloned().unwrap_or_default();
    doc.openai_api_key = Some(Secret::new(TEST_API_KEY));
    doc.extra
        .insert(COUNTER_KEY.to_owned(), Value::from(counter));
    doc
}

/// Parses `committed <n>` lines printed by `store-worker write-loop`.
pub fn parse_committed(line: &str) -> Option<u64> {
    line.strip_prefix("committed ")?.trim().parse().ok()
}

/// xorshift64*: small, seeded, good enough to pick crash moments.
#[derive(Debug, Clone)]
pub struct XorShift {
    seed: u64,
    state: u64,
}

impl XorShift {
    /// Seeded from `STORE_TEST_SEED` when set (to replay a failure), else from the clock.
    pub fn from_env_or_time() -> Self {
        let seed = std::env::var("STORE_TEST_SEED")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or_else(|| {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                now.as_secs()
                    ^ (u64::from(now.subsec_nanos()) << 20)
                    ^ u64::from(std::process::id())
            });
        Self::new(seed)
    }

    /// A generator with this seed (0 is replaced, xorshift would stay at 0).
    pub fn new(seed: u64) -> Self {
        let state = if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        };
        XorShift { seed, state }
    }

    /// The seed; setting `STORE_TEST_SEED` to it replays the same draws.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The next raw value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }
}

/// Why a line did not arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineError {
    /// The child closed its stdout (it exited) first.
    Eof,
    /// Nothing arrived within the bound.
    TimedOut(Duration),
}

/// A child process whose stdout lines arrive on a channel and whose stderr is collected. Dropping
/// it kills and reaps the child, so no test leaves a process behind even when it fails.
pub struct Worker {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    reaped: Option<ExitStatus>,
}

impl Worker {
    /// Starts `program args...` with piped stdin, stdout and stderr.
    pub fn spawn<I, S>(program: impl AsRef<OsStr>, args: I) -> Worker
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new(program.as_ref());
        command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let name = format!("{command:?}");
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout was piped");
        let stderr_pipe = child.stderr.take().expect("stderr was piped");
        let (tx, lines) = mpsc::channel();
        let stdout_reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let stderr_reader = std::thread::spawn(move || {
            let mut pipe = stderr_pipe;
            let mut buf = [0u8; 4096];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if let Ok(mut s) = sink.lock() {
                            s.push_str(&String::from_utf8_lossy(&buf[..n]));
                        }
                    }
                }
            }
        });
        Worker {
            name,
            child,
            stdin,
            lines,
            stderr,
            readers: vec![stdout_reader, stderr_reader],
            reaped: None,
        }
    }

    /// The command line, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the child has exited (reaping it), `None` while it runs.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.reaped.is_some() {
            return self.reaped;
        }
        match self.child.try_wait() {
            Ok(Some(_)) => Some(self.reap()),
            Ok(None) => None,
            Err(e) => panic!("{}: cannot poll: {e}", self.name),
        }
    }

    /// What the child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The next stdout line.
    pub fn next_line(&self, timeout: Duration) -> Result<String, LineError> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => Ok(line),
            Err(RecvTimeoutError::Disconnected) => Err(LineError::Eof),
            Err(RecvTimeoutError::Timeout) => Err(LineError::TimedOut(timeout)),
        }
    }

    /// Waits for the next line and panics (naming the child and its stderr) unless it is `want`.
    pub fn expect_line(&self, want: &str) {
        match self.next_line(EVENT_TIMEOUT) {
            Ok(line) if line == want => {}
            Ok(line) => panic!(
                "{}: expected the line {want:?}, got {line:?}; stderr: {}",
                self.name,
                self.stderr()
            ),
            Err(e) => panic!(
                "{}: expected the line {want:?}, got {e:?}; stderr: {}",
                self.name,
                self.stderr()
            ),
        }
    }

    /// Writes a line to the child's stdin.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin already closed");
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("{}: cannot write to stdin: {e}", self.name));
    }

    /// Closes the child's stdin (it sees EOF).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits until the child closes stdout, returning every line it printed meanwhile, then reaps
    /// it. Panics if that takes longer than `timeout`.
    pub fn finish(&mut self, timeout: Duration) -> (Vec<String>, ExitStatus) {
        let deadline = Instant::now() + timeout;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!(
                    "{}: still running after {timeout:?}; lines so far: {lines:?}; stderr: {}",
                    self.name,
                    self.stderr()
                ),
            }
        }
        (lines, self.reap())
    }

    /// SIGKILLs the child, reaps it, and returns every stdout line it printed that was not read
    /// yet (the pipe is drained to EOF, so this is all it ever printed).
    pub fn kill_and_drain(&mut self) -> Vec<String> {
        let _ = self.child.kill();
        self.reap();
        let mut lines = Vec::new();
        while let Ok(line) = self.lines.recv() {
            lines.push(line);
        }
        lines
    }

    fn reap(&mut self) -> ExitStatus {
        if let Some(status) = self.reaped {
            return status;
        }
        let status = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("{}: cannot reap: {e}", self.name));
        self.reaped = Some(status);
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        status
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stdin = None;
        if self.reaped.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
