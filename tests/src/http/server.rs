//! One HTTP/1.1 server on an ephemeral port of 127.0.0.1, served by hyper on a small tokio
//! runtime of its own; each request is decided by a blocking handler.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// One request, as a handler sees it.
#[derive(Debug)]
pub struct Request {
    /// The method, e.g. `POST` or `CONNECT`.
    pub method: String,
    /// The request target as sent: a path with its query, `host:port` (CONNECT) or an absolute
    /// URL (a request meant for another host, sent to a proxy).
    pub target: String,
    /// The path of the target, without its query.
    pub path: String,
    /// Whether the body came with `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// The `Authorization` header, as sent.
    pub authorization: Option<String>,
    /// The body, read whole; `None` when its declared `Content-Length` exceeds
    /// [`ServerOptions::max_body`] (then it was not read).
    pub body: Option<Vec<u8>>,
}

/// One answer to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The HTTP status code (an invalid one is written as 200).
    pub status: u16,
    /// The `Content-Type` header.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
}

impl Response {
    /// An `application/json` answer.
    pub fn json(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "application/json",
            body: body.into(),
        }
    }

    fn into_hyper(self) -> hyper::Response<Full<Bytes>> {
        let mut response = hyper::Response::new(Full::new(Bytes::from(self.body)));
        *response.status_mut() =
            hyper::StatusCode::from_u16(self.status).unwrap_or(hyper::StatusCode::OK);
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        response
    }
}

/// How a [`Server`] serves.
#[derive(Clone, Copy, Debug)]
pub struct ServerOptions {
    /// Names the server in panics and its runtime's threads.
    pub name: &'static str,
    /// `false`: one request per connection (`Connection: close`); `true`: HTTP/1.1 keep-alive.
    pub keep_alive: bool,
    /// The largest request body read; a longer declared one is not read, a longer chunked one
    /// closes the connection unanswered.
    pub max_body: usize,
}

/// What decides the answers: `None` closes the connection unanswered. It runs on a blocking
/// thread, so it may wait (bounded: dropping the server waits at most a second for it).
type Handler = dyn Fn(Request) -> Option<Response> + Send + Sync;

/// A running server. Dropping it shuts its runtime down, closing every connection; a handler
/// still running is given a second (none inside an async context, where waiting is not allowed).
pub struct Server {
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Server {
    /// Starts serving on an ephemeral port of 127.0.0.1.
    ///
    /// Panics, naming the server, when no port can be bound or the runtime cannot start.
    pub fn start(
        options: ServerOptions,
        handler: impl Fn(Request) -> Option<Response> + Send + Sync + 'static,
    ) -> Server {
        let name = options.name;
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
            .unwrap_or_else(|e| panic!("{name}: cannot bind 127.0.0.1:0: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{name}: bound listener has no address: {e}"));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("{name}: cannot make the listener non-blocking: {e}"));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(name)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{name}: cannot start its runtime: {e}"));
        runtime.spawn(accept(options, Arc::new(handler), listener));
        Server {
            addr,
            runtime: Some(runtime),
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Waiting for a runtime is not allowed inside another one (an async test).
        if let Some(runtime) = self.runtime.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                runtime.shutdown_background();
            } else {
                runtime.shutdown_timeout(Duration::from_secs(1));
            }
        }
    }
}

/// Accepts connections until the runtime shuts down, each served by hyper on a task of its own.
async fn accept(options: ServerOptions, handler: Arc<Handler>, listener: std::net::TcpListener) {
    let listener = tokio::net::TcpListener::from_std(listener)
        .unwrap_or_else(|e| panic!("{}: cannot register the listener: {e}", options.name));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // E.g. out of file descriptors: back off briefly instead of spinning.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let handler = Arc::clone(&handler);
        tokio::spawn(async move {
            let service =
                service_fn(move |request| handle(options.max_body, Arc::clone(&handler), request));
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(options.keep_alive)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The service's error: the connection is closed unanswered (hyper writes nothing then).
#[derive(Debug)]
struct Unanswered;

impl std::fmt::Display for Unanswered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("closed unanswered")
    }
}

impl std::error::Error for Unanswered {}

/// Reads the body of one request (at most `max_body`) and has the handler answer it on a
/// blocking thread.
async fn handle(
    max_body: usize,
    handler: Arc<Handler>,
    request: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Unanswered> {
    let header = |name| {
        request
            .headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_ascii_lowercase)
    };
    let chunked = header(TRANSFER_ENCODING).is_some_and(|v| v.contains("chunked"));
    let too_long = header(CONTENT_LENGTH)
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n > max_body);
    let authorization = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let method = request.method().as_str().to_owned();
    let target = request.uri().to_string();
    let path = request.uri().path().to_owned();
    let body = if too_long {
        None
    } else {
        let collected = Limited::new(request.into_body(), max_body)
            .collect()
            .await
            .map_err(|_| Unanswered)?;
        Some(collected.to_bytes().to_vec())
    };
    let request = Request {
        method,
        target,
        path,
        chunked,
        authorization,
        body,
    };
    tokio::task::spawn_blocking(move || handler(request))
        .await
        .ok()
        .flatten()
        .map(Response::into_hyper)
        .ok_or(Unanswered)
}
