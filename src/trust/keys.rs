//! Public and private keys in the PEM formats cosign reads and writes:
//! SubjectPublicKeyInfo (`PUBLIC KEY`) and PKCS#8 (`PRIVATE KEY`), Ed25519 or
//! ECDSA P-256.

use base64::Engine;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use sha2::{Digest as _, Sha256, Sha512};

/// A verification key.
#[derive(Clone, Debug)]
pub enum PublicKey {
    Ed25519(ed25519_dalek::VerifyingKey),
    P256(p256::ecdsa::VerifyingKey),
}

/// A signing key (Debug shows only the public half).
pub enum PrivateKey {
    Ed25519(ed25519_dalek::SigningKey),
    P256(p256::ecdsa::SigningKey),
}

/// Which algorithm a new key uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Ed25519,
    EcdsaP256,
}

impl PublicKey {
    /// Parse a PEM `PUBLIC KEY` (SPKI) of either type.
    pub fn from_pem(text: &str) -> Result<PublicKey, String> {
        if let Ok(k) = ed25519_dalek::VerifyingKey::from_public_key_pem(text.trim()) {
            return Ok(PublicKey::Ed25519(k));
        }
        if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_pem(text.trim()) {
            return Ok(PublicKey::P256(k));
        }
        Err("not a PEM \"PUBLIC KEY\" (SubjectPublicKeyInfo) for Ed25519 or ECDSA P-256".into())
    }

    /// Parse a DER `SubjectPublicKeyInfo` of either type.
    pub fn from_spki_der(der: &[u8]) -> Result<PublicKey, String> {
        if let Ok(k) = ed25519_dalek::VerifyingKey::from_public_key_der(der) {
            return Ok(PublicKey::Ed25519(k));
        }
        if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_der(der) {
            return Ok(PublicKey::P256(k));
        }
        Err("not a DER SubjectPublicKeyInfo for Ed25519 or ECDSA P-256".into())
    }

    pub fn algorithm(&self) -> &'static str {
        match self {
            PublicKey::Ed25519(_) => "ed25519",
            PublicKey::P256(_) => "ecdsa-p256",
        }
    }

    /// SPKI DER bytes.
    pub fn spki_der(&self) -> Vec<u8> {
        let r = match self {
            PublicKey::Ed25519(k) => k.to_public_key_der(),
            PublicKey::P256(k) => k.to_public_key_der(),
        };
        r.map(|d| d.as_bytes().to_vec()).unwrap_or_default()
    }

    pub fn to_pem(&self) -> String {
        let r = match self {
            PublicKey::Ed25519(k) => k.to_public_key_pem(Default::default()),
            PublicKey::P256(k) => k.to_public_key_pem(Default::default()),
        };
        r.unwrap_or_default()
    }

    /// cosign's bundle key hint: base64(SHA-256(SPKI DER)).
    pub fn hint(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(self.spki_der()))
    }

    /// Whether `sig` is this key's signature over exactly `msg`.
    /// Ed25519: pure, or Ed25519ph (SHA-512 prehash) as cosign v3 signs.
    /// ECDSA P-256 over SHA-256(msg): ASN.1 DER, or raw r‖s (IEEE P1363).
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        match self {
            PublicKey::Ed25519(k) => {
                let Ok(s) = ed25519_dalek::Signature::from_slice(sig) else {
                    return false;
                };
                if k.verify_strict(msg, &s).is_ok() {
                    return true;
                }
                let mut h = Sha512::new();
                h.update(msg);
                k.verify_prehashed_strict(h, None, &s).is_ok()
            }
            PublicKey::P256(k) => {
                use p256::ecdsa::signature::Verifier;
                let s = p256::ecdsa::Signature::from_der(sig)
                    .or_else(|_| p256::ecdsa::Signature::from_slice(sig));
                match s {
                    Ok(s) => k.verify(msg, &s).is_ok(),
                    Err(_) => false,
                }
            }
        }
    }

    /// Whether `sig` is this key's signature over a message whose SHA-256
    /// is `digest` (ECDSA only: Ed25519 signs the message itself).
    pub fn verify_digest(&self, digest: &[u8; 32], sig: &[u8]) -> bool {
        use p256::ecdsa::signature::hazmat::PrehashVerifier;
        match self {
            PublicKey::Ed25519(_) => false,
            PublicKey::P256(k) => p256::ecdsa::Signature::from_der(sig)
                .or_else(|_| p256::ecdsa::Signature::from_slice(sig))
                .is_ok_and(|s| k.verify_prehash(digest, &s).is_ok()),
        }
    }
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PrivateKey({}, hint {})",
            self.public().algorithm(),
            self.public().hint()
        )
    }
}

impl PrivateKey {
    /// Parse a PEM `PRIVATE KEY` (PKCS#8) of either type.
    pub fn from_pem(text: &str) -> Result<PrivateKey, String> {
        if let Ok(k) = ed25519_dalek::SigningKey::from_pkcs8_pem(text.trim()) {
            return Ok(PrivateKey::Ed25519(k));
        }
        if let Ok(k) = p256::ecdsa::SigningKey::from_pkcs8_pem(text.trim()) {
            return Ok(PrivateKey::P256(k));
        }
        if text.contains("ENCRYPTED") {
            return Err("encrypted private keys are not supported: export an unencrypted PKCS#8 \"PRIVATE KEY\" PEM".into());
        }
        Err("not a PEM \"PRIVATE KEY\" (PKCS#8) for Ed25519 or ECDSA P-256".into())
    }

    /// A fresh key from the operating system's random source.
    pub fn generate(alg: Algorithm) -> Result<PrivateKey, String> {
        let mut seed = [0u8; 32];
        match alg {
            Algorithm::Ed25519 => {
                getrandom::fill(&mut seed).map_err(|e| format!("no randomness: {e}"))?;
                Ok(PrivateKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(
                    &seed,
                )))
            }
            Algorithm::EcdsaP256 => {
                // A random 32-byte string is a valid scalar with overwhelming
                // probability; retry the rare one that is not.
                for _ in 0..16 {
                    getrandom::fill(&mut seed).map_err(|e| format!("no randomness: {e}"))?;
                    if let Ok(k) = p256::ecdsa::SigningKey::from_slice(&seed) {
                        return Ok(PrivateKey::P256(k));
                    }
                }
                Err("could not draw a valid P-256 scalar".into())
            }
        }
    }

    pub fn public(&self) -> PublicKey {
        match self {
            PrivateKey::Ed25519(k) => PublicKey::Ed25519(k.verifying_key()),
            PrivateKey::P256(k) => PublicKey::P256(*k.verifying_key()),
        }
    }

    pub fn to_pem(&self) -> Result<String, String> {
        let r = match self {
            PrivateKey::Ed25519(k) => k.to_pkcs8_pem(Default::default()),
            PrivateKey::P256(k) => k.to_pkcs8_pem(Default::default()),
        };
        r.map(|z| z.to_string()).map_err(|e| e.to_string())
    }

    /// Sign `msg`: pure Ed25519 (what `cosign verify --key` checks), or
    /// ECDSA P-256 over SHA-256 with a DER signature (cosign's default).
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        match self {
            PrivateKey::Ed25519(k) => {
                use ed25519_dalek::Signer;
                k.sign(msg).to_bytes().to_vec()
            }
            PrivateKey::P256(k) => {
                use p256::ecdsa::signature::Signer;
                let s: p256::ecdsa::Signature = k.sign(msg);
                s.to_der().as_bytes().to_vec()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_round_trip_through_pem_and_verify() {
        for alg in [Algorithm::Ed25519, Algorithm::EcdsaP256] {
            let k = PrivateKey::generate(alg).unwrap();
            let pem = k.to_pem().unwrap();
            assert!(pem.contains("BEGIN PRIVATE KEY"));
            let k2 = PrivateKey::from_pem(&pem).unwrap();
            let pubk = PublicKey::from_pem(&k2.public().to_pem()).unwrap();
            let sig = k2.sign(b"hello");
            assert!(pubk.verify(b"hello", &sig));
            assert!(!pubk.verify(b"hellO", &sig));
            assert_eq!(pubk.hint().len(), 44);
        }
    }

    #[test]
    fn rejects_garbage() {
        assert!(
            PublicKey::from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----")
                .is_err()
        );
        assert!(PrivateKey::from_pem("nope").is_err());
        assert!(
            PrivateKey::from_pem("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----")
                .unwrap_err()
                .contains("encrypted")
        );
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(crate::proptests::config())]

        /// PEM and DER keys from anywhere: a key or a refusal.
        #[test]
        fn keys_parse_or_refuse(text in "(-----BEGIN (PUBLIC|PRIVATE) KEY-----\n)?[A-Za-z0-9+/=\n]{0,120}(-----END (PUBLIC|PRIVATE) KEY-----)?|.{0,80}", der in prop::collection::vec(any::<u8>(), 0..100)) {
            let _ = PublicKey::from_pem(&text);
            let _ = PrivateKey::from_pem(&text);
            let _ = PublicKey::from_spki_der(&der);
        }
    }
}
