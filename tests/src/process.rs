//! The one harness for every child process of the tests, examples and benches: the helper
//! binaries (`store-worker`, `refresh-worker`, `inplace-writer`, `codex-sim`), `codex-store` runs
//! ([`crate::cli_support::spawn`]), `codex app-server` and npm ([`crate::real_codex`]).
//!
//! A [`Process`] has its stdin, stdout and stderr piped. A thread per output stream reads it line
//! by line: each line arrives on a channel (a helper's events are lines on its stdout) and is
//! appended to the stream's whole text, kept as printed. A test waits for a line with a bound,
//! sends lines to stdin, and finishes the process with a bound, getting its status and all it
//! printed ([`Finished`]). Dropping a process kills and reaps it, so no test leaves one behind,
//! even when it fails. Every message names the process and shows what it printed, with each
//! registered secret redacted ([`crate::cli_support::redact`]).

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cli_support::redact;
use crate::lock;

/// A generous bound on any single event from a child (and on the end of its output after a
/// kill), unless [`with_event_timeout`](Process::with_event_timeout) set another. It only turns a
/// hang into a failure; no test relies on it elapsing.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a line did not arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineError {
    /// The child closed the stream (it exited) first.
    Eof,
    /// Nothing arrived within the bound.
    TimedOut(Duration),
}

/// A process that ended: how, and everything it printed.
#[derive(Clone, Debug)]
pub struct Finished {
    /// The name the process was given.
    pub name: String,
    /// The exit status.
    pub status: ExitStatus,
    /// Everything written to stdout, as written.
    pub stdout: String,
    /// Everything written to stderr, as written.
    pub stderr: String,
}

impl Finished {
    /// The lines of stdout, without their newlines.
    pub fn lines(&self) -> Vec<String> {
        self.stdout.lines().map(str::to_owned).collect()
    }
}

/// An output stream being read: its lines as they arrive, and its whole text so far.
struct Output {
    lines: Receiver<String>,
    text: Arc<Mutex<String>>,
}

impl Output {
    /// Reads `pipe` on a new thread until EOF, then tells `closed`.
    fn read(pipe: impl Read + Send + 'static, closed: Sender<()>) -> Output {
        let (tx, lines) = mpsc::channel();
        let text = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&text);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut buf = Vec::new();
            while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                let line = String::from_utf8_lossy(&buf).into_owned();
                lock(&sink).push_str(&line);
                let _ = tx.send(line.strip_suffix('\n').unwrap_or(&line).to_owned());
                buf.clear();
            }
            drop(tx);
            let _ = closed.send(());
        });
        Output { lines, text }
    }

    fn text(&self) -> String {
        lock(&self.text).clone()
    }
}

/// A running child process with piped stdin, stdout and stderr (see the module documentation).
/// Dropping it kills and reaps the child.
pub struct Process {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Output,
    stderr: Output,
    /// Hears once from each output stream at its EOF.
    closed: Receiver<()>,
    open_streams: usize,
    status: Option<ExitStatus>,
    event_timeout: Duration,
}

impl Process {
    /// Starts `program args...`, named by its command line.
    pub fn spawn<I, S>(program: impl AsRef<OsStr>, args: I) -> Process
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new(program.as_ref());
        command.args(args);
        let name = format!("{command:?}");
        Process::spawn_command(name, command)
    }

    /// Starts `command` with its stdin, stdout and stderr piped; `name` names it in messages.
    pub fn spawn_command(name: impl Into<String>, mut command: Command) -> Process {
        let name = name.into();
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let (closed_tx, closed) = mpsc::channel();
        let stdout = Output::read(
            child.stdout.take().expect("stdout was piped"),
            closed_tx.clone(),
        );
        let stderr = Output::read(child.stderr.take().expect("stderr was piped"), closed_tx);
        Process {
            name,
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
            closed,
            open_streams: 2,
            status: None,
            event_timeout: EVENT_TIMEOUT,
        }
    }

    /// The same process, waiting at most `timeout` for each line awaited, and for the end of its
    /// output after [`kill`](Process::kill) and in [`exit`](Process::exit) (instead of
    /// [`EVENT_TIMEOUT`]).
    pub fn with_event_timeout(mut self, timeout: Duration) -> Process {
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

    /// What the child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.text()
    }

    /// The exit status if the child has exited (reaping it), `None` while it runs.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            match self.child.try_wait() {
                Ok(Some(_)) => {
                    self.reap();
                }
                Ok(None) => {}
                Err(e) => panic!("{}: cannot poll: {e}", self.name),
            }
        }
        self.status
    }

    /// The next stdout line.
    pub fn next_line(&self, timeout: Duration) -> Result<String, LineError> {
        match self.stdout.lines.recv_timeout(timeout) {
            Ok(line) => Ok(line),
            Err(RecvTimeoutError::Disconnected) => Err(LineError::Eof),
            Err(RecvTimeoutError::Timeout) => Err(LineError::TimedOut(timeout)),
        }
    }

    /// The next stdout line, whatever it is; panics (naming `expecting`) if none comes within the
    /// event timeout.
    pub fn line(&self, expecting: &str) -> String {
        self.wait_for_line(expecting, |_| true)
    }

    /// Waits for the next stdout line and panics unless it is `want`.
    pub fn expect_line(&self, want: &str) {
        let line = self.line(&format!("the line {want:?}"));
        if line != want {
            self.fail(format_args!("expected the line {want:?}, got {line:?}"));
        }
    }

    /// Waits for a stdout line whose first word is `event`, skipping others, and returns it.
    pub fn wait_for_event(&self, event: &str) -> String {
        self.wait_for_line(&format!("`{event}`"), |line| {
            line.split(' ').next() == Some(event)
        })
    }

    /// Waits for a stdout line that `wanted` accepts, skipping others, and returns it; panics
    /// (naming `expecting`) if the child closes stdout or the event timeout passes first.
    pub fn wait_for_line(&self, expecting: &str, wanted: impl Fn(&str) -> bool) -> String {
        self.wait_on(&self.stdout, "stdout", expecting, wanted)
    }

    /// Waits for a stderr line containing `needle` and returns it; panics if the child closes
    /// stderr or the event timeout passes first.
    pub fn wait_for_stderr_line(&self, needle: &str) -> String {
        let expecting = format!("a line containing {needle:?}");
        self.wait_on(&self.stderr, "stderr", &expecting, |line| {
            line.contains(needle)
        })
    }

    fn wait_on(
        &self,
        stream: &Output,
        stream_name: &str,
        expecting: &str,
        wanted: impl Fn(&str) -> bool,
    ) -> String {
        let timeout = self.event_timeout;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match stream.lines.recv_timeout(left) {
                Ok(line) if wanted(&line) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Disconnected) => self.fail(format_args!(
                    "closed its {stream_name} (exited) before printing {expecting}"
                )),
                Err(RecvTimeoutError::Timeout) => self.fail(format_args!(
                    "did not print {expecting} on {stream_name} within {timeout:?}"
                )),
            }
        }
    }

    /// Writes a line to the child's stdin.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self
            .stdin
            .as_mut()
            .unwrap_or_else(|| panic!("{}: its stdin is closed already", self.name));
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("{}: cannot write {line:?} to its stdin: {e}", self.name));
    }

    /// Sends the start signal that `refresh-worker` and `codex-sim` wait for: the line `go`.
    pub fn go(&mut self) {
        self.send_line("go");
    }

    /// Writes `input` to the child's stdin, then closes it, on a thread of its own: a child that
    /// does not read its stdin cannot block the test (nor can it fail it: a write it refuses by
    /// exiting is its business).
    pub fn feed_stdin(&mut self, input: &str) {
        if let Some(mut pipe) = self.stdin.take() {
            let input = input.to_owned();
            std::thread::spawn(move || {
                let _ = pipe.write_all(input.as_bytes());
            });
        }
    }

    /// Closes the child's stdin (it sees EOF).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Every stdout line not taken yet by the waits above. After the output ended
    /// ([`finish`](Process::finish), [`kill`](Process::kill)), the rest of all it printed.
    pub fn unread_lines(&self) -> Vec<String> {
        self.stdout.lines.try_iter().collect()
    }

    /// Closes stdin, waits until the child closes stdout and stderr, reaps it and returns all it
    /// printed. Panics (and the drop kills it) if that takes longer than `timeout`.
    pub fn finish(&mut self, timeout: Duration) -> Finished {
        self.close_stdin();
        if !self.output_ended_by(Instant::now() + timeout) {
            self.fail(format_args!("still ran after {timeout:?} and is killed"));
        }
        self.finished()
    }

    /// [`finish`](Process::finish) within the event timeout, and panics if the child printed a
    /// line on stdout that was not taken yet. Returns the exit status.
    pub fn exit(&mut self) -> ExitStatus {
        let finished = self.finish(self.event_timeout);
        let extra = self.unread_lines();
        if !extra.is_empty() {
            self.fail(format_args!("printed unexpected extra lines {extra:?}"));
        }
        finished.status
    }

    /// [`exit`](Process::exit), and panics unless the child exited successfully.
    pub fn exit_successfully(&mut self) {
        let status = self.exit();
        if !status.success() {
            self.fail(format_args!("exited with {status}"));
        }
    }

    /// Asks the child to stop as a service manager does (SIGTERM), waits at most `timeout` for
    /// it to end, and returns its stderr; panics (and the drop kills it) unless it exits
    /// successfully within that.
    pub fn terminate(&mut self, timeout: Duration) -> String {
        if let Some(pid) = rustix::process::Pid::from_raw(self.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let finished = self.finish(timeout);
        if !finished.status.success() {
            self.fail(format_args!(
                "exited with {} after SIGTERM: {}",
                finished.status, finished.stderr
            ));
        }
        finished.stderr
    }

    /// SIGKILLs the child, reaps it, waits (at most the event timeout) for the end of its output,
    /// and returns all it printed: [`unread_lines`](Process::unread_lines) are then the rest of
    /// its stdout. Never panics on a timeout (a drop relies on that).
    pub fn kill(&mut self) -> Finished {
        let _ = self.child.kill();
        self.reap();
        self.output_ended_by(Instant::now() + self.event_timeout);
        self.finished()
    }

    /// Whether both output streams reached EOF by `deadline`.
    fn output_ended_by(&mut self, deadline: Instant) -> bool {
        while self.open_streams > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.closed.recv_timeout(left) {
                Ok(()) => self.open_streams -= 1,
                Err(RecvTimeoutError::Timeout) => return false,
                // Only a reader that panicked goes without a word; its stream is over all the same.
                Err(RecvTimeoutError::Disconnected) => self.open_streams = 0,
            }
        }
        true
    }

    fn finished(&mut self) -> Finished {
        Finished {
            name: self.name.clone(),
            status: self.reap(),
            stdout: self.stdout.text(),
            stderr: self.stderr.text(),
        }
    }

    fn reap(&mut self) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let status = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("{}: cannot reap: {e}", self.name));
        self.status = Some(status);
        status
    }

    /// Panics saying what went wrong, naming the process and showing what it printed so far
    /// (redacted).
    fn fail(&self, what: std::fmt::Arguments<'_>) -> ! {
        panic!(
            "{}: {what}; stdout so far:\n{}\nstderr so far:\n{}",
            self.name,
            redact(&self.stdout.text()),
            redact(&self.stderr.text())
        )
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stdin = None;
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
