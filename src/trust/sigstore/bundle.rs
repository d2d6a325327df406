//! A Sigstore bundle (v0.1 to v0.3) verified offline against a trusted
//! root, in the order the reference verifiers agree on: the signature of a
//! keyless cosign image signature (DSSE over an in-toto statement naming
//! the image), and, for `modelgate verify-bundle`, of any artifact (message
//! signatures, DSSE, keyed or keyless, Rekor v1 and v2 entries, RFC 3161
//! timestamps).
//!
//! Invariants:
//! - Times come only from evidence the root vouches for: a Rekor v1
//!   integrated time whose SET verifies with a log valid then (never in
//!   the future), or an RFC 3161 timestamp from one of the root's timestamp
//!   authorities ([`super::tsa`]). At least one is needed, every one given
//!   must verify, and a signing certificate must be valid at each.
//! - Every log entry must come from a log of the root and be the entry of
//!   *this* signature: its body names the bundle's signature, signer
//!   (certificate or key) and artifact or payload hash (CVE-2022-36056).
//!   From v0.2 on it also needs an inclusion proof that ends in a
//!   checkpoint signed by that log.
//! - A leaf chains to a CA of the root at those times, may sign code,
//!   carries a verified SCT, and its key made the signature.
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
use super::tsa::{verify_timestamp, TsaError};
use crate::oci::Digest;
use crate::trust::keys::PublicKey;
use crate::trust::verify::{pae, verify_bundle, Envelope, SigError, INTOTO_PAYLOAD};

/// sigstore-go's cap on log entries and timestamps per bundle.
const MAX_ENTRIES: usize = 32;
/// Clock skew tolerated between a log and this machine.
const FUTURE_SKEW_SECS: i64 = 60;

#[derive(Debug, thiserror::Error)]
pub enum KeylessError {
    #[error("bundle is malformed: {0}")]
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
    #[error(transparent)]
    Timestamp(#[from] TsaError),
}

/// A keyless signature that holds.
#[derive(Debug, Clone)]
pub struct KeylessSignature {
    pub identity: SignerIdentity,
    /// The earliest trusted time of the signature (a log's integrated
    /// time, else a timestamp authority's).
    pub integrated_time: OffsetDateTime,
    /// The log entry's global index and the log's base URL.
    pub log_index: i64,
    pub log: String,
}

/// Who must have made a bundle's signature.
#[derive(Debug, Clone, Copy)]
pub enum Signer<'a> {
    /// A Fulcio certificate of the trusted root (keyless).
    Certificate,
    /// This key (a managed key; the bundle's hint proves nothing).
    Key(&'a PublicKey),
}

/// What was signed: its SHA-256 and, when at hand, its bytes.
#[derive(Debug, Clone, Copy)]
pub struct Artifact<'a> {
    pub sha256: [u8; 32],
    pub bytes: Option<&'a [u8]>,
}

/// What the signature must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A cosign image signature: a v0.3 DSSE in-toto statement with
    /// cosign's predicate naming the artifact (the manifest digest).
    ImageSignature,
    /// Any signature over the artifact (message signature, or a DSSE
    /// in-toto statement with the artifact as a subject).
    Artifact,
}

/// A bundle that verified.
#[derive(Debug, Clone)]
pub struct VerifiedBundle {
    /// The certificate's signer; `None` for a managed key.
    pub identity: Option<SignerIdentity>,
    /// Every trusted time, earliest first.
    pub times: Vec<OffsetDateTime>,
    /// The first log entry's global index and its log's base URL.
    pub log_index: i64,
    pub log: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bundle {
    media_type: String,
    verification_material: Material,
    message_signature: Option<MessageSignature>,
    dsse_envelope: Option<Envelope>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Material {
    certificate: Option<RawBytes>,
    x509_certificate_chain: Option<Chain>,
    public_key: Option<Value>,
    #[serde(default)]
    tlog_entries: Vec<Entry>,
    timestamp_verification_data: Option<TimestampData>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TimestampData {
    #[serde(default)]
    rfc3161_timestamps: Vec<SignedTimestamp>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignedTimestamp {
    signed_timestamp: String,
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
#[serde(rename_all = "camelCase")]
struct MessageSignature {
    message_digest: Option<MessageDigest>,
    signature: String,
}

#[derive(Deserialize)]
struct MessageDigest {
    algorithm: String,
    digest: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    log_index: Value,
    log_id: KeyId,
    kind_version: KindVersion,
    #[serde(default)]
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

/// The minor version of a bundle media type (0.1 → 1, ...).
fn bundle_version(media_type: &str) -> Option<u8> {
    match media_type {
        "application/vnd.dev.sigstore.bundle+json;version=0.1" => Some(1),
        "application/vnd.dev.sigstore.bundle+json;version=0.2" => Some(2),
        "application/vnd.dev.sigstore.bundle+json;version=0.3"
        | "application/vnd.dev.sigstore.bundle.v0.3+json" => Some(3),
        _ => None,
    }
}

/// The signed content of a bundle.
enum Content {
    Message {
        digest: Option<[u8; 32]>,
        signature: Vec<u8>,
    },
    Dsse {
        payload_type: String,
        payload: Vec<u8>,
        /// The signature as the envelope holds it (base64) and decoded.
        sig_b64: String,
        signature: Vec<u8>,
    },
}

impl Content {
    fn of(b: &Bundle) -> Result<Content, KeylessError> {
        match (&b.message_signature, &b.dsse_envelope) {
            (Some(m), None) => {
                let digest = match &m.message_digest {
                    None => None,
                    Some(d) if d.algorithm == "SHA2_256" => Some(
                        b64(&d.digest, "messageDigest")?
                            .try_into()
                            .map_err(|_| malformed("messageDigest is not 32 bytes"))?,
                    ),
                    Some(d) => return Err(malformed(format!("digest algorithm {}", d.algorithm))),
                };
                Ok(Content::Message {
                    digest,
                    signature: b64(&m.signature, "signature")?,
                })
            }
            (None, Some(e)) => {
                let [s] = e.signatures.as_slice() else {
                    return Err(malformed("a DSSE envelope needs exactly one signature"));
                };
                Ok(Content::Dsse {
                    payload_type: e.payload_type.clone(),
                    payload: b64(&e.payload, "DSSE payload")?,
                    sig_b64: s.sig.clone(),
                    signature: b64(&s.sig, "DSSE signature")?,
                })
            }
            _ => Err(malformed(
                "a bundle holds exactly one of messageSignature and dsseEnvelope",
            )),
        }
    }

    fn signature(&self) -> &[u8] {
        match self {
            Content::Message { signature, .. } | Content::Dsse { signature, .. } => signature,
        }
    }
}

/// The signer's material as a log entry names it: the leaf certificate's
/// DER, or the key's SPKI DER.
struct SignerDer(Vec<u8>);

impl SignerDer {
    /// Whether a base64 PEM (Rekor 0.0.1 bodies) names this signer.
    fn is_pem(&self, b64_pem: Option<&str>) -> bool {
        let Some(pem) = b64_pem
            .and_then(|p| B64.decode(p).ok())
            .and_then(|p| String::from_utf8(p).ok())
        else {
            return false;
        };
        pem_to_der(&pem).or_else(|| pem_block(&pem, "PUBLIC KEY")) == Some(self.0.clone())
    }

    /// Whether a Rekor 0.0.2 verifier names this signer.
    fn is_verifier(&self, v: &Value) -> bool {
        let raw = v["x509Certificate"]["rawBytes"]
            .as_str()
            .or_else(|| v["publicKey"]["rawBytes"].as_str());
        raw.and_then(|r| B64.decode(r).ok()).as_deref() == Some(self.0.as_slice())
    }
}

fn b64_eq(v: &Value, bytes: &[u8]) -> bool {
    v.as_str().and_then(|s| B64.decode(s).ok()).as_deref() == Some(bytes)
}

/// Whether a log entry's body records this signature: its kind, the
/// artifact or payload hash, the signature and the signer.
fn body_binds(
    kind: (&str, &str),
    body: &Value,
    content: &Content,
    signer: &SignerDer,
    artifact: &Artifact<'_>,
) -> bool {
    let spec = &body["spec"];
    match (kind, content) {
        (("hashedrekord", "0.0.1"), Content::Message { signature, .. }) => {
            spec["data"]["hash"]["algorithm"] == "sha256"
                && spec["data"]["hash"]["value"] == hex::encode(artifact.sha256).as_str()
                && b64_eq(&spec["signature"]["content"], signature)
                && signer.is_pem(spec["signature"]["publicKey"]["content"].as_str())
        }
        (("hashedrekord", "0.0.2"), Content::Message { signature, .. }) => {
            let s = &spec["hashedRekordV002"];
            s["data"]["algorithm"] == "SHA2_256"
                && b64_eq(&s["data"]["digest"], &artifact.sha256)
                && b64_eq(&s["signature"]["content"], signature)
                && signer.is_verifier(&s["signature"]["verifier"])
        }
        // Rekor v2's "hashedrekord over DSSE": the entry stores the hash of
        // the PAE, which is what the envelope's signature signs.
        (
            ("hashedrekord", "0.0.2"),
            Content::Dsse {
                payload_type,
                payload,
                signature,
                ..
            },
        ) => {
            let s = &spec["hashedRekordV002"];
            s["data"]["algorithm"] == "SHA2_256"
                && b64_eq(
                    &s["data"]["digest"],
                    &Sha256::digest(pae(payload_type, payload)),
                )
                && b64_eq(&s["signature"]["content"], signature)
                && signer.is_verifier(&s["signature"]["verifier"])
        }
        (
            ("dsse", "0.0.1"),
            Content::Dsse {
                payload, sig_b64, ..
            },
        ) => {
            let sigs = spec["signatures"].as_array().map(Vec::as_slice);
            spec["payloadHash"]["algorithm"] == "sha256"
                && spec["payloadHash"]["value"] == hex::encode(Sha256::digest(payload)).as_str()
                && matches!(sigs, Some([s]) if s["signature"] == sig_b64.as_str()
                    && signer.is_pem(s["verifier"].as_str()))
        }
        (
            ("dsse", "0.0.2"),
            Content::Dsse {
                payload, signature, ..
            },
        ) => {
            let s = &spec["dsseV002"];
            let sigs = s["signatures"].as_array().map(Vec::as_slice);
            s["payloadHash"]["algorithm"] == "SHA2_256"
                && b64_eq(&s["payloadHash"]["digest"], &Sha256::digest(payload))
                && matches!(sigs, Some([x]) if b64_eq(&x["content"], signature)
                    && signer.is_verifier(&x["verifier"]))
        }
        (
            ("intoto", "0.0.2"),
            Content::Dsse {
                payload, sig_b64, ..
            },
        ) => {
            let c = &spec["content"];
            let sigs = c["envelope"]["signatures"].as_array().map(Vec::as_slice);
            c["payloadHash"]["algorithm"] == "sha256"
                && c["payloadHash"]["value"] == hex::encode(Sha256::digest(payload)).as_str()
                && matches!(sigs, Some([x]) if b64_eq(&x["sig"], sig_b64.as_bytes())
                    && signer.is_pem(x["publicKey"].as_str()))
        }
        _ => false,
    }
}

/// Verifies a bundle made by `signer` over `artifact` against `root`.
pub fn verify_sigstore_bundle(
    bundle: &[u8],
    root: &TrustedRoot,
    signer: Signer<'_>,
    artifact: &Artifact<'_>,
    purpose: Purpose,
) -> Result<VerifiedBundle, KeylessError> {
    crate::oci::json::check_strict(bundle).map_err(malformed)?;
    let b: Bundle = serde_json::from_slice(bundle).map_err(malformed)?;
    let version = bundle_version(&b.media_type)
        .ok_or_else(|| malformed(format!("unknown bundle media type {:?}", b.media_type)))?;
    let m = &b.verification_material;
    let leaf = match (&m.certificate, &m.x509_certificate_chain, &m.public_key) {
        (Some(c), None, None) => Some(b64(&c.raw_bytes, "certificate")?),
        (None, Some(chain), None) => Some(chain_leaf(root, chain)?),
        (None, None, Some(_)) => None,
        _ => return Err(malformed("verification material needs exactly one of certificate, x509CertificateChain and publicKey")),
    };
    let (signer_der, key) = match (signer, &leaf) {
        (Signer::Certificate, Some(leaf)) => (SignerDer(leaf.clone()), leaf_key(leaf)?),
        (Signer::Certificate, None) => {
            return Err(malformed(
                "signed with a key, not a certificate (a keyed bundle?)",
            ))
        }
        (Signer::Key(k), None) => (SignerDer(k.spki_der()), k.clone()),
        (Signer::Key(_), Some(_)) => {
            return Err(malformed(
                "signed with a certificate, but a key was expected",
            ))
        }
    };
    let content = Content::of(&b)?;
    let entries = &m.tlog_entries;
    if entries.is_empty() {
        return Err(KeylessError::Log(
            "the bundle has no transparency log entry".into(),
        ));
    }
    let stamps = m
        .timestamp_verification_data
        .as_ref()
        .map_or(&[][..], |t| t.rfc3161_timestamps.as_slice());
    if entries.len() > MAX_ENTRIES || stamps.len() > MAX_ENTRIES {
        return Err(malformed(format!(
            "more than {MAX_ENTRIES} log entries or timestamps"
        )));
    }
    let mut times = Vec::new();
    let mut first = None;
    for entry in entries {
        let log_id = b64(&entry.log_id.key_id, "log id")?;
        let log = root.tlog(&log_id).ok_or_else(|| {
            KeylessError::Log(format!(
                "entry from log {}, which the trusted root does not hold",
                entry.log_id.key_id
            ))
        })?;
        if let Some(at) = check_entry(entry, log, version, &content, &signer_der, artifact)? {
            times.push(at);
        }
        first.get_or_insert((int(&entry.log_index, "logIndex")?, log.base_url.clone()));
    }
    for t in stamps {
        let token = b64(&t.signed_timestamp, "signedTimestamp")?;
        times.push(verify_timestamp(&token, content.signature(), root)?);
    }
    if times.is_empty() {
        return Err(KeylessError::Log(
            "no trusted time: no log entry with a verified inclusion promise and no timestamp"
                .into(),
        ));
    }
    times.sort();
    let identity = match &leaf {
        Some(leaf) => {
            let mut identity = None;
            for at in &times {
                identity = Some(verify_leaf(root, leaf, *at)?.0);
            }
            identity
        }
        None => None,
    };
    check_signature(&b, &content, &key, artifact, purpose, bundle)?;
    let (log_index, log) = first.unwrap_or_default();
    Ok(VerifiedBundle {
        identity,
        times,
        log_index,
        log,
    })
}

/// Verifies a keyless image signature (a cosign v3 bundle referrer) for
/// `image` against `root`.
pub fn verify_keyless(
    bundle: &[u8],
    root: &TrustedRoot,
    image: &Digest,
) -> Result<KeylessSignature, KeylessError> {
    let sha256: [u8; 32] = hex::decode(image.hex())
        .ok()
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| malformed(format!("{image} is not a SHA-256 digest")))?;
    let artifact = Artifact {
        sha256,
        bytes: None,
    };
    let v = verify_sigstore_bundle(
        bundle,
        root,
        Signer::Certificate,
        &artifact,
        Purpose::ImageSignature,
    )?;
    Ok(KeylessSignature {
        identity: v
            .identity
            .ok_or_else(|| malformed("no signing certificate"))?,
        integrated_time: v.times[0],
        log_index: v.log_index,
        log: v.log,
    })
}

/// The leaf of a v0.1/v0.2 chain. The chain's other certificates are only
/// hints: they must not include a root (the anchor comes from the trusted
/// root alone).
fn chain_leaf(root: &TrustedRoot, chain: &Chain) -> Result<Vec<u8>, KeylessError> {
    let certs = chain
        .certificates
        .iter()
        .map(|c| b64(&c.raw_bytes, "certificate"))
        .collect::<Result<Vec<_>, _>>()?;
    let anchors: Vec<&Vec<u8>> = root
        .certificate_authorities
        .iter()
        .filter_map(|ca| ca.chain.last())
        .collect();
    for c in certs.iter().skip(1) {
        let cert = Certificate::from_der(c).map_err(malformed)?;
        let tbs = cert.tbs_certificate();
        if anchors.contains(&c) || tbs.subject() == tbs.issuer() {
            return Err(malformed(
                "the bundle's certificate chain includes a root certificate",
            ));
        }
    }
    certs
        .into_iter()
        .next()
        .ok_or_else(|| malformed("empty certificate chain"))
}

/// The signature itself, over what the purpose requires.
fn check_signature(
    b: &Bundle,
    content: &Content,
    key: &PublicKey,
    artifact: &Artifact<'_>,
    purpose: Purpose,
    bundle: &[u8],
) -> Result<(), KeylessError> {
    if purpose == Purpose::ImageSignature {
        if b.dsse_envelope.is_none() {
            return Err(malformed(
                "no dsseEnvelope (an image signature is a DSSE statement)",
            ));
        }
        let image: Digest = format!("sha256:{}", hex::encode(artifact.sha256))
            .parse()
            .map_err(malformed)?;
        return Ok(verify_bundle(bundle, key, &image)?);
    }
    match content {
        Content::Message { digest, signature } => {
            if digest.is_some_and(|d| d != artifact.sha256) {
                return Err(SigError::WrongDigest {
                    named: "another artifact in messageDigest".into(),
                    expected: format!("sha256:{}", hex::encode(artifact.sha256)),
                }
                .into());
            }
            let ok = match artifact.bytes {
                Some(bytes) => key.verify(bytes, signature),
                None => key.verify_digest(&artifact.sha256, signature),
            };
            ok.then_some(()).ok_or(SigError::BadSignature.into())
        }
        Content::Dsse {
            payload_type,
            payload,
            signature,
            ..
        } => {
            if payload_type != INTOTO_PAYLOAD {
                return Err(malformed(format!("DSSE payloadType {payload_type:?}")));
            }
            if !key.verify(&pae(payload_type, payload), signature) {
                return Err(SigError::BadSignature.into());
            }
            let st = crate::oci::json::parse_strict(payload).map_err(malformed)?;
            let kind = st["_type"].as_str().unwrap_or_default();
            if !kind.starts_with("https://in-toto.io/Statement/v") {
                return Err(malformed(format!("statement _type {kind:?}")));
            }
            let hex = hex::encode(artifact.sha256);
            let named = st["subject"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["digest"]["sha256"] == hex.as_str()));
            named.then_some(()).ok_or_else(|| {
                SigError::WrongDigest {
                    named: "other subjects".into(),
                    expected: format!("sha256:{hex}"),
                }
                .into()
            })
        }
    }
}

/// Checks one log entry: it is this signature's, its SET (Rekor v1) and
/// its proof and checkpoint hold. Returns the trusted time its SET gives.
fn check_entry(
    entry: &Entry,
    log: &Log,
    version: u8,
    content: &Content,
    signer: &SignerDer,
    artifact: &Artifact<'_>,
) -> Result<Option<OffsetDateTime>, KeylessError> {
    if int(&entry.log_index, "logIndex")? < 0 {
        return Err(malformed("a negative log index"));
    }
    let kv = &entry.kind_version;
    let body_bytes = b64(&entry.canonicalized_body, "canonicalizedBody")?;
    let body: Value = serde_json::from_slice(&body_bytes).map_err(malformed)?;
    if body["kind"] != kv.kind.as_str() || body["apiVersion"] != kv.version.as_str() {
        return Err(KeylessError::Log(
            "entry body is not the kind it claims".into(),
        ));
    }
    if !body_binds((&kv.kind, &kv.version), &body, content, signer, artifact) {
        return Err(KeylessError::Log(format!(
            "the {} {} entry records another signature, certificate, key or payload than the bundle's",
            kv.kind, kv.version
        )));
    }
    let at = match &entry.inclusion_promise {
        Some(promise) => {
            let (at, _) = trusted_time(
                log,
                &entry.canonicalized_body,
                &entry.integrated_time,
                &entry.log_index,
                &promise.signed_entry_timestamp,
            )?;
            if at.unix_timestamp() > OffsetDateTime::now_utc().unix_timestamp() + FUTURE_SKEW_SECS {
                return Err(KeylessError::Log(
                    "the integrated time is in the future".into(),
                ));
            }
            Some(at)
        }
        None if version == 1 => {
            return Err(KeylessError::Log(
                "no inclusion promise (required for v0.1 bundles)".into(),
            ))
        }
        None => None,
    };
    let proof = match (&entry.inclusion_proof, version) {
        (Some(p), _) => p,
        (None, 1) => return Ok(at),
        (None, _) => {
            return Err(KeylessError::Log(
                "no inclusion proof (required for bundles from v0.2 on)".into(),
            ))
        }
    };
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
    pem_block(pem, "CERTIFICATE")
}

/// The DER of the first PEM block with this label.
fn pem_block(pem: &str, label: &str) -> Option<Vec<u8>> {
    let (begin, end) = (
        format!("-----BEGIN {label}-----"),
        format!("-----END {label}-----"),
    );
    let body: String = pem
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != begin)
        .skip(1)
        .take_while(|l| *l != end)
        .collect();
    B64.decode(body).ok().filter(|d| !d.is_empty())
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
                "records another signature, certificate",
            ),
            ("bundle-claim-digest", "names sha256:"),
            ("bundle-no-inclusion-proof", "no inclusion proof"),
            ("bundle-no-sct", "no signed certificate timestamp"),
            (
                "bundle-wrong-log-id",
                "which the trusted root does not hold",
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

#[cfg(test)]
mod props {
    use super::*;
    use crate::trust::sigstore::testdata::{bundle, fixture, root};
    use proptest::prelude::*;

    fn image() -> Digest {
        let case: Value = serde_json::from_slice(&fixture("bundle-valid-uri/case.json")).unwrap();
        case["image_digest"].as_str().unwrap().parse().unwrap()
    }

    proptest! {
        #![proptest_config(crate::proptests::config())]

        /// A damaged keyless bundle is refused or, if the damage missed
        /// everything that is checked, names the same signer: never a
        /// panic, never someone else.
        #[test]
        fn damaged_bundles_never_name_another_signer(b in crate::proptests::mutated(bundle("bundle-valid-uri"))) {
            let root = root("bundle-valid-uri");
            if let Ok(sig) = verify_keyless(&b, &root, &image()) {
                let good = verify_keyless(&bundle("bundle-valid-uri"), &root, &image()).unwrap();
                prop_assert_eq!(sig.identity.subjects, good.identity.subjects);
                prop_assert_eq!(sig.identity.issuer, good.identity.issuer);
            }
        }

        #[test]
        fn damaged_trusted_roots_parse_or_refuse(b in crate::proptests::mutated(fixture("bundle-valid-uri/trusted_root.json"))) {
            let _ = TrustedRoot::parse(&b);
        }

        #[test]
        fn any_bundle_document_is_refused_without_panic(doc in crate::proptests::json()) {
            let b = serde_json::to_vec(&doc).unwrap();
            let root = root("bundle-valid-uri");
            prop_assert!(verify_keyless(&b, &root, &image()).is_err());
        }
    }
}
