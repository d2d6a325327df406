//! State shared by several replicas (`[storage] backend = "s3"`,
//! `[coordination] redis`; docs/ARCHITECTURE.md, "Several replicas"):
//!
//! - the bucket ([`bucket`], signed by [`sigv4`]) holds blobs and manifests
//!   by digest, the first digest seen for each immutable tag, the last
//!   known digest of every tag, and the release ledger;
//! - Redis holds per-digest download leases ([`lease`]); the holder copies
//!   the blob into the bucket as it downloads ([`upload`]) and serves it to
//!   the other replicas over the internal endpoint
//!   (`server::internal`).
//!
//! Invariants: the bucket holds only verified, complete objects; an
//! immutable tag's record is created once, first writer wins, and never
//! overwritten; last-known records change only by compare-and-swap; a
//! replica that cannot read a record it needs refuses (503) rather than
//! decide alone.

pub mod bucket;
pub mod lease;
pub mod sigv4;
pub mod upload;

pub use bucket::{Bucket, BucketError, Cond, Fetched};
pub use lease::{Lease, LeaseGuard, Leases};

use crate::config::{Config, Secret};
use crate::metrics::{Metrics, ReasonLabels, ResultLabels, SourceLabels};
use crate::oci::Digest;
use bytes::Bytes;
use dashmap::DashMap;
use std::sync::Arc;

/// A tag record in the bucket.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TagRecord {
    pub digest: Digest,
    pub media_type: String,
    /// Seconds since the epoch when it was written.
    pub written_unix: u64,
}

/// The shared bucket and, with `[coordination]`, the leases.
pub struct Shared {
    pub bucket: Arc<Bucket>,
    pub leases: Option<Arc<Leases>>,
    /// The bearer token replicas present to each other's internal endpoint.
    pub internal_token: Option<Secret>,
    metrics: Arc<Metrics>,
    /// Immutable records already read: they never change.
    first_seen: DashMap<(String, String), Digest>,
    /// Requests to the other replicas' internal endpoints.
    pub peer: PeerClient,
}

/// The client for other replicas' internal endpoints (plain HTTP inside
/// the fleet's network, authenticated by the shared token): the same
/// builder as the upstreams'.
pub type PeerClient = crate::upstream::client::HttpsClient;

/// Key of blob `d`.
pub fn blob_key(d: &Digest) -> String {
    format!("blobs/{}/{}", d.algorithm(), d.hex())
}

/// Key of manifest `d`.
pub fn manifest_key(d: &Digest) -> String {
    format!("manifests/{}/{}", d.algorithm(), d.hex())
}

fn first_seen_key(repo: &str, tag: &str) -> String {
    format!("tags/immutable/{repo}/{tag}.json")
}

fn last_known_key(repo: &str, tag: &str) -> String {
    format!("tags/last-known/{repo}/{tag}.json")
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Shared {
    /// The shared state `config` names, if any.
    pub fn open(config: &Config, metrics: Arc<Metrics>) -> Result<Option<Arc<Shared>>, String> {
        let Some(s3) = &config.storage else {
            if config.coordination.is_some() {
                return Err("[coordination] needs [storage] backend = \"s3\": the lease holder copies each blob into the shared bucket".into());
            }
            return Ok(None);
        };
        let bucket = Arc::new(Bucket::new(s3).map_err(|e| format!("storage: {e}"))?);
        let leases = match &config.coordination {
            Some(c) => Some(Leases::new(
                &c.redis,
                &c.internal_advertise,
                c.lease_ttl,
                metrics.coordination_up.clone(),
            )?),
            None => None,
        };
        let peer =
            crate::upstream::client::https_client(None, std::time::Duration::from_secs(2), 32)
                .map_err(|e| format!("coordination: {e}"))?;
        metrics.shared_storage_up.set(1);
        metrics.coordination_up.set(leases.is_some() as i64);
        Ok(Some(Arc::new(Shared {
            bucket,
            leases,
            internal_token: config
                .coordination
                .as_ref()
                .map(|c| c.internal_token.clone()),
            metrics,
            first_seen: DashMap::new(),
            peer,
        })))
    }

    /// Note whether the bucket answered (the gauge and the log follow).
    pub fn note<T>(&self, r: &Result<T, BucketError>) {
        let up = !matches!(r, Err(BucketError::Unavailable { .. }));
        let was = self.metrics.shared_storage_up.set(up as i64);
        if was != up as i64 {
            match (up, r) {
                (true, _) => tracing::info!(bucket = %self.bucket.endpoint(), "shared storage is reachable again"),
                (false, Err(e)) => tracing::error!("{e}; serving what the local cache holds, refusing what needs the shared records"),
                (false, Ok(_)) => {}
            }
        }
    }

    /// Probe the bucket and Redis every `every`, so the gauges and
    /// `/readyz` say how they are even when no request needs them.
    pub fn watch_health(self: Arc<Self>, every: std::time::Duration) {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let r = self.bucket.head("modelgate-health-probe").await;
                self.note(&r);
                if let Some(l) = &self.leases {
                    l.ping().await;
                }
            }
        });
    }

    /// Whether the bucket answered its last call.
    pub fn bucket_up(&self) -> bool {
        self.metrics.shared_storage_up.get() == 1
    }

    /// Whether Redis answered its last command (true without coordination).
    pub fn redis_up(&self) -> bool {
        self.leases.as_ref().is_none_or(|l| l.is_up())
    }

    pub fn count_source(&self, source: &'static str) {
        self.metrics
            .shared_blob_sources
            .get_or_create(&SourceLabels { source })
            .inc();
    }

    pub fn count_upload(&self, result: &'static str) {
        self.metrics
            .shared_uploads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub fn count_refusal(&self, reason: &'static str) {
        self.metrics
            .shared_refusals
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    async fn read_record(&self, key: &str) -> Result<Option<(TagRecord, String)>, BucketError> {
        let r = self.bucket.get_small(key).await;
        self.note(&r);
        let Some((body, etag)) = r? else {
            return Ok(None);
        };
        match serde_json::from_slice::<TagRecord>(&body) {
            Ok(rec) => Ok(Some((rec, etag))),
            Err(e) => Err(BucketError::Unavailable {
                endpoint: self.bucket.endpoint(),
                message: format!("tag record {key} is not one modelgate wrote: {e}"),
            }),
        }
    }

    /// The first digest of an immutable tag as last read from the bucket.
    pub fn cached_first_seen(&self, repo: &str, tag: &str) -> Option<Digest> {
        self.first_seen
            .get(&(repo.to_string(), tag.to_string()))
            .map(|d| d.clone())
    }

    /// The first digest recorded for an immutable tag, fleet-wide.
    pub async fn first_seen(&self, repo: &str, tag: &str) -> Result<Option<Digest>, BucketError> {
        let k = (repo.to_string(), tag.to_string());
        if let Some(d) = self.first_seen.get(&k) {
            return Ok(Some(d.clone()));
        }
        let rec = self.read_record(&first_seen_key(repo, tag)).await?;
        if let Some((rec, _)) = &rec {
            self.first_seen.insert(k, rec.digest.clone());
        }
        Ok(rec.map(|(r, _)| r.digest))
    }

    /// Record `d` as the first digest of an immutable tag unless one is
    /// recorded already; the digest recorded (first writer wins).
    pub async fn claim_first_seen(
        &self,
        repo: &str,
        tag: &str,
        d: &Digest,
        media_type: &str,
    ) -> Result<Digest, BucketError> {
        if let Some(first) = self.cached_first_seen(repo, tag) {
            return Ok(first);
        }
        // Straight to the conditional write: a record that exists already
        // answers with 412, and only then is it read.
        let key = first_seen_key(repo, tag);
        let rec = record(d, media_type);
        let put = self.bucket.put(&key, rec, Cond::IfAbsent).await;
        self.note(&put);
        let first = match put {
            Ok(_) => d.clone(),
            // Another replica was first: its record is the answer.
            Err(BucketError::Precondition) => match self.read_record(&key).await? {
                Some((rec, _)) => rec.digest,
                None => {
                    return Err(BucketError::Unavailable {
                        endpoint: self.bucket.endpoint(),
                        message: format!("tag record {key} exists but cannot be read"),
                    })
                }
            },
            Err(e) => return Err(e),
        };
        self.first_seen
            .insert((repo.to_string(), tag.to_string()), first.clone());
        Ok(first)
    }

    /// The last known digest of a tag, fleet-wide.
    pub async fn last_known(
        &self,
        repo: &str,
        tag: &str,
    ) -> Result<Option<TagRecord>, BucketError> {
        Ok(self
            .read_record(&last_known_key(repo, tag))
            .await?
            .map(|(r, _)| r))
    }

    /// Record that the upstream says `tag → d` now (compare-and-swap, so
    /// two replicas never interleave a read and a write).
    pub async fn set_last_known(
        &self,
        repo: &str,
        tag: &str,
        d: &Digest,
        media_type: &str,
    ) -> Result<(), BucketError> {
        let key = last_known_key(repo, tag);
        for _ in 0..8 {
            let cond = match self.read_record(&key).await? {
                Some((rec, _)) if rec.digest == *d && rec.media_type == media_type => return Ok(()),
                Some((_, etag)) => Cond::IfMatch(etag),
                None => Cond::IfAbsent,
            };
            let put = self.bucket.put(&key, record(d, media_type), cond).await;
            self.note(&put);
            match put {
                Ok(_) => return Ok(()),
                Err(BucketError::Precondition) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(BucketError::Precondition)
    }

    /// A manifest by digest from the bucket, verified against it; None
    /// when absent (or holding other bytes, which is logged).
    pub async fn manifest(&self, d: &Digest, max: usize) -> Result<Option<Bytes>, BucketError> {
        let r = self.bucket.get_small(&manifest_key(d)).await;
        self.note(&r);
        let Some((bytes, _)) = r? else {
            return Ok(None);
        };
        if bytes.len() > max || Digest::of(&bytes) != *d {
            tracing::error!(digest = %d, "the shared bucket holds other bytes under manifest {d}; ignored");
            return Ok(None);
        }
        Ok(Some(bytes))
    }

    /// Keep a verified manifest in the bucket (content-addressed: an
    /// existing object is the same bytes).
    pub async fn put_manifest(&self, d: &Digest, bytes: Bytes) {
        let r = self
            .bucket
            .put(&manifest_key(d), bytes, Cond::IfAbsent)
            .await;
        self.note(&r);
        if let Err(e @ BucketError::Unavailable { .. }) = r {
            tracing::warn!("manifest {d} not stored in the shared bucket: {e}");
        }
    }
}

/// Key of `repo`'s release ledger.
pub fn ledger_key(repo: &str) -> String {
    format!("ledger/{repo}/ledger.jsonl")
}

impl Shared {
    /// `repo`'s ledger as the bucket holds it (JSON lines) and its ETag.
    pub async fn ledger(&self, repo: &str) -> Result<Option<(Bytes, String)>, BucketError> {
        let r = self.bucket.get_small(&ledger_key(repo)).await;
        self.note(&r);
        r
    }

    /// `repo`'s ledger unless it still has ETag `etag`.
    pub async fn ledger_unless(
        &self,
        repo: &str,
        etag: Option<&str>,
    ) -> Result<Fetched, BucketError> {
        let r = self.bucket.get_small_unless(&ledger_key(repo), etag).await;
        self.note(&r);
        r
    }

    /// Append `lines` to `repo`'s ledger (compare-and-swap, so appends from
    /// several replicas never overwrite each other); the ledger after, and
    /// its ETag.
    pub async fn append_ledger(
        &self,
        repo: &str,
        lines: &[u8],
    ) -> Result<(Bytes, String), BucketError> {
        let key = ledger_key(repo);
        for _ in 0..16 {
            let (mut text, cond) = match self.ledger(repo).await? {
                Some((t, etag)) => (t.to_vec(), Cond::IfMatch(etag)),
                None => (Vec::new(), Cond::IfAbsent),
            };
            text.extend_from_slice(lines);
            let text = Bytes::from(text);
            let put = self.bucket.put(&key, text.clone(), cond).await;
            self.note(&put);
            match put {
                Ok(etag) => return Ok((text, etag)),
                Err(BucketError::Precondition) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(BucketError::Precondition)
    }

    /// Every repository with a ledger in the bucket.
    pub async fn ledger_repositories(&self) -> Result<Vec<String>, BucketError> {
        let r = self.bucket.list("ledger/").await;
        self.note(&r);
        Ok(r?
            .into_iter()
            .filter_map(|o| {
                o.key
                    .strip_prefix("ledger/")?
                    .strip_suffix("/ledger.jsonl")
                    .map(str::to_string)
            })
            .collect())
    }
}

fn record(d: &Digest, media_type: &str) -> Bytes {
    let rec = TagRecord {
        digest: d.clone(),
        media_type: media_type.to_string(),
        written_unix: now_unix(),
    };
    Bytes::from(serde_json::to_vec(&rec).unwrap_or_default())
}
