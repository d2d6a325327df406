//! Normalized model facts: what one rule needs to know about any model,
//! whatever tool pushed it (version, created, licenses, format, parameter
//! count, quantization, precision, architecture, datasets, files), read
//! from the manifest and config blob per kind; plus raw JSON-pointer reads
//! (`/datasets/*/license`) and unit-aware quantities (`"70B"` parameters,
//! `"40GiB"`). Pure: documents in, facts out.

use crate::oci::kind::Kind;
use serde_json::Value;
use std::collections::BTreeMap;

/// The fact names `[rules.model]` may constrain.
pub const FACT_NAMES: [&str; 10] = [
    "version",
    "created",
    "licenses",
    "format",
    "param_size",
    "quantization",
    "precision",
    "architecture",
    "datasets",
    "files",
];

/// Facts that are lists (constrained element by element).
pub fn is_list(fact: &str) -> bool {
    matches!(fact, "licenses" | "datasets" | "files")
}

/// How a quantity is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantity {
    /// A count: `494.03M`, `1.10 B`, `8b`, `70B` (K, M, B or G, T, Q).
    Count,
    /// Bytes: `40GiB`, `16.00KiB`, `864B`, `2 GB`.
    Bytes,
}

impl Quantity {
    /// The quantity a fact is measured in, if any.
    pub fn of_fact(fact: &str) -> Option<Quantity> {
        (fact == "param_size").then_some(Quantity::Count)
    }

    /// The value of `s` (a plain number is itself).
    pub fn parse(self, s: &str) -> Option<f64> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: f64 = num.parse().ok().filter(|n: &f64| n.is_finite())?;
        let unit = unit.trim().to_ascii_lowercase();
        let scale = match (self, unit.as_str()) {
            (_, "") => 1.0,
            (Quantity::Count, "k") => 1e3,
            (Quantity::Count, "m") => 1e6,
            (Quantity::Count, "b" | "g") => 1e9,
            (Quantity::Count, "t") => 1e12,
            (Quantity::Count, "q") => 1e15,
            (Quantity::Bytes, "b") => 1.0,
            (Quantity::Bytes, "kb") => 1e3,
            (Quantity::Bytes, "mb") => 1e6,
            (Quantity::Bytes, "gb") => 1e9,
            (Quantity::Bytes, "tb") => 1e12,
            (Quantity::Bytes, "kib") => 1024.0,
            (Quantity::Bytes, "mib") => 1024.0 * 1024.0,
            (Quantity::Bytes, "gib") => 1024.0 * 1024.0 * 1024.0,
            (Quantity::Bytes, "tib") => 1024.0f64.powi(4),
            _ => return None,
        };
        Some(n * scale)
    }
}

/// One layer as the rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerFact {
    pub media_type: String,
    pub digest: String,
    /// The size its descriptor declares.
    pub size: u64,
    /// The file path its producer declares (annotation or Kitfile).
    pub path: Option<String>,
}

/// What is known about one model manifest.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelFacts {
    /// Scalar facts by name (only those present).
    pub values: BTreeMap<&'static str, String>,
    /// List facts by name (only those present), each element with where
    /// it came from (`dataset "train"`), for messages.
    pub lists: BTreeMap<&'static str, Vec<(String, String)>>,
    pub layers: Vec<LayerFact>,
}

impl ModelFacts {
    /// Set each fact from the first of its JSON pointers into `c` that
    /// holds a value (facts already set keep theirs).
    fn set_from(&mut self, c: &Value, facts: &[(&'static str, &str)]) {
        for (fact, pointer) in facts {
            self.set(fact, c.pointer(pointer));
        }
    }

    fn set(&mut self, fact: &'static str, v: Option<&Value>) {
        if self.values.contains_key(fact) {
            return;
        }
        if let Some(s) = v.and_then(scalar) {
            self.values.insert(fact, s);
        }
    }

    fn push(&mut self, fact: &'static str, v: Option<&Value>, from: &str) {
        let entries = self.lists.entry(fact).or_default();
        let mut add = |s: String| {
            if !entries.iter().any(|(x, _)| *x == s) {
                entries.push((s, from.to_string()));
            }
        };
        match v {
            Some(Value::Array(a)) => a.iter().filter_map(scalar).for_each(&mut add),
            Some(v) => {
                if let Some(s) = scalar(v) {
                    add(s)
                }
            }
            None => {}
        }
        if self.lists.get(fact).is_some_and(Vec::is_empty) {
            self.lists.remove(fact);
        }
    }

    /// A fact as constraint input: a scalar, or the list's elements.
    pub fn get(&self, fact: &str) -> FactValue<'_> {
        if is_list(fact) {
            match self.lists.get(fact) {
                Some(l) => FactValue::List(l),
                None => FactValue::Missing,
            }
        } else {
            match self.values.get(fact) {
                Some(v) => FactValue::Scalar(v),
                None => FactValue::Missing,
            }
        }
    }

    /// `key=value` pairs of every fact present, for the audit record.
    pub fn summary(&self) -> BTreeMap<String, Value> {
        let mut out: BTreeMap<String, Value> = self
            .values
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.clone())))
            .collect();
        for (k, l) in &self.lists {
            out.insert(
                k.to_string(),
                Value::Array(l.iter().map(|(v, _)| Value::String(v.clone())).collect()),
            );
        }
        out
    }
}

pub enum FactValue<'a> {
    Missing,
    Scalar(&'a str),
    List(&'a [(String, String)]),
}

/// A JSON scalar as text (strings as they are, numbers and booleans
/// printed); objects, arrays and null are no scalar.
pub fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Every value a JSON pointer with `*` wildcards (over array elements and
/// object members) reaches, with the concrete pointer of each. `~1` is `/`
/// and `~0` is `~` in a segment; dots are ordinary characters.
pub fn pointer<'a>(doc: &'a Value, ptr: &str) -> Vec<(String, &'a Value)> {
    let mut found = vec![(String::new(), doc)];
    if ptr.is_empty() {
        return found;
    }
    for seg in ptr.trim_start_matches('/').split('/') {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        let mut next = Vec::new();
        for (at, v) in found {
            match (v, seg.as_str()) {
                (Value::Array(a), "*") => {
                    next.extend(a.iter().enumerate().map(|(i, x)| (format!("{at}/{i}"), x)))
                }
                (Value::Object(o), "*") => {
                    next.extend(o.iter().map(|(k, x)| (format!("{at}/{k}"), x)))
                }
                (Value::Array(a), i) => {
                    if let Some(x) = i.parse::<usize>().ok().and_then(|i| a.get(i)) {
                        next.push((format!("{at}/{seg}"), x));
                    }
                }
                (Value::Object(o), k) => {
                    if let Some(x) = o.get(k) {
                        next.push((format!("{at}/{seg}"), x));
                    }
                }
                _ => {}
            }
        }
        found = next;
    }
    found
}

/// SPDX-ish license text into its identifiers (`MIT OR Apache-2.0`,
/// `MIT, Apache-2.0`).
fn split_licenses(s: &str) -> Vec<Value> {
    s.split([',', '(', ')'])
        .flat_map(|p| p.split(" OR ").flat_map(|p| p.split(" AND ")))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| Value::String(p.to_string()))
        .collect()
}

/// The path a layer's own annotations declare.
fn annotated_path(layer: &Value) -> Option<String> {
    let a = &layer["annotations"];
    [
        "org.cncf.model.filepath",
        "org.cnai.model.filepath",
        "org.opencontainers.image.title",
    ]
    .iter()
    .find_map(|k| a[k].as_str().map(str::to_string))
}

/// Paths a Kitfile gives to layers, by layer digest.
fn kitfile_paths(config: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut add = |v: &Value| {
        if let (Some(d), Some(p)) = (v["digest"].as_str(), v["path"].as_str()) {
            out.insert(d.to_string(), p.to_string());
        }
    };
    add(&config["model"]);
    for section in ["datasets", "code", "docs", "prompts"] {
        config[section]
            .as_array()
            .into_iter()
            .flatten()
            .for_each(&mut add);
    }
    config["model"]["parts"]
        .as_array()
        .into_iter()
        .flatten()
        .for_each(add);
    out
}

/// The facts of a manifest `doc` of `kind` with its config blob `config`
/// (`Value::Null` when not read) and, for images, its labels.
pub fn extract(
    kind: &Kind,
    doc: &Value,
    config: &Value,
    labels: &BTreeMap<String, String>,
) -> ModelFacts {
    let mut f = ModelFacts::default();
    let c = config;
    let kit_paths = match kind {
        Kind::KitOps => kitfile_paths(c),
        _ => BTreeMap::new(),
    };
    for l in doc["layers"].as_array().into_iter().flatten() {
        let digest = l["digest"].as_str().unwrap_or_default().to_string();
        let path = annotated_path(l).or_else(|| kit_paths.get(&digest).cloned());
        f.layers.push(LayerFact {
            media_type: l["mediaType"].as_str().unwrap_or_default().to_string(),
            size: l["size"].as_u64().unwrap_or(0),
            path,
            digest,
        });
    }
    match kind {
        Kind::DockerModel { .. } => docker_model_facts(&mut f, c),
        Kind::ModelPack { .. } => modelpack_facts(&mut f, c),
        Kind::KitOps => kitops_facts(&mut f, c),
        Kind::Image { .. } => image_facts(&mut f, c, labels),
        Kind::Artifact { artifact_type } => {
            f.set("format", Some(&Value::String(artifact_type.clone())));
        }
        Kind::Signature | Kind::Index => {}
    }
    // Every kind: the manifest's org.opencontainers.image.* annotations.
    let a = &doc["annotations"];
    f.set("version", a.get("org.opencontainers.image.version"));
    f.set("created", a.get("org.opencontainers.image.created"));
    if !f.lists.contains_key("licenses") {
        if let Some(l) = a["org.opencontainers.image.licenses"].as_str() {
            f.push(
                "licenses",
                Some(&Value::Array(split_licenses(l))),
                "annotation org.opencontainers.image.licenses",
            );
        }
    }
    let paths: Vec<Value> = f
        .layers
        .iter()
        .filter_map(|l| l.path.clone().map(Value::String))
        .collect();
    f.push("files", Some(&Value::Array(paths)), "layers");
    f
}

/// Docker Model Runner: `/config/*`, `/descriptor/created`, the GGUF license.
fn docker_model_facts(f: &mut ModelFacts, c: &Value) {
    f.set_from(
        c,
        &[
            ("format", "/config/format"),
            ("param_size", "/config/parameters"),
            ("quantization", "/config/quantization"),
            ("architecture", "/config/architecture"),
            ("created", "/descriptor/created"),
        ],
    );
    let gguf_license = c["config"]["gguf"]["general.license"].as_str();
    f.push(
        "licenses",
        gguf_license
            .map(|s| Value::Array(split_licenses(s)))
            .as_ref(),
        "gguf general.license",
    );
}

/// CNCF ModelPack (and CNAI): `/descriptor/*`, `/config/*`.
fn modelpack_facts(f: &mut ModelFacts, c: &Value) {
    let d = &c["descriptor"];
    f.set("version", d.get("version"));
    f.set("created", d.get("createdAt").or(d.get("created_at")));
    f.push("licenses", d.get("licenses"), "descriptor.licenses");
    f.set_from(
        c,
        &[
            ("format", "/config/format"),
            ("param_size", "/config/paramSize"),
            ("param_size", "/config/param_size"),
            ("quantization", "/config/quantization"),
            ("precision", "/config/precision"),
            ("architecture", "/config/architecture"),
        ],
    );
    f.push("datasets", d.get("datasetsURL"), "descriptor.datasetsURL");
}

/// KitOps: the Kitfile (package, model, its parts, datasets, code).
fn kitops_facts(f: &mut ModelFacts, c: &Value) {
    f.set_from(
        c,
        &[
            ("version", "/package/version"),
            ("version", "/model/version"),
            ("format", "/model/format"),
            ("param_size", "/model/parameters/paramSize"),
            ("architecture", "/model/framework"),
        ],
    );
    f.push("licenses", c.pointer("/package/license"), "package");
    f.push("licenses", c.pointer("/model/license"), "model");
    for (at, v) in pointer(c, "/model/parts/*/license") {
        f.push("licenses", Some(v), &format!("model part {at}"));
    }
    for d in c["datasets"].as_array().into_iter().flatten() {
        let name = d["name"].as_str().or(d["path"].as_str()).unwrap_or("?");
        f.push("licenses", d.get("license"), &format!("dataset {name:?}"));
        f.push("datasets", d.get("name").or(d.get("path")), "datasets");
    }
    for code in c["code"].as_array().into_iter().flatten() {
        let path = code["path"].as_str().unwrap_or("?");
        f.push("licenses", code.get("license"), &format!("code {path:?}"));
    }
}

/// A container image: its `org.opencontainers.image.*` labels and config.
fn image_facts(f: &mut ModelFacts, c: &Value, labels: &BTreeMap<String, String>) {
    let label = |k: &str| labels.get(k).map(|s| Value::String(s.clone()));
    f.set(
        "version",
        label("org.opencontainers.image.version").as_ref(),
    );
    f.set(
        "created",
        label("org.opencontainers.image.created").as_ref(),
    );
    f.set("created", c.get("created"));
    f.set("architecture", c.get("architecture"));
    if let Some(l) = labels.get("org.opencontainers.image.licenses") {
        f.push(
            "licenses",
            Some(&Value::Array(split_licenses(l))),
            "label org.opencontainers.image.licenses",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quantities_read_the_units_producers_write() {
        let c = Quantity::Count;
        assert_eq!(c.parse("494.03M"), Some(494.03e6));
        assert_eq!(c.parse("1.10 B"), Some(1.1e9));
        assert_eq!(c.parse("8b"), Some(8e9));
        assert_eq!(c.parse("70B"), Some(70e9));
        assert_eq!(c.parse("183"), Some(183.0));
        assert_eq!(c.parse("0.5b"), Some(0.5e9));
        assert_eq!(c.parse("lots"), None);
        assert_eq!(c.parse("5 parsecs"), None);
        let b = Quantity::Bytes;
        assert_eq!(b.parse("40GiB"), Some(40.0 * 1024.0 * 1024.0 * 1024.0));
        assert_eq!(b.parse("16.00KiB"), Some(16384.0));
        assert_eq!(b.parse("2 GB"), Some(2e9));
        assert_eq!(b.parse("864B"), Some(864.0));
        assert_eq!(b.parse("12 bananas"), None);
    }

    #[test]
    fn pointers_take_wildcards_and_escaped_segments() {
        let doc = json!({"datasets": [{"license": "MIT"}, {"license": "CC-BY-NC-4.0"}],
            "config": {"gguf": {"general.license": "Apache-2.0"}}, "a/b": {"~x": 1}});
        let v: Vec<_> = pointer(&doc, "/datasets/*/license");
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].0, "/datasets/1/license");
        assert_eq!(
            pointer(&doc, "/config/gguf/general.license")[0].1,
            "Apache-2.0"
        );
        assert_eq!(pointer(&doc, "/a~1b/~0x")[0].1, 1);
        assert!(pointer(&doc, "/datasets/7/license").is_empty());
        assert!(pointer(&doc, "/nothing/*").is_empty());
    }

    #[test]
    fn kitops_licenses_say_where_they_come_from() {
        let cfg = json!({"package": {"version": "1.2.3", "license": "Apache-2.0"},
            "model": {"path": "model.gguf", "format": "gguf", "digest": "sha256:m"},
            "datasets": [{"name": "train", "license": "CC-BY-NC-4.0", "path": "d.csv", "digest": "sha256:d"}]});
        let doc = json!({"layers": [{"mediaType": "application/vnd.kitops.modelkit.model.v1.tar", "digest": "sha256:m", "size": 5}]});
        let f = extract(&Kind::KitOps, &doc, &cfg, &BTreeMap::new());
        assert_eq!(f.values["version"], "1.2.3");
        assert_eq!(f.values["format"], "gguf");
        let l = &f.lists["licenses"];
        assert!(
            l.contains(&("CC-BY-NC-4.0".into(), "dataset \"train\"".into())),
            "{l:?}"
        );
        assert_eq!(f.layers[0].path.as_deref(), Some("model.gguf"));
        assert_eq!(f.lists["files"][0].0, "model.gguf");
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(crate::proptests::config())]

        #[test]
        fn quantities_are_finite_or_refused(s in "[0-9. ]{0,12}[a-zA-Z]{0,4}|.{0,16}") {
            for q in [Quantity::Count, Quantity::Bytes] {
                if let Some(n) = q.parse(&s) {
                    prop_assert!(n.is_finite());
                }
            }
        }

        /// Facts and pointers over any config of any kind: no panic, and
        /// every layer is accounted for.
        #[test]
        fn facts_of_any_document(doc in crate::proptests::json(), config in crate::proptests::json(), ptr in "(/[a-z*0-9~]{0,6}){0,4}") {
            for kind in [Kind::KitOps, Kind::ModelPack { cnai: false }, Kind::DockerModel { version: "v0.1".into() }, Kind::Image { ollama: false }] {
                let f = extract(&kind, &doc, &config, &BTreeMap::new());
                prop_assert_eq!(f.layers.len(), doc["layers"].as_array().map_or(0, Vec::len));
            }
            let _ = pointer(&config, &ptr);
        }
    }
}
