//! The hash-and-forward path: what a cold blob costs inside modelgate
//! (SHA-256 of every byte + write to the cache temp file + verify + commit),
//! next to raw sha2 over the same buffers, which is the ceiling.
//!
//! `cargo bench --bench hash_forward`

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures_util::stream;
use http_body_util::StreamBody;
use hyper::body::Frame;
use modelgate::cache::download::Download;
use modelgate::cache::BlobStore;
use modelgate::cache::FetchState;
use modelgate::metrics::Metrics;
use modelgate::oci::{Digest, Sha256Hasher};
use sha2::Digest as _;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

const TOTAL: usize = 64 * 1024 * 1024;

fn frames(frame: usize) -> Vec<Bytes> {
    let mut x: u64 = 0x243f6a8885a308d3;
    let data: Vec<u8> = (0..TOTAL)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let data = Bytes::from(data);
    (0..TOTAL)
        .step_by(frame)
        .map(|i| data.slice(i..(i + frame).min(TOTAL)))
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("hash_forward");
    g.throughput(Throughput::Bytes(TOTAL as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // 16 KiB is what hyper typically yields per frame off a socket; 256 KiB
    // is modelgate's chunk size.
    for frame in [16 * 1024, 256 * 1024] {
        let fs = frames(frame);
        let whole: Vec<u8> = fs.iter().flat_map(|b| b.iter().copied()).collect();
        let digest = Digest::of(&whole);
        g.bench_with_input(BenchmarkId::new("raw_sha2", frame), &fs, |b, fs| {
            b.iter(|| {
                let mut h = sha2::Sha256::new();
                for f in fs {
                    h.update(f);
                }
                h.finalize()
            })
        });
        g.bench_with_input(BenchmarkId::new("sha256_hasher", frame), &fs, |b, fs| {
            b.iter(|| {
                let mut h = Sha256Hasher::new();
                for f in fs {
                    h.update(f);
                }
                h.finish()
            })
        });
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(BlobStore::open(dir.path(), u64::MAX).unwrap());
        let metrics = Arc::new(Metrics::new());
        g.bench_with_input(
            BenchmarkId::new("download_pipeline", frame),
            &fs,
            |b, fs| {
                b.iter(|| {
                    rt.block_on(async {
                        let body = StreamBody::new(stream::iter(
                            fs.iter()
                                .cloned()
                                .map(|f| Ok::<_, Infallible>(Frame::data(f))),
                        ));
                        let (tx, rx) = tokio::sync::watch::channel(FetchState::Connecting);
                        let dl = Download {
                            store: store.clone(),
                            metrics: metrics.clone(),
                            digest: digest.clone(),
                            upstream: "bench".into(),
                            idle_timeout: Duration::from_secs(10),
                            min_free: 0,
                        };
                        dl.run(tx, Some(TOTAL as u64), body, None).await;
                        assert!(matches!(&*rx.borrow(), FetchState::Done { .. }));
                        // Remove it so the next iteration downloads again.
                        store.evict_to(0);
                    })
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
