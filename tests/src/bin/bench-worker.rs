//! One [`AuthManager`] in its own process, for the 32-process race in `benches/refresh.rs`.
//!
//! Usage: `bench-worker DIR [wait]` (`DIR` is the `CODEX_HOME`; the token URL comes from
//! `CODEX_REFRESH_TOKEN_URL_OVERRIDE` through `RefreshConfig::default()`; `wait` sets
//! `WhileRefreshing::Wait`, the behaviour before a due but valid token stopped waiting for
//! another process's refresh).
//!
//! Builds the manager (which loads and caches the credentials, and builds the HTTP client), prints
//! `ready`, waits for one line on stdin (the start signal), calls `auth()` once and prints
//! `done <fingerprint> <microseconds>` (`Secret::fingerprint` of the bearer, never the token, and
//! how long `auth()` took) and exits 0; or
//! prints `error <ErrorClass> <message>` and exits 1. Stdout is flushed after every line. Usage
//! errors, and stdin closing before the signal, exit 2 without touching the credentials.

use std::io::{self, BufRead, Write};
use std::process::ExitCode;

use std::time::Instant;

use codex_refresh::{AuthManager, RefreshConfig, RefreshError, WhileRefreshing};
use codex_store::Store;

fn say(line: &str) {
    let mut out = io::stdout().lock();
    // If the parent went away there is nobody to tell; the exit code still says it.
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

fn usage(message: &str) -> ExitCode {
    eprintln!("bench-worker: {message}\nusage: bench-worker DIR [wait]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dir, while_refreshing) = match args.as_slice() {
        [dir] => (dir, WhileRefreshing::UseValidToken),
        [dir, wait] if wait == "wait" => (dir, WhileRefreshing::Wait),
        _ => return usage("expected DIR and optionally `wait`"),
    };
    let config = RefreshConfig {
        while_refreshing,
        ..RefreshConfig::default()
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return usage(&format!("cannot build a tokio runtime: {e}")),
    };
    let manager = match Store::open(dir)
        .map_err(RefreshError::from)
        .and_then(|store| AuthManager::new(store, config))
    {
        Ok(manager) => manager,
        Err(e) => {
            say(&format!("error {:?} {e}", e.class()));
            return ExitCode::from(1);
        }
    };
    say("ready");

    let mut line = String::new();
    match io::stdin().lock().read_line(&mut line) {
        Ok(0) => return usage("stdin closed before the start signal"),
        Ok(_) => {}
        Err(e) => return usage(&format!("cannot read stdin: {e}")),
    }

    let started = Instant::now();
    match runtime.block_on(manager.auth()) {
        Ok(auth) => {
            let micros = started.elapsed().as_micros();
            say(&format!("done {} {micros}", auth.bearer().fingerprint()));
            ExitCode::SUCCESS
        }
        Err(e) => {
            say(&format!("error {:?} {e}", e.class()));
            ExitCode::from(1)
        }
    }
}
