//! The pull API against an honest upstream: headers, caching, Range, routing,
//! tags, referrers, errors, eviction, TLS and graceful shutdown.

use crate::support::*;
use http::{Method, StatusCode};
use modelgate::oci::Digest;

#[tokio::test]
async fn manifest_and_blobs_are_served_then_cached() {
    let up = Mock::start().await;
    let layer = data(300_000, 1);
    let (md, mbytes, ls) = up
        .state
        .add_image("models/small", "v1", std::slice::from_ref(&layer));
    let g = Gate::start(&upstream_toml("local", &up.url(), true, ""), "").await;

    let base = get(&g.url("/v2/")).await;
    assert_eq!(base.status, StatusCode::OK);
    assert_eq!(
        base.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );

    let m = send(
        Method::GET,
        &g.url("/v2/models/small/manifests/v1"),
        &[("accept", "application/vnd.oci.image.manifest.v1+json")],
    )
    .await;
    assert_eq!(m.status, StatusCode::OK);
    assert_eq!(
        m.bytes(),
        &mbytes,
        "manifest bytes are passed through exactly"
    );
    assert_eq!(
        m.header("docker-content-digest"),
        Some(md.to_string().as_str())
    );
    assert_eq!(
        m.header("content-type"),
        Some("application/vnd.oci.image.manifest.v1+json")
    );
    assert_eq!(
        m.header("content-length"),
        Some(mbytes.len().to_string().as_str())
    );

    let head = send(
        Method::HEAD,
        &g.url(&format!("/v2/models/small/manifests/{md}")),
        &[],
    )
    .await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(
        head.header("content-length"),
        Some(mbytes.len().to_string().as_str())
    );
    assert!(head.bytes().is_empty());

    let url = g.url(&format!("/v2/models/small/blobs/{}", ls[0]));
    let b = get(&url).await;
    assert_eq!(b.status, StatusCode::OK);
    assert_eq!(b.bytes(), &layer);
    assert_eq!(
        b.header("docker-content-digest"),
        Some(ls[0].to_string().as_str())
    );
    assert_eq!(b.header("content-length"), Some("300000"));
    assert_eq!(up.state.count("GET", "/blobs/"), 1);

    // Second time: from the cache, no upstream request.
    let b2 = get(&url).await;
    assert_eq!(b2.bytes(), &layer);
    assert_eq!(up.state.count("GET", "/blobs/"), 1);
    let h = send(Method::HEAD, &url, &[]).await;
    assert_eq!(h.status, StatusCode::OK);
    assert_eq!(h.header("content-length"), Some("300000"));
    assert_eq!(up.state.count("HEAD", "/blobs/"), 0);
    assert_eq!(
        g.metric("modelgate_cache_requests_total{kind=\"blob\",result=\"hit\"}"),
        2.0
    );
    assert_eq!(
        g.metric("modelgate_cache_requests_total{kind=\"blob\",result=\"miss\"}"),
        1.0
    );
    assert_eq!(
        g.metric("modelgate_bytes_served_total{source=\"cache\"}"),
        300_000.0
    );
    // The commit (and the cache gauge) follows the client's last byte.
    settle(&g).await;
    assert!(g.metric("modelgate_cache_bytes") >= 300_000.0);
    assert!(cached_blobs(&g).contains(&ls[0].hex().to_string()));
    // Manifest by tag within tag_ttl: no upstream request at all.
    let before = up.state.count("GET", "/manifests/") + up.state.count("HEAD", "/manifests/");
    for _ in 0..5 {
        assert_eq!(
            get(&g.url("/v2/models/small/manifests/v1")).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(
        up.state.count("GET", "/manifests/") + up.state.count("HEAD", "/manifests/"),
        before
    );
    g.stop().await;
}

#[tokio::test]
async fn range_requests_cold_and_warm() {
    let up = Mock::start().await;
    let blob = data(5000, 2);
    let d = up.state.add_blob(blob.clone());
    let g = Gate::start(&upstream_toml("local", &up.url(), true, ""), "").await;
    let url = g.url(&format!("/v2/r/blobs/{d}"));
    // Cold: served after the whole blob verified.
    let r = send(Method::GET, &url, &[("range", "bytes=500-1499")]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.header("content-range"), Some("bytes 500-1499/5000"));
    assert_eq!(r.bytes(), &blob.slice(500..1500));
    for (range, status, want) in [
        (
            "bytes=500-",
            StatusCode::PARTIAL_CONTENT,
            Some(blob.slice(500..)),
        ),
        (
            "bytes=-500",
            StatusCode::PARTIAL_CONTENT,
            Some(blob.slice(4500..)),
        ),
        (
            "bytes=2000-9000",
            StatusCode::PARTIAL_CONTENT,
            Some(blob.slice(2000..)),
        ),
        ("bytes=500-0", StatusCode::RANGE_NOT_SATISFIABLE, None),
        ("bytes=5000-10000", StatusCode::RANGE_NOT_SATISFIABLE, None),
    ] {
        let r = send(Method::GET, &url, &[("range", range)]).await;
        assert_eq!(r.status, status, "{range}");
        match want {
            Some(w) => assert_eq!(r.bytes(), &w, "{range}"),
            None => {
                assert_eq!(r.code(), "RANGE_INVALID");
                assert_eq!(r.header("content-range"), Some("bytes */5000"));
            }
        }
    }
    assert_eq!(up.state.count("GET", "/blobs/"), 1);
    g.stop().await;
}

#[tokio::test]
async fn three_routing_forms_reach_the_right_upstream() {
    let a = Mock::start().await;
    let b = Mock::start().await;
    let (da, ..) = a.state.add_image("team/model", "v1", &[data(10, 3)]);
    let (db, ..) = b.state.add_image("team/model", "v1", &[data(10, 4)]);
    let ups = format!(
        "{}{}",
        upstream_toml("docker.io", &a.url(), true, ""),
        upstream_toml("models.internal", &b.url(), false, "")
    );
    let g = Gate::start(&ups, "").await;
    // default upstream
    let r = get(&g.url("/v2/team/model/manifests/v1")).await;
    assert_eq!(
        r.header("docker-content-digest"),
        Some(da.to_string().as_str())
    );
    // path prefix
    let r = get(&g.url("/v2/models.internal/team/model/manifests/v1")).await;
    assert_eq!(
        r.header("docker-content-digest"),
        Some(db.to_string().as_str())
    );
    // ?ns= (containerd), echoed as OCI-Namespace
    let r = get(&g.url("/v2/team/model/manifests/v1?ns=models.internal")).await;
    assert_eq!(
        r.header("docker-content-digest"),
        Some(db.to_string().as_str())
    );
    assert_eq!(r.header("oci-namespace"), Some("models.internal"));
    // unknown ns
    let r = get(&g.url("/v2/team/model/manifests/v1?ns=ghcr.io")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.code(), "NAME_UNKNOWN");
    assert!(r.message().contains("ghcr.io"), "{}", r.message());
    // tags are remembered per canonical name: the two upstreams do not mix
    assert!(g
        .dir
        .join("cache/tags/docker.io/team/model/v1.json")
        .exists());
    assert!(g
        .dir
        .join("cache/tags/models.internal/team/model/v1.json")
        .exists());
    g.stop().await;
}

#[tokio::test]
async fn bad_input_gets_oci_errors() {
    let up = Mock::start().await;
    // Read-only (the default): a DELETE is refused as unsupported.
    let g = Gate::start_server(&up.url(), "").await;
    let missing = Digest::of(b"nope");
    let cases = [
        (
            format!("/v2/r/blobs/{missing}"),
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
        ),
        (
            "/v2/r/manifests/nope".to_string(),
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
        ),
        (
            "/v2/Bad/manifests/x".to_string(),
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            "/v2/a/../b/manifests/x".to_string(),
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            "/v2/r/blobs/sha256:123".to_string(),
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            "/v2/r/blobs/md5:abc".to_string(),
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            "/v2/r/manifests/.bad".to_string(),
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
        ),
        ("/nothing".to_string(), StatusCode::NOT_FOUND, "UNSUPPORTED"),
    ];
    for (path, status, code) in cases {
        let r = get(&g.url(&path)).await;
        assert_eq!(r.status, status, "{path}");
        assert_eq!(r.header("content-type"), Some("application/json"), "{path}");
        assert_eq!(r.code(), code, "{path}: {:?}", r.body);
        assert!(!r.message().is_empty(), "{path}");
    }
    let r = send(Method::DELETE, &g.url("/v2/r/manifests/x"), &[]).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.code(), "UNSUPPORTED");
    g.stop().await;
}

#[tokio::test]
async fn tags_list_passes_paging_and_rewrites_link() {
    let up = Mock::start().await;
    for t in ["a", "b", "c"] {
        up.state.add_image("docs/x", t, &[data(5, 9)]);
    }
    *up.state.tags_link.lock().unwrap() = Some(format!(
        "<{}/v2/docs/x/tags/list?n=2&last=b>; rel=\"next\"",
        up.url()
    ));
    let ups = upstream_toml("reg.example", &up.url(), false, "");
    let g = Gate::start(&ups, "").await;
    let r = get(&g.url("/v2/reg.example/docs/x/tags/list?n=2&last=a")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["tags"], serde_json::json!(["a", "b", "c"]));
    assert_eq!(
        r.header("link"),
        Some("</v2/reg.example/docs/x/tags/list?n=2&last=b>; rel=\"next\"")
    );
    let seen = up.state.seen();
    let q = seen
        .iter()
        .find(|s| s.path.ends_with("tags/list"))
        .unwrap()
        .query
        .clone()
        .unwrap();
    assert!(q.contains("n=2") && q.contains("last=a"), "{q}");
    g.stop().await;
}

fn referrer(subject: &Digest, subject_size: usize, artifact_type: &str) -> String {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"{artifact_type}","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2}},"layers":[],"subject":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{subject}","size":{subject_size}}}}}"#
    )
}

#[tokio::test]
async fn referrers_from_api_from_tag_schema_or_empty() {
    const SIG: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
    const BUNDLE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
    // Upstream without a referrers API, with the sha256-<hex> fallback tag.
    let up = Mock::start().await;
    let (md, mbytes, _) = up.state.add_image("m/x", "v1", &[data(5, 1)]);
    let r1 = up.state.add_manifest(
        "m/x",
        None,
        referrer(&md, mbytes.len(), SIG),
        "application/vnd.oci.image.manifest.v1+json",
    );
    let r2 = up.state.add_manifest(
        "m/x",
        None,
        referrer(&md, mbytes.len(), BUNDLE),
        "application/vnd.oci.image.manifest.v1+json",
    );
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{r1}","size":1,"artifactType":"{SIG}"}},{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{r2}","size":1,"artifactType":"{BUNDLE}"}}]}}"#
    );
    up.state.add_manifest(
        "m/x",
        Some(&md.tag_schema()),
        index,
        "application/vnd.oci.image.index.v1+json",
    );
    let g = Gate::start(&upstream_toml("local", &up.url(), true, ""), "").await;
    let r = get(&g.url(&format!("/v2/m/x/referrers/{md}"))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.oci.image.index.v1+json")
    );
    assert_eq!(r.json()["manifests"].as_array().unwrap().len(), 2);
    let r = get(&g.url(&format!(
        "/v2/m/x/referrers/{md}?artifactType={}",
        BUNDLE.replace('+', "%2B")
    )))
    .await;
    assert_eq!(r.json()["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(r.json()["manifests"][0]["digest"], r2.to_string());
    assert_eq!(r.header("oci-filters-applied"), Some("artifactType"));
    // Nothing refers to the config digest: an empty index, not a 404.
    let other = Digest::of(b"unreferenced");
    let r = get(&g.url(&format!("/v2/m/x/referrers/{other}"))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["manifests"], serde_json::json!([]));
    g.stop().await;

    // Upstream with a referrers API.
    let up = Mock::start().await;
    up.state
        .referrers_api
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (md, mbytes, _) = up.state.add_image("m/x", "v1", &[data(5, 1)]);
    up.state.add_manifest(
        "m/x",
        None,
        referrer(&md, mbytes.len(), SIG),
        "application/vnd.oci.image.manifest.v1+json",
    );
    let g = Gate::start(&upstream_toml("local", &up.url(), true, ""), "").await;
    let r = get(&g.url(&format!("/v2/m/x/referrers/{md}"))).await;
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.oci.image.index.v1+json")
    );
    assert_eq!(r.json()["manifests"][0]["artifactType"], SIG);
    assert_eq!(
        up.state.count("GET", &md.tag_schema()),
        0,
        "no fallback when the API answers"
    );
    g.stop().await;
}

#[tokio::test]
async fn cache_stays_under_max_bytes() {
    let up = Mock::start().await;
    let ds: Vec<Digest> = (0..4)
        .map(|i| up.state.add_blob(data(100_000, i)))
        .collect();
    let g = Gate::start(
        &upstream_toml("local", &up.url(), true, ""),
        "max_bytes = \"250000\"",
    )
    .await;
    for d in &ds {
        assert_eq!(
            get(&g.url(&format!("/v2/r/blobs/{d}"))).await.status,
            StatusCode::OK
        );
    }
    settle(&g).await;
    assert!(g.app.registry().store().total_bytes() <= 250_000);
    settle(&g).await;
    assert_eq!(cached_blobs(&g).len(), 2);
    // The most recent ones stayed.
    assert!(
        g.app.registry().store().size_of(&ds[3]).is_some()
            && g.app.registry().store().size_of(&ds[0]).is_none()
    );
    assert!(g.metric("modelgate_cache_bytes") <= 250_000.0);
    assert_eq!(g.metric("modelgate_cache_evictions_total"), 2.0);
    g.stop().await;
}

#[tokio::test]
async fn upstream_down_serves_last_known_tag_across_restart() {
    let up = Mock::start().await;
    let (md, mbytes, ls) = up.state.add_image("m/x", "v1", &[data(1000, 1)]);
    let tmp = tempfile::tempdir().unwrap();
    let ups = upstream_toml("local", &up.url(), true, "");
    let g = Gate::start_in(tmp.path(), &ups, "tag_ttl = \"1s\"", None).await;
    assert_eq!(
        get(&g.url("/v2/m/x/manifests/v1")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&g.url(&format!("/v2/m/x/blobs/{}", ls[0])))
            .await
            .status,
        StatusCode::OK
    );
    g.stop().await;
    drop(up); // the upstream is gone: connections are refused

    let g = Gate::start_in(tmp.path(), &ups, "tag_ttl = \"1s\"", None).await;
    let r = get(&g.url("/v2/m/x/manifests/v1")).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.bytes(), &mbytes);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(md.to_string().as_str())
    );
    assert_eq!(
        get(&g.url(&format!("/v2/m/x/blobs/{}", ls[0])))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        g.metric("modelgate_stale_served_total{upstream=\"local\"}"),
        1.0
    );
    // Something never seen cannot be served: a clear 503.
    let r = get(&g.url("/v2/m/x/manifests/v2")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.code(), "UNAVAILABLE");
    assert!(r.message().contains("unreachable"), "{}", r.message());
    g.stop().await;
}

#[tokio::test]
async fn stale_tags_are_revalidated_with_head_and_follow_moves() {
    let up = Mock::start().await;
    let (d1, ..) = up.state.add_image("m/x", "v1", &[data(10, 1)]);
    let g = Gate::start(
        &upstream_toml("local", &up.url(), true, ""),
        "tag_ttl = \"300ms\"",
    )
    .await;
    assert_eq!(
        get(&g.url("/v2/m/x/manifests/v1"))
            .await
            .header("docker-content-digest"),
        Some(d1.to_string().as_str())
    );
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(
        get(&g.url("/v2/m/x/manifests/v1"))
            .await
            .header("docker-content-digest"),
        Some(d1.to_string().as_str())
    );
    assert_eq!(
        up.state.count("HEAD", "/manifests/v1"),
        1,
        "revalidated with one HEAD"
    );
    assert_eq!(
        up.state.count("GET", "/manifests/v1"),
        1,
        "and no second GET"
    );
    // The tag moves upstream.
    let (d2, ..) = up.state.add_image("m/x", "v1", &[data(10, 2)]);
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(
        get(&g.url("/v2/m/x/manifests/v1"))
            .await
            .header("docker-content-digest"),
        Some(d2.to_string().as_str())
    );
    // Upstream answers 503: the last known mapping is served.
    up.state
        .down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let r = get(&g.url("/v2/m/x/manifests/v1")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(d2.to_string().as_str())
    );
    assert_eq!(
        g.metric("modelgate_stale_served_total{upstream=\"local\"}"),
        1.0
    );
    g.stop().await;
}

#[tokio::test]
async fn accept_negotiation_passes_the_clients_accept() {
    let up = Mock::start().await;
    let docker = r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;
    let d = up.state.add_manifest(
        "d/x",
        Some("v1"),
        docker,
        "application/vnd.docker.distribution.manifest.v2+json",
    );
    let g = Gate::start(&upstream_toml("local", &up.url(), true, ""), "").await;
    let r = send(
        Method::GET,
        &g.url("/v2/d/x/manifests/v1"),
        &[
            (
                "accept",
                "application/vnd.docker.distribution.manifest.v2+json",
            ),
            ("accept", "application/vnd.oci.image.index.v1+json"),
        ],
    )
    .await;
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.docker.distribution.manifest.v2+json")
    );
    assert_eq!(
        r.header("docker-content-digest"),
        Some(d.to_string().as_str())
    );
    // Both Accept lines reached the upstream.
    let seen = up.state.seen();
    let accept = seen
        .iter()
        .find(|s| s.path.ends_with("manifests/v1"))
        .and_then(|s| s.accept.clone())
        .unwrap();
    assert!(
        accept.contains("application/vnd.docker.distribution.manifest.v2+json")
            && accept.contains("application/vnd.oci.image.index.v1+json"),
        "{accept}"
    );
    g.stop().await;
}

#[tokio::test]
async fn tls_listener_serves_the_api() {
    let up = Mock::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = tmp.path().join("c.pem");
    let key = tmp.path().join("k.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let acceptor = modelgate::server::tls_acceptor(&cert, &key).unwrap();
    let g = Gate::start_in(
        tmp.path(),
        &upstream_toml("local", &up.url(), true, ""),
        "",
        Some(acceptor),
    )
    .await;
    // A client that trusts only that certificate.
    let cfg = modelgate::upstream::client::tls_client_config(Some(&cert)).unwrap();
    let conn = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(cfg)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(conn);
    let resp = client
        .get(
            format!("https://localhost:{}/v2/", g.addr.port())
                .parse()
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()
            .get("docker-distribution-api-version")
            .unwrap(),
        "registry/2.0"
    );
    g.stop().await;
}

#[tokio::test]
async fn admin_endpoints() {
    let up = Mock::start().await;
    let g = Gate::start(&upstream_toml("local", &up.url(), true, ""), "").await;
    let _ = get(&g.url("/v2/")).await;
    let m = get(&format!("http://{}/metrics", g.admin)).await;
    assert_eq!(m.status, StatusCode::OK);
    let text = String::from_utf8(m.bytes().to_vec()).unwrap();
    assert!(
        text.contains(
            "modelgate_http_requests_total{method=\"GET\",endpoint=\"base\",code=\"200\"} 1"
        ),
        "{text}"
    );
    assert!(text.contains("modelgate_http_request_duration_seconds_bucket"));
    assert_eq!(
        get(&format!("http://{}/healthz", g.admin)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&format!("http://{}/readyz", g.admin)).await.status,
        StatusCode::OK
    );
    g.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_a_download_in_flight() {
    let up = Mock::start().await;
    let blob = data(400_000, 5);
    let d = up.state.add_faulty_blob(
        blob.clone(),
        Fault::Drip {
            chunk: 50_000,
            delay: std::time::Duration::from_millis(60),
        },
    );
    let mut g = Gate::start(&upstream_toml("local", &up.url(), true, ""), "").await;
    let url = g.url(&format!("/v2/r/blobs/{d}"));
    let pull = tokio::spawn(async move { get(&url).await });
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let task = g.trigger_stop().unwrap();
    let got = pull.await.unwrap();
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.bytes(), &blob);
    tokio::time::timeout(std::time::Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
    // Stopped: new connections are refused.
    assert!(tokio::net::TcpStream::connect(g.addr).await.is_err());
}
