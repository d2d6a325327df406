//! Single-flight blob downloads. The first cold request for a digest starts
//! one upstream download; it runs detached from any client, writes to a temp
//! file while hashing, and publishes its progress on a watch channel. Every
//! client (the first one included) streams from that file as bytes land, so
//! followers get bytes as they arrive, not after the download ends.
//!
//! The client that started the download (the leader) is fed the frames
//! straight from memory as they are hashed, so a lone client costs no disk
//! read; if it falls behind it is detached and continues from the file.
//!
//! Invariants:
//! - the final bytes of a body are released only after the digest verified
//!   (the leader's last frame is held back; file readers stop one byte short),
//!   so a client never receives a complete body of wrong bytes: on a mismatch
//!   its response is aborted;
//! - the blob is committed (fsync, rename) after it verified; clients do not
//!   wait for the fsync;
//! - at most one download per digest is in flight;
//! - memory per download and per reader is bounded by [`CHUNK`], whatever the
//!   blob size;
//! - a blob that does not fit on the cache's disk (announced too large for
//!   the free space, or a write failing mid-body) is still served to the
//!   leader, verified, from memory, and not cached ("pass-through"); other
//!   clients of that download get an error telling them to retry.

use super::store::BlobStore;
use crate::metrics::Metrics;
use crate::oci::{Digest, Sha256Hasher};
use bytes::Bytes;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use futures_util::Stream;
use http_body_util::BodyExt;
use std::fs::File;
use std::future::Future;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Bytes per disk read by a file reader, and the granularity at which
/// followers see progress.
pub const CHUNK: usize = 256 * 1024;

/// Bytes gathered before one blocking disk write.
const WRITE_BATCH: usize = CHUNK;

/// A slow upstream's bytes are written (and shown to followers) after at
/// most this long, even when less than a batch arrived.
const FLUSH_AFTER: Duration = Duration::from_millis(20);

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
    /// All bytes are in `file` and verified (the commit to the store may
    /// still be under way).
    Done { size: u64, file: Arc<File> },
    /// Served to the leader only, from memory, not cached (the disk is too
    /// full); other clients retry.
    PassThrough { size: Option<u64> },
    /// Failed; nothing was cached.
    Failed(FetchError),
}

/// Why a shared download gave no blob. Nothing here is a client answer:
/// `crate::error` maps it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// Occurs when the request for the blob failed before any byte came;
    /// carries the caller's own error (e.g. the upstream's answer).
    #[error("{0}")]
    Start(Arc<dyn std::error::Error + Send + Sync>),
    /// Occurs when the download fails part way: stalled, broken off, wrong
    /// bytes or length.
    #[error("{0}")]
    Download(String),
    /// Occurs when the cache cannot be written.
    #[error("modelgate cannot use its cache: {0}")]
    Cache(String),
    /// Occurs when the blob does not fit in the cache and cannot be served
    /// uncached to this request (a range, or another client's download).
    #[error("{0}")]
    NoRoom(String),
    /// Occurs when the download ended without a result.
    #[error("the upstream download ended unexpectedly")]
    Aborted,
}

/// How a request takes part in a download.
pub enum Joined {
    /// It started the download: the bytes come from `feed` (memory) when it
    /// asked for one, else from the file, like a follower's.
    Leader(Option<Feed>, watch::Receiver<FetchState>),
    /// Another request started it: the bytes come from the file as it lands.
    Follower(watch::Receiver<FetchState>),
}

impl Joined {
    /// The download's progress.
    pub fn progress(&mut self) -> &mut watch::Receiver<FetchState> {
        match self {
            Joined::Leader(_, rx) | Joined::Follower(rx) => rx,
        }
    }
}

/// Whether the leader of a new download is fed from memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedMode {
    /// Stream the body as it is hashed (a whole-body request).
    Memory,
    /// Read the verified file only (a range request).
    FileOnly,
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

    /// Join the download of `d`, or start one by running `start` detached
    /// (it gets the progress sender and, with [`FeedMode::Memory`], the
    /// leader's feed to fill).
    pub fn join_or_start<F, Fut>(self: &Arc<Self>, d: &Digest, mode: FeedMode, start: F) -> Joined
    where
        F: FnOnce(watch::Sender<FetchState>, Option<Leader>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        match self.map.entry(d.clone()) {
            Entry::Occupied(e) => Joined::Follower(e.get().clone()),
            Entry::Vacant(v) => {
                let (tx, rx) = watch::channel(FetchState::Connecting);
                v.insert(rx.clone());
                let (leader, feed) = match mode {
                    FeedMode::Memory => {
                        let (l, f) = Leader::channel();
                        (Some(l), Some(f))
                    }
                    FeedMode::FileOnly => (None, None),
                };
                let fut = start(tx, leader);
                let me = self.clone();
                let d = d.clone();
                tokio::spawn(async move {
                    fut.await;
                    me.map.remove(&d);
                });
                Joined::Leader(feed, rx)
            }
        }
    }

    /// The progress of the download of `d`, if one runs.
    pub fn get(&self, d: &Digest) -> Option<watch::Receiver<FetchState>> {
        self.map.get(d).map(|r| r.clone())
    }

    /// Downloads in flight now.
    pub fn in_flight(&self) -> usize {
        self.map.len()
    }
}

/// Wait until the download has response headers (or failed).
pub async fn wait_started(rx: &mut watch::Receiver<FetchState>) -> Result<(), FetchError> {
    loop {
        match &*rx.borrow_and_update() {
            FetchState::Connecting => {}
            FetchState::Failed(e) => return Err(e.clone()),
            _ => return Ok(()),
        }
        if rx.changed().await.is_err() {
            return Err(FetchError::Aborted);
        }
    }
}

/// Wait until the download is verified and committed.
pub async fn wait_done(rx: &mut watch::Receiver<FetchState>) -> Result<(), FetchError> {
    loop {
        match &*rx.borrow_and_update() {
            FetchState::Done { .. } => return Ok(()),
            FetchState::Failed(e) => return Err(e.clone()),
            FetchState::PassThrough { .. } => return Err(passing_through()),
            _ => {}
        }
        if rx.changed().await.is_err() {
            return Err(FetchError::Aborted);
        }
    }
}

fn passing_through() -> FetchError {
    FetchError::NoRoom(
        "the blob does not fit in modelgate's cache and is being served uncached to another client; retry".into(),
    )
}

/// One upstream download: hash while writing, verify, commit.
pub struct Download {
    pub store: Arc<BlobStore>,
    pub metrics: Arc<Metrics>,
    pub digest: Digest,
    pub upstream: String,
    pub idle_timeout: Duration,
    /// Disk space the cache must leave free.
    pub min_free: u64,
}

enum PumpError {
    Upstream(String),
    Io(io::Error),
}

impl Download {
    /// Drive the download to the end, publishing progress on `tx` and
    /// feeding `leader` (if any) directly.
    pub async fn run<B>(
        self,
        tx: watch::Sender<FetchState>,
        size: Option<u64>,
        body: B,
        leader: Option<Leader>,
    ) where
        B: hyper::body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let free = self.store.available_bytes();
        let fits = match (size, free) {
            (Some(n), Some(free)) => n.saturating_add(self.min_free) <= free,
            _ => true,
        };
        if !fits {
            let why = format!(
                "blob {} of {} bytes does not fit in the cache ({} bytes free, {} kept free)",
                self.digest,
                size.unwrap_or(0),
                free.unwrap_or(0),
                self.min_free
            );
            crate::metrics::Metrics::reason(&self.metrics.cache_write_failures, "no_space");
            if leader.is_none() {
                tracing::warn!("{why}; a range request cannot be served uncached");
                tx.send_replace(FetchState::Failed(FetchError::NoRoom(format!(
                    "{why}; fetch the whole blob (without Range) to have it served uncached"
                ))));
                return;
            }
            tracing::warn!("{why}; serving it uncached");
        }
        let (path, file) = match self.store.temp_file() {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "cannot create a temp file in the cache");
                tx.send_replace(FetchState::Failed(FetchError::Cache(e.to_string())));
                return;
            }
        };
        let reader = match file.try_clone() {
            Ok(f) => Arc::new(f),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                tx.send_replace(FetchState::Failed(FetchError::Cache(e.to_string())));
                return;
            }
        };
        tx.send_replace(match fits {
            true => FetchState::Streaming {
                size,
                written: 0,
                file: reader.clone(),
            },
            false => FetchState::PassThrough { size },
        });
        let mut leader = leader;
        let outcome = self.pump(&tx, size, body, file, &mut leader, !fits).await;
        let failure = match outcome {
            Ok((None, hasher, held)) => {
                // Pass-through: verified from memory, nothing to commit.
                let _ = std::fs::remove_file(&path);
                match self.verdict(hasher, size) {
                    Ok(_) => {
                        self.metrics.cache_passthrough.inc();
                        if let (Some(l), Some(last)) = (leader.take(), held) {
                            let _ = l.tx.send(LeaderMsg::Data(last)).await;
                            let _ = l.tx.send(LeaderMsg::End).await;
                        }
                        return;
                    }
                    Err(m) => Some(m),
                }
            }
            Ok((Some(file), hasher, held)) => match self.verdict(hasher, size) {
                Err(m) => Some(m),
                Ok(n) => {
                    // Verified: release the held-back bytes, then commit.
                    tx.send_replace(FetchState::Done {
                        size: n,
                        file: reader,
                    });
                    if let (Some(l), Some(last)) = (leader.take(), held) {
                        let _ = l.tx.send(LeaderMsg::Data(last)).await;
                        let _ = l.tx.send(LeaderMsg::End).await;
                    }
                    self.commit(file, path, n).await;
                    return;
                }
            },
            Err(PumpError::Upstream(m)) => {
                tracing::warn!(upstream = %self.upstream, digest = %self.digest, "{m}; nothing cached");
                Some(m)
            }
            Err(PumpError::Io(e)) => {
                crate::metrics::Metrics::reason(&self.metrics.cache_write_failures, "io");
                tracing::error!(digest = %self.digest, error = %e, "cannot write the cache");
                Some(format!("modelgate cannot write its cache: {e}"))
            }
        };
        let _ = std::fs::remove_file(&path);
        let msg = failure.unwrap_or_default();
        if let Some(l) = leader.take() {
            let _ = l.tx.send(LeaderMsg::Error(msg.clone())).await;
        }
        tx.send_replace(FetchState::Failed(FetchError::Download(msg)));
    }

    /// Hash each frame as it arrives (inline: ~10 µs per 16 KiB) while a
    /// blocking job writes earlier bytes, so hashing and disk writes overlap.
    /// Bytes are written in batches of [`WRITE_BATCH`], or after
    /// [`FLUSH_AFTER`] when the upstream is slow, and followers see them as
    /// soon as each write finishes.
    async fn pump<B>(
        &self,
        tx: &watch::Sender<FetchState>,
        size: Option<u64>,
        mut body: B,
        file: File,
        leader: &mut Option<Leader>,
        pass_through: bool,
    ) -> Result<(Option<File>, Sha256Hasher, Option<Bytes>), PumpError>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let mut w = Writer {
            idle: Some(file),
            job: None,
            pending: Vec::new(),
            pending_len: 0,
            written: 0,
            disabled: pass_through,
        };
        let mut hasher = Sha256Hasher::new();
        let mut held: Option<Bytes> = None;
        let mut last_frame = tokio::time::Instant::now();
        loop {
            let can_flush = !w.disabled && w.pending_len > 0 && w.job.is_none();
            let can_read = w.pending_len < 4 * WRITE_BATCH;
            tokio::select! {
                biased;
                done = async { (&mut w.job.as_mut().expect("guarded by the branch condition").0).await }, if w.job.is_some() => {
                    if let Err(e) = w.finish(done) {
                        self.write_failed(e, tx, size, leader, &mut w)?;
                        continue;
                    }
                    publish(tx, w.written);
                    if w.pending_len >= WRITE_BATCH {
                        w.start();
                    }
                }
                _ = tokio::time::sleep(FLUSH_AFTER), if can_flush => w.start(),
                frame = tokio::time::timeout_at(last_frame + self.idle_timeout, body.frame()), if can_read => {
                    let data = match frame {
                        Err(_) => {
                            return Err(PumpError::Upstream(format!(
                                "upstream {} stalled: nothing received for {} after {} bytes of {}",
                                self.upstream,
                                humantime::format_duration(self.idle_timeout),
                                hasher.len(),
                                self.digest
                            )))
                        }
                        Ok(None) => break,
                        Ok(Some(Err(e))) => {
                            return Err(PumpError::Upstream(format!(
                                "upstream {} connection failed after {} bytes of {}: {e}",
                                self.upstream,
                                hasher.len(),
                                self.digest
                            )))
                        }
                        Ok(Some(Ok(f))) => match f.into_data() {
                            Ok(d) => d,
                            Err(_) => continue, // trailers
                        },
                    };
                    last_frame = tokio::time::Instant::now();
                    hasher.update(&data);
                    if size.is_some_and(|s| hasher.len() > s) {
                        return Err(PumpError::Upstream(format!(
                            "upstream {} sent more bytes than the {} it announced for {}",
                            self.upstream,
                            size.unwrap_or(0),
                            self.digest
                        )));
                    }
                    if let Some(l) = leader.as_ref() {
                        // Hand the previous frame over, keep this one back.
                        // Uncached, the leader is the only way out: wait for it.
                        if let Some(prev) = held.replace(data.clone()) {
                            if !l.feed(prev, w.disabled).await {
                                *leader = None;
                            }
                        }
                    }
                    if w.disabled {
                        if leader.is_none() {
                            return Err(PumpError::Upstream(format!(
                                "the client of uncached blob {} went away",
                                self.digest
                            )));
                        }
                        continue;
                    }
                    w.pending_len += data.len();
                    w.pending.push(data);
                    if w.pending_len >= WRITE_BATCH && w.job.is_none() {
                        w.start();
                    }
                }
            }
        }
        // The body ended: write what is left.
        for _ in 0..2 {
            if w.disabled {
                break;
            }
            if let Some((j, _)) = w.job.as_mut() {
                let done = j.await;
                if let Err(e) = w.finish(done) {
                    self.write_failed(e, tx, size, leader, &mut w)?;
                    break;
                }
                publish(tx, w.written);
            }
            if w.pending_len > 0 {
                w.start();
            }
        }
        if w.disabled {
            return Ok((None, hasher, held));
        }
        let file = w
            .idle
            .expect("invariant: every write job returned the file");
        Ok((Some(file), hasher, held))
    }

    /// A cache write failed: with a leader to feed, go on uncached (the
    /// disk is full, or failing); without one, give up.
    fn write_failed(
        &self,
        e: PumpError,
        tx: &watch::Sender<FetchState>,
        size: Option<u64>,
        leader: &Option<Leader>,
        w: &mut Writer,
    ) -> Result<(), PumpError> {
        let PumpError::Io(io) = e else { return Err(e) };
        let reason = match io.raw_os_error() {
            Some(28) => "no_space", // ENOSPC
            _ => "io",
        };
        crate::metrics::Metrics::reason(&self.metrics.cache_write_failures, reason);
        if leader.is_none() {
            return Err(PumpError::Io(io));
        }
        tracing::warn!(digest = %self.digest, error = %io, "cannot write the cache; serving the blob uncached");
        w.disabled = true;
        w.pending.clear();
        w.pending_len = 0;
        tx.send_replace(FetchState::PassThrough { size });
        Ok(())
    }

    /// fsync and move a verified temp file into the store.
    async fn commit(&self, file: File, path: std::path::PathBuf, n: u64) {
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
                self.metrics
                    .cache_bytes
                    .set(self.store.total_bytes() as i64);
            }
            Err(e) => {
                // Readers keep their open handle and finish; the next
                // request downloads again.
                let reason = match e.raw_os_error() {
                    Some(28) => "no_space",
                    _ => "io",
                };
                crate::metrics::Metrics::reason(&self.metrics.cache_write_failures, reason);
                tracing::error!(digest = %self.digest, error = %e, "cannot commit a verified blob to the cache");
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    /// Whether the bytes hashed are the blob asked for.
    fn verdict(&self, hasher: Sha256Hasher, size: Option<u64>) -> Result<u64, String> {
        let n = hasher.len();
        let actual = hasher.finish();
        if actual != self.digest {
            self.metrics.digest_mismatch(&self.upstream);
            tracing::error!(
                upstream = %self.upstream, digest = %self.digest, actual = %actual, bytes = n,
                "digest mismatch: upstream sent bytes that do not match the requested digest; response aborted, nothing cached"
            );
            return Err(format!(
                "upstream {} sent bytes for {} that hash to {actual}",
                self.upstream, self.digest
            ));
        }
        if size.is_some_and(|s| s != n) {
            return Err(format!(
                "upstream {} sent {n} bytes for {}, expected {}",
                self.upstream,
                self.digest,
                size.unwrap_or(0)
            ));
        }
        Ok(n)
    }
}

type WriteJob = tokio::task::JoinHandle<io::Result<File>>;

/// The file side of a download: at most one blocking write at a time.
struct Writer {
    idle: Option<File>,
    job: Option<(WriteJob, u64)>,
    pending: Vec<Bytes>,
    pending_len: usize,
    written: u64,
    /// Nothing more is written (the blob goes uncached).
    disabled: bool,
}

impl Writer {
    fn start(&mut self) {
        let chunks = std::mem::take(&mut self.pending);
        let n = std::mem::take(&mut self.pending_len) as u64;
        let mut f = self
            .idle
            .take()
            .expect("invariant: no write job runs, so the file is idle");
        self.job = Some((
            tokio::task::spawn_blocking(move || {
                for c in &chunks {
                    f.write_all(c)?;
                }
                Ok(f)
            }),
            n,
        ));
    }

    fn finish(
        &mut self,
        done: Result<io::Result<File>, tokio::task::JoinError>,
    ) -> Result<(), PumpError> {
        let (_, n) = self
            .job
            .take()
            .expect("invariant: finish follows a running job");
        self.idle = Some(
            done.map_err(|e| PumpError::Io(io::Error::other(e)))?
                .map_err(PumpError::Io)?,
        );
        self.written += n;
        Ok(())
    }
}

/// What the leader's response receives straight from the download.
pub enum LeaderMsg {
    Data(Bytes),
    /// The body verified and is complete.
    End,
    /// The download failed: abort the response.
    Error(String),
}

/// The download's side of the leader's channel.
pub struct Leader {
    tx: tokio::sync::mpsc::Sender<LeaderMsg>,
}

/// The leader's side of its feed: what [`stream_leader`] reads.
pub type Feed = tokio::sync::mpsc::Receiver<LeaderMsg>;

/// How long the download waits for a leader that does not keep up before
/// detaching it (it then reads from the file like any follower).
const LEADER_PATIENCE: Duration = Duration::from_millis(200);

impl Leader {
    /// A leader channel; the receiver goes to [`stream_leader`].
    pub fn channel() -> (Leader, Feed) {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        (Leader { tx }, rx)
    }

    async fn feed(&self, b: Bytes, patient: bool) -> bool {
        if patient {
            return self.tx.send(LeaderMsg::Data(b)).await.is_ok();
        }
        // Most frames fit at once; only a full channel arms a timer.
        use tokio::sync::mpsc::error::TrySendError;
        let msg = match self.tx.try_send(LeaderMsg::Data(b)) {
            Ok(()) => return true,
            Err(TrySendError::Closed(_)) => return false,
            Err(TrySendError::Full(m)) => m,
        };
        matches!(
            tokio::time::timeout(LEADER_PATIENCE, self.tx.send(msg)).await,
            Ok(Ok(()))
        )
    }
}

/// The leader's body: frames from memory while attached, then (if it was
/// detached) the rest from the file.
pub fn stream_leader(
    rx: Feed,
    state: watch::Receiver<FetchState>,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    enum St {
        Memory(
            tokio::sync::mpsc::Receiver<LeaderMsg>,
            watch::Receiver<FetchState>,
            u64,
        ),
        File(watch::Receiver<FetchState>, u64),
    }
    futures_util::stream::unfold(Some(St::Memory(rx, state, 0)), move |st| {
        let metrics = metrics.clone();
        async move {
            let mut st = st?;
            loop {
                match st {
                    St::Memory(mut rx, state, pos) => match rx.recv().await {
                        Some(LeaderMsg::Data(b)) => {
                            metrics.served("upstream", b.len() as u64);
                            let n = b.len() as u64;
                            return Some((Ok(b), Some(St::Memory(rx, state, pos + n))));
                        }
                        Some(LeaderMsg::End) => return None,
                        Some(LeaderMsg::Error(e)) => return Some((Err(io::Error::other(e)), None)),
                        None => st = St::File(state, pos),
                    },
                    St::File(mut state, pos) => {
                        return match next_from_flight(&mut state, pos, &metrics).await? {
                            Ok(b) => {
                                let n = b.len() as u64;
                                Some((Ok(b), Some(St::File(state, pos + n))))
                            }
                            Err(e) => Some((Err(e), None)),
                        };
                    }
                }
            }
        }
    })
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

/// The next bytes at `pos` of a download in flight, as they land; None at
/// the end.
async fn next_from_flight(
    rx: &mut watch::Receiver<FetchState>,
    pos: u64,
    metrics: &Metrics,
) -> Option<io::Result<Bytes>> {
    loop {
        let snapshot = rx.borrow_and_update().clone();
        let (file, avail, total) = match snapshot {
            FetchState::Connecting => (None, 0, None),
            FetchState::Streaming {
                size,
                written,
                file,
            } => {
                // Hold back the last byte until the digest verified.
                let avail = match size {
                    Some(s) => written.min(s.saturating_sub(1)),
                    None => written,
                };
                (Some(file), avail, None)
            }
            FetchState::Done { size, file } => (Some(file), size, Some(size)),
            FetchState::Failed(e) => return Some(Err(io::Error::other(e.to_string()))),
            FetchState::PassThrough { .. } => {
                return Some(Err(io::Error::other(passing_through().to_string())))
            }
        };
        if let Some(file) = file {
            if pos < avail {
                let n = (avail - pos).min(CHUNK as u64 * 4) as usize;
                let r = read_at(file, pos, n).await;
                if r.is_ok() {
                    metrics.served("upstream", n as u64);
                }
                return Some(r);
            }
            if total.is_some_and(|t| pos >= t) {
                return None;
            }
        }
        if rx.changed().await.is_err() {
            return Some(Err(io::Error::other(FetchError::Aborted.to_string())));
        }
    }
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
            match next_from_flight(&mut rx, pos, &metrics).await? {
                Ok(b) => {
                    let n = b.len() as u64;
                    Some((Ok(b), Some((rx, pos + n))))
                }
                Err(e) => Some((Err(e), None)),
            }
        }
    })
}
