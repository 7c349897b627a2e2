//! The first measurement, `commit`: `transaction()` + `commit(Some(&doc))` against the
//! hand-written floor transaction, in one process; target ratio <= 1.25.

use std::fs;
use std::path::Path;

use codex_store::{Expect, Store};

use crate::docs::Docs;
use crate::floor::{floor_transaction, store_transaction, FloorPaths};
use crate::measure::{alternating_blocks, print_latency_ratio, record, Plan};

const COMMIT_TARGET: f64 = 1.25;

pub fn bench_commit(root: &Path, docs: &Docs, plan: &Plan) {
    let store = Store::open(root.join("commit-store")).expect("open the store");
    store
        .compare_and_swap(Expect::Any, Some(&docs.docs[0]))
        .expect("seed the store");
    let floor_dir = root.join("commit-floor");
    fs::create_dir_all(&floor_dir).expect("create the floor directory");
    let floor = FloorPaths::new(&floor_dir);
    let mut counter = 0;
    fs::write(&floor.auth, &docs.bytes[0]).expect("seed the floor");

    for i in 0..plan.commit_warmup {
        store_transaction(&store, &docs.docs[(i + 1) % 2]);
        floor_transaction(&floor, &docs.bytes[(i + 1) % 2], &mut counter);
    }
    let (mut s_total, mut s_open, mut s_commit) = Default::default();
    let (mut f_total, mut f_open, mut f_commit) = Default::default();
    alternating_blocks(plan.commit_iters, plan.commit_block, |side, i| {
        let v = i % 2;
        if side == 0 {
            let (open, total) = store_transaction(&store, &docs.docs[v]);
            record(&mut s_open, &mut s_commit, &mut s_total, open, total);
        } else {
            let (open, total) = floor_transaction(&floor, &docs.bytes[v], &mut counter);
            record(&mut f_open, &mut f_commit, &mut f_total, open, total);
        }
    });
    print_latency_ratio("commit", &s_total, &f_total, COMMIT_TARGET);
    println!(
        "  commit parts: store transaction() {} + commit() {} | floor lock+read+hash {} + write+fsync+rename+fsync dir+unlock {}",
        s_open.describe(),
        s_commit.describe(),
        f_open.describe(),
        f_commit.describe()
    );
    // The last commit must have left a document the store reads.
    let last = store.load().expect("load after the commit benchmark");
    assert!(last.auth().is_some(), "the store lost its document");
}
