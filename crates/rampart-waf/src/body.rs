//! Request body processors: URL-encoded, JSON and multipart. Each takes the
//! whole (already size-limited) body and returns arguments plus any error;
//! none can panic or recurse without bound on hostile input.

use crate::transformations::url_decode;

/// `(name, value)` pairs in order.
pub(crate) type Pairs = Vec<(String, Vec<u8>)>;

/// Parses `a=1&b=2` with `sep`, decoding `%xx` and `+`. Stops at `limit`
/// arguments.
pub(crate) fn parse_urlencoded(s: &[u8], sep: u8, limit: usize) -> Pairs {
    let mut out = Vec::new();
    for part in s.split(|&c| c == sep) {
        if part.is_empty() {
            continue;
        }
        if out.len() >= limit {
            break;
        }
        let (k, v) = match part.iter().position(|&c| c == b'=') {
            Some(p) => (
                part.get(..p).unwrap_or(&[]),
                part.get(p + 1..).unwrap_or(&[]),
            ),
            None => (part, &[][..]),
        };
        out.push((
            String::from_utf8_lossy(&url_decode(k, false)).into_owned(),
            url_decode(v, false),
        ));
    }
    out
}

/// Flattens a JSON document into `json.a.b` / `json.list.0` arguments.
pub(crate) fn parse_json(body: &[u8], depth_limit: usize, limit: usize) -> Result<Pairs, String> {
    // Check nesting before serde does (its own limit is 128 and errors late).
    let mut depth = 0usize;
    let mut in_str = false;
    let mut esc = false;
    for &c in body {
        if in_str {
            if esc {
                esc = false;
            } else if c == b'\\' {
                esc = true;
            } else if c == b'"' {
                in_str = false;
            }
            continue;
        }
        match c {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > depth_limit {
                    return Err(format!(
                        "JSON nesting exceeds the depth limit of {depth_limit}"
                    ));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("JSON parsing error: {e}"))?;
    let mut out = Vec::new();
    flatten("json".to_string(), &v, &mut out, limit);
    Ok(out)
}

fn flatten(prefix: String, v: &serde_json::Value, out: &mut Pairs, limit: usize) {
    use serde_json::Value;
    if out.len() >= limit {
        return;
    }
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                flatten(format!("{prefix}.{k}"), v, out, limit);
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                flatten(format!("{prefix}.{i}"), v, out, limit);
            }
        }
        Value::String(s) => out.push((prefix, s.as_bytes().to_vec())),
        Value::Number(n) => out.push((prefix, n.to_string().into_bytes())),
        Value::Bool(b) => out.push((prefix, b.to_string().into_bytes())),
        Value::Null => out.push((prefix, Vec::new())),
    }
}

/// The multipart strictness flags CRS and ModSecurity's recommended rules read.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct MultipartFlags {
    pub boundary_quoted: bool,
    pub boundary_whitespace: bool,
    pub data_before: bool,
    pub data_after: bool,
    pub header_folding: bool,
    pub lf_line: bool,
    pub crlf_lf_lines: bool,
    pub missing_semicolon: bool,
    pub invalid_quoting: bool,
    pub invalid_part: bool,
    pub invalid_header_folding: bool,
    pub unmatched_boundary: bool,
    pub file_limit_exceeded: bool,
}

impl MultipartFlags {
    pub(crate) fn strict_error(&self) -> bool {
        self.boundary_quoted
            || self.boundary_whitespace
            || self.data_before
            || self.data_after
            || self.header_folding
            || self.lf_line
            || self.missing_semicolon
            || self.invalid_quoting
            || self.invalid_part
            || self.invalid_header_folding
            || self.unmatched_boundary
            || self.file_limit_exceeded
    }
}

/// A parsed multipart body.
#[derive(Debug, Default)]
pub(crate) struct Multipart {
    pub args: Pairs,
    /// `(field name, file name, size)`.
    pub files: Vec<(String, String, usize)>,
    /// `(field name, "Header: value")`.
    pub part_headers: Pairs,
    pub flags: MultipartFlags,
    pub error: Option<String>,
    pub last_name: String,
    pub last_filename: String,
}

/// Extracts the boundary from a `multipart/form-data; boundary=…` header.
pub(crate) fn boundary(content_type: &str, flags: &mut MultipartFlags) -> Option<String> {
    let lower = content_type.to_ascii_lowercase();
    let pos = lower.find("boundary")?;
    let rest = content_type.get(pos + "boundary".len()..)?;
    let trimmed = rest.trim_start();
    if trimmed.len() != rest.len() {
        flags.boundary_whitespace = true;
    }
    let rest = trimmed.strip_prefix('=')?;
    let trimmed = rest.trim_start();
    if trimmed.len() != rest.len() {
        flags.boundary_whitespace = true;
    }
    let b = if let Some(q) = trimmed.strip_prefix('"') {
        flags.boundary_quoted = true;
        q.split('"').next().unwrap_or("")
    } else {
        trimmed.split([';', ',', ' ']).next().unwrap_or("")
    };
    if b.is_empty() {
        None
    } else {
        Some(b.to_string())
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    if n.is_empty() || h.len() < n.len() {
        return None;
    }
    h.windows(n.len()).position(|w| w == n)
}

/// Parses a multipart/form-data body.
pub(crate) fn parse_multipart(
    body: &[u8],
    content_type: &str,
    arg_limit: usize,
    file_limit: usize,
) -> Multipart {
    let mut m = Multipart::default();
    let Some(b) = boundary(content_type, &mut m.flags) else {
        m.error = Some("Multipart: boundary not found in Content-Type".into());
        return m;
    };
    let delim = format!("--{b}").into_bytes();
    let Some(first) = find(body, &delim) else {
        m.error = Some("Multipart: no boundary in body".into());
        return m;
    };
    if first > 0 {
        m.flags.data_before = true;
    }
    let mut pos = first + delim.len();
    let mut finished = false;
    loop {
        let rest = body.get(pos..).unwrap_or(&[]);
        if rest.starts_with(b"--") {
            finished = true;
            let after = rest.get(2..).unwrap_or(&[]);
            if after.iter().any(|c| !c.is_ascii_whitespace()) {
                m.flags.data_after = true;
            }
            break;
        }
        // end of the boundary line
        let rest = if let Some(r) = rest.strip_prefix(b"\r\n") {
            r
        } else if let Some(r) = rest.strip_prefix(b"\n") {
            m.flags.lf_line = true;
            r
        } else {
            m.flags.invalid_part = true;
            match find(rest, b"\n") {
                Some(p) => rest.get(p + 1..).unwrap_or(&[]),
                None => break,
            }
        };
        let part_start = body.len() - rest.len();
        // next delimiter, preceded by a line break
        let Some(next) = find(rest, &delim) else {
            break;
        };
        let mut part = rest.get(..next).unwrap_or(&[]);
        if let Some(p) = part.strip_suffix(b"\r\n") {
            part = p;
        } else if let Some(p) = part.strip_suffix(b"\n") {
            m.flags.lf_line = true;
            part = p;
        } else {
            m.flags.unmatched_boundary = true;
        }
        parse_part(part, &mut m, arg_limit, file_limit);
        pos = part_start + next + delim.len();
    }
    if !finished {
        m.error = Some("Multipart: final boundary missing".into());
    }
    m
}

fn parse_part(part: &[u8], m: &mut Multipart, arg_limit: usize, file_limit: usize) {
    let (head, content) = match (find(part, b"\r\n\r\n"), find(part, b"\n\n")) {
        (Some(a), Some(b)) if b < a => {
            m.flags.lf_line = true;
            (
                part.get(..b).unwrap_or(&[]),
                part.get(b + 2..).unwrap_or(&[]),
            )
        }
        (Some(a), _) => (
            part.get(..a).unwrap_or(&[]),
            part.get(a + 4..).unwrap_or(&[]),
        ),
        (None, Some(b)) => {
            m.flags.lf_line = true;
            (
                part.get(..b).unwrap_or(&[]),
                part.get(b + 2..).unwrap_or(&[]),
            )
        }
        (None, None) => {
            m.flags.invalid_part = true;
            return;
        }
    };
    let mut headers: Vec<String> = Vec::new();
    for line in head.split(|&c| c == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text = String::from_utf8_lossy(line).into_owned();
        if line.first().is_some_and(|c| *c == b' ' || *c == b'\t') {
            m.flags.header_folding = true;
            match headers.last_mut() {
                Some(h) => h.push_str(text.trim_start()),
                None => m.flags.invalid_header_folding = true,
            }
        } else if !text.is_empty() {
            headers.push(text);
        }
    }
    let mut name = None;
    let mut filename = None;
    for h in &headers {
        let Some((hn, hv)) = h.split_once(':') else {
            m.flags.invalid_part = true;
            continue;
        };
        if hn.trim().eq_ignore_ascii_case("content-disposition") {
            let (n, f) = content_disposition(hv.trim(), &mut m.flags);
            name = n;
            filename = f;
        }
    }
    let Some(name) = name else {
        m.flags.invalid_part = true;
        return;
    };
    for h in headers {
        m.part_headers.push((name.clone(), h.into_bytes()));
    }
    m.last_name = name.clone();
    match filename {
        Some(f) => {
            if m.files.len() >= file_limit {
                m.flags.file_limit_exceeded = true;
                return;
            }
            m.last_filename = f.clone();
            m.files.push((name, f, content.len()));
        }
        None => {
            if m.args.len() < arg_limit {
                m.args.push((name, content.to_vec()));
            }
        }
    }
}

/// Parses `form-data; name="a"; filename="b"`.
fn content_disposition(v: &str, flags: &mut MultipartFlags) -> (Option<String>, Option<String>) {
    let Some(rest) = v.strip_prefix("form-data") else {
        flags.invalid_part = true;
        return (None, None);
    };
    let mut name = None;
    let mut filename = None;
    let mut s = rest.trim_start();
    while !s.is_empty() {
        match s.strip_prefix(';') {
            Some(r) => s = r.trim_start(),
            None => {
                flags.missing_semicolon = true;
            }
        }
        let Some(eq) = s.find('=') else { break };
        let key = s.get(..eq).unwrap_or("").trim().to_ascii_lowercase();
        let after = s.get(eq + 1..).unwrap_or("").trim_start();
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            let mut val = String::new();
            let mut chars = q.char_indices();
            let mut end = q.len();
            let mut closed = false;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            if n != '"' && n != '\\' {
                                val.push('\\');
                            }
                            val.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        closed = true;
                        break;
                    }
                    _ => val.push(c),
                }
            }
            if !closed {
                flags.invalid_quoting = true;
            }
            (val, q.get(end..).unwrap_or(""))
        } else {
            let end = after.find(';').unwrap_or(after.len());
            let raw = after.get(..end).unwrap_or("").trim();
            if raw.contains(['\'', '"']) {
                flags.invalid_quoting = true;
            }
            (raw.to_string(), after.get(end..).unwrap_or(""))
        };
        match key.as_str() {
            "name" => name = Some(value),
            "filename" | "filename*" => filename = Some(value),
            _ => flags.invalid_part = true,
        }
        s = next.trim_start();
    }
    (name, filename)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urlencoded() {
        let a = parse_urlencoded(b"a=1&b=x+y%21&c&&d=", b'&', 10);
        assert_eq!(a.len(), 4);
        assert_eq!(a[1], ("b".to_string(), b"x y!".to_vec()));
        assert_eq!(a[2], ("c".to_string(), Vec::new()));
        assert_eq!(parse_urlencoded(b"a=1&b=2", b'&', 1).len(), 1);
    }

    #[test]
    fn json_flattens_and_limits_depth() {
        let a = parse_json(br#"{"a":{"b":[1,"x"]},"c":null,"d":true}"#, 10, 100).unwrap();
        let names: Vec<&str> = a.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["json.a.b.0", "json.a.b.1", "json.c", "json.d"]);
        let deep = "[".repeat(100_000);
        assert!(parse_json(deep.as_bytes(), 512, 100).is_err());
        assert!(parse_json(b"{bad", 10, 100).is_err());
    }

    #[test]
    fn multipart_parts_and_flags() {
        let body = b"--xx\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nhello\r\n--xx\r\nContent-Disposition: form-data; name=\"f\"; filename=\"x.php\"\r\nContent-Type: text/plain\r\n\r\n<?php\r\n--xx--\r\n";
        let m = parse_multipart(body, "multipart/form-data; boundary=xx", 100, 100);
        assert!(m.error.is_none());
        assert_eq!(m.args, vec![("a".to_string(), b"hello".to_vec())]);
        assert_eq!(m.files, vec![("f".to_string(), "x.php".to_string(), 5)]);
        assert_eq!(m.part_headers.len(), 3);
        assert!(!m.flags.strict_error());
        let m = parse_multipart(
            b"junk--xx\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nv\r\n--xx",
            "multipart/form-data; boundary=\"xx\"",
            100,
            100,
        );
        assert!(m.flags.data_before && m.flags.boundary_quoted);
        assert!(m.error.is_some());
    }
}
