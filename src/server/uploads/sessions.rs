//! Upload sessions: bounded in number (in all and per client address),
//! claimed before the upstream opens one, expiring when idle, and cancelled
//! at the upstream when they expire.

use crate::oci::{ErrorCode, OciError, RepoName, Sha256Hasher};
use crate::registry::writes::cancel_upload_later;
use crate::upstream::Route;
use dashmap::DashMap;
use http::StatusCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use url::Url;

/// One upload in progress.
pub struct UploadSession {
    pub(super) route: Route,
    pub(super) client_name: RepoName,
    /// Where the upstream wants the next request of this upload.
    pub(super) upstream_url: Url,
    pub(super) offset: u64,
    pub(super) hasher: Sha256Hasher,
    pub(super) last_used: Instant,
    /// The client's claim on the session limits, released with the session.
    pub(super) _slot: UploadSlot,
}

/// Sessions held, in all and per client address.
#[derive(Default)]
struct SlotCounts {
    total: std::sync::atomic::AtomicUsize,
    per_client: DashMap<std::net::IpAddr, usize>,
}

/// One client's claim on an upload session; released when dropped.
pub struct UploadSlot {
    counts: Arc<SlotCounts>,
    ip: std::net::IpAddr,
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        self.counts
            .total
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if let dashmap::mapref::entry::Entry::Occupied(mut e) =
            self.counts.per_client.entry(self.ip)
        {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

/// Upload sessions, bounded in number (in all and per client address),
/// expiring when idle. An expired or refused session is cancelled at the
/// upstream too.
pub struct Uploads {
    map: DashMap<String, Arc<Mutex<UploadSession>>>,
    counts: Arc<SlotCounts>,
    max: usize,
    max_per_client: usize,
    idle: Duration,
    metrics: Arc<crate::metrics::Metrics>,
}

fn err(status: StatusCode, code: ErrorCode, msg: impl Into<String>) -> OciError {
    OciError::new(status, code, msg)
}

fn unknown_upload(id: &str) -> OciError {
    err(
        StatusCode::NOT_FOUND,
        ErrorCode::BlobUploadUnknown,
        format!(
            "upload {id} is unknown or expired; start a new upload with POST .../blobs/uploads/"
        ),
    )
}

impl Uploads {
    pub fn new(
        max: usize,
        max_per_client: usize,
        idle: Duration,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Uploads {
        Uploads {
            map: DashMap::new(),
            counts: Arc::default(),
            max,
            max_per_client,
            idle,
            metrics,
        }
    }

    /// Claim a session slot for `ip` before anything is opened upstream.
    pub fn reserve(&self, ip: std::net::IpAddr) -> Result<UploadSlot, OciError> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.counts.total.load(Relaxed) >= self.max {
            self.expire();
        }
        if self.counts.total.load(Relaxed) >= self.max {
            crate::metrics::Metrics::reason(&self.metrics.uploads_refused, "limit");
            return Err(err(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::TooManyRequests,
                format!(
                    "{} uploads are in progress, the most modelgate keeps; retry later",
                    self.max
                ),
            ));
        }
        let mut mine = self.counts.per_client.entry(ip).or_insert(0);
        if *mine >= self.max_per_client {
            drop(mine);
            crate::metrics::Metrics::reason(&self.metrics.uploads_refused, "per_client");
            return Err(err(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::TooManyRequests,
                format!(
                    "this address has {} uploads in progress, the most one client may hold; finish or cancel one first",
                    self.max_per_client
                ),
            ));
        }
        *mine += 1;
        drop(mine);
        self.counts.total.fetch_add(1, Relaxed);
        Ok(UploadSlot {
            counts: self.counts.clone(),
            ip,
        })
    }

    pub fn insert(&self, s: UploadSession) -> Result<String, OciError> {
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw).map_err(|e| {
            err(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Unknown,
                format!("no randomness: {e}"),
            )
        })?;
        let id = hex::encode(raw);
        self.map.insert(id.clone(), Arc::new(Mutex::new(s)));
        Ok(id)
    }

    /// Forget a session (finished, cancelled or failed).
    pub fn remove(&self, id: &str) {
        self.map.remove(id);
    }

    pub async fn get(&self, id: &str, repo: &str) -> Result<Arc<Mutex<UploadSession>>, OciError> {
        let s = self
            .map
            .get(id)
            .map(|s| s.clone())
            .ok_or_else(|| unknown_upload(id))?;
        {
            let g = s.lock().await;
            if g.route.canonical != repo {
                return Err(unknown_upload(id));
            }
            if g.last_used.elapsed() > self.idle {
                cancel_upload_later(&g.route, g.upstream_url.clone());
                drop(g);
                self.remove(id);
                return Err(err(
                    StatusCode::NOT_FOUND,
                    ErrorCode::BlobUploadUnknown,
                    format!(
                        "upload {id} expired after {} idle; start again",
                        humantime::format_duration(self.idle)
                    ),
                ));
            }
        }
        Ok(s)
    }

    /// Drop idle sessions and cancel them at the upstream; returns how many.
    pub fn expire(&self) -> usize {
        let mut expired = Vec::new();
        self.map.retain(|_, s| match s.try_lock() {
            Ok(g) if g.last_used.elapsed() > self.idle => {
                expired.push((g.route.clone(), g.upstream_url.clone()));
                false
            }
            _ => true,
        });
        let n = expired.len();
        for (route, url) in expired {
            cancel_upload_later(&route, url);
        }
        n
    }

    /// How often [`Uploads::expire`] should run.
    pub fn sweep_every(&self) -> Duration {
        (self.idle / 2).clamp(Duration::from_millis(100), Duration::from_secs(30))
    }
}
