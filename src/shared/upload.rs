//! Copy a download in flight into the bucket as it lands: parts are
//! uploaded while the download runs (read from its temp file like any
//! follower), and the upload is completed only once the download verified.
//!
//! Invariants: the object appears under its digest only complete and
//! verified (a multipart upload is invisible until completed, and it is
//! completed with `If-None-Match: *`); a failed or abandoned download
//! aborts its upload. Memory: one part (8 MiB, more for blobs over 70 GiB
//! so that they fit in S3's 10,000 parts).

use super::bucket::{Bucket, BucketError, Cond};
use super::Shared;
use crate::cache::reader::stream_flight_at;
use crate::cache::FetchState;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use std::sync::Arc;
use tokio::sync::watch;

/// Bytes per part (S3 needs at least 5 MiB for every part but the last).
pub const PART_SIZE: usize = 8 << 20;

/// S3 takes at most 10,000 parts; keep clear of it.
const MAX_PARTS: u64 = 9_000;

/// The part size for a blob of `size` bytes: [`PART_SIZE`], or larger
/// (whole MiB) when the blob would need more than [`MAX_PARTS`] parts.
pub fn part_size(size: Option<u64>) -> usize {
    let need = size.unwrap_or(0).div_ceil(MAX_PARTS).div_ceil(1 << 20) << 20;
    (need as usize).max(PART_SIZE)
}

/// Upload the download `rx` follows to `key`; the outcome is logged and
/// counted. Returns when the object is complete, or the upload given up.
pub async fn upload_flight(shared: Arc<Shared>, key: String, rx: watch::Receiver<FetchState>) {
    let bucket = shared.bucket.clone();
    let state = rx.clone();
    let mut stream = Box::pin(stream_flight_at(rx, 0, None));
    let mut part = BytesMut::new();
    let mut part_len = PART_SIZE;
    let mut upload: Option<(String, Vec<String>)> = None;
    let outcome: Result<(), String> = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| format!("the download failed: {e}"))?;
            if upload.is_none() && part.is_empty() {
                // The size is known once bytes flow.
                if let FetchState::Streaming { size, .. } = &*state.borrow() {
                    part_len = part_size(*size);
                }
            }
            part.extend_from_slice(&chunk);
            if part.len() >= part_len {
                let (id, parts) = match upload.as_mut() {
                    Some(u) => u,
                    None => upload.insert((
                        bucket
                            .create_multipart(&key)
                            .await
                            .map_err(|e| e.to_string())?,
                        Vec::new(),
                    )),
                };
                let body = part.split().freeze();
                let etag = bucket
                    .upload_part(&key, id, parts.len() as u32 + 1, body)
                    .await
                    .map_err(|e| e.to_string())?;
                parts.push(etag);
            }
        }
        finish(&bucket, &key, &mut upload, part.split().freeze()).await
    }
    .await;
    match outcome {
        Ok(()) => shared.count_upload("stored"),
        Err(why) => {
            if let Some((id, _)) = upload.take() {
                let _ = bucket.abort(&key, &id).await;
            }
            shared.count_upload("failed");
            tracing::warn!(key = %key, "not stored in the shared bucket: {why}");
        }
    }
}

/// The download verified: the last part, then complete (first writer wins;
/// the same digest stored by another replica is as good).
async fn finish(
    bucket: &Bucket,
    key: &str,
    upload: &mut Option<(String, Vec<String>)>,
    last: Bytes,
) -> Result<(), String> {
    let Some((id, parts)) = upload.as_mut() else {
        return match bucket.put(key, last, Cond::IfAbsent).await {
            Ok(_) | Err(BucketError::Precondition) => Ok(()),
            Err(e) => Err(e.to_string()),
        };
    };
    if !last.is_empty() || parts.is_empty() {
        let etag = bucket
            .upload_part(key, id, parts.len() as u32 + 1, last)
            .await
            .map_err(|e| e.to_string())?;
        parts.push(etag);
    }
    match bucket.complete(key, id, parts, Cond::IfAbsent).await {
        Ok(()) => {
            upload.take();
            Ok(())
        }
        // Stored already: abandon ours (the caller aborts it).
        Err(BucketError::Precondition) => {
            if let Some((id, _)) = upload.take() {
                let _ = bucket.abort(key, &id).await;
            }
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_fit_in_ten_thousand() {
        assert_eq!(part_size(None), PART_SIZE);
        assert_eq!(part_size(Some(1 << 30)), PART_SIZE);
        for size in [70u64 << 30, 80 << 30, 1 << 40, 5 << 40] {
            let p = part_size(Some(size)) as u64;
            assert!(size.div_ceil(p) <= MAX_PARTS, "{size}: {p}");
            assert_eq!(p % (1 << 20), 0);
        }
    }
}
