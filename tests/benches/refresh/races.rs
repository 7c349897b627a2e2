//! 3. 32 processes (`bench-worker`) racing one expired credential (every one of them must
//!    wait for the refresh) against the fake token endpoint
//!    answering after 100 ms: requests seen, distinct tokens, and the wall time until all 32 hold
//!    the new token.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use codex_refresh::TOKEN_URL_ENV;
use codex_store::Secret;
use codex_store_tests::fake_idp::FakeIdp;
use codex_store_tests::stats::Summary;

use crate::common::{home_with_tokens, pass, Plan, ACCOUNT, EMAIL, INITIAL_RT, PLAN};

const WORKERS: usize = 32;
const IDP_DELAY: Duration = Duration::from_millis(100);
/// Bounds any wait on a worker; only turns a hang into a failure.
const WORKER_TIMEOUT: Duration = Duration::from_secs(120);

/// The worker binary: cargo passes its path to benches; else it sits next to target/<profile>/deps.
fn worker_binary() -> PathBuf {
    if let Some(path) = option_env!("CARGO_BIN_EXE_bench-worker") {
        if Path::new(path).is_file() {
            return PathBuf::from(path);
        }
    }
    let exe = std::env::current_exe().expect("cannot locate this bench binary");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the bench binary is not in target/<profile>/deps");
    let path = profile_dir.join("bench-worker");
    assert!(
        path.is_file(),
        "bench-worker not found at {} (build it: cargo build --release -p codex-store-tests --bin bench-worker)",
        path.display()
    );
    path
}

enum Event {
    Line(usize, String, Instant),
    Eof(usize),
}

struct RaceResult {
    requests: usize,
    distinct: usize,
    all_new: bool,
    wall: Duration,
    first_done: Duration,
    errors: Vec<String>,
}

fn recv(rx: &Receiver<Event>, what: &str) -> Result<Event, String> {
    rx.recv_timeout(WORKER_TIMEOUT)
        .map_err(|e| format!("no event from the workers while waiting for {what}: {e}"))
}

fn race_once(worker: &Path) -> Result<RaceResult, String> {
    // Expired: no worker may keep its token, every one waits for the one refresh (a token due
    // but still valid is kept by a worker that finds the refresh under way).
    let home = home_with_tokens(-60);
    let idp = FakeIdp::start(ACCOUNT, EMAIL, PLAN, INITIAL_RT);
    idp.set_delay(IDP_DELAY);

    let (tx, rx) = mpsc::channel::<Event>();
    let mut children: Vec<Child> = Vec::with_capacity(WORKERS);
    let mut stdins: Vec<ChildStdin> = Vec::with_capacity(WORKERS);
    let mut readers = Vec::with_capacity(WORKERS);
    let kill_all = |children: &mut Vec<Child>| {
        for child in children.iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    };
    for i in 0..WORKERS {
        let spawned = Command::new(worker)
            .arg(home.path())
            .env(TOKEN_URL_ENV, idp.url())
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                kill_all(&mut children);
                return Err(format!("cannot start {}: {e}", worker.display()));
            }
        };
        stdins.push(child.stdin.take().expect("piped stdin"));
        let stdout = child.stdout.take().expect("piped stdout");
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(Event::Line(i, line, Instant::now())).is_err() {
                    return;
                }
            }
            let _ = tx.send(Event::Eof(i));
        }));
        children.push(child);
    }
    drop(tx);

    let outcome = (|| {
        let mut ready = 0;
        while ready < WORKERS {
            match recv(&rx, "ready")? {
                Event::Line(_, line, _) if line == "ready" => ready += 1,
                Event::Line(i, line, _) => return Err(format!("worker {i} said {line:?}")),
                Event::Eof(i) => return Err(format!("worker {i} exited before ready")),
            }
        }
        let start = Instant::now();
        for stdin in &mut stdins {
            stdin
                .write_all(b"go\n")
                .and_then(|()| stdin.flush())
                .map_err(|e| format!("cannot signal a worker: {e}"))?;
        }
        let mut fingerprints = Vec::with_capacity(WORKERS);
        let mut errors = Vec::new();
        let (mut first, mut last) = (None, start);
        let mut answered = [false; WORKERS];
        let mut finished = 0;
        while finished < WORKERS {
            match recv(&rx, "done")? {
                Event::Line(i, line, at) => {
                    finished += 1;
                    answered[i] = true;
                    first.get_or_insert(at);
                    last = last.max(at);
                    // `done <fingerprint> <microseconds>`
                    match line.strip_prefix("done ").and_then(|r| r.split(' ').next()) {
                        Some(fp) => fingerprints.push(fp.to_owned()),
                        None => errors.push(format!("worker {i}: {line}")),
                    }
                }
                Event::Eof(i) if answered[i] => {}
                Event::Eof(i) => return Err(format!("worker {i} exited without an answer")),
            }
        }
        Ok((start, first.unwrap_or(start), last, fingerprints, errors))
    })();
    drop(stdins);
    let (start, first, last, fingerprints, errors) = match outcome {
        Ok(v) => v,
        Err(e) => {
            kill_all(&mut children);
            return Err(e);
        }
    };
    for mut child in children {
        let _ = child.wait();
    }
    for reader in readers {
        let _ = reader.join();
    }

    let requests = idp.requests();
    let issued = idp
        .last_issued()
        .map(|i| Secret::new(i.access_token).fingerprint());
    let distinct: BTreeSet<&String> = fingerprints.iter().collect();
    let all_new = issued
        .as_ref()
        .is_some_and(|fp| fingerprints.len() == WORKERS && fingerprints.iter().all(|f| f == fp));
    Ok(RaceResult {
        requests,
        distinct: distinct.len(),
        all_new,
        wall: last - start,
        first_done: first - start,
        errors,
    })
}

pub fn races(plan: &Plan) -> bool {
    let worker = worker_binary();
    let delay_ms = IDP_DELAY.as_secs_f64() * 1000.0;
    let mut ok = true;
    let mut walls = Vec::new();
    for run in 1..=plan.races {
        match race_once(&worker) {
            Ok(r) => {
                let wall_ms = r.wall.as_secs_f64() * 1000.0;
                let correct =
                    r.requests == 1 && r.distinct == 1 && r.all_new && r.errors.is_empty();
                ok &= correct;
                walls.push(wall_ms);
                println!(
                    "race {run}/{}: {WORKERS} processes, endpoint delay {delay_ms:.0} ms | requests seen {} (must be 1) | distinct tokens {} (must be 1){} | all {WORKERS} hold the new token after {wall_ms:.1} ms (first after {:.1} ms) | {:.2}x the delay (target < 1.5x) {}",
                    plan.races,
                    r.requests,
                    r.distinct,
                    if r.all_new { "" } else { ", NOT the newly issued one" },
                    r.first_done.as_secs_f64() * 1000.0,
                    wall_ms / delay_ms,
                    pass(correct && wall_ms < 1.5 * delay_ms),
                );
                for e in r.errors.iter().take(5) {
                    println!("race {run}: {e}");
                }
            }
            Err(e) => {
                ok = false;
                println!("race {run}/{}: FAILED: {e}", plan.races);
            }
        }
    }
    if !walls.is_empty() {
        let m = Summary::of(&walls).p50;
        println!(
            "race median of {}: all {WORKERS} hold the new token {m:.1} ms after the start signal | {:.2}x the {delay_ms:.0} ms delay (target < 1.5x) {}",
            walls.len(),
            m / delay_ms,
            pass(ok && m < 1.5 * delay_ms)
        );
    }
    ok
}
