//! Helpers for codex-store's cross-crate and multi-process tests: the fake token endpoint, the
//! one fixture set ([`fixtures`]: files, auth.json documents, accounts, the set-up of the refresh
//! and process tests), the one JWT builder ([`jwt`]), the one secret scanner ([`secrets`]),
//! the one harness of every child process ([`process`]), running the `codex-store` command, a Codex 0.171.0 stand-in
//! (`codex-sim`) with the mixed races it runs in, the fault injector of the save tests, and the
//! real Codex CLI (npm install, backend stub, `codex app-server`). Its HTTP goes through one
//! library ([`http`]); its benches take percentiles one way ([`stats`]).

pub mod cli_support;
pub mod codex_sim;
pub mod coexist;
pub mod etcd;
pub mod fake_idp;
pub mod faults;
pub mod fixtures;
pub mod http;
pub mod jwt;
pub mod process;
pub mod programs;
pub mod real_codex;
pub mod secrets;
pub mod stats;
pub mod tcp_proxy;
pub mod tls;

/// Locks `m`, also when a thread panicked holding it (the data is plain and stays usable).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
