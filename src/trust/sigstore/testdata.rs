//! Test helpers: the keyless vectors in `tests/fixtures/keyless`.

use serde_json::Value;

use super::TrustedRoot;

/// A file under `tests/fixtures/keyless`.
pub fn fixture(rel: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/keyless")
            .join(rel),
    )
    .unwrap()
}

/// A vector's trusted root and its bundle's `verificationMaterial`.
pub fn material(name: &str) -> (TrustedRoot, Value) {
    let root = TrustedRoot::parse(&fixture(&format!("{name}/trusted_root.json"))).unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keyless")
        .join(name)
        .join("signature/blobs");
    let material = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            serde_json::from_slice::<Value>(&std::fs::read(e.unwrap().path()).unwrap()).ok()
        })
        .find(|b| b.get("verificationMaterial").is_some())
        .expect("a bundle blob")["verificationMaterial"]
        .clone();
    (root, material)
}
