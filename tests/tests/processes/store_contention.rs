//! No lost updates: many processes (and many threads) incrementing one counter in auth.json end at
//! exactly the number of increments.

use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use codex_store::Store;
use codex_store_tests::fixtures::{snapshot_counter, with_counter};
use codex_store_tests::process::Process;

const WORKER: &str = env!("CARGO_BIN_EXE_store-worker");
const PROCESSES: u64 = 8;
const INCREMENTS: u64 = 200;
/// Only turns a hang (a deadlock) into a failure.
const FINISH_WITHIN: Duration = Duration::from_secs(240);

fn counter_on_disk(store: &Store) -> u64 {
    let snapshot = store
        .load()
        .unwrap_or_else(|e| panic!("auth.json does not load after the run: {e}"));
    assert!(
        snapshot.auth().is_some(),
        "auth.json is missing after the run"
    );
    snapshot_counter(&snapshot).unwrap_or_else(|e| panic!("the counter is unreadable: {e}"))
}

/// Waits for `worker` to exit 0 and returns what it printed.
fn finish_successfully(worker: &mut Process) -> Vec<String> {
    let out = worker.finish(FINISH_WITHIN);
    let lines = out.lines();
    assert!(
        out.status.success(),
        "{} failed ({}); stdout: {lines:?}; stderr: {}",
        out.name,
        out.status,
        out.stderr
    );
    lines
}

/// Starts every child first, then waits for all, so that they really run at the same time.
fn run_processes(subcommand: &str) -> (u64, Vec<String>) {
    let home = tempfile::tempdir().expect("temp dir");
    let store = Store::open(home.path()).expect("open the store");
    let started = Instant::now();
    let n = INCREMENTS.to_string();
    let mut workers: Vec<Process> = (0..PROCESSES)
        .map(|_| {
            Process::spawn(
                WORKER,
                [subcommand.as_ref(), home.path().as_os_str(), n.as_ref()],
            )
        })
        .collect();
    let mut reports = Vec::new();
    for worker in &mut workers {
        let lines = finish_successfully(worker);
        let done = lines.iter().find(|l| l.starts_with("done ")).cloned();
        reports.push(
            done.unwrap_or_else(|| panic!("{} printed no `done` line: {lines:?}", worker.name())),
        );
    }
    eprintln!(
        "{PROCESSES} x {INCREMENTS} {subcommand} took {:?}: {reports:?}",
        started.elapsed()
    );
    (counter_on_disk(&store), reports)
}

#[test]
fn eight_processes_incrementing_in_transactions_lose_no_update() {
    let (counter, _) = run_processes("increment-tx");
    assert_eq!(
        counter,
        PROCESSES * INCREMENTS,
        "{PROCESSES} processes x {INCREMENTS} transactional increments ended at {counter}: \
         updates were lost (or duplicated)"
    );
}

#[test]
fn eight_processes_incrementing_by_compare_and_swap_lose_no_update() {
    let (counter, reports) = run_processes("increment-cas");
    assert_eq!(
        counter,
        PROCESSES * INCREMENTS,
        "{PROCESSES} processes x {INCREMENTS} compare-and-swap increments ended at {counter}: \
         updates were lost (or duplicated); reports: {reports:?}"
    );
}

#[test]
fn four_threads_sharing_clones_of_one_store_lose_no_update_and_do_not_deadlock() {
    const THREADS: u64 = 4;
    const PER_THREAD: u64 = 100;
    let home = tempfile::tempdir().expect("temp dir");
    let store = Store::open(home.path()).expect("open the store");
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = store.clone();
            let done_tx = done_tx.clone();
            std::thread::spawn(move || {
                for i in 0..PER_THREAD {
                    let tx = store
                        .transaction()
                        .unwrap_or_else(|e| panic!("thread {t}, increment {i}: no lock: {e}"));
                    let next = snapshot_counter(tx.snapshot())
                        .unwrap_or_else(|e| panic!("thread {t}: bad counter: {e}"))
                        + 1;
                    let doc = with_counter(tx.snapshot().auth(), next);
                    tx.commit(Some(&doc))
                        .unwrap_or_else(|e| panic!("thread {t}, increment {i}: commit: {e}"));
                }
                let _ = done_tx.send(t);
            })
        })
        .collect();
    drop(done_tx);
    // Each thread reports when it finishes; a deadlock shows up as a missing report.
    // A panicking thread drops its sender unsent: then the channel disconnects and the join
    // below reports the panic.
    for _ in 0..THREADS {
        match done_rx.recv_timeout(FINISH_WITHIN) {
            Ok(_) => {}
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                panic!("a thread neither finished nor panicked within {FINISH_WITHIN:?}: deadlock?")
            }
        }
    }
    for handle in handles {
        if let Err(panic) = handle.join() {
            std::panic::resume_unwind(panic);
        }
    }
    let counter = counter_on_disk(&store);
    assert_eq!(
        counter,
        THREADS * PER_THREAD,
        "{THREADS} threads x {PER_THREAD} increments on clones of one Store ended at {counter}"
    );
}

#[test]
fn processes_in_two_homes_whose_auth_json_links_to_one_file_lose_no_update() {
    let shared = tempfile::tempdir().expect("temp dir");
    let target = shared.path().join("codex-auth.json");
    let homes: Vec<tempfile::TempDir> = (0..2)
        .map(|_| {
            let home = tempfile::tempdir().expect("temp dir");
            std::os::unix::fs::symlink(&target, home.path().join("auth.json"))
                .expect("cannot link auth.json");
            home
        })
        .collect();
    let n = INCREMENTS.to_string();
    let mut workers: Vec<Process> = (0..4)
        .map(|i| {
            let home = homes[i % 2].path();
            Process::spawn(
                WORKER,
                ["increment-tx".as_ref(), home.as_os_str(), n.as_ref()],
            )
        })
        .collect();
    for worker in &mut workers {
        finish_successfully(worker);
    }
    let store = Store::open(homes[0].path()).expect("open through the link");
    assert_eq!(
        counter_on_disk(&store),
        4 * INCREMENTS,
        "4 processes x {INCREMENTS} increments through two homes linking one file lost updates: \
         the homes did not meet one lock"
    );
    for home in &homes {
        assert!(
            std::fs::symlink_metadata(home.path().join("auth.json"))
                .expect("the link is gone")
                .file_type()
                .is_symlink(),
            "a write replaced a home's link with a regular file"
        );
    }
}
