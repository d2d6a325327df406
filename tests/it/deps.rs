//! Dependency hygiene, from `cargo metadata` of the locked tree: every
//! crate's license is one modelgate can ship under (Apache-2.0 / MIT), there
//! is one generation of each crypto crate (one RustCrypto generation, one
//! ring, one rustls), and other duplicate versions are the known ones.
//! Advisory data needs the network, so RUSTSEC checks are not run here.

use std::collections::{BTreeMap, BTreeSet};

/// Licenses every dependency may be under (SPDX identifiers).
const ALLOWED: [&str; 13] = [
    "MIT",
    "Apache-2.0",
    "Apache-2.0 WITH LLVM-exception",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "BSD-1-Clause",
    "ISC",
    "Unicode-3.0",
    "Unlicense",
    "Zlib",
    "CC0-1.0",
    // webpki-roots: the Mozilla root list's data license.
    "CDLA-Permissive-2.0",
    // xxhash-rust (under redis): the Boost license, permissive like MIT.
    "BSL-1.0",
];

/// Crates of which exactly one version may be linked.
const SINGLE: [&str; 16] = [
    "sha2",
    "digest",
    "p256",
    "p384",
    "p521",
    "ecdsa",
    "elliptic-curve",
    "ed25519-dalek",
    "signature",
    "ring",
    "rustls",
    "rustls-webpki",
    "x509-cert",
    "der",
    "spki",
    "crypto-bigint",
];

/// Duplicates known and accepted (build-time or OS-specific crates, or
/// transitive bumps no crypto code depends on).
const KNOWN_DUPLICATES: [&str; 6] = [
    "base64",
    "getrandom",
    "hashbrown",
    "syn",
    "synstructure",
    "windows-sys",
];

/// Whether an SPDX-ish expression can be satisfied with allowed licenses:
/// one `OR` alternative whose `AND` parts are all allowed.
fn satisfiable(expr: &str) -> bool {
    let e = expr.replace(['(', ')'], " ");
    e.split(" OR ")
        .flat_map(|a| a.split('/'))
        .any(|alt| alt.split(" AND ").all(|p| ALLOWED.contains(&p.trim())))
}

#[test]
fn dependencies_are_licensed_and_crypto_is_one_generation() {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut versions: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut refused = Vec::new();
    for p in m["packages"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap().to_string();
        versions
            .entry(name.clone())
            .or_default()
            .insert(p["version"].as_str().unwrap().to_string());
        if name == "modelgate" {
            continue;
        }
        match p["license"].as_str() {
            Some(l) if satisfiable(l) => {}
            l => refused.push(format!("{name}: {l:?}")),
        }
    }
    assert!(
        refused.is_empty(),
        "licenses outside the allow list: {refused:#?}"
    );
    for c in SINGLE {
        let v = versions.get(c).map(BTreeSet::len).unwrap_or(0);
        assert!(v <= 1, "{c} is linked in {v} versions: {:?}", versions[c]);
    }
    let dups: Vec<&String> = versions
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(k, _)| k)
        .filter(|k| !KNOWN_DUPLICATES.contains(&k.as_str()))
        .collect();
    assert!(dups.is_empty(), "new duplicate crate versions: {dups:?}");
    assert!(
        satisfiable("MIT OR Apache-2.0")
            && !satisfiable("GPL-3.0")
            && !satisfiable("MIT AND GPL-2.0")
    );
}
