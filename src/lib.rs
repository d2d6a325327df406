//! modelgate: a streaming pull-through proxy for OCI registries that admits
//! only what its policy allows.
//!
//! Dependencies point one way, as the data flows (docs/ARCHITECTURE.md):
//! [`server`] (HTTP only) → [`gate`] (policy decisions, signatures,
//! evidence) → [`registry`] (content from the cache or the upstream) →
//! [`cache`], [`upstream`], [`oci`]. [`policy`] and [`trust`] are pure;
//! [`error`] is the one place errors become what a client sees.

#![forbid(unsafe_code)]

pub mod audit;
pub mod cache;
pub mod commands;
pub mod config;
pub mod error;
pub mod gate;
pub mod metrics;
pub mod oci;
pub mod policy;
pub mod registry;
pub mod server;
pub mod trust;
pub mod upstream;
