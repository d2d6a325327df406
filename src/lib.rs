//! modelgate: a streaming pull-through proxy for OCI registries.
//!
//! Data flows request → [`server`] (routing, handlers) → [`upstream`] /
//! [`cache`] → response; [`oci`] holds the protocol vocabulary and
//! [`metrics`] what operators scrape.

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
