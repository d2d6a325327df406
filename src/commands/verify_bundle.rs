//! `modelgate verify-bundle`: one Sigstore bundle checked with the gate's
//! own verification core ([`crate::trust::sigstore::bundle`]), speaking the
//! sigstore-conformance CLI protocol so the public test suite can score it.
//! Exit 0 verified, 1 rejected (the reason on stderr), 2 unusable input.

use crate::trust::sigstore::bundle::{verify_sigstore_bundle, Artifact, Purpose, Signer};
use crate::trust::sigstore::TrustedRoot;
use crate::trust::PublicKey;
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};

/// Whom the bundle must be from.
pub enum Expected {
    /// A Fulcio certificate naming exactly this identity (SAN) and issuer.
    Identity { identity: String, issuer: String },
    /// A managed key (PEM SubjectPublicKeyInfo file).
    Key(PathBuf),
}

pub struct VerifyBundleArgs {
    pub bundle: PathBuf,
    pub expected: Expected,
    pub trusted_root: PathBuf,
    /// A file, or `sha256:<hex>` for an artifact known only by digest.
    pub artifact: String,
}

/// Why a bundle was not verified.
pub enum Refusal {
    /// The bundle does not verify (exit 1).
    Rejected(String),
    /// An input could not be used (exit 2).
    Unusable(String),
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, Refusal> {
    std::fs::read(path).map_err(|e| Refusal::Unusable(format!("{what} {}: {e}", path.display())))
}

/// `modelgate verify-bundle`; the line printed on success says who signed
/// and when.
pub fn verify_bundle(args: &VerifyBundleArgs) -> Result<String, Refusal> {
    let root = TrustedRoot::parse(&read(&args.trusted_root, "--trusted-root")?)
        .map_err(|e| Refusal::Unusable(format!("{}: {e}", args.trusted_root.display())))?;
    let bundle = read(&args.bundle, "--bundle")?;
    let bytes;
    let artifact = match args.artifact.strip_prefix("sha256:") {
        Some(hex) => Artifact {
            sha256: hex::decode(hex)
                .ok()
                .and_then(|h| h.try_into().ok())
                .ok_or_else(|| {
                    Refusal::Unusable(format!("{} is not a SHA-256 digest", args.artifact))
                })?,
            bytes: None,
        },
        None => {
            bytes = read(Path::new(&args.artifact), "artifact")?;
            Artifact {
                sha256: Sha256::digest(&bytes).into(),
                bytes: Some(&bytes),
            }
        }
    };
    let key;
    let signer = match &args.expected {
        Expected::Key(path) => {
            let pem = String::from_utf8_lossy(&read(path, "--key")?).into_owned();
            key = PublicKey::from_pem(&pem)
                .map_err(|e| Refusal::Unusable(format!("--key {}: {e}", path.display())))?;
            Signer::Key(&key)
        }
        Expected::Identity { .. } => Signer::Certificate,
    };
    let v = verify_sigstore_bundle(&bundle, &root, signer, &artifact, Purpose::Artifact)
        .map_err(|e| Refusal::Rejected(e.to_string()))?;
    let at = v.times[0];
    match (&args.expected, v.identity) {
        (Expected::Identity { identity, issuer }, Some(id)) => {
            if id.issuer != *issuer {
                return Err(Refusal::Rejected(format!(
                    "certificate issued for OIDC issuer {}, not {issuer}",
                    id.issuer
                )));
            }
            if !id.subjects.iter().any(|s| s == identity) {
                return Err(Refusal::Rejected(format!(
                    "certificate names {}, not {identity}",
                    id.subjects.join(", ")
                )));
            }
            Ok(format!(
                "verified: signed by {identity} ({issuer}) at {at}, log entry {} of {}",
                v.log_index, v.log
            ))
        }
        (Expected::Key(path), _) => Ok(format!(
            "verified: signed by the key {} at {at}, log entry {} of {}",
            path.display(),
            v.log_index,
            v.log
        )),
        (Expected::Identity { .. }, None) => {
            Err(Refusal::Rejected("the bundle names no certificate".into()))
        }
    }
}
