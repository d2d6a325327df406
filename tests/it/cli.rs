//! The compiled binary.
