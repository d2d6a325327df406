//! What every handler shares: the configuration, the routing to upstreams,
//! the registry and the gate, upload sessions, client authentication and
//! connection limits. Exposed through methods, not fields.

use super::auth::Htpasswd;
use super::conn::ConnLimits;
use super::uploads::sessions::Uploads;
use crate::config::Config;
use crate::gate::{Gate, GateOpenError};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::upstream::{Router, Upstream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Everything a request handler needs.
pub struct App {
    pub(super) config: Config,
    router: Router,
    pub(super) registry: Arc<Registry>,
    pub(super) gate: Gate,
    pub(super) metrics: Arc<Metrics>,
    ready: AtomicBool,
    pub(super) uploads: Uploads,
    pub(super) htpasswd: Option<Htpasswd>,
    pub(super) conns: Arc<ConnLimits>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cache directory {0}: {1}")]
    Cache(String, std::io::Error),
    #[error(transparent)]
    Upstream(#[from] crate::upstream::UpstreamError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Gate(#[from] GateOpenError),
    #[error("{0}")]
    Auth(String),
}

impl App {
    pub fn new(config: Config) -> Result<Arc<App>, StartError> {
        let metrics = Arc::new(Metrics::new());
        let registry = Registry::open(&config, metrics.clone())
            .map_err(|e| StartError::Cache(config.cache_dir.display().to_string(), e))?;
        let registry = Arc::new(registry);
        let mut ups = Vec::new();
        for u in &config.upstreams {
            ups.push((Arc::new(Upstream::new(u, metrics.clone())?), u.default));
        }
        let gate = Gate::open(&config, registry.clone(), metrics.clone())?;
        let htpasswd = config
            .htpasswd
            .as_deref()
            .map(Htpasswd::load)
            .transpose()
            .map_err(StartError::Auth)?
            .map(|h| h.with_failure_limit(config.auth_failures_per_minute));
        Ok(Arc::new(App {
            uploads: Uploads::new(
                config.max_uploads,
                config.max_uploads_per_client,
                config.upload_timeout,
                metrics.clone(),
            ),
            htpasswd,
            gate,
            router: Router::new(ups),
            registry,
            conns: ConnLimits::new(config.max_connections, config.max_connections_per_client),
            metrics,
            ready: AtomicBool::new(false),
            config,
        }))
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Which upstream serves a repository name.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Content from the cache or the upstreams.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The policy decisions.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Upload sessions in progress.
    pub fn uploads(&self) -> &Uploads {
        &self.uploads
    }

    /// Client connection limits.
    pub fn conns(&self) -> &Arc<ConnLimits> {
        &self.conns
    }

    /// Whether the client listener is accepting.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The client listener accepts from now on.
    pub(super) fn mark_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// The client listener stopped accepting.
    pub(super) fn mark_stopping(&self) {
        self.ready.store(false, Ordering::Relaxed);
    }
}
