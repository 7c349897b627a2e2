//! Crash safety: a writer SIGKILLed at random moments leaves auth.json as one of the committed
//! documents, the lock free, and (after the next transaction) no temp files.

use std::path::Path;
use std::time::{Duration, Instant};

use codex_store::{AuthDotJson, Expect, Store, StoreOptions, TEMP_PREFIX};
use codex_store_tests::fixtures::{
    counter_of, entries_starting_with, mode, parse_committed, snapshot_counter, with_counter,
    XorShift,
};
use codex_store_tests::process::{Process, EVENT_TIMEOUT};

const WORKER: &str = env!("CARGO_BIN_EXE_store-worker");
const KILLS: u32 = 200;
/// Commit lines read before the kill: 0..MAX_COMMITS_BEFORE_KILL.
const MAX_COMMITS_BEFORE_KILL: u64 = 5;
/// Up to this long between the last line read and the kill, to land inside a commit.
const MAX_JITTER_US: u64 = 2_000;

fn temp_files(dir: &Path) -> Vec<String> {
    entries_starting_with(dir, TEMP_PREFIX)
}

/// Checks a `committed <n>` line: a single writer commits the counter one past the last one.
fn expect_next_commit(line: &str, known: &mut u64, round: u32) {
    let n = parse_committed(line)
        .unwrap_or_else(|| panic!("round {round}: the writer printed {line:?}"));
    assert_eq!(
        n,
        *known + 1,
        "round {round}: the writer committed {n} right after {known}: it did not start from the \
         document on disk"
    );
    *known = n;
}

#[test]
fn a_writer_killed_at_random_moments_leaves_a_committed_document_a_free_lock_and_no_temp_files() {
    let mut rng = XorShift::from_env_or_time();
    eprintln!("seed {} (set STORE_TEST_SEED to replay)", rng.seed());
    let home = tempfile::tempdir().expect("temp dir");
    let store = Store::with_options(
        home.path(),
        StoreOptions {
            lock_timeout: Duration::from_secs(2),
            ..StoreOptions::default()
        },
    )
    .expect("open the store");
    store
        .compare_and_swap(Expect::Absent, Some(&with_counter(None, 0)))
        .expect("seed auth.json");

    let started = Instant::now();
    // The counter of the last document known to be committed: the seed, then the last
    // `committed` line, then whatever the check after a kill found on disk.
    let mut known = 0u64;
    let (mut right_after_ready, mut landed_unreported, mut temps_left) = (0u32, 0u32, 0u32);
    for round in 0..KILLS {
        let seed_msg = format!("round {round}, seed {}", rng.seed());
        let mut writer = Process::spawn(WORKER, ["write-loop".as_ref(), home.path().as_os_str()]);
        writer.expect_line("ready");
        let commits = rng.below(MAX_COMMITS_BEFORE_KILL);
        for _ in 0..commits {
            let line = writer.next_line(EVENT_TIMEOUT).unwrap_or_else(|e| {
                panic!(
                    "{seed_msg}: no commit line ({e:?}); stderr: {}",
                    writer.stderr()
                )
            });
            expect_next_commit(&line, &mut known, round);
        }
        let jitter = if rng.below(2) == 0 {
            0
        } else {
            rng.below(MAX_JITTER_US)
        };
        if jitter > 0 {
            // Only moves the kill to a random moment (often inside a commit); no check depends
            // on where it lands: every assertion below holds for any kill moment.
            std::thread::sleep(Duration::from_micros(jitter));
        }
        if commits == 0 && jitter == 0 {
            right_after_ready += 1;
        }
        // After the kill the pipe is drained to EOF: these are all the commits it reported.
        writer.kill();
        for line in writer.unread_lines() {
            expect_next_commit(&line, &mut known, round);
        }
        let stderr = writer.stderr();
        assert!(
            stderr.is_empty(),
            "{seed_msg}: the writer reported an error: {stderr}"
        );

        // The file is whole, with no retry: the last reported commit, or one more whose
        // `committed` line the kill cut off (the rename landed, the print did not).
        let bytes = std::fs::read(store.path())
            .unwrap_or_else(|e| panic!("{seed_msg}: auth.json is gone after the kill: {e}"));
        let doc = AuthDotJson::from_json(&bytes)
            .unwrap_or_else(|e| panic!("{seed_msg}: auth.json does not parse after the kill: {e}"));
        let on_disk = counter_of(&doc).unwrap_or_else(|e| panic!("{seed_msg}: {e}"));
        assert!(
            on_disk == known || on_disk == known + 1,
            "{seed_msg}: auth.json holds counter {on_disk}, but the last commit reported was \
             {known}: only {known} or {} can be on disk",
            known + 1
        );
        if on_disk == known + 1 {
            landed_unreported += 1;
        }
        let mode = mode(store.path());
        assert_eq!(mode, 0o600, "{seed_msg}: auth.json has mode {mode:o}");

        // The flock died with the process.
        assert!(
            !store.lock_held().expect("probe the lock"),
            "{seed_msg}: the lock is still held after the writer was killed and reaped"
        );
        if !temp_files(home.path()).is_empty() {
            temps_left += 1;
        }
        let waited = Instant::now();
        let tx = store.transaction().unwrap_or_else(|e| {
            panic!("{seed_msg}: the next transaction did not get the lock: {e}")
        });
        let waited = waited.elapsed();
        assert!(
            waited < Duration::from_secs(1),
            "{seed_msg}: the next transaction waited {waited:?} for a lock nobody holds"
        );
        let in_tx = snapshot_counter(tx.snapshot()).unwrap_or_else(|e| panic!("{seed_msg}: {e}"));
        assert_eq!(
            in_tx, on_disk,
            "{seed_msg}: the transaction read {in_tx}, the file held {on_disk}"
        );
        drop(tx);
        let left = temp_files(home.path());
        assert!(
            left.is_empty(),
            "{seed_msg}: temp files survived the next transaction: {left:?}"
        );
        known = on_disk;
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{KILLS} kills in {elapsed:?}: final counter {known}, {right_after_ready} right after \
         `ready`, {landed_unreported} commits landed unreported, {temps_left} kills left a temp \
         file"
    );
    assert!(
        known > 0,
        "no writer ever committed in {KILLS} rounds: the kills tested nothing"
    );
}
