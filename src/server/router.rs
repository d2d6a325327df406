//! Request paths → endpoints. Paths are parsed strictly: anything that is not
//! a well-formed `/v2/...` path of the distribution API is refused here,
//! before routing or upstream code sees it.

use crate::oci::{Digest, ErrorCode, OciError, Reference, RepoName};
use http::StatusCode;

/// A distribution API endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Base,
    /// `/v2/_catalog`: refused (see [`catalog_refused`]).
    Catalog,
    Manifest(RepoName, Reference),
    Blob(RepoName, Digest),
    TagsList(RepoName),
    Referrers(RepoName, Digest),
    /// `/v2/<name>/blobs/uploads/[<id>]`
    Upload(RepoName, Option<String>),
    /// `/v2/<name>/_modelgate/history`: the release ledger (JSON). `_` cannot
    /// start a repository component, so no repository is shadowed.
    History(RepoName),
}

impl Endpoint {
    /// The methods this endpoint serves (the `Allow` of an OPTIONS answer).
    pub fn allow(&self) -> &'static str {
        match self {
            Endpoint::Base | Endpoint::TagsList(..) | Endpoint::Referrers(..) => {
                "GET, HEAD, OPTIONS"
            }
            Endpoint::History(..) => "GET, OPTIONS",
            Endpoint::Catalog => "OPTIONS",
            Endpoint::Manifest(..) => "GET, HEAD, PUT, DELETE, OPTIONS",
            Endpoint::Blob(..) => "GET, HEAD, DELETE, OPTIONS",
            Endpoint::Upload(..) => "GET, POST, PATCH, PUT, DELETE, OPTIONS",
        }
    }

    /// What the endpoint is, for messages.
    pub fn what(&self) -> &'static str {
        match self {
            Endpoint::Base => "/v2/",
            Endpoint::Catalog => "/v2/_catalog",
            Endpoint::Manifest(..) => "manifests",
            Endpoint::Blob(..) => "blobs",
            Endpoint::TagsList(..) => "tags/list",
            Endpoint::Referrers(..) => "referrers",
            Endpoint::Upload(_, None) => "blobs/uploads/",
            Endpoint::Upload(_, Some(_)) => "an upload session",
            Endpoint::History(..) => "_modelgate/history",
        }
    }

    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Endpoint::Base => "base",
            Endpoint::Catalog => "catalog",
            Endpoint::Manifest(..) => "manifests",
            Endpoint::Blob(..) => "blobs",
            Endpoint::TagsList(..) => "tags",
            Endpoint::Referrers(..) => "referrers",
            Endpoint::Upload(..) => "uploads",
            Endpoint::History(..) => "history",
        }
    }
}

fn not_found(path: &str) -> OciError {
    OciError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::Unsupported,
        format!("no such endpoint {path:?}: modelgate serves the OCI distribution API under /v2/"),
    )
}

/// Why `/v2/_catalog` is refused: it is not part of the OCI distribution
/// spec, most public registries do not serve it, and through modelgate it
/// would list every repository of every upstream, governed or not.
pub fn catalog_refused() -> OciError {
    OciError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::Unsupported,
        "modelgate does not list repositories (/v2/_catalog is not part of the OCI distribution spec and would expose every upstream's repositories); list a repository's tags with /v2/<name>/tags/list",
    )
}

/// A well-formed digest of an algorithm other than sha256: modelgate
/// verifies every byte with SHA-256, so such content is not available
/// through it (404, as for content the upstream lacks).
fn other_algorithm(s: &str, what: ErrorCode) -> Option<OciError> {
    let (alg, hex) = s.split_once(':')?;
    let known = matches!(alg, "sha512" | "sha384");
    let well_formed = !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit());
    (known && well_formed).then(|| {
        OciError::new(
            StatusCode::NOT_FOUND,
            what,
            format!("modelgate serves sha256 content only (it verifies every byte with SHA-256); {alg} digests are not available through it"),
        )
    })
}

/// Parse a request path (without the query).
pub fn parse(path: &str) -> Result<Endpoint, OciError> {
    if path == "/v2" || path == "/v2/" {
        return Ok(Endpoint::Base);
    }
    if path == "/v2/_catalog" {
        return Ok(Endpoint::Catalog);
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Err(not_found(path));
    };
    if rest.contains('%') || rest.contains("//") || rest.split('/').any(|s| s == ".." || s == ".") {
        return Err(OciError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::NameInvalid,
            format!("path {path:?} is not a valid repository path (no encoded characters, empty or dot segments)"),
        ));
    }
    let segs: Vec<&str> = rest.split('/').collect();
    let n = segs.len();
    let name = |k: usize| -> Result<RepoName, OciError> {
        if k == 0 {
            return Err(not_found(path));
        }
        Ok(RepoName::parse(&segs[..k].join("/"))?)
    };
    // uploads: .../blobs/uploads/ and .../blobs/uploads/<id>
    if n >= 4 && segs[n - 3] == "blobs" && segs[n - 2] == "uploads" {
        let id = segs[n - 1];
        let id = if id.is_empty() {
            None
        } else {
            Some(id.to_string())
        };
        return Ok(Endpoint::Upload(name(n - 3)?, id));
    }
    if n >= 3 && segs[n - 2] == "_modelgate" && segs[n - 1] == "history" {
        return Ok(Endpoint::History(name(n - 2)?));
    }
    if n >= 3 && segs[n - 2] == "tags" && segs[n - 1] == "list" {
        return Ok(Endpoint::TagsList(name(n - 2)?));
    }
    if n >= 3 {
        let last = segs[n - 1];
        let alien = |code| other_algorithm(last, code).map_or(Ok(()), Err);
        match segs[n - 2] {
            "manifests" => {
                alien(ErrorCode::ManifestUnknown)?;
                return Ok(Endpoint::Manifest(name(n - 2)?, Reference::parse(last)?));
            }
            "blobs" => {
                alien(ErrorCode::BlobUnknown)?;
                let d = last.parse().map_err(|e: crate::oci::DigestError| {
                    OciError::new(
                        StatusCode::BAD_REQUEST,
                        ErrorCode::DigestInvalid,
                        e.to_string(),
                    )
                })?;
                return Ok(Endpoint::Blob(name(n - 2)?, d));
            }
            "referrers" => {
                alien(ErrorCode::ManifestUnknown)?;
                let d = last.parse().map_err(|e: crate::oci::DigestError| {
                    OciError::new(
                        StatusCode::BAD_REQUEST,
                        ErrorCode::DigestInvalid,
                        e.to_string(),
                    )
                })?;
                return Ok(Endpoint::Referrers(name(n - 2)?, d));
            }
            _ => {}
        }
    }
    Err(not_found(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(parse("/v2/").unwrap(), Endpoint::Base);
        assert_eq!(parse("/v2").unwrap(), Endpoint::Base);
        assert!(matches!(
            parse("/v2/docker.io/library/alpine/manifests/3.19").unwrap(),
            Endpoint::Manifest(n, Reference::Tag(t)) if n.as_str() == "docker.io/library/alpine" && t == "3.19"
        ));
        assert!(matches!(
            parse(&format!("/v2/a/blobs/{d}")).unwrap(),
            Endpoint::Blob(..)
        ));
        assert!(
            matches!(parse("/v2/a/b/tags/list").unwrap(), Endpoint::TagsList(n) if n.as_str() == "a/b")
        );
        assert!(matches!(
            parse(&format!("/v2/a/referrers/{d}")).unwrap(),
            Endpoint::Referrers(..)
        ));
        assert!(matches!(
            parse("/v2/a/blobs/uploads/").unwrap(),
            Endpoint::Upload(_, None)
        ));
        assert!(
            matches!(parse("/v2/a/blobs/uploads/xyz").unwrap(), Endpoint::Upload(_, Some(id)) if id == "xyz")
        );
        // A repository may itself be called "manifests" or "blobs".
        assert!(matches!(
            parse("/v2/blobs/manifests/manifests/latest").unwrap(),
            Endpoint::Manifest(n, _) if n.as_str() == "blobs/manifests"
        ));
    }

    #[test]
    fn catalog_options_and_other_algorithms() {
        assert_eq!(parse("/v2/_catalog").unwrap(), Endpoint::Catalog);
        let d512 = format!("sha512:{}", "a".repeat(128));
        let e = parse(&format!("/v2/a/b/manifests/{d512}")).unwrap_err();
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert_eq!(e.code, ErrorCode::ManifestUnknown);
        assert!(e.message.contains("sha256 content only"));
        let e = parse(&format!("/v2/a/b/blobs/{d512}")).unwrap_err();
        assert_eq!(e.code, ErrorCode::BlobUnknown);
        // Malformed stays malformed.
        assert_eq!(
            parse("/v2/a/b/blobs/sha512:zz").unwrap_err().code,
            ErrorCode::DigestInvalid
        );
        assert!(Endpoint::Base.allow().contains("OPTIONS"));
    }

    #[test]
    fn refuses_tricks_with_codes() {
        let e = parse("/v2/a/../b/manifests/x").unwrap_err();
        assert_eq!(e.code, ErrorCode::NameInvalid);
        assert_eq!(
            parse("/v2/a%2f..%2fb/manifests/x").unwrap_err().code,
            ErrorCode::NameInvalid
        );
        assert_eq!(
            parse("/v2/a/blobs/sha256:zz").unwrap_err().code,
            ErrorCode::DigestInvalid
        );
        assert_eq!(
            parse("/v2/A/manifests/x").unwrap_err().code,
            ErrorCode::NameInvalid
        );
        assert_eq!(
            parse("/v2/a/manifests/-bad").unwrap_err().code,
            ErrorCode::ManifestInvalid
        );
        assert_eq!(
            parse("/etc/passwd").unwrap_err().status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            parse("/v2/manifests/x").unwrap_err().status,
            StatusCode::NOT_FOUND
        );
    }
}
