//! Interop with the real distribution registry and real clients.
