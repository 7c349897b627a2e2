//! `codex-sim`: a stand-in for Codex 0.171.0 refreshing its ChatGPT tokens, for the coexistence
//! tests (cli/tests/cli/coexistence.rs) and the `coexist` example.
//!
//! Usage: `codex-sim [--force] [--old] [--no-wait]` with `CODEX_HOME` and
//! `CODEX_REFRESH_TOKEN_URL_OVERRIDE` (an `http://` URL) set. What it does, what it prints and
//! its exit codes are documented in `codex_store_tests::codex_sim`; in short it does what
//! Codex 0.171.0 was measured (strace) to do: the request goes out before any lock, then
//! `flock(auth.lock, LOCK_EX)` without a time limit, then `flock(auth.json.lock, LOCK_EX|LOCK_NB)`
//! every 10 ms for 5 s, after which the new tokens are dropped; else re-read, temp `.auth-XXXXXX`,
//! fsync, rename. No token is ever printed, only fingerprints.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rustix::fs::FlockOperation;
use rustix::io::Errno;
use serde_json::{json, Map, Value};

use codex_store_tests::codex_sim::{exit, STORE_LOCK_PATIENCE, STORE_LOCK_RETRY, TOKEN_URL_ENV};
use codex_store_tests::http::{Client, Post};
use codex_store_tests::jwt::rfc3339;
use codex_store_tests::secrets::fingerprint;

const USAGE: &str = "usage: codex-sim [--force] [--old] [--no-wait] [--live SECONDS]   \
     (CODEX_HOME and CODEX_REFRESH_TOKEN_URL_OVERRIDE=http://... must be set)";

/// Codex's OAuth client id.
const CLIENT_ID: &str = "app_EMoamEEZ73f0CkXaXp7hrann";
/// A refresh is due when the access token expires within this many seconds.
const REFRESH_WINDOW_SECS: i64 = 5 * 60;
/// The longest the refresh request may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest answer read.
const MAX_ANSWER: usize = 1024 * 1024;

struct Options {
    force: bool,
    old: bool,
    no_wait: bool,
    /// `--live SECONDS`: a long-lived process (an app server) instead of one refresh.
    live: Option<Duration>,
    home: PathBuf,
    url: Url,
}

struct Url {
    host: String,
    port: u16,
    path: String,
}

/// The ChatGPT tokens of a document.
#[derive(Clone)]
struct Tokens {
    access_token: String,
    refresh_token: String,
}

/// A read of auth.json: its bytes, the document and its tokens.
struct Loaded {
    bytes: Vec<u8>,
    doc: Value,
    tokens: Tokens,
}

/// Why the run stopped early: an exit code and a message for stderr.
struct Stop {
    code: i32,
    message: String,
}

impl Stop {
    fn usage(message: impl Into<String>) -> Stop {
        Stop {
            code: exit::USAGE,
            message: message.into(),
        }
    }

    fn other(message: impl Into<String>) -> Stop {
        Stop {
            code: exit::OTHER,
            message: message.into(),
        }
    }
}

/// Prints one event line and flushes it.
fn event(line: String) -> Result<(), Stop> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| Stop::other(format!("cannot write to stdout: {e}")))
}

fn parse_url(text: &str) -> Result<Url, Stop> {
    let rest = text.strip_prefix("http://").ok_or_else(|| {
        Stop::usage(format!(
            "{TOKEN_URL_ENV} must be an http:// URL (a local fake endpoint)"
        ))
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse()
                .map_err(|_| Stop::usage(format!("bad port in {TOKEN_URL_ENV}")))?,
        ),
        None => (authority, 80),
    };
    if host.is_empty() {
        return Err(Stop::usage(format!("no host in {TOKEN_URL_ENV}")));
    }
    Ok(Url {
        host: host.to_owned(),
        port,
        path: path.to_owned(),
    })
}

fn parse_options() -> Result<Options, Stop> {
    let (mut force, mut old, mut no_wait, mut live) = (false, false, false, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--force" => force = true,
            "--old" => old = true,
            "--no-wait" => no_wait = true,
            "--live" => {
                let secs = args
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .filter(|v| v.is_finite() && *v > 0.0)
                    .ok_or_else(|| {
                        Stop::usage(format!("--live takes a number of seconds\n{USAGE}"))
                    })?;
                live = Some(Duration::from_secs_f64(secs));
            }
            other => return Err(Stop::usage(format!("unknown argument {other:?}\n{USAGE}"))),
        }
    }
    let home = std::env::var_os("CODEX_HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| Stop::usage(format!("CODEX_HOME is not set\n{USAGE}")))?;
    if !home.is_dir() {
        return Err(Stop::usage(format!(
            "CODEX_HOME {} is not a directory",
            home.display()
        )));
    }
    let url = std::env::var(TOKEN_URL_ENV)
        .map_err(|_| Stop::usage(format!("{TOKEN_URL_ENV} is not set\n{USAGE}")))?;
    Ok(Options {
        force,
        old,
        no_wait,
        live,
        home,
        url: parse_url(&url)?,
    })
}

fn read_auth(path: &Path) -> Result<Loaded, Stop> {
    let bytes =
        fs::read(path).map_err(|e| Stop::other(format!("cannot read {}: {e}", path.display())))?;
    let doc: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Stop::other(format!("{} is not JSON: {e}", path.display())))?;
    let tokens = tokens_of(&doc)
        .ok_or_else(|| Stop::other(format!("{} holds no ChatGPT tokens", path.display())))?;
    Ok(Loaded { bytes, doc, tokens })
}

fn tokens_of(doc: &Value) -> Option<Tokens> {
    let tokens = doc.get("tokens")?;
    Some(Tokens {
        access_token: tokens.get("access_token")?.as_str()?.to_owned(),
        refresh_token: tokens.get("refresh_token")?.as_str()?.to_owned(),
    })
}

/// The `exp` claim of a JWT, if readable.
fn exp_of(jwt: &str) -> Option<i64> {
    let payload = jwt.split('.').nth(1)?;
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    claims.get("exp")?.as_i64()
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Seconds until the access token expires; `None` when it has no readable `exp` (then a refresh
/// counts as due).
fn expires_in(tokens: &Tokens) -> Option<i64> {
    exp_of(&tokens.access_token).map(|exp| exp - now_unix())
}

fn is_due(tokens: &Tokens) -> bool {
    expires_in(tokens).is_none_or(|left| left <= REFRESH_WINDOW_SECS)
}

fn end(outcome: &str, tokens: &Tokens) -> Result<(), Stop> {
    event(format!(
        "end outcome={outcome} at={} rt={}",
        fingerprint(&tokens.access_token),
        fingerprint(&tokens.refresh_token)
    ))
}

/// How a refresh attempt ended: the exit code, the outcome's name and the tokens held after it.
struct Settled {
    code: i32,
    outcome: &'static str,
    holding: Tokens,
}

impl Settled {
    fn new(code: i32, outcome: &'static str, holding: &Tokens) -> Settled {
        Settled {
            code,
            outcome,
            holding: holding.clone(),
        }
    }
}

/// What the endpoint answered.
enum Answer {
    /// 200 with a usable access token.
    Tokens {
        access_token: String,
        refresh_token: Option<String>,
        id_token: Option<String>,
    },
    /// A refusal or failure: the HTTP status (0: none) and the error code, lower-cased.
    Error {
        status: u16,
        code: Option<String>,
        permanent: bool,
        what: String,
    },
}

fn post_json(url: &Url, body: &str) -> io::Result<(u16, Vec<u8>)> {
    let authority = format!("{}:{}", url.host, url.port);
    let answer = Client::new().post(&Post {
        authority: &authority,
        path: &url.path,
        headers: &[
            ("accept", "application/json"),
            ("user-agent", "codex-sim/0.171.0"),
        ],
        body,
        timeout: HTTP_TIMEOUT,
        max_answer: MAX_ANSWER,
    })?;
    Ok((answer.status, answer.body))
}

/// The error code of an error answer: `{"error":{"code":..}}`, `{"error":".."}` or `{"code":..}`.
fn error_code(body: &[u8]) -> Option<String> {
    let doc: Value = serde_json::from_slice(body).ok()?;
    let code = match doc.get("error") {
        Some(Value::Object(e)) => e.get("code").and_then(Value::as_str),
        Some(Value::String(s)) => Some(s.as_str()),
        _ => None,
    }
    .or_else(|| doc.get("code").and_then(Value::as_str))?;
    Some(code.to_lowercase())
}

fn refresh(url: &Url, refresh_token: &str, reason: &str) -> Answer {
    let body = json!({
        "client_id": CLIENT_ID,
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
        "refresh_reason": reason,
    })
    .to_string();
    let (status, body) = match post_json(url, &body) {
        Ok(answer) => answer,
        Err(e) => {
            return Answer::Error {
                status: 0,
                code: None,
                permanent: false,
                what: format!("request failed: {}", e.kind()),
            }
        }
    };
    if status == 200 {
        let doc: Option<Value> = serde_json::from_slice(&body).ok();
        let field = |name: &str| {
            doc.as_ref()
                .and_then(|d| d.get(name))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        return match field("access_token") {
            Some(access_token) => Answer::Tokens {
                access_token,
                refresh_token: field("refresh_token"),
                id_token: field("id_token"),
            },
            None => Answer::Error {
                status,
                code: None,
                permanent: false,
                what: "200 without a usable access token".into(),
            },
        };
    }
    let code = error_code(&body);
    let permanent = status == 401
        || (status == 400 && code.as_deref() == Some("invalid_grant"))
        || matches!(
            code.as_deref(),
            Some("refresh_token_expired" | "refresh_token_reused" | "refresh_token_invalidated")
        );
    Answer::Error {
        status,
        code,
        permanent,
        what: format!("HTTP {status}"),
    }
}

/// `flock` with retries on EINTR.
fn flock(file: &File, operation: FlockOperation) -> io::Result<()> {
    loop {
        match rustix::fs::flock(file, operation) {
            Ok(()) => return Ok(()),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn open_lock(path: &Path, mode: u32) -> Result<File, Stop> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(mode)
        // O_CLOEXEC, as Codex opens it: std opens every file so.
        .open(path)
        .map_err(|e| Stop::other(format!("cannot open {}: {e}", path.display())))
}

/// RFC 3339 UTC with nanoseconds, as Codex writes `last_refresh`.
fn now_nanos() -> String {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = rfc3339(i64::try_from(since.as_secs()).unwrap_or(i64::MAX));
    let base = secs.strip_suffix('Z').unwrap_or(&secs);
    format!("{base}.{:09}Z", since.subsec_nanos())
}

/// The document Codex writes: only the keys it knows, the tokens of the answer (a missing field
/// keeps the value of `base`), `last_refresh` now.
fn merged_document(
    base: &Value,
    access_token: &str,
    refresh_token: Option<&str>,
    id_token: Option<&str>,
) -> String {
    let old = base.get("tokens").cloned().unwrap_or(Value::Null);
    let keep = |name: &str| old.get(name).cloned().unwrap_or(Value::Null);
    let mut doc = Map::new();
    if let Some(mode) = base.get("auth_mode").filter(|m| !m.is_null()) {
        doc.insert("auth_mode".into(), mode.clone());
    }
    doc.insert(
        "OPENAI_API_KEY".into(),
        base.get("OPENAI_API_KEY").cloned().unwrap_or(Value::Null),
    );
    doc.insert(
        "tokens".into(),
        json!({
            "id_token": id_token.map_or_else(|| keep("id_token"), |t| Value::String(t.into())),
            "access_token": access_token,
            "refresh_token": refresh_token
                .map_or_else(|| keep("refresh_token"), |t| Value::String(t.into())),
            "account_id": keep("account_id"),
        }),
    );
    doc.insert("last_refresh".into(), Value::String(now_nanos()));
    serde_json::to_string_pretty(&Value::Object(doc)).expect("a JSON value always serializes")
}

/// A name `.auth-XXXXXX` not used yet, like mkstemp's.
fn temp_candidate(dir: &Path, attempt: u32) -> PathBuf {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut x = (nanos as u64)
        ^ (u64::from(std::process::id()) << 32)
        ^ u64::from(attempt).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut name = String::from(".auth-");
    for _ in 0..6 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        name.push(char::from(ALPHABET[(x % ALPHABET.len() as u64) as usize]));
    }
    dir.join(name)
}

/// Writes `text` to a new `.auth-XXXXXX` (O_EXCL, 0600), fsyncs it and renames it over `path`.
fn replace(dir: &Path, path: &Path, text: &str) -> Result<(), Stop> {
    let mut attempt = 0;
    let (temp, mut file) = loop {
        let candidate = temp_candidate(dir, attempt);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            // O_CLOEXEC, as Codex opens it: std opens every file so.
            .open(&candidate)
        {
            Ok(file) => break (candidate, file),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 100 => attempt += 1,
            Err(e) => {
                return Err(Stop::other(format!(
                    "cannot create {}: {e}",
                    candidate.display()
                )))
            }
        }
    };
    let written = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .and_then(|()| fs::rename(&temp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(Stop::other(format!(
            "cannot replace {}: {e}",
            path.display()
        )));
    }
    Ok(())
}

/// Writes `text` over `path` in place: open with truncate, write, close. No lock, no fsync.
fn write_in_place(path: &Path, text: &str) -> Result<(), Stop> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| Stop::other(format!("cannot write {}: {e}", path.display())))
}

/// The document to merge the answer into: auth.json as it is now, or what was read before the
/// request when it cannot be read now.
fn current_or(path: &Path, fallback: &Value) -> Value {
    fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .filter(Value::is_object)
        .unwrap_or_else(|| fallback.clone())
}

/// Persists the answer like Codex 0.171.0; returns the exit code.
fn persist(
    options: &Options,
    path: &Path,
    read: &Loaded,
    access_token: &str,
    refresh_token: Option<&str>,
    id_token: Option<&str>,
) -> Result<Settled, Stop> {
    let new = Tokens {
        access_token: access_token.to_owned(),
        refresh_token: refresh_token.map_or_else(|| read.tokens.refresh_token.clone(), Into::into),
    };
    if options.old {
        let base = current_or(path, &read.doc);
        write_in_place(
            path,
            &merged_document(&base, access_token, refresh_token, id_token),
        )?;
        event(format!(
            "wrote-in-place rt={} at={}",
            fingerprint(&new.refresh_token),
            fingerprint(&new.access_token)
        ))?;
        return Ok(Settled::new(exit::SAVED, "saved", &new));
    }
    let outer = open_lock(&options.home.join("auth.lock"), 0o644)?;
    let started = Instant::now();
    flock(&outer, FlockOperation::LockExclusive)
        .map_err(|e| Stop::other(format!("flock(auth.lock): {e}")))?;
    event(format!(
        "locked auth.lock waited_ms={}",
        started.elapsed().as_millis()
    ))?;
    let inner = open_lock(&options.home.join("auth.json.lock"), 0o600)?;
    let started = Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match flock(&inner, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => break,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if started.elapsed() >= STORE_LOCK_PATIENCE {
                    drop(inner);
                    drop(outer);
                    event(format!(
                        "dropped rt={} waited_ms={} attempts={attempts}",
                        fingerprint(&new.refresh_token),
                        started.elapsed().as_millis()
                    ))?;
                    return Ok(Settled::new(exit::DROPPED, "dropped", &read.tokens));
                }
                std::thread::sleep(STORE_LOCK_RETRY);
            }
            Err(e) => return Err(Stop::other(format!("flock(auth.json.lock): {e}"))),
        }
    }
    event(format!(
        "locked auth.json.lock waited_ms={} attempts={attempts}",
        started.elapsed().as_millis()
    ))?;
    let base = current_or(path, &read.doc);
    replace(
        &options.home,
        path,
        &merged_document(&base, access_token, refresh_token, id_token),
    )?;
    drop(inner);
    drop(outer);
    event(format!(
        "saved rt={} at={}",
        fingerprint(&new.refresh_token),
        fingerprint(&new.access_token)
    ))?;
    Ok(Settled::new(exit::SAVED, "saved", &new))
}

/// How often a live process looks at its cached token (an app server answering requests).
const LIVE_TICK: Duration = Duration::from_millis(50);

/// `--live`: a long-lived Codex process. It keeps its tokens in memory and uses them; when they
/// become due it re-reads auth.json (adopting a newer file without a request, as Codex does) and
/// otherwise refreshes as the one-shot run does. A refusal it cannot recover from ends the run
/// (`stuck`, `refused`); at the end of the span it prints `end outcome=lived` with the tokens it
/// holds.
fn live_run(options: &Options, path: &Path, span: Duration) -> Result<i32, Stop> {
    let mut cached = read_auth(path)?;
    event(format!(
        "read rt={} at={} exp_in={}",
        fingerprint(&cached.tokens.refresh_token),
        fingerprint(&cached.tokens.access_token),
        expires_in(&cached.tokens).map_or_else(|| "unknown".to_owned(), |s| s.to_string())
    ))?;
    wait_for_start(options)?;
    let deadline = Instant::now() + span;
    while Instant::now() < deadline {
        if is_due(&cached.tokens) {
            // A file caught half way by an in-place writer: look again at the next tick.
            if let Ok(read) = read_auth(path) {
                if read.bytes != cached.bytes && !is_due(&read.tokens) {
                    event(format!(
                        "adopted rt={} when=before-request",
                        fingerprint(&read.tokens.refresh_token)
                    ))?;
                    cached = read;
                    continue;
                }
                event("due reason=proactive_expiry".into())?;
                let settled = redeem(options, path, &read, "proactive_expiry")?;
                match settled.code {
                    exit::SAVED | exit::ADOPTED_AFTER_REUSE | exit::DROPPED | exit::TRANSIENT => {
                        // What it now holds is what the file holds (when the file is readable).
                        cached = match read_auth(path) {
                            Ok(now)
                                if now.tokens.refresh_token == settled.holding.refresh_token =>
                            {
                                now
                            }
                            _ => Loaded {
                                tokens: settled.holding,
                                ..read
                            },
                        };
                    }
                    code => {
                        end(settled.outcome, &settled.holding)?;
                        return Ok(code);
                    }
                }
            }
        }
        std::thread::sleep(LIVE_TICK);
    }
    end("lived", &cached.tokens)?;
    Ok(exit::LIVED)
}

/// Prints `ready` and waits for the start line on stdin, unless `--no-wait`.
fn wait_for_start(options: &Options) -> Result<(), Stop> {
    if options.no_wait {
        return Ok(());
    }
    event("ready".into())?;
    let mut line = String::new();
    let n = io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Stop::usage(format!("cannot read the start line: {e}")))?;
    if n == 0 {
        return Err(Stop::usage("stdin closed before the start line"));
    }
    Ok(())
}

fn run() -> Result<i32, Stop> {
    let options = parse_options()?;
    let path = options.home.join("auth.json");
    if let Some(span) = options.live {
        return live_run(&options, &path, span);
    }
    let first = read_auth(&path)?;
    event(format!(
        "read rt={} at={} exp_in={}",
        fingerprint(&first.tokens.refresh_token),
        fingerprint(&first.tokens.access_token),
        expires_in(&first.tokens).map_or_else(|| "unknown".to_owned(), |s| s.to_string())
    ))?;
    let reason = if is_due(&first.tokens) {
        "proactive_expiry"
    } else if options.force {
        "forced"
    } else {
        event("fresh".into())?;
        end("not-due", &first.tokens)?;
        return Ok(exit::NOT_DUE);
    };
    event(format!("due reason={reason}"))?;
    wait_for_start(&options)?;

    // Like Codex: re-read just before the request, and adopt a file another process refreshed.
    let read = read_auth(&path)?;
    if read.bytes == first.bytes {
        event("reread unchanged".into())?;
    } else {
        event(format!(
            "reread changed rt={}",
            fingerprint(&read.tokens.refresh_token)
        ))?;
        if !is_due(&read.tokens) {
            event(format!(
                "adopted rt={} when=before-request",
                fingerprint(&read.tokens.refresh_token)
            ))?;
            end("adopted-before-request", &read.tokens)?;
            return Ok(exit::ADOPTED_BEFORE_REQUEST);
        }
    }

    let settled = redeem(&options, &path, &read, reason)?;
    end(settled.outcome, &settled.holding)?;
    Ok(settled.code)
}

/// Sends the request with the refresh token of `read` and settles the answer like Codex.
fn redeem(options: &Options, path: &Path, read: &Loaded, reason: &str) -> Result<Settled, Stop> {
    event(format!(
        "requesting rt={} reason={reason}",
        fingerprint(&read.tokens.refresh_token)
    ))?;
    match refresh(&options.url, &read.tokens.refresh_token, reason) {
        Answer::Tokens {
            access_token,
            refresh_token,
            id_token,
        } => {
            event("answer status=200".into())?;
            persist(
                options,
                path,
                read,
                &access_token,
                refresh_token.as_deref(),
                id_token.as_deref(),
            )
        }
        Answer::Error {
            status,
            code,
            permanent,
            what,
        } => {
            let shown = code.clone().unwrap_or_else(|| "-".into());
            event(format!("answer status={status} code={shown}"))?;
            if !permanent {
                event(format!("transient what={}", what.replace(' ', "_")))?;
                return Ok(Settled::new(exit::TRANSIENT, "transient", &read.tokens));
            }
            event(format!("refused code={shown} status={status}"))?;
            if code.as_deref() != Some("refresh_token_reused") {
                return Ok(Settled::new(exit::REFUSED, "refused", &read.tokens));
            }
            // Like Codex: look at the file once more, and adopt it if another process rotated.
            let again = read_auth(path).ok();
            match again {
                Some(again) if again.tokens.refresh_token != read.tokens.refresh_token => {
                    event(format!(
                        "reread changed rt={}",
                        fingerprint(&again.tokens.refresh_token)
                    ))?;
                    event(format!(
                        "adopted rt={} when=after-reuse",
                        fingerprint(&again.tokens.refresh_token)
                    ))?;
                    Ok(Settled::new(
                        exit::ADOPTED_AFTER_REUSE,
                        "adopted-after-reuse",
                        &again.tokens,
                    ))
                }
                _ => {
                    event("reread unchanged".into())?;
                    event("stuck".into())?;
                    Ok(Settled::new(exit::STUCK, "stuck", &read.tokens))
                }
            }
        }
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(stop) => {
            eprintln!("codex-sim: {}", stop.message);
            ExitCode::from(u8::try_from(stop.code).unwrap_or(1))
        }
    }
}
