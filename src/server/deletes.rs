//! `DELETE .../manifests/<reference>` and `.../blobs/<digest>`: decided by
//! the gate (refused where releases are immutable, audited either way), then
//! proxied to the upstream.

use super::body::{accepted, RespBody};
use super::ctx::Ctx;
use crate::oci::{OciError, RepoName};
use crate::registry::Deletion;
use http::Response;

/// DELETE a manifest or a blob.
pub async fn delete(
    ctx: &Ctx<'_>,
    name: &RepoName,
    what: Deletion,
) -> Result<Response<RespBody>, OciError> {
    let r = ctx.route(name)?;
    ctx.app.gate().decide_delete(&r, &what, &ctx.who())?;
    ctx.app.registry().delete(&r, &what).await?;
    Ok(accepted())
}
