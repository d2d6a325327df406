//! The release ledger: every release (a semantic-version tag set through
//! the gate) and every channel move, with who, when, why and the facts the
//! release carried. One append-only JSON-lines file per repository under
//! `<cache dir>/ledger/`, next to the tag memory, so that both move
//! together (shared storage for several replicas keeps them side by side).
//!
//! With several replicas (`[storage] backend = "s3"`) the ledger of record
//! is in the bucket (`ledger/<repo>/ledger.jsonl`, appended by
//! compare-and-swap); the local files are its mirror, refreshed before a
//! push is decided, before history is read, and every few seconds.
//!
//! Invariants: an entry is written (and fsynced) only after the upstream
//! confirmed the tag; entries are never rewritten; a line that does not
//! parse (a torn write at a crash) is skipped, never fatal; an entry the
//! bucket could not take is kept in `pending.jsonl` and appended later,
//! never dropped.

use crate::shared::{BucketError, Fetched, Shared};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// What an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Event {
    /// A semantic-version tag was set.
    Release,
    /// A channel tag moved.
    Channel,
    /// A release candidate the gate refused (the upstream never got it).
    Refused,
}

/// One line of the ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub time: String,
    pub event: Event,
    pub repository: String,
    pub tag: String,
    pub digest: String,
    /// What the tag named before (None: it was new).
    pub previous_digest: Option<String>,
    /// The release's semantic version (releases: the tag; channel moves:
    /// the release moved to).
    pub version: Option<String>,
    /// Numeric facts of the release (labels, model facts).
    #[serde(default)]
    pub facts: BTreeMap<String, f64>,
    /// Who signed the release (key names, keyless and Notation signers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signers: Vec<String>,
    /// Why a candidate was refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused_because: Vec<String>,
    pub user: Option<String>,
    pub client: String,
    pub reason: Option<String>,
    pub policy_sha256: String,
}

/// The ledger files.
pub struct Ledger {
    root: PathBuf,
    /// Appends to one file at a time (lines never interleave).
    lock: Mutex<()>,
    /// The ledger of record, with several replicas.
    shared: Option<Arc<Shared>>,
    /// Repository → the ETag of the bucket's ledger the mirror holds.
    mirrored: Mutex<BTreeMap<String, String>>,
}

/// The semantic version a tag names (`v1.2.0` or `1.2.0`), if any.
pub fn version_of(tag: &str) -> Option<semver::Version> {
    semver::Version::parse(tag.strip_prefix('v').unwrap_or(tag)).ok()
}

impl Ledger {
    pub fn open(root: PathBuf) -> io::Result<Ledger> {
        Ledger::open_shared(root, None)
    }

    /// A ledger whose record is in `shared`'s bucket (when given).
    pub fn open_shared(root: PathBuf, shared: Option<Arc<Shared>>) -> io::Result<Ledger> {
        fs::create_dir_all(&root)?;
        Ok(Ledger {
            root,
            lock: Mutex::new(()),
            shared,
            mirrored: Mutex::new(BTreeMap::new()),
        })
    }

    fn pending_path(&self, repo: &str) -> PathBuf {
        self.root.join(repo).join("pending.jsonl")
    }

    /// Replace the mirror of `repo` with `text`, the bucket's copy at `etag`.
    fn mirror(&self, repo: &str, text: &[u8], etag: String) -> io::Result<()> {
        let path = self.path(repo);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("jsonl.tmp");
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        fs::write(&tmp, text)?;
        fs::rename(tmp, path)?;
        self.mirrored
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(repo.to_string(), etag);
        Ok(())
    }

    /// Record `e`: in the bucket first with several replicas (kept pending
    /// locally when the bucket cannot take it), else in the local file.
    pub async fn record(&self, e: &LedgerEntry) -> io::Result<()> {
        let Some(shared) = &self.shared else {
            return self.append(e);
        };
        let mut line = serde_json::to_vec(e).map_err(io::Error::other)?;
        line.push(b'\n');
        match shared.append_ledger(&e.repository, &line).await {
            Ok((text, etag)) => self.mirror(&e.repository, &text, etag),
            Err(err) => {
                tracing::error!(repository = %e.repository, "the shared ledger cannot take an entry now ({err}); it is kept in pending.jsonl and appended when the bucket is back");
                self.append_to(&self.pending_path(&e.repository), &line)?;
                self.append(e)
            }
        }
    }

    /// Bring the mirror of `repo` up to date with the bucket (after
    /// appending what is pending). Without shared storage, nothing to do.
    pub async fn refresh(&self, repo: &str) -> Result<(), BucketError> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let pending = self.pending_path(repo);
        if let Ok(lines) = fs::read(&pending) {
            shared.append_ledger(repo, &lines).await?;
            let _ = fs::remove_file(&pending);
        }
        let held = self
            .mirrored
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(repo)
            .cloned();
        if let Fetched::Got(text, etag) = shared.ledger_unless(repo, held.as_deref()).await? {
            if let Err(e) = self.mirror(repo, &text, etag) {
                tracing::warn!(repository = %repo, "cannot mirror the shared ledger: {e}");
            }
        }
        Ok(())
    }

    /// Refresh every repository's mirror every `every` (release page, API).
    pub fn keep_mirrored(self: Arc<Self>, every: std::time::Duration) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        tokio::spawn(async move {
            loop {
                if let Ok(repos) = shared.ledger_repositories().await {
                    for repo in repos.iter().chain(self.repositories().iter()) {
                        let _ = self.refresh(repo).await;
                    }
                }
                tokio::time::sleep(every).await;
            }
        });
    }

    fn append_to(&self, path: &std::path::Path, line: &[u8]) -> io::Result<()> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut f = OpenOptions::new().create(true).append(true).open(path)?;
        f.write_all(line)?;
        f.sync_data()
    }

    fn path(&self, repo: &str) -> PathBuf {
        // Canonical names are validated path components.
        self.root.join(repo).join("ledger.jsonl")
    }

    /// Append `e` durably to the local file.
    pub fn append(&self, e: &LedgerEntry) -> io::Result<()> {
        let mut line = serde_json::to_vec(e).map_err(io::Error::other)?;
        line.push(b'\n');
        self.append_to(&self.path(&e.repository), &line)
    }

    /// Every entry of `repo`, oldest first.
    pub fn entries(&self, repo: &str) -> Vec<LedgerEntry> {
        let Ok(text) = fs::read_to_string(self.path(repo)) else {
            return Vec::new();
        };
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The releases of `repo` as they stand: the latest entry per version
    /// tag.
    pub fn releases(&self, repo: &str) -> Vec<LedgerEntry> {
        let mut by_tag: BTreeMap<String, LedgerEntry> = BTreeMap::new();
        for e in self.entries(repo) {
            if e.event == Event::Release {
                by_tag.insert(e.tag.clone(), e);
            }
        }
        let mut v: Vec<_> = by_tag.into_values().collect();
        v.sort_by_key(|e| version_of(&e.tag));
        v
    }

    /// The release before `version` in `repo`: the highest version below it.
    pub fn previous_release(&self, repo: &str, version: &semver::Version) -> Option<LedgerEntry> {
        self.releases(repo)
            .into_iter()
            .rfind(|e| version_of(&e.tag).is_some_and(|v| &v < version))
    }

    /// The release of `repo` whose digest is `digest`, if it is one.
    pub fn release_with_digest(&self, repo: &str, digest: &str) -> Option<LedgerEntry> {
        self.releases(repo)
            .into_iter()
            .rev()
            .find(|e| e.digest == digest)
    }

    /// Every repository with a ledger.
    pub fn repositories(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.file_name().is_some_and(|n| n == "ledger.jsonl") {
                    if let Some(repo) = p
                        .parent()
                        .and_then(|d| d.strip_prefix(&self.root).ok())
                        .map(|r| r.to_string_lossy().into_owned())
                    {
                        out.push(repo);
                    }
                }
            }
        }
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tag: &str, digest: &str, event: Event) -> LedgerEntry {
        LedgerEntry {
            time: "2026-01-01T00:00:00Z".into(),
            event,
            repository: "hub/models/clf".into(),
            tag: tag.into(),
            digest: digest.into(),
            previous_digest: None,
            version: version_of(tag).map(|v| v.to_string()),
            facts: [("accuracy.test".to_string(), 0.9)].into(),
            signers: vec![],
            refused_because: vec![],
            user: Some("ci".into()),
            client: "127.0.0.1".into(),
            reason: None,
            policy_sha256: "x".into(),
        }
    }

    #[test]
    fn releases_survive_reopening_and_order_by_version() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(dir.path().to_path_buf()).unwrap();
        for (t, d) in [("v1.10.0", "d3"), ("v1.2.0", "d2"), ("v1.0.0", "d1")] {
            l.append(&entry(t, d, Event::Release)).unwrap();
        }
        l.append(&entry("prod", "d2", Event::Channel)).unwrap();
        // A torn last line (a crash mid-append) is skipped.
        let path = dir.path().join("hub/models/clf/ledger.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"time\":").unwrap();
        let l = Ledger::open(dir.path().to_path_buf()).unwrap();
        let tags: Vec<_> = l
            .releases("hub/models/clf")
            .into_iter()
            .map(|e| e.tag)
            .collect();
        assert_eq!(tags, ["v1.0.0", "v1.2.0", "v1.10.0"]);
        let v = version_of("v1.10.0").unwrap();
        assert_eq!(
            l.previous_release("hub/models/clf", &v).unwrap().tag,
            "v1.2.0"
        );
        assert!(l
            .previous_release("hub/models/clf", &version_of("1.0.0").unwrap())
            .is_none());
        assert_eq!(
            l.release_with_digest("hub/models/clf", "d2").unwrap().tag,
            "v1.2.0"
        );
        assert!(l.release_with_digest("hub/models/clf", "nope").is_none());
        assert_eq!(l.entries("hub/models/clf").len(), 4);
        assert_eq!(l.repositories(), ["hub/models/clf"]);
    }
}
