//! What a policy decision costs once the documents are at hand, per kind:
//! strict-parse the manifest and config, detect the kind, extract the model
//! facts and evaluate a model rule (kinds, facts, config pointers, layers),
//! next to the label rule of a container image (parse, read labels,
//! evaluate). Over the model fixtures. A cached decision runs none of this.

use criterion::{criterion_group, criterion_main, Criterion};
use modelgate::oci::json::parse_strict;
use modelgate::oci::kind::detect;
use modelgate::policy::eval::{evaluate, Evidence, ImageEvidence, ModelEvidence};
use modelgate::policy::facts::extract;
use modelgate::policy::Policy;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const LABEL_POLICY: &str = r#"default = "deny"
[[rules]]
name = "images"
repositories = ["local/models/**"]
[rules.labels]
"model.version"      = { semver = true }
"training.timestamp" = { rfc3339 = true }
"dataset.id"         = { regex = '^ds-[0-9]{8}$' }
"accuracy.test"      = { min = 0.90 }
"#;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

/// (manifest bytes, its media type, config bytes) of a model fixture.
fn documents(name: &str) -> (Vec<u8>, String, Vec<u8>) {
    let blob = |d: &str| {
        std::fs::read(
            fixture(name)
                .join("blobs/sha256")
                .join(d.trim_start_matches("sha256:")),
        )
        .unwrap()
    };
    let index: Value =
        serde_json::from_slice(&std::fs::read(fixture(name).join("index.json")).unwrap()).unwrap();
    let desc = &index["manifests"][0];
    let manifest = blob(desc["digest"].as_str().unwrap());
    let doc: Value = serde_json::from_slice(&manifest).unwrap();
    let config = blob(doc["config"]["digest"].as_str().unwrap());
    (manifest, desc["mediaType"].as_str().unwrap().into(), config)
}

/// One cold decision over documents already fetched.
fn decide(policy: &Policy, manifest: &[u8], media_type: &str, config: &[u8]) -> bool {
    let doc = parse_strict(manifest).unwrap();
    let config = parse_strict(config).unwrap();
    let labels: BTreeMap<String, String> = config["config"]["Labels"]
        .as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let rule = &policy.rules[0];
    let model = match detect(&doc, media_type) {
        Ok(kind) if rule.kinds.is_some() || rule.needs_model() => Some(ModelEvidence {
            facts: extract(&kind, &doc, &config, &labels),
            kind,
            config: Arc::new(config),
        }),
        _ => None,
    };
    let ev = Evidence {
        images: vec![ImageEvidence {
            platform: None,
            labels,
            model,
        }],
        ..Default::default()
    };
    evaluate(policy, "local/models/x", &ev).decision != modelgate::policy::Decision::Deny
}

fn bench(c: &mut Criterion) {
    let text = std::fs::read_to_string(fixture("policy.toml")).unwrap();
    let model_policy = Policy::parse(&text, Path::new("."), "bench").unwrap();
    let label_policy = Policy::parse(LABEL_POLICY, Path::new("."), "bench").unwrap();
    let mut g = c.benchmark_group("decide");
    // A labeled container image (the rule today's users run).
    let config = br#"{"architecture":"amd64","os":"linux","config":{"Labels":{"model.version":"v2.1.0","training.timestamp":"2024-04-05T10:30:00Z","dataset.id":"ds-20240401","accuracy.test":"0.963"}},"rootfs":{"type":"layers","diff_ids":["sha256:0000000000000000000000000000000000000000000000000000000000000000"]}}"#;
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","size":300},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222","size":1000}]}"#;
    let oci = "application/vnd.oci.image.manifest.v1+json";
    assert!(decide(&label_policy, manifest, oci, config));
    g.bench_function("image_label_rule", |b| {
        b.iter(|| decide(&label_policy, manifest, oci, config))
    });
    for (name, admitted) in [
        ("docker-model-v01", true),
        ("modelpack-raw", true),
        ("kitops", true),
        ("kitops-nc-dataset", false),
        ("oras-onnx", false),
    ] {
        let (m, mt, cfg) = documents(name);
        assert_eq!(decide(&model_policy, &m, &mt, &cfg), admitted, "{name}");
        g.bench_function(format!("model_rule_{name}"), |b| {
            b.iter(|| decide(&model_policy, &m, &mt, &cfg))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
