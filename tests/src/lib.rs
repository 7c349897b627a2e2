//! Helpers for codex-store's cross-crate and multi-process tests: the fake token endpoint, JWT and
//! auth.json fixtures, the set-up of the refresh tests, the one harness of every child process,
//! running the `codex-store` command, a Codex 0.171.0 stand-in (`codex-sim`) with the mixed races
//! it runs in, the fault injector of the save tests, and the real Codex CLI (npm install, backend
//! stub, `codex app-server`).

pub mod cli_support;
pub mod codex_sim;
pub mod coexist;
pub mod fake_idp;
pub mod faults;
pub mod jwt;
pub mod process;
pub mod programs;
pub mod real_codex;
pub mod refresh_fixtures;
pub mod store_fixtures;

/// Locks `m`, also when a thread panicked holding it (the data is plain and stays usable).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
