//! Building signature artifacts in cosign's formats (what `modelgate sign`
//! pushes): the legacy `sha256-<hex>.sig` manifest with one simple-signing
//! layer per signature, and the Sigstore bundle v0.3 referrer.

use super::keys::PrivateKey;
use super::verify::{
    pae, BUNDLE_V03, COSIGN_SIGN_PREDICATE, INTOTO_PAYLOAD, INTOTO_STATEMENT_V1,
    SIGNATURE_ANNOTATION, SIMPLE_SIGNING, SIMPLE_SIGNING_TYPE,
};
use crate::oci::media::OCI_MANIFEST;
use crate::oci::Digest;
use base64::Engine;
use serde_json::{json, Value};

/// The config blob of bundle referrers: `{}`.
pub const EMPTY_JSON: &[u8] = b"{}";
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// The simple-signing payload, byte for byte as cosign writes it.
pub fn simple_signing_payload(docker_reference: &str, digest: &Digest) -> Vec<u8> {
    // Written out by hand: the bytes must be cosign's (its Go struct order).
    format!(
        r#"{{"critical":{{"identity":{{"docker-reference":{}}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"{SIMPLE_SIGNING_TYPE}"}},"optional":null}}"#,
        serde_json::to_string(docker_reference).unwrap_or_else(|_| "\"\"".into())
    )
    .into_bytes()
}

/// A legacy signature: the payload blob and the layer that carries its signature.
pub struct LegacySignature {
    pub payload: Vec<u8>,
    pub payload_digest: Digest,
    pub signature_b64: String,
}

pub fn sign_legacy(key: &PrivateKey, docker_reference: &str, digest: &Digest) -> LegacySignature {
    let payload = simple_signing_payload(docker_reference, digest);
    let sig = key.sign(&payload);
    LegacySignature {
        payload_digest: Digest::of(&payload),
        signature_b64: b64(&sig),
        payload,
    }
}

/// The `.sig` manifest and its config after appending `sig` to `existing`
/// (cosign appends one layer per signature). Returns (config, manifest).
pub fn legacy_manifest(existing: Option<&[u8]>, sig: &LegacySignature) -> (Vec<u8>, Vec<u8>) {
    let mut layers: Vec<Value> = existing
        .and_then(|b| serde_json::from_slice::<Value>(b).ok())
        .and_then(|v| v.get("layers").and_then(|l| l.as_array()).cloned())
        .unwrap_or_default();
    let payload_digest = sig.payload_digest.to_string();
    let already = layers.iter().any(|l| {
        l["digest"] == payload_digest.as_str()
            && l["annotations"][SIGNATURE_ANNOTATION] == sig.signature_b64.as_str()
    });
    if !already {
        layers.push(json!({
            "mediaType": SIMPLE_SIGNING,
            "size": sig.payload.len(),
            "digest": payload_digest,
            "annotations": {SIGNATURE_ANNOTATION: sig.signature_b64},
        }));
    }
    let diff_ids: Vec<Value> = layers.iter().map(|l| l["digest"].clone()).collect();
    let history: Vec<Value> = layers
        .iter()
        .map(|_| json!({"created": "0001-01-01T00:00:00Z"}))
        .collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "", "created": "0001-01-01T00:00:00Z", "history": history, "os": "",
        "rootfs": {"type": "layers", "diff_ids": diff_ids}, "config": {},
    }))
    .unwrap_or_default();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": config.len(), "digest": Digest::of(&config).to_string()},
        "layers": layers,
    }))
    .unwrap_or_default();
    (config, manifest)
}

/// The in-toto statement cosign v3 signs for an image.
pub fn statement(digest: &Digest) -> Vec<u8> {
    format!(
        r#"{{"_type":"{INTOTO_STATEMENT_V1}","subject":[{{"digest":{{"sha256":"{}"}},"annotations":{{}}}}],"predicateType":"{COSIGN_SIGN_PREDICATE}","predicate":{{}}}}"#,
        digest.hex()
    )
    .into_bytes()
}

/// A Sigstore bundle v0.3 with a DSSE envelope over the statement.
pub fn sign_bundle(key: &PrivateKey, digest: &Digest) -> Vec<u8> {
    let st = statement(digest);
    let sig = key.sign(&pae(INTOTO_PAYLOAD, &st));
    serde_json::to_vec(&json!({
        "mediaType": BUNDLE_V03,
        "verificationMaterial": {"publicKey": {"hint": key.public().hint()}},
        "dsseEnvelope": {"payload": b64(&st), "payloadType": INTOTO_PAYLOAD, "signatures": [{"sig": b64(&sig)}]},
    }))
    .unwrap_or_default()
}

/// The referrer manifest that carries a bundle, pointing at `subject`.
pub fn bundle_manifest(
    bundle: &[u8],
    subject_media_type: &str,
    subject: &Digest,
    subject_size: u64,
    created: &str,
) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": BUNDLE_V03,
        "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": Digest::of(EMPTY_JSON).to_string(), "size": 2},
        "layers": [{"mediaType": BUNDLE_V03, "digest": Digest::of(bundle).to_string(), "size": bundle.len()}],
        "subject": {"mediaType": subject_media_type, "digest": subject.to_string(), "size": subject_size},
        "annotations": {
            "dev.sigstore.bundle.content": "dsse-envelope",
            "dev.sigstore.bundle.predicateType": COSIGN_SIGN_PREDICATE,
            "org.opencontainers.image.created": created,
        },
    }))
    .unwrap_or_default()
}

/// The referrers tag-schema index with `referrer` added (for registries
/// without a referrers API).
pub fn add_to_referrers_index(existing: Option<&[u8]>, referrer: &[u8]) -> Vec<u8> {
    let mut list: Vec<Value> = existing
        .and_then(|b| serde_json::from_slice::<Value>(b).ok())
        .and_then(|v| v.get("manifests").and_then(|l| l.as_array()).cloned())
        .unwrap_or_default();
    let d = Digest::of(referrer).to_string();
    if !list.iter().any(|x| x["digest"] == d.as_str()) {
        let v: Value = serde_json::from_slice(referrer).unwrap_or(Value::Null);
        let mut desc = json!({"mediaType": OCI_MANIFEST, "digest": d, "size": referrer.len()});
        if let Some(t) = v.get("artifactType") {
            desc["artifactType"] = t.clone();
        }
        if let Some(a) = v.get("annotations") {
            desc["annotations"] = a.clone();
        }
        list.push(desc);
    }
    serde_json::to_vec(
        &json!({"schemaVersion": 2, "mediaType": crate::oci::media::OCI_INDEX, "manifests": list}),
    )
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::keys::Algorithm;
    use crate::trust::verify::{verify_bundle, verify_simple_signing};

    #[test]
    fn what_we_sign_we_verify() {
        let d = Digest::of(b"image");
        for alg in [Algorithm::Ed25519, Algorithm::EcdsaP256] {
            let k = PrivateKey::generate(alg).unwrap();
            let s = sign_legacy(&k, "registry.test/models/x", &d);
            assert!(String::from_utf8_lossy(&s.payload).starts_with(
                r#"{"critical":{"identity":{"docker-reference":"registry.test/models/x"}"#
            ));
            verify_simple_signing(&s.payload, &s.signature_b64, &k.public(), &d).unwrap();
            assert!(verify_simple_signing(
                &s.payload,
                &s.signature_b64,
                &k.public(),
                &Digest::of(b"other")
            )
            .is_err());
            let b = sign_bundle(&k, &d);
            verify_bundle(&b, &k.public(), &d).unwrap();
            let (_, m1) = legacy_manifest(None, &s);
            let s2 = sign_legacy(&PrivateKey::generate(alg).unwrap(), "x", &d);
            let (_, m2) = legacy_manifest(Some(&m1), &s2);
            let v: Value = serde_json::from_slice(&m2).unwrap();
            assert_eq!(v["layers"].as_array().unwrap().len(), 2);
            // Appending the same signature twice changes nothing.
            let (_, m3) = legacy_manifest(Some(&m2), &s2);
            assert_eq!(m2, m3);
        }
    }
}
