//! RFC 3161 timestamps, checked offline against the timestamp authorities
//! of a trusted root: the time a Sigstore bundle's signature existed by
//! when the log gives none (Rekor v2 entries carry no integrated time).
//!
//! Invariants: a timestamp counts only when its CMS signature verifies with
//! the key of the leaf of an authority *from the trusted root* (certificates
//! embedded in the token are never trusted), its signed attributes bind the
//! TSTInfo it carries, that TSTInfo's message imprint is the hash of the
//! exact signature bytes being timestamped, and its time lies in the
//! authority's validity window and in every certificate of its chain (whose
//! links verify, and whose leaf may stamp time). Pure.

use time::OffsetDateTime;
use x509_cert::der::Decode;
use x509_cert::ext::pkix::ExtendedKeyUsage;
use x509_cert::Certificate;

use super::root::{Authority, TrustedRoot};
use crate::trust::x509::{issued_by, validity, CertKey, Hash, SigAlg, Tlv};

const SIGNED_DATA: &str = "1.2.840.113549.1.7.2";
const TST_INFO: &str = "1.2.840.113549.1.9.16.1.4";
const CONTENT_TYPE_ATTR: &str = "1.2.840.113549.1.9.3";
const MESSAGE_DIGEST_ATTR: &str = "1.2.840.113549.1.9.4";
const TIME_STAMPING: &str = "1.3.6.1.5.5.7.3.8";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TsaError {
    #[error("timestamp is malformed: {0}")]
    Malformed(String),
    #[error("timestamp was not issued for this signature (message imprint differs)")]
    WrongImprint,
    #[error("timestamp is signed by no timestamp authority of the trusted root")]
    Untrusted,
    #[error("timestamp {at} lies outside {what}")]
    OutsideValidity { at: OffsetDateTime, what: String },
}

fn malformed(what: impl std::fmt::Display) -> TsaError {
    TsaError::Malformed(what.to_string())
}

/// The parts of a timestamp token a verifier needs.
struct Token<'a> {
    /// DER TSTInfo (the encapsulated content).
    tst_info: &'a [u8],
    digest: Hash,
    /// The signed attributes, re-tagged as the SET OF that was signed.
    signed_attrs: Vec<u8>,
    message_digest: &'a [u8],
    alg: SigAlg,
    signature: &'a [u8],
}

fn child<'a>(kids: &[Tlv<'a>], i: usize, what: &str) -> Result<Tlv<'a>, TsaError> {
    kids.get(i)
        .copied()
        .ok_or_else(|| malformed(format!("{what} is missing")))
}

fn oid_of(t: &Tlv<'_>) -> Result<String, TsaError> {
    t.oid().map(|o| o.to_string()).map_err(malformed)
}

/// The first element of an AlgorithmIdentifier, as a dotted OID.
fn algorithm(t: &Tlv<'_>) -> Result<String, TsaError> {
    oid_of(&child(&t.children().map_err(malformed)?, 0, "algorithm")?)
}

fn parse_token(der: &[u8]) -> Result<Token<'_>, TsaError> {
    let top = Tlv::parse(der).map_err(malformed)?;
    let kids = top.children().map_err(malformed)?;
    // A TimeStampResp (status, token) or the token (a ContentInfo) itself.
    let content_info = match kids.first() {
        Some(status) if status.tag == 0x30 => {
            let code = child(&status.children().map_err(malformed)?, 0, "status")?;
            if !matches!(code.value, [0] | [1]) {
                return Err(malformed("the response status is not granted"));
            }
            child(&kids, 1, "timeStampToken")?
        }
        _ => top,
    };
    let ci = content_info.children().map_err(malformed)?;
    if oid_of(&child(&ci, 0, "contentType")?)? != SIGNED_DATA {
        return Err(malformed("the token is not CMS SignedData"));
    }
    let explicit = child(&ci, 1, "content")?;
    let sd = child(&explicit.children().map_err(malformed)?, 0, "SignedData")?;
    let sd = sd.children().map_err(malformed)?;
    let encap = child(&sd, 2, "encapContentInfo")?
        .children()
        .map_err(malformed)?;
    if oid_of(&child(&encap, 0, "eContentType")?)? != TST_INFO {
        return Err(malformed("the signed content is not a TSTInfo"));
    }
    let econtent = child(&encap, 1, "eContent")?;
    let tst_info = child(&econtent.children().map_err(malformed)?, 0, "eContent")?.value;
    let signer_infos = sd.last().ok_or_else(|| malformed("no signerInfos"))?;
    let infos = signer_infos.children().map_err(malformed)?;
    let [si] = infos.as_slice() else {
        return Err(malformed("a timestamp needs exactly one signer"));
    };
    let si = si.children().map_err(malformed)?;
    let digest_oid = algorithm(&child(&si, 2, "digestAlgorithm")?)?;
    let digest = Hash::from_oid(&digest_oid.parse().map_err(malformed)?)
        .ok_or_else(|| malformed(format!("digest algorithm {digest_oid}")))?;
    let attrs = child(&si, 3, "signedAttrs")?;
    if attrs.tag != 0xa0 {
        return Err(malformed("the signer has no signed attributes"));
    }
    let mut content_type_ok = false;
    let mut message_digest = None;
    for a in attrs.children().map_err(malformed)? {
        let a = a.children().map_err(malformed)?;
        let values = child(&a, 1, "attribute values")?
            .children()
            .map_err(malformed)?;
        let [value] = values.as_slice() else {
            return Err(malformed("an attribute with other than one value"));
        };
        match oid_of(&child(&a, 0, "attribute type")?)?.as_str() {
            CONTENT_TYPE_ATTR => content_type_ok = oid_of(value)? == TST_INFO,
            MESSAGE_DIGEST_ATTR => message_digest = Some(value.value),
            _ => {}
        }
    }
    if !content_type_ok {
        return Err(malformed("the signed content type is not TSTInfo"));
    }
    let message_digest = message_digest.ok_or_else(|| malformed("no messageDigest attribute"))?;
    let mut signed_attrs = attrs.raw.to_vec();
    signed_attrs[0] = 0x31;
    let sig_oid = algorithm(&child(&si, 4, "signatureAlgorithm")?)?;
    let alg = match sig_oid.as_str() {
        "1.2.840.10045.2.1" => SigAlg::EcdsaDer(digest),
        "1.2.840.113549.1.1.1" => SigAlg::RsaPkcs1(digest),
        o => SigAlg::from_oid(&o.parse().map_err(malformed)?)
            .ok_or_else(|| malformed(format!("signature algorithm {o}")))?,
    };
    Ok(Token {
        tst_info,
        digest,
        signed_attrs,
        message_digest,
        alg,
        signature: child(&si, 5, "signature")?.value,
    })
}

/// `YYYYMMDDHHMMSS[.f*]Z` (RFC 3161 allows fractions of a second).
fn generalized_time(t: &Tlv<'_>) -> Result<OffsetDateTime, TsaError> {
    if t.tag != 0x18 {
        return Err(malformed("genTime is not a GeneralizedTime"));
    }
    let s = std::str::from_utf8(t.value).map_err(malformed)?;
    let s = s
        .strip_suffix('Z')
        .ok_or_else(|| malformed("genTime is not UTC"))?;
    let whole = s.split('.').next().unwrap_or_default();
    if whole.len() != 14 || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed(format!("genTime {s:?}")));
    }
    let n = |r: std::ops::Range<usize>| whole[r].parse::<u32>().unwrap_or(0);
    let date = time::Date::from_calendar_date(
        n(0..4) as i32,
        time::Month::try_from(n(4..6) as u8).map_err(malformed)?,
        n(6..8) as u8,
    )
    .map_err(malformed)?;
    let at = date
        .with_hms(n(8..10) as u8, n(10..12) as u8, n(12..14) as u8)
        .map_err(malformed)?;
    Ok(at.assume_utc())
}

/// The time a TSTInfo states, once its imprint is checked against
/// `signature`.
fn stamped_time(tst_info: &[u8], signature: &[u8]) -> Result<OffsetDateTime, TsaError> {
    let tst = Tlv::parse(tst_info).map_err(malformed)?;
    let kids = tst.children().map_err(malformed)?;
    let imprint = child(&kids, 2, "messageImprint")?
        .children()
        .map_err(malformed)?;
    let alg = algorithm(&child(&imprint, 0, "hashAlgorithm")?)?;
    let hash = Hash::from_oid(&alg.parse().map_err(malformed)?)
        .ok_or_else(|| malformed(format!("imprint hash {alg}")))?;
    if child(&imprint, 1, "hashedMessage")?.value != hash.digest(signature).as_slice() {
        return Err(TsaError::WrongImprint);
    }
    generalized_time(&child(&kids, 4, "genTime")?)
}

/// The authority's chain holds at `at`: every link verifies, every
/// certificate is valid then, and the leaf may stamp time.
fn check_chain(ca: &Authority, at: OffsetDateTime) -> Result<(), TsaError> {
    let certs = ca
        .chain
        .iter()
        .map(|d| Certificate::from_der(d).map_err(malformed))
        .collect::<Result<Vec<_>, _>>()?;
    let t = at.unix_timestamp();
    for (i, c) in certs.iter().enumerate() {
        let (from, to) = validity(c);
        if t < from || t > to {
            return Err(TsaError::OutsideValidity {
                at,
                what: format!("the validity of certificate {i} of {}", ca.uri),
            });
        }
        let issuer = ca.chain.get(i + 1).unwrap_or(&ca.chain[i]);
        issued_by(c, issuer).map_err(|e| {
            malformed(format!(
                "{}: certificate {i} is not signed by the next: {e}",
                ca.uri
            ))
        })?;
    }
    let leaf = certs.first().ok_or_else(|| malformed("an empty chain"))?;
    let eku = leaf
        .tbs_certificate()
        .get_extension::<ExtendedKeyUsage>()
        .map_err(malformed)?;
    match eku {
        Some((_, eku)) if eku.0.iter().any(|o| o.to_string() == TIME_STAMPING) => Ok(()),
        _ => Err(malformed(format!(
            "{}: the leaf may not stamp time",
            ca.uri
        ))),
    }
}

/// Verifies an RFC 3161 timestamp over `signature` with the timestamp
/// authorities of `root`; returns the time it states.
pub fn verify_timestamp(
    token: &[u8],
    signature: &[u8],
    root: &TrustedRoot,
) -> Result<OffsetDateTime, TsaError> {
    let tok = parse_token(token)?;
    if tok.message_digest != tok.digest.digest(tok.tst_info).as_slice() {
        return Err(malformed("the signed attributes name another TSTInfo"));
    }
    let at = stamped_time(tok.tst_info, signature)?;
    let mut last = TsaError::Untrusted;
    for ca in &root.timestamp_authorities {
        let Some(key) = ca.chain.first().and_then(|l| CertKey::of_cert(l).ok()) else {
            continue;
        };
        if !key.verify(tok.alg, &tok.signed_attrs, tok.signature) {
            continue;
        }
        if !ca.valid.contains(at) {
            last = TsaError::OutsideValidity {
                at,
                what: format!("the validity of {} in the trusted root", ca.uri),
            };
            continue;
        }
        match check_chain(ca, at) {
            Ok(()) => return Ok(at),
            Err(e) => last = e,
        }
    }
    Err(last)
}

#[cfg(test)]
mod props {
    use super::*;
    use base64::Engine;
    use proptest::prelude::*;

    /// A real RFC 3161 token, the signature it stamps, and its root.
    fn case() -> (Vec<u8>, Vec<u8>, TrustedRoot) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/sigstore-conformance/bundle-verify/rekor2-happy-path");
        let b: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("bundle.sigstore.json")).unwrap())
                .unwrap();
        let b64 = |s: &serde_json::Value| {
            base64::engine::general_purpose::STANDARD
                .decode(s.as_str().unwrap())
                .unwrap()
        };
        let token = b64(&b["verificationMaterial"]["timestampVerificationData"]
            ["rfc3161Timestamps"][0]["signedTimestamp"]);
        let sig = b64(&b["messageSignature"]["signature"]);
        let root =
            TrustedRoot::parse(&std::fs::read(dir.join("trusted_root.json")).unwrap()).unwrap();
        (token, sig, root)
    }

    #[test]
    fn the_real_token_verifies() {
        let (token, sig, root) = case();
        assert!(verify_timestamp(&token, &sig, &root).is_ok());
    }

    proptest! {
        #![proptest_config(crate::proptests::config())]

        /// A damaged token is refused or, if the damage missed everything
        /// that is checked, states the same time.
        #[test]
        fn damaged_tokens_never_state_another_time(t in crate::proptests::mutated(case().0)) {
            let (good, sig, root) = case();
            if let Ok(at) = verify_timestamp(&t, &sig, &root) {
                prop_assert_eq!(at, verify_timestamp(&good, &sig, &root).unwrap());
            }
        }
    }
}
