//! The token broker (issue 21): a local token endpoint for unmodified Codex, over real HTTP on
//! 127.0.0.1. The current refresh token is refreshed through the guarded protocol (one upstream
//! request however many callers), a token rotated away within the grace window gets the current
//! tokens with no request, any other token is forwarded unchanged and its answer relayed, a
//! refusal reaches every caller with the endpoint's status and code, and a caller that presents
//! nothing gets 400 and no token.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use codex_refresh::{Broker, BrokerConfig, BrokerError, BROKER_TOKEN_PATH};
use codex_store_tests::fake_idp::{Behavior, Issued};
use codex_store_tests::fixtures::{config, manager, read, Identity, Setup, EVENT_TIMEOUT};
use codex_store_tests::http::{Answer, Client, Post, Response, Server, ServerOptions};
use codex_store_tests::secrets::assert_hides;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const IDENTITY: Identity = Identity::new(
    "acct-broker",
    "broker@example.com",
    "pro",
    "rt_broker_initial",
);

/// A broker serving on an ephemeral port of 127.0.0.1 in a task of the test's runtime.
struct Running {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), BrokerError>>,
}

/// A broker whose refreshes the home's agent makes ([`Broker::through_agent`]), and that
/// agent, both in tasks of the test's runtime.
struct ThroughAgent {
    broker: Running,
    agent_stop: oneshot::Sender<()>,
    agent: JoinHandle<Result<(), codex_refresh::AgentError>>,
}

impl ThroughAgent {
    /// Serves the home of `setup`, whose agent (lead 15 minutes) refreshes at its fake
    /// endpoint when the broker asks.
    async fn over(setup: &Setup) -> ThroughAgent {
        ThroughAgent::with(setup, codex_refresh::AgentConfig::default()).await
    }

    /// The same, with an agent configured by `agent_config`.
    async fn with(setup: &Setup, agent_config: codex_refresh::AgentConfig) -> ThroughAgent {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("cannot bind 127.0.0.1:0 for the broker");
        let addr = listener
            .local_addr()
            .expect("the broker's listener has no address");
        let (asker, asks) = codex_refresh::refresh_asks();
        let agent =
            codex_refresh::Agent::new(setup.store.clone(), config(setup.fake.url()), agent_config)
                .expect("Agent::new refused a valid configuration")
                .answering(asks);
        let (agent_stop, agent_stopped) = oneshot::channel::<()>();
        let agent = tokio::spawn(agent.run(
            async {
                let _ = agent_stopped.await;
            },
            |_| {},
        ));
        let manager = manager(&setup.store, config(setup.fake.url()));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(
            Broker::through_agent(manager, BrokerConfig::default(), asker).serve(listener, async {
                let _ = stopped.await;
            }),
        );
        ThroughAgent {
            broker: Running { addr, stop, task },
            agent_stop,
            agent,
        }
    }

    /// Stops the agent, and checks that its run returned `Ok`.
    async fn stop_agent(
        agent_stop: oneshot::Sender<()>,
        agent: JoinHandle<Result<(), codex_refresh::AgentError>>,
    ) {
        let _ = agent_stop.send(());
        let ran = tokio::time::timeout(EVENT_TIMEOUT, agent)
            .await
            .expect("the agent did not stop within the event timeout")
            .expect("the agent's task panicked");
        assert!(
            ran.is_ok(),
            "the agent ended with an error: {}",
            ran.unwrap_err()
        );
    }

    /// Stops both.
    async fn stop(self) {
        ThroughAgent::stop_agent(self.agent_stop, self.agent).await;
        self.broker.stop().await;
    }
}

impl Running {
    /// Serves the home of `setup` with a manager whose token URL is `token_url`.
    async fn start(setup: &Setup, token_url: String, broker: BrokerConfig) -> Running {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("cannot bind 127.0.0.1:0 for the broker");
        let addr = listener
            .local_addr()
            .expect("the broker's listener has no address");
        let manager = manager(&setup.store, config(token_url));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(Broker::new(manager, broker).serve(listener, async {
            let _ = stopped.await;
        }));
        Running { addr, stop, task }
    }

    /// Serves the home of `setup`, forwarding to its fake endpoint.
    async fn over(setup: &Setup, broker: BrokerConfig) -> Running {
        Running::start(setup, setup.fake.url(), broker).await
    }

    /// Posts `body` to the token path.
    async fn post(&self, body: String) -> Answer {
        post(self.addr, body).await
    }

    /// Stops the broker and checks that `serve` returned `Ok`.
    async fn stop(self) {
        let _ = self.stop.send(());
        let served = tokio::time::timeout(EVENT_TIMEOUT, self.task)
            .await
            .expect("the broker did not stop within the event timeout")
            .expect("the broker's task panicked");
        assert!(
            served.is_ok(),
            "serve ended with an error: {}",
            served.unwrap_err()
        );
    }
}

/// Codex's refresh request presenting `refresh_token`.
fn codex_request(refresh_token: &str) -> String {
    json!({
        "client_id": codex_refresh::CLIENT_ID,
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
        "refresh_reason": "proactive_expiry",
    })
    .to_string()
}

/// Posts `body` to the broker's token path at `addr`, from a blocking thread.
async fn post(addr: SocketAddr, body: String) -> Answer {
    tokio::task::spawn_blocking(move || post_blocking(addr, &body))
        .await
        .expect("the posting thread panicked")
}

fn post_blocking(addr: SocketAddr, body: &str) -> Answer {
    let authority = addr.to_string();
    Client::new()
        .post(&Post {
            authority: &authority,
            path: BROKER_TOKEN_PATH,
            headers: &[],
            body,
            timeout: EVENT_TIMEOUT * 2,
            max_answer: 64 * 1024,
        })
        .unwrap_or_else(|e| panic!("posting to the broker at {addr} failed: {e}"))
}

/// Sends `request` (raw HTTP/1.1) to `addr` and returns the answer's status, head and body.
async fn raw(addr: SocketAddr, request: String) -> (u16, String, String) {
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr)
            .unwrap_or_else(|e| panic!("cannot connect to the broker at {addr}: {e}"));
        stream
            .set_read_timeout(Some(EVENT_TIMEOUT))
            .expect("cannot set a read timeout");
        stream
            .write_all(request.as_bytes())
            .expect("cannot send the request");
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .expect("the answer did not end (the broker serves one request per connection)");
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("the answer has no head: {answer:?}"));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("the answer has no status: {head:?}"));
        (status, head.to_owned(), body.to_owned())
    })
    .await
    .expect("the raw HTTP thread panicked")
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
}

fn json_of(answer: &Answer) -> Value {
    serde_json::from_slice(&answer.body).unwrap_or_else(|e| {
        panic!(
            "the broker's answer (HTTP {}) is not JSON: {e}: {:?}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        )
    })
}

/// The tokens of a 200 answer, checked to be `issued`.
#[track_caller]
fn assert_answers(answer: &Answer, issued: &Issued, what: &str) {
    assert_eq!(
        answer.status,
        200,
        "{what}: the broker answered HTTP {} ({:?}), not the tokens",
        answer.status,
        String::from_utf8_lossy(&answer.body)
    );
    let body = json_of(answer);
    for (field, expected) in [
        ("access_token", &issued.access_token),
        ("refresh_token", &issued.refresh_token),
        ("id_token", &issued.id_token),
    ] {
        assert_eq!(
            body[field].as_str(),
            Some(expected.as_str()),
            "{what}: the answer's {field} is not the one the endpoint issued last"
        );
    }
}

/// Checks that `answer` is the endpoint's own refusal: its `status` and its `body` (JSON).
#[track_caller]
fn assert_refusal(answer: &Answer, status: u16, body: &str, who: &str) {
    assert_eq!(
        answer.status,
        status,
        "{who} got HTTP {}, not the endpoint's {status}: {:?}",
        answer.status,
        String::from_utf8_lossy(&answer.body)
    );
    let got: Value = serde_json::from_slice(&answer.body).expect("the refusal is not JSON");
    let expected: Value = serde_json::from_str(body).expect("the test's body is JSON");
    assert_eq!(
        got, expected,
        "{who} did not get the endpoint's own refusal body"
    );
}

/// The error code of an answer's `{"error": {"code": ...}}`.
fn code_of(answer: &Answer) -> Option<String> {
    json_of(answer)["error"]["code"].as_str().map(str::to_owned)
}

fn last_issued(setup: &Setup) -> Issued {
    setup
        .fake
        .last_issued()
        .expect("the endpoint never issued tokens")
}

/// The journal's bytes (empty when there is none).
/// A stand-in for the real endpoint that answers every request 200 with `answer` and keeps the
/// bodies it received.
fn recording_upstream(answer: &'static str) -> (Server, Arc<Mutex<Vec<Vec<u8>>>>) {
    let received: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let server = Server::start(
        ServerOptions {
            name: "broker-upstream",
            keep_alive: false,
            max_body: 64 * 1024,
        },
        {
            let received = received.clone();
            move |request| {
                received
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(request.body.unwrap_or_default());
                Some(Response::json(200, answer))
            }
        },
    );
    (server, received)
}

/// `n` callers, each on a thread of its own, released together, each POSTing Codex's refresh
/// request presenting `refresh_token` to the broker at `addr`; their answers, to await.
fn callers_at_once(
    addr: SocketAddr,
    n: usize,
    refresh_token: &'static str,
) -> Vec<JoinHandle<Answer>> {
    let start = Arc::new(Barrier::new(n));
    (0..n)
        .map(|_| {
            let start = start.clone();
            tokio::task::spawn_blocking(move || {
                start.wait();
                post_blocking(addr, &codex_request(refresh_token))
            })
        })
        .collect()
}

/// Eight callers presenting the home's initial token to the broker at `addr` at once: checks
/// that the endpoint saw one request (`why` says why there must be one), that every caller got
/// the tokens it issued, and that auth.json holds them; those tokens.
async fn eight_callers_share_one_refresh(setup: &Setup, addr: SocketAddr, why: &str) -> Issued {
    let mut answers = Vec::new();
    for caller in callers_at_once(addr, 8, IDENTITY.initial_rt) {
        answers.push(caller.await.expect("a caller's thread panicked"));
    }
    setup.fake.expect_requests(1, why);
    let issued = last_issued(setup);
    for (n, answer) in answers.iter().enumerate() {
        assert_answers(answer, &issued, &format!("caller {n}"));
    }
    let stored = String::from_utf8_lossy(&read(setup.store.path())).into_owned();
    assert!(
        stored.contains(&issued.refresh_token),
        "auth.json does not hold the new refresh token the callers were given"
    );
    issued
}

fn journal(setup: &Setup) -> Vec<u8> {
    std::fs::read(setup.store.journal_path()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_callers_presenting_the_current_expired_token_cause_one_upstream_request_and_all_get_the_same_new_tokens(
) {
    let setup = Setup::new(IDENTITY, -60);
    // The first request is still in flight when the others arrive (whether they do changes
    // nothing below: a later caller finds its token rotated away, within the grace window).
    setup.fake.set_delay(Duration::from_millis(300));
    let broker = Running::over(&setup, BrokerConfig::default()).await;
    eight_callers_share_one_refresh(
        &setup,
        broker.addr,
        "8 callers presenting the current token must share one upstream request",
    )
    .await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_rotated_away_within_the_grace_window_get_the_current_tokens_without_an_upstream_request(
) {
    let setup = Setup::new(IDENTITY, -60);
    let broker = Running::over(&setup, BrokerConfig::default()).await;
    let first = broker.post(codex_request(IDENTITY.initial_rt)).await;
    assert_answers(&first, &last_issued(&setup), "the first refresh");
    let rt_1 = last_issued(&setup).refresh_token;
    // The current token is refreshed when presented, due or not (Codex's forced refresh).
    let second = broker.post(codex_request(&rt_1)).await;
    let current = last_issued(&setup);
    assert_answers(
        &second,
        &current,
        "the forced refresh of a valid current token",
    );
    setup
        .fake
        .expect_requests(2, "each of two current tokens is refreshed once");
    for (what, predecessor) in [
        ("the token rotated away last", rt_1.as_str()),
        (
            "the token two rotations back (the journal's chain)",
            IDENTITY.initial_rt,
        ),
    ] {
        let answer = broker.post(codex_request(predecessor)).await;
        assert_answers(&answer, &current, what);
    }
    setup.fake.expect_requests(
        2,
        "a predecessor within the grace window is answered without an upstream request",
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_rotated_away_outside_the_grace_window_is_answered_refresh_token_reused_without_a_request_and_nothing_changes(
) {
    let setup = Setup::new(IDENTITY, -60);
    let broker = Running::over(
        &setup,
        BrokerConfig {
            grace: Duration::ZERO,
            ..BrokerConfig::default()
        },
    )
    .await;
    let first = broker.post(codex_request(IDENTITY.initial_rt)).await;
    let current = last_issued(&setup);
    assert_answers(&first, &current, "the refresh of the current token");
    let auth_before = read(setup.store.path());
    let journal_before = journal(&setup);
    let answer = broker.post(codex_request(IDENTITY.initial_rt)).await;
    setup.fake.expect_requests(
        1,
        "a token this home redeemed must never be sent again: the endpoint may revoke the \
         whole family for a reused token",
    );
    assert_eq!(
        (answer.status, code_of(&answer).as_deref()),
        (401, Some("refresh_token_reused")),
        "a spent token was not answered as the endpoint answers a reused one: {:?}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_hides(
        "the answer to a spent token",
        &String::from_utf8_lossy(&answer.body),
        &[
            &current.refresh_token,
            &current.access_token,
            &current.id_token,
        ],
    );
    assert!(
        read(setup.store.path()) == auth_before,
        "auth.json changed because of a spent token"
    );
    assert!(
        journal(&setup) == journal_before,
        "the journal changed because of a spent token"
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_token_is_forwarded_byte_for_byte_and_its_answer_relayed_without_storing_it() {
    let setup = Setup::new(IDENTITY, -60);
    let (upstream, received) = recording_upstream(
        r#"{"access_token":"at_other","refresh_token":"rt_other_2","id_token":"it_other"}"#,
    );
    let url = format!("http://{}/oauth/token", upstream.addr());
    let broker = Running::start(&setup, url, BrokerConfig::default()).await;
    let auth_before = read(setup.store.path());
    let journal_before = journal(&setup);
    // Odd spacing, key order and an extra member: forwarded as sent.
    let sent = "{ \"refresh_token\" : \"rt_another_login\",\"grant_type\":\"refresh_token\",\
                \"client_id\":\"app_x\", \"extra\": [1, 2] }";
    let answer = broker.post(sent.to_owned()).await;
    let forwarded = received.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(
        forwarded.len(),
        1,
        "the upstream received {} requests, not the one forwarded",
        forwarded.len()
    );
    assert_eq!(
        String::from_utf8_lossy(&forwarded[0]),
        sent,
        "the request was not forwarded unchanged"
    );
    assert_eq!(
        (answer.status, json_of(&answer)["refresh_token"].as_str()),
        (200, Some("rt_other_2")),
        "the upstream's answer was not relayed: {:?}",
        String::from_utf8_lossy(&answer.body)
    );
    assert!(
        read(setup.store.path()) == auth_before && journal(&setup) == journal_before,
        "a relayed answer changed auth.json or the journal"
    );
    setup
        .fake
        .expect_requests(0, "the home's own endpoint must not be asked");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_token_of_another_login_is_forwarded_to_the_endpoint_and_refreshed_there_without_touching_the_home(
) {
    let setup = Setup::new(IDENTITY, -60);
    // Another client holds the endpoint's live token now; the home still holds the initial one.
    let theirs = setup.fake.rotate_out_of_band();
    let broker = Running::over(&setup, BrokerConfig::default()).await;
    let auth_before = read(setup.store.path());
    let answer = broker.post(codex_request(&theirs.refresh_token)).await;
    setup
        .fake
        .expect_requests(1, "an unknown token must be forwarded once");
    assert_answers(
        &answer,
        &last_issued(&setup),
        "the endpoint's answer to another login's token",
    );
    assert!(
        read(setup.store.path()) == auth_before,
        "another login's refresh was stored in the home"
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_while_refreshing_is_answered_to_every_waiting_caller_with_the_endpoints_status_and_code(
) {
    for (status, body, code) in [
        (
            401,
            r#"{"error":{"code":"refresh_token_expired","message":"Your refresh token has expired."}}"#,
            "refresh_token_expired",
        ),
        (
            400,
            r#"{"error":"invalid_grant","error_description":"the grant is dead"}"#,
            "invalid_grant",
        ),
    ] {
        let setup = Setup::new(IDENTITY, -60);
        setup.fake.set_behavior(Behavior::status(status, body));
        setup.fake.set_delay(Duration::from_millis(300));
        let auth_before = read(setup.store.path());
        let broker = Running::over(&setup, BrokerConfig::default()).await;
        let callers = callers_at_once(broker.addr, 4, IDENTITY.initial_rt);
        for (n, caller) in callers.into_iter().enumerate() {
            let answer = caller.await.expect("a caller's thread panicked");
            assert_refusal(&answer, status, body, &format!("{code}: caller {n}"));
        }
        setup.fake.expect_requests(
            1,
            &format!("{code}: a refused token must be sent once, however many callers"),
        );
        assert!(
            read(setup.store.path()) == auth_before,
            "{code}: auth.json changed after a refusal"
        );
        broker.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_while_refreshing_is_answered_503_with_a_json_error_and_nothing_stored()
{
    let setup = Setup::new(IDENTITY, -60);
    setup
        .fake
        .set_behavior(Behavior::status(500, r#"{"error":"server_error"}"#));
    let auth_before = read(setup.store.path());
    let broker = Running::over(&setup, BrokerConfig::default()).await;
    let answer = broker.post(codex_request(IDENTITY.initial_rt)).await;
    assert_eq!(
        (answer.status, code_of(&answer).as_deref()),
        (503, Some("temporarily_unavailable")),
        "a 500 from the endpoint was not answered 503: {:?}",
        String::from_utf8_lossy(&answer.body)
    );
    assert!(
        read(setup.store.path()) == auth_before,
        "auth.json changed after a transient failure"
    );
    assert_hides(
        "the 503 answer",
        &String::from_utf8_lossy(&answer.body),
        &[IDENTITY.initial_rt, setup.access.as_str()],
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_presenting_no_refresh_token_gets_400_invalid_request_and_no_token() {
    let setup = Setup::new(IDENTITY, 3600);
    let max_body = 1024;
    let broker = Running::over(
        &setup,
        BrokerConfig {
            max_body,
            ..BrokerConfig::default()
        },
    )
    .await;
    let current = IDENTITY.initial_rt;
    let oversized = json!({
        "grant_type": "refresh_token",
        "refresh_token": current,
        "padding": "x".repeat(max_body),
    })
    .to_string();
    let cases = [
        ("an empty body", String::new()),
        ("an empty object", "{}".to_owned()),
        (
            "a body that is not JSON",
            format!("refresh_token={current}"),
        ),
        (
            "no refresh_token",
            r#"{"grant_type":"refresh_token"}"#.to_owned(),
        ),
        (
            "an empty refresh_token",
            r#"{"grant_type":"refresh_token","refresh_token":""}"#.to_owned(),
        ),
        (
            "the current token with another grant type",
            json!({"grant_type": "password", "refresh_token": current}).to_string(),
        ),
        (
            "the current token without a grant type",
            json!({ "refresh_token": current }).to_string(),
        ),
        ("the current token in a body over max_body", oversized),
    ];
    let secrets = [current, setup.access.as_str(), &IDENTITY.id_token()];
    for (case, body) in cases {
        let answer = broker.post(body).await;
        assert_eq!(
            (answer.status, code_of(&answer).as_deref()),
            (400, Some("invalid_request")),
            "{case}: not answered 400 invalid_request: HTTP {} {:?}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
        assert_hides(
            &format!("the answer to {case}"),
            &String::from_utf8_lossy(&answer.body),
            &secrets,
        );
    }
    setup
        .fake
        .expect_requests(0, "a request presenting no token must reach no endpoint");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_post_to_the_token_path_and_get_health_are_served() {
    let setup = Setup::new(IDENTITY, 3600);
    let broker = Running::over(&setup, BrokerConfig::default()).await;
    let (status, _, body) = raw(broker.addr, get("/health")).await;
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"ok":true}"#),
        "the health probe did not answer 200 {{\"ok\":true}}"
    );
    let (status, head, _) = raw(broker.addr, get(BROKER_TOKEN_PATH)).await;
    assert!(
        status == 405 && head.to_ascii_lowercase().contains("allow: post"),
        "GET on the token path was not answered 405 with Allow: POST: {head}"
    );
    let other = format!(
        "POST /oauth/other HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {len}\r\nConnection: close\r\n\r\n{body}",
        body = codex_request(IDENTITY.initial_rt),
        len = codex_request(IDENTITY.initial_rt).len()
    );
    let (status, _, body) = raw(broker.addr, other).await;
    assert_eq!(status, 404, "a POST to another path was not answered 404");
    assert_hides(
        "the 404 answer",
        &body,
        &[IDENTITY.initial_rt, setup.access.as_str()],
    );
    setup
        .fake
        .expect_requests(0, "no request on another path may reach the endpoint");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_rate_are_answered_429_with_retry_after() {
    let setup = Setup::new(IDENTITY, 3600);
    let broker = Running::over(
        &setup,
        BrokerConfig {
            rate_per_second: 1,
            ..BrokerConfig::default()
        },
    )
    .await;
    let (first, _, _) = raw(broker.addr, get("/health")).await;
    assert_eq!(first, 200, "the first request of a full bucket was refused");
    // The bucket holds one request and refills one a second: the next, sent at once, is over
    // the rate.
    let (status, head, body) = raw(broker.addr, get("/health")).await;
    assert_eq!(
        status, 429,
        "a second request within a second of the first at 1 request/s was not refused: {head}"
    );
    let retry_after = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("retry-after:")
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("the 429 has no Retry-After: {head}"));
    assert!(
        retry_after.parse::<u64>() == Ok(1),
        "Retry-After is {retry_after:?}, not the 1 second a token takes at 1 request/s"
    );
    let body: Value = serde_json::from_str(&body).expect("the 429 body is not JSON");
    assert!(
        body["error"]["code"].is_string(),
        "the 429 body carries no error code: {body}"
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_listener_that_is_not_on_loopback() {
    let setup = Setup::new(IDENTITY, 3600);
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0")
        .await
        .expect("cannot bind 0.0.0.0:0");
    let broker = Broker::new(
        manager(&setup.store, config(setup.fake.url())),
        BrokerConfig::default(),
    );
    let served = tokio::time::timeout(
        EVENT_TIMEOUT,
        broker.serve(listener, std::future::pending()),
    )
    .await
    .expect("serve on 0.0.0.0 did not return: it serves instead of refusing");
    assert!(
        matches!(served, Err(BrokerError::NotLoopback { .. })),
        "serve on 0.0.0.0 was not refused as not loopback: {served:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_token_url_that_is_the_brokers_own_address() {
    let setup = Setup::new(IDENTITY, 3600);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("cannot bind 127.0.0.1:0");
    let port = listener.local_addr().expect("no address").port();
    let itself = format!("http://localhost:{port}{BROKER_TOKEN_PATH}");
    let broker = Broker::new(
        manager(&setup.store, config(itself)),
        BrokerConfig::default(),
    );
    let served = tokio::time::timeout(
        EVENT_TIMEOUT,
        broker.serve(listener, std::future::pending()),
    )
    .await
    .expect("serve forwarding to itself did not return: it serves instead of refusing");
    let Err(error @ BrokerError::ForwardsToItself { .. }) = served else {
        panic!("a token URL naming the broker itself was not refused: {served:?}");
    };
    assert!(
        error.to_string().contains(&port.to_string()),
        "the refusal does not name the address: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_no_request_head_is_closed_after_the_header_timeout() {
    let setup = Setup::new(IDENTITY, 3600);
    let broker = Running::over(
        &setup,
        BrokerConfig {
            header_timeout: Duration::from_millis(200),
            ..BrokerConfig::default()
        },
    )
    .await;
    let addr = broker.addr;
    let closed = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr)
            .unwrap_or_else(|e| panic!("cannot connect to the broker at {addr}: {e}"));
        stream
            .set_read_timeout(Some(EVENT_TIMEOUT))
            .expect("cannot set a read timeout");
        stream
            .write_all(b"POST /oauth/token HTTP/1.1\r\nHost: 127.0")
            .expect("cannot send half a head");
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).map(|_| rest)
    })
    .await
    .expect("the raw HTTP thread panicked");
    let rest = closed.unwrap_or_else(|e| {
        panic!("the broker kept a connection without a whole head open past {EVENT_TIMEOUT:?}: {e}")
    });
    assert!(
        !String::from_utf8_lossy(&rest).contains("200 OK"),
        "a half-sent head was answered 200: {:?}",
        String::from_utf8_lossy(&rest)
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_is_not_the_current_one_is_not_forwarded_while_the_journal_cannot_be_read() {
    let setup = Setup::new(IDENTITY, -60);
    let (upstream, received) = recording_upstream(r#"{"access_token":"at_other"}"#);
    let url = format!("http://{}/oauth/token", upstream.addr());
    let broker = Running::start(&setup, url, BrokerConfig::default()).await;
    // A FIFO at the journal's name: it cannot say which tokens this home redeemed.
    codex_store_tests::fixtures::make_fifo(setup.store.journal_path());
    let answer = broker.post(codex_request("rt_maybe_redeemed_here")).await;
    assert_eq!(
        (answer.status, code_of(&answer).as_deref()),
        (503, Some("temporarily_unavailable")),
        "without a readable journal, a token that is not the current one may be one this home \
         redeemed: it must not be forwarded: {:?}",
        String::from_utf8_lossy(&answer.body)
    );
    assert!(
        received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty(),
        "the token was forwarded upstream although the journal could not be read"
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_agent_eight_callers_presenting_the_current_token_cause_one_refresh_by_the_agent_and_all_get_its_tokens(
) {
    // Valid for an hour: nothing is due, so the agent refreshes only because the broker asks.
    let setup = Setup::new(IDENTITY, 3600);
    setup.fake.set_delay(Duration::from_millis(300));
    let both = ThroughAgent::over(&setup).await;
    let issued = eight_callers_share_one_refresh(
        &setup,
        both.broker.addr,
        "8 callers presenting the current token must make the agent refresh once",
    )
    .await;
    // The token just rotated away is a predecessor: the current tokens, no request.
    let again = both.broker.post(codex_request(IDENTITY.initial_rt)).await;
    assert_answers(&again, &issued, "the predecessor after the agent's refresh");
    setup
        .fake
        .expect_requests(1, "a predecessor must be answered without a request");
    both.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_agent_a_refusal_reaches_the_caller_with_the_endpoints_status_and_body() {
    let body = r#"{"error":"invalid_grant","error_description":"the grant is dead"}"#;
    let setup = Setup::new(IDENTITY, 3600);
    setup.fake.set_behavior(Behavior::status(400, body));
    let auth_before = read(setup.store.path());
    let both = ThroughAgent::over(&setup).await;
    for attempt in ["first", "second"] {
        let answer = both.broker.post(codex_request(IDENTITY.initial_rt)).await;
        assert_refusal(&answer, 400, body, &format!("{attempt} caller"));
    }
    setup.fake.expect_requests(
        1,
        "a refused token must be sent once: the agent remembers the refusal",
    );
    assert!(
        read(setup.store.path()) == auth_before,
        "auth.json changed after a refusal"
    );
    both.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_agent_a_stopped_agent_makes_the_broker_answer_503_and_send_nothing() {
    let setup = Setup::new(IDENTITY, 3600);
    let both = ThroughAgent::over(&setup).await;
    ThroughAgent::stop_agent(both.agent_stop, both.agent).await;
    let answer = both.broker.post(codex_request(IDENTITY.initial_rt)).await;
    assert_eq!(
        answer.status,
        503,
        "with the agent stopped, the current token got HTTP {}: {:?}",
        answer.status,
        String::from_utf8_lossy(&answer.body)
    );
    setup
        .fake
        .expect_requests(0, "a broker whose agent stopped must send nothing itself");
    both.broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_an_agent_that_does_not_answer_within_the_agent_wait_the_caller_gets_503_and_nothing_is_sent(
) {
    let setup = Setup::new(IDENTITY, 3600);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("cannot bind 127.0.0.1:0 for the broker");
    let addr = listener
        .local_addr()
        .expect("the broker's listener has no address");
    // The agent's end is held and never read: an agent busy for longer than the broker waits
    // (another machine holding the fleet's lock, say).
    let (asker, _asks) = codex_refresh::refresh_asks();
    let wait = Duration::from_millis(300);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(
        Broker::through_agent(
            manager(&setup.store, config(setup.fake.url())),
            BrokerConfig {
                agent_wait: wait,
                ..BrokerConfig::default()
            },
            asker,
        )
        .serve(listener, async {
            let _ = stopped.await;
        }),
    );
    let broker = Running { addr, stop, task };
    let began = std::time::Instant::now();
    let answer = broker.post(codex_request(IDENTITY.initial_rt)).await;
    assert_eq!(
        answer.status,
        503,
        "an agent that never answered got the caller HTTP {}: {:?}",
        answer.status,
        String::from_utf8_lossy(&answer.body)
    );
    assert!(
        began.elapsed() >= wait,
        "the broker answered 503 after {:?}, before its agent wait of {wait:?}",
        began.elapsed()
    );
    assert!(
        code_of(&answer).is_some(),
        "the 503 carries no JSON error code: {:?}",
        String::from_utf8_lossy(&answer.body)
    );
    setup.fake.expect_requests(
        0,
        "a broker whose agent does not answer must send nothing itself",
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_agent_an_answer_that_keeps_the_refresh_token_is_answered_with_the_new_access_token_to_every_caller_waiting_for_it(
) {
    let setup = Setup::new(IDENTITY, 3600);
    setup.fake.set_behavior(Behavior::OmitRefreshToken);
    // The endpoint answers 3 s after it read the request (below the agent's HTTP timeout of
    // 5 s): the callers posted once it read the first one arrive while it is in flight.
    setup.fake.set_delay(Duration::from_secs(3));
    let both = ThroughAgent::over(&setup).await;
    let first = tokio::spawn(post(both.broker.addr, codex_request(IDENTITY.initial_rt)));
    assert!(
        tokio::task::block_in_place(|| setup.fake.wait_for_requests(1, EVENT_TIMEOUT)),
        "the first caller's refresh never reached the endpoint"
    );
    let waiting = callers_at_once(both.broker.addr, 3, IDENTITY.initial_rt);
    let mut answers = vec![first.await.expect("the first caller's task panicked")];
    for caller in waiting {
        answers.push(caller.await.expect("a caller's thread panicked"));
    }
    let issued = last_issued(&setup);
    for (n, answer) in answers.iter().enumerate() {
        assert_eq!(
            answer.status,
            200,
            "caller {n}, the endpoint keeping the refresh token: HTTP {}: {:?}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
        let body = json_of(answer);
        assert_eq!(
            body["access_token"].as_str(),
            Some(issued.access_token.as_str()),
            "caller {n} did not get the new access token"
        );
        assert_eq!(
            body["refresh_token"].as_str(),
            Some(IDENTITY.initial_rt),
            "caller {n} did not get the refresh token the endpoint kept"
        );
    }
    setup.fake.expect_requests(
        1,
        "callers that arrived while the refresh was in flight must get its tokens, not send \
         one request each (the endpoint kept the refresh token, so they present the current one)",
    );
    both.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_agent_callers_during_the_agents_backoff_are_answered_its_failure_without_another_request(
) {
    let setup = Setup::new(IDENTITY, 3600);
    setup.fake.set_behavior(Behavior::status(
        503,
        r#"{"error":"temporarily_unavailable"}"#,
    ));
    // A backoff far longer than the test: the agent's own retry cannot come in between.
    let both = ThroughAgent::with(
        &setup,
        codex_refresh::AgentConfig {
            retry_initial: Duration::from_secs(600),
            retry_max: Duration::from_secs(600),
            ..codex_refresh::AgentConfig::default()
        },
    )
    .await;
    for caller in ["first", "second", "third"] {
        let answer = both.broker.post(codex_request(IDENTITY.initial_rt)).await;
        assert_eq!(
            answer.status,
            503,
            "{caller} caller, the endpoint failing for now: HTTP {}: {:?}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
    }
    setup.fake.expect_requests(
        1,
        "callers arriving during the agent's backoff must be answered its failure, not cause a \
         request each",
    );
    both.stop().await;
}
