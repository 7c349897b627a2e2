//! Benchmarks of codex-refresh (`cargo bench -p codex-store-tests --bench refresh`):
//!
//! 1. the cached `AuthManager::auth()` fast path, per call, against a floor (an `Arc` clone out of
//!    a `std::sync::RwLock<Option<Arc<_>>>` plus `SystemTime::now()`);
//! 2. the system calls that fast path makes: this binary re-runs itself under
//!    `strace -f` and counts the calls of the main thread between two marker system calls;
//! 3. 32 processes (`bench-worker`) racing one due credential against the fake token endpoint
//!    answering after 100 ms: requests seen, distinct tokens, and the wall time until all 32 hold
//!    the new token.
//!
//! Run without `--bench` (as `cargo test --benches` does), it runs a short smoke version.
//! Exits 1 when a correctness check fails (a syscall on the fast path, more than one request,
//! more than one token); missed timing targets are only printed as FAIL.

use std::collections::BTreeSet;
use std::hint::black_box;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use codex_refresh::{AuthManager, RefreshConfig, TOKEN_URL_ENV};
use codex_store::{Secret, Store};
use codex_store_tests::fake_idp::FakeIdp;
use codex_store_tests::jwt;
use codex_store_tests::programs::on_path;

/// Set (to the CODEX_HOME to use) in the copy of this binary that runs under strace.
const STRACE_CHILD_ENV: &str = "CODEX_REFRESH_BENCH_STRACE_CHILD";
const ACCOUNT: &str = "acc-bench-0001";
const EMAIL: &str = "bench@example.com";
const PLAN: &str = "pro";
const INITIAL_RT: &str = "rt_bench_initial";
/// Fast-path calls between the strace markers.
const TRACED_CALLS: usize = 100_000;
const WORKERS: usize = 32;
const IDP_DELAY: Duration = Duration::from_millis(100);
/// Bounds any wait on a worker; only turns a hang into a failure.
const WORKER_TIMEOUT: Duration = Duration::from_secs(120);

struct Plan {
    full: bool,
    batches: usize,
    calls_per_batch: usize,
    races: usize,
}

fn main() {
    if let Some(dir) = std::env::var_os(STRACE_CHILD_ENV) {
        strace_child(Path::new(&dir));
        return;
    }
    let full = std::env::args().any(|a| a == "--bench");
    let plan = if full {
        Plan {
            full,
            batches: 9,
            calls_per_batch: 1_000_000,
            races: 3,
        }
    } else {
        Plan {
            full,
            batches: 3,
            calls_per_batch: 100_000,
            races: 1,
        }
    };
    if !plan.full {
        println!(
            "(smoke run without --bench: fewer iterations; use `cargo bench` for the numbers)"
        );
    }
    let mut ok = true;
    fast_path(&plan);
    ok &= syscalls();
    ok &= races(&plan);
    if !ok {
        eprintln!("refresh bench: a correctness check failed (see above)");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures

/// A fresh CODEX_HOME holding ChatGPT credentials whose access token expires `exp_in_secs` from
/// now (the refresh window is 5 minutes: 3600 is not due, 60 is due but still usable).
fn home_with_tokens(exp_in_secs: i64) -> tempfile::TempDir {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = tempfile::tempdir().expect("cannot create a temporary CODEX_HOME");
    let text = jwt::auth_json(
        &jwt::access_token(jwt::now_unix() + exp_in_secs, "at_bench_initial"),
        INITIAL_RT,
        &jwt::id_token(EMAIL, ACCOUNT, PLAN),
        ACCOUNT,
    );
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.path().join("auth.json"))
        .expect("cannot create auth.json");
    file.write_all(text.as_bytes())
        .expect("cannot write auth.json");
    dir
}

/// A manager over `dir` whose token URL is never used (the credentials are not due).
fn cached_manager(dir: &Path) -> AuthManager {
    let config = RefreshConfig {
        token_url: "http://127.0.0.1:9/unused".into(),
        ..RefreshConfig::default()
    };
    let store = Store::open(dir).expect("cannot open the store");
    let manager = AuthManager::new(store, config).expect("cannot build the manager");
    let auth = manager.cached().expect("the manager cached no credentials");
    assert!(
        !auth.is_due(SystemTime::now(), manager.config()),
        "the bench credentials must not be due"
    );
    manager
}

fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("cannot build a tokio runtime")
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn pass(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

// ---------------------------------------------------------------------------------------------
// 1. The fast path

fn fast_path(plan: &Plan) {
    let home = home_with_tokens(3600);
    let manager = cached_manager(home.path());
    let runtime = current_thread_runtime();
    let n = plan.calls_per_batch;

    let auth_batches: Vec<f64> = runtime.block_on(async {
        // Warm up (first-touch costs, branch predictors, frequency).
        for _ in 0..n / 10 {
            black_box(manager.auth().await.expect("auth() failed"));
        }
        let mut batches = Vec::with_capacity(plan.batches);
        for _ in 0..plan.batches {
            let started = Instant::now();
            for _ in 0..n {
                // The result is checked once per call but the error path is never taken.
                black_box(manager.auth().await.expect("auth() failed"));
            }
            batches.push(started.elapsed().as_nanos() as f64 / n as f64);
        }
        batches
    });

    // The floor: what auth()'s fast path must do at least, on the same credentials.
    let floor_cell: RwLock<Option<Arc<codex_refresh::CodexAuth>>> = RwLock::new(manager.cached());
    let floor_once = || {
        let cached = floor_cell.read().unwrap_or_else(|p| p.into_inner()).clone();
        black_box((cached, SystemTime::now()));
    };
    for _ in 0..n / 10 {
        floor_once();
    }
    let mut floor_batches: Vec<f64> = (0..plan.batches)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..n {
                floor_once();
            }
            started.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();

    let mut auth_batches = auth_batches;
    let (lo, hi) = {
        let mut sorted = auth_batches.clone();
        sorted.sort_by(f64::total_cmp);
        (sorted[0], sorted[sorted.len() - 1])
    };
    let auth_ns = median(&mut auth_batches);
    let floor_ns = median(&mut floor_batches);
    println!(
        "auth() fast path: {auth_ns:.1} ns/call | floor (RwLock read + Arc clone + SystemTime::now) {floor_ns:.1} ns/call | ratio {:.2} | target < 1 us {}",
        auth_ns / floor_ns,
        pass(auth_ns < 1000.0)
    );
    println!(
        "auth() fast path: median of {} batches x {} calls (batch range {lo:.1}..{hi:.1} ns/call), current-thread runtime",
        plan.batches, n
    );
}

// ---------------------------------------------------------------------------------------------
// 2. System calls of the fast path, counted under strace

/// Runs in the copy of this binary started under strace: prints `tid <main thread id>`, then
/// makes the marker system call getppid, [`TRACED_CALLS`] fast-path calls, and the marker
/// system call getpid (both through `syscall(2)`, never a vDSO or a cache), on the main thread.
fn strace_child(dir: &Path) {
    let manager = cached_manager(dir);
    let runtime = current_thread_runtime();
    runtime.block_on(async {
        for _ in 0..1000 {
            black_box(manager.auth().await.expect("auth() failed"));
        }
    });
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "tid {tid}").expect("cannot write to stdout");
        out.flush().expect("cannot flush stdout");
    }
    let failures = runtime.block_on(async {
        let mut failures = 0usize;
        // SAFETY: getppid takes no arguments and cannot fail.
        unsafe { libc::syscall(libc::SYS_getppid) };
        for _ in 0..TRACED_CALLS {
            if black_box(manager.auth().await).is_err() {
                failures += 1;
            }
        }
        // SAFETY: getpid takes no arguments and cannot fail.
        unsafe { libc::syscall(libc::SYS_getpid) };
        failures
    });
    println!("failures {failures}");
}

/// Counts the system calls (and signals) strace recorded for thread `tid` strictly between its
/// first getppid line and the next getpid line; returns the count and the names of those calls
/// (or why it could not).
fn count_between_markers(trace: &str, tid: &str) -> Result<(usize, Vec<String>), String> {
    let mut inside = false;
    let mut names = Vec::new();
    for line in trace.lines() {
        let mut parts = line.splitn(2, char::is_whitespace);
        if parts.next() != Some(tid) {
            continue;
        }
        let call = parts.next().unwrap_or("").trim_start();
        if !inside {
            inside = call.starts_with("getppid(");
            continue;
        }
        if call.starts_with("getpid(") {
            return Ok((names.len(), names));
        }
        if call.starts_with("<...") {
            // The second half of a call already counted at its `<unfinished ...>` line.
            continue;
        }
        let name: String = call
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        names.push(if name.is_empty() {
            call.to_owned()
        } else {
            name
        });
    }
    Err(if inside {
        "the end marker (getpid) is missing from the trace".into()
    } else {
        format!("the start marker (getppid) of thread {tid} is missing from the trace")
    })
}

/// Returns false only when syscalls were counted and there were some.
fn syscalls() -> bool {
    let label = format!("auth() fast path: syscalls in {TRACED_CALLS} calls:");
    let Some(strace) = on_path("strace") else {
        println!("{label} not counted: strace not installed (apt-get install strace)");
        return true;
    };
    let home = home_with_tokens(3600);
    let trace_path = home.path().join("strace.out");
    let exe = std::env::current_exe().expect("cannot locate this bench binary");
    let output = Command::new(&strace)
        .args(["-f", "-qq", "-e", "trace=all", "-o"])
        .arg(&trace_path)
        .arg(&exe)
        .env(STRACE_CHILD_ENV, home.path())
        .stdin(Stdio::null())
        .output();
    let output = match output {
        Ok(output) => output,
        Err(e) => {
            println!("{label} not counted: cannot run {}: {e}", strace.display());
            return true;
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let tid = stdout
        .lines()
        .find_map(|l| l.strip_prefix("tid "))
        .map(str::trim);
    let failures = stdout
        .lines()
        .find_map(|l| l.strip_prefix("failures "))
        .map(str::trim);
    let (Some(tid), Some("0"), true) = (tid, failures, output.status.success()) else {
        println!(
            "{label} not counted: the traced child failed ({}; stdout {:?}; stderr {:?})",
            output.status,
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        // A child that ran but whose auth() failed is a real failure; strace refusing to run
        // (no ptrace in a container) is not.
        return failures.is_none();
    };
    let trace = match std::fs::read_to_string(&trace_path) {
        Ok(trace) => trace,
        Err(e) => {
            println!("{label} not counted: cannot read the trace: {e}");
            return true;
        }
    };
    match count_between_markers(&trace, tid) {
        Ok((0, _)) => {
            println!("{label} 0 (target 0) PASS (strace -f, main thread {tid}, between getppid/getpid markers)");
            true
        }
        Ok((count, names)) => {
            let mut distinct: Vec<(String, usize)> = Vec::new();
            for name in names {
                match distinct.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, c)) => *c += 1,
                    None => distinct.push((name, 1)),
                }
            }
            let summary: Vec<String> = distinct
                .iter()
                .take(10)
                .map(|(n, c)| format!("{n} x{c}"))
                .collect();
            println!("{label} {count} (target 0) FAIL: {}", summary.join(", "));
            false
        }
        Err(why) => {
            println!("{label} not counted: {why}");
            true
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. 32 processes racing a due credential

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
    let home = home_with_tokens(60);
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

fn races(plan: &Plan) -> bool {
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
        let m = median(&mut walls);
        println!(
            "race median of {}: all {WORKERS} hold the new token {m:.1} ms after the start signal | {:.2}x the {delay_ms:.0} ms delay (target < 1.5x) {}",
            walls.len(),
            m / delay_ms,
            pass(ok && m < 1.5 * delay_ms)
        );
    }
    ok
}
