//! What the measurements share: the plan, the credentials they run on and the verdict (their
//! medians are `codex_store_tests::stats`').

use std::path::Path;
use std::time::SystemTime;

use codex_refresh::{AuthManager, RefreshConfig};
use codex_store::Store;
use codex_store_tests::fixtures::home_with_auth;
use codex_store_tests::jwt;

pub const ACCOUNT: &str = "acc-bench-0001";
pub const EMAIL: &str = "bench@example.com";
pub const PLAN: &str = "pro";
pub const INITIAL_RT: &str = "rt_bench_initial";

/// How many iterations each measurement makes.
pub struct Plan {
    pub full: bool,
    pub batches: usize,
    pub calls_per_batch: usize,
    pub races: usize,
}

/// A fresh CODEX_HOME holding ChatGPT credentials whose access token expires `exp_in_secs` from
/// now (the refresh window is 5 minutes: 3600 is not due, 60 is due but still usable).
pub fn home_with_tokens(exp_in_secs: i64) -> tempfile::TempDir {
    let text = jwt::auth_json(
        &jwt::access_token(jwt::now_unix() + exp_in_secs, "at_bench_initial"),
        INITIAL_RT,
        &jwt::id_token(EMAIL, ACCOUNT, PLAN),
        ACCOUNT,
    );
    home_with_auth(text, 0o600).0
}

/// A manager over `dir` whose token URL is never used (the credentials are not due).
pub fn cached_manager(dir: &Path) -> AuthManager {
    let config = RefreshConfig {
        token_url: "http://127.0.0.1:9/unused".into(),
        ..RefreshConfig::default()
    };
    let store = Store::open(dir).expect("cannot open the store");
    let manager = AuthManager::new(store, config).expect("cannot build the manager");
    let auth = manager.cached().expect("the manager cached no credentials");
    assert!(
        !auth.is_due(SystemTime::now(), manager.config()),
        "the bench credentials must not be due"
    );
    manager
}

pub fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("cannot build a tokio runtime")
}

pub fn pass(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}
