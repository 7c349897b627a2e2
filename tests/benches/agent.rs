//! What `codex-store agent` changes, measured (`cargo build --release --workspace --bins &&
//! cargo bench -p codex-store-tests --bench agent`):
//!
//! 1. requests per rotation when K long-lived Codex stand-ins (`codex-sim --live`: Codex's due
//!    rule, its re-read before a refresh, its request before any lock) live across the moment
//!    their token becomes due, without and with the agent (K = 4, 8, 16);
//! 2. `auth()` latency (p50, p99) in other processes while one process refreshes against an
//!    endpoint answering after 2 s and their token is due but valid: before (they wait for that
//!    refresh, `WhileRefreshing::Wait`) and after (they keep their valid token);
//! 3. the idle agent: CPU time per hour, resident memory and wake-ups (context switches of all
//!    its threads) per hour while nothing changes, beside the floor of a sleeping process.
//!
//! Run without `--bench` (as `cargo test --benches` does), it runs a short smoke version. Exits 1
//! when a correctness check fails (a Codex stand-in refused, or a request beside the agent that
//! was not the agent's).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use codex_store_tests::fake_idp::FakeIdp;
use codex_store_tests::jwt;
use codex_store_tests::process::Process;
use codex_store_tests::programs::built;
use codex_store_tests::stats::Summary;

const URL_ENV: &str = "CODEX_REFRESH_TOKEN_URL_OVERRIDE";
const ACCOUNT: &str = "acc-bench-agent";
const EMAIL: &str = "bench@example.com";
const PLAN: &str = "pro";
const INITIAL_RT: &str = "rt_bench_agent_initial";
/// Codex's refresh window.
const CODEX_WINDOW: i64 = 300;
/// The agent's lead in the rotation runs.
const LEAD: i64 = 310;

struct Plan {
    full: bool,
    ks: Vec<usize>,
    latency_rounds: usize,
    readers: usize,
    idle: Duration,
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let plan = if full {
        Plan {
            full,
            ks: vec![4, 8, 16],
            latency_rounds: 5,
            readers: 8,
            idle: Duration::from_secs(60),
        }
    } else {
        Plan {
            full,
            ks: vec![4],
            latency_rounds: 1,
            readers: 4,
            idle: Duration::from_secs(3),
        }
    };
    let bins = Bins {
        store: built("codex-store", "codex-store-cli"),
        sim: built("codex-sim", "codex-store-tests"),
        worker: built("bench-worker", "codex-store-tests"),
    };
    println!(
        "agent benchmark ({}): codex-store {}",
        if plan.full { "full" } else { "smoke" },
        bins.store.display()
    );
    let mut failed = false;
    failed |= requests_per_rotation(&bins, &plan);
    failed |= auth_latency(&bins, &plan);
    idle_agent(&bins, &plan);
    if failed {
        eprintln!("a correctness check failed (see above)");
        std::process::exit(1);
    }
}

struct Bins {
    store: PathBuf,
    sim: PathBuf,
    worker: PathBuf,
}

/// A fresh home holding credentials whose access token expires in `expires_in` seconds, and the
/// endpoint that knows them, issuing tokens that live `lifetime` seconds.
fn signed_in(expires_in: i64, lifetime: i64) -> (tempfile::TempDir, FakeIdp) {
    let home = tempfile::tempdir().expect("a temp dir for CODEX_HOME");
    let access = jwt::access_token(jwt::now_unix() + expires_in, "at-bench-initial");
    let id = jwt::id_token(EMAIL, ACCOUNT, PLAN);
    std::fs::write(
        home.path().join("auth.json"),
        jwt::auth_json(&access, INITIAL_RT, &id, ACCOUNT),
    )
    .expect("write auth.json");
    let idp = FakeIdp::start(ACCOUNT, EMAIL, PLAN, INITIAL_RT);
    idp.set_access_token_lifetime(lifetime);
    (home, idp)
}

fn spawn_agent(bins: &Bins, home: &Path, url: &str, lead: &str) -> Process {
    let mut command = Command::new(&bins.store);
    command
        .args(["--home"])
        .arg(home)
        .args(["agent", "--lead", lead, "--json"])
        .env(URL_ENV, url)
        .env_remove("RUST_LOG");
    Process::spawn_command("codex-store agent", command)
}

/// One run of K live Codex stand-ins whose token becomes due for them 2 s in, with or without
/// the agent. Returns (requests, rotations, stuck or refused stand-ins, requests the stand-ins
/// sent).
fn rotation_run(bins: &Bins, k: usize, with_agent: bool) -> (usize, usize, usize, usize) {
    // Due for Codex 2 s from now (and for the agent at once); new tokens live an hour; the
    // endpoint answers after 500 ms, so that the stand-ins' requests overlap as they do over a
    // real network.
    let (home, idp) = signed_in(CODEX_WINDOW + 2, 3600);
    idp.set_delay(Duration::from_millis(500));
    let url = idp.url();
    let mut sims: Vec<Process> = (0..k)
        .map(|i| {
            let mut command = Command::new(&bins.sim);
            command
                .args(["--live", "9", "--no-wait"])
                .env("CODEX_HOME", home.path())
                .env(URL_ENV, &url)
                .env_remove("RUST_LOG");
            Process::spawn_command(format!("codex-sim #{i}"), command)
        })
        .collect();
    for sim in &sims {
        sim.line("read");
    }
    let agent = with_agent.then(|| {
        let agent = spawn_agent(bins, home.path(), &url, &LEAD.to_string());
        agent.wait_for_stderr_line("\"started\"");
        agent
    });
    let finished: Vec<(Vec<String>, ExitStatus)> = sims
        .iter_mut()
        .map(|s| {
            let out = s.finish(Duration::from_secs(60));
            (out.lines(), out.status)
        })
        .collect();
    if let Some(mut agent) = agent {
        agent.terminate(Duration::from_secs(10));
    }
    let lived = codex_store_tests::codex_sim::exit::LIVED;
    let unhappy = finished
        .iter()
        .filter(|(_, status)| status.code() != Some(lived))
        .count();
    let sim_requests = finished
        .iter()
        .flat_map(|(lines, _)| lines)
        .filter(|l| l.starts_with("requesting "))
        .count();
    (idp.requests(), idp.successes(), unhappy, sim_requests)
}

fn requests_per_rotation(bins: &Bins, plan: &Plan) -> bool {
    println!("\n1. requests per rotation: K live Codex stand-ins crossing their due time");
    println!(
        "{:<4} {:<14} {:>8} {:>9} {:>20} {:>22} {:>24}",
        "K",
        "agent",
        "requests",
        "rotations",
        "requests/rotation",
        "stand-in requests",
        "stand-ins stuck/refused"
    );
    let mut failed = false;
    for &k in &plan.ks {
        for with_agent in [false, true] {
            let (requests, rotations, unhappy, sim_requests) = rotation_run(bins, k, with_agent);
            let ratio = requests as f64 / rotations.max(1) as f64;
            println!(
                "{k:<4} {:<14} {requests:>8} {rotations:>9} {ratio:>20.2} {sim_requests:>22} {unhappy:>24}",
                if with_agent { "running" } else { "none" }
            );
            if with_agent && (sim_requests != 0 || unhappy != 0 || requests != rotations) {
                eprintln!(
                    "FAIL: beside the agent, K={k}: {sim_requests} stand-in request(s), {unhappy} \
                     stand-in(s) stuck or refused, {requests} requests for {rotations} rotations"
                );
                failed = true;
            }
        }
    }
    failed
}

/// One round: a refresher starts refreshing (the endpoint answers after 2 s); once its request
/// is in flight, `readers` processes with the same due but valid token call `auth()`. Returns
/// their latencies.
fn latency_round(bins: &Bins, readers: usize, wait: bool) -> Vec<Duration> {
    // Due (within 5 minutes) but valid for 2 more minutes.
    let (home, idp) = signed_in(120, 3600);
    idp.set_delay(Duration::from_secs(2));
    let url = idp.url();
    let spawn = |name: String| {
        let mut command = Command::new(&bins.worker);
        command.arg(home.path());
        if wait {
            command.arg("wait");
        }
        command.env(URL_ENV, &url).env_remove("RUST_LOG");
        let worker = Process::spawn_command(name, command);
        worker.expect_line("ready");
        worker
    };
    let mut refresher = spawn("refresher".into());
    let mut others: Vec<Process> = (0..readers)
        .map(|i| spawn(format!("reader #{i}")))
        .collect();
    refresher.go();
    assert!(
        idp.wait_for_requests(1, Duration::from_secs(20)),
        "the refresher sent no request"
    );
    for other in &mut others {
        other.go();
    }
    let latencies = others
        .iter_mut()
        .map(|w| {
            let line = w.line("done");
            let micros: u64 = line
                .split(' ')
                .nth(2)
                .and_then(|m| m.parse().ok())
                .unwrap_or_else(|| panic!("{}: unexpected line {line}", w.name()));
            Duration::from_micros(micros)
        })
        .collect();
    refresher.line("done");
    latencies
}

fn auth_latency(bins: &Bins, plan: &Plan) -> bool {
    println!(
        "\n2. auth() in {} other processes while one refreshes (endpoint 2 s), token due but valid",
        plan.readers
    );
    let mut medians = Vec::new();
    for (label, wait) in [
        ("before (wait for the refresh)", true),
        ("after (keep the valid token)", false),
    ] {
        let all: Vec<f64> = (0..plan.latency_rounds)
            .flat_map(|_| latency_round(bins, plan.readers, wait))
            .map(|latency| latency.as_secs_f64() * 1e3)
            .collect();
        let summary = Summary::of(&all);
        medians.push(summary.p50);
        println!(
            "{label:<32} samples {:>3} | p50 {:>10.3} ms | p99 {:>10.3} ms",
            summary.count, summary.p50, summary.p99
        );
    }
    println!(
        "ratio before/after (p50): {:.0}x",
        medians[0] / medians[1].max(1e-6)
    );
    let floor = auth_floor(if plan.full { 2000 } else { 200 });
    println!(
        "{:<32} samples {:>3} | p50 {:>10.3} ms | p99 {:>10.3} ms",
        "floor (re-read, parse, probe)", floor.count, floor.p50, floor.p99
    );
    println!(
        "after / floor (p50): {:.1}x",
        medians[1] / floor.p50.max(1e-6)
    );
    false
}

/// What keeping the valid token needs at least, measured here in one process: re-read and parse
/// auth.json, and probe the refresh lock without waiting, while another holds it.
fn auth_floor(rounds: usize) -> Summary {
    let (home, _idp) = signed_in(120, 3600);
    let store = codex_store::Store::open(home.path()).expect("open the store");
    // Another handle holds the refresh lock, as the refreshing process does.
    let holder = codex_store::Store::open(home.path()).expect("open a second handle");
    let _held = holder
        .try_begin_rotation()
        .expect("take the refresh lock")
        .expect("the refresh lock is free");
    let samples: Vec<f64> = (0..rounds)
        .map(|_| {
            let started = Instant::now();
            let snapshot = store.load().expect("re-read auth.json");
            let held = store.refresh_lock_held().expect("probe the refresh lock");
            assert!(
                held && snapshot.auth().is_some(),
                "the floor measured nothing"
            );
            started.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    Summary::of(&samples)
}

/// (CPU time, context switches, threads) summed over every thread of `pid`, and its resident
/// memory in kB.
fn sample(pid: u32) -> (Duration, u64, usize, u64) {
    let (mut cpu_ns, mut switches, mut threads) = (0u64, 0u64, 0usize);
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            threads += 1;
            // schedstat: time on the CPU (ns), time waiting to run (ns), timeslices.
            let schedstat =
                std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            cpu_ns += schedstat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            for line in status.lines() {
                if let Some(v) = line
                    .strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
                {
                    switches += v.trim().parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    (Duration::from_nanos(cpu_ns), switches, threads, rss)
}

fn idle_agent(bins: &Bins, plan: &Plan) {
    println!(
        "\n3. the idle agent over {:?} (a fresh token: nothing to do for an hour)",
        plan.idle
    );
    let (home, idp) = signed_in(3 * 3600, 3600);
    let mut agent = spawn_agent(bins, home.path(), &idp.url(), "15m");
    agent.wait_for_stderr_line("\"started\"");
    // Let start-up (runtime, watcher, first read) settle before the window.
    std::thread::sleep(Duration::from_millis(500));
    let mut floor = Command::new("sleep")
        .arg(format!("{}", plan.idle.as_secs() + 5))
        .spawn()
        .expect("run sleep");
    let (c0, s0, _, _) = sample(agent.id());
    let (_, f0, _, _) = sample(floor.id());
    let started = Instant::now();
    std::thread::sleep(plan.idle);
    let window = started.elapsed();
    let (c1, s1, threads, rss) = sample(agent.id());
    let (_, f1, _, _) = sample(floor.id());
    let _ = floor.kill();
    let _ = floor.wait();
    let per_hour = 3600.0 / window.as_secs_f64();
    println!(
        "agent: CPU {:.2} ms/hour | RSS {rss} kB ({threads} threads) | wake-ups {:.0}/hour | \
         floor (a sleeping process): wake-ups {:.0}/hour | requests {}",
        c1.saturating_sub(c0).as_secs_f64() * 1e3 * per_hour,
        s1.saturating_sub(s0) as f64 * per_hour,
        f1.saturating_sub(f0) as f64 * per_hour,
        idp.requests()
    );
    println!(
        "(by design the agent also wakes at least every 10 minutes, 6/hour, to look at its home \
         (a directory replaced, its claim lost); a window shorter than that may not see one. A \
         suspend is counted by its timer itself: on Linux a timerfd on CLOCK_BOOTTIME)"
    );
    agent.terminate(Duration::from_secs(10));
}
