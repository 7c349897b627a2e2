//! HTTP/1.1 for the test kit, on one library (hyper, already in the tree through reqwest): the
//! servers on 127.0.0.1 that stand in for a token endpoint, Codex's backend or an endpoint that
//! is not etcd ([`Server`]), and the blocking client that talks to etcd's gateway and the token
//! endpoint ([`Client`]).
//!
//! The tests that check bytes on the wire (a request head as the client under test sends it, an
//! answer that no HTTP library would write) keep their raw sockets.

mod client;
mod server;

pub use client::{Answer, Client, Post};
pub use server::{Request, Response, Server, ServerOptions};

#[cfg(test)]
mod tests {
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
        let server = Server::start(options(4), |request| {
            Some(Response::json(
                200,
                if request.body.is_none() {
                    "unread"
                } else {
                    "read"
                },
            ))
        });
        let authority = server.addr().to_string();
        let answer = Client::new()
            .post(&post(&authority, "0123456789"))
            .expect("the exchange with the local server failed");
        assert_eq!(answer.body, b"unread", "a body over the limit was read");
    }

    #[test]
    fn a_request_the_handler_leaves_unanswered_is_an_error_for_the_client() {
        let server = Server::start(options(1024), |_| None);
        let authority = server.addr().to_string();
        let result = Client::new().post(&post(&authority, "{}"));
        assert!(
            result.is_err(),
            "a connection closed unanswered gave an answer: {result:?}"
        );
    }

    #[test]
    fn an_answer_longer_than_the_client_reads_is_an_error() {
        let server = Server::start(options(1024), |_| {
            Some(Response::json(200, "x".repeat(2048)))
        });
        let authority = server.addr().to_string();
        let result = Client::new().post(&post(&authority, "{}"));
        assert!(
            result.is_err(),
            "an answer over max_answer was read: {result:?}"
        );
    }

    #[test]
    fn an_exchange_that_outlasts_the_timeout_times_out() {
        let server = Server::start(options(1024), |_| {
            std::thread::sleep(Duration::from_millis(500));
            Some(Response::json(200, "{}"))
        });
        let authority = server.addr().to_string();
        let mut slow = post(&authority, "{}");
        slow.timeout = Duration::from_millis(50);
        let error = Client::new()
            .post(&slow)
            .expect_err("an answer came within 50 ms from a server that waits 500 ms");
        assert_eq!(
            error.kind(),
            std::io::ErrorKind::TimedOut,
            "the timeout was reported as {error}"
        );
    }

    #[tokio::test]
    async fn the_client_also_works_inside_an_async_test() {
        let server = Server::start(options(1024), |_| Some(Response::json(200, "{}")));
        let authority = server.addr().to_string();
        let answer = Client::new()
            .post(&post(&authority, "{}"))
            .expect("the exchange inside a runtime failed");
        assert_eq!(answer.status, 200, "the answer inside a runtime is wrong");
    }
}
