//! Single flight across processes: many `refresh-worker` processes holding the same due
//! credentials refresh at once, through real files and a real token endpoint on 127.0.0.1, and
//! the endpoint sees one request.
//!
//! Secrets never appear in messages: tokens are compared by fingerprint
//! (`Secret::fingerprint`, a SHA-256 hex prefix).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use codex_refresh::TOKEN_URL_ENV;
use codex_store::{AuthDotJson, Secret};
use codex_store_tests::fake_idp::FakeIdp;
use codex_store_tests::jwt::{access_token, auth_json, id_token, now_unix};
use sha2::{Digest, Sha256};

const WORKER: &str = env!("CARGO_BIN_EXE_refresh-worker");
/// Only turns a hang into a failure; no test waits for it to elapse.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

const ACCOUNT: &str = "acc-race";
const EMAIL: &str = "race@example.com";
const PLAN: &str = "plus";
const INITIAL_REFRESH_TOKEN: &str = "rt_race_initial";

const PROCESSES: usize = 16;
/// How long the endpoint takes to answer: long enough that the other processes really queue on
/// the store's lock while the one request is in flight.
const ENDPOINT_DELAY: Duration = Duration::from_millis(100);

/// A `refresh-worker` child whose stdout lines arrive as events. Dropping it kills and reaps
/// the child, so a failing test leaves no process behind.
struct Worker {
    name: String,
    child: std::process::Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Worker {
    fn spawn(subcommand: &str, home: &Path, token_url: &str) -> Worker {
        let name = format!("refresh-worker {subcommand} #{}", next_serial());
        let mut child = Command::new(WORKER)
            .arg(subcommand)
            .arg(home)
            .env(TOKEN_URL_ENV, token_url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr_pipe = child.stderr.take().expect("stderr is piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr_pipe, &mut text);
            *sink.lock().unwrap_or_else(|p| p.into_inner()) = text;
        });
        Worker {
            name,
            child,
            stdin,
            lines,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The next stdout line; panics (naming the child and its stderr) if none comes.
    fn line(&self, expecting: &str) -> String {
        match self.lines.recv_timeout(EVENT_TIMEOUT) {
            Ok(line) => line,
            Err(RecvTimeoutError::Disconnected) => panic!(
                "{}: exited before printing {expecting}; stderr: {}",
                self.name,
                self.stderr()
            ),
            Err(RecvTimeoutError::Timeout) => panic!(
                "{}: printed no {expecting} within {EVENT_TIMEOUT:?}; stderr: {}",
                self.name,
                self.stderr()
            ),
        }
    }

    /// Sends the start signal.
    fn start(&mut self) {
        let stdin = self.stdin.as_mut().expect("the start signal is sent once");
        writeln!(stdin, "go")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("{}: cannot send the start signal: {e}", self.name));
    }

    /// Waits for the child to close stdout (it printed nothing more) and reaps it.
    fn exit(&mut self) -> ExitStatus {
        match self.lines.recv_timeout(EVENT_TIMEOUT) {
            Err(RecvTimeoutError::Disconnected) => {}
            Ok(extra) => panic!("{}: unexpected extra line {extra:?}", self.name),
            Err(RecvTimeoutError::Timeout) => {
                panic!("{}: did not exit within {EVENT_TIMEOUT:?}", self.name)
            }
        }
        self.child
            .wait()
            .unwrap_or_else(|e| panic!("{}: cannot reap: {e}", self.name))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn next_serial() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static SERIAL: AtomicUsize = AtomicUsize::new(1);
    SERIAL.fetch_add(1, Ordering::Relaxed)
}

/// What a worker reported in `token <fingerprint> generation <generation>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Reported {
    fingerprint: String,
    generation: String,
}

fn parse_token_line(worker: &Worker, line: &str) -> Reported {
    let parts: Vec<&str> = line.split(' ').collect();
    match parts.as_slice() {
        ["token", fingerprint, "generation", generation] => Reported {
            fingerprint: (*fingerprint).to_owned(),
            generation: (*generation).to_owned(),
        },
        _ => panic!(
            "{}: expected `token <fingerprint> generation <generation>`, got {line:?}; stderr: {}",
            worker.name,
            worker.stderr()
        ),
    }
}

fn fingerprint(token: &str) -> String {
    Secret::new(token).fingerprint()
}

fn auth_path(home: &Path) -> PathBuf {
    home.join("auth.json")
}

/// The SHA-256 of auth.json's bytes, as lowercase hex (what `sha256sum` prints).
fn file_sha256(home: &Path) -> String {
    let bytes = std::fs::read(auth_path(home))
        .unwrap_or_else(|e| panic!("cannot read auth.json in {}: {e}", home.display()));
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Signed in as [`ACCOUNT`] with [`INITIAL_REFRESH_TOKEN`] and an access token that expired a
/// minute ago: every process finds a refresh due.
fn write_expired_credentials(home: &Path) {
    let text = auth_json(
        &access_token(now_unix() - 60, "expired"),
        INITIAL_REFRESH_TOKEN,
        &id_token(EMAIL, ACCOUNT, PLAN),
        ACCOUNT,
    );
    std::fs::write(auth_path(home), text).expect("write the initial auth.json");
}

#[test]
fn sixteen_processes_with_the_same_due_tokens_send_one_request_and_end_with_the_same_token() {
    let started = Instant::now();
    let idp = FakeIdp::start(ACCOUNT, EMAIL, PLAN, INITIAL_REFRESH_TOKEN);
    idp.set_delay(ENDPOINT_DELAY);
    let home = tempfile::tempdir().expect("create a temp CODEX_HOME");
    write_expired_credentials(home.path());
    let before = file_sha256(home.path());

    let mut workers: Vec<Worker> = (0..PROCESSES)
        .map(|_| Worker::spawn("race", home.path(), &idp.url()))
        .collect();
    for worker in &workers {
        let line = worker.line("`ready`");
        assert_eq!(line, "ready", "{} did not get ready", worker.name);
    }
    assert_eq!(
        idp.requests(),
        0,
        "a worker sent a request before the start signal"
    );
    for worker in &mut workers {
        worker.start();
    }
    let reports: Vec<Reported> = workers
        .iter()
        .map(|w| parse_token_line(w, &w.line("its token")))
        .collect();
    for worker in &mut workers {
        let status = worker.exit();
        assert!(
            status.success(),
            "{} exited with {status}; stderr: {}",
            worker.name,
            worker.stderr()
        );
    }

    assert_eq!(
        idp.requests(),
        1,
        "{PROCESSES} racing processes must share one refresh request"
    );
    let presented: Vec<String> = idp
        .presented_refresh_tokens()
        .iter()
        .map(|t| fingerprint(t))
        .collect();
    assert_eq!(
        presented,
        vec![fingerprint(INITIAL_REFRESH_TOKEN)],
        "the one request must redeem the refresh token from the file (fingerprints)"
    );
    let issued = idp
        .last_issued()
        .expect("the endpoint issued no tokens although a request was answered");
    let issued_fp = fingerprint(&issued.access_token);
    for (worker, report) in workers.iter().zip(&reports) {
        assert_eq!(
            report.fingerprint, issued_fp,
            "{} ended with another token than the one the endpoint issued (fingerprints)",
            worker.name
        );
    }

    let after = file_sha256(home.path());
    assert_ne!(
        after, before,
        "auth.json did not change although the tokens were refreshed"
    );
    let mut generations: Vec<&str> = reports.iter().map(|r| r.generation.as_str()).collect();
    generations.sort_unstable();
    generations.dedup();
    assert_eq!(
        generations,
        vec![after.as_str()],
        "the workers must all report the one generation auth.json now has (its SHA-256)"
    );

    let doc = AuthDotJson::from_json(&std::fs::read(auth_path(home.path())).expect("read"))
        .unwrap_or_else(|e| panic!("auth.json does not parse after the race: {e}"));
    let tokens = doc.tokens.expect("auth.json lost its tokens in the race");
    assert_eq!(
        fingerprint(tokens.access_token.expose()),
        issued_fp,
        "auth.json must hold the issued access token (fingerprints)"
    );
    assert_eq!(
        fingerprint(tokens.refresh_token.expose()),
        fingerprint(&issued.refresh_token),
        "auth.json must hold the rotated refresh token (fingerprints)"
    );
    assert!(
        doc.last_refresh.is_some(),
        "auth.json must record last_refresh with the new tokens"
    );
    eprintln!("{PROCESSES} processes raced in {:?}", started.elapsed());
}
