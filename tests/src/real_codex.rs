//! The real Codex CLI beside codex-store, for the interop check `cli/tests/cli/real_codex.rs`:
//! installing `@openai/codex@0.171.0` with npm, a local stand-in for Codex's ChatGPT backend, and
//! `codex app-server` processes driven over JSON-RPC on their stdin and stdout.
//!
//! What the check relies on, measured on Codex 0.171.0 (Linux x86_64, strace and a logging
//! endpoint):
//! - `codex app-server` refreshes an expired access token at start-up on its own, before and
//!   without any client message. The request is sent before any lock is taken; the answer is then
//!   persisted under `flock(auth.lock)` (blocking) and `flock(auth.json.lock, LOCK_NB)` retried
//!   every 10 ms for 5 s; when that lock cannot be had the new tokens are thrown away.
//! - The JSON-RPC method `getAuthStatus` with `{"includeToken": true, "refreshToken": false}`
//!   answers `authToken`: the access token the process will send next. It waits for a refresh in
//!   flight, and a process whose token is expired or gone (after `refresh_token_reused`) first
//!   re-reads auth.json and adopts it when it changed, without a request. So it tells which token
//!   a Codex process ends with. `account/read` does not reveal the token; with
//!   `{"refreshToken": true}` it forces a refresh.
//! - After `refresh_token_reused` with an unchanged auth.json, Codex holds no token: `authToken`
//!   is null and `account/read` answers `"account": null`, until auth.json changes.
//! - At start-up Codex calls `GET {openai_base_url}/models`, `GET
//!   {chatgpt_base_url}ps/plugins/installed` (two or three times) and `GET
//!   {chatgpt_base_url}wham/accounts/check` (workspace routing discovery). [`BackendStub`] answers
//!   them. Without `openai_base_url` the model list is fetched from `https://chatgpt.com`, so
//!   every Codex process here also gets that stub as its HTTP(S) proxy: a request for any other
//!   host reaches the stub, is refused, and is recorded ([`BackendStub::escapes`]).
//! - Workspace routing needs an `https` backend origin, so `account/read` answers the error
//!   "workspace backend must use an HTTPS origin without credentials" against this plain-HTTP
//!   stub once the process holds a token (and `"account": null` when it holds none). Token
//!   refresh and `getAuthStatus` do not depend on it.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use rustix::fs::FlockOperation;
use rustix::io::Errno;
use serde_json::{json, Value};

use crate::http::{Request, Response, Server, ServerOptions};
use crate::lock;
use crate::process::{Process, EVENT_TIMEOUT};
use crate::programs::on_path;
use crate::secrets::{redact, register_secret};

/// The npm package of the Codex CLI.
pub const CODEX_NPM_PACKAGE: &str = "@openai/codex";

/// The Codex version whose behaviour the check was written against.
pub const CODEX_VERSION: &str = "0.171.0";

/// Names a Codex binary to use instead of installing the npm package.
pub const CODEX_BIN_ENV: &str = "CODEX_BIN";

/// The longest an npm install may take.
const NPM_TIMEOUT: Duration = Duration::from_secs(600);

/// The longest one JSON-RPC answer of a Codex process may take. Generous: `getAuthStatus` waits
/// for a refresh in flight, which against a slow endpoint, with Codex's 5 s lock window and a
/// second attempt, can take 20 s.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(90);

/// Largest request body the backend stub reads (and discards).
const STUB_MAX_BODY: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// The binary
// ---------------------------------------------------------------------------------------------

/// The Codex binary to test: `$CODEX_BIN` when set, otherwise the prebuilt Linux binary of
/// `@openai/codex@0.171.0`, installed with npm into [`npm_cache_dir`] on first use (and reused
/// while that directory holds this version). Resolved once per process.
///
/// Panics, naming npm and the package, when npm is missing or the install fails: the check never
/// skips.
pub fn codex_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os(CODEX_BIN_ENV).filter(|v| !v.is_empty()) {
            let bin = PathBuf::from(bin);
            let version = codex_version(&bin);
            if !version.contains(CODEX_VERSION) {
                eprintln!(
                    "real_codex: {CODEX_BIN_ENV}={} reports {version:?}; the check was written \
                     against {CODEX_VERSION}",
                    bin.display()
                );
            }
            return bin;
        }
        install_with_npm(&npm_cache_dir())
    })
    .clone()
}

/// Where the npm package is installed: `<cargo target dir>/codex-npm`, found from the running
/// test executable (`<target>/<profile>/deps/<test>`).
pub fn npm_cache_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the path of the running test executable");
    let target = exe.ancestors().nth(3).unwrap_or_else(|| {
        panic!(
            "{} is not inside <target>/<profile>/deps/: cannot place the npm cache",
            exe.display()
        )
    });
    target.join("codex-npm")
}

/// The npm package holding the prebuilt binary for this machine, and the target triple of its
/// `vendor/` directory.
fn platform_package() -> (&'static str, &'static str) {
    if !cfg!(target_os = "linux") {
        panic!(
            "the real-Codex check runs on Linux only (it uses the musl binary of \
             {CODEX_NPM_PACKAGE}); set {CODEX_BIN_ENV} to run it elsewhere"
        );
    }
    match std::env::consts::ARCH {
        "x86_64" => ("codex-linux-x64", "x86_64-unknown-linux-musl"),
        "aarch64" => ("codex-linux-arm64", "aarch64-unknown-linux-musl"),
        other => panic!(
            "{CODEX_NPM_PACKAGE} ships no Linux binary for {other}; set {CODEX_BIN_ENV} to a \
             Codex binary"
        ),
    }
}

/// The path the prebuilt binary has inside an npm prefix directory.
pub fn binary_in(prefix: &Path) -> PathBuf {
    let (package, triple) = platform_package();
    prefix
        .join("node_modules")
        .join("@openai")
        .join(package)
        .join("vendor")
        .join(triple)
        .join("bin")
        .join("codex")
}

/// The version of `@openai/codex` installed in `prefix`, if any.
fn installed_version(prefix: &Path) -> Option<String> {
    let manifest = prefix
        .join("node_modules")
        .join("@openai")
        .join("codex")
        .join("package.json");
    let text = fs::read(manifest).ok()?;
    let value: Value = serde_json::from_slice(&text).ok()?;
    value.get("version")?.as_str().map(str::to_owned)
}

/// What `bin --version` prints (trimmed). Panics when it cannot be run or fails.
pub fn codex_version(bin: &Path) -> String {
    let out = Process::spawn(bin, ["--version"]).finish(EVENT_TIMEOUT);
    assert!(
        out.status.success(),
        "`{} --version` failed ({}): {}",
        bin.display(),
        out.status,
        out.stderr
    );
    out.stdout.trim().to_owned()
}

/// An exclusive `flock` on `path` (created when missing), held until the file is dropped.
/// Waits at most `timeout`.
fn flock_exclusive(path: &Path, timeout: Duration) -> File {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open the install lock {}: {e}", path.display()));
    let deadline = Instant::now() + timeout;
    loop {
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return file,
            Err(Errno::WOULDBLOCK) => {}
            Err(err) => panic!("cannot lock {}: {err}", path.display()),
        }
        assert!(
            Instant::now() < deadline,
            "another process held {} for more than {timeout:?} (an npm install of \
             {CODEX_NPM_PACKAGE} that hangs?)",
            path.display()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Installs `@openai/codex@0.171.0` into `prefix` with npm unless it is there already, and returns
/// the path of its prebuilt binary. Serialised across processes by a lock file beside `prefix`.
pub fn install_with_npm(prefix: &Path) -> PathBuf {
    let parent = prefix.parent().unwrap_or(prefix);
    fs::create_dir_all(parent)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
    let _guard = flock_exclusive(&prefix.with_extension("lock"), NPM_TIMEOUT);
    let bin = binary_in(prefix);
    let spec = format!("{CODEX_NPM_PACKAGE}@{CODEX_VERSION}");
    if installed_version(prefix).as_deref() == Some(CODEX_VERSION) && bin.is_file() {
        return bin;
    }
    let npm = on_path("npm").unwrap_or_else(|| {
        panic!(
            "npm was not found on PATH: the real-Codex check installs {spec} with npm. Install \
             Node.js and npm (e.g. `apt-get install nodejs npm`), or set {CODEX_BIN_ENV} to a \
             Codex {CODEX_VERSION} binary"
        )
    });
    fs::create_dir_all(prefix)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", prefix.display()));
    eprintln!(
        "real_codex: npm install --prefix {} {spec}",
        prefix.display()
    );
    let mut command = Command::new(&npm);
    command
        .arg("install")
        .arg("--prefix")
        .arg(prefix)
        .args(["--no-audit", "--no-fund", "--loglevel=error"])
        .arg(&spec)
        .env("npm_config_update_notifier", "false");
    let npm_run =
        Process::spawn_command(format!("`npm install {spec}`"), command).finish(NPM_TIMEOUT);
    let output = format!("{}{}", npm_run.stdout, npm_run.stderr);
    assert!(
        npm_run.status.success(),
        "`npm install --prefix {} {spec}` failed ({}); is the npm registry reachable? \
         Its output:\n{output}",
        prefix.display(),
        npm_run.status
    );
    let version = installed_version(prefix);
    assert_eq!(
        version.as_deref(),
        Some(CODEX_VERSION),
        "after `npm install {spec}`, {} holds {CODEX_NPM_PACKAGE} {version:?}; npm output:\n{output}",
        prefix.display()
    );
    assert!(
        bin.is_file(),
        "`npm install {spec}` succeeded but the prebuilt binary {} is missing: the platform \
         package (an optional dependency of {CODEX_NPM_PACKAGE}) was not installed; check \
         `npm config get omit`. npm output:\n{output}",
        bin.display()
    );
    let reported = codex_version(&bin);
    assert!(
        reported.contains(CODEX_VERSION),
        "{} reports {reported:?}, not {CODEX_VERSION}",
        bin.display()
    );
    bin
}

// ---------------------------------------------------------------------------------------------
// The backend stub
// ---------------------------------------------------------------------------------------------

/// One request the backend stub received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// The HTTP method.
    pub method: String,
    /// The request target as sent: a path, or, for a request meant for another host through
    /// the proxy, `host:port` (CONNECT) or an absolute URL.
    pub target: String,
}

impl Seen {
    /// Whether this was meant for another host and reached the stub as the proxy.
    pub fn is_escape(&self) -> bool {
        self.method.eq_ignore_ascii_case("CONNECT") || !self.target.starts_with('/')
    }
}

/// A local stand-in for Codex's ChatGPT backend (`chatgpt_base_url`, `openai_base_url`) and the
/// HTTP(S) proxy of the Codex processes: HTTP/1.1 on 127.0.0.1 (the kit's [`Server`]), one
/// request per connection.
///
/// It answers what Codex 0.171.0 asks at start-up with the smallest answers it accepts quietly:
/// - `GET /v1/models...`: `{"models": []}`
/// - `GET /backend-api/ps/plugins/installed...`: no plugins, no next page
/// - `GET /backend-api/wham/accounts/check`: the one workspace of the signed-in account, with
///   `NO_CONSTRAINT` routing (the origin of `chatgpt_base_url`)
/// - anything else on a path: 404
/// - a proxy request for another host (CONNECT, or an absolute URL): 403, recorded as an
///   escape.
///
/// Dropping it stops the server, closing every connection.
pub struct BackendStub {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// An access token the stub refuses (401), as the backend refuses a revoked one.
    refused: Arc<Mutex<Option<String>>>,
    addr: SocketAddr,
    _server: Server,
}

/// Who the stub answers for.
struct Account {
    id: String,
    plan: String,
}

impl BackendStub {
    /// Starts the stub on an ephemeral port of 127.0.0.1 for this account and plan.
    pub fn start(account_id: &str, plan: &str) -> BackendStub {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let account = Account {
            id: account_id.to_owned(),
            plan: plan.to_owned(),
        };
        let options = ServerOptions {
            name: "backend-stub",
            keep_alive: false,
            max_body: STUB_MAX_BODY,
        };
        let record = Arc::clone(&seen);
        let refused = Arc::new(Mutex::new(None::<String>));
        let refuse = Arc::clone(&refused);
        let server = Server::start(options, move |request| {
            let bearer = request
                .authorization
                .as_deref()
                .and_then(|a| a.strip_prefix("Bearer "));
            if bearer.is_some() && bearer == lock(&refuse).as_deref() {
                lock(&record).push(Seen {
                    method: request.method.clone(),
                    target: request.target.clone(),
                });
                return Some(Response::json(
                    401,
                    json!({"error": {"code": "token_revoked", "message": "the access token was revoked"}})
                        .to_string(),
                ));
            }
            Some(stub_answer(&account, &record, &request))
        });
        BackendStub {
            seen,
            refused,
            addr: server.addr(),
            _server: server,
        }
    }

    /// The value for Codex's `chatgpt_base_url`: `http://127.0.0.1:<port>/backend-api/`.
    pub fn chatgpt_base_url(&self) -> String {
        format!("http://{}/backend-api/", self.addr)
    }

    /// The value for Codex's `openai_base_url`: `http://127.0.0.1:<port>/v1`.
    pub fn openai_base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The value for `HTTP_PROXY` / `HTTPS_PROXY`: `http://127.0.0.1:<port>`.
    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers 401 from now on to every request that carries `access_token` as its bearer, as
    /// the backend answers a revoked token.
    pub fn refuse_access_token(&self, access_token: &str) {
        *lock(&self.refused) = Some(access_token.to_owned());
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Seen> {
        lock(&self.seen).clone()
    }

    /// The requests meant for another host (they reached the stub as the proxy and were
    /// refused).
    pub fn escapes(&self) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(Seen::is_escape)
            .collect()
    }
}

/// Records `request` and answers it (see [`BackendStub`]).
fn stub_answer(account: &Account, seen: &Mutex<Vec<Seen>>, request: &Request) -> Response {
    let seen_now = Seen {
        method: request.method.clone(),
        target: request.target.clone(),
    };
    let escape = seen_now.is_escape();
    lock(seen).push(seen_now);
    let path = request.path.as_str();
    let (status, body) = if escape {
        (
            403,
            json!({"error": "this test forbids requests that leave 127.0.0.1"}),
        )
    } else if path == "/v1/models" {
        (200, json!({"models": []}))
    } else if path == "/backend-api/ps/plugins/installed" {
        (
            200,
            json!({"plugins": [], "pagination": {"next_page_token": null}}),
        )
    } else if path == "/backend-api/wham/accounts/check" {
        let id = account.id.as_str();
        (
            200,
            json!({
                "accounts": [{
                    "id": id,
                    "account_id": id,
                    "structure": "personal",
                    "plan_type": account.plan,
                    "workspace_backend_origin": "NO_CONSTRAINT",
                    "account_routing_override": "NO_CONSTRAINT",
                    "can_access_with_session": true,
                }],
                "account_ordering": [id],
                "default_account_id": id,
            }),
        )
    } else {
        (404, json!({"error": "not_found"}))
    };
    Response::json(status, body.to_string())
}

// ---------------------------------------------------------------------------------------------
// codex app-server processes
// ---------------------------------------------------------------------------------------------

/// Where and how a `codex app-server` runs.
pub struct CodexSetup<'a> {
    /// The Codex binary ([`codex_binary`]).
    pub bin: &'a Path,
    /// `CODEX_HOME`: the directory of the auth.json under test.
    pub codex_home: &'a Path,
    /// `HOME`: an empty scratch directory, so nothing of the real user leaks in.
    pub user_home: &'a Path,
    /// `CODEX_REFRESH_TOKEN_URL_OVERRIDE`: the fake token endpoint.
    pub token_url: &'a str,
    /// The backend stub (also the proxy).
    pub backend: &'a BackendStub,
}

/// A running `codex app-server --listen stdio://`, driven with JSON-RPC lines. Dropping it kills
/// and reaps the process.
pub struct AppServer {
    process: Process,
    label: String,
    next_id: u64,
    initialized: bool,
}

impl AppServer {
    /// Starts `codex app-server` in an environment holding only `PATH` and what `setup` names:
    /// `CODEX_HOME`, `HOME`, the token URL override, the backend URLs (`-c chatgpt_base_url=...`,
    /// `-c openai_base_url=...`) and the stub as HTTP(S) proxy for every host but 127.0.0.1.
    /// It starts refreshing an expired token at once, without waiting for a client message.
    pub fn spawn(setup: &CodexSetup<'_>, label: &str) -> AppServer {
        let proxy = setup.backend.proxy_url();
        let mut command = Command::new(setup.bin);
        command
            .args(["app-server", "--listen", "stdio://"])
            .arg("-c")
            .arg(format!(
                "chatgpt_base_url=\"{}\"",
                setup.backend.chatgpt_base_url()
            ))
            .arg("-c")
            .arg(format!(
                "openai_base_url=\"{}\"",
                setup.backend.openai_base_url()
            ))
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin")),
            )
            .env("HOME", setup.user_home)
            .env("CODEX_HOME", setup.codex_home)
            .env("CODEX_REFRESH_TOKEN_URL_OVERRIDE", setup.token_url);
        for name in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
        ] {
            command.env(name, &proxy);
        }
        for name in ["NO_PROXY", "no_proxy"] {
            command.env(name, "127.0.0.1,localhost");
        }
        let process = Process::spawn_command(format!("codex app-server ({label})"), command)
            .with_event_timeout(RPC_TIMEOUT);
        let label = format!("{label} (pid {})", process.id());
        AppServer {
            process,
            label,
            next_id: 0,
            initialized: false,
        }
    }

    /// The label given at the start and the process id, for messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// What the process wrote to stderr so far, redacted.
    pub fn stderr(&self) -> String {
        redact(&self.process.stderr())
    }

    /// Sends a request and waits for its answer, skipping notifications and requests from the
    /// server: `Ok(result)` or `Err(error)`. Panics (with the stderr so far) if the process exits
    /// or no answer comes within [`RPC_TIMEOUT`].
    pub fn request(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        let id = self.send(method, params);
        self.answer(id, method)
    }

    /// Sends a request without waiting for its answer (several processes can then work on
    /// theirs at once); its id, for [`AppServer::answer`].
    pub fn send(&mut self, method: &str, params: Value) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        let line = json!({"id": id, "method": method, "params": params}).to_string();
        self.process.send_line(&line);
        id
    }

    /// Waits for the answer to request `id` (of `method`, for messages), as
    /// [`AppServer::request`] does.
    pub fn answer(&mut self, id: u64, method: &str) -> Result<Value, Value> {
        let answer = self
            .process
            .wait_for_line(&format!("an answer to {method}"), |line| {
                serde_json::from_str::<Value>(line)
                    .is_ok_and(|m| m.get("method").is_none() && m.get("id") == Some(&json!(id)))
            });
        let message: Value = serde_json::from_str(&answer).expect("the answer was parsed before");
        match message.get("error") {
            Some(error) => Err(error.clone()),
            None => Ok(message.get("result").cloned().unwrap_or(Value::Null)),
        }
    }

    /// `initialize` (then the `initialized` notification), once. Panics if Codex refuses it.
    pub fn initialize(&mut self) {
        if self.initialized {
            return;
        }
        let params =
            json!({"clientInfo": {"name": "codex-store-tests", "title": null, "version": "0"}});
        if let Err(error) = self.request("initialize", params) {
            panic!(
                "{}: initialize was refused: {}; stderr:\n{}",
                self.label,
                redact(&error.to_string()),
                self.stderr()
            );
        }
        self.process
            .send_line(&json!({"method": "initialized"}).to_string());
        self.initialized = true;
    }

    /// The access token the process will send next (`getAuthStatus` with `includeToken`, without
    /// forcing a refresh); `None` when it holds none (for instance after
    /// `refresh_token_reused`). Waits for a refresh in flight; adopts a changed auth.json when
    /// its own token is expired or gone.
    pub fn access_token(&mut self) -> Option<String> {
        self.initialize();
        let answer = self.request(
            "getAuthStatus",
            json!({"includeToken": true, "refreshToken": false}),
        );
        match answer {
            Ok(result) => result
                .get("authToken")
                .and_then(Value::as_str)
                .map(|token| {
                    // It stands in the process's stdout, which failure messages show redacted.
                    register_secret(token);
                    token.to_owned()
                }),
            Err(error) => panic!(
                "{}: getAuthStatus failed: {}; stderr:\n{}",
                self.label,
                redact(&error.to_string()),
                self.stderr()
            ),
        }
    }

    /// Whether `account/read` (without a refresh) says the process is signed out: the answer
    /// `"account": null` a Codex gives while it holds no token after `refresh_token_reused` and
    /// before it looked at auth.json again. (Holding a token, it answers an account, or, against
    /// the plain-HTTP stub, a workspace-routing error.)
    pub fn reports_signed_out(&mut self) -> bool {
        self.initialize();
        match self.request("account/read", json!({"refreshToken": false})) {
            Ok(result) => result.get("account").is_none_or(Value::is_null),
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    /// Sends `raw` to the stub and returns the status code and the body of its answer.
    fn exchange(stub: &BackendStub, raw: &str) -> (u16, Value) {
        let addr = stub.proxy_url().trim_start_matches("http://").to_owned();
        let mut stream = TcpStream::connect(&addr).expect("cannot connect to the backend stub");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("set a read timeout");
        stream.write_all(raw.as_bytes()).expect("send the request");
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .expect("read the answer (or timed out)");
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("the answer has no complete head: {answer:?}"));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("the answer has no status line: {head:?}"));
        let body = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("the answer's body is not JSON ({e}): {body:?}"));
        (status, body)
    }

    #[test]
    fn the_backend_stub_answers_workspace_discovery_for_the_signed_in_account() {
        let stub = BackendStub::start("acct-stub", "pro");
        let (status, body) = exchange(
            &stub,
            "GET /backend-api/wham/accounts/check HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        assert_eq!(status, 200, "accounts/check was not answered 200: {body}");
        assert_eq!(
            body["accounts"][0]["id"], "acct-stub",
            "the discovery answer does not name the account: {body}"
        );
        assert_eq!(
            body["accounts"][0]["workspace_backend_origin"], "NO_CONSTRAINT",
            "the discovery answer must keep Codex on chatgpt_base_url: {body}"
        );
        let (status, body) = exchange(
            &stub,
            "GET /v1/models?client_version=0.171.0 HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        assert_eq!(
            (status, body),
            (200, json!({"models": []})),
            "the model list is wrong"
        );
        assert!(
            stub.escapes().is_empty(),
            "requests on a path are no escapes: {:?}",
            stub.requests()
        );
    }

    #[test]
    fn the_backend_stub_refuses_and_records_every_request_meant_for_another_host() {
        let stub = BackendStub::start("acct-stub", "pro");
        let (status, _) = exchange(
            &stub,
            "CONNECT chatgpt.com:443 HTTP/1.1\r\nHost: chatgpt.com:443\r\n\r\n",
        );
        assert_eq!(status, 403, "a CONNECT through the proxy must be refused");
        let (status, _) = exchange(
            &stub,
            "GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n",
        );
        assert_eq!(status, 403, "an absolute-URL proxy request must be refused");
        let targets: Vec<String> = stub.escapes().into_iter().map(|s| s.target).collect();
        assert_eq!(
            targets,
            ["chatgpt.com:443", "http://example.com/"],
            "both requests for other hosts must be recorded as escapes"
        );
    }
}
