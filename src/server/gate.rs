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
use crate::trust::verify::{BUNDLE_V03, COSIGN_SIG_ARTIFACT, SIMPLE_SIGNING};
use crate::upstream::Route;
use dashmap::DashMap;
use http::StatusCode;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// Layer media types that only signature artifacts carry.
fn is_signature_layer(t: &str) -> bool {
    t == SIMPLE_SIGNING
        || t.starts_with("application/vnd.dev.sigstore.bundle")
        || t == "application/vnd.dsse.envelope.v1+json"
}

fn is_signature_artifact_type(t: &str) -> bool {
    t == COSIGN_SIG_ARTIFACT
        || t == BUNDLE_V03
        || t.starts_with("application/vnd.dev.cosign.artifact.")
        || t.starts_with("application/vnd.dev.sigstore.bundle")
}

/// Whether `bytes` is a signature artifact (always readable): an image
/// manifest whose every layer is a signature, or an index listing only
/// signature artifacts (the referrers tag schema). A model image does not
/// become one by claiming a `subject` or an artifactType.
pub fn is_signature_artifact(bytes: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<Value>(bytes) else {
        return false;
    };
    if let Some(layers) = v["layers"].as_array() {
        return !layers.is_empty()
            && layers
                .iter()
                .all(|l| l["mediaType"].as_str().is_some_and(is_signature_layer));
    }
    if let Some(list) = v["manifests"].as_array() {
        return list.iter().all(|d| {
            d["artifactType"]
                .as_str()
                .is_some_and(is_signature_artifact_type)
        });
    }
    false
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

/// Decisions remembered between requests.
pub struct GateState {
    evidence: DashMap<(String, Digest), CachedEvidence>,
    /// (repository, blob or child manifest digest) → policy generation.
    admitted: DashMap<(String, Digest), u64>,
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

    fn admit(&self, repo: &str, d: &Digest, generation: u64) {
        self.admitted
            .insert((repo.to_string(), d.clone()), generation);
    }

    fn is_admitted(&self, repo: &str, d: &Digest, generation: u64) -> bool {
        self.admitted
            .get(&(repo.to_string(), d.clone()))
            .is_some_and(|g| *g == generation)
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
    let v: Value =
        serde_json::from_slice(&config).map_err(|e| format!("config {cd} is not JSON: {e}"))?;
    Ok(string_map(&v["config"]["Labels"]))
}

/// Gather what the rule needs to know about `m`: cached per generation
/// unless `fresh`; signatures only when `with_signatures`.
pub async fn gather(
    app: &Arc<App>,
    r: &Route,
    m: &Manifest,
    rule: &Rule,
    loaded: &LoadedPolicy,
    fresh: bool,
    with_signatures: bool,
) -> Evidence {
    let key = (r.canonical.clone(), m.digest.clone());
    if let Some(c) = app
        .gate
        .evidence
        .get(&key)
        .filter(|_| !fresh && with_signatures)
    {
        // Evidence that lacks signatures is rechecked after tag_ttl: a
        // signature may have been pushed since.
        let complete = rule.signatures.as_ref().is_none_or(|s| {
            s.keys
                .iter()
                .filter(|k| c.evidence.signers.contains(*k))
                .count()
                >= s.min
        });
        if c.generation == loaded.generation && (complete || c.at.elapsed() < app.config.tag_ttl) {
            return c.evidence.clone();
        }
    }
    let mut ev = Evidence::default();
    let doc: Value = match serde_json::from_slice(&m.bytes) {
        Ok(v) => v,
        Err(e) => {
            ev.errors.push(format!("manifest is not valid JSON: {e}"));
            Value::Null
        }
    };
    ev.annotations = string_map(&doc["annotations"]);
    if !rule.labels.is_empty() {
        if let Some(children) = doc["manifests"].as_array() {
            for c in children {
                let p = &c["platform"];
                let platform = match (p["os"].as_str(), p["architecture"].as_str()) {
                    (Some("unknown"), _) | (_, Some("unknown")) => continue, // attestation manifests
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
                    match get_manifest(app, r, &Reference::Digest(cd.clone()), Some(OCI_MANIFEST))
                        .await
                    {
                        Ok(cm) => serde_json::from_slice::<Value>(&cm.bytes).unwrap_or(Value::Null),
                        Err(e) => {
                            ev.errors.push(format!("child {cd}: {}", e.message));
                            continue;
                        }
                    };
                match labels_of(app, r, &child).await {
                    Ok(labels) => ev.images.push(ImageEvidence { platform, labels }),
                    Err(e) => ev.errors.push(format!("child {cd}: {e}")),
                }
            }
        } else {
            match labels_of(app, r, &doc).await {
                Ok(labels) => ev.images.push(ImageEvidence {
                    platform: None,
                    labels,
                }),
                Err(e) => ev.errors.push(e),
            }
        }
    }
    if !with_signatures {
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
    /// The request needed no decision (signature artifact, or a child of an
    /// admitted index).
    pub exempt: Option<String>,
}

/// Decide without recording anything (also what `modelgate check` runs).
pub async fn decide(app: &Arc<App>, s: &Subject<'_>, loaded: &LoadedPolicy) -> Outcome {
    let repo = &s.route.canonical;
    let allow = |rule: Option<String>| PolicyDecision {
        decision: Decision::Allow,
        rule,
        reasons: vec![],
    };
    if is_signature_artifact(&s.manifest.bytes) {
        return Outcome {
            decision: allow(None),
            evidence: Evidence::default(),
            exempt: Some("signature artifact".into()),
        };
    }
    let rule = loaded.policy.rule_for(repo);
    if let (Some(rule), Reference::Digest(d)) = (rule, s.reference) {
        if app.gate.is_admitted(repo, d, loaded.generation) {
            return Outcome {
                decision: allow(Some(rule.name.clone())),
                evidence: Evidence::default(),
                exempt: Some("child of an admitted index".into()),
            };
        }
    }
    let mut ev = match rule {
        Some(rule) if rule.requires_anything() => {
            gather(app, s.route, s.manifest, rule, loaded, false, true).await
        }
        _ => Evidence::default(),
    };
    if let Reference::Tag(t) = s.reference {
        ev.tag = Some(t.clone());
        if rule
            .and_then(|r| r.tags.as_ref())
            .is_some_and(|t| t.immutable)
        {
            if let Some(first) = app.gate.seen_tags.get(repo, t) {
                if first.digest != s.manifest.digest {
                    ev.tag_moved = Some((first.digest, s.manifest.digest.clone()));
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
    pub digest: &'a Digest,
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
        digest: digest.to_string(),
        decision: d.decision.as_str(),
        rule: d.rule.clone(),
        reasons,
        policy_sha256: loaded.sha256.clone(),
    });
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
        // Open the blobs (and index children) this manifest references.
        if let Ok(summary) = crate::oci::media::ManifestSummary::parse(&s.manifest.bytes) {
            for x in summary
                .config
                .iter()
                .chain(summary.layers.iter())
                .chain(summary.manifests.iter())
            {
                app.gate.admit(repo, x, loaded.generation);
            }
        }
        if let Reference::Tag(t) = s.reference {
            let immutable = loaded
                .policy
                .rule_for(repo)
                .and_then(|r| r.tags.as_ref())
                .is_some_and(|t| t.immutable);
            if immutable && app.gate.seen_tags.get(repo, t).is_none() {
                if let Err(e) =
                    app.gate
                        .seen_tags
                        .confirm(repo, t, &s.manifest.digest, &s.manifest.media_type)
                {
                    tracing::error!(error = %e, "cannot record tag {t} of {repo} as seen");
                }
            }
        }
    }
    if out.exempt.as_deref() == Some("signature artifact") {
        return Ok(());
    }
    if let Some((first, now)) = &out.evidence.tag_moved {
        tracing::warn!(repository = %repo, tag = ?out.evidence.tag, first = %first, now = %now, "tag mutation: an immutable tag moved upstream");
    }
    let reasons = match &out.exempt {
        Some(e) => vec![e.clone()],
        None => d.reasons.clone(),
    };
    let reference = s.reference.to_string();
    let x = Decided {
        action: "pull",
        route: s.route,
        reference: &reference,
        digest: &s.manifest.digest,
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

/// Whether a blob of `route`'s repository may be served.
pub fn blob_allowed(app: &App, route: &Route, d: &Digest) -> Result<(), OciError> {
    let loaded = app.policy.current();
    let repo = &route.canonical;
    let Some(rule) = loaded.policy.rule_for(repo) else {
        if loaded.policy.default_allow {
            return Ok(());
        }
        return Err(OciError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Denied,
            format!("denied by the policy default: no rule matches {repo} and the default is deny"),
        ));
    };
    if rule.mode == Mode::Audit
        || !rule.requires_anything()
        || app.gate.is_admitted(repo, d, loaded.generation)
    {
        return Ok(());
    }
    Err(OciError::new(
        StatusCode::FORBIDDEN,
        ErrorCode::Denied,
        format!(
            "denied by rule {:?}: blob {d} is not referenced by any manifest modelgate admitted in {repo} under the current policy; pull the image by tag or digest so its manifest is checked first",
            rule.name
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_artifacts_are_recognised_by_their_layers() {
        let sig = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"x"}},"layers":[{{"mediaType":"{SIMPLE_SIGNING}","digest":"y"}}]}}"#
        );
        assert!(is_signature_artifact(sig.as_bytes()));
        // A model image wearing a signature's artifactType and a subject is not one.
        let disguised = format!(
            r#"{{"schemaVersion":2,"artifactType":"{COSIGN_SIG_ARTIFACT}","subject":{{"digest":"z"}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"y"}}]}}"#
        );
        assert!(!is_signature_artifact(disguised.as_bytes()));
        assert!(!is_signature_artifact(
            br#"{"schemaVersion":2,"layers":[]}"#
        ));
        let idx = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"digest":"a","artifactType":"{BUNDLE_V03}"}}]}}"#
        );
        assert!(is_signature_artifact(idx.as_bytes()));
        let platform_index = r#"{"schemaVersion":2,"manifests":[{"digest":"a","platform":{"os":"linux","architecture":"amd64"}}]}"#;
        assert!(!is_signature_artifact(platform_index.as_bytes()));
    }
}
