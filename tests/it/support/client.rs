//! A small HTTP client and what it saw.

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// What a client saw.
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The body, or why reading it failed.
    pub body: Result<Bytes, String>,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn bytes(&self) -> &Bytes {
        self.body.as_ref().expect("body read failed")
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(self.bytes()).expect("body is JSON")
    }
    /// The OCI error code of the body.
    pub fn code(&self) -> String {
        self.json()["errors"][0]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
    pub fn message(&self) -> String {
        self.json()["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn send(method: Method, url: &str, headers: &[(&str, &str)]) -> Got {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = tokio::time::timeout(
        Duration::from_secs(60),
        client().request(req.body(Full::new(Bytes::new())).unwrap()),
    )
    .await
    .expect("response headers within 60s")
    .expect("request failed");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = match tokio::time::timeout(Duration::from_secs(60), resp.into_body().collect()).await
    {
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("body timed out".into()),
    };
    Got {
        status,
        headers,
        body,
    }
}

/// A request with a body.
pub async fn send_body(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Got {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = tokio::time::timeout(
        Duration::from_secs(60),
        client().request(req.body(Full::new(body.into())).unwrap()),
    )
    .await
    .expect("response headers within 60s")
    .expect("request failed");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| e.to_string());
    Got {
        status,
        headers,
        body,
    }
}

pub async fn get(url: &str) -> Got {
    send(Method::GET, url, &[]).await
}

/// `text` contains every one of `needles` (the failure names the first
/// missing one and shows the text).
pub fn assert_has_all(text: &str, needles: &[&str]) {
    for needle in needles {
        assert!(text.contains(needle), "{needle}: {text}");
    }
}
