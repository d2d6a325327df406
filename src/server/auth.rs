//! Client authentication against an htpasswd file (bcrypt entries, as
//! `htpasswd -B` writes them): push needs Basic credentials, and pull too
//! with `pull_auth = true`. Client credentials are checked here and never
//! forwarded upstream; upstream credentials stay modelgate's own.
//!
//! Invariants: bcrypt runs only for requests that need credentials, on the
//! blocking pool, at most [`BCRYPT_AT_ONCE`] at a time; an unknown user costs
//! the same bcrypt as a known one (timing does not tell them apart); a
//! client address with too many failures in a minute is refused without any
//! bcrypt at all.

use base64::Engine;
use dashmap::DashMap;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a verified password is remembered: bcrypt costs tens of
/// milliseconds by design, far too much to pay on every request.
const REMEMBER: Duration = Duration::from_secs(300);

/// bcrypt verifications running at once; more wait for a turn.
pub const BCRYPT_AT_ONCE: usize = 2;

pub struct Htpasswd {
    users: HashMap<String, String>,
    verified: DashMap<(String, [u8; 32]), Instant>,
    /// A hash of the users' cost, checked for unknown users.
    decoy: String,
    turns: tokio::sync::Semaphore,
    /// Failed attempts per client address: (window start, count).
    failures: DashMap<std::net::IpAddr, (Instant, u32)>,
    failures_per_minute: u32,
}

/// What a request's credentials turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// No `Authorization` header.
    Anonymous,
    User(String),
    /// Wrong user name or password.
    Failed,
    /// Too many failures from this address lately.
    Throttled,
}

/// The user and password of a Basic header.
fn basic_credentials(authorization: &str) -> Option<(String, String)> {
    let b64 = authorization
        .strip_prefix("Basic ")
        .or_else(|| authorization.strip_prefix("basic "))?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (user, pass) = raw.split_once(':')?;
    Some((user.to_string(), pass.to_string()))
}

/// The cost field of a bcrypt hash (`$2y$NN$...`).
fn bcrypt_cost(hash: &str) -> u32 {
    hash.split('$')
        .nth(2)
        .and_then(|c| c.parse().ok())
        .unwrap_or(bcrypt::DEFAULT_COST)
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
        let cost = users.values().map(|h| bcrypt_cost(h)).max().unwrap_or(4);
        let decoy = bcrypt::hash("modelgate-decoy", cost)
            .map_err(|e| format!("htpasswd {}: {e}", path.display()))?;
        Ok(Htpasswd {
            users,
            verified: DashMap::new(),
            decoy,
            turns: tokio::sync::Semaphore::new(BCRYPT_AT_ONCE),
            failures: DashMap::new(),
            failures_per_minute: 10,
        })
    }

    /// Refuse an address after `n` failures within a minute (0: never).
    pub fn with_failure_limit(mut self, n: u32) -> Htpasswd {
        self.failures_per_minute = n;
        self
    }

    fn throttled(&self, client: std::net::IpAddr) -> bool {
        self.failures_per_minute > 0
            && self.failures.get(&client).is_some_and(|f| {
                f.0.elapsed() < Duration::from_secs(60) && f.1 >= self.failures_per_minute
            })
    }

    fn count_failure(&self, client: std::net::IpAddr) {
        if self.failures.len() > 100_000 {
            self.failures
                .retain(|_, f| f.0.elapsed() < Duration::from_secs(60));
        }
        let mut e = self.failures.entry(client).or_insert((Instant::now(), 0));
        if e.0.elapsed() >= Duration::from_secs(60) {
            *e = (Instant::now(), 0);
        }
        e.1 += 1;
    }

    /// Check a request's `Authorization` header: remembered credentials at
    /// once, others with bcrypt off the async threads.
    pub async fn login(&self, authorization: Option<&str>, client: std::net::IpAddr) -> Login {
        let Some(header) = authorization else {
            return Login::Anonymous;
        };
        if self.throttled(client) {
            return Login::Throttled;
        }
        let Some((user, pass)) = basic_credentials(header) else {
            self.count_failure(client);
            return Login::Failed;
        };
        let known = self.users.get(&user);
        let hash = known.cloned().unwrap_or_else(|| self.decoy.clone());
        let key = (
            user.clone(),
            Sha256::digest(format!("{hash}\0{pass}").as_bytes()).into(),
        );
        if known.is_some()
            && self
                .verified
                .get(&key)
                .is_some_and(|t| t.elapsed() < REMEMBER)
        {
            return Login::User(user);
        }
        let ok = match self.turns.acquire().await {
            Ok(_turn) => {
                tokio::task::spawn_blocking(move || bcrypt::verify(pass, &hash).unwrap_or(false))
                    .await
                    .unwrap_or(false)
            }
            Err(_) => false,
        };
        if ok && known.is_some() {
            if self.verified.len() > 10_000 {
                self.verified.clear();
            }
            self.verified.insert(key, Instant::now());
            Login::User(user)
        } else {
            self.count_failure(client);
            Login::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(u: &str, pw: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{pw}"))
        )
    }

    #[tokio::test]
    async fn bcrypt_users() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("htpasswd");
        let h = bcrypt::hash("s3cret", 4)
            .unwrap()
            .replacen("$2b$", "$2y$", 1);
        std::fs::write(&p, format!("# users\nalice:{h}\n")).unwrap();
        let ht = Htpasswd::load(&p).unwrap();
        let ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let user = |s: &str| Login::User(s.to_string());
        assert_eq!(
            ht.login(Some(&basic("alice", "s3cret")), ip).await,
            user("alice")
        );
        assert_eq!(
            ht.login(Some(&basic("alice", "s3cret")), ip).await,
            user("alice"),
            "remembered"
        );
        assert_eq!(
            ht.login(Some(&basic("alice", "wrong")), ip).await,
            Login::Failed
        );
        assert_eq!(
            ht.login(Some(&basic("bob", "s3cret")), ip).await,
            Login::Failed
        );
        assert_eq!(ht.login(Some("Bearer x"), ip).await, Login::Failed);
        assert_eq!(ht.login(None, ip).await, Login::Anonymous);
        std::fs::write(&p, "carol:plaintext\n").unwrap();
        assert!(Htpasswd::load(&p).err().unwrap().contains("bcrypt"));
    }

    #[tokio::test]
    async fn failures_are_throttled_per_address_and_unknown_users_cost_a_bcrypt() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("htpasswd");
        let h = bcrypt::hash("s3cret", 4).unwrap();
        std::fs::write(&p, format!("alice:{h}\n")).unwrap();
        let ht = Htpasswd::load(&p).unwrap().with_failure_limit(3);
        assert_eq!(
            bcrypt_cost(&ht.decoy),
            4,
            "the decoy costs what a user costs"
        );
        let a: std::net::IpAddr = "127.0.0.2".parse().unwrap();
        let b: std::net::IpAddr = "127.0.0.3".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(
                ht.login(Some(&basic("mallory", "x")), a).await,
                Login::Failed
            );
        }
        // The right password no longer helps that address for a while...
        assert_eq!(
            ht.login(Some(&basic("alice", "s3cret")), a).await,
            Login::Throttled
        );
        // ...while another address is unaffected.
        assert_eq!(
            ht.login(Some(&basic("alice", "s3cret")), b).await,
            Login::User("alice".into())
        );
    }
}

#[cfg(test)]
mod props {
    use super::basic_credentials;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(crate::proptests::config())]

        #[test]
        fn authorization_headers_parse_or_refuse(h in "(Basic |basic |Bearer )?[A-Za-z0-9+/=]{0,40}|.{0,60}") {
            if let Some((user, _)) = basic_credentials(&h) {
                prop_assert!(!user.contains(':'));
            }
        }
    }
}

#[cfg(test)]
mod htpasswd_props {
    use super::Htpasswd;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(crate::proptests::config())]

        /// Any htpasswd file: loaded or refused naming the file, never a
        /// panic (cost fields kept small so that no case hashes for long).
        #[test]
        fn htpasswd_files_load_or_refuse(text in "([a-z]{0,6}(:\\$2[aby]\\$0[4-5]\\$[./A-Za-z0-9]{0,53})?\n){0,4}|.{0,60}") {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("htpasswd");
            std::fs::write(&p, &text).unwrap();
            if let Err(e) = Htpasswd::load(&p) {
                prop_assert!(e.contains("htpasswd"), "{e}");
            }
        }
    }
}
