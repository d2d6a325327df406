//! The policy in force: loaded at start, swapped atomically on reload
//! (SIGHUP, or the file or a file it names changed: keys, trusted roots,
//! Notation certificates). A broken file keeps the last good policy,
//! says why in the log and counts `modelgate_policy_reloads_total{result="error"}`.
//!
//! Invariants:
//! - every swap bumps `generation`, so decisions cached under an older
//!   policy are never reused;
//! - a reload fails closed: a file still being written (modified within
//!   [`SETTLE`], or changing while read) waits for the next check, and a
//!   file that drops every rule or every key of the policy in force is
//!   refused (`result="refused"`), since an empty or half-written file
//!   would otherwise be a valid "allow everything" policy. Replace policy
//!   files by rename; to really remove every rule, restart modelgate.

use super::model::{Policy, PolicyError};
use crate::metrics::{Metrics, ResultLabels};
use arc_swap::ArcSwap;
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A policy file modified more recently than this is still being written.
pub const SETTLE: Duration = Duration::from_millis(500);

/// Why a changed policy file was not put in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Invalid(#[from] PolicyError),
    /// Still being written; tried again at the next check.
    #[error("policy {0} is still changing; it will be read again when it has settled")]
    Unsettled(String),
    /// Valid, but it would remove every rule or every key.
    #[error("policy {path}: reload refused: {why}; the policy in force stays (write the new file whole and rename it into place; to remove every rule on purpose, restart modelgate)")]
    Refused { path: String, why: String },
}

/// (length, modification time) of a file.
fn stamp(path: &Path) -> Option<(u64, SystemTime)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}

/// The files behind a source: itself, or a directory's files, sorted.
fn source_files(path: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(path) {
        Ok(entries) => {
            let mut v: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            v.sort();
            v
        }
        Err(_) => vec![path.to_path_buf()],
    }
}

/// What the policy is made of: SHA-256 over its text's hash and every
/// source file's path and bytes (a missing file counts as such). The
/// newest modification time among the sources comes with it.
fn material(text_sha: &str, sources: &[PathBuf]) -> (String, Option<SystemTime>) {
    let mut h = Sha256::new();
    h.update(text_sha.as_bytes());
    let mut newest = None;
    for f in sources.iter().flat_map(|s| source_files(s)) {
        h.update(f.as_os_str().as_encoded_bytes());
        h.update([0]);
        match std::fs::read(&f) {
            Ok(b) => {
                h.update(Sha256::digest(&b));
                let modified = stamp(&f).map(|(_, m)| m);
                newest = newest.max(modified);
            }
            Err(_) => h.update(b"missing"),
        }
    }
    (hex::encode(h.finalize()), newest)
}

/// Whether a file with this modification time has stopped changing.
pub fn settled(modified: SystemTime, now: SystemTime) -> bool {
    now.duration_since(modified)
        .map_or(true, |age| age >= SETTLE)
}

/// Why `new` may not replace `old`, if it may not.
fn drops_everything(old: &Policy, new: &Policy) -> Option<String> {
    if !old.rules.is_empty() && new.rules.is_empty() {
        return Some(format!(
            "the new file has no rules (the policy in force has {})",
            old.rules.len()
        ));
    }
    let anchors = |p: &Policy| p.keys.len() + p.trust.len() + p.notation.len();
    if anchors(old) > 0 && anchors(new) == 0 {
        return Some(format!(
            "the new file has no keys and no trust material (the policy in force has {} keys, {} trusted roots, {} Notation trust stores)",
            old.keys.len(),
            old.trust.len(),
            old.notation.len()
        ));
    }
    None
}

/// A policy with what identifies it.
pub struct LoadedPolicy {
    pub policy: Policy,
    /// SHA-256 of the file's bytes ("none" without a file).
    pub sha256: String,
    /// The text and every file it names ([`material`]): what a reload
    /// compares.
    pub material: String,
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
                    trust: Default::default(),
                    notation: Default::default(),
                    rules: vec![],
                    sources: vec![],
                },
                sha256: "none".into(),
                material: "none".into(),
                generation: 1,
            },
            Some(p) => {
                let (policy, text) = Policy::load(p)?;
                let sha256 = hex::encode(Sha256::digest(text.as_bytes()));
                let (material, _) = material(&sha256, &policy.sources);
                LoadedPolicy {
                    policy,
                    sha256,
                    material,
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
    pub fn reload(&self, metrics: &Metrics) -> Result<bool, ReloadError> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let result = self.try_reload(path);
        let label = match &result {
            Ok(true) => {
                tracing::info!(policy = %path.display(), sha256 = %self.current().sha256, "policy reloaded");
                "success"
            }
            Ok(false) | Err(ReloadError::Unsettled(_)) => return result,
            Err(ReloadError::Invalid(_)) => "error",
            Err(ReloadError::Refused { .. }) => "refused",
        };
        metrics
            .policy_reloads
            .get_or_create(&ResultLabels { result: label })
            .inc();
        if let Err(e) = &result {
            tracing::error!(
                "{e}; keeping the last good policy (sha256 {})",
                self.current().sha256
            );
        }
        result
    }

    fn try_reload(&self, path: &Path) -> Result<bool, ReloadError> {
        let unreadable = |e: std::io::Error| PolicyError::Invalid {
            path: path.display().to_string(),
            message: format!("cannot read: {e}"),
        };
        let before = stamp(path);
        let bytes = std::fs::read(path).map_err(unreadable)?;
        let old = self.current();
        let sha = hex::encode(Sha256::digest(&bytes));
        let (was, newest_source) = material(&sha, &old.policy.sources);
        if was == old.material {
            return Ok(false);
        }
        let after = stamp(path);
        let now = SystemTime::now();
        let still_changing = before != after
            || after.is_some_and(|(_, modified)| !settled(modified, now))
            || newest_source.is_some_and(|m| !settled(m, now));
        if still_changing {
            return Err(ReloadError::Unsettled(path.display().to_string()));
        }
        let text = String::from_utf8(bytes).map_err(|e| PolicyError::Invalid {
            path: path.display().to_string(),
            message: format!("not UTF-8: {e}"),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let policy = Policy::parse(&text, base, &path.display().to_string())?;
        if let Some(why) = drops_everything(&old.policy, &policy) {
            return Err(ReloadError::Refused {
                path: path.display().to_string(),
                why,
            });
        }
        let (material, _) = material(&sha, &policy.sources);
        self.current.store(Arc::new(LoadedPolicy {
            policy,
            sha256: sha,
            material,
            generation: old.generation + 1,
        }));
        Ok(true)
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
                let text_sha = me
                    .path
                    .as_ref()
                    .and_then(|p| std::fs::read(p).ok())
                    .map(|b| hex::encode(Sha256::digest(&b)))
                    .unwrap_or_default();
                let sha = material(&text_sha, &me.current().policy.sources).0;
                if !forced && sha == last_failed_sha {
                    continue;
                }
                match me.reload(&metrics) {
                    // Read again at the next tick, when it has settled.
                    Err(ReloadError::Unsettled(_)) => {}
                    Err(_) => last_failed_sha = sha,
                    Ok(_) => last_failed_sha.clear(),
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Policy {
        Policy::parse(text, Path::new("."), "test").unwrap()
    }

    const KEY: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";

    #[test]
    fn a_policy_that_drops_every_rule_or_key_is_refused() {
        let full = policy(&format!(
            "[keys]\nk = \"\"\"{KEY}\"\"\"\n[[rules]]\nname = \"r\"\nrepositories = [\"x/**\"]\n[rules.signatures]\nkeys = [\"k\"]\n"
        ));
        let empty = policy("");
        let no_keys = policy("[[rules]]\nname = \"r\"\nrepositories = [\"x/**\"]\n");
        assert!(drops_everything(&full, &empty)
            .unwrap()
            .contains("no rules"));
        assert!(drops_everything(&full, &no_keys)
            .unwrap()
            .contains("no keys"));
        assert!(drops_everything(&empty, &empty).is_none());
        assert!(drops_everything(&full, &full).is_none());
    }

    #[test]
    fn files_modified_just_now_have_not_settled() {
        let now = SystemTime::now();
        assert!(!settled(now, now));
        assert!(!settled(now - SETTLE / 2, now));
        assert!(settled(now - SETTLE, now));
        assert!(
            settled(now + Duration::from_secs(5), now),
            "a clock ahead cannot block reloads"
        );
    }
}
