//! Real etcd for the fleet tests: one or three members on loopback ports, each with a
//! temporary data directory, started by the tests themselves.
//!
//! `etcd` must be on PATH (Debian: `apt-get install etcd-server`; `.ci/run` installs it). Without
//! it the kit panics naming the package: a fleet test never skips.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::http::{Client, Post};

/// How long a member may take to answer after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one request to a member's gateway may take (the bound a raw socket had: 2 s to
/// connect, then 2 s for the answer).
const GATEWAY_TIMEOUT: Duration = Duration::from_secs(4);

/// The largest gateway answer read.
const MAX_GATEWAY_ANSWER: usize = 16 * 1024 * 1024;

/// The `etcd` binary on PATH. Panics, naming the package, when there is none.
pub fn etcd_binary() -> PathBuf {
    crate::programs::on_path("etcd").unwrap_or_else(|| {
        panic!(
            "etcd is not installed: the fleet tests run a real etcd; install Debian's \
             etcd-server (`apt-get update && apt-get install -y etcd-server`), as .ci/run does"
        )
    })
}

/// The `etcdctl` binary on PATH (installed with etcd; Debian's `etcd-client`). Panics, naming
/// the package, when there is none.
pub fn etcdctl_binary() -> PathBuf {
    crate::programs::on_path("etcdctl").unwrap_or_else(|| {
        panic!(
            "etcdctl is not installed: the snapshot tests need it; install Debian's etcd-client \
             (`apt-get update && apt-get install -y etcd-client`)"
        )
    })
}

fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// One member of a test cluster.
struct Member {
    name: String,
    client: String,
    peer: String,
    child: Option<Child>,
}

/// A cluster of real etcd members; dropping it kills them and removes their data.
pub struct EtcdCluster {
    members: Vec<Member>,
    initial_cluster: String,
    dir: TempDir,
    bin: PathBuf,
    tls: Option<crate::tls::TlsFiles>,
    client: Client,
}

impl EtcdCluster {
    /// Starts `n` members (1 or 3) and waits until the cluster has a leader.
    pub fn start(n: usize) -> EtcdCluster {
        let bin = etcd_binary();
        let dir = tempfile::tempdir().expect("a temp dir for etcd's data");
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: format!("http://127.0.0.1:{}", free_port()),
                peer: format!("http://127.0.0.1:{}", free_port()),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            members,
            initial_cluster,
            dir,
            bin,
            tls: None,
            client: Client::new(),
        };
        for i in 0..n {
            cluster.spawn(i, "new");
        }
        cluster.wait_for_leader();
        cluster
    }

    /// One member serving clients over https only, requiring a client certificate signed by the
    /// test CA; the certificates are in [`EtcdCluster::tls`]. Waits until it serves.
    pub fn start_tls() -> EtcdCluster {
        let bin = etcd_binary();
        let dir = tempfile::tempdir().expect("a temp dir for etcd's data");
        let tls = crate::tls::TlsFiles::generate(dir.path());
        let member = Member {
            name: "m0".into(),
            client: format!("https://127.0.0.1:{}", free_port()),
            peer: format!("http://127.0.0.1:{}", free_port()),
            child: None,
        };
        let initial_cluster = format!("m0={}", member.peer);
        let mut cluster = EtcdCluster {
            members: vec![member],
            initial_cluster,
            dir,
            bin,
            tls: Some(tls),
            client: Client::new(),
        };
        cluster.spawn(0, "new");
        let log = cluster.dir.path().join("m0.log");
        let deadline = Instant::now() + START_TIMEOUT;
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("ready to serve client requests")
        {
            assert!(
                Instant::now() < deadline,
                "etcd with TLS did not start within {START_TIMEOUT:?}; its log: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // The log says so just before the listener serves: one more moment for it.
        let port: u16 = cluster.members[0]
            .client
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a port");
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "etcd's TLS port does not accept");
            std::thread::sleep(Duration::from_millis(20));
        }
        cluster
    }

    /// The certificates of a cluster from [`EtcdCluster::start_tls`].
    pub fn tls(&self) -> Option<&crate::tls::TlsFiles> {
        self.tls.as_ref()
    }

    fn spawn(&mut self, i: usize, state: &str) {
        let data = self.dir.path().join(&self.members[i].name);
        let m = &self.members[i];
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", m.name)))
            .expect("an etcd log file");
        let mut command = Command::new(&self.bin);
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let child = command
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &m.client])
            .args(["--advertise-client-urls", &m.client])
            .args(["--listen-peer-urls", &m.peer])
            .args(["--initial-advertise-peer-urls", &m.peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", "codex-store-tests"])
            // Quick elections, so that a killed leader is replaced within a second or two.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start etcd {}: {e}", self.bin.display()));
        self.members[i].child = Some(child);
    }

    /// The client URLs of the members, comma-separated (for `--fleet`).
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| m.client.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client URL of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        self.members[i].client.clone()
    }

    /// The process ids of the running members, in member order (a member stopped by
    /// [`EtcdCluster::kill`] and not restarted is left out): each is the `etcd` process itself,
    /// so that a bench can read its CPU time in `/proc/<pid>/stat`.
    pub fn pids(&self) -> Vec<u32> {
        self.members
            .iter()
            .filter_map(|m| m.child.as_ref().map(Child::id))
            .collect()
    }

    /// `POST /v3/maintenance/status` on the member at `client`.
    fn status(&self, client: &str) -> Option<Value> {
        post_json(&self.client, client, "/v3/maintenance/status", "{}")
    }

    /// `POST path` with a JSON `body` on member `i` (for a test that plays a crashed lock holder):
    /// the answer's JSON, whatever its status; `None` when there is none (a member down, an
    /// `https` member).
    pub fn post(&self, i: usize, path: &str, body: &Value) -> Option<Value> {
        post_json(
            &self.client,
            &self.members[i].client,
            path,
            &body.to_string(),
        )
    }

    /// The index of the leader, as the running members report it.
    pub fn leader(&self) -> Option<usize> {
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            let Some(status) = self.status(&m.client) else {
                continue;
            };
            let leader = status.get("leader").and_then(Value::as_str)?.to_owned();
            for (i, other) in self.members.iter().enumerate() {
                if other.child.is_none() {
                    continue;
                }
                let id = self.status(&other.client).and_then(|s| {
                    s.get("header")?
                        .get("member_id")?
                        .as_str()
                        .map(str::to_owned)
                });
                if id.as_deref() == Some(leader.as_str()) {
                    return Some(i);
                }
            }
        }
        None
    }

    /// Waits until the running members have a leader. Panics after [`START_TIMEOUT`], with the
    /// members' logs.
    pub fn wait_for_leader(&self) -> usize {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(leader) = self.leader() {
                return leader;
            }
            assert!(
                Instant::now() < deadline,
                "the etcd cluster has no leader after {START_TIMEOUT:?}; logs in {}",
                self.dir.path().display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again (after [`EtcdCluster::kill`]), with its data.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i, "existing");
    }

    /// Saves a snapshot of member `i`'s data to `path` (`etcdctl snapshot save`): what an
    /// operator's backup holds.
    pub fn snapshot_save(&self, i: usize, path: &std::path::Path) {
        let out = Command::new(etcdctl_binary())
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.members[i].client])
            .args(["snapshot", "save"])
            .arg(path)
            .output()
            .expect("run etcdctl snapshot save");
        assert!(
            out.status.success(),
            "etcdctl snapshot save failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Restores the single member of a one-member cluster from `snapshot`, as an operator
    /// would: stops it, restores the snapshot into a new data directory (`etcdctl snapshot
    /// restore`), puts that directory in place of the old one and starts the member again at the
    /// same ports. Everything written after the snapshot is gone; its revisions go back to the
    /// snapshot's. Waits until it has a leader.
    pub fn restore_snapshot(&mut self, snapshot: &std::path::Path) {
        assert_eq!(
            self.members.len(),
            1,
            "restore_snapshot restores a one-member cluster"
        );
        self.kill(0);
        let m = &self.members[0];
        let data = self.dir.path().join(&m.name);
        let restored = self.dir.path().join(format!("{}.restored", m.name));
        let _ = std::fs::remove_dir_all(&restored);
        let out = Command::new(etcdctl_binary())
            .env("ETCDCTL_API", "3")
            .args(["snapshot", "restore"])
            .arg(snapshot)
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&restored)
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", "codex-store-tests"])
            .args(["--initial-advertise-peer-urls", &m.peer])
            .output()
            .expect("run etcdctl snapshot restore");
        assert!(
            out.status.success(),
            "etcdctl snapshot restore failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::remove_dir_all(&data).expect("remove the member's old data directory");
        std::fs::rename(&restored, &data).expect("put the restored data directory in place");
        self.restart(0);
        self.wait_for_leader();
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// `POST path` with a JSON body to the plain-HTTP member at `member` (`http://host:port`): the
/// answer's JSON, whatever its status.
fn post_json(client: &Client, member: &str, path: &str, body: &str) -> Option<Value> {
    let answer = client
        .post(&Post {
            authority: member.strip_prefix("http://")?,
            path,
            headers: &[],
            body,
            timeout: GATEWAY_TIMEOUT,
            max_answer: MAX_GATEWAY_ANSWER,
        })
        .ok()?;
    serde_json::from_slice(&answer.body).ok()
}
