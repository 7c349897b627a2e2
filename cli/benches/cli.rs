//! Benchmark of the `codex-store` command (`cargo bench -p codex-store-cli --bench cli`):
//! whole-process wall time of `codex-store inspect --json` on a 2 KiB auth.json holding made-up
//! ChatGPT credentials, against `cat` of the same file (and `codex-store --version`, the
//! binary's bare start-up), interleaved in one run.
//!
//! The binary is the one cargo built for this bench, `env!("CARGO_BIN_EXE_codex-store")`.
//!
//! Run without `--bench` (as `cargo test --benches` does), it runs a short smoke version.
//! Exits 1 when `inspect --json` fails or prints something that is not the expected report.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use codex_store_tests::jwt;
use codex_store_tests::programs::on_path;
use codex_store_tests::stats::Summary;
use serde_json::{json, Value};

const FILE_SIZE: usize = 2048;
const ACCOUNT: &str = "5f0e8c2a-7d41-4b7e-9a53-1c2d3e4f5a6b";
const EMAIL: &str = "bench.user@example.com";
const TARGET_MS: f64 = 5.0;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (warmup, runs) = if full { (20, 200) } else { (3, 20) };
    if !full {
        println!("(smoke run without --bench: fewer runs; use `cargo bench` for the numbers)");
    }

    let codex_store = PathBuf::from(env!("CARGO_BIN_EXE_codex-store"));
    let Some(cat) = on_path("cat") else {
        eprintln!("cli bench: `cat` is not on PATH");
        std::process::exit(1);
    };
    let home = tempfile::tempdir().expect("cannot create a temporary CODEX_HOME");
    let auth_path = write_auth_json(home.path());
    let size = std::fs::metadata(&auth_path).map_or(0, |m| m.len());

    let mut inspect = Command::new(&codex_store);
    inspect
        .arg("--home")
        .arg(home.path())
        .args(["inspect", "--json"])
        .env("CODEX_HOME", home.path())
        .env_remove("RUST_LOG");
    let mut version = Command::new(&codex_store);
    version.arg("--version").env_remove("RUST_LOG");
    let mut cat_cmd = Command::new(&cat);
    cat_cmd.arg(&auth_path);

    if let Err(e) = check_inspect(&mut inspect, &auth_path) {
        eprintln!("cli bench: {e}");
        std::process::exit(1);
    }

    let mut commands = [
        ("cat", cat_cmd, Vec::new()),
        ("inspect", inspect, Vec::new()),
        ("version", version, Vec::new()),
    ];
    for round in 0..warmup + runs {
        // Rotate the order so that none always runs first after the others' cache effects.
        for k in 0..commands.len() {
            let idx = (round + k) % commands.len();
            let (name, command, samples) = &mut commands[idx];
            let elapsed = time_once(command).unwrap_or_else(|e| {
                eprintln!("cli bench: {name} failed: {e}");
                std::process::exit(1);
            });
            if round >= warmup {
                samples.push(elapsed.as_secs_f64() * 1000.0);
            }
        }
    }

    let stats: Vec<(&str, f64, f64)> = commands
        .iter()
        .map(|(name, _, samples)| {
            let summary = Summary::of(samples);
            (*name, summary.p50, summary.p99)
        })
        .collect();
    let (_, cat_med, cat_p99) = stats[0];
    let (_, ins_med, ins_p99) = stats[1];
    let (_, ver_med, ver_p99) = stats[2];
    println!(
        "codex-store inspect --json on a {size}-byte auth.json, {runs} runs each interleaved with cat and --version ({})",
        codex_store.display()
    );
    println!(
        "cat auth.json:              median {cat_med:.2} ms | p99 {cat_p99:.2} ms (whole process)"
    );
    println!(
        "codex-store --version:      median {ver_med:.2} ms | p99 {ver_p99:.2} ms (start-up only)"
    );
    println!(
        "codex-store inspect --json: median {ins_med:.2} ms | p99 {ins_p99:.2} ms | ratio to cat: median {:.2}x, p99 {:.2}x | over --version: {:+.2} ms",
        ins_med / cat_med,
        ins_p99 / cat_p99,
        ins_med - ver_med
    );
    println!(
        "inspect median {ins_med:.2} ms (target under {TARGET_MS:.0} ms) {}",
        if ins_med < TARGET_MS { "PASS" } else { "FAIL" }
    );
}

/// Spawns, waits, and discards the output; the wall time of the whole process.
fn time_once(command: &mut Command) -> Result<Duration, String> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let started = Instant::now();
    let status = command.status().map_err(|e| e.to_string())?;
    let elapsed = started.elapsed();
    if !status.success() {
        return Err(format!("exited with {status}"));
    }
    Ok(elapsed)
}

/// Runs `inspect --json` once and checks it reports the file's account, without a problem.
fn check_inspect(inspect: &mut Command, auth_path: &Path) -> Result<(), String> {
    let output = inspect
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run codex-store: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "codex-store inspect --json exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let report: Value = serde_json::from_slice(&output.stdout).map_err(|e| {
        format!(
            "inspect --json printed no JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })?;
    let expected = (
        report["exists"] == json!(true),
        report["account_id"] == json!(ACCOUNT),
        report["email"] == json!(EMAIL),
        report["refresh_due"] == json!(false),
    );
    if expected != (true, true, true, true) {
        return Err(format!(
            "inspect --json does not report {} as expected: {report}",
            auth_path.display()
        ));
    }
    Ok(())
}

/// Writes a pretty-printed ChatGPT auth.json of exactly [`FILE_SIZE`] bytes (0600): realistic
/// claims in the id and access tokens, padded through a filler claim of the access token.
fn write_auth_json(dir: &Path) -> PathBuf {
    use std::os::unix::fs::OpenOptionsExt;
    let now = jwt::now_unix();
    let id_token = jwt::make_jwt(&json!({
        "iss": "https://auth.openai.com",
        "aud": ["app_EMoamEEZ73f0CkXaXp7hrann"],
        "sub": "auth0|a1b2c3d4e5f6a7b8c9d0e1f2",
        "iat": now - 60,
        "exp": now + 3600,
        "auth_time": now - 120,
        "email": EMAIL,
        "email_verified": true,
        jwt::AUTH_CLAIM: {
            "chatgpt_account_id": ACCOUNT,
            "chatgpt_plan_type": "pro",
            "chatgpt_user_id": "user-Qk3bN8xY2vR7tL1mP9wZ4cH6",
            "organizations": [{"id": "org-Xy7Kq2Lm9Np4Rs8Tv1Wz3Bc5", "is_default": true, "role": "owner", "title": "Personal"}],
        },
    }));
    let refresh_token = format!("rt_{}", "Zb3Lq8Vn2Kx7Mw4Py9Rt1Hs6Jd5Fg0Ac".repeat(2));
    let mut filler = 0usize;
    loop {
        let access_token = jwt::make_jwt(&json!({
            "iss": "https://auth.openai.com",
            "aud": ["https://api.openai.com/v1"],
            "sub": "auth0|a1b2c3d4e5f6a7b8c9d0e1f2",
            "iat": now - 60,
            "exp": now + 3600,
            "scp": ["openid", "profile", "email", "offline_access"],
            "session_id": "authsess_4f8b2c9e1d7a3f6b0c5e",
            "jti": "x".repeat(filler),
        }));
        let text = jwt::auth_json(&access_token, &refresh_token, &id_token, ACCOUNT);
        if text.len() >= FILE_SIZE || filler > 4 * FILE_SIZE {
            let path = dir.join("auth.json");
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .expect("cannot create auth.json");
            file.write_all(text.as_bytes())
                .expect("cannot write auth.json");
            return path;
        }
        filler += 1;
    }
}
