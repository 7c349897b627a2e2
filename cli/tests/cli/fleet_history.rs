//! The fleet's login through history (issue 16, items 3 and 4): an older auth.json restored on one
//! machine, and an etcd restored from a snapshot, never take the fleet's login back in time.
//! Simulated machines (separate homes, one `codex-store agent --fleet` each) share one login
//! through a real etcd started by the test, against the fake token endpoint enforcing rotation.
//!
//! Which token is live is decided by causality only (what each machine last synced, its journal,
//! the revisions), never by clocks. Orders are made by waiting for events (agent lines, requests
//! the endpoint counted, files holding a token); every wait is bounded.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::kit::{exit, fingerprint, register_last_issued, run, spawn, ChatgptCreds, Running};
use codex_store_tests::codex_sim::refresh_token_on_disk;
use codex_store_tests::etcd::EtcdCluster;
use codex_store_tests::fake_idp::FakeIdp;
use codex_store_tests::tcp_proxy::TcpProxy;
use tempfile::TempDir;

const URL_ENV: &str = "CODEX_REFRESH_TOKEN_URL_OVERRIDE";
const LEAD: i64 = 310;
/// Tokens issued for this long: the agents (lead 310 s) rotate 3 s after each issue.
const LIFETIME: i64 = LEAD + 3;
/// Tokens issued for this long are not due again during a test.
const LONG_LIFETIME: i64 = 2 * 3600;
/// The bound on any one wait; it only turns a hang into a failure.
const WAIT: Duration = Duration::from_secs(30);

/// One simulated machine: its home, its link to etcd, its agent.
struct Machine {
    name: String,
    home: TempDir,
    link: TcpProxy,
    agent: Option<Running>,
}

/// Machines on one fleet, on a one-member etcd.
struct Fleet {
    machines: Vec<Machine>,
    idp: FakeIdp,
    creds: ChatgptCreds,
    prefix: String,
    cluster: EtcdCluster,
}

impl Fleet {
    /// `m` machines, the fleet seeded from machine 0 with a login due for the agents in `due_in`
    /// seconds; no agent runs yet.
    fn new(m: usize, due_in: i64) -> Fleet {
        let cluster = EtcdCluster::start(1);
        let creds = ChatgptCreds::expiring_in(LEAD + due_in);
        let idp = creds.start_idp();
        idp.set_access_token_lifetime(LIFETIME);
        let prefix = format!("/codex-store-tests/{}", crate::kit::unique("history"));
        let machines = (0..m)
            .map(|i| Machine {
                name: format!("machine-{i}"),
                home: crate::kit::temp_home(),
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
        fleet
            .run_on(0, &["fleet", "seed"])
            .expect_code(exit::OK, "seeding the fleet failed");
        fleet
    }

    /// `rest`, then the fleet options of machine `i`.
    fn args(&self, i: usize, rest: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = rest.iter().map(|a| (*a).to_owned()).collect();
        args.extend(
            [
                "--fleet",
                &self.machines[i].link.url(),
                "--fleet-prefix",
                &self.prefix,
                "--machine",
                &self.machines[i].name,
                "--fleet-lock-ttl",
                "3s",
                "--http-timeout",
                "4s",
                "--reuse-wait",
                "3s",
            ]
            .map(str::to_owned),
        );
        args
    }

    /// `codex-store ARGS... --fleet ...` on machine `i`, to the end.
    fn run_on(&self, i: usize, rest: &[&str]) -> crate::kit::CliOutput {
        let args = self.args(i, rest);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(self.machines[i].home.path(), &args, None, &[])
    }

    fn start_all(&mut self) {
        for i in 0..self.machines.len() {
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
    }

    fn stop_all(&mut self) {
        for machine in &mut self.machines {
            let Some(agent) = machine.agent.take() else {
                continue;
            };
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(agent.id().to_string())
                .status();
            agent.finish(WAIT).expect_code(
                exit::OK,
                &format!("{}'s agent did not stop cleanly", machine.name),
            );
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

    /// Machine `i`'s agent's stderr so far.
    fn stderr(&self, i: usize) -> String {
        self.machines[i]
            .agent
            .as_ref()
            .map(Running::stderr)
            .unwrap_or_default()
    }

    /// Waits until every machine's auth.json holds the endpoint's live refresh token. Panics
    /// after [`WAIT`], naming the machines that lag.
    fn wait_all_live(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let live = self.idp.current_refresh_token();
            let lagging: Vec<&str> = self
                .machines
                .iter()
                .filter(|m| refresh_token_on_disk(m.home.path()).as_deref() != Some(live.as_str()))
                .map(|m| m.name.as_str())
                .collect();
            if lagging.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{lagging:?} do not hold the live token (refresh {}) {WAIT:?} after the \
                 rotation: it is lost there; agents:\n{}",
                fingerprint(&live),
                self.agent_logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
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

    /// Waits until one of the machines prints, after the first `since[i]` bytes of its stderr,
    /// a line that `wanted` accepts (`expecting` says which, for the failure); returns the
    /// machine and the line.
    fn wait_for_line_after(
        &self,
        since: &[usize],
        expecting: &str,
        wanted: impl Fn(&str) -> bool,
    ) -> (usize, String) {
        let deadline = Instant::now() + WAIT;
        loop {
            for (i, from) in since.iter().enumerate() {
                let stderr = self.stderr(i);
                let found = stderr
                    .get(*from..)
                    .unwrap_or_default()
                    .lines()
                    .find(|line| wanted(line))
                    .map(str::to_owned);
                if let Some(line) = found {
                    return (i, line);
                }
            }
            assert!(
                Instant::now() < deadline,
                "no machine printed {expecting} within {WAIT:?}; agents:\n{}",
                self.agent_logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The lengths of every machine's stderr now: where "after this" starts.
    fn stderr_marks(&self) -> Vec<usize> {
        (0..self.machines.len())
            .map(|i| self.stderr(i).len())
            .collect()
    }

    /// The fingerprint of the fleet record's refresh token (from `inspect --fleet`).
    fn record_refresh(&self) -> Option<String> {
        self.run_on(0, &["inspect", "--json"]).json()["fleet"]["refresh_token"]
            .as_str()
            .map(str::to_owned)
    }

    /// The copies of auth.json kept beside it on machine `i` before the fleet's login replaced
    /// it.
    fn replaced_copies(&self, i: usize) -> Vec<PathBuf> {
        std::fs::read_dir(self.machines[i].home.path())
            .expect("list a machine's home")
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("auth.json.fleet-replaced.")
            })
            .map(|e| e.path())
            .collect()
    }

    fn auth_json(&self, i: usize) -> PathBuf {
        self.machines[i].home.path().join("auth.json")
    }

    /// The guarantees after a run: one request per rotation, no refresh token presented twice.
    #[track_caller]
    fn assert_one_request_per_rotation(&self) {
        register_last_issued(&self.idp);
        assert_eq!(
            self.idp.reuse_refusals(),
            0,
            "a machine presented a used refresh token (the endpoint refused it {} time(s)): the \
             fleet's login went back to a dead token; agents:\n{}",
            self.idp.reuse_refusals(),
            self.agent_logs()
        );
        assert_eq!(
            self.idp.requests(),
            self.idp.successes(),
            "the endpoint read {} requests for {} rotations; agents:\n{}",
            self.idp.requests(),
            self.idp.successes(),
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
fn an_older_auth_json_restored_on_one_machine_is_kept_aside_and_never_replaces_the_live_token() {
    let mut fleet = Fleet::new(3, 2);
    fleet.start_all();
    fleet.wait_rotations(1);
    // The second rotation's token lives long: it is the last one of the test.
    fleet.idp.set_access_token_lifetime(LONG_LIFETIME);
    fleet.wait_all_live();
    // A backup of machine 1's auth.json, taken between the two rotations.
    let backup = std::fs::read(fleet.auth_json(1)).expect("read machine 1's auth.json");
    let old = fleet.idp.current_refresh_token();
    fleet.wait_rotations(2);
    fleet.wait_all_live();
    let live = fleet.idp.current_refresh_token();
    assert_ne!(
        fingerprint(&old),
        fingerprint(&live),
        "the backup was taken after the second rotation: the test lost its premise"
    );
    let marks = fleet.stderr_marks();
    // The backup restored over machine 1's auth.json.
    crate::kit::write_file(&fleet.auth_json(1), &backup, 0o600);

    // Either it uploads the older token (the defect), or it reports what it found.
    let (old_fp, live_fp) = (fingerprint(&old), fingerprint(&live));
    let (machine, line) = fleet.wait_for_line_after(
        &marks,
        "an upload of the older token, or a report of it",
        |l| (l.contains("uploaded:") && l.contains(&old_fp)) || l.contains("older"),
    );
    assert!(
        !line.contains("uploaded:"),
        "{} uploaded the restored older auth.json (refresh {}) as the fleet's login over the \
         live one (refresh {}): {line}; agents:\n{}",
        fleet.machines[machine].name,
        fingerprint(&old),
        fingerprint(&live),
        fleet.agent_logs()
    );
    // Machine 1 says what it found: its auth.json held an older token of the fleet's login, by
    // fingerprint.
    let (reporter, report) = (machine, line);
    assert!(
        reporter == 1 && report.contains(&old_fp) && report.contains(&live_fp),
        "machine 1 must report the older auth.json, naming both refresh tokens by fingerprint \
         ({} here, {} the fleet's); got from {}: {report}",
        fingerprint(&old),
        fingerprint(&live),
        fleet.machines[reporter].name
    );
    fleet.wait_all_live();
    assert_eq!(
        fleet.record_refresh(),
        Some(fingerprint(&live)),
        "the fleet's record no longer holds the live token; agents:\n{}",
        fleet.agent_logs()
    );
    let copies = fleet.replaced_copies(1);
    assert_eq!(
        copies.len(),
        1,
        "machine 1 must keep the restored auth.json beside the fleet's login, once: {copies:?}"
    );
    let kept = std::fs::read(&copies[0]).expect("read the kept copy");
    assert_eq!(
        kept, backup,
        "the kept copy on machine 1 is not the restored auth.json"
    );
    for i in [0, 2] {
        assert!(
            fleet.replaced_copies(i).is_empty(),
            "{}'s auth.json was replaced although it held the live token",
            fleet.machines[i].name
        );
    }
    fleet.stop_all();
    fleet.assert_one_request_per_rotation();
}

#[test]
fn an_etcd_restored_from_a_snapshot_before_two_rotations_is_repaired_with_the_live_token() {
    let mut fleet = Fleet::new(3, 2);
    // The operator's backup of etcd, taken when the fleet was seeded.
    let backup_dir = crate::kit::temp_home();
    let snapshot = backup_dir.path().join("etcd.snapshot");
    fleet.cluster.snapshot_save(0, &snapshot);
    let seeded = fleet.creds.refresh_token.clone();
    fleet.start_all();
    fleet.wait_rotations(1);
    // The second rotation's token lives long: it is the last one of the test.
    fleet.idp.set_access_token_lifetime(LONG_LIFETIME);
    fleet.wait_rotations(2);
    fleet.wait_all_live();
    let live = fleet.idp.current_refresh_token();

    let marks = fleet.stderr_marks();
    fleet.cluster.restore_snapshot(&snapshot);
    // The agents' watches broke with the member: a rewrite of each auth.json with the same bytes
    // (as a Codex process saving unchanged tokens) makes each agent look at the fleet again.
    for i in 0..fleet.machines.len() {
        let path = fleet.auth_json(i);
        let bytes = std::fs::read(&path).expect("read auth.json");
        crate::kit::write_file(&path, bytes, 0o600);
    }

    // Either a machine mirrors the restored record (the defect), or one uploads what descends
    // from it.
    let seeded_fp = fingerprint(&seeded);
    let (machine, line) = fleet.wait_for_line_after(
        &marks,
        "an upload, or a mirror of the restored record",
        |l| l.contains("uploaded:") || (l.contains("mirrored:") && l.contains(&seeded_fp)),
    );
    assert!(
        line.contains("uploaded:") && line.contains(&fingerprint(&live)),
        "after etcd went back to the seeded login (refresh {}), {} did not upload the live token \
         (refresh {}) that descends from it: {line}; agents:\n{}",
        fingerprint(&seeded),
        fleet.machines[machine].name,
        fingerprint(&live),
        fleet.agent_logs()
    );
    fleet.wait_all_live();
    assert_eq!(
        fleet.record_refresh(),
        Some(fingerprint(&live)),
        "the fleet did not converge on the live token; agents:\n{}",
        fleet.agent_logs()
    );
    for (i, from) in marks.iter().enumerate() {
        let stderr = fleet.stderr(i);
        let mirrored_old = stderr[*from..]
            .lines()
            .find(|l| l.contains("mirrored:") && l.contains(&fingerprint(&seeded)));
        assert!(
            mirrored_old.is_none(),
            "{} mirrored the restored, older record over its live token: {mirrored_old:?}",
            fleet.machines[i].name
        );
    }
    fleet.stop_all();
    fleet.assert_one_request_per_rotation();
}
