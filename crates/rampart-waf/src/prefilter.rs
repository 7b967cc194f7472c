//! Literal prefilters for `@rx`: most CRS patterns cannot match unless the
//! value contains one of a few words (`select`, `<script`, `/etc/`), and an
//! Aho-Corasick scan for those words is much cheaper than the regex. This
//! module works out such a set of required literals from the pattern's
//! syntax tree (parsed by `regex-syntax`, exactly as the `regex` crate parses
//! it) and answers "can this value match at all?".
//!
//! The analysis is conservative: each node of the tree gets either the exact
//! set of strings it can match, or a set of *factors* one of which every
//! match contains, or nothing. Anything it cannot bound (large classes,
//! optional parts, sets that grow too big) becomes "nothing", and a pattern
//! whose whole requirement is "nothing" (or could be the empty string) gets
//! no prefilter at all. Literals are ASCII-lowercased and searched
//! case-insensitively: that loses precision, never a match.
//!
//! Before the scan comes a cheaper test: each literal's rarest byte (both
//! ASCII cases) goes into a 256-bit set, and a value whose [`ByteSet`] holds
//! none of them cannot contain any literal. The engine computes a value's
//! byte set once and tests it against every rule's prefilter.

use aho_corasick::AhoCorasick;
use regex_syntax::hir::{Class, Hir, HirKind};
use std::collections::BTreeSet;

/// Most strings an exact set may hold before it is treated as factors.
const MAX_EXACT: usize = 64;
/// Most literals a prefilter may hold.
const MAX_FACTORS: usize = 256;
/// Longest literal kept in an exact set.
const MAX_LEN: usize = 32;
/// Largest character class enumerated into literals.
const MAX_CLASS: usize = 16;

type Set = BTreeSet<Vec<u8>>;

/// A set of byte values, 256 bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ByteSet([u64; 4]);

impl ByteSet {
    /// Every byte.
    pub(crate) const ALL: ByteSet = ByteSet([u64::MAX; 4]);

    /// The bytes present in `input`.
    pub(crate) fn of(input: &[u8]) -> ByteSet {
        let mut w = [0u64; 4];
        for &b in input {
            // `b >> 6` is below 4: the check compiles away
            if let Some(x) = w.get_mut(usize::from(b >> 6)) {
                *x |= 1u64 << (b & 63);
            }
        }
        ByteSet(w)
    }

    /// The bytes in `bytes`.
    pub(crate) fn from_bytes(bytes: &[u8]) -> ByteSet {
        Self::of(bytes)
    }

    /// The bytes `lo..=hi`.
    pub(crate) fn range(lo: u8, hi: u8) -> ByteSet {
        let mut s = ByteSet::default();
        for b in lo..=hi {
            s.insert(b);
        }
        s
    }

    /// Every byte not in this set.
    pub(crate) fn complement(&self) -> ByteSet {
        ByteSet(self.0.map(|w| !w))
    }

    fn insert(&mut self, b: u8) {
        if let Some(w) = self.0.get_mut(usize::from(b >> 6)) {
            *w |= 1 << (b & 63);
        }
    }

    /// The set with `A`–`Z` replaced by `a`–`z`.
    pub(crate) fn ascii_lowercase(&self) -> ByteSet {
        // 'A'..='Z' are bits 1..=26 of the second word, 'a'..='z' 33..=58
        const UPPER: u64 = 0x07ff_fffe;
        let mut w = self.0;
        if let Some(x) = w.get_mut(1) {
            *x = (*x & !UPPER) | ((*x & UPPER) << 32);
        }
        ByteSet(w)
    }

    /// Keeps only the bytes also in `other`.
    pub(crate) fn intersect_with(&mut self, other: &ByteSet) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a &= b;
        }
    }

    /// The bytes of the set, in increasing order.
    pub(crate) fn bytes(&self) -> impl Iterator<Item = u8> + '_ {
        self.0.iter().enumerate().flat_map(|(i, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let bit = w.trailing_zeros();
                w &= w - 1;
                Some((i as u32 * 64 + bit) as u8)
            })
        })
    }

    /// Adds the bytes of `other`.
    pub(crate) fn union_with(&mut self, other: &ByteSet) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }

    /// True when the two sets share a byte.
    pub(crate) fn intersects(&self, other: &ByteSet) -> bool {
        self.0.iter().zip(&other.0).any(|(a, b)| a & b != 0)
    }
}

/// How rare a byte is in ordinary request data (higher is rarer): letters
/// by English frequency, then digits, then common URL and header
/// punctuation, then the characters attacks need, then control and
/// non-ASCII bytes. Only a heuristic for choosing which byte to test: any
/// choice is correct.
fn rarity(b: u8) -> u8 {
    const LETTERS: &[u8] = b"etaoinshrdlcumwfgypbvkjxqz";
    let b = b.to_ascii_lowercase();
    if let Some(p) = LETTERS.iter().position(|&c| c == b) {
        return 10 + p as u8;
    }
    match b {
        b'0'..=b'9' => 40,
        b' ' | b'/' | b'.' | b'-' | b'=' | b'&' | b',' | b';' | b':' | b'_' => 50,
        b'(' | b')' | b'+' | b'*' | b'%' | b'?' => 60,
        b'<' | b'>' | b'\'' | b'"' | b'`' | b'$' | b'|' | b'{' | b'}' | b'[' | b']' => 70,
        b'\\' | b'^' | b'~' | b'!' | b'#' | b'@' => 75,
        _ => 90,
    }
}

/// What every match of a syntax-tree node is known to satisfy.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Req {
    /// The match is (ASCII-lowercased) one of these strings.
    Exact(Set),
    /// The match contains (ASCII-case-insensitively) one of these strings.
    Factors(Set),
    /// Nothing useful is known.
    Any,
}

/// A necessary condition for a regex to match: the value contains one of
/// the literals (ASCII case ignored).
#[derive(Debug)]
pub(crate) struct Prefilter {
    ac: AhoCorasick,
    /// The rarest byte of each literal, in both ASCII cases.
    rare: ByteSet,
    pairs: BytePairs,
}

/// A second byte test after the rarest byte's: a value holding a literal
/// (ASCII case ignored) holds both its rarest and its second rarest byte,
/// in some case.
#[derive(Debug)]
pub(crate) struct BytePairs {
    /// Per rarest byte (lowercase): the second rarest byte of each literal
    /// whose rarest byte it is, in both ASCII cases (every byte for a
    /// literal of one distinct byte). Empty: the test is off.
    second: Vec<(u8, ByteSet)>,
    /// The rarest bytes, lowercase.
    rare_lower: ByteSet,
    /// Per byte: its position in `second` plus one (0: none).
    second_at: Box<[u8; 256]>,
}

impl BytePairs {
    /// The pairs of `lits`; the test is off when a literal is empty or
    /// there are more rarest bytes than the index can hold.
    pub(crate) fn new<'a>(lits: impl IntoIterator<Item = &'a [u8]>) -> BytePairs {
        let off = BytePairs {
            second: Vec::new(),
            rare_lower: ByteSet::default(),
            second_at: Box::new([0; 256]),
        };
        let mut second: Vec<(u8, ByteSet)> = Vec::new();
        for l in lits {
            let Some(b1) = l.iter().copied().max_by_key(|&b| rarity(b)) else {
                return off;
            };
            let b1 = b1.to_ascii_lowercase();
            let b2 = l
                .iter()
                .map(u8::to_ascii_lowercase)
                .filter(|&b| b != b1)
                .max_by_key(|&b| rarity(b));
            let set = match b2 {
                Some(b) => {
                    let mut s = ByteSet::default();
                    s.insert(b);
                    s.insert(b.to_ascii_uppercase());
                    s
                }
                None => ByteSet::ALL,
            };
            match second.iter_mut().find(|(b, _)| *b == b1) {
                Some((_, s)) => s.union_with(&set),
                None => second.push((b1, set)),
            }
        }
        let mut pairs = BytePairs { second, ..off };
        for (i, (b1, _)) in pairs.second.iter().enumerate() {
            let (Ok(at), Some(slot)) = (
                u8::try_from(i + 1),
                pairs.second_at.get_mut(usize::from(*b1)),
            ) else {
                pairs.second.clear();
                return pairs;
            };
            *slot = at;
            pairs.rare_lower.insert(*b1);
        }
        pairs
    }

    /// False only when `bytes` (a value's) lacks one byte of each pair.
    pub(crate) fn may_match(&self, bytes: &ByteSet) -> bool {
        if self.second.is_empty() {
            return true;
        }
        let mut present = bytes.ascii_lowercase();
        present.intersect_with(&self.rare_lower);
        let found = present.bytes().any(|b1| {
            let at = self.second_at.get(usize::from(b1)).copied().unwrap_or(0);
            match self.second.get(usize::from(at).wrapping_sub(1)) {
                Some((_, s)) => bytes.intersects(s),
                None => true,
            }
        });
        found
    }
}

impl Prefilter {
    /// The prefilter for `pattern` as the `regex` crate compiles it with
    /// ModSecurity's flags (`unicode` as given, dot matches newline), or
    /// `None` when no useful literal is required.
    pub(crate) fn new(pattern: &str, unicode: bool) -> Option<Prefilter> {
        let hir = regex_syntax::ParserBuilder::new()
            .unicode(unicode)
            .utf8(false)
            .dot_matches_new_line(true)
            .build()
            .parse(pattern)
            .ok()?;
        Self::from_literals(required(&hir)?)
    }

    fn from_literals(lits: Set) -> Option<Prefilter> {
        let rare = rare_bytes(lits.iter().map(Vec::as_slice))?;
        let pairs = BytePairs::new(lits.iter().map(Vec::as_slice));
        let ac = AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build(&lits)
            .ok()?;
        Some(Prefilter { ac, rare, pairs })
    }

    /// The rarest byte of each literal (both cases): a value holding none of
    /// them cannot match.
    pub(crate) fn rare(&self) -> &ByteSet {
        &self.rare
    }

    /// False only when the regex cannot match `input`; `bytes`, when given,
    /// must be `ByteSet::of(input)`.
    pub(crate) fn may_match(&self, input: &[u8], bytes: Option<&ByteSet>) -> bool {
        if bytes.is_some_and(|b| !b.intersects(&self.rare) || !self.pairs.may_match(b)) {
            return false;
        }
        self.ac.is_match(input)
    }
}

/// The rarest byte of each literal, in both ASCII cases: a value that
/// contains one of the literals (ASCII case ignored) holds one of these
/// bytes. `None` when a literal is empty (it occurs everywhere).
pub(crate) fn rare_bytes<'a>(lits: impl IntoIterator<Item = &'a [u8]>) -> Option<ByteSet> {
    let mut rare = ByteSet::default();
    for l in lits {
        let b = l.iter().copied().max_by_key(|&b| rarity(b))?;
        rare.insert(b.to_ascii_lowercase());
        rare.insert(b.to_ascii_uppercase());
    }
    Some(rare)
}

/// The literals one of which every match contains, if there is a usable set.
fn required(hir: &Hir) -> Option<Set> {
    let set = match analyze(hir) {
        Req::Exact(s) | Req::Factors(s) => s,
        Req::Any => return None,
    };
    usable(&set).then_some(())?;
    shrink(set, MAX_FACTORS)
}

/// A set that can serve as a requirement: non-empty, without "".
fn usable(s: &Set) -> bool {
    !s.is_empty() && !s.iter().any(Vec::is_empty)
}

fn exact_of<I: IntoIterator<Item = Vec<u8>>>(items: I) -> Req {
    Req::Exact(items.into_iter().collect())
}

fn analyze(hir: &Hir) -> Req {
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => exact_of([Vec::new()]),
        HirKind::Literal(l) => exact_of([l.0.to_ascii_lowercase()]),
        HirKind::Class(c) => class(c).map_or(Req::Any, Req::Exact),
        HirKind::Capture(c) => analyze(&c.sub),
        HirKind::Repetition(r) => {
            if r.min == 0 {
                Req::Any
            } else if r.min == 1 && r.max == Some(1) {
                analyze(&r.sub)
            } else {
                as_factors(analyze(&r.sub))
            }
        }
        HirKind::Concat(parts) => concat(parts),
        HirKind::Alternation(parts) => alternation(parts),
    }
}

/// The (lowercased) strings a class matches, when there are few.
fn class(c: &Class) -> Option<Set> {
    let mut out = Set::new();
    match c {
        Class::Bytes(b) => {
            for r in b.ranges() {
                if usize::from(r.end() - r.start()) >= MAX_CLASS {
                    return None;
                }
                for x in r.start()..=r.end() {
                    out.insert(vec![x.to_ascii_lowercase()]);
                }
            }
        }
        Class::Unicode(u) => {
            for r in u.ranges() {
                if (u32::from(r.end()) - u32::from(r.start())) as usize >= MAX_CLASS {
                    return None;
                }
                for x in u32::from(r.start())..=u32::from(r.end()) {
                    let ch = char::from_u32(x)?;
                    let mut buf = [0u8; 4];
                    out.insert(ch.encode_utf8(&mut buf).as_bytes().to_ascii_lowercase());
                }
            }
        }
    }
    (out.len() <= MAX_CLASS && !out.is_empty()).then_some(out)
}

/// An exact requirement loosened to factors (a repeated or partial match
/// still contains one of the strings).
fn as_factors(r: Req) -> Req {
    match r {
        Req::Exact(s) | Req::Factors(s) if usable(&s) => Req::Factors(s),
        _ => Req::Any,
    }
}

/// Every string of `a` followed by every string of `b`, within the limits.
fn cross(a: &Set, b: &Set) -> Option<Set> {
    if a.len().saturating_mul(b.len()) > MAX_EXACT {
        return None;
    }
    let mut out = Set::new();
    for x in a {
        for y in b {
            if x.len() + y.len() > MAX_LEN {
                return None;
            }
            let mut s = x.clone();
            s.extend_from_slice(y);
            out.insert(s);
        }
    }
    Some(out)
}

/// How selective a factor set is: longer shortest literal first, then
/// fewer literals.
fn score(s: &Set) -> (usize, std::cmp::Reverse<usize>) {
    let shortest = s.iter().map(Vec::len).min().unwrap_or(0);
    (shortest.min(4), std::cmp::Reverse(s.len()))
}

fn concat(parts: &[Hir]) -> Req {
    let mut best: Option<Set> = None;
    let mut consider = |s: Set| {
        if usable(&s) && best.as_ref().is_none_or(|b| score(&s) > score(b)) {
            best = Some(s);
        }
    };
    let empty_run = || -> Set { [Vec::new()].into_iter().collect() };
    // Consecutive exact parts multiply into one exact run; any match of the
    // concatenation contains a match of each run and of each part.
    let mut run = empty_run();
    let mut all_exact = true;
    for p in parts {
        match analyze(p) {
            Req::Exact(s) => match cross(&run, &s) {
                Some(joined) => run = joined,
                None => {
                    all_exact = false;
                    consider(std::mem::replace(&mut run, s));
                }
            },
            Req::Factors(f) => {
                all_exact = false;
                consider(std::mem::replace(&mut run, empty_run()));
                consider(f);
            }
            Req::Any => {
                all_exact = false;
                consider(std::mem::replace(&mut run, empty_run()));
            }
        }
    }
    if all_exact {
        return Req::Exact(run);
    }
    consider(run);
    best.map_or(Req::Any, Req::Factors)
}

fn alternation(parts: &[Hir]) -> Req {
    let reqs: Vec<Req> = parts.iter().map(analyze).collect();
    if reqs.iter().all(|r| matches!(r, Req::Exact(_))) {
        let mut all = Set::new();
        for r in reqs {
            if let Req::Exact(s) = r {
                all.extend(s);
            }
        }
        if all.len() <= MAX_EXACT {
            return Req::Exact(all);
        }
        return as_factors(Req::Exact(all));
    }
    // Every branch must require something; a match contains one of them.
    let mut all = Set::new();
    for r in reqs {
        match as_factors(r) {
            Req::Factors(s) => all.extend(s),
            _ => return Req::Any,
        }
        if all.len() > 4 * MAX_FACTORS {
            match shrink(std::mem::take(&mut all), MAX_FACTORS) {
                Some(s) => all = s,
                None => return Req::Any,
            }
        }
    }
    match shrink(all, MAX_FACTORS) {
        Some(s) => Req::Factors(s),
        None => Req::Any,
    }
}

/// Cuts literals to shorter prefixes until at most `max` remain (a match
/// that contains a literal contains each of its prefixes).
fn shrink(mut set: Set, max: usize) -> Option<Set> {
    while set.len() > max {
        let longest = set.iter().map(Vec::len).max().unwrap_or(0);
        if longest <= 1 {
            return None;
        }
        set = set
            .into_iter()
            .map(|mut s| {
                s.truncate(longest - 1);
                s
            })
            .collect();
    }
    Some(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lits(pattern: &str) -> Option<Vec<String>> {
        let hir = regex_syntax::ParserBuilder::new()
            .unicode(false)
            .utf8(false)
            .dot_matches_new_line(true)
            .build()
            .parse(pattern)
            .unwrap();
        required(&hir).map(|s| {
            s.into_iter()
                .map(|l| String::from_utf8_lossy(&l).into_owned())
                .collect()
        })
    }

    /// Checks that the prefilter never rejects what the regex matches, and
    /// returns whether it would skip `input`.
    fn skips(pattern: &str, input: &str) -> bool {
        let re = regex::bytes::RegexBuilder::new(pattern)
            .unicode(false)
            .dot_matches_new_line(true)
            .build()
            .unwrap();
        let Some(pf) = Prefilter::new(pattern, false) else {
            return false;
        };
        let skip = !pf.may_match(input.as_bytes(), None);
        let bytes = ByteSet::of(input.as_bytes());
        let skip_by_bytes = !pf.may_match(input.as_bytes(), Some(&bytes));
        assert!(
            !(skip_by_bytes && re.is_match(input.as_bytes())),
            "byte test of {pattern:?} skipped matching input {input:?}"
        );
        assert!(skip_by_bytes || !skip, "the byte test never adds a match");
        assert!(
            !(skip && re.is_match(input.as_bytes())),
            "prefilter of {pattern:?} skipped matching input {input:?}"
        );
        skip
    }

    #[test]
    fn literal_sets() {
        assert_eq!(lits("select"), Some(vec!["select".into()]));
        assert_eq!(lits("(?i)SeLeCt"), Some(vec!["select".into()]));
        assert_eq!(lits("a|bc"), Some(vec!["a".into(), "bc".into()]));
        // the longest required run wins over a shorter one
        assert_eq!(lits(r"<\s*script\b"), Some(vec!["script".into()]));
        assert_eq!(lits(r"\d+union"), Some(vec!["union".into()]));
        // a class of a few bytes multiplies out
        assert_eq!(lits("ab[cd]"), Some(vec!["abc".into(), "abd".into()]));
    }

    #[test]
    fn no_prefilter_when_nothing_is_required() {
        for p in [
            "",
            "a*",
            "a?b?",
            "(?:select)?",
            r"\w+",
            ".",
            "^",
            "a|b*",
            "(?:union|)",
            "[^a]",
        ] {
            assert_eq!(lits(p), None, "{p:?}");
        }
    }

    #[test]
    fn must_not_skip_matches() {
        let cases = [
            ("(?i)union\\s+select", "1 UNION  SELECT x"),
            ("(?i)union\\s+select", "UnIoN\tsElEcT"),
            ("(?:^|[^a-z])on(?:load|error)=", "<img onerror=x>"),
            ("(?i:<script)|javascript:", "JAVASCRIPT:alert(1)"),
            ("a+b{2,}", "aaabbb"),
            (r"(?:\.\./)+etc", "../../etc/passwd"),
            (r"\x00|%00", "a\0b"),
            (r"[\xbc][^\xbe]*[\xbe]", "\u{bc}x\u{be}"),
            ("(?i)(?:cat|less|more)\\s+/etc/passwd", ";Cat /etc/passwd"),
            ("x(?:ab|cd)*y", "xy"),
            (r"\bselect\b", "select"),
        ];
        for (p, input) in cases {
            assert!(!skips(p, input), "{p:?} on {input:?}");
        }
    }

    #[test]
    fn skips_what_cannot_match() {
        let cases = [
            ("(?i)union\\s+select", "red leather boots"),
            ("(?:^|[^a-z])on(?:load|error)=", "page=2&sort=asc"),
            ("(?i)(?:cat|less|more)\\s+/etc/passwd", "a normal sentence"),
            (r"(?:\.\./)+etc", "/static/app.js"),
        ];
        for (p, input) in cases {
            assert!(skips(p, input), "{p:?} on {input:?}");
        }
    }

    #[test]
    fn byte_pairs_need_both_bytes_of_a_literal() {
        let lits: [&[u8]; 3] = [b"<script", b"javascript:", b"zz"];
        let pairs = BytePairs::new(lits);
        let has = |s: &[u8]| pairs.may_match(&ByteSet::of(s));
        assert!(has(b"<SCRIPT"));
        assert!(has(b"JavaScript:"));
        assert!(has(b"ZZ"));
        // `<` without the second byte of `<script`, `:` without `javascript:`'s
        assert!(!has(b"<a href"));
        assert!(!has(b"a:b"));
        // a literal of one distinct byte needs only that byte
        assert!(has(b"a:b z"));
        // an empty literal is everywhere: the test is off
        let off = BytePairs::new([&b""[..], b"x"]);
        assert!(off.may_match(&ByteSet::default()));
    }

    #[test]
    fn unicode_case_folding_is_kept() {
        // (?i)k also matches U+212A KELVIN SIGN in Unicode mode.
        let pf = Prefilter::new("(?i)kelvin", true).unwrap();
        let kelvin = "\u{212a}ELVIN".as_bytes();
        assert!(pf.may_match(kelvin, None));
        assert!(pf.may_match(kelvin, Some(&ByteSet::of(kelvin))));
        assert!(!pf.may_match(b"celsius", None));
    }

    #[test]
    fn byte_test_uses_rare_bytes_in_both_cases() {
        let pf = Prefilter::new("(?i)<script", false).unwrap();
        // `<` is the rarest byte of `<script`
        assert!(!pf.may_match(b"description", Some(&ByteSet::of(b"description"))));
        assert!(pf.may_match(b"<SCRIPT", Some(&ByteSet::of(b"<SCRIPT"))));
        let pf = Prefilter::new("(?i)zip", false).unwrap();
        assert!(pf.may_match(b"ZIP", Some(&ByteSet::of(b"ZIP"))));
        assert!(!pf.may_match(b"pi", Some(&ByteSet::of(b"pi"))));
    }

    /// Random inputs over each pattern's alphabet: whenever the regex
    /// matches, the prefilter must let the value through.
    #[test]
    fn never_rejects_a_match_on_random_inputs() {
        let patterns = [
            "(?i)(?:un|x)ion\\s*sel[e3]ct",
            "a(?:b|c+)d",
            "(?:ab|cd){2}e",
            "(?i)on[a-z]+=",
            "x[0-9]y|zz",
            "(?:^|;)\\s*(?:ls|id)\\b",
        ];
        let tokens = [
            "union", "UNION", "sel", "ect", "sel3ct", " ", "\t", "x", "ab", "cd", "c", "d", "e",
            "on", "ON", "load", "=", "0", "5", "y", "zz", ";", "ls", "id", "ion", "ID",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut matched = 0;
        for p in patterns {
            let re = regex::bytes::Regex::new(p).unwrap();
            for _ in 0..4000 {
                let s: String = (0..next(7)).map(|_| tokens[next(tokens.len())]).collect();
                matched += usize::from(re.is_match(s.as_bytes()));
                skips(p, &s);
            }
        }
        assert!(
            matched > 100,
            "too few matching inputs to mean much: {matched}"
        );
    }
}
