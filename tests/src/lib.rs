//! Helpers for codex-store's cross-crate and multi-process tests: the fake token endpoint, JWT and
//! auth.json fixtures, the set-up of the refresh tests, helper child processes, running the
//! `codex-store` command, a Codex 0.171.0 stand-in (`codex-sim`) with the mixed races it runs in,
//! the fault injector of the save tests, and the real Codex CLI (npm install, backend stub,
//! `codex app-server`).

pub mod cli_support;
pub mod codex_sim;
pub mod coexist;
pub mod etcd;
pub mod fake_idp;
pub mod faults;
pub mod jwt;
pub mod programs;
pub mod real_codex;
pub mod refresh_fixtures;
pub mod store_fixtures;
pub mod tcp_proxy;
pub mod worker;
