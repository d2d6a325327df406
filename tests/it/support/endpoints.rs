//! What the mock upstream answers, one function per endpoint: the storage
//! side of a redirect, the token server, `/v2/` with its auth challenges,
//! tags lists, manifests (GET/HEAD and PUT), blobs, referrers and uploads.

use super::answers::{full, oci_error, Body};
use super::faults::faulty_body;
use super::mock::{Auth, MockState, Seen};
use super::uploads::mock_upload;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use modelgate::oci::Digest;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

fn header(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn basic(user: &str, pass: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

/// Remember what was asked.
fn record(st: &MockState, req: &Request<Incoming>) {
    let accept: Vec<&str> = req
        .headers()
        .get_all("accept")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    st.seen.lock().unwrap().push(Seen {
        method: req.method().clone(),
        path: req.uri().path().to_string(),
        query: req.uri().query().map(str::to_string),
        authorization: header(req, "authorization"),
        accept: (!accept.is_empty()).then(|| accept.join(", ")),
        host: header(req, "host"),
    });
}

/// `/blob/<digest>`: the storage side of a redirect (no auth).
fn storage_blob(st: &Arc<MockState>, d: &str) -> Response<Body> {
    let Some(b) = st.blobs.lock().unwrap().get(d).cloned() else {
        return oci_error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", "no");
    };
    let (body, len) = faulty_body(st.clone(), b, None);
    let mut r = Response::new(body);
    if let Some(l) = len {
        r.headers_mut().insert("content-length", l.into());
    }
    r
}

/// `/token`: a bearer token (with Basic credentials when the mock wants them).
fn token(st: &MockState, req: &Request<Incoming>) -> Response<Body> {
    st.tokens_issued.fetch_add(1, Ordering::SeqCst);
    let auth = st.auth.lock().unwrap().clone();
    if let Auth::Basic { user, pass } = auth {
        if header(req, "authorization") != Some(basic(&user, &pass)) {
            return oci_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "bad credentials");
        }
    }
    Response::new(full(r#"{"token":"tok-123","expires_in":300}"#))
}

/// The 401 the mock's auth mode asks for, if the request lacks it.
fn challenge(st: &MockState, req: &Request<Incoming>) -> Option<Response<Body>> {
    let exempt = st.auth_exempt_host.lock().unwrap().clone();
    if exempt.is_some() && header(req, "host") == exempt {
        return None;
    }
    let sent = header(req, "authorization");
    let base = st.base.lock().unwrap().clone();
    let www = match st.auth.lock().unwrap().clone() {
        Auth::None => return None,
        Auth::Bearer if sent.as_deref() == Some("Bearer tok-123") => return None,
        Auth::Bearer => {
            format!(r#"Bearer realm="{base}/token",service="mock",scope="repository:x:pull""#)
        }
        Auth::Basic { user, pass } if sent == Some(basic(&user, &pass)) => return None,
        Auth::Basic { .. } => r#"Basic realm="mock""#.to_string(),
    };
    let mut r = oci_error(
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        "authentication required",
    );
    r.headers_mut()
        .insert("www-authenticate", www.parse().unwrap());
    Some(r)
}

/// `GET /v2/<repo>/tags/list`.
fn tags_list(st: &MockState, repo: &str) -> Response<Body> {
    let tags = st.tags(repo);
    let mut r = Response::new(full(
        serde_json::json!({"name": repo, "tags": tags}).to_string(),
    ));
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    if let Some(l) = st.tags_link.lock().unwrap().clone() {
        r.headers_mut().insert("link", l.parse().unwrap());
    }
    r
}

/// `PUT /v2/<repo>/manifests/<reference>[?tag=...]`: stored by digest and
/// tag; `?tag=` honoured (and echoed as `OCI-Tag`) unless told to ignore it.
async fn put_manifest(
    st: &MockState,
    req: Request<Incoming>,
    repo: &str,
    reference: &str,
) -> Response<Body> {
    let mt = header(&req, "content-type").unwrap_or_default();
    let tags: Vec<String> = url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .filter(|(k, _)| k == "tag")
        .map(|(_, v)| v.into_owned())
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let d = Digest::of(&body);
    let echo = !st.ignore_tag_query.load(Ordering::SeqCst) && !tags.is_empty();
    {
        let mut m = st.manifests.lock().unwrap();
        let keep = (body.clone(), mt.clone());
        m.insert((repo.to_string(), d.to_string()), keep.clone());
        if !reference.starts_with("sha256:") {
            m.insert((repo.to_string(), reference.to_string()), keep.clone());
        }
        for t in tags.iter().filter(|_| echo) {
            m.insert((repo.to_string(), t.clone()), keep.clone());
        }
    }
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::CREATED;
    let h = r.headers_mut();
    if echo {
        h.insert("oci-tag", tags.join(",").parse().unwrap());
    }
    h.insert(
        "location",
        format!("/v2/{repo}/manifests/{d}").parse().unwrap(),
    );
    h.insert("docker-content-digest", d.to_string().parse().unwrap());
    r
}

/// distribution 2.8's content negotiation for a manifest GET/HEAD.
fn distribution_negotiation(
    st: &MockState,
    repo: &str,
    m: Option<(Bytes, String)>,
    accept: &str,
) -> Option<(Bytes, String)> {
    let (bytes, mt) = m?;
    let index_types = [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ];
    if index_types.contains(&mt.as_str()) && !index_types.iter().any(|t| accept.contains(t)) {
        let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        let child = v["manifests"]
            .as_array()?
            .iter()
            .find(|c| c["platform"]["os"] == "linux" && c["platform"]["architecture"] == "amd64")?;
        let d = child["digest"].as_str()?.to_string();
        return st
            .manifests
            .lock()
            .unwrap()
            .get(&(repo.to_string(), d))
            .cloned();
    }
    if mt == "application/vnd.oci.image.manifest.v1+json" && !accept.contains(&mt) {
        return None;
    }
    Some((bytes, mt))
}

/// `GET`/`HEAD /v2/<repo>/manifests/<reference>`.
fn get_manifest(
    st: &MockState,
    req: &Request<Incoming>,
    repo: &str,
    reference: &str,
) -> Response<Body> {
    let accept = req
        .headers()
        .get_all("accept")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    let key = (repo.to_string(), reference.to_string());
    let mut m = st.manifests.lock().unwrap().get(&key).cloned();
    if st.distribution_accept.load(Ordering::SeqCst) {
        m = distribution_negotiation(st, repo, m, &accept);
    }
    let Some((bytes, mt)) = m else {
        return oci_error(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            "manifest unknown",
        );
    };
    let digest = match st.lie_manifest_digest.load(Ordering::SeqCst) {
        true => Digest::of(b"lie").to_string(),
        false => Digest::of(&bytes).to_string(),
    };
    let len = bytes.len();
    let body = match req.method() == Method::HEAD {
        true => full(Bytes::new()),
        false => full(bytes),
    };
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert("content-type", mt.parse().unwrap());
    h.insert("docker-content-digest", digest.parse().unwrap());
    h.insert("content-length", len.into());
    r
}

/// `GET`/`HEAD /v2/<repo>/blobs/<digest>`: per repository when scoped,
/// redirected when told, served with the blob's fault.
fn get_blob(
    st: &Arc<MockState>,
    req: &Request<Incoming>,
    repo: &str,
    reference: &str,
) -> Response<Body> {
    let scoped_out = st.scoped_blobs.load(Ordering::SeqCst)
        && !st
            .repo_blobs
            .lock()
            .unwrap()
            .contains(&(repo.to_string(), reference.to_string()));
    let data = st.blobs.lock().unwrap().get(reference).cloned();
    let Some(data) = data.filter(|_| !scoped_out) else {
        return oci_error(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            "blob unknown to registry",
        );
    };
    let mut r = Response::new(full(Bytes::new()));
    if req.method() == Method::HEAD {
        r.headers_mut().insert("content-length", data.len().into());
    } else if let Some(to) = st.redirect_blobs_to.lock().unwrap().clone() {
        *r.status_mut() = StatusCode::TEMPORARY_REDIRECT;
        r.headers_mut().insert(
            "location",
            format!("{to}/blob/{reference}").parse().unwrap(),
        );
        return r;
    } else {
        let fault = st.faults.lock().unwrap().get(reference).cloned();
        // `Range: bytes=N-`, served when the mock is told to.
        let from = req
            .headers()
            .get("range")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("bytes=")?
                    .strip_suffix('-')?
                    .parse::<usize>()
                    .ok()
            })
            .filter(|n| st.ranges.load(Ordering::SeqCst) && *n < data.len());
        if from.is_some() {
            st.ranged_gets.fetch_add(1, Ordering::SeqCst);
        }
        let (body, len) = faulty_body(st.clone(), data.slice(from.unwrap_or(0)..), fault);
        r = Response::new(body);
        if let Some(l) = len {
            r.headers_mut().insert("content-length", l.into());
        }
        if from.is_some() {
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        }
    }
    r.headers_mut()
        .insert("docker-content-digest", reference.parse().unwrap());
    r
}

/// `GET /v2/<repo>/referrers/<digest>`, from manifests with that subject.
fn referrers(st: &MockState, repo: &str, reference: &str) -> Response<Body> {
    let list: Vec<serde_json::Value> = st
        .manifests
        .lock()
        .unwrap()
        .iter()
        .filter(|((r, t), _)| r == repo && t.starts_with("sha256:"))
        .filter_map(|((_, t), (b, mt))| {
            let v: serde_json::Value = serde_json::from_slice(b).ok()?;
            (v["subject"]["digest"].as_str()? == reference).then(|| {
                serde_json::json!({"mediaType": mt, "digest": t, "size": b.len(), "artifactType": v["artifactType"]})
            })
        })
        .collect();
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": list});
    let mut r = Response::new(full(index.to_string()));
    r.headers_mut().insert(
        "content-type",
        "application/vnd.oci.image.index.v1+json".parse().unwrap(),
    );
    r
}

/// An upload request, with its whole body.
async fn upload(
    st: &Arc<MockState>,
    req: Request<Incoming>,
    segs: &[&str],
) -> Option<Response<Body>> {
    let query = req.uri().query().map(str::to_string);
    let respond = mock_upload(st, &req, segs, &query).await?;
    Some(match req.into_body().collect().await {
        Ok(c) => respond(c.to_bytes()),
        Err(_) => {
            st.aborted_bodies.fetch_add(1, Ordering::SeqCst);
            oci_error(
                StatusCode::BAD_REQUEST,
                "BLOB_UPLOAD_INVALID",
                "request body broke off",
            )
        }
    })
}

/// Every request the mock gets.
pub async fn mock_handle(
    st: Arc<MockState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    record(&st, &req);
    if st.down.load(Ordering::SeqCst) {
        return Ok(oci_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "down for maintenance",
        ));
    }
    let path = req.uri().path().to_string();
    if let Some(d) = path.strip_prefix("/blob/") {
        return Ok(storage_blob(&st, d));
    }
    if path == "/token" {
        return Ok(token(&st, &req));
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Ok(oci_error(StatusCode::NOT_FOUND, "UNSUPPORTED", "no"));
    };
    if let Some(r) = challenge(&st, &req) {
        return Ok(r);
    }
    if rest.is_empty() {
        return Ok(Response::new(full("{}")));
    }
    let segs: Vec<&str> = rest.split('/').collect();
    let n = segs.len();
    if n >= 3 && segs[n - 2] == "tags" && segs[n - 1] == "list" {
        return Ok(tags_list(&st, &segs[..n - 2].join("/")));
    }
    if n >= 4 && segs[n - 3] == "blobs" && segs[n - 2] == "uploads" {
        let answer = upload(&st, req, &segs).await;
        return Ok(answer.unwrap_or_else(|| oci_error(StatusCode::NOT_FOUND, "UNSUPPORTED", "no")));
    }
    if n < 3 {
        return Ok(oci_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN", "no"));
    }
    let repo = segs[..n - 2].join("/");
    let reference = segs[n - 1];
    Ok(match segs[n - 2] {
        "manifests" if req.method() == Method::PUT => {
            put_manifest(&st, req, &repo, reference).await
        }
        "manifests" => get_manifest(&st, &req, &repo, reference),
        "blobs" => get_blob(&st, &req, &repo, reference),
        "referrers" if st.referrers_api.load(Ordering::SeqCst) => referrers(&st, &repo, reference),
        _ => oci_error(StatusCode::NOT_FOUND, "UNSUPPORTED", "page not found"),
    })
}
