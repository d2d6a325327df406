//! Checking one cosign signature. A signature counts only when it verifies
//! with a key over the exact bytes that were signed (never re-serialised
//! JSON) AND the signed document names the digest being served.

use super::keys::PublicKey;
use crate::oci::Digest;
use base64::Engine;
use serde::Deserialize;

pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
pub const COSIGN_SIG_ARTIFACT: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
pub const BUNDLE_V03: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
pub const INTOTO_PAYLOAD: &str = "application/vnd.in-toto+json";
pub const INTOTO_STATEMENT_V1: &str = "https://in-toto.io/Statement/v1";
pub const COSIGN_SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";
pub const SIMPLE_SIGNING_TYPE: &str = "cosign container image signature";

/// Where a signature came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigFormat {
    /// `sha256-<hex>.sig` tag, simple signing payload.
    Legacy,
    /// OCI 1.1 referrer with cosign's sig artifactType.
    Oci11,
    /// Sigstore bundle v0.3 referrer (DSSE in-toto statement).
    Bundle,
}

impl SigFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            SigFormat::Legacy => "legacy",
            SigFormat::Oci11 => "oci11",
            SigFormat::Bundle => "bundle",
        }
    }
}

/// Why a signature does not count.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SigError {
    #[error("signature does not verify with the key")]
    BadSignature,
    #[error("signature is not valid base64")]
    BadEncoding,
    #[error("signed payload names {named}, not {expected}")]
    WrongDigest { named: String, expected: String },
    #[error("signed payload is malformed: {0}")]
    BadPayload(String),
}

fn b64(s: &str) -> Result<Vec<u8>, SigError> {
    let s = s.trim();
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(s))
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(s))
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s))
        .map_err(|_| SigError::BadEncoding)
}

#[derive(Deserialize)]
struct SimpleSigning {
    critical: Critical,
}

#[derive(Deserialize)]
struct Critical {
    image: CriticalImage,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct CriticalImage {
    #[serde(rename = "docker-manifest-digest")]
    digest: String,
}

/// Verify a simple-signing payload (legacy and OCI 1.1 formats): the
/// signature over the payload bytes, then `critical.type` and
/// `critical.image.docker-manifest-digest`. `critical.identity` is not
/// pinned, as cosign does not pin it.
pub fn verify_simple_signing(
    payload: &[u8],
    sig_b64: &str,
    key: &PublicKey,
    image: &Digest,
) -> Result<(), SigError> {
    let sig = b64(sig_b64)?;
    if !key.verify(payload, &sig) {
        return Err(SigError::BadSignature);
    }
    crate::oci::json::check_strict(payload).map_err(|e| SigError::BadPayload(e.to_string()))?;
    let p: SimpleSigning =
        serde_json::from_slice(payload).map_err(|e| SigError::BadPayload(e.to_string()))?;
    if p.critical.kind != SIMPLE_SIGNING_TYPE {
        return Err(SigError::BadPayload(format!(
            "critical.type is {:?}, not {SIMPLE_SIGNING_TYPE:?}",
            p.critical.kind
        )));
    }
    if p.critical.image.digest != image.to_string() {
        return Err(SigError::WrongDigest {
            named: p.critical.image.digest,
            expected: image.to_string(),
        });
    }
    Ok(())
}

/// DSSE pre-authentication encoding.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

#[derive(Deserialize)]
struct Bundle {
    #[serde(rename = "mediaType")]
    media_type: String,
    #[serde(rename = "dsseEnvelope")]
    dsse: Option<Envelope>,
}

/// A DSSE envelope as bundles carry it.
#[derive(Deserialize)]
pub(crate) struct Envelope {
    pub(crate) payload: String,
    #[serde(rename = "payloadType")]
    pub(crate) payload_type: String,
    pub(crate) signatures: Vec<EnvelopeSig>,
}

#[derive(Deserialize)]
pub(crate) struct EnvelopeSig {
    pub(crate) sig: String,
}

#[derive(Deserialize)]
struct Statement {
    #[serde(rename = "_type")]
    kind: String,
    #[serde(default)]
    subject: Vec<Subject>,
    #[serde(rename = "predicateType")]
    predicate_type: String,
}

#[derive(Deserialize)]
struct Subject {
    #[serde(default)]
    digest: std::collections::BTreeMap<String, String>,
}

/// Verify a Sigstore bundle v0.3 holding a DSSE envelope over an in-toto
/// statement whose subject is the image (cosign v3's default format).
pub fn verify_bundle(bundle: &[u8], key: &PublicKey, image: &Digest) -> Result<(), SigError> {
    crate::oci::json::check_strict(bundle)
        .map_err(|e| SigError::BadPayload(format!("bundle: {e}")))?;
    let b: Bundle =
        serde_json::from_slice(bundle).map_err(|e| SigError::BadPayload(format!("bundle: {e}")))?;
    let v03 = b.media_type == BUNDLE_V03
        || b.media_type == "application/vnd.dev.sigstore.bundle+json;version=0.3";
    if !v03 {
        return Err(SigError::BadPayload(format!(
            "bundle media type {:?} is not v0.3",
            b.media_type
        )));
    }
    let env = b
        .dsse
        .ok_or_else(|| SigError::BadPayload("bundle has no dsseEnvelope".into()))?;
    if env.payload_type != INTOTO_PAYLOAD {
        return Err(SigError::BadPayload(format!(
            "DSSE payloadType is {:?}, not {INTOTO_PAYLOAD:?}",
            env.payload_type
        )));
    }
    let payload = b64(&env.payload)?;
    let signed = pae(&env.payload_type, &payload);
    let mut ok = false;
    for s in &env.signatures {
        if key.verify(&signed, &b64(&s.sig)?) {
            ok = true;
            break;
        }
    }
    if !ok {
        return Err(SigError::BadSignature);
    }
    crate::oci::json::check_strict(&payload)
        .map_err(|e| SigError::BadPayload(format!("statement: {e}")))?;
    let st: Statement = serde_json::from_slice(&payload)
        .map_err(|e| SigError::BadPayload(format!("statement: {e}")))?;
    if st.kind != INTOTO_STATEMENT_V1 {
        return Err(SigError::BadPayload(format!(
            "statement _type is {:?}",
            st.kind
        )));
    }
    if st.predicate_type != COSIGN_SIGN_PREDICATE {
        return Err(SigError::BadPayload(format!(
            "predicateType is {:?}, not a cosign image signature",
            st.predicate_type
        )));
    }
    let named: Vec<&str> = st
        .subject
        .iter()
        .filter_map(|s| s.digest.get("sha256").map(String::as_str))
        .collect();
    if named.contains(&image.hex()) {
        Ok(())
    } else {
        Err(SigError::WrongDigest {
            named: named
                .iter()
                .map(|h| format!("sha256:{h}"))
                .collect::<Vec<_>>()
                .join(", "),
            expected: image.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_dsse_example() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    fn key() -> PublicKey {
        let pem = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/cosign/keys/ecdsa-p256.pub.pem"),
        )
        .unwrap();
        PublicKey::from_pem(&pem).unwrap()
    }

    proptest! {
        #![proptest_config(crate::proptests::config())]

        /// Payloads, signatures and bundles from anywhere: refused, never a
        /// panic (none of them is signed by the key).
        #[test]
        fn unsigned_documents_are_refused(payload in prop::collection::vec(any::<u8>(), 0..200), sig in ".{0,100}", doc in crate::proptests::json()) {
            let image = Digest::of(b"x");
            prop_assert!(verify_simple_signing(&payload, &sig, &key(), &image).is_err());
            let bundle = serde_json::to_vec(&doc).unwrap();
            prop_assert!(verify_bundle(&bundle, &key(), &image).is_err());
        }
    }
}
