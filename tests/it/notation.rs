//! Notation (Notary Project) signatures through the gate, against vectors
//! made by another implementation (tests/fixtures/notation, incl.
//! notation-go's own envelopes): a Notation referrer counts only when its
//! envelope verifies, its chain reaches the rule's trust store, and an
//! identity of the rule's entry matches the leaf's subject. On pull and on
//! push.

use crate::policy::{assert_admitted_by, assert_denied, gate_with_policy};
use crate::support::*;
use bytes::Bytes;
use http::{Method, StatusCode};
use modelgate::oci::Digest;
use std::path::{Path, PathBuf};

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/notation")
        .join(case)
}

fn read(case: &str, rel: &str) -> Bytes {
    Bytes::from(std::fs::read(dir(case).join(rel)).unwrap())
}

fn case_json(case: &str) -> serde_json::Value {
    serde_json::from_slice(&read(case, "case.json")).unwrap()
}

/// The vector's image in `models/demo` (under `tag`, if any) with its
/// Notation referrer behind the tag-schema referrers index.
fn seed(up: &Mock, case: &str, tag: Option<&str>) -> Digest {
    let repo = "models/demo";
    let d = up
        .state
        .add_manifest(repo, tag, read(case, "subject.json"), OCI);
    for blob in std::fs::read_dir(dir(case).join("signature/blobs")).unwrap() {
        up.state
            .add_blob(Bytes::from(std::fs::read(blob.unwrap().path()).unwrap()));
    }
    up.state
        .add_manifest(repo, None, read(case, "signature/manifest.json"), OCI);
    up.state.add_manifest(
        repo,
        Some(&d.tag_schema()),
        read(case, "signature/referrers.json"),
        INDEX,
    );
    d
}

/// A policy whose rule accepts `identity` from the case's trust store at
/// `level`.
fn policy(case: &str, identity: &str, level: &str) -> String {
    format!(
        r#"default = "allow"
[trust.acme]
notation_certs = ["{}"]
[[rules]]
name = "models"
repositories = ["local/models/**"]
[rules.signatures]
[[rules.signatures.notation]]
trust = "acme"
identities = ["{identity}"]
level = "{level}"
"#,
        dir(case).join("truststore").display()
    )
}

fn trusted_identity(case: &str) -> String {
    case_json(case)["trusted_identity"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn a_notation_signature_by_a_trusted_identity_admits_the_image() {
    for case in [
        "jws-es256-valid",
        "jws-es384-valid",
        "jws-ps256-valid",
        "cose-es256-valid",
        "notation-go-jws",
        "notation-go-cose",
    ] {
        let up = Mock::start().await;
        let d = seed(&up, case, Some("v1.0.0"));
        let text = policy(case, &trusted_identity(case), "strict");
        let (g, _t) = gate_with_policy(&up, &text).await;
        let path = "/v2/models/demo/manifests/v1.0.0";
        assert_admitted_by(&g, path, &read(case, "subject.json"), &d, "notation").await;
        g.stop().await;
    }
}

#[tokio::test]
async fn notation_signatures_that_do_not_hold_are_denied_with_the_reason() {
    for (case, needle) in [
        ("jws-bad-signature", "does not verify with the leaf"),
        ("cose-bad-signature", "does not verify with the leaf"),
        ("jws-wrong-digest", "notation signature names sha256:"),
        ("jws-tamper-payload-size", "398 bytes"),
        ("jws-expired-cert", "is not valid now"),
        (
            "jws-untrusted-root",
            "certificate chain does not end in trust store \"acme\"",
        ),
        ("jws-missing-crit", "is not marked critical"),
    ] {
        let up = Mock::start().await;
        seed(&up, case, Some("v1.0.0"));
        let text = policy(case, &trusted_identity(case), "strict");
        let (g, _t) = gate_with_policy(&up, &text).await;
        let r = get(&g.url("/v2/models/demo/manifests/v1.0.0")).await;
        assert_denied(&r, "no valid signature by [notation x509.subject");
        assert!(r.message().contains(needle), "{case}: {}", r.message());
        assert!(
            g.metric(
                "modelgate_signature_verifications_total{kind=\"notation\",result=\"invalid\"}"
            ) >= 1.0
        );
        g.stop().await;
    }
}

#[tokio::test]
async fn identities_and_levels_decide_whom_a_valid_signature_counts_for() {
    let up = Mock::start().await;
    seed(&up, "jws-es256-valid", Some("v1.0.0"));
    // A valid signature by a subject the entry does not name.
    let other = "x509.subject: C=US, ST=WA, O=Another Org";
    let (g, _t) = gate_with_policy(&up, &policy("jws-es256-valid", other, "strict")).await;
    let r = get(&g.url("/v2/models/demo/manifests/v1.0.0")).await;
    assert_denied(&r, "matches none of the identities");
    assert!(r.message().contains("O=ModelGate Test"), "{}", r.message());
    g.stop().await;
    // "*": any certificate of the trust store.
    let (g, _t) = gate_with_policy(&up, &policy("jws-es256-valid", "*", "strict")).await;
    let r = get(&g.url("/v2/models/demo/manifests/v1.0.0")).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    g.stop().await;

    // An expired certificate: denied at strict, admitted at permissive.
    let up = Mock::start().await;
    seed(&up, "jws-expired-cert", Some("v1.0.0"));
    let id = trusted_identity("jws-expired-cert");
    let (g, _t) = gate_with_policy(&up, &policy("jws-expired-cert", &id, "permissive")).await;
    let r = get(&g.url("/v2/models/demo/manifests/v1.0.0")).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    g.stop().await;

    // An untrusted root at audit: verified, reported, never counted.
    let up = Mock::start().await;
    seed(&up, "jws-untrusted-root", Some("v1.0.0"));
    let id = trusted_identity("jws-untrusted-root");
    let (g, _t) = gate_with_policy(&up, &policy("jws-untrusted-root", &id, "audit")).await;
    let r = get(&g.url("/v2/models/demo/manifests/v1.0.0")).await;
    assert_denied(&r, "is only audited");
    g.stop().await;
}

#[tokio::test]
async fn a_tag_is_pushed_only_when_a_trusted_notation_signature_is_upstream() {
    let case = "jws-es256-valid";
    let ct = [("content-type", OCI)];
    for (identity, admitted) in [
        (trusted_identity(case), true),
        (
            "x509.subject: C=US, ST=WA, O=Another Org".to_string(),
            false,
        ),
    ] {
        let up = Mock::start().await;
        let d = seed(&up, case, None);
        up.state
            .add_referenced_stand_ins(&read(case, "subject.json"));
        let (g, _t) = gate_with_policy(&up, &policy(case, &identity, "strict")).await;
        let r = send_body(
            Method::PUT,
            &g.url(&format!("/v2/models/demo/manifests/{d}?tag=v1.0.0")),
            &ct,
            read(case, "subject.json"),
        )
        .await;
        let tagged = up.state.tags("models/demo").contains(&"v1.0.0".to_string());
        if admitted {
            assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
            assert!(tagged);
        } else {
            assert_denied(&r, "matches none of the identities");
            assert!(!tagged, "the upstream got the tag of a refused push");
        }
        g.stop().await;
    }
}

/// `modelgate check` says which signature matched which entry, and why
/// another did not (human and JSON).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_explains_which_notation_signer_matched() {
    let case = "jws-es256-valid";
    let up = Mock::start().await;
    seed(&up, case, Some("v1.0.0"));
    let tmp = tempfile::tempdir().unwrap();
    let cfg = check_config(tmp.path(), &up.url());
    let image = "registry.test/models/demo:v1.0.0";
    let run = |identity: &str, json: bool| {
        let text =
            policy(case, identity, "strict").replace("local/models/**", "registry.test/models/**");
        std::fs::write(tmp.path().join("policy.toml"), text).unwrap();
        let mut args = vec!["check", "--config", cfg.to_str().unwrap(), image];
        if json {
            args.push("--json");
        }
        modelgate_cli(args)
    };
    let (code, out) = run(&trusted_identity(case), false);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("+ notation signature by \"CN=modelgate-signer,O=ModelGate Test,L=Seattle,ST=WA,C=US\" matches x509.subject"),
        "{out}"
    );
    let (code, out) = run("x509.subject: C=US, ST=WA, O=Another Org", true);
    assert_eq!(code, Some(1), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let notes = v["signature_notes"].to_string();
    assert!(notes.contains("matches none of the identities"), "{notes}");
    assert_eq!(v["signature_matches"], serde_json::json!([]));
}
