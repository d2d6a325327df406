//! One request, top to bottom: parse the path, authenticate, hand the
//! endpoint and method to its handler, turn an error into an OCI error
//! response, count it. Every failure goes through one place
//! ([`super::body::error_response`] over `crate::error`'s mapping).

use super::app::App;
use super::body::{empty, error_response, full, RespBody, API_VERSION};
use super::ctx::{method_not_allowed, Ctx};
use super::router::{self, Endpoint};
use super::{auth, blobs, conn, deletes, listing, manifests, uploads};
use crate::metrics::{EndpointLabels, RequestLabels};
use crate::oci::{ErrorCode, OciError};
use crate::registry::Deletion;
use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// Answer one client request.
pub async fn handle(
    app: Arc<App>,
    peer: SocketAddr,
    req: Request<Incoming>,
    active: conn::ActiveRequest,
) -> Result<Response<RespBody>, Infallible> {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let (endpoint_label, result) = match router::parse(&path) {
        Ok(ep) => (ep.label(), authorized(&app, ep, req, peer).await),
        Err(e) => ("invalid", Err(e)),
    };
    let mut resp = result.unwrap_or_else(|e| {
        // Client errors are counted (http_requests_total by code) and logged
        // at debug: anyone can cause them, so they must not flood the log.
        if e.status.is_server_error() {
            tracing::warn!(%peer, %method, path, code = e.code.as_str(), "{}", e.message);
        } else {
            tracing::debug!(%peer, %method, path, code = e.code.as_str(), "{}", e.message);
        }
        error_response(&e, &method)
    });
    resp.headers_mut()
        .insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    let code = resp.status().as_u16();
    let method_label = crate::metrics::method_label(&method);
    app.metrics
        .http_requests
        .get_or_create(&RequestLabels {
            method: method_label,
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

/// Authenticate, then dispatch; echo `OCI-Namespace` for `?ns=` requests.
async fn authorized(
    app: &Arc<App>,
    ep: Endpoint,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<RespBody>, OciError> {
    let user = authenticate(app, &ep, &req, peer).await?;
    let ctx = Ctx {
        app,
        peer,
        user,
        query: req.uri().query().map(str::to_string),
        client: peer.ip().to_string(),
    };
    let head = req.method() == Method::HEAD;
    let mut resp = dispatch(&ctx, ep, req).await?;
    if let Some(ns) = ctx.param("ns").and_then(|n| HeaderValue::from_str(&n).ok()) {
        resp.headers_mut().insert("OCI-Namespace", ns);
    }
    if head {
        *resp.body_mut() = empty();
    }
    Ok(resp)
}

/// The handler for each endpoint and method.
async fn dispatch(
    ctx: &Ctx<'_>,
    ep: Endpoint,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, OciError> {
    let method = req.method().clone();
    if method == Method::OPTIONS {
        let mut r = Response::new(empty());
        *r.status_mut() = StatusCode::NO_CONTENT;
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static(ep.allow()));
        return Ok(r);
    }
    match (ep, &method) {
        (Endpoint::Base, &Method::GET | &Method::HEAD) => Ok(base()),
        (Endpoint::Catalog, _) => Err(router::catalog_refused()),
        (Endpoint::Manifest(n, r), &Method::GET | &Method::HEAD) => {
            manifests::get(ctx, &n, &r, &req).await
        }
        (Endpoint::Manifest(n, r), &Method::PUT) => manifests::put(ctx, &n, r, req).await,
        (Endpoint::Manifest(n, r), &Method::DELETE) => {
            deletes::delete(ctx, &n, Deletion::Manifest(r)).await
        }
        (Endpoint::Blob(n, d), &Method::GET) => blobs::get(ctx, &n, &d, &req).await,
        (Endpoint::Blob(n, d), &Method::HEAD) => blobs::head(ctx, &n, &d).await,
        (Endpoint::Blob(n, d), &Method::DELETE) => {
            deletes::delete(ctx, &n, Deletion::Blob(d)).await
        }
        (Endpoint::TagsList(n), &Method::GET) => listing::tags(ctx, &n).await,
        (Endpoint::History(n), &Method::GET) => listing::history(ctx, &n),
        (Endpoint::Referrers(n, d), &Method::GET) => listing::referrers(ctx, &n, &d).await,
        (Endpoint::Upload(n, None), &Method::POST) => uploads::post(ctx, n, req).await,
        (Endpoint::Upload(n, Some(id)), &Method::GET) => uploads::status(ctx, &n, &id).await,
        (Endpoint::Upload(n, Some(id)), &Method::PATCH) => uploads::patch(ctx, &n, &id, req).await,
        (Endpoint::Upload(n, Some(id)), &Method::PUT) => uploads::put(ctx, &n, &id, req).await,
        (Endpoint::Upload(n, Some(id)), &Method::DELETE) => uploads::cancel(ctx, &n, &id).await,
        (ep, m) => Err(method_not_allowed(m, ep.what())),
    }
}

/// `/v2/`: the API version check.
fn base() -> Response<RespBody> {
    let mut r = Response::new(full("{}"));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(2));
    r
}

/// Whether a request writes (pushes, deletes, uploads).
fn is_write(method: &Method, ep: &Endpoint) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
        || matches!(ep, Endpoint::Upload(..))
}

/// Who is asking, when the request needs credentials: push always (with
/// an htpasswd file), pull with `pull_auth`, and `/v2/` so clients learn
/// the challenge. Without an htpasswd file modelgate is read-only unless
/// `allow_anonymous_push` says otherwise. Credentials are checked only
/// where they are needed.
async fn authenticate(
    app: &App,
    ep: &Endpoint,
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
    let needed = write || app.config.pull_auth || matches!(ep, Endpoint::Base);
    if !needed {
        return Ok(None);
    }
    let header = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let unauthorized =
        |m: &str| OciError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, m);
    match ht.login(header, peer.ip()).await {
        auth::Login::User(u) => Ok(Some(u)),
        auth::Login::Anonymous => Err(unauthorized(
            "authentication required: send Basic credentials of a user in modelgate's htpasswd",
        )),
        auth::Login::Failed => {
            app.metrics.auth_failures.inc();
            Err(unauthorized("the user name or password is wrong"))
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
