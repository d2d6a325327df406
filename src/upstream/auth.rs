//! Upstream authentication: parsing `WWW-Authenticate` challenges, fetching
//! Bearer tokens from the realm a registry names, and caching them per scope
//! until they expire (60 s when the token server does not say).

use std::time::{Duration, Instant};

/// A parsed authentication challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic,
}

/// Parse a `WWW-Authenticate` header value into the challenges we can answer.
pub fn parse_challenges(value: &str) -> Vec<Challenge> {
    let Ok(list) = http_auth::parse_challenges(value) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for c in list {
        let param = |name: &str| {
            c.params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.to_unescaped())
        };
        if c.scheme.eq_ignore_ascii_case("bearer") {
            if let Some(realm) = param("realm") {
                out.push(Challenge::Bearer {
                    realm,
                    service: param("service"),
                    scope: param("scope"),
                });
            }
        } else if c.scheme.eq_ignore_ascii_case("basic") {
            out.push(Challenge::Basic);
        }
    }
    out
}

/// A token and when to stop using it.
#[derive(Debug, Clone)]
pub struct CachedToken {
    pub token: String,
    pub expires: Instant,
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// Parse a token server's answer. The token is used until a few seconds before
/// `expires_in` (default 60 s) so it never expires in flight.
pub fn parse_token_response(body: &[u8], now: Instant) -> Result<CachedToken, String> {
    let r: TokenResponse = serde_json::from_slice(body)
        .map_err(|e| format!("token server answered with something that is not a token: {e}"))?;
    let token = r
        .token
        .or(r.access_token)
        .filter(|t| !t.is_empty())
        .ok_or("token server answer has neither \"token\" nor \"access_token\"")?;
    let lifetime = r.expires_in.unwrap_or(60).max(1);
    let margin = (lifetime / 10).min(10);
    Ok(CachedToken {
        token,
        expires: now + Duration::from_secs(lifetime - margin),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_distribution_challenge() {
        let h = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:samalba/my-app:pull,push""#;
        assert_eq!(
            parse_challenges(h),
            vec![Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:samalba/my-app:pull,push".into()),
            }]
        );
    }

    #[test]
    fn parses_basic_and_mixed() {
        assert_eq!(
            parse_challenges(r#"Basic realm="registry""#),
            vec![Challenge::Basic]
        );
        let both = r#"Basic realm="x", Bearer realm="http://127.0.0.1:1/t",service="s""#;
        assert_eq!(parse_challenges(both).len(), 2);
        assert!(parse_challenges("garbage ,,, =").is_empty());
        // Bearer without realm cannot be answered.
        assert!(parse_challenges(r#"Bearer service="s""#).is_empty());
    }

    #[test]
    fn token_lifetime_defaults_to_60s() {
        let now = Instant::now();
        let t = parse_token_response(br#"{"token":"abc"}"#, now).unwrap();
        assert_eq!(t.token, "abc");
        assert_eq!(t.expires, now + Duration::from_secs(54));
        let t = parse_token_response(br#"{"access_token":"x","expires_in":300}"#, now).unwrap();
        assert_eq!(t.expires, now + Duration::from_secs(290));
        assert!(parse_token_response(br#"{"nothing":1}"#, now).is_err());
        assert!(parse_token_response(b"<html>", now).is_err());
    }
}
