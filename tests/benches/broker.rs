//! The agent's token broker (`codex-store agent --serve`), measured (`cargo build --release
//! --workspace --bins && cargo bench -p codex-store-tests --bench broker`):
//!
//! 1. the broker's answer latency (p50, p99) for a predecessor token (one this home rotated away
//!    within the grace window: answered with the current tokens, no upstream request), over
//!    sequential requests each on a new connection as Codex sends them, beside its floors
//!    measured in the same run and interleaved with it: a direct read of auth.json (open, read,
//!    parse the JSON), and a loopback round trip of the same request to a trivial server
//!    replaying the broker's answer bytes (same client, same connection pattern). Back to back,
//!    the broker is measured in process (`codex_refresh::Broker` with `rate_per_second: 0`): the
//!    agent's broker keeps the default limit of 64 requests a second in bursts of 64, which the
//!    command line cannot lift, and would throttle a tight loop. Beside it, the same broker on a
//!    home whose journal is full (about 60 KiB, a day-old history before its own records: a
//!    home after months of rotations), which the broker parses again only when it changed.
//!    Then paced, one request every
//!    60 ms to each (under that limit): the agent's own broker (`agent --serve 127.0.0.1:0`, the
//!    release binary, its URL from `inspect --json`) beside the in-process broker and the
//!    round-trip floor, each request after the same idle gap;
//! 2. upstream requests per rotation when K Codex stand-ins (`codex-sim`: Codex's re-read before
//!    its request, its request before any lock, one refresh each) holding one expired token are
//!    released at once (K = 8, 16, 32), against an endpoint answering after 500 ms: pointed at
//!    the endpoint directly; at the agent's broker (`agent --serve`, which refreshes the expired
//!    token itself at start: the stand-ins are released while that request is in flight, so they
//!    present the token being redeemed); and at an in-process broker without an agent and
//!    without a rate limit (it alone refreshes, for the first caller). The floor is 1 request
//!    per rotation. `codex-sim` takes a 429 as a transient failure and does not retry: it exits
//!    holding its old tokens. Those stand-ins are counted apart;
//! 3. the real Codex: K = 8 `codex app-server` processes of `@openai/codex@0.171.0`
//!    (`codex_store_tests::real_codex`, installed with npm on first use) on one expired token in
//!    a fresh home, started at once, against an endpoint answering after 200 ms and the kit's
//!    backend stub: (a) pointed at the endpoint directly, the anchor; (b) pointed at
//!    `agent --serve 127.0.0.1:0` (the release binary), whose own token URL is the endpoint. The
//!    agent refreshes the expired token itself at start; the eight start as soon as it printed
//!    `started`, without waiting for that refresh. For each: the upstream requests, rotations and
//!    reuse refusals; how many Codex processes end holding the live access token (what
//!    `getAuthStatus` answers, after `account/read` was asked whether they are signed out); how
//!    many answer `account: null` and how many logged "already used";
//! 4. a fleet: K Codex stand-ins split over M = 2 machines' brokers (K = 8, 16, 32). A real etcd
//!    (one member, `codex_store_tests::etcd`; `etcd` must be on PATH), a fresh prefix and two
//!    fresh homes per K: machine-0 holds the expired token and seeds the fleet with it
//!    (`fleet seed`), machine-1's home is empty; each machine runs `codex-store agent --fleet
//!    ENDPOINTS --fleet-prefix P --machine machine-i --serve 127.0.0.1:0` (the release binary),
//!    against an endpoint answering after 500 ms. The agents refresh the fleet's expired token at
//!    start (one of them, under the fleet's lock); they reach the endpoint through a proxy that
//!    holds that request until the stand-ins are ready, so that the stand-ins read the expired
//!    token whatever the machine's speed. Once both agents printed `started`, the request was
//!    made and machine-1 mirrored the login, K/2 stand-ins start in each machine's home, pointed
//!    at that machine's broker (the URL it published); they are released at once, and the held
//!    request with them: they present the token being redeemed. Per K: the requests they sent,
//!    the upstream requests, rotations and reuse refusals (the endpoint's, and those the
//!    stand-ins were answered), the stand-ins ending on the live token, 429s (counted apart, as
//!    in section 2), stuck or refused; per machine, how its broker routed them (its agent's log),
//!    whether its auth.json holds the live token; the fleet record's last rotation. The floor is
//!    1 upstream request per rotation.
//!
//! `cargo bench` passes `--bench`: the full version. Run without it (as `cargo test --benches`
//! does, or the bench executable itself), it runs a short smoke version (K = 8, few samples,
//! without section 3). Exits 1 when a correctness check fails: through a broker, more than one
//! upstream request for the rotation, a reuse refusal, a stand-in stuck, refused or failing
//! otherwise than by a 429, auth.json not holding the endpoint's live token; in section 1, an
//! answer that is not 200 with the current tokens, or an upstream request for a predecessor; in
//! section 3, through the agent's broker, an upstream request count other than one, or a Codex
//! process ending without the live access token (the anchor (a) is printed, never checked); in
//! section 4, through the two machines' brokers, an upstream request count or a rotation count
//! other than one, a reuse refusal (by the endpoint, or answered to a stand-in), a stand-in not
//! ending on the live token otherwise than by a 429, a machine's auth.json or the fleet record
//! not holding the live token, or no `etcd` on PATH (named in the message).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use codex_refresh::{Broker, BrokerConfig, BrokerError, BROKER_TOKEN_PATH, CLIENT_ID};
use codex_store_tests::codex_sim::{exit as sim_exit, refresh_token_on_disk};
use codex_store_tests::etcd::EtcdCluster;
use codex_store_tests::fake_idp::FakeIdp;
use codex_store_tests::fixtures::{config, manager, temp_home, ChatgptCreds};
use codex_store_tests::jwt;
use codex_store_tests::process::Process;
use codex_store_tests::programs::built;
use codex_store_tests::real_codex::{
    codex_binary, codex_version, AppServer, BackendStub, CodexSetup,
};
use codex_store_tests::secrets::fingerprint;
use codex_store_tests::stats::Summary;
use codex_store_tests::tcp_proxy::TcpProxy;
use serde_json::Value;

const URL_ENV: &str = "CODEX_REFRESH_TOKEN_URL_OVERRIDE";
const ACCOUNT: &str = "acc-bench-broker";
const EMAIL: &str = "bench-broker@example.com";
const PLAN: &str = "pro";
const INITIAL_RT: &str = "rt_bench_broker_initial";
/// How long the fake endpoint takes to answer in section 2, so that the requests overlap as they
/// do over a real network.
const ENDPOINT_DELAY: Duration = Duration::from_millis(500);
/// The interval between two requests to the agent's broker in section 1 (under its 64 a second);
/// a third of it passes before each request of the paced comparison.
const AGENT_PACE: Duration = Duration::from_millis(60);
/// The bound on any one exchange with a server of this bench.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

struct Plan {
    full: bool,
    ks: Vec<usize>,
    /// Back-to-back rounds of section 1: a predecessor request to the in-process broker and a
    /// sample of each floor.
    samples: usize,
    /// Paced rounds of section 1: a predecessor request to the agent's broker and to the
    /// in-process one, and a round trip to the trivial server.
    agent_samples: usize,
}

struct Bins {
    store: PathBuf,
    sim: PathBuf,
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let plan = if full {
        Plan {
            full,
            ks: vec![8, 16, 32],
            samples: 2000,
            agent_samples: 200,
        }
    } else {
        Plan {
            full,
            ks: vec![8],
            samples: 50,
            agent_samples: 10,
        }
    };
    let bins = Bins {
        store: built("codex-store", "codex-store-cli"),
        sim: built("codex-sim", "codex-store-tests"),
    };
    println!(
        "broker benchmark ({}): codex-store {}",
        if plan.full { "full" } else { "smoke" },
        bins.store.display()
    );
    let mut failed = false;
    failed |= latency(&bins, &plan);
    failed |= requests_per_rotation(&bins, &plan);
    failed |= real_codex(&bins, &plan);
    failed |= fleet_brokers(&bins, &plan);
    if failed {
        eprintln!("a correctness check failed (see above)");
        std::process::exit(1);
    }
}

/// A fresh home holding credentials whose access token expires in `expires_in` seconds
/// (negative: expired), and the endpoint that knows them.
fn signed_in(expires_in: i64) -> (tempfile::TempDir, FakeIdp) {
    let home = tempfile::tempdir().expect("a temp dir for CODEX_HOME");
    let access = jwt::access_token(jwt::now_unix() + expires_in, "at-bench-broker");
    let id = jwt::id_token(EMAIL, ACCOUNT, PLAN);
    std::fs::write(
        home.path().join("auth.json"),
        jwt::auth_json(&access, INITIAL_RT, &id, ACCOUNT),
    )
    .expect("write auth.json");
    (home, FakeIdp::start(ACCOUNT, EMAIL, PLAN, INITIAL_RT))
}

/// The access and refresh token of `home`'s auth.json.
fn tokens_in(home: &Path) -> (String, String) {
    let doc: Value = serde_json::from_slice(
        &std::fs::read(home.join("auth.json")).expect("auth.json is readable"),
    )
    .expect("auth.json is JSON");
    let field = |name: &str| doc["tokens"][name].as_str().unwrap_or_default().to_owned();
    (field("access_token"), field("refresh_token"))
}

// ---------------------------------------------------------------------------------------------
// Brokers: in process, and the agent's
// ---------------------------------------------------------------------------------------------

/// A `codex_refresh::Broker` on an ephemeral port of 127.0.0.1, in a runtime of its own.
struct InProcess {
    runtime: tokio::runtime::Runtime,
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), BrokerError>>,
}

impl InProcess {
    /// Serves `home`, refreshing at `token_url`, `rate_per_second` requests a second (0: no
    /// limit), on two worker threads.
    fn start(home: &Path, token_url: String, rate_per_second: u32) -> InProcess {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("broker")
            .enable_all()
            .build()
            .expect("a runtime for the broker");
        let manager = {
            let _entered = runtime.enter();
            let store = codex_store::Store::open(home).expect("open the store");
            manager(&store, config(token_url))
        };
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind 127.0.0.1:0 for the broker");
        let addr = listener.local_addr().expect("the broker's address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let broker = Broker::new(
            manager,
            BrokerConfig {
                rate_per_second,
                ..BrokerConfig::default()
            },
        );
        let task = runtime.spawn(broker.serve(listener, async move {
            let _ = stopped.await;
        }));
        InProcess {
            runtime,
            addr,
            stop,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}{BROKER_TOKEN_PATH}", self.addr)
    }

    /// Stops it; panics unless `serve` returned `Ok`.
    fn stop(self) {
        let _ = self.stop.send(());
        let served = self
            .runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(20), self.task).await })
            .expect("the in-process broker did not stop within 20 s")
            .expect("the in-process broker's task panicked");
        if let Err(e) = served {
            panic!("the in-process broker ended with an error: {e}");
        }
    }
}

/// `codex-store --home HOME agent --json --serve ADDR`, refreshing at `token_url`, with
/// `RUST_LOG` as given (`None`: unset, the command's default `warn`).
fn spawn_agent(
    bins: &Bins,
    home: &Path,
    token_url: &str,
    addr: &str,
    log: Option<&str>,
) -> Process {
    let mut command = Command::new(&bins.store);
    command
        .arg("--home")
        .arg(home)
        .args(["agent", "--json", "--serve", addr])
        .env(URL_ENV, token_url)
        .env_remove("RUST_LOG");
    if let Some(log) = log {
        command.env("RUST_LOG", log);
    }
    Process::spawn_command("codex-store agent --serve", command)
}

/// The broker URL the agent of `home` published (`inspect --json` → `agent.broker`).
fn published_broker(bins: &Bins, home: &Path) -> String {
    let out = Command::new(&bins.store)
        .arg("--home")
        .arg(home)
        .args(["inspect", "--json"])
        .env_remove("RUST_LOG")
        .output()
        .expect("run codex-store inspect --json");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "inspect --json printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    doc["agent"]["broker"]
        .as_str()
        .unwrap_or_else(|| panic!("the agent published no broker: {doc}"))
        .to_owned()
}

/// The socket address of a broker URL `http://ADDR/oauth/token`.
fn addr_of(url: &str) -> SocketAddr {
    url.strip_prefix("http://")
        .and_then(|rest| rest.strip_suffix(BROKER_TOKEN_PATH))
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("{url:?} is not a broker URL"))
}

// ---------------------------------------------------------------------------------------------
// The client: Codex's request on a new connection
// ---------------------------------------------------------------------------------------------

/// Codex's refresh request presenting `refresh_token` to `addr`: `POST /oauth/token` with its
/// JSON body, `Connection: close`.
fn codex_request(addr: SocketAddr, refresh_token: &str) -> Vec<u8> {
    let body = serde_json::json!({
        "client_id": CLIENT_ID,
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
        "refresh_reason": "proactive_expiry",
    })
    .to_string();
    format!(
        "POST {BROKER_TOKEN_PATH} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Accept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Connects to `addr`, sends `request` and reads the answer until the server closes.
fn round_trip(addr: SocketAddr, request: &[u8]) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&addr, EXCHANGE_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(EXCHANGE_TIMEOUT))?;
    stream.write_all(request)?;
    let mut answer = Vec::with_capacity(4096);
    stream.read_to_end(&mut answer)?;
    Ok(answer)
}

/// The status and the JSON body of an answer (a body that is not JSON is `Null`).
fn parse_answer(answer: &[u8]) -> (u16, Value) {
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(answer.len());
    let head = String::from_utf8_lossy(&answer[..split]);
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer.get(split + 4..).unwrap_or_default();
    (status, serde_json::from_slice(body).unwrap_or(Value::Null))
}

/// One exchange as Codex makes it: the request on a new connection, the answer read and its
/// JSON parsed. Its duration, status and body.
fn timed_exchange(addr: SocketAddr, request: &[u8]) -> (Duration, u16, Value) {
    let started = Instant::now();
    let answer = round_trip(addr, request)
        .unwrap_or_else(|e| panic!("the exchange with {addr} failed: {e}"));
    let (status, body) = parse_answer(&answer);
    (started.elapsed(), status, body)
}

/// Whether `body` is an answer of the tokens `(access, refresh)`.
fn answers(body: &Value, tokens: &(String, String)) -> bool {
    body["access_token"].as_str() == Some(tokens.0.as_str())
        && body["refresh_token"].as_str() == Some(tokens.1.as_str())
        && body["id_token"].as_str().is_some_and(|t| !t.is_empty())
}

/// A trivial HTTP server on 127.0.0.1: on one thread, one connection at a time, it reads a
/// request's head and body and writes `answer`, then closes.
struct Trivial {
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Trivial {
    fn start(answer: Vec<u8>) -> Trivial {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("an address");
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = stopping.clone();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(mut stream) = stream {
                    if read_request(&mut stream).is_ok() {
                        let _ = stream.write_all(&answer);
                    }
                }
            }
        });
        Trivial {
            addr,
            stopping,
            thread: Some(thread),
        }
    }
}

impl Drop for Trivial {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wakes the accept.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads one request: its head, then the `Content-Length` bytes of its body.
fn read_request(stream: &mut TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(EXCHANGE_TIMEOUT))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return Ok(());
            }
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Latency
// ---------------------------------------------------------------------------------------------

fn print_summary(label: &str, summary: &Summary) {
    println!(
        "{label:<58} samples {:>5} | p50 {:>9.1} µs | p99 {:>9.1} µs",
        summary.count, summary.p50, summary.p99
    );
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A direct read of auth.json as Codex makes one: open, read, parse; its duration.
fn read_auth_json(path: &Path) -> Duration {
    let started = Instant::now();
    let bytes = std::fs::read(path).expect("read auth.json");
    let doc: Value = serde_json::from_slice(&bytes).expect("auth.json is JSON");
    let elapsed = started.elapsed();
    assert!(
        doc["tokens"]["refresh_token"].is_string(),
        "the floor read no token"
    );
    elapsed
}

/// Answers to predecessor requests that were not 200 with the current tokens, and 429s.
#[derive(Default)]
struct Checked {
    wrong: usize,
    throttled: usize,
}

impl Checked {
    /// Counts one answer of `who`, which should be 200 with `current`.
    fn check(&mut self, who: &str, status: u16, body: &Value, current: &(String, String)) {
        if status == 429 {
            self.throttled += 1;
        } else if status != 200 || !answers(body, current) {
            self.wrong += 1;
            if self.wrong <= 3 {
                eprintln!("FAIL: {who} answered a predecessor HTTP {status}: {body}");
            }
        }
    }
}

/// A home whose expired initial token the in-process broker refreshed for a first caller, so
/// that it is now a predecessor: the home, its endpoint, the broker and the current tokens.
fn rotated_in_process() -> (tempfile::TempDir, FakeIdp, InProcess, (String, String)) {
    let (home, idp) = signed_in(-60);
    let broker = InProcess::start(home.path(), idp.url(), 0);
    let (status, body) = parse_answer(
        &round_trip(broker.addr, &codex_request(broker.addr, INITIAL_RT))
            .expect("the in-process broker answers"),
    );
    let current = tokens_in(home.path());
    assert!(
        status == 200 && answers(&body, &current) && current.1 != INITIAL_RT,
        "the in-process broker did not refresh the current token: HTTP {status} {body}"
    );
    (home, idp, broker, current)
}

/// Fills the journal of `home` up to about 60 KiB (below its compaction limit of 64 KiB) with
/// rotations of other tokens a day old, before its own records: a home's journal after months
/// of rotations. Returns how many records it then holds.
fn fill_journal(home: &Path) -> usize {
    let path = home.join("auth.json.journal");
    let own = std::fs::read_to_string(&path).expect("the journal of the rotated home");
    let day_ago = codex_store::Timestamp::from_system_time(
        std::time::SystemTime::now() - Duration::from_secs(24 * 3600),
    );
    let mut filler = String::new();
    let mut n = 0usize;
    while filler.len() + own.len() < 60 * 1024 {
        filler.push_str(&format!(
            "{{\"at\":\"{}\",\"pid\":1,\"event\":\"saved\",\"account\":\"acct-bench\",\"refresh\":\"{:012x}\",\"new_refresh\":\"{:012x}\"}}\n",
            day_ago.as_str(),
            n,
            n + 1
        ));
        n += 1;
    }
    std::fs::write(&path, format!("{filler}{own}")).expect("fill the journal");
    n + own.lines().count()
}

/// `agent --serve 127.0.0.1:0` on a home whose expired initial token it refreshed at start, so
/// that it is now a predecessor: the home, its endpoint, the agent, its broker's address and the
/// current tokens.
fn rotated_by_agent(
    bins: &Bins,
) -> (
    tempfile::TempDir,
    FakeIdp,
    Process,
    SocketAddr,
    (String, String),
) {
    let (home, idp) = signed_in(-60);
    let agent = spawn_agent(bins, home.path(), &idp.url(), "127.0.0.1:0", None);
    agent.wait_for_stderr_line("\"started\"");
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokens_in(home.path()).1 == INITIAL_RT {
        assert!(
            Instant::now() < deadline,
            "the agent did not refresh the expired token within 20 s: {}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let addr = addr_of(&published_broker(bins, home.path()));
    let current = tokens_in(home.path());
    (home, idp, agent, addr, current)
}

fn latency(bins: &Bins, plan: &Plan) -> bool {
    println!(
        "\n1. answer latency for a predecessor token: sequential requests, a new connection each, \
         each answer checked (200, the current tokens); the floors interleaved with the brokers"
    );
    // The in-process broker, without a rate limit.
    let (home, idp, broker, current) = rotated_in_process();
    let request = codex_request(broker.addr, INITIAL_RT);
    // The trivial server replays the broker's answer to a predecessor, byte for byte.
    let trivial = Trivial::start(round_trip(broker.addr, &request).expect("the broker answers"));
    let trivial_request = codex_request(trivial.addr, INITIAL_RT);
    let auth_path = home.path().join("auth.json");
    let upstream_before = idp.requests();
    // The same on a home whose journal is full (months of rotations).
    let (full_home, full_idp, full_broker, full_current) = rotated_in_process();
    let full_records = fill_journal(full_home.path());
    let full_request = codex_request(full_broker.addr, INITIAL_RT);
    let full_upstream_before = full_idp.requests();
    let mut checked = Checked::default();
    let mut floor_check = Checked::default();
    let (mut broker_us, mut trivial_us, mut file_us) = (Vec::new(), Vec::new(), Vec::new());
    let mut full_us = Vec::new();
    // The first 20 rounds warm up, not counted.
    for i in 0..plan.samples + 20 {
        let file = read_auth_json(&auth_path);
        let (floor, status, body) = timed_exchange(trivial.addr, &trivial_request);
        floor_check.check("the trivial server", status, &body, &current);
        let (took, status, body) = timed_exchange(broker.addr, &request);
        checked.check("the in-process broker", status, &body, &current);
        let (full_took, status, body) = timed_exchange(full_broker.addr, &full_request);
        checked.check(
            "the in-process broker, full journal",
            status,
            &body,
            &full_current,
        );
        if i >= 20 {
            file_us.push(micros(file));
            trivial_us.push(micros(floor));
            broker_us.push(micros(took));
            full_us.push(micros(full_took));
        }
    }
    let file = Summary::of(&file_us);
    let floor = Summary::of(&trivial_us);
    let inproc = Summary::of(&broker_us);
    let full = Summary::of(&full_us);
    println!("back to back:");
    print_summary("  floor: read auth.json (open, read, parse JSON)", &file);
    print_summary(
        "  floor: loopback round trip, trivial server, same bytes",
        &floor,
    );
    print_summary("  broker in process (Broker, rate_per_second: 0)", &inproc);
    print_summary(
        &format!("  the same, journal full ({full_records} records, ~60 KiB)"),
        &full,
    );
    println!(
        "  broker / round-trip floor: p50 {:.1}x, p99 {:.1}x | broker - round trip (p50): \
         {:.1} µs | broker / auth.json read (p50): {:.0}x",
        inproc.p50 / floor.p50.max(1e-9),
        inproc.p99 / floor.p99.max(1e-9),
        inproc.p50 - floor.p50,
        inproc.p50 / file.p50.max(1e-9),
    );

    // The agent's own broker, paced under its fixed limit; the in-process broker and the floor
    // paced the same way beside it, each request after an idle gap of a third of the pace.
    let (agent_home, agent_idp, mut agent, agent_addr, agent_current) = rotated_by_agent(bins);
    let agent_request = codex_request(agent_addr, INITIAL_RT);
    let agent_upstream_before = agent_idp.requests();
    let mut agent_checked = Checked::default();
    let gap = AGENT_PACE / 3;
    let (mut agent_us, mut paced_broker_us, mut paced_trivial_us) =
        (Vec::new(), Vec::new(), Vec::new());
    // The first 5 rounds warm up, not counted.
    for i in 0..plan.agent_samples + 5 {
        std::thread::sleep(gap);
        let (floor, status, body) = timed_exchange(trivial.addr, &trivial_request);
        floor_check.check("the trivial server", status, &body, &current);
        std::thread::sleep(gap);
        let (took, status, body) = timed_exchange(broker.addr, &request);
        checked.check("the in-process broker", status, &body, &current);
        std::thread::sleep(gap);
        let (agent_took, status, body) = timed_exchange(agent_addr, &agent_request);
        agent_checked.check("the agent's broker", status, &body, &agent_current);
        if i >= 5 {
            paced_trivial_us.push(micros(floor));
            paced_broker_us.push(micros(took));
            agent_us.push(micros(agent_took));
        }
    }
    let upstream = idp.requests() - upstream_before + full_idp.requests() - full_upstream_before;
    let agent_upstream = agent_idp.requests() - agent_upstream_before;
    agent.terminate(Duration::from_secs(10));
    drop(trivial);
    broker.stop();
    full_broker.stop();
    drop((agent_idp, agent_home, idp, home, full_idp, full_home));
    let floor = Summary::of(&paced_trivial_us);
    let inproc = Summary::of(&paced_broker_us);
    let agent = Summary::of(&agent_us);
    println!(
        "paced, one request to each every {} ms (the agent's broker takes at most 64 a second in \
         bursts of 64, BrokerConfig::default(), which `agent --serve` cannot change):",
        AGENT_PACE.as_millis()
    );
    print_summary(
        "  floor: loopback round trip, trivial server, same bytes",
        &floor,
    );
    print_summary("  broker in process (Broker, rate_per_second: 0)", &inproc);
    print_summary("  agent --serve (the codex-store process)", &agent);
    println!(
        "  agent / round-trip floor: p50 {:.1}x, p99 {:.1}x | agent / in process (p50): {:.1}x",
        agent.p50 / floor.p50.max(1e-9),
        agent.p99 / floor.p99.max(1e-9),
        agent.p50 / inproc.p50.max(1e-9),
    );
    println!(
        "checks: in process {} wrong, {} 429, {upstream} upstream request(s) | agent {} wrong, \
         {} 429, {agent_upstream} upstream request(s) | trivial server {} wrong",
        checked.wrong,
        checked.throttled,
        agent_checked.wrong,
        agent_checked.throttled,
        floor_check.wrong
    );
    let failed = checked.wrong + checked.throttled + agent_checked.wrong + agent_checked.throttled
        != 0
        || upstream != 0
        || agent_upstream != 0
        || floor_check.wrong != 0;
    if failed {
        eprintln!(
            "FAIL: a predecessor answered otherwise than 200 with the current tokens, or sent \
             upstream (see the checks above)"
        );
    }
    failed
}

// ---------------------------------------------------------------------------------------------
// 2. Requests per rotation
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The stand-ins at the endpoint.
    Direct,
    /// The stand-ins at `agent --serve`.
    Agent,
    /// The stand-ins at an in-process broker, no agent, no rate limit.
    InProcess,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Direct => "none (endpoint)",
            Mode::Agent => "agent --serve (64/s)",
            Mode::InProcess => "in process, no limit",
        }
    }
}

/// What one run counted.
#[derive(Default)]
struct Counts {
    /// Refresh requests the stand-ins sent (to the endpoint or the broker).
    sent: usize,
    upstream: usize,
    rotations: usize,
    reused: usize,
    /// `refresh_token_reused` answers the stand-ins read (from the endpoint or a broker).
    reuse_answers: usize,
    /// Stand-ins that end holding the endpoint's live refresh token.
    live: usize,
    /// Stand-ins answered 429 (they keep their old tokens).
    throttled: usize,
    stuck_or_refused: usize,
    /// Stand-ins that ended otherwise (dropped tokens, another transient failure, an error).
    other: usize,
    /// Whether auth.json holds the endpoint's live refresh token at the end.
    file_live: bool,
    /// The broker's log (`agent --serve` only): requests routed as the current token, as a
    /// predecessor.
    routes: Option<(usize, usize)>,
    /// What the stand-ins that ended "other" printed, for the report.
    others: Vec<String>,
}

/// A free port of 127.0.0.1, for an agent to bind after the stand-ins that will call it started.
/// (Another process could take it in between: the agent would then exit naming the address.)
fn free_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("an address").to_string()
}

fn spawn_sim(bins: &Bins, home: &Path, url: &str, i: usize) -> Process {
    let mut command = Command::new(&bins.sim);
    command
        .env("CODEX_HOME", home)
        .env(URL_ENV, url)
        .env_remove("RUST_LOG");
    Process::spawn_command(format!("codex-sim #{i}"), command)
}

/// K stand-ins on one expired token, released at once, in `mode`.
fn rotation_run(bins: &Bins, k: usize, mode: Mode) -> Counts {
    let (home, idp) = signed_in(-60);
    idp.set_delay(ENDPOINT_DELAY);
    let idp_url = idp.url();
    let mut in_process = None;
    let mut agent_addr = None;
    let url = match mode {
        Mode::Direct => idp_url.clone(),
        Mode::InProcess => {
            let broker = InProcess::start(home.path(), idp_url.clone(), 0);
            let url = broker.url();
            in_process = Some(broker);
            url
        }
        Mode::Agent => {
            let addr = free_addr();
            let url = format!("http://{addr}{BROKER_TOKEN_PATH}");
            agent_addr = Some(addr);
            url
        }
    };
    let mut sims: Vec<Process> = (0..k)
        .map(|i| spawn_sim(bins, home.path(), &url, i))
        .collect();
    for sim in &sims {
        sim.wait_for_event("ready");
    }
    let agent = agent_addr.map(|addr| {
        let agent = spawn_agent(
            bins,
            home.path(),
            &idp_url,
            &addr,
            Some("codex_refresh=info"),
        );
        agent.wait_for_stderr_line("\"started\"");
        // The agent redeems the expired token at once; the stand-ins go while that request is
        // in flight (the endpoint answers after 500 ms).
        assert!(
            idp.wait_for_requests(1, Duration::from_secs(20)),
            "the agent sent no request for the expired token: {}",
            agent.stderr()
        );
        agent
    });
    for sim in &mut sims {
        sim.go();
    }
    let finished: Vec<(Vec<String>, ExitStatus)> = sims
        .iter_mut()
        .map(|s| {
            let out = s.finish(Duration::from_secs(60));
            (out.lines(), out.status)
        })
        .collect();
    let routes = agent.map(|mut agent| {
        let log = agent.terminate(Duration::from_secs(10));
        (
            log.matches("route=\"current\"").count(),
            log.matches("route=\"predecessor\"").count(),
        )
    });
    if let Some(broker) = in_process {
        broker.stop();
    }
    let live = idp.current_refresh_token();
    let live_fp = fingerprint(&live);
    let mut counts = Counts {
        upstream: idp.requests(),
        rotations: idp.successes(),
        reused: idp.reuse_refusals(),
        file_live: tokens_in(home.path()).1 == live,
        routes,
        ..Counts::default()
    };
    tally(&mut counts, &finished, &live_fp);
    counts
}

/// Counts into `counts` the stand-ins that ended as `finished` says (each one's stdout lines and
/// exit status), against the endpoint's live refresh token of fingerprint `live_fp`: the requests
/// they sent, the reuse refusals they were answered, and how each ended.
fn tally(counts: &mut Counts, finished: &[(Vec<String>, ExitStatus)], live_fp: &str) {
    for (lines, status) in finished {
        counts.sent += lines
            .iter()
            .filter(|l| l.starts_with("requesting "))
            .count();
        counts.reuse_answers += lines
            .iter()
            .filter(|l| l.starts_with("answer ") && l.contains("code=refresh_token_reused"))
            .count();
        let holds_live = lines
            .iter()
            .rev()
            .find(|l| l.starts_with("end "))
            .is_some_and(|end| end.split(' ').any(|kv| kv == format!("rt={live_fp}")));
        let code = status.code();
        if code == Some(sim_exit::TRANSIENT)
            && lines.iter().any(|l| l.starts_with("answer status=429"))
        {
            counts.throttled += 1;
        } else if code == Some(sim_exit::STUCK) || code == Some(sim_exit::REFUSED) {
            counts.stuck_or_refused += 1;
        } else if holds_live
            && matches!(
                code,
                Some(
                    sim_exit::SAVED
                        | sim_exit::ADOPTED_BEFORE_REQUEST
                        | sim_exit::ADOPTED_AFTER_REUSE
                )
            )
        {
            counts.live += 1;
        } else {
            counts.other += 1;
            counts
                .others
                .push(format!("exit {status}: {}", lines.join(" | ")));
        }
    }
}

fn requests_per_rotation(bins: &Bins, plan: &Plan) -> bool {
    println!(
        "\n2. upstream requests per rotation: K Codex stand-ins (codex-sim, one refresh each) on \
         one expired token, released at once; the endpoint answers after {} ms",
        ENDPOINT_DELAY.as_millis()
    );
    println!(
        "{:<4} {:<24} {:>5} {:>9} {:>10} {:>13} {:>7} {:>9} {:>5} {:>14} {:>6}",
        "K",
        "broker",
        "sent",
        "upstream",
        "rotations",
        "req/rotation",
        "reused",
        "live tok",
        "429",
        "stuck/refused",
        "other"
    );
    let mut failed = false;
    let mut notes = Vec::new();
    for &k in &plan.ks {
        for mode in [Mode::Direct, Mode::Agent, Mode::InProcess] {
            let c = rotation_run(bins, k, mode);
            let ratio = c.upstream as f64 / c.rotations.max(1) as f64;
            println!(
                "{k:<4} {:<24} {:>5} {:>9} {:>10} {ratio:>13.2} {:>7} {:>9} {:>5} {:>14} {:>6}",
                mode.name(),
                c.sent,
                c.upstream,
                c.rotations,
                c.reused,
                c.live,
                c.throttled,
                c.stuck_or_refused,
                c.other
            );
            if let Some((current, predecessor)) = c.routes {
                notes.push(format!(
                    "K={k} agent --serve: the broker routed {current} request(s) as the current \
                     token, {predecessor} as a predecessor; {} answered 429",
                    c.throttled
                ));
            }
            for other in &c.others {
                notes.push(format!("K={k} {}: a stand-in ended {other}", mode.name()));
            }
            if mode != Mode::Direct
                && (c.upstream != 1
                    || c.rotations != 1
                    || c.reused != 0
                    || c.stuck_or_refused != 0
                    || c.other != 0
                    || !c.file_live)
            {
                eprintln!(
                    "FAIL: K={k}, {}: {} upstream request(s) for {} rotation(s), {} reuse \
                     refusal(s), {} stand-in(s) stuck or refused, {} ended otherwise, auth.json \
                     {} the live token",
                    mode.name(),
                    c.upstream,
                    c.rotations,
                    c.reused,
                    c.stuck_or_refused,
                    c.other,
                    if c.file_live {
                        "holds"
                    } else {
                        "does not hold"
                    }
                );
                failed = true;
            }
        }
    }
    println!("floor: 1 upstream request per rotation");
    println!(
        "(sent: refresh requests the stand-ins sent, to the endpoint or the broker; live tok: \
         stand-ins that end holding the endpoint's live refresh token; 429: answered 'too many \
         requests' by the broker's limit of 64 a second in bursts of 64, which codex-sim takes as \
         a transient failure: it keeps its old tokens and does not retry)"
    );
    for note in notes {
        println!("{note}");
    }
    failed
}

// ---------------------------------------------------------------------------------------------
// 3. The real Codex
// ---------------------------------------------------------------------------------------------

/// How many `codex app-server` processes section 3 starts at once.
const CODEX_K: usize = 8;
/// How long the fake endpoint takes to answer in section 3.
const CODEX_ENDPOINT_DELAY: Duration = Duration::from_millis(200);
/// The longest the first refresh request of a section 3 run may take to arrive.
const CODEX_FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the Codex processes of section 3 send their refreshes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CodexMode {
    /// At the endpoint: the anchor.
    Direct,
    /// At `agent --serve`.
    Agent,
}

impl CodexMode {
    fn name(self) -> &'static str {
        match self {
            CodexMode::Direct => "(a) none (endpoint)",
            CodexMode::Agent => "(b) agent --serve",
        }
    }
}

/// What one run of section 3 counted.
#[derive(Default)]
struct CodexCounts {
    upstream: usize,
    rotations: usize,
    reused: usize,
    /// Codex processes whose `getAuthStatus` answers the live access token.
    live: usize,
    /// Codex processes whose `account/read` answers `account: null`.
    signed_out: usize,
    /// Codex processes whose stderr says "already used".
    already_used: usize,
    /// Whether auth.json holds the endpoint's live refresh token at the end.
    file_live: bool,
    /// The broker's log (`agent --serve` only): requests routed as the current token, as a
    /// predecessor.
    routes: Option<(usize, usize)>,
    /// Requests of the Codex processes meant for a host other than 127.0.0.1 (refused).
    escapes: usize,
    /// The Codex processes that do not end with the live access token: label and what they hold.
    not_live: Vec<String>,
}

/// K `codex app-server` processes on one expired token in a fresh home, started at once, in
/// `mode`; what they end with.
fn codex_run(bins: &Bins, codex: &Path, mode: CodexMode) -> CodexCounts {
    let creds = ChatgptCreds::expired();
    let home = temp_home();
    creds.write_to(home.path());
    let idp = creds.start_idp();
    idp.set_delay(CODEX_ENDPOINT_DELAY);
    let backend = BackendStub::start(&creds.account_id, &creds.plan);
    let user_home = tempfile::tempdir().expect("a temp dir for the Codex processes' HOME");
    let idp_url = idp.url();
    let agent = (mode == CodexMode::Agent).then(|| {
        let agent = spawn_agent(
            bins,
            home.path(),
            &idp_url,
            "127.0.0.1:0",
            Some("codex_refresh=info"),
        );
        // The agent redeems the expired token at once; the Codex processes start without
        // waiting for that request or its answer.
        agent.wait_for_stderr_line("\"started\"");
        agent
    });
    let token_url = if agent.is_some() {
        published_broker(bins, home.path())
    } else {
        idp_url
    };
    let setup = CodexSetup {
        bin: codex,
        codex_home: home.path(),
        user_home: user_home.path(),
        token_url: &token_url,
        backend: &backend,
    };
    let mut servers: Vec<AppServer> = (1..=CODEX_K)
        .map(|i| AppServer::spawn(&setup, &format!("codex #{i}")))
        .collect();
    assert!(
        idp.wait_for_requests(1, CODEX_FIRST_REQUEST_TIMEOUT),
        "{}: no refresh request reached the endpoint within {CODEX_FIRST_REQUEST_TIMEOUT:?} \
         although the access token had expired",
        mode.name()
    );
    // Signed out first: asking for the token makes a Codex without one look at auth.json again.
    let signed_out = servers
        .iter_mut()
        .map(AppServer::reports_signed_out)
        .filter(|&signed_out| signed_out)
        .count();
    let held: Vec<Option<String>> = servers.iter_mut().map(AppServer::access_token).collect();
    let already_used = servers
        .iter()
        .filter(|server| server.stderr().contains("already used"))
        .count();
    let live_access = idp.last_issued().map(|issued| issued.access_token);
    let mut not_live = Vec::new();
    for (server, token) in servers.iter().zip(&held) {
        if token.is_none() || *token != live_access {
            not_live.push(format!(
                "{} holds {}",
                server.label(),
                token
                    .as_deref()
                    .map_or("no token (authToken null)".to_owned(), fingerprint)
            ));
        }
    }
    // The Codex processes go before the agent, the endpoint and the homes.
    drop(servers);
    let routes = agent.map(|mut agent| {
        let log = agent.terminate(Duration::from_secs(10));
        (
            log.matches("route=\"current\"").count(),
            log.matches("route=\"predecessor\"").count(),
        )
    });
    CodexCounts {
        upstream: idp.requests(),
        rotations: idp.successes(),
        reused: idp.reuse_refusals(),
        live: CODEX_K - not_live.len(),
        signed_out,
        already_used,
        file_live: tokens_in(home.path()).1 == idp.current_refresh_token(),
        routes,
        escapes: backend.escapes().len(),
        not_live,
    }
}

fn real_codex(bins: &Bins, plan: &Plan) -> bool {
    if !plan.full {
        println!(
            "\n3. the real Codex ({CODEX_K} codex app-server processes, without and with the \
             agent's broker): runs with --bench only"
        );
        return false;
    }
    let codex = codex_binary();
    println!(
        "\n3. the real Codex: {CODEX_K} `codex app-server` processes ({}) on one expired token, \
         a fresh home each run, started at once; the endpoint answers after {} ms; (b) starts \
         them as soon as the agent printed `started`, while it redeems the token itself",
        codex_version(&codex),
        CODEX_ENDPOINT_DELAY.as_millis()
    );
    println!(
        "{:<22} {:>9} {:>10} {:>7} {:>9} {:>13} {:>15} {:>10}",
        "broker",
        "upstream",
        "rotations",
        "reused",
        "live tok",
        "account:null",
        "\"already used\"",
        "auth.json"
    );
    let mut failed = false;
    let mut notes = Vec::new();
    for mode in [CodexMode::Direct, CodexMode::Agent] {
        let c = codex_run(bins, &codex, mode);
        println!(
            "{:<22} {:>9} {:>10} {:>7} {:>9} {:>13} {:>15} {:>10}",
            mode.name(),
            c.upstream,
            c.rotations,
            c.reused,
            format!("{}/{CODEX_K}", c.live),
            c.signed_out,
            c.already_used,
            if c.file_live { "live" } else { "NOT live" }
        );
        if let Some((current, predecessor)) = c.routes {
            let unsent = CODEX_K.saturating_sub(current + predecessor);
            notes.push(format!(
                "{}: the broker routed {current} Codex request(s) as the current token, \
                 {predecessor} as a predecessor{}",
                mode.name(),
                if unsent == 0 {
                    String::new()
                } else {
                    format!(" ({unsent} Codex process(es) found auth.json rotated and sent none)")
                }
            ));
        }
        if c.reused != 0 && c.already_used == 0 && c.signed_out == 0 {
            notes.push(format!(
                "{}: the endpoint's {} reuse refusal(s) left no trace in the Codex processes: \
                 none logged \"already used\" on stderr, none answered `account: null`; {}/{} \
                 end with the live token",
                mode.name(),
                c.reused,
                c.live,
                CODEX_K
            ));
        }
        if c.escapes != 0 {
            notes.push(format!(
                "{}: {} request(s) of the Codex processes were meant for a host other than \
                 127.0.0.1 (refused by the stub)",
                mode.name(),
                c.escapes
            ));
        }
        for which in &c.not_live {
            notes.push(format!(
                "{}: {which}, not the live access token",
                mode.name()
            ));
        }
        if mode == CodexMode::Agent && (c.upstream != 1 || c.live != CODEX_K) {
            eprintln!(
                "FAIL: {CODEX_K} codex app-server through the agent's broker: the endpoint read {} \
                 request(s) (one expected), {}/{CODEX_K} Codex processes end with the live access \
                 token",
                c.upstream, c.live
            );
            failed = true;
        }
    }
    println!(
        "(upstream: requests the endpoint read; reused: refused as refresh_token_reused; live \
         tok: Codex processes whose getAuthStatus answers the endpoint's live access token; \
         account:null: answered by account/read, asked first; \"already used\": Codex processes \
         that logged it; auth.json: whether it holds the live refresh token. (a) is the anchor, \
         not checked; (b) must read 1 request and end with every Codex on the live token)"
    );
    for note in notes {
        println!("{note}");
    }
    failed
}

// ---------------------------------------------------------------------------------------------
// 4. A fleet: the stand-ins split over two machines' brokers
// ---------------------------------------------------------------------------------------------

/// How many machines the fleet of section 4 has.
const FLEET_MACHINES: usize = 2;
/// The bound on each wait of section 4 for a condition (the seed, an agent's start, the fleet's
/// refresh made, a mirror, the rotation reaching a machine); it only turns a hang into a failure.
const FLEET_WAIT: Duration = Duration::from_secs(30);

/// How one machine's broker routed the requests it read (its agent's log: `route=...`).
#[derive(Default)]
struct Routes {
    current: usize,
    predecessor: usize,
    spent: usize,
    unknown: usize,
}

impl Routes {
    fn of(log: &str) -> Routes {
        let count = |route: &str| log.matches(&format!("route=\"{route}\"")).count();
        Routes {
            current: count("current"),
            predecessor: count("predecessor"),
            spent: count("spent"),
            unknown: count("unknown"),
        }
    }
}

/// What one machine of a section 4 run counted.
struct MachineRun {
    /// Its stand-ins, pointed at its broker.
    stand_ins: usize,
    /// How its stand-ins ended ([`tally`]).
    counts: Counts,
    routes: Routes,
    /// Whether its auth.json came to hold the endpoint's live refresh token.
    file_live: bool,
}

/// What one run of section 4 counted.
struct FleetRun {
    machines: Vec<MachineRun>,
    upstream: usize,
    rotations: usize,
    /// The endpoint's `refresh_token_reused` refusals.
    reused: usize,
    /// Whether the fleet record in etcd holds the endpoint's live refresh token.
    record_live: bool,
    /// The record's last rotation (`<prefix>/rotation`): its kind and machine.
    last_rotation: String,
}

impl FleetRun {
    /// The stand-ins of every machine, counted together.
    fn total(&self) -> Counts {
        let mut total = Counts {
            upstream: self.upstream,
            rotations: self.rotations,
            reused: self.reused,
            ..Counts::default()
        };
        for m in &self.machines {
            total.sent += m.counts.sent;
            total.reuse_answers += m.counts.reuse_answers;
            total.live += m.counts.live;
            total.throttled += m.counts.throttled;
            total.stuck_or_refused += m.counts.stuck_or_refused;
            total.other += m.counts.other;
        }
        total
    }
}

/// `codex-store --home HOME agent --json --serve 127.0.0.1:0 --fleet ENDPOINTS --fleet-prefix
/// PREFIX --machine MACHINE`, refreshing at `token_url`, logging the broker's routes
/// (`RUST_LOG=codex_refresh=info`).
fn spawn_fleet_agent(
    bins: &Bins,
    home: &Path,
    token_url: &str,
    endpoints: &str,
    prefix: &str,
    machine: &str,
) -> Process {
    let mut command = Command::new(&bins.store);
    command
        .arg("--home")
        .arg(home)
        .args(["agent", "--json", "--serve", "127.0.0.1:0"])
        .args(["--fleet", endpoints, "--fleet-prefix", prefix])
        .args(["--machine", machine])
        .env(URL_ENV, token_url)
        .env("RUST_LOG", "codex_refresh=info");
    Process::spawn_command(format!("codex-store agent --fleet on {machine}"), command)
}

/// `codex-store --home HOME fleet seed ... --machine machine-0`, which must succeed.
fn seed_fleet(bins: &Bins, home: &Path, endpoints: &str, prefix: &str) {
    let mut command = Command::new(&bins.store);
    command
        .arg("--home")
        .arg(home)
        .args([
            "fleet",
            "seed",
            "--fleet",
            endpoints,
            "--fleet-prefix",
            prefix,
        ])
        .args(["--machine", "machine-0"])
        .env_remove("RUST_LOG");
    let out = Process::spawn_command("codex-store fleet seed", command).finish(FLEET_WAIT);
    assert!(
        out.status.success(),
        "`codex-store fleet seed` exited {}: {}",
        out.status,
        out.stderr.trim()
    );
}

/// The JSON value of `key`, read from the first member of `cluster` directly; `None` when etcd
/// did not answer or holds no such key, or its value is not JSON.
fn etcd_json(cluster: &EtcdCluster, key: &str) -> Option<Value> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let answer = cluster.post(
        0,
        "/v3/kv/range",
        &serde_json::json!({ "key": b64.encode(key) }),
    )?;
    let value = b64.decode(answer["kvs"][0]["value"].as_str()?).ok()?;
    serde_json::from_slice(&value).ok()
}

/// Looks at `done` every 10 ms until it holds; whether it did within `within`.
fn holds_within(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every agent's stderr so far, under its machine's name.
fn fleet_logs(agents: &[Process]) -> String {
    agents
        .iter()
        .enumerate()
        .map(|(i, agent)| format!("machine-{i}:\n{}", agent.stderr()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// K stand-ins on the fleet's one expired token, split over the brokers of [`FLEET_MACHINES`]
/// machines (a fresh prefix, fresh homes, a fresh endpoint), released at once.
fn fleet_run(bins: &Bins, cluster: &EtcdCluster, k: usize) -> FleetRun {
    // Machine-0 is signed in on the expired token and seeds the fleet with it; machine-1's home
    // is empty: its agent mirrors the fleet's login.
    let (home0, idp) = signed_in(-60);
    idp.set_delay(ENDPOINT_DELAY);
    let idp_url = idp.url();
    let (idp_addr, token_path) = idp_url
        .strip_prefix("http://")
        .and_then(|rest| rest.split_once('/'))
        .unwrap_or_else(|| panic!("{idp_url:?} is not the endpoint's URL"));
    // The agents reach the endpoint through a proxy that holds the fleet's first request (the
    // refresh of the expired token, which the agents make at start) until the stand-ins,
    // started once the brokers published their URLs, are ready: they read the expired token
    // whatever the machine's speed, and are released while that refresh is in flight.
    let gate = TcpProxy::start(idp_addr);
    gate.hold_request(1);
    let token_url = format!("{}/{token_path}", gate.url());
    let home1 = tempfile::tempdir().expect("a temp dir for machine-1's CODEX_HOME");
    let homes = [home0, home1];
    let prefix = format!("/codex-store-bench/{}/broker-k{k}", std::process::id());
    let endpoints = cluster.endpoints();
    seed_fleet(bins, homes[0].path(), &endpoints, &prefix);
    let agents: Vec<Process> = homes
        .iter()
        .enumerate()
        .map(|(i, home)| {
            spawn_fleet_agent(
                bins,
                home.path(),
                &token_url,
                &endpoints,
                &prefix,
                &format!("machine-{i}"),
            )
        })
        .collect();
    for agent in &agents {
        agent.wait_for_stderr_line("\"started\"");
    }
    assert!(
        gate.wait_until_held(FLEET_WAIT),
        "no machine sent the fleet's expired token within {FLEET_WAIT:?} of its start; \
         agents:\n{}",
        fleet_logs(&agents)
    );
    assert!(
        holds_within(FLEET_WAIT, || {
            refresh_token_on_disk(homes[1].path()).as_deref() == Some(INITIAL_RT)
        }),
        "machine-1 did not mirror the fleet's login within {FLEET_WAIT:?}; agents:\n{}",
        fleet_logs(&agents)
    );
    let brokers: Vec<String> = homes
        .iter()
        .map(|home| published_broker(bins, home.path()))
        .collect();
    // Stand-in i on machine i % 2, in that machine's home, at its broker.
    let mut sims: Vec<(usize, Process)> = (0..k)
        .map(|i| {
            let m = i % FLEET_MACHINES;
            (m, spawn_sim(bins, homes[m].path(), &brokers[m], i))
        })
        .collect();
    for (_, sim) in &sims {
        sim.wait_for_event("ready");
    }
    for (_, sim) in &mut sims {
        sim.go();
    }
    gate.release();
    let finished: Vec<(usize, Vec<String>, ExitStatus)> = sims
        .iter_mut()
        .map(|(m, sim)| {
            let out = sim.finish(Duration::from_secs(60));
            (*m, out.lines(), out.status)
        })
        .collect();
    let live = idp.current_refresh_token();
    let live_fp = fingerprint(&live);
    let file_live: Vec<bool> = homes
        .iter()
        .map(|home| {
            holds_within(FLEET_WAIT, || {
                refresh_token_on_disk(home.path()).as_deref() == Some(live.as_str())
            })
        })
        .collect();
    let record = etcd_json(cluster, &format!("{prefix}/auth.json"));
    let record_live = record
        .as_ref()
        .is_some_and(|doc| doc["tokens"]["refresh_token"].as_str() == Some(live.as_str()));
    let last_rotation = etcd_json(cluster, &format!("{prefix}/rotation")).map_or_else(
        || "none".to_owned(),
        |meta| {
            format!(
                "{} by {}",
                meta["kind"].as_str().unwrap_or("?"),
                meta["machine"].as_str().unwrap_or("?")
            )
        },
    );
    let logs: Vec<String> = agents
        .into_iter()
        .map(|mut agent| agent.terminate(Duration::from_secs(10)))
        .collect();
    drop(gate);
    let machines = (0..FLEET_MACHINES)
        .map(|m| {
            let own: Vec<(Vec<String>, ExitStatus)> = finished
                .iter()
                .filter(|(of, _, _)| *of == m)
                .map(|(_, lines, status)| (lines.clone(), *status))
                .collect();
            let mut counts = Counts::default();
            tally(&mut counts, &own, &live_fp);
            MachineRun {
                stand_ins: own.len(),
                counts,
                routes: Routes::of(&logs[m]),
                file_live: file_live[m],
            }
        })
        .collect();
    FleetRun {
        machines,
        upstream: idp.requests(),
        rotations: idp.successes(),
        reused: idp.reuse_refusals(),
        record_live,
        last_rotation,
    }
}

fn fleet_brokers(bins: &Bins, plan: &Plan) -> bool {
    println!(
        "\n4. a fleet: K Codex stand-ins (codex-sim) split over {FLEET_MACHINES} machines' \
         brokers (`agent --fleet ... --serve 127.0.0.1:0`, a home each, one etcd member), half \
         at each, on the fleet's one expired token; released once both agents started, while \
         the fleet's refresh of it is in flight; the endpoint answers after {} ms",
        ENDPOINT_DELAY.as_millis()
    );
    if codex_store_tests::programs::on_path("etcd").is_none() {
        eprintln!(
            "FAIL: section 4 runs a real etcd and etcd is not installed (no `etcd` on PATH): \
             install Debian's etcd-server (`apt-get update && apt-get install -y etcd-server`), \
             as .ci/run does"
        );
        return true;
    }
    let cluster = EtcdCluster::start(1);
    println!(
        "{:<4} {:>5} {:>9} {:>10} {:>13} {:>7} {:>11} {:>9} {:>5} {:>14} {:>6}",
        "K",
        "sent",
        "upstream",
        "rotations",
        "req/rotation",
        "reused",
        "reused ans",
        "live tok",
        "429",
        "stuck/refused",
        "other"
    );
    let mut failed = false;
    let mut notes = Vec::new();
    for &k in &plan.ks {
        let run = fleet_run(bins, &cluster, k);
        let c = run.total();
        let ratio = c.upstream as f64 / c.rotations.max(1) as f64;
        println!(
            "{k:<4} {:>5} {:>9} {:>10} {ratio:>13.2} {:>7} {:>11} {:>9} {:>5} {:>14} {:>6}",
            c.sent,
            c.upstream,
            c.rotations,
            c.reused,
            c.reuse_answers,
            c.live,
            c.throttled,
            c.stuck_or_refused,
            c.other
        );
        for (i, m) in run.machines.iter().enumerate() {
            let r = &m.routes;
            notes.push(format!(
                "K={k} machine-{i}: {} stand-ins, {} sent; its broker routed {} request(s) as the \
                 current token, {} as a predecessor, {} as spent, {} as unknown; {} end live, \
                 {} answered 429; auth.json {}",
                m.stand_ins,
                m.counts.sent,
                r.current,
                r.predecessor,
                r.spent,
                r.unknown,
                m.counts.live,
                m.counts.throttled,
                if m.file_live { "live" } else { "NOT live" }
            ));
            for other in &m.counts.others {
                notes.push(format!("K={k} machine-{i}: a stand-in ended {other}"));
            }
        }
        notes.push(format!(
            "K={k} the fleet's rotation: {}; the record in etcd {}",
            run.last_rotation,
            if run.record_live {
                "holds the live token"
            } else {
                "does NOT hold the live token"
            }
        ));
        let files_live = run.machines.iter().all(|m| m.file_live);
        if c.upstream != 1
            || c.rotations != 1
            || c.reused != 0
            || c.reuse_answers != 0
            || c.stuck_or_refused != 0
            || c.other != 0
            || !files_live
            || !run.record_live
        {
            eprintln!(
                "FAIL: K={k}, {FLEET_MACHINES} fleet machines' brokers: {} upstream request(s) for \
                 {} rotation(s), {} reuse refusal(s) by the endpoint, {} answered to the \
                 stand-ins, {} stand-in(s) stuck or refused, {} ended otherwise, every \
                 machine's auth.json {} the live token, the fleet record {} it",
                c.upstream,
                c.rotations,
                c.reused,
                c.reuse_answers,
                c.stuck_or_refused,
                c.other,
                if files_live { "holds" } else { "does not hold" },
                if run.record_live {
                    "holds"
                } else {
                    "does not hold"
                }
            );
            failed = true;
        }
    }
    drop(cluster);
    println!("floor: 1 upstream request per rotation");
    println!(
        "(sent: refresh requests the stand-ins sent, each to its machine's broker; reused: \
         refused as refresh_token_reused by the endpoint; reused ans: refresh_token_reused \
         answers the stand-ins read, whoever answered them; live tok: stand-ins that end holding \
         the endpoint's live refresh token; 429: answered by a broker's limit of 64 a second in \
         bursts of 64, counted apart as in section 2)"
    );
    for note in notes {
        println!("{note}");
    }
    failed
}
