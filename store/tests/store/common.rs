//! Helpers shared by the store's integration tests: fixture files and file inspection; JWTs come
//! from the test kit (`codex_store_tests::jwt`).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use codex_store::{Store, StoreOptions, AUTH_FILE};
use tempfile::TempDir;

pub use codex_store_tests::jwt::base64url;

/// An unsigned JWT with this JSON payload (the kit's builder, `codex_store_tests::jwt`).
pub fn jwt(payload_json: &str) -> String {
    let payload: serde_json::Value = serde_json::from_str(payload_json)
        .unwrap_or_else(|e| panic!("the test payload {payload_json:?} is not JSON: {e}"));
    codex_store_tests::jwt::make_jwt(&payload)
}

/// An id token for `email` in workspace `account` on the plus plan.
pub fn id_token(email: &str, account: &str) -> String {
    codex_store_tests::jwt::id_token(email, account, "plus")
}

/// An access token that expires at `exp` (seconds since the epoch).
pub fn access_token(exp: u64) -> String {
    let exp = i64::try_from(exp).expect("an expiry beyond i64 seconds");
    codex_store_tests::jwt::access_token(exp, "store-test")
}

/// A temp directory and a store opened in it with a short lock wait.
pub fn temp_store() -> (TempDir, Store) {
    let dir = TempDir::new().expect("cannot create a temp dir");
    let store = Store::with_options(dir.path(), short_wait()).expect("cannot open the store");
    (dir, store)
}

/// Options with a short lock wait, so that a lock held by mistake fails fast.
pub fn short_wait() -> StoreOptions {
    StoreOptions {
        lock_timeout: Duration::from_millis(300),
        ..Default::default()
    }
}

/// The path of auth.json in `dir`.
pub fn auth_path(dir: &Path) -> PathBuf {
    dir.join(AUTH_FILE)
}

/// Writes auth.json in `dir` directly (as an existing installation or a tester would).
pub fn write_auth(dir: &Path, bytes: impl AsRef<[u8]>) -> PathBuf {
    let path = auth_path(dir);
    fs::write(&path, bytes).expect("cannot write the fixture auth.json");
    path
}

/// The bytes of a file, or a panic naming it.
pub fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The permission bits of a path (following symlinks).
pub fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("cannot stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Sets the permission bits of a path.
pub fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", path.display()));
}

/// The names of the entries of `dir`, sorted.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| {
            e.expect("cannot read a directory entry")
                .file_name()
                .into_string()
                .expect("a file name is not UTF-8")
        })
        .collect();
    names.sort();
    names
}

/// The secret values used by [`chatgpt_file`].
pub const REFRESH_TOKEN: &str = "rt_refresh_secret_0123456789";
pub const API_KEY: &str = "sk-proj-api-secret-0123456789";

/// A ChatGPT auth.json exactly as existing installations write it (pretty-printed, 2-space
/// indent, no trailing newline), with the given id and access tokens.
pub fn chatgpt_file(id_token: &str, access_token: &str) -> String {
    format!(
        r#"{{
  "auth_mode": "chatgpt",
  "OPENAI_API_KEY": null,
  "tokens": {{
    "id_token": "{id_token}",
    "access_token": "{access_token}",
    "refresh_token": "{REFRESH_TOKEN}",
    "account_id": "acct-1"
  }},
  "last_refresh": "2025-08-06T20:41:36.232376Z"
}}"#
    )
}

/// A valid ChatGPT auth.json with well-formed tokens.
pub fn valid_chatgpt_file() -> String {
    chatgpt_file(
        &id_token("a@example.com", "acct-1"),
        &access_token(4_000_000_000),
    )
}

/// An API-key auth.json as existing installations write it.
pub fn api_key_file() -> String {
    format!(
        r#"{{
  "auth_mode": "apikey",
  "OPENAI_API_KEY": "{API_KEY}"
}}"#
    )
}
