//! Gathering what a rule needs to know about one manifest: its annotations,
//! the labels of its image config (of every image an index lists), and its
//! valid signers. Every document read is strict JSON (see
//! [`crate::oci::json`]); a problem reading one is evidence too (a reason to
//! deny), never a silent pass.

use super::core::Gate;
use super::exempt::is_signature_manifest;
use super::signatures::RuleSigners;
use crate::oci::kind::{detect, Kind};
use crate::oci::media::OCI_MANIFEST;
use crate::oci::{json, Digest, Manifest, Reference};
use crate::policy::eval::ModelEvidence;
use crate::policy::facts::extract;
use crate::policy::{Evidence, ImageEvidence, LoadedPolicy, Rule};
use crate::upstream::Route;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The largest config blob read for labels and model facts: GGUF metadata
/// maps (chat templates) make model configs larger than image configs.
pub const MAX_CONFIG_BYTES: usize = 4 * 1024 * 1024;

/// Whether signatures are part of the evidence gathered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signatures {
    /// Look for them (pulls, and pushes that set a tag).
    Check,
    /// A push by digest (staging): they are required when a tag is set.
    Deferred,
}

/// Whether cached evidence may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    Cached,
    /// Push decisions always look afresh.
    Fresh,
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// The platform an index child is for (`os/arch[/variant]`, or its digest).
fn platform_of(child: &Value) -> String {
    let p = &child["platform"];
    match (p["os"].as_str(), p["architecture"].as_str()) {
        (Some(os), Some(arch)) => match p["variant"].as_str() {
            Some(v) => format!("{os}/{arch}/{v}"),
            None => format!("{os}/{arch}"),
        },
        _ => child["digest"].as_str().unwrap_or("?").to_string(),
    }
}

impl Gate {
    /// The config blob a manifest names: its labels and the whole document.
    async fn config_of(
        &self,
        r: &Route,
        manifest: &Value,
    ) -> Result<(BTreeMap<String, String>, Value), String> {
        let cd: Digest = manifest["config"]["digest"]
            .as_str()
            .ok_or("manifest has no config")?
            .parse()
            .map_err(|e| format!("config digest: {e}"))?;
        let config = self
            .registry
            .small_blob(r, &cd, MAX_CONFIG_BYTES)
            .await
            .map_err(|e| format!("config {cd}: {e}"))?;
        let v = json::parse_strict(&config).map_err(|e| format!("config {cd} is {e}"))?;
        Ok((string_map(&v["config"]["Labels"]), v))
    }

    /// What `rule` needs to know about one manifest `doc` of `kind`: its
    /// labels and, when the rule looks at models, its kind and facts.
    async fn image_evidence(
        &self,
        r: &Route,
        doc: &Value,
        kind: Kind,
        platform: Option<String>,
        rule: &Rule,
    ) -> Result<ImageEvidence, String> {
        let wants_model = rule.kinds.is_some() || rule.needs_model();
        let (labels, config) = if !rule.labels.is_empty() || rule.needs_model() {
            self.config_of(r, doc).await?
        } else {
            (BTreeMap::new(), Value::Null)
        };
        let model = wants_model.then(|| ModelEvidence {
            facts: extract(&kind, doc, &config, &labels),
            kind,
            config: Arc::new(config),
        });
        Ok(ImageEvidence {
            platform,
            labels,
            model,
        })
    }

    /// The evidence of every manifest an index lists. Children marked
    /// `unknown/unknown` are skipped only when they really are attestations
    /// or signatures (by their layers); any other child is checked like a
    /// platform image.
    async fn index_children(&self, r: &Route, children: &[Value], rule: &Rule, ev: &mut Evidence) {
        for c in children {
            let p = &c["platform"];
            let unknown = p["os"] == "unknown" || p["architecture"] == "unknown";
            let Some(Ok(cd)) = c["digest"].as_str().map(|d| d.parse::<Digest>()) else {
                ev.errors
                    .push("index lists a child without a valid digest".into());
                continue;
            };
            let reference = Reference::Digest(cd.clone());
            let child = match self
                .registry
                .manifest(r, &reference, Some(OCI_MANIFEST))
                .await
            {
                Ok(cm) => cm,
                Err(e) => {
                    ev.errors.push(format!("child {cd}: {e}"));
                    continue;
                }
            };
            if unknown && is_signature_manifest(&child.bytes) {
                continue; // an attestation manifest: no image to label
            }
            let found = match json::parse_strict(&child.bytes) {
                Ok(doc) => match detect(&doc, &child.media_type) {
                    Ok(kind) => {
                        let platform = Some(platform_of(c));
                        self.image_evidence(r, &doc, kind, platform, rule).await
                    }
                    Err(e) => Err(e),
                },
                Err(e) => Err(format!("is {e}")),
            };
            match found {
                Ok(img) => ev.images.push(img),
                Err(e) => ev.errors.push(format!("child {cd}: {e}")),
            }
        }
    }

    /// Gather what `rule` needs to know about `m`.
    pub(super) async fn gather(
        &self,
        r: &Route,
        m: &Manifest,
        rule: &Rule,
        loaded: &LoadedPolicy,
        freshness: Freshness,
        signatures: Signatures,
    ) -> Evidence {
        let repo = &r.canonical;
        if freshness == Freshness::Cached && signatures == Signatures::Check {
            if let Some(ev) = self
                .state
                .evidence(repo, &m.digest, rule, loaded.generation)
            {
                return ev;
            }
        }
        let mut ev = Evidence::default();
        let doc = json::parse_strict(&m.bytes).unwrap_or_else(|e| {
            ev.errors.push(format!("manifest is {e}"));
            Value::Null
        });
        ev.annotations = string_map(&doc["annotations"]);
        let wants_images = !rule.labels.is_empty() || rule.kinds.is_some() || rule.needs_model();
        if let Some(children) = doc["manifests"].as_array() {
            if wants_images {
                self.index_children(r, children, rule, &mut ev).await;
            }
        } else if !doc.is_null() {
            // A type confusion is denied under every rule, wanted or not.
            match detect(&doc, &m.media_type) {
                Err(e) => ev.errors.push(e),
                Ok(kind) if wants_images => {
                    match self.image_evidence(r, &doc, kind, None, rule).await {
                        Ok(img) => ev.images.push(img),
                        Err(e) => ev.errors.push(e),
                    }
                }
                Ok(_) => {}
            }
        }
        if signatures == Signatures::Deferred {
            ev.signatures_deferred = true;
            return ev;
        }
        if let Some(sig) = &rule.signatures {
            let p = &loaded.policy;
            let signers = RuleSigners {
                keys: sig
                    .keys
                    .iter()
                    .filter_map(|k| p.keys.get(k).map(|pk| (k.clone(), pk.clone())))
                    .collect(),
                keyless: sig
                    .keyless
                    .iter()
                    .filter_map(|k| Some((k.clone(), p.trust.get(&k.trust)?.clone())))
                    .collect(),
                notation: sig
                    .notation
                    .iter()
                    .filter_map(|n| Some((n.clone(), p.notation.get(&n.trust)?.clone())))
                    .collect(),
            };
            let scan = self.scan_signatures(r, m, &signers).await;
            ev.signers = scan.signers;
            ev.signature_matches = scan.matches;
            ev.signature_notes = scan.notes;
        }
        self.state
            .keep_evidence(repo, &m.digest, loaded.generation, &ev);
        ev
    }
}
