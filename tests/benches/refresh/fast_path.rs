//! 1. The cached `AuthManager::auth()` fast path, per call, against a floor: an `Arc` clone out
//!    of a `std::sync::RwLock<Option<Arc<_>>>` plus `SystemTime::now()`.

use std::hint::black_box;
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime};

use codex_store_tests::stats::Summary;

use crate::common::{cached_manager, current_thread_runtime, home_with_tokens, pass, Plan};

pub fn fast_path(plan: &Plan) {
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
    let floor_batches: Vec<f64> = (0..plan.batches)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..n {
                floor_once();
            }
            started.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();

    let auth = Summary::of(&auth_batches);
    let (lo, hi, auth_ns) = (auth.min, auth.max, auth.p50);
    let floor_ns = Summary::of(&floor_batches).p50;
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
