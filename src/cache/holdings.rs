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

/// The known (repository, digest) pairs, by repository (so a lookup
/// allocates nothing).
#[derive(Default)]
pub struct Holdings {
    map: DashMap<String, DashMap<Digest, Held>>,
    entries: std::sync::atomic::AtomicUsize,
}

impl Holdings {
    pub fn new() -> Holdings {
        Holdings::default()
    }

    /// Remember that `repo` holds `d`.
    pub fn hold(&self, repo: &str, d: &Digest, kind: Held) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.holds(repo, d, kind) {
            return;
        }
        if self.entries.load(Relaxed) >= MAX_ENTRIES {
            self.map.clear();
            self.entries.store(0, Relaxed);
        }
        let added = match self.map.get(repo) {
            Some(m) => m.insert(d.clone(), kind).is_none(),
            None => {
                let m = self.map.entry(repo.to_string()).or_default();
                m.insert(d.clone(), kind).is_none()
            }
        };
        if added {
            self.entries.fetch_add(1, Relaxed);
        }
    }

    /// Whether `repo` is known to hold `d` as `kind`.
    pub fn holds(&self, repo: &str, d: &Digest, kind: Held) -> bool {
        self.map
            .get(repo)
            .is_some_and(|m| m.get(d).is_some_and(|k| *k == kind))
    }

    /// `repo` no longer holds `d` (deleted through modelgate, or the
    /// upstream said 404).
    pub fn release(&self, repo: &str, d: &Digest) {
        if let Some(m) = self.map.get(repo) {
            if m.remove(d).is_some() {
                self.entries
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
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
