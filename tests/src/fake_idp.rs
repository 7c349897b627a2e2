//! A fake OAuth token endpoint: an HTTP/1.1 server (hyper) on 127.0.0.1 that rotates refresh
//! tokens the way `https://auth.openai.com/oauth/token` does (its answers and error codes
//! as the README's refresh section lists them).
//!
//! The kit's [`Server`](crate::http::Server) serves it: hyper on a small tokio runtime of the
//! server's own, one request per connection (`Connection: close`); the decision about a request
//! runs on a blocking thread.
//! Every wait is bounded, and dropping the [`FakeIdp`] stops the server, wakes whatever is
//! delayed or hanging, and shuts the runtime down, closing every connection.
//!
//! Timing of a request: it is read, then counted (and the current [`Behavior`] and delay are
//! captured under the same lock, so a test that waits for the request and then changes the
//! behaviour does not affect it), then the delay passes, then the refresh token is checked and
//! rotated atomically and the answer is written. Two concurrent requests presenting the same live
//! token therefore get exactly one success and one `refresh_token_reused`.
//!
//! [`Behavior::LateWinner`] changes that order to produce "a winner whose answer arrives after
//! the losers' refusals": the token is checked and rotated the moment the request is read, and
//! only the answer waits (the success and the refusals each after their own delay).

use crate::http::{Request, Response, Server, ServerOptions};
use crate::jwt;
use crate::lock;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The path the token endpoint answers on.
pub const TOKEN_PATH: &str = "/oauth/token";

/// Lifetime, in seconds, of the access tokens the server issues (`expires_in`).
pub const EXPIRES_IN_SECS: i64 = 3600;

/// The longest a [`Behavior::Hang`] request is held before its connection is closed.
const HANG_LIMIT: Duration = Duration::from_secs(60);
/// Largest accepted request body.
const MAX_BODY: usize = 1024 * 1024;

/// Process-wide counter making every issued access token distinct, even across servers.
static NEXT_MARKER: AtomicU64 = AtomicU64::new(1);

/// A running fake token endpoint. Dropping it shuts the server down and joins its threads.
pub struct FakeIdp {
    shared: Arc<Shared>,
    addr: SocketAddr,
    /// Dropped after [`FakeIdp::drop`] woke every waiting request.
    _server: Server,
}

/// A set of tokens the server handed out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    /// The new access token (a JWT whose `exp` is one hour after issue).
    pub access_token: String,
    /// The live refresh token after the issue: a new one, or, for
    /// [`Behavior::OmitRefreshToken`], the presented one that stays live.
    pub refresh_token: String,
    /// The new id token (same account, email and plan as at [`FakeIdp::start`]).
    pub id_token: String,
}

/// How the server answers `POST /oauth/token`.
#[derive(Clone, Debug)]
pub enum Behavior {
    /// Rotate a live refresh token and answer 200 with new tokens; refuse dead tokens as
    /// `refresh_token_reused` and unknown ones as `refresh_token_invalidated` (both 401).
    Normal,
    /// Like [`Behavior::Normal`], but rotate only the access and id tokens and answer 200 without
    /// `refresh_token`: the presented refresh token stays the live one.
    OmitRefreshToken,
    /// Answer this status and raw body (as `application/json`) to every request and rotate
    /// nothing, e.g. 500, 429, or 401 with `{"error":{"code":"refresh_token_expired"}}`.
    Status {
        /// The HTTP status code.
        status: u16,
        /// The raw response body.
        body: String,
    },
    /// Answer 200 with a body that is not JSON, rotating nothing.
    Garbage,
    /// Answer this status with an HTML page (`text/html`) to every request and rotate nothing:
    /// what a web server at a wrong URL, a proxy or a captive portal answers.
    Page {
        /// The HTTP status code.
        status: u16,
        /// The HTML.
        body: String,
    },
    /// Read the request and never answer: the connection is closed when the server is dropped
    /// or after 60 s, whichever comes first. Nothing is rotated.
    Hang,
    /// Like [`Behavior::Normal`], but the presented refresh token is checked and rotated the
    /// moment the request is read, in the same step as it is counted (so once
    /// [`wait_for_requests`](FakeIdp::wait_for_requests) has seen it, it is decided), before any
    /// wait: the first request with the live token wins at once. Its 200 answer is written only after `success_after`, and every
    /// refusal (`refresh_token_reused`, `_invalidated`) after `refusal_after`. With
    /// `success_after` longer than `refusal_after`, the losers of a race hear "already used"
    /// while the winner is still waiting for its new tokens. The delay of
    /// [`set_delay`](FakeIdp::set_delay) does not apply; malformed requests are answered at once.
    LateWinner {
        /// How long the winner waits for its 200 answer after its request was read.
        success_after: Duration,
        /// How long a refused request waits for its 401 answer after it was read.
        refusal_after: Duration,
    },
    /// Like [`Behavior::LateWinner`] (the live refresh token is rotated on receipt), but the
    /// answer, even the winner's, is this status with an empty JSON body: a gateway that timed
    /// out (502, 504) after the token endpoint behind it redeemed the token.
    RotateThenStatus {
        /// The HTTP status code of every answer.
        status: u16,
    },
}

impl Behavior {
    /// [`Behavior::Status`]: answer `status` with the raw `body`.
    pub fn status(status: u16, body: impl Into<String>) -> Behavior {
        Behavior::Status {
            status,
            body: body.into(),
        }
    }

    /// [`Behavior::Page`]: answer `status` with the HTML page `body`.
    pub fn page(status: u16, body: impl Into<String>) -> Behavior {
        Behavior::Page {
            status,
            body: body.into(),
        }
    }

    /// [`Behavior::LateWinner`]: rotate on receipt, answer the winner after `success_after` and
    /// refuse the losers at once.
    pub fn late_winner(success_after: Duration) -> Behavior {
        Behavior::LateWinner {
            success_after,
            refusal_after: Duration::ZERO,
        }
    }
}

/// State shared by the handle, the accept loop and the connection threads.
struct Shared {
    state: Mutex<State>,
    /// Notified whenever a request is counted and when the server stops.
    changed: Condvar,
}

struct State {
    stopping: bool,
    behavior: Behavior,
    delay: Duration,
    requests: usize,
    successes: usize,
    reuse_refusals: usize,
    live: String,
    dead: HashSet<String>,
    last_issued: Option<Issued>,
    presented: Vec<String>,
    serial: u64,
    account_id: String,
    email: String,
    plan: String,
    /// Lifetime, in seconds, of the access tokens issued from now on (`expires_in`).
    access_lifetime: i64,
}

impl FakeIdp {
    /// Starts a server on an ephemeral port of 127.0.0.1 for this account, whose one live refresh
    /// token is `initial_refresh_token`, answering with [`Behavior::Normal`] and no delay.
    ///
    /// Panics when no port can be bound or the accept thread cannot be spawned.
    pub fn start(
        account_id: &str,
        email: &str,
        plan: &str,
        initial_refresh_token: &str,
    ) -> FakeIdp {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                stopping: false,
                behavior: Behavior::Normal,
                delay: Duration::ZERO,
                requests: 0,
                successes: 0,
                reuse_refusals: 0,
                live: initial_refresh_token.to_string(),
                dead: HashSet::new(),
                last_issued: None,
                presented: Vec::new(),
                serial: 0,
                account_id: account_id.to_string(),
                email: email.to_string(),
                plan: plan.to_string(),
                access_lifetime: EXPIRES_IN_SECS,
            }),
            changed: Condvar::new(),
        });
        let options = ServerOptions {
            name: "fake-idp",
            keep_alive: false,
            max_body: MAX_BODY,
        };
        let handler = Arc::clone(&shared);
        let server = Server::start(options, move |request| respond(&handler, &request));
        FakeIdp {
            shared,
            addr: server.addr(),
            _server: server,
        }
    }

    /// The token endpoint's URL, `http://127.0.0.1:<port>/oauth/token`.
    pub fn url(&self) -> String {
        format!("http://{}{TOKEN_PATH}", self.addr)
    }

    /// Changes how requests read from now on are answered.
    pub fn set_behavior(&self, b: Behavior) {
        lock(&self.shared.state).behavior = b;
    }

    /// Makes requests read from now on wait this long (after being read and counted) before
    /// they are answered. Dropping the server cuts the wait short and closes the connection
    /// unanswered.
    pub fn set_delay(&self, d: Duration) {
        lock(&self.shared.state).delay = d;
    }

    /// Makes the access tokens issued from now on expire `secs` seconds after issue (default
    /// [`EXPIRES_IN_SECS`]); zero or negative issues tokens that are already expired, so that
    /// every run of `codex-store token` refreshes again.
    pub fn set_access_token_lifetime(&self, secs: i64) {
        lock(&self.shared.state).access_lifetime = secs;
    }

    /// How many `POST /oauth/token` requests were read, whatever their answer.
    pub fn requests(&self) -> usize {
        lock(&self.shared.state).requests
    }

    /// Waits until [`requests`](Self::requests) reaches `n`; `false` when `timeout` passes
    /// first. A request counts as soon as it is read, before its delay and answer.
    pub fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.shared.state);
        while state.requests < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        true
    }

    /// How many requests were answered 200 with rotated tokens.
    pub fn successes(&self) -> usize {
        lock(&self.shared.state).successes
    }

    /// How many requests were refused as `refresh_token_reused` (they presented a refresh token
    /// that had already been rotated), under [`Behavior::Normal`], [`Behavior::OmitRefreshToken`]
    /// or [`Behavior::LateWinner`]. A [`Behavior::Status`] body saying so is not counted.
    pub fn reuse_refusals(&self) -> usize {
        lock(&self.shared.state).reuse_refusals
    }

    /// The one live refresh token.
    pub fn current_refresh_token(&self) -> String {
        lock(&self.shared.state).live.clone()
    }

    /// The tokens most recently issued, by a request or by
    /// [`rotate_out_of_band`](Self::rotate_out_of_band); `None` before the first issue.
    pub fn last_issued(&self) -> Option<Issued> {
        lock(&self.shared.state).last_issued.clone()
    }

    /// Simulates another client redeeming the live refresh token: new tokens are issued and the
    /// old refresh token becomes dead (presenting it yields `refresh_token_reused`). This counts
    /// neither as a request nor as a success.
    pub fn rotate_out_of_band(&self) -> Issued {
        lock(&self.shared.state).issue(true)
    }

    /// Every `refresh_token` received in a request body, in the order the requests were read.
    pub fn presented_refresh_tokens(&self) -> Vec<String> {
        lock(&self.shared.state).presented.clone()
    }

    /// Panics with `why` unless exactly `n` requests were read ([`requests`](Self::requests));
    /// the message names the refresh tokens presented, by fingerprint.
    #[track_caller]
    pub fn expect_requests(&self, n: usize, why: &str) {
        let requests = self.requests();
        assert!(
            requests == n,
            "{why}: the endpoint read {requests} request(s), not {n} (refresh tokens presented, \
             by fingerprint: {:?})",
            self.presented_refresh_tokens()
                .iter()
                .map(|t| crate::secrets::fingerprint(t))
                .collect::<Vec<_>>()
        );
    }
}

impl Drop for FakeIdp {
    fn drop(&mut self) {
        // Wakes whatever is delayed or hanging; the server shuts down after this.
        lock(&self.shared.state).stopping = true;
        self.shared.changed.notify_all();
    }
}

impl State {
    /// Issues a new access and id token and, with `rotate_refresh`, a new refresh token that
    /// replaces the live one (which becomes dead).
    fn issue(&mut self, rotate_refresh: bool) -> Issued {
        if rotate_refresh {
            let fresh = loop {
                self.serial += 1;
                let candidate = format!("rt_{}", self.serial);
                if candidate != self.live && !self.dead.contains(&candidate) {
                    break candidate;
                }
            };
            let old = std::mem::replace(&mut self.live, fresh);
            self.dead.insert(old);
        }
        let marker = format!("at_{}", NEXT_MARKER.fetch_add(1, Ordering::Relaxed));
        let issued = Issued {
            access_token: jwt::access_token(jwt::now_unix() + self.access_lifetime, &marker),
            refresh_token: self.live.clone(),
            id_token: jwt::id_token(&self.email, &self.account_id, &self.plan),
        };
        self.last_issued = Some(issued.clone());
        issued
    }

    /// Checks a presented refresh token and, when it is the live one, rotates and answers 200.
    fn redeem(&mut self, rt: &str, rotate_refresh: bool) -> Response {
        if rt == self.live {
            let issued = self.issue(rotate_refresh);
            self.successes += 1;
            let mut body = json!({
                "id_token": issued.id_token,
                "access_token": issued.access_token,
                "expires_in": self.access_lifetime,
                "token_type": "Bearer",
            });
            if rotate_refresh {
                body["refresh_token"] = Value::String(issued.refresh_token);
            }
            Response::json(200, body.to_string())
        } else if self.dead.contains(rt) {
            self.reuse_refusals += 1;
            Response::json(
                401,
                json!({"error": {
                    "code": "refresh_token_reused",
                    "message": "Your refresh token has already been used to generate a new access token. Please try signing in again.",
                }})
                .to_string(),
            )
        } else {
            Response::json(
                401,
                json!({"error": {"code": "refresh_token_invalidated"}}).to_string(),
            )
        }
    }
}

impl Shared {
    /// Waits `d` unless the server stops first; `true` when the whole wait passed.
    fn wait_unless_stopping(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut state = lock(&self.state);
        loop {
            if state.stopping {
                return false;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }
}

/// Decides the answer to one request; `None` closes the connection without answering.
fn respond(shared: &Shared, request: &Request) -> Option<Response> {
    let Some(body) = request.body.as_deref() else {
        return Some(Response::json(
            413,
            json!({"error": "invalid_request"}).to_string(),
        ));
    };
    if request.method != "POST" || request.path != TOKEN_PATH {
        return Some(Response::json(
            404,
            json!({"error": "not_found"}).to_string(),
        ));
    }
    // Some(Ok(token)) for a well-formed refresh request, Some(Err(())) for a bad one.
    let parsed: Result<String, ()> = if request.chunked {
        Err(())
    } else {
        serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|body| {
                let grant_ok =
                    body.get("grant_type").and_then(Value::as_str) == Some("refresh_token");
                let rt = body
                    .get("refresh_token")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                rt.filter(|_| grant_ok)
            })
            .ok_or(())
    };
    let presented = serde_json::from_slice::<Value>(body).ok().and_then(|body| {
        body.get("refresh_token")
            .and_then(Value::as_str)
            .map(str::to_string)
    });

    let (behavior, delay, decided) = {
        let mut state = lock(&shared.state);
        state.requests += 1;
        if let Some(rt) = presented {
            state.presented.push(rt);
        }
        // A late winner is checked and rotated in the same step as it is counted: whoever has
        // seen the request counted (`wait_for_requests`) knows that it has been decided.
        let decided = match (&state.behavior, &parsed) {
            (Behavior::LateWinner { .. } | Behavior::RotateThenStatus { .. }, Ok(rt)) => {
                Some(state.redeem(rt, true))
            }
            _ => None,
        };
        shared.changed.notify_all();
        (state.behavior.clone(), state.delay, decided)
    };
    if let Behavior::RotateThenStatus { status } = behavior {
        return Some(Response::json(status, "{}".to_owned()));
    }
    if let Behavior::LateWinner {
        success_after,
        refusal_after,
    } = behavior
    {
        // Decided above, on receipt; only the answer waits.
        let response = match decided {
            Some(response) => response,
            None if request.chunked => {
                return Some(Response::json(
                    411,
                    json!({"error": "invalid_request"}).to_string(),
                ))
            }
            None => {
                return Some(Response::json(
                    400,
                    json!({"error": "invalid_request"}).to_string(),
                ))
            }
        };
        let wait = if response.status == 200 {
            success_after
        } else {
            refusal_after
        };
        return shared.wait_unless_stopping(wait).then_some(response);
    }
    if !shared.wait_unless_stopping(delay) {
        return None;
    }
    match behavior {
        Behavior::Hang => {
            shared.wait_unless_stopping(HANG_LIMIT);
            None
        }
        // Answered above, before the delay.
        Behavior::LateWinner { .. } | Behavior::RotateThenStatus { .. } => None,
        Behavior::Status { status, body } => Some(Response::json(status, body)),
        Behavior::Page { status, body } => Some(Response {
            status,
            content_type: "text/html; charset=utf-8",
            body,
        }),
        Behavior::Garbage => Some(Response {
            status: 200,
            content_type: "text/html",
            body: "<html><body>502 upstream confused: this is not JSON</body></html>".to_string(),
        }),
        Behavior::Normal | Behavior::OmitRefreshToken => Some(match parsed {
            Err(()) if request.chunked => {
                Response::json(411, json!({"error": "invalid_request"}).to_string())
            }
            Err(()) => Response::json(400, json!({"error": "invalid_request"}).to_string()),
            Ok(rt) => {
                let rotate_refresh = matches!(behavior, Behavior::Normal);
                lock(&shared.state).redeem(&rt, rotate_refresh)
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use std::io::{self, Read, Write};
    use std::net::TcpStream;

    const WAIT: Duration = Duration::from_secs(10);

    /// A parsed HTTP answer, or what a connection that was closed unanswered looks like.
    #[derive(Debug)]
    struct Reply {
        status: u16,
        headers: String,
        body: String,
    }

    impl Reply {
        fn json(&self) -> Value {
            serde_json::from_str(&self.body)
                .unwrap_or_else(|e| panic!("the body is not JSON ({e}): {:?}", self.body))
        }

        fn error_code(&self) -> Option<String> {
            self.json()["error"]["code"].as_str().map(str::to_string)
        }
    }

    fn server() -> FakeIdp {
        FakeIdp::start("acc-1", "user@example.com", "pro", "rt_initial")
    }

    /// The server address, taken from its public URL (which also checks the URL's shape).
    fn addr_of(idp: &FakeIdp) -> String {
        let url = idp.url();
        let rest = url
            .strip_prefix("http://127.0.0.1:")
            .unwrap_or_else(|| panic!("the URL {url} is not on http://127.0.0.1"));
        let port = rest
            .strip_suffix(TOKEN_PATH)
            .unwrap_or_else(|| panic!("the URL {url} does not end in {TOKEN_PATH}"));
        format!("127.0.0.1:{port}")
    }

    fn connect(idp: &FakeIdp) -> TcpStream {
        let stream = TcpStream::connect(addr_of(idp)).expect("cannot connect to the fake IdP");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream
    }

    fn raw_request(method: &str, path: &str, body: &str) -> String {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Accept: */*\r\nConnection: keep-alive\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    fn refresh_body(rt: &str) -> String {
        json!({"client_id": "app_EMoamEEZ73f0CkXaXp7hrann", "grant_type": "refresh_token", "refresh_token": rt})
            .to_string()
    }

    fn read_reply(mut stream: TcpStream) -> Reply {
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .expect("reading the answer failed (or timed out)");
        let text = String::from_utf8(raw).expect("the answer is not UTF-8");
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("the answer has no complete head: {text:?}"));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("the answer has no status line: {head:?}"));
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length").then_some(value)
            })
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("the answer has no Content-Length: {head:?}"));
        assert_eq!(body.len(), length, "Content-Length does not match the body");
        Reply {
            status,
            headers: head.to_string(),
            body: body.to_string(),
        }
    }

    fn send(idp: &FakeIdp, raw: &str) -> Reply {
        let mut stream = connect(idp);
        stream
            .write_all(raw.as_bytes())
            .expect("sending the request failed");
        read_reply(stream)
    }

    fn post_refresh(idp: &FakeIdp, rt: &str) -> Reply {
        send(idp, &raw_request("POST", TOKEN_PATH, &refresh_body(rt)))
    }

    /// Sends a refresh request on a fresh connection and returns the connection unread.
    fn start_refresh(idp: &FakeIdp, rt: &str) -> TcpStream {
        let mut stream = connect(idp);
        stream
            .write_all(raw_request("POST", TOKEN_PATH, &refresh_body(rt)).as_bytes())
            .expect("sending the request failed");
        stream
    }

    fn exp_of(jwt: &str) -> i64 {
        let payload = jwt.split('.').nth(1).expect("a JWT has a payload part");
        let claims: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(payload)
                .expect("payload is base64url"),
        )
        .expect("payload is JSON");
        claims["exp"]
            .as_i64()
            .expect("the access token has a numeric exp")
    }

    #[test]
    fn a_live_refresh_token_is_rotated_into_new_tokens() {
        let idp = server();
        let reply = post_refresh(&idp, "rt_initial");
        assert_eq!(
            reply.status, 200,
            "redeeming the live token must succeed: {reply:?}"
        );
        assert!(
            reply
                .headers
                .to_ascii_lowercase()
                .contains("connection: close"),
            "the server must close: {reply:?}"
        );
        let body = reply.json();
        let issued = idp
            .last_issued()
            .expect("a success must record the issued tokens");
        assert_eq!(
            body["refresh_token"],
            issued.refresh_token.as_str(),
            "the answered refresh token is not the issued one"
        );
        assert_eq!(
            body["access_token"],
            issued.access_token.as_str(),
            "the answered access token is not the issued one"
        );
        assert_eq!(
            body["id_token"],
            issued.id_token.as_str(),
            "the answered id token is not the issued one"
        );
        assert_eq!(body["expires_in"], 3600, "expires_in is wrong: {body}");
        assert_eq!(body["token_type"], "Bearer", "token_type is wrong: {body}");
        assert_ne!(
            issued.refresh_token, "rt_initial",
            "the refresh token was not rotated"
        );
        assert!(
            issued.refresh_token.starts_with("rt_"),
            "new refresh tokens look like rt_<n>: {}",
            issued.refresh_token
        );
        assert_eq!(
            idp.current_refresh_token(),
            issued.refresh_token,
            "the new refresh token must be the live one"
        );
        assert_eq!(
            issued.id_token,
            jwt::id_token("user@example.com", "acc-1", "pro"),
            "the id token must keep the account, email and plan"
        );
        let exp = exp_of(&issued.access_token);
        let now = jwt::now_unix();
        assert!(
            (now + 3590..=now + 3600).contains(&exp),
            "the access token must expire in an hour, exp={exp} now={now}"
        );
        assert_eq!(idp.successes(), 1, "one rotation must count as one success");
        assert_eq!(idp.requests(), 1, "one request must be counted");
    }

    #[test]
    fn a_redeemed_refresh_token_is_refused_as_reused() {
        let idp = server();
        assert_eq!(
            post_refresh(&idp, "rt_initial").status,
            200,
            "the first redemption must succeed"
        );
        let reply = post_refresh(&idp, "rt_initial");
        assert_eq!(
            reply.status, 401,
            "a second redemption must be refused: {reply:?}"
        );
        assert_eq!(
            reply.error_code().as_deref(),
            Some("refresh_token_reused"),
            "wrong error: {reply:?}"
        );
        assert!(
            reply.json()["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("already been used")),
            "the reused error must carry the server's message: {reply:?}"
        );
        assert_eq!(
            idp.successes(),
            1,
            "a refused request must not count as a success"
        );
        let live = idp.current_refresh_token();
        assert_eq!(
            post_refresh(&idp, &live).status,
            200,
            "the token rotated to must still work"
        );
    }

    #[test]
    fn an_unknown_refresh_token_is_refused_as_invalidated() {
        let idp = server();
        let reply = post_refresh(&idp, "rt_never_issued");
        assert_eq!(
            reply.status, 401,
            "an unknown token must be refused: {reply:?}"
        );
        assert_eq!(
            reply.error_code().as_deref(),
            Some("refresh_token_invalidated"),
            "wrong error: {reply:?}"
        );
        assert_eq!(
            idp.current_refresh_token(),
            "rt_initial",
            "a refused request must not rotate"
        );
        assert!(idp.last_issued().is_none(), "nothing must have been issued");
    }

    #[test]
    fn every_post_is_counted_and_its_refresh_token_recorded_in_order() {
        let idp = server();
        assert!(
            !idp.wait_for_requests(1, Duration::from_millis(50)),
            "no request was sent, yet the wait succeeded"
        );
        post_refresh(&idp, "rt_initial");
        post_refresh(&idp, "rt_bogus");
        idp.set_behavior(Behavior::Status {
            status: 500,
            body: "{}".into(),
        });
        post_refresh(&idp, "rt_third");
        send(&idp, &raw_request("POST", TOKEN_PATH, "not json"));
        send(&idp, &raw_request("GET", TOKEN_PATH, ""));
        send(
            &idp,
            &raw_request("POST", "/elsewhere", &refresh_body("rt_elsewhere")),
        );
        assert_eq!(
            idp.requests(),
            4,
            "every POST to the token path, and only those, must be counted"
        );
        assert!(
            idp.wait_for_requests(4, Duration::ZERO),
            "wait_for_requests must see requests already counted"
        );
        assert_eq!(
            idp.presented_refresh_tokens(),
            vec!["rt_initial", "rt_bogus", "rt_third"],
            "the presented refresh tokens were not recorded in order"
        );
    }

    #[test]
    fn a_request_is_counted_before_its_delayed_answer_and_drop_cuts_the_delay_short() {
        let idp = server();
        idp.set_delay(Duration::from_secs(60));
        let stream = start_refresh(&idp, "rt_initial");
        assert!(
            idp.wait_for_requests(1, WAIT),
            "the delayed request was not counted once read"
        );
        assert_eq!(idp.successes(), 0, "the answer must wait for the delay");
        assert_eq!(
            idp.current_refresh_token(),
            "rt_initial",
            "nothing may rotate before the delay passes"
        );
        let started = Instant::now();
        drop(idp);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "drop waited out the delay: {:?}",
            started.elapsed()
        );
        let mut rest = Vec::new();
        let mut stream = stream;
        let outcome = stream.read_to_end(&mut rest);
        assert!(
            outcome.is_err() || rest.is_empty(),
            "a request cut short by drop must be closed unanswered, got {:?}",
            String::from_utf8_lossy(&rest)
        );
    }

    #[test]
    fn concurrent_redemptions_of_one_token_yield_one_success_and_one_reuse() {
        let idp = server();
        idp.set_delay(Duration::from_millis(200));
        let first = start_refresh(&idp, "rt_initial");
        let second = start_refresh(&idp, "rt_initial");
        let mut statuses = vec![read_reply(first).status, read_reply(second).status];
        statuses.sort_unstable();
        assert_eq!(
            statuses,
            vec![200, 401],
            "exactly one of two concurrent redemptions may succeed"
        );
        assert_eq!(idp.successes(), 1, "exactly one success must be counted");
    }

    #[test]
    fn a_late_winner_rotates_on_receipt_and_is_answered_after_the_losers_refusal() {
        let idp = server();
        let success_after = Duration::from_secs(3);
        idp.set_behavior(Behavior::late_winner(success_after));
        let mut winner = start_refresh(&idp, "rt_initial");
        assert!(
            idp.wait_for_requests(1, WAIT),
            "the winner's request was not counted once read"
        );
        let read_at = Instant::now();
        assert_ne!(
            idp.current_refresh_token(),
            "rt_initial",
            "a late winner must be rotated when its request is read, not when it is answered"
        );
        assert_eq!(
            idp.successes(),
            1,
            "the rotation on receipt counts as a success"
        );
        let loser = post_refresh(&idp, "rt_initial");
        assert_eq!(
            loser.error_code().as_deref(),
            Some("refresh_token_reused"),
            "the loser must be refused as reused: {loser:?}"
        );
        assert!(
            read_at.elapsed() < success_after,
            "the loser's refusal took {:?}, longer than the winner's delay",
            read_at.elapsed()
        );
        winner.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        let early = winner.read(&mut byte);
        assert!(
            matches!(&early, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
            "the winner was answered before its delay, right after the loser's refusal: {early:?}"
        );
        winner.set_nonblocking(false).unwrap();
        let reply = read_reply(winner);
        assert!(
            read_at.elapsed() >= success_after,
            "the winner was answered after {:?}, before its delay of {success_after:?}",
            read_at.elapsed()
        );
        assert_eq!(
            reply.status, 200,
            "the winner must get its tokens: {reply:?}"
        );
        assert_eq!(
            reply.json()["refresh_token"],
            idp.current_refresh_token().as_str(),
            "the winner must be answered the token that became live on receipt"
        );
        assert_eq!(
            (idp.requests(), idp.successes(), idp.reuse_refusals()),
            (2, 1, 1),
            "(requests, successes, reuse refusals) after one winner and one loser"
        );
    }

    #[test]
    fn a_status_behavior_answers_its_status_and_body_and_rotates_nothing() {
        let idp = server();
        for (status, body) in [
            (500, "{\"error\":\"server_error\"}"),
            (429, "slow down"),
            (401, "{\"error\":{\"code\":\"refresh_token_expired\"}}"),
        ] {
            idp.set_behavior(Behavior::Status {
                status,
                body: body.to_string(),
            });
            let reply = post_refresh(&idp, "rt_initial");
            assert_eq!(
                reply.status, status,
                "the configured status was not answered: {reply:?}"
            );
            assert_eq!(
                reply.body, body,
                "the configured body was not answered verbatim"
            );
        }
        assert_eq!(
            idp.current_refresh_token(),
            "rt_initial",
            "a Status answer must not rotate"
        );
        assert_eq!(idp.successes(), 0, "a Status answer is no success");
        assert_eq!(idp.requests(), 3, "Status answers must still be counted");
    }

    #[test]
    fn garbage_behavior_answers_200_with_a_body_that_is_not_json() {
        let idp = server();
        idp.set_behavior(Behavior::Garbage);
        let reply = post_refresh(&idp, "rt_initial");
        assert_eq!(reply.status, 200, "Garbage must answer 200: {reply:?}");
        assert!(
            serde_json::from_str::<Value>(&reply.body).is_err(),
            "Garbage must not be JSON: {:?}",
            reply.body
        );
        assert_eq!(
            idp.current_refresh_token(),
            "rt_initial",
            "Garbage must not rotate"
        );
        assert_eq!(idp.successes(), 0, "Garbage is no success");
    }

    #[test]
    fn omitting_the_refresh_token_rotates_the_access_token_but_keeps_the_refresh_token_live() {
        let idp = server();
        idp.set_behavior(Behavior::OmitRefreshToken);
        let first = post_refresh(&idp, "rt_initial");
        assert_eq!(
            first.status, 200,
            "OmitRefreshToken must answer 200: {first:?}"
        );
        let body = first.json();
        assert!(
            body.get("refresh_token").is_none(),
            "the answer must not carry refresh_token: {body}"
        );
        assert!(
            body["access_token"].is_string(),
            "the answer must carry a new access token: {body}"
        );
        assert_eq!(
            idp.current_refresh_token(),
            "rt_initial",
            "the presented token must stay live"
        );
        let issued = idp
            .last_issued()
            .expect("a success must record the issued tokens");
        assert_eq!(
            issued.refresh_token, "rt_initial",
            "Issued must name the still-live refresh token"
        );
        let second = post_refresh(&idp, "rt_initial");
        assert_eq!(
            second.status, 200,
            "the kept token must be redeemable again: {second:?}"
        );
        assert_ne!(
            second.json()["access_token"],
            body["access_token"],
            "each answer must carry a distinct access token"
        );
        assert_eq!(idp.successes(), 2, "both answers rotated the access token");
    }

    #[test]
    fn rotating_out_of_band_kills_the_live_token() {
        let idp = server();
        let issued = idp.rotate_out_of_band();
        assert_eq!(
            idp.current_refresh_token(),
            issued.refresh_token,
            "the out-of-band token must be live"
        );
        assert_eq!(
            idp.last_issued(),
            Some(issued.clone()),
            "out-of-band tokens are the last issued"
        );
        assert_eq!(
            (idp.requests(), idp.successes()),
            (0, 0),
            "an out-of-band rotation is no request"
        );
        let reply = post_refresh(&idp, "rt_initial");
        assert_eq!(
            reply.error_code().as_deref(),
            Some("refresh_token_reused"),
            "the old token must be dead: {reply:?}"
        );
        assert_eq!(
            post_refresh(&idp, &issued.refresh_token).status,
            200,
            "the out-of-band token must be redeemable"
        );
    }

    #[test]
    fn malformed_requests_are_refused_and_other_routes_are_not_found() {
        let idp = server();
        let bad_json = send(&idp, &raw_request("POST", TOKEN_PATH, "{not json"));
        assert_eq!(
            bad_json.status, 400,
            "bad JSON must be refused: {bad_json:?}"
        );
        assert_eq!(
            bad_json.json(),
            json!({"error": "invalid_request"}),
            "wrong error for bad JSON"
        );
        let wrong_grant =
            json!({"grant_type": "authorization_code", "refresh_token": "rt_initial"}).to_string();
        let reply = send(&idp, &raw_request("POST", TOKEN_PATH, &wrong_grant));
        assert_eq!(
            reply.status, 400,
            "a wrong grant_type must be refused: {reply:?}"
        );
        assert_eq!(
            reply.json(),
            json!({"error": "invalid_request"}),
            "wrong error for a wrong grant_type"
        );
        assert_eq!(
            send(&idp, &raw_request("GET", TOKEN_PATH, "")).status,
            404,
            "GET must be not found"
        );
        assert_eq!(
            send(&idp, &raw_request("POST", "/other", "{}")).status,
            404,
            "other paths must be not found"
        );
        assert_eq!(
            idp.current_refresh_token(),
            "rt_initial",
            "refused requests must not rotate"
        );
    }

    #[test]
    fn a_body_arriving_in_pieces_is_read_whole() {
        let idp = server();
        let raw = raw_request("POST", TOKEN_PATH, &refresh_body("rt_initial"));
        let (head, body) = raw.split_at(raw.find("\r\n\r\n").unwrap() + 4);
        let mut stream = connect(&idp);
        stream.write_all(head.as_bytes()).unwrap();
        stream.flush().unwrap();
        assert!(
            !idp.wait_for_requests(1, Duration::from_millis(50)),
            "a request without its body must not be counted"
        );
        stream.write_all(body.as_bytes()).unwrap();
        let reply = read_reply(stream);
        assert_eq!(
            reply.status, 200,
            "a body sent after the head must still be read: {reply:?}"
        );
    }

    #[test]
    fn a_hanging_request_gets_no_answer_and_drop_still_returns_promptly() {
        let idp = server();
        idp.set_behavior(Behavior::Hang);
        let mut stream = start_refresh(&idp, "rt_initial");
        assert!(
            idp.wait_for_requests(1, WAIT),
            "the hanging request was not read"
        );
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut byte = [0u8; 1];
        let err = stream
            .read(&mut byte)
            .map(|n| format!("read {n} bytes"))
            .expect_err("a hanging request must not be answered");
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "the read should have timed out, got {err}"
        );
        assert_eq!(
            idp.current_refresh_token(),
            "rt_initial",
            "Hang must not rotate"
        );
        let started = Instant::now();
        drop(idp);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "drop blocked on the hang: {:?}",
            started.elapsed()
        );
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut rest = Vec::new();
        let outcome = stream.read_to_end(&mut rest);
        assert!(
            outcome.is_err() || rest.is_empty(),
            "after drop the hanging connection must be closed unanswered, got {:?}",
            String::from_utf8_lossy(&rest)
        );
    }

    #[test]
    fn drop_returns_promptly_with_an_idle_connection_open() {
        let idp = server();
        let _idle = connect(&idp);
        // Make sure the idle connection was accepted by having a later one answered first.
        assert_eq!(
            post_refresh(&idp, "rt_initial").status,
            200,
            "the server must answer while a connection idles"
        );
        let started = Instant::now();
        drop(idp);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "drop blocked on an idle connection: {:?}",
            started.elapsed()
        );
    }
}
