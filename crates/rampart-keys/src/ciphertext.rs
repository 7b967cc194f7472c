//! The ciphertext format and the canonical encryption context.
//!
//! ```text
//! +------+----+---------+----+----------+-------------+-----------+-----------------+
//! | 0x01 | EL | env(EL) | NL | name(NL) | version u32 | nonce(12) | ciphertext||tag |
//! +------+----+---------+----+----------+-------------+-----------+-----------------+
//! ```
//!
//! Everything before the nonce is the header. The associated data is the
//! header followed by the canonical context, so a ciphertext cannot be moved
//! to another key, version or context without failing authentication. The
//! parser is total: any byte string yields `Ok` or an error, never a panic
//! (`tests/fuzz_ciphertext.rs` and the `fuzz/` target check it).

use std::collections::BTreeMap;

use crate::KeysError;

/// The format byte of version 1 ciphertexts.
pub const FORMAT_V1: u8 = 1;
/// Nonce length (AES-GCM, 96 bits).
pub const NONCE_LEN: usize = 12;
/// Tag length (AES-GCM, 128 bits).
pub const TAG_LEN: usize = 16;
/// The most context entries a request may carry.
pub const MAX_CONTEXT_ENTRIES: usize = 64;
/// The longest context key or value, in bytes.
pub const MAX_CONTEXT_FIELD: usize = 1024;

/// A parsed ciphertext, borrowing from its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed<'a> {
    /// The environment of the key.
    pub environment: &'a str,
    /// The key name.
    pub key: &'a str,
    /// The key version that encrypted it.
    pub version: u32,
    /// The header bytes (bound as associated data).
    pub header: &'a [u8],
    /// The nonce.
    pub nonce: &'a [u8],
    /// Ciphertext followed by the tag.
    pub body: &'a [u8],
}

/// Writes a header for `environment`/`key` at `version`.
pub fn header(environment: &str, key: &str, version: u32) -> Result<Vec<u8>, KeysError> {
    let mut h = Vec::with_capacity(header_len(environment, key));
    write_header(&mut h, environment, key, version)?;
    Ok(h)
}

/// The length of the header for `environment`/`key`.
pub fn header_len(environment: &str, key: &str) -> usize {
    7 + environment.len() + key.len()
}

/// Appends the header for `environment`/`key` at `version` to `out` (the
/// same bytes as [`header`]); on error nothing is appended.
pub fn write_header(
    out: &mut Vec<u8>,
    environment: &str,
    key: &str,
    version: u32,
) -> Result<(), KeysError> {
    let el = u8::try_from(environment.len())
        .map_err(|_| KeysError::Malformed("environment name too long"))?;
    let nl = u8::try_from(key.len()).map_err(|_| KeysError::Malformed("key name too long"))?;
    out.push(FORMAT_V1);
    out.push(el);
    out.extend_from_slice(environment.as_bytes());
    out.push(nl);
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(&version.to_be_bytes());
    Ok(())
}

fn take<'a>(buf: &mut &'a [u8], n: usize, what: &'static str) -> Result<&'a [u8], KeysError> {
    if buf.len() < n {
        return Err(KeysError::Malformed(what));
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

fn take_str<'a>(buf: &mut &'a [u8], what: &'static str) -> Result<&'a str, KeysError> {
    let len = take(buf, 1, what)?;
    let n = len.first().copied().map_or(0, usize::from);
    let bytes = take(buf, n, what)?;
    std::str::from_utf8(bytes).map_err(|_| KeysError::Malformed("name is not UTF-8"))
}

/// Parses a ciphertext. Checks structure only; authenticity is checked by decryption.
pub fn parse(blob: &[u8]) -> Result<Parsed<'_>, KeysError> {
    let mut rest = blob;
    let format = take(&mut rest, 1, "empty ciphertext")?;
    if format != [FORMAT_V1] {
        return Err(KeysError::Malformed("unknown ciphertext format"));
    }
    let environment = take_str(&mut rest, "truncated environment")?;
    let key = take_str(&mut rest, "truncated key name")?;
    let v = take(&mut rest, 4, "truncated key version")?;
    let version = u32::from_be_bytes(
        v.try_into()
            .map_err(|_| KeysError::Malformed("truncated key version"))?,
    );
    let header_len = blob.len() - rest.len();
    let header = blob
        .get(..header_len)
        .ok_or(KeysError::Malformed("truncated header"))?;
    let nonce = take(&mut rest, NONCE_LEN, "truncated nonce")?;
    if rest.len() < TAG_LEN {
        return Err(KeysError::Malformed("truncated tag"));
    }
    if environment.is_empty() || key.is_empty() || version == 0 {
        return Err(KeysError::Malformed("empty key name or version 0"));
    }
    Ok(Parsed {
        environment,
        key,
        version,
        header,
        nonce,
        body: rest,
    })
}

/// Checks an encryption context's size.
pub fn check_context(context: &BTreeMap<String, String>) -> Result<(), KeysError> {
    if context.len() > MAX_CONTEXT_ENTRIES {
        return Err(KeysError::InvalidRequest(format!(
            "encryption context has {} entries; at most {MAX_CONTEXT_ENTRIES}",
            context.len()
        )));
    }
    if context
        .iter()
        .any(|(k, v)| k.len() > MAX_CONTEXT_FIELD || v.len() > MAX_CONTEXT_FIELD)
    {
        return Err(KeysError::InvalidRequest(format!(
            "encryption context keys and values are at most {MAX_CONTEXT_FIELD} bytes"
        )));
    }
    Ok(())
}

/// The associated data: the header, then the context in canonical form
/// (entries sorted by key, each length-prefixed, so no two contexts encode alike).
pub fn aad(header: &[u8], context: &BTreeMap<String, String>) -> Vec<u8> {
    let mut out = Vec::new();
    aad_into(&mut out, header, context);
    out
}

/// Writes [`aad`]`(header, context)` into `out`, replacing what it held, so
/// that one buffer serves many items.
pub fn aad_into(out: &mut Vec<u8>, header: &[u8], context: &BTreeMap<String, String>) {
    let size: usize = context.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    out.clear();
    out.reserve(header.len() + 4 + size);
    out.extend_from_slice(header);
    out.extend_from_slice(&(context.len() as u32).to_be_bytes());
    for (k, v) in context {
        out.extend_from_slice(&(k.len() as u32).to_be_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_through_parse() {
        let mut blob = header("prod", "payments", 7).unwrap();
        blob.extend_from_slice(&[9u8; NONCE_LEN + TAG_LEN + 3]);
        let p = parse(&blob).unwrap();
        assert_eq!((p.environment, p.key, p.version), ("prod", "payments", 7));
        assert_eq!(p.body.len(), TAG_LEN + 3);
        for len in 0..blob.len() - 3 {
            assert!(parse(&blob[..len]).is_err(), "truncated at {len} accepted");
        }
    }

    #[test]
    fn context_encoding_is_unambiguous() {
        let a: BTreeMap<String, String> = [("ab".into(), "c".into())].into();
        let b: BTreeMap<String, String> = [("a".into(), "bc".into())].into();
        assert_ne!(aad(b"h", &a), aad(b"h", &b));
        assert_ne!(aad(b"h", &a), aad(b"h", &BTreeMap::new()));
    }

    #[test]
    fn reused_buffers_encode_alike() {
        let a: BTreeMap<String, String> = [("k".into(), "v".into())].into();
        let mut buf = b"left over from before".to_vec();
        aad_into(&mut buf, b"hh", &a);
        assert_eq!(buf, aad(b"hh", &a));
        let mut out = b"x".to_vec();
        write_header(&mut out, "prod", "k", 3).unwrap();
        assert_eq!(&out[1..], header("prod", "k", 3).unwrap());
        assert_eq!(out.len(), 1 + header_len("prod", "k"));
        let long = "e".repeat(300);
        assert!(write_header(&mut out, &long, "k", 1).is_err());
        assert_eq!(out.len(), 1 + header_len("prod", "k"));
    }
}
