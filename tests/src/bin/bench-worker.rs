//! One [`AuthManager`] in its own process, for the 32-process race in `benches/refresh.rs`.
//!
//! Usage: `bench-worker DIR` (`DIR` is the `CODEX_HOME`; the token URL comes from
//! `CODEX_REFRESH_TOKEN_URL_OVERRIDE` through `RefreshConfig::default()`).
//!
//! Builds the manager (which loads and caches the credentials, and builds the HTTP client), prints
//! `ready`, waits for one line on stdin (the start signal), calls `auth()` once and prints
//! `done <fingerprint>` (`Secret::fingerprint` of the bearer, never the token) and exits 0; or
//! prints `error <ErrorClass> <message>` and exits 1. Stdout is flushed after every line. Usage
//! errors, and stdin closing before the signal, exit 2 without touching the credentials.

use std::io::{self, BufRead, Write};
use std::process::ExitCode;

use codex_refresh::{AuthManager, RefreshConfig, RefreshError};
use codex_store::Store;

fn say(line: &str) {
    let mut out = io::stdout().lock();
    // If the parent went away there is nobody to tell; the exit code still says it.
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

fn usage(message: &str) -> ExitCode {
    eprintln!("bench-worker: {message}\nusage: bench-worker DIR");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir] = args.as_slice() else {
        return usage("expected exactly one argument");
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
        .and_then(|store| AuthManager::new(store, RefreshConfig::default()))
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

    match runtime.block_on(manager.auth()) {
        Ok(auth) => {
            say(&format!("done {}", auth.bearer().fingerprint()));
            ExitCode::SUCCESS
        }
        Err(e) => {
            say(&format!("error {:?} {e}", e.class()));
            ExitCode::from(1)
        }
    }
}
