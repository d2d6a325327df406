//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process
//! answers), `/readyz` (the client listener is accepting, has a free
//! connection slot, and the cache directory is usable), and the release
//! ledger as JSON: `/api/v1/repositories` and
//! `/api/v1/repositories/<name>/history[?tag=T]`; and the release page
//! (`/ui/`, see [`super::ui`]).

use super::app::App;
use super::body::{full, RespBody};
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;

fn text(status: StatusCode, body: String, ctype: &'static str) -> Response<RespBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

async fn handle(app: Arc<App>, req: Request<Incoming>) -> Result<Response<RespBody>, Infallible> {
    Ok(match req.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            app.metrics().encode(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        "/healthz" => text(StatusCode::OK, "ok\n".into(), "text/plain"),
        "/readyz" => {
            let unready = |why: String| text(StatusCode::SERVICE_UNAVAILABLE, why, "text/plain");
            if !app.is_ready() {
                unready("not ready\n".into())
            } else if app.conns().saturated() {
                unready(format!(
                    "saturated: all {} client connections are in use\n",
                    app.config().max_connections
                ))
            } else if let Err(e) = app.registry().store().ensure_layout() {
                unready(format!(
                    "cache {} is not usable: {e}\n",
                    app.config().cache_dir.display()
                ))
            } else {
                text(StatusCode::OK, readiness(&app), "text/plain")
            }
        }
        "/ui" | "/ui/" => {
            let fact = req.uri().query().and_then(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "fact")
                    .map(|(_, v)| v.into_owned())
            });
            let loaded = app.gate().policy().current();
            let html = super::ui::page(
                &loaded.policy,
                &loaded.sha256,
                app.gate().ledger(),
                &app.gate().recent_denials(),
                fact.as_deref(),
            );
            let mut r = text(StatusCode::OK, html, "text/html; charset=utf-8");
            r.headers_mut().insert(
                "content-security-policy",
                HeaderValue::from_static(super::ui::CSP),
            );
            r
        }
        "/api/v1/repositories" => json(
            StatusCode::OK,
            &serde_json::json!({ "repositories": app.gate().ledger().repositories() }),
        ),
        path => match path
            .strip_prefix("/api/v1/repositories/")
            .and_then(|p| p.strip_suffix("/history"))
        {
            Some(name) if valid_repository(name) => {
                let tag = req.uri().query().and_then(|q| {
                    url::form_urlencoded::parse(q.as_bytes())
                        .find(|(k, _)| k == "tag")
                        .map(|(_, v)| v.into_owned())
                });
                if let Err(e) = app.gate().ledger().refresh(name).await {
                    tracing::warn!(repository = %name, "history from the local mirror: {e}");
                }
                let h = crate::commands::history::History::of(app.gate().ledger(), name, tag.as_deref());
                json(StatusCode::OK, &h.json())
            }
            Some(name) => json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({ "error": format!("{name:?} is not a repository name") }),
            ),
            None => text(
                StatusCode::NOT_FOUND,
                "try /ui/, /metrics, /healthz, /readyz, /api/v1/repositories or /api/v1/repositories/<name>/history\n".into(),
                "text/plain",
            ),
        },
    })
}

/// "ready", and what is degraded with several replicas: still ready (the
/// local cache serves, and tag pulls that need the shared records get a
/// clear 503), but said, for operators and probes that look.
fn readiness(app: &App) -> String {
    let Some(s) = app.registry().shared() else {
        return "ready\n".into();
    };
    let mut out = String::from("ready");
    if !s.bucket_up() {
        out += &format!(
            "\ndegraded: object storage {} is unreachable: cached digests are served, immutable tags without a local record get 503",
            s.bucket.endpoint()
        );
    }
    if !s.redis_up() {
        out += "\ndegraded: redis is unreachable: each replica downloads on its own";
    }
    out + "\n"
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<RespBody> {
    text(status, v.to_string(), "application/json")
}

/// A canonical repository name: path components of registry name
/// characters, none `.` or `..` (the ledger is kept under that path).
fn valid_repository(name: &str) -> bool {
    !name.is_empty()
        && name.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-' | ':'))
        })
}

/// Serve the admin API until the process ends.
pub async fn serve(app: Arc<App>, listener: TcpListener) {
    serve_plain(listener, move |req| handle(app.clone(), req)).await
}

/// Serve a small internal API (admin, fleet) on `listener` until the
/// process ends: each request answered by `handle`, no limits beyond the
/// listener's (these listeners are not the clients').
pub async fn serve_plain<F, Fut>(listener: TcpListener, handle: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<RespBody>, Infallible>> + Send + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let svc = service_fn(handle);
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
