//! What the gate remembers between requests: evidence per (repository,
//! digest), what admitted manifests opened in each repository, and the
//! first digest seen for immutable tags (on disk, across restarts).
//!
//! Invariants: evidence and admissions carry the policy generation they were
//! made under, so a reload re-decides everything; admissions are per
//! canonical repository.

use crate::cache::TagStore;
use crate::oci::Digest;
use crate::policy::{Evidence, Rule};
use crate::registry::RegistryError;
use crate::shared::{BucketError, Shared};
use dashmap::DashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long evidence that lacks signatures is reused: long enough for a
/// client's HEAD-then-GET pair, short enough that a signature pushed
/// straight to the upstream counts on the next request.
pub const INCOMPLETE_EVIDENCE_WINDOW: Duration = Duration::from_secs(1);

/// What an admission opens in a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Referenced by an admitted manifest: served like any blob (and, for a
    /// child manifest, admitted without a decision of its own).
    Full,
    /// Referenced by a signature artifact: served only while it is small.
    SignaturePayload,
}

struct CachedEvidence {
    generation: u64,
    at: Instant,
    evidence: Evidence,
}

/// Decisions remembered between requests.
pub struct GateState {
    evidence: DashMap<(String, Digest), CachedEvidence>,
    /// (repository, blob or child manifest digest) → (policy generation,
    /// permit, the size the admitting manifest declares).
    admitted: DashMap<(String, Digest), (u64, Permit, Option<u64>)>,
    /// First digest seen for tags under immutable rules; survives restarts.
    seen_tags: TagStore,
    /// Manifests whose references were opened: repository → digest →
    /// (policy generation, how) — so an admitted manifest is parsed once.
    opened: DashMap<String, DashMap<Digest, (u64, Permit)>>,
    /// With several replicas the first digests live in the shared bucket.
    shared: Option<Arc<Shared>>,
}

/// The 503 for an immutable tag whose shared record cannot be read or written.
fn unavailable(s: &Shared, e: BucketError, repo: &str, tag: &str) -> RegistryError {
    s.count_refusal("tag_record");
    RegistryError::Shared(format!(
        "tag {tag} of {repo} is immutable and its fleet-wide record cannot be read or written ({e}); this replica will not decide it alone: retry when object storage is back"
    ))
}

impl GateState {
    pub fn open(
        dir: std::path::PathBuf,
        shared: Option<Arc<Shared>>,
    ) -> std::io::Result<GateState> {
        Ok(GateState {
            shared,
            evidence: DashMap::new(),
            admitted: DashMap::new(),
            seen_tags: TagStore::open(dir)?,
            opened: DashMap::new(),
        })
    }

    /// The first digest seen for `tag` under an immutable rule (with
    /// shared storage: as [`GateState::load_first_seen`] last read it).
    pub fn seen_tag(&self, repo: &str, tag: &str) -> Option<Digest> {
        match &self.shared {
            Some(s) => s.cached_first_seen(repo, tag),
            None => self.seen_tags.get(repo, tag).map(|e| e.digest),
        }
    }

    /// With shared storage, read the fleet's record of an immutable tag
    /// (before [`GateState::seen_tag`] is asked); unreadable is a 503.
    pub async fn load_first_seen(&self, repo: &str, tag: &str) -> Result<(), RegistryError> {
        if let Some(s) = &self.shared {
            s.first_seen(repo, tag)
                .await
                .map_err(|e| unavailable(s, e, repo, tag))?;
        }
        Ok(())
    }

    /// Record `tag → d` as the first digest seen unless one is; the first
    /// digest (another replica's, when it was first). With shared storage
    /// a record that cannot be written is a 503.
    pub async fn claim_tag(
        &self,
        repo: &str,
        tag: &str,
        d: &Digest,
        media_type: &str,
    ) -> Result<Digest, RegistryError> {
        match &self.shared {
            Some(s) => s
                .claim_first_seen(repo, tag, d, media_type)
                .await
                .map_err(|e| unavailable(s, e, repo, tag)),
            None => {
                self.remember_tag(repo, tag, d, media_type);
                Ok(self.seen_tag(repo, tag).unwrap_or_else(|| d.clone()))
            }
        }
    }

    /// Record `tag → d` as the first digest seen (once; later calls keep
    /// the first). With shared storage the record is written in the
    /// background (a push the upstream already took).
    pub fn remember_tag(&self, repo: &str, tag: &str, d: &Digest, media_type: &str) {
        if let Some(s) = self.shared.clone() {
            let (repo, tag, d, mt) = (
                repo.to_string(),
                tag.to_string(),
                d.clone(),
                media_type.to_string(),
            );
            tokio::spawn(async move {
                match s.claim_first_seen(&repo, &tag, &d, &mt).await {
                    Ok(first) if first != d => {
                        tracing::error!(repository = %repo, tag = %tag, first = %first, now = %d, "another replica recorded another digest for this immutable tag first")
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(repository = %repo, tag = %tag, "the fleet-wide record of this immutable tag could not be written: {e}")
                    }
                }
            });
            return;
        }
        if self.seen_tags.get(repo, tag).is_none() {
            if let Err(e) = self.seen_tags.confirm(repo, tag, d, media_type) {
                tracing::error!(error = %e, "cannot record tag {tag} of {repo} as seen");
            }
        }
    }

    /// Evidence about `d` in `repo` still good for `rule` under `generation`.
    /// Evidence that lacks signatures is not an answer for long: a signature
    /// may have been pushed to the upstream since.
    pub fn evidence(
        &self,
        repo: &str,
        d: &Digest,
        rule: &Rule,
        generation: u64,
    ) -> Option<Evidence> {
        let c = self.evidence.get(&(repo.to_string(), d.clone()))?;
        let complete = rule
            .signatures
            .as_ref()
            .is_none_or(|s| s.counted(&c.evidence.signers).len() >= s.min);
        let fresh = complete || c.at.elapsed() < INCOMPLETE_EVIDENCE_WINDOW;
        (c.generation == generation && fresh).then(|| c.evidence.clone())
    }

    /// Remember the evidence gathered about `d` in `repo`.
    pub fn keep_evidence(&self, repo: &str, d: &Digest, generation: u64, evidence: &Evidence) {
        self.evidence.insert(
            (repo.to_string(), d.clone()),
            CachedEvidence {
                generation,
                at: Instant::now(),
                evidence: evidence.clone(),
            },
        );
    }

    /// A signature for `d` arrived: decide it afresh next time.
    pub fn forget_evidence(&self, repo: &str, d: &Digest) {
        self.evidence.remove(&(repo.to_string(), d.clone()));
    }

    /// Whether manifest `d` is opened in `repo` with `permit` for the first
    /// time under `generation` (and note that it is).
    pub fn first_opening(&self, repo: &str, d: &Digest, generation: u64, permit: Permit) -> bool {
        if let Some(m) = self.opened.get(repo) {
            if m.get(d).is_some_and(|e| *e == (generation, permit)) {
                return false;
            }
        }
        if self.opened.len() > 100_000 {
            self.opened.clear();
        }
        self.opened
            .entry(repo.to_string())
            .or_default()
            .insert(d.clone(), (generation, permit));
        true
    }

    /// Open `d` in `repo` under `generation`. A full admission is never
    /// narrowed by a signature's reference.
    pub fn admit(
        &self,
        repo: &str,
        d: &Digest,
        generation: u64,
        permit: Permit,
        declared: Option<u64>,
    ) {
        let key = (repo.to_string(), d.clone());
        if permit == Permit::SignaturePayload
            && self
                .admitted
                .get(&key)
                .is_some_and(|e| e.0 == generation && e.1 == Permit::Full)
        {
            return;
        }
        self.admitted.insert(key, (generation, permit, declared));
    }

    /// What is open for `d` in `repo` under `generation`, and the size the
    /// manifest that opened it declares.
    pub fn permit(&self, repo: &str, d: &Digest, generation: u64) -> Option<(Permit, Option<u64>)> {
        self.admitted
            .get(&(repo.to_string(), d.clone()))
            .filter(|e| e.0 == generation)
            .map(|e| (e.1, e.2))
    }
}
