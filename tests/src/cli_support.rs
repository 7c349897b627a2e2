//! Running the `codex-store` command from tests and examples: locating (or building) the
//! binary, running it with a clean environment, recording everything it printed, made-up
//! credentials whose every secret is registered, and a scan proving that no secret leaked.
//!
//! Every run is recorded in a process-wide list, and every secret a test makes (or receives from
//! the fake endpoint) is registered in another, so a test can end with
//! [`assert_no_secret_leaked`]: no registered secret appears in any recorded stdout or stderr,
//! except the stdout of `token`, whose whole point is to print the bearer.
//!
//! Messages never show a raw secret: [`redact`] replaces every registered secret by its
//! [`fingerprint`].

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tempfile::TempDir;

use crate::fake_idp::{FakeIdp, Issued};
use crate::jwt;
use crate::lock;
use crate::process::{Finished, Process};

/// The bound on one run of the command. It only turns a hang into a failure; no test relies on
/// it elapsing.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// Environment variables a run never inherits: a test that wants one passes it explicitly.
pub const SCRUBBED_ENV: [&str; 4] = [
    "CODEX_HOME",
    "CODEX_REFRESH_TOKEN_URL_OVERRIDE",
    "RUST_LOG",
    "CODEX_STORE_LOCK_TIMEOUT",
];

/// Where a run that was given no token URL sends refresh requests: port 9 (discard) on the
/// loopback, where nothing listens, so that no test can ever reach the real endpoint.
pub const DEAD_TOKEN_URL: &str = "http://127.0.0.1:9/oauth/token";

/// The documented exit codes (cli/src/main.rs).
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// Any other error.
    pub const OTHER: i32 = 1;
    /// Usage error.
    pub const USAGE: i32 = 2;
    /// Sign-in required.
    pub const SIGN_IN_REQUIRED: i32 = 3;
    /// Transient refresh failure.
    pub const TRANSIENT: i32 = 4;
    /// Lock timeout.
    pub const LOCK_TIMEOUT: i32 = 5;
    /// Corrupt auth.json.
    pub const CORRUPT: i32 = 6;
    /// A mode codex-store does not serve.
    pub const UNSUPPORTED_MODE: i32 = 7;
}

// ---------------------------------------------------------------------------------------------
// Locating the binary
// ---------------------------------------------------------------------------------------------

static CODEX_STORE: OnceLock<PathBuf> = OnceLock::new();

/// Names the `codex-store` binary under test: the cli package's tests pass
/// `env!("CARGO_BIN_EXE_codex-store")`, the binary cargo built for them. The first call wins.
pub fn use_codex_store_bin(path: &str) {
    let _ = CODEX_STORE.set(PathBuf::from(path));
}

/// The `codex-store` binary: the one given to [`use_codex_store_bin`], else `CODEX_STORE_BIN`,
/// else `target/<profile>/codex-store` beside the running program (examples, benches), which
/// must already be built (see [`crate::programs::built`]). Nothing here runs cargo.
pub fn codex_store_bin() -> PathBuf {
    if let Some(bin) = CODEX_STORE.get() {
        return bin.clone();
    }
    if let Some(bin) = std::env::var_os("CODEX_STORE_BIN").filter(|v| !v.is_empty()) {
        return PathBuf::from(bin);
    }
    crate::programs::built("codex-store", "codex-store-cli")
}

// ---------------------------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------------------------

static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// The first 12 hex characters of the SHA-256 of `value`: shows which secret it is without
/// showing it (the same as `Secret::fingerprint`).
pub fn fingerprint(value: &str) -> String {
    Sha256::digest(value.as_bytes())[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The SHA-256 of `bytes` as 64 lowercase hex characters (a generation).
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Registers a secret for [`assert_no_secret_leaked`] and [`redact`]. For a JWT its payload part
/// is registered too, so that a partial leak is caught as well.
pub fn register_secret(value: &str) {
    let mut needles = vec![value.to_owned()];
    let parts: Vec<&str> = value.split('.').collect();
    if parts.len() == 3 && parts[1].len() >= 16 {
        needles.push(parts[1].to_owned());
    }
    let mut secrets = lock(&SECRETS);
    for needle in needles {
        if !needle.is_empty() && !secrets.contains(&needle) {
            secrets.push(needle);
        }
    }
}

/// Registers the three tokens the fake endpoint handed out.
pub fn register_issued(issued: &Issued) {
    register_secret(&issued.access_token);
    register_secret(&issued.refresh_token);
    register_secret(&issued.id_token);
}

/// Registers whatever the fake endpoint issued last (call it after a run that may have
/// refreshed).
pub fn register_last_issued(idp: &FakeIdp) {
    if let Some(issued) = idp.last_issued() {
        register_issued(&issued);
    }
}

/// Every registered secret, longest first (so that a JWT is redacted before its payload).
fn secrets() -> Vec<String> {
    let mut all = lock(&SECRETS).clone();
    all.sort_by_key(|s| std::cmp::Reverse(s.len()));
    all
}

/// `text` with every registered secret replaced by `<secret fingerprint>`: safe to show.
pub fn redact(text: &str) -> String {
    let mut out = text.to_owned();
    for secret in secrets() {
        if out.contains(&secret) {
            out = out.replace(&secret, &format!("<secret {}>", fingerprint(&secret)));
        }
    }
    out
}

/// A value unique in this process run: `tag-pid-n`.
pub fn unique(tag: &str) -> String {
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::Relaxed)
    )
}

/// A new, registered, made-up API key.
pub fn api_key() -> String {
    let key = format!("sk-test-{}", unique("key").replace('-', "x"));
    register_secret(&key);
    key
}

/// An API-key auth.json document for `key`, pretty-printed like Codex writes it.
pub fn api_key_json(key: &str) -> String {
    let doc = serde_json::json!({"auth_mode": "apikey", "OPENAI_API_KEY": key});
    serde_json::to_string_pretty(&doc).expect("a JSON value always serializes")
}

/// Made-up ChatGPT credentials, every secret registered.
#[derive(Clone, Debug)]
pub struct ChatgptCreds {
    /// `tokens.account_id`, also the id token's `chatgpt_account_id`.
    pub account_id: String,
    /// The id token's email.
    pub email: String,
    /// The id token's plan.
    pub plan: String,
    /// The access token.
    pub access_token: String,
    /// The refresh token (the fake endpoint's initial live one).
    pub refresh_token: String,
    /// The id token.
    pub id_token: String,
}

impl ChatgptCreds {
    /// Credentials whose access token expires `expires_in` seconds from now (negative: already
    /// expired).
    pub fn expiring_in(expires_in: i64) -> Self {
        let account_id = unique("acct");
        let email = format!("{}@example.com", unique("user"));
        let plan = "plus".to_owned();
        let access_token = jwt::access_token(jwt::now_unix() + expires_in, &unique("at-initial"));
        let refresh_token = format!("rt_initial_{}", unique("secret").replace('-', "_"));
        let id_token = jwt::id_token(&email, &account_id, &plan);
        for secret in [&access_token, &refresh_token, &id_token] {
            register_secret(secret);
        }
        ChatgptCreds {
            account_id,
            email,
            plan,
            access_token,
            refresh_token,
            id_token,
        }
    }

    /// Credentials whose access token expired an hour ago: due, and no longer usable.
    pub fn expired() -> Self {
        Self::expiring_in(-3600)
    }

    /// Credentials whose access token expires in two minutes: due (within the 5 minute window)
    /// but still usable.
    pub fn due_but_valid() -> Self {
        Self::expiring_in(120)
    }

    /// Credentials valid for another hour: not due.
    pub fn fresh() -> Self {
        Self::expiring_in(3600)
    }

    /// The auth.json document.
    pub fn auth_json(&self) -> String {
        jwt::auth_json(
            &self.access_token,
            &self.refresh_token,
            &self.id_token,
            &self.account_id,
        )
    }

    /// Writes the document to `home/auth.json` with mode 0600; returns its path.
    pub fn write_to(&self, home: &Path) -> PathBuf {
        let path = home.join("auth.json");
        write_file(&path, &self.auth_json(), 0o600);
        path
    }

    /// The same account (and refresh token) with a new access token expiring `expires_in`
    /// seconds from now, as if it had been refreshed elsewhere.
    pub fn with_new_access_token(&self, expires_in: i64) -> Self {
        let access_token = jwt::access_token(jwt::now_unix() + expires_in, &unique("at-other"));
        register_secret(&access_token);
        ChatgptCreds {
            access_token,
            ..self.clone()
        }
    }

    /// A fake token endpoint for this account whose live refresh token is this one.
    pub fn start_idp(&self) -> FakeIdp {
        FakeIdp::start(
            &self.account_id,
            &self.email,
            &self.plan,
            &self.refresh_token,
        )
    }
}

/// A new temp dir to use as `CODEX_HOME`.
pub fn temp_home() -> TempDir {
    tempfile::tempdir().expect("a temp dir for CODEX_HOME")
}

/// A new home holding `creds` ([`ChatgptCreds::write_to`]), with the path of its auth.json, the
/// file's generation ([`sha256sum`]) and the fake endpoint for the account
/// ([`ChatgptCreds::start_idp`]).
pub fn signed_in_home(creds: &ChatgptCreds) -> (TempDir, PathBuf, String, FakeIdp) {
    let home = temp_home();
    let path = creds.write_to(home.path());
    let before = sha256sum(&path);
    let idp = creds.start_idp();
    (home, path, before, idp)
}

/// Writes `contents` to `path` in place and sets `mode`.
pub fn write_file(path: &Path, contents: &str, mode: u32) {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    file.write_all(contents.as_bytes())
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", path.display()));
}

/// What `sha256sum FILE` prints first: the file's generation.
pub fn sha256sum(path: &Path) -> String {
    let out = Process::spawn("sha256sum", [path]).finish(RUN_TIMEOUT);
    assert!(
        out.status.success(),
        "sha256sum {} failed: {}",
        path.display(),
        out.stderr
    );
    out.stdout
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The permission bits of `path` (not following a symlink), as `0600`.
pub fn file_mode(path: &Path) -> String {
    let meta = fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("cannot stat {}: {e}", path.display()));
    format!("{:04o}", meta.permissions().mode() & 0o7777)
}

// ---------------------------------------------------------------------------------------------
// Running the command, and the record of everything it printed
// ---------------------------------------------------------------------------------------------

/// One finished run, as recorded.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The arguments after `--home DIR`.
    pub args: Vec<String>,
    /// The subcommand (`token`, `inspect`, ...), if one was named.
    pub subcommand: Option<String>,
    /// Everything written to stdout.
    pub stdout: String,
    /// Everything written to stderr.
    pub stderr: String,
}

static RECORDS: Mutex<Vec<Recorded>> = Mutex::new(Vec::new());

/// Every run recorded so far in this process.
pub fn recorded() -> Vec<Recorded> {
    lock(&RECORDS).clone()
}

fn record(args: &[String], stdout: &str, stderr: &str) {
    lock(&RECORDS).push(Recorded {
        args: args.to_vec(),
        subcommand: subcommand_of(args),
        stdout: stdout.to_owned(),
        stderr: stderr.to_owned(),
    });
}

/// The subcommand named by `args`: the first argument that is neither a global option nor the
/// value of one.
pub fn subcommand_of(args: &[String]) -> Option<String> {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--home" | "--lock-timeout" => {
                iter.next();
            }
            a if a.starts_with('-') => {}
            a => return Some(a.to_owned()),
        }
    }
    None
}

/// Every place a secret of `secrets` appears in `records`, except the stdout of `token`, as
/// `secret <fingerprint> in the <stream> of \`codex-store ARGS\``.
pub fn find_leaks(records: &[Recorded], secrets: &[String]) -> Vec<String> {
    let mut leaks = Vec::new();
    for rec in records {
        for secret in secrets {
            let mut streams = Vec::new();
            if rec.stderr.contains(secret.as_str()) {
                streams.push("stderr");
            }
            if rec.subcommand.as_deref() != Some("token") && rec.stdout.contains(secret.as_str()) {
                streams.push("stdout");
            }
            for stream in streams {
                leaks.push(format!(
                    "secret {} in the {stream} of `codex-store {}`",
                    fingerprint(secret),
                    redact(&rec.args.join(" "))
                ));
            }
        }
    }
    leaks
}

/// Panics, naming each leak by fingerprint, run and stream, if any registered secret appears in
/// anything recorded, except in the stdout of `token`.
pub fn assert_no_secret_leaked() {
    let records = recorded();
    let leaks = find_leaks(&records, &secrets());
    assert!(
        leaks.is_empty(),
        "{} secret leak(s) in {} recorded runs:\n  {}",
        leaks.len(),
        records.len(),
        leaks.join("\n  ")
    );
    assert!(
        !records.is_empty(),
        "the leak scan found no recorded run at all: runs are not being recorded"
    );
}

/// The result of a finished run.
#[derive(Clone, Debug)]
pub struct CliOutput {
    /// The arguments after `--home DIR`.
    pub args: Vec<String>,
    /// The exit status.
    pub status: ExitStatus,
    /// Everything written to stdout.
    pub stdout: String,
    /// Everything written to stderr.
    pub stderr: String,
}

impl CliOutput {
    /// The exit code (`None` when killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// A description safe to put in an assertion message: the command, the status, and both
    /// streams with every registered secret redacted.
    pub fn describe(&self) -> String {
        format!(
            "`codex-store {}` exited {}\n--- stdout ---\n{}--- stderr ---\n{}--------------",
            redact(&self.args.join(" ")),
            self.status,
            redact(&self.stdout),
            redact(&self.stderr)
        )
    }

    /// Panics with [`describe`](Self::describe) unless the exit code is `want`.
    #[track_caller]
    pub fn expect_code(&self, want: i32, why: &str) -> &Self {
        assert_eq!(
            self.code(),
            Some(want),
            "{why}: wanted exit code {want}\n{}",
            self.describe()
        );
        self
    }

    /// Panics (showing fingerprints only) unless stdout is exactly `bearer` and one newline.
    #[track_caller]
    pub fn expect_token(&self, bearer: &str, why: &str) -> &Self {
        let printed = self.stdout.strip_suffix('\n').unwrap_or(&self.stdout);
        assert!(
            self.stdout == format!("{bearer}\n"),
            "{why}: stdout should be exactly the bearer (fingerprint {}) and a newline, but it \
             holds {} bytes (fingerprint without the last newline: {})\n{}",
            fingerprint(bearer),
            self.stdout.len(),
            fingerprint(printed),
            self.describe()
        );
        self
    }

    /// Panics with `why` and [`describe`](Self::describe) unless stdout is empty.
    #[track_caller]
    pub fn expect_empty_stdout(&self, why: &str) -> &Self {
        assert!(self.stdout.is_empty(), "{why}\n{}", self.describe());
        self
    }

    /// Panics with `why` and [`describe`](Self::describe) unless stdout contains every one of
    /// `needles`.
    #[track_caller]
    pub fn expect_stdout_contains(&self, needles: &[&str], why: &str) -> &Self {
        self.expect_all_in(&self.stdout, needles, why)
    }

    /// Panics with `why` and [`describe`](Self::describe) unless stderr contains every one of
    /// `needles`.
    #[track_caller]
    pub fn expect_stderr_contains(&self, needles: &[&str], why: &str) -> &Self {
        self.expect_all_in(&self.stderr, needles, why)
    }

    #[track_caller]
    fn expect_all_in(&self, text: &str, needles: &[&str], why: &str) -> &Self {
        assert!(
            needles.iter().all(|n| text.contains(n)),
            "{why}\n{}",
            self.describe()
        );
        self
    }

    /// stdout parsed as JSON; panics (redacted) when it is not.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{}", self.describe()))
    }
}

fn build_command(home: Option<&Path>, args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut command = Command::new(codex_store_bin());
    if let Some(home) = home {
        command.arg("--home").arg(home);
    }
    command.args(args);
    for name in SCRUBBED_ENV {
        command.env_remove(name);
    }
    if !envs
        .iter()
        .any(|(k, _)| *k == "CODEX_REFRESH_TOKEN_URL_OVERRIDE")
    {
        command.env("CODEX_REFRESH_TOKEN_URL_OVERRIDE", DEAD_TOKEN_URL);
    }
    for (name, value) in envs {
        command.env(name, value);
    }
    command
}

/// Runs `codex-store --home HOME ARGS...` to the end with `stdin` (none: an empty stdin) and
/// `envs` added to an environment without [`SCRUBBED_ENV`] (the token URL defaults to
/// [`DEAD_TOKEN_URL`]). Records what it printed. Panics if it runs longer than [`RUN_TIMEOUT`].
pub fn run(home: &Path, args: &[&str], stdin: Option<&str>, envs: &[(&str, &str)]) -> CliOutput {
    spawn(home, args, stdin, envs).finish(RUN_TIMEOUT)
}

/// Runs `codex-store ARGS...` like [`run`] but without `--home`, so that the home comes from
/// `CODEX_HOME` or `HOME` in `envs` (the inherited `CODEX_HOME` is removed all the same).
pub fn run_without_home(args: &[&str], stdin: Option<&str>, envs: &[(&str, &str)]) -> CliOutput {
    Running::start(build_command(None, args, envs), args, stdin).finish(RUN_TIMEOUT)
}

/// Starts `codex-store --home HOME ARGS...` like [`run`], without waiting for it. `stdin` is
/// written and closed at once.
pub fn spawn(home: &Path, args: &[&str], stdin: Option<&str>, envs: &[(&str, &str)]) -> Running {
    Running::start(build_command(Some(home), args, envs), args, stdin)
}

/// A running `codex-store`: a [`Process`] (waiting [`RUN_TIMEOUT`] for each line) whose output is
/// recorded when it ends, finished or dropped (a drop kills it).
pub struct Running {
    process: Process,
    args: Vec<String>,
    recorded: bool,
}

impl Running {
    fn start(command: Command, args: &[&str], stdin: Option<&str>) -> Running {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let name = format!("`codex-store {}`", redact(&args.join(" ")));
        let mut process = Process::spawn_command(name, command).with_event_timeout(RUN_TIMEOUT);
        process.feed_stdin(stdin.unwrap_or_default());
        Running {
            process,
            args,
            recorded: false,
        }
    }

    /// See [`Process::try_status`].
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.process.try_status()
    }

    /// What it wrote to stderr so far (not redacted).
    pub fn stderr(&self) -> String {
        self.process.stderr()
    }

    /// See [`Process::wait_for_stderr_line`].
    pub fn wait_for_stderr_line(&self, needle: &str) -> String {
        self.process.wait_for_stderr_line(needle)
    }

    /// Waits for the process to end ([`Process::finish`]) and records what it printed.
    pub fn finish(mut self, timeout: Duration) -> CliOutput {
        let finished = self.process.finish(timeout);
        self.record(finished)
    }

    fn record(&mut self, finished: Finished) -> CliOutput {
        self.recorded = true;
        record(&self.args, &finished.stdout, &finished.stderr);
        CliOutput {
            args: self.args.clone(),
            status: finished.status,
            stdout: finished.stdout,
            stderr: finished.stderr,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.recorded {
            let killed = self.process.kill();
            self.record(killed);
        }
    }
}

/// A `store-worker hold-lock HOME` child (the `store-worker` binary of this package, whose path
/// integration tests get from `env!("CARGO_BIN_EXE_store-worker")`) that has printed `locked`.
/// Closing its stdin (or dropping it) releases the lock.
pub fn hold_lock(store_worker: &str, home: &Path) -> Process {
    let holder = Process::spawn(store_worker, ["hold-lock".as_ref(), home.as_os_str()]);
    holder.expect_line("locked");
    holder
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(args: &[&str], stdout: &str, stderr: &str) -> Recorded {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        Recorded {
            subcommand: subcommand_of(&args),
            args,
            stdout: stdout.to_owned(),
            stderr: stderr.to_owned(),
        }
    }

    #[test]
    fn the_subcommand_is_the_first_argument_that_is_no_global_option_or_its_value() {
        let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            subcommand_of(&args(&["--lock-timeout", "token", "inspect"])),
            Some("inspect".to_owned()),
            "the value of --lock-timeout was taken for the subcommand"
        );
        assert_eq!(
            subcommand_of(&args(&["-v", "token"])),
            Some("token".to_owned()),
            "-v was not skipped"
        );
        assert_eq!(
            subcommand_of(&args(&["--help"])),
            None,
            "--help is no subcommand"
        );
    }

    #[test]
    fn the_leak_scan_allows_the_bearer_on_the_stdout_of_token_only() {
        let secret = "sk-unit-test-secret".to_owned();
        let secrets = vec![secret.clone()];
        let clean = [
            rec(&["token"], "sk-unit-test-secret\n", ""),
            rec(&["inspect"], "fingerprint only", ""),
        ];
        assert!(
            find_leaks(&clean, &secrets).is_empty(),
            "the stdout of token must be allowed to hold the bearer"
        );
        let leaky = [
            rec(&["token"], "", "error: sk-unit-test-secret"),
            rec(
                &["--lock-timeout", "token", "inspect"],
                "sk-unit-test-secret",
                "",
            ),
            rec(&["-v", "refresh"], "", "debug sk-unit-test-secret"),
        ];
        let leaks = find_leaks(&leaky, &secrets);
        assert_eq!(leaks.len(), 3, "every leak must be found: {leaks:?}");
        assert!(
            leaks
                .iter()
                .all(|l| !l.contains(&secret) && l.contains(&fingerprint(&secret))),
            "leak reports must name the fingerprint, never the secret"
        );
    }

    #[test]
    fn a_registered_jwt_is_redacted_whole_and_its_payload_alone_is_caught_too() {
        let token = jwt::access_token(1_000, "unit-test-redaction");
        register_secret(&token);
        let payload = token.split('.').nth(1).unwrap_or_default().to_owned();
        let shown = redact(&format!("a {token} b {payload} c"));
        assert!(
            !shown.contains(&payload),
            "redact left a registered JWT or its payload in place"
        );
        assert!(
            shown.contains(&fingerprint(&token)) && shown.contains(&fingerprint(&payload)),
            "redact should replace secrets by their fingerprints"
        );
    }

    #[test]
    fn fingerprints_are_the_first_12_hex_digits_of_the_sha256() {
        assert_eq!(
            fingerprint(""),
            "e3b0c44298fc",
            "fingerprint of the empty string"
        );
        assert_eq!(sha256_hex(b"").len(), 64, "a generation has 64 hex digits");
    }
}
