//! The answers of the key-value calls: a range, a transaction.

use serde::Deserialize;

use super::super::adapters::{i64_string, object, objects, some_object, B64};
use super::super::Kv;
use super::{Answer, Header};

/// One key as etcd writes it: its name (base64), its value (base64, absent when empty), its
/// revisions (at least 1) and its lease (absent: none).
#[derive(Debug, Deserialize)]
pub(in crate::fleet::etcd) struct WireKv {
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
pub(in crate::fleet::etcd) struct RangeBody {
    #[serde(default, deserialize_with = "objects")]
    kvs: Vec<WireKv>,
}

impl RangeBody {
    fn check(&self) -> Result<(), String> {
        self.kvs.iter().try_for_each(WireKv::check)
    }

    /// The first key.
    pub(in crate::fleet::etcd) fn first(self) -> Option<Kv> {
        self.kvs.into_iter().next().map(Kv::from)
    }
}

/// `/v3/kv/range`'s answer.
#[derive(Debug, Deserialize)]
pub(in crate::fleet::etcd) struct RangeAnswer {
    #[serde(deserialize_with = "object")]
    pub(in crate::fleet::etcd) header: Header,
    #[serde(flatten)]
    pub(in crate::fleet::etcd) body: RangeBody,
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
pub(in crate::fleet::etcd) struct TxnAnswer {
    #[serde(deserialize_with = "object")]
    pub(in crate::fleet::etcd) header: Header,
    #[serde(default)]
    pub(in crate::fleet::etcd) succeeded: bool,
    #[serde(default, deserialize_with = "objects")]
    pub(in crate::fleet::etcd) responses: Vec<ResponseOp>,
}

/// One response of a transaction, of one of etcd's kinds.
#[derive(Debug, Deserialize)]
pub(in crate::fleet::etcd) struct ResponseOp {
    #[serde(default, deserialize_with = "some_object")]
    pub(in crate::fleet::etcd) response_range: Option<RangeBody>,
    #[serde(default, deserialize_with = "some_object")]
    response_put: Option<Ignored>,
    #[serde(default, deserialize_with = "some_object")]
    pub(in crate::fleet::etcd) response_delete_range: Option<DeleteBody>,
    #[serde(default, deserialize_with = "some_object")]
    response_txn: Option<Ignored>,
}

/// A response whose contents are not read.
#[derive(Debug, Deserialize)]
struct Ignored {}

/// A delete's count (absent: 0).
#[derive(Debug, Deserialize)]
pub(in crate::fleet::etcd) struct DeleteBody {
    #[serde(default, with = "i64_string")]
    pub(in crate::fleet::etcd) deleted: i64,
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::parse;
    use super::*;

    fn check<T: Answer>(answer: &serde_json::Value) -> Result<(), String> {
        parse::<T>(answer.to_string().as_bytes()).map(|_| ())
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
}
