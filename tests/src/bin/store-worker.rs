//! A store client in its own process, for the multi-process store tests.
//!
//! Every subcommand works on the store in `DIR` (a `CODEX_HOME`); the counter is the top-level
//! key `counter` of auth.json (see `codex_store_tests::fixtures::counter`).
//!
//! - `increment-tx DIR N`: N times, read-modify-write the counter in a transaction. Prints
//!   `done <last value written>`.
//! - `increment-cas DIR N`: N times, load, then compare-and-swap counter+1 against the loaded
//!   generation, retrying on a conflict. Prints `done <last value written> conflicts=<retries>`.
//! - `write-loop DIR`: prints `ready`, then forever commits counter+1 in a transaction and prints
//!   `committed <counter>` after each commit returned.
//! - `hold-lock DIR`: takes the refresh lock and a transaction (every lock), prints `locked`,
//!   waits for EOF on stdin, drops them (writing nothing) and prints `released`.
//! - `hold-write-locks DIR`: the same with a transaction only (`auth.lock`, `auth.json.lock`).
//! - `try-lock DIR TIMEOUT_MS`: one transaction with that lock wait; prints `ok` and exits 0, or
//!   prints the error and exits 5 for a lock timeout, 1 for any other error.
//!
//! Usage errors exit 2. Stdout is flushed after every line, so the parent can wait for lines
//! instead of sleeping.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use codex_store::{Expect, Store, StoreError, StoreOptions};
use codex_store_tests::fixtures::{snapshot_counter, with_counter};

const USAGE: &str =
    "usage: store-worker increment-tx DIR N | increment-cas DIR N | write-loop DIR \
                     | hold-lock DIR | hold-write-locks DIR | try-lock DIR TIMEOUT_MS";

/// Exit code of `try-lock` when the lock wait timed out.
const EXIT_LOCK_TIMEOUT: u8 = 5;

/// The lock wait of the counting subcommands: long, so that heavy contention on a slow machine
/// shows up as slowness rather than as a spurious failure.
const WORKER_LOCK_TIMEOUT: Duration = Duration::from_secs(120);

enum Failure {
    Usage(String),
    Store(StoreError),
    Other(String),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

fn say(line: &str) -> Result<(), Failure> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| Failure::Other(format!("cannot write to stdout: {e}")))
}

fn open(dir: &str) -> Result<Store, Failure> {
    let options = StoreOptions {
        lock_timeout: WORKER_LOCK_TIMEOUT,
        ..StoreOptions::default()
    };
    Ok(Store::with_options(PathBuf::from(dir), options)?)
}

fn number<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, Failure> {
    text.parse()
        .map_err(|_| Failure::Usage(format!("{what} must be a number, got {text:?}")))
}

/// Commits counter+1 in one transaction; returns the value written.
fn increment_in_transaction(store: &Store) -> Result<u64, Failure> {
    let tx = store.transaction()?;
    let next = snapshot_counter(tx.snapshot()).map_err(Failure::Other)? + 1;
    let doc = with_counter(tx.snapshot().auth(), next);
    tx.commit(Some(&doc))?;
    Ok(next)
}

fn increment_tx(dir: &str, n: u64) -> Result<(), Failure> {
    let store = open(dir)?;
    let mut last = 0;
    for _ in 0..n {
        last = increment_in_transaction(&store)?;
    }
    say(&format!("done {last}"))
}

fn increment_cas(dir: &str, n: u64) -> Result<(), Failure> {
    let store = open(dir)?;
    let mut last = 0;
    let mut conflicts = 0u64;
    for _ in 0..n {
        loop {
            let snapshot = store.load()?;
            let next = snapshot_counter(&snapshot).map_err(Failure::Other)? + 1;
            let doc = with_counter(snapshot.auth(), next);
            match store.compare_and_swap(Expect::Generation(snapshot.generation()), Some(&doc)) {
                Ok(_) => {
                    last = next;
                    break;
                }
                Err(StoreError::Conflict { .. }) => conflicts += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }
    say(&format!("done {last} conflicts={conflicts}"))
}

fn write_loop(dir: &str) -> Result<(), Failure> {
    let store = open(dir)?;
    say("ready")?;
    loop {
        let committed = increment_in_transaction(&store)?;
        say(&format!("committed {committed}"))?;
    }
}

fn hold_lock(dir: &str, refresh_lock_too: bool) -> Result<(), Failure> {
    let store = open(dir)?;
    // Every lock, in the protocol's order: the refresh lock (as a refresh holds it across its
    // request), then the write locks (as a transaction holds them).
    let rotation = if refresh_lock_too {
        Some(store.begin_rotation()?)
    } else {
        None
    };
    let tx = store.transaction()?;
    say("locked")?;
    let mut sink = Vec::new();
    io::stdin()
        .read_to_end(&mut sink)
        .map_err(|e| Failure::Other(format!("cannot read stdin: {e}")))?;
    drop(tx);
    drop(rotation);
    say("released")
}

fn try_lock(dir: &str, timeout_ms: u64) -> ExitCode {
    let options = StoreOptions {
        lock_timeout: Duration::from_millis(timeout_ms),
        ..StoreOptions::default()
    };
    let result = Store::with_options(PathBuf::from(dir), options).and_then(|s| s.transaction());
    let (line, code) = match result {
        Ok(tx) => {
            drop(tx);
            ("ok".to_owned(), 0)
        }
        Err(e @ StoreError::LockTimeout { .. }) => (e.to_string(), EXIT_LOCK_TIMEOUT),
        Err(e) => (e.to_string(), 1),
    };
    match say(&line) {
        Ok(()) => ExitCode::from(code),
        Err(_) => ExitCode::from(1),
    }
}

fn run(args: &[String]) -> Result<ExitCode, Failure> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["increment-tx", dir, n] => increment_tx(dir, number(n, "N")?)?,
        ["increment-cas", dir, n] => increment_cas(dir, number(n, "N")?)?,
        ["write-loop", dir] => write_loop(dir)?,
        ["hold-lock", dir] => hold_lock(dir, true)?,
        ["hold-write-locks", dir] => hold_lock(dir, false)?,
        ["try-lock", dir, ms] => return Ok(try_lock(dir, number(ms, "TIMEOUT_MS")?)),
        _ => return Err(Failure::Usage(USAGE.to_owned())),
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(Failure::Usage(msg)) => {
            eprintln!("store-worker: {msg}\n{USAGE}");
            ExitCode::from(2)
        }
        Err(Failure::Store(e)) => {
            eprintln!("store-worker: {e}");
            ExitCode::from(1)
        }
        Err(Failure::Other(msg)) => {
            eprintln!("store-worker: {msg}");
            ExitCode::from(1)
        }
    }
}
