//! Media types and the little manifest parsing the proxy needs: what a
//! manifest is and which digests it references. Bytes are never re-serialised;
//! parsing only reads.

use super::digest::Digest;
use serde::Deserialize;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_V1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const DOCKER_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";

/// Largest manifest modelgate reads: 4 MiB, the size the spec says every
/// registry should accept.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// A manifest as stored and served: the exact bytes, their digest, and the
/// media type they are served with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub bytes: bytes::Bytes,
    pub digest: Digest,
    pub media_type: String,
}

/// What we ask an upstream for when the client did not say.
pub const DEFAULT_MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// Whether a client `Accept` header admits `media_type`. No header, `*/*` or
/// `application/*` admit everything.
pub fn accepts(accept: Option<&str>, media_type: &str) -> bool {
    let Some(accept) = accept else { return true };
    let mut any = false;
    for part in accept.split(',') {
        let t = part.split(';').next().unwrap_or("").trim();
        if t.is_empty() {
            continue;
        }
        any = true;
        if t == "*/*" || t == "application/*" || t.eq_ignore_ascii_case(media_type) {
            return true;
        }
    }
    !any
}

#[derive(Deserialize, Default)]
struct RawDescriptor {
    digest: Option<String>,
    size: Option<u64>,
}

#[derive(Deserialize, Default)]
struct RawManifest {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<RawDescriptor>,
    #[serde(default)]
    layers: Vec<RawDescriptor>,
    #[serde(default)]
    manifests: Vec<RawDescriptor>,
    #[serde(default)]
    subject: Option<RawDescriptor>,
}

/// The parts of a manifest or index the proxy looks at.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ManifestSummary {
    /// `mediaType` inside the document, if any.
    pub media_type: Option<String>,
    pub config: Option<Digest>,
    pub layers: Vec<Digest>,
    /// Children of an index.
    pub manifests: Vec<Digest>,
    pub subject: Option<Digest>,
    /// The size each descriptor (config, layer) declares.
    pub declared: Vec<(Digest, u64)>,
}

impl ManifestSummary {
    /// Parse a manifest or index. Errors name what is wrong.
    pub fn parse(bytes: &[u8]) -> Result<ManifestSummary, String> {
        super::json::check_strict(bytes).map_err(|e| format!("manifest is {e}"))?;
        let raw: RawManifest = serde_json::from_slice(bytes)
            .map_err(|e| format!("manifest is not valid JSON: {e}"))?;
        let dig = |d: &RawDescriptor, what: &str| -> Result<Option<Digest>, String> {
            match &d.digest {
                None => Ok(None),
                Some(s) => s
                    .parse()
                    .map(Some)
                    .map_err(|e| format!("{what} digest: {e}")),
            }
        };
        let mut out = ManifestSummary {
            media_type: raw.media_type.clone(),
            ..Default::default()
        };
        if let Some(c) = &raw.config {
            out.config = dig(c, "config")?;
            if let (Some(d), Some(n)) = (&out.config, c.size) {
                out.declared.push((d.clone(), n));
            }
        }
        for l in &raw.layers {
            if let Some(d) = dig(l, "layer")? {
                if let Some(n) = l.size {
                    out.declared.push((d.clone(), n));
                }
                out.layers.push(d);
            }
        }
        for m in &raw.manifests {
            if let Some(d) = dig(m, "child manifest")? {
                out.manifests.push(d);
            }
        }
        if let Some(s) = &raw.subject {
            out.subject = dig(s, "subject")?;
        }
        Ok(out)
    }

    /// Whether this is an index / manifest list.
    pub fn is_index(&self) -> bool {
        matches!(
            self.media_type.as_deref(),
            Some(OCI_INDEX) | Some(DOCKER_LIST)
        ) || (!self.manifests.is_empty() && self.config.is_none())
    }
}

/// Pick the content type for a manifest: the upstream's header when given,
/// else the document's own `mediaType`, else OCI manifest/index by shape.
pub fn content_type_for(header: Option<&str>, bytes: &[u8]) -> String {
    if let Some(h) = header {
        let t = h.split(';').next().unwrap_or("").trim();
        if !t.is_empty() && t != "application/octet-stream" && t != "text/plain" {
            return t.to_string();
        }
    }
    match ManifestSummary::parse(bytes) {
        Ok(s) => s.media_type.clone().unwrap_or_else(|| {
            if s.is_index() {
                OCI_INDEX.to_string()
            } else {
                OCI_MANIFEST.to_string()
            }
        }),
        Err(_) => OCI_MANIFEST.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        assert!(accepts(None, OCI_MANIFEST));
        assert!(accepts(Some("*/*"), OCI_MANIFEST));
        assert!(accepts(Some(""), OCI_MANIFEST));
        assert!(accepts(
            Some("application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json;q=0.5"),
            OCI_MANIFEST
        ));
        assert!(!accepts(Some(DOCKER_MANIFEST), OCI_INDEX));
    }

    #[test]
    fn summary_of_index_and_manifest() {
        let d = Digest::of(b"x");
        let idx = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{d}","size":1}}]}}"#
        );
        let s = ManifestSummary::parse(idx.as_bytes()).unwrap();
        assert!(s.is_index());
        assert_eq!(s.manifests, vec![d.clone()]);
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{d}"}},"layers":[{{"digest":"{d}"}}],"subject":{{"digest":"{d}"}}}}"#
        );
        let s = ManifestSummary::parse(m.as_bytes()).unwrap();
        assert!(!s.is_index());
        assert_eq!(s.config, Some(d.clone()));
        assert_eq!(s.subject, Some(d));
        assert_eq!(content_type_for(None, m.as_bytes()), OCI_MANIFEST);
        assert_eq!(
            content_type_for(Some("text/plain"), idx.as_bytes()),
            OCI_INDEX
        );
        assert!(ManifestSummary::parse(b"{not json").is_err());
        assert!(ManifestSummary::parse(br#"{"layers":[{"digest":"md5:1"}]}"#).is_err());
    }
}
