//! Blobs as a repository holds them: from the cache, from a download in
//! flight, or from a new single-flight download (hashed as it streams, see
//! [`crate::cache::flight`]); small blobs (configs, signature payloads) read
//! whole and verified.

use super::core::Registry;
use super::error::{failure, read_body, BadContent, Object, RegistryError};
use crate::cache::download::{Download, Leader};
use crate::cache::flight;
use crate::cache::{FeedMode, FetchError, FetchState, Held, Joined};
use crate::metrics::CacheResult;
use crate::oci::{Digest, RepoName};
use crate::upstream::{Route, Upstream, UpstreamError};
use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, Method, Response, StatusCode};
use hyper::body::Incoming;
use std::fs::File;
use std::sync::Arc;

/// What a client asks of a blob's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobWant {
    /// The whole body, streamed as it arrives.
    Whole,
    /// A byte range: served only from the verified blob.
    Range,
}

/// Where a blob's bytes come from.
pub enum BlobBody {
    /// Verified bytes on disk (cached, or a download that just verified).
    File { file: Arc<File>, size: u64 },
    /// A download in flight, joined or started by this request.
    Flight { joined: Joined, size: Option<u64> },
}

/// GET or HEAD `blobs/<d>` of `path` at `up`.
async fn upstream_blob(
    up: &Upstream,
    method: Method,
    path: &RepoName,
    d: &Digest,
) -> Result<Response<Incoming>, UpstreamError> {
    up.pull(
        method,
        path.as_str(),
        &format!("blobs/{d}"),
        None,
        HeaderMap::new(),
    )
    .await
}

fn content_length(resp: &Response<Incoming>) -> Option<u64> {
    resp.headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

impl Registry {
    /// Refuse a digest that names a cached manifest, and confirm with the
    /// upstream that `r`'s repository holds a blob that is cached (or being
    /// downloaded) for another name.
    async fn ensure_blob_held(&self, r: &Route, d: &Digest) -> Result<(), RegistryError> {
        if self.store.media_type(d).is_some() {
            return Err(RegistryError::WrongKind(format!(
                "{d} is a manifest, not a blob; fetch it under /v2/<name>/manifests/{d}"
            )));
        }
        let held = self.holdings.holds(&r.canonical, d, Held::Blob);
        if !held && (self.store.size_of(d).is_some() || self.flights.get(d).is_some()) {
            self.confirm_held(r, Held::Blob, d).await?;
        }
        Ok(())
    }

    /// Verified bytes of `d` already on disk, if any.
    fn verified_file(&self, d: &Digest) -> Option<(Arc<File>, u64)> {
        if let Some((file, size)) = self.store.open_blob(d) {
            return Some((Arc::new(file), size));
        }
        // Verified and being committed: as good as cached.
        match self.flights.get(d).map(|rx| rx.borrow().clone()) {
            Some(FetchState::Done { size, file }) => Some((file, size)),
            _ => None,
        }
    }

    /// The size of blob `d` as `r`'s repository holds it (a HEAD).
    pub async fn blob_size(&self, r: &Route, d: &Digest) -> Result<u64, RegistryError> {
        self.ensure_blob_held(r, d).await?;
        if let Some((_, size)) = self.verified_file(d) {
            self.metrics.cache("blob", CacheResult::Hit);
            return Ok(size);
        }
        self.metrics.cache("blob", CacheResult::Miss);
        let resp = upstream_blob(&r.upstream, Method::HEAD, &r.path, d).await?;
        if resp.status() != StatusCode::OK {
            if resp.status() == StatusCode::NOT_FOUND {
                self.holdings.release(&r.canonical, d);
            }
            return Err(failure(&r.upstream, resp, Object::Blob).await);
        }
        self.holdings.hold(&r.canonical, d, Held::Blob);
        Ok(content_length(&resp).unwrap_or(0))
    }

    /// The bytes of blob `d` as `r`'s repository holds it: a verified file,
    /// or a download in flight (one upstream GET per digest, whoever asks).
    /// `declared` is the size the manifest that admitted it declares: a
    /// blob of another size is refused, and a download that runs past it is
    /// cut off there and not cached.
    pub async fn blob(
        self: &Arc<Self>,
        r: &Route,
        d: &Digest,
        want: BlobWant,
        declared: Option<u64>,
    ) -> Result<BlobBody, RegistryError> {
        self.ensure_blob_held(r, d).await?;
        if let Some((file, size)) = self.verified_file(d) {
            self.metrics.cache("blob", CacheResult::Hit);
            if let Some(m) = declared.filter(|m| *m != size) {
                return Err(size_lie(d, size, m));
            }
            return Ok(BlobBody::File { file, size });
        }
        self.metrics.cache("blob", CacheResult::Miss);
        // The client that starts the download is fed from memory; ranges are
        // served only once the whole blob verified, so they need no feed.
        let mode = match want {
            BlobWant::Whole => FeedMode::Memory,
            BlobWant::Range => FeedMode::FileOnly,
        };
        let me = self.clone();
        let (up, path, digest) = (r.upstream.clone(), r.path.clone(), d.clone());
        let mut joined = self
            .flights
            .join_or_start(d, mode, move |tx, leader| async move {
                me.download(up, path, digest, declared, tx, leader).await
            });
        if let Joined::Follower(_) = joined {
            self.metrics.fetches_coalesced.inc();
            if !self.holdings.holds(&r.canonical, d, Held::Blob) {
                // Joined a download that another repository started.
                self.confirm_held(r, Held::Blob, d).await?;
            }
        }
        flight::wait_started(joined.progress()).await?;
        self.holdings.hold(&r.canonical, d, Held::Blob);
        if want == BlobWant::Range {
            flight::wait_done(joined.progress()).await?;
            return match joined.progress().borrow().clone() {
                FetchState::Done { size, file } => Ok(BlobBody::File { file, size }),
                _ => Err(FetchError::Aborted.into()),
            };
        }
        let size = match &*joined.progress().borrow() {
            FetchState::Streaming { size, .. } | FetchState::PassThrough { size } => *size,
            FetchState::Done { size, .. } => Some(*size),
            _ => None,
        };
        Ok(BlobBody::Flight { joined, size })
    }

    /// One upstream download of `d`, run detached from any client.
    async fn download(
        self: Arc<Self>,
        up: Arc<Upstream>,
        path: RepoName,
        d: Digest,
        declared: Option<u64>,
        tx: tokio::sync::watch::Sender<FetchState>,
        leader: Option<Leader>,
    ) {
        // It may have landed between the caller's cache check and now.
        if let Some((file, size)) = self.store.open_blob(&d) {
            tx.send_replace(FetchState::Done {
                size,
                file: Arc::new(file),
            });
            return;
        }
        let failed = |e: RegistryError| FetchState::Failed(FetchError::Start(Arc::new(e)));
        if let Some(shared) = self.shared.clone() {
            let opened = self
                .shared_source(&shared, &up, &path, &d, tx.subscribe())
                .await;
            let (body, size) = match opened {
                Ok(x) => x,
                Err(e) => {
                    tx.send_replace(failed(e));
                    return;
                }
            };
            if let (Some(n), Some(m)) = (size, declared) {
                if n != m {
                    tx.send_replace(failed(size_lie(&d, n, m)));
                    return;
                }
            }
            // Each source is watched for stalls by `resuming`; moving to
            // another may wait out a dead holder's lease.
            let idle = up.idle_timeout() + self.lease_ttl + std::time::Duration::from_secs(10);
            self.download_of(&up, d, idle)
                .run(tx, size.or(declared), body, leader)
                .await;
            return;
        }
        let resp = match upstream_blob(&up, Method::GET, &path, &d).await {
            Ok(r) => r,
            Err(e) => {
                tx.send_replace(failed(e.into()));
                return;
            }
        };
        if resp.status() != StatusCode::OK {
            tx.send_replace(failed(failure(&up, resp, Object::Blob).await));
            return;
        }
        let size = content_length(&resp);
        if let (Some(n), Some(m)) = (size, declared) {
            if n != m {
                tx.send_replace(failed(size_lie(&d, n, m)));
                return;
            }
        }
        // Without a Content-Length the declared size bounds the body: the
        // download stops at the first byte past it.
        self.download_of(&up, d, up.idle_timeout())
            .run(tx, size.or(declared), resp.into_body(), leader)
            .await;
    }

    /// The download of `d` into the cache (hashing, verifying, committing),
    /// abandoned after `idle_timeout` without a byte.
    fn download_of(&self, up: &Upstream, d: Digest, idle_timeout: std::time::Duration) -> Download {
        Download {
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            digest: d,
            upstream: up.name.clone(),
            idle_timeout,
            min_free: self.min_free,
        }
    }

    /// A small blob (a config, a signature payload) read whole: from the
    /// cache, or fetched, verified against its digest and cached.
    pub async fn small_blob(
        &self,
        r: &Route,
        d: &Digest,
        max: usize,
    ) -> Result<Bytes, RegistryError> {
        if let Some(b) = self.store.read_small(d, max) {
            return Ok(Bytes::from(b));
        }
        let up = &r.upstream;
        let resp = upstream_blob(up, Method::GET, &r.path, d).await?;
        if resp.status() != StatusCode::OK {
            return Err(failure(up, resp, Object::Blob).await);
        }
        let bytes = read_body(up, resp, max, &format!("blob {d}"), Object::Blob).await?;
        if Digest::of(&bytes) != *d {
            self.metrics.digest_mismatch(&up.name);
            tracing::error!(upstream = %up.name, digest = %d, "digest mismatch on a small blob; refused, nothing cached");
            return Err(RegistryError::BadContent {
                kind: BadContent::Mismatch,
                object: Object::Blob,
                message: format!(
                    "upstream {} sent bytes for {d} that do not match it",
                    up.name
                ),
            });
        }
        if let Err(e) = self.store.put_bytes(d, &bytes, None) {
            tracing::warn!(error = %e, "cannot cache blob {d}");
        }
        Ok(bytes)
    }
}

/// A blob whose size is not the one its manifest declares.
fn size_lie(d: &Digest, actual: u64, declared: u64) -> RegistryError {
    RegistryError::BadContent {
        kind: BadContent::Mismatch,
        object: Object::Blob,
        message: format!(
            "blob {d} is {actual} bytes but the manifest that references it declares {declared}; refused, nothing cached"
        ),
    }
}
