//! The write side: blob uploads proxied to the upstream with SHA-256
//! computed in flight across chunks, and manifest PUTs decided by the policy
//! before the upstream sees them.
//!
//! Invariants:
//! - request bodies stream through (bounded channel), never buffered whole,
//!   except manifests (4 MiB cap);
//! - the last frame of a digest-completing body is held back until the
//!   digest verified; on a mismatch the upstream request is aborted, so the
//!   upstream never completes an upload whose bytes do not match its digest;
//! - a tag appears upstream only after the policy admitted it;
//! - upload sessions are bounded in number and expire when idle.

use super::body::{empty, RespBody};
use super::gate::{self, Decided, Requester};
use super::pull::{read_error_body, Manifest};
use super::App;
use crate::cache::Held;
use crate::error::{upstream_status, Object};
use crate::oci::media::{self, ManifestSummary, MAX_MANIFEST_BYTES};
use crate::oci::{Digest, ErrorCode, OciError, Reference, RepoName, Sha256Hasher};
use crate::policy::eval::evaluate;
use crate::policy::{Decision, PolicyDecision};
use crate::upstream::client::{BoxError, ReqBody};
use crate::upstream::Route;
use bytes::Bytes;
use dashmap::DashMap;
use http::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Mutex};
use url::Url;

/// One upload in progress.
pub struct UploadSession {
    route: Route,
    client_name: RepoName,
    /// Where the upstream wants the next request of this upload.
    upstream_url: Url,
    offset: u64,
    hasher: Sha256Hasher,
    last_used: Instant,
    /// The client's claim on the session limits, released with the session.
    _slot: UploadSlot,
}

/// Sessions held, in all and per client address.
#[derive(Default)]
struct SlotCounts {
    total: std::sync::atomic::AtomicUsize,
    per_client: DashMap<std::net::IpAddr, usize>,
}

/// One client's claim on an upload session; released when dropped.
pub struct UploadSlot {
    counts: Arc<SlotCounts>,
    ip: std::net::IpAddr,
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        self.counts
            .total
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if let dashmap::mapref::entry::Entry::Occupied(mut e) =
            self.counts.per_client.entry(self.ip)
        {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

/// Upload sessions, bounded in number (in all and per client address),
/// expiring when idle. An expired or refused session is cancelled at the
/// upstream too.
pub struct Uploads {
    map: DashMap<String, Arc<Mutex<UploadSession>>>,
    counts: Arc<SlotCounts>,
    max: usize,
    max_per_client: usize,
    idle: Duration,
    metrics: Arc<crate::metrics::Metrics>,
}

fn err(status: StatusCode, code: ErrorCode, msg: impl Into<String>) -> OciError {
    OciError::new(status, code, msg)
}

fn unknown_upload(id: &str) -> OciError {
    err(
        StatusCode::NOT_FOUND,
        ErrorCode::BlobUploadUnknown,
        format!(
            "upload {id} is unknown or expired; start a new upload with POST .../blobs/uploads/"
        ),
    )
}

/// Cancel an upload at the upstream, in the background.
fn cancel_upstream(route: Route, url: Url) {
    tokio::spawn(async move {
        let scope = push_scope(&route);
        let _ = route
            .upstream
            .request(Method::DELETE, url, HeaderMap::new(), &scope, Bytes::new())
            .await;
    });
}

impl Uploads {
    pub fn new(
        max: usize,
        max_per_client: usize,
        idle: Duration,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Uploads {
        Uploads {
            map: DashMap::new(),
            counts: Arc::default(),
            max,
            max_per_client,
            idle,
            metrics,
        }
    }

    /// Claim a session slot for `ip` before anything is opened upstream.
    fn reserve(&self, ip: std::net::IpAddr) -> Result<UploadSlot, OciError> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.counts.total.load(Relaxed) >= self.max {
            self.expire();
        }
        if self.counts.total.load(Relaxed) >= self.max {
            crate::metrics::Metrics::reason(&self.metrics.uploads_refused, "limit");
            return Err(err(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::TooManyRequests,
                format!(
                    "{} uploads are in progress, the most modelgate keeps; retry later",
                    self.max
                ),
            ));
        }
        let mut mine = self.counts.per_client.entry(ip).or_insert(0);
        if *mine >= self.max_per_client {
            drop(mine);
            crate::metrics::Metrics::reason(&self.metrics.uploads_refused, "per_client");
            return Err(err(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::TooManyRequests,
                format!(
                    "this address has {} uploads in progress, the most one client may hold; finish or cancel one first",
                    self.max_per_client
                ),
            ));
        }
        *mine += 1;
        drop(mine);
        self.counts.total.fetch_add(1, Relaxed);
        Ok(UploadSlot {
            counts: self.counts.clone(),
            ip,
        })
    }

    fn insert(&self, s: UploadSession) -> Result<String, OciError> {
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw).map_err(|e| {
            err(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Unknown,
                format!("no randomness: {e}"),
            )
        })?;
        let id = hex::encode(raw);
        self.map.insert(id.clone(), Arc::new(Mutex::new(s)));
        Ok(id)
    }

    /// Forget a session (finished, cancelled or failed).
    fn remove(&self, id: &str) {
        self.map.remove(id);
    }

    async fn get(&self, id: &str, repo: &str) -> Result<Arc<Mutex<UploadSession>>, OciError> {
        let s = self
            .map
            .get(id)
            .map(|s| s.clone())
            .ok_or_else(|| unknown_upload(id))?;
        {
            let g = s.lock().await;
            if g.route.canonical != repo {
                return Err(unknown_upload(id));
            }
            if g.last_used.elapsed() > self.idle {
                cancel_upstream(g.route.clone(), g.upstream_url.clone());
                drop(g);
                self.remove(id);
                return Err(err(
                    StatusCode::NOT_FOUND,
                    ErrorCode::BlobUploadUnknown,
                    format!(
                        "upload {id} expired after {} idle; start again",
                        humantime::format_duration(self.idle)
                    ),
                ));
            }
        }
        Ok(s)
    }

    /// Drop idle sessions and cancel them at the upstream; returns how many.
    pub fn expire(&self) -> usize {
        let mut expired = Vec::new();
        self.map.retain(|_, s| match s.try_lock() {
            Ok(g) if g.last_used.elapsed() > self.idle => {
                expired.push((g.route.clone(), g.upstream_url.clone()));
                false
            }
            _ => true,
        });
        let n = expired.len();
        for (route, url) in expired {
            cancel_upstream(route, url);
        }
        n
    }

    /// How often [`Uploads::expire`] should run.
    pub fn sweep_every(&self) -> Duration {
        (self.idle / 2).clamp(Duration::from_millis(100), Duration::from_secs(30))
    }
}

fn push_scope(r: &Route) -> String {
    format!("repository:{}:pull,push", r.path)
}

/// Our Location for an upload session, under the name the client used.
fn session_location(name: &RepoName, id: &str, ns: Option<&str>) -> String {
    match ns {
        Some(ns) => format!("/v2/{name}/blobs/uploads/{id}?ns={ns}"),
        None => format!("/v2/{name}/blobs/uploads/{id}"),
    }
}

fn header(h: &mut HeaderMap, k: &'static str, v: &str) {
    if let Ok(v) = HeaderValue::from_str(v) {
        h.insert(k, v);
    }
}

fn upload_response(
    status: StatusCode,
    name: &RepoName,
    id: &str,
    ns: Option<&str>,
    offset: u64,
) -> Response<RespBody> {
    let mut r = Response::new(empty());
    *r.status_mut() = status;
    let h = r.headers_mut();
    header(h, "location", &session_location(name, id, ns));
    header(h, "range", &format!("0-{}", offset.saturating_sub(1)));
    header(h, "docker-upload-uuid", id);
    h.insert(CONTENT_LENGTH, HeaderValue::from(0));
    r
}

fn blob_created(name: &RepoName, d: &Digest) -> Response<RespBody> {
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::CREATED;
    let h = r.headers_mut();
    header(h, "location", &format!("/v2/{name}/blobs/{d}"));
    header(h, "docker-content-digest", &d.to_string());
    h.insert(CONTENT_LENGTH, HeaderValue::from(0));
    r
}

/// Where the upstream wants the next request of an upload: its `Location`,
/// resolved against the URL of the request that returned it.
fn upstream_location(r: &Route, sent_to: &Url, resp: &Response<Incoming>) -> Result<Url, OciError> {
    let loc = resp
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            err(
                StatusCode::BAD_GATEWAY,
                ErrorCode::BlobUploadInvalid,
                format!(
                    "upstream {} answered an upload without Location",
                    r.upstream.name
                ),
            )
        })?;
    sent_to.join(loc).map_err(|e| {
        err(
            StatusCode::BAD_GATEWAY,
            ErrorCode::BlobUploadInvalid,
            format!("upstream {} upload Location {loc:?}: {e}", r.upstream.name),
        )
    })
}

/// `start-end` or `bytes=start-end` (inclusive).
fn parse_content_range(v: &str) -> Option<(u64, u64)> {
    let v = v.trim();
    let v = v
        .strip_prefix("bytes=")
        .or_else(|| v.strip_prefix("bytes "))
        .unwrap_or(v);
    let v = v.split('/').next()?;
    let (a, b) = v.split_once('-')?;
    let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (b >= a).then_some((a, b))
}

/// Stream a client body into an upstream request body, hashing it. With
/// `hold`, the last frame waits for `release`: true sends it, false aborts
/// the upstream request.
struct Forward {
    body: ReqBody,
    done: oneshot::Receiver<Result<(Sha256Hasher, u64), String>>,
    release: oneshot::Sender<bool>,
}

fn forward(mut client: Incoming, mut hasher: Sha256Hasher, hold: bool, idle: Duration) -> Forward {
    let (tx, rx) = mpsc::channel::<Result<Bytes, BoxError>>(8);
    let (done_tx, done) = oneshot::channel();
    let (release, release_rx) = oneshot::channel::<bool>();
    tokio::spawn(async move {
        let mut held: Option<Bytes> = None;
        let mut n = 0u64;
        loop {
            let frame = match tokio::time::timeout(idle, client.frame()).await {
                Err(_) => {
                    let m = format!(
                        "the client sent nothing for {}",
                        humantime::format_duration(idle)
                    );
                    let _ = tx.send(Err(m.clone().into())).await;
                    let _ = done_tx.send(Err(m));
                    return;
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    let m = format!("the client's body broke off after {n} bytes: {e}");
                    let _ = tx.send(Err(m.clone().into())).await;
                    let _ = done_tx.send(Err(m));
                    return;
                }
                Ok(Some(Ok(f))) => f,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            hasher.update(&data);
            n += data.len() as u64;
            let out = if hold { held.replace(data) } else { Some(data) };
            if let Some(b) = out {
                if tx.send(Ok(b)).await.is_err() {
                    let _ = done_tx.send(Err("the upstream stopped reading the upload".into()));
                    return;
                }
            }
        }
        let _ = done_tx.send(Ok((hasher, n)));
        if hold {
            match release_rx.await {
                Ok(true) => {
                    if let Some(b) = held {
                        let _ = tx.send(Ok(b)).await;
                    }
                }
                _ => {
                    let _ = tx
                        .send(Err("digest mismatch: upload aborted by modelgate".into()))
                        .await;
                }
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|x| (x.map(Frame::data), rx))
    });
    Forward {
        body: BodyExt::boxed(StreamBody::new(stream)),
        done,
        release,
    }
}

/// Headers of a chunk of `len` bytes starting at `offset`.
fn chunk_headers(len: Option<u64>, offset: u64, with_range: bool) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(l) = len {
        h.insert(CONTENT_LENGTH, HeaderValue::from(l));
        if l > 0 && with_range {
            header(
                &mut h,
                "content-range",
                &format!("{}-{}", offset, offset + l - 1),
            );
        }
    }
    h
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Send a streamed body upstream while the client's bytes flow; settle the
/// held-back frame with `check` once the client's body ended.
async fn stream_upstream(
    r: &Route,
    method: Method,
    url: Url,
    headers: HeaderMap,
    client: Incoming,
    hasher: Sha256Hasher,
    check: Option<&Digest>,
) -> Result<(Response<Incoming>, Sha256Hasher, u64), OciError> {
    let fw = forward(client, hasher, check.is_some(), r.upstream.idle_timeout());
    let up = r.upstream.clone();
    let scope = push_scope(r);
    let task =
        tokio::spawn(async move { up.send_once(method, url, headers, &scope, fw.body).await });
    let (hasher, n) = match fw.done.await {
        Ok(Ok(x)) => x,
        Ok(Err(m)) => {
            task.abort();
            return Err(err(
                StatusCode::BAD_REQUEST,
                ErrorCode::BlobUploadInvalid,
                m,
            ));
        }
        Err(_) => {
            // The forwarder stopped because the upstream request ended early.
            return match task.await {
                Ok(Ok(resp)) => Err(upstream_failure(r, resp, Object::Blob).await),
                Ok(Err(e)) => Err(e.into()),
                Err(e) => Err(err(
                    StatusCode::BAD_GATEWAY,
                    ErrorCode::Unknown,
                    e.to_string(),
                )),
            };
        }
    };
    if let Some(want) = check {
        let actual = hasher.clone().finish();
        let ok = &actual == want;
        let _ = fw.release.send(ok);
        if !ok {
            task.abort();
            return Err(err(
                StatusCode::BAD_REQUEST,
                ErrorCode::DigestInvalid,
                format!("the uploaded bytes hash to {actual}, not {want}; the upload was not completed upstream"),
            ));
        }
    }
    match task.await {
        Ok(Ok(resp)) => Ok((resp, hasher, n)),
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(err(
            StatusCode::BAD_GATEWAY,
            ErrorCode::Unknown,
            e.to_string(),
        )),
    }
}

async fn upstream_failure(r: &Route, resp: Response<Incoming>, what: Object) -> OciError {
    let (status, body) = read_error_body(resp, r.upstream.idle_timeout()).await;
    upstream_status(&r.upstream.name, status, &body, what)
}

/// `/v2/<name>/blobs/uploads/[<id>]`, every method.
pub async fn upload(
    app: &Arc<App>,
    r: Route,
    name: RepoName,
    id: Option<String>,
    req: Request<Incoming>,
    query: Option<&str>,
    client_ip: std::net::IpAddr,
) -> Result<Response<RespBody>, OciError> {
    let q = |k: &str| super::pull::query_param(query, k);
    let method = req.method().clone();
    match (method.clone(), id) {
        (Method::POST, None) => {
            let digest = q("digest")
                .map(|d| {
                    d.parse::<Digest>().map_err(|e| {
                        err(
                            StatusCode::BAD_REQUEST,
                            ErrorCode::DigestInvalid,
                            e.to_string(),
                        )
                    })
                })
                .transpose()?;
            let up = &r.upstream;
            // Cross-repository mount, when both names reach the same upstream.
            let mut upstream_query = None;
            if let (Some(m), Some(from)) = (q("mount"), q("from")) {
                let md: Digest = m.parse().map_err(|e: crate::oci::DigestError| {
                    err(
                        StatusCode::BAD_REQUEST,
                        ErrorCode::DigestInvalid,
                        e.to_string(),
                    )
                })?;
                let from = RepoName::parse(&from)
                    .ok()
                    .and_then(|f| app.router.route(&f, r.ns.as_deref()).ok());
                // Mount only what the client could read in `from` anyway;
                // otherwise decline the mount (a plain upload session, as
                // the spec lets a registry do).
                let readable = |f: &Route| {
                    f.upstream.name == up.name
                        && matches!(gate::blob_allowed(app, f, &md), Ok(gate::BlobAccess::Any))
                };
                if let Some(from) = from.filter(readable) {
                    upstream_query = Some(
                        url::form_urlencoded::Serializer::new(String::new())
                            .append_pair("mount", &md.to_string())
                            .append_pair("from", from.path.as_str())
                            .finish(),
                    );
                }
            }
            let url = up.url(r.path.as_str(), "blobs/uploads/", upstream_query.as_deref());
            let client = app.uploads.reserve(client_ip)?;
            let resp = up
                .request(
                    Method::POST,
                    url.clone(),
                    HeaderMap::new(),
                    &push_scope(&r),
                    Bytes::new(),
                )
                .await?;
            if resp.status() == StatusCode::CREATED {
                let d: Digest = q("mount").and_then(|m| m.parse().ok()).ok_or_else(|| {
                    err(
                        StatusCode::BAD_GATEWAY,
                        ErrorCode::Unknown,
                        "upstream created a blob without a mount",
                    )
                })?;
                app.holdings.hold(&r.canonical, &d, Held::Blob);
                return Ok(blob_created(&name, &d));
            }
            if resp.status() != StatusCode::ACCEPTED {
                return Err(upstream_failure(&r, resp, Object::Repository).await);
            }
            let upstream_url = upstream_location(&r, &url, &resp)?;
            let ns = r.ns.clone();
            let session = UploadSession {
                route: r,
                client_name: name.clone(),
                upstream_url,
                offset: 0,
                hasher: Sha256Hasher::new(),
                last_used: Instant::now(),
                _slot: client,
            };
            match digest {
                None => {
                    let id = app.uploads.insert(session)?;
                    Ok(upload_response(
                        StatusCode::ACCEPTED,
                        &name,
                        &id,
                        ns.as_deref(),
                        0,
                    ))
                }
                // Monolithic upload: the body is the whole blob.
                Some(d) => finish(app, &session, &d, req).await,
            }
        }
        (_, None) => Err(super::method_not_allowed(&method, "blobs/uploads/")),
        (m, Some(id)) => {
            let s = app.uploads.get(&id, &r.canonical).await?;
            let mut g = s.lock().await;
            g.last_used = Instant::now();
            match m {
                Method::GET => Ok(upload_response(
                    StatusCode::NO_CONTENT,
                    &g.client_name,
                    &id,
                    g.route.ns.as_deref(),
                    g.offset,
                )),
                Method::DELETE => {
                    let url = g.upstream_url.clone();
                    let _ = g
                        .route
                        .upstream
                        .request(
                            Method::DELETE,
                            url,
                            HeaderMap::new(),
                            &push_scope(&g.route),
                            Bytes::new(),
                        )
                        .await;
                    drop(g);
                    app.uploads.remove(&id);
                    let mut resp = Response::new(empty());
                    *resp.status_mut() = StatusCode::NO_CONTENT;
                    Ok(resp)
                }
                Method::PATCH => {
                    let range = req
                        .headers()
                        .get(CONTENT_RANGE)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    let len = content_length(req.headers());
                    if let Some(rg) = &range {
                        let Some((a, b)) = parse_content_range(rg) else {
                            return Err(err(
                                StatusCode::BAD_REQUEST,
                                ErrorCode::BlobUploadInvalid,
                                format!("Content-Range {rg:?} is not start-end"),
                            ));
                        };
                        if a != g.offset || len.is_some_and(|l| l != b - a + 1) {
                            let mut e = super::body::error_response(
                                &err(StatusCode::RANGE_NOT_SATISFIABLE, ErrorCode::BlobUploadInvalid, format!("chunk {a}-{b} is out of order: the upload has {} bytes, the next chunk starts at {}", g.offset, g.offset)),
                                false,
                            );
                            header(
                                e.headers_mut(),
                                "location",
                                &session_location(&g.client_name, &id, g.route.ns.as_deref()),
                            );
                            header(
                                e.headers_mut(),
                                "range",
                                &format!("0-{}", g.offset.saturating_sub(1)),
                            );
                            return Ok(e);
                        }
                    }
                    let h = chunk_headers(len, g.offset, true);
                    let url = g.upstream_url.clone();
                    let hasher = g.hasher.clone();
                    let result = stream_upstream(
                        &g.route,
                        Method::PATCH,
                        url.clone(),
                        h,
                        req.into_body(),
                        hasher,
                        None,
                    )
                    .await;
                    let (resp, hasher, n) = match result {
                        Ok(x) => x,
                        Err(e) => {
                            drop(g);
                            app.uploads.remove(&id);
                            return Err(e);
                        }
                    };
                    if resp.status() != StatusCode::ACCEPTED {
                        let e = upstream_failure(&g.route, resp, Object::Blob).await;
                        drop(g);
                        app.uploads.remove(&id);
                        return Err(e);
                    }
                    g.upstream_url = upstream_location(&g.route, &url, &resp)?;
                    g.hasher = hasher;
                    g.offset += n;
                    Ok(upload_response(
                        StatusCode::ACCEPTED,
                        &g.client_name,
                        &id,
                        g.route.ns.as_deref(),
                        g.offset,
                    ))
                }
                Method::PUT => {
                    let d: Digest = q("digest")
                        .ok_or_else(|| {
                            err(
                                StatusCode::BAD_REQUEST,
                                ErrorCode::DigestInvalid,
                                "PUT needs ?digest=<digest of the whole blob>",
                            )
                        })?
                        .parse()
                        .map_err(|e: crate::oci::DigestError| {
                            err(
                                StatusCode::BAD_REQUEST,
                                ErrorCode::DigestInvalid,
                                e.to_string(),
                            )
                        })?;
                    if let Some(rg) = req
                        .headers()
                        .get(CONTENT_RANGE)
                        .and_then(|v| v.to_str().ok())
                    {
                        if parse_content_range(rg).is_some_and(|(a, _)| a != g.offset) {
                            return Err(err(
                                StatusCode::RANGE_NOT_SATISFIABLE,
                                ErrorCode::BlobUploadInvalid,
                                format!(
                                    "final chunk {rg} is out of order: the next chunk starts at {}",
                                    g.offset
                                ),
                            ));
                        }
                    }
                    let done = finish(app, &g, &d, req).await;
                    drop(g);
                    app.uploads.remove(&id);
                    done
                }
                other => Err(super::method_not_allowed(&other, "an upload session")),
            }
        }
    }
}

/// Complete an upload with `req`'s body as the final chunk, refusing it
/// (and cancelling it upstream) if the bytes do not hash to `d`.
async fn finish(
    app: &App,
    s: &UploadSession,
    d: &Digest,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, OciError> {
    let r = &s.route;
    let len = content_length(req.headers());
    let mut url = s.upstream_url.clone();
    url.query_pairs_mut().append_pair("digest", &d.to_string());
    let scope = push_scope(r);
    let cancel = |url: Url| {
        let up = r.upstream.clone();
        let scope = scope.clone();
        async move {
            let _ = up
                .request(Method::DELETE, url, HeaderMap::new(), &scope, Bytes::new())
                .await;
        }
    };
    // No final chunk (HTTP/1 without length or chunking, or an HTTP/2
    // stream that ended with its headers): the digest can be checked now.
    let resp = if len == Some(0) || hyper::body::Body::is_end_stream(req.body()) {
        let actual = s.hasher.clone().finish();
        if &actual != d {
            cancel(s.upstream_url.clone()).await;
            return Err(err(
                StatusCode::BAD_REQUEST,
                ErrorCode::DigestInvalid,
                format!("the uploaded bytes hash to {actual}, not {d}; the upload was cancelled"),
            ));
        }
        let mut h = HeaderMap::new();
        h.insert(CONTENT_LENGTH, HeaderValue::from(0));
        r.upstream
            .request(Method::PUT, url, h, &scope, Bytes::new())
            .await?
    } else {
        // A final chunk after earlier ones says where it goes.
        let h = chunk_headers(len, s.offset, s.offset > 0);
        match stream_upstream(
            r,
            Method::PUT,
            url,
            h,
            req.into_body(),
            s.hasher.clone(),
            Some(d),
        )
        .await
        {
            Ok((resp, _, _)) => resp,
            Err(e) => {
                cancel(s.upstream_url.clone()).await;
                return Err(e);
            }
        }
    };
    if resp.status() != StatusCode::CREATED {
        return Err(upstream_failure(r, resp, Object::Blob).await);
    }
    app.holdings.hold(&s.route.canonical, d, Held::Blob);
    Ok(blob_created(&s.client_name, d))
}

const PUSHABLE: [&str; 4] = [
    media::OCI_MANIFEST,
    media::OCI_INDEX,
    media::DOCKER_MANIFEST,
    media::DOCKER_LIST,
];

/// A manifest a client pushed, validated.
struct Pushed {
    manifest: Manifest,
    doc: serde_json::Value,
    summary: ManifestSummary,
}

/// Read and validate a pushed manifest body (size, strict JSON, media type,
/// schema version).
async fn read_pushed(r: &Route, req: Request<Incoming>) -> Result<Pushed, OciError> {
    let bad = |m: String| err(StatusCode::BAD_REQUEST, ErrorCode::ManifestInvalid, m);
    let too_large = || {
        err(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::ManifestInvalid,
            format!("manifest is larger than {MAX_MANIFEST_BYTES} bytes"),
        )
    };
    let ct = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|t| t.split(';').next().unwrap_or("").trim().to_string());
    if content_length(req.headers()).is_some_and(|l| l > MAX_MANIFEST_BYTES as u64) {
        return Err(too_large());
    }
    let bytes = tokio::time::timeout(
        r.upstream.idle_timeout(),
        Limited::new(req.into_body(), MAX_MANIFEST_BYTES).collect(),
    )
    .await
    .map_err(|_| bad("the client did not finish sending the manifest".into()))?
    .map_err(|e| {
        if e.is::<http_body_util::LengthLimitError>() {
            too_large()
        } else {
            bad(format!("manifest body: {e}"))
        }
    })?
    .to_bytes();
    let doc =
        crate::oci::json::parse_strict(&bytes).map_err(|e| bad(format!("manifest is {e}")))?;
    let summary = ManifestSummary::parse(&bytes).map_err(bad)?;
    let inner = doc["mediaType"].as_str().map(str::to_string);
    let media_type = match (&ct, &inner) {
        (Some(c), Some(i)) if c != i => {
            return Err(bad(format!(
                "Content-Type {c} does not match the manifest's mediaType {i}"
            )))
        }
        (Some(c), _) if !c.is_empty() => c.clone(),
        (_, Some(i)) => i.clone(),
        _ => media::content_type_for(None, &bytes),
    };
    if !PUSHABLE.contains(&media_type.as_str()) {
        return Err(bad(format!(
            "media type {media_type} is not a manifest modelgate accepts ({})",
            PUSHABLE.join(", ")
        )));
    }
    if doc["schemaVersion"] != 2 {
        return Err(bad("schemaVersion must be 2".into()));
    }
    Ok(Pushed {
        manifest: Manifest {
            digest: Digest::of(&bytes),
            bytes,
            media_type,
        },
        doc,
        summary,
    })
}

/// The tags a PUT sets: the reference when it is a tag, then every `?tag=`.
fn requested_tags(reference: &Reference, query: Option<&str>) -> Result<Vec<String>, OciError> {
    let mut tags: Vec<String> = url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(|(k, _)| k == "tag")
        .map(|(_, v)| v.into_owned())
        .collect();
    if let Reference::Tag(t) = reference {
        tags.insert(0, t.clone());
    }
    for t in &tags {
        Reference::parse(t).map_err(OciError::from)?;
    }
    Ok(tags)
}

/// Every blob and child manifest the pushed document references must be in
/// the upstream repository already (known held, or confirmed by a HEAD
/// that asks for the descriptor's own media type).
async fn ensure_references(app: &App, r: &Route, p: &Pushed) -> Result<(), OciError> {
    let repo = &r.canonical;
    let mut checks: Vec<(String, Digest, HeaderMap)> = Vec::new();
    for d in p.summary.config.iter().chain(p.summary.layers.iter()) {
        if !app.holdings.holds(repo, d, Held::Blob) {
            checks.push((format!("blobs/{d}"), d.clone(), HeaderMap::new()));
        }
    }
    let children = p.doc["manifests"].as_array().cloned().unwrap_or_default();
    for d in &p.summary.manifests {
        if app.holdings.holds(repo, d, Held::Manifest) {
            continue;
        }
        let declared = children
            .iter()
            .find(|c| c["digest"] == d.to_string().as_str())
            .and_then(|c| c["mediaType"].as_str())
            .unwrap_or_default();
        let accept = match declared {
            "" => media::DEFAULT_MANIFEST_ACCEPT.to_string(),
            t => format!("{t}, {}", media::DEFAULT_MANIFEST_ACCEPT),
        };
        let mut h = HeaderMap::new();
        header(&mut h, "accept", &accept);
        checks.push((format!("manifests/{d}"), d.clone(), h));
    }
    let up = &r.upstream;
    let mut missing = Vec::new();
    for (suffix, d, h) in checks {
        let resp = up
            .request(
                Method::HEAD,
                up.url(r.path.as_str(), &suffix, None),
                h,
                &push_scope(r),
                Bytes::new(),
            )
            .await?;
        match resp.status() {
            StatusCode::OK => {
                let kind = if suffix.starts_with("blobs/") {
                    Held::Blob
                } else {
                    Held::Manifest
                };
                app.holdings.hold(repo, &d, kind);
            }
            StatusCode::NOT_FOUND => missing.push(d.to_string()),
            _ => return Err(upstream_failure(r, resp, Object::Blob).await),
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(err(
        StatusCode::BAD_REQUEST,
        ErrorCode::ManifestBlobUnknown,
        format!(
            "the manifest references {} that the upstream repository {} does not have; push them first",
            missing.join(", "),
            r.canonical
        ),
    ))
}

/// Why a pushed document needs no decision: a signature artifact pushed by
/// digest or on the cosign tag of the image it signs, or a referrers index
/// on its `sha256-<hex>` tag. Any other tag gets the full decision.
fn push_exemption(tags: &[String], m: &Manifest) -> Option<gate::Exemption> {
    if tags.is_empty() {
        return gate::exemption_of(&Reference::Digest(m.digest.clone()), &m.bytes);
    }
    let mut found = None;
    for t in tags {
        found = Some(gate::exemption_of(&Reference::Tag(t.clone()), &m.bytes)?);
    }
    found
}

/// Decide a push: each tag on its own (pattern, immutability), a PUT by
/// digest once; the strictest outcome wins and every reason is kept.
async fn decide_push(
    app: &Arc<App>,
    r: &Route,
    m: &Manifest,
    tags: &[String],
    loaded: &crate::policy::LoadedPolicy,
) -> Result<PolicyDecision, OciError> {
    let rule = loaded.policy.rule_for(&r.canonical);
    let signatures = match tags.is_empty() {
        true => gate::Signatures::Deferred,
        false => gate::Signatures::Check,
    };
    let ev = match rule {
        Some(rule) if rule.requires_anything() => {
            gate::gather(app, r, m, rule, loaded, gate::Freshness::Fresh, signatures).await
        }
        _ => Default::default(),
    };
    let tag_list: Vec<Option<&String>> = match tags.is_empty() {
        true => vec![None],
        false => tags.iter().map(Some).collect(),
    };
    let mut decision: Option<PolicyDecision> = None;
    let mut all_reasons: Vec<String> = Vec::new();
    for t in tag_list {
        let mut ev = ev.clone();
        ev.tag = t.cloned();
        if let Some(t) = t.filter(|_| gate::immutable_tags(rule)) {
            let upstream_now = super::pull::head_manifest_digest(r, t, None).await?;
            let first = app.gate.seen_tag(&r.canonical, t).or(upstream_now);
            if let Some(first) = first.filter(|f| f != &m.digest) {
                tracing::warn!(repository = %r.canonical, tag = %t, first = %first, now = %m.digest, "tag mutation refused");
                ev.tag_moved = Some((first, m.digest.clone()));
            }
        }
        let d = evaluate(&loaded.policy, &r.canonical, &ev);
        for reason in &d.reasons {
            if !all_reasons.contains(reason) {
                all_reasons.push(reason.clone());
            }
        }
        decision = Some(match decision {
            Some(prev) if rank(prev.decision) >= rank(d.decision) => prev,
            _ => d,
        });
    }
    let mut d = decision.unwrap_or(PolicyDecision {
        decision: Decision::Allow,
        rule: None,
        reasons: vec![],
    });
    d.reasons = all_reasons;
    Ok(d)
}

fn rank(d: Decision) -> u8 {
    match d {
        Decision::Deny => 2,
        Decision::Audit => 1,
        Decision::Allow => 0,
    }
}

/// PUT the exact bytes upstream under `reference` (with `?tag=` for
/// `tags`); returns the tags the upstream confirmed (`OCI-Tag`) and the
/// `OCI-Subject` it echoed.
async fn forward_manifest(
    r: &Route,
    m: &Manifest,
    reference: &Reference,
    tags: &[String],
) -> Result<(Vec<String>, Option<HeaderValue>), OciError> {
    let up = &r.upstream;
    let mut h = HeaderMap::new();
    header(&mut h, "content-type", &m.media_type);
    let q = match reference {
        Reference::Digest(_) if !tags.is_empty() => Some(
            url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(tags.iter().map(|t| ("tag", t.as_str())))
                .finish(),
        ),
        _ => None,
    };
    let url = up.url(
        r.path.as_str(),
        &format!("manifests/{reference}"),
        q.as_deref(),
    );
    let resp = up
        .request(Method::PUT, url, h, &push_scope(r), m.bytes.clone())
        .await?;
    if resp.status() != StatusCode::CREATED {
        return Err(upstream_failure(r, resp, Object::Manifest).await);
    }
    let echoed: Vec<String> = resp
        .headers()
        .get_all("oci-tag")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_string())
        .collect();
    let confirmed = match reference {
        Reference::Tag(t) => vec![t.clone()],
        Reference::Digest(_) => tags
            .iter()
            .filter(|t| echoed.contains(t))
            .cloned()
            .collect(),
    };
    Ok((confirmed, resp.headers().get("oci-subject").cloned()))
}

/// Set the tags an upstream ignored in `?tag=` (distribution before OCI
/// 1.1) with a PUT by tag each, so a tag is recorded only once the
/// upstream has it.
async fn set_missing_tags(
    r: &Route,
    m: &Manifest,
    tags: &[String],
    confirmed: &mut Vec<String>,
) -> Result<(), OciError> {
    for t in tags {
        if confirmed.contains(t) {
            continue;
        }
        forward_manifest(r, m, &Reference::Tag(t.clone()), &[]).await?;
        confirmed.push(t.clone());
    }
    Ok(())
}

/// `PUT /v2/<name>/manifests/<reference>[?tag=...]`: validate, decide, forward.
pub async fn put_manifest(
    app: &Arc<App>,
    r: &Route,
    name: &RepoName,
    reference: Reference,
    req: Request<Incoming>,
    query: Option<&str>,
    who: &Requester<'_>,
) -> Result<Response<RespBody>, OciError> {
    let pushed = read_pushed(r, req).await?;
    let digest = pushed.manifest.digest.clone();
    if let Reference::Digest(want) = &reference {
        if want != &digest {
            return Err(err(
                StatusCode::BAD_REQUEST,
                ErrorCode::DigestInvalid,
                format!("manifest bytes hash to {digest}, not {want}"),
            ));
        }
    }
    let tags = requested_tags(&reference, query)?;
    ensure_references(app, r, &pushed).await?;
    let m = &pushed.manifest;
    let loaded = app.policy.current();
    let exempt = push_exemption(&tags, m);
    let (decision, audit_reasons) = match exempt {
        Some(x) => (
            PolicyDecision {
                decision: Decision::Allow,
                rule: loaded.policy.rule_for(&r.canonical).map(|r| r.name.clone()),
                reasons: vec![],
            },
            vec![x.reason().to_string()],
        ),
        None => {
            let d = decide_push(app, r, m, &tags, &loaded).await?;
            let reasons = d.reasons.clone();
            (d, reasons)
        }
    };
    let reference_text = match tags.is_empty() {
        true => digest.to_string(),
        false => tags.join(","),
    };
    let x = Decided {
        action: "push",
        route: r,
        reference: &reference_text,
        digest: Some(&digest),
        decision: &decision,
        reasons: audit_reasons,
    };
    gate::record(app, &loaded, x, who);
    match decision.decision {
        Decision::Deny => {
            return Err(err(
                StatusCode::FORBIDDEN,
                ErrorCode::Denied,
                decision.message(),
            ))
        }
        Decision::Audit => tracing::warn!(repository = %r.canonical, "{}", decision.message()),
        Decision::Allow => {}
    }
    let (mut confirmed, subject) = forward_manifest(r, m, &reference, &tags).await?;
    set_missing_tags(r, m, &tags, &mut confirmed).await?;
    if exempt == Some(gate::Exemption::SignatureArtifact) {
        // A new signature: the image it signs is decided afresh.
        let signed = tags
            .iter()
            .filter_map(|t| gate::schema_tag(t).map(|(d, _)| d))
            .chain(pushed.summary.subject.clone());
        for d in signed {
            app.gate.forget_evidence(&r.canonical, &d);
        }
    }
    remember_pushed(app, r, &pushed, &confirmed, exempt.is_none());
    let mut out = Response::new(empty());
    *out.status_mut() = StatusCode::CREATED;
    let h = out.headers_mut();
    header(h, "location", &format!("/v2/{name}/manifests/{digest}"));
    header(h, "docker-content-digest", &digest.to_string());
    h.insert(CONTENT_LENGTH, HeaderValue::from(0));
    if let Some(s) = subject {
        h.insert("oci-subject", s);
    }
    if !tags.is_empty() && matches!(reference, Reference::Digest(_)) {
        header(h, "oci-tag", &confirmed.join(","));
    }
    Ok(out)
}

/// What a DELETE removes.
pub enum Deletion {
    Manifest(Reference),
    Blob(Digest),
}

/// `DELETE .../manifests/<reference>` or `.../blobs/<digest>`: proxied and
/// audited, but refused in a repository whose rule makes tags immutable
/// (deleting a manifest or blob there would remove or break a release).
pub async fn delete(
    app: &Arc<App>,
    r: &Route,
    what: &Deletion,
    who: &Requester<'_>,
) -> Result<Response<RespBody>, OciError> {
    let loaded = app.policy.current();
    let rule = loaded.policy.rule_for(&r.canonical);
    let (suffix, reference, digest) = match what {
        Deletion::Manifest(reference) => (
            format!("manifests/{reference}"),
            reference.to_string(),
            reference.digest().cloned(),
        ),
        Deletion::Blob(d) => (format!("blobs/{d}"), d.to_string(), Some(d.clone())),
    };
    let decision = match rule.filter(|_| gate::immutable_tags(rule)) {
        Some(rule) => PolicyDecision {
            decision: Decision::Deny,
            rule: Some(rule.name.clone()),
            reasons: vec![format!(
                "releases in {} are immutable under this rule: nothing is deleted through modelgate (delete at the upstream, where it is audited by its own means)",
                r.canonical
            )],
        },
        None => PolicyDecision {
            decision: Decision::Allow,
            rule: rule.map(|r| r.name.clone()),
            reasons: vec![],
        },
    };
    let x = Decided {
        action: "delete",
        route: r,
        reference: &reference,
        digest: digest.as_ref(),
        decision: &decision,
        reasons: decision.reasons.clone(),
    };
    gate::record(app, &loaded, x, who);
    if decision.decision == Decision::Deny {
        return Err(err(
            StatusCode::FORBIDDEN,
            ErrorCode::Denied,
            decision.message(),
        ));
    }
    let up = &r.upstream;
    let resp = up
        .request(
            Method::DELETE,
            up.url(r.path.as_str(), &suffix, None),
            HeaderMap::new(),
            &push_scope(r),
            Bytes::new(),
        )
        .await?;
    if !resp.status().is_success() {
        return Err(upstream_failure(r, resp, Object::Manifest).await);
    }
    match what {
        Deletion::Manifest(Reference::Tag(t)) => app.tags.forget(&r.canonical, t),
        Deletion::Manifest(Reference::Digest(d)) | Deletion::Blob(d) => {
            app.holdings.release(&r.canonical, d)
        }
    }
    let mut out = Response::new(empty());
    *out.status_mut() = StatusCode::ACCEPTED;
    out.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(0));
    Ok(out)
}

/// The upstream has it now: so do the cache, the holdings and the tag
/// memory (immutable tags only for decided documents).
fn remember_pushed(app: &App, r: &Route, p: &Pushed, tags: &[String], decided: bool) {
    let m = &p.manifest;
    let repo = &r.canonical;
    if let Err(e) = app
        .store
        .put_bytes(&m.digest, &m.bytes, Some(&m.media_type))
    {
        tracing::warn!(error = %e, "cannot cache pushed manifest {}", m.digest);
    }
    app.registry_holds_manifest(repo, &m.digest, &p.summary);
    let immutable = decided && gate::immutable_tags(app.policy.current().policy.rule_for(repo));
    for t in tags {
        let _ = app.tags.confirm(repo, t, &m.digest, &m.media_type);
        if immutable {
            app.gate.remember_tag(repo, t, &m.digest, &m.media_type);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("0-99"), Some((0, 99)));
        assert_eq!(parse_content_range("bytes=100-199"), Some((100, 199)));
        assert_eq!(parse_content_range("bytes 100-199/1000"), Some((100, 199)));
        assert_eq!(parse_content_range("9-3"), None);
        assert_eq!(parse_content_range("x"), None);
    }
}
