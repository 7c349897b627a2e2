//! The second measurement, `load`: `Store::load()` against open + read +
//! `serde_json::from_slice::<Value>` of the same file; target ratio <= 1.5.

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use codex_store::{Expect, Store};

use crate::docs::Docs;
use crate::floor::floor_load;
use crate::measure::{alternating_blocks, print_latency_ratio, Plan, Samples};

const LOAD_TARGET: f64 = 1.5;

pub fn bench_load(root: &Path, docs: &Docs, plan: &Plan) {
    let store = Store::open(root.join("load-store")).expect("open the store");
    store
        .compare_and_swap(Expect::Any, Some(&docs.docs[0]))
        .expect("seed the store");
    let path = store.path().to_path_buf();
    // The floor reads the very same file.
    for _ in 0..plan.load_warmup {
        black_box(store.load().expect("load"));
        black_box(floor_load(&path));
    }
    let mut s = Samples::default();
    let mut f = Samples::default();
    alternating_blocks(plan.load_iters, plan.load_block, |side, _| {
        let start = Instant::now();
        if side == 0 {
            black_box(store.load().expect("load"));
            s.push(start.elapsed());
        } else {
            black_box(floor_load(&path));
            f.push(start.elapsed());
        }
    });
    print_latency_ratio("load", &s, &f, LOAD_TARGET);
}
