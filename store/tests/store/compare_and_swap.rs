//! Compare-and-swap and transactions: Expect::Any / Absent / Generation, conflicts that write
//! nothing, generations equal to the SHA-256 of the bytes, and the transaction lock.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use codex_store::{AuthDotJson, Expect, Generation, Secret, Store, StoreError, StoreOptions};
use codex_store_tests::fixtures::*;
use tempfile::TempDir;

/// Panics with `why` unless the store holds the API key `key`.
#[track_caller]
fn assert_stored_key(store: &Store, key: &str, why: &str) {
    assert_eq!(stored_api_key(store).as_deref(), Some(key), "{why}");
}

/// A writer that ignores the lock (an older installation) writes auth.json in `dir` in place,
/// behind the back of an open transaction; returns what it wrote and where.
fn intrude(dir: &Path) -> (String, PathBuf) {
    let intruder = api_key_file();
    let path = write_auth(dir, &intruder);
    (intruder, path)
}

/// Panics with `why` unless `path` holds exactly what [`intrude`] wrote.
#[track_caller]
fn assert_intruder_kept(path: &Path, intruder: &str, why: &str) {
    assert_eq!(read(path), intruder.as_bytes(), "{why}");
}

/// A temp store holding the API key `sk-one`, written create-only; returns its generation too.
fn store_holding_sk_one() -> (TempDir, Store, Generation) {
    let (dir, store) = temp_store();
    let g = store
        .compare_and_swap(Expect::Absent, Some(&api_key_doc("sk-one")))
        .expect("write failed");
    (dir, store, g)
}

/// The expectation and the actual generation a conflict names; panics on any other error.
fn conflict_of(err: StoreError) -> (Expect, Generation) {
    match err {
        StoreError::Conflict {
            expected, actual, ..
        } => (expected, actual),
        other => panic!("expected Conflict, got {other:?}"),
    }
}

/// Checks that `err` is a conflict that found no file, and that the refused write left none in
/// `dir` (`wrote` otherwise).
fn assert_conflict_left_no_file(err: StoreError, dir: &Path, wrote: &str) {
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                actual: Generation::Absent,
                ..
            }
        ),
        "expected Conflict with actual absent, got {err:?}"
    );
    assert!(!auth_path(dir).exists(), "{wrote}");
}

#[test]
fn create_only_succeeds_when_there_is_no_file() {
    let (dir, store) = temp_store();
    let g = store
        .compare_and_swap(Expect::Absent, Some(&api_key_doc("sk-one")))
        .expect("create-only refused with no file on disk");
    assert!(!g.is_absent(), "a created file reported generation absent");
    assert_eq!(
        g,
        Generation::of_bytes(&read(&auth_path(dir.path()))),
        "the returned generation is not the hash of the bytes written"
    );
    assert_stored_key(&store, "sk-one", "the created document does not read back");
}

#[test]
fn create_only_conflicts_when_a_file_exists_and_writes_nothing() {
    let (dir, store) = temp_store();
    let path = write_auth(dir.path(), api_key_file());
    let before = read(&path);
    let err = store
        .compare_and_swap(Expect::Absent, Some(&api_key_doc("sk-two")))
        .expect_err("create-only overwrote an existing file");
    let (expected, actual) = conflict_of(err);
    assert_eq!(
        expected,
        Expect::Absent,
        "the conflict names the wrong expectation"
    );
    assert_eq!(
        actual,
        Generation::of_bytes(&before),
        "the conflict names the wrong actual generation"
    );
    assert_eq!(read(&path), before, "a failed create-only changed the file");
}

#[test]
fn a_stale_generation_conflicts_and_writes_nothing() {
    let (dir, store) = temp_store();
    let g1 = store
        .compare_and_swap(Expect::Absent, Some(&api_key_doc("sk-one")))
        .expect("first write failed");
    let g2 = store
        .compare_and_swap(Expect::Generation(g1), Some(&api_key_doc("sk-two")))
        .expect("a write naming the current generation failed");
    assert_ne!(g1, g2, "different documents got the same generation");
    let before = read(&auth_path(dir.path()));
    let err = store
        .compare_and_swap(Expect::Generation(g1), Some(&api_key_doc("sk-three")))
        .expect_err("a stale generation was accepted");
    let (expected, actual) = conflict_of(err);
    assert_eq!(
        expected,
        Expect::Generation(g1),
        "conflict names the wrong expectation"
    );
    assert_eq!(actual, g2, "conflict names the wrong actual generation");
    assert_eq!(
        read(&auth_path(dir.path())),
        before,
        "a stale compare-and-swap changed the bytes on disk"
    );
    assert_eq!(
        entries(dir.path()),
        only_auth_json_and_locks(),
        "a failed write left extra files behind"
    );
}

#[test]
fn a_generation_expectation_against_no_file_conflicts() {
    let (dir, store) = temp_store();
    let g = Generation::of_bytes(b"{}");
    let err = store
        .compare_and_swap(Expect::Generation(g), Some(&api_key_doc("sk-one")))
        .expect_err("a generation was accepted while there is no file");
    assert_conflict_left_no_file(err, dir.path(), "a conflicting write created the file");
}

#[test]
fn expecting_the_absent_generation_creates_the_file() {
    let (_dir, store) = temp_store();
    store
        .compare_and_swap(
            Expect::Generation(Generation::Absent),
            Some(&api_key_doc("sk-one")),
        )
        .expect("Expect::Generation(Absent) refused with no file");
    assert_stored_key(&store, "sk-one", "document not written");
}

#[test]
fn any_overwrites_whatever_is_there() {
    let (dir, store) = temp_store();
    write_auth(dir.path(), api_key_file());
    let g = store
        .compare_and_swap(Expect::Any, Some(&api_key_doc("sk-new")))
        .expect("Expect::Any refused to overwrite");
    assert_stored_key(&store, "sk-new", "Any did not overwrite");
    assert_eq!(
        g,
        store.generation().expect("generation failed"),
        "returned generation differs from the one on disk"
    );
}

#[test]
fn none_deletes_the_file_and_returns_absent() {
    let (dir, store, g) = store_holding_sk_one();
    let after = store
        .compare_and_swap(Expect::Generation(g), None)
        .expect("delete naming the current generation failed");
    assert_eq!(after, Generation::Absent, "a delete did not return Absent");
    assert!(
        !auth_path(dir.path()).exists(),
        "the file still exists after a delete"
    );
    assert_eq!(
        store.load().expect("load failed").generation(),
        Generation::Absent,
        "load still sees a file after the delete"
    );
}

#[test]
fn a_delete_with_a_stale_generation_keeps_the_file() {
    let (dir, store, g1) = store_holding_sk_one();
    store
        .compare_and_swap(Expect::Any, Some(&api_key_doc("sk-two")))
        .expect("overwrite failed");
    let before = read(&auth_path(dir.path()));
    let err = store
        .compare_and_swap(Expect::Generation(g1), None)
        .expect_err("a stale delete was accepted");
    assert!(
        matches!(err, StoreError::Conflict { .. }),
        "expected Conflict, got {err:?}"
    );
    assert_eq!(
        read(&auth_path(dir.path())),
        before,
        "a stale delete changed the file"
    );
}

#[test]
fn deleting_when_absent_with_any_is_fine() {
    let (dir, store) = temp_store();
    let g = store
        .compare_and_swap(Expect::Any, None)
        .expect("deleting a missing file with Any failed");
    assert_eq!(
        g,
        Generation::Absent,
        "deleting nothing did not return Absent"
    );
    assert!(
        !auth_path(dir.path()).exists(),
        "deleting nothing created a file"
    );
}

#[test]
fn generation_display_equals_sha256sum_of_the_file() {
    let (dir, store) = temp_store();
    let g = store
        .compare_and_swap(Expect::Absent, Some(&api_key_doc("sk-hash-me")))
        .expect("write failed");
    let path = auth_path(dir.path());
    assert_eq!(
        g.to_string(),
        sha256sum(&path),
        "Generation Display differs from sha256sum"
    );
    assert_eq!(
        g,
        Generation::of_bytes(&read(&path)),
        "Generation differs from of_bytes of the file's bytes"
    );
    assert_eq!(
        store.generation().expect("generation failed"),
        g,
        "Store::generation differs from the generation returned by the write"
    );
    assert_eq!(
        Generation::Absent.to_string(),
        "absent",
        "Absent does not display as `absent`"
    );
}

#[test]
fn an_empty_file_is_a_generation_distinct_from_no_file() {
    let (dir, store) = temp_store();
    write_auth(dir.path(), "");
    let g = store.generation().expect("generation failed");
    assert_eq!(
        g,
        Generation::of_bytes(b""),
        "an empty file is not the hash of no bytes"
    );
    assert_ne!(g, Generation::Absent, "an empty file reads as no file");
}

#[test]
fn a_transaction_snapshot_is_read_under_the_lock_and_commit_writes() {
    let (dir, store, g1) = store_holding_sk_one();
    let tx = store.transaction().expect("transaction failed");
    assert_eq!(
        tx.snapshot().generation(),
        g1,
        "the snapshot is not the generation on disk"
    );
    assert!(
        store.lock_held().expect("lock_held failed"),
        "an open transaction does not hold the lock"
    );
    let mut doc = tx
        .snapshot()
        .auth()
        .cloned()
        .expect("snapshot has no document");
    doc.openai_api_key = Some(Secret::new("sk-two"));
    let g2 = tx.commit(Some(&doc)).expect("commit failed");
    assert_eq!(
        g2,
        Generation::of_bytes(&read(&auth_path(dir.path()))),
        "commit returned a generation that is not the file's"
    );
    assert_stored_key(&store, "sk-two", "commit did not write");
    assert!(
        !store.lock_held().expect("lock_held failed"),
        "commit did not release the lock"
    );
}

#[test]
fn a_transaction_commit_of_none_deletes_the_file() {
    let (dir, store, _) = store_holding_sk_one();
    let tx = store.transaction().expect("transaction failed");
    let g = tx.commit(None).expect("commit of None failed");
    assert_eq!(g, Generation::Absent, "delete commit did not return Absent");
    assert!(
        !auth_path(dir.path()).exists(),
        "commit of None left the file"
    );
}

#[test]
fn dropping_a_transaction_writes_nothing_and_releases_the_lock() {
    let (dir, store, _) = store_holding_sk_one();
    let before = read(&auth_path(dir.path()));
    let tx = store.transaction().expect("transaction failed");
    let mut doc = tx.snapshot().auth().cloned().expect("no document");
    doc.openai_api_key = Some(Secret::new("sk-never-written"));
    drop(doc);
    drop(tx);
    assert_eq!(
        read(&auth_path(dir.path())),
        before,
        "dropping a transaction changed the file"
    );
    assert!(
        !store.lock_held().expect("lock_held failed"),
        "a dropped transaction still holds the lock"
    );
    let fast = store.with_store_options(StoreOptions {
        lock_timeout: Duration::from_millis(50),
        ..Default::default()
    });
    let tx2 = fast
        .transaction()
        .expect("a second transaction after a dropped one did not get the lock");
    drop(tx2);
}

#[test]
fn a_second_transaction_times_out_while_the_first_is_open() {
    let (_dir, store) = temp_store();
    let tx = store.transaction().expect("first transaction failed");
    let other = store.with_store_options(StoreOptions {
        lock_timeout: Duration::from_millis(50),
        ..Default::default()
    });
    let err = other
        .transaction()
        .expect_err("a second transaction got the lock while the first held it");
    assert!(
        matches!(err, StoreError::LockTimeout { .. }),
        "expected LockTimeout, got {err:?}"
    );
    let err = other
        .compare_and_swap(Expect::Any, None)
        .expect_err("a compare-and-swap ran while a transaction held the lock");
    assert!(
        matches!(err, StoreError::LockTimeout { .. }),
        "expected LockTimeout from compare_and_swap, got {err:?}"
    );
    drop(tx);
}

#[test]
fn a_transaction_commit_conflicts_when_the_file_was_replaced_behind_its_back() {
    let (dir, store, _) = store_holding_sk_one();
    let tx = store.transaction().expect("transaction failed");
    let snap_gen = tx.snapshot().generation();
    let mut doc = tx.snapshot().auth().cloned().expect("no document");
    doc.openai_api_key = Some(Secret::new("sk-from-tx"));
    let (intruder, path) = intrude(dir.path());
    let err = tx
        .commit(Some(&doc))
        .expect_err("commit overwrote a file changed behind its back");
    let (expected, actual) = conflict_of(err);
    assert_eq!(
        expected,
        Expect::Generation(snap_gen),
        "conflict names the wrong expectation"
    );
    assert_eq!(
        actual,
        Generation::of_bytes(intruder.as_bytes()),
        "conflict names the wrong actual generation"
    );
    assert_intruder_kept(&path, &intruder, "the intruder's bytes were overwritten");
    assert_eq!(
        entries(dir.path()),
        only_auth_json_and_locks(),
        "a conflicting commit left a temp file behind"
    );
}

#[test]
fn a_transaction_delete_conflicts_when_the_file_was_replaced_behind_its_back() {
    let (dir, store, _) = store_holding_sk_one();
    let tx = store.transaction().expect("transaction failed");
    let (intruder, path) = intrude(dir.path());
    let err = tx
        .commit(None)
        .expect_err("a delete removed a file changed behind its back");
    assert!(
        matches!(err, StoreError::Conflict { .. }),
        "expected Conflict, got {err:?}"
    );
    assert_intruder_kept(
        &path,
        &intruder,
        "the intruder's file was removed or changed",
    );
}

#[test]
fn a_transaction_commit_conflicts_when_a_file_appeared_behind_its_back() {
    let (dir, store) = temp_store();
    let tx = store.transaction().expect("transaction failed");
    assert_eq!(
        tx.snapshot().generation(),
        Generation::Absent,
        "empty store did not snapshot as absent"
    );
    let (intruder, path) = intrude(dir.path());
    let err = tx
        .commit(Some(&api_key_doc("sk-from-tx")))
        .expect_err("commit overwrote a file created behind its back");
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                expected: Expect::Generation(Generation::Absent),
                ..
            }
        ),
        "expected Conflict expecting absent, got {err:?}"
    );
    assert_intruder_kept(
        &path,
        &intruder,
        "the file created behind the transaction's back was overwritten",
    );
}

#[test]
fn a_transaction_delete_conflicts_when_a_file_appeared_behind_its_back() {
    let (dir, store) = temp_store();
    let tx = store.transaction().expect("transaction failed");
    let (intruder, path) = intrude(dir.path());
    // The snapshot said "no file"; a delete must not report success (Generation::Absent)
    // while the file created behind its back is still on disk.
    let result = tx.commit(None);
    assert!(
        matches!(result, Err(StoreError::Conflict { .. })),
        "a delete whose snapshot was absent reported {result:?} although a file appeared \
         behind its back (the file is still there: {})",
        path.exists()
    );
    assert_intruder_kept(
        &path,
        &intruder,
        "the file created behind the transaction's back was changed",
    );
}

#[test]
fn a_transaction_commit_conflicts_when_the_file_was_deleted_behind_its_back() {
    let (dir, store, _) = store_holding_sk_one();
    let tx = store.transaction().expect("transaction failed");
    std::fs::remove_file(auth_path(dir.path())).expect("cannot remove auth.json");
    let err = tx
        .commit(Some(&api_key_doc("sk-two")))
        .expect_err("commit recreated a file deleted behind its back");
    assert_conflict_left_no_file(err, dir.path(), "a conflicting commit wrote the file");
}

#[test]
fn clones_of_a_store_in_other_threads_serialize_their_updates() {
    let (_dir, store) = temp_store();
    let store = store.with_store_options(StoreOptions {
        lock_timeout: Duration::from_secs(30),
        ..Default::default()
    });
    store
        .compare_and_swap(Expect::Absent, Some(&api_key_doc("0")))
        .expect("write failed");
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            std::thread::spawn(move || {
                for _ in 0..10 {
                    let tx = store.transaction().expect("transaction failed");
                    let mut doc = tx.snapshot().auth().cloned().expect("no document");
                    let n: u32 = doc
                        .openai_api_key
                        .as_ref()
                        .expect("no key")
                        .expose()
                        .parse()
                        .expect("counter is not a number");
                    doc.openai_api_key = Some(Secret::new((n + 1).to_string()));
                    tx.commit(Some(&doc)).expect("commit failed");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a worker thread panicked");
    }
    assert_stored_key(&store, "80", "updates were lost: 8 threads x 10 increments");
}

#[test]
fn a_long_lock_wait_is_announced_once_with_the_lock_path() {
    let (_dir, store) = temp_store();
    let tx = store.transaction().expect("first transaction failed");
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    // The holder has both write locks; a waiter queues on the first one, Codex's `auth.lock`.
    let lock_path = store.codex_lock_path().to_path_buf();
    let waiter = store.with_store_options(StoreOptions {
        lock_timeout: Duration::from_millis(200),
        notice_after: Duration::from_millis(10),
        on_wait: Some(Arc::new(move |path, waited| {
            assert_eq!(path, lock_path, "the notice names another path");
            assert!(
                waited >= Duration::from_millis(10),
                "the notice came before notice_after: {waited:?}"
            );
            seen.fetch_add(1, Ordering::SeqCst);
        })),
    });
    let err = waiter
        .transaction()
        .expect_err("the waiter got a held lock");
    assert!(
        matches!(err, StoreError::LockTimeout { .. }),
        "expected LockTimeout, got {err:?}"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "on_wait was not called exactly once"
    );
    drop(tx);
}

#[test]
fn the_public_types_can_move_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Store>();
    send_sync::<codex_store::Snapshot>();
    send_sync::<codex_store::Transaction>();
    send_sync::<AuthDotJson>();
    send_sync::<StoreError>();
    send_sync::<codex_store::backend::FileBackend>();
    let (_dir, store) = temp_store();
    let tx = store.transaction().expect("transaction failed");
    let g = std::thread::spawn(move || tx.commit(Some(&api_key_doc("sk-thread"))))
        .join()
        .expect("the committing thread panicked")
        .expect("commit from another thread failed");
    assert_eq!(
        store.generation().expect("generation failed"),
        g,
        "a commit from another thread did not land"
    );
}
