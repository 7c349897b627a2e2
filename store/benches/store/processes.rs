//! The third measurement, 8 processes committing in a loop: total transactions per second of the
//! store against the floor transaction; target ratio >= 0.8. The processes are this binary,
//! re-executed with `CODEX_STORE_BENCH_CHILD=store|raw` ([`child_main`]); [`crate::diagnose`]
//! runs the same phases with the diagnostic variants.

use std::fs;
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use codex_store::Store;
use codex_store_tests::process::Process;

use crate::docs::Docs;
use crate::floor::{
    floor_transaction, store_transaction, variant_transaction, FloorPaths, Variant,
};
use crate::measure::{abba, ratio_verdict, Plan, Samples};
use crate::CHILD_ENV;

const DIR_ENV: &str = "CODEX_STORE_BENCH_DIR";
const DURATION_ENV: &str = "CODEX_STORE_BENCH_DURATION_MS";
pub const PROCESSES: usize = 8;
const THROUGHPUT_TARGET: f64 = 0.8;

/// What the processes of one phase did together.
pub struct PhaseResult {
    tx_per_s: f64,
    count: u64,
    seconds: f64,
    worst_p99_us: f64,
    /// Mean time from holding the lock with the file read (store: `transaction()` returned) to
    /// the end of the transaction, over all transactions of the phase.
    mean_rest_us: f64,
    /// User + system CPU time of the processes, per transaction.
    cpu_us_per_tx: f64,
}

/// User + system CPU time of the waited-for children of this process so far.
///
/// `libc::getrusage` stays: rustix 1.1 has no `getrusage`, and `/proc/self/stat` gives the
/// children's times in clock ticks (10 ms) instead of microseconds.
fn children_cpu() -> Duration {
    // SAFETY: getrusage fills the struct we pass; zeroed is a valid rusage.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    assert_eq!(rc, 0, "getrusage failed");
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn run_phase(kind: &str, dir: &Path, duration: Duration) -> PhaseResult {
    let exe = std::env::current_exe().expect("current_exe");
    let cpu_before = children_cpu();
    let mut workers: Vec<Process> = (0..PROCESSES)
        .map(|n| {
            let mut command = Command::new(&exe);
            command
                .env(CHILD_ENV, kind)
                .env(DIR_ENV, dir)
                .env(DURATION_ENV, duration.as_millis().to_string());
            Process::spawn_command(format!("{kind} child #{n}"), command)
        })
        .collect();
    // Start them together: every child has printed `ready` before any is told to go.
    for w in &workers {
        w.expect_line("ready");
    }
    for w in &mut workers {
        w.go();
    }
    let mut count = 0u64;
    let mut longest = Duration::ZERO;
    let mut worst_p99_us: f64 = 0.0;
    let mut rest_sum_us = 0.0;
    for mut w in workers {
        let line = w.line("its count");
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert!(
            fields.len() == 5 && fields[0] == "count",
            "bad child report: {line:?}"
        );
        let n: u64 = fields[1].parse().expect("count");
        count += n;
        longest = longest.max(Duration::from_nanos(fields[2].parse().expect("elapsed")));
        worst_p99_us = worst_p99_us.max(fields[3].parse().expect("p99"));
        rest_sum_us += n as f64 * fields[4].parse::<f64>().expect("mean rest");
        w.exit_successfully();
    }
    let seconds = longest.as_secs_f64();
    PhaseResult {
        tx_per_s: count as f64 / seconds,
        count,
        seconds,
        worst_p99_us,
        mean_rest_us: rest_sum_us / count.max(1) as f64,
        cpu_us_per_tx: (children_cpu() - cpu_before).as_secs_f64() * 1e6 / count.max(1) as f64,
    }
}

/// The phases of each kind, run in rounds; the order within a round reverses every other
/// round (ABBA), so that drifting noise weighs on every kind alike.
pub fn run_rounds(kinds: &[&str], dirs: &[PathBuf], plan: &Plan) -> Vec<Vec<PhaseResult>> {
    let mut results: Vec<Vec<PhaseResult>> = kinds.iter().map(|_| Vec::new()).collect();
    for round in 0..plan.mp_rounds {
        for j in 0..kinds.len() {
            let k = abba(round, j, kinds.len());
            results[k].push(run_phase(kinds[k], &dirs[k], plan.mp_phase));
        }
    }
    results
}

/// Total transactions per second over all phases of one kind.
pub fn total_rate(phases: &[PhaseResult]) -> f64 {
    let count: u64 = phases.iter().map(|r| r.count).sum();
    let seconds: f64 = phases.iter().map(|r| r.seconds).sum();
    count as f64 / seconds
}

pub fn describe_phases(phases: &[PhaseResult]) -> String {
    let rates: Vec<String> = phases
        .iter()
        .map(|r| format!("{:.0}", r.tx_per_s))
        .collect();
    let worst = phases.iter().map(|r| r.worst_p99_us).fold(0.0, f64::max);
    let count: u64 = phases.iter().map(|r| r.count).sum();
    let rest: f64 = phases
        .iter()
        .map(|r| r.mean_rest_us * r.count as f64)
        .sum::<f64>()
        / count.max(1) as f64;
    let cpu: f64 = phases
        .iter()
        .map(|r| r.cpu_us_per_tx * r.count as f64)
        .sum::<f64>()
        / count.max(1) as f64;
    format!(
        "phases [{}] tx/s, per-process p99 up to {:.1} ms, mean time after read {:.0} us, CPU {:.0} us/tx",
        rates.join(", "),
        worst / 1000.0,
        rest,
        cpu
    )
}

pub fn seed_dir(dir: &Path, docs: &Docs) {
    fs::create_dir_all(dir).expect("create a directory");
    fs::write(dir.join("auth.json"), &docs.bytes[0]).expect("seed");
}

pub fn bench_processes(root: &Path, docs: &Docs, plan: &Plan) {
    let kinds = ["raw", "store"];
    let dirs: Vec<PathBuf> = kinds.iter().map(|k| root.join(format!("mp-{k}"))).collect();
    for d in &dirs {
        seed_dir(d, docs);
    }
    let results = run_rounds(&kinds, &dirs, plan);
    let (f, s) = (&results[0], &results[1]);
    let (f_rate, s_rate) = (total_rate(f), total_rate(s));
    let ratio = s_rate / f_rate;
    println!(
        "{PROCESSES}-process commit throughput: store {:.0} tx/s | floor {:.0} tx/s | {}",
        s_rate,
        f_rate,
        ratio_verdict(ratio, THROUGHPUT_TARGET, true)
    );
    let mut paired: Vec<f64> = f
        .iter()
        .zip(s)
        .map(|(f, s)| s.tx_per_s / f.tx_per_s)
        .collect();
    paired.sort_by(|a, b| a.total_cmp(b));
    println!(
        "  {} rounds of {:?} per side; median of the per-round ratios {:.2}",
        plan.mp_rounds,
        plan.mp_phase,
        paired[paired.len() / 2]
    );
    println!("  store: {}", describe_phases(s));
    println!("  floor: {}", describe_phases(f));
    // Nothing was torn or lost: the store loads, the floor file is one of the two versions.
    let store = Store::open(&dirs[1]).expect("open the store");
    let last = store.load().expect("load after the process benchmark");
    assert!(last.auth().is_some(), "the store lost its document");
    let raw = fs::read(dirs[0].join("auth.json")).expect("read the floor file");
    assert!(
        raw == docs.bytes[0] || raw == docs.bytes[1],
        "the floor file is torn"
    );
}

/// A child process: print `ready`, wait for a line on stdin, commit in a loop for the duration,
/// print `count <n> <elapsed ns> <p99 us> <mean time after the read, us>`.
pub fn child_main(kind: &str) {
    let dir = PathBuf::from(std::env::var(DIR_ENV).expect("CODEX_STORE_BENCH_DIR"));
    let duration = Duration::from_millis(
        std::env::var(DURATION_ENV)
            .expect("CODEX_STORE_BENCH_DURATION_MS")
            .parse()
            .expect("duration in ms"),
    );
    let docs = Docs::new();
    let store = Store::open(&dir).expect("open the store");
    let floor = FloorPaths::new(&dir);
    let mut counter = 0;
    let mut out = io::stdout().lock();
    writeln!(out, "ready").expect("write ready");
    out.flush().expect("flush ready");
    let mut line = String::new();
    io::stdin().lock().read_line(&mut line).expect("read go");
    if line.trim() != "go" {
        // The parent went away before the start.
        return;
    }

    let start = Instant::now();
    let deadline = start + duration;
    let mut latencies = Samples::default();
    let mut rest = Duration::ZERO;
    let mut n: u64 = 0;
    while Instant::now() < deadline {
        let v = (n % 2) as usize;
        let (opened, total) = match kind {
            "store" => store_transaction(&store, &docs.docs[v]),
            "raw" => floor_transaction(&floor, &docs.bytes[v], &mut counter),
            _ if Variant::parse(kind).is_some() => {
                let variant = Variant::parse(kind).expect("a variant");
                variant_transaction(&floor, &docs.docs[v], &docs.bytes[v], &mut counter, variant)
            }
            other => panic!("unknown child kind {other}"),
        };
        latencies.push(total);
        rest += total.saturating_sub(opened);
        n += 1;
    }
    let elapsed = start.elapsed();
    writeln!(
        out,
        "count {n} {} {:.1} {:.1}",
        elapsed.as_nanos(),
        latencies.p99(),
        rest.as_secs_f64() * 1e6 / n.max(1) as f64
    )
    .expect("write the count");
    out.flush().expect("flush the count");
}
