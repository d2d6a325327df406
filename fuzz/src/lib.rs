//! What each fuzz target feeds: one function per parser family, shared by
//! the AFL binaries (`src/bin/*.rs`) and replayable on a corpus without
//! AFL (`cargo run --bin replay -- TARGET FILE...`).

use modelgate::oci::{
    json::parse_strict, media::ManifestSummary, Digest, ImageRef, Reference, RepoName,
};
use modelgate::policy::Policy;
use modelgate::trust::notation::{self, Level, Target, TrustStore};
use modelgate::trust::sigstore::{self, TrustedRoot};
use std::path::Path;
use std::sync::OnceLock;

fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// Repository names, references, image references, digests, Range headers.
pub fn names(data: &[u8]) {
    let s = text(data);
    let _ = RepoName::parse(&s);
    let _ = Reference::parse(&s);
    let _ = ImageRef::parse(&s);
    let _ = s.parse::<Digest>();
    if let Some(Ok((a, b))) = modelgate::server::blobs::parse_range(&s, 1000) {
        assert!(a <= b && b < 1000);
    }
}

/// Manifests, indexes and configs: strict JSON, the summary the proxy
/// routes by, the kind and the model facts.
pub fn documents(data: &[u8]) {
    let _ = ManifestSummary::parse(data);
    if let Ok(doc) = parse_strict(data) {
        for ct in [
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.index.v1+json",
        ] {
            if let Ok(kind) = modelgate::oci::kind::detect(&doc, ct) {
                let f = modelgate::policy::facts::extract(&kind, &doc, &doc, &Default::default());
                let _ = f.summary();
            }
        }
        let _ = modelgate::policy::facts::pointer(&doc, "/datasets/*/license");
    }
}

/// Policy files.
pub fn policy(data: &[u8]) {
    let _ = Policy::parse(&text(data), Path::new("."), "fuzz.toml");
}

fn fixtures() -> &'static Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures"))
}

fn keyless_root() -> &'static TrustedRoot {
    static ROOT: OnceLock<TrustedRoot> = OnceLock::new();
    ROOT.get_or_init(|| {
        TrustedRoot::parse(
            &std::fs::read(fixtures().join("keyless/bundle-valid-uri/trusted_root.json")).unwrap(),
        )
        .unwrap()
    })
}

/// Sigstore bundles (keyless image signatures and any artifact), trusted
/// roots, cosign simple-signing payloads and keyed bundles.
pub fn sigstore(data: &[u8]) {
    let image: Digest = "sha256:cfe33466e0d4f11ab4dc610563837fc323285cc3737ac14a0f98ff0545cf49a9"
        .parse()
        .unwrap();
    let _ = sigstore::verify_keyless(data, keyless_root(), &image);
    let _ = TrustedRoot::parse(data);
    let artifact = sigstore::bundle::Artifact {
        sha256: [7; 32],
        bytes: Some(b"a"),
    };
    let _ = sigstore::bundle::verify_sigstore_bundle(
        data,
        keyless_root(),
        sigstore::bundle::Signer::Certificate,
        &artifact,
        sigstore::bundle::Purpose::Artifact,
    );
    if let Ok(k) = modelgate::trust::PublicKey::from_pem(&text(data)) {
        let _ = k.hint();
    }
}

fn notation_store() -> &'static TrustStore {
    static STORE: OnceLock<TrustStore> = OnceLock::new();
    STORE.get_or_init(|| {
        notation::load_trust_store(
            "fuzz",
            &[fixtures().join("notation/jws-es256-valid/truststore")],
        )
        .unwrap()
    })
}

/// Notation envelopes (JWS and COSE) and distinguished names.
pub fn notation(data: &[u8]) {
    let target = Target {
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        digest: "sha256:cfe33466e0d4f11ab4dc610563837fc323285cc3737ac14a0f98ff0545cf49a9".into(),
        size: 397,
    };
    let now = time::OffsetDateTime::now_utc();
    for mt in [notation::JWS, notation::COSE] {
        let _ = notation::verify_notation(data, mt, &target, notation_store(), Level::Audit, now);
    }
    let _ = notation::parse_dn(&text(data));
}

/// DER: the CMS walker, certificate keys, RFC 3161 tokens.
pub fn der(data: &[u8]) {
    use modelgate::trust::x509::{CertKey, Tlv};
    if let Ok((t, _)) = Tlv::next(data) {
        let _ = t.children();
    }
    let _ = CertKey::of_cert(data);
    let _ = sigstore::tsa::verify_timestamp(data, b"signature", keyless_root());
}

/// Runs `target` on `data` by name (for `replay`).
pub fn run(target: &str, data: &[u8]) -> bool {
    match target {
        "names" => names(data),
        "documents" => documents(data),
        "policy" => policy(data),
        "sigstore" => sigstore(data),
        "notation" => notation(data),
        "der" => der(data),
        "shared" => shared(data),
        _ => return false,
    }
    true
}

pub const TARGETS: [&str; 7] = [
    "names",
    "documents",
    "policy",
    "sigstore",
    "notation",
    "der",
    "shared",
];

/// What a shared bucket answers (S3 XML listings, uploads, errors) and the
/// SigV4 encoding of keys and query values built from names.
pub fn shared(data: &[u8]) {
    use modelgate::shared::bucket::{parse_xml, InitiateResult, ListResult, UploadsResult};
    use modelgate::shared::sigv4::{canonical_query, encode_path};
    let _ = parse_xml::<ListResult>(data);
    let _ = parse_xml::<UploadsResult>(data);
    let _ = parse_xml::<InitiateResult>(data);
    let s = text(data);
    let p = encode_path(&s);
    assert!(p
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || b"-._~%/".contains(&c)));
    let _ = canonical_query(&[("prefix", &s), ("uploads", "")]);
}
