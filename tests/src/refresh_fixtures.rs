//! Shared set-up of the `codex-refresh` tests.
//!
//! - In process (`tests/tests/refresh_behaviour_*.rs`): a store in a temp dir holding ChatGPT
//!   credentials of one [`Identity`], the fake token endpoint that knows their refresh token,
//!   an [`AuthManager`] over them, concurrent `auth()` callers and secret checks.
//! - Across processes (`tests/tests/refresh_race.rs`, `tests/tests/refresh_processes.rs`):
//!   `refresh-worker` children and what they report.
//!
//! Each test file keeps its own account (an [`Identity`] of its constants), so that the files
//! never share an account, and messages name the one of their file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use codex_refresh::{AuthManager, RefreshConfig, RefreshError, TOKEN_URL_ENV};
use codex_store::{AuthDotJson, Expect, Generation, Secret, Store};
use tempfile::TempDir;
use tokio::task::JoinHandle;

use crate::cli_support::sha256_hex;
use crate::fake_idp::FakeIdp;
use crate::jwt;
use crate::process::Process;

// ---------------------------------------------------------------------------------------------
// In process
// ---------------------------------------------------------------------------------------------

/// The longest any awaited event of an in-process test may take before the test fails.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The account a test file signs in with, and its initial refresh token (the fake endpoint's
/// live one).
#[derive(Clone, Copy, Debug)]
pub struct Identity {
    /// `tokens.account_id`, also the id token's `chatgpt_account_id`.
    pub account: &'static str,
    /// The id token's email.
    pub email: &'static str,
    /// The id token's plan.
    pub plan: &'static str,
    /// The refresh token of the initial credentials.
    pub initial_rt: &'static str,
}

impl Identity {
    /// The identity of these values.
    pub const fn new(
        account: &'static str,
        email: &'static str,
        plan: &'static str,
        initial_rt: &'static str,
    ) -> Identity {
        Identity {
            account,
            email,
            plan,
            initial_rt,
        }
    }

    /// An id token of this account.
    pub fn id_token(&self) -> String {
        jwt::id_token(self.email, self.account, self.plan)
    }

    /// The fake token endpoint for this account, whose live refresh token is the initial one.
    pub fn start_fake(&self) -> FakeIdp {
        FakeIdp::start(self.account, self.email, self.plan, self.initial_rt)
    }

    /// A document of this account with these tokens.
    pub fn document(&self, access: &str, refresh: &str, id_token: &str) -> AuthDotJson {
        let text = jwt::auth_json(access, refresh, id_token, self.account);
        AuthDotJson::from_json(text.as_bytes()).expect("the fixture auth.json must parse")
    }

    /// Writes ChatGPT credentials of this account through the store (under its lock).
    pub fn write_tokens(&self, store: &Store, access: &str, refresh: &str) -> Generation {
        write_tokens(store, access, refresh, &self.id_token(), self.account)
    }
}

/// A store directory holding ChatGPT credentials, and the fake endpoint that knows their
/// refresh token.
pub struct Setup {
    /// The store's directory (`CODEX_HOME`).
    pub home: TempDir,
    /// The store.
    pub store: Store,
    /// The fake token endpoint.
    pub fake: FakeIdp,
    /// The access token in auth.json.
    pub access: String,
}

impl Setup {
    /// Credentials of `identity` whose access token expires `expires_in` seconds from now
    /// (negative: already expired); anything under 5 minutes is due for a refresh.
    pub fn new(identity: Identity, expires_in: i64) -> Setup {
        let (home, store) = temp_store();
        let access = jwt::access_token(jwt::now_unix() + expires_in, "at_initial");
        identity.write_tokens(&store, &access, identity.initial_rt);
        let fake = identity.start_fake();
        Setup {
            home,
            store,
            fake,
            access,
        }
    }
}

/// A temp dir and a store opened in it.
pub fn temp_store() -> (TempDir, Store) {
    let home = tempfile::tempdir().expect("cannot create a temp dir");
    let store = Store::open(home.path()).expect("cannot open the store");
    (home, store)
}

/// Writes ChatGPT credentials through the store (under its lock).
pub fn write_tokens(
    store: &Store,
    access: &str,
    refresh: &str,
    id_token: &str,
    account: &str,
) -> Generation {
    let text = jwt::auth_json(access, refresh, id_token, account);
    let doc = AuthDotJson::from_json(text.as_bytes()).expect("the fixture auth.json must parse");
    store
        .compare_and_swap(Expect::Any, Some(&doc))
        .expect("writing auth.json through the store failed")
}

/// Writes the auth.json `text` through the store (under its lock).
pub fn write_json(store: &Store, text: &str) -> Generation {
    store
        .compare_and_swap(
            Expect::Any,
            Some(&AuthDotJson::from_json(text.as_bytes()).expect("the fixture parses")),
        )
        .expect("writing auth.json failed")
}

/// The configuration of the in-process tests: the token endpoint at `token_url`, a 5 s HTTP
/// timeout (the lock wait is the store's).
pub fn config(token_url: String) -> RefreshConfig {
    RefreshConfig {
        token_url,
        http_timeout: Duration::from_secs(5),
        ..RefreshConfig::default()
    }
}

/// A manager over `store`, which holds valid credentials.
pub fn manager(store: &Store, config: RefreshConfig) -> AuthManager {
    AuthManager::new(store.clone(), config).expect("AuthManager::new refused valid credentials")
}

/// The bearer of the manager's cached credentials.
pub fn cached_bearer(manager: &AuthManager) -> String {
    manager
        .cached()
        .expect("the manager has no credentials")
        .bearer()
        .expose()
        .to_owned()
}

/// The bytes of auth.json.
pub fn file_bytes(store: &Store) -> Vec<u8> {
    std::fs::read(store.path()).expect("auth.json cannot be read")
}

/// The text of auth.json.
pub fn file_text(store: &Store) -> String {
    std::fs::read_to_string(store.path()).expect("auth.json cannot be read")
}

/// Fails with a message naming the secret when `text` shows any of `secrets`.
pub fn assert_no_secret(what: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "{what} shows a token value ({secret}): {text}"
        );
    }
}

/// Fails with a message naming the secret when `text` shows any of `secrets` (or the payload
/// part of a JWT secret).
pub fn assert_no_secret_nor_payload(what: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert_no_secret(what, text, &[secret]);
        if let Some(payload) = secret.split('.').nth(1) {
            assert!(
                !text.contains(payload),
                "{what} shows the payload of a token ({payload}): {text}"
            );
        }
    }
}

/// Spawns `callers` tasks that wait for each other (behind a barrier), then each call
/// `manager.auth()` and yield the bearer it returned.
pub fn concurrent_auth_calls(
    manager: &AuthManager,
    callers: usize,
) -> Vec<JoinHandle<Result<String, RefreshError>>> {
    let start = Arc::new(tokio::sync::Barrier::new(callers));
    (0..callers)
        .map(|_| {
            let manager = manager.clone();
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                manager
                    .auth()
                    .await
                    .map(|auth| auth.bearer().expose().to_owned())
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Across processes
// ---------------------------------------------------------------------------------------------

/// The bound on any single event from a `refresh-worker`. It only turns a hang into a failure;
/// no test waits for it to elapse.
pub const WORKER_EVENT_TIMEOUT: Duration = Duration::from_secs(20);

/// Starts `refresh-worker SUBCOMMAND HOME` (the binary at `program`, which integration tests get
/// from `env!("CARGO_BIN_EXE_refresh-worker")`) with its token URL set to `token_url`. It is
/// named `refresh-worker SUBCOMMAND #N` and waits [`WORKER_EVENT_TIMEOUT`] for each event.
pub fn spawn_refresh_worker(
    program: &str,
    subcommand: &str,
    home: &Path,
    token_url: &str,
) -> Process {
    static SERIAL: AtomicUsize = AtomicUsize::new(1);
    let name = format!(
        "refresh-worker {subcommand} #{}",
        SERIAL.fetch_add(1, Ordering::Relaxed)
    );
    let mut command = Command::new(program);
    command
        .arg(subcommand)
        .arg(home)
        .env(TOKEN_URL_ENV, token_url);
    Process::spawn_command(name, command).with_event_timeout(WORKER_EVENT_TIMEOUT)
}

/// Waits for the `ready` line of a `race` worker; panics unless that is what it prints.
pub fn expect_ready(worker: &Process) {
    assert_eq!(
        worker.line("`ready`"),
        "ready",
        "{} did not get ready",
        worker.name()
    );
}

/// What a worker reported in `token <fingerprint> generation <generation>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reported {
    /// The fingerprint of the access token it ended with.
    pub fingerprint: String,
    /// The generation of the credentials it ended with.
    pub generation: String,
}

/// Parses a `token <fingerprint> generation <generation>` line of `worker`; panics (naming the
/// worker and its stderr) on any other line.
pub fn parse_token_line(worker: &Process, line: &str) -> Reported {
    let parts: Vec<&str> = line.split(' ').collect();
    match parts.as_slice() {
        ["token", fingerprint, "generation", generation] => Reported {
            fingerprint: (*fingerprint).to_owned(),
            generation: (*generation).to_owned(),
        },
        _ => panic!(
            "{}: expected `token <fingerprint> generation <generation>`, got {line:?}; stderr: {}",
            worker.name(),
            worker.stderr()
        ),
    }
}

/// The fingerprint of a token, as a worker reports it (`Secret::fingerprint`).
pub fn fingerprint(token: &str) -> String {
    Secret::new(token).fingerprint()
}

/// The fingerprints of the refresh tokens the endpoint was presented, in order.
pub fn presented_fingerprints(idp: &FakeIdp) -> Vec<String> {
    idp.presented_refresh_tokens()
        .iter()
        .map(|t| fingerprint(t))
        .collect()
}

/// The path of auth.json in `home`.
pub fn auth_path(home: &Path) -> PathBuf {
    home.join("auth.json")
}

/// The SHA-256 of auth.json's bytes, as lowercase hex (what `sha256sum` prints).
pub fn file_sha256(home: &Path) -> String {
    let bytes = std::fs::read(auth_path(home))
        .unwrap_or_else(|e| panic!("cannot read auth.json in {}: {e}", home.display()));
    sha256_hex(&bytes)
}
