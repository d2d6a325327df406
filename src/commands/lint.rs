//! `modelgate policy lint`: the policy as understood, and every problem with
//! its line.

use crate::config::Config;
use crate::policy::Policy;
use std::path::Path;

/// `modelgate policy lint FILE [--config CONFIG]`: parse, print the rules as
/// understood, then every finding with its line. With a config, globs are
/// checked against its upstream names (and the config itself must be
/// valid). Err when anything is an error.
pub fn policy_lint(file: &Path, config: Option<&Path>) -> Result<(), String> {
    let (p, _) = Policy::load(file).map_err(|e| e.to_string())?;
    print!("{}", p.describe());
    let upstreams = match config {
        Some(c) => {
            let cfg = Config::load(c).map_err(|e| format!("error: {e}"))?;
            println!("checked against the upstreams of {}", c.display());
            Some(
                cfg.upstreams
                    .iter()
                    .map(|u| u.name.clone())
                    .collect::<Vec<_>>(),
            )
        }
        None => None,
    };
    let findings = p.lint(upstreams.as_deref());
    for f in &findings {
        println!("{f}");
    }
    let errors = findings
        .iter()
        .filter(|f| f.severity == crate::policy::Severity::Error)
        .count();
    match errors {
        0 => Ok(()),
        n => Err(format!("{}: {n} error(s)", file.display())),
    }
}
