//! `modelgate cache stats|verify|gc`. `stats` and `verify` only read, so
//! they are safe next to a running server; deleting (corrupt objects, LRU
//! eviction) needs the cache's lock, which a running server holds.
//!
//! With `[storage] backend = "s3"` each also covers the shared bucket:
//! `stats` counts its objects, records and unfinished uploads; `verify`
//! hashes every blob and manifest against its key (deleting one that does
//! not match: content-addressed, so any replica fetches it again); `gc`
//! aborts multipart uploads nobody is finishing (no lease on their digest,
//! or, without Redis, older than an hour).

use crate::cache::{BlobStore, Repair};
use crate::config::Config;
use crate::oci::{Digest, Sha256Hasher};
use crate::shared::Shared;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use std::path::Path;
use std::sync::Arc;

/// An unfinished upload older than this, without Redis to ask, is dead.
const STALE_UPLOAD: std::time::Duration = std::time::Duration::from_secs(3600);

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
    let local = match action {
        CacheAction::Stats => {
            stats(&cfg, &store);
            Ok(())
        }
        CacheAction::Gc => gc(&cfg, &store),
        CacheAction::Verify => verify(&store),
    };
    // The shared part runs whatever the local one found (its lock may be
    // held by a running replica).
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let Some(shared) = Shared::open(&cfg, metrics)? else {
        return local;
    };
    if let Err(e) = &local {
        println!("local cache: {e}");
    }
    println!("shared    {}", shared.bucket.endpoint());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(async {
            match action {
                CacheAction::Stats => shared_stats(&shared).await,
                CacheAction::Verify => shared_verify(&shared).await,
                CacheAction::Gc => shared_gc(&shared).await,
            }
        })
        .and(local)
}

async fn shared_stats(s: &Shared) -> Result<(), String> {
    for (what, prefix) in [
        ("blobs", "blobs/"),
        ("manifests", "manifests/"),
        ("tag records", "tags/"),
        ("ledgers", "ledger/"),
    ] {
        let objects = s.bucket.list(prefix).await.map_err(|e| e.to_string())?;
        let bytes: u64 = objects.iter().map(|o| o.size).sum();
        println!("  {what:<12} {} ({})", objects.len(), human(bytes));
    }
    let pending = s
        .bucket
        .pending_uploads("blobs/")
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "  unfinished uploads {} (a download under way, or one `cache gc` aborts)",
        pending.len()
    );
    Ok(())
}

/// The digest a content-addressed key names.
fn digest_of_key(key: &str) -> Option<Digest> {
    let mut parts = key.rsplitn(3, '/');
    let hex = parts.next()?;
    let alg = parts.next()?;
    format!("{alg}:{hex}").parse().ok()
}

async fn shared_verify(s: &Shared) -> Result<(), String> {
    let (mut checked, mut bytes, mut corrupt) = (0u64, 0u64, Vec::new());
    for prefix in ["blobs/", "manifests/"] {
        for o in s.bucket.list(prefix).await.map_err(|e| e.to_string())? {
            let Some(want) = digest_of_key(&o.key) else {
                corrupt.push(o.key);
                continue;
            };
            let Some(resp) = s.bucket.get(&o.key, 0).await.map_err(|e| e.to_string())? else {
                continue;
            };
            let mut h = Sha256Hasher::new();
            let mut body = resp.into_body().into_data_stream();
            while let Some(chunk) = body.next().await {
                h.update(&chunk.map_err(|e| format!("reading {}: {e}", o.key))?);
            }
            checked += 1;
            bytes += h.len();
            if h.finish() != want {
                corrupt.push(o.key);
            }
        }
    }
    println!("  checked {checked} objects, {}", human(bytes));
    for key in &corrupt {
        s.bucket.delete(key).await.map_err(|e| e.to_string())?;
        println!("  CORRUPT {key} (deleted: the next pull fetches it again)");
    }
    if !corrupt.is_empty() {
        return Err(format!(
            "{} corrupt objects in the shared bucket",
            corrupt.len()
        ));
    }
    println!("  all objects match their digests");
    Ok(())
}

async fn shared_gc(s: &Shared) -> Result<(), String> {
    let now = time::OffsetDateTime::now_utc();
    let mut aborted = 0;
    for u in s
        .bucket
        .pending_uploads("blobs/")
        .await
        .map_err(|e| e.to_string())?
    {
        let started = time::OffsetDateTime::parse(
            &u.initiated,
            &time::format_description::well_known::Rfc3339,
        )
        .ok();
        let old = started.is_none_or(|t| now - t > STALE_UPLOAD);
        let leased = match (&s.leases, digest_of_key(&u.key)) {
            (Some(l), Some(d)) => l.is_held(&d).await,
            _ => None,
        };
        // A lease means a replica is still copying it in.
        if leased == Some(true) || (leased.is_none() && !old) {
            continue;
        }
        s.bucket
            .abort(&u.key, &u.upload_id)
            .await
            .map_err(|e| e.to_string())?;
        aborted += 1;
    }
    println!("  aborted {aborted} unfinished uploads nobody is finishing");
    Ok(())
}
