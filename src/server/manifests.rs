//! `/v2/<name>/manifests/<reference>`: GET and HEAD (through the gate) and
//! PUT (validated here, decided by the gate, then forwarded).

use super::body::{digest_headers, empty, full, set_header, RespBody};
use super::ctx::Ctx;
use crate::cache::Held;
use crate::gate::Admitted;
use crate::gate::Requester;
use crate::oci::media::{self, ManifestSummary, MAX_MANIFEST_BYTES};
use crate::oci::{json, Digest, ErrorCode, Manifest, OciError, Reference, RepoName};
use crate::upstream::Route;
use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

const PUSHABLE: [&str; 4] = [
    media::OCI_MANIFEST,
    media::OCI_INDEX,
    media::DOCKER_MANIFEST,
    media::DOCKER_LIST,
];

/// The response for an admitted manifest: exactly the bytes decided.
fn manifest_response(admitted: &Admitted) -> Response<RespBody> {
    let m = admitted.manifest();
    let mut r = Response::new(full(m.bytes.clone()));
    let h = r.headers_mut();
    set_header(h, "content-type", &m.media_type);
    h.insert(CONTENT_LENGTH, HeaderValue::from(m.bytes.len()));
    digest_headers(h, &m.digest);
    r
}

/// GET or HEAD: decided on exactly the bytes about to be served.
pub async fn get(
    ctx: &Ctx<'_>,
    name: &RepoName,
    reference: &Reference,
    req: &Request<Incoming>,
) -> Result<Response<RespBody>, OciError> {
    let r = ctx.route(name)?;
    // Clients may send several Accept lines; they all count.
    let accept: Vec<&str> = req
        .headers()
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let accept = (!accept.is_empty()).then(|| accept.join(", "));
    let gate = ctx.app.gate();
    let admitted = gate
        .pull_manifest(&r, reference, accept.as_deref(), &ctx.who())
        .await?;
    Ok(manifest_response(&admitted))
}

fn bad(m: String) -> OciError {
    OciError::new(StatusCode::BAD_REQUEST, ErrorCode::ManifestInvalid, m)
}

fn too_large() -> OciError {
    OciError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::ManifestInvalid,
        format!("manifest is larger than {MAX_MANIFEST_BYTES} bytes"),
    )
}

/// A pushed manifest, validated: size, strict JSON, media type, schema.
struct Pushed {
    manifest: Manifest,
    doc: serde_json::Value,
    summary: ManifestSummary,
}

/// Read and validate a pushed manifest body.
async fn read_pushed(r: &Route, req: Request<Incoming>) -> Result<Pushed, OciError> {
    let ct = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|t| t.split(';').next().unwrap_or("").trim().to_string());
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|l| l > MAX_MANIFEST_BYTES as u64) {
        return Err(too_large());
    }
    let body = Limited::new(req.into_body(), MAX_MANIFEST_BYTES).collect();
    let bytes = tokio::time::timeout(r.upstream.idle_timeout(), body)
        .await
        .map_err(|_| bad("the client did not finish sending the manifest".into()))?
        .map_err(|e| match e.is::<http_body_util::LengthLimitError>() {
            true => too_large(),
            false => bad(format!("manifest body: {e}")),
        })?
        .to_bytes();
    let doc = json::parse_strict(&bytes).map_err(|e| bad(format!("manifest is {e}")))?;
    let summary = ManifestSummary::parse(&bytes).map_err(bad)?;
    let inner = doc["mediaType"].as_str().map(str::to_string);
    let media_type = match (&ct, &inner) {
        (Some(c), Some(i)) if c != i => {
            return Err(bad(format!(
                "Content-Type {c} does not match the manifest's mediaType {i}"
            )))
        }
        (Some(c), _) if !c.is_empty() => c.clone(),
        (_, Some(i)) => i.clone(),
        _ => media::content_type_for(None, &bytes),
    };
    if !PUSHABLE.contains(&media_type.as_str()) {
        return Err(bad(format!(
            "media type {media_type} is not a manifest modelgate accepts ({})",
            PUSHABLE.join(", ")
        )));
    }
    if doc["schemaVersion"] != 2 {
        return Err(bad("schemaVersion must be 2".into()));
    }
    let manifest = Manifest {
        digest: Digest::of(&bytes),
        bytes,
        media_type,
    };
    Ok(Pushed {
        manifest,
        doc,
        summary,
    })
}

/// The tags a PUT sets: the reference when it is a tag, then every `?tag=`.
fn requested_tags(reference: &Reference, ctx: &Ctx<'_>) -> Result<Vec<String>, OciError> {
    let mut tags: Vec<String> =
        url::form_urlencoded::parse(ctx.query.as_deref().unwrap_or("").as_bytes())
            .filter(|(k, _)| k == "tag")
            .map(|(_, v)| v.into_owned())
            .collect();
    if let Reference::Tag(t) = reference {
        tags.insert(0, t.clone());
    }
    for t in &tags {
        Reference::parse(t)?;
    }
    Ok(tags)
}

/// Every blob and child manifest the pushed document references must be in
/// the upstream repository already.
async fn ensure_references(ctx: &Ctx<'_>, r: &Route, p: &Pushed) -> Result<(), OciError> {
    let registry = ctx.app.registry();
    let mut missing = Vec::new();
    for d in p.summary.config.iter().chain(p.summary.layers.iter()) {
        if !registry.exists(r, Held::Blob, d, None).await? {
            missing.push(d.to_string());
        }
    }
    let children = p.doc["manifests"].as_array().cloned().unwrap_or_default();
    for d in &p.summary.manifests {
        let declared = children
            .iter()
            .find(|c| c["digest"] == d.to_string().as_str())
            .and_then(|c| c["mediaType"].as_str());
        if !registry.exists(r, Held::Manifest, d, declared).await? {
            missing.push(d.to_string());
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(OciError::new(
        StatusCode::BAD_REQUEST,
        ErrorCode::ManifestBlobUnknown,
        format!(
            "the manifest references {} that the upstream repository {} does not have; push them first",
            missing.join(", "),
            r.canonical
        ),
    ))
}

/// The longest reason a client may give.
const MAX_REASON: usize = 1000;

/// `X-Modelgate-Reason`: why a release or channel move is made, kept in
/// the audit log and the release ledger. Printable UTF-8, one line.
fn reason_header(h: &http::HeaderMap) -> Result<Option<String>, OciError> {
    let Some(v) = h.get("x-modelgate-reason") else {
        return Ok(None);
    };
    let bad = |why: &str| {
        OciError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::Unsupported,
            format!("X-Modelgate-Reason {why}: give one line of printable UTF-8 text, at most {MAX_REASON} bytes"),
        )
    };
    let text = std::str::from_utf8(v.as_bytes()).map_err(|_| bad("is not UTF-8"))?;
    if text.len() > MAX_REASON {
        return Err(bad("is too long"));
    }
    if text.chars().any(char::is_control) {
        return Err(bad("has control characters"));
    }
    Ok(Some(text.trim().to_string()).filter(|t| !t.is_empty()))
}

/// PUT: validate, decide, forward, remember.
pub async fn put(
    ctx: &Ctx<'_>,
    name: &RepoName,
    reference: Reference,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, OciError> {
    let r = ctx.route(name)?;
    let reason = reason_header(req.headers())?;
    let pushed = read_pushed(&r, req).await?;
    let m = &pushed.manifest;
    if let Reference::Digest(want) = &reference {
        if want != &m.digest {
            return Err(OciError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::DigestInvalid,
                format!("manifest bytes hash to {}, not {want}", m.digest),
            ));
        }
    }
    let tags = requested_tags(&reference, ctx)?;
    ensure_references(ctx, &r, &pushed).await?;
    let gate = ctx.app.gate();
    let who = Requester {
        reason: reason.as_deref(),
        ..ctx.who()
    };
    let verdict = gate.decide_push(&r, m, &tags, &who).await?;
    let registry = ctx.app.registry();
    let (confirmed, subject) = registry.put_manifest(&r, m, &reference, &tags).await?;
    gate.pushed(&r, &verdict, m, &confirmed).await;
    let mut out = Response::new(empty());
    *out.status_mut() = StatusCode::CREATED;
    let h = out.headers_mut();
    set_header(h, "location", &format!("/v2/{name}/manifests/{}", m.digest));
    set_header(h, "docker-content-digest", &m.digest.to_string());
    h.insert(CONTENT_LENGTH, HeaderValue::from(0));
    if let Some(s) = subject {
        set_header(h, "oci-subject", &s);
    }
    if !tags.is_empty() && matches!(reference, Reference::Digest(_)) {
        set_header(h, "oci-tag", &confirmed.join(","));
    }
    Ok(out)
}
