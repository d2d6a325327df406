//! The HTTP side: the client listener (plain or TLS) with its connection
//! limit and graceful shutdown, the admin listener, and dispatch of parsed
//! endpoints to the handlers in [`pull`].

pub mod admin;
pub mod auth;
pub mod body;
pub mod conn;
pub mod gate;
pub mod pull;
pub mod push;
pub mod router;
pub mod signatures;

use crate::cache::{BlobStore, Flights, TagStore};
use crate::config::Config;
use crate::metrics::{EndpointLabels, Metrics, RequestLabels};
use crate::oci::{ErrorCode, OciError};
use crate::upstream::{Router, Upstream};
use body::{error_response, RespBody, API_VERSION};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// Everything a request handler needs.
pub struct App {
    pub config: Config,
    pub router: Router,
    pub store: Arc<BlobStore>,
    pub tags: TagStore,
    pub flights: Arc<Flights>,
    pub metrics: Arc<Metrics>,
    pub ready: AtomicBool,
    pub policy: Arc<crate::policy::PolicyHolder>,
    pub audit: crate::audit::AuditLog,
    pub gate: gate::GateState,
    pub uploads: push::Uploads,
    pub htpasswd: Option<auth::Htpasswd>,
    /// Which repository holds which digest (see [`crate::cache::holdings`]).
    pub holdings: crate::cache::Holdings,
    /// Client connection limits (see [`conn`]).
    pub conns: Arc<conn::ConnLimits>,
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
    Policy(#[from] crate::policy::PolicyError),
    #[error("audit log {0}: {1}")]
    Audit(String, std::io::Error),
    #[error("{0}")]
    Auth(String),
}

impl App {
    pub fn new(config: Config) -> Result<Arc<App>, StartError> {
        let metrics = Arc::new(Metrics::new());
        let dir = config.cache_dir.clone();
        let mut store = BlobStore::open(&dir, config.max_bytes)
            .map_err(|e| StartError::Cache(dir.display().to_string(), e))?;
        store.count_evictions(metrics.cache_evictions.clone());
        store.count_recreations(metrics.cache_layout_recreated.clone());
        metrics.cache_bytes.set(store.total_bytes() as i64);
        let tags = TagStore::open(dir.join("tags"))
            .map_err(|e| StartError::Cache(dir.display().to_string(), e))?;
        let mut ups = Vec::new();
        for u in &config.upstreams {
            ups.push((Arc::new(Upstream::new(u, metrics.clone())?), u.default));
        }
        let policy = Arc::new(crate::policy::PolicyHolder::load(
            config.policy_file.clone(),
        )?);
        let audit = crate::audit::AuditLog::open(&config.audit_path)
            .map_err(|e| StartError::Audit(config.audit_path.clone(), e))?;
        let gate = gate::GateState::open(dir.join("seen-tags"))
            .map_err(|e| StartError::Cache(dir.display().to_string(), e))?;
        let htpasswd = config
            .htpasswd
            .as_deref()
            .map(auth::Htpasswd::load)
            .transpose()
            .map_err(StartError::Auth)?
            .map(|h| h.with_failure_limit(config.auth_failures_per_minute));
        Ok(Arc::new(App {
            uploads: push::Uploads::new(
                config.max_uploads,
                config.max_uploads_per_client,
                config.upload_timeout,
                metrics.clone(),
            ),
            htpasswd,
            holdings: crate::cache::Holdings::new(),
            conns: conn::ConnLimits::new(config.max_connections, config.max_connections_per_client),
            policy,
            audit,
            gate,
            router: Router::new(ups),
            store: Arc::new(store),
            tags,
            flights: Flights::new(),
            metrics,
            ready: AtomicBool::new(false),
            config,
        }))
    }
}

impl App {
    /// `repo` holds the manifest `d`, and with it everything it references
    /// (a registry keeps a manifest only with its blobs and children).
    pub fn registry_holds_manifest(
        &self,
        repo: &str,
        d: &crate::oci::Digest,
        summary: &crate::oci::media::ManifestSummary,
    ) {
        use crate::cache::Held;
        self.holdings.hold(repo, d, Held::Manifest);
        for b in summary.config.iter().chain(summary.layers.iter()) {
            self.holdings.hold(repo, b, Held::Blob);
        }
        for c in &summary.manifests {
            self.holdings.hold(repo, c, Held::Manifest);
        }
    }
}

/// Load the TLS server config for the client listener.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, StartError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| StartError::Tls(format!("{}: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| StartError::Tls(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(StartError::Tls(format!(
            "{}: no certificate in the file",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| StartError::Tls(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| StartError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// Serve the client API on `listener` (and the admin API on `admin`) until
/// `shutdown` resolves; then stop accepting and let requests in flight
/// finish (at most 30 s). Connection limits and timeouts: [`conn`].
pub async fn run(
    app: Arc<App>,
    listener: TcpListener,
    admin: Option<TcpListener>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    if let Err(e) = app.store.lock_exclusive() {
        tracing::error!("{e}");
        return;
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(app.config.header_timeout)
        .max_buf_size(1024 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(app.config.idle_timeout / 2))
        .keep_alive_timeout(Duration::from_secs(20))
        .max_concurrent_streams(256);
    let builder = Arc::new(builder);
    if let Some(admin) = admin {
        tokio::spawn(admin::serve(app.clone(), admin));
    }
    app.policy
        .watch(app.metrics.clone(), app.config.policy_reload_interval);
    spawn_upload_sweeper(&app);
    app.ready.store(true, Ordering::Relaxed);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = app.conns.permit() => match p { Some(p) => p, None => break },
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = app.conns.admit(peer.ip(), permit, &app.metrics) else {
            crate::metrics::Metrics::reason(&app.metrics.connections_closed, "per_client_limit");
            tracing::debug!(%peer, "connection refused: this address holds its share of connections");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (app, builder, stop) = (app.clone(), builder.clone(), stop_rx.clone());
        match &tls {
            None => {
                tokio::spawn(async move {
                    serve_connection(app, builder, stream, peer, stop).await;
                    drop(slot);
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let timeout = app.config.first_byte_timeout;
                    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => serve_connection(app, builder, s, peer, stop).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => crate::metrics::Metrics::reason(
                            &app.metrics.connections_closed,
                            "first_byte_timeout",
                        ),
                    }
                    drop(slot);
                });
            }
        }
    }
    app.ready.store(false, Ordering::Relaxed);
    drop(listener);
    tracing::info!("shutting down: waiting for requests in flight");
    let _ = stop_tx.send(true);
    let drain = async {
        while app.conns.open() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Downloads outlive their clients; let them verify and commit.
        while app.flights.in_flight() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(30), drain)
        .await
        .is_err()
    {
        tracing::warn!("requests or downloads still in flight after 30s; closing them");
    }
    app.store.unlock();
}

/// Expire idle upload sessions (and cancel them upstream) while the server
/// runs.
fn spawn_upload_sweeper(app: &Arc<App>) {
    let weak = Arc::downgrade(app);
    let every = app.uploads.sweep_every();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            match weak.upgrade() {
                Some(app) if app.ready.load(Ordering::Relaxed) => {
                    app.uploads.expire();
                }
                _ => return,
            }
        }
    });
}

/// Serve one connection until it ends, the server stops, or the watchdog
/// finds it silent (no first request in time, or idle too long).
async fn serve_connection<I>(
    app: Arc<App>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    io: I,
    peer: SocketAddr,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let activity = conn::Activity::new();
    let act = activity.clone();
    let app2 = app.clone();
    let svc = service_fn(move |req| {
        let active = act.start();
        handle(app2.clone(), peer, req, active)
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let (first_byte, idle) = (app.config.first_byte_timeout, app.config.idle_timeout);
    let tick = (first_byte.min(idle) / 4).clamp(Duration::from_millis(25), Duration::from_secs(1));
    // After a graceful close is asked for, a connection gets this long
    // (a response still streaming gets the server's drain time instead).
    let mut hard_close_at: Option<tokio::time::Instant> = None;
    let mut stopping = false;
    loop {
        tokio::select! {
            _ = conn.as_mut() => break,
            _ = stop.changed(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep(tick), if !stopping && hard_close_at.is_none() => {
                if let Some(why) = activity.should_close(first_byte, idle) {
                    crate::metrics::Metrics::reason(&app.metrics.connections_closed, why.as_str());
                    tracing::debug!(%peer, reason = why.as_str(), "closing a silent connection");
                    conn.as_mut().graceful_shutdown();
                    hard_close_at = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                }
            }
            _ = async { tokio::time::sleep_until(hard_close_at.unwrap_or_else(tokio::time::Instant::now)).await }, if hard_close_at.is_some() => {
                if activity.should_close(Duration::ZERO, Duration::ZERO).is_some() {
                    break;
                }
                hard_close_at = None;
            }
        }
    }
}

async fn handle(
    app: Arc<App>,
    peer: SocketAddr,
    req: Request<Incoming>,
    active: conn::ActiveRequest,
) -> Result<Response<RespBody>, Infallible> {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let (endpoint_label, result) = match router::parse(&path) {
        Ok(ep) => {
            let label = ep.label();
            match authenticate(&app, &ep, &req, peer).await {
                Ok(user) => (label, pull::dispatch(&app, ep, req, peer, user).await),
                Err(e) => (label, Err(e)),
            }
        }
        Err(e) => ("invalid", Err(e)),
    };
    let head = method == Method::HEAD;
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            // Client errors are counted (http_requests_total by code) and
            // logged at debug: anyone can cause them, so they must not
            // flood the log.
            if e.status.is_server_error() {
                tracing::warn!(%peer, %method, path, code = e.code.as_str(), "{}", e.message);
            } else {
                tracing::debug!(%peer, %method, path, code = e.code.as_str(), "{}", e.message);
            }
            error_response(&e, head)
        }
    };
    resp.headers_mut()
        .insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    let code = resp.status().as_u16();
    app.metrics
        .http_requests
        .get_or_create(&RequestLabels {
            method: crate::metrics::method_label(&method),
            endpoint: endpoint_label,
            code,
        })
        .inc();
    app.metrics
        .http_duration
        .get_or_create(&EndpointLabels {
            endpoint: endpoint_label,
        })
        .observe(start.elapsed().as_secs_f64());
    tracing::debug!(%peer, %method, path, code, ms = start.elapsed().as_millis() as u64, "request");
    Ok(resp.map(|b| BodyExt::boxed(conn::TrackedBody::new(b, active))))
}

/// Whether a request writes (pushes, deletes, uploads).
fn is_write(method: &Method, ep: &router::Endpoint) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
        || matches!(ep, router::Endpoint::Upload(..))
}

/// Who is asking, when the request needs credentials: push always (with
/// an htpasswd file), pull with `pull_auth`, and `/v2/` so clients learn
/// the challenge. Without an htpasswd file modelgate is read-only unless
/// `allow_anonymous_push` says otherwise. Credentials are checked only
/// where they are needed.
async fn authenticate(
    app: &App,
    ep: &router::Endpoint,
    req: &Request<Incoming>,
    peer: SocketAddr,
) -> Result<Option<String>, OciError> {
    let write = is_write(req.method(), ep);
    let Some(ht) = &app.htpasswd else {
        if write && !app.config.allow_anonymous_push {
            return Err(OciError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::Unsupported,
                "modelgate is read-only: pushes need client authentication; set [server] htpasswd to a file of bcrypt users (htpasswd -B), or allow_anonymous_push = true to let anyone push with modelgate's upstream credentials",
            ));
        }
        return Ok(None);
    };
    let needed = write || app.config.pull_auth || matches!(ep, router::Endpoint::Base);
    if !needed {
        return Ok(None);
    }
    let header = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match ht.login(header, peer.ip()).await {
        auth::Login::User(u) => Ok(Some(u)),
        auth::Login::Anonymous => Err(OciError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "authentication required: send Basic credentials of a user in modelgate's htpasswd",
        )),
        auth::Login::Failed => {
            app.metrics.auth_failures.inc();
            Err(OciError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "the user name or password is wrong",
            ))
        }
        auth::Login::Throttled => {
            app.metrics.auth_failures.inc();
            Err(OciError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::TooManyRequests,
                "too many failed logins from this address; wait a minute before trying again",
            ))
        }
    }
}

/// 405 for methods an endpoint does not serve.
pub fn method_not_allowed(method: &Method, what: &str) -> OciError {
    OciError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::Unsupported,
        format!("{method} is not supported on {what}"),
    )
}
