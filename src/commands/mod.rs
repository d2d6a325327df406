//! The command-line tools besides `serve`, one file each: `keygen`, `sign`,
//! `check`, `history`, `verify-bundle`, `policy lint` and `cache`. `check` runs the server's own
//! decision code (registry + gate), without a server.

pub mod cache;
pub mod check;
pub mod history;
pub mod keygen;
pub mod lint;
pub mod release;
pub mod remote;
pub mod sign;
pub mod verify_bundle;

pub use cache::{cache, CacheAction};
pub use check::{check, Output};
pub use keygen::keygen;
pub use lint::policy_lint;
pub use release::{promote, ReleaseArgs};
pub use remote::Connection;
pub use sign::{sign, SignArgs};
pub use verify_bundle::{verify_bundle, Expected, Refusal, VerifyBundleArgs};
