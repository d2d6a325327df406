//! Reading a policy file: strict TOML (unknown fields and bad values are
//! errors naming the line), then one small step per part — default, keys,
//! each rule's globs, mode, signatures, constraints and tags.

use super::model::{glob, Constraint, Mode, Policy, PolicyError, Rule, SignatureRule, TagRule};
use crate::trust::PublicKey;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    default: Option<Spanned<String>>,
    #[serde(default)]
    keys: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    rules: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    repositories: Vec<Spanned<String>>,
    #[serde(default)]
    mode: Option<Spanned<String>>,
    #[serde(default)]
    signatures: Option<Spanned<RawSignatures>>,
    #[serde(default)]
    labels: BTreeMap<String, Spanned<RawConstraint>>,
    #[serde(default)]
    annotations: BTreeMap<String, Spanned<RawConstraint>>,
    #[serde(default)]
    tags: Option<RawTags>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignatures {
    keys: Vec<String>,
    #[serde(default = "one")]
    min: usize,
}

fn one() -> usize {
    1
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConstraint {
    regex: Option<String>,
    semver: Option<bool>,
    rfc3339: Option<bool>,
    min: Option<f64>,
    max: Option<f64>,
    one_of: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTags {
    pattern: Option<Spanned<String>>,
    #[serde(default)]
    immutable: bool,
}

/// The line of byte `offset` in `text` (1-based).
pub fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

/// Where errors point: the file and its text.
struct Source<'a> {
    text: &'a str,
    name: &'a str,
}

impl Source<'_> {
    fn err(&self, message: String) -> PolicyError {
        PolicyError::Invalid {
            path: self.name.to_string(),
            message,
        }
    }

    fn at(&self, span: Range<usize>, m: String) -> PolicyError {
        self.err(format!("line {}: {m}", line_of(self.text, span.start)))
    }
}

fn parse_default(src: &Source<'_>, d: &Option<Spanned<String>>) -> Result<bool, PolicyError> {
    match d.as_ref().map(|d| (d.get_ref().as_str(), d.span())) {
        None | Some(("allow", _)) => Ok(true),
        Some(("deny", _)) => Ok(false),
        Some((other, span)) => Err(src.at(
            span,
            format!("default = {other:?}: use \"allow\" or \"deny\""),
        )),
    }
}

fn parse_keys(
    src: &Source<'_>,
    base: &Path,
    raw: &BTreeMap<String, Spanned<String>>,
) -> Result<BTreeMap<String, PublicKey>, PolicyError> {
    let mut keys = BTreeMap::new();
    for (kname, v) in raw {
        let s = v.get_ref();
        let pem = if s.trim_start().starts_with("-----BEGIN") {
            s.clone()
        } else {
            let p = base.join(s);
            std::fs::read_to_string(&p).map_err(|e| {
                src.at(
                    v.span(),
                    format!("key {kname:?}: cannot read {}: {e}", p.display()),
                )
            })?
        };
        let k = PublicKey::from_pem(&pem)
            .map_err(|e| src.at(v.span(), format!("key {kname:?}: {e}")))?;
        keys.insert(kname.clone(), k);
    }
    Ok(keys)
}

fn parse_globs(src: &Source<'_>, r: &RawRule) -> Result<Vec<globset::GlobMatcher>, PolicyError> {
    let mut matchers = Vec::new();
    for g in &r.repositories {
        if g.get_ref().chars().any(|c| c.is_ascii_uppercase()) {
            return Err(src.at(
                g.span(),
                format!(
                    "rule {:?}: repository glob {:?} has uppercase letters and can never match: canonical names are lowercase",
                    r.name,
                    g.get_ref()
                ),
            ));
        }
        matchers.push(glob(g.get_ref()).map_err(|e| {
            src.at(
                g.span(),
                format!("rule {:?}: repository glob {:?}: {e}", r.name, g.get_ref()),
            )
        })?);
    }
    Ok(matchers)
}

fn parse_mode(src: &Source<'_>, r: &RawRule) -> Result<Mode, PolicyError> {
    match r.mode.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
        None | Some(("enforce", _)) => Ok(Mode::Enforce),
        Some(("audit", _)) => Ok(Mode::Audit),
        Some((other, s)) => Err(src.at(
            s,
            format!(
                "rule {:?}: mode = {other:?}: use \"enforce\" or \"audit\"",
                r.name
            ),
        )),
    }
}

fn parse_signatures(
    src: &Source<'_>,
    r: &RawRule,
    keys: &BTreeMap<String, PublicKey>,
) -> Result<Option<SignatureRule>, PolicyError> {
    let Some(s) = &r.signatures else {
        return Ok(None);
    };
    let (sp, s) = (s.span(), s.get_ref());
    if s.keys.is_empty() {
        return Err(src.at(sp, format!("rule {:?}: signatures.keys is empty", r.name)));
    }
    if let Some(k) = s.keys.iter().find(|k| !keys.contains_key(*k)) {
        return Err(src.at(
            sp,
            format!(
                "rule {:?}: signatures.keys names {k:?}, which is not in [keys]",
                r.name
            ),
        ));
    }
    if s.min == 0 || s.min > s.keys.len() {
        return Err(src.at(
            sp,
            format!(
                "rule {:?}: signatures.min = {} must be between 1 and the {} keys listed",
                r.name,
                s.min,
                s.keys.len()
            ),
        ));
    }
    Ok(Some(SignatureRule {
        keys: s.keys.clone(),
        min: s.min,
    }))
}

fn parse_constraint(
    src: &Source<'_>,
    what: &str,
    rule: &str,
    k: &str,
    c: &Spanned<RawConstraint>,
) -> Result<Constraint, PolicyError> {
    let (sp, c) = (c.span(), c.get_ref());
    let bad = |m: String| src.at(sp.clone(), format!("rule {rule:?}: {what} {k:?}: {m}"));
    let regex = c
        .regex
        .as_deref()
        .map(regex::Regex::new)
        .transpose()
        .map_err(|e| bad(format!("regex: {e}")))?;
    for (which, v) in [("min", c.min), ("max", c.max)] {
        if v.is_some_and(|v| !v.is_finite()) {
            return Err(bad(format!("{which} must be a finite number")));
        }
    }
    if let (Some(a), Some(b)) = (c.min, c.max) {
        if a > b {
            return Err(bad(format!("min {a} is above max {b}")));
        }
    }
    if c.one_of.as_ref().is_some_and(|v| v.is_empty()) {
        return Err(bad("one_of is empty".into()));
    }
    Ok(Constraint {
        regex,
        semver: c.semver.unwrap_or(false),
        rfc3339: c.rfc3339.unwrap_or(false),
        min: c.min,
        max: c.max,
        one_of: c.one_of.clone(),
    })
}

fn parse_constraints(
    src: &Source<'_>,
    what: &str,
    r: &RawRule,
    m: &BTreeMap<String, Spanned<RawConstraint>>,
) -> Result<Vec<(String, Constraint)>, PolicyError> {
    m.iter()
        .map(|(k, c)| Ok((k.clone(), parse_constraint(src, what, &r.name, k, c)?)))
        .collect()
}

fn parse_tags(src: &Source<'_>, r: &RawRule) -> Result<Option<TagRule>, PolicyError> {
    let Some(t) = &r.tags else {
        return Ok(None);
    };
    let pattern = t
        .pattern
        .as_ref()
        .map(|p| {
            regex::Regex::new(p.get_ref())
                .map_err(|e| src.at(p.span(), format!("rule {:?}: tags.pattern: {e}", r.name)))
        })
        .transpose()?;
    Ok(Some(TagRule {
        pattern,
        immutable: t.immutable,
    }))
}

fn parse_rule(
    src: &Source<'_>,
    raw: &Spanned<RawRule>,
    keys: &BTreeMap<String, PublicKey>,
    earlier: &[Rule],
) -> Result<Rule, PolicyError> {
    let (span, r) = (raw.span(), raw.get_ref());
    let rl = |m: &str| src.at(span.clone(), format!("rule {:?}: {m}", r.name));
    if r.name.trim().is_empty() {
        return Err(src.at(span.clone(), "a rule needs a non-empty name".into()));
    }
    if earlier.iter().any(|x| x.name == r.name) {
        return Err(rl("two rules have this name"));
    }
    if r.repositories.is_empty() {
        return Err(rl("repositories is empty: it would match nothing"));
    }
    Ok(Rule {
        name: r.name.clone(),
        line: line_of(src.text, span.start),
        repositories: r.repositories.iter().map(|g| g.get_ref().clone()).collect(),
        repository_lines: r
            .repositories
            .iter()
            .map(|g| line_of(src.text, g.span().start))
            .collect(),
        matchers: parse_globs(src, r)?,
        mode: parse_mode(src, r)?,
        signatures: parse_signatures(src, r, keys)?,
        labels: parse_constraints(src, "label", r, &r.labels)?,
        annotations: parse_constraints(src, "annotation", r, &r.annotations)?,
        tags: parse_tags(src, r)?,
    })
}

impl Policy {
    /// Parse `text`; key paths are relative to `base` (the policy file's folder).
    pub fn parse(text: &str, base: &Path, name: &str) -> Result<Policy, PolicyError> {
        let src = Source { text, name };
        let raw: RawPolicy =
            toml::from_str(text).map_err(|e| src.err(e.to_string().trim_end().to_string()))?;
        let default_allow = parse_default(&src, &raw.default)?;
        let keys = parse_keys(&src, base, &raw.keys)?;
        let mut rules: Vec<Rule> = Vec::new();
        for r in &raw.rules {
            let rule = parse_rule(&src, r, &keys, &rules)?;
            rules.push(rule);
        }
        Ok(Policy {
            default_allow,
            keys,
            rules,
        })
    }

    /// Read and parse the file at `path`; returns the policy and its text.
    pub fn load(path: &Path) -> Result<(Policy, String), PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError::Invalid {
            path: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Ok((
            Policy::parse(&text, base, &path.display().to_string())?,
            text,
        ))
    }
}
