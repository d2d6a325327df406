//! An S3-compatible bucket: the few calls modelgate's shared state needs
//! (GET with a range, HEAD, conditional PUT, multipart upload, listing),
//! signed with SigV4 over the same hyper + rustls (ring) stack as the
//! upstream client, so one TLS crypto provider serves both.
//!
//! Invariants: credentials never appear in errors or logs; a conditional
//! write that loses its race is `BucketError::Precondition`, never success;
//! every other failure to reach or be answered by the bucket is
//! `Unavailable` (the caller fails closed).

use super::sigv4::{self, Credentials, Signing};
use crate::config::S3Config;
use crate::upstream::client::{https_client, BoxError, HttpsClient, ReqBody};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use std::time::Duration;

/// Largest XML or record body read whole.
const MAX_SMALL: usize = 4 << 20;

/// How long one call to the bucket may take to answer (headers).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    /// Occurs when a conditional write found the object in another state.
    #[error("the object changed or exists already (precondition failed)")]
    Precondition,
    /// Occurs when the bucket cannot be reached, or answers with an error.
    #[error("object storage {endpoint} is unavailable: {message}")]
    Unavailable { endpoint: String, message: String },
}

/// A write condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cond {
    Always,
    /// Only if no object has the key (`If-None-Match: *`).
    IfAbsent,
    /// Only if the object's ETag is this one (`If-Match`).
    IfMatch(String),
}

/// What a conditional read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// The object still has the ETag given.
    Unchanged,
    Absent,
    /// Its bytes and ETag.
    Got(Bytes, String),
}

/// One object in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub size: u64,
}

/// A multipart upload not completed (nor aborted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpload {
    pub key: String,
    pub upload_id: String,
    pub initiated: String,
}

/// The answer to CreateMultipartUpload.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InitiateResult {
    pub upload_id: String,
}

/// The answer to ListObjectsV2.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListResult {
    #[serde(default)]
    pub contents: Vec<ListEntry>,
    #[serde(default)]
    pub is_truncated: bool,
    pub next_continuation_token: Option<String>,
}

/// One object of a listing.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListEntry {
    pub key: String,
    #[serde(default)]
    pub size: u64,
}

/// The answer to ListMultipartUploads.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UploadsResult {
    #[serde(default)]
    pub upload: Vec<UploadEntry>,
}

/// One unfinished upload.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UploadEntry {
    pub key: String,
    pub upload_id: String,
    #[serde(default)]
    pub initiated: String,
}

/// The bucket, as configured.
pub struct Bucket {
    cfg: S3Config,
    client: HttpsClient,
}

impl Bucket {
    pub fn new(cfg: &S3Config) -> Result<Bucket, String> {
        let client = https_client(cfg.ca_cert.as_deref(), Duration::from_secs(5), 32)?;
        Ok(Bucket {
            cfg: cfg.clone(),
            client,
        })
    }

    /// Where the bucket is, for messages (no credentials in it).
    pub fn endpoint(&self) -> String {
        format!(
            "{}/{}",
            self.cfg.endpoint.as_str().trim_end_matches('/'),
            self.cfg.bucket
        )
    }

    fn unavailable(&self, message: impl std::fmt::Display) -> BucketError {
        BucketError::Unavailable {
            endpoint: self.endpoint(),
            message: message.to_string(),
        }
    }

    /// Host header and path of `key` (the prefix added).
    fn locate(&self, key: &str) -> (String, String) {
        let ep = &self.cfg.endpoint;
        let host = ep.host_str().unwrap_or_default();
        let host = match ep.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        let base = ep.path().trim_end_matches('/');
        let key = format!("{}{key}", self.cfg.prefix);
        if self.cfg.path_style {
            (host, format!("{base}/{}/{key}", self.cfg.bucket))
        } else {
            (
                format!("{}.{host}", self.cfg.bucket),
                format!("{base}/{key}"),
            )
        }
    }

    /// Send one signed request; the response's body is left unread.
    async fn send(
        &self,
        method: Method,
        key: &str,
        query: &[(&str, &str)],
        headers: Vec<(&'static str, String)>,
        body: Bytes,
    ) -> Result<Response<Incoming>, BucketError> {
        let (host, path) = self.locate(key);
        let path = sigv4::encode_path(&path);
        let query = sigv4::canonical_query(query);
        let amz_date = sigv4::amz_date_now();
        let signed = sigv4::sign(
            &Credentials {
                access_key: &self.cfg.access_key.0,
                secret_key: &self.cfg.secret_key.0,
                region: &self.cfg.region,
            },
            &Signing {
                method: method.as_str(),
                path: &path,
                query: &query,
                host: &host,
                headers: &headers,
                payload: &body,
                amz_date: &amz_date,
            },
        );
        let scheme = self.cfg.endpoint.scheme();
        let uri = match query.is_empty() {
            true => format!("{scheme}://{host}{path}"),
            false => format!("{scheme}://{host}{path}?{query}"),
        };
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers.iter().chain(signed.iter()) {
            req = req.header(*k, v);
        }
        let body: ReqBody = Full::new(body)
            .map_err(|e| -> BoxError { match e {} })
            .boxed();
        let req = req.body(body).map_err(|e| self.unavailable(e))?;
        match tokio::time::timeout(ANSWER_TIMEOUT, self.client.request(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(self.unavailable(e)),
            Err(_) => Err(self.unavailable(format!(
                "no answer within {}",
                humantime::format_duration(ANSWER_TIMEOUT)
            ))),
        }
    }

    /// The body of a response read whole (at most [`MAX_SMALL`]).
    async fn read(&self, resp: Response<Incoming>) -> Result<Bytes, BucketError> {
        Limited::new(resp.into_body(), MAX_SMALL)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|e| self.unavailable(format!("reading an answer: {e}")))
    }

    /// An unexpected answer, with S3's own message.
    async fn refused(&self, what: &str, resp: Response<Incoming>) -> BucketError {
        let status = resp.status();
        let body = self.read(resp).await.unwrap_or_default();
        let text = String::from_utf8_lossy(&body);
        let code = between(&text, "<Code>", "</Code>").unwrap_or_default();
        let message = between(&text, "<Message>", "</Message>").unwrap_or_default();
        self.unavailable(format!("{what}: {status} {code} {message}").trim_end())
    }

    /// The object `key` from byte `from` on; None when there is none.
    pub async fn get(
        &self,
        key: &str,
        from: u64,
    ) -> Result<Option<Response<Incoming>>, BucketError> {
        let headers = match from {
            0 => vec![],
            n => vec![("range", format!("bytes={n}-"))],
        };
        let resp = self
            .send(Method::GET, key, &[], headers, Bytes::new())
            .await?;
        match resp.status() {
            StatusCode::OK if from == 0 => Ok(Some(resp)),
            StatusCode::PARTIAL_CONTENT if from > 0 => Ok(Some(resp)),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.refused(&format!("GET {key}"), resp).await),
        }
    }

    /// A small object and its ETag; None when there is none.
    pub async fn get_small(&self, key: &str) -> Result<Option<(Bytes, String)>, BucketError> {
        Ok(match self.get_small_unless(key, None).await? {
            Fetched::Got(body, etag) => Some((body, etag)),
            Fetched::Unchanged | Fetched::Absent => None,
        })
    }

    /// A small object unless its ETag is still `etag` (`If-None-Match`:
    /// nothing is sent for an object that did not change).
    pub async fn get_small_unless(
        &self,
        key: &str,
        etag: Option<&str>,
    ) -> Result<Fetched, BucketError> {
        let headers = etag
            .map(|e| vec![("if-none-match", e.to_string())])
            .unwrap_or_default();
        let resp = self
            .send(Method::GET, key, &[], headers, Bytes::new())
            .await?;
        match resp.status() {
            StatusCode::OK => {
                let etag = etag_of(&resp);
                Ok(Fetched::Got(self.read(resp).await?, etag))
            }
            StatusCode::NOT_MODIFIED => Ok(Fetched::Unchanged),
            StatusCode::NOT_FOUND => Ok(Fetched::Absent),
            _ => Err(self.refused(&format!("GET {key}"), resp).await),
        }
    }

    /// The size of `key`; None when there is none.
    pub async fn head(&self, key: &str) -> Result<Option<u64>, BucketError> {
        let resp = self
            .send(Method::HEAD, key, &[], vec![], Bytes::new())
            .await?;
        match resp.status() {
            StatusCode::OK => Ok(Some(
                resp.headers()
                    .get(http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            )),
            StatusCode::NOT_FOUND => Ok(None),
            s => Err(self.unavailable(format!("HEAD {key}: {s}"))),
        }
    }

    fn cond_headers(cond: &Cond) -> Vec<(&'static str, String)> {
        match cond {
            Cond::Always => vec![],
            Cond::IfAbsent => vec![("if-none-match", "*".into())],
            Cond::IfMatch(e) => vec![("if-match", e.clone())],
        }
    }

    /// Whether an answer to a conditional write means "the condition did
    /// not hold" (412; 409 is S3's "concurrent conflict, retry"; 404 for
    /// If-Match on a missing key).
    fn lost(status: StatusCode, cond: &Cond) -> bool {
        match cond {
            Cond::Always => false,
            Cond::IfAbsent => matches!(status.as_u16(), 412 | 409),
            Cond::IfMatch(_) => matches!(status.as_u16(), 412 | 409 | 404),
        }
    }

    /// Write `key`; the new ETag.
    pub async fn put(&self, key: &str, body: Bytes, cond: Cond) -> Result<String, BucketError> {
        let mut headers = Self::cond_headers(&cond);
        headers.push(("content-type", "application/octet-stream".into()));
        let resp = self.send(Method::PUT, key, &[], headers, body).await?;
        if Self::lost(resp.status(), &cond) {
            return Err(BucketError::Precondition);
        }
        if !resp.status().is_success() {
            return Err(self.refused(&format!("PUT {key}"), resp).await);
        }
        Ok(etag_of(&resp))
    }

    /// Delete `key` (absent is fine).
    pub async fn delete(&self, key: &str) -> Result<(), BucketError> {
        let resp = self
            .send(Method::DELETE, key, &[], vec![], Bytes::new())
            .await?;
        match resp.status() {
            s if s.is_success() || s == StatusCode::NOT_FOUND => Ok(()),
            _ => Err(self.refused(&format!("DELETE {key}"), resp).await),
        }
    }

    /// Start a multipart upload of `key`; its upload id.
    pub async fn create_multipart(&self, key: &str) -> Result<String, BucketError> {
        let headers = vec![("content-type", "application/octet-stream".into())];
        let resp = self
            .send(Method::POST, key, &[("uploads", "")], headers, Bytes::new())
            .await?;
        if !resp.status().is_success() {
            return Err(self.refused(&format!("POST {key}?uploads"), resp).await);
        }
        let body = self.read(resp).await?;
        let r: InitiateResult = parse_xml(&body).map_err(|e| self.unavailable(e))?;
        Ok(r.upload_id)
    }

    /// Upload part `n` (from 1); its ETag.
    pub async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        n: u32,
        body: Bytes,
    ) -> Result<String, BucketError> {
        let part = n.to_string();
        let q = [("partNumber", part.as_str()), ("uploadId", upload_id)];
        let resp = self.send(Method::PUT, key, &q, vec![], body).await?;
        if !resp.status().is_success() {
            return Err(self.refused(&format!("PUT {key} part {n}"), resp).await);
        }
        Ok(etag_of(&resp))
    }

    /// Complete an upload from its parts' ETags, under `cond`.
    pub async fn complete(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[String],
        cond: Cond,
    ) -> Result<(), BucketError> {
        let mut xml = String::from("<CompleteMultipartUpload>");
        for (i, etag) in parts.iter().enumerate() {
            xml.push_str(&format!(
                "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag></Part>",
                i + 1,
                xml_escape(etag)
            ));
        }
        xml.push_str("</CompleteMultipartUpload>");
        let resp = self
            .send(
                Method::POST,
                key,
                &[("uploadId", upload_id)],
                Self::cond_headers(&cond),
                Bytes::from(xml),
            )
            .await?;
        if Self::lost(resp.status(), &cond) {
            return Err(BucketError::Precondition);
        }
        if !resp.status().is_success() {
            return Err(self.refused(&format!("complete {key}"), resp).await);
        }
        // S3 may answer 200 and still fail, with an <Error> body.
        let body = self.read(resp).await?;
        let text = String::from_utf8_lossy(&body);
        if text.contains("<Error>") {
            let code = between(&text, "<Code>", "</Code>").unwrap_or_default();
            if code == "PreconditionFailed" {
                return Err(BucketError::Precondition);
            }
            return Err(self.unavailable(format!("complete {key}: {code}")));
        }
        Ok(())
    }

    /// Abandon an upload (its parts are deleted).
    pub async fn abort(&self, key: &str, upload_id: &str) -> Result<(), BucketError> {
        let resp = self
            .send(
                Method::DELETE,
                key,
                &[("uploadId", upload_id)],
                vec![],
                Bytes::new(),
            )
            .await?;
        match resp.status() {
            s if s.is_success() || s == StatusCode::NOT_FOUND => Ok(()),
            _ => Err(self.refused(&format!("abort {key}"), resp).await),
        }
    }

    /// `key` as callers name it (without the configured prefix).
    fn unprefixed(&self, key: &str) -> String {
        key.strip_prefix(&self.cfg.prefix)
            .unwrap_or(key)
            .to_string()
    }

    /// A bucket-level GET with `query`, its XML answer parsed.
    async fn query_xml<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        query: &[(&str, &str)],
    ) -> Result<T, BucketError> {
        let resp = self
            .send(Method::GET, "", query, vec![], Bytes::new())
            .await?;
        if !resp.status().is_success() {
            return Err(self.refused(what, resp).await);
        }
        let body = self.read(resp).await?;
        parse_xml(&body).map_err(|e| self.unavailable(e))
    }

    /// Every object under `prefix` (after the configured prefix).
    pub async fn list(&self, prefix: &str) -> Result<Vec<Listed>, BucketError> {
        let full = format!("{}{prefix}", self.cfg.prefix);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..100_000 {
            let mut q = vec![("list-type", "2"), ("prefix", full.as_str())];
            if let Some(t) = &token {
                q.push(("continuation-token", t.as_str()));
            }
            let r: ListResult = self.query_xml(&format!("list {prefix}"), &q).await?;
            out.extend(r.contents.into_iter().map(|c| Listed {
                key: self.unprefixed(&c.key),
                size: c.size,
            }));
            match (r.is_truncated, r.next_continuation_token) {
                (true, Some(t)) => token = Some(t),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Multipart uploads neither completed nor aborted under `prefix`.
    pub async fn pending_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>, BucketError> {
        let full = format!("{}{prefix}", self.cfg.prefix);
        let q = [("uploads", ""), ("prefix", full.as_str())];
        let r: UploadsResult = self.query_xml("list uploads", &q).await?;
        Ok(r.upload
            .into_iter()
            .map(|u| PendingUpload {
                key: self.unprefixed(&u.key),
                upload_id: u.upload_id,
                initiated: u.initiated,
            })
            .collect())
    }
}

fn etag_of(resp: &Response<Incoming>) -> String {
    resp.headers()
        .get(http::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// An S3 XML answer read into `T` (one of the `*Result` types).
pub fn parse_xml<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let text = std::str::from_utf8(body).map_err(|_| "an answer that is not UTF-8".to_string())?;
    quick_xml::de::from_str(text).map_err(|e| format!("an answer modelgate cannot read: {e}"))
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let end = text[start..].find(close)? + start;
    Some(&text[start..end])
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_listings_and_upload_ids() {
        let r: ListResult = parse_xml(
            br#"<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>mg</Name><Prefix>blobs/</Prefix><IsTruncated>true</IsTruncated><NextContinuationToken>t1</NextContinuationToken><Contents><Key>blobs/sha256/ab</Key><Size>12</Size><ETag>"x"</ETag></Contents><Contents><Key>blobs/sha256/cd</Key><Size>3</Size></Contents></ListBucketResult>"#,
        )
        .unwrap();
        assert_eq!(r.contents.len(), 2);
        assert_eq!(r.contents[1].key, "blobs/sha256/cd");
        assert_eq!(r.contents[0].size, 12);
        assert!(r.is_truncated);
        assert_eq!(r.next_continuation_token.as_deref(), Some("t1"));
        let empty: ListResult =
            parse_xml(br#"<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>"#)
                .unwrap();
        assert!(empty.contents.is_empty());
        let i: InitiateResult = parse_xml(br#"<InitiateMultipartUploadResult><Bucket>b</Bucket><Key>k</Key><UploadId>u-1</UploadId></InitiateMultipartUploadResult>"#).unwrap();
        assert_eq!(i.upload_id, "u-1");
        let u: UploadsResult = parse_xml(br#"<ListMultipartUploadsResult><Upload><Key>blobs/sha256/ab</Key><UploadId>u-2</UploadId><Initiated>2026-11-28T01:00:00Z</Initiated></Upload></ListMultipartUploadsResult>"#).unwrap();
        assert_eq!(u.upload[0].upload_id, "u-2");
    }

    fn bucket(endpoint: &str, path_style: bool, prefix: &str) -> Bucket {
        Bucket::new(&S3Config {
            endpoint: endpoint.parse().unwrap(),
            bucket: "mg".into(),
            region: "us-east-1".into(),
            path_style,
            access_key: crate::config::Secret("AK".into()),
            secret_key: crate::config::Secret("SK".into()),
            ca_cert: None,
            prefix: prefix.into(),
        })
        .unwrap()
    }

    #[test]
    fn addresses_path_style_and_virtual_hosted() {
        let b = bucket("http://127.0.0.1:8333", true, "");
        assert_eq!(
            b.locate("blobs/sha256/ab"),
            ("127.0.0.1:8333".into(), "/mg/blobs/sha256/ab".into())
        );
        let b = bucket("https://s3.eu-west-1.amazonaws.com", false, "fleet-a/");
        assert_eq!(
            b.locate("tags/x.json"),
            (
                "mg.s3.eu-west-1.amazonaws.com".into(),
                "/fleet-a/tags/x.json".into()
            )
        );
        assert_eq!(b.unprefixed("fleet-a/tags/x.json"), "tags/x.json");
        // An endpoint under a path keeps it.
        let b = bucket("http://gw.local/s3/", true, "");
        assert_eq!(b.locate("k"), ("gw.local".into(), "/s3/mg/k".into()));
        assert!(!b.endpoint().contains("SK"));
    }

    #[test]
    fn lost_races_are_preconditions() {
        assert!(Bucket::lost(
            StatusCode::PRECONDITION_FAILED,
            &Cond::IfAbsent
        ));
        assert!(Bucket::lost(
            StatusCode::CONFLICT,
            &Cond::IfMatch("e".into())
        ));
        assert!(Bucket::lost(
            StatusCode::NOT_FOUND,
            &Cond::IfMatch("e".into())
        ));
        assert!(!Bucket::lost(StatusCode::NOT_FOUND, &Cond::IfAbsent));
        assert!(!Bucket::lost(
            StatusCode::PRECONDITION_FAILED,
            &Cond::Always
        ));
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    const LISTING: &str = r#"<ListBucketResult><IsTruncated>true</IsTruncated><NextContinuationToken>t</NextContinuationToken><Contents><Key>blobs/sha256/ab</Key><Size>12</Size></Contents></ListBucketResult>"#;

    proptest! {
        #![proptest_config(crate::proptests::config())]

        /// Whatever a bucket answers, reading it never panics.
        #[test]
        fn bucket_answers_never_panic(b in crate::proptests::mutated(LISTING.as_bytes().to_vec())) {
            let _ = parse_xml::<ListResult>(&b);
            let _ = parse_xml::<UploadsResult>(&b);
            let _ = parse_xml::<InitiateResult>(&b);
            let text = String::from_utf8_lossy(&b);
            let _ = between(&text, "<Code>", "</Code>");
        }

        /// Keys and query values of any text are encoded to the unreserved
        /// set (what S3 signs), and decode back.
        #[test]
        fn encoding_keeps_only_unreserved_bytes(s in ".{0,40}") {
            let e = super::super::sigv4::canonical_query(&[("k", s.as_str())]);
            let v = e.strip_prefix("k=").unwrap_or_default();
            prop_assert!(v.bytes().all(|c| c.is_ascii_alphanumeric() || b"-._~%".contains(&c)), "{e}");
            let back = percent_encoding::percent_decode_str(v).decode_utf8().map(|c| c.into_owned());
            prop_assert_eq!(back.ok(), Some(s));
        }
    }
}
