//! The soak client of `benches/soak.sh`: seeds an upstream registry, then
//! drives modelgate with N concurrent clients for D seconds, mixing manifest
//! GETs by tag and by digest, warm blob GETs, Range GETs, cold blobs (each
//! fetched once) and pulls the policy denies. Every answer is checked
//! (status, and bytes for blobs); it prints the counts, latency
//! percentiles, and modelgate's RSS and open file descriptors after warm-up
//! and at the end.
//!
//!   soak seed UPSTREAM_URL COLD_BLOBS
//!   soak run MODELGATE_URL PID CLIENTS SECONDS COLD_BLOBS

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest as _, Sha256};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What one request is: its name, URL, headers, and what a right answer is.
type Request = (
    &'static str,
    String,
    Vec<(&'static str, &'static str)>,
    Box<dyn Fn(u16, &Bytes) -> bool + Send>,
);

type Http = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";

fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// Deterministic bytes for blob `i`.
fn blob(i: usize, len: usize) -> Bytes {
    let mut h = Sha256::digest(format!("soak blob {i}").as_bytes()).to_vec();
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        out.extend_from_slice(&h);
        h = Sha256::digest(&h).to_vec();
    }
    out.truncate(len);
    Bytes::from(out)
}

async fn send(
    c: &Http,
    method: http::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<(u16, Bytes), String> {
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
    let resp = c.request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

/// The image of the soak: `soak/model:v1` (3 layers of 1 MiB) and
/// `denied/model:v1`; `soak/cold` holds the cold blobs.
async fn seed(base: &str, cold: usize) {
    use modelgate::commands::remote::{registry_client, Connection, Remote};
    let host = base.trim_start_matches("http://");
    let conn = Connection {
        plain_http: true,
        ..Default::default()
    };
    for repo in ["soak/model", "denied/model", "soak/cold"] {
        let image = modelgate::oci::ImageRef::parse(&format!("{host}/{repo}")).unwrap();
        let up = registry_client(&image, &conn).unwrap();
        let r = Remote::new(&up, &image);
        if repo == "soak/cold" {
            for i in 0..cold {
                r.put_blob(&blob(1000 + i, 64 * 1024)).await.unwrap();
            }
            continue;
        }
        let mut layers = Vec::new();
        for i in 0..3 {
            let d = r.put_blob(&blob(i, 1 << 20)).await.unwrap();
            layers.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d.to_string(), "size": 1 << 20}));
        }
        let config = br#"{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let cd = r.put_blob(config).await.unwrap();
        let m = serde_json::json!({"schemaVersion": 2, "mediaType": OCI,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": config.len()},
            "layers": layers});
        r.put_manifest("v1", m.to_string().as_bytes(), OCI, None)
            .await
            .unwrap();
    }
    println!("seeded: 2 images, {cold} cold blobs");
}

/// RSS (kB) and open descriptors of `pid`.
fn usage(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (rss, fds)
}

#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    denied: AtomicUsize,
    unexpected: AtomicUsize,
    errors: Mutex<Vec<String>>,
    latencies: Mutex<Vec<Duration>>,
}

async fn run(base: String, pid: u32, clients: usize, seconds: u64, cold: usize) {
    let c: Http = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(clients)
        .build_http();
    let (s, m) = send(
        &c,
        http::Method::GET,
        &format!("{base}/v2/soak/model/manifests/v1"),
        &[("accept", OCI)],
        Bytes::new(),
    )
    .await
    .expect("modelgate answers");
    assert_eq!(s, 200, "warm-up: {}", String::from_utf8_lossy(&m));
    let manifest_digest = digest(&m);
    let layers: Vec<(String, Bytes)> = (0..3)
        .map(|i| (digest(&blob(i, 1 << 20)), blob(i, 1 << 20)))
        .collect();
    for (d, _) in &layers {
        let _ = send(
            &c,
            http::Method::GET,
            &format!("{base}/v2/soak/model/blobs/{d}"),
            &[],
            Bytes::new(),
        )
        .await;
    }
    let before = usage(pid);
    let tally = Arc::new(Tally::default());
    let next_cold = Arc::new(AtomicUsize::new(0));
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for w in 0..clients {
        let (c, base, tally, next_cold, layers, md) = (
            c.clone(),
            base.clone(),
            tally.clone(),
            next_cold.clone(),
            layers.clone(),
            manifest_digest.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while Instant::now() < end {
                i += 1;
                let t0 = Instant::now();
                let (what, url, headers, check): Request = match i % 6 {
                    0 => (
                        "manifest by tag",
                        format!("{base}/v2/soak/model/manifests/v1"),
                        vec![("accept", OCI)],
                        Box::new(|s, _| s == 200),
                    ),
                    1 => (
                        "manifest by digest",
                        format!("{base}/v2/soak/model/manifests/{md}"),
                        vec![("accept", OCI)],
                        Box::new(|s, _| s == 200),
                    ),
                    2 => {
                        let (d, b) = layers[i % 3].clone();
                        (
                            "warm blob",
                            format!("{base}/v2/soak/model/blobs/{d}"),
                            vec![],
                            Box::new(move |s, body| s == 200 && *body == b),
                        )
                    }
                    3 => {
                        let (d, b) = layers[i % 3].clone();
                        (
                            "range",
                            format!("{base}/v2/soak/model/blobs/{d}"),
                            vec![("range", "bytes=1000-1999")],
                            Box::new(move |s, body| s == 206 && body[..] == b[1000..2000]),
                        )
                    }
                    4 => {
                        let n = next_cold.fetch_add(1, Ordering::Relaxed);
                        if n >= cold {
                            continue;
                        }
                        let b = blob(1000 + n, 64 * 1024);
                        (
                            "cold blob",
                            format!("{base}/v2/soak/cold/blobs/{}", digest(&b)),
                            vec![],
                            Box::new(move |s, body| s == 200 && *body == b),
                        )
                    }
                    _ => (
                        "denied pull",
                        format!("{base}/v2/denied/model/manifests/v1"),
                        vec![("accept", OCI)],
                        Box::new(|s, _| s == 403),
                    ),
                };
                let r = send(&c, http::Method::GET, &url, &headers, Bytes::new()).await;
                let dt = t0.elapsed();
                match r {
                    Ok((s, body)) if check(s, &body) => {
                        let counter = if s == 403 { &tally.denied } else { &tally.ok };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        tally.unexpected.fetch_add(1, Ordering::Relaxed);
                        let mut e = tally.errors.lock().unwrap();
                        if e.len() < 10 {
                            e.push(format!("{what}: {:?}", other.map(|(s, b)| (s, b.len()))));
                        }
                    }
                }
                tally.latencies.lock().unwrap().push(dt);
            }
        }));
    }
    // Steady state: a fifth into the run, under full load.
    tokio::time::sleep(Duration::from_secs(seconds / 5)).await;
    let steady = usage(pid);
    for t in tasks {
        let _ = t.await;
    }
    let loaded_end = usage(pid);
    // Close the clients' connections; let downloads settle.
    drop(c);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = usage(pid);
    let mut lat = std::mem::take(&mut *tally.latencies.lock().unwrap());
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or_default()
    };
    let total = lat.len();
    println!(
        "clients {clients}, {seconds} s: {total} requests ({:.0}/s)",
        total as f64 / seconds as f64
    );
    println!(
        "  ok {}  denied as expected {}  unexpected {}",
        tally.ok.load(Ordering::Relaxed),
        tally.denied.load(Ordering::Relaxed),
        tally.unexpected.load(Ordering::Relaxed)
    );
    for e in tally.errors.lock().unwrap().iter() {
        println!("  unexpected: {e}");
    }
    println!(
        "  latency p50 {:?}  p99 {:?}  max {:?}",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    println!(
        "  modelgate RSS kB: warm {} / steady {} / end of load {} / idle after {}",
        before.0, steady.0, loaded_end.0, after.0
    );
    println!(
        "  modelgate open fds: warm {} / steady {} / end of load {} / idle after {}",
        before.1, steady.1, loaded_end.1, after.1
    );
    println!(
        "  cold blobs fetched {}",
        next_cold.load(Ordering::Relaxed).min(cold)
    );
    if tally.unexpected.load(Ordering::Relaxed) > 0 {
        std::process::exit(1);
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| {
        args.get(i)
            .and_then(|s| s.parse::<usize>().ok())
            .expect("a number")
    };
    match args.first().map(String::as_str) {
        Some("seed") => seed(&args[1], num(2)).await,
        Some("run") => {
            run(
                args[1].clone(),
                num(2) as u32,
                num(3),
                num(4) as u64,
                num(5),
            )
            .await
        }
        _ => {
            eprintln!("usage: soak seed UPSTREAM_URL COLD_BLOBS | soak run MODELGATE_URL PID CLIENTS SECONDS COLD_BLOBS");
            std::process::exit(2)
        }
    }
}
