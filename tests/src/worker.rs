//! A helper process of the multi-process tests (`store-worker`, `refresh-worker`): its stdout
//! lines arrive on a channel as events, its stderr is collected for messages, and dropping it
//! kills and reaps it, so no test leaves a process behind even when it fails.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A generous bound for any single event from a child, unless
/// [`with_event_timeout`](Worker::with_event_timeout) set another. It only turns a hang into a
/// failure; no test relies on it elapsing.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(60);

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
    event_timeout: Duration,
}

impl Worker {
    /// Starts `program args...` with piped stdin, stdout and stderr, named by its command line.
    pub fn spawn<I, S>(program: impl AsRef<OsStr>, args: I) -> Worker
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new(program.as_ref());
        command.args(args);
        let name = format!("{command:?}");
        Worker::spawn_command(name, command)
    }

    /// Starts `command` with piped stdin, stdout and stderr; `name` names it in messages.
    pub fn spawn_command(name: impl Into<String>, mut command: Command) -> Worker {
        let name = name.into();
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
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
                    Ok(n) => sink
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_str(&String::from_utf8_lossy(&buf[..n])),
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
            event_timeout: EVENT_TIMEOUT,
        }
    }

    /// The same worker, waiting at most `timeout` for an event in [`expect_line`],
    /// [`line`] and [`exit`] (instead of [`EVENT_TIMEOUT`]).
    ///
    /// [`expect_line`]: Worker::expect_line
    /// [`line`]: Worker::line
    /// [`exit`]: Worker::exit
    pub fn with_event_timeout(mut self, timeout: Duration) -> Worker {
        self.event_timeout = timeout;
        self
    }

    /// The name given at the start (by default the command line), for messages.
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
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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
        match self.next_line(self.event_timeout) {
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

    /// The next stdout line, whatever it is; panics (naming the child, `expecting` and its
    /// stderr) if none comes.
    pub fn line(&self, expecting: &str) -> String {
        let timeout = self.event_timeout;
        match self.next_line(timeout) {
            Ok(line) => line,
            Err(LineError::Eof) => panic!(
                "{}: exited before printing {expecting}; stderr: {}",
                self.name,
                self.stderr()
            ),
            Err(LineError::TimedOut(_)) => panic!(
                "{}: printed no {expecting} within {timeout:?}; stderr: {}",
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

    /// Sends the start signal that `refresh-worker` waits for (one line, `go`); it is sent once.
    pub fn start(&mut self) {
        let stdin = self.stdin.as_mut().expect("the start signal is sent once");
        writeln!(stdin, "go")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("{}: cannot send the start signal: {e}", self.name));
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

    /// Waits for the child to close stdout with nothing more printed, and reaps it. Panics on an
    /// extra line, or if that takes longer than the event timeout.
    pub fn exit(&mut self) -> ExitStatus {
        let timeout = self.event_timeout;
        match self.lines.recv_timeout(timeout) {
            Err(RecvTimeoutError::Disconnected) => {}
            Ok(extra) => panic!("{}: unexpected extra line {extra:?}", self.name),
            Err(RecvTimeoutError::Timeout) => {
                panic!("{}: did not exit within {timeout:?}", self.name)
            }
        }
        self.reap()
    }

    /// [`exit`](Worker::exit), and panics (naming the child and its stderr) unless it exited
    /// successfully.
    pub fn exit_successfully(&mut self) {
        let status = self.exit();
        assert!(
            status.success(),
            "{} exited with {status}; stderr: {}",
            self.name,
            self.stderr()
        );
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
