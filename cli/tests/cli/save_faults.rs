//! Fault injection into the save of a refresh (issue 7): the real `codex-store token` command,
//! on credentials whose access token has expired, against the fake token endpoint, with libc
//! calls failing, crashing or pausing at chosen points (the LD_PRELOAD injector of
//! `tests/faults/faults.c`, configured per run through [`Faults`]).
//!
//! Two promises are checked, from the outside only (requests the endpoint saw, exit codes,
//! messages, the file's content, the live refresh token):
//! - when the save cannot happen (directory not writable, no space, no inode), no request is
//!   sent: the refresh token is not spent, auth.json is unchanged, and the error says so;
//! - once the endpoint has answered, the redeemed token is not lost, whatever fails or crashes
//!   afterwards: auth.json holds the live refresh token when the command ends, or the next plain
//!   `codex-store token` run installs it without sending another request.
//!
//! A request that presents a spent refresh token counts as a loss too: the endpoint answers
//! `refresh_token_reused` and may revoke the whole token family.
//!
//! Faults: EACCES on creating files (an unwritable directory), ENOSPC on writing the rotation
//! file or any file (a full disk), ENOSPC on creating files (no inode), EIO on the first fsync
//! after the answer and on every fsync, SIGKILL at the rename and right after the fsync, an
//! in-place write (older Codex) while the save is paused between the fsync and the rename, reads
//! of a half-written auth.json during the recovery of a saved rotation, and two stress runs of
//! 48 refreshes beside a writer rewriting auth.json in place.
//!
//! The only names of the product used here are those of the design note: the rotation-file
//! prefix `.auth.json.codex-store-rotation.` and the lock files. A crash right after the answer
//! arrives but before the rotation file is written may lose the token (the physical limit), so
//! no test asks for more there.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::kit::{
    api_key, assert_no_registered_secret, assert_no_secret_leaked, auth_path, exit, fingerprint,
    read, read_text, redact, register_last_issued, run, sha256sum, signed_in_home, spawn,
    temp_home, write_file, ChatgptCreds, CliOutput, Running, RUN_TIMEOUT,
};
use codex_store_tests::fake_idp::{FakeIdp, Issued};
use codex_store_tests::faults::{Faults, ROTATION_PREFIX};
use codex_store_tests::process::Process;

const URL_ENV: &str = "CODEX_REFRESH_TOKEN_URL_OVERRIDE";
static WRITER: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| crate::kit::helper("inplace-writer"));
/// The lock files of the design note, as an installation that ran Codex 0.171.0 and codex-store
/// before has them: a directory that became unwritable later still holds them.
const LOCK_FILES: [(&str, u32); 3] = [
    ("auth.lock", 0o644),
    ("auth.json.lock", 0o600),
    ("auth.json.refresh.lock", 0o600),
];
/// The bound on waiting for a paused process; it only turns a hang into a failure.
const PAUSE_WAIT: Duration = Duration::from_secs(60);

/// A home signed in with expired credentials, and the fake endpoint of the account.
struct Case {
    home: TempDir,
    path: PathBuf,
    before: String,
    idp: FakeIdp,
}

impl Case {
    fn expired() -> Case {
        let creds = ChatgptCreds::expired();
        let (home, path, before, idp) = signed_in_home(&creds);
        Case {
            home,
            path,
            before,
            idp,
        }
    }

    /// The same, with the lock files already there.
    fn expired_with_lock_files() -> Case {
        let case = Case::expired();
        for (name, mode) in LOCK_FILES {
            write_file(&case.home.path().join(name), "", mode);
        }
        case
    }

    fn dir(&self) -> &Path {
        self.home.path()
    }

    /// Matches every file in the store directory (not the directory itself).
    fn in_home(&self) -> String {
        format!("{}/", self.dir().display())
    }

    /// Matches the store directory itself (its fsync).
    fn the_home(&self) -> String {
        format!("{}$", self.dir().display())
    }

    /// `codex-store token` under `faults`.
    fn token_under(&self, faults: &Faults) -> CliOutput {
        let out = self.spawn_token(faults).finish(RUN_TIMEOUT);
        register_last_issued(&self.idp);
        out
    }

    /// `codex-store token` under `faults`, started and left running (the test can poll its exit
    /// while it drives PAUSE rules).
    fn spawn_token(&self, faults: &Faults) -> Running {
        let url = self.idp.url();
        let mut env = faults.env();
        env.push((URL_ENV.to_owned(), url));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        spawn(self.dir(), &["token"], None, &env)
    }

    /// `codex-store token` under `faults`, whose rule 1 must act (else the run tested nothing).
    fn token_under_fired(&self, faults: &Faults, what: &str) -> CliOutput {
        let out = self.token_under(faults);
        assert_fired(faults, 1, &out, what);
        out
    }

    /// A plain `codex-store token`, without faults.
    fn token(&self) -> CliOutput {
        let url = self.idp.url();
        let out = run(self.dir(), &["token"], None, &[(URL_ENV, url.as_str())]);
        register_last_issued(&self.idp);
        out
    }

    fn issued(&self) -> Issued {
        self.idp
            .last_issued()
            .unwrap_or_else(|| panic!("the endpoint issued no tokens"))
    }

    /// The refresh token in auth.json (`None`: no file, not JSON, no tokens).
    fn refresh_token_on_disk(&self) -> Option<String> {
        document(&self.path)?["tokens"]["refresh_token"]
            .as_str()
            .map(str::to_owned)
    }

    /// What auth.json holds, for messages: its generation and the fingerprint of its refresh
    /// token next to the live one's.
    fn describe_disk(&self) -> String {
        let names: Vec<String> = fs::read_dir(self.dir())
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        format!(
            "auth.json generation {}, its refresh token {}, the live one {}; files: {names:?}",
            sha256sum(&self.path),
            self.refresh_token_on_disk()
                .map(|t| fingerprint(&t))
                .unwrap_or_else(|| "<none>".into()),
            fingerprint(&self.idp.current_refresh_token()),
        )
    }

    /// No request was sent and auth.json is byte for byte what it was.
    #[track_caller]
    fn assert_untouched(&self, out: &CliOutput, faults: &Faults, what: &str) {
        assert_eq!(
            self.idp.requests(),
            0,
            "{what}: the save could not happen, yet a refresh request was sent (the refresh \
             token is spent)\n{}\n{}\n{}",
            out.describe(),
            faults.describe(),
            self.describe_disk()
        );
        assert_eq!(
            sha256sum(&self.path),
            self.before,
            "{what}: auth.json changed although nothing was refreshed\n{}",
            out.describe()
        );
    }

    /// A plain `codex-store token` (`run` names it in messages, `why` says why it must
    /// succeed) exits 0 and prints `access` (`None`: the access token the endpoint issued last,
    /// after the run), the endpoint has read `requests` requests in all, and auth.json holds the
    /// live refresh token. `what` begins every message.
    #[track_caller]
    fn assert_plain_run_installs(
        &self,
        run: &str,
        why: &str,
        access: Option<&str>,
        requests: usize,
        what: &str,
    ) {
        let next = self.token();
        next.expect_code(
            exit::OK,
            &format!(
                "{what}: {run} must succeed: {why} ({})",
                self.describe_disk()
            ),
        );
        let issued_last = self.issued().access_token;
        next.expect_token(
            access.unwrap_or(&issued_last),
            &format!(
                "{what}: {run} must print the access token {}",
                if access.is_some() {
                    "obtained before"
                } else {
                    "it obtained"
                }
            ),
        );
        self.idp.expect_requests(
            requests,
            &format!("{what}: {run} sent the wrong number of requests"),
        );
        assert_eq!(
            self.refresh_token_on_disk(),
            Some(self.idp.current_refresh_token()),
            "{what}: after {run} auth.json must hold the live refresh token; {}",
            self.describe_disk()
        );
    }

    /// Once the faults are gone, a plain run refreshes once and stores the live token: nothing
    /// the failed run left behind is in the way.
    #[track_caller]
    fn assert_store_still_works(&self, what: &str) {
        let requests = self.idp.requests();
        self.assert_plain_run_installs(
            "the plain run after the fault",
            "it refreshes once, nothing the failed run left behind may be in the way",
            None,
            requests + 1,
            what,
        );
    }

    /// The one redeemed token is not lost: after `out`, auth.json holds the live refresh token
    /// (and a success printed the new access token), or `out` failed and the next plain run
    /// installs it, prints the new access token and sends no request.
    #[track_caller]
    fn assert_redeemed_token_kept(&self, out: &CliOutput, faults: &Faults, what: &str) {
        assert_eq!(
            self.idp.requests(),
            1,
            "{what}: exactly one refresh request was expected\n{}\n{}",
            out.describe(),
            faults.describe()
        );
        let issued = self.issued();
        let live = self.idp.current_refresh_token();
        if self.refresh_token_on_disk().as_deref() == Some(live.as_str()) {
            if out.code() == Some(exit::OK) {
                out.expect_token(
                    &issued.access_token,
                    &format!("{what}: a success must print the new access token"),
                );
            }
            eprintln!(
                "{what}: exit {:?}, the live refresh token was in auth.json when it ended",
                out.status
            );
            return;
        }
        assert_ne!(
            out.code(),
            Some(exit::OK),
            "{what}: the command succeeded, but auth.json does not hold the live refresh token \
             ({})\n{}\n{}",
            self.describe_disk(),
            out.describe(),
            faults.describe()
        );
        self.assert_plain_run_installs(
            "the next plain run",
            "the command failed after the token was redeemed, so it installs the saved rotation \
             without another request",
            Some(&issued.access_token),
            1,
            what,
        );
        eprintln!(
            "{what}: exit {:?}, the next plain run installed the live refresh token",
            out.status
        );
    }

    /// Fingerprints of the refresh tokens the endpoint received, in order.
    fn presented(&self) -> Vec<String> {
        self.idp
            .presented_refresh_tokens()
            .iter()
            .map(|t| fingerprint(t))
            .collect()
    }
}

/// `codex-store ARGS` in `home` with `stdin` under `faults`, with `env` added.
fn run_under(
    faults: &Faults,
    home: &Path,
    args: &[&str],
    stdin: Option<&str>,
    env: &[(&str, &str)],
) -> CliOutput {
    let fault_env = faults.env();
    let mut all: Vec<(&str, &str)> = fault_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    all.extend_from_slice(env);
    run(home, args, stdin, &all)
}

/// The whole check of a fault that makes the save impossible: `codex-store token` under
/// `faults` (whose rule 1 must act) sends no request, leaves auth.json untouched, fails naming
/// the store directory and saying that nothing was sent, and once the faults are gone a plain
/// run works; nothing leaked.
#[track_caller]
fn assert_the_save_is_refused_before_sending(case: &Case, faults: &Faults, what: &str) {
    let out = case.token_under_fired(faults, what);
    case.assert_untouched(&out, faults, what);
    assert_refused_before_sending(case, &out, what);
    case.assert_store_still_works(what);
    assert_no_secret_leaked();
}

/// The whole check of a fault after the answer arrived: `out`'s message does not pretend that
/// nothing happened, the one redeemed token is not lost, and nothing leaked.
#[track_caller]
fn assert_the_redeemed_token_survives(case: &Case, out: &CliOutput, faults: &Faults, what: &str) {
    assert_no_false_comfort(out, what);
    case.assert_redeemed_token_kept(out, faults, what);
    assert_no_secret_leaked();
}

/// Panics unless `out` was killed by SIGKILL `when` (a fault rule's KILL).
#[track_caller]
fn assert_killed(out: &CliOutput, what: &str, when: &str) {
    assert_eq!(
        out.status.signal(),
        Some(rustix::process::Signal::KILL.as_raw()),
        "{what}: the command must have died {when}\n{}",
        out.describe()
    );
}

/// auth.json parsed, `None` when missing or not JSON.
fn document(path: &Path) -> Option<Value> {
    let text = fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// Matches every rotation file (the `/` anchors the prefix at the start of the name).
fn rotation_files() -> String {
    format!("/{ROTATION_PREFIX}")
}

/// Whether a message says that no refresh request was sent.
fn says_nothing_was_sent(text: &str) -> bool {
    let text = text.to_lowercase();
    [
        "no refresh request was sent",
        "no request was sent",
        "nothing was sent",
        "not sent",
    ]
    .iter()
    .any(|phrase| text.contains(phrase))
}

/// Rule `rule` of `faults` acted at least once: the test tested something.
#[track_caller]
fn assert_fired(faults: &Faults, rule: usize, out: &CliOutput, what: &str) {
    assert!(
        !faults.fired(rule).is_empty(),
        "{what}: fault rule {rule} never acted, so this run tested nothing\n{}\n{}",
        faults.describe(),
        out.describe()
    );
}

/// A refused save: a non-zero exit whose message names the store directory and says that
/// nothing was sent.
#[track_caller]
fn assert_refused_before_sending(case: &Case, out: &CliOutput, what: &str) {
    assert!(
        out.code().is_some_and(|c| c != exit::OK),
        "{what}: the command must fail (with an exit code)\n{}",
        out.describe()
    );
    out.expect_empty_stdout(&format!("{what}: a failed run must print no token"));
    let home = case.dir().display().to_string();
    assert!(
        out.stderr.contains(&home),
        "{what}: the error must name the path in {home} that could not be written\n{}",
        out.describe()
    );
    assert!(
        says_nothing_was_sent(&out.stderr),
        "{what}: the error must say that no refresh request was sent\n{}",
        out.describe()
    );
}

/// A message after a redeemed token must not pretend that nothing happened.
#[track_caller]
fn assert_no_false_comfort(out: &CliOutput, what: &str) {
    assert!(
        !says_nothing_was_sent(&out.stderr),
        "{what}: a request was sent, but the message says none was\n{}",
        out.describe()
    );
    assert!(
        !out.stderr.to_lowercase().contains("nothing was changed"),
        "{what}: the refresh token was redeemed, but the message says nothing was changed\n{}",
        out.describe()
    );
}

// ---------------------------------------------------------------------------------------------
// The save cannot happen: no request
// ---------------------------------------------------------------------------------------------

#[test]
fn an_unwritable_codex_home_sends_no_request_names_the_path_and_leaves_auth_json_unchanged() {
    let case = Case::expired_with_lock_files();
    // What an unwritable directory refuses: creating a file in it, renaming within it.
    let faults = Faults::new().rule("create,rename", &case.in_home(), "EACCES", "");
    assert_the_save_is_refused_before_sending(
        &case,
        &faults,
        "EACCES on creating files in CODEX_HOME",
    );
}

#[test]
fn an_unwritable_codex_home_without_lock_files_sends_no_request_either() {
    let case = Case::expired();
    let faults = Faults::new().rule("create,rename", &case.in_home(), "EACCES", "");
    let what = "EACCES on creating files in a CODEX_HOME that has no lock files yet";
    let out = case.token_under_fired(&faults, what);
    assert!(
        out.code().is_some_and(|c| c != exit::OK),
        "{what}: the command must fail\n{}",
        out.describe()
    );
    assert!(
        out.stderr.contains(&case.dir().display().to_string()),
        "{what}: the error must name the path that could not be created\n{}",
        out.describe()
    );
    case.assert_untouched(&out, &faults, what);
    case.assert_store_still_works(what);
    assert_no_secret_leaked();
}

#[test]
fn no_space_for_the_rotation_file_sends_no_request_and_says_so() {
    let case = Case::expired();
    let faults = Faults::new().rule("write,fallocate", &rotation_files(), "ENOSPC", "");
    assert_the_save_is_refused_before_sending(
        &case,
        &faults,
        "ENOSPC on filling the rotation file",
    );
}

#[test]
fn a_full_disk_sends_no_request_and_says_so() {
    let case = Case::expired_with_lock_files();
    // Every write and preallocation of a file in CODEX_HOME fails, as on a full disk.
    let faults = Faults::new().rule("write,fallocate", &case.in_home(), "ENOSPC", "");
    assert_the_save_is_refused_before_sending(
        &case,
        &faults,
        "ENOSPC on every write in CODEX_HOME",
    );
}

#[test]
fn no_free_inode_sends_no_request_and_says_so() {
    let case = Case::expired_with_lock_files();
    // No inode: creating a new file fails with ENOSPC; existing files can still be opened.
    let faults = Faults::new().rule("create", &case.in_home(), "ENOSPC", "");
    assert_the_save_is_refused_before_sending(
        &case,
        &faults,
        "ENOSPC on creating files in CODEX_HOME",
    );
}

// ---------------------------------------------------------------------------------------------
// The answer arrived: the redeemed token is not lost
// ---------------------------------------------------------------------------------------------

#[test]
fn eio_on_the_first_fsync_after_the_answer_loses_no_redeemed_token() {
    let case = Case::expired();
    // `doc`: the rotation file already holds the new document, i.e. the answer has arrived (the
    // reservation's fsync, of a file of spaces, does not count).
    let faults = Faults::new().rule("fsync", &rotation_files(), "EIO", "doc,nth=1");
    let what = "EIO on the first fsync of the filled rotation file";
    let out = case.token_under_fired(&faults, what);
    assert_the_redeemed_token_survives(&case, &out, &faults, what);
}

#[test]
fn eio_on_every_fsync_either_sends_nothing_or_keeps_the_redeemed_token_and_says_what_happened() {
    let case = Case::expired();
    let faults = Faults::new()
        .rule("fsync", &case.in_home(), "EIO", "")
        .rule("fsync", &case.the_home(), "EIO", "");
    let what = "EIO on every fsync in CODEX_HOME";
    let out = case.token_under_fired(&faults, what);
    if case.idp.requests() == 0 {
        // The reservation could not be made durable: refusing to send is the right answer.
        case.assert_untouched(&out, &faults, what);
        assert_refused_before_sending(&case, &out, what);
        case.assert_store_still_works(what);
        assert_no_secret_leaked();
    } else {
        assert_the_redeemed_token_survives(&case, &out, &faults, what);
    }
}

#[test]
fn eio_on_every_fsync_after_the_answer_keeps_the_redeemed_token_and_a_success_says_it_is_not_durable(
) {
    let case = Case::expired();
    // Rule 1 fails the first fsync of the filled rotation file and, by acting, arms rules 2 and
    // 3: from then on every fsync in CODEX_HOME, of any file or of the directory, fails.
    let faults = Faults::new()
        .rule("fsync", &rotation_files(), "EIO", "doc")
        .rule("fsync", &case.in_home(), "EIO", "armed")
        .rule("fsync", &case.the_home(), "EIO", "armed");
    let what = "EIO on every fsync after the answer";
    let out = case.token_under_fired(&faults, what);
    if out.code() == Some(exit::OK) {
        // A success despite failed fsyncs must not be silent about them.
        let stderr = out.stderr.to_lowercase();
        assert!(
            ["fsync", "durab", "input/output error", "not synced"]
                .iter()
                .any(|w| stderr.contains(w)),
            "{what}: the command succeeded without saying that the new tokens could not be \
             synced to disk\n{}",
            out.describe()
        );
    }
    assert_the_redeemed_token_survives(&case, &out, &faults, what);
}

#[test]
fn a_crash_at_the_rename_of_the_rotation_file_is_rolled_forward_by_the_next_run_without_a_request()
{
    let case = Case::expired();
    let faults = Faults::new().rule("rename", &rotation_files(), "KILL", "nth=1");
    let what = "SIGKILL at the rename of the rotation file over auth.json";
    let out = case.token_under_fired(&faults, what);
    assert_killed(&out, what, "at the rename");
    assert_eq!(
        case.idp.requests(),
        1,
        "{what}: the crash comes after the one request"
    );
    assert_ne!(
        case.refresh_token_on_disk(),
        Some(case.idp.current_refresh_token()),
        "{what}: the crash came before the rename, yet auth.json already holds the new token"
    );
    case.assert_redeemed_token_kept(&out, &faults, what);
    assert_no_secret_leaked();
}

#[test]
fn a_crash_right_after_the_rotation_file_is_synced_is_rolled_forward_by_the_next_run_without_a_request(
) {
    let case = Case::expired();
    // `after`: the fsync of the filled rotation file completes, then the process dies, before it
    // takes any lock or renames anything.
    let faults = Faults::new().rule("fsync", &rotation_files(), "KILL", "doc,after,nth=1");
    let what = "SIGKILL right after the fsync of the filled rotation file";
    let out = case.token_under_fired(&faults, what);
    assert_killed(&out, what, "after the fsync");
    case.assert_redeemed_token_kept(&out, &faults, what);
    assert_no_secret_leaked();
}

// ---------------------------------------------------------------------------------------------
// A writer that ignores the locks
// ---------------------------------------------------------------------------------------------

/// What older Codex installations do: open with truncate, write, no rename, no fsync, no lock.
fn write_in_place_bytes(path: &Path, bytes: &[u8]) {
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open {} in place: {e}", path.display()));
    file.write_all(bytes)
        .unwrap_or_else(|e| panic!("cannot write {} in place: {e}", path.display()));
}

/// [`write_in_place_bytes`] of a document, pretty-printed.
fn write_in_place(path: &Path, doc: &Value) {
    let bytes = serde_json::to_vec_pretty(doc).expect("a JSON value always serializes");
    write_in_place_bytes(path, &bytes);
}

#[test]
fn an_in_place_write_between_the_rotation_files_fsync_and_the_rename_is_merged_with_the_new_tokens()
{
    let case = Case::expired();
    // `after`: the fsync of the filled rotation file completes, then the process waits for the
    // test, before it takes any lock or re-reads auth.json.
    let faults = Faults::new().rule("fsync", &rotation_files(), "PAUSE", "doc,after,nth=1");
    let mut child = case.spawn_token(&faults);
    let what = "an in-place write while the save is paused after the rotation file's fsync";
    let paused = faults.wait_paused(1, 1, PAUSE_WAIT, || child.try_status().is_none());
    register_last_issued(&case.idp);
    assert!(
        paused,
        "{what}: the save never reached the fsync of a filled rotation file (exit: {:?}, \
         requests: {})\nstderr:\n{}\n{}",
        child.try_status(),
        case.idp.requests(),
        redact(&child.stderr()),
        faults.describe()
    );
    let mut doc = document(&case.path).expect("auth.json is JSON while the save is paused");
    assert_ne!(
        doc["tokens"]["refresh_token"].as_str(),
        Some(case.idp.current_refresh_token().as_str()),
        "{what}: the paused save must not have installed the new token yet"
    );
    let note = "written in place while codex-store was saving";
    doc["older_codex_setting"] = Value::from(note);
    write_in_place(&case.path, &doc);
    faults.release(1, 1);
    let out = child.finish(RUN_TIMEOUT);
    let (status, lines, stderr) = (
        out.status,
        out.stdout.lines().collect::<Vec<_>>(),
        out.stderr,
    );
    register_last_issued(&case.idp);
    assert_no_registered_secret(&format!("{what}: stderr"), &stderr);

    assert!(
        status.success(),
        "{what}: the save must merge and succeed, but it exited {status}\nstderr:\n{}",
        redact(&stderr)
    );
    let issued = case.issued();
    assert!(
        lines == [issued.access_token.as_str()],
        "{what}: the command must print exactly the new access token ({}), printed {:?}",
        fingerprint(&issued.access_token),
        lines.iter().map(|l| fingerprint(l)).collect::<Vec<_>>()
    );
    assert_eq!(
        case.idp.requests(),
        1,
        "{what}: only the one refresh request may be sent"
    );
    let after = document(&case.path).expect("auth.json is JSON after the save");
    assert_eq!(
        after["tokens"]["refresh_token"].as_str(),
        Some(case.idp.current_refresh_token().as_str()),
        "{what}: auth.json must hold the live refresh token; {}",
        case.describe_disk()
    );
    assert_eq!(
        after["older_codex_setting"].as_str(),
        Some(note),
        "{what}: the in-place writer's change must survive the save (merged, not overwritten)"
    );
}

/// An in-place writer stalled half way: it has read auth.json and truncated it, through one open
/// file, and writes the bytes back through that same file later (so that it never writes stale
/// bytes into a file renamed in meanwhile).
struct StalledWriter {
    file: fs::File,
    bytes: Vec<u8>,
}

impl StalledWriter {
    fn truncate(path: &Path) -> StalledWriter {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("cannot open {} in place: {e}", path.display()));
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut bytes)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        file.set_len(0)
            .unwrap_or_else(|e| panic!("cannot truncate {}: {e}", path.display()));
        StalledWriter { file, bytes }
    }

    fn finish(self) {
        use std::os::unix::fs::FileExt;
        self.file
            .write_all_at(&self.bytes, 0)
            .unwrap_or_else(|e| panic!("cannot write auth.json back in place: {e}"));
    }
}

/// One run after a crash left a saved rotation: the first `torn` reads of auth.json after each
/// read of a rotation file find it empty (an in-place writer stalled half way), the others find
/// it whole. Returns the run, and how many reads were torn.
fn run_with_torn_reads_after_rotation_reads(
    case: &Case,
    torn: usize,
    what: &str,
) -> (CliOutput, usize) {
    // Rule 1 only logs each open of a rotation file that holds a document (the recovery reading
    // it); rule 2 stops the process before each open of auth.json.
    let faults = Faults::new()
        .rule("open", &rotation_files(), "MARK", "doc")
        .rule("open", "/auth.json$", "PAUSE", "");
    let mut child = case.spawn_token(&faults);
    let (mut reads, mut torn_reads, mut stalled) = (0usize, 0usize, None::<StalledWriter>);
    while faults.wait_paused(2, reads + 1, PAUSE_WAIT, || child.try_status().is_none()) {
        reads += 1;
        let log = faults.log();
        let this = format!("fired rule=2 n={reads} ");
        let at = log
            .iter()
            .position(|line| line.starts_with(&this))
            .unwrap_or_else(|| {
                panic!(
                    "{what}: pause {reads} is not in the log\n{}",
                    faults.describe()
                )
            });
        // How many auth.json reads since the last rotation-file read, this one included.
        let since_rotation_read = log[..at]
            .iter()
            .rev()
            .position(|line| line.starts_with("fired rule=1 "))
            .map(|n| n + 1);
        if since_rotation_read.is_some_and(|n| n <= torn) {
            torn_reads += 1;
            if stalled.is_none() {
                stalled = Some(StalledWriter::truncate(&case.path));
            }
        } else if let Some(writer) = stalled.take() {
            writer.finish();
        }
        faults.release(2, reads);
    }
    let out = child.finish(RUN_TIMEOUT);
    if let Some(writer) = stalled.take() {
        writer.finish();
    }
    register_last_issued(&case.idp);
    (out, torn_reads)
}

/// How many torn reads in a row the test below tries, one case each: enough to outlast any
/// brief re-read of a half-written file and to reach the read after it.
const MAX_TORN_READS: usize = 12;

#[test]
fn a_saved_rotation_is_never_bypassed_when_auth_json_reads_as_half_written_during_the_recovery() {
    let mut torn_somewhere = false;
    for torn in 1..=MAX_TORN_READS {
        let case = Case::expired();
        let crash = Faults::new().rule("rename", &rotation_files(), "KILL", "nth=1");
        let what = format!(
            "a rotation saved by a crashed run, recovered while an in-place writer leaves \
             auth.json empty for {torn} read(s)"
        );
        let out = case.token_under_fired(&crash, &what);
        assert_killed(&out, &what, "at the rename (the first run)");
        let issued = case.issued();

        let (run, torn_reads) = run_with_torn_reads_after_rotation_reads(&case, torn, &what);
        let (status, lines, stderr) = (
            run.status,
            run.stdout.lines().collect::<Vec<_>>(),
            run.stderr,
        );
        torn_somewhere |= torn_reads > 0;
        assert_no_registered_secret(&format!("{what}: stderr"), &stderr);
        assert_eq!(
            case.idp.requests(),
            1,
            "{what}: the run redeemed the refresh token in auth.json although the saved rotation \
             had already spent it (presented: {:?}; exit {status}, printed {} lines)\nstderr:\n{}",
            case.presented(),
            lines.len(),
            redact(&stderr)
        );
        if status.success() {
            assert!(
                lines == [issued.access_token.as_str()],
                "{what}: a success must print the saved rotation's access token"
            );
        }
        case.assert_plain_run_installs(
            "a plain run afterwards",
            "it installs the saved rotation, prints its access token and sends no request",
            Some(&issued.access_token),
            1,
            &what,
        );
    }
    assert!(
        torn_somewhere,
        "no run ever read a rotation file and then auth.json, so nothing was torn: the recovery \
         of a saved rotation was not exercised"
    );
    assert_no_secret_leaked();
}

/// Reads auth.json's refresh token, retrying while an in-place writer has it truncated or half
/// written.
fn refresh_token_settled(case: &Case) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(doc) = document(&case.path) {
            return doc["tokens"]["refresh_token"].as_str().map(str::to_owned);
        }
        if Instant::now() >= deadline {
            return None;
        }
        // Polls the file until the writer's current rewrite is whole; bounded.
        std::thread::sleep(Duration::from_millis(1));
    }
}

const STRESS_RUNS: usize = 48;

/// The stress tests run one at a time: a tight writer takes a core, and the other test's
/// `min_rotations` should not depend on sharing the machine with it.
static ONE_STRESS_AT_A_TIME: Mutex<()> = Mutex::new(());

/// `STRESS_RUNS` plain `codex-store token` runs, one after another, each on an expired access
/// token (the endpoint issues expired ones), while an `inplace-writer` rewrites auth.json in
/// place every `period_us` microseconds (0: a tight loop). No rotation may be lost: the endpoint
/// never sees a dead refresh token, a run that succeeds leaves the live one in auth.json, and
/// once the writer stops a plain run installs whatever is pending. At least `min_rotations`
/// refreshes must have happened, or the stress tested little.
fn stress_beside_an_in_place_writer(period_us: u64, min_rotations: usize) {
    let _alone = ONE_STRESS_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let case = Case::expired();
    case.idp.set_access_token_lifetime(-3600);
    let period = period_us.to_string();
    let mut writer = Process::spawn(
        WRITER.as_str(),
        [
            case.path.as_os_str(),
            "older_codex_counter".as_ref(),
            period.as_ref(),
        ],
    );
    writer.expect_line("ready");

    let (mut ok, mut failed, mut pending_after) = (0usize, Vec::new(), 0usize);
    for run_no in 1..=STRESS_RUNS {
        let requests_before = case.idp.requests();
        let out = case.token();
        let what = format!("stress run {run_no}/{STRESS_RUNS} (writer period {period_us} us)");
        // A request presenting a dead refresh token means a rotation was lost from the file
        // and not recovered before that request.
        assert_eq!(
            case.idp.requests(),
            case.idp.successes(),
            "{what}: the endpoint refused a refresh token: a rotation was lost (presented: \
             {:?})\n{}",
            case.presented(),
            out.describe()
        );
        let live = case.idp.current_refresh_token();
        let on_disk = refresh_token_settled(&case);
        if out.code() == Some(exit::OK) {
            ok += 1;
            out.expect_token(
                &case.issued().access_token,
                &format!("{what}: a success must print the newest access token"),
            );
            assert_eq!(
                on_disk.as_deref(),
                Some(live.as_str()),
                "{what}: the command succeeded, but auth.json does not hold the live refresh \
                 token; {}",
                case.describe_disk()
            );
        } else {
            if case.idp.requests() > requests_before {
                assert_no_false_comfort(&out, &what);
            }
            failed.push(format!("run {run_no}: {}", out.describe()));
        }
        if on_disk.as_deref() != Some(live.as_str()) {
            // Allowed only if a later run installs it: checked by the requests == successes
            // assertion of the next runs and by the final run.
            pending_after += 1;
        }
    }
    writer.close_stdin();
    let summary = writer.line("the writer's summary");
    writer.exit_successfully();

    let last = case.token();
    last.expect_code(
        exit::OK,
        "once the writer stopped, a plain run must succeed (installing any saved rotation)",
    );
    assert_eq!(
        case.idp.requests(),
        case.idp.successes(),
        "the final run presented a dead refresh token: a rotation was lost (presented: {:?})",
        case.presented()
    );
    assert_eq!(
        case.refresh_token_on_disk(),
        Some(case.idp.current_refresh_token()),
        "after the final run auth.json must hold the live refresh token; {}",
        case.describe_disk()
    );
    eprintln!(
        "{STRESS_RUNS} runs beside a writer rewriting every {period_us} us ({summary}): {ok} \
         succeeded, {} failed, {pending_after} left the rotation to a later run; {} rotations",
        failed.len(),
        case.idp.successes()
    );
    assert!(
        case.idp.successes() >= min_rotations,
        "only {} rotations in {STRESS_RUNS} runs beside the writer (want at least \
         {min_rotations}), so the stress tested little; failures:\n{}",
        case.idp.successes(),
        failed.join("\n")
    );
    assert_no_secret_leaked();
}

#[test]
fn forty_eight_refreshes_beside_a_writer_rewriting_in_place_in_a_tight_loop_never_lose_a_rotation()
{
    // The writer changes the file every few dozen microseconds: a save may never find it still
    // for long enough to install, so only the first rotation is required; all of them must be
    // kept (pending in a rotation file until the writer stops).
    stress_beside_an_in_place_writer(0, 1);
}

#[test]
fn forty_eight_refreshes_beside_a_writer_rewriting_in_place_every_millisecond_never_lose_a_rotation(
) {
    // A slower writer leaves room to install: most runs should rotate (a quarter is asked, so
    // that a slow machine does not fail the test; the point is that none is lost).
    stress_beside_an_in_place_writer(1000, STRESS_RUNS / 4);
}

#[test]
fn a_failed_directory_fsync_after_the_rename_is_a_warning_and_the_new_file_stays_in_place() {
    let home = temp_home();
    let key = api_key();
    let anchored = format!("{}$", home.path().display());
    let faults = Faults::new().rule("fsync", &anchored, "EIO", "");
    let out = run_under(
        &faults,
        home.path(),
        &["login", "--with-api-key"],
        Some(&format!("{key}\n")),
        &[],
    );
    assert_fired(&faults, 1, &out, "EIO on the directory fsync");
    out.expect_code(0, "login whose directory fsync failed after the rename")
        .expect_stdout_contains(&["Stored an API key"], "the key is in place: say so")
        .expect_stderr_contains(
            &["warning", "could not be fsynced"],
            "the missing durability should be a warning, not a failure",
        );
    let text = read_text(&auth_path(home.path()));
    assert!(text.contains(&key), "the new file is not in place");
}

#[test]
fn a_bind_mounted_auth_json_that_cannot_be_renamed_over_is_written_in_place_and_readers_never_see_it_half_written(
) {
    let case = Case::expired();
    // A single-file bind mount: every rename over auth.json fails with EBUSY.
    let faults = Faults::new().rule("rename", "/auth.json$", "EBUSY", "");
    let store = codex_store::Store::open(case.dir()).expect("open the store");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = std::thread::spawn({
        let store = store.clone();
        let stop = stop.clone();
        move || {
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Err(e) = store.load() {
                    return Err(format!("a reader saw a half-written auth.json: {e}"));
                }
                reads += 1;
            }
            Ok(reads)
        }
    });
    let out = case.token_under(&faults);
    for n in 0..10 {
        let key = format!("sk-bind-mount-{n}");
        run_under(
            &faults,
            case.dir(),
            &["login", "--with-api-key"],
            Some(&format!("{key}\n")),
            &[],
        )
        .expect_code(exit::OK, "login on a bind-mounted auth.json");
        assert!(
            read_text(&case.path).contains(&key),
            "login {n} did not write the bind-mounted file"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader
        .join()
        .expect("the reader panicked")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(reads > 0, "the reader never read");
    assert_fired(&faults, 1, &out, "EBUSY on the rename over auth.json");
    out.expect_code(exit::OK, "token on a bind-mounted auth.json");
    assert!(
        !fs::symlink_metadata(&case.path)
            .expect("auth.json is gone")
            .file_type()
            .is_symlink(),
        "auth.json is no longer a regular file"
    );
    case.idp.expect_requests(1, "more than one refresh request");
}

#[test]
fn a_crash_half_way_through_an_in_place_install_is_finished_by_the_next_run_without_a_request() {
    let case = Case::expired();
    // The rename fails as on a bind mount; the process dies right after truncating auth.json.
    let faults = Faults::new()
        .rule("rename", "/auth.json$", "EBUSY", "")
        .rule("truncate", "/auth.json$", "KILL", "after");
    let out = case.token_under(&faults);
    assert_fired(&faults, 2, &out, "KILL after truncating auth.json in place");
    assert_eq!(
        read(&case.path).len(),
        0,
        "the crash did not leave auth.json cut short, so this test tests nothing"
    );
    case.assert_plain_run_installs(
        "the run after the crash",
        "it finishes the interrupted install without a request",
        None,
        1,
        "KILL half way through an in-place install",
    );
}
