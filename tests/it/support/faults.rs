//! How the mock upstream misbehaves when serving a blob: wrong bytes, short
//! or broken bodies, drips and stalls.

use super::answers::full;
use super::answers::Body;
use super::mock::{Fault, MockState};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

pub fn faulty_body(st: Arc<MockState>, data: Bytes, fault: Option<Fault>) -> (Body, Option<u64>) {
    use futures_util::stream;
    let len = data.len() as u64;
    let sent = move |n: usize| {
        st.sent.fetch_add(n as u64, Ordering::SeqCst);
    };
    match fault {
        None => {
            sent(data.len());
            (full(data), Some(len))
        }
        Some(Fault::WrongBytes(b)) => {
            sent(b.len());
            (full(b), Some(len))
        }
        Some(Fault::ShortChunked(n)) => {
            let part = data.slice(..n);
            sent(n);
            let s = stream::iter(vec![Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                Frame::data(part),
            )]);
            (BodyExt::boxed(StreamBody::new(s)), None)
        }
        Some(Fault::DropAfter(n)) => {
            let part = data.slice(..n);
            sent(n);
            // Let the first part reach the wire before the connection breaks.
            let s = stream::iter(vec![Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                Frame::data(part),
            )])
            .chain(stream::once(async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Err::<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>(
                    "connection dropped by test".into(),
                )
            }));
            (BodyExt::boxed(StreamBody::new(s)), Some(len))
        }
        Some(Fault::StallAfter(n)) => {
            let part = data.slice(..n);
            sent(n);
            let s = stream::iter(vec![Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                Frame::data(part),
            )])
            .chain(stream::once(async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Err::<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>("never".into())
            }));
            (BodyExt::boxed(StreamBody::new(s)), Some(len))
        }
        Some(Fault::Drip { chunk, delay }) => {
            let chunks: Vec<Bytes> = (0..data.len())
                .step_by(chunk)
                .map(|i| data.slice(i..(i + chunk).min(data.len())))
                .collect();
            let s = stream::iter(chunks).then(move |c| {
                let sent = sent.clone();
                async move {
                    tokio::time::sleep(delay).await;
                    sent(c.len());
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(c))
                }
            });
            (BodyExt::boxed(StreamBody::new(s)), Some(len))
        }
    }
}
