//! Content as a repository holds it, from the cache or the upstream:
//! manifests by tag or digest, blobs (streamed, ranged, small), referrers,
//! tags lists and existence, and the writes a push forwards. No policy and no
//! HTTP responses: callers get content or a [`RegistryError`], which
//! `crate::error` turns into what a client sees (docs/ARCHITECTURE.md).
//!
//! Invariants:
//! - every byte from an upstream is checked against its digest before it is
//!   returned or cached (blobs as they stream: [`crate::cache::flight`]);
//! - content is returned for a repository only when that repository holds it
//!   ([`crate::cache::holdings`]): a cached copy fetched for another name is
//!   confirmed with the upstream first;
//! - a tag is recorded only from an answer about the tag itself (the
//!   upstream is always asked with every manifest type).

pub mod blobs;
pub mod core;
pub mod error;
pub mod listing;
pub mod manifests;
pub mod sources;
pub mod writes;

pub use self::core::Registry;
pub use blobs::{BlobBody, BlobWant};
pub use error::{answered, failure, Answer, BadContent, Object, RegistryError, DIGEST_HEADER};
pub use writes::{Deletion, UploadStart};
