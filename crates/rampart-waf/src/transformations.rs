//! Transformation functions (`t:`), byte in, bytes out. Each follows
//! ModSecurity's behaviour as pinned by the secrules-language-tests vectors.

use crate::prefilter::{find, ByteSet};
use std::borrow::Cow;

/// One transformation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Transform {
    Lowercase,
    Uppercase,
    UrlDecode,
    UrlDecodeUni,
    UrlEncode,
    HtmlEntityDecode,
    JsDecode,
    CssDecode,
    CmdLine,
    CompressWhitespace,
    RemoveWhitespace,
    RemoveNulls,
    ReplaceNulls,
    ReplaceComments,
    RemoveComments,
    RemoveCommentsChar,
    NormalizePath,
    NormalizePathWin,
    Base64Decode,
    Base64DecodeExt,
    Base64Encode,
    HexDecode,
    HexEncode,
    SqlHexDecode,
    Utf8ToUnicode,
    EscapeSeqDecode,
    Length,
    Sha1,
    Md5,
    Trim,
    TrimLeft,
    TrimRight,
}

impl Transform {
    /// Parses a `t:` name. `None` (for `t:none`) is handled by the caller.
    pub(crate) fn parse(name: &str) -> Option<Transform> {
        use Transform::*;
        Some(match name.to_ascii_lowercase().as_str() {
            "lowercase" => Lowercase,
            "uppercase" => Uppercase,
            "urldecode" => UrlDecode,
            "urldecodeuni" => UrlDecodeUni,
            "urlencode" => UrlEncode,
            "htmlentitydecode" => HtmlEntityDecode,
            "jsdecode" => JsDecode,
            "cssdecode" => CssDecode,
            "cmdline" | "cmd_line" => CmdLine,
            "compresswhitespace" => CompressWhitespace,
            "removewhitespace" => RemoveWhitespace,
            "removenulls" => RemoveNulls,
            "replacenulls" => ReplaceNulls,
            "replacecomments" => ReplaceComments,
            "removecomments" => RemoveComments,
            "removecommentschar" => RemoveCommentsChar,
            "normalizepath" | "normalisepath" => NormalizePath,
            "normalizepathwin" | "normalisepathwin" => NormalizePathWin,
            "base64decode" => Base64Decode,
            "base64decodeext" => Base64DecodeExt,
            "base64encode" => Base64Encode,
            "hexdecode" => HexDecode,
            "hexencode" => HexEncode,
            "sqlhexdecode" => SqlHexDecode,
            "utf8tounicode" => Utf8ToUnicode,
            "escapeseqdecode" => EscapeSeqDecode,
            "length" => Length,
            "sha1" => Sha1,
            "md5" => Md5,
            "trim" => Trim,
            "trimleft" => TrimLeft,
            "trimright" => TrimRight,
            _ => return None,
        })
    }

    /// Bytes without which the transformation leaves a value as it is: a
    /// value holding none of them comes out of [`Transform::apply`]
    /// unchanged, so a chain whose transformations' triggers a value lacks
    /// need not run. `None` for transformations that may change any value,
    /// even an empty one (hashes, encodings, `length`, base64 decoding).
    pub(crate) fn triggers(self) -> Option<ByteSet> {
        use Transform::*;
        const SPACE: &[u8] = b" \t\n\x0b\x0c\r\xa0";
        Some(match self {
            Lowercase => ByteSet::range(b'A', b'Z'),
            Uppercase => ByteSet::range(b'a', b'z'),
            UrlDecode | UrlDecodeUni => ByteSet::from_bytes(b"%+"),
            UrlEncode => {
                let mut keep = ByteSet::range(b'a', b'z');
                keep.union_with(&ByteSet::range(b'A', b'Z'));
                keep.union_with(&ByteSet::range(b'0', b'9'));
                keep.union_with(&ByteSet::from_bytes(b"*"));
                keep.complement()
            }
            HtmlEntityDecode => ByteSet::from_bytes(b"&"),
            JsDecode | CssDecode | EscapeSeqDecode => ByteSet::from_bytes(b"\\"),
            CmdLine => {
                let mut t = ByteSet::range(b'A', b'Z');
                t.union_with(&ByteSet::from_bytes(b"\"'\\^ ,;\t\r\n"));
                t
            }
            CompressWhitespace | RemoveWhitespace | Trim | TrimLeft | TrimRight => {
                ByteSet::from_bytes(SPACE)
            }
            RemoveNulls | ReplaceNulls => ByteSet::from_bytes(b"\0"),
            ReplaceComments => ByteSet::from_bytes(b"/"),
            RemoveComments => ByteSet::from_bytes(b"/-#<"),
            RemoveCommentsChar => ByteSet::from_bytes(b"/*-#<"),
            NormalizePath => ByteSet::from_bytes(b"/."),
            NormalizePathWin => ByteSet::from_bytes(b"/.\\"),
            SqlHexDecode => ByteSet::from_bytes(b"xX"),
            Utf8ToUnicode => ByteSet::range(0x80, 0xff),
            Base64Decode | Base64DecodeExt | Base64Encode | HexDecode | HexEncode | Length
            | Sha1 | Md5 => return None,
        })
    }

    /// The bytes the transformation may put into its output that were not
    /// in its input (when it changes it at all, see [`Transform::triggers`]);
    /// `None` when it may produce any byte (decoders, hashes, encodings).
    /// An over-approximation: bytes it only removes or keeps are not listed.
    pub(crate) fn introduces(self) -> Option<ByteSet> {
        use Transform::*;
        Some(match self {
            Lowercase => ByteSet::range(b'a', b'z'),
            Uppercase => ByteSet::range(b'A', b'Z'),
            // lowercases, and writes one space for a run of separators
            CmdLine => {
                let mut t = ByteSet::range(b'a', b'z');
                t.union_with(&ByteSet::from_bytes(b" "));
                t
            }
            CompressWhitespace | ReplaceNulls | ReplaceComments => ByteSet::from_bytes(b" "),
            RemoveWhitespace | RemoveNulls | Trim | TrimLeft | TrimRight => ByteSet::default(),
            // segments removed; the Windows form turns `\` into `/`
            NormalizePath | NormalizePathWin => ByteSet::from_bytes(b"/."),
            // `%uXXXX`, lower-case hex digits
            Utf8ToUnicode => {
                let mut t = ByteSet::range(b'0', b'9');
                t.union_with(&ByteSet::range(b'a', b'f'));
                t.union_with(&ByteSet::from_bytes(b"%u"));
                t
            }
            UrlDecode | UrlDecodeUni | UrlEncode | HtmlEntityDecode | JsDecode | CssDecode
            | EscapeSeqDecode | RemoveComments | RemoveCommentsChar | SqlHexDecode
            | Base64Decode | Base64DecodeExt | Base64Encode | HexDecode | HexEncode | Length
            | Sha1 | Md5 => return None,
        })
    }

    /// Applies the transformation.
    pub(crate) fn apply<'a>(self, input: &'a [u8]) -> Cow<'a, [u8]> {
        use Transform::*;
        match self {
            Lowercase => {
                if input.iter().any(u8::is_ascii_uppercase) {
                    Cow::Owned(input.to_ascii_lowercase())
                } else {
                    Cow::Borrowed(input)
                }
            }
            Uppercase => Cow::Owned(input.to_ascii_uppercase()),
            UrlDecode => maybe(input, b"%+", |i| url_decode(i, false)),
            UrlDecodeUni => maybe(input, b"%+", |i| url_decode(i, true)),
            UrlEncode => Cow::Owned(url_encode(input)),
            HtmlEntityDecode => maybe(input, b"&", html_entity_decode),
            JsDecode => maybe(input, b"\\", js_decode),
            CssDecode => maybe(input, b"\\", css_decode),
            CmdLine => Cow::Owned(cmd_line(input)),
            CompressWhitespace => Cow::Owned(compress_whitespace(input)),
            RemoveWhitespace => {
                if input.iter().any(|&c| is_space(c)) {
                    Cow::Owned(input.iter().copied().filter(|&c| !is_space(c)).collect())
                } else {
                    Cow::Borrowed(input)
                }
            }
            RemoveNulls => maybe(input, b"\0", |i| {
                i.iter().copied().filter(|&c| c != 0).collect()
            }),
            ReplaceNulls => maybe(input, b"\0", |i| {
                i.iter().map(|&c| if c == 0 { b' ' } else { c }).collect()
            }),
            ReplaceComments => maybe(input, b"/", replace_comments),
            RemoveComments => maybe(input, b"/-#<", remove_comments),
            RemoveCommentsChar => maybe(input, b"/*-#<", remove_comments_char),
            NormalizePath => maybe(input, b"/.", |i| normalize_path(i, false)),
            NormalizePathWin => maybe(input, b"/.\\", |i| normalize_path(i, true)),
            Base64Decode => Cow::Owned(base64_decode(input, false)),
            Base64DecodeExt => Cow::Owned(base64_decode(input, true)),
            Base64Encode => {
                use base64::Engine;
                Cow::Owned(
                    base64::engine::general_purpose::STANDARD
                        .encode(input)
                        .into_bytes(),
                )
            }
            HexDecode => Cow::Owned(hex_decode(input)),
            HexEncode => Cow::Owned(hex_encode(input)),
            SqlHexDecode => maybe(input, b"xX", sql_hex_decode),
            Utf8ToUnicode => {
                if input.is_ascii() {
                    Cow::Borrowed(input)
                } else {
                    Cow::Owned(utf8_to_unicode(input))
                }
            }
            EscapeSeqDecode => maybe(input, b"\\", escape_seq_decode),
            Length => Cow::Owned(input.len().to_string().into_bytes()),
            Sha1 => {
                use sha1::Digest;
                Cow::Owned(sha1::Sha1::digest(input).to_vec())
            }
            Md5 => {
                use md5::Digest;
                Cow::Owned(md5::Md5::digest(input).to_vec())
            }
            Trim => Cow::Borrowed(trim_right(trim_left(input))),
            TrimLeft => Cow::Borrowed(trim_left(input)),
            TrimRight => Cow::Borrowed(trim_right(input)),
        }
    }
}

/// Runs `f` only when `input` holds one of the trigger bytes; most values
/// have nothing to decode, so this saves an allocation per rule.
fn maybe<'a>(input: &'a [u8], triggers: &[u8], f: impl FnOnce(&[u8]) -> Vec<u8>) -> Cow<'a, [u8]> {
    if has_any(input, triggers) {
        Cow::Owned(f(input))
    } else {
        Cow::Borrowed(input)
    }
}

/// True when `input` holds any of `bytes` (vectorised with `memchr`).
fn has_any(input: &[u8], bytes: &[u8]) -> bool {
    match bytes {
        [] => false,
        [a] => memchr::memchr(*a, input).is_some(),
        [a, b] => memchr::memchr2(*a, *b, input).is_some(),
        [a, b, c] => memchr::memchr3(*a, *b, *c, input).is_some(),
        _ => bytes.chunks(3).any(|c| has_any(input, c)),
    }
}

/// C `isspace` plus NBSP, as ModSecurity uses for whitespace transformations.
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | 0xa0)
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn hex2(a: Option<&u8>, b: Option<&u8>) -> Option<u8> {
    Some(hex_val(*a?)? << 4 | hex_val(*b?)?)
}

/// `%uHHHH` / `\uHHHH` to one byte: the low byte, with full-width ASCII
/// (U+FF01–U+FF5E) folded to ASCII as ModSecurity does without a unicode map.
fn unicode_byte(h: &[u8]) -> Option<u8> {
    if h.len() < 4 || !h.iter().take(4).all(u8::is_ascii_hexdigit) {
        return None;
    }
    let mut c = hex2(h.get(2), h.get(3))?;
    let ff = matches!(h.first(), Some(b'f' | b'F')) && matches!(h.get(1), Some(b'f' | b'F'));
    if ff && c > 0 && c < 0x5f {
        c += 0x20;
    }
    Some(c)
}

pub(crate) fn url_decode(input: &[u8], uni: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&c) = input.get(i) {
        if c == b'%' {
            if uni && matches!(input.get(i + 1), Some(b'u' | b'U')) {
                if let Some(b) = input.get(i + 2..).and_then(unicode_byte) {
                    out.push(b);
                    i += 6;
                    continue;
                }
            } else if let Some(b) = hex2(input.get(i + 1), input.get(i + 2)) {
                out.push(b);
                i += 3;
                continue;
            }
            out.push(c);
        } else if c == b'+' {
            out.push(b' ');
        } else {
            out.push(c);
        }
        i += 1;
    }
    out
}

fn url_encode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    for &c in input {
        if c == b' ' {
            out.push(b'+');
        } else if c.is_ascii_alphanumeric() || c == b'*' {
            out.push(c);
        } else {
            out.push(b'%');
            push_hex_byte(&mut out, c);
        }
    }
    out
}

fn html_entity_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&c) = input.get(i) {
        if c == b'&' {
            if let Some((bytes, used)) = html_entity(input.get(i + 1..).unwrap_or(&[])) {
                out.extend_from_slice(&bytes);
                i += 1 + used;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

/// Decodes the entity after `&`; returns its bytes and how many input bytes
/// (after the `&`) it used, including an optional `;`.
fn html_entity(s: &[u8]) -> Option<(Vec<u8>, usize)> {
    let semi = |n: usize| if s.get(n) == Some(&b';') { n + 1 } else { n };
    if s.first() == Some(&b'#') {
        let hex = matches!(s.get(1), Some(b'x' | b'X'));
        let start = if hex { 2 } else { 1 };
        let digits = s
            .get(start..)?
            .iter()
            .take_while(|c| {
                if hex {
                    c.is_ascii_hexdigit()
                } else {
                    c.is_ascii_digit()
                }
            })
            .count();
        if digits == 0 {
            return None;
        }
        let text = std::str::from_utf8(s.get(start..start + digits)?).ok()?;
        let v = u32::from_str_radix(text, if hex { 16 } else { 10 }).unwrap_or(u32::MAX);
        return Some((vec![(v & 0xff) as u8], semi(start + digits)));
    }
    let letters = s.iter().take_while(|c| c.is_ascii_alphanumeric()).count();
    let name = s.get(..letters)?.to_ascii_lowercase();
    let b = match name.as_slice() {
        b"quot" => b'"',
        b"amp" => b'&',
        b"lt" => b'<',
        b"gt" => b'>',
        b"nbsp" => 0xa0,
        _ => return None,
    };
    Some((vec![b], semi(letters)))
}

fn js_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&c) = input.get(i) {
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let next = input.get(i + 1).copied();
        match next {
            Some(b'u') => {
                if let Some(b) = input.get(i + 2..).and_then(unicode_byte) {
                    out.push(b);
                    i += 6;
                    continue;
                }
            }
            Some(b'x') => {
                if let Some(b) = hex2(input.get(i + 2), input.get(i + 3)) {
                    out.push(b);
                    i += 4;
                    continue;
                }
            }
            Some(b'0'..=b'7') => {
                let (v, n) = octal(input.get(i + 1..).unwrap_or(&[]));
                out.push(v);
                i += 1 + n;
                continue;
            }
            _ => {}
        }
        match next {
            None => {
                out.push(b'\\');
                i += 1;
            }
            Some(n) => {
                out.push(match n {
                    b'a' => 0x07,
                    b'b' => 0x08,
                    b'f' => 0x0c,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'v' => 0x0b,
                    other => other,
                });
                i += 2;
            }
        }
    }
    out
}

/// Up to three octal digits whose value fits a byte.
fn octal(s: &[u8]) -> (u8, usize) {
    let mut v: u32 = 0;
    let mut n = 0;
    for &c in s.iter().take(3) {
        if !(b'0'..=b'7').contains(&c) {
            break;
        }
        let nv = v * 8 + u32::from(c - b'0');
        if nv > 0xff {
            break;
        }
        v = nv;
        n += 1;
    }
    (v as u8, n)
}

fn css_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&c) = input.get(i) {
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let rest = input.get(i + 1..).unwrap_or(&[]);
        let n = rest
            .iter()
            .take(6)
            .take_while(|c| c.is_ascii_hexdigit())
            .count();
        if n > 0 {
            let h = rest.get(..n).unwrap_or(&[]);
            let mut b = if n == 1 {
                hex_val(h.first().copied().unwrap_or(b'0')).unwrap_or(0)
            } else {
                hex2(h.get(n - 2), h.get(n - 1)).unwrap_or(0)
            };
            // Full-width ASCII (U+FF01–U+FF5E) maps to ASCII.
            if (n == 4 || n == 5 || n == 6) && b > 0 && b < 0x5f {
                let hi = h.get(..n - 2).unwrap_or(&[]);
                let ff = hi.len() >= 2
                    && hi.iter().rev().take(2).all(|c| matches!(c, b'f' | b'F'))
                    && hi.iter().rev().skip(2).all(|&c| c == b'0');
                if ff {
                    b += 0x20;
                }
            }
            out.push(b);
            i += 1 + n;
            if input.get(i).is_some_and(|&c| is_space(c) && c != 0xa0) {
                i += 1;
            }
        } else {
            match rest.first() {
                None => i += 1,
                Some(b'\n') => i += 2,
                Some(&o) => {
                    out.push(o);
                    i += 2;
                }
            }
        }
    }
    out
}

fn cmd_line(input: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::with_capacity(input.len());
    let mut space = false;
    for &c in input {
        match c {
            b'"' | b'\'' | b'\\' | b'^' => {}
            b' ' | b',' | b';' | b'\t' | b'\r' | b'\n' => {
                if !space {
                    out.push(b' ');
                    space = true;
                }
            }
            b'/' | b'(' => {
                if space {
                    out.pop();
                }
                out.push(c);
                space = false;
            }
            _ => {
                out.push(c.to_ascii_lowercase());
                space = false;
            }
        }
    }
    out
}

fn compress_whitespace(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut in_ws = false;
    for &c in input {
        if is_space(c) {
            if !in_ws {
                out.push(b' ');
                in_ws = true;
            }
        } else {
            out.push(c);
            in_ws = false;
        }
    }
    out
}

fn replace_comments(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let rest = input.get(i..).unwrap_or(&[]);
        if rest.starts_with(b"/*") {
            out.push(b' ');
            match find(rest.get(2..).unwrap_or(&[]), b"*/") {
                Some(p) => i += 2 + p + 2,
                None => break,
            }
        } else {
            out.extend_from_slice(rest.get(..1).unwrap_or(&[]));
            i += 1;
        }
    }
    out
}

fn remove_comments(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let rest = input.get(i..).unwrap_or(&[]);
        if rest.starts_with(b"/*") {
            match find(rest.get(2..).unwrap_or(&[]), b"*/") {
                Some(p) => i += 2 + p + 2,
                None => break,
            }
        } else if rest.starts_with(b"<!--") {
            match find(rest.get(4..).unwrap_or(&[]), b"-->") {
                Some(p) => i += 4 + p + 3,
                None => break,
            }
        } else if rest.starts_with(b"--") || rest.starts_with(b"#") {
            break;
        } else {
            out.extend_from_slice(rest.get(..1).unwrap_or(&[]));
            i += 1;
        }
    }
    out
}

fn remove_comments_char(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let rest = input.get(i..).unwrap_or(&[]);
        if rest.starts_with(b"/*") || rest.starts_with(b"*/") || rest.starts_with(b"--") {
            i += 2;
        } else if rest.starts_with(b"<!--") {
            i += 4;
        } else if rest.starts_with(b"-->") {
            i += 3;
        } else if rest.starts_with(b"#") {
            i += 1;
        } else {
            out.extend_from_slice(rest.get(..1).unwrap_or(&[]));
            i += 1;
        }
    }
    out
}

fn normalize_path(input: &[u8], win: bool) -> Vec<u8> {
    let owned: Vec<u8>;
    let input = if win {
        owned = input
            .iter()
            .map(|&c| if c == b'\\' { b'/' } else { c })
            .collect();
        &owned[..]
    } else {
        input
    };
    if input.is_empty() {
        return Vec::new();
    }
    let absolute = input.first() == Some(&b'/');
    let trailing = input.last() == Some(&b'/');
    let mut segs: Vec<&[u8]> = Vec::new();
    for seg in input.split(|&c| c == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => {
                if segs.last().is_some_and(|s| *s != b"..") {
                    segs.pop();
                } else if !absolute {
                    segs.push(seg);
                }
            }
            _ => segs.push(seg),
        }
    }
    let mut out = Vec::with_capacity(input.len());
    if absolute {
        out.push(b'/');
    }
    for (n, s) in segs.iter().enumerate() {
        if n > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(s);
    }
    if trailing && !segs.is_empty() {
        out.push(b'/');
    }
    out
}

fn base64_decode(input: &[u8], forgiving: bool) -> Vec<u8> {
    let mut bits: u32 = 0;
    let mut nbits = 0;
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    for &c in input {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => {
                if forgiving {
                    continue;
                }
                break;
            }
        };
        bits = (bits << 6) | u32::from(v);
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
            bits &= (1 << nbits) - 1;
        }
    }
    out
}

fn hex_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() / 2);
    for pair in input.chunks(2) {
        if let [a, b] = pair {
            // ModSecurity's x2c: no validation, letters folded arithmetically.
            let x2c = |c: u8| {
                if c >= b'A' {
                    ((c & 0xdf).wrapping_sub(b'A')).wrapping_add(10)
                } else {
                    c.wrapping_sub(b'0')
                }
            };
            out.push(x2c(*a).wrapping_mul(16).wrapping_add(x2c(*b)));
        }
    }
    out
}

fn hex_encode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() * 2);
    for &c in input {
        push_hex_byte(&mut out, c);
    }
    out
}

/// Appends `c` as two lower-case hex digits.
fn push_hex_byte(out: &mut Vec<u8>, c: u8) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for nibble in [c >> 4, c & 0xf] {
        out.push(DIGITS.get(usize::from(nibble)).copied().unwrap_or(b'0'));
    }
}

fn sql_hex_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&c) = input.get(i) {
        if c == b'0'
            && matches!(input.get(i + 1), Some(b'x' | b'X'))
            && hex2(input.get(i + 2), input.get(i + 3)).is_some()
        {
            i += 2;
            while let Some(b) = hex2(input.get(i), input.get(i + 1)) {
                out.push(b);
                i += 2;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn utf8_to_unicode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() * 2);
    let mut i = 0;
    while let Some(&c) = input.get(i) {
        let len = match c {
            0xc0..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf7 => 4,
            _ => 1,
        };
        if len > 1 {
            if let Some(seq) = input.get(i..i + len) {
                if let Ok(s) = std::str::from_utf8(seq) {
                    if let Some(ch) = s.chars().next() {
                        out.extend_from_slice(format!("%u{:04x}", u32::from(ch)).as_bytes());
                        i += len;
                        continue;
                    }
                }
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

fn escape_seq_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&c) = input.get(i) {
        let Some(&n) = input.get(i + 1).filter(|_| c == b'\\') else {
            out.push(c);
            i += 1;
            continue;
        };
        let simple = match n {
            b'a' => Some(0x07),
            b'b' => Some(0x08),
            b'f' => Some(0x0c),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'v' => Some(0x0b),
            b'\\' | b'?' | b'\'' | b'"' => Some(n),
            _ => None,
        };
        if let Some(b) = simple {
            out.push(b);
            i += 2;
        } else if let (b'x' | b'X', Some(b)) = (n, hex2(input.get(i + 2), input.get(i + 3))) {
            out.push(b);
            i += 4;
        } else if (b'0'..=b'7').contains(&n) {
            let digits = input
                .get(i + 1..)
                .unwrap_or(&[])
                .iter()
                .take(3)
                .take_while(|c| (b'0'..=b'7').contains(*c))
                .fold((0u32, 0usize), |(v, k), &d| {
                    (v * 8 + u32::from(d - b'0'), k + 1)
                });
            out.push((digits.0 & 0xff) as u8);
            i += 1 + digits.1;
        } else {
            // Unknown escape: the backslash goes, the character stays.
            out.push(n);
            i += 2;
        }
    }
    out
}

fn trim_left(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&c| is_space(c)).count();
    s.get(n..).unwrap_or(&[])
}

fn trim_right(s: &[u8]) -> &[u8] {
    let n = s.iter().rev().take_while(|&&c| is_space(c)).count();
    s.get(..s.len() - n).unwrap_or(&[])
}

/// A transformation's trigger bytes and the bytes it may introduce
/// ([`Transform::triggers`], [`Transform::introduces`]; `None`: it may
/// change any value, it may produce any byte).
pub(crate) type TfBytes = (Option<ByteSet>, Option<ByteSet>);

/// Whether a value holding the bytes `present` may, after a chain of
/// transformations (or at any stage of it, for multiMatch), hold a byte of
/// `need`: false means no stage can. `chain` is each transformation's
/// [`TfBytes`]: one the value holds no trigger byte of leaves it as it is;
/// one that may change it adds the bytes it may introduce.
pub(crate) fn chain_may_hold(chain: &[TfBytes], present: &ByteSet, need: &ByteSet) -> bool {
    let mut present = *present;
    for (triggers, introduces) in chain {
        if triggers.is_some_and(|tr| !tr.intersects(&present)) {
            continue;
        }
        match introduces {
            Some(i) => present.union_with(i),
            None => return true,
        }
    }
    present.intersects(need)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, input: &[u8]) -> Vec<u8> {
        Transform::parse(name).unwrap().apply(input).into_owned()
    }

    #[test]
    fn common_crs_chains() {
        assert_eq!(t("urlDecodeUni", b"%27%u0027%uff07+x"), b"''' x");
        assert_eq!(t("cmdLine", b"C:\\Win\"dows ; /c ( x"), b"c:windows/c( x");
        assert_eq!(
            t("htmlEntityDecode", b"&lt;script&gt;&#x41;&#66"),
            b"<script>AB"
        );
        assert_eq!(t("jsDecode", b"\\x3cscript\\u003e\\n"), b"<script>\n");
        assert_eq!(t("normalizePath", b"/a/./b/../c//d"), b"/a/c/d");
        assert_eq!(t("normalizePathWin", b"\\a\\..\\b"), b"/b");
        assert_eq!(t("compressWhitespace", b"a \t\n b"), b"a b");
        assert_eq!(t("length", b"abcd"), b"4");
    }

    const ALL_NAMES: &[&str] = &[
        "lowercase",
        "uppercase",
        "urlDecode",
        "urlDecodeUni",
        "urlEncode",
        "htmlEntityDecode",
        "jsDecode",
        "cssDecode",
        "cmdLine",
        "compressWhitespace",
        "removeWhitespace",
        "removeNulls",
        "replaceNulls",
        "replaceComments",
        "removeComments",
        "removeCommentsChar",
        "normalizePath",
        "normalizePathWin",
        "base64Decode",
        "base64DecodeExt",
        "base64Encode",
        "hexDecode",
        "hexEncode",
        "sqlHexDecode",
        "utf8toUnicode",
        "escapeSeqDecode",
        "length",
        "sha1",
        "md5",
        "trim",
        "trimLeft",
        "trimRight",
    ];

    /// A seeded xorshift64 sequence: deterministic test data.
    fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
        move || crate::prefilter::tests::next(&mut seed)
    }

    /// Bytes that the transformations treat specially.
    const INTERESTING: &[u8] = b"aZ09 %+&\\/.*-#<>!;'\"^,\t\r\n\0\x0b\xa0\xc3\xa9xX()u";

    #[test]
    fn introduced_bytes_cover_every_new_byte_of_the_output() {
        // what `chain_may_hold` relies on: a transformation's output holds
        // only bytes of its input and bytes it lists as introduced
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        let all: Vec<u8> = (0..=255u8).collect();
        for name in ALL_NAMES {
            let tf = Transform::parse(name).unwrap();
            let Some(intro) = tf.introduces() else {
                continue;
            };
            for round in 0..4000 {
                let len = (next() % 24) as usize;
                let pool: &[u8] = if round % 2 == 0 { &all } else { INTERESTING };
                let input: Vec<u8> = (0..len)
                    .map(|_| pool[(next() % pool.len() as u64) as usize])
                    .collect();
                let mut allowed = ByteSet::of(&input);
                allowed.union_with(&intro);
                let out = tf.apply(&input);
                assert!(
                    out.iter().all(|&b| allowed.contains(b)),
                    "{name}: {input:?} -> {out:?}"
                );
            }
        }
    }

    #[test]
    fn chain_may_hold_follows_the_chain() {
        let facts = |names: &[&str]| -> Vec<TfBytes> {
            names
                .iter()
                .map(|n| {
                    let t = Transform::parse(n).unwrap();
                    (t.triggers(), t.introduces())
                })
                .collect()
        };
        let dot = ByteSet::from_bytes(b".");
        let lower = facts(&["lowercase", "cmdLine", "removeNulls"]);
        // lowercase and cmdLine cannot bring a dot
        assert!(!chain_may_hold(&lower, &ByteSet::of(b"Mozilla X11"), &dot));
        assert!(chain_may_hold(&lower, &ByteSet::of(b"Mozilla/5.0"), &dot));
        // a decoder may bring anything, but only when triggered
        let decode = facts(&["urlDecodeUni", "lowercase"]);
        assert!(chain_may_hold(&decode, &ByteSet::of(b"a%2eb"), &dot));
        assert!(!chain_may_hold(&decode, &ByteSet::of(b"AB"), &dot));
        // lowercase brings letters
        assert!(chain_may_hold(
            &lower,
            &ByteSet::of(b"ABC"),
            &ByteSet::from_bytes(b"a")
        ));
    }

    #[test]
    fn values_without_trigger_bytes_are_left_unchanged() {
        // xorshift: deterministic inputs over every byte, and over the
        // bytes each transformation does not list as triggers
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        let interesting = INTERESTING;
        for name in ALL_NAMES {
            let tf = Transform::parse(name).unwrap();
            let Some(trig) = tf.triggers() else {
                continue;
            };
            let allowed: Vec<u8> = (0..=255u8)
                .filter(|b| !trig.intersects(&ByteSet::of(&[*b])))
                .collect();
            let quiet: Vec<u8> = interesting
                .iter()
                .copied()
                .filter(|b| allowed.contains(b))
                .collect();
            assert_eq!(&*tf.apply(b""), b"", "{name} on an empty value");
            for round in 0..4000 {
                let len = (next() % 24) as usize;
                let pool: &[u8] = if round % 2 == 0 { &allowed } else { &quiet };
                let input: Vec<u8> = (0..len)
                    .map(|_| pool[(next() % pool.len() as u64) as usize])
                    .collect();
                assert_eq!(&*tf.apply(&input), &input[..], "{name} changed {input:?}");
            }
        }
    }

    #[test]
    fn every_transformation_is_listed_in_the_trigger_test() {
        for name in ALL_NAMES {
            assert!(Transform::parse(name).is_some(), "{name}");
        }
        assert_eq!(ALL_NAMES.len(), 32);
    }
}
