//! The progress of one download, as readers see it, and why one failed.

use std::fs::File;
use std::sync::Arc;

/// Bytes per disk read by a file reader, and the granularity at which
/// followers see progress.
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

pub(super) fn passing_through() -> FetchError {
    FetchError::NoRoom(
        "the blob does not fit in modelgate's cache and is being served uncached to another client; retry".into(),
    )
}
