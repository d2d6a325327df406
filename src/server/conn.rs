//! Client connections: how many, from whom, and for how long.
//!
//! Invariants:
//! - at most `max_connections` connections are served at once; beyond that
//!   new clients wait in the listen backlog (accept stops), they are not
//!   refused, and `/readyz` says the server is saturated;
//! - one client address holds at most `max_connections_per_client` of them;
//!   more are closed as soon as they are accepted;
//! - a connection that sends no request within `first_byte_timeout` of
//!   being accepted, or has no request in progress for `idle_timeout`, is
//!   closed (HTTP/1 and HTTP/2 alike), so idle sockets cannot hold the
//!   server's capacity;
//! - a request is "in progress" until its response body has been sent
//!   (the body carries an [`ActiveRequest`] guard).

use crate::metrics::Metrics;
use dashmap::DashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Connection limits of the client listener.
pub struct ConnLimits {
    permits: Arc<Semaphore>,
    max: usize,
    per_client: DashMap<IpAddr, usize>,
    max_per_client: usize,
}

/// A connection's claim on the limits; released when dropped.
pub struct ConnSlot {
    limits: Arc<ConnLimits>,
    client: IpAddr,
    _permit: tokio::sync::OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.metrics.connections_open.dec();
        if let dashmap::mapref::entry::Entry::Occupied(mut e) =
            self.limits.per_client.entry(self.client)
        {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

impl ConnLimits {
    pub fn new(max: usize, max_per_client: usize) -> Arc<ConnLimits> {
        Arc::new(ConnLimits {
            permits: Arc::new(Semaphore::new(max)),
            max,
            per_client: DashMap::new(),
            max_per_client,
        })
    }

    /// Wait for room for one more connection.
    pub async fn permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.permits.clone().acquire_owned().await.ok()
    }

    /// Admit a connection from `client`, or None when that address holds
    /// its share already.
    pub fn admit(
        self: &Arc<Self>,
        client: IpAddr,
        permit: tokio::sync::OwnedSemaphorePermit,
        metrics: &Arc<Metrics>,
    ) -> Option<ConnSlot> {
        let mut n = self.per_client.entry(client).or_insert(0);
        if *n >= self.max_per_client {
            return None;
        }
        *n += 1;
        drop(n);
        metrics.connections_open.inc();
        Some(ConnSlot {
            limits: self.clone(),
            client,
            _permit: permit,
            metrics: metrics.clone(),
        })
    }

    /// Whether every connection slot is taken.
    pub fn saturated(&self) -> bool {
        self.permits.available_permits() == 0
    }

    /// Connections served now.
    pub fn open(&self) -> usize {
        self.max - self.permits.available_permits()
    }
}

/// What one connection is doing, for the idle watchdog.
pub struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    /// Milliseconds after `opened` of the last request start or end.
    last_ms: AtomicU64,
}

/// Why the watchdog closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    FirstByteTimeout,
    Idle,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::FirstByteTimeout => "first_byte_timeout",
            CloseReason::Idle => "idle",
        }
    }
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            last_ms: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        self.last_ms
            .store(self.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// A request started; it ends when the guard is dropped.
    pub fn start(self: &Arc<Self>) -> ActiveRequest {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.touch();
        ActiveRequest(self.clone())
    }

    /// Whether the connection should be closed now, and why.
    pub fn should_close(&self, first_byte: Duration, idle: Duration) -> Option<CloseReason> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let now = self.opened.elapsed();
        if self.requests.load(Ordering::Relaxed) == 0 {
            return (now >= first_byte).then_some(CloseReason::FirstByteTimeout);
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        (now.saturating_sub(last) >= idle).then_some(CloseReason::Idle)
    }
}

/// A request in progress on a connection.
pub struct ActiveRequest(Arc<Activity>);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request "in progress" until sent.
pub struct TrackedBody<B> {
    inner: B,
    _active: ActiveRequest,
}

impl<B> TrackedBody<B> {
    pub fn new(inner: B, active: ActiveRequest) -> Self {
        TrackedBody {
            inner,
            _active: active,
        }
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_and_first_byte_deadlines() {
        let a = Activity::new();
        let ms = Duration::from_millis;
        assert_eq!(
            a.should_close(ms(0), ms(10_000)),
            Some(CloseReason::FirstByteTimeout)
        );
        assert_eq!(a.should_close(ms(10_000), ms(0)), None, "young connection");
        let r = a.start();
        assert_eq!(a.should_close(ms(0), ms(0)), None, "a request in progress");
        drop(r);
        assert_eq!(a.should_close(ms(0), ms(0)), Some(CloseReason::Idle));
        assert_eq!(a.should_close(ms(0), ms(10_000)), None);
    }

    #[tokio::test]
    async fn per_client_share() {
        let limits = ConnLimits::new(3, 2);
        let m = Arc::new(Metrics::new());
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let s1 = limits.admit(a, limits.permit().await.unwrap(), &m).unwrap();
        let _s2 = limits.admit(a, limits.permit().await.unwrap(), &m).unwrap();
        assert!(limits
            .admit(a, limits.permit().await.unwrap(), &m)
            .is_none());
        let _s3 = limits.admit(b, limits.permit().await.unwrap(), &m).unwrap();
        assert!(limits.saturated());
        assert_eq!(limits.open(), 3);
        drop(s1);
        assert!(!limits.saturated());
        assert!(limits
            .admit(a, limits.permit().await.unwrap(), &m)
            .is_some());
    }
}
