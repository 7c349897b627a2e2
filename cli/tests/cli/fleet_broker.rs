//! The agent's token broker on a fleet machine (`agent --fleet ... --serve`): it publishes its
//! URL as without a fleet; a caller presenting the machine's current refresh token makes that
//! machine's agent refresh at once under the fleet's lock and reservation, one request to the
//! token endpoint fleet-wide however many callers on however many machines, the new tokens
//! uploaded, saved and answered to every caller; a token another machine rotated away moments
//! ago is answered the current tokens with no request; the endpoint's refusal reaches the
//! callers as the endpoint said it, and nothing more is sent.
//!
//! Real etcd, real `codex-store agent --fleet` processes (one home each, a simulated machine),
//! the fake token endpoint, and callers that are threads POSTing Codex's refresh request to a
//! broker, released together. No token becomes due during a test (tokens living hours, agents
//! refreshing 15 minutes before expiry): every request the endpoint reads is a caller's doing.
//! Every wait is bounded; a bound only turns a hang into a failure. The harness is
//! [`crate::fleet_kit`].

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Barrier;
use std::time::Duration;

use crate::broker_cli::{assert_published_port, codex_refresh, published_broker};
use crate::fleet_kit::{etcd_get, Fleet, Setup, LOCK_TTL, URL_ENV, WAIT};
use crate::kit::{
    assert_no_registered_secret, exit, fingerprint, register_last_issued, spawn, ChatgptCreds,
    RUN_TIMEOUT,
};
use codex_store_tests::codex_sim::refresh_token_on_disk;
use codex_store_tests::fake_idp::{Behavior, Issued};
use serde_json::{json, Value};

/// The agents' lead: the default, far from the tokens' expiry.
const LEAD: &str = "15m";
/// The seeded login's and every issued access token's lifetime, in seconds: four hours, so that
/// nothing is due during a test.
const LIFETIME: i64 = 4 * 3600;
/// The refusal the endpoint answers in [`a_refusal_by_the_endpoint_reaches_every_caller_with_its_status_and_body_and_nothing_more_is_sent`].
const INVALID_GRANT: &str =
    r#"{"error":"invalid_grant","error_description":"the grant is no longer valid"}"#;

/// A fleet of `machines` machines (each reaching etcd through a link of its own) on one etcd
/// member, seeded from machine 0 with a login expiring in [`LIFETIME`]; no agent runs yet.
fn fleet_of(machines: usize) -> Fleet {
    let mut setup = Setup::rotating(1, machines, 0);
    setup.expires_in = LIFETIME;
    setup.lifetime = LIFETIME;
    setup.tag = "fleet-broker";
    setup.options = [
        "--fleet-lock-ttl",
        LOCK_TTL,
        // Well above the endpoint's delays below, so that no request of a loaded machine is cut
        // off.
        "--http-timeout",
        "20s",
        "--reuse-wait",
        "3s",
    ]
    .map(str::to_owned)
    .to_vec();
    Fleet::start(setup)
}

impl Fleet {
    /// Starts machine `i`'s agent (lead [`LEAD`]) against the fake endpoint, serving a token
    /// broker on a free port of 127.0.0.1 when `serve`; returns when it said `started`.
    fn start_fleet_agent(&mut self, i: usize, serve: bool) {
        let mut rest = vec!["agent", "--lead", LEAD];
        if serve {
            rest.extend(["--serve", "127.0.0.1:0"]);
        }
        let args = self.args(i, &rest);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let url = self.idp.url();
        let agent = spawn(self.home(i), &args, None, &[(URL_ENV, url.as_str())]);
        agent.wait_for_stderr_line("started");
        self.machines[i].agent = Some(agent);
    }

    /// Starts machine `i`'s agent serving a broker ([`Fleet::start_fleet_agent`]); the broker's
    /// URL it published.
    fn start_broker(&mut self, i: usize) -> String {
        self.start_fleet_agent(i, true);
        published_broker(self.home(i))
    }

    /// Waits until every machine's auth.json holds the seeded login (the record's), so that
    /// every agent has synced with the fleet before a caller comes.
    fn wait_synced(&self) {
        for machine in &self.machines {
            machine.wait_for_refresh_token(
                &self.creds.refresh_token,
                "its agent must mirror the seeded record before the callers come",
            );
        }
    }

    /// Waits until machine `i`'s auth.json holds `refresh` (`why` says why it must).
    fn wait_for_token_on(&self, i: usize, refresh: &str, why: &str) {
        self.wait_until(
            &format!(
                "{}'s auth.json did not come to hold the refresh token {} ({why})",
                self.machines[i].name,
                fingerprint(refresh)
            ),
            || refresh_token_on_disk(self.home(i)).as_deref() == Some(refresh),
        );
    }

    /// The fleet record's last rotation (`<prefix>/rotation`): its machine and its kind.
    fn last_rotation(&self) -> (String, String) {
        let kv =
            etcd_get(&self.cluster, &format!("{}/rotation", self.prefix)).unwrap_or_else(|| {
                panic!(
                    "etcd holds no description of the record's last rotation; agents:\n{}",
                    self.agent_logs()
                )
            });
        let meta: Value = serde_json::from_slice(&kv.value).expect("the rotation is JSON");
        let field = |name: &str| meta[name].as_str().unwrap_or_default().to_owned();
        (field("machine"), field("kind"))
    }

    /// Panics unless no agent's log so far shows a secret: every token is named by fingerprint.
    #[track_caller]
    fn assert_logs_hide_tokens(&self) {
        register_last_issued(&self.idp);
        for machine in &self.machines {
            if let Some(agent) = &machine.agent {
                assert_no_registered_secret(
                    &format!("{}'s agent log", machine.name),
                    &agent.stderr(),
                );
            }
        }
    }
}

/// Two machines serving brokers ([`Fleet::start_broker`]), both synced with the fleet: the
/// fleet, their brokers' URLs, and the seeded refresh token, current on both.
fn two_serving_machines() -> (Fleet, [String; 2], String) {
    let mut fleet = fleet_of(2);
    let brokers = [fleet.start_broker(0), fleet.start_broker(1)];
    fleet.wait_synced();
    let old = fleet.creds.refresh_token.clone();
    (fleet, brokers, old)
}

/// Machine `i`'s journal (empty when it has none).
fn journal_of(fleet: &Fleet, i: usize) -> String {
    std::fs::read_to_string(fleet.home(i).join("auth.json.journal")).unwrap_or_default()
}

/// Whether machine `i`'s journal holds a `mirrored` record of the refresh token of
/// fingerprint `from` moving on to `to`.
fn journaled_mirror(fleet: &Fleet, i: usize, from: &str, to: &str) -> bool {
    journal_of(fleet, i)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .any(|record| {
            record["event"] == "mirrored"
                && record["refresh"].as_str() == Some(from)
                && record["new_refresh"].as_str() == Some(to)
        })
}

/// What one caller was answered.
struct Answered {
    /// The broker it asked.
    broker: String,
    /// The HTTP status.
    status: u16,
    /// The JSON body.
    body: Value,
}

/// Callers on threads of their own, released together: `n` for each `(broker URL, n)` of
/// `brokers`, each POSTing Codex's refresh request presenting `refresh_token`; their answers,
/// in the order of `brokers`.
fn callers_at_once(brokers: &[(&str, usize)], refresh_token: &str) -> Vec<Answered> {
    let total = brokers.iter().map(|(_, n)| n).sum();
    let start = Barrier::new(total);
    std::thread::scope(|scope| {
        let callers: Vec<_> = brokers
            .iter()
            .flat_map(|(url, n)| std::iter::repeat_n(*url, *n))
            .map(|url| {
                let start = &start;
                scope.spawn(move || {
                    start.wait();
                    let (status, body) = codex_refresh(url, refresh_token);
                    Answered {
                        broker: url.to_owned(),
                        status,
                        body,
                    }
                })
            })
            .collect();
        callers
            .into_iter()
            .map(|caller| {
                caller
                    .join()
                    .expect("a caller's thread panicked (see above)")
            })
            .collect()
    })
}

/// What a token field of an answer holds, by fingerprint (safe to show).
fn shown(body: &Value, field: &str) -> String {
    body[field]
        .as_str()
        .map_or_else(|| "nothing".to_owned(), fingerprint)
}

/// Panics unless every one of `answers` is 200 with exactly the tokens of `issued` (the
/// endpoint's format: access, refresh and ID token); `what` names the callers.
#[track_caller]
fn assert_all_answered(fleet: &Fleet, answers: &[Answered], issued: &Issued, what: &str) {
    for (n, answer) in answers.iter().enumerate() {
        assert_eq!(
            answer.status,
            200,
            "{what}: caller {n} of {} was answered HTTP {} ({}), not the new tokens; agents:\n{}",
            answer.broker,
            answer.status,
            answer.body,
            fleet.agent_logs()
        );
        for (field, expected) in [
            ("access_token", &issued.access_token),
            ("refresh_token", &issued.refresh_token),
            ("id_token", &issued.id_token),
        ] {
            assert!(
                answer.body[field].as_str() == Some(expected.as_str()),
                "{what}: caller {n} of {} was answered the {field} {}, not the one the endpoint \
                 issued ({}); agents:\n{}",
                answer.broker,
                shown(&answer.body, field),
                fingerprint(expected),
                fleet.agent_logs()
            );
        }
    }
}

/// `GET /health` of the broker at `url` (`http://ADDR/oauth/token`): its status line and body.
fn health(url: &str) -> (String, String) {
    let addr = url
        .strip_prefix("http://")
        .and_then(|rest| rest.strip_suffix("/oauth/token"))
        .unwrap_or_else(|| panic!("{url:?} is not a broker URL"));
    let mut stream = TcpStream::connect(addr)
        .unwrap_or_else(|e| panic!("cannot connect to the broker at {addr}: {e}"));
    stream
        .set_read_timeout(Some(RUN_TIMEOUT))
        .expect("cannot set a read timeout");
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap_or_else(|e| panic!("cannot ask the broker at {addr} for its health: {e}"));
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .unwrap_or_else(|e| panic!("the broker at {addr} did not end its health answer: {e}"));
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("the broker's health answer has no head: {answer:?}"));
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, body.to_owned())
}

#[test]
fn a_fleet_agent_with_serve_starts_and_publishes_its_broker_url_in_inspect_and_status() {
    let mut fleet = fleet_of(1);
    let url = fleet.start_broker(0);
    let started = fleet
        .agent(0)
        .stderr()
        .lines()
        .find(|l| l.contains("started"))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(
        started.contains("with the fleet's login") && started.contains(&fleet.prefix),
        "the agent serving a broker must still say it keeps the fleet's login: {started:?}"
    );
    assert_published_port(&url);

    let inspect = fleet.inspect(0);
    assert_eq!(
        inspect["agent"]["broker"].as_str(),
        Some(url.as_str()),
        "inspect --json --fleet must name the broker on the agent: {inspect}"
    );
    let text = fleet.run_on(0, &["inspect"]);
    text.expect_code(exit::OK, "inspect --fleet beside a serving fleet agent");
    text.expect_stdout_contains(
        &[format!("token broker {url}").as_str()],
        "inspect's agent line must name the fleet agent's broker",
    );
    let status = fleet.run_on(0, &["status", "--agent"]);
    status.expect_code(
        exit::OK,
        "status --agent --fleet with a fleet agent serving",
    );
    status.expect_stdout_contains(
        &[format!("serves the token broker at {url}").as_str()],
        "status --agent --fleet must name the broker on its ok line",
    );
    let status = fleet.run_on(0, &["status", "--agent", "--json"]);
    assert_eq!(
        status.json()["agent_broker"].as_str(),
        Some(url.as_str()),
        "status --json --fleet must name the broker as agent_broker\n{}",
        status.describe()
    );
    let env = fleet.run_on(0, &["env", "--json"]);
    env.expect_code(exit::OK, "env beside a serving fleet agent");
    assert_eq!(
        (env.json()["value"].as_str(), env.json()["source"].as_str()),
        (Some(url.as_str()), Some("agent")),
        "env must point Codex at the broker the fleet agent serves\n{}",
        env.describe()
    );
    let (status_line, body) = health(&url);
    let ok: Option<Value> = serde_json::from_str(&body).ok();
    assert!(
        status_line.contains(" 200 ") && ok == Some(json!({"ok": true})),
        "the published broker must answer its health 200 {{\"ok\":true}}, not {status_line:?} \
         {body:?}; agents:\n{}",
        fleet.agent_logs()
    );
    fleet.idp.expect_requests(
        0,
        "an agent starting with a broker on a login hours from expiry must send nothing",
    );
    fleet.stop_agent(0);
}

#[test]
fn eight_callers_presenting_the_current_token_on_one_machine_cause_one_request_under_the_fleets_lock_and_every_machine_gets_the_new_tokens(
) {
    let mut fleet = fleet_of(2);
    let broker = fleet.start_broker(0);
    fleet.start_fleet_agent(1, false);
    fleet.wait_synced();
    let old = fleet.creds.refresh_token.clone();
    // The request stays in flight for 2 s: long enough to look at the fleet's lock and
    // reservation while it is, and for every caller to arrive during it (whether they do
    // changes nothing below: a later caller finds its token rotated away).
    fleet.idp.set_delay(Duration::from_secs(2));
    let holder = format!("machine-0 pid {}", fleet.agent(0).id());
    let (answers, lock, reservation, still_in_flight) = std::thread::scope(|scope| {
        let callers = scope.spawn(|| callers_at_once(&[(&broker, 8)], &old));
        assert!(
            fleet.idp.wait_for_requests(1, WAIT),
            "8 callers presented machine-0's current token to its broker and no request reached \
             the endpoint within {WAIT:?}; agents:\n{}",
            fleet.agent_logs()
        );
        let lock = etcd_get(&fleet.cluster, &format!("{}/lock", fleet.prefix));
        let reservation = fleet.redeeming();
        // Read before the endpoint answered: the lock and the reservation read were the ones
        // the request was sent under.
        let still_in_flight = fleet.idp.successes() == 0;
        let answers = callers.join().expect("the callers' thread panicked");
        (answers, lock, reservation, still_in_flight)
    });
    assert!(
        still_in_flight,
        "the endpoint answered before the test could look at etcd (2 s): the machine is too \
         loaded for this test; agents:\n{}",
        fleet.agent_logs()
    );
    let lock = lock.map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
    assert_eq!(
        lock.as_deref(),
        Some(holder.as_str()),
        "while the broker's refresh was in flight, the fleet lock must be held by machine-0's \
         agent; agents:\n{}",
        fleet.agent_logs()
    );
    let (mark, _lease) = reservation.unwrap_or_else(|| {
        panic!(
            "while the broker's refresh was in flight, etcd held no reservation of the \
             redemption; agents:\n{}",
            fleet.agent_logs()
        )
    });
    assert_eq!(
        (mark["refresh"].as_str(), mark["machine"].as_str()),
        (Some(fingerprint(&old).as_str()), Some("machine-0")),
        "the reservation in flight must name the presented token and machine-0: {mark}"
    );

    fleet.idp.expect_requests(
        1,
        "8 callers presenting the current token must cause exactly one request",
    );
    let issued = fleet.idp.last_issued().expect("the endpoint issued tokens");
    assert_all_answered(&fleet, &answers, &issued, "8 callers on machine-0");
    assert_eq!(
        fleet.record_refresh_token().as_deref(),
        Some(issued.refresh_token.as_str()),
        "the fleet record in etcd must hold the new refresh token the callers were answered; \
         agents:\n{}",
        fleet.agent_logs()
    );
    assert_eq!(
        fleet.last_rotation(),
        ("machine-0".to_owned(), "refreshed".to_owned()),
        "the record's last rotation must be machine-0's refresh (under the fleet's lock), not an \
         upload of a rotation made outside it; agents:\n{}",
        fleet.agent_logs()
    );
    assert_eq!(
        refresh_token_on_disk(fleet.home(0)).as_deref(),
        Some(issued.refresh_token.as_str()),
        "machine-0's auth.json must hold the new tokens once its callers are answered; \
         agents:\n{}",
        fleet.agent_logs()
    );
    fleet.wait_for_token_on(
        1,
        &issued.refresh_token,
        "machine-0's rotation must be mirrored",
    );
    fleet.assert_no_token_presented_twice();
    fleet.assert_logs_hide_tokens();
    fleet.stop_all();
}

#[test]
fn callers_on_two_machines_at_once_presenting_the_current_token_cause_one_request_fleet_wide_and_all_get_the_same_new_tokens(
) {
    let (mut fleet, brokers, old) = two_serving_machines();
    // The request stays in flight a second, so that callers on both machines are likely to
    // arrive during it (whether they do changes nothing below).
    fleet.idp.set_delay(Duration::from_secs(1));
    let answers = callers_at_once(&[(&brokers[0], 4), (&brokers[1], 4)], &old);
    fleet.idp.expect_requests(
        1,
        "4 callers on each of two machines presenting the current token must cause exactly one \
         request fleet-wide",
    );
    let issued = fleet.idp.last_issued().expect("the endpoint issued tokens");
    assert_all_answered(&fleet, &answers, &issued, "4 callers on each machine");
    assert_eq!(
        fleet.record_refresh_token().as_deref(),
        Some(issued.refresh_token.as_str()),
        "the fleet record in etcd must hold the new refresh token the callers were answered; \
         agents:\n{}",
        fleet.agent_logs()
    );
    let (maker, kind) = fleet.last_rotation();
    assert!(
        kind == "refreshed" && (maker == "machine-0" || maker == "machine-1"),
        "the record's last rotation must be a refresh by one of the machines, not {kind} by \
         {maker}; agents:\n{}",
        fleet.agent_logs()
    );
    for i in 0..2 {
        fleet.wait_for_token_on(i, &issued.refresh_token, "every machine holds the rotation");
    }
    fleet.assert_no_token_presented_twice();
    fleet.assert_logs_hide_tokens();
    fleet.stop_all();
}

#[test]
fn a_token_another_machine_rotated_away_is_answered_the_current_tokens_without_a_request_and_journaled_as_mirrored(
) {
    let (mut fleet, brokers, old) = two_serving_machines();
    let (status, first) = codex_refresh(&brokers[0], &old);
    assert_eq!(
        status,
        200,
        "machine-0's broker must refresh its current token for a caller, not answer {first}; \
         agents:\n{}",
        fleet.agent_logs()
    );
    fleet.idp.expect_requests(
        1,
        "the current token presented on machine-0 is refreshed once",
    );
    let issued = fleet.idp.last_issued().expect("the endpoint issued tokens");
    fleet.wait_for_token_on(
        1,
        &issued.refresh_token,
        "machine-0's rotation must be mirrored",
    );

    // A Codex process on machine-1 that read auth.json before the rotation presents the old
    // token to its own broker.
    let (status, body) = codex_refresh(&brokers[1], &old);
    let answer = Answered {
        broker: brokers[1].clone(),
        status,
        body,
    };
    assert_all_answered(
        &fleet,
        &[answer],
        &issued,
        "a caller on machine-1 presenting the token machine-0 rotated away",
    );
    fleet.idp.expect_requests(
        1,
        "a token another machine of the fleet rotated away moments ago must be answered the \
         current tokens with no request",
    );
    let (from, to) = (fingerprint(&old), fingerprint(&issued.refresh_token));
    assert!(
        journaled_mirror(&fleet, 1, &from, &to),
        "machine-1's journal must record the rotation it mirrored (event mirrored, refresh {from} \
         -> new_refresh {to}); it holds:\n{}\nagents:\n{}",
        journal_of(&fleet, 1),
        fleet.agent_logs()
    );
    fleet.assert_no_token_presented_twice();
    fleet.assert_logs_hide_tokens();
    fleet.stop_all();
}

#[test]
fn a_refusal_by_the_endpoint_reaches_every_caller_with_its_status_and_body_and_nothing_more_is_sent(
) {
    let (mut fleet, brokers, old) = two_serving_machines();
    let auth_before = std::fs::read(fleet.auth_json(0)).expect("machine-0's auth.json");
    fleet.idp.set_behavior(Behavior::status(400, INVALID_GRANT));
    // The refusal comes after a second, so that the callers are likely to wait for it together.
    fleet.idp.set_delay(Duration::from_secs(1));
    let answers = callers_at_once(&[(&brokers[0], 4)], &old);
    let expected: Value = serde_json::from_str(INVALID_GRANT).expect("the test's body is JSON");
    for (n, answer) in answers.iter().enumerate() {
        assert_eq!(
            (answer.status, &answer.body),
            (400, &expected),
            "caller {n} on machine-0 must get the endpoint's own refusal (HTTP 400 and its \
             body); agents:\n{}",
            fleet.agent_logs()
        );
    }
    fleet.idp.expect_requests(
        1,
        "a refused token must be sent once, however many callers presented it",
    );
    let refusal = etcd_get(&fleet.cluster, &format!("{}/refusal", fleet.prefix))
        .map(|kv| serde_json::from_slice::<Value>(&kv.value).expect("the refusal is JSON"));
    assert_eq!(
        refusal
            .as_ref()
            .map(|r| (r["refresh"].as_str(), r["code"].as_str())),
        Some((Some(fingerprint(&old).as_str()), Some("invalid_grant"))),
        "the fleet must remember the refusal of the presented token for every machine: \
         {refusal:?}; agents:\n{}",
        fleet.agent_logs()
    );

    // Later callers, on the machine that heard the refusal and on the other one: told the
    // refusal, and nothing is sent.
    for (i, broker) in brokers.iter().enumerate() {
        let (status, body) = codex_refresh(broker, &old);
        let code = body["error"]["code"]
            .as_str()
            .or_else(|| body["error"].as_str());
        assert_eq!(
            (status, code),
            (400, Some("invalid_grant")),
            "a later caller on machine-{i} presenting the refused token must be told the \
             refusal (400 invalid_grant), not {status} {body}; agents:\n{}",
            fleet.agent_logs()
        );
    }
    fleet.idp.expect_requests(
        1,
        "a token the endpoint refused must never be sent again, from any machine",
    );
    assert_eq!(
        fleet.record_refresh_token().as_deref(),
        Some(old.as_str()),
        "a refusal must leave the fleet record as it was; agents:\n{}",
        fleet.agent_logs()
    );
    assert!(
        std::fs::read(fleet.auth_json(0)).expect("machine-0's auth.json") == auth_before,
        "a refusal must leave machine-0's auth.json as it was; agents:\n{}",
        fleet.agent_logs()
    );
    fleet.assert_logs_hide_tokens();
    fleet.stop_all();
}

#[test]
fn a_mirror_made_while_a_local_refresh_holds_the_refresh_lock_is_journaled_when_it_ends_and_its_token_is_then_a_predecessor(
) {
    let (mut fleet, brokers, old) = two_serving_machines();
    // A local refresh on machine-1 (another codex-store process) holds its refresh lock.
    let store = codex_store::Store::open(fleet.home(1)).expect("open machine-1's store");
    let local_refresh = store
        .begin_rotation()
        .expect("take machine-1's refresh lock as a local refresh does");
    let (status, first) = codex_refresh(&brokers[0], &old);
    assert_eq!(
        status,
        200,
        "machine-0's broker must refresh its current token for a caller, not answer {first}; \
         agents:\n{}",
        fleet.agent_logs()
    );
    let issued = fleet.idp.last_issued().expect("the endpoint issued tokens");
    fleet.wait_for_token_on(
        1,
        &issued.refresh_token,
        "machine-0's rotation must be mirrored while the refresh lock is held",
    );
    let (from, to) = (fingerprint(&old), fingerprint(&issued.refresh_token));
    assert!(
        !journaled_mirror(&fleet, 1, &from, &to),
        "machine-1 journaled its mirror while another process held its refresh lock (only its \
         holder appends to the journal); it holds:\n{}",
        journal_of(&fleet, 1)
    );
    drop(local_refresh);
    fleet.wait_until(
        "machine-1 did not journal the mirror once the local refresh released its lock",
        || journaled_mirror(&fleet, 1, &from, &to),
    );
    let (status, body) = codex_refresh(&brokers[1], &old);
    assert_all_answered(
        &fleet,
        &[Answered {
            broker: brokers[1].clone(),
            status,
            body,
        }],
        &issued,
        "a caller on machine-1 presenting the token machine-0 rotated away, journaled late",
    );
    fleet.idp.expect_requests(
        1,
        "a token rotated away and journaled late must be answered the current tokens with no \
         request",
    );
    fleet.assert_no_token_presented_twice();
    fleet.stop_all();
}

#[test]
fn a_fleet_that_holds_no_login_makes_the_broker_answer_503_and_send_nothing() {
    let mut fleet = fleet_of(2);
    // Machine-1 belongs to a fleet (a prefix of its own) that holds no login, and holds the
    // endpoint's login in its auth.json: its agent idles (fleet_empty). Every machine of such a
    // fleet may hold that token: only the fleet's lock may decide who sends it.
    let empty = format!("{}-empty", fleet.prefix);
    fleet.creds.write_to(fleet.home(1));
    let auth_before = std::fs::read(fleet.auth_json(1)).expect("machine-1's auth.json");
    let args = fleet.machines[1].args(&empty, &["agent", "--lead", LEAD, "--serve", "127.0.0.1:0"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let url = fleet.idp.url();
    let agent = spawn(fleet.home(1), &args, None, &[(URL_ENV, url.as_str())]);
    agent.wait_for_stderr_line("fleet_empty");
    fleet.machines[1].agent = Some(agent);
    let broker = published_broker(fleet.home(1));
    let (status, body) = codex_refresh(&broker, &fleet.creds.refresh_token);
    assert_eq!(
        status,
        503,
        "a caller on a machine whose fleet holds no login got {status} {body}, not 503; \
         agents:\n{}",
        fleet.agent_logs()
    );
    fleet.idp.expect_requests(
        0,
        "nothing may be sent for a fleet that holds no login: another machine may hold the token",
    );
    assert!(
        std::fs::read(fleet.auth_json(1)).expect("machine-1's auth.json") == auth_before,
        "machine-1's auth.json changed although nothing was refreshed"
    );
    fleet.stop_all();
}

#[test]
fn another_accounts_login_beside_the_fleet_is_refreshed_by_the_broker_itself_and_nothing_is_uploaded(
) {
    let mut fleet = fleet_of(2);
    // Machine-1 holds a login of another account than the fleet's: its agent leaves it alone
    // (another_account_here), and its broker refreshes it as Codex would, under the home's own
    // refresh lock. The fake endpoint knows only the fleet's account: it refuses the token as
    // invalidated, which shows that the broker sent it, and the journal shows it was the
    // guarded protocol (a forwarded request stores nothing).
    let other = ChatgptCreds::fresh();
    other.write_to(fleet.home(1));
    let broker = fleet.start_broker(1);
    fleet.machines[1]
        .agent
        .as_ref()
        .expect("machine-1's agent")
        .wait_for_stderr_line("another_account_here");
    let (status, body) = codex_refresh(&broker, &other.refresh_token);
    assert_eq!(
        status,
        401,
        "the endpoint's refusal of the other account's token was not relayed: {status} {body}; \
         agents:\n{}",
        fleet.agent_logs()
    );
    assert_eq!(
        fleet.idp.presented_refresh_tokens(),
        vec![other.refresh_token.clone()],
        "the broker must send the other account's token once, and nothing else"
    );
    let refused = journal_of(&fleet, 1)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .any(|record| {
            record["event"] == "refused"
                && record["refresh"].as_str() == Some(fingerprint(&other.refresh_token).as_str())
        });
    assert!(
        refused,
        "machine-1's journal must record the refusal of its own refresh (the guarded protocol): \
         {}",
        journal_of(&fleet, 1)
    );
    let record = etcd_get(&fleet.cluster, &format!("{}/auth.json", fleet.prefix))
        .expect("the fleet's record");
    assert!(
        String::from_utf8_lossy(&record.value).contains(&fleet.creds.refresh_token),
        "the fleet's record must still hold the fleet's login"
    );
    fleet.stop_all();
}
