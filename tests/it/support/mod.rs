//! Test support, split by job: [`mock`] (the state of an in-process
//! upstream registry), [`server`] (running it), [`answers`] (its answers'
//! bodies), [`endpoints`] (what it answers, one function per endpoint),
//! [`uploads`] (its blob uploads), [`faults`] (how it misbehaves), [`gate`]
//! (a modelgate started in-process), [`client`] (a small HTTP client) and
//! [`process`] (ports, child processes, the `modelgate` binary).

pub mod answers;
pub mod client;
pub mod endpoints;
pub mod faults;
pub mod fleet;
pub mod gate;
pub mod mock;
pub mod notary;
pub mod process;
pub mod server;
pub mod uploads;

pub use client::*;
pub use gate::*;
pub use mock::*;
pub use process::*;
pub use server::*;
