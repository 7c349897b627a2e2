//! Driving `codex-sim` (tests/src/bin/codex-sim.rs), a stand-in for Codex 0.171.0 refreshing its
//! ChatGPT tokens on the same `CODEX_HOME` as codex-store (what Codex 0.171.0
//! was measured to do on disk, with strace: the README's coexistence section).
//!
//! ## What the simulator does
//!
//! `codex-sim [--force] [--old] [--no-wait]`, with `CODEX_HOME` and
//! `CODEX_REFRESH_TOKEN_URL_OVERRIDE` (an `http://` URL; nothing else is accepted, so it can never
//! reach a real endpoint) in its environment:
//!
//! 1. reads auth.json; when the access token is not due (its `exp` more than 5 minutes away) and
//!    `--force` is absent, prints `fresh` and exits [`exit::NOT_DUE`] without a request;
//! 2. prints `due reason=...` and `ready`, then waits for one line on stdin (the start signal,
//!    [`Process::go`]), unless `--no-wait`;
//! 3. re-reads auth.json and adopts it without a request when it changed to tokens that are not
//!    due ([`exit::ADOPTED_BEFORE_REQUEST`]);
//! 4. sends the refresh request (JSON: `client_id`, `grant_type`, `refresh_token`,
//!    `refresh_reason`) **before taking any lock**;
//! 5. on success: `flock(auth.lock, LOCK_EX)`, waiting without limit; then
//!    `flock(auth.json.lock, LOCK_EX|LOCK_NB)` every 10 ms for 5 s, and when that fails it
//!    **drops the new tokens** (`dropped`, [`exit::DROPPED`]); else it re-reads auth.json, writes
//!    the merged document (only the keys Codex knows, 2-space pretty, no trailing newline,
//!    `last_refresh` with nanoseconds) to `.auth-XXXXXX` (O_EXCL, 0600), fsyncs it, renames it
//!    over auth.json and unlocks ([`exit::SAVED`]);
//! 6. on `refresh_token_reused`: re-reads auth.json once and adopts it when it holds another
//!    refresh token ([`exit::ADOPTED_AFTER_REUSE`]), else stays stuck ([`exit::STUCK`]); other
//!    permanent refusals exit [`exit::REFUSED`], transient failures [`exit::TRANSIENT`].
//!
//! `--old` simulates the installations from before the lock: the same, but the answer is written
//! in place (open with truncate, write, close: no lock, no temp file, no fsync, no rename).
//!
//! ## Its output
//!
//! One event per line on stdout, flushed at once, tokens only as fingerprints
//! ([`crate::cli_support::fingerprint`]): `read rt=<fp> at=<fp> exp_in=<s>`, `fresh`,
//! `due reason=<r>`, `ready`, `reread unchanged|changed rt=<fp>`, `requesting rt=<fp> reason=<r>`,
//! `answer status=<n> [code=<c>]`, `locked auth.lock waited_ms=<n>`,
//! `locked auth.json.lock waited_ms=<n> attempts=<n>`, `dropped rt=<fp> waited_ms=<n>`,
//! `saved rt=<fp> at=<fp>`, `wrote-in-place rt=<fp> at=<fp>`, `refused code=<c> status=<n>`,
//! `adopted rt=<fp> when=before-request|after-reuse`, `stuck`, `transient what=<...>`, and last
//! `end outcome=<name> at=<fp> rt=<fp>`: the tokens the process ends up holding (after a drop or
//! a refusal: the old ones it read). Errors go to stderr.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::process::{Finished, Process};

/// The name of the binary (`env!("CARGO_BIN_EXE_codex-sim")` in integration tests).
pub const BIN_NAME: &str = "codex-sim";

/// The environment variable naming the token endpoint (as for Codex and codex-store).
pub const TOKEN_URL_ENV: &str = "CODEX_REFRESH_TOKEN_URL_OVERRIDE";

/// The line `codex-sim` prints when it drops the tokens it obtained (first word).
pub const DROPPED_EVENT: &str = "dropped";

/// How long Codex 0.171.0 retries `flock(auth.json.lock, LOCK_EX|LOCK_NB)` before it drops the
/// tokens it obtained.
pub const STORE_LOCK_PATIENCE: Duration = Duration::from_secs(5);

/// How often it retries within [`STORE_LOCK_PATIENCE`].
pub const STORE_LOCK_RETRY: Duration = Duration::from_millis(10);

/// The bound on any single event of a simulator. It only turns a hang into a failure; nothing
/// waits for it to elapse.
pub const SIM_EVENT_TIMEOUT: Duration = Duration::from_secs(60);

/// The exit codes of `codex-sim`, one per outcome.
pub mod exit {
    /// Refreshed, and the new tokens were stored (renamed in, or written in place with `--old`).
    pub const SAVED: i32 = 0;
    /// Any other error (auth.json unreadable or without ChatGPT tokens, I/O error), and a usage
    /// error (bad arguments or environment, no start line on stdin): the codes of `codex-store`.
    pub use crate::cli_support::exit::{OTHER, USAGE};
    /// Not due and not forced: no request.
    pub const NOT_DUE: i32 = 10;
    /// auth.json changed to tokens that are not due before the request: adopted, no request.
    pub const ADOPTED_BEFORE_REQUEST: i32 = 11;
    /// Refused as `refresh_token_reused`, and auth.json then held another refresh token: adopted.
    pub const ADOPTED_AFTER_REUSE: i32 = 12;
    /// Refreshed, but `auth.json.lock` stayed busy for 5 s: the new tokens were thrown away.
    pub const DROPPED: i32 = 20;
    /// Refused as `refresh_token_reused`, and auth.json still held the same refresh token: stuck
    /// on "refresh token was already used" (sign-in required).
    pub const STUCK: i32 = 21;
    /// Another permanent refusal (`refresh_token_expired`, `_invalidated`, any 401, 400
    /// `invalid_grant`): sign-in required.
    pub const REFUSED: i32 = 22;
    /// A transient failure (5xx, 429, connection error, unusable answer): nothing changed.
    pub const TRANSIENT: i32 = 23;
    /// `--live`: the span ended without a refusal it could not recover from.
    pub const LIVED: i32 = 13;
}

/// What a `codex-sim` run ended with, from its exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// [`exit::SAVED`].
    Saved,
    /// [`exit::NOT_DUE`].
    NotDue,
    /// [`exit::ADOPTED_BEFORE_REQUEST`].
    AdoptedBeforeRequest,
    /// [`exit::ADOPTED_AFTER_REUSE`].
    AdoptedAfterReuse,
    /// [`exit::DROPPED`].
    Dropped,
    /// [`exit::STUCK`].
    Stuck,
    /// [`exit::REFUSED`].
    Refused,
    /// [`exit::TRANSIENT`].
    Transient,
    /// [`exit::OTHER`].
    Error,
    /// [`exit::USAGE`].
    Usage,
    /// Another exit code.
    Unknown(i32),
    /// Killed by a signal.
    Killed,
}

impl Outcome {
    /// The outcome an exit status stands for.
    pub fn from_status(status: ExitStatus) -> Outcome {
        match status.code() {
            Some(exit::SAVED) => Outcome::Saved,
            Some(exit::NOT_DUE) => Outcome::NotDue,
            Some(exit::ADOPTED_BEFORE_REQUEST) => Outcome::AdoptedBeforeRequest,
            Some(exit::ADOPTED_AFTER_REUSE) => Outcome::AdoptedAfterReuse,
            Some(exit::DROPPED) => Outcome::Dropped,
            Some(exit::STUCK) => Outcome::Stuck,
            Some(exit::REFUSED) => Outcome::Refused,
            Some(exit::TRANSIENT) => Outcome::Transient,
            Some(exit::OTHER) => Outcome::Error,
            Some(exit::USAGE) => Outcome::Usage,
            Some(code) => Outcome::Unknown(code),
            None => Outcome::Killed,
        }
    }

    /// A short name, as in the `end outcome=<name>` line.
    pub fn name(self) -> String {
        match self {
            Outcome::Saved => "saved".into(),
            Outcome::NotDue => "not-due".into(),
            Outcome::AdoptedBeforeRequest => "adopted-before-request".into(),
            Outcome::AdoptedAfterReuse => "adopted-after-reuse".into(),
            Outcome::Dropped => "dropped".into(),
            Outcome::Stuck => "stuck".into(),
            Outcome::Refused => "refused".into(),
            Outcome::Transient => "transient".into(),
            Outcome::Error => "error".into(),
            Outcome::Usage => "usage".into(),
            Outcome::Unknown(code) => format!("exit-{code}"),
            Outcome::Killed => "killed".into(),
        }
    }
}

/// How to run the simulator.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimOptions {
    /// `--force`: refresh even when the token is not due (`refresh_reason: "forced"`).
    pub force: bool,
    /// `--old`: write in place, without any lock (the installations from before the lock).
    pub old: bool,
}

/// A finished `codex-sim`.
#[derive(Clone, Debug)]
pub struct SimRun {
    /// Its name (`codex-sim #N` plus options).
    pub name: String,
    /// Every line it printed, in order.
    pub lines: Vec<String>,
    /// Its exit status.
    pub status: ExitStatus,
    /// What it wrote to stderr.
    pub stderr: String,
}

/// Starts `program` (the `codex-sim` binary) on `home` with its token URL set to `token_url`,
/// named `codex-sim #N` in messages and waiting [`SIM_EVENT_TIMEOUT`] for each event. It reads
/// auth.json and, when a refresh is due, prints `ready` and waits for [`Process::go`].
pub fn spawn(program: &Path, home: &Path, token_url: &str, options: SimOptions) -> Process {
    static SERIAL: AtomicUsize = AtomicUsize::new(1);
    let mut name = format!("codex-sim #{}", SERIAL.fetch_add(1, Ordering::Relaxed));
    let mut command = Command::new(program);
    if options.force {
        command.arg("--force");
        name.push_str(" --force");
    }
    if options.old {
        command.arg("--old");
        name.push_str(" --old");
    }
    command
        .env("CODEX_HOME", home)
        .env(TOKEN_URL_ENV, token_url)
        .env_remove("RUST_LOG");
    Process::spawn_command(name, command).with_event_timeout(SIM_EVENT_TIMEOUT)
}

impl From<Finished> for SimRun {
    fn from(finished: Finished) -> SimRun {
        SimRun {
            lines: finished.lines(),
            name: finished.name,
            status: finished.status,
            stderr: finished.stderr,
        }
    }
}

impl SimRun {
    /// What it ended with.
    pub fn outcome(&self) -> Outcome {
        Outcome::from_status(self.status)
    }

    /// Whether it threw away tokens it had obtained (a `dropped` line).
    pub fn dropped(&self) -> bool {
        self.has_event(DROPPED_EVENT)
    }

    /// Whether it printed a line whose first word is `event`.
    pub fn has_event(&self, event: &str) -> bool {
        self.lines
            .iter()
            .any(|l| l.split(' ').next() == Some(event))
    }

    /// How many refresh requests it sent (`requesting` lines).
    pub fn requests(&self) -> usize {
        self.lines
            .iter()
            .filter(|l| l.starts_with("requesting "))
            .count()
    }

    /// The value of `key=` in its `end` line (`at`, `rt`, `outcome`).
    pub fn end_value(&self, key: &str) -> Option<String> {
        let end = self.lines.iter().rev().find(|l| l.starts_with("end "))?;
        end.split(' ')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
    }

    /// Its name, outcome, lines and stderr, for an assertion message (fingerprints only; any
    /// registered secret is redacted all the same).
    pub fn describe(&self) -> String {
        let stderr = self.stderr.trim_end();
        format!(
            "{} exited {} ({}):\n    {}{}",
            self.name,
            self.status,
            self.outcome().name(),
            crate::cli_support::redact(&self.lines.join("\n    ")),
            if stderr.is_empty() {
                String::new()
            } else {
                format!("\n    stderr: {}", crate::cli_support::redact(stderr))
            }
        )
    }
}

/// The `tokens.refresh_token` of `home/auth.json`, `None` when the file is missing, unreadable
/// or holds none.
pub fn refresh_token_on_disk(home: &Path) -> Option<String> {
    let bytes = fs::read(home.join("auth.json")).ok()?;
    let doc: Value = serde_json::from_slice(&bytes).ok()?;
    doc.get("tokens")?
        .get("refresh_token")?
        .as_str()
        .map(str::to_owned)
}

/// The `codex-sim` binary for programs that are not integration tests of this package (which use
/// `env!("CARGO_BIN_EXE_codex-sim")`): `CODEX_SIM_BIN`, else `target/<profile>/codex-sim`, which
/// must already be built (see [`crate::programs::built`]).
pub fn codex_sim_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("CODEX_SIM_BIN").filter(|v| !v.is_empty()) {
        return PathBuf::from(bin);
    }
    crate::programs::built(BIN_NAME, "codex-store-tests")
}
