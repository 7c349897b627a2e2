//! 2. The system calls of the fast path: this binary re-runs itself under `strace -f` and counts
//!    the calls of the main thread between two marker system calls.

use std::hint::black_box;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use codex_store_tests::programs::on_path;

use crate::common::{cached_manager, current_thread_runtime, home_with_tokens};
use crate::STRACE_CHILD_ENV;

/// Fast-path calls between the strace markers.
const TRACED_CALLS: usize = 100_000;

/// Runs in the copy of this binary started under strace: prints `tid <main thread id>`, then
/// makes the marker system call getppid, [`TRACED_CALLS`] fast-path calls, and the marker
/// system call getpid (both made by rustix as system calls, never a vDSO or a cache), on the
/// main thread.
pub fn strace_child(dir: &Path) {
    let manager = cached_manager(dir);
    let runtime = current_thread_runtime();
    runtime.block_on(async {
        for _ in 0..1000 {
            black_box(manager.auth().await.expect("auth() failed"));
        }
    });
    let tid = rustix::thread::gettid().as_raw_nonzero();
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "tid {tid}").expect("cannot write to stdout");
        out.flush().expect("cannot flush stdout");
    }
    let failures = runtime.block_on(async {
        let mut failures = 0usize;
        black_box(rustix::process::getppid());
        for _ in 0..TRACED_CALLS {
            if black_box(manager.auth().await).is_err() {
                failures += 1;
            }
        }
        black_box(rustix::process::getpid());
        failures
    });
    println!("failures {failures}");
}

/// Counts the system calls (and signals) strace recorded for thread `tid` strictly between its
/// first getppid line and the next getpid line; returns the count and the names of those calls
/// (or why it could not).
fn count_between_markers(trace: &str, tid: &str) -> Result<(usize, Vec<String>), String> {
    let mut inside = false;
    let mut names = Vec::new();
    for line in trace.lines() {
        let mut parts = line.splitn(2, char::is_whitespace);
        if parts.next() != Some(tid) {
            continue;
        }
        let call = parts.next().unwrap_or("").trim_start();
        if !inside {
            inside = call.starts_with("getppid(");
            continue;
        }
        if call.starts_with("getpid(") {
            return Ok((names.len(), names));
        }
        if call.starts_with("<...") {
            // The second half of a call already counted at its `<unfinished ...>` line.
            continue;
        }
        let name: String = call
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        names.push(if name.is_empty() {
            call.to_owned()
        } else {
            name
        });
    }
    Err(if inside {
        "the end marker (getpid) is missing from the trace".into()
    } else {
        format!("the start marker (getppid) of thread {tid} is missing from the trace")
    })
}

/// Returns false only when syscalls were counted and there were some.
pub fn syscalls() -> bool {
    let label = format!("auth() fast path: syscalls in {TRACED_CALLS} calls:");
    let Some(strace) = on_path("strace") else {
        println!("{label} not counted: strace not installed (apt-get install strace)");
        return true;
    };
    let home = home_with_tokens(3600);
    let trace_path = home.path().join("strace.out");
    let exe = std::env::current_exe().expect("cannot locate this bench binary");
    let output = Command::new(&strace)
        .args(["-f", "-qq", "-e", "trace=all", "-o"])
        .arg(&trace_path)
        .arg(&exe)
        .env(STRACE_CHILD_ENV, home.path())
        .stdin(Stdio::null())
        .output();
    let output = match output {
        Ok(output) => output,
        Err(e) => {
            println!("{label} not counted: cannot run {}: {e}", strace.display());
            return true;
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let tid = stdout
        .lines()
        .find_map(|l| l.strip_prefix("tid "))
        .map(str::trim);
    let failures = stdout
        .lines()
        .find_map(|l| l.strip_prefix("failures "))
        .map(str::trim);
    let (Some(tid), Some("0"), true) = (tid, failures, output.status.success()) else {
        println!(
            "{label} not counted: the traced child failed ({}; stdout {:?}; stderr {:?})",
            output.status,
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        // A child that ran but whose auth() failed is a real failure; strace refusing to run
        // (no ptrace in a container) is not.
        return failures.is_none();
    };
    let trace = match std::fs::read_to_string(&trace_path) {
        Ok(trace) => trace,
        Err(e) => {
            println!("{label} not counted: cannot read the trace: {e}");
            return true;
        }
    };
    match count_between_markers(&trace, tid) {
        Ok((0, _)) => {
            println!("{label} 0 (target 0) PASS (strace -f, main thread {tid}, between getppid/getpid markers)");
            true
        }
        Ok((count, names)) => {
            let mut distinct: Vec<(String, usize)> = Vec::new();
            for name in names {
                match distinct.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, c)) => *c += 1,
                    None => distinct.push((name, 1)),
                }
            }
            let summary: Vec<String> = distinct
                .iter()
                .take(10)
                .map(|(n, c)| format!("{n} x{c}"))
                .collect();
            println!("{label} {count} (target 0) FAIL: {}", summary.join(", "));
            false
        }
        Err(why) => {
            println!("{label} not counted: {why}");
            true
        }
    }
}
