//! Raw to validated: every check, every cross-reference, every error at once.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;

use ipnet::IpNet;

use crate::model::*;
use crate::raw::{RawConfig, RawError, RawRoute, RawUpstream, S};
use crate::{BUILTIN_BASELINE, BUILTIN_PREFIX};

/// Text that can go into a request line or header as it is: visible
/// ASCII, no spaces.
fn valid_header_text(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic())
}

/// An environment variable name as the project writes them: `A-Z`, `0-9`
/// and `_`, not starting with a digit.
fn valid_env_name(var: &str) -> bool {
    var.starts_with(|ch: char| ch.is_ascii_uppercase() || ch == '_')
        && var
            .chars()
            .all(|ch| ch.is_ascii_uppercase() || ch.is_ascii_digit() || ch == '_')
}

/// Longest `audit.commit_delay_us` accepted (10 ms).
const MAX_COMMIT_DELAY_US: u32 = 10_000;
/// Highest `weight` of an upstream (Envoy allows up to 128).
const MAX_UPSTREAM_WEIGHT: u32 = 100;
/// `audit.commit_delay_us` by default.
const DEFAULT_COMMIT_DELAY_US: u32 = 2_000;
/// Largest `audit.commit_siblings` accepted.
const MAX_COMMIT_SIBLINGS: u32 = 1_000;
/// `audit.commit_siblings` by default.
const DEFAULT_COMMIT_SIBLINGS: u32 = 16;
/// Largest `audit.copy_delay_ms` accepted.
const MAX_COPY_DELAY_MS: u32 = 60_000;
/// `audit.copy_delay_ms` by default.
const DEFAULT_COPY_DELAY_MS: u32 = 50;

struct Checker {
    errors: Vec<RawError>,
}

/// Which message a header rule edits.
#[derive(Clone, Copy)]
enum Side {
    Request,
    Response,
}

/// An HTTP field name (RFC 9110 token), lower-cased, or `None`.
fn field_name(name: &str) -> Option<String> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    (!name.is_empty() && name.bytes().all(tchar)).then(|| name.to_ascii_lowercase())
}

/// An HTTP field name, lower-cased; an error if it is not one, or is one
/// the edge keeps for itself on that side.
fn header_name(name: &str, side: Side) -> Result<String, &'static str> {
    let lower = field_name(name).ok_or("not a header name")?;
    let (reserved, why): (&[&str], _) = match side {
        Side::Response => (
            &RESERVED_RESPONSE_HEADERS,
            "kept by the edge (framing, encoding, HSTS and x-rampart- headers)",
        ),
        Side::Request => (
            &RESERVED_REQUEST_HEADERS,
            "kept by the edge (framing, Host, X-Forwarded-For/-Proto, X-Request-Id and x-rampart- headers)",
        ),
    };
    if reserved.contains(&lower.as_str()) || lower.starts_with("x-rampart-") {
        return Err(why);
    }
    Ok(lower)
}

/// A CORS origin, `scheme://host[:port]` as browsers send it (lower case,
/// no path), or `None`.
fn origin(text: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    let (scheme, rest) = lower.split_once("://")?;
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
    {
        return None;
    }
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => {
            let (addr, after) = v6.split_once(']')?;
            addr.parse::<std::net::Ipv6Addr>().ok()?;
            (&rest[..addr.len() + 2], after.strip_prefix(':'))
        }
        None => match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        },
    };
    let host_ok = host.starts_with('[')
        || (!host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'));
    let port_ok = port.is_none_or(|p| !p.starts_with('+') && p.parse::<u16>().is_ok_and(|n| n > 0));
    let whole = host.len() + port.map_or(0, |p| p.len() + 1) == rest.len();
    (host_ok && port_ok && whole).then_some(lower)
}

impl Checker {
    /// `name = "value"` headers to set on one side, checked: names by
    /// [`header_name`], values printable ASCII (spaces allowed).
    fn headers_to_set(
        &mut self,
        map: &std::collections::BTreeMap<String, S<String>>,
        path: &str,
        side: Side,
    ) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for (name, value) in map {
            let at = format!("{path}.{name}");
            let v = value.get_ref();
            let ok_value = !v.trim().is_empty()
                && v.bytes()
                    .all(|b| b == b' ' || b == b'\t' || b.is_ascii_graphic());
            match header_name(name, side) {
                Err(why) => self.err(value, at, format!("{name:?}: {why}")),
                Ok(_) if !ok_value => {
                    self.err(value, at, "the value must be printable ASCII, not empty")
                }
                Ok(lower) if out.iter().any(|(n, _)| *n == lower) => self.err(
                    value,
                    at,
                    format!("{name:?} twice (names are case-insensitive)"),
                ),
                Ok(lower) => out.push((lower, v.trim().to_string())),
            }
        }
        out.sort();
        out
    }

    /// Header names to remove on one side, checked as above.
    fn headers_to_remove(&mut self, list: &[S<String>], path: &str, side: Side) -> Vec<String> {
        let mut out = Vec::new();
        for (i, n) in list.iter().enumerate() {
            match header_name(n.get_ref(), side) {
                Ok(lower) => out.push(lower),
                Err(why) => self.err(
                    n,
                    format!("{path}[{i}]"),
                    format!("{:?}: {why}", n.get_ref()),
                ),
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// HTTP methods, upper case, each once.
    fn methods(&mut self, list: &[S<String>], path: &str) -> Vec<String> {
        let mut methods: Vec<String> = Vec::new();
        for (j, m) in list.iter().enumerate() {
            let name = m.get_ref();
            let path = format!("{path}[{j}]");
            if name.is_empty()
                || name.len() > 32
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
            {
                self.err(
                    m,
                    &path,
                    format!(
                        "invalid method {name:?}: expected an HTTP method in upper case, as clients send it, such as GET or POST"
                    ),
                );
            } else if methods.contains(name) {
                self.err(m, &path, format!("method {name:?} is listed twice"));
            } else {
                methods.push(name.clone());
            }
        }
        methods
    }

    /// Header names in lower case, each once (any name, as CORS lists
    /// them).
    fn cors_headers(&mut self, list: &[S<String>], path: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (j, n) in list.iter().enumerate() {
            match field_name(n.get_ref()) {
                None => self.err(
                    n,
                    format!("{path}[{j}]"),
                    format!("{:?}: not a header name", n.get_ref()),
                ),
                Some(lower) if !out.contains(&lower) => out.push(lower),
                Some(_) => {}
            }
        }
        out
    }

    /// A route's `cors` table at `path`.
    fn cors(&mut self, v: &S<crate::raw::RawCors>, path: &str) -> RouteCors {
        let raw = v.get_ref();
        let mut origins = Vec::new();
        let mut any_origin = false;
        for (j, o) in raw.origins.iter().enumerate() {
            let text = o.get_ref();
            if text == "*" {
                any_origin = true;
            } else if let Some(origin) = origin(text) {
                if !origins.contains(&origin) {
                    origins.push(origin);
                }
            } else {
                self.err(
                    o,
                    format!("{path}.origins[{j}]"),
                    format!(
                        "invalid origin {text:?}: expected scheme://host[:port] with no path, such as https://app.example.com, or \"*\""
                    ),
                );
            }
        }
        if raw.origins.is_empty() {
            self.err(
                v,
                format!("{path}.origins"),
                "name at least one origin, or \"*\"",
            );
        }
        if any_origin && !origins.is_empty() {
            self.err(
                v,
                format!("{path}.origins"),
                "\"*\" stands for every origin: list it alone",
            );
        }
        let credentials = raw.credentials.as_ref().is_some_and(|c| *c.get_ref());
        if any_origin && credentials {
            if let Some(c) = &raw.credentials {
                self.err(
                    c,
                    format!("{path}.credentials"),
                    "browsers refuse credentials with any origin (\"*\"): name the origins",
                );
            }
        }
        let methods = if raw.methods.is_empty() {
            vec!["GET".into(), "HEAD".into(), "POST".into()]
        } else {
            self.methods(&raw.methods, &format!("{path}.methods"))
        };
        RouteCors {
            origins,
            any_origin,
            methods,
            headers: self.cors_headers(&raw.headers, &format!("{path}.headers")),
            expose_headers: self
                .cors_headers(&raw.expose_headers, &format!("{path}.expose_headers")),
            credentials,
            max_age_seconds: self.bounded(
                raw.max_age_seconds.as_ref(),
                &format!("{path}.max_age_seconds"),
                0..=86_400,
                600,
            ),
        }
    }

    /// A token bucket `{ burst, per_second }` at `path`.
    fn rate(&mut self, rl: &crate::raw::RawRate, path: &str) -> Option<RouteRate> {
        let burst = u32::try_from(*rl.burst.get_ref()).ok().filter(|b| *b >= 1);
        let per_second =
            Some(*rl.per_second.get_ref()).filter(|v| v.is_finite() && *v > 0.0 && *v <= 1e6);
        if burst.is_none() {
            self.err(
                &rl.burst,
                format!("{path}.burst"),
                "must be 1 to 4294967295",
            );
        }
        if per_second.is_none() {
            self.err(
                &rl.per_second,
                format!("{path}.per_second"),
                "must be a number above 0 and at most 1000000",
            );
        }
        Some(RouteRate {
            burst: burst?,
            per_second: per_second?,
        })
    }

    /// `{ rule = N }` or `{ tag = "re" }`, optionally with `target`.
    fn waf_exclusion(
        &mut self,
        x: &S<crate::raw::RawWafExclusion>,
        path: &str,
    ) -> Option<WafExclusion> {
        let raw = x.get_ref();
        let rules = match (&raw.rule, &raw.tag) {
            (Some(_), Some(tag)) => {
                self.err(
                    tag,
                    format!("{path}.tag"),
                    "give either rule or tag, not both",
                );
                None
            }
            (None, None) => {
                self.err(
                    x,
                    path,
                    "name a rule (rule = 942100) or a tag (tag = \"attack-sqli\")",
                );
                None
            }
            (Some(rule), None) => match u64::try_from(*rule.get_ref()) {
                Ok(id) if id > 0 => Some(WafRuleSelector::Id(id)),
                _ => {
                    self.err(
                        rule,
                        format!("{path}.rule"),
                        format!(
                            "invalid rule id {}: must be a positive integer",
                            rule.get_ref()
                        ),
                    );
                    None
                }
            },
            (None, Some(tag)) => {
                let t = tag.get_ref();
                if t.trim().is_empty() {
                    self.err(
                        tag,
                        format!("{path}.tag"),
                        "name a tag such as \"attack-sqli\"",
                    );
                    None
                } else if let Err(e) = regex::Regex::new(t) {
                    self.err(
                        tag,
                        format!("{path}.tag"),
                        format!("invalid tag regex {t:?}: {}", regex_error(&e)),
                    );
                    None
                } else {
                    Some(WafRuleSelector::Tag(t.clone()))
                }
            }
        };
        let target = match &raw.target {
            None => None,
            Some(t) => match waf_target(t.get_ref()) {
                Ok(target) => Some(target),
                Err(message) => {
                    self.err(t, format!("{path}.target"), message);
                    return None;
                }
            },
        };
        Some(WafExclusion {
            rules: rules?,
            target,
        })
    }

    /// An optional integer within `range`; `default` when absent or wrong
    /// (a wrong value is an error at its place).
    fn bounded(
        &mut self,
        v: Option<&S<i64>>,
        path: &str,
        range: std::ops::RangeInclusive<u32>,
        default: u32,
    ) -> u32 {
        let Some(v) = v else { return default };
        match u32::try_from(*v.get_ref()) {
            Ok(n) if range.contains(&n) => n,
            _ => {
                self.err(
                    v,
                    path,
                    format!(
                        "invalid value {}: must be {} to {}",
                        v.get_ref(),
                        range.start(),
                        range.end()
                    ),
                );
                default
            }
        }
    }

    /// `[identity]`: lifetimes in range, each no shorter than the one it
    /// outlives (access ≤ refresh ≤ session), and token claims as text.
    fn identity(&mut self, raw: &crate::raw::RawIdentity) -> Identity {
        let d = Identity::default();
        let mut claim = |v: &Option<S<String>>, path: &str, default: &str| match v {
            Some(v) if valid_header_text(v.get_ref()) && v.get_ref().len() <= 255 => {
                v.get_ref().clone()
            }
            Some(v) => {
                self.err(
                    v,
                    path,
                    format!(
                        "invalid value {:?}: 1 to 255 visible ASCII characters, no spaces",
                        v.get_ref()
                    ),
                );
                default.to_string()
            }
            None => default.to_string(),
        };
        let issuer = claim(&raw.issuer, "identity.issuer", &d.issuer);
        let audience = claim(&raw.audience, "identity.audience", &d.audience);
        let access_ttl_seconds = self.bounded(
            raw.access_ttl_seconds.as_ref(),
            "identity.access_ttl_seconds",
            60..=86_400,
            d.access_ttl_seconds,
        );
        let refresh_ttl_seconds = self.bounded(
            raw.refresh_ttl_seconds.as_ref(),
            "identity.refresh_ttl_seconds",
            60..=31_536_000,
            d.refresh_ttl_seconds.max(access_ttl_seconds),
        );
        let session_max_seconds = self.bounded(
            raw.session_max_seconds.as_ref(),
            "identity.session_max_seconds",
            60..=31_536_000,
            d.session_max_seconds.max(refresh_ttl_seconds),
        );
        self.not_shorter(
            raw.refresh_ttl_seconds.as_ref(),
            "identity.refresh_ttl_seconds",
            refresh_ttl_seconds,
            (access_ttl_seconds, "access_ttl_seconds"),
        );
        self.not_shorter(
            raw.session_max_seconds.as_ref(),
            "identity.session_max_seconds",
            session_max_seconds,
            (refresh_ttl_seconds, "refresh_ttl_seconds"),
        );
        Identity {
            issuer,
            audience,
            access_ttl_seconds,
            refresh_ttl_seconds,
            session_max_seconds,
            max_elevation_seconds: self.bounded(
                raw.max_elevation_seconds.as_ref(),
                "identity.max_elevation_seconds",
                60..=604_800,
                d.max_elevation_seconds,
            ),
            elevation_request_ttl_seconds: self.bounded(
                raw.elevation_request_ttl_seconds.as_ref(),
                "identity.elevation_request_ttl_seconds",
                60..=604_800,
                d.elevation_request_ttl_seconds,
            ),
            throttle: raw
                .throttle
                .as_ref()
                .map_or(d.throttle, |t| self.throttle(t)),
        }
    }

    /// `[store]`: the backend, and for PostgreSQL how to reach it. The
    /// connection string itself is never in the file, only the name of
    /// the variable that holds it.
    fn store(&mut self, st: &S<crate::raw::RawStore>) -> StoreBackend {
        let raw = st.get_ref();
        match raw.backend.get_ref().as_str() {
            "sqlite" => {
                let extra: [(&str, Option<std::ops::Range<usize>>); 5] = [
                    ("url_env", raw.url_env.as_ref().map(|v| v.span())),
                    ("pool_size", raw.pool_size.as_ref().map(|v| v.span())),
                    ("tls_ca", raw.tls_ca.as_ref().map(|v| v.span())),
                    (
                        "connect_timeout_seconds",
                        raw.connect_timeout_seconds.as_ref().map(|v| v.span()),
                    ),
                    (
                        "reload_interval_ms",
                        raw.reload_interval_ms.as_ref().map(|v| v.span()),
                    ),
                ];
                for (field, span) in extra {
                    if let Some(span) = span {
                        self.errors.push(RawError {
                            span: Some(span),
                            path: format!("store.{field}"),
                            message: "only for backend = \"postgres\"".into(),
                        });
                    }
                }
                StoreBackend::Sqlite
            }
            "postgres" => {
                let url_env = self.url_env(
                    raw.url_env.as_ref(),
                    "store.url_env",
                    DEFAULT_DATABASE_URL_ENV,
                );
                StoreBackend::Postgres(PostgresStore {
                    url_env,
                    pool_size: self.bounded(raw.pool_size.as_ref(), "store.pool_size", 1..=512, 16),
                    tls_ca: raw.tls_ca.as_ref().map(|p| PathBuf::from(p.get_ref())),
                    connect_timeout_seconds: self.bounded(
                        raw.connect_timeout_seconds.as_ref(),
                        "store.connect_timeout_seconds",
                        1..=300,
                        10,
                    ),
                    reload_interval_ms: self.bounded(
                        raw.reload_interval_ms.as_ref(),
                        "store.reload_interval_ms",
                        100..=60_000,
                        2_000,
                    ),
                })
            }
            other => {
                self.err(
                    &raw.backend,
                    "store.backend",
                    format!("unknown backend {other:?}: use \"sqlite\" or \"postgres\""),
                );
                StoreBackend::Sqlite
            }
        }
    }

    /// The name of the environment variable that holds a connection URL
    /// (`default` when absent or wrong). A wrong value is not echoed: it may
    /// be the URL itself, password and all, pasted in the wrong place.
    fn url_env(&mut self, v: Option<&S<String>>, path: &str, default: &str) -> String {
        match v {
            Some(v) if valid_env_name(v.get_ref()) => v.get_ref().clone(),
            Some(v) => {
                self.err(
                    v,
                    path,
                    "not an environment variable name: use A-Z, 0-9 and _ (the variable holds the connection URL; the URL itself never goes in this file)",
                );
                default.to_string()
            }
            None => default.to_string(),
        }
    }

    /// `[redis]`: the URL's variable, the sync interval, the key prefix.
    fn redis(&mut self, raw: &crate::raw::RawRedis) -> Redis {
        let url_env = self.url_env(raw.url_env.as_ref(), "redis.url_env", DEFAULT_REDIS_URL_ENV);
        let key_prefix = match &raw.key_prefix {
            Some(p) if (1..=64).contains(&p.get_ref().len()) && valid_header_text(p.get_ref()) => {
                p.get_ref().clone()
            }
            Some(p) => {
                self.err(
                    p,
                    "redis.key_prefix",
                    format!(
                        "invalid key prefix {:?}: 1 to 64 visible ASCII characters, no spaces",
                        p.get_ref()
                    ),
                );
                "rampart:".to_string()
            }
            None => "rampart:".to_string(),
        };
        Redis {
            url_env,
            sync_interval_ms: self.bounded(
                raw.sync_interval_ms.as_ref(),
                "redis.sync_interval_ms",
                10..=5_000,
                100,
            ),
            key_prefix,
            tls_ca: raw.tls_ca.as_ref().map(|p| PathBuf::from(p.get_ref())),
        }
    }

    /// `[identity.throttle]`; the longest delay at least the first.
    fn throttle(&mut self, t: &crate::raw::RawThrottle) -> LoginThrottle {
        let d = LoginThrottle::default();
        let p = |f: &str| format!("identity.throttle.{f}");
        let base_delay_seconds = self.bounded(
            t.base_delay_seconds.as_ref(),
            &p("base_delay_seconds"),
            1..=3_600,
            d.base_delay_seconds,
        );
        let max_delay_seconds = self.bounded(
            t.max_delay_seconds.as_ref(),
            &p("max_delay_seconds"),
            1..=86_400,
            d.max_delay_seconds.max(base_delay_seconds),
        );
        self.not_shorter(
            t.max_delay_seconds.as_ref(),
            &p("max_delay_seconds"),
            max_delay_seconds,
            (base_delay_seconds, "base_delay_seconds"),
        );
        LoginThrottle {
            free_failures_per_account: self.bounded(
                t.free_failures_per_account.as_ref(),
                &p("free_failures_per_account"),
                0..=1_000,
                d.free_failures_per_account,
            ),
            free_failures_per_source: self.bounded(
                t.free_failures_per_source.as_ref(),
                &p("free_failures_per_source"),
                0..=100_000,
                d.free_failures_per_source,
            ),
            base_delay_seconds,
            max_delay_seconds,
            forget_after_seconds: self.bounded(
                t.forget_after_seconds.as_ref(),
                &p("forget_after_seconds"),
                60..=604_800,
                d.forget_after_seconds,
            ),
        }
    }

    /// A path to request, as it goes on the request line: `/` first, then
    /// visible ASCII.
    fn request_path(&mut self, v: &S<String>, path: &str) -> Option<String> {
        let p = v.get_ref();
        if p.starts_with('/') && valid_header_text(p) {
            return Some(p.clone());
        }
        self.err(
            v,
            path,
            format!(
                "invalid path {p:?}: must start with / and hold no spaces or control characters"
            ),
        );
        None
    }

    /// A duration the file set at `v` (`value` once checked) may not be
    /// shorter than the setting `floor` names.
    fn not_shorter(&mut self, v: Option<&S<i64>>, path: &str, value: u32, floor: (u32, &str)) {
        let (floor, name) = floor;
        if let Some(v) = v.filter(|_| value < floor) {
            self.err(v, path, format!("{value} is shorter than {name} ({floor})"));
        }
    }

    fn err<T>(&mut self, at: &S<T>, path: impl Into<String>, message: impl Into<String>) {
        self.err_span(Some(at.span()), path, message);
    }

    fn err_span(
        &mut self,
        span: Option<Range<usize>>,
        path: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.errors.push(RawError {
            span,
            path: path.into(),
            message: message.into(),
        });
    }

    /// Names are lowercase identifiers: they end up in key ids, URLs and file names.
    fn name(&mut self, v: &S<String>, path: &str) -> String {
        let s = v.get_ref();
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !ok {
            self.err(
                v,
                path,
                format!("invalid name {s:?}: use 1 to 63 of a-z, 0-9, '-' and '_', starting with a letter"),
            );
        }
        s.clone()
    }

    fn port(&mut self, v: &S<i64>, path: &str) -> u16 {
        match u16::try_from(*v.get_ref()) {
            Ok(p) if p != 0 => p,
            _ => {
                self.err(
                    v,
                    path,
                    format!("invalid port {}: must be 1 to 65535", v.get_ref()),
                );
                0
            }
        }
    }

    /// A count from 1 to `max` (days, records, seconds).
    fn days(&mut self, v: &Option<S<i64>>, path: &str, default: u32, max: u32) -> u32 {
        self.bounded(v.as_ref(), path, 1..=max, default)
    }

    fn cidr(&mut self, v: &S<String>, path: &str) -> Option<IpNet> {
        let s = v.get_ref().trim();
        let parsed = s
            .parse::<IpNet>()
            .ok()
            .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from));
        if parsed.is_none() {
            self.err(
                v,
                path,
                format!("invalid CIDR {s:?}: expected an address or network such as 10.0.0.0/8 or ::1/128"),
            );
        }
        parsed
    }

    /// Paths of PEM files; an empty one is an error at `field[i]`.
    fn pem_paths(&mut self, raw: &[S<String>], field: &str) -> Vec<PathBuf> {
        raw.iter()
            .enumerate()
            .filter_map(|(i, v)| {
                if v.get_ref().trim().is_empty() {
                    self.err(v, format!("{field}[{i}]"), "name a PEM file");
                    None
                } else {
                    Some(PathBuf::from(v.get_ref()))
                }
            })
            .collect()
    }

    /// The value `v` names among `choices`, or an error at `path` that
    /// lists them ("unknown {what} …: expected a, b or c").
    fn one_of<T: Copy>(
        &mut self,
        v: &S<String>,
        path: &str,
        what: &str,
        choices: &[(&str, T)],
    ) -> Option<T> {
        let got = v.get_ref().as_str();
        if let Some((_, t)) = choices.iter().find(|(name, _)| *name == got) {
            return Some(*t);
        }
        let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
        let expected = match names.split_last() {
            Some((last, [])) => (*last).to_string(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        };
        self.err(
            v,
            path,
            format!("unknown {what} {got:?}: expected {expected}"),
        );
        None
    }

    /// A balancing method by its name.
    fn balance(&mut self, v: &S<String>, path: &str) -> Option<EdgeBalance> {
        self.one_of(
            v,
            path,
            "balance",
            &[
                ("round_robin", EdgeBalance::RoundRobin),
                ("least_requests", EdgeBalance::LeastRequests),
                ("client_hash", EdgeBalance::ClientHash),
            ],
        )
    }

    fn cidrs(&mut self, list: &[S<String>], path: &str) -> Vec<IpNet> {
        list.iter()
            .enumerate()
            .filter_map(|(i, v)| self.cidr(v, &format!("{path}[{i}]")))
            .collect()
    }

    fn upstream(&mut self, v: &S<RawUpstream>, path: &str) -> Option<Upstream> {
        let raw = v.get_ref();
        let s = raw.addr.as_str();
        let backup = raw.backup.unwrap_or(false);
        let weight = match raw.weight {
            None => 1,
            Some(w) => match u32::try_from(w) {
                Ok(w @ 1..=MAX_UPSTREAM_WEIGHT) => w,
                _ => {
                    self.err(
                        v,
                        format!("{path}.weight"),
                        format!("invalid weight {w}: expected 1 to {MAX_UPSTREAM_WEIGHT}"),
                    );
                    return None;
                }
            },
        };
        if let Ok(addr) = s.parse::<SocketAddr>() {
            if addr.port() == 0 {
                self.err(v, path, format!("invalid upstream {s:?}: port 0"));
                return None;
            }
            return Some(Upstream {
                host: addr.ip().to_string(),
                port: addr.port(),
                weight,
                backup,
            });
        }
        let parsed = s.rsplit_once(':').and_then(|(host, port)| {
            let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
            valid_hostname(host).then(|| Upstream {
                host: host.to_string(),
                port,
                weight,
                backup,
            })
        });
        if parsed.is_none() {
            self.err(
                v,
                path,
                format!("invalid upstream {s:?}: expected host:port with a port from 1 to 65535"),
            );
        }
        parsed
    }
}

/// `COLLECTION`, `COLLECTION:key` or `COLLECTION:/regex/`, with a collection
/// from [`WAF_TARGET_COLLECTIONS`] (keys only on collections that have them).
fn waf_target(s: &str) -> Result<WafTarget, String> {
    let (name, key) = match s.split_once(':') {
        Some((n, k)) => (n.trim(), Some(k.trim())),
        None => (s.trim(), None),
    };
    let known = || {
        WAF_TARGET_COLLECTIONS
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(&(collection, keyed)) = WAF_TARGET_COLLECTIONS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
    else {
        return Err(format!(
            "invalid target {s:?}: unknown collection {name:?} (known: {})",
            known()
        ));
    };
    let key = match key {
        None => None,
        Some(_) if !keyed => {
            return Err(format!(
                "invalid target {s:?}: {collection} is a single value and takes no key"
            ))
        }
        Some("") => {
            return Err(format!(
            "invalid target {s:?}: name a key after ':', or leave out ':' for the whole collection"
        ))
        }
        Some(k) if k.len() >= 2 && k.starts_with('/') && k.ends_with('/') => {
            let pat = k.get(1..k.len() - 1).unwrap_or("");
            if pat.is_empty() {
                return Err(format!("invalid target {s:?}: empty regex"));
            }
            // The engine matches keys case-insensitively.
            regex::RegexBuilder::new(pat)
                .case_insensitive(true)
                .build()
                .map_err(|e| format!("invalid target {s:?}: bad key regex: {}", regex_error(&e)))?;
            Some(WafTargetKey::Regex(pat.to_string()))
        }
        Some(k) if k.contains(['|', '!', '&', '\'']) || k.starts_with('/') => {
            return Err(format!(
                "invalid target {s:?}: a key is a plain name or a /regex/"
            ))
        }
        Some(k) => Some(WafTargetKey::Name(k.to_string())),
    };
    Ok(WafTarget {
        collection: collection.to_string(),
        key,
    })
}

/// The gist of a regex error: its last line (`error: unclosed group`); the
/// lines before it draw the pattern.
fn regex_error(e: &regex::Error) -> String {
    let text = e.to_string();
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    last.trim().trim_start_matches("error: ").to_string()
}

fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// `plane:action`, where the action may name a sub-resource with dots
/// (`identity:apikeys.own`) and either part may be or end in `*`.
fn valid_permission(p: &str) -> bool {
    let part = |s: &str, dots: bool| {
        let body = s.strip_suffix('*').unwrap_or(s);
        (s == "*" || !body.is_empty())
            && !body.starts_with('.')
            && !body.contains("..")
            && body.chars().all(|c| {
                c.is_ascii_lowercase()
                    || c.is_ascii_digit()
                    || c == '-'
                    || c == '_'
                    || (dots && c == '.')
            })
    };
    p == "*"
        || matches!(p.split_once(':'), Some((plane, action)) if part(plane, false) && part(action, true))
}

/// Checks that names in one list are unique; returns name → index.
/// The longest service name: a service's secrets are sealed under its key
/// `svc.<name>`, and key names are at most 64 characters.
const MAX_SERVICE_NAME: usize = 60;

fn unique<'a>(
    c: &mut Checker,
    list: impl Iterator<Item = (&'a S<String>, String)>,
    what: &str,
) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for (i, (name, path)) in list.enumerate() {
        if let Some(first) = seen.get(name.get_ref()) {
            c.err(
                name,
                path,
                format!(
                    "duplicate {what} name {:?} (first defined at {what}s[{first}])",
                    name.get_ref()
                ),
            );
        } else {
            seen.insert(name.get_ref().clone(), i);
        }
    }
    seen
}

pub(crate) fn validate(raw: RawConfig) -> Result<Config, Vec<RawError>> {
    let mut c = Checker { errors: Vec::new() };

    // Node and control API.
    let node = Node {
        name: match &raw.node.name {
            Some(n) => c.name(n, "node.name"),
            None => "rampart-1".to_string(),
        },
        data_dir: raw
            .node
            .data_dir
            .as_ref()
            .map(|d| PathBuf::from(d.get_ref())),
    };
    let listen = match &raw.control.listen {
        Some(l) => l.get_ref().parse::<SocketAddr>().unwrap_or_else(|_| {
            c.err(
                l,
                "control.listen",
                format!(
                    "invalid address {:?}: expected ip:port such as 127.0.0.1:7443",
                    l.get_ref()
                ),
            );
            SocketAddr::from(([127, 0, 0, 1], 7443))
        }),
        None => SocketAddr::from(([127, 0, 0, 1], 7443)),
    };
    let allow = c.cidrs(&raw.control.allow, "control.allow");
    let control_client_ca = c.pem_paths(&raw.control.client_ca, "control.client_ca");

    // Environments.
    let envs = unique(
        &mut c,
        raw.environments
            .iter()
            .enumerate()
            .map(|(i, e)| (&e.name, format!("environments[{i}].name"))),
        "environment",
    );
    let environments: Vec<Environment> = raw
        .environments
        .iter()
        .enumerate()
        .map(|(i, e)| Environment {
            name: c.name(&e.name, &format!("environments[{i}].name")),
            production: e.production,
            description: e.description.clone(),
        })
        .collect();
    let env_names = || envs.keys().cloned().collect::<BTreeSet<_>>();
    let check_env = |c: &mut Checker, v: &S<String>, path: &str| {
        if !envs.contains_key(v.get_ref()) {
            c.err(
                v,
                path,
                format!(
                    "unknown environment {:?} (defined: {})",
                    v.get_ref(),
                    list(env_names())
                ),
            );
        }
    };

    // Services.
    let services_by_name = unique(
        &mut c,
        raw.services
            .iter()
            .enumerate()
            .map(|(i, s)| (&s.name, format!("services[{i}].name"))),
        "service",
    );
    let mut services = Vec::new();
    for (i, s) in raw.services.iter().enumerate() {
        let p = |f: &str| format!("services[{i}].{f}");
        if s.name.get_ref().len() > MAX_SERVICE_NAME {
            c.err(
                &s.name,
                p("name"),
                format!(
                    "service name {:?} is longer than {MAX_SERVICE_NAME} characters: its key, svc.<name>, must fit in 64",
                    s.name.get_ref()
                ),
            );
        }
        check_env(&mut c, &s.environment, &p("environment"));
        let upstreams = s
            .upstreams
            .iter()
            .enumerate()
            .filter_map(|(j, u)| c.upstream(u, &format!("services[{i}].upstreams[{j}]")))
            .collect::<Vec<Upstream>>();
        if let (Some(first), true) = (
            s.upstreams.first(),
            !upstreams.is_empty() && upstreams.iter().all(|u| u.backup),
        ) {
            c.err(
                first,
                p("upstreams"),
                "every instance is a backup: backups stand in for the others, so one at least must not be",
            );
        }
        for (var, secret) in &s.secrets {
            if !valid_env_name(var) {
                c.err(
                    secret,
                    p(&format!("secrets.{var}")),
                    format!("invalid environment variable name {var:?}: use A-Z, 0-9 and _"),
                );
            }
            c.name(secret, &p(&format!("secrets.{var}")));
        }
        let tls_ca = s.tls_ca.as_ref().and_then(|v| {
            if v.get_ref().trim().is_empty() {
                c.err(v, p("tls_ca"), "name a PEM file");
                None
            } else {
                Some(PathBuf::from(v.get_ref()))
            }
        });
        let tls_server_name = s.tls_server_name.as_ref().and_then(|v| {
            if tls_ca.is_none() && s.tls_ca.is_none() {
                c.err(
                    v,
                    p("tls_server_name"),
                    "needs tls_ca: the CA the instances' certificates chain to",
                );
                return None;
            }
            if valid_hostname(v.get_ref()) {
                Some(v.get_ref().to_ascii_lowercase())
            } else {
                c.err(v, p("tls_server_name"), "must be a host name");
                None
            }
        });
        let tls_client = match (&s.tls_client_cert, &s.tls_client_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                if s.tls_ca.is_none() {
                    c.err(
                        cert,
                        p("tls_client_cert"),
                        "needs tls_ca: a client certificate is presented over TLS",
                    );
                }
                let mut path = |v: &S<String>, f: &str| {
                    if v.get_ref().trim().is_empty() {
                        c.err(v, p(f), "name a PEM file");
                        None
                    } else {
                        Some(PathBuf::from(v.get_ref()))
                    }
                };
                match (path(cert, "tls_client_cert"), path(key, "tls_client_key")) {
                    (Some(cert), Some(key)) => Some(ClientIdentity { cert, key }),
                    _ => None,
                }
            }
            (Some(v), None) => {
                c.err(v, p("tls_client_cert"), "needs tls_client_key");
                None
            }
            (None, Some(v)) => {
                c.err(v, p("tls_client_key"), "needs tls_client_cert");
                None
            }
        };
        let protocol = s
            .protocol
            .as_ref()
            .and_then(|v| {
                c.one_of(
                    v,
                    &p("protocol"),
                    "protocol",
                    &[
                        ("http1", UpstreamProtocol::Http1),
                        ("http2", UpstreamProtocol::Http2),
                    ],
                )
            })
            .unwrap_or(UpstreamProtocol::Http1);
        services.push(Service {
            protocol,
            balance: s.balance.as_ref().and_then(|v| c.balance(v, &p("balance"))),
            tls_ca,
            tls_server_name,
            tls_client,
            health_path: s
                .health_path
                .as_ref()
                .and_then(|v| c.request_path(v, &p("health_path"))),
            name: c.name(&s.name, &p("name")),
            secrets: s
                .secrets
                .iter()
                .map(|(k, v)| (k.clone(), v.get_ref().clone()))
                .collect(),
            environment: s.environment.get_ref().clone(),
            port: c.port(&s.port, &p("port")),
            upstreams,
            description: s.description.clone(),
        });
    }
    let service_names = || services_by_name.keys().cloned().collect::<BTreeSet<_>>();
    let unknown_service = |c: &mut Checker, svc: &S<String>, path: String| {
        c.err(
            svc,
            path,
            format!(
                "unknown service {:?} (defined: {})",
                svc.get_ref(),
                list(service_names())
            ),
        );
    };

    // Roles.
    let roles_by_name = unique(
        &mut c,
        raw.roles
            .iter()
            .enumerate()
            .map(|(i, r)| (&r.name, format!("roles[{i}].name"))),
        "role",
    );
    let mut roles = Vec::new();
    for (i, r) in raw.roles.iter().enumerate() {
        for (j, perm) in r.permissions.iter().enumerate() {
            if !valid_permission(perm.get_ref()) {
                c.err(
                    perm,
                    format!("roles[{i}].permissions[{j}]"),
                    format!(
                        "invalid permission {:?}: expected plane:action such as keys:encrypt, identity:apikeys.own, secrets:*, or *",
                        perm.get_ref()
                    ),
                );
            }
        }
        roles.push(Role {
            name: c.name(&r.name, &format!("roles[{i}].name")),
            permissions: r.permissions.iter().map(|p| p.get_ref().clone()).collect(),
            require_mfa: r.require_mfa,
            description: r.description.clone(),
        });
    }

    // Routes.
    let mut routes = Vec::new();
    let mut cert_routes: Vec<(usize, &S<String>)> = Vec::new();
    let mut seen_routes: HashMap<(String, String), usize> = HashMap::new();
    for (i, r) in raw.routes.iter().enumerate() {
        let p = |f: &str| format!("routes[{i}].{f}");
        let host = r.host.get_ref().to_ascii_lowercase();
        let bare = host.strip_prefix("*.").unwrap_or(&host);
        if !valid_hostname(bare) {
            c.err(
                &r.host,
                p("host"),
                format!("invalid host {:?}", r.host.get_ref()),
            );
        }
        let prefix = match &r.path_prefix {
            Some(pp) => {
                let v = pp.get_ref();
                if !v.starts_with('/') || v.contains(['?', '#', ' ']) || v.contains("..") {
                    c.err(
                        pp,
                        p("path_prefix"),
                        format!("invalid path prefix {v:?}: must start with '/' and hold no '?', '#', spaces or '..'"),
                    );
                }
                v.clone()
            }
            None => "/".to_string(),
        };
        if let Some(first) = seen_routes.insert((host.clone(), prefix.clone()), i) {
            c.err(
                &r.host,
                p("host"),
                format!("duplicate route {host}{prefix} (also routes[{first}])"),
            );
        }
        if let Some(svc) = &r.service {
            if !services_by_name.contains_key(svc.get_ref()) {
                unknown_service(&mut c, svc, p("service"));
            }
        }
        let redirect = route_redirect(&mut c, r, i);
        let auth = r
            .auth
            .as_ref()
            .and_then(|a| {
                c.one_of(
                    a,
                    &p("auth"),
                    "auth",
                    &[
                        ("none", RouteAuth::None),
                        ("api_key", RouteAuth::ApiKey),
                        ("session", RouteAuth::Session),
                        ("client_cert", RouteAuth::ClientCert),
                    ],
                )
            })
            .unwrap_or(RouteAuth::None);
        for (j, role) in r.roles.iter().enumerate() {
            if !roles_by_name.contains_key(role.get_ref()) {
                c.err(
                    role,
                    format!("routes[{i}].roles[{j}]"),
                    format!("unknown role {:?}", role.get_ref()),
                );
            }
        }
        if let (Some(first), RouteAuth::None) = (r.roles.first(), auth) {
            c.err(
                first,
                p("roles"),
                "roles need an authenticated route: set auth",
            );
        }
        let allow_cidrs = c.cidrs(&r.allow_cidrs, &p("allow_cidrs"));
        let deny_cidrs = c.cidrs(&r.deny_cidrs, &p("deny_cidrs"));
        let rate_limit = r
            .rate_limit
            .as_ref()
            .and_then(|rl| c.rate(rl, &p("rate_limit")));
        let max_body_bytes =
            r.max_body_bytes
                .as_ref()
                .and_then(|v| match usize::try_from(*v.get_ref()) {
                    Ok(n) if (1..=1 << 30).contains(&n) => Some(n),
                    _ => {
                        c.err(v, p("max_body_bytes"), "must be 1 to 1073741824");
                        None
                    }
                });
        let upstream_timeout_seconds = r
            .upstream_timeout_seconds
            .as_ref()
            .map(|v| c.bounded(Some(v), &p("upstream_timeout_seconds"), 1..=3_600, 60));
        if auth == RouteAuth::ClientCert {
            if let Some(a) = &r.auth {
                cert_routes.push((i, a));
            }
        }
        let json_schema = r.json_schema.as_ref().and_then(|v| {
            if v.get_ref().trim().is_empty() {
                c.err(v, p("json_schema"), "name a JSON Schema file");
                None
            } else {
                Some(PathBuf::from(v.get_ref()))
            }
        });
        let waf = r
            .waf
            .as_ref()
            .and_then(|w| {
                c.one_of(
                    w,
                    &p("waf"),
                    "waf mode",
                    &[
                        ("block", WafMode::Block),
                        ("detect", WafMode::Detect),
                        ("off", WafMode::Off),
                    ],
                )
            })
            .unwrap_or(WafMode::Block);
        let exclusions = r
            .waf_exclusions
            .iter()
            .enumerate()
            .filter_map(|(j, x)| c.waf_exclusion(x, &format!("routes[{i}].waf_exclusions[{j}]")))
            .collect();
        // Tunnels are HTTP/1.1 upgrades, on a connection of their own.
        let route_service = r
            .service
            .as_ref()
            .and_then(|svc| services_by_name.get(svc.get_ref()))
            .and_then(|&i| services.get(i));
        if let (true, Some(svc), Some(s)) = (r.websocket, &r.service, route_service) {
            if s.protocol == UpstreamProtocol::Http2 {
                c.err(
                    svc,
                    p("websocket"),
                    format!(
                        "WebSocket tunnels are HTTP/1.1 upgrades: service {:?} speaks http2",
                        svc.get_ref()
                    ),
                );
            }
        }
        // A streamed body reaches the service before anything could read
        // it: no check that reads bodies may apply on the route.
        let stream_request_body = match &r.stream_request_body {
            Some(v) if *v.get_ref() => {
                let waf_on = raw.edge.as_ref().is_some_and(|e| !e.waf_rules.is_empty())
                    && waf != WafMode::Off;
                if json_schema.is_some() {
                    c.err(
                        v,
                        p("stream_request_body"),
                        "a streamed body cannot be checked against json_schema: remove one of them",
                    );
                } else if waf_on {
                    c.err(
                        v,
                        p("stream_request_body"),
                        "the firewall reads whole request bodies: set waf = \"off\" on this route to stream them",
                    );
                }
                true
            }
            _ => false,
        };
        let upstream_path_prefix = r.upstream_path_prefix.as_ref().and_then(|v| {
            let text = v.get_ref();
            if text.contains(['?', '#']) || text.contains("..") {
                c.err(
                    v,
                    p("upstream_path_prefix"),
                    format!("invalid path prefix {text:?}: must hold no '?', '#' or '..'"),
                );
                return None;
            }
            c.request_path(v, &p("upstream_path_prefix"))
        });
        let response_headers =
            c.headers_to_set(&r.response_headers, &p("response_headers"), Side::Response);
        let remove_response_headers = c.headers_to_remove(
            &r.remove_response_headers,
            &p("remove_response_headers"),
            Side::Response,
        );
        let request_headers =
            c.headers_to_set(&r.request_headers, &p("request_headers"), Side::Request);
        let remove_request_headers = c.headers_to_remove(
            &r.remove_request_headers,
            &p("remove_request_headers"),
            Side::Request,
        );
        let methods = c.methods(&r.methods, &p("methods"));
        let cors = r.cors.as_ref().map(|v| c.cors(v, &p("cors")));
        if r.websocket && !methods.is_empty() && !methods.iter().any(|m| m == "GET") {
            if let Some(first) = r.methods.first() {
                c.err(
                    first,
                    p("methods"),
                    "a websocket route takes GET: a WebSocket handshake is a GET request"
                        .to_string(),
                );
            }
        }
        routes.push(Route {
            cors,
            methods,
            request_headers,
            remove_request_headers,
            response_headers,
            remove_response_headers,
            gzip: r.gzip,
            upstream_path_prefix,
            stream_request_body,
            websocket: r.websocket,
            upstream_timeout_seconds,
            json_schema,
            waf: RouteWaf {
                mode: waf,
                exclusions,
            },
            rate_limit,
            max_body_bytes,
            host,
            path_prefix: prefix,
            service: route_service.map(|s| s.name.clone()).unwrap_or_default(),
            environment: route_service
                .map(|s| s.environment.clone())
                .unwrap_or_default(),
            redirect,
            auth,
            roles: r.roles.iter().map(|r| r.get_ref().clone()).collect(),
            allow_cidrs,
            deny_cidrs,
        });
    }

    // Keys: unique per environment, in a known environment, for a service of that environment.
    let mut keys = Vec::new();
    let mut seen_keys: HashMap<(String, String), usize> = HashMap::new();
    for (i, k) in raw.keys.iter().enumerate() {
        let p = |f: &str| format!("keys[{i}].{f}");
        let name = c.name(&k.name, &p("name"));
        check_env(&mut c, &k.environment, &p("environment"));
        if let Some(first) = seen_keys.insert((k.environment.get_ref().clone(), name.clone()), i) {
            c.err(
                &k.name,
                p("name"),
                format!(
                    "duplicate key {name:?} in environment {:?} (also keys[{first}])",
                    k.environment.get_ref()
                ),
            );
        }
        if let Some(svc) = &k.service {
            match services_by_name.get(svc.get_ref()) {
                None => unknown_service(&mut c, svc, p("service")),
                Some(&si) => {
                    if let Some(s) = raw.services.get(si) {
                        if s.environment.get_ref() != k.environment.get_ref() {
                            c.err(
                                svc,
                                p("service"),
                                format!(
                                    "service {:?} runs in environment {:?}, not {:?}: environments are hard walls",
                                    svc.get_ref(),
                                    s.environment.get_ref(),
                                    k.environment.get_ref()
                                ),
                            );
                        }
                    }
                }
            }
        }
        keys.push(KeyDecl {
            name,
            environment: k.environment.get_ref().clone(),
            service: k.service.as_ref().map(|s| s.get_ref().clone()),
            rotation_days: c.days(
                &k.rotation_days,
                &p("rotation_days"),
                DEFAULT_ROTATION_DAYS,
                3650,
            ),
            description: k.description.clone(),
        });
    }

    // Audit.
    let d = Retention::default();
    let r = &raw.audit.retention;
    let max = 36_500;
    let retention = Retention {
        security: c.days(&r.security, "audit.retention.security", d.security, max),
        processing: c.days(
            &r.processing,
            "audit.retention.processing",
            d.processing,
            max,
        ),
        application: c.days(
            &r.application,
            "audit.retention.application",
            d.application,
            max,
        ),
        network: c.days(&r.network, "audit.retention.network", d.network, max),
        api_access: c.days(
            &r.api_access,
            "audit.retention.api-access",
            d.api_access,
            max,
        ),
    };
    let identity = c.identity(&raw.identity);
    let store = match &raw.store {
        Some(st) => c.store(st),
        None => StoreBackend::Sqlite,
    };
    let redis = raw.redis.as_ref().map(|r| c.redis(r));
    let audit = Audit {
        retention,
        checkpoint_every_records: c.days(
            &raw.audit.checkpoint_every_records,
            "audit.checkpoint_every_records",
            1000,
            10_000_000,
        ),
        checkpoint_every_seconds: c.days(
            &raw.audit.checkpoint_every_seconds,
            "audit.checkpoint_every_seconds",
            60,
            86_400,
        ),
        checkpoint_dir: raw
            .audit
            .checkpoint_dir
            .as_ref()
            .map(|d| PathBuf::from(d.get_ref())),
        commit_delay_us: c.bounded(
            raw.audit.commit_delay_us.as_ref(),
            "audit.commit_delay_us",
            0..=MAX_COMMIT_DELAY_US,
            DEFAULT_COMMIT_DELAY_US,
        ),
        commit_siblings: c.bounded(
            raw.audit.commit_siblings.as_ref(),
            "audit.commit_siblings",
            0..=MAX_COMMIT_SIBLINGS,
            DEFAULT_COMMIT_SIBLINGS,
        ),
        copy_delay_ms: c.bounded(
            raw.audit.copy_delay_ms.as_ref(),
            "audit.copy_delay_ms",
            1..=MAX_COPY_DELAY_MS,
            DEFAULT_COPY_DELAY_MS,
        ),
    };

    // Edge.
    let edge = raw.edge.as_ref().map(|e| {
        let addr = |c: &mut Checker, v: &S<String>, path: &str| {
            v.get_ref().parse::<SocketAddr>().map_err(|_| {
                c.err(
                    v,
                    path,
                    format!("invalid address {:?}: expected ip:port", v.get_ref()),
                )
            })
        };
        let http_listen = match &e.http_listen {
            Some(v) if v.get_ref() == "off" => None,
            Some(v) => addr(&mut c, v, "edge.http_listen").ok(),
            None => Some(SocketAddr::from(([0, 0, 0, 0], 80))),
        };
        let https_listen = match &e.https_listen {
            Some(v) => addr(&mut c, v, "edge.https_listen")
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 443))),
            None => SocketAddr::from(([0, 0, 0, 0], 443)),
        };
        let max_body_bytes = match &e.max_body_bytes {
            Some(v) => match usize::try_from(*v.get_ref()) {
                Ok(n) if (1..=1 << 30).contains(&n) => n,
                _ => {
                    c.err(v, "edge.max_body_bytes", "must be 1 to 1073741824");
                    10 << 20
                }
            },
            None => 10 << 20,
        };
        let max_buffered_body_bytes = match &e.max_buffered_body_bytes {
            Some(v) => match usize::try_from(*v.get_ref()) {
                Ok(n) if (max_body_bytes..=1 << 40).contains(&n) => n,
                _ => {
                    c.err(
                        v,
                        "edge.max_buffered_body_bytes",
                        format!("must be at least edge.max_body_bytes ({max_body_bytes}) and at most 1099511627776"),
                    );
                    max_body_bytes
                }
            },
            None => (256 << 20).max(max_body_bytes),
        };
        let mut certificates = Vec::new();
        for (i, cert) in e.certificates.iter().enumerate() {
            if cert.names.is_empty() {
                c.err(
                    &cert.cert,
                    format!("edge.certificates[{i}].names"),
                    "name at least one host",
                );
            }
            for (j, n) in cert.names.iter().enumerate() {
                let bare = n.get_ref().strip_prefix("*.").unwrap_or(n.get_ref());
                if !valid_hostname(bare) {
                    c.err(
                        n,
                        format!("edge.certificates[{i}].names[{j}]"),
                        format!("invalid host {:?}", n.get_ref()),
                    );
                }
            }
            certificates.push(Certificate {
                names: cert
                    .names
                    .iter()
                    .map(|n| n.get_ref().to_ascii_lowercase())
                    .collect(),
                cert: PathBuf::from(cert.cert.get_ref()),
                key: PathBuf::from(cert.key.get_ref()),
            });
        }
        let client_ca = c.pem_paths(&e.client_ca, "edge.client_ca");
        let client_auth = match &e.client_auth {
            None if client_ca.is_empty() => ClientAuthMode::Off,
            None => ClientAuthMode::Optional,
            Some(v) => c
                .one_of(
                    v,
                    "edge.client_auth",
                    "client_auth",
                    &[
                        ("off", ClientAuthMode::Off),
                        ("optional", ClientAuthMode::Optional),
                        ("required", ClientAuthMode::Required),
                    ],
                )
                .unwrap_or(ClientAuthMode::Off),
        };
        if let Some(v) = &e.client_auth {
            if client_auth != ClientAuthMode::Off && client_ca.is_empty() {
                c.err(
                    v,
                    "edge.client_auth",
                    "needs edge.client_ca: the CAs client certificates must chain to",
                );
            }
        }
        let mut revoked_client_serials = Vec::new();
        for (i, v) in e.revoked_client_serials.iter().enumerate() {
            match normalise_serial(v.get_ref()) {
                Some(s) => revoked_client_serials.push(s),
                None => c.err(
                    v,
                    format!("edge.revoked_client_serials[{i}]"),
                    format!(
                        "invalid serial {:?}: expected hex digits, optionally separated by ':'",
                        v.get_ref()
                    ),
                ),
            }
        }
        let mut rate_limits = EdgeRateLimits::default();
        if let Some(rl) = &e.rate_limits {
            for (raw, slot, name) in [
                (&rl.per_client, &mut rate_limits.per_client, "per_client"),
                (
                    &rl.per_client_auth,
                    &mut rate_limits.per_client_auth,
                    "per_client_auth",
                ),
                (&rl.per_route, &mut rate_limits.per_route, "per_route"),
                (
                    &rl.per_principal,
                    &mut rate_limits.per_principal,
                    "per_principal",
                ),
            ] {
                if let Some(r) = raw
                    .as_ref()
                    .and_then(|r| c.rate(r, &format!("edge.rate_limits.{name}")))
                {
                    *slot = r;
                }
            }
        }
        let balance = e
            .balance
            .as_ref()
            .and_then(|v| c.balance(v, "edge.balance"))
            .unwrap_or_default();
        let breaker = e.breaker.as_ref().map_or_else(EdgeBreaker::default, |b| {
            let d = EdgeBreaker::default();
            EdgeBreaker {
                failures_to_open: c.bounded(
                    b.failures_to_open.as_ref(),
                    "edge.breaker.failures_to_open",
                    1..=1_000,
                    d.failures_to_open,
                ),
                open_seconds: c.bounded(
                    b.open_seconds.as_ref(),
                    "edge.breaker.open_seconds",
                    1..=3_600,
                    d.open_seconds,
                ),
            }
        });
        let gzip = e.gzip.as_ref().map(|g| {
            let d = EdgeGzip::default();
            let types = match &g.types {
                None => d.types,
                Some(list) => list
                    .iter()
                    .enumerate()
                    .filter_map(|(i, t)| {
                        let v = t.get_ref().trim().to_ascii_lowercase();
                        let ok = v.split_once('/').is_some_and(|(a, b)| {
                            !a.is_empty()
                                && !b.is_empty()
                                && v.bytes().all(|c| c.is_ascii_graphic() && c != b';')
                        });
                        if ok {
                            Some(v)
                        } else {
                            c.err(
                                t,
                                format!("edge.gzip.types[{i}]"),
                                format!("invalid media type {:?}: expected type/subtype, no parameters", t.get_ref()),
                            );
                            None
                        }
                    })
                    .collect(),
            };
            EdgeGzip {
                min_bytes: u64::from(c.bounded(
                    g.min_bytes.as_ref(),
                    "edge.gzip.min_bytes",
                    0..=1 << 30,
                    1024,
                )),
                types,
                level: c.bounded(g.level.as_ref(), "edge.gzip.level", 1..=9, d.level),
                max_streams: c.bounded(
                    g.max_streams.as_ref(),
                    "edge.gzip.max_streams",
                    1..=1_000_000,
                    d.max_streams,
                ),
            }
        });
        let health_check = e.health_check.as_ref().map(|h| {
            let d = EdgeHealthCheck::default();
            let path = h
                .path
                .as_ref()
                .and_then(|p| c.request_path(p, "edge.health_check.path"))
                .unwrap_or_else(|| d.path.clone());
            let interval_ms = c.bounded(
                h.interval_ms.as_ref(),
                "edge.health_check.interval_ms",
                100..=3_600_000,
                d.interval_ms,
            );
            let timeout_ms = c.bounded(
                h.timeout_ms.as_ref(),
                "edge.health_check.timeout_ms",
                10..=60_000,
                d.timeout_ms.min(interval_ms),
            );
            if timeout_ms > interval_ms {
                if let Some(v) = &h.timeout_ms {
                    c.err(
                        v,
                        "edge.health_check.timeout_ms",
                        format!("{timeout_ms} is longer than interval_ms ({interval_ms})"),
                    );
                }
            }
            EdgeHealthCheck {
                path,
                interval_ms,
                timeout_ms,
                rise: c.bounded(h.rise.as_ref(), "edge.health_check.rise", 1..=100, d.rise),
                fall: c.bounded(h.fall.as_ref(), "edge.health_check.fall", 1..=100, d.fall),
                deploy_window_ms: c.bounded(
                    h.deploy_window_ms.as_ref(),
                    "edge.health_check.deploy_window_ms",
                    0..=3_600_000,
                    d.deploy_window_ms,
                ),
            }
        });
        Edge {
            balance,
            connect_timeout_ms: c.bounded(
                e.connect_timeout_ms.as_ref(),
                "edge.connect_timeout_ms",
                1..=60_000,
                3_000,
            ),
            upstream_timeout_seconds: c.bounded(
                e.upstream_timeout_seconds.as_ref(),
                "edge.upstream_timeout_seconds",
                1..=3_600,
                60,
            ),
            header_read_timeout_seconds: c.bounded(
                e.header_read_timeout_seconds.as_ref(),
                "edge.header_read_timeout_seconds",
                1..=300,
                10,
            ),
            body_read_timeout_seconds: c.bounded(
                e.body_read_timeout_seconds.as_ref(),
                "edge.body_read_timeout_seconds",
                1..=3_600,
                30,
            ),
            send_timeout_seconds: c.bounded(
                e.send_timeout_seconds.as_ref(),
                "edge.send_timeout_seconds",
                1..=3_600,
                60,
            ),
            keepalive_timeout_seconds: c.bounded(
                e.keepalive_timeout_seconds.as_ref(),
                "edge.keepalive_timeout_seconds",
                1..=3_600,
                75,
            ),
            drain_seconds: c.bounded(
                e.drain_seconds.as_ref(),
                "edge.drain_seconds",
                0..=3_600,
                30,
            ),
            worker_threads: e
                .worker_threads
                .as_ref()
                .map(|w| c.bounded(Some(w), "edge.worker_threads", 0..=256, 0)),
            max_connections: c.bounded(
                e.max_connections.as_ref(),
                "edge.max_connections",
                1..=1_000_000,
                10_000,
            ),
            max_connections_per_client: c.bounded(
                e.max_connections_per_client.as_ref(),
                "edge.max_connections_per_client",
                1..=1_000_000,
                512,
            ),
            breaker,
            health_check,
            gzip,
            hsts_max_age_seconds: c.bounded(
                e.hsts_max_age_seconds.as_ref(),
                "edge.hsts_max_age_seconds",
                31_536_000..=63_072_000,
                31_536_000,
            ),
            hsts_preload: e.hsts_preload.as_ref().is_some_and(|v| *v.get_ref()),
            tls13_only: e.tls_min_version.as_ref().is_some_and(|v| {
                c.one_of(
                    v,
                    "edge.tls_min_version",
                    "TLS version",
                    &[("1.2", false), ("1.3", true)],
                )
                .unwrap_or(false)
            }),
            tls_session_cache: c.bounded(
                e.tls_session_cache.as_ref(),
                "edge.tls_session_cache",
                0..=1_000_000,
                20_000,
            ),
            tls_session_tickets: e.tls_session_tickets.as_ref().is_some_and(|v| *v.get_ref()),
            security_headers: match &e.security_headers {
                None => default_security_headers(),
                Some(map) => c.headers_to_set(map, "edge.security_headers", Side::Response),
            },
            rate_limits,
            client_ca,
            client_auth,
            revoked_client_serials,
            http_listen,
            https_listen,
            trusted_proxies: c.cidrs(&e.trusted_proxies, "edge.trusted_proxies"),
            proxy_protocol_from: c.cidrs(&e.proxy_protocol_from, "edge.proxy_protocol_from"),
            allow_cidrs: c.cidrs(&e.allow_cidrs, "edge.allow_cidrs"),
            deny_cidrs: c.cidrs(&e.deny_cidrs, "edge.deny_cidrs"),
            waf_rules: e
                .waf_rules
                .iter()
                .map(|r| {
                    let name = r.get_ref();
                    if name.starts_with(BUILTIN_PREFIX) && name != BUILTIN_BASELINE {
                        c.err(
                            r,
                            "edge.waf_rules",
                            format!(
                                "unknown built-in rule set {name:?}: the one built in is \"{BUILTIN_BASELINE}\""
                            ),
                        );
                    }
                    name.clone()
                })
                .collect(),
            max_body_bytes,
            max_buffered_body_bytes,
            certificates,
        }
    });

    let cert_auth_on = edge
        .as_ref()
        .is_some_and(|e| e.client_auth != ClientAuthMode::Off);
    if !cert_auth_on {
        for (i, a) in cert_routes {
            c.err(
                a,
                format!("routes[{i}].auth"),
                "client_cert needs edge.client_ca: the CAs client certificates must chain to",
            );
        }
    }

    if c.errors.is_empty() {
        Ok(Config {
            identity,
            store,
            redis,
            edge,
            node,
            control: Control {
                listen,
                allow,
                client_ca: control_client_ca,
            },
            environments,
            services,
            routes,
            roles,
            keys,
            audit,
            source: None,
        })
    } else {
        c.errors.sort_by_key(|e| e.span.as_ref().map(|s| s.start));
        Err(c.errors)
    }
}

/// HTTP statuses a route may redirect with.
const REDIRECT_STATUSES: [u16; 5] = [301, 302, 303, 307, 308];

/// The settings that need a service behind the route, refused beside
/// `redirect`: each that is set, with where (`None`: a bare value whose
/// place is not kept).
fn service_settings(r: &RawRoute) -> Vec<(&'static str, Option<Range<usize>>)> {
    fn at<T>(v: Option<&S<T>>) -> Option<Range<usize>> {
        v.map(S::span)
    }
    let spanned = [
        ("auth", at(r.auth.as_ref())),
        ("roles", at(r.roles.first())),
        ("methods", at(r.methods.first())),
        ("cors", at(r.cors.as_ref())),
        ("max_body_bytes", at(r.max_body_bytes.as_ref())),
        (
            "upstream_timeout_seconds",
            at(r.upstream_timeout_seconds.as_ref()),
        ),
        ("json_schema", at(r.json_schema.as_ref())),
        ("waf", at(r.waf.as_ref())),
        ("waf_exclusions", at(r.waf_exclusions.first())),
        ("stream_request_body", at(r.stream_request_body.as_ref())),
        ("upstream_path_prefix", at(r.upstream_path_prefix.as_ref())),
        ("response_headers", at(r.response_headers.values().next())),
        (
            "remove_response_headers",
            at(r.remove_response_headers.first()),
        ),
        ("request_headers", at(r.request_headers.values().next())),
        (
            "remove_request_headers",
            at(r.remove_request_headers.first()),
        ),
    ];
    let mut out: Vec<_> = spanned
        .into_iter()
        .filter_map(|(name, span)| span.map(|s| (name, Some(s))))
        .collect();
    if r.websocket {
        out.push(("websocket", None));
    }
    if r.gzip.is_some() {
        out.push(("gzip", None));
    }
    out
}

/// A route's `redirect` and `redirect_status`: a route either serves a
/// service or redirects, and a redirecting one takes none of the settings
/// that need a service.
fn route_redirect(c: &mut Checker, r: &RawRoute, i: usize) -> Option<RouteRedirect> {
    let p = |f: &str| format!("routes[{i}].{f}");
    let Some(to) = &r.redirect else {
        if r.service.is_none() {
            c.err(
                &r.host,
                p("service"),
                "missing service: a route serves a service or sets redirect",
            );
        }
        if let Some(st) = &r.redirect_status {
            c.err(st, p("redirect_status"), "redirect_status needs redirect");
        }
        return None;
    };
    if let Some(svc) = &r.service {
        c.err(
            svc,
            p("service"),
            "a route either serves a service or redirects: not both",
        );
    }
    for (name, span) in service_settings(r) {
        c.err_span(
            Some(span.unwrap_or_else(|| r.host.span())),
            p(name),
            format!("{name} needs a service: a redirecting route takes none"),
        );
    }
    let status = match &r.redirect_status {
        None => 301,
        Some(st) => match u16::try_from(*st.get_ref()) {
            Ok(s) if REDIRECT_STATUSES.contains(&s) => s,
            _ => {
                c.err(
                    st,
                    p("redirect_status"),
                    format!(
                        "invalid redirect_status {}: expected 301, 302, 303, 307 or 308",
                        st.get_ref()
                    ),
                );
                301
            }
        },
    };
    let Some(target) = redirect_target(to.get_ref()) else {
        c.err(
            to,
            p("redirect"),
            format!(
                "invalid redirect {:?}: expected http(s)://host[:port] with an optional path, and no query, fragment or '..'",
                to.get_ref()
            ),
        );
        return None;
    };
    Some(RouteRedirect { to: target, status })
}

/// `scheme://host[:port][/path]` made canonical (scheme and host in lower
/// case, no trailing `/`), or `None`.
fn redirect_target(s: &str) -> Option<String> {
    let (scheme, rest) = s.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "https" && scheme != "http" {
        return None;
    }
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = if let Some(v6) = authority.strip_prefix('[') {
        let (addr, after) = v6.split_once(']')?;
        addr.parse::<std::net::Ipv6Addr>().ok()?;
        after
    } else {
        let (host, after) = authority.split_at(authority.find(':').unwrap_or(authority.len()));
        if !valid_hostname(host) && host.parse::<std::net::Ipv4Addr>().is_err() {
            return None;
        }
        after
    };
    // What follows the host: nothing, or a port.
    if !host.is_empty() {
        host.strip_prefix(':')?
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)?;
    }
    if path
        .bytes()
        .any(|b| !b.is_ascii_graphic() || matches!(b, b'?' | b'#' | b'\\'))
        || path.contains("..")
    {
        return None;
    }
    Some(format!(
        "{scheme}://{}{}",
        authority.to_ascii_lowercase(),
        path.trim_end_matches('/')
    ))
}

fn list(names: BTreeSet<String>) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.into_iter().collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod redirect_tests {
    use super::redirect_target;

    #[test]
    fn targets_are_canonical_or_refused_never_a_panic() {
        for (input, want) in [
            ("https://example.com", Some("https://example.com")),
            (
                "HTTP://Example.COM:8080/A/b/",
                Some("http://example.com:8080/A/b"),
            ),
            ("https://example.com/", Some("https://example.com")),
            ("https://192.0.2.7:443/x", Some("https://192.0.2.7:443/x")),
            ("https://[2001:db8::1]/x", Some("https://[2001:db8::1]/x")),
            (
                "https://[2001:db8::1]:8443",
                Some("https://[2001:db8::1]:8443"),
            ),
            ("https://[2001:db8::1", None),
            ("https://[nonsense]/", None),
            ("https://example.com:", None),
            ("https://example.com:65536", None),
            ("https://user@example.com", None),
            ("https://example.com/a b", None),
            ("https://example.com/a\\b", None),
            ("https://example.com/é", None),
            ("https://exämple.com", None),
            ("https://example.com/\u{0}", None),
            ("https://example.com\r\nSet-Cookie: a=b", None),
            ("javascript://example.com", None),
            ("//example.com", None),
            ("", None),
            ("https://", None),
            ("https:///path", None),
        ] {
            assert_eq!(redirect_target(input).as_deref(), want, "{input:?}");
        }
        // Whatever is accepted is visible ASCII, fit for a header.
        let mut input = String::from("https://a.example/");
        for c in (0u8..=255).map(char::from) {
            input.push(c);
            if let Some(t) = redirect_target(&input) {
                assert!(t.bytes().all(|b| b.is_ascii_graphic()), "{t:?}");
            }
        }
    }
}
