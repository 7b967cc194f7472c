//! Verification of a log at rest, with the public key only: framing and
//! checksums, sequence numbers, the hash chain, Merkle roots against signed
//! checkpoints, and the checkpoint copy against the log (a cut tail).
//!
//! The same scan recovers the writer's state on open, finds the state at a
//! retention cut, and collects leaves for proofs.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;

use crate::checkpoint::{self, Checkpoint, CheckpointError, Verified};
use crate::error::AuditError;
use crate::event::Tier;
use crate::format::{Frame, FrameError, HeaderError, SegmentReader};
use crate::merkle::{leaf_hash, to_hex, Frontier, Hash};

/// One problem found, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The tier.
    pub tier: Tier,
    /// The segment or checkpoint file, when one is to blame.
    pub file: Option<PathBuf>,
    /// The record's sequence number (the one expected at that place).
    pub seq: Option<u64>,
    /// Byte offset in the file.
    pub offset: Option<u64>,
    /// What is wrong.
    pub problem: Problem,
}

/// What is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The segment header is damaged.
    Header(HeaderError),
    /// The segment belongs to another tier.
    WrongTier(Tier),
    /// The chain head or Merkle frontier in the segment header differs
    /// from the records before the segment.
    HeaderState,
    /// The header's segment number differs from the file name's.
    SegmentNumber {
        /// In the header.
        header: u64,
        /// In the file name.
        name: u64,
    },
    /// The segment does not start where the previous one ended: records or
    /// segments are missing.
    SegmentStart {
        /// The header's first seq.
        found: u64,
        /// The seq that should come next.
        expected: u64,
    },
    /// A record frame is damaged.
    Frame(FrameError),
    /// Non-zero bytes after the end of the records.
    TrailingBytes,
    /// A torn write at the end of the newest segment (a crash not yet
    /// repaired by reopening, or a batch being written); a warning.
    TornTail(FrameError),
    /// A record with the wrong sequence number: deleted, inserted or reordered records.
    Sequence {
        /// The seq found.
        found: u64,
        /// The seq expected.
        expected: u64,
    },
    /// The record's predecessor hash does not match the previous record.
    ChainBroken,
    /// The oldest segment starts after seq 0 and no disposal checkpoint accounts for it.
    MissingDisposal {
        /// The first seq present.
        first_seq: u64,
    },
    /// A checkpoint line is not a checkpoint.
    CheckpointUnreadable {
        /// Line number.
        line: usize,
        /// The parse error.
        reason: String,
    },
    /// A checkpoint fails its checks (signature, hashes).
    Checkpoint {
        /// Line number.
        line: usize,
        /// What failed.
        error: CheckpointError,
    },
    /// A checkpoint names another tier.
    CheckpointTier {
        /// Line number.
        line: usize,
    },
    /// The Merkle root over the records differs from the signed one.
    RootMismatch {
        /// The checkpoint's record count.
        count: u64,
        /// Line number of the checkpoint.
        line: usize,
    },
    /// The chain head differs from the signed one.
    ChainHeadMismatch {
        /// The checkpoint's record count.
        count: u64,
        /// Line number of the checkpoint.
        line: usize,
    },
    /// A checkpoint counts more records than the log holds: the tail was cut.
    TailMissing {
        /// Records the checkpoint counts.
        checkpoint_count: u64,
        /// Records the log holds.
        log_count: u64,
    },
    /// The time index gives a segment another span than its records have:
    /// a search bounded in time could pass over records it should return.
    TimeIndex {
        /// The segment.
        segment: u64,
        /// Oldest and newest record time (Unix nanoseconds) in the index.
        indexed: (u64, u64),
        /// The same, read from the segment (`None`: it has no records).
        actual: Option<(u64, u64)>,
    },
    /// A file could not be read.
    Unreadable(String),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Header(e) => write!(f, "{e}"),
            Problem::WrongTier(t) => write!(f, "segment belongs to tier {t}"),
            Problem::HeaderState => write!(
                f,
                "segment header's chain head or Merkle frontier differs from the records before it"
            ),
            Problem::SegmentNumber { header, name } => {
                write!(f, "header says segment {header} but the file is named for {name}")
            }
            Problem::SegmentStart { found, expected } => write!(
                f,
                "segment starts at seq {found} but seq {expected} comes next: records are missing"
            ),
            Problem::Frame(e) => write!(f, "{e}"),
            Problem::TrailingBytes => write!(f, "unexpected bytes after the last record"),
            Problem::TornTail(e) => write!(f, "torn write at the end of the newest segment ({e}); reopen the log to repair"),
            Problem::Sequence { found, expected } => write!(
                f,
                "record has seq {found} where seq {expected} belongs: records deleted, inserted or reordered"
            ),
            Problem::ChainBroken => write!(f, "hash chain broken: predecessor hash does not match"),
            Problem::MissingDisposal { first_seq } => write!(
                f,
                "records before seq {first_seq} are gone and no signed disposal checkpoint accounts for them"
            ),
            Problem::CheckpointUnreadable { line, reason } => {
                write!(f, "checkpoint line {line} is unreadable: {reason}")
            }
            Problem::Checkpoint { line, error } => write!(f, "checkpoint line {line}: {error}"),
            Problem::CheckpointTier { line } => write!(f, "checkpoint line {line} names another tier"),
            Problem::RootMismatch { count, line } => write!(
                f,
                "Merkle root over {count} records differs from checkpoint line {line}"
            ),
            Problem::ChainHeadMismatch { count, line } => write!(
                f,
                "chain head after {count} records differs from checkpoint line {line}"
            ),
            Problem::TailMissing { checkpoint_count, log_count } => write!(
                f,
                "checkpoint counts {checkpoint_count} records but the log holds {log_count}: the tail was cut"
            ),
            Problem::TimeIndex {
                segment,
                indexed,
                actual,
            } => {
                write!(
                    f,
                    "the time index gives segment {segment} records from {} to {}, ",
                    indexed.0, indexed.1
                )?;
                match actual {
                    Some((a, b)) => write!(f, "but they run from {a} to {b}")?,
                    None => write!(f, "but it has none")?,
                }
                write!(f, ": time-bounded searches could miss records")
            }
            Problem::Unreadable(e) => write!(f, "cannot read: {e}"),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tier {}", self.tier)?;
        if let Some(file) = &self.file {
            write!(f, ", {}", file.display())?;
        }
        if let Some(seq) = self.seq {
            write!(f, ", seq {seq}")?;
        }
        if let Some(off) = self.offset {
            write!(f, " (offset {off})")?;
        }
        write!(f, ": {}", self.problem)
    }
}

/// What verification saw of one tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierReport {
    /// The tier.
    pub tier: Tier,
    /// Segment files read.
    pub segments: usize,
    /// Records read.
    pub records: u64,
    /// First seq present (after retention).
    pub first_seq: u64,
    /// Next seq (the Merkle tree size).
    pub next_seq: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Checkpoints matched against the records.
    pub checkpoints_matched: usize,
    /// Merkle root over all records, hex.
    pub merkle_root: String,
    /// Chain head, hex.
    pub chain_head: String,
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Per tier, for tiers that exist.
    pub tiers: Vec<TierReport>,
    /// Problems found; empty when the log verifies.
    pub findings: Vec<Finding>,
    /// Things that do not fail verification: a torn write at the very end
    /// of a tier (a crash not yet repaired by reopening, or a batch still
    /// being written in a live log). Records past the last checkpoint are
    /// not covered by any signature, so a torn tail hides nothing that a
    /// clean cut would not; a cut below a checkpoint is a finding.
    pub warnings: Vec<Finding>,
    /// Segment bytes read.
    pub bytes: u64,
    /// Time taken.
    pub elapsed: Duration,
}

impl VerifyReport {
    /// Whether nothing was found.
    pub fn is_ok(&self) -> bool {
        self.findings.is_empty()
    }

    /// Segment bytes verified per second, in MB (10^6 bytes).
    pub fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for t in &self.tiers {
            writeln!(
                f,
                "{:<12} {:>10} records (seq {}..{}) in {} segments, {} checkpoints matched, root {}",
                t.tier.as_str(),
                t.records,
                t.first_seq,
                t.next_seq,
                t.segments,
                t.checkpoints_matched,
                t.merkle_root
            )?;
        }
        for warning in &self.warnings {
            writeln!(f, "WARN {warning}")?;
        }
        for finding in &self.findings {
            writeln!(f, "FAIL {finding}")?;
        }
        write!(
            f,
            "{} bytes in {:.3}s ({:.0} MB/s): {}",
            self.bytes,
            self.elapsed.as_secs_f64(),
            self.mb_per_sec(),
            if self.is_ok() { "OK" } else { "FAILED" }
        )
    }
}

/// A failed verification: every finding, and the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyFailure {
    /// The report, whose findings are not empty.
    pub report: VerifyReport,
}

impl fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.report.findings.len();
        write!(f, "audit log verification failed with {n} problem(s)")?;
        if let Some(first) = self.report.findings.first() {
            write!(f, "; first: {first}")?;
        }
        Ok(())
    }
}

/// A segment as the scan found it.
#[derive(Debug, Clone)]
pub(crate) struct SegmentInfo {
    pub(crate) path: PathBuf,
    pub(crate) number: u64,
    pub(crate) first_seq: u64,
    /// One past the last seq in it.
    pub(crate) end_seq: u64,
    /// Where its records start (after the header).
    pub(crate) data_start: u64,
    /// Where its records end.
    pub(crate) data_end: u64,
    /// Its oldest and newest record times (`None` when it has none).
    pub(crate) span: Option<crate::times::Span>,
    pub(crate) created: u64,
    pub(crate) frontier_end: Frontier,
    pub(crate) chain_end: Hash,
}

impl SegmentInfo {
    /// Its newest record's time (0 when it has none).
    pub(crate) fn max_time(&self) -> u64 {
        self.span.map_or(0, |s| s.newest)
    }
}

/// Which segments a scan reads.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SegmentRange {
    /// Start at this segment, taking the state before it from its header
    /// instead of reading everything before it.
    pub(crate) resume_from: Option<u64>,
    /// Stop before this segment.
    pub(crate) stop_before: Option<u64>,
}

/// A checkpoint from a file, verified.
#[derive(Debug, Clone)]
pub(crate) struct FiledCheckpoint {
    pub(crate) file: PathBuf,
    pub(crate) line: usize,
    pub(crate) v: Verified,
}

/// Result of scanning one tier.
#[derive(Debug)]
pub(crate) struct TierScan {
    pub(crate) tier: Tier,
    pub(crate) segments: Vec<SegmentInfo>,
    pub(crate) first_seq: u64,
    /// The frontier where the scan started (over records `0..first_seq`).
    pub(crate) base: Frontier,
    pub(crate) frontier: Frontier,
    pub(crate) chain_head: Hash,
    pub(crate) findings: Vec<Finding>,
    /// A frame error at the end of the newest segment, kept apart: on open it
    /// is a torn write to cut, in `verify` a finding.
    pub(crate) torn: Option<Finding>,
    pub(crate) bytes: u64,
    pub(crate) checkpoints_matched: usize,
}

/// Lists `<tier_dir>/<20 digits>.seg`, sorted by number.
pub(crate) fn list_segments(tier_dir: &Path) -> Result<Vec<(u64, PathBuf)>, AuditError> {
    let rd = match fs::read_dir(tier_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(AuditError::io(tier_dir, e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| AuditError::io(tier_dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".seg") else {
            continue;
        };
        if stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(n) = stem.parse::<u64>() {
                out.push((n, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Reads just the header of a segment file.
pub(crate) fn read_header(
    tier: Tier,
    path: &Path,
) -> Result<crate::format::SegmentHeader, AuditError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|f| f.take(4096).read_to_end(&mut bytes))
        .map_err(|e| AuditError::io(path, e))?;
    crate::format::SegmentHeader::decode(&bytes).map_err(|e| {
        AuditError::Corrupt(Box::new(Finding {
            tier,
            file: Some(path.to_path_buf()),
            seq: None,
            offset: Some(0),
            problem: Problem::Header(e),
        }))
    })
}

/// Segment file name for number `n`.
pub(crate) fn segment_name(n: u64) -> String {
    format!("{n:020}.seg")
}

/// Reads and checks the checkpoint files of a tier; bad lines become findings.
pub(crate) fn load_checkpoints(
    tier: Tier,
    files: &[PathBuf],
    key: &VerifyingKey,
    findings: &mut Vec<Finding>,
) -> Result<Vec<FiledCheckpoint>, AuditError> {
    load_checkpoints_from(tier, files, key, findings, 0)
}

/// [`load_checkpoints`] for a scan that starts at record `from_count`:
/// lines that count fewer records are passed over without checking their
/// signatures (a scan cannot use them, and the files keep every checkpoint
/// the tier ever had, one every thousand records or minute). The newest
/// line of the files is always checked, whatever it counts.
pub(crate) fn load_checkpoints_from(
    tier: Tier,
    files: &[PathBuf],
    key: &VerifyingKey,
    findings: &mut Vec<Finding>,
    from_count: u64,
) -> Result<Vec<FiledCheckpoint>, AuditError> {
    let mut out = Vec::new();
    // The lines that count the most records among those below
    // `from_count`: checked only if none counts `from_count` or more.
    let mut newest_below: Vec<(PathBuf, usize, Checkpoint)> = Vec::new();
    let mut any_from = false;
    for file in files {
        checkpoint::for_each_line(file, &mut |line| {
            let at = |problem| Finding {
                tier,
                file: Some(file.clone()),
                seq: None,
                offset: None,
                problem,
            };
            match line.parsed {
                Err(reason) => findings.push(at(Problem::CheckpointUnreadable {
                    line: line.number,
                    reason,
                })),
                Ok(cp) if cp.tier != tier && cp.count >= from_count => {
                    findings.push(at(Problem::CheckpointTier { line: line.number }))
                }
                Ok(cp) if cp.tier != tier => {}
                Ok(cp) if cp.count >= from_count => {
                    any_from = true;
                    check_line(key, file, line.number, cp, &mut out, findings, tier);
                }
                Ok(cp) => {
                    let below = newest_below.first().map(|(_, _, b)| b.count);
                    if below.is_none_or(|b| b <= cp.count) {
                        if below.is_some_and(|b| b < cp.count) {
                            newest_below.clear();
                        }
                        newest_below.push((file.clone(), line.number, cp));
                    }
                }
            }
        })?;
    }
    if !any_from {
        for (file, number, cp) in newest_below {
            check_line(key, &file, number, cp, &mut out, findings, tier);
        }
    }
    out.sort_by_key(|c| c.v.cp.count);
    Ok(out)
}

/// Checks one checkpoint line's signature: a good one joins `out`, a bad
/// one becomes a finding.
fn check_line(
    key: &VerifyingKey,
    file: &Path,
    number: usize,
    cp: Checkpoint,
    out: &mut Vec<FiledCheckpoint>,
    findings: &mut Vec<Finding>,
    tier: Tier,
) {
    match cp.verified(key) {
        Ok(v) => out.push(FiledCheckpoint {
            file: file.to_path_buf(),
            line: number,
            v,
        }),
        Err(error) => findings.push(Finding {
            tier,
            file: Some(file.to_path_buf()),
            seq: None,
            offset: None,
            problem: Problem::Checkpoint {
                line: number,
                error,
            },
        }),
    }
}

/// Scans a tier's segments in order, checking everything it can and calling
/// `on_record` for each good record. `stop_before` ends the scan before that
/// segment number.
pub(crate) fn scan_tier(
    tier: Tier,
    tier_dir: &Path,
    checkpoints: &[FiledCheckpoint],
    range: SegmentRange,
    on_record: &mut dyn FnMut(&Frame<'_>, &Hash),
) -> Result<TierScan, AuditError> {
    let stop_before = range.stop_before;
    let mut scan = TierScan {
        tier,
        segments: Vec::new(),
        first_seq: 0,
        base: Frontier::new(),
        frontier: Frontier::new(),
        chain_head: [0; 32],
        findings: Vec::new(),
        torn: None,
        bytes: 0,
        checkpoints_matched: 0,
    };
    let mut files = list_segments(tier_dir)?;
    if let Some(stop) = stop_before {
        files.retain(|(n, _)| *n < stop);
    }
    if let Some(from) = range.resume_from {
        files.retain(|(n, _)| *n >= from);
    }
    let mut cp_idx = 0usize;
    let mut buf = Vec::new();
    let n_files = files.len();
    'files: for (i, (number, path)) in files.into_iter().enumerate() {
        let last = i + 1 == n_files;
        let finding = |seq: Option<u64>, offset: Option<u64>, problem| Finding {
            tier,
            file: Some(path.clone()),
            seq,
            offset,
            problem,
        };
        buf.clear();
        if let Err(e) = File::open(&path).and_then(|mut f| f.read_to_end(&mut buf)) {
            scan.findings
                .push(finding(None, None, Problem::Unreadable(e.to_string())));
            break;
        }
        scan.bytes += buf.len() as u64;
        let (header, mut reader) = match SegmentReader::new(&buf) {
            Ok(x) => x,
            Err(e) => {
                scan.findings
                    .push(finding(None, Some(0), Problem::Header(e)));
                break;
            }
        };
        if header.tier != tier {
            scan.findings
                .push(finding(None, Some(0), Problem::WrongTier(header.tier)));
            break;
        }
        if header.segment != number {
            scan.findings.push(finding(
                None,
                Some(0),
                Problem::SegmentNumber {
                    header: header.segment,
                    name: number,
                },
            ));
            break;
        }
        if i == 0 {
            scan.first_seq = header.first_seq;
            if range.resume_from.is_some() {
                // Trust the header's state (checked by its checksum); `verify`
                // never resumes, it recomputes and compares every header.
                match Frontier::from_parts(header.first_seq, header.frontier.clone()) {
                    Some(f) => {
                        scan.frontier = f;
                        scan.chain_head = header.prev_hash;
                    }
                    None => {
                        scan.findings.push(finding(
                            None,
                            Some(0),
                            Problem::Header(HeaderError::BadFrontier),
                        ));
                        break;
                    }
                }
            } else if header.first_seq > 0 {
                let disposal = checkpoints
                    .iter()
                    .rev()
                    .find(|c| c.v.cp.count == header.first_seq && c.v.frontier.is_some());
                match disposal.and_then(|c| c.v.frontier.clone().map(|f| (f, c.v.chain_head))) {
                    Some((f, head)) => {
                        scan.frontier = f;
                        scan.chain_head = head;
                    }
                    None => {
                        scan.findings.push(finding(
                            Some(header.first_seq),
                            Some(0),
                            Problem::MissingDisposal {
                                first_seq: header.first_seq,
                            },
                        ));
                        break;
                    }
                }
            }
            scan.base = scan.frontier.clone();
            while checkpoints
                .get(cp_idx)
                .is_some_and(|c| c.v.cp.count < scan.first_seq)
            {
                cp_idx += 1;
            }
            check_checkpoints(&mut scan, checkpoints, &mut cp_idx, &path);
        } else if header.first_seq != scan.frontier.size() {
            scan.findings.push(finding(
                Some(scan.frontier.size()),
                Some(0),
                Problem::SegmentStart {
                    found: header.first_seq,
                    expected: scan.frontier.size(),
                },
            ));
            break;
        }
        if header.prev_hash != scan.chain_head || header.frontier != scan.frontier.nodes() {
            scan.findings.push(finding(
                Some(header.first_seq),
                Some(0),
                Problem::HeaderState,
            ));
            break;
        }
        let mut info = SegmentInfo {
            path: path.clone(),
            number,
            data_start: header.encoded_len() as u64,
            first_seq: header.first_seq,
            end_seq: header.first_seq,
            data_end: 0,
            span: None,
            created: header.created_unix_nanos,
            frontier_end: Frontier::new(),
            chain_end: [0; 32],
        };
        // Frame and checksum pass, then leaf hashes (the bulk of the work)
        // on both cores, then the order-dependent checks.
        let mut frames = Vec::new();
        let mut frame_err = None;
        while let Some(next) = reader.next_frame() {
            match next {
                Ok(frame) => frames.push(frame),
                Err(e) => {
                    frame_err = Some(e);
                    break;
                }
            }
        }
        let leaves = leaf_hashes(&frames);
        for (frame, leaf) in frames.iter().zip(&leaves) {
            let expected = scan.frontier.size();
            if frame.seq() != expected {
                scan.findings.push(finding(
                    Some(expected),
                    Some(frame.offset),
                    Problem::Sequence {
                        found: frame.seq(),
                        expected,
                    },
                ));
                break 'files;
            }
            if frame.prev_hash() != scan.chain_head {
                scan.findings.push(finding(
                    Some(expected),
                    Some(frame.offset),
                    Problem::ChainBroken,
                ));
                break 'files;
            }
            on_record(frame, leaf);
            scan.chain_head = *leaf;
            scan.frontier.push(*leaf);
            info.span = crate::times::widen(info.span, frame.time_unix_nanos());
            if checkpoints
                .get(cp_idx)
                .is_some_and(|c| c.v.cp.count == scan.frontier.size())
            {
                check_checkpoints(&mut scan, checkpoints, &mut cp_idx, &path);
                if !scan.findings.is_empty() {
                    break 'files;
                }
            }
        }
        if let Some(e) = frame_err {
            let expected = scan.frontier.size();
            let torn = last && is_torn(&buf, reader.position(), e);
            let problem = if torn {
                Problem::TornTail(e)
            } else {
                Problem::Frame(e)
            };
            let f = finding(Some(expected), Some(reader.position()), problem);
            if torn {
                scan.torn = Some(f);
            } else {
                scan.findings.push(f);
            }
            info.data_end = reader.position();
            info.end_seq = scan.frontier.size();
            info.frontier_end = scan.frontier.clone();
            info.chain_end = scan.chain_head;
            scan.segments.push(info);
            break 'files;
        }
        info.data_end = reader.position();
        info.end_seq = scan.frontier.size();
        info.frontier_end = scan.frontier.clone();
        info.chain_end = scan.chain_head;
        if !reader.rest_is_zero() {
            let f = finding(
                Some(scan.frontier.size()),
                Some(reader.position()),
                Problem::TrailingBytes,
            );
            if last {
                scan.torn = Some(f);
            } else {
                scan.findings.push(f);
                break;
            }
        }
        scan.segments.push(info);
    }
    if scan.findings.is_empty() && stop_before.is_none() {
        // Checkpoints beyond the end: the tail was cut (or a copy outlived it).
        let mut seen = Vec::<&Path>::new();
        for c in checkpoints
            .iter()
            .rev()
            .filter(|c| c.v.cp.count > scan.frontier.size())
        {
            if !seen.contains(&c.file.as_path()) {
                seen.push(&c.file);
                scan.findings.push(Finding {
                    tier,
                    file: Some(c.file.clone()),
                    seq: Some(scan.frontier.size()),
                    offset: None,
                    problem: Problem::TailMissing {
                        checkpoint_count: c.v.cp.count,
                        log_count: scan.frontier.size(),
                    },
                });
            }
        }
    }
    Ok(scan)
}

/// Every line of the tier's time index that names a segment the scan read
/// and gives it another span than its records have (see [`crate::times`]).
fn time_index_findings(tier: Tier, tier_dir: &Path, segments: &[SegmentInfo]) -> Vec<Finding> {
    let index = crate::times::path(tier_dir);
    let spans = match crate::times::load(tier_dir) {
        Ok(spans) => spans,
        Err(e) => {
            return vec![Finding {
                tier,
                file: Some(index),
                seq: None,
                offset: None,
                problem: Problem::Unreadable(e.to_string()),
            }]
        }
    };
    segments
        .iter()
        .filter_map(|seg| {
            let indexed = spans.get(&seg.number)?;
            if seg.span == Some(*indexed) {
                return None;
            }
            Some(Finding {
                tier,
                file: Some(index.clone()),
                seq: None,
                offset: None,
                problem: Problem::TimeIndex {
                    segment: seg.number,
                    indexed: (indexed.oldest, indexed.newest),
                    actual: seg.span.map(|s| (s.oldest, s.newest)),
                },
            })
        })
        .collect()
}

/// Leaf hashes of `frames`, split over two threads when there are enough.
fn leaf_hashes(frames: &[Frame<'_>]) -> Vec<Hash> {
    const PARALLEL_FROM: usize = 4096;
    if frames.len() < PARALLEL_FROM {
        return frames.iter().map(|f| leaf_hash(f.body)).collect();
    }
    let (a, b) = frames.split_at(frames.len() / 2);
    std::thread::scope(|s| {
        let second = s.spawn(|| b.iter().map(|f| leaf_hash(f.body)).collect::<Vec<_>>());
        let mut out: Vec<Hash> = a.iter().map(|f| leaf_hash(f.body)).collect();
        match second.join() {
            Ok(rest) => out.extend(rest),
            // The helper cannot panic; if it somehow did, hash here instead.
            Err(_) => out.extend(b.iter().map(|f| leaf_hash(f.body))),
        }
        out
    })
}

/// Whether a bad frame at `pos` looks like a write cut short by a crash
/// rather than damage: it runs past the end, its length is garbage, or
/// nothing but zero fill follows it. A bad frame followed by data is damage.
fn is_torn(bytes: &[u8], pos: u64, e: FrameError) -> bool {
    match e {
        FrameError::Truncated | FrameError::BadLength(_) => true,
        FrameError::BadChecksum => {
            let pos = usize::try_from(pos).unwrap_or(usize::MAX);
            let len = bytes.get(pos..pos.saturating_add(4)).map_or(0, |b| {
                b.iter()
                    .rev()
                    .fold(0usize, |acc, x| (acc << 8) | usize::from(*x))
            });
            let end = pos
                .saturating_add(crate::format::FRAME_PREFIX)
                .saturating_add(len);
            bytes.get(end..).unwrap_or_default().iter().all(|b| *b == 0)
        }
    }
}

fn check_checkpoints(
    scan: &mut TierScan,
    cps: &[FiledCheckpoint],
    idx: &mut usize,
    segment: &Path,
) {
    let size = scan.frontier.size();
    let root = scan.frontier.root();
    while let Some(c) = cps.get(*idx).filter(|c| c.v.cp.count == size) {
        let at = |problem| Finding {
            tier: scan.tier,
            file: Some(segment.to_path_buf()),
            seq: size.checked_sub(1),
            offset: None,
            problem,
        };
        if c.v.root != root {
            scan.findings.push(at(Problem::RootMismatch {
                count: size,
                line: c.line,
            }));
        } else if c.v.chain_head != scan.chain_head {
            scan.findings.push(at(Problem::ChainHeadMismatch {
                count: size,
                line: c.line,
            }));
        } else {
            scan.checkpoints_matched += 1;
        }
        *idx += 1;
    }
}

/// Verifies every tier under `dir` with the public key only. With
/// `checkpoint_dir`, the checkpoint copy is checked against the log too, so a
/// cut tail is found even if the primary checkpoints were cut with it.
///
/// Returns the report when everything holds, [`AuditError::VerifyFailed`]
/// (with every finding) when not, and other errors when the directory
/// cannot be read at all.
pub fn verify(
    dir: &Path,
    key: &VerifyingKey,
    checkpoint_dir: Option<&Path>,
) -> Result<VerifyReport, AuditError> {
    let started = Instant::now();
    if !dir.is_dir() {
        return Err(AuditError::io(
            dir,
            io::Error::new(io::ErrorKind::NotFound, "audit directory not found"),
        ));
    }
    let mut report = VerifyReport {
        tiers: Vec::new(),
        findings: Vec::new(),
        warnings: Vec::new(),
        bytes: 0,
        elapsed: Duration::ZERO,
    };
    for tier in Tier::ALL {
        let tier_dir = dir.join(tier.as_str());
        let mut files = vec![checkpoint::path_for(dir, tier)];
        if let Some(copy) = checkpoint_dir {
            files.push(checkpoint::path_for(copy, tier));
        }
        if !tier_dir.exists() && !files.iter().any(|f| f.exists()) {
            continue;
        }
        let mut findings = Vec::new();
        let cps = load_checkpoints(tier, &files, key, &mut findings)?;
        let scan = scan_tier(
            tier,
            &tier_dir,
            &cps,
            SegmentRange::default(),
            &mut |_, _| {},
        )?;
        report.findings.append(&mut findings);
        report.findings.extend(scan.findings);
        report
            .findings
            .extend(time_index_findings(tier, &tier_dir, &scan.segments));
        report.warnings.extend(scan.torn);
        report.bytes += scan.bytes;
        report.tiers.push(TierReport {
            tier,
            segments: scan.segments.len(),
            records: scan.frontier.size().saturating_sub(scan.first_seq),
            first_seq: scan.first_seq,
            next_seq: scan.frontier.size(),
            bytes: scan.bytes,
            checkpoints_matched: scan.checkpoints_matched,
            merkle_root: to_hex(&scan.frontier.root()),
            chain_head: to_hex(&scan.chain_head),
        });
    }
    report.elapsed = started.elapsed();
    if report.is_ok() {
        Ok(report)
    } else {
        Err(AuditError::VerifyFailed(Box::new(VerifyFailure { report })))
    }
}
