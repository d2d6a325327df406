//! The policy: what a repository must satisfy to be pulled or pushed.
//! [`model`] is the policy as held, [`parse`] reads a file (errors name the
//! line), [`lint`] finds what enforces nothing, [`eval`] decides (pure:
//! evidence in, decision out), [`holder`] keeps the policy in force and
//! reloads it (failing closed).

pub mod eval;
pub mod facts;
pub mod holder;
pub mod lint;
pub mod model;
pub mod parse;

pub use eval::{Decision, Evidence, ImageEvidence, PolicyDecision};
pub use holder::{LoadedPolicy, PolicyHolder};
pub use lint::{Finding, Severity};
pub use model::{
    Constraint, FieldMatch, KeylessSigner, Mode, NotationIdentity, NotationSigner, Policy,
    PolicyError, Rule, KEYLESS_SIGNER, NOTATION_SIGNER,
};
