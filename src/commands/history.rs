//! `modelgate history IMAGE[:TAG]`: the release ledger of a repository (or
//! of one tag) as a timeline: releases and channel moves with digest,
//! version, facts, who, when and why. Read from the ledger next to the tag
//! memory; the admin listener serves the same as JSON.

use super::check::{route_of, router_of};
use crate::config::Config;
use crate::gate::core::ledger_dir;
use crate::gate::ledger::{Event, Ledger, LedgerEntry};
use crate::oci::ImageRef;
use crate::policy::model::fmt_num;
use std::collections::BTreeMap;
use std::path::Path;

/// A repository's ledger, or one tag's part of it.
pub struct History {
    pub repository: String,
    pub tag: Option<String>,
    pub entries: Vec<LedgerEntry>,
    /// Where each channel points now (its latest move).
    pub channels: BTreeMap<String, LedgerEntry>,
}

impl History {
    pub fn of(ledger: &Ledger, repository: &str, tag: Option<&str>) -> History {
        let all = ledger.entries(repository);
        let mut channels = BTreeMap::new();
        for e in all.iter().filter(|e| e.event == Event::Channel) {
            channels.insert(e.tag.clone(), e.clone());
        }
        History {
            repository: repository.to_string(),
            tag: tag.map(str::to_string),
            entries: all
                .into_iter()
                .filter(|e| tag.is_none_or(|t| e.tag == t))
                .collect(),
            channels,
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "repository": self.repository,
            "tag": self.tag,
            "entries": self.entries,
            "channels": self.channels.iter().map(|(c, e)| (c.clone(), serde_json::json!({
                "digest": e.digest, "version": e.version, "since": e.time,
            }))).collect::<serde_json::Map<_, _>>(),
        })
    }

    /// The timeline as a table.
    pub fn table(&self) -> String {
        if self.entries.is_empty() {
            return format!(
                "{}{}: no releases or channel moves recorded\n",
                self.repository,
                self.tag
                    .as_deref()
                    .map(|t| format!(":{t}"))
                    .unwrap_or_default()
            );
        }
        let short = |d: &str| {
            d.trim_start_matches("sha256:")
                .chars()
                .take(12)
                .collect::<String>()
        };
        let rows: Vec<[String; 8]> = self
            .entries
            .iter()
            .map(|e| {
                let what = match e.event {
                    Event::Release => "release".to_string(),
                    Event::Refused => "refused".to_string(),
                    Event::Channel => format!(
                        "channel → {}",
                        e.version
                            .as_deref()
                            .map(|v| format!("v{v}"))
                            .unwrap_or("?".into())
                    ),
                };
                let facts: Vec<String> = e
                    .facts
                    .iter()
                    .map(|(k, v)| format!("{k}={}", fmt_num(*v)))
                    .collect();
                [
                    e.time.chars().take(19).collect(),
                    e.tag.clone(),
                    what,
                    short(&e.digest),
                    e.previous_digest
                        .as_deref()
                        .map(short)
                        .unwrap_or("-".into()),
                    format!("{}@{}", e.user.as_deref().unwrap_or("anonymous"), e.client),
                    match e.event {
                        Event::Refused => e.refused_because.join("; "),
                        _ => e.reason.clone().unwrap_or("-".into()),
                    },
                    facts.join(" "),
                ]
            })
            .collect();
        let head = [
            "TIME", "TAG", "EVENT", "DIGEST", "PREVIOUS", "WHO", "WHY", "FACTS",
        ];
        let widths: Vec<usize> = (0..8)
            .map(|i| {
                rows.iter()
                    .map(|r| r[i].chars().count())
                    .chain([head[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (i, c) in cells.iter().enumerate() {
                if i == 7 {
                    s += c;
                } else {
                    s += &format!("{c:<w$}  ", w = widths[i]);
                }
            }
            s.trim_end().to_string() + "\n"
        };
        let mut out = format!("{}\n", self.repository);
        out += &line(&head.map(String::from));
        for r in &rows {
            out += &line(r);
        }
        for (c, e) in &self.channels {
            out += &format!(
                "{c} → {} ({}) since {}\n",
                e.version
                    .as_deref()
                    .map(|v| format!("v{v}"))
                    .unwrap_or("?".into()),
                short(&e.digest),
                e.time.chars().take(19).collect::<String>()
            );
        }
        out
    }
}

/// `modelgate history`: the ledger of IMAGE's repository (of its tag, if
/// one is named), from the cache of `config`.
pub fn history(config: &Path, image: &str, json: bool) -> Result<String, String> {
    let img = ImageRef::parse(image)?;
    let cfg = Config::load(config).map_err(|e| e.to_string())?;
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    let router = router_of(&cfg, &metrics)?;
    let repo = route_of(&img, &cfg, &router)?.canonical;
    // With several replicas the ledger of record is in the bucket: read it
    // into a mirror of this command's own.
    let mirror = tempfile::tempdir().map_err(|e| e.to_string())?;
    let ledger = match crate::shared::Shared::open(&cfg, metrics)? {
        Some(shared) => {
            let l = Ledger::open_shared(mirror.path().to_path_buf(), Some(shared))
                .map_err(|e| e.to_string())?;
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(l.refresh(&repo))
                .map_err(|e| format!("the release ledger in shared storage: {e}"))?;
            l
        }
        None => Ledger::open(ledger_dir(&cfg)).map_err(|e| e.to_string())?,
    };
    let h = History::of(&ledger, &repo, img.tag.as_deref());
    Ok(match json {
        true => serde_json::to_string_pretty(&h.json()).map_err(|e| e.to_string())? + "\n",
        false => h.table(),
    })
}
