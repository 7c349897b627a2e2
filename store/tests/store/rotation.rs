//! Rotations: the reservation made before a refresh token is sent, the save after the answer,
//! and the recovery of what a crashed refresh left behind.

use std::fs;
use std::path::PathBuf;

use codex_store::{
    read_journal, AuthDotJson, Generation, JournalEvent, SaveOutcome, Secret, Store, StoreError,
    ROTATION_PREFIX,
};
use codex_store_tests::fixtures::*;
use codex_store_tests::jwt;
use tempfile::TempDir;

/// The document with new tokens, as a refresh would make it.
fn rotated(doc: &AuthDotJson, refresh: &str) -> AuthDotJson {
    let mut doc = doc.clone();
    let tokens = doc.tokens.as_mut().expect("the fixture has tokens");
    tokens.refresh_token = Secret::new(refresh);
    tokens.access_token = Secret::new(access_token_expiring_at(4_100_000_000));
    doc
}

fn rotation_files(store: &Store) -> Vec<String> {
    entries_starting_with(store.dir(), ROTATION_PREFIX)
}

/// What a refresh that crashed after making its answer durable leaves: a rotation file named
/// after the generation it replaces and the token it redeemed.
fn plant_crashed_rotation(store: &Store, base: Generation, doc: &AuthDotJson) -> String {
    let name = format!(
        "{ROTATION_PREFIX}{base}.{}.4242.0",
        Secret::new(REFRESH_TOKEN).fingerprint()
    );
    fs::write(store.dir().join(&name), doc.to_json()).expect("cannot plant the rotation file");
    name
}

/// A store holding [`valid_chatgpt_file`]; returns the path of its auth.json too.
fn valid_store() -> (TempDir, Store, PathBuf) {
    let (dir, store) = temp_store();
    let path = write_auth(dir.path(), valid_chatgpt_file());
    (dir, store, path)
}

/// A store holding [`valid_chatgpt_file`] beside what a refresh to the refresh token `refresh`
/// left when it crashed after making its answer durable; returns the document that refresh
/// would have stored and the name of its rotation file too.
fn store_after_a_crashed_refresh(refresh: &str) -> (TempDir, Store, AuthDotJson, String) {
    let (dir, store, _) = valid_store();
    let snap = store.load().expect("load");
    let new_doc = rotated(snap.auth().expect("doc"), refresh);
    let name = plant_crashed_rotation(&store, snap.generation(), &new_doc);
    (dir, store, new_doc, name)
}

/// Panics with `why` when a rotation file is left in the store's directory.
#[track_caller]
fn assert_no_rotation_files(store: &Store, why: &str) {
    let left = rotation_files(store);
    assert!(left.is_empty(), "{why}: {left:?}");
}

fn stored_refresh_token(store: &Store) -> String {
    store
        .load()
        .expect("auth.json does not load")
        .auth()
        .and_then(|d| d.tokens.as_ref())
        .map(|t| t.refresh_token.expose().to_owned())
        .expect("auth.json holds no tokens")
}

#[test]
fn a_reservation_exists_before_the_request_and_disappears_when_given_up() {
    let (dir, store, _) = valid_store();
    let rotation = store.begin_rotation().expect("no rotation");
    let reserved = rotation
        .reserve(&Secret::new(REFRESH_TOKEN))
        .expect("the reservation failed");
    let path = reserved.path().to_path_buf();
    let size = fs::metadata(&path).expect("no rotation file").len();
    assert!(
        size >= read(&auth_path(dir.path())).len() as u64,
        "the reservation ({size} bytes) has no room for a document the size of auth.json"
    );
    // A transaction meanwhile (another writer, which sweeps leftover temp files) must not
    // touch it.
    drop(
        store
            .transaction()
            .expect("a transaction during the reservation failed"),
    );
    assert!(
        path.exists(),
        "a transaction swept the reservation of a refresh in flight"
    );
    drop(reserved.abandon());
    assert!(
        !path.exists(),
        "an abandoned reservation left its file behind"
    );
}

#[test]
fn a_save_renames_the_rotation_file_over_auth_json_and_journals_it() {
    let (dir, store, _) = valid_store();
    let rotation = store.begin_rotation().expect("no rotation");
    let doc = rotation.snapshot().auth().cloned().expect("no document");
    let reserved = rotation
        .reserve(&Secret::new(REFRESH_TOKEN))
        .expect("the reservation failed");
    let new_doc = rotated(&doc, "rt_after_save");
    match reserved.save(&new_doc).expect("the save failed") {
        SaveOutcome::Installed {
            generation, merged, ..
        } => {
            assert!(!merged, "an unchanged file was merged into");
            assert_eq!(
                Generation::of_bytes(&read(&auth_path(dir.path()))),
                generation,
                "the reported generation is not what is on disk"
            );
        }
        other => panic!("the save did not install: {other:?}"),
    }
    assert_eq!(
        stored_refresh_token(&store),
        "rt_after_save",
        "wrong token stored"
    );
    assert_no_rotation_files(&store, "rotation files were left behind");
    let events: Vec<JournalEvent> = read_journal(store.journal_path())
        .expect("unreadable journal")
        .into_iter()
        .map(|r| r.event)
        .collect();
    assert_eq!(
        events,
        vec![JournalEvent::Redeeming, JournalEvent::Saved],
        "the journal does not tell the rotation"
    );
}

#[test]
fn a_crashed_refresh_is_rolled_forward_by_the_next_transaction() {
    let (dir, store, new_doc, _) = store_after_a_crashed_refresh("rt_rolled_forward");
    let tx = store.transaction().expect("the next transaction failed");
    assert_eq!(
        tx.snapshot()
            .auth()
            .and_then(|d| d.tokens.as_ref())
            .map(|t| t.refresh_token.expose().to_owned())
            .as_deref(),
        Some("rt_rolled_forward"),
        "the transaction did not see the rolled-forward tokens"
    );
    drop(tx);
    assert_eq!(
        read(&auth_path(dir.path())),
        new_doc.to_json(),
        "not rolled forward byte for byte"
    );
    assert_no_rotation_files(&store, "the rotation file stayed");
    assert!(
        read_journal(store.journal_path())
            .expect("journal")
            .iter()
            .any(|r| r.event == JournalEvent::Recovered),
        "the recovery is not in the journal"
    );
}

#[test]
fn a_crashed_refresh_is_merged_when_a_writer_changed_the_file_but_it_still_holds_the_redeemed_token(
) {
    let (dir, store, _, _) = store_after_a_crashed_refresh("rt_merged");
    // An older installation rewrote the file in place: same tokens, one more key.
    let rewritten = valid_chatgpt_file().replacen('{', "{\n  \"old_writer\": true,", 1);
    write_auth(dir.path(), &rewritten);
    assert!(
        store.recover().expect("the recovery failed"),
        "the recovery did not look"
    );
    assert_eq!(
        stored_refresh_token(&store),
        "rt_merged",
        "the new token was not merged in"
    );
    assert!(
        String::from_utf8_lossy(&read(&auth_path(dir.path()))).contains("old_writer"),
        "the other writer's key was lost in the merge"
    );
    assert_no_rotation_files(&store, "the rotation file stayed");
}

#[test]
fn a_crashed_refresh_is_discarded_when_auth_json_holds_another_account() {
    let (dir, store, _, _) = store_after_a_crashed_refresh("rt_discarded");
    let other = chatgpt_file(
        &jwt::id_token("b@example.com", "acct-2", "plus"),
        &valid_access_token(),
    )
    .replace("\"acct-1\"", "\"acct-2\"")
    .replace(REFRESH_TOKEN, "rt_other_account");
    write_auth(dir.path(), &other);
    store.recover().expect("the recovery failed");
    assert_eq!(
        read(&auth_path(dir.path())),
        other.as_bytes(),
        "another account's file was changed by the recovery"
    );
    assert_no_rotation_files(&store, "the rotation file stayed");
}

#[test]
fn an_unused_reservation_left_by_a_crash_is_removed_and_auth_json_untouched() {
    let (dir, store, path) = valid_store();
    let before = read(&path);
    let generation = Generation::of_bytes(&before);
    let name = format!(
        "{ROTATION_PREFIX}{generation}.{}.4242.1",
        Secret::new(REFRESH_TOKEN).fingerprint()
    );
    fs::write(dir.path().join(&name), vec![b' '; 4096]).expect("plant");
    drop(store.begin_rotation().expect("no rotation"));
    assert_eq!(
        read(&path),
        before,
        "an unused reservation changed auth.json"
    );
    assert_no_rotation_files(&store, "the unused reservation stayed");
}

#[test]
fn a_hard_linked_auth_json_fails_the_reservation_so_nothing_can_be_sent() {
    let (dir, store, path) = valid_store();
    fs::hard_link(&path, dir.path().join("backup.json")).expect("hard link");
    let rotation = store.begin_rotation().expect("a hard link is readable");
    let err = rotation
        .reserve(&Secret::new(REFRESH_TOKEN))
        .expect_err("a reservation over a hard-linked auth.json succeeded");
    assert!(
        matches!(err, StoreError::HardLinked { .. }),
        "expected HardLinked, got {err}"
    );
    assert_no_rotation_files(&store, "a failed reservation left a file");
}

#[test]
fn a_leftover_rotation_beside_a_corrupt_auth_json_blocks_refreshes_but_not_replacing_the_file() {
    let (dir, store, _, name) = store_after_a_crashed_refresh("rt_kept");
    let path = write_auth(dir.path(), "{\"tokens\": {\"id_tok");
    let err = store
        .begin_rotation()
        .expect_err("a refresh began beside a rotation it could not install");
    assert!(
        matches!(err, StoreError::Corrupt { .. }),
        "expected Corrupt from begin_rotation, got {err}"
    );
    store
        .compare_and_swap(codex_store::Expect::Any, None)
        .expect("the leftover rotation blocked replacing the corrupt file (logout)");
    assert!(!path.exists(), "the corrupt file is still there");
    assert!(
        dir.path().join(&name).exists(),
        "the rotation file, the only copy of the new tokens, was removed"
    );
}

#[test]
fn two_homes_linking_to_different_files_in_one_directory_never_take_each_others_rotation_files() {
    let shared = TempDir::new().expect("a shared directory");
    let alice = shared.path().join("alice.json");
    let bob = shared.path().join("bob.json");
    fs::write(&alice, valid_chatgpt_file()).expect("write alice.json");
    fs::write(&bob, valid_chatgpt_file()).expect("write bob.json");
    let (home_a, home_b) = (TempDir::new().expect("home"), TempDir::new().expect("home"));
    std::os::unix::fs::symlink(&alice, auth_path(home_a.path())).expect("link alice");
    std::os::unix::fs::symlink(&bob, auth_path(home_b.path())).expect("link bob");
    let store_a = Store::open(home_a.path()).expect("open alice's store");
    let store_b = Store::open(home_b.path()).expect("open bob's store");

    // Bob's refresh is in flight: its reservation sits in the shared directory.
    let reserved = store_b
        .begin_rotation()
        .expect("bob's rotation")
        .reserve(&Secret::new(REFRESH_TOKEN))
        .expect("bob's reservation");
    let path = reserved.path().to_path_buf();
    assert!(
        path.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(".bob.json.codex-store-rotation.")),
        "bob's rotation file is not named after bob.json: {}",
        path.display()
    );
    // Alice's store recovers, writes and sweeps meanwhile: none of it may touch bob's file.
    store_a.recover().expect("alice's recovery");
    drop(store_a.transaction().expect("alice's transaction"));
    drop(store_a.begin_rotation().expect("alice's rotation"));
    assert!(
        path.exists(),
        "alice's store removed bob's reservation while bob's refresh was in flight"
    );
    let doc = rotated(
        &AuthDotJson::from_json(valid_chatgpt_file().as_bytes()).expect("a document"),
        "rt_bob_next",
    );
    match reserved.save(&doc).expect("bob's save") {
        SaveOutcome::Installed { .. } => {}
        SaveOutcome::Superseded { .. } => panic!("bob's save was superseded"),
    }
    assert!(
        String::from_utf8_lossy(&fs::read(&bob).expect("read bob.json")).contains("rt_bob_next"),
        "bob's rotation did not reach bob.json"
    );
}

/// The journal's last record about the token `REFRESH_TOKEN`.
fn last_event_about_the_redeemed_token(store: &Store) -> Option<JournalEvent> {
    let fp = Secret::new(REFRESH_TOKEN).fingerprint();
    read_journal(store.journal_path())
        .expect("unreadable journal")
        .into_iter()
        .rev()
        .find(|r| r.refresh.as_deref() == Some(fp.as_str()))
        .map(|r| r.event)
}

#[test]
fn a_rotation_file_cut_short_by_a_crash_journals_its_token_spent_only_if_a_new_one_reached_the_disk(
) {
    for (written, want, why) in [
        (
            r#"{"tokens": {"id_token": "x", "refresh_token": "rt_new_one", "access_tok"#,
            JournalEvent::Spent,
            "a new refresh token reached the disk: the redeemed one is spent",
        ),
        (
            r#"{"tokens": {"id_token": "x", "access_tok"#,
            JournalEvent::Unanswered,
            "no new refresh token reached the disk: the answer may have kept the redeemed one",
        ),
    ] {
        let (_dir, store, _) = valid_store();
        let base = store.generation().expect("generation");
        let name = format!(
            "{ROTATION_PREFIX}{base}.{}.4242.0",
            Secret::new(REFRESH_TOKEN).fingerprint()
        );
        fs::write(store.dir().join(&name), written).expect("cannot plant the rotation file");
        let rotation = store.begin_rotation().expect("the recovery failed");
        assert_no_rotation_files(&store, "the cut-off rotation file was kept");
        assert_eq!(
            last_event_about_the_redeemed_token(&store),
            Some(want),
            "{why}"
        );
        drop(rotation);
    }
}

#[test]
fn a_rotation_file_marked_sent_journals_the_outcome_it_names() {
    for outcome in ["refused", "unanswered", "spent"] {
        let (_dir, store, _) = valid_store();
        let base = store.generation().expect("generation");
        let name = format!(
            "{ROTATION_PREFIX}{base}.{}.4242.0",
            Secret::new(REFRESH_TOKEN).fingerprint()
        );
        let mark =
            format!("codex-store: sent; the journal could not take its outcome: {outcome}\n");
        fs::write(store.dir().join(&name), mark).expect("cannot plant the rotation file");
        drop(store.begin_rotation().expect("the recovery failed"));
        assert_no_rotation_files(&store, "the marked rotation file was kept once journaled");
        assert_eq!(
            last_event_about_the_redeemed_token(&store).map(JournalEvent::name),
            Some(outcome),
            "the outcome named by the mark must be journaled"
        );
    }
}
