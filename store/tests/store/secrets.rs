//! Secrets never show: `Debug` of every public type that holds them, and the text of every error,
//! contains none of the values from the file.

use std::fs;
use std::os::unix::fs::symlink;
use std::time::Duration;

use codex_store::{
    backend::FileBackend, AuthDotJson, Expect, Generation, Secret, StoreError, StoreOptions,
    TEMP_PREFIX,
};
use codex_store_tests::fixtures::*;
use codex_store_tests::jwt;
use codex_store_tests::secrets::{assert_error_hides, assert_hides, debug_of};

const PAT: &str = "pat_personal_secret_0123456789";
const BEDROCK: &str = "bedrock_secret_0123456789";

fn id() -> String {
    jwt::id_token("secret-person@example.com", "acct-1", "plus")
}

fn access() -> String {
    valid_access_token()
}

/// Every token value planted in [`full_file`] (the known credential fields).
fn known_secrets() -> Vec<String> {
    vec![
        REFRESH_TOKEN.to_string(),
        API_KEY.to_string(),
        id(),
        access(),
    ]
}

/// A file holding every known credential field: [`chatgpt_file`] with the API key set too.
fn full_file() -> String {
    chatgpt_file(&id(), &access()).replace(
        "\"OPENAI_API_KEY\": null",
        &format!("\"OPENAI_API_KEY\": \"{API_KEY}\""),
    )
}

/// A file that also holds the credentials of other auth modes, as unknown keys.
fn file_with_other_credentials() -> String {
    format!(
        "{{\n  \"auth_mode\": \"personalAccessToken\",\n  \"OPENAI_API_KEY\": null,\n  \"personal_access_token\": \"{PAT}\",\n  \"bedrock_api_key\": \"{BEDROCK}\"\n}}"
    )
}

#[test]
fn secret_debug_is_redacted() {
    let s = Secret::new("sk-visible-nowhere");
    assert_eq!(
        format!("{s:?}"),
        "Secret(<redacted>)",
        "Secret Debug is not the redacted form"
    );
    assert_hides(
        "Secret Debug",
        &debug_of(&s),
        &["sk-visible-nowhere".to_string()],
    );
    assert_eq!(s.expose(), "sk-visible-nowhere", "expose lost the value");
    assert_eq!(
        s.fingerprint().len(),
        12,
        "the fingerprint is not 12 characters"
    );
    assert!(
        !"sk-visible-nowhere".contains(&s.fingerprint()),
        "the fingerprint is part of the secret"
    );
}

#[test]
fn debug_of_token_data_and_auth_dot_json_hides_every_known_credential() {
    let (dir, store) = temp_store();
    write_auth(dir.path(), full_file());
    let auth = store
        .load()
        .expect("load failed")
        .into_auth()
        .expect("no document");
    let tokens = auth.tokens.clone().expect("no tokens");
    assert_hides("TokenData Debug", &debug_of(&tokens), &known_secrets());
    assert_hides("AuthDotJson Debug", &debug_of(&auth), &known_secrets());
}

#[test]
fn debug_of_snapshot_and_transaction_hides_every_known_credential() {
    let (dir, store) = temp_store();
    write_auth(dir.path(), full_file());
    let snap = store.load().expect("load failed");
    assert_hides("Snapshot Debug", &debug_of(&snap), &known_secrets());
    let tx = store.transaction().expect("transaction failed");
    assert_hides("Transaction Debug", &debug_of(&tx), &known_secrets());
    drop(tx);
}

#[test]
fn debug_of_file_backend_and_store_hides_every_known_credential() {
    let (dir, _store) = temp_store();
    write_auth(dir.path(), full_file());
    let backend = FileBackend::new(dir.path()).expect("backend failed");
    let loaded = backend.load().expect("load failed").expect("no document");
    assert_hides("FileBackend Debug", &debug_of(&backend), &known_secrets());
    assert_hides("Store Debug", &debug_of(backend.store()), &known_secrets());
    assert_hides(
        "backend-loaded AuthDotJson Debug",
        &debug_of(&loaded),
        &known_secrets(),
    );
}

#[test]
fn debug_of_auth_dot_json_hides_credentials_of_other_auth_modes() {
    // personal_access_token and bedrock_api_key are credentials too (see resolved_mode); they are
    // kept as unknown keys, but Debug must not print them.
    let (dir, store) = temp_store();
    write_auth(dir.path(), file_with_other_credentials());
    let snap = store.load().expect("load failed");
    let auth = snap.auth().cloned().expect("no document");
    let secrets = [PAT.to_string(), BEDROCK.to_string()];
    assert_hides("AuthDotJson Debug", &debug_of(&auth), &secrets);
    assert_hides("Snapshot Debug", &debug_of(&snap), &secrets);
    let tx = store.transaction().expect("transaction failed");
    assert_hides("Transaction Debug", &debug_of(&tx), &secrets);
    drop(tx);
}

#[test]
fn conflict_errors_show_no_secret() {
    let (dir, store) = temp_store();
    write_auth(dir.path(), full_file());
    let err = store
        .compare_and_swap(Expect::Absent, None)
        .expect_err("create-only did not conflict");
    assert!(
        matches!(err, StoreError::Conflict { .. }),
        "expected Conflict, got {err:?}"
    );
    assert_error_hides("Conflict", &err, &known_secrets());
}

#[test]
fn lock_timeout_errors_show_no_secret() {
    let (dir, store) = temp_store();
    write_auth(dir.path(), full_file());
    let tx = store.transaction().expect("transaction failed");
    let other = store.with_store_options(StoreOptions {
        lock_timeout: Duration::from_millis(30),
        ..Default::default()
    });
    let err = other
        .transaction()
        .expect_err("a second transaction got the lock");
    assert!(
        matches!(err, StoreError::LockTimeout { .. }),
        "expected LockTimeout, got {err:?}"
    );
    assert_error_hides("LockTimeout", &err, &known_secrets());
    drop(tx);
}

#[test]
fn symlink_hard_link_not_a_directory_and_io_errors_show_no_secret() {
    let (dir, store) = temp_store();
    let target = dir.path().join("target.json");
    fs::write(&target, full_file()).expect("cannot write the target");
    symlink(&target, auth_path(dir.path())).expect("cannot symlink");
    let err = store.load().expect_err("load followed a symlink");
    assert!(
        matches!(err, StoreError::Symlink { .. }),
        "expected Symlink, got {err:?}"
    );
    assert_error_hides("Symlink", &err, &known_secrets());

    let (dir2, store2) = temp_store();
    let path = write_auth(dir2.path(), full_file());
    fs::hard_link(&path, dir2.path().join("other.json")).expect("cannot hard link");
    let err = store2
        .compare_and_swap(Expect::Any, None)
        .expect_err("a hard-linked file was deleted");
    assert!(
        matches!(err, StoreError::HardLinked { .. }),
        "expected HardLinked, got {err:?}"
    );
    assert_error_hides("HardLinked", &err, &known_secrets());

    let err = codex_store::Store::open(&target).expect_err("a file was opened as a store");
    assert!(
        matches!(err, StoreError::NotADirectory { .. }),
        "expected NotADirectory, got {err:?}"
    );
    assert_error_hides("NotADirectory", &err, &known_secrets());

    let err = codex_store::Store::open(target.join("below-a-file"))
        .expect_err("a store below a regular file was opened");
    assert!(
        matches!(err, StoreError::Io { .. }),
        "expected Io, got {err:?}"
    );
    assert_error_hides("Io", &err, &known_secrets());
}

/// Loads `bytes` and returns the Corrupt error.
fn corrupt_error(bytes: &str) -> StoreError {
    let (dir, store) = temp_store();
    write_auth(dir.path(), bytes);
    let err = store.load().expect_err("a corrupt file loaded");
    assert!(
        matches!(err, StoreError::Corrupt { .. }),
        "expected Corrupt, got {err:?}"
    );
    err
}

#[test]
fn corrupt_errors_show_no_token_value_from_the_file() {
    let whole = full_file();
    let cut = whole
        .find("\"account_id\"")
        .expect("fixture lacks account_id");
    let cases = [
        ("cut off", whole[..cut].to_string()),
        (
            "not JSON",
            format!("refresh_token={REFRESH_TOKEN} {API_KEY}"),
        ),
        (
            "array",
            format!("[\"{REFRESH_TOKEN}\", \"{API_KEY}\", \"{}\"]", id()),
        ),
        ("bare string", format!("\"{REFRESH_TOKEN}\"")),
        (
            "numeric access token",
            whole.replace(&format!("\"{}\"", access()), "7"),
        ),
        (
            "id token not a JWT",
            whole.replace(&id(), "not-a-jwt-but-a-secret-value"),
        ),
        (
            "api key not a string",
            whole.replace(&format!("\"{API_KEY}\""), "[\"sk-in-an-array-secret\"]"),
        ),
        ("trailing garbage", format!("{whole} {REFRESH_TOKEN}")),
    ];
    let mut secrets = known_secrets();
    secrets.push("not-a-jwt-but-a-secret-value".into());
    secrets.push("sk-in-an-array-secret".into());
    for (what, bytes) in cases {
        assert_ne!(bytes, whole, "{what}: the fixture was not altered");
        let err = corrupt_error(&bytes);
        assert_error_hides(&format!("Corrupt ({what})"), &err, &secrets);
    }
}

#[test]
fn a_corrupt_last_refresh_is_not_quoted_in_the_error() {
    // The reason "names the key, never a value" (StoreError::Corrupt, FormatError).
    let value = "rt_pasted_into_the_wrong_field_secret";
    let bytes = full_file().replace("2025-08-06T20:41:36.232376Z", value);
    let err = corrupt_error(&bytes);
    let shown = err.to_string();
    assert!(
        shown.contains("last_refresh"),
        "the reason does not name last_refresh: {shown}"
    );
    assert_error_hides("Corrupt (last_refresh)", &err, &[value.to_string()]);
}

#[test]
fn a_corrupt_file_over_the_limit_shows_no_value() {
    let padding = "z".repeat(codex_store::MAX_FILE_SIZE as usize);
    let bytes = format!("{{\n  \"OPENAI_API_KEY\": \"{API_KEY}\",\n  \"pad\": \"{padding}\"\n}}");
    let err = corrupt_error(&bytes);
    assert_error_hides("Corrupt (over the limit)", &err, &known_secrets());
    let shown = err.to_string();
    assert!(
        !shown.contains("zzzzzzzz"),
        "the error shows file contents: {}",
        &shown[..shown.len().min(300)]
    );
}

#[test]
fn a_leftover_temp_with_credentials_is_not_shown_by_diagnose() {
    let (dir, store) = temp_store();
    fs::write(dir.path().join(format!("{TEMP_PREFIX}1.1")), full_file())
        .expect("cannot write the temp");
    let problems = store.diagnose().expect("diagnose failed");
    let shown: String = problems.iter().map(|p| format!("{p} {p:?}")).collect();
    assert_hides("diagnose", &shown, &known_secrets());
}

#[test]
fn generations_and_expectations_show_hashes_not_contents() {
    let bytes = full_file();
    let g = Generation::of_bytes(bytes.as_bytes());
    let shown = format!(
        "{g} {g:?} {} {:?}",
        Expect::Generation(g),
        Expect::Generation(g)
    );
    assert_hides("Generation", &shown, &known_secrets());
}

#[test]
fn a_fresh_document_debug_hides_its_credentials() {
    let doc = AuthDotJson {
        openai_api_key: Some(Secret::new(API_KEY)),
        tokens: Some(codex_store::TokenData {
            id_token: Secret::new(id()),
            access_token: Secret::new(access()),
            refresh_token: Secret::new(REFRESH_TOKEN),
            account_id: None,
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_hides("AuthDotJson Debug", &debug_of(&doc), &known_secrets());
}
