//! What every measurement shares: the plan (how many iterations), the benchmark's directory,
//! samples and their statistics, the alternating order that lets the machine's noise hit store
//! and floor alike, and the printed ratio with its target and verdict.

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How many iterations each measurement makes.
pub struct Plan {
    pub commit_warmup: usize,
    pub commit_iters: usize,
    pub commit_block: usize,
    pub load_warmup: usize,
    pub load_iters: usize,
    pub load_block: usize,
    pub breakdown_iters: usize,
    /// Each of store and floor runs this many phases, alternating (ABBA order), each this long.
    pub mp_rounds: usize,
    pub mp_phase: Duration,
}

impl Plan {
    pub fn full() -> Plan {
        Plan {
            commit_warmup: 50,
            commit_iters: 1000,
            commit_block: 50,
            load_warmup: 2000,
            load_iters: 20_000,
            load_block: 1000,
            breakdown_iters: 5000,
            mp_rounds: 8,
            mp_phase: Duration::from_millis(750),
        }
    }

    pub fn quick() -> Plan {
        Plan {
            commit_warmup: 10,
            commit_iters: 100,
            commit_block: 20,
            load_warmup: 200,
            load_iters: 2000,
            load_block: 200,
            breakdown_iters: 500,
            mp_rounds: 2,
            mp_phase: Duration::from_millis(400),
        }
    }
}

/// The benchmark's directory, removed when dropped (also when a step panics).
pub struct TempRoot(pub PathBuf);

impl TempRoot {
    pub fn new() -> TempRoot {
        let dir = std::env::temp_dir().join(format!("codex-store-bench-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the benchmark directory");
        TempRoot(dir)
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics.

/// Measured durations.
#[derive(Default)]
pub struct Samples(Vec<Duration>);

impl Samples {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    /// How many durations were measured.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    fn quantile(&self, q: f64) -> f64 {
        let v: Vec<f64> = self.0.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        if v.is_empty() {
            return f64::NAN;
        }
        crate::stats::percentile(&v, q)
    }

    /// The median, in microseconds.
    pub fn median(&self) -> f64 {
        self.quantile(0.5)
    }

    /// The 99th percentile, in microseconds.
    pub fn p99(&self) -> f64 {
        self.quantile(0.99)
    }

    pub fn describe(&self) -> String {
        format!("median {:.1} us p99 {:.1} us", self.median(), self.p99())
    }
}

/// Splits one timed transaction into the part until `o` (lock taken, file read), the rest, and
/// the total `t`.
pub fn record(
    open: &mut Samples,
    rest: &mut Samples,
    total: &mut Samples,
    o: Duration,
    t: Duration,
) {
    open.push(o);
    rest.push(t.saturating_sub(o));
    total.push(t);
}

/// `op` timed `n` times, after `n / 10` untimed runs.
pub fn time_n(n: usize, mut op: impl FnMut()) -> Samples {
    for _ in 0..n / 10 {
        op();
    }
    let mut s = Samples::default();
    for _ in 0..n {
        let start = Instant::now();
        op();
        s.push(start.elapsed());
    }
    s
}

// ---------------------------------------------------------------------------------------------
// The order of the runs.

/// Runs `iters` iterations of two sides in blocks of `block`: each block runs side 0 (the
/// store) and side 1 (the floor) `block` times each, and which side goes first alternates from
/// block to block, so that neither always follows the other. Calls `run(side, i)` with `i` the
/// iteration's number.
pub fn alternating_blocks(iters: usize, block: usize, mut run: impl FnMut(usize, usize)) {
    let mut done = 0;
    let mut round = 0;
    while done < iters {
        let n = block.min(iters - done);
        // Alternate which side goes first, so that neither always follows the other.
        for side in [round % 2, (round + 1) % 2] {
            for i in 0..n {
                run(side, done + i);
            }
        }
        done += n;
        round += 1;
    }
}

/// The kind that runs `j`-th of `n` in round `round`: in order in even rounds, in reverse in odd
/// ones (ABBA), so that drifting noise weighs on every kind alike.
pub fn abba(round: usize, j: usize, n: usize) -> usize {
    if round.is_multiple_of(2) {
        j
    } else {
        n - 1 - j
    }
}

// ---------------------------------------------------------------------------------------------
// Printing.

pub fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

/// `ratio R (target <= T) PASS|FAIL` for a ratio that must stay at most `target` (a latency), or
/// `(target >= T)` with `at_least` (a throughput).
pub fn ratio_verdict(ratio: f64, target: f64, at_least: bool) -> String {
    let (sign, ok) = if at_least {
        (">=", ratio >= target)
    } else {
        ("<=", ratio <= target)
    };
    format!(
        "ratio {:.2} (target {sign} {:.2}) {}",
        ratio,
        target,
        verdict(ok)
    )
}

/// Prints `NAME: store <samples> | floor <samples> | ratio R (target <= T) PASS|FAIL`, with the
/// ratio of the medians.
pub fn print_latency_ratio(name: &str, store: &Samples, floor: &Samples, target: f64) {
    let ratio = store.median() / floor.median();
    println!(
        "{name}: store {} | floor {} | {}",
        store.describe(),
        floor.describe(),
        ratio_verdict(ratio, target, false)
    );
}
