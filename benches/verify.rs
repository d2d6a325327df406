//! What a signature check costs the gate, per signature: a keyed cosign
//! bundle (one ECDSA verification) against a keyless one (SET, inclusion
//! proof, checkpoint, Fulcio chain, SCT, statement — several verifications
//! and certificate parses) and Notation envelopes (chain links, leaf
//! signature, target), all over the fixture vectors. These are the cold
//! decision's CPU cost; a cached decision runs none of them.

use criterion::{criterion_group, criterion_main, Criterion};
use modelgate::oci::Digest;
use modelgate::trust::notation::{load_trust_store, verify_notation, Level, Target};
use modelgate::trust::sigstore::{verify_keyless, TrustedRoot};
use modelgate::trust::verify::verify_bundle;
use modelgate::trust::PublicKey;
use std::path::Path;

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(rel),
    )
    .unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The keyless vector's bundle blob (the one with `verificationMaterial`).
fn keyless_bundle() -> Vec<u8> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keyless/bundle-valid-uri/signature/blobs");
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .find(|b| b.windows(20).any(|w| w == b"verificationMaterial"))
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("verify_signature");
    let key =
        PublicKey::from_pem(std::str::from_utf8(&read("cosign/keys/ecdsa-p256.pub.pem")).unwrap())
            .unwrap();
    let keyed = read("cosign/vectors/ecdsa-p256-bundle-valid/bundle.json");
    let image: Digest = String::from_utf8(read("cosign/image/digest.txt"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    verify_bundle(&keyed, &key, &image).unwrap();
    g.bench_function("keyed_bundle", |b| {
        b.iter(|| verify_bundle(&keyed, &key, &image).unwrap())
    });
    let root = TrustedRoot::parse(&read("keyless/bundle-valid-uri/trusted_root.json")).unwrap();
    let bundle = keyless_bundle();
    let subject: Digest = "sha256:cfe33466e0d4f11ab4dc610563837fc323285cc3737ac14a0f98ff0545cf49a9"
        .parse()
        .unwrap();
    verify_keyless(&bundle, &root, &subject).unwrap();
    g.bench_function("keyless_bundle", |b| {
        b.iter(|| verify_keyless(&bundle, &root, &subject).unwrap())
    });
    for (case, name) in [
        ("jws-es256-valid", "notation_jws_es256"),
        ("jws-ps256-valid", "notation_jws_ps256"),
        ("cose-es256-valid", "notation_cose_es256"),
    ] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/notation")
            .join(case);
        let manifest: serde_json::Value =
            serde_json::from_slice(&read(&format!("notation/{case}/signature/manifest.json")))
                .unwrap();
        let layer = &manifest["layers"][0];
        let hex = layer["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:");
        let envelope = read(&format!("notation/{case}/signature/blobs/{hex}"));
        let media_type = layer["mediaType"].as_str().unwrap().to_string();
        let store = load_trust_store("acme", &[dir.join("truststore")]).unwrap();
        let target = Target {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: manifest["subject"]["digest"].as_str().unwrap().into(),
            size: manifest["subject"]["size"].as_u64().unwrap(),
        };
        let now = time::OffsetDateTime::now_utc();
        let run = || verify_notation(&envelope, &media_type, &target, &store, Level::Strict, now);
        run().unwrap();
        g.bench_function(name, |b| b.iter(|| run().unwrap()));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
