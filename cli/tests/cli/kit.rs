//! The test kit of codex-store-tests with the `codex-store` binary cargo built for these tests:
//! [`cli_support`](codex_store_tests::cli_support), the [`fixtures`](codex_store_tests::fixtures)
//! and the secret scanner ([`secrets`](codex_store_tests::secrets)) re-exported, the functions
//! that start the binary wrapped so that they start `env!("CARGO_BIN_EXE_codex-store")`.

use std::path::{Path, PathBuf};

pub use codex_store_tests::cli_support::*;
pub use codex_store_tests::fixtures::*;
pub use codex_store_tests::secrets::*;

/// The `codex-store` binary cargo built for these tests.
pub const CODEX_STORE: &str = env!("CARGO_BIN_EXE_codex-store");

/// [`CODEX_STORE`], after naming it as the binary under test to the kit.
pub fn codex_store_bin() -> PathBuf {
    use_codex_store_bin(CODEX_STORE);
    PathBuf::from(CODEX_STORE)
}

/// `codex-store --home HOME ARGS...` to the end (see [`codex_store_tests::cli_support::run`]).
pub fn run(home: &Path, args: &[&str], stdin: Option<&str>, envs: &[(&str, &str)]) -> CliOutput {
    use_codex_store_bin(CODEX_STORE);
    codex_store_tests::cli_support::run(home, args, stdin, envs)
}

/// `codex-store --home HOME ARGS...` left running (see [`codex_store_tests::cli_support::spawn`]).
pub fn spawn(home: &Path, args: &[&str], stdin: Option<&str>, envs: &[(&str, &str)]) -> Running {
    use_codex_store_bin(CODEX_STORE);
    codex_store_tests::cli_support::spawn(home, args, stdin, envs)
}

/// `codex-store ARGS...` without `--home` (see
/// [`codex_store_tests::cli_support::run_without_home`]).
pub fn run_without_home(args: &[&str], stdin: Option<&str>, envs: &[(&str, &str)]) -> CliOutput {
    use_codex_store_bin(CODEX_STORE);
    codex_store_tests::cli_support::run_without_home(args, stdin, envs)
}

/// The helper binary `name` of codex-store-tests, in the directory of [`CODEX_STORE`]. Panics,
/// naming the command that builds it, when it is not there.
pub fn helper(name: &str) -> String {
    let bin = Path::new(CODEX_STORE).with_file_name(name);
    assert!(
        bin.is_file(),
        "{} is not built: run `cargo test --workspace` (which builds the binaries of \
         codex-store-tests), or `cargo build -p codex-store-tests --bins` first",
        bin.display()
    );
    bin.to_string_lossy().into_owned()
}

/// The races of `codex-sim` processes and `codex-store` processes, starting
/// [`CODEX_STORE`].
pub mod coexist {
    use std::path::Path;

    pub use codex_store_tests::coexist::*;

    /// See [`codex_store_tests::coexist::race`].
    pub fn race(sim_bin: &Path, scenario: Scenario) -> RaceOutcome {
        super::use_codex_store_bin(super::CODEX_STORE);
        codex_store_tests::coexist::race(sim_bin, scenario)
    }
}
