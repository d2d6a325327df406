//! The gate: every manifest a client asks for is decided by the policy in
//! force before a byte of it is served, and blobs of a governed repository
//! are served only when an admitted manifest in that repository references
//! them.
//!
//! Invariants:
//! - the bytes decided are the bytes served (the caller passes the manifest
//!   it will send; nothing is fetched again in between);
//! - evidence and admissions are tagged with the policy generation, so a
//!   reload re-decides everything;
//! - admissions are per canonical repository: what was admitted in one
//!   repository opens nothing in another.

use super::pull::{fetch_small_blob, get_manifest, Manifest};
use super::signatures;
use super::App;
use crate::audit::{now_rfc3339, AuditRecord};
use crate::cache::TagStore;
use crate::metrics::DecisionLabels;
use crate::oci::media::{MAX_MANIFEST_BYTES, OCI_MANIFEST};
use crate::oci::{Digest, ErrorCode, OciError, Reference};
use crate::policy::eval::evaluate;
use crate::policy::{Decision, Evidence, ImageEvidence, LoadedPolicy, Mode, PolicyDecision, Rule};
use crate::trust::verify::SIMPLE_SIGNING;
use crate::upstream::Route;
use dashmap::DashMap;
use http::StatusCode;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// Layer media types that only signature and attestation artifacts carry:
/// small JSON payloads, never a filesystem.
fn is_signature_layer(t: &str) -> bool {
    t == SIMPLE_SIGNING
        || t.starts_with("application/vnd.dev.sigstore.bundle")
        || t == "application/vnd.dsse.envelope.v1+json"
        || t == "application/vnd.in-toto+json"
}

/// Largest blob a signature artifact may open for reading: signatures,
/// bundles and attestations are small; a model layer is not.
pub const MAX_SIGNATURE_BLOB: usize = 4 * 1024 * 1024;

/// Whether `bytes` is a signature artifact: an image manifest (never an
/// index) whose every layer is a signature or attestation payload. What a
/// descriptor claims about the document (`artifactType`, a `subject`)
/// counts for nothing; duplicate or case-twin keys make it no signature.
pub fn is_signature_manifest(bytes: &[u8]) -> bool {
    let Ok(v) = crate::oci::json::parse_strict(bytes) else {
        return false;
    };
    if v.get("manifests").is_some() {
        return false;
    }
    v["layers"].as_array().is_some_and(|layers| {
        !layers.is_empty()
            && layers
                .iter()
                .all(|l| l["mediaType"].as_str().is_some_and(is_signature_layer))
    })
}

/// What a tag of the cosign tag schemes names: `sha256-<hex>` (referrers
/// fallback index), `sha256-<hex>.sig` (signatures), `sha256-<hex>.att`
/// (attestations).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaTag {
    Referrers,
    Signature,
    Attestation,
}

/// The image digest and kind a cosign-scheme tag refers to.
pub fn schema_tag(tag: &str) -> Option<(Digest, SchemaTag)> {
    let rest = tag.strip_prefix("sha256-")?;
    let (hex, kind) = match rest.split_once('.') {
        None => (rest, SchemaTag::Referrers),
        Some((h, "sig")) => (h, SchemaTag::Signature),
        Some((h, "att")) => (h, SchemaTag::Attestation),
        Some(_) => return None,
    };
    let d = format!("sha256:{hex}").parse().ok()?;
    Some((d, kind))
}

/// Why a manifest needs no decision of its own. Exempt documents are
/// readable, audited, and open nothing but their own small payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exemption {
    /// A signature or attestation manifest (by its layers).
    SignatureArtifact,
    /// The referrers fallback index read by its `sha256-<hex>` tag.
    ReferrersIndex,
    /// A child of an index admitted in the same repository.
    ChildOfAdmittedIndex,
}

impl Exemption {
    pub fn reason(self) -> &'static str {
        match self {
            Exemption::SignatureArtifact => "signature artifact: readable, admits nothing",
            Exemption::ReferrersIndex => "referrers index: readable, admits nothing",
            Exemption::ChildOfAdmittedIndex => "child of an admitted index",
        }
    }
}

/// The exemption a document read (or pushed) under `reference` has, from
/// what it is: never from descriptor metadata alone.
pub fn exemption_of(reference: &Reference, bytes: &[u8]) -> Option<Exemption> {
    if is_signature_manifest(bytes) {
        return match reference {
            Reference::Digest(_) => Some(Exemption::SignatureArtifact),
            Reference::Tag(t) => schema_tag(t)
                .filter(|(_, k)| *k != SchemaTag::Referrers)
                .map(|_| Exemption::SignatureArtifact),
        };
    }
    if let Reference::Tag(t) = reference {
        let is_index = crate::oci::media::ManifestSummary::parse(bytes)
            .map(|s| s.is_index())
            .unwrap_or(false);
        if is_index && schema_tag(t).is_some_and(|(_, k)| k == SchemaTag::Referrers) {
            return Some(Exemption::ReferrersIndex);
        }
    }
    None
}

/// What one request's decision is about.
pub struct Subject<'a> {
    pub route: &'a Route,
    pub reference: &'a Reference,
    pub manifest: &'a Manifest,
}

struct CachedEvidence {
    generation: u64,
    at: Instant,
    evidence: Evidence,
}

/// How long evidence that lacks signatures is reused: long enough for a
/// client's HEAD-then-GET pair, short enough that a signature pushed
/// straight to the upstream counts on the next request.
pub const INCOMPLETE_EVIDENCE_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

/// What an admission opens in a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Referenced by an admitted manifest: served like any blob (and, for a
    /// child manifest, admitted without a decision of its own).
    Full,
    /// Referenced by a signature artifact: served only while it is small
    /// ([`MAX_SIGNATURE_BLOB`]).
    SignaturePayload,
}

/// Decisions remembered between requests.
pub struct GateState {
    evidence: DashMap<(String, Digest), CachedEvidence>,
    /// (repository, blob or child manifest digest) → (policy generation, permit).
    admitted: DashMap<(String, Digest), (u64, Permit)>,
    /// First digest seen for tags under immutable rules; survives restarts.
    seen_tags: TagStore,
}

impl GateState {
    pub fn open(dir: std::path::PathBuf) -> std::io::Result<GateState> {
        Ok(GateState {
            evidence: DashMap::new(),
            admitted: DashMap::new(),
            seen_tags: TagStore::open(dir)?,
        })
    }

    pub fn seen_tag(&self, repo: &str, tag: &str) -> Option<Digest> {
        self.seen_tags.get(repo, tag).map(|e| e.digest)
    }

    /// Record `tag → d` as the first digest seen (once; later calls keep
    /// the first).
    pub fn remember_tag(&self, repo: &str, tag: &str, d: &Digest, media_type: &str) {
        if self.seen_tags.get(repo, tag).is_none() {
            if let Err(e) = self.seen_tags.confirm(repo, tag, d, media_type) {
                tracing::error!(error = %e, "cannot record tag {tag} of {repo} as seen");
            }
        }
    }

    /// A signature for `d` arrived: decide it afresh next time.
    pub fn forget_evidence(&self, repo: &str, d: &Digest) {
        self.evidence.remove(&(repo.to_string(), d.clone()));
    }

    fn admit(&self, repo: &str, d: &Digest, generation: u64, permit: Permit) {
        let key = (repo.to_string(), d.clone());
        // A full admission is never narrowed by a signature's reference.
        if permit == Permit::SignaturePayload
            && self
                .admitted
                .get(&key)
                .is_some_and(|e| e.0 == generation && e.1 == Permit::Full)
        {
            return;
        }
        self.admitted.insert(key, (generation, permit));
    }

    fn permit(&self, repo: &str, d: &Digest, generation: u64) -> Option<Permit> {
        self.admitted
            .get(&(repo.to_string(), d.clone()))
            .filter(|e| e.0 == generation)
            .map(|e| e.1)
    }
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

async fn labels_of(
    app: &Arc<App>,
    r: &Route,
    manifest: &Value,
) -> Result<BTreeMap<String, String>, String> {
    let cd: Digest = manifest["config"]["digest"]
        .as_str()
        .ok_or("manifest has no config")?
        .parse()
        .map_err(|e| format!("config digest: {e}"))?;
    let config = fetch_small_blob(app, r, &cd, MAX_MANIFEST_BYTES)
        .await
        .map_err(|e| format!("config {cd}: {}", e.message))?;
    let v = crate::oci::json::parse_strict(&config).map_err(|e| format!("config {cd} is {e}"))?;
    Ok(string_map(&v["config"]["Labels"]))
}

/// Labels of every image an index lists. Children marked `unknown/unknown`
/// are skipped only when they really are attestations or signatures (by
/// their layers); any other child is checked like a platform image.
async fn index_children_labels(app: &Arc<App>, r: &Route, children: &[Value], ev: &mut Evidence) {
    for c in children {
        let p = &c["platform"];
        let unknown = p["os"] == "unknown" || p["architecture"] == "unknown";
        let platform = match (p["os"].as_str(), p["architecture"].as_str()) {
            (Some(os), Some(arch)) => Some(match p["variant"].as_str() {
                Some(v) => format!("{os}/{arch}/{v}"),
                None => format!("{os}/{arch}"),
            }),
            _ => Some(c["digest"].as_str().unwrap_or("?").to_string()),
        };
        let Some(Ok(cd)) = c["digest"].as_str().map(|d| d.parse::<Digest>()) else {
            ev.errors
                .push("index lists a child without a valid digest".into());
            continue;
        };
        let child =
            match get_manifest(app, r, &Reference::Digest(cd.clone()), Some(OCI_MANIFEST)).await {
                Ok(cm) => cm,
                Err(e) => {
                    ev.errors.push(format!("child {cd}: {}", e.message));
                    continue;
                }
            };
        if unknown && is_signature_manifest(&child.bytes) {
            continue; // an attestation manifest: no image to label
        }
        let doc = match crate::oci::json::parse_strict(&child.bytes) {
            Ok(v) => v,
            Err(e) => {
                ev.errors.push(format!("child {cd} is {e}"));
                continue;
            }
        };
        match labels_of(app, r, &doc).await {
            Ok(labels) => ev.images.push(ImageEvidence { platform, labels }),
            Err(e) => ev.errors.push(format!("child {cd}: {e}")),
        }
    }
}

/// Whether cached evidence can answer for `rule` now.
fn reusable(c: &CachedEvidence, rule: &Rule, generation: u64) -> bool {
    // Evidence that lacks signatures is not an answer for long: a
    // signature may have been pushed to the upstream since.
    let complete = rule.signatures.as_ref().is_none_or(|s| {
        s.keys
            .iter()
            .filter(|k| c.evidence.signers.contains(*k))
            .count()
            >= s.min
    });
    c.generation == generation && (complete || c.at.elapsed() < INCOMPLETE_EVIDENCE_WINDOW)
}

/// Whether signatures are part of the evidence gathered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signatures {
    /// Look for them (pulls, and pushes that set a tag).
    Check,
    /// A push by digest (staging): they are required when a tag is set.
    Deferred,
}

/// Whether cached evidence may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    Cached,
    /// Push decisions always look afresh.
    Fresh,
}

/// Gather what the rule needs to know about `m`.
pub async fn gather(
    app: &Arc<App>,
    r: &Route,
    m: &Manifest,
    rule: &Rule,
    loaded: &LoadedPolicy,
    freshness: Freshness,
    signatures: Signatures,
) -> Evidence {
    let key = (r.canonical.clone(), m.digest.clone());
    if freshness == Freshness::Cached && signatures == Signatures::Check {
        if let Some(c) = app.gate.evidence.get(&key) {
            if reusable(&c, rule, loaded.generation) {
                return c.evidence.clone();
            }
        }
    }
    let mut ev = Evidence::default();
    let doc: Value = match crate::oci::json::parse_strict(&m.bytes) {
        Ok(v) => v,
        Err(e) => {
            ev.errors.push(format!("manifest is {e}"));
            Value::Null
        }
    };
    ev.annotations = string_map(&doc["annotations"]);
    if !rule.labels.is_empty() {
        if let Some(children) = doc["manifests"].as_array() {
            index_children_labels(app, r, children, &mut ev).await;
        } else if !doc.is_null() {
            match labels_of(app, r, &doc).await {
                Ok(labels) => ev.images.push(ImageEvidence {
                    platform: None,
                    labels,
                }),
                Err(e) => ev.errors.push(e),
            }
        }
    }
    if signatures == Signatures::Deferred {
        ev.signatures_deferred = true;
        return ev;
    }
    if let Some(sig) = &rule.signatures {
        let keys: Vec<_> = sig
            .keys
            .iter()
            .filter_map(|k| loaded.policy.keys.get(k).map(|pk| (k.clone(), pk.clone())))
            .collect();
        let scan = signatures::scan(app, r, &m.digest, &keys).await;
        ev.signers = scan.signers;
        ev.signature_notes = scan.notes;
    }
    app.gate.evidence.insert(
        key,
        CachedEvidence {
            generation: loaded.generation,
            at: Instant::now(),
            evidence: ev.clone(),
        },
    );
    ev
}

/// The outcome of deciding one manifest request.
pub struct Outcome {
    pub decision: PolicyDecision,
    pub evidence: Evidence,
    /// The request needed no decision of its own.
    pub exempt: Option<Exemption>,
}

fn allow(rule: Option<&Rule>) -> PolicyDecision {
    PolicyDecision {
        decision: Decision::Allow,
        rule: rule.map(|r| r.name.clone()),
        reasons: vec![],
    }
}

/// Whether `rule` makes tags immutable.
pub fn immutable_tags(rule: Option<&Rule>) -> bool {
    rule.and_then(|r| r.tags.as_ref())
        .is_some_and(|t| t.immutable)
}

/// Decide without recording anything (also what `modelgate check` runs).
pub async fn decide(app: &Arc<App>, s: &Subject<'_>, loaded: &LoadedPolicy) -> Outcome {
    let repo = &s.route.canonical;
    let rule = loaded.policy.rule_for(repo);
    if let Some(x) = exemption_of(s.reference, &s.manifest.bytes) {
        return Outcome {
            decision: allow(rule),
            evidence: Evidence::default(),
            exempt: Some(x),
        };
    }
    if let (Some(_), Reference::Digest(d)) = (rule, s.reference) {
        if app.gate.permit(repo, d, loaded.generation) == Some(Permit::Full) {
            return Outcome {
                decision: allow(rule),
                evidence: Evidence::default(),
                exempt: Some(Exemption::ChildOfAdmittedIndex),
            };
        }
    }
    let mut ev = match rule {
        Some(rule) if rule.requires_anything() => {
            gather(
                app,
                s.route,
                s.manifest,
                rule,
                loaded,
                Freshness::Cached,
                Signatures::Check,
            )
            .await
        }
        _ => Evidence::default(),
    };
    if let Reference::Tag(t) = s.reference {
        ev.tag = Some(t.clone());
        if immutable_tags(rule) {
            if let Some(first) = app.gate.seen_tag(repo, t) {
                if first != s.manifest.digest {
                    ev.tag_moved = Some((first, s.manifest.digest.clone()));
                }
            }
        }
    }
    Outcome {
        decision: evaluate(&loaded.policy, repo, &ev),
        evidence: ev,
        exempt: None,
    }
}

/// A pull by a tag the rule's pattern forbids, decided before anything is
/// asked of the upstream. Tags of the cosign schemes are left to the
/// document's own decision (only real signature artifacts are exempt).
pub fn forbidden_tag(loaded: &LoadedPolicy, repo: &str, tag: &str) -> Option<PolicyDecision> {
    let rule = loaded.policy.rule_for(repo)?;
    let pattern = rule.tags.as_ref()?.pattern.as_ref()?;
    if pattern.is_match(tag) || schema_tag(tag).is_some() {
        return None;
    }
    let ev = Evidence {
        tag: Some(tag.to_string()),
        signatures_deferred: true,
        ..Default::default()
    };
    let d = evaluate(&loaded.policy, repo, &ev);
    (d.decision != Decision::Allow).then_some(d)
}

/// Refuse (403, audited) a pull by a tag the enforcing rule's pattern
/// forbids, before the upstream is asked anything.
pub fn refuse_forbidden_tag(
    app: &App,
    route: &Route,
    tag: &str,
    who: &Requester<'_>,
) -> Result<(), OciError> {
    let loaded = app.policy.current();
    let Some(d) = forbidden_tag(&loaded, &route.canonical, tag) else {
        return Ok(());
    };
    if d.decision != Decision::Deny {
        return Ok(());
    }
    let x = Decided {
        action: "pull",
        route,
        reference: tag,
        digest: None,
        decision: &d,
        reasons: d.reasons.clone(),
    };
    record(app, &loaded, x, who);
    Err(OciError::new(
        StatusCode::FORBIDDEN,
        ErrorCode::Denied,
        d.message(),
    ))
}

/// Who asked, for the audit log.
pub struct Requester<'a> {
    pub client: &'a str,
    pub user: Option<&'a str>,
}

/// One decision about one manifest, as recorded.
pub struct Decided<'a> {
    pub action: &'static str,
    pub route: &'a Route,
    pub reference: &'a str,
    /// None when the request was refused before any content was fetched.
    pub digest: Option<&'a Digest>,
    pub decision: &'a PolicyDecision,
    /// What the audit log gives as reasons (the failed requirements, or
    /// why no decision was needed).
    pub reasons: Vec<String>,
}

/// Count and log one decision.
pub fn record(app: &App, loaded: &LoadedPolicy, x: Decided<'_>, who: &Requester<'_>) {
    let Decided {
        action,
        route,
        reference,
        digest,
        decision: d,
        reasons,
    } = x;
    app.metrics
        .policy_decisions
        .get_or_create(&DecisionLabels {
            action,
            decision: d.decision.as_str(),
            rule: d.rule_label(),
        })
        .inc();
    app.audit.record(&AuditRecord {
        time: now_rfc3339(),
        action,
        client: who.client.to_string(),
        user: who.user.map(str::to_string),
        upstream: route.upstream.name.clone(),
        repository: route.canonical.clone(),
        reference: reference.to_string(),
        digest: digest.map(Digest::to_string).unwrap_or_default(),
        decision: d.decision.as_str(),
        rule: d.rule.clone(),
        reasons,
        policy_sha256: loaded.sha256.clone(),
    });
}

/// Open what an allowed manifest references in its repository: everything
/// for a decided manifest, only small payloads for a signature artifact,
/// nothing for a referrers index.
fn open_references(
    app: &App,
    repo: &str,
    s: &Subject<'_>,
    exempt: Option<Exemption>,
    generation: u64,
) {
    let permit = match exempt {
        Some(Exemption::ReferrersIndex) => return,
        Some(Exemption::SignatureArtifact) => Permit::SignaturePayload,
        Some(Exemption::ChildOfAdmittedIndex) | None => Permit::Full,
    };
    if let Ok(summary) = crate::oci::media::ManifestSummary::parse(&s.manifest.bytes) {
        for x in summary.config.iter().chain(summary.layers.iter()) {
            app.gate.admit(repo, x, generation, permit);
        }
        if permit == Permit::Full {
            for x in &summary.manifests {
                app.gate.admit(repo, x, generation, permit);
            }
        }
    }
}

/// Decide a manifest request, record it (audit, metrics, admissions) and
/// refuse it with 403 DENIED when the policy says so.
pub async fn admit_manifest(
    app: &Arc<App>,
    s: &Subject<'_>,
    who: &Requester<'_>,
) -> Result<(), OciError> {
    let loaded = app.policy.current();
    let out = decide(app, s, &loaded).await;
    let repo = &s.route.canonical;
    let d = &out.decision;
    if d.decision != Decision::Deny {
        open_references(app, repo, s, out.exempt, loaded.generation);
        if let (Reference::Tag(t), None) = (s.reference, out.exempt) {
            if immutable_tags(loaded.policy.rule_for(repo)) {
                app.gate
                    .remember_tag(repo, t, &s.manifest.digest, &s.manifest.media_type);
            }
        }
    }
    if let Some((first, now)) = &out.evidence.tag_moved {
        tracing::warn!(repository = %repo, tag = ?out.evidence.tag, first = %first, now = %now, "tag mutation: an immutable tag moved upstream");
    }
    let reasons = match out.exempt {
        Some(x) => vec![x.reason().to_string()],
        None => d.reasons.clone(),
    };
    let reference = s.reference.to_string();
    let x = Decided {
        action: "pull",
        route: s.route,
        reference: &reference,
        digest: Some(&s.manifest.digest),
        decision: d,
        reasons,
    };
    record(app, &loaded, x, who);
    match d.decision {
        Decision::Deny => Err(OciError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Denied,
            d.message(),
        )),
        Decision::Audit => {
            tracing::warn!(repository = %repo, reference = %s.reference, "{}", d.message());
            Ok(())
        }
        Decision::Allow => Ok(()),
    }
}

/// How a blob of a repository may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobAccess {
    /// Any size, streamed.
    Any,
    /// Only up to [`MAX_SIGNATURE_BLOB`] bytes (a signature's payload).
    SmallOnly,
}

/// Whether a blob of `route`'s repository may be served, and how.
pub fn blob_allowed(app: &App, route: &Route, d: &Digest) -> Result<BlobAccess, OciError> {
    let loaded = app.policy.current();
    let repo = &route.canonical;
    let Some(rule) = loaded.policy.rule_for(repo) else {
        if loaded.policy.default_allow {
            return Ok(BlobAccess::Any);
        }
        return Err(OciError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Denied,
            format!("denied by the policy default: no rule matches {repo} and the default is deny"),
        ));
    };
    if rule.mode == Mode::Audit || !rule.requires_anything() {
        return Ok(BlobAccess::Any);
    }
    match app.gate.permit(repo, d, loaded.generation) {
        Some(Permit::Full) => Ok(BlobAccess::Any),
        Some(Permit::SignaturePayload) => Ok(BlobAccess::SmallOnly),
        None => Err(OciError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Denied,
            format!(
                "denied by rule {:?}: blob {d} is not referenced by any manifest modelgate admitted in {repo} under the current policy; pull the image by tag or digest so its manifest is checked first",
                rule.name
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::verify::{BUNDLE_V03, COSIGN_SIG_ARTIFACT};

    #[test]
    fn signature_artifacts_are_recognised_by_their_layers() {
        let sig = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"x"}},"layers":[{{"mediaType":"{SIMPLE_SIGNING}","digest":"y"}}]}}"#
        );
        assert!(is_signature_manifest(sig.as_bytes()));
        // A model image wearing a signature's artifactType and a subject is not one.
        let disguised = format!(
            r#"{{"schemaVersion":2,"artifactType":"{COSIGN_SIG_ARTIFACT}","subject":{{"digest":"z"}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"y"}}]}}"#
        );
        assert!(!is_signature_manifest(disguised.as_bytes()));
        assert!(!is_signature_manifest(
            br#"{"schemaVersion":2,"layers":[]}"#
        ));
        // An index is never a signature, whatever its descriptors claim.
        let idx = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"digest":"a","artifactType":"{BUNDLE_V03}"}}]}}"#
        );
        assert!(!is_signature_manifest(idx.as_bytes()));
        // Case twins: Go clients would unpack "Layers".
        let twins = format!(
            r#"{{"schemaVersion":2,"layers":[{{"mediaType":"{SIMPLE_SIGNING}","digest":"y"}}],"Layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"y"}}]}}"#
        );
        assert!(!is_signature_manifest(twins.as_bytes()));
    }

    #[test]
    fn schema_tags_and_exemptions() {
        let hex = "a".repeat(64);
        let d: Digest = format!("sha256:{hex}").parse().unwrap();
        assert_eq!(
            schema_tag(&format!("sha256-{hex}.sig")),
            Some((d.clone(), SchemaTag::Signature))
        );
        assert_eq!(
            schema_tag(&format!("sha256-{hex}")),
            Some((d.clone(), SchemaTag::Referrers))
        );
        assert_eq!(schema_tag(&format!("sha256-{hex}.x")), None);
        assert_eq!(schema_tag("sha256-abc.sig"), None);
        assert_eq!(schema_tag("v1.0.0"), None);
        let sig = format!(
            r#"{{"schemaVersion":2,"layers":[{{"mediaType":"{SIMPLE_SIGNING}","digest":"sha256:{hex}"}}]}}"#
        );
        let idx = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
        let tag = |t: &str| Reference::Tag(t.to_string());
        assert_eq!(
            exemption_of(&tag(&format!("sha256-{hex}.sig")), sig.as_bytes()),
            Some(Exemption::SignatureArtifact)
        );
        assert_eq!(
            exemption_of(&Reference::Digest(d.clone()), sig.as_bytes()),
            Some(Exemption::SignatureArtifact)
        );
        // A signature under a release tag gets a full decision.
        assert_eq!(exemption_of(&tag("v1.0.0"), sig.as_bytes()), None);
        assert_eq!(
            exemption_of(&tag(&format!("sha256-{hex}")), idx.as_bytes()),
            Some(Exemption::ReferrersIndex)
        );
        assert_eq!(exemption_of(&tag("latest"), idx.as_bytes()), None);
        assert_eq!(exemption_of(&Reference::Digest(d), idx.as_bytes()), None);
    }
}
