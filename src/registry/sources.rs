//! Where a cold blob's bytes come from when replicas share state
//! (docs/ARCHITECTURE.md, "Several replicas"): the shared bucket, the
//! replica holding the download lease (over its internal endpoint), or the
//! upstream (this replica took the lease, or Redis is down). A source that
//! breaks off is resumed at the byte reached from the next one that has
//! the blob; the download hashes every byte whatever its source, so a
//! client never receives a complete body of wrong bytes.

use super::core::Registry;
use super::error::{failure, Object, RegistryError};
use crate::cache::FetchState;
use crate::oci::{Digest, RepoName};
use crate::shared::{blob_key, upload, Lease, Shared};
use crate::upstream::Upstream;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, RANGE};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A body assembled from one or more sources.
pub type SourceBody = StreamBody<BoxStream<'static, Result<Frame<Bytes>, io::Error>>>;

/// How often a replica looks again for a source while a dead holder's
/// lease runs out.
const RETRY_EVERY: Duration = Duration::from_millis(250);

/// How many times a download moves to another source.
const MAX_RESUMES: usize = 4;

/// What a source answered: its body from the byte asked for, and the
/// blob's whole size when it said.
struct Opened {
    body: BoxStream<'static, Result<Bytes, io::Error>>,
    size: Option<u64>,
}

fn incoming(b: Incoming) -> BoxStream<'static, Result<Bytes, io::Error>> {
    b.into_data_stream()
        .map(|r| r.map_err(io::Error::other))
        .boxed()
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Everything needed to open the blob anew at some byte.
struct Resumer {
    shared: Arc<Shared>,
    up: Arc<Upstream>,
    path: RepoName,
    d: Digest,
    /// The download's progress (for an uploader if this replica takes over).
    progress: watch::Receiver<FetchState>,
    lease_ttl: Duration,
    /// How long one source may send nothing before the next is tried.
    idle: Duration,
}

impl Resumer {
    /// The blob from the bucket at `from`, if it is there.
    async fn open_bucket(&self, from: u64) -> Option<Opened> {
        let r = self.shared.bucket.get(&blob_key(&self.d), from).await;
        self.shared.note(&r);
        let resp = r.ok()??;
        let size = content_length(resp.headers()).map(|n| n + from);
        self.shared.count_source("bucket");
        Some(Opened {
            body: incoming(resp.into_body()),
            size,
        })
    }

    /// The blob from the replica at `addr` at `from`.
    async fn open_peer(&self, addr: &str, from: u64) -> Option<Opened> {
        let token = self.shared.internal_token.as_ref()?;
        let mut req = Request::get(format!("{addr}/internal/blobs/{}", self.d))
            .header(AUTHORIZATION, format!("Bearer {}", token.0));
        if from > 0 {
            req = req.header(RANGE, format!("bytes={from}-"));
        }
        let req = req
            .body(Empty::<Bytes>::new().map_err(|e| match e {}).boxed())
            .ok()?;
        let resp = tokio::time::timeout(Duration::from_secs(10), self.shared.peer.request(req))
            .await
            .ok()?
            .ok()?;
        let ok = match from {
            0 => resp.status() == StatusCode::OK,
            _ => resp.status() == StatusCode::PARTIAL_CONTENT,
        };
        if !ok {
            tracing::debug!(peer = addr, status = %resp.status(), digest = %self.d, "the lease holder does not serve the blob");
            return None;
        }
        let size = resp
            .headers()
            .get("x-modelgate-blob-size")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        self.shared.count_source("peer");
        Some(Opened {
            body: incoming(resp.into_body()),
            size,
        })
    }

    /// The blob from the upstream at `from` (a `Range` request; an upstream
    /// that ignores it sends the whole blob, and the first `from` bytes are
    /// skipped).
    async fn open_upstream(&self, from: u64) -> Result<Opened, RegistryError> {
        let mut h = HeaderMap::new();
        if from > 0 {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes={from}-")) {
                h.insert(RANGE, v);
            }
        }
        let resp = self
            .up
            .pull(
                Method::GET,
                self.path.as_str(),
                &format!("blobs/{}", self.d),
                None,
                h,
            )
            .await?;
        let status = resp.status();
        let len = content_length(resp.headers());
        if !matches!(status, StatusCode::OK | StatusCode::PARTIAL_CONTENT) {
            return Err(failure(&self.up, resp, Object::Blob).await);
        }
        let body = incoming(resp.into_body());
        match status {
            StatusCode::OK => Ok(Opened {
                body: skip(body, from),
                size: len,
            }),
            StatusCode::PARTIAL_CONTENT if from > 0 => Ok(Opened {
                body,
                size: len.map(|n| n + from),
            }),
            _ => Err(RegistryError::Shared(format!(
                "upstream {} answered a whole blob to a request for bytes {from}- of {}",
                self.up.name, self.d
            ))),
        }
    }

    /// Open the blob at `from` from the first source that has it: the
    /// bucket, the lease holder, else (taking the lease) the upstream.
    /// Waits while a dead holder's lease runs out.
    async fn reopen(&self, from: u64, dead: Option<&str>) -> Result<Opened, RegistryError> {
        // A holder that keeps its lease but does not serve the blob (it
        // serves it uncached, or cannot be reached from here) is waited for
        // one lease time; then this replica downloads on its own.
        let deadline = Instant::now() + self.lease_ttl + Duration::from_secs(2);
        let mut dead = dead.map(str::to_string);
        loop {
            if let Some(o) = self.open_bucket(from).await {
                return Ok(o);
            }
            let lease = match &self.shared.leases {
                Some(l) => l.take(&self.d).await,
                None => Lease::Unavailable,
            };
            match lease {
                Lease::Held(addr) if Some(&addr) != dead.as_ref() => {
                    if let Some(o) = self.open_peer(&addr, from).await {
                        return Ok(o);
                    }
                    dead = Some(addr);
                }
                Lease::Held(_) if Instant::now() < deadline => {}
                Lease::Won(guard) => return self.upstream_with_copy(from, Some(guard)).await,
                Lease::Held(_) | Lease::Unavailable => {
                    return self.upstream_with_copy(from, None).await
                }
            }
            tokio::time::sleep(RETRY_EVERY).await;
        }
    }

    /// The upstream from `from`, and a copy of this replica's download into
    /// the bucket (the lease, if held, released when the copy is done).
    async fn upstream_with_copy(
        &self,
        from: u64,
        guard: Option<crate::shared::LeaseGuard>,
    ) -> Result<Opened, RegistryError> {
        // The lease may have come free because the blob was just stored:
        // look once more before downloading it again.
        if guard.is_some() {
            if let Some(o) = self.open_bucket(from).await {
                return Ok(o);
            }
        }
        let o = self.open_upstream(from).await?;
        self.shared
            .count_source(if from > 0 { "resumed" } else { "upstream" });
        let shared = self.shared.clone();
        let (key, rx) = (blob_key(&self.d), self.progress.clone());
        tokio::spawn(async move {
            upload::upload_flight(shared, key, rx).await;
            drop(guard);
        });
        Ok(o)
    }
}

/// `body` without its first `n` bytes.
fn skip(
    body: BoxStream<'static, Result<Bytes, io::Error>>,
    n: u64,
) -> BoxStream<'static, Result<Bytes, io::Error>> {
    if n == 0 {
        return body;
    }
    futures_util::stream::unfold((body, n), |(mut body, mut left)| async move {
        loop {
            let mut b = match body.next().await? {
                Ok(b) => b,
                Err(e) => return Some((Err(e), (body, 0))),
            };
            if left == 0 {
                return Some((Ok(b), (body, 0)));
            }
            let cut = left.min(b.len() as u64) as usize;
            left -= cut as u64;
            let rest = b.split_off(cut);
            if !rest.is_empty() {
                return Some((Ok(rest), (body, left)));
            }
        }
    })
    .boxed()
}

/// A body that continues from the next source when one breaks off (or
/// ends short of `size`), at most [`MAX_RESUMES`] times.
fn resuming(first: Opened, r: Resumer, mut source: Option<String>) -> (SourceBody, Option<u64>) {
    let size = first.size;
    struct St {
        body: BoxStream<'static, Result<Bytes, io::Error>>,
        at: u64,
        resumes: usize,
        r: Resumer,
        source: Option<String>,
        done: bool,
    }
    let st = St {
        body: first.body,
        at: 0,
        resumes: 0,
        r,
        source: source.take(),
        done: false,
    };
    let stream = futures_util::stream::unfold(st, move |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            let next = tokio::time::timeout(st.r.idle, st.body.next()).await;
            let broke = match next {
                Err(_) => format!(
                    "the source sent nothing for {}",
                    humantime::format_duration(st.r.idle)
                ),
                Ok(next) => match next {
                    Some(Ok(b)) => {
                        st.at += b.len() as u64;
                        return Some((Ok(Frame::data(b)), st));
                    }
                    None if size.is_none_or(|s| st.at >= s) => return None,
                    None => format!(
                        "the source ended after {} of {} bytes",
                        st.at,
                        size.unwrap_or(0)
                    ),
                    Some(Err(e)) => e.to_string(),
                },
            };
            if st.resumes >= MAX_RESUMES {
                st.done = true;
                return Some((Err(io::Error::other(broke)), st));
            }
            st.resumes += 1;
            tracing::warn!(digest = %st.r.d, at = st.at, "a blob source broke off ({broke}); continuing from another");
            match st.r.reopen(st.at, st.source.as_deref()).await {
                Ok(o) => {
                    st.body = o.body;
                    st.source = None;
                }
                Err(e) => {
                    st.done = true;
                    return Some((Err(io::Error::other(e.to_string())), st));
                }
            }
        }
    });
    (StreamBody::new(stream.boxed()), size)
}

impl Registry {
    /// The shared state, when replicas share it.
    pub fn shared(&self) -> Option<&Arc<Shared>> {
        self.shared.as_ref()
    }

    /// The first source of a cold blob and the body to download from it.
    pub(super) async fn shared_source(
        &self,
        shared: &Arc<Shared>,
        up: &Arc<Upstream>,
        path: &RepoName,
        d: &Digest,
        progress: watch::Receiver<FetchState>,
    ) -> Result<(SourceBody, Option<u64>), RegistryError> {
        let r = Resumer {
            shared: shared.clone(),
            up: up.clone(),
            path: path.clone(),
            d: d.clone(),
            progress,
            lease_ttl: self.lease_ttl,
            idle: up.idle_timeout(),
        };
        if let Some(o) = r.open_bucket(0).await {
            return Ok(resuming(o, r, None));
        }
        let lease = match &shared.leases {
            Some(l) => l.take(d).await,
            None => Lease::Unavailable,
        };
        let (first, source) = match lease {
            Lease::Held(addr) => match r.open_peer(&addr, 0).await {
                Some(o) => (o, Some(addr)),
                None => (r.reopen(0, Some(&addr)).await?, None),
            },
            Lease::Won(guard) => (r.upstream_with_copy(0, Some(guard)).await?, None),
            Lease::Unavailable => (r.upstream_with_copy(0, None).await?, None),
        };
        Ok(resuming(first, r, source))
    }
}
