//! Keyless cosign signatures (Sigstore bundles with a Fulcio certificate)
//! through the gate, against vectors made by another implementation and
//! checked with sigstore-python (tests/fixtures/keyless): the signer counts
//! only when the bundle verifies against the policy's trusted root AND a
//! keyless entry of the rule accepts its issuer and subject. Both of
//! cosign's forms: a bundle referrer, and a legacy `.sig` layer.

use crate::policy::{assert_admitted_by, assert_denied, gate_with_policy};
use crate::support::*;
use bytes::Bytes;
use http::StatusCode;
use modelgate::oci::Digest;
use std::path::{Path, PathBuf};

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const WORKFLOW_RE: &str =
    r"https://github\.com/acme/models/\.github/workflows/release\.yml@refs/tags/v.*";
const GITHUB: &str = "https://token.actions.githubusercontent.com";

fn dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keyless")
        .join(case)
}

fn read(case: &str, rel: &str) -> Bytes {
    Bytes::from(std::fs::read(dir(case).join(rel)).unwrap())
}

/// The vector's image at `models/demo:v1.0.0` with its signature where
/// cosign puts it: a bundle through the tag-schema referrers index, a
/// legacy layer at the `.sig` tag. Returns the image digest.
fn seed(up: &Mock, case: &str) -> Digest {
    let repo = "models/demo";
    let d = up
        .state
        .add_manifest(repo, Some("v1.0.0"), read(case, "subject.json"), OCI);
    for blob in std::fs::read_dir(dir(case).join("signature/blobs")).unwrap() {
        up.state
            .add_blob(Bytes::from(std::fs::read(blob.unwrap().path()).unwrap()));
    }
    let sig = read(case, "signature/manifest.json");
    if case.starts_with("legacy-") {
        let tag = format!("{}.sig", d.tag_schema());
        up.state.add_manifest(repo, Some(&tag), sig, OCI);
        return d;
    }
    up.state.add_manifest(repo, None, sig, OCI);
    let referrers = read(case, "signature/referrers.json");
    up.state
        .add_manifest(repo, Some(&d.tag_schema()), referrers, INDEX);
    d
}

/// A policy trusting the vectors' fake Sigstore root, with `signers` as
/// the rule's `[rules.signatures]` body.
fn policy(signers: &str) -> String {
    format!(
        r#"default = "allow"
[trust.fake-sigstore]
trusted_root = "{}"
[[rules]]
name = "models"
repositories = ["local/models/**"]
[rules.signatures]
{signers}
"#,
        dir("bundle-valid-uri").join("trusted_root.json").display()
    )
}

fn keyless(issuer: &str, subject_regex: &str) -> String {
    format!(
        "[[rules.signatures.keyless]]\ntrust = \"fake-sigstore\"\nissuer = \"{issuer}\"\nsubject_regex = '{subject_regex}'\n"
    )
}

#[tokio::test]
async fn a_keyless_signature_by_an_accepted_identity_admits_the_image() {
    for (case, subject_regex) in [
        ("bundle-valid-uri", WORKFLOW_RE),
        ("bundle-valid-github-ext", WORKFLOW_RE),
        ("bundle-valid-email", r"model-signer@example\.test"),
        ("legacy-valid-uri", WORKFLOW_RE),
        ("legacy-valid-email", r"model-signer@example\.test"),
    ] {
        let up = Mock::start().await;
        let d = seed(&up, case);
        let c: serde_json::Value = serde_json::from_slice(&read(case, "case.json")).unwrap();
        let issuer = c["expected_issuer"].as_str().unwrap();
        let (g, _t) = gate_with_policy(&up, &policy(&keyless(issuer, subject_regex))).await;
        let path = "/v2/models/demo/manifests/v1.0.0";
        assert_admitted_by(&g, path, &read(case, "subject.json"), &d, "keyless").await;
        g.stop().await;
    }
}

#[tokio::test]
async fn a_valid_keyless_signature_by_another_identity_is_denied() {
    let up = Mock::start().await;
    seed(&up, "bundle-valid-uri");
    for (issuer, subject, why) in [
        // Another repository's workflow, same issuer.
        (
            GITHUB,
            r"https://github\.com/other/models/.*",
            "does not match subject_regex /^(?:https://github\\.com/other/models/.*)$/",
        ),
        // The right workflow vouched for by another issuer.
        (
            "https://accounts.example.test",
            WORKFLOW_RE,
            "does not match issuer \"https://accounts.example.test\"",
        ),
        // The regex is anchored: a prefix of the identity is not enough.
        (
            GITHUB,
            r"https://github\.com/acme/models",
            "does not match subject_regex",
        ),
    ] {
        let (g, _t) = gate_with_policy(&up, &policy(&keyless(issuer, subject))).await;
        let r = get(&g.url("/v2/models/demo/manifests/v1.0.0")).await;
        assert_denied(&r, "no valid signature by [keyless");
        let by = "keyless signature by https://github.com/acme/models/.github/workflows/release.yml@refs/tags/v1.0.0 (issuer https://token.actions.githubusercontent.com)";
        assert!(
            r.message().contains(&format!("{by} {why}")),
            "{subject}: {}",
            r.message()
        );
        g.stop().await;
    }
}

#[tokio::test]
async fn keyless_signatures_that_do_not_verify_are_denied_with_the_reason() {
    for (case, needle) in [
        (
            "bundle-untrusted-root",
            "does not chain to a certificate authority",
        ),
        ("bundle-time-outside-cert", "CertExpired"),
        ("bundle-no-sct", "no signed certificate timestamp"),
        ("bundle-cert-mismatch", "records another signature"),
        ("bundle-claim-digest", "signed payload names sha256:"),
        ("bundle-bad-set", "signed entry timestamp"),
        ("bundle-issuer-v1-mismatch", "issuer extensions disagree"),
        (
            "legacy-untrusted-root",
            "does not chain to a certificate authority",
        ),
        ("legacy-cert-mismatch", "records another signature"),
        ("legacy-claim-digest", "signed payload names sha256:"),
        (
            "legacy-wrong-log-id",
            "no entry from a log of the trusted root",
        ),
    ] {
        let up = Mock::start().await;
        seed(&up, case);
        let (g, _t) = gate_with_policy(&up, &policy(&keyless(GITHUB, WORKFLOW_RE))).await;
        let r = get(&g.url("/v2/models/demo/manifests/v1.0.0")).await;
        assert_denied(&r, needle);
        assert!(
            g.metric(
                "modelgate_signature_verifications_total{kind=\"keyless\",result=\"invalid\"}"
            ) >= 1.0
        );
        g.stop().await;
    }
}

#[tokio::test]
async fn a_keyless_signer_is_one_of_the_distinct_signers_min_counts() {
    let up = Mock::start().await;
    seed(&up, "bundle-valid-uri");
    let key = crate::policy::fx_str("keys/ecdsa-p256.pub.pem");
    let text = policy(&format!(
        "keys = [\"release\"]\nmin = 2\n{}",
        keyless(GITHUB, WORKFLOW_RE)
    ))
    .replace(
        "[[rules]]",
        &format!("[keys]\nrelease = \"\"\"{key}\"\"\"\n[[rules]]"),
    );
    let (g, _t) = gate_with_policy(&up, &text).await;
    let r = get(&g.url("/v2/models/demo/manifests/v1.0.0")).await;
    assert_denied(&r, "1 of 2 required signatures");
    assert!(
        r.message()
            .contains("valid: keyless:https://github.com/acme/models/"),
        "{}",
        r.message()
    );
    g.stop().await;
}

#[tokio::test]
async fn github_pins_must_all_hold() {
    let pinned = |pins: &str| format!("{}github = {{ {pins} }}\n", keyless(GITHUB, WORKFLOW_RE));
    for (case, pins, admitted) in [
        (
            "bundle-valid-github-ext",
            r#"repository = "acme/models", trigger = "push""#,
            true,
        ),
        (
            "bundle-valid-github-ext",
            r#"ref = "refs/tags/v1.0.0", runner_environment = "github-hosted""#,
            true,
        ),
        (
            "bundle-valid-github-ext",
            r#"repository = "acme/models", trigger = "pull_request""#,
            false,
        ),
        (
            "bundle-valid-github-ext",
            r#"repository = "other/models""#,
            false,
        ),
        // A certificate without GitHub facts cannot satisfy a pin.
        ("bundle-valid-uri", r#"repository = "acme/models""#, false),
    ] {
        let up = Mock::start().await;
        seed(&up, case);
        let (g, _t) = gate_with_policy(&up, &policy(&pinned(pins))).await;
        let r = get(&g.url("/v2/models/demo/manifests/v1.0.0")).await;
        if admitted {
            assert_eq!(r.status, StatusCode::OK, "{case} {pins}: {:?}", r.body);
        } else {
            assert_denied(&r, "(github ");
            assert!(
                r.message().contains("does not hold github."),
                "{}",
                r.message()
            );
        }
        g.stop().await;
    }
}

#[tokio::test]
async fn a_tag_is_pushed_only_when_an_accepted_keyless_signature_is_upstream() {
    let ct = [("content-type", OCI)];
    for (case, subject_regex, admitted) in [
        ("bundle-valid-uri", WORKFLOW_RE, true),
        ("legacy-valid-uri", WORKFLOW_RE, true),
        ("bundle-valid-uri", r"https://github\.com/other/.*", false),
        ("legacy-valid-uri", r"https://github\.com/other/.*", false),
    ] {
        let up = Mock::start().await;
        let d = seed(&up, case);
        up.state
            .add_referenced_stand_ins(&read(case, "subject.json"));
        let (g, _t) = gate_with_policy(&up, &policy(&keyless(GITHUB, subject_regex))).await;
        let r = send_body(
            http::Method::PUT,
            &g.url(&format!("/v2/models/demo/manifests/{d}?tag=release")),
            &ct,
            read(case, "subject.json"),
        )
        .await;
        let tagged = up
            .state
            .tags("models/demo")
            .contains(&"release".to_string());
        if admitted {
            assert_eq!(r.status, StatusCode::CREATED, "{case}: {:?}", r.body);
            assert!(tagged, "{case}");
        } else {
            assert_denied(&r, "does not match subject_regex");
            assert!(
                !tagged,
                "{case}: the upstream got the tag of a refused push"
            );
        }
        g.stop().await;
    }
}

/// A trusted root is reloaded with the policy: replacing the file (not the
/// policy) redecides, here with a root that does not hold the vector's log.
#[tokio::test]
async fn replacing_the_trusted_root_file_redecides() {
    let up = Mock::start().await;
    seed(&up, "bundle-valid-uri");
    let roots = tempfile::tempdir().unwrap();
    let root = roots.path().join("root.json");
    std::fs::copy(dir("bundle-valid-uri").join("trusted_root.json"), &root).unwrap();
    let text = policy(&keyless(GITHUB, WORKFLOW_RE)).replace(
        &dir("bundle-valid-uri")
            .join("trusted_root.json")
            .display()
            .to_string(),
        &root.display().to_string(),
    );
    let (g, _t) = gate_with_policy(&up, &text).await;
    let url = g.url("/v2/models/demo/manifests/v1.0.0");
    assert_eq!(get(&url).await.status, StatusCode::OK);
    // Written whole, renamed into place, as an operator refreshes it.
    let fresh = roots.path().join("root.json.new");
    std::fs::copy(dir("public-good-trusted_root.json"), &fresh).unwrap();
    std::fs::rename(&fresh, &root).unwrap();
    let mut last = None;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let r = get(&url).await;
        if r.status == StatusCode::FORBIDDEN {
            last = Some(r);
            break;
        }
    }
    let r = last.expect("the new trusted root was not picked up");
    assert_denied(&r, "which the trusted root does not hold");
    assert_eq!(
        g.metric("modelgate_policy_reloads_total{result=\"success\"}"),
        1.0
    );
    g.stop().await;
}
