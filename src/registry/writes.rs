//! What a push forwards to the upstream: blob uploads (started, streamed
//! chunk by chunk, finished or cancelled), manifests (with the tags the
//! upstream confirms), existence checks and deletions. The policy has
//! decided before any of this is called.

use super::core::Registry;
use super::error::{failure, Object, RegistryError};
use crate::cache::Held;
use crate::oci::media::DEFAULT_MANIFEST_ACCEPT;
use crate::oci::{Digest, Manifest, Reference, RepoName};
use crate::upstream::client::ReqBody;
use crate::upstream::{Route, UpstreamError};
use bytes::Bytes;
use http::header::{CONTENT_TYPE, LOCATION};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use hyper::body::Incoming;
use url::Url;

/// The token scope of a push to `r`'s repository.
fn push_scope(r: &Route) -> String {
    format!("repository:{}:pull,push", r.path)
}

/// How an upload began.
pub enum UploadStart {
    /// The upstream mounted the blob from the other repository: done.
    Mounted,
    /// An upload session: send the bytes to this URL.
    Session(Url),
}

/// What a step of an upload sends.
pub enum UploadBody {
    /// No bytes (a PUT that only names the digest).
    Empty,
    /// The client's bytes, streamed (cannot be replayed after a challenge).
    Stream(ReqBody),
}

/// What an upload step expects the upstream to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadStep {
    /// A chunk: 202 with the next Location.
    Chunk,
    /// The end: 201.
    Finish,
}

/// What a DELETE removes.
pub enum Deletion {
    Manifest(Reference),
    Blob(Digest),
}

impl Deletion {
    /// The path suffix under the repository.
    pub fn suffix(&self) -> String {
        match self {
            Deletion::Manifest(r) => format!("manifests/{r}"),
            Deletion::Blob(d) => format!("blobs/{d}"),
        }
    }
}

/// Where the upstream wants the next request of an upload: its `Location`,
/// resolved against the URL of the request that returned it.
fn next_location(
    r: &Route,
    sent_to: &Url,
    resp: &Response<Incoming>,
) -> Result<Url, RegistryError> {
    let protocol = |message: String| {
        RegistryError::Upstream(UpstreamError::Protocol {
            upstream: r.upstream.name.clone(),
            message,
        })
    };
    let loc = resp
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| protocol("answered an upload without Location".into()))?;
    sent_to
        .join(loc)
        .map_err(|e| protocol(format!("upload Location {loc:?}: {e}")))
}

/// Start an upload in `r`'s repository, mounting `mount` from another
/// repository of the same upstream when given.
pub async fn start_upload(
    r: &Route,
    mount: Option<(&Digest, &RepoName)>,
) -> Result<UploadStart, RegistryError> {
    let up = &r.upstream;
    let query = mount.map(|(d, from)| {
        url::form_urlencoded::Serializer::new(String::new())
            .append_pair("mount", &d.to_string())
            .append_pair("from", from.as_str())
            .finish()
    });
    let url = up.url(r.path.as_str(), "blobs/uploads/", query.as_deref());
    let resp = up
        .request(
            Method::POST,
            url.clone(),
            HeaderMap::new(),
            &push_scope(r),
            Bytes::new(),
        )
        .await?;
    match resp.status() {
        StatusCode::CREATED if mount.is_some() => Ok(UploadStart::Mounted),
        StatusCode::ACCEPTED => Ok(UploadStart::Session(next_location(r, &url, &resp)?)),
        _ => Err(failure(up, resp, Object::Repository).await),
    }
}

/// Send one step of an upload to `url`: a chunk (returns the next
/// Location) or the end (returns None).
pub async fn upload_step(
    r: &Route,
    step: UploadStep,
    method: Method,
    url: Url,
    headers: HeaderMap,
    body: UploadBody,
) -> Result<Option<Url>, RegistryError> {
    let up = &r.upstream;
    let scope = push_scope(r);
    let resp = match body {
        UploadBody::Empty => {
            up.request(method, url.clone(), headers, &scope, Bytes::new())
                .await?
        }
        UploadBody::Stream(b) => {
            up.send_once(method, url.clone(), headers, &scope, b)
                .await?
        }
    };
    match (step, resp.status()) {
        (UploadStep::Chunk, StatusCode::ACCEPTED) => Ok(Some(next_location(r, &url, &resp)?)),
        (UploadStep::Finish, StatusCode::CREATED) => Ok(None),
        _ => Err(failure(up, resp, Object::Blob).await),
    }
}

/// Cancel an upload at the upstream (best effort: it expires there too).
pub async fn cancel_upload(r: &Route, url: Url) {
    let scope = push_scope(r);
    let _ = r
        .upstream
        .request(Method::DELETE, url, HeaderMap::new(), &scope, Bytes::new())
        .await;
}

/// [`cancel_upload`] in the background.
pub fn cancel_upload_later(r: &Route, url: Url) {
    let r = r.clone();
    tokio::spawn(async move { cancel_upload(&r, url).await });
}

impl Registry {
    /// Whether `r`'s repository holds `d` (known, or confirmed by a HEAD
    /// that asks for `media_type` first for a manifest).
    pub async fn exists(
        &self,
        r: &Route,
        kind: Held,
        d: &Digest,
        media_type: Option<&str>,
    ) -> Result<bool, RegistryError> {
        if self.holdings.holds(&r.canonical, d, kind) {
            return Ok(true);
        }
        let up = &r.upstream;
        let mut h = HeaderMap::new();
        let (suffix, object) = match kind {
            Held::Blob => (format!("blobs/{d}"), Object::Blob),
            Held::Manifest => {
                let accept = match media_type {
                    Some(t) if !t.is_empty() => format!("{t}, {DEFAULT_MANIFEST_ACCEPT}"),
                    _ => DEFAULT_MANIFEST_ACCEPT.to_string(),
                };
                if let Ok(v) = HeaderValue::from_str(&accept) {
                    h.insert(http::header::ACCEPT, v);
                }
                (format!("manifests/{d}"), Object::Manifest)
            }
        };
        let url = up.url(r.path.as_str(), &suffix, None);
        let resp = up
            .request(Method::HEAD, url, h, &push_scope(r), Bytes::new())
            .await?;
        match resp.status() {
            StatusCode::OK => {
                self.holdings.hold(&r.canonical, d, kind);
                Ok(true)
            }
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(failure(up, resp, object).await),
        }
    }

    /// PUT the exact bytes of `m` upstream under `reference` (with `?tag=`
    /// for `tags`); tags the upstream did not confirm (`OCI-Tag`) are set
    /// with a PUT by tag each, so every tag returned is one the upstream
    /// has. Returns the tags and the `OCI-Subject` the upstream echoed.
    pub async fn put_manifest(
        &self,
        r: &Route,
        m: &Manifest,
        reference: &Reference,
        tags: &[String],
    ) -> Result<(Vec<String>, Option<String>), RegistryError> {
        let (mut confirmed, subject) = put_once(r, m, reference, tags).await?;
        for t in tags {
            if !confirmed.contains(t) {
                put_once(r, m, &Reference::Tag(t.clone()), &[]).await?;
                confirmed.push(t.clone());
            }
        }
        if let Err(e) = self
            .store
            .put_bytes(&m.digest, &m.bytes, Some(&m.media_type))
        {
            tracing::warn!(error = %e, "cannot cache pushed manifest {}", m.digest);
        }
        if let Ok(summary) = crate::oci::media::ManifestSummary::parse(&m.bytes) {
            self.holds_manifest(&r.canonical, &m.digest, &summary);
        }
        for t in &confirmed {
            let _ = self.tags.confirm(&r.canonical, t, &m.digest, &m.media_type);
        }
        Ok((confirmed, subject))
    }

    /// DELETE at the upstream; the tag memory and holdings forget it.
    pub async fn delete(&self, r: &Route, what: &Deletion) -> Result<(), RegistryError> {
        let up = &r.upstream;
        let url = up.url(r.path.as_str(), &what.suffix(), None);
        let resp = up
            .request(
                Method::DELETE,
                url,
                HeaderMap::new(),
                &push_scope(r),
                Bytes::new(),
            )
            .await?;
        if !resp.status().is_success() {
            return Err(failure(up, resp, Object::Manifest).await);
        }
        match what {
            Deletion::Manifest(Reference::Tag(t)) => self.tags.forget(&r.canonical, t),
            Deletion::Manifest(Reference::Digest(d)) | Deletion::Blob(d) => {
                self.holdings.release(&r.canonical, d)
            }
        }
        Ok(())
    }

    /// A blob upload finished (or was mounted): `r`'s repository holds `d`.
    pub fn uploaded(&self, r: &Route, d: &Digest) {
        self.holdings.hold(&r.canonical, d, Held::Blob);
    }
}

/// One manifest PUT; the tags the upstream confirmed and its `OCI-Subject`.
async fn put_once(
    r: &Route,
    m: &Manifest,
    reference: &Reference,
    tags: &[String],
) -> Result<(Vec<String>, Option<String>), RegistryError> {
    let up = &r.upstream;
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&m.media_type) {
        h.insert(CONTENT_TYPE, v);
    }
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
        return Err(failure(up, resp, Object::Manifest).await);
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
    let subject = resp
        .headers()
        .get("oci-subject")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Ok((confirmed, subject))
}
