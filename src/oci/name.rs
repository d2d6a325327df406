//! Repository names and manifest references as the distribution spec defines
//! them. Parsing here is the first line of defence against path tricks: a
//! [`RepoName`] only ever holds `[a-z0-9]` components joined by the allowed
//! separators, so it can be used in file paths and upstream URLs as is.

use super::digest::{Digest, DigestError};
use std::fmt;

/// A validated repository name (`library/alpine`, `docker.io/library/alpine`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

/// Why a name or reference was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("repository name is empty")]
    Empty,
    #[error("repository name is longer than 255 characters")]
    TooLong,
    #[error(
        "repository name {0:?} is invalid: components must match [a-z0-9]+((.|_|__|-+)[a-z0-9]+)*"
    )]
    Invalid(String),
    #[error("tag {0:?} is invalid: tags match [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}")]
    BadTag(String),
    #[error(transparent)]
    Digest(#[from] DigestError),
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !is_alnum(b[i]) {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

impl RepoName {
    pub fn parse(s: &str) -> Result<RepoName, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > 255 {
            return Err(NameError::TooLong);
        }
        if !s.split('/').all(valid_component) {
            return Err(NameError::Invalid(s.to_string()));
        }
        Ok(RepoName(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first path component and the rest, if there is more than one.
    pub fn split_first(&self) -> Option<(&str, &str)> {
        self.0.split_once('/')
    }

    /// `prefix/self` (prefix is trusted: an upstream name from the config).
    pub fn prefixed(&self, prefix: &str) -> String {
        format!("{prefix}/{}", self.0)
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What follows `/manifests/`: a tag or a digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, NameError> {
        if s.contains(':') {
            return Ok(Reference::Digest(s.parse()?));
        }
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 128
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
        if ok {
            Ok(Reference::Tag(s.to_string()))
        } else {
            Err(NameError::BadTag(s.to_string()))
        }
    }

    pub fn digest(&self) -> Option<&Digest> {
        match self {
            Reference::Digest(d) => Some(d),
            Reference::Tag(_) => None,
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t),
            Reference::Digest(d) => write!(f, "{d}"),
        }
    }
}

/// An image reference as users type it: `host[:port]/repo[:tag][@digest]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    pub host: String,
    pub repo: RepoName,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef, String> {
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d.parse::<Digest>().map_err(|e| e.to_string())?)),
            None => (s, None),
        };
        let (host, path) = rest.split_once('/').ok_or_else(|| {
            format!("{s:?} has no registry host: write host[:port]/repository[:tag][@digest]")
        })?;
        if host.is_empty() || !(host.contains('.') || host.contains(':') || host == "localhost") {
            return Err(format!("{s:?}: {host:?} is not a registry host (expected e.g. registry.example.com or 127.0.0.1:5000)"));
        }
        let (repo, tag) = match path.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, Some(t)),
            _ => (path, None),
        };
        let repo = RepoName::parse(repo).map_err(|e| e.to_string())?;
        let tag = match tag {
            Some(t) => match Reference::parse(t).map_err(|e| e.to_string())? {
                Reference::Tag(t) => Some(t),
                Reference::Digest(_) => return Err(format!("{s:?}: bad tag")),
            },
            None => None,
        };
        Ok(ImageRef {
            host: host.to_string(),
            repo,
            tag,
            digest,
        })
    }

    /// What to ask the registry for: the digest if given, else the tag
    /// (default `latest`).
    pub fn reference(&self) -> Reference {
        match (&self.digest, &self.tag) {
            (Some(d), _) => Reference::Digest(d.clone()),
            (None, Some(t)) => Reference::Tag(t.clone()),
            (None, None) => Reference::Tag("latest".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_refs() {
        let r = ImageRef::parse("127.0.0.1:5000/models/demo:v1.2.0").unwrap();
        assert_eq!(
            (r.host.as_str(), r.repo.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "models/demo", Some("v1.2.0"))
        );
        let d = format!("sha256:{}", "b".repeat(64));
        let r = ImageRef::parse(&format!("reg.example/a/b@{d}")).unwrap();
        assert_eq!(r.reference(), Reference::Digest(d.parse().unwrap()));
        assert_eq!(
            ImageRef::parse("reg.example/a").unwrap().reference(),
            Reference::Tag("latest".into())
        );
        assert!(ImageRef::parse("alpine").is_err());
        assert!(ImageRef::parse("library/alpine").is_err());
        assert!(ImageRef::parse("reg.example/A").is_err());
    }

    #[test]
    fn accepts_spec_names() {
        for n in [
            "alpine",
            "library/alpine",
            "docker.io/library/alpine",
            "a/b/c/d",
            "my-repo__x/a.b_c",
            "a--b",
            "models/classifier-v2",
        ] {
            assert!(RepoName::parse(n).is_ok(), "{n}");
        }
    }

    #[test]
    fn rejects_bad_names() {
        for n in [
            "", "Alpine", "a//b", "/a", "a/", "../etc", "a/../b", "a/./b", "a.-b", "a___b", "-a",
            "a:5000/b", "a%2fb", "a b",
        ] {
            assert!(RepoName::parse(n).is_err(), "{n:?}");
        }
        assert_eq!(RepoName::parse(&"a".repeat(256)), Err(NameError::TooLong));
    }

    #[test]
    fn references() {
        assert_eq!(
            Reference::parse("v1.2.0").unwrap(),
            Reference::Tag("v1.2.0".into())
        );
        assert_eq!(Reference::parse("_x").unwrap(), Reference::Tag("_x".into()));
        let d = format!("sha256:{}", "0".repeat(64));
        assert!(matches!(Reference::parse(&d), Ok(Reference::Digest(_))));
        assert!(Reference::parse(".hidden").is_err());
        assert!(Reference::parse("-x").is_err());
        assert!(Reference::parse(&"a".repeat(129)).is_err());
        assert!(Reference::parse("sha256:zz").is_err());
        assert!(Reference::parse("a/b").is_err());
    }

    #[test]
    fn split_first_component() {
        let n = RepoName::parse("docker.io/library/alpine").unwrap();
        assert_eq!(n.split_first(), Some(("docker.io", "library/alpine")));
        assert_eq!(RepoName::parse("alpine").unwrap().split_first(), None);
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(crate::proptests::config())]

        /// Names and references from clients never panic the parsers, and
        /// what parses prints back to itself.
        #[test]
        fn names_and_references_parse_or_refuse(s in ".{0,80}|[a-z0-9._/-]{1,60}|[a-z0-9.:-]{1,20}/[a-z0-9/]{1,30}(:[a-zA-Z0-9._-]{1,10})?") {
            if let Ok(n) = RepoName::parse(&s) {
                prop_assert_eq!(n.as_str(), s.as_str());
            }
            if let Ok(r) = Reference::parse(&s) {
                prop_assert_eq!(r.to_string(), s.clone());
            }
            let _ = ImageRef::parse(&s);
        }
    }
}
