//! A keyless cosign signature in the legacy form: a simple-signing layer
//! of the `sha256-<hex>.sig` manifest whose annotations carry the Fulcio
//! leaf, a chain, and Rekor's inclusion promise (cosign `VerifyBundle`).
//!
//! Invariants:
//! - The legacy form has no inclusion proof: the time is the integrated
//!   time of a SET that verifies with a log of the root valid then.
//! - The `hashedrekord` entry must record this layer's signature, this leaf
//!   and the payload's hash (CVE-2022-36056).
//! - The `chain` annotation is never trusted: the leaf must chain to a CA
//!   of the trusted root with that CA's own intermediates.

use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use super::bundle::{b64, malformed, pem_cert_der, pem_to_der, trusted_time, verify_leaf};
use super::bundle::{KeylessError, KeylessSignature};
use super::root::TrustedRoot;
use crate::oci::Digest;
use crate::trust::verify::{verify_simple_signing, SIGNATURE_ANNOTATION};

/// The Fulcio leaf (PEM) of a keyless layer.
pub const CERTIFICATE_ANNOTATION: &str = "dev.sigstore.cosign/certificate";
/// Rekor's inclusion promise for the layer.
pub const BUNDLE_ANNOTATION: &str = "dev.sigstore.cosign/bundle";

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Promise {
    signed_entry_timestamp: String,
    payload: PromisePayload,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromisePayload {
    body: String,
    integrated_time: Value,
    log_index: Value,
    #[serde(rename = "logID")]
    log_id: String,
}

/// A Rekor `hashedrekord` 0.0.1 body, the parts that bind it to a layer.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HashedRekord {
    api_version: String,
    kind: String,
    spec: Spec,
}

#[derive(Deserialize)]
struct Spec {
    data: Data,
    signature: BodySignature,
}

#[derive(Deserialize)]
struct Data {
    hash: Hash,
}

#[derive(Deserialize)]
struct Hash {
    algorithm: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BodySignature {
    content: String,
    public_key: Content,
}

#[derive(Deserialize)]
struct Content {
    content: String,
}

/// Whether a layer's annotations make it a keyless signature.
pub fn is_keyless_layer(annotations: &Map<String, Value>) -> bool {
    annotations.contains_key(CERTIFICATE_ANNOTATION)
}

/// Verifies a legacy keyless layer: `payload` is the simple-signing blob,
/// `annotations` the layer's annotations.
pub fn verify_keyless_legacy(
    payload: &[u8],
    annotations: &Map<String, Value>,
    root: &TrustedRoot,
    image: &Digest,
) -> Result<KeylessSignature, KeylessError> {
    let text = |key: &str| {
        annotations
            .get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| malformed(format!("layer annotation {key} is missing")))
    };
    let sig_b64 = text(SIGNATURE_ANNOTATION)?;
    let leaf = pem_to_der(text(CERTIFICATE_ANNOTATION)?)
        .ok_or_else(|| malformed("the certificate annotation is not a PEM certificate"))?;
    let promise_json = text(BUNDLE_ANNOTATION)
        .map_err(|_| KeylessError::Log("no Rekor bundle annotation, so no trusted time".into()))?;
    crate::oci::json::check_strict(promise_json.as_bytes()).map_err(malformed)?;
    let promise: Promise = serde_json::from_str(promise_json).map_err(malformed)?;
    let p = &promise.payload;
    let log = root.tlog_by_hex(&p.log_id).ok_or_else(|| {
        KeylessError::Log(format!(
            "the bundle has no entry from a log of the trusted root (logID {})",
            p.log_id
        ))
    })?;
    let body_bytes = b64(&p.body, "Rekor body")?;
    let body: HashedRekord = serde_json::from_slice(&body_bytes).map_err(malformed)?;
    let binds = (body.kind.as_str(), body.api_version.as_str()) == ("hashedrekord", "0.0.1")
        && body.spec.data.hash.algorithm == "sha256"
        && body.spec.data.hash.value == hex::encode(Sha256::digest(payload))
        && b64(&body.spec.signature.content, "entry signature")? == b64(sig_b64, "signature")?
        && pem_cert_der(&body.spec.signature.public_key.content).as_deref() == Some(&leaf[..]);
    if !binds {
        return Err(KeylessError::Log(
            "the log entry records another signature, certificate or payload than the layer's"
                .into(),
        ));
    }
    let (at, log_index) = trusted_time(
        log,
        &p.body,
        &p.integrated_time,
        &p.log_index,
        &promise.signed_entry_timestamp,
    )?;
    let (identity, key) = verify_leaf(root, &leaf, at)?;
    verify_simple_signing(payload, sig_b64, &key, image)?;
    Ok(KeylessSignature {
        identity,
        integrated_time: at,
        log_index,
        log: log.base_url.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::sigstore::testdata::{fixture, root};

    /// Runs one legacy vector: its case and the verdict for its layer.
    fn run(name: &str) -> (Value, Result<KeylessSignature, KeylessError>) {
        let case: Value = serde_json::from_slice(&fixture(&format!("{name}/case.json"))).unwrap();
        let m: Value =
            serde_json::from_slice(&fixture(&format!("{name}/signature/manifest.json"))).unwrap();
        let layer = &m["layers"][0];
        let pd = layer["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:");
        let payload = fixture(&format!("{name}/signature/blobs/{pd}"));
        let image: Digest = case["image_digest"].as_str().unwrap().parse().unwrap();
        let ann = layer["annotations"].as_object().unwrap();
        assert!(is_keyless_layer(ann));
        (
            case,
            verify_keyless_legacy(&payload, ann, &root(name), &image),
        )
    }

    #[test]
    fn every_legacy_vector_gets_the_verdict_another_implementation_gave() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keyless");
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("legacy-"))
            .collect();
        names.sort();
        assert_eq!(names.len(), 9, "{names:?}");
        for name in names {
            let (case, verdict) = run(&name);
            match (case["expect"].as_str().unwrap(), verdict) {
                ("verify", Ok(sig)) => {
                    let id = &sig.identity;
                    assert!(id
                        .subjects
                        .iter()
                        .any(|s| s == case["expected_identity"].as_str().unwrap()));
                    assert_eq!(id.issuer, case["expected_issuer"].as_str().unwrap());
                    assert_eq!(sig.log_index, case["rekor_log_index"].as_i64().unwrap());
                }
                ("reject", Err(e)) => eprintln!("{name}: {e}"),
                (expect, verdict) => panic!("{name}: expected {expect}, got {verdict:?}"),
            }
        }
    }

    #[test]
    fn legacy_refusals_say_what_failed() {
        for (name, needle) in [
            ("legacy-cert-mismatch", "records another signature"),
            ("legacy-claim-digest", "names sha256:"),
            (
                "legacy-wrong-log-id",
                "no entry from a log of the trusted root",
            ),
            ("legacy-untrusted-root", "does not chain"),
            ("legacy-time-outside-cert", "CertExpired"),
            ("legacy-bad-set", "signed entry timestamp"),
            ("legacy-swap-log-index", "signed entry timestamp"),
        ] {
            let err = run(name).1.unwrap_err().to_string();
            assert!(err.contains(needle), "{name}: {err}");
        }
    }
}
