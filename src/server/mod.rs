//! The HTTP side, and only that: the client listener (plain or TLS) with
//! its connection limits, the admin listener, client authentication, and one
//! short handler per endpoint and method. Handlers read the request, ask the
//! gate (or, for existence and listings, the registry), and build the
//! response; errors become responses through `crate::error` and
//! [`body::error_response`] (docs/ARCHITECTURE.md).

pub mod admin;
pub mod app;
pub mod auth;
pub mod blobs;
pub mod body;
pub mod conn;
pub mod ctx;
pub mod deletes;
pub mod dispatch;
pub mod internal;
pub mod listener;
pub mod listing;
pub mod manifests;
pub mod router;
pub mod ui;
pub mod uploads;

pub use app::{App, StartError};
pub use listener::{run, tls_acceptor};
