//! Talking to upstream registries: which upstream a request goes to
//! ([`route`]), and the HTTP client that reaches it with the right
//! credentials ([`client`], [`auth`]).

pub mod auth;
pub mod client;
pub mod route;

pub use client::{Upstream, UpstreamError, UpstreamResponse};
pub use route::{Route, RouteError, Router};
