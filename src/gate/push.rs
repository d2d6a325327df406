//! Push decisions: a manifest PUT is decided (labels, annotations, tag
//! pattern and immutability for every tag, signatures when a tag is set)
//! before the upstream sees it; a signature artifact needs no decision only
//! by digest or on the cosign tag of the image it signs. Deletions are
//! refused where releases are immutable. Every decision is audited.

use super::core::{immutable_tag, immutable_tags, Action, Decided, Gate, GateError, Requester};
use super::evidence::{Freshness, Signatures};
use super::exempt::{exemption_of, schema_tag, Exemption};
use crate::oci::media::ManifestSummary;
use crate::oci::{Digest, Manifest, Reference};
use crate::policy::eval::evaluate;
use crate::policy::{Decision, LoadedPolicy, PolicyDecision};
use crate::registry::Deletion;
use crate::upstream::Route;

/// A push the gate let through, and what it needs once the upstream has it.
#[derive(Debug)]
pub struct PushVerdict {
    exempt: Option<Exemption>,
}

/// Why a pushed document needs no decision: a signature artifact pushed by
/// digest or on the cosign tag of the image it signs, or a referrers index
/// on its `sha256-<hex>` tag. Any other tag gets the full decision.
fn push_exemption(tags: &[String], m: &Manifest) -> Option<Exemption> {
    if tags.is_empty() {
        return exemption_of(&Reference::Digest(m.digest.clone()), &m.bytes);
    }
    let mut found = None;
    for t in tags {
        found = Some(exemption_of(&Reference::Tag(t.clone()), &m.bytes)?);
    }
    found
}

fn rank(d: Decision) -> u8 {
    match d {
        Decision::Deny => 2,
        Decision::Audit => 1,
        Decision::Allow => 0,
    }
}

impl Gate {
    /// Decide a manifest PUT of `m` setting `tags` (none: a push by
    /// digest), record it, and refuse it when the policy says so.
    pub async fn decide_push(
        &self,
        r: &Route,
        m: &Manifest,
        tags: &[String],
        who: &Requester<'_>,
    ) -> Result<PushVerdict, GateError> {
        let loaded = self.policy.current();
        let exempt = push_exemption(tags, m);
        let (decision, reasons, models) = match exempt {
            Some(x) => (
                PolicyDecision {
                    decision: Decision::Allow,
                    rule: loaded.policy.rule_for(&r.canonical).map(|r| r.name.clone()),
                    reasons: vec![],
                },
                vec![x.reason().to_string()],
                vec![],
            ),
            None => {
                let (d, models) = self.decide_tags(r, m, tags, &loaded).await?;
                let reasons = d.reasons.clone();
                (d, reasons, models)
            }
        };
        let reference = match tags.is_empty() {
            true => m.digest.to_string(),
            false => tags.join(","),
        };
        let x = Decided {
            action: Action::Push,
            route: r,
            reference: &reference,
            digest: Some(&m.digest),
            decision: &decision,
            reasons,
            models,
        };
        self.record(&loaded, x, who);
        match decision.decision {
            Decision::Deny => Err(GateError::Denied(decision.message())),
            Decision::Audit => {
                tracing::warn!(repository = %r.canonical, "{}", decision.message());
                Ok(PushVerdict { exempt })
            }
            Decision::Allow => Ok(PushVerdict { exempt }),
        }
    }

    /// Each tag on its own (pattern, immutability), a PUT by digest once;
    /// the strictest outcome wins and every reason is kept.
    async fn decide_tags(
        &self,
        r: &Route,
        m: &Manifest,
        tags: &[String],
        loaded: &LoadedPolicy,
    ) -> Result<(PolicyDecision, Vec<serde_json::Value>), GateError> {
        let rule = loaded.policy.rule_for(&r.canonical);
        let signatures = match tags.is_empty() {
            true => Signatures::Deferred,
            false => Signatures::Check,
        };
        let ev = match rule {
            Some(rule) if rule.requires_anything() => {
                self.gather(r, m, rule, loaded, Freshness::Fresh, signatures)
                    .await
            }
            _ => Default::default(),
        };
        let tag_list: Vec<Option<&String>> = match tags.is_empty() {
            true => vec![None],
            false => tags.iter().map(Some).collect(),
        };
        let mut decision: Option<PolicyDecision> = None;
        let mut all_reasons: Vec<String> = Vec::new();
        for t in tag_list {
            let mut ev = ev.clone();
            ev.tag = t.cloned();
            if let Some(t) = t.filter(|t| immutable_tag(rule, t)) {
                let upstream_now = self.registry.tag_digest(r, t).await?;
                let first = self.state.seen_tag(&r.canonical, t).or(upstream_now);
                if let Some(first) = first.filter(|f| f != &m.digest) {
                    tracing::warn!(repository = %r.canonical, tag = %t, first = %first, now = %m.digest, "tag mutation refused");
                    ev.tag_moved = Some((first, m.digest.clone()));
                }
            }
            let d = evaluate(&loaded.policy, &r.canonical, &ev);
            for reason in &d.reasons {
                if !all_reasons.contains(reason) {
                    all_reasons.push(reason.clone());
                }
            }
            decision = Some(match decision {
                Some(prev) if rank(prev.decision) >= rank(d.decision) => prev,
                _ => d,
            });
        }
        let mut d = decision.unwrap_or(PolicyDecision {
            decision: Decision::Allow,
            rule: None,
            reasons: vec![],
        });
        d.reasons = all_reasons;
        Ok((d, ev.models_summary()))
    }

    /// The upstream has the pushed manifest under `tags`: a new signature
    /// makes the image it signs be decided afresh; a decided document's
    /// immutable tags are remembered.
    pub fn pushed(&self, r: &Route, verdict: &PushVerdict, m: &Manifest, tags: &[String]) {
        let repo = &r.canonical;
        if verdict.exempt == Some(Exemption::SignatureArtifact) {
            let subject = ManifestSummary::parse(&m.bytes)
                .ok()
                .and_then(|s| s.subject);
            let signed = tags
                .iter()
                .filter_map(|t| schema_tag(t).map(|(d, _)| d))
                .chain(subject);
            for d in signed {
                self.state.forget_evidence(repo, &d);
            }
        }
        let loaded = self.policy.current();
        if verdict.exempt.is_none() {
            for t in tags.iter().filter(|t| immutable_tag(loaded.policy.rule_for(repo), t)) {
                self.state.remember_tag(repo, t, &m.digest, &m.media_type);
            }
        }
    }

    /// Decide a DELETE: refused in a repository whose rule makes tags
    /// immutable (it would remove or break a release); audited either way.
    pub fn decide_delete(
        &self,
        r: &Route,
        what: &Deletion,
        who: &Requester<'_>,
    ) -> Result<(), GateError> {
        let loaded = self.policy.current();
        let rule = loaded.policy.rule_for(&r.canonical);
        let (reference, digest): (String, Option<Digest>) = match what {
            Deletion::Manifest(reference) => (reference.to_string(), reference.digest().cloned()),
            Deletion::Blob(d) => (d.to_string(), Some(d.clone())),
        };
        let decision = match rule.filter(|_| immutable_tags(rule)) {
            Some(rule) => PolicyDecision {
                decision: Decision::Deny,
                rule: Some(rule.name.clone()),
                reasons: vec![format!(
                    "releases in {} are immutable under this rule: nothing is deleted through modelgate (delete at the upstream, where it is audited by its own means)",
                    r.canonical
                )],
            },
            None => PolicyDecision {
                decision: Decision::Allow,
                rule: rule.map(|r| r.name.clone()),
                reasons: vec![],
            },
        };
        let x = Decided {
            action: Action::Delete,
            route: r,
            reference: &reference,
            digest: digest.as_ref(),
            decision: &decision,
            reasons: decision.reasons.clone(),
            models: vec![],
        };
        self.record(&loaded, x, who);
        match decision.decision {
            Decision::Deny => Err(GateError::Denied(decision.message())),
            _ => Ok(()),
        }
    }
}
