//! Client authentication against an htpasswd file (bcrypt entries, as
//! `htpasswd -B` writes them): push needs Basic credentials, and pull too
//! with `pull_auth = true`. Client credentials are checked here and never
//! forwarded upstream; upstream credentials stay modelgate's own.

use base64::Engine;
use dashmap::DashMap;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a verified password is remembered: bcrypt costs tens of
/// milliseconds by design, far too much to pay on every request.
const REMEMBER: Duration = Duration::from_secs(300);

pub struct Htpasswd {
    users: HashMap<String, String>,
    verified: DashMap<(String, [u8; 32]), Instant>,
}

impl Htpasswd {
    pub fn load(path: &Path) -> Result<Htpasswd, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("htpasswd {}: {e}", path.display()))?;
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (u, h) = line.split_once(':').ok_or_else(|| {
                format!(
                    "htpasswd {} line {}: expected user:hash",
                    path.display(),
                    i + 1
                )
            })?;
            if !(h.starts_with("$2y$") || h.starts_with("$2b$") || h.starts_with("$2a$")) {
                return Err(format!("htpasswd {} line {}: user {u:?} does not have a bcrypt hash (make it with `htpasswd -B`)", path.display(), i + 1));
            }
            users.insert(u.to_string(), h.to_string());
        }
        if users.is_empty() {
            return Err(format!("htpasswd {}: no users", path.display()));
        }
        Ok(Htpasswd {
            users,
            verified: DashMap::new(),
        })
    }

    /// The user named by a valid `Authorization: Basic ...` header.
    pub fn user(&self, authorization: Option<&str>) -> Option<String> {
        let b64 = authorization?
            .strip_prefix("Basic ")
            .or_else(|| authorization?.strip_prefix("basic "))?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .ok()?;
        let raw = String::from_utf8(raw).ok()?;
        let (user, pass) = raw.split_once(':')?;
        let hash = self.users.get(user)?;
        let key = (
            user.to_string(),
            Sha256::digest(format!("{hash}\0{pass}").as_bytes()).into(),
        );
        if self
            .verified
            .get(&key)
            .is_some_and(|t| t.elapsed() < REMEMBER)
        {
            return Some(user.to_string());
        }
        if bcrypt::verify(pass, hash).unwrap_or(false) {
            if self.verified.len() > 10_000 {
                self.verified.clear();
            }
            self.verified.insert(key, Instant::now());
            Some(user.to_string())
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bcrypt_users() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("htpasswd");
        let h = bcrypt::hash("s3cret", 4)
            .unwrap()
            .replacen("$2b$", "$2y$", 1);
        std::fs::write(&p, format!("# users\nalice:{h}\n")).unwrap();
        let ht = Htpasswd::load(&p).unwrap();
        let basic = |u: &str, pw: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{pw}"))
            )
        };
        assert_eq!(
            ht.user(Some(&basic("alice", "s3cret"))).as_deref(),
            Some("alice")
        );
        assert_eq!(
            ht.user(Some(&basic("alice", "s3cret"))).as_deref(),
            Some("alice"),
            "remembered"
        );
        assert_eq!(ht.user(Some(&basic("alice", "wrong"))), None);
        assert_eq!(ht.user(Some(&basic("bob", "s3cret"))), None);
        assert_eq!(ht.user(Some("Bearer x")), None);
        assert_eq!(ht.user(None), None);
        std::fs::write(&p, "carol:plaintext\n").unwrap();
        assert!(Htpasswd::load(&p).err().unwrap().contains("bcrypt"));
    }
}
