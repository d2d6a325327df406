//! Signed certificate timestamps embedded in a Fulcio leaf (RFC 6962 §3.3):
//! a CT log's promise that it saw the precertificate, so a certificate
//! authority cannot issue a signing certificate nobody can see.
//!
//! Invariants:
//! - At least one SCT must verify with a `ctlogs` key of the trusted root
//!   whose `validFor` contains the SCT's timestamp; SCTs from logs the root
//!   does not know are skipped, not trusted (threshold 1, as sigstore-go).
//! - The signed data is rebuilt from the leaf: its TBS with the SCT list
//!   extension removed, and the SHA-256 of the issuer's public key.

use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_cert::der::asn1::{ObjectIdentifier, OctetString};
use x509_cert::der::{Decode, Encode};
use x509_cert::ext::Extension;
use x509_cert::Certificate;

use super::root::TrustedRoot;

/// The embedded SCT list extension (1.3.6.1.4.1.11129.2.4.2).
const SCT_LIST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.11129.2.4.2");
/// TLS `HashAlgorithm.sha256`.
const SHA256: u8 = 4;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SctError {
    #[error("the signing certificate carries no signed certificate timestamp, so no certificate transparency log vouches for it")]
    Missing,
    #[error("the signing certificate's timestamps cannot be read: {0}")]
    Malformed(String),
    #[error("no signed certificate timestamp verifies with a certificate transparency log of the trusted root ({0})")]
    Unverified(String),
}

/// One SCT as a log signs it.
struct Sct<'a> {
    log_id: &'a [u8],
    timestamp_ms: u64,
    extensions: &'a [u8],
    hash: u8,
    signature: &'a [u8],
}

/// Verifies the SCTs embedded in `leaf_der`, issued by `issuer_der`, and
/// returns the time of the first that a trusted CT log signed.
pub fn verify_embedded_sct(
    root: &TrustedRoot,
    leaf_der: &[u8],
    issuer_der: &[u8],
) -> Result<OffsetDateTime, SctError> {
    let malformed = |e: &dyn std::fmt::Display| SctError::Malformed(e.to_string());
    let leaf = Certificate::from_der(leaf_der).map_err(|e| malformed(&e))?;
    let issuer = Certificate::from_der(issuer_der).map_err(|e| malformed(&e))?;
    let ext = leaf
        .tbs_certificate()
        .extensions()
        .into_iter()
        .flatten()
        .find(|e| e.extn_id == SCT_LIST)
        .ok_or(SctError::Missing)?;
    let list = OctetString::from_der(ext.extn_value.as_bytes()).map_err(|e| malformed(&e))?;
    let scts = parse_list(list.as_bytes()).ok_or_else(|| malformed(&"bad SCT list"))?;
    let tbs = precert_tbs(&leaf.tbs_certificate().to_der().map_err(|e| malformed(&e))?)
        .ok_or_else(|| malformed(&"bad certificate body"))?;
    let issuer_spki = issuer
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|e| malformed(&e))?;
    let issuer_key_hash: [u8; 32] = Sha256::digest(&issuer_spki).into();
    let mut why = String::from("none from a log it knows");
    for sct in scts {
        let Some(log) = root.ctlog(sct.log_id) else {
            continue;
        };
        let when = i64::try_from(sct.timestamp_ms / 1000)
            .ok()
            .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok());
        let Some(when) = when.filter(|t| log.valid.contains(*t)) else {
            why = format!(
                "{}: the timestamp is outside the log's validity",
                log.base_url
            );
            continue;
        };
        if sct.hash != SHA256 {
            why = format!(
                "{}: hash algorithm {} is not SHA-256",
                log.base_url, sct.hash
            );
            continue;
        }
        if log
            .key
            .verify(&signed_data(&sct, &issuer_key_hash, &tbs), sct.signature)
        {
            return Ok(when);
        }
        why = format!("{}: the signature does not verify", log.base_url);
    }
    Err(SctError::Unverified(why))
}

/// RFC 6962 `digitally-signed` input for a precertificate entry.
fn signed_data(sct: &Sct<'_>, issuer_key_hash: &[u8; 32], tbs: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(48 + tbs.len() + sct.extensions.len());
    out.push(0); // sct_version v1
    out.push(0); // signature_type certificate_timestamp
    out.extend_from_slice(&sct.timestamp_ms.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes()); // entry_type precert_entry
    out.extend_from_slice(issuer_key_hash);
    out.extend_from_slice(&(tbs.len() as u32).to_be_bytes()[1..]); // opaque<1..2^24-1>
    out.extend_from_slice(tbs);
    out.extend_from_slice(&(sct.extensions.len() as u16).to_be_bytes());
    out.extend_from_slice(sct.extensions);
    out
}

/// A TLS `SignedCertificateTimestampList`; `None` if it is malformed.
fn parse_list(bytes: &[u8]) -> Option<Vec<Sct<'_>>> {
    let mut list = Cursor(bytes);
    let mut items = Cursor(list.vec16()?);
    if !list.0.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    while !items.0.is_empty() {
        let mut c = Cursor(items.vec16()?);
        let version = c.take(1)?[0];
        let log_id = c.take(32)?;
        let timestamp_ms = u64::from_be_bytes(c.take(8)?.try_into().ok()?);
        let extensions = c.vec16()?;
        let hash = c.take(1)?[0];
        let _signature_algorithm = c.take(1)?;
        let signature = c.vec16()?;
        if version != 0 || !c.0.is_empty() {
            return None;
        }
        out.push(Sct {
            log_id,
            timestamp_ms,
            extensions,
            hash,
            signature,
        });
    }
    Some(out)
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = u16::from_be_bytes(self.take(2)?.try_into().ok()?);
        self.take(usize::from(n))
    }
}

/// The precertificate's TBS: `tbs` with the SCT list extension removed,
/// re-encoded in DER. `None` if `tbs` is not a well-formed TBS.
fn precert_tbs(tbs: &[u8]) -> Option<Vec<u8>> {
    let (0x30, fields) = split_tlv(tbs)?.0 else {
        return None;
    };
    let mut body = Vec::with_capacity(fields.len());
    for field in tlvs(fields)? {
        let (tag, content) = split_tlv(field)?.0;
        if tag != 0xA3 {
            body.extend_from_slice(field);
            continue;
        }
        let (0x30, exts) = split_tlv(content)?.0 else {
            return None;
        };
        let mut kept = Vec::with_capacity(exts.len());
        for ext in tlvs(exts)? {
            if Extension::from_der(ext).ok()?.extn_id != SCT_LIST {
                kept.extend_from_slice(ext);
            }
        }
        body.extend(tlv(0xA3, &tlv(0x30, &kept)));
    }
    Some(tlv(0x30, &body))
}

/// The elements of a DER content, each as its whole TLV.
fn tlvs(mut content: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    while !content.is_empty() {
        let (_, len) = split_tlv(content)?;
        let (item, rest) = content.split_at(len);
        out.push(item);
        content = rest;
    }
    Some(out)
}

/// ((tag, content), length of the whole TLV) of the DER element at the
/// start of `bytes` (single-byte tags, definite lengths up to 2^32).
fn split_tlv(bytes: &[u8]) -> Option<((u8, &[u8]), usize)> {
    let tag = *bytes.first()?;
    let first = *bytes.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let len = bytes
            .get(2..2 + n)?
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    Some(((tag, bytes.get(header..end)?), end))
}

/// A DER element with a single-byte tag.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::sigstore::testdata::material;
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine;

    /// (trusted root, leaf, issuer) of a keyless vector.
    fn case(name: &str) -> (TrustedRoot, Vec<u8>, Vec<u8>) {
        let (root, material) = material(name);
        let leaf = B64
            .decode(material["certificate"]["rawBytes"].as_str().unwrap())
            .unwrap();
        let issuer = root.certificate_authorities[0].chain[0].clone();
        (root, leaf, issuer)
    }

    #[test]
    fn the_vectors_scts() {
        let (root, leaf, issuer) = case("bundle-valid-uri");
        let when = verify_embedded_sct(&root, &leaf, &issuer).unwrap();
        assert!(when.year() >= 2025, "{when}");
        let (root, leaf, issuer) = case("bundle-no-sct");
        assert_eq!(
            verify_embedded_sct(&root, &leaf, &issuer),
            Err(SctError::Missing)
        );
        let (root, leaf, issuer) = case("bundle-sct-unknown-log");
        assert!(matches!(
            verify_embedded_sct(&root, &leaf, &issuer),
            Err(SctError::Unverified(_))
        ));
    }

    #[test]
    fn the_signature_covers_the_issuer_and_the_log_window() {
        let (mut root, leaf, issuer) = case("bundle-valid-uri");
        // Signed over another issuer's key: the hash differs.
        let anchor = root.certificate_authorities[0]
            .chain
            .last()
            .unwrap()
            .clone();
        assert!(matches!(
            verify_embedded_sct(&root, &leaf, &anchor),
            Err(SctError::Unverified(_))
        ));
        let when = verify_embedded_sct(&root, &leaf, &issuer).unwrap();
        for log in root.ctlogs.iter_mut() {
            log.valid.end = Some(when - time::Duration::seconds(1));
        }
        let err = verify_embedded_sct(&root, &leaf, &issuer).unwrap_err();
        assert!(err.to_string().contains("outside"), "{err}");
    }

    #[test]
    fn the_precertificate_drops_only_the_sct_extension() {
        let (_, leaf, _) = case("bundle-valid-uri");
        let cert = Certificate::from_der(&leaf).unwrap();
        let tbs = cert.tbs_certificate().to_der().unwrap();
        let pre = precert_tbs(&tbs).unwrap();
        assert!(pre.len() < tbs.len());
        // What is left parses as a TBS with every other extension.
        let count = |der: &[u8]| {
            let (_, fields) = split_tlv(der).unwrap().0;
            let ext = tlvs(fields)
                .unwrap()
                .into_iter()
                .find(|f| f[0] == 0xA3)
                .unwrap();
            let (_, seq) = split_tlv(ext).unwrap().0;
            tlvs(split_tlv(seq).unwrap().0 .1).unwrap().len()
        };
        assert_eq!(count(&pre) + 1, count(&tbs));
        // A certificate without the extension is its own precertificate.
        let (_, plain, _) = case("bundle-no-sct");
        let tbs = Certificate::from_der(&plain)
            .unwrap()
            .tbs_certificate()
            .to_der()
            .unwrap();
        assert_eq!(precert_tbs(&tbs).unwrap(), tbs);
    }

    #[test]
    fn malformed_lists_and_lengths_are_refused() {
        assert!(parse_list(&[]).is_none());
        assert!(parse_list(&[0, 5, 0, 3, 0]).is_none(), "short item");
        assert!(parse_list(&[0, 0]).unwrap().is_empty());
        assert!(split_tlv(&[0x30, 0x85, 0, 0, 0, 0, 1]).is_none());
        assert!(split_tlv(&[0x30, 0x03, 1]).is_none());
        let long = vec![7u8; 300];
        let enc = tlv(0x04, &long);
        assert_eq!(&enc[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(split_tlv(&enc).unwrap(), ((0x04, long.as_slice()), 304));
    }
}
