//! Strict JSON for documents the gate decides on (manifests, indexes,
//! configs, signature payloads, bundles).
//!
//! Go's `encoding/json` (containerd, podman, skopeo, distribution) matches
//! object keys case-insensitively and lets the last one win, while serde
//! matches them exactly. A document with `"layers"` and `"Layers"`, or
//! `"Labels"` and `"labels"`, would then mean one thing to modelgate and
//! another to the client that runs it. [`parse_strict`] refuses such
//! documents outright: no object may hold two keys that are equal under
//! Unicode simple case folding (the folding Go uses, so `ſ` equals `s` and
//! the Kelvin sign equals `k`).

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::fmt;

/// Why a document is not strict JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JsonError(pub String);

/// Fold a key the way Go compares keys: every character to one case form.
fn fold(key: &str) -> String {
    key.chars()
        .flat_map(|c| c.to_uppercase())
        .flat_map(|c| c.to_lowercase())
        .collect()
}

struct StrictValue(Value);

impl<'de> de::Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        let mut seen: HashSet<String> = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(fold(&key)) {
                let other = out
                    .keys()
                    .find(|k| fold(k) == fold(&key))
                    .cloned()
                    .unwrap_or_else(|| key.clone());
                let what = if other == key {
                    format!("duplicate key {key:?}")
                } else {
                    format!("keys {other:?} and {key:?} differ only by case")
                };
                return Err(de::Error::custom(format!(
                    "{what}: Go clients (containerd, podman, skopeo) would read the last one, so modelgate refuses the document"
                )));
            }
            let StrictValue(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// Parse `bytes` as JSON, refusing duplicate keys and keys that differ only
/// by case in any object.
pub fn parse_strict(bytes: &[u8]) -> Result<Value, JsonError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let StrictValue(v) = de::Deserialize::deserialize(&mut de)
        .map_err(|e| JsonError(format!("not acceptable JSON: {e}")))?;
    de.end()
        .map_err(|e| JsonError(format!("not acceptable JSON: {e}")))?;
    Ok(v)
}

/// Check only (the caller parses with its own types afterwards).
pub fn check_strict(bytes: &[u8]) -> Result<(), JsonError> {
    parse_strict(bytes).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_documents() {
        let v = parse_strict(br#"{"a":{"b":[1,2,{"c":null}]},"d":"x","e":1.5}"#).unwrap();
        assert_eq!(v["a"]["b"][2]["c"], Value::Null);
        assert_eq!(v["e"], 1.5);
    }

    #[test]
    fn refuses_duplicates_and_case_twins_at_any_depth() {
        let e = parse_strict(br#"{"layers":[],"layers":[]}"#).unwrap_err();
        assert!(e.0.contains("duplicate key \"layers\""), "{e}");
        let e = parse_strict(br#"{"layers":[],"Layers":[]}"#).unwrap_err();
        assert!(e.0.contains("differ only by case"), "{e}");
        let e = parse_strict(br#"{"config":{"Labels":{},"labels":{}}}"#).unwrap_err();
        assert!(e.0.contains("\"Labels\" and \"labels\""), "{e}");
        let e = parse_strict(br#"[{"a":1},{"x":1,"X":2}]"#).unwrap_err();
        assert!(e.0.contains("differ only by case"), "{e}");
        // Go folds the long s and the Kelvin sign too.
        assert!(parse_strict("{\"layers\":1,\"layer\u{17f}\":2}".as_bytes()).is_err());
        assert!(parse_strict("{\"kind\":1,\"\u{212a}ind\":2}".as_bytes()).is_err());
        // Keys that merely look alike are fine.
        assert!(parse_strict(br#"{"layer":1,"layers":2}"#).is_ok());
    }

    #[test]
    fn refuses_trailing_garbage() {
        assert!(parse_strict(br#"{"a":1} x"#).is_err());
        assert!(parse_strict(b"").is_err());
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(crate::proptests::config())]

        #[test]
        fn any_bytes_parse_or_refuse(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_strict(&bytes);
        }

        /// A document a serializer wrote (no duplicate keys) parses to
        /// itself; the same with one key written twice is refused.
        #[test]
        fn documents_round_trip_and_twins_are_refused(v in crate::proptests::json()) {
            let text = serde_json::to_string(&v).unwrap();
            prop_assert_eq!(parse_strict(text.as_bytes()).unwrap(), v.clone());
            if let Some((k, x)) = v.as_object().and_then(|o| o.iter().next()) {
                let twin = format!("{{{}:{},{}", serde_json::to_string(k).unwrap(), x, &text[1..]);
                prop_assert!(parse_strict(twin.as_bytes()).is_err(), "{}", twin);
            }
        }
    }
}
