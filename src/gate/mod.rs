//! The gate: every manifest a client pulls or pushes is decided by the
//! policy in force before a byte of it is served (or reaches the upstream),
//! and blobs of a governed repository are served only with a permit that an
//! admitted manifest in that repository opened (docs/ARCHITECTURE.md).
//!
//! Invariants:
//! - the bytes decided are the bytes served: [`Gate::pull_manifest`] returns
//!   an [`Admitted`] holding exactly the manifest it decided, and only the
//!   gate can make one; blob bytes come only through [`Gate::read_blob`],
//!   which takes a [`BlobPermit`] only the gate can make;
//! - evidence and admissions carry the policy generation, so a reload
//!   re-decides everything;
//! - admissions are per canonical repository: what was admitted in one
//!   repository opens nothing in another;
//! - every decision, exempt reads included, is counted and audited.

pub mod core;
pub mod evidence;
pub mod exempt;
pub mod ledger;
pub mod pull;
pub mod push;
pub mod signatures;
pub mod state;

pub use self::core::{
    immutable_tag, immutable_tags, Action, Decided, Gate, GateError, GateOpenError, Requester,
};
pub use evidence::{Freshness, Signatures};
pub use exempt::{exemption_of, is_signature_manifest, schema_tag, Exemption, SchemaTag};
pub use pull::{Admitted, BlobAccess, BlobPermit, BlobRead, Outcome};
pub use push::PushVerdict;
pub use state::{GateState, Permit};
