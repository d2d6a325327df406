//! `/v2/<name>/blobs/uploads/[<id>]`: blob uploads proxied to the upstream,
//! one handler per method. The bytes stream through (never buffered whole),
//! SHA-256 is computed across the chunks, and a digest that does not match
//! is refused before the upstream completes the upload ([`forward`]).

pub mod forward;
pub mod sessions;

pub use sessions::{UploadSession, Uploads};

use super::body::{empty, error_response, set_header, RespBody};
use super::ctx::Ctx;
use crate::gate::BlobAccess;
use crate::oci::{Digest, ErrorCode, OciError, RepoName, Sha256Hasher};
use crate::registry::writes::{
    cancel_upload, start_upload, upload_step, UploadBody, UploadStart, UploadStep,
};
use crate::upstream::Route;
use http::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use std::time::Instant;

fn err(status: StatusCode, code: ErrorCode, msg: impl Into<String>) -> OciError {
    OciError::new(status, code, msg)
}

/// Our Location for an upload session, under the name the client used.
fn session_location(name: &RepoName, id: &str, ns: Option<&str>) -> String {
    match ns {
        Some(ns) => format!("/v2/{name}/blobs/uploads/{id}?ns={ns}"),
        None => format!("/v2/{name}/blobs/uploads/{id}"),
    }
}

fn session_response(
    status: StatusCode,
    name: &RepoName,
    ns: Option<&str>,
    offset: u64,
    id: &str,
) -> Response<RespBody> {
    let mut r = Response::new(empty());
    *r.status_mut() = status;
    let h = r.headers_mut();
    set_header(h, "location", &session_location(name, id, ns));
    set_header(h, "range", &format!("0-{}", offset.saturating_sub(1)));
    set_header(h, "docker-upload-uuid", id);
    h.insert(CONTENT_LENGTH, HeaderValue::from(0));
    r
}

fn upload_response(status: StatusCode, s: &UploadSession, id: &str) -> Response<RespBody> {
    session_response(status, &s.client_name, s.route.ns.as_deref(), s.offset, id)
}

fn blob_created(name: &RepoName, d: &Digest) -> Response<RespBody> {
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::CREATED;
    let h = r.headers_mut();
    set_header(h, "location", &format!("/v2/{name}/blobs/{d}"));
    set_header(h, "docker-content-digest", &d.to_string());
    h.insert(CONTENT_LENGTH, HeaderValue::from(0));
    r
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

/// Headers of a chunk of `len` bytes starting at `offset`.
/// Whether a chunk says where it goes (`Content-Range`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkRange {
    Send,
    Omit,
}

fn chunk_headers(len: Option<u64>, offset: u64, range: ChunkRange) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(l) = len {
        h.insert(CONTENT_LENGTH, HeaderValue::from(l));
        if l > 0 && range == ChunkRange::Send {
            set_header(
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

fn digest_param(ctx: &Ctx<'_>, key: &str) -> Result<Option<Digest>, OciError> {
    Ok(ctx.param(key).map(|d| d.parse::<Digest>()).transpose()?)
}

/// Which repository a mount may take `d` from: the same upstream, and only
/// when the client could read it there anyway (otherwise the mount is
/// declined and the client gets a plain session, as the spec allows).
fn mount_source(ctx: &Ctx<'_>, r: &Route, d: &Digest) -> Option<Route> {
    let from = RepoName::parse(&ctx.param("from")?).ok()?;
    let from = ctx.app.router().route(&from, r.ns.as_deref()).ok()?;
    let readable = from.upstream.name == r.upstream.name
        && ctx
            .app
            .gate()
            .blob_permit(&from, d)
            .is_ok_and(|p| p.access() == BlobAccess::Any);
    readable.then_some(from)
}

/// POST: start a session (or mount, or a monolithic upload with `?digest=`).
pub async fn post(
    ctx: &Ctx<'_>,
    name: RepoName,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, OciError> {
    let r = ctx.route(&name)?;
    let digest = digest_param(ctx, "digest")?;
    let mount = digest_param(ctx, "mount")?;
    let from = mount.as_ref().and_then(|d| mount_source(ctx, &r, d));
    let mount_from = mount.as_ref().zip(from.as_ref().map(|f| &f.path));
    // Claimed before the upstream opens anything.
    let slot = ctx.app.uploads().reserve(ctx.peer.ip())?;
    let registry = ctx.app.registry();
    let upstream_url = match start_upload(&r, mount_from).await? {
        UploadStart::Mounted => {
            let d = mount.expect("a mount answer follows a mount request");
            registry.uploaded(&r, &d);
            return Ok(blob_created(&name, &d));
        }
        UploadStart::Session(url) => url,
    };
    let session = UploadSession {
        route: r,
        client_name: name,
        upstream_url,
        offset: 0,
        hasher: Sha256Hasher::new(),
        last_used: Instant::now(),
        _slot: slot,
    };
    match digest {
        // Monolithic upload: the body is the whole blob.
        Some(d) => finish(ctx, &session, &d, req).await,
        None => {
            let (name, ns) = (session.client_name.clone(), session.route.ns.clone());
            let id = ctx.app.uploads().insert(session)?;
            Ok(session_response(
                StatusCode::ACCEPTED,
                &name,
                ns.as_deref(),
                0,
                &id,
            ))
        }
    }
}

/// Upload session `id` of `name`, locked and marked as used now.
async fn session(
    ctx: &Ctx<'_>,
    name: &RepoName,
    id: &str,
) -> Result<tokio::sync::OwnedMutexGuard<UploadSession>, OciError> {
    let r = ctx.route(name)?;
    let s = ctx.app.uploads().get(id, &r.canonical).await?;
    let mut g = s.lock_owned().await;
    g.last_used = Instant::now();
    Ok(g)
}

/// GET: where the upload stands.
pub async fn status(
    ctx: &Ctx<'_>,
    name: &RepoName,
    id: &str,
) -> Result<Response<RespBody>, OciError> {
    let g = session(ctx, name, id).await?;
    Ok(upload_response(StatusCode::NO_CONTENT, &g, id))
}

/// DELETE: cancel the upload, here and upstream.
pub async fn cancel(
    ctx: &Ctx<'_>,
    name: &RepoName,
    id: &str,
) -> Result<Response<RespBody>, OciError> {
    let g = session(ctx, name, id).await?;
    cancel_upload(&g.route, g.upstream_url.clone()).await;
    drop(g);
    ctx.app.uploads().remove(id);
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    Ok(resp)
}

/// PATCH: one chunk, in order, streamed through.
pub async fn patch(
    ctx: &Ctx<'_>,
    name: &RepoName,
    id: &str,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, OciError> {
    let mut g = session(ctx, name, id).await?;
    let len = content_length(req.headers());
    if let Some(rg) = req
        .headers()
        .get(CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
    {
        let Some((a, b)) = parse_content_range(rg) else {
            return Err(err(
                StatusCode::BAD_REQUEST,
                ErrorCode::BlobUploadInvalid,
                format!("Content-Range {rg:?} is not start-end"),
            ));
        };
        if a != g.offset || len.is_some_and(|l| l != b - a + 1) {
            let e = err(
                StatusCode::RANGE_NOT_SATISFIABLE,
                ErrorCode::BlobUploadInvalid,
                format!("chunk {a}-{b} is out of order: the upload has {0} bytes, the next chunk starts at {0}", g.offset),
            );
            let mut resp = error_response(&e, &Method::PATCH);
            let ours = upload_response(StatusCode::RANGE_NOT_SATISFIABLE, &g, id);
            for k in ["location", "range"] {
                if let Some(v) = ours.headers().get(k) {
                    resp.headers_mut().insert(k, v.clone());
                }
            }
            return Ok(resp);
        }
    }
    let h = chunk_headers(len, g.offset, ChunkRange::Send);
    let url = g.upstream_url.clone();
    let step = forward::Step {
        kind: UploadStep::Chunk,
        method: Method::PATCH,
        url,
        headers: h,
    };
    let sent = forward::stream_step(&g.route, step, req.into_body(), g.hasher.clone(), None).await;
    let (next, hasher, n) = match sent {
        Ok(x) => x,
        Err(e) => {
            drop(g);
            ctx.app.uploads().remove(id);
            return Err(e);
        }
    };
    if let Some(next) = next {
        g.upstream_url = next;
    }
    g.hasher = hasher;
    g.offset += n;
    Ok(upload_response(StatusCode::ACCEPTED, &g, id))
}

/// PUT `?digest=`: the final chunk (if any), checked before the upstream
/// completes the upload.
pub async fn put(
    ctx: &Ctx<'_>,
    name: &RepoName,
    id: &str,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, OciError> {
    let g = session(ctx, name, id).await?;
    let d = digest_param(ctx, "digest")?.ok_or_else(|| {
        err(
            StatusCode::BAD_REQUEST,
            ErrorCode::DigestInvalid,
            "PUT needs ?digest=<digest of the whole blob>",
        )
    })?;
    let range = req
        .headers()
        .get(CONTENT_RANGE)
        .and_then(|v| v.to_str().ok());
    if let Some(rg) = range.filter(|rg| parse_content_range(rg).is_some_and(|(a, _)| a != g.offset))
    {
        return Err(err(
            StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::BlobUploadInvalid,
            format!(
                "final chunk {rg} is out of order: the next chunk starts at {}",
                g.offset
            ),
        ));
    }
    let done = finish(ctx, &g, &d, req).await;
    drop(g);
    ctx.app.uploads().remove(id);
    done
}

/// Complete an upload with `req`'s body as the final chunk, refusing it
/// (and cancelling it upstream) if the bytes do not hash to `d`.
async fn finish(
    ctx: &Ctx<'_>,
    s: &UploadSession,
    d: &Digest,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, OciError> {
    let r = &s.route;
    let len = content_length(req.headers());
    let mut url = s.upstream_url.clone();
    url.query_pairs_mut().append_pair("digest", &d.to_string());
    // No final chunk (HTTP/1 without length or chunking, or an HTTP/2
    // stream that ended with its headers): the digest can be checked now.
    let done = if len == Some(0) || hyper::body::Body::is_end_stream(req.body()) {
        let actual = s.hasher.clone().finish();
        if &actual != d {
            cancel_upload(r, s.upstream_url.clone()).await;
            return Err(err(
                StatusCode::BAD_REQUEST,
                ErrorCode::DigestInvalid,
                format!("the uploaded bytes hash to {actual}, not {d}; the upload was cancelled"),
            ));
        }
        let mut h = HeaderMap::new();
        h.insert(CONTENT_LENGTH, HeaderValue::from(0));
        upload_step(
            r,
            UploadStep::Finish,
            Method::PUT,
            url,
            h,
            UploadBody::Empty,
        )
        .await
        .map(|_| ())
        .map_err(OciError::from)
    } else {
        // A final chunk after earlier ones says where it goes.
        let range = match s.offset {
            0 => ChunkRange::Omit,
            _ => ChunkRange::Send,
        };
        let h = chunk_headers(len, s.offset, range);
        let step = forward::Step {
            kind: UploadStep::Finish,
            method: Method::PUT,
            url,
            headers: h,
        };
        let sent = forward::stream_step(r, step, req.into_body(), s.hasher.clone(), Some(d)).await;
        if sent.is_err() {
            cancel_upload(r, s.upstream_url.clone()).await;
        }
        sent.map(|_| ())
    };
    done?;
    ctx.app.registry().uploaded(r, d);
    Ok(blob_created(&s.client_name, d))
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
