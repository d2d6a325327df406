//! The read side of the registry API: manifests, blobs (with Range), tags
//! lists and referrers, each served from the cache when it can be and
//! fetched (hashed in flight, then cached) when it cannot.

use super::body::{empty, error_response, full, stream, RespBody};
use super::push::Deletion;
use super::router::Endpoint;
use super::{method_not_allowed, App};
use crate::cache::flight::{self, Download, FetchState, Leader};
use crate::cache::Held;
use crate::error::{upstream_status, Object};
use crate::metrics::UpstreamLabels;
use crate::oci::media::{
    self, accepts, content_type_for, DEFAULT_MANIFEST_ACCEPT, MAX_MANIFEST_BYTES, OCI_INDEX,
};
use crate::oci::{Digest, ErrorCode, OciError, Reference, RepoName};
use crate::upstream::{Route, UpstreamError};
use bytes::Bytes;
use http::header::{
    ACCEPT, ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, LINK, RANGE,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::Duration;

const DIGEST_HEADER: &str = "Docker-Content-Digest";
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Query parameter `key`, percent-decoded.
pub fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

pub async fn dispatch(
    app: &Arc<App>,
    ep: Endpoint,
    req: Request<Incoming>,
    peer: std::net::SocketAddr,
    user: Option<String>,
) -> Result<Response<RespBody>, OciError> {
    let method = req.method().clone();
    let query = req.uri().query().map(str::to_string);
    let ns = query_param(query.as_deref(), "ns");
    let route = |name: &RepoName| {
        app.router
            .route(name, ns.as_deref())
            .map_err(OciError::from)
    };
    let is_read = method == Method::GET || method == Method::HEAD;
    if method == Method::OPTIONS {
        let mut r = Response::new(empty());
        *r.status_mut() = StatusCode::NO_CONTENT;
        r.headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static(ep.allow()));
        return Ok(r);
    }
    let client = peer.ip().to_string();
    let who = super::gate::Requester {
        client: &client,
        user: user.as_deref(),
    };
    let mut resp = match ep {
        Endpoint::Catalog => return Err(super::router::catalog_refused()),
        Endpoint::Manifest(name, reference) if method == Method::DELETE => {
            let r = route(&name)?;
            let mut resp =
                super::push::delete(app, &r, &Deletion::Manifest(reference), &who).await?;
            echo_ns(&mut resp, &r);
            return Ok(resp);
        }
        Endpoint::Blob(name, digest) if method == Method::DELETE => {
            let r = route(&name)?;
            let mut resp = super::push::delete(app, &r, &Deletion::Blob(digest), &who).await?;
            echo_ns(&mut resp, &r);
            return Ok(resp);
        }
        Endpoint::Base => {
            if !is_read {
                return Err(method_not_allowed(&method, "/v2/"));
            }
            let mut r = Response::new(if method == Method::HEAD {
                empty()
            } else {
                full("{}")
            });
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(2));
            return Ok(r);
        }
        Endpoint::Manifest(name, reference) if method == Method::PUT => {
            let r = route(&name)?;
            let mut resp =
                super::push::put_manifest(app, &r, &name, reference, req, query.as_deref(), &who)
                    .await?;
            echo_ns(&mut resp, &r);
            return Ok(resp);
        }
        Endpoint::Manifest(name, reference) => {
            if !is_read {
                return Err(method_not_allowed(&method, "manifests"));
            }
            let r = route(&name)?;
            // Clients may send several Accept lines; they all count.
            let accept: Vec<&str> = req
                .headers()
                .get_all(ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            let accept = (!accept.is_empty()).then(|| accept.join(", "));
            if let Reference::Tag(t) = &reference {
                super::gate::refuse_forbidden_tag(app, &r, t, &who)?;
            }
            let m = get_manifest(app, &r, &reference, accept.as_deref()).await?;
            // Decided on exactly the bytes about to be served.
            let subject = super::gate::Subject {
                route: &r,
                reference: &reference,
                manifest: &m,
            };
            super::gate::admit_manifest(app, &subject, &who).await?;
            let m = negotiate_down(app, &r, m, accept.as_deref(), &who).await?;
            let mut resp = manifest_response(&m, method == Method::HEAD);
            echo_ns(&mut resp, &r);
            resp
        }
        Endpoint::Blob(name, digest) => {
            if !is_read {
                return Err(method_not_allowed(&method, "blobs"));
            }
            let r = route(&name)?;
            // HEAD tells existence and size only (pushing clients need it);
            // bytes are served only for admitted manifests.
            if method == Method::GET
                && super::gate::blob_allowed(app, &r, &digest)?
                    == super::gate::BlobAccess::SmallOnly
            {
                let mut resp = serve_small_blob(app, &r, &digest, false).await?;
                echo_ns(&mut resp, &r);
                return Ok(resp);
            }
            let range = req
                .headers()
                .get(RANGE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let mut resp =
                get_blob(app, &r, &digest, method == Method::HEAD, range.as_deref()).await?;
            echo_ns(&mut resp, &r);
            resp
        }
        Endpoint::TagsList(name) => {
            if method != Method::GET {
                return Err(method_not_allowed(&method, "tags/list"));
            }
            let r = route(&name)?;
            let mut resp = tags_list(&r, &name, query.as_deref()).await?;
            echo_ns(&mut resp, &r);
            resp
        }
        Endpoint::Referrers(name, digest) => {
            if method != Method::GET {
                return Err(method_not_allowed(&method, "referrers"));
            }
            let r = route(&name)?;
            let artifact_type = query_param(query.as_deref(), "artifactType");
            let mut resp = referrers(app, &r, &digest, artifact_type.as_deref()).await?;
            echo_ns(&mut resp, &r);
            resp
        }
        Endpoint::Upload(name, id) => {
            let r = route(&name)?;
            let mut resp =
                super::push::upload(app, r.clone(), name, id, req, query.as_deref(), peer.ip())
                    .await?;
            echo_ns(&mut resp, &r);
            return Ok(resp);
        }
    };
    if method == Method::HEAD {
        *resp.body_mut() = empty();
    }
    Ok(resp)
}

fn echo_ns(resp: &mut Response<RespBody>, r: &Route) {
    if let Some(ns) = r.ns.as_deref().and_then(|n| HeaderValue::from_str(n).ok()) {
        resp.headers_mut().insert("OCI-Namespace", ns);
    }
}

/// A client that does not accept an index gets the child a registry would
/// pick for it (linux/amd64 first, as distribution does), decided in its
/// own right; the tag itself stays recorded as the index.
async fn negotiate_down(
    app: &Arc<App>,
    r: &Route,
    m: Manifest,
    accept: Option<&str>,
    who: &super::gate::Requester<'_>,
) -> Result<Manifest, OciError> {
    if accepts(accept, &m.media_type) {
        return Ok(m);
    }
    let Ok(doc) = crate::oci::json::parse_strict(&m.bytes) else {
        return Ok(m);
    };
    let Some(children) = doc["manifests"].as_array() else {
        return Ok(m);
    };
    let acceptable =
        |c: &&serde_json::Value| c["mediaType"].as_str().is_some_and(|t| accepts(accept, t));
    let amd64 = |c: &&serde_json::Value| {
        c["platform"]["os"] == "linux" && c["platform"]["architecture"] == "amd64"
    };
    let pick = children
        .iter()
        .filter(acceptable)
        .find(amd64)
        .or_else(|| children.iter().find(acceptable));
    let Some(Ok(child)) = pick
        .and_then(|c| c["digest"].as_str())
        .map(|d| d.parse::<Digest>())
    else {
        return Ok(m);
    };
    let reference = Reference::Digest(child);
    let cm = get_manifest(app, r, &reference, accept).await?;
    let subject = super::gate::Subject {
        route: r,
        reference: &reference,
        manifest: &cm,
    };
    super::gate::admit_manifest(app, &subject, who).await?;
    Ok(cm)
}

/// A manifest as served: exact bytes, digest, media type.
pub struct Manifest {
    pub bytes: Bytes,
    pub digest: Digest,
    pub media_type: String,
}

fn manifest_response(m: &Manifest, head: bool) -> Response<RespBody> {
    let mut r = Response::new(if head { empty() } else { full(m.bytes.clone()) });
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&m.media_type) {
        h.insert(CONTENT_TYPE, v);
    }
    h.insert(CONTENT_LENGTH, HeaderValue::from(m.bytes.len()));
    digest_headers(h, &m.digest);
    r
}

fn digest_headers(h: &mut HeaderMap, d: &Digest) {
    if let Ok(v) = HeaderValue::from_str(&d.to_string()) {
        h.insert(DIGEST_HEADER, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"{d}\"")) {
        h.insert(ETAG, v);
    }
}

fn cached_manifest(app: &App, d: &Digest) -> Option<Manifest> {
    let bytes = app.store.read_small(d, MAX_MANIFEST_BYTES)?;
    let media_type = app
        .store
        .media_type(d)
        .unwrap_or_else(|| content_type_for(None, &bytes));
    Some(Manifest {
        bytes: Bytes::from(bytes),
        digest: d.clone(),
        media_type,
    })
}

pub async fn read_error_body(resp: Response<Incoming>, idle: Duration) -> (StatusCode, Bytes) {
    let status = resp.status();
    let body = tokio::time::timeout(
        idle,
        Limited::new(resp.into_body(), MAX_ERROR_BODY).collect(),
    )
    .await
    .ok()
    .and_then(|r| r.ok())
    .map(|c| c.to_bytes())
    .unwrap_or_default();
    (status, body)
}

/// Read a whole upstream body of at most `max` bytes (`what` names it in
/// errors): a stall or a broken connection is `UNAVAILABLE`, a larger body
/// is `too_big()`.
async fn read_upstream_body(
    up: &crate::upstream::Upstream,
    resp: Response<Incoming>,
    max: usize,
    what: &str,
    too_big: impl FnOnce() -> OciError,
) -> Result<Bytes, OciError> {
    let unavailable = |message: String| {
        OciError::from(UpstreamError::Unreachable {
            upstream: up.name.clone(),
            message,
        })
    };
    match tokio::time::timeout(
        up.idle_timeout(),
        Limited::new(resp.into_body(), max).collect(),
    )
    .await
    {
        Err(_) => Err(unavailable(format!("{what} timed out"))),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_big()),
        Ok(Err(e)) => Err(unavailable(format!("{what}: {e}"))),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

/// Resolve and return a manifest by tag or digest, as the repository holds
/// it: tags trusted for `tag_ttl`, then revalidated with a HEAD; upstream
/// down → last known mapping. The upstream is always asked with every
/// manifest type (plus `accept`'s), so a tag is recorded only from an
/// answer about the tag itself, never a platform-resolved child; the
/// caller negotiates down for its client.
pub async fn get_manifest(
    app: &Arc<App>,
    r: &Route,
    reference: &Reference,
    accept: Option<&str>,
) -> Result<Manifest, OciError> {
    let accept = upstream_accept(accept);
    let m = match reference {
        Reference::Digest(d) => match cached_manifest(app, d) {
            Some(m) => {
                app.metrics.cache("manifest", true);
                if !app.holdings.holds(&r.canonical, d, Held::Manifest) {
                    confirm_held(r, Held::Manifest, d).await?;
                }
                m
            }
            None => {
                app.metrics.cache("manifest", false);
                fetch_manifest(app, r, reference, &accept).await?
            }
        },
        Reference::Tag(tag) => manifest_by_tag(app, r, tag, &accept).await?,
    };
    if !app.holdings.holds(&r.canonical, &m.digest, Held::Manifest) {
        if let Ok(summary) = media::ManifestSummary::parse(&m.bytes) {
            app.registry_holds_manifest(&r.canonical, &m.digest, &summary);
        }
    }
    Ok(m)
}

/// A tag from the tag memory when fresh (or revalidated), else the upstream.
async fn manifest_by_tag(
    app: &Arc<App>,
    r: &Route,
    tag: &str,
    accept: &str,
) -> Result<Manifest, OciError> {
    let reference = Reference::Tag(tag.to_string());
    let cached = app
        .tags
        .get(&r.canonical, tag)
        .and_then(|e| cached_manifest(app, &e.digest).map(|m| (e, m)));
    let Some((entry, m)) = cached else {
        app.metrics.cache("manifest", false);
        return fetch_manifest(app, r, &reference, accept).await;
    };
    if entry
        .confirmed
        .is_some_and(|t| t.elapsed() < app.config.tag_ttl)
    {
        app.metrics.cache("manifest", true);
        return Ok(m);
    }
    // Stale: ask the upstream whether the tag still points here.
    match head_manifest_digest(r, tag, Some(accept)).await {
        Ok(Some(d)) if d == entry.digest => {
            app.metrics.cache("manifest", true);
            let _ = app.tags.confirm(&r.canonical, tag, &d, &m.media_type);
            Ok(m)
        }
        Ok(_) => {
            app.metrics.cache("manifest", false);
            match fetch_manifest(app, r, &reference, accept).await {
                Err(e) if is_unreachable(&e) => Ok(serve_stale(app, r, tag, m, &e)),
                other => other,
            }
        }
        Err(e) if is_unreachable(&e) => Ok(serve_stale(app, r, tag, m, &e)),
        Err(e) => Err(e),
    }
}

/// A tag read straight from the upstream, bypassing the tag memory (the
/// cosign signature tags, which signers rewrite in place); the last known
/// answer only when the upstream is unreachable.
pub async fn get_manifest_fresh(
    app: &Arc<App>,
    r: &Route,
    tag: &str,
    accept: Option<&str>,
) -> Result<Manifest, OciError> {
    let accept = upstream_accept(accept);
    match fetch_manifest(app, r, &Reference::Tag(tag.to_string()), &accept).await {
        Err(e) if is_unreachable(&e) => {
            get_manifest(app, r, &Reference::Tag(tag.to_string()), Some(&accept)).await
        }
        other => other,
    }
}

/// Ask the upstream whether `r`'s repository has `d` (a cached copy came
/// from elsewhere, or a download another repository started).
async fn confirm_held(r: &Route, kind: Held, d: &Digest) -> Result<(), OciError> {
    let (suffix, headers, object, what) = match kind {
        Held::Manifest => (
            format!("manifests/{d}"),
            manifest_accept(None),
            Object::Manifest,
            "manifest",
        ),
        Held::Blob => (format!("blobs/{d}"), HeaderMap::new(), Object::Blob, "blob"),
    };
    let resp = r
        .upstream
        .pull(Method::HEAD, r.path.as_str(), &suffix, None, headers)
        .await?;
    match resp.status() {
        StatusCode::OK => Ok(()),
        s if s.is_server_error() => Err(OciError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            format!(
                "upstream {} answered {s}; modelgate cannot confirm that {} has {what} {d}",
                r.upstream.name, r.canonical
            ),
        )),
        s => Err(upstream_status(&r.upstream.name, s, b"", object)),
    }
}

/// What modelgate asks an upstream for: every manifest type, plus what the
/// client asked for.
fn upstream_accept(client: Option<&str>) -> String {
    let mut types: Vec<&str> = DEFAULT_MANIFEST_ACCEPT.split(", ").collect();
    for t in client.unwrap_or("").split(',') {
        let t = t.split(';').next().unwrap_or("").trim();
        if !t.is_empty() && !types.contains(&t) {
            types.push(t);
        }
    }
    types.join(", ")
}

fn is_unreachable(e: &OciError) -> bool {
    e.code == ErrorCode::Unavailable
}

fn serve_stale(app: &App, r: &Route, tag: &str, m: Manifest, why: &OciError) -> Manifest {
    app.metrics
        .stale_served
        .get_or_create(&UpstreamLabels {
            upstream: r.upstream.name.clone(),
        })
        .inc();
    tracing::warn!(
        upstream = %r.upstream.name, repository = %r.canonical, tag, digest = %m.digest,
        "upstream unavailable ({}); serving the last known tag mapping", why.message
    );
    m
}

fn manifest_accept(accept: Option<&str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    let a = accept
        .filter(|a| !a.trim().is_empty())
        .unwrap_or(DEFAULT_MANIFEST_ACCEPT);
    if let Ok(v) = HeaderValue::from_str(a) {
        h.insert(ACCEPT, v);
    }
    h
}

/// HEAD the tag upstream: the digest it names (None when the tag does not
/// exist or the upstream names no digest).
pub async fn head_manifest_digest(
    r: &Route,
    tag: &str,
    accept: Option<&str>,
) -> Result<Option<Digest>, OciError> {
    let resp = r
        .upstream
        .pull(
            Method::HEAD,
            r.path.as_str(),
            &format!("manifests/{tag}"),
            None,
            manifest_accept(accept),
        )
        .await?;
    let status = resp.status();
    match status {
        StatusCode::OK => Ok(resp
            .headers()
            .get(DIGEST_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())),
        StatusCode::NOT_FOUND => Ok(None),
        s if s.is_server_error() => Err(OciError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            format!("upstream {} answered {status}", r.upstream.name),
        )),
        _ => Err(upstream_status(
            &r.upstream.name,
            status,
            b"",
            Object::Manifest,
        )),
    }
}

/// GET a manifest upstream, verify it, cache it.
async fn fetch_manifest(
    app: &App,
    r: &Route,
    reference: &Reference,
    accept: &str,
) -> Result<Manifest, OciError> {
    let up = &r.upstream;
    let resp = up
        .pull(
            Method::GET,
            r.path.as_str(),
            &format!("manifests/{reference}"),
            None,
            manifest_accept(Some(accept)),
        )
        .await?;
    if resp.status() != StatusCode::OK {
        let (status, body) = read_error_body(resp, up.idle_timeout()).await;
        let mut e = upstream_status(&up.name, status, &body, Object::Manifest);
        if status.is_server_error() {
            e.status = StatusCode::SERVICE_UNAVAILABLE;
        }
        return Err(e);
    }
    let too_big = || {
        OciError::new(
            StatusCode::BAD_GATEWAY,
            ErrorCode::ManifestInvalid,
            format!(
                "upstream {} manifest {reference} of {} is larger than {MAX_MANIFEST_BYTES} bytes; modelgate refuses it",
                up.name, r.canonical
            ),
        )
    };
    let declared_len = resp
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_len.is_some_and(|n| n > MAX_MANIFEST_BYTES as u64) {
        return Err(too_big());
    }
    let header_digest = resp
        .headers()
        .get(DIGEST_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let header_type = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let what = format!("manifest {reference}");
    let bytes = read_upstream_body(up, resp, MAX_MANIFEST_BYTES, &what, too_big).await?;
    let digest = Digest::of(&bytes);
    let mismatch = |claimed: &str| {
        app.metrics.digest_mismatch(&up.name);
        tracing::error!(upstream = %up.name, repository = %r.canonical, reference = %reference, claimed, actual = %digest,
            "digest mismatch on a manifest; refused, nothing cached");
        OciError::new(
            StatusCode::BAD_GATEWAY,
            ErrorCode::DigestInvalid,
            format!("upstream {} sent manifest bytes for {reference} that hash to {digest}, not {claimed}", up.name),
        )
    };
    if let Reference::Digest(want) = reference {
        if want != &digest {
            return Err(mismatch(&want.to_string()));
        }
    }
    if let Some(h) = header_digest.as_deref() {
        if h.starts_with("sha256:") && h != digest.to_string() {
            return Err(mismatch(h));
        }
    }
    let media_type = content_type_for(header_type.as_deref(), &bytes);
    if let Err(e) = app.store.put_bytes(&digest, &bytes, Some(&media_type)) {
        tracing::error!(error = %e, "cannot cache manifest {digest}");
    }
    app.metrics.cache_bytes.set(app.store.total_bytes() as i64);
    if let Reference::Tag(tag) = reference {
        if let Err(e) = app.tags.confirm(&r.canonical, tag, &digest, &media_type) {
            tracing::error!(error = %e, "cannot record tag {tag} of {}", r.canonical);
        }
    }
    app.metrics.served("upstream", bytes.len() as u64);
    Ok(Manifest {
        bytes,
        digest,
        media_type,
    })
}

/// A signature artifact's payload: read whole (it must be small), verified,
/// served in one piece.
async fn serve_small_blob(
    app: &Arc<App>,
    r: &Route,
    d: &Digest,
    head: bool,
) -> Result<Response<RespBody>, OciError> {
    let max = super::gate::MAX_SIGNATURE_BLOB;
    if app.store.size_of(d).is_some_and(|n| n > max as u64) {
        return Err(too_big_for_a_signature(r, d));
    }
    let bytes = fetch_small_blob(app, r, d, max).await.map_err(|e| {
        if e.code == ErrorCode::BlobUnknown && e.status == StatusCode::BAD_GATEWAY {
            too_big_for_a_signature(r, d)
        } else {
            e
        }
    })?;
    app.metrics.served("cache", bytes.len() as u64);
    let mut resp = Response::new(if head { empty() } else { full(bytes.clone()) });
    blob_headers(resp.headers_mut(), d, bytes.len() as u64);
    Ok(resp)
}

fn too_big_for_a_signature(r: &Route, d: &Digest) -> OciError {
    OciError::new(
        StatusCode::FORBIDDEN,
        ErrorCode::Denied,
        format!(
            "blob {d} of {} is referenced only by a signature artifact, and is larger than the {} bytes a signature payload may have; pull the image it belongs to so its manifest is checked",
            r.canonical,
            super::gate::MAX_SIGNATURE_BLOB
        ),
    )
}

/// GET or HEAD `blobs/<d>` of `path` at `up`.
async fn upstream_blob(
    up: &crate::upstream::Upstream,
    method: Method,
    path: &RepoName,
    d: &Digest,
) -> Result<Response<Incoming>, UpstreamError> {
    up.pull(
        method,
        path.as_str(),
        &format!("blobs/{d}"),
        None,
        HeaderMap::new(),
    )
    .await
}

/// A parsed single `Range: bytes=...` header. `None` means serve it all.
fn parse_range(h: &str, size: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = h.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None; // multiple ranges: a full 200 is a valid answer
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let r = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 || size == 0 {
            return Some(Err(()));
        }
        (size.saturating_sub(n), size - 1)
    } else {
        let start: u64 = a.parse().ok()?;
        let end: u64 = if b.is_empty() {
            size.saturating_sub(1)
        } else {
            b.parse().ok()?
        };
        if start >= size || end < start {
            return Some(Err(()));
        }
        (start, end.min(size - 1))
    };
    Some(Ok(r))
}

fn blob_headers(h: &mut HeaderMap, d: &Digest, len: u64) {
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    digest_headers(h, d);
}

/// Serve a committed blob, honouring Range.
fn serve_cached_blob(
    app: &App,
    d: &Digest,
    file: Arc<std::fs::File>,
    size: u64,
    head: bool,
    range: Option<&str>,
) -> Response<RespBody> {
    let (status, start, end) = match range.and_then(|r| parse_range(r, size)) {
        None => (StatusCode::OK, 0, size),
        Some(Ok((a, b))) => (StatusCode::PARTIAL_CONTENT, a, b + 1),
        Some(Err(())) => {
            let e = OciError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                ErrorCode::RangeInvalid,
                format!(
                    "range {:?} is outside blob {d} of {size} bytes",
                    range.unwrap_or_default()
                ),
            );
            let mut r = error_response(&e, head);
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(CONTENT_RANGE, v);
            }
            return r;
        }
    };
    let body = if head {
        empty()
    } else {
        stream(flight::stream_file(file, start, end, app.metrics.clone()))
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    blob_headers(r.headers_mut(), d, end - start);
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1)) {
            r.headers_mut().insert(CONTENT_RANGE, v);
        }
    }
    r
}

async fn get_blob(
    app: &Arc<App>,
    r: &Route,
    d: &Digest,
    head: bool,
    range: Option<&str>,
) -> Result<Response<RespBody>, OciError> {
    if app.store.media_type(d).is_some() {
        return Err(OciError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::BlobUnknown,
            format!("{d} is a manifest, not a blob; fetch it under /v2/<name>/manifests/{d}"),
        ));
    }
    // Content this repository is not known to hold (cached for another
    // name, or being downloaded for one) is served only once the upstream
    // confirms the repository has it.
    let held = app.holdings.holds(&r.canonical, d, Held::Blob);
    if !held && (app.store.size_of(d).is_some() || app.flights.get(d).is_some()) {
        confirm_held(r, Held::Blob, d).await?;
        app.holdings.hold(&r.canonical, d, Held::Blob);
    }
    if let Some((file, size)) = app.store.open_blob(d) {
        app.metrics.cache("blob", true);
        return Ok(serve_cached_blob(app, d, Arc::new(file), size, head, range));
    }
    // Verified and being committed: as good as cached.
    if let Some(FetchState::Done { size, file }) = app.flights.get(d).map(|rx| rx.borrow().clone())
    {
        app.metrics.cache("blob", true);
        return Ok(serve_cached_blob(app, d, file, size, head, range));
    }
    app.metrics.cache("blob", false);
    let up = r.upstream.clone();
    if head {
        let resp = upstream_blob(&up, Method::HEAD, &r.path, d).await?;
        if resp.status() != StatusCode::OK {
            if resp.status() == StatusCode::NOT_FOUND {
                app.holdings.release(&r.canonical, d);
            }
            return Err(upstream_status(&up.name, resp.status(), b"", Object::Blob));
        }
        app.holdings.hold(&r.canonical, d, Held::Blob);
        let len = resp
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let mut out = Response::new(empty());
        blob_headers(out.headers_mut(), d, len);
        return Ok(out);
    }
    // The client that starts the download is fed from memory; ranges are
    // served only once the whole blob verified, so they need no feed.
    let mut leader_rx = None;
    let (mut rx, started) = app.flights.join_or_start(d, |tx| {
        let leader = if range.is_none() {
            let (l, lrx) = Leader::channel();
            leader_rx = Some(lrx);
            Some(l)
        } else {
            None
        };
        let app = app.clone();
        let path = r.path.clone();
        let d = d.clone();
        async move { download_blob(app, up, path, d, tx, leader).await }
    });
    if !started {
        app.metrics.fetches_coalesced.inc();
        if !app.holdings.holds(&r.canonical, d, Held::Blob) {
            // Joined a download that another repository started.
            confirm_held(r, Held::Blob, d).await?;
        }
    }
    flight::wait_started(&mut rx).await?;
    app.holdings.hold(&r.canonical, d, Held::Blob);
    if range.is_some() {
        // Bytes of a range cannot be checked by the client: serve ranges
        // only from the verified blob.
        flight::wait_done(&mut rx).await?;
        let FetchState::Done { size, file } = rx.borrow().clone() else {
            return Err(OciError::new(
                StatusCode::BAD_GATEWAY,
                ErrorCode::Unknown,
                "download state lost",
            ));
        };
        return Ok(serve_cached_blob(app, d, file, size, false, range));
    }
    let size = match &*rx.borrow() {
        FetchState::Streaming { size, .. } | FetchState::PassThrough { size } => *size,
        FetchState::Done { size, .. } => Some(*size),
        _ => None,
    };
    let body = match leader_rx {
        Some(lrx) => stream(flight::stream_leader(lrx, rx, app.metrics.clone())),
        None => stream(flight::stream_flight(rx, app.metrics.clone())),
    };
    let mut resp = Response::new(body);
    blob_headers(resp.headers_mut(), d, size.unwrap_or(0));
    if size.is_none() {
        resp.headers_mut().remove(CONTENT_LENGTH);
    }
    Ok(resp)
}

async fn download_blob(
    app: Arc<App>,
    up: Arc<crate::upstream::Upstream>,
    path: RepoName,
    d: Digest,
    tx: tokio::sync::watch::Sender<FetchState>,
    leader: Option<Leader>,
) {
    // It may have landed between the caller's cache check and now.
    if let Some((file, size)) = app.store.open_blob(&d) {
        tx.send_replace(FetchState::Done {
            size,
            file: Arc::new(file),
        });
        return;
    }
    let resp = match upstream_blob(&up, Method::GET, &path, &d).await {
        Ok(r) => r,
        Err(e) => {
            tx.send_replace(FetchState::Failed(e.into()));
            return;
        }
    };
    if resp.status() != StatusCode::OK {
        let (status, body) = read_error_body(resp, up.idle_timeout()).await;
        tx.send_replace(FetchState::Failed(upstream_status(
            &up.name,
            status,
            &body,
            Object::Blob,
        )));
        return;
    }
    let size = resp
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let dl = Download {
        store: app.store.clone(),
        metrics: app.metrics.clone(),
        digest: d,
        upstream: up.name.clone(),
        idle_timeout: up.idle_timeout(),
        min_free: app.config.min_free_bytes,
    };
    dl.run(tx, size, resp.into_body(), leader).await;
}

/// Rewrite an upstream `Link: <...>; rel="next"` to point at modelgate under
/// the name the client used.
fn rewrite_link(link: &str, client_name: &RepoName, ns: Option<&str>) -> Option<String> {
    let start = link.find('<')? + 1;
    let end = link[start..].find('>')? + start;
    let target = &link[start..end];
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let mut pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k != "ns")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if let Some(ns) = ns {
        pairs.push(("ns".into(), ns.into()));
    }
    let q = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    let path = target.split_once('?').map(|(p, _)| p).unwrap_or(target);
    let suffix = if path.ends_with("/tags/list") {
        "tags/list"
    } else {
        return None;
    };
    Some(format!(
        "</v2/{client_name}/{suffix}?{q}>{}",
        &link[end + 1..]
    ))
}

async fn tags_list(
    r: &Route,
    client_name: &RepoName,
    query: Option<&str>,
) -> Result<Response<RespBody>, OciError> {
    let up = &r.upstream;
    // Pass through the paging parameters, nothing else.
    let q: Vec<(String, String)> = url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(|(k, _)| k == "n" || k == "last")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let q = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(q)
        .finish();
    let resp = up
        .pull(
            Method::GET,
            r.path.as_str(),
            "tags/list",
            Some(&q),
            HeaderMap::new(),
        )
        .await?;
    if resp.status() != StatusCode::OK {
        let (status, body) = read_error_body(resp, up.idle_timeout()).await;
        return Err(upstream_status(&up.name, status, &body, Object::Repository));
    }
    let link = resp
        .headers()
        .get(LINK)
        .and_then(|v| v.to_str().ok())
        .and_then(|l| rewrite_link(l, client_name, r.ns.as_deref()));
    let max = 16 * MAX_MANIFEST_BYTES;
    let too_big = || {
        OciError::new(
            StatusCode::BAD_GATEWAY,
            ErrorCode::Unknown,
            format!(
                "upstream {} tags list is larger than {max} bytes; page with ?n=",
                up.name
            ),
        )
    };
    let body = read_upstream_body(up, resp, max, "tags list", too_big).await?;
    let mut out = Response::new(full(body.clone()));
    out.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    out.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    if let Some(v) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
        out.headers_mut().insert(LINK, v);
    }
    Ok(out)
}

fn index_response(body: Vec<u8>, filtered: bool) -> Response<RespBody> {
    let len = body.len();
    let mut out = Response::new(full(body));
    out.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(OCI_INDEX));
    out.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(len));
    if filtered {
        out.headers_mut().insert(
            "OCI-Filters-Applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    out
}

/// Keep only descriptors of `artifact_type` in an index document.
fn filter_index(doc: &[u8], artifact_type: Option<&str>) -> Result<Vec<u8>, String> {
    let mut v: serde_json::Value = serde_json::from_slice(doc).map_err(|e| e.to_string())?;
    let list = v
        .get_mut("manifests")
        .and_then(|m| m.as_array_mut())
        .ok_or("not an index: no manifests list")?;
    if let Some(t) = artifact_type {
        list.retain(|d| d.get("artifactType").and_then(|a| a.as_str()) == Some(t));
    }
    let out = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": list,
    });
    serde_json::to_vec(&out).map_err(|e| e.to_string())
}

/// Referrers of `d` as an index document: the upstream's referrers API when
/// it has one, else the `sha256-<hex>` tag-schema index, else an empty
/// index. Returns the document and whether the artifactType filter applied.
pub async fn referrers_index(
    app: &Arc<App>,
    r: &Route,
    d: &Digest,
    artifact_type: Option<&str>,
) -> Result<(Vec<u8>, bool), OciError> {
    let up = &r.upstream;
    let bad = |e: String| {
        OciError::new(
            StatusCode::BAD_GATEWAY,
            ErrorCode::ManifestInvalid,
            format!("upstream {} referrers of {d}: {e}", up.name),
        )
    };
    let q = artifact_type.map(|t| {
        url::form_urlencoded::Serializer::new(String::new())
            .append_pair("artifactType", t)
            .finish()
    });
    let mut h = HeaderMap::new();
    h.insert(ACCEPT, HeaderValue::from_static(OCI_INDEX));
    let resp = up
        .pull(
            Method::GET,
            r.path.as_str(),
            &format!("referrers/{d}"),
            q.as_deref(),
            h,
        )
        .await?;
    let is_index = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|t| t.split(';').next().unwrap_or("").trim() == OCI_INDEX)
        .unwrap_or(false);
    if resp.status() == StatusCode::OK && is_index {
        let applied = resp.headers().get("OCI-Filters-Applied").is_some();
        let too_big = || bad(format!("larger than {MAX_MANIFEST_BYTES} bytes"));
        let body = read_upstream_body(up, resp, MAX_MANIFEST_BYTES, "referrers", too_big).await?;
        if applied || artifact_type.is_none() {
            return Ok((body.to_vec(), applied));
        }
        return Ok((filter_index(&body, artifact_type).map_err(bad)?, true));
    }
    if resp.status().is_server_error() {
        let (status, body) = read_error_body(resp, up.idle_timeout()).await;
        return Err(upstream_status(&up.name, status, &body, Object::Manifest));
    }
    drop(resp);
    // No referrers API: the tag schema fallback.
    let empty = || filter_index(br#"{"manifests":[]}"#, None).unwrap_or_default();
    // Signers rewrite this index in place: always ask the upstream.
    match get_manifest_fresh(app, r, &d.tag_schema(), Some(OCI_INDEX)).await {
        Ok(m)
            if media::ManifestSummary::parse(&m.bytes)
                .map(|s| s.is_index())
                .unwrap_or(false) =>
        {
            Ok((
                filter_index(&m.bytes, artifact_type).map_err(bad)?,
                artifact_type.is_some(),
            ))
        }
        Ok(_) => Ok((empty(), artifact_type.is_some())),
        Err(e) if e.status == StatusCode::NOT_FOUND => Ok((empty(), artifact_type.is_some())),
        Err(e) => Err(e),
    }
}

async fn referrers(
    app: &Arc<App>,
    r: &Route,
    d: &Digest,
    artifact_type: Option<&str>,
) -> Result<Response<RespBody>, OciError> {
    let (body, filtered) = referrers_index(app, r, d, artifact_type).await?;
    Ok(index_response(body, filtered))
}

/// A small blob (a config, a signature payload) read whole: from the cache,
/// or fetched, verified against its digest and cached.
pub async fn fetch_small_blob(
    app: &App,
    r: &Route,
    d: &Digest,
    max: usize,
) -> Result<Bytes, OciError> {
    if let Some(b) = app.store.read_small(d, max) {
        return Ok(Bytes::from(b));
    }
    let up = &r.upstream;
    let resp = upstream_blob(up, Method::GET, &r.path, d).await?;
    if resp.status() != StatusCode::OK {
        let (status, body) = read_error_body(resp, up.idle_timeout()).await;
        return Err(upstream_status(&up.name, status, &body, Object::Blob));
    }
    let too_big = || {
        OciError::new(
            StatusCode::BAD_GATEWAY,
            ErrorCode::BlobUnknown,
            format!("upstream {} blob {d} is larger than {max} bytes", up.name),
        )
    };
    let bytes = read_upstream_body(up, resp, max, &format!("blob {d}"), too_big).await?;
    if Digest::of(&bytes) != *d {
        app.metrics.digest_mismatch(&up.name);
        tracing::error!(upstream = %up.name, digest = %d, "digest mismatch on a small blob; refused, nothing cached");
        return Err(OciError::new(
            StatusCode::BAD_GATEWAY,
            ErrorCode::DigestInvalid,
            format!(
                "upstream {} sent bytes for {d} that do not match it",
                up.name
            ),
        ));
    }
    if let Err(e) = app.store.put_bytes(d, &bytes, None) {
        tracing::warn!(error = %e, "cannot cache blob {d}");
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=500-1499", 5000), Some(Ok((500, 1499))));
        assert_eq!(parse_range("bytes=500-", 5000), Some(Ok((500, 4999))));
        assert_eq!(parse_range("bytes=-500", 5000), Some(Ok((4500, 4999))));
        assert_eq!(parse_range("bytes=2000-5000", 3000), Some(Ok((2000, 2999))));
        assert_eq!(parse_range("bytes=500-0", 5000), Some(Err(())));
        assert_eq!(parse_range("bytes=5000-10000", 5000), Some(Err(())));
        assert_eq!(parse_range("bytes=0-1,5-6", 5000), None);
        assert_eq!(parse_range("items=0-1", 5000), None);
    }

    #[test]
    fn link_rewrite() {
        let name = RepoName::parse("docker.io/library/alpine").unwrap();
        let l = rewrite_link(
            r#"</v2/library/alpine/tags/list?last=b&n=2>; rel="next""#,
            &name,
            None,
        )
        .unwrap();
        assert_eq!(
            l,
            r#"</v2/docker.io/library/alpine/tags/list?last=b&n=2>; rel="next""#
        );
        let name = RepoName::parse("library/alpine").unwrap();
        let l = rewrite_link(
            r#"<https://up.example/v2/library/alpine/tags/list?n=2&last=b>; rel="next""#,
            &name,
            Some("docker.io"),
        )
        .unwrap();
        assert_eq!(
            l,
            r#"</v2/library/alpine/tags/list?n=2&last=b&ns=docker.io>; rel="next""#
        );
    }

    #[test]
    fn index_filtering() {
        let doc = br#"{"schemaVersion":2,"manifests":[{"digest":"a","artifactType":"x"},{"digest":"b","artifactType":"y"},{"digest":"c"}]}"#;
        let v: serde_json::Value =
            serde_json::from_slice(&filter_index(doc, Some("y")).unwrap()).unwrap();
        assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
        assert_eq!(v["mediaType"], OCI_INDEX);
        let v: serde_json::Value =
            serde_json::from_slice(&filter_index(doc, None).unwrap()).unwrap();
        assert_eq!(v["manifests"].as_array().unwrap().len(), 3);
    }
}
