//! Signature verification against fixed cosign vectors made by another
//! implementation (tests/fixtures/cosign, cross-checked with sigstore-js).
//! Lenient cases go cosign's way: P1363 ECDSA signatures are accepted, and
//! `critical.identity.docker-reference` is not pinned.

use modelgate::oci::Digest;
use modelgate::trust::verify::{verify_bundle, verify_simple_signing, SIGNATURE_ANNOTATION};
use modelgate::trust::PublicKey;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cosign")
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Whether a legacy / OCI 1.1 signature manifest holds a valid signature.
fn legacy_valid(
    manifest: &[u8],
    payload: &[u8],
    key: &PublicKey,
    image: &Digest,
) -> Result<(), String> {
    let m: serde_json::Value = serde_json::from_slice(manifest).unwrap();
    let pd = Digest::of(payload).to_string();
    let mut errors = Vec::new();
    for l in m["layers"].as_array().unwrap() {
        if l["digest"] != pd.as_str() {
            errors.push("layer payload not in the vector".to_string());
            continue;
        }
        let sig = l["annotations"][SIGNATURE_ANNOTATION].as_str().unwrap();
        match verify_simple_signing(payload, sig, key, image) {
            Ok(()) => return Ok(()),
            Err(e) => errors.push(e.to_string()),
        }
    }
    Err(errors.join("; "))
}

#[test]
fn every_vector_gets_its_expected_result() {
    let manifest: serde_json::Value = serde_json::from_slice(&read("manifest.json")).unwrap();
    let image: Digest = String::from_utf8(read("image/digest.txt"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(Digest::of(&read("image/manifest.json")), image);
    let mut checked = 0;
    for v in manifest["vectors"].as_array().unwrap() {
        let id = v["id"].as_str().unwrap();
        let key = PublicKey::from_pem(
            &String::from_utf8(read(v["public_key"].as_str().unwrap())).unwrap(),
        )
        .unwrap();
        let files = &v["files"];
        let f = |k: &str| read(files[k].as_str().unwrap_or_else(|| panic!("{id}: no {k}")));
        let result = match v["format"].as_str().unwrap() {
            "legacy" => legacy_valid(&f("sig_manifest"), &f("payload"), &key, &image),
            "oci11" => {
                let m = f("referrer_manifest");
                let mv: serde_json::Value = serde_json::from_slice(&m).unwrap();
                assert_eq!(mv["subject"]["digest"], image.to_string(), "{id}");
                legacy_valid(&m, &f("payload"), &key, &image)
            }
            "bundle" => verify_bundle(&f("bundle"), &key, &image).map_err(|e| e.to_string()),
            other => panic!("unknown format {other}"),
        };
        let expected = v["expected"].as_str().unwrap();
        match expected {
            "valid" => assert!(result.is_ok(), "{id}: expected valid, got {result:?}"),
            "invalid" => assert!(result.is_err(), "{id}: expected invalid, but it verified"),
            other => panic!("{id}: unknown expectation {other}"),
        }
        checked += 1;
    }
    assert!(checked >= 35, "only {checked} vectors");
}

#[test]
fn reasons_are_specific() {
    let image: Digest = String::from_utf8(read("image/digest.txt"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let key =
        PublicKey::from_pem(&String::from_utf8(read("keys/ecdsa-p256.pub.pem")).unwrap()).unwrap();
    let e = verify_bundle(
        &read("vectors/ecdsa-p256-bundle-wrong-digest/bundle.json"),
        &key,
        &image,
    )
    .unwrap_err();
    assert!(e.to_string().contains("names sha256:ef35b706"), "{e}");
    let e = verify_bundle(
        &read("vectors/ecdsa-p256-bundle-wrong-payload-type/bundle.json"),
        &key,
        &image,
    )
    .unwrap_err();
    assert!(e.to_string().contains("payloadType"), "{e}");
    let e = verify_bundle(
        &read("vectors/ecdsa-p256-bundle-corrupt-signature/bundle.json"),
        &key,
        &image,
    )
    .unwrap_err();
    assert!(e.to_string().contains("does not verify"), "{e}");
    // The key hint of the vectors is cosign's: base64(SHA-256(SPKI DER)).
    assert_eq!(key.hint(), "Qk+bwMrwy/D3MmAxfRISZ5mVdy/DeFeqD94E+cfHGEI=");
}
