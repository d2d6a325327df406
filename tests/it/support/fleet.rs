//! Several replicas on one machine, all on loopback: SeaweedFS (`weed
//! mini`) as the S3 server, `redis-server`, and `modelgate serve`
//! processes sharing them. Missing tools skip (or fail, with
//! `MODELGATE_REQUIRE_INTEROP=1`), saying which.

use super::client::client;
use super::process::{bin, free_port, free_ports, spawn_logged};
use http::StatusCode;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

pub const S3_KEY: &str = "mgtest";
pub const S3_SECRET: &str = "mgtest-secret-0123";
pub const BUCKET: &str = "modelgate";
pub const TOKEN: &str = "fleet-token-0123456789abcdef";

/// `weed` and `redis-server`, or None (the test skips, or fails when
/// interop is required, saying which is missing).
pub fn tools() -> Option<(PathBuf, PathBuf)> {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tools-venv/bin/weed");
    let given = std::env::var("MODELGATE_WEED").unwrap_or_default();
    let weed = crate::interop::tool("weed", &[&given, &venv.to_string_lossy()]);
    let redis = crate::interop::tool("redis-server", &["/usr/bin/redis-server"]);
    Some((weed?, redis?))
}

/// Wait until `url` answers at all (any status).
async fn answers(url: &str, tries: usize) -> bool {
    for _ in 0..tries {
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_secs(1), client().get(url.parse().unwrap())).await
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// `kill -9` a child process (if running) and reap it.
fn stop(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A SeaweedFS server with a bucket and credentials.
pub struct Seaweed {
    bin: PathBuf,
    dir: PathBuf,
    pub s3_port: u16,
    ports: Vec<u16>,
    child: Option<Child>,
}

impl Seaweed {
    pub async fn start(bin: &Path, dir: &Path) -> Seaweed {
        std::fs::create_dir_all(dir).unwrap();
        let ports = free_ports(14);
        let mut w = Seaweed {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            s3_port: ports[0],
            ports,
            child: None,
        };
        w.run(true).await;
        w
    }

    /// The `weed mini` command on the current ports.
    fn command(&self) -> Command {
        let p = &self.ports;
        let flags = [
            ("s3.port", p[0]),
            ("s3.port.grpc", p[1]),
            ("master.port", p[2]),
            ("master.port.grpc", p[3]),
            ("filer.port", p[4]),
            ("filer.port.grpc", p[5]),
            ("volume.port", p[6]),
            ("volume.port.grpc", p[7]),
            ("admin.port", p[8]),
            ("admin.port.grpc", p[9]),
            ("s3.port.iceberg", p[10]),
            ("s3.port.lance", p[11]),
            ("debug.port", p[12]),
            ("metricsPort", p[13]),
        ];
        let mut cmd = Command::new(&self.bin);
        cmd.arg("mini")
            .arg(format!("-dir={}", self.dir.join("data").display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-admin.ui=false",
                "-master.telemetry=false",
                "-webdav=false",
            ])
            .args(flags.iter().map(|(k, v)| format!("-{k}={v}")))
            .env("AWS_ACCESS_KEY_ID", S3_KEY)
            .env("AWS_SECRET_ACCESS_KEY", S3_SECRET)
            .env("S3_BUCKET", BUCKET);
        cmd
    }

    /// Start `weed mini`; `fresh`: nobody knows its ports yet, so a port
    /// taken since it was chosen is replaced by another (a restart keeps
    /// them, and waits for its previous run to let go of them).
    async fn run(&mut self, fresh: bool) {
        let mut last = String::new();
        for _ in 0..20 {
            let log = self.dir.join(format!("weed-{}.log", self.ports[0]));
            self.child = Some(spawn_logged(&mut self.command(), &log).unwrap());
            if self.bucket_ready().await && self.serving().await {
                return;
            }
            last = std::fs::read_to_string(&log).unwrap_or_default();
            stop(&mut self.child);
            if fresh {
                self.ports = free_ports(14);
                self.s3_port = self.ports[0];
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let tail: String = last
            .chars()
            .rev()
            .take(2000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        panic!("weed mini did not start: {tail}");
    }

    /// Whether objects can be written and read back (after a restart the
    /// S3 front answers before its volume server is back: 500s).
    async fn serving(&self) -> bool {
        let b = modelgate::shared::Bucket::new(&modelgate::config::S3Config {
            endpoint: self.endpoint().parse().unwrap(),
            bucket: BUCKET.into(),
            region: "us-east-1".into(),
            path_style: true,
            access_key: modelgate::config::Secret(S3_KEY.into()),
            secret_key: modelgate::config::Secret(S3_SECRET.into()),
            ca_cert: None,
            prefix: String::new(),
        })
        .unwrap();
        for _ in 0..100 {
            let put = b
                .put(
                    "probe/ready",
                    bytes::Bytes::from_static(b"ok"),
                    modelgate::shared::Cond::Always,
                )
                .await;
            if put.is_ok() && matches!(b.get_small("probe/ready").await, Ok(Some(_))) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        false
    }

    /// Whether the bucket exists (HEAD /bucket answers 200 or 403, not 404).
    async fn bucket_ready(&self) -> bool {
        let url = format!("http://127.0.0.1:{}/{BUCKET}/probe", self.s3_port);
        for _ in 0..60 {
            if let Ok(Ok(r)) =
                tokio::time::timeout(Duration::from_secs(1), client().get(url.parse().unwrap()))
                    .await
            {
                // Unsigned: 403 once the bucket and its credentials exist.
                if r.status() == StatusCode::FORBIDDEN || r.status() == StatusCode::NOT_FOUND {
                    let body = http_body_util::BodyExt::collect(r.into_body())
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    if !String::from_utf8_lossy(&body).contains("NoSuchBucket") {
                        return true;
                    }
                }
            }
            if self.child.is_none() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        false
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        stop(&mut self.child);
    }

    /// Start again on the same data and ports.
    pub async fn restart(&mut self) {
        self.kill9();
        self.run(false).await;
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A Redis server without persistence.
pub struct Redis {
    bin: PathBuf,
    pub port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl Redis {
    pub async fn start(bin: &Path, dir: &Path) -> Redis {
        let mut r = Redis {
            bin: bin.to_path_buf(),
            port: free_port(),
            child: None,
            log: dir.join("redis.log"),
        };
        r.run().await;
        r
    }

    async fn run(&mut self) {
        let mut cmd = Command::new(&self.bin);
        cmd.args([
            "--bind",
            "127.0.0.1",
            "--port",
            &self.port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ]);
        self.child = Some(spawn_logged(&mut cmd, &self.log).unwrap());
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "redis-server did not start: {}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        stop(&mut self.child);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One `modelgate serve` of the fleet.
pub struct Replica {
    pub port: u16,
    pub admin: u16,
    pub internal: u16,
    pub dir: PathBuf,
    cfg: PathBuf,
    child: Option<Child>,
}

impl Replica {
    /// Write the config of replica `n` in `dir` and start it. `redis`:
    /// with coordination; `policy`: a policy file's text.
    pub async fn start(
        dir: &Path,
        n: usize,
        s3: &str,
        redis: Option<&str>,
        upstream: &str,
        policy: Option<&str>,
    ) -> Replica {
        let dir = dir.join(format!("replica{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        let p = free_ports(3);
        let (port, admin, internal) = (p[0], p[1], p[2]);
        let mut cfg = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\nallow_anonymous_push = true\n[cache]\ndir = \"{}\"\ntag_ttl = \"1s\"\n[storage]\nbackend = \"s3\"\nendpoint = \"{s3}\"\nbucket = \"{BUCKET}\"\n",
            dir.join("cache").display()
        );
        if let Some(r) = redis {
            cfg += &format!("[coordination]\nredis = \"{r}\"\ninternal_listen = \"127.0.0.1:{internal}\"\nlease_ttl = \"2s\"\n");
        }
        if let Some(p) = policy {
            std::fs::write(dir.join("policy.toml"), p).unwrap();
            cfg += &format!(
                "[policy]\nfile = \"{}\"\n",
                dir.join("policy.toml").display()
            );
        }
        cfg += &format!("[audit]\npath = \"{}\"\n", dir.join("audit.log").display());
        cfg += &super::gate::upstream_toml("local", upstream, true, "");
        let path = dir.join("modelgate.toml");
        std::fs::write(&path, cfg).unwrap();
        let mut r = Replica {
            port,
            admin,
            internal,
            dir,
            cfg: path,
            child: None,
        };
        r.run().await;
        r
    }

    async fn run(&mut self) {
        let log = self.dir.join("log");
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--config"])
            .arg(&self.cfg)
            .env("MODELGATE_S3_ACCESS_KEY", S3_KEY)
            .env("MODELGATE_S3_SECRET_KEY", S3_SECRET)
            .env("MODELGATE_INTERNAL_TOKEN", TOKEN)
            .env("MODELGATE_LOG", "info");
        self.child = Some(spawn_logged(&mut cmd, &log).unwrap());
        if !answers(&format!("http://127.0.0.1:{}/readyz", self.admin), 100).await {
            panic!("replica did not start: {}", self.log());
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    pub async fn metrics(&self) -> String {
        let g = super::client::get(&format!("http://127.0.0.1:{}/metrics", self.admin)).await;
        String::from_utf8_lossy(g.bytes()).into_owned()
    }

    pub async fn readyz(&self) -> (StatusCode, String) {
        let g = super::client::get(&format!("http://127.0.0.1:{}/readyz", self.admin)).await;
        (g.status, String::from_utf8_lossy(g.bytes()).into_owned())
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        stop(&mut self.child);
    }

    /// Run `modelgate <args> --config <this replica's config>` with the
    /// fleet's credentials: (exit code, stdout + stderr).
    pub fn cli(&self, args: &[&str]) -> (Option<i32>, String) {
        let out = Command::new(bin())
            .args(args)
            .arg("--config")
            .arg(&self.cfg)
            .env("MODELGATE_S3_ACCESS_KEY", S3_KEY)
            .env("MODELGATE_S3_SECRET_KEY", S3_SECRET)
            .env("MODELGATE_INTERNAL_TOKEN", TOKEN)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill9();
    }
}
