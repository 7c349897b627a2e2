//! Benchmarks of codex-refresh (`cargo bench -p codex-store-tests --bench refresh`):
//!
//! 1. the cached `AuthManager::auth()` fast path, per call, against a floor (an `Arc` clone out of
//!    a `std::sync::RwLock<Option<Arc<_>>>` plus `SystemTime::now()`);
//! 2. the system calls that fast path makes: this binary re-runs itself under
//!    `strace -f` and counts the calls of the main thread between two marker system calls;
//! 3. 32 processes (`bench-worker`) racing one expired credential (every one of them must
//!    wait for the refresh) against the fake token endpoint
//!    answering after 100 ms: requests seen, distinct tokens, and the wall time until all 32 hold
//!    the new token.
//!
//! Run without `--bench` (as `cargo test --benches` does), it runs a short smoke version.
//! Exits 1 when a correctness check fails (a syscall on the fast path, more than one request,
//! more than one token); missed timing targets are only printed as FAIL.
//!
//! One module per measurement ([`fast_path`], [`syscalls`], [`races`]); what they share (the
//! plan, the credentials and the verdict) is in [`common`]; their medians are
//! `codex_store_tests::stats`'.

mod common;
mod fast_path;
mod races;
mod syscalls;

use std::path::Path;

use common::Plan;

/// Set (to the CODEX_HOME to use) in the copy of this binary that runs under strace.
const STRACE_CHILD_ENV: &str = "CODEX_REFRESH_BENCH_STRACE_CHILD";

fn main() {
    if let Some(dir) = std::env::var_os(STRACE_CHILD_ENV) {
        syscalls::strace_child(Path::new(&dir));
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
    fast_path::fast_path(&plan);
    ok &= syscalls::syscalls();
    ok &= races::races(&plan);
    if !ok {
        eprintln!("refresh bench: a correctness check failed (see above)");
        std::process::exit(1);
    }
}
