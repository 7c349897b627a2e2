//! Benchmarks of the store against the physical floor: the same system calls, hand-written.
//!
//! `cargo bench -p codex-store` prints, in one run:
//! 1. `commit`: `transaction()` + `commit(Some(&doc))` on a 2 KiB ChatGPT-mode auth.json against
//!    the hand-written floor (open the sidecar lock file, flock, read, SHA-256, write a temp file
//!    in the same directory, fsync, rename, fsync the directory, unlock). Target ratio <= 1.25.
//! 2. `load`: `Store::load()` against open + read + `serde_json::from_slice::<Value>`.
//!    Target ratio <= 1.5.
//! 3. 8 processes committing in a loop: total transactions per second of the store against the
//!    floor transaction of 1 in 8 processes. Target ratio >= 0.8. The processes are this binary,
//!    re-executed with `CODEX_STORE_BENCH_CHILD=store|raw`.
//!
//! Store and floor run in alternating blocks so that the machine's noise (fsync stalls of tens of
//! milliseconds happen) hits both. A short run: `cargo bench -p codex-store --bench store --
//! --quick` (plain `cargo bench -p codex-store -- --quick` also passes `--quick` to the library's
//! test harness, which rejects it), or `CODEX_STORE_BENCH_QUICK=1 cargo bench -p codex-store`.
//! `--diagnose` (or `CODEX_STORE_BENCH_DIAGNOSE=1`) adds about 50 s: the floor with parts of the
//! store's behaviour added one at a time, to attribute the store's extra time.
//!
//! One module per measurement ([`commit`], [`load`], [`breakdown`], [`processes`],
//! [`diagnose`]); what they share is in [`measure`] (plan, samples, alternating blocks, the
//! printed ratio and verdict), [`docs`] (the document) and [`floor`] (the hand-written floor and
//! one store transaction).

mod breakdown;
mod commit;
mod diagnose;
mod docs;
mod floor;
mod load;
mod measure;
mod processes;
// The benches' one percentile helper, shared with the test kit's (which depends on this crate,
// so it cannot be a dependency here); this bench uses part of it.
#[allow(dead_code, unused_imports)]
#[path = "../../../tests/src/stats.rs"]
mod stats;

use docs::Docs;
use measure::{Plan, TempRoot};

/// Set (to `store`, `raw` or a diagnostic variant) in the copies of this binary that
/// [`processes`] starts.
const CHILD_ENV: &str = "CODEX_STORE_BENCH_CHILD";
/// Set (to anything but `0`) for a short run, like `-- --quick`.
const QUICK_ENV: &str = "CODEX_STORE_BENCH_QUICK";
/// Set (to anything but `0`) to also run the diagnostic throughput variants, like `--diagnose`.
const DIAGNOSE_ENV: &str = "CODEX_STORE_BENCH_DIAGNOSE";

/// Whether `flag` was given, or the environment variable `env` is set to anything but `0`.
fn asked_for(flag: &str, env: &str) -> bool {
    std::env::args().any(|a| a == flag)
        || std::env::var_os(env).is_some_and(|v| !v.is_empty() && v != "0")
}

fn main() {
    if let Ok(kind) = std::env::var(CHILD_ENV) {
        processes::child_main(&kind);
        return;
    }
    // `cargo bench -p codex-store -- --quick` would also hand `--quick` to the library's test
    // harness, which refuses it: use `--bench store -- --quick`, or the environment variable.
    let quick = asked_for("--quick", QUICK_ENV);
    let plan = if quick { Plan::quick() } else { Plan::full() };
    let root = TempRoot::new();
    println!(
        "codex-store benchmark ({}; 2 KiB ChatGPT-mode auth.json in {})",
        if quick { "quick" } else { "full" },
        root.0.display()
    );
    let docs = Docs::new();
    println!(
        "document: {} bytes (two alternating versions of equal size)",
        docs.bytes[0].len()
    );
    commit::bench_commit(&root.0, &docs, &plan);
    load::bench_load(&root.0, &docs, &plan);
    breakdown::bench_breakdown(&root.0, &docs, &plan);
    processes::bench_processes(&root.0, &docs, &plan);
    if asked_for("--diagnose", DIAGNOSE_ENV) {
        diagnose::bench_diagnose(&root.0, &docs, &plan);
    }
}
