//! The one place where the layers' errors become what a client sees: an
//! HTTP status and an OCI error code with a message a person can act on
//! (docs/ARCHITECTURE.md). The layers below say what happened; this module
//! alone decides how it is answered.

use crate::cache::FetchError;
use crate::gate::GateError;
use crate::oci::{DigestError, ErrorCode, NameError, OciError};
use crate::registry::{Answer, BadContent, Object, RegistryError};
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

impl From<DigestError> for OciError {
    fn from(e: DigestError) -> OciError {
        OciError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::DigestInvalid,
            e.to_string(),
        )
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

/// What a client sees of an upstream's error answer: its OCI code is kept,
/// the message says who said it.
fn answered(
    upstream: &str,
    answer: Answer,
    code: Option<ErrorCode>,
    message: String,
    object: Object,
) -> OciError {
    match answer {
        Answer::NotFound => {
            let code = code.unwrap_or(match object {
                Object::Manifest => ErrorCode::ManifestUnknown,
                Object::Blob => ErrorCode::BlobUnknown,
                Object::Repository => ErrorCode::NameUnknown,
            });
            OciError::new(StatusCode::NOT_FOUND, code, message)
        }
        Answer::Unauthorized => OciError::new(
            StatusCode::BAD_GATEWAY,
            ErrorCode::Unauthorized,
            format!("{message}; modelgate has no credentials it accepts: set username and password_env for upstream {upstream}"),
        ),
        Answer::Forbidden => OciError::new(StatusCode::FORBIDDEN, ErrorCode::Denied, message),
        Answer::TooManyRequests => {
            OciError::new(StatusCode::TOO_MANY_REQUESTS, ErrorCode::TooManyRequests, message)
        }
        // A failing upstream: manifests are 503 (the last known state may
        // be served instead), blobs 502.
        Answer::Failed => {
            let status = match object {
                Object::Manifest => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_GATEWAY,
            };
            OciError::new(status, ErrorCode::Unavailable, message)
        }
        Answer::Refused(s) => OciError::new(
            StatusCode::from_u16(s).unwrap_or(StatusCode::BAD_REQUEST),
            code.unwrap_or(ErrorCode::Unknown),
            message,
        ),
        Answer::Unexpected(_) => OciError::new(StatusCode::BAD_GATEWAY, ErrorCode::Unknown, message),
    }
}

impl From<RegistryError> for OciError {
    fn from(e: RegistryError) -> OciError {
        let message = e.to_string();
        match e {
            RegistryError::Answered {
                upstream,
                answer,
                code,
                object,
                ..
            } => answered(&upstream, answer, code, message, object),
            RegistryError::Upstream(u) => u.into(),
            RegistryError::BadContent { kind, object, .. } => {
                let code = match (kind, object) {
                    (BadContent::Mismatch, _) => ErrorCode::DigestInvalid,
                    (_, Object::Manifest) => ErrorCode::ManifestInvalid,
                    (_, Object::Blob) => ErrorCode::BlobUnknown,
                    (_, Object::Repository) => ErrorCode::Unknown,
                };
                OciError::new(StatusCode::BAD_GATEWAY, code, message)
            }
            RegistryError::Fetch(f) => f.into(),
            RegistryError::WrongKind(_) => {
                OciError::new(StatusCode::NOT_FOUND, ErrorCode::BlobUnknown, message)
            }
            RegistryError::Shared(_) => OciError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                message,
            ),
        }
    }
}

impl From<FetchError> for OciError {
    fn from(e: FetchError) -> OciError {
        let message = e.to_string();
        match e {
            FetchError::Start(cause) => match cause.downcast_ref::<RegistryError>() {
                Some(RegistryError::Answered {
                    upstream,
                    answer,
                    code,
                    object,
                    ..
                }) => answered(upstream, *answer, *code, message, *object),
                Some(RegistryError::Upstream(UpstreamError::Unreachable { .. })) => OciError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Unavailable,
                    message,
                ),
                Some(RegistryError::Upstream(UpstreamError::Auth { .. })) => {
                    OciError::new(StatusCode::BAD_GATEWAY, ErrorCode::Unauthorized, message)
                }
                Some(RegistryError::Shared(_)) => OciError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Unavailable,
                    message,
                ),
                _ => OciError::new(StatusCode::BAD_GATEWAY, ErrorCode::Unknown, message),
            },
            FetchError::Download(_) => {
                OciError::new(StatusCode::BAD_GATEWAY, ErrorCode::BlobUnknown, message)
            }
            FetchError::Cache(_) => OciError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Unknown,
                message,
            ),
            FetchError::NoRoom(_) => OciError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                message,
            ),
            FetchError::Aborted => {
                OciError::new(StatusCode::BAD_GATEWAY, ErrorCode::Unknown, message)
            }
        }
    }
}

impl From<GateError> for OciError {
    fn from(e: GateError) -> OciError {
        match e {
            GateError::Denied(m) => OciError::new(StatusCode::FORBIDDEN, ErrorCode::Denied, m),
            GateError::Registry(r) => r.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::answered as classify;

    #[test]
    fn upstream_answers_map_to_codes() {
        let e: OciError = classify("r", StatusCode::NOT_FOUND, b"", Object::Manifest).into();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::NOT_FOUND, ErrorCode::ManifestUnknown)
        );
        let body = br#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}"#;
        let e: OciError = classify("r", StatusCode::NOT_FOUND, body, Object::Blob).into();
        assert_eq!(e.code, ErrorCode::NameUnknown);
        assert!(
            e.message.contains("upstream r answered 404: NAME_UNKNOWN"),
            "{}",
            e.message
        );
        let e: OciError =
            classify("r", StatusCode::SERVICE_UNAVAILABLE, b"down", Object::Blob).into();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_GATEWAY, ErrorCode::Unavailable)
        );
        let e: OciError =
            classify("r", StatusCode::SERVICE_UNAVAILABLE, b"", Object::Manifest).into();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        let e: OciError = classify("r", StatusCode::UNAUTHORIZED, b"", Object::Blob).into();
        assert!(e.message.contains("password_env"));
        let e: OciError = FetchError::Start(std::sync::Arc::new(classify(
            "r",
            StatusCode::NOT_FOUND,
            b"",
            Object::Blob,
        )))
        .into();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::NOT_FOUND, ErrorCode::BlobUnknown)
        );
    }

    #[test]
    fn name_and_gate_errors() {
        let e: OciError = crate::oci::RepoName::parse("A").unwrap_err().into();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, ErrorCode::NameInvalid)
        );
        let e: OciError = GateError::Denied("denied by rule \"m\": x".into()).into();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::FORBIDDEN, ErrorCode::Denied)
        );
    }
}
