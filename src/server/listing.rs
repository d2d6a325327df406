//! `/v2/<name>/tags/list` (paged, with the upstream's `Link` rewritten to
//! point at modelgate) and `/v2/<name>/referrers/<digest>`.

use super::body::{full, RespBody};
use super::ctx::Ctx;
use crate::oci::media::OCI_INDEX;
use crate::oci::{Digest, OciError, RepoName};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, LINK};
use http::{HeaderValue, Response};

/// Rewrite an upstream `Link: <...>; rel="next"` to point at modelgate under
/// the name the client used.
fn rewrite_link(link: &str, client_name: &RepoName, ns: Option<&str>) -> Option<String> {
    let start = link.find('<')? + 1;
    let end = link[start..].find('>')? + start;
    let target = &link[start..end];
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let mut pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k != "ns")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if let Some(ns) = ns {
        pairs.push(("ns".into(), ns.into()));
    }
    let q = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    let path = target.split_once('?').map(|(p, _)| p).unwrap_or(target);
    if !path.ends_with("/tags/list") {
        return None;
    }
    Some(format!(
        "</v2/{client_name}/tags/list?{q}>{}",
        &link[end + 1..]
    ))
}

/// GET `tags/list`: the upstream's page, its next-page link rewritten.
pub async fn tags(ctx: &Ctx<'_>, name: &RepoName) -> Result<Response<RespBody>, OciError> {
    let r = ctx.route(name)?;
    let page = ctx
        .app
        .registry()
        .tags_page(&r, ctx.query.as_deref())
        .await?;
    let link = page
        .link
        .as_deref()
        .and_then(|l| rewrite_link(l, name, r.ns.as_deref()));
    let len = page.body.len();
    let mut out = Response::new(full(page.body));
    let h = out.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CONTENT_LENGTH, HeaderValue::from(len));
    if let Some(v) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
        h.insert(LINK, v);
    }
    Ok(out)
}

/// GET `_modelgate/history[?tag=T]`: the release ledger of the
/// repository as JSON (what `modelgate rollback` reads to find where a
/// channel pointed before).
pub fn history(ctx: &Ctx<'_>, name: &RepoName) -> Result<Response<RespBody>, OciError> {
    let r = ctx.route(name)?;
    let tag = ctx.param("tag");
    let h = crate::commands::history::History::of(
        ctx.app.gate().ledger(),
        &r.canonical,
        tag.as_deref(),
    );
    let body = h.json().to_string();
    let len = body.len();
    let mut out = Response::new(full(body));
    let hd = out.headers_mut();
    hd.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    hd.insert(CONTENT_LENGTH, HeaderValue::from(len));
    Ok(out)
}

/// GET `referrers/<digest>`: always an OCI index.
pub async fn referrers(
    ctx: &Ctx<'_>,
    name: &RepoName,
    d: &Digest,
) -> Result<Response<RespBody>, OciError> {
    let r = ctx.route(name)?;
    let artifact_type = ctx.param("artifactType");
    let refs = ctx
        .app
        .registry()
        .referrers(&r, d, artifact_type.as_deref())
        .await?;
    let len = refs.index.len();
    let mut out = Response::new(full(refs.index));
    let h = out.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(OCI_INDEX));
    h.insert(CONTENT_LENGTH, HeaderValue::from(len));
    if refs.filtered {
        h.insert(
            "OCI-Filters-Applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_rewrite() {
        let name = RepoName::parse("docker.io/library/alpine").unwrap();
        let l = rewrite_link(
            r#"</v2/library/alpine/tags/list?last=b&n=2>; rel="next""#,
            &name,
            None,
        )
        .unwrap();
        assert_eq!(
            l,
            r#"</v2/docker.io/library/alpine/tags/list?last=b&n=2>; rel="next""#
        );
        let name = RepoName::parse("library/alpine").unwrap();
        let l = rewrite_link(
            r#"<https://up.example/v2/library/alpine/tags/list?n=2&last=b>; rel="next""#,
            &name,
            Some("docker.io"),
        )
        .unwrap();
        assert_eq!(
            l,
            r#"</v2/library/alpine/tags/list?n=2&last=b&ns=docker.io>; rel="next""#
        );
    }
}
