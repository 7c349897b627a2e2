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
