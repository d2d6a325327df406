//! The policy in force: loaded at start, swapped atomically on reload
//! (SIGHUP, or the file changed). A broken file keeps the last good policy,
//! says why in the log and counts `modelgate_policy_reloads_total{result="error"}`.
//!
//! Invariant: every swap bumps `generation`, so decisions cached under an
//! older policy are never reused.

use super::model::{Policy, PolicyError};
use crate::metrics::{Metrics, ResultLabels};
use arc_swap::ArcSwap;
use sha2::{Digest as _, Sha256};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A policy with what identifies it.
pub struct LoadedPolicy {
    pub policy: Policy,
    /// SHA-256 of the file's bytes ("none" without a file).
    pub sha256: String,
    pub generation: u64,
}

pub struct PolicyHolder {
    path: Option<PathBuf>,
    current: ArcSwap<LoadedPolicy>,
}

impl PolicyHolder {
    /// Load `path` (None: allow everything, no rules).
    pub fn load(path: Option<PathBuf>) -> Result<PolicyHolder, PolicyError> {
        let loaded = match &path {
            None => LoadedPolicy {
                policy: Policy {
                    default_allow: true,
                    keys: Default::default(),
                    rules: vec![],
                },
                sha256: "none".into(),
                generation: 1,
            },
            Some(p) => {
                let (policy, text) = Policy::load(p)?;
                LoadedPolicy {
                    policy,
                    sha256: hex::encode(Sha256::digest(text.as_bytes())),
                    generation: 1,
                }
            }
        };
        Ok(PolicyHolder {
            path,
            current: ArcSwap::from_pointee(loaded),
        })
    }

    pub fn current(&self) -> Arc<LoadedPolicy> {
        self.current.load_full()
    }

    /// Re-read the file. Ok(true) when a new policy is in force, Ok(false)
    /// when the file did not change.
    pub fn reload(&self, metrics: &Metrics) -> Result<bool, PolicyError> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let text = std::fs::read(path).map_err(|e| PolicyError::Invalid {
            path: path.display().to_string(),
            message: format!("cannot read: {e}"),
        });
        let result = text.and_then(|bytes| {
            let sha = hex::encode(Sha256::digest(&bytes));
            let old = self.current();
            if sha == old.sha256 {
                return Ok(false);
            }
            let (policy, _) = Policy::load(path)?;
            self.current.store(Arc::new(LoadedPolicy {
                policy,
                sha256: sha,
                generation: old.generation + 1,
            }));
            Ok(true)
        });
        match &result {
            Ok(true) => {
                metrics
                    .policy_reloads
                    .get_or_create(&ResultLabels { result: "success" })
                    .inc();
                tracing::info!(policy = %path.display(), sha256 = %self.current().sha256, "policy reloaded");
            }
            Ok(false) => {}
            Err(e) => {
                metrics
                    .policy_reloads
                    .get_or_create(&ResultLabels { result: "error" })
                    .inc();
                tracing::error!(
                    "{e}; keeping the last good policy (sha256 {})",
                    self.current().sha256
                );
            }
        }
        result
    }

    /// Reload on SIGHUP and whenever the file changes (checked every `every`).
    pub fn watch(self: &Arc<Self>, metrics: Arc<Metrics>, every: Duration) {
        if self.path.is_none() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut last_failed_sha = String::new();
            loop {
                let signalled = async {
                    match hup.as_mut() {
                        Some(h) => {
                            h.recv().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                let forced = tokio::select! {
                    _ = signalled => true,
                    _ = tokio::time::sleep(every) => false,
                };
                // A broken file is reported once per change, not every tick.
                let sha = me
                    .path
                    .as_ref()
                    .and_then(|p| std::fs::read(p).ok())
                    .map(|b| hex::encode(Sha256::digest(&b)))
                    .unwrap_or_default();
                if !forced && sha == last_failed_sha {
                    continue;
                }
                if me.reload(&metrics).is_err() {
                    last_failed_sha = sha;
                } else {
                    last_failed_sha.clear();
                }
            }
        });
    }
}
