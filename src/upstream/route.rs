//! Which upstream serves a request: `?ns=<host>` first, then a
//! first path segment naming an upstream (stripped), then the default
//! upstream. Every repository gets one canonical name `<upstream>/<path>`
//! that policy, audit and metrics use.

use super::client::Upstream;
use crate::oci::RepoName;
use std::sync::Arc;

/// A routed request.
#[derive(Clone)]
pub struct Route {
    pub upstream: Arc<Upstream>,
    /// The repository path at the upstream (`library/alpine`).
    pub path: RepoName,
    /// `<upstream name>/<path>`.
    pub canonical: String,
    /// The `ns` value the client sent, echoed as `OCI-Namespace`.
    pub ns: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("no upstream named {0:?} is configured (ns parameter); configured upstreams: {1}")]
    UnknownNamespace(String, String),
    #[error("repository {0:?} names no configured upstream and there is no default upstream; prefix it with one of: {1}")]
    NoDefault(String, String),
    #[error("repository name {0:?} is only an upstream name; add the repository path after it")]
    OnlyPrefix(String),
}

/// The configured upstreams.
pub struct Router {
    upstreams: Vec<Arc<Upstream>>,
    default: Option<usize>,
}

impl Router {
    pub fn new(upstreams: Vec<(Arc<Upstream>, bool)>) -> Router {
        let default = upstreams.iter().position(|(_, d)| *d);
        Router {
            upstreams: upstreams.into_iter().map(|(u, _)| u).collect(),
            default,
        }
    }

    fn names(&self) -> String {
        self.upstreams
            .iter()
            .map(|u| u.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.iter().find(|u| u.name == name)
    }

    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }

    pub fn route(&self, name: &RepoName, ns: Option<&str>) -> Result<Route, RouteError> {
        let make = |u: &Arc<Upstream>, path: RepoName, ns: Option<&str>| Route {
            canonical: path.prefixed(&u.name),
            upstream: u.clone(),
            path,
            ns: ns.map(str::to_string),
        };
        if let Some(ns) = ns.filter(|n| !n.is_empty()) {
            let u = self
                .by_name(ns)
                .ok_or_else(|| RouteError::UnknownNamespace(ns.to_string(), self.names()))?;
            return Ok(make(u, name.clone(), Some(ns)));
        }
        if let Some((first, rest)) = name.split_first() {
            if let Some(u) = self.by_name(first) {
                // `rest` is a suffix of a valid name, so it is valid too.
                let path =
                    RepoName::parse(rest).map_err(|_| RouteError::OnlyPrefix(first.into()))?;
                return Ok(make(u, path, None));
            }
        } else if self.by_name(name.as_str()).is_some() && self.default.is_none() {
            return Err(RouteError::OnlyPrefix(name.to_string()));
        }
        match self.default {
            Some(i) => Ok(make(&self.upstreams[i], name.clone(), None)),
            None => Err(RouteError::NoDefault(name.to_string(), self.names())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UpstreamConfig;
    use crate::metrics::Metrics;
    use std::time::Duration;

    fn up(name: &str) -> Arc<Upstream> {
        let cfg = UpstreamConfig {
            name: name.into(),
            url: url::Url::parse("http://127.0.0.1:1").unwrap(),
            default: false,
            username: None,
            password: None,
            ca_cert: None,
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
        };
        Arc::new(Upstream::new(&cfg, Arc::new(Metrics::new())).unwrap())
    }

    fn n(s: &str) -> RepoName {
        RepoName::parse(s).unwrap()
    }

    #[test]
    fn three_routing_forms() {
        let r = Router::new(vec![
            (up("docker.io"), true),
            (up("models.internal"), false),
        ]);
        // 1. ?ns=
        let x = r
            .route(&n("acme/classifier"), Some("models.internal"))
            .unwrap();
        assert_eq!(x.upstream.name, "models.internal");
        assert_eq!(x.canonical, "models.internal/acme/classifier");
        assert_eq!(x.ns.as_deref(), Some("models.internal"));
        // 2. path prefix, stripped
        let x = r
            .route(&n("models.internal/acme/classifier"), None)
            .unwrap();
        assert_eq!(x.upstream.name, "models.internal");
        assert_eq!(x.path.as_str(), "acme/classifier");
        assert_eq!(x.canonical, "models.internal/acme/classifier");
        // 3. default
        let x = r.route(&n("library/alpine"), None).unwrap();
        assert_eq!(x.canonical, "docker.io/library/alpine");
        // ns wins over a path prefix
        let x = r
            .route(&n("docker.io/library/alpine"), Some("models.internal"))
            .unwrap();
        assert_eq!(x.canonical, "models.internal/docker.io/library/alpine");
    }

    #[test]
    fn routing_errors() {
        let r = Router::new(vec![(up("models.internal"), false)]);
        assert!(matches!(
            r.route(&n("x/y"), Some("ghcr.io")),
            Err(RouteError::UnknownNamespace(..))
        ));
        assert!(matches!(
            r.route(&n("x/y"), None),
            Err(RouteError::NoDefault(..))
        ));
        assert!(matches!(
            r.route(&n("models.internal"), None),
            Err(RouteError::OnlyPrefix(..))
        ));
    }
}
