//! One login across machines (issue 11): simulated machines (separate homes, one
//! `codex-store agent --fleet` each, Codex stand-ins on each) sharing one login through a real
//! etcd started by the test, against the fake token endpoint enforcing rotation.
//!
//! Each machine reaches etcd through a TCP proxy of its own, so that a test can take one machine
//! offline. Orders are made by waiting for events (agent lines, requests the endpoint counted,
//! files holding a token); every wait is bounded. The harness is [`crate::fleet_kit`].

use std::process::Command;
use std::time::{Duration, Instant};

use crate::fleet_kit::{base64_of, enable_auth, new_prefix, Fleet, URL_ENV, WAIT};
use crate::kit::{exit, fingerprint, register_last_issued, run, ChatgptCreds};
use codex_store_tests::codex_sim::refresh_token_on_disk;
use codex_store_tests::etcd::EtcdCluster;
use serde_json::json;

/// How soon every machine must hold the live token after a rotation.
const PROPAGATION: Duration = Duration::from_secs(10);

impl Fleet {
    /// Starts machine 0's agent alone against an endpoint that rotates the token on receipt and
    /// answers after `answer_after`; returns once its request was read (it is in flight).
    fn machine_0_in_flight(&mut self, answer_after: Duration) {
        self.idp
            .set_behavior(codex_store_tests::fake_idp::Behavior::late_winner(
                answer_after,
            ));
        self.start_agent(0);
        assert!(
            self.idp.wait_for_requests(1, WAIT),
            "machine 0 sent no refresh request"
        );
    }

    /// Waits until every machine's auth.json holds the endpoint's live refresh token; how long
    /// that took. Panics after [`PROPAGATION`], naming the machines that lag.
    fn wait_all_live(&self) -> Duration {
        self.wait_all_live_within(PROPAGATION, |lagging, _| {
            format!(
                "{lagging:?} do not hold the live token {PROPAGATION:?} after the rotation; \
                 agents:\n{}",
                self.agent_logs()
            )
        })
    }

    /// Like [`Fleet::wait_all_live`], for a machine coming back from a fault (a cut link, a
    /// stop): its next attempt waits out its backoff, so the bound is [`WAIT`], not the
    /// propagation of a rotation between healthy machines.
    fn wait_all_live_after_a_fault(&self) -> Duration {
        self.wait_all_live_within(WAIT, |lagging, _| {
            format!(
                "{lagging:?} do not hold the live token {WAIT:?} after the fault ended; \
                 agents:\n{}",
                self.agent_logs()
            )
        })
    }

    /// The guarantees after a run: one request per rotation, no reuse refusal.
    #[track_caller]
    fn assert_one_request_per_rotation(&self) {
        register_last_issued(&self.idp);
        self.assert_requests_are_rotations(
            ": every rotation must take exactly one request fleet-wide",
        );
        self.assert_no_reuse_refused("a machine redeemed a used refresh token");
    }

    /// `m` machines whose login is due at once, against an endpoint answering after 2 s; returns
    /// when the first refresh request is in flight, with the machine that holds the lock.
    fn with_request_in_flight(m: usize) -> (Fleet, usize) {
        let mut fleet = Fleet::new(1, m, 1);
        fleet.idp.set_delay(Duration::from_secs(2));
        fleet.start_all();
        assert!(
            fleet.idp.wait_for_requests(1, WAIT),
            "no machine sent a refresh request"
        );
        let holder = fleet.lock_holder();
        (fleet, holder)
    }
}

#[test]
fn three_machines_with_codex_processes_make_one_request_per_rotation_and_all_hold_the_live_token() {
    let mut fleet = Fleet::new(1, 3, 2);
    fleet.start_all();
    // Every machine holds the login before its Codex processes start.
    fleet.wait_all_live();
    let sim = crate::kit::helper("codex-sim");
    let url = fleet.idp.url();
    let mut sims: Vec<codex_store_tests::process::Process> = Vec::new();
    for machine in &fleet.machines {
        for k in 0..2 {
            let mut command = Command::new(&sim);
            command
                .args(["--live", "12", "--no-wait"])
                .env("CODEX_HOME", machine.home.path())
                .env(URL_ENV, &url)
                .env_remove("RUST_LOG");
            sims.push(codex_store_tests::process::Process::spawn_command(
                format!("codex-sim on {} #{k}", machine.name),
                command,
            ));
        }
    }
    fleet.wait_rotations(3);
    let mut delays = vec![fleet.wait_all_live()];
    fleet.wait_rotations(4);
    delays.push(fleet.wait_all_live());
    for sim in &mut sims {
        let out = sim.finish(WAIT);
        let (lines, status) = (out.lines(), out.status);
        let requests = lines
            .iter()
            .filter(|l| l.starts_with("requesting "))
            .count();
        assert!(
            requests == 0 && status.code() == Some(codex_store_tests::codex_sim::exit::LIVED),
            "{} sent {requests} request(s) or did not live its span ({status}): {lines:?}",
            sim.name()
        );
    }
    fleet.stop_all();
    fleet.assert_one_request_per_rotation();
    eprintln!("propagation after a rotation: {delays:?}");
}

#[test]
fn a_crashed_lock_holder_frees_the_lock_when_its_lease_expires_and_another_machine_refreshes() {
    let mut fleet = Fleet::new(1, 2, 1);
    // A holder that took the lock and died before its request: the lock key on a lease that
    // nobody renews.
    let lease = fleet
        .cluster
        .post(0, "/v3/lease/grant", &json!({"TTL": "3"}))
        .and_then(|v| v.get("ID").and_then(|id| id.as_str()).map(str::to_owned))
        .expect("a lease");
    let key = base64_of(format!("{}/lock", fleet.prefix));
    let put = fleet.cluster.post(
        0,
        "/v3/kv/put",
        &json!({"key": key, "value": base64_of("crashed pid 1"), "lease": lease}),
    );
    assert!(put.is_some(), "could not plant the crashed holder's lock");
    fleet.start_all();
    fleet.wait_rotations(1);
    fleet.wait_all_live();
    fleet.stop_all();
    fleet.assert_one_request_per_rotation();
}

#[test]
fn a_machine_offline_during_two_rotations_catches_up_and_sends_nothing_meanwhile() {
    let mut fleet = Fleet::new(1, 3, 2);
    fleet.start_all();
    fleet.wait_rotations(1);
    fleet.wait_all_live();
    fleet.machines[2].link().cut();
    let before = fleet.idp.successes();
    fleet.wait_rotations(before + 2);
    fleet.machines[2].link().restore();
    let delay = fleet.wait_all_live();
    fleet.stop_all();
    fleet.assert_one_request_per_rotation();
    eprintln!("the offline machine caught up {delay:?} after its link came back");
}

#[test]
fn a_rotation_made_on_one_machine_outside_the_agent_is_uploaded_and_adopted_fleet_wide() {
    // Tokens not due for a long while: only the out-of-band rotation happens.
    let mut fleet = Fleet::new(1, 3, 3600);
    fleet.idp.set_access_token_lifetime(3600 * 2);
    fleet.start_all();
    // Every machine holds the login before a Codex process on machine 1 refreshes on its own
    // (forced).
    fleet.wait_all_live();
    let sim = crate::kit::helper("codex-sim");
    let out = Command::new(&sim)
        .args(["--force", "--no-wait"])
        .env("CODEX_HOME", fleet.machines[1].home.path())
        .env(URL_ENV, fleet.idp.url())
        .env_remove("RUST_LOG")
        .output()
        .expect("run codex-sim");
    assert_eq!(
        out.status.code(),
        Some(codex_store_tests::codex_sim::exit::SAVED),
        "the Codex stand-in did not save its rotation: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    fleet.machines[1]
        .agent
        .as_ref()
        .expect("machine 1's agent")
        .wait_for_stderr_line("uploaded:");
    fleet.wait_all_live();
    fleet.stop_all();
    fleet.assert_one_request_per_rotation();
}

#[test]
fn one_etcd_member_stopped_and_the_leader_killed_mid_refresh_lose_no_token() {
    let mut fleet = Fleet::new(3, 3, 2);
    // A member down from the start.
    let leader = fleet.cluster.wait_for_leader();
    let stopped = (leader + 1) % 3;
    fleet.cluster.kill(stopped);
    fleet.idp.set_delay(Duration::from_secs(2));
    fleet.start_all();
    // The leader dies while the first refresh request is in flight.
    assert!(
        fleet.idp.wait_for_requests(1, WAIT),
        "no machine sent a refresh request within {WAIT:?} (member {stopped} stopped); \
         agents:\n{}",
        fleet.agent_logs()
    );
    let leader = fleet.cluster.wait_for_leader();
    fleet.cluster.kill(leader);
    fleet.cluster.restart(stopped);
    fleet.cluster.wait_for_leader();
    fleet.wait_rotations(1);
    fleet.idp.set_delay(Duration::ZERO);
    fleet.wait_rotations(2);
    fleet.wait_all_live();
    fleet.stop_all();
    fleet.assert_one_request_per_rotation();
}

#[test]
fn the_lock_holder_killed_after_its_answer_is_saved_loses_nothing_its_restart_uploads_it() {
    let (mut fleet, holder) = Fleet::with_request_in_flight(2);
    // Its machine loses etcd: the answer is saved locally, the upload cannot happen.
    fleet.machines[holder].link().cut();
    fleet.wait_rotations(1);
    let live = fleet.idp.current_refresh_token();
    let deadline = Instant::now() + WAIT;
    while refresh_token_on_disk(fleet.machines[holder].home.path()).as_deref() != Some(&live) {
        assert!(
            Instant::now() < deadline,
            "the holder did not save the new tokens locally"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    fleet.kill_agent(holder);
    fleet.machines[holder].link().restore();
    fleet.start_agent(holder);
    fleet.wait_all_live();
    fleet.stop_all();
    fleet.assert_one_request_per_rotation();
}

#[test]
fn the_lock_holder_killed_during_its_request_costs_that_rotation_and_the_fleet_stops_cleanly() {
    // The endpoint rotates the token and answers a process that is gone: no protocol can get
    // that answer back. What the fleet must do: wait out the holder's reservation, send the
    // token once more at most, remember the refusal for every machine, and ask for a sign-in.
    let (mut fleet, holder) = Fleet::with_request_in_flight(3);
    fleet.kill_agent(holder);
    fleet.wait_rotations(1);
    fleet.idp.set_delay(Duration::ZERO);
    for (i, machine) in fleet.machines.iter().enumerate() {
        if i == holder {
            continue;
        }
        machine
            .agent
            .as_ref()
            .expect("a running agent")
            .wait_for_stderr_line("failed (sign_in_required)");
    }
    assert_eq!(
        fleet.idp.requests(),
        2,
        "after the lost rotation the fleet should send the dead token once, not {} times",
        fleet.idp.requests() - 1
    );
    fleet.stop_all();
}

#[test]
fn with_etcd_authentication_the_fleet_works_with_its_user_and_is_refused_without_or_outside_its_prefix(
) {
    let cluster = EtcdCluster::start(1);
    let prefix = new_prefix("auth");
    enable_auth(&cluster, &prefix);
    let creds = ChatgptCreds::fresh();
    let home = crate::kit::temp_home();
    creds.write_to(home.path());
    let endpoint = cluster.endpoint(0);
    let seed = |user: Option<&str>, password: &str, prefix: &str| {
        let mut args = vec![
            "fleet",
            "seed",
            "--fleet",
            &endpoint,
            "--fleet-prefix",
            prefix,
        ];
        if let Some(user) = user {
            args.extend(["--fleet-user", user]);
        }
        run(
            home.path(),
            &args,
            None,
            &[("CODEX_STORE_FLEET_PASSWORD", password)],
        )
    };
    let anonymous = seed(None, "", &prefix);
    anonymous.expect_code(exit::OTHER, "without credentials etcd must refuse the seed");
    anonymous.expect_stderr_contains(&["etcd refused the request"], "the refusal must say so");
    let wrong = seed(Some("codex"), "not-the-password", &prefix);
    wrong.expect_code(exit::OTHER, "a wrong password must be refused");
    let outside = seed(Some("codex"), "codex-pw", "/codex-store-tests/someone-else");
    outside.expect_code(
        exit::OTHER,
        "a prefix outside the user's role must be refused",
    );
    outside.expect_stderr_contains(&["permission denied"], "etcd's reason must be shown");
    seed(Some("codex"), "codex-pw", &prefix)
        .expect_code(exit::OK, "the fleet's user must be able to seed its prefix");
    let args = [
        "inspect",
        "--json",
        "--fleet",
        &endpoint,
        "--fleet-prefix",
        &prefix,
        "--fleet-user",
        "codex",
    ];
    let report = run(
        home.path(),
        &args,
        None,
        &[("CODEX_STORE_FLEET_PASSWORD", "codex-pw")],
    )
    .json();
    assert_eq!(
        report["fleet"]["account_id"].as_str(),
        Some(creds.account_id.as_str()),
        "inspect --fleet does not show the seeded login: {report}"
    );
    crate::kit::assert_no_secret_leaked();
}

#[test]
fn over_tls_the_fleet_needs_the_ca_and_a_client_certificate_and_then_works() {
    let cluster = EtcdCluster::start_tls();
    let tls = cluster.tls().expect("a TLS cluster");
    let endpoint = cluster.endpoint(0);
    let prefix = new_prefix("tls");
    let creds = ChatgptCreds::fresh();
    let home = crate::kit::temp_home();
    creds.write_to(home.path());
    let ca = tls.ca.to_string_lossy().into_owned();
    let cert = tls.client_cert.to_string_lossy().into_owned();
    let key = tls.client_key.to_string_lossy().into_owned();
    let base = [
        "--fleet",
        endpoint.as_str(),
        "--fleet-prefix",
        prefix.as_str(),
    ];

    let mut args = vec!["fleet", "seed"];
    args.extend(base);
    let untrusted = run(home.path(), &args, None, &[]);
    untrusted.expect_code(
        exit::OTHER,
        "a server certificate of an unknown CA must be refused",
    );
    untrusted.expect_stderr_contains(&["no etcd endpoint of the fleet answered"], "the refusal");

    args.extend(["--fleet-ca", ca.as_str()]);
    let anonymous = run(home.path(), &args, None, &[]);
    anonymous.expect_code(
        exit::OTHER,
        "without a client certificate, etcd (client-cert-auth) must refuse",
    );

    args.extend(["--fleet-cert", cert.as_str()]);
    let half = run(home.path(), &args, None, &[]);
    half.expect_code(
        exit::USAGE,
        "a client certificate without its key is a usage error",
    );

    args.extend(["--fleet-key", key.as_str()]);
    run(home.path(), &args, None, &[]).expect_code(
        exit::OK,
        "with the CA and a client certificate the seed must work",
    );

    let mut inspect = vec!["inspect", "--json"];
    inspect.extend(&args[2..]);
    let report = run(home.path(), &inspect, None, &[]).json();
    assert_eq!(
        report["fleet"]["account_id"].as_str(),
        Some(creds.account_id.as_str()),
        "inspect --fleet over TLS does not show the seeded login: {report}"
    );
}

#[test]
fn after_compaction_an_idle_agent_does_not_spin_on_canceled_watches() {
    let mut fleet = Fleet::new(1, 1, 3600);
    fleet.start_all();
    fleet.wait_all_live();
    // Other keys move etcd's revision past the record's, and a compaction removes the history
    // in between: a watch started from the record's revision would be canceled at once.
    let mut revision = String::new();
    for n in 0..3 {
        let put = fleet
            .cluster
            .post(
                0,
                "/v3/kv/put",
                &json!({"key": base64_of("/elsewhere"), "value": base64_of(n.to_string())}),
            )
            .expect("etcd answers");
        revision = put["header"]["revision"]
            .as_str()
            .expect("a revision")
            .to_owned();
    }
    fleet
        .cluster
        .post(
            0,
            "/v3/kv/compaction",
            &json!({"revision": revision, "physical": true}),
        )
        .expect("compaction");
    // Wake the agent (its file changes), so that it starts a new watch.
    let path = fleet.machines[0].home.path().join("auth.json");
    let bytes = std::fs::read(&path).expect("read auth.json");
    std::fs::write(&path, bytes).expect("rewrite auth.json");
    let before = fleet.machines[0].link().requests();
    std::thread::sleep(Duration::from_secs(2));
    let calls = fleet.machines[0].link().requests() - before;
    assert!(
        calls <= 4,
        "an idle agent made {calls} etcd calls in 2 s after a compaction: it spins on \
         canceled watches"
    );
    fleet.stop_all();
}

#[test]
fn a_dead_token_with_a_later_last_refresh_is_not_uploaded_over_the_fleets_live_one() {
    let mut fleet = Fleet::new(1, 2, 3600);
    // Machine 1 holds an old copy whose refresh token is dead, written by a machine whose
    // clock ran an hour ahead: no clock may decide which token is live.
    let dead = format!("rt_dead_{}", crate::kit::unique("x").replace('-', "_"));
    crate::kit::register_secret(&dead);
    let mut doc: serde_json::Value =
        serde_json::from_str(&fleet.creds.auth_json()).expect("a JSON document");
    doc["tokens"]["refresh_token"] = json!(dead);
    doc["last_refresh"] = json!(codex_store_tests::jwt::rfc3339(
        codex_store_tests::jwt::now_unix() + 3600
    ));
    crate::kit::write_file(
        &fleet.machines[1].home.path().join("auth.json"),
        doc.to_string(),
        0o600,
    );
    fleet.start_all();
    fleet.expect_event(1, "mirrored:");
    fleet.wait_all_live();
    let copies: Vec<String> = std::fs::read_dir(fleet.machines[1].home.path())
        .expect("list machine 1's home")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("auth.json.fleet-replaced."))
        .collect();
    assert_eq!(
        copies.len(),
        1,
        "the replaced auth.json must be kept beside it, once: {copies:?}"
    );
    fleet.stop_all();
    let out = fleet.run_on(0, &["inspect", "--json"]);
    assert_eq!(
        out.json()["fleet"]["refresh_token"].as_str(),
        Some(fingerprint(&fleet.creds.refresh_token).as_str()),
        "the fleet's live token was replaced by an older one"
    );
}

#[test]
fn logout_on_the_fleet_signs_every_machine_out_and_another_account_here_is_left_alone() {
    let mut fleet = Fleet::new(1, 3, 3600);
    // Machine 2 has its own login of another account.
    let other = ChatgptCreds::fresh();
    other.write_to(fleet.machines[2].home.path());
    fleet.start_all();
    fleet.expect_event(1, "mirrored:");
    fleet.expect_event(2, "another_account_here");
    assert_eq!(
        refresh_token_on_disk(fleet.machines[2].home.path()),
        Some(other.refresh_token.clone()),
        "the fleet's login replaced another account's login on machine 2"
    );
    fleet
        .run_on(0, &["logout"])
        .expect_code(exit::OK, "logout --fleet failed");
    fleet.expect_event(1, "fleet_signed_out");
    assert!(
        !fleet.machines[1].home.path().join("auth.json").exists(),
        "machine 1 still holds the fleet's login after logout --fleet"
    );
    assert_eq!(
        refresh_token_on_disk(fleet.machines[2].home.path()),
        Some(other.refresh_token.clone()),
        "logout --fleet removed another account's login on machine 2"
    );
    fleet.stop_all();
}

#[test]
fn inspect_reports_a_fleet_record_that_is_not_a_document_as_a_problem() {
    let fleet = Fleet::new(1, 1, 3600);
    let key = base64_of(format!("{}/auth.json", fleet.prefix));
    fleet
        .cluster
        .post(
            0,
            "/v3/kv/put",
            &json!({"key": key, "value": base64_of("{not json")}),
        )
        .expect("put");
    let out = fleet.run_on(0, &["inspect", "--json"]);
    out.expect_code(exit::OK, "inspect must report, not fail");
    let problems = out.json()["problems"].to_string();
    assert!(
        problems.contains("not a valid auth.json"),
        "inspect does not report the unreadable record: {problems}"
    );
}

#[test]
fn login_with_an_api_key_on_the_fleet_reaches_every_machine() {
    let mut fleet = Fleet::new(1, 2, 3600);
    fleet.start_all();
    fleet.wait_all_live();
    let key = crate::kit::api_key();
    let args = fleet.args(0, &["login", "--with-api-key"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(fleet.machines[0].home.path(), &args, Some(&key), &[]);
    out.expect_code(exit::OK, "login --with-api-key --fleet failed");
    out.expect_stdout_contains(&["fleet's login"], "the login must say the fleet got it");
    let path = fleet.machines[1].home.path().join("auth.json");
    let deadline = Instant::now() + PROPAGATION;
    while !std::fs::read_to_string(&path).is_ok_and(|text| text.contains(&key)) {
        assert!(
            Instant::now() < deadline,
            "machine 1 did not receive the API key signed in on machine 0 within \
             {PROPAGATION:?}; agents:\n{}",
            fleet.agent_logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    fleet.stop_all();
    crate::kit::assert_no_secret_leaked();
}

// ---------------------------------------------------------------------------------------------
// Fencing without clocks (issue 16): a holder's reservation lives exactly as long as its own
// lease, whatever the clocks and settings of any machine; a holder checks its send deadline (on
// the boot-time clock), its lease and its reservation immediately before it sends.
// ---------------------------------------------------------------------------------------------

/// Machine 0 (with `--http-timeout holder_timeout`) sends the due token and its answer takes
/// 12 s; its link to etcd is cut, so its lock expires while its request is in flight; `tamper`
/// re-dates its reservation; then machine 1 (4 s) starts. Machine 1 must not send the token
/// while machine 0's request may be in flight: the fleet ends on the live token with every
/// token presented once.
fn in_flight_holder_is_waited_for(holder_timeout: &'static str, tamper: Option<i64>) {
    let mut fleet = Fleet::new(1, 2, 1);
    fleet.machines[0].set_option("--http-timeout", holder_timeout);
    fleet.machine_0_in_flight(Duration::from_secs(12));
    fleet.machines[0].link().cut();
    if let Some(offset) = tamper {
        let now = std::time::SystemTime::now();
        let at = if offset < 0 {
            now - Duration::from_secs(offset.unsigned_abs())
        } else {
            now + Duration::from_secs(offset.unsigned_abs())
        };
        fleet.date_redeeming(at);
    }
    fleet.start_agent(1);
    // Machine 0 gets its answer and saves it; once its link is back it uploads it.
    fleet.wait_live_on(0);
    // From now on the endpoint answers at once: the tokens machine 0 uploads are already due
    // (they were issued when its request arrived), so machine 1 refreshes them as soon as it
    // has mirrored them, and a 12 s answer would outlast its 4 s timeout again and again.
    fleet
        .idp
        .set_behavior(codex_store_tests::fake_idp::Behavior::Normal);
    fleet.machines[0].link().restore();
    fleet.wait_all_live_after_a_fault();
    fleet.stop_all();
    fleet.assert_no_token_presented_twice();
    fleet.assert_one_request_per_rotation();
}

#[test]
fn a_holder_whose_clock_runs_two_minutes_late_is_waited_for_while_its_request_is_in_flight() {
    in_flight_holder_is_waited_for("20s", Some(-120));
}

#[test]
fn a_holder_with_a_longer_http_timeout_than_the_next_is_waited_for_while_its_request_is_in_flight()
{
    in_flight_holder_is_waited_for("20s", None);
}

#[test]
fn a_dead_holder_whose_clock_runs_an_hour_ahead_holds_the_fleet_back_only_while_its_lease_lives() {
    let mut fleet = Fleet::new(1, 2, 1);
    // Rotated on receipt, answered long after the holder is gone: the answer is lost.
    fleet.machine_0_in_flight(Duration::from_secs(60));
    fleet.date_redeeming(std::time::SystemTime::now() + Duration::from_secs(3600));
    fleet.kill_agent(0);
    fleet.start_agent(1);
    // Its reservation lives 4 s + 3 s + a margin: machine 1 sends the token once more after
    // that (the lost rotation costs a sign-in), not an hour later.
    assert!(
        fleet.idp.wait_for_requests(2, WAIT),
        "machine 1 did not send once the dead holder's reservation expired: it waited on that \
         machine's clock; agents:\n{}",
        fleet.agent_logs()
    );
    fleet.machines[1]
        .agent
        .as_ref()
        .expect("a running agent")
        .wait_for_stderr_line("failed (sign_in_required)");
    assert_eq!(
        fleet.idp.requests(),
        2,
        "the dead token must be sent once more at most; agents:\n{}",
        fleet.agent_logs()
    );
    fleet.stop_all();
}

#[test]
fn a_holder_stopped_between_its_reservation_and_its_request_sends_nothing_when_it_resumes() {
    let mut fleet = Fleet::new(1, 2, 1);
    // Machine 0's write locks are held: its refresh reserves in the fleet, then waits for them
    // before it may send (the local check after reserving).
    let worker = crate::kit::helper("store-worker");
    let mut holder = codex_store_tests::process::Process::spawn(
        &worker,
        [
            "hold-write-locks".as_ref(),
            fleet.machines[0].home.path().as_os_str(),
        ],
    );
    holder.expect_line("locked");
    fleet.start_agent(0);
    fleet.wait_redeeming();
    let pid = fleet.machines[0].agent.as_ref().expect("an agent").id();
    let signal = |name: &str| {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .expect("cannot run kill");
        assert!(status.success(), "kill -{name} {pid} failed");
    };
    // Stopped (a suspended laptop, SIGSTOP): its lease and its reservation run out.
    signal("STOP");
    holder.close_stdin();
    holder.expect_line("released");
    fleet.start_agent(1);
    fleet.wait_rotations(1);
    fleet.wait_live_on(1);
    signal("CONT");
    fleet.wait_all_live_after_a_fault();
    fleet.stop_all();
    fleet.assert_no_token_presented_twice();
    fleet.assert_one_request_per_rotation();
}

#[test]
fn a_sign_out_on_the_lock_holder_during_its_request_still_gives_its_answer_to_the_fleet() {
    let mut fleet = Fleet::new(1, 2, 1);
    fleet
        .idp
        .set_behavior(codex_store_tests::fake_idp::Behavior::late_winner(
            Duration::from_secs(3),
        ));
    fleet.start_all();
    assert!(
        fleet.idp.wait_for_requests(1, WAIT),
        "no machine sent a refresh request"
    );
    let holder = fleet.lock_holder();
    let other = 1 - holder;
    // The user signs out on the holder while its request is in flight.
    let out = run(fleet.machines[holder].home.path(), &["logout"], None, &[]);
    out.expect_code(exit::OK, "logout on the lock holder");
    // The answer is the fleet's only live token: it must reach the record, and so the other
    // machine, although the holder's auth.json no longer takes it.
    fleet.wait_live_on(other);
    fleet.stop_all();
    fleet.assert_no_token_presented_twice();
    fleet.assert_one_request_per_rotation();
}

#[test]
fn a_copy_of_an_older_login_with_a_token_this_machine_never_saw_is_not_uploaded() {
    let mut fleet = Fleet::new(1, 2, 3600);
    fleet.idp.set_access_token_lifetime(3600 * 2);
    fleet.start_all();
    fleet.wait_all_live();
    let live = fleet.idp.current_refresh_token();
    // An older login of the same account (its access token expires before the fleet's),
    // holding a refresh token no machine saw: a copy from elsewhere, a backup.
    let older = ChatgptCreds {
        refresh_token: format!(
            "rt_older_copy_{}",
            crate::kit::unique("x").replace('-', "_")
        ),
        ..fleet.creds.with_new_access_token(1800)
    };
    codex_store_tests::secrets::register_secret(&older.refresh_token);
    older.write_to(fleet.machines[0].home.path());
    fleet.machines[0]
        .agent
        .as_ref()
        .expect("a running agent")
        .wait_for_stderr_line("idle (fleet_conflict)");
    assert_eq!(
        fleet.record_refresh_token().as_deref(),
        Some(live.as_str()),
        "the older copy was uploaded over the fleet's live token"
    );
    assert_eq!(
        refresh_token_on_disk(fleet.machines[1].home.path()).as_deref(),
        Some(live.as_str()),
        "the other machine lost the live token"
    );
    fleet.stop_all();
}

#[test]
fn a_storm_of_local_changes_opens_no_new_etcd_watches_on_a_fleet_machine() {
    // Tokens not due for a long while: only the storm happens.
    let mut fleet = Fleet::new(1, 1, 3600);
    fleet.idp.set_access_token_lifetime(3600 * 2);
    fleet.start_all();
    fleet.wait_all_live();
    let auth = fleet.home(0).join("auth.json");
    // Let the agent settle into its wait (its first watch is open), then count.
    let deadline = Instant::now() + WAIT;
    while fleet.inspect(0)["agent"]["state"] != "waiting" {
        assert!(
            Instant::now() < deadline,
            "the agent never settled into waiting; agent:\n{}",
            fleet.agent_logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = fleet.machines[0].link().requests();
    let started = Instant::now();
    let mut touches = 0u64;
    while started.elapsed() < Duration::from_secs(2) {
        rustix::fs::utimensat(
            rustix::fs::CWD,
            &auth,
            &rustix::fs::Timestamps {
                last_access: rustix::fs::Timespec {
                    tv_sec: 0,
                    tv_nsec: rustix::fs::UTIME_NOW,
                },
                last_modification: rustix::fs::Timespec {
                    tv_sec: 0,
                    tv_nsec: rustix::fs::UTIME_NOW,
                },
            },
            rustix::fs::AtFlags::empty(),
        )
        .expect("touch auth.json");
        touches += 1;
    }
    let during = fleet.machines[0].link().requests() - before;
    // The agent looks at most every 100 ms: 20 looks in 2 s. Before, each look opened a new
    // watch (a new etcd request, a new connection); now one watch serves the whole wait.
    assert!(
        during <= 4,
        "{touches} touches of auth.json in 2 s made the agent send {during} etcd requests: a \
         storm of local changes must not open new watches; agent:\n{}",
        fleet.agent_logs()
    );
    fleet.stop_all();
}
