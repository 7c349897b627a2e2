//! The files on disk: permissions, the lock file, symlink and hard-link policy, diagnostics,
//! leftover temp files and the store directory.

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};

use codex_store::{
    AuthDotJson, Expect, Problem, Secret, Store, StoreError, TokenData, TEMP_PREFIX,
};
use codex_store_tests::fixtures::*;
use codex_store_tests::secrets::assert_hides;

/// Writes a document holding the API key `key` through the store, expecting `expect`.
fn write_key(store: &Store, expect: Expect, key: &str) {
    store
        .compare_and_swap(expect, Some(&api_key_doc(key)))
        .expect("write failed");
}

/// Panics with `why` and what the store reports unless `diagnose` reports `problem`.
#[track_caller]
fn assert_diagnosed(store: &Store, problem: Problem, why: &str) {
    let problems = store.diagnose().expect("diagnose failed");
    assert!(problems.contains(&problem), "{why}: {problems:?}");
}

#[test]
fn a_new_file_is_created_0600() {
    let (dir, store) = temp_store();
    write_key(&store, Expect::Absent, "sk-1");
    assert_eq!(
        mode(&auth_path(dir.path())),
        0o600,
        "a new auth.json is not 0600"
    );
}

#[test]
fn rewriting_a_0644_file_leaves_it_0600() {
    let (dir, store) = temp_store();
    let path = write_auth(dir.path(), api_key_file());
    set_mode(&path, 0o644);
    store
        .compare_and_swap(Expect::Any, Some(&api_key_doc("sk-2")))
        .expect("compare_and_swap failed");
    assert_eq!(mode(&path), 0o600, "compare_and_swap left a 0644 file wide");

    set_mode(&path, 0o666);
    let tx = store.transaction().expect("transaction failed");
    let doc = tx.snapshot().auth().cloned().expect("no document");
    tx.commit(Some(&doc)).expect("commit failed");
    assert_eq!(
        mode(&path),
        0o600,
        "a transaction commit left a 0666 file wide"
    );
}

#[test]
fn store_open_creates_a_missing_nested_directory_0700() {
    let root = tempfile::TempDir::new().expect("cannot create a temp dir");
    let nested = root.path().join("a").join("b").join("codex-home");
    let store = Store::open(&nested).expect("open of a missing nested path failed");
    assert!(nested.is_dir(), "the store directory was not created");
    assert_eq!(mode(&nested), 0o700, "the created directory is not 0700");
    assert_eq!(store.dir(), nested, "the store names another directory");
    assert_eq!(
        store.path(),
        nested.join("auth.json"),
        "auth.json path is wrong"
    );
}

#[test]
fn store_open_keeps_an_existing_directory_as_it_is() {
    let root = tempfile::TempDir::new().expect("cannot create a temp dir");
    set_mode(root.path(), 0o755);
    Store::open(root.path()).expect("open of an existing directory failed");
    assert_eq!(
        mode(root.path()),
        0o755,
        "open changed an existing directory's mode"
    );
}

#[test]
fn store_open_on_a_regular_file_is_not_a_directory() {
    let root = tempfile::TempDir::new().expect("cannot create a temp dir");
    let file = root.path().join("not-a-dir");
    fs::write(&file, "x").expect("cannot write the file");
    let err = Store::open(&file).expect_err("a regular file was opened as a store");
    assert!(
        matches!(&err, StoreError::NotADirectory { path } if *path == file),
        "expected NotADirectory naming the file, got {err:?}"
    );
    assert_eq!(read(&file), b"x", "open changed the regular file");
}

#[test]
fn the_lock_file_is_0600_and_never_removed() {
    let (dir, store) = temp_store();
    write_key(&store, Expect::Absent, "sk-1");
    let lock = store.lock_path().to_path_buf();
    assert_eq!(
        lock,
        dir.path().join("auth.json.lock"),
        "the lock is not the sidecar auth.json.lock"
    );
    assert!(lock.exists(), "the lock file was removed after a commit");
    assert_eq!(mode(&lock), 0o600, "the lock file is not 0600");
    let inode = fs::metadata(&lock).expect("cannot stat the lock").ino();

    let tx = store.transaction().expect("transaction failed");
    tx.commit(None).expect("delete failed");
    assert!(lock.exists(), "the lock file was removed after a delete");
    assert_eq!(
        fs::metadata(&lock).expect("cannot stat the lock").ino(),
        inode,
        "the lock file was replaced"
    );
    assert_eq!(
        fs::metadata(&lock).expect("cannot stat the lock").len(),
        0,
        "something was written into the lock file"
    );
}

#[test]
fn a_symlinked_auth_json_is_read_locked_and_written_beside_its_target_and_the_link_kept() {
    let (dir, _) = temp_store();
    let elsewhere = tempfile::TempDir::new().expect("cannot create a temp dir");
    let target = elsewhere.path().join("real-auth.json");
    fs::write(&target, api_key_file()).expect("cannot write the target");
    let link = auth_path(dir.path());
    symlink(&target, &link).expect("cannot create the symlink");
    let store = Store::open(dir.path()).expect("open over a symlinked auth.json");
    assert_eq!(
        store.link(),
        Some(link.as_path()),
        "the link is not reported"
    );
    assert_eq!(
        store.path(),
        target,
        "the store does not work on the link's target"
    );

    let snap = store.load().expect("load through the link failed");
    assert!(
        snap.auth().is_some(),
        "the target's credentials were not read"
    );
    store
        .compare_and_swap(
            Expect::Generation(snap.generation()),
            Some(&api_key_doc("sk-via-link")),
        )
        .expect("a write through the link failed");
    assert!(
        String::from_utf8_lossy(&read(&target)).contains("sk-via-link"),
        "the target was not written"
    );
    assert!(
        fs::symlink_metadata(&link)
            .expect("the link is gone")
            .file_type()
            .is_symlink(),
        "the symlink was replaced by a regular file"
    );
    assert!(
        elsewhere.path().join("real-auth.json.lock").exists(),
        "no lock beside the target: another home linking to it would not meet this lock"
    );
    assert_eq!(
        entries_starting_with(elsewhere.path(), "."),
        Vec::<String>::new(),
        "a temp file was left beside the target"
    );
}

#[test]
fn a_dangling_symlink_into_ones_own_directory_is_created_through() {
    let (dir, _) = temp_store();
    let elsewhere = tempfile::TempDir::new().expect("cannot create a temp dir");
    let target = elsewhere.path().join("nothing-yet.json");
    symlink(&target, auth_path(dir.path())).expect("cannot create the symlink");
    let store = Store::open(dir.path()).expect("open over a dangling link");
    store
        .compare_and_swap(Expect::Absent, Some(&api_key_doc("sk-created")))
        .expect("creating through a dangling link failed");
    assert!(
        String::from_utf8_lossy(&read(&target)).contains("sk-created"),
        "the credentials were not created at the link's target"
    );
}

#[test]
fn a_symlink_to_another_users_file_or_directory_is_refused_and_nothing_is_read_or_written() {
    let (dir, _) = temp_store();
    let elsewhere = tempfile::TempDir::new().expect("cannot create a temp dir");
    let foreign_file = elsewhere.path().join("theirs.json");
    fs::write(&foreign_file, api_key_file()).expect("write");
    let foreign_dir = elsewhere.path().join("their-dir");
    fs::create_dir(&foreign_dir).expect("mkdir");
    // uid 65534 (nobody) is never the test's user.
    for path in [&foreign_file, &foreign_dir] {
        std::os::unix::fs::chown(path, Some(65534), Some(65534)).expect("chown to nobody");
    }
    for target in [foreign_file.clone(), foreign_dir.join("auth.json")] {
        let link = auth_path(dir.path());
        let _ = fs::remove_file(&link);
        symlink(&target, &link).expect("cannot create the symlink");
        match Store::open(dir.path()) {
            Err(StoreError::ForeignTarget { uid, .. }) => {
                assert_eq!(uid, 65534, "the error names another owner")
            }
            other => panic!("a link to {} gave {other:?}", target.display()),
        }
    }
    assert_eq!(
        read(&foreign_file),
        api_key_file().as_bytes(),
        "their file changed"
    );
    assert!(
        !foreign_dir.join("auth.json").exists(),
        "a file was created in their directory"
    );
}

#[test]
fn diagnose_reports_a_symlink_with_its_target() {
    let (dir, store) = temp_store();
    let target = dir.path().join("real.json");
    fs::write(&target, api_key_file()).expect("cannot write the target");
    symlink(&target, auth_path(dir.path())).expect("cannot create the symlink");
    assert_diagnosed(
        &store,
        Problem::Symlink {
            target: target.clone(),
        },
        "diagnose did not report the symlink",
    );
}

#[test]
fn a_hard_linked_auth_json_is_not_written() {
    let (dir, store) = temp_store();
    let path = write_auth(dir.path(), api_key_file());
    let other = dir.path().join("backup.json");
    fs::hard_link(&path, &other).expect("cannot create the hard link");
    let before = read(&path);
    let err = store
        .compare_and_swap(Expect::Any, Some(&api_key_doc("sk-new")))
        .expect_err("a hard-linked file was replaced");
    assert!(
        matches!(err, StoreError::HardLinked { links: 2, .. }),
        "expected HardLinked with 2 links, got {err:?}"
    );
    let err = store
        .compare_and_swap(Expect::Any, None)
        .expect_err("a hard-linked file was deleted");
    assert!(
        matches!(err, StoreError::HardLinked { .. }),
        "delete: expected HardLinked, got {err:?}"
    );
    let tx = store
        .transaction()
        .expect("a hard-linked file cannot even be read in a transaction");
    let doc = tx.snapshot().auth().cloned().expect("no document");
    let err = tx
        .commit(Some(&doc))
        .expect_err("a transaction replaced a hard-linked file");
    assert!(
        matches!(err, StoreError::HardLinked { .. }),
        "commit: expected HardLinked, got {err:?}"
    );
    assert_eq!(read(&path), before, "the hard-linked file was changed");
    assert_eq!(
        fs::metadata(&path).expect("cannot stat").nlink(),
        2,
        "the hard link was split"
    );
    assert_eq!(
        read(&other),
        before,
        "the other link's contents were changed"
    );
    store.load().expect("a hard-linked file can still be read");
}

#[test]
fn diagnose_reports_hard_links() {
    let (dir, store) = temp_store();
    let path = write_auth(dir.path(), api_key_file());
    set_mode(&path, 0o600);
    fs::hard_link(&path, dir.path().join("copy.json")).expect("cannot create the hard link");
    assert_diagnosed(
        &store,
        Problem::HardLinks { links: 2 },
        "diagnose did not report the hard link",
    );
}

#[test]
fn diagnose_reports_wide_permissions() {
    let (dir, store) = temp_store();
    let path = write_auth(dir.path(), api_key_file());
    set_mode(&path, 0o644);
    assert_diagnosed(
        &store,
        Problem::WidePermissions { mode: 0o644 },
        "diagnose did not report 0644",
    );
}

#[test]
fn diagnose_reports_nothing_for_a_healthy_store() {
    let (dir, store) = temp_store();
    write_key(&store, Expect::Absent, "sk-1");
    set_mode(dir.path(), 0o700);
    let problems = store.diagnose().expect("diagnose failed");
    assert!(
        problems.is_empty(),
        "a healthy store has problems: {problems:?}"
    );
    let (empty_dir, empty) = temp_store();
    set_mode(empty_dir.path(), 0o700);
    assert!(
        empty.diagnose().expect("diagnose failed").is_empty(),
        "an empty store has problems"
    );
}

#[test]
fn diagnose_reports_leftover_temps() {
    let (dir, store) = temp_store();
    let name = format!("{TEMP_PREFIX}99999.0");
    fs::write(dir.path().join(&name), "half").expect("cannot write the temp");
    assert_diagnosed(
        &store,
        Problem::LeftoverTemps {
            names: vec![name.clone()],
        },
        "diagnose did not report the leftover temp",
    );
    assert!(
        dir.path().join(&name).exists(),
        "diagnose removed the temp file (it must only report)"
    );
}

#[test]
fn diagnose_reports_a_directory_writable_by_others() {
    let (dir, store) = temp_store();
    set_mode(dir.path(), 0o777);
    assert_diagnosed(
        &store,
        Problem::DirectoryWritableByOthers { mode: 0o777 },
        "diagnose did not report a 0777 directory",
    );
    set_mode(dir.path(), 0o1777);
    let problems = store.diagnose().expect("diagnose failed");
    assert!(
        !problems
            .iter()
            .any(|p| matches!(p, Problem::DirectoryWritableByOthers { .. })),
        "a sticky 1777 directory was reported as writable by others: {problems:?}"
    );
    set_mode(dir.path(), 0o700);
}

#[test]
fn diagnose_reports_an_access_token_that_does_not_decode() {
    let (dir, store) = temp_store();
    let path = write_auth(
        dir.path(),
        chatgpt_file(&valid_id_token(), "opaque-access-token-secret"),
    );
    set_mode(&path, 0o600);
    let problems = store.diagnose().expect("diagnose failed");
    let found = problems.iter().find_map(|p| match p {
        Problem::TokenDoesNotDecode { field, reason } => Some((*field, reason.clone())),
        _ => None,
    });
    let (field, reason) = found.unwrap_or_else(|| {
        panic!("diagnose did not report the undecodable access token: {problems:?}")
    });
    assert_eq!(field, "tokens.access_token", "the wrong field was named");
    assert_hides("the reason", &reason, &["opaque-access-token-secret"]);
    let shown: String = problems.iter().map(|p| format!("{p} {p:?}")).collect();
    assert_hides("a problem", &shown, &["opaque-access-token-secret"]);
}

#[test]
fn leftover_temps_are_swept_by_the_next_transaction() {
    let (dir, store) = temp_store();
    let leftover = dir.path().join(format!("{TEMP_PREFIX}12345.7"));
    fs::write(&leftover, "half a document").expect("cannot write the temp");
    let tx = store.transaction().expect("transaction failed");
    assert!(
        !leftover.exists(),
        "transaction() did not sweep a leftover temp"
    );
    drop(tx);
}

#[test]
fn leftover_temps_are_swept_by_the_next_compare_and_swap_and_look_alikes_are_kept() {
    let (dir, store) = temp_store();
    let leftover = dir.path().join(format!("{TEMP_PREFIX}12345.7"));
    fs::write(&leftover, "half a document").expect("cannot write the temp");
    let trimmed = TEMP_PREFIX.trim_end_matches('.');
    let look_alikes = [
        ".auth.json.tmp.12345".to_string(),
        trimmed.to_string(),
        TEMP_PREFIX.trim_start_matches('.').to_string() + "1.2",
        format!("x{TEMP_PREFIX}1.2"),
        "auth.json.bak".to_string(),
    ];
    for name in &look_alikes {
        fs::write(dir.path().join(name), "keep me").expect("cannot write a look-alike");
    }
    write_key(&store, Expect::Any, "sk-1");
    assert!(
        !leftover.exists(),
        "compare_and_swap did not sweep a leftover temp"
    );
    for name in &look_alikes {
        assert_eq!(
            read(&dir.path().join(name)),
            b"keep me",
            "the look-alike {name} was touched"
        );
    }
}

#[test]
fn a_conflicting_compare_and_swap_still_sweeps_leftover_temps() {
    let (dir, store) = temp_store();
    write_auth(dir.path(), api_key_file());
    let leftover = dir.path().join(format!("{TEMP_PREFIX}1.1"));
    fs::write(&leftover, "x").expect("cannot write the temp");
    let err = store
        .compare_and_swap(Expect::Absent, Some(&api_key_doc("sk-1")))
        .expect_err("create-only overwrote a file");
    assert!(
        matches!(err, StoreError::Conflict { .. }),
        "expected Conflict, got {err:?}"
    );
    assert!(!leftover.exists(), "the leftover temp was not swept");
}

#[test]
fn load_does_not_sweep_temps() {
    let (dir, store) = temp_store();
    let leftover = dir.path().join(format!("{TEMP_PREFIX}1.1"));
    fs::write(&leftover, "x").expect("cannot write the temp");
    store.load().expect("load failed");
    assert!(
        leftover.exists(),
        "load (which takes no lock) removed a temp file that may be live"
    );
}

#[test]
fn a_successful_write_leaves_only_auth_json_and_its_two_locks() {
    let (dir, store) = temp_store();
    let tokens = TokenData {
        id_token: Secret::new(valid_id_token()),
        access_token: Secret::new(valid_access_token()),
        refresh_token: Secret::new(REFRESH_TOKEN),
        account_id: Some("acct-1".into()),
        ..Default::default()
    };
    let doc = AuthDotJson {
        tokens: Some(tokens),
        ..Default::default()
    };
    store
        .compare_and_swap(Expect::Any, Some(&doc))
        .expect("write failed");
    assert_eq!(
        entries(dir.path()),
        only_auth_json_and_locks(),
        "a write left other files in the directory"
    );
}

#[test]
fn a_symlinked_lock_file_is_refused_and_its_target_untouched() {
    let (dir, store) = temp_store();
    let elsewhere = tempfile::TempDir::new().expect("cannot create a temp dir");
    let existing = elsewhere.path().join("precious");
    fs::write(&existing, "precious").expect("cannot write the target");
    symlink(&existing, store.lock_path()).expect("cannot plant the lock symlink");
    let err = store
        .transaction()
        .expect_err("a transaction locked through a planted symlink");
    assert!(
        !matches!(err, StoreError::LockTimeout { .. }),
        "a symlinked lock file should fail at once, got {err:?}"
    );
    assert_eq!(
        read(&existing),
        b"precious",
        "the lock symlink's target was changed"
    );

    fs::remove_file(store.lock_path()).expect("cannot remove the planted link");
    let missing = elsewhere.path().join("created-through-link");
    symlink(&missing, store.lock_path()).expect("cannot plant the dangling symlink");
    store
        .compare_and_swap(Expect::Any, Some(&api_key_doc("sk-1")))
        .expect_err("a compare-and-swap locked through a dangling symlink");
    assert!(
        !missing.exists(),
        "the lock file was created through a dangling symlink"
    );
    assert!(
        !auth_path(dir.path()).exists(),
        "auth.json was written without the lock"
    );
}

#[test]
fn a_leftover_temp_that_is_a_symlink_is_removed_without_touching_its_target() {
    let (dir, store) = temp_store();
    let elsewhere = tempfile::TempDir::new().expect("cannot create a temp dir");
    let target = elsewhere.path().join("precious");
    fs::write(&target, "precious").expect("cannot write the target");
    let link = dir.path().join(format!("{TEMP_PREFIX}4242.0"));
    symlink(&target, &link).expect("cannot plant the temp symlink");
    write_key(&store, Expect::Any, "sk-1");
    assert!(
        fs::symlink_metadata(&link).is_err(),
        "the planted temp symlink was not swept"
    );
    assert_eq!(
        read(&target),
        b"precious",
        "sweeping a temp symlink changed its target"
    );
}

#[test]
fn a_refresh_is_refused_when_the_symlink_was_retargeted_after_the_store_opened() {
    let (dir, _) = temp_store();
    let elsewhere = tempfile::TempDir::new().expect("cannot create a temp dir");
    let first = elsewhere.path().join("first.json");
    let second = elsewhere.path().join("second.json");
    fs::write(&first, api_key_file()).expect("cannot write the first target");
    fs::write(&second, api_key_file()).expect("cannot write the second target");
    let link = auth_path(dir.path());
    symlink(&first, &link).expect("cannot create the symlink");
    let store = Store::open(dir.path()).expect("open over a symlinked auth.json");
    // Someone points the link elsewhere; a refresh saving into `first` would be read by nobody.
    fs::remove_file(&link).expect("cannot remove the link");
    symlink(&second, &link).expect("cannot retarget the symlink");
    let err = store
        .begin_rotation()
        .expect_err("a refresh began on a retargeted link");
    assert!(
        matches!(err, StoreError::Symlink { .. }),
        "a retargeted link gave another error: {err}"
    );
    // Opened again, the store follows the new link.
    let again = Store::open(dir.path()).expect("open again");
    let rotation = again
        .begin_rotation()
        .expect("a refresh on the store opened again failed");
    assert_eq!(
        rotation.store().path(),
        second,
        "the store opened again does not follow the new link"
    );
}
