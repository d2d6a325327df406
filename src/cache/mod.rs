//! Everything modelgate keeps: the content-addressed blob and manifest store
//! ([`store`]), the tag → digest memory ([`tags`]) and single-flight upstream
//! downloads that several clients stream from at once ([`flight`]).

pub mod flight;
pub mod holdings;
pub mod store;
pub mod tags;

pub use flight::{FeedMode, FetchError, FetchState, Flights, Joined};
pub use holdings::{Held, Holdings};
pub use store::{BlobStore, LockError, TempReport, VerifyReport};
pub use tags::{TagEntry, TagStore};
