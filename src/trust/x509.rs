//! Signatures made by the key of an X.509 certificate, for the formats that
//! name their algorithm themselves: RFC 3161 timestamps (CMS, ASN.1 DER
//! ECDSA and RSA PKCS#1) and Notation envelopes (JOSE/COSE: raw r‖s ECDSA
//! and RSASSA-PSS). Verification goes through ring, the one crypto provider
//! (P-521, which ring lacks, through the RustCrypto `p521` of the same
//! generation as `p256`). Also a minimal DER walker over `der`'s headers for
//! the CMS structures `x509-cert` does not model. Pure.

use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::{Decode, Encode, Header, Reader, SliceReader};
use x509_cert::Certificate;

/// The public key of a certificate, as the algorithms below need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertKey {
    /// Uncompressed SEC1 point.
    P256(Vec<u8>),
    P384(Vec<u8>),
    P521(Vec<u8>),
    /// PKCS#1 RSAPublicKey DER and the modulus size in bits.
    Rsa(Vec<u8>, usize),
    Ed25519(Vec<u8>),
}

/// How a signature was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigAlg {
    /// ECDSA with ASN.1 DER (r, s), hash by name (CMS, X.509).
    EcdsaDer(Hash),
    /// ECDSA with raw r‖s (JOSE ES*, COSE).
    EcdsaFixed(Hash),
    RsaPkcs1(Hash),
    /// RSASSA-PSS, MGF1 with the same hash, salt length = hash length.
    RsaPss(Hash),
    Ed25519,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        use sha2::Digest as _;
        match self {
            Hash::Sha256 => sha2::Sha256::digest(data).to_vec(),
            Hash::Sha384 => sha2::Sha384::digest(data).to_vec(),
            Hash::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }

    /// The hash an AlgorithmIdentifier OID names (digest algorithms).
    pub fn from_oid(oid: &ObjectIdentifier) -> Option<Hash> {
        Some(match oid.to_string().as_str() {
            "2.16.840.1.101.3.4.2.1" => Hash::Sha256,
            "2.16.840.1.101.3.4.2.2" => Hash::Sha384,
            "2.16.840.1.101.3.4.2.3" => Hash::Sha512,
            _ => return None,
        })
    }
}

impl SigAlg {
    /// The algorithm a signature AlgorithmIdentifier OID names (CMS and
    /// X.509 forms).
    pub fn from_oid(oid: &ObjectIdentifier) -> Option<SigAlg> {
        Some(match oid.to_string().as_str() {
            "1.2.840.10045.4.3.2" => SigAlg::EcdsaDer(Hash::Sha256),
            "1.2.840.10045.4.3.3" => SigAlg::EcdsaDer(Hash::Sha384),
            "1.2.840.10045.4.3.4" => SigAlg::EcdsaDer(Hash::Sha512),
            "1.2.840.113549.1.1.11" => SigAlg::RsaPkcs1(Hash::Sha256),
            "1.2.840.113549.1.1.12" => SigAlg::RsaPkcs1(Hash::Sha384),
            "1.2.840.113549.1.1.13" => SigAlg::RsaPkcs1(Hash::Sha512),
            "1.3.101.112" => SigAlg::Ed25519,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(pub String);

const EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
const ED25519: &str = "1.3.101.112";

impl CertKey {
    /// The key of a DER certificate.
    pub fn of_cert(der: &[u8]) -> Result<CertKey, KeyError> {
        let cert = Certificate::from_der(der).map_err(|e| KeyError(e.to_string()))?;
        CertKey::of_spki(cert.tbs_certificate().subject_public_key_info())
    }

    /// The key of a DER SubjectPublicKeyInfo.
    pub fn of_spki_der(der: &[u8]) -> Result<CertKey, KeyError> {
        let spki = x509_cert::spki::SubjectPublicKeyInfoOwned::from_der(der)
            .map_err(|e| KeyError(e.to_string()))?;
        CertKey::of_spki(&spki)
    }

    fn of_spki(spki: &x509_cert::spki::SubjectPublicKeyInfoOwned) -> Result<CertKey, KeyError> {
        let bits = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| KeyError("the public key is not whole bytes".into()))?
            .to_vec();
        match spki.algorithm.oid.to_string().as_str() {
            EC_PUBLIC_KEY => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
                    .map(|o| o.to_string());
                match curve.as_deref() {
                    Some("1.2.840.10045.3.1.7") => Ok(CertKey::P256(bits)),
                    Some("1.3.132.0.34") => Ok(CertKey::P384(bits)),
                    Some("1.3.132.0.35") => Ok(CertKey::P521(bits)),
                    other => Err(KeyError(format!("unsupported elliptic curve {other:?}"))),
                }
            }
            RSA_ENCRYPTION => CertKey::rsa_pkcs1(bits),
            ED25519 => Ok(CertKey::Ed25519(bits)),
            other => Err(KeyError(format!("unsupported key algorithm {other}"))),
        }
    }

    /// An RSA key from its PKCS#1 RSAPublicKey DER.
    pub fn rsa_pkcs1(der: Vec<u8>) -> Result<CertKey, KeyError> {
        let n = Tlv::parse(&der)
            .and_then(|seq| seq.children())
            .ok()
            .and_then(|c| c.first().map(|n| n.value))
            .ok_or_else(|| KeyError("the RSA key cannot be read".into()))?;
        let n = n.strip_prefix(&[0]).unwrap_or(n);
        let size = n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize);
        Ok(CertKey::Rsa(der, size))
    }

    /// A short name: `P-256`, `RSA-3072`, ...
    pub fn describe(&self) -> String {
        match self {
            CertKey::P256(_) => "P-256".into(),
            CertKey::P384(_) => "P-384".into(),
            CertKey::P521(_) => "P-521".into(),
            CertKey::Rsa(_, bits) => format!("RSA-{bits}"),
            CertKey::Ed25519(_) => "Ed25519".into(),
        }
    }

    /// Whether `sig` is this key's signature over `msg` made with `alg`.
    pub fn verify(&self, alg: SigAlg, msg: &[u8], sig: &[u8]) -> bool {
        use ring::signature as s;
        let ring_alg: &'static dyn s::VerificationAlgorithm = match (self, alg) {
            (CertKey::P256(_), SigAlg::EcdsaDer(Hash::Sha256)) => &s::ECDSA_P256_SHA256_ASN1,
            (CertKey::P256(_), SigAlg::EcdsaDer(Hash::Sha384)) => &s::ECDSA_P256_SHA384_ASN1,
            (CertKey::P384(_), SigAlg::EcdsaDer(Hash::Sha256)) => &s::ECDSA_P384_SHA256_ASN1,
            (CertKey::P384(_), SigAlg::EcdsaDer(Hash::Sha384)) => &s::ECDSA_P384_SHA384_ASN1,
            (CertKey::P256(_), SigAlg::EcdsaFixed(Hash::Sha256)) => &s::ECDSA_P256_SHA256_FIXED,
            (CertKey::P384(_), SigAlg::EcdsaFixed(Hash::Sha384)) => &s::ECDSA_P384_SHA384_FIXED,
            (CertKey::P521(point), SigAlg::EcdsaFixed(Hash::Sha512)) => {
                return verify_p521(point, msg, sig, false)
            }
            (CertKey::P521(point), SigAlg::EcdsaDer(Hash::Sha512)) => {
                return verify_p521(point, msg, sig, true)
            }
            (CertKey::Rsa(..), SigAlg::RsaPkcs1(Hash::Sha256)) => &s::RSA_PKCS1_2048_8192_SHA256,
            (CertKey::Rsa(..), SigAlg::RsaPkcs1(Hash::Sha384)) => &s::RSA_PKCS1_2048_8192_SHA384,
            (CertKey::Rsa(..), SigAlg::RsaPkcs1(Hash::Sha512)) => &s::RSA_PKCS1_2048_8192_SHA512,
            (CertKey::Rsa(..), SigAlg::RsaPss(Hash::Sha256)) => &s::RSA_PSS_2048_8192_SHA256,
            (CertKey::Rsa(..), SigAlg::RsaPss(Hash::Sha384)) => &s::RSA_PSS_2048_8192_SHA384,
            (CertKey::Rsa(..), SigAlg::RsaPss(Hash::Sha512)) => &s::RSA_PSS_2048_8192_SHA512,
            (CertKey::Ed25519(_), SigAlg::Ed25519) => &s::ED25519,
            _ => return false,
        };
        let key = match self {
            CertKey::P256(k) | CertKey::P384(k) | CertKey::P521(k) => k,
            CertKey::Rsa(k, _) | CertKey::Ed25519(k) => k,
        };
        s::UnparsedPublicKey::new(ring_alg, key)
            .verify(msg, sig)
            .is_ok()
    }
}

fn verify_p521(point: &[u8], msg: &[u8], sig: &[u8], der: bool) -> bool {
    use p521::ecdsa::signature::Verifier;
    let Ok(key) = p521::ecdsa::VerifyingKey::from_sec1_bytes(point) else {
        return false;
    };
    let sig = if der {
        p521::ecdsa::Signature::from_der(sig)
    } else {
        p521::ecdsa::Signature::from_slice(sig)
    };
    sig.is_ok_and(|s| key.verify(msg, &s).is_ok())
}

/// A certificate's validity window in Unix seconds (both ends inclusive).
pub fn validity(cert: &Certificate) -> (i64, i64) {
    let v = cert.tbs_certificate().validity();
    let secs = |t: x509_cert::time::Time| t.to_unix_duration().as_secs() as i64;
    (secs(v.not_before), secs(v.not_after))
}

/// Whether `cert` carries a signature by the key of `issuer` (both DER).
pub fn issued_by(cert: &Certificate, issuer: &[u8]) -> Result<(), KeyError> {
    let key = CertKey::of_cert(issuer)?;
    let alg = SigAlg::from_oid(&cert.signature_algorithm().oid).ok_or_else(|| {
        KeyError(format!(
            "certificate signature algorithm {}",
            cert.signature_algorithm().oid
        ))
    })?;
    let tbs = cert
        .tbs_certificate()
        .to_der()
        .map_err(|e| KeyError(e.to_string()))?;
    let sig = cert.signature().as_bytes().unwrap_or_default();
    match key.verify(alg, &tbs, sig) {
        true => Ok(()),
        false => Err(KeyError(
            "the signature does not verify with the issuer's key".into(),
        )),
    }
}

/// One DER element: its first identifier octet, its content, and all of
/// its bytes (header included).
#[derive(Debug, Clone, Copy)]
pub struct Tlv<'a> {
    pub tag: u8,
    pub value: &'a [u8],
    pub raw: &'a [u8],
}

impl<'a> Tlv<'a> {
    /// The element at the start of `input`; the bytes after it.
    pub fn next(input: &'a [u8]) -> Result<(Tlv<'a>, &'a [u8]), KeyError> {
        let bad = |e: x509_cert::der::Error| KeyError(format!("DER: {e}"));
        let mut r = SliceReader::new(input).map_err(bad)?;
        let header = Header::decode(&mut r).map_err(bad)?;
        let head = usize::try_from(header.encoded_len().map_err(bad)?)
            .map_err(|_| KeyError("DER: header too long".into()))?;
        let len = usize::try_from(header.length()).map_err(|_| KeyError("DER: length".into()))?;
        let end = head
            .checked_add(len)
            .filter(|&e| e <= input.len())
            .ok_or_else(|| KeyError("DER: an element runs past its container".into()))?;
        let _ = r.remaining_len();
        Ok((
            Tlv {
                tag: input[0],
                value: &input[head..end],
                raw: &input[..end],
            },
            &input[end..],
        ))
    }

    /// The one element `input` holds (nothing may follow it).
    pub fn parse(input: &'a [u8]) -> Result<Tlv<'a>, KeyError> {
        match Tlv::next(input)? {
            (t, []) => Ok(t),
            _ => Err(KeyError("DER: bytes after the element".into())),
        }
    }

    /// The elements a constructed element holds.
    pub fn children(&self) -> Result<Vec<Tlv<'a>>, KeyError> {
        if self.tag & 0x20 == 0 {
            return Err(KeyError(format!(
                "DER: tag {:#x} is not constructed",
                self.tag
            )));
        }
        let mut out = Vec::new();
        let mut rest = self.value;
        while !rest.is_empty() {
            let (t, r) = Tlv::next(rest)?;
            out.push(t);
            rest = r;
        }
        Ok(out)
    }

    /// An OBJECT IDENTIFIER element's value.
    pub fn oid(&self) -> Result<ObjectIdentifier, KeyError> {
        ObjectIdentifier::from_der(self.raw).map_err(|e| KeyError(format!("DER: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_walker_reads_nested_elements_and_refuses_overruns() {
        // SEQUENCE { INTEGER 5, SEQUENCE { BOOLEAN true } }
        let der = [0x30, 0x08, 0x02, 0x01, 0x05, 0x30, 0x03, 0x01, 0x01, 0xff];
        let top = Tlv::parse(&der).unwrap();
        let kids = top.children().unwrap();
        assert_eq!((kids[0].tag, kids[0].value), (0x02, &[5u8][..]));
        assert_eq!(kids[1].children().unwrap()[0].value, &[0xff]);
        assert!(Tlv::parse(&[0x30, 0x09, 0x02, 0x01, 0x05]).is_err());
        assert!(Tlv::parse(&[0x02, 0x01, 0x05, 0x00]).is_err());
        assert!(kids[0].children().is_err());
    }

    #[test]
    fn p521_signatures_verify_in_both_encodings() {
        use p521::ecdsa::signature::Signer;
        let mut secret = [7u8; 66];
        secret[0] = 0; // below the group order
        let sk = p521::ecdsa::SigningKey::from_slice(&secret).unwrap();
        let point = p521::ecdsa::VerifyingKey::from(&sk)
            .to_sec1_point(false)
            .as_bytes()
            .to_vec();
        let key = CertKey::P521(point);
        let sig: p521::ecdsa::Signature = sk.sign(b"notation payload");
        let fixed = sig.to_bytes();
        let der = sig.to_der();
        assert!(key.verify(
            SigAlg::EcdsaFixed(Hash::Sha512),
            b"notation payload",
            &fixed
        ));
        assert!(key.verify(
            SigAlg::EcdsaDer(Hash::Sha512),
            b"notation payload",
            der.as_bytes()
        ));
        assert!(!key.verify(SigAlg::EcdsaFixed(Hash::Sha512), b"other", &fixed));
        assert!(!key.verify(
            SigAlg::EcdsaFixed(Hash::Sha384),
            b"notation payload",
            &fixed
        ));
    }

    #[test]
    fn keys_verify_only_with_their_algorithm() {
        let cert = rcgen::CertificateParams::new(vec!["x".into()])
            .unwrap()
            .self_signed(&rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap())
            .unwrap();
        let key = CertKey::of_cert(cert.der()).unwrap();
        assert_eq!(key.describe(), "P-256");
        let x = x509_cert::Certificate::from_der(cert.der()).unwrap();
        let tbs = x.tbs_certificate().to_der().unwrap();
        let sig = x.signature().raw_bytes();
        assert!(key.verify(SigAlg::EcdsaDer(Hash::Sha256), &tbs, sig));
        assert!(!key.verify(SigAlg::EcdsaDer(Hash::Sha384), &tbs, sig));
        assert!(!key.verify(SigAlg::RsaPss(Hash::Sha256), &tbs, sig));
        assert!(!key.verify(SigAlg::EcdsaDer(Hash::Sha256), b"other", sig));
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(crate::proptests::config())]

        /// The DER walker over any bytes: elements never run past their
        /// container.
        #[test]
        fn der_elements_stay_inside_their_input(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            if let Ok((t, rest)) = Tlv::next(&bytes) {
                prop_assert_eq!(t.raw.len() + rest.len(), bytes.len());
                prop_assert!(t.value.len() <= t.raw.len());
                let _ = t.children();
                let _ = t.oid();
            }
        }

        #[test]
        fn any_bytes_are_a_key_or_refused(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
            let _ = CertKey::of_cert(&bytes);
            let _ = CertKey::of_spki_der(&bytes);
            let _ = CertKey::rsa_pkcs1(bytes);
        }
    }
}
