//! `codex-store` and the store's lock held by another process: the one-time "waiting" line on
//! stderr, finishing as soon as the holder lets go, exit 5 after `--lock-timeout`, and adopting
//! what another writer stored while we waited. The holder is `store-worker hold-lock`; every
//! step waits for an event (a line), never for time to pass.

use std::path::Path;

use crate::kit::{
    api_key, api_key_home, assert_no_secret_leaked, auth_path, exit, hold_lock,
    register_last_issued, run, sha256sum, signed_in_home, spawn, temp_home, write_file,
    ChatgptCreds, CliOutput, RUN_TIMEOUT,
};
use codex_store_tests::fake_idp::FakeIdp;
use codex_store_tests::process::Process;

static WORKER: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| crate::kit::helper("store-worker"));
const URL_ENV: &str = "CODEX_REFRESH_TOKEN_URL_OVERRIDE";
const WAIT_LINE: &str = "codex-store: waiting for another process that holds the lock";

/// The lock a refreshing command (`token`, `refresh`) waits for first: codex-store's own
/// single-flight lock, which the holder has, as a process mid-refresh does.
fn lock_path(home: &Path) -> String {
    home.join("auth.json.refresh.lock").display().to_string()
}

fn wait_lines(out: &CliOutput) -> usize {
    out.stderr.lines().filter(|l| l.contains(WAIT_LINE)).count()
}

/// Panics unless `out` printed the waiting line exactly once.
#[track_caller]
fn assert_waited_once(out: &CliOutput) {
    assert_eq!(
        wait_lines(out),
        1,
        "the waiting line must be printed exactly once\n{}",
        out.describe()
    );
}

/// Lets go of the lock `holder` holds and waits until it says so.
fn release(mut holder: Process) {
    holder.close_stdin();
    holder.expect_line("released");
}

#[test]
fn token_says_once_that_it_waits_for_the_lock_then_refreshes_as_soon_as_the_holder_lets_go() {
    let Waited {
        out,
        idp,
        home: _home,
        ..
    } = while_waiting(&["--lock-timeout", "60s", "token"], |home, idp, line| {
        assert_eq!(
            line,
            format!("{WAIT_LINE} {}", lock_path(home)),
            "the waiting line should name the lock file"
        );
        idp.expect_requests(
            0,
            "a refresh request was sent while another process held the lock",
        );
    });
    let issued = idp
        .last_issued()
        .unwrap_or_else(|| panic!("the endpoint issued nothing\n{}", out.describe()));
    out.expect_code(exit::OK, "token after the holder let go")
        .expect_token(&issued.access_token, "token after waiting for the lock");
    assert_waited_once(&out);
    idp.expect_requests(1, "one refresh request was expected");
    assert_no_secret_leaked();
}

#[test]
fn login_and_refresh_with_an_api_key_also_wait_for_the_lock_and_say_so_once() {
    let (home, _) = api_key_home(&api_key());
    for (args, stdin) in [
        (&["--lock-timeout", "60s", "refresh"][..], None),
        (
            &["--lock-timeout", "60s", "login", "--with-api-key"][..],
            Some(api_key()),
        ),
    ] {
        let holder = hold_lock(&WORKER, home.path());
        let waiter = spawn(home.path(), args, stdin.as_deref(), &[]);
        waiter.wait_for_stderr_line(WAIT_LINE);
        release(holder);
        let out = waiter.finish(RUN_TIMEOUT);
        out.expect_code(exit::OK, "a command that waited for the lock");
        assert_waited_once(&out);
    }
    assert_no_secret_leaked();
}

#[test]
fn token_gives_up_after_the_lock_timeout_with_exit_5_naming_the_refresh_lock_and_sends_nothing() {
    let creds = ChatgptCreds::expired();
    let (home, path, before, idp) = signed_in_home(&creds);
    let url = idp.url();
    let _holder = hold_lock(&WORKER, home.path());
    let by_flag = run(
        home.path(),
        &["--lock-timeout", "300ms", "token"],
        None,
        &[(URL_ENV, url.as_str())],
    );
    let by_env = run(
        home.path(),
        &["token"],
        None,
        &[
            (URL_ENV, url.as_str()),
            ("CODEX_STORE_LOCK_TIMEOUT", "300ms"),
        ],
    );
    for out in [&by_flag, &by_env] {
        out.expect_code(
            exit::LOCK_TIMEOUT,
            "token while another process holds the lock",
        );
        out.expect_empty_stdout("a timed-out token printed on stdout");
        out.expect_stderr_contains(
            &["auth.json.refresh.lock", "--lock-timeout"],
            "the message should name auth.json.refresh.lock and suggest --lock-timeout",
        );
        assert_eq!(
            wait_lines(out),
            0,
            "a 300ms wait must not print the waiting line (it comes after 1s)\n{}",
            out.describe()
        );
    }
    idp.expect_requests(0, "nothing may be sent without the lock");
    assert_eq!(sha256sum(&path), before, "a lock timeout changed auth.json");
    assert_no_secret_leaked();
}

#[test]
fn refresh_and_logout_exit_5_on_a_lock_timeout_and_leave_the_file_in_place() {
    let creds = ChatgptCreds::fresh();
    let (home, path, before, idp) = signed_in_home(&creds);
    let url = idp.url();
    let _holder = hold_lock(&WORKER, home.path());
    // A refresh waits for the refresh lock; a logout for Codex's `auth.lock`, the first of the
    // two write locks.
    for (args, lock) in [
        (
            &["--lock-timeout", "200ms", "refresh"][..],
            "auth.json.refresh.lock",
        ),
        (
            &["--lock-timeout", "200ms", "refresh", "--json"][..],
            "auth.json.refresh.lock",
        ),
        (&["--lock-timeout", "200ms", "logout"][..], "auth.lock"),
    ] {
        let out = run(home.path(), args, None, &[(URL_ENV, url.as_str())]);
        out.expect_code(exit::LOCK_TIMEOUT, "a locked store");
        out.expect_stderr_contains(&[lock], "the message should name the lock waited for");
    }
    assert_eq!(sha256sum(&path), before, "a lock timeout changed auth.json");
    idp.expect_requests(0, "nothing may be sent without the lock");
    assert_no_secret_leaked();
}

#[test]
fn token_with_a_valid_token_does_not_need_the_lock_at_all() {
    let key = api_key();
    let (home, _) = api_key_home(&key);
    let _holder = hold_lock(&WORKER, home.path());
    let out = run(
        home.path(),
        &["--lock-timeout", "200ms", "token"],
        None,
        &[],
    );
    out.expect_code(exit::OK, "token of an API key while the lock is held")
        .expect_token(&key, "token of an API key while the lock is held");
    assert_no_secret_leaked();
}

#[test]
fn refresh_adopts_the_tokens_another_writer_stored_while_it_waited_for_the_lock() {
    let creds = ChatgptCreds::fresh();
    let (home, path, before, idp) = signed_in_home(&creds);
    let url = idp.url();
    let holder = hold_lock(&WORKER, home.path());

    let waiter = spawn(
        home.path(),
        &["--lock-timeout", "60s", "refresh"],
        None,
        &[(URL_ENV, url.as_str())],
    );
    // It has read the file and is blocked on the lock: now a writer that ignores the lock (an
    // older Codex writing in place) stores tokens refreshed elsewhere for the same account.
    waiter.wait_for_stderr_line(WAIT_LINE);
    let newer = creds.with_new_access_token(3600);
    write_file(&path, newer.auth_json(), 0o600);
    let written = sha256sum(&path);
    release(holder);

    let out = waiter.finish(RUN_TIMEOUT);
    register_last_issued(&idp);
    out.expect_code(exit::OK, "refresh after another writer stored new tokens");
    assert!(
        out.stdout.starts_with("adopted from disk"),
        "refresh should adopt what the other writer stored\n{}",
        out.describe()
    );
    out.expect_stdout_contains(
        &[
            &format!("generation before  {before}"),
            &format!("generation after   {written}"),
        ],
        &format!(
            "refresh should show the generation it read ({before}) and the adopted one ({written})"
        ),
    );
    idp.expect_requests(0, "adopting must not send a request");
    assert_eq!(
        sha256sum(&path),
        written,
        "adopting must not rewrite the file"
    );
    assert_no_secret_leaked();
}

/// What [`while_waiting`] leaves: how the command ended, the endpoint, the home, and what
/// `meanwhile` returned.
struct Waited<T> {
    out: CliOutput,
    idp: FakeIdp,
    home: tempfile::TempDir,
    meanwhile: T,
}

/// Spawns `codex-store ARGS` on expired credentials while a child holds the lock, waits until
/// it says it is waiting, lets `meanwhile` look at the home, the endpoint and that line, or
/// change auth.json as a writer ignoring the lock would, then lets go of the lock and waits for
/// the command to end.
fn while_waiting<T>(
    args: &[&str],
    meanwhile: impl FnOnce(&Path, &FakeIdp, &str) -> T,
) -> Waited<T> {
    let home = temp_home();
    let creds = ChatgptCreds::expired();
    creds.write_to(home.path());
    let idp = creds.start_idp();
    let url = idp.url();
    let holder = hold_lock(&WORKER, home.path());
    let waiter = spawn(home.path(), args, None, &[(URL_ENV, url.as_str())]);
    let line = waiter.wait_for_stderr_line(WAIT_LINE);
    let meanwhile = meanwhile(home.path(), &idp, &line);
    release(holder);
    let out = waiter.finish(RUN_TIMEOUT);
    register_last_issued(&idp);
    Waited {
        out,
        idp,
        home,
        meanwhile,
    }
}

#[test]
fn token_exits_3_when_the_credentials_were_removed_while_it_waited_for_the_lock() {
    let Waited { out, idp, home, .. } =
        while_waiting(&["--lock-timeout", "60s", "token"], |home, _, _| {
            std::fs::remove_file(auth_path(home)).expect("remove auth.json");
        });
    out.expect_code(exit::SIGN_IN_REQUIRED, "token after a logout elsewhere");
    assert!(
        out.stderr.contains("signed out") && out.stdout.is_empty(),
        "token should say it was signed out, and print no token\n{}",
        out.describe()
    );
    idp.expect_requests(0, "a signed-out token must not refresh");
    assert!(
        !auth_path(home.path()).exists(),
        "token recreated auth.json after a logout"
    );
    assert_no_secret_leaked();
}

#[test]
fn token_and_refresh_exit_3_when_another_account_signed_in_while_they_waited_and_keep_its_file() {
    for args in [
        &["--lock-timeout", "60s", "token"][..],
        &["--lock-timeout", "60s", "refresh"][..],
    ] {
        let other = ChatgptCreds::fresh();
        let Waited {
            out,
            idp,
            home,
            meanwhile: written,
        } = while_waiting(args, |home, _, _| sha256sum(&other.write_to(home)));
        out.expect_code(
            exit::SIGN_IN_REQUIRED,
            "another account signed in meanwhile",
        );
        out.expect_stderr_contains(
            &["another account", &other.account_id],
            &format!(
                "the message should say another account ({}) signed in",
                other.account_id
            ),
        );
        out.expect_empty_stdout("no token of either account may be printed");
        idp.expect_requests(0, "the old account's token must not be refreshed");
        assert_eq!(
            sha256sum(&auth_path(home.path())),
            written,
            "the other account's auth.json must be left as it was written"
        );
    }
    assert_no_secret_leaked();
}

#[test]
fn a_bad_lock_timeout_is_a_usage_error_from_the_flag_and_from_the_environment_alike() {
    let (home, path) = api_key_home(&api_key());
    let by_flag = run(
        home.path(),
        &["--lock-timeout", "soon", "logout"],
        None,
        &[],
    );
    let by_env = run(
        home.path(),
        &["logout"],
        None,
        &[("CODEX_STORE_LOCK_TIMEOUT", "soon")],
    );
    for (out, what) in [
        (&by_flag, "--lock-timeout soon"),
        (&by_env, "CODEX_STORE_LOCK_TIMEOUT=soon"),
    ] {
        out.expect_code(exit::USAGE, what)
            .expect_stderr_contains(&["soon"], "the message should quote the bad value");
    }
    by_env.expect_stderr_contains(
        &["CODEX_STORE_LOCK_TIMEOUT"],
        "the message should name the variable",
    );
    assert!(
        path.exists(),
        "a command with a bad lock timeout went on and logged out"
    );
}

#[test]
fn the_lock_timeout_message_gives_one_remedy_and_a_readable_wait() {
    let creds = ChatgptCreds::fresh();
    let (home, _path, _before, _idp) = signed_in_home(&creds);
    let _holder = hold_lock(&WORKER, home.path());
    let out = run(
        home.path(),
        &["--lock-timeout", "300ms", "logout"],
        None,
        &[],
    );
    out.expect_code(exit::LOCK_TIMEOUT, "logout while the lock is held")
        .expect_stderr_contains(
            &["CODEX_STORE_LOCK_TIMEOUT", "--lock-timeout", "0.3 s"],
            "the message should name both ways to wait longer and the wait in seconds",
        );
    // Every error has its hint line (issue 19); the remedy is still said once: the hint names
    // where to see the holder, not a second way to wait.
    let hints: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("hint:"))
        .collect();
    assert!(
        hints.len() == 1 && hints[0].contains("codex-store inspect"),
        "the lock timeout must have one hint line, pointing at inspect:\n{}",
        out.describe()
    );
    assert_eq!(
        out.stderr.matches("--lock-timeout").count(),
        1,
        "the remedy (wait longer with --lock-timeout) must be said once:\n{}",
        out.describe()
    );
}
