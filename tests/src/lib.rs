//! Helpers for codex-store's cross-crate and multi-process tests: the fake token endpoint, JWT and
//! auth.json fixtures, the set-up of the refresh tests, helper child processes, and running the
//! `codex-store` command; and a Codex 0.171.0 stand-in (`codex-sim`) with the mixed races it runs
//! in against `codex-store`.

pub mod cli_support;
pub mod codex_sim;
pub mod coexist;
pub mod fake_idp;
pub mod faults;
pub mod jwt;
pub mod programs;
pub mod refresh_fixtures;
pub mod store_fixtures;
pub mod worker;
