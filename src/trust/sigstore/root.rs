//! A Sigstore trusted root (`trusted_root.json`, the protobuf-specs
//! `dev.sigstore.trustroot.v1.TrustedRoot` in its JSON form): the Fulcio
//! CAs, the Rekor logs, the CT logs and the timestamp authorities, each with
//! the window it may be trusted in. Pure: parsed from bytes.
//!
//! Invariants: a transparency or CT log without a `validFor.start` is
//! refused (the conformance case `trust-root-tlog-missing-validity-start`);
//! windows are inclusive; a log is found by its key id (SHA-256 of its
//! public key), whether the caller has it as bytes, base64 or hex.

use crate::trust::x509::{CertKey, Hash, SigAlg};
use crate::trust::PublicKey;
use base64::Engine;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Why a trusted root cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("trusted root: {0}")]
pub struct RootError(pub String);

/// When something may be trusted (both ends inclusive; no end: still valid).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub start: OffsetDateTime,
    pub end: Option<OffsetDateTime>,
}

impl Validity {
    /// Whether `t` lies in the window.
    pub fn contains(&self, t: OffsetDateTime) -> bool {
        self.start <= t && self.end.is_none_or(|e| t <= e)
    }
}

/// A transparency log (Rekor) or a CT log.
#[derive(Debug, Clone)]
pub struct Log {
    pub base_url: String,
    pub key: LogKey,
    /// The id the log is named by in entries: for Rekor v1 and CT logs the
    /// SHA-256 of its public key (DER SPKI); for Rekor v2 its checkpoint
    /// key id. Taken from the trusted root as given.
    pub key_id: [u8; 32],
    pub valid: Validity,
}

/// A log's public key: the kinds cosign keys come in (ECDSA P-256,
/// Ed25519), or an RSA key (some CT logs), which signs PKCS#1 SHA-256.
#[derive(Debug, Clone)]
pub enum LogKey {
    Cosign(PublicKey),
    Rsa(CertKey),
}

impl LogKey {
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        match self {
            LogKey::Cosign(k) => k.verify(msg, sig),
            LogKey::Rsa(k) => k.verify(SigAlg::RsaPkcs1(Hash::Sha256), msg, sig),
        }
    }
}

/// A certificate authority (Fulcio) or a timestamp authority.
#[derive(Debug, Clone)]
pub struct Authority {
    pub uri: String,
    /// DER certificates, leaf-most first; the last is the trust anchor.
    pub chain: Vec<Vec<u8>>,
    pub valid: Validity,
}

/// A parsed trusted root.
#[derive(Debug, Clone)]
pub struct TrustedRoot {
    pub tlogs: Vec<Log>,
    pub ctlogs: Vec<Log>,
    pub certificate_authorities: Vec<Authority>,
    pub timestamp_authorities: Vec<Authority>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRoot {
    media_type: String,
    #[serde(default)]
    tlogs: Vec<RawLog>,
    #[serde(default)]
    ctlogs: Vec<RawLog>,
    #[serde(default)]
    certificate_authorities: Vec<RawAuthority>,
    #[serde(default)]
    timestamp_authorities: Vec<RawAuthority>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawLog {
    #[serde(default)]
    base_url: String,
    public_key: RawKey,
    log_id: RawLogId,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawKey {
    raw_bytes: String,
    #[serde(default)]
    key_details: String,
    #[serde(default)]
    valid_for: Option<RawValidity>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawLogId {
    key_id: String,
}

#[derive(Deserialize)]
struct RawValidity {
    start: Option<String>,
    end: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawAuthority {
    #[serde(default)]
    uri: String,
    cert_chain: RawChain,
    #[serde(default)]
    valid_for: Option<RawValidity>,
}

#[derive(Deserialize)]
struct RawChain {
    certificates: Vec<RawCert>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCert {
    raw_bytes: String,
}

fn time_of(what: &str, s: &str) -> Result<OffsetDateTime, RootError> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| RootError(format!("{what}: {s:?} is not an RFC 3339 time: {e}")))
}

fn validity(what: &str, v: Option<&RawValidity>) -> Result<Validity, RootError> {
    let start = v
        .and_then(|v| v.start.as_deref())
        .ok_or_else(|| RootError(format!("{what} has no validFor.start")))?;
    let end = v.and_then(|v| v.end.as_deref());
    Ok(Validity {
        start: time_of(what, start)?,
        end: end.map(|e| time_of(what, e)).transpose()?,
    })
}

fn b64(what: &str, s: &str) -> Result<Vec<u8>, RootError> {
    B64.decode(s.trim())
        .map_err(|e| RootError(format!("{what}: not base64: {e}")))
}

/// A DER SPKI public key of the kinds Sigstore logs use.
fn spki_key(what: &str, der: &[u8], details: &str) -> Result<LogKey, RootError> {
    match PublicKey::from_spki_der(der) {
        Ok(k) => Ok(LogKey::Cosign(k)),
        Err(_) if details.starts_with("PKCS1_RSA") => CertKey::rsa_pkcs1(der.to_vec())
            .map(LogKey::Rsa)
            .map_err(|e| RootError(format!("{what}: key ({details}) is not usable: {e}"))),
        Err(e) => match CertKey::of_spki_der(der) {
            Ok(k @ CertKey::Rsa(..)) => Ok(LogKey::Rsa(k)),
            _ => Err(RootError(format!(
                "{what}: key ({details}) is not usable: {e}"
            ))),
        },
    }
}

fn log(kind: &str, raw: &RawLog) -> Result<Log, RootError> {
    let what = format!("{kind} {}", raw.base_url);
    let der = b64(&what, &raw.public_key.raw_bytes)?;
    let key = spki_key(&what, &der, &raw.public_key.key_details)?;
    let key_id: [u8; 32] = b64(&what, &raw.log_id.key_id)?
        .try_into()
        .map_err(|_| RootError(format!("{what}: logId.keyId is not 32 bytes")))?;
    Ok(Log {
        base_url: raw.base_url.clone(),
        key,
        key_id,
        valid: validity(&what, raw.public_key.valid_for.as_ref())?,
    })
}

fn authority(kind: &str, raw: &RawAuthority) -> Result<Authority, RootError> {
    let what = format!("{kind} {}", raw.uri);
    let chain = raw
        .cert_chain
        .certificates
        .iter()
        .map(|c| b64(&what, &c.raw_bytes))
        .collect::<Result<Vec<_>, _>>()?;
    if chain.is_empty() {
        return Err(RootError(format!("{what} has no certificates")));
    }
    Ok(Authority {
        uri: raw.uri.clone(),
        chain,
        valid: validity(&what, raw.valid_for.as_ref())?,
    })
}

impl TrustedRoot {
    /// Parse the JSON form of a trusted root (media types v0.1 and v0.2).
    pub fn parse(bytes: &[u8]) -> Result<TrustedRoot, RootError> {
        crate::oci::json::check_strict(bytes).map_err(|e| RootError(e.to_string()))?;
        let raw: RawRoot = serde_json::from_slice(bytes)
            .map_err(|e| RootError(format!("not a TrustedRoot: {e}")))?;
        if !raw
            .media_type
            .starts_with("application/vnd.dev.sigstore.trustedroot")
        {
            return Err(RootError(format!(
                "media type {:?} is not a Sigstore trusted root",
                raw.media_type
            )));
        }
        Ok(TrustedRoot {
            tlogs: raw
                .tlogs
                .iter()
                .map(|l| log("tlog", l))
                .collect::<Result<_, _>>()?,
            ctlogs: raw
                .ctlogs
                .iter()
                .map(|l| log("ctlog", l))
                .collect::<Result<_, _>>()?,
            certificate_authorities: raw
                .certificate_authorities
                .iter()
                .map(|a| authority("certificate authority", a))
                .collect::<Result<_, _>>()?,
            timestamp_authorities: raw
                .timestamp_authorities
                .iter()
                .map(|a| authority("timestamp authority", a))
                .collect::<Result<_, _>>()?,
        })
    }

    /// The transparency log with this key id.
    pub fn tlog(&self, key_id: &[u8]) -> Option<&Log> {
        self.tlogs.iter().find(|l| l.key_id.as_slice() == key_id)
    }

    /// The transparency log a legacy bundle names by its hex `logID`.
    pub fn tlog_by_hex(&self, log_id: &str) -> Option<&Log> {
        let id = hex::decode(log_id.trim()).ok()?;
        self.tlog(&id)
    }

    /// The CT log with this key id (an SCT's `LogID`).
    pub fn ctlog(&self, key_id: &[u8]) -> Option<&Log> {
        self.ctlogs.iter().find(|l| l.key_id.as_slice() == key_id)
    }
}

/// The key id logs use for a DER public key.
pub fn key_id_of(spki_der: &[u8]) -> [u8; 32] {
    Sha256::digest(spki_der).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::sigstore::testdata::fixture;

    #[test]
    fn the_public_good_root_parses_with_its_windows() {
        let root = TrustedRoot::parse(&fixture("public-good-trusted_root.json")).unwrap();
        assert_eq!(root.tlogs.len(), 2);
        assert_eq!(root.certificate_authorities.len(), 2);
        assert!(root.ctlogs.len() >= 2);
        // Rekor v1 and CT logs are named by the SHA-256 of their key
        // (Rekor v2 by its checkpoint key id).
        let v1 = root
            .tlogs
            .iter()
            .filter(|l| !l.base_url.contains("log2025"));
        for l in v1.chain(&root.ctlogs) {
            let LogKey::Cosign(k) = &l.key else { continue };
            assert_eq!(key_id_of(&k.spki_der()), l.key_id, "{}", l.base_url);
        }
        let rekor = root
            .tlogs
            .iter()
            .find(|l| l.base_url == "https://rekor.sigstore.dev")
            .unwrap();
        assert!(root.tlog_by_hex(&hex::encode(rekor.key_id)).is_some());
        let t2021 = time_of("t", "2021-06-01T00:00:00Z").unwrap();
        let t2020 = time_of("t", "2020-06-01T00:00:00Z").unwrap();
        assert!(rekor.valid.contains(t2021));
        assert!(!rekor.valid.contains(t2020));
        // One Fulcio CA ended in 2022.
        let t2025 = time_of("t", "2025-06-01T00:00:00Z").unwrap();
        assert!(root
            .certificate_authorities
            .iter()
            .any(|a| !a.valid.contains(t2025)));
    }

    #[test]
    fn a_log_without_a_start_or_with_a_bad_key_is_refused() {
        let text = String::from_utf8(fixture("bundle-valid-uri/trusted_root.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut no_start = v.clone();
        no_start["tlogs"][0]["publicKey"]["validFor"]
            .as_object_mut()
            .unwrap()
            .remove("start");
        let e = TrustedRoot::parse(no_start.to_string().as_bytes()).unwrap_err();
        assert!(e.0.contains("no validFor.start"), "{e}");
        let mut bad_key = v.clone();
        bad_key["tlogs"][0]["publicKey"]["rawBytes"] = "AAAA".into();
        assert!(TrustedRoot::parse(bad_key.to_string().as_bytes()).is_err());
        let mut other = v;
        other["mediaType"] = "application/json".into();
        assert!(TrustedRoot::parse(other.to_string().as_bytes()).is_err());
    }
}
