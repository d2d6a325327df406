//! modelgate: a streaming pull-through proxy for OCI registries that admits
//! only what its policy allows.
//!
//! Dependencies point one way, as the data flows (docs/ARCHITECTURE.md):
//! [`server`] (HTTP only) → [`gate`] (policy decisions, signatures,
//! evidence) → [`registry`] (content from the cache or the upstream) →
//! [`shared`] (several replicas: bucket, leases) → [`cache`], [`upstream`],
//! [`oci`]. [`policy`] and [`trust`] are pure;
//! [`error`] is the one place errors become what a client sees.

#![forbid(unsafe_code)]

pub mod audit;
pub mod cache;
pub mod commands;
pub mod config;
pub mod error;
pub mod gate;
pub mod metrics;
pub mod oci;
pub mod policy;
pub mod registry;
pub mod server;
pub mod shared;
pub mod trust;
pub mod upstream;

/// Strategies shared by the property tests beside the code (`cargo test`
/// runs them with a fixed budget of cases).
#[cfg(test)]
pub mod proptests {
    use proptest::prelude::*;
    use serde_json::Value;

    /// Cases per property: enough to find shallow panics, cheap in CI.
    pub const CASES: u32 = 256;

    pub fn config() -> ProptestConfig {
        ProptestConfig {
            cases: CASES,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    /// Any JSON document, up to a few levels deep, with keys drawn from
    /// the names OCI documents use (so that parsers get past their first
    /// check) and from arbitrary text.
    pub fn json() -> impl Strategy<Value = Value> {
        let key = prop_oneof![
            Just("mediaType".to_string()),
            Just("artifactType".to_string()),
            Just("config".to_string()),
            Just("layers".to_string()),
            Just("manifests".to_string()),
            Just("digest".to_string()),
            Just("size".to_string()),
            Just("annotations".to_string()),
            Just("descriptor".to_string()),
            Just("datasets".to_string()),
            Just("license".to_string()),
            "[a-zA-Z./_-]{0,12}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            // Decimals that print and read back exactly (serde_json's
            // default float reading is not round-trip exact at 17 digits).
            any::<i32>().prop_map(|n| Value::from(f64::from(n) / 1000.0)),
            prop_oneof![
                Just("application/vnd.oci.image.manifest.v1+json".to_string()),
                Just("application/vnd.cncf.model.config.v1+json".to_string()),
                Just("application/vnd.docker.ai.model.config.v0.1+json".to_string()),
                Just("application/vnd.kitops.modelkit.config.v1+json".to_string()),
                Just(
                    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
                        .to_string()
                ),
                ".{0,24}",
            ]
            .prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(key.clone(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// `bytes` with a few bytes replaced, inserted or removed.
    pub fn mutated(bytes: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
        let n = bytes.len().max(1);
        prop::collection::vec((0..n, any::<u8>(), 0u8..3), 1..4).prop_map(move |edits| {
            let mut b = bytes.clone();
            for (at, byte, op) in edits {
                let at = at.min(b.len());
                match op {
                    0 if at < b.len() => b[at] = byte,
                    1 => b.insert(at, byte),
                    _ if at < b.len() => {
                        b.remove(at);
                    }
                    _ => b.push(byte),
                }
            }
            b
        })
    }
}
