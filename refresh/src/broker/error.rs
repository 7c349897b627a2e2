//! [`BrokerError`]: why the broker cannot serve.

use std::net::SocketAddr;

/// Why [`crate::Broker::serve`] cannot serve. Messages contain no secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The listener is not on a loopback address: the broker answers with tokens, so it
    /// serves this machine only.
    #[error(
        "the token broker listens on {addr}, which is not a loopback address: it answers with \
         tokens, so it serves only 127.0.0.1 or ::1"
    )]
    NotLoopback {
        /// The listener's address.
        addr: SocketAddr,
    },
    /// The manager's token URL is the broker's own address: an unknown token would be
    /// forwarded to the broker itself, again and again.
    #[error(
        "the token URL {url} is the token broker's own address {addr}: the broker forwards \
         what it does not know to the real endpoint, so its own token URL must be that \
         endpoint (unset {} for the broker, and set it for Codex only)",
        crate::config::TOKEN_URL_ENV
    )]
    ForwardsToItself {
        /// The token URL, quoted, escaped, a password in it hidden.
        url: String,
        /// The listener's address.
        addr: SocketAddr,
    },
    /// The listener's address cannot be had.
    #[error("cannot read the token broker's listening address: {source}")]
    Address {
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// `url` quoted, with control and non-ASCII characters escaped and a password replaced by
/// `***`.
pub(crate) fn shown_url(url: &str) -> String {
    let shown = match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    };
    format!("\"{}\"", shown.escape_default())
}
