//! Reading an HTTP answer's body within a size limit, for the token client and the etcd client:
//! chunk by chunk as it streams in, refusing an answer (or a line of a stream) that grows past
//! the limit instead of buffering it, and telling a request whose time ran out from a broken one.
//!
//! # Security
//! The peer is untrusted: a body is never read whole before it is measured. A `Content-Length`
//! over the limit is refused before the first chunk; a body without one is cut off at the first
//! chunk that would take it past the limit.

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// The answer (or one line of a stream) is larger than the limit.
    #[error("an answer over {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The request's time (reqwest's timeout, which covers the body) ran out while reading.
    #[error("the answer took too long: {source}")]
    TimedOut {
        /// reqwest's error.
        #[source]
        source: reqwest::Error,
    },
    /// The connection broke while reading.
    #[error("the answer broke off: {source}")]
    Broken {
        /// reqwest's error.
        #[source]
        source: reqwest::Error,
    },
}

impl BodyError {
    fn from_reqwest(source: reqwest::Error) -> BodyError {
        if source.is_timeout() {
            BodyError::TimedOut { source }
        } else {
            BodyError::Broken { source }
        }
    }
}

/// The next piece of a line-delimited stream.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Piece {
    /// One line, with its newline.
    Line(Vec<u8>),
    /// The stream ended; what came after the last newline (perhaps nothing).
    End(Vec<u8>),
}

/// An answer's body, read within `limit` bytes.
pub(crate) struct BoundedBody {
    response: reqwest::Response,
    limit: usize,
    buffer: Vec<u8>,
}

impl BoundedBody {
    /// A reader of `response`'s body that holds at most `limit` bytes at a time.
    pub(crate) fn new(response: reqwest::Response, limit: usize) -> BoundedBody {
        BoundedBody {
            response,
            limit,
            buffer: Vec::new(),
        }
    }

    /// The whole body.
    ///
    /// # Errors
    /// [`BodyError::TooLarge`] when it announces or brings more than the limit;
    /// [`BodyError::TimedOut`] or [`BodyError::Broken`] when reading fails.
    pub(crate) async fn read_all(mut self) -> Result<Vec<u8>, BodyError> {
        if self
            .response
            .content_length()
            .is_some_and(|n| n > self.limit as u64)
        {
            return Err(BodyError::TooLarge { limit: self.limit });
        }
        while self.fill().await? {}
        Ok(self.buffer)
    }

    /// The next line of a stream that sends one message per line (etcd's watch).
    ///
    /// # Errors
    /// [`BodyError::TooLarge`] when a line grows past the limit; [`BodyError::TimedOut`] or
    /// [`BodyError::Broken`] when reading fails.
    pub(crate) async fn next_line(&mut self) -> Result<Piece, BodyError> {
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                return Ok(Piece::Line(self.buffer.drain(..=end).collect()));
            }
            if !self.fill().await? {
                return Ok(Piece::End(std::mem::take(&mut self.buffer)));
            }
        }
    }

    /// Appends the next chunk to the buffer; `false` at the end of the body.
    async fn fill(&mut self) -> Result<bool, BodyError> {
        let Some(chunk) = self
            .response
            .chunk()
            .await
            .map_err(BodyError::from_reqwest)?
        else {
            return Ok(false);
        };
        if self.buffer.len() + chunk.len() > self.limit {
            return Err(BodyError::TooLarge { limit: self.limit });
        }
        self.buffer.extend_from_slice(&chunk);
        Ok(true)
    }
}

/// Reads `response`'s whole body, refusing more than `limit` bytes.
///
/// # Errors
/// As [`BoundedBody::read_all`].
pub(crate) async fn read_bounded(
    response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, BodyError> {
    BoundedBody::new(response, limit).read_all().await
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::time::Duration;

    use super::*;

    const CHUNKED: &[u8] =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";

    /// A one-shot HTTP server on loopback: it writes `parts` in turn, `pause` before each, then
    /// holds the connection for `linger` and closes it. Its URL.
    fn serve(parts: Vec<Vec<u8>>, pause: Duration, linger: Duration) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let url = format!("http://{}/", listener.local_addr().expect("its address"));
        std::thread::spawn(move || {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            for part in parts {
                std::thread::sleep(pause);
                if stream.write_all(&part).is_err() {
                    return;
                }
            }
            std::thread::sleep(linger);
        });
        url
    }

    fn chunk(data: &[u8]) -> Vec<u8> {
        let mut out = format!("{:x}\r\n", data.len()).into_bytes();
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
        out
    }

    fn chunked(chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut parts = vec![CHUNKED.to_vec()];
        parts.extend(chunks.iter().map(|c| chunk(c)));
        parts.push(b"0\r\n\r\n".to_vec());
        parts
    }

    fn run<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(future)
    }

    async fn get(url: &str, timeout: Duration) -> reqwest::Response {
        reqwest::Client::builder()
            .no_proxy()
            .timeout(timeout)
            .build()
            .expect("a client")
            .get(url)
            .send()
            .await
            .expect("the test server answers")
    }

    const NO_PAUSE: Duration = Duration::ZERO;
    const LONG: Duration = Duration::from_secs(10);

    #[test]
    fn a_body_within_the_limit_is_read_whole_and_one_byte_past_it_is_refused() {
        let body = run(async {
            let url = serve(chunked(&[b"hello", b"world"]), NO_PAUSE, NO_PAUSE);
            read_bounded(get(&url, LONG).await, 10).await
        });
        assert_eq!(
            body.expect("ten bytes within a limit of ten"),
            b"helloworld",
            "the body was not read whole"
        );
        let refused = run(async {
            let url = serve(chunked(&[b"hello", b"world"]), NO_PAUSE, NO_PAUSE);
            read_bounded(get(&url, LONG).await, 9).await
        });
        assert!(
            matches!(refused, Err(BodyError::TooLarge { limit: 9 })),
            "ten bytes passed a limit of nine: {refused:?}"
        );
    }

    #[test]
    fn an_announced_length_over_the_limit_is_refused_before_any_byte_is_awaited() {
        // The server announces 100 bytes and sends none: reading would wait for them.
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n".to_vec();
        let refused = run(async {
            let url = serve(vec![head], NO_PAUSE, LONG);
            read_bounded(get(&url, LONG).await, 99).await
        });
        assert!(
            matches!(refused, Err(BodyError::TooLarge { limit: 99 })),
            "an announced length over the limit was not refused at once: {refused:?}"
        );
    }

    #[test]
    fn a_stream_is_read_line_by_line_and_its_unterminated_rest_comes_at_the_end() {
        let pieces = run(async {
            let url = serve(chunked(&[b"a\nb", b"\nc"]), NO_PAUSE, NO_PAUSE);
            let mut body = BoundedBody::new(get(&url, LONG).await, 16);
            let mut pieces = Vec::new();
            loop {
                let piece = body.next_line().await.expect("the stream reads");
                let end = matches!(piece, Piece::End(_));
                pieces.push(piece);
                if end {
                    return pieces;
                }
            }
        });
        assert_eq!(
            pieces,
            [
                Piece::Line(b"a\n".to_vec()),
                Piece::Line(b"b\n".to_vec()),
                Piece::End(b"c".to_vec()),
            ],
            "the stream was not split into its lines"
        );
    }

    #[test]
    fn a_line_longer_than_the_limit_is_refused() {
        let refused = run(async {
            let url = serve(chunked(&[b"0123", b"4567", b"89\n"]), NO_PAUSE, NO_PAUSE);
            BoundedBody::new(get(&url, LONG).await, 8).next_line().await
        });
        assert!(
            matches!(refused, Err(BodyError::TooLarge { limit: 8 })),
            "an eleven-byte line passed a limit of eight: {refused:?}"
        );
    }

    #[test]
    fn a_body_that_stalls_past_the_timeout_is_told_from_one_that_breaks_off() {
        let stalled = run(async {
            let parts = vec![CHUNKED.to_vec(), chunk(b"a")];
            let url = serve(parts, NO_PAUSE, LONG);
            read_bounded(get(&url, Duration::from_secs(2)).await, 10).await
        });
        assert!(
            matches!(stalled, Err(BodyError::TimedOut { .. })),
            "a stalled body was not reported as timed out: {stalled:?}"
        );
        let broken = run(async {
            let head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec();
            let url = serve(vec![head], NO_PAUSE, NO_PAUSE);
            read_bounded(get(&url, LONG).await, 10).await
        });
        assert!(
            matches!(broken, Err(BodyError::Broken { .. })),
            "a body cut short was not reported as broken: {broken:?}"
        );
    }
}
