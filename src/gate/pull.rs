//! Pull decisions: a manifest request is decided (or found exempt) on the
//! exact bytes the registry returned, recorded, and either refused or
//! handed back as an [`Admitted`]; a blob request gets a [`BlobPermit`] only
//! when an admission opened that blob in its repository.

use super::core::{immutable_tag, Action, Decided, Gate, GateError, Requester};
use super::evidence::{Freshness, Signatures};
use super::exempt::{exemption_of, schema_tag, Exemption};
use super::state::Permit;
use crate::oci::media::{accepts, ManifestSummary};
use crate::oci::{json, Digest, Manifest, Reference};
use crate::policy::eval::evaluate;
use crate::policy::{Decision, Evidence, LoadedPolicy, Mode, PolicyDecision, Rule};
use crate::registry::{BlobBody, BlobWant, RegistryError};
use crate::upstream::Route;
use bytes::Bytes;

/// Largest blob a signature artifact may open for reading: signatures,
/// bundles and attestations are small; a model layer is not.
pub const MAX_SIGNATURE_BLOB: usize = 4 * 1024 * 1024;

/// A manifest the gate let through. Only the gate makes one, from the very
/// bytes it decided; the manifest response is built from it.
#[derive(Debug)]
pub struct Admitted(Manifest);

impl Admitted {
    pub fn manifest(&self) -> &Manifest {
        &self.0
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

/// The gate's leave to serve one blob's bytes. Only the gate makes one.
#[derive(Debug)]
pub struct BlobPermit {
    digest: Digest,
    access: BlobAccess,
    /// The size the admitting manifest declares: the blob may not be larger.
    declared: Option<u64>,
}

impl BlobPermit {
    /// How the blob may be served.
    pub fn access(&self) -> BlobAccess {
        self.access
    }
}

/// A blob's bytes as the gate lets them out.
pub enum BlobRead {
    /// Streamed, any size.
    Body(BlobBody),
    /// A small payload, whole and verified.
    Small(Bytes),
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

/// A pull by a tag the rule's pattern forbids, decided before anything is
/// asked of the upstream. Tags of the cosign schemes are left to the
/// document's own decision (only real signature artifacts are exempt).
pub fn forbidden_tag(loaded: &LoadedPolicy, repo: &str, tag: &str) -> Option<PolicyDecision> {
    let rule = loaded.policy.rule_for(repo)?;
    let tags = rule.tags.as_ref()?;
    let pattern = tags.pattern.as_ref()?;
    if pattern.is_match(tag) || tags.is_channel(tag) || schema_tag(tag).is_some() {
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

impl Gate {
    /// Decide `manifest`, read under `reference` in `r`'s repository,
    /// without recording anything (also what `modelgate check` runs).
    pub async fn decide(
        &self,
        r: &Route,
        reference: &Reference,
        manifest: &Manifest,
        loaded: &LoadedPolicy,
    ) -> Outcome {
        let repo = &r.canonical;
        let rule = loaded.policy.rule_for(repo);
        // Where nothing is enforced, nothing needs an exemption.
        if rule.is_none() && loaded.policy.default_allow {
            return Outcome {
                decision: allow(rule),
                evidence: Evidence::default(),
                exempt: None,
            };
        }
        let exempt = exemption_of(reference, &manifest.bytes).or_else(|| match reference {
            Reference::Digest(d) if rule.is_some() => (self
                .state
                .permit(repo, d, loaded.generation)
                .is_some_and(|(p, _)| p == Permit::Full))
            .then_some(Exemption::ChildOfAdmittedIndex),
            _ => None,
        });
        if exempt.is_some() {
            return Outcome {
                decision: allow(rule),
                evidence: Evidence::default(),
                exempt,
            };
        }
        let mut ev = match rule {
            Some(rule) if rule.requires_anything() => {
                self.gather(
                    r,
                    manifest,
                    rule,
                    loaded,
                    Freshness::Cached,
                    Signatures::Check,
                )
                .await
            }
            _ => Evidence::default(),
        };
        if let Reference::Tag(t) = reference {
            ev.tag = Some(t.clone());
            let first = immutable_tag(rule, t)
                .then(|| self.state.seen_tag(repo, t))
                .flatten();
            if let Some(first) = first.filter(|f| *f != manifest.digest) {
                ev.tag_moved = Some((first, manifest.digest.clone()));
            }
        }
        Outcome {
            decision: evaluate(&loaded.policy, repo, &ev),
            evidence: ev,
            exempt: None,
        }
    }

    /// A manifest for a client: refused early when its tag is forbidden,
    /// then read, decided, recorded, and negotiated down to what the client
    /// accepts (an index's linux/amd64 child, decided in its own right).
    pub async fn pull_manifest(
        &self,
        r: &Route,
        reference: &Reference,
        accept: Option<&str>,
        who: &Requester<'_>,
    ) -> Result<Admitted, GateError> {
        if let Reference::Tag(t) = reference {
            self.refuse_forbidden_tag(r, t, who)?;
        }
        let m = self.registry.manifest(r, reference, accept).await?;
        let admitted = self.admit(r, reference, m, who).await?;
        self.negotiate_down(r, admitted, accept, who).await
    }

    /// Refuse (403, audited) a pull by a tag the enforcing rule's pattern
    /// forbids, before the upstream is asked anything.
    fn refuse_forbidden_tag(
        &self,
        r: &Route,
        tag: &str,
        who: &Requester<'_>,
    ) -> Result<(), GateError> {
        let loaded = self.policy.current();
        let Some(d) = forbidden_tag(&loaded, &r.canonical, tag) else {
            return Ok(());
        };
        if d.decision != Decision::Deny {
            return Ok(());
        }
        let x = Decided {
            action: Action::Pull,
            route: r,
            reference: tag,
            digest: None,
            decision: &d,
            reasons: d.reasons.clone(),
            models: vec![],
            previous_digest: None,
        };
        self.record(&loaded, x, who);
        Err(GateError::Denied(d.message()))
    }

    /// Decide a manifest request, record it (audit, metrics, admissions)
    /// and refuse it when the policy says so.
    async fn admit(
        &self,
        r: &Route,
        reference: &Reference,
        m: Manifest,
        who: &Requester<'_>,
    ) -> Result<Admitted, GateError> {
        let loaded = self.policy.current();
        let repo = &r.canonical;
        let immutable = match reference {
            Reference::Tag(t) if immutable_tag(loaded.policy.rule_for(repo), t) => Some(t),
            _ => None,
        };
        if let Some(t) = immutable {
            self.state.load_first_seen(repo, t).await?;
        }
        let mut out = self.decide(r, reference, &m, &loaded).await;
        if let (Some(t), None, true) = (
            immutable,
            out.exempt,
            out.decision.decision != Decision::Deny,
        ) {
            // First writer wins fleet-wide: another replica may have
            // recorded another digest since; then this one is a move.
            let first = self
                .state
                .claim_tag(repo, t, &m.digest, &m.media_type)
                .await?;
            if first != m.digest {
                out = self.decide(r, reference, &m, &loaded).await;
            }
        }
        let d = &out.decision;
        if d.decision != Decision::Deny {
            self.open_references(repo, &m, out.exempt, loaded.generation);
        }
        if let Some((first, now)) = &out.evidence.tag_moved {
            tracing::warn!(repository = %repo, tag = ?out.evidence.tag, first = %first, now = %now, "tag mutation: an immutable tag moved upstream");
        }
        let reasons = match out.exempt {
            Some(x) => vec![x.reason().to_string()],
            None => d.reasons.clone(),
        };
        let reference_text = reference.to_string();
        let x = Decided {
            action: Action::Pull,
            route: r,
            reference: &reference_text,
            digest: Some(&m.digest),
            decision: d,
            reasons,
            models: out.evidence.models_summary(),
            previous_digest: None,
        };
        self.record(&loaded, x, who);
        match d.decision {
            Decision::Deny => Err(GateError::Denied(d.message())),
            Decision::Audit => {
                tracing::warn!(repository = %repo, reference = %reference, "{}", d.message());
                Ok(Admitted(m))
            }
            Decision::Allow => Ok(Admitted(m)),
        }
    }

    /// Open what an allowed manifest references in its repository:
    /// everything for a decided manifest, only small payloads for a
    /// signature artifact, nothing for a referrers index.
    fn open_references(
        &self,
        repo: &str,
        m: &Manifest,
        exempt: Option<Exemption>,
        generation: u64,
    ) {
        let permit = match exempt {
            Some(Exemption::ReferrersIndex) => return,
            Some(Exemption::SignatureArtifact) => Permit::SignaturePayload,
            Some(Exemption::ChildOfAdmittedIndex) | None => Permit::Full,
        };
        if !self
            .state
            .first_opening(repo, &m.digest, generation, permit)
        {
            return; // opened already, the same way, under this policy
        }
        let Ok(summary) = ManifestSummary::parse(&m.bytes) else {
            return;
        };
        let declared = |x: &Digest| summary.declared.iter().find(|(d, _)| d == x).map(|e| e.1);
        for x in summary.config.iter().chain(summary.layers.iter()) {
            self.state.admit(repo, x, generation, permit, declared(x));
        }
        if permit == Permit::Full {
            for x in &summary.manifests {
                self.state.admit(repo, x, generation, permit, None);
            }
        }
    }

    /// A client that does not accept an index gets the child a registry
    /// would pick for it (linux/amd64 first, as distribution does), decided
    /// in its own right; the tag itself stays recorded as the index.
    async fn negotiate_down(
        &self,
        r: &Route,
        admitted: Admitted,
        accept: Option<&str>,
        who: &Requester<'_>,
    ) -> Result<Admitted, GateError> {
        let m = admitted.manifest();
        if accepts(accept, &m.media_type) {
            return Ok(admitted);
        }
        let Ok(doc) = json::parse_strict(&m.bytes) else {
            return Ok(admitted);
        };
        let Some(children) = doc["manifests"].as_array() else {
            return Ok(admitted);
        };
        let acceptable =
            |c: &&serde_json::Value| c["mediaType"].as_str().is_some_and(|t| accepts(accept, t));
        let amd64 = |c: &&serde_json::Value| {
            c["platform"]["os"] == "linux" && c["platform"]["architecture"] == "amd64"
        };
        let pick = children
            .iter()
            .filter(acceptable)
            .find(amd64)
            .or_else(|| children.iter().find(acceptable));
        let Some(Ok(child)) = pick
            .and_then(|c| c["digest"].as_str())
            .map(|d| d.parse::<Digest>())
        else {
            return Ok(admitted);
        };
        let reference = Reference::Digest(child);
        let cm = self.registry.manifest(r, &reference, accept).await?;
        self.admit(r, &reference, cm, who).await
    }

    /// Leave to serve blob `d` of `r`'s repository, when the policy gives it.
    pub fn blob_permit(&self, r: &Route, d: &Digest) -> Result<BlobPermit, GateError> {
        let loaded = self.policy.current();
        let repo = &r.canonical;
        let permit = |access| {
            Ok(BlobPermit {
                digest: d.clone(),
                access,
                declared: None,
            })
        };
        let Some(rule) = loaded.policy.rule_for(repo) else {
            if loaded.policy.default_allow {
                return permit(BlobAccess::Any);
            }
            return Err(GateError::Denied(format!(
                "denied by the policy default: no rule matches {repo} and the default is deny"
            )));
        };
        if rule.mode == Mode::Audit || !rule.requires_anything() {
            return permit(BlobAccess::Any);
        }
        match self.state.permit(repo, d, loaded.generation) {
            Some((Permit::Full, declared)) => Ok(BlobPermit {
                digest: d.clone(),
                access: BlobAccess::Any,
                declared,
            }),
            Some((Permit::SignaturePayload, _)) => permit(BlobAccess::SmallOnly),
            None => Err(GateError::Denied(format!(
                "denied by rule {:?}: blob {d} is not referenced by any manifest modelgate admitted in {repo} under the current policy; pull the image by tag or digest so its manifest is checked first",
                rule.name
            ))),
        }
    }

    /// The bytes of the blob `permit` lets out.
    pub async fn read_blob(
        &self,
        permit: BlobPermit,
        r: &Route,
        want: BlobWant,
    ) -> Result<BlobRead, GateError> {
        let d = &permit.digest;
        match permit.access {
            BlobAccess::Any => Ok(BlobRead::Body(
                self.registry.blob(r, d, want, permit.declared).await?,
            )),
            BlobAccess::SmallOnly => {
                let too_big = || {
                    GateError::Denied(format!(
                        "blob {d} of {} is referenced only by a signature artifact, and is larger than the {MAX_SIGNATURE_BLOB} bytes a signature payload may have; pull the image it belongs to so its manifest is checked",
                        r.canonical
                    ))
                };
                if self
                    .registry
                    .store()
                    .size_of(d)
                    .is_some_and(|n| n > MAX_SIGNATURE_BLOB as u64)
                {
                    return Err(too_big());
                }
                match self.registry.small_blob(r, d, MAX_SIGNATURE_BLOB).await {
                    Ok(b) => Ok(BlobRead::Small(b)),
                    Err(RegistryError::BadContent {
                        kind: crate::registry::BadContent::TooLarge,
                        ..
                    }) => Err(too_big()),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }
}
