//! The Sigstore side of keyless signing, checked offline: the trusted root
//! ([`root`]), the transparency log's evidence ([`tlog`]) and Fulcio
//! signing certificates ([`cert`]). Pure: bytes in, verdicts out. (Issue #9
//! builds keyless verification on these.)

pub mod cert;
pub mod root;
#[cfg(test)]
mod testdata;
pub mod tlog;

pub use cert::{signer_identity, verify_chain, CertError, SignerIdentity};
pub use root::{RootError, TrustedRoot};
pub use tlog::{verify_checkpoint, verify_inclusion, verify_set, TlogError};
