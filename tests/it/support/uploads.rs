//! The mock's blob uploads, as the distribution registry does them.

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

pub type Responder = Box<dyn FnOnce(Bytes) -> Response<Body> + Send>;

/// Blob uploads as the distribution registry does them: POST (optionally
/// `mount`), PATCH appends, PUT `?digest=` finishes (checking the digest),
/// GET status, DELETE cancels. Returns None when the path is not an upload.
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
    let repo = segs[..n - 3].join("/");
    let id = segs[n - 1].to_string();
    let q: HashMap<String, String> = query
        .as_deref()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default();
    let st = st.clone();
    let method = req.method().clone();
    let location_base = st.upload_location_base.lock().unwrap().clone();
    let relative = st.relative_upload_locations.load(Ordering::SeqCst);
    Some(Box::new(move |body: Bytes| {
        let loc = |id: &str| match (&location_base, relative) {
            (_, true) => id.to_string(),
            (Some(b), false) => format!("{b}/v2/{repo}/blobs/uploads/{id}"),
            (None, false) => format!("/v2/{repo}/blobs/uploads/{id}"),
        };
        let created = |d: &str| {
            let mut r = Response::new(full(Bytes::new()));
            *r.status_mut() = StatusCode::CREATED;
            r.headers_mut()
                .insert("location", format!("/v2/{repo}/blobs/{d}").parse().unwrap());
            r.headers_mut()
                .insert("docker-content-digest", d.parse().unwrap());
            r
        };
        match (method, id.is_empty()) {
            (Method::POST, true) => {
                if let (Some(m), Some(from)) = (q.get("mount"), q.get("from")) {
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
                            .insert((repo.clone(), m.clone()));
                        return created(m);
                    }
                }
                let id = format!("u{}", st.upload_seq.fetch_add(1, Ordering::SeqCst));
                st.uploads
                    .lock()
                    .unwrap()
                    .insert(id.clone(), (repo.clone(), Vec::new()));
                let mut r = Response::new(full(Bytes::new()));
                *r.status_mut() = StatusCode::ACCEPTED;
                r.headers_mut()
                    .insert("location", loc(&id).parse().unwrap());
                r.headers_mut().insert("range", "0-0".parse().unwrap());
                r
            }
            (Method::PATCH, false) => {
                let mut ups = st.uploads.lock().unwrap();
                let Some(u) = ups.get_mut(&id) else {
                    return oci_error(StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN", "no");
                };
                u.1.extend_from_slice(&body);
                let mut r = Response::new(full(Bytes::new()));
                *r.status_mut() = StatusCode::ACCEPTED;
                r.headers_mut()
                    .insert("location", loc(&id).parse().unwrap());
                r.headers_mut().insert(
                    "range",
                    format!("0-{}", u.1.len().saturating_sub(1))
                        .parse()
                        .unwrap(),
                );
                r
            }
            (Method::PUT, false) => {
                let Some((_, mut data)) = st.uploads.lock().unwrap().remove(&id) else {
                    return oci_error(StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN", "no");
                };
                data.extend_from_slice(&body);
                let d = Digest::of(&data).to_string();
                if q.get("digest") != Some(&d) {
                    return oci_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", "digest mismatch");
                }
                st.blobs
                    .lock()
                    .unwrap()
                    .insert(d.clone(), Bytes::from(data));
                st.repo_blobs
                    .lock()
                    .unwrap()
                    .insert((repo.clone(), d.clone()));
                created(&d)
            }
            (Method::GET, false) => {
                let ups = st.uploads.lock().unwrap();
                let Some(u) = ups.get(&id) else {
                    return oci_error(StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN", "no");
                };
                let mut r = Response::new(full(Bytes::new()));
                *r.status_mut() = StatusCode::NO_CONTENT;
                r.headers_mut().insert(
                    "range",
                    format!("0-{}", u.1.len().saturating_sub(1))
                        .parse()
                        .unwrap(),
                );
                r
            }
            (Method::DELETE, false) => {
                st.uploads.lock().unwrap().remove(&id);
                let mut r = Response::new(full(Bytes::new()));
                *r.status_mut() = StatusCode::NO_CONTENT;
                r
            }
            _ => oci_error(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", "no"),
        }
    }))
}
