//! A blocking HTTP/1.1 client for the kit's own requests (to etcd's JSON gateway, and codex-sim's
//! to the token endpoint): hyper on a current-thread runtime kept for the client's lifetime, one
//! connection per request, every answer bounded in time and size.

use std::io;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{CONNECTION, CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;

/// One `POST` with a JSON body.
#[derive(Clone, Copy, Debug)]
pub struct Post<'a> {
    /// `host:port` to connect to, also sent as `Host`.
    pub authority: &'a str,
    /// The path (with its query).
    pub path: &'a str,
    /// Headers beside `Host`, `Content-Type: application/json`, `Content-Length` and
    /// `Connection: close`.
    pub headers: &'a [(&'static str, &'a str)],
    /// The JSON body.
    pub body: &'a str,
    /// The longest the whole exchange (connect, send, read the answer) may take.
    pub timeout: Duration,
    /// The largest answer body read; a longer one is an error.
    pub max_answer: usize,
}

/// An answer: its status and its body (chunked or not, decoded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status code.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

/// The client. Its runtime runs one request at a time, on the calling thread (or, called inside
/// an async context, on a thread of its own, since a runtime cannot block inside another).
pub struct Client {
    /// Taken only by [`Client::drop`].
    runtime: Option<tokio::runtime::Runtime>,
}

impl Client {
    /// A client with its own current-thread runtime.
    ///
    /// Panics when the runtime cannot start.
    pub fn new() -> Client {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("the HTTP client cannot start its runtime: {e}"));
        Client {
            runtime: Some(runtime),
        }
    }

    /// Sends `post` and reads the answer, whatever its status.
    ///
    /// # Errors
    /// The connection fails ([`io::ErrorKind`] of the socket), the exchange takes longer than
    /// [`Post::timeout`] (`TimedOut`), the answer is not HTTP or longer than
    /// [`Post::max_answer`] (`Other`).
    pub fn post(&self, post: &Post<'_>) -> io::Result<Answer> {
        let runtime = self
            .runtime
            .as_ref()
            .expect("the runtime lives as long as the client");
        let run = || {
            runtime.block_on(async {
                tokio::time::timeout(post.timeout, exchange(post))
                    .await
                    .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
            })
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|scope| scope.spawn(run).join())
                .unwrap_or_else(|_| Err(io::Error::other("the HTTP client's thread panicked")))
        } else {
            run()
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Waiting for a runtime is not allowed inside another one (an async test).
        if let Some(runtime) = self.runtime.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                runtime.shutdown_background();
            }
        }
    }
}

impl Default for Client {
    fn default() -> Client {
        Client::new()
    }
}

async fn exchange(post: &Post<'_>) -> io::Result<Answer> {
    let stream = tokio::net::TcpStream::connect(post.authority).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(io::Error::other)?;
    // Ends with the connection (`Connection: close`), or with the runtime's next request.
    let connection = tokio::spawn(connection);
    let mut request = hyper::Request::post(post.path)
        .header(HOST, post.authority)
        .header(CONTENT_TYPE, "application/json");
    for (name, value) in post.headers {
        request = request.header(*name, *value);
    }
    let request = request
        .header(CONNECTION, "close")
        .body(Full::new(Bytes::copy_from_slice(post.body.as_bytes())))
        .map_err(io::Error::other)?;
    let answer = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(io::Error::other)?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), post.max_answer)
            .collect()
            .await
            .map_err(io::Error::other)?
            .to_bytes()
            .to_vec();
        Ok(Answer { status, body })
    }
    .await;
    connection.abort();
    answer
}
