//! An [`AuthManager`] in its own process, for the multi-process refresh tests
//! (`tests/tests/refresh_race.rs`, `tests/tests/refresh_processes.rs`).
//!
//! The token URL comes from `CODEX_REFRESH_TOKEN_URL_OVERRIDE` (through
//! `RefreshConfig::default()`); `DIR` is the `CODEX_HOME`. Every subcommand builds the manager
//! (which loads and caches the credentials), announces itself, then waits for one line on stdin
//! (the start signal) before it touches the credentials again:
//!
//! - `race DIR`: prints `ready`; on the signal calls `auth()`.
//! - `stale DIR`: prints `loaded <generation>` (the generation it cached); on the signal calls
//!   `auth()`.
//! - `refresh DIR`: prints `loaded <generation>`; on the signal calls `refresh()` and prints
//!   `outcome <RefreshOutcome>` (e.g. `outcome AdoptedFromDisk`).
//!
//! Then each prints `token <fingerprint> generation <generation>` for the credentials it ended
//! with and exits 0, or prints `error <ErrorClass> <message>` and exits 1. The fingerprint is
//! `Secret::fingerprint` (a SHA-256 hex prefix); a token itself is never printed. Stdout is
//! flushed after every line, so the parent waits for lines instead of sleeping. Usage errors,
//! and stdin closing before the signal, exit 2 without touching the credentials.

use std::io::{self, BufRead, Write};
use std::process::ExitCode;
use std::sync::Arc;

use codex_refresh::{AuthManager, CodexAuth, RefreshConfig, RefreshError};
use codex_store::Store;

const USAGE: &str = "usage: refresh-worker race DIR | stale DIR | refresh DIR";

enum Failure {
    /// Bad arguments, or no start signal: exit 2.
    Usage(String),
    /// The manager failed: `error <class> <message>`, exit 1.
    Refresh(RefreshError),
}

impl From<RefreshError> for Failure {
    fn from(e: RefreshError) -> Self {
        Failure::Refresh(e)
    }
}

fn say(line: &str) {
    let mut out = io::stdout().lock();
    // If the parent went away there is nobody to tell; the exit code still says it.
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// Blocks until the parent sends a line; EOF (the parent gave up) is a usage failure.
fn wait_for_signal() -> Result<(), Failure> {
    let mut line = String::new();
    match io::stdin().lock().read_line(&mut line) {
        Ok(0) => Err(Failure::Usage(
            "stdin closed before the start signal".into(),
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(Failure::Usage(format!("cannot read stdin: {e}"))),
    }
}

fn token_line(auth: &CodexAuth) -> String {
    format!(
        "token {} generation {}",
        auth.bearer().fingerprint(),
        auth.generation()
    )
}

fn manager(dir: &str) -> Result<AuthManager, Failure> {
    let store = Store::open(dir).map_err(RefreshError::from)?;
    Ok(AuthManager::new(store, RefreshConfig::default())?)
}

fn loaded_line(manager: &AuthManager) -> String {
    match manager.cached() {
        Some(auth) => format!("loaded {}", auth.generation()),
        None => "loaded none".to_owned(),
    }
}

fn run(command: &str, dir: &str) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Usage(format!("cannot build a tokio runtime: {e}")))?;
    let manager = manager(dir)?;
    match command {
        "race" => say("ready"),
        _ => say(&loaded_line(&manager)),
    }
    wait_for_signal()?;
    let auth: Arc<CodexAuth> = runtime.block_on(async {
        if command == "refresh" {
            let outcome = manager.refresh().await?;
            say(&format!("outcome {outcome:?}"));
            manager.cached().ok_or_else(|| RefreshError::NotSignedIn {
                path: manager.store().path().to_path_buf(),
            })
        } else {
            manager.auth().await
        }
    })?;
    say(&token_line(&auth));
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [command, dir] if matches!(command.as_str(), "race" | "stale" | "refresh") => {
            run(command, dir)
        }
        _ => Err(Failure::Usage(USAGE.to_owned())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Refresh(e)) => {
            say(&format!("error {:?} {e}", e.class()));
            ExitCode::from(1)
        }
        Err(Failure::Usage(message)) => {
            eprintln!("refresh-worker: {message}");
            ExitCode::from(2)
        }
    }
}
