//! Integration tests: the real modelgate server, started in-process on
//! 127.0.0.1:0, driven over HTTP.

mod support;

// Pull API against an honest in-process upstream.
mod pull;
// Upstreams that lie, drop, drip, stall, redirect and ask for tokens.
mod faults;
// The real distribution registry and real clients (skopeo, containerd, podman).
pub mod interop;
// The compiled binary: quick-start config, CLI cache tools, SIGTERM.
mod cli;
// cosign signature vectors from another implementation.
mod vectors;
// The gate: policy decisions and the bypass suite.
mod policy;
// Pushing through the gate.
pub mod push;
// Regression tests for the bypasses and workflow defects of issue #7.
mod bypass;
// Regression tests for the protocol, resource and operability items of issue #7.
mod hardening;
// Keyless (Fulcio/Rekor) signatures from a fake Sigstore instance, through the gate.
mod keyless;
// The sigstore-conformance bundle-verify suite against `modelgate verify-bundle`.
mod conformance;
// Notation (Notary Project) signatures through the gate.
mod notation;
// Models shipped as OCI artifacts (Docker Model Runner, ModelPack, KitOps, ORAS) through the gate.
pub mod models;
// The release lifecycle: regression gate, channels, the release ledger.
pub mod releases;
// Dependency hygiene: licenses, one crypto generation, known duplicates.
mod deps;
// kill -9 mid-traffic, then a restart.
mod crash;

// Several replicas sharing SeaweedFS and Redis.
mod replicas;
