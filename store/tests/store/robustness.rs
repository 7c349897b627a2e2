//! Odd files and odd options: nothing hangs, nothing panics.

use std::time::Duration;

use codex_store::{Store, StoreError, StoreOptions};
use codex_store_tests::fixtures::*;
use rustix::fs::{mkfifoat, Mode, CWD};

#[test]
fn a_fifo_in_place_of_auth_json_is_refused_at_once_instead_of_blocking() {
    let (_dir, store) = temp_store();
    let made = mkfifoat(CWD, store.path(), Mode::RUSR | Mode::WUSR);
    assert_eq!(made, Ok(()), "could not create the FIFO for the test");
    let err = store.load().expect_err("a FIFO was read as credentials");
    assert!(
        matches!(err, StoreError::NotARegularFile { .. }),
        "expected NotARegularFile, got {err}"
    );
    let err = store
        .transaction()
        .expect_err("a transaction opened over a FIFO");
    assert!(
        matches!(err, StoreError::NotARegularFile { .. }),
        "expected NotARegularFile from transaction(), got {err}"
    );
}

#[test]
fn an_enormous_lock_timeout_waits_without_overflowing_the_clock() {
    let (dir, _store) = temp_store();
    let options = StoreOptions {
        lock_timeout: Duration::MAX,
        notice_after: Duration::MAX,
        ..Default::default()
    };
    let store = Store::with_options(dir.path(), options).expect("open with a huge timeout");
    let tx = store.transaction().expect("a free lock was not taken");
    drop(tx);
}

#[test]
fn an_absurd_duration_is_capped_rather_than_overflowing() {
    let parsed = codex_store::StoreOptions::parse_duration("500000000000y")
        .expect("a valid humantime duration");
    assert!(
        parsed <= Duration::from_secs(1_000_000_000),
        "a duration of {parsed:?} was not capped"
    );
}

fn mkfifo(path: &std::path::Path) {
    assert_eq!(
        mkfifoat(CWD, path, Mode::RUSR | Mode::WUSR),
        Ok(()),
        "mkfifo {} failed",
        path.display()
    );
}

#[test]
fn a_fifo_in_place_of_a_lock_file_or_the_journal_is_refused_at_once_and_probing_it_never_blocks() {
    for name in ["auth.json.lock", "auth.lock", "auth.json.refresh.lock"] {
        let (dir, store) = temp_store();
        write_auth(dir.path(), valid_chatgpt_file());
        mkfifo(&dir.path().join(name));
        // Every one of these would block forever on a FIFO opened for reading or writing.
        let probe = if name == "auth.json.refresh.lock" {
            store.refresh_lock_held()
        } else {
            store.lock_held()
        };
        if name != "auth.lock" {
            assert!(
                matches!(probe, Err(StoreError::NotARegularFile { .. })),
                "probing a FIFO {name} gave {probe:?}"
            );
        }
        let err = match name {
            "auth.json.refresh.lock" => store.begin_rotation().map(drop),
            _ => store.transaction().map(drop),
        }
        .expect_err("a FIFO was accepted as a lock file");
        assert!(
            matches!(err, StoreError::NotARegularFile { .. }),
            "a FIFO {name} gave {err} instead of NotARegularFile"
        );
    }
    let (dir, store) = temp_store();
    mkfifo(&dir.path().join("auth.json.journal"));
    let read = codex_store::read_journal(store.journal_path());
    assert!(
        matches!(read, Err(StoreError::NotARegularFile { .. })),
        "reading a FIFO journal gave {read:?}"
    );
}
