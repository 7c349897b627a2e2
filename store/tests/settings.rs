//! Settings from the environment: one owner resolves them, and a bad value is an error.
//! (Alone in its test binary: it sets a process-wide environment variable.)

use codex_store::{Store, StoreError, StoreOptions};

#[test]
fn a_lock_timeout_variable_that_is_not_a_duration_is_an_error_naming_it() {
    // The variable is read by `Store::open` through `StoreOptions::from_env`. This test binary
    // holds this one test, so setting the variable races with nothing.
    let dir = tempfile::tempdir().expect("temp dir");
    std::env::set_var(codex_store::LOCK_TIMEOUT_ENV, "soon");
    let opened = Store::open(dir.path());
    let from_env = StoreOptions::from_env();
    std::env::remove_var(codex_store::LOCK_TIMEOUT_ENV);
    for result in [opened.map(drop), from_env.map(drop)] {
        match result {
            Err(StoreError::InvalidSetting { name, value, .. }) => {
                assert_eq!(name, codex_store::LOCK_TIMEOUT_ENV, "another setting named");
                assert_eq!(value, "soon", "the bad value is not quoted");
            }
            other => panic!("a bad CODEX_STORE_LOCK_TIMEOUT gave {other:?}"),
        }
    }
}
