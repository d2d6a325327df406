//! The gate against an in-process upstream holding the cosign fixture image
//! and signatures made by another implementation: admissions, the bypass
//! suite (each attempt denied with the right reason), audit log, metrics,
//! verdict caching, audit mode and hot reload.

use crate::support::*;
use bytes::Bytes;
use http::{Method, StatusCode};
use modelgate::oci::Digest;
use std::path::Path;

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";

pub fn fx(rel: &str) -> Bytes {
    Bytes::from(
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/cosign")
                .join(rel),
        )
        .unwrap(),
    )
}

pub fn fx_str(rel: &str) -> String {
    String::from_utf8(fx(rel).to_vec())
        .unwrap()
        .trim()
        .to_string()
}

/// The fixture image at `repo:tag`; returns its digest.
pub fn seed_image(up: &Mock, repo: &str, tag: &str) -> Digest {
    up.state.add_blob(fx("image/config.json"));
    up.state.add_blob(fx("image/layer.bin"));
    up.state
        .add_manifest(repo, Some(tag), fx("image/manifest.json"), OCI)
}

/// A legacy `.sig` vector attached to the fixture image in `repo`.
pub fn seed_legacy(up: &Mock, repo: &str, vector: &str) {
    let v = format!("vectors/{vector}");
    up.state.add_blob(fx(&format!("{v}/payload.json")));
    up.state.add_blob(fx(&format!("{v}/sig-config.json")));
    up.state.add_manifest(
        repo,
        Some(&fx_str(&format!("{v}/sig-tag.txt"))),
        fx(&format!("{v}/sig-manifest.json")),
        OCI,
    );
}

/// A referrer vector (oci11 or bundle) attached through the tag-schema index.
fn seed_referrer(up: &Mock, repo: &str, vector: &str, image: &Digest) {
    let v = format!("vectors/{vector}");
    let m = fx(&format!("{v}/referrer-manifest.json"));
    let mv: serde_json::Value = serde_json::from_slice(&m).unwrap();
    for f in ["bundle.json", "payload.json", "referrer-config.json"] {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/cosign")
            .join(&v)
            .join(f);
        if p.exists() {
            up.state.add_blob(fx(&format!("{v}/{f}")));
        }
    }
    up.state.add_blob(Bytes::from_static(b"{}"));
    let md = up.state.add_manifest(repo, None, m.clone(), OCI);
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{INDEX}","manifests":[{{"mediaType":"{OCI}","digest":"{md}","size":{},"artifactType":{}}}]}}"#,
        m.len(),
        mv["artifactType"]
    );
    up.state
        .add_manifest(repo, Some(&image.tag_schema()), index, INDEX);
}

pub fn policy_text(extra_labels: &str, mode: &str) -> String {
    format!(
        r#"default = "allow"
[keys]
release = """{}"""
other = """{}"""
[[rules]]
name = "models"
repositories = ["local/models/**"]
mode = "{mode}"
[rules.signatures]
keys = ["release"]
[rules.labels]
"model.version" = {{ semver = true }}
"dataset.id" = {{ regex = '^ds-[0-9]{{8}}$' }}
{extra_labels}
[rules.tags]
pattern = '^v[0-9]+\.[0-9]+\.[0-9]+$'
immutable = true
"#,
        fx_str("keys/ecdsa-p256.pub.pem"),
        fx_str("keys/other-ecdsa-p256.pub.pem")
    )
}

/// The test policy, with `pem` as the release key.
pub fn policy_text_for(pem: &str) -> String {
    policy_text("", "enforce").replacen(&fx_str("keys/ecdsa-p256.pub.pem"), pem.trim(), 1)
}

pub async fn gate_with_policy(up: &Mock, policy: &str) -> (Gate, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("policy.toml"), policy).unwrap();
    let g = Gate::start_in(
        tmp.path(),
        &upstream_toml("local", &up.url(), true, ""),
        "tag_ttl = \"60s\"",
        None,
    )
    .await;
    (g, tmp)
}

/// `path` is served with exactly `body`, the decision on `d` is audited as
/// allowed, and a `kind` signature verification was counted valid.
pub async fn assert_admitted_by(g: &Gate, path: &str, body: &[u8], d: &Digest, kind: &str) {
    let r = get(&g.url(path)).await;
    assert_eq!(r.status, StatusCode::OK, "{kind}: {:?}", r.body);
    assert_eq!(r.bytes(), body);
    let audit = g.audit();
    let rec = audit.iter().find(|a| a["digest"] == d.to_string().as_str());
    assert_eq!(
        rec.map(|a| &a["decision"]),
        Some(&"allow".into()),
        "{kind}: {audit:?}"
    );
    let valid =
        format!("modelgate_signature_verifications_total{{kind=\"{kind}\",result=\"valid\"}}");
    assert!(g.metric(&valid) >= 1.0, "{valid}");
}

pub fn assert_denied(r: &Got, needle: &str) {
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);
    assert_eq!(r.code(), "DENIED");
    assert!(
        r.message().contains(needle),
        "message {:?} lacks {needle:?}",
        r.message()
    );
}

#[tokio::test]
async fn signed_labeled_image_is_admitted_in_every_signature_format() {
    for (format, vector) in [
        ("legacy", "ecdsa-p256-legacy-valid"),
        ("oci11", "ecdsa-p256-oci11-valid"),
        ("bundle", "ecdsa-p256-bundle-valid"),
    ] {
        let up = Mock::start().await;
        let d = seed_image(&up, "models/demo", "v2.1.0");
        if format == "legacy" {
            seed_legacy(&up, "models/demo", vector);
        } else {
            seed_referrer(&up, "models/demo", vector, &d);
        }
        let (g, _t) = gate_with_policy(&up, &policy_text("", "enforce")).await;
        let r = get(&g.url("/v2/models/demo/manifests/v2.1.0")).await;
        assert_eq!(r.status, StatusCode::OK, "{format}: {:?}", r.body);
        assert_eq!(r.bytes(), &fx("image/manifest.json"));
        // Its blobs are now open.
        let layer = Digest::of(&fx("image/layer.bin"));
        assert_eq!(
            get(&g.url(&format!("/v2/models/demo/blobs/{layer}")))
                .await
                .bytes(),
            &fx("image/layer.bin")
        );
        let audit = g.audit();
        let rec = audit.iter().find(|a| a["reference"] == "v2.1.0").unwrap();
        assert_eq!(rec["decision"], "allow", "{format}");
        assert_eq!(rec["rule"], "models");
        assert_eq!(rec["repository"], "local/models/demo");
        assert_eq!(rec["digest"], d.to_string());
        assert_eq!(rec["action"], "pull");
        assert_eq!(rec["client"], "127.0.0.1");
        assert_eq!(rec["policy_sha256"].as_str().unwrap().len(), 64);
        assert_eq!(g.metric("modelgate_policy_decisions_total{action=\"pull\",decision=\"allow\",rule=\"models\"}"), 1.0);
        assert!(
            g.metric("modelgate_signature_verifications_total{kind=\"key\",result=\"valid\"}")
                >= 1.0
        );
        // A cached verdict costs no upstream round trip.
        let before = up.state.seen().len();
        assert_eq!(
            get(&g.url(&format!("/v2/models/demo/manifests/{d}")))
                .await
                .status,
            StatusCode::OK
        );
        assert_eq!(
            up.state.seen().len(),
            before,
            "{format}: second decision went upstream"
        );
        g.stop().await;
    }
}

#[tokio::test]
async fn bypass_unsigned_by_digest_and_blob_without_manifest() {
    let up = Mock::start().await;
    let d = seed_image(&up, "models/demo", "v2.1.0");
    let (g, _t) = gate_with_policy(&up, &policy_text("", "enforce")).await;
    let r = get(&g.url(&format!("/v2/models/demo/manifests/{d}"))).await;
    assert_denied(
        &r,
        "denied by rule \"models\": no valid signature by [release]",
    );
    let h = send(
        Method::HEAD,
        &g.url(&format!("/v2/models/demo/manifests/{d}")),
        &[],
    )
    .await;
    assert_eq!(h.status, StatusCode::FORBIDDEN);
    let layer = Digest::of(&fx("image/layer.bin"));
    let r = get(&g.url(&format!("/v2/models/demo/blobs/{layer}"))).await;
    assert_denied(&r, "is not referenced by any manifest modelgate admitted");
    // HEAD says only that it exists (pushing clients rely on it); no bytes.
    let r = send(
        Method::HEAD,
        &g.url(&format!("/v2/models/demo/blobs/{layer}")),
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.bytes().is_empty());
    assert_eq!(
        up.state.count("GET", "/blobs/sha256:f49cc"),
        0,
        "a denied blob is not even fetched"
    );
    let audit = g.audit();
    assert_eq!(audit.last().unwrap()["decision"], "deny");
    assert_eq!(
        audit.last().unwrap()["reasons"][0].as_str().unwrap(),
        "no valid signature by [release]"
    );
    assert_eq!(
        g.metric(
            "modelgate_policy_decisions_total{action=\"pull\",decision=\"deny\",rule=\"models\"}"
        ),
        2.0
    );
    g.stop().await;
}

#[tokio::test]
async fn bypass_bad_signatures_are_named() {
    for (vector, needle) in [
        ("ecdsa-p256-legacy-wrong-digest", "names sha256:ef35b706"),
        ("ecdsa-p256-legacy-wrong-key", "unlisted key or corrupted"),
        (
            "ecdsa-p256-legacy-corrupt-signature",
            "unlisted key or corrupted",
        ),
        ("ecdsa-p256-legacy-wrong-type", "critical.type"),
    ] {
        let up = Mock::start().await;
        seed_image(&up, "models/demo", "v2.1.0");
        seed_legacy(&up, "models/demo", vector);
        let (g, _t) = gate_with_policy(&up, &policy_text("", "enforce")).await;
        let r = get(&g.url("/v2/models/demo/manifests/v2.1.0")).await;
        assert_denied(&r, "no valid signature by [release]");
        assert!(r.message().contains(needle), "{vector}: {}", r.message());
        assert!(
            g.metric("modelgate_signature_verifications_total{kind=\"key\",result=\"invalid\"}")
                >= 1.0
        );
        g.stop().await;
    }
    // A bundle whose statement names another digest.
    let up = Mock::start().await;
    let d = seed_image(&up, "models/demo", "v2.1.0");
    seed_referrer(&up, "models/demo", "ecdsa-p256-bundle-wrong-digest", &d);
    let (g, _t) = gate_with_policy(&up, &policy_text("", "enforce")).await;
    assert_denied(
        &get(&g.url("/v2/models/demo/manifests/v2.1.0")).await,
        "bundle: signed payload names sha256:ef35b706",
    );
    g.stop().await;
}

#[tokio::test]
async fn bypass_signature_artifact_as_the_image() {
    let up = Mock::start().await;
    let d = seed_image(&up, "models/demo", "v2.1.0");
    seed_legacy(&up, "models/demo", "ecdsa-p256-legacy-valid");
    let (g, _t) = gate_with_policy(&up, &policy_text("", "enforce")).await;
    // The real signature artifact stays readable (cosign verify works through the proxy)...
    let sig_tag = format!("{}.sig", d.tag_schema());
    let r = get(&g.url(&format!("/v2/models/demo/manifests/{sig_tag}"))).await;
    assert_eq!(r.status, StatusCode::OK);
    let payload = Digest::of(&fx("vectors/ecdsa-p256-legacy-valid/payload.json"));
    assert_eq!(
        get(&g.url(&format!("/v2/models/demo/blobs/{payload}")))
            .await
            .status,
        StatusCode::OK
    );
    // ...but a model image dressed up as a signature (artifactType, subject) is not one.
    let disguised = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI}","artifactType":"application/vnd.dev.cosign.artifact.sig.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","size":225,"digest":"{}"}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","size":896,"digest":"{}"}}],"subject":{{"mediaType":"{OCI}","digest":"{d}","size":396}}}}"#,
        Digest::of(&fx("image/config.json")),
        Digest::of(&fx("image/layer.bin"))
    );
    let dd = up
        .state
        .add_manifest("models/demo", Some("v9.9.9"), disguised, OCI);
    let r = get(&g.url("/v2/models/demo/manifests/v9.9.9")).await;
    assert_denied(&r, "no valid signature by [release]");
    let r = get(&g.url(&format!("/v2/models/demo/manifests/{dd}"))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    g.stop().await;
}

#[tokio::test]
async fn bypass_tag_moved_after_admission_and_tag_pattern() {
    let up = Mock::start().await;
    let d = seed_image(&up, "models/demo", "v2.1.0");
    seed_legacy(&up, "models/demo", "ecdsa-p256-legacy-valid");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("policy.toml"), policy_text("", "enforce")).unwrap();
    let ups = upstream_toml("local", &up.url(), true, "");
    let g = Gate::start_in(tmp.path(), &ups, "tag_ttl = \"100ms\"", None).await;
    assert_eq!(
        get(&g.url("/v2/models/demo/manifests/v2.1.0")).await.status,
        StatusCode::OK
    );
    // Not a release tag.
    up.state.add_manifest(
        "models/demo",
        Some("latest"),
        fx("image/manifest.json"),
        OCI,
    );
    assert_denied(
        &get(&g.url("/v2/models/demo/manifests/latest")).await,
        "tag latest does not match",
    );
    g.stop().await;
    // The tag moves upstream to another (also signed-looking) manifest; even
    // after a restart modelgate remembers what v2.1.0 was.
    let moved = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","size":225,"digest":"{}"}},"layers":[]}}"#,
        Digest::of(&fx("image/config.json"))
    );
    let md = up
        .state
        .add_manifest("models/demo", Some("v2.1.0"), moved, OCI);
    let g = Gate::start_in(tmp.path(), &ups, "tag_ttl = \"100ms\"", None).await;
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let r = get(&g.url("/v2/models/demo/manifests/v2.1.0")).await;
    assert_denied(&r, &format!("tag v2.1.0 moved upstream from {d} to {md}"));
    g.stop().await;
}

#[tokio::test]
async fn bypass_label_only_as_annotation_and_missing_labels() {
    let up = Mock::start().await;
    // The fixture config has no accuracy.test label; put it in the manifest annotations instead.
    let m = String::from_utf8(fx("image/manifest.json").to_vec()).unwrap();
    let annotated =
        m.trim_end_matches('}').to_string() + r#","annotations":{"accuracy.test":"0.99"}}"#;
    up.state.add_blob(fx("image/config.json"));
    up.state.add_blob(fx("image/layer.bin"));
    let d = up
        .state
        .add_manifest("models/demo", Some("v2.1.0"), annotated, OCI);
    let (g, _t) = gate_with_policy(
        &up,
        &policy_text(r#""accuracy.test" = { min = 0.9 }"#, "enforce"),
    )
    .await;
    let r = get(&g.url(&format!("/v2/models/demo/manifests/{d}"))).await;
    assert_denied(&r, "label accuracy.test missing");
    assert!(
        r.message().contains("no valid signature"),
        "every failed requirement is named: {}",
        r.message()
    );
    g.stop().await;
}

#[tokio::test]
async fn bypass_oversized_manifest() {
    let up = Mock::start().await;
    let big = format!(
        r#"{{"schemaVersion":2,"annotations":{{"pad":"{}"}}}}"#,
        "x".repeat(4 * 1024 * 1024 + 1)
    );
    up.state
        .add_manifest("models/demo", Some("v1.0.0"), big, OCI);
    let (g, _t) = gate_with_policy(&up, &policy_text("", "enforce")).await;
    let r = get(&g.url("/v2/models/demo/manifests/v1.0.0")).await;
    assert_eq!(r.code(), "MANIFEST_INVALID");
    assert!(r.message().contains("larger than"));
    g.stop().await;
}

/// A two-platform index signed (legacy) with a key made here.
pub fn seed_signed_index(
    up: &Mock,
    repo: &str,
    key: &modelgate::trust::PrivateKey,
    arm_labels: &str,
) -> (Digest, Vec<Digest>) {
    let mut children = Vec::new();
    let mut descs = Vec::new();
    for (arch, labels) in [
        (
            "amd64",
            r#"{"model.version":"v1.0.0","dataset.id":"ds-20240101"}"#,
        ),
        ("arm64", arm_labels),
    ] {
        let config = format!(
            r#"{{"architecture":"{arch}","os":"linux","config":{{"Labels":{labels}}},"rootfs":{{"type":"layers","diff_ids":[]}}}}"#
        );
        let cd = up.state.add_blob(config.clone());
        let ld = up.state.add_blob(data(100, arch.len() as u8));
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{ld}","size":100}}]}}"#,
            config.len()
        );
        let md = up.state.add_manifest(repo, None, m.clone(), OCI);
        descs.push(format!(r#"{{"mediaType":"{OCI}","digest":"{md}","size":{},"platform":{{"os":"linux","architecture":"{arch}"}}}}"#, m.len()));
        children.push(md);
    }
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{INDEX}","manifests":[{}]}}"#,
        descs.join(",")
    );
    let id = up.state.add_manifest(repo, Some("v1.0.0"), index, INDEX);
    up.state.attach_legacy_signature(repo, key, &id);
    (id, children)
}

pub fn policy_for_key(key: &modelgate::trust::PrivateKey) -> String {
    policy_text("", "enforce").replacen(
        &fx_str("keys/ecdsa-p256.pub.pem"),
        key.public().to_pem().trim(),
        1,
    )
}

#[tokio::test]
async fn signed_index_admits_children_only_in_its_repository() {
    let key =
        modelgate::trust::PrivateKey::generate(modelgate::trust::keys::Algorithm::Ed25519).unwrap();
    let up = Mock::start().await;
    let (id, children) = seed_signed_index(
        &up,
        "models/multi",
        &key,
        r#"{"model.version":"v1.0.0","dataset.id":"ds-20240101"}"#,
    );
    // The same children exist in another governed repository, unsigned there.
    for c in &children {
        up.state.copy_manifest(
            "models/multi",
            &c.to_string(),
            "models/other",
            &c.to_string(),
        );
    }
    let (g, _t) = gate_with_policy(&up, &policy_for_key(&key)).await;
    let r = get(&g.url("/v2/models/multi/manifests/v1.0.0")).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(id.to_string().as_str())
    );
    for c in &children {
        assert_eq!(
            get(&g.url(&format!("/v2/models/multi/manifests/{c}")))
                .await
                .status,
            StatusCode::OK
        );
        let r = get(&g.url(&format!("/v2/models/other/manifests/{c}"))).await;
        assert_denied(&r, "no valid signature by [release]");
    }
    g.stop().await;
    // Labels are checked on each child's config.
    let up = Mock::start().await;
    seed_signed_index(&up, "models/multi", &key, r#"{"model.version":"latest"}"#);
    let (g, _t) = gate_with_policy(&up, &policy_for_key(&key)).await;
    let r = get(&g.url("/v2/models/multi/manifests/v1.0.0")).await;
    assert_denied(&r, "linux/arm64: label dataset.id missing");
    assert!(
        r.message()
            .contains("linux/arm64: label model.version = \"latest\" is not a semantic version"),
        "{}",
        r.message()
    );
    g.stop().await;
}

#[tokio::test]
async fn audit_mode_lets_through_and_counts() {
    let up = Mock::start().await;
    let d = seed_image(&up, "models/demo", "v2.1.0");
    let (g, _t) = gate_with_policy(&up, &policy_text("", "audit")).await;
    assert_eq!(
        get(&g.url(&format!("/v2/models/demo/manifests/{d}")))
            .await
            .status,
        StatusCode::OK
    );
    let layer = Digest::of(&fx("image/layer.bin"));
    assert_eq!(
        get(&g.url(&format!("/v2/models/demo/blobs/{layer}")))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        g.metric(
            "modelgate_policy_decisions_total{action=\"pull\",decision=\"audit\",rule=\"models\"}"
        ),
        1.0
    );
    assert_eq!(g.audit().last().unwrap()["decision"], "audit");
    g.stop().await;
}

#[tokio::test]
async fn hot_reload_redecides_and_a_broken_file_keeps_the_last_good_policy() {
    let up = Mock::start().await;
    let d = seed_image(&up, "models/demo", "v2.1.0");
    let (g, tmp) = gate_with_policy(&up, &policy_text("", "enforce")).await;
    let url = g.url(&format!("/v2/models/demo/manifests/{d}"));
    assert_eq!(get(&url).await.status, StatusCode::FORBIDDEN);
    let sha1 = g.audit().last().unwrap()["policy_sha256"].clone();
    // Loosen: no rule for these repositories any more (the rule now
    // governs another path; a file with no rules at all is refused).
    std::fs::write(
        tmp.path().join("policy.toml"),
        policy_text("", "enforce").replace("local/models/**", "local/elsewhere/**"),
    )
    .unwrap();
    let mut ok = false;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if get(&url).await.status == StatusCode::OK {
            ok = true;
            break;
        }
    }
    assert!(ok, "the new policy was not picked up");
    assert_ne!(g.audit().last().unwrap()["policy_sha256"], sha1);
    assert_eq!(
        g.metric("modelgate_policy_reloads_total{result=\"success\"}"),
        1.0
    );
    // Broken file: the last good policy stays, the error is counted.
    std::fs::write(
        tmp.path().join("policy.toml"),
        "default = \"allow\"\n[[rules]]\nnme = 1\n",
    )
    .unwrap();
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if g.metric("modelgate_policy_reloads_total{result=\"error\"}") >= 1.0 {
            break;
        }
    }
    assert_eq!(
        g.metric("modelgate_policy_reloads_total{result=\"error\"}"),
        1.0
    );
    assert_eq!(get(&url).await.status, StatusCode::OK);
    g.stop().await;
}

/// Issue #7 item 7: an empty or half-written policy is not put in force.
#[tokio::test]
async fn a_reload_that_drops_every_rule_is_refused() {
    let up = Mock::start().await;
    let d = seed_image(&up, "models/demo", "v2.1.0");
    let (g, tmp) = gate_with_policy(&up, &policy_text("", "enforce")).await;
    let url = g.url(&format!("/v2/models/demo/manifests/{d}"));
    assert_eq!(get(&url).await.status, StatusCode::FORBIDDEN);
    // Rewritten in place: first truncated, then a valid prefix of the file.
    let full = policy_text("", "enforce");
    let prefix = &full[..full.find("[[rules]]").unwrap()];
    for text in ["", prefix] {
        std::fs::write(tmp.path().join("policy.toml"), text).unwrap();
        let before = g.metric("modelgate_policy_reloads_total{result=\"refused\"}");
        for _ in 0..50 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            if g.metric("modelgate_policy_reloads_total{result=\"refused\"}") > before {
                break;
            }
        }
        assert_eq!(
            g.metric("modelgate_policy_reloads_total{result=\"refused\"}"),
            before + 1.0,
            "{text:?}"
        );
        assert_eq!(get(&url).await.status, StatusCode::FORBIDDEN, "{text:?}");
    }
    assert_eq!(
        g.metric("modelgate_policy_reloads_total{result=\"success\"}"),
        0.0
    );
    g.stop().await;
}
