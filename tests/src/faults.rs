//! The fault injector of the save tests, seen from Rust: an LD_PRELOAD library built from
//! `tests/faults/faults.c` by `tests/build.rs`, configured through the environment of the one
//! child process it should affect (see the comment at the top of faults.c for the rule
//! language).
//!
//! ```no_run
//! use codex_store_tests::faults::{Faults, ROTATION_PREFIX};
//! let faults = Faults::new().rule("fsync", &format!("/{ROTATION_PREFIX}"), "EIO", "doc,nth=1");
//! let env = faults.env();   // LD_PRELOAD, CODEX_FAULTS, CODEX_FAULTS_DIR: give them to the child
//! // ... run the child ...
//! assert_eq!(faults.fired(1).len(), 1, "the fsync fault never fired");
//! ```

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The path of the fault injector library (built by `tests/build.rs`).
pub const SHIM: &str = env!("CODEX_STORE_FAULTS_SHIM");

/// The name prefix of the rotation files of the save protocol (see `coexist-design.md`):
/// `.auth.json.codex-store-rotation.<generation>.<fingerprint>.<pid>.<n>`.
pub const ROTATION_PREFIX: &str = ".auth.json.codex-store-rotation.";

/// The name prefix of the plain temp files of ordinary writes.
pub const TEMP_PREFIX: &str = ".auth.json.codex-store-tmp.";

/// A set of fault rules and the directory where the injector logs what it did and where its
/// PAUSE handshake files go (a temp dir of its own, outside the store directory).
pub struct Faults {
    dir: TempDir,
    rules: Vec<String>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults::new()
    }
}

impl Faults {
    /// No rules yet.
    pub fn new() -> Faults {
        Faults {
            dir: tempfile::tempdir().expect("a temp dir for the fault injector"),
            rules: Vec::new(),
        }
    }

    /// Adds rule number `self.rules().len() + 1`: `ops:pattern:action[:qualifiers]`. `ops`:
    /// `open`, `create`, `write`, `fallocate`, `truncate`, `fsync`, `rename` (comma-separated)
    /// or `*`; `pattern`: a substring of the path (a trailing `$` anchors it at the end);
    /// `action`: an errno name, `KILL`, `PAUSE` or `MARK`; `qualifiers`: `nth=N`, `first=K`,
    /// `from=N`, `doc`, `armed`, `after` (comma-separated, may be empty).
    pub fn rule(mut self, ops: &str, pattern: &str, action: &str, qualifiers: &str) -> Faults {
        for (what, text) in [("ops", ops), ("pattern", pattern), ("action", action)] {
            assert!(
                !text.contains([':', ';']),
                "a fault rule's {what} cannot contain ':' or ';': {text:?}"
            );
        }
        let mut rule = format!("{ops}:{pattern}:{action}");
        if !qualifiers.is_empty() {
            rule.push(':');
            rule.push_str(qualifiers);
        }
        self.rules.push(rule);
        self
    }

    /// The rules, in order (rule numbers start at 1).
    pub fn rules(&self) -> &[String] {
        &self.rules
    }

    /// The environment that makes a child process run under these rules.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("LD_PRELOAD".to_owned(), SHIM.to_owned()),
            ("CODEX_FAULTS".to_owned(), self.rules.join(";")),
            (
                "CODEX_FAULTS_DIR".to_owned(),
                self.dir.path().display().to_string(),
            ),
        ]
    }

    /// The injector's directory (log and handshake files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every line the injector logged so far (`fired rule=<i> n=<n> call=... path=...`, or
    /// `pause-timeout ...`), from every process that ran under these rules.
    pub fn log(&self) -> Vec<String> {
        match fs::read_to_string(self.dir.path().join("log")) {
            Ok(text) => text.lines().map(str::to_owned).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The log lines of rule `rule` (1-based) acting.
    pub fn fired(&self, rule: usize) -> Vec<String> {
        let tag = format!("fired rule={rule} ");
        self.log()
            .into_iter()
            .filter(|line| line.starts_with(&tag))
            .collect()
    }

    /// The log, one line each, for messages.
    pub fn describe(&self) -> String {
        let log = self.log();
        format!(
            "fault rules {:?}; injector log ({} lines):\n  {}",
            self.rules,
            log.len(),
            log.join("\n  ")
        )
    }

    fn handshake(&self, kind: &str, rule: usize, n: usize) -> PathBuf {
        self.dir.path().join(format!("{kind}.{rule}.{n}"))
    }

    /// Waits until PAUSE rule `rule` has paused a process for the `n`th time (1-based); `false`
    /// if `timeout` passes first or `alive` says the process is gone.
    pub fn wait_paused(
        &self,
        rule: usize,
        n: usize,
        timeout: Duration,
        mut alive: impl FnMut() -> bool,
    ) -> bool {
        let ready = self.handshake("paused", rule, n);
        let deadline = Instant::now() + timeout;
        while !ready.exists() {
            if Instant::now() >= deadline || !alive() {
                return ready.exists();
            }
            // Polls a file the child creates; the bound only turns a hang into a failure.
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    /// Lets the process paused by rule `rule` for the `n`th time go on.
    pub fn release(&self, rule: usize, n: usize) {
        let go = self.handshake("go", rule, n);
        fs::write(&go, b"").unwrap_or_else(|e| panic!("cannot create {}: {e}", go.display()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::{Finished, Process, EVENT_TIMEOUT};
    use std::process::Command;

    fn sh(faults: &Faults, script: &str) -> Finished {
        let mut command = Command::new("sh");
        command.arg("-c").arg(script);
        for (k, v) in faults.env() {
            command.env(k, v);
        }
        Process::spawn_command(format!("sh -c {script:?}"), command).finish(EVENT_TIMEOUT)
    }

    #[test]
    fn the_shim_was_built_and_is_a_shared_library() {
        let bytes = fs::read(SHIM).unwrap_or_else(|e| panic!("cannot read {SHIM}: {e}"));
        assert_eq!(&bytes[..4], b"\x7fELF", "{SHIM} is not an ELF file");
    }

    #[test]
    fn a_create_rule_refuses_a_new_file_but_not_an_existing_one_and_logs_it() {
        let home = tempfile::tempdir().expect("temp dir");
        let existing = home.path().join("existing");
        fs::write(&existing, "x").expect("write a file");
        let faults = Faults::new().rule(
            "create",
            &format!("{}/", home.path().display()),
            "EACCES",
            "",
        );
        let out = sh(
            &faults,
            &format!(
                "echo y >> '{}' && echo z > '{}/new'",
                existing.display(),
                home.path().display()
            ),
        );
        assert!(
            !out.status.success(),
            "creating a new file must have failed: {out:?}"
        );
        assert!(
            out.stderr.contains("Permission denied"),
            "the shell must report EACCES: {out:?}"
        );
        assert_eq!(
            fs::read_to_string(&existing).expect("read the file"),
            "xy\n",
            "opening an existing file with O_CREAT must still work"
        );
        assert!(
            !home.path().join("new").exists(),
            "the refused file must not exist"
        );
        assert_eq!(faults.fired(1).len(), 1, "{}", faults.describe());
    }

    #[test]
    fn a_rule_without_qualifiers_in_an_unrelated_directory_changes_nothing() {
        let home = tempfile::tempdir().expect("temp dir");
        let faults = Faults::new().rule("*", "/nowhere-at-all/", "EIO", "");
        let out = sh(
            &faults,
            &format!("echo z > '{}/new' && sync", home.path().display()),
        );
        assert!(out.status.success(), "nothing may fail: {out:?}");
        assert!(faults.log().is_empty(), "{}", faults.describe());
    }

    #[test]
    fn a_malformed_rule_stops_the_process_with_a_message() {
        let faults = Faults::new().rule("fsink", "x", "EIO", "");
        let out = sh(&faults, "true");
        assert_eq!(
            out.status.code(),
            Some(86),
            "a bad rule must exit 86: {out:?}"
        );
        assert!(
            out.stderr.contains("unknown call class: fsink"),
            "the message must name the bad part: {out:?}"
        );
    }
}
