//! Finding an image's signatures at its upstream, wherever signers put
//! them: cosign's legacy `sha256-<hex>.sig` tag, OCI 1.1 referrers with
//! cosign's sig artifactType, Sigstore bundle v0.3 referrers and Notation
//! referrers (from the referrers API or the `sha256-<hex>` tag-schema
//! index). Every candidate is verified over the exact bytes fetched (and
//! digest checked on the way in): with the rule's keys; a cosign signature
//! that carries a Fulcio certificate is keyless, verified against the
//! rule's trusted roots; a Notation envelope is verified against the rule's
//! trust stores. Certificate signers count only for an identity one of the
//! rule's entries accepts. Each candidate leaves a line saying whom it
//! matched, or why it did not count.

use super::core::Gate;
use crate::metrics::{Metrics, SignatureLabels};
use crate::oci::media::{Manifest, MAX_MANIFEST_BYTES, OCI_MANIFEST};
use crate::oci::{Digest, Reference};
use crate::policy::{KeylessSigner, NotationSigner, KEYLESS_SIGNER, NOTATION_SIGNER};
use crate::trust::notation::{
    verify_notation, Level, Target, TrustStore, COSE, JWS, NOTATION_SIGNATURE,
};
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
/// A Notation entry of the rule with the trust store it names.
pub type NotationTrust = (NotationSigner, Arc<TrustStore>);

/// Whom a rule accepts: its keys by name, its keyless and Notation entries
/// (each with the trust material it names).
#[derive(Debug, Default, Clone)]
pub struct RuleSigners {
    pub keys: Vec<(String, PublicKey)>,
    pub keyless: Vec<KeylessTrust>,
    pub notation: Vec<NotationTrust>,
}

type Signers<'a> = &'a RuleSigners;

/// What the scan found.
#[derive(Debug, Default, Clone)]
pub struct SignatureScan {
    /// Names of keys, keyless identities (`keyless:<subject> (<issuer>)`)
    /// and Notation leaves (`notation:<subject>`) with a valid signature
    /// naming the digest.
    pub signers: BTreeSet<String>,
    /// Which signature matched which requirement.
    pub matches: Vec<String>,
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
                    self.matches
                        .push(format!("{} signature by key {name:?}", format.as_str()));
                    any = true;
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        self.count(metrics, "key", any, format.as_str(), || match first_err {
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
        kind: &'static str,
        valid: bool,
        format: &str,
        why: impl FnOnce() -> String,
    ) {
        let result = if valid { "valid" } else { "invalid" };
        metrics
            .signature_verifications
            .get_or_create(&SignatureLabels { kind, result })
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
        let (verdicts, mut why) = verify_each(roots, move |root| verify(root)).await;
        let mut any = false;
        for (root, verdict) in &verdicts {
            let Some(sig) = ok_or_note(verdict, &mut why) else {
                continue;
            };
            let id = &sig.identity;
            let by = format!(
                "keyless signature by {} (issuer {})",
                id.subjects.join(", "),
                id.issuer
            );
            let mut refusals = Vec::new();
            for (entry, _) in keyless.iter().filter(|(_, r)| Arc::ptr_eq(r, root)) {
                match entry.accepts(&id.subjects, &id.issuer, &id.fulcio) {
                    Some(subject) => {
                        self.signers
                            .insert(format!("{KEYLESS_SIGNER}{subject} ({})", id.issuer));
                        self.matches.push(format!(
                            "{by} matches keyless entry (line {}) {} from {}",
                            entry.line,
                            entry.subject.describe(),
                            entry.issuer.describe()
                        ));
                        any = true;
                    }
                    None => refusals.push(entry.why_not(&id.subjects, &id.issuer, &id.fulcio)),
                }
            }
            if !any {
                why.get_or_insert(format!("{by} {}", refusals.join("; nor ")));
            }
        }
        self.count(metrics, "keyless", any, "keyless", || {
            why.unwrap_or_else(|| "the rule accepts no keyless signers".into())
        });
    }

    /// A Notation envelope: verified once per trust store the rule names
    /// (at the strictest level an entry asks of that store); its leaf
    /// counts if an entry accepts its subject at a counting level.
    async fn record_notation(
        &mut self,
        metrics: &Metrics,
        notation: &[NotationTrust],
        envelope: bytes::Bytes,
        media_type: String,
        target: Target,
    ) {
        let mut stores: Vec<(Arc<TrustStore>, Level)> = Vec::new();
        for (entry, store) in notation {
            match stores.iter_mut().find(|(s, _)| Arc::ptr_eq(s, store)) {
                Some((_, level)) => *level = strictest(*level, entry.level),
                None => stores.push((store.clone(), entry.level)),
            }
        }
        let now = time::OffsetDateTime::now_utc();
        let (verdicts, mut why) = verify_each(stores, move |(store, level)| {
            verify_notation(&envelope, &media_type, &target, store, *level, now)
        })
        .await;
        let mut any = false;
        for ((store, _), verdict) in &verdicts {
            let Some(sig) = ok_or_note(verdict, &mut why) else {
                continue;
            };
            let by = format!("notation signature by {:?}", sig.subject);
            for w in &sig.warnings {
                self.notes.push(format!("{by}: {w}"));
            }
            let mut refusals = Vec::new();
            for (entry, _) in notation.iter().filter(|(_, s)| Arc::ptr_eq(s, store)) {
                match entry.accepts(&sig.subject_attributes) {
                    Some(_) if entry.level == Level::Audit || !sig.authentic => {
                        refusals.push(format!(
                            "is only audited by the entry on line {} (level {})",
                            entry.line,
                            entry.level.as_str()
                        ))
                    }
                    Some(identity) => {
                        self.signers
                            .insert(format!("{NOTATION_SIGNER}{}", sig.subject));
                        self.matches.push(format!(
                            "{by} matches {} of trust store {:?} (line {}, level {})",
                            identity.describe(),
                            entry.trust,
                            entry.line,
                            entry.level.as_str()
                        ));
                        any = true;
                    }
                    None => refusals.push(format!(
                        "matches none of the identities of the entry on line {} ({})",
                        entry.line,
                        entry
                            .identities
                            .iter()
                            .map(|i| i.describe())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                }
            }
            if !any {
                why.get_or_insert(format!("{by} {}", refusals.join("; ")));
            }
        }
        self.count(metrics, "notation", any, "notation", || {
            why.unwrap_or_else(|| "the rule accepts no Notation signers".into())
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
        signers: Signers<'_>,
    ) {
        let (keys, keyless) = (&signers.keys, &signers.keyless);
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

/// Runs `verify` once per item on the blocking pool: chain, log and
/// signature checks take milliseconds (about 2 ms per Sigstore root), kept
/// off the async workers like bcrypt. A stopped task becomes the reason.
async fn verify_each<T, V>(
    items: Vec<T>,
    verify: impl Fn(&T) -> V + Send + 'static,
) -> (Vec<(T, V)>, Option<String>)
where
    T: Send + 'static,
    V: Send + 'static,
{
    let done = tokio::task::spawn_blocking(move || {
        items
            .into_iter()
            .map(|item| {
                let verdict = verify(&item);
                (item, verdict)
            })
            .collect()
    })
    .await;
    match done {
        Ok(v) => (v, None),
        Err(e) => (Vec::new(), Some(format!("verification stopped: {e}"))),
    }
}

/// The signature of a verdict that holds; else its error becomes the
/// reason (the first one wins).
fn ok_or_note<'a, S, E: std::fmt::Display>(
    verdict: &'a Result<S, E>,
    why: &mut Option<String>,
) -> Option<&'a S> {
    match verdict {
        Ok(sig) => Some(sig),
        Err(e) => {
            why.get_or_insert(e.to_string());
            None
        }
    }
}

/// The strictest of two levels (what one verification per store must do).
fn strictest(a: Level, b: Level) -> Level {
    match (a, b) {
        (Level::Strict, _) | (_, Level::Strict) => Level::Strict,
        (Level::Permissive, _) | (_, Level::Permissive) => Level::Permissive,
        _ => Level::Audit,
    }
}

/// The envelope a Notation referrer's single layer names.
fn notation_layer(referrer: &Value) -> Result<(Digest, String), String> {
    let typed = referrer["artifactType"] == NOTATION_SIGNATURE
        || referrer["config"]["mediaType"] == NOTATION_SIGNATURE;
    if !typed {
        return Err("is not a Notation signature manifest".into());
    }
    let Some([layer]) = referrer["layers"].as_array().map(Vec::as_slice) else {
        return Err("does not hold exactly one envelope".into());
    };
    let media_type = layer["mediaType"].as_str().unwrap_or_default();
    if media_type != JWS && media_type != COSE {
        return Err(format!("holds an envelope of type {media_type:?}"));
    }
    let digest = layer["digest"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .ok_or("names no valid envelope digest")?;
    Ok((digest, media_type.to_string()))
}

impl Gate {
    /// Scan for signatures of `image` in the route's repository: the legacy
    /// tag, then the referrers (API or tag schema).
    pub(super) async fn scan_signatures(
        &self,
        r: &Route,
        image: &Manifest,
        signers: &RuleSigners,
    ) -> SignatureScan {
        let mut out = SignatureScan::default();
        let digest = &image.digest;
        self.legacy_signatures(r, digest, signers, &mut out).await;
        let index = match self.registry.referrers(r, digest, None).await {
            Ok(refs) => crate::oci::json::parse_strict(&refs.index).unwrap_or(Value::Null),
            Err(e) => {
                out.notes.push(format!("referrers: {e}"));
                Value::Null
            }
        };
        let descs = index["manifests"].as_array().cloned().unwrap_or_default();
        for d in descs.iter().take(MAX_CANDIDATES) {
            let Some(Ok(md)) = d["digest"].as_str().map(|x| x.parse::<Digest>()) else {
                continue;
            };
            if d["artifactType"] == NOTATION_SIGNATURE {
                self.notation_signature(r, image, signers, &md, &mut out)
                    .await;
                continue;
            }
            let Some(format) = signature_format(d) else {
                continue;
            };
            self.referrer_signature(r, digest, signers, format, &md, &mut out)
                .await;
        }
        out
    }

    /// A referrer manifest whose subject must be `image`.
    async fn referrer(
        &self,
        r: &Route,
        image: &Digest,
        md: &Digest,
        f: &str,
    ) -> Result<Value, String> {
        let reference = Reference::Digest(md.clone());
        let m = self
            .registry
            .manifest(r, &reference, Some(OCI_MANIFEST))
            .await
            .map_err(|e| format!("{f}: referrer {md}: {e}"))?;
        let v = crate::oci::json::parse_strict(&m.bytes)
            .map_err(|_| format!("{f}: referrer {md} is not acceptable JSON"))?;
        if v["subject"]["digest"] != image.to_string().as_str() {
            return Err(format!("{f}: referrer {md} has another subject"));
        }
        Ok(v)
    }

    /// One Notation referrer manifest `md`.
    async fn notation_signature(
        &self,
        r: &Route,
        image: &Manifest,
        signers: Signers<'_>,
        md: &Digest,
        out: &mut SignatureScan,
    ) {
        let v = match self.referrer(r, &image.digest, md, "notation").await {
            Ok(v) => v,
            Err(e) => return out.notes.push(e),
        };
        let (ed, media_type) = match notation_layer(&v) {
            Ok(x) => x,
            Err(e) => return out.notes.push(format!("notation: referrer {md} {e}")),
        };
        let envelope = match self.registry.small_blob(r, &ed, MAX_SIGNATURE_BLOB).await {
            Ok(b) => b,
            Err(e) => return out.notes.push(format!("notation: envelope {ed}: {e}")),
        };
        let target = Target {
            media_type: image.media_type.clone(),
            digest: image.digest.to_string(),
            size: image.bytes.len() as u64,
        };
        out.record_notation(
            &self.metrics,
            &signers.notation,
            envelope,
            media_type,
            target,
        )
        .await
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

    /// One cosign referrer manifest `md` (OCI 1.1 simple signing or a bundle).
    async fn referrer_signature(
        &self,
        r: &Route,
        image: &Digest,
        signers: Signers<'_>,
        format: SigFormat,
        md: &Digest,
        out: &mut SignatureScan,
    ) {
        let f = format.as_str();
        let v = match self.referrer(r, image, md, f).await {
            Ok(v) => v,
            Err(e) => return out.notes.push(e),
        };
        if format != SigFormat::Bundle {
            return out
                .simple_signing_layers(self, r, image, &v, format, signers)
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
                out.record_keyless(&self.metrics, &signers.keyless, move |root| {
                    verify_keyless(&bundle, root, &image)
                })
                .await
            }
            Ok(bundle) => out.record(&self.metrics, format, &signers.keys, |k| {
                verify_bundle(&bundle, k, image)
            }),
            Err(e) => out.notes.push(format!("bundle: {bd}: {e}")),
        }
    }
}
