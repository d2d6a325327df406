//! `modelgate check`: the decision the server would make for one image,
//! with every reason, made by the same code (registry + gate) against the
//! image's upstream.

use crate::config::Config;
use crate::gate::ledger::version_of;
use crate::gate::{Exemption, Gate};
use crate::metrics::Metrics;
use crate::oci::{Digest, ImageRef, OciError, Reference};
use crate::policy::eval::{compare_releases, numeric_facts};
use crate::policy::Decision;
use crate::registry::Registry;
use crate::upstream::{Route, Router, Upstream};
use std::path::Path;
use std::sync::Arc;

/// `modelgate check`: 0 admitted, 1 denied, 2 error.
/// How `check` prints its report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Human,
    Json,
}

pub async fn check(config: &Path, image: &str, output: Output) -> u8 {
    match check_inner(config, image).await {
        Ok(report) => {
            let code = if report.decision.decision == Decision::Deny {
                1
            } else {
                0
            };
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&report.json()).unwrap_or_default()
                ),
                Output::Human => print!("{}", report.human()),
            }
            code
        }
        Err(e) => {
            match output {
                Output::Json => println!("{}", serde_json::json!({"image": image, "error": e})),
                Output::Human => eprintln!("modelgate check: {e}"),
            }
            2
        }
    }
}

struct Report {
    image: String,
    route: Route,
    digest: Digest,
    decision: crate::policy::PolicyDecision,
    signers: Vec<String>,
    signature_matches: Vec<String>,
    signature_notes: Vec<String>,
    models: Vec<serde_json::Value>,
    /// Regression-gated facts against the previous release (version tags).
    releases: Vec<String>,
    exempt: Option<Exemption>,
    policy_sha256: String,
}

impl Report {
    fn message(&self) -> String {
        match self.exempt {
            Some(x) => format!("readable without a decision: {}", x.reason()),
            None => self.decision.message(),
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "image": self.image,
            "upstream": self.route.upstream.name,
            "repository": self.route.canonical,
            "digest": self.digest.to_string(),
            "decision": self.decision.decision.as_str(),
            "admitted": self.decision.decision != Decision::Deny,
            "rule": self.decision.rule,
            "reasons": self.decision.reasons,
            "message": self.message(),
            "signers": self.signers,
            "signature_matches": self.signature_matches,
            "signature_notes": self.signature_notes,
            "models": self.models,
            "previous_release": self.releases,
            "exempt": self.exempt.map(|x| x.reason()),
            "policy_sha256": self.policy_sha256,
        })
    }

    fn human(&self) -> String {
        let verdict = match self.decision.decision {
            Decision::Allow => "ADMITTED",
            Decision::Audit => "ADMITTED (audit mode: would be denied)",
            Decision::Deny => "DENIED",
        };
        let mut s = format!(
            "image       {}\nrepository  {} (upstream {})\ndigest      {}\ndecision    {verdict}\nmessage     {}\n",
            self.image,
            self.route.canonical,
            self.route.upstream.name,
            self.digest,
            self.message()
        );
        for r in &self.decision.reasons {
            s += &format!("  - {r}\n");
        }
        if let Some(e) = &self.exempt {
            s += &format!("exempt      {}\n", e.reason());
        }
        s += &format!(
            "signatures  {}\npolicy      sha256:{}\n",
            if self.signers.is_empty() {
                "none valid".to_string()
            } else {
                format!("valid by [{}]", self.signers.join(", "))
            },
            self.policy_sha256
        );
        for m in &self.models {
            let at = m["platform"]
                .as_str()
                .map(|p| format!(" ({p})"))
                .unwrap_or_default();
            s += &format!(
                "model{at}   {}: {}\n",
                m["kind"].as_str().unwrap_or("?"),
                m["facts"]
            );
        }
        for c in &self.releases {
            s += &format!("release     {c}\n");
        }
        for m in &self.signature_matches {
            s += &format!("  + {m}\n");
        }
        for n in &self.signature_notes {
            s += &format!("  - {n}\n");
        }
        s
    }
}

/// Which upstream and repository `img` names: an upstream name as host,
/// or modelgate's own listen address (then routed as the server would).
pub(crate) fn route_of(img: &ImageRef, cfg: &Config, router: &Router) -> Result<Route, String> {
    if let Some(u) = router.by_name(&img.host) {
        return Ok(Route {
            canonical: img.repo.prefixed(&u.name),
            upstream: u.clone(),
            path: img.repo.clone(),
            ns: None,
        });
    }
    let listen = cfg.listen.to_string();
    let port = listen.rsplit(':').next().unwrap_or("");
    if img.host == listen || img.host == format!("localhost:{port}") {
        return router.route(&img.repo, None).map_err(|e| e.to_string());
    }
    let names: Vec<_> = router.upstreams().iter().map(|u| u.name.clone()).collect();
    Err(format!(
        "{} is neither an upstream name ({}) nor modelgate's listen address {listen}",
        img.host,
        names.join(", ")
    ))
}

/// The router the server would build from `cfg`.
pub(crate) fn router_of(cfg: &Config, metrics: &Arc<Metrics>) -> Result<Router, String> {
    let mut ups = Vec::new();
    for u in &cfg.upstreams {
        let up = Upstream::new(u, metrics.clone()).map_err(|e| e.to_string())?;
        ups.push((Arc::new(up), u.default));
    }
    Ok(Router::new(ups))
}

async fn check_inner(config: &Path, image: &str) -> Result<Report, String> {
    let img = ImageRef::parse(image)?;
    let cfg = Config::load(config).map_err(|e| e.to_string())?;
    let metrics = Arc::new(Metrics::new());
    let router = router_of(&cfg, &metrics)?;
    let route = route_of(&img, &cfg, &router)?;
    let registry = Registry::open(&cfg, metrics.clone())
        .map_err(|e| format!("cache {}: {e}", cfg.cache_dir.display()))?;
    let gate = Gate::open(&cfg, Arc::new(registry), metrics).map_err(|e| e.to_string())?;
    let reference: Reference = img.reference();
    let m = gate
        .registry()
        .manifest(&route, &reference, None)
        .await
        .map_err(|e| OciError::from(e).message)?;
    let loaded = gate.policy().current();
    let out = gate.decide(&route, &reference, &m, &loaded).await;
    let models = out.evidence.models_summary();
    let releases = match (
        loaded.policy.rule_for(&route.canonical),
        img.tag.as_deref().and_then(version_of),
    ) {
        (Some(rule), Some(v)) => {
            let prev = gate.ledger().previous_release(&route.canonical, &v);
            compare_releases(
                rule,
                &numeric_facts(&out.evidence),
                prev.as_ref().map(|p| (p.tag.as_str(), &p.facts)),
            )
        }
        _ => Vec::new(),
    };
    Ok(Report {
        image: image.to_string(),
        digest: m.digest.clone(),
        decision: out.decision,
        signers: out.evidence.signers.into_iter().collect(),
        signature_matches: out.evidence.signature_matches,
        signature_notes: out.evidence.signature_notes,
        models,
        releases,
        exempt: out.exempt,
        policy_sha256: loaded.sha256.clone(),
        route,
    })
}
