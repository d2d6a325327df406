//! A modelgate started in-process on 127.0.0.1:0, and what tests read off it
//! (audit log, metrics, cache files).

use modelgate::config::Config;
use modelgate::server::{self, App};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A modelgate running in-process.
pub struct Gate {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub app: Arc<App>,
    pub dir: std::path::PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _tmp: Option<tempfile::TempDir>,
}

/// `[[upstreams]]` text for one upstream.
pub fn upstream_toml(name: &str, url: &str, default: bool, extra: &str) -> String {
    format!("[[upstreams]]\nname = \"{name}\"\nurl = \"{url}\"\ndefault = {default}\nidle_timeout = \"2s\"\nconnect_timeout = \"1s\"\n{extra}\n")
}

impl Gate {
    /// Start with the given `[[upstreams]]` and `[cache]` extras, in a fresh cache dir.
    pub async fn start(upstreams: &str, cache_extra: &str) -> Gate {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut g = Gate::start_in(&dir, upstreams, cache_extra, None).await;
        g._tmp = Some(tmp);
        g
    }

    pub async fn start_in(
        dir: &std::path::Path,
        upstreams: &str,
        cache_extra: &str,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Gate {
        // Most tests push without credentials; the read-only default has
        // its own tests (bypass.rs).
        Gate::start_with(
            dir,
            upstreams,
            cache_extra,
            "allow_anonymous_push = true",
            tls,
        )
        .await
    }

    /// One upstream named `local` at `upstream_url` (the default), a fresh
    /// cache dir, and exactly these `[server]` settings (read-only unless
    /// they say otherwise).
    pub async fn start_server(upstream_url: &str, server_extra: &str) -> Gate {
        let tmp = tempfile::tempdir().unwrap();
        let upstreams = upstream_toml("local", upstream_url, true, "");
        let mut g = Gate::start_with(tmp.path(), &upstreams, "", server_extra, None).await;
        g._tmp = Some(tmp);
        g
    }

    /// One upstream named `local` at `upstream_url`, in `dir` (its
    /// `policy.toml`, if any), and client logins: user `ci-bot`, password
    /// `s3cret` (writes need them).
    pub async fn start_with_ci_bot(dir: &std::path::Path, upstream_url: &str) -> Gate {
        let extra = super::process::htpasswd_with_ci_bot(dir);
        let upstreams = upstream_toml("local", upstream_url, true, "");
        Gate::start_with(dir, &upstreams, "", &extra, None).await
    }

    /// Start with extra `[server]` settings too.
    pub async fn start_with(
        dir: &std::path::Path,
        upstreams: &str,
        cache_extra: &str,
        server_extra: &str,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Gate {
        let policy = if dir.join("policy.toml").exists() {
            format!(
                "[policy]\nfile = \"{}\"\nreload_interval = \"200ms\"",
                dir.join("policy.toml").display()
            )
        } else {
            String::new()
        };
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{server_extra}\n[audit]\npath = \"{}\"\n{policy}\n[cache]\ndir = \"{}\"\n{cache_extra}\n{upstreams}",
            dir.join("audit.log").display(),
            dir.join("cache").display()
        );
        let cfg = Config::parse(&text).unwrap();
        let app = App::new(cfg).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server::run(
            app.clone(),
            listener,
            Some(admin),
            tls,
            async move {
                let _ = rx.await;
            },
        ));
        Gate {
            addr,
            admin: admin_addr,
            app,
            dir: dir.to_path_buf(),
            stop: Some(tx),
            task: Some(task),
            _tmp: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The audit records written so far.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit lines are JSON"))
            .collect()
    }

    /// The release ledger of `repo`, as written on disk.
    pub fn ledger_entries(&self, repo: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(
            self.dir
                .join("cache/ledger")
                .join(repo)
                .join("ledger.jsonl"),
        )
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("ledger lines are JSON"))
        .collect()
    }

    pub fn metrics(&self) -> String {
        self.app.metrics().encode()
    }

    /// The value of one metric line (exact name with labels), 0 if absent.
    pub fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics(), series)
    }

    /// Signal shutdown and wait for the server to finish.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(40), t).await;
        }
    }

    pub fn trigger_stop(&mut self) -> Option<tokio::task::JoinHandle<()>> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.take()
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|v| v.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// Wait (bounded) until no download is in flight: a client gets its last
/// byte once the blob verified, and the commit to the cache follows.
pub async fn settle(g: &Gate) {
    for _ in 0..200 {
        if g.app.registry().flights().in_flight() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("downloads still in flight after 2s");
}

/// Files under the cache's blob directory.
pub fn cached_blobs(g: &Gate) -> Vec<String> {
    std::fs::read_dir(g.dir.join("cache/blobs/sha256"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Files left in the cache's temp directory.
pub fn temp_files(g: &Gate) -> usize {
    std::fs::read_dir(g.dir.join("cache/tmp"))
        .map(|rd| rd.count())
        .unwrap_or(0)
}
