//! The HTTP client for one upstream registry: hyper + rustls (ring provider,
//! chosen explicitly), the registry's auth dance, and redirects to blob
//! storage. It returns responses with their bodies unread so callers stream.
//!
//! Invariants: credentials (ours or a token) are never sent to a host other
//! than the one that asked for them; a redirect to another host is followed
//! without `Authorization`.

use super::auth::{parse_challenges, parse_token_response, CachedToken, Challenge};
use crate::config::UpstreamConfig;
use crate::metrics::Metrics;
use base64::Engine;
use bytes::Bytes;
use dashmap::DashMap;
use http::header::{AUTHORIZATION, LOCATION, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use url::Url;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Request bodies sent upstream.
pub type ReqBody = BoxBody<Bytes, BoxError>;
pub type UpstreamResponse = Response<Incoming>;
pub type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, ReqBody>;

/// An HTTP(S) client on the one TLS stack (rustls, ring): TLS with the
/// webpki roots plus `ca_cert`, pooled connections, no Nagle.
pub fn https_client(
    ca_cert: Option<&std::path::Path>,
    connect_timeout: Duration,
    max_idle_per_host: usize,
) -> Result<HttpsClient, String> {
    let tls = tls_client_config(ca_cert)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    let conn = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(max_idle_per_host)
        .build(conn))
}

const MAX_REDIRECTS: usize = 5;
const MAX_TOKEN_BODY: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {upstream} is unreachable: {message}")]
    Unreachable { upstream: String, message: String },
    #[error("upstream {upstream} refused modelgate's credentials: {message}")]
    Auth { upstream: String, message: String },
    #[error("upstream {upstream}: {message}")]
    Protocol { upstream: String, message: String },
    #[error("upstream {upstream}: cannot set up the client: {message}")]
    Setup { upstream: String, message: String },
}

/// One configured upstream registry.
pub struct Upstream {
    pub name: String,
    base: Url,
    /// The base URL's path without a trailing '/', prepended to `/v2/...`.
    base_path: String,
    username: Option<String>,
    password: Option<String>,
    idle_timeout: Duration,
    client: HttpsClient,
    tokens: DashMap<String, CachedToken>,
    /// Set once the upstream asked for Basic auth: from then on we send it
    /// up front instead of paying a 401 round trip per request.
    basic: AtomicBool,
    metrics: Arc<Metrics>,
}

/// The rustls client config every upstream connection uses.
pub fn tls_client_config(
    ca_cert: Option<&std::path::Path>,
) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_cert {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("ca_cert {}: {e}", path.display()))?;
        let mut n = 0;
        for c in certs {
            let c = c.map_err(|e| format!("ca_cert {}: {e}", path.display()))?;
            roots
                .add(c)
                .map_err(|e| format!("ca_cert {}: {e}", path.display()))?;
            n += 1;
        }
        if n == 0 {
            return Err(format!(
                "ca_cert {}: no certificate in the file",
                path.display()
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn empty() -> ReqBody {
    Empty::<Bytes>::new().map_err(|e| match e {}).boxed()
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

impl Upstream {
    pub fn new(cfg: &UpstreamConfig, metrics: Arc<Metrics>) -> Result<Upstream, UpstreamError> {
        let setup = |message: String| UpstreamError::Setup {
            upstream: cfg.name.clone(),
            message,
        };
        let client =
            https_client(cfg.ca_cert.as_deref(), cfg.connect_timeout, 64).map_err(setup)?;
        let base = cfg.url.clone();
        let base_path = base.path().trim_end_matches('/').to_string();
        Ok(Upstream {
            name: cfg.name.clone(),
            base,
            base_path,
            username: cfg.username.clone(),
            password: cfg.password.clone(),
            idle_timeout: cfg.idle_timeout,
            client,
            tokens: DashMap::new(),
            basic: AtomicBool::new(false),
            metrics,
        })
    }

    /// The configured base URL.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// Any request with a small body (pushes of signatures), authenticated
    /// for `scope` and retried once after a challenge.
    pub async fn request(
        &self,
        method: Method,
        url: Url,
        headers: HeaderMap,
        scope: &str,
        body: Bytes,
    ) -> Result<UpstreamResponse, UpstreamError> {
        use http_body_util::Full;
        self.send_authenticated(method, url, headers, scope, move || {
            Full::new(body.clone()).map_err(|e| match e {}).boxed()
        })
        .await
    }

    /// Send once with whatever credentials are cached for `scope` (a
    /// streamed body cannot be replayed after a challenge; callers start an
    /// upload with [`Upstream::request`] first, which caches them).
    pub async fn send_once(
        &self,
        method: Method,
        url: Url,
        headers: HeaderMap,
        scope: &str,
        body: ReqBody,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let mut auth = self.cached_token(scope);
        if auth.is_none() && self.basic.load(Ordering::Relaxed) {
            auth = self.basic_header();
        }
        let resp = self
            .send_following(method, url, headers, auth, body)
            .await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(UpstreamError::Auth {
                upstream: self.name.clone(),
                message: "the upstream asked for credentials in the middle of an upload (token expired?); retry the push".into(),
            });
        }
        Ok(resp)
    }

    /// How long a body may stall before the download is abandoned.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// The upstream URL of `/v2/<repo>/<suffix>[?query]`.
    pub fn url(&self, repo: &str, suffix: &str, query: Option<&str>) -> Url {
        let mut u = self.base.clone();
        let path = if repo.is_empty() {
            format!("{}/v2/{suffix}", self.base_path)
        } else {
            format!("{}/v2/{repo}/{suffix}", self.base_path)
        };
        u.set_path(&path);
        u.set_query(query.filter(|q| !q.is_empty()));
        u
    }

    fn err_unreachable(&self, message: impl std::fmt::Display) -> UpstreamError {
        UpstreamError::Unreachable {
            upstream: self.name.clone(),
            message: message.to_string(),
        }
    }

    fn basic_header(&self) -> Option<HeaderValue> {
        let user = self.username.as_deref()?;
        let pass = self.password.as_deref().unwrap_or("");
        let enc = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        HeaderValue::from_str(&format!("Basic {enc}")).ok()
    }

    fn cached_token(&self, scope: &str) -> Option<HeaderValue> {
        let t = self.tokens.get(scope)?;
        if t.expires <= Instant::now() {
            drop(t);
            self.tokens.remove(scope);
            return None;
        }
        HeaderValue::from_str(&format!("Bearer {}", t.token)).ok()
    }

    /// A pull of `/v2/<repo>/<suffix>`: GET or HEAD with the given headers,
    /// authenticated as needed, following redirects.
    pub async fn pull(
        &self,
        method: Method,
        repo: &str,
        suffix: &str,
        query: Option<&str>,
        headers: HeaderMap,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let url = self.url(repo, suffix, query);
        let scope = format!("repository:{repo}:pull");
        self.send_authenticated(method, url, headers, &scope, empty)
            .await
    }

    /// Send a request, answering one 401 challenge. `body` makes the body
    /// anew for the retry.
    pub async fn send_authenticated(
        &self,
        method: Method,
        url: Url,
        headers: HeaderMap,
        scope: &str,
        body: impl Fn() -> ReqBody,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let mut auth = self.cached_token(scope);
        if auth.is_none() && self.basic.load(Ordering::Relaxed) {
            auth = self.basic_header();
        }
        let resp = self
            .send_following(
                method.clone(),
                url.clone(),
                headers.clone(),
                auth.clone(),
                body(),
            )
            .await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenges: Vec<Challenge> = resp
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(parse_challenges)
            .collect();
        let new_auth = if let Some(Challenge::Bearer {
            realm,
            service,
            scope: chal_scope,
        }) = challenges
            .iter()
            .find(|c| matches!(c, Challenge::Bearer { .. }))
        {
            // Ask for what the registry said it wants, and for our own scope.
            let mut scopes = vec![scope.to_string()];
            if let Some(s) = chal_scope {
                if s != scope {
                    scopes.push(s.clone());
                }
            }
            let token = self.fetch_token(realm, service.as_deref(), &scopes).await?;
            let value =
                HeaderValue::from_str(&format!("Bearer {}", token.token)).map_err(|_| {
                    UpstreamError::Auth {
                        upstream: self.name.clone(),
                        message: "token server returned a token that is not a valid header value"
                            .into(),
                    }
                })?;
            self.tokens.insert(scope.to_string(), token);
            value
        } else if challenges.contains(&Challenge::Basic) {
            match self.basic_header() {
                Some(h) if auth.as_ref() != Some(&h) => {
                    self.basic.store(true, Ordering::Relaxed);
                    h
                }
                Some(_) => {
                    return Err(UpstreamError::Auth {
                        upstream: self.name.clone(),
                        message: "the configured username/password was rejected".into(),
                    })
                }
                None => return Ok(resp),
            }
        } else {
            // A challenge we cannot answer: let the caller relay the 401.
            return Ok(resp);
        };
        let resp = self
            .send_following(method, url, headers, Some(new_auth), body())
            .await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            self.tokens.remove(scope);
            return Err(UpstreamError::Auth {
                upstream: self.name.clone(),
                message:
                    "still 401 after authenticating; check username/password_env for this upstream"
                        .into(),
            });
        }
        Ok(resp)
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<CachedToken, UpstreamError> {
        let mut url = Url::parse(realm).map_err(|e| UpstreamError::Auth {
            upstream: self.name.clone(),
            message: format!("token realm {realm:?} is not a URL: {e}"),
        })?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            for s in scopes {
                q.append_pair("scope", s);
            }
        }
        let mut req = Request::get(url.as_str());
        if let Some(h) = self.basic_header() {
            req = req.header(AUTHORIZATION, h);
        }
        let req = req.body(empty()).map_err(|e| UpstreamError::Auth {
            upstream: self.name.clone(),
            message: e.to_string(),
        })?;
        let resp = tokio::time::timeout(self.idle_timeout, self.client.request(req))
            .await
            .map_err(|_| self.err_unreachable("token server did not answer in time"))?
            .map_err(|e| self.err_unreachable(format!("token server {realm}: {e}")))?;
        self.metrics
            .upstream_request(&self.name, resp.status().as_str());
        let status = resp.status();
        let body = tokio::time::timeout(
            self.idle_timeout,
            Limited::new(resp.into_body(), MAX_TOKEN_BODY).collect(),
        )
        .await
        .map_err(|_| self.err_unreachable("token server body timed out"))?
        .map_err(|e| self.err_unreachable(format!("token server body: {e}")))?
        .to_bytes();
        if !status.is_success() {
            return Err(UpstreamError::Auth {
                upstream: self.name.clone(),
                message: format!("token server {realm} answered {status}"),
            });
        }
        parse_token_response(&body, Instant::now()).map_err(|message| UpstreamError::Auth {
            upstream: self.name.clone(),
            message,
        })
    }

    /// Send once, following redirects for GET and HEAD. `Authorization` is
    /// dropped as soon as a redirect leaves the upstream's origin.
    async fn send_following(
        &self,
        method: Method,
        mut url: Url,
        headers: HeaderMap,
        mut auth: Option<HeaderValue>,
        mut body: ReqBody,
    ) -> Result<UpstreamResponse, UpstreamError> {
        // Credentials belong to the origin that challenged for them (the
        // configured upstream): never to an upload Location elsewhere.
        let origin = self.base.clone();
        if !same_origin(&origin, &url) {
            auth = None;
        }
        let follow = method == Method::GET || method == Method::HEAD;
        for _ in 0..=MAX_REDIRECTS {
            let mut req = Request::builder().method(method.clone()).uri(url.as_str());
            for (k, v) in headers.iter() {
                req = req.header(k, v);
            }
            if let Some(a) = &auth {
                req = req.header(AUTHORIZATION, a);
            }
            let req = req
                .body(std::mem::replace(&mut body, empty()))
                .map_err(|e| UpstreamError::Protocol {
                    upstream: self.name.clone(),
                    message: format!("bad request URL {url}: {e}"),
                })?;
            let resp = tokio::time::timeout(self.idle_timeout, self.client.request(req))
                .await
                .map_err(|_| {
                    self.err_unreachable(format!(
                        "no response within {}",
                        humantime::format_duration(self.idle_timeout)
                    ))
                })?
                .map_err(|e| {
                    let mut msg = e.to_string();
                    let mut src = std::error::Error::source(&e);
                    while let Some(s) = src {
                        msg = format!("{msg}: {s}");
                        src = s.source();
                    }
                    self.err_unreachable(msg)
                })?;
            self.metrics
                .upstream_request(&self.name, resp.status().as_str());
            if !(follow && resp.status().is_redirection()) {
                return Ok(resp);
            }
            let Some(loc) = resp.headers().get(LOCATION).and_then(|l| l.to_str().ok()) else {
                return Ok(resp);
            };
            let next = url.join(loc).map_err(|e| UpstreamError::Protocol {
                upstream: self.name.clone(),
                message: format!("redirect to an invalid location {loc:?}: {e}"),
            })?;
            if !same_origin(&origin, &next) {
                auth = None;
            }
            url = next;
        }
        Err(UpstreamError::Protocol {
            upstream: self.name.clone(),
            message: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(url: &str) -> Upstream {
        let cfg = UpstreamConfig {
            name: "r".into(),
            url: Url::parse(url).unwrap(),
            default: true,
            username: Some("u".into()),
            password: Some("p".into()),
            ca_cert: None,
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
        };
        Upstream::new(&cfg, Arc::new(Metrics::new())).unwrap()
    }

    #[test]
    fn builds_urls_under_a_path_prefix() {
        let u = upstream("http://127.0.0.1:5100/mirror/");
        assert_eq!(
            u.url("library/alpine", "manifests/latest", Some("n=1"))
                .as_str(),
            "http://127.0.0.1:5100/mirror/v2/library/alpine/manifests/latest?n=1"
        );
        let u = upstream("https://registry.example");
        assert_eq!(
            u.url("a", "tags/list", None).as_str(),
            "https://registry.example/v2/a/tags/list"
        );
        assert_eq!(u.url("", "", None).as_str(), "https://registry.example/v2/");
    }

    #[test]
    fn basic_header_is_base64() {
        let u = upstream("http://127.0.0.1:1");
        assert_eq!(u.basic_header().unwrap(), "Basic dTpw");
    }

    #[test]
    fn origins() {
        let a = Url::parse("http://127.0.0.1:5000/v2/x").unwrap();
        assert!(same_origin(
            &a,
            &Url::parse("http://127.0.0.1:5000/other").unwrap()
        ));
        assert!(!same_origin(
            &a,
            &Url::parse("http://127.0.0.1:5001/v2/x").unwrap()
        ));
        assert!(!same_origin(
            &a,
            &Url::parse("https://127.0.0.1:5000/v2/x").unwrap()
        ));
    }
}
