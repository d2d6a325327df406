//! What modelgate knows about tags: `tag → digest` per canonical repository,
//! when it was last confirmed with the upstream, persisted under `tags/` so
//! the last known mapping survives restarts (and an upstream outage).
//!
//! Invariant: an entry loaded from disk counts as unconfirmed (stale) until
//! the upstream confirms it again; only confirmations within `tag_ttl` let a
//! tag be answered without asking the upstream.

use crate::oci::Digest;
use dashmap::DashMap;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::time::Instant;

/// One remembered tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagEntry {
    pub digest: Digest,
    pub media_type: String,
    /// When the upstream last confirmed the mapping (None: only from disk).
    pub confirmed: Option<Instant>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct OnDisk {
    digest: Digest,
    media_type: String,
    /// Seconds since the epoch of the last confirmation (informational).
    confirmed_unix: u64,
}

/// Tag memory, in memory and on disk.
pub struct TagStore {
    root: PathBuf,
    mem: DashMap<(String, String), TagEntry>,
}

impl TagStore {
    pub fn open(root: PathBuf) -> io::Result<TagStore> {
        fs::create_dir_all(&root)?;
        Ok(TagStore {
            root,
            mem: DashMap::new(),
        })
    }

    fn path(&self, repo: &str, tag: &str) -> PathBuf {
        // `repo` is a canonical name (validated components, upstream names
        // without '/'), `tag` a validated tag: both are safe path parts.
        self.root.join(repo).join(format!("{tag}.json"))
    }

    pub fn get(&self, repo: &str, tag: &str) -> Option<TagEntry> {
        let key = (repo.to_string(), tag.to_string());
        if let Some(e) = self.mem.get(&key) {
            return Some(e.clone());
        }
        let text = fs::read(self.path(repo, tag)).ok()?;
        let d: OnDisk = serde_json::from_slice(&text).ok()?;
        let e = TagEntry {
            digest: d.digest,
            media_type: d.media_type,
            confirmed: None,
        };
        self.mem.insert(key, e.clone());
        Some(e)
    }

    /// Forget `tag` (it was deleted).
    pub fn forget(&self, repo: &str, tag: &str) {
        self.mem.remove(&(repo.to_string(), tag.to_string()));
        let _ = fs::remove_file(self.path(repo, tag));
    }

    /// Remember `tag → digest` as last known elsewhere (another replica's
    /// record), unconfirmed: the upstream is asked again when it can be.
    pub fn remember_unconfirmed(
        &self,
        repo: &str,
        tag: &str,
        digest: &Digest,
        media_type: &str,
    ) -> io::Result<()> {
        self.record(repo, tag, digest, media_type, None)
    }

    /// Record that the upstream says `tag → digest` now.
    pub fn confirm(
        &self,
        repo: &str,
        tag: &str,
        digest: &Digest,
        media_type: &str,
    ) -> io::Result<()> {
        self.record(repo, tag, digest, media_type, Some(Instant::now()))
    }

    /// Keep `tag → digest` in memory and on disk (the disk only when it
    /// changed), confirmed at `confirmed`.
    fn record(
        &self,
        repo: &str,
        tag: &str,
        digest: &Digest,
        media_type: &str,
        confirmed: Option<Instant>,
    ) -> io::Result<()> {
        let key = (repo.to_string(), tag.to_string());
        let unchanged = self
            .mem
            .get(&key)
            .map(|e| &e.digest == digest && e.media_type == media_type && e.confirmed.is_some())
            .unwrap_or(false);
        self.mem.insert(
            key,
            TagEntry {
                digest: digest.clone(),
                media_type: media_type.to_string(),
                confirmed,
            },
        );
        if unchanged {
            return Ok(());
        }
        let path = self.path(repo, tag);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let rec = OnDisk {
            digest: digest.clone(),
            media_type: media_type.to_string(),
            confirmed_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        let tmp = path.with_extension("json.tmp");
        fs::write(&tmp, serde_json::to_vec(&rec).map_err(io::Error::other)?)?;
        fs::rename(tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_restart_as_unconfirmed() {
        let dir = tempfile::tempdir().unwrap();
        let d = Digest::of(b"m");
        {
            let t = TagStore::open(dir.path().to_path_buf()).unwrap();
            assert!(t.get("docker.io/library/alpine", "3.19").is_none());
            t.confirm("docker.io/library/alpine", "3.19", &d, "x/y")
                .unwrap();
            assert!(t
                .get("docker.io/library/alpine", "3.19")
                .unwrap()
                .confirmed
                .is_some());
        }
        let t = TagStore::open(dir.path().to_path_buf()).unwrap();
        let e = t.get("docker.io/library/alpine", "3.19").unwrap();
        assert_eq!(e.digest, d);
        assert_eq!(e.media_type, "x/y");
        assert!(e.confirmed.is_none());
    }
}
