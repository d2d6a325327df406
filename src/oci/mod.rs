//! OCI vocabulary: repository names, references, digests, media types and the
//! error envelope clients see. Everything here is pure (no I/O) and validates
//! untrusted input before it reaches the rest of the proxy.

pub mod digest;
pub mod error;
pub mod json;
pub mod kind;
pub mod media;
pub mod name;

pub use digest::{Digest, DigestError, Sha256Hasher};
pub use error::{ErrorCode, OciError};
pub use media::Manifest;
pub use name::{ImageRef, NameError, Reference, RepoName};
