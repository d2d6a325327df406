//! Fulcio signing certificates: does a leaf chain to a certificate
//! authority of the trusted root at a trusted time, and whom does it name.
//!
//! Invariants:
//! - The time is one the caller established (a verified SET's integrated
//!   time); "now" is never used, because Fulcio leaves live ten minutes.
//! - Each authority of the trusted root is tried on its own, with only its
//!   own intermediates, and only while its `validFor` contains the time.
//!   Every certificate of the path, trust anchor included, must be valid at
//!   that time (webpki does not check an anchor's validity; we do).
//! - The leaf and every intermediate carry EKU codeSigning; the leaf has
//!   KeyUsage digitalSignature.
//! - The issuer is read from both Fulcio extensions (`.1.1` raw, `.1.8`
//!   UTF8String); if both are present they must agree, so no verifier
//!   reading only one of them can be shown a different issuer.

use std::collections::BTreeMap;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;
use webpki::{EndEntityCert, KeyUsage as Eku};
use x509_cert::der::asn1::{ObjectIdentifier, Utf8StringRef};
use x509_cert::der::{self, Decode};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{KeyUsage, SubjectAltName};
use x509_cert::Certificate;

use super::root::{Authority, TrustedRoot};

/// id-kp-codeSigning (1.3.6.1.5.5.7.3.3), as webpki wants it: the OID's
/// value bytes without tag and length.
const CODE_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];
/// Fulcio's extension arc, 1.3.6.1.4.1.57264.1.
const FULCIO_ARC: &str = "1.3.6.1.4.1.57264.1";
/// The arcs under [`FULCIO_ARC`] that hold raw bytes; later ones hold a DER
/// UTF8String (fulcio docs/oid-info.md).
const RAW_ARCS: std::ops::RangeInclusive<u32> = 1..=6;
const ISSUER_V1: u32 = 1;
const ISSUER_V2: u32 = 8;
/// OtherName SAN type for a Fulcio username identity.
const USERNAME_SAN: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.57264.1.7");

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("the signing certificate cannot be read: {0}")]
    Malformed(String),
    #[error("the signing certificate does not chain to a certificate authority of the trusted root at {at}: {detail}")]
    Untrusted { at: OffsetDateTime, detail: String },
    #[error("the signing certificate may not sign code: {0}")]
    Usage(String),
    #[error("the signing certificate names no usable identity: {0}")]
    Identity(String),
}

/// Who a Fulcio leaf says signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignerIdentity {
    /// Every URI, email and Fulcio username SAN, in certificate order.
    pub subjects: Vec<String>,
    /// The OIDC issuer that vouched for the subject.
    pub issuer: String,
    /// Every Fulcio extension by its last arc (2 = workflow trigger (raw),
    /// 12 = source repository URI, 20 = build trigger, ...).
    pub fulcio: BTreeMap<u32, String>,
}

/// Verifies `leaf_der` against the trusted root's certificate authorities at
/// `at` and returns the authority it chains to.
pub fn verify_chain<'r>(
    root: &'r TrustedRoot,
    leaf_der: &[u8],
    at: OffsetDateTime,
) -> Result<&'r Authority, CertError> {
    let untrusted = |detail: String| CertError::Untrusted { at, detail };
    let secs = u64::try_from(at.unix_timestamp())
        .map_err(|_| untrusted("the time is before 1970".into()))?;
    let now = UnixTime::since_unix_epoch(Duration::from_secs(secs));
    let leaf_der = CertificateDer::from(leaf_der);
    let leaf =
        EndEntityCert::try_from(&leaf_der).map_err(|e| CertError::Malformed(format!("{e:?}")))?;
    let mut last = String::from("the trusted root has no certificate authority valid then");
    // Refusals are reported by the last authority tried; a path that only
    // failed on EKU is a usage problem, not an unknown signer.
    let mut wrong_usage = false;
    for ca in root.certificate_authorities.iter() {
        let Some((anchor_der, intermediates)) = ca.chain.split_last() else {
            continue;
        };
        if !ca.valid.contains(at) {
            continue;
        }
        let anchor_der = CertificateDer::from(anchor_der.as_slice());
        let Ok(anchor) = webpki::anchor_from_trusted_cert(&anchor_der) else {
            last = format!("{}: its root certificate cannot be read", ca.uri);
            continue;
        };
        let intermediates: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .map(|c| CertificateDer::from(c.as_slice()))
            .collect();
        let anchors = [anchor];
        let verified = leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediates,
            now,
            Eku::required(CODE_SIGNING),
            None,
            None,
        );
        match verified {
            Ok(_) => match expired_in_chain(ca, at) {
                None => return Ok(ca),
                Some(why) => {
                    last = format!("{}: {why}", ca.uri);
                    wrong_usage = false;
                }
            },
            Err(webpki::Error::RequiredEkuNotFoundContext(_)) => {
                last = format!("{}: no extended key usage codeSigning in the path", ca.uri);
                wrong_usage = true;
            }
            Err(e) => {
                last = format!("{}: {e:?}", ca.uri);
                wrong_usage = false;
            }
        }
    }
    Err(if wrong_usage {
        CertError::Usage(last)
    } else {
        untrusted(last)
    })
}

/// The first certificate of the authority's chain not valid at `at`.
fn expired_in_chain(ca: &Authority, at: OffsetDateTime) -> Option<String> {
    let secs = u64::try_from(at.unix_timestamp()).ok()?;
    ca.chain.iter().enumerate().find_map(|(i, der)| {
        let cert = match Certificate::from_der(der) {
            Ok(c) => c,
            Err(e) => return Some(format!("chain certificate {i} cannot be read: {e}")),
        };
        let v = cert.tbs_certificate().validity();
        let (from, to) = (
            v.not_before.to_unix_duration().as_secs(),
            v.not_after.to_unix_duration().as_secs(),
        );
        (secs < from || secs > to).then(|| format!("chain certificate {i} is not valid then"))
    })
}

/// Reads the signer identity a Fulcio leaf names. Does not verify anything
/// but the leaf's own shape: call [`verify_chain`] first.
pub fn signer_identity(leaf_der: &[u8]) -> Result<SignerIdentity, CertError> {
    let cert = Certificate::from_der(leaf_der).map_err(|e| CertError::Malformed(e.to_string()))?;
    let tbs = cert.tbs_certificate();
    let malformed = |e: der::Error| CertError::Malformed(e.to_string());
    match tbs.get_extension::<KeyUsage>().map_err(malformed)? {
        Some((_, ku)) if ku.digital_signature() => {}
        _ => {
            return Err(CertError::Usage(
                "the leaf lacks key usage digitalSignature".into(),
            ))
        }
    }
    let subjects = match tbs.get_extension::<SubjectAltName>().map_err(malformed)? {
        Some((_, san)) => san.0.iter().filter_map(subject_of).collect(),
        None => Vec::new(),
    };
    if subjects.is_empty() {
        return Err(CertError::Identity(
            "no URI, email or username subject alternative name".into(),
        ));
    }
    let fulcio = fulcio_extensions(&cert)?;
    let issuer = match (fulcio.get(&ISSUER_V1), fulcio.get(&ISSUER_V2)) {
        (Some(v1), Some(v2)) if v1 != v2 => {
            return Err(CertError::Identity(format!(
            "the two issuer extensions disagree: {v1:?} (1.3.6.1.4.1.57264.1.1) and {v2:?} (.1.8)"
        )))
        }
        (_, Some(issuer)) | (Some(issuer), None) => issuer.clone(),
        (None, None) => return Err(CertError::Identity("no OIDC issuer extension".into())),
    };
    Ok(SignerIdentity {
        subjects,
        issuer,
        fulcio,
    })
}

fn subject_of(name: &GeneralName) -> Option<String> {
    match name {
        GeneralName::UniformResourceIdentifier(s) | GeneralName::Rfc822Name(s) => {
            Some(s.as_str().to_owned())
        }
        GeneralName::OtherName(o) if o.type_id == USERNAME_SAN => o
            .value
            .decode_as::<Utf8StringRef<'_>>()
            .ok()
            .map(|s| s.as_str().to_owned()),
        _ => None,
    }
}

fn fulcio_extensions(cert: &Certificate) -> Result<BTreeMap<u32, String>, CertError> {
    let mut out = BTreeMap::new();
    for ext in cert.tbs_certificate().extensions().into_iter().flatten() {
        let oid = ext.extn_id.to_string();
        let Some(arc) = oid
            .strip_prefix(FULCIO_ARC)
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let bytes = ext.extn_value.as_bytes();
        let value = if RAW_ARCS.contains(&arc) {
            std::str::from_utf8(bytes).map(str::to_owned).ok()
        } else {
            Utf8StringRef::from_der(bytes)
                .ok()
                .map(|s| s.as_str().to_owned())
        };
        let value = value.ok_or_else(|| {
            CertError::Malformed(format!("Fulcio extension {oid} is not UTF-8 text"))
        })?;
        if out.insert(arc, value).is_some() {
            return Err(CertError::Malformed(format!(
                "Fulcio extension {oid} appears twice"
            )));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::sigstore::testdata::{fixture, material};
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine;

    /// The trusted root, leaf DER and integrated time of a keyless vector.
    fn case(name: &str) -> (TrustedRoot, Vec<u8>, OffsetDateTime) {
        let (root, material) = material(name);
        let leaf = B64
            .decode(material["certificate"]["rawBytes"].as_str().unwrap())
            .unwrap();
        let t: i64 = material["tlogEntries"][0]["integratedTime"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        (root, leaf, OffsetDateTime::from_unix_timestamp(t).unwrap())
    }

    const WORKFLOW: &str =
        "https://github.com/acme/models/.github/workflows/release.yml@refs/tags/v1.0.0";
    const GITHUB: &str = "https://token.actions.githubusercontent.com";

    #[test]
    fn valid_leaves_chain_and_name_their_signer() {
        for (name, subject) in [
            ("bundle-valid-uri", WORKFLOW),
            ("bundle-valid-email", "model-signer@example.test"),
            ("bundle-valid-github-ext", WORKFLOW),
        ] {
            let (root, leaf, at) = case(name);
            let ca = verify_chain(&root, &leaf, at).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!ca.chain.is_empty());
            let id = signer_identity(&leaf).unwrap();
            assert_eq!(id.subjects, vec![subject.to_string()], "{name}");
            assert!(id.issuer.starts_with("https://"), "{name}: {}", id.issuer);
        }
    }

    #[test]
    fn github_extensions_are_read_raw_and_as_utf8_strings() {
        let (_, leaf, _) = case("bundle-valid-github-ext");
        let id = signer_identity(&leaf).unwrap();
        assert_eq!(id.issuer, GITHUB);
        // .9 build signer URI (UTF8String) equals the SAN for GitHub.
        assert_eq!(id.fulcio.get(&9).map(String::as_str), Some(WORKFLOW));
        assert_eq!(
            id.fulcio.get(&12).map(String::as_str),
            Some("https://github.com/acme/models")
        );
        // .2 (raw) and .20 (UTF8String) both carry the trigger.
        assert!(id.fulcio.contains_key(&2) && id.fulcio.contains_key(&20));
        assert!(id.fulcio.values().all(|v| !v.starts_with('\u{c}')));
    }

    #[test]
    fn a_leaf_for_servers_is_not_a_signer() {
        let (root, leaf, at) = case("bundle-eku-server-auth");
        assert!(matches!(
            verify_chain(&root, &leaf, at),
            Err(CertError::Usage(_))
        ));
    }

    #[test]
    fn a_leaf_outside_its_validity_at_the_integrated_time_is_untrusted() {
        let (root, leaf, at) = case("bundle-time-outside-cert");
        assert!(matches!(
            verify_chain(&root, &leaf, at),
            Err(CertError::Untrusted { .. })
        ));
        // The same leaf chains an hour earlier, within its ten minutes.
        let earlier = at - time::Duration::hours(1);
        assert!(verify_chain(&root, &leaf, earlier).is_ok());
    }

    #[test]
    fn a_leaf_from_another_ca_is_untrusted() {
        let (root, leaf, at) = case("bundle-untrusted-root");
        let err = verify_chain(&root, &leaf, at).unwrap_err();
        assert!(matches!(err, CertError::Untrusted { .. }), "{err}");
        // And the valid leaf is refused by the public-good root.
        let public = TrustedRoot::parse(&fixture("public-good-trusted_root.json")).unwrap();
        let (_, leaf, at) = case("bundle-valid-uri");
        assert!(verify_chain(&public, &leaf, at).is_err());
    }

    #[test]
    fn a_ca_outside_its_valid_for_is_not_tried() {
        let (mut root, leaf, at) = case("bundle-valid-uri");
        for ca in root.certificate_authorities.iter_mut() {
            ca.valid.end = Some(at - time::Duration::seconds(1));
        }
        assert!(matches!(
            verify_chain(&root, &leaf, at),
            Err(CertError::Untrusted { .. })
        ));
    }

    #[test]
    fn every_chain_certificate_must_be_valid_at_the_time() {
        // webpki leaves the anchor's validity to us.
        let (root, _, at) = case("bundle-valid-uri");
        let ca = &root.certificate_authorities[0];
        assert_eq!(expired_in_chain(ca, at), None);
        let late = OffsetDateTime::from_unix_timestamp(7_258_118_400).unwrap(); // 2200
        assert!(expired_in_chain(ca, late).is_some());
        let early = OffsetDateTime::from_unix_timestamp(0).unwrap();
        assert!(expired_in_chain(ca, early).is_some());
    }

    #[test]
    fn disagreeing_issuer_extensions_are_refused() {
        let (root, leaf, at) = case("bundle-issuer-v1-mismatch");
        assert!(verify_chain(&root, &leaf, at).is_ok(), "the chain is fine");
        let err = signer_identity(&leaf).unwrap_err();
        assert!(err.to_string().contains("evil.example.test"), "{err}");
    }

    #[test]
    fn garbage_is_malformed() {
        let (root, _, at) = case("bundle-valid-uri");
        assert!(matches!(
            verify_chain(&root, b"not a certificate", at),
            Err(CertError::Malformed(_))
        ));
        assert!(matches!(
            signer_identity(b"\x30\x03\x02\x01\x01"),
            Err(CertError::Malformed(_))
        ));
    }
}
