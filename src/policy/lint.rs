//! What `policy lint` finds beyond parse errors: globs that can never match
//! a canonical name (checked against the config's upstreams when known),
//! rules an earlier rule shadows, keyless signers whose regex accepts
//! anyone, and Notation entries that accept anyone or only audit. Each finding names its line.

use super::model::{glob, FieldMatch, NotationIdentity, Policy, Rule};
use crate::trust::notation::Level;

impl Policy {
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
            out.extend(keyless_catch_alls(r));
            out.extend(notation_notes(r));
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

/// Identities no policy means to accept; a regex that takes them all
/// accepts anyone with a certificate from the trusted root.
const STRANGERS: [&str; 4] = [
    "",
    "https://github.com/attacker/repo/.github/workflows/x.yml@refs/heads/main",
    "attacker@evil.example",
    "https://accounts.evil.example",
];

fn keyless_catch_alls(r: &Rule) -> Vec<Finding> {
    let keyless = r.signatures.iter().flat_map(|s| &s.keyless);
    keyless
        .flat_map(|k| [("subject", &k.subject, k.line), ("issuer", &k.issuer, k.line)])
        .filter_map(|(what, m, line)| match m {
            FieldMatch::Regex(re) if STRANGERS.iter().all(|s| re.is_match(s)) => Some(Finding {
                severity: Severity::Warning,
                line,
                message: format!(
                    "rule {:?}: keyless {what}_regex {:?} accepts any {what}: anyone the trusted root's certificate authority certifies would count as a signer",
                    r.name,
                    re.as_str()
                ),
            }),
            _ => None,
        })
        .collect()
}

/// Notation entries that accept anyone of their trust store, or that only
/// audit (and so never count toward `min`).
fn notation_notes(r: &Rule) -> Vec<Finding> {
    let entries = r.signatures.iter().flat_map(|s| &s.notation);
    let mut out = Vec::new();
    for n in entries {
        if n.identities.contains(&NotationIdentity::Any) {
            out.push(Finding {
                severity: Severity::Warning,
                line: n.line,
                message: format!(
                    "rule {:?}: notation identities = [\"*\"] accepts any certificate that chains to trust store {:?}",
                    r.name, n.trust
                ),
            });
        }
        if n.level == Level::Audit {
            out.push(Finding {
                severity: Severity::Warning,
                line: n.line,
                message: format!(
                    "rule {:?}: notation level \"audit\" reports signatures but never counts them toward min",
                    r.name
                ),
            });
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(text: &str) -> Result<Policy, super::super::PolicyError> {
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

    #[test]
    fn keyless_regexes_that_accept_anyone_are_warned_about() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keyless");
        let text = |subject: &str, issuer: &str| {
            format!(
                "[trust.t]\ntrusted_root = \"public-good-trusted_root.json\"\n[[rules]]\nname = \"m\"\nrepositories = [\"*/m/**\"]\n[rules.signatures]\n[[rules.signatures.keyless]]\ntrust = \"t\"\n{subject}\n{issuer}\n"
            )
        };
        let lint = |subject: &str, issuer: &str| {
            Policy::parse(&text(subject, issuer), &root, "p.toml")
                .unwrap()
                .lint(None)
        };
        let f = lint("subject_regex = '.*'", "issuer_regex = 'https://.*|.*'");
        assert_eq!(f.len(), 2, "{f:?}");
        let lines: Vec<_> = f.iter().map(|f| (f.line, f.severity)).collect();
        assert_eq!(lines, [(7, Severity::Warning); 2], "{f:?}");
        assert!(f[0].message.contains("accepts any subject"), "{f:?}");
        assert!(f[1].message.contains("accepts any issuer"), "{f:?}");
        let f = lint(
            "subject_regex = 'https://github\\.com/acme/.*'",
            "issuer = \"https://token.actions.githubusercontent.com\"",
        );
        assert!(f.is_empty(), "{f:?}");
    }
}
