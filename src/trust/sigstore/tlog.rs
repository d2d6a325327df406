//! Evidence from a transparency log (Rekor), checked offline against the
//! log's key from the trusted root: the signed entry timestamp (SET, Rekor
//! v1's inclusion promise), the RFC 6962 / 9162 inclusion proof, and the
//! signed-note checkpoint that commits to the proof's root. Pure.
//!
//! Invariants: the SET signs the entry's *global* log index with the hex
//! log id; the proof uses the shard index, which must be below the tree
//! size; a checkpoint is accepted only for the tree size and root the proof
//! ends in, signed by the same log key.

use super::root::Log;
use base64::Engine;
use sha2::{Digest as _, Sha256};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Why log evidence does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlogError {
    #[error("signed entry timestamp does not verify with the key of log {0}")]
    BadSet(String),
    #[error("inclusion proof does not lead to the root hash: {0}")]
    BadProof(String),
    #[error("checkpoint: {0}")]
    BadCheckpoint(String),
    #[error("{0} is not base64")]
    NotBase64(&'static str),
}

fn hash_children(l: &[u8], r: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(l);
    h.update(r);
    h.finalize().into()
}

/// The RFC 6962 hash of a log leaf (a Rekor entry's canonicalized body).
pub fn leaf_hash(entry: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry);
    h.finalize().into()
}

/// Verify that `leaf` is entry `index` of a tree of `size` leaves whose
/// root is `root` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    leaf: [u8; 32],
    index: u64,
    size: u64,
    proof: &[[u8; 32]],
    root: &[u8; 32],
) -> Result<(), TlogError> {
    if index >= size {
        return Err(TlogError::BadProof(format!(
            "index {index} is not below the tree size {size}"
        )));
    }
    let (mut fn_, mut sn, mut r) = (index, size - 1, leaf);
    for p in proof {
        if sn == 0 {
            return Err(TlogError::BadProof("the proof is too long".into()));
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = hash_children(p, &r);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = hash_children(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(TlogError::BadProof("the proof is too short".into()));
    }
    if &r != root {
        return Err(TlogError::BadProof(format!(
            "computed {} for entry {index} of {size}",
            hex::encode(r)
        )));
    }
    Ok(())
}

/// What a Rekor v1 inclusion promise signs.
pub struct SetPayload<'a> {
    /// The entry as the log stores it (base64 of the canonicalized body).
    pub body_b64: &'a str,
    pub integrated_time: i64,
    /// The global log index (not the shard's proof index).
    pub log_index: i64,
}

/// Verify a signed entry timestamp with `log`'s key: the signature covers
/// the canonical JSON of body, integrated time, hex log id and log index.
pub fn verify_set(log: &Log, p: &SetPayload<'_>, set_b64: &str) -> Result<(), TlogError> {
    let sig = B64
        .decode(set_b64.trim())
        .map_err(|_| TlogError::NotBase64("signedEntryTimestamp"))?;
    // Keys in sorted order, no spaces: Rekor's canonical JSON.
    let payload = serde_json::json!({
        "body": p.body_b64,
        "integratedTime": p.integrated_time,
        "logID": hex::encode(log.key_id),
        "logIndex": p.log_index,
    })
    .to_string();
    match log.key.verify(payload.as_bytes(), &sig) {
        true => Ok(()),
        false => Err(TlogError::BadSet(log.base_url.clone())),
    }
}

/// A checkpoint's claims: the log's origin line, its size and root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: [u8; 32],
}

/// Parse a signed note and verify one of its signatures with `log`'s key
/// (the signature line whose 4-byte key hint is the start of the log's key
/// id). Returns the claims it makes.
pub fn verify_checkpoint(log: &Log, envelope: &str) -> Result<Checkpoint, TlogError> {
    let bad = |m: &str| TlogError::BadCheckpoint(m.to_string());
    let (body, sigs) = envelope
        .split_once("\n\n")
        .ok_or_else(|| bad("no blank line between the note and its signatures"))?;
    let mut lines = body.lines();
    let origin = lines
        .next()
        .ok_or_else(|| bad("no origin line"))?
        .to_string();
    let size = lines
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("the tree size is not a number"))?;
    let root: [u8; 32] = lines
        .next()
        .and_then(|r| B64.decode(r).ok())
        .and_then(|r| r.try_into().ok())
        .ok_or_else(|| bad("the root hash is not 32 bytes of base64"))?;
    let message = format!("{body}\n");
    let signed = sigs
        .lines()
        .filter_map(|l| l.strip_prefix("\u{2014} "))
        .filter_map(|l| l.rsplit_once(' ').map(|(_, s)| s))
        .filter_map(|s| B64.decode(s).ok())
        .filter(|raw| raw.len() > 4 && raw[..4] == log.key_id[..4])
        .any(|raw| log.key.verify(message.as_bytes(), &raw[4..]));
    if !signed {
        return Err(bad(&format!(
            "no signature by the key of log {} verifies",
            log.base_url
        )));
    }
    Ok(Checkpoint { origin, size, root })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::sigstore::testdata::material;
    use crate::trust::sigstore::TrustedRoot;
    use serde_json::Value;

    /// The trusted root and the bundle's tlog entry of a keyless vector.
    fn case(name: &str) -> (TrustedRoot, Value) {
        let (root, material) = material(name);
        (root, material["tlogEntries"][0].clone())
    }

    fn num(v: &Value) -> i64 {
        v.as_str().and_then(|s| s.parse().ok()).unwrap()
    }

    /// (SET ok, proof ok, checkpoint ok) for a vector.
    fn check(name: &str) -> (bool, bool, bool) {
        let (root, e) = case(name);
        let key_id = B64.decode(e["logId"]["keyId"].as_str().unwrap()).unwrap();
        let log = root.tlog(&key_id).expect("a log the root knows");
        let body = e["canonicalizedBody"].as_str().unwrap();
        let set = verify_set(
            log,
            &SetPayload {
                body_b64: body,
                integrated_time: num(&e["integratedTime"]),
                log_index: num(&e["logIndex"]),
            },
            e["inclusionPromise"]["signedEntryTimestamp"]
                .as_str()
                .unwrap(),
        );
        let p = &e["inclusionProof"];
        let root_hash: [u8; 32] = B64
            .decode(p["rootHash"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let hashes: Vec<[u8; 32]> = p["hashes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| B64.decode(h.as_str().unwrap()).unwrap().try_into().unwrap())
            .collect();
        let (index, size) = (num(&p["logIndex"]) as u64, num(&p["treeSize"]) as u64);
        let leaf = leaf_hash(&B64.decode(body).unwrap());
        let proof = verify_inclusion(leaf, index, size, &hashes, &root_hash);
        let checkpoint = verify_checkpoint(log, p["checkpoint"]["envelope"].as_str().unwrap())
            .is_ok_and(|c| c.size == size && c.root == root_hash);
        (set.is_ok(), proof.is_ok(), checkpoint)
    }

    #[test]
    fn log_evidence_of_the_keyless_vectors() {
        assert_eq!(check("bundle-valid-uri"), (true, true, true));
        assert_eq!(check("bundle-bad-set"), (false, true, true));
        assert!(!check("bundle-bad-inclusion-proof").1);
        assert!(!check("bundle-bad-checkpoint").2);
        let (set, proof, _) = check("bundle-swap-log-index");
        assert!(
            !set && !proof,
            "the SET signs the global index; the proof index must be below the size"
        );
    }

    #[test]
    fn an_unknown_log_is_not_found() {
        let (root, e) = case("bundle-wrong-log-id");
        let key_id = B64.decode(e["logId"]["keyId"].as_str().unwrap()).unwrap();
        assert!(root.tlog(&key_id).is_none());
    }

    #[test]
    fn inclusion_proofs_by_hand() {
        // A 3-leaf tree: root = H(H(l0, l1), l2).
        let l: Vec<[u8; 32]> = (0u8..3).map(|i| leaf_hash(&[i])).collect();
        let root = hash_children(&hash_children(&l[0], &l[1]), &l[2]);
        assert!(verify_inclusion(l[2], 2, 3, &[hash_children(&l[0], &l[1])], &root).is_ok());
        assert!(verify_inclusion(l[0], 0, 3, &[l[1], l[2]], &root).is_ok());
        assert!(
            verify_inclusion(l[0], 0, 3, &[l[1]], &root).is_err(),
            "too short"
        );
        assert!(
            verify_inclusion(l[0], 0, 3, &[l[1], l[2], l[2]], &root).is_err(),
            "too long"
        );
        assert!(
            verify_inclusion(l[0], 3, 3, &[], &root).is_err(),
            "index past the size"
        );
        assert!(
            verify_inclusion(l[1], 0, 3, &[l[1], l[2]], &root).is_err(),
            "wrong leaf"
        );
    }
}
