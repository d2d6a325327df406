//! The audit log: one JSON object per policy decision, to stdout
//! or a file, so "who pulled what, and why was it allowed" is never a guess.

use serde::Serialize;
use std::io::Write;
use std::sync::Mutex;

/// One decision.
#[derive(Serialize, Debug, Clone)]
pub struct AuditRecord {
    pub time: String,
    pub action: &'static str,
    pub client: String,
    pub user: Option<String>,
    pub upstream: String,
    pub repository: String,
    pub reference: String,
    pub digest: String,
    pub decision: &'static str,
    pub rule: Option<String>,
    pub reasons: Vec<String>,
    /// The kind and normalized facts of each model decided (rules that
    /// look at models only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<serde_json::Value>,
    /// Why, as the client said (`X-Modelgate-Reason`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For a release or channel move: what the tag named before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_digest: Option<String>,
    pub policy_sha256: String,
}

/// Where audit records go.
pub struct AuditLog {
    out: Mutex<Box<dyn Write + Send>>,
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl AuditLog {
    /// `-` is stdout; anything else a file appended to.
    pub fn open(path: &str) -> std::io::Result<AuditLog> {
        let out: Box<dyn Write + Send> = if path == "-" {
            Box::new(std::io::stdout())
        } else {
            if let Some(dir) = std::path::Path::new(path).parent() {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(dir)?;
                }
            }
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )
        };
        Ok(AuditLog {
            out: Mutex::new(out),
        })
    }

    pub fn record(&self, rec: &AuditRecord) {
        let Ok(mut line) = serde_json::to_vec(rec) else {
            return;
        };
        line.push(b'\n');
        let mut out = match self.out.lock() {
            Ok(o) => o,
            Err(p) => p.into_inner(),
        };
        if let Err(e) = out.write_all(&line).and_then(|_| out.flush()) {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    }
}
