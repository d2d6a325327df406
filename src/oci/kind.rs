//! What a manifest is: a container image, a model in one of the formats
//! model tools push (Docker Model Runner, CNCF ModelPack and its pre-rename
//! CNAI form, KitOps ModelKit), a generic OCI artifact (ORAS), or a
//! signature. Decided once per manifest from `config.mediaType`,
//! cross-checked with `artifactType`; the HTTP `Content-Type` stands in for
//! a body without `mediaType` (KitOps). Pure.
//!
//! Invariant: a manifest whose `artifactType` names one kind and whose
//! config names another is a type confusion, never a kind.

use serde_json::Value;

/// The kinds a rule can list (`kinds = [...]`).
pub const KIND_NAMES: [&str; 7] = [
    "image",
    "docker-model",
    "modelpack",
    "kitops",
    "artifact",
    "signature",
    "index",
];

const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";

/// A manifest's kind, with what tells its variants apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A container image; `ollama` when its layers are Ollama's.
    Image {
        ollama: bool,
    },
    /// Docker Model Runner (config `...docker.ai.model.config.v0.x`).
    DockerModel {
        version: String,
    },
    /// CNCF ModelPack; `cnai` for the names before the 2025 rename.
    ModelPack {
        cnai: bool,
    },
    KitOps,
    /// Any other artifact: its `artifactType` (or config media type).
    Artifact {
        artifact_type: String,
    },
    /// A cosign or Notation signature, a Sigstore bundle.
    Signature,
    /// An image index (its children are decided each).
    Index,
}

impl Kind {
    /// The name rules use.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Image { .. } => "image",
            Kind::DockerModel { .. } => "docker-model",
            Kind::ModelPack { .. } => "modelpack",
            Kind::KitOps => "kitops",
            Kind::Artifact { .. } => "artifact",
            Kind::Signature => "signature",
            Kind::Index => "index",
        }
    }

    /// The name with its variant, for messages and the audit log:
    /// `docker-model (v0.1)`, `artifact (application/vnd.unknown.artifact.v1)`.
    pub fn describe(&self) -> String {
        match self {
            Kind::Image { ollama: true } => "image (ollama)".into(),
            Kind::DockerModel { version } => format!("docker-model ({version})"),
            Kind::ModelPack { cnai: true } => "modelpack (cnai, before the rename)".into(),
            Kind::Artifact { artifact_type } => format!("artifact ({artifact_type})"),
            k => k.name().into(),
        }
    }

    /// Whether a rule's `kinds` entry admits this kind: a kind name, or
    /// `artifact:<artifactType>` for one artifact type only.
    pub fn admitted_by(&self, entry: &str) -> bool {
        match (self, entry.split_once(':')) {
            (Kind::Artifact { artifact_type }, Some(("artifact", t))) => t == artifact_type,
            (_, Some(_)) => false,
            (k, None) => k.name() == entry,
        }
    }
}

/// The kind a media type names (an `artifactType` or a config type).
fn named_by(media_type: &str) -> Option<Kind> {
    let t = media_type;
    Some(
        if let Some(v) = t.strip_prefix("application/vnd.docker.ai.model.config.") {
            Kind::DockerModel {
                version: v.trim_end_matches("+json").to_string(),
            }
        } else if t.starts_with("application/vnd.cncf.model.") {
            Kind::ModelPack { cnai: false }
        } else if t.starts_with("application/vnd.cnai.model.") {
            Kind::ModelPack { cnai: true }
        } else if t.starts_with("application/vnd.kitops.modelkit.")
            || t == "application/vnd.jozu.model.config.v1+json"
        {
            Kind::KitOps
        } else if t == "application/vnd.oci.image.config.v1+json"
            || t == "application/vnd.docker.container.image.v1+json"
        {
            Kind::Image { ollama: false }
        } else if t.starts_with("application/vnd.dev.sigstore.bundle")
            || t == "application/vnd.dev.cosign.artifact.sig.v1+json"
            || t == "application/vnd.cncf.notary.signature"
        {
            Kind::Signature
        } else {
            return None;
        },
    )
}

fn same_kind(a: &Kind, b: &Kind) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
        && !matches!((a, b), (Kind::ModelPack { cnai: x }, Kind::ModelPack { cnai: y }) if x != y)
}

/// The kind of a manifest (`doc`, parsed), served with `content_type`.
/// `Err` says why the document is a type confusion.
pub fn detect(doc: &Value, content_type: &str) -> Result<Kind, String> {
    let body_type = doc["mediaType"].as_str().unwrap_or(content_type);
    if doc.get("manifests").is_some() || body_type.contains("index") || body_type.contains("list") {
        return Ok(Kind::Index);
    }
    let config = doc["config"]["mediaType"].as_str().unwrap_or_default();
    let artifact_type = doc["artifactType"].as_str();
    let by_config = named_by(config);
    let by_artifact = artifact_type.and_then(named_by);
    let kind = match (by_artifact, by_config) {
        (Some(a), Some(c)) if !same_kind(&a, &c) => {
            return Err(format!(
                "type confusion: artifactType {} names kind {} but config {config} names kind {}",
                artifact_type.unwrap_or_default(),
                a.describe(),
                c.describe()
            ))
        }
        (Some(a), None) if !matches!(a, Kind::Signature) => {
            return Err(format!(
                "type confusion: artifactType {} names kind {} but the config is {}",
                artifact_type.unwrap_or_default(),
                a.describe(),
                if config.is_empty() { "missing" } else { config }
            ))
        }
        (_, Some(c)) => c,
        (Some(a), None) => a,
        (None, None) => Kind::Artifact {
            artifact_type: artifact_type
                .filter(|t| !t.is_empty())
                .unwrap_or(if config.is_empty() {
                    EMPTY_CONFIG
                } else {
                    config
                })
                .to_string(),
        },
    };
    Ok(match kind {
        Kind::Image { .. } => Kind::Image {
            ollama: doc["layers"].as_array().is_some_and(|l| {
                l.iter().any(|l| {
                    l["mediaType"]
                        .as_str()
                        .is_some_and(|t| t.starts_with("application/vnd.ollama.image."))
                })
            }),
        },
        k => k,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const OCI: &str = "application/vnd.oci.image.manifest.v1+json";

    fn kind(doc: Value) -> Result<Kind, String> {
        detect(&doc, OCI)
    }

    #[test]
    fn kinds_come_from_the_config_cross_checked_with_the_artifact_type() {
        let cfg = |t: &str| json!({"config": {"mediaType": t}, "layers": []});
        assert_eq!(
            kind(cfg("application/vnd.docker.ai.model.config.v0.1+json")).unwrap(),
            Kind::DockerModel {
                version: "v0.1".into()
            }
        );
        assert_eq!(
            kind(cfg("application/vnd.cnai.model.config.v1+json"))
                .unwrap()
                .name(),
            "modelpack"
        );
        assert_eq!(
            kind(cfg("application/vnd.kitops.modelkit.config.v1+json")).unwrap(),
            Kind::KitOps
        );
        let mut mp = cfg("application/vnd.cncf.model.config.v1+json");
        mp["artifactType"] = "application/vnd.cncf.model.manifest.v1+json".into();
        assert_eq!(kind(mp).unwrap(), Kind::ModelPack { cnai: false });
        let oras = json!({"artifactType": "application/vnd.unknown.artifact.v1", "config": {"mediaType": EMPTY_CONFIG}});
        assert!(kind(oras)
            .unwrap()
            .admitted_by("artifact:application/vnd.unknown.artifact.v1"));
        let ollama = json!({"config": {"mediaType": "application/vnd.docker.container.image.v1+json"}, "layers": [{"mediaType": "application/vnd.ollama.image.model"}]});
        assert_eq!(kind(ollama).unwrap(), Kind::Image { ollama: true });
        let bundle = json!({"artifactType": "application/vnd.dev.sigstore.bundle.v0.3+json", "config": {"mediaType": EMPTY_CONFIG}});
        assert_eq!(kind(bundle).unwrap(), Kind::Signature);
        assert_eq!(kind(json!({"manifests": []})).unwrap(), Kind::Index);
    }

    #[test]
    fn an_artifact_type_naming_another_kind_is_a_type_confusion() {
        let confused = json!({"artifactType": "application/vnd.cncf.model.manifest.v1+json",
            "config": {"mediaType": "application/vnd.docker.ai.model.config.v0.1+json"}});
        let e = kind(confused).unwrap_err();
        assert!(
            e.contains("names kind modelpack") && e.contains("docker-model"),
            "{e}"
        );
        let claimed = json!({"artifactType": "application/vnd.kitops.modelkit.manifest.v1+json",
            "config": {"mediaType": EMPTY_CONFIG}});
        assert!(kind(claimed).unwrap_err().contains("names kind kitops"));
        let renamed = json!({"artifactType": "application/vnd.cnai.model.manifest.v1+json",
            "config": {"mediaType": "application/vnd.cncf.model.config.v1+json"}});
        assert!(
            kind(renamed).is_err(),
            "the two ModelPack generations are not one kind"
        );
    }

    #[test]
    fn a_body_without_media_type_takes_the_content_type() {
        let kit = json!({"schemaVersion": 2, "config": {"mediaType": "application/vnd.kitops.modelkit.config.v1+json"}});
        assert_eq!(detect(&kit, OCI).unwrap(), Kind::KitOps);
        let idx = json!({"schemaVersion": 2});
        assert_eq!(
            detect(&idx, "application/vnd.oci.image.index.v1+json").unwrap(),
            Kind::Index
        );
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(crate::proptests::config())]

        /// Any document is a kind or a type confusion, never a panic; a
        /// confusion is only ever claimed with an artifactType.
        #[test]
        fn any_document_has_a_kind_or_a_reason(doc in crate::proptests::json(), ct in ".{0,40}") {
            if detect(&doc, &ct).is_err() {
                prop_assert!(doc["artifactType"].is_string());
            }
        }
    }
}
