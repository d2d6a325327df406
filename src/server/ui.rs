//! The release page (`/ui/` on the admin listener): for each repository the
//! ledger knows, its releases (version, digest, signers, facts, who and
//! when), where each channel points and how it moved (with reasons), a plot
//! of one numeric fact across releases with refused candidates marked; and
//! the latest denials. Server-rendered HTML with inline SVG: no script, no
//! asset fetched from anywhere (the response forbids both).
//!
//! Invariant: every text that comes from a client, a policy or a registry
//! is HTML-escaped ([`esc`]).

use crate::gate::core::Denial;
use crate::gate::ledger::{version_of, Event, Ledger, LedgerEntry};
use crate::policy::model::{fmt_num, Policy};
use std::collections::BTreeMap;
use std::fmt::Write;

/// The page's Content-Security-Policy: inline styles only.
pub const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:";

/// Text made safe for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn short(d: &str) -> String {
    d.trim_start_matches("sha256:").chars().take(12).collect()
}

fn when(t: &str) -> String {
    t.chars().take(19).collect::<String>().replace('T', " ")
}

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:1.5rem auto;max-width:1200px;color:#1d2430;padding:0 1rem}
h1{font-size:1.5rem;margin:0}h2{font-size:1.2rem;margin:2rem 0 .5rem;border-bottom:1px solid #d6dbe3;padding-bottom:.25rem}
h3{font-size:1rem;margin:1.2rem 0 .4rem;color:#3a4556}.meta{color:#5b6678;font-size:.9rem}
table{border-collapse:collapse;width:100%;margin:.25rem 0}th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #e6e9ef;vertical-align:top}
th{background:#f3f5f8;font-weight:600}code{font:12px ui-monospace,monospace;background:#f3f5f8;padding:0 .25rem;border-radius:3px}
.refused td{color:#a11}.ok{color:#176c2e}.plot{border:1px solid #e6e9ef;background:#fff}.plot .line{fill:none;stroke:#2b6cb0;stroke-width:2}
.plot .release{fill:#2b6cb0}.plot .refused{stroke:#c53030;stroke-width:2.5}.plot text{font-size:11px;fill:#3a4556}
.plot .grid{stroke:#e6e9ef}nav li{margin:.1rem 0}";

/// The whole page. `fact` picks the plotted fact (default: the first
/// numeric fact of the latest release).
pub fn page(
    policy: &Policy,
    policy_sha256: &str,
    ledger: &Ledger,
    denials: &[Denial],
    fact: Option<&str>,
) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>modelgate — releases</title><style>{STYLE}</style></head><body>"
    );
    let _ = write!(
        h,
        "<header><h1>modelgate — releases</h1><p class=\"meta\">policy <code>sha256:{}</code> · generated {}</p></header>",
        esc(&short(policy_sha256)),
        esc(&when(&crate::audit::now_rfc3339()))
    );
    h += "<nav><h2>Governed repositories</h2><ul>";
    for r in &policy.rules {
        let _ = write!(
            h,
            "<li><b>{}</b> ({}): {}</li>",
            esc(&r.name),
            r.mode.as_str(),
            esc(&r.repositories.join(", "))
        );
    }
    h += "</ul></nav>";
    let repos = ledger.repositories();
    if repos.is_empty() {
        h += "<p>No release recorded yet: push a semantic-version tag through modelgate.</p>";
    }
    for repo in &repos {
        repository(&mut h, repo, &ledger.entries(repo), fact);
    }
    h += "<section id=\"denials\"><h2>Recent denials</h2>";
    if denials.is_empty() {
        h += "<p>None since modelgate started.</p>";
    } else {
        h += "<table class=\"denials\"><tr><th>when</th><th>action</th><th>repository</th><th>reference</th><th>who</th><th>why</th></tr>";
        for d in denials {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}@{}</td><td>{}</td></tr>",
                esc(&when(&d.time)),
                d.action,
                esc(&d.repository),
                esc(&d.reference),
                esc(d.user.as_deref().unwrap_or("anonymous")),
                esc(&d.client),
                esc(&d.reasons.join("; "))
            );
        }
        h += "</table>";
    }
    h += "</section></body></html>\n";
    h
}

fn facts_text(facts: &BTreeMap<String, f64>) -> String {
    facts
        .iter()
        .map(|(k, v)| format!("{k} = {}", fmt_num(*v)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn repository(h: &mut String, repo: &str, entries: &[LedgerEntry], fact: Option<&str>) {
    let id: String = repo
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let _ = write!(
        h,
        "<section class=\"repo\" id=\"repo-{id}\"><h2>{}</h2>",
        esc(repo)
    );
    // Channels: where each points now, and every move.
    let mut channels: BTreeMap<&str, Vec<&LedgerEntry>> = BTreeMap::new();
    for e in entries.iter().filter(|e| e.event == Event::Channel) {
        channels.entry(&e.tag).or_default().push(e);
    }
    if !channels.is_empty() {
        *h += "<h3>Channels</h3><table class=\"channels\"><tr><th>channel</th><th>points at</th><th>since</th><th>moves (newest first)</th></tr>";
        for (c, moves) in &channels {
            let now = moves[moves.len() - 1];
            let list: Vec<String> = moves
                .iter()
                .rev()
                .map(|m| {
                    format!(
                        "{}: {} → <b>v{}</b> by {} — {}",
                        esc(&when(&m.time)),
                        m.previous_digest
                            .as_deref()
                            .map(|d| format!("<code>{}</code>", esc(&short(d))))
                            .unwrap_or("(new)".into()),
                        esc(m.version.as_deref().unwrap_or("?")),
                        esc(m.user.as_deref().unwrap_or("anonymous")),
                        esc(m.reason.as_deref().unwrap_or("no reason given"))
                    )
                })
                .collect();
            let _ = write!(
                h,
                "<tr class=\"channel\"><td><b>{}</b></td><td>v{} <code>{}</code></td><td>{}</td><td>{}</td></tr>",
                esc(c),
                esc(now.version.as_deref().unwrap_or("?")),
                esc(&short(&now.digest)),
                esc(&when(&now.time)),
                list.join("<br>")
            );
        }
        *h += "</table>";
    }
    // Releases and refused candidates, by version.
    let mut shown: Vec<&LedgerEntry> = entries
        .iter()
        .filter(|e| matches!(e.event, Event::Release | Event::Refused))
        .collect();
    shown.sort_by_key(|e| version_of(&e.tag));
    *h += "<h3>Releases</h3><table class=\"releases\"><tr><th>version</th><th>digest</th><th>signers</th><th>facts</th><th>by</th><th>when</th><th>why</th></tr>";
    for e in shown.iter().rev() {
        let refused = e.event == Event::Refused;
        let _ = write!(
            h,
            "<tr class=\"{}\"><td>{}{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}@{}</td><td>{}</td><td>{}</td></tr>",
            if refused { "refused" } else { "release" },
            esc(&e.tag),
            if refused { " (refused)" } else { "" },
            esc(&short(&e.digest)),
            esc(&e.signers.join(", ")),
            esc(&facts_text(&e.facts)),
            esc(e.user.as_deref().unwrap_or("anonymous")),
            esc(&e.client),
            esc(&when(&e.time)),
            esc(&if refused {
                e.refused_because.join("; ")
            } else {
                e.reason.clone().unwrap_or_default()
            })
        );
    }
    *h += "</table>";
    let name = fact.map(str::to_string).or_else(|| {
        shown
            .iter()
            .rev()
            .find_map(|e| e.facts.keys().next().cloned())
    });
    if let Some(name) = name {
        plot(h, &name, &shown);
    }
    *h += "</section>";
}

/// An inline SVG of `fact` across releases (a line) and refused candidates
/// (red crosses), in version order.
fn plot(h: &mut String, fact: &str, shown: &[&LedgerEntry]) {
    let points: Vec<(&LedgerEntry, f64)> = shown
        .iter()
        .filter_map(|e| Some((*e, *e.facts.get(fact)?)))
        .collect();
    if points.is_empty() {
        return;
    }
    let (w, ht, left, right, top, bottom) = (720.0, 240.0, 60.0, 20.0, 20.0, 40.0);
    let lo = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let pad = ((hi - lo) * 0.15).max(hi.abs() * 0.01).max(1e-6);
    let (lo, hi) = (lo - pad, hi + pad);
    let n = points.len();
    let x = |i: usize| left + (w - left - right) * (i as f64 + 0.5) / n as f64;
    let y = |v: f64| top + (ht - top - bottom) * (1.0 - (v - lo) / (hi - lo));
    let _ = write!(
        h,
        "<h3>{} across releases</h3><svg class=\"plot\" role=\"img\" aria-label=\"{} across releases\" width=\"{w}\" height=\"{ht}\" viewBox=\"0 0 {w} {ht}\" xmlns=\"http://www.w3.org/2000/svg\">",
        esc(fact),
        esc(fact)
    );
    for v in [lo + pad, hi - pad] {
        let _ = write!(
            h,
            "<line class=\"grid\" x1=\"{left}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\"/><text x=\"4\" y=\"{:.1}\">{}</text>",
            w - right,
            y(v),
            y(v),
            y(v) + 4.0,
            esc(&fmt_num(v))
        );
    }
    let line: Vec<String> = points
        .iter()
        .enumerate()
        .filter(|(_, p)| p.0.event == Event::Release)
        .map(|(i, p)| format!("{:.1},{:.1}", x(i), y(p.1)))
        .collect();
    if line.len() > 1 {
        let _ = write!(
            h,
            "<polyline class=\"line\" points=\"{}\"/>",
            line.join(" ")
        );
    }
    for (i, (e, v)) in points.iter().enumerate() {
        let (cx, cy) = (x(i), y(*v));
        if e.event == Event::Refused {
            let _ = write!(
                h,
                "<path class=\"refused\" d=\"M{:.1} {:.1}L{:.1} {:.1}M{:.1} {:.1}L{:.1} {:.1}\"><title>{} refused: {}</title></path>",
                cx - 6.0, cy - 6.0, cx + 6.0, cy + 6.0, cx - 6.0, cy + 6.0, cx + 6.0, cy - 6.0,
                esc(&e.tag),
                esc(&e.refused_because.join("; "))
            );
        } else {
            let _ = write!(
                h,
                "<circle class=\"release\" cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"5\"><title>{} {} = {}</title></circle>",
                esc(&e.tag),
                esc(fact),
                esc(&fmt_num(*v))
            );
        }
        let _ = write!(
            h,
            "<text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text><text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            ht - bottom + 16.0,
            esc(&e.tag),
            cy - 10.0,
            esc(&fmt_num(*v))
        );
    }
    *h += "</svg>";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_text_is_escaped() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }
}
