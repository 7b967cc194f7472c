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
//! case-insensitively: that loses precision, never a match. Each node also
//! gets the strings its matches begin and end with, when few: two
//! neighbours in a concatenation then require the end of the one joined to
//! the start of the other (`/.` for 930100's separator before its dots,
//! where each alone only requires `/` or `.`).
//!
//! Before the scan comes a cheaper test: each literal's rarest byte (both
//! ASCII cases) goes into a 256-bit set, and a value whose [`ByteSet`] holds
//! none of them cannot contain any literal. The engine computes a value's
//! byte set once and tests it against every rule's prefilter. When every
//! literal is a single byte, that test is the whole answer; otherwise a
//! second one (each literal's two rarest bytes) comes before the scan,
//! which runs without Aho-Corasick's own prefilter when the literals'
//! rarest bytes are too common in request data for it to pay off.

use aho_corasick::AhoCorasick;
use regex_syntax::hir::{Class, Hir, HirKind};
use std::cell::OnceCell;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};

/// Most strings an exact set may hold before it is treated as factors.
const MAX_EXACT: usize = 64;
/// Most literals a prefilter may hold.
const MAX_FACTORS: usize = 256;
/// Longest literal kept in an exact set.
const MAX_LEN: usize = 32;
/// Largest character class enumerated into literals.
const MAX_CLASS: usize = 16;

type Set = BTreeSet<Vec<u8>>;

/// Each byte's bit in its word (`1 << (b & 63)`), looked up: one load
/// instead of setting a register to one and shifting it. Built at compile
/// time, where an index out of range is a build error, not a panic
/// (`get_mut` is not a const fn yet).
#[allow(clippy::indexing_slicing)]
const BIT: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = 1 << (i & 63);
        i += 1;
    }
    t
};

/// A set of byte values, 256 bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ByteSet([u64; 4]);

impl ByteSet {
    /// Every byte.
    pub(crate) const ALL: ByteSet = ByteSet([u64::MAX; 4]);

    /// Every byte but those in `except` (for constants).
    pub(crate) const fn all_but(mut except: &[u8]) -> ByteSet {
        let [mut a, mut b, mut c, mut d] = [u64::MAX; 4];
        while let [x, rest @ ..] = except {
            let bit = !(1u64 << (*x & 63));
            match *x >> 6 {
                0 => a &= bit,
                1 => b &= bit,
                2 => c &= bit,
                _ => d &= bit,
            }
            except = rest;
        }
        ByteSet([a, b, c, d])
    }

    /// Exactly the bytes in `bytes` (for constants).
    pub(crate) const fn only(bytes: &[u8]) -> ByteSet {
        let ByteSet([a, b, c, d]) = ByteSet::all_but(bytes);
        ByteSet([!a, !b, !c, !d])
    }

    /// The bytes present in `input`.
    pub(crate) fn of(input: &[u8]) -> ByteSet {
        // Four sets, one per byte position modulo 4, joined at the end: a
        // byte's bit does not wait for the previous byte's to be stored
        // (one set is a chain of writes to the same word, since most bytes
        // are letters), which makes this about 1.7 times as fast.
        let mut w = [[0u64; 4]; 4];
        let add = |set: &mut [u64; 4], b: u8| {
            // `b >> 6` is below 4 and `b` below 256: the checks compile away
            if let (Some(x), Some(bit)) =
                (set.get_mut(usize::from(b >> 6)), BIT.get(usize::from(b)))
            {
                *x |= bit;
            }
        };
        let mut chunks = input.chunks_exact(4);
        for c in &mut chunks {
            for (set, &b) in w.iter_mut().zip(c) {
                add(set, b);
            }
        }
        let [mut out, b, c, d] = w;
        for &x in chunks.remainder() {
            add(&mut out, x);
        }
        for (o, ((b, c), d)) in out.iter_mut().zip(b.iter().zip(&c).zip(&d)) {
            *o |= b | c | d;
        }
        ByteSet(out)
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

    /// True when `b` is in the set.
    pub(crate) fn contains(&self, b: u8) -> bool {
        self.0
            .get(usize::from(b >> 6))
            .is_some_and(|w| w & (1u64 << (b & 63)) != 0)
    }

    fn insert(&mut self, b: u8) {
        if let Some(w) = self.0.get_mut(usize::from(b >> 6)) {
            *w |= 1 << (b & 63);
        }
    }

    /// Adds the bytes of `other`.
    pub(crate) fn union_with(&mut self, other: &ByteSet) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }

    /// True when the two sets share a byte.
    #[inline]
    pub(crate) fn intersects(&self, other: &ByteSet) -> bool {
        // Without an early exit: the four ANDs and ORs are one 256-bit AND
        // and test (AVX2), instead of up to four compares and branches; the
        // engine asks this several thousand times a request.
        let ([a, b, c, d], [e, f, g, h]) = (self.0, other.0);
        (a & e) | (b & f) | (c & g) | (d & h) != 0
    }
}

/// A hashed set of a value's adjacent byte pairs (ASCII-lowercased), 1024
/// bits: a value holding a literal (ASCII case ignored) holds each of its
/// pairs, so a literal one of whose pairs is absent is not there. Built
/// once per stored value, when a prefilter first needs it, and shared by
/// every rule that tests the value; it spares most Aho-Corasick scans that
/// would find nothing. Collisions only make it say "present" wrongly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BigramSet([u64; 16]);

/// ASCII lowercase of every byte.
#[allow(clippy::indexing_slicing)]
const LOWER: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = (i as u8).to_ascii_lowercase();
        i += 1;
    }
    t
};

/// The bit of the pair `a`, `b` (both lowercased) in a [`BigramSet`].
#[inline]
fn bigram_bit(a: u8, b: u8) -> u32 {
    ((u32::from(a) << 8) | u32::from(b)).wrapping_mul(0x9E37_79B1) >> 22
}

impl BigramSet {
    /// The pairs of adjacent bytes of `input`, ASCII-lowercased.
    pub(crate) fn of(input: &[u8]) -> BigramSet {
        let mut w = [0u64; 16];
        let lower = |b: u8| LOWER.get(usize::from(b)).copied().unwrap_or(b);
        let Some((&first, rest)) = input.split_first() else {
            return BigramSet(w);
        };
        let mut prev = lower(first);
        let mut add = |b: u8| {
            let b = lower(b);
            let bit = bigram_bit(prev, b);
            // `bit` is below 1024: the checks compile away
            if let (Some(x), Some(m)) =
                (w.get_mut((bit >> 6) as usize), BIT.get((bit & 63) as usize))
            {
                *x |= m;
            }
            prev = b;
        };
        // eight bytes a turn: the loop's own test and step once per eight
        let mut chunks = rest.chunks_exact(8);
        for c in &mut chunks {
            for &b in c {
                add(b);
            }
        }
        for &b in chunks.remainder() {
            add(b);
        }
        BigramSet(w)
    }

    /// True when the set may hold the pair whose bit is `bit`.
    #[inline]
    fn has_bit(&self, bit: u16) -> bool {
        // `& 15`: the index is in range, no check
        self.0
            .get(usize::from((bit >> 6) & 15))
            .is_some_and(|w| w & (1u64 << (bit & 63)) != 0)
    }

    /// True when the set may hold the pair `a`, `b` (ASCII case ignored);
    /// false only when `input` has no such adjacent pair.
    #[cfg(test)]
    fn may_hold(&self, a: u8, b: u8) -> bool {
        self.has_bit(bigram_bit(a.to_ascii_lowercase(), b.to_ascii_lowercase()) as u16)
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

/// The [`rarity`] of digits and of common punctuation: as a literal's
/// rarest byte, too common for Aho-Corasick's own prefilter to pay off
/// ([`Prefilter::from_literals`]).
const COMMON_LOW: u8 = 40;
const COMMON_HIGH: u8 = 50;

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
    /// Every literal is one byte: `rare` holds exactly them (in both
    /// cases), so a value's byte set answers without the scan.
    single_bytes: bool,
    /// The literals (ASCII-lowercased), for a [`LiteralIndex`].
    lits: Box<[Box<[u8]>]>,
    /// The [`LiteralIndex`] this prefilter shares and its place there:
    /// a stored value is scanned once for the literals of every prefilter
    /// of the index, instead of once per prefilter.
    shared: OnceLock<(Arc<LiteralIndex>, u8)>,
}

/// A second byte test after the rarest byte's: a value holding a literal
/// (ASCII case ignored) holds both its rarest and its second rarest byte,
/// in some case.
#[derive(Debug)]
pub(crate) struct BytePairs {
    /// Per rarest byte (lowercase): the second rarest byte of each literal
    /// whose rarest byte it is, in both ASCII cases (every byte for a
    /// literal of one distinct byte), and the [`BigramSet`] bits of the
    /// rarest pairs of adjacent bytes of each such literal (up to
    /// [`PAIRS_PER_LITERAL`], rarest first, the first repeated when there
    /// are fewer; `None` when one of them has no pair, being one byte
    /// long). Empty: the test is off.
    second: Vec<(u8, ByteSet, Option<LiteralPairs>)>,
    /// The rarest bytes, in both ASCII cases.
    rare: ByteSet,
    /// Per byte, in both ASCII cases: its position in `second` plus one
    /// (0: none).
    second_at: Box<[u8; 256]>,
}

impl BytePairs {
    /// The pairs of `lits`; the test is off when a literal is empty or
    /// there are more rarest bytes than the index can hold.
    pub(crate) fn new<'a>(lits: impl IntoIterator<Item = &'a [u8]>) -> BytePairs {
        let off = BytePairs {
            second: Vec::new(),
            rare: ByteSet::default(),
            second_at: Box::new([0; 256]),
        };
        let mut second: Vec<(u8, ByteSet)> = Vec::new();
        let mut grams: Vec<Option<Vec<[u16; PAIRS_PER_LITERAL]>>> = Vec::new();
        for l in lits {
            let gram = literal_pairs(l);
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
            match second.iter().position(|(b, _)| *b == b1) {
                Some(i) => {
                    if let Some((_, s)) = second.get_mut(i) {
                        s.union_with(&set);
                    }
                    if let Some(g) = grams.get_mut(i) {
                        match (g.as_mut(), gram) {
                            (Some(list), Some(bits)) => {
                                if !list.contains(&bits) {
                                    list.push(bits);
                                }
                            }
                            _ => *g = None,
                        }
                    }
                }
                None => {
                    second.push((b1, set));
                    grams.push(gram.map(|bits| vec![bits]));
                }
            }
        }
        let second = second
            .into_iter()
            .zip(grams)
            .map(|((b1, s), g)| (b1, s, g.and_then(LiteralPairs::new)))
            .collect();
        let mut pairs = BytePairs { second, ..off };
        for (i, (b1, ..)) in pairs.second.iter().enumerate() {
            let Ok(at) = u8::try_from(i + 1) else {
                pairs.second.clear();
                return pairs;
            };
            for b in [*b1, b1.to_ascii_uppercase()] {
                if let Some(slot) = pairs.second_at.get_mut(usize::from(b)) {
                    *slot = at;
                }
                pairs.rare.insert(b);
            }
        }
        pairs
    }

    /// False only when `bytes` (a value's) lacks one byte of each pair.
    #[cfg(test)]
    pub(crate) fn may_match(&self, bytes: &ByteSet) -> bool {
        self.may_match_with(bytes, None)
    }

    /// [`BytePairs::may_match`]; with `value` (the value and the cell of
    /// its [`BigramSet`], empty or holding `BigramSet::of(value)`), false
    /// too when the value lacks a pair of adjacent bytes of each literal
    /// whose rarest and second rarest bytes it holds (the set is built
    /// when first needed).
    #[inline]
    pub(crate) fn may_match_with(
        &self,
        bytes: &ByteSet,
        value: Option<(&[u8], &OnceCell<BigramSet>)>,
    ) -> bool {
        if self.second.is_empty() {
            return true;
        }
        // each rarest byte present, in either case (both cases index the
        // same pair), without a lowercased copy of the set
        for (base, (&w, &r)) in (0u32..).step_by(64).zip(bytes.0.iter().zip(&self.rare.0)) {
            let mut w = w & r;
            while w != 0 {
                let b1 = (base + w.trailing_zeros()) as usize;
                w &= w - 1;
                let at = self.second_at.get(b1).copied().unwrap_or(0);
                let i = usize::from(at).wrapping_sub(1);
                match (self.second.get(i), value) {
                    (Some((_, s, _)), _) if !bytes.intersects(s) => {}
                    (Some((_, _, Some(lits))), Some((input, cell))) => {
                        if holds_pairs_of_one(lits, input, cell) {
                            return true;
                        }
                    }
                    _ => return true,
                }
            }
        }
        false
    }
}

/// True when the [`BigramSet`] of `input` (in `cell`, built here when
/// empty) may hold every pair of one of `lits`.
#[inline(never)]
fn holds_pairs_of_one(lits: &LiteralPairs, input: &[u8], cell: &OnceCell<BigramSet>) -> bool {
    let g = cell.get_or_init(|| BigramSet::of(input));
    let mut start = 0;
    for &(first, end) in lits.firsts.iter() {
        let end = end as usize;
        if g.has_bit(first)
            && lits
                .rest
                .get(start..end)
                .is_some_and(|r| r.iter().any(|l| l.iter().all(|&b| g.has_bit(b))))
        {
            return true;
        }
        start = end;
    }
    false
}

/// The [`BigramSet`] bits of the pairs of adjacent bytes of some literals
/// ([`literal_pairs`]), by their rarest pair: each distinct rarest pair is
/// looked up once (literals share them: the groups of CRS's prefilters
/// hold 9,241 literals with pairs but only 3,382 distinct rarest pairs).
#[derive(Debug)]
struct LiteralPairs {
    /// Each distinct rarest pair, and the end of the run of `rest` that
    /// follows it (the run starts where the one before ends).
    firsts: Box<[(u16, u32)]>,
    /// The other pairs of each literal.
    rest: Box<[[u16; PAIRS_PER_LITERAL - 1]]>,
}

impl LiteralPairs {
    /// `None` (the look-up is off) past what a run's end can hold.
    fn new(mut lits: Vec<[u16; PAIRS_PER_LITERAL]>) -> Option<LiteralPairs> {
        lits.sort_unstable();
        lits.dedup();
        let mut firsts: Vec<(u16, u32)> = Vec::new();
        let mut rest = Vec::with_capacity(lits.len());
        for l in lits {
            let [first, others @ ..] = l;
            let end = u32::try_from(rest.len() + 1).ok()?;
            match firsts.last_mut() {
                Some((f, e)) if *f == first => *e = end,
                _ => firsts.push((first, end)),
            }
            rest.push(others);
        }
        Some(LiteralPairs {
            firsts: firsts.into_boxed_slice(),
            rest: rest.into_boxed_slice(),
        })
    }
}

/// Most pairs of adjacent bytes of a literal that [`BytePairs`] looks up.
const PAIRS_PER_LITERAL: usize = 4;

/// The [`BigramSet`] bits of the rarest pairs of adjacent bytes of `lit`
/// (ASCII-lowercased), rarest first, the first repeated when there are
/// fewer than [`PAIRS_PER_LITERAL`]; `None` for a literal shorter than two
/// bytes.
fn literal_pairs(lit: &[u8]) -> Option<[u16; PAIRS_PER_LITERAL]> {
    let mut pairs: Vec<(u16, u16)> = lit
        .windows(2)
        .filter_map(|w| match *w {
            [a, b] => {
                let (a, b) = (a.to_ascii_lowercase(), b.to_ascii_lowercase());
                Some((
                    u16::from(rarity(a)) + u16::from(rarity(b)),
                    bigram_bit(a, b) as u16,
                ))
            }
            _ => None,
        })
        .collect();
    pairs.sort_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)));
    let mut bits: Vec<u16> = Vec::new();
    for (_, bit) in pairs {
        if !bits.contains(&bit) {
            bits.push(bit);
        }
    }
    let first = *bits.first()?;
    let mut out = [first; PAIRS_PER_LITERAL];
    for (o, b) in out.iter_mut().zip(bits) {
        *o = b;
    }
    Some(out)
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

    /// A prefilter for a pattern only the backtracking engine runs: the
    /// literals are worked out from [`relax`]ed pattern, which matches
    /// every span the original matches, so whatever every match of the
    /// relaxed pattern contains, every match of the original contains too.
    pub(crate) fn for_backtracking(pattern: &str) -> Option<Prefilter> {
        Self::new(&relax(pattern)?, true)
    }

    fn from_literals(lits: Set) -> Option<Prefilter> {
        let rare = rare_bytes(lits.iter().map(Vec::as_slice))?;
        let pairs = BytePairs::new(lits.iter().map(Vec::as_slice));
        // Aho-Corasick's own prefilter skips to bytes it expects to be
        // rare and runs the automaton from each. When the rarest byte of
        // every literal is a digit or common punctuation (`/`, `.`, `=`,
        // space: `rarity` 40 to 50; 944260's `class.module.classloader…`)
        // it stops every few bytes of a header or URL and costs more than
        // the automaton alone. A literal of one byte keeps it: each stop
        // is then a match, found at once.
        let rare_enough = lits.iter().any(|l| {
            l.len() == 1
                || l.iter()
                    .map(|&b| rarity(b))
                    .max()
                    .is_some_and(|r| !(COMMON_LOW..=COMMON_HIGH).contains(&r))
        });
        let ac = AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .prefilter(rare_enough)
            .build(&lits)
            .ok()?;
        let single_bytes = lits.iter().all(|l| l.len() == 1);
        Some(Prefilter {
            ac,
            rare,
            pairs,
            single_bytes,
            lits: lits.into_iter().map(Vec::into_boxed_slice).collect(),
            shared: OnceLock::new(),
        })
    }

    /// The rarest byte of each literal (both cases): a value holding none of
    /// them cannot match.
    pub(crate) fn rare(&self) -> &ByteSet {
        &self.rare
    }

    /// False only when the regex cannot match `input`; `bytes`, when given,
    /// must be `ByteSet::of(input)`.
    #[cfg(test)]
    pub(crate) fn may_match(&self, input: &[u8], bytes: Option<&ByteSet>) -> bool {
        self.may_match_grams(input, bytes, None)
    }

    /// [`Prefilter::may_match`]; `facts`, when given (only with `bytes`),
    /// are those of `input` (a stored value), worked out when first
    /// needed: the literals of every prefilter sharing a
    /// [`LiteralIndex`] found in it by one scan, or its pair set.
    pub(crate) fn may_match_grams(
        &self,
        input: &[u8],
        bytes: Option<&ByteSet>,
        facts: Option<&ValueFacts>,
    ) -> bool {
        // a short value without a byte set (TX, MATCHED_VARS, a changed
        // multiMatch stage) gets one here: cheaper than most scans
        let own;
        let bytes = match bytes {
            None if input.len() <= SHORT_VALUE => {
                own = ByteSet::of(input);
                Some(&own)
            }
            b => b,
        };
        if let Some(b) = bytes {
            if !b.intersects(&self.rare) {
                return false;
            }
            // a value holding one of the one-byte literals contains it
            if self.single_bytes {
                return true;
            }
            if let (Some(f), Some((index, at))) = (facts, self.shared()) {
                return f.found_in(index, input).has(at);
            }
            if !self
                .pairs
                .may_match_with(b, facts.map(|f| (input, &f.grams)))
            {
                return false;
            }
        }
        self.ac.is_match(input)
    }

    /// The [`LiteralIndex`] this prefilter shares, and its place there.
    pub(crate) fn shared(&self) -> Option<(&LiteralIndex, u8)> {
        self.shared.get().map(|(index, at)| (&**index, *at))
    }
}

/// Where `n` first occurs in `h` (at 0 when `n` is empty), for the string
/// operators (`@within`, `@contains`) and the comment transformations. A
/// short `h` (an `@within` list, a header value) is searched in place, each
/// window tested on its first and last byte before the whole of it:
/// building `memmem`'s searcher for the needle costs more than that whole
/// search.
pub(crate) fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    const SHORT: usize = 128;
    let (Some(&first), Some(&last)) = (n.first(), n.last()) else {
        return Some(0);
    };
    if h.len() > SHORT {
        return memchr::memmem::find(h, n);
    }
    h.windows(n.len())
        .position(|w| w.first() == Some(&first) && w.last() == Some(&last) && w == n)
}

/// Most prefilters one [`LiteralIndex`] serves (the bits of a [`Found`]),
/// each at a place that is a `u8`.
const MAX_SHARED: usize = 1 << u8::BITS;

/// Which prefilters of a [`LiteralIndex`] have a literal in a value, one
/// bit each: a set of places below [`MAX_SHARED`], held as the 256 bits of
/// a [`ByteSet`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Found(ByteSet);

impl Found {
    /// True when the prefilter at `at` has a literal in the value.
    #[inline]
    pub(crate) fn has(&self, at: u8) -> bool {
        self.0.contains(at)
    }

    fn insert(&mut self, at: u8) {
        self.0.insert(at);
    }

    fn union_with(&mut self, other: &Found) {
        self.0.union_with(&other.0);
    }
}

/// What the prefilters work out about one stored value (key or value),
/// each part when a prefilter first needs it, kept for every other rule
/// that tests the value.
#[derive(Debug, Default, Clone)]
pub(crate) struct ValueFacts {
    /// The value's pairs of adjacent bytes.
    grams: OnceCell<BigramSet>,
    /// The prefilters of the [`LiteralIndex`] that have a literal in it.
    found: OnceCell<Found>,
}

impl ValueFacts {
    /// The cell of the value's pair set ([`BigramSet`]).
    pub(crate) fn grams(&self) -> &OnceCell<BigramSet> {
        &self.grams
    }

    /// The prefilters of `index` that have a literal in `value` (whose
    /// facts these are), found by its first caller.
    #[inline]
    pub(crate) fn found_in(&self, index: &LiteralIndex, value: &[u8]) -> &Found {
        self.found.get_or_init(|| index.scan(value))
    }

    /// Facts whose pair set is built already.
    #[cfg(test)]
    pub(crate) fn with_grams(grams: BigramSet) -> ValueFacts {
        ValueFacts {
            grams: OnceCell::from(grams),
            found: OnceCell::new(),
        }
    }
}

/// The literals of many prefilters (every `@rx` prefilter of a rule set
/// whose literals are not all single bytes, up to `MAX_SHARED`) in
/// one automaton: one pass over a stored value finds which of them have
/// a literal there ([`Found`]), and each rule testing the value reads its
/// bit instead of running its own pair test and scan.
///
/// One Aho-Corasick DFA (the `aho-corasick` crate, ASCII case ignored)
/// over the distinct literals, searched for overlapping matches, so that
/// every literal is found wherever it ends; each literal carries the set
/// of prefilters it belongs to. The answer is the one each prefilter's
/// own scan gives.
#[derive(Debug)]
pub(crate) struct LiteralIndex {
    /// The distinct literals (ASCII-lowercased), as a DFA walked byte by
    /// byte.
    dfa: aho_corasick::dfa::DFA,
    /// Where an unanchored walk starts.
    start: aho_corasick::automaton::StateID,
    /// Per literal (pattern id): the prefilters holding it.
    sets: Box<[Found]>,
}

impl LiteralIndex {
    /// Builds one index over `prefilters` (those whose literals are all
    /// single bytes, or that share one already, are left out, and so are
    /// the ones past what a [`Found`] holds) and hands it to each.
    pub(crate) fn share<'a>(prefilters: impl IntoIterator<Item = &'a Prefilter>) {
        let mut members: Vec<&Prefilter> = Vec::new();
        for p in prefilters {
            if members.len() >= MAX_SHARED {
                break;
            }
            if !p.single_bytes
                && p.shared.get().is_none()
                && !members.iter().any(|m| std::ptr::eq(*m, p))
            {
                members.push(p);
            }
        }
        let lits = (0u8..=u8::MAX)
            .zip(&members)
            .flat_map(|(at, p)| p.lits.iter().map(move |l| (&**l, at)));
        let Some(index) = LiteralIndex::new(lits) else {
            return;
        };
        let index = Arc::new(index);
        for (at, p) in (0u8..=u8::MAX).zip(members) {
            let _ = p.shared.set((Arc::clone(&index), at));
        }
    }

    /// The index of `lits`, each with its prefilter's place; `None` when
    /// there is none or one is empty.
    fn new<'a>(lits: impl IntoIterator<Item = (&'a [u8], u8)>) -> Option<LiteralIndex> {
        let mut place: HashMap<Vec<u8>, usize> = HashMap::new();
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        let mut sets: Vec<Found> = Vec::new();
        for (l, at) in lits {
            if l.is_empty() {
                return None;
            }
            let i = *place.entry(l.to_ascii_lowercase()).or_insert_with_key(|k| {
                patterns.push(k.clone());
                sets.push(Found::default());
                sets.len() - 1
            });
            sets.get_mut(i)?.insert(at);
        }
        if patterns.is_empty() {
            return None;
        }
        let dfa = aho_corasick::dfa::DFA::builder()
            .ascii_case_insensitive(true)
            .prefilter(false)
            .build(&patterns)
            .ok()?;
        let start =
            aho_corasick::automaton::Automaton::start_state(&dfa, aho_corasick::Anchored::No)
                .ok()?;
        Some(LiteralIndex {
            dfa,
            start,
            sets: sets.into_boxed_slice(),
        })
    }

    /// The prefilters holding a literal that `input` contains (ASCII case
    /// ignored).
    #[inline(never)]
    fn scan(&self, input: &[u8]) -> Found {
        use aho_corasick::automaton::Automaton;
        let mut found = Found::default();
        let mut sid = self.start;
        for &b in input {
            sid = self.dfa.next_state(aho_corasick::Anchored::No, sid, b);
            if self.dfa.is_match(sid) {
                for i in 0..self.dfa.match_len(sid) {
                    let p = self.dfa.match_pattern(sid, i);
                    if let Some(f) = self.sets.get(p.as_usize()) {
                        found.union_with(f);
                    }
                }
            }
        }
        found
    }
}

/// The longest value without a byte set that [`Prefilter::may_match_grams`]
/// computes one for before scanning it.
const SHORT_VALUE: usize = 64;

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
    let set = match analyze(hir).req {
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

/// What is known of a node's matches: its requirement, and the strings
/// its matches begin and end with.
struct Info {
    req: Req,
    /// Strings one of which every match begins with (`pre`) or ends with
    /// (`suf`), none empty, each cut to [`EDGE_LEN`] bytes; `None` when a
    /// match may be empty or nothing small bounds them. Two neighbours of
    /// a concatenation give a requirement across their boundary: `/.`
    /// from `(?:/|\\)` and `(?:\.|%2e)` where each alone only gives `/` and
    /// `.`.
    pre: Option<Set>,
    suf: Option<Set>,
    /// Matches only the empty string (an anchor, a word boundary).
    zero_width: bool,
}

/// Longest beginning or end of a match kept in [`Info::pre`] and
/// [`Info::suf`].
const EDGE_LEN: usize = 4;

fn analyze(hir: &Hir) -> Info {
    // a node that matches exactly one of `set`
    let exact = |set: Set| Info {
        pre: cut(&set, true),
        suf: cut(&set, false),
        req: Req::Exact(set),
        zero_width: false,
    };
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => Info {
            req: exact_of([Vec::new()]),
            pre: None,
            suf: None,
            zero_width: true,
        },
        HirKind::Literal(l) => exact([l.0.to_ascii_lowercase()].into_iter().collect()),
        HirKind::Class(c) => match class(c) {
            Some(set) => exact(set),
            None => Info {
                req: Req::Any,
                pre: None,
                suf: None,
                zero_width: false,
            },
        },
        HirKind::Capture(c) => analyze(&c.sub),
        HirKind::Repetition(r) => {
            let sub = analyze(&r.sub);
            if r.min == 0 {
                return Info {
                    req: Req::Any,
                    pre: None,
                    suf: None,
                    zero_width: sub.zero_width,
                };
            }
            if r.min == 1 && r.max == Some(1) {
                return sub;
            }
            let mut best = match as_factors(sub.req) {
                Req::Factors(f) => Some(f),
                _ => None,
            };
            // two copies in a row: the end of one and the start of the next
            if r.min >= 2 {
                if let Some(j) = sub
                    .suf
                    .as_ref()
                    .zip(sub.pre.as_ref())
                    .and_then(|(a, b)| join(a, b))
                {
                    keep_better(&mut best, j);
                }
            }
            Info {
                req: best.map_or(Req::Any, Req::Factors),
                pre: sub.pre,
                suf: sub.suf,
                zero_width: sub.zero_width,
            }
        }
        HirKind::Concat(parts) => concat(&parts.iter().map(analyze).collect::<Vec<_>>()),
        HirKind::Alternation(parts) => alternation(parts.iter().map(analyze).collect()),
    }
}

/// Each string of `set` cut to its first (`front`) or last [`EDGE_LEN`]
/// bytes: `None` when one is empty or there are too many.
fn cut(set: &Set, front: bool) -> Option<Set> {
    if set.len() <= MAX_FACTORS && set.iter().all(|x| (1..=EDGE_LEN).contains(&x.len())) {
        return Some(set.clone());
    }
    let out = ends(set, EDGE_LEN, front);
    (usable(&out) && out.len() <= MAX_FACTORS).then_some(out)
}

/// The first (`front`) or last `k` bytes of each string of `set` (the
/// whole of a shorter one).
fn ends(set: &Set, k: usize, front: bool) -> Set {
    set.iter()
        .map(|x| {
            let n = x.len().min(k);
            let part = if front {
                x.get(..n)
            } else {
                x.get(x.len() - n..)
            };
            part.unwrap_or_default().to_vec()
        })
        .collect()
}

/// Every string of `a` followed by every string of `b`.
fn product(a: &Set, b: &Set) -> Set {
    let mut out = Set::new();
    for x in a {
        for y in b {
            let mut s = x.clone();
            s.extend_from_slice(y);
            out.insert(s);
        }
    }
    out
}

/// What a match of a node ending with a string of `left` followed by a
/// match beginning with one of `right` contains: an end of the one joined
/// to a start of the other, as long as [`MAX_FACTORS`] allows (both cut
/// shorter until it does).
fn join(left: &Set, right: &Set) -> Option<Set> {
    // the ends of each length 1 to EDGE_LEN (index k - 1)
    let tails: Vec<Set> = (1..=EDGE_LEN).map(|k| ends(left, k, false)).collect();
    let heads: Vec<Set> = (1..=EDGE_LEN).map(|k| ends(right, k, true)).collect();
    for total in (2..=2 * EDGE_LEN).rev() {
        for kl in (1..=EDGE_LEN.min(total - 1)).rev() {
            let (Some(a), Some(b)) = (tails.get(kl - 1), heads.get(total - kl - 1)) else {
                continue;
            };
            if a.len().saturating_mul(b.len()) > MAX_FACTORS {
                continue;
            }
            let out = product(a, b);
            if usable(&out) {
                return Some(out);
            }
        }
    }
    None
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
    let longest = |s: &Set| s.iter().map(Vec::len).max().unwrap_or(0);
    if a.len().saturating_mul(b.len()) > MAX_EXACT || longest(a) + longest(b) > MAX_LEN {
        return None;
    }
    Some(product(a, b))
}

/// How selective a factor set is: longer shortest literal first, then
/// fewer literals.
fn score(s: &Set) -> (usize, std::cmp::Reverse<usize>) {
    let shortest = s.iter().map(Vec::len).min().unwrap_or(0);
    (shortest.min(4), std::cmp::Reverse(s.len()))
}

/// Keeps `s` in `best` when it is usable and more selective ([`score`]).
fn keep_better(best: &mut Option<Set>, s: Set) {
    if usable(&s) && best.as_ref().is_none_or(|b| score(&s) > score(b)) {
        *best = Some(s);
    }
}

fn concat(kids: &[Info]) -> Info {
    let mut best: Option<Set> = None;
    let mut consider = |s: Set| keep_better(&mut best, s);
    let empty_run = || -> Set { [Vec::new()].into_iter().collect() };
    // Consecutive exact parts multiply into one exact run; any match of the
    // concatenation contains a match of each run and of each part, and the
    // end of each part's match joined to the start of the next's (parts
    // that match only the empty string lie between them without a gap).
    let mut run = empty_run();
    let mut all_exact = true;
    let mut last_end: Option<&Set> = None;
    // whether the last part (not of zero width) went into the run
    let mut last_in_run = false;
    for k in kids {
        let in_run = match &k.req {
            Req::Exact(s) => match cross(&run, s) {
                Some(joined) => {
                    run = joined;
                    true
                }
                None => {
                    all_exact = false;
                    consider(std::mem::replace(&mut run, s.clone()));
                    false
                }
            },
            Req::Factors(f) => {
                all_exact = false;
                consider(std::mem::replace(&mut run, empty_run()));
                consider(f.clone());
                false
            }
            Req::Any => {
                all_exact = false;
                consider(std::mem::replace(&mut run, empty_run()));
                false
            }
        };
        if !k.zero_width {
            // two parts multiplied into the run already hold their join
            if !(in_run && last_in_run) {
                if let Some(j) = last_end.zip(k.pre.as_ref()).and_then(|(a, b)| join(a, b)) {
                    consider(j);
                }
            }
            last_end = k.suf.as_ref();
            last_in_run = in_run;
        }
    }
    let zero_width = kids.iter().all(|k| k.zero_width);
    let pre = concat_edge(kids.iter(), true);
    let suf = concat_edge(kids.iter().rev(), false);
    if all_exact {
        return Info {
            req: Req::Exact(run),
            pre,
            suf,
            zero_width,
        };
    }
    consider(run);
    Info {
        req: best.map_or(Req::Any, Req::Factors),
        pre,
        suf,
        zero_width,
    }
}

/// The strings a concatenation's matches begin with (`front`, `kids` in
/// order) or end with (`kids` from the last): its leading exact parts
/// multiplied out, joined to the start of the first part that is not
/// exact.
fn concat_edge<'a>(kids: impl Iterator<Item = &'a Info>, front: bool) -> Option<Set> {
    let mut acc: Set = [Vec::new()].into_iter().collect();
    for k in kids {
        if k.zero_width {
            continue;
        }
        if let Req::Exact(s) = &k.req {
            if usable(s) {
                let joined = if front {
                    cross(&acc, s)
                } else {
                    cross(s, &acc)
                };
                if let Some(j) = joined {
                    acc = j;
                    continue;
                }
            }
        }
        let edge = if front { &k.pre } else { &k.suf };
        if let Some(e) = edge {
            if acc.len().saturating_mul(e.len()) <= MAX_FACTORS {
                acc = if front {
                    product(&acc, e)
                } else {
                    product(e, &acc)
                };
            }
        }
        break;
    }
    cut(&acc, front)
}

fn alternation(mut kids: Vec<Info>) -> Info {
    // a match begins (ends) with what one of the branches begins (ends) with
    let mut edge = |front: bool| -> Option<Set> {
        let mut all = Set::new();
        for k in &mut kids {
            let e = if front { k.pre.take() } else { k.suf.take() }?;
            if all.is_empty() {
                all = e;
            } else {
                all.extend(e);
            }
            if all.len() > MAX_FACTORS {
                return None;
            }
        }
        Some(all)
    };
    let (pre, suf) = (edge(true), edge(false));
    let zero_width = kids.iter().all(|k| k.zero_width);
    Info {
        req: alternation_req(kids.into_iter().map(|k| k.req).collect()),
        pre,
        suf,
        zero_width,
    }
}

fn alternation_req(reqs: Vec<Req>) -> Req {
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

/// Rewrites a pattern that needs a backtracking engine into one
/// `regex-syntax` parses and that matches at least the same spans:
/// lookarounds (which consume nothing) are dropped, backreferences become
/// `(?s:.*)`, atomic groups plain groups and possessive quantifiers greedy
/// ones. Every change only removes a constraint. `None` for anything else it
/// does not know (conditionals, `\K`, …): no prefilter then.
pub(crate) fn relax(pattern: &str) -> Option<String> {
    let b = pattern.as_bytes();
    let mut out = String::with_capacity(pattern.len());
    let mut i = 0;
    // Whether the last thing copied was a quantifier (which a `+` then
    // makes possessive and a `?` lazy).
    let mut last_was_quantifier = false;
    while let Some(&c) = b.get(i) {
        match c {
            b'\\' => {
                let next = *b.get(i + 1)?;
                match next {
                    b'1'..=b'9' => {
                        i += 2;
                        while b.get(i).is_some_and(u8::is_ascii_digit) {
                            i += 1;
                        }
                        out.push_str("(?s:.*)");
                    }
                    b'k' | b'g' => {
                        // \k<name>, \k{name}, \g{n}, \gN: a backreference.
                        let close = match b.get(i + 2) {
                            Some(b'<') => b'>',
                            Some(b'{') => b'}',
                            Some(d) if d.is_ascii_digit() => {
                                i += 2;
                                while b.get(i).is_some_and(u8::is_ascii_digit) {
                                    i += 1;
                                }
                                out.push_str("(?s:.*)");
                                last_was_quantifier = false;
                                continue;
                            }
                            _ => return None,
                        };
                        let end = i + 3 + b.get(i + 3..)?.iter().position(|&x| x == close)?;
                        i = end + 1;
                        out.push_str("(?s:.*)");
                    }
                    b'K' | b'G' | b'X' | b'R' => return None,
                    _ => {
                        let n = utf8_len(next);
                        out.push_str(pattern.get(i..i + 1 + n)?);
                        i += 1 + n;
                    }
                }
                last_was_quantifier = false;
            }
            b'[' => {
                let end = class_end(b, i)?;
                out.push_str(pattern.get(i..end)?);
                i = end;
                last_was_quantifier = false;
            }
            b'(' => {
                let rest = b.get(i + 1..)?;
                if rest.starts_with(b"?=")
                    || rest.starts_with(b"?!")
                    || rest.starts_with(b"?<=")
                    || rest.starts_with(b"?<!")
                {
                    i = group_end(b, i)?;
                    // A quantifier on a lookaround quantifies nothing now.
                    if matches!(b.get(i), Some(b'*' | b'+' | b'?' | b'{')) {
                        return None;
                    }
                    continue;
                }
                if rest.starts_with(b"?>") {
                    out.push_str("(?:");
                    i += 3;
                } else if rest.starts_with(b"?(") || rest.starts_with(b"?|") {
                    return None;
                } else {
                    out.push('(');
                    i += 1;
                }
                last_was_quantifier = false;
            }
            b'*' | b'+' | b'?' => {
                if last_was_quantifier && c == b'+' {
                    // Possessive: the greedy form matches at least as much.
                    i += 1;
                    last_was_quantifier = false;
                    continue;
                }
                out.push(char::from(c));
                i += 1;
                // After a quantifier, `?` makes it lazy; anything else
                // quantifies the atom before.
                last_was_quantifier = !last_was_quantifier;
            }
            b'{' => {
                let end = i + b.get(i..)?.iter().position(|&x| x == b'}')? + 1;
                out.push_str(pattern.get(i..end)?);
                i = end;
                last_was_quantifier = true;
            }
            _ => {
                let n = utf8_len(c);
                out.push_str(pattern.get(i..i + n)?);
                i += n;
                last_was_quantifier = false;
            }
        }
    }
    Some(out)
}

/// Length of the UTF-8 sequence a lead byte starts (1 for anything else).
fn utf8_len(lead: u8) -> usize {
    match lead {
        0xf0..=0xf7 => 4,
        0xe0..=0xef => 3,
        0xc0..=0xdf => 2,
        _ => 1,
    }
}

/// Index just past the character class starting at `start` (a `[`).
fn class_end(b: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    if b.get(i) == Some(&b'^') {
        i += 1;
    }
    // A `]` first in the class is a literal.
    if b.get(i) == Some(&b']') {
        i += 1;
    }
    while let Some(&c) = b.get(i) {
        match c {
            b'\\' => i += 2,
            b'[' if b.get(i + 1) == Some(&b':') => {
                // A POSIX class such as [:alpha:] inside the class.
                let close = b.get(i + 2..)?.windows(2).position(|w| w == b":]")?;
                i += 2 + close + 2;
            }
            b'[' => i = class_end(b, i)?,
            b']' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// Index just past the group starting at `start` (a `(`).
fn group_end(b: &[u8], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = start;
    while let Some(&c) = b.get(i) {
        match c {
            b'\\' => i += 2,
            b'[' => i = class_end(b, i)?,
            b'(' => {
                depth += 1;
                i += 1;
            }
            b')' => {
                depth = depth.checked_sub(1)?;
                i += 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A seeded xorshift draw below `n`, for random inputs that every run
    /// repeats.
    fn xorshift(mut seed: u64) -> impl FnMut(usize) -> usize {
        move |n| (next(&mut seed) % n as u64) as usize
    }

    /// The next value of a xorshift64 sequence: deterministic test data
    /// (the transformations' tests draw from it too).
    pub(crate) fn next(x: &mut u64) -> u64 {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }

    /// Fewer than `max` of `pieces` glued together, chosen by the next
    /// value of the sequence (piece `k` by its bits from `8k + shift`).
    fn glued(x: &mut u64, pieces: &[&[u8]], max: u64, shift: u64) -> Vec<u8> {
        let x = next(x);
        let mut v = Vec::new();
        for k in 0..(x % max) {
            v.extend_from_slice(pieces[((x >> (8 * k + shift)) % pieces.len() as u64) as usize]);
        }
        v
    }

    #[test]
    fn relax_drops_what_only_backtracking_engines_can_do() {
        let r = |p: &str| relax(p);
        assert_eq!(r(r"cmd(?=\.exe)x").as_deref(), Some("cmdx"));
        assert_eq!(r(r"(?<!\w)on(?!load)").as_deref(), Some("on"));
        assert_eq!(r(r"(['\x22])or\1").as_deref(), Some(r"(['\x22])or(?s:.*)"));
        assert_eq!(r(r"(?<q>a)\k<q>").as_deref(), Some("(?<q>a)(?s:.*)"));
        assert_eq!(r(r"(?>ab+)c").as_deref(), Some("(?:ab+)c"));
        assert_eq!(r(r"a++b*+c?+d{2}+").as_deref(), Some("a+b*c?d{2}"));
        assert_eq!(r(r"a+?b??").as_deref(), Some("a+?b??"));
        // Inside a class nothing is a group, a lookaround or a reference.
        assert_eq!(r(r"[(?=\1]x").as_deref(), Some(r"[(?=\1]x"));
        assert_eq!(r(r"[]a(]b").as_deref(), Some(r"[]a(]b"));
        assert_eq!(r(r"(?(1)a|b)"), None);
        assert_eq!(r(r"a\Kb"), None);
        assert_eq!(r(r"(?=a)*b"), None);
        assert_eq!(r(r"(unclosed"), Some("(unclosed".into()));
        assert_eq!(r(r"(?=unclosed"), None);
    }

    /// Soundness on patterns in the shapes CRS gives the backtracking engine:
    /// whenever the prefilter says a value cannot match, the real regex does
    /// not match it.
    #[test]
    fn backtracking_prefilters_never_hide_a_match() {
        let patterns = [
            r"(?i)\b(?:select|union)\b(?!\s*=)",
            r#"(?i)(['"])\s*or\s*\1\s*="#,
            r"(?i)(?<![a-z])cmd(?:\.exe)?(?=\s|;)",
            r"(?>a+)b",
            r"(?i)<script[^>]*>(?!\s*</script)",
            r"(?i)(?:on(?:load|error))\s*=(?=.{0,20}alert)",
        ];
        let pieces: [&[u8]; 18] = [
            b"select",
            b"UNION",
            b" ",
            b"=",
            b"'",
            b"\"",
            b"or",
            b"cmd",
            b".exe",
            b";",
            b"a",
            b"b",
            b"<script>",
            b"</script",
            b"onload",
            b"OnError",
            b"alert",
            b"\xff",
        ];
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut with_prefilter = 0;
        for p in patterns {
            let re = fancy_regex::Regex::new(&format!("(?s){p}")).unwrap();
            let Some(pf) = Prefilter::for_backtracking(p) else {
                continue;
            };
            with_prefilter += 1;
            for _ in 0..1500 {
                let input = glued(&mut x, &pieces, 7, 0);
                let text = String::from_utf8_lossy(&input);
                if !pf.may_match(&input, None) {
                    assert!(
                        !re.is_match(&text).unwrap(),
                        "prefilter of {p} hid a match in {text:?}"
                    );
                }
            }
        }
        assert_eq!(with_prefilter, patterns.len());
    }

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
        // with the value's pair set, empty (built by the test) or built
        for facts in [
            ValueFacts::default(),
            ValueFacts::with_grams(BigramSet::of(input.as_bytes())),
        ] {
            let skip_by_pairs = !pf.may_match_grams(input.as_bytes(), Some(&bytes), Some(&facts));
            assert!(
                !(skip_by_pairs && re.is_match(input.as_bytes())),
                "pair test of {pattern:?} skipped matching input {input:?}"
            );
            assert!(
                skip_by_pairs || !skip_by_bytes,
                "the pair test never adds a match"
            );
        }
        // through a literal index shared with other prefilters: the answer
        // of the prefilter's own scan
        if let Some(shared) = shared_prefilter(pattern) {
            let (index, at) = shared.shared().expect("shared");
            let found = ValueFacts::default();
            let by_index = !found.found_in(index, input.as_bytes()).has(at);
            assert_eq!(
                by_index,
                !pf.ac.is_match(input.as_bytes()),
                "index and scan of {pattern:?} differ on {input:?}"
            );
            let facts = ValueFacts::default();
            assert_eq!(
                !shared.may_match_grams(input.as_bytes(), Some(&bytes), Some(&facts)),
                skip_by_bytes || by_index,
                "{pattern:?} on {input:?}"
            );
        }
        assert!(
            !(skip && re.is_match(input.as_bytes())),
            "prefilter of {pattern:?} skipped matching input {input:?}"
        );
        skip
    }

    /// The prefilter of `pattern`, sharing a [`LiteralIndex`] with the
    /// prefilters of other patterns (whose literals overlap its own);
    /// `None` when it has none or its literals are all single bytes.
    fn shared_prefilter(pattern: &str) -> Option<Prefilter> {
        let others: Vec<Prefilter> = [
            "(?i)union\\s+select",
            "<script|javascript:",
            "(?:/etc/passwd|\\.\\./)",
            "x[0-9]y|zz|on(?:load|error)=",
            "sel|ion|ab",
        ]
        .iter()
        .filter_map(|p| Prefilter::new(p, false))
        .collect();
        let pf = Prefilter::new(pattern, false)?;
        if pf.single_bytes {
            return None;
        }
        let (first, rest) = others.split_at(2);
        LiteralIndex::share(first.iter().chain([&pf]).chain(rest));
        Some(pf)
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
    fn find_in_place_agrees_with_memmem() {
        // short texts are searched in place, long ones by memmem: both
        // must give the first occurrence, on texts of few distinct bytes
        // (so that needles often occur, partly or wholly)
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut draw = |n: u64| next(&mut seed) % n;
        for _ in 0..20_000 {
            let h: Vec<u8> = (0..draw(200)).map(|_| b"/ab-"[draw(4) as usize]).collect();
            let n: Vec<u8> = (0..draw(8)).map(|_| b"/ab-"[draw(4) as usize]).collect();
            let want = if n.is_empty() {
                Some(0)
            } else {
                memchr::memmem::find(&h, &n)
            };
            assert_eq!(find(&h, &n), want, "{h:?} {n:?}");
        }
        assert_eq!(find(b"/proxy/ /if/", b"/if/"), Some(8));
        assert_eq!(find(b"/if/", b"/proxy/ /if/"), None);
    }

    #[test]
    fn neighbours_join_across_their_boundary() {
        // a separator, then dots: each alone only requires one byte
        assert_eq!(
            lits(r"(?:/|\\)(?:\.|%2e)+"),
            Some(vec![
                "/%2e".into(),
                "/.".into(),
                "\\%2e".into(),
                "\\.".into()
            ])
        );
        // an anchor or word boundary between them is no gap
        assert_eq!(
            lits(r"[ab]\b[cd]"),
            Some(vec!["ac".into(), "ad".into(), "bc".into(), "bd".into()])
        );
        // two copies of a repeated part: the end of one, the start of the next
        assert_eq!(
            lits(r"(?:x|\.)(?:y|\.)*(?:\(|\)){2,}"),
            Some(vec!["((".into(), "()".into(), ")(".into(), "))".into()])
        );
        // a part that may be empty breaks the join
        assert_eq!(lits(r"[ab]c?[de]"), Some(vec!["a".into(), "b".into()]));
    }

    /// Strings drawn from the pattern's own syntax tree (with noise around
    /// them): whenever the regex matches one, its prefilter lets it through,
    /// with and without the value's byte set.
    #[test]
    fn drawn_matches_are_never_skipped() {
        fn draw(hir: &Hir, x: &mut u64, out: &mut Vec<u8>) {
            match hir.kind() {
                HirKind::Empty | HirKind::Look(_) => {}
                HirKind::Literal(l) => out.extend_from_slice(&l.0),
                HirKind::Class(Class::Bytes(b)) => {
                    let r = b.ranges()[(next(x) % b.ranges().len() as u64) as usize];
                    let span = u64::from(r.end() - r.start()) + 1;
                    out.push(r.start() + (next(x) % span) as u8);
                }
                HirKind::Class(Class::Unicode(u)) => {
                    let r = u.ranges()[(next(x) % u.ranges().len() as u64) as usize];
                    let span = u64::from(u32::from(r.end()) - u32::from(r.start())) + 1;
                    let c = char::from_u32(u32::from(r.start()) + (next(x) % span) as u32)
                        .unwrap_or(r.start());
                    out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                }
                HirKind::Capture(c) => draw(&c.sub, x, out),
                HirKind::Repetition(r) => {
                    let most = r.max.unwrap_or(r.min + 3).min(r.min + 3);
                    for _ in 0..r.min + (next(x) % u64::from(most - r.min + 1)) as u32 {
                        draw(&r.sub, x, out);
                    }
                }
                HirKind::Concat(parts) => parts.iter().for_each(|p| draw(p, x, out)),
                HirKind::Alternation(parts) => {
                    draw(&parts[(next(x) % parts.len() as u64) as usize], x, out)
                }
            }
        }
        // shapes from CRS (930100, 932170, 941170) and some of our own
        let patterns = [
            r"(?i)(?:\x5c|%(?:c(?:0%(?:[2aq]f|5c|9v)|1%(?:[19p]c|8s|af))|2(?:5(?:c(?:0%25af|1%259c)|2f|5c)|%46|f)|%32(?:%66|%46)|u(?:221[56]|002f)|1u|5c)|0x(?:2f|5c)|/)(?:%(?:2(?:(?:5(?:c0%25a|2))?e|%45)|u(?:(?:002|ff0)e|2024)|c0%ae|%2e|1u|e)|\.){2,3}(?:\x5c|%(?:2f|5c)|0x(?:2f|5c)|/)",
            r"^\(\s*\)\s+\{",
            r#"(?i)(?:\W|^)(?:javascript:(?:[\s\S]+[=\x5c\(\[\.<]|[\s\S]*?(?:\bname\b|\x5c[ux]\d))|data:(?:(?:[a-z]\w+/\w[\w+-]+\w)?[;,]|[\s\S]*?;[\s\S]*?\b(?:base64|charset=)|[\s\S]*?,[\s\S]*?<[\s\S]*?\w[\s\S]*?>))|@\W*?i\W*?m\W*?p\W*?o\W*?r\W*?t\W*?(?:/\*[\s\S]*?)?(?:[\\"']|\W*?u\W*?r\W*?l[\s\S]*?\()|\W*?-\W*?m\W*?o\W*?z\W*?-\W*?b\W*?i\W*?n\W*?d\W*?i\W*?n\W*?g[\s\S]*?:[\s\S]*?\W*?u\W*?r\W*?l[\s\S]*?\("#,
            r"(?i)\b(?:s(?:elect|leep)|union)\b\s*(?:\(|all|distinct)",
            r"(?:[ab]|cd)\b(?:e|fg)+(?:\.|%2e){2,}[/\\]",
            r"(?i)on(?:load|error|mouse(?:over|out))\s*=",
            r"x(?:ab|cd)*y(?:z|\d)",
            r"(?:\$|<|>)\(|\$\{",
            r"(x+yz)(w|v)",
            r"(k|l)(mn(o|p)+)",
        ];
        let noise: [&[u8]; 8] = [b"", b"a", b" ", b"/", b"%", b".", b"Z", b"\xff"];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut matched = 0;
        for p in patterns {
            let hir = regex_syntax::ParserBuilder::new()
                .unicode(false)
                .utf8(false)
                .dot_matches_new_line(true)
                .build()
                .parse(p)
                .unwrap();
            let re = regex::bytes::RegexBuilder::new(p)
                .unicode(false)
                .dot_matches_new_line(true)
                .build()
                .unwrap();
            let pf = Prefilter::new(p, false).unwrap_or_else(|| panic!("no prefilter for {p}"));
            for _ in 0..3000 {
                let mut v = glued(&mut x, &noise, 3, 0);
                draw(&hir, &mut x, &mut v);
                v.extend(glued(&mut x, &noise, 3, 8));
                if re.is_match(&v) {
                    matched += 1;
                    let bytes = ByteSet::of(&v);
                    assert!(pf.may_match(&v, None), "{p} skipped {v:?}");
                    assert!(pf.may_match(&v, Some(&bytes)), "{p} skipped {v:?}");
                }
            }
        }
        assert!(matched > 10_000, "too few drawn strings matched: {matched}");
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
            // literals of one byte: the byte test alone answers
            (r"x?\(", "f(1)"),
            ("(?i)a|b", "XBX"),
            (r"[;|]\s*id", "a;id"),
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
            (r"\(|\)", "no brackets here"),
        ];
        for (p, input) in cases {
            assert!(skips(p, input), "{p:?} on {input:?}");
        }
    }

    #[test]
    fn byte_sets_hold_every_byte_at_every_length() {
        let all: Vec<u8> = (0..=255).rev().collect();
        for len in 0..=all.len() {
            let Some(input) = all.get(..len) else {
                continue;
            };
            let set = ByteSet::of(input);
            for b in 0..=255u8 {
                assert_eq!(set.contains(b), input.contains(&b), "{len} {b}");
            }
        }
    }

    /// The pair set never says "absent" for a pair the value holds, in
    /// either ASCII case, at any length.
    #[test]
    fn bigram_sets_hold_every_pair_at_every_length() {
        let mut x: u64 = 0x0123_4567_89ab_cdef;
        let mut input = Vec::new();
        for len in 0..=300usize {
            let x = next(&mut x);
            // letters (both cases), digits, punctuation and high bytes
            input.push(match x % 4 {
                0 => b'a' + (x >> 8) as u8 % 26,
                1 => b'A' + (x >> 8) as u8 % 26,
                2 => (x >> 8) as u8,
                _ => {
                    let p = b"<>'\" /%=.;0123456789";
                    p[(x >> 8) as usize % p.len()]
                }
            });
            let value = &input[..len];
            let set = BigramSet::of(value);
            assert_eq!(set, BigramSet::of(&value.to_ascii_uppercase()), "{len}");
            assert_eq!(set, BigramSet::of(&value.to_ascii_lowercase()), "{len}");
            for w in value.windows(2) {
                let (a, b) = (w[0], w[1]);
                for (a, b) in [
                    (a, b),
                    (a.to_ascii_uppercase(), b.to_ascii_lowercase()),
                    (a.to_ascii_lowercase(), b.to_ascii_uppercase()),
                ] {
                    assert!(set.may_hold(a, b), "{len}: {a:#x} {b:#x}");
                }
            }
        }
        assert_eq!(BigramSet::of(b""), BigramSet::of(b"x"));
        // a set of a few pairs does not hold every pair
        let few = BigramSet::of(b"select");
        assert!(few.may_hold(b'L', b'e'));
        assert!(!few.may_hold(b'<', b's') || !few.may_hold(b'u', b'n'));
    }

    /// With the value's pair set the pair test still lets through every
    /// value that holds a literal (ASCII case ignored), and turns away
    /// values that hold a literal's bytes but not its pairs.
    #[test]
    fn byte_pairs_with_pair_sets_never_hide_a_literal() {
        let lits: [&[u8]; 7] = [
            b"<script",
            b"javascript:",
            b"zz",
            b"union",
            b"/etc/passwd",
            b"\\xff",
            b"x",
        ];
        let pieces: [&[u8]; 14] = [
            b"<", b"SCRIPT", b"java", b"Script:", b"z", b"Z", b"un", b"ION", b"/etc", b"/PassWD",
            b"\\", b"xFF", b" ", b"q",
        ];
        let pairs = BytePairs::new(lits);
        let without_x = BytePairs::new(lits.iter().copied().filter(|l| l.len() > 1));
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut turned_away = 0;
        for _ in 0..20_000 {
            let v = glued(&mut x, &pieces, 6, 3);
            let lower = v.to_ascii_lowercase();
            let holds = |ls: &[&[u8]]| {
                ls.iter()
                    .any(|l| lower.windows(l.len()).any(|w| w == l.to_ascii_lowercase()))
            };
            let bytes = ByteSet::of(&v);
            for (p, ls) in [(&pairs, &lits[..]), (&without_x, &lits[..6])] {
                let cell = OnceCell::new();
                let may = p.may_match_with(&bytes, Some((&v, &cell)));
                if holds(ls) {
                    assert!(may, "{:?}", String::from_utf8_lossy(&v));
                }
                // never more than without the pair set
                assert!(!may || p.may_match(&bytes));
                turned_away += usize::from(p.may_match(&bytes) && !may);
            }
        }
        assert!(turned_away > 100, "{turned_away}");
        // literals sharing their rarest byte and their rarest pair
        let shared: [&[u8]; 6] = [b"zip", b"zipx", b"unzip", b"zap", b"jazz", b"zi"];
        let pieces: [&[u8]; 9] = [b"z", b"I", b"p", b"x", b"un", b"A", b"J", b"zz", b"-"];
        let shared_pairs = BytePairs::new(shared);
        let mut turned_away = 0;
        for _ in 0..20_000 {
            let v = glued(&mut x, &pieces, 7, 3);
            let lower = v.to_ascii_lowercase();
            let holds = shared
                .iter()
                .any(|l| lower.windows(l.len()).any(|w| w == *l));
            let bytes = ByteSet::of(&v);
            let may = shared_pairs.may_match_with(&bytes, Some((&v, &OnceCell::new())));
            assert!(may || !holds, "{:?}", String::from_utf8_lossy(&v));
            assert!(!may || shared_pairs.may_match(&bytes));
            turned_away += usize::from(shared_pairs.may_match(&bytes) && !may);
        }
        assert!(turned_away > 100, "{turned_away}");
        let cell = OnceCell::new();
        let v = b"<a> scrip t";
        assert!(pairs.may_match(&ByteSet::of(v)));
        assert!(!pairs.may_match_with(&ByteSet::of(v), Some((v, &cell))));
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
        // a rarest byte that is a letter is found in either case
        let letters = BytePairs::new([&b"jq"[..]]);
        for v in [&b"JQ"[..], b"jQ", b"Jq", b"xx jq"] {
            assert!(letters.may_match(&ByteSet::of(v)), "{v:?}");
        }
        assert!(!letters.may_match(&ByteSet::of(b"Q and no other")));
        assert!(!letters.may_match(&ByteSet::of(b"J alone")));
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
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        let mut matched = 0;
        for p in patterns {
            let re = regex::bytes::Regex::new(p).unwrap();
            for _ in 0..1500 {
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

    /// One scan of the shared index answers for every prefilter as its own
    /// scan does: literals overlapping and nested, in either ASCII case,
    /// among other bytes (non-ASCII ones too).
    #[test]
    fn literal_index_agrees_with_each_prefilters_scan() {
        let patterns = [
            ("(?i)union\\s+select", false),
            ("<script|javascript:", false),
            ("(?:/etc/passwd|\\.\\./)", false),
            ("x[0-9]y|zz|on(?:load|error)=", false),
            ("sel|ion|ab", false),
            ("ab|abc|bc|c[d-f]", false),
            ("[<>]", false),
            ("(?i)caf\u{e9}|na\u{ef}ve", true),
        ];
        let prefilters: Vec<Prefilter> = patterns
            .iter()
            .map(|(p, u)| Prefilter::new(p, *u).unwrap())
            .collect();
        LiteralIndex::share(prefilters.iter());
        let shared = prefilters.iter().filter(|p| p.shared().is_some()).count();
        assert_eq!(shared, prefilters.len() - 1, "all but the single bytes");
        let tokens = [
            "union", "UNION", "ion", "uni", "sel", "select", "SeLeCt", "<", "script", "<ScRiPt",
            "java", "script:", "/etc/", "passwd", "..", "/", "x", "1", "y", "zz", "z", "on",
            "load", "=", "ab", "C", "d", "caf", "\u{e9}", "\u{c9}", "na", "\u{ef}ve", " ",
        ];
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        let (mut found, mut missing) = (0, 0);
        for _ in 0..5000 {
            let s: String = (0..next(9)).map(|_| tokens[next(tokens.len())]).collect();
            let facts = ValueFacts::default();
            for p in &prefilters {
                let Some((index, at)) = p.shared() else {
                    assert!(p.single_bytes);
                    continue;
                };
                let by_index = facts.found_in(index, s.as_bytes()).has(at);
                assert_eq!(by_index, p.ac.is_match(s.as_bytes()), "{s:?}");
                found += usize::from(by_index);
                missing += usize::from(!by_index);
            }
        }
        assert!(found > 1000 && missing > 1000, "{found} {missing}");
    }

    /// An index serves at most `MAX_SHARED` prefilters, each once;
    /// the others scan on their own, as before.
    #[test]
    fn literal_index_places() {
        let prefilters: Vec<Prefilter> = (0..MAX_SHARED + 20)
            .map(|i| Prefilter::new(&format!("lit{i}x"), false).unwrap())
            .collect();
        LiteralIndex::share(prefilters.iter().chain(prefilters.first()));
        for (i, p) in prefilters.iter().enumerate() {
            match p.shared() {
                Some((index, at)) => {
                    assert_eq!(usize::from(at), i);
                    let facts = ValueFacts::default();
                    let hit = format!("a LIT{i}X b");
                    assert!(facts.found_in(index, hit.as_bytes()).has(at));
                    let miss = format!("a lit{i}y b");
                    assert!(!ValueFacts::default()
                        .found_in(index, miss.as_bytes())
                        .has(at));
                }
                None => assert!(i >= MAX_SHARED, "{i}"),
            }
        }
        // shared once: a second index leaves them where they are
        LiteralIndex::share(prefilters.iter().rev());
        assert_eq!(
            prefilters.first().and_then(|p| p.shared()).map(|s| s.1),
            Some(0)
        );
        assert!(prefilters.last().and_then(|p| p.shared()).is_some());
        assert!(LiteralIndex::new(std::iter::empty()).is_none());
        assert!(LiteralIndex::new([(&b""[..], 0)]).is_none());
    }

    /// A value handed over without a byte set gets one when it is short
    /// (up to [`SHORT_VALUE`] bytes): the answer is then the one with its
    /// byte set, never a rejected match, on either side of the limit.
    #[test]
    fn short_values_without_a_byte_set() {
        let cases = [
            (
                "(?i)union\\s+select",
                "1 UNION  SELECT x",
                "red leather boots",
            ),
            (
                "(?:^|[^a-z])on(?:load|error)=",
                "<img onerror=x>",
                "page=2&sort=asc",
            ),
            (r"(?:\.\./)+etc", "../../etc/passwd", "/static/app.js"),
            ("a(?:b|c+)d", "xxacccdxx", "abcabcabc"),
            (r"x?\(", "f(1)", "f 1"),
        ];
        let mut rejected = 0;
        for (p, hit, miss) in cases {
            let re = regex::bytes::Regex::new(p).unwrap();
            let pf = Prefilter::new(p, false).unwrap();
            for core in [hit, miss] {
                for len in 0..=SHORT_VALUE + 8 {
                    // the value padded with `-` before it to `len` bytes
                    let pad = len.saturating_sub(core.len());
                    let input = format!("{}{core}", "-".repeat(pad));
                    let v = input.as_bytes();
                    let may = pf.may_match(v, None);
                    if re.is_match(v) {
                        assert!(may, "{p:?} rejected matching {input:?}");
                    }
                    if v.len() <= SHORT_VALUE {
                        let with_bytes = pf.may_match(v, Some(&ByteSet::of(v)));
                        assert_eq!(may, with_bytes, "{p:?} on {input:?}");
                    }
                    rejected += usize::from(!may);
                }
            }
        }
        assert!(rejected > 0, "no value was turned away");
    }
}
