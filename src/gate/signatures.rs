//! Finding an image's cosign signatures at its upstream, wherever cosign
//! puts them: the legacy `sha256-<hex>.sig` tag, OCI 1.1 referrers with
//! cosign's sig artifactType, and Sigstore bundle v0.3 referrers (from the
//! referrers API or the `sha256-<hex>` tag-schema index). Every candidate is
//! verified with the rule's keys over the exact bytes fetched (and digest
//! checked on the way in); a bundle that carries a Fulcio certificate is a
//! keyless signature, verified against the rule's trusted roots and counted
//! only for an identity one of the rule's keyless entries accepts.

use super::core::Gate;
use crate::metrics::{Metrics, ResultLabels};
use crate::oci::media::{MAX_MANIFEST_BYTES, OCI_MANIFEST};
use crate::oci::{Digest, Reference};
use crate::policy::{KeylessSigner, KEYLESS_SIGNER};
use crate::trust::sigstore::{
    is_keyless_layer, verify_keyless, verify_keyless_legacy, KeylessError, KeylessSignature,
    TrustedRoot,
};
use crate::trust::verify::{
    verify_bundle, verify_simple_signing, SigError, COSIGN_SIG_ARTIFACT, SIGNATURE_ANNOTATION,
    SIMPLE_SIGNING,
};
use crate::trust::{PublicKey, SigFormat};
use crate::upstream::Route;
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::Arc;

/// At most this many referrers and signature layers are examined per image.
const MAX_CANDIDATES: usize = 32;
/// cosign's attachment cap is 128 MiB; signatures are tiny, 1 MiB is plenty.
const MAX_SIGNATURE_BLOB: usize = 1024 * 1024;

/// A keyless entry of the rule with the trusted root it names.
pub type KeylessTrust = (KeylessSigner, Arc<TrustedRoot>);

/// Whom a rule accepts: its keys by name, and its keyless entries.
type Signers<'a> = (&'a [(String, PublicKey)], &'a [KeylessTrust]);

/// What the scan found.
#[derive(Debug, Default, Clone)]
pub struct SignatureScan {
    /// Names of keys, and keyless identities (`keyless:<subject> (<issuer>)`),
    /// with a valid signature naming the digest.
    pub signers: BTreeSet<String>,
    /// Why other candidates did not count (`format: reason`).
    pub notes: Vec<String>,
}

fn is_bundle_type(t: &str) -> bool {
    t.starts_with("application/vnd.dev.sigstore.bundle")
}

impl SignatureScan {
    fn record(
        &mut self,
        metrics: &Metrics,
        format: SigFormat,
        keys: &[(String, PublicKey)],
        check: impl Fn(&PublicKey) -> Result<(), SigError>,
    ) {
        let mut first_err = None;
        let mut any = false;
        for (name, key) in keys {
            match check(key) {
                Ok(()) => {
                    self.signers.insert(name.clone());
                    any = true;
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        self.count(metrics, any, format.as_str(), || match first_err {
            Some(SigError::BadSignature) => "signature by an unlisted key or corrupted".into(),
            Some(e) => e.to_string(),
            None => "no key to check".into(),
        });
    }

    /// Counts one candidate's verdict; a candidate that did not count
    /// leaves a note saying why.
    fn count(
        &mut self,
        metrics: &Metrics,
        valid: bool,
        format: &str,
        why: impl FnOnce() -> String,
    ) {
        let result = if valid { "valid" } else { "invalid" };
        metrics
            .signature_verifications
            .get_or_create(&ResultLabels { result })
            .inc();
        if !valid {
            self.notes.push(format!("{format}: {}", why()));
        }
    }

    /// A keyless signature (bundle or legacy layer): verified once per
    /// trusted root the rule names; its signer counts if an entry with that
    /// root accepts the identity.
    async fn record_keyless<F>(&mut self, metrics: &Metrics, keyless: &[KeylessTrust], verify: F)
    where
        F: Fn(&TrustedRoot) -> Result<KeylessSignature, KeylessError> + Send + 'static,
    {
        let mut roots: Vec<Arc<TrustedRoot>> = Vec::new();
        for (_, root) in keyless {
            if !roots.iter().any(|t| Arc::ptr_eq(t, root)) {
                roots.push(root.clone());
            }
        }
        // About 2 ms of chain, log and SCT signature checks per root: kept
        // off the async workers, like bcrypt.
        let verdicts = tokio::task::spawn_blocking(move || {
            roots
                .into_iter()
                .map(|root| {
                    let verdict = verify(&root);
                    (root, verdict)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let mut why = None;
        let verdicts = verdicts.unwrap_or_else(|e| {
            why = Some(format!("verification stopped: {e}"));
            Vec::new()
        });
        let mut any = false;
        for (root, verdict) in &verdicts {
            let sig = match verdict {
                Ok(sig) => sig,
                Err(e) => {
                    why.get_or_insert(e.to_string());
                    continue;
                }
            };
            let id = &sig.identity;
            for (entry, _) in keyless.iter().filter(|(_, r)| Arc::ptr_eq(r, root)) {
                if let Some(subject) = entry.accepts(&id.subjects, &id.issuer, &id.fulcio) {
                    self.signers
                        .insert(format!("{KEYLESS_SIGNER}{subject} ({})", id.issuer));
                    any = true;
                }
            }
            if !any {
                why.get_or_insert(format!(
                    "signed by {} from {}, an identity no keyless entry of the rule accepts",
                    id.subjects.join(", "),
                    id.issuer
                ));
            }
        }
        self.count(metrics, any, "keyless", || {
            why.unwrap_or_else(|| "the rule accepts no keyless signers".into())
        });
    }

    /// Simple-signing layers of a `.sig` or OCI 1.1 manifest.
    async fn simple_signing_layers(
        &mut self,
        gate: &Gate,
        r: &Route,
        image: &Digest,
        manifest: &Value,
        format: SigFormat,
        (keys, keyless): Signers<'_>,
    ) {
        let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
        for l in layers.iter().take(MAX_CANDIDATES) {
            if l["mediaType"] != SIMPLE_SIGNING {
                continue;
            }
            let (Some(sig), Some(Ok(pd))) = (
                l["annotations"][SIGNATURE_ANNOTATION].as_str(),
                l["digest"].as_str().map(|d| d.parse::<Digest>()),
            ) else {
                self.notes.push(format!(
                    "{}: layer without signature annotation or digest",
                    format.as_str()
                ));
                continue;
            };
            let annotations = l["annotations"].as_object();
            match gate.registry.small_blob(r, &pd, MAX_SIGNATURE_BLOB).await {
                Ok(payload) => match annotations.filter(|a| is_keyless_layer(a)) {
                    Some(a) => {
                        let (a, image) = (a.clone(), image.clone());
                        self.record_keyless(&gate.metrics, keyless, move |root| {
                            verify_keyless_legacy(&payload, &a, root, &image)
                        })
                        .await
                    }
                    None => self.record(&gate.metrics, format, keys, |k| {
                        verify_simple_signing(&payload, sig, k, image)
                    }),
                },
                Err(e) => self
                    .notes
                    .push(format!("{}: payload {pd}: {e}", format.as_str())),
            }
        }
    }
}

/// What a referrer descriptor points at, if it is a signature.
fn signature_format(descriptor: &Value) -> Option<SigFormat> {
    let at = descriptor["artifactType"].as_str().unwrap_or_default();
    if at == COSIGN_SIG_ARTIFACT {
        Some(SigFormat::Oci11)
    } else if is_bundle_type(at) {
        Some(SigFormat::Bundle)
    } else {
        None
    }
}

/// Whether a bundle carries a signing certificate (keyless) rather than a
/// key hint.
fn is_keyless(bundle: &[u8]) -> bool {
    serde_json::from_slice::<Value>(bundle).is_ok_and(|b| {
        let m = &b["verificationMaterial"];
        m["certificate"].is_object() || m["x509CertificateChain"].is_object()
    })
}

/// The bundle blob a bundle referrer's first layer names.
fn bundle_layer(referrer: &Value) -> Option<Digest> {
    let layer = referrer["layers"].as_array()?.first()?;
    if !layer["mediaType"].as_str().is_some_and(is_bundle_type) {
        return None;
    }
    layer["digest"].as_str()?.parse().ok()
}

impl Gate {
    /// Scan for signatures of `image` in the route's repository: the legacy
    /// tag, then the referrers (API or tag schema).
    pub(super) async fn scan_signatures(
        &self,
        r: &Route,
        image: &Digest,
        keys: &[(String, PublicKey)],
        keyless: &[KeylessTrust],
    ) -> SignatureScan {
        let mut out = SignatureScan::default();
        self.legacy_signatures(r, image, (keys, keyless), &mut out)
            .await;
        let index = match self.registry.referrers(r, image, None).await {
            Ok(refs) => crate::oci::json::parse_strict(&refs.index).unwrap_or(Value::Null),
            Err(e) => {
                out.notes.push(format!("referrers: {e}"));
                Value::Null
            }
        };
        let descs = index["manifests"].as_array().cloned().unwrap_or_default();
        for d in descs.iter().take(MAX_CANDIDATES) {
            let Some(format) = signature_format(d) else {
                continue;
            };
            let Some(Ok(md)) = d["digest"].as_str().map(|x| x.parse::<Digest>()) else {
                continue;
            };
            self.referrer_signature(r, image, (keys, keyless), format, &md, &mut out)
                .await;
        }
        out
    }

    /// The legacy `sha256-<hex>.sig` tag. Signers rewrite it in place:
    /// always ask the upstream.
    async fn legacy_signatures(
        &self,
        r: &Route,
        image: &Digest,
        signers: Signers<'_>,
        out: &mut SignatureScan,
    ) {
        let sig_tag = format!("{}.sig", image.tag_schema());
        let found = self
            .registry
            .manifest_fresh(r, &sig_tag, Some(OCI_MANIFEST))
            .await;
        match found {
            Ok(m) => match crate::oci::json::parse_strict(&m.bytes) {
                Ok(v) => {
                    out.simple_signing_layers(self, r, image, &v, SigFormat::Legacy, signers)
                        .await
                }
                Err(e) => out.notes.push(format!("legacy: {sig_tag} is {e}")),
            },
            Err(e) if e.is_not_found() => {}
            Err(e) => out.notes.push(format!("legacy: {e}")),
        }
    }

    /// One referrer manifest `md` (OCI 1.1 simple signing or a bundle).
    async fn referrer_signature(
        &self,
        r: &Route,
        image: &Digest,
        (keys, keyless): Signers<'_>,
        format: SigFormat,
        md: &Digest,
        out: &mut SignatureScan,
    ) {
        let f = format.as_str();
        let reference = Reference::Digest(md.clone());
        let m = match self
            .registry
            .manifest(r, &reference, Some(OCI_MANIFEST))
            .await
        {
            Ok(m) => m,
            Err(e) => return out.notes.push(format!("{f}: referrer {md}: {e}")),
        };
        let Ok(v) = crate::oci::json::parse_strict(&m.bytes) else {
            return out
                .notes
                .push(format!("{f}: referrer {md} is not acceptable JSON"));
        };
        if v["subject"]["digest"] != image.to_string().as_str() {
            return out
                .notes
                .push(format!("{f}: referrer {md} has another subject"));
        }
        if format != SigFormat::Bundle {
            return out
                .simple_signing_layers(self, r, image, &v, format, (keys, keyless))
                .await;
        }
        let Some(bd) = bundle_layer(&v) else {
            return out
                .notes
                .push(format!("bundle: referrer {md} has no bundle layer"));
        };
        let max = MAX_SIGNATURE_BLOB.max(MAX_MANIFEST_BYTES);
        match self.registry.small_blob(r, &bd, max).await {
            Ok(bundle) if is_keyless(&bundle) => {
                let image = image.clone();
                out.record_keyless(&self.metrics, keyless, move |root| {
                    verify_keyless(&bundle, root, &image)
                })
                .await
            }
            Ok(bundle) => out.record(&self.metrics, format, keys, |k| {
                verify_bundle(&bundle, k, image)
            }),
            Err(e) => out.notes.push(format!("bundle: {bd}: {e}")),
        }
    }
}
