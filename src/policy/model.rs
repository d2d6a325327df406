//! The policy as modelgate holds it: rules, their constraints, keys. Read
//! from a file by [`super::parse`], checked by [`super::lint`]. Pure.

use crate::trust::PublicKey;
use globset::{Glob, GlobBuilder, GlobMatcher};
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy {path}: {message}")]
    Invalid { path: String, message: String },
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
    pub(super) matchers: Vec<GlobMatcher>,
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
    /// The first rule whose repositories match.
    pub fn rule_for(&self, repo: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.matches(repo))
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
