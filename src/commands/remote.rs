//! Talking to a registry (modelgate or any other) from the command line:
//! the connection options `sign`, `promote` and `rollback` share, and the
//! few requests they make (manifests, blobs, the release history).

use crate::config::UpstreamConfig;
use crate::metrics::Metrics;
use crate::oci::media::{OCI_INDEX, OCI_MANIFEST};
use crate::oci::{Digest, ImageRef, OciError};
use crate::upstream::Upstream;
use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Limited};
use std::sync::Arc;
use std::time::Duration;

/// How to reach the registry an IMAGE names.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// Plain HTTP (loopback test registries).
    pub plain_http: bool,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Extra CA certificate (PEM) for an https registry.
    pub ca_cert: Option<std::path::PathBuf>,
}

/// A client for the registry `image` names.
pub fn registry_client(image: &ImageRef, a: &Connection) -> Result<Upstream, String> {
    let scheme = if a.plain_http { "http" } else { "https" };
    let cfg = UpstreamConfig {
        name: image.host.clone(),
        url: url::Url::parse(&format!("{scheme}://{}", image.host)).map_err(|e| e.to_string())?,
        default: true,
        username: a.username.clone(),
        password: a.password.clone(),
        ca_cert: a.ca_cert.clone(),
        connect_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
    };
    Upstream::new(&cfg, Arc::new(Metrics::new())).map_err(|e| e.to_string())
}

async fn body_of(
    resp: hyper::Response<hyper::body::Incoming>,
    max: usize,
) -> Result<Bytes, String> {
    Limited::new(resp.into_body(), max)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| e.to_string())
}

/// Requests to one repository of a registry.
pub struct Remote<'a> {
    up: &'a Upstream,
    repo: &'a str,
    scope: String,
}

impl<'a> Remote<'a> {
    pub fn new(up: &'a Upstream, image: &'a ImageRef) -> Remote<'a> {
        Remote {
            up,
            repo: image.repo.as_str(),
            scope: format!("repository:{}:pull,push", image.repo),
        }
    }

    async fn send(
        &self,
        method: Method,
        url: url::Url,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<hyper::Response<hyper::body::Incoming>, String> {
        self.up
            .request(method, url, headers, &self.scope, body)
            .await
            .map_err(|e| e.to_string())
    }

    async fn fail(what: &str, resp: hyper::Response<hyper::body::Incoming>) -> String {
        let status = resp.status();
        let body = body_of(resp, 64 * 1024).await.unwrap_or_default();
        let detail = OciError::parse_body(&body)
            .map(|(c, m)| format!("{}: {m}", c.as_str()))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
        format!("{what}: registry answered {status}: {detail}")
    }

    pub async fn get_manifest(
        &self,
        reference: &str,
        accept: &str,
    ) -> Result<Option<(Bytes, String)>, String> {
        let mut h = HeaderMap::new();
        h.insert(
            ACCEPT,
            HeaderValue::from_str(accept).map_err(|e| e.to_string())?,
        );
        let resp = self
            .send(
                Method::GET,
                self.up
                    .url(self.repo, &format!("manifests/{reference}"), None),
                h,
                Bytes::new(),
            )
            .await?;
        match resp.status() {
            StatusCode::OK => {
                let ct = resp
                    .headers()
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(OCI_MANIFEST)
                    .to_string();
                Ok(Some((
                    body_of(resp, crate::oci::media::MAX_MANIFEST_BYTES).await?,
                    ct,
                )))
            }
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(Self::fail(&format!("GET manifest {reference}"), resp).await),
        }
    }

    pub async fn put_blob(&self, data: &[u8]) -> Result<Digest, String> {
        let d = Digest::of(data);
        let head = self
            .send(
                Method::HEAD,
                self.up.url(self.repo, &format!("blobs/{d}"), None),
                HeaderMap::new(),
                Bytes::new(),
            )
            .await?;
        if head.status() == StatusCode::OK {
            return Ok(d);
        }
        let resp = self
            .send(
                Method::POST,
                self.up.url(self.repo, "blobs/uploads/", None),
                HeaderMap::new(),
                Bytes::new(),
            )
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(Self::fail("start blob upload", resp).await);
        }
        let loc = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or("upload answer has no Location")?
            .to_string();
        let mut url = self
            .up
            .base_url()
            .join(&loc)
            .map_err(|e| format!("bad upload Location {loc:?}: {e}"))?;
        url.query_pairs_mut().append_pair("digest", &d.to_string());
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        h.insert(CONTENT_LENGTH, HeaderValue::from(data.len()));
        let resp = self
            .send(Method::PUT, url, h, Bytes::copy_from_slice(data))
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(Self::fail("finish blob upload", resp).await);
        }
        Ok(d)
    }

    /// PUT a manifest under `reference`, saying why (`X-Modelgate-Reason`)
    /// when given.
    pub async fn put_manifest(
        &self,
        reference: &str,
        bytes: &[u8],
        media_type: &str,
        reason: Option<&str>,
    ) -> Result<(), String> {
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_str(media_type).map_err(|e| e.to_string())?,
        );
        if let Some(r) = reason {
            h.insert(
                "x-modelgate-reason",
                HeaderValue::from_bytes(r.as_bytes())
                    .map_err(|_| "--reason must be one line of printable text")?,
            );
        }
        let resp = self
            .send(
                Method::PUT,
                self.up
                    .url(self.repo, &format!("manifests/{reference}"), None),
                h,
                Bytes::copy_from_slice(bytes),
            )
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(Self::fail(&format!("PUT manifest {reference}"), resp).await);
        }
        Ok(())
    }
}

impl Remote<'_> {
    /// Whether the registry answers the referrers API for `d` (else
    /// referrers live in the `sha256-<hex>` tag-schema index).
    pub async fn has_referrers_api(&self, d: &Digest) -> Result<bool, String> {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, HeaderValue::from_static(OCI_INDEX));
        let url = self.up.url(self.repo, &format!("referrers/{d}"), None);
        let r = self.send(Method::GET, url, h, Bytes::new()).await?;
        Ok(r.status() == StatusCode::OK
            && r.headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| t.starts_with(OCI_INDEX)))
    }

    /// The release history modelgate keeps for this repository (of one tag).
    pub async fn history(&self, tag: &str) -> Result<serde_json::Value, String> {
        let mut url = self.up.url(self.repo, "_modelgate/history", None);
        url.query_pairs_mut().append_pair("tag", tag);
        let resp = self
            .send(Method::GET, url, HeaderMap::new(), Bytes::new())
            .await?;
        if resp.status() != StatusCode::OK {
            return Err(Self::fail("GET the release history (is this a modelgate?)", resp).await);
        }
        let body = body_of(resp, 16 * 1024 * 1024).await?;
        serde_json::from_slice(&body).map_err(|e| format!("the release history is not JSON: {e}"))
    }
}
