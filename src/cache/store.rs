//! The content-addressed store: `blobs/sha256/<hex>` holds exactly the bytes
//! whose SHA-256 is `<hex>`, for layers, configs and manifests alike.
//!
//! Invariants:
//! - a file appears under `blobs/` only by `rename` from `tmp/` after its
//!   digest was verified and the data fsynced, so a crash or a failed
//!   download never leaves a wrong or partial blob behind;
//! - the in-memory index mirrors `blobs/` (rebuilt at start), and its total
//!   is kept under `max_bytes` by evicting least recently used entries;
//! - one process owns a cache at a time ([`BlobStore::lock_exclusive`], an
//!   advisory lock on `lock`): only the owner clears `tmp/` or deletes;
//!   other processes (the `cache stats` and `cache verify` commands next
//!   to a running server) only read;
//! - a layout removed under a running server is made again on demand.

use crate::oci::{Digest, Sha256Hasher};
use dashmap::DashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

struct Entry {
    size: u64,
    last_use: AtomicU64,
}

/// The on-disk cache.
pub struct BlobStore {
    root: PathBuf,
    index: DashMap<Digest, Entry>,
    total: AtomicU64,
    clock: AtomicU64,
    tmp_seq: AtomicU64,
    max_bytes: u64,
    /// Counts evicted entries for `modelgate_cache_evictions_total`.
    evictions: Option<prometheus_client::metrics::counter::Counter>,
    /// Counts layouts made again (`modelgate_cache_layout_recreated_total`).
    recreated: Option<prometheus_client::metrics::counter::Counter>,
    /// The lock file while this process owns the cache.
    lock: std::sync::Mutex<Option<File>>,
    /// One eviction at a time: concurrent commits must not each evict.
    evicting: std::sync::Mutex<()>,
}

/// Directories of the layout under the root.
const LAYOUT: [&str; 3] = ["blobs/sha256", "meta/sha256", "tmp"];

/// Why the cache could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another modelgate process owns the cache {0} (it holds {0}/lock); stop it first, or use `cache stats` / `cache verify`, which only read")]
    Held(String),
    #[error("cannot lock the cache {0}: {1}")]
    Io(String, io::Error),
}

/// Files left in `tmp/`: downloads under way, or left by a crash.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TempReport {
    pub files: u64,
    pub bytes: u64,
}

/// What `cache verify` does with an object whose bytes are wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    /// Remove it (only the owner of the cache may).
    RemoveCorrupt,
    /// Only report it.
    ReportOnly,
}

/// What `cache verify` found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub checked: u64,
    pub bytes: u64,
    /// Digests whose bytes did not match (removed when asked to).
    pub corrupt: Vec<Digest>,
}

impl BlobStore {
    /// Open (creating) a store under `root` and index what is there.
    /// Nothing is deleted: leftovers of interrupted downloads are dropped by
    /// the owner ([`BlobStore::lock_exclusive`]).
    pub fn open(root: &Path, max_bytes: u64) -> io::Result<BlobStore> {
        for d in LAYOUT {
            fs::create_dir_all(root.join(d))?;
        }
        let store = BlobStore {
            root: root.to_path_buf(),
            index: DashMap::new(),
            total: AtomicU64::new(0),
            clock: AtomicU64::new(1),
            tmp_seq: AtomicU64::new(0),
            max_bytes,
            evictions: None,
            recreated: None,
            lock: std::sync::Mutex::new(None),
            evicting: std::sync::Mutex::new(()),
        };
        // Order the existing entries by modification time so LRU survives a
        // restart approximately.
        let mut found = Vec::new();
        for e in fs::read_dir(root.join("blobs/sha256"))? {
            let e = e?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let Ok(d) = format!("sha256:{name}").parse::<Digest>() else {
                continue;
            };
            let md = e.metadata()?;
            found.push((md.modified().ok(), d, md.len()));
        }
        found.sort();
        for (_, d, size) in found {
            store.insert(d, size);
        }
        Ok(store)
    }

    /// Count evictions on `c`.
    pub fn count_evictions(&mut self, c: prometheus_client::metrics::counter::Counter) {
        self.evictions = Some(c);
    }

    /// Count layouts made again on `c`.
    pub fn count_recreations(&mut self, c: prometheus_client::metrics::counter::Counter) {
        self.recreated = Some(c);
    }

    /// Own the cache: take its lock (refused while another process holds
    /// it) and drop leftovers of interrupted downloads.
    pub fn lock_exclusive(&self) -> Result<(), LockError> {
        if self.lock.lock().is_ok_and(|g| g.is_some()) {
            return Ok(());
        }
        let name = self.root.display().to_string();
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join("lock"))
            .map_err(|e| LockError::Io(name.clone(), e))?;
        match f.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(LockError::Held(name)),
            Err(fs::TryLockError::Error(e)) => return Err(LockError::Io(name, e)),
        }
        if let Ok(rd) = fs::read_dir(self.root.join("tmp")) {
            for e in rd.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        if let Ok(mut g) = self.lock.lock() {
            *g = Some(f);
        }
        Ok(())
    }

    /// Give the cache up (at shutdown).
    pub fn unlock(&self) {
        if let Ok(mut g) = self.lock.lock() {
            g.take();
        }
    }

    /// Whether another process owns the cache now.
    pub fn owned_elsewhere(&self) -> bool {
        if self.lock.lock().is_ok_and(|g| g.is_some()) {
            return false;
        }
        fs::OpenOptions::new()
            .write(true)
            .open(self.root.join("lock"))
            .is_ok_and(|f| matches!(f.try_lock(), Err(fs::TryLockError::WouldBlock)))
    }

    /// Make the layout again if it was removed; Ok when it is in place.
    pub fn ensure_layout(&self) -> io::Result<()> {
        if LAYOUT.iter().all(|d| self.root.join(d).is_dir()) {
            return Ok(());
        }
        for d in LAYOUT {
            fs::create_dir_all(self.root.join(d))?;
        }
        tracing::warn!(cache = %self.root.display(), "the cache layout was missing; made it again");
        if let Some(c) = &self.recreated {
            c.inc();
        }
        Ok(())
    }

    /// Run `op`; if it failed because a directory of the layout is gone,
    /// make the layout again and run it once more.
    fn with_layout<T>(&self, op: impl Fn() -> io::Result<T>) -> io::Result<T> {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.ensure_layout()?;
                op()
            }
            other => other,
        }
    }

    /// Bytes free for the cache on its filesystem (None when unknown).
    pub fn available_bytes(&self) -> Option<u64> {
        let st = rustix::fs::statvfs(&self.root).ok()?;
        Some(st.f_bavail.saturating_mul(st.f_frsize))
    }

    /// What `tmp/` holds.
    pub fn temp_report(&self) -> TempReport {
        let mut r = TempReport::default();
        if let Ok(rd) = fs::read_dir(self.root.join("tmp")) {
            for e in rd.flatten() {
                r.files += 1;
                r.bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
        r
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    fn insert(&self, d: Digest, size: u64) {
        let t = self.tick();
        if let Some(old) = self.index.insert(
            d,
            Entry {
                size,
                last_use: AtomicU64::new(t),
            },
        ) {
            self.total.fetch_sub(old.size, Ordering::Relaxed);
        }
        self.total.fetch_add(size, Ordering::Relaxed);
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    fn meta_path(&self, d: &Digest) -> PathBuf {
        self.root.join("meta/sha256").join(d.hex())
    }

    /// Bytes currently held.
    pub fn total_bytes(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Size of a cached blob, if present (does not count as a use).
    pub fn size_of(&self, d: &Digest) -> Option<u64> {
        self.index.get(d).map(|e| e.size)
    }

    /// Open a cached blob for reading and mark it recently used.
    pub fn open_blob(&self, d: &Digest) -> Option<(File, u64)> {
        let size = {
            let e = self.index.get(d)?;
            e.last_use.store(self.tick(), Ordering::Relaxed);
            e.size
        };
        match File::open(self.blob_path(d)) {
            Ok(f) => Some((f, size)),
            Err(_) => {
                // Removed behind our back (e.g. `cache gc` from the CLI).
                self.forget(d);
                None
            }
        }
    }

    /// Drop `d` from the index; whether it was there.
    fn forget(&self, d: &Digest) -> bool {
        match self.index.remove(d) {
            Some((_, e)) => {
                self.total.fetch_sub(e.size, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Read a small cached object (a manifest) whole.
    pub fn read_small(&self, d: &Digest, max: usize) -> Option<Vec<u8>> {
        let (f, size) = self.open_blob(d)?;
        if size as usize > max {
            return None;
        }
        let mut buf = Vec::with_capacity(size as usize);
        f.take(max as u64).read_to_end(&mut buf).ok()?;
        Some(buf)
    }

    /// The media type recorded for a cached manifest.
    pub fn media_type(&self, d: &Digest) -> Option<String> {
        fs::read_to_string(self.meta_path(d)).ok()
    }

    /// A fresh temp file for a download in progress.
    pub fn temp_file(&self) -> io::Result<(PathBuf, File)> {
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = self
            .root
            .join("tmp")
            .join(format!("{}-{n}-{nanos}", std::process::id()));
        let f = self.with_layout(|| {
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
        })?;
        Ok((path, f))
    }

    /// Move a verified, fsynced temp file into place. The caller has checked
    /// that its bytes hash to `d`.
    pub fn commit(&self, tmp: &Path, d: &Digest, size: u64) -> io::Result<()> {
        self.with_layout(|| fs::rename(tmp, self.blob_path(d)))?;
        if let Ok(dir) = File::open(self.root.join("blobs/sha256")) {
            let _ = dir.sync_all();
        }
        self.insert(d.clone(), size);
        self.evict_to(self.max_bytes);
        Ok(())
    }

    /// Store small verified bytes (a manifest) with its media type.
    pub fn put_bytes(&self, d: &Digest, bytes: &[u8], media_type: Option<&str>) -> io::Result<()> {
        if let Some(mt) = media_type {
            let tmp = self.temp_file()?;
            (&tmp.1).write_all(mt.as_bytes())?;
            self.with_layout(|| fs::rename(&tmp.0, self.meta_path(d)))?;
        }
        if self.index.contains_key(d) {
            return Ok(());
        }
        let (path, mut f) = self.temp_file()?;
        let res = f.write_all(bytes).and_then(|_| f.sync_all());
        if let Err(e) = res {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        self.commit(&path, d, bytes.len() as u64)
    }

    /// Evict least recently used entries until at most `bound` bytes remain.
    /// Returns (entries, bytes) removed.
    pub fn evict_to(&self, bound: u64) -> (u64, u64) {
        if self.total_bytes() <= bound {
            return (0, 0);
        }
        let _one_at_a_time = self.evicting.lock();
        let mut all: Vec<(u64, Digest, u64)> = self
            .index
            .iter()
            .map(|e| (e.last_use.load(Ordering::Relaxed), e.key().clone(), e.size))
            .collect();
        all.sort();
        let (mut n, mut bytes) = (0, 0);
        for (_, d, size) in all {
            if self.total_bytes() <= bound {
                break;
            }
            // Counted only when this call removed it.
            if self.forget(&d) {
                let _ = fs::remove_file(self.blob_path(&d));
                let _ = fs::remove_file(self.meta_path(&d));
                n += 1;
                bytes += size;
            }
        }
        if let Some(c) = &self.evictions {
            c.inc_by(n);
        }
        (n, bytes)
    }

    /// Re-hash every cached blob; with `remove`, remove the ones whose
    /// bytes are wrong (only the owner of the cache may).
    pub fn verify(&self, repair: Repair) -> io::Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let digests: Vec<Digest> = self.index.iter().map(|e| e.key().clone()).collect();
        let mut buf = vec![0u8; 1 << 20];
        for d in digests {
            let Ok(mut f) = File::open(self.blob_path(&d)) else {
                self.forget(&d);
                continue;
            };
            let mut h = Sha256Hasher::new();
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            report.checked += 1;
            report.bytes += h.len();
            if h.finish() != d {
                if repair == Repair::RemoveCorrupt {
                    let _ = fs::remove_file(self.blob_path(&d));
                    let _ = fs::remove_file(self.meta_path(&d));
                    self.forget(&d);
                }
                report.corrupt.push(d);
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(s: &BlobStore, data: &[u8]) -> Digest {
        let d = Digest::of(data);
        s.put_bytes(&d, data, None).unwrap();
        d
    }

    #[test]
    fn commit_reopen_and_lru_eviction() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path(), 25).unwrap();
        let a = put(&s, &[1u8; 10]);
        let b = put(&s, &[2u8; 10]);
        assert_eq!(s.total_bytes(), 20);
        // Use `a` so `b` is the least recently used.
        assert!(s.open_blob(&a).is_some());
        let c = put(&s, &[3u8; 10]);
        assert!(s.size_of(&b).is_none(), "b should be evicted");
        assert!(s.size_of(&a).is_some() && s.size_of(&c).is_some());
        assert!(!s.blob_path(&b).exists());
        drop(s);
        let s = BlobStore::open(dir.path(), 25).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s.total_bytes(), 20);
        assert_eq!(s.read_small(&a, 100).unwrap(), vec![1u8; 10]);
    }

    #[test]
    fn verify_removes_corrupt_blobs_and_restart_drops_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path(), u64::MAX).unwrap();
        let a = put(&s, b"good bytes");
        let b = put(&s, b"will be damaged");
        fs::write(s.blob_path(&b), b"damaged!").unwrap();
        let (tmp, _) = s.temp_file().unwrap();
        let r = s.verify(Repair::RemoveCorrupt).unwrap();
        assert_eq!(r.checked, 2);
        assert_eq!(r.corrupt, vec![b.clone()]);
        assert!(s.size_of(&a).is_some() && s.size_of(&b).is_none());
        drop(s);
        let s = BlobStore::open(dir.path(), u64::MAX).unwrap();
        assert!(tmp.exists(), "opening deletes nothing");
        s.lock_exclusive().unwrap();
        assert!(!tmp.exists(), "the owner drops leftovers");
    }

    #[test]
    fn one_owner_at_a_time_and_readers_delete_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let owner = BlobStore::open(dir.path(), u64::MAX).unwrap();
        owner.lock_exclusive().unwrap();
        let (tmp, _) = owner.temp_file().unwrap();
        let bad = put(&owner, b"soon damaged");
        fs::write(owner.blob_path(&bad), b"rot").unwrap();
        let reader = BlobStore::open(dir.path(), u64::MAX).unwrap();
        assert!(reader.owned_elsewhere());
        assert!(matches!(reader.lock_exclusive(), Err(LockError::Held(_))));
        assert_eq!(reader.temp_report().files, 1);
        let r = reader.verify(Repair::ReportOnly).unwrap();
        assert_eq!(r.corrupt, vec![bad.clone()]);
        assert!(reader.blob_path(&bad).exists() && tmp.exists());
        owner.unlock();
        assert!(!reader.owned_elsewhere());
        reader.lock_exclusive().unwrap();
    }

    #[test]
    fn a_removed_layout_is_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cache");
        let s = BlobStore::open(&root, u64::MAX).unwrap();
        fs::remove_dir_all(&root).unwrap();
        let d = put(&s, b"after removal");
        assert_eq!(s.read_small(&d, 100).unwrap(), b"after removal".to_vec());
        fs::remove_dir_all(&root).unwrap();
        s.ensure_layout().unwrap();
        assert!(root.join("tmp").is_dir());
        assert!(s.available_bytes().is_some_and(|n| n > 0));
    }

    #[test]
    fn media_type_sidecar() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path(), u64::MAX).unwrap();
        let d = Digest::of(b"{}");
        s.put_bytes(
            &d,
            b"{}",
            Some("application/vnd.oci.image.manifest.v1+json"),
        )
        .unwrap();
        assert_eq!(
            s.media_type(&d).as_deref(),
            Some("application/vnd.oci.image.manifest.v1+json")
        );
    }
}
