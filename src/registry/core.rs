//! The registry itself: the cache, the tag memory, shared downloads and
//! what each repository holds.

use crate::cache::{BlobStore, Flights, Held, Holdings, TagStore};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::oci::media::ManifestSummary;
use crate::oci::Digest;
use crate::shared::Shared;
use std::sync::Arc;
use std::time::Duration;

/// The content side of modelgate: the cache, the tag memory, shared
/// downloads and what each repository holds.
pub struct Registry {
    pub(super) store: Arc<BlobStore>,
    pub(super) tags: TagStore,
    pub(super) flights: Arc<Flights>,
    pub(super) holdings: Holdings,
    pub(super) metrics: Arc<Metrics>,
    pub(super) tag_ttl: Duration,
    pub(super) min_free: u64,
    /// Shared bucket and leases, when several replicas run.
    pub(super) shared: Option<Arc<Shared>>,
    pub(super) lease_ttl: Duration,
}

impl Registry {
    /// Open the cache in `config.cache_dir` (deleting nothing).
    pub fn open(config: &Config, metrics: Arc<Metrics>) -> std::io::Result<Registry> {
        let dir = &config.cache_dir;
        let mut store = BlobStore::open(dir, config.max_bytes)?;
        store.count_evictions(metrics.cache_evictions.clone());
        store.count_recreations(metrics.cache_layout_recreated.clone());
        metrics.cache_bytes.set(store.total_bytes() as i64);
        let shared = Shared::open(config, metrics.clone()).map_err(std::io::Error::other)?;
        Ok(Registry {
            shared,
            lease_ttl: config
                .coordination
                .as_ref()
                .map(|c| c.lease_ttl)
                .unwrap_or(Duration::from_secs(15)),
            store: Arc::new(store),
            tags: TagStore::open(dir.join("tags"))?,
            flights: Flights::new(),
            holdings: Holdings::new(),
            metrics,
            tag_ttl: config.tag_ttl,
            min_free: config.min_free_bytes,
        })
    }

    /// The content-addressed cache.
    pub fn store(&self) -> &Arc<BlobStore> {
        &self.store
    }

    /// The last known tag → digest answers.
    pub fn tags(&self) -> &TagStore {
        &self.tags
    }

    /// Downloads in flight.
    pub fn flights(&self) -> &Arc<Flights> {
        &self.flights
    }

    /// Which repository holds what.
    pub fn holdings(&self) -> &Holdings {
        &self.holdings
    }

    /// `repo` holds the manifest `d`, and with it everything it references
    /// (a registry keeps a manifest only with its blobs and children).
    pub fn holds_manifest(&self, repo: &str, d: &Digest, summary: &ManifestSummary) {
        self.holdings.hold(repo, d, Held::Manifest);
        for b in summary.config.iter().chain(summary.layers.iter()) {
            self.holdings.hold(repo, b, Held::Blob);
        }
        for c in &summary.manifests {
            self.holdings.hold(repo, c, Held::Manifest);
        }
    }
}
