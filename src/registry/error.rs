//! Errors of the registry layer, and how an upstream's answers become them.

use crate::cache::FetchError;
use crate::oci::{ErrorCode, OciError};
use crate::upstream::{Upstream, UpstreamError};
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

/// The digest header registries send with manifests and blobs.
pub const DIGEST_HEADER: &str = "Docker-Content-Digest";
/// Largest upstream error body read (to relay its OCI code and message).
const MAX_ERROR_BODY: usize = 64 * 1024;

/// What kind of object an upstream answer was about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Object {
    Manifest,
    Blob,
    Repository,
}

/// How an upstream answered a request it did not fulfil.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    NotFound,
    /// It wants credentials modelgate does not have.
    Unauthorized,
    Forbidden,
    TooManyRequests,
    /// A 5xx: the upstream failed.
    Failed,
    /// Another 4xx, relayed with the upstream's own status.
    Refused(u16),
    /// Anything else that is not a success.
    Unexpected(u16),
}

/// Why what the upstream sent cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadContent {
    /// The bytes do not hash to the digest asked for or announced.
    Mismatch,
    /// Larger than modelgate reads.
    TooLarge,
    /// Not the document it claims to be.
    Invalid,
}

/// Errors of the registry layer. Each variant says what happened, not what
/// status a client gets (see `crate::error`).
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Occurs when the upstream answers with an error status.
    #[error("upstream {upstream} answered {status}: {detail}")]
    Answered {
        upstream: String,
        status: u16,
        answer: Answer,
        /// The upstream's OCI error code, when it sent one.
        code: Option<ErrorCode>,
        detail: String,
        object: Object,
    },
    /// Occurs when the upstream cannot be reached, times out or breaks off.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// Occurs when the upstream sends content modelgate refuses.
    #[error("{message}")]
    BadContent {
        kind: BadContent,
        object: Object,
        message: String,
    },
    /// Occurs when a shared download fails (see [`crate::cache::FetchError`]).
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// Occurs when a digest names content of another kind (a manifest asked
    /// for as a blob).
    #[error("{0}")]
    WrongKind(String),
    /// Occurs when the shared storage a request needs cannot be reached
    /// (several replicas; the request is refused rather than answered by
    /// this replica alone).
    #[error("{0}")]
    Shared(String),
}

impl RegistryError {
    /// Whether the upstream could not answer at all (so the last known
    /// state may be served).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            RegistryError::Upstream(UpstreamError::Unreachable { .. })
                | RegistryError::Answered {
                    answer: Answer::Failed,
                    ..
                }
        )
    }

    /// Whether the upstream said it does not have it.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            RegistryError::Answered {
                answer: Answer::NotFound,
                ..
            }
        )
    }

    pub(super) fn unreachable(up: &Upstream, message: String) -> RegistryError {
        RegistryError::Upstream(UpstreamError::Unreachable {
            upstream: up.name.clone(),
            message,
        })
    }
}

/// Classify a non-success upstream answer; an OCI error body keeps its code.
pub fn answered(upstream: &str, status: StatusCode, body: &[u8], object: Object) -> RegistryError {
    let parsed = OciError::parse_body(body);
    let detail = parsed
        .as_ref()
        .map(|(c, m)| match m.is_empty() {
            true => c.as_str().to_string(),
            false => format!("{}: {m}", c.as_str()),
        })
        .unwrap_or_else(|| status.to_string());
    let answer = match status {
        StatusCode::NOT_FOUND => Answer::NotFound,
        StatusCode::UNAUTHORIZED => Answer::Unauthorized,
        StatusCode::FORBIDDEN => Answer::Forbidden,
        StatusCode::TOO_MANY_REQUESTS => Answer::TooManyRequests,
        s if s.is_server_error() => Answer::Failed,
        s if s.is_client_error() => Answer::Refused(s.as_u16()),
        s => Answer::Unexpected(s.as_u16()),
    };
    RegistryError::Answered {
        upstream: upstream.to_string(),
        status: status.as_u16(),
        answer,
        code: parsed.map(|(c, _)| c),
        detail,
        object,
    }
}

/// Read (a bounded part of) an upstream's error body and classify it.
pub async fn failure(up: &Upstream, resp: Response<Incoming>, object: Object) -> RegistryError {
    let status = resp.status();
    let body = tokio::time::timeout(
        up.idle_timeout(),
        Limited::new(resp.into_body(), MAX_ERROR_BODY).collect(),
    )
    .await
    .ok()
    .and_then(|r| r.ok())
    .map(|c| c.to_bytes())
    .unwrap_or_default();
    answered(&up.name, status, &body, object)
}

/// Read a whole upstream body of at most `max` bytes (`what` names it): a
/// stall or a broken connection is unreachable, a larger body is
/// `BadContent::TooLarge`.
pub(super) async fn read_body(
    up: &Upstream,
    resp: Response<Incoming>,
    max: usize,
    what: &str,
    object: Object,
) -> Result<Bytes, RegistryError> {
    match tokio::time::timeout(
        up.idle_timeout(),
        Limited::new(resp.into_body(), max).collect(),
    )
    .await
    {
        Err(_) => Err(RegistryError::unreachable(up, format!("{what} timed out"))),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(RegistryError::BadContent {
                kind: BadContent::TooLarge,
                object,
                message: format!(
                    "upstream {} {what} is larger than {max} bytes; modelgate refuses it",
                    up.name
                ),
            })
        }
        Ok(Err(e)) => Err(RegistryError::unreachable(up, format!("{what}: {e}"))),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_answers_are_classified_with_their_codes() {
        let e = answered("r", StatusCode::NOT_FOUND, b"", Object::Manifest);
        assert!(e.is_not_found());
        let body = br#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}"#;
        let e = answered("r", StatusCode::NOT_FOUND, body, Object::Blob);
        assert!(matches!(
            e,
            RegistryError::Answered {
                code: Some(ErrorCode::NameUnknown),
                ..
            }
        ));
        assert!(
            e.to_string()
                .contains("upstream r answered 404: NAME_UNKNOWN"),
            "{e}"
        );
        let e = answered("r", StatusCode::SERVICE_UNAVAILABLE, b"down", Object::Blob);
        assert!(e.is_unreachable());
        let e = answered("r", StatusCode::METHOD_NOT_ALLOWED, b"", Object::Manifest);
        assert!(matches!(
            e,
            RegistryError::Answered {
                answer: Answer::Refused(405),
                ..
            }
        ));
    }
}
