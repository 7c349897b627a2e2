//! The JSON of etcd's v3 gateway: the requests this client sends ([`request`]) and the answers
//! it reads ([`kv`], [`lease`], [`stream`]), as serde types, with the checks that make an answer
//! etcd's ([`Answer::check`]).
//!
//! # Security
//! An answer is untrusted: one that does not parse into its type, or fails its check, is never
//! read as "no key" or "not succeeded" (the caller tries another endpoint, then reports it).

mod kv;
mod lease;
mod request;
mod stream;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::adapters::{i64_string, object};

pub(super) use kv::{RangeAnswer, TxnAnswer};
pub(super) use lease::{
    AuthenticateAnswer, GrantAnswer, HeaderAnswer, KeepAliveAnswer, TimeToLiveAnswer,
};
pub(super) use request::{
    AuthenticateRequest, CompareRequest, GrantRequest, KeyRequest, LeaseRequest, OpRequest,
    TxnRequest, WatchCreate, WatchRequest,
};
pub(super) use stream::{ErrorField, ErrorFields, WatchMessageWire, WatchResult};

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
    pub(super) fn check(&self) -> Result<(), String> {
        if self.revision >= 1 {
            Ok(())
        } else {
            Err("a `header` without a revision".into())
        }
    }
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
}
