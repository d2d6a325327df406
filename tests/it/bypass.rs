//! Regression tests for the bypasses and registry-workflow defects found by
//! attacking modelgate (issue #7): each test fails on the code before the
//! fix and names the item it covers.

use crate::policy::{
    assert_denied, fx, fx_str, gate_with_policy, policy_for_key, policy_text, seed_image,
    seed_legacy, seed_signed_index,
};
use crate::support::*;
use bytes::Bytes;
use http::{Method, StatusCode};
use modelgate::oci::Digest;
use std::sync::atomic::Ordering;
use std::time::Duration;

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const COSIGN_SIG: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";

fn enforce() -> String {
    policy_text("", "enforce")
}

/// Item 1: an index whose descriptors wear cosign's artifactType.
#[tokio::test]
async fn an_index_claiming_to_hold_signatures_admits_nothing() {
    let up = Mock::start().await;
    let (child, _, layers) = up.state.add_image("models/evil", "unused", &[data(300, 9)]);
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{INDEX}","manifests":[{{"mediaType":"{OCI}","digest":"{child}","size":1,"artifactType":"{COSIGN_SIG}"}}]}}"#
    );
    up.state
        .add_manifest("models/evil", Some("v1.0.0"), index.clone(), INDEX);
    let referrers_tag = child.tag_schema();
    up.state
        .add_manifest("models/evil", Some(&referrers_tag), index.clone(), INDEX);
    let (g, _t) = gate_with_policy(&up, &enforce()).await;
    // Under a release tag the index is decided like any image.
    let r = get(&g.url("/v2/models/evil/manifests/v1.0.0")).await;
    assert_denied(&r, "no valid signature by [release]");
    // Under its referrers tag it is readable, but opens nothing.
    let r = get(&g.url(&format!("/v2/models/evil/manifests/{referrers_tag}"))).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = get(&g.url(&format!("/v2/models/evil/manifests/{child}"))).await;
    assert_denied(&r, "no valid signature by [release]");
    let r = get(&g.url(&format!("/v2/models/evil/blobs/{}", layers[0]))).await;
    assert_denied(&r, "not referenced by any manifest modelgate admitted");
    // The exempt read is audited.
    let audit = g.audit();
    assert!(
        audit
            .iter()
            .any(|a| a["reference"] == referrers_tag.as_str()
                && a["reasons"][0] == "referrers index: readable, admits nothing"),
        "{audit:?}"
    );
    // Pushing it under an ordinary tag is decided in full (and refused).
    let r = send_body(
        Method::PUT,
        &g.url("/v2/models/evil/manifests/latest"),
        &[("content-type", INDEX)],
        index,
    )
    .await;
    assert_denied(&r, "tag latest does not match");
    assert!(!up
        .state
        .manifests
        .lock()
        .unwrap()
        .contains_key(&("models/evil".into(), "latest".into())));
    g.stop().await;
}

/// Item 2: keys that Go clients read case-insensitively.
#[tokio::test]
async fn duplicate_and_case_twin_keys_are_refused() {
    let up = Mock::start().await;
    let payload = up.state.add_blob(Bytes::from_static(b"{}"));
    let tar = up.state.add_blob(data(100, 1));
    let good_cfg = fx("image/config.json");
    let cfg = up.state.add_blob(good_cfg.clone());
    let twins = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cfg}","size":{}}},"layers":[{{"mediaType":"{SIMPLE_SIGNING}","digest":"{payload}","size":2}}],"Layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{tar}","size":100}}]}}"#,
        good_cfg.len()
    );
    let d = up
        .state
        .add_manifest("models/twins", None, twins.clone(), OCI);
    up.state.add_manifest(
        "models/twins",
        Some(&format!("{}.sig", d.tag_schema())),
        twins.clone(),
        OCI,
    );
    // A config with good "Labels" and bad "labels".
    let cfg2 = Bytes::from(
        r#"{"architecture":"amd64","os":"linux","config":{"Labels":{"model.version":"v1.0.0","dataset.id":"ds-20240101"},"labels":{"model.version":"junk"}},"rootfs":{"type":"layers","diff_ids":[]}}"#,
    );
    let c2 = up.state.add_blob(cfg2.clone());
    let m2 = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{c2}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{tar}","size":100}}]}}"#,
        cfg2.len()
    );
    let d2 = up
        .state
        .add_manifest("models/twins", Some("v1.0.0"), m2, OCI);
    let (g, _t) = gate_with_policy(&up, &enforce()).await;
    let r = get(&g.url(&format!("/v2/models/twins/manifests/{d}"))).await;
    assert_denied(&r, "\"layers\" and \"Layers\" differ only by case");
    let r = get(&g.url(&format!(
        "/v2/models/twins/manifests/{}.sig",
        d.tag_schema()
    )))
    .await;
    assert_denied(&r, "differ only by case");
    let r = get(&g.url(&format!("/v2/models/twins/manifests/{d2}"))).await;
    assert_denied(&r, "\"Labels\" and \"labels\" differ only by case");
    // A push of such a document is bad input.
    let r = send_body(
        Method::PUT,
        &g.url("/v2/team/x/manifests/v1.0.0"),
        &[("content-type", OCI)],
        twins.replace("\"Layers\"", "\"layers\""),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "MANIFEST_INVALID");
    assert!(
        r.message().contains("duplicate key \"layers\""),
        "{}",
        r.message()
    );
    g.stop().await;
}

/// Item 3: a signature manifest pushed under a release tag or `latest`.
#[tokio::test]
async fn pushed_signatures_obey_tag_rules_except_on_their_own_tags() {
    let up = Mock::start().await;
    let image = seed_image(&up, "models/rel", "v1.0.0");
    seed_legacy(&up, "models/rel", "ecdsa-p256-legacy-valid");
    let (g, _t) = gate_with_policy(&up, &enforce()).await;
    let r = get(&g.url("/v2/models/rel/manifests/v1.0.0")).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let sig = fx("vectors/ecdsa-p256-legacy-valid/sig-manifest.json");
    let put = |tag: String| {
        let url = g.url(&format!("/v2/models/rel/manifests/{tag}"));
        let sig = sig.clone();
        async move { send_body(Method::PUT, &url, &[("content-type", OCI)], sig).await }
    };
    let r = put("v1.0.0".into()).await;
    assert_denied(&r, "tag v1.0.0 moved upstream");
    let r = put("latest".into()).await;
    assert_denied(&r, "tag latest does not match");
    let tags = up.state.manifests.lock().unwrap().clone();
    assert_eq!(
        Digest::of(&tags[&("models/rel".to_string(), "v1.0.0".to_string())].0),
        image,
        "the release tag is untouched upstream"
    );
    let r = put(fx_str("vectors/ecdsa-p256-legacy-valid/sig-tag.txt")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    g.stop().await;
}

/// Item 4: content of a denied image under an ungoverned name, manifests
/// as blobs, and mounts from a governed repository.
#[tokio::test]
async fn denied_content_is_not_readable_under_another_name() {
    let up = Mock::start().await;
    up.state.scoped_blobs.store(true, Ordering::SeqCst);
    let cfg = fx("image/config.json");
    let c = up.state.add_blob_in("models/secret", cfg.clone());
    let layer = up.state.add_blob_in("models/secret", data(500, 3));
    let m = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{c}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":500}}]}}"#,
        cfg.len()
    );
    let md = up
        .state
        .add_manifest("models/secret", Some("v1.0.0"), m, OCI);
    let (g, _t) = gate_with_policy(&up, &enforce()).await;
    let r = get(&g.url("/v2/models/secret/manifests/v1.0.0")).await;
    assert_denied(&r, "no valid signature");
    // The gate read the config (and the manifest) to decide: both are in
    // the cache now, but `open` does not hold them.
    assert!(g.app.registry().store().size_of(&c).is_some());
    let r = get(&g.url(&format!("/v2/open/blobs/{c}"))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{:?}", r.body);
    assert_eq!(r.code(), "BLOB_UNKNOWN");
    let r = get(&g.url(&format!("/v2/open/manifests/{md}"))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{:?}", r.body);
    // Never a manifest through the blob endpoint, in any repository.
    for repo in ["open", "models/secret"] {
        let r = get(&g.url(&format!("/v2/{repo}/blobs/{md}"))).await;
        assert!(r.status.is_client_error(), "{repo}: {:?}", r.status);
    }
    // A mount from the governed repository is declined (plain session).
    let r = send(
        Method::POST,
        &g.url(&format!(
            "/v2/open/blobs/uploads/?mount={layer}&from=models/secret"
        )),
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    assert!(up
        .state
        .seen()
        .iter()
        .filter(|s| s.method == Method::POST)
        .all(|s| !s.query.clone().unwrap_or_default().contains("mount")));
    let r = get(&g.url(&format!("/v2/open/blobs/{layer}"))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    g.stop().await;
}

/// Item 5: a client that accepts no index must not poison the tag memory.
#[tokio::test]
async fn a_narrow_accept_is_negotiated_down_without_recording_the_child() {
    let key =
        modelgate::trust::PrivateKey::generate(modelgate::trust::keys::Algorithm::Ed25519).unwrap();
    let up = Mock::start().await;
    up.state.distribution_accept.store(true, Ordering::SeqCst);
    let (id, children) = seed_signed_index(
        &up,
        "models/multi",
        &key,
        r#"{"model.version":"v1.0.0","dataset.id":"ds-20240101"}"#,
    );
    let (g, _t) = gate_with_policy(&up, &policy_for_key(&key)).await;
    let r = send(
        Method::GET,
        &g.url("/v2/models/multi/manifests/v1.0.0"),
        &[("accept", OCI)],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(children[0].to_string().as_str()),
        "the linux/amd64 child"
    );
    let repo = "local/models/multi";
    assert_eq!(g.app.gate().seen_tag(repo, "v1.0.0"), Some(id.clone()));
    assert_eq!(
        g.app
            .registry()
            .tags()
            .get(repo, "v1.0.0")
            .map(|e| e.digest),
        Some(id.clone())
    );
    let r = get(&g.url("/v2/models/multi/manifests/v1.0.0")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(id.to_string().as_str())
    );
    g.stop().await;
}

/// Item 6: without htpasswd, modelgate is read-only by default.
#[tokio::test]
async fn without_client_auth_pushes_are_refused() {
    let up = Mock::start().await;
    up.state.add_image("team/x", "v1", &[data(10, 1)]);
    let g = Gate::start_server(&up.url(), "").await;
    for (m, path) in [
        (Method::POST, "/v2/team/x/blobs/uploads/"),
        (Method::PUT, "/v2/team/x/manifests/v2"),
        (Method::DELETE, "/v2/team/x/manifests/v1"),
    ] {
        let r = send(m.clone(), &g.url(path), &[]).await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{m} {path}");
        assert!(
            r.message().contains("allow_anonymous_push"),
            "{}",
            r.message()
        );
    }
    assert_eq!(up.state.count("POST", "uploads"), 0);
    assert_eq!(
        get(&g.url("/v2/team/x/manifests/v1")).await.status,
        StatusCode::OK
    );
    g.stop().await;
}

/// Item 9: blob existence is answered for the repository asked.
#[tokio::test]
async fn blob_existence_is_per_repository() {
    let up = Mock::start().await;
    up.state.scoped_blobs.store(true, Ordering::SeqCst);
    let layer = up.state.add_blob_in("staging/m", data(1000, 5));
    let g = Gate::start(&upstream_toml("local", &up.url(), true, ""), "").await;
    let r = get(&g.url(&format!("/v2/staging/m/blobs/{layer}"))).await;
    assert_eq!(r.status, StatusCode::OK);
    settle(&g).await;
    assert!(g.app.registry().store().size_of(&layer).is_some(), "cached");
    let r = send(
        Method::HEAD,
        &g.url(&format!("/v2/prod/m/blobs/{layer}")),
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "prod/m lacks it upstream");
    let r = send(
        Method::HEAD,
        &g.url(&format!("/v2/staging/m/blobs/{layer}")),
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    g.stop().await;
}

/// Item 10: a signature pushed straight to the upstream counts at once.
#[tokio::test]
async fn a_signature_made_at_the_upstream_counts_on_the_next_request() {
    let up = Mock::start().await;
    let d = seed_image(&up, "models/late", "v1.0.0");
    // First a signature by a key the rule does not list.
    seed_legacy(&up, "models/late", "ecdsa-p256-legacy-wrong-key");
    let (g, _t) = gate_with_policy(&up, &enforce()).await;
    let url = g.url(&format!("/v2/models/late/manifests/{d}"));
    assert_denied(&get(&url).await, "no valid signature");
    // The signer rewrites the `.sig` tag in place at the upstream.
    seed_legacy(&up, "models/late", "ecdsa-p256-legacy-valid");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = get(&url).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    g.stop().await;
}

/// Item 11: a tag the pattern forbids costs no upstream request.
#[tokio::test]
async fn a_forbidden_tag_is_refused_without_asking_the_upstream() {
    let up = Mock::start().await;
    up.state.down.store(true, Ordering::SeqCst);
    let (g, _t) = gate_with_policy(&up, &enforce()).await;
    let r = get(&g.url("/v2/models/x/manifests/latest")).await;
    assert_denied(&r, "tag latest does not match");
    assert_eq!(up.state.count("GET", "/manifests/"), 0);
    assert_eq!(up.state.count("HEAD", "/manifests/"), 0);
    assert!(g
        .audit()
        .iter()
        .any(|a| a["reference"] == "latest" && a["decision"] == "deny"));
    g.stop().await;
}

/// Item 12: a tag is recorded only once the upstream has it.
#[tokio::test]
async fn tags_the_upstream_ignored_are_set_by_tag() {
    let up = Mock::start().await;
    up.state.ignore_tag_query.store(true, Ordering::SeqCst);
    let (_, bytes, _) = up.state.add_image("team/x", "v1", &[data(10, 1)]);
    let d = Digest::of(&bytes);
    let g = Gate::start(&upstream_toml("local", &up.url(), true, ""), "").await;
    let r = send_body(
        Method::PUT,
        &g.url(&format!("/v2/team/x/manifests/{d}?tag=v3.0.0")),
        &[("content-type", OCI)],
        bytes,
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.header("oci-tag"), Some("v3.0.0"));
    assert!(up
        .state
        .manifests
        .lock()
        .unwrap()
        .contains_key(&("team/x".into(), "v3.0.0".into())));
    assert_eq!(up.state.count("PUT", "/manifests/v3.0.0"), 1);
    g.stop().await;
}

/// Item 13: index children are checked with their media type as Accept.
#[tokio::test]
async fn an_index_push_finds_children_the_cache_never_saw() {
    let up = Mock::start().await;
    up.state.distribution_accept.store(true, Ordering::SeqCst);
    let (c1, b1, _) = up.state.add_image("team/idx", "a", &[data(10, 1)]);
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{INDEX}","manifests":[{{"mediaType":"{OCI}","digest":"{c1}","size":{},"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
        b1.len()
    );
    let g = Gate::start(&upstream_toml("local", &up.url(), true, ""), "").await;
    let r = send_body(
        Method::PUT,
        &g.url("/v2/team/idx/manifests/v1"),
        &[("content-type", INDEX)],
        index,
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    g.stop().await;
}
