//! Every metric modelgate exports (README "Operations"), owned by one [`Metrics`] value
//! that is passed around, never global, so tests can read what a request did.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// One of the methods the API knows, or `OTHER` (see [`method_label`]).
    pub method: &'static str,
    pub endpoint: &'static str,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub kind: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamCodeLabels {
    pub upstream: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// A signature verification: `kind` is `key`, `keyless` or `notation`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignatureLabels {
    pub kind: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub action: &'static str,
    pub decision: &'static str,
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// A request method as a label value: invented methods must not mint
/// series, so anything the registry API does not use is `OTHER`.
pub fn method_label(m: &http::Method) -> &'static str {
    match m.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "PUT" => "PUT",
        "POST" => "POST",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        _ => "OTHER",
    }
}

/// Whether a cache lookup found what it looked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    Miss,
}

fn request_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.5, 14))
}

/// All of modelgate's metrics.
pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<RequestLabels, Counter>,
    pub http_duration: Family<EndpointLabels, Histogram, fn() -> Histogram>,
    pub cache_requests: Family<CacheLabels, Counter>,
    pub bytes_served: Family<SourceLabels, Counter>,
    pub upstream_requests: Family<UpstreamCodeLabels, Counter>,
    pub fetches_coalesced: Counter,
    pub digest_mismatches: Family<UpstreamLabels, Counter>,
    pub cache_bytes: Gauge<i64, std::sync::atomic::AtomicI64>,
    pub stale_served: Family<UpstreamLabels, Counter>,
    pub policy_decisions: Family<DecisionLabels, Counter>,
    pub signature_verifications: Family<SignatureLabels, Counter>,
    pub policy_reloads: Family<ResultLabels, Counter>,
    pub cache_evictions: Counter<u64, AtomicU64>,
    pub auth_failures: Counter,
    pub connections_open: Gauge<i64, std::sync::atomic::AtomicI64>,
    pub connections_closed: Family<ReasonLabels, Counter>,
    pub cache_write_failures: Family<ReasonLabels, Counter>,
    pub cache_passthrough: Counter,
    pub cache_layout_recreated: Counter,
    pub uploads_refused: Family<ReasonLabels, Counter>,
    pub shared_storage_up: Gauge<i64, std::sync::atomic::AtomicI64>,
    pub coordination_up: Gauge<i64, std::sync::atomic::AtomicI64>,
    pub shared_blob_sources: Family<SourceLabels, Counter>,
    pub shared_uploads: Family<ResultLabels, Counter>,
    pub shared_refusals: Family<ReasonLabels, Counter>,
}

/// Register `m` under `name` and hand it back.
fn reg<M: prometheus_client::registry::Metric + Clone>(
    r: &mut Registry,
    name: &str,
    help: &str,
    m: M,
) -> M {
    r.register(name, help, m.clone());
    m
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("modelgate");
        Metrics {
            http_requests: reg(&mut r, "http_requests", "Client requests by method, endpoint and status", Family::default()),
            http_duration: reg(&mut r, "http_request_duration_seconds", "Time to answer a client request (headers; bodies stream afterwards)", Family::new_with_constructor(request_histogram)),
            cache_requests: reg(&mut r, "cache_requests", "Cache lookups by kind and result", Family::default()),
            bytes_served: reg(&mut r, "bytes_served", "Body bytes sent to clients, by where they came from", Family::default()),
            upstream_requests: reg(&mut r, "upstream_requests", "Requests sent to upstream registries, by status", Family::default()),
            fetches_coalesced: reg(&mut r, "upstream_fetches_coalesced", "Blob requests that joined a download already in flight", Counter::default()),
            digest_mismatches: reg(&mut r, "digest_mismatches", "Upstream bodies whose SHA-256 did not match their digest", Family::default()),
            cache_bytes: reg(&mut r, "cache_bytes", "Bytes held in the content-addressed cache", Gauge::default()),
            stale_served: reg(&mut r, "stale_served", "Answers served from the last known state because the upstream was unreachable", Family::default()),
            policy_decisions: reg(&mut r, "policy_decisions", "Policy decisions", Family::default()),
            signature_verifications: reg(&mut r, "signature_verifications", "Signature verifications by kind (key, keyless, notation) and result", Family::default()),
            policy_reloads: reg(&mut r, "policy_reloads", "Policy reloads by result", Family::default()),
            cache_evictions: reg(&mut r, "cache_evictions", "Cache entries evicted to stay under max_bytes", Counter::default()),
            auth_failures: reg(&mut r, "auth_failures", "Failed or throttled client logins", Counter::default()),
            connections_open: reg(&mut r, "connections_open", "Client connections open now", Gauge::default()),
            connections_closed: reg(&mut r, "connections_closed", "Client connections modelgate closed, by reason (first_byte_timeout, idle, per_client_limit)", Family::default()),
            cache_write_failures: reg(&mut r, "cache_write_failures", "Blobs that could not be written to the cache, by reason (no_space, io)", Family::default()),
            cache_passthrough: reg(&mut r, "cache_passthrough", "Blobs served verified but not cached (they did not fit)", Counter::default()),
            cache_layout_recreated: reg(&mut r, "cache_layout_recreated", "Times the cache directory layout was found missing and made again", Counter::default()),
            uploads_refused: reg(&mut r, "uploads_refused", "Upload sessions refused, by reason (limit, per_client)", Family::default()),
            shared_storage_up: reg(&mut r, "shared_storage_up", "1 when the shared bucket answered its last call (backend = \"s3\"); 0 = degraded", Gauge::default()),
            coordination_up: reg(&mut r, "coordination_up", "1 when Redis answered its last command ([coordination]); 0 = each replica downloads on its own", Gauge::default()),
            shared_blob_sources: reg(&mut r, "shared_blob_sources", "Cold blobs of this replica by where it read them (bucket, peer, upstream, resumed)", Family::default()),
            shared_uploads: reg(&mut r, "shared_uploads", "Blobs copied into the shared bucket, by result (stored, failed)", Family::default()),
            shared_refusals: reg(&mut r, "shared_refusals", "Requests refused because shared storage was unreachable, by reason", Family::default()),
            registry: r,
        }
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn upstream_request(&self, upstream: &str, code: &str) {
        self.upstream_requests
            .get_or_create(&UpstreamCodeLabels {
                upstream: upstream.to_string(),
                code: code.to_string(),
            })
            .inc();
    }

    pub fn digest_mismatch(&self, upstream: &str) {
        self.digest_mismatches
            .get_or_create(&UpstreamLabels {
                upstream: upstream.to_string(),
            })
            .inc();
    }

    pub fn cache(&self, kind: &'static str, result: CacheResult) {
        self.cache_requests
            .get_or_create(&CacheLabels {
                kind,
                result: match result {
                    CacheResult::Hit => "hit",
                    CacheResult::Miss => "miss",
                },
            })
            .inc();
    }

    /// Count one event of a reason-labelled family.
    pub fn reason(family: &Family<ReasonLabels, Counter>, reason: &'static str) {
        family.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub fn served(&self, source: &'static str, bytes: u64) {
        self.bytes_served
            .get_or_create(&SourceLabels { source })
            .inc_by(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_design_names() {
        let m = Metrics::new();
        m.upstream_request("docker.io", "200");
        m.cache("blob", CacheResult::Hit);
        m.fetches_coalesced.inc();
        let text = m.encode();
        for name in [
            "modelgate_upstream_requests_total{upstream=\"docker.io\",code=\"200\"} 1",
            "modelgate_cache_requests_total{kind=\"blob\",result=\"hit\"} 1",
            "modelgate_upstream_fetches_coalesced_total 1",
            "modelgate_cache_bytes",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
