//! Which repository holds which content. The blob store is global (one copy
//! per digest), but a registry answers per repository: a blob or manifest
//! is served in a repository only when that repository is known to hold it.
//!
//! A (repository, digest) pair is known when the upstream served or
//! confirmed it for that repository, when a manifest served in that
//! repository references it, or when a push through modelgate put it there.
//! Anything else is asked of the upstream first, so a cached object is
//! never readable under a name that does not have it.
//!
//! Invariant: memory is bounded ([`MAX_ENTRIES`]); when full the set is
//! cleared, which costs upstream HEAD requests, never a wrong answer.

use crate::oci::Digest;
use dashmap::DashMap;

/// At most this many pairs are remembered (about 150 bytes each).
pub const MAX_ENTRIES: usize = 1 << 20;

/// What kind of object a repository holds under a digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    Blob,
    Manifest,
}

/// The known (repository, digest) pairs.
#[derive(Default)]
pub struct Holdings {
    map: DashMap<(String, Digest), Held>,
}

impl Holdings {
    pub fn new() -> Holdings {
        Holdings::default()
    }

    /// Remember that `repo` holds `d`.
    pub fn hold(&self, repo: &str, d: &Digest, kind: Held) {
        if self.map.len() >= MAX_ENTRIES {
            self.map.clear();
        }
        self.map.insert((repo.to_string(), d.clone()), kind);
    }

    /// Whether `repo` is known to hold `d` as `kind`.
    pub fn holds(&self, repo: &str, d: &Digest, kind: Held) -> bool {
        self.map
            .get(&(repo.to_string(), d.clone()))
            .is_some_and(|k| *k == kind)
    }

    /// `repo` no longer holds `d` (deleted through modelgate, or the
    /// upstream said 404).
    pub fn release(&self, repo: &str, d: &Digest) {
        self.map.remove(&(repo.to_string(), d.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_per_repository_and_kind() {
        let h = Holdings::new();
        let d = Digest::of(b"x");
        h.hold("a/b", &d, Held::Blob);
        assert!(h.holds("a/b", &d, Held::Blob));
        assert!(!h.holds("a/c", &d, Held::Blob));
        assert!(!h.holds("a/b", &d, Held::Manifest));
        h.release("a/b", &d);
        assert!(!h.holds("a/b", &d, Held::Blob));
    }
}
