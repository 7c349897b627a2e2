//! codex-store beside Codex 0.171.0, measured: for each endpoint speed, races of Codex stand-ins
//! (`codex-sim`) alone, of `codex-store token` processes alone, and of both mixed on one
//! `CODEX_HOME`, several runs per cell, in a compact table.
//!
//! ```text
//! cargo build --release --workspace --bins && cargo run --release -p codex-store-tests --example coexist [-- --runs N]
//! ```
//!
//! Columns: the refresh requests the endpoint saw per run, how many of them it refused as
//! `refresh_token_reused`, the runs that lost a rotation (auth.json ends with a dead refresh
//! token, or a codex-sim dropped the tokens it obtained because `auth.json.lock` stayed busy for
//! 5 s), the exits of each kind of process, and the codex-store processes that exited 3
//! (sign-in required) although the endpoint had rotated the token.
//!
//! Not a pass/fail test, but it exits 1 when any run involving codex-store lost a rotation (or a
//! run could not complete), 2 on a usage error. The runs of one cell run in parallel; progress
//! goes to stderr, the table to stdout. No token is ever printed.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use codex_store_tests::cli_support::codex_store_bin;
use codex_store_tests::codex_sim::codex_sim_bin;
use codex_store_tests::coexist::{race, Endpoint, RaceOutcome, Scenario};

const DEFAULT_RUNS: usize = 3;
const USAGE: &str = "usage: coexist [--runs N]   (runs per cell, default 3)";

/// The processes of one kind of race: (codex-sim processes, codex-store processes, label).
const KINDS: [(usize, usize, &str); 3] = [
    (4, 0, "4 codex-sim"),
    (0, 4, "4 codex-store"),
    (2, 2, "2 sim + 2 store"),
];

fn endpoints() -> [Endpoint; 5] {
    [
        Endpoint::Delayed(Duration::from_millis(100)),
        Endpoint::Delayed(Duration::from_secs(2)),
        Endpoint::Delayed(Duration::from_secs(6)),
        Endpoint::LateWinner(Duration::from_secs(3)),
        Endpoint::Refusing,
    ]
}

fn runs_from_args() -> Result<usize, String> {
    let mut runs = DEFAULT_RUNS;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = match arg.as_str() {
            "--runs" | "-n" => args.next().ok_or_else(|| format!("{arg} needs a value"))?,
            "--help" | "-h" => return Err(String::new()),
            other => match other.strip_prefix("--runs=") {
                Some(v) => v.to_owned(),
                None => return Err(format!("unknown argument {other:?}")),
            },
        };
        runs = match value.parse() {
            Ok(n) if n >= 1 => n,
            _ => return Err(format!("--runs: expected a number >= 1, got {value:?}")),
        };
    }
    Ok(runs)
}

/// `a xN, b xM` from counts, or `-` when empty.
fn tally<K: Ord + ToString>(counts: &BTreeMap<K, usize>) -> String {
    if counts.is_empty() {
        return "-".to_owned();
    }
    counts
        .iter()
        .map(|(k, n)| format!("{} x{n}", k.to_string()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One row of the table.
struct Row {
    cells: Vec<String>,
    lost_with_store: usize,
}

fn summarize(endpoint: Endpoint, label: &str, stores: usize, runs: &[RaceOutcome]) -> Row {
    let per_run = |f: &dyn Fn(&RaceOutcome) -> usize| {
        runs.iter()
            .map(|r| f(r).to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let lost = runs.iter().filter(|r| r.lost_rotation()).count();
    let dropped: usize = runs.iter().map(|r| r.dropped().len()).sum();
    let mut sim_exits = BTreeMap::new();
    let mut store_exits = BTreeMap::new();
    for run in runs {
        for sim in &run.sims {
            *sim_exits.entry(sim.outcome().name()).or_insert(0) += 1;
        }
        for store in &run.stores {
            let code = store
                .code()
                .map_or_else(|| "signal".to_owned(), |c| c.to_string());
            *store_exits.entry(code).or_insert(0) += 1;
        }
    }
    let false_exit_3: usize = runs.iter().map(|r| r.false_sign_in_required().len()).sum();
    let slowest = runs.iter().map(|r| r.elapsed).max().unwrap_or_default();
    Row {
        cells: vec![
            endpoint.to_string(),
            label.to_owned(),
            per_run(&|r| r.requests),
            per_run(&|r| r.reuse_refusals),
            format!("{lost}/{}", runs.len()),
            dropped.to_string(),
            tally(&sim_exits),
            tally(&store_exits),
            if stores == 0 {
                "-".to_owned()
            } else {
                false_exit_3.to_string()
            },
            format!("{:.1} s", slowest.as_secs_f64()),
        ],
        lost_with_store: if stores > 0 { lost } else { 0 },
    }
}

const HEADER: [&str; 10] = [
    "endpoint",
    "processes",
    "requests",
    "reused",
    "lost",
    "dropped",
    "codex-sim exits",
    "codex-store exits",
    "false exit 3",
    "slowest",
];

fn print_row(cells: &[String], widths: &[usize]) {
    let line: Vec<String> = cells
        .iter()
        .zip(widths)
        .map(|(c, w)| format!("{c:<w$}"))
        .collect();
    println!("{}", line.join("  ").trim_end());
}

fn main() -> ExitCode {
    let runs = match runs_from_args() {
        Ok(n) => n,
        Err(message) if message.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("coexist: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let sim = codex_sim_bin();
    let store = codex_store_bin();
    println!("codex-sim:   {}", sim.display());
    println!("codex-store: {}", store.display());
    println!(
        "{runs} runs per cell (in parallel); every process starts at once on one expired token"
    );
    println!(
        "requests/reused: per run; lost: runs ending with a dead refresh token or a `dropped` \
         line; dropped: codex-sim processes that threw their new tokens away; false exit 3: \
         codex-store exits 3 although the endpoint rotated the token\n"
    );
    eprintln!("coexist: progress per cell (columns as in the table below, from `requests`)");

    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut widths: Vec<usize> = HEADER.iter().map(|h| h.len()).collect();
    let mut lost_with_store = 0;
    let mut failed_runs = 0;
    let header: Vec<String> = HEADER.iter().map(|h| (*h).to_owned()).collect();
    for endpoint in endpoints() {
        for (sims, stores, label) in KINDS {
            let scenario = Scenario::new(sims, stores, endpoint);
            let outcomes: Vec<Option<RaceOutcome>> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..runs)
                    .map(|_| scope.spawn(|| race(Path::new(&sim), scenario)))
                    .collect();
                handles.into_iter().map(|h| h.join().ok()).collect()
            });
            let failed = outcomes.iter().filter(|o| o.is_none()).count();
            failed_runs += failed;
            let done: Vec<RaceOutcome> = outcomes.into_iter().flatten().collect();
            let mut row = summarize(endpoint, label, stores, &done);
            if failed > 0 {
                row.cells[4].push_str(&format!(" ({failed} failed)"));
            }
            lost_with_store += row.lost_with_store;
            for (w, c) in widths.iter_mut().zip(&row.cells) {
                *w = (*w).max(c.len());
            }
            // Progress on stderr: a whole table takes a minute or more.
            eprintln!(
                "coexist: {endpoint}, {label}: {}",
                row.cells[2..].join(" | ")
            );
            rows.push(row.cells);
        }
    }

    print_row(&header, &widths);
    for row in &rows {
        print_row(row, &widths);
    }
    println!();
    if failed_runs > 0 {
        println!("{failed_runs} run(s) failed to complete (see the messages above)");
    }
    if lost_with_store > 0 {
        println!(
            "LOST ROTATIONS in {lost_with_store} run(s) involving codex-store: codex-store made \
             Codex lose its only live refresh token"
        );
        ExitCode::FAILURE
    } else if failed_runs > 0 {
        ExitCode::FAILURE
    } else {
        println!("no rotation was lost in any run involving codex-store");
        ExitCode::SUCCESS
    }
}
