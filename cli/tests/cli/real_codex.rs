//! The real Codex beside codex-store (issue 7): `codex app-server` processes of the npm package
//! `@openai/codex@0.171.0` and `codex-store token` processes race one expired token in one
//! `CODEX_HOME`, against the fake token endpoint and a local stub of Codex's backend. Nothing
//! leaves 127.0.0.1: the stub is also every Codex process's HTTP(S) proxy and records any request
//! for another host.
//!
//! After every race:
//! - no rotation is lost: auth.json holds the endpoint's one live refresh token (and the access
//!   token issued with it);
//! - every `codex-store token` process exited 0 and printed the live access token;
//! - every Codex process ends with the live access token: what `getAuthStatus` answers, the token
//!   it sends next (a Codex left without a token by `refresh_token_reused` looks at auth.json again
//!   when asked, so a saved rotation reaches it and a lost one does not);
//! - the endpoint rotated the token once: after that nothing was due.
//!
//! The slow endpoint answers after 6 s, longer than the 5 s Codex 0.171.0 keeps trying for
//! `auth.json.lock` after its refresh: a codex-store process that holds that lock across its own
//! request makes Codex throw away the tokens it was just issued (the README's coexistence
//! section).
//!
//! The Codex binary is installed with npm into `<target>/codex-npm/` on first use, or taken from
//! `CODEX_BIN` (`codex_store_tests::real_codex`). Without npm the check fails; it never skips.
//! The scenarios run one at a time, each with its own home, endpoint and stub.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::kit::{
    assert_no_secret_leaked, fingerprint, redact, register_last_issued, spawn, temp_home,
    ChatgptCreds, CliOutput, Running, RUN_TIMEOUT,
};
use codex_store_tests::fake_idp::FakeIdp;
use codex_store_tests::real_codex::{codex_binary, AppServer, BackendStub, CodexSetup};
use serde_json::Value;
use tempfile::TempDir;

const URL_ENV: &str = "CODEX_REFRESH_TOKEN_URL_OVERRIDE";

/// A fast endpoint: answers in 200 ms, long enough for requests of both kinds of process to
/// overlap.
const FAST: Duration = Duration::from_millis(200);

/// A slow endpoint: answers after 6 s, longer than Codex's 5 s window for `auth.json.lock`.
const SLOW: Duration = Duration::from_secs(6);

/// The longest the first refresh request of a race may take to arrive.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The most of a process's stderr shown in a message.
const STDERR_TAIL: usize = 3000;

/// One scenario at a time: each starts several Codex processes, and a loaded machine would change
/// the interleavings the scenarios are about.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// One race: an expired login in a fresh `CODEX_HOME`, the fake endpoint that knows its refresh
/// token, the backend stub, and the processes started so far. Fields drop in order: the processes
/// are killed before the directories go, and the next scenario starts after that.
struct Race {
    codex: Vec<AppServer>,
    stores: Vec<Running>,
    idp: FakeIdp,
    backend: BackendStub,
    creds: ChatgptCreds,
    home: TempDir,
    user_home: TempDir,
    bin: PathBuf,
    _one_at_a_time: MutexGuard<'static, ()>,
}

impl Race {
    /// An expired login (plan `plus`, a non-null account id) and an endpoint answering after
    /// `delay`.
    fn new(delay: Duration) -> Race {
        let guard = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let bin = codex_binary();
        let creds = ChatgptCreds::expired();
        let home = temp_home();
        creds.write_to(home.path());
        let idp = creds.start_idp();
        idp.set_delay(delay);
        let backend = BackendStub::start(&creds.account_id, &creds.plan);
        let user_home = tempfile::tempdir().expect("a temp dir for the Codex processes' HOME");
        Race {
            codex: Vec::new(),
            stores: Vec::new(),
            idp,
            backend,
            creds,
            home,
            user_home,
            bin,
            _one_at_a_time: guard,
        }
    }

    /// Starts `n` `codex app-server` processes; each refreshes the expired token at start-up.
    fn start_codex(&mut self, n: usize) {
        let url = self.idp.url();
        let setup = CodexSetup {
            bin: &self.bin,
            codex_home: self.home.path(),
            user_home: self.user_home.path(),
            token_url: &url,
            backend: &self.backend,
        };
        for _ in 0..n {
            let label = format!("codex #{}", self.codex.len() + 1);
            self.codex.push(AppServer::spawn(&setup, &label));
        }
    }

    /// Starts `n` `codex-store token` processes.
    fn start_stores(&mut self, n: usize) {
        let url = self.idp.url();
        for _ in 0..n {
            self.stores.push(spawn(
                self.home.path(),
                &["token"],
                None,
                &[(URL_ENV, url.as_str())],
            ));
        }
    }

    /// Waits until the endpoint has read the first refresh request of the race (sent by `who`).
    fn wait_for_first_request(&self, who: &str) {
        assert!(
            self.idp.wait_for_requests(1, FIRST_REQUEST_TIMEOUT),
            "{who} sent no refresh request within {FIRST_REQUEST_TIMEOUT:?} although the access \
             token had expired"
        );
    }

    /// Lets every process finish its refresh, then checks the outcome; panics listing every
    /// problem, with the counts of the race.
    fn finish(mut self, scenario: &str) {
        let stores: Vec<CliOutput> = std::mem::take(&mut self.stores)
            .into_iter()
            .map(|running| running.finish(RUN_TIMEOUT))
            .collect();
        // Before asking for tokens, which makes a Codex without one look at auth.json again.
        let signed_out = self
            .codex
            .iter_mut()
            .filter_map(|codex| codex.reports_signed_out().then(|| codex.label().to_owned()))
            .collect::<Vec<_>>();
        let held: Vec<Option<String>> =
            self.codex.iter_mut().map(AppServer::access_token).collect();
        register_last_issued(&self.idp);

        let live_refresh = self.idp.current_refresh_token();
        let live_access = self.idp.last_issued().map(|issued| issued.access_token);
        let on_disk = tokens_on_disk(&self.home.path().join("auth.json"));
        let summary = self.summary(scenario, &stores, &signed_out);
        eprintln!("{summary}");

        let mut problems = Vec::new();
        let Some(live_access) = live_access else {
            panic!("{summary}\nthe endpoint issued no token at all: nobody refreshed the expired login");
        };
        match &on_disk {
            Err(e) => problems.push(format!("auth.json cannot be read after the race: {e}")),
            Ok((_, refresh)) if *refresh != live_refresh => problems.push(format!(
                "ROTATION LOST: auth.json holds the refresh token {}, but the endpoint's one live \
                 refresh token is {}: it was issued and never saved, so every client must sign \
                 in again",
                self.name_refresh(refresh),
                self.name_refresh(&live_refresh)
            )),
            Ok((access, _)) if *access != live_access => problems.push(format!(
                "auth.json holds the live refresh token but the access token {}, not the one \
                 issued with it ({})",
                fingerprint(access),
                fingerprint(&live_access)
            )),
            Ok(_) => {}
        }
        for (i, out) in stores.iter().enumerate() {
            if out.code() != Some(0) || out.stdout != format!("{live_access}\n") {
                problems.push(format!(
                    "codex-store #{} should exit 0 and print the live access token ({}), but \
                     exited {} printing {}:\n{}",
                    i + 1,
                    fingerprint(&live_access),
                    out.code()
                        .map_or("by a signal".to_owned(), |c| format!("with code {c}")),
                    printed(&out.stdout),
                    out.describe()
                ));
            }
        }
        for (codex, token) in self.codex.iter().zip(&held) {
            match token {
                Some(token) if *token == live_access => {}
                Some(token) => problems.push(format!(
                    "{} ends with the access token {}, not the live one ({}); its stderr:\n{}",
                    codex.label(),
                    fingerprint(token),
                    fingerprint(&live_access),
                    tail(&codex.stderr())
                )),
                None => problems.push(format!(
                    "{} ends with no token at all (getAuthStatus: authToken null): \
                     refresh_token_reused signed it out and auth.json offers no newer token; its \
                     stderr:\n{}",
                    codex.label(),
                    tail(&codex.stderr())
                )),
            }
        }
        let rotations = self.idp.successes();
        if rotations > 1 {
            problems.push(format!(
                "the endpoint rotated the refresh token {rotations} times: after the first \
                 rotation no token was due, yet a process redeemed the new refresh token again"
            ));
        }
        let escapes = self.backend.escapes();
        if !escapes.is_empty() {
            problems.push(format!(
                "Codex tried to reach hosts other than 127.0.0.1 (refused by the proxy stub): \
                 {escapes:?}"
            ));
        }
        assert!(
            problems.is_empty(),
            "{summary}\n{} problem(s):\n- {}",
            problems.len(),
            problems.join("\n- ")
        );
        if !stores.is_empty() {
            assert_no_secret_leaked();
        }
    }

    /// The counts of the race, for messages: requests, rotations, the refresh tokens presented,
    /// the exit codes, and the Codex processes signed out before they were asked.
    fn summary(&self, scenario: &str, stores: &[CliOutput], signed_out: &[String]) -> String {
        let presented: Vec<String> = self
            .idp
            .presented_refresh_tokens()
            .iter()
            .map(|t| self.name_refresh(t))
            .collect();
        let codes: Vec<String> = stores
            .iter()
            .map(|out| out.code().map_or("signal".to_owned(), |c| c.to_string()))
            .collect();
        format!(
            "{scenario}: the endpoint read {} refresh request(s) and rotated {} time(s); \
             refresh tokens presented, in order: [{}]; codex-store exit codes: [{}]; Codex \
             processes signed out (account: null) before being asked for their token: {}/{} \
             {signed_out:?}",
            self.idp.requests(),
            self.idp.successes(),
            presented.join(", "),
            codes.join(", "),
            signed_out.len(),
            self.codex.len()
        )
    }

    /// A refresh token for messages: `initial`, or its fingerprint.
    fn name_refresh(&self, token: &str) -> String {
        if token == self.creds.refresh_token {
            "initial".to_owned()
        } else {
            fingerprint(token)
        }
    }
}

/// The access and refresh token in auth.json.
fn tokens_on_disk(path: &Path) -> Result<(String, String), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let doc: Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
    let token = |name: &str| {
        doc["tokens"][name]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("{} has no tokens.{name}", path.display()))
    };
    Ok((token("access_token")?, token("refresh_token")?))
}

/// What a `token` process printed, for messages: nothing, or a fingerprint.
fn printed(stdout: &str) -> String {
    let token = stdout.trim_end_matches('\n');
    if token.is_empty() {
        "nothing".to_owned()
    } else {
        format!("the token {}", fingerprint(token))
    }
}

/// The end of a stderr, redacted and without terminal colour codes.
fn tail(text: &str) -> String {
    let text = strip_ansi(&redact(text));
    let start = text.len().saturating_sub(STDERR_TAIL);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    text[start..].to_owned()
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`), which Codex's log lines carry.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn four_codex_app_servers_racing_one_expired_token_all_end_with_the_one_live_token() {
    let mut race = Race::new(Duration::from_millis(500));
    race.start_codex(4);
    race.wait_for_first_request("the Codex processes");
    race.finish("4 codex app-servers, endpoint 500 ms");
}

#[test]
fn codex_and_codex_store_racing_one_expired_token_at_a_fast_endpoint_lose_no_rotation() {
    let mut race = Race::new(FAST);
    race.start_codex(3);
    race.start_stores(4);
    race.finish("3 codex app-servers and 4 codex-store token, started together, endpoint 200 ms");
}

#[test]
fn codex_store_started_while_codex_redeems_the_token_at_a_six_second_endpoint_loses_no_rotation() {
    let mut race = Race::new(SLOW);
    race.start_codex(2);
    race.wait_for_first_request("the Codex processes");
    race.start_stores(3);
    race.finish(
        "2 codex app-servers, then 3 codex-store token once Codex's request was in flight, \
         endpoint 6 s",
    );
}

#[test]
fn codex_started_while_codex_store_redeems_the_token_at_a_six_second_endpoint_ends_with_the_saved_token(
) {
    let mut race = Race::new(SLOW);
    race.start_stores(3);
    race.wait_for_first_request("the codex-store processes");
    race.start_codex(2);
    race.finish(
        "3 codex-store token, then 2 codex app-servers once codex-store's request was in \
         flight, endpoint 6 s",
    );
}
