//! The fleet record's watch under faults (issue 16 item 5, issue 17 items 5 and 6), and
//! `fleet seed --force` racing another writer (issue 16 item 6): real etcd, real
//! `codex-store agent --fleet` processes, each machine reaching etcd through a TCP proxy of its
//! own that a test can cut, restore, or make hold a request.
//!
//! Orders are made by waiting for events (agent lines, the proxy holding a request, files
//! holding a token); every wait is bounded, and only turns a hang into a failure. The harness
//! is [`crate::fleet_kit`].

use std::time::{Duration, Instant};

use crate::fleet_kit::{
    enable_auth, etcd_get, etcd_put, new_prefix, record_refresh_token, Machine, WAIT,
};
use crate::kit::{exit, fingerprint, spawn, ChatgptCreds};
use codex_store_tests::etcd::EtcdCluster;
use serde_json::json;

/// The agent's first retry delay after a failed step (`AgentConfig::default().retry_initial`).
const STEP_RETRY_INITIAL: Duration = Duration::from_secs(2);
/// The first delay before a failed watch of the fleet record is tried again (the agent's
/// `WATCH_RETRY_INITIAL`).
const WATCH_RETRY_INITIAL: Duration = Duration::from_secs(1);

/// Cuts `machine`'s link to etcd while its agent waits, until its agent reported that the watch
/// failed and that a retry failed too (it keeps trying), then restores it.
fn break_link_for_a_moment(machine: &Machine) {
    let before = machine.watch_failures();
    machine.link().cut();
    let deadline = Instant::now() + WAIT;
    while machine.watch_failures() < before + 2 {
        assert!(
            Instant::now() < deadline,
            "{}: with its link to etcd cut, its agent did not report its watch failing and \
             failing again on a retry within {WAIT:?}: a failed watch is not retried (the \
             machine goes deaf to the fleet); its agent:\n{}",
            machine.name,
            machine.agent().stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    machine.link().restore();
}

/// Breaks `machine`'s link for a moment ([`break_link_for_a_moment`]), then seeds the fleet
/// with a new login from `seeder`: `machine`'s agent (`what`: idle, refused) must still hear it
/// and mirror it.
fn a_new_seed_after_a_broken_link_reaches(
    machine: &Machine,
    seeder: &Machine,
    prefix: &str,
    what: &str,
) {
    break_link_for_a_moment(machine);
    let creds = ChatgptCreds::fresh();
    creds.write_to(seeder.home.path());
    seeder
        .run(prefix, &["fleet", "seed", "--force"], None, &[])
        .expect_code(exit::OK, "seeding the fleet with a new login failed");
    machine.wait_for_refresh_token(
        &creds.refresh_token,
        &format!("{what} agent whose watch failed once never heard the new login"),
    );
    machine.expect_event("mirrored:");
}

#[test]
fn an_idle_machine_whose_link_to_etcd_broke_for_a_moment_still_mirrors_a_later_seed() {
    let cluster = EtcdCluster::start(1);
    let prefix = new_prefix("watch-idle");
    // The fleet holds an API key: nothing to refresh, every agent idles until the record
    // changes.
    let seeder = Machine::new(&cluster, "seeder");
    crate::kit::write_file(
        &seeder.home.path().join("auth.json"),
        crate::kit::api_key_json(&crate::kit::api_key()),
        0o600,
    );
    seeder
        .run(&prefix, &["fleet", "seed"], None, &[])
        .expect_code(exit::OK, "seeding the fleet with an API key failed");
    let mut machine = Machine::new(&cluster, "machine-1");
    machine.start_agent(&prefix, &[], &[]);
    machine.expect_event("mirrored:");
    machine.expect_event("idle (api_key)");

    a_new_seed_after_a_broken_link_reaches(&machine, &seeder, &prefix, "an idle");
}

#[test]
fn a_refused_machine_whose_link_to_etcd_broke_for_a_moment_still_mirrors_a_later_seed() {
    let cluster = EtcdCluster::start(1);
    let prefix = new_prefix("watch-refused");
    // A login due now whose refresh token the fleet remembers as refused: the agent says so
    // and waits for a new login (`fleet seed --force`, the documented remedy).
    let refused = ChatgptCreds::due_but_valid();
    let seeder = Machine::new(&cluster, "seeder");
    refused.write_to(seeder.home.path());
    seeder
        .run(&prefix, &["fleet", "seed"], None, &[])
        .expect_code(exit::OK, "seeding the fleet failed");
    let refusal = json!({
        "refresh": fingerprint(&refused.refresh_token),
        "code": "refresh_token_reused",
        "machine": "elsewhere",
        "at": "2026-01-01T00:00:00Z",
    });
    etcd_put(&cluster, &format!("{prefix}/refusal"), refusal.to_string());
    let mut machine = Machine::new(&cluster, "machine-1");
    machine.start_agent(&prefix, &[], &[]);
    machine.expect_event("mirrored:");
    machine.expect_event("failed (sign_in_required)");

    a_new_seed_after_a_broken_link_reaches(&machine, &seeder, &prefix, "a refused");
}

/// The most attempts a retry schedule makes within `window` from its first: after the k-th
/// failure in a row it waits at least half of `initial * 2^(k-1)` (the jitter band's floor), so
/// `n` attempts take at least `initial / 2 * (2^(n-1) - 1)`.
fn most_attempts(initial: Duration, window: Duration) -> u64 {
    let mut attempts = 1;
    let mut earliest_next = initial / 2;
    let mut delay = initial;
    while earliest_next <= window {
        attempts += 1;
        delay *= 2;
        earliest_next += delay / 2;
    }
    attempts
}

#[test]
fn an_agent_that_etcd_refuses_at_once_backs_off_instead_of_spinning() {
    let cluster = EtcdCluster::start(1);
    let prefix = new_prefix("watch-refused-by-etcd");
    let creds = ChatgptCreds::fresh();
    let seeder = Machine::new(&cluster, "seeder");
    creds.write_to(seeder.home.path());
    seeder
        .run(&prefix, &["fleet", "seed"], None, &[])
        .expect_code(exit::OK, "seeding the fleet failed");
    enable_auth(&cluster, &prefix);
    // One agent with a wrong password (every attempt costs etcd a bcrypt check), one whose
    // user may not read the prefix (etcd cancels its watch at once).
    let mut wrong_password = Machine::new(&cluster, "wrong-password");
    let mut outside = Machine::new(&cluster, "outside-its-prefix");
    let started = Instant::now();
    wrong_password.start_agent(
        &prefix,
        &["--fleet-user", "codex"],
        &[("CODEX_STORE_FLEET_PASSWORD", "not-the-password")],
    );
    outside.start_agent(
        "/codex-store-tests/not-codex",
        &["--fleet-user", "codex"],
        &[("CODEX_STORE_FLEET_PASSWORD", "codex-pw")],
    );
    for machine in [&wrong_password, &outside] {
        machine.expect_event("failed (fleet):");
    }
    // An observation window: a spinning agent makes thousands of attempts in it.
    std::thread::sleep(Duration::from_secs(5));
    let window = started.elapsed();
    let steps = most_attempts(STEP_RETRY_INITIAL, window);
    let watches = most_attempts(WATCH_RETRY_INITIAL, window);
    for machine in [&wrong_password, &outside] {
        let log = machine.agent().stderr();
        let failures = log.lines().filter(|l| l.contains("failed (")).count() as u64;
        let requests = machine.link().requests();
        eprintln!(
            "{}: {failures} failures and {requests} etcd requests in {window:?} (at most {steps} \
             steps and {watches} watches)",
            machine.name
        );
        assert!(
            failures <= steps + watches,
            "{}: {failures} failures in {window:?}, more than its backoff allows ({steps} \
             steps and {watches} watches): it spins; its agent:\n{log}",
            machine.name
        );
        // Each attempt is one request, and one authentication may come first.
        assert!(
            requests <= steps + watches + 2,
            "{}: {requests} etcd requests in {window:?}, more than its backoff allows ({steps} \
             steps and {watches} watches, one request each, and an authentication): it spins",
            machine.name
        );
        assert!(
            machine.watch_failures() > 0,
            "{}: a watch etcd refused must be reported as a failure (with its next attempt); \
             its agent:\n{log}",
            machine.name
        );
    }
}

#[test]
fn a_forced_seed_racing_an_upload_keeps_the_upload_reports_the_conflict_and_leaves_a_reservation_alone(
) {
    let cluster = EtcdCluster::start(1);
    let prefix = new_prefix("seed-race");
    let first = ChatgptCreds::fresh();
    let machine = Machine::new(&cluster, "seeder");
    first.write_to(machine.home.path());
    machine
        .run(&prefix, &["fleet", "seed"], None, &[])
        .expect_code(exit::OK, "seeding the fleet failed");
    let read = etcd_get(&cluster, &format!("{prefix}/auth.json"))
        .expect("the record")
        .mod_revision;
    // A lock holder's reservation, its request in flight.
    let reservation_key = format!("{prefix}/redeeming");
    etcd_put(
        &cluster,
        &reservation_key,
        json!({"refresh": fingerprint(&first.refresh_token), "machine": "holder", "at": "2026-01-01T00:00:00Z", "lock": 1})
            .to_string(),
    );
    let reservation = etcd_get(&cluster, &reservation_key).expect("the reservation");

    // The seed of a new login reads the record, and its write is held on the way...
    let replacement = ChatgptCreds::fresh();
    replacement.write_to(machine.home.path());
    machine.link().hold_request(machine.link().requests() + 2);
    let args = machine.args(&prefix, &["fleet", "seed", "--force"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let seed = spawn(machine.home.path(), &args, None, &[]);
    assert!(
        machine.link().wait_until_held(WAIT),
        "the seed never sent its second request (its write) within {WAIT:?}"
    );
    // ... while a machine uploads a rotation of the fleet's login.
    let uploaded = ChatgptCreds::fresh();
    let found = etcd_put(
        &cluster,
        &format!("{prefix}/auth.json"),
        uploaded.auth_json(),
    );
    machine.link().release();
    let out = seed.finish(WAIT);

    out.expect_code(
        exit::OTHER,
        "a seed whose record changed between its read and its write must fail",
    );
    out.expect_stderr_contains(
        &[
            "changed while seeding",
            &format!("revision {read} when read"),
            &format!("revision {found} now"),
        ],
        "the conflict must be reported with the revision read and the one found",
    );
    assert_eq!(
        record_refresh_token(&cluster, &prefix).as_deref(),
        Some(uploaded.refresh_token.as_str()),
        "the upload made during the seed was overwritten"
    );
    assert_eq!(
        etcd_get(&cluster, &reservation_key).as_ref(),
        Some(&reservation),
        "a failed seed touched the lock holder's reservation"
    );

    // Run again, the seed replaces the login, and still leaves the reservation alone.
    machine
        .run(&prefix, &["fleet", "seed", "--force"], None, &[])
        .expect_code(exit::OK, "the seed run again failed");
    assert_eq!(
        record_refresh_token(&cluster, &prefix).as_deref(),
        Some(replacement.refresh_token.as_str()),
        "the seed run again did not replace the fleet's login"
    );
    assert_eq!(
        etcd_get(&cluster, &reservation_key).as_ref(),
        Some(&reservation),
        "the seed deleted or changed the reservation of a holder whose request is in flight"
    );
}
