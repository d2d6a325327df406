//! The policy as modelgate holds it: rules, their constraints, keys. Read
//! from a file by [`super::parse`], checked by [`super::lint`]. Pure.

use crate::trust::notation::{Level, TrustStore};
use crate::trust::sigstore::TrustedRoot;
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
    /// Every element of a list must be one of these.
    pub each_one_of: Option<Vec<String>>,
    /// Absent is fine (otherwise a missing value is a violation).
    pub optional: bool,
    /// How values (and min/max) are written when they carry units.
    pub quantity: Option<crate::policy::facts::Quantity>,
    /// How far a release may fall behind the one before it.
    pub regression: Option<Regression>,
}

/// A regression gate on a numeric fact: compared with the previous release.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Regression {
    /// Higher is better (accuracy): at most this much lower.
    MaxDrop(f64),
    /// Lower is better (loss, latency): at most this much higher.
    MaxRise(f64),
}

impl Regression {
    /// Why `now` is a regression from `before`, if it is:
    /// `0.011 below v1.2.0 (0.923); max_drop 0.005` (with `what` the
    /// previous release's name).
    pub fn violated(self, before: f64, now: f64, what: &str) -> Option<String> {
        // A tolerance on the exact decimal values: 0.923 - 0.918 is 0.005.
        let eps = 1e-9;
        let (diff, side, knob, max) = match self {
            Regression::MaxDrop(m) => (before - now, "below", "max_drop", m),
            Regression::MaxRise(m) => (now - before, "above", "max_rise", m),
        };
        (diff > max + eps).then(|| {
            format!(
                "{} {side} {what} ({}); {knob} {}",
                fmt_num(diff),
                fmt_num(before),
                fmt_num(max)
            )
        })
    }
}

/// A number without float noise (0.011, not 0.010999999999999899).
pub fn fmt_num(n: f64) -> String {
    let s = format!("{:.6}", n);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".into()
    } else {
        s.to_string()
    }
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

/// How a certificate field is matched: exactly, or by a regular
/// expression anchored at both ends.
#[derive(Debug, Clone)]
pub enum FieldMatch {
    Exact(String),
    Regex(regex::Regex),
}

impl FieldMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            FieldMatch::Exact(s) => s == value,
            FieldMatch::Regex(r) => r.is_match(value),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            FieldMatch::Exact(s) => format!("{s:?}"),
            FieldMatch::Regex(r) => format!("/{}/", r.as_str()),
        }
    }
}

/// One accepted keyless (Fulcio) signer: a certificate from the named
/// trusted root whose OIDC issuer and subject match.
#[derive(Debug, Clone)]
pub struct KeylessSigner {
    /// Line of the entry in its file (for lint findings).
    pub line: usize,
    pub trust: String,
    pub issuer: FieldMatch,
    pub subject: FieldMatch,
    /// Pins on the GitHub Actions facts Fulcio records (all must hold).
    pub github: Vec<GithubPin>,
}

/// One GitHub Actions fact a keyless certificate must carry. Fulcio's
/// extension arc (under 1.3.6.1.4.1.57264.1) of the current UTF8String
/// form and of the deprecated raw form, and the expected value of each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GithubPin {
    pub field: &'static str,
    pub arc: u32,
    pub expected: String,
    pub legacy_arc: Option<u32>,
    pub legacy_expected: String,
}

impl GithubPin {
    /// `field` = `value` as the pin it makes; `None` for an unknown field.
    pub fn new(field: &str, value: &str) -> Option<GithubPin> {
        let pin = |field, arc, expected: String, legacy_arc, legacy: &str| GithubPin {
            field,
            arc,
            expected,
            legacy_arc,
            legacy_expected: legacy.to_string(),
        };
        Some(match field {
            // "owner/name": .12 holds the URL, legacy .5 the bare name.
            "repository" => pin(
                "repository",
                12,
                format!("https://github.com/{value}"),
                Some(5),
                value,
            ),
            "trigger" => pin("trigger", 20, value.into(), Some(2), value),
            "ref" => pin("ref", 14, value.into(), Some(6), value),
            "sha" => pin("sha", 13, value.into(), Some(3), value),
            "runner_environment" => pin("runner_environment", 11, value.into(), None, value),
            _ => return None,
        })
    }

    /// Whether Fulcio's extensions (by arc) satisfy the pin: the current
    /// form when present, else the deprecated one; absent fails.
    pub fn holds(&self, fulcio: &BTreeMap<u32, String>) -> bool {
        match (
            fulcio.get(&self.arc),
            self.legacy_arc.and_then(|a| fulcio.get(&a)),
        ) {
            (Some(v), _) => *v == self.expected,
            (None, Some(v)) => *v == self.legacy_expected,
            (None, None) => false,
        }
    }
}

impl KeylessSigner {
    /// Whether a verified signer is one this entry accepts; the subject
    /// that matched if so.
    pub fn accepts<'a>(
        &self,
        subjects: &'a [String],
        issuer: &str,
        fulcio: &BTreeMap<u32, String>,
    ) -> Option<&'a String> {
        if !self.issuer.matches(issuer) || !self.github.iter().all(|p| p.holds(fulcio)) {
            return None;
        }
        subjects.iter().find(|s| self.subject.matches(s))
    }

    /// Why this entry does not accept a signer, for explanations:
    /// `does not match subject_regex /^(?:...)$/ (entry on line 12)`.
    pub fn why_not(
        &self,
        subjects: &[String],
        issuer: &str,
        fulcio: &BTreeMap<u32, String>,
    ) -> String {
        let field = |name: &str, m: &FieldMatch| match m {
            FieldMatch::Exact(_) => format!("{name} {}", m.describe()),
            FieldMatch::Regex(_) => format!("{name}_regex {}", m.describe()),
        };
        let why = if !self.issuer.matches(issuer) {
            format!("does not match {}", field("issuer", &self.issuer))
        } else if !subjects.iter().any(|s| self.subject.matches(s)) {
            format!("does not match {}", field("subject", &self.subject))
        } else {
            let failed: Vec<String> = self
                .github
                .iter()
                .filter(|p| !p.holds(fulcio))
                .map(|p| format!("github.{} = {:?}", p.field, p.legacy_expected))
                .collect();
            format!("does not hold {}", failed.join(", "))
        };
        format!("{why} (keyless entry on line {})", self.line)
    }
}

/// Signers of keyless signatures are named `keyless:<subject> (<issuer>)`
/// in evidence, apart from key names (which cannot contain a colon-space
/// pair like this one; see `parse`).
pub const KEYLESS_SIGNER: &str = "keyless:";

/// Signers of Notation signatures are named `notation:<leaf subject>`.
pub const NOTATION_SIGNER: &str = "notation:";

/// Whom a Notation entry accepts: any certificate that chains to the trust
/// store, or a leaf whose subject holds these attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotationIdentity {
    Any,
    Subject {
        text: String,
        attributes: BTreeMap<String, String>,
    },
}

impl NotationIdentity {
    /// `"*"` or `"x509.subject: C=.., ST=.., O=.., ..."` (C, ST and O are
    /// required, as Notation requires them).
    pub fn parse(s: &str) -> Result<NotationIdentity, String> {
        if s == "*" {
            return Ok(NotationIdentity::Any);
        }
        let dn = s
            .strip_prefix("x509.subject:")
            .ok_or("write \"x509.subject: C=.., ST=.., O=..\" or \"*\"")?;
        let attributes = crate::trust::notation::parse_dn(dn.trim())?;
        for need in ["C", "ST", "O"] {
            if !attributes.contains_key(need) {
                return Err(format!(
                    "the subject needs {need} (Notation requires C, ST and O)"
                ));
            }
        }
        Ok(NotationIdentity::Subject {
            text: dn.trim().to_string(),
            attributes,
        })
    }

    pub fn accepts(&self, subject: &BTreeMap<String, String>) -> bool {
        match self {
            NotationIdentity::Any => true,
            NotationIdentity::Subject { attributes, .. } => {
                crate::trust::notation::dn_subset(attributes, subject)
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            NotationIdentity::Any => "any certificate".into(),
            NotationIdentity::Subject { text, .. } => format!("x509.subject {text:?}"),
        }
    }
}

/// One accepted Notation signer: a chain to the named trust store whose
/// leaf subject matches one of the identities, verified at `level`
/// (`audit` signatures are reported, never counted).
#[derive(Debug, Clone)]
pub struct NotationSigner {
    pub line: usize,
    pub trust: String,
    pub identities: Vec<NotationIdentity>,
    pub level: Level,
}

impl NotationSigner {
    /// The identity that accepts this leaf subject, if any.
    pub fn accepts(&self, subject: &BTreeMap<String, String>) -> Option<&NotationIdentity> {
        self.identities.iter().find(|i| i.accepts(subject))
    }
}

#[derive(Debug, Clone)]
pub struct SignatureRule {
    pub keys: Vec<String>,
    pub keyless: Vec<KeylessSigner>,
    pub notation: Vec<NotationSigner>,
    pub min: usize,
}

impl SignatureRule {
    /// The distinct signers in `signers` this rule counts: its keys, and
    /// every keyless identity (only identities one of the rule's keyless
    /// entries accepted are recorded).
    pub fn counted<'a>(&self, signers: &'a std::collections::BTreeSet<String>) -> Vec<&'a str> {
        signers
            .iter()
            .filter(|s| {
                s.starts_with(KEYLESS_SIGNER)
                    || s.starts_with(NOTATION_SIGNER)
                    || self.keys.contains(*s)
            })
            .map(String::as_str)
            .collect()
    }

    /// Who may sign, for messages: `[release, keyless "subject" from "issuer"]`.
    pub fn describe_signers(&self) -> String {
        let keyless = self.keyless.iter().map(|k| {
            let pins: Vec<String> = k
                .github
                .iter()
                .map(|p| format!("{}={:?}", p.field, p.legacy_expected))
                .collect();
            let pins = if pins.is_empty() {
                String::new()
            } else {
                format!(" (github {})", pins.join(" "))
            };
            format!(
                "keyless {} from {}{pins}",
                k.subject.describe(),
                k.issuer.describe()
            )
        });
        let notation = self.notation.iter().map(|n| {
            let ids: Vec<String> = n.identities.iter().map(|i| i.describe()).collect();
            format!(
                "notation {} of trust store {:?} ({})",
                ids.join(" or "),
                n.trust,
                n.level.as_str()
            )
        });
        let all: Vec<String> = self
            .keys
            .iter()
            .cloned()
            .chain(keyless)
            .chain(notation)
            .collect();
        format!("[{}]", all.join(", "))
    }
}

/// `[rules.layers]`: what the layers of a model may be.
#[derive(Debug, Clone, Default)]
pub struct LayerRule {
    /// When set, every layer's media type must match one of these globs.
    pub allow_media_types: Vec<(String, GlobMatcher)>,
    pub deny_media_types: Vec<(String, GlobMatcher)>,
    /// File paths (annotations, Kitfile paths) that may not appear;
    /// matched against the whole path and its last component.
    pub deny_paths: Vec<(String, GlobMatcher)>,
    /// Every layer must declare the path of its file.
    pub require_paths: bool,
    pub max_layer_bytes: Option<u64>,
    pub max_total_bytes: Option<u64>,
    pub max_layers: Option<usize>,
}

impl LayerRule {
    pub fn describe(&self) -> String {
        let globs = |v: &[(String, GlobMatcher)]| {
            v.iter()
                .map(|(g, _)| g.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut parts = Vec::new();
        if !self.allow_media_types.is_empty() {
            parts.push(format!(
                "media types only [{}]",
                globs(&self.allow_media_types)
            ));
        }
        if !self.deny_media_types.is_empty() {
            parts.push(format!(
                "no media types [{}]",
                globs(&self.deny_media_types)
            ));
        }
        if !self.deny_paths.is_empty() {
            parts.push(format!("no paths [{}]", globs(&self.deny_paths)));
        }
        if self.require_paths {
            parts.push("every layer names its file".into());
        }
        for (what, v) in [
            ("layer", self.max_layer_bytes),
            ("total", self.max_total_bytes),
        ] {
            if let Some(v) = v {
                parts.push(format!("{what} <= {v} bytes"));
            }
        }
        if let Some(n) = self.max_layers {
            parts.push(format!("<= {n} layers"));
        }
        parts.join("; ")
    }
}

#[derive(Debug, Clone)]
pub struct TagRule {
    pub pattern: Option<regex::Regex>,
    pub immutable: bool,
    /// Tags that may move even when releases are immutable, but only to a
    /// release of the repository.
    pub channels: Vec<String>,
}

impl TagRule {
    pub fn is_channel(&self, tag: &str) -> bool {
        self.channels.iter().any(|c| c == tag)
    }
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
    /// The kinds admitted here (None: every kind).
    pub kinds: Option<Vec<String>>,
    /// Normalized model facts (`[rules.model]`).
    pub model: Vec<(String, Constraint)>,
    /// Raw JSON pointers into the config blob, per kind (`[rules.config.<kind>]`).
    pub config: BTreeMap<String, Vec<(String, Constraint)>>,
    pub layers: Option<LayerRule>,
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
            || self.kinds.is_some()
            || self.needs_model()
    }

    /// Whether deciding needs the model facts (and so the config blob).
    pub fn needs_model(&self) -> bool {
        !self.model.is_empty() || !self.config.is_empty() || self.layers.is_some()
    }
}

/// A validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub default_allow: bool,
    pub keys: BTreeMap<String, PublicKey>,
    /// Sigstore trusted roots by their `[trust.NAME]`.
    pub trust: BTreeMap<String, std::sync::Arc<TrustedRoot>>,
    /// Notation trust stores by their `[trust.NAME]`.
    pub notation: BTreeMap<String, std::sync::Arc<TrustStore>>,
    pub rules: Vec<Rule>,
    /// The files (and trust store directories) the policy read besides
    /// itself: key files, trusted roots, Notation certificates. A change
    /// to any of them reloads the policy.
    pub sources: Vec<std::path::PathBuf>,
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
        for (name, root) in &self.trust {
            s += &format!(
                "trust {name}: Sigstore root with {} certificate authorities, {} transparency logs, {} CT logs\n",
                root.certificate_authorities.len(),
                root.tlogs.len(),
                root.ctlogs.len()
            );
        }
        for (name, store) in &self.notation {
            s += &format!(
                "trust {name}: Notation trust store with {} CA certificates\n",
                store.certs.len()
            );
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
                    "  signatures: at least {} of {}\n",
                    sig.min,
                    sig.describe_signers()
                );
            }
            for (what, list) in [("label", &r.labels), ("annotation", &r.annotations)] {
                for (k, c) in list {
                    s += &format!("  {what} {k}: {}\n", c.describe());
                }
            }
            if let Some(k) = &r.kinds {
                s += &format!("  kinds admitted: {}\n", k.join(", "));
            }
            for (fact, c) in &r.model {
                s += &format!("  model {fact}: {}\n", c.describe());
            }
            for (kind, pointers) in &r.config {
                for (p, c) in pointers {
                    s += &format!("  config of {kind} {p}: {}\n", c.describe());
                }
            }
            if let Some(l) = &r.layers {
                s += &format!("  layers: {}\n", l.describe());
            }
            if let Some(t) = &r.tags {
                if let Some(p) = &t.pattern {
                    s += &format!("  tags must match {}\n", p.as_str());
                }
                if t.immutable {
                    s += "  tags are immutable once seen\n";
                }
                if !t.channels.is_empty() {
                    s += &format!(
                        "  channels (move only to a release): {}\n",
                        t.channels.join(", ")
                    );
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
        if let Some(v) = &self.each_one_of {
            parts.push(format!("each one of [{}]", v.join(", ")));
        }
        let mut text = if parts.is_empty() {
            "present".to_string()
        } else {
            parts.join(", ")
        };
        if self.optional {
            text += " (optional)";
        }
        match self.regression {
            Some(Regression::MaxDrop(m)) => {
                text += &format!(", at most {} below the previous release", fmt_num(m))
            }
            Some(Regression::MaxRise(m)) => {
                text += &format!(", at most {} above the previous release", fmt_num(m))
            }
            None => {}
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(pairs: &[(u32, &str)]) -> BTreeMap<u32, String> {
        pairs.iter().map(|(a, v)| (*a, v.to_string())).collect()
    }

    #[test]
    fn github_pins_read_the_current_extension_then_the_deprecated_one() {
        let repo = GithubPin::new("repository", "acme/models").unwrap();
        assert!(repo.holds(&ext(&[(12, "https://github.com/acme/models")])));
        assert!(repo.holds(&ext(&[(5, "acme/models")])), "legacy only");
        assert!(
            !repo.holds(&ext(&[
                (12, "https://github.com/evil/models"),
                (5, "acme/models")
            ])),
            "the current form decides when present"
        );
        assert!(!repo.holds(&ext(&[])), "absent fails closed");
        let runner = GithubPin::new("runner_environment", "github-hosted").unwrap();
        assert!(!runner.holds(&ext(&[(2, "github-hosted")])));
        assert!(GithubPin::new("workflow_name", "x").is_none());
    }

    #[test]
    fn a_keyless_entry_accepts_only_a_full_match() {
        let entry = KeylessSigner {
            line: 1,
            trust: "t".into(),
            issuer: FieldMatch::Exact("https://issuer".into()),
            subject: FieldMatch::Regex(regex::Regex::new("^(?:a.*)$").unwrap()),
            github: vec![GithubPin::new("trigger", "push").unwrap()],
        };
        let subjects = vec!["b".to_string(), "abc".to_string()];
        let push = ext(&[(20, "push")]);
        assert_eq!(
            entry.accepts(&subjects, "https://issuer", &push),
            Some(&subjects[1])
        );
        assert_eq!(entry.accepts(&subjects, "https://other", &push), None);
        assert_eq!(
            entry.accepts(&subjects, "https://issuer", &ext(&[(20, "tag")])),
            None
        );
        assert_eq!(entry.accepts(&subjects[..1], "https://issuer", &push), None);
    }
}
