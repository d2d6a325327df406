//! The mock's blob uploads, as the distribution registry does them, one
//! function per method: POST starts (or mounts), PATCH appends, PUT
//! `?digest=` finishes (checking the digest), GET tells the status, DELETE
//! cancels.

use super::answers::Body;
use super::answers::{full, oci_error};
use super::mock::MockState;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use modelgate::oci::Digest;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The answer to an upload request, once its body has been read.
pub type Responder = Box<dyn FnOnce(Bytes) -> Response<Body> + Send>;

/// One upload request, parsed.
struct Upload {
    repo: String,
    /// Empty for a POST that starts a session.
    id: String,
    query: HashMap<String, String>,
    location_base: Option<String>,
    relative: bool,
}

impl Upload {
    /// Where the next request of session `id` goes.
    fn location(&self, id: &str) -> String {
        match (&self.location_base, self.relative) {
            (_, true) => id.to_string(),
            (Some(b), false) => format!("{b}/v2/{}/blobs/uploads/{id}", self.repo),
            (None, false) => format!("/v2/{}/blobs/uploads/{id}", self.repo),
        }
    }

    fn created(&self, d: &str) -> Response<Body> {
        let mut r = answer(StatusCode::CREATED);
        let h = r.headers_mut();
        h.insert(
            "location",
            format!("/v2/{}/blobs/{d}", self.repo).parse().unwrap(),
        );
        h.insert("docker-content-digest", d.parse().unwrap());
        r
    }

    fn progress(&self, status: StatusCode, id: &str, len: usize) -> Response<Body> {
        let mut r = answer(status);
        let h = r.headers_mut();
        h.insert("location", self.location(id).parse().unwrap());
        h.insert(
            "range",
            format!("0-{}", len.saturating_sub(1)).parse().unwrap(),
        );
        r
    }
}

fn answer(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = status;
    r
}

fn unknown() -> Response<Body> {
    oci_error(StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN", "no")
}

/// POST: mount from `from` when it has the blob (and, with per-repository
/// blobs, holds it), else start a session.
fn post(st: &MockState, up: &Upload) -> Response<Body> {
    if let (Some(m), Some(from)) = (up.query.get("mount"), up.query.get("from")) {
        let scoped = st.scoped_blobs.load(Ordering::SeqCst);
        let in_from = !scoped
            || st
                .repo_blobs
                .lock()
                .unwrap()
                .contains(&(from.clone(), m.clone()));
        if in_from && st.blobs.lock().unwrap().contains_key(m) {
            st.repo_blobs
                .lock()
                .unwrap()
                .insert((up.repo.clone(), m.clone()));
            return up.created(m);
        }
    }
    let id = format!("u{}", st.upload_seq.fetch_add(1, Ordering::SeqCst));
    st.uploads
        .lock()
        .unwrap()
        .insert(id.clone(), (up.repo.clone(), Vec::new()));
    up.progress(StatusCode::ACCEPTED, &id, 1)
}

/// PATCH: append the chunk.
fn patch(st: &MockState, up: &Upload, body: Bytes) -> Response<Body> {
    let mut ups = st.uploads.lock().unwrap();
    let Some(u) = ups.get_mut(&up.id) else {
        return unknown();
    };
    u.1.extend_from_slice(&body);
    up.progress(StatusCode::ACCEPTED, &up.id, u.1.len())
}

/// PUT `?digest=`: the last chunk, then the blob if the digest matches.
fn put(st: &MockState, up: &Upload, body: Bytes) -> Response<Body> {
    let Some((_, mut data)) = st.uploads.lock().unwrap().remove(&up.id) else {
        return unknown();
    };
    data.extend_from_slice(&body);
    let d = Digest::of(&data).to_string();
    if up.query.get("digest") != Some(&d) {
        return oci_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", "digest mismatch");
    }
    st.blobs
        .lock()
        .unwrap()
        .insert(d.clone(), Bytes::from(data));
    st.repo_blobs
        .lock()
        .unwrap()
        .insert((up.repo.clone(), d.clone()));
    up.created(&d)
}

/// GET: how much the session holds.
fn status(st: &MockState, up: &Upload) -> Response<Body> {
    let ups = st.uploads.lock().unwrap();
    let Some(u) = ups.get(&up.id) else {
        return unknown();
    };
    let mut r = answer(StatusCode::NO_CONTENT);
    r.headers_mut().insert(
        "range",
        format!("0-{}", u.1.len().saturating_sub(1))
            .parse()
            .unwrap(),
    );
    r
}

/// DELETE: forget the session.
fn cancel(st: &MockState, up: &Upload) -> Response<Body> {
    st.uploads.lock().unwrap().remove(&up.id);
    answer(StatusCode::NO_CONTENT)
}

/// The answer to an upload request (`/v2/<repo>/blobs/uploads/[<id>]`), or
/// None when the path is not an upload.
pub async fn mock_upload(
    st: &Arc<MockState>,
    req: &Request<Incoming>,
    segs: &[&str],
    query: &Option<String>,
) -> Option<Responder> {
    let n = segs.len();
    if n < 4 || segs[n - 3] != "blobs" || segs[n - 2] != "uploads" {
        return None;
    }
    let up = Upload {
        repo: segs[..n - 3].join("/"),
        id: segs[n - 1].to_string(),
        query: url::form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
        location_base: st.upload_location_base.lock().unwrap().clone(),
        relative: st.relative_upload_locations.load(Ordering::SeqCst),
    };
    let st = st.clone();
    let method = req.method().clone();
    Some(Box::new(move |body: Bytes| {
        match (method, up.id.is_empty()) {
            (Method::POST, true) => post(&st, &up),
            (Method::PATCH, false) => patch(&st, &up, body),
            (Method::PUT, false) => put(&st, &up, body),
            (Method::GET, false) => status(&st, &up),
            (Method::DELETE, false) => cancel(&st, &up),
            _ => oci_error(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", "no"),
        }
    }))
}
