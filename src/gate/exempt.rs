//! What needs no decision of its own, decided from what a document is:
//! signature and attestation manifests (by their layers), the referrers
//! index under its `sha256-<hex>` tag, and children of an admitted index.
//! Never from what a descriptor claims (`artifactType`, `subject`).
//! Pure: no I/O.

use crate::oci::{Digest, Reference};
use crate::trust::verify::SIMPLE_SIGNING;

/// Layer media types that only signature and attestation artifacts carry:
/// small JSON payloads, never a filesystem.
fn is_signature_layer(t: &str) -> bool {
    t == SIMPLE_SIGNING
        || t.starts_with("application/vnd.dev.sigstore.bundle")
        || t == "application/vnd.dsse.envelope.v1+json"
        || t == "application/vnd.in-toto+json"
        || t == crate::trust::notation::JWS
        || t == crate::trust::notation::COSE
}

/// Largest blob a signature artifact may open for reading: signatures,
/// bundles and attestations are small; a model layer is not.
pub const MAX_SIGNATURE_BLOB: usize = 4 * 1024 * 1024;

/// Whether `bytes` is a signature artifact: an image manifest (never an
/// index) whose every layer is a signature or attestation payload. What a
/// descriptor claims about the document (`artifactType`, a `subject`)
/// counts for nothing; duplicate or case-twin keys make it no signature.
pub fn is_signature_manifest(bytes: &[u8]) -> bool {
    // Every signature layer type names one of these. A document without
    // them is no signature artifact, and needs no parse to say so (an
    // escaped spelling only makes it "not a signature": a full decision).
    let marks: [&[u8]; 6] = [
        b"simplesigning",
        b"sigstore",
        b"dsse",
        b"in-toto",
        b"jose",
        b"cose",
    ];
    if !marks
        .iter()
        .any(|m| bytes.windows(m.len()).any(|w| w == *m))
    {
        return false;
    }
    let Ok(v) = crate::oci::json::parse_strict(bytes) else {
        return false;
    };
    if v.get("manifests").is_some() {
        return false;
    }
    v["layers"].as_array().is_some_and(|layers| {
        !layers.is_empty()
            && layers
                .iter()
                .all(|l| l["mediaType"].as_str().is_some_and(is_signature_layer))
    })
}

/// What a tag of the cosign tag schemes names: `sha256-<hex>` (referrers
/// fallback index), `sha256-<hex>.sig` (signatures), `sha256-<hex>.att`
/// (attestations).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaTag {
    Referrers,
    Signature,
    Attestation,
}

/// The image digest and kind a cosign-scheme tag refers to.
pub fn schema_tag(tag: &str) -> Option<(Digest, SchemaTag)> {
    let rest = tag.strip_prefix("sha256-")?;
    let (hex, kind) = match rest.split_once('.') {
        None => (rest, SchemaTag::Referrers),
        Some((h, "sig")) => (h, SchemaTag::Signature),
        Some((h, "att")) => (h, SchemaTag::Attestation),
        Some(_) => return None,
    };
    let d = format!("sha256:{hex}").parse().ok()?;
    Some((d, kind))
}

/// Why a manifest needs no decision of its own. Exempt documents are
/// readable, audited, and open nothing but their own small payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exemption {
    /// A signature or attestation manifest (by its layers).
    SignatureArtifact,
    /// The referrers fallback index read by its `sha256-<hex>` tag.
    ReferrersIndex,
    /// A child of an index admitted in the same repository.
    ChildOfAdmittedIndex,
}

impl Exemption {
    pub fn reason(self) -> &'static str {
        match self {
            Exemption::SignatureArtifact => "signature artifact: readable, admits nothing",
            Exemption::ReferrersIndex => "referrers index: readable, admits nothing",
            Exemption::ChildOfAdmittedIndex => "child of an admitted index",
        }
    }
}

/// The exemption a document read (or pushed) under `reference` has, from
/// what it is: never from descriptor metadata alone.
pub fn exemption_of(reference: &Reference, bytes: &[u8]) -> Option<Exemption> {
    if is_signature_manifest(bytes) {
        return match reference {
            Reference::Digest(_) => Some(Exemption::SignatureArtifact),
            Reference::Tag(t) => schema_tag(t)
                .filter(|(_, k)| *k != SchemaTag::Referrers)
                .map(|_| Exemption::SignatureArtifact),
        };
    }
    if let Reference::Tag(t) = reference {
        let referrers_tag = schema_tag(t).is_some_and(|(_, k)| k == SchemaTag::Referrers);
        let is_index = || {
            crate::oci::media::ManifestSummary::parse(bytes)
                .map(|s| s.is_index())
                .unwrap_or(false)
        };
        if referrers_tag && is_index() {
            return Some(Exemption::ReferrersIndex);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::verify::{BUNDLE_V03, COSIGN_SIG_ARTIFACT};

    #[test]
    fn signature_artifacts_are_recognised_by_their_layers() {
        let sig = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"x"}},"layers":[{{"mediaType":"{SIMPLE_SIGNING}","digest":"y"}}]}}"#
        );
        assert!(is_signature_manifest(sig.as_bytes()));
        // Notation's referrer: one JWS or COSE envelope layer.
        let notation = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/notation/cose-es256-valid/signature/manifest.json"),
        )
        .unwrap();
        assert!(is_signature_manifest(&notation));
        // A model image wearing a signature's artifactType and a subject is not one.
        let disguised = format!(
            r#"{{"schemaVersion":2,"artifactType":"{COSIGN_SIG_ARTIFACT}","subject":{{"digest":"z"}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"y"}}]}}"#
        );
        assert!(!is_signature_manifest(disguised.as_bytes()));
        assert!(!is_signature_manifest(
            br#"{"schemaVersion":2,"layers":[]}"#
        ));
        // An index is never a signature, whatever its descriptors claim.
        let idx = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"digest":"a","artifactType":"{BUNDLE_V03}"}}]}}"#
        );
        assert!(!is_signature_manifest(idx.as_bytes()));
        // Case twins: Go clients would unpack "Layers".
        let twins = format!(
            r#"{{"schemaVersion":2,"layers":[{{"mediaType":"{SIMPLE_SIGNING}","digest":"y"}}],"Layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"y"}}]}}"#
        );
        assert!(!is_signature_manifest(twins.as_bytes()));
    }

    #[test]
    fn schema_tags_and_exemptions() {
        let hex = "a".repeat(64);
        let d: Digest = format!("sha256:{hex}").parse().unwrap();
        assert_eq!(
            schema_tag(&format!("sha256-{hex}.sig")),
            Some((d.clone(), SchemaTag::Signature))
        );
        assert_eq!(
            schema_tag(&format!("sha256-{hex}")),
            Some((d.clone(), SchemaTag::Referrers))
        );
        assert_eq!(schema_tag(&format!("sha256-{hex}.x")), None);
        assert_eq!(schema_tag("sha256-abc.sig"), None);
        assert_eq!(schema_tag("v1.0.0"), None);
        let sig = format!(
            r#"{{"schemaVersion":2,"layers":[{{"mediaType":"{SIMPLE_SIGNING}","digest":"sha256:{hex}"}}]}}"#
        );
        let idx = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
        let tag = |t: &str| Reference::Tag(t.to_string());
        assert_eq!(
            exemption_of(&tag(&format!("sha256-{hex}.sig")), sig.as_bytes()),
            Some(Exemption::SignatureArtifact)
        );
        assert_eq!(
            exemption_of(&Reference::Digest(d.clone()), sig.as_bytes()),
            Some(Exemption::SignatureArtifact)
        );
        // A signature under a release tag gets a full decision.
        assert_eq!(exemption_of(&tag("v1.0.0"), sig.as_bytes()), None);
        assert_eq!(
            exemption_of(&tag(&format!("sha256-{hex}")), idx.as_bytes()),
            Some(Exemption::ReferrersIndex)
        );
        assert_eq!(exemption_of(&tag("latest"), idx.as_bytes()), None);
        assert_eq!(exemption_of(&Reference::Digest(d), idx.as_bytes()), None);
    }
}
