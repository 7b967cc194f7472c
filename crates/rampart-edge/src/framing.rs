//! Request-smuggling guard for HTTP/1 connections: watches the bytes a
//! client sends, finds every request head, and flags a request that carries
//! both `Content-Length` and `Transfer-Encoding`.
//!
//! hyper follows RFC 9112 §6.1 for such a request: Transfer-Encoding wins,
//! Content-Length is dropped and the connection is closed after the answer,
//! so nothing can be smuggled through hyper itself. But it drops the header
//! before the edge sees the request, so the edge could not refuse it, and a
//! request built to desynchronise two parsers is an attack worth refusing
//! and recording. [`FramingGuard`] sits between the TLS stream and hyper,
//! follows the framing of each request (heads, `Content-Length` bodies,
//! chunked bodies with trailers) to find where the next head starts, and
//! notes the index of the first conflicting request in a [`FramingFlag`].
//! The edge answers that request 400 `conflicting_framing` and closes.
//!
//! Anything it cannot follow (a head it cannot parse, HTTP/2's preface, an
//! upgrade, a head over 64 KiB) stops the watch for the rest of the
//! connection: hyper refuses malformed input itself.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

use crate::watch::{read_seen, IoHook, Watched};

/// The most bytes of one head or chunk-size line the guard buffers.
const MAX_HEAD: usize = 64 * 1024;
/// Header slots for parsing a head; more headers than this stop the watch
/// (hyper refuses far fewer).
const MAX_HEADERS: usize = 128;

/// Shared between a connection's guard and its request handler: the index
/// (0-based, in arrival order) of the first request with conflicting
/// framing, if any.
#[derive(Debug, Clone)]
pub struct FramingFlag(Arc<AtomicU64>);

impl Default for FramingFlag {
    fn default() -> Self {
        FramingFlag(Arc::new(AtomicU64::new(u64::MAX)))
    }
}

impl FramingFlag {
    /// Whether the request at `index` (or an earlier one) had conflicting
    /// framing.
    pub fn is_conflicting(&self, index: u64) -> bool {
        index >= self.0.load(Ordering::Acquire)
    }

    fn raise(&self, index: u64) {
        self.0.fetch_min(index, Ordering::AcqRel);
    }
}

/// Where the guard is in the byte stream.
#[derive(Debug)]
enum State {
    /// Collecting a request head.
    Head(Vec<u8>),
    /// Inside a body of known length.
    Body(u64),
    /// Collecting a chunk-size line.
    ChunkSize(Vec<u8>),
    /// Inside chunk data; then its CRLF.
    ChunkData(u64),
    /// The CRLF after chunk data (bytes still expected).
    ChunkEnd(u8),
    /// Collecting trailer lines after the last chunk.
    Trailers(Vec<u8>),
    /// No longer following (see the module doc).
    Off,
}

/// Follows request framing over a byte stream (see the module doc).
#[derive(Debug)]
pub struct Framing {
    state: State,
    /// Index of the request whose head comes next (or is being read).
    index: u64,
    flag: FramingFlag,
}

impl Framing {
    /// A watch that reports to `flag`.
    pub fn new(flag: FramingFlag) -> Self {
        Framing {
            state: State::Head(Vec::new()),
            index: 0,
            flag,
        }
    }

    /// Takes the next bytes the client sent.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let state = std::mem::replace(&mut self.state, State::Off);
            let (next, used) = match state {
                State::Off => return,
                State::Head(mut buf) => self.head(&mut buf, bytes),
                State::Body(left) => {
                    let take = left.min(bytes.len() as u64);
                    let rest = left - take;
                    let next = if rest == 0 {
                        self.index += 1;
                        State::Head(Vec::new())
                    } else {
                        State::Body(rest)
                    };
                    (next, take as usize)
                }
                State::ChunkSize(mut line) => match take_line(&mut line, bytes) {
                    None => (State::ChunkSize(line), bytes.len()),
                    Some(used) => match chunk_size(&line) {
                        Some(0) => (State::Trailers(Vec::new()), used),
                        Some(n) => (State::ChunkData(n), used),
                        None => (State::Off, used),
                    },
                },
                State::ChunkData(left) => {
                    let take = left.min(bytes.len() as u64);
                    let rest = left - take;
                    let next = if rest == 0 {
                        State::ChunkEnd(2)
                    } else {
                        State::ChunkData(rest)
                    };
                    (next, take as usize)
                }
                State::ChunkEnd(left) => {
                    let take = usize::from(left).min(bytes.len());
                    let rest = left - take as u8;
                    let next = if rest == 0 {
                        State::ChunkSize(Vec::new())
                    } else {
                        State::ChunkEnd(rest)
                    };
                    (next, take)
                }
                State::Trailers(mut line) => match take_line(&mut line, bytes) {
                    None => (State::Trailers(line), bytes.len()),
                    Some(used) => {
                        if line.iter().all(|b| *b == b'\r' || *b == b'\n') {
                            self.index += 1;
                            (State::Head(Vec::new()), used)
                        } else {
                            (State::Trailers(Vec::new()), used)
                        }
                    }
                },
            };
            self.state = next;
            bytes = bytes.get(used..).unwrap_or_default();
        }
    }

    /// Adds `bytes` to a head; when it is complete, checks it and decides
    /// how its body is framed. Returns the next state and the bytes used.
    fn head(&mut self, buf: &mut Vec<u8>, bytes: &[u8]) -> (State, usize) {
        // Blank lines before a request line are allowed (RFC 9112 §2.2).
        if buf.is_empty() {
            let skip = bytes
                .iter()
                .take_while(|b| **b == b'\r' || **b == b'\n')
                .count();
            if skip > 0 {
                return (State::Head(std::mem::take(buf)), skip);
            }
        }
        let before = buf.len();
        let room = MAX_HEAD.saturating_sub(before);
        buf.extend_from_slice(bytes.get(..bytes.len().min(room)).unwrap_or_default());
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(len)) => {
                let used = len.saturating_sub(before);
                let mut content_length = None;
                let mut transfer_encoding = false;
                let mut upgrade = req.method == Some("CONNECT");
                for h in req.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        content_length = std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse::<u64>().ok())
                            .or(Some(u64::MAX));
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        transfer_encoding = true;
                    } else if h.name.eq_ignore_ascii_case("upgrade") {
                        upgrade = true;
                    }
                }
                if transfer_encoding && content_length.is_some() {
                    self.flag.raise(self.index);
                    return (State::Off, used);
                }
                if upgrade {
                    return (State::Off, used);
                }
                let next = if transfer_encoding {
                    State::ChunkSize(Vec::new())
                } else {
                    match content_length {
                        Some(u64::MAX) => State::Off,
                        Some(n) if n > 0 => State::Body(n),
                        _ => {
                            self.index += 1;
                            State::Head(Vec::new())
                        }
                    }
                };
                (next, used)
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {
                (State::Head(std::mem::take(buf)), bytes.len())
            }
            _ => (State::Off, bytes.len()),
        }
    }
}

/// Appends to `line` up to and including the next LF; returns the bytes
/// used once the line is complete, `None` if it continues. A line keeps at
/// most `MAX_HEAD + 1` bytes, so one too long is seen as such however it
/// arrived.
fn take_line(line: &mut Vec<u8>, bytes: &[u8]) -> Option<usize> {
    let (part, done) = match memchr(b'\n', bytes) {
        Some(i) => (bytes.get(..=i).unwrap_or_default(), Some(i + 1)),
        None => (bytes, None),
    };
    let room = (MAX_HEAD + 1).saturating_sub(line.len());
    line.extend_from_slice(part.get(..part.len().min(room)).unwrap_or_default());
    done
}

fn memchr(needle: u8, bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|b| *b == needle)
}

/// The size of a chunk-size line (`1a;ext=x\r\n`), or `None` if malformed.
fn chunk_size(line: &[u8]) -> Option<u64> {
    if line.len() > MAX_HEAD {
        return None;
    }
    let text = std::str::from_utf8(line).ok()?;
    let size = text.split(';').next()?.trim();
    if size.is_empty() || size.len() > 16 {
        return None;
    }
    u64::from_str_radix(size, 16).ok()
}

/// An I/O stream that shows every byte read to a [`Framing`] watch on its
/// way to hyper. Writes pass straight through.
pub type FramingGuard<IO> = Watched<IO, Framing>;

impl IoHook for Framing {
    fn poll_read_from<IO: AsyncRead + Unpin>(
        &mut self,
        inner: &mut IO,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        read_seen(inner, cx, buf, |new| self.feed(new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `stream` split at every `step` bytes; returns the flag.
    fn watch(stream: &[u8], step: usize) -> (FramingFlag, Framing) {
        let flag = FramingFlag::default();
        let mut f = Framing::new(flag.clone());
        for part in stream.chunks(step.max(1)) {
            f.feed(part);
        }
        (flag, f)
    }

    fn first_conflict(stream: &[u8]) -> Vec<Option<u64>> {
        [1, 2, 3, 7, 64, stream.len()]
            .iter()
            .map(|&step| {
                let (flag, _) = watch(stream, step);
                (0..10).find(|&i| flag.is_conflicting(i))
            })
            .collect()
    }

    #[test]
    fn flags_cl_and_te_together() {
        let s = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert!(first_conflict(s).iter().all(|c| *c == Some(0)));
    }

    #[test]
    fn follows_keep_alive_requests_to_the_bad_one() {
        let mut s = Vec::new();
        s.extend_from_slice(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n");
        s.extend_from_slice(b"POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello");
        s.extend_from_slice(
            b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
        );
        // A body that looks like a conflicting head is only a body.
        let fake = b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        s.extend_from_slice(
            format!(
                "POST /d HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
                fake.len()
            )
            .as_bytes(),
        );
        s.extend_from_slice(fake);
        s.extend_from_slice(
            b"\r\nPOST /e HTTP/1.1\r\nHost: a\r\ncontent-length: 1\r\nTRANSFER-ENCODING: chunked\r\n\r\n",
        );
        assert!(
            first_conflict(&s).iter().all(|c| *c == Some(4)),
            "{:?}",
            first_conflict(&s)
        );
    }

    #[test]
    fn clean_streams_and_unparseable_ones_raise_nothing() {
        for s in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04",
            b"\x16\x03\x01garbage\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\nContent-Length: 1\r\nTransfer-Encoding: x\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ] {
            assert!(first_conflict(s).iter().all(Option::is_none));
        }
    }

    #[test]
    fn never_panics_on_random_bytes() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let alphabet =
            b"GETPOST /HTTP1.\r\n:ContentLengthTransfer-Encodingchunked0123456789abcdef;";
        for _ in 0..2_000 {
            let mut s = Vec::new();
            for _ in 0..(x % 300) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                s.push(alphabet[(x % alphabet.len() as u64) as usize]);
            }
            let _ = watch(&s, (x % 17) as usize + 1);
        }
    }
}
