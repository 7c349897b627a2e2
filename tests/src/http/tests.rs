//! The kit's server and client against each other.

use super::*;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn post<'a>(authority: &'a str, body: &'a str) -> Post<'a> {
    Post {
        authority,
        path: "/echo?x=1",
        headers: &[("user-agent", "kit-test")],
        body,
        timeout: Duration::from_secs(10),
        max_answer: 1024,
    }
}

fn options(max_body: usize) -> ServerOptions {
    ServerOptions {
        name: "http-test",
        keep_alive: false,
        max_body,
    }
}

/// Posts `body` with `timeout` to a server of `max_body` answering with `handler`.
fn exchange(
    max_body: usize,
    handler: impl Fn(Request) -> Option<Response> + Send + Sync + 'static,
    body: &str,
    timeout: Duration,
) -> std::io::Result<Answer> {
    let server = Server::start(options(max_body), handler);
    let authority = server.addr().to_string();
    Client::new().post(&Post {
        timeout,
        ..post(&authority, body)
    })
}

#[test]
fn the_client_posts_a_body_and_reads_the_answer_whatever_its_status() {
    let seen = Arc::new(Mutex::new(None));
    let record = Arc::clone(&seen);
    let server = Server::start(options(1024), move |request| {
        *record.lock().expect("the record lock") = Some(request);
        Some(Response::json(418, r#"{"teapot":true}"#))
    });
    let authority = server.addr().to_string();
    let answer = Client::new()
        .post(&post(&authority, r#"{"a":1}"#))
        .expect("the exchange with the local server failed");
    assert_eq!(
        answer,
        Answer {
            status: 418,
            body: br#"{"teapot":true}"#.to_vec()
        },
        "the answer was not read as the server wrote it"
    );
    let request = seen
        .lock()
        .expect("the record lock")
        .take()
        .expect("the server saw no request");
    assert_eq!(
        (
            request.method.as_str(),
            request.target.as_str(),
            request.path.as_str()
        ),
        ("POST", "/echo?x=1", "/echo"),
        "the request line was not seen as sent: {request:?}"
    );
    assert_eq!(
        request.body.as_deref(),
        Some(&br#"{"a":1}"#[..]),
        "the body was not read whole: {request:?}"
    );
}

#[test]
fn a_body_declared_longer_than_the_limit_reaches_the_handler_unread() {
    let unread = |request: Request| {
        let what = if request.body.is_none() {
            "unread"
        } else {
            "read"
        };
        Some(Response::json(200, what))
    };
    let answer = exchange(4, unread, "0123456789", Duration::from_secs(10))
        .expect("the exchange with the local server failed");
    assert_eq!(answer.body, b"unread", "a body over the limit was read");
}

#[test]
fn a_request_left_unanswered_or_an_answer_too_long_is_an_error_for_the_client() {
    let unanswered = exchange(1024, |_| None, "{}", Duration::from_secs(10));
    assert!(
        unanswered.is_err(),
        "a connection closed unanswered gave an answer: {unanswered:?}"
    );
    let long = |_| Some(Response::json(200, "x".repeat(2048)));
    let too_long = exchange(1024, long, "{}", Duration::from_secs(10));
    assert!(
        too_long.is_err(),
        "an answer over max_answer was read: {too_long:?}"
    );
}

#[test]
fn an_exchange_that_outlasts_the_timeout_times_out() {
    let slow = |_| {
        std::thread::sleep(Duration::from_millis(500));
        Some(Response::json(200, "{}"))
    };
    let error = exchange(1024, slow, "{}", Duration::from_millis(50))
        .expect_err("an answer came within 50 ms from a server that waits 500 ms");
    assert_eq!(
        error.kind(),
        std::io::ErrorKind::TimedOut,
        "the timeout was reported as {error}"
    );
}

#[tokio::test]
async fn the_client_also_works_inside_an_async_test() {
    let ok = |_| Some(Response::json(200, "{}"));
    let answer = exchange(1024, ok, "{}", Duration::from_secs(10))
        .expect("the exchange inside a runtime failed");
    assert_eq!(answer.status, 200, "the answer inside a runtime is wrong");
}
