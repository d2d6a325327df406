//! Response helpers of the mock: bodies and OCI error answers.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};

/// Response bodies of the mock.
pub type Body =
    http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

pub fn oci_error(status: StatusCode, code: &str, msg: &str) -> Response<Body> {
    let mut r = Response::new(full(format!(
        r#"{{"errors":[{{"code":"{code}","message":"{msg}"}}]}}"#
    )));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}
