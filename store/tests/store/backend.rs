//! `FileBackend`: the load / save / delete trio over a store.

use std::fs;
use std::os::unix::fs::symlink;

use codex_store::{backend::FileBackend, Secret, Store, StoreError};
use codex_store_tests::fixtures::*;

fn backend() -> (tempfile::TempDir, FileBackend) {
    let (dir, store) = temp_store();
    (dir, FileBackend::from_store(store))
}

/// Panics with `why` unless the backend loads a document holding the API key `key`.
#[track_caller]
fn assert_loads_key(backend: &FileBackend, key: &str, why: &str) {
    let loaded = backend.load().expect("load failed").expect("nothing saved");
    assert_eq!(
        loaded.openai_api_key.as_ref().map(Secret::expose),
        Some(key),
        "{why}"
    );
}

#[test]
fn load_with_no_file_is_none() {
    let (_dir, backend) = backend();
    assert!(
        backend.load().expect("load failed").is_none(),
        "load invented a document"
    );
}

#[test]
fn save_then_load_returns_the_document() {
    let (dir, backend) = backend();
    backend.save(&api_key_doc("sk-saved")).expect("save failed");
    assert_loads_key(&backend, "sk-saved", "the saved key did not load back");
    assert_eq!(
        mode(&auth_path(dir.path())),
        0o600,
        "save did not write 0600"
    );
}

#[test]
fn save_replaces_an_existing_document() {
    let (_dir, backend) = backend();
    backend
        .save(&api_key_doc("sk-one"))
        .expect("first save failed");
    backend
        .save(&api_key_doc("sk-two"))
        .expect("second save failed");
    assert_loads_key(
        &backend,
        "sk-two",
        "a second save did not replace the first",
    );
}

#[test]
fn save_replaces_a_corrupt_file() {
    let (dir, backend) = backend();
    write_auth(dir.path(), "{\"cut");
    backend
        .save(&api_key_doc("sk-fresh"))
        .expect("a sign-in could not replace a corrupt file");
    assert_loads_key(
        &backend,
        "sk-fresh",
        "save did not replace the corrupt file",
    );
}

#[test]
fn delete_removes_the_file_and_returns_true() {
    let (dir, backend) = backend();
    backend.save(&api_key_doc("sk-one")).expect("save failed");
    assert!(
        backend.delete().expect("delete failed"),
        "delete of an existing file returned false"
    );
    assert!(
        !auth_path(dir.path()).exists(),
        "delete left the file on disk"
    );
    assert!(
        backend.load().expect("load failed").is_none(),
        "a deleted document still loads"
    );
    assert!(
        dir.path().join("auth.json.lock").exists(),
        "delete removed the lock file"
    );
}

#[test]
fn delete_with_no_file_returns_false() {
    let (dir, backend) = backend();
    assert!(
        !backend.delete().expect("delete with no file failed"),
        "delete with no file returned true"
    );
    assert!(
        !auth_path(dir.path()).exists(),
        "delete with no file created one"
    );
}

#[test]
fn delete_of_a_corrupt_file_works() {
    let (dir, backend) = backend();
    let path = write_auth(dir.path(), "not json at all");
    let err = backend.load().expect_err("a corrupt file loaded");
    assert!(
        matches!(err, StoreError::Corrupt { .. }),
        "expected Corrupt from load, got {err:?}"
    );
    assert!(
        backend.delete().expect("delete of a corrupt file failed"),
        "delete of a corrupt file returned false"
    );
    assert!(!path.exists(), "the corrupt file is still on disk");
}

#[test]
fn delete_of_an_empty_file_works() {
    let (dir, backend) = backend();
    let path = write_auth(dir.path(), "");
    assert!(
        backend.delete().expect("delete of an empty file failed"),
        "delete of an empty file returned false"
    );
    assert!(!path.exists(), "the empty file is still on disk");
}

#[test]
fn delete_refuses_a_symlink_and_keeps_its_target() {
    let (dir, backend) = backend();
    let target = dir.path().join("elsewhere.json");
    fs::write(&target, api_key_file()).expect("cannot write the target");
    symlink(&target, auth_path(dir.path())).expect("cannot symlink");
    let err = backend.delete().expect_err("delete removed a symlink");
    assert!(
        matches!(err, StoreError::Symlink { .. }),
        "expected Symlink, got {err:?}"
    );
    assert_eq!(
        read(&target),
        api_key_file().as_bytes(),
        "the symlink's target was changed"
    );
    let err = backend
        .save(&api_key_doc("sk-through-link"))
        .expect_err("save wrote through a symlink");
    assert!(
        matches!(err, StoreError::Symlink { .. }),
        "save: expected Symlink, got {err:?}"
    );
    assert_eq!(
        read(&target),
        api_key_file().as_bytes(),
        "save changed the symlink's target"
    );
}

#[test]
fn a_backend_opened_on_a_path_shares_the_files_of_a_store() {
    let root = tempfile::TempDir::new().expect("cannot create a temp dir");
    let home = root.path().join("codex");
    let backend = FileBackend::new(&home).expect("FileBackend::new failed");
    assert!(
        home.is_dir(),
        "FileBackend::new did not create the directory"
    );
    backend
        .save(&api_key_doc("sk-shared"))
        .expect("save failed");
    let store = Store::open(&home).expect("open failed");
    assert_eq!(
        store.path(),
        backend.store().path(),
        "the backend and the store disagree on the file"
    );
    assert_eq!(
        stored_api_key(&store).as_deref(),
        Some("sk-shared"),
        "a store does not see what the backend saved"
    );
}

#[test]
fn save_keeps_unknown_keys_that_the_caller_carried_over() {
    let (dir, backend) = backend();
    let text = format!(
        "{{\n  \"OPENAI_API_KEY\": \"{API_KEY}\",\n  \"agent_identity\": {{\n    \"id\": \"agent-7\"\n  }}\n}}"
    );
    write_auth(dir.path(), &text);
    let doc = backend.load().expect("load failed").expect("no document");
    backend.save(&doc).expect("save failed");
    assert_eq!(
        read(&auth_path(dir.path())),
        text.as_bytes(),
        "saving a loaded document back changed the bytes"
    );
}
