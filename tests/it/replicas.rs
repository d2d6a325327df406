//! Several replicas, one gate (README "Several replicas"): three `modelgate
//! serve` processes sharing a SeaweedFS bucket and a Redis, in front of the
//! in-process upstream (which counts, drips, ranges and moves tags). Cold
//! blobs are fetched once fleet-wide; immutable tags mean the same on every
//! replica; a killed lease holder, a restarted bucket and a stopped Redis
//! lose nothing; a bucket that is down fails tag pulls closed.

use crate::push::image_manifest;
use crate::releases::RELEASE_POLICY;
use crate::support::fleet::*;
use crate::support::*;
use http::StatusCode;
use modelgate::config::{S3Config, Secret};
use modelgate::oci::Digest;
use modelgate::shared::Bucket;
use std::sync::atomic::Ordering;
use std::time::Duration;

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
const IMMUTABLE: &str = "default = \"allow\"\n[[rules]]\nname = \"releases\"\nrepositories = [\"local/m\"]\n[rules.tags]\nimmutable = true\n";

/// The bucket as the tests see it (the library's own client).
fn bucket(w: &Seaweed) -> Bucket {
    Bucket::new(&S3Config {
        endpoint: w.endpoint().parse().unwrap(),
        bucket: BUCKET.into(),
        region: "us-east-1".into(),
        path_style: true,
        access_key: Secret(S3_KEY.into()),
        secret_key: Secret(S3_SECRET.into()),
        ca_cert: None,
        prefix: String::new(),
    })
    .unwrap()
}

struct Fleet {
    _dir: tempfile::TempDir,
    up: Mock,
    weed: Seaweed,
    redis: Redis,
    replicas: Vec<Replica>,
}

impl Fleet {
    async fn start(n: usize, policy: Option<&str>) -> Option<Fleet> {
        let (weed_bin, redis_bin) = tools()?;
        let dir = tempfile::tempdir().unwrap();
        let up = Mock::start().await;
        up.state.ranges.store(true, Ordering::SeqCst);
        let weed = Seaweed::start(&weed_bin, &dir.path().join("weed")).await;
        let redis = Redis::start(&redis_bin, dir.path()).await;
        let mut replicas = Vec::new();
        for i in 0..n {
            replicas.push(
                Replica::start(
                    dir.path(),
                    i,
                    &weed.endpoint(),
                    Some(&redis.url()),
                    &up.url(),
                    policy,
                )
                .await,
            );
        }
        Some(Fleet {
            _dir: dir,
            up,
            weed,
            redis,
            replicas,
        })
    }

    async fn add_replica(&mut self, policy: Option<&str>) -> &Replica {
        let n = self.replicas.len();
        let r = Replica::start(
            self._dir.path(),
            n,
            &self.weed.endpoint(),
            Some(&self.redis.url()),
            &self.up.url(),
            policy,
        )
        .await;
        self.replicas.push(r);
        &self.replicas[n]
    }
}

/// The status of a GET of `path` from replica `r`.
async fn status(r: &Replica, path: &str) -> StatusCode {
    get(&r.url(path)).await.status
}

fn text(g: &Got) -> String {
    g.body
        .as_ref()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_else(|e| e.clone())
}

/// `n` concurrent GETs of `path`, spread round-robin over `replicas`.
async fn spread_gets(replicas: &[Replica], path: &str, n: usize) -> Vec<Got> {
    let urls: Vec<String> = (0..n)
        .map(|i| replicas[i % replicas.len()].url(path))
        .collect();
    let tasks: Vec<_> = urls
        .into_iter()
        .map(|u| tokio::spawn(async move { get(&u).await }))
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Wait until the bucket holds `key` (uploads finish after the clients).
async fn stored(b: &Bucket, key: &str) -> Option<u64> {
    for _ in 0..100 {
        if let Ok(Some(n)) = b.head(key).await {
            return Some(n);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

async fn object_digest(b: &Bucket, key: &str) -> Digest {
    let resp = b.get(key, 0).await.unwrap().expect("object present");
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    Digest::of(&body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twelve_cold_gets_over_three_replicas_fetch_once() {
    let Some(f) = Fleet::start(3, None).await else {
        return;
    };
    let blob = data(12 << 20, 7);
    let d = f.up.state.add_faulty_blob(
        blob.clone(),
        Fault::Drip {
            chunk: 256 * 1024,
            delay: Duration::from_millis(20),
        },
    );
    let got = spread_gets(&f.replicas, &format!("/v2/m/blobs/{d}"), 12).await;
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g.status, StatusCode::OK, "GET {i}: {}", text(g));
        assert_eq!(Digest::of(g.bytes()), d, "GET {i} got other bytes");
    }
    assert_eq!(
        f.up.state.count("GET", &format!("/blobs/{d}")),
        1,
        "one upstream GET fleet-wide"
    );
    let b = bucket(&f.weed);
    let key = format!("blobs/sha256/{}", d.hex());
    assert_eq!(stored(&b, &key).await, Some(blob.len() as u64));
    assert_eq!(object_digest(&b, &key).await, d);
    assert!(
        b.pending_uploads("blobs/").await.unwrap().is_empty(),
        "no upload left pending"
    );
    let mut sources = String::new();
    for r in &f.replicas {
        sources += &r.metrics().await;
    }
    assert!(
        sources.contains("modelgate_shared_blob_sources_total{source=\"upstream\"} 1"),
        "{sources}"
    );
    // The internal endpoint serves only the fleet.
    let internal = format!(
        "http://127.0.0.1:{}/internal/blobs/{d}",
        f.replicas[0].internal
    );
    assert_eq!(get(&internal).await.status, StatusCode::UNAUTHORIZED);
    let wrong = send(
        http::Method::GET,
        &internal,
        &[("authorization", "Bearer fleet-token-0123456789abcdeX")],
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let bearer = format!("Bearer {TOKEN}");
    let right = send(
        http::Method::GET,
        &internal,
        &[("authorization", &bearer), ("range", "bytes=5-")],
    )
    .await;
    assert_eq!(right.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(right.bytes()[..], blob[5..]);
    // A fourth replica started later reads it from the bucket.
    let mut f = f;
    let late = f.add_replica(None).await;
    let g = get(&late.url(&format!("/v2/m/blobs/{d}"))).await;
    assert_eq!(Digest::of(g.bytes()), d);
    assert!(late
        .metrics()
        .await
        .contains("modelgate_shared_blob_sources_total{source=\"bucket\"} 1"));
    assert_eq!(f.up.state.count("GET", &format!("/blobs/{d}")), 1);
}

fn manifest_of(config: &Digest, n: usize) -> String {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":{n}}},"layers":[]}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_immutable_tag_moved_upstream_is_refused_by_every_replica() {
    let Some(mut f) = Fleet::start(3, Some(IMMUTABLE)).await else {
        return;
    };
    let (c1, c2) = (data(100, 1), data(100, 2));
    let (d1, d2) = (f.up.state.add_blob(c1), f.up.state.add_blob(c2));
    let first =
        f.up.state
            .add_manifest("m", Some("v1"), manifest_of(&d1, 100), OCI);
    let g = get(&f.replicas[0].url("/v2/m/manifests/v1")).await;
    assert_eq!(g.status, StatusCode::OK, "{}", text(&g));
    // The tag moves upstream: replicas that never saw it refuse it too.
    let moved =
        f.up.state
            .add_manifest("m", Some("v1"), manifest_of(&d2, 100), OCI);
    for r in &f.replicas[1..] {
        let g = get(&r.url("/v2/m/manifests/v1")).await;
        assert_eq!(g.status, StatusCode::FORBIDDEN, "{}", text(&g));
        assert!(
            g.message()
                .contains(&format!("moved upstream from {first} to {moved}")),
            "{}",
            g.message()
        );
    }
    // So does one started after the move.
    let late = f.add_replica(Some(IMMUTABLE)).await;
    let g = get(&late.url("/v2/m/manifests/v1")).await;
    assert_eq!(g.status, StatusCode::FORBIDDEN, "{}", text(&g));
    // Racing first sightings of a new tag: one digest wins everywhere.
    f.up.state
        .add_manifest("m", Some("v2"), manifest_of(&d2, 100), OCI);
    let got = spread_gets(&f.replicas, "/v2/m/manifests/v2", 8).await;
    assert!(got.iter().all(|g| g.status == StatusCode::OK));
    f.up.state
        .add_manifest("m", Some("v2"), manifest_of(&d1, 100), OCI);
    tokio::time::sleep(Duration::from_millis(1100)).await; // past tag_ttl
    for r in &f.replicas {
        assert_eq!(status(r, "/v2/m/manifests/v2").await, StatusCode::FORBIDDEN);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_lease_holder_mid_download_loses_nothing() {
    let Some(mut f) = Fleet::start(3, None).await else {
        return;
    };
    let blob = data(16 << 20, 9);
    let d = f.up.state.add_faulty_blob(
        blob.clone(),
        Fault::Drip {
            chunk: 128 * 1024,
            delay: Duration::from_millis(15),
        },
    );
    let path = format!("/v2/m/blobs/{d}");
    // A client of replica 0 starts the download (replica 0 takes the lease).
    let leader = tokio::spawn({
        let u = f.replicas[0].url(&path);
        async move { get(&u).await }
    });
    while f.up.state.sent.load(Ordering::SeqCst) < 2 << 20 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A client of replica 1 follows over the internal endpoint.
    let follower = tokio::spawn({
        let u = f.replicas[1].url(&path);
        async move { get(&u).await }
    });
    // Kill the holder once its copy into the bucket is under way.
    let b = bucket(&f.weed);
    for _ in 0..200 {
        if !b.pending_uploads("blobs/").await.unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        f.up.state.sent.load(Ordering::SeqCst) < blob.len() as u64,
        "killed mid-download"
    );
    f.replicas[0].kill9();
    let l = leader.await.unwrap();
    assert!(
        l.status != StatusCode::OK || l.body.is_err(),
        "the killed holder's client cannot have had a whole body"
    );
    let g = follower.await.unwrap();
    assert_eq!(g.status, StatusCode::OK, "{}", text(&g));
    assert!(
        g.body.is_ok(),
        "the follower's body broke: {}\n{}",
        text(&g),
        f.replicas[1].log()
    );
    assert_eq!(
        Digest::of(g.bytes()),
        d,
        "the follower's client got the right bytes"
    );
    assert!(
        f.up.state.ranged_gets.load(Ordering::SeqCst) >= 1,
        "the new holder resumed with a Range request"
    );
    let b = bucket(&f.weed);
    let key = format!("blobs/sha256/{}", d.hex());
    assert_eq!(stored(&b, &key).await, Some(blob.len() as u64));
    assert_eq!(
        object_digest(&b, &key).await,
        d,
        "the bucket holds the whole, verified blob"
    );
    for o in b.list("blobs/").await.unwrap() {
        assert_eq!(
            object_digest(&b, &o.key).await.hex(),
            o.key.rsplit('/').next().unwrap(),
            "no partial object"
        );
    }
    // A later pull anywhere succeeds.
    let g = get(&f.replicas[2].url(&path)).await;
    assert_eq!(Digest::of(g.bytes()), d);
    // The dead holder's unfinished upload: `cache gc` aborts it (nobody
    // holds its lease); `cache verify` hashes what the bucket holds.
    let dead_uploads = b.pending_uploads("blobs/").await.unwrap();
    assert!(
        !dead_uploads.is_empty(),
        "the killed holder left its upload unfinished"
    );
    // (With replica 0's config: its process is gone, so its local cache is free.)
    let (code, out) = f.replicas[0].cli(&["cache", "gc"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!(
            "aborted {} unfinished uploads",
            dead_uploads.len()
        )),
        "{out}"
    );
    assert!(b.pending_uploads("blobs/").await.unwrap().is_empty());
    let (code, out) = f.replicas[0].cli(&["cache", "verify"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("checked 1 objects") && out.contains("all objects match their digests"),
        "{out}"
    );
    let (_, out) = f.replicas[2].cli(&["cache", "stats"]);
    assert!(out.contains("blobs        1 (16.0 MiB)"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_release_ledger_is_the_fleets() {
    let Some(f) = Fleet::start(2, Some(RELEASE_POLICY)).await else {
        return;
    };
    let put = |r: &Replica, tag: &str, m: &str| {
        let (url, m) = (
            r.url(&format!("/v2/models/clf/manifests/{tag}")),
            m.to_string(),
        );
        async move {
            send_body(
                http::Method::PUT,
                &url,
                &[("content-type", OCI), ("x-modelgate-reason", "fleet test")],
                m,
            )
            .await
        }
    };
    let (m100, d100) = image_manifest(
        &f.up,
        r#"{"model.version":"v1.0.0","accuracy.test":"0.92"}"#,
    );
    let r = put(&f.replicas[0], "v1.0.0", &m100).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", text(&r));
    // Replica 1 never saw v1.0.0 pushed, yet judges v1.1.0 against it.
    let (m110, _) = image_manifest(
        &f.up,
        r#"{"model.version":"v1.1.0","accuracy.test":"0.90"}"#,
    );
    let r = put(&f.replicas[1], "v1.1.0", &m110).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", text(&r));
    assert!(
        r.message().contains("0.02 below v1.0.0 (0.92)"),
        "{}",
        r.message()
    );
    // Both entries (the release and the refusal) are in the bucket's ledger,
    // and every replica's history shows them.
    let admin = format!(
        "http://127.0.0.1:{}/api/v1/repositories/local/models/clf/history",
        f.replicas[0].admin
    );
    let h = get(&admin).await.json();
    let events: Vec<String> = h["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["event"].as_str().unwrap(),
                e["tag"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(events, ["release v1.0.0", "refused v1.1.0"], "{h}");
    // A mirror that is up to date costs a 304, not the ledger again.
    let b = bucket(&f.weed);
    let key = "ledger/local/models/clf/ledger.jsonl";
    let (_, etag) = b
        .get_small(key)
        .await
        .unwrap()
        .expect("the ledger is in the bucket");
    assert_eq!(
        b.get_small_unless(key, Some(&etag)).await.unwrap(),
        modelgate::shared::Fetched::Unchanged
    );
    let image = format!("127.0.0.1:{}/models/clf", f.replicas[1].port);
    let (code, out) = f.replicas[1].cli(&["history", &image]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("v1.0.0") && out.contains(&d100.hex()[..12]),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_bucket_keeps_objects_and_tag_records() {
    let Some(mut f) = Fleet::start(2, Some(IMMUTABLE)).await else {
        return;
    };
    let c = data(3 << 20, 3);
    let d = f.up.state.add_blob(c.clone());
    let first =
        f.up.state
            .add_manifest("m", Some("v1"), manifest_of(&d, c.len()), OCI);
    assert_eq!(
        status(&f.replicas[0], "/v2/m/manifests/v1").await,
        StatusCode::OK
    );
    assert_eq!(
        Digest::of(
            get(&f.replicas[0].url(&format!("/v2/m/blobs/{d}")))
                .await
                .bytes()
        ),
        d
    );
    let b = bucket(&f.weed);
    let key = format!("blobs/sha256/{}", d.hex());
    assert!(stored(&b, &key).await.is_some());
    let record = "tags/immutable/local/m/v1.json";
    assert!(stored(&b, record).await.is_some());
    f.weed.kill9();
    f.weed.restart().await;
    assert_eq!(object_digest(&b, &key).await, d);
    let (rec, _) = b.get_small(record).await.unwrap().expect("tag record kept");
    assert!(String::from_utf8_lossy(&rec).contains(&first.to_string()));
    // The record still decides: a moved tag is refused by a new replica.
    f.up.state
        .add_manifest("m", Some("v1"), manifest_of(&d, c.len() + 1), OCI);
    let late = f.add_replica(Some(IMMUTABLE)).await;
    assert_eq!(
        status(late, "/v2/m/manifests/v1").await,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_redis_stopped_pulls_still_work() {
    let Some(mut f) = Fleet::start(3, None).await else {
        return;
    };
    f.redis.stop();
    let blob = data(4 << 20, 5);
    let d = f.up.state.add_faulty_blob(
        blob,
        Fault::Drip {
            chunk: 256 * 1024,
            delay: Duration::from_millis(10),
        },
    );
    let got = spread_gets(&f.replicas, &format!("/v2/m/blobs/{d}"), 6).await;
    for g in &got {
        assert_eq!(g.status, StatusCode::OK, "{}", text(g));
        assert_eq!(Digest::of(g.bytes()), d);
    }
    assert!(
        f.up.state.count("GET", &format!("/blobs/{d}")) <= 3,
        "at most one download per replica"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await; // a health probe
    let (status, body) = f.replicas[0].readyz().await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("degraded: redis is unreachable"), "{body}");
    assert!(f.replicas[0]
        .metrics()
        .await
        .contains("modelgate_coordination_up 0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_bucket_down_cached_digests_are_served_and_tags_fail_closed() {
    let Some(mut f) = Fleet::start(2, Some(IMMUTABLE)).await else {
        return;
    };
    let c = data(1 << 20, 4);
    let d = f.up.state.add_blob(c.clone());
    f.up.state
        .add_manifest("m", Some("v1"), manifest_of(&d, c.len()), OCI);
    assert_eq!(
        status(&f.replicas[0], "/v2/m/manifests/v1").await,
        StatusCode::OK
    );
    assert_eq!(
        status(&f.replicas[0], &format!("/v2/m/blobs/{d}")).await,
        StatusCode::OK
    );
    f.weed.kill9();
    // The digest replica 0 holds is still served.
    let g = get(&f.replicas[0].url(&format!("/v2/m/blobs/{d}"))).await;
    assert_eq!(Digest::of(g.bytes()), d);
    // An immutable tag nobody recorded cannot be decided alone: 503.
    f.up.state
        .add_manifest("m", Some("v2"), manifest_of(&d, c.len()), OCI);
    let g = get(&f.replicas[1].url("/v2/m/manifests/v2")).await;
    assert_eq!(g.status, StatusCode::SERVICE_UNAVAILABLE, "{}", text(&g));
    assert_eq!(g.code(), "UNAVAILABLE");
    assert!(
        g.message().contains("immutable")
            && g.message().contains("retry when object storage is back"),
        "{}",
        g.message()
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, body) = f.replicas[1].readyz().await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("degraded: object storage"), "{body}");
    let m = f.replicas[1].metrics().await;
    assert!(m.contains("modelgate_shared_storage_up 0"), "{m}");
    assert!(
        m.contains("modelgate_shared_refusals_total{reason=\"tag_record\"} 1"),
        "{m}"
    );
    // Back up: the tag is decided (and recorded) again.
    f.weed.restart().await;
    let g = get(&f.replicas[1].url("/v2/m/manifests/v2")).await;
    assert_eq!(g.status, StatusCode::OK, "{}", text(&g));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_upstream_down_replicas_answer_from_the_fleets_records() {
    let Some(f) = Fleet::start(2, None).await else {
        return;
    };
    let (md, _, layers) = f.up.state.add_image("m", "v1", &[data(2 << 20, 6)]);
    let g = get(&f.replicas[0].url("/v2/m/manifests/v1")).await;
    assert_eq!(g.status, StatusCode::OK, "{}", text(&g));
    let g = get(&f.replicas[0].url(&format!("/v2/m/blobs/{}", layers[0]))).await;
    assert_eq!(Digest::of(g.bytes()), layers[0]);
    let b = bucket(&f.weed);
    assert!(stored(&b, "tags/last-known/local/m/v1.json")
        .await
        .is_some());
    assert!(stored(&b, &format!("blobs/sha256/{}", layers[0].hex()))
        .await
        .is_some());
    f.up.state.down.store(true, Ordering::SeqCst);
    // Replica 1 never saw the tag: it answers with the fleet's last known
    // digest, and the blob from the bucket.
    let g = get(&f.replicas[1].url("/v2/m/manifests/v1")).await;
    assert_eq!(g.status, StatusCode::OK, "{}", text(&g));
    assert_eq!(
        g.header("docker-content-digest"),
        Some(md.to_string().as_str())
    );
    let g = get(&f.replicas[1].url(&format!("/v2/m/blobs/{}", layers[0]))).await;
    assert_eq!(Digest::of(g.bytes()), layers[0]);
    assert!(f.replicas[1]
        .metrics()
        .await
        .contains("modelgate_stale_served_total{upstream=\"local\"} 1"));
    // A tag nobody saw is still an error that says why.
    let g = get(&f.replicas[1].url("/v2/m/manifests/v2")).await;
    assert_eq!(g.status, StatusCode::SERVICE_UNAVAILABLE, "{}", text(&g));
}
