//! The refresh race, end to end: N `codex-store token` processes started at once on credentials
//! whose access token has expired, against a fake token endpoint that takes ~100 ms to answer.
//! The guarded refresh must send exactly one request, and every process must print the same
//! token.
//!
//! ```text
//! cargo build --release --workspace --bins && cargo run --release -p codex-store-tests --example race [-- --processes N]
//! ```
//!
//! `RACE_PROCESSES=N` also sets the number of processes (the flag wins). No raw token is ever
//! printed: tokens are shown as fingerprints (the first 12 hex characters of their SHA-256).
//! Exits 0 when there was one request and one token, 1 otherwise, 2 on a usage error.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use codex_store_tests::cli_support::{codex_store_bin, spawn, RUN_TIMEOUT};
use codex_store_tests::fixtures::{sha256_hex, ChatgptCreds};
use codex_store_tests::secrets::{fingerprint, redact, register_last_issued};

const DEFAULT_PROCESSES: usize = 16;
const ENDPOINT_DELAY: Duration = Duration::from_millis(100);
const USAGE: &str = "usage: race [--processes N]   (or RACE_PROCESSES=N; default 16)";

fn parse_count(text: &str, from: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "{from}: expected a number of processes >= 1, got {text:?}"
        )),
    }
}

fn processes_from_args() -> Result<usize, String> {
    let mut count = match std::env::var("RACE_PROCESSES") {
        Ok(v) if !v.trim().is_empty() => Some(parse_count(&v, "RACE_PROCESSES")?),
        _ => None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--processes" || arg == "-n" {
            let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
            count = Some(parse_count(&value, &arg)?);
        } else if let Some(value) = arg.strip_prefix("--processes=") {
            count = Some(parse_count(value, "--processes")?);
        } else if arg == "--help" || arg == "-h" {
            return Err(String::new());
        } else {
            return Err(format!("unknown argument {arg:?}"));
        }
    }
    Ok(count.unwrap_or(DEFAULT_PROCESSES))
}

fn generation(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => sha256_hex(&bytes),
        Err(_) => "absent".to_owned(),
    }
}

/// Runs the race in `home`; returns whether it passed. Everything it prints is safe to show.
fn race(home: &Path, processes: usize) -> bool {
    let creds = ChatgptCreds::expired();
    let path = creds.write_to(home);
    let idp = creds.start_idp();
    idp.set_delay(ENDPOINT_DELAY);
    let url = idp.url();
    let bin = codex_store_bin();

    println!("home: {}", home.display());
    println!("binary: {}", bin.display());
    println!("processes: {processes}");
    let before = generation(&path);

    let started = Instant::now();
    // Spawn every process before collecting any, so that they race for the lock.
    let running: Vec<_> = (0..processes)
        .map(|_| {
            spawn(
                home,
                &["token"],
                None,
                &[("CODEX_REFRESH_TOKEN_URL_OVERRIDE", url.as_str())],
            )
        })
        .collect();
    let outputs: Vec<_> = running.into_iter().map(|r| r.finish(RUN_TIMEOUT)).collect();
    let elapsed = started.elapsed();
    register_last_issued(&idp);

    let requests = idp.requests();
    let mut tokens: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for out in &outputs {
        if out.code() == Some(0) {
            let token = out.stdout.strip_suffix('\n').unwrap_or(&out.stdout);
            *tokens.entry(fingerprint(token)).or_default() += 1;
        } else {
            let first = out.stderr.lines().next().unwrap_or("").to_owned();
            failures.push(format!("{}: {}", out.status, redact(&first)));
        }
    }
    let issued = idp.last_issued().map(|i| fingerprint(&i.access_token));

    println!("refresh requests seen by the endpoint: {requests}");
    let shown: Vec<String> = tokens
        .iter()
        .map(|(fp, n)| {
            if tokens.len() == 1 {
                fp.clone()
            } else {
                format!("{fp} x{n}")
            }
        })
        .collect();
    let label = if shown.len() == 1 {
        "fingerprint"
    } else {
        "fingerprints"
    };
    println!(
        "distinct tokens printed: {} ({label} {})",
        tokens.len(),
        if shown.is_empty() {
            "-".to_owned()
        } else {
            shown.join(", ")
        }
    );
    println!(
        "token issued by the endpoint: {}",
        issued.as_deref().unwrap_or("none")
    );
    if !failures.is_empty() {
        println!("failed processes: {}", failures.len());
        for failure in &failures {
            println!("  {failure}");
        }
    }
    println!("generation before: {before}");
    println!("generation after:  {}", generation(&path));
    println!("elapsed: {} ms", elapsed.as_millis());

    let mut problems = Vec::new();
    if requests != 1 {
        problems.push(format!("{requests} requests"));
    }
    if tokens.len() != 1 {
        problems.push(format!("{} distinct tokens", tokens.len()));
    }
    if !failures.is_empty() {
        problems.push(format!("{} processes failed", failures.len()));
    }
    if tokens.len() == 1 && issued.as_ref() != tokens.keys().next() {
        problems.push("the token printed is not the one the endpoint issued".to_owned());
    }
    if problems.is_empty() {
        println!("result: OK (one request, one token)");
        true
    } else {
        println!("result: FAILED ({})", problems.join(", "));
        false
    }
}

fn main() -> ExitCode {
    let processes = match processes_from_args() {
        Ok(n) => n,
        Err(message) => {
            if message.is_empty() {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            eprintln!("race: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let home = match tempfile::Builder::new()
        .prefix("codex-store-race-")
        .tempdir()
    {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("race: cannot create a temporary home: {e}");
            return ExitCode::FAILURE;
        }
    };
    let passed = race(home.path(), processes);
    let shown = home.path().display().to_string();
    if let Err(e) = home.close() {
        eprintln!("race: cannot remove {shown}: {e}");
    }
    if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
