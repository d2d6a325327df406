//! Single-flight blob downloads. The first cold request for a digest starts
//! one upstream download ([`super::download`]); it runs detached from any
//! client, writes to a temp file while hashing, and publishes its progress on
//! a watch channel that readers ([`super::reader`]) follow. Every
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

use super::download::{Feed, Leader};
use super::progress::{passing_through, FetchError, FetchState};
use crate::oci::Digest;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::watch;

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
