//! Compatibility with the files existing installations write: every shape loads, unknown keys
//! survive in order, and an unchanged document is rewritten byte for byte.

use codex_store::{AuthDotJson, AuthMode, Expect, Generation, Secret, Store, Timestamp, TokenData};
use codex_store_tests::fixtures::*;
use codex_store_tests::jwt;

/// Loads `text` from a real auth.json in a fresh store.
fn load_text(text: &str) -> (tempfile::TempDir, Store, AuthDotJson) {
    let (dir, store) = temp_store();
    write_auth(dir.path(), text);
    let auth = store
        .load()
        .unwrap_or_else(|e| panic!("a file existing installations write was refused: {e}\n{text}"))
        .into_auth()
        .expect("load found no document");
    (dir, store, auth)
}

/// Reads the file in a transaction and commits it back unchanged; returns the bytes after.
fn rewrite_unchanged(dir: &tempfile::TempDir, store: &Store) -> Vec<u8> {
    let tx = store.transaction().expect("transaction failed");
    let doc = tx.snapshot().auth().cloned().expect("no document");
    tx.commit(Some(&doc)).expect("commit failed");
    read(&auth_path(dir.path()))
}

fn assert_round_trips_byte_identical(text: &str) {
    let (dir, store, auth) = load_text(text);
    assert_eq!(
        String::from_utf8(auth.to_json()).expect("to_json is not UTF-8"),
        text,
        "to_json of an unchanged document differs from the file"
    );
    let before = store.generation().expect("generation failed");
    let after = rewrite_unchanged(&dir, &store);
    assert_eq!(
        String::from_utf8(after).expect("file is not UTF-8"),
        text,
        "a read-and-commit-back changed the bytes"
    );
    assert_eq!(
        store.generation().expect("generation failed"),
        before,
        "an unchanged rewrite changed the generation"
    );
}

#[test]
fn the_test_jwt_helper_encodes_base64url_like_rfc_4648() {
    for (input, expected) in [
        ("", ""),
        ("f", "Zg"),
        ("fo", "Zm8"),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg"),
        ("fooba", "Zm9vYmE"),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(
            jwt::base64url(input.as_bytes()),
            expected,
            "base64url({input:?}) is wrong"
        );
    }
    assert_eq!(
        jwt::base64url([0xfb, 0xff]),
        "-_8",
        "the URL-safe alphabet is not used"
    );
    let claims = codex_store::IdTokenClaims::decode(&valid_id_token())
        .expect("the crate cannot decode the helper's JWT");
    assert_eq!(
        claims.email.as_deref(),
        Some("a@example.com"),
        "the helper's JWT payload does not round-trip"
    );
}

#[test]
fn a_chatgpt_file_with_auth_mode_loads_and_round_trips() {
    let text = valid_chatgpt_file();
    let (_dir, _store, auth) = load_text(&text);
    assert_eq!(
        auth.auth_mode,
        Some(AuthMode::Chatgpt),
        "auth_mode not read"
    );
    assert_eq!(
        auth.resolved_mode(),
        AuthMode::Chatgpt,
        "wrong resolved mode"
    );
    assert!(
        auth.openai_api_key.is_none(),
        "a null key was read as a key"
    );
    let tokens = auth.tokens.as_ref().expect("tokens not read");
    assert_eq!(
        tokens.refresh_token.expose(),
        REFRESH_TOKEN,
        "refresh token not read"
    );
    assert_eq!(
        tokens.account_id.as_deref(),
        Some("acct-1"),
        "account id not read"
    );
    let claims = tokens.id_claims().expect("id claims do not decode");
    assert_eq!(
        claims.email.as_deref(),
        Some("a@example.com"),
        "email claim not read"
    );
    assert_eq!(
        claims.account_id.as_deref(),
        Some("acct-1"),
        "workspace claim not read"
    );
    assert!(
        tokens
            .access_token_expiry()
            .expect("exp does not decode")
            .is_some(),
        "exp not read"
    );
    assert_eq!(
        auth.last_refresh.as_ref().map(Timestamp::as_str),
        Some("2025-08-06T20:41:36.232376Z"),
        "last_refresh not kept as written"
    );
    assert_round_trips_byte_identical(&text);
}

#[test]
fn a_chatgpt_file_without_auth_mode_loads_as_chatgpt_and_round_trips() {
    let text = format!(
        r#"{{
  "OPENAI_API_KEY": null,
  "tokens": {{
    "id_token": "{}",
    "access_token": "{}",
    "refresh_token": "{REFRESH_TOKEN}",
    "account_id": "acct-1"
  }},
  "last_refresh": "2025-08-06T20:41:36.232376Z"
}}"#,
        valid_id_token(),
        valid_access_token()
    );
    let (_dir, _store, auth) = load_text(&text);
    assert_eq!(auth.auth_mode, None, "an absent auth_mode was invented");
    assert_eq!(
        auth.resolved_mode(),
        AuthMode::Chatgpt,
        "tokens without a key do not resolve to ChatGPT"
    );
    assert_round_trips_byte_identical(&text);
}

#[test]
fn an_api_key_only_file_loads_and_round_trips() {
    let text = api_key_file();
    let (_dir, _store, auth) = load_text(&text);
    assert_eq!(
        auth.resolved_mode(),
        AuthMode::ApiKey,
        "wrong resolved mode"
    );
    assert_eq!(
        auth.openai_api_key.as_ref().map(Secret::expose),
        Some(API_KEY),
        "key not read"
    );
    assert!(auth.tokens.is_none(), "tokens invented");
    assert_round_trips_byte_identical(&text);
}

#[test]
fn an_api_key_file_without_auth_mode_resolves_to_api_key() {
    let text = format!("{{\n  \"OPENAI_API_KEY\": \"{API_KEY}\"\n}}");
    let (_dir, _store, auth) = load_text(&text);
    assert_eq!(
        auth.resolved_mode(),
        AuthMode::ApiKey,
        "a bare key does not resolve to ApiKey"
    );
    assert_round_trips_byte_identical(&text);
}

#[test]
fn tokens_null_loads_as_no_tokens_and_round_trips() {
    let text = "{\n  \"OPENAI_API_KEY\": null,\n  \"tokens\": null,\n  \"last_refresh\": null\n}";
    let (_dir, _store, auth) = load_text(text);
    assert!(auth.tokens.is_none(), "tokens: null read as tokens");
    assert!(
        auth.last_refresh.is_none(),
        "last_refresh: null read as a time"
    );
    assert_eq!(
        auth.resolved_mode(),
        AuthMode::Chatgpt,
        "an empty document does not resolve to ChatGPT"
    );
    assert_round_trips_byte_identical(text);
}

#[test]
fn an_empty_object_loads_and_round_trips() {
    let (_dir, _store, auth) = load_text("{}");
    assert_eq!(
        auth.resolved_mode(),
        AuthMode::Chatgpt,
        "an empty object does not resolve to ChatGPT"
    );
    assert_round_trips_byte_identical("{}");
}

#[test]
fn a_file_with_both_tokens_and_a_key_and_no_auth_mode_resolves_to_api_key() {
    let text = format!(
        r#"{{
  "OPENAI_API_KEY": "{API_KEY}",
  "tokens": {{
    "id_token": "{}",
    "access_token": "{}",
    "refresh_token": "{REFRESH_TOKEN}",
    "account_id": null
  }},
  "last_refresh": "2025-08-06T20:41:36Z"
}}"#,
        valid_id_token(),
        valid_access_token()
    );
    let (_dir, _store, auth) = load_text(&text);
    assert_eq!(
        auth.resolved_mode(),
        AuthMode::ApiKey,
        "an old file with both tokens and a key does not read as API-key mode"
    );
    assert!(auth.tokens.is_some(), "tokens dropped");
    assert_eq!(
        auth.tokens.as_ref().and_then(|t| t.account_id.clone()),
        None,
        "account_id null read as a value"
    );
    assert_round_trips_byte_identical(&text);
}

#[test]
fn a_personal_access_token_resolves_to_its_mode_and_survives() {
    let text = format!(
        "{{\n  \"OPENAI_API_KEY\": \"{API_KEY}\",\n  \"personal_access_token\": \"pat_secret_123\"\n}}"
    );
    let (_dir, _store, auth) = load_text(&text);
    assert_eq!(
        auth.resolved_mode(),
        AuthMode::Other("personalAccessToken".into()),
        "a personal access token does not take precedence in mode inference"
    );
    assert_eq!(
        auth.unknown_fields(),
        vec!["personal_access_token".to_string()],
        "the unknown key is not listed"
    );
    assert_round_trips_byte_identical(&text);
}

#[test]
fn a_bedrock_key_resolves_to_its_mode() {
    let text = format!(
        "{{\n  \"OPENAI_API_KEY\": \"{API_KEY}\",\n  \"bedrock_api_key\": \"bedrock-secret\"\n}}"
    );
    let (_dir, _store, auth) = load_text(&text);
    assert_eq!(
        auth.resolved_mode(),
        AuthMode::Other("bedrockApiKey".into()),
        "a bedrock key does not take precedence over OPENAI_API_KEY"
    );
}

#[test]
fn newer_auth_modes_are_kept_as_written() {
    for mode in [
        "personalAccessToken",
        "bedrockApiKey",
        "agentIdentity",
        "headers",
        "somethingFuture",
    ] {
        let text = format!("{{\n  \"auth_mode\": \"{mode}\",\n  \"OPENAI_API_KEY\": null\n}}");
        let (_dir, _store, auth) = load_text(&text);
        assert_eq!(
            auth.resolved_mode(),
            AuthMode::Other(mode.to_string()),
            "auth_mode {mode} not kept"
        );
        assert_round_trips_byte_identical(&text);
    }
}

#[test]
fn a_last_refresh_with_an_offset_loads_and_is_kept_as_written() {
    let text = "{\n  \"OPENAI_API_KEY\": null,\n  \"last_refresh\": \"2025-08-06T22:41:36.232376+02:00\"\n}";
    let (_dir, _store, auth) = load_text(text);
    let utc = Timestamp::parse("2025-08-06T20:41:36.232376Z").expect("UTC form refused");
    assert_eq!(
        auth.last_refresh.as_ref().map(Timestamp::time),
        Some(utc.time()),
        "the offset was not applied"
    );
    assert_round_trips_byte_identical(text);
}

fn file_with_unknown_keys() -> String {
    format!(
        r#"{{
  "zz_first": {{
    "nested": [
      1,
      2.5,
      "three",
      null,
      true
    ],
    "b": {{}},
    "a": []
  }},
  "auth_mode": "chatgpt",
  "OPENAI_API_KEY": null,
  "agent_identity": "agent-1",
  "tokens": {{
    "zz_token_extra": "keep-me",
    "id_token": "{}",
    "access_token": "{}",
    "aa_token_extra": 42,
    "refresh_token": "{REFRESH_TOKEN}",
    "account_id": "acct-1"
  }},
  "last_refresh": "2025-08-06T20:41:36.232376Z",
  "mm_last": false
}}"#,
        valid_id_token(),
        valid_access_token()
    )
}

#[test]
fn unknown_keys_at_both_levels_survive_a_rewrite_in_their_order() {
    let text = file_with_unknown_keys();
    let (_dir, _store, auth) = load_text(&text);
    assert_eq!(
        auth.unknown_fields(),
        vec![
            "zz_first".to_string(),
            "agent_identity".to_string(),
            "mm_last".to_string(),
            "tokens.zz_token_extra".to_string(),
            "tokens.aa_token_extra".to_string(),
        ],
        "unknown keys not kept in file order"
    );
    assert_round_trips_byte_identical(&text);
}

#[test]
fn a_file_in_non_canonical_key_order_stays_byte_identical() {
    let text = format!(
        r#"{{
  "last_refresh": "2025-08-06T20:41:36.232376Z",
  "tokens": {{
    "account_id": "acct-1",
    "refresh_token": "{REFRESH_TOKEN}",
    "access_token": "{}",
    "id_token": "{}"
  }},
  "OPENAI_API_KEY": null,
  "auth_mode": "chatgpt"
}}"#,
        valid_access_token(),
        valid_id_token()
    );
    assert_round_trips_byte_identical(&text);
}

#[test]
fn modifying_one_field_keeps_everything_else() {
    let text = file_with_unknown_keys();
    let (dir, store, _auth) = load_text(&text);
    let new_access = access_token_expiring_at(4_100_000_000);
    let tx = store.transaction().expect("transaction failed");
    let mut doc = tx.snapshot().auth().cloned().expect("no document");
    doc.tokens.as_mut().expect("no tokens").access_token = Secret::new(new_access.clone());
    tx.commit(Some(&doc)).expect("commit failed");
    let expected = text.replace(&valid_access_token(), &new_access);
    assert_ne!(
        expected, text,
        "the fixture did not contain the access token"
    );
    assert_eq!(
        String::from_utf8(read(&auth_path(dir.path()))).expect("not UTF-8"),
        expected,
        "changing the access token changed other bytes of the file"
    );
}

#[test]
fn setting_a_missing_key_appends_it_and_keeps_the_rest() {
    let text =
        format!("{{\n  \"OPENAI_API_KEY\": \"{API_KEY}\",\n  \"personal_access_token\": null\n}}");
    let (dir, store, _auth) = load_text(&text);
    let tx = store.transaction().expect("transaction failed");
    let mut doc = tx.snapshot().auth().cloned().expect("no document");
    doc.auth_mode = Some(AuthMode::ApiKey);
    tx.commit(Some(&doc)).expect("commit failed");
    let after = String::from_utf8(read(&auth_path(dir.path()))).expect("not UTF-8");
    assert_eq!(
        after,
        format!(
            "{{\n  \"OPENAI_API_KEY\": \"{API_KEY}\",\n  \"personal_access_token\": null,\n  \"auth_mode\": \"apikey\"\n}}"
        ),
        "a new key was not appended after the file's keys"
    );
}

#[test]
fn clearing_the_api_key_writes_null_where_it_stood() {
    let text = api_key_file();
    let (dir, store, _auth) = load_text(&text);
    let tx = store.transaction().expect("transaction failed");
    let mut doc = tx.snapshot().auth().cloned().expect("no document");
    doc.openai_api_key = None;
    tx.commit(Some(&doc)).expect("commit failed");
    assert_eq!(
        String::from_utf8(read(&auth_path(dir.path()))).expect("not UTF-8"),
        "{\n  \"auth_mode\": \"apikey\",\n  \"OPENAI_API_KEY\": null\n}",
        "a cleared key is not written as null in place"
    );
}

#[test]
fn a_new_document_is_written_like_existing_installations_write_it() {
    let (dir, store) = temp_store();
    let id = valid_id_token();
    let access = valid_access_token();
    let auth = AuthDotJson {
        auth_mode: Some(AuthMode::Chatgpt),
        openai_api_key: None,
        tokens: Some(TokenData {
            id_token: Secret::new(id.clone()),
            access_token: Secret::new(access.clone()),
            refresh_token: Secret::new(REFRESH_TOKEN),
            account_id: Some("acct-1".into()),
            ..Default::default()
        }),
        last_refresh: Some(
            Timestamp::parse("2025-08-06T20:41:36.232376Z").expect("timestamp refused"),
        ),
        ..Default::default()
    };
    store
        .compare_and_swap(Expect::Absent, Some(&auth))
        .expect("write failed");
    assert_eq!(
        String::from_utf8(read(&auth_path(dir.path()))).expect("not UTF-8"),
        chatgpt_file(&id, &access),
        "a new document is not in the canonical pretty-printed form"
    );
}

#[test]
fn a_new_api_key_document_writes_auth_mode_only_when_set() {
    let doc = AuthDotJson {
        openai_api_key: Some(Secret::new("sk-x")),
        ..Default::default()
    };
    let text = String::from_utf8(doc.to_json()).expect("not UTF-8");
    assert!(
        !text.contains("auth_mode"),
        "an unset auth_mode was written: {text}"
    );
    assert!(
        text.contains("\"OPENAI_API_KEY\": \"sk-x\""),
        "the key was not written: {text}"
    );
    assert!(!text.ends_with('\n'), "a trailing newline was written");
    let back = AuthDotJson::from_json(text.as_bytes()).expect("our own output does not parse");
    assert_eq!(
        back.openai_api_key, doc.openai_api_key,
        "the key did not round-trip"
    );
}

#[test]
fn a_written_document_reads_back_equal() {
    let text = file_with_unknown_keys();
    let (dir, store, auth) = load_text(&text);
    let g = store
        .compare_and_swap(Expect::Any, Some(&auth))
        .expect("rewrite failed");
    assert_eq!(
        g,
        Generation::of_bytes(text.as_bytes()),
        "an unchanged rewrite produced another generation"
    );
    let again = store
        .load()
        .expect("load failed")
        .into_auth()
        .expect("no document");
    assert_eq!(again, auth, "the document changed through a write and read");
    drop(dir);
}
