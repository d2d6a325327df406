//! Notary Project (Notation) signatures, verified offline against a trust
//! store of CA certificates: JWS (`application/jose+json`) and COSE
//! (`application/cose`) envelopes over a payload naming the signed
//! manifest, `notary.x509` signing scheme, X.509 chains in the envelope.
//!
//! Invariants:
//! - Integrity is always enforced: the envelope parses, its critical
//!   headers are complete, `alg` is the one the leaf key dictates (no
//!   substitution), the signature verifies with the leaf, the chain is
//!   ordered leaf to root with every link signed by the next and the root
//!   self-signed, and the payload names exactly the descriptor (media type,
//!   digest, size) being decided.
//! - Authenticity (a certificate of the chain is byte-identical to one of
//!   the trust store), certificate validity *now* (there is no trusted
//!   timestamp) and expiry are enforced at `strict`; `permissive` logs the
//!   last two; `audit` logs all three, and an audited signature never
//!   counts as a signer (the policy's job).
//! - Whom the signer is (the leaf's subject) is returned; which identities
//!   are wanted is the policy's decision ([`parse_dn`], [`dn_subset`]).

use std::collections::BTreeMap;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::Value;
use time::OffsetDateTime;
use x509_cert::der::Decode;
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages};
use x509_cert::Certificate;

use super::x509::{issued_by, validity, CertKey, Hash, SigAlg};

/// A referrer's `artifactType` (or, before OCI 1.1, its config media type).
pub const NOTATION_SIGNATURE: &str = "application/vnd.cncf.notary.signature";
pub const JWS: &str = "application/jose+json";
pub const COSE: &str = "application/cose";
const PAYLOAD_TYPE: &str = "application/vnd.cncf.notary.payload.v1+json";
const SCHEME: &str = "io.cncf.notary.signingScheme";
const SIGNING_TIME: &str = "io.cncf.notary.signingTime";
const EXPIRY: &str = "io.cncf.notary.expiry";
const AUTHENTIC_TIME: &str = "io.cncf.notary.authenticSigningTime";
const PLUGIN: &str = "io.cncf.notary.verificationPlugin";
/// The most certificates an envelope may carry.
const MAX_CHAIN: usize = 10;

/// How much of the verification is enforced (Notation's levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Strict,
    Permissive,
    Audit,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        Some(match s {
            "strict" => Level::Strict,
            "permissive" => Level::Permissive,
            "audit" => Level::Audit,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Strict => "strict",
            Level::Permissive => "permissive",
            Level::Audit => "audit",
        }
    }
}

/// A named set of trusted CA certificates (DER).
#[derive(Debug, Clone)]
pub struct TrustStore {
    pub name: String,
    pub certs: Vec<Vec<u8>>,
}

/// The manifest a signature must name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotationError {
    #[error("notation signature is malformed: {0}")]
    Malformed(String),
    #[error("notation signature: {0}")]
    Integrity(String),
    #[error("notation signature names {named}, not {expected}")]
    WrongTarget { named: String, expected: String },
    #[error("notation signature: certificate chain does not end in trust store {0:?}")]
    Untrusted(String),
    #[error("notation signature: {0}")]
    Expired(String),
}

fn malformed(what: impl std::fmt::Display) -> NotationError {
    NotationError::Malformed(what.to_string())
}

fn integrity(what: impl std::fmt::Display) -> NotationError {
    NotationError::Integrity(what.to_string())
}

/// A Notation signature whose integrity holds.
#[derive(Debug, Clone)]
pub struct NotationSignature {
    /// The leaf's subject (RFC 4514) and its attributes.
    pub subject: String,
    pub subject_attributes: BTreeMap<String, String>,
    /// Whether a certificate of the chain is in the trust store.
    pub authentic: bool,
    /// The signer's claimed signing time (not a trusted time).
    pub signing_time: OffsetDateTime,
    /// What the level let pass, for the explanation and the audit log.
    pub warnings: Vec<String>,
}

/// The parts of an envelope, format-neutral.
struct Envelope {
    alg: SigAlg,
    alg_name: String,
    /// Every protected header name, and the critical ones.
    headers: Vec<String>,
    crit: Vec<String>,
    cty: String,
    scheme: String,
    signing_time: OffsetDateTime,
    expiry: Option<OffsetDateTime>,
    payload: Vec<u8>,
    signed: Vec<u8>,
    signature: Vec<u8>,
    chain: Vec<Vec<u8>>,
}

fn jose_alg(name: &str) -> Option<SigAlg> {
    Some(match name {
        "ES256" => SigAlg::EcdsaFixed(Hash::Sha256),
        "ES384" => SigAlg::EcdsaFixed(Hash::Sha384),
        "ES512" => SigAlg::EcdsaFixed(Hash::Sha512),
        "PS256" => SigAlg::RsaPss(Hash::Sha256),
        "PS384" => SigAlg::RsaPss(Hash::Sha384),
        "PS512" => SigAlg::RsaPss(Hash::Sha512),
        _ => return None,
    })
}

/// The algorithm Notation derives from a key (the envelope must use it).
fn alg_for(key: &CertKey) -> Option<&'static str> {
    Some(match key {
        CertKey::P256(_) => "ES256",
        CertKey::P384(_) => "ES384",
        CertKey::P521(_) => "ES512",
        CertKey::Rsa(_, 2048) => "PS256",
        CertKey::Rsa(_, 3072) => "PS384",
        CertKey::Rsa(_, 4096) => "PS512",
        _ => return None,
    })
}

fn rfc3339(s: &str, what: &str) -> Result<OffsetDateTime, NotationError> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| malformed(format!("{what} {s:?}: {e}")))
}

fn parse_jws(bytes: &[u8]) -> Result<Envelope, NotationError> {
    let env = crate::oci::json::parse_strict(bytes).map_err(malformed)?;
    let field = |k: &str| {
        env[k]
            .as_str()
            .ok_or_else(|| malformed(format!("JWS has no {k}")))
    };
    let (protected_b64, payload_b64) = (field("protected")?, field("payload")?);
    let b64url = |s: &str, what: &str| {
        URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| malformed(format!("{what} is not base64url")))
    };
    let protected = b64url(protected_b64, "protected header")?;
    let h = crate::oci::json::parse_strict(&protected).map_err(malformed)?;
    let h = h
        .as_object()
        .ok_or_else(|| malformed("protected header is not an object"))?;
    let text = |k: &str| h.get(k).and_then(Value::as_str).map(str::to_string);
    let alg_name = text("alg").ok_or_else(|| malformed("no alg"))?;
    let x5c = env["header"]["x5c"]
        .as_array()
        .ok_or_else(|| malformed("the unprotected header has no x5c"))?;
    let chain = x5c
        .iter()
        .map(|c| {
            c.as_str()
                .and_then(|c| STANDARD.decode(c).ok())
                .ok_or_else(|| malformed("an x5c certificate is not base64"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let crit = match h.get("crit") {
        None => Vec::new(),
        Some(Value::Array(c)) => c
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| malformed("crit lists a non-string"))?,
        Some(_) => return Err(malformed("crit is not a list")),
    };
    Ok(Envelope {
        alg: jose_alg(&alg_name)
            .ok_or_else(|| integrity(format!("alg {alg_name} is not allowed")))?,
        alg_name,
        headers: h.keys().cloned().collect(),
        crit,
        cty: text("cty").unwrap_or_default(),
        scheme: text(SCHEME).unwrap_or_default(),
        signing_time: rfc3339(
            &text(SIGNING_TIME).ok_or_else(|| malformed("no signingTime"))?,
            "signingTime",
        )?,
        expiry: text(EXPIRY).map(|e| rfc3339(&e, "expiry")).transpose()?,
        payload: b64url(payload_b64, "payload")?,
        signed: format!("{protected_b64}.{payload_b64}").into_bytes(),
        signature: b64url(field("signature")?, "signature")?,
        chain,
    })
}

fn cose_alg(id: i128) -> Option<&'static str> {
    Some(match id {
        -7 => "ES256",
        -35 => "ES384",
        -36 => "ES512",
        -37 => "PS256",
        -38 => "PS384",
        -39 => "PS512",
        _ => return None,
    })
}

fn parse_cose(bytes: &[u8]) -> Result<Envelope, NotationError> {
    use ciborium::Value as Cbor;
    let v: Cbor = ciborium::from_reader(bytes).map_err(|e| malformed(format!("CBOR: {e}")))?;
    let Cbor::Tag(18, body) = v else {
        return Err(malformed("not a COSE_Sign1 (tag 18)"));
    };
    let Cbor::Array(parts) = *body else {
        return Err(malformed("COSE_Sign1 is not an array"));
    };
    let [Cbor::Bytes(protected), Cbor::Map(unprotected), Cbor::Bytes(payload), Cbor::Bytes(signature)] =
        parts.as_slice()
    else {
        return Err(malformed(
            "COSE_Sign1 is not [protected, unprotected, payload, signature]",
        ));
    };
    let Cbor::Map(h) = ciborium::from_reader::<Cbor, _>(protected.as_slice())
        .map_err(|e| malformed(format!("protected header: {e}")))?
    else {
        return Err(malformed("protected header is not a map"));
    };
    let name = |k: &Cbor| match k {
        Cbor::Integer(i) => i128::from(*i).to_string(),
        Cbor::Text(t) => t.clone(),
        _ => String::new(),
    };
    let get = |key: &str| h.iter().find(|(k, _)| name(k) == key).map(|(_, v)| v);
    let time = |key: &str| -> Result<Option<OffsetDateTime>, NotationError> {
        match get(key) {
            None => Ok(None),
            Some(Cbor::Tag(1, t)) => match **t {
                Cbor::Integer(i) => i64::try_from(i128::from(i))
                    .ok()
                    .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
                    .map(Some)
                    .ok_or_else(|| malformed(format!("{key} is out of range"))),
                _ => Err(malformed(format!("{key} is not an integer time"))),
            },
            Some(_) => Err(malformed(format!("{key} is not a CBOR tag-1 time"))),
        }
    };
    let alg_name = match get("1") {
        Some(Cbor::Integer(i)) => cose_alg(i128::from(*i))
            .ok_or_else(|| integrity(format!("COSE alg {} is not allowed", i128::from(*i))))?,
        _ => return Err(malformed("no alg")),
    };
    let crit = match get("2") {
        None => Vec::new(),
        Some(Cbor::Array(c)) => c.iter().map(name).collect(),
        Some(_) => return Err(malformed("crit is not a list")),
    };
    let text = |key: &str| match get(key) {
        Some(Cbor::Text(t)) => t.clone(),
        _ => String::new(),
    };
    let chain = match unprotected
        .iter()
        .find(|(k, _)| name(k) == "33")
        .map(|(_, v)| v)
    {
        Some(Cbor::Array(certs)) => certs
            .iter()
            .map(|c| match c {
                Cbor::Bytes(b) => Ok(b.clone()),
                _ => Err(malformed("an x5chain entry is not bytes")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(Cbor::Bytes(b)) => vec![b.clone()],
        _ => return Err(malformed("the unprotected header has no x5chain")),
    };
    let mut signed = Vec::new();
    ciborium::into_writer(
        &Cbor::Array(vec![
            Cbor::Text("Signature1".into()),
            Cbor::Bytes(protected.clone()),
            Cbor::Bytes(Vec::new()),
            Cbor::Bytes(payload.clone()),
        ]),
        &mut signed,
    )
    .map_err(malformed)?;
    Ok(Envelope {
        alg: jose_alg(alg_name).ok_or_else(|| integrity("alg"))?,
        alg_name: alg_name.to_string(),
        headers: h.iter().map(|(k, _)| name(k)).collect(),
        crit,
        cty: text("3"),
        scheme: text(SCHEME),
        signing_time: time(SIGNING_TIME)?.ok_or_else(|| malformed("no signingTime"))?,
        expiry: time(EXPIRY)?,
        payload: payload.clone(),
        signed,
        signature: signature.clone(),
        chain,
    })
}

/// The critical-header rules every envelope obeys.
fn check_headers(env: &Envelope) -> Result<(), NotationError> {
    if env.cty != PAYLOAD_TYPE {
        return Err(integrity(format!(
            "content type {:?} is not {PAYLOAD_TYPE}",
            env.cty
        )));
    }
    if env.headers.iter().any(|h| h == PLUGIN) {
        return Err(integrity(
            "it requires a verification plugin, which modelgate does not run",
        ));
    }
    match env.scheme.as_str() {
        "notary.x509" => {}
        "notary.x509.signingAuthority" => {
            return Err(integrity(
                "signing scheme notary.x509.signingAuthority is not supported",
            ))
        }
        s => return Err(integrity(format!("unknown signing scheme {s:?}"))),
    }
    for required in [SCHEME, EXPIRY, AUTHENTIC_TIME] {
        let present = env.headers.iter().any(|h| h == required);
        if (required == SCHEME || present) && !env.crit.iter().any(|c| c == required) {
            return Err(integrity(format!(
                "protected header {required} is not marked critical"
            )));
        }
    }
    for c in &env.crit {
        if !env.headers.contains(c) {
            return Err(integrity(format!("critical header {c} is absent")));
        }
    }
    if env.expiry.is_some_and(|e| e <= env.signing_time) {
        return Err(integrity("it expires before it was signed"));
    }
    Ok(())
}

fn cert(der: &[u8], i: usize) -> Result<Certificate, NotationError> {
    Certificate::from_der(der).map_err(|e| malformed(format!("certificate {i}: {e}")))
}

/// The chain's shape: leaf to root, each link signed by the next, the root
/// self-signed; CA and leaf key usages as Notation requires.
fn check_chain(chain: &[Vec<u8>]) -> Result<Vec<Certificate>, NotationError> {
    if chain.is_empty() || chain.len() > MAX_CHAIN {
        return Err(integrity(format!(
            "the envelope carries {} certificates",
            chain.len()
        )));
    }
    let certs = chain
        .iter()
        .enumerate()
        .map(|(i, d)| cert(d, i))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, c) in certs.iter().enumerate() {
        let tbs = c.tbs_certificate();
        let issuer_der = chain.get(i + 1).unwrap_or(&chain[i]);
        let self_signed = tbs.issuer() == tbs.subject();
        match certs.get(i + 1) {
            Some(next) if tbs.issuer() != next.tbs_certificate().subject() => {
                return Err(integrity(format!(
                    "certificate {i} is not issued by certificate {}",
                    i + 1
                )))
            }
            Some(_) if self_signed => {
                return Err(integrity(format!(
                    "certificate {i} is self-signed inside the chain"
                )))
            }
            None if !self_signed => {
                return Err(integrity("the chain does not end in a self-signed root"))
            }
            _ => {}
        }
        issued_by(c, issuer_der).map_err(|e| integrity(format!("certificate {i}: {e}")))?;
        let ku = tbs
            .get_extension::<KeyUsage>()
            .map_err(malformed)?
            .map(|(_, k)| k);
        let bc = tbs
            .get_extension::<BasicConstraints>()
            .map_err(malformed)?
            .map(|(_, b)| b);
        if i == 0 {
            let ca = bc.is_some_and(|b| b.ca);
            let signs = ku.is_some_and(|k| k.0.contains(KeyUsages::DigitalSignature));
            if ca && certs.len() > 1 || !signs {
                return Err(integrity(
                    "the leaf certificate may not sign (it is a CA, or lacks digitalSignature)",
                ));
            }
            let eku = tbs.get_extension::<ExtendedKeyUsage>().map_err(malformed)?;
            let bad = [
                "2.5.29.37.0",
                "1.3.6.1.5.5.7.3.1",
                "1.3.6.1.5.5.7.3.2",
                "1.3.6.1.5.5.7.3.4",
                "1.3.6.1.5.5.7.3.8",
            ];
            if eku.is_some_and(|(_, e)| e.0.iter().any(|o| bad.contains(&o.to_string().as_str()))) {
                return Err(integrity(
                    "the leaf certificate's extended key usage is not for code signing",
                ));
            }
        } else if !bc.is_some_and(|b| b.ca)
            || !ku.is_some_and(|k| k.0.contains(KeyUsages::KeyCertSign))
        {
            return Err(integrity(format!("certificate {i} is not a CA")));
        }
    }
    Ok(certs)
}

/// Verifies a Notation envelope (`media_type` JWS or COSE) for `target`
/// with `store` at `level`, at time `now`.
pub fn verify_notation(
    envelope: &[u8],
    media_type: &str,
    target: &Target,
    store: &TrustStore,
    level: Level,
    now: OffsetDateTime,
) -> Result<NotationSignature, NotationError> {
    let env = match media_type {
        JWS => parse_jws(envelope)?,
        COSE => parse_cose(envelope)?,
        m => return Err(malformed(format!("envelope media type {m:?}"))),
    };
    check_headers(&env)?;
    let certs = check_chain(&env.chain)?;
    let key = CertKey::of_cert(&env.chain[0]).map_err(|e| integrity(format!("leaf key: {e}")))?;
    let wanted = alg_for(&key)
        .ok_or_else(|| integrity(format!("a {} leaf key is not allowed", key.describe())))?;
    if wanted != env.alg_name {
        return Err(integrity(format!(
            "alg {} does not fit the leaf's {} key ({wanted})",
            env.alg_name,
            key.describe()
        )));
    }
    if !key.verify(env.alg, &env.signed, &env.signature) {
        return Err(integrity(
            "the signature does not verify with the leaf certificate",
        ));
    }
    let payload = crate::oci::json::parse_strict(&env.payload).map_err(malformed)?;
    let t = &payload["targetArtifact"];
    let named = Target {
        media_type: t["mediaType"].as_str().unwrap_or_default().to_string(),
        digest: t["digest"].as_str().unwrap_or_default().to_string(),
        size: t["size"].as_u64().unwrap_or(u64::MAX),
    };
    if named != *target {
        return Err(NotationError::WrongTarget {
            named: format!(
                "{} ({}, {} bytes)",
                named.digest, named.media_type, named.size
            ),
            expected: format!(
                "{} ({}, {} bytes)",
                target.digest, target.media_type, target.size
            ),
        });
    }
    let mut warnings = Vec::new();
    let mut enforce = |enforced: bool, e: NotationError| {
        if enforced {
            Err(e)
        } else {
            warnings.push(format!("{e} (logged at level {})", level.as_str()));
            Ok(())
        }
    };
    let authentic = env.chain.iter().any(|c| store.certs.contains(c));
    if !authentic {
        enforce(
            level != Level::Audit,
            NotationError::Untrusted(store.name.clone()),
        )?;
    }
    let secs = now.unix_timestamp();
    if let Some(i) = certs.iter().position(|c| {
        let (from, to) = validity(c);
        secs < from || secs > to
    }) {
        enforce(
            level == Level::Strict,
            NotationError::Expired(format!("certificate {i} of the chain is not valid now")),
        )?;
    }
    if env.expiry.is_some_and(|e| e <= now) {
        enforce(
            level == Level::Strict,
            NotationError::Expired("the signature has expired".into()),
        )?;
    }
    let subject = certs[0].tbs_certificate().subject().to_string();
    Ok(NotationSignature {
        subject_attributes: parse_dn(&subject).unwrap_or_default(),
        subject,
        authentic,
        signing_time: env.signing_time,
        warnings,
    })
}

/// An RFC 4514 distinguished name as attribute → value, the way Notation
/// reads trusted identities and leaf subjects: no multi-valued RDNs, no
/// duplicate attributes, no `#` hex values; `S` is `ST`.
pub fn parse_dn(dn: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let mut parts = Vec::new();
    let (mut cur, mut escaped) = (String::new(), false);
    for ch in dn.chars() {
        match (escaped, ch) {
            (true, c) => {
                cur.push(c);
                escaped = false;
            }
            (false, '\\') => escaped = true,
            (false, ',') => parts.push(std::mem::take(&mut cur)),
            (false, '+') => return Err(format!("{dn:?}: multi-valued RDNs are not supported")),
            (false, c) => cur.push(c),
        }
    }
    parts.push(cur);
    for p in parts {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| format!("{dn:?}: {p:?} is not attribute=value"))?;
        let k = match k.trim().to_ascii_uppercase().as_str() {
            "S" => "ST".to_string(),
            k => k.to_string(),
        };
        let v = v.trim();
        if v.starts_with('#') {
            return Err(format!("{dn:?}: hex-encoded values are not supported"));
        }
        if out.insert(k.clone(), v.to_string()).is_some() {
            return Err(format!("{dn:?}: {k} appears twice"));
        }
    }
    Ok(out)
}

/// Whether every attribute of `wanted` is in `subject` with that value.
pub fn dn_subset(wanted: &BTreeMap<String, String>, subject: &BTreeMap<String, String>) -> bool {
    wanted.iter().all(|(k, v)| subject.get(k) == Some(v))
}

/// Reads a trust store: PEM or DER certificate files, or directories of
/// `.pem`/`.crt`/`.cer` files (symbolic links refused, as Notation does).
pub fn load_trust_store(name: &str, paths: &[std::path::PathBuf]) -> Result<TrustStore, String> {
    let mut certs = Vec::new();
    for p in paths {
        let meta = std::fs::symlink_metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        if meta.file_type().is_symlink() {
            return Err(format!(
                "{}: symbolic links are not accepted in a trust store",
                p.display()
            ));
        }
        let files = if meta.is_dir() {
            let mut v: Vec<_> = std::fs::read_dir(p)
                .map_err(|e| format!("{}: {e}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.extension().is_some_and(|x| {
                        ["pem", "crt", "cer"].contains(&x.to_string_lossy().as_ref())
                    })
                })
                .collect();
            v.sort();
            v
        } else {
            vec![p.clone()]
        };
        for f in files {
            if std::fs::symlink_metadata(&f).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(format!(
                    "{}: symbolic links are not accepted in a trust store",
                    f.display()
                ));
            }
            let bytes = std::fs::read(&f).map_err(|e| format!("{}: {e}", f.display()))?;
            let ders = certs_of(&bytes).map_err(|e| format!("{}: {e}", f.display()))?;
            certs.extend(ders);
        }
    }
    if certs.is_empty() {
        return Err("the trust store holds no certificate".into());
    }
    Ok(TrustStore {
        name: name.to_string(),
        certs,
    })
}

/// The certificates of a PEM (one or more blocks) or DER file.
fn certs_of(bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let ders = match std::str::from_utf8(bytes) {
        Ok(text) if text.contains("-----BEGIN") => {
            let mut out = Vec::new();
            let mut body: Option<String> = None;
            for line in text.lines().map(str::trim) {
                match (line, &mut body) {
                    ("-----BEGIN CERTIFICATE-----", b) => *b = Some(String::new()),
                    ("-----END CERTIFICATE-----", b) => {
                        let b64 = b.take().unwrap_or_default();
                        out.push(STANDARD.decode(b64).map_err(|e| format!("PEM: {e}"))?);
                    }
                    (l, Some(b)) => b.push_str(l),
                    _ => {}
                }
            }
            out
        }
        _ => vec![bytes.to_vec()],
    };
    for (i, d) in ders.iter().enumerate() {
        Certificate::from_der(d).map_err(|e| format!("certificate {i} cannot be read: {e}"))?;
    }
    if ders.is_empty() {
        return Err("no certificate".into());
    }
    Ok(ders)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/notation")
    }

    /// Runs one vector at `level`, now; returns the case and the verdict.
    fn run(name: &str, level: Level) -> (Value, Result<NotationSignature, NotationError>) {
        let d = dir().join(name);
        let case: Value =
            serde_json::from_slice(&std::fs::read(d.join("case.json")).unwrap()).unwrap();
        let manifest: Value =
            serde_json::from_slice(&std::fs::read(d.join("signature/manifest.json")).unwrap())
                .unwrap();
        let layer = &manifest["layers"][0];
        let hex = layer["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:");
        let envelope = std::fs::read(d.join("signature/blobs").join(hex)).unwrap();
        let t = &case["target"];
        let target = Target {
            media_type: t["mediaType"].as_str().unwrap().into(),
            digest: t["digest"].as_str().unwrap().into(),
            size: t["size"].as_u64().unwrap(),
        };
        let store = load_trust_store("modelgate-test", &[d.join("truststore")]).unwrap();
        let verdict = verify_notation(
            &envelope,
            layer["mediaType"].as_str().unwrap(),
            &target,
            &store,
            level,
            OffsetDateTime::now_utc(),
        );
        (case, verdict)
    }

    #[test]
    fn every_vector_gets_the_verdict_another_implementation_gave() {
        let mut names: Vec<String> = std::fs::read_dir(dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with(['_', '.']) && !n.ends_with(".md"))
            .collect();
        names.sort();
        assert_eq!(names.len(), 13, "{names:?}");
        for name in names {
            let (case, verdict) = run(&name, Level::Strict);
            match (case["expect"].as_str().unwrap(), verdict) {
                ("verify", Ok(sig)) => {
                    let wanted = case["trusted_identity"]
                        .as_str()
                        .unwrap()
                        .trim_start_matches("x509.subject:");
                    let wanted = parse_dn(wanted).unwrap();
                    assert!(
                        dn_subset(&wanted, &sig.subject_attributes),
                        "{name}: {}",
                        sig.subject
                    );
                    assert!(sig.authentic && sig.warnings.is_empty(), "{name}");
                }
                ("reject", Err(e)) => eprintln!("{name}: {e}"),
                (expect, verdict) => panic!("{name}: expected {expect}, got {verdict:?}"),
            }
        }
    }

    #[test]
    fn refusals_say_what_failed() {
        for (name, needle) in [
            ("jws-bad-signature", "does not verify with the leaf"),
            ("cose-bad-signature", "does not verify with the leaf"),
            ("jws-wrong-digest", "names sha256:"),
            ("jws-tamper-payload-size", "398 bytes"),
            ("jws-expired-cert", "not valid now"),
            (
                "jws-untrusted-root",
                "does not end in trust store \"modelgate-test\"",
            ),
            ("jws-missing-crit", "not marked critical"),
        ] {
            let err = run(name, Level::Strict).1.unwrap_err().to_string();
            assert!(err.contains(needle), "{name}: {err}");
        }
    }

    #[test]
    fn levels_log_what_they_do_not_enforce() {
        // An expired certificate passes at permissive, with a warning.
        let sig = run("jws-expired-cert", Level::Permissive).1.unwrap();
        assert!(
            sig.authentic && sig.warnings[0].contains("not valid now"),
            "{sig:?}"
        );
        // An untrusted root fails at permissive, passes (not authentic) at audit.
        assert!(run("jws-untrusted-root", Level::Permissive).1.is_err());
        let sig = run("jws-untrusted-root", Level::Audit).1.unwrap();
        assert!(
            !sig.authentic && sig.warnings[0].contains("trust store"),
            "{sig:?}"
        );
        // Integrity is enforced at every level.
        assert!(run("jws-bad-signature", Level::Audit).1.is_err());
        assert!(run("jws-wrong-digest", Level::Audit).1.is_err());
    }

    #[test]
    fn distinguished_names_follow_notation_rules() {
        let dn = parse_dn("C=US, S=WA, O=Acme\\, Inc., CN=release").unwrap();
        assert_eq!(dn["ST"], "WA");
        assert_eq!(dn["O"], "Acme, Inc.");
        assert!(parse_dn("C=US, C=DE").is_err());
        assert!(parse_dn("CN=a+O=b").is_err());
        assert!(parse_dn("CN=#0403").is_err());
        assert!(parse_dn("nonsense").is_err());
        let leaf = parse_dn("CN=release,O=Acme,ST=WA,C=US").unwrap();
        assert!(dn_subset(&parse_dn("C=US, ST=WA, O=Acme").unwrap(), &leaf));
        assert!(!dn_subset(
            &parse_dn("C=US, ST=WA, O=Other").unwrap(),
            &leaf
        ));
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;
    use std::path::Path;

    /// (envelope, media type, target, store) of a vector.
    fn vector(name: &str) -> (Vec<u8>, String, Target, TrustStore) {
        let d = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/notation")
            .join(name);
        let read = |p: &str| std::fs::read(d.join(p)).unwrap();
        let case: Value = serde_json::from_slice(&read("case.json")).unwrap();
        let manifest: Value = serde_json::from_slice(&read("signature/manifest.json")).unwrap();
        let layer = &manifest["layers"][0];
        let hex = layer["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:");
        let t = &case["target"];
        (
            read(&format!("signature/blobs/{hex}")),
            layer["mediaType"].as_str().unwrap().into(),
            Target {
                media_type: t["mediaType"].as_str().unwrap().into(),
                digest: t["digest"].as_str().unwrap().into(),
                size: t["size"].as_u64().unwrap(),
            },
            load_trust_store("t", &[d.join("truststore")]).unwrap(),
        )
    }

    fn check(name: &str, damaged: &[u8]) -> Result<(), TestCaseError> {
        let (good, mt, target, store) = vector(name);
        let now = OffsetDateTime::now_utc();
        if let Ok(sig) = verify_notation(damaged, &mt, &target, &store, Level::Strict, now) {
            let want = verify_notation(&good, &mt, &target, &store, Level::Strict, now).unwrap();
            prop_assert_eq!(sig.subject, want.subject);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(crate::proptests::config())]

        /// Damaged JWS and COSE envelopes are refused or, when only
        /// unprotected bytes changed, name the same signer.
        #[test]
        fn damaged_jws_envelopes(b in crate::proptests::mutated(vector("jws-es256-valid").0)) {
            check("jws-es256-valid", &b)?;
        }

        #[test]
        fn damaged_cose_envelopes(b in crate::proptests::mutated(vector("cose-es256-valid").0)) {
            check("cose-es256-valid", &b)?;
        }

        #[test]
        fn distinguished_names_parse_or_refuse(s in ".{0,60}|([A-Z]{1,2}=[a-zA-Z ,\\\\+#]{0,8}, ?){0,5}") {
            if let Ok(dn) = parse_dn(&s) {
                prop_assert!(dn_subset(&dn, &dn));
            }
        }
    }
}
