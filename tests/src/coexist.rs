//! Mixed refresh races on one `CODEX_HOME`: `codex-sim` processes (Codex 0.171.0, see
//! [`crate::codex_sim`]) and `codex-store token` processes against the fake token endpoint, as
//! the coexistence tests (cli/tests/cli/coexistence.rs) and the `coexist` example run them.
//!
//! A race starts from made-up ChatGPT credentials whose access token expired an hour ago (every
//! process finds a refresh due), lets every process run to its end, and reports what the endpoint
//! saw, what each process printed and how it exited, and whether the file ends with the
//! endpoint's live refresh token. Nothing here waits on a sleep: the order of a race is made by
//! waiting for events (`ready` lines, requests counted by the endpoint).

use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::cli_support::{self, CliOutput, Running, RUN_TIMEOUT};
use crate::codex_sim::{self, refresh_token_on_disk, SimOptions, SimRun, TOKEN_URL_ENV};
use crate::fake_idp::{Behavior, FakeIdp};
use crate::fixtures::{temp_home, ChatgptCreds};
use crate::process::Process;
use crate::secrets::{fingerprint, register_last_issued};

/// The `codex-store` exit code for "sign-in required".
pub const STORE_SIGN_IN_REQUIRED: i32 = cli_support::exit::SIGN_IN_REQUIRED;

/// The body of a permanent refusal: the refresh token is too old.
pub const EXPIRED_BODY: &str = r#"{"error":{"code":"refresh_token_expired","message":"Your refresh token has expired. Please try signing in again."}}"#;

/// How the fake endpoint answers during a race.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// [`Behavior::Normal`] with this delay: every request waits this long, then its token is
    /// checked and rotated and it is answered. Racing requests are answered together.
    Delayed(Duration),
    /// [`Behavior::LateWinner`]: the first request with the live token rotates it on receipt and
    /// is answered after this delay; every later one is refused at once as reused.
    LateWinner(Duration),
    /// Every request is answered 401 `refresh_token_expired` ([`EXPIRED_BODY`]); nothing rotates.
    Refusing,
    /// [`Behavior::LateWinner`] with both delays this long: every request is answered after this
    /// delay, like [`Endpoint::Delayed`], but the first request read wins for certain (its token
    /// is rotated on receipt), whatever the scheduling of the endpoint's threads.
    FirstReadWins(Duration),
}

impl Endpoint {
    /// Applies this behaviour to `idp`.
    pub fn apply(self, idp: &FakeIdp) {
        match self {
            Endpoint::Delayed(delay) => {
                idp.set_behavior(Behavior::Normal);
                idp.set_delay(delay);
            }
            Endpoint::LateWinner(after) => idp.set_behavior(Behavior::late_winner(after)),
            Endpoint::Refusing => idp.set_behavior(Behavior::status(401, EXPIRED_BODY)),
            Endpoint::FirstReadWins(after) => idp.set_behavior(Behavior::LateWinner {
                success_after: after,
                refusal_after: after,
            }),
        }
    }
}

fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        format!("{s} s")
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Delayed(d) => write!(f, "{}", seconds(*d)),
            Endpoint::LateWinner(d) => write!(f, "late winner {}", seconds(*d)),
            Endpoint::Refusing => write!(f, "refused (401 expired)"),
            Endpoint::FirstReadWins(d) => write!(f, "{} (first read wins)", seconds(*d)),
        }
    }
}

/// In which order the processes of a race start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// At once: every simulator gets its start line, and the codex-store processes are spawned
    /// right after (the simulators, already running, usually reach the endpoint first).
    AllAtOnce,
    /// The simulators first; the codex-store processes once the endpoint has read every
    /// simulator's request.
    SimsFirst,
    /// The codex-store processes first; the simulators once the endpoint has read the first
    /// codex-store request.
    StoresFirst,
}

/// One race.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    /// How many `codex-sim` processes.
    pub sims: usize,
    /// How many `codex-store token` processes.
    pub stores: usize,
    /// How the endpoint answers.
    pub endpoint: Endpoint,
    /// The order of the start.
    pub start: Start,
    /// The options of every simulator.
    pub sim_options: SimOptions,
}

impl Scenario {
    /// `sims` simulators and `stores` codex-store processes started at once against `endpoint`.
    pub fn new(sims: usize, stores: usize, endpoint: Endpoint) -> Scenario {
        Scenario {
            sims,
            stores,
            endpoint,
            start: Start::AllAtOnce,
            sim_options: SimOptions::default(),
        }
    }

    /// The same race with another start order.
    pub fn starting(mut self, start: Start) -> Scenario {
        self.start = start;
        self
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} codex-sim{} + {} codex-store token, endpoint {}, start {:?}",
            self.sims,
            if self.sim_options.old { " --old" } else { "" },
            self.stores,
            self.endpoint,
            self.start
        )
    }
}

/// What a race ended with. Tokens appear only as fingerprints.
pub struct RaceOutcome {
    /// The race.
    pub scenario: Scenario,
    /// The `CODEX_HOME` it ran in (removed when this is dropped).
    pub home: TempDir,
    /// Every simulator's run.
    pub sims: Vec<SimRun>,
    /// Every codex-store run.
    pub stores: Vec<CliOutput>,
    /// Refresh requests the endpoint read.
    pub requests: usize,
    /// Requests answered with rotated tokens.
    pub successes: usize,
    /// Requests refused as `refresh_token_reused`.
    pub reuse_refusals: usize,
    /// How long the race took, from the start to the last exit.
    pub elapsed: Duration,
    live_refresh_token: String,
    file_refresh_token: Option<String>,
}

impl RaceOutcome {
    /// Whether auth.json ends with the endpoint's live refresh token.
    pub fn file_holds_live_token(&self) -> bool {
        self.file_refresh_token.as_deref() == Some(self.live_refresh_token.as_str())
    }

    /// The fingerprint of the endpoint's live refresh token.
    pub fn live_fingerprint(&self) -> String {
        fingerprint(&self.live_refresh_token)
    }

    /// The fingerprint of the refresh token in auth.json (`none` when there is none).
    pub fn file_fingerprint(&self) -> String {
        self.file_refresh_token
            .as_deref()
            .map_or_else(|| "none".to_owned(), fingerprint)
    }

    /// The simulators that printed `dropped`.
    pub fn dropped(&self) -> Vec<&SimRun> {
        self.sims.iter().filter(|s| s.dropped()).collect()
    }

    /// A rotation was lost: the file ends with a dead refresh token, or a simulator dropped its
    /// new tokens.
    pub fn lost_rotation(&self) -> bool {
        !self.file_holds_live_token() || !self.dropped().is_empty()
    }

    /// The codex-store processes that exited 3 (sign-in required) although the endpoint rotated
    /// the token during the race (a good rotation existed).
    pub fn false_sign_in_required(&self) -> Vec<&CliOutput> {
        if self.successes == 0 {
            return Vec::new();
        }
        self.stores
            .iter()
            .filter(|o| o.code() == Some(STORE_SIGN_IN_REQUIRED))
            .collect()
    }

    /// Everything that happened, safe to show: the endpoint's counts, the file, each simulator's
    /// lines and each codex-store run (redacted).
    pub fn describe(&self) -> String {
        let mut text = format!(
            "race: {}\nendpoint: {} requests, {} rotations, {} reuse refusals; auth.json ends \
             with refresh token {} and the live one is {}; took {} ms",
            self.scenario,
            self.requests,
            self.successes,
            self.reuse_refusals,
            self.file_fingerprint(),
            self.live_fingerprint(),
            self.elapsed.as_millis()
        );
        for sim in &self.sims {
            text.push_str("\n  ");
            text.push_str(&sim.describe());
        }
        for store in &self.stores {
            text.push_str("\n  ");
            text.push_str(&store.describe().replace('\n', "\n    "));
        }
        text
    }
}

/// Runs `scenario` in a new `CODEX_HOME` with the simulator at `sim_bin` and the `codex-store`
/// binary of [`cli_support::codex_store_bin`]. Panics (with everything seen so far) when an event
/// it waits for does not come within [`RUN_TIMEOUT`].
pub fn race(sim_bin: &Path, scenario: Scenario) -> RaceOutcome {
    let creds = ChatgptCreds::expired();
    let home = temp_home();
    creds.write_to(home.path());
    let idp = creds.start_idp();
    scenario.endpoint.apply(&idp);
    let url = idp.url();

    let mut sims: Vec<Process> = (0..scenario.sims)
        .map(|_| codex_sim::spawn(sim_bin, home.path(), &url, scenario.sim_options))
        .collect();
    for sim in &sims {
        sim.wait_for_event("ready");
    }
    assert_eq!(
        idp.requests(),
        0,
        "a simulator sent a request before its start line ({scenario})"
    );
    let spawn_stores = || -> Vec<Running> {
        (0..scenario.stores)
            .map(|_| {
                cli_support::spawn(
                    home.path(),
                    &["token"],
                    None,
                    &[(TOKEN_URL_ENV, url.as_str())],
                )
            })
            .collect()
    };
    let wait_for = |n: usize, what: &str| {
        assert!(
            idp.wait_for_requests(n, RUN_TIMEOUT),
            "the endpoint did not read {what} within {RUN_TIMEOUT:?} (it read {}) in the race \
             {scenario}",
            idp.requests()
        );
    };

    let started = Instant::now();
    let stores = match scenario.start {
        Start::AllAtOnce => {
            for sim in &mut sims {
                sim.go();
            }
            spawn_stores()
        }
        Start::SimsFirst => {
            for sim in &mut sims {
                sim.go();
            }
            wait_for(scenario.sims, "every simulator's request");
            spawn_stores()
        }
        Start::StoresFirst => {
            let stores = spawn_stores();
            if scenario.stores > 0 {
                wait_for(1, "the first codex-store request");
            }
            for sim in &mut sims {
                sim.go();
            }
            stores
        }
    };
    let sims: Vec<SimRun> = sims
        .iter_mut()
        .map(|s| SimRun::from(s.finish(RUN_TIMEOUT)))
        .collect();
    let stores: Vec<CliOutput> = stores.into_iter().map(|r| r.finish(RUN_TIMEOUT)).collect();
    let elapsed = started.elapsed();
    register_last_issued(&idp);

    RaceOutcome {
        scenario,
        sims,
        stores,
        requests: idp.requests(),
        successes: idp.successes(),
        reuse_refusals: idp.reuse_refusals(),
        elapsed,
        live_refresh_token: idp.current_refresh_token(),
        file_refresh_token: refresh_token_on_disk(home.path()),
        home,
    }
}
