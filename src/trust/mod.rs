//! Trust: cosign signatures. [`keys`] loads and makes keys, [`verify`]
//! checks one signature over exact bytes (pure functions, tested against
//! vectors made by another implementation), [`sign`] builds signature
//! artifacts in cosign's formats. Finding an image's signatures at an
//! upstream is the gate's job (`gate::signatures`).

pub mod keys;
pub mod notation;
pub mod sign;
pub mod sigstore;
pub mod verify;
pub mod x509;

pub use keys::{PrivateKey, PublicKey};
pub use verify::{SigError, SigFormat};
