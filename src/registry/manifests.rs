//! Manifests by tag or digest: the cache when it can answer, else the
//! upstream (exact bytes, digest checked, then cached). Tags are trusted for
//! `tag_ttl`, then revalidated with a HEAD; with the upstream down, a tag
//! resolves to its last known digest.

use super::core::Registry;
use super::error::{failure, read_body, BadContent, Object, RegistryError, DIGEST_HEADER};
use crate::cache::Held;
use crate::metrics::CacheResult;
use crate::metrics::UpstreamLabels;
use crate::oci::media::{self, content_type_for, DEFAULT_MANIFEST_ACCEPT, MAX_MANIFEST_BYTES};
use crate::oci::{Digest, Manifest, Reference};
use crate::upstream::Route;
use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, StatusCode};

/// What modelgate asks an upstream for: every manifest type, plus what the
/// client asked for.
fn upstream_accept(client: Option<&str>) -> String {
    let mut types: Vec<&str> = DEFAULT_MANIFEST_ACCEPT.split(", ").collect();
    for t in client.unwrap_or("").split(',') {
        let t = t.split(';').next().unwrap_or("").trim();
        if !t.is_empty() && !types.contains(&t) {
            types.push(t);
        }
    }
    types.join(", ")
}

fn accept_header(accept: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(accept) {
        h.insert(ACCEPT, v);
    }
    h
}

impl Registry {
    fn cached_manifest(&self, d: &Digest) -> Option<Manifest> {
        let bytes = self.store.read_small(d, MAX_MANIFEST_BYTES)?;
        let media_type = self
            .store
            .media_type(d)
            .unwrap_or_else(|| content_type_for(None, &bytes));
        Some(Manifest {
            bytes: Bytes::from(bytes),
            digest: d.clone(),
            media_type,
        })
    }

    /// A manifest by tag or digest, as `r`'s repository holds it. The
    /// upstream is always asked with every manifest type (plus `accept`'s),
    /// so a tag is recorded only from an answer about the tag itself; the
    /// caller negotiates down for its client.
    pub async fn manifest(
        &self,
        r: &Route,
        reference: &Reference,
        accept: Option<&str>,
    ) -> Result<Manifest, RegistryError> {
        let accept = upstream_accept(accept);
        let m = match reference {
            Reference::Digest(d) => match self.cached_manifest(d) {
                Some(m) => {
                    self.metrics.cache("manifest", CacheResult::Hit);
                    if !self.holdings.holds(&r.canonical, d, Held::Manifest) {
                        self.confirm_held(r, Held::Manifest, d).await?;
                    }
                    m
                }
                None => {
                    self.metrics.cache("manifest", CacheResult::Miss);
                    self.fetch_manifest(r, reference, &accept).await?
                }
            },
            Reference::Tag(tag) => self.manifest_by_tag(r, tag, &accept).await?,
        };
        if !self.holdings.holds(&r.canonical, &m.digest, Held::Manifest) {
            if let Ok(summary) = media::ManifestSummary::parse(&m.bytes) {
                self.holds_manifest(&r.canonical, &m.digest, &summary);
            }
        }
        Ok(m)
    }

    /// A tag from the tag memory when fresh (or revalidated), else the upstream.
    async fn manifest_by_tag(
        &self,
        r: &Route,
        tag: &str,
        accept: &str,
    ) -> Result<Manifest, RegistryError> {
        let reference = Reference::Tag(tag.to_string());
        let cached = self
            .tags
            .get(&r.canonical, tag)
            .and_then(|e| self.cached_manifest(&e.digest).map(|m| (e, m)));
        let Some((entry, m)) = cached else {
            self.metrics.cache("manifest", CacheResult::Miss);
            return match self.fetch_manifest(r, &reference, accept).await {
                Err(e) if e.is_unreachable() => match self.fleet_last_known(r, tag).await {
                    Some(m) => Ok(self.serve_stale(r, tag, m, &e)),
                    None => Err(e),
                },
                other => other,
            };
        };
        if entry.confirmed.is_some_and(|t| t.elapsed() < self.tag_ttl) {
            self.metrics.cache("manifest", CacheResult::Hit);
            return Ok(m);
        }
        // Stale: ask the upstream whether the tag still points here.
        match self.tag_digest(r, tag).await {
            Ok(Some(d)) if d == entry.digest => {
                self.metrics.cache("manifest", CacheResult::Hit);
                let _ = self.tags.confirm(&r.canonical, tag, &d, &m.media_type);
                Ok(m)
            }
            Ok(_) => {
                self.metrics.cache("manifest", CacheResult::Miss);
                match self.fetch_manifest(r, &reference, accept).await {
                    Err(e) if e.is_unreachable() => Ok(self.serve_stale(r, tag, m, &e)),
                    other => other,
                }
            }
            Err(e) if e.is_unreachable() => Ok(self.serve_stale(r, tag, m, &e)),
            Err(e) => Err(e),
        }
    }

    /// A tag read straight from the upstream, bypassing the tag memory (the
    /// cosign signature tags, which signers rewrite in place); the last known
    /// answer only when the upstream is unreachable.
    pub async fn manifest_fresh(
        &self,
        r: &Route,
        tag: &str,
        accept: Option<&str>,
    ) -> Result<Manifest, RegistryError> {
        let accept = upstream_accept(accept);
        let reference = Reference::Tag(tag.to_string());
        match self.fetch_manifest(r, &reference, &accept).await {
            Err(e) if e.is_unreachable() => self.manifest(r, &reference, Some(&accept)).await,
            other => other,
        }
    }

    /// Ask the upstream whether `r`'s repository has `d` (a cached copy came
    /// from elsewhere, or a download another repository started).
    pub(super) async fn confirm_held(
        &self,
        r: &Route,
        kind: Held,
        d: &Digest,
    ) -> Result<(), RegistryError> {
        let (suffix, headers, object) = match kind {
            Held::Manifest => (
                format!("manifests/{d}"),
                accept_header(DEFAULT_MANIFEST_ACCEPT),
                Object::Manifest,
            ),
            Held::Blob => (format!("blobs/{d}"), HeaderMap::new(), Object::Blob),
        };
        let resp = r
            .upstream
            .pull(Method::HEAD, r.path.as_str(), &suffix, None, headers)
            .await?;
        match resp.status() {
            StatusCode::OK => {
                self.holdings.hold(&r.canonical, d, kind);
                Ok(())
            }
            _ => Err(failure(&r.upstream, resp, object).await),
        }
    }

    /// With several replicas, the fleet's last known answer for `tag` (what
    /// another replica was told by the upstream), for when this replica has
    /// none and the upstream cannot be asked.
    async fn fleet_last_known(&self, r: &Route, tag: &str) -> Option<Manifest> {
        let shared = self.shared.as_ref()?;
        let rec = shared.last_known(&r.canonical, tag).await.ok()??;
        let bytes = shared
            .manifest(&rec.digest, MAX_MANIFEST_BYTES)
            .await
            .ok()??;
        if let Err(e) = self
            .store
            .put_bytes(&rec.digest, &bytes, Some(&rec.media_type))
        {
            tracing::warn!(error = %e, "cannot cache manifest {}", rec.digest);
        }
        // The tag named it in this repository: the repository holds it.
        let _ = self
            .tags
            .remember_unconfirmed(&r.canonical, tag, &rec.digest, &rec.media_type);
        Some(Manifest {
            bytes,
            digest: rec.digest,
            media_type: rec.media_type,
        })
    }

    fn serve_stale(&self, r: &Route, tag: &str, m: Manifest, why: &RegistryError) -> Manifest {
        self.metrics
            .stale_served
            .get_or_create(&UpstreamLabels {
                upstream: r.upstream.name.clone(),
            })
            .inc();
        tracing::warn!(
            upstream = %r.upstream.name, repository = %r.canonical, tag, digest = %m.digest,
            "upstream unavailable ({why}); serving the last known tag mapping"
        );
        m
    }

    /// HEAD the tag upstream: the digest it names (None when the tag does
    /// not exist or the upstream names no digest).
    pub async fn tag_digest(&self, r: &Route, tag: &str) -> Result<Option<Digest>, RegistryError> {
        let resp = r
            .upstream
            .pull(
                Method::HEAD,
                r.path.as_str(),
                &format!("manifests/{tag}"),
                None,
                accept_header(&upstream_accept(None)),
            )
            .await?;
        match resp.status() {
            StatusCode::OK => Ok(resp
                .headers()
                .get(DIGEST_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(failure(&r.upstream, resp, Object::Manifest).await),
        }
    }

    /// GET a manifest upstream, verify it, cache it (and its tag).
    async fn fetch_manifest(
        &self,
        r: &Route,
        reference: &Reference,
        accept: &str,
    ) -> Result<Manifest, RegistryError> {
        let up = &r.upstream;
        let resp = up
            .pull(
                Method::GET,
                r.path.as_str(),
                &format!("manifests/{reference}"),
                None,
                accept_header(accept),
            )
            .await?;
        if resp.status() != StatusCode::OK {
            return Err(failure(up, resp, Object::Manifest).await);
        }
        let header = |name| {
            resp.headers()
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .map(str::to_string)
        };
        let (declared_len, header_digest, header_type) = (
            header(CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok()),
            header(http::HeaderName::from_static("docker-content-digest")),
            header(CONTENT_TYPE),
        );
        let what = format!("manifest {reference} of {}", r.canonical);
        if declared_len.is_some_and(|n| n > MAX_MANIFEST_BYTES as u64) {
            return Err(RegistryError::BadContent {
                kind: BadContent::TooLarge,
                object: Object::Manifest,
                message: format!(
                    "upstream {} {what} is larger than {MAX_MANIFEST_BYTES} bytes; modelgate refuses it",
                    up.name
                ),
            });
        }
        let bytes = read_body(up, resp, MAX_MANIFEST_BYTES, &what, Object::Manifest).await?;
        let digest = Digest::of(&bytes);
        let claimed = match reference {
            Reference::Digest(want) => Some(want.to_string()),
            Reference::Tag(_) => header_digest.filter(|h| h.starts_with("sha256:")),
        };
        if let Some(claimed) = claimed.filter(|c| *c != digest.to_string()) {
            self.metrics.digest_mismatch(&up.name);
            tracing::error!(upstream = %up.name, repository = %r.canonical, reference = %reference, claimed, actual = %digest,
                "digest mismatch on a manifest; refused, nothing cached");
            return Err(RegistryError::BadContent {
                kind: BadContent::Mismatch,
                object: Object::Manifest,
                message: format!(
                    "upstream {} sent manifest bytes for {reference} that hash to {digest}, not {claimed}",
                    up.name
                ),
            });
        }
        let media_type = content_type_for(header_type.as_deref(), &bytes);
        self.remember_manifest(r, reference, &bytes, &digest, &media_type);
        self.metrics.served("upstream", bytes.len() as u64);
        Ok(Manifest {
            bytes,
            digest,
            media_type,
        })
    }

    /// Cache a verified manifest, and the tag it was asked by.
    fn remember_manifest(
        &self,
        r: &Route,
        reference: &Reference,
        bytes: &[u8],
        digest: &Digest,
        media_type: &str,
    ) {
        if let Err(e) = self.store.put_bytes(digest, bytes, Some(media_type)) {
            tracing::error!(error = %e, "cannot cache manifest {digest}");
        }
        self.metrics
            .cache_bytes
            .set(self.store.total_bytes() as i64);
        if let Reference::Tag(tag) = reference {
            if let Err(e) = self.tags.confirm(&r.canonical, tag, digest, media_type) {
                tracing::error!(error = %e, "cannot record tag {tag} of {}", r.canonical);
            }
        }
        if let Some(s) = self.shared.clone() {
            let (bytes, d, mt) = (
                Bytes::copy_from_slice(bytes),
                digest.clone(),
                media_type.to_string(),
            );
            let tag = match reference {
                Reference::Tag(t) => Some((r.canonical.clone(), t.clone())),
                Reference::Digest(_) => None,
            };
            tokio::spawn(async move {
                s.put_manifest(&d, bytes).await;
                if let Some((repo, tag)) = tag {
                    if let Err(e) = s.set_last_known(&repo, &tag, &d, &mt).await {
                        tracing::warn!(
                            "the fleet's last known digest of {repo}:{tag} was not updated: {e}"
                        );
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_is_asked_for_every_manifest_type() {
        let a = upstream_accept(Some("application/vnd.docker.distribution.manifest.v2+json"));
        assert_eq!(a, DEFAULT_MANIFEST_ACCEPT);
        let a = upstream_accept(Some("application/x-custom+json; q=0.5, */*"));
        assert!(a.starts_with(DEFAULT_MANIFEST_ACCEPT));
        assert!(a.ends_with("application/x-custom+json, */*"));
    }
}
