//! Operators (`@rx`, `@pm`, …), compiled once when the rule is loaded.

use crate::error::{syntax, Error, Location};
use crate::macros::Macro;
use crate::prefilter::{find, BytePairs, ByteSet, Prefilter, ValueFacts};
use crate::recall::{recall, Detector};
use crate::small::SmallBytes;
use aho_corasick::AhoCorasick;
use std::borrow::Cow;
use std::net::IpAddr;
use std::path::Path;

/// A compiled regular expression: the linear-time `regex` engine when the
/// pattern allows it, `fancy-regex` for lookaround and backreferences; with
/// a literal prefilter when the pattern requires one of a few words.
#[derive(Debug)]
pub(crate) struct Rx {
    re: RxImpl,
    /// Boxed: most rules' operators are not `@rx` and need not its room.
    prefilter: Option<Box<Prefilter>>,
}

#[derive(Debug)]
enum RxImpl {
    Fast(regex_automata::meta::Regex),
    Fancy(Box<fancy_regex::Regex>),
    /// A pattern such as `^.*$` that, with `.` matching every byte, matches
    /// every input whole (CRS 3's 901318 and 920450 capture a value with
    /// it): the match and its only group are the input, without a search.
    Whole,
}

/// Patterns that match every input whole when `.` matches every byte (as
/// [`Rx::compile`] builds them): leftmost-first, the greedy `.*` runs from
/// the start to the end.
const WHOLE_INPUT: [&str; 4] = ["^.*$", "^.*", ".*$", ".*"];

/// Which engine compiled a pattern (load statistics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RxEngine {
    Fast,
    Fancy,
}

/// Rewrites `\x{HH}` (one or two hex digits) as `\xHH`. CRS writes bytes
/// that way (`\x{c2}\x{b4}`, `[^>\x{be}]`), meaning raw bytes as PCRE does
/// without UTF mode; the `regex` crate reads the braced form inside a class
/// as a code point and refuses it in bytes mode.
fn byte_escapes(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut rest = pattern;
    while let Some(pos) = rest.find('\\') {
        out.push_str(rest.get(..pos).unwrap_or(""));
        let esc = rest.get(pos..).unwrap_or("");
        let hex = esc
            .strip_prefix("\\x{")
            .and_then(|h| h.split_once('}'))
            .map(|(h, _)| h)
            .filter(|h| (1..=2).contains(&h.len()) && h.bytes().all(|b| b.is_ascii_hexdigit()));
        match hex {
            Some(h) => {
                out.push_str("\\x");
                if h.len() == 1 {
                    out.push('0');
                }
                out.push_str(h);
                rest = esc.get(4 + h.len()..).unwrap_or("");
            }
            None => {
                // keep the escape and the character it escapes together
                let n = esc.chars().nth(1).map_or(1, |c| 1 + c.len_utf8());
                out.push_str(esc.get(..n).unwrap_or(esc));
                rest = esc.get(n..).unwrap_or("");
            }
        }
    }
    out.push_str(rest);
    out
}

/// Escapes each `{` that PCRE reads as a literal and the `regex` crate
/// refuses: one that does not start a valid quantifier (`{n}`, `{n,}`,
/// `{n,m}`) or that follows nothing it could repeat (the start, `(`, `|`,
/// a group's flags). CRS writes shell and template syntax that way
/// (`\s*{`, `\${`, `{{.*?}}`); without this such patterns fell to the
/// backtracking engine and lost their literal prefilters.
fn pcre_braces(pattern: &str) -> String {
    let b = pattern.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(b.len() + 8);
    let mut i = 0;
    let mut in_class = false;
    // Whether the last token can take a quantifier.
    let mut repeatable = false;
    while let Some(&c) = b.get(i) {
        if c == b'\\' {
            // An escape, with its braced argument if it has one (`\x{be}`,
            // `\p{L}`).
            let mut end = (i + 2).min(b.len());
            if b.get(i + 1).is_some_and(u8::is_ascii_alphabetic) && b.get(i + 2) == Some(&b'{') {
                if let Some(p) = b
                    .get(i + 2..)
                    .and_then(|r| r.iter().position(|&x| x == b'}'))
                {
                    end = i + 2 + p + 1;
                }
            }
            out.extend_from_slice(b.get(i..end).unwrap_or_default());
            i = end;
            repeatable = true;
            continue;
        }
        if in_class {
            out.push(c);
            if c == b'[' && b.get(i + 1) == Some(&b':') {
                // A POSIX class inside the class: copy through `:]`.
                let close = b
                    .get(i..)
                    .and_then(|r| r.windows(2).position(|w| w == b":]"))
                    .map_or(b.len(), |p| i + p + 2);
                out.extend_from_slice(b.get(i + 1..close).unwrap_or_default());
                i = close;
                continue;
            }
            if c == b']' {
                in_class = false;
                repeatable = true;
            }
            i += 1;
            continue;
        }
        match c {
            b'[' => {
                out.push(c);
                in_class = true;
                i += 1;
                // `^` and a leading `]` belong to the class.
                if b.get(i) == Some(&b'^') {
                    out.push(b'^');
                    i += 1;
                }
                if b.get(i) == Some(&b']') {
                    out.push(b']');
                    i += 1;
                }
                continue;
            }
            b'{' => {
                let quantifier =
                    repeatable && quantifier_len(b.get(i..).unwrap_or_default()).is_some();
                if quantifier {
                    let n = quantifier_len(b.get(i..).unwrap_or_default()).unwrap_or(1);
                    out.extend_from_slice(b.get(i..i + n).unwrap_or_default());
                    i += n;
                    // A lazy `?` may follow; a second quantifier may not.
                    repeatable = false;
                    continue;
                }
                out.extend_from_slice(b"\\{");
                repeatable = true;
            }
            b'(' => {
                out.push(c);
                // Copy a group's `?flags:` or `?:` opener whole.
                if b.get(i + 1) == Some(&b'?') {
                    let mut j = i + 2;
                    while b
                        .get(j)
                        .is_some_and(|x| x.is_ascii_alphabetic() || *x == b'-')
                    {
                        j += 1;
                    }
                    if matches!(b.get(j), Some(b':' | b')')) {
                        out.extend_from_slice(b.get(i + 1..=j).unwrap_or_default());
                        i = j + 1;
                        repeatable = false;
                        continue;
                    }
                }
                repeatable = false;
            }
            b'|' => {
                out.push(c);
                repeatable = false;
            }
            b'*' | b'+' | b'?' => {
                out.push(c);
                repeatable = false;
            }
            _ => {
                out.push(c);
                repeatable = true;
            }
        }
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| pattern.to_string())
}

/// Length of the quantifier `{n}`, `{n,}` or `{n,m}` at the start of `b`.
fn quantifier_len(b: &[u8]) -> Option<usize> {
    let mut i = 1;
    let digits = |from: usize| {
        b.get(from..)
            .map_or(0, |r| r.iter().take_while(|x| x.is_ascii_digit()).count())
    };
    let n = digits(i);
    if b.first() != Some(&b'{') || n == 0 {
        return None;
    }
    i += n;
    if b.get(i) == Some(&b',') {
        i += 1;
        i += digits(i);
    }
    (b.get(i) == Some(&b'}')).then_some(i + 1)
}

/// Escapes what PCRE reads literally inside a character class but the
/// `regex` crate does not: `[` (a nested class there, unless it opens a POSIX
/// class like `[:alpha:]`) and `&&`/`~~` (set operations there). CRS 3.3
/// writes classes such as `[^"(),\/:;<=>?![\x5c\]{}]` (920470).
///
/// Also `\<` and `\>`: in PCRE an escaped punctuation character is that
/// character, in the `regex` crate these two are word boundaries (and refused
/// inside a class, so CRS 3's 921200 fell to the backtracking engine).
fn pcre_classes(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut in_class = false;
    let mut class_start = false;
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n @ ('<' | '>')) => out.push(n),
                Some(n) => {
                    out.push(c);
                    out.push(n);
                }
                None => out.push(c),
            }
            class_start = false;
            continue;
        }
        if !in_class {
            out.push(c);
            if c == '[' {
                in_class = true;
                class_start = true;
                if chars.peek() == Some(&'^') {
                    out.push('^');
                    chars.next();
                }
            }
            continue;
        }
        match c {
            ']' if !class_start => {
                out.push(c);
                in_class = false;
            }
            '[' if chars.peek() == Some(&':') => {
                // A POSIX class: copy through its closing `:]`.
                out.push(c);
                let mut prev = ' ';
                for n in chars.by_ref() {
                    out.push(n);
                    if prev == ':' && n == ']' {
                        break;
                    }
                    prev = n;
                }
            }
            '[' | '&' | '~' => {
                out.push('\\');
                out.push(c);
            }
            // Including `]` first in a class, a literal in both dialects.
            _ => out.push(c),
        }
        class_start = false;
    }
    out
}

impl Rx {
    /// Compiles with ModSecurity's flags (dot matches newline), bytes
    /// semantics first, then Unicode, then the backtracking fallback.
    pub(crate) fn compile(pattern: &str) -> Result<Rx, String> {
        let pattern = &pcre_braces(&pcre_classes(pattern));
        let bytes_pattern = byte_escapes(pattern);
        if WHOLE_INPUT.contains(&bytes_pattern.as_str()) {
            return Ok(Rx {
                re: RxImpl::Whole,
                prefilter: None,
            });
        }
        // As `regex::bytes::Regex` builds it, but without the regex's own
        // literal prefilter when ours guards it: a value reaches the regex
        // only once ours found one of its literals, and a second search for
        // them (an Aho-Corasick scan for patterns such as 930100's) would
        // only repeat the work.
        let build = |unicode: bool, ours: bool| {
            regex_automata::meta::Builder::new()
                .configure(
                    regex_automata::meta::Config::new()
                        .match_kind(regex_automata::MatchKind::LeftmostFirst)
                        .utf8_empty(false)
                        .nfa_size_limit(Some(256 << 20))
                        .hybrid_cache_capacity(64 << 20)
                        .auto_prefilter(!ours),
                )
                .syntax(
                    regex_automata::util::syntax::Config::new()
                        .utf8(false)
                        .unicode(unicode)
                        .dot_matches_new_line(true),
                )
                .build(if unicode { pattern } else { &bytes_pattern })
                // the parser's own message says what and where
                .map_err(|e| {
                    e.syntax_error()
                        .map_or_else(|| e.to_string(), |s| s.to_string())
                })
        };
        let bytes_prefilter = Prefilter::new(&bytes_pattern, false);
        let fast = match build(false, bytes_prefilter.is_some()) {
            Ok(r) => Ok((r, bytes_prefilter)),
            Err(_) => {
                let p = Prefilter::new(pattern, true);
                build(true, p.is_some()).map(|r| (r, p))
            }
        };
        match fast {
            Ok((r, prefilter)) => Ok(Rx {
                re: RxImpl::Fast(r),
                prefilter: prefilter.map(Box::new),
            }),
            Err(fast_err) => fancy_regex::RegexBuilder::new(&format!("(?s){pattern}"))
                .backtrack_limit(1_000_000)
                .build()
                .map(|r| Rx {
                    re: RxImpl::Fancy(Box::new(r)),
                    prefilter: Prefilter::for_backtracking(pattern).map(Box::new),
                })
                .map_err(|e| format!("{e} (regex crate: {fast_err})")),
        }
    }

    pub(crate) fn engine(&self) -> RxEngine {
        match self.re {
            RxImpl::Fast(_) | RxImpl::Whole => RxEngine::Fast,
            RxImpl::Fancy(_) => RxEngine::Fancy,
        }
    }

    /// The literal prefilter guarding this regex, if any.
    pub(crate) fn prefilter(&self) -> Option<&Prefilter> {
        self.prefilter.as_deref()
    }

    /// True when a literal prefilter guards this regex.
    pub(crate) fn has_prefilter(&self) -> bool {
        self.prefilter.is_some()
    }

    /// A value holding none of these bytes cannot match (see
    /// [`Op::required_bytes`]).
    fn required_bytes(&self) -> Option<&ByteSet> {
        self.prefilter.as_deref().map(Prefilter::rare)
    }

    /// Matches; when `caps` is given, fills it with groups 0..=9.
    pub(crate) fn is_match(&self, input: &[u8], caps: Option<&mut Vec<SmallBytes>>) -> bool {
        self.is_match_with(input, None, None, caps)
    }

    /// [`Rx::is_match`], with the input's byte set (and the cell of its
    /// pair set) when the caller has it.
    fn is_match_with(
        &self,
        input: &[u8],
        bytes: Option<&ByteSet>,
        facts: Option<&ValueFacts>,
        caps: Option<&mut Vec<SmallBytes>>,
    ) -> bool {
        if self
            .prefilter
            .as_ref()
            .is_some_and(|p| !p.may_match_grams(input, bytes, facts))
        {
            return false;
        }
        match &self.re {
            RxImpl::Whole => {
                if let Some(out) = caps {
                    out.clear();
                    out.push(SmallBytes::copy_of(input));
                }
                true
            }
            RxImpl::Fast(r) => match caps {
                None => r.is_match(input),
                // Most values do not match: the DFA answers that without the
                // cost of setting up capture slots.
                Some(_) if !r.is_match(input) => false,
                Some(out) => {
                    let mut c = r.create_captures();
                    r.captures(input, &mut c);
                    if !c.is_match() {
                        return false;
                    }
                    out.clear();
                    for i in 0..c.group_len().min(10) {
                        out.push(
                            c.get_group(i)
                                .and_then(|m| input.get(m.range()))
                                .map_or_else(SmallBytes::default, SmallBytes::copy_of),
                        );
                    }
                    true
                }
            },
            RxImpl::Fancy(r) => {
                let text = String::from_utf8_lossy(input);
                match caps {
                    None => r.is_match(&text).unwrap_or(false),
                    Some(out) => match r.captures(&text) {
                        Ok(Some(c)) => {
                            out.clear();
                            for i in 0..c.len().min(10) {
                                out.push(c.get(i).map_or_else(SmallBytes::default, |m| {
                                    SmallBytes::copy_of(m.as_str().as_bytes())
                                }));
                            }
                            true
                        }
                        _ => false,
                    },
                }
            }
        }
    }
}

/// The operator proper.
#[derive(Debug)]
pub(crate) enum Op {
    Rx(Rx),
    /// `@rx` whose pattern has macros: compiled per evaluation.
    RxMacro(Macro),
    Pm(Phrases),
    StrEq(Macro),
    /// `@eq`, `@ge`, `@gt`, `@le`, `@lt`: the value and the argument read as
    /// numbers ([`atoi`]).
    Num(Cmp, Macro),
    Within(Macro),
    BeginsWith(Macro),
    EndsWith(Macro),
    Contains(Macro),
    ContainsWord(Macro),
    StrMatch(Macro),
    IpMatch(Vec<ipnet::IpNet>),
    /// `@validateByteRange`: the bytes outside the ranges, any of which
    /// makes it match.
    ValidateByteRange(ByteSet),
    ValidateUrlEncoding,
    ValidateUtf8Encoding,
    DetectSqli,
    DetectXss,
    Unconditional,
    NoMatch,
    /// An operator that needs what Rampart does not have on the request path
    /// (a GeoIP database, DNS): it never matches, and the rule set's load
    /// warnings say so with the rule's location.
    Unavailable(&'static str),
}

impl Op {
    /// The macro argument of the operator, if it has one.
    pub(crate) fn macro_mut(&mut self) -> Option<&mut Macro> {
        match self {
            Op::RxMacro(m)
            | Op::StrEq(m)
            | Op::Num(_, m)
            | Op::Within(m)
            | Op::BeginsWith(m)
            | Op::EndsWith(m)
            | Op::Contains(m)
            | Op::ContainsWord(m)
            | Op::StrMatch(m) => Some(m),
            _ => None,
        }
    }

    /// When the (non-negated) operator can only match a value that holds
    /// one of these bytes: the rarest byte of each prefilter literal or
    /// phrase, in both ASCII cases; for `@validateByteRange`, the bytes
    /// outside its ranges; for `@detectSQLi` and `@detectXSS`, the bytes
    /// without which libinjection finds nothing ([`SQLI_NEEDS`],
    /// [`XSS_NEEDS`]).
    pub(crate) fn required_bytes(&self) -> Option<&ByteSet> {
        match self {
            Op::Rx(rx) => rx.required_bytes(),
            Op::ValidateByteRange(outside) => Some(outside),
            Op::Pm(p) => p.rare.as_ref(),
            Op::DetectSqli => Some(&SQLI_NEEDS),
            Op::DetectXss => Some(&XSS_NEEDS),
            _ => None,
        }
    }
}

/// `@detectSQLi` never matches a value made only of ASCII letters, digits
/// and `_`: libinjection reads it as one word or number token, or a number
/// and a word, and no fingerprint of those (`n`, `1`, `1n`, `1U` with two
/// tokens…) is an injection. The test
/// `detection_needs_the_bytes_it_is_said_to` holds the library to it.
const SQLI_NEEDS: ByteSet =
    ByteSet::all_but(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_");

/// `@detectXSS` needs a `<` (a tag, comment or doctype) or a `=` (an
/// attribute's value after its name): libinjection's HTML5 tokenizer makes
/// nothing else it judges, in any of its contexts.
const XSS_NEEDS: ByteSet = ByteSet::only(b"<=");

/// The phrases of `@pm` / `@pmFromFile`, matched ASCII-case-insensitively.
#[derive(Debug)]
pub(crate) struct Phrases {
    ac: AhoCorasick,
    /// The rarest byte of each phrase (both cases), for a quick rejection
    /// of values that hold none of them; `None` with an empty phrase.
    rare: Option<ByteSet>,
    /// The second byte test ([`BytePairs`]).
    pairs: BytePairs,
}

/// The numeric operators' comparisons.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Cmp {
    Eq,
    Ge,
    Gt,
    Le,
    Lt,
}

impl Cmp {
    /// Whether `a` compares so with `b` (`@ge`: `a >= b`).
    pub(crate) fn holds(self, a: i64, b: i64) -> bool {
        match self {
            Cmp::Eq => a == b,
            Cmp::Ge => a >= b,
            Cmp::Gt => a > b,
            Cmp::Le => a <= b,
            Cmp::Lt => a < b,
        }
    }
}

/// An operator with its negation flag.
#[derive(Debug)]
pub(crate) struct Operator {
    pub op: Op,
    pub negated: bool,
}

impl Operator {
    /// Parses `"!@rx foo"`, `"@pm a b"`, or a bare regex.
    pub(crate) fn parse(text: &str, dir: &Path, at: &Location) -> Result<Operator, Error> {
        let (negated, rest) = match text.trim_start().strip_prefix('!') {
            Some(r) => (true, r.trim_start()),
            None => (false, text.trim_start()),
        };
        let (name, arg) = match rest.strip_prefix('@') {
            Some(r) => match r.split_once(|c: char| c.is_ascii_whitespace()) {
                Some((n, a)) => (n, a.trim_start()),
                None => (r, ""),
            },
            None => ("rx", rest),
        };
        let op = build(name, arg, dir, at)?;
        Ok(Operator { op, negated })
    }
}

fn rx_err(at: &Location, message: String) -> Error {
    Error::Regex {
        at: at.clone(),
        message,
    }
}

fn build(name: &str, arg: &str, dir: &Path, at: &Location) -> Result<Op, Error> {
    let m = || Macro::parse(arg);
    Ok(match name.to_ascii_lowercase().as_str() {
        "rx" => {
            if arg.contains("%{") {
                Op::RxMacro(m())
            } else {
                Op::Rx(Rx::compile(arg).map_err(|e| rx_err(at, e))?)
            }
        }
        "pm" => Op::Pm(pm(
            arg.split_ascii_whitespace().map(str::to_string).collect(),
            at,
        )?),
        "pmf" | "pmfromfile" => {
            let mut phrases = Vec::new();
            for f in arg.split_ascii_whitespace() {
                let path = dir.join(f);
                let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
                    path: path.clone(),
                    source,
                })?;
                phrases.extend(
                    text.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(str::to_string),
                );
            }
            Op::Pm(pm(phrases, at)?)
        }
        "streq" => Op::StrEq(m()),
        "eq" => Op::Num(Cmp::Eq, m()),
        "ge" => Op::Num(Cmp::Ge, m()),
        "gt" => Op::Num(Cmp::Gt, m()),
        "le" => Op::Num(Cmp::Le, m()),
        "lt" => Op::Num(Cmp::Lt, m()),
        "within" => Op::Within(m()),
        "beginswith" => Op::BeginsWith(m()),
        "endswith" => Op::EndsWith(m()),
        "contains" => Op::Contains(m()),
        "containsword" => Op::ContainsWord(m()),
        "strmatch" => Op::StrMatch(m()),
        "ipmatch" => Op::IpMatch(ip_list(arg.split(','), at)?),
        "ipmatchfromfile" | "ipmatchf" => {
            let path = dir.join(arg.trim());
            let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
            Op::IpMatch(ip_list(
                text.lines().filter(|l| !l.trim_start().starts_with('#')),
                at,
            )?)
        }
        "validatebyterange" => {
            let allowed = byte_range(arg, at)?;
            let outside: Vec<u8> = (0..=255u8)
                .filter(|&b| !allowed.get(usize::from(b)).copied().unwrap_or(false))
                .collect();
            Op::ValidateByteRange(ByteSet::from_bytes(&outside))
        }
        "validateurlencoding" => Op::ValidateUrlEncoding,
        "validateutf8encoding" => Op::ValidateUtf8Encoding,
        "detectsqli" => Op::DetectSqli,
        "detectxss" => Op::DetectXss,
        "unconditionalmatch" => Op::Unconditional,
        "nomatch" => Op::NoMatch,
        // CRS 3.3 (910100, 910140) reaches these only when configured to
        // (high-risk country codes, block_*_ip).
        "geolookup" => Op::Unavailable(
            "@geoLookup never matches: there is no GeoIP database (as ModSecurity without SecGeoLookupDb)",
        ),
        "rbl" => Op::Unavailable(
            "@rbl never matches: Rampart makes no DNS lookups on the request path",
        ),
        _ => {
            return Err(Error::Unsupported {
                at: at.clone(),
                kind: "operator",
                name: format!("@{name}"),
            })
        }
    })
}

fn pm(phrases: Vec<String>, at: &Location) -> Result<Phrases, Error> {
    let rare = crate::prefilter::rare_bytes(phrases.iter().map(String::as_bytes));
    let pairs = BytePairs::new(phrases.iter().map(String::as_bytes));
    // Without the crate's own prefilter: a value reaches the automaton only
    // after the rare-byte and pair tests found a phrase's bytes in it, and
    // with hundreds of phrases (`@pmFromFile`) the crate's rare bytes are
    // common ones, so its prefilter stopped at nearly every byte. The
    // (contiguous NFA) automaton alone costs 4% less over CRS 3.3.4; a DFA
    // saved little more and took 17 MB.
    let ac = AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .prefilter(false)
        .build(phrases)
        .map_err(|e| syntax(at, format!("@pm: {e}")))?;
    Ok(Phrases { ac, rare, pairs })
}

fn ip_list<'a>(
    items: impl Iterator<Item = &'a str>,
    at: &Location,
) -> Result<Vec<ipnet::IpNet>, Error> {
    let mut out = Vec::new();
    for item in items {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let net = match item.parse::<ipnet::IpNet>() {
            Ok(n) => n,
            Err(_) => match item.parse::<IpAddr>() {
                Ok(ip) => ipnet::IpNet::from(ip),
                Err(_) => return Err(syntax(at, format!("@ipMatch: bad address `{item}`"))),
            },
        };
        out.push(net);
    }
    Ok(out)
}

fn byte_range(arg: &str, at: &Location) -> Result<Box<[bool; 256]>, Error> {
    let mut table = Box::new([false; 256]);
    for part in arg.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let parse = |s: &str| {
            s.parse::<u8>()
                .map_err(|_| syntax(at, format!("@validateByteRange: bad range `{part}`")))
        };
        let (lo, hi) = (parse(lo)?, parse(hi)?);
        if lo > hi {
            return Err(syntax(
                at,
                format!("@validateByteRange: bad range `{part}`"),
            ));
        }
        for b in lo..=hi {
            if let Some(slot) = table.get_mut(usize::from(b)) {
                *slot = true;
            }
        }
    }
    Ok(table)
}

/// Parses a number as C's `atoi` does: leading sign and digits, else 0.
pub(crate) fn atoi(s: &[u8]) -> i64 {
    // one digit: most TX values CRS compares (paranoia levels, flags)
    if let [d @ b'0'..=b'9'] = s {
        return i64::from(d - b'0');
    }
    // leading white space, a sign, then digits up to the first other byte
    // (what follows the number, white space included, is never read)
    let start = s
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(s.len());
    let s = s.get(start..).unwrap_or(&[]);
    let (neg, digits) = match s.first() {
        Some(b'-') => (true, s.get(1..).unwrap_or(&[])),
        Some(b'+') => (false, s.get(1..).unwrap_or(&[])),
        _ => (false, s),
    };
    let mut v: i64 = 0;
    for &c in digits {
        if !c.is_ascii_digit() {
            break;
        }
        v = v.saturating_mul(10).saturating_add(i64::from(c - b'0'));
    }
    if neg {
        -v
    } else {
        v
    }
}

/// Runs an operator (without negation) on one value. `expand` resolves
/// macros in the argument; `caps` receives capture groups for `capture`.
pub(crate) fn eval(
    op: &Op,
    input: &[u8],
    expand: &mut dyn FnMut(&Macro) -> Vec<u8>,
    caps: Option<&mut Vec<SmallBytes>>,
) -> bool {
    eval_with(op, input, None, None, &mut |m| Cow::Owned(expand(m)), caps)
}

/// [`eval`], with the input's byte set when the caller has it (it lets
/// `@rx` prefilters reject most values without a scan) and, for a stored
/// value, what the prefilters work out about it ([`ValueFacts`], each
/// part built on first use).
#[inline(always)]
pub(crate) fn eval_with<'o>(
    op: &'o Op,
    input: &[u8],
    bytes: Option<&ByteSet>,
    facts: Option<&ValueFacts>,
    expand: &mut dyn FnMut(&Macro) -> Cow<'o, [u8]>,
    caps: Option<&mut Vec<SmallBytes>>,
) -> bool {
    // `@rx`, most checks, without the set-up of the other operators
    match op {
        Op::Rx(r) => r.is_match_with(input, bytes, facts, caps),
        _ => eval_other(op, input, bytes, facts, expand, caps),
    }
}

/// [`eval_with`] for every operator but `@rx`.
fn eval_other<'o>(
    op: &'o Op,
    input: &[u8],
    bytes: Option<&ByteSet>,
    facts: Option<&ValueFacts>,
    expand: &mut dyn FnMut(&Macro) -> Cow<'o, [u8]>,
    caps: Option<&mut Vec<SmallBytes>>,
) -> bool {
    let mut arg = |m: &'o Macro| -> Cow<'o, [u8]> {
        match m.as_literal() {
            Some(s) => Cow::Borrowed(s.as_bytes()),
            None => expand(m),
        }
    };
    match op {
        Op::Rx(r) => r.is_match_with(input, bytes, facts, caps),
        Op::RxMacro(m) => {
            let pat = String::from_utf8_lossy(&arg(m)).into_owned();
            Rx::compile(&pat).is_ok_and(|r| r.is_match(input, caps))
        }
        Op::Pm(p)
            if bytes.zip(p.rare.as_ref()).is_some_and(|(b, r)| {
                !b.intersects(r) || !p.pairs.may_match_with(b, facts.map(|f| (input, f.grams())))
            }) =>
        {
            false
        }
        Op::Pm(Phrases { ac, .. }) => match ac.find(input) {
            Some(found) => {
                if let Some(c) = caps {
                    c.clear();
                    c.push(SmallBytes::copy_of(input.get(found.range()).unwrap_or(&[])));
                }
                true
            }
            None => false,
        },
        Op::StrEq(m) => *arg(m) == *input,
        Op::Num(cmp, m) => cmp.holds(atoi(input), atoi(&arg(m))),
        Op::Within(m) => {
            let a = arg(m);
            find(&a, input).is_some()
        }
        Op::BeginsWith(m) => input.starts_with(&arg(m)),
        Op::EndsWith(m) => input.ends_with(&arg(m)),
        Op::Contains(m) => find(input, &arg(m)).is_some(),
        Op::StrMatch(m) => find(input, &arg(m)).is_some(),
        Op::ContainsWord(m) => contains_word(input, &arg(m)),
        Op::IpMatch(nets) => std::str::from_utf8(input)
            .ok()
            .and_then(|s| s.trim().parse::<IpAddr>().ok())
            .is_some_and(|ip| nets.iter().any(|n| n.contains(&ip))),
        // the input's byte set, when given, holds exactly its bytes
        Op::ValidateByteRange(outside) => match bytes {
            Some(b) => b.intersects(outside),
            None => input.iter().any(|&b| outside.contains(b)),
        },
        Op::ValidateUrlEncoding => invalid_url_encoding(input),
        Op::ValidateUtf8Encoding => std::str::from_utf8(input).is_err(),
        Op::DetectSqli => match recall(Detector::Sqli, input, detect_sqli) {
            Some(fp) => {
                if let Some(c) = caps {
                    c.clear();
                    c.push(fp);
                }
                true
            }
            None => false,
        },
        Op::DetectXss => recall(Detector::Xss, input, detect_xss).is_some(),
        Op::Unconditional => true,
        Op::NoMatch | Op::Unavailable(_) => false,
    }
}

/// libinjection's SQL verdict: the fingerprint when it finds an injection.
/// What `libinjectionrs::detect_sqli` does, but for the fingerprint: it
/// works it out once more after deciding (a whole tokenizing and folding
/// pass), for every input; only a match uses it (`capture`, TX.0), so only
/// a match pays for it. A panic in the library counts as no injection.
fn detect_sqli(input: &[u8]) -> Option<SmallBytes> {
    std::panic::catch_unwind(|| {
        let flags = libinjectionrs::SqliFlags::FLAG_NONE;
        let mut state = libinjectionrs::SqliState::new(input, flags);
        state
            .detect()
            .then(|| SmallBytes::copy_of(state.get_fingerprint().as_str().as_bytes()))
    })
    .ok()
    .flatten()
}

/// libinjection's XSS verdict (`Some`, empty, for an injection); a panic in
/// the library counts as none.
fn detect_xss(input: &[u8]) -> Option<SmallBytes> {
    std::panic::catch_unwind(|| libinjectionrs::detect_xss(input).is_injection())
        .unwrap_or(false)
        .then(SmallBytes::default)
}

fn contains_word(input: &[u8], word: &[u8]) -> bool {
    if word.is_empty() {
        return true;
    }
    let is_word = |c: Option<&u8>| c.is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_');
    let mut start = 0;
    while let Some(p) = input.get(start..).and_then(|h| find(h, word)) {
        let i = start + p;
        let before = if i == 0 { None } else { input.get(i - 1) };
        if !is_word(before) && !is_word(input.get(i + word.len())) {
            return true;
        }
        start = i + 1;
    }
    false
}

fn invalid_url_encoding(input: &[u8]) -> bool {
    let mut i = 0;
    while let Some(&c) = input.get(i) {
        if c == b'%' {
            match (input.get(i + 1), input.get(i + 2)) {
                (Some(a), Some(b)) if a.is_ascii_hexdigit() && b.is_ascii_hexdigit() => i += 3,
                _ => return true,
            }
        } else {
            i += 1;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atoi_reads_as_c_does() {
        let cases: [(&[u8], i64); 14] = [
            (b"", 0),
            (b"0", 0),
            (b"1", 1),
            (b"42", 42),
            (b"  7", 7),
            (b"\t\n 8 ", 8),
            (b"-5", -5),
            (b"+6", 6),
            (b"12abc", 12),
            (b"1 2", 1),
            (b"abc", 0),
            (b"-", 0),
            (b" - 3", 0),
            (b"99999999999999999999999", i64::MAX),
        ];
        for (input, want) in cases {
            assert_eq!(atoi(input), want, "{input:?}");
        }
    }

    #[test]
    fn a_bad_pattern_is_refused_with_the_parsers_reason() {
        let e = Rx::compile("a(b").err().unwrap();
        assert!(e.contains("unclosed group"), "{e}");
    }

    #[test]
    fn escaped_angle_brackets_are_the_characters_as_in_pcre() {
        // in the regex crate `\<` and `\>` are word boundaries, refused in
        // a class; PCRE (ModSecurity) reads both as the characters
        let rx = Rx::compile(r"a\<b\>c").unwrap();
        assert!(matches!(rx.re, RxImpl::Fast(_)));
        assert!(rx.is_match(b"xa<b>cx", None));
        assert!(!rx.is_match(b"a b c", None));
        let rx = Rx::compile(r"^[^\<\>\!]+$").unwrap();
        assert!(matches!(rx.re, RxImpl::Fast(_)));
        assert!(rx.is_match(b"plain", None));
        assert!(!rx.is_match(b"a<b", None));
        assert!(!rx.is_match(b"a>b", None));
        // an escaped backslash before `<` stays a backslash
        let rx = Rx::compile(r"\\<").unwrap();
        assert!(rx.is_match(b"\\<", None));
        assert!(!rx.is_match(b"<", None));
    }

    #[test]
    fn whole_input_patterns_agree_with_the_regex_they_stand_for() {
        let inputs: [&[u8]; 7] = [
            b"",
            b"host",
            b"two\nlines\n",
            b"\r\n",
            b"\xff\xfe invalid UTF-8 \x00",
            "caf\u{e9}".as_bytes(),
            b"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ];
        for pattern in WHOLE_INPUT {
            let rx = Rx::compile(pattern).unwrap();
            assert!(matches!(rx.re, RxImpl::Whole), "{pattern}");
            let re = regex::bytes::RegexBuilder::new(pattern)
                .dot_matches_new_line(true)
                .unicode(false)
                .build()
                .unwrap();
            for input in inputs {
                let mut caps = Vec::new();
                assert_eq!(
                    rx.is_match(input, Some(&mut caps)),
                    re.is_match(input),
                    "{pattern} {input:?}"
                );
                let want: Vec<Vec<u8>> = re
                    .captures(input)
                    .map(|c| {
                        c.iter()
                            .map(|m| m.map_or(vec![], |m| m.as_bytes().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default();
                let caps: Vec<Vec<u8>> = caps.iter().map(|c| c.to_vec()).collect();
                assert_eq!(caps, want, "{pattern} {input:?}");
            }
        }
        // anything more is a search
        assert!(matches!(Rx::compile("^.+$").unwrap().re, RxImpl::Fast(_)));
        assert!(matches!(Rx::compile("^(.*)$").unwrap().re, RxImpl::Fast(_)));
    }

    #[test]
    fn detect_sqli_agrees_with_the_library_wrapper() {
        let inputs: [&[u8]; 16] = [
            b"",
            b"dark",
            b"leather boots",
            b"1' UNION SELECT username,password FROM users--",
            b"admin' OR '1'='1'--",
            b"1 AND 1=1",
            b"\"; DROP TABLE users; --",
            b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36",
            b"https://shop.example.com/",
            b"GA1.2.1234567890.1700000000",
            b"1/*!UNION*/SELECT",
            b"x' AND sleep(5)#",
            b"-1 OR 1",
            b"@@version",
            b"1e1'",
            b"\xff\xfe'",
        ];
        let mut matched = 0;
        // twice over: the second time each answer is the one remembered
        for input in inputs.into_iter().chain(inputs) {
            let want = libinjectionrs::detect_sqli(input);
            let mut caps = Vec::new();
            let got = eval(&Op::DetectSqli, input, &mut |_| Vec::new(), Some(&mut caps));
            assert_eq!(got, want.is_injection(), "{input:?}");
            if got {
                let fp = want.fingerprint.map(|f| f.as_str().as_bytes().to_vec());
                assert_eq!(
                    caps.first().map(|c| c.to_vec()).as_ref(),
                    fp.as_ref(),
                    "{input:?}"
                );
                matched += 1;
            }
        }
        assert!(matched >= 3, "too few injections to check the fingerprint");
    }

    #[test]
    fn detection_needs_the_bytes_it_is_said_to() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || crate::prefilter::tests::next(&mut seed);
        let mut pick = |from: &[&[u8]], max: u64, out: &mut Vec<u8>| {
            out.clear();
            for _ in 0..=next() % max {
                let k = (next() % from.len() as u64) as usize;
                out.extend_from_slice(from.get(k).copied().unwrap_or_default());
            }
        };
        let holds = |set: &ByteSet, v: &[u8]| v.iter().any(|&b| set.contains(b));
        let mut v = Vec::new();
        // @detectSQLi: words, numbers and keywords run together, with the
        // number suffixes libinjection reads specially (1d, 1f, 0x, 1e)
        let sqli: [&[u8]; 24] = [
            b"1",
            b"0",
            b"9",
            b"1d",
            b"1f",
            b"0x1f",
            b"1e5",
            b"0b1",
            b"union",
            b"UNION",
            b"select",
            b"or",
            b"AND",
            b"sleep",
            b"null",
            b"true",
            b"x",
            b"b",
            b"n",
            b"q",
            b"u",
            b"e",
            b"_",
            b"LOCALTIMESTAMP",
        ];
        // @detectXSS: HTML and script fragments but for `<` and `=`
        let xss: [&[u8]; 24] = [
            b"script",
            b"onerror",
            b"javascript:",
            b"style",
            b"href",
            b" ",
            b"\"",
            b"'",
            b"`",
            b"/",
            b">",
            b"!--",
            b"?",
            b"&#60;",
            b"&lt;",
            b"%3c",
            b"expression(",
            b"data:",
            b"vbscript:",
            b"\t",
            b"\n",
            b"\0",
            b"x",
            b"\xff",
        ];
        for (op, pieces, max) in [(Op::DetectSqli, &sqli[..], 5), (Op::DetectXss, &xss[..], 8)] {
            let needs = op.required_bytes().unwrap();
            for _ in 0..20_000 {
                pick(pieces, max, &mut v);
                assert!(!holds(needs, &v));
                assert!(!eval(&op, &v, &mut |_| Vec::new(), None), "{v:?}");
            }
        }
        // and either may match once its bytes are there
        for (op, input, needs) in [
            (Op::DetectSqli, &b"1' or '1'='1"[..], &SQLI_NEEDS),
            (Op::DetectSqli, b"1 union select 1", &SQLI_NEEDS),
            (Op::DetectXss, b"<script>alert(1)", &XSS_NEEDS),
            (Op::DetectXss, b"x onerror=alert(1)", &XSS_NEEDS),
        ] {
            assert!(holds(needs, input));
            assert_eq!(op.required_bytes(), Some(needs));
            assert!(eval(&op, input, &mut |_| Vec::new(), None), "{input:?}");
        }
    }

    #[test]
    fn pm_byte_test_agrees_with_the_scan() {
        let at = Location {
            file: "t".into(),
            line: 1,
        };
        let op = build("pm", "<script> Ünïcode zz", Path::new("."), &at).unwrap();
        let mut none = |_: &Macro| Cow::Owned(Vec::new());
        for input in [
            &b"a <SCRIPT> tag"[..],
            "ÜNÏCODE".as_bytes(),
            "Ünïcode".as_bytes(),
            b"ZZ",
            b"z z",
            b"<a> scrip t",
            b"plain",
            b"",
        ] {
            let bytes = ByteSet::of(input);
            let scan = eval_with(&op, input, None, None, &mut none, None);
            let name = String::from_utf8_lossy(input);
            assert_eq!(
                eval_with(&op, input, Some(&bytes), None, &mut none, None),
                scan,
                "{name:?}"
            );
            // with the pair set, to be built or built
            for facts in [
                ValueFacts::default(),
                ValueFacts::with_grams(crate::prefilter::BigramSet::of(input)),
            ] {
                assert_eq!(
                    eval_with(&op, input, Some(&bytes), Some(&facts), &mut none, None),
                    scan,
                    "{name:?}"
                );
            }
        }
    }

    #[test]
    fn validate_byte_range_byte_test_agrees_with_the_scan() {
        let at = Location {
            file: "t".into(),
            line: 1,
        };
        let op = build("validateByteRange", "1-8, 32-126,200", Path::new("."), &at).unwrap();
        let mut none = |_: &Macro| Cow::Owned(Vec::new());
        for (input, outside) in [
            (&b"plain text ~"[..], false),
            (b"\x01\x08 \xc8", false),
            (b"tab\there", true),
            (b"nul\0", true),
            (b"\x7f", true),
            (b"\xc9", true),
            (b"", false),
        ] {
            let bytes = ByteSet::of(input);
            assert_eq!(
                eval_with(&op, input, Some(&bytes), None, &mut none, None),
                outside
            );
            assert_eq!(eval_with(&op, input, None, None, &mut none, None), outside);
            // a value lacking every byte the link needs is passed over
            let need = op.required_bytes().unwrap();
            assert_eq!(bytes.intersects(need), outside);
        }
    }

    #[test]
    fn literal_braces_are_escaped_and_quantifiers_kept() {
        let cases = [
            (r"a{2}b{1,}c{3,4}", r"a{2}b{1,}c{3,4}"),
            (r"\s*{", r"\s*\{"),
            (r"\${HOME}", r"\$\{HOME}"),
            (r"{{.*?}}", r"\{\{.*?}}"),
            (r"(?:{|\()", r"(?:\{|\()"),
            (r"x|{2}", r"x|\{2}"),
            (r"(?i){2}", r"(?i)\{2}"),
            (r"a{,3}", r"a\{,3}"),
            (r"a{2}{3}", r"a{2}\{3}"),
            (r"[{]{2}", r"[{]{2}"),
            (r"[^]{]x", r"[^]{]x"),
            (r"\{a", r"\{a"),
        ];
        for (pattern, want) in cases {
            assert_eq!(pcre_braces(pattern), want, "{pattern}");
        }
        // CRS shapes that needed the backtracking engine only for a
        // literal brace now compile with the regex crate, prefilter and all.
        for p in [
            r"^\(\s*\)\s+{",
            r"{{.*?}}",
            r"[oOcC]:\d+:\x22.+?\x22:\d+:{.*}",
            r"(?:;|\{|\||\$\(|\${|<\()\s*(?:{|\s*\(\s*)*cat\b",
        ] {
            let rx = Rx::compile(p).unwrap();
            assert_eq!(rx.engine(), RxEngine::Fast, "{p}");
        }
        let rx = Rx::compile(r"^\(\s*\)\s+{").unwrap();
        assert!(rx.is_match(b"() {", None));
        assert!(!rx.is_match(b"() x", None));
        let rx = Rx::compile(r"{{.*?}}").unwrap();
        assert!(rx.is_match(b"x {{7*7}} y", None));
        assert!(!rx.is_match(b"{7*7}", None));
    }

    #[test]
    fn braced_hex_escapes_are_bytes() {
        assert_eq!(byte_escapes(r"[^>\x{be}]\x{c2}\x{b4}"), r"[^>\xbe]\xc2\xb4");
        assert_eq!(
            byte_escapes(r"\\x{41}\x{7}\x{1F600}\."),
            r"\\x{41}\x07\x{1F600}\."
        );
        // CRS 941310: US-ASCII-encoded XSS, matched on raw bytes.
        let rx = Rx::compile(r"\x{bc}[^>\x{be}]*[>\x{be}]|<[^\x{be}]*\x{be}").unwrap();
        assert_eq!(rx.engine(), RxEngine::Fast);
        assert!(rx.is_match(b"\xbcscript\xbealert", None));
        // CRS 942420: a right single quotation mark is the bytes e2 80 99.
        let rx = Rx::compile(r"\x{e2}\x80[\x98\x99]").unwrap();
        assert!(rx.is_match("\u{2019}".as_bytes(), None));
        assert!(rx.has_prefilter());
        assert!(!rx.is_match(b"plain text", None));
    }
}
