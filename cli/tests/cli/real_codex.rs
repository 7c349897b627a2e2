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
//!
//! Issue 21: eight Codex processes pointed at the agent's token broker (`agent --serve`), on one
//! expired token, told 401 by the backend for their valid access token, and forcing a refresh
//! of one valid token at once: the endpoint reads exactly one request, and no Codex process
//! logs "already used" or answers `account: null`.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::kit::{
    assert_no_secret_leaked, fingerprint, redact, register_last_issued, run, spawn, temp_home,
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
    /// `codex-store agent --serve` on the home, when the race has one.
    agent: Option<Running>,
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
        Race::with(ChatgptCreds::expired(), delay)
    }

    /// A race on `creds` (a plan `plus` login with a non-null account id) and an endpoint
    /// answering after `delay`.
    fn with(creds: ChatgptCreds, delay: Duration) -> Race {
        let guard = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let bin = codex_binary();
        let home = temp_home();
        creds.write_to(home.path());
        let idp = creds.start_idp();
        idp.set_delay(delay);
        let backend = BackendStub::start(&creds.account_id, &creds.plan);
        let user_home = tempfile::tempdir().expect("a temp dir for the Codex processes' HOME");
        Race {
            codex: Vec::new(),
            agent: None,
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
        self.start_codex_at(n, &url);
    }

    /// Starts `codex-store agent --serve 127.0.0.1:0` on the home, against the race's endpoint;
    /// the URL of its token broker once it published it.
    fn start_broker(&mut self) -> String {
        let url = self.idp.url();
        let agent = spawn(
            self.home.path(),
            &["agent", "--serve", "127.0.0.1:0"],
            None,
            // Its log lines say how the broker answered each caller.
            &[(URL_ENV, url.as_str()), ("RUST_LOG", "codex_refresh=info")],
        );
        agent.wait_for_stderr_line("started");
        self.agent = Some(agent);
        let report = run(self.home.path(), &["inspect", "--json"], None, &[]);
        report.json()["agent"]["broker"]
            .as_str()
            .unwrap_or_else(|| panic!("the agent published no broker\n{}", report.describe()))
            .to_owned()
    }

    /// Starts `n` `codex app-server` processes sending their refreshes to `token_url`.
    fn start_codex_at(&mut self, n: usize, token_url: &str) {
        let url = token_url.to_owned();
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
        if self.agent.is_some() {
            // Through the broker: the agent alone talks to the endpoint.
            if self.idp.requests() != 1 {
                problems.push(format!(
                    "the endpoint read {} refresh requests: through the broker, one rotation \
                     takes one request",
                    self.idp.requests()
                ));
            }
            if !signed_out.is_empty() {
                problems.push(format!(
                    "Codex processes answered `account: null` (signed out): {signed_out:?}"
                ));
            }
            for codex in &self.codex {
                if codex.stderr().contains("already used") {
                    problems.push(format!(
                        "{} logged \"already used\"; its stderr:\n{}",
                        codex.label(),
                        tail(&codex.stderr())
                    ));
                }
            }
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

#[test]
fn eight_codex_app_servers_on_one_expired_token_pointed_at_the_broker_cause_one_request() {
    let mut race = Race::new(FAST);
    // The agent starts; the eight start at once beside it, sending their refreshes to it.
    let broker = race.start_broker();
    race.start_codex_at(8, &broker);
    race.wait_for_first_request("the agent or a Codex process through the broker");
    race.finish("8 codex app-server through the broker, expired token");
}

#[test]
fn eight_codex_app_servers_forcing_a_refresh_at_once_through_the_broker_cause_one_request() {
    // A valid login: nothing is due, the agent sends nothing; then every Codex process forces a
    // refresh at once (as after a 401 from the backend), presenting the same current token.
    // What each Codex holds afterwards is not compared: against the plain-HTTP stub its
    // `account/read` ends in a workspace-routing error, and it keeps its valid token in memory.
    // What the broker answered each caller is (its log), with the endpoint's count.
    let mut race = Race::with(ChatgptCreds::fresh(), FAST);
    let broker = race.start_broker();
    race.start_codex_at(8, &broker);
    for codex in &mut race.codex {
        codex.initialize();
    }
    let sent: Vec<u64> = race
        .codex
        .iter_mut()
        .map(|codex| codex.send("account/read", serde_json::json!({"refreshToken": true})))
        .collect();
    for (codex, id) in race.codex.iter_mut().zip(sent) {
        // The refresh comes first; the account read after it fails against the plain-HTTP
        // stub with a workspace-routing error, which is not what this race is about. Whether
        // the refresh went through the broker, once, is what `finish` checks.
        let _ = codex.answer(id, "account/read");
    }
    // Every caller was answered by the broker: one refresh, the others as predecessors.
    let agent = race.agent.as_ref().expect("the race's agent");
    let answered = |needle: &str| agent.stderr().matches(needle).count();
    let (refreshed, predecessors) = (
        answered("refreshed for a caller"),
        answered("route=\"predecessor\""),
    );
    let mut problems = Vec::new();
    if (refreshed, predecessors) != (1, 7) {
        problems.push(format!(
            "the broker refreshed for {refreshed} caller(s) and answered {predecessors} as \
             predecessors: eight forced refreshes of one token must be one refresh and seven \
             answers of its tokens; the agent:\n{}",
            agent.stderr()
        ));
    }
    if race.idp.requests() != 1 {
        problems.push(format!(
            "the endpoint read {} requests for eight forced refreshes through the broker",
            race.idp.requests()
        ));
    }
    let live = race.idp.current_refresh_token();
    match tokens_on_disk(&race.home.path().join("auth.json")) {
        Ok((_, refresh)) if refresh == live => {}
        other => problems.push(format!(
            "auth.json does not hold the live refresh token after the forced refreshes: {:?}",
            other.map(|(_, refresh)| fingerprint(&refresh))
        )),
    }
    for codex in &mut race.codex {
        if codex.stderr().contains("already used") {
            problems.push(format!("{} logged \"already used\"", codex.label()));
        }
        if codex.reports_signed_out() {
            problems.push(format!("{} answers `account: null`", codex.label()));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problem(s):\n- {}",
        problems.len(),
        problems.join("\n- ")
    );
}

#[test]
fn eight_codex_app_servers_told_401_by_the_backend_recover_through_the_broker_with_one_request() {
    // A valid login that the backend refuses (401, as for a revoked access token): every Codex
    // process refreshes on its own at start-up, presenting the same current token.
    let mut race = Race::with(ChatgptCreds::fresh(), FAST);
    race.backend.refuse_access_token(&race.creds.access_token);
    let broker = race.start_broker();
    race.start_codex_at(8, &broker);
    for codex in &mut race.codex {
        codex.initialize();
    }
    // Until every Codex holds the live token: those told 401 recover through the broker (one
    // refresh, the others answered as predecessors); one that starts after the rotation reads
    // the new token from auth.json and is never told 401.
    let deadline = std::time::Instant::now() + RUN_TIMEOUT;
    let mut live = vec![false; race.codex.len()];
    while live.contains(&false) {
        let issued = race.idp.last_issued().map(|issued| issued.access_token);
        for (codex, live) in race.codex.iter_mut().zip(live.iter_mut()) {
            *live = *live || (issued.is_some() && codex.access_token() == issued);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of the 8 Codex processes told 401 hold the live token after {RUN_TIMEOUT:?}; \
             the agent:\n{}",
            live.iter().filter(|l| **l).count(),
            race.agent.as_ref().map(Running::stderr).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    race.finish("8 codex app-server told 401 by the backend, through the broker");
}
