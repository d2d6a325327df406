//! The one place where module errors become what a client sees: an HTTP
//! status and an OCI error code with a message a person can act on.

use crate::oci::{ErrorCode, NameError, OciError};
use crate::upstream::{RouteError, UpstreamError};
use http::StatusCode;

impl From<NameError> for OciError {
    fn from(e: NameError) -> OciError {
        let code = match e {
            NameError::BadTag(_) => ErrorCode::ManifestInvalid,
            NameError::Digest(_) => ErrorCode::DigestInvalid,
            _ => ErrorCode::NameInvalid,
        };
        OciError::new(StatusCode::BAD_REQUEST, code, e.to_string())
    }
}

impl From<RouteError> for OciError {
    fn from(e: RouteError) -> OciError {
        let code = match e {
            RouteError::OnlyPrefix(_) => ErrorCode::NameInvalid,
            _ => ErrorCode::NameUnknown,
        };
        OciError::new(StatusCode::NOT_FOUND, code, e.to_string())
    }
}

impl From<UpstreamError> for OciError {
    fn from(e: UpstreamError) -> OciError {
        let (status, code) = match &e {
            UpstreamError::Unreachable { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable)
            }
            UpstreamError::Auth { .. } => (StatusCode::BAD_GATEWAY, ErrorCode::Unauthorized),
            UpstreamError::Protocol { .. } | UpstreamError::Setup { .. } => {
                (StatusCode::BAD_GATEWAY, ErrorCode::Unknown)
            }
        };
        OciError::new(status, code, e.to_string())
    }
}

/// What kind of object an upstream answer was about, for the 404 code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Object {
    Manifest,
    Blob,
    Repository,
}

/// Map a non-success upstream answer to what the client sees. An OCI error
/// body from the upstream keeps its code; the message says who said it.
pub fn upstream_status(upstream: &str, status: StatusCode, body: &[u8], what: Object) -> OciError {
    let parsed = OciError::parse_body(body);
    let detail = parsed
        .as_ref()
        .map(|(c, m)| {
            if m.is_empty() {
                c.as_str().to_string()
            } else {
                format!("{}: {m}", c.as_str())
            }
        })
        .unwrap_or_else(|| status.to_string());
    let msg = format!("upstream {upstream} answered {}: {detail}", status.as_u16());
    match status {
        StatusCode::NOT_FOUND => {
            let code = parsed.map(|(c, _)| c).unwrap_or(match what {
                Object::Manifest => ErrorCode::ManifestUnknown,
                Object::Blob => ErrorCode::BlobUnknown,
                Object::Repository => ErrorCode::NameUnknown,
            });
            OciError::new(StatusCode::NOT_FOUND, code, msg)
        }
        StatusCode::UNAUTHORIZED => OciError::new(
            StatusCode::BAD_GATEWAY,
            ErrorCode::Unauthorized,
            format!("{msg}; modelgate has no credentials it accepts: set username and password_env for upstream {upstream}"),
        ),
        StatusCode::FORBIDDEN => OciError::new(StatusCode::FORBIDDEN, ErrorCode::Denied, msg),
        StatusCode::TOO_MANY_REQUESTS => OciError::new(StatusCode::TOO_MANY_REQUESTS, ErrorCode::TooManyRequests, msg),
        s if s.is_server_error() => OciError::new(StatusCode::BAD_GATEWAY, ErrorCode::Unavailable, msg),
        s if s.is_client_error() => {
            let code = parsed.map(|(c, _)| c).unwrap_or(ErrorCode::Unknown);
            OciError::new(s, code, msg)
        }
        _ => OciError::new(StatusCode::BAD_GATEWAY, ErrorCode::Unknown, msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_answers_map_to_codes() {
        let e = upstream_status("r", StatusCode::NOT_FOUND, b"", Object::Manifest);
        assert_eq!(
            (e.status, e.code),
            (StatusCode::NOT_FOUND, ErrorCode::ManifestUnknown)
        );
        let body = br#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}"#;
        let e = upstream_status("r", StatusCode::NOT_FOUND, body, Object::Blob);
        assert_eq!(e.code, ErrorCode::NameUnknown);
        assert!(
            e.message.contains("upstream r answered 404: NAME_UNKNOWN"),
            "{}",
            e.message
        );
        let e = upstream_status("r", StatusCode::SERVICE_UNAVAILABLE, b"down", Object::Blob);
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_GATEWAY, ErrorCode::Unavailable)
        );
        let e = upstream_status("r", StatusCode::UNAUTHORIZED, b"", Object::Blob);
        assert!(e.message.contains("password_env"));
    }

    #[test]
    fn name_errors_are_400() {
        let e: OciError = crate::oci::RepoName::parse("A").unwrap_err().into();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, ErrorCode::NameInvalid)
        );
    }
}
