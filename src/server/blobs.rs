//! `/v2/<name>/blobs/<digest>`: GET (bytes only with the gate's permit,
//! Range from verified blobs) and HEAD (existence and size for pushing
//! clients).

use super::body::{digest_headers, empty, error_response, full, stream, RespBody};
use super::ctx::Ctx;
use crate::cache::reader;
use crate::cache::Joined;
use crate::gate::BlobRead;
use crate::oci::{Digest, ErrorCode, OciError, RepoName};
use crate::registry::{BlobBody, BlobWant};
use http::header::{ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use std::fs::File;
use std::sync::Arc;

/// A parsed single `Range: bytes=...` header. `None` means serve it all.
pub fn parse_range(h: &str, size: u64) -> Option<Result<(u64, u64), ()>> {
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

fn blob_headers(h: &mut HeaderMap, d: &Digest, len: Option<u64>) {
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(len) = len {
        h.insert(CONTENT_LENGTH, HeaderValue::from(len));
    }
    h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    digest_headers(h, d);
}

/// Serve a verified file, honouring Range.
fn serve_file(
    ctx: &Ctx<'_>,
    d: &Digest,
    file: Arc<File>,
    size: u64,
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
            let mut r = error_response(&e, &http::Method::GET);
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(CONTENT_RANGE, v);
            }
            return r;
        }
    };
    let metrics = ctx.app.metrics().clone();
    let mut r = Response::new(stream(reader::stream_file(file, start, end, Some(metrics))));
    *r.status_mut() = status;
    blob_headers(r.headers_mut(), d, Some(end - start));
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1)) {
            r.headers_mut().insert(CONTENT_RANGE, v);
        }
    }
    r
}

/// GET: the gate's permit first, then the bytes (cache, or a download in
/// flight streamed as it is hashed).
pub async fn get(
    ctx: &Ctx<'_>,
    name: &RepoName,
    d: &Digest,
    req: &Request<Incoming>,
) -> Result<Response<RespBody>, OciError> {
    let r = ctx.route(name)?;
    let gate = ctx.app.gate();
    let permit = gate.blob_permit(&r, d)?;
    let range = req
        .headers()
        .get(RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let want = match range {
        Some(_) => BlobWant::Range,
        None => BlobWant::Whole,
    };
    let metrics = ctx.app.metrics().clone();
    match gate.read_blob(permit, &r, want).await? {
        BlobRead::Small(bytes) => {
            metrics.served("cache", bytes.len() as u64);
            let mut resp = Response::new(full(bytes.clone()));
            blob_headers(resp.headers_mut(), d, Some(bytes.len() as u64));
            Ok(resp)
        }
        BlobRead::Body(BlobBody::File { file, size }) => {
            Ok(serve_file(ctx, d, file, size, range.as_deref()))
        }
        BlobRead::Body(BlobBody::Flight { joined, size }) => {
            let body = match joined {
                Joined::Leader(Some(feed), rx) => stream(reader::stream_leader(feed, rx, metrics)),
                Joined::Leader(None, rx) | Joined::Follower(rx) => {
                    stream(reader::stream_flight(rx, metrics))
                }
            };
            let mut resp = Response::new(body);
            blob_headers(resp.headers_mut(), d, size);
            Ok(resp)
        }
    }
}

/// HEAD: existence and size in this repository (pushing clients need it;
/// bytes are served only for admitted manifests).
pub async fn head(
    ctx: &Ctx<'_>,
    name: &RepoName,
    d: &Digest,
) -> Result<Response<RespBody>, OciError> {
    let r = ctx.route(name)?;
    let size = ctx.app.registry().blob_size(&r, d).await?;
    let mut resp = Response::new(empty());
    blob_headers(resp.headers_mut(), d, Some(size));
    Ok(resp)
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
}

#[cfg(test)]
mod props {
    use super::parse_range;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(crate::proptests::config())]

        /// Any header, any size: no panic, and a range served lies inside
        /// the blob.
        #[test]
        fn ranges_stay_inside_the_blob(h in "(bytes=)?[0-9 ,-]{0,24}|.{0,32}", size in 0u64..10_000) {
            if let Some(Ok((a, b))) = parse_range(&h, size) {
                prop_assert!(a <= b && b < size, "{h:?} {size} -> {a}-{b}");
            }
        }

        #[test]
        fn well_formed_ranges_are_honoured(size in 1u64..10_000, a in 0u64..10_000, len in 0u64..10_000) {
            let b = a + len;
            let got = parse_range(&format!("bytes={a}-{b}"), size);
            match a < size {
                true => prop_assert_eq!(got, Some(Ok((a, b.min(size - 1))))),
                false => prop_assert_eq!(got, Some(Err(()))),
            }
        }
    }
}
