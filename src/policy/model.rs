//! Policy file model. Parsing is strict: unknown fields and bad values are
//! errors naming the line, so a typo never silently weakens a rule.

use crate::trust::PublicKey;
use globset::{Glob, GlobBuilder, GlobMatcher};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use toml::Spanned;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy {path}: {message}")]
    Invalid { path: String, message: String },
}

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

/// What a label or annotation must satisfy. All set parts must hold; none
/// set means "present".
#[derive(Debug, Clone, Default)]
pub struct Constraint {
    pub regex: Option<regex::Regex>,
    pub semver: bool,
    pub rfc3339: bool,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub one_of: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Audit,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

#[derive(Debug, Clone)]
pub struct SignatureRule {
    pub keys: Vec<String>,
    pub min: usize,
}

#[derive(Debug, Clone)]
pub struct TagRule {
    pub pattern: Option<regex::Regex>,
    pub immutable: bool,
}

/// One `[[rules]]` entry.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    /// Line of the rule in its file (for lint findings).
    pub line: usize,
    pub repositories: Vec<String>,
    /// Line of each repository glob.
    pub repository_lines: Vec<usize>,
    matchers: Vec<GlobMatcher>,
    pub mode: Mode,
    pub signatures: Option<SignatureRule>,
    pub labels: Vec<(String, Constraint)>,
    pub annotations: Vec<(String, Constraint)>,
    pub tags: Option<TagRule>,
}

impl Rule {
    pub fn matches(&self, repo: &str) -> bool {
        self.matchers.iter().any(|m| m.is_match(repo))
    }

    /// Whether pulling from this rule's repositories needs any evidence at all.
    pub fn requires_anything(&self) -> bool {
        self.signatures.is_some()
            || !self.labels.is_empty()
            || !self.annotations.is_empty()
            || self.tags.is_some()
    }
}

/// A validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub default_allow: bool,
    pub keys: BTreeMap<String, PublicKey>,
    pub rules: Vec<Rule>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

/// A glob over canonical names: `*` stays within one path component, `**`
/// crosses them.
pub fn glob(pattern: &str) -> Result<GlobMatcher, globset::Error> {
    let _ = Glob::new(pattern)?;
    Ok(GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()?
        .compile_matcher())
}

impl Policy {
    /// Parse `text`; key paths are relative to `base` (the policy file's folder).
    pub fn parse(text: &str, base: &Path, name: &str) -> Result<Policy, PolicyError> {
        let err = |message: String| PolicyError::Invalid {
            path: name.to_string(),
            message,
        };
        let at = |span: std::ops::Range<usize>, m: String| {
            err(format!("line {}: {m}", line_of(text, span.start)))
        };
        let raw: RawPolicy =
            toml::from_str(text).map_err(|e| err(e.to_string().trim_end().to_string()))?;
        let default_allow = match &raw.default {
            None => true,
            Some(d) => match d.get_ref().as_str() {
                "allow" => true,
                "deny" => false,
                other => {
                    return Err(at(
                        d.span(),
                        format!("default = {other:?}: use \"allow\" or \"deny\""),
                    ))
                }
            },
        };
        let mut keys = BTreeMap::new();
        for (kname, v) in &raw.keys {
            let s = v.get_ref();
            let pem = if s.trim_start().starts_with("-----BEGIN") {
                s.clone()
            } else {
                let p = base.join(s);
                std::fs::read_to_string(&p).map_err(|e| {
                    at(
                        v.span(),
                        format!("key {kname:?}: cannot read {}: {e}", p.display()),
                    )
                })?
            };
            let k = PublicKey::from_pem(&pem)
                .map_err(|e| at(v.span(), format!("key {kname:?}: {e}")))?;
            keys.insert(kname.clone(), k);
        }
        let mut rules: Vec<Rule> = Vec::new();
        for r in &raw.rules {
            let span = r.span();
            let r = r.get_ref();
            let rl = |m: String| at(span.clone(), format!("rule {:?}: {m}", r.name));
            if r.name.trim().is_empty() {
                return Err(at(span.clone(), "a rule needs a non-empty name".into()));
            }
            if rules.iter().any(|x| x.name == r.name) {
                return Err(rl("two rules have this name".into()));
            }
            if r.repositories.is_empty() {
                return Err(rl("repositories is empty: it would match nothing".into()));
            }
            let mut matchers = Vec::new();
            for g in &r.repositories {
                if g.get_ref().chars().any(|c| c.is_ascii_uppercase()) {
                    return Err(at(
                        g.span(),
                        format!(
                            "rule {:?}: repository glob {:?} has uppercase letters and can never match: canonical names are lowercase",
                            r.name,
                            g.get_ref()
                        ),
                    ));
                }
                matchers.push(glob(g.get_ref()).map_err(|e| {
                    at(
                        g.span(),
                        format!("rule {:?}: repository glob {:?}: {e}", r.name, g.get_ref()),
                    )
                })?);
            }
            let mode = match r.mode.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
                None | Some(("enforce", _)) => Mode::Enforce,
                Some(("audit", _)) => Mode::Audit,
                Some((other, s)) => {
                    return Err(at(
                        s,
                        format!(
                            "rule {:?}: mode = {other:?}: use \"enforce\" or \"audit\"",
                            r.name
                        ),
                    ))
                }
            };
            let signatures = match &r.signatures {
                None => None,
                Some(s) => {
                    let sp = s.span();
                    let s = s.get_ref();
                    if s.keys.is_empty() {
                        return Err(at(
                            sp,
                            format!("rule {:?}: signatures.keys is empty", r.name),
                        ));
                    }
                    for k in &s.keys {
                        if !keys.contains_key(k) {
                            return Err(at(sp.clone(), format!("rule {:?}: signatures.keys names {k:?}, which is not in [keys]", r.name)));
                        }
                    }
                    if s.min == 0 || s.min > s.keys.len() {
                        return Err(at(sp, format!("rule {:?}: signatures.min = {} must be between 1 and the {} keys listed", r.name, s.min, s.keys.len())));
                    }
                    Some(SignatureRule {
                        keys: s.keys.clone(),
                        min: s.min,
                    })
                }
            };
            let constraints = |what: &str,
                               m: &BTreeMap<String, Spanned<RawConstraint>>|
             -> Result<Vec<(String, Constraint)>, PolicyError> {
                let mut out = Vec::new();
                for (k, c) in m {
                    let sp = c.span();
                    let c = c.get_ref();
                    let regex = match &c.regex {
                        None => None,
                        Some(re) => Some(regex::Regex::new(re).map_err(|e| {
                            at(
                                sp.clone(),
                                format!("rule {:?}: {what} {k:?}: regex: {e}", r.name),
                            )
                        })?),
                    };
                    for (which, v) in [("min", c.min), ("max", c.max)] {
                        if v.is_some_and(|v| !v.is_finite()) {
                            return Err(at(
                                sp.clone(),
                                format!(
                                    "rule {:?}: {what} {k:?}: {which} must be a finite number",
                                    r.name
                                ),
                            ));
                        }
                    }
                    if let (Some(a), Some(b)) = (c.min, c.max) {
                        if a > b {
                            return Err(at(
                                sp,
                                format!(
                                    "rule {:?}: {what} {k:?}: min {a} is above max {b}",
                                    r.name
                                ),
                            ));
                        }
                    }
                    if c.one_of.as_ref().is_some_and(|v| v.is_empty()) {
                        return Err(at(
                            sp,
                            format!("rule {:?}: {what} {k:?}: one_of is empty", r.name),
                        ));
                    }
                    out.push((
                        k.clone(),
                        Constraint {
                            regex,
                            semver: c.semver.unwrap_or(false),
                            rfc3339: c.rfc3339.unwrap_or(false),
                            min: c.min,
                            max: c.max,
                            one_of: c.one_of.clone(),
                        },
                    ));
                }
                Ok(out)
            };
            let labels = constraints("label", &r.labels)?;
            let annotations = constraints("annotation", &r.annotations)?;
            let tags = match &r.tags {
                None => None,
                Some(t) => Some(TagRule {
                    pattern: match &t.pattern {
                        None => None,
                        Some(p) => Some(regex::Regex::new(p.get_ref()).map_err(|e| {
                            at(p.span(), format!("rule {:?}: tags.pattern: {e}", r.name))
                        })?),
                    },
                    immutable: t.immutable,
                }),
            };
            rules.push(Rule {
                name: r.name.clone(),
                line: line_of(text, span.start),
                repositories: r.repositories.iter().map(|g| g.get_ref().clone()).collect(),
                repository_lines: r
                    .repositories
                    .iter()
                    .map(|g| line_of(text, g.span().start))
                    .collect(),
                matchers,
                mode,
                signatures,
                labels,
                annotations,
                tags,
            });
        }
        Ok(Policy {
            default_allow,
            keys,
            rules,
        })
    }

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

    /// The first rule whose repositories match.
    pub fn rule_for(&self, repo: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.matches(repo))
    }

    /// What `policy lint` finds beyond parse errors: globs that can never
    /// match a canonical name (checked against `upstreams` when known) and
    /// rules that an earlier rule shadows.
    pub fn lint(&self, upstreams: Option<&[String]>) -> Vec<Finding> {
        let mut out = Vec::new();
        for r in &self.rules {
            for (g, line) in r.repositories.iter().zip(&r.repository_lines) {
                if let Some(f) = glob_reach(&r.name, g, *line, upstreams) {
                    out.push(f);
                }
            }
        }
        for (i, r) in self.rules.iter().enumerate() {
            let samples: Vec<String> = r
                .repositories
                .iter()
                .zip(&r.matchers)
                .flat_map(|(g, m)| samples_of(g).into_iter().filter(|x| m.is_match(x)))
                .collect();
            if samples.is_empty() {
                continue;
            }
            let earlier = &self.rules[..i];
            let shadowing = earlier
                .iter()
                .find(|e| samples.iter().all(|x| e.matches(x)))
                .or_else(|| {
                    samples
                        .iter()
                        .all(|x| earlier.iter().any(|e| e.matches(x)))
                        .then(|| earlier.first())
                        .flatten()
                });
            if let Some(e) = shadowing {
                out.push(Finding {
                    severity: Severity::Warning,
                    line: r.line,
                    message: format!(
                        "rule {:?} is shadowed: every repository it names is matched by an earlier rule (first: {:?}, line {}), and the first matching rule decides, so it never applies",
                        r.name, e.name, e.line
                    ),
                });
            }
        }
        out
    }

    /// Human-readable description of the rules as understood.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "default: {}\n",
            if self.default_allow { "allow" } else { "deny" }
        );
        for (k, v) in &self.keys {
            s += &format!("key {k}: {} (hint {})\n", v.algorithm(), v.hint());
        }
        for (i, r) in self.rules.iter().enumerate() {
            s += &format!(
                "rule {} {:?} ({}): repositories {}\n",
                i + 1,
                r.name,
                r.mode.as_str(),
                r.repositories.join(", ")
            );
            if let Some(sig) = &r.signatures {
                s += &format!(
                    "  signatures: at least {} of [{}]\n",
                    sig.min,
                    sig.keys.join(", ")
                );
            }
            for (what, list) in [("label", &r.labels), ("annotation", &r.annotations)] {
                for (k, c) in list {
                    s += &format!("  {what} {k}: {}\n", c.describe());
                }
            }
            if let Some(t) = &r.tags {
                if let Some(p) = &t.pattern {
                    s += &format!("  tags must match {}\n", p.as_str());
                }
                if t.immutable {
                    s += "  tags are immutable once seen\n";
                }
            }
            if !r.requires_anything() {
                s += "  (no requirements: admits everything it matches)\n";
            }
        }
        s
    }
}

/// How bad a lint finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The policy does not enforce what it says.
    Error,
    /// Probably a mistake.
    Warning,
}

/// One thing `policy lint` reports, with the line it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{level}: line {}: {}", self.line, self.message)
    }
}

fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?', '[', '{'])
}

/// Whether glob `g` of rule `rule` can match a canonical name
/// `<upstream>/<path>`.
fn glob_reach(rule: &str, g: &str, line: usize, upstreams: Option<&[String]>) -> Option<Finding> {
    if g.starts_with("**") {
        return None;
    }
    let Some((first, _)) = g.split_once('/') else {
        return Some(Finding {
            severity: Severity::Error,
            line,
            message: format!(
                "rule {rule:?}: repository glob {g:?} can never match: canonical names are <upstream>/<path>, at least two components (write e.g. \"{g}/**\" or \"*/{g}\")"
            ),
        });
    };
    match upstreams {
        Some(names) => {
            let m = glob(first).ok()?;
            if names.iter().any(|n| m.is_match(n)) {
                return None;
            }
            Some(Finding {
                severity: Severity::Error,
                line,
                message: format!(
                    "rule {rule:?}: repository glob {g:?} can never match: canonical names start with an upstream name ({}), and {first:?} matches none of them (write e.g. \"*/{g}\")",
                    names.join(", ")
                ),
            })
        }
        None if !has_wildcard(first)
            && !first.contains(['.', ':'])
            && first != "localhost" =>
        {
            Some(Finding {
                severity: Severity::Warning,
                line,
                message: format!(
                    "rule {rule:?}: repository glob {g:?} starts with {first:?}, which does not look like an upstream name: canonical names are <upstream>/<path> (e.g. docker.io/library/alpine); lint with --config to check it against your upstreams"
                ),
            })
        }
        None => None,
    }
}

/// Names a glob matches, to test shadowing with: wildcards replaced by short
/// and long stand-ins. Globs with classes or alternatives give none.
fn samples_of(g: &str) -> Vec<String> {
    if g.contains(['[', '{']) {
        return vec![];
    }
    [("a", "x", "q"), ("a/b/c", "long-name_2", "z")]
        .iter()
        .map(|(deep, star, one)| {
            g.replace("**", "\u{0}")
                .replace('*', star)
                .replace('?', one)
                .replace('\u{0}', deep)
        })
        .collect()
}

impl Constraint {
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(r) = &self.regex {
            parts.push(format!("matches {}", r.as_str()));
        }
        if self.semver {
            parts.push("semantic version".into());
        }
        if self.rfc3339 {
            parts.push("RFC 3339 time".into());
        }
        if let Some(m) = self.min {
            parts.push(format!(">= {m}"));
        }
        if let Some(m) = self.max {
            parts.push(format!("<= {m}"));
        }
        if let Some(v) = &self.one_of {
            parts.push(format!("one of [{}]", v.join(", ")));
        }
        if parts.is_empty() {
            "present".into()
        } else {
            parts.join(", ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Policy, PolicyError> {
        Policy::parse(text, Path::new("."), "p.toml")
    }

    fn rule(name: &str, globs: &str) -> String {
        format!("[[rules]]\nname = \"{name}\"\nrepositories = [{globs}]\n[rules.tags]\nimmutable = true\n")
    }

    #[test]
    fn non_finite_numbers_and_uppercase_globs_are_errors_with_lines() {
        let text = format!(
            "{}[rules.labels]\n\"accuracy.test\" = {{ min = nan }}\n",
            rule("m", "\"*/models/**\"")
        );
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("line 7") && e.contains("finite"), "{e}");
        let e = parse(&rule("m", "\"docker.io/Models/**\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3") && e.contains("uppercase"), "{e}");
    }

    #[test]
    fn globs_that_cannot_match_a_canonical_name() {
        let p = parse(&(rule("a", "\"models/**\"") + &rule("b", "\"models\""))).unwrap();
        let ups = vec!["docker.io".to_string(), "registry.test".to_string()];
        let f = p.lint(Some(&ups));
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f.iter().all(|x| x.severity == Severity::Error));
        assert_eq!(f[0].line, 3);
        assert!(f[0].message.contains("matches none of them"), "{f:?}");
        assert!(f[1].message.contains("at least two components"), "{f:?}");
        // Without the upstreams it is a warning naming the line.
        let f = p.lint(None);
        assert_eq!(f[0].severity, Severity::Warning);
        assert_eq!(f[0].line, 3);
        // Wildcards and real upstream names are fine.
        let ok =
            parse(&(rule("a", "\"*/models/**\"") + &rule("b", "\"registry.test/x/**\""))).unwrap();
        assert!(ok.lint(Some(&ups)).is_empty(), "{:?}", ok.lint(Some(&ups)));
    }

    #[test]
    fn shadowed_rules_are_named() {
        let p = parse(
            &(rule("all", "\"*/models/**\"")
                + &rule("team", "\"docker.io/models/team/*\"")
                + &rule("other", "\"docker.io/other/**\"")),
        )
        .unwrap();
        let f = p.lint(None);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].severity, Severity::Warning);
        assert_eq!(f[0].line, 6);
        assert!(f[0].message.contains("\"team\" is shadowed"), "{f:?}");
        // A narrower rule first shadows nothing.
        let p = parse(&(rule("one", "\"*/models/a\"") + &rule("all", "\"*/models/**\""))).unwrap();
        assert!(p.lint(None).is_empty());
    }
}
