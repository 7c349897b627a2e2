//! The refusals in the gateway's answers, and the messages of a watch stream.

use serde::Deserialize;

use super::super::adapters::{i64_string, object, objects, some_object, Loose, LooseI64, B64};
use super::{from_object, Header};

/// The error fields of a gateway answer: etcd 3.4 writes `{"error": text, "code": n,
/// "message": text}`, 3.6 `{"code": n, "message": text}` with an HTTP error status. Each is read
/// when it has the expected type.
#[derive(Debug, Default, Deserialize)]
pub(in crate::fleet::etcd) struct ErrorFields {
    #[serde(default)]
    pub(in crate::fleet::etcd) error: Option<ErrorField>,
    /// A JSON number only.
    #[serde(default)]
    pub(in crate::fleet::etcd) code: Loose<i64>,
    #[serde(default)]
    pub(in crate::fleet::etcd) message: Loose<String>,
}

/// The `error` of an answer or of a watch stream's message.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(in crate::fleet::etcd) enum ErrorField {
    /// etcd 3.4's unary calls: the message.
    Text(String),
    /// A watch stream's: `{"grpc_code" (3.4) or "code" (3.6), "message"}`.
    Status(#[serde(deserialize_with = "object")] StreamStatus),
    /// Anything else.
    Other(serde::de::IgnoredAny),
}

#[derive(Debug, Default, Deserialize)]
pub(in crate::fleet::etcd) struct StreamStatus {
    #[serde(default)]
    pub(in crate::fleet::etcd) grpc_code: Option<LooseI64>,
    #[serde(default)]
    pub(in crate::fleet::etcd) code: LooseI64,
    #[serde(default)]
    pub(in crate::fleet::etcd) message: Loose<String>,
}

impl ErrorFields {
    /// The error fields of `bytes`, if they are a JSON object (nothing otherwise).
    pub(in crate::fleet::etcd) fn of(bytes: &[u8]) -> ErrorFields {
        from_object(bytes).unwrap_or_default()
    }
}

/// A watch stream's message: `{"result": {...}}`, or `{"error": ...}` when the stream fails.
#[derive(Debug, Deserialize)]
pub(in crate::fleet::etcd) struct WatchMessageWire {
    #[serde(default, deserialize_with = "some_object")]
    pub(in crate::fleet::etcd) result: Option<WatchResult>,
    #[serde(default)]
    pub(in crate::fleet::etcd) error: Option<ErrorField>,
    /// The code beside an `error` that is text.
    #[serde(default)]
    pub(in crate::fleet::etcd) code: LooseI64,
}

/// A watch's news: created, events, or canceled (with a compaction or a reason).
#[derive(Debug, Default, Deserialize)]
pub(in crate::fleet::etcd) struct WatchResult {
    #[serde(default, deserialize_with = "some_object")]
    pub(in crate::fleet::etcd) header: Option<Header>,
    #[serde(default)]
    pub(in crate::fleet::etcd) created: bool,
    #[serde(default)]
    pub(in crate::fleet::etcd) canceled: bool,
    #[serde(default, with = "i64_string")]
    pub(in crate::fleet::etcd) compact_revision: i64,
    #[serde(default)]
    pub(in crate::fleet::etcd) cancel_reason: String,
    #[serde(default, deserialize_with = "objects")]
    pub(in crate::fleet::etcd) events: Vec<Event>,
}

/// One event of a watch: the key at its new revision, or its deletion.
#[derive(Debug, Deserialize)]
pub(in crate::fleet::etcd) struct Event {
    /// `DELETE` for a deletion; etcd omits it for a put (the default).
    #[serde(default, rename = "type")]
    pub(in crate::fleet::etcd) kind: Loose<String>,
    #[serde(default, deserialize_with = "some_object")]
    pub(in crate::fleet::etcd) kv: Option<EventKv>,
}

/// The key of an event: its name and revision always; its value, creation and lease for a put.
#[derive(Debug, Deserialize)]
pub(in crate::fleet::etcd) struct EventKv {
    #[serde(default)]
    pub(in crate::fleet::etcd) key: B64,
    #[serde(default)]
    pub(in crate::fleet::etcd) value: B64,
    #[serde(default, with = "i64_string")]
    pub(in crate::fleet::etcd) mod_revision: i64,
    #[serde(default, with = "i64_string")]
    pub(in crate::fleet::etcd) create_revision: i64,
    #[serde(default, with = "i64_string")]
    pub(in crate::fleet::etcd) lease: i64,
}
