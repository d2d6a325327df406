//! A Notation signer for tests against a real registry: a fresh CA and
//! leaf (rcgen), a JWS envelope (ES256, `notary.x509`) over a payload
//! naming the subject, and the referrer manifest Notation pushes. Built
//! the way notation-go writes them (see tests/fixtures/notation/README.md);
//! the verifier itself is checked against notation-go's own envelopes.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A CA whose leaf signs as `C=US, ST=WA, O=<org>, CN=release`.
pub struct NotarySigner {
    pub root_pem: String,
    chain: Vec<Vec<u8>>,
    leaf_key: p256::ecdsa::SigningKey,
}

/// A signature ready to push: the envelope and empty config blobs and the
/// referrer manifest.
pub struct NotarySignature {
    pub envelope: Bytes,
    pub config: Bytes,
    pub manifest: Bytes,
}

impl NotarySigner {
    pub fn new(org: &str) -> NotarySigner {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        for (t, v) in [
            (DnType::CountryName, "US"),
            (DnType::StateOrProvinceName, "WA"),
            (DnType::OrganizationName, org),
            (DnType::CommonName, "test root"),
        ] {
            ca.distinguished_name.push(t, v);
        }
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let root = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        for (t, v) in [
            (DnType::CountryName, "US"),
            (DnType::StateOrProvinceName, "WA"),
            (DnType::OrganizationName, org),
            (DnType::CommonName, "release"),
        ] {
            leaf.distinguished_name.push(t, v);
        }
        let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
        use p256::pkcs8::DecodePrivateKey;
        NotarySigner {
            root_pem: root.pem(),
            chain: vec![leaf_cert.der().to_vec(), root.der().to_vec()],
            leaf_key: p256::ecdsa::SigningKey::from_pkcs8_der(&leaf_key.serialize_der()).unwrap(),
        }
    }

    /// Signs the manifest `digest` (`size` bytes, OCI image manifest).
    pub fn sign(&self, digest: &str, size: usize) -> NotarySignature {
        let media_type = "application/vnd.oci.image.manifest.v1+json";
        let payload = serde_json::json!({"targetArtifact": {"mediaType": media_type, "digest": digest, "size": size}});
        let protected = serde_json::json!({
            "alg": "ES256",
            "crit": ["io.cncf.notary.signingScheme"],
            "cty": "application/vnd.cncf.notary.payload.v1+json",
            "io.cncf.notary.signingScheme": "notary.x509",
            "io.cncf.notary.signingTime": "2026-01-02T00:00:00Z",
        });
        let p64 = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&protected).unwrap());
        let b64 = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).unwrap());
        use p256::ecdsa::signature::Signer;
        let sig: p256::ecdsa::Signature = self.leaf_key.sign(format!("{p64}.{b64}").as_bytes());
        let envelope = serde_json::json!({
            "payload": b64,
            "protected": p64,
            "header": {
                "x5c": self.chain.iter().map(|c| STANDARD.encode(c)).collect::<Vec<_>>(),
                "io.cncf.notary.signingAgent": "modelgate-tests",
            },
            "signature": URL_SAFE_NO_PAD.encode(sig.to_bytes()),
        });
        let envelope = Bytes::from(serde_json::to_vec(&envelope).unwrap());
        let config = Bytes::from_static(b"{}");
        let digest_of = |b: &[u8]| modelgate::oci::Digest::of(b).to_string();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "artifactType": "application/vnd.cncf.notary.signature",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": digest_of(&config), "size": 2},
            "layers": [{"mediaType": "application/jose+json", "digest": digest_of(&envelope), "size": envelope.len()}],
            "subject": {"mediaType": media_type, "digest": digest, "size": size},
            "annotations": {"org.opencontainers.image.created": "2026-01-02T00:00:00Z"},
        });
        NotarySignature {
            envelope,
            config,
            manifest: Bytes::from(serde_json::to_vec(&manifest).unwrap()),
        }
    }
}
