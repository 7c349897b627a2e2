//! The harness of the fleet tests (`fleet`, `fleet_history`, `fleet_records`, `fleet_watch`,
//! `fleet_commands`): a real etcd started by the test, simulated machines (separate homes, one
//! `codex-store agent --fleet` each) reaching it directly or through a TCP proxy of their own
//! that a test can cut, restore or make hold a request, the fake token endpoint, and etcd's keys
//! read and written directly (not through any machine's link).
//!
//! Every wait is bounded; a bound only turns a hang into a failure.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use crate::kit::{
    exit, fingerprint, run, spawn, temp_home, unique, ChatgptCreds, CliOutput, Running,
};
use codex_store_tests::codex_sim::refresh_token_on_disk;
use codex_store_tests::etcd::EtcdCluster;
use codex_store_tests::fake_idp::FakeIdp;
use codex_store_tests::tcp_proxy::TcpProxy;
use serde_json::{json, Value};
use tempfile::TempDir;

/// The variable that sends a `codex-store` process's refresh requests to the fake endpoint.
pub(crate) const URL_ENV: &str = "CODEX_REFRESH_TOKEN_URL_OVERRIDE";
/// The agents' lead, in seconds (just over Codex's 5 minutes).
pub(crate) const LEAD: i64 = 310;
/// Tokens issued for this long: the agents (lead 310 s) rotate 3 s after each issue.
pub(crate) const LIFETIME: i64 = LEAD + 3;
/// The fleet lock's lease in a [`Setup::rotating`] fleet: a crashed holder frees it within this.
pub(crate) const LOCK_TTL: &str = "3s";
/// The bound on any one wait; it only turns a hang into a failure.
pub(crate) const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// etcd, read and written directly.
// ---------------------------------------------------------------------------------------------

/// A prefix of its own for one test, named after `tag`.
pub(crate) fn new_prefix(tag: &str) -> String {
    format!("/codex-store-tests/{}", unique(tag))
}

/// `bytes` in base64, as etcd's JSON gateway takes keys and values.
pub(crate) fn base64_of(bytes: impl AsRef<[u8]>) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A base64 key or value of etcd's JSON gateway, decoded.
pub(crate) fn base64_decoded(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("etcd's value is base64")
}

/// The end of a prefix range in etcd: the prefix with its last byte incremented.
pub(crate) fn prefix_end(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    if let Some(last) = bytes.last_mut() {
        *last += 1;
    }
    String::from_utf8(bytes).expect("an ASCII prefix")
}

/// One key as etcd holds it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Kv {
    /// Its value, decoded (empty when etcd's answer has none).
    pub(crate) value: Vec<u8>,
    /// The revision of its last put.
    pub(crate) mod_revision: i64,
    /// The lease it is on (`"0"`: none).
    pub(crate) lease: String,
}

/// `key` read from `cluster`'s first member directly: `None` when etcd did not answer,
/// `Some(None)` when it holds no such key.
pub(crate) fn etcd_read(cluster: &EtcdCluster, key: &str) -> Option<Option<Kv>> {
    let answer = cluster.post(0, "/v3/kv/range", &json!({ "key": base64_of(key) }))?;
    let Some(kv) = answer
        .get("kvs")
        .and_then(Value::as_array)
        .and_then(|kvs| kvs.first())
    else {
        return Some(None);
    };
    Some(Some(Kv {
        value: base64_decoded(kv["value"].as_str().unwrap_or("")),
        mod_revision: kv["mod_revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .expect("a mod_revision"),
        lease: kv["lease"].as_str().unwrap_or("0").to_owned(),
    }))
}

/// `key` read from `cluster`'s first member directly, which must answer; `None` when it holds no
/// such key.
pub(crate) fn etcd_get(cluster: &EtcdCluster, key: &str) -> Option<Kv> {
    etcd_read(cluster, key).expect("etcd answers a range")
}

/// Puts `value` under `key` (on `lease`, if any) directly: etcd's answer, `None` when it did not
/// answer.
pub(crate) fn etcd_put_on(
    cluster: &EtcdCluster,
    key: &str,
    value: impl AsRef<[u8]>,
    lease: Option<&str>,
) -> Option<Value> {
    let mut body = json!({"key": base64_of(key), "value": base64_of(value)});
    if let Some(lease) = lease {
        body["lease"] = json!(lease);
    }
    cluster.post(0, "/v3/kv/put", &body)
}

/// Puts `value` under `key` directly (a writer that is not a machine under test); etcd's
/// revision after the put.
pub(crate) fn etcd_put(cluster: &EtcdCluster, key: &str, value: impl AsRef<[u8]>) -> i64 {
    let answer = etcd_put_on(cluster, key, value, None).expect("etcd answers a put");
    answer["header"]["revision"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("a put answered without a revision: {answer}"))
}

/// The refresh token of the fleet record of `prefix` (`<prefix>/auth.json`), read from etcd
/// directly; `None` when there is no record, or it is not a document holding one.
pub(crate) fn record_refresh_token(cluster: &EtcdCluster, prefix: &str) -> Option<String> {
    let kv = etcd_get(cluster, &format!("{prefix}/auth.json"))?;
    let doc: Value = serde_json::from_slice(&kv.value).ok()?;
    doc["tokens"]["refresh_token"].as_str().map(str::to_owned)
}

/// Enables etcd's authentication with a root user (`root-pw`) and a user `codex` (`codex-pw`)
/// who may read and write `prefix/` only.
pub(crate) fn enable_auth(cluster: &EtcdCluster, prefix: &str) {
    let within = format!("{prefix}/");
    let calls = [
        (
            "/v3/auth/user/add",
            json!({"name": "root", "password": "root-pw"}),
        ),
        (
            "/v3/auth/user/grant",
            json!({"user": "root", "role": "root"}),
        ),
        ("/v3/auth/role/add", json!({"name": "codex"})),
        (
            "/v3/auth/role/grant",
            json!({"name": "codex", "perm": {
                "permType": "READWRITE",
                "key": base64_of(&within),
                "range_end": base64_of(prefix_end(&within)),
            }}),
        ),
        (
            "/v3/auth/user/add",
            json!({"name": "codex", "password": "codex-pw"}),
        ),
        (
            "/v3/auth/user/grant",
            json!({"user": "codex", "role": "codex"}),
        ),
        ("/v3/auth/enable", json!({})),
    ];
    for (path, body) in calls {
        let answer: Option<Value> = cluster.post(0, path, &body);
        assert!(
            answer.as_ref().is_some_and(|a| a.get("error").is_none()),
            "setting up etcd's authentication failed at {path}: {answer:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// One machine.
// ---------------------------------------------------------------------------------------------

/// One simulated machine: its home, its way to etcd, its agent.
pub(crate) struct Machine {
    pub(crate) name: String,
    pub(crate) home: TempDir,
    /// Its TCP proxy to etcd's first member; `None` for a machine that reaches etcd directly.
    link: Option<TcpProxy>,
    /// Its `--fleet` endpoints: its link (or else the first member) first, then the other
    /// members directly.
    endpoints: String,
    /// The options its commands get after the fleet's `--fleet`, `--fleet-prefix` and
    /// `--machine`.
    options: Vec<String>,
    pub(crate) agent: Option<Running>,
}

impl Machine {
    /// A machine called `name` whose link goes to `cluster`'s first member, without further
    /// options.
    pub(crate) fn new(cluster: &EtcdCluster, name: &str) -> Machine {
        Machine::linked(cluster, name, Vec::new())
    }

    /// A machine whose link goes to `cluster`'s first member (its agent fails over to the other
    /// members directly), its commands getting `options`.
    fn linked(cluster: &EtcdCluster, name: &str, options: Vec<String>) -> Machine {
        let link = TcpProxy::start(cluster.endpoint(0).trim_start_matches("http://"));
        let mut endpoints = vec![link.url()];
        endpoints.extend(cluster.endpoints().split(',').skip(1).map(str::to_owned));
        Machine {
            name: name.to_owned(),
            home: temp_home(),
            link: Some(link),
            endpoints: endpoints.join(","),
            options,
            agent: None,
        }
    }

    /// A machine that reaches `cluster`'s members directly, its commands getting `options`.
    fn direct(cluster: &EtcdCluster, name: &str, options: Vec<String>) -> Machine {
        Machine {
            name: name.to_owned(),
            home: temp_home(),
            link: None,
            endpoints: cluster.endpoints(),
            options,
            agent: None,
        }
    }

    /// Its link to etcd, which a test can cut, restore or make hold a request.
    pub(crate) fn link(&self) -> &TcpProxy {
        self.link.as_ref().expect("a machine with a link to etcd")
    }

    /// Sets the value of its option `name` (one it was given) to `value`.
    pub(crate) fn set_option(&mut self, name: &str, value: &str) {
        let at = self
            .options
            .iter()
            .position(|o| o == name)
            .unwrap_or_else(|| panic!("{} has no option {name}", self.name));
        self.options[at + 1] = value.to_owned();
    }

    /// `rest`, then the options of the fleet at `prefix` for this machine, then its own.
    pub(crate) fn args(&self, prefix: &str, rest: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = rest.iter().map(|a| (*a).to_owned()).collect();
        args.extend([
            "--fleet".to_owned(),
            self.endpoints.clone(),
            "--fleet-prefix".to_owned(),
            prefix.to_owned(),
            "--machine".to_owned(),
            self.name.clone(),
        ]);
        args.extend(self.options.iter().cloned());
        args
    }

    /// `codex-store REST... --fleet ...` on this machine (the fleet at `prefix`), to the end.
    pub(crate) fn run(
        &self,
        prefix: &str,
        rest: &[&str],
        stdin: Option<&str>,
        envs: &[(&str, &str)],
    ) -> CliOutput {
        let args = self.args(prefix, rest);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(self.home.path(), &args, stdin, envs)
    }

    /// Starts this machine's agent on the fleet at `prefix` (lead [`LEAD`], with `extra` options
    /// and `envs`); returns when it said `started`.
    pub(crate) fn start_agent(&mut self, prefix: &str, extra: &[&str], envs: &[(&str, &str)]) {
        let lead = format!("{LEAD}s");
        let mut rest = vec!["agent", "--lead", lead.as_str()];
        rest.extend(extra);
        let args = self.args(prefix, &rest);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let agent = spawn(self.home.path(), &args, None, envs);
        agent.wait_for_stderr_line("started");
        self.agent = Some(agent);
    }

    /// Its running agent.
    pub(crate) fn agent(&self) -> &Running {
        self.agent.as_ref().expect("a running agent")
    }

    /// Waits for the agent's next stderr line containing `needle`.
    pub(crate) fn expect_event(&self, needle: &str) -> String {
        self.agent().wait_for_stderr_line(needle)
    }

    /// SIGTERMs its agent, if one runs, which must exit 0 within `within`; the agent's stderr.
    pub(crate) fn stop_agent(&mut self, within: Duration) -> String {
        let Some(agent) = self.agent.take() else {
            return String::new();
        };
        signal(agent.id(), "TERM");
        let out = agent.finish(within);
        out.expect_code(
            exit::OK,
            &format!("{}'s agent did not stop cleanly", self.name),
        );
        out.stderr
    }

    /// Waits until auth.json holds `refresh`. Panics after [`WAIT`] with the agent's log.
    pub(crate) fn wait_for_refresh_token(&self, refresh: &str, why: &str) {
        wait_for(
            Duration::from_millis(20),
            || refresh_token_on_disk(self.home.path()).as_deref() == Some(refresh),
            || {
                format!(
                    "{}: {why}: its auth.json does not hold the fleet's new login {WAIT:?} after \
                     the seed; its agent:\n{}",
                    self.name,
                    self.agent().stderr()
                )
            },
        );
    }

    /// How many times the agent reported its watch of the fleet record failing so far.
    pub(crate) fn watch_failures(&self) -> usize {
        self.agent()
            .stderr()
            .lines()
            .filter(|l| l.contains("failed (fleet_watch):") && l.contains("next attempt"))
            .count()
    }
}

/// Polls `done` every `every` until it holds; after [`WAIT`], panics with `failure()`.
#[track_caller]
fn wait_for(every: Duration, mut done: impl FnMut() -> bool, failure: impl Fn() -> String) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "{}", failure());
        std::thread::sleep(every);
    }
}

/// `kill -NAME pid`, whatever comes of it.
fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

// ---------------------------------------------------------------------------------------------
// Machines on one fleet.
// ---------------------------------------------------------------------------------------------

/// How [`Fleet::start`] sets a fleet up.
pub(crate) struct Setup {
    /// etcd's members.
    pub(crate) members: usize,
    /// How many machines.
    pub(crate) machines: usize,
    /// The seeded login's access token expires this many seconds from now.
    pub(crate) expires_in: i64,
    /// The endpoint issues access tokens for this many seconds.
    pub(crate) lifetime: i64,
    /// Names the fleet's prefix.
    pub(crate) tag: &'static str,
    /// Whether each machine reaches etcd through a link of its own (else directly).
    pub(crate) links: bool,
    /// The options every command of every machine gets after the fleet's.
    pub(crate) options: Vec<String>,
    /// How long a SIGTERMed agent may take to exit.
    pub(crate) stop_within: Duration,
}

impl Setup {
    /// `machines` machines on a cluster of `members`, each through a link of its own; the login
    /// is due for the agents in `due_in` seconds and each token after it 3 s after its issue;
    /// short fencing options (the lock's lease [`LOCK_TTL`], `--http-timeout 4s`, which a
    /// machine may change, `--reuse-wait 3s`); a stopped agent exits within 10 s.
    pub(crate) fn rotating(members: usize, machines: usize, due_in: i64) -> Setup {
        Setup {
            members,
            machines,
            expires_in: LEAD + due_in,
            lifetime: LIFETIME,
            tag: "fleet",
            links: true,
            options: [
                "--fleet-lock-ttl",
                LOCK_TTL,
                // Short, so that a holder's reservation is waited out in seconds.
                "--http-timeout",
                "4s",
                "--reuse-wait",
                "3s",
            ]
            .map(str::to_owned)
            .to_vec(),
            stop_within: Duration::from_secs(10),
        }
    }
}

/// Machines on one fleet, seeded from machine 0; their agents are killed when it is dropped.
pub(crate) struct Fleet {
    pub(crate) machines: Vec<Machine>,
    pub(crate) idp: FakeIdp,
    pub(crate) creds: ChatgptCreds,
    pub(crate) prefix: String,
    pub(crate) cluster: EtcdCluster,
    /// How long a SIGTERMed agent may take to exit.
    stop_within: Duration,
}

impl Fleet {
    /// [`Setup::rotating`]: `m` machines on a cluster of `members`, the login due for the agents
    /// in `due_in` seconds; no agent runs yet.
    pub(crate) fn new(members: usize, m: usize, due_in: i64) -> Fleet {
        Fleet::start(Setup::rotating(members, m, due_in))
    }

    /// A fleet set up as `setup` says, seeded from machine 0; no agent runs yet.
    pub(crate) fn start(setup: Setup) -> Fleet {
        let cluster = EtcdCluster::start(setup.members);
        let creds = ChatgptCreds::expiring_in(setup.expires_in);
        let idp = creds.start_idp();
        idp.set_access_token_lifetime(setup.lifetime);
        let prefix = new_prefix(setup.tag);
        let machines = (0..setup.machines)
            .map(|i| {
                let name = format!("machine-{i}");
                let options = setup.options.clone();
                if setup.links {
                    Machine::linked(&cluster, &name, options)
                } else {
                    Machine::direct(&cluster, &name, options)
                }
            })
            .collect();
        let fleet = Fleet {
            machines,
            idp,
            creds,
            prefix,
            cluster,
            stop_within: setup.stop_within,
        };
        fleet.creds.write_to(fleet.home(0));
        fleet
            .run_on(0, &["fleet", "seed"])
            .expect_code(exit::OK, "seeding the fleet failed");
        fleet
    }

    /// Machine `i`'s home.
    pub(crate) fn home(&self, i: usize) -> &std::path::Path {
        self.machines[i].home.path()
    }

    /// Machine `i`'s auth.json.
    pub(crate) fn auth_json(&self, i: usize) -> PathBuf {
        self.home(i).join("auth.json")
    }

    /// `rest`, then the fleet options of machine `i`.
    pub(crate) fn args(&self, i: usize, rest: &[&str]) -> Vec<String> {
        self.machines[i].args(&self.prefix, rest)
    }

    /// `codex-store REST... --fleet ...` on machine `i`, to the end.
    pub(crate) fn run_on(&self, i: usize, rest: &[&str]) -> CliOutput {
        self.run_with_input(i, rest, None)
    }

    /// [`Fleet::run_on`] with `stdin`.
    pub(crate) fn run_with_input(&self, i: usize, rest: &[&str], stdin: Option<&str>) -> CliOutput {
        self.machines[i].run(&self.prefix, rest, stdin, &[(URL_ENV, &self.idp.url())])
    }

    /// Starts machine `i`'s agent against the fake endpoint; returns when it said `started`.
    pub(crate) fn start_agent(&mut self, i: usize) {
        let url = self.idp.url();
        let prefix = self.prefix.clone();
        self.machines[i].start_agent(&prefix, &[], &[(URL_ENV, &url)]);
    }

    /// Starts every machine's agent, in order.
    pub(crate) fn start_all(&mut self) {
        for i in 0..self.machines.len() {
            self.start_agent(i);
        }
    }

    /// SIGTERMs machine `i`'s agent, if one runs, which must exit 0; its stderr.
    pub(crate) fn stop_agent(&mut self, i: usize) -> String {
        let within = self.stop_within;
        self.machines[i].stop_agent(within)
    }

    /// Stops every machine's agent, in order.
    pub(crate) fn stop_all(&mut self) {
        for i in 0..self.machines.len() {
            self.stop_agent(i);
        }
    }

    /// SIGKILLs machine `i`'s agent.
    pub(crate) fn kill_agent(&mut self, i: usize) {
        let agent = self.machines[i].agent.take().expect("a running agent");
        signal(agent.id(), "KILL");
        let _ = agent.finish(WAIT);
    }

    /// Machine `i`'s running agent.
    pub(crate) fn agent(&self, i: usize) -> &Running {
        self.machines[i].agent()
    }

    /// Waits until machine `i`'s agent reports `needle` on stderr; the line.
    pub(crate) fn expect_event(&self, i: usize, needle: &str) -> String {
        self.machines[i].expect_event(needle)
    }

    /// Every running agent's stderr so far, under its machine's name.
    pub(crate) fn agent_logs(&self) -> String {
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
    pub(crate) fn stderr(&self, i: usize) -> String {
        self.machines[i]
            .agent
            .as_ref()
            .map(Running::stderr)
            .unwrap_or_default()
    }

    /// The lengths of every machine's stderr now: where "after this" starts.
    pub(crate) fn stderr_marks(&self) -> Vec<usize> {
        (0..self.machines.len())
            .map(|i| self.stderr(i).len())
            .collect()
    }

    /// Waits until one of the machines prints, after the first `since[i]` bytes of its stderr,
    /// a line that `wanted` accepts (`expecting` says which, for the failure); returns the
    /// machine and the line.
    pub(crate) fn wait_for_line_after(
        &self,
        since: &[usize],
        expecting: &str,
        wanted: impl Fn(&str) -> bool,
    ) -> (usize, String) {
        let mut found = None;
        wait_for(
            Duration::from_millis(20),
            || {
                found = since.iter().enumerate().find_map(|(i, from)| {
                    let stderr = self.stderr(i);
                    let line = stderr.get(*from..)?.lines().find(|line| wanted(line))?;
                    Some((i, line.to_owned()))
                });
                found.is_some()
            },
            || {
                format!(
                    "no machine printed {expecting} within {WAIT:?}; agents:\n{}",
                    self.agent_logs()
                )
            },
        );
        found.expect("a line")
    }

    /// Waits until `done` holds, at most [`WAIT`]; panics with `what` and the agents' logs.
    #[track_caller]
    pub(crate) fn wait_until(&self, what: &str, done: impl FnMut() -> bool) {
        wait_for(Duration::from_millis(20), done, || {
            format!("{what} within {WAIT:?}; agents:\n{}", self.agent_logs())
        });
    }

    /// Waits until the endpoint rotated `n` times in all.
    pub(crate) fn wait_rotations(&self, n: usize) {
        wait_for(
            Duration::from_millis(20),
            || self.idp.successes() >= n,
            || {
                format!(
                    "the fleet rotated {} time(s) in {WAIT:?}, expected {n}; agents:\n{}",
                    self.idp.successes(),
                    self.agent_logs()
                )
            },
        );
    }

    /// Waits until every machine's auth.json holds the endpoint's live refresh token; how long
    /// that took. After `within`, panics with `lagging(machines that lag, the live token)`.
    pub(crate) fn wait_all_live_within(
        &self,
        within: Duration,
        lagging: impl Fn(&[&str], &str) -> String,
    ) -> Duration {
        let started = Instant::now();
        loop {
            let live = self.idp.current_refresh_token();
            let lag: Vec<&str> = self
                .machines
                .iter()
                .filter(|m| refresh_token_on_disk(m.home.path()).as_deref() != Some(live.as_str()))
                .map(|m| m.name.as_str())
                .collect();
            if lag.is_empty() {
                return started.elapsed();
            }
            assert!(started.elapsed() < within, "{}", lagging(&lag, &live));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until machine `i` holds the endpoint's live refresh token.
    pub(crate) fn wait_live_on(&self, i: usize) {
        wait_for(
            Duration::from_millis(10),
            || {
                refresh_token_on_disk(self.home(i)).as_deref()
                    == Some(self.idp.current_refresh_token().as_str())
            },
            || {
                format!(
                    "{} did not save the live token; agents:\n{}",
                    self.machines[i].name,
                    self.agent_logs()
                )
            },
        );
    }

    /// The machine whose agent holds the fleet lock now (from `inspect --fleet`).
    pub(crate) fn lock_holder(&self) -> usize {
        let mut found = None;
        wait_for(
            Duration::from_millis(20),
            || {
                let out = self.run_on(0, &["inspect", "--json"]);
                let holder = out.json()["fleet"]["lock_holder"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_default();
                found = self
                    .machines
                    .iter()
                    .position(|m| holder.starts_with(&format!("{} ", m.name)));
                found.is_some()
            },
            || "no machine holds the fleet lock while a request is in flight".to_owned(),
        );
        found.expect("a lock holder")
    }

    /// `inspect --json --fleet` on machine `i`, which must report.
    pub(crate) fn inspect(&self, i: usize) -> Value {
        let out = self.run_on(i, &["inspect", "--json"]);
        out.expect_code(exit::OK, "inspect --fleet must report");
        out.json()
    }

    /// The fingerprint of the fleet record's refresh token (from `inspect --fleet`).
    pub(crate) fn record_refresh(&self) -> Option<String> {
        self.run_on(0, &["inspect", "--json"]).json()["fleet"]["refresh_token"]
            .as_str()
            .map(str::to_owned)
    }

    /// The fleet record's refresh token, read from etcd.
    pub(crate) fn record_refresh_token(&self) -> Option<String> {
        record_refresh_token(&self.cluster, &self.prefix)
    }

    /// The copies of auth.json kept beside it on machine `i` before the fleet's login replaced
    /// it.
    pub(crate) fn replaced_copies(&self, i: usize) -> Vec<PathBuf> {
        crate::kit::entries_starting_with(self.home(i), "auth.json.fleet-replaced.")
            .iter()
            .map(|name| self.home(i).join(name))
            .collect()
    }

    /// Writes `value` under `<prefix>/<name>` directly in etcd (on `lease`, if any).
    pub(crate) fn put(&self, name: &str, value: &[u8], lease: Option<&str>) {
        let key = format!("{}/{name}", self.prefix);
        let answer = etcd_put_on(&self.cluster, &key, value, lease);
        assert!(
            answer.as_ref().is_some_and(|a| a.get("error").is_none()),
            "could not write {name} in etcd: {answer:?}"
        );
    }

    /// A lease of `ttl` seconds that nobody renews; its id.
    pub(crate) fn lease(&self, ttl: u64) -> String {
        self.cluster
            .post(0, "/v3/lease/grant", &json!({"TTL": ttl.to_string()}))
            .and_then(|v| v.get("ID").and_then(Value::as_str).map(str::to_owned))
            .expect("a lease from etcd")
    }

    /// The raw `<prefix>/redeeming` key: its JSON value and its lease, when it exists.
    pub(crate) fn redeeming(&self) -> Option<(Value, String)> {
        let kv = etcd_read(&self.cluster, &format!("{}/redeeming", self.prefix))??;
        Some((
            serde_json::from_slice(&kv.value).expect("the reservation is JSON"),
            kv.lease,
        ))
    }

    /// Waits until the reservation exists; its value and lease.
    pub(crate) fn wait_redeeming(&self) -> (Value, String) {
        let mut found = None;
        wait_for(
            Duration::from_millis(5),
            || {
                found = self.redeeming();
                found.is_some()
            },
            || {
                format!(
                    "no machine reserved the redemption; agents:\n{}",
                    self.agent_logs()
                )
            },
        );
        found.expect("a reservation")
    }

    /// Rewrites the reservation's `at` (what the reserving machine's clock said) to `at`,
    /// keeping its lease: a machine whose clock is wrong.
    pub(crate) fn date_redeeming(&self, at: SystemTime) {
        let (mut mark, lease) = self.wait_redeeming();
        mark["at"] = json!(humantime::format_rfc3339_seconds(at).to_string());
        let put = etcd_put_on(
            &self.cluster,
            &format!("{}/redeeming", self.prefix),
            mark.to_string(),
            Some(&lease),
        );
        assert!(put.is_some(), "could not re-date the reservation");
    }

    /// Panics unless the endpoint read one request per rotation, saying "the endpoint read R
    /// requests for S rotations`why`; agents: ...".
    #[track_caller]
    pub(crate) fn assert_requests_are_rotations(&self, why: &str) {
        assert_eq!(
            self.idp.requests(),
            self.idp.successes(),
            "the endpoint read {} requests for {} rotations{why}; agents:\n{}",
            self.idp.requests(),
            self.idp.successes(),
            self.agent_logs()
        );
    }

    /// Panics unless the endpoint refused no used refresh token, saying "`what`; agents: ...".
    #[track_caller]
    pub(crate) fn assert_no_reuse_refused(&self, what: &str) {
        assert_eq!(
            self.idp.reuse_refusals(),
            0,
            "{what}; agents:\n{}",
            self.agent_logs()
        );
    }

    /// No refresh token was presented twice.
    #[track_caller]
    pub(crate) fn assert_no_token_presented_twice(&self) {
        let presented = self.idp.presented_refresh_tokens();
        let mut seen = std::collections::HashSet::new();
        let twice: Vec<String> = presented
            .iter()
            .filter(|t| !seen.insert(t.as_str()))
            .map(|t| fingerprint(t))
            .collect();
        assert!(
            twice.is_empty(),
            "refresh tokens presented twice (fingerprints) {twice:?}; agents:\n{}",
            self.agent_logs()
        );
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for machine in &mut self.machines {
            if let Some(agent) = machine.agent.take() {
                signal(agent.id(), "KILL");
            }
        }
    }
}
