//! Records, keys and endpoints of the fleet that someone else wrote (issue 17, items 3, 7, 11-14
//! and 17; issue 16's rotation parents): real etcd, real `codex-store` processes (agents and
//! one-shot commands), the fake token endpoint, and for answers that are not etcd's a tiny HTTP
//! server on loopback.
//!
//! Orders are made by waiting for events (agent lines on stderr, files, etcd's state, requests
//! the endpoint counted); every wait is bounded, and only turns a hang into a failure. The
//! harness is [`crate::fleet_kit`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::fleet_kit::{Fleet, Setup, LEAD, URL_ENV, WAIT};
use crate::kit::{exit, fingerprint, run, spawn, ChatgptCreds};
use codex_store_tests::codex_sim::refresh_token_on_disk;
use codex_store_tests::http::{Response, Server, ServerOptions};
use serde_json::{json, Value};

/// `m` machines on a one-member etcd, reaching it directly, seeded from machine 0; the login's
/// access token expires in `expires_in` seconds, the endpoint's in two hours; `extra` options
/// for every command of every machine.
fn new_fleet(m: usize, expires_in: i64, extra: &[&str]) -> Fleet {
    Fleet::start(Setup {
        members: 1,
        machines: m,
        expires_in,
        lifetime: 3600 * 2,
        tag: "records",
        links: false,
        options: extra.iter().map(|e| (*e).to_owned()).collect(),
        stop_within: WAIT,
    })
}

/// The copies `auth.json.fleet-replaced.*` on machine `i`, their contents.
fn replaced_copies(fleet: &Fleet, i: usize) -> Vec<String> {
    fleet
        .replaced_copies(i)
        .iter()
        .map(|path| std::fs::read_to_string(path).unwrap_or_default())
        .collect()
}

fn auth_text(home: &std::path::Path) -> Option<String> {
    std::fs::read_to_string(home.join("auth.json")).ok()
}

// ---------------------------------------------------------------------------------------------
// Item 3: `logout --fleet` on a machine whose agent runs.
// ---------------------------------------------------------------------------------------------

#[test]
fn after_logout_on_the_fleet_from_a_machine_whose_agent_runs_the_next_fleet_login_reaches_it_too() {
    let mut fleet = new_fleet(2, 3600, &[]);
    fleet.start_agent(0);
    fleet.start_agent(1);
    fleet.expect_event(1, "mirrored:");
    // Signed out from machine 1 itself: the command removes its auth.json right after the
    // record, before its agent can mirror the sign-out.
    fleet
        .run_on(1, &["logout"])
        .expect_code(exit::OK, "logout --fleet failed");
    fleet.expect_event(1, "idle (fleet_");
    fleet.wait_until("machine 0 is not signed out by logout --fleet", || {
        !fleet.home(0).join("auth.json").exists()
    });
    let key = crate::kit::api_key();
    fleet
        .run_with_input(0, &["login", "--with-api-key"], Some(&key))
        .expect_code(exit::OK, "login --with-api-key --fleet failed");
    fleet.wait_until(
        "machine 1, signed out with the fleet, did not take the fleet's next login",
        || auth_text(fleet.home(1)).is_some_and(|t| t.contains(&key)),
    );
    fleet.stop_agent(0);
    fleet.stop_agent(1);
    crate::kit::assert_no_secret_leaked();
}

#[test]
fn a_machine_whose_agent_was_stopped_through_logout_on_the_fleet_takes_the_next_fleet_login_when_it_restarts(
) {
    let mut fleet = new_fleet(2, 3600, &[]);
    fleet.start_agent(1);
    fleet.expect_event(1, "mirrored:");
    fleet.stop_agent(1);
    fleet
        .run_on(1, &["logout"])
        .expect_code(exit::OK, "logout --fleet failed");
    let key = crate::kit::api_key();
    fleet
        .run_with_input(0, &["login", "--with-api-key"], Some(&key))
        .expect_code(exit::OK, "login --with-api-key --fleet failed");
    fleet.start_agent(1);
    fleet.wait_until(
        "machine 1, signed out by logout --fleet while its agent was stopped, did not take the \
         fleet's next login after a restart",
        || auth_text(fleet.home(1)).is_some_and(|t| t.contains(&key)),
    );
    fleet.stop_agent(1);
}

// ---------------------------------------------------------------------------------------------
// Item 7: an endpoint that answers 200 with something that is not etcd's.
// ---------------------------------------------------------------------------------------------

/// An HTTP server on 127.0.0.1 (keep-alive) answering every request with 200 and `body`,
/// counting them.
struct NotEtcd {
    url: String,
    requests: Arc<AtomicUsize>,
    _server: Server,
}

impl NotEtcd {
    fn start(content_type: &'static str, body: &'static str) -> NotEtcd {
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&requests);
        let options = ServerOptions {
            name: "not-etcd",
            keep_alive: true,
            max_body: 1024 * 1024,
        };
        let server = Server::start(options, move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
            Some(Response {
                status: 200,
                content_type,
                body: body.to_owned(),
            })
        });
        NotEtcd {
            url: format!("http://{}", server.addr()),
            requests,
            _server: server,
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

const PAGE: &str = "<!doctype html>\n<html><body>It works!</body></html>\n";

#[test]
fn an_endpoint_answering_200_with_what_is_not_etcds_is_an_error_for_every_command_never_no_login() {
    for (content_type, body) in [("application/json", "{}"), ("text/html", PAGE)] {
        let server = NotEtcd::start(content_type, body);
        let creds = ChatgptCreds::fresh();
        let home = crate::kit::temp_home();
        creds.write_to(home.path());
        let fleet = ["--fleet", server.url.as_str()];
        let command = |rest: &[&str], stdin: Option<&str>| {
            let mut args = rest.to_vec();
            args.extend(fleet);
            let before = server.requests();
            let out = run(home.path(), &args, stdin, &[]);
            (out, server.requests() - before)
        };
        let (seed, calls) = command(&["fleet", "seed"], None);
        seed.expect_code(
            exit::OTHER,
            "fleet seed against a server that is not etcd must fail",
        );
        seed.expect_stderr_contains(
            &["did not answer as etcd does"],
            &format!("fleet seed must say the endpoint is not etcd ({body:?})"),
        );
        assert!(
            calls <= 4,
            "fleet seed made {calls} requests to a server that is not etcd"
        );
        let key = crate::kit::api_key();
        let (login, calls) = command(&["login", "--with-api-key"], Some(&key));
        assert_ne!(
            login.code(),
            Some(exit::OK),
            "login --with-api-key --fleet against a server that is not etcd must fail: {}",
            login.describe()
        );
        login.expect_stderr_contains(
            &["did not answer as etcd does"],
            "login --fleet must say the endpoint is not etcd",
        );
        assert!(
            calls <= 4,
            "login --fleet made {calls} requests to a server that is not etcd"
        );
        creds.write_to(home.path());
        let (logout, calls) = command(&["logout"], None);
        assert_ne!(
            logout.code(),
            Some(exit::OK),
            "logout --fleet against a server that is not etcd must fail, not report 'no login': {}",
            logout.describe()
        );
        assert!(
            !logout.stdout.contains("No login to remove"),
            "an answer that is not etcd's was read as 'no login': {}",
            logout.describe()
        );
        assert!(
            calls <= 4,
            "logout --fleet made {calls} requests to a server that is not etcd"
        );
        assert_eq!(
            refresh_token_on_disk(home.path()),
            Some(creds.refresh_token.clone()),
            "logout --fleet removed this machine's login although the fleet could not be signed out"
        );
        let (inspect, _) = command(&["inspect", "--json"], None);
        let problems = inspect.json()["problems"].to_string();
        assert!(
            problems.contains("did not answer as etcd does"),
            "inspect --fleet must report an endpoint that is not etcd: {problems}"
        );
    }
}

#[test]
fn a_synced_agent_restarted_behind_an_endpoint_that_is_not_etcd_keeps_auth_json_and_backs_off() {
    let mut fleet = new_fleet(1, 3600, &[]);
    fleet.start_agent(0);
    fleet.wait_until("machine 0 did not sync", || {
        fleet.home(0).join("auth.json.fleet").exists()
    });
    fleet.stop_agent(0);
    let server = NotEtcd::start("application/json", "{}");
    let lead = format!("{LEAD}s");
    let agent = spawn(
        fleet.home(0),
        &[
            "agent",
            "--lead",
            &lead,
            "--fleet",
            &server.url,
            "--fleet-prefix",
            &fleet.prefix,
        ],
        None,
        &[(URL_ENV, &fleet.idp.url())],
    );
    let line = agent.wait_for_stderr_line("failed (");
    assert!(
        line.contains("did not answer as etcd does"),
        "the agent must say the endpoint is not etcd: {line}"
    );
    let before = server.requests();
    agent.wait_for_stderr_line("failed (");
    assert!(
        server.requests() - before <= 4,
        "the agent made {} requests between two failures: no backoff",
        server.requests() - before
    );
    assert_eq!(
        refresh_token_on_disk(fleet.home(0)),
        Some(fleet.creds.refresh_token.clone()),
        "an answer that is not etcd's made the agent remove auth.json; its log:\n{}",
        agent.stderr()
    );
}

// ---------------------------------------------------------------------------------------------
// Item 11: records without usable credentials, and another account's record.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_record_without_usable_credentials_is_reported_never_mirrored_and_nothing_is_sent() {
    // Due for the agents: an empty refresh token would be sent at once if it were mirrored.
    let mut fleet = new_fleet(2, LEAD + 2, &[]);
    fleet.idp.set_delay(Duration::from_secs(3600));
    fleet.start_agent(1);
    fleet.expect_event(1, "mirrored:");
    let live = fleet.creds.refresh_token.clone();
    let mut empty: Value = serde_json::from_str(&fleet.creds.auth_json()).expect("a document");
    empty["tokens"]["access_token"] = json!("");
    empty["tokens"]["refresh_token"] = json!("");
    let nothing = json!({"auth_mode": "chatgpt", "OPENAI_API_KEY": null, "tokens": null});
    for (what, record) in [("empty tokens", empty), ("no credentials at all", nothing)] {
        fleet.put("auth.json", record.to_string().as_bytes(), None);
        let line = fleet.expect_event(1, "fleet_record_unusable");
        assert!(
            line.contains("no usable credentials"),
            "the agent must say what is wrong with the record ({what}): {line}; its log:\n{}",
            fleet.agent_logs()
        );
        assert_eq!(
            refresh_token_on_disk(fleet.home(1)),
            Some(live.clone()),
            "a record with {what} was written over machine 1's live login; its agent:\n{}",
            fleet.agent_logs()
        );
        let report = fleet.inspect(0);
        let problem = report["fleet"]["record_problem"]
            .as_str()
            .unwrap_or_default();
        assert!(
            problem.contains("no usable credentials"),
            "inspect --fleet must show the record with {what} as a problem: {report}"
        );
    }
    assert_eq!(
        fleet.idp.requests(),
        0,
        "a refresh was sent while the fleet's record was unusable"
    );
    let seed = {
        let home = crate::kit::temp_home();
        let mut doc: Value = serde_json::from_str(&fleet.creds.auth_json()).expect("a document");
        doc["tokens"]["refresh_token"] = json!("");
        crate::kit::write_file(&home.path().join("auth.json"), doc.to_string(), 0o600);
        let args = fleet.args(0, &["fleet", "seed", "--force"]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(home.path(), &args, None, &[])
    };
    seed.expect_code(
        exit::OTHER,
        "seeding a login with an empty refresh token must fail",
    );
    seed.expect_stderr_contains(&["no usable credentials"], "the seed must say why");
    fleet.stop_agent(1);
}

#[test]
fn a_record_of_another_account_is_mirrored_keeping_the_login_it_replaces_beside_auth_json() {
    let mut fleet = new_fleet(2, 3600, &[]);
    fleet.start_agent(0);
    fleet.start_agent(1);
    fleet.expect_event(1, "mirrored:");
    // The documented switch, from a machine without an agent.
    let other = ChatgptCreds::fresh();
    let laptop = crate::kit::temp_home();
    other.write_to(laptop.path());
    let args = fleet.args(0, &["fleet", "seed", "--force"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(laptop.path(), &args, None, &[]).expect_code(exit::OK, "fleet seed --force failed");
    for i in 0..2 {
        fleet.wait_until(
            &format!("machine {i} did not take the fleet's new account"),
            || refresh_token_on_disk(fleet.home(i)) == Some(other.refresh_token.clone()),
        );
        let copies = replaced_copies(&fleet, i);
        assert!(
            copies
                .iter()
                .any(|c| c.contains(&fleet.creds.refresh_token)),
            "machine {i} replaced its login by another account's without keeping it beside \
             auth.json: copies {}",
            copies.len()
        );
    }
    fleet.stop_agent(0);
    fleet.stop_agent(1);
}

// ---------------------------------------------------------------------------------------------
// Item 12: a lock held forever.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_fleet_lock_held_by_a_hung_client_is_reported_naming_its_holder_and_the_coming_lapse() {
    // Due at once, and within Codex's own 5 minutes of expiry: near the lapse.
    let mut fleet = new_fleet(1, 290, &["--fleet-lock-ttl", "2s"]);
    let lease = fleet.lease(3600);
    fleet.put("lock", b"hung-host pid 7\x1b[2J", Some(&lease));
    fleet.start_agent(0);
    let line = fleet.expect_event(0, "failed (fleet_lock)");
    assert!(
        line.contains("hung-host pid 7") && !line.contains('\u{1b}'),
        "the report must name the holder, escaped: {line:?}"
    );
    let lapse = fleet.expect_event(0, "failed (fleet_lock)");
    assert!(
        lapse.contains("will lapse"),
        "near expiry the agent must say the login will lapse: {lapse}"
    );
    assert_eq!(
        fleet.idp.requests(),
        0,
        "a refresh was sent under another's lock"
    );
    let report = fleet.inspect(0);
    let since = report["fleet"]["lock_since_revision"].as_i64();
    let now = report["fleet"]["revision_now"].as_i64();
    assert!(
        since.is_some() && now >= since,
        "inspect --fleet must show since which revision the lock is held: {report}"
    );
    let text = fleet.run_on(0, &["inspect"]);
    text.expect_stdout_contains(
        &["since revision", "hung-host pid 7\\u{1b}"],
        "inspect --fleet must show the holder, escaped, and since when it holds the lock",
    );
    fleet.stop_agent(0);
}

#[test]
fn inspect_reports_a_fleet_lock_on_no_lease_as_a_problem() {
    let fleet = new_fleet(1, 3600, &[]);
    fleet.put("lock", b"by hand", None);
    let report = fleet.inspect(0);
    let problems = report["problems"].to_string();
    assert!(
        problems.contains("on no lease"),
        "a lock that never expires must be reported: {problems}"
    );
}

// ---------------------------------------------------------------------------------------------
// Item 13: a reservation on a live lease of a huge time to live.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_reservation_on_a_lease_of_a_huge_ttl_holds_a_machine_back_only_up_to_its_own_maximum() {
    // This machine's own reservation: 2 s + 1 s + the margin, 6 s; it waits for another's at
    // most four times that.
    let mut fleet = new_fleet(1, LEAD + 1, &["--http-timeout", "2s", "--reuse-wait", "1s"]);
    let lease = fleet.lease(1_000_000);
    let mark = json!({
        "refresh": fingerprint(&fleet.creds.refresh_token),
        "machine": "hostile",
        "at": "2999-01-01T00:00:00Z",
        "lock": 1,
    });
    fleet.put("redeeming", mark.to_string().as_bytes(), Some(&lease));
    fleet.start_agent(0);
    let started = Instant::now();
    assert!(
        fleet.idp.wait_for_requests(1, Duration::from_secs(60)),
        "the agent never sent its due token: a reservation on a lease of 1,000,000 s held it \
         back; its log:\n{}",
        fleet.agent_logs()
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(20),
        "the agent sent after {waited:?}, ignoring a live reservation at once"
    );
    let line = fleet.expect_event(0, "failed (fleet_reservation)");
    assert!(
        line.contains("hostile"),
        "the report must name the reservation's machine: {line}"
    );
    fleet.stop_agent(0);
}

// ---------------------------------------------------------------------------------------------
// Item 14: a refused fleet resumes on `fleet seed --force`.
// ---------------------------------------------------------------------------------------------

#[test]
fn agents_stopped_by_a_fleet_refusal_resume_when_fleet_seed_force_clears_it() {
    let mut fleet = new_fleet(2, LEAD + 1, &[]);
    // A refusal remembered for the fleet's live token (by a machine that met a misconfigured
    // endpoint, or written by hand): no machine sends it.
    let refusal = json!({
        "refresh": fingerprint(&fleet.creds.refresh_token),
        "code": "refresh_token_invalidated",
        "machine": "elsewhere",
        "at": "2026-01-01T00:00:00Z",
    });
    fleet.put("refusal", refusal.to_string().as_bytes(), None);
    fleet.start_agent(0);
    fleet.start_agent(1);
    fleet.expect_event(0, "failed (sign_in_required)");
    fleet.expect_event(1, "failed (sign_in_required)");
    assert_eq!(fleet.idp.requests(), 0, "a refused token was sent");
    // The documented remedy, from a machine holding the login: the seed clears the refusal.
    let laptop = crate::kit::temp_home();
    fleet.creds.write_to(laptop.path());
    let args = fleet.args(0, &["fleet", "seed", "--force"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(laptop.path(), &args, None, &[]).expect_code(exit::OK, "fleet seed --force failed");
    fleet.wait_until(
        "no agent resumed after `fleet seed --force` cleared the refusal: the due login was \
         not refreshed",
        || fleet.idp.successes() >= 1,
    );
    fleet.wait_until("the machines do not both hold the refreshed login", || {
        (0..2).all(|i| {
            refresh_token_on_disk(fleet.home(i)).as_deref()
                == Some(fleet.idp.current_refresh_token().as_str())
        })
    });
    assert_eq!(
        fleet.idp.requests(),
        1,
        "after the seed the fleet must make one request; agents:\n{}",
        fleet.agent_logs()
    );
    fleet.stop_agent(0);
    fleet.stop_agent(1);
}

// ---------------------------------------------------------------------------------------------
// Issue 16 follow-up: the rotation's parent.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_machine_that_missed_a_rotation_knows_from_its_parent_that_the_record_descends_from_its_token()
{
    let mut fleet = new_fleet(2, LEAD + 3, &[]);
    fleet.start_agent(1);
    fleet.expect_event(1, "mirrored:");
    fleet.stop_agent(1);
    // Machine 0 rotates the fleet's login while machine 1 is away.
    fleet.start_agent(0);
    fleet.expect_event(0, "refreshed:");
    let rotation = fleet.inspect(0)["fleet"]["last_rotation"].clone();
    assert_eq!(
        rotation["parent"].as_str(),
        Some(fingerprint(&fleet.creds.refresh_token).as_str()),
        "a refresh must name the token it replaced as its parent: {rotation}"
    );
    // Meanwhile machine 1's auth.json was rewritten with its (older) token: a restored copy.
    let mut doc: Value = serde_json::from_str(&fleet.creds.auth_json()).expect("a document");
    doc["restored_from_backup"] = json!(true);
    crate::kit::write_file(&fleet.home(1).join("auth.json"), doc.to_string(), 0o600);
    fleet.start_agent(1);
    fleet.wait_until(
        "machine 1 did not take the fleet's rotation its token is the parent of",
        || {
            refresh_token_on_disk(fleet.home(1)).as_deref()
                == Some(fleet.idp.current_refresh_token().as_str())
        },
    );
    assert!(
        !fleet.agent(1).stderr().contains("fleet_conflict"),
        "machine 1 took the record for an unrelated login; its log:\n{}",
        fleet.agent(1).stderr()
    );
    fleet.stop_agent(0);
    fleet.stop_agent(1);
}

// ---------------------------------------------------------------------------------------------
// Item 17: a CA file that is PEM but no certificate.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_fleet_ca_that_is_pem_but_no_certificate_is_named_with_what_is_wrong_with_it() {
    let home = crate::kit::temp_home();
    ChatgptCreds::fresh().write_to(home.path());
    let ca = home.path().join("ca.pem");
    let cases = [
        (
            "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
            "does not hold a certificate",
        ),
        (
            "-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n",
            "PRIVATE KEY",
        ),
    ];
    for (pem, want) in cases {
        std::fs::write(&ca, pem).expect("write the CA file");
        let out = run(
            home.path(),
            &[
                "inspect",
                "--fleet",
                "https://127.0.0.1:9",
                "--fleet-ca",
                &ca.to_string_lossy(),
            ],
            None,
            &[],
        );
        let said = format!("{}{}", out.stdout, out.stderr);
        assert!(
            said.contains(&*ca.to_string_lossy()) && said.contains(want),
            "a CA file that is PEM but no certificate must be named with what is wrong ({want}): \
             {}",
            out.describe()
        );
        assert!(
            !said.contains("builder error"),
            "the error must not be the TLS library's 'builder error': {}",
            out.describe()
        );
    }
}

#[test]
fn a_fifo_or_a_device_given_as_a_fleet_tls_file_is_refused_at_once_naming_it() {
    let home = crate::kit::temp_home();
    ChatgptCreds::fresh().write_to(home.path());
    let fifo = home.path().join("ca.fifo");
    codex_store_tests::fixtures::make_fifo(&fifo);
    let fifo = fifo.to_string_lossy().into_owned();
    for (flag, file) in [
        ("--fleet-ca", fifo.as_str()),
        ("--fleet-ca", "/dev/zero"),
        ("--fleet-cert", fifo.as_str()),
    ] {
        let mut args = vec!["inspect", "--fleet", "https://127.0.0.1:9", flag, file];
        if flag == "--fleet-cert" {
            args.extend(["--fleet-key", file]);
        }
        // `run` fails the test if the command does not end within its timeout: a FIFO waited
        // on, or /dev/zero read without a bound, would hang it.
        let out = run(home.path(), &args, None, &[]);
        let said = format!("{}{}", out.stdout, out.stderr);
        assert!(
            !out.status.success() && said.contains(file) && said.contains("not a regular file"),
            "{flag} {file} must be refused at once, naming it: {}",
            out.describe()
        );
    }
}

#[test]
fn an_endpoint_answering_with_control_characters_cannot_write_them_to_the_terminal() {
    let body = r#"{"error":"etcdserver: \u001b]0;pwned\u0007 bad\nFORGED line","code":2,"message":"\u001b[2J\r\nFORGED too"}"#;
    for content_type in ["application/json", "text/html"] {
        let server = NotEtcd::start(content_type, body);
        let creds = ChatgptCreds::fresh();
        let home = crate::kit::temp_home();
        creds.write_to(home.path());
        for rest in [&["fleet", "seed"][..], &["logout"][..], &["inspect"][..]] {
            let mut args = rest.to_vec();
            args.extend(["--fleet", server.url.as_str()]);
            let out = run(home.path(), &args, None, &[]);
            let all = format!("{}{}", out.stdout, out.stderr);
            assert!(
                !all.contains('\u{1b}') && !all.contains('\u{7}') && !all.contains('\r'),
                "{rest:?}: a control character from the endpoint reached the output\n{}",
                out.describe()
            );
            assert!(
                !all.lines().any(|l| l.starts_with("FORGED")),
                "{rest:?}: the endpoint forged an output line\n{}",
                out.describe()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Issue 19, item 6: what the fleet agent says of itself.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_fleet_agent_names_its_fleet_when_it_starts_and_never_reports_its_own_mirror_as_adopted() {
    let mut fleet = Fleet::new(1, 2, 1);
    fleet.start_all();
    // (start_all returns once each agent said `started`.)
    let log = fleet.machines[1]
        .agent
        .as_ref()
        .expect("machine 1's agent runs")
        .stderr();
    let started = log
        .lines()
        .find(|l| l.contains("started:"))
        .unwrap_or_default()
        .to_owned();
    assert!(
        started.contains("with the fleet's login") && started.contains(&fleet.prefix),
        "the fleet agent's start line must name the fleet: {started}"
    );
    // Machine 1 mirrors the rotations machine 0 (or it) makes; a mirror is reported once, as
    // `mirrored`, never again as `adopted` (its own write).
    fleet.wait_rotations(2);
    fleet.wait_all_live_within(WAIT, |lagging, live| {
        format!(
            "{lagging:?} do not hold the live token {live}; agents:\n{}",
            fleet.agent_logs()
        )
    });
    fleet.expect_event(1, "mirrored:");
    let logs = [fleet.stop_agent(0), fleet.stop_agent(1)];
    for log in logs {
        assert!(
            !log.contains("adopted:"),
            "a fleet agent reported a mirror it wrote itself as adopted:\n{log}"
        );
    }
    fleet.assert_no_token_presented_twice();
}

// ---------------------------------------------------------------------------------------------
// The fleet's refusal, read in the lock's own transaction.
// ---------------------------------------------------------------------------------------------

/// A refusal of the fleet's token, remembered for the fleet (by a machine that met it, or by
/// hand).
fn put_refusal(fleet: &Fleet) {
    let refusal = json!({
        "refresh": fingerprint(&fleet.creds.refresh_token),
        "code": "refresh_token_invalidated",
        "machine": "elsewhere",
        "at": "2026-01-01T00:00:00Z",
    });
    fleet.put("refusal", refusal.to_string().as_bytes(), None);
}

#[test]
fn a_machine_that_finds_the_fleets_refusal_with_the_fleet_lock_frees_the_lock_before_it_reports() {
    let mut fleet = new_fleet(1, LEAD + 1, &[]);
    put_refusal(&fleet);
    fleet.start_agent(0);
    fleet.expect_event(0, "failed (sign_in_required)");
    assert_eq!(fleet.idp.requests(), 0, "a refused token was sent");
    // The refusal comes with the lock (one transaction): the lock is freed before the stop is
    // reported, never left to its lease.
    let lock = crate::fleet_kit::etcd_get(&fleet.cluster, &format!("{}/lock", fleet.prefix));
    assert!(
        lock.is_none(),
        "the fleet lock was still held when the refusal was reported: {lock:?}; agent:\n{}",
        fleet.agent_logs()
    );
    fleet.stop_agent(0);
}

#[test]
fn a_machine_whose_token_the_fleet_refused_reports_the_refusal_also_while_another_holds_the_lock() {
    let mut fleet = new_fleet(1, LEAD + 1, &[]);
    // Another holder's lock, on a lease that outlives the test.
    let lease = fleet.lease(3600);
    fleet.put("lock", b"elsewhere pid 1", Some(&lease));
    put_refusal(&fleet);
    fleet.start_agent(0);
    // The refusal is read in the lock's transaction, also when it does not take the lock: the
    // machine stops on the refusal (and waits for a new login), not on the lock.
    fleet.expect_event(0, "failed (sign_in_required)");
    assert_eq!(fleet.idp.requests(), 0, "a refused token was sent");
    let log = fleet.stop_agent(0);
    assert!(
        !log.contains("fleet_lock"),
        "a machine whose token the fleet refused reported the lock instead:\n{log}"
    );
}
