//! A client's upload body streamed to the upstream as it arrives, hashed on
//! the way. When the body completes a blob, its last frame is held back
//! until the digest verified: on a mismatch the upstream request is aborted,
//! so the upstream never completes an upload whose bytes do not match.

use crate::oci::{Digest, ErrorCode, OciError, Sha256Hasher};
use crate::registry::writes::{upload_step, UploadBody, UploadStep};
use crate::upstream::client::{BoxError, ReqBody};
use crate::upstream::Route;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use url::Url;

/// What the client's body turned into.
type Done = Result<(Sha256Hasher, u64), String>;

/// The upstream request body, fed from the client's; with a hold, the last
/// frame waits for `release` (true sends it, false aborts).
struct Forward {
    body: ReqBody,
    done: oneshot::Receiver<Done>,
    release: oneshot::Sender<bool>,
}

/// Whether the last frame waits for the digest check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    LastFrame,
    Nothing,
}

fn forward(mut client: Incoming, mut hasher: Sha256Hasher, hold: Hold, idle: Duration) -> Forward {
    let (tx, rx) = mpsc::channel::<Result<Bytes, BoxError>>(8);
    let (done_tx, done) = oneshot::channel();
    let (release, release_rx) = oneshot::channel::<bool>();
    tokio::spawn(async move {
        let mut held: Option<Bytes> = None;
        let mut n = 0u64;
        let failure = loop {
            let frame = match tokio::time::timeout(idle, client.frame()).await {
                Err(_) => {
                    let idle = humantime::format_duration(idle);
                    break Some(format!("the client sent nothing for {idle}"));
                }
                Ok(None) => break None,
                Ok(Some(Err(e))) => {
                    break Some(format!("the client's body broke off after {n} bytes: {e}"))
                }
                Ok(Some(Ok(f))) => f,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            hasher.update(&data);
            n += data.len() as u64;
            let out = match hold {
                Hold::LastFrame => held.replace(data),
                Hold::Nothing => Some(data),
            };
            if let Some(b) = out {
                if tx.send(Ok(b)).await.is_err() {
                    let _ = done_tx.send(Err("the upstream stopped reading the upload".into()));
                    return;
                }
            }
        };
        if let Some(m) = failure {
            let _ = tx.send(Err(m.clone().into())).await;
            let _ = done_tx.send(Err(m));
            return;
        }
        let _ = done_tx.send(Ok((hasher, n)));
        if hold == Hold::LastFrame {
            let last = match (release_rx.await, held) {
                (Ok(true), Some(b)) => Ok(b),
                (Ok(true), None) => return,
                _ => Err("digest mismatch: upload aborted by modelgate".into()),
            };
            let _ = tx.send(last).await;
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|x| (x.map(Frame::data), rx))
    });
    Forward {
        body: BodyExt::boxed(StreamBody::new(stream)),
        done,
        release,
    }
}

fn err(status: StatusCode, code: ErrorCode, m: impl Into<String>) -> OciError {
    OciError::new(status, code, m)
}

/// One upstream request of an upload.
pub struct Step {
    pub kind: UploadStep,
    pub method: Method,
    pub url: Url,
    pub headers: HeaderMap,
}

/// Send `client`'s body upstream as one upload step while it flows. With
/// `check`, the step completes the blob and its last frame goes only if the
/// whole upload hashes to `check`. Returns the next Location (chunks), the
/// hasher over everything so far, and the bytes this step carried.
pub async fn stream_step(
    r: &Route,
    step: Step,
    client: Incoming,
    hasher: Sha256Hasher,
    check: Option<&Digest>,
) -> Result<(Option<Url>, Sha256Hasher, u64), OciError> {
    let hold = match check {
        Some(_) => Hold::LastFrame,
        None => Hold::Nothing,
    };
    let fw = forward(client, hasher, hold, r.upstream.idle_timeout());
    let route = r.clone();
    let body = UploadBody::Stream(fw.body);
    let task = tokio::spawn(async move {
        upload_step(&route, step.kind, step.method, step.url, step.headers, body).await
    });
    let joined =
        |e: tokio::task::JoinError| err(StatusCode::BAD_GATEWAY, ErrorCode::Unknown, e.to_string());
    let (hasher, n) = match fw.done.await {
        Ok(Ok(x)) => x,
        Ok(Err(m)) => {
            task.abort();
            return Err(err(
                StatusCode::BAD_REQUEST,
                ErrorCode::BlobUploadInvalid,
                m,
            ));
        }
        // The forwarder stopped because the upstream request ended early.
        Err(_) => {
            return Err(match task.await.map_err(joined)? {
                Err(e) => e.into(),
                Ok(_) => err(
                    StatusCode::BAD_GATEWAY,
                    ErrorCode::Unknown,
                    format!("upstream {} ended the upload early", r.upstream.name),
                ),
            })
        }
    };
    if let Some(want) = check {
        let actual = hasher.clone().finish();
        let ok = &actual == want;
        let _ = fw.release.send(ok);
        if !ok {
            task.abort();
            return Err(err(
                StatusCode::BAD_REQUEST,
                ErrorCode::DigestInvalid,
                format!("the uploaded bytes hash to {actual}, not {want}; the upload was not completed upstream"),
            ));
        }
    }
    let next = task.await.map_err(joined)??;
    Ok((next, hasher, n))
}
