//! The fleet on etcd, measured (`cargo build --release --workspace --bins && cargo bench -p
//! codex-store-tests --bench fleet`): rows of M machines (separate homes, one `codex-store agent
//! --fleet` each, reaching every member of a real etcd through proxies of its own that count
//! HTTP requests, the members listed in order in `--fleet` as an operator would) against the
//! fake token endpoint enforcing rotation, with tokens that come due for the agents every 3 s.
//! The full run has two rows, each on a fresh 3-member etcd on loopback under a fresh prefix:
//! 4 machines for 20 rotations, then 32 machines for 10. Each row prints, its lines labelled
//! `[M machines, N-member etcd]`, each figure beside its floor:
//!
//! 1. refresh requests per rotation, fleet-wide, and the reuse refusals (floor 1);
//! 2. the propagation delay: from the moment the bench sees the endpoint's success until every
//!    machine's auth.json holds the new refresh token (p50, p99), beside its floor measured in
//!    the same run: one etcd round trip through a proxy (to the first member, the one the agents
//!    try first) plus one durable local write of a 2 KiB file (temp file in the same directory,
//!    write, fsync, rename, fsync of the directory), each the median of 50; and what the bench
//!    adds to each delay, on average: its watcher thread (woken by inotify) waits for a CPU
//!    (`/proc/self/task/<tid>/schedstat`), then reads the auth.json that changed;
//! 3. etcd round trips (gateway requests) per rotation: of the machine that refreshed, of each
//!    machine that only mirrored (mean and max), and fleet-wide, beside their floors: 2 for the
//!    refreshing machine (a claim before the request, a publication after it), 0 for a mirror
//!    (the watch stream it opened once delivers the record), 2 fleet-wide; and the part of each
//!    made before the bench saw the endpoint's success (claims, and the idle traffic since the
//!    previous rotation);
//! 4. etcd's CPU time per rotation: utime + stime (`/proc/<pid>/stat`) summed over the members,
//!    beside its floor, the idle cluster's over as long (measured before the agents start).
//!
//! Round trips and CPU time are counted between consecutive rotations, each window closing 1 s
//! after its rotation (so the idle traffic between rotations is in it), from the first rotation
//! to the last: the agents' start is left out.
//!
//! Run without `--bench` (as `cargo test --benches` does), it runs a short smoke row: 2 machines,
//! one etcd member, 2 rotations. Exits 1 when a correctness check fails (more than one request
//! for a rotation, a reuse refusal, an agent that does not stop cleanly), or when a row cannot
//! run: it then says where the row stopped and why, and prints what it measured. Every wait has
//! a deadline.

use std::any::Any;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::mem::MaybeUninit;
use std::os::unix::fs::OpenOptionsExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
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
use rustix::fs::inotify;
use rustix::process::{kill_process, Pid, Signal};

const URL_ENV: &str = "CODEX_REFRESH_TOKEN_URL_OVERRIDE";
const LEAD: i64 = 310;
/// Tokens come due for the agents this long after they are issued.
const TOKEN_PERIOD_SECS: i64 = 3;
const ACCOUNT: &str = "acc-bench-fleet";
const EMAIL: &str = "bench@example.com";
const PLAN: &str = "pro";
const INITIAL_RT: &str = "rt_bench_fleet_initial";

/// Samples of each floor (an etcd round trip, a durable write); the floor is their median.
const FLOOR_SAMPLES: usize = 50;
/// The size of the floor's durable write: about an auth.json.
const FLOOR_WRITE_BYTES: usize = 2048;
/// How long `fleet seed` may take.
const SEED_WITHIN: Duration = Duration::from_secs(30);
/// How long the agents may take to say `started`, all of them.
const AGENTS_START_WITHIN: Duration = Duration::from_secs(30);
/// How long after the agents started the first rotation may take (its token is due at once).
const FIRST_ROTATION_WITHIN: Duration = Duration::from_secs(20);
/// How long after a rotation the next may take (it is due 3 s after).
const NEXT_ROTATION_WITHIN: Duration = Duration::from_secs(15);
/// How long a rotation may take to reach every machine.
const PROPAGATION_WITHIN: Duration = Duration::from_secs(10);
/// A rotation's window of round trips and CPU time closes this long after the rotation.
const WINDOW_CLOSES_AFTER: Duration = Duration::from_secs(1);
/// While a machine misses a rotation and no inotify event comes, the bench reads its auth.json
/// again this often (a fallback: a machine found so is reported, its delay is late).
const FALLBACK_READ_EVERY: Duration = Duration::from_millis(100);
/// How long an agent may take to stop after SIGTERM.
const STOP_WITHIN: Duration = Duration::from_secs(10);

/// One row of the bench.
struct Row {
    machines: usize,
    members: usize,
    rotations: usize,
    /// How long the idle cluster's CPU time is measured.
    idle: Duration,
}

impl Row {
    fn label(&self) -> String {
        format!("[{} machines, {}-member etcd]", self.machines, self.members)
    }
}

/// The end of one rotation's window: when, each machine's gateway requests so far (over all its
/// proxies) and when the bench saw the rotation's success, each member's CPU time so far (clock
/// ticks).
struct Boundary {
    at: Instant,
    trips: Vec<u64>,
    trips_at_success: Vec<u64>,
    ticks: Vec<u64>,
}

/// What one row measured, and where it stopped if it did not run to its end.
struct RowResult {
    label: String,
    ticks_per_second: f64,
    /// Where and why the row stopped before its end.
    stopped: Option<String>,
    /// Correctness checks that failed.
    failures: Vec<String>,
    leader: Option<usize>,
    requests: usize,
    successes: usize,
    reuse_refusals: usize,
    /// The floor's parts, in ms.
    round_trip_floor: Option<f64>,
    write_floor: Option<f64>,
    /// The propagation delay of each rotation, in ms.
    delays: Vec<f64>,
    /// The watcher's lag from the event of each rotation's last machine to its read of the
    /// file, in ms.
    detection_lags: Vec<f64>,
    /// The watcher thread's waits for a CPU while rotations propagated.
    watcher_waits: Waits,
    /// Machines found holding a rotation by the fallback read, not by an inotify event.
    found_by_fallback: usize,
    /// The idle cluster's CPU time, in clock ticks per second.
    idle_ticks_per_second: Option<f64>,
    /// One per rotation counted.
    boundaries: Vec<Boundary>,
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let rows = if full {
        vec![
            Row {
                machines: 4,
                members: 3,
                rotations: 20,
                idle: Duration::from_secs(3),
            },
            Row {
                machines: 32,
                members: 3,
                rotations: 10,
                idle: Duration::from_secs(3),
            },
        ]
    } else {
        vec![Row {
            machines: 2,
            members: 1,
            rotations: 2,
            idle: Duration::from_millis(500),
        }]
    };
    let store = built("codex-store", "codex-store-cli");
    let ticks_per_second = clock_ticks_per_second();
    println!(
        "fleet benchmark ({}): {}; tokens due every {TOKEN_PERIOD_SECS} s",
        if full { "full" } else { "smoke" },
        rows.iter()
            .map(|r| format!("{} x {} rotations", r.label(), r.rotations))
            .collect::<Vec<_>>()
            .join(", then ")
    );
    let mut failed = false;
    for (index, row) in rows.iter().enumerate() {
        match catch_unwind(AssertUnwindSafe(|| {
            run_row(row, index, &store, ticks_per_second)
        })) {
            Ok(result) => {
                result.print();
                failed |= result.stopped.is_some() || !result.failures.is_empty();
            }
            Err(panic) => {
                eprintln!(
                    "{} STOPPED: the bench itself panicked ({}); what it measured is lost",
                    row.label(),
                    panic_message(&*panic)
                );
                failed = true;
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}

/// The resources of one row. Dropping it kills what still runs (agents, etcd) and removes the
/// homes; the agents go first (fields drop in order).
struct Fleet {
    agents: Vec<Process>,
    /// `links[machine][member]`: the proxy through which the machine reaches the member.
    links: Vec<Vec<TcpProxy>>,
    homes: Vec<tempfile::TempDir>,
    idp: FakeIdp,
    cluster: EtcdCluster,
}

/// Runs one row on a fresh cluster, under a fresh prefix: what it measured, and where it
/// stopped if it did.
fn run_row(row: &Row, index: usize, store: &Path, ticks_per_second: f64) -> RowResult {
    let label = row.label();
    let mut result = RowResult {
        label: label.clone(),
        ticks_per_second,
        stopped: None,
        failures: Vec::new(),
        leader: None,
        requests: 0,
        successes: 0,
        reuse_refusals: 0,
        round_trip_floor: None,
        write_floor: None,
        delays: Vec::new(),
        detection_lags: Vec::new(),
        watcher_waits: Waits::default(),
        found_by_fallback: 0,
        idle_ticks_per_second: None,
        boundaries: Vec::new(),
    };
    println!(
        "{label} starting: {} rotations on a fresh {}-member etcd",
        row.rotations, row.members
    );
    let cluster = match catch_unwind(AssertUnwindSafe(|| EtcdCluster::start(row.members))) {
        Ok(cluster) => cluster,
        Err(panic) => {
            result.stopped = Some(format!(
                "before any machine started: the {}-member etcd did not start: {}",
                row.members,
                panic_message(&*panic)
            ));
            return result;
        }
    };
    result.leader = cluster.leader();
    let idp = FakeIdp::start(ACCOUNT, EMAIL, PLAN, INITIAL_RT);
    idp.set_access_token_lifetime(LEAD + TOKEN_PERIOD_SECS);
    let homes: Vec<tempfile::TempDir> = (0..row.machines)
        .map(|i| {
            tempfile::tempdir()
                .unwrap_or_else(|e| panic!("cannot create a temp home for machine-{i}: {e}"))
        })
        .collect();
    let links: Vec<Vec<TcpProxy>> = (0..row.machines)
        .map(|_| {
            (0..row.members)
                .map(|m| TcpProxy::start(cluster.endpoint(m).trim_start_matches("http://")))
                .collect()
        })
        .collect();
    let mut fleet = Fleet {
        agents: Vec::new(),
        links,
        homes,
        idp,
        cluster,
    };
    let outcome = measure(row, index, store, &mut fleet, &mut result);
    result.failures.extend(stop_agents(&mut fleet.agents));
    result.requests = fleet.idp.requests();
    result.successes = fleet.idp.successes();
    result.reuse_refusals = fleet.idp.reuse_refusals();
    if let Err(why) = outcome {
        result.stopped = Some(why);
    }
    if result.requests != result.successes || result.reuse_refusals != 0 {
        result.failures.push(format!(
            "every rotation must take exactly one request and none may be refused: {} requests \
             for {} rotations, {} reuse refusals",
            result.requests, result.successes, result.reuse_refusals
        ));
    }
    result
}

/// The row's measurements, into `result`; `Err` says where the row stopped and why.
fn measure(
    row: &Row,
    index: usize,
    store: &Path,
    fleet: &mut Fleet,
    result: &mut RowResult,
) -> Result<(), String> {
    let first_member = fleet.cluster.endpoint(0);
    result.round_trip_floor = Some(round_trip_floor(&first_member).map_err(|why| {
        format!("before any machine started, measuring the floor's etcd round trip: {why}")
    })?);
    result.write_floor = Some(durable_write_floor().map_err(|why| {
        format!("before any machine started, measuring the floor's durable write: {why}")
    })?);
    let pids = fleet.cluster.pids();
    let idle_from =
        etcd_ticks(&pids).map_err(|why| format!("measuring the idle cluster: {why}"))?;
    let idle_started = Instant::now();
    std::thread::sleep(row.idle);
    let idle_to = etcd_ticks(&pids).map_err(|why| format!("measuring the idle cluster: {why}"))?;
    result.idle_ticks_per_second = Some(
        (idle_to.iter().sum::<u64>() - idle_from.iter().sum::<u64>()) as f64
            / idle_started.elapsed().as_secs_f64(),
    );

    let home_paths: Vec<PathBuf> = fleet.homes.iter().map(|h| h.path().to_owned()).collect();
    let watch = HomeWatch::start(&home_paths)
        .map_err(|why| format!("before any machine started, watching the homes: {why}"))?;
    let access = jwt::access_token(jwt::now_unix() + LEAD + 1, "at-bench-fleet");
    let id = jwt::id_token(EMAIL, ACCOUNT, PLAN);
    fs::write(
        home_paths[0].join("auth.json"),
        jwt::auth_json(&access, INITIAL_RT, &id, ACCOUNT),
    )
    .map_err(|e| format!("before any machine started: cannot write machine-0's auth.json: {e}"))?;
    let prefix = format!("/codex-store-bench/{}/row-{index}", std::process::id());
    let fleet_args = |i: usize| -> Vec<String> {
        let endpoints: Vec<String> = fleet.links[i].iter().map(TcpProxy::url).collect();
        vec![
            "--fleet".into(),
            endpoints.join(","),
            "--fleet-prefix".into(),
            prefix.clone(),
            "--machine".into(),
            format!("machine-{i}"),
            "--fleet-lock-ttl".into(),
            "10s".into(),
        ]
    };

    let mut command = Command::new(store);
    command
        .arg("--home")
        .arg(&home_paths[0])
        .args(["fleet", "seed"])
        .args(fleet_args(0));
    let mut seed = spawn("codex-store fleet seed", command)
        .map_err(|why| format!("at seeding, before any agent started: {why}"))?;
    match wait_exit(&mut seed, SEED_WITHIN) {
        Some(status) if status.success() => {}
        Some(status) => {
            return Err(format!(
            "at seeding, before any agent started: `codex-store fleet seed` exited {status}: {}",
            seed.stderr().trim()
        ))
        }
        None => {
            return Err(format!(
                "at seeding, before any agent started: `codex-store fleet seed` did not finish \
                 within {SEED_WITHIN:?} and was killed: {}",
                seed.stderr().trim()
            ))
        }
    }

    for (i, home) in home_paths.iter().enumerate() {
        let mut command = Command::new(store);
        command
            .arg("--home")
            .arg(home)
            .args(["agent", "--lead", &LEAD.to_string()])
            .args(fleet_args(i))
            .env(URL_ENV, fleet.idp.url())
            .env_remove("RUST_LOG");
        let agent = spawn(&format!("agent on machine-{i}"), command).map_err(|why| {
            format!(
                "starting the agents, after {i} of {} had been started: {why}",
                row.machines
            )
        })?;
        fleet.agents.push(agent);
    }
    wait_started(&mut fleet.agents)?;

    let mut seen = 0;
    let mut requests_at_success = 0;
    // The deadline of each rotation counts from the one before (the first: the agents' start).
    let mut previous = Instant::now();
    for k in 1..=row.rotations {
        let within = if k == 1 {
            FIRST_ROTATION_WITHIN
        } else {
            NEXT_ROTATION_WITHIN
        };
        let rotated = wait_for_success(&fleet.idp, seen, requests_at_success, previous + within)
            .ok_or_else(|| {
                format!(
                    "at rotation {k} of {}: the token endpoint answered no refresh with success \
                 within {within:?} of {} ({} requests so far, {} reuse refusals); {}",
                    row.rotations,
                    if k == 1 {
                        "the agents' start".to_owned()
                    } else {
                        format!("rotation {}", k - 1)
                    },
                    fleet.idp.requests(),
                    fleet.idp.reuse_refusals(),
                    agents_state(&mut fleet.agents)
                )
            })?;
        let trips_at_success = machine_trips(&fleet.links);
        previous = rotated;
        requests_at_success = fleet.idp.requests();
        seen = fleet.idp.successes();
        let live = fleet.idp.current_refresh_token();
        let waits_before = watch.waits();
        let reached = watch.wait_all(&home_paths, &live, rotated + PROPAGATION_WITHIN, || {
            fleet.idp.successes() > seen
        });
        result.found_by_fallback += reached.found_by_fallback;
        if let (Some(before), Some(after)) = (waits_before, watch.waits()) {
            result.watcher_waits.waited_ns += after.waited_ns - before.waited_ns;
            result.watcher_waits.runs += after.runs - before.runs;
        }
        match reached.outcome {
            Ok(()) => {
                result.delays.push(ms(reached.done - rotated));
                if let Some(lag) = reached.lag {
                    result.detection_lags.push(ms(lag));
                }
            }
            Err(why) => {
                return Err(format!(
                    "at rotation {k} of {}, {:.0} ms after the endpoint's success: {why}; {}",
                    row.rotations,
                    ms(reached.done - rotated),
                    agents_state(&mut fleet.agents)
                ))
            }
        }
        let closes = rotated + WINDOW_CLOSES_AFTER;
        if let Some(left) = closes.checked_duration_since(Instant::now()) {
            std::thread::sleep(left);
        }
        let ticks = etcd_ticks(&pids).map_err(|why| {
            format!(
                "at rotation {k} of {}, reading etcd's CPU time: {why}",
                row.rotations
            )
        })?;
        result.boundaries.push(Boundary {
            at: Instant::now(),
            trips: machine_trips(&fleet.links),
            trips_at_success,
            ticks,
        });
    }
    Ok(())
}

/// Each machine's gateway requests so far, over all its proxies.
fn machine_trips(links: &[Vec<TcpProxy>]) -> Vec<u64> {
    links
        .iter()
        .map(|proxies| proxies.iter().map(TcpProxy::requests).sum())
        .collect()
}

/// The median of [`FLOOR_SAMPLES`] gateway round trips (a read of a missing key) to `member`
/// through a proxy like the machines', in ms.
fn round_trip_floor(member: &str) -> Result<f64, String> {
    let proxy = TcpProxy::start(member.trim_start_matches("http://"));
    let client = Client::new();
    let mut samples = Vec::with_capacity(FLOOR_SAMPLES);
    for i in 0..FLOOR_SAMPLES {
        let started = Instant::now();
        cluster_post(
            &client,
            &proxy.url(),
            "/v3/kv/range",
            r#"{"key":"Zmxvb3I="}"#,
        )
        .ok_or_else(|| {
            format!(
                "etcd at {member} did not answer read {} of {FLOOR_SAMPLES} through a proxy",
                i + 1
            )
        })?;
        samples.push(ms(started.elapsed()));
    }
    Ok(Summary::of(&samples).p50)
}

/// The median of [`FLOOR_SAMPLES`] durable replacements of a 2 KiB file, as the store replaces
/// auth.json (an exclusive 0600 temp file in the same directory, written, fsynced, renamed over
/// the file, the directory fsynced), in a temp directory beside the homes, in ms.
fn durable_write_floor() -> Result<f64, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("cannot create a temp directory: {e}"))?;
    let target = dir.path().join("auth.json");
    let temp = dir.path().join(".auth.json.tmp");
    let document = vec![b' '; FLOOR_WRITE_BYTES];
    let replace = || -> std::io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(&document)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&temp, &target)?;
        File::open(dir.path())?.sync_all()
    };
    let mut samples = Vec::with_capacity(FLOOR_SAMPLES);
    for i in 0..FLOOR_SAMPLES {
        let started = Instant::now();
        replace().map_err(|e| {
            format!(
                "durable write {} of {FLOOR_SAMPLES} in {} failed: {e}",
                i + 1,
                dir.path().display()
            )
        })?;
        samples.push(ms(started.elapsed()));
    }
    Ok(Summary::of(&samples).p50)
}

/// Clock ticks per second, the unit of `/proc/<pid>/stat`'s times (`getconf CLK_TCK`).
fn clock_ticks_per_second() -> f64 {
    let asked = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse::<u32>().ok())
        .filter(|ticks| *ticks > 0);
    match asked {
        Some(ticks) => f64::from(ticks),
        None => {
            eprintln!(
                "warning: `getconf CLK_TCK` gave no clock tick rate; etcd's CPU time assumes 100 \
                 ticks per second (Linux's USER_HZ)"
            );
            100.0
        }
    }
}

/// utime + stime (fields 14 and 15 of `/proc/<pid>/stat`, in clock ticks) of each etcd member.
fn etcd_ticks(pids: &[u32]) -> Result<Vec<u64>, String> {
    pids.iter()
        .enumerate()
        .map(|(i, pid)| {
            let path = format!("/proc/{pid}/stat");
            let stat = fs::read_to_string(&path)
                .map_err(|e| format!("cannot read {path} of etcd member m{i}: {e}"))?;
            // Field 2, the command, is in parentheses and may hold spaces: count the fields after
            // it, from field 3.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.split_whitespace().collect())
                .unwrap_or_default();
            let field = |n: usize| -> Result<u64, String> {
                fields
                    .get(n - 3)
                    .and_then(|f| f.parse().ok())
                    .ok_or_else(|| format!("{path} of etcd member m{i} has no field {n}: {stat}"))
            };
            Ok(field(14)? + field(15)?)
        })
        .collect()
}

/// Starts `command` as a [`Process`] named `name`; `Err` says why it could not start.
fn spawn(name: &str, command: Command) -> Result<Process, String> {
    catch_unwind(AssertUnwindSafe(|| {
        Process::spawn_command(name.to_owned(), command)
    }))
    .map_err(|panic| panic_message(&*panic))
}

/// Waits until `process` exits, at most `within`: its status, or `None` when it still ran (it is
/// then killed).
fn wait_exit(process: &mut Process, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = process.try_status() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            process.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until every agent said `started` (text mode: `codex-store agent: <time> started: ...`).
fn wait_started(agents: &mut [Process]) -> Result<(), String> {
    let deadline = Instant::now() + AGENTS_START_WITHIN;
    loop {
        let mut waiting = Vec::new();
        for (i, agent) in agents.iter_mut().enumerate() {
            if agent.stderr().contains(" started: pid ") {
                continue;
            }
            if let Some(status) = agent.try_status() {
                return Err(format!(
                    "starting the agents: the agent on machine-{i} exited {status} before it \
                     started: {}",
                    agent.stderr().trim()
                ));
            }
            waiting.push(i);
        }
        if waiting.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "starting the agents: {} of {} did not say `started` within \
                 {AGENTS_START_WITHIN:?}: machines {waiting:?}",
                waiting.len(),
                agents.len()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Which agents exited (with how, and their last words), and the last line of each running one.
fn agents_state(agents: &mut [Process]) -> String {
    let mut exited = Vec::new();
    let mut last_lines = Vec::new();
    for (i, agent) in agents.iter_mut().enumerate() {
        let stderr = agent.stderr();
        let last = stderr.lines().last().unwrap_or("(nothing)").to_owned();
        match agent.try_status() {
            Some(status) => exited.push(format!("machine-{i} exited {status}: {last}")),
            None => last_lines.push(format!("  machine-{i}: {last}")),
        }
    }
    let running = agents.len() - exited.len();
    let mut state = if exited.is_empty() {
        format!("all {} agents still run", agents.len())
    } else {
        format!(
            "{} of {} agents exited ({}), {running} still run",
            exited.len(),
            agents.len(),
            exited.join("; ")
        )
    };
    if !last_lines.is_empty() {
        state.push_str("; the last line of each running agent:\n");
        state.push_str(&last_lines.join("\n"));
    }
    state
}

/// SIGTERMs every agent, then waits for each (at most [`STOP_WITHIN`] in all): what went wrong
/// (an agent that did not stop, or exited with a failure, now or earlier).
fn stop_agents(agents: &mut [Process]) -> Vec<String> {
    for agent in agents.iter() {
        if let Some(pid) = i32::try_from(agent.id()).ok().and_then(Pid::from_raw) {
            let _ = kill_process(pid, Signal::TERM);
        }
    }
    let deadline = Instant::now() + STOP_WITHIN;
    let mut problems = Vec::new();
    for agent in agents.iter_mut() {
        let left = deadline.saturating_duration_since(Instant::now());
        match wait_exit(agent, left) {
            Some(status) if status.success() => {}
            Some(status) => problems.push(format!(
                "the {} exited {status} (at SIGTERM or before): {}",
                agent.name(),
                agent
                    .stderr()
                    .lines()
                    .last()
                    .unwrap_or("(nothing on stderr)")
            )),
            None => problems.push(format!(
                "the {} still ran {STOP_WITHIN:?} after SIGTERM and was killed",
                agent.name()
            )),
        }
    }
    problems
}

/// Waits until the endpoint has answered more than `seen` refreshes with success (having read
/// `requests_at_success` requests when the bench saw the last one): the moment the bench saw
/// it, or `None` at `deadline`. Blocks on the endpoint's count of requests read while nothing
/// happens; once a request was read (its answer is decided within microseconds, no delay being
/// set), polls for its success every 20 µs, for at most 50 ms (a refused request never
/// succeeds).
fn wait_for_success(
    idp: &FakeIdp,
    seen: usize,
    requests_at_success: usize,
    deadline: Instant,
) -> Option<Instant> {
    let mut requests = requests_at_success;
    loop {
        if idp.successes() > seen {
            return Some(Instant::now());
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        let read = idp.requests();
        if read > requests {
            let decided_by = now + Duration::from_millis(50);
            while idp.successes() <= seen && Instant::now() < decided_by {
                std::thread::sleep(Duration::from_micros(20));
            }
            requests = read;
            continue;
        }
        idp.wait_for_requests(
            requests + 1,
            (deadline - now).min(Duration::from_millis(200)),
        );
    }
}

/// What the watcher thread reports.
enum Seen {
    /// Home `home`'s auth.json changed (renamed over, created or written): the refresh token it
    /// held when the watcher read it, when the watcher had the event, and when it had read the
    /// file.
    Home {
        home: usize,
        token: Option<String>,
        event_at: Instant,
        read_at: Instant,
    },
    /// The kernel's event queue overflowed: events were lost.
    Overflow,
}

/// How far a rotation reached: when the bench knew that the last machine held it (or stopped
/// waiting), how many machines only the fallback read found, the watcher's lag from the last
/// machine's event to its read of the file (when an event found it), and whether every machine
/// was reached (`Err`: why not).
struct Reached {
    done: Instant,
    found_by_fallback: usize,
    lag: Option<Duration>,
    outcome: Result<(), String>,
}

/// The time a thread waited for a CPU after it became runnable, and how many times it was
/// scheduled in (`/proc/self/task/<tid>/schedstat`, fields 2 and 3).
#[derive(Clone, Copy, Default)]
struct Waits {
    waited_ns: u64,
    runs: u64,
}

impl Waits {
    fn of_thread(tid: i32) -> Option<Waits> {
        let text = fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
        let mut fields = text.split_whitespace().skip(1).map(|f| f.parse().ok());
        Some(Waits {
            waited_ns: fields.next()??,
            runs: fields.next()??,
        })
    }
}

/// The homes' directories, watched with inotify by a thread of its own that blocks in `read`
/// and, at each change of a home's auth.json, reads that file: the bench learns that a machine
/// holds a rotation as it happens, from the thread that woke for it, without polling every
/// home. The thread ends when the bench drops the watch and then a home changes or is removed
/// (the row's homes are removed at its end).
struct HomeWatch {
    seen: Receiver<Seen>,
    /// The watcher thread's id, for its scheduling delays.
    tid: i32,
}

impl HomeWatch {
    fn start(homes: &[PathBuf]) -> Result<HomeWatch, String> {
        let fd = inotify::init(inotify::CreateFlags::CLOEXEC)
            .map_err(|e| format!("cannot create an inotify instance: {e}"))?;
        let mut homes_by_watch = HashMap::new();
        for (i, home) in homes.iter().enumerate() {
            let watch = inotify::add_watch(
                &fd,
                home,
                inotify::WatchFlags::MOVED_TO
                    | inotify::WatchFlags::CREATE
                    | inotify::WatchFlags::MODIFY
                    | inotify::WatchFlags::CLOSE_WRITE,
            )
            .map_err(|e| format!("cannot watch {}: {e}", home.display()))?;
            homes_by_watch.insert(watch, i);
        }
        let homes = homes.to_vec();
        let (tx, seen) = mpsc::channel();
        let (tid_tx, tid) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("fleet-bench-watch".into())
            .spawn(move || {
                let _ = tid_tx.send(rustix::thread::gettid().as_raw_nonzero().get());
                let mut buf = vec![MaybeUninit::<u8>::uninit(); 64 * 1024];
                let mut reader = inotify::Reader::new(&fd, &mut buf);
                let mut watched = homes_by_watch.len();
                loop {
                    let event = match reader.next() {
                        Ok(event) => event,
                        Err(rustix::io::Errno::INTR) => continue,
                        Err(_) => return,
                    };
                    let event_at = Instant::now();
                    let flags = event.events();
                    let report = if flags.contains(inotify::ReadFlags::QUEUE_OVERFLOW) {
                        Some(Seen::Overflow)
                    } else if flags.contains(inotify::ReadFlags::IGNORED) {
                        // The home was removed: the watch is over.
                        watched -= 1;
                        if watched == 0 {
                            return;
                        }
                        None
                    } else if event
                        .file_name()
                        .is_some_and(|name| name.to_bytes() == b"auth.json")
                    {
                        homes_by_watch.get(&event.wd()).map(|&home| Seen::Home {
                            home,
                            token: refresh_token_on_disk(&homes[home]),
                            event_at,
                            read_at: Instant::now(),
                        })
                    } else {
                        None
                    };
                    if let Some(report) = report {
                        if tx.send(report).is_err() {
                            return;
                        }
                    }
                }
            })
            .map_err(|e| format!("cannot start the watcher thread: {e}"))?;
        let tid = tid
            .recv_timeout(Duration::from_secs(10))
            .map_err(|e| format!("the watcher thread did not tell its id: {e}"))?;
        Ok(HomeWatch { seen, tid })
    }

    /// The watcher thread's scheduling delays so far.
    fn waits(&self) -> Option<Waits> {
        Waits::of_thread(self.tid)
    }

    /// Waits until every home's auth.json holds `live`, at most until `deadline`, and stops
    /// early when `overtaken` (the next rotation came first).
    fn wait_all(
        &self,
        homes: &[PathBuf],
        live: &str,
        deadline: Instant,
        overtaken: impl Fn() -> bool,
    ) -> Reached {
        let holds = |i: usize| refresh_token_on_disk(&homes[i]).as_deref() == Some(live);
        // Events of earlier writes are stale: drop them, then read every home once. A write
        // after the drop has its event; one before it is seen by the read.
        while self.seen.try_recv().is_ok() {}
        let mut missing: Vec<usize> = (0..homes.len()).filter(|&i| !holds(i)).collect();
        let mut done = Instant::now();
        let mut lag = None;
        let mut found_by_fallback = 0;
        let outcome = loop {
            if missing.is_empty() {
                break Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                break Err(format!(
                    "machines {} did not hold the new refresh token within {PROPAGATION_WITHIN:?}",
                    machines(&missing)
                ));
            }
            match self
                .seen
                .recv_timeout((deadline - now).min(FALLBACK_READ_EVERY))
            {
                Ok(Seen::Home {
                    home,
                    token,
                    event_at,
                    read_at,
                }) => {
                    let place = missing.iter().position(|&m| m == home);
                    if let (Some(place), true) = (place, token.as_deref() == Some(live)) {
                        missing.swap_remove(place);
                        done = done.max(read_at);
                        lag = Some(read_at - event_at);
                    }
                }
                Ok(Seen::Overflow) => {
                    missing.retain(|&i| !holds(i));
                    done = Instant::now();
                    lag = None;
                }
                Err(RecvTimeoutError::Timeout) => {
                    // No event for a while: read the missing homes once, in case a write came
                    // without one, and see whether the next rotation came first.
                    let before = missing.len();
                    missing.retain(|&i| !holds(i));
                    if missing.len() < before {
                        found_by_fallback += before - missing.len();
                        done = Instant::now();
                        lag = None;
                    }
                    if !missing.is_empty() && overtaken() {
                        break Err(format!(
                            "the next rotation came while machines {} did not hold this one yet",
                            machines(&missing)
                        ));
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    break Err("the bench's inotify watcher thread ended".to_owned());
                }
            }
        };
        Reached {
            done: if outcome.is_ok() {
                done
            } else {
                Instant::now()
            },
            found_by_fallback,
            lag,
            outcome,
        }
    }
}

/// `machine-1, machine-7` for the indexes `[7, 1]`.
fn machines(indexes: &[usize]) -> String {
    let mut sorted = indexes.to_vec();
    sorted.sort_unstable();
    sorted
        .iter()
        .map(|i| format!("machine-{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl RowResult {
    /// The row's lines on stdout; where it stopped and what failed on stderr.
    fn print(&self) {
        let label = &self.label;
        if let Some(leader) = self.leader {
            println!("{label} etcd's leader: m{leader}; every machine lists m0 first in --fleet");
        }
        println!(
            "{label} requests per rotation: {:.2} | floor 1 ({} requests, {} rotations, {} reuse \
             refusals)",
            self.requests as f64 / self.successes.max(1) as f64,
            self.requests,
            self.successes,
            self.reuse_refusals
        );
        self.print_propagation();
        self.print_round_trips();
        self.print_cpu();
        if let Some(why) = &self.stopped {
            eprintln!("{label} STOPPED {why}");
        }
        for failure in &self.failures {
            eprintln!("{label} FAIL: {failure}");
        }
    }

    fn print_propagation(&self) {
        let label = &self.label;
        let floor = match (self.round_trip_floor, self.write_floor) {
            (Some(trip), Some(write)) => format!(
                "floor {:.2} ms = one etcd round trip through a proxy {trip:.2} ms + one durable \
                 2 KiB write {write:.2} ms",
                trip + write
            ),
            (Some(trip), None) => {
                format!("floor: one etcd round trip {trip:.2} ms, the durable write not measured")
            }
            _ => "floor not measured".to_owned(),
        };
        if self.delays.is_empty() {
            println!("{label} propagation to every machine: no rotation measured | {floor}");
            return;
        }
        let delays = Summary::of(&self.delays);
        let ratio = match (self.round_trip_floor, self.write_floor) {
            (Some(trip), Some(write)) => format!(
                " | ratio p50/floor {:.0}",
                delays.p50 / (trip + write).max(1e-6)
            ),
            _ => String::new(),
        };
        // What the bench adds to each delay: its watcher thread waits for a CPU once woken by
        // the last machine's event, then reads that machine's auth.json.
        let cpu_wait = (self.watcher_waits.runs > 0)
            .then(|| self.watcher_waits.waited_ns as f64 / 1e6 / self.watcher_waits.runs as f64);
        let read = (!self.detection_lags.is_empty())
            .then(|| self.detection_lags.iter().sum::<f64>() / self.detection_lags.len() as f64);
        let lag = match (cpu_wait, read) {
            (Some(wait), Some(read)) => format!(
                " | the bench's detection, mean {:.3} ms: its watcher waits {wait:.3} ms for a \
                 CPU once woken + reads the file {read:.3} ms",
                wait + read
            ),
            (None, Some(read)) => format!(
                " | the bench's detection: its watcher reads the file {read:.3} ms (its waits \
                 for a CPU are not known)"
            ),
            _ => String::new(),
        };
        println!(
            "{label} propagation to every machine: p50 {:.1} ms | p99 {:.1} ms ({} rotations) | \
             {floor}{ratio}{lag}",
            delays.p50, delays.p99, delays.count
        );
        if self.found_by_fallback > 0 {
            println!(
                "{label} note: {} machine-rotations were found by the {FALLBACK_READ_EVERY:?} \
                 fallback read, not by their inotify event: their delays are late by up to that",
                self.found_by_fallback
            );
        }
    }

    fn print_round_trips(&self) {
        let label = &self.label;
        let mut holder = Vec::new();
        let mut mirrors = Vec::new();
        let mut fleet_wide = Vec::new();
        // The part of each before the bench saw the endpoint's success.
        let mut holder_before = Vec::new();
        let mut mirrors_before = Vec::new();
        for pair in self.boundaries.windows(2) {
            let (opened, closed) = (&pair[0], &pair[1]);
            let trips: Vec<u64> = closed
                .trips
                .iter()
                .zip(&opened.trips)
                .map(|(now, before)| now - before)
                .collect();
            let before: Vec<u64> = closed
                .trips_at_success
                .iter()
                .zip(&opened.trips)
                .map(|(now, before)| now - before)
                .collect();
            // The machine that refreshed is the one with the most round trips in the window.
            let Some((refresher, most)) = trips.iter().enumerate().max_by_key(|(_, t)| **t) else {
                continue;
            };
            holder.push(*most);
            holder_before.push(before[refresher]);
            for i in (0..trips.len()).filter(|i| *i != refresher) {
                mirrors.push(trips[i]);
                mirrors_before.push(before[i]);
            }
            fleet_wide.push(trips.iter().sum::<u64>());
        }
        if fleet_wide.is_empty() {
            println!(
                "{label} etcd round trips per rotation: not measured (fewer than 2 rotations)"
            );
            return;
        }
        let mean = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len().max(1) as f64;
        println!(
            "{label} etcd round trips per rotation ({} rotations): the refreshing machine {:.1} \
             (floor 2) | each mirroring machine mean {:.1}, max {} (floor 0) | fleet-wide {:.1} \
             (floor 2) | of which before the endpoint's success: the refreshing machine {:.1}, \
             each mirroring machine {:.1}",
            fleet_wide.len(),
            mean(&holder),
            mean(&mirrors),
            mirrors.iter().max().copied().unwrap_or(0),
            mean(&fleet_wide),
            mean(&holder_before),
            mean(&mirrors_before)
        );
    }

    fn print_cpu(&self) {
        let label = &self.label;
        let (Some(first), Some(last)) = (self.boundaries.first(), self.boundaries.last()) else {
            println!("{label} etcd CPU time per rotation: not measured (no rotation)");
            return;
        };
        let counted = self.boundaries.len() - 1;
        if counted == 0 {
            println!("{label} etcd CPU time per rotation: not measured (fewer than 2 rotations)");
            return;
        }
        let to_ms = |ticks: f64| ticks * 1e3 / self.ticks_per_second;
        let per_member: Vec<f64> = last
            .ticks
            .iter()
            .zip(&first.ticks)
            .map(|(now, before)| to_ms((now - before) as f64) / counted as f64)
            .collect();
        let period = (last.at - first.at).as_secs_f64() / counted as f64;
        let idle = match self.idle_ticks_per_second {
            Some(rate) => format!(
                "floor, the idle cluster over as long: {:.1} ms",
                to_ms(rate * period)
            ),
            None => "the idle cluster not measured".to_owned(),
        };
        println!(
            "{label} etcd CPU time per rotation: {:.1} ms ({}; {counted} rotations of {period:.2} \
             s, {} ticks of {:.0} ms) | {idle}",
            per_member.iter().sum::<f64>(),
            per_member
                .iter()
                .enumerate()
                .map(|(i, v)| format!("m{i} {v:.1}"))
                .collect::<Vec<_>>()
                .join(" + "),
            last.ticks.iter().sum::<u64>() - first.ticks.iter().sum::<u64>(),
            1e3 / self.ticks_per_second
        );
    }
}

/// The message of a panic's payload.
fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// A duration in ms.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One POST to etcd's gateway at `base` (`http://host:port`); the answer's body.
fn cluster_post(client: &Client, base: &str, path: &str, body: &str) -> Option<Vec<u8>> {
    let answer = client.post(&Post {
        authority: base.strip_prefix("http://")?,
        path,
        headers: &[],
        body,
        timeout: Duration::from_secs(4),
        max_answer: 1024 * 1024,
    });
    answer.ok().map(|a| a.body)
}
