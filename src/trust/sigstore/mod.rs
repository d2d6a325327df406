//! The Sigstore side of keyless signing, checked offline: the trusted root
//! ([`root`]) and the transparency log's evidence ([`tlog`]). Pure: bytes
//! in, verdicts out. (Issue #9 builds keyless verification on these.)

pub mod root;
pub mod tlog;

pub use root::{RootError, TrustedRoot};
pub use tlog::{verify_checkpoint, verify_inclusion, verify_set, TlogError};
