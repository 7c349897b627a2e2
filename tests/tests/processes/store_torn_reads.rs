//! No torn reads: while two processes commit in a loop, every read of auth.json (through the
//! store, and raw from the file system) is a whole document.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use codex_store::{AuthDotJson, Expect, Generation, Store, StoreError};
use codex_store_tests::fixtures::{counter_of, parse_committed, with_counter};
use codex_store_tests::process::Process;

const WORKER: &str = env!("CARGO_BIN_EXE_store-worker");
const MIN_LOADS: u64 = 20_000;
const MIN_GENERATIONS: usize = 10;
/// Only turns writers that stopped writing into a failure.
const READ_AT_MOST: Duration = Duration::from_secs(60);

/// Waits for a writer's first `committed` line: from then on it is writing.
fn wait_for_first_commit(writer: &Process) {
    let line = writer.line("its first `committed <n>`");
    assert!(
        parse_committed(&line).is_some(),
        "{} printed {line:?} instead of `committed <n>`",
        writer.name()
    );
}

#[test]
fn a_reader_never_sees_a_torn_or_empty_auth_json_while_two_processes_commit_in_a_loop() {
    let home = tempfile::tempdir().expect("temp dir");
    let store = Store::open(home.path()).expect("open the store");
    // A file exists from the start, so a missing file is a failure too.
    store
        .compare_and_swap(Expect::Absent, Some(&with_counter(None, 0)))
        .expect("seed auth.json");

    let mut writers: Vec<Process> = (0..2)
        .map(|_| Process::spawn(WORKER, ["write-loop".as_ref(), home.path().as_os_str()]))
        .collect();
    for writer in &writers {
        writer.expect_line("ready");
    }
    for writer in &writers {
        wait_for_first_commit(writer);
    }

    let started = Instant::now();
    let mut loads = 0u64;
    let mut raw_reads = 0u64;
    let mut generations: HashSet<Generation> = HashSet::new();
    let mut last_counter = 0u64;
    while (loads < MIN_LOADS || generations.len() < MIN_GENERATIONS)
        && started.elapsed() < READ_AT_MOST
    {
        // Through the store (which re-reads briefly on a bad parse).
        let snapshot = match store.load() {
            Ok(snapshot) => snapshot,
            Err(e @ StoreError::Corrupt { .. }) => {
                panic!("load {loads} saw a torn or empty auth.json: {e}")
            }
            Err(e) => panic!("load {loads} failed: {e}"),
        };
        loads += 1;
        let doc = snapshot
            .auth()
            .unwrap_or_else(|| panic!("load {loads} found no auth.json: a rename is not atomic"));
        let counter = counter_of(doc).unwrap_or_else(|e| panic!("load {loads}: {e}"));
        assert!(
            counter >= last_counter,
            "load {loads} went back in time: counter {counter} after {last_counter}"
        );
        last_counter = counter;
        generations.insert(snapshot.generation());

        // Raw, with no retry at all: the bytes on disk are always one whole document.
        let bytes = std::fs::read(store.path()).unwrap_or_else(|e| {
            panic!("raw read {raw_reads}: auth.json vanished between renames: {e}")
        });
        raw_reads += 1;
        let doc = AuthDotJson::from_json(&bytes).unwrap_or_else(|e| {
            panic!(
                "raw read {raw_reads} is not a whole document ({e}), {} bytes",
                bytes.len()
            )
        });
        let counter = counter_of(&doc).unwrap_or_else(|e| panic!("raw read {raw_reads}: {e}"));
        assert!(
            counter >= last_counter,
            "raw read {raw_reads} went back in time: counter {counter} after {last_counter}"
        );
        last_counter = counter;
        generations.insert(Generation::of_bytes(&bytes));
    }
    let elapsed = started.elapsed();

    for writer in &mut writers {
        assert!(
            writer.try_status().is_none(),
            "{} stopped while we were reading; stderr: {}",
            writer.name(),
            writer.stderr()
        );
    }
    let committed: usize = writers
        .iter_mut()
        .map(|w| {
            w.kill();
            w.unread_lines()
                .iter()
                .filter(|l| parse_committed(l).is_some())
                .count()
        })
        .sum();
    eprintln!(
        "{loads} loads and {raw_reads} raw reads in {elapsed:?} saw {} generations \
         (counter reached {last_counter}; at least {committed} commits while reading)",
        generations.len()
    );
    assert!(
        loads >= MIN_LOADS,
        "only {loads} loads in {elapsed:?}; the test needs {MIN_LOADS}"
    );
    assert!(
        generations.len() >= MIN_GENERATIONS,
        "the reader saw only {} distinct generations in {loads} loads: the writers were not \
         really writing, so the test proved nothing",
        generations.len()
    );
}
