//! Lists a repository answers: its tags (paged as the upstream pages them)
//! and the referrers of a digest (the referrers API, else the `sha256-<hex>`
//! tag-schema index, else an empty index).

use super::core::Registry;
use super::error::{failure, read_body, BadContent, Object, RegistryError};
use crate::oci::media::{ManifestSummary, MAX_MANIFEST_BYTES, OCI_INDEX};
use crate::oci::Digest;
use crate::upstream::Route;
use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, LINK};
use http::{HeaderMap, HeaderValue, Method, StatusCode};

/// One page of a tags list: the upstream's body and its `Link` (to the next
/// page), as the upstream wrote it.
pub struct TagsPage {
    pub body: Bytes,
    pub link: Option<String>,
}

/// Referrers as an index document.
pub struct Referrers {
    pub index: Vec<u8>,
    /// Whether the `artifactType` filter was applied.
    pub filtered: bool,
}

/// Keep only descriptors of `artifact_type` in an index document.
pub fn filter_index(doc: &[u8], artifact_type: Option<&str>) -> Result<Vec<u8>, String> {
    let mut v: serde_json::Value = serde_json::from_slice(doc).map_err(|e| e.to_string())?;
    let list = v
        .get_mut("manifests")
        .and_then(|m| m.as_array_mut())
        .ok_or("not an index: no manifests list")?;
    if let Some(t) = artifact_type {
        list.retain(|d| d.get("artifactType").and_then(|a| a.as_str()) == Some(t));
    }
    let out = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": list,
    });
    serde_json::to_vec(&out).map_err(|e| e.to_string())
}

impl Registry {
    /// A page of `r`'s tags; only the paging parameters of `query` go on.
    pub async fn tags_page(
        &self,
        r: &Route,
        query: Option<&str>,
    ) -> Result<TagsPage, RegistryError> {
        let up = &r.upstream;
        let q: Vec<(String, String)> = url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .filter(|(k, _)| k == "n" || k == "last")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let q = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(q)
            .finish();
        let resp = up
            .pull(
                Method::GET,
                r.path.as_str(),
                "tags/list",
                Some(&q),
                HeaderMap::new(),
            )
            .await?;
        if resp.status() != StatusCode::OK {
            return Err(failure(up, resp, Object::Repository).await);
        }
        let link = resp
            .headers()
            .get(LINK)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // Read whole (bounded) so the caller can rewrite the Link.
        let max = 16 * MAX_MANIFEST_BYTES;
        let body = read_body(
            up,
            resp,
            max,
            "tags list (page with ?n=)",
            Object::Repository,
        )
        .await?;
        Ok(TagsPage { body, link })
    }

    /// Referrers of `d` in `r`'s repository, filtered by `artifact_type`.
    pub async fn referrers(
        &self,
        r: &Route,
        d: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Referrers, RegistryError> {
        let up = &r.upstream;
        let bad = |e: String| RegistryError::BadContent {
            kind: BadContent::Invalid,
            object: Object::Manifest,
            message: format!("upstream {} referrers of {d}: {e}", up.name),
        };
        let q = artifact_type.map(|t| {
            url::form_urlencoded::Serializer::new(String::new())
                .append_pair("artifactType", t)
                .finish()
        });
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, HeaderValue::from_static(OCI_INDEX));
        let resp = up
            .pull(
                Method::GET,
                r.path.as_str(),
                &format!("referrers/{d}"),
                q.as_deref(),
                h,
            )
            .await?;
        let is_index = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.split(';').next().unwrap_or("").trim() == OCI_INDEX);
        if resp.status() == StatusCode::OK && is_index {
            let applied = resp.headers().get("OCI-Filters-Applied").is_some();
            let body =
                read_body(up, resp, MAX_MANIFEST_BYTES, "referrers", Object::Manifest).await?;
            if applied || artifact_type.is_none() {
                return Ok(Referrers {
                    index: body.to_vec(),
                    filtered: applied,
                });
            }
            return Ok(Referrers {
                index: filter_index(&body, artifact_type).map_err(bad)?,
                filtered: true,
            });
        }
        if resp.status().is_server_error() {
            return Err(failure(up, resp, Object::Manifest).await);
        }
        drop(resp);
        // No referrers API: the tag schema fallback. Signers rewrite this
        // index in place: always ask the upstream.
        let filtered = artifact_type.is_some();
        let empty = || Referrers {
            index: filter_index(br#"{"manifests":[]}"#, None).unwrap_or_default(),
            filtered,
        };
        match self
            .manifest_fresh(r, &d.tag_schema(), Some(OCI_INDEX))
            .await
        {
            Ok(m) if ManifestSummary::parse(&m.bytes).is_ok_and(|s| s.is_index()) => {
                Ok(Referrers {
                    index: filter_index(&m.bytes, artifact_type).map_err(bad)?,
                    filtered,
                })
            }
            Ok(_) => Ok(empty()),
            Err(e) if e.is_not_found() => Ok(empty()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_filtering() {
        let doc = br#"{"schemaVersion":2,"manifests":[{"digest":"a","artifactType":"x"},{"digest":"b","artifactType":"y"},{"digest":"c"}]}"#;
        let v: serde_json::Value =
            serde_json::from_slice(&filter_index(doc, Some("y")).unwrap()).unwrap();
        assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
        assert_eq!(v["mediaType"], OCI_INDEX);
        let v: serde_json::Value =
            serde_json::from_slice(&filter_index(doc, None).unwrap()).unwrap();
        assert_eq!(v["manifests"].as_array().unwrap().len(), 3);
    }
}
