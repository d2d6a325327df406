//! AWS Signature Version 4 for S3 requests: the canonical request, the
//! string to sign, the derived key, the `Authorization` header.
//!
//! Signed headers: `host`, every `x-amz-*` header, and `range`, `if-match`,
//! `if-none-match` when present (so a conditional write cannot be stripped
//! of its condition in transit). The payload hash is always the real
//! SHA-256 of the body: bodies here are in memory (records, one part).

use crate::oci::Digest;
use ring::hmac;

/// The access key pair a request is signed with.
pub struct Credentials<'a> {
    pub access_key: &'a str,
    pub secret_key: &'a str,
    pub region: &'a str,
}

/// Characters S3 leaves unencoded (RFC 3986 unreserved).
fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The URI path of `key` in its canonical (and wire) form.
pub fn encode_path(path: &str) -> String {
    encode(path, true)
}

/// A query string in canonical order (also what is sent).
pub fn canonical_query(query: &[(&str, &str)]) -> String {
    let mut pairs: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (encode(k, false), encode(v, false)))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn hex_sha256(data: &[u8]) -> String {
    Digest::of(data).hex().to_string()
}

fn mac(key: &[u8], data: &str) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes())
        .as_ref()
        .to_vec()
}

/// What one request is: everything the signature covers.
pub struct Signing<'a> {
    pub method: &'a str,
    /// The encoded path (from [`encode_path`]).
    pub path: &'a str,
    /// The canonical query (from [`canonical_query`]).
    pub query: &'a str,
    pub host: &'a str,
    /// Other headers the request carries (lowercase names).
    pub headers: &'a [(&'a str, String)],
    pub payload: &'a [u8],
    /// `YYYYMMDD'T'HHMMSS'Z'`.
    pub amz_date: &'a str,
}

/// The headers to add to the request: `x-amz-date`,
/// `x-amz-content-sha256` and `authorization`.
pub fn sign(c: &Credentials<'_>, r: &Signing<'_>) -> Vec<(&'static str, String)> {
    let payload_hash = hex_sha256(r.payload);
    let mut signed: Vec<(String, String)> = vec![
        ("host".into(), r.host.to_string()),
        ("x-amz-content-sha256".into(), payload_hash.clone()),
        ("x-amz-date".into(), r.amz_date.to_string()),
    ];
    for (k, v) in r.headers {
        if k.starts_with("x-amz-") || matches!(*k, "range" | "if-match" | "if-none-match") {
            signed.push((k.to_string(), v.trim().to_string()));
        }
    }
    signed.sort();
    let names = signed
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_headers: String = signed.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let canonical = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        r.method, r.path, r.query, canonical_headers, names, payload_hash
    );
    let date = &r.amz_date[..8.min(r.amz_date.len())];
    let scope = format!("{date}/{}/s3/aws4_request", c.region);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
        r.amz_date,
        hex_sha256(canonical.as_bytes())
    );
    let k_date = mac(format!("AWS4{}", c.secret_key).as_bytes(), date);
    let k_region = mac(&k_date, c.region);
    let k_service = mac(&k_region, "s3");
    let k_signing = mac(&k_service, "aws4_request");
    let signature = hex::encode(mac(&k_signing, &to_sign));
    vec![
        ("x-amz-date", r.amz_date.to_string()),
        ("x-amz-content-sha256", payload_hash),
        (
            "authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={names}, Signature={signature}",
                c.access_key
            ),
        ),
    ]
}

/// Now, as SigV4 writes it.
pub fn amz_date_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREDS: Credentials<'static> = Credentials {
        access_key: "AKIAIOSFODNN7EXAMPLE",
        secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        region: "us-east-1",
    };

    fn signature_of(headers: &[(&'static str, String)]) -> String {
        let auth = &headers
            .iter()
            .find(|(k, _)| *k == "authorization")
            .unwrap()
            .1;
        auth.rsplit("Signature=").next().unwrap().to_string()
    }

    /// The "GET Object" example of the S3 SigV4 documentation
    /// (sig-v4-header-based-auth: examplebucket, test.txt, Range bytes=0-9).
    #[test]
    fn matches_the_aws_get_object_example() {
        let h = sign(
            &CREDS,
            &Signing {
                method: "GET",
                path: &encode_path("/test.txt"),
                query: "",
                host: "examplebucket.s3.amazonaws.com",
                headers: &[("range", "bytes=0-9".into())],
                payload: b"",
                amz_date: "20130524T000000Z",
            },
        );
        assert_eq!(
            signature_of(&h),
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    /// The "GET Bucket Lifecycle" example: a query parameter without a value.
    #[test]
    fn matches_the_aws_lifecycle_example() {
        let h = sign(
            &CREDS,
            &Signing {
                method: "GET",
                path: "/",
                query: &canonical_query(&[("lifecycle", "")]),
                host: "examplebucket.s3.amazonaws.com",
                headers: &[],
                payload: b"",
                amz_date: "20130524T000000Z",
            },
        );
        assert_eq!(
            signature_of(&h),
            "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"
        );
    }

    #[test]
    fn encodes_like_s3() {
        assert_eq!(
            encode_path("/b/tags/127.0.0.1:5000/a b"),
            "/b/tags/127.0.0.1%3A5000/a%20b"
        );
        assert_eq!(
            canonical_query(&[("uploadId", "x/y="), ("partNumber", "2")]),
            "partNumber=2&uploadId=x%2Fy%3D"
        );
    }
}
