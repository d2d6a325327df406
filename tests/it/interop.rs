//! Interop with the real distribution registry (Debian `docker-registry`) as
//! upstream and real clients pulling through modelgate: skopeo by every
//! routing form (byte-identical to a direct pull), containerd with a
//! hosts.toml that makes modelgate the server (`?ns=`), podman with a
//! registries.conf location remap (path prefix).
//!
//! Without the tools these tests print why and pass as skipped, unless
//! `MODELGATE_REQUIRE_INTEROP=1`, which turns a missing tool into a failure.

use crate::support::*;
use bytes::Bytes;
use modelgate::oci::Digest;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn required() -> bool {
    std::env::var("MODELGATE_REQUIRE_INTEROP").is_ok_and(|v| v == "1")
}

/// The real registry and skopeo, both found (else the test skips, or fails
/// when interop is required, saying which is missing).
fn registry_and_skopeo() -> Option<(PathBuf, PathBuf)> {
    let registry = tool("docker-registry", &["/usr/bin/docker-registry"]);
    let skopeo = tool("skopeo", &["/usr/bin/skopeo"]);
    Some((registry?, skopeo?))
}

/// The path of `tool`, or None after saying why the test skips.
pub fn tool(name: &str, candidates: &[&str]) -> Option<PathBuf> {
    let found = candidates
        .iter()
        .map(PathBuf::from)
        .chain(std::env::var_os("PATH").into_iter().flat_map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .collect::<Vec<_>>()
        }))
        .find(|p| p.is_file());
    if found.is_none() {
        let msg = format!("interop: `{name}` not found (apt-get install it, or run .ci/run)");
        if required() {
            panic!("{msg}; MODELGATE_REQUIRE_INTEROP=1 makes this a failure");
        }
        eprintln!("SKIP {msg}");
    }
    found
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

/// A distribution registry on a free loopback port, stopped (by PID) on drop.
pub struct Registry {
    pub addr: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    pub async fn start(bin: &Path) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let cfg = dir.path().join("config.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n  secret: modelgate-test\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = spawn_logged(
            Command::new(bin).arg("serve").arg(&cfg),
            &dir.path().join("registry.log"),
        )
        .expect("start docker-registry");
        let reg = Registry {
            addr,
            child,
            _dir: dir,
        };
        for _ in 0..100 {
            if let Ok(Ok(r)) = tokio::time::timeout(
                Duration::from_secs(1),
                client().get(format!("http://{}/v2/", reg.addr).parse().unwrap()),
            )
            .await
            {
                if r.status().is_success() {
                    return reg;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("docker-registry did not start on {}", reg.addr);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// A one-file uncompressed tar layer (valid, so clients can unpack it).
pub fn tar_layer(name: &str, content: &[u8]) -> Bytes {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{:011o}\0", content.len()).as_bytes());
    h[136..148].copy_from_slice(b"14000000000\0");
    h[148..156].copy_from_slice(b"        ");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    let sum: u32 = h.iter().map(|b| *b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(content);
    out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
    Bytes::from(out)
}

/// Monolithic blob upload (POST then PUT ?digest=).
pub async fn push_blob(base: &str, repo: &str, data: &Bytes) -> Digest {
    let d = Digest::of(data);
    let c = client();
    let resp = c
        .request(
            http::Request::post(format!("{base}/v2/{repo}/blobs/uploads/"))
                .body(http_body_util::Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "start upload");
    let loc = resp.headers()["location"].to_str().unwrap().to_string();
    let loc = if loc.starts_with("http") {
        loc
    } else {
        format!("{base}{loc}")
    };
    let sep = if loc.contains('?') { '&' } else { '?' };
    let resp = c
        .request(
            http::Request::put(format!("{loc}{sep}digest={d}"))
                .header("content-type", "application/octet-stream")
                .body(http_body_util::Full::new(data.clone()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "finish upload");
    d
}

pub async fn push_manifest(
    base: &str,
    repo: &str,
    reference: &str,
    bytes: &[u8],
    media_type: &str,
) -> Digest {
    let resp = client()
        .request(
            http::Request::put(format!("{base}/v2/{repo}/manifests/{reference}"))
                .header("content-type", media_type)
                .body(http_body_util::Full::new(Bytes::copy_from_slice(bytes)))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "manifest push");
    Digest::of(bytes)
}

/// Push a labeled OCI image with valid tar layers; returns (manifest digest, manifest bytes).
pub async fn push_image(
    base: &str,
    repo: &str,
    tag: Option<&str>,
    layers: &[Bytes],
    labels: &serde_json::Value,
    arch: &str,
) -> (Digest, Vec<u8>) {
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        let d = push_blob(base, repo, l).await;
        descs.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d.to_string(), "size": l.len()}));
        diff_ids.push(d.to_string());
    }
    let config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {"Labels": labels, "Cmd": ["/model"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = Bytes::from(serde_json::to_vec(&config).unwrap());
    let cd = push_blob(base, repo, &config).await;
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": config.len()},
        "layers": descs,
    });
    let bytes = serde_json::to_vec(&m).unwrap();
    let reference = tag
        .map(str::to_string)
        .unwrap_or_else(|| Digest::of(&bytes).to_string());
    let d = push_manifest(
        base,
        repo,
        &reference,
        &bytes,
        "application/vnd.oci.image.manifest.v1+json",
    )
    .await;
    (d, bytes)
}

pub fn model_labels() -> serde_json::Value {
    serde_json::json!({"model.version": "v2.1.0", "training.timestamp": "2024-04-05T10:30:00Z", "dataset.id": "ds-20240401", "accuracy.test": "0.963"})
}

/// A multi-layer image and a two-platform index under models/*.
async fn seed(reg: &Registry) -> (Digest, Digest) {
    let base = reg.url();
    let layers: Vec<Bytes> = (0..3)
        .map(|i| {
            tar_layer(
                &format!("weights-{i}.bin"),
                &data(1_500_000 + i * 1000, i as u8),
            )
        })
        .collect();
    let (small, _) = push_image(
        &base,
        "models/small",
        Some("v1"),
        &layers,
        &model_labels(),
        "amd64",
    )
    .await;
    let shared = tar_layer("weights.bin", &data(800_000, 42));
    let mut children = Vec::new();
    for arch in ["amd64", "arm64"] {
        let extra = tar_layer(&format!("{arch}.bin"), &data(1000, arch.len() as u8));
        let (d, bytes) = push_image(
            &base,
            "models/multi",
            None,
            &[shared.clone(), extra],
            &model_labels(),
            arch,
        )
        .await;
        children.push(serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d.to_string(), "size": bytes.len(), "platform": {"os": "linux", "architecture": arch}}));
    }
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": children});
    let multi = push_manifest(
        &base,
        "models/multi",
        "v1",
        &serde_json::to_vec(&index).unwrap(),
        "application/vnd.oci.image.index.v1+json",
    )
    .await;
    (small, multi)
}

/// Runs `cmd`, which must succeed (`what` names the step); returns its output.
async fn run_ok(cmd: &mut tokio::process::Command, what: &str) -> String {
    let (ok, out) = run(cmd).await;
    assert!(ok, "{what}: {out}");
    out
}

async fn run(cmd: &mut tokio::process::Command) -> (bool, String) {
    let out = tokio::time::timeout(Duration::from_secs(180), cmd.stdin(Stdio::null()).output())
        .await
        .expect("command finished within 180s")
        .expect("command started");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn skopeo_cmd(skopeo: &Path, policy: &Path) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(skopeo);
    c.arg("--policy").arg(policy).arg("--insecure-policy");
    c
}

/// Every file under `a` equals the one under `b`.
fn same_tree(a: &Path, b: &Path) -> Result<usize, String> {
    let mut n = 0;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(a.join(&rel)).map_err(|e| e.to_string())? {
            let e = e.map_err(|e| e.to_string())?;
            let r = rel.join(e.file_name());
            if e.file_type().map_err(|e| e.to_string())?.is_dir() {
                stack.push(r);
            } else {
                let x = std::fs::read(a.join(&r)).map_err(|e| e.to_string())?;
                let y = std::fs::read(b.join(&r)).map_err(|e| format!("{}: {e}", r.display()))?;
                if x != y {
                    return Err(format!("{} differs", r.display()));
                }
                n += 1;
            }
        }
    }
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_through_every_routing_form_byte_identical() {
    let Some((registry, skopeo)) = registry_and_skopeo() else {
        return;
    };
    let reg = Registry::start(&registry).await;
    seed(&reg).await;
    let tmp = tempfile::tempdir().unwrap();
    let policy = tmp.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .unwrap();
    let g = Gate::start(&upstream_toml("registry.test", &reg.url(), true, ""), "").await;
    let gate = g.addr.to_string();

    // Direct pulls, the reference.
    for (name, all, fmt) in [("small", false, "dir"), ("multi", true, "oci")] {
        let dest = tmp.path().join(format!("direct-{name}"));
        let mut c = skopeo_cmd(&skopeo, &policy);
        c.arg("copy").arg("--src-tls-verify=false");
        if all {
            c.arg("--all");
        }
        c.arg(format!("docker://{}/models/{name}:v1", reg.addr))
            .arg(format!("{fmt}:{}", dest.display()));
        run_ok(&mut c, "direct skopeo copy failed").await;
    }
    // Through modelgate: default upstream and path prefix.
    for (form, prefix) in [("default", ""), ("prefix", "registry.test/")] {
        for (name, all, fmt) in [("small", false, "dir"), ("multi", true, "oci")] {
            let dest = tmp.path().join(format!("{form}-{name}"));
            let mut c = skopeo_cmd(&skopeo, &policy);
            c.arg("copy").arg("--src-tls-verify=false");
            if all {
                c.arg("--all");
            }
            c.arg(format!("docker://{gate}/{prefix}models/{name}:v1"))
                .arg(format!("{fmt}:{}", dest.display()));
            let (ok, out) = run(&mut c).await;
            assert!(ok, "skopeo copy through modelgate ({form}) failed: {out}");
            let n = same_tree(&tmp.path().join(format!("direct-{name}")), &dest)
                .unwrap_or_else(|e| panic!("{form} {name}: {e}"));
            assert!(n >= 3, "{form} {name}: only {n} files compared");
        }
    }
    // The second form found everything in the cache: one upstream GET per blob.
    let blob_gets = g.metric("modelgate_cache_requests_total{kind=\"blob\",result=\"miss\"}");
    let blob_hits = g.metric("modelgate_cache_requests_total{kind=\"blob\",result=\"hit\"}");
    assert!(
        blob_hits >= blob_gets,
        "hits {blob_hits} misses {blob_gets}"
    );
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_pulls_through_modelgate_as_server_with_ns() {
    let (Some(registry), Some(containerd), Some(ctr)) = (
        tool("docker-registry", &["/usr/bin/docker-registry"]),
        tool("containerd", &["/usr/bin/containerd"]),
        tool("ctr", &["/usr/bin/ctr"]),
    ) else {
        return;
    };
    if !is_root() {
        let msg = "interop: containerd needs root";
        assert!(!required(), "{msg}");
        eprintln!("SKIP {msg}");
        return;
    }
    let reg = Registry::start(&registry).await;
    let (small, _) = seed(&reg).await;
    // No default upstream: only ?ns= routing can find "registry.test".
    let g = Gate::start(&upstream_toml("registry.test", &reg.url(), false, ""), "").await;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let sock = d.join("containerd.sock");
    std::fs::create_dir_all(d.join("hosts/registry.test")).unwrap();
    std::fs::write(
        d.join("config.toml"),
        format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{1}\"\n[ttrpc]\n  address = \"{1}.ttrpc\"\n[debug]\n  address = \"{0}/debug.sock\"\n",
            d.display(),
            sock.display()
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("hosts/registry.test/hosts.toml"),
        format!("server = \"http://{0}\"\n\n[host.\"http://{0}\"]\n  capabilities = [\"pull\", \"resolve\"]\n", g.addr),
    )
    .unwrap();
    let mut daemon = spawn_logged(
        Command::new(&containerd)
            .arg("--config")
            .arg(d.join("config.toml")),
        &d.join("containerd.log"),
    )
    .expect("start containerd");
    let mut up = false;
    for _ in 0..100 {
        let (ok, _) = run(tokio::process::Command::new(&ctr)
            .arg("--address")
            .arg(&sock)
            .arg("version"))
        .await;
        if ok {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let result = if up {
        run(tokio::process::Command::new(&ctr)
            .arg("--address")
            .arg(&sock)
            .args([
                "-n",
                "modelgate-test",
                "images",
                "pull",
                "--plain-http",
                "--hosts-dir",
            ])
            .arg(d.join("hosts"))
            .arg("registry.test/models/small:v1"))
        .await
    } else {
        (
            false,
            std::fs::read_to_string(d.join("containerd.log")).unwrap_or_default(),
        )
    };
    let listing = run(tokio::process::Command::new(&ctr)
        .arg("--address")
        .arg(&sock)
        .args(["-n", "modelgate-test", "images", "ls"]))
    .await
    .1;
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert!(result.0, "ctr pull through modelgate failed: {}", result.1);
    assert!(listing.contains(&small.to_string()), "{listing}");
    assert!(
        g.metric(
            "modelgate_http_requests_total{method=\"HEAD\",endpoint=\"manifests\",code=\"200\"}"
        ) >= 1.0
    );
    assert!(g.metric("modelgate_cache_requests_total{kind=\"blob\",result=\"miss\"}") >= 4.0);
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_pulls_through_a_location_remap() {
    let (Some(registry), Some(podman)) = (
        tool("docker-registry", &["/usr/bin/docker-registry"]),
        tool("podman", &["/usr/bin/podman"]),
    ) else {
        return;
    };
    if !is_root() {
        let msg = "interop: podman with --root needs root here";
        assert!(!required(), "{msg}");
        eprintln!("SKIP {msg}");
        return;
    }
    let reg = Registry::start(&registry).await;
    seed(&reg).await;
    let g = Gate::start(&upstream_toml("registry.test", &reg.url(), false, ""), "").await;
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("registries.conf");
    std::fs::write(
        &conf,
        format!("unqualified-search-registries = []\nshort-name-mode = \"disabled\"\n\n[[registry]]\nprefix = \"registry.test\"\nlocation = \"{}/registry.test\"\ninsecure = true\n", g.addr),
    )
    .unwrap();
    run_ok(
        tokio::process::Command::new(&podman)
            .env("CONTAINERS_REGISTRIES_CONF", &conf)
            .arg("--root")
            .arg(tmp.path().join("root"))
            .arg("--runroot")
            .arg(tmp.path().join("run"))
            .args([
                "--storage-driver",
                "vfs",
                "pull",
                "registry.test/models/small:v1",
            ]),
        "podman pull through modelgate failed",
    )
    .await;
    assert!(g.metric("modelgate_cache_requests_total{kind=\"blob\",result=\"miss\"}") >= 4.0);
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_gets_signed_labeled_models_and_is_refused_the_rest() {
    let Some((registry, skopeo)) = registry_and_skopeo() else {
        return;
    };
    let reg = Registry::start(&registry).await;
    let base = reg.url();
    let layer = tar_layer("weights.bin", &data(200_000, 7));
    let mut unlabeled = model_labels();
    unlabeled.as_object_mut().unwrap().remove("dataset.id");
    let mut badly = model_labels();
    badly["accuracy.test"] = "0.5".into();
    push_image(
        &base,
        "models/signed",
        Some("v1.0.0"),
        std::slice::from_ref(&layer),
        &model_labels(),
        "amd64",
    )
    .await;
    push_image(
        &base,
        "models/unsigned",
        Some("v1.0.0"),
        std::slice::from_ref(&layer),
        &model_labels(),
        "amd64",
    )
    .await;
    push_image(
        &base,
        "models/unlabeled",
        Some("v1.0.0"),
        std::slice::from_ref(&layer),
        &unlabeled,
        "amd64",
    )
    .await;
    push_image(
        &base,
        "models/badlabel",
        Some("v1.0.0"),
        std::slice::from_ref(&layer),
        &badly,
        "amd64",
    )
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("release");
    output_ok(
        Command::new(bin())
            .args(["keygen", "--algorithm", "ecdsa-p256", "--out"])
            .arg(&prefix),
    );
    let other = tmp.path().join("other");
    assert!(Command::new(bin())
        .args(["keygen", "--out"])
        .arg(&other)
        .output()
        .unwrap()
        .status
        .success());
    // Sign with modelgate sign, directly at the registry: legacy for two, bundle for one.
    for (repo, key, format) in [
        ("signed", &prefix, "legacy"),
        ("unlabeled", &prefix, "bundle"),
        ("badlabel", &prefix, "legacy"),
        ("unsigned", &other, "legacy"),
    ] {
        let out = Command::new(bin())
            .args(["sign", "--plain-http", "--format", format, "--key"])
            .arg(key.with_extension("key"))
            .arg(format!("{}/models/{repo}:v1.0.0", reg.addr))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sign {repo}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let policy = format!(
        "default = \"allow\"\n[keys]\nrelease = \"{}\"\n[[rules]]\nname = \"models\"\nrepositories = [\"registry.test/models/**\"]\n[rules.signatures]\nkeys = [\"release\"]\n[rules.labels]\n\"model.version\" = {{ semver = true }}\n\"training.timestamp\" = {{ rfc3339 = true }}\n\"dataset.id\" = {{ regex = '^ds-[0-9]{{8}}$' }}\n\"accuracy.test\" = {{ min = 0.90 }}\n[rules.tags]\npattern = '^v[0-9]+\\.[0-9]+\\.[0-9]+$'\nimmutable = true\n",
        prefix.with_extension("pub").display()
    );
    std::fs::write(tmp.path().join("policy.toml"), &policy).unwrap();
    let g = Gate::start_in(
        tmp.path(),
        &upstream_toml("registry.test", &reg.url(), true, ""),
        "",
        None,
    )
    .await;
    let pol = tmp.path().join("skopeo-policy.json");
    std::fs::write(&pol, r#"{"default":[{"type":"insecureAcceptAnything"}]}"#).unwrap();
    let pull = |repo: &str| {
        let mut c = skopeo_cmd(&skopeo, &pol);
        c.arg("copy")
            .arg("--src-tls-verify=false")
            .arg(format!("docker://{}/models/{repo}:v1.0.0", g.addr))
            .arg(format!(
                "dir:{}",
                tmp.path().join(format!("out-{repo}")).display()
            ));
        c
    };
    run_ok(&mut pull("signed"), "signed, labeled image refused").await;
    for (repo, needle) in [
        ("unsigned", "no valid signature by [release]"),
        ("unlabeled", "label dataset.id missing"),
        ("badlabel", "label accuracy.test = 0.5 below min 0.9"),
    ] {
        let (ok, out) = run(&mut pull(repo)).await;
        assert!(!ok, "{repo} was admitted");
        assert!(
            out.contains("denied by rule") && out.contains("models") && out.contains(needle),
            "{repo}: skopeo said: {out}"
        );
    }
    // `modelgate check` explains each the same way, with the same exit codes.
    let cfg = check_config(tmp.path(), &reg.url());
    for (repo, code, needle) in [
        ("signed", 0, "ADMITTED"),
        ("unsigned", 1, "no valid signature by [release]"),
        ("unlabeled", 1, "label dataset.id missing"),
    ] {
        let out = Command::new(bin())
            .args(["check", "--config"])
            .arg(&cfg)
            .arg(format!("registry.test/models/{repo}:v1.0.0"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "check {repo}: {text}");
        assert!(text.contains(needle), "check {repo}: {text}");
    }
    let out = Command::new(bin())
        .args(["check", "--json", "--config"])
        .arg(&cfg)
        .arg("registry.test/models/unsigned:v1.0.0")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["decision"], "deny");
    assert_eq!(v["rule"], "models");
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&cfg)
        .arg("elsewhere.example/models/x:v1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    g.stop().await;
}

/// The tags the registry itself lists for `repo` (not through modelgate).
/// The real registry lists `tag` in `repo`.
async fn assert_upstream_tag(reg: &Registry, repo: &str, tag: &str) {
    let tags = upstream_tags(reg, repo).await;
    assert!(
        tags.iter().any(|t| t == tag),
        "{repo}: {tag} not in {tags:?}"
    );
}

async fn upstream_tags(reg: &Registry, repo: &str) -> Vec<String> {
    let r = get(&format!("{}/v2/{repo}/tags/list", reg.url())).await;
    if r.status != 200 {
        return vec![];
    }
    r.json()["tags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// An OCI layout made from an image in the registry; returns (dir, manifest digest).
async fn layout_of(
    skopeo: &Path,
    pol: &Path,
    reg: &Registry,
    repo: &str,
    dir: &Path,
) -> (PathBuf, Digest) {
    let mut c = skopeo_cmd(skopeo, pol);
    c.args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{}/{repo}:v1", reg.addr))
        .arg(format!("oci:{}:v1", dir.display()));
    let (ok, out) = run(&mut c).await;
    assert!(ok, "layout of {repo}: {out}");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    (
        dir.to_path_buf(),
        index["manifests"][0]["digest"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap(),
    )
}

/// A key pair made by `modelgate keygen` as `<dir>/release.{key,pub}`.
fn release_key(dir: &Path) -> PathBuf {
    let key = dir.join("release");
    assert!(Command::new(bin())
        .args(["keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap()
        .status
        .success());
    key
}

/// A policy whose one rule governs `repos` with signatures by the `key`
/// pair's public half, semantic-version immutable tags and `labels`.
fn release_policy(key: &Path, repos: &str, labels: &str) -> String {
    format!(
        "default = \"allow\"\n[keys]\nrelease = \"{}\"\n[[rules]]\nname = \"models\"\nrepositories = [\"{repos}\"]\n[rules.signatures]\nkeys = [\"release\"]\n{labels}[rules.tags]\npattern = '^v[0-9]+\\.[0-9]+\\.[0-9]+$'\nimmutable = true\n",
        key.with_extension("pub").display()
    )
}

/// A modelgate in front of `reg` (as `registry.test`, the default) with
/// `policy` in `dir`.
async fn gate_over(reg: &Registry, dir: &Path, policy: &str) -> Gate {
    std::fs::write(dir.join("policy.toml"), policy).unwrap();
    Gate::start_in(
        dir,
        &upstream_toml("registry.test", &reg.url(), true, ""),
        "",
        None,
    )
    .await
}

/// A containers-policy.json that accepts anything (signatures are modelgate's job here).
fn accept_anything(dir: &Path) -> PathBuf {
    let pol = dir.join("skopeo-policy.json");
    std::fs::write(&pol, r#"{"default":[{"type":"insecureAcceptAnything"}]}"#).unwrap();
    pol
}

/// `skopeo copy --preserve-digests` over plain HTTP, `--all` when asked.
fn skopeo_copy(
    skopeo: &Path,
    pol: &Path,
    all: bool,
    src: String,
    dst: String,
) -> tokio::process::Command {
    let mut c = skopeo_cmd(skopeo, pol);
    c.args([
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
    ]);
    if all {
        c.arg("--all");
    }
    c.arg(src).arg(dst);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_flows_through_the_gate_with_skopeo() {
    let Some((registry, skopeo)) = registry_and_skopeo() else {
        return;
    };
    let reg = Registry::start(&registry).await;
    let base = reg.url();
    let mut unlabeled = model_labels();
    unlabeled.as_object_mut().unwrap().remove("model.version");
    // Source images live in an ungoverned scratch repository; each release differs.
    for (i, repo) in ["scratch/a", "scratch/b", "scratch/c"].iter().enumerate() {
        let layer = tar_layer("weights.bin", &data(300_000, i as u8 + 10));
        push_image(&base, repo, Some("v1"), &[layer], &model_labels(), "amd64").await;
    }
    push_image(
        &base,
        "scratch/unlabeled",
        Some("v1"),
        &[tar_layer("w.bin", &data(1000, 99))],
        &unlabeled,
        "amd64",
    )
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let key = release_key(tmp.path());
    let policy = release_policy(
        &key,
        "registry.test/models/**",
        "[rules.labels]\n\"model.version\" = { semver = true }\n\"dataset.id\" = { regex = '^ds-[0-9]{8}$' }\n",
    );
    let g = gate_over(&reg, tmp.path(), &policy).await;
    let gate = g.addr.to_string();
    let pol = accept_anything(tmp.path());
    let copy = |src: String, dst: String| skopeo_copy(&skopeo, &pol, false, src, dst);
    let sign = |args: &[String]| {
        let out = Command::new(bin())
            .args(["sign", "--plain-http", "--key"])
            .arg(key.with_extension("key"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sign {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };

    // (a) push by digest -> sign the digest (through modelgate) -> tag it.
    let (la, da) = layout_of(&skopeo, &pol, &reg, "scratch/a", &tmp.path().join("la")).await;
    run_ok(
        &mut copy(
            format!("oci:{}:v1", la.display()),
            format!("docker://{gate}/models/rel@{da}"),
        ),
        "staging push by digest",
    )
    .await;
    assert!(
        upstream_tags(&reg, "models/rel").await.is_empty(),
        "staging sets no tag"
    );
    // Tagging the still unsigned digest is refused.
    let (ok, out) = run(&mut copy(
        format!("oci:{}:v1", la.display()),
        format!("docker://{gate}/models/rel:v1.2.0"),
    ))
    .await;
    assert!(
        !ok && out.contains("no valid signature by [release]"),
        "unsigned tag push: {out}"
    );
    assert!(!upstream_tags(&reg, "models/rel")
        .await
        .contains(&"v1.2.0".to_string()));
    sign(&[format!("{gate}/models/rel@{da}")]);
    run_ok(
        &mut copy(
            format!("docker://{gate}/models/rel@{da}"),
            format!("docker://{gate}/models/rel:v1.2.0"),
        ),
        "tagging the signed digest",
    )
    .await;
    assert_upstream_tag(&reg, "models/rel", "v1.2.0").await;

    // (b) sign first (the digest from a local OCI layout) -> push the tag.
    let (lb, db) = layout_of(&skopeo, &pol, &reg, "scratch/b", &tmp.path().join("lb")).await;
    sign(&[
        "--digest".to_string(),
        db.to_string(),
        format!("{gate}/models/relb"),
    ]);
    run_ok(
        &mut copy(
            format!("oci:{}:v1", lb.display()),
            format!("docker://{gate}/models/relb:v2.0.0"),
        ),
        "flow (b)",
    )
    .await;
    assert_upstream_tag(&reg, "models/relb", "v2.0.0").await;
    // And it pulls back through the gate.
    run_ok(
        &mut copy(
            format!("docker://{gate}/models/relb:v2.0.0"),
            format!("dir:{}", tmp.path().join("pulled-b").display()),
        ),
        "pull of the release",
    )
    .await;

    // Unlabeled: refused with a readable message, no tag upstream.
    let (lu, du) = layout_of(
        &skopeo,
        &pol,
        &reg,
        "scratch/unlabeled",
        &tmp.path().join("lu"),
    )
    .await;
    sign(&[
        "--digest".to_string(),
        du.to_string(),
        format!("{gate}/models/unl"),
    ]);
    let (ok, out) = run(&mut copy(
        format!("oci:{}:v1", lu.display()),
        format!("docker://{gate}/models/unl:v1.0.0"),
    ))
    .await;
    assert!(
        !ok && out.contains("label model.version missing"),
        "unlabeled push: {out}"
    );
    assert!(!upstream_tags(&reg, "models/unl")
        .await
        .contains(&"v1.0.0".to_string()));

    // Moving an immutable tag: another signed image to v1.2.0 is refused.
    let (lc, dc) = layout_of(&skopeo, &pol, &reg, "scratch/c", &tmp.path().join("lc")).await;
    sign(&[
        "--digest".to_string(),
        dc.to_string(),
        format!("{gate}/models/rel"),
    ]);
    let (ok, out) = run(&mut copy(
        format!("oci:{}:v1", lc.display()),
        format!("docker://{gate}/models/rel:v1.2.0"),
    ))
    .await;
    assert!(
        !ok && out.contains("moved upstream"),
        "moving v1.2.0: {out}"
    );
    let now = send(
        http::Method::HEAD,
        &format!("{}/v2/models/rel/manifests/v1.2.0", reg.url()),
        &[("accept", "application/vnd.oci.image.manifest.v1+json")],
    )
    .await;
    assert_eq!(
        now.header("docker-content-digest"),
        Some(da.to_string().as_str()),
        "v1.2.0 still points at the first release"
    );
    let pushes = g
        .audit()
        .into_iter()
        .filter(|a| a["action"] == "push")
        .count();
    assert!(pushes >= 6, "push decisions audited: {pushes}");
    g.stop().await;
}

/// Issue #7 items 9, 10 and 13 with skopeo and the real registry: promotion
/// between repositories, flow (a) with a signature pushed straight to the
/// upstream, and an index pushed through the gate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_workflows_promotion_upstream_signature_and_index_push() {
    let Some((registry, skopeo)) = registry_and_skopeo() else {
        return;
    };
    let reg = Registry::start(&registry).await;
    let (_, multi) = seed(&reg).await;
    push_image(
        &reg.url(),
        "staging/m",
        Some("v1"),
        &[tar_layer("w.bin", &data(200_000, 7))],
        &model_labels(),
        "amd64",
    )
    .await;
    push_image(
        &reg.url(),
        "scratch/s",
        Some("v1"),
        &[tar_layer("w.bin", &data(200_000, 8))],
        &model_labels(),
        "amd64",
    )
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let key = release_key(tmp.path());
    let policy = release_policy(&key, "registry.test/signed/**", "");
    let g = gate_over(&reg, tmp.path(), &policy).await;
    let gate = g.addr.to_string();
    let pol = accept_anything(tmp.path());
    let copy = |all: bool, src: String, dst: String| skopeo_copy(&skopeo, &pol, all, src, dst);
    // Item 9: promotion between repositories through the gate. The blobs
    // are in modelgate's cache after the read, but prod/m lacks them.
    run_ok(
        &mut copy(
            false,
            format!("docker://{gate}/staging/m:v1"),
            format!("docker://{gate}/prod/m:v1"),
        ),
        "promotion staging -> prod",
    )
    .await;
    assert_upstream_tag(&reg, "prod/m", "v1").await;
    // Item 13: an index whose children modelgate never saw.
    run_ok(
        &mut copy(
            true,
            format!("docker://{}/models/multi:v1", reg.addr),
            format!("docker://{gate}/mirror/multi:v1"),
        ),
        "index push through the gate",
    )
    .await;
    let r = send(
        http::Method::HEAD,
        &format!("{}/v2/mirror/multi/manifests/v1", reg.url()),
        &[("accept", "application/vnd.oci.image.index.v1+json")],
    )
    .await;
    assert_eq!(
        r.header("docker-content-digest"),
        Some(multi.to_string().as_str())
    );
    // Item 10: flow (a), with the signature pushed straight to the upstream.
    let (ls, ds) = layout_of(&skopeo, &pol, &reg, "scratch/s", &tmp.path().join("ls")).await;
    run_ok(
        &mut copy(
            false,
            format!("oci:{}:v1", ls.display()),
            format!("docker://{gate}/signed/rel@{ds}"),
        ),
        "staging push by digest",
    )
    .await;
    // A client looks at the unsigned digest through the gate first.
    let r = get(&g.url(&format!("/v2/signed/rel/manifests/{ds}"))).await;
    assert_eq!(r.status, 403);
    output_ok(
        Command::new(bin())
            .args(["sign", "--plain-http", "--key"])
            .arg(key.with_extension("key"))
            .arg(format!("{}/signed/rel@{ds}", reg.addr)),
    );
    // Past the HEAD-then-GET de-duplication window (1 s), not tag_ttl (60 s).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    run_ok(
        &mut copy(
            false,
            format!("docker://{gate}/signed/rel@{ds}"),
            format!("docker://{gate}/signed/rel:v1.0.0"),
        ),
        "tagging a digest signed at the upstream",
    )
    .await;
    assert_upstream_tag(&reg, "signed/rel", "v1.0.0").await;
    g.stop().await;
}

/// Notation signatures pushed to the real registry the way Notation does
/// (referrer + `sha256-<hex>` fallback index, as distribution has no
/// referrers API): skopeo pulls and pushes a tag through the gate when the
/// leaf is one the policy names, and is refused (with the reason) when it
/// is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notation_signed_models_pass_the_gate_with_skopeo() {
    let Some((registry, skopeo)) = registry_and_skopeo() else {
        return;
    };
    const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
    const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    let reg = Registry::start(&registry).await;
    let base = reg.url();
    let repo = "models/notary";
    let layer = tar_layer("weights.bin", &data(100_000, 9));
    let (d, bytes) = push_image(
        &base,
        repo,
        Some("v1.0.0"),
        &[layer],
        &model_labels(),
        "amd64",
    )
    .await;
    let signer = crate::support::notary::NotarySigner::new("acme");
    let sig = signer.sign(&d.to_string(), bytes.len());
    push_blob(&base, repo, &sig.envelope).await;
    push_blob(&base, repo, &sig.config).await;
    let sd = Digest::of(&sig.manifest);
    push_manifest(&base, repo, &sd.to_string(), &sig.manifest, OCI).await;
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": [
        {"mediaType": OCI, "digest": sd.to_string(), "size": sig.manifest.len(),
         "artifactType": "application/vnd.cncf.notary.signature"}]});
    let index = serde_json::to_vec(&index).unwrap();
    push_manifest(&base, repo, &d.tag_schema(), &index, INDEX).await;

    for (org, admitted) in [("acme", true), ("other", false)] {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("root.pem"), &signer.root_pem).unwrap();
        let policy = format!(
            "default = \"allow\"\n[trust.acme]\nnotation_certs = [\"root.pem\"]\n[[rules]]\nname = \"models\"\nrepositories = [\"registry.test/models/**\"]\n[rules.signatures]\n[[rules.signatures.notation]]\ntrust = \"acme\"\nidentities = [\"x509.subject: C=US, ST=WA, O={org}\"]\n"
        );
        let g = gate_over(&reg, tmp.path(), &policy).await;
        let pol = accept_anything(tmp.path());
        let out = tmp.path().join("out");
        let mut pull = skopeo_copy(
            &skopeo,
            &pol,
            false,
            format!("docker://{}/{repo}:v1.0.0", g.addr),
            format!("dir:{}", out.display()),
        );
        let mut push = skopeo_copy(
            &skopeo,
            &pol,
            false,
            format!("docker://{}/{repo}:v1.0.0", reg.addr),
            format!("docker://{}/{repo}:release-{org}", g.addr),
        );
        if admitted {
            run_ok(&mut pull, "pull of a Notation-signed model").await;
            run_ok(&mut push, "push of a Notation-signed tag").await;
            assert_upstream_tag(&reg, repo, "release-acme").await;
        } else {
            for (what, cmd) in [("pull", &mut pull), ("push", &mut push)] {
                let (ok, text) = run(cmd).await;
                assert!(!ok, "{what} admitted a signature by O=acme for O=other");
                assert!(
                    text.contains("matches none of the identities"),
                    "{what}: skopeo said: {text}"
                );
            }
            let tags = upstream_tags(&reg, repo).await;
            assert!(!tags.iter().any(|t| t == "release-other"), "{tags:?}");
        }
        g.stop().await;
    }
}

/// Keyless cosign signatures from the fake Sigstore instance of
/// tests/fixtures/keyless (made by another implementation), pushed to the
/// real registry where cosign puts them (a bundle referrer behind the
/// `sha256-<hex>` index; a legacy `.sig` tag): skopeo pulls and pushes a
/// tag through the gate when the policy names the workflow identity, and
/// is refused (with the reason) when it names another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_signed_models_pass_the_gate_with_skopeo() {
    let Some((registry, skopeo)) = registry_and_skopeo() else {
        return;
    };
    const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
    const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keyless");
    let read = |rel: &str| Bytes::from(std::fs::read(fx.join(rel)).unwrap());
    let reg = Registry::start(&registry).await;
    let base = reg.url();
    for case in ["bundle-valid-uri", "legacy-valid-uri"] {
        let repo = format!("models/{case}");
        for blob in ["image/config.json", "image/layer.bin"] {
            push_blob(&base, &repo, &read(blob)).await;
        }
        let subject = read(&format!("{case}/subject.json"));
        let d = push_manifest(&base, &repo, "v1.0.0", &subject, OCI).await;
        for b in std::fs::read_dir(fx.join(case).join("signature/blobs")).unwrap() {
            let b = Bytes::from(std::fs::read(b.unwrap().path()).unwrap());
            push_blob(&base, &repo, &b).await;
        }
        let sig = read(&format!("{case}/signature/manifest.json"));
        if case.starts_with("legacy-") {
            let tag = format!("{}.sig", d.tag_schema());
            push_manifest(&base, &repo, &tag, &sig, OCI).await;
        } else {
            let sd = Digest::of(&sig).to_string();
            push_manifest(&base, &repo, &sd, &sig, OCI).await;
            let index = read(&format!("{case}/signature/referrers.json"));
            push_manifest(&base, &repo, &d.tag_schema(), &index, INDEX).await;
        }
    }
    let root = fx.join("bundle-valid-uri/trusted_root.json");
    let workflow = r"https://github\.com/acme/models/\.github/workflows/release\.yml@refs/tags/v.*";
    for (subject_regex, admitted) in [(workflow, true), (r"https://github\.com/other/.*", false)] {
        let tmp = tempfile::tempdir().unwrap();
        let policy = format!(
            "default = \"allow\"\n[trust.fake]\ntrusted_root = \"{}\"\n[[rules]]\nname = \"models\"\nrepositories = [\"registry.test/models/**\"]\n[rules.signatures]\n[[rules.signatures.keyless]]\ntrust = \"fake\"\nissuer = \"https://token.actions.githubusercontent.com\"\nsubject_regex = '{subject_regex}'\n",
            root.display()
        );
        let g = gate_over(&reg, tmp.path(), &policy).await;
        let pol = accept_anything(tmp.path());
        for case in ["bundle-valid-uri", "legacy-valid-uri"] {
            let repo = format!("models/{case}");
            let mut pull = skopeo_copy(
                &skopeo,
                &pol,
                false,
                format!("docker://{}/{repo}:v1.0.0", g.addr),
                format!("dir:{}", tmp.path().join(case).display()),
            );
            let mut push = skopeo_copy(
                &skopeo,
                &pol,
                false,
                format!("docker://{}/{repo}:v1.0.0", reg.addr),
                format!("docker://{}/{repo}:release-{admitted}", g.addr),
            );
            if admitted {
                run_ok(&mut pull, &format!("{case}: pull")).await;
                run_ok(&mut push, &format!("{case}: push")).await;
                assert_upstream_tag(&reg, &repo, "release-true").await;
            } else {
                for (what, cmd) in [("pull", &mut pull), ("push", &mut push)] {
                    let (ok, text) = run(cmd).await;
                    assert!(!ok, "{case}: {what} admitted another identity");
                    assert!(
                        text.contains("does not match subject_regex"),
                        "{case} {what}: skopeo said: {text}"
                    );
                }
                let tags = upstream_tags(&reg, &repo).await;
                assert!(!tags.iter().any(|t| t == "release-false"), "{tags:?}");
            }
        }
        g.stop().await;
    }
}

/// Every model kind of tests/fixtures/models goes through the gate with
/// skopeo and the real registry: pushed (admitted kinds reach the upstream
/// with their tag; refused ones do not, and skopeo prints the reason) and
/// pulled (admitted ones byte-identical to the layout; refused ones, pushed
/// straight to the registry, refused with the reason).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_moves_every_model_kind_through_the_gate() {
    let Some((registry, skopeo)) = registry_and_skopeo() else {
        return;
    };
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
    let reg = Registry::start(&registry).await;
    let tmp = tempfile::tempdir().unwrap();
    let policy = crate::models::MODEL_POLICY.replace("local/models/**", "registry.test/models/**");
    let g = gate_over(&reg, tmp.path(), &policy).await;
    let pol = accept_anything(tmp.path());
    for (fixture, refusal) in [
        ("docker-model-v01", None),
        ("modelpack-raw", None),
        ("modelpack-tar", None),
        ("kitops", None),
        ("oras-onnx", Some("is not admitted here")),
        (
            "modelpack-pickle-file",
            Some("path matches denied pattern *.bin"),
        ),
        ("kitops-nc-dataset", Some("CC-BY-NC-4.0")),
        ("type-confusion", Some("type confusion")),
        (
            "modelpack-code-layer",
            Some("matches denied pattern application/vnd.cncf.model.code.*"),
        ),
    ] {
        let layout = format!("oci:{}:v1", fixtures.join(fixture).display());
        let through_gate = format!("docker://{}/models/{fixture}:v1", g.addr);
        let mut push = skopeo_copy(&skopeo, &pol, false, layout.clone(), through_gate.clone());
        let (pushed, out) = run(&mut push).await;
        let repo = format!("models/{fixture}");
        match refusal {
            None => {
                assert!(pushed, "{fixture}: push refused: {out}");
                assert_upstream_tag(&reg, &repo, "v1").await;
                let out_dir = tmp.path().join(fixture);
                run_ok(
                    &mut skopeo_copy(
                        &skopeo,
                        &pol,
                        false,
                        through_gate,
                        format!("oci:{}:v1", out_dir.display()),
                    ),
                    &format!("{fixture}: pull"),
                )
                .await;
                let (m, _) = crate::models::manifest_of(fixture);
                let pulled = std::fs::read(out_dir.join("blobs/sha256").join(Digest::of(&m).hex()))
                    .unwrap_or_else(|e| {
                        panic!("{fixture}: the pulled layout lacks the manifest: {e}")
                    });
                assert_eq!(pulled, m.to_vec(), "{fixture}: manifest bytes changed");
            }
            Some(needle) => {
                assert!(!pushed, "{fixture}: push admitted");
                assert!(out.contains(needle), "{fixture}: skopeo said: {out}");
                assert!(
                    !upstream_tags(&reg, &repo).await.iter().any(|t| t == "v1"),
                    "{fixture}: the upstream got a refused tag"
                );
                let direct = format!("docker://{}/models/{fixture}:v1", reg.addr);
                run_ok(
                    &mut skopeo_copy(&skopeo, &pol, false, layout, direct),
                    &format!("{fixture}: push to the registry itself"),
                )
                .await;
                let mut pull = skopeo_copy(
                    &skopeo,
                    &pol,
                    false,
                    through_gate,
                    format!("oci:{}:v1", tmp.path().join(fixture).display()),
                );
                let (pulled, out) = run(&mut pull).await;
                assert!(!pulled, "{fixture}: pull admitted");
                assert!(out.contains(needle), "{fixture}: skopeo said: {out}");
            }
        }
    }
    g.stop().await;
}

/// A Python with the ORAS SDK (`oras` on PyPI): `MODELGATE_ORAS_PYTHON`
/// (set by .ci/run), else `python3` when it can import it.
fn oras_python() -> Option<PathBuf> {
    let python = std::env::var_os("MODELGATE_ORAS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"));
    let ok = Command::new(&python)
        .args(["-c", "import oras.client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(python);
    }
    let why = format!(
        "{} cannot import the ORAS Python SDK (pip install oras, or set MODELGATE_ORAS_PYTHON)",
        python.display()
    );
    assert!(!required(), "interop required but {why}");
    eprintln!("skipping: {why}");
    None
}

/// ORAS (its Python SDK, as `oras push/pull` write artifacts) through the
/// gate: an ONNX file pushed with a license annotation is admitted as the
/// artifact kind the rule lists and pulled back intact; a pickle is refused
/// before the upstream has its tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oras_pushes_and_pulls_artifacts_through_the_gate() {
    let Some((registry, _)) = registry_and_skopeo() else {
        return;
    };
    let Some(python) = oras_python() else {
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/oras-client.py");
    let reg = Registry::start(&registry).await;
    let tmp = tempfile::tempdir().unwrap();
    let policy = "default = \"deny\"\n[[rules]]\nname = \"onnx\"\nrepositories = [\"registry.test/models/**\"]\nkinds = [\"artifact:application/vnd.unknown.config.v1+json\"]\n[rules.model]\nlicenses = { each_one_of = [\"Apache-2.0\"] }\n[rules.layers]\ndeny_paths = [\"*.pkl\"]\n";
    let g = gate_over(&reg, tmp.path(), policy).await;
    let oras = |args: &[&str]| {
        let mut c = tokio::process::Command::new(&python);
        c.arg(&script).args(args);
        c
    };
    let weights = data(50_000, 3);
    for name in ["model.onnx", "model.pkl"] {
        std::fs::write(tmp.path().join(name), &weights).unwrap();
    }
    let onnx = tmp.path().join("model.onnx").display().to_string();
    let pkl = tmp.path().join("model.pkl").display().to_string();
    let target = |tag: &str| format!("{}/models/onnx:{tag}", g.addr);
    let license = "org.opencontainers.image.licenses=Apache-2.0";
    let ok = ["push", &target("v1"), &onnx, "--annotation", license];
    run_ok(&mut oras(&ok), "oras push of an ONNX model").await;
    assert_upstream_tag(&reg, "models/onnx", "v1").await;
    let (pushed, out) = run(&mut oras(&[
        "push",
        &target("v2"),
        &pkl,
        "--annotation",
        license,
    ]))
    .await;
    assert!(!pushed, "a pickle was admitted: {out}");
    assert!(
        out.contains("path matches denied pattern *.pkl"),
        "oras said: {out}"
    );
    assert!(!upstream_tags(&reg, "models/onnx")
        .await
        .iter()
        .any(|t| t == "v2"));
    let (pushed, out) = run(&mut oras(&["push", &target("v3"), &onnx])).await;
    assert!(
        !pushed && out.contains("licenses missing"),
        "oras said: {out}"
    );
    let outdir = tmp.path().join("pulled");
    run_ok(
        &mut oras(&["pull", &target("v1"), &outdir.display().to_string()]),
        "oras pull",
    )
    .await;
    assert_eq!(
        std::fs::read(outdir.join("model.onnx")).unwrap(),
        weights.to_vec()
    );
    g.stop().await;
}

/// The release lifecycle with the shipped example policy (its release key
/// replaced by one made here), skopeo and the real registry: v1.0.0 (0.92)
/// and v1.1.0 (0.93) are released, v1.2.0 (0.90) is refused by the
/// regression gate, prod is promoted to v1.1.0 and rolled back to v1.0.0
/// with reasons, moving prod to an unreleased digest is refused, and
/// `modelgate history` shows all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_lifecycle_with_the_shipped_policy_and_skopeo() {
    let Some((registry, skopeo)) = registry_and_skopeo() else {
        return;
    };
    let reg = Registry::start(&registry).await;
    let tmp = tempfile::tempdir().unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    output_ok(Command::new("cp").arg("-r").arg(&shipped).arg(tmp.path()));
    let conf = tmp.path().join("config");
    let key = release_key(tmp.path());
    std::fs::copy(key.with_extension("pub"), conf.join("keys/release.pub")).unwrap();
    let policy = std::fs::read_to_string(conf.join("policy.toml")).unwrap();
    let g = gate_over(&reg, &conf, &policy).await;
    let gate = g.addr.to_string();
    let pol = accept_anything(tmp.path());
    let copy = |src: String, dst: String| skopeo_copy(&skopeo, &pol, false, src, dst);
    let cli = |args: &[&str]| {
        let out = Command::new(bin()).args(args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let mut layouts = Vec::new();
    for (version, acc) in [("v1.0.0", "0.92"), ("v1.1.0", "0.93"), ("v1.2.0", "0.90")] {
        let labels = serde_json::json!({"model.version": version, "training.timestamp": "2026-01-05T10:00:00Z",
            "dataset.id": "ds-20260101", "accuracy.test": acc});
        let scratch = format!("scratch/{version}");
        let layer = tar_layer(
            "weights.bin",
            &data(50_000, acc.len() as u8 + version.len() as u8),
        );
        push_image(&reg.url(), &scratch, Some("v1"), &[layer], &labels, "amd64").await;
        let (layout, d) = layout_of(&skopeo, &pol, &reg, &scratch, &tmp.path().join(version)).await;
        let (ok, out) = cli(&[
            "sign",
            "--plain-http",
            "--key",
            &key.with_extension("key").display().to_string(),
            "--digest",
            &d.to_string(),
            &format!("{gate}/models/clf"),
        ]);
        assert!(ok, "sign {version}: {out}");
        let (pushed, out) = run(&mut copy(
            format!("oci:{}:v1", layout.display()),
            format!("docker://{gate}/models/clf:{version}"),
        ))
        .await;
        if version == "v1.2.0" {
            assert!(!pushed, "v1.2.0 regressed and was admitted");
            assert!(
                out.contains("accuracy.test 0.9 is 0.03 below v1.1.0 (0.93); max_drop 0.005"),
                "skopeo said: {out}"
            );
        } else {
            assert!(pushed, "{version}: {out}");
        }
        layouts.push((layout, d));
    }
    let tags = upstream_tags(&reg, "models/clf").await;
    assert!(
        tags.contains(&"v1.1.0".into()) && !tags.contains(&"v1.2.0".into()),
        "{tags:?}"
    );
    let prod = format!("{gate}/models/clf:prod");
    let (ok, out) = cli(&[
        "promote",
        &prod,
        "--to",
        "v1.1.0",
        "--reason",
        "v1.1.0 passed the canary on 5% of traffic",
        "--plain-http",
    ]);
    assert!(ok, "{out}");
    let (ok, out) = cli(&[
        "rollback",
        &prod,
        "--to",
        "v1.0.0",
        "--reason",
        "v1.1.0 doubles p99 latency on GPU nodes",
        "--plain-http",
    ]);
    assert!(ok, "{out}");
    // prod to the refused v1.2.0 digest: not a release.
    let (moved, out) = run(&mut copy(
        format!("oci:{}:v1", layouts[2].0.display()),
        format!("docker://{gate}/models/clf:prod"),
    ))
    .await;
    assert!(!moved, "prod moved to an unreleased digest");
    assert!(
        out.contains("channel prod may move only to a release"),
        "skopeo said: {out}"
    );
    // prod pulls what it names now: v1.0.0.
    run_ok(
        &mut copy(
            format!("docker://{gate}/models/clf:prod"),
            format!("oci:{}:prod", tmp.path().join("pulled").display()),
        ),
        "pull of prod",
    )
    .await;
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("pulled/index.json")).unwrap())
            .unwrap();
    assert_eq!(
        index["manifests"][0]["digest"],
        layouts[0].1.to_string().as_str()
    );
    // The history, with who, when and why.
    let cfg = conf.join("history.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"{gate}\"\n[cache]\ndir = \"{}\"\n{}",
            conf.join("cache").display(),
            upstream_toml("registry.test", &reg.url(), true, "")
        ),
    )
    .unwrap();
    let (ok, history) = cli(&[
        "history",
        "registry.test/models/clf",
        "--config",
        &cfg.display().to_string(),
    ]);
    assert!(ok, "{history}");
    eprintln!("{history}");
    assert_has_all(
        &history,
        &[
            "v1.0.0",
            "v1.1.0",
            "release",
            "channel → v1.1.0",
            "channel → v1.0.0",
            "v1.1.0 passed the canary on 5% of traffic",
            "v1.1.0 doubles p99 latency on GPU nodes",
            "accuracy.test=0.92",
            "accuracy.test=0.93",
            "prod → v1.0.0",
        ],
    );
    assert!(
        history.contains("refused") && history.contains("accuracy.test 0.9 is 0.03 below v1.1.0"),
        "the refused candidate is history too: {history}"
    );
    // And the release page shows the same story.
    let r = get(&format!("http://{}/ui/", g.admin)).await;
    let html = String::from_utf8_lossy(r.bytes()).to_string();
    assert_has_all(
        &html,
        &[
            "<tr class=\"channel\"><td><b>prod</b></td><td>v1.0.0",
            "v1.1.0 doubles p99 latency on GPU nodes",
            "<tr class=\"refused\"><td>v1.2.0 (refused)</td>",
            "<path class=\"refused\"",
            "channel prod may move only to a release",
        ],
    );
    // Releases name their signer (the shipped rule requires the release key).
    assert!(html.contains("<td>release</td>"), "{html}");
    g.stop().await;
}
