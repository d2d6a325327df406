//! `modelgate sign`: sign an image digest in cosign's formats (legacy
//! `.sig` tag, or a Sigstore bundle v0.3 referrer) and push the signature to
//! a registry (modelgate or the upstream).

use crate::config::UpstreamConfig;
use crate::metrics::Metrics;
use crate::oci::media::{DEFAULT_MANIFEST_ACCEPT, OCI_INDEX, OCI_MANIFEST};
use crate::oci::{Digest, ImageRef, OciError};
use crate::trust::{sign as build, PrivateKey};
use crate::upstream::Upstream;
use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Limited};
use std::sync::Arc;
use std::time::Duration;

/// Options of `modelgate sign`.
pub struct SignArgs {
    pub key: std::path::PathBuf,
    pub image: String,
    pub bundle: bool,
    pub digest: Option<Digest>,
    pub media_type: Option<String>,
    pub size: Option<u64>,
    pub plain_http: bool,
    pub username: Option<String>,
    pub password: Option<String>,
    pub ca_cert: Option<std::path::PathBuf>,
}

fn registry_client(image: &ImageRef, a: &SignArgs) -> Result<Upstream, String> {
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

struct Pusher<'a> {
    up: &'a Upstream,
    repo: &'a str,
    scope: String,
}

impl Pusher<'_> {
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

    async fn get_manifest(
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

    async fn put_blob(&self, data: &[u8]) -> Result<Digest, String> {
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

    async fn put_manifest(
        &self,
        reference: &str,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<(), String> {
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_str(media_type).map_err(|e| e.to_string())?,
        );
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

/// `modelgate sign`: sign an image digest in cosign's format and push the
/// signature to the registry named in IMAGE.
pub async fn sign(a: SignArgs) -> Result<(), String> {
    let image = ImageRef::parse(&a.image)?;
    let key_pem =
        std::fs::read_to_string(&a.key).map_err(|e| format!("{}: {e}", a.key.display()))?;
    let key = PrivateKey::from_pem(&key_pem).map_err(|e| format!("{}: {e}", a.key.display()))?;
    let up = registry_client(&image, &a)?;
    let p = Pusher {
        up: &up,
        repo: image.repo.as_str(),
        scope: format!("repository:{}:pull,push", image.repo),
    };
    // What is signed: --digest, IMAGE@digest, or what IMAGE's tag points at now.
    let (digest, subject) = match a.digest.clone().or(image.digest.clone()) {
        Some(d) => (
            d,
            a.size.map(|s| {
                (
                    a.media_type.clone().unwrap_or_else(|| OCI_MANIFEST.into()),
                    s,
                )
            }),
        ),
        None => {
            let reference = image.reference().to_string();
            let (bytes, ct) = p
                .get_manifest(&reference, DEFAULT_MANIFEST_ACCEPT)
                .await?
                .ok_or(format!("{} not found in the registry", a.image))?;
            (Digest::of(&bytes), Some((ct, bytes.len() as u64)))
        }
    };
    let docker_reference = format!("{}/{}", image.host, image.repo);
    if a.bundle {
        let (mt, size) = match subject {
            Some(s) => s,
            None => match p.get_manifest(&digest.to_string(), DEFAULT_MANIFEST_ACCEPT).await? {
                Some((b, ct)) => (ct, b.len() as u64),
                None => return Err(format!("{digest} is not in the registry: give --size (and --media-type) to sign it before it is pushed")),
            },
        };
        let bundle = build::sign_bundle(&key, &digest);
        p.put_blob(&bundle).await?;
        p.put_blob(build::EMPTY_JSON).await?;
        let created = crate::audit::now_rfc3339();
        let manifest = build::bundle_manifest(&bundle, &mt, &digest, size, &created);
        let md = Digest::of(&manifest);
        p.put_manifest(&md.to_string(), &manifest, OCI_MANIFEST)
            .await?;
        // Registries without a referrers API: keep the tag-schema index.
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, HeaderValue::from_static(OCI_INDEX));
        let r = p
            .send(
                Method::GET,
                up.url(p.repo, &format!("referrers/{digest}"), None),
                h,
                Bytes::new(),
            )
            .await?;
        let api = r.status() == StatusCode::OK
            && r.headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| t.starts_with(OCI_INDEX));
        drop(r);
        if !api {
            let existing = p.get_manifest(&digest.tag_schema(), OCI_INDEX).await?;
            let index = build::add_to_referrers_index(
                existing.as_ref().map(|(b, _)| b.as_ref()),
                &manifest,
            );
            p.put_manifest(&digest.tag_schema(), &index, OCI_INDEX)
                .await?;
        }
        println!(
            "signed {docker_reference}@{digest} (bundle referrer {md}, key hint {})",
            key.public().hint()
        );
    } else {
        let sig = build::sign_legacy(&key, &docker_reference, &digest);
        let tag = format!("{}.sig", digest.tag_schema());
        let existing = p.get_manifest(&tag, OCI_MANIFEST).await?;
        let (config, manifest) =
            build::legacy_manifest(existing.as_ref().map(|(b, _)| b.as_ref()), &sig);
        p.put_blob(&sig.payload).await?;
        p.put_blob(&config).await?;
        p.put_manifest(&tag, &manifest, OCI_MANIFEST).await?;
        println!(
            "signed {docker_reference}@{digest} (tag {tag}, key hint {})",
            key.public().hint()
        );
    }
    Ok(())
}
