//! The policy file (DESIGN §3): what a repository must satisfy to be pulled
//! or pushed. [`model`] parses and validates it (errors name the line),
//! [`eval`] decides (pure: evidence in, decision out), [`holder`] keeps the
//! policy in force and reloads it.

pub mod eval;
pub mod holder;
pub mod model;

pub use eval::{Decision, Evidence, ImageEvidence, PolicyDecision};
pub use holder::{LoadedPolicy, PolicyHolder};
pub use model::{Constraint, Finding, Mode, Policy, PolicyError, Rule, Severity};
