//! The JSON of etcd's v3 gateway: the requests this client sends and the answers it reads, as
//! serde types, with the checks that make an answer etcd's ([`Answer::check`]).
//!
//! # Security
//! An answer is untrusted: one that does not parse into its type, or fails its check, is never
//! read as "no key" or "not succeeded" (the caller tries another endpoint, then reports it).

use codex_store::Secret;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::adapters::{i64_string, object, objects, Loose, LooseI64, B64};
use super::{Compare, Kv, Op};

// Requests.

/// `/v3/kv/range`, `request_range` and `request_delete_range`: one key.
#[derive(Serialize)]
pub(super) struct KeyRequest {
    pub(super) key: B64,
}

impl KeyRequest {
    pub(super) fn new(key: &str) -> KeyRequest {
        KeyRequest {
            key: B64(key.as_bytes().to_vec()),
        }
    }
}

/// `/v3/kv/txn`.
#[derive(Serialize)]
pub(super) struct TxnRequest {
    pub(super) compare: Vec<CompareRequest>,
    pub(super) success: Vec<OpRequest>,
    pub(super) failure: Vec<OpRequest>,
}

/// A comparison "the key's revision EQUAL this".
#[derive(Serialize)]
pub(super) struct CompareRequest {
    key: B64,
    target: &'static str,
    result: &'static str,
    #[serde(with = "opt_i64_string", skip_serializing_if = "Option::is_none")]
    mod_revision: Option<i64>,
    #[serde(with = "opt_i64_string", skip_serializing_if = "Option::is_none")]
    create_revision: Option<i64>,
}

/// An operation of a transaction (`request_put`, `request_range`, `request_delete_range`).
#[derive(Serialize)]
pub(super) enum OpRequest {
    #[serde(rename = "request_put")]
    Put(PutRequest),
    #[serde(rename = "request_range")]
    Range(KeyRequest),
    #[serde(rename = "request_delete_range")]
    DeleteRange(KeyRequest),
}

#[derive(Serialize)]
pub(super) struct PutRequest {
    key: B64,
    value: B64,
    #[serde(with = "i64_string")]
    lease: i64,
}

/// `/v3/lease/grant`.
#[derive(Serialize)]
pub(super) struct GrantRequest {
    #[serde(rename = "TTL", with = "i64_string")]
    pub(super) ttl: i64,
}

/// `/v3/lease/keepalive`, `/v3/lease/timetolive`, `/v3/kv/lease/revoke`: one lease.
#[derive(Serialize)]
pub(super) struct LeaseRequest {
    #[serde(rename = "ID", with = "i64_string")]
    pub(super) id: i64,
}

/// `/v3/auth/authenticate`.
#[derive(Serialize)]
pub(super) struct AuthenticateRequest<'a> {
    pub(super) name: &'a str,
    pub(super) password: &'a Secret,
}

/// `/v3/watch`: a watch of one key from a revision on.
#[derive(Serialize)]
pub(super) struct WatchRequest {
    pub(super) create_request: WatchCreate,
}

#[derive(Serialize)]
pub(super) struct WatchCreate {
    pub(super) key: B64,
    #[serde(with = "i64_string")]
    pub(super) start_revision: i64,
}

impl From<&Compare> for CompareRequest {
    fn from(compare: &Compare) -> CompareRequest {
        let (key, target, mod_revision, create_revision) = match compare {
            Compare::ModRevision(key, rev) => (key, "MOD", Some(*rev), None),
            Compare::CreateRevision(key, rev) => (key, "CREATE", None, Some(*rev)),
        };
        CompareRequest {
            key: B64(key.as_bytes().to_vec()),
            target,
            result: "EQUAL",
            mod_revision,
            create_revision,
        }
    }
}

impl From<&Op> for OpRequest {
    fn from(op: &Op) -> OpRequest {
        match op {
            Op::Put { key, value, lease } => OpRequest::Put(PutRequest {
                key: B64(key.as_bytes().to_vec()),
                value: B64(value.clone()),
                lease: *lease,
            }),
            Op::Get(key) => OpRequest::Range(KeyRequest::new(key)),
            Op::Delete(key) => OpRequest::DeleteRange(KeyRequest::new(key)),
        }
    }
}

/// `Option<i64>` through [`i64_string`].
mod opt_i64_string {
    use serde::Serializer;

    pub(super) fn serialize<S: Serializer>(
        value: &Option<i64>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => super::i64_string::serialize(value, serializer),
            None => serializer.serialize_none(),
        }
    }
}

// Answers.

/// An answer of etcd's, read from a JSON object and checked before use.
pub(super) trait Answer: DeserializeOwned {
    /// What makes it etcd's beyond its types (a revision of at least 1, a lease id, ...).
    ///
    /// # Errors
    /// What is wrong, for [`super::FleetError::NotEtcd`]'s message.
    fn check(&self) -> Result<(), String>;
}

/// Reads `bytes` as etcd's answer `T`: a JSON object of its type that passes its check.
///
/// # Errors
/// What is wrong with it (not JSON, not an object, a field missing or of another type, a failed
/// check).
pub(super) fn parse<T: Answer>(bytes: &[u8]) -> Result<T, String> {
    let answer: T = from_object(bytes)?;
    answer.check()?;
    Ok(answer)
}

/// Reads `bytes` as one JSON object of type `T`, and nothing after it but white space.
///
/// # Errors
/// serde's description of what is wrong.
pub(super) fn from_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value: T = object(&mut deserializer).map_err(|e| e.to_string())?;
    deserializer.end().map_err(|e| e.to_string())?;
    Ok(value)
}

/// The `header` of every answer of the KV and lease calls.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Header {
    /// The store's revision at the time of the answer (0: none given).
    #[serde(default, with = "i64_string")]
    pub(super) revision: i64,
}

impl Header {
    /// etcd starts at revision 1: every answer's header says at least that.
    fn check(&self) -> Result<(), String> {
        if self.revision >= 1 {
            Ok(())
        } else {
            Err("a `header` without a revision".into())
        }
    }
}

/// One key as etcd writes it: its name (base64), its value (base64, absent when empty), its
/// revisions (at least 1) and its lease (absent: none).
#[derive(Debug, Deserialize)]
pub(super) struct WireKv {
    #[serde(rename = "key")]
    _key: String,
    #[serde(default)]
    value: B64,
    #[serde(with = "i64_string")]
    mod_revision: i64,
    #[serde(with = "i64_string")]
    create_revision: i64,
    #[serde(default, with = "i64_string")]
    lease: i64,
}

impl WireKv {
    fn check(&self) -> Result<(), String> {
        for (name, revision) in [
            ("mod_revision", self.mod_revision),
            ("create_revision", self.create_revision),
        ] {
            if revision < 1 {
                return Err(format!("a key without its `{name}`"));
            }
        }
        Ok(())
    }
}

impl From<WireKv> for Kv {
    fn from(kv: WireKv) -> Kv {
        Kv {
            value: kv.value.0,
            mod_revision: kv.mod_revision,
            create_revision: kv.create_revision,
            lease: kv.lease,
        }
    }
}

/// The keys of a range (`kvs`, absent when none).
#[derive(Debug, Default, Deserialize)]
pub(super) struct RangeBody {
    #[serde(default, deserialize_with = "objects")]
    kvs: Vec<WireKv>,
}

impl RangeBody {
    fn check(&self) -> Result<(), String> {
        self.kvs.iter().try_for_each(WireKv::check)
    }

    /// The first key.
    pub(super) fn first(self) -> Option<Kv> {
        self.kvs.into_iter().next().map(Kv::from)
    }
}

/// `/v3/kv/range`'s answer.
#[derive(Debug, Deserialize)]
pub(super) struct RangeAnswer {
    #[serde(deserialize_with = "object")]
    pub(super) header: Header,
    #[serde(flatten)]
    pub(super) body: RangeBody,
}

impl Answer for RangeAnswer {
    fn check(&self) -> Result<(), String> {
        self.header.check()?;
        self.body.check()
    }
}

/// `/v3/kv/txn`'s answer: `succeeded` (absent: false) and one response per operation of the
/// branch that ran (absent: none).
#[derive(Debug, Deserialize)]
pub(super) struct TxnAnswer {
    #[serde(deserialize_with = "object")]
    pub(super) header: Header,
    #[serde(default)]
    pub(super) succeeded: bool,
    #[serde(default, deserialize_with = "objects")]
    pub(super) responses: Vec<ResponseOp>,
}

/// One response of a transaction, of one of etcd's kinds.
#[derive(Debug, Deserialize)]
pub(super) struct ResponseOp {
    #[serde(default, deserialize_with = "some_object")]
    pub(super) response_range: Option<RangeBody>,
    #[serde(default, deserialize_with = "some_object")]
    response_put: Option<Ignored>,
    #[serde(default, deserialize_with = "some_object")]
    pub(super) response_delete_range: Option<DeleteBody>,
    #[serde(default, deserialize_with = "some_object")]
    response_txn: Option<Ignored>,
}

/// A response whose contents are not read.
#[derive(Debug, Deserialize)]
struct Ignored {}

/// A delete's count (absent: 0).
#[derive(Debug, Deserialize)]
pub(super) struct DeleteBody {
    #[serde(default, with = "i64_string")]
    pub(super) deleted: i64,
}

fn some_object<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    object(deserializer).map(Some)
}

impl Answer for TxnAnswer {
    fn check(&self) -> Result<(), String> {
        self.header.check()?;
        for response in &self.responses {
            match response {
                ResponseOp {
                    response_range: Some(range),
                    ..
                } => range.check()?,
                ResponseOp {
                    response_put: None,
                    response_delete_range: None,
                    response_txn: None,
                    ..
                } => return Err("a response of no known kind".into()),
                _ => {}
            }
        }
        Ok(())
    }
}

/// `/v3/lease/grant`'s answer: the lease's id (not 0) and time to live (positive).
#[derive(Debug, Deserialize)]
pub(super) struct GrantAnswer {
    #[serde(deserialize_with = "object")]
    header: Header,
    #[serde(rename = "ID", with = "i64_string")]
    pub(super) id: i64,
    #[serde(rename = "TTL", with = "i64_string")]
    ttl: i64,
}

impl Answer for GrantAnswer {
    fn check(&self) -> Result<(), String> {
        self.header.check()?;
        if self.id == 0 {
            return Err("no lease `ID`".into());
        }
        if self.ttl <= 0 {
            return Err("no lease `TTL`".into());
        }
        Ok(())
    }
}

/// `/v3/lease/keepalive`'s answer: a `result` whose `TTL` is absent once the lease is gone.
#[derive(Debug, Deserialize)]
pub(super) struct KeepAliveAnswer {
    #[serde(deserialize_with = "object")]
    pub(super) result: KeepAliveResult,
}

#[derive(Debug, Deserialize)]
pub(super) struct KeepAliveResult {
    #[serde(deserialize_with = "object")]
    header: Header,
    /// The remaining time to live in seconds (0: the lease is gone).
    #[serde(rename = "TTL", default, with = "i64_string")]
    pub(super) ttl: i64,
}

impl Answer for KeepAliveAnswer {
    fn check(&self) -> Result<(), String> {
        self.result.header.check()
    }
}

/// `/v3/lease/timetolive`'s answer: the remaining `TTL` (-1: gone) and the granted one.
#[derive(Debug, Deserialize)]
pub(super) struct TimeToLiveAnswer {
    #[serde(deserialize_with = "object")]
    header: Header,
    #[serde(rename = "TTL", with = "i64_string")]
    pub(super) ttl: i64,
    #[serde(rename = "grantedTTL", default, with = "i64_string")]
    pub(super) granted_ttl: i64,
}

impl Answer for TimeToLiveAnswer {
    fn check(&self) -> Result<(), String> {
        self.header.check()
    }
}

/// An answer of which only the header is read (`/v3/kv/lease/revoke`'s).
#[derive(Debug, Deserialize)]
pub(super) struct HeaderAnswer {
    #[serde(deserialize_with = "object")]
    header: Header,
}

impl Answer for HeaderAnswer {
    fn check(&self) -> Result<(), String> {
        self.header.check()
    }
}

/// `/v3/auth/authenticate`'s answer: a token.
#[derive(Deserialize)]
pub(super) struct AuthenticateAnswer {
    #[serde(deserialize_with = "object")]
    header: Header,
    pub(super) token: Secret,
}

impl Answer for AuthenticateAnswer {
    fn check(&self) -> Result<(), String> {
        self.header.check()?;
        if self.token.expose().is_empty() {
            return Err("no `token`".into());
        }
        Ok(())
    }
}

/// The error fields of a gateway answer: etcd 3.4 writes `{"error": text, "code": n,
/// "message": text}`, 3.6 `{"code": n, "message": text}` with an HTTP error status. Each is read
/// when it has the expected type.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ErrorFields {
    #[serde(default)]
    pub(super) error: Option<ErrorField>,
    /// A JSON number only.
    #[serde(default)]
    pub(super) code: Loose<i64>,
    #[serde(default)]
    pub(super) message: Loose<String>,
}

/// The `error` of an answer or of a watch stream's message.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum ErrorField {
    /// etcd 3.4's unary calls: the message.
    Text(String),
    /// A watch stream's: `{"grpc_code" (3.4) or "code" (3.6), "message"}`.
    Status(#[serde(deserialize_with = "object")] StreamStatus),
    /// Anything else.
    Other(serde::de::IgnoredAny),
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct StreamStatus {
    #[serde(default)]
    pub(super) grpc_code: Option<LooseI64>,
    #[serde(default)]
    pub(super) code: LooseI64,
    #[serde(default)]
    pub(super) message: Loose<String>,
}

impl ErrorFields {
    /// The error fields of `bytes`, if they are a JSON object (nothing otherwise).
    pub(super) fn of(bytes: &[u8]) -> ErrorFields {
        from_object(bytes).unwrap_or_default()
    }
}

/// A watch stream's message: `{"result": {...}}`, or `{"error": ...}` when the stream fails.
#[derive(Debug, Deserialize)]
pub(super) struct WatchMessageWire {
    #[serde(default, deserialize_with = "some_object")]
    pub(super) result: Option<WatchResult>,
    #[serde(default)]
    pub(super) error: Option<ErrorField>,
    /// The code beside an `error` that is text.
    #[serde(default)]
    pub(super) code: LooseI64,
}

/// A watch's news: created, events, or canceled (with a compaction or a reason).
#[derive(Debug, Default, Deserialize)]
pub(super) struct WatchResult {
    #[serde(default, deserialize_with = "some_object")]
    pub(super) header: Option<Header>,
    #[serde(default)]
    pub(super) created: bool,
    #[serde(default)]
    pub(super) canceled: bool,
    #[serde(default, with = "i64_string")]
    pub(super) compact_revision: i64,
    #[serde(default)]
    pub(super) cancel_reason: String,
    #[serde(default, deserialize_with = "objects")]
    pub(super) events: Vec<Event>,
}

/// One event of a watch: the key at its new revision.
#[derive(Debug, Deserialize)]
pub(super) struct Event {
    #[serde(default, deserialize_with = "some_object")]
    pub(super) kv: Option<EventKv>,
}

#[derive(Debug, Deserialize)]
pub(super) struct EventKv {
    #[serde(default, with = "i64_string")]
    pub(super) mod_revision: i64,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check<T: Answer>(answer: &serde_json::Value) -> Result<(), String> {
        check_bytes::<T>(answer.to_string().as_bytes())
    }

    fn check_bytes<T: Answer>(bytes: &[u8]) -> Result<(), String> {
        parse::<T>(bytes).map(|_| ())
    }

    type Check = fn(&[u8]) -> Result<(), String>;

    #[test]
    fn an_empty_object_or_a_page_is_no_answer_of_etcd_to_any_call() {
        let checks: [(&str, Check); 7] = [
            ("range", check_bytes::<RangeAnswer>),
            ("txn", check_bytes::<TxnAnswer>),
            ("grant", check_bytes::<GrantAnswer>),
            ("keepalive", check_bytes::<KeepAliveAnswer>),
            ("timetolive", check_bytes::<TimeToLiveAnswer>),
            ("revoke", check_bytes::<HeaderAnswer>),
            ("authenticate", check_bytes::<AuthenticateAnswer>),
        ];
        for (name, check) in checks {
            for answer in [json!({}), json!({"header": {}}), json!({"kvs": []})] {
                assert!(
                    check(answer.to_string().as_bytes()).is_err(),
                    "{answer} was taken for etcd's answer to {name}"
                );
            }
            for page in ["<html>", "[1]", "", "null", r#"[{"revision":"7"}]"#] {
                assert!(
                    check(page.as_bytes()).is_err(),
                    "{page:?} was taken for etcd's answer to {name}"
                );
            }
        }
        assert!(
            check_bytes::<HeaderAnswer>(br#"{"header":{"revision":"7"}} x"#).is_err(),
            "an answer with trailing bytes was taken for etcd's"
        );
        assert!(
            check_bytes::<HeaderAnswer>(br#"{"header":["7"]}"#).is_err(),
            "a header that is an array was read by position"
        );
    }

    #[test]
    fn etcds_own_answers_pass_their_checks() {
        let header =
            json!({"cluster_id": "1", "member_id": "2", "revision": "7", "raft_term": "2"});
        assert!(
            check::<RangeAnswer>(&json!({"header": header})).is_ok(),
            "a range with no key"
        );
        let kv =
            json!({"key": "L2E=", "create_revision": "2", "mod_revision": "2", "version": "1"});
        assert!(
            check::<RangeAnswer>(&json!({"header": header, "kvs": [kv], "count": "1"})).is_ok(),
            "a key with an empty value (etcd omits it)"
        );
        assert!(
            check::<TxnAnswer>(&json!({"header": header, "responses": [{"response_range": {"header": {"revision": "7"}}}]}))
                .is_ok(),
            "a failed transaction (etcd omits `succeeded: false`)"
        );
        assert!(
            check::<KeepAliveAnswer>(&json!({"result": {"header": header, "ID": "5"}})).is_ok(),
            "a keep-alive of a lease that is gone (no TTL)"
        );
        let bad = json!({"key": "L2E=", "mod_revision": "2"});
        assert!(
            check::<RangeAnswer>(&json!({"header": header, "kvs": [bad]})).is_err(),
            "a key without its create revision is not etcd's"
        );
    }

    #[test]
    fn a_key_is_read_with_its_value_revisions_and_lease() {
        let answer = json!({"header": {"revision": "9"}, "kvs": [
            {"key": "L2E=", "value": "aGk=", "create_revision": "3", "mod_revision": "8", "lease": "12"}
        ]});
        let range = parse::<RangeAnswer>(answer.to_string().as_bytes()).expect("etcd's answer");
        assert_eq!(
            range.header.revision, 9,
            "the header's revision was misread"
        );
        assert_eq!(
            range.body.first(),
            Some(Kv {
                value: b"hi".to_vec(),
                mod_revision: 8,
                create_revision: 3,
                lease: 12,
            }),
            "the key was misread"
        );
    }

    #[test]
    fn a_transaction_response_of_no_known_kind_or_a_bad_key_is_not_etcds() {
        let header = json!({"revision": "7"});
        for responses in [
            json!([{"response_other": {}}]),
            json!([[]]),
            json!([{"response_range": {"kvs": [{"key": "a"}]}}]),
            json!([{"response_put": 5}]),
        ] {
            assert!(
                check::<TxnAnswer>(&json!({"header": header, "responses": responses})).is_err(),
                "{responses} was taken for etcd's responses"
            );
        }
        assert!(
            check::<TxnAnswer>(&json!({"header": header, "succeeded": "yes"})).is_err(),
            "a `succeeded` that is not a boolean was taken for etcd's"
        );
    }

    #[test]
    fn requests_are_written_as_the_gateway_reads_them() {
        let compare = CompareRequest::from(&Compare::ModRevision("/a".into(), 4));
        assert_eq!(
            serde_json::to_value(&compare).expect("serializes"),
            json!({"key": "L2E=", "target": "MOD", "result": "EQUAL", "mod_revision": "4"}),
            "a mod-revision comparison was written wrongly"
        );
        let compare = CompareRequest::from(&Compare::CreateRevision("/a".into(), 0));
        assert_eq!(
            serde_json::to_value(&compare).expect("serializes"),
            json!({"key": "L2E=", "target": "CREATE", "result": "EQUAL", "create_revision": "0"}),
            "a create-revision comparison was written wrongly"
        );
        let put = OpRequest::from(&Op::Put {
            key: "/a".into(),
            value: b"hi".to_vec(),
            lease: 7,
        });
        assert_eq!(
            serde_json::to_value(&put).expect("serializes"),
            json!({"request_put": {"key": "L2E=", "value": "aGk=", "lease": "7"}}),
            "a put was written wrongly"
        );
        assert_eq!(
            serde_json::to_value(OpRequest::from(&Op::Delete("/a".into()))).expect("serializes"),
            json!({"request_delete_range": {"key": "L2E="}}),
            "a delete was written wrongly"
        );
    }
}
