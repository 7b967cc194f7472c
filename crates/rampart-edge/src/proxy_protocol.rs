//! The PROXY protocol (HAProxy's, versions 1 and 2) on the edge's
//! listeners, for an edge behind a layer-4 load balancer (AWS NLB, HAProxy
//! or nginx in TCP mode, …), which would otherwise make every client look
//! like the balancer.
//!
//! Peers in `[edge] proxy_protocol_from` must open each connection with a
//! PROXY header; its source address then stands for the client wherever
//! the peer's would: IP rules, rate limits, the per-client connection cap,
//! `X-Forwarded-For` and the audit record. A connection from such a peer
//! whose header is missing, malformed or not whole within the first-request
//! timeout is closed. Connections from anywhere else are served as they
//! are: a PROXY header from them is bytes that are neither TLS nor HTTP,
//! so only the listed balancers can name a client. `LOCAL` (version 2, the
//! balancer's own health checks) and `UNKNOWN` (version 1) keep the peer's
//! address; version 2's TLVs are skipped.
//!
//! The header is read with `peek` and then exactly its length consumed, so
//! the TLS handshake (or HTTP request) behind it is read by the layers
//! above as if no header had come first. Parsing is the `ppp` crate's.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ppp::{HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Longest header taken: version 1 needs at most 107 bytes, version 2 16
/// plus its addresses and TLVs (cloud balancers add tens of bytes).
const MAX_HEADER: usize = 4096;

/// Longest version 1 header, its line end included (the specification's
/// 107 bytes).
const MAX_V1: usize = 107;

/// How long to wait before looking again at a header that has arrived in
/// part (balancers send it in one segment; this is the rare split).
const RETRY: Duration = Duration::from_millis(2);

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The connection ended or failed before the header was whole.
    #[error("connection ended before the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection before sending a whole header.
    #[error("connection closed before the PROXY header was whole")]
    Closed,
    /// Longer than [`MAX_HEADER`] and still not whole.
    #[error("PROXY header longer than {MAX_HEADER} bytes")]
    TooLong,
    /// Not a PROXY header (of either version), or a malformed one.
    #[error("not a valid PROXY protocol header: {0}")]
    Malformed(String),
}

/// What the header at the start of `bytes` says: its length and the
/// client it names (`None`: keep the peer's address); `None` while it is
/// not whole yet.
pub fn parse_header(bytes: &[u8]) -> Option<Result<(usize, Option<SocketAddr>), ProxyHeaderError>> {
    // A version 1 line is parsed whole: cut inside it (say, after a
    // port's first digits), `ppp` can take a part for a bad header.
    let v1 = b"PROXY ";
    let head = bytes.get(..v1.len().min(bytes.len())).unwrap_or_default();
    if v1.starts_with(head) {
        // The line ends at its first CR (`ppp` reads the byte after it).
        let line = bytes.get(..MAX_V1.min(bytes.len())).unwrap_or_default();
        let ended = line
            .iter()
            .position(|&b| b == b'\r')
            .is_some_and(|cr| cr + 1 < bytes.len());
        if !ended {
            return (bytes.len() >= MAX_V1).then(|| {
                Err(ProxyHeaderError::Malformed(format!(
                    "no line end within {MAX_V1} bytes"
                )))
            });
        }
    }
    let parsed = HeaderResult::parse(bytes);
    if parsed.is_incomplete() {
        return None;
    }
    Some(match parsed {
        HeaderResult::V1(Ok(h)) => {
            let client = match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                }
                ppp::v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                }
                ppp::v1::Addresses::Unknown => None,
            };
            Ok((h.header.len(), client))
        }
        HeaderResult::V2(Ok(h)) => {
            let client = match (h.command, h.addresses) {
                (ppp::v2::Command::Local, _) => None,
                (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                }
                (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                }
                // UNIX sockets and unspecified families name no address.
                (ppp::v2::Command::Proxy, _) => None,
            };
            Ok((h.len(), client))
        }
        HeaderResult::V1(Err(e)) => Err(ProxyHeaderError::Malformed(e.to_string())),
        HeaderResult::V2(Err(e)) => Err(ProxyHeaderError::Malformed(e.to_string())),
    })
}

/// Reads the PROXY header that opens `stream` and nothing after it; gives
/// the client it names (IPv4-mapped IPv6 addresses as IPv4), or `None`
/// where the peer's address stands. The caller bounds the wait.
pub async fn read_header(stream: &mut TcpStream) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut buf = vec![0u8; MAX_HEADER];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(ProxyHeaderError::Closed);
        }
        let Some(whole) = buf.get(..n).and_then(parse_header) else {
            if n == buf.len() {
                return Err(ProxyHeaderError::TooLong);
            }
            tokio::time::sleep(RETRY).await;
            continue;
        };
        let (len, client) = whole?;
        let Some(header) = buf.get_mut(..len) else {
            return Err(ProxyHeaderError::TooLong);
        };
        stream.read_exact(header).await?;
        return Ok(client.map(|c| SocketAddr::new(c.ip().to_canonical(), c.port())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addrs: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        h.push(0x20 | command);
        h.push(family);
        let len = u16::try_from(addrs.len() + tlvs.len()).unwrap();
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(addrs);
        h.extend_from_slice(tlvs);
        h
    }

    #[test]
    fn version_1_names_the_client_and_its_length() {
        let h = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n\x16\x03\x01";
        let (len, client) = parse_header(h).unwrap().unwrap();
        assert_eq!(len, h.len() - 3);
        assert_eq!(client, Some("203.0.113.7:51000".parse().unwrap()));
        let h = b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\nGET";
        let (_, client) = parse_header(h).unwrap().unwrap();
        assert_eq!(client, Some("[2001:db8::7]:51000".parse().unwrap()));
        let (len, client) = parse_header(b"PROXY UNKNOWN\r\n").unwrap().unwrap();
        assert_eq!((len, client), (15, None));
    }

    #[test]
    fn version_2_names_the_client_and_skips_tlvs() {
        let addrs = [203, 0, 113, 7, 10, 0, 0, 1, 0xc7, 0x38, 0x01, 0xbb];
        // An AWS-style TLV (type 0xEA) after the addresses.
        let tlv = [0xea, 0x00, 0x03, 0x01, b'v', b'p'];
        let mut bytes = v2(1, 0x11, &addrs, &tlv);
        let whole = bytes.len();
        bytes.extend_from_slice(b"\x16\x03\x01");
        let (len, client) = parse_header(&bytes).unwrap().unwrap();
        assert_eq!(len, whole);
        assert_eq!(client, Some("203.0.113.7:51000".parse().unwrap()));
        // LOCAL: the balancer speaking for itself.
        let (_, client) = parse_header(&v2(0, 0x00, &[], &[])).unwrap().unwrap();
        assert_eq!(client, None);
    }

    #[test]
    fn parts_of_a_header_wait_and_anything_else_is_refused() {
        let h = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n";
        for cut in 1..h.len() {
            assert!(parse_header(&h[..cut]).is_none(), "{cut}");
        }
        let b = v2(1, 0x11, &[203, 0, 113, 7, 10, 0, 0, 1, 0, 1, 0, 2], &[]);
        for cut in 1..b.len() {
            assert!(parse_header(&b[..cut]).is_none(), "{cut}");
        }
        for bad in [
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
            b"GET / HTTP/1.1\r\n",
            b"PROXY TCP4 999.0.113.7 10.0.0.1 51000 443\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 99999 443\r\n",
            b"PROXY TCP9 203.0.113.7 10.0.0.1 1 2\r\n",
            &[b' '; 200][..],
        ] {
            assert!(
                matches!(parse_header(bad), Some(Err(ProxyHeaderError::Malformed(_)))),
                "{bad:?}"
            );
        }
        // A version 1 line with no end within 107 bytes.
        let mut long = b"PROXY TCP4 ".to_vec();
        long.resize(MAX_V1, b'1');
        assert!(matches!(
            parse_header(&long),
            Some(Err(ProxyHeaderError::Malformed(_)))
        ));
        assert!(parse_header(&long[..MAX_V1 - 1]).is_none());
        // Version 2 with a length shorter than its addresses.
        let short = v2(1, 0x11, &[1, 2, 3, 4], &[]);
        assert!(matches!(
            parse_header(&short),
            Some(Err(ProxyHeaderError::Malformed(_)))
        ));
    }

    #[tokio::test]
    async fn reads_exactly_the_header_even_when_it_comes_in_parts() {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"PROXY TCP4 198.51.100.2 1").await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            s.write_all(b"0.0.0.1 4000 443\r\nhello").await.unwrap();
            s
        });
        let (mut s, _) = l.accept().await.unwrap();
        let got = read_header(&mut s).await.unwrap();
        assert_eq!(got, Some("198.51.100.2:4000".parse().unwrap()));
        let mut rest = [0u8; 5];
        s.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"hello");
        drop(client.await.unwrap());
    }

    #[tokio::test]
    async fn a_header_that_never_ends_is_refused_at_the_limit() {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            // A version 2 header that declares 60,000 bytes.
            let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x11".to_vec();
            h.extend_from_slice(&60_000u16.to_be_bytes());
            h.extend(std::iter::repeat_n(0u8, 8000));
            let _ = s.write_all(&h).await;
            s
        });
        let (mut s, _) = l.accept().await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), read_header(&mut s))
            .await
            .unwrap();
        assert!(matches!(got, Err(ProxyHeaderError::TooLong)), "{got:?}");
        drop(client.await.unwrap());
    }
}
