//! The on-disk segment format.
//!
//! ```text
//! segment = header frame* zero-fill
//! header  = magic "RMPAUDIT" | version u16 | tier u8 | k u8 | segment u64
//!         | first_seq u64 | created_unix_nanos u64 | prev_hash [32]
//!         | frontier [32] * k | crc32(everything before) u32
//! frame   = len u32 | crc32(len || body) u32 | body[len]
//! body    = seq u64 | time_unix_nanos u64 | prev_hash [32] | nonce [12] | ciphertext+tag
//! ```
//!
//! All integers are little-endian. A length of zero marks the end of the
//! records: segments are preallocated with zeros so that an fdatasync need not
//! commit a new file size. The Merkle leaf and the chain link are the leaf hash
//! of the whole body, so both can be checked without the decryption key.
//!
//! The header carries the tier's state where the segment starts: the chain
//! head and the Merkle frontier (one subtree root per set bit of
//! `first_seq`). The writer resumes from the newest segment's header
//! instead of reading the whole tier on open, proofs start from the
//! segment that holds the record, and `verify` checks every header's state
//! against the state it computed.

use std::fmt;

use crate::event::Tier;
use crate::merkle::Hash;

/// Segment magic.
pub const MAGIC: &[u8; 8] = b"RMPAUDIT";
/// Format version this crate writes and reads.
pub const VERSION: u16 = 1;
/// Length of the header's fixed part, before the frontier.
const HEADER_FIXED: usize = 68;
/// Length of the shortest header (a segment starting at seq 0).
pub const HEADER_LEN: usize = HEADER_FIXED + 4;
/// Length of a frame's length and checksum.
pub const FRAME_PREFIX: usize = 8;
/// Fixed part of a body before the ciphertext.
pub const BODY_FIXED: usize = 8 + 8 + 32 + 12;
/// The AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// Largest body a reader accepts.
pub const MAX_BODY: usize = 1 << 20;

/// A segment header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The tier of every record in the segment.
    pub tier: Tier,
    /// The segment's number within the tier, from 0.
    pub segment: u64,
    /// Sequence number of the segment's first record.
    pub first_seq: u64,
    /// When the segment was created.
    pub created_unix_nanos: u64,
    /// Leaf hash of record `first_seq - 1` (zeros at seq 0).
    pub prev_hash: Hash,
    /// Merkle frontier over records `0..first_seq`, largest subtree first.
    pub frontier: Vec<Hash>,
}

/// Why a segment header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// Shorter than the header says it is.
    Truncated,
    /// Not a Rampart audit segment.
    BadMagic,
    /// A version this build cannot read.
    UnsupportedVersion(u16),
    /// The header checksum does not match.
    BadChecksum,
    /// An unknown tier code.
    UnknownTier(u8),
    /// The frontier does not fit the first sequence number.
    BadFrontier,
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::Truncated => write!(f, "segment header is truncated"),
            HeaderError::BadMagic => write!(f, "not an audit segment (bad magic)"),
            HeaderError::UnsupportedVersion(v) => write!(f, "unsupported segment version {v}"),
            HeaderError::BadChecksum => write!(f, "segment header checksum mismatch"),
            HeaderError::UnknownTier(t) => write!(f, "unknown tier code {t} in segment header"),
            HeaderError::BadFrontier => {
                write!(f, "segment header frontier does not fit its first seq")
            }
        }
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

impl SegmentHeader {
    /// Length of this header on disk.
    pub fn encoded_len(&self) -> usize {
        HEADER_FIXED + 32 * self.frontier.len() + 4
    }

    /// Encodes the header.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.encoded_len());
        v.extend_from_slice(MAGIC);
        v.extend_from_slice(&VERSION.to_le_bytes());
        v.push(self.tier.code());
        v.push(u8::try_from(self.frontier.len()).unwrap_or(u8::MAX));
        v.extend_from_slice(&self.segment.to_le_bytes());
        v.extend_from_slice(&self.first_seq.to_le_bytes());
        v.extend_from_slice(&self.created_unix_nanos.to_le_bytes());
        v.extend_from_slice(&self.prev_hash);
        for h in &self.frontier {
            v.extend_from_slice(h);
        }
        let crc = crc32fast::hash(&v);
        v.extend_from_slice(&crc.to_le_bytes());
        v
    }

    /// Decodes and checks a header from the start of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, HeaderError> {
        if bytes.get(..8).is_some_and(|m| m != MAGIC.as_slice()) {
            return Err(HeaderError::BadMagic);
        }
        let fixed = bytes.get(..HEADER_FIXED).ok_or(HeaderError::Truncated)?;
        let k = usize::from(fixed.get(11).copied().unwrap_or(0));
        let len = HEADER_FIXED + 32 * k + 4;
        let h = bytes.get(..len).ok_or(HeaderError::Truncated)?;
        if crc32fast::hash(h.get(..len - 4).unwrap_or_default()) != u32_at(h, len - 4) {
            return Err(HeaderError::BadChecksum);
        }
        let version = u16::from_le_bytes([
            h.get(8).copied().unwrap_or(0),
            h.get(9).copied().unwrap_or(0),
        ]);
        if version != VERSION {
            return Err(HeaderError::UnsupportedVersion(version));
        }
        let code = h.get(10).copied().unwrap_or(0);
        let tier = Tier::from_code(code).ok_or(HeaderError::UnknownTier(code))?;
        let first_seq = u64_at(h, 20);
        if usize::try_from(first_seq.count_ones()).ok() != Some(k) {
            return Err(HeaderError::BadFrontier);
        }
        let hash_at = |at: usize| -> Hash {
            let mut out = [0u8; 32];
            if let Some(s) = h.get(at..at + 32) {
                out.copy_from_slice(s);
            }
            out
        };
        Ok(SegmentHeader {
            tier,
            segment: u64_at(h, 12),
            first_seq,
            created_unix_nanos: u64_at(h, 28),
            prev_hash: hash_at(36),
            frontier: (0..k).map(|i| hash_at(HEADER_FIXED + 32 * i)).collect(),
        })
    }
}

/// One framed record, borrowed from the segment bytes.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// Offset of the frame in the segment file.
    pub offset: u64,
    /// The body: what the chain and the Merkle tree hash.
    pub body: &'a [u8],
}

impl<'a> Frame<'a> {
    /// The record's sequence number.
    pub fn seq(&self) -> u64 {
        u64_at(self.body, 0)
    }
    /// When the log took the record.
    pub fn time_unix_nanos(&self) -> u64 {
        u64_at(self.body, 8)
    }
    /// The predecessor's leaf hash.
    pub fn prev_hash(&self) -> Hash {
        let mut h = [0u8; 32];
        if let Some(s) = self.body.get(16..48) {
            h.copy_from_slice(s);
        }
        h
    }
    /// The AES-GCM nonce.
    pub fn nonce(&self) -> &'a [u8] {
        self.body.get(48..60).unwrap_or_default()
    }
    /// The ciphertext with its tag.
    pub fn ciphertext(&self) -> &'a [u8] {
        self.body.get(BODY_FIXED..).unwrap_or_default()
    }
    /// Total length on disk.
    pub fn len_on_disk(&self) -> u64 {
        (FRAME_PREFIX + self.body.len()) as u64
    }
}

/// Why a frame could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The frame runs past the end of the file.
    Truncated,
    /// The length field is impossible.
    BadLength(u32),
    /// The checksum does not match the bytes.
    BadChecksum,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Truncated => write!(f, "record is truncated"),
            FrameError::BadLength(l) => write!(f, "record length {l} is impossible"),
            FrameError::BadChecksum => write!(f, "record checksum mismatch"),
        }
    }
}

/// Appends a frame for `body` to `out`.
pub fn encode_frame(out: &mut Vec<u8>, body: &[u8]) {
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes();
    let mut h = crc32fast::Hasher::new();
    h.update(&len);
    h.update(body);
    out.extend_from_slice(&len);
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(body);
}

/// Reads the frames of one segment held in memory. Never panics, whatever
/// the bytes.
#[derive(Debug)]
pub struct SegmentReader<'a> {
    bytes: &'a [u8],
    pos: usize,
    done: bool,
}

impl<'a> SegmentReader<'a> {
    /// Checks the header and positions the reader at the first frame.
    pub fn new(bytes: &'a [u8]) -> Result<(SegmentHeader, SegmentReader<'a>), HeaderError> {
        let header = SegmentHeader::decode(bytes)?;
        let pos = header.encoded_len();
        Ok((
            header,
            SegmentReader {
                bytes,
                pos,
                done: false,
            },
        ))
    }

    /// Offset just past the last frame read: where the records end.
    pub fn position(&self) -> u64 {
        self.pos as u64
    }

    /// Whether everything after the records is zero fill.
    pub fn rest_is_zero(&self) -> bool {
        self.bytes
            .get(self.pos..)
            .unwrap_or_default()
            .iter()
            .all(|b| *b == 0)
    }

    /// The next frame; `None` at the end marker or the end of the bytes.
    /// After an error the reader stays where the bad frame starts.
    pub fn next_frame(&mut self) -> Option<Result<Frame<'a>, FrameError>> {
        if self.done {
            return None;
        }
        let rest = self.bytes.get(self.pos..).unwrap_or_default();
        if rest.is_empty() {
            self.done = true;
            return None;
        }
        if rest.len() < FRAME_PREFIX {
            self.done = true;
            if rest.iter().all(|b| *b == 0) {
                return None;
            }
            return Some(Err(FrameError::Truncated));
        }
        let len = u32_at(rest, 0);
        if len == 0 {
            self.done = true;
            return None;
        }
        let ulen = len as usize;
        if !(BODY_FIXED + TAG_LEN..=MAX_BODY).contains(&ulen) {
            self.done = true;
            return Some(Err(FrameError::BadLength(len)));
        }
        let Some(body) = rest.get(FRAME_PREFIX..FRAME_PREFIX + ulen) else {
            self.done = true;
            return Some(Err(FrameError::Truncated));
        };
        let mut h = crc32fast::Hasher::new();
        h.update(rest.get(..4).unwrap_or_default());
        h.update(body);
        if h.finalize() != u32_at(rest, 4) {
            self.done = true;
            return Some(Err(FrameError::BadChecksum));
        }
        let frame = Frame {
            offset: self.pos as u64,
            body,
        };
        self.pos += FRAME_PREFIX + ulen;
        Some(Ok(frame))
    }
}

/// Parses a whole segment, for fuzzing: the header, then every frame until
/// the end or the first error. Returns the number of whole frames.
pub fn read_segment(bytes: &[u8]) -> Result<usize, HeaderError> {
    let (_, mut r) = SegmentReader::new(bytes)?;
    let mut n = 0;
    while let Some(f) = r.next_frame() {
        match f {
            Ok(frame) => {
                let _ = (
                    frame.seq(),
                    frame.prev_hash(),
                    frame.nonce(),
                    frame.ciphertext(),
                );
                n += 1;
            }
            Err(_) => break,
        }
    }
    let _ = r.rest_is_zero();
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment_with(n: u64) -> Vec<u8> {
        let mut v = SegmentHeader {
            tier: Tier::Network,
            segment: 3,
            first_seq: 10,
            created_unix_nanos: 5,
            prev_hash: [4; 32],
            frontier: vec![[1; 32], [2; 32]],
        }
        .encode();
        for i in 0..n {
            let mut body = Vec::new();
            body.extend_from_slice(&(10 + i).to_le_bytes());
            body.extend_from_slice(&[0u8; 8 + 32 + 12 + 20]);
            encode_frame(&mut v, &body);
        }
        v
    }

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let v = segment_with(0);
        let h = SegmentHeader::decode(&v).unwrap();
        assert_eq!((h.tier, h.segment, h.first_seq), (Tier::Network, 3, 10));
        assert_eq!(h.frontier, vec![[1; 32], [2; 32]]);
        assert_eq!(h.prev_hash, [4; 32]);
        assert_eq!(SegmentHeader::decode(&v[..20]), Err(HeaderError::Truncated));
        assert_eq!(
            SegmentHeader::decode(&v[..100]),
            Err(HeaderError::Truncated)
        );
        let mut bad = v.clone();
        bad[0] = b'X';
        assert_eq!(SegmentHeader::decode(&bad), Err(HeaderError::BadMagic));
        let mut bad = v.clone();
        bad[15] ^= 1;
        assert_eq!(SegmentHeader::decode(&bad), Err(HeaderError::BadChecksum));
    }

    #[test]
    fn frames_read_back_and_zero_fill_ends_them() {
        let mut v = segment_with(3);
        v.extend_from_slice(&[0u8; 100]);
        let (_, mut r) = SegmentReader::new(&v).unwrap();
        let seqs: Vec<u64> = std::iter::from_fn(|| r.next_frame())
            .map(|f| f.unwrap().seq())
            .collect();
        assert_eq!(seqs, vec![10, 11, 12]);
        assert!(r.rest_is_zero());
    }

    #[test]
    fn torn_and_flipped_frames_are_errors() {
        let v = segment_with(2);
        let (_, mut r) = SegmentReader::new(&v[..v.len() - 3]).unwrap();
        assert!(r.next_frame().unwrap().is_ok());
        assert_eq!(r.next_frame().unwrap().unwrap_err(), FrameError::Truncated);
        let mut flipped = v.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        let (_, mut r) = SegmentReader::new(&flipped).unwrap();
        assert!(r.next_frame().unwrap().is_ok());
        assert_eq!(
            r.next_frame().unwrap().unwrap_err(),
            FrameError::BadChecksum
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        // A cheap deterministic generator; proptest covers this too (tests/fuzz_reader.rs).
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let base = segment_with(4);
        for round in 0..2000 {
            let mut v = base.clone();
            for _ in 0..(round % 7 + 1) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x as usize) % v.len();
                v[i] = (x >> 32) as u8;
            }
            v.truncate((x as usize >> 3) % (v.len() + 1));
            let _ = read_segment(&v);
        }
    }
}
