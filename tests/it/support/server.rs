//! The mock upstream registry, running on 127.0.0.1:0 until dropped.

use super::endpoints::mock_handle;
use super::mock::MockState;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A running mock upstream registry.
pub struct Mock {
    pub addr: SocketAddr,
    pub state: Arc<MockState>,
    stop: Option<oneshot::Sender<()>>,
}

impl Mock {
    pub async fn start() -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(MockState::default());
        *state.base.lock().unwrap() = format!("http://{addr}");
        let (tx, mut rx) = oneshot::channel::<()>();
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = &mut rx => break,
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| mock_handle(st.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Mock {
            addr,
            state,
            stop: Some(tx),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}
