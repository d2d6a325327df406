//! One upstream download: hash each frame as it arrives, feed the leader
//! from memory, write the file in batches on the blocking pool, verify,
//! commit. See [`super::flight`] for the invariants it keeps.

use super::progress::{FetchError, FetchState, CHUNK};
use super::store::BlobStore;
use crate::metrics::Metrics;
use crate::oci::{Digest, Sha256Hasher};
use bytes::Bytes;
use http_body_util::BodyExt;
use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Bytes gathered before one blocking disk write.
const WRITE_BATCH: usize = CHUNK;

/// A slow upstream's bytes are written (and shown to followers) after at
/// most this long, even when less than a batch arrived.
const FLUSH_AFTER: Duration = Duration::from_millis(20);

/// How long the download waits for a leader that does not keep up before
/// detaching it (it then reads from the file like any follower).
const LEADER_PATIENCE: Duration = Duration::from_millis(200);

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

/// The leader's side of its feed: what [`super::reader::stream_leader`] reads.
pub type Feed = tokio::sync::mpsc::Receiver<LeaderMsg>;

/// How long the download waits for the leader to take a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Patience {
    /// Detach a leader that falls behind (it continues from the file).
    Bounded,
    /// Uncached, the leader is the only way out: wait for it.
    Unbounded,
}

impl Leader {
    /// A leader channel; the receiver goes to [`super::reader::stream_leader`].
    pub fn channel() -> (Leader, Feed) {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        (Leader { tx }, rx)
    }

    async fn feed(&self, b: Bytes, patience: Patience) -> bool {
        if patience == Patience::Unbounded {
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

    /// The verified last frame, then the end.
    async fn finish(self, last: Option<Bytes>) {
        if let Some(last) = last {
            let _ = self.tx.send(LeaderMsg::Data(last)).await;
        }
        let _ = self.tx.send(LeaderMsg::End).await;
    }
}

/// Where the bytes go besides the clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caching {
    /// Into a temp file, committed once verified.
    ToFile,
    /// Nowhere: the blob does not fit; the leader is fed from memory only.
    PassThrough,
}

enum PumpError {
    Upstream(String),
    Io(io::Error),
}

type WriteJob = tokio::task::JoinHandle<io::Result<File>>;

/// The file side of a download: at most one blocking write at a time.
struct Writer {
    idle: Option<File>,
    job: Option<(WriteJob, u64)>,
    pending: Vec<Bytes>,
    pending_len: usize,
    written: u64,
    caching: Caching,
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

    fn push(&mut self, data: Bytes) {
        self.pending_len += data.len();
        self.pending.push(data);
        if self.pending_len >= WRITE_BATCH && self.job.is_none() {
            self.start();
        }
    }
}

fn publish(tx: &watch::Sender<FetchState>, n: u64) {
    tx.send_modify(|st| {
        if let FetchState::Streaming { written, .. } = st {
            *written = n;
        }
    });
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

/// A download whose bytes verified.
struct Verified {
    /// The written file (None when served uncached).
    file: Option<File>,
    n: u64,
    leader: Option<Leader>,
    held: Option<Bytes>,
}

/// The state of one pump: what was hashed, what the leader still waits for.
struct Pump<'a> {
    dl: &'a Download,
    tx: &'a watch::Sender<FetchState>,
    size: Option<u64>,
    w: Writer,
    hasher: Sha256Hasher,
    /// The last frame, held back until the digest verified.
    held: Option<Bytes>,
    leader: Option<Leader>,
}

impl Download {
    /// Whether the announced size fits on the cache's disk; refuses a
    /// download that cannot be served uncached either (no leader).
    fn room_for(
        &self,
        size: Option<u64>,
        leader: bool,
        tx: &watch::Sender<FetchState>,
    ) -> Option<Caching> {
        let free = self.store.available_bytes();
        let fits = match (size, free) {
            (Some(n), Some(free)) => n.saturating_add(self.min_free) <= free,
            _ => true,
        };
        if fits {
            return Some(Caching::ToFile);
        }
        let why = format!(
            "blob {} of {} bytes does not fit in the cache ({} bytes free, {} kept free)",
            self.digest,
            size.unwrap_or(0),
            free.unwrap_or(0),
            self.min_free
        );
        Metrics::reason(&self.metrics.cache_write_failures, "no_space");
        if !leader {
            tracing::warn!("{why}; a range request cannot be served uncached");
            tx.send_replace(FetchState::Failed(FetchError::NoRoom(format!(
                "{why}; fetch the whole blob (without Range) to have it served uncached"
            ))));
            return None;
        }
        tracing::warn!("{why}; serving it uncached");
        Some(Caching::PassThrough)
    }

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
        let Some(caching) = self.room_for(size, leader.is_some(), &tx) else {
            return;
        };
        let opened = self.store.temp_file().and_then(|(path, file)| {
            let reader = file.try_clone().inspect_err(|_| {
                let _ = std::fs::remove_file(&path);
            })?;
            Ok((path, file, Arc::new(reader)))
        });
        let (path, file, reader) = match opened {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "cannot create a temp file in the cache");
                tx.send_replace(FetchState::Failed(FetchError::Cache(e.to_string())));
                return;
            }
        };
        tx.send_replace(match caching {
            Caching::ToFile => FetchState::Streaming {
                size,
                written: 0,
                file: reader.clone(),
            },
            Caching::PassThrough => FetchState::PassThrough { size },
        });
        let mut pump = Pump {
            dl: &self,
            tx: &tx,
            size,
            w: Writer {
                idle: Some(file),
                job: None,
                pending: Vec::new(),
                pending_len: 0,
                written: 0,
                caching,
            },
            hasher: Sha256Hasher::new(),
            held: None,
            leader,
        };
        let outcome = pump.run(body).await;
        let leader = pump.leader.take();
        let held = pump.held.take();
        let failure = match outcome {
            Ok(file) => match self.verdict(pump.hasher, size) {
                Err(m) => m,
                Ok(n) => {
                    let verified = Verified {
                        file,
                        n,
                        leader,
                        held,
                    };
                    self.done(&tx, verified, reader, path).await;
                    return;
                }
            },
            Err(PumpError::Upstream(m)) => {
                tracing::warn!(upstream = %self.upstream, digest = %self.digest, "{m}; nothing cached");
                m
            }
            Err(PumpError::Io(e)) => {
                Metrics::reason(&self.metrics.cache_write_failures, "io");
                tracing::error!(digest = %self.digest, error = %e, "cannot write the cache");
                format!("modelgate cannot write its cache: {e}")
            }
        };
        let _ = std::fs::remove_file(&path);
        if let Some(l) = leader {
            let _ = l.tx.send(LeaderMsg::Error(failure.clone())).await;
        }
        tx.send_replace(FetchState::Failed(FetchError::Download(failure)));
    }

    /// Verified: release the held-back bytes, then commit (or, uncached,
    /// just drop the empty temp file).
    async fn done(
        &self,
        tx: &watch::Sender<FetchState>,
        v: Verified,
        reader: Arc<File>,
        path: PathBuf,
    ) {
        let Verified {
            file,
            n,
            leader,
            held,
        } = v;
        let Some(file) = file else {
            let _ = std::fs::remove_file(&path);
            self.metrics.cache_passthrough.inc();
            if let Some(l) = leader {
                l.finish(held).await;
            }
            return;
        };
        tx.send_replace(FetchState::Done {
            size: n,
            file: reader,
        });
        if let Some(l) = leader {
            l.finish(held).await;
        }
        self.commit(file, path, n).await;
    }

    /// fsync and move a verified temp file into the store.
    async fn commit(&self, file: File, path: PathBuf, n: u64) {
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
                Metrics::reason(&self.metrics.cache_write_failures, reason);
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

impl Pump<'_> {
    /// Hash each frame as it arrives (inline: ~10 µs per 16 KiB) while a
    /// blocking job writes earlier bytes, so hashing and disk writes
    /// overlap. Bytes are written in batches of [`WRITE_BATCH`], or after
    /// [`FLUSH_AFTER`] when the upstream is slow, and followers see them as
    /// soon as each write finishes. Returns the file (None when uncached).
    async fn run<B>(&mut self, mut body: B) -> Result<Option<File>, PumpError>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let mut last_frame = tokio::time::Instant::now();
        loop {
            let caching = self.w.caching == Caching::ToFile;
            let can_flush = caching && self.w.pending_len > 0 && self.w.job.is_none();
            let can_read = self.w.pending_len < 4 * WRITE_BATCH;
            let deadline = last_frame + self.dl.idle_timeout;
            tokio::select! {
                biased;
                done = async { (&mut self.w.job.as_mut().expect("guarded by the branch condition").0).await }, if self.w.job.is_some() => {
                    self.written(done)?;
                }
                _ = tokio::time::sleep(FLUSH_AFTER), if can_flush => self.w.start(),
                frame = tokio::time::timeout_at(deadline, body.frame()), if can_read => {
                    let data = match frame {
                        Err(_) => return Err(self.stalled()),
                        Ok(None) => break,
                        Ok(Some(Err(e))) => return Err(self.broke(e)),
                        Ok(Some(Ok(f))) => match f.into_data() {
                            Ok(d) => d,
                            Err(_) => continue, // trailers
                        },
                    };
                    last_frame = tokio::time::Instant::now();
                    self.frame(data).await?;
                }
            }
        }
        self.drain().await
    }

    fn stalled(&self) -> PumpError {
        PumpError::Upstream(format!(
            "upstream {} stalled: nothing received for {} after {} bytes of {}",
            self.dl.upstream,
            humantime::format_duration(self.dl.idle_timeout),
            self.hasher.len(),
            self.dl.digest
        ))
    }

    fn broke(&self, e: impl std::fmt::Display) -> PumpError {
        PumpError::Upstream(format!(
            "upstream {} connection failed after {} bytes of {}: {e}",
            self.dl.upstream,
            self.hasher.len(),
            self.dl.digest
        ))
    }

    /// A write job finished: show followers, start the next batch.
    fn written(
        &mut self,
        done: Result<io::Result<File>, tokio::task::JoinError>,
    ) -> Result<(), PumpError> {
        if let Err(e) = self.w.finish(done) {
            return self.write_failed(e);
        }
        publish(self.tx, self.w.written);
        if self.w.pending_len >= WRITE_BATCH {
            self.w.start();
        }
        Ok(())
    }

    /// One frame from the upstream: hash it, hand the previous one to the
    /// leader (this one is held back), queue it for the file.
    async fn frame(&mut self, data: Bytes) -> Result<(), PumpError> {
        self.hasher.update(&data);
        if self.size.is_some_and(|s| self.hasher.len() > s) {
            return Err(PumpError::Upstream(format!(
                "upstream {} sent more bytes than the {} it announced for {}",
                self.dl.upstream,
                self.size.unwrap_or(0),
                self.dl.digest
            )));
        }
        let patience = match self.w.caching {
            Caching::ToFile => Patience::Bounded,
            Caching::PassThrough => Patience::Unbounded,
        };
        if let Some(l) = self.leader.as_ref() {
            if let Some(prev) = self.held.replace(data.clone()) {
                if !l.feed(prev, patience).await {
                    self.leader = None;
                }
            }
        }
        match self.w.caching {
            Caching::ToFile => self.w.push(data),
            Caching::PassThrough if self.leader.is_none() => {
                return Err(PumpError::Upstream(format!(
                    "the client of uncached blob {} went away",
                    self.dl.digest
                )))
            }
            Caching::PassThrough => {}
        }
        Ok(())
    }

    /// The body ended: write what is left.
    async fn drain(&mut self) -> Result<Option<File>, PumpError> {
        for _ in 0..2 {
            if self.w.caching == Caching::PassThrough {
                break;
            }
            if let Some((j, _)) = self.w.job.as_mut() {
                let done = j.await;
                if let Err(e) = self.w.finish(done) {
                    self.write_failed(e)?;
                    break;
                }
                publish(self.tx, self.w.written);
            }
            if self.w.pending_len > 0 {
                self.w.start();
            }
        }
        Ok(match self.w.caching {
            Caching::PassThrough => None,
            Caching::ToFile => Some(
                self.w
                    .idle
                    .take()
                    .expect("invariant: every write job returned the file"),
            ),
        })
    }

    /// A cache write failed: with a leader to feed, go on uncached (the
    /// disk is full, or failing); without one, give up.
    fn write_failed(&mut self, e: PumpError) -> Result<(), PumpError> {
        let PumpError::Io(io) = e else { return Err(e) };
        let reason = match io.raw_os_error() {
            Some(28) => "no_space", // ENOSPC
            _ => "io",
        };
        Metrics::reason(&self.dl.metrics.cache_write_failures, reason);
        if self.leader.is_none() {
            return Err(PumpError::Io(io));
        }
        tracing::warn!(digest = %self.dl.digest, error = %io, "cannot write the cache; serving the blob uncached");
        self.w.caching = Caching::PassThrough;
        self.w.pending.clear();
        self.w.pending_len = 0;
        self.tx
            .send_replace(FetchState::PassThrough { size: self.size });
        Ok(())
    }
}
