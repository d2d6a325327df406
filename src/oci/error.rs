//! The OCI error envelope (`{"errors":[{"code","message","detail"}]}`) and the
//! codes of the distribution spec. Every error a client sees goes through
//! [`OciError`], so each carries an HTTP status, a spec code and a message a
//! person can act on.

use http::StatusCode;

/// One table makes the enum, its wire names and the parser.
macro_rules! error_codes {
    ($($variant:ident => $code:literal,)*) => {
        /// Error codes of the distribution spec (plus `UNAVAILABLE`, used by
        /// the reference registry for 503s, and `RANGE_INVALID`).
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum ErrorCode {
            $($variant,)*
        }

        impl ErrorCode {
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)*
                }
            }

            pub fn parse(s: &str) -> Option<ErrorCode> {
                match s {
                    $($code => Some(ErrorCode::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

error_codes! {
    BlobUnknown => "BLOB_UNKNOWN",
    BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
    BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
    DigestInvalid => "DIGEST_INVALID",
    ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
    ManifestInvalid => "MANIFEST_INVALID",
    ManifestUnknown => "MANIFEST_UNKNOWN",
    NameInvalid => "NAME_INVALID",
    NameUnknown => "NAME_UNKNOWN",
    SizeInvalid => "SIZE_INVALID",
    Unauthorized => "UNAUTHORIZED",
    Denied => "DENIED",
    Unsupported => "UNSUPPORTED",
    TooManyRequests => "TOOMANYREQUESTS",
    RangeInvalid => "RANGE_INVALID",
    Unavailable => "UNAVAILABLE",
    Unknown => "UNKNOWN",
}

/// One error as a client sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OciError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
}

impl OciError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        OciError {
            status,
            code,
            message: message.into(),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        serde_json::json!({"errors": [{"code": self.code.as_str(), "message": self.message}]})
            .to_string()
    }

    /// The first error of an OCI error body, if `body` is one.
    pub fn parse_body(body: &[u8]) -> Option<(ErrorCode, String)> {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let e = v.get("errors")?.get(0)?;
        let code = ErrorCode::parse(e.get("code")?.as_str()?)?;
        let msg = e
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or_default()
            .to_string();
        Some((code, msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_round_trips() {
        let e = OciError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::BlobUnknown,
            "no such blob",
        );
        let (code, msg) = OciError::parse_body(e.body().as_bytes()).unwrap();
        assert_eq!(code, ErrorCode::BlobUnknown);
        assert_eq!(msg, "no such blob");
        assert_eq!(OciError::parse_body(b"<html>"), None);
    }

    #[test]
    fn every_code_parses_back() {
        for c in ["DENIED", "TOOMANYREQUESTS", "MANIFEST_BLOB_UNKNOWN"] {
            assert_eq!(ErrorCode::parse(c).unwrap().as_str(), c);
        }
        assert_eq!(ErrorCode::parse("NOPE"), None);
    }
}
