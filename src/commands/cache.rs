//! `modelgate cache stats|verify|gc`. `stats` and `verify` only read, so
//! they are safe next to a running server; deleting (corrupt objects, LRU
//! eviction) needs the cache's lock, which a running server holds.

use crate::cache::{BlobStore, Repair};
use crate::config::Config;
use std::path::Path;

/// What `modelgate cache` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheAction {
    Stats,
    Verify,
    Gc,
}

fn human(b: u64) -> String {
    bytesize::ByteSize(b).display().iec().to_string()
}

fn stats(cfg: &Config, store: &BlobStore) {
    let tmp = store.temp_report();
    println!("cache     {}", cfg.cache_dir.display());
    println!("objects   {}", store.len());
    let total = store.total_bytes();
    println!("bytes     {total} ({})", human(total));
    println!("max_bytes {} ({})", cfg.max_bytes, human(cfg.max_bytes));
    let whose = match store.owned_elsewhere() {
        true => "downloads under way in the running server",
        false => "left by an interrupted run; the next server start removes them",
    };
    println!("in tmp/   {} files, {} ({whose})", tmp.files, tmp.bytes);
}

fn gc(cfg: &Config, store: &BlobStore) -> Result<(), String> {
    store.lock_exclusive().map_err(|e| e.to_string())?;
    let (n, bytes) = store.evict_to(cfg.max_bytes);
    println!(
        "evicted {n} objects, {} ; {} remain in {} objects",
        human(bytes),
        human(store.total_bytes()),
        store.len()
    );
    Ok(())
}

/// The owner removes what is corrupt; next to a running server it only
/// reports (the server re-fetches a blob whose bytes do not verify).
fn verify(store: &BlobStore) -> Result<(), String> {
    let owner = store.lock_exclusive().is_ok();
    let repair = match owner {
        true => Repair::RemoveCorrupt,
        false => Repair::ReportOnly,
    };
    let r = store.verify(repair).map_err(|e| e.to_string())?;
    println!("checked {} objects, {}", r.checked, human(r.bytes));
    let what = match owner {
        true => "removed",
        false => "not removed: a running modelgate owns this cache; it re-fetches a blob whose bytes do not verify",
    };
    for d in &r.corrupt {
        println!("CORRUPT {d} ({what})");
    }
    if !r.corrupt.is_empty() {
        return Err(format!("{} corrupt objects found", r.corrupt.len()));
    }
    println!("all objects match their digests");
    Ok(())
}

/// `modelgate cache <action> --config <config>`.
pub fn cache(action: CacheAction, config: &Path) -> Result<(), String> {
    let cfg = Config::load(config).map_err(|e| e.to_string())?;
    let store = BlobStore::open(&cfg.cache_dir, cfg.max_bytes)
        .map_err(|e| format!("cannot open cache {}: {e}", cfg.cache_dir.display()))?;
    match action {
        CacheAction::Stats => {
            stats(&cfg, &store);
            Ok(())
        }
        CacheAction::Gc => gc(&cfg, &store),
        CacheAction::Verify => verify(&store),
    }
}
