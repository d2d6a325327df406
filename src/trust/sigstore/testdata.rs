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

/// A vector's trusted root.
pub fn root(name: &str) -> TrustedRoot {
    TrustedRoot::parse(&fixture(&format!("{name}/trusted_root.json"))).unwrap()
}

/// The bytes of a vector's bundle (the blob with `verificationMaterial`).
pub fn bundle(name: &str) -> Vec<u8> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keyless")
        .join(name)
        .join("signature/blobs");
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .find(|b| {
            serde_json::from_slice::<Value>(b)
                .is_ok_and(|v| v.get("verificationMaterial").is_some())
        })
        .expect("a bundle blob")
}

/// A vector's trusted root and its bundle's `verificationMaterial`.
pub fn material(name: &str) -> (TrustedRoot, Value) {
    let b: Value = serde_json::from_slice(&bundle(name)).unwrap();
    (root(name), b["verificationMaterial"].clone())
}
