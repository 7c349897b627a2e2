//! The tests that run the `codex-store` binary, beside the package that defines it: cargo builds
//! it for them and names it in `env!("CARGO_BIN_EXE_codex-store")`, so no test runs cargo.
//!
//! The helper programs these tests race against `codex-store` (`store-worker`, `codex-sim`,
//! `inplace-writer`) are binaries of the codex-store-tests package; cargo gives a test only its
//! own package's binary paths, so they are taken from the same `target/<profile>/` directory as
//! `codex-store` ([`kit::helper`]). `cargo test --workspace` builds them before any test runs.

mod fleet_kit;
mod kit;

mod agent;
mod agent_hardening;
mod broker_cli;
mod codex_sim;
mod coexistence;
mod commands;
mod concurrency;
mod conventions;
mod fleet;
mod fleet_broker;
mod fleet_commands;
mod fleet_history;
mod fleet_propagation;
mod fleet_rbac;
mod fleet_records;
mod fleet_watch;
mod hostile_files;
mod inspect;
mod lock;
mod misconfiguration;
mod real_codex;
mod redeeming;
mod save_faults;
mod service_files;
mod sign_in_out;
mod status;
