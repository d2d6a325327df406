//! The Sigstore side of keyless signing, checked offline: the trusted root
//! ([`root`]), the transparency log's evidence ([`tlog`]), Fulcio signing
//! certificates ([`cert`]) and their CT timestamps ([`sct`]), put together
//! for a keyless cosign bundle in [`bundle`] and for the legacy `.sig`
//! layer in [`legacy`]. Pure: bytes
//! in, verdicts out. (Issue #9 builds keyless verification on these.)

pub mod bundle;
pub mod cert;
pub mod legacy;
pub mod root;
pub mod sct;
#[cfg(test)]
mod testdata;
pub mod tlog;
pub mod tsa;

pub use bundle::{verify_keyless, KeylessError, KeylessSignature};
pub use cert::{signer_identity, verify_chain, CertError, SignerIdentity};
pub use legacy::{is_keyless_layer, verify_keyless_legacy};
pub use root::{RootError, TrustedRoot};
pub use sct::{verify_embedded_sct, SctError};
pub use tlog::{verify_checkpoint, verify_inclusion, verify_set, TlogError};
