//! The fleet on etcd, measured (`cargo build --release --workspace --bins && cargo bench -p
//! codex-store-tests --bench fleet`): M machines (separate homes, one `codex-store agent
//! --fleet` each) on one real etcd, against the fake token endpoint enforcing rotation, with
//! tokens that come due for the agents every 3 s. It prints:
//!
//! 1. refresh requests per rotation, fleet-wide (1 is the floor);
//! 2. the propagation delay: from the endpoint's answer until every machine's auth.json holds
//!    the new token (p50, p99), beside the floor of one etcd round trip measured in the same run;
//! 3. etcd round trips (gateway requests, counted by a proxy in front of each machine) per
//!    rotation: of the machine that refreshed, and of each machine that only mirrored.
//!
//! Run without `--bench` (as `cargo test --benches` does), it runs a short smoke version. Exits 1
//! when a correctness check fails (more than one request for a rotation, a reuse refusal).

use std::process::Command;
use std::time::{Duration, Instant};

use codex_store_tests::codex_sim::refresh_token_on_disk;
use codex_store_tests::etcd::EtcdCluster;
use codex_store_tests::fake_idp::FakeIdp;
use codex_store_tests::http::{Client, Post};
use codex_store_tests::jwt;
use codex_store_tests::process::Process;
use codex_store_tests::programs::built;
use codex_store_tests::stats::Summary;
use codex_store_tests::tcp_proxy::TcpProxy;

const URL_ENV: &str = "CODEX_REFRESH_TOKEN_URL_OVERRIDE";
const LEAD: i64 = 310;
const ACCOUNT: &str = "acc-bench-fleet";
const EMAIL: &str = "bench@example.com";
const PLAN: &str = "pro";
const INITIAL_RT: &str = "rt_bench_fleet_initial";

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (machines, rotations) = if full { (3, 20) } else { (2, 2) };
    let store = built("codex-store", "codex-store-cli");
    println!(
        "fleet benchmark ({}): {machines} machines, {rotations} rotations, one etcd member",
        if full { "full" } else { "smoke" }
    );
    let cluster = EtcdCluster::start(1);
    let member = cluster.endpoint(0);
    // The floor: one gateway round trip (a read of a missing key) through a proxy like the
    // machines'.
    let floor = {
        let proxy = TcpProxy::start(member.trim_start_matches("http://"));
        let client = Client::new();
        let samples: Vec<f64> = (0..50)
            .map(|_| {
                let started = Instant::now();
                let _ = cluster_post(
                    &client,
                    &proxy.url(),
                    "/v3/kv/range",
                    r#"{"key":"Zmxvb3I="}"#,
                );
                started.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        Summary::of(&samples).p50
    };

    let home_creds = {
        let access = jwt::access_token(jwt::now_unix() + LEAD + 1, "at-bench-fleet");
        let id = jwt::id_token(EMAIL, ACCOUNT, PLAN);
        jwt::auth_json(&access, INITIAL_RT, &id, ACCOUNT)
    };
    let idp = FakeIdp::start(ACCOUNT, EMAIL, PLAN, INITIAL_RT);
    idp.set_access_token_lifetime(LEAD + 3);
    let prefix = format!("/codex-store-bench/{}", std::process::id());
    let homes: Vec<tempfile::TempDir> = (0..machines)
        .map(|_| tempfile::tempdir().expect("a temp home"))
        .collect();
    let links: Vec<TcpProxy> = (0..machines)
        .map(|_| TcpProxy::start(member.trim_start_matches("http://")))
        .collect();
    std::fs::write(homes[0].path().join("auth.json"), &home_creds).expect("write auth.json");
    let fleet_args = |i: usize| -> Vec<String> {
        vec![
            "--fleet".into(),
            links[i].url(),
            "--fleet-prefix".into(),
            prefix.clone(),
            "--machine".into(),
            format!("machine-{i}"),
            "--fleet-lock-ttl".into(),
            "10s".into(),
        ]
    };
    let seed = Command::new(&store)
        .arg("--home")
        .arg(homes[0].path())
        .args(["fleet", "seed"])
        .args(fleet_args(0))
        .output()
        .expect("run codex-store fleet seed");
    assert!(
        seed.status.success(),
        "seeding failed: {}",
        String::from_utf8_lossy(&seed.stderr)
    );
    let mut agents: Vec<Process> = (0..machines)
        .map(|i| {
            let mut command = Command::new(&store);
            command
                .arg("--home")
                .arg(homes[i].path())
                .args(["agent", "--lead", &LEAD.to_string()])
                .args(fleet_args(i))
                .env(URL_ENV, idp.url())
                .env_remove("RUST_LOG");
            Process::spawn_command(format!("agent on machine-{i}"), command)
        })
        .collect();

    let mut delays = Vec::new();
    let mut holder_trips = Vec::new();
    let mut mirror_trips = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20 + 6 * rotations as u64);
    let mut seen = 0;
    let mut before: Vec<u64> = links.iter().map(TcpProxy::requests).collect();
    let mut failed = false;
    while seen < rotations {
        assert!(Instant::now() < deadline, "the fleet stopped rotating");
        if idp.successes() <= seen {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        let rotated = Instant::now();
        seen = idp.successes();
        let live = idp.current_refresh_token();
        // Until every machine holds it.
        loop {
            let done = homes
                .iter()
                .all(|h| refresh_token_on_disk(h.path()).as_deref() == Some(live.as_str()));
            if done {
                delays.push(rotated.elapsed().as_secs_f64() * 1e3);
                break;
            }
            if rotated.elapsed() > Duration::from_secs(10) {
                eprintln!("FAIL: rotation {seen} did not reach every machine within 10 s");
                failed = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        // Round trips of this rotation, once it settled (the next one is due 3 s after it).
        std::thread::sleep(Duration::from_millis(500));
        let now: Vec<u64> = links.iter().map(TcpProxy::requests).collect();
        let trips: Vec<u64> = now.iter().zip(&before).map(|(a, b)| a - b).collect();
        if let Some((holder, most)) = trips.iter().enumerate().max_by_key(|(_, t)| **t) {
            holder_trips.push(*most);
            mirror_trips.extend(
                trips
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != holder)
                    .map(|(_, t)| *t),
            );
        }
        before = now;
    }
    for agent in &mut agents {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(agent.id().to_string())
            .status();
        agent.finish(Duration::from_secs(10));
    }
    drop(cluster);

    let requests = idp.requests();
    let rotated = idp.successes();
    println!(
        "requests per rotation: {:.2} ({requests} requests, {rotated} rotations, {} reuse refusals)",
        requests as f64 / rotated.max(1) as f64,
        idp.reuse_refusals()
    );
    if requests != rotated || idp.reuse_refusals() != 0 {
        eprintln!("FAIL: every rotation must take exactly one request and none may be refused");
        failed = true;
    }
    let propagation = Summary::of(&delays);
    println!(
        "propagation to every machine: p50 {:.1} ms | p99 {:.1} ms | floor (one etcd round trip) {:.2} ms | ratio p50/floor {:.0}",
        propagation.p50,
        propagation.p99,
        floor,
        propagation.p50 / floor.max(1e-6)
    );
    let mean = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len().max(1) as f64;
    println!(
        "etcd round trips per rotation: the refreshing machine {:.1} | each mirroring machine {:.1} | fleet-wide {:.1}",
        mean(&holder_trips),
        mean(&mirror_trips),
        mean(&holder_trips) + mean(&mirror_trips) * (machines - 1) as f64
    );
    if failed {
        std::process::exit(1);
    }
}

/// One POST to etcd's gateway at `base` (`http://host:port`); the answer's body.
fn cluster_post(client: &Client, base: &str, path: &str, body: &str) -> Option<Vec<u8>> {
    let answer = client.post(&Post {
        authority: base.strip_prefix("http://")?,
        path,
        headers: &[],
        body,
        timeout: Duration::from_secs(10),
        max_answer: 1024 * 1024,
    });
    answer.ok().map(|a| a.body)
}
