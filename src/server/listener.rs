//! The client listener: accept within the connection limits (see
//! [`super::conn`]), TLS when configured, one task per connection with its
//! idle watchdog, and a graceful shutdown that lets requests and downloads
//! in flight finish (at most 30 s).

use super::app::{App, StartError};
use super::{admin, conn, dispatch};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

type Http = Arc<auto::Builder<TokioExecutor>>;

/// Load the TLS server config for the client listener.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, StartError> {
    let tls = |e: String| StartError::Tls(e);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| tls(format!("{}: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(tls(format!(
            "{}: no certificate in the file",
            cert.display()
        )));
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| tls(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

fn http(app: &App) -> Http {
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
    Arc::new(builder)
}

/// Serve the client API on `listener` (and the admin API on `admin`) until
/// `shutdown` resolves; then stop accepting and let requests in flight
/// finish (at most 30 s).
pub async fn run(
    app: Arc<App>,
    listener: TcpListener,
    admin: Option<TcpListener>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    if let Err(e) = app.registry.store().lock_exclusive() {
        tracing::error!("{e}");
        return;
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    if let Some(admin) = admin {
        tokio::spawn(admin::serve(app.clone(), admin));
    }
    if let Some(s) = app.registry.shared() {
        s.clone().watch_health(Duration::from_secs(2));
        app.gate
            .ledger()
            .clone()
            .keep_mirrored(Duration::from_secs(5));
    }
    if let Some(c) = &app.config.coordination {
        match TcpListener::bind(c.internal_listen).await {
            Ok(l) => {
                tokio::spawn(super::internal::serve(app.clone(), l));
            }
            Err(e) => {
                tracing::error!(
                    "cannot listen on {} (coordination.internal_listen): {e}",
                    c.internal_listen
                );
                app.registry.store().unlock();
                return;
            }
        }
    }
    app.gate
        .policy()
        .watch(app.metrics.clone(), app.config.policy_reload_interval);
    spawn_upload_sweeper(&app);
    app.mark_ready();
    accept_until(&app, &listener, tls, stop_rx, shutdown).await;
    app.mark_stopping();
    drop(listener);
    tracing::info!("shutting down: waiting for requests in flight");
    let _ = stop_tx.send(true);
    let drain = async {
        while app.conns.open() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Downloads outlive their clients; let them verify and commit.
        while app.registry.flights().in_flight() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(30), drain)
        .await
        .is_err()
    {
        tracing::warn!("requests or downloads still in flight after 30s; closing them");
    }
    app.registry.store().unlock();
}

/// Accept connections within the limits until `shutdown`.
async fn accept_until(
    app: &Arc<App>,
    listener: &TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: watch::Receiver<bool>,
    shutdown: impl Future<Output = ()>,
) {
    let http = http(app);
    tokio::pin!(shutdown);
    loop {
        // Beyond max_connections, accept pauses: clients wait in the backlog.
        let permit = tokio::select! {
            _ = &mut shutdown => return,
            p = app.conns.permit() => match p { Some(p) => p, None => return },
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => return,
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
        let (app, http, stop, tls) = (app.clone(), http.clone(), stop.clone(), tls.clone());
        tokio::spawn(async move {
            match tls {
                None => serve_connection(app, http, stream, peer, stop).await,
                Some(acceptor) => serve_tls(app, http, acceptor, stream, peer, stop).await,
            }
            drop(slot);
        });
    }
}

async fn serve_tls(
    app: Arc<App>,
    http: Http,
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
) {
    let timeout = app.config.first_byte_timeout;
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(s)) => serve_connection(app, http, s, peer, stop).await,
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => {
            crate::metrics::Metrics::reason(&app.metrics.connections_closed, "first_byte_timeout")
        }
    }
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
                Some(app) if app.is_ready() => {
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
    http: Http,
    io: I,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let activity = conn::Activity::new();
    let act = activity.clone();
    let app2 = app.clone();
    let svc = service_fn(move |req| {
        let active = act.start();
        dispatch::handle(app2.clone(), peer, req, active)
    });
    let conn = http.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let (first_byte, idle) = (app.config.first_byte_timeout, app.config.idle_timeout);
    let tick = (first_byte.min(idle) / 4).clamp(Duration::from_millis(25), Duration::from_secs(1));
    // After a graceful close is asked for, a silent connection gets this
    // long (a response still streaming gets the server's drain time).
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
