//! Pushing through modelgate: every upload form and failure, manifest PUT
//! validation, authentication, and the policy on push.

use crate::policy::gate_with_policy;
use crate::support::*;
use bytes::Bytes;
use http::{Method, StatusCode};
use modelgate::oci::Digest;
use std::sync::atomic::Ordering;

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";

fn loc(g: &Gate, r: &Got) -> String {
    let l = r.header("location").expect("Location");
    assert!(l.starts_with("/v2/"), "Location {l} points at modelgate");
    g.url(l)
}

pub fn with_digest(url: &str, d: &Digest) -> String {
    format!(
        "{url}{}digest={d}",
        if url.contains('?') { '&' } else { '?' }
    )
}

#[tokio::test]
async fn chunked_monolithic_and_single_put_uploads() {
    let up = Mock::start().await;
    let g = Gate::start(&upstream_toml("local", &up.url(), true, ""), "").await;
    let blob = data(20_000, 1);
    let d = Digest::of(&blob);
    // Chunked, with both Content-Range spellings.
    let r = send(Method::POST, &g.url("/v2/team/x/blobs/uploads/"), &[]).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert!(r.header("docker-upload-uuid").is_some());
    let u = loc(&g, &r);
    let r = send_body(
        Method::PATCH,
        &u,
        &[
            ("content-range", "0-9999"),
            ("content-type", "application/octet-stream"),
        ],
        blob.slice(..10_000),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    assert_eq!(r.header("range"), Some("0-9999"));
    let u = loc(&g, &r);
    let st = send(Method::GET, &u, &[]).await;
    assert_eq!(st.status, StatusCode::NO_CONTENT);
    assert_eq!(st.header("range"), Some("0-9999"));
    let r = send_body(
        Method::PATCH,
        &u,
        &[("content-range", "bytes=10000-19999")],
        blob.slice(10_000..),
    )
    .await;
    assert_eq!(r.header("range"), Some("0-19999"));
    let r = send(Method::PUT, &with_digest(&loc(&g, &r), &d), &[]).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(
        r.header("location"),
        Some(format!("/v2/team/x/blobs/{d}").as_str())
    );
    assert_eq!(
        r.header("docker-content-digest"),
        Some(d.to_string().as_str())
    );
    assert_eq!(
        up.state.blobs.lock().unwrap().get(&d.to_string()),
        Some(&blob)
    );
    // Monolithic POST ?digest=.
    let b2 = data(5000, 2);
    let d2 = Digest::of(&b2);
    let r = send_body(
        Method::POST,
        &with_digest(&g.url("/v2/team/x/blobs/uploads/"), &d2),
        &[],
        b2.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(
        up.state.blobs.lock().unwrap().get(&d2.to_string()),
        Some(&b2)
    );
    // POST then one PUT with the whole body; through the path-prefix route.
    let b3 = data(70_000, 3);
    let d3 = Digest::of(&b3);
    let r = send(Method::POST, &g.url("/v2/local/team/x/blobs/uploads/"), &[]).await;
    assert!(r
        .header("location")
        .unwrap()
        .starts_with("/v2/local/team/x/blobs/uploads/"));
    let r = send_body(
        Method::PUT,
        &with_digest(&loc(&g, &r), &d3),
        &[],
        b3.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(
        up.state.blobs.lock().unwrap().get(&d3.to_string()),
        Some(&b3)
    );
    g.stop().await;
}

#[tokio::test]
async fn wrong_digest_is_refused_before_the_upstream_completes_the_upload() {
    let up = Mock::start().await;
    let g = Gate::start(&upstream_toml("local", &up.url(), true, ""), "").await;
    let blob = data(300_000, 4);
    let actual = Digest::of(&blob);
    let claimed = Digest::of(b"something else");
    // Streamed final chunk: the upstream request is aborted before its last bytes.
    let r = send_body(
        Method::POST,
        &with_digest(&g.url("/v2/team/x/blobs/uploads/"), &claimed),
        &[],
        blob.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "DIGEST_INVALID");
    assert!(
        r.message().contains(&format!("hash to {actual}")),
        "{}",
        r.message()
    );
    for _ in 0..100 {
        if up.state.aborted_bodies.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        up.state.aborted_bodies.load(Ordering::SeqCst),
        1,
        "the upstream saw the body break off"
    );
    // Chunks already uploaded, PUT without body: refused without completing upstream.
    let r = send(Method::POST, &g.url("/v2/team/x/blobs/uploads/"), &[]).await;
    let r = send_body(Method::PATCH, &loc(&g, &r), &[], blob.clone()).await;
    let puts_before = up.state.count("PUT", "/blobs/uploads/");
    let deletes_before = up.state.count("DELETE", "/blobs/uploads/");
    let r = send(Method::PUT, &with_digest(&loc(&g, &r), &claimed), &[]).await;
    assert_eq!(r.code(), "DIGEST_INVALID");
    assert_eq!(
        up.state.count("PUT", "/blobs/uploads/"),
        puts_before,
        "no completing PUT reached the upstream"
    );
    assert_eq!(
        up.state.count("DELETE", "/blobs/uploads/"),
        deletes_before + 1,
        "the upstream upload was cancelled"
    );
    let leaked = {
        let blobs = up.state.blobs.lock().unwrap();
        blobs.contains_key(&actual.to_string()) || blobs.contains_key(&claimed.to_string())
    };
    assert!(!leaked, "no blob landed upstream");
    g.stop().await;
}

#[tokio::test]
async fn out_of_order_chunks_are_416_then_the_upload_goes_on() {
    let up = Mock::start().await;
    let g = Gate::start(&upstream_toml("local", &up.url(), true, ""), "").await;
    let blob = data(200, 5);
    let r = send(Method::POST, &g.url("/v2/team/x/blobs/uploads/"), &[]).await;
    let u = loc(&g, &r);
    let r = send_body(
        Method::PATCH,
        &u,
        &[("content-range", "100-199")],
        blob.slice(100..),
    )
    .await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.code(), "BLOB_UPLOAD_INVALID");
    assert!(r.message().contains("out of order"), "{}", r.message());
    assert!(r.header("location").is_some());
    let r = send_body(
        Method::PATCH,
        &u,
        &[("content-range", "0-99")],
        blob.slice(..100),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = send_body(
        Method::PATCH,
        &loc(&g, &r),
        &[("content-range", "100-199")],
        blob.slice(100..),
    )
    .await;
    let r = send(
        Method::PUT,
        &with_digest(&loc(&g, &r), &Digest::of(&blob)),
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    g.stop().await;
}

#[tokio::test]
async fn mount_cancel_unknown_and_expired_sessions() {
    let up = Mock::start().await;
    let existing = up.state.add_blob(data(100, 6));
    let g = Gate::start_server(
        &up.url(),
        "upload_timeout = \"1s\"\nallow_anonymous_push = true",
    )
    .await;
    let r = send(
        Method::POST,
        &g.url(&format!(
            "/v2/team/b/blobs/uploads/?mount={existing}&from=team/a"
        )),
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        r.header("location"),
        Some(format!("/v2/team/b/blobs/{existing}").as_str())
    );
    assert!(up.state.seen().iter().any(|s| s
        .query
        .as_deref()
        .is_some_and(|q| q.contains("from=team%2Fa"))));
    // Cancel.
    let r = send(Method::POST, &g.url("/v2/team/x/blobs/uploads/"), &[]).await;
    let u = loc(&g, &r);
    assert_eq!(
        send(Method::DELETE, &u, &[]).await.status,
        StatusCode::NO_CONTENT
    );
    let r = send(Method::GET, &u, &[]).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN")
    );
    // Another repository's session is not ours to use.
    let r = send(Method::POST, &g.url("/v2/team/x/blobs/uploads/"), &[]).await;
    let other = loc(&g, &r).replace("/team/x/", "/team/y/");
    assert_eq!(
        send(Method::GET, &other, &[]).await.code(),
        "BLOB_UPLOAD_UNKNOWN"
    );
    // Expiry.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let r = send_body(
        Method::PATCH,
        &loc(&g, &r),
        &[],
        Bytes::from_static(b"late"),
    )
    .await;
    assert_eq!(r.code(), "BLOB_UPLOAD_UNKNOWN");
    assert!(r.message().contains("expired"), "{}", r.message());
    g.stop().await;
}

pub fn image_manifest(up: &Mock, labels: &str) -> (String, Digest) {
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Labels":{labels}}},"rootfs":{{"type":"layers","diff_ids":[]}}}}"#
    );
    let cd = up.state.add_blob(config.clone());
    let ld = up.state.add_blob(data(64, labels.len() as u8));
    let m = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{ld}","size":64}}]}}"#,
        config.len()
    );
    let d = Digest::of(m.as_bytes());
    (m, d)
}

#[tokio::test]
async fn manifest_put_is_validated() {
    let up = Mock::start().await;
    let g = Gate::start(&upstream_toml("local", &up.url(), true, ""), "").await;
    let url = g.url("/v2/team/x/manifests/v1");
    let ct = [("content-type", OCI)];
    let big = format!(
        r#"{{"schemaVersion":2,"annotations":{{"p":"{}"}}}}"#,
        "x".repeat(4 * 1024 * 1024)
    );
    let r = send_body(Method::PUT, &url, &ct, big).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "MANIFEST_INVALID")
    );
    let r = send_body(Method::PUT, &url, &ct, "{not json").await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_REQUEST, "MANIFEST_INVALID")
    );
    let (m, d) = image_manifest(&up, "{}");
    let r = send_body(
        Method::PUT,
        &url,
        &[("content-type", "application/vnd.oci.image.index.v1+json")],
        m.clone(),
    )
    .await;
    assert!(r.message().contains("does not match"), "{}", r.message());
    let r = send_body(
        Method::PUT,
        &url,
        &[("content-type", "text/plain")],
        m.replace(&format!(r#""mediaType":"{OCI}","#), ""),
    )
    .await;
    assert!(
        r.message().contains("not a manifest modelgate accepts"),
        "{}",
        r.message()
    );
    let missing = m.replace(
        &Digest::of(&data(64, 2)).to_string(),
        &Digest::of(b"nope").to_string(),
    );
    let r = send_body(Method::PUT, &url, &ct, missing).await;
    assert_eq!(r.code(), "MANIFEST_BLOB_UNKNOWN");
    assert!(r.message().contains(&Digest::of(b"nope").to_string()));
    let r = send_body(
        Method::PUT,
        &g.url(&format!("/v2/team/x/manifests/{}", Digest::of(b"x"))),
        &ct,
        m.clone(),
    )
    .await;
    assert_eq!(r.code(), "DIGEST_INVALID");
    assert!(!up
        .state
        .manifests
        .lock()
        .unwrap()
        .contains_key(&("team/x".to_string(), "v1".to_string())));
    let r = send_body(Method::PUT, &url, &ct, m.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(d.to_string().as_str())
    );
    assert!(up
        .state
        .manifests
        .lock()
        .unwrap()
        .contains_key(&("team/x".to_string(), "v1".to_string())));
    // It can be pulled right back.
    assert_eq!(
        get(&url).await.header("docker-content-digest"),
        Some(d.to_string().as_str())
    );
    g.stop().await;
}

#[tokio::test]
async fn push_needs_credentials_and_records_the_user() {
    let up = Mock::start().await;
    let (m, _) = image_manifest(&up, "{}");
    up.state.add_manifest("team/x", Some("v0"), m.clone(), OCI);
    let tmp = tempfile::tempdir().unwrap();
    let g = Gate::start_with_ci_bot(tmp.path(), &up.url()).await;
    use base64::Engine;
    let good = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("ci-bot:s3cret")
    );
    let bad = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("ci-bot:nope")
    );
    let r = send(Method::POST, &g.url("/v2/team/x/blobs/uploads/"), &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.code(), "UNAUTHORIZED");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Basic realm=\"modelgate\"")
    );
    let r = send(
        Method::POST,
        &g.url("/v2/team/x/blobs/uploads/"),
        &[("authorization", &bad)],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.message().contains("wrong"));
    let r = send_body(
        Method::PUT,
        &g.url("/v2/team/x/manifests/v1"),
        &[("content-type", OCI)],
        m.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(!up
        .state
        .manifests
        .lock()
        .unwrap()
        .contains_key(&("team/x".to_string(), "v1".to_string())));
    // /v2/ tells clients to authenticate; pulls stay anonymous (pull_auth = false).
    assert_eq!(get(&g.url("/v2/")).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        send(Method::GET, &g.url("/v2/"), &[("authorization", &good)])
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        get(&g.url("/v2/team/x/manifests/v0")).await.status,
        StatusCode::OK
    );
    let r = send_body(
        Method::PUT,
        &g.url("/v2/team/x/manifests/v1"),
        &[("content-type", OCI), ("authorization", &good)],
        m.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let rec = g
        .audit()
        .into_iter()
        .find(|a| a["action"] == "push")
        .expect("push audited");
    assert_eq!(rec["user"], "ci-bot");
    assert_eq!(rec["decision"], "allow");
    // The client's credentials never reach the upstream.
    assert!(up.state.seen().iter().all(|s| s.authorization.is_none()));
    g.stop().await;
    // pull_auth = true: pulls need credentials too.
    let extra = format!("{}\npull_auth = true", htpasswd_with_ci_bot(tmp.path()));
    let g = Gate::start_with(
        tmp.path(),
        &upstream_toml("local", &up.url(), true, ""),
        "",
        &extra,
        None,
    )
    .await;
    assert_eq!(
        get(&g.url("/v2/team/x/manifests/v0")).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(
            Method::GET,
            &g.url("/v2/team/x/manifests/v0"),
            &[("authorization", &good)]
        )
        .await
        .status,
        StatusCode::OK
    );
    g.stop().await;
}

fn tags_upstream(up: &Mock, repo: &str) -> Vec<String> {
    up.state.tags(repo)
}

#[tokio::test]
async fn policy_decides_pushes_before_the_upstream_has_the_tag() {
    let key = modelgate::trust::PrivateKey::generate(modelgate::trust::keys::Algorithm::EcdsaP256)
        .unwrap();
    let up = Mock::start().await;
    let policy = crate::policy::policy_text_for(&key.public().to_pem());
    let (g, _t) = gate_with_policy(&up, &policy).await;
    let ct = [("content-type", OCI)];
    // Unlabeled, by tag: refused, nothing upstream.
    let (unlabeled, _) = image_manifest(&up, "{}");
    let r = send_body(
        Method::PUT,
        &g.url("/v2/models/demo/manifests/v1.0.0"),
        &ct,
        unlabeled,
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(
        r.message().contains("label model.version missing"),
        "{}",
        r.message()
    );
    assert!(tags_upstream(&up, "models/demo").is_empty());
    // Labeled, by digest (staging): admitted without a signature.
    let (m, d) = image_manifest(
        &up,
        r#"{"model.version":"v1.0.0","dataset.id":"ds-20240101"}"#,
    );
    let r = send_body(
        Method::PUT,
        &g.url(&format!("/v2/models/demo/manifests/{d}")),
        &ct,
        m.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    // Tagging the unsigned digest: refused.
    let r = send_body(
        Method::PUT,
        &g.url("/v2/models/demo/manifests/v1.0.0"),
        &ct,
        m.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(
        r.message().contains("no valid signature by [release]"),
        "{}",
        r.message()
    );
    let r = send_body(
        Method::PUT,
        &g.url(&format!("/v2/models/demo/manifests/{d}?tag=v1.0.0")),
        &ct,
        m.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(tags_upstream(&up, "models/demo").is_empty());
    // Sign the digest (a signature artifact is accepted through the gate) then tag it.
    let sig = modelgate::trust::sign::sign_legacy(&key, "local/models/demo", &d);
    let (config, sm) = modelgate::trust::sign::legacy_manifest(None, &sig);
    for b in [sig.payload.clone(), config] {
        let bd = Digest::of(&b);
        let r = send_body(
            Method::POST,
            &with_digest(&g.url("/v2/models/demo/blobs/uploads/"), &bd),
            &[],
            b,
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    let r = send_body(
        Method::PUT,
        &g.url(&format!("/v2/models/demo/manifests/{}.sig", d.tag_schema())),
        &ct,
        sm,
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = send_body(
        Method::PUT,
        &g.url(&format!("/v2/models/demo/manifests/{d}?tag=v1.0.0")),
        &ct,
        m.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.header("oci-tag"), Some("v1.0.0"));
    assert!(tags_upstream(&up, "models/demo").contains(&"v1.0.0".to_string()));
    // A tag that is not a release version.
    let r = send_body(
        Method::PUT,
        &g.url("/v2/models/demo/manifests/latest"),
        &ct,
        m.clone(),
    )
    .await;
    assert!(
        r.message().contains("tag latest does not match"),
        "{}",
        r.message()
    );
    // Moving the immutable tag to another (signed) digest is refused.
    let (m2, d2) = image_manifest(
        &up,
        r#"{"model.version":"v1.0.1","dataset.id":"ds-20240101"}"#,
    );
    assert_eq!(
        send_body(
            Method::PUT,
            &g.url(&format!("/v2/models/demo/manifests/{d2}")),
            &ct,
            m2.clone()
        )
        .await
        .status,
        StatusCode::CREATED
    );
    up.state.attach_legacy_signature("models/demo", &key, &d2);
    let r = send_body(
        Method::PUT,
        &g.url("/v2/models/demo/manifests/v1.0.0"),
        &ct,
        m2.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(
        r.message()
            .contains(&format!("tag v1.0.0 moved upstream from {d} to {d2}")),
        "{}",
        r.message()
    );
    let now = up
        .state
        .manifests
        .lock()
        .unwrap()
        .get(&("models/demo".to_string(), "v1.0.0".to_string()))
        .cloned()
        .unwrap();
    assert_eq!(Digest::of(&now.0), d, "the upstream tag did not move");
    let pushes: Vec<_> = g
        .audit()
        .into_iter()
        .filter(|a| a["action"] == "push")
        .collect();
    assert!(
        pushes.iter().any(|a| a["decision"] == "deny")
            && pushes.iter().any(|a| a["decision"] == "allow")
    );
    assert!(
        g.metric(
            "modelgate_policy_decisions_total{action=\"push\",decision=\"deny\",rule=\"models\"}"
        ) >= 4.0
    );
    g.stop().await;
}
