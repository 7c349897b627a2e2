//! The bad-input matrix: every malformed auth.json is `StoreError::Corrupt` with its exact
//! generation and a reason naming the key, is left untouched, and is replaced only by a
//! compare-and-swap naming its generation or `Expect::Any`.

use std::path::Path;

use codex_store::{AuthDotJson, Expect, Generation, Secret, Store, StoreError, MAX_FILE_SIZE};
use codex_store_tests::fixtures::*;
use codex_store_tests::jwt;
use codex_store_tests::secrets::assert_hides;

/// The token values planted in the bad files; no error message may show them.
fn planted_secrets() -> Vec<String> {
    vec![
        REFRESH_TOKEN.to_string(),
        API_KEY.to_string(),
        jwt::id_token("leak@example.com", "acct-leak", "plus"),
        valid_access_token(),
    ]
}

fn replacement() -> AuthDotJson {
    AuthDotJson {
        openai_api_key: Some(Secret::new("sk-replacement")),
        ..Default::default()
    }
}

/// Asserts `err` is Corrupt for `path` at `generation` with a reason containing `key`, and that
/// its Display shows none of the planted secrets.
fn assert_corrupt(err: StoreError, path: &Path, generation: Generation, key: &str, from: &str) {
    assert_hides(
        &format!("{from}: the error message"),
        &err.to_string(),
        &planted_secrets(),
    );
    match err {
        StoreError::Corrupt {
            path: p,
            generation: g,
            reason,
        } => {
            assert_eq!(p, path, "{from}: Corrupt names the wrong path");
            assert_eq!(
                g, generation,
                "{from}: Corrupt carries the wrong generation"
            );
            assert!(
                reason.contains(key),
                "{from}: the reason does not name `{key}`: {reason}"
            );
        }
        other => panic!("{from}: expected Corrupt, got {other:?}"),
    }
}

/// The whole matrix for one bad file.
fn check_bad_file(bytes: &[u8], key: &str) {
    check_bad_file_at(bytes, key, Generation::of_bytes(bytes));
}

/// The generation of a file over the limit, which is never read whole: the SHA-256 of its first
/// `MAX_FILE_SIZE + 1` bytes followed by its size in decimal.
fn oversized_generation(head: &[u8], size: u64) -> Generation {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(&head[..(MAX_FILE_SIZE as usize + 1).min(head.len())]);
    hasher.update(size.to_string().as_bytes());
    Generation::Sha256(hasher.finalize().into())
}

fn check_bad_file_at(bytes: &[u8], key: &str, generation: Generation) {
    let (dir, store) = temp_store();
    let path = write_auth(dir.path(), bytes);

    let err = store.load().expect_err("load() accepted a bad file");
    assert_corrupt(err, &path, generation, key, "load()");
    assert_eq!(read(&path), bytes, "load() changed the bad file");

    let err = store
        .transaction()
        .expect_err("transaction() accepted a bad file");
    assert_corrupt(err, &path, generation, key, "transaction()");
    assert_eq!(read(&path), bytes, "transaction() changed the bad file");
    assert!(
        !store.lock_held().expect("lock_held failed"),
        "a failed transaction() kept the lock"
    );

    assert_eq!(
        store
            .generation()
            .expect("generation() failed on a bad file"),
        generation,
        "generation() differs from the hash of the bad bytes"
    );

    let err = store
        .compare_and_swap(Expect::Absent, Some(&replacement()))
        .expect_err("Expect::Absent replaced a corrupt file");
    assert!(
        matches!(err, StoreError::Conflict { actual, .. } if actual == generation),
        "Expect::Absent: expected Conflict naming the corrupt generation, got {err:?}"
    );
    assert_eq!(read(&path), bytes, "Expect::Absent changed the bad file");

    let wrong = Generation::of_bytes(b"some other bytes");
    let err = store
        .compare_and_swap(Expect::Generation(wrong), Some(&replacement()))
        .expect_err("a wrong generation replaced a corrupt file");
    assert!(
        matches!(err, StoreError::Conflict { .. }),
        "wrong generation: expected Conflict, got {err:?}"
    );
    let err = store
        .compare_and_swap(Expect::Generation(wrong), None)
        .expect_err("a wrong generation deleted a corrupt file");
    assert!(
        matches!(err, StoreError::Conflict { .. }),
        "wrong generation delete: expected Conflict, got {err:?}"
    );
    assert_eq!(
        read(&path),
        bytes,
        "a wrong generation changed the bad file"
    );

    store
        .compare_and_swap(Expect::Generation(generation), Some(&replacement()))
        .expect("naming the corrupt generation did not replace the file");
    assert_key(&store, "sk-replacement", "Expect::Generation(corrupt)");

    // Again from scratch, this time with Expect::Any.
    write_auth(dir.path(), bytes);
    store
        .compare_and_swap(Expect::Any, Some(&replacement()))
        .expect("Expect::Any did not replace a corrupt file");
    assert_key(&store, "sk-replacement", "Expect::Any");

    // And deleting a corrupt file by naming its generation.
    write_auth(dir.path(), bytes);
    let g = store
        .compare_and_swap(Expect::Generation(generation), None)
        .expect("naming the corrupt generation did not delete the file");
    assert_eq!(g, Generation::Absent, "deleting returned a generation");
    assert!(!path.exists(), "the corrupt file was not deleted");
}

fn assert_key(store: &Store, key: &str, how: &str) {
    let auth = store
        .load()
        .unwrap_or_else(|e| panic!("{how}: the replacement does not load: {e}"))
        .into_auth()
        .unwrap_or_else(|| panic!("{how}: no file after the replacement"));
    assert_eq!(
        auth.openai_api_key.as_ref().map(Secret::expose),
        Some(key),
        "{how}: the replacement was not written"
    );
}

fn tokens_file(tokens_body: &str) -> String {
    format!(
        "{{\n  \"OPENAI_API_KEY\": \"{API_KEY}\",\n  \"tokens\": {tokens_body},\n  \"last_refresh\": \"2025-08-06T20:41:36.232376Z\"\n}}"
    )
}

fn token_fields(id: &str, access: &str) -> String {
    format!(
        "{{\n    \"id_token\": {id},\n    \"access_token\": {access},\n    \"refresh_token\": \"{REFRESH_TOKEN}\",\n    \"account_id\": null\n  }}"
    )
}

fn good_id() -> String {
    format!(
        "\"{}\"",
        jwt::id_token("leak@example.com", "acct-leak", "plus")
    )
}

fn good_access() -> String {
    format!("\"{}\"", valid_access_token())
}

#[test]
fn an_empty_file_is_corrupt() {
    check_bad_file(b"", "empty");
}

#[test]
fn a_whitespace_only_file_is_corrupt() {
    check_bad_file(b"  \n\t\n", "empty");
}

#[test]
fn a_cut_off_file_is_corrupt() {
    let whole = tokens_file(&token_fields(&good_id(), &good_access()));
    let cut = whole
        .find("\"refresh_token\"")
        .expect("fixture lacks refresh_token")
        + 40;
    check_bad_file(&whole.as_bytes()[..cut], "cut off");
}

#[test]
fn a_file_that_is_not_json_is_corrupt() {
    let bytes = format!("OPENAI_API_KEY={API_KEY}\nrefresh={REFRESH_TOKEN}\n");
    check_bad_file(bytes.as_bytes(), "not valid JSON");
}

#[test]
fn a_json_array_is_corrupt() {
    let bytes = format!("[\"{API_KEY}\", \"{REFRESH_TOKEN}\"]");
    check_bad_file(bytes.as_bytes(), "not a JSON object");
}

#[test]
fn a_json_string_is_corrupt() {
    let bytes = format!("\"{API_KEY}\"");
    check_bad_file(bytes.as_bytes(), "not a JSON object");
}

#[test]
fn a_numeric_api_key_is_corrupt() {
    let bytes = format!(
        "{{\n  \"OPENAI_API_KEY\": 5,\n  \"tokens\": {},\n  \"last_refresh\": \"2025-08-06T20:41:36.232376Z\"\n}}",
        token_fields(&good_id(), &good_access())
    );
    check_bad_file(bytes.as_bytes(), "OPENAI_API_KEY");
}

#[test]
fn tokens_that_are_a_string_are_corrupt() {
    check_bad_file(tokens_file("\"x\"").as_bytes(), "tokens");
}

#[test]
fn a_numeric_access_token_is_corrupt() {
    let bytes = tokens_file(&token_fields(&good_id(), "7"));
    check_bad_file(bytes.as_bytes(), "tokens.access_token");
}

#[test]
fn a_missing_refresh_token_is_corrupt() {
    let bytes = tokens_file(&format!(
        "{{\n    \"id_token\": {},\n    \"access_token\": {}\n  }}",
        good_id(),
        good_access()
    ));
    check_bad_file(bytes.as_bytes(), "tokens.refresh_token");
}

#[test]
fn a_numeric_account_id_is_corrupt() {
    let bytes = tokens_file(&format!(
        "{{\n    \"id_token\": {},\n    \"access_token\": {},\n    \"refresh_token\": \"{REFRESH_TOKEN}\",\n    \"account_id\": 12\n  }}",
        good_id(),
        good_access()
    ));
    check_bad_file(bytes.as_bytes(), "tokens.account_id");
}

#[test]
fn a_last_refresh_that_is_not_a_timestamp_is_corrupt() {
    let bytes = format!(
        "{{\n  \"OPENAI_API_KEY\": \"{API_KEY}\",\n  \"tokens\": {},\n  \"last_refresh\": \"yesterday\"\n}}",
        token_fields(&good_id(), &good_access())
    );
    check_bad_file(bytes.as_bytes(), "last_refresh");
}

#[test]
fn a_numeric_last_refresh_is_corrupt() {
    let bytes =
        format!("{{\n  \"OPENAI_API_KEY\": \"{API_KEY}\",\n  \"last_refresh\": 1700000000\n}}");
    check_bad_file(bytes.as_bytes(), "last_refresh");
}

#[test]
fn a_last_refresh_of_multibyte_characters_is_corrupt_not_a_panic() {
    // 8 bytes, and byte 2 (= len - 6) falls inside the first `€`: slicing there would panic.
    let bytes =
        format!("{{\n  \"OPENAI_API_KEY\": \"{API_KEY}\",\n  \"last_refresh\": \"€€é\"\n}}");
    let outcome = std::panic::catch_unwind(|| check_bad_file(bytes.as_bytes(), "last_refresh"));
    assert!(
        outcome.is_ok(),
        "a last_refresh made of multibyte characters panicked instead of being Corrupt"
    );
}

#[test]
fn a_numeric_auth_mode_is_corrupt() {
    let bytes = format!("{{\n  \"auth_mode\": 1,\n  \"OPENAI_API_KEY\": \"{API_KEY}\"\n}}");
    check_bad_file(bytes.as_bytes(), "auth_mode");
}

#[test]
fn an_id_token_that_is_not_a_jwt_is_corrupt() {
    let bytes = tokens_file(&token_fields(
        "\"not-a-jwt-id-token-secret\"",
        &good_access(),
    ));
    check_bad_file(bytes.as_bytes(), "tokens.id_token");
    let (dir, store) = temp_store();
    write_auth(dir.path(), &bytes);
    let shown = store.load().expect_err("a bad id token loaded").to_string();
    assert_hides(
        "the error of a bad id token",
        &shown,
        &["not-a-jwt-id-token-secret"],
    );
}

#[test]
fn an_id_token_whose_payload_is_not_base64url_is_corrupt() {
    let bytes = tokens_file(&token_fields("\"aGVhZGVy.!!!.c2ln\"", &good_access()));
    check_bad_file(bytes.as_bytes(), "tokens.id_token");
}

#[test]
fn an_id_token_whose_payload_is_not_an_object_is_corrupt() {
    let bad = format!("\"{}\"", jwt::make_jwt(&serde_json::json!([1, 2, 3])));
    let bytes = tokens_file(&token_fields(&bad, &good_access()));
    check_bad_file(bytes.as_bytes(), "tokens.id_token");
}

#[test]
fn a_file_over_one_mebibyte_is_corrupt() {
    let padding = "x".repeat(MAX_FILE_SIZE as usize);
    let bytes =
        format!("{{\n  \"OPENAI_API_KEY\": \"{API_KEY}\",\n  \"padding\": \"{padding}\"\n}}");
    assert!(
        bytes.len() as u64 > MAX_FILE_SIZE,
        "the fixture is not over the limit"
    );
    let generation = oversized_generation(bytes.as_bytes(), bytes.len() as u64);
    check_bad_file_at(bytes.as_bytes(), "limit", generation);
}

#[test]
fn an_8_gib_sparse_file_is_corrupt_and_read_only_up_to_the_limit() {
    let (dir, store) = temp_store();
    let path = dir.path().join("auth.json");
    let size = 8u64 << 30;
    let file = std::fs::File::create(&path).expect("create");
    file.set_len(size).expect("a sparse 8 GiB file");
    drop(file);
    // Had it been read whole, the generation would be the hash of 8 GiB of zeros instead.
    let expected = oversized_generation(&vec![0u8; MAX_FILE_SIZE as usize + 1], size);
    match store.load() {
        Err(StoreError::Corrupt { generation, .. }) => assert_eq!(
            generation, expected,
            "the generation of an oversized file is not the documented prefix-and-size hash"
        ),
        other => panic!("an 8 GiB file gave {other:?} instead of Corrupt"),
    }
    assert_eq!(
        store.generation().expect("generation() failed"),
        expected,
        "generation() of an oversized file differs from load()'s"
    );
    store
        .compare_and_swap(Expect::Generation(expected), None)
        .expect("a compare-and-swap naming the oversized file's generation could not remove it");
    assert!(!path.exists(), "the oversized file is still there");
}

#[test]
fn a_file_of_exactly_one_mebibyte_still_loads() {
    let head = format!("{{\n  \"OPENAI_API_KEY\": \"{API_KEY}\",\n  \"padding\": \"");
    let tail = "\"\n}";
    let pad = MAX_FILE_SIZE as usize - head.len() - tail.len();
    let bytes = format!("{head}{}{tail}", "y".repeat(pad));
    assert_eq!(
        bytes.len() as u64,
        MAX_FILE_SIZE,
        "the fixture is not exactly 1 MiB"
    );
    let (dir, store) = temp_store();
    write_auth(dir.path(), &bytes);
    let snap = store
        .load()
        .expect("a file of exactly the limit was refused");
    assert_eq!(
        snap.generation(),
        Generation::of_bytes(bytes.as_bytes()),
        "wrong generation for a 1 MiB file"
    );
}

#[test]
fn a_valid_access_token_is_not_required_to_load() {
    // Only the id token must decode; an opaque access token still loads (diagnose reports it).
    let bytes = tokens_file(&token_fields(&good_id(), "\"opaque-access\""));
    let (dir, store) = temp_store();
    write_auth(dir.path(), &bytes);
    store
        .load()
        .expect("a file with an opaque access token was refused");
}

#[test]
fn writing_a_document_whose_id_token_is_not_a_jwt_is_refused_and_writes_nothing() {
    let (_dir, store) = temp_store();
    let path = write_auth(store.dir(), valid_chatgpt_file());
    let before = read(&path);
    let mut doc = store
        .load()
        .expect("the valid fixture did not load")
        .into_auth()
        .expect("the fixture has no document");
    doc.tokens
        .as_mut()
        .expect("the fixture has no tokens")
        .id_token = Secret::new("not-a-jwt");
    let err = store
        .compare_and_swap(Expect::Any, Some(&doc))
        .expect_err("a document the store could not read back was written");
    assert!(
        matches!(err, StoreError::InvalidDocument { ref reason, .. } if reason.contains("tokens.id_token")),
        "expected InvalidDocument naming tokens.id_token, got {err}"
    );
    assert_hides(
        "the refusal of the bad id token",
        &err.to_string(),
        &["not-a-jwt"],
    );
    assert_eq!(
        read(&path),
        before,
        "the file changed although the write was refused"
    );
}
