//! The requests this client sends, as the gateway reads them.

use codex_store::Secret;
use serde::Serialize;

use super::super::adapters::{i64_string, B64};
use super::super::{Compare, Op};

/// `/v3/kv/range`, `request_range` and `request_delete_range`: one key.
#[derive(Serialize)]
pub(in crate::fleet::etcd) struct KeyRequest {
    pub(in crate::fleet::etcd) key: B64,
}

impl KeyRequest {
    pub(in crate::fleet::etcd) fn new(key: &str) -> KeyRequest {
        KeyRequest {
            key: B64(key.as_bytes().to_vec()),
        }
    }
}

/// `/v3/kv/txn`.
#[derive(Serialize)]
pub(in crate::fleet::etcd) struct TxnRequest {
    pub(in crate::fleet::etcd) compare: Vec<CompareRequest>,
    pub(in crate::fleet::etcd) success: Vec<OpRequest>,
    pub(in crate::fleet::etcd) failure: Vec<OpRequest>,
}

/// A comparison "the key's revision EQUAL this".
#[derive(Serialize)]
pub(in crate::fleet::etcd) struct CompareRequest {
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
pub(in crate::fleet::etcd) enum OpRequest {
    #[serde(rename = "request_put")]
    Put(PutRequest),
    #[serde(rename = "request_range")]
    Range(KeyRequest),
    #[serde(rename = "request_delete_range")]
    DeleteRange(KeyRequest),
}

#[derive(Serialize)]
pub(in crate::fleet::etcd) struct PutRequest {
    key: B64,
    value: B64,
    #[serde(with = "i64_string")]
    lease: i64,
}

/// `/v3/lease/grant`.
#[derive(Serialize)]
pub(in crate::fleet::etcd) struct GrantRequest {
    #[serde(rename = "TTL", with = "i64_string")]
    pub(in crate::fleet::etcd) ttl: i64,
}

/// `/v3/lease/keepalive`, `/v3/lease/timetolive`, `/v3/kv/lease/revoke`: one lease.
#[derive(Serialize)]
pub(in crate::fleet::etcd) struct LeaseRequest {
    #[serde(rename = "ID", with = "i64_string")]
    pub(in crate::fleet::etcd) id: i64,
}

/// `/v3/auth/authenticate`.
#[derive(Serialize)]
pub(in crate::fleet::etcd) struct AuthenticateRequest<'a> {
    pub(in crate::fleet::etcd) name: &'a str,
    pub(in crate::fleet::etcd) password: &'a Secret,
}

/// `/v3/watch`: a watch of one key, or of the keys from `key` up to `range_end`, from a
/// revision on.
#[derive(Serialize)]
pub(in crate::fleet::etcd) struct WatchRequest {
    pub(in crate::fleet::etcd) create_request: WatchCreate,
}

#[derive(Serialize)]
pub(in crate::fleet::etcd) struct WatchCreate {
    pub(in crate::fleet::etcd) key: B64,
    /// The end of the range (exclusive); absent: the one key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(in crate::fleet::etcd) range_end: Option<B64>,
    #[serde(with = "i64_string")]
    pub(in crate::fleet::etcd) start_revision: i64,
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

    pub(in crate::fleet::etcd) fn serialize<S: Serializer>(
        value: &Option<i64>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => super::i64_string::serialize(value, serializer),
            None => serializer.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

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
