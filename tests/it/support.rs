//! Test support: an in-process upstream registry that can be told to lie,
//! a modelgate started in-process, and a small HTTP client.

#![allow(dead_code)]

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use modelgate::config::Config;
use modelgate::oci::Digest;
use modelgate::server::{self, App};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

/// How the mock misbehaves when serving one blob.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Serve these bytes (same length announced) instead of the real ones.
    WrongBytes(Bytes),
    /// Chunked body (no length) that ends cleanly after this many bytes.
    ShortChunked(usize),
    /// Announce the full length, send this many bytes, then break the connection.
    DropAfter(usize),
    /// Send in chunks of `chunk` bytes with `delay` between them.
    Drip { chunk: usize, delay: Duration },
    /// Send this many bytes, then nothing at all.
    StallAfter(usize),
}

#[derive(Clone, Debug, Default)]
pub enum Auth {
    #[default]
    None,
    Bearer,
    Basic {
        user: String,
        pass: String,
    },
}

#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub authorization: Option<String>,
    /// All Accept values, joined.
    pub accept: Option<String>,
    pub host: Option<String>,
}

/// State of a mock upstream registry.
#[derive(Default)]
pub struct MockState {
    pub blobs: Mutex<HashMap<String, Bytes>>,
    pub manifests: Mutex<HashMap<(String, String), (Bytes, String)>>,
    pub faults: Mutex<HashMap<String, Fault>>,
    pub seen: Mutex<Vec<Seen>>,
    pub auth: Mutex<Auth>,
    /// Redirect blob GETs to this base URL (`<base>/blob/<digest>`).
    pub redirect_blobs_to: Mutex<Option<String>>,
    /// Answer 503 to everything.
    pub down: AtomicBool,
    /// Serve `/v2/<name>/referrers/<digest>` from manifests with a subject.
    pub referrers_api: AtomicBool,
    /// Blob body bytes sent so far.
    pub sent: AtomicU64,
    /// Lie in Docker-Content-Digest for manifests.
    pub lie_manifest_digest: AtomicBool,
    /// Extra headers for tags/list answers.
    pub tags_link: Mutex<Option<String>>,
    pub tokens_issued: AtomicU64,
    pub base: Mutex<String>,
    /// Upload sessions in progress: id -> (repo, bytes so far).
    pub uploads: Mutex<HashMap<String, (String, Vec<u8>)>>,
    pub upload_seq: AtomicU64,
    /// Upload requests whose body broke off (the proxy aborted them).
    pub aborted_bodies: AtomicU64,
    /// Blobs are per repository (`repo_blobs`), as in a real registry.
    pub scoped_blobs: AtomicBool,
    pub repo_blobs: Mutex<std::collections::HashSet<(String, String)>>,
    /// Answer Accept the way distribution 2.8 does: a tag naming an index
    /// resolves to its linux/amd64 child for clients that do not accept
    /// indexes; OCI manifests are 404 for clients that do not accept them.
    pub distribution_accept: AtomicBool,
    /// Ignore `?tag=` on manifest PUT by digest (no `OCI-Tag` echoed).
    pub ignore_tag_query: AtomicBool,
    /// Requests with this Host header need no credentials (a storage host).
    pub auth_exempt_host: Mutex<Option<String>>,
    /// Upload Locations point at this base URL (another origin).
    pub upload_location_base: Mutex<Option<String>>,
    /// Upload Locations are relative to the request's URL (`u1`, not `/v2/...`).
    pub relative_upload_locations: AtomicBool,
}

impl MockState {
    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.method.as_str() == method && s.path.contains(path_contains))
            .count()
    }

    pub fn add_blob(&self, data: impl Into<Bytes>) -> Digest {
        let data = data.into();
        let d = Digest::of(&data);
        self.blobs.lock().unwrap().insert(d.to_string(), data);
        d
    }

    /// A blob that only `repo` holds (with `scoped_blobs`).
    pub fn add_blob_in(&self, repo: &str, data: impl Into<Bytes>) -> Digest {
        let d = self.add_blob(data);
        self.repo_blobs
            .lock()
            .unwrap()
            .insert((repo.to_string(), d.to_string()));
        d
    }

    /// Sign `d` with `key` in cosign's legacy format, as the upstream's
    /// `sha256-<hex>.sig` tag of `repo` (made straight at the upstream).
    pub fn attach_legacy_signature(
        &self,
        repo: &str,
        key: &modelgate::trust::PrivateKey,
        d: &Digest,
    ) {
        let sig = modelgate::trust::sign::sign_legacy(key, &format!("local/{repo}"), d);
        let (config, manifest) = modelgate::trust::sign::legacy_manifest(None, &sig);
        self.add_blob(sig.payload.clone());
        self.add_blob(config);
        self.add_manifest(
            repo,
            Some(&format!("{}.sig", d.tag_schema())),
            manifest,
            "application/vnd.oci.image.manifest.v1+json",
        );
    }

    /// What the mock has been asked so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Serve `repo_from`'s manifest `reference` also as `repo_to:reference_to`.
    pub fn copy_manifest(
        &self,
        repo_from: &str,
        reference: &str,
        repo_to: &str,
        reference_to: &str,
    ) {
        let mut m = self.manifests.lock().unwrap();
        let v = m
            .get(&(repo_from.to_string(), reference.to_string()))
            .cloned()
            .expect("manifest to copy");
        m.insert((repo_to.to_string(), reference_to.to_string()), v);
    }

    /// A blob the mock serves with `fault`.
    pub fn add_faulty_blob(&self, data: impl Into<Bytes>, fault: Fault) -> Digest {
        let d = self.add_blob(data);
        self.faults.lock().unwrap().insert(d.to_string(), fault);
        d
    }

    pub fn add_manifest(
        &self,
        repo: &str,
        tag: Option<&str>,
        bytes: impl Into<Bytes>,
        media_type: &str,
    ) -> Digest {
        let bytes = bytes.into();
        let d = Digest::of(&bytes);
        let mut m = self.manifests.lock().unwrap();
        m.insert(
            (repo.into(), d.to_string()),
            (bytes.clone(), media_type.into()),
        );
        if let Some(t) = tag {
            m.insert((repo.into(), t.into()), (bytes, media_type.into()));
        }
        d
    }

    /// Push an OCI image made of `layers`; returns (manifest digest, manifest bytes, layer digests).
    pub fn add_image(
        &self,
        repo: &str,
        tag: &str,
        layers: &[Bytes],
    ) -> (Digest, Bytes, Vec<Digest>) {
        let config = Bytes::from(format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Labels":{{"model.version":"v1.0.0"}}}},"rootfs":{{"type":"layers","diff_ids":[]}},"tag":"{tag}"}}"#
        ));
        let cd = self.add_blob(config.clone());
        let mut ls = Vec::new();
        let mut descs = Vec::new();
        for l in layers {
            let d = self.add_blob(l.clone());
            descs.push(format!(
                r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{}}}"#,
                l.len()
            ));
            ls.push(d);
        }
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{}}},"layers":[{}]}}"#,
            config.len(),
            descs.join(",")
        );
        let md = self.add_manifest(
            repo,
            Some(tag),
            m.clone(),
            "application/vnd.oci.image.manifest.v1+json",
        );
        (md, Bytes::from(m), ls)
    }
}

/// Deterministic pseudo-random bytes.
pub fn data(len: usize, seed: u8) -> Bytes {
    let mut x: u32 = 0x9e3779b9 ^ seed as u32;
    Bytes::from(
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x & 0xff) as u8
            })
            .collect::<Vec<u8>>(),
    )
}

/// A running mock upstream registry.
pub struct Mock {
    pub addr: SocketAddr,
    pub state: Arc<MockState>,
    stop: Option<oneshot::Sender<()>>,
}

impl Mock {
    pub async fn start() -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(MockState::default());
        *state.base.lock().unwrap() = format!("http://{addr}");
        let (tx, mut rx) = oneshot::channel::<()>();
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = &mut rx => break,
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| mock_handle(st.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Mock {
            addr,
            state,
            stop: Some(tx),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn oci_error(status: StatusCode, code: &str, msg: &str) -> Response<Body> {
    let mut r = Response::new(full(format!(
        r#"{{"errors":[{{"code":"{code}","message":"{msg}"}}]}}"#
    )));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn faulty_body(st: Arc<MockState>, data: Bytes, fault: Option<Fault>) -> (Body, Option<u64>) {
    use futures_util::stream;
    let len = data.len() as u64;
    let sent = move |n: usize| {
        st.sent.fetch_add(n as u64, Ordering::SeqCst);
    };
    match fault {
        None => {
            sent(data.len());
            (full(data), Some(len))
        }
        Some(Fault::WrongBytes(b)) => {
            sent(b.len());
            (full(b), Some(len))
        }
        Some(Fault::ShortChunked(n)) => {
            let part = data.slice(..n);
            sent(n);
            let s = stream::iter(vec![Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                Frame::data(part),
            )]);
            (BodyExt::boxed(StreamBody::new(s)), None)
        }
        Some(Fault::DropAfter(n)) => {
            let part = data.slice(..n);
            sent(n);
            // Let the first part reach the wire before the connection breaks.
            let s = stream::iter(vec![Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                Frame::data(part),
            )])
            .chain(stream::once(async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Err::<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>(
                    "connection dropped by test".into(),
                )
            }));
            (BodyExt::boxed(StreamBody::new(s)), Some(len))
        }
        Some(Fault::StallAfter(n)) => {
            let part = data.slice(..n);
            sent(n);
            let s = stream::iter(vec![Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                Frame::data(part),
            )])
            .chain(stream::once(async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Err::<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>("never".into())
            }));
            (BodyExt::boxed(StreamBody::new(s)), Some(len))
        }
        Some(Fault::Drip { chunk, delay }) => {
            let chunks: Vec<Bytes> = (0..data.len())
                .step_by(chunk)
                .map(|i| data.slice(i..(i + chunk).min(data.len())))
                .collect();
            let s = stream::iter(chunks).then(move |c| {
                let sent = sent.clone();
                async move {
                    tokio::time::sleep(delay).await;
                    sent(c.len());
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(c))
                }
            });
            (BodyExt::boxed(StreamBody::new(s)), Some(len))
        }
    }
}

use futures_util::StreamExt;

type Responder = Box<dyn FnOnce(Bytes) -> Response<Body> + Send>;

/// Blob uploads as the distribution registry does them: POST (optionally
/// `mount`), PATCH appends, PUT `?digest=` finishes (checking the digest),
/// GET status, DELETE cancels. Returns None when the path is not an upload.
async fn mock_upload(
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

async fn mock_handle(
    st: Arc<MockState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let auth_hdr = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    st.seen.lock().unwrap().push(Seen {
        method: req.method().clone(),
        path: path.clone(),
        query: query.clone(),
        authorization: auth_hdr.clone(),
        accept: {
            let a: Vec<&str> = req
                .headers()
                .get_all("accept")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            (!a.is_empty()).then(|| a.join(", "))
        },
        host: req
            .headers()
            .get("host")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    });
    if st.down.load(Ordering::SeqCst) {
        return Ok(oci_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "down for maintenance",
        ));
    }
    // Storage side of a redirect: no auth needed, serves blobs.
    if let Some(d) = path.strip_prefix("/blob/") {
        let data = st.blobs.lock().unwrap().get(d).cloned();
        return Ok(match data {
            Some(b) => {
                let (body, len) = faulty_body(st.clone(), b, None);
                let mut r = Response::new(body);
                if let Some(l) = len {
                    r.headers_mut().insert("content-length", l.into());
                }
                r
            }
            None => oci_error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", "no"),
        });
    }
    if path == "/token" {
        st.tokens_issued.fetch_add(1, Ordering::SeqCst);
        let auth = st.auth.lock().unwrap().clone();
        if let Auth::Basic { user, pass } = auth {
            use base64::Engine;
            let want = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
            );
            if auth_hdr.as_deref() != Some(want.as_str()) {
                return Ok(oci_error(
                    StatusCode::UNAUTHORIZED,
                    "UNAUTHORIZED",
                    "bad credentials",
                ));
            }
        }
        return Ok(Response::new(full(
            r#"{"token":"tok-123","expires_in":300}"#,
        )));
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Ok(oci_error(StatusCode::NOT_FOUND, "UNSUPPORTED", "no"));
    };
    let mut auth = st.auth.lock().unwrap().clone();
    let base = st.base.lock().unwrap().clone();
    let exempt = st.auth_exempt_host.lock().unwrap().clone();
    if exempt.is_some()
        && req.headers().get("host").and_then(|v| v.to_str().ok()) == exempt.as_deref()
    {
        auth = Auth::None;
    }
    match auth {
        Auth::None => {}
        Auth::Bearer => {
            if auth_hdr.as_deref() != Some("Bearer tok-123") {
                let mut r = oci_error(
                    StatusCode::UNAUTHORIZED,
                    "UNAUTHORIZED",
                    "authentication required",
                );
                r.headers_mut().insert(
                    "www-authenticate",
                    format!(
                        r#"Bearer realm="{base}/token",service="mock",scope="repository:x:pull""#
                    )
                    .parse()
                    .unwrap(),
                );
                return Ok(r);
            }
        }
        Auth::Basic { ref user, ref pass } => {
            use base64::Engine;
            let want = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
            );
            if auth_hdr.as_deref() != Some(want.as_str()) {
                let mut r = oci_error(
                    StatusCode::UNAUTHORIZED,
                    "UNAUTHORIZED",
                    "authentication required",
                );
                r.headers_mut()
                    .insert("www-authenticate", r#"Basic realm="mock""#.parse().unwrap());
                return Ok(r);
            }
        }
    }
    if rest.is_empty() {
        return Ok(Response::new(full("{}")));
    }
    let segs: Vec<&str> = rest.split('/').collect();
    let n = segs.len();
    if n >= 3 && segs[n - 2] == "tags" && segs[n - 1] == "list" {
        let repo = segs[..n - 2].join("/");
        let mut tags: Vec<String> = st
            .manifests
            .lock()
            .unwrap()
            .keys()
            .filter(|(r, t)| r == &repo && !t.starts_with("sha256:"))
            .map(|(_, t)| t.clone())
            .collect();
        tags.sort();
        let mut r = Response::new(full(
            serde_json::json!({"name": repo, "tags": tags}).to_string(),
        ));
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        if let Some(l) = st.tags_link.lock().unwrap().clone() {
            r.headers_mut().insert("link", l.parse().unwrap());
        }
        return Ok(r);
    }
    if let Some(r) = mock_upload(&st, &req, &segs, &query).await {
        return Ok(match req.into_body().collect().await {
            Ok(c) => r(c.to_bytes()),
            Err(_) => {
                st.aborted_bodies.fetch_add(1, Ordering::SeqCst);
                oci_error(
                    StatusCode::BAD_REQUEST,
                    "BLOB_UPLOAD_INVALID",
                    "request body broke off",
                )
            }
        });
    }
    if n < 3 {
        return Ok(oci_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN", "no"));
    }
    let repo = segs[..n - 2].join("/");
    let reference = segs[n - 1].to_string();
    match segs[n - 2] {
        "manifests" if req.method() == Method::PUT => {
            let mt = req
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let tags: Vec<String> = query
                .as_deref()
                .map(|q| {
                    url::form_urlencoded::parse(q.as_bytes())
                        .filter(|(k, _)| k == "tag")
                        .map(|(_, v)| v.into_owned())
                        .collect()
                })
                .unwrap_or_default();
            let body = req
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let d = Digest::of(&body);
            let mut m = st.manifests.lock().unwrap();
            m.insert((repo.clone(), d.to_string()), (body.clone(), mt.clone()));
            if !reference.starts_with("sha256:") {
                m.insert(
                    (repo.clone(), reference.clone()),
                    (body.clone(), mt.clone()),
                );
            }
            let echo = !st.ignore_tag_query.load(Ordering::SeqCst) && !tags.is_empty();
            if echo {
                for t in &tags {
                    m.insert((repo.clone(), t.clone()), (body.clone(), mt.clone()));
                }
            }
            let mut r = Response::new(full(Bytes::new()));
            *r.status_mut() = StatusCode::CREATED;
            if echo {
                r.headers_mut()
                    .insert("oci-tag", tags.join(",").parse().unwrap());
            }
            r.headers_mut().insert(
                "location",
                format!("/v2/{repo}/manifests/{d}").parse().unwrap(),
            );
            r.headers_mut()
                .insert("docker-content-digest", d.to_string().parse().unwrap());
            Ok(r)
        }
        "manifests" => {
            let accept = req
                .headers()
                .get_all("accept")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
                .join(",");
            let mut m = st
                .manifests
                .lock()
                .unwrap()
                .get(&(repo.clone(), reference.clone()))
                .cloned();
            if st.distribution_accept.load(Ordering::SeqCst) {
                m = distribution_negotiation(&st, &repo, m, &accept);
            }
            let Some((bytes, mt)) = m else {
                return Ok(oci_error(
                    StatusCode::NOT_FOUND,
                    "MANIFEST_UNKNOWN",
                    "manifest unknown",
                ));
            };
            let digest = if st.lie_manifest_digest.load(Ordering::SeqCst) {
                Digest::of(b"lie").to_string()
            } else {
                Digest::of(&bytes).to_string()
            };
            let len = bytes.len();
            let mut r = Response::new(if req.method() == Method::HEAD {
                full(Bytes::new())
            } else {
                full(bytes)
            });
            let h = r.headers_mut();
            h.insert("content-type", mt.parse().unwrap());
            h.insert("docker-content-digest", digest.parse().unwrap());
            h.insert("content-length", len.into());
            Ok(r)
        }
        "blobs" => {
            let mut data = st.blobs.lock().unwrap().get(&reference).cloned();
            if st.scoped_blobs.load(Ordering::SeqCst)
                && !st
                    .repo_blobs
                    .lock()
                    .unwrap()
                    .contains(&(repo.clone(), reference.clone()))
            {
                data = None;
            }
            let Some(data) = data else {
                return Ok(oci_error(
                    StatusCode::NOT_FOUND,
                    "BLOB_UNKNOWN",
                    "blob unknown to registry",
                ));
            };
            if req.method() == Method::HEAD {
                let mut r = Response::new(full(Bytes::new()));
                r.headers_mut().insert("content-length", data.len().into());
                r.headers_mut()
                    .insert("docker-content-digest", reference.parse().unwrap());
                return Ok(r);
            }
            if let Some(to) = st.redirect_blobs_to.lock().unwrap().clone() {
                let mut r = Response::new(full(Bytes::new()));
                *r.status_mut() = StatusCode::TEMPORARY_REDIRECT;
                r.headers_mut().insert(
                    "location",
                    format!("{to}/blob/{reference}").parse().unwrap(),
                );
                return Ok(r);
            }
            let fault = st.faults.lock().unwrap().get(&reference).cloned();
            let (body, len) = faulty_body(st.clone(), data, fault);
            let mut r = Response::new(body);
            if let Some(l) = len {
                r.headers_mut().insert("content-length", l.into());
            }
            r.headers_mut()
                .insert("docker-content-digest", reference.parse().unwrap());
            Ok(r)
        }
        "referrers" if st.referrers_api.load(Ordering::SeqCst) => {
            let list: Vec<serde_json::Value> = st
                .manifests
                .lock()
                .unwrap()
                .iter()
                .filter(|((r, t), _)| r == &repo && t.starts_with("sha256:"))
                .filter_map(|((_, t), (b, mt))| {
                    let v: serde_json::Value = serde_json::from_slice(b).ok()?;
                    (v["subject"]["digest"].as_str()? == reference).then(|| {
                        serde_json::json!({"mediaType": mt, "digest": t, "size": b.len(), "artifactType": v["artifactType"]})
                    })
                })
                .collect();
            let mut r = Response::new(full(serde_json::json!({"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":list}).to_string()));
            r.headers_mut().insert(
                "content-type",
                "application/vnd.oci.image.index.v1+json".parse().unwrap(),
            );
            Ok(r)
        }
        _ => Ok(oci_error(
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
            "page not found",
        )),
    }
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

/// A modelgate running in-process.
pub struct Gate {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub app: Arc<App>,
    pub dir: std::path::PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _tmp: Option<tempfile::TempDir>,
}

/// `[[upstreams]]` text for one upstream.
pub fn upstream_toml(name: &str, url: &str, default: bool, extra: &str) -> String {
    format!("[[upstreams]]\nname = \"{name}\"\nurl = \"{url}\"\ndefault = {default}\nidle_timeout = \"2s\"\nconnect_timeout = \"1s\"\n{extra}\n")
}

impl Gate {
    /// Start with the given `[[upstreams]]` and `[cache]` extras, in a fresh cache dir.
    pub async fn start(upstreams: &str, cache_extra: &str) -> Gate {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut g = Gate::start_in(&dir, upstreams, cache_extra, None).await;
        g._tmp = Some(tmp);
        g
    }

    pub async fn start_in(
        dir: &std::path::Path,
        upstreams: &str,
        cache_extra: &str,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Gate {
        // Most tests push without credentials; the read-only default has
        // its own tests (bypass.rs).
        Gate::start_with(
            dir,
            upstreams,
            cache_extra,
            "allow_anonymous_push = true",
            tls,
        )
        .await
    }

    /// One upstream named `local` at `upstream_url` (the default), a fresh
    /// cache dir, and exactly these `[server]` settings (read-only unless
    /// they say otherwise).
    pub async fn start_server(upstream_url: &str, server_extra: &str) -> Gate {
        let tmp = tempfile::tempdir().unwrap();
        let upstreams = upstream_toml("local", upstream_url, true, "");
        let mut g = Gate::start_with(tmp.path(), &upstreams, "", server_extra, None).await;
        g._tmp = Some(tmp);
        g
    }

    /// Start with extra `[server]` settings too.
    pub async fn start_with(
        dir: &std::path::Path,
        upstreams: &str,
        cache_extra: &str,
        server_extra: &str,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Gate {
        let policy = if dir.join("policy.toml").exists() {
            format!(
                "[policy]\nfile = \"{}\"\nreload_interval = \"200ms\"",
                dir.join("policy.toml").display()
            )
        } else {
            String::new()
        };
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{server_extra}\n[audit]\npath = \"{}\"\n{policy}\n[cache]\ndir = \"{}\"\n{cache_extra}\n{upstreams}",
            dir.join("audit.log").display(),
            dir.join("cache").display()
        );
        let cfg = Config::parse(&text).unwrap();
        let app = App::new(cfg).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server::run(
            app.clone(),
            listener,
            Some(admin),
            tls,
            async move {
                let _ = rx.await;
            },
        ));
        Gate {
            addr,
            admin: admin_addr,
            app,
            dir: dir.to_path_buf(),
            stop: Some(tx),
            task: Some(task),
            _tmp: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The audit records written so far.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit lines are JSON"))
            .collect()
    }

    pub fn metrics(&self) -> String {
        self.app.metrics().encode()
    }

    /// The value of one metric line (exact name with labels), 0 if absent.
    pub fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics(), series)
    }

    /// Signal shutdown and wait for the server to finish.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(40), t).await;
        }
    }

    pub fn trigger_stop(&mut self) -> Option<tokio::task::JoinHandle<()>> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.take()
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|v| v.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// A free loopback port (for servers that take a port, not a listener).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Start `cmd` with no input and its output in `log`.
pub fn spawn_logged(
    cmd: &mut std::process::Command,
    log: &std::path::Path,
) -> std::io::Result<std::process::Child> {
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(std::fs::File::create(log)?))
        .spawn()
}

/// Run the `modelgate` binary: (exit code, stdout + stderr).
pub fn modelgate_cli<I, S>(args: I) -> (Option<i32>, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_modelgate"))
        .args(args)
        .output()
        .expect("run modelgate");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// `modelgate cache <action> --config <cfg>`.
pub fn cache_cli(action: &str, cfg: &std::path::Path) -> (Option<i32>, String) {
    modelgate_cli([
        std::ffi::OsStr::new("cache"),
        std::ffi::OsStr::new(action),
        std::ffi::OsStr::new("--config"),
        cfg.as_os_str(),
    ])
}

/// An htpasswd file in `dir` with user `ci-bot`, password `s3cret`; returns
/// the `[server]` line that uses it.
pub fn htpasswd_with_ci_bot(dir: &std::path::Path) -> String {
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    std::fs::write(dir.join("htpasswd"), format!("ci-bot:{hash}\n")).unwrap();
    format!("htpasswd = \"{}\"", dir.join("htpasswd").display())
}

/// What a client saw.
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The body, or why reading it failed.
    pub body: Result<Bytes, String>,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn bytes(&self) -> &Bytes {
        self.body.as_ref().expect("body read failed")
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(self.bytes()).expect("body is JSON")
    }
    /// The OCI error code of the body.
    pub fn code(&self) -> String {
        self.json()["errors"][0]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
    pub fn message(&self) -> String {
        self.json()["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn send(method: Method, url: &str, headers: &[(&str, &str)]) -> Got {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = tokio::time::timeout(
        Duration::from_secs(60),
        client().request(req.body(Full::new(Bytes::new())).unwrap()),
    )
    .await
    .expect("response headers within 60s")
    .expect("request failed");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = match tokio::time::timeout(Duration::from_secs(60), resp.into_body().collect()).await
    {
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("body timed out".into()),
    };
    Got {
        status,
        headers,
        body,
    }
}

/// A request with a body.
pub async fn send_body(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Got {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = tokio::time::timeout(
        Duration::from_secs(60),
        client().request(req.body(Full::new(body.into())).unwrap()),
    )
    .await
    .expect("response headers within 60s")
    .expect("request failed");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| e.to_string());
    Got {
        status,
        headers,
        body,
    }
}

pub async fn get(url: &str) -> Got {
    send(Method::GET, url, &[]).await
}

/// Wait (bounded) until no download is in flight: a client gets its last
/// byte once the blob verified, and the commit to the cache follows.
pub async fn settle(g: &Gate) {
    for _ in 0..200 {
        if g.app.registry().flights().in_flight() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("downloads still in flight after 2s");
}

/// Files under the cache's blob directory.
pub fn cached_blobs(g: &Gate) -> Vec<String> {
    std::fs::read_dir(g.dir.join("cache/blobs/sha256"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Files left in the cache's temp directory.
pub fn temp_files(g: &Gate) -> usize {
    std::fs::read_dir(g.dir.join("cache/tmp"))
        .map(|rd| rd.count())
        .unwrap_or(0)
}
