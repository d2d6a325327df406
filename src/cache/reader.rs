//! Readers of a download: the leader's body (from memory while it keeps
//! up, then from the file), followers' bodies (from the file as it lands),
//! and committed files. File readers stop one byte short of a blob until it
//! verified, so no client gets a complete body of wrong bytes.

use super::download::{Feed, LeaderMsg};
use super::progress::{passing_through, FetchError, FetchState, CHUNK};
use crate::metrics::Metrics;
use bytes::Bytes;
use futures_util::Stream;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use tokio::sync::watch;

/// The leader's body: frames from memory while attached, then (if it was
/// detached) the rest from the file.
pub fn stream_leader(
    rx: Feed,
    state: watch::Receiver<FetchState>,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    enum St {
        Memory(Feed, watch::Receiver<FetchState>, u64),
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
                        return match next_from_flight(&mut state, pos, Some(&metrics)).await? {
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
/// (Counted as served when `metrics` is given: a client reads it.)
pub fn stream_file(
    file: Arc<File>,
    start: u64,
    end: u64,
    metrics: Option<Arc<Metrics>>,
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
                    if let Some(m) = &metrics {
                        m.served("cache", n as u64);
                    }
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
    metrics: Option<&Metrics>,
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
                if let (Ok(_), Some(m)) = (&r, metrics) {
                    m.served("upstream", n as u64);
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
    stream_flight_at(rx, 0, Some(metrics))
}

/// Stream a download in flight from byte `start`, as bytes land (counted
/// as served when `metrics` is given: a client reads it).
pub fn stream_flight_at(
    rx: watch::Receiver<FetchState>,
    start: u64,
    metrics: Option<Arc<Metrics>>,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    futures_util::stream::unfold(Some((rx, start)), move |st| {
        let metrics = metrics.clone();
        async move {
            let (mut rx, pos) = st?;
            match next_from_flight(&mut rx, pos, metrics.as_deref()).await? {
                Ok(b) => {
                    let n = b.len() as u64;
                    Some((Ok(b), Some((rx, pos + n))))
                }
                Err(e) => Some((Err(e), None)),
            }
        }
    })
}
