//! Models shipped as OCI artifacts, through the gate: every fixture kind of
//! tests/fixtures/models (built with the testbed's make-model.py, in the wire
//! shape of each producer) is decided as a model policy says, on pull and
//! on push, with the kind and failed fact or layer named in denials and the
//! facts in the audit record.

use crate::policy::{assert_denied, gate_with_policy};
use crate::support::*;
use bytes::Bytes;
use http::{Method, StatusCode};
use modelgate::oci::Digest;
use std::path::{Path, PathBuf};

fn dir(fixture: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(fixture)
}

/// The manifest of a fixture's OCI layout: (bytes, media type).
pub fn manifest_of(fixture: &str) -> (Bytes, String) {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir(fixture).join("index.json")).unwrap()).unwrap();
    let desc = &index["manifests"][0];
    let hex = desc["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    let bytes = std::fs::read(dir(fixture).join("blobs/sha256").join(hex)).unwrap();
    (
        Bytes::from(bytes),
        desc["mediaType"].as_str().unwrap().to_string(),
    )
}

/// Every blob of a fixture's layout (manifest included).
pub fn blobs_of(fixture: &str) -> Vec<Bytes> {
    std::fs::read_dir(dir(fixture).join("blobs/sha256"))
        .unwrap()
        .map(|e| Bytes::from(std::fs::read(e.unwrap().path()).unwrap()))
        .collect()
}

/// The fixture at `models/<fixture>:v1` upstream, with its blobs.
fn seed(up: &Mock, fixture: &str) -> Digest {
    for b in blobs_of(fixture) {
        up.state.add_blob(b);
    }
    let (m, media_type) = manifest_of(fixture);
    up.state
        .add_manifest(&format!("models/{fixture}"), Some("v1"), m, &media_type)
}

/// The model policy of tests/fixtures/models/policy.toml (repositories
/// `local/models/**`).
pub static MODEL_POLICY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/policy.toml"),
    )
    .unwrap()
});

#[tokio::test]
async fn every_model_kind_is_decided_as_the_policy_says() {
    for (fixture, expect) in [
        ("docker-model-v01", Ok(())),
        // v0.2 carries its license only as a LICENSE file, which names no
        // identifier: under a rule that requires licenses, that is missing.
        ("docker-model-v02", Err("kind docker-model: model licenses missing")),
        ("modelpack-raw", Ok(())),
        ("modelpack-tar", Ok(())),
        ("modelpack-no-artifact-type", Ok(())),
        ("kitops", Ok(())),
        ("oras-onnx", Err("kind artifact (application/vnd.unknown.artifact.v1) is not admitted here")),
        ("ollama-like", Err("kind image (ollama) is not admitted here")),
        ("modelpack-pickle-file", Err("layer pytorch_model.bin: path matches denied pattern *.bin")),
        ("kitops-pickle-model", Err("layer model.pkl: path matches denied pattern *.pkl")),
        ("modelpack-code-layer", Err("media type application/vnd.cncf.model.code.v1.tar matches denied pattern application/vnd.cncf.model.code.*")),
        ("kitops-prompt-layer", Err("media type application/vnd.kitops.modelkit.code.v1.tar matches denied pattern")),
        ("modelpack-no-license", Err("kind modelpack: model licenses missing")),
        ("kitops-nc-dataset", Err("kind kitops: model licenses = \"CC-BY-NC-4.0\" is not one of [Apache-2.0, MIT, CC-BY-4.0] (dataset \"train\")")),
        ("type-confusion", Err("type confusion: artifactType application/vnd.cncf.model.manifest.v1+json names kind modelpack")),
        ("oversize-declared", Err("more than max_layer_bytes 42949672960")),
    ] {
        let up = Mock::start().await;
        let d = seed(&up, fixture);
        let (g, _t) = gate_with_policy(&up, &MODEL_POLICY).await;
        let r = get(&g.url(&format!("/v2/models/{fixture}/manifests/v1"))).await;
        match expect {
            Ok(()) => {
                assert_eq!(r.status, StatusCode::OK, "{fixture}: {:?}", r.body);
                let audit = g.audit();
                let rec = audit
                    .iter()
                    .find(|a| a["digest"] == d.to_string().as_str())
                    .unwrap_or_else(|| panic!("{fixture}: {audit:?}"));
                assert_eq!(rec["decision"], "allow", "{fixture}");
                assert!(rec["models"][0]["kind"].is_string(), "{fixture}: {rec}");
            }
            Err(needle) => assert_denied(&r, needle),
        }
        if fixture == "oversize-declared" {
            assert_eq!(up.state.count("GET", "/blobs/"), 1, "only the config was read");
        }
        g.stop().await;
    }
}

#[tokio::test]
async fn pushes_are_decided_before_the_upstream_has_the_tag() {
    for (fixture, refusal) in [
        ("modelpack-raw", None),
        ("kitops", None),
        ("kitops-nc-dataset", Some("licenses = \"CC-BY-NC-4.0\"")),
        ("type-confusion", Some("type confusion")),
        (
            "modelpack-code-layer",
            Some("layer src/inference.py: media type"),
        ),
    ] {
        let up = Mock::start().await;
        for b in blobs_of(fixture) {
            up.state.add_blob(b);
        }
        let (m, media_type) = manifest_of(fixture);
        let (g, _t) = gate_with_policy(&up, &MODEL_POLICY).await;
        let r = send_body(
            Method::PUT,
            &g.url(&format!("/v2/models/{fixture}/manifests/v1")),
            &[("content-type", media_type.as_str())],
            m,
        )
        .await;
        let tagged = up
            .state
            .tags(&format!("models/{fixture}"))
            .contains(&"v1".to_string());
        match refusal {
            None => {
                assert_eq!(r.status, StatusCode::CREATED, "{fixture}: {:?}", r.body);
                assert!(tagged, "{fixture}");
                let audit = g.audit();
                let rec = audit.last().unwrap();
                assert_eq!(rec["action"], "push");
                assert!(rec["models"][0]["facts"]["licenses"].is_array(), "{rec}");
            }
            Some(needle) => {
                assert_denied(&r, needle);
                assert!(!tagged, "{fixture}: the upstream got a refused tag");
            }
        }
        g.stop().await;
    }
}

/// `modelgate check` shows the kind and facts; `policy lint` the kinds and
/// facts a rule checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_lint_show_kinds_and_facts() {
    let up = Mock::start().await;
    seed(&up, "kitops-nc-dataset");
    let tmp = tempfile::tempdir().unwrap();
    let policy = MODEL_POLICY.replace("local/models/**", "registry.test/models/**");
    std::fs::write(tmp.path().join("policy.toml"), &policy).unwrap();
    let cfg = check_config(tmp.path(), &up.url());
    let (code, out) = modelgate_cli([
        "check".as_ref(),
        "--config".as_ref(),
        cfg.as_os_str(),
        "registry.test/models/kitops-nc-dataset:v1".as_ref(),
    ]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("model   kitops: {"), "{out}");
    assert!(out.contains("\"format\":\"gguf\""), "{out}");
    assert!(
        out.contains("kind kitops: config /datasets/0/license = \"CC-BY-NC-4.0\" is not one of [CC-BY-4.0, Apache-2.0]"),
        "{out}"
    );
    let (code, out) = modelgate_cli([
        "policy".as_ref(),
        "lint".as_ref(),
        tmp.path().join("policy.toml").as_os_str(),
        "--config".as_ref(),
        cfg.as_os_str(),
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert_has_all(
        &out,
        &[
            "kinds admitted: docker-model, modelpack, kitops",
            "model licenses: each one of [Apache-2.0, MIT, CC-BY-4.0]",
            "model param_size: <= 70000000000 (optional)",
            "config of kitops /datasets/*/license: one of [CC-BY-4.0, Apache-2.0]",
            "layers: no media types [application/vnd.cncf.model.code.*",
        ],
    );
}

/// A weight layer whose descriptor declares 1 KiB but whose blob is 16 KiB:
/// the manifest passes the size limits, the blob is refused (announced
/// length) or cut off at the declared size (chunked), and never cached.
#[tokio::test]
async fn a_blob_larger_than_its_descriptor_is_cut_off_and_not_cached() {
    let fixture = "size-lie";
    let (m, media_type) = manifest_of(fixture);
    let doc: serde_json::Value = serde_json::from_slice(&m).unwrap();
    let lying = doc["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["size"] == 1024)
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    for chunked in [false, true] {
        let up = Mock::start().await;
        for b in blobs_of(fixture) {
            if Digest::of(&b).to_string() == lying && chunked {
                let n = b.len();
                up.state.add_faulty_blob(b, Fault::ShortChunked(n));
            } else {
                up.state.add_blob(b);
            }
        }
        up.state
            .add_manifest("models/size-lie", Some("v1"), m.clone(), &media_type);
        let (g, _t) = gate_with_policy(&up, &MODEL_POLICY).await;
        let r = get(&g.url("/v2/models/size-lie/manifests/v1")).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        let url = g.url(&format!("/v2/models/size-lie/blobs/{lying}"));
        for attempt in 0..2 {
            let r = get(&url).await;
            let whole = r.status == StatusCode::OK && r.body.as_ref().is_ok_and(|b| b.len() > 1024);
            assert!(
                !whole,
                "chunked={chunked} attempt {attempt}: the whole blob was served"
            );
            if !chunked {
                assert_eq!(r.status, StatusCode::BAD_GATEWAY);
                assert!(r.message().contains("declares 1024"), "{}", r.message());
            }
        }
        let fetched = up
            .state
            .seen()
            .iter()
            .filter(|s| s.method == Method::GET && s.path.ends_with(&lying))
            .count();
        assert_eq!(
            fetched, 2,
            "chunked={chunked}: a refused blob is not cached"
        );
        g.stop().await;
    }
}

/// Model configs carry GGUF metadata (chat templates): up to 4 MiB is read
/// and decided; one byte more is refused with the limit named.
#[tokio::test]
async fn configs_up_to_four_mib_are_read_and_larger_ones_refused() {
    const MAX: usize = 4 * 1024 * 1024;
    let up = Mock::start().await;
    for (tag, size) in [("fits", MAX), ("too-big", MAX + 1)] {
        let head = r#"{"config":{"format":"gguf","gguf":{"general.license":"MIT","tokenizer.chat_template":""#;
        let tail = r#""}},"descriptor":{"created":"2025-01-01T00:00:00Z"}}"#;
        let config = format!("{head}{}{tail}", "x".repeat(size - head.len() - tail.len()));
        assert_eq!(config.len(), size);
        let cd = up.state.add_blob(config.clone());
        let layer = up.state.add_blob(Bytes::from_static(b"GGUF weights"));
        let m = serde_json::json!({"schemaVersion": 2, "mediaType": OCI,
            "config": {"mediaType": "application/vnd.docker.ai.model.config.v0.1+json", "digest": cd.to_string(), "size": size},
            "layers": [{"mediaType": "application/vnd.docker.ai.gguf.v3", "digest": layer.to_string(), "size": 12}]});
        up.state.add_manifest(
            "models/big-config",
            Some(tag),
            serde_json::to_vec(&m).unwrap(),
            OCI,
        );
    }
    let (g, _t) = gate_with_policy(&up, &MODEL_POLICY).await;
    let r = get(&g.url("/v2/models/big-config/manifests/fits")).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = get(&g.url("/v2/models/big-config/manifests/too-big")).await;
    assert_denied(&r, "is larger than 4194304 bytes");
    g.stop().await;
}

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
