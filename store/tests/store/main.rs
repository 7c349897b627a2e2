//! The store's integration tests, one binary: the file and its lock, compare-and-swap,
//! compatibility with what Codex writes, bad input, rotation and secrets (settings from the environment are tested alone in tests/settings.rs: they set a process-wide variable).

mod backend;
mod bad_input;
mod compare_and_swap;
mod compat;
mod files;
mod robustness;
mod rotation;
mod secrets;
