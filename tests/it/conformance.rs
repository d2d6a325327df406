//! The sigstore-conformance bundle-verify suite (70 cases from the project
//! every Sigstore client is tested with), run against `modelgate
//! verify-bundle` the way the suite's runner does: a case whose name ends
//! in `_fail` must be rejected, every other case verified. Valid and
//! invalid cases are scored apart, because a verifier that rejects
//! everything gets every invalid case right.

use crate::support::process::modelgate_cli;
use std::path::{Path, PathBuf};

const IDENTITY: &str = "https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/.github/workflows/extremely-dangerous-oidc-beacon.yml@refs/heads/main";
const ISSUER: &str = "https://token.actions.githubusercontent.com";

fn suite() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sigstore-conformance")
}

/// The command-line arguments the conformance runner passes for a case.
fn case_args(case: &Path) -> Vec<String> {
    let file = |name: &str| Some(case.join(name)).filter(|p| p.exists());
    let text = |name: &str, default: &str| {
        file(name).map_or(default.to_string(), |p| {
            std::fs::read_to_string(p).unwrap().trim().to_string()
        })
    };
    let mut args = vec!["verify-bundle".to_string(), "--bundle".into()];
    args.push(case.join("bundle.sigstore.json").display().to_string());
    match file("key.pub") {
        Some(k) => args.extend(["--key".into(), k.display().to_string()]),
        None => args.extend([
            "--certificate-identity".into(),
            text("identity", IDENTITY),
            "--certificate-oidc-issuer".into(),
            text("issuer", ISSUER),
        ]),
    }
    let root =
        file("trusted_root.json").unwrap_or_else(|| suite().join("public-good-trusted_root.json"));
    args.extend(["--trusted-root".into(), root.display().to_string()]);
    let artifact = file("artifact").unwrap_or_else(|| suite().join("bundle-verify/a.txt"));
    args.push(artifact.display().to_string());
    args
}

#[test]
fn every_conformance_case_gets_the_expected_verdict() {
    let dir = suite().join("bundle-verify");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert_eq!(cases.len(), 70, "the suite ships 70 cases");
    let (mut valid, mut invalid) = ((0, 0), (0, 0));
    let mut wrong = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let must_fail = name.ends_with("_fail");
        let (code, out) = modelgate_cli(case_args(case));
        let verified = code == Some(0);
        let tally = if must_fail { &mut invalid } else { &mut valid };
        tally.1 += 1;
        if verified != must_fail {
            tally.0 += 1;
        } else {
            wrong.push(format!("{name}: {}", out.trim()));
        }
        if !verified {
            assert!(
                matches!(code, Some(1) | Some(2)) && out.contains("modelgate"),
                "{name}: a refusal exits 1 or 2 and says why: {code:?} {out}"
            );
        }
    }
    eprintln!(
        "valid bundles verified: {}/{}; invalid bundles rejected: {}/{}",
        valid.0, valid.1, invalid.0, invalid.1
    );
    assert_eq!((valid, invalid), ((21, 21), (49, 49)), "{wrong:#?}");
}

#[test]
fn verify_bundle_says_who_signed_or_why_not() {
    let happy = suite().join("bundle-verify/happy-path-v0.3");
    let (code, out) = modelgate_cli(case_args(&happy));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(IDENTITY) && out.contains("log entry"), "{out}");

    // The right bundle for another identity: rejected, naming both.
    let mut args = case_args(&happy);
    let i = args.iter().position(|a| a == IDENTITY).unwrap();
    args[i] = "https://github.com/acme/models/.github/workflows/release.yml@refs/heads/main".into();
    let (code, out) = modelgate_cli(&args);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("not verified") && out.contains("acme/models"),
        "{out}"
    );

    // A file that is not there is unusable input, not a verdict.
    let mut args = case_args(&happy);
    *args.last_mut().unwrap() = "/nonexistent/artifact".into();
    let (code, out) = modelgate_cli(&args);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("/nonexistent/artifact"), "{out}");

    // By digest instead of by file.
    let mut args = case_args(&happy);
    let a = std::fs::read(args.last().unwrap()).unwrap();
    *args.last_mut().unwrap() = format!("sha256:{}", sha256_hex(&a));
    let (code, out) = modelgate_cli(&args);
    assert_eq!(code, Some(0), "{out}");
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}
