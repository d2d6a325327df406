//! Single-flight blob downloads. The first cold request for a digest starts
//! one upstream download; it runs detached from any client, writes to a temp
//! file while hashing, and publishes its progress on a watch channel. Every
//! client (the first one included) streams from that file as bytes land, so
//! followers get bytes as they arrive, not after the download ends.
//!
//! Invariants:
//! - the final byte of a body of known length is released only after the
//!   digest verified, so a client never receives a complete body of wrong
//!   bytes: on a mismatch its response is aborted;
//! - at most one download per digest is in flight;
//! - memory per download and per reader is bounded by [`CHUNK`], whatever the
//!   blob size.

use super::store::BlobStore;
use crate::metrics::{Metrics, UpstreamLabels};
use crate::oci::{Digest, ErrorCode, OciError, Sha256Hasher};
use bytes::Bytes;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use futures_util::Stream;
use http::StatusCode;
use http_body_util::BodyExt;
use std::fs::File;
use std::future::Future;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Bytes moved per disk write / read and per body frame.
pub const CHUNK: usize = 256 * 1024;

/// Progress of one download.
#[derive(Clone)]
pub enum FetchState {
    /// Waiting for the upstream's response headers.
    Connecting,
    /// Bytes `0..written` are in `file`.
    Streaming {
        size: Option<u64>,
        written: u64,
        file: Arc<File>,
    },
    /// Verified and committed to the store.
    Done { size: u64, file: Arc<File> },
    /// Failed; nothing was cached.
    Failed(OciError),
}

/// Downloads in flight, by digest.
#[derive(Default)]
pub struct Flights {
    map: DashMap<Digest, watch::Receiver<FetchState>>,
}

impl Flights {
    pub fn new() -> Arc<Flights> {
        Arc::new(Flights::default())
    }

    /// Join the download of `d`, or start one by running `start` detached.
    /// Returns the progress channel and whether this call started it.
    pub fn join_or_start<F, Fut>(self: &Arc<Self>, d: &Digest, start: F) -> (watch::Receiver<FetchState>, bool)
    where
        F: FnOnce(watch::Sender<FetchState>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        match self.map.entry(d.clone()) {
            Entry::Occupied(e) => (e.get().clone(), false),
            Entry::Vacant(v) => {
                let (tx, rx) = watch::channel(FetchState::Connecting);
                v.insert(rx.clone());
                let fut = start(tx);
                let me = self.clone();
                let d = d.clone();
                tokio::spawn(async move {
                    fut.await;
                    me.map.remove(&d);
                });
                (rx, true)
            }
        }
    }

    /// Downloads in flight now.
    pub fn in_flight(&self) -> usize {
        self.map.len()
    }
}

/// Wait until the download has response headers (or failed).
pub async fn wait_started(rx: &mut watch::Receiver<FetchState>) -> Result<(), OciError> {
    loop {
        match &*rx.borrow_and_update() {
            FetchState::Connecting => {}
            FetchState::Failed(e) => return Err(e.clone()),
            _ => return Ok(()),
        }
        if rx.changed().await.is_err() {
            return Err(aborted());
        }
    }
}

/// Wait until the download is verified and committed.
pub async fn wait_done(rx: &mut watch::Receiver<FetchState>) -> Result<(), OciError> {
    loop {
        match &*rx.borrow_and_update() {
            FetchState::Done { .. } => return Ok(()),
            FetchState::Failed(e) => return Err(e.clone()),
            _ => {}
        }
        if rx.changed().await.is_err() {
            return Err(aborted());
        }
    }
}

fn aborted() -> OciError {
    OciError::new(
        StatusCode::BAD_GATEWAY,
        ErrorCode::Unknown,
        "the upstream download ended unexpectedly",
    )
}

/// One upstream download: hash while writing, verify, commit.
pub struct Download {
    pub store: Arc<BlobStore>,
    pub metrics: Arc<Metrics>,
    pub digest: Digest,
    pub upstream: String,
    pub idle_timeout: Duration,
}

enum PumpError {
    Upstream(String),
    Io(io::Error),
}

impl Download {
    /// Drive the download to the end, publishing progress on `tx`.
    pub async fn run<B>(self, tx: watch::Sender<FetchState>, size: Option<u64>, body: B)
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let (path, file) = match self.store.temp_file() {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "cannot create a temp file in the cache");
                tx.send_replace(FetchState::Failed(OciError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Unknown,
                    format!("modelgate cannot write its cache: {e}"),
                )));
                return;
            }
        };
        let reader = match file.try_clone() {
            Ok(f) => Arc::new(f),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                tx.send_replace(FetchState::Failed(OciError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Unknown,
                    format!("modelgate cannot read its cache: {e}"),
                )));
                return;
            }
        };
        tx.send_replace(FetchState::Streaming {
            size,
            written: 0,
            file: reader.clone(),
        });
        let outcome = self.pump(&tx, size, body, file).await;
        let failure = match outcome {
            Ok((file, hasher)) => {
                let n = hasher.len();
                let actual = hasher.finish();
                if actual != self.digest {
                    self.metrics
                        .digest_mismatches
                        .get_or_create(&UpstreamLabels {
                            upstream: self.upstream.clone(),
                        })
                        .inc();
                    tracing::error!(
                        upstream = %self.upstream, digest = %self.digest, actual = %actual, bytes = n,
                        "digest mismatch: upstream sent bytes that do not match the requested digest; response aborted, nothing cached"
                    );
                    Some(format!(
                        "upstream {} sent bytes for {} that hash to {actual}",
                        self.upstream, self.digest
                    ))
                } else if size.is_some_and(|s| s != n) {
                    Some(format!(
                        "upstream {} sent {n} bytes for {}, expected {}",
                        self.upstream,
                        self.digest,
                        size.unwrap_or(0)
                    ))
                } else {
                    let store = self.store.clone();
                    let d = self.digest.clone();
                    let p = path.clone();
                    let committed = tokio::task::spawn_blocking(move || {
                        file.sync_all()?;
                        store.commit(&p, &d, n)
                    })
                    .await
                    .map_err(io::Error::other)
                    .and_then(|r| r);
                    match committed {
                        Ok(()) => {
                            self.metrics.cache_bytes.set(self.store.total_bytes() as i64);
                            tx.send_replace(FetchState::Done { size: n, file: reader });
                            return;
                        }
                        Err(e) => Some(format!("modelgate cannot commit {} to its cache: {e}", self.digest)),
                    }
                }
            }
            Err(PumpError::Upstream(m)) => {
                tracing::warn!(upstream = %self.upstream, digest = %self.digest, "{m}; nothing cached");
                Some(m)
            }
            Err(PumpError::Io(e)) => Some(format!("modelgate cannot write its cache: {e}")),
        };
        let _ = std::fs::remove_file(&path);
        let msg = failure.unwrap_or_default();
        tx.send_replace(FetchState::Failed(OciError::new(
            StatusCode::BAD_GATEWAY,
            ErrorCode::BlobUnknown,
            msg,
        )));
    }

    /// Hash each frame as it arrives (inline: ~10 µs per 16 KiB) while a
    /// blocking job writes the previous chunk, so hashing and disk writes
    /// overlap on the two cores instead of adding up.
    async fn pump<B>(
        &self,
        tx: &watch::Sender<FetchState>,
        size: Option<u64>,
        mut body: B,
        file: File,
    ) -> Result<(File, Sha256Hasher), PumpError>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        type Job = tokio::task::JoinHandle<io::Result<File>>;
        let mut idle = Some(file);
        let mut job: Option<(Job, u64)> = None;
        let mut hasher = Sha256Hasher::new();
        let mut written: u64 = 0;
        let mut pending: Vec<Bytes> = Vec::new();
        let mut pending_len = 0usize;
        loop {
            let frame = match tokio::time::timeout(self.idle_timeout, body.frame()).await {
                Err(_) => {
                    return Err(PumpError::Upstream(format!(
                        "upstream {} stalled: nothing received for {} after {} bytes of {}",
                        self.upstream,
                        humantime::format_duration(self.idle_timeout),
                        hasher.len(),
                        self.digest
                    )))
                }
                Ok(None) => None,
                Ok(Some(Err(e))) => {
                    return Err(PumpError::Upstream(format!(
                        "upstream {} connection failed after {} bytes of {}: {e}",
                        self.upstream,
                        hasher.len(),
                        self.digest
                    )))
                }
                Ok(Some(Ok(f))) => Some(f),
            };
            let end = frame.is_none();
            if let Some(Ok(data)) = frame.map(|f| f.into_data()) {
                hasher.update(&data);
                if size.is_some_and(|s| hasher.len() > s) {
                    return Err(PumpError::Upstream(format!(
                        "upstream {} sent more bytes than the {} it announced for {}",
                        self.upstream,
                        size.unwrap_or(0),
                        self.digest
                    )));
                }
                pending_len += data.len();
                pending.push(data);
            }
            if pending_len >= CHUNK || (end && pending_len > 0) {
                if let Some((j, n)) = job.take() {
                    idle = Some(j.await.map_err(|e| PumpError::Io(io::Error::other(e)))?.map_err(PumpError::Io)?);
                    written += n;
                    publish(tx, written);
                }
                let chunks = std::mem::take(&mut pending);
                let n = std::mem::take(&mut pending_len) as u64;
                let mut f = idle.take().expect("invariant: no write job runs, so the file is idle");
                job = Some((
                    tokio::task::spawn_blocking(move || {
                        for c in &chunks {
                            f.write_all(c)?;
                        }
                        Ok(f)
                    }),
                    n,
                ));
            }
            if end {
                break;
            }
        }
        if let Some((j, n)) = job.take() {
            idle = Some(j.await.map_err(|e| PumpError::Io(io::Error::other(e)))?.map_err(PumpError::Io)?);
            written += n;
            publish(tx, written);
        }
        let file = idle.expect("invariant: the last job returned the file");
        Ok((file, hasher))
    }
}

fn publish(tx: &watch::Sender<FetchState>, n: u64) {
    tx.send_modify(|st| {
        if let FetchState::Streaming { written, .. } = st {
            *written = n;
        }
    });
}

/// Read `len` bytes at `pos` off the async threads.
pub async fn read_at(file: Arc<File>, pos: u64, len: usize) -> io::Result<Bytes> {
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, pos)?;
        Ok(Bytes::from(buf))
    })
    .await
    .map_err(io::Error::other)?
}

/// Stream bytes `start..end` of a committed file.
pub fn stream_file(
    file: Arc<File>,
    start: u64,
    end: u64,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    futures_util::stream::unfold(start, move |pos| {
        let file = file.clone();
        let metrics = metrics.clone();
        async move {
            if pos >= end {
                return None;
            }
            let n = (end - pos).min(CHUNK as u64 * 4) as usize;
            match read_at(file, pos, n).await {
                Ok(b) => {
                    metrics.served("cache", n as u64);
                    Some((Ok(b), pos + n as u64))
                }
                Err(e) => Some((Err(e), end)),
            }
        }
    })
}

/// Stream a download in flight from the start, as bytes land. Ends with an
/// error (aborting the client's response) if the download fails.
pub fn stream_flight(
    rx: watch::Receiver<FetchState>,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    futures_util::stream::unfold(Some((rx, 0u64)), move |st| {
        let metrics = metrics.clone();
        async move {
            let (mut rx, pos) = st?;
            loop {
                let snapshot = rx.borrow_and_update().clone();
                let (file, avail, total) = match snapshot {
                    FetchState::Connecting => (None, 0, None),
                    FetchState::Streaming { size, written, file } => {
                        // Hold back the last byte until the digest verified.
                        let avail = match size {
                            Some(s) => written.min(s.saturating_sub(1)),
                            None => written,
                        };
                        (Some(file), avail, None)
                    }
                    FetchState::Done { size, file } => (Some(file), size, Some(size)),
                    FetchState::Failed(e) => return Some((Err(io::Error::other(e.message)), None)),
                };
                if let Some(file) = file {
                    if pos < avail {
                        let n = (avail - pos).min(CHUNK as u64 * 4) as usize;
                        return match read_at(file, pos, n).await {
                            Ok(b) => {
                                metrics.served("upstream", n as u64);
                                Some((Ok(b), Some((rx, pos + n as u64))))
                            }
                            Err(e) => Some((Err(e), None)),
                        };
                    }
                    if total.is_some_and(|t| pos >= t) {
                        return None;
                    }
                }
                if rx.changed().await.is_err() {
                    return Some((Err(io::Error::other(aborted().message)), None));
                }
            }
        }
    })
}
