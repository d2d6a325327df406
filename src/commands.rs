//! The command-line tools besides `serve`: `keygen`, `sign`, `check` and
//! `policy lint`. Each returns the process exit code; `check` runs the
//! server's own decision code.

use crate::config::{Config, UpstreamConfig};
use crate::metrics::Metrics;
use crate::oci::media::{DEFAULT_MANIFEST_ACCEPT, OCI_INDEX, OCI_MANIFEST};
use crate::oci::{Digest, ImageRef, OciError, Reference};
use crate::policy::{Decision, Policy};
use crate::server::{gate, pull, App};
use crate::trust::keys::Algorithm;
use crate::trust::{sign as build, PrivateKey};
use crate::upstream::{Route, Upstream};
use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Limited};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// `modelgate keygen`: PREFIX.key (PKCS#8 PEM, mode 0600) and PREFIX.pub (SPKI PEM).
pub fn keygen(prefix: &str, alg: Algorithm) -> Result<(), String> {
    let (kp, pp) = (format!("{prefix}.key"), format!("{prefix}.pub"));
    for p in [&kp, &pp] {
        if Path::new(p).exists() {
            return Err(format!("{p} exists; refusing to overwrite a key"));
        }
    }
    let key = PrivateKey::generate(alg)?;
    let pem = key.to_pem()?;
    if let Some(dir) = Path::new(&kp)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&kp)
            .map_err(|e| format!("{kp}: {e}"))?;
        f.write_all(pem.as_bytes())
            .map_err(|e| format!("{kp}: {e}"))?;
    }
    std::fs::write(&pp, key.public().to_pem()).map_err(|e| format!("{pp}: {e}"))?;
    println!(
        "wrote {kp} (private, keep it secret) and {pp} ({}; hint {})",
        key.public().algorithm(),
        key.public().hint()
    );
    Ok(())
}

/// `modelgate policy lint FILE [--config CONFIG]`: parse, print the rules as
/// understood, then every finding with its line. With a config, globs are
/// checked against its upstream names (and the config itself must be
/// valid). Err when anything is an error.
pub fn policy_lint(file: &Path, config: Option<&Path>) -> Result<(), String> {
    let (p, _) = Policy::load(file).map_err(|e| e.to_string())?;
    print!("{}", p.describe());
    let upstreams = match config {
        Some(c) => {
            let cfg = Config::load(c).map_err(|e| format!("error: {e}"))?;
            println!("checked against the upstreams of {}", c.display());
            Some(
                cfg.upstreams
                    .iter()
                    .map(|u| u.name.clone())
                    .collect::<Vec<_>>(),
            )
        }
        None => None,
    };
    let findings = p.lint(upstreams.as_deref());
    for f in &findings {
        println!("{f}");
    }
    let errors = findings
        .iter()
        .filter(|f| f.severity == crate::policy::Severity::Error)
        .count();
    match errors {
        0 => Ok(()),
        n => Err(format!("{}: {n} error(s)", file.display())),
    }
}

/// Options of `modelgate sign`.
pub struct SignArgs {
    pub key: std::path::PathBuf,
    pub image: String,
    pub bundle: bool,
    pub digest: Option<Digest>,
    pub media_type: Option<String>,
    pub size: Option<u64>,
    pub plain_http: bool,
    pub username: Option<String>,
    pub password: Option<String>,
    pub ca_cert: Option<std::path::PathBuf>,
}

fn registry_client(image: &ImageRef, a: &SignArgs) -> Result<Upstream, String> {
    let scheme = if a.plain_http { "http" } else { "https" };
    let cfg = UpstreamConfig {
        name: image.host.clone(),
        url: url::Url::parse(&format!("{scheme}://{}", image.host)).map_err(|e| e.to_string())?,
        default: true,
        username: a.username.clone(),
        password: a.password.clone(),
        ca_cert: a.ca_cert.clone(),
        connect_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
    };
    Upstream::new(&cfg, Arc::new(Metrics::new())).map_err(|e| e.to_string())
}

async fn body_of(
    resp: hyper::Response<hyper::body::Incoming>,
    max: usize,
) -> Result<Bytes, String> {
    Limited::new(resp.into_body(), max)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| e.to_string())
}

struct Pusher<'a> {
    up: &'a Upstream,
    repo: &'a str,
    scope: String,
}

impl Pusher<'_> {
    async fn send(
        &self,
        method: Method,
        url: url::Url,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<hyper::Response<hyper::body::Incoming>, String> {
        self.up
            .request(method, url, headers, &self.scope, body)
            .await
            .map_err(|e| e.to_string())
    }

    async fn fail(what: &str, resp: hyper::Response<hyper::body::Incoming>) -> String {
        let status = resp.status();
        let body = body_of(resp, 64 * 1024).await.unwrap_or_default();
        let detail = OciError::parse_body(&body)
            .map(|(c, m)| format!("{}: {m}", c.as_str()))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
        format!("{what}: registry answered {status}: {detail}")
    }

    async fn get_manifest(
        &self,
        reference: &str,
        accept: &str,
    ) -> Result<Option<(Bytes, String)>, String> {
        let mut h = HeaderMap::new();
        h.insert(
            ACCEPT,
            HeaderValue::from_str(accept).map_err(|e| e.to_string())?,
        );
        let resp = self
            .send(
                Method::GET,
                self.up
                    .url(self.repo, &format!("manifests/{reference}"), None),
                h,
                Bytes::new(),
            )
            .await?;
        match resp.status() {
            StatusCode::OK => {
                let ct = resp
                    .headers()
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(OCI_MANIFEST)
                    .to_string();
                Ok(Some((
                    body_of(resp, crate::oci::media::MAX_MANIFEST_BYTES).await?,
                    ct,
                )))
            }
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(Self::fail(&format!("GET manifest {reference}"), resp).await),
        }
    }

    async fn put_blob(&self, data: &[u8]) -> Result<Digest, String> {
        let d = Digest::of(data);
        let head = self
            .send(
                Method::HEAD,
                self.up.url(self.repo, &format!("blobs/{d}"), None),
                HeaderMap::new(),
                Bytes::new(),
            )
            .await?;
        if head.status() == StatusCode::OK {
            return Ok(d);
        }
        let resp = self
            .send(
                Method::POST,
                self.up.url(self.repo, "blobs/uploads/", None),
                HeaderMap::new(),
                Bytes::new(),
            )
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(Self::fail("start blob upload", resp).await);
        }
        let loc = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or("upload answer has no Location")?
            .to_string();
        let mut url = self
            .up
            .base_url()
            .join(&loc)
            .map_err(|e| format!("bad upload Location {loc:?}: {e}"))?;
        url.query_pairs_mut().append_pair("digest", &d.to_string());
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        h.insert(CONTENT_LENGTH, HeaderValue::from(data.len()));
        let resp = self
            .send(Method::PUT, url, h, Bytes::copy_from_slice(data))
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(Self::fail("finish blob upload", resp).await);
        }
        Ok(d)
    }

    async fn put_manifest(
        &self,
        reference: &str,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<(), String> {
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_str(media_type).map_err(|e| e.to_string())?,
        );
        let resp = self
            .send(
                Method::PUT,
                self.up
                    .url(self.repo, &format!("manifests/{reference}"), None),
                h,
                Bytes::copy_from_slice(bytes),
            )
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(Self::fail(&format!("PUT manifest {reference}"), resp).await);
        }
        Ok(())
    }
}

/// `modelgate sign`: sign an image digest in cosign's format and push the
/// signature to the registry named in IMAGE.
pub async fn sign(a: SignArgs) -> Result<(), String> {
    let image = ImageRef::parse(&a.image)?;
    let key_pem =
        std::fs::read_to_string(&a.key).map_err(|e| format!("{}: {e}", a.key.display()))?;
    let key = PrivateKey::from_pem(&key_pem).map_err(|e| format!("{}: {e}", a.key.display()))?;
    let up = registry_client(&image, &a)?;
    let p = Pusher {
        up: &up,
        repo: image.repo.as_str(),
        scope: format!("repository:{}:pull,push", image.repo),
    };
    // What is signed: --digest, IMAGE@digest, or what IMAGE's tag points at now.
    let (digest, subject) = match a.digest.clone().or(image.digest.clone()) {
        Some(d) => (
            d,
            a.size.map(|s| {
                (
                    a.media_type.clone().unwrap_or_else(|| OCI_MANIFEST.into()),
                    s,
                )
            }),
        ),
        None => {
            let reference = image.reference().to_string();
            let (bytes, ct) = p
                .get_manifest(&reference, DEFAULT_MANIFEST_ACCEPT)
                .await?
                .ok_or(format!("{} not found in the registry", a.image))?;
            (Digest::of(&bytes), Some((ct, bytes.len() as u64)))
        }
    };
    let docker_reference = format!("{}/{}", image.host, image.repo);
    if a.bundle {
        let (mt, size) = match subject {
            Some(s) => s,
            None => match p.get_manifest(&digest.to_string(), DEFAULT_MANIFEST_ACCEPT).await? {
                Some((b, ct)) => (ct, b.len() as u64),
                None => return Err(format!("{digest} is not in the registry: give --size (and --media-type) to sign it before it is pushed")),
            },
        };
        let bundle = build::sign_bundle(&key, &digest);
        p.put_blob(&bundle).await?;
        p.put_blob(build::EMPTY_JSON).await?;
        let created = crate::audit::now_rfc3339();
        let manifest = build::bundle_manifest(&bundle, &mt, &digest, size, &created);
        let md = Digest::of(&manifest);
        p.put_manifest(&md.to_string(), &manifest, OCI_MANIFEST)
            .await?;
        // Registries without a referrers API: keep the tag-schema index.
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, HeaderValue::from_static(OCI_INDEX));
        let r = p
            .send(
                Method::GET,
                up.url(p.repo, &format!("referrers/{digest}"), None),
                h,
                Bytes::new(),
            )
            .await?;
        let api = r.status() == StatusCode::OK
            && r.headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| t.starts_with(OCI_INDEX));
        drop(r);
        if !api {
            let existing = p.get_manifest(&digest.tag_schema(), OCI_INDEX).await?;
            let index = build::add_to_referrers_index(
                existing.as_ref().map(|(b, _)| b.as_ref()),
                &manifest,
            );
            p.put_manifest(&digest.tag_schema(), &index, OCI_INDEX)
                .await?;
        }
        println!(
            "signed {docker_reference}@{digest} (bundle referrer {md}, key hint {})",
            key.public().hint()
        );
    } else {
        let sig = build::sign_legacy(&key, &docker_reference, &digest);
        let tag = format!("{}.sig", digest.tag_schema());
        let existing = p.get_manifest(&tag, OCI_MANIFEST).await?;
        let (config, manifest) =
            build::legacy_manifest(existing.as_ref().map(|(b, _)| b.as_ref()), &sig);
        p.put_blob(&sig.payload).await?;
        p.put_blob(&config).await?;
        p.put_manifest(&tag, &manifest, OCI_MANIFEST).await?;
        println!(
            "signed {docker_reference}@{digest} (tag {tag}, key hint {})",
            key.public().hint()
        );
    }
    Ok(())
}

/// `modelgate check`: 0 admitted, 1 denied, 2 error.
pub async fn check(config: &Path, image: &str, json: bool) -> u8 {
    match check_inner(config, image).await {
        Ok(report) => {
            let code = if report.decision.decision == Decision::Deny {
                1
            } else {
                0
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report.json()).unwrap_or_default()
                );
            } else {
                print!("{}", report.human());
            }
            code
        }
        Err(e) => {
            if json {
                println!("{}", serde_json::json!({"image": image, "error": e}));
            } else {
                eprintln!("modelgate check: {e}");
            }
            2
        }
    }
}

struct Report {
    image: String,
    route: Route,
    digest: Digest,
    decision: crate::policy::PolicyDecision,
    signers: Vec<String>,
    exempt: Option<gate::Exemption>,
    policy_sha256: String,
}

impl Report {
    fn message(&self) -> String {
        match self.exempt {
            Some(x) => format!("readable without a decision: {}", x.reason()),
            None => self.decision.message(),
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "image": self.image,
            "upstream": self.route.upstream.name,
            "repository": self.route.canonical,
            "digest": self.digest.to_string(),
            "decision": self.decision.decision.as_str(),
            "admitted": self.decision.decision != Decision::Deny,
            "rule": self.decision.rule,
            "reasons": self.decision.reasons,
            "message": self.message(),
            "signers": self.signers,
            "exempt": self.exempt.map(|x| x.reason()),
            "policy_sha256": self.policy_sha256,
        })
    }

    fn human(&self) -> String {
        let verdict = match self.decision.decision {
            Decision::Allow => "ADMITTED",
            Decision::Audit => "ADMITTED (audit mode: would be denied)",
            Decision::Deny => "DENIED",
        };
        let mut s = format!(
            "image       {}\nrepository  {} (upstream {})\ndigest      {}\ndecision    {verdict}\nmessage     {}\n",
            self.image,
            self.route.canonical,
            self.route.upstream.name,
            self.digest,
            self.message()
        );
        for r in &self.decision.reasons {
            s += &format!("  - {r}\n");
        }
        if let Some(e) = &self.exempt {
            s += &format!("exempt      {}\n", e.reason());
        }
        s += &format!(
            "signatures  {}\npolicy      sha256:{}\n",
            if self.signers.is_empty() {
                "none valid".to_string()
            } else {
                format!("valid by [{}]", self.signers.join(", "))
            },
            self.policy_sha256
        );
        s
    }
}

async fn check_inner(config: &Path, image: &str) -> Result<Report, String> {
    let img = ImageRef::parse(image)?;
    let cfg = Config::load(config).map_err(|e| e.to_string())?;
    let listen = cfg.listen.to_string();
    let app = App::new(cfg).map_err(|e| e.to_string())?;
    let route = if let Some(u) = app.router.by_name(&img.host) {
        Route {
            canonical: img.repo.prefixed(&u.name),
            upstream: u.clone(),
            path: img.repo.clone(),
            ns: None,
        }
    } else if img.host == listen
        || img.host == format!("localhost:{}", listen.rsplit(':').next().unwrap_or(""))
    {
        app.router
            .route(&img.repo, None)
            .map_err(|e| e.to_string())?
    } else {
        let names: Vec<_> = app
            .router
            .upstreams()
            .iter()
            .map(|u| u.name.clone())
            .collect();
        return Err(format!(
            "{} is neither an upstream name ({}) nor modelgate's listen address {listen}",
            img.host,
            names.join(", ")
        ));
    };
    let reference: Reference = img.reference();
    let m = pull::get_manifest(&app, &route, &reference, None)
        .await
        .map_err(|e| e.message)?;
    let loaded = app.policy.current();
    let subject = gate::Subject {
        route: &route,
        reference: &reference,
        manifest: &m,
    };
    let out = gate::decide(&app, &subject, &loaded).await;
    Ok(Report {
        image: image.to_string(),
        digest: m.digest.clone(),
        decision: out.decision,
        signers: out.evidence.signers.into_iter().collect(),
        exempt: out.exempt,
        policy_sha256: loaded.sha256.clone(),
        route,
    })
}
