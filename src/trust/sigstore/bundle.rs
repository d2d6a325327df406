//! A keyless cosign signature: a Sigstore bundle v0.3 (DSSE over an in-toto
//! statement, a Fulcio leaf, Rekor v1 entries) verified offline against a
//! trusted root, in the order the reference verifiers agree on.
//!
//! Invariants:
//! - The only time used is a Rekor integrated time whose SET verifies with
//!   a log of the root valid then; the entry must also carry an inclusion
//!   proof and a checkpoint signed by that log (bundles from v0.2 on).
//! - The log entry is the entry of *this* signature: its body names the
//!   bundle's signature, leaf certificate and payload hash (CVE-2022-36056).
//! - The leaf chains to a root CA at that time, carries a verified SCT, and
//!   its key signed the statement, which names the image's digest.
//! - Whom the signer is ([`SignerIdentity`]) is returned, not judged: the
//!   policy decides whether the identity is wanted.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;
use x509_cert::der::{Decode, Encode};
use x509_cert::Certificate;

use super::cert::{signer_identity, verify_chain, CertError, SignerIdentity};
use super::root::{Log, TrustedRoot};
use super::sct::{verify_embedded_sct, SctError};
use super::tlog::{
    leaf_hash, verify_checkpoint, verify_inclusion, verify_set, SetPayload, TlogError,
};
use crate::oci::Digest;
use crate::trust::keys::PublicKey;
use crate::trust::verify::{verify_bundle, SigError};

/// sigstore-go's cap on log entries per bundle.
const MAX_ENTRIES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum KeylessError {
    #[error("keyless bundle is malformed: {0}")]
    Malformed(String),
    #[error("transparency log: {0}")]
    Log(String),
    #[error(transparent)]
    Tlog(#[from] TlogError),
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error(transparent)]
    Sct(#[from] SctError),
    #[error(transparent)]
    Signature(#[from] SigError),
}

/// A keyless signature that holds.
#[derive(Debug, Clone)]
pub struct KeylessSignature {
    pub identity: SignerIdentity,
    /// When the log recorded the signature (the trusted time).
    pub integrated_time: OffsetDateTime,
    /// The log entry's global index and the log's base URL.
    pub log_index: i64,
    pub log: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bundle {
    verification_material: Material,
    dsse_envelope: Option<Envelope>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Material {
    certificate: Option<RawBytes>,
    x509_certificate_chain: Option<Chain>,
    #[serde(default)]
    tlog_entries: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBytes {
    raw_bytes: String,
}

#[derive(Deserialize)]
struct Chain {
    certificates: Vec<RawBytes>,
}

#[derive(Deserialize)]
struct Envelope {
    payload: String,
    signatures: Vec<EnvelopeSig>,
}

#[derive(Deserialize)]
struct EnvelopeSig {
    sig: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    log_index: Value,
    log_id: KeyId,
    kind_version: KindVersion,
    integrated_time: Value,
    inclusion_promise: Option<Promise>,
    inclusion_proof: Option<Proof>,
    canonicalized_body: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyId {
    key_id: String,
}

#[derive(Deserialize)]
struct KindVersion {
    kind: String,
    version: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Promise {
    signed_entry_timestamp: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Proof {
    log_index: Value,
    root_hash: String,
    tree_size: Value,
    #[serde(default)]
    hashes: Vec<String>,
    checkpoint: Option<Checkpoint>,
}

#[derive(Deserialize)]
struct Checkpoint {
    envelope: String,
}

/// A Rekor `dsse` 0.0.1 entry body, the parts that bind it to a bundle.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DsseBody {
    api_version: String,
    kind: String,
    spec: DsseSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DsseSpec {
    payload_hash: Hash,
    signatures: Vec<BodySig>,
}

#[derive(Deserialize)]
struct Hash {
    algorithm: String,
    value: String,
}

#[derive(Deserialize)]
struct BodySig {
    signature: String,
    verifier: String,
}

pub(super) fn malformed(what: impl std::fmt::Display) -> KeylessError {
    KeylessError::Malformed(what.to_string())
}

/// protobuf-JSON int64: a string, or a number from lenient writers.
pub(super) fn int(v: &Value, what: &str) -> Result<i64, KeylessError> {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .ok_or_else(|| malformed(format!("{what} is not an integer")))
}

pub(super) fn b64(s: &str, what: &str) -> Result<Vec<u8>, KeylessError> {
    B64.decode(s)
        .map_err(|_| malformed(format!("{what} is not base64")))
}

/// Verifies a keyless bundle for `image` against `root`.
pub fn verify_keyless(
    bundle: &[u8],
    root: &TrustedRoot,
    image: &Digest,
) -> Result<KeylessSignature, KeylessError> {
    crate::oci::json::check_strict(bundle).map_err(malformed)?;
    let b: Bundle = serde_json::from_slice(bundle).map_err(malformed)?;
    let leaf = match (
        &b.verification_material.certificate,
        &b.verification_material.x509_certificate_chain,
    ) {
        (Some(c), _) => b64(&c.raw_bytes, "certificate")?,
        (None, Some(chain)) => b64(
            &chain
                .certificates
                .first()
                .ok_or_else(|| malformed("empty certificate chain"))?
                .raw_bytes,
            "certificate",
        )?,
        (None, None) => return Err(malformed("no signing certificate (a keyed bundle?)")),
    };
    let env = b
        .dsse_envelope
        .as_ref()
        .ok_or_else(|| malformed("no dsseEnvelope"))?;
    let payload = b64(&env.payload, "DSSE payload")?;
    let entries = &b.verification_material.tlog_entries;
    if entries.len() > MAX_ENTRIES {
        return Err(malformed(format!("more than {MAX_ENTRIES} log entries")));
    }
    let mut seen = std::collections::HashSet::new();
    let mut last =
        KeylessError::Log("the bundle has no entry from a log of the trusted root".into());
    for entry in entries {
        if !seen.insert((entry.log_id.key_id.as_str(), entry.log_index.to_string())) {
            return Err(malformed("a log entry appears twice"));
        }
        let Some(log) = root.tlog(&b64(&entry.log_id.key_id, "log id")?) else {
            continue;
        };
        match check_entry(entry, log, &leaf, env, &payload) {
            Ok(at) => {
                let (identity, key) = verify_leaf(root, &leaf, at)?;
                verify_bundle(bundle, &key, image)?;
                return Ok(KeylessSignature {
                    identity,
                    integrated_time: at,
                    log_index: int(&entry.log_index, "logIndex")?,
                    log: log.base_url.clone(),
                });
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Checks one log entry: it is this signature's, its SET, proof and
/// checkpoint hold, and the log was valid then. Returns the trusted time.
fn check_entry(
    entry: &Entry,
    log: &Log,
    leaf: &[u8],
    env: &Envelope,
    payload: &[u8],
) -> Result<OffsetDateTime, KeylessError> {
    let kv = &entry.kind_version;
    if (kv.kind.as_str(), kv.version.as_str()) != ("dsse", "0.0.1") {
        return Err(KeylessError::Log(format!(
            "entry kind {} {} is not dsse 0.0.1",
            kv.kind, kv.version
        )));
    }
    let body_bytes = b64(&entry.canonicalized_body, "canonicalizedBody")?;
    let body: DsseBody = serde_json::from_slice(&body_bytes).map_err(malformed)?;
    if (body.kind.as_str(), body.api_version.as_str()) != ("dsse", "0.0.1") {
        return Err(KeylessError::Log(
            "entry body is not the kind it claims".into(),
        ));
    }
    let payload_hash = hex::encode(Sha256::digest(payload));
    let spec = &body.spec;
    let binds = spec.payload_hash.algorithm == "sha256"
        && spec.payload_hash.value == payload_hash
        && spec.signatures.len() == env.signatures.len()
        && spec.signatures.iter().all(|s| {
            env.signatures.iter().any(|e| e.sig == s.signature)
                && pem_cert_der(&s.verifier).as_deref() == Some(leaf)
        });
    if !binds {
        return Err(KeylessError::Log(
            "the log entry records another signature, certificate or payload than the bundle's"
                .into(),
        ));
    }
    let promise = entry
        .inclusion_promise
        .as_ref()
        .ok_or_else(|| KeylessError::Log("no inclusion promise, so no trusted time".into()))?;
    let (at, _) = trusted_time(
        log,
        &entry.canonicalized_body,
        &entry.integrated_time,
        &entry.log_index,
        &promise.signed_entry_timestamp,
    )?;
    let proof = entry.inclusion_proof.as_ref().ok_or_else(|| {
        KeylessError::Log("no inclusion proof (required for bundles from v0.2 on)".into())
    })?;
    let root_hash: [u8; 32] = b64(&proof.root_hash, "rootHash")?
        .try_into()
        .map_err(|_| malformed("rootHash is not 32 bytes"))?;
    let hashes = proof
        .hashes
        .iter()
        .map(|h| {
            b64(h, "proof hash")?
                .try_into()
                .map_err(|_| malformed("a proof hash is not 32 bytes"))
        })
        .collect::<Result<Vec<[u8; 32]>, _>>()?;
    let index = u64::try_from(int(&proof.log_index, "proof logIndex")?).map_err(malformed)?;
    let size = u64::try_from(int(&proof.tree_size, "treeSize")?).map_err(malformed)?;
    verify_inclusion(leaf_hash(&body_bytes), index, size, &hashes, &root_hash)?;
    let checkpoint = proof
        .checkpoint
        .as_ref()
        .ok_or_else(|| KeylessError::Log("the inclusion proof has no checkpoint".into()))?;
    let note = verify_checkpoint(log, &checkpoint.envelope)?;
    if note.size != size || note.root != root_hash {
        return Err(KeylessError::Log(
            "the checkpoint commits to another tree than the proof".into(),
        ));
    }
    Ok(at)
}

/// Steps 1–3 for a leaf at a trusted time: it chains to a CA of the root
/// and may sign code, a CT log of the root saw it, and it names a signer.
/// Returns the signer and the leaf's key.
pub(super) fn verify_leaf(
    root: &TrustedRoot,
    leaf: &[u8],
    at: OffsetDateTime,
) -> Result<(SignerIdentity, PublicKey), KeylessError> {
    let ca = verify_chain(root, leaf, at)?;
    let issuer = ca
        .chain
        .first()
        .ok_or_else(|| malformed("a certificate authority without certificates"))?;
    verify_embedded_sct(root, leaf, issuer)?;
    Ok((signer_identity(leaf)?, leaf_key(leaf)?))
}

/// Step 0, the trusted time: the integrated time of an entry whose SET
/// verifies with `log`, which must have been valid then. Returns the time
/// and the entry's global log index.
pub(super) fn trusted_time(
    log: &Log,
    body_b64: &str,
    integrated_time: &Value,
    log_index: &Value,
    set_b64: &str,
) -> Result<(OffsetDateTime, i64), KeylessError> {
    let integrated = int(integrated_time, "integratedTime")?;
    let log_index = int(log_index, "logIndex")?;
    verify_set(
        log,
        &SetPayload {
            body_b64,
            integrated_time: integrated,
            log_index,
        },
        set_b64,
    )?;
    let at = OffsetDateTime::from_unix_timestamp(integrated).map_err(malformed)?;
    if !log.valid.contains(at) {
        return Err(KeylessError::Log(format!(
            "{} was not a trusted log at the integrated time",
            log.base_url
        )));
    }
    Ok((at, log_index))
}

/// The DER of a base64-encoded PEM certificate (how Rekor records one).
pub(super) fn pem_cert_der(b64_pem: &str) -> Option<Vec<u8>> {
    pem_to_der(&String::from_utf8(B64.decode(b64_pem).ok()?).ok()?)
}

/// The DER of the first certificate of a PEM text.
pub(super) fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != "-----BEGIN CERTIFICATE-----")
        .skip(1)
        .take_while(|l| *l != "-----END CERTIFICATE-----")
        .collect();
    B64.decode(body).ok()
}

fn leaf_key(leaf: &[u8]) -> Result<PublicKey, KeylessError> {
    let cert = Certificate::from_der(leaf).map_err(malformed)?;
    let spki = cert
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(malformed)?;
    PublicKey::from_spki_der(&spki).map_err(malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::sigstore::testdata::{bundle, fixture, root};

    /// Runs one vector; returns its case description and the verdict.
    fn run(name: &str) -> (Value, Result<KeylessSignature, KeylessError>) {
        let case: Value = serde_json::from_slice(&fixture(&format!("{name}/case.json"))).unwrap();
        let image: Digest = case["image_digest"].as_str().unwrap().parse().unwrap();
        (case, verify_keyless(&bundle(name), &root(name), &image))
    }

    #[test]
    fn every_bundle_vector_gets_the_verdict_another_implementation_gave() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keyless");
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("bundle-"))
            .collect();
        names.sort();
        assert!(names.len() >= 19, "{names:?}");
        for name in names {
            let (case, verdict) = run(&name);
            let policy_case = case["reason"].as_str().unwrap().starts_with("policy:");
            let identity_ok = |id: &SignerIdentity| {
                id.subjects
                    .iter()
                    .any(|s| s == case["expected_identity"].as_str().unwrap())
                    && id.issuer == case["expected_issuer"].as_str().unwrap()
            };
            match (case["expect"].as_str().unwrap(), verdict) {
                ("verify", Ok(sig)) => {
                    assert!(identity_ok(&sig.identity), "{name}: {:?}", sig.identity);
                    assert_eq!(
                        sig.integrated_time.unix_timestamp(),
                        case["integrated_time"].as_i64().unwrap()
                    );
                    assert_eq!(sig.log_index, case["rekor_log_index"].as_i64().unwrap());
                }
                // The signature holds; the policy's identity does not match.
                ("reject", Ok(sig)) if policy_case => {
                    assert!(!identity_ok(&sig.identity), "{name}")
                }
                ("reject", Err(e)) if !policy_case => eprintln!("{name}: {e}"),
                (expect, verdict) => panic!("{name}: expected {expect}, got {verdict:?}"),
            }
        }
    }

    #[test]
    fn refusals_say_what_failed() {
        for (name, needle) in [
            (
                "bundle-cert-mismatch",
                "another signature, certificate or payload",
            ),
            ("bundle-claim-digest", "names sha256:"),
            ("bundle-no-inclusion-proof", "no inclusion proof"),
            ("bundle-no-sct", "no signed certificate timestamp"),
            (
                "bundle-wrong-log-id",
                "no entry from a log of the trusted root",
            ),
            ("bundle-eku-server-auth", "may not sign code"),
            ("bundle-bad-set", "signed entry timestamp"),
        ] {
            let err = run(name).1.unwrap_err().to_string();
            assert!(err.contains(needle), "{name}: {err}");
        }
    }

    #[test]
    fn a_keyed_or_truncated_bundle_is_malformed() {
        let root = root("bundle-valid-uri");
        let image: Digest = format!("sha256:{}", "0".repeat(64)).parse().unwrap();
        for bad in [
            &br#"{"mediaType":"x","verificationMaterial":{"publicKey":{"hint":"k"}},"dsseEnvelope":{"payload":"","payloadType":"x","signatures":[]}}"#[..],
            b"{",
            br#"{"verificationMaterial":{},"verificationMaterial":{}}"#,
        ] {
            assert!(matches!(verify_keyless(bad, &root, &image), Err(KeylessError::Malformed(_))));
        }
    }
}
