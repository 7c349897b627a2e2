//! A bounded lock wait: while another process holds the lock, transactions time out with an
//! error naming the lock file and the remedy, the wait notice fires once, and the lock is free
//! again as soon as the holder lets go.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use codex_store::{Store, StoreError, StoreOptions, LOCK_TIMEOUT_ENV};
use codex_store_tests::process::{Process, EVENT_TIMEOUT};

const WORKER: &str = env!("CARGO_BIN_EXE_store-worker");
/// `store-worker try-lock` exits with this code on a lock timeout.
const EXIT_LOCK_TIMEOUT: i32 = 5;

/// A `hold-lock` child that has printed `locked`.
fn hold_lock(home: &std::path::Path) -> Process {
    let holder = Process::spawn(WORKER, ["hold-write-locks".as_ref(), home.as_os_str()]);
    holder.expect_line("locked");
    holder
}

fn options(lock_timeout: Duration) -> StoreOptions {
    StoreOptions {
        lock_timeout,
        ..StoreOptions::default()
    }
}

#[test]
fn another_process_times_out_with_exit_5_and_a_message_naming_the_lock_and_how_to_wait_longer() {
    let home = tempfile::tempdir().expect("temp dir");
    let _holder = hold_lock(home.path());
    let mut waiter = Process::spawn(
        WORKER,
        ["try-lock".as_ref(), home.path().as_os_str(), "300".as_ref()],
    );
    let out = waiter.finish(EVENT_TIMEOUT);
    let message = out.lines().join("\n");
    assert_eq!(
        out.status.code(),
        Some(EXIT_LOCK_TIMEOUT),
        "try-lock against a held lock exited {} (want {EXIT_LOCK_TIMEOUT}); stdout: \
         {message:?}; stderr: {}",
        out.status,
        out.stderr
    );
    assert!(
        message.contains("auth.lock"),
        "the timeout message does not name the lock file: {message:?}"
    );
    assert!(
        message.contains(LOCK_TIMEOUT_ENV),
        "the timeout message does not say how to wait longer ({LOCK_TIMEOUT_ENV}): {message:?}"
    );
}

#[test]
fn a_transaction_in_this_process_times_out_naming_the_lock_path_and_the_time_waited_then_succeeds_once_the_holder_lets_go(
) {
    let home = tempfile::tempdir().expect("temp dir");
    let mut holder = hold_lock(home.path());
    let store = Store::with_options(home.path(), options(Duration::from_millis(200)))
        .expect("open the store");
    let started = Instant::now();
    match store.transaction() {
        Err(StoreError::LockTimeout { path, waited }) => {
            assert!(
                path.ends_with("auth.lock"),
                "the timeout names {} instead of the lock file",
                path.display()
            );
            assert_eq!(
                path,
                store.codex_lock_path(),
                "the timeout names another lock file"
            );
            assert!(
                waited >= Duration::from_millis(200),
                "the timeout reports a wait of {waited:?}, shorter than the 200ms allowed"
            );
            assert!(
                started.elapsed() >= waited,
                "the timeout reports {waited:?}, more than the {:?} that passed",
                started.elapsed()
            );
        }
        Err(e) => panic!("a held lock gave another error than LockTimeout: {e}"),
        Ok(_) => panic!("a transaction got a lock that another process holds"),
    }

    holder.close_stdin();
    holder.expect_line("released");
    let patient = store.with_store_options(options(Duration::from_secs(30)));
    let tx = patient
        .transaction()
        .unwrap_or_else(|e| panic!("no transaction after the holder let go: {e}"));
    drop(tx);
}

#[test]
fn the_wait_notice_fires_exactly_once_while_blocked() {
    let home = tempfile::tempdir().expect("temp dir");
    let _holder = hold_lock(home.path());
    let calls = Arc::new(AtomicU32::new(0));
    let seen: Arc<Mutex<Vec<(std::path::PathBuf, Duration)>>> = Arc::default();
    let (c, s) = (Arc::clone(&calls), Arc::clone(&seen));
    let store = Store::with_options(
        home.path(),
        StoreOptions {
            lock_timeout: Duration::from_millis(400),
            notice_after: Duration::from_millis(100),
            on_wait: Some(Arc::new(move |path, waited| {
                c.fetch_add(1, Ordering::SeqCst);
                s.lock().unwrap().push((path.to_path_buf(), waited));
            })),
        },
    )
    .expect("open the store");
    let result = store.transaction();
    assert!(
        matches!(result, Err(StoreError::LockTimeout { .. })),
        "a held lock did not time out: {:?}",
        result.map(|_| "got the lock")
    );
    let calls = calls.load(Ordering::SeqCst);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        calls, 1,
        "the wait notice fired {calls} times during one blocked wait (want exactly 1): {seen:?}"
    );
    let (path, waited) = &seen[0];
    assert_eq!(
        path,
        store.codex_lock_path(),
        "the notice names another path than the lock file"
    );
    assert!(
        *waited >= Duration::from_millis(100),
        "the notice came after {waited:?}, before notice_after (100ms)"
    );
}

#[test]
fn lock_held_is_true_while_another_process_holds_the_lock_and_a_transaction_succeeds_once_it_lets_go(
) {
    let home = tempfile::tempdir().expect("temp dir");
    let store =
        Store::with_options(home.path(), options(Duration::from_secs(30))).expect("open the store");
    assert!(
        !store.lock_held().expect("probe the lock"),
        "lock_held is true before anyone took the lock"
    );
    let mut holder = hold_lock(home.path());
    assert!(
        store.lock_held().expect("probe the lock"),
        "lock_held is false while another process holds the lock"
    );
    holder.close_stdin();
    let out = holder.finish(EVENT_TIMEOUT);
    assert!(
        out.status.success() && out.lines() == ["locked", "released"],
        "the holder did not let go cleanly ({}): {:?}; stderr: {}",
        out.status,
        out.lines(),
        out.stderr
    );
    assert!(
        !store.lock_held().expect("probe the lock"),
        "lock_held is still true after the holder let go"
    );
    let tx = store
        .transaction()
        .unwrap_or_else(|e| panic!("no transaction after the holder let go: {e}"));
    assert!(
        store.lock_held().expect("probe the lock"),
        "lock_held is false while this process holds a transaction"
    );
    drop(tx);
    assert!(
        !store.lock_held().expect("probe the lock"),
        "lock_held is still true after the transaction was dropped"
    );
}

#[test]
fn a_waiter_whose_lock_file_was_replaced_meanwhile_locks_the_new_file_instead_of_going_on() {
    let home = tempfile::tempdir().expect("temp dir");
    let mut first = hold_lock(home.path());
    let (waiting_tx, waiting_rx) = std::sync::mpsc::channel::<()>();
    let waiting_tx = Mutex::new(waiting_tx);
    let store = Store::with_options(
        home.path(),
        StoreOptions {
            lock_timeout: Duration::from_millis(1500),
            notice_after: Duration::from_millis(20),
            on_wait: Some(Arc::new(move |_: &std::path::Path, _| {
                let _ = waiting_tx.lock().expect("notice channel").send(());
            })),
        },
    )
    .expect("open the store");
    let lock_path = store.codex_lock_path().to_path_buf();
    let waiter = std::thread::spawn(move || store.transaction().map(drop));
    // The waiter has opened the old lock file and waits on it.
    waiting_rx
        .recv_timeout(EVENT_TIMEOUT)
        .expect("the waiter never reported that it waits for the lock");
    // Someone replaces the lock file, and a second process holds the new one.
    std::fs::remove_file(&lock_path).expect("remove the lock file");
    std::fs::remove_file(home.path().join("auth.json.lock"))
        .expect("remove the inner lock file, which the first holder still holds");
    let _second = hold_lock(home.path());
    first.close_stdin();
    first.expect_line("released");
    match waiter.join().expect("the waiting thread panicked") {
        Err(StoreError::LockTimeout { .. }) => {}
        Ok(()) => panic!(
            "the waiter went on holding a lock on a deleted file while another process held the \
             lock file"
        ),
        Err(e) => panic!("expected a lock timeout while the new lock file is held, got {e}"),
    }
}
