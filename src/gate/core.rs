//! The gate itself: its parts (registry below it, remembered decisions,
//! the policy in force, the audit log), its errors, and how a decision is
//! recorded.

use super::ledger::Ledger;
use super::state::GateState;
use crate::audit::{now_rfc3339, AuditLog, AuditRecord};
use crate::config::Config;
use crate::metrics::{DecisionLabels, Metrics};
use crate::oci::Digest;
use crate::policy::{LoadedPolicy, PolicyDecision, PolicyError, PolicyHolder, Rule};
use crate::registry::{Registry, RegistryError};
use crate::upstream::Route;
use std::sync::Arc;

/// Errors of the gate layer.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// Occurs when the policy denies the request; the message names the rule
    /// and every failed requirement.
    #[error("{0}")]
    Denied(String),
    /// Occurs when content needed for the decision (or to be served) could
    /// not be had.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// Why the gate could not start.
#[derive(Debug, thiserror::Error)]
pub enum GateOpenError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("audit log {0}: {1}")]
    Audit(String, std::io::Error),
    #[error("tag memory in {0}: {1}")]
    State(String, std::io::Error),
}

/// Who asked, for the audit log.
pub struct Requester<'a> {
    pub client: &'a str,
    pub user: Option<&'a str>,
    /// Why (the `X-Modelgate-Reason` header of a manifest PUT).
    pub reason: Option<&'a str>,
}

/// What an audited decision is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }
}

/// One decision, as recorded.
pub struct Decided<'a> {
    pub action: Action,
    pub route: &'a Route,
    pub reference: &'a str,
    /// None when the request was refused before any content was fetched.
    pub digest: Option<&'a Digest>,
    pub decision: &'a PolicyDecision,
    /// What the audit log gives as reasons (the failed requirements, or
    /// why no decision was needed).
    pub reasons: Vec<String>,
    /// Kinds and facts of the models decided.
    pub models: Vec<serde_json::Value>,
    /// For a release or channel move: what the tag named before.
    pub previous_digest: Option<String>,
}

/// Where the release ledger lives: next to the tag memory.
pub fn ledger_dir(config: &Config) -> std::path::PathBuf {
    config.cache_dir.join("ledger")
}

/// Policy decisions over the content the registry layer provides.
pub struct Gate {
    pub(super) registry: Arc<Registry>,
    pub(super) state: GateState,
    pub(super) policy: Arc<PolicyHolder>,
    pub(super) audit: AuditLog,
    pub(super) metrics: Arc<Metrics>,
    pub(super) ledger: std::sync::Arc<Ledger>,
    /// The latest denials, newest last (for the release page).
    recent_denials: std::sync::Mutex<std::collections::VecDeque<Denial>>,
}

/// How many denials the release page shows.
pub const RECENT_DENIALS: usize = 50;

/// One denial, as the release page lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Denial {
    pub time: String,
    pub action: &'static str,
    pub repository: String,
    pub reference: String,
    pub user: Option<String>,
    pub client: String,
    pub reasons: Vec<String>,
}

/// Whether `rule` makes tags immutable.
pub fn immutable_tags(rule: Option<&Rule>) -> bool {
    rule.and_then(|r| r.tags.as_ref())
        .is_some_and(|t| t.immutable)
}

/// Whether `tag` may never move under `rule`: releases are immutable and
/// it is not one of the rule's channels.
pub fn immutable_tag(rule: Option<&Rule>, tag: &str) -> bool {
    rule.and_then(|r| r.tags.as_ref())
        .is_some_and(|t| t.immutable && !t.is_channel(tag))
}

impl Gate {
    /// The policy and audit log of `config`, over `registry`.
    pub fn open(
        config: &Config,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
    ) -> Result<Gate, GateOpenError> {
        let policy = Arc::new(PolicyHolder::load(config.policy_file.clone())?);
        let audit = AuditLog::open(&config.audit_path)
            .map_err(|e| GateOpenError::Audit(config.audit_path.clone(), e))?;
        let dir = config.cache_dir.join("seen-tags");
        let state = GateState::open(dir.clone(), registry.shared().cloned())
            .map_err(|e| GateOpenError::State(dir.display().to_string(), e))?;
        let dir = ledger_dir(config);
        let ledger = Ledger::open_shared(dir.clone(), registry.shared().cloned())
            .map_err(|e| GateOpenError::State(dir.display().to_string(), e))?;
        let ledger = std::sync::Arc::new(ledger);
        Ok(Gate {
            registry,
            state,
            policy,
            audit,
            metrics,
            ledger,
            recent_denials: Default::default(),
        })
    }

    /// The latest denials, newest first.
    pub fn recent_denials(&self) -> Vec<Denial> {
        let q = self
            .recent_denials
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        q.iter().rev().cloned().collect()
    }

    /// The release ledger.
    pub fn ledger(&self) -> &std::sync::Arc<Ledger> {
        &self.ledger
    }

    /// The policy holder (for reloads).
    pub fn policy(&self) -> &Arc<PolicyHolder> {
        &self.policy
    }

    /// The content layer under the gate.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The first digest seen for an immutable tag.
    pub fn seen_tag(&self, repo: &str, tag: &str) -> Option<Digest> {
        self.state.seen_tag(repo, tag)
    }

    /// Count and log one decision.
    pub fn record(&self, loaded: &LoadedPolicy, x: Decided<'_>, who: &Requester<'_>) {
        let d = x.decision;
        self.metrics
            .policy_decisions
            .get_or_create(&DecisionLabels {
                action: x.action.as_str(),
                decision: d.decision.as_str(),
                rule: d.rule_label(),
            })
            .inc();
        if d.decision == crate::policy::Decision::Deny {
            let mut q = self
                .recent_denials
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if q.len() == RECENT_DENIALS {
                q.pop_front();
            }
            q.push_back(Denial {
                time: now_rfc3339(),
                action: x.action.as_str(),
                repository: x.route.canonical.clone(),
                reference: x.reference.to_string(),
                user: who.user.map(str::to_string),
                client: who.client.to_string(),
                reasons: x.reasons.clone(),
            });
        }
        self.audit.record(&AuditRecord {
            time: now_rfc3339(),
            action: x.action.as_str(),
            client: who.client.to_string(),
            user: who.user.map(str::to_string),
            upstream: x.route.upstream.name.clone(),
            repository: x.route.canonical.clone(),
            reference: x.reference.to_string(),
            digest: x.digest.map(Digest::to_string).unwrap_or_default(),
            decision: d.decision.as_str(),
            rule: d.rule.clone(),
            reasons: x.reasons,
            models: x.models,
            reason: who.reason.map(str::to_string),
            previous_digest: x.previous_digest,
            policy_sha256: loaded.sha256.clone(),
        });
    }
}
