//! Deciding: evidence about one manifest in, a [`PolicyDecision`] out. Pure;
//! gathering the evidence (signatures, config labels) is the server's job.

use super::facts::{FactValue, LayerFact, ModelFacts};
use super::model::{Constraint, LayerRule, Mode, Policy, Rule};
use crate::oci::kind::Kind;
use crate::oci::Digest;
use std::collections::{BTreeMap, BTreeSet};

/// One manifest's config (labels, model facts); an index has one per child.
#[derive(Debug, Clone, Default)]
pub struct ImageEvidence {
    /// `os/arch` of an index child, None for a plain manifest.
    pub platform: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// What the manifest is and what it says about its model (when a rule
    /// needs it).
    pub model: Option<ModelEvidence>,
}

/// A manifest's kind, its normalized facts and its config document.
#[derive(Debug, Clone)]
pub struct ModelEvidence {
    pub kind: Kind,
    pub facts: ModelFacts,
    /// The config blob as JSON (`Null` when it was not JSON or not read).
    pub config: std::sync::Arc<serde_json::Value>,
}

/// Everything known about the manifest being decided.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    /// The tag the client asked for, if it asked by tag.
    pub tag: Option<String>,
    pub annotations: BTreeMap<String, String>,
    pub images: Vec<ImageEvidence>,
    /// Policy keys with a valid signature naming this digest.
    pub signers: BTreeSet<String>,
    /// Which signature matched which requirement.
    pub signature_matches: Vec<String>,
    /// Why other signatures found did not count.
    pub signature_notes: Vec<String>,
    /// An immutable tag that moved: (first seen, now).
    pub tag_moved: Option<(Digest, Digest)>,
    /// Problems gathering evidence (e.g. a config that could not be read).
    pub errors: Vec<String>,
    /// A push by digest (staging): signatures are required when a tag is
    /// set, not before.
    pub signatures_deferred: bool,
}

impl Evidence {
    /// The kind and facts of every manifest decided (one per index child),
    /// for the audit record and `modelgate check`.
    pub fn models_summary(&self) -> Vec<serde_json::Value> {
        self.images
            .iter()
            .filter_map(|img| {
                let m = img.model.as_ref()?;
                let mut v = serde_json::json!({
                    "kind": m.kind.describe(),
                    "facts": m.facts.summary(),
                });
                if let Some(p) = &img.platform {
                    v["platform"] = p.clone().into();
                }
                Some(v)
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
    /// Would be denied, let through because the rule is in audit mode.
    Audit,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::Audit => "audit",
        }
    }
}

/// The outcome, with every failed requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDecision {
    pub decision: Decision,
    /// The deciding rule (None: the policy default).
    pub rule: Option<String>,
    pub reasons: Vec<String>,
}

impl PolicyDecision {
    /// `denied by rule "models": reason; reason` (or the allow form).
    pub fn message(&self) -> String {
        let by = match &self.rule {
            Some(r) => format!("rule {r:?}"),
            None => "the policy default".to_string(),
        };
        match self.decision {
            Decision::Allow => format!("allowed by {by}"),
            Decision::Deny => format!("denied by {by}: {}", self.reasons.join("; ")),
            Decision::Audit => format!(
                "would be denied by {by} (audit mode): {}",
                self.reasons.join("; ")
            ),
        }
    }

    pub fn rule_label(&self) -> String {
        self.rule.clone().unwrap_or_else(|| "(default)".into())
    }
}

fn parse_semver(v: &str) -> bool {
    semver::Version::parse(v.strip_prefix('v').unwrap_or(v)).is_ok()
}

fn parse_rfc3339(v: &str) -> bool {
    time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339).is_ok()
}

/// Every way `value` fails `c`; empty when it holds.
pub fn check_value(kind: &str, key: &str, c: &Constraint, value: Option<&str>) -> Vec<String> {
    let Some(v) = value else {
        return match c.optional {
            true => Vec::new(),
            false => vec![format!("{kind} {key} missing")],
        };
    };
    let mut out = Vec::new();
    if let Some(re) = &c.regex {
        if !re.is_match(v) {
            out.push(format!(
                "{kind} {key} = {v:?} does not match {}",
                re.as_str()
            ));
        }
    }
    if c.semver && !parse_semver(v) {
        out.push(format!("{kind} {key} = {v:?} is not a semantic version"));
    }
    if c.rfc3339 && !parse_rfc3339(v) {
        out.push(format!("{kind} {key} = {v:?} is not an RFC 3339 time"));
    }
    if c.min.is_some() || c.max.is_some() {
        let n = match c.quantity {
            Some(q) => q.parse(v),
            None => v.trim().parse::<f64>().ok(),
        };
        match n.ok_or(()) {
            Ok(n) if n.is_finite() => {
                if let Some(m) = c.min {
                    if n < m {
                        out.push(format!("{kind} {key} = {v} below min {m}"));
                    }
                }
                if let Some(m) = c.max {
                    if n > m {
                        out.push(format!("{kind} {key} = {v} above max {m}"));
                    }
                }
            }
            _ => out.push(format!("{kind} {key} = {v:?} is not a number")),
        }
    }
    for list in [&c.one_of, &c.each_one_of].into_iter().flatten() {
        if !list.iter().any(|x| x == v) {
            out.push(format!(
                "{kind} {key} = {v:?} is not one of [{}]",
                list.join(", ")
            ));
        }
    }
    out
}

/// Every way a model fact fails `c`: a scalar like a label, a list element
/// by element (naming where each came from).
fn check_fact(what: &str, fact: &str, c: &Constraint, v: FactValue<'_>) -> Vec<String> {
    match v {
        FactValue::Missing => check_value(what, fact, c, None),
        FactValue::Scalar(s) => check_value(what, fact, c, Some(s)),
        FactValue::List(items) => items
            .iter()
            .flat_map(|(x, from)| {
                check_value(what, fact, c, Some(x))
                    .into_iter()
                    .map(move |m| format!("{m} ({from})"))
            })
            .collect(),
    }
}

/// The numeric facts of the manifest decided (its first image): every
/// label that is a number and every numeric model fact (parameter counts
/// read with their units). What a release records and regressions compare.
pub fn numeric_facts(ev: &Evidence) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Some(img) = ev.images.first() else {
        return out;
    };
    for (k, v) in &img.labels {
        if let Some(n) = v.trim().parse::<f64>().ok().filter(|n| n.is_finite()) {
            out.insert(k.clone(), n);
        }
    }
    if let Some(m) = &img.model {
        for (k, v) in &m.facts.values {
            let q = crate::policy::facts::Quantity::of_fact(k);
            let n = match q {
                Some(q) => q.parse(v),
                None => v.trim().parse::<f64>().ok(),
            };
            if let Some(n) = n.filter(|n| n.is_finite()) {
                out.insert(k.to_string(), n);
            }
        }
    }
    out
}

/// Every regression of `now` against the previous release `prev` (its tag
/// and facts) under `rule`'s regression constraints, e.g.
/// `accuracy.test 0.912 is 0.011 below v1.2.0 (0.923); max_drop 0.005`.
/// The first release (no `prev`) has none.
pub fn check_regressions(
    rule: &Rule,
    now: &BTreeMap<String, f64>,
    prev: Option<(&str, &BTreeMap<String, f64>)>,
) -> Vec<String> {
    let Some((tag, before)) = prev else {
        return Vec::new();
    };
    rule.labels
        .iter()
        .chain(&rule.model)
        .filter_map(|(k, c)| {
            let g = c.regression?;
            let (b, n) = (*before.get(k)?, *now.get(k)?);
            let why = g.violated(b, n, tag)?;
            Some(format!("{k} {} is {why}", super::model::fmt_num(n)))
        })
        .collect()
}

/// Each regression-gated fact of `now` next to the previous release, held
/// or not: `accuracy.test 0.93 vs v1.0.0 0.92 (max_drop 0.005): holds`.
pub fn compare_releases(
    rule: &Rule,
    now: &BTreeMap<String, f64>,
    prev: Option<(&str, &BTreeMap<String, f64>)>,
) -> Vec<String> {
    use super::model::{fmt_num, Regression};
    rule.labels
        .iter()
        .chain(&rule.model)
        .filter_map(|(k, c)| {
            let g = c.regression?;
            let knob = match g {
                Regression::MaxDrop(m) => format!("max_drop {}", fmt_num(m)),
                Regression::MaxRise(m) => format!("max_rise {}", fmt_num(m)),
            };
            let n = now.get(k).map_or("missing".to_string(), |n| fmt_num(*n));
            Some(match prev {
                None => format!("{k} {n}: first release, nothing to compare ({knob})"),
                Some((tag, before)) => match (before.get(k), now.get(k)) {
                    (Some(b), Some(x)) => {
                        let verdict = match g.violated(*b, *x, tag) {
                            Some(why) => format!("regression: {why}"),
                            None => "holds".into(),
                        };
                        format!("{k} {n} vs {tag} {} ({knob}): {verdict}", fmt_num(*b))
                    }
                    _ => format!("{k} {n}: {tag} has no value to compare ({knob})"),
                },
            })
        })
        .collect()
}

/// Every way one manifest's kind, facts, config and layers fail `rule`.
fn check_model(rule: &Rule, m: &ModelEvidence) -> Vec<String> {
    let mut out = Vec::new();
    let kind = m.kind.describe();
    if matches!(m.kind, Kind::Signature | Kind::Index) {
        return out;
    }
    if let Some(kinds) = &rule.kinds {
        if !kinds.iter().any(|k| m.kind.admitted_by(k)) {
            out.push(format!(
                "kind {kind} is not admitted here (kinds: [{}])",
                kinds.join(", ")
            ));
            return out;
        }
    }
    let what = format!("kind {}: model", m.kind.name());
    for (fact, c) in &rule.model {
        out.extend(check_fact(&what, fact, c, m.facts.get(fact)));
    }
    for (ptr, c) in rule.config.get(m.kind.name()).into_iter().flatten() {
        let found = crate::policy::facts::pointer(&m.config, ptr);
        let what = format!("kind {}: config", m.kind.name());
        if found.is_empty() {
            out.extend(check_value(&what, ptr, c, None));
        }
        for (at, v) in found {
            let text = crate::policy::facts::scalar(v);
            out.extend(check_value(&what, &at, c, text.as_deref()));
        }
    }
    if let Some(l) = &rule.layers {
        out.extend(check_layers(l, &m.facts.layers));
    }
    out
}

fn check_layers(l: &LayerRule, layers: &[LayerFact]) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(max) = l.max_layers {
        if layers.len() > max {
            out.push(format!(
                "{} layers, more than max_layers {max}",
                layers.len()
            ));
        }
    }
    let total: u64 = layers.iter().map(|x| x.size).sum();
    if let Some(max) = l.max_total_bytes {
        if total > max {
            out.push(format!(
                "layers declare {total} bytes in all, more than max_total_bytes {max}"
            ));
        }
    }
    for x in layers {
        let name = x.path.clone().unwrap_or_else(|| x.digest.clone());
        let mt = &x.media_type;
        if !l.allow_media_types.is_empty()
            && !l.allow_media_types.iter().any(|(_, g)| g.is_match(mt))
        {
            out.push(format!(
                "layer {name}: media type {mt} is not an allowed one"
            ));
        }
        if let Some((g, _)) = l.deny_media_types.iter().find(|(_, g)| g.is_match(mt)) {
            out.push(format!(
                "layer {name}: media type {mt} matches denied pattern {g}"
            ));
        }
        match &x.path {
            Some(p) => {
                let base = p.rsplit('/').next().unwrap_or(p);
                if let Some((g, _)) = l
                    .deny_paths
                    .iter()
                    .find(|(_, g)| g.is_match(p) || g.is_match(base))
                {
                    out.push(format!("layer {p}: path matches denied pattern {g}"));
                }
            }
            None if l.require_paths => {
                out.push(format!("layer {name} ({mt}) declares no file path"))
            }
            None => {}
        }
        if let Some(max) = l.max_layer_bytes {
            if x.size > max {
                out.push(format!(
                    "layer {name}: declares {} bytes, more than max_layer_bytes {max}",
                    x.size
                ));
            }
        }
    }
    out
}

/// Decide for `repo` (canonical name) given `ev`.
pub fn evaluate(policy: &Policy, repo: &str, ev: &Evidence) -> PolicyDecision {
    let Some(rule) = policy.rule_for(repo) else {
        return if policy.default_allow {
            PolicyDecision {
                decision: Decision::Allow,
                rule: None,
                reasons: vec![],
            }
        } else {
            PolicyDecision {
                decision: Decision::Deny,
                rule: None,
                reasons: vec![format!("no rule matches {repo} and the default is deny")],
            }
        };
    };
    let mut reasons = ev.errors.clone();
    if let Some(sig) = rule.signatures.as_ref().filter(|_| !ev.signatures_deferred) {
        let good = sig.counted(&ev.signers);
        if good.len() < sig.min {
            let mut r = if good.is_empty() {
                format!("no valid signature by {}", sig.describe_signers())
            } else {
                format!(
                    "{} of {} required signatures by {} (valid: {})",
                    good.len(),
                    sig.min,
                    sig.describe_signers(),
                    good.join(", ")
                )
            };
            if !ev.signature_notes.is_empty() {
                let notes: Vec<&str> = ev
                    .signature_notes
                    .iter()
                    .take(4)
                    .map(String::as_str)
                    .collect();
                r += &format!(" ({})", notes.join(", "));
            }
            reasons.push(r);
        }
    }
    for img in &ev.images {
        if let Some(m) = &img.model {
            for f in check_model(rule, m) {
                reasons.push(match &img.platform {
                    Some(p) => format!("{p}: {f}"),
                    None => f,
                });
            }
        }
        for (k, c) in &rule.labels {
            for f in check_value("label", k, c, img.labels.get(k).map(String::as_str)) {
                reasons.push(match &img.platform {
                    Some(p) => format!("{p}: {f}"),
                    None => f,
                });
            }
        }
    }
    for (k, c) in &rule.annotations {
        reasons.extend(check_value(
            "annotation",
            k,
            c,
            ev.annotations.get(k).map(String::as_str),
        ));
    }
    if let Some(t) = &rule.tags {
        if let (Some(p), Some(tag)) = (&t.pattern, &ev.tag) {
            if !p.is_match(tag) && !t.is_channel(tag) {
                reasons.push(format!("tag {tag} does not match {}", p.as_str()));
            }
        }
        if let Some((first, now)) = &ev.tag_moved {
            reasons.push(format!(
                "tag {} moved upstream from {first} to {now}; tags are immutable under this rule",
                ev.tag.as_deref().unwrap_or("?")
            ));
        }
    }
    let decision = if reasons.is_empty() {
        Decision::Allow
    } else if rule.mode == Mode::Audit {
        Decision::Audit
    } else {
        Decision::Deny
    };
    PolicyDecision {
        decision,
        rule: Some(rule.name.clone()),
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const KEY: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";

    fn policy(extra: &str) -> Policy {
        let text = format!(
            r#"default = "deny"
[keys]
release = """{KEY}"""
[[rules]]
name = "models"
repositories = ["models.internal/models/**"]
[rules.signatures]
keys = ["release"]
[rules.labels]
"model.version" = {{ semver = true }}
"training.timestamp" = {{ rfc3339 = true }}
"dataset.id" = {{ regex = '^ds-[0-9]{{8}}$' }}
"accuracy.test" = {{ min = 0.90 }}
[rules.tags]
pattern = '^v[0-9]+\.[0-9]+\.[0-9]+$'
immutable = true
{extra}"#
        );
        Policy::parse(&text, Path::new("."), "test").unwrap()
    }

    fn good() -> Evidence {
        let mut labels = BTreeMap::new();
        for (k, v) in [
            ("model.version", "v2.1.0"),
            ("training.timestamp", "2024-04-05T10:30:00Z"),
            ("dataset.id", "ds-20240401"),
            ("accuracy.test", "0.963"),
        ] {
            labels.insert(k.to_string(), v.to_string());
        }
        Evidence {
            tag: Some("v2.1.0".into()),
            images: vec![ImageEvidence {
                platform: None,
                labels,
                model: None,
            }],
            signers: ["release".to_string()].into(),
            ..Default::default()
        }
    }

    #[test]
    fn admits_signed_labeled_image() {
        let p = policy("");
        let d = evaluate(&p, "models.internal/models/classifier", &good());
        assert_eq!(d.decision, Decision::Allow, "{:?}", d.reasons);
        assert_eq!(d.rule.as_deref(), Some("models"));
    }

    #[test]
    fn names_every_failed_requirement() {
        let p = policy("");
        let mut ev = good();
        ev.signers.clear();
        ev.images[0].labels.remove("dataset.id");
        ev.images[0]
            .labels
            .insert("accuracy.test".into(), "0.5".into());
        ev.tag = Some("latest".into());
        let d = evaluate(&p, "models.internal/models/classifier", &ev);
        assert_eq!(d.decision, Decision::Deny);
        assert_eq!(
            d.message(),
            "denied by rule \"models\": no valid signature by [release]; label accuracy.test = 0.5 below min 0.9; label dataset.id missing; tag latest does not match ^v[0-9]+\\.[0-9]+\\.[0-9]+$"
        );
    }

    #[test]
    fn default_and_globs() {
        let p = policy("");
        let d = evaluate(&p, "docker.io/library/alpine", &Evidence::default());
        assert_eq!(d.decision, Decision::Deny);
        assert!(d.message().contains("default is deny"));
        // `**` crosses components; the rule needs the models/ prefix.
        assert!(p.rule_for("models.internal/models/a/b/c").is_some());
        assert!(p.rule_for("models.internal/other/x").is_none());
        let g = super::super::model::glob("docker.io/library/*").unwrap();
        assert!(g.is_match("docker.io/library/alpine"));
        assert!(!g.is_match("docker.io/library/a/b"));
    }

    #[test]
    fn audit_mode_lets_through_but_says_why() {
        let mut pol = policy("");
        pol.rules[0].mode = Mode::Audit;
        let mut ev = good();
        ev.signers.clear();
        let d = evaluate(&pol, "models.internal/models/x", &ev);
        assert_eq!(d.decision, Decision::Audit);
        assert!(d.message().starts_with("would be denied"));
    }

    #[test]
    fn every_constraint_form() {
        let c = |toml: &str| -> Constraint {
            let p = policy(&format!(
                "[[rules]]\nname = \"c\"\nrepositories = [\"c/**\"]\n[rules.labels]\nk = {toml}\n"
            ));
            p.rules[1].labels[0].1.clone()
        };
        let ok = |c: &Constraint, v: &str| check_value("label", "k", c, Some(v)).is_empty();
        let present = c("{ }");
        assert!(ok(&present, ""));
        assert_eq!(
            check_value("label", "k", &present, None),
            vec!["label k missing"]
        );
        let semver = c("{ semver = true }");
        for v in ["1.2.3", "v2.1.0", "1.0.0-rc.1+build.5"] {
            assert!(ok(&semver, v), "{v}");
        }
        for v in ["1.2", "v1", "latest", "01.2.3"] {
            assert!(!ok(&semver, v), "{v}");
        }
        let t = c("{ rfc3339 = true }");
        assert!(ok(&t, "2024-04-05T10:30:00Z") && ok(&t, "2024-04-05T10:30:00.5+02:00"));
        assert!(!ok(&t, "2024-04-05") && !ok(&t, "yesterday"));
        let re = c("{ regex = '^ds-[0-9]{8}$' }");
        assert!(ok(&re, "ds-20240401") && !ok(&re, "ds-2024"));
        let range = c("{ min = 0.9, max = 1.0 }");
        assert!(ok(&range, "0.95") && ok(&range, "1"));
        assert_eq!(
            check_value("label", "k", &range, Some("0.5")),
            vec!["label k = 0.5 below min 0.9"]
        );
        assert_eq!(
            check_value("label", "k", &range, Some("1.5")),
            vec!["label k = 1.5 above max 1"]
        );
        assert_eq!(
            check_value("label", "k", &range, Some("high")),
            vec!["label k = \"high\" is not a number"]
        );
        let one = c("{ one_of = [\"a\", \"b\"] }");
        assert!(ok(&one, "a"));
        assert_eq!(
            check_value("label", "k", &one, Some("c")),
            vec!["label k = \"c\" is not one of [a, b]"]
        );
    }

    #[test]
    fn index_children_are_named_by_platform() {
        let p = policy("");
        let mut ev = good();
        let mut arm = ev.images[0].clone();
        arm.platform = Some("linux/arm64".into());
        arm.labels.remove("model.version");
        ev.images.push(arm);
        let d = evaluate(&p, "models.internal/models/x", &ev);
        assert_eq!(d.reasons, vec!["linux/arm64: label model.version missing"]);
    }

    #[test]
    fn policy_errors_name_the_line() {
        let bad = |text: &str| {
            Policy::parse(text, Path::new("."), "p.toml")
                .unwrap_err()
                .to_string()
        };
        let e = bad("default = \"allow\"\n[[rules]]\nname = \"x\"\nrepositories = [\"a/**\"]\nmod = \"audit\"\n");
        assert!(e.contains("line 5") && e.contains("mod"), "{e}");
        let e = bad("default = \"maybe\"\n");
        assert!(e.contains("line 1") && e.contains("maybe"), "{e}");
        let e = bad("[[rules]]\nname = \"x\"\nrepositories = [\"a/**\"]\n[rules.labels]\nk = { regex = '(' }\n");
        assert!(e.contains("line 5") && e.contains("regex"), "{e}");
        let e = bad("[[rules]]\nname = \"x\"\nrepositories = [\"a/**\"]\n[rules.signatures]\nkeys = [\"nope\"]\n");
        assert!(e.contains("not in [keys]"), "{e}");
        let e = bad("[[rules]]\nname = \"x\"\nrepositories = [\"a/[\"]\n");
        assert!(e.contains("line 3") && e.contains("glob"), "{e}");
        let e = bad(
            "[[rules]]\nname = \"x\"\nrepositories = [\"a\"]\n[rules.labels]\nk = { mni = 1 }\n",
        );
        assert!(e.contains("mni") && e.contains("line 5"), "{e}");
        let e = bad("[keys]\nk = \"does-not-exist.pub\"\n");
        assert!(
            e.contains("line 2") && e.contains("does-not-exist.pub"),
            "{e}"
        );
    }
}
