//! `modelgate sign`: sign an image digest in cosign's formats (legacy
//! `.sig` tag, or a Sigstore bundle v0.3 referrer) and push the signature to
//! a registry (modelgate or the upstream).

use super::remote::{registry_client, Connection, Remote};
use crate::oci::media::{DEFAULT_MANIFEST_ACCEPT, OCI_INDEX, OCI_MANIFEST};
use crate::oci::{Digest, ImageRef};
use crate::trust::{sign as build, PrivateKey};

/// Options of `modelgate sign`.
pub struct SignArgs {
    pub key: std::path::PathBuf,
    pub image: String,
    pub bundle: bool,
    pub digest: Option<Digest>,
    pub media_type: Option<String>,
    pub size: Option<u64>,
    pub conn: Connection,
}

/// `modelgate sign`: sign an image digest in cosign's format and push the
/// signature to the registry named in IMAGE.
pub async fn sign(a: SignArgs) -> Result<(), String> {
    let image = ImageRef::parse(&a.image)?;
    let key_pem =
        std::fs::read_to_string(&a.key).map_err(|e| format!("{}: {e}", a.key.display()))?;
    let key = PrivateKey::from_pem(&key_pem).map_err(|e| format!("{}: {e}", a.key.display()))?;
    let up = registry_client(&image, &a.conn)?;
    let p = Remote::new(&up, &image);
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
        p.put_manifest(&md.to_string(), &manifest, OCI_MANIFEST, None)
            .await?;
        // Registries without a referrers API: keep the tag-schema index.
        if !p.has_referrers_api(&digest).await? {
            let existing = p.get_manifest(&digest.tag_schema(), OCI_INDEX).await?;
            let index = build::add_to_referrers_index(
                existing.as_ref().map(|(b, _)| b.as_ref()),
                &manifest,
            );
            p.put_manifest(&digest.tag_schema(), &index, OCI_INDEX, None)
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
        p.put_manifest(&tag, &manifest, OCI_MANIFEST, None).await?;
        println!(
            "signed {docker_reference}@{digest} (tag {tag}, key hint {})",
            key.public().hint()
        );
    }
    Ok(())
}
