//! One login across machines (issue 11): simulated machines (separate homes, one
//! `codex-store agent --fleet` each, Codex stand-ins on each) sharing one login through a real
//! etcd started by the test, against the fake token endpoint enforcing rotation.
//!
//! Each machine reaches etcd through a TCP proxy of its own, so that a test can take one machine
//! offline. Orders are made by waiting for events (agent lines, requests the endpoint counted,
//! files holding a token); every wait is bounded.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::kit::{exit, register_last_issued, run, spawn, ChatgptCreds, Running};
use codex_store_tests::codex_sim::refresh_token_on_disk;
use codex_store_tests::etcd::EtcdCluster;
use codex_store_tests::fake_idp::FakeIdp;
use codex_store_tests::tcp_proxy::TcpProxy;
use serde_json::json;
use tempfile::TempDir;

const URL_ENV: &str = "CODEX_REFRESH_TOKEN_URL_OVERRIDE";
const LEAD: i64 = 310;
/// Tokens issued for this long: the agents (lead 310 s) rotate 3 s after each issue.
const LIFETIME: i64 = LEAD + 3;
/// The fleet lock's lease in these tests: a crashed holder frees it within this.
const LOCK_TTL: &str = "3s";
/// The bound on any one wait; it only turns a hang into a failure.
const WAIT: Duration = Duration::from_secs(30);
/// How soon every machine must hold the live token after a rotation.
const PROPAGATION: Duration = Duration::from_secs(10);

/// One simulated machine: its home, its link to etcd, its agent.
struct Machine {
    name: String,
    home: TempDir,
    link: TcpProxy,
    agent: Option<Running>,
}

/// M machines on one fleet.
struct Fleet {
    machines: Vec<Machine>,
    idp: FakeIdp,
    creds: ChatgptCreds,
    prefix: String,
    cluster: EtcdCluster,
}

impl Fleet {
    /// `m` machines on a cluster of `members`, the fleet seeded from machine 0 with a login due
    /// for the agents in `due_in` seconds.
    fn new(members: usize, m: usize, due_in: i64) -> Fleet {
        let cluster = EtcdCluster::start(members);
        let creds = ChatgptCreds::expiring_in(LEAD + due_in);
        let idp = creds.start_idp();
        idp.set_access_token_lifetime(LIFETIME);
        let prefix = format!("/codex-store-tests/{}", crate::kit::unique("fleet"));
        let machines = (0..m)
            .map(|i| Machine {
                name: format!("machine-{i}"),
                home: crate::kit::temp_home(),
                // Through the first member; a machine's agent fails over to the others.
                link: TcpProxy::start(cluster.endpoint(0).trim_start_matches("http://")),
                agent: None,
            })
            .collect();
        let fleet = Fleet {
            machines,
            idp,
            creds,
            prefix,
            cluster,
        };
        fleet.creds.write_to(fleet.machines[0].home.path());
        let args = fleet.args(0, &["fleet", "seed"]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(fleet.machines[0].home.path(), &args, None, &[]);
        out.expect_code(exit::OK, "seeding the fleet failed");
        fleet
    }

    /// `rest`, then the fleet options of machine `i`.
    fn args(&self, i: usize, rest: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = rest.iter().map(|a| (*a).to_owned()).collect();
        args.extend([
            "--fleet".to_owned(),
            self.endpoints(i),
            "--fleet-prefix".to_owned(),
            self.prefix.clone(),
            "--machine".to_owned(),
            self.machines[i].name.clone(),
            "--fleet-lock-ttl".to_owned(),
            LOCK_TTL.to_owned(),
        ]);
        args
    }

    /// Machine `i`'s endpoints: its link first, then the other members directly.
    fn endpoints(&self, i: usize) -> String {
        let mut all = vec![self.machines[i].link.url()];
        let members = self.cluster.endpoints();
        all.extend(members.split(',').skip(1).map(str::to_owned));
        all.join(",")
    }

    fn start_agent(&mut self, i: usize) {
        let args = self.args(i, &["agent", "--lead", "310"]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let url = self.idp.url();
        let agent = spawn(
            self.machines[i].home.path(),
            &args,
            None,
            &[(URL_ENV, &url)],
        );
        agent.wait_for_stderr_line("started");
        self.machines[i].agent = Some(agent);
    }

    fn stop_agent(&mut self, i: usize) -> String {
        let Some(agent) = self.machines[i].agent.take() else {
            return String::new();
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(agent.id().to_string())
            .status();
        let out = agent.finish(Duration::from_secs(10));
        out.expect_code(
            exit::OK,
            &format!("{}'s agent did not stop cleanly", self.machines[i].name),
        );
        out.stderr
    }

    /// Waits until every machine's auth.json holds the endpoint's live refresh token; how long
    /// that took. Panics after [`PROPAGATION`], naming the machines that lag.
    fn wait_all_live(&self) -> Duration {
        let started = Instant::now();
        loop {
            let live = self.idp.current_refresh_token();
            let lagging: Vec<&str> = self
                .machines
                .iter()
                .filter(|m| refresh_token_on_disk(m.home.path()).as_deref() != Some(live.as_str()))
                .map(|m| m.name.as_str())
                .collect();
            if lagging.is_empty() {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < PROPAGATION,
                "{lagging:?} do not hold the live token {PROPAGATION:?} after the rotation; \
                 agents:\n{}",
                self.agent_logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn agent_logs(&self) -> String {
        self.machines
            .iter()
            .filter_map(|m| {
                m.agent
                    .as_ref()
                    .map(|a| format!("{}:\n{}", m.name, a.stderr()))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until the endpoint rotated `n` times in all.
    fn wait_rotations(&self, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.idp.successes() < n {
            assert!(
                Instant::now() < deadline,
                "the fleet rotated {} time(s) in {WAIT:?}, expected {n}; agents:\n{}",
                self.idp.successes(),
                self.agent_logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The guarantees after a run: one request per rotation, no reuse refusal.
    #[track_caller]
    fn assert_one_request_per_rotation(&self) {
        register_last_issued(&self.idp);
        assert_eq!(
            self.idp.requests(),
            self.idp.successes(),
            "the endpoint read {} requests for {} rotations: every rotation must take exactly \
             one request fleet-wide; agents:\n{}",
            self.idp.requests(),
            self.idp.successes(),
            self.agent_logs()
        );
        assert_eq!(
            self.idp.reuse_refusals(),
            0,
            "a machine redeemed a used refresh token; agents:\n{}",
            self.agent_logs()
        );
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for machine in &mut self.machines {
            if let Some(agent) = machine.agent.take() {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(agent.id().to_string())
                    .status();
            }
        }
    }
}

#[test]
fn three_machines_with_codex_processes_make_one_request_per_rotation_and_all_hold_the_live_token() {
    let mut fleet = Fleet::new(1, 3, 2);
    for i in 0..fleet.machines.len() {
        fleet.start_agent(i);
    }
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
    for i in 0..fleet.machines.len() {
        fleet.stop_agent(i);
    }
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
    let key = base64_of(&format!("{}/lock", fleet.prefix));
    let put = fleet.cluster.post(
        0,
        "/v3/kv/put",
        &json!({"key": key, "value": base64_of("crashed pid 1"), "lease": lease}),
    );
    assert!(put.is_some(), "could not plant the crashed holder's lock");
    for i in 0..fleet.machines.len() {
        fleet.start_agent(i);
    }
    fleet.wait_rotations(1);
    fleet.wait_all_live();
    for i in 0..fleet.machines.len() {
        fleet.stop_agent(i);
    }
    fleet.assert_one_request_per_rotation();
}

#[test]
fn a_machine_offline_during_two_rotations_catches_up_and_sends_nothing_meanwhile() {
    let mut fleet = Fleet::new(1, 3, 2);
    for i in 0..fleet.machines.len() {
        fleet.start_agent(i);
    }
    fleet.wait_rotations(1);
    fleet.wait_all_live();
    fleet.machines[2].link.cut();
    let before = fleet.idp.successes();
    fleet.wait_rotations(before + 2);
    fleet.machines[2].link.restore();
    let delay = fleet.wait_all_live();
    for i in 0..fleet.machines.len() {
        fleet.stop_agent(i);
    }
    fleet.assert_one_request_per_rotation();
    eprintln!("the offline machine caught up {delay:?} after its link came back");
}

#[test]
fn a_rotation_made_on_one_machine_outside_the_agent_is_uploaded_and_adopted_fleet_wide() {
    // Tokens not due for a long while: only the out-of-band rotation happens.
    let mut fleet = Fleet::new(1, 3, 3600);
    fleet.idp.set_access_token_lifetime(3600 * 2);
    for i in 0..fleet.machines.len() {
        fleet.start_agent(i);
    }
    // A Codex process on machine 1 refreshes on its own (forced).
    let sim = crate::kit::helper("codex-sim");
    let status = Command::new(&sim)
        .args(["--force", "--no-wait"])
        .env("CODEX_HOME", fleet.machines[1].home.path())
        .env(URL_ENV, fleet.idp.url())
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run codex-sim");
    assert_eq!(
        status.code(),
        Some(codex_store_tests::codex_sim::exit::SAVED),
        "the Codex stand-in did not save its rotation"
    );
    fleet.machines[1]
        .agent
        .as_ref()
        .expect("machine 1's agent")
        .wait_for_stderr_line("uploaded:");
    fleet.wait_all_live();
    for i in 0..fleet.machines.len() {
        fleet.stop_agent(i);
    }
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
    for i in 0..fleet.machines.len() {
        fleet.start_agent(i);
    }
    // The leader dies while the first refresh request is in flight.
    assert!(
        fleet.idp.wait_for_requests(1, WAIT),
        "no machine sent a refresh request"
    );
    let leader = fleet.cluster.wait_for_leader();
    fleet.cluster.kill(leader);
    fleet.cluster.restart(stopped);
    fleet.cluster.wait_for_leader();
    fleet.wait_rotations(1);
    fleet.idp.set_delay(Duration::ZERO);
    fleet.wait_rotations(2);
    fleet.wait_all_live();
    for i in 0..fleet.machines.len() {
        fleet.stop_agent(i);
    }
    fleet.assert_one_request_per_rotation();
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

impl Fleet {
    /// The machine whose agent holds the fleet lock now (from `inspect --fleet`).
    fn lock_holder(&self) -> usize {
        let deadline = Instant::now() + WAIT;
        loop {
            let args = self.args(0, &["inspect", "--json"]);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = run(self.machines[0].home.path(), &args, None, &[]);
            let holder = out.json()["fleet"]["lock_holder"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_default();
            if let Some(i) = self
                .machines
                .iter()
                .position(|m| holder.starts_with(&format!("{} ", m.name)))
            {
                return i;
            }
            assert!(
                Instant::now() < deadline,
                "no machine holds the fleet lock while a request is in flight"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs machine `i`'s agent.
    fn kill_agent(&mut self, i: usize) {
        let agent = self.machines[i].agent.take().expect("a running agent");
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(agent.id().to_string())
            .status();
        let _ = agent.finish(WAIT);
    }
}

#[test]
fn the_lock_holder_killed_after_its_answer_is_saved_loses_nothing_its_restart_uploads_it() {
    let mut fleet = Fleet::new(1, 2, 1);
    fleet.idp.set_delay(Duration::from_secs(2));
    for i in 0..fleet.machines.len() {
        fleet.start_agent(i);
    }
    assert!(
        fleet.idp.wait_for_requests(1, WAIT),
        "no machine sent a refresh request"
    );
    let holder = fleet.lock_holder();
    // Its machine loses etcd: the answer is saved locally, the upload cannot happen.
    fleet.machines[holder].link.cut();
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
    fleet.machines[holder].link.restore();
    fleet.start_agent(holder);
    fleet.wait_all_live();
    for i in 0..fleet.machines.len() {
        fleet.stop_agent(i);
    }
    fleet.assert_one_request_per_rotation();
}

#[test]
fn the_lock_holder_killed_during_its_request_costs_that_rotation_and_the_fleet_stops_cleanly() {
    // The endpoint rotates the token and answers a process that is gone: no protocol can get
    // that answer back. What the fleet must do: wait out the holder's reservation, send the
    // token once more at most, remember the refusal for every machine, and ask for a sign-in.
    let mut fleet = Fleet::new(1, 3, 1);
    fleet.idp.set_delay(Duration::from_secs(2));
    for i in 0..fleet.machines.len() {
        fleet.start_agent(i);
    }
    assert!(
        fleet.idp.wait_for_requests(1, WAIT),
        "no machine sent a refresh request"
    );
    let holder = fleet.lock_holder();
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
    for i in 0..fleet.machines.len() {
        fleet.stop_agent(i);
    }
}
