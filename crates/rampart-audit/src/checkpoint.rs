//! Signed checkpoints: a tier's record count, chain head and Merkle root,
//! signed with the audit signing key and appended as JSON lines to
//! `<tier>/checkpoints.jsonl` (and to the same path under the optional copy
//! directory).

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::error::AuditError;
use crate::event::Tier;
use crate::merkle::{hash_from_hex, to_hex, Frontier, Hash};

/// File name of a tier's checkpoint log.
pub const CHECKPOINT_FILE: &str = "checkpoints.jsonl";

/// Why a checkpoint was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckpointKind {
    /// Every N records or T seconds.
    Periodic,
    /// On clean close.
    Close,
    /// On request (`Audit::checkpoint_now`, or before a proof).
    Manual,
    /// Retention removed segments; the state at the cut.
    Disposal,
}

impl CheckpointKind {
    fn code(self) -> u8 {
        match self {
            CheckpointKind::Periodic => 1,
            CheckpointKind::Close => 2,
            CheckpointKind::Manual => 3,
            CheckpointKind::Disposal => 4,
        }
    }
}

/// What retention removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disposal {
    /// File names of the removed segments.
    pub segments: Vec<String>,
    /// First removed sequence number.
    pub first_seq: u64,
    /// One past the last removed sequence number (the checkpoint's count).
    pub end_seq: u64,
    /// The Merkle frontier at the cut (hex, largest subtree first), so the
    /// tree over the remaining records can still be checked.
    pub frontier: Vec<String>,
}

/// A signed statement of a tier's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// The tier.
    pub tier: Tier,
    /// Why it was written.
    pub kind: CheckpointKind,
    /// Number of records in the tier so far (the Merkle tree size).
    pub count: u64,
    /// Leaf hash of record `count - 1` (zeros when empty), hex.
    pub chain_head: String,
    /// RFC 6962 root over records `0..count`, hex.
    pub merkle_root: String,
    /// When it was written.
    pub time_unix_nanos: u64,
    /// Present on disposal checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disposal: Option<Disposal>,
    /// Ed25519 signature over the fields above, base64.
    pub signature: String,
}

/// Why a checkpoint is not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointError {
    /// A hash field is not 64 hex digits.
    BadHash,
    /// The signature is not valid base64 of 64 bytes.
    MalformedSignature,
    /// The signature does not verify under the key.
    BadSignature,
    /// The disposal frontier does not fit the count.
    BadFrontier,
}

impl std::fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CheckpointError::BadHash => "checkpoint hash field is malformed",
            CheckpointError::MalformedSignature => "checkpoint signature is malformed",
            CheckpointError::BadSignature => "checkpoint signature does not verify",
            CheckpointError::BadFrontier => "disposal frontier does not match the checkpoint",
        })
    }
}

/// A checkpoint whose signature has been checked, with its hashes decoded.
#[derive(Debug, Clone)]
pub(crate) struct Verified {
    pub(crate) cp: Checkpoint,
    pub(crate) chain_head: Hash,
    pub(crate) root: Hash,
    /// For disposals: the frontier at the cut, checked against the root.
    pub(crate) frontier: Option<Frontier>,
}

impl Checkpoint {
    fn signed_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(256);
        v.extend_from_slice(b"rampart-audit checkpoint v1\0");
        v.push(self.tier.code());
        v.push(self.kind.code());
        v.extend_from_slice(&self.count.to_le_bytes());
        v.extend_from_slice(self.chain_head.as_bytes());
        v.extend_from_slice(self.merkle_root.as_bytes());
        v.extend_from_slice(&self.time_unix_nanos.to_le_bytes());
        match &self.disposal {
            None => v.push(0),
            Some(d) => {
                v.push(1);
                v.extend_from_slice(&d.first_seq.to_le_bytes());
                v.extend_from_slice(&d.end_seq.to_le_bytes());
                for list in [&d.segments, &d.frontier] {
                    v.extend_from_slice(&(list.len() as u64).to_le_bytes());
                    for s in list {
                        v.extend_from_slice(&(s.len() as u64).to_le_bytes());
                        v.extend_from_slice(s.as_bytes());
                    }
                }
            }
        }
        v
    }

    /// Builds and signs a checkpoint.
    pub(crate) fn sign(
        key: &SigningKey,
        tier: Tier,
        kind: CheckpointKind,
        frontier: &Frontier,
        chain_head: &Hash,
        time_unix_nanos: u64,
        disposal: Option<Disposal>,
    ) -> Checkpoint {
        let mut cp = Checkpoint {
            tier,
            kind,
            count: frontier.size(),
            chain_head: to_hex(chain_head),
            merkle_root: to_hex(&frontier.root()),
            time_unix_nanos,
            disposal,
            signature: String::new(),
        };
        let sig = key.sign(&cp.signed_bytes());
        cp.signature = base64::engine::general_purpose::STANDARD.encode(sig.to_bytes());
        cp
    }

    /// Checks the signature and decodes the hashes.
    pub(crate) fn verified(&self, key: &VerifyingKey) -> Result<Verified, CheckpointError> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&self.signature)
            .map_err(|_| CheckpointError::MalformedSignature)?;
        let bytes: [u8; 64] = raw
            .try_into()
            .map_err(|_| CheckpointError::MalformedSignature)?;
        key.verify(&self.signed_bytes(), &Signature::from_bytes(&bytes))
            .map_err(|_| CheckpointError::BadSignature)?;
        let chain_head = hash_from_hex(&self.chain_head).ok_or(CheckpointError::BadHash)?;
        let root = hash_from_hex(&self.merkle_root).ok_or(CheckpointError::BadHash)?;
        let frontier = match &self.disposal {
            None => None,
            Some(d) => {
                let nodes = d
                    .frontier
                    .iter()
                    .map(|h| hash_from_hex(h))
                    .collect::<Option<Vec<_>>>()
                    .ok_or(CheckpointError::BadHash)?;
                let f =
                    Frontier::from_parts(self.count, nodes).ok_or(CheckpointError::BadFrontier)?;
                if f.root() != root || d.end_seq != self.count || d.first_seq > d.end_seq {
                    return Err(CheckpointError::BadFrontier);
                }
                Some(f)
            }
        };
        Ok(Verified {
            cp: self.clone(),
            chain_head,
            root,
            frontier,
        })
    }

    /// Checks the signature against `key`.
    pub fn verify_signature(&self, key: &VerifyingKey) -> Result<(), CheckpointError> {
        self.verified(key).map(|_| ())
    }
}

/// One line of a checkpoint file.
#[derive(Debug)]
pub(crate) struct Line {
    pub(crate) number: usize,
    pub(crate) parsed: Result<Checkpoint, String>,
}

/// Reads a checkpoint file line by line, handing each whole line to `f`
/// (so that a file kept for the life of the log is never held in memory
/// at once). A last line without its newline is a torn write and is
/// skipped; blank lines are passed over but counted.
pub(crate) fn for_each_line(path: &Path, f: &mut dyn FnMut(Line)) -> Result<(), AuditError> {
    read_lines(path, &mut |number, text| {
        f(Line {
            number,
            parsed: serde_json::from_slice(text).map_err(|e| e.to_string()),
        })
    })
}

/// Reads an append-only file of lines (checkpoints, the time index) one
/// at a time, handing `f` each whole line's number (from 1) and text
/// without its line ending. A missing file has no lines; a last line
/// without its newline is a torn write and is skipped; blank lines are
/// passed over but counted.
pub(crate) fn read_lines(path: &Path, f: &mut dyn FnMut(usize, &[u8])) -> Result<(), AuditError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(AuditError::io(path, e)),
    };
    let mut reader = std::io::BufReader::with_capacity(64 * 1024, file);
    let mut buf = Vec::new();
    let mut number = 0usize;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| AuditError::io(path, e))?;
        if n == 0 || buf.last() != Some(&b'\n') {
            return Ok(());
        }
        number += 1;
        let text = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        f(number, text);
    }
}

/// Appends a checkpoint line and syncs it.
pub(crate) fn append(path: &Path, cp: &Checkpoint) -> Result<(), AuditError> {
    let mut line = serde_json::to_vec(cp).map_err(|e| AuditError::Encode(e.to_string()))?;
    line.push(b'\n');
    append_line(path, &line)
}

/// Appends `line` (with its newline) to an append-only file in one write
/// and syncs it; a file it creates has its directory entry synced too.
pub(crate) fn append_line(path: &Path, line: &[u8]) -> Result<(), AuditError> {
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let fresh = !path.exists();
    if fresh {
        fs::create_dir_all(&dir).map_err(|e| AuditError::io(&dir, e))?;
    }
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| AuditError::io(path, e))?;
    f.write_all(line).map_err(|e| AuditError::io(path, e))?;
    f.sync_data().map_err(|e| AuditError::io(path, e))?;
    if fresh {
        sync_dir(&dir)?;
    }
    Ok(())
}

/// Cuts a torn last line off a checkpoint file (or another file of lines
/// appended whole, such as the time index).
pub(crate) fn repair(path: &Path) -> Result<(), AuditError> {
    let io = |e| AuditError::io(path, e);
    // Opened for writing only to cut, as an append-only file would refuse.
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(e)),
    };
    // Up to the last newline, looked for from the end: the file is kept
    // for the life of the log and is not read whole here.
    let len = f.metadata().map_err(io)?.len();
    let mut whole = len;
    let mut chunk = [0u8; 4096];
    while whole > 0 {
        let start = whole.saturating_sub(chunk.len() as u64);
        let part = chunk
            .get_mut(..usize::try_from(whole - start).unwrap_or(0))
            .unwrap_or_default();
        f.read_exact_at(part, start).map_err(io)?;
        match part.iter().rposition(|&b| b == b'\n') {
            Some(i) => {
                whole = start + i as u64 + 1;
                break;
            }
            None => whole = start,
        }
    }
    if len > whole {
        tracing::warn!(path = %path.display(), "cutting a torn last line");
        let f = OpenOptions::new().write(true).open(path).map_err(io)?;
        f.set_len(whole).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    Ok(())
}

/// Path of `tier`'s checkpoint file under `root`.
pub(crate) fn path_for(root: &Path, tier: Tier) -> PathBuf {
    root.join(tier.as_str()).join(CHECKPOINT_FILE)
}

/// Makes a directory entry change durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| AuditError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::leaf_hash;

    /// A periodic checkpoint over one record, signed with `key`.
    fn one_checkpoint(key: &SigningKey) -> Checkpoint {
        let mut f = Frontier::new();
        f.push(leaf_hash(b"a"));
        Checkpoint::sign(
            key,
            Tier::Security,
            CheckpointKind::Periodic,
            &f,
            &[1; 32],
            9,
            None,
        )
    }

    #[test]
    fn signature_covers_every_field() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let cp = one_checkpoint(&key);
        assert!(cp.verify_signature(&key.verifying_key()).is_ok());
        let mut bad = cp.clone();
        bad.count = 2;
        assert_eq!(
            bad.verify_signature(&key.verifying_key()),
            Err(CheckpointError::BadSignature)
        );
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert_eq!(
            cp.verify_signature(&other),
            Err(CheckpointError::BadSignature)
        );
        let mut bad = cp;
        bad.signature = "!!".into();
        assert_eq!(
            bad.verify_signature(&key.verifying_key()),
            Err(CheckpointError::MalformedSignature)
        );
    }

    #[test]
    fn lines_are_read_one_by_one_and_a_torn_last_line_is_not() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let cp = one_checkpoint(&key);
        let json = serde_json::to_string(&cp).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoints.jsonl");
        let mut text = Vec::new();
        text.extend_from_slice(json.as_bytes());
        text.extend_from_slice(b"\n\n"); // a blank line, counted
        text.extend_from_slice(json.as_bytes());
        text.extend_from_slice(b"\r\n"); // written on another system
        text.extend_from_slice(b"{\"count\": \xff}\n"); // not UTF-8: unreadable, not an error
        text.extend_from_slice(&json.as_bytes()[..20]); // torn: no newline
        fs::write(&path, &text).unwrap();
        let mut seen = Vec::new();
        for_each_line(&path, &mut |l| seen.push((l.number, l.parsed.is_ok()))).unwrap();
        assert_eq!(seen, vec![(1, true), (3, true), (4, false)]);
        // A missing file has no lines.
        let mut n = 0;
        for_each_line(&dir.path().join("none"), &mut |_| n += 1).unwrap();
        assert_eq!(n, 0);
    }

    #[test]
    fn repair_cuts_only_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoints.jsonl");
        let whole = b"{\"a\":1}\n{\"b\":2}\n".to_vec();
        let cases: [(Vec<u8>, &[u8]); 4] = [
            (whole.clone(), &whole),                          // nothing torn
            ([&whole[..], b"{\"c\""].concat(), &whole),       // a short torn line
            ([&whole[..], &[b'x'; 10_000]].concat(), &whole), // one longer than a read
            (b"{\"torn".to_vec(), b""),                       // no whole line at all
        ];
        for (before, after) in cases {
            fs::write(&path, &before).unwrap();
            repair(&path).unwrap();
            assert_eq!(fs::read(&path).unwrap(), after);
        }
        repair(&dir.path().join("none")).unwrap();
    }
}
