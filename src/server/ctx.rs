//! What every handler knows about its request besides the body: the app,
//! who asked, the query, and how its repository name routes.

use super::app::App;
use crate::gate::Requester;
use crate::oci::{ErrorCode, OciError, RepoName};
use crate::upstream::Route;
use http::{Method, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;

/// What every handler knows about its request besides the body.
pub struct Ctx<'a> {
    pub app: &'a Arc<App>,
    pub peer: SocketAddr,
    pub user: Option<String>,
    pub query: Option<String>,
    pub(super) client: String,
}

impl Ctx<'_> {
    /// Query parameter `key`, percent-decoded.
    pub fn param(&self, key: &str) -> Option<String> {
        url::form_urlencoded::parse(self.query.as_deref()?.as_bytes())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    }

    /// Which upstream serves `name` (`?ns=` first).
    pub fn route(&self, name: &RepoName) -> Result<Route, OciError> {
        let ns = self.param("ns");
        Ok(self.app.router().route(name, ns.as_deref())?)
    }

    /// Who asked, for the audit log.
    pub fn who(&self) -> Requester<'_> {
        Requester {
            client: &self.client,
            user: self.user.as_deref(),
            reason: None,
        }
    }
}

/// 405 for methods an endpoint does not serve.
pub fn method_not_allowed(method: &Method, what: &str) -> OciError {
    OciError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::Unsupported,
        format!("{method} is not supported on {what}"),
    )
}
