//! Upstreams that misbehave. Every test checks what the client saw and that
//! the cache stayed clean (no blob, no temp file left behind).

use crate::support::*;
use http::{Method, StatusCode};
use std::sync::atomic::Ordering;
use std::time::Duration;

async fn gate_for(up: &Mock) -> Gate {
    Gate::start(&upstream_toml("local", &up.url(), true, ""), "").await
}

/// The blob GET fails on the client side: an error status or a broken body.
fn client_saw_failure(g: &Got) -> bool {
    !g.status.is_success() || g.body.is_err()
}

#[tokio::test]
async fn wrong_bytes_abort_the_response_and_cache_nothing() {
    let up = Mock::start().await;
    let real = data(700_000, 1);
    let d = up.state.add_blob(real.clone());
    let mut evil = real.to_vec();
    evil[699_999] ^= 1; // one bit, in the very last byte
    up.state
        .faults
        .lock()
        .unwrap()
        .insert(d.to_string(), Fault::WrongBytes(evil.into()));
    let g = gate_for(&up).await;
    let r = get(&g.url(&format!("/v2/r/blobs/{d}"))).await;
    assert!(
        client_saw_failure(&r),
        "client must not get a clean body of wrong bytes"
    );
    assert!(r.body.is_err(), "headers were sent, so the body must break");
    settle(&g).await;
    assert!(cached_blobs(&g).is_empty());
    assert_eq!(temp_files(&g), 0);
    assert_eq!(
        g.metric("modelgate_digest_mismatches_total{upstream=\"local\"}"),
        1.0
    );
    // The next request goes upstream again (and, fixed, succeeds).
    up.state.faults.lock().unwrap().clear();
    let r = get(&g.url(&format!("/v2/r/blobs/{d}"))).await;
    assert_eq!(r.bytes(), &real);
    assert_eq!(up.state.count("GET", "/blobs/"), 2);
    g.stop().await;
}

#[tokio::test]
async fn truncated_chunked_body_is_a_failure() {
    let up = Mock::start().await;
    let d = up
        .state
        .add_faulty_blob(data(500_000, 2), Fault::ShortChunked(200_000));
    let g = gate_for(&up).await;
    let r = get(&g.url(&format!("/v2/r/blobs/{d}"))).await;
    assert!(r.body.is_err(), "a short body must not look complete");
    settle(&g).await;
    assert!(cached_blobs(&g).is_empty());
    assert_eq!(temp_files(&g), 0);
    assert_eq!(
        g.metric("modelgate_digest_mismatches_total{upstream=\"local\"}"),
        1.0
    );
    g.stop().await;
}

#[tokio::test]
async fn connection_dropped_mid_blob() {
    let up = Mock::start().await;
    let d = up
        .state
        .add_faulty_blob(data(900_000, 3), Fault::DropAfter(300_000));
    let g = gate_for(&up).await;
    let r = get(&g.url(&format!("/v2/r/blobs/{d}"))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.is_err());
    settle(&g).await;
    assert!(cached_blobs(&g).is_empty());
    assert_eq!(temp_files(&g), 0);
    g.stop().await;
}

#[tokio::test]
async fn slow_drip_still_arrives_whole() {
    let up = Mock::start().await;
    let blob = data(200_000, 4);
    let d = up.state.add_faulty_blob(
        blob.clone(),
        Fault::Drip {
            chunk: 10_000,
            delay: Duration::from_millis(15),
        },
    );
    let g = gate_for(&up).await;
    let r = get(&g.url(&format!("/v2/r/blobs/{d}"))).await;
    assert_eq!(r.bytes(), &blob);
    settle(&g).await;
    assert_eq!(cached_blobs(&g), vec![d.hex().to_string()]);
    g.stop().await;
}

#[tokio::test]
async fn stalled_upstream_is_abandoned_after_idle_timeout() {
    let up = Mock::start().await;
    let d = up
        .state
        .add_faulty_blob(data(600_000, 5), Fault::StallAfter(100_000));
    let g = gate_for(&up).await; // idle_timeout = 2s
    let started = std::time::Instant::now();
    let r = get(&g.url(&format!("/v2/r/blobs/{d}"))).await;
    assert!(r.body.is_err());
    assert!(started.elapsed() < Duration::from_secs(30));
    settle(&g).await;
    assert!(cached_blobs(&g).is_empty());
    assert_eq!(temp_files(&g), 0);
    g.stop().await;
}

#[tokio::test]
async fn bearer_token_dance_and_token_cache() {
    let up = Mock::start().await;
    *up.state.auth.lock().unwrap() = Auth::Bearer;
    let (_, _, ls) = up
        .state
        .add_image("m/x", "v1", &[data(1000, 1), data(2000, 2)]);
    let g = gate_for(&up).await;
    assert_eq!(
        get(&g.url("/v2/m/x/manifests/v1")).await.status,
        StatusCode::OK
    );
    for l in &ls {
        assert_eq!(
            get(&g.url(&format!("/v2/m/x/blobs/{l}"))).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(
        up.state.tokens_issued.load(Ordering::SeqCst),
        1,
        "one token, cached for its scope"
    );
    let seen = up.state.seen();
    let token_req = seen.iter().find(|s| s.path == "/token").unwrap();
    let q = token_req.query.clone().unwrap();
    assert!(
        q.contains("service=mock") && q.contains("scope=repository%3Am%2Fx%3Apull"),
        "{q}"
    );
    assert!(
        token_req.authorization.is_none(),
        "anonymous token request without credentials"
    );
    g.stop().await;
}

#[tokio::test]
async fn bearer_with_credentials_and_bad_credentials() {
    let up = Mock::start().await;
    *up.state.auth.lock().unwrap() = Auth::Basic {
        user: "bot".into(),
        pass: "s3cret".into(),
    };
    up.state.add_image("m/x", "v1", &[data(10, 1)]);
    // Basic upstream, right credentials.
    let g = Gate::start(
        &upstream_toml(
            "local",
            &up.url(),
            true,
            "username = \"bot\"\npassword = \"s3cret\"",
        ),
        "",
    )
    .await;
    assert_eq!(
        get(&g.url("/v2/m/x/manifests/v1")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&g.url("/v2/m/x/manifests/v1?x=1")).await.status,
        StatusCode::OK
    );
    g.stop().await;
    // Wrong credentials: a clear error, not a 401 the client would answer.
    let g = Gate::start(
        &upstream_toml(
            "local",
            &up.url(),
            true,
            "username = \"bot\"\npassword = \"wrong\"",
        ),
        "",
    )
    .await;
    let r = get(&g.url(&format!(
        "/v2/m/x/manifests/{}",
        modelgate::oci::Digest::of(b"zz")
    )))
    .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.code(), "UNAUTHORIZED");
    assert!(
        r.message().contains("rejected") || r.message().contains("password"),
        "{}",
        r.message()
    );
    g.stop().await;
    // No credentials at all.
    let g = gate_for(&up).await;
    let r = get(&g.url("/v2/m/x/manifests/v2")).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(r.message().contains("password_env"), "{}", r.message());
    g.stop().await;
}

#[tokio::test]
async fn redirect_to_storage_drops_authorization() {
    let up = Mock::start().await;
    let storage = Mock::start().await;
    *up.state.auth.lock().unwrap() = Auth::Bearer;
    let blob = data(123_456, 7);
    let d = up.state.add_blob(blob.clone());
    storage.state.add_blob(blob.clone());
    *up.state.redirect_blobs_to.lock().unwrap() = Some(storage.url());
    let g = gate_for(&up).await;
    let r = get(&g.url(&format!("/v2/m/x/blobs/{d}"))).await;
    assert_eq!(r.bytes(), &blob);
    let seen = storage.state.seen();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].authorization.is_none(),
        "the token must not reach another host"
    );
    // ...while the registry itself got the token.
    assert!(up
        .state
        .seen()
        .iter()
        .any(|s| s.authorization.as_deref() == Some("Bearer tok-123")));
    g.stop().await;
}

#[tokio::test]
async fn concurrent_cold_requests_share_one_download_and_stream_early() {
    let up = Mock::start().await;
    let blob = data(1_000_000, 8);
    let total = blob.len() as u64;
    let d = up.state.add_faulty_blob(
        blob.clone(),
        Fault::Drip {
            chunk: 32_768,
            delay: Duration::from_millis(25),
        },
    );
    let g = gate_for(&up).await;
    let url = g.url(&format!("/v2/r/blobs/{d}"));
    // A follower that records how much the upstream had sent when its first
    // body bytes arrived.
    let state = up.state.clone();
    let first_frame_at = {
        let leader_url = url.clone();
        let leader = tokio::spawn(async move { get(&leader_url).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let resp = client().get(url.parse().unwrap()).await.unwrap();
        use http_body_util::BodyExt;
        let mut body = resp.into_body();
        let mut got = Vec::new();
        let mut first = None;
        while let Some(f) = body.frame().await {
            let f = f.unwrap();
            if let Ok(d) = f.into_data() {
                if first.is_none() {
                    first = Some(state.sent.load(Ordering::SeqCst));
                }
                got.extend_from_slice(&d);
            }
        }
        assert_eq!(got, blob.to_vec());
        assert_eq!(leader.await.unwrap().bytes(), &blob);
        first.unwrap()
    };
    assert!(
        first_frame_at < total,
        "follower got bytes when the upstream had sent {first_frame_at} of {total}"
    );
    // Six more at once.
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move { get(&url).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().bytes(), &blob);
    }
    assert_eq!(
        up.state.count("GET", "/blobs/"),
        1,
        "exactly one upstream GET"
    );
    assert_eq!(g.metric("modelgate_upstream_fetches_coalesced_total"), 1.0);
    g.stop().await;
}

#[tokio::test]
async fn many_followers_coalesce() {
    let up = Mock::start().await;
    let blob = data(300_000, 9);
    let d = up.state.add_faulty_blob(
        blob.clone(),
        Fault::Drip {
            chunk: 30_000,
            delay: Duration::from_millis(30),
        },
    );
    let g = gate_for(&up).await;
    let url = g.url(&format!("/v2/r/blobs/{d}"));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let u = url.clone();
            tokio::spawn(async move { get(&u).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().bytes(), &blob);
    }
    assert_eq!(up.state.count("GET", "/blobs/"), 1);
    assert_eq!(g.metric("modelgate_upstream_fetches_coalesced_total"), 7.0);
    g.stop().await;
}

#[tokio::test]
async fn manifest_lies_are_refused() {
    let up = Mock::start().await;
    let (md, ..) = up.state.add_image("m/x", "v1", &[data(10, 1)]);
    up.state.lie_manifest_digest.store(true, Ordering::SeqCst);
    let g = gate_for(&up).await;
    let r = get(&g.url("/v2/m/x/manifests/v1")).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.code(), "DIGEST_INVALID");
    assert!(g.app.registry().store().size_of(&md).is_none());
    assert_eq!(
        g.metric("modelgate_digest_mismatches_total{upstream=\"local\"}"),
        1.0
    );
    // By digest, with bytes that hash to something else.
    up.state.lie_manifest_digest.store(false, Ordering::SeqCst);
    let fake = modelgate::oci::Digest::of(b"other");
    up.state
        .copy_manifest("m/x", &md.to_string(), "m/x", &fake.to_string());
    let r = get(&g.url(&format!("/v2/m/x/manifests/{fake}"))).await;
    assert_eq!(r.code(), "DIGEST_INVALID");
    assert!(g.app.registry().store().size_of(&fake).is_none());
    g.stop().await;
}

#[tokio::test]
async fn oversized_manifest_is_refused() {
    let up = Mock::start().await;
    let big = format!(
        r#"{{"schemaVersion":2,"annotations":{{"pad":"{}"}}}}"#,
        "x".repeat(4 * 1024 * 1024 + 10)
    );
    up.state.add_manifest(
        "m/x",
        Some("big"),
        big,
        "application/vnd.oci.image.manifest.v1+json",
    );
    let g = gate_for(&up).await;
    let r = get(&g.url("/v2/m/x/manifests/big")).await;
    assert_eq!(r.code(), "MANIFEST_INVALID");
    assert!(r.message().contains("larger than"), "{}", r.message());
    settle(&g).await;
    assert!(cached_blobs(&g).is_empty());
    g.stop().await;
}

#[tokio::test]
async fn head_of_cold_blob_asks_upstream_without_downloading() {
    let up = Mock::start().await;
    let d = up.state.add_blob(data(50_000, 1));
    let g = gate_for(&up).await;
    let r = send(Method::HEAD, &g.url(&format!("/v2/r/blobs/{d}")), &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-length"), Some("50000"));
    assert_eq!(
        r.header("docker-content-digest"),
        Some(d.to_string().as_str())
    );
    assert_eq!(up.state.count("GET", "/blobs/"), 0);
    g.stop().await;
}

#[tokio::test]
async fn upstream_5xx_and_unreachable_are_clear_errors() {
    let up = Mock::start().await;
    let d = up.state.add_blob(data(10, 1));
    up.state.down.store(true, Ordering::SeqCst);
    let g = gate_for(&up).await;
    let r = get(&g.url(&format!("/v2/r/blobs/{d}"))).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.code(), "UNAVAILABLE");
    assert!(
        r.message().contains("upstream local answered 503"),
        "{}",
        r.message()
    );
    g.stop().await;
    let g = Gate::start(&upstream_toml("gone", "http://127.0.0.1:9", true, ""), "").await;
    let r = get(&g.url(&format!("/v2/r/blobs/{d}"))).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.code(), "UNAVAILABLE");
    assert!(
        r.message().contains("upstream gone is unreachable"),
        "{}",
        r.message()
    );
    g.stop().await;
}
