//! `--diagnose`: the floor with parts of the store's behaviour added one at a time, to attribute
//! the store's extra time: commit latency in one process, then throughput in 8.

use std::path::{Path, PathBuf};

use codex_store::Store;

use crate::docs::Docs;
use crate::floor::{store_transaction, variant_transaction, FloorPaths, Variant};
use crate::measure::{abba, Plan, Samples};
use crate::processes::{describe_phases, run_rounds, seed_dir, total_rate, PROCESSES};

const DIAGNOSTIC_KINDS: [&str; 8] = [
    "raw",
    "raw+helper",
    "raw+sweep",
    "raw+sweep-noatime",
    "raw+work",
    "raw+helper+sweep+work",
    "raw+helper+sweep-noatime+work",
    "store",
];

/// The floor with parts of the store's behaviour added, to attribute the store's extra time:
/// commit latency in one process, then throughput in 8.
pub fn bench_diagnose(root: &Path, docs: &Docs, plan: &Plan) {
    println!(
        "diagnosis: raw = the floor; +helper = the store's lock wait in a helper thread; +sweep = \
         read_dir under the lock (the store's temp sweep); +sweep-noatime = the same with \
         O_NOATIME; +work = the store's other work under the lock without fsync"
    );
    let kinds = DIAGNOSTIC_KINDS;
    let dirs: Vec<PathBuf> = kinds
        .iter()
        .map(|k| root.join(format!("diag-{}", k.replace('+', "_"))))
        .collect();
    for d in &dirs {
        seed_dir(d, docs);
    }

    // One process: commit latency, interleaved blocks.
    let store = Store::open(&dirs[kinds.len() - 1]).expect("open the store");
    let floors: Vec<FloorPaths> = dirs.iter().map(|d| FloorPaths::new(d)).collect();
    let mut samples: Vec<Samples> = kinds.iter().map(|_| Samples::default()).collect();
    let mut counter = 0;
    let block = plan.commit_block / 2;
    let rounds = plan.commit_iters / 2 / block;
    for round in 0..rounds + 1 {
        for j in 0..kinds.len() {
            let k = abba(round, j, kinds.len());
            for i in 0..block {
                let (doc, bytes) = (&docs.docs[i % 2], &docs.bytes[i % 2]);
                let (_, total) = match Variant::parse(kinds[k]) {
                    Some(v) => variant_transaction(&floors[k], doc, bytes, &mut counter, v),
                    None => store_transaction(&store, doc),
                };
                // The first round warms up.
                if round > 0 {
                    samples[k].push(total);
                }
            }
        }
    }
    println!(
        "  one process, commit latency ({} each, interleaved):",
        samples[0].len()
    );
    let base = samples[0].median();
    for (kind, s) in kinds.iter().zip(&samples) {
        println!(
            "    {kind}: {} ({:+.1} us vs raw)",
            s.describe(),
            s.median() - base
        );
    }

    let results = run_rounds(&kinds, &dirs, plan);
    println!(
        "  {PROCESSES} processes, throughput ({} rounds of {:?}):",
        plan.mp_rounds, plan.mp_phase
    );
    let base = total_rate(&results[0]);
    for (kind, phases) in kinds.iter().zip(&results) {
        let rate = total_rate(phases);
        println!(
            "    {kind}: {rate:.0} tx/s ({:.2} of raw); {}",
            rate / base,
            describe_phases(phases)
        );
    }
}
