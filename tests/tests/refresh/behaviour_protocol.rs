//! What a successful guarded refresh sends and stores, against the real fake token endpoint on
//! 127.0.0.1: the request body, the refresh token read from auth.json under the lock, the
//! merge of the answer into the file (missing fields kept, unknown keys kept in order), the
//! persistence of an answer whose caller went away, and one request for many concurrent callers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use codex_refresh::{
    AuthManager, RefreshConfig, RefreshError, RefreshOutcome, WhileRefreshing, CLIENT_ID,
};
use codex_store::{Expect, Store, StoreOptions};
use codex_store_tests::fake_idp::Behavior;
use codex_store_tests::fixtures::{
    cached_bearer, concurrent_auth_calls, config, manager, read, read_json, read_text, write_json,
    Identity, Setup, EVENT_TIMEOUT,
};
use codex_store_tests::jwt;
use serde_json::{json, Value};

const ACCOUNT: &str = "acc-protocol";
const EMAIL: &str = "protocol@example.com";
const PLAN: &str = "pro";
const INITIAL_RT: &str = "rt_initial_protocol";
const IDENTITY: Identity = Identity::new(ACCOUNT, EMAIL, PLAN, INITIAL_RT);

fn keys(value: &Value) -> Vec<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not a JSON object: {value}"))
        .keys()
        .cloned()
        .collect()
}

fn stored_refresh_token(store: &Store) -> String {
    let doc = read_json(store.path());
    doc["tokens"]["refresh_token"]
        .as_str()
        .unwrap_or_else(|| panic!("auth.json has no tokens.refresh_token: {doc}"))
        .to_owned()
}

/// A recorded request: its head (request line and headers) and its body.
type Recorded = Result<(String, Vec<u8>), String>;

/// A one-shot HTTP endpoint on 127.0.0.1 that records the first request it receives (head and
/// body) and answers it 503.
struct Recorder {
    addr: SocketAddr,
    thread: Option<JoinHandle<Recorded>>,
}

impl Recorder {
    fn start() -> Recorder {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("cannot bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let thread = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
            stream
                .set_read_timeout(Some(EVENT_TIMEOUT))
                .map_err(|e| format!("set_read_timeout: {e}"))?;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let head_end = loop {
                if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break pos;
                }
                let n = stream.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    return Err(format!(
                        "the connection closed before a whole request head: {:?}",
                        String::from_utf8_lossy(&buf)
                    ));
                }
                buf.extend_from_slice(&chunk[..n]);
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.trim()
                        .eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .ok_or_else(|| format!("the request has no Content-Length: {head}"))?;
            let mut body = buf.split_off(head_end + 4);
            while body.len() < length {
                let n = stream
                    .read(&mut chunk)
                    .map_err(|e| format!("read body: {e}"))?;
                if n == 0 {
                    return Err("the connection closed before the whole body".to_owned());
                }
                body.extend_from_slice(&chunk[..n]);
            }
            let answer = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
                          Content-Length: 2\r\nConnection: close\r\n\r\n{}";
            stream
                .write_all(answer.as_bytes())
                .map_err(|e| format!("write: {e}"))?;
            Ok((head, body))
        });
        Recorder {
            addr,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/oauth/token", self.addr)
    }

    /// The recorded request. Call it after the client has finished: if no request came, a
    /// connection of our own wakes the accept and the recorder reports an empty request.
    fn request(mut self) -> Recorded {
        let _wake = TcpStream::connect(self.addr);
        let thread = self
            .thread
            .take()
            .expect("the recorder thread is joined once");
        thread
            .join()
            .unwrap_or_else(|_| Err("the recorder thread panicked".to_owned()))
    }
}

/// Starts `manager.refresh()` in a task and waits until its request reached the endpoint (which
/// holds it as long as its delay); returns the task.
fn refresh_until_the_request_arrives(
    setup: &Setup,
    manager: &AuthManager,
) -> tokio::task::JoinHandle<Result<RefreshOutcome, RefreshError>> {
    let caller = {
        let manager = manager.clone();
        tokio::spawn(async move { manager.refresh().await })
    };
    let sent = tokio::task::block_in_place(|| setup.fake.wait_for_requests(1, EVENT_TIMEOUT));
    assert!(sent, "the refresh request never reached the endpoint");
    caller
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_is_a_json_post_with_client_id_grant_type_and_the_stored_refresh_token() {
    let setup = Setup::new(IDENTITY, 3600);
    let recorder = Recorder::start();
    let manager = manager(&setup.store, config(recorder.url()));
    let error = manager
        .refresh()
        .await
        .expect_err("the recorder answers 503, yet the refresh succeeded");
    assert!(
        error.is_transient(),
        "a 503 from the recorder was not transient: {error:?}"
    );
    let (head, body) = recorder
        .request()
        .expect("the recorder did not receive a refresh request");
    assert!(
        head.starts_with("POST /oauth/token HTTP/1.1\r\n"),
        "the request line is not a POST to the token path: {head}"
    );
    let content_type = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_ascii_lowercase())
        })
        .unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "the body is not sent as JSON (Content-Type {content_type:?}): {head}"
    );
    let body: Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "the request body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&body)
        )
    });
    assert_eq!(
        body,
        json!({
            "client_id": CLIENT_ID,
            "grant_type": "refresh_token",
            "refresh_token": INITIAL_RT,
        }),
        "the request body has the wrong fields"
    );
    assert_eq!(
        CLIENT_ID, "app_EMoamEEZ73f0CkXaXp7hrann",
        "the OAuth client id is not Codex's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_presents_the_refresh_token_read_from_auth_json_under_the_lock_not_the_one_seen_at_startup(
) {
    let setup = Setup::new(IDENTITY, 3600);
    let manager = manager(&setup.store, config(setup.fake.url()));
    // Another process refreshes after this one loaded: the token it started with is dead, and
    // the tokens the other process stored are already due again.
    let other = setup.fake.rotate_out_of_band();
    let due_access = jwt::access_token(jwt::now_unix() + 120, "at_other_process");
    IDENTITY.write_tokens(&setup.store, &due_access, &other.refresh_token);

    let outcome = manager
        .refresh()
        .await
        .expect("the refresh with the token stored by another process failed");
    assert_eq!(
        outcome,
        RefreshOutcome::Refreshed,
        "due tokens on disk were not refreshed"
    );
    assert_eq!(
        setup.fake.presented_refresh_tokens(),
        vec![other.refresh_token.clone()],
        "the request did not present the refresh token on disk ({}), but another one",
        other.refresh_token
    );
    assert_eq!(
        stored_refresh_token(&setup.store),
        setup.fake.current_refresh_token(),
        "auth.json does not hold the rotated refresh token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_without_a_refresh_token_keeps_the_old_one_and_stores_the_new_access_token() {
    let setup = Setup::new(IDENTITY, 3600);
    // Make last_refresh a day old, so that its update is visible.
    let mut doc = IDENTITY.document(
        &setup.access,
        INITIAL_RT,
        &jwt::id_token(EMAIL, ACCOUNT, PLAN),
    );
    let day_ago = SystemTime::now() - Duration::from_secs(24 * 3600);
    doc.last_refresh = Some(codex_store::Timestamp::from_system_time(day_ago));
    setup
        .store
        .compare_and_swap(Expect::Any, Some(&doc))
        .expect("writing auth.json failed");
    setup.fake.set_behavior(Behavior::OmitRefreshToken);
    let manager = manager(&setup.store, config(setup.fake.url()));
    let started = SystemTime::now();

    let outcome = manager.refresh().await.expect("the refresh failed");
    assert_eq!(outcome, RefreshOutcome::Refreshed, "nothing was refreshed");
    let issued = setup
        .fake
        .last_issued()
        .expect("the endpoint issued no tokens");
    let snap = setup.store.load().expect("auth.json cannot be loaded");
    let stored = snap.auth().expect("auth.json is gone after the refresh");
    let tokens = stored.tokens.as_ref().expect("the tokens are gone");
    assert_eq!(
        tokens.refresh_token.expose(),
        INITIAL_RT,
        "the refresh token was replaced although the answer had none"
    );
    assert_eq!(
        tokens.access_token.expose(),
        issued.access_token,
        "the new access token was not stored"
    );
    assert_eq!(
        tokens.id_token.expose(),
        issued.id_token,
        "the new id token was not stored"
    );
    let last_refresh = stored
        .last_refresh
        .as_ref()
        .expect("last_refresh is missing after a refresh")
        .time();
    assert!(
        last_refresh + Duration::from_secs(1) >= started,
        "last_refresh ({}) was not updated to now",
        stored.last_refresh.as_ref().map_or("", |t| t.as_str())
    );
    let cached = manager.cached().expect("the manager has no credentials");
    assert_eq!(
        cached.bearer().expose(),
        issued.access_token,
        "the manager did not cache the new access token"
    );
    assert_eq!(
        cached.generation(),
        snap.generation(),
        "the cached credentials do not name the generation that was written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_top_level_and_tokens_keys_survive_a_refresh_intact_and_in_order() {
    let setup = Setup::new(IDENTITY, 3600);
    let id_token = jwt::id_token(EMAIL, ACCOUNT, PLAN);
    let original = json!({
        "x_before": {"nested": [1, 2, 3], "flag": true},
        "auth_mode": "chatgpt",
        "OPENAI_API_KEY": null,
        "tokens": {
            "x_token_first": "kept",
            "id_token": id_token,
            "access_token": setup.access,
            "x_token_middle": 42,
            "refresh_token": INITIAL_RT,
            "account_id": ACCOUNT,
            "x_token_last": {"deep": null},
        },
        "last_refresh": "2025-01-02T03:04:05.123456Z",
        "agent_identity": {"name": "future"},
        "zz_after": "tail",
    });
    let text = serde_json::to_string_pretty(&original).expect("JSON serializes");
    write_json(&setup.store, &text);
    let manager = manager(&setup.store, config(setup.fake.url()));

    manager.refresh().await.expect("the refresh failed");
    let after = read_json(setup.store.path());
    assert_eq!(
        keys(&after),
        keys(&original),
        "the top-level keys are not all there in their order: {after}"
    );
    assert_eq!(
        keys(&after["tokens"]),
        keys(&original["tokens"]),
        "the tokens keys are not all there in their order: {after}"
    );
    for key in ["x_before", "agent_identity", "zz_after", "auth_mode"] {
        assert_eq!(
            after[key], original[key],
            "the top-level key {key} changed in a refresh"
        );
    }
    assert!(
        after["OPENAI_API_KEY"].is_null(),
        "OPENAI_API_KEY is no longer null: {after}"
    );
    for key in [
        "x_token_first",
        "x_token_middle",
        "x_token_last",
        "account_id",
    ] {
        assert_eq!(
            after["tokens"][key], original["tokens"][key],
            "tokens.{key} changed in a refresh"
        );
    }
    assert_eq!(
        after["tokens"]["refresh_token"],
        Value::String(setup.fake.current_refresh_token()),
        "the rotated refresh token was not stored"
    );
    assert_ne!(
        after["last_refresh"], original["last_refresh"],
        "last_refresh was not updated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_whose_caller_was_cancelled_after_the_request_was_sent_still_persists_the_rotated_token(
) {
    let setup = Setup::new(IDENTITY, 3600);
    // Long enough that the caller is surely aborted before the answer is written.
    setup.fake.set_delay(Duration::from_millis(500));
    let manager = manager(&setup.store, config(setup.fake.url()));

    let caller = refresh_until_the_request_arrives(&setup, &manager);
    caller.abort();
    let joined = caller.await;
    assert!(
        matches!(&joined, Err(e) if e.is_cancelled()),
        "the caller was not cancelled while its request was in flight: {joined:?}"
    );

    // The refresh holds the refresh lock from before the request until the answer is stored:
    // taking it here waits exactly for that, whatever happened to the caller.
    let observer = Store::with_options(
        setup.home.path(),
        StoreOptions {
            lock_timeout: EVENT_TIMEOUT,
            ..StoreOptions::default()
        },
    )
    .expect("cannot open a second handle on the store");
    let snap = tokio::task::block_in_place(|| observer.begin_rotation())
        .expect("the in-flight refresh never released the refresh lock")
        .snapshot()
        .clone();
    let stored = snap
        .auth()
        .and_then(|doc| doc.tokens.as_ref())
        .map(|tokens| tokens.refresh_token.expose().to_owned())
        .expect("auth.json holds no tokens after the cancelled refresh");
    assert_eq!(
        setup.fake.successes(),
        1,
        "the endpoint did not answer the cancelled caller's request with new tokens"
    );
    assert_ne!(
        stored, INITIAL_RT,
        "the answer to the cancelled caller's request was lost: auth.json still holds the \
         redeemed (now dead) refresh token"
    );
    assert_eq!(
        stored,
        setup.fake.current_refresh_token(),
        "auth.json does not hold the live refresh token after the cancelled refresh"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_concurrent_auth_calls_on_one_manager_share_a_single_request_and_the_same_bearer() {
    let setup = Setup::new(IDENTITY, 120);
    setup.fake.set_delay(Duration::from_millis(100));
    // Callers that wait for the refresh under way (the default keeps a still-valid token
    // instead: the next test).
    let waiting = RefreshConfig {
        while_refreshing: WhileRefreshing::Wait,
        ..config(setup.fake.url())
    };
    let manager = manager(&setup.store, waiting);

    let callers = concurrent_auth_calls(&manager, 8);
    let mut bearers = Vec::new();
    for caller in callers {
        let bearer = caller
            .await
            .expect("an auth() task panicked")
            .unwrap_or_else(|e| panic!("a concurrent auth() failed: {e}"));
        bearers.push(bearer);
    }

    setup.fake.expect_requests(
        1,
        "eight concurrent auth() calls on one manager sent more than one request",
    );
    let issued = setup
        .fake
        .last_issued()
        .expect("the endpoint issued no tokens");
    for (i, bearer) in bearers.iter().enumerate() {
        assert!(
            *bearer == issued.access_token,
            "caller {i} did not get the freshly issued access token"
        );
    }
    assert_ne!(
        issued.access_token, setup.access,
        "the fake issued the old token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callers_with_a_due_but_valid_token_do_not_wait_for_the_refresh_under_way() {
    let setup = Setup::new(IDENTITY, 120);
    // Slow enough that a caller waiting for it cannot go unnoticed.
    setup.fake.set_delay(Duration::from_secs(3));
    let manager = manager(&setup.store, config(setup.fake.url()));

    let callers = concurrent_auth_calls(&manager, 8);
    // A caller that waited would hold the new token: the old one proves it did not wait.
    let mut returned_early = 0;
    for caller in callers {
        let bearer = caller
            .await
            .expect("an auth() task panicked")
            .unwrap_or_else(|e| panic!("a concurrent auth() failed: {e}"));
        assert!(
            bearer == setup.access
                || Some(&bearer) == setup.fake.last_issued().map(|i| i.access_token).as_ref(),
            "a caller got a bearer that is neither the still-valid one nor the new one"
        );
        if bearer == setup.access {
            returned_early += 1;
        }
    }
    assert_eq!(
        setup.fake.requests(),
        1,
        "the callers that kept their valid token sent requests of their own"
    );
    assert_eq!(
        returned_early, 7,
        "all callers but the one refreshing should have kept the still-valid token"
    );
    let after = manager
        .auth()
        .await
        .expect("auth() after the refresh failed");
    assert_eq!(
        after.bearer().expose(),
        setup
            .fake
            .last_issued()
            .expect("the endpoint issued no tokens")
            .access_token,
        "after the refresh, auth() does not hand out the new token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_answer_adopts_the_newer_tokens_that_a_lock_ignoring_writer_stored_meanwhile() {
    let setup = Setup::new(IDENTITY, 3600);
    // An old installation (no lock) redeems the stored token...
    let other = setup.fake.rotate_out_of_band();
    setup.fake.set_delay(Duration::from_secs(1));
    let manager = manager(&setup.store, config(setup.fake.url()));
    let caller = refresh_until_the_request_arrives(&setup, &manager);
    // ...and writes its tokens in place while our request (with the dead token) is in flight.
    let written = jwt::auth_json(
        &other.access_token,
        &other.refresh_token,
        &other.id_token,
        ACCOUNT,
    );
    std::fs::write(setup.store.path(), written.as_bytes()).expect("cannot write auth.json");

    let outcome = caller
        .await
        .expect("the refresh task panicked")
        .expect("the refresh failed although newer tokens of the same account were on disk");
    assert_eq!(
        outcome,
        RefreshOutcome::AdoptedFromDisk,
        "the tokens written by the other installation were not adopted"
    );
    assert_eq!(
        cached_bearer(&manager),
        other.access_token,
        "the manager does not use the adopted access token"
    );
    assert_eq!(
        read_text(setup.store.path()),
        written,
        "auth.json was changed after the adoption"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_concurrent_auth_calls_share_one_failed_attempt_and_all_keep_the_still_valid_cached_token(
) {
    let setup = Setup::new(IDENTITY, 120);
    setup.fake.set_behavior(Behavior::status(500, "{}"));
    setup.fake.set_delay(Duration::from_millis(100));
    let manager = manager(&setup.store, config(setup.fake.url()));

    let callers = concurrent_auth_calls(&manager, 8);
    for (i, caller) in callers.into_iter().enumerate() {
        let bearer = caller
            .await
            .expect("an auth() task panicked")
            .unwrap_or_else(|e| {
                panic!("caller {i} got the transient failure instead of the valid token: {e}")
            });
        assert!(
            bearer == setup.access,
            "caller {i} did not get the cached access token"
        );
    }
    assert_eq!(
        setup.fake.requests(),
        1,
        "eight concurrent auth() calls against a failing endpoint each tried the refresh in \
         turn (the lock held for each attempt) instead of sharing the one failed attempt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_cached_token_heals_by_adopting_what_another_process_stored_without_a_request() {
    let setup = Setup::new(IDENTITY, 120);
    let manager = manager(&setup.store, config(setup.fake.url()));
    // Another process refreshed and stored fresh tokens after this one loaded.
    let other = setup.fake.rotate_out_of_band();
    let written = jwt::auth_json(
        &other.access_token,
        &other.refresh_token,
        &other.id_token,
        ACCOUNT,
    );
    write_json(&setup.store, &written);
    let on_disk = read(setup.store.path());

    let auth = manager
        .auth()
        .await
        .expect("auth() with a stale cache failed");
    assert_eq!(
        auth.bearer().expose(),
        other.access_token,
        "auth() did not adopt the tokens the other process stored"
    );
    setup.fake.expect_requests(
        0,
        "auth() redeemed a token although fresh ones were on disk",
    );
    assert!(
        read(setup.store.path()) == on_disk,
        "adopting the other process's tokens rewrote auth.json"
    );
}

/// An auth.json like older installations write it: `tokens.account_id` may be null, the account
/// is then only in the id token.
fn legacy_auth_json(access: &str, refresh: &str, account: &str, account_id: Value) -> String {
    let doc = json!({
        "OPENAI_API_KEY": null,
        "tokens": {
            "id_token": jwt::id_token(EMAIL, account, PLAN),
            "access_token": access,
            "refresh_token": refresh,
            "account_id": account_id,
        },
        "last_refresh": "2025-01-02T03:04:05.123456Z",
    });
    serde_json::to_string_pretty(&doc).expect("JSON serializes")
}

/// Starts a forced refresh, and while its request is held by the endpoint, lets an installation
/// that ignores the lock sign in another account by writing `other` in place. Returns the
/// refresh's result.
async fn refresh_while_another_account_signs_in_without_the_lock(
    setup: &Setup,
    other: &str,
) -> Result<RefreshOutcome, RefreshError> {
    setup.fake.set_delay(Duration::from_secs(1));
    let manager = manager(&setup.store, config(setup.fake.url()));
    let caller = refresh_until_the_request_arrives(setup, &manager);
    std::fs::write(setup.store.path(), other.as_bytes()).expect("cannot write auth.json");
    caller.await.expect("the refresh task panicked")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_account_signed_in_by_a_lock_ignoring_writer_during_the_request_keeps_its_credentials(
) {
    let setup = Setup::new(IDENTITY, 3600);
    let other = jwt::auth_json(
        &jwt::access_token(jwt::now_unix() + 3600, "at_b"),
        "rt_account_b",
        &jwt::id_token("b@example.com", "acc-b", PLAN),
        "acc-b",
    );
    let result = refresh_while_another_account_signs_in_without_the_lock(&setup, &other).await;
    assert!(
        matches!(&result, Err(RefreshError::AccountChanged { .. })),
        "the refresh did not report the account change: {result:?}"
    );
    assert_eq!(
        read_text(setup.store.path()),
        other,
        "the other account's credentials were overwritten with this account's tokens"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_account_signed_in_during_the_request_keeps_its_credentials_even_when_account_id_is_null(
) {
    let setup = Setup::new(IDENTITY, 3600);
    // This process's credentials, as an older installation wrote them (account_id null).
    let mine = legacy_auth_json(&setup.access, INITIAL_RT, ACCOUNT, Value::Null);
    write_json(&setup.store, &mine);
    // Account B signs in with an older installation: account_id null too.
    let other = legacy_auth_json(
        &jwt::access_token(jwt::now_unix() + 3600, "at_b"),
        "rt_account_b",
        "acc-b",
        Value::Null,
    );
    let result = refresh_while_another_account_signs_in_without_the_lock(&setup, &other).await;
    assert_eq!(
        read_text(setup.store.path()),
        other,
        "account acc-b's credentials (account only in the id token) were overwritten with \
         {ACCOUNT}'s refreshed tokens; the refresh returned {result:?}"
    );
    assert!(
        matches!(&result, Err(RefreshError::AccountChanged { .. })),
        "the refresh did not report the account change: {result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_but_valid_token_is_kept_at_once_while_another_process_holds_the_refresh_lock() {
    let setup = Setup::new(IDENTITY, 120);
    let manager = manager(&setup.store, config(setup.fake.url()));
    // Another process's refresh: the refresh lock taken through a handle of its own.
    let other = Store::open(setup.home.path()).expect("cannot open a second handle");
    let held = other
        .try_begin_rotation()
        .expect("cannot take the refresh lock")
        .expect("the refresh lock was not free");
    let auth = manager
        .auth()
        .await
        .expect("auth() failed while another process refreshes");
    assert_eq!(
        auth.bearer().expose(),
        setup.access,
        "the still-valid token was not kept while another process refreshes"
    );
    setup.fake.expect_requests(
        0,
        "a caller with a valid token sent a request while another process refreshes",
    );
    drop(held);
}
