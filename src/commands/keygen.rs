//! `modelgate keygen`: a key pair in the formats cosign reads.

use crate::trust::keys::Algorithm;
use crate::trust::PrivateKey;
use std::path::Path;

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
