//! The state of the mock upstream registry: what it holds, what it was
//! asked, how it behaves ([`super::endpoints`] says what it answers,
//! [`super::server`] runs it).

use bytes::Bytes;
use http::Method;
use modelgate::oci::Digest;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Mutex;
use std::time::Duration;

/// How the mock misbehaves when serving one blob.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Serve these bytes (same length announced) instead of the real ones.
    WrongBytes(Bytes),
    /// Chunked body (no length) that ends cleanly after this many bytes.
    ShortChunked(usize),
    /// Announce the full length, send this many bytes, then break the connection.
    DropAfter(usize),
    /// Send in chunks of `chunk` bytes with `delay` between them.
    Drip { chunk: usize, delay: Duration },
    /// Send this many bytes, then nothing at all.
    StallAfter(usize),
}

#[derive(Clone, Debug, Default)]
pub enum Auth {
    #[default]
    None,
    Bearer,
    Basic {
        user: String,
        pass: String,
    },
}

#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub authorization: Option<String>,
    /// All Accept values, joined.
    pub accept: Option<String>,
    pub host: Option<String>,
}

/// State of a mock upstream registry.
#[derive(Default)]
pub struct MockState {
    pub blobs: Mutex<HashMap<String, Bytes>>,
    pub manifests: Mutex<HashMap<(String, String), (Bytes, String)>>,
    pub faults: Mutex<HashMap<String, Fault>>,
    pub seen: Mutex<Vec<Seen>>,
    pub auth: Mutex<Auth>,
    /// Redirect blob GETs to this base URL (`<base>/blob/<digest>`).
    pub redirect_blobs_to: Mutex<Option<String>>,
    /// Answer 503 to everything.
    pub down: AtomicBool,
    /// Serve `/v2/<name>/referrers/<digest>` from manifests with a subject.
    pub referrers_api: AtomicBool,
    /// Blob body bytes sent so far.
    pub sent: AtomicU64,
    /// Lie in Docker-Content-Digest for manifests.
    pub lie_manifest_digest: AtomicBool,
    /// Extra headers for tags/list answers.
    pub tags_link: Mutex<Option<String>>,
    pub tokens_issued: AtomicU64,
    pub base: Mutex<String>,
    /// Upload sessions in progress: id -> (repo, bytes so far).
    pub uploads: Mutex<HashMap<String, (String, Vec<u8>)>>,
    pub upload_seq: AtomicU64,
    /// Upload requests whose body broke off (the proxy aborted them).
    pub aborted_bodies: AtomicU64,
    /// Blobs are per repository (`repo_blobs`), as in a real registry.
    pub scoped_blobs: AtomicBool,
    pub repo_blobs: Mutex<std::collections::HashSet<(String, String)>>,
    /// Answer Accept the way distribution 2.8 does: a tag naming an index
    /// resolves to its linux/amd64 child for clients that do not accept
    /// indexes; OCI manifests are 404 for clients that do not accept them.
    pub distribution_accept: AtomicBool,
    /// Ignore `?tag=` on manifest PUT by digest (no `OCI-Tag` echoed).
    pub ignore_tag_query: AtomicBool,
    /// Requests with this Host header need no credentials (a storage host).
    pub auth_exempt_host: Mutex<Option<String>>,
    /// Upload Locations point at this base URL (another origin).
    pub upload_location_base: Mutex<Option<String>>,
    /// Upload Locations are relative to the request's URL (`u1`, not `/v2/...`).
    pub relative_upload_locations: AtomicBool,
    /// Serve `Range: bytes=N-` on blob GETs (206).
    pub ranges: AtomicBool,
    /// Blob GETs answered with a range.
    pub ranged_gets: AtomicU64,
}

impl MockState {
    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.method.as_str() == method && s.path.contains(path_contains))
            .count()
    }

    pub fn add_blob(&self, data: impl Into<Bytes>) -> Digest {
        let data = data.into();
        let d = Digest::of(&data);
        self.blobs.lock().unwrap().insert(d.to_string(), data);
        d
    }

    /// Stand-ins for the blobs a vector's manifest references but the
    /// vector does not ship (only their presence is checked, e.g. before a
    /// push is forwarded): listed under those digests, never read.
    pub fn add_referenced_stand_ins(&self, manifest: &[u8]) {
        let m: serde_json::Value = serde_json::from_slice(manifest).unwrap();
        let layers = m["layers"].as_array().cloned().unwrap_or_default();
        for d in std::iter::once(&m["config"]).chain(&layers) {
            if let Some(d) = d["digest"].as_str() {
                self.blobs
                    .lock()
                    .unwrap()
                    .entry(d.to_string())
                    .or_insert_with(|| Bytes::from_static(b"stand-in"));
            }
        }
    }

    /// A blob that only `repo` holds (with `scoped_blobs`).
    pub fn add_blob_in(&self, repo: &str, data: impl Into<Bytes>) -> Digest {
        let d = self.add_blob(data);
        self.repo_blobs
            .lock()
            .unwrap()
            .insert((repo.to_string(), d.to_string()));
        d
    }

    /// Sign `d` with `key` in cosign's legacy format, as the upstream's
    /// `sha256-<hex>.sig` tag of `repo` (made straight at the upstream).
    pub fn attach_legacy_signature(
        &self,
        repo: &str,
        key: &modelgate::trust::PrivateKey,
        d: &Digest,
    ) {
        let sig = modelgate::trust::sign::sign_legacy(key, &format!("local/{repo}"), d);
        let (config, manifest) = modelgate::trust::sign::legacy_manifest(None, &sig);
        self.add_blob(sig.payload.clone());
        self.add_blob(config);
        self.add_manifest(
            repo,
            Some(&format!("{}.sig", d.tag_schema())),
            manifest,
            "application/vnd.oci.image.manifest.v1+json",
        );
    }

    /// The tags `repo` has (sorted).
    pub fn tags(&self, repo: &str) -> Vec<String> {
        let mut tags: Vec<String> = self
            .manifests
            .lock()
            .unwrap()
            .keys()
            .filter(|(r, t)| r == repo && !t.starts_with("sha256:"))
            .map(|(_, t)| t.clone())
            .collect();
        tags.sort();
        tags
    }

    /// What the mock has been asked so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Serve `repo_from`'s manifest `reference` also as `repo_to:reference_to`.
    pub fn copy_manifest(
        &self,
        repo_from: &str,
        reference: &str,
        repo_to: &str,
        reference_to: &str,
    ) {
        let mut m = self.manifests.lock().unwrap();
        let v = m
            .get(&(repo_from.to_string(), reference.to_string()))
            .cloned()
            .expect("manifest to copy");
        m.insert((repo_to.to_string(), reference_to.to_string()), v);
    }

    /// A blob the mock serves with `fault`.
    pub fn add_faulty_blob(&self, data: impl Into<Bytes>, fault: Fault) -> Digest {
        let d = self.add_blob(data);
        self.faults.lock().unwrap().insert(d.to_string(), fault);
        d
    }

    pub fn add_manifest(
        &self,
        repo: &str,
        tag: Option<&str>,
        bytes: impl Into<Bytes>,
        media_type: &str,
    ) -> Digest {
        let bytes = bytes.into();
        let d = Digest::of(&bytes);
        let mut m = self.manifests.lock().unwrap();
        m.insert(
            (repo.into(), d.to_string()),
            (bytes.clone(), media_type.into()),
        );
        if let Some(t) = tag {
            m.insert((repo.into(), t.into()), (bytes, media_type.into()));
        }
        d
    }

    /// Push an OCI image made of `layers`; returns (manifest digest, manifest bytes, layer digests).
    pub fn add_image(
        &self,
        repo: &str,
        tag: &str,
        layers: &[Bytes],
    ) -> (Digest, Bytes, Vec<Digest>) {
        let config = Bytes::from(format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Labels":{{"model.version":"v1.0.0"}}}},"rootfs":{{"type":"layers","diff_ids":[]}},"tag":"{tag}"}}"#
        ));
        let cd = self.add_blob(config.clone());
        let mut ls = Vec::new();
        let mut descs = Vec::new();
        for l in layers {
            let d = self.add_blob(l.clone());
            descs.push(format!(
                r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{}}}"#,
                l.len()
            ));
            ls.push(d);
        }
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{}}},"layers":[{}]}}"#,
            config.len(),
            descs.join(",")
        );
        let md = self.add_manifest(
            repo,
            Some(tag),
            m.clone(),
            "application/vnd.oci.image.manifest.v1+json",
        );
        (md, Bytes::from(m), ls)
    }
}

/// Deterministic pseudo-random bytes.
pub fn data(len: usize, seed: u8) -> Bytes {
    let mut x: u32 = 0x9e3779b9 ^ seed as u32;
    Bytes::from(
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x & 0xff) as u8
            })
            .collect::<Vec<u8>>(),
    )
}
