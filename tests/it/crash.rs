//! Crashes survived: `kill -9` of the real binary while 20 cold pulls and 5
//! pushes are in flight, then a restart. Nothing in the cache is corrupt,
//! no temp file outlives the restart, every tag record still parses, the
//! interrupted pulls succeed when retried, and the upstream holds no tag
//! whose manifest references content it does not have.

use crate::push::with_digest;
use crate::support::*;
use bytes::Bytes;
use http::{Method, StatusCode};
use modelgate::oci::Digest;
use std::process::Command;
use std::time::Duration;

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";

/// Start `modelgate serve` on `cfg`; wait until /readyz answers.
async fn serve(cfg: &std::path::Path, admin: u16, log: &std::path::Path) -> std::process::Child {
    let mut child = spawn_logged(
        Command::new(bin()).args(["serve", "--config"]).arg(cfg),
        log,
    )
    .unwrap();
    for _ in 0..200 {
        let uri = format!("http://127.0.0.1:{admin}/readyz").parse().unwrap();
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(1), client().get(uri)).await {
            if r.status() == StatusCode::OK {
                return child;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!(
        "modelgate did not become ready: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Every file below `dir`, recursively.
fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_cold_pulls_and_pushes_loses_nothing() {
    let up = Mock::start().await;
    // Cold blobs dripped slowly, so that pulls are in flight at the kill.
    let blobs: Vec<(Digest, Bytes)> = (0..20)
        .map(|i| {
            let b = data(300_000, i as u8);
            let d = up.state.add_faulty_blob(
                b.clone(),
                Fault::Drip {
                    chunk: 16 * 1024,
                    delay: Duration::from_millis(30),
                },
            );
            (d, b)
        })
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    std::fs::write(
        tmp.path().join("policy.toml"),
        "default = \"allow\"\n[[rules]]\nname = \"all\"\nrepositories = [\"local/m\", \"local/pushed\"]\n[rules.tags]\nimmutable = true\n",
    )
    .unwrap();
    let cfg = tmp.path().join("modelgate.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\nallow_anonymous_push = true\n[policy]\nfile = \"{}\"\n[cache]\ndir = \"{}\"\n{}",
            tmp.path().join("policy.toml").display(),
            tmp.path().join("cache").display(),
            upstream_toml("local", &up.url(), true, "")
        ),
    )
    .unwrap();
    let log = tmp.path().join("log");
    let mut child = serve(&cfg, admin, &log).await;
    let base = format!("http://127.0.0.1:{port}");
    // Tag records exist before the crash: pull three tags.
    for i in 0..3u8 {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":300000}},"layers":[]}}"#,
            blobs[i as usize].0
        );
        up.state.add_manifest("m", Some(&format!("v{i}")), m, OCI);
        let r = get(&format!("{base}/v2/m/manifests/v{i}")).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    // 20 cold pulls and 5 pushes, all in flight.
    let mut tasks = Vec::new();
    for (d, _) in &blobs {
        let url = format!("{base}/v2/r/blobs/{d}");
        tasks.push(tokio::spawn(async move {
            let _ = get(&url).await;
        }));
    }
    for i in 0..5u8 {
        let base = base.clone();
        tasks.push(tokio::spawn(async move {
            let layer = data(200_000, 100 + i);
            let ld = Digest::of(&layer);
            let up_url = with_digest(&format!("{base}/v2/pushed/blobs/uploads/"), &ld);
            let r = send_body(Method::POST, &up_url, &[], layer).await;
            if r.status != StatusCode::CREATED {
                return;
            }
            let m = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{ld}","size":200000}},"layers":[]}}"#);
            let _ = send_body(
                Method::PUT,
                &format!("{base}/v2/pushed/manifests/t{i}"),
                &[("content-type", OCI)],
                m,
            )
            .await;
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&child, "KILL");
    let _ = child.wait();
    for t in tasks {
        let _ = t.await;
    }
    // What the crash left: downloads cut short, nothing corrupt.
    let cache = tmp.path().join("cache");
    let cut = files(&cache.join("tmp"));
    assert!(!cut.is_empty(), "the kill came after the downloads ended");
    let (code, out) = cache_cli("verify", &cfg);
    assert_eq!(code, Some(0), "cache verify after kill -9: {out}");
    // Restart: temp files go, tag records still parse.
    let mut child = serve(&cfg, admin, &log).await;
    let temps = files(&cache.join("tmp"));
    assert!(
        temps.is_empty(),
        "temp files outlived the restart: {temps:?}"
    );
    let records: Vec<_> = files(&cache.join("seen-tags"));
    assert!(records.len() >= 3, "{records:?}");
    for r in &records {
        let text = std::fs::read(r).unwrap();
        assert!(
            serde_json::from_slice::<serde_json::Value>(&text).is_ok(),
            "{} is damaged",
            r.display()
        );
    }
    for i in 0..3 {
        let r = get(&format!("{base}/v2/m/manifests/v{i}")).await;
        assert_eq!(r.status, StatusCode::OK, "tag v{i} after the restart");
    }
    // The interrupted pulls succeed when retried, byte for byte.
    let retries: Vec<_> = blobs
        .iter()
        .map(|(d, b)| {
            let (url, b, d) = (format!("{base}/v2/r/blobs/{d}"), b.clone(), d.clone());
            tokio::spawn(async move {
                let r = get(&url).await;
                assert_eq!(r.status, StatusCode::OK, "{d}");
                assert_eq!(r.bytes(), &b, "{d}");
            })
        })
        .collect();
    for t in retries {
        t.await.unwrap();
    }
    // The upstream has no tag whose manifest lacks its content.
    for tag in up.state.tags("pushed") {
        let r = get(&format!("{}/v2/pushed/manifests/{tag}", up.url())).await;
        let m: serde_json::Value = serde_json::from_slice(r.bytes()).unwrap();
        let cd = m["config"]["digest"].as_str().unwrap();
        let blob = get(&format!("{}/v2/pushed/blobs/{cd}", up.url())).await;
        assert_eq!(
            blob.status,
            StatusCode::OK,
            "tag {tag} names missing content"
        );
    }
    signal(&child, "TERM");
    let _ = child.wait();
    let (code, out) = cache_cli("verify", &cfg);
    assert_eq!(code, Some(0), "{out}");
}
