//! `modelgate promote IMAGE:CHANNEL --to TAG --reason TEXT` and `modelgate
//! rollback IMAGE:CHANNEL [--to TAG] --reason TEXT`: move a channel tag in
//! one command, through the gate like any client push (so the policy
//! decides, and the ledger and audit log record who and why). Rollback
//! without `--to` returns the channel to where it pointed before its last
//! move, as modelgate's release history says.

use super::remote::{registry_client, Connection, Remote};
use crate::oci::media::DEFAULT_MANIFEST_ACCEPT;
use crate::oci::{Digest, ImageRef};

/// Options of `promote` and `rollback`.
pub struct ReleaseArgs {
    /// host[:port]/repository:CHANNEL
    pub image: String,
    /// The release (tag or digest) to move the channel to; None for a
    /// rollback to the previous position.
    pub to: Option<String>,
    pub reason: String,
    pub conn: Connection,
}

/// Move IMAGE's channel; returns the line saying what happened.
pub async fn promote(a: ReleaseArgs) -> Result<String, String> {
    let image = ImageRef::parse(&a.image)?;
    let channel = image
        .tag
        .clone()
        .ok_or_else(|| format!("{}: name the channel as IMAGE:CHANNEL", a.image))?;
    if a.reason.trim().is_empty() {
        return Err("--reason is required: say why the channel moves".into());
    }
    let up = registry_client(&image, &a.conn)?;
    let remote = Remote::new(&up, &image);
    let target = match &a.to {
        Some(t) => t.clone(),
        None => {
            // Where the channel pointed before its last move.
            let h = remote.history(&channel).await?;
            let last = h["entries"]
                .as_array()
                .and_then(|e| e.iter().rev().find(|e| e["event"] == "channel"))
                .ok_or(format!(
                    "{channel} has never moved through modelgate: name the release with --to"
                ))?;
            last["previous_digest"]
                .as_str()
                .ok_or(format!(
                    "{channel} pointed nowhere before its last move: name the release with --to"
                ))?
                .to_string()
        }
    };
    let (bytes, media_type) = remote
        .get_manifest(&target, DEFAULT_MANIFEST_ACCEPT)
        .await?
        .ok_or(format!("{target} is not in {}", image.repo))?;
    remote
        .put_manifest(&channel, &bytes, &media_type, Some(a.reason.trim()))
        .await?;
    Ok(format!(
        "{channel} of {}/{} now points at {target} ({})",
        image.host,
        image.repo,
        Digest::of(&bytes)
    ))
}
