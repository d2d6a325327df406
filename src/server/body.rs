//! Response bodies, the headers every answer carries, and the one OCI error
//! response every failure becomes.

use crate::oci::{Digest, OciError};
use crate::upstream::client::BoxError;
use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};
use http::header::{CONTENT_LENGTH, ETAG};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;

pub type RespBody = BoxBody<Bytes, BoxError>;

pub fn full(b: impl Into<Bytes>) -> RespBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

pub fn empty() -> RespBody {
    Empty::<Bytes>::new().map_err(|e| match e {}).boxed()
}

pub fn stream<S>(s: S) -> RespBody
where
    S: Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static,
{
    BodyExt::boxed(StreamBody::new(
        s.map_ok(Frame::data).map_err(|e| Box::new(e) as BoxError),
    ))
}

pub const API_VERSION: &str = "Docker-Distribution-API-Version";

/// Set header `k` to `v` when `v` is a valid header value.
pub fn set_header(h: &mut http::HeaderMap, k: &'static str, v: &str) {
    if let Ok(v) = HeaderValue::from_str(v) {
        h.insert(k, v);
    }
}

/// `Docker-Content-Digest` and `ETag` for `d`.
pub fn digest_headers(h: &mut HeaderMap, d: &Digest) {
    set_header(h, "docker-content-digest", &d.to_string());
    if let Ok(v) = HeaderValue::from_str(&format!("\"{d}\"")) {
        h.insert(ETAG, v);
    }
}

/// 202 with no body.
pub fn accepted() -> Response<RespBody> {
    let mut out = Response::new(empty());
    *out.status_mut() = StatusCode::ACCEPTED;
    out.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(0));
    out
}

/// An OCI error response.
pub fn error_response(e: &OciError, method: &http::Method) -> Response<RespBody> {
    let head = method == http::Method::HEAD;
    let body = e.body();
    let len = body.len();
    let mut r = Response::new(if head { empty() } else { full(body) });
    *r.status_mut() = e.status;
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
    if e.status == StatusCode::UNAUTHORIZED {
        h.insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"modelgate\""),
        );
    }
    r
}
