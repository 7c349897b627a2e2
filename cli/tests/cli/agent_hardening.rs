//! `codex-store agent` when its surroundings misbehave (issue 17, items 8, 9, 10 and 15): a storm
//! of touches of auth.json, the home removed and re-created under it, a sign-in after it went
//! idle, and a fleet refusal record holding terminal escapes and line breaks.
//!
//! Every test runs the real binary on a temporary home (and a real etcd where the fleet is
//! involved). Orders are made by waiting for the agent's event lines, for files and for process
//! exits (each wait is bounded, to turn a hang into a failure), never by sleeping.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::kit::{exit, fingerprint, run, spawn, ChatgptCreds, Running};
use codex_store_tests::codex_sim::refresh_token_on_disk;
use codex_store_tests::etcd::EtcdCluster;
use codex_store_tests::process::Process;
use serde_json::json;

const URL_ENV: &str = "CODEX_REFRESH_TOKEN_URL_OVERRIDE";
/// The agents' lead: just above Codex's 5 minutes.
const LEAD: &str = "310";
const LEAD_SECS: i64 = 310;
/// The bound on any one wait; it only turns a hang into a failure.
const WAIT: Duration = Duration::from_secs(30);
/// The bound on the agent's exit after SIGTERM.
const STOP: Duration = Duration::from_secs(5);
/// How long the toucher touches auth.json.
const STORM: Duration = Duration::from_secs(3);

fn start_agent(home: &Path, url: &str, extra: &[&str]) -> Running {
    let mut args = vec!["agent", "--lead", LEAD];
    args.extend_from_slice(extra);
    let agent = spawn(home, &args, None, &[(URL_ENV, url)]);
    agent.wait_for_stderr_line("started");
    agent
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("cannot run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// SIGTERM, and the agent must exit 0 within [`STOP`]; returns its stderr.
fn stop(agent: Running) -> String {
    signal(agent.id(), "TERM");
    let out = agent.finish(STOP);
    out.expect_code(exit::OK, "the agent did not stop cleanly");
    out.stderr
}

/// `codex-store inspect --json` of `home`.
fn inspect(home: &Path) -> serde_json::Value {
    let out = run(home, &["inspect", "--json"], None, &[]);
    out.expect_code(exit::OK, "inspect failed");
    out.json()
}

/// Waits until `inspect` shows the agent in `state`.
fn wait_for_state(home: &Path, state: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let report = inspect(home);
        if report["agent"]["state"] == state {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not settle into {state} within {WAIT:?}: {report}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The CPU time (user + system) process `pid` used so far, from `/proc/<pid>/stat`, in clock
/// ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/stat: {e}"));
    // The fields after the command name (which may hold spaces, inside parentheses): state is
    // field 3, utime 14 and stime 15.
    let after = &stat[stat.rfind(')').expect("a command name in parentheses") + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    let field = |n: usize| -> u64 {
        fields[n - 3]
            .parse()
            .unwrap_or_else(|e| panic!("field {n} of /proc/{pid}/stat is not a number: {e}"))
    };
    field(14) + field(15)
}

/// A watch on `dir` counting the renames onto one name: how often the agent replaced its status
/// file (it writes it beside and renames it over, so each write is one `IN_MOVED_TO`).
struct RenameCounter {
    fd: rustix::fd::OwnedFd,
}

impl RenameCounter {
    fn new(dir: &Path) -> RenameCounter {
        use rustix::fs::inotify;
        let fd = inotify::init(inotify::CreateFlags::NONBLOCK | inotify::CreateFlags::CLOEXEC)
            .expect("cannot create an inotify instance");
        inotify::add_watch(&fd, dir, inotify::WatchFlags::MOVED_TO).expect("cannot watch the home");
        RenameCounter { fd }
    }

    /// The renames onto `name` since the last call; `None` when the kernel's queue overflowed
    /// (more than it holds, thousands).
    fn take(&self, name: &str) -> Option<usize> {
        use rustix::fs::inotify;
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 64 * 1024];
        let mut reader = inotify::Reader::new(&self.fd, &mut buf);
        let mut count = 0;
        loop {
            match reader.next() {
                Ok(event) => {
                    if event.events().contains(inotify::ReadFlags::QUEUE_OVERFLOW) {
                        return None;
                    }
                    if event.file_name().and_then(|n| n.to_str().ok()) == Some(name) {
                        count += 1;
                    }
                }
                Err(rustix::io::Errno::AGAIN) => return Some(count),
                Err(e) => panic!("cannot read the inotify events: {e}"),
            }
        }
    }
}

#[test]
fn a_storm_of_touches_costs_the_agent_less_cpu_than_the_toucher_and_no_status_rewrite() {
    let creds = ChatgptCreds::fresh();
    let home = crate::kit::temp_home();
    let auth_json = creds.write_to(home.path());
    let idp = creds.start_idp();
    let agent = start_agent(home.path(), &idp.url(), &[]);
    wait_for_state(home.path(), "waiting");
    let renames = RenameCounter::new(home.path());
    let perl = codex_store_tests::programs::on_path("perl")
        .expect("this test needs perl on PATH, to touch auth.json in a tight loop");

    let agent_before = cpu_ticks(agent.id());
    // Touches auth.json (its times only: the bytes stay) as fast as it can for STORM, prints
    // how many times, and waits for EOF on stdin, so that its CPU time can be read while it
    // lives.
    let mut toucher = Process::spawn(
        perl,
        [
            "-e",
            "my ($f, $secs) = @ARGV; my $n = 0; my $end = time + $secs; \
             while (time < $end) { for (1..1000) { utime(undef, undef, $f) or die \"utime: $!\"; } $n += 1000; } \
             $| = 1; print \"done $n\\n\"; <STDIN>;",
            auth_json.to_str().expect("a UTF-8 path"),
            &STORM.as_secs().to_string(),
        ],
    );
    let done = toucher.wait_for_line("`done N`", |line| line.starts_with("done "));
    let toucher_cpu = cpu_ticks(toucher.id());
    let agent_cpu = cpu_ticks(agent.id()) - agent_before;
    toucher.close_stdin();
    toucher.exit_successfully();
    let touches: u64 = done["done ".len()..]
        .parse()
        .expect("the toucher counts its touches");
    assert!(
        touches >= 10_000,
        "the toucher made only {touches} touches in {STORM:?}: no storm to measure"
    );

    assert!(
        agent_cpu * 2 < toucher_cpu,
        "{touches} touches of auth.json that change nothing cost the agent {agent_cpu} CPU \
         ticks, the toucher {toucher_cpu}: the agent must coalesce the wakes (look once, and not \
         again until its look is done) and spend nothing on an unchanged file"
    );
    let rewrites = renames.take("auth.json.agent");
    assert!(
        rewrites.is_some_and(|n| n <= 2),
        "the agent rewrote its status {} times during {touches} touches that changed nothing in \
         auth.json (its status did not change either)",
        rewrites.map_or("more than the inotify queue holds".to_owned(), |n| n
            .to_string())
    );

    // The agent still sees a real change at once.
    let elsewhere = creds.with_new_access_token(3600);
    elsewhere.write_to(home.path());
    let adopted = agent.wait_for_stderr_line("adopted:");
    assert!(
        adopted.contains(&fingerprint(&elsewhere.access_token)),
        "after the storm the agent must adopt the new access token: {adopted}"
    );
    assert_eq!(idp.requests(), 0, "nothing was due: no request");
    stop(agent);
}

/// Removes `dir`, trying again while the agent still writes into it (a removal that finds a
/// file created meanwhile fails with "Directory not empty").
fn remove_dir(dir: &Path) {
    let deadline = Instant::now() + WAIT;
    while let Err(e) = std::fs::remove_dir_all(dir) {
        assert!(
            Instant::now() < deadline,
            "cannot remove {}: {e}",
            dir.display()
        );
    }
}

#[test]
fn a_home_removed_and_re_created_under_the_agent_is_claimed_again_and_kept_fresh() {
    let creds = ChatgptCreds::fresh();
    let idp = creds.start_idp();
    idp.set_access_token_lifetime(3600);
    let parent = crate::kit::temp_home();
    let home: PathBuf = parent.path().join("codex-home");
    std::fs::create_dir(&home).expect("cannot create the home");
    creds.write_to(&home);
    let agent = start_agent(&home, &idp.url(), &[]);
    wait_for_state(&home, "waiting");

    // The new home, made aside: the same login with an access token due for the agent now.
    let aside = parent.path().join("codex-home.new");
    std::fs::create_dir(&aside).expect("cannot create the new home");
    let due = creds.with_new_access_token(LEAD_SECS - 60);
    due.write_to(&aside);
    remove_dir(&home);
    std::fs::rename(&aside, &home).expect("cannot move the new home into place");

    // Either the agent keeps the new home fresh, or it exits saying why; never deaf and alive.
    let mut agent = agent;
    let deadline = Instant::now() + WAIT;
    let exited = loop {
        if agent.stderr().contains("refreshed:") {
            break None;
        }
        if let Some(status) = agent.try_status() {
            break Some(status);
        }
        assert!(
            Instant::now() < deadline,
            "{WAIT:?} after its home was removed and re-created with a due token, the agent \
             neither refreshed it nor exited (it watches the deleted directory); inspect: {}\n\
             its log:\n{}",
            inspect(&home),
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    if let Some(status) = exited {
        let out = agent.finish(STOP);
        assert!(
            !status.success(),
            "an agent that lost its home must exit non-zero, it exited {status}:\n{}",
            out.stderr
        );
        out.expect_stderr_contains(
            &["removed while the agent ran"],
            "an agent that gives up on a re-created home must say why",
        );
        return;
    }

    let log = agent.stderr();
    assert!(
        log.contains("reattached:"),
        "the agent must say that it claimed the re-created home again:\n{log}"
    );
    let report = inspect(&home);
    assert_eq!(
        report["agent"]["pid"].as_u64(),
        Some(u64::from(agent.id())),
        "inspect on the re-created home must show the agent running: {report}"
    );
    assert_ne!(
        refresh_token_on_disk(&home).as_deref(),
        Some(creds.refresh_token.as_str()),
        "the re-created home's auth.json must hold the refreshed tokens"
    );
    let second = run(
        &home,
        &["agent", "--lead", LEAD],
        None,
        &[(URL_ENV, &idp.url())],
    );
    assert_ne!(
        second.code(),
        Some(exit::OK),
        "a second agent ran beside the first on the re-created home:\n{}",
        second.describe()
    );
    second.expect_stderr_contains(
        &[
            "another codex-store agent already runs",
            &format!("pid {}", agent.id()),
        ],
        "a second agent on the re-created home must be refused, naming the first",
    );
    assert_eq!(idp.requests(), 1, "one due token, one request");
    stop(agent);
}

#[test]
fn a_sign_in_after_the_agent_went_idle_is_announced_before_the_refresh_in_text_and_json() {
    for json in [false, true] {
        let home = crate::kit::temp_home();
        // Due for the agent at once (still valid for Codex).
        let creds = ChatgptCreds::expiring_in(LEAD_SECS - 60);
        let idp = creds.start_idp();
        idp.set_access_token_lifetime(3600);
        let extra: &[&str] = if json { &["--json"] } else { &[] };
        let agent = start_agent(home.path(), &idp.url(), extra);
        let (idle, resumed, refreshed) = if json {
            (
                r#""event":"idle""#,
                r#""event":"resumed""#,
                r#""event":"refreshed""#,
            )
        } else {
            ("idle (signed_out)", "resumed:", "refreshed:")
        };
        agent.wait_for_stderr_line(idle);

        creds.write_to(home.path());
        agent.wait_for_stderr_line(refreshed);

        let log = agent.stderr();
        let lines: Vec<&str> = log.lines().collect();
        let at = |needle: &str| lines.iter().position(|l| l.contains(needle));
        let (idle_at, refreshed_at) = (at(idle), at(refreshed));
        let resumed_at = at(resumed);
        assert!(
            resumed_at.is_some_and(|r| Some(r) > idle_at && Some(r) < refreshed_at),
            "after `idle`, a sign-in must be announced by an event of its own before the \
             refresh (json: {json}):\n{log}"
        );
        let line = lines[resumed_at.unwrap_or_default()];
        if json {
            let event: serde_json::Value = serde_json::from_str(line).expect("a JSON line is JSON");
            assert_eq!(
                (event["from"].as_str(), event["reason"].as_str()),
                (Some("idle"), Some("signed_out")),
                "the event must say which state the agent left: {line}"
            );
        } else {
            assert!(
                line.contains("left idle (signed_out)"),
                "the event must say which state the agent left: {line}"
            );
        }
        stop(agent);
    }
}

#[test]
fn a_fleet_refusal_holding_escapes_and_line_breaks_is_written_escaped_to_the_agent_log() {
    let cluster = EtcdCluster::start(1);
    let prefix = format!(
        "/codex-store-tests/{}",
        crate::kit::unique("hostile-refusal")
    );
    let fleet = |rest: &[&str], machine: &str| -> Vec<String> {
        let mut args: Vec<String> = rest.iter().map(|a| (*a).to_owned()).collect();
        args.extend([
            "--fleet".to_owned(),
            cluster.endpoint(0),
            "--fleet-prefix".to_owned(),
            prefix.clone(),
            "--machine".to_owned(),
            machine.to_owned(),
        ]);
        args
    };
    // A login due now, whose refresh token the fleet remembers as refused, by a record someone
    // with write access to the prefix wrote.
    let refused = ChatgptCreds::due_but_valid();
    let seeder = crate::kit::temp_home();
    refused.write_to(seeder.path());
    let args = fleet(&["fleet", "seed"], "seeder");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(seeder.path(), &args, None, &[]).expect_code(exit::OK, "seeding the fleet failed");
    let refusal = json!({
        "refresh": fingerprint(&refused.refresh_token),
        "code": "x\u{1b}[2Jy\nFORGED codex-store agent: refreshed",
        "machine": "m\u{7}\r\nFORGED",
        "at": "2026-01-01T00:00:00Z",
    });
    etcd_put(&cluster, &format!("{prefix}/refusal"), refusal.to_string());

    let home = crate::kit::temp_home();
    let args = fleet(&["agent", "--lead", "310s"], "machine-1");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = spawn(home.path(), &args, None, &[]);
    let failed = agent.wait_for_stderr_line("failed (sign_in_required)");
    let log = stop(agent);

    assert!(
        !log.contains(['\u{1b}', '\u{7}', '\r']),
        "the agent's log carries the fleet record's terminal escapes raw:\n{log:?}"
    );
    let forged: Vec<&str> = log.lines().filter(|l| l.starts_with("FORGED")).collect();
    assert!(
        forged.is_empty(),
        "a line break in the fleet record forged log lines {forged:?}:\n{log}"
    );
    assert!(
        failed.contains(r"x\u{1b}[2Jy") && failed.contains(r"m\u{7}"),
        "the refusal's values must stay visible, escaped: {failed}"
    );
}

#[test]
fn a_home_whose_path_holds_escapes_and_line_breaks_is_written_escaped_to_the_agent_log() {
    let parent = crate::kit::temp_home();
    let home = parent
        .path()
        .join("home\u{1b}[2J\u{7}\nFORGED codex-store agent: refreshed");
    std::fs::create_dir(&home).expect("cannot create the home");
    let agent = spawn(&home, &["agent", "--lead", LEAD], None, &[]);
    let started = agent.wait_for_stderr_line("started");
    agent.wait_for_stderr_line("idle (signed_out)");
    let log = stop(agent);

    assert!(
        !log.contains(['\u{1b}', '\u{7}']),
        "the agent's log carries the home path's terminal escapes raw:\n{log:?}"
    );
    let forged: Vec<&str> = log.lines().filter(|l| l.starts_with("FORGED")).collect();
    assert!(
        forged.is_empty(),
        "a line break in the home's path forged log lines {forged:?}:\n{log}"
    );
    assert!(
        started.contains(r"home\u{1b}[2J\u{7}\u{a}FORGED"),
        "the path must stay visible, escaped: {started}"
    );
}

fn etcd_put(cluster: &EtcdCluster, key: &str, value: impl AsRef<[u8]>) {
    use base64::Engine as _;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let answer = cluster.post(
        0,
        "/v3/kv/put",
        &json!({"key": b64(key.as_bytes()), "value": b64(value.as_ref())}),
    );
    assert!(answer.is_some(), "etcd did not answer the put of {key}");
}
