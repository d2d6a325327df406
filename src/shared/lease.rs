//! Per-digest download leases in Redis: the replica that takes
//! `lease:<digest>` (`SET NX PX`) downloads from the upstream and renews
//! the lease while it does; the others read the holder's internal address
//! from the lease and stream from it.
//!
//! Invariants: a lease is only ever renewed or released by the replica
//! whose random token it holds (checked in one Lua script); the lease is an
//! efficiency device only: correctness comes from digests (every replica
//! verifies what it streams) and conditional writes in the bucket. Redis
//! unreachable means "no lease": each replica then de-duplicates on its
//! own.

use crate::oci::Digest;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// How long one Redis command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(1500);

const RENEW: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end";
const RELEASE: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

/// What taking a lease gave.
pub enum Lease {
    /// This replica holds it: download, then drop the guard.
    Won(LeaseGuard),
    /// Another replica holds it and serves the download at this address.
    Held(String),
    /// Redis did not answer: decide alone.
    Unavailable,
}

/// The leases of this replica.
pub struct Leases {
    client: redis::Client,
    conn: Mutex<Option<redis::aio::MultiplexedConnection>>,
    /// This replica's internal address, stored in the leases it takes.
    me: String,
    ttl: Duration,
    up: AtomicBool,
    /// `modelgate_coordination_up`, kept with `up`.
    gauge: prometheus_client::metrics::gauge::Gauge<i64, std::sync::atomic::AtomicI64>,
}

/// A lease held: renewed in the background until dropped, then released.
pub struct LeaseGuard {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn key(d: &Digest) -> String {
    format!("modelgate:lease:{d}")
}

impl Leases {
    pub fn new(
        url: &url::Url,
        me: &url::Url,
        ttl: Duration,
        gauge: prometheus_client::metrics::gauge::Gauge<i64, std::sync::atomic::AtomicI64>,
    ) -> Result<Arc<Leases>, String> {
        let client =
            redis::Client::open(url.as_str()).map_err(|e| format!("coordination.redis: {e}"))?;
        Ok(Arc::new(Leases {
            client,
            conn: Mutex::new(None),
            me: me.as_str().trim_end_matches('/').to_string(),
            ttl,
            up: AtomicBool::new(true),
            gauge,
        }))
    }

    /// Whether Redis answered the last command.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Ask Redis whether it is there (updates [`Leases::is_up`]).
    pub async fn ping(&self) {
        let _ = self.run::<String>(redis::cmd("PING")).await;
    }

    /// Whether a lease on `d` is held now (None: Redis did not answer).
    pub async fn is_held(&self, d: &Digest) -> Option<bool> {
        let mut exists = redis::cmd("EXISTS");
        exists.arg(key(d));
        self.run::<i64>(exists).await.map(|n| n > 0)
    }

    async fn connection(&self) -> Option<redis::aio::MultiplexedConnection> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Some(c.clone());
        }
        let fresh = tokio::time::timeout(
            COMMAND_TIMEOUT,
            self.client.get_multiplexed_async_connection(),
        )
        .await;
        match fresh {
            Ok(Ok(c)) => {
                *slot = Some(c.clone());
                Some(c)
            }
            _ => None,
        }
    }

    /// Run one command; a failure drops the connection (the next command
    /// reconnects) and marks Redis down.
    async fn run<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Option<T> {
        let Some(mut c) = self.connection().await else {
            self.mark(false);
            return None;
        };
        match tokio::time::timeout(COMMAND_TIMEOUT, cmd.query_async::<T>(&mut c)).await {
            Ok(Ok(v)) => {
                self.mark(true);
                Some(v)
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "redis command failed");
                *self.conn.lock().await = None;
                self.mark(false);
                None
            }
            Err(_) => {
                *self.conn.lock().await = None;
                self.mark(false);
                None
            }
        }
    }

    fn mark(&self, up: bool) {
        self.gauge.set(up as i64);
        if self.up.swap(up, Ordering::Relaxed) != up {
            match up {
                true => {
                    tracing::info!("redis is reachable again: downloads are shared across replicas")
                }
                false => tracing::warn!(
                    "redis is unreachable: each replica downloads on its own until it is back"
                ),
            }
        }
    }

    /// Take the lease for `d`, or learn who holds it.
    pub async fn take(self: &Arc<Self>, d: &Digest) -> Lease {
        let mut token = [0u8; 16];
        if getrandom::fill(&mut token).is_err() {
            return Lease::Unavailable;
        }
        let value = format!("{} {}", hex::encode(token), self.me);
        let ttl_ms = self.ttl.as_millis() as u64;
        for _ in 0..3 {
            let mut set = redis::cmd("SET");
            set.arg(key(d)).arg(&value).arg("NX").arg("PX").arg(ttl_ms);
            let taken: Option<Option<String>> = self.run(set).await;
            match taken {
                None => return Lease::Unavailable,
                Some(Some(_)) => return Lease::Won(self.clone().guard(d.clone(), value)),
                Some(None) => {}
            }
            let mut get = redis::cmd("GET");
            get.arg(key(d));
            match self.run::<Option<String>>(get).await {
                None => return Lease::Unavailable,
                Some(Some(v)) => {
                    if let Some((_, addr)) = v.split_once(' ') {
                        return Lease::Held(addr.to_string());
                    }
                    return Lease::Unavailable;
                }
                // Released between SET and GET: try again.
                Some(None) => {}
            }
        }
        Lease::Unavailable
    }

    /// Renew every third of the TTL until the guard drops, then release.
    fn guard(self: Arc<Self>, d: Digest, value: String) -> LeaseGuard {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let ttl_ms = self.ttl.as_millis() as u64;
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tokio::time::sleep(self.ttl / 3) => {
                        let mut renew = redis::cmd("EVAL");
                        renew.arg(RENEW).arg(1).arg(key(&d)).arg(&value).arg(ttl_ms);
                        if self.run::<i64>(renew).await == Some(0) {
                            tracing::warn!(digest = %d, "the download lease expired and was taken over; another replica may download too");
                            return;
                        }
                    }
                }
            }
            let mut release = redis::cmd("EVAL");
            release.arg(RELEASE).arg(1).arg(key(&d)).arg(&value);
            let _ = self.run::<i64>(release).await;
        });
        LeaseGuard { stop: Some(stop) }
    }
}
