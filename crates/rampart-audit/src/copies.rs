//! Derived copies: a record in one tier that also goes, as a copy, to
//! another (the edge's denials: recorded in api-access, copied to
//! security). The caller waits only for its record to be durable; the
//! copies gather and are written and synced by their tier every
//! [`crate::AuditOptions::copy_delay`], one write and one sync for many.
//!
//! A record with a copy carries a mark saying so (a field after the
//! event's, [`crate::event::copy_of`]), and its copy is the same event with
//! the other tier, kept with the same time. So the durable record is enough
//! to make the copy again: if the process or the machine stops before a
//! copy is durable, opening the log finds the records whose copies are
//! missing and writes them.
//!
//! How far back opening must look is kept in a small file per pair of
//! tiers, `<to>/copies-from-<from>` ([`CopyMark`]): once a batch holding
//! copies is durable, every record of `from` before `from_seq` has its
//! copy among the records of `to` before `to_seq`. Opening reads the
//! records of `from` from `from_seq` on and writes the copies of the
//! marked ones that are not among the records of `to` from `to_seq` on.
//! The mark also moves on without copies: once no copy is on its way and
//! 4,096 records of `from` have passed, it moves past
//! them, so opening after a crash reads back a few thousand records, not to
//! the last copy (which may be days old). A copy lost to a failed write
//! keeps it where it is until the next open writes that copy.
//! The file is rewritten in place without a sync: a stale mark only makes
//! opening read further back (a copy found is not written twice), and a
//! damaged one makes it read both tiers from the start. The file is
//! created, and synced, when the log is first opened with the pair, so a
//! pair without one has never had copies.
//!
//! The mark is not signed: whoever can write the log's directory can make
//! opening skip copies (as they could delete segments). The records the
//! copies come from stay in their own tier, where `verify` checks them,
//! and [`crate::AuditReader::check_copies`] (run by `rampart audit
//! verify`, as it needs the encryption key) reads both tiers whole and
//! names every marked record whose copy is missing: pending after the
//! mark, lost before it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::event::Tier;

/// Where a pair's mark is kept.
pub(crate) fn mark_path(dir: &Path, from: Tier, to: Tier) -> PathBuf {
    dir.join(to.as_str())
        .join(format!("copies-from-{}", from.as_str()))
}

/// How far the copies of records of one tier in another are known durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct CopyMark {
    /// Every record of the copied tier before this one has its copy...
    pub from_seq: u64,
    /// ...among the records of the copying tier before this one.
    pub to_seq: u64,
}

const MARK_LEN: usize = 20;

impl CopyMark {
    fn encode(&self) -> [u8; MARK_LEN] {
        let mut b = [0u8; MARK_LEN];
        b[..8].copy_from_slice(&self.from_seq.to_le_bytes());
        b[8..16].copy_from_slice(&self.to_seq.to_le_bytes());
        let crc = crc32fast::hash(&b[..16]);
        b[16..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// A mark read back; anything but a whole, intact one is `None`.
    fn decode(b: &[u8]) -> Option<CopyMark> {
        let b: &[u8; MARK_LEN] = b.try_into().ok()?;
        let (body, crc) = b.split_at(16);
        if crc32fast::hash(body).to_le_bytes() != crc {
            return None;
        }
        let (from, to) = body.split_at(8);
        Some(CopyMark {
            from_seq: u64::from_le_bytes(from.try_into().ok()?),
            to_seq: u64::from_le_bytes(to.try_into().ok()?),
        })
    }
}

/// What opening finds of a pair's mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    /// No file: the pair has never had copies.
    None,
    /// A mark to look back to.
    Mark(CopyMark),
    /// A file that does not hold an intact mark: look back to the start.
    Damaged,
}

/// Reads a pair's mark.
pub(crate) fn read(path: &Path) -> io::Result<Found> {
    match std::fs::read(path) {
        Ok(b) => Ok(CopyMark::decode(&b).map_or(Found::Damaged, Found::Mark)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Found::None),
        Err(e) => Err(e),
    }
}

/// Opens (creating) a pair's mark file for [`write`].
pub(crate) fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

/// Writes a mark over the file's old one; with `sync`, durably (and the
/// directory entry too, for a file just created).
pub(crate) fn write(file: &File, path: &Path, mark: CopyMark, sync: bool) -> io::Result<()> {
    file.write_all_at(&mark.encode(), 0)?;
    file.set_len(MARK_LEN as u64)?;
    if sync {
        file.sync_all()?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
    }
    Ok(())
}

/// How long after the oldest record a tier keeps a copy may have been
/// written and still have been disposed of with older ones: copies wait at
/// most [`crate::AuditOptions::copy_delay`] (a minute in `rampart.toml`),
/// so an hour is ample.
pub(crate) const DISPOSAL_MARGIN_NANOS: u64 = 3_600_000_000_000;

/// What [`crate::AuditReader::check_copies`] found of one pair of tiers:
/// whether every record of `from` that carries a copy has that copy in `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyCheck {
    /// The tier whose records carry copies.
    pub from: Tier,
    /// The tier the copies go to.
    pub to: Tier,
    /// Records of `from` that carry a copy for `to`.
    pub marked: u64,
    /// Of those, how many have their copy in `to`.
    pub present: u64,
    /// How many are older than every record `to` still keeps (by its
    /// retention, up to an hour's margin): their copies were disposed of.
    pub disposed: u64,
    /// Sequence numbers (in `from`) of records after the pair's mark whose
    /// copy is not in `to`: on their way in a running log (written within
    /// the copy delay), or left out by a crash (the next open writes them).
    pub pending: Vec<u64>,
    /// Sequence numbers of records before the mark whose copy is not in
    /// `to`, though the mark says every copy before it was durable: lost.
    pub lost: Vec<u64>,
}

impl CopyCheck {
    /// Whether no copy is lost (pending ones are not a fault).
    pub fn is_ok(&self) -> bool {
        self.lost.is_empty()
    }
}

/// At most this many sequence numbers are named in a report line.
const NAMED: usize = 5;

fn seqs(f: &mut std::fmt::Formatter<'_>, seqs: &[u64]) -> std::fmt::Result {
    for (i, s) in seqs.iter().take(NAMED).enumerate() {
        write!(f, "{}{s}", if i == 0 { "" } else { ", " })?;
    }
    if seqs.len() > NAMED {
        write!(f, ", ...")?;
    }
    Ok(())
}

impl std::fmt::Display for CopyCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "copies {} -> {}: {} of {} present",
            self.from, self.to, self.present, self.marked
        )?;
        if self.disposed > 0 {
            write!(f, ", {} disposed of by retention", self.disposed)?;
        }
        if !self.pending.is_empty() {
            write!(f, "\n  {} not written yet (seq ", self.pending.len())?;
            seqs(f, &self.pending)?;
            write!(
                f,
                "): a running node writes them within [audit] copy_delay_ms, a stopped one when it next starts"
            )?;
        }
        if !self.lost.is_empty() {
            write!(f, "\n  {} LOST (seq ", self.lost.len())?;
            seqs(f, &self.lost)?;
            write!(
                f,
                "): missing from {} though its mark says they were written",
                self.to
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_reads_back_and_damage_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("security")).unwrap();
        let path = mark_path(dir.path(), Tier::ApiAccess, Tier::Security);
        assert!(path.ends_with("security/copies-from-api-access"));
        assert_eq!(read(&path).unwrap(), Found::None);
        let f = open(&path).unwrap();
        let m = CopyMark {
            from_seq: 7,
            to_seq: 3,
        };
        write(&f, &path, m, true).unwrap();
        assert_eq!(read(&path).unwrap(), Found::Mark(m));
        let later = CopyMark {
            from_seq: 70_000,
            to_seq: 300,
        };
        write(&f, &path, later, false).unwrap();
        assert_eq!(read(&path).unwrap(), Found::Mark(later));
        // a flipped bit, a short file, an empty one: look back to the start
        let mut b = std::fs::read(&path).unwrap();
        b[3] ^= 1;
        std::fs::write(&path, &b).unwrap();
        assert_eq!(read(&path).unwrap(), Found::Damaged);
        std::fs::write(&path, &b[..10]).unwrap();
        assert_eq!(read(&path).unwrap(), Found::Damaged);
        std::fs::write(&path, b"").unwrap();
        assert_eq!(read(&path).unwrap(), Found::Damaged);
    }
}
