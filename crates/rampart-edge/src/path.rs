//! Request paths as the router and the services see them.
//!
//! A route's authentication and roles are chosen by path prefix, so the
//! path the edge matches must be the path the service acts on. Services
//! and their frameworks resolve `..`, decode `%2e`, and merge `//`; a
//! request for `/public/../admin` matched as it was written would take the
//! `/public` route's rules to the service's `/admin`. So, before routing,
//! the edge normalises the path (RFC 3986 §6.2.2): percent-encoded
//! unreserved characters are decoded, other escapes are upper-cased, `.`
//! and `..` segments are resolved and repeated slashes merged. The route
//! is matched on the result and the request is forwarded with it (the
//! query string unchanged). The firewall still sees the request as it was
//! sent, so traversal rules can match it.
//!
//! Refused, as nginx refuses them: a `..` that climbs above the root, an
//! encoded `/` or `\` (`%2F`, `%5C`, which a service may decode into a
//! separator after routing), an encoded NUL, a raw backslash, a bad escape;
//! and a dot segment with parameters (`/public/..;/admin`), which Java
//! servers resolve as `..`. Also refused: an escaped overlong UTF-8 form
//! (`%C0%AE`, `%C0%AF`), which old decoders read as `.` or `/`.
//!
//! Two readings of a normal path remain that the route matcher cannot
//! settle alone: Java servers (Tomcat, Jetty, Spring) drop each segment's
//! parameters (`/admin;x/users` is their `/admin/users`), and
//! case-insensitive ones (Express's default router, ASP.NET, IIS) read
//! `/ADMIN/users` as `/admin/users`; and Windows servers (IIS) cut
//! trailing dots and spaces from each segment (`/admin./users`).
//! [`without_parameters`] gives the first reading, [`without_trailing_dots`]
//! the last; [`crate::router::Router::find_unambiguous`] refuses a path whose
//! readings fall under different routes ([`PathError::Ambiguous`]).

use std::borrow::Cow;

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Not an origin-form path (it does not start with `/`).
    NotAbsolute,
    /// `%` not followed by two hex digits.
    BadEscape,
    /// `%2F`, `%5C` or `%00`, or a raw backslash.
    EncodedSeparator,
    /// A `..` segment above the root.
    AboveRoot,
    /// An escaped overlong UTF-8 sequence (`%C0%AF`), which no valid text
    /// contains and old decoders (Tomcat's CVE-2008-2938, IIS) read as
    /// `/`, `.` or `\\` after routing.
    Overlong,
    /// A `.` or `..` segment with parameters (`..;x`), which some servers
    /// (Tomcat, Jetty) resolve as `..` after routing.
    DotSegmentParameters,
    /// Read without its segment parameters, in another case or without
    /// trailing dots, as some servers read paths, the path falls under
    /// another route.
    Ambiguous,
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "the path does not start with /",
            PathError::BadEscape => "the path has a malformed percent escape",
            PathError::EncodedSeparator => {
                "the path has an encoded slash, backslash or NUL, or a backslash"
            }
            PathError::AboveRoot => "the path climbs above the root",
            PathError::Overlong => "the path has an overlong UTF-8 escape (such as %C0%AF)",
            PathError::DotSegmentParameters => "the path has a dot segment with parameters (..;)",
            PathError::Ambiguous => {
                "the path falls under another route without its segment parameters, in another case or without trailing dots"
            }
        })
    }
}

/// The value of one hex digit.
fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Whether an escaped byte `c`, followed by `rest`, starts an overlong
/// UTF-8 sequence: a lead byte `C0` or `C1` (a 2-byte form of ASCII), or
/// `E0` or `F0` whose next byte, escaped or raw, is below the shortest
/// form (`E0 80`–`9F`, `F0 80`–`8F`).
fn overlong(c: u8, rest: Option<&[u8]>) -> bool {
    let next = || match rest? {
        [b'%', h, l, ..] => Some(hex(*h)? << 4 | hex(*l)?),
        [b, ..] => Some(*b),
        [] => None,
    };
    match c {
        0xC0 | 0xC1 => true,
        0xE0 => next().is_some_and(|n| (0x80..0xA0).contains(&n)),
        0xF0 => next().is_some_and(|n| (0x80..0x90).contains(&n)),
        _ => false,
    }
}

/// The normalised form of `path` (see the module doc); borrowed when the
/// path is already normal, which is the common case.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if bytes.contains(&b'\\') {
        return Err(PathError::EncodedSeparator);
    }
    let suspicious =
        bytes.contains(&b'%') || bytes.windows(2).any(|w| matches!(w, [b'/', b'/' | b'.']));
    if !suspicious {
        return Ok(Cow::Borrowed(path));
    }
    // Decode what may be decoded; keep other escapes, upper-cased.
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b != b'%' {
            decoded.push(b);
            i += 1;
            continue;
        }
        let (Some(h), Some(l)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(PathError::BadEscape);
        };
        let c = h << 4 | l;
        if matches!(c, b'/' | b'\\' | 0) {
            return Err(PathError::EncodedSeparator);
        }
        if overlong(c, bytes.get(i + 3..)) {
            return Err(PathError::Overlong);
        }
        if unreserved(c) {
            decoded.push(c);
        } else {
            decoded.push(b'%');
            decoded.extend_from_slice(format!("{c:02X}").as_bytes());
        }
        i += 3;
    }
    // Resolve dot segments and merge empty ones.
    let mut out: Vec<&[u8]> = Vec::new();
    let mut segments = decoded.split(|&b| b == b'/').skip(1).peekable();
    let mut trailing = false;
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        match seg {
            b"" | b"." => trailing = last,
            s if s.starts_with(b"..;") || s.starts_with(b".;") => {
                return Err(PathError::DotSegmentParameters);
            }
            b".." => {
                if out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing = last;
            }
            s => {
                out.push(s);
                trailing = false;
            }
        }
    }
    let mut norm = Vec::with_capacity(decoded.len());
    for seg in &out {
        norm.push(b'/');
        norm.extend_from_slice(seg);
    }
    if trailing || out.is_empty() {
        norm.push(b'/');
    }
    if norm == bytes {
        return Ok(Cow::Borrowed(path));
    }
    // Only ASCII bytes were decoded, and only ASCII was added, so the
    // result is as valid UTF-8 as the input.
    String::from_utf8(norm)
        .map(Cow::Owned)
        .map_err(|_| PathError::BadEscape)
}

/// `path` (normal, see [`normalize`]) as servers that drop segment
/// parameters read it: each segment cut at its first `;`, the result
/// normalised again (`/a;x/b` → `/a/b`, `/;x/a` → `/a`). `None` when the
/// path has no `;`.
pub fn without_parameters(path: &str) -> Option<String> {
    if !path.contains(';') {
        return None;
    }
    let out = cut_parameters(path, "");
    Some(match normalize(&out) {
        Ok(n) => n.into_owned(),
        Err(_) => out,
    })
}

/// `path` (normal) as Windows servers (IIS, ASP.NET on Windows) read it:
/// trailing dots and spaces cut from each segment, as Windows cuts them
/// from file names (`/admin./x` and `/admin%20/x` are their `/admin/x`),
/// the result normalised again. `None` when no segment ends so.
pub fn without_trailing_dots(path: &str) -> Option<String> {
    let ends = |seg: &str| seg.ends_with('.') || seg.ends_with("%20");
    if !path.split(['/', ';']).any(ends) {
        return None;
    }
    let mut out = String::with_capacity(path.len());
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        // Parameters stay with their segment: cut before them.
        let (name, params) = seg.split_at(seg.find(';').unwrap_or(seg.len()));
        let mut name = name;
        while let Some(n) = name.strip_suffix('.').or_else(|| name.strip_suffix("%20")) {
            name = n;
        }
        out.push_str(name);
        out.push_str(params);
    }
    Some(match normalize(&out) {
        Ok(n) => n.into_owned(),
        Err(_) => out,
    })
}

/// `path` as the audit log keeps it: each segment's parameters, which can
/// carry session ids, replaced by `;…` (`/login;jsessionid=…` becomes
/// `/login;…`).
pub fn redact_parameters(path: &str) -> Cow<'_, str> {
    if path.contains(';') {
        Cow::Owned(cut_parameters(path, ";…"))
    } else {
        Cow::Borrowed(path)
    }
}

/// `path` with each segment cut at its first `;`, `mark` put where
/// something was cut.
fn cut_parameters(path: &str, mark: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        match seg.split_once(';') {
            Some((name, _)) => {
                out.push_str(name);
                out.push_str(mark);
            }
            None => out.push_str(seg),
        }
    }
    out
}

/// `path` (which starts with the route's `prefix`) with that prefix
/// replaced by `with`, one `/` between the two parts: the route's
/// `upstream_path_prefix`. `/api/users` with prefix `/api` (or `/api/`)
/// and `/` gives `/users`; with `/v2`, `/v2/users`; `/api` alone gives
/// `with`. A path without the prefix is returned as it is.
pub fn replace_prefix(path: &str, prefix: &str, with: &str) -> String {
    let Some(rest) = path.strip_prefix(prefix) else {
        return path.to_string();
    };
    // The prefix's own trailing `/` belongs to the rest.
    let rest = match prefix.strip_suffix('/') {
        Some(_) if !rest.is_empty() => Cow::Owned(format!("/{rest}")),
        _ => Cow::Borrowed(rest),
    };
    let mut out = String::with_capacity(with.len() + rest.len());
    out.push_str(with.strip_suffix('/').unwrap_or(with));
    out.push_str(&rest);
    // Nothing left (`with` was `/`), or `with` ended in a `/` that the
    // rest did not bring back.
    if out.is_empty() || (rest.is_empty() && with.ends_with('/')) {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize(p).map(Cow::into_owned)
    }

    #[test]
    fn normal_paths_are_borrowed_unchanged() {
        for p in [
            "/",
            "/a",
            "/a/b/",
            "/api/v1/users/42",
            "/a.b/c..d/.e",
            "/~x/y-z_",
        ] {
            assert!(
                matches!(normalize(p), Ok(Cow::Borrowed(q)) if q == p),
                "{p}"
            );
        }
    }

    #[test]
    fn dot_segments_and_repeated_slashes_are_resolved() {
        let cases = [
            ("/public/../admin", "/admin"),
            ("/public/./a/../b", "/public/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("//admin", "/admin"),
            ("/a//b///c", "/a/b/c"),
            ("/a/", "/a/"),
            ("/.", "/"),
            ("/a/..", "/"),
            ("/public/%2e%2e/admin", "/admin"),
            ("/public/%2E%2e/admin", "/admin"),
            ("/public/.%2e/admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/a%7eb", "/a~b"),
            ("/a%20b", "/a%20b"),
            ("/a%3fb%c3%a9", "/a%3Fb%C3%A9"),
        ];
        for (raw, want) in cases {
            assert_eq!(n(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn hostile_paths_are_refused() {
        let cases = [
            ("/..", PathError::AboveRoot),
            ("/a/../..", PathError::AboveRoot),
            ("/%2e%2e/etc/passwd", PathError::AboveRoot),
            ("/public%2F..%2Fadmin", PathError::EncodedSeparator),
            ("/a%2fb", PathError::EncodedSeparator),
            ("/a%5Cb", PathError::EncodedSeparator),
            ("/a%00b", PathError::EncodedSeparator),
            ("/public/%c0%ae%c0%ae/admin", PathError::Overlong),
            ("/a%C0%AFb", PathError::Overlong),
            ("/a%c1%9cb", PathError::Overlong),
            ("/a%C0%80", PathError::Overlong),
            ("/a%E0%80%AFb", PathError::Overlong),
            ("/a%F0%80%80%AFb", PathError::Overlong),
            ("/public/..;/admin", PathError::DotSegmentParameters),
            ("/public/..;x=1/admin", PathError::DotSegmentParameters),
            ("/public/.;/admin", PathError::DotSegmentParameters),
            ("/public/%2e%2e;/admin", PathError::DotSegmentParameters),
            ("/a\\..\\admin", PathError::EncodedSeparator),
            ("/a%", PathError::BadEscape),
            ("/a%4", PathError::BadEscape),
            ("/a%zz", PathError::BadEscape),
            ("a/b", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
        ];
        for (raw, want) in cases {
            assert_eq!(n(raw), Err(want), "{raw}");
        }
    }

    #[test]
    fn escaped_text_in_shortest_form_or_latin_1_passes() {
        for p in [
            "/caf%C3%A9",
            "/%E0%A4%85",
            "/%F0%9F%98%80",
            "/caf%E9",
            "/%E0",
            "/%C2%A0",
        ] {
            assert_eq!(n(p).as_deref(), Ok(p), "{p}");
        }
    }

    #[test]
    fn trailing_dots_and_spaces_are_cut_as_windows_cuts_them() {
        assert_eq!(without_trailing_dots("/a/b"), None);
        assert_eq!(without_trailing_dots("/a.b/c"), None);
        assert_eq!(
            without_trailing_dots("/admin./x").as_deref(),
            Some("/admin/x")
        );
        assert_eq!(
            without_trailing_dots("/admin%20/x").as_deref(),
            Some("/admin/x")
        );
        assert_eq!(
            without_trailing_dots("/admin.%20./").as_deref(),
            Some("/admin/")
        );
        assert_eq!(
            without_trailing_dots("/admin.;x/y").as_deref(),
            Some("/admin;x/y")
        );
        assert_eq!(without_trailing_dots("/a/.../b").as_deref(), Some("/a/b"));
        assert_eq!(without_trailing_dots("/x.").as_deref(), Some("/x"));
    }

    #[test]
    fn audited_paths_keep_no_segment_parameters() {
        assert_eq!(redact_parameters("/a/b"), "/a/b");
        assert_eq!(
            redact_parameters("/login;jsessionid=SECRET/x;y"),
            "/login;…/x;…"
        );
        assert_eq!(redact_parameters("/;"), "/;…");
    }

    #[test]
    fn parameters_are_dropped_as_java_servers_drop_them() {
        assert_eq!(without_parameters("/admin/users"), None);
        assert_eq!(
            without_parameters("/admin;x=1/users").as_deref(),
            Some("/admin/users")
        );
        assert_eq!(without_parameters("/admin;").as_deref(), Some("/admin"));
        assert_eq!(
            without_parameters("/;x/admin;jsessionid=1").as_deref(),
            Some("/admin")
        );
        assert_eq!(without_parameters("/a;b;c/d").as_deref(), Some("/a/d"));
    }

    #[test]
    fn normalising_twice_changes_nothing_and_never_panics() {
        let parts = [
            "/", "a", ".", "..", "%2e", "%2E", "%41", "%", "%2f", "//", "é", "%c3%a9",
        ];
        // Every sequence of up to four parts.
        let mut stack = vec![String::from("/")];
        for _ in 0..4 {
            let mut next = Vec::new();
            for p in &stack {
                for part in parts {
                    next.push(format!("{p}{part}"));
                }
            }
            for p in &next {
                if let Ok(once) = normalize(p) {
                    let twice = normalize(&once).map(Cow::into_owned);
                    assert_eq!(twice.as_deref(), Ok(once.as_ref()), "{p}");
                    assert!(
                        !once.contains("/../") && !once.contains("/./") && !once.contains("//")
                    );
                }
            }
            stack = next;
        }
    }

    #[test]
    fn prefixes_are_replaced_with_one_slash_between() {
        let cases = [
            ("/api/users", "/api", "/", "/users"),
            ("/api/users", "/api/", "/", "/users"),
            ("/api/users/7", "/api", "/v2", "/v2/users/7"),
            ("/api/users", "/api/", "/v2/", "/v2/users"),
            ("/api", "/api", "/", "/"),
            ("/api", "/api", "/v2", "/v2"),
            ("/api/", "/api", "/v2", "/v2/"),
            ("/api/", "/api/", "/", "/"),
            ("/api/", "/api/", "/v2/", "/v2/"),
            ("/users", "/", "/app", "/app/users"),
            ("/", "/", "/app/", "/app/"),
            ("/", "/", "/", "/"),
            ("/other", "/api", "/", "/other"),
        ];
        for (path, prefix, with, want) in cases {
            assert_eq!(
                replace_prefix(path, prefix, with),
                want,
                "{path} {prefix} {with}"
            );
        }
    }
}
