//! Push decisions: a manifest PUT is decided (labels, annotations, tag
//! pattern and immutability for every tag, signatures when a tag is set)
//! before the upstream sees it; a signature artifact needs no decision only
//! by digest or on the cosign tag of the image it signs. Deletions are
//! refused where releases are immutable. Every decision is audited.

use super::core::{immutable_tag, immutable_tags, Action, Decided, Gate, GateError, Requester};
use super::evidence::{Freshness, Signatures};
use super::exempt::{exemption_of, schema_tag, Exemption};
use super::ledger::{version_of, Event, LedgerEntry};
use crate::oci::media::ManifestSummary;
use crate::oci::{Digest, Manifest, Reference};
use crate::policy::eval::{check_regressions, evaluate, numeric_facts};
use crate::policy::model::Mode;
use crate::policy::{Decision, LoadedPolicy, PolicyDecision, Rule};
use crate::registry::Deletion;
use crate::upstream::Route;
use std::collections::BTreeMap;

/// A push the gate let through, and what it needs once the upstream has it.
#[derive(Debug)]
pub struct PushVerdict {
    exempt: Option<Exemption>,
    /// Releases and channel moves to record for the tags the upstream
    /// confirms.
    ledger: Vec<LedgerEntry>,
}

/// What deciding the tags of a push found.
struct TagsDecided {
    decision: PolicyDecision,
    models: Vec<serde_json::Value>,
    /// Ledger entries to write once the upstream has the tags (who, when
    /// and why still to fill in).
    ledger: Vec<LedgerEntry>,
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

/// Whether setting `tag` is a release (a semantic version) or a channel
/// move under `rule`: what the ledger records.
fn lifecycle_tag(rule: &Rule, tag: &str) -> bool {
    version_of(tag).is_some() || rule.tags.as_ref().is_some_and(|t| t.is_channel(tag))
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
        let rule = loaded.policy.rule_for(&r.canonical);
        let releases = rule.is_some_and(|rule| tags.iter().any(|t| lifecycle_tag(rule, t)));
        if exempt.is_none() && releases {
            // Regressions and channels are judged against the fleet's ledger.
            self.ledger.refresh(&r.canonical).await.map_err(|e| {
                GateError::Registry(crate::registry::RegistryError::Shared(format!(
                    "the release ledger of {} in shared storage cannot be read ({e}); pushes of tags are refused until it can: retry when object storage is back",
                    r.canonical
                )))
            })?;
        }
        let found = match exempt {
            Some(x) => TagsDecided {
                decision: PolicyDecision {
                    decision: Decision::Allow,
                    rule: rule.map(|r| r.name.clone()),
                    reasons: vec![x.reason().to_string()],
                },
                models: vec![],
                ledger: vec![],
            },
            None => self.decide_tags(r, m, tags, &loaded).await?,
        };
        let TagsDecided {
            decision,
            models,
            mut ledger,
        } = found;
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
            reasons: decision.reasons.clone(),
            models,
            previous_digest: ledger.first().and_then(|e| e.previous_digest.clone()),
        };
        self.record(&loaded, x, who);
        for e in &mut ledger {
            e.user = who.user.map(str::to_string);
            e.client = who.client.to_string();
            e.reason = who.reason.map(str::to_string);
            e.policy_sha256 = loaded.sha256.clone();
        }
        if decision.decision == Decision::Deny {
            // A refused release candidate is history too (never a release).
            for e in ledger.iter_mut().filter(|e| e.event == Event::Release) {
                e.event = Event::Refused;
                e.refused_because = decision.reasons.clone();
                if let Err(err) = self.ledger.record(e).await {
                    tracing::error!(repository = %r.canonical, tag = %e.tag, "the release ledger could not record a refusal: {err}");
                }
            }
        }
        match decision.decision {
            Decision::Deny => Err(GateError::Denied(decision.message())),
            Decision::Audit => {
                tracing::warn!(repository = %r.canonical, "{}", decision.message());
                Ok(PushVerdict { exempt, ledger })
            }
            Decision::Allow => Ok(PushVerdict { exempt, ledger }),
        }
    }

    /// Each tag on its own (pattern, immutability, regression against the
    /// previous release, channels only to releases), a PUT by digest once;
    /// the strictest outcome wins and every reason is kept.
    async fn decide_tags(
        &self,
        r: &Route,
        m: &Manifest,
        tags: &[String],
        loaded: &LoadedPolicy,
    ) -> Result<TagsDecided, GateError> {
        let repo = &r.canonical;
        let rule = loaded.policy.rule_for(repo);
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
        let facts = numeric_facts(&ev);
        let signers: Vec<String> = ev.signers.iter().cloned().collect();
        let tag_list: Vec<Option<&String>> = match tags.is_empty() {
            true => vec![None],
            false => tags.iter().map(Some).collect(),
        };
        let mut decision: Option<PolicyDecision> = None;
        let mut all_reasons: Vec<String> = Vec::new();
        let mut ledger = Vec::new();
        for t in tag_list {
            let mut ev = ev.clone();
            ev.tag = t.cloned();
            // What the upstream's tag names now: asked once, for the
            // immutability check and the ledger's previous digest.
            let upstream_now = match t {
                Some(t) if immutable_tag(rule, t) || rule.is_some_and(|r| lifecycle_tag(r, t)) => {
                    self.registry.tag_digest(r, t).await?
                }
                _ => None,
            };
            if let Some(t) = t.filter(|t| immutable_tag(rule, t)) {
                self.state.load_first_seen(repo, t).await?;
                let first = self.state.seen_tag(repo, t).or(upstream_now.clone());
                if let Some(first) = first.filter(|f| f != &m.digest) {
                    tracing::warn!(repository = %repo, tag = %t, first = %first, now = %m.digest, "tag mutation refused");
                    ev.tag_moved = Some((first, m.digest.clone()));
                }
            }
            let mut d = evaluate(&loaded.policy, repo, &ev);
            if let (Some(rule), Some(t)) = (rule, t) {
                let previous = upstream_now.map(|d| d.to_string());
                let (extra, mut entry) = self.lifecycle(r, m, rule, t, &facts, previous);
                if let Some(e) = entry.as_mut() {
                    e.signers = signers.clone();
                }
                if !extra.is_empty() && d.decision == Decision::Allow {
                    d.decision = match rule.mode {
                        Mode::Audit => Decision::Audit,
                        Mode::Enforce => Decision::Deny,
                    };
                }
                d.reasons.extend(extra);
                ledger.extend(entry);
            }
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
        Ok(TagsDecided {
            decision: d,
            models: ev.models_summary(),
            ledger,
        })
    }

    /// What setting `tag` to `m` means for the release lifecycle: for a
    /// release version, regressions against the previous release; for a
    /// channel, whether `m` is a release. Returns the reasons against it
    /// and the ledger entry to write once the upstream has the tag.
    /// `previous_digest` is what the upstream's tag names now.
    fn lifecycle(
        &self,
        r: &Route,
        m: &Manifest,
        rule: &Rule,
        tag: &str,
        facts: &BTreeMap<String, f64>,
        previous_digest: Option<String>,
    ) -> (Vec<String>, Option<LedgerEntry>) {
        let repo = &r.canonical;
        let version = version_of(tag);
        if !lifecycle_tag(rule, tag) {
            return (Vec::new(), None);
        }
        let entry = |event, version: Option<String>, facts: BTreeMap<String, f64>| LedgerEntry {
            time: crate::audit::now_rfc3339(),
            event,
            repository: repo.clone(),
            tag: tag.to_string(),
            digest: m.digest.to_string(),
            previous_digest: previous_digest.clone(),
            version,
            facts,
            signers: Vec::new(),
            refused_because: Vec::new(),
            user: None,
            client: String::new(),
            reason: None,
            policy_sha256: String::new(),
        };
        if let Some(v) = version {
            let prev = self.ledger.previous_release(repo, &v);
            let reasons = check_regressions(
                rule,
                facts,
                prev.as_ref().map(|p| (p.tag.as_str(), &p.facts)),
            );
            return (
                reasons,
                Some(entry(Event::Release, Some(v.to_string()), facts.clone())),
            );
        }
        match self.ledger.release_with_digest(repo, &m.digest.to_string()) {
            Some(release) => (
                Vec::new(),
                Some(entry(
                    Event::Channel,
                    release.version.clone(),
                    release.facts,
                )),
            ),
            None => {
                let releases: Vec<String> = self
                    .ledger
                    .releases(repo)
                    .into_iter()
                    .map(|e| e.tag)
                    .collect();
                (
                    vec![format!(
                        "channel {tag} may move only to a release of {repo}; {} is not one (releases: {})",
                        m.digest,
                        if releases.is_empty() { "none yet".to_string() } else { releases.join(", ") }
                    )],
                    None,
                )
            }
        }
    }

    /// The upstream has the pushed manifest under `tags`: a new signature
    /// makes the image it signs be decided afresh; a decided document's
    /// immutable tags are remembered.
    pub async fn pushed(&self, r: &Route, verdict: &PushVerdict, m: &Manifest, tags: &[String]) {
        let repo = &r.canonical;
        for e in verdict.ledger.iter().filter(|e| tags.contains(&e.tag)) {
            if let Err(err) = self.ledger.record(e).await {
                tracing::error!(repository = %repo, tag = %e.tag, "the release ledger could not record this {:?}: {err}", e.event);
            }
        }
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
            for t in tags
                .iter()
                .filter(|t| immutable_tag(loaded.policy.rule_for(repo), t))
            {
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
            previous_digest: None,
        };
        self.record(&loaded, x, who);
        match decision.decision {
            Decision::Deny => Err(GateError::Denied(decision.message())),
            _ => Ok(()),
        }
    }
}
