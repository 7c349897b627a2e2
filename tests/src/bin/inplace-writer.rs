//! A writer that ignores every lock and rewrites a JSON file in place, like older Codex
//! installations (no lock, no temp file, no rename, no fsync), in a loop, for the save tests.
//!
//! Usage: `inplace-writer FILE KEY [PERIOD_US]`. Until stdin reaches EOF it repeatedly opens FILE
//! for reading and writing, reads it, sets the top-level KEY to a counter (1, 2, ...), truncates
//! the file and writes the result back into it (pretty-printed), then waits PERIOD_US
//! microseconds (default 0: a tight loop). It prints `ready` after its first rewrite and
//! `rewrites=<n> skipped=<m>` at the end (skipped: the file could not be opened or did not hold
//! a JSON object).
//!
//! It reads the document through the same open file it writes, so what it writes back is always
//! what that file held: a rewrite never carries stale tokens into a file renamed in since (a
//! writer that rewrites from an older read destroys whatever rotation landed in between, and no
//! protocol can prevent that). This is the most a lock-ignoring writer can be asked for; what it
//! still does is change the file at any moment, truncate it to nothing for a moment, and write
//! into a file that a rename has just replaced.

use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

const USAGE: &str = "usage: inplace-writer FILE KEY [PERIOD_US]";

/// One rewrite; `Ok(false)` when the file held no JSON object (then it is left alone).
fn rewrite(path: &Path, key: &str, counter: u64) -> io::Result<bool> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    let Ok(Value::Object(mut doc)) = serde_json::from_str::<Value>(&text) else {
        return Ok(false);
    };
    doc.insert(key.to_owned(), Value::from(counter));
    let bytes = serde_json::to_vec_pretty(&Value::Object(doc)).map_err(io::Error::other)?;
    file.set_len(0)?;
    file.write_all_at(&bytes, 0)?;
    Ok(true)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (path, key, period_us) = match args.as_slice() {
        [path, key] => (PathBuf::from(path), key.clone(), Ok(0)),
        [path, key, period] => (PathBuf::from(path), key.clone(), period.parse::<u64>()),
        _ => {
            eprintln!("inplace-writer: {USAGE}");
            return ExitCode::from(2);
        }
    };
    let Ok(period_us) = period_us else {
        eprintln!("inplace-writer: PERIOD_US is not a number\n{USAGE}");
        return ExitCode::from(2);
    };
    let stop = Arc::new(AtomicBool::new(false));
    let stopper = Arc::clone(&stop);
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = io::stdin().read_to_end(&mut sink);
        stopper.store(true, Ordering::SeqCst);
    });
    let (mut rewrites, mut skipped) = (0u64, 0u64);
    while !stop.load(Ordering::SeqCst) {
        match rewrite(&path, &key, rewrites + 1) {
            Ok(true) => {
                rewrites += 1;
                if rewrites == 1 {
                    println!("ready");
                }
            }
            Ok(false) | Err(_) => skipped += 1,
        }
        if period_us > 0 {
            std::thread::sleep(Duration::from_micros(period_us));
        }
    }
    println!("rewrites={rewrites} skipped={skipped}");
    ExitCode::SUCCESS
}
