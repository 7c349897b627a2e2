//! Serde adapters for how etcd's JSON gateway writes protobuf values: 64-bit integers as JSON
//! strings ([`i64_string`]), bytes as base64 ([`B64`]), messages as JSON objects only
//! ([`object`]), and the fields of an error that are read if they have the expected type and
//! otherwise ignored ([`Loose`]).

use std::fmt;
use std::marker::PhantomData;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An `int64` as the gateway writes it: a string of digits (a JSON number is taken too). Written
/// as a string.
pub(super) mod i64_string {
    use super::*;

    pub(in crate::fleet::etcd) fn serialize<S: Serializer>(
        value: &i64,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_str(value)
    }

    pub(in crate::fleet::etcd) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<i64, D::Error> {
        deserializer.deserialize_any(I64Visitor)
    }

    struct I64Visitor;

    impl Visitor<'_> for I64Visitor {
        type Value = i64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a 64-bit integer (a string of digits)")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<i64, E> {
            text.parse()
                .map_err(|_| E::invalid_value(de::Unexpected::Str(text), &self))
        }

        fn visit_i64<E: de::Error>(self, value: i64) -> Result<i64, E> {
            Ok(value)
        }

        fn visit_u64<E: de::Error>(self, value: u64) -> Result<i64, E> {
            i64::try_from(value)
                .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(value), &self))
        }
    }
}

/// Bytes, written and read as standard base64 (etcd's keys and values).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct B64(pub(super) Vec<u8>);

impl Serialize for B64 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for B64 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<B64, D::Error> {
        struct B64Visitor;

        impl Visitor<'_> for B64Visitor {
            type Value = B64;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("base64")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<B64, E> {
                STANDARD
                    .decode(text)
                    .map(B64)
                    .map_err(|_| E::custom("a value that is not base64"))
            }
        }

        deserializer.deserialize_str(B64Visitor)
    }
}

/// A message that must be a JSON object: serde's derive would also take an array, reading the
/// fields by position, and something that is not etcd's must not pass for its answer that way.
/// For `#[serde(deserialize_with = "object")]`.
pub(super) fn object<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    deserializer.deserialize_map(ObjectVisitor(PhantomData))
}

/// An optional message, a JSON object when present (see [`object`]); with `#[serde(default)]`.
pub(super) fn some_object<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    object(deserializer).map(Some)
}

/// A list of messages, each a JSON object (see [`object`]).
pub(super) fn objects<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Vec::<Object<T>>::deserialize(deserializer)?
        .into_iter()
        .map(|o| o.0)
        .collect())
}

/// `T`, read only from a JSON object (see [`object`]).
#[derive(Debug)]
pub(super) struct Object<T>(pub(super) T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Object<T>, D::Error> {
        object(deserializer).map(Object)
    }
}

struct ObjectVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(MapAccessDeserializer::new(map))
    }
}

/// A field of an error answer: its value when it has type `T`, `None` when it is absent or of
/// another type (an error is reported whatever its fields hold).
#[derive(Debug)]
pub(super) struct Loose<T>(pub(super) Option<T>);

impl<T> Default for Loose<T> {
    fn default() -> Self {
        Loose(None)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Loose<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Loose<T>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either<T> {
            Is(T),
            Other(IgnoredAny),
        }
        Ok(match Either::deserialize(deserializer)? {
            Either::Is(value) => Loose(Some(value)),
            Either::Other(_) => Loose(None),
        })
    }
}

/// An `int64` read leniently, as the gateway's error fields are: a number or a string of
/// digits, anything else `None`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct LooseI64(pub(super) Option<i64>);

impl<'de> Deserialize<'de> for LooseI64 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<LooseI64, D::Error> {
        #[derive(Deserialize)]
        struct Int(#[serde(with = "i64_string")] i64);
        Ok(LooseI64(
            Loose::<Int>::deserialize(deserializer)?.0.map(|i| i.0),
        ))
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    struct Revision {
        #[serde(with = "i64_string")]
        revision: i64,
    }

    #[derive(Debug, Deserialize)]
    struct Outer {
        #[serde(deserialize_with = "object")]
        inner: Revision,
    }

    #[test]
    fn an_int64_is_written_as_a_string_and_read_from_a_string_or_a_number() {
        let written = serde_json::to_string(&Revision { revision: -7 }).expect("serializes");
        assert_eq!(
            written, r#"{"revision":"-7"}"#,
            "an int64 must be written as a string"
        );
        for text in [r#"{"revision":"42"}"#, r#"{"revision":42}"#] {
            let read: Revision = serde_json::from_str(text).expect(text);
            assert_eq!(read.revision, 42, "{text} was misread");
        }
    }

    #[test]
    fn an_int64_that_is_no_integer_is_refused() {
        for text in [
            r#"{"revision":"4x"}"#,
            r#"{"revision":1.5}"#,
            r#"{"revision":true}"#,
            r#"{"revision":null}"#,
            r#"{"revision":"99999999999999999999"}"#,
            r#"{"revision":18446744073709551615}"#,
        ] {
            assert!(
                serde_json::from_str::<Revision>(text).is_err(),
                "{text} was taken for an int64"
            );
        }
    }

    #[test]
    fn bytes_round_trip_through_base64_and_what_is_not_base64_is_refused() {
        let written = serde_json::to_string(&B64(b"/a".to_vec())).expect("serializes");
        assert_eq!(
            written, r#""L2E=""#,
            "bytes must be written as standard base64"
        );
        let read: B64 = serde_json::from_str(&written).expect("reads back");
        assert_eq!(read.0, b"/a", "base64 read back wrongly");
        for text in [r#""!!!""#, "5", "null", "[]"] {
            assert!(
                serde_json::from_str::<B64>(text).is_err(),
                "{text} was taken for base64"
            );
        }
    }

    #[test]
    fn a_message_is_read_only_from_an_object_never_from_an_array_by_position() {
        let read: Outer = serde_json::from_str(r#"{"inner":{"revision":"3"}}"#).expect("object");
        assert_eq!(read.inner.revision, 3, "the object was misread");
        assert!(
            serde_json::from_str::<Outer>(r#"{"inner":["3"]}"#).is_err(),
            "an array was read as a message by position"
        );
        let list: Vec<Object<Revision>> =
            serde_json::from_str(r#"[{"revision":"1"}]"#).expect("a list of objects");
        assert_eq!(list[0].0.revision, 1, "the list was misread");
    }

    #[test]
    fn a_loose_field_of_another_type_is_absent_not_an_error() {
        let cases = [
            ("5", Some(5)),
            (r#""14""#, Some(14)),
            (r#""x""#, None),
            ("{}", None),
            ("null", None),
            ("1.5", None),
        ];
        for (text, want) in cases {
            let read: LooseI64 = serde_json::from_str(text).expect(text);
            assert_eq!(read.0, want, "{text} was read as {:?}", read.0);
        }
        let text: Loose<String> = serde_json::from_str("7").expect("a number");
        assert_eq!(text.0, None, "a number was taken for a string");
    }
}
