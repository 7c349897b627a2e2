//! A client of etcd's v3 JSON gateway (`/v3/kv/range`, `/v3/kv/txn`, `/v3/lease/...`,
//! `/v3/watch`, `/v3/auth/authenticate`) over the reqwest client the token endpoint already
//! uses: no gRPC stack, no `protoc` at build time. Keys and values travel base64-encoded; 64-bit
//! numbers as strings.
//!
//! Every call tries the endpoints in turn (a member that is down, or a follower without a
//! leader, passes the call to the next) and re-authenticates once when the token expired.
//!
//! The gateway's JSON is read into serde types ([`wire`]), with adapters for its encodings
//! ([`adapters`]); etcd's refusals are classified by their gRPC code ([`grpc`]). Bodies are read
//! within [`MAX_ANSWER`] by the crate's bounded reader ([`crate::http_body`]).

mod adapters;
mod call;
mod grpc;
mod kv;
mod lease;
mod setup;
mod tls;
mod watch;
mod wire;

use std::sync::Mutex;

use codex_store::Secret;

use super::FleetError;
use crate::http_body::BodyError;
pub(crate) use watch::Change;

/// The largest answer read from etcd (a record is an auth.json, a few KiB).
const MAX_ANSWER: usize = 4 * 1024 * 1024;

/// One key as etcd returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Kv {
    pub(crate) value: Vec<u8>,
    pub(crate) mod_revision: i64,
    pub(crate) create_revision: i64,
    pub(crate) lease: i64,
}

/// A comparison of a transaction.
pub(crate) enum Compare {
    /// The key's `mod_revision` equals this (0: the key does not exist).
    ModRevision(String, i64),
    /// The key's `create_revision` equals this (0: the key does not exist).
    CreateRevision(String, i64),
}

/// An operation of a transaction.
pub(crate) enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        lease: i64,
    },
    Get(String),
    Delete(String),
}

/// What a transaction did.
pub(crate) struct TxnResult {
    pub(crate) succeeded: bool,
    /// The store's revision after the transaction.
    pub(crate) revision: i64,
    /// The keys read by `Op::Get` operations, in order (`None` for a missing key).
    pub(crate) gets: Vec<Option<Kv>>,
    /// How many keys each `Op::Delete` removed, in order.
    pub(crate) deleted: Vec<i64>,
}

/// How a watch ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Watched {
    /// The key changed, at this revision (the caller stopped at the change); or etcd is at this
    /// revision, older than the watch's start (restored from a snapshot): read again.
    Changed(i64),
    /// Nothing happened within the time.
    TimedOut,
    /// etcd compacted the history past the watch's start (it canceled the watch saying so),
    /// up to this revision (the oldest one a watch may start from): read again. A watch
    /// canceled for any other reason is an error, never this.
    Compacted(i64),
}

/// The etcd client.
pub(crate) struct Etcd {
    http: reqwest::Client,
    endpoints: Vec<String>,
    username: Option<String>,
    password: Option<Secret>,
    token: Mutex<Option<Secret>>,
}

/// A short, escaped description of an answer that is not etcd's, for a message.
fn describe(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    let mut shown: String = text.chars().take(40).collect();
    if text.chars().count() > 40 {
        shown.push_str("...");
    }
    if shown.is_empty() {
        "an empty body".to_owned()
    } else {
        format!("`{}`", shown.escape_debug())
    }
}

/// reqwest's error without the URL (which names only the endpoint, but keep messages short).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A body that could not be read, for a message: its size, or reqwest's error without the URL.
fn body_error(e: BodyError) -> String {
    match e {
        BodyError::TooLarge { .. } => e.to_string(),
        BodyError::TimedOut { source } | BodyError::Broken { source } => without_url(&source),
    }
}
