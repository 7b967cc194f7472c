//! Reading the log back: search with filters, JSON-lines export, and
//! inclusion proofs. Needs the encryption key for events; proofs need only
//! the public key.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use base64::Engine as _;
use ed25519_dalek::VerifyingKey;
use zeroize::Zeroizing;

use crate::checkpoint;
use crate::copies::{self, CopyCheck, CopyMark};
use crate::error::AuditError;
use crate::event::{format_rfc3339, unix_nanos, Event, Outcome, Record, Tier};
use crate::format::SegmentReader;
use crate::keys::RecordCipher;
use crate::merkle::{leaf_hash, to_hex, PrunedTree};
use crate::proof::InclusionProof;
use crate::verify::{
    list_segments, load_checkpoints_from, read_header, scan_tier, Finding, Problem, SegmentRange,
};

/// Which records to return. Every filter that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// Only this tier.
    pub tier: Option<Tier>,
    /// Only this principal (exact match).
    pub actor: Option<String>,
    /// Only this action (exact match).
    pub action: Option<String>,
    /// Only this outcome.
    pub outcome: Option<Outcome>,
    /// Records taken at or after this time.
    pub from: Option<SystemTime>,
    /// Records taken before this time.
    pub to: Option<SystemTime>,
    /// At most this many records.
    pub limit: Option<usize>,
    /// Newest first (with `limit`: the latest records). Search only;
    /// export always streams oldest first, tier by tier.
    pub newest_first: bool,
}

impl Query {
    /// Checks the query: `from` must not be after `to`.
    pub fn validate(&self) -> Result<(), AuditError> {
        if let (Some(from), Some(to)) = (self.from, self.to) {
            if from > to {
                return Err(AuditError::InvalidTimeRange {
                    from: format_rfc3339(unix_nanos(from)),
                    to: format_rfc3339(unix_nanos(to)),
                });
            }
        }
        Ok(())
    }

    fn matches(&self, e: &Event) -> bool {
        self.actor.as_deref().is_none_or(|a| a == e.actor.principal)
            && self.action.as_deref().is_none_or(|a| a == e.action)
            && self.outcome.is_none_or(|o| o == e.outcome)
    }
}

/// Reads a log directory with the encryption key. Safe to use while a
/// writer appends: a half-written batch at the end is simply not seen yet.
pub struct AuditReader {
    dir: PathBuf,
    cipher: RecordCipher,
}

impl std::fmt::Debug for AuditReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditReader")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl AuditReader {
    /// A reader over `dir` with the record encryption key.
    pub fn new(dir: impl AsRef<Path>, encryption_key: Zeroizing<[u8; 32]>) -> Self {
        AuditReader {
            dir: dir.as_ref().to_path_buf(),
            cipher: RecordCipher::new(&encryption_key),
        }
    }

    /// Records matching `query`, across tiers in time order (oldest first,
    /// or newest first with [`Query::newest_first`]), at most `limit`.
    pub fn search(&self, query: &Query) -> Result<Vec<Record>, AuditError> {
        query.validate()?;
        let limit = query.limit.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        for tier in query.tier.map_or(Tier::ALL.to_vec(), |t| vec![t]) {
            out.extend(self.tier_records(tier, query, limit)?);
        }
        out.sort_by_key(|r| (r.time_unix_nanos, r.event.tier, r.seq));
        if query.newest_first {
            out.reverse();
        }
        out.truncate(limit);
        Ok(out)
    }

    /// Writes records matching `query` as JSON lines, streaming, oldest
    /// first tier by tier; returns how many.
    pub fn export_jsonl(&self, out: &mut dyn Write, query: &Query) -> Result<u64, AuditError> {
        let mut n = 0u64;
        let mut w = io::BufWriter::new(out);
        self.for_each(query, &mut |r| {
            serde_json::to_writer(&mut w, &r).map_err(|e| AuditError::Export(e.into()))?;
            w.write_all(b"\n").map_err(AuditError::Export)?;
            n += 1;
            Ok(())
        })?;
        w.flush().map_err(AuditError::Export)?;
        Ok(n)
    }

    /// Oldest first within each tier, tier by tier; for export, which
    /// streams and so does not sort.
    fn for_each(
        &self,
        query: &Query,
        f: &mut dyn FnMut(Record) -> Result<(), AuditError>,
    ) -> Result<(), AuditError> {
        query.validate()?;
        let limit = query.limit.unwrap_or(usize::MAX);
        let mut seen = 0usize;
        let mut buf = Vec::new();
        for tier in query.tier.map_or(Tier::ALL.to_vec(), |t| vec![t]) {
            let segments = self.segments_for(tier, query)?;
            for (newest, path) in &segments {
                if seen >= limit {
                    return Ok(());
                }
                self.segment_records(tier, path, *newest, query, &mut buf, &mut |r| {
                    f(r)?;
                    seen += 1;
                    Ok(seen < limit)
                })?;
            }
        }
        Ok(())
    }

    /// The segments of `tier` that can hold a record `query`'s time range
    /// takes, oldest first, each with whether it is the tier's newest (which
    /// may end in a batch still being written). A sealed segment whose span
    /// in the time index misses the range is left out; one without a span
    /// (or with no range asked) is kept. See [`crate::times`].
    fn segments_for(&self, tier: Tier, query: &Query) -> Result<Vec<(bool, PathBuf)>, AuditError> {
        let tier_dir = self.dir.join(tier.as_str());
        let segments = list_segments(&tier_dir)?;
        let from = query.from.map(unix_nanos);
        let to = query.to.map(unix_nanos);
        // An index that cannot be read passes nothing over: every segment
        // is read, as before there was one.
        let spans = if from.is_some() || to.is_some() {
            crate::times::load_or_empty(tier, &tier_dir, "the search reads every segment")
        } else {
            Default::default()
        };
        let n = segments.len();
        Ok(segments
            .into_iter()
            .enumerate()
            .filter(|(i, (number, _))| {
                i + 1 == n || spans.get(number).is_none_or(|s| s.meets(from, to))
            })
            .map(|(i, (_, path))| (i + 1 == n, path))
            .collect())
    }

    /// Up to `limit` matching records of one tier, newest first if asked.
    fn tier_records(
        &self,
        tier: Tier,
        query: &Query,
        limit: usize,
    ) -> Result<Vec<Record>, AuditError> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        let segments = self.segments_for(tier, query)?;
        let n = segments.len();
        let order: Vec<usize> = if query.newest_first {
            (0..n).rev().collect()
        } else {
            (0..n).collect()
        };
        for i in order {
            let Some((newest, path)) = segments.get(i) else {
                continue;
            };
            let mut found = Vec::new();
            let room = limit - out.len();
            self.segment_records(tier, path, *newest, query, &mut buf, &mut |r| {
                found.push(r);
                // Newest first needs the whole segment to know its newest.
                Ok(query.newest_first || found.len() < room)
            })?;
            if query.newest_first {
                found.reverse();
            }
            found.truncate(room);
            out.append(&mut found);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Every record of `tier` from sequence number `from` on, in order, as
    /// its time and decrypted stored form: what opening the log reads to
    /// find the derived copies a crash left out (see [`crate::copies`]).
    /// Reads only the segments that can hold them. A torn frame ends the
    /// newest segment (opening has cut it by then); anywhere else it is
    /// corruption. Returns whether record `from` is no longer kept (the
    /// tier's oldest segment starts after it: retention disposed of it).
    pub(crate) fn plain_records_from(
        &self,
        tier: Tier,
        from: u64,
        f: &mut dyn FnMut(u64, u64, &[u8]),
    ) -> Result<bool, AuditError> {
        let SegmentsFrom {
            segments,
            first_seq,
        } = self.segments_from(tier, from)?;
        let gone = first_seq.is_none() && !segments.is_empty();
        let n = segments.len();
        let mut buf = Vec::new();
        for (i, (_, path)) in segments.iter().enumerate() {
            each_frame(tier, path, i + 1 == n, &mut buf, &mut |frame| {
                let seq = frame.seq();
                if seq >= from {
                    let t = frame.time_unix_nanos();
                    let plain = self
                        .cipher
                        .open(tier.code(), t, frame.nonce(), frame.ciphertext())
                        .ok_or(AuditError::Decrypt { tier, seq })?;
                    f(seq, t, &plain);
                }
                Ok(true)
            })?;
        }
        Ok(gone)
    }

    /// The pairs of tiers (`from`, `to`) this log has kept derived copies
    /// for: those with a mark file (made when the log is first opened with
    /// the pair, before any copy).
    pub fn copy_pairs(&self) -> Vec<(Tier, Tier)> {
        let mut pairs = Vec::new();
        for to in Tier::ALL {
            for from in Tier::ALL {
                if from != to && copies::mark_path(&self.dir, from, to).exists() {
                    pairs.push((from, to));
                }
            }
        }
        pairs
    }

    /// Checks that every record of `from` carrying a copy for `to` has it
    /// there (matched, as opening does, by time and content). A copy
    /// missing after the pair's mark is pending (on its way, or left out by
    /// a crash for the next open to write); one missing before it is lost.
    /// Safe on a running log: the mark is read first, and a copy is durable
    /// before the mark passes its record. Holds a hash of each record of
    /// `to` (about 100 bytes a record) while it reads `from`.
    pub fn check_copies(&self, from: Tier, to: Tier) -> Result<CopyCheck, AuditError> {
        let mark_path = copies::mark_path(&self.dir, from, to);
        let mark = match copies::read(&mark_path).map_err(|e| AuditError::io(&mark_path, e))? {
            copies::Found::Mark(m) => m.from_seq,
            copies::Found::None | copies::Found::Damaged => 0,
        };
        let found = self.match_copies(from, to, CopyMark::default())?;
        let mut check = CopyCheck {
            from,
            to,
            marked: found.marked,
            present: found.marked - found.missing.len() as u64,
            disposed: 0,
            pending: Vec::new(),
            lost: Vec::new(),
        };
        for (seq, time, _) in found.missing {
            let before_kept = found
                .to_oldest
                .is_none_or(|oldest| time < oldest.saturating_add(copies::DISPOSAL_MARGIN_NANOS));
            if found.to_disposed && before_kept {
                check.disposed += 1;
            } else if seq >= mark {
                check.pending.push(seq);
            } else {
                check.lost.push(seq);
            }
        }
        Ok(check)
    }

    /// The records of `from` from `start.from_seq` on that carry a copy for
    /// `to`, and which of those copies are not among the records of `to`
    /// from `start.to_seq` on, matched by time and content: what opening
    /// writes after a crash and what [`AuditReader::check_copies`] reports.
    pub(crate) fn match_copies(
        &self,
        from: Tier,
        to: Tier,
        start: CopyMark,
    ) -> Result<CopyMatch, AuditError> {
        let mut have = std::collections::HashSet::new();
        let mut to_oldest = None;
        let to_disposed = self.plain_records_from(to, start.to_seq, &mut |_, time, plain| {
            to_oldest.get_or_insert(time);
            have.insert((time, leaf_hash(plain)));
        })?;
        let mut found = CopyMatch {
            marked: 0,
            missing: Vec::new(),
            from_next: start.from_seq,
            to_oldest,
            to_disposed,
        };
        self.plain_records_from(from, start.from_seq, &mut |seq, time, plain| {
            found.from_next = found.from_next.max(seq + 1);
            if let Some((tier, copy)) = crate::event::copy_of(plain) {
                if tier == to {
                    found.marked += 1;
                    if !have.contains(&(time, leaf_hash(&copy))) {
                        found.missing.push((seq, time, copy));
                    }
                }
            }
        })?;
        Ok(found)
    }

    /// The segments of `tier` (number and path, oldest first) from the one
    /// that holds record `seq` on, and that one's first sequence number: it
    /// is the newest that starts at or before `seq`. When `seq` is older
    /// than every segment kept, all of them and `None`. Reads headers from
    /// the newest back, so a record near the tail costs one or two, not one
    /// per segment.
    fn segments_from(&self, tier: Tier, seq: u64) -> Result<SegmentsFrom, AuditError> {
        let mut segments = list_segments(&self.dir.join(tier.as_str()))?;
        for i in (0..segments.len()).rev() {
            let Some((_, path)) = segments.get(i) else {
                continue;
            };
            let first_seq = read_header(tier, path)?.first_seq;
            if first_seq <= seq {
                return Ok(SegmentsFrom {
                    segments: segments.split_off(i),
                    first_seq: Some(first_seq),
                });
            }
        }
        Ok(SegmentsFrom {
            segments,
            first_seq: None,
        })
    }

    /// Decrypts the records of one segment that match, in order, until
    /// `f` says stop. `last`: the newest segment, which may end in a batch
    /// still being written.
    fn segment_records(
        &self,
        tier: Tier,
        path: &Path,
        last: bool,
        query: &Query,
        buf: &mut Vec<u8>,
        f: &mut dyn FnMut(Record) -> Result<bool, AuditError>,
    ) -> Result<(), AuditError> {
        let from = query.from.map(unix_nanos);
        let to = query.to.map(unix_nanos);
        each_frame(tier, path, last, buf, &mut |frame| {
            let t = frame.time_unix_nanos();
            if from.is_some_and(|from| t < from) || to.is_some_and(|to| t >= to) {
                return Ok(true);
            }
            let seq = frame.seq();
            let plain = self
                .cipher
                .open(tier.code(), t, frame.nonce(), frame.ciphertext())
                .ok_or(AuditError::Decrypt { tier, seq })?;
            let event = Event::decode(&plain).map_err(|reason| AuditError::BadEvent {
                tier,
                seq,
                reason,
            })?;
            if event.tier != tier || !query.matches(&event) {
                return Ok(true);
            }
            f(Record {
                seq,
                time: format_rfc3339(t),
                time_unix_nanos: t,
                hash: to_hex(&crate::merkle::leaf_hash(frame.body)),
                event,
            })
        })
    }

    /// An RFC 6962 inclusion proof for record `seq` of `tier` against the
    /// tier's latest valid checkpoint that covers it.
    pub fn prove(
        &self,
        tier: Tier,
        seq: u64,
        key: &VerifyingKey,
    ) -> Result<InclusionProof, AuditError> {
        // Start at the segment that holds the record: its header has the
        // frontier over everything before it, which is all the proof needs.
        let from = self.segments_from(tier, seq)?;
        let start = from
            .first_seq
            .zip(from.segments.first())
            .map(|(f, (n, _))| (*n, f));
        // Only the checkpoints from there on are of use (and checked).
        let mut problems = Vec::new();
        let cps = load_checkpoints_from(
            tier,
            &[checkpoint::path_for(&self.dir, tier)],
            key,
            &mut problems,
            start.map_or(0, |(_, first_seq)| first_seq),
        )?;
        let Some(latest) = cps.last() else {
            return Err(AuditError::NotCheckpointed { tier, seq });
        };
        let size = latest.v.cp.count;
        if seq >= size {
            return Err(AuditError::NotCheckpointed { tier, seq });
        }
        let Some((resume_from, _)) = start else {
            return Err(AuditError::NoSuchRecord { tier, seq });
        };
        let range = SegmentRange {
            resume_from: Some(resume_from),
            stop_before: None,
        };
        let mut leaves = Vec::new();
        let mut record = None;
        let tier_dir = self.dir.join(tier.as_str());
        let scan = scan_tier(tier, &tier_dir, &cps, range, &mut |frame, leaf| {
            if frame.seq() < size {
                leaves.push(*leaf);
            }
            if frame.seq() == seq {
                record = Some(frame.body.to_vec());
            }
        })?;
        if let Some(f) = scan.findings.into_iter().next() {
            return Err(AuditError::Corrupt(Box::new(f)));
        }
        let Some(record) = record else {
            return Err(AuditError::NoSuchRecord { tier, seq });
        };
        let tree = PrunedTree {
            base: &scan.base,
            leaves: &leaves,
        };
        let path = tree
            .audit_path(seq)
            .ok_or(AuditError::InvalidProof("cannot build the audit path"))?;
        if tree.root() != Some(latest.v.root) {
            return Err(AuditError::InvalidProof(
                "records do not match the checkpoint root",
            ));
        }
        Ok(InclusionProof {
            tier,
            seq,
            tree_size: size,
            record: base64::engine::general_purpose::STANDARD.encode(&record),
            leaf_hash: to_hex(&crate::merkle::leaf_hash(&record)),
            audit_path: path.iter().map(|h| to_hex(h)).collect(),
            checkpoint: latest.v.cp.clone(),
        })
    }
}

/// What [`AuditReader::segments_from`] finds.
struct SegmentsFrom {
    /// Number and path of each segment, oldest first.
    segments: Vec<(u64, PathBuf)>,
    /// The first one's first sequence number, when it holds the record.
    first_seq: Option<u64>,
}

/// What [`AuditReader::match_copies`] found.
pub(crate) struct CopyMatch {
    /// Records of `from` read that carry a copy for `to`.
    pub marked: u64,
    /// Those whose copy `to` lacks: their sequence number, time and the
    /// copy's stored form, in order.
    pub missing: Vec<(u64, u64, Vec<u8>)>,
    /// The sequence number after the last record of `from` read.
    pub from_next: u64,
    /// The time of the first record of `to` read.
    pub to_oldest: Option<u64>,
    /// Whether `to` no longer keeps record `start.to_seq` (retention
    /// disposed of it and those before).
    pub to_disposed: bool,
}

/// Reads one segment file of `tier` into `buf` and passes each frame to
/// `f` in order, until it says stop. `last`: the tier's newest segment,
/// whose torn tail (a batch still being written) ends it; a damaged frame
/// anywhere else is corruption.
fn each_frame(
    tier: Tier,
    path: &Path,
    last: bool,
    buf: &mut Vec<u8>,
    f: &mut dyn FnMut(crate::format::Frame<'_>) -> Result<bool, AuditError>,
) -> Result<(), AuditError> {
    buf.clear();
    File::open(path)
        .and_then(|mut file| file.read_to_end(buf))
        .map_err(|e| AuditError::io(path, e))?;
    let corrupt = |problem| {
        AuditError::Corrupt(Box::new(Finding {
            tier,
            file: Some(path.to_path_buf()),
            seq: None,
            offset: None,
            problem,
        }))
    };
    let (_, mut reader) = SegmentReader::new(buf).map_err(|e| corrupt(Problem::Header(e)))?;
    while let Some(frame) = reader.next_frame() {
        let frame = match frame {
            Ok(frame) => frame,
            Err(_) if last => break,
            Err(e) => return Err(corrupt(Problem::Frame(e))),
        };
        if !f(frame)? {
            break;
        }
    }
    Ok(())
}
