//! The internal listener (`[coordination] internal_listen`): other replicas
//! stream a blob this replica is downloading (it holds the lease) or has
//! cached: `GET /internal/blobs/<digest>` with `Authorization: Bearer
//! <token>` and optionally `Range: bytes=N-` (to resume).
//!
//! Invariants: nothing is served without the fleet's token (compared as
//! SHA-256 digests, so timing says nothing); only content-addressed blob bytes are served, and the
//! asking replica verifies them against the digest itself; a download in
//! flight is served as it lands, never past what is written, and its last
//! byte only once it verified (the follower reader's rule).

use super::app::App;
use super::body::{full, stream, RespBody};
use crate::cache::reader::{stream_file, stream_flight_at};
use crate::cache::FetchState;
use crate::oci::Digest;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, RANGE};
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;

fn answer(status: StatusCode, why: &str) -> Response<RespBody> {
    let mut r = Response::new(full(format!("{why}\n")));
    *r.status_mut() = status;
    r
}

/// Whether `req` carries the fleet's token.
fn authorized(app: &App, req: &Request<Incoming>) -> bool {
    let Some(token) = app
        .registry()
        .shared()
        .and_then(|s| s.internal_token.as_ref())
    else {
        return false;
    };
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    // Comparing digests: equal length, and how far two digests agree says
    // nothing about how far the tokens do.
    Digest::of(given.as_bytes()) == Digest::of(token.0.as_bytes())
}

/// `bytes=N-` → N (0 without a Range header); None for another form.
fn range_start<B>(req: &Request<B>) -> Option<u64> {
    match req.headers().get(RANGE) {
        None => Some(0),
        Some(v) => v
            .to_str()
            .ok()?
            .strip_prefix("bytes=")?
            .strip_suffix('-')?
            .parse()
            .ok(),
    }
}

fn handle(app: &App, req: Request<Incoming>) -> Response<RespBody> {
    if !authorized(app, &req) {
        return answer(
            StatusCode::UNAUTHORIZED,
            "the internal endpoint needs the fleet's token",
        );
    }
    let Some(d) = req
        .uri()
        .path()
        .strip_prefix("/internal/blobs/")
        .and_then(|d| d.parse::<Digest>().ok())
    else {
        return answer(StatusCode::NOT_FOUND, "try /internal/blobs/<digest>");
    };
    let Some(start) = range_start(&req) else {
        return answer(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "only Range: bytes=N- is served",
        );
    };
    let reg = app.registry();
    let (body, size) = if let Some((file, size)) = reg.store().open_blob(&d) {
        if start > size {
            return answer(StatusCode::RANGE_NOT_SATISFIABLE, "past the end");
        }
        (
            // Another replica's download, not a client's: not counted as served.
            stream(stream_file(Arc::new(file), start, size, None)),
            Some(size),
        )
    } else if let Some(rx) = reg.flights().get(&d) {
        let size = match &*rx.borrow() {
            FetchState::Streaming { size, .. } => *size,
            FetchState::Done { size, .. } => Some(*size),
            FetchState::Connecting => None,
            _ => {
                return answer(
                    StatusCode::NOT_FOUND,
                    "the download failed or is not cached here",
                )
            }
        };
        (stream(stream_flight_at(rx, start, None)), size)
    } else {
        return answer(
            StatusCode::NOT_FOUND,
            "not downloading or holding this blob",
        );
    };
    let mut r = Response::new(body);
    *r.status_mut() = match start {
        0 => StatusCode::OK,
        _ => StatusCode::PARTIAL_CONTENT,
    };
    if let Some(n) = size {
        r.headers_mut()
            .insert("x-modelgate-blob-size", HeaderValue::from(n));
        r.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(n - start.min(n)));
    }
    r
}

/// Serve the internal endpoint until the process ends.
pub async fn serve(app: Arc<App>, listener: TcpListener) {
    super::admin::serve_plain(listener, move |req| {
        let app = app.clone();
        async move { Ok::<_, Infallible>(handle(&app, req)) }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(range: Option<&str>) -> Request<()> {
        let mut r = Request::get("/internal/blobs/x");
        if let Some(v) = range {
            r = r.header(RANGE, v);
        }
        r.body(()).unwrap()
    }

    #[test]
    fn only_open_ended_ranges_are_read() {
        assert_eq!(range_start(&req(None)), Some(0));
        assert_eq!(range_start(&req(Some("bytes=42-"))), Some(42));
        assert_eq!(range_start(&req(Some("bytes=0-9"))), None);
        assert_eq!(range_start(&req(Some("bytes=-5"))), None);
        assert_eq!(range_start(&req(Some("items=1-"))), None);
    }
}
