//! Everything modelgate keeps: the content-addressed blob and manifest store
//! ([`store`]), the tag → digest memory ([`tags`]), which repository holds
//! what ([`holdings`]), and single-flight upstream downloads
//! ([`flight`], [`download`], [`reader`], [`progress`]) that several clients
//! stream from at once. Nothing here knows HTTP status codes.

pub mod download;
pub mod flight;
pub mod holdings;
pub mod progress;
pub mod reader;
pub mod store;
pub mod tags;

pub use flight::{FeedMode, Flights, Joined};
pub use holdings::{Held, Holdings};
pub use progress::{FetchError, FetchState};
pub use store::{BlobStore, LockError, Repair, TempReport, VerifyReport};
pub use tags::{TagEntry, TagStore};
