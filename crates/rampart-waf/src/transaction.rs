//! Evaluation of one request against a [`Waf`]: the collections, phases 1
//! and 2, chains, actions and the verdict.
//!
//! Most of the work is running rules over stored values. Each stored value
//! carries the set of bytes it holds, and each rule link knows from load
//! the bytes a value needs for its transformations to change it or its
//! operator to match (`Rule::skip_bytes`): a value, or a whole collection,
//! lacking them all is passed over unread. The values that remain are
//! transformed once per chain-trie node (rules asking for the same chain
//! share the result), and the transformed values' byte sets let `@rx`
//! prefilters and `@pm` reject them without scanning.

use crate::actions::{AllowScope, BodyProcessor, Ctl, Disruptive, EngineMode, IdRange, SetOp};
use crate::body;
use crate::engine::{BodyLimitAction, Waf};
use crate::engine::{SelKeys, NO_KEY, ROOT_NODE};
use crate::exclusions::Exclusions;
use crate::macros::{Macro, Seg};
use crate::operators::{atoi, eval_with, Op, Operator};
use crate::prefilter::{ByteSet, LiteralIndex, ValueFacts};
use crate::request::{Action, Request, Response, RuleMatch, Verdict};
use crate::rule::{Rule, RuleBody, TxCompare, SKIP_SLOTS};
use crate::small::SmallBytes;
use crate::transformations::{chain_may_hold, TfBytes, Transform};
use crate::variables::{Exclusion, Kind, Selector, Target, VarName, VAR_COUNT};
use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::hash_map::Entry as MapEntry;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

/// TX and the persistent collections, by lowercased key; keys written
/// literally in the rules are borrowed from them rather than copied on
/// every request. Listed in key order where a rule reads a whole
/// collection.
type VarMap<'w> = HashMap<Cow<'w, str>, SmallBytes, SeededState>;

/// Builds [`KeyHasher`]s with the engine's random seed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SeededState(pub(crate) u64);

impl SeededState {
    /// A seed drawn at random (std's per-process keys, advanced for every
    /// `RandomState`).
    pub(crate) fn random() -> SeededState {
        use std::hash::BuildHasher;
        SeededState(std::collections::hash_map::RandomState::new().hash_one(0x7261_6d70_u64))
    }
}

impl std::hash::BuildHasher for SeededState {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(self.0)
    }
}

/// A fast hasher for the short keys of TX, eight bytes per step, started
/// from a seed drawn at random per engine. Keys can come from the request
/// (`setvar:tx.%{MATCHED_VAR_NAME}=…`), but only as many as the request
/// has values, which the engine's limits bound, so even keys made to
/// collide cost no more than a linear search.
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        // fold the high bits, which the multiplications mix best, down
        self.0 ^ (self.0 >> 29)
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.mix(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            if let Some(dst) = w.get_mut(..rest.len()) {
                dst.copy_from_slice(rest);
            }
            self.mix(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.mix(u64::from(n));
    }
}

impl KeyHasher {
    fn mix(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(26) ^ w).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Which stored values a link's collection loop passes over, before
/// they are offered to its operator, because they cannot match.
#[derive(Clone, Copy)]
struct PassOver<'i> {
    /// Those lacking every byte of this set ([`Rule::skip_bytes`]).
    lacking: Option<ByteSet>,
    /// Those that the link's transformations leave as they are (chain
    /// node `last`) and that hold no literal of its `@rx` prefilter, by
    /// its place in the shared [`LiteralIndex`].
    found: Option<(&'i LiteralIndex, u8)>,
    last: u32,
}

impl PassOver<'_> {
    /// Passes over nothing.
    const NONE: PassOver<'static> = PassOver {
        lacking: None,
        found: None,
        last: ROOT_NODE,
    };
}

/// One value offered to an operator.
struct Val<'a> {
    var: VarName,
    key: Cow<'a, str>,
    value: Cow<'a, [u8]>,
    count: bool,
    /// Identity of a stored value for the transformation cache; `None` for
    /// values that are not stored in a slot (TX, counts, MATCHED_*).
    id: Option<u64>,
    /// The bytes of `value`, for a stored value (with an `id`).
    bytes: ByteSet,
    /// What the prefilters work out about `value`, for a stored value:
    /// built by the first prefilter that needs it, kept for the others.
    grams: Option<&'a ValueFacts>,
}

/// One stored value of a collection, with the bytes its key and its value
/// hold (worked out once, when stored, for the byte tests of every rule).
#[derive(Clone)]
struct Entry {
    key: String,
    /// The id of `key` among the keys targets select
    /// ([`crate::engine::SelKeys`]), or [`NO_KEY`].
    key_id: u8,
    value: Vec<u8>,
    key_bytes: ByteSet,
    value_bytes: ByteSet,
    /// What the prefilters work out about `key` and `value`
    /// ([`ValueFacts`]), built when a prefilter first needs it.
    key_grams: ValueFacts,
    value_grams: ValueFacts,
}

/// A stored collection (or scalar): its values in order and the union of
/// their key and value bytes, which lets a rule skip the whole collection.
#[derive(Clone, Default)]
struct Slot {
    /// Its values are the first `len`; the others are earlier values kept
    /// for their buffers.
    entries: Vec<Entry>,
    len: usize,
    keys: ByteSet,
    values: ByteSet,
    /// The ids of the entries' keys, one bit each.
    key_mask: u64,
}

impl Slot {
    /// Its values.
    fn values(&self) -> &[Entry] {
        self.entries.get(..self.len).unwrap_or(&[])
    }

    fn push(&mut self, key_id: u8, key: String, value: Vec<u8>) {
        let e = Entry {
            key_bytes: ByteSet::of(key.as_bytes()),
            value_bytes: ByteSet::of(&value),
            key,
            key_id,
            value,
            key_grams: ValueFacts::default(),
            value_grams: ValueFacts::default(),
        };
        self.add_bytes(&e);
        match self.entries.get_mut(self.len) {
            Some(old) => *old = e,
            None => self.entries.push(e),
        }
        self.len += 1;
    }

    /// [`Slot::push`], copying into the buffers of a kept entry when there
    /// is one.
    fn push_copy(&mut self, key_id: u8, key: &str, value: &[u8]) {
        let Some(e) = self.entries.get_mut(self.len) else {
            return self.push(key_id, key.to_string(), value.to_vec());
        };
        e.key.clear();
        e.key.push_str(key);
        e.key_id = key_id;
        e.value.clear();
        e.value.extend_from_slice(value);
        e.key_bytes = ByteSet::of(key.as_bytes());
        e.value_bytes = ByteSet::of(value);
        e.key_grams = ValueFacts::default();
        e.value_grams = ValueFacts::default();
        let e = e.byte_sets();
        self.add_bytes_of(e);
        self.len += 1;
    }

    fn add_bytes(&mut self, e: &Entry) {
        self.add_bytes_of((e.key_id, e.key_bytes, e.value_bytes));
    }

    fn add_bytes_of(&mut self, (key_id, key_bytes, value_bytes): (u8, ByteSet, ByteSet)) {
        self.keys.union_with(&key_bytes);
        self.values.union_with(&value_bytes);
        self.key_mask |= 1u64.checked_shl(u32::from(key_id)).unwrap_or(0);
    }

    fn clear(&mut self) {
        self.len = 0;
        self.keys = ByteSet::default();
        self.values = ByteSet::default();
        self.key_mask = 0;
    }
}

impl Entry {
    /// Its key id and byte sets.
    fn byte_sets(&self) -> (u8, ByteSet, ByteSet) {
        (self.key_id, self.key_bytes, self.value_bytes)
    }
}

/// A slot being filled: its values get the ids of their keys.
struct SlotMut<'s> {
    slot: &'s mut Slot,
    keys: &'s SelKeys,
}

impl SlotMut<'_> {
    fn push(&mut self, key: String, value: Vec<u8>) {
        let id = self.keys.id(&key);
        self.slot.push(id, key, value);
    }

    /// [`SlotMut::push`], copying the key and the value.
    fn push_copy(&mut self, key: &str, value: &[u8]) {
        let id = self.keys.id(key);
        self.slot.push_copy(id, key, value);
    }

    fn clear(&mut self) {
        self.slot.clear();
    }
}

/// Names a slot value: the variable it is read as, the slot's generation
/// and its position, so that a changed slot never hits stale entries.
/// `None` (the value is then not cached) past what the id can hold, which
/// no request within the engine's limits reaches.
fn value_id(var: VarName, generation: u32, pos: usize) -> Option<u64> {
    let pos = u32::try_from(pos).ok()?;
    (generation <= 0xff_ffff)
        .then(|| ((var as u64) << 56) | (u64::from(generation) << 32) | u64::from(pos))
}

/// Most bytes of transformed values (plus [`CACHE_ENTRY_COST`] per entry) a
/// transaction keeps in its transformation cache.
const CACHE_BUDGET: usize = 4 << 20;

/// What one cache entry costs the budget besides its value.
const CACHE_ENTRY_COST: usize = 64;

/// One cached transformation result.
#[derive(Default)]
struct Cached {
    /// The value after the chain up to this node; `None` when the chain left
    /// it unchanged.
    value: Option<Arc<Vec<u8>>>,
    /// The bytes it holds, for `@rx` prefilters (computed on first use).
    bytes: Option<ByteSet>,
}

/// Per-transaction cache of transformed values, keyed by (value id,
/// chain-trie node): rules asking for the same chain on the same value
/// share one result.
type TfCache = HashMap<(u64, u32), Cached, BuildHasherDefault<IdHasher>>;

/// What checking one value against a link needs.
struct LinkCheck<'r> {
    top: &'r Rule,
    op: &'r Operator,
    transforms: &'r [Transform],
    tf_path: &'r [u32],
    /// The transformations' trigger and introduced bytes ([`Rule::tf_bytes`]).
    tf_bytes: &'r [TfBytes],
    want_caps: bool,
    multi: bool,
    /// The operator (`@rx` with a prefilter, `@pm`) can reject a value by
    /// its byte set alone.
    wants_bytes: bool,
    /// Bytes a value must hold for the (non-negated) operator to match.
    required: Option<&'r ByteSet>,
    /// The name of every hit of the current target, when it fixes the
    /// name ([`Target::fixed_name`]).
    name: Option<&'r str>,
}

/// A fast hasher for the small integer keys of [`TfCache`] (not exposed to
/// attacker-chosen keys: value ids are positions, not contents).
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Val<'_> {
    /// Writes the value's name (`ARGS:q`, `&TX:x`, `REQUEST_URI`) to `out`.
    fn write_name(&self, out: &mut String) {
        let var = self.var.name();
        if self.count {
            out.push('&');
            out.push_str(var);
            return;
        }
        out.push_str(var);
        if !(matches!(self.var.kind(), Kind::Scalar | Kind::Matched) && self.key.is_empty()) {
            out.push(':');
            out.push_str(&self.key);
        }
    }
}

/// One matched value, kept after the borrow of the collections ends. Its
/// name is borrowed from the rule when the target fixes it
/// ([`Target::fixed_name`]).
struct Hit<'w> {
    name: Cow<'w, str>,
    value: SmallBytes,
    caps: Option<Vec<SmallBytes>>,
}

/// The rules a `ctl` names by tag: the table worked out at load, or the
/// regex itself for a tag the load did not see.
enum TagSelect<'w> {
    Table(&'w [bool]),
    /// A table of the caller's [`Exclusions`], shared rather than borrowed
    /// so that a transaction can outlive them (see [`crate::Inspection`]).
    Shared(Arc<[bool]>),
    Regex(regex::Regex),
}

impl TagSelect<'_> {
    fn selects(&self, idx: usize, rule: &Rule) -> bool {
        match self {
            TagSelect::Table(t) => t.get(idx).copied().unwrap_or(false),
            TagSelect::Shared(t) => t.get(idx).copied().unwrap_or(false),
            TagSelect::Regex(re) => rule.has_tag(re),
        }
    }
}

/// Why evaluation of a phase stopped early.
pub(crate) enum Stop {
    Disrupt,
    Allow(AllowScope),
}

/// The largest allocations of a transaction, the slot table and the
/// transformation cache, emptied and left for the next transaction on the
/// same thread (allocating and freeing them cost a large share of a small
/// request).
struct Spare {
    slots: Vec<Slot>,
    tf_cache: TfCache,
    tx_named: Vec<Option<SmallBytes>>,
    /// Emptied shells of the cache's shared results, for the next results
    /// ([`Transaction::shared`]).
    shells: Vec<Arc<Vec<u8>>>,
    /// The emptied hit buffer and MATCHED_VARS: their elements borrow from
    /// the engine, so they are kept as buffers only ([`recycle`]).
    hits: Vec<Hit<'static>>,
    matched_vars: Vec<(Cow<'static, str>, SmallBytes)>,
    /// The buffer `setvar` values are expanded into.
    scratch: Vec<u8>,
}

/// An emptied vector's buffer, for elements with another lifetime:
/// collecting it through `filter_map` keeps its allocation (the element
/// types have the same layout), so that buffers whose elements borrow from
/// one engine can be kept for the next transaction, on any engine. Were
/// the allocation not kept, this would only cost one.
fn recycle<T, U>(mut v: Vec<T>) -> Vec<U> {
    v.clear();
    v.into_iter().filter_map(|_| None).collect()
}

/// A thread's kept buffers: one set for each transaction that ended while
/// others were open (the edge keeps a request's transaction open while
/// the upstream answers, so a thread has several at once).
///
/// Transformation caches are kept apart: an open transaction gives its
/// table back once its request phases are done
/// ([`Transaction::release_caches`]), and the next transaction takes it.
#[derive(Default)]
struct SparePool {
    spares: Vec<(Spare, usize)>,
    tables: Vec<TfCache>,
    /// The bytes they all hold, about ([`Spare::keep`], [`table_bytes`]).
    bytes: usize,
}

impl SparePool {
    /// Whether one more of `count` kept things, holding `bytes`, stays
    /// within the pool's limits.
    fn has_room(&self, count: usize, bytes: usize) -> bool {
        count < SPARES_PER_THREAD && self.bytes.saturating_add(bytes) <= SPARE_POOL_BYTES
    }
}

/// Runs `f` on this thread's pool; `None` while the thread is ending or
/// the pool is in use.
fn with_pool<R>(f: impl FnOnce(&mut SparePool) -> R) -> Option<R> {
    SPARES
        .try_with(|p| p.try_borrow_mut().ok().map(|mut p| f(&mut p)))
        .ok()
        .flatten()
}

/// About the bytes an empty transformation cache holds.
fn table_bytes(t: &TfCache) -> usize {
    t.capacity() * (std::mem::size_of::<((u64, u32), Cached)>() + 1)
}

/// Empties a transformation cache, keeping the emptied shells of its
/// shared results (up to [`SPARE_SHELLS`]) for the next results.
fn empty_cache(cache: &mut TfCache, shells: &mut Vec<Arc<Vec<u8>>>) {
    // a result shared by several entries is emptied by the last
    for (_, e) in cache.drain() {
        if let Some(mut shell) = e.value {
            if let Some(v) = Arc::get_mut(&mut shell) {
                if shells.len() < SPARE_SHELLS {
                    *v = Vec::new();
                    shells.push(shell);
                }
            }
        }
    }
}

thread_local! {
    static SPARES: RefCell<SparePool> = RefCell::new(SparePool::default());
}

/// Most sets of buffers a thread keeps, and most bytes they may hold
/// together: past either, a finished transaction's buffers are freed.
const SPARES_PER_THREAD: usize = 64;
const SPARE_POOL_BYTES: usize = 8 << 20;

/// Most values a kept slot may have room for, and most entries the kept
/// cache may have room for: a large request's buffers are freed, not kept.
const SPARE_SLOT_VALUES: usize = 64;
const SPARE_CACHE_ENTRIES: usize = 1024;
/// Largest key or value buffer a kept slot entry may have.
const SPARE_BUFFER: usize = 1024;
/// Room made for the ids of the rules a transaction matches.
const MATCHED_IDS_ROOM: usize = 256;
/// Most emptied result shells kept.
const SPARE_SHELLS: usize = 256;
/// Most hits or MATCHED_VARS entries the kept buffers may have room for.
const SPARE_HITS: usize = 64;

impl Spare {
    /// This thread's spare buffers (the last kept), or new ones; with a
    /// kept transformation cache when the buffers have none.
    fn take() -> Spare {
        let (spare, table) = with_pool(|p| {
            let spare = p.spares.pop().map(|(spare, held)| {
                p.bytes = p.bytes.saturating_sub(held);
                spare
            });
            let table = if spare.as_ref().is_some_and(|s| s.tf_cache.capacity() > 0) {
                None
            } else {
                p.tables.pop().inspect(|t| {
                    p.bytes = p.bytes.saturating_sub(table_bytes(t));
                })
            };
            (spare, table)
        })
        .unwrap_or((None, None));
        let mut spare = spare.unwrap_or_else(|| Spare {
            slots: vec![Slot::default(); VAR_COUNT],
            tf_cache: TfCache::default(),
            tx_named: Vec::new(),
            shells: Vec::new(),
            hits: Vec::new(),
            matched_vars: Vec::new(),
            scratch: Vec::new(),
        });
        if spare.tf_cache.capacity() == 0 {
            spare.tf_cache = table.unwrap_or_else(|| {
                TfCache::with_capacity_and_hasher(256, BuildHasherDefault::default())
            });
        }
        spare
    }

    /// Keeps an emptied transformation cache for the next transaction
    /// (unless it grew past the limits).
    fn keep_table(table: TfCache) {
        if table.capacity() == 0 || table.capacity() > SPARE_CACHE_ENTRIES {
            return;
        }
        let bytes = table_bytes(&table);
        with_pool(|p| {
            if p.has_room(p.tables.len(), bytes) {
                p.bytes += bytes;
                p.tables.push(table);
            }
        });
    }

    /// Empties a finished transaction's buffers and keeps them for the
    /// next (unless they grew past the limits).
    fn keep(self) {
        let Spare {
            mut slots,
            mut tf_cache,
            mut tx_named,
            mut shells,
            mut hits,
            mut matched_vars,
            mut scratch,
        } = self;
        if scratch.capacity() > SPARE_BUFFER {
            scratch = Vec::new();
        }
        scratch.clear();
        if hits.capacity() > SPARE_HITS {
            hits = Vec::new();
        }
        if matched_vars.capacity() > SPARE_HITS {
            matched_vars = Vec::new();
        }
        if slots.len() != VAR_COUNT || tf_cache.capacity() > SPARE_CACHE_ENTRIES {
            return;
        }
        // most of the rules' keys were never set
        for v in tx_named.iter_mut().filter(|v| v.is_some()) {
            *v = None;
        }
        // the bytes the kept slot entries hold
        let mut held = 0;
        for s in &mut slots {
            if s.entries.capacity() > SPARE_SLOT_VALUES {
                *s = Slot::default();
            } else {
                s.clear();
                // large buffers are not kept; most variables are never
                // set, and then there is nothing to sort through
                if !s.entries.is_empty() {
                    s.entries.retain(|e| {
                        let keep =
                            e.key.capacity() <= SPARE_BUFFER && e.value.capacity() <= SPARE_BUFFER;
                        if keep {
                            held += e.key.capacity() + e.value.capacity();
                        }
                        keep
                    });
                }
                held += s.entries.capacity() * std::mem::size_of::<Entry>();
            }
        }
        empty_cache(&mut tf_cache, &mut shells);
        let spare = Spare {
            slots,
            tf_cache,
            tx_named,
            shells,
            hits,
            matched_vars,
            scratch,
        };
        let held = held + spare.held_besides_slots();
        with_pool(|p| {
            if p.has_room(p.spares.len(), held) {
                p.bytes += held;
                p.spares.push((spare, held));
            }
        });
    }

    /// About the bytes its buffers hold besides its slots' entries.
    fn held_besides_slots(&self) -> usize {
        table_bytes(&self.tf_cache)
            + self.tx_named.capacity() * std::mem::size_of::<Option<SmallBytes>>()
            + self.shells.len() * std::mem::size_of::<Vec<u8>>()
            + self.hits.capacity() * std::mem::size_of::<Hit<'static>>()
            + self.matched_vars.capacity() * std::mem::size_of::<(Cow<'static, str>, SmallBytes)>()
            + self.scratch.capacity()
    }
}

pub(crate) struct Transaction<'w> {
    waf: &'w Waf,
    slots: Vec<Slot>,
    /// TX variables whose keys the rules name, by key id
    /// ([`Waf::tx_keys`]).
    tx_named: Vec<Option<SmallBytes>>,
    /// The other TX variables (keys made at run time).
    tx: VarMap<'w>,
    persist: HashMap<VarName, VarMap<'w>>,
    matched_vars: Vec<(Cow<'w, str>, SmallBytes)>,
    /// MATCHED_VAR when it is no longer in `matched_vars`.
    matched_var: Option<(Cow<'w, str>, SmallBytes)>,
    /// MATCHED_VAR's position in `matched_vars`, when it is there.
    matched_at: Option<usize>,
    /// The current link's hits (a buffer kept from link to link).
    hit_buf: Vec<Hit<'w>>,
    /// The buffer `setvar` values with macros are expanded into before
    /// they are copied into the variable's own (kept from one to the next).
    scratch: Vec<u8>,
    removed_ids: Vec<IdRange>,
    removed_tags: Vec<TagSelect<'w>>,
    removed_targets_by_id: Vec<(Vec<IdRange>, Exclusion)>,
    removed_targets_by_tag: Vec<(TagSelect<'w>, Exclusion)>,
    /// Per slot, bumped on every change (part of each value's cache id).
    generations: Vec<u32>,
    tf_cache: RefCell<TfCache>,
    /// Emptied shells for shared results ([`Transaction::shared`]).
    tf_shells: RefCell<Vec<Arc<Vec<u8>>>>,
    /// Bytes of the cache's budget spent ([`CACHE_BUDGET`]).
    tf_cache_bytes: Cell<usize>,
    engine: EngineMode,
    body_access: bool,
    response_body_access: bool,
    body_processor: Option<BodyProcessor>,
    force_body_var: bool,
    disruption: Option<(Action, u64)>,
    matched_rules: Vec<RuleMatch>,
    matched_ids: Vec<u64>,
    phase: u8,
    /// The client's address: the libinjection answers this transaction
    /// may reuse are those given about its own client's values
    /// ([`crate::recall`]).
    client: std::net::IpAddr,
}

impl Waf {
    /// Evaluates request phases 1 (headers) and 2 (body) and returns the
    /// verdict. Never fails and never panics on any input.
    pub fn evaluate(&self, req: &Request) -> Verdict {
        let mut t = Transaction::new(self, req);
        t.run_request(req);
        t.into_verdict()
    }

    /// Evaluates the whole transaction: the request (phases 1, 2), the
    /// upstream's response headers (3) and body (4), then logging (5). The
    /// request phases run again, so that the response rules see the TX state
    /// they set (CRS's paranoia level, scores); when the request was already
    /// disrupted or allowed outright the response phases are skipped, but
    /// logging (CRS's 980 reporting rules) still runs, as in ModSecurity.
    pub fn evaluate_response(&self, req: &Request, resp: &Response) -> Verdict {
        let mut t = Transaction::new(self, req);
        if t.run_request(req) {
            t.run_response(resp);
        }
        if t.engine != EngineMode::Off {
            t.run_phase(5);
        }
        t.into_verdict()
    }
}

/// Expanded bytes as text, without a copy when they are UTF-8 already.
fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn path_and_query(uri: &str) -> &str {
    // absolute-form: scheme://authority/path?query. Origin-form targets
    // start with `/` and may carry `://` in their query (`?u=http://x/`).
    if uri.starts_with('/') {
        return uri;
    }
    if let Some(p) = uri.find("://") {
        let after = uri.get(p + 3..).unwrap_or("");
        return match after.find('/') {
            Some(s) => after.get(s..).unwrap_or(""),
            None => "/",
        };
    }
    uri
}

/// A transaction's buffers, emptied, go to its thread's pool for the next
/// one, however it ends: a verdict, or a request blocked before its
/// response ([`Spare::keep`]).
impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        Spare {
            slots: std::mem::take(&mut self.slots),
            tf_cache: std::mem::take(self.tf_cache.get_mut()),
            tx_named: std::mem::take(&mut self.tx_named),
            shells: std::mem::take(self.tf_shells.get_mut()),
            hits: recycle(std::mem::take(&mut self.hit_buf)),
            matched_vars: recycle(std::mem::take(&mut self.matched_vars)),
            scratch: std::mem::take(&mut self.scratch),
        }
        .keep();
    }
}

impl<'w> Transaction<'w> {
    pub(crate) fn new(waf: &'w Waf, req: &Request) -> Self {
        let cfg = &waf.config;
        let Spare {
            slots,
            tf_cache,
            mut tx_named,
            shells,
            hits,
            matched_vars,
            scratch,
        } = Spare::take();
        tx_named.resize_with(waf.tx_keys.len(), || None);
        let mut t = Transaction {
            waf,
            slots,
            tx_named,
            tx: VarMap::with_hasher(SeededState(waf.hash_seed)),
            persist: HashMap::new(),
            matched_vars: recycle(matched_vars),
            matched_var: None,
            matched_at: None,
            hit_buf: recycle(hits),
            scratch,
            removed_ids: Vec::new(),
            removed_tags: Vec::new(),
            removed_targets_by_id: Vec::new(),
            removed_targets_by_tag: Vec::new(),
            generations: vec![0; VAR_COUNT],
            tf_cache: RefCell::new(tf_cache),
            tf_shells: RefCell::new(shells),
            tf_cache_bytes: Cell::new(0),
            engine: cfg.engine,
            body_access: cfg.request_body_access,
            response_body_access: cfg.response_body_access,
            body_processor: None,
            force_body_var: false,
            disruption: None,
            matched_rules: Vec::new(),
            // every rule that matches, CRS's paranoia-level gates (about
            // 170 a request) too: room for them at once
            matched_ids: Vec::with_capacity(MATCHED_IDS_ROOM),
            phase: 1,
            client: req.remote_addr,
        };
        let uri = path_and_query(&req.uri);
        let (path, query) = match uri.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (uri, None),
        };
        t.set(VarName::RequestMethod, req.method.as_bytes());
        t.set(VarName::RequestProtocol, req.protocol.as_bytes());
        t.set(VarName::RequestUriRaw, req.uri.as_bytes());
        t.set(VarName::RequestUri, uri.as_bytes());
        // Like ModSecurity v3 and Coraza, the path variables are
        // percent-decoded (`/x/substr%28` is `/x/substr(`); REQUEST_URI is not.
        let path = percent_decode(path.as_bytes());
        t.set(VarName::RequestFilename, &path);
        let base = path.rsplit(|&b| b == b'/').next().unwrap_or(&path);
        t.set(VarName::RequestBasename, base);
        let mut line =
            Vec::with_capacity(req.method.len() + req.uri.len() + req.protocol.len() + 2);
        for (i, part) in [&req.method, &req.uri, &req.protocol].iter().enumerate() {
            if i > 0 {
                line.push(b' ');
            }
            line.extend_from_slice(part.as_bytes());
        }
        t.set_owned(VarName::RequestLine, line);
        t.set(VarName::QueryString, query.unwrap_or("").as_bytes());
        match req.remote_addr {
            // written on the stack, as `Display` writes it
            std::net::IpAddr::V4(a) => {
                let mut buf = [0u8; 15];
                let mut len = 0;
                for (i, o) in a.octets().iter().enumerate() {
                    let mut digits = itoa::Buffer::new();
                    let part = digits.format(*o).as_bytes();
                    let dot = usize::from(i > 0);
                    if let Some(dst) = buf.get_mut(len..len + dot + part.len()) {
                        let (sep, num) = dst.split_at_mut(dot);
                        sep.fill(b'.');
                        num.copy_from_slice(part);
                    }
                    len += dot + part.len();
                }
                t.set(VarName::RemoteAddr, buf.get(..len).unwrap_or(&[]));
            }
            a @ std::net::IpAddr::V6(_) => {
                t.set_owned(VarName::RemoteAddr, a.to_string().into_bytes())
            }
        }
        let mut digits = itoa::Buffer::new();
        t.set(
            VarName::RemotePort,
            digits.format(req.remote_port).as_bytes(),
        );
        t.set(VarName::UniqueId, b"rampart");
        t.set(VarName::ReqbodyError, b"0");
        t.set(VarName::InboundDataError, b"0");
        t.set(
            VarName::RequestBodyLength,
            digits.format(req.body.len()).as_bytes(),
        );
        if let Some(q) = query {
            for (k, v) in
                body::parse_urlencoded(q.as_bytes(), cfg.argument_separator, cfg.arguments_limit)
            {
                t.add_arg(VarName::ArgsGet, k, v);
            }
        }
        for (name, value) in &req.headers {
            t.slot(VarName::RequestHeaders).push_copy(name, value);
            if name.eq_ignore_ascii_case("cookie") {
                for c in value.split(|&b| b == b';') {
                    let c = trim(c);
                    if c.is_empty() {
                        continue;
                    }
                    let (k, v) = match c.iter().position(|&b| b == b'=') {
                        Some(p) => (c.get(..p).unwrap_or(&[]), c.get(p + 1..).unwrap_or(&[])),
                        None => (c, &[][..]),
                    };
                    t.slot(VarName::RequestCookies)
                        .push_copy(&String::from_utf8_lossy(k), v);
                }
            } else if name.eq_ignore_ascii_case("host") {
                let host = String::from_utf8_lossy(value);
                let (h, p) = match host.rsplit_once(':') {
                    Some((h, p)) if !h.ends_with(']') || host.starts_with('[') => (h, p),
                    _ => (host.as_ref(), "80"),
                };
                t.set(VarName::ServerName, h.as_bytes());
                t.set(VarName::ServerPort, p.as_bytes());
            } else if name.eq_ignore_ascii_case("content-type") && t.body_processor.is_none() {
                let ct = String::from_utf8_lossy(value).to_ascii_lowercase();
                if ct.starts_with("application/x-www-form-urlencoded") {
                    t.body_processor = Some(BodyProcessor::UrlEncoded);
                } else if ct.starts_with("multipart/form-data") {
                    t.body_processor = Some(BodyProcessor::Multipart);
                }
            }
        }
        if let Some(p) = t.body_processor {
            t.set(VarName::ReqbodyProcessor, p.name().as_bytes());
        }
        t.update_combined_size();
        t
    }

    fn slot(&mut self, v: VarName) -> SlotMut<'_> {
        let idx = v as usize;
        let keys = &self.waf.sel_keys;
        if let Some(g) = self.generations.get_mut(idx) {
            *g = g.wrapping_add(1);
        }
        // VAR_COUNT sizes the table, so every VarName has a slot.
        if self.slots.len() <= idx {
            self.slots.resize(idx + 1, Slot::default());
        }
        match self.slots.get_mut(idx) {
            Some(slot) => SlotMut { slot, keys },
            None => unreachable!("slot table covers every variable"),
        }
    }

    fn get_slot(&self, v: VarName) -> &[Entry] {
        self.slots.get(v as usize).map(Slot::values).unwrap_or(&[])
    }

    fn generation(&self, v: VarName) -> u32 {
        self.generations.get(v as usize).copied().unwrap_or(0)
    }

    fn tag_select(&self, re: &regex::Regex) -> TagSelect<'w> {
        match self.waf.tag_sets.get(re.as_str()) {
            Some(t) => TagSelect::Table(t),
            None => TagSelect::Regex(re.clone()),
        }
    }

    fn set(&mut self, v: VarName, value: &[u8]) {
        let s = self.slot(v);
        s.slot.clear();
        s.slot.push_copy(NO_KEY, "", value);
    }

    /// [`Transaction::set`], taking the value's buffer.
    fn set_owned(&mut self, v: VarName, value: Vec<u8>) {
        let s = self.slot(v);
        s.slot.clear();
        s.slot.push(NO_KEY, String::new(), value);
    }

    fn add_arg(&mut self, which: VarName, k: String, v: Vec<u8>) {
        self.slot(VarName::Args).push_copy(&k, &v);
        self.slot(which).push(k, v);
    }

    fn update_combined_size(&mut self) {
        let n: usize = self
            .get_slot(VarName::Args)
            .iter()
            .map(|e| e.key.len() + e.value.len())
            .sum();
        self.set(
            VarName::ArgsCombinedSize,
            itoa::Buffer::new().format(n).as_bytes(),
        );
    }

    /// Runs phases 1 and 2; returns whether the response phases may run.
    pub(crate) fn run_request(&mut self, req: &Request) -> bool {
        if self.engine == EngineMode::Off {
            return false;
        }
        let mut stopped = self.run_phase(1);
        if self.engine == EngineMode::Off {
            return false;
        }
        match stopped {
            Some(Stop::Disrupt | Stop::Allow(AllowScope::All)) => return false,
            Some(Stop::Allow(AllowScope::Request)) => return true,
            _ => {}
        }
        if self.body_access {
            if let Some(s) = self.process_body(req) {
                stopped = Some(s);
            }
        }
        if matches!(stopped, Some(Stop::Disrupt)) {
            return false;
        }
        let stopped = self.run_phase(2);
        self.engine != EngineMode::Off
            && !matches!(stopped, Some(Stop::Disrupt | Stop::Allow(AllowScope::All)))
    }

    /// Sets the response variables and runs phases 3 and 4.
    pub(crate) fn run_response(&mut self, resp: &Response) {
        let status = resp.status.to_string();
        self.set(VarName::ResponseStatus, status.as_bytes());
        self.set(VarName::ResponseProtocol, resp.protocol.as_bytes());
        self.set(
            VarName::StatusLine,
            format!("{} {}", resp.protocol, resp.status).as_bytes(),
        );
        for (name, value) in &resp.headers {
            self.slot(VarName::ResponseHeaders).push_copy(name, value);
            if name.eq_ignore_ascii_case("content-type") {
                self.set(VarName::ResponseContentType, value);
            } else if name.eq_ignore_ascii_case("content-length") {
                self.set(VarName::ResponseContentLength, value);
            }
        }
        if self.get_slot(VarName::ResponseContentLength).is_empty() {
            self.set(
                VarName::ResponseContentLength,
                resp.body.len().to_string().as_bytes(),
            );
        }
        self.set(VarName::OutboundDataError, b"0");
        if matches!(
            self.run_phase(3),
            Some(Stop::Disrupt | Stop::Allow(AllowScope::All))
        ) || self.engine == EngineMode::Off
        {
            return;
        }
        if self.response_body_access && self.response_body_inspected(resp) {
            let cfg = &self.waf.config;
            let mut body: &[u8] = &resp.body;
            if body.len() > cfg.response_body_limit {
                self.set(VarName::OutboundDataError, b"1");
                match cfg.response_body_limit_action {
                    BodyLimitAction::Reject => {
                        if self.disruption.is_none() {
                            self.disruption = Some((Action::Deny { status: 500 }, 0));
                        }
                        if self.engine == EngineMode::On {
                            return;
                        }
                    }
                    BodyLimitAction::ProcessPartial => {
                        body = body.get(..cfg.response_body_limit).unwrap_or(body);
                    }
                }
            }
            self.set(VarName::ResponseBody, body);
        }
        self.run_phase(4);
    }

    /// True when the response's media type is one `SecResponseBodyMimeType`
    /// lists (a response without Content-Type is not inspected).
    pub(crate) fn response_body_inspected(&self, resp: &Response) -> bool {
        let Some((_, ct)) = resp
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        else {
            return false;
        };
        let ct = String::from_utf8_lossy(ct);
        let media = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        self.waf.config.response_body_mime_types.contains(&media)
    }

    /// The action, the deciding rule and the inbound and outbound scores.
    fn outcome(&self) -> (Action, Option<u64>, i64, i64) {
        let score = self
            .tx_get("blocking_inbound_anomaly_score")
            .or_else(|| self.tx_get("anomaly_score"))
            .map(atoi)
            .unwrap_or(0);
        let (action, disrupted_by) = match &self.disruption {
            Some((a, id)) => {
                let a = if self.engine == EngineMode::On {
                    a.clone()
                } else {
                    Action::Pass
                };
                (a, Some(*id))
            }
            None => (Action::Pass, None),
        };
        let outbound = self
            .tx_get("blocking_outbound_anomaly_score")
            .map(atoi)
            .unwrap_or(0);
        (action, disrupted_by, score, outbound)
    }

    /// The verdict so far, leaving the transaction open.
    pub(crate) fn verdict_now(&self) -> Verdict {
        let (action, disrupted_by, anomaly_score, outbound_anomaly_score) = self.outcome();
        Verdict {
            action,
            disrupted_by,
            matched_rules: self.matched_rules.clone(),
            matched_ids: self.matched_ids.clone(),
            anomaly_score,
            outbound_anomaly_score,
        }
    }

    pub(crate) fn into_verdict(mut self) -> Verdict {
        let (action, disrupted_by, anomaly_score, outbound_anomaly_score) = self.outcome();
        // the buffers are kept for the next transaction when `self` drops
        Verdict {
            action,
            disrupted_by,
            matched_rules: std::mem::take(&mut self.matched_rules),
            matched_ids: std::mem::take(&mut self.matched_ids),
            anomaly_score,
            outbound_anomaly_score,
        }
    }

    /// Empties the transformation cache (kept values of the request
    /// phases) while the transaction waits for the response, so that an
    /// open transaction holds little more than its variables; its table
    /// goes to the thread's pool for the next transaction.
    pub(crate) fn release_caches(&mut self) {
        let mut table = std::mem::take(self.tf_cache.get_mut());
        empty_cache(&mut table, self.tf_shells.get_mut());
        self.tf_cache_bytes.set(0);
        Spare::keep_table(table);
    }

    /// Whether the engine is on (or detecting) after the request phases.
    pub(crate) fn engine_mode(&self) -> EngineMode {
        self.engine
    }

    /// `SecResponseBodyAccess`, as a `ctl` may have switched it.
    pub(crate) fn response_body_access(&self) -> bool {
        self.response_body_access
    }

    /// The engine's configuration.
    pub(crate) fn config(&self) -> &crate::engine::Config {
        &self.waf.config
    }

    fn process_body(&mut self, req: &Request) -> Option<Stop> {
        let cfg = &self.waf.config;
        let mut body: &[u8] = &req.body;
        if body.len() > cfg.request_body_limit {
            self.set(VarName::InboundDataError, b"1");
            match cfg.request_body_limit_action {
                BodyLimitAction::Reject => {
                    if self.disruption.is_none() {
                        self.disruption = Some((Action::Deny { status: 413 }, 0));
                    }
                    if self.engine == EngineMode::On {
                        return Some(Stop::Disrupt);
                    }
                }
                BodyLimitAction::ProcessPartial => {
                    body = body.get(..cfg.request_body_limit).unwrap_or(body);
                }
            }
        }
        if body.is_empty() {
            return None;
        }
        let (sep, arg_limit) = (cfg.argument_separator, cfg.arguments_limit);
        let depth = cfg.json_depth_limit;
        let file_limit = cfg.upload_file_limit;
        let processor = self.body_processor;
        // REQUEST_BODY holds the raw body for URL-encoded and JSON bodies (as
        // in Coraza; CRS 934210 reads JSON keys there), not for multipart or
        // XML, whose element names would otherwise be matched as values.
        let set_body = matches!(
            processor,
            None | Some(BodyProcessor::UrlEncoded | BodyProcessor::Json)
        ) || self.force_body_var;
        if set_body {
            self.set(VarName::RequestBody, body);
        }
        let mut error: Option<String> = None;
        match processor {
            Some(BodyProcessor::UrlEncoded) => {
                for (k, v) in body::parse_urlencoded(body, sep, arg_limit) {
                    self.add_arg(VarName::ArgsPost, k, v);
                }
            }
            Some(BodyProcessor::Json) => match body::parse_json(body, depth, arg_limit) {
                Ok(args) => {
                    for (k, v) in args {
                        self.add_arg(VarName::ArgsPost, k, v);
                    }
                }
                Err(e) => error = Some(e),
            },
            Some(BodyProcessor::Multipart) => {
                let ct = req
                    .headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                    .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default();
                let m = body::parse_multipart(body, &ct, arg_limit, file_limit);
                for (k, v) in m.args {
                    self.add_arg(VarName::ArgsPost, k, v);
                }
                let mut total = 0;
                for (name, filename, size) in m.files {
                    total += size;
                    self.slot(VarName::Files)
                        .push(name.clone(), filename.into_bytes());
                    self.slot(VarName::FilesSizes)
                        .push(name, size.to_string().into_bytes());
                }
                self.set(VarName::FilesCombinedSize, total.to_string().as_bytes());
                let mut headers = self.slot(VarName::MultipartPartHeaders);
                headers.clear();
                for (k, v) in m.part_headers {
                    headers.push(k, v);
                }
                self.set(VarName::MultipartName, m.last_name.as_bytes());
                self.set(VarName::MultipartFilename, m.last_filename.as_bytes());
                let f = m.flags;
                let flag = |b: bool| if b { &b"1"[..] } else { &b"0"[..] };
                self.set(
                    VarName::MultipartStrictError,
                    flag(f.strict_error() || m.error.is_some()),
                );
                self.set(VarName::MultipartBoundaryQuoted, flag(f.boundary_quoted));
                self.set(
                    VarName::MultipartBoundaryWhitespace,
                    flag(f.boundary_whitespace),
                );
                self.set(VarName::MultipartDataBefore, flag(f.data_before));
                self.set(VarName::MultipartDataAfter, flag(f.data_after));
                self.set(VarName::MultipartHeaderFolding, flag(f.header_folding));
                self.set(VarName::MultipartLfLine, flag(f.lf_line));
                self.set(VarName::MultipartCrlfLfLines, flag(f.crlf_lf_lines));
                self.set(
                    VarName::MultipartMissingSemicolon,
                    flag(f.missing_semicolon),
                );
                self.set(VarName::MultipartInvalidQuoting, flag(f.invalid_quoting));
                self.set(VarName::MultipartInvalidPart, flag(f.invalid_part));
                self.set(
                    VarName::MultipartInvalidHeaderFolding,
                    flag(f.invalid_header_folding),
                );
                self.set(
                    VarName::MultipartUnmatchedBoundary,
                    flag(f.unmatched_boundary),
                );
                self.set(
                    VarName::MultipartFileLimitExceeded,
                    flag(f.file_limit_exceeded),
                );
                error = m.error;
            }
            Some(BodyProcessor::Xml) => {
                match crate::xml::parse_xml(body, self.waf.config.xml_depth_limit, arg_limit) {
                    Ok(x) => {
                        let mut slot = self.slot(VarName::Xml);
                        for v in x.text {
                            slot.push("/*".to_string(), v);
                        }
                        for v in x.attrs {
                            slot.push("//@*".to_string(), v);
                        }
                    }
                    Err(e) => error = Some(e),
                }
            }
            None => {}
        }
        if let Some(e) = error {
            self.set(VarName::ReqbodyError, b"1");
            self.set(VarName::ReqbodyErrorMsg, e.as_bytes());
            self.set(VarName::ReqbodyProcessorError, b"1");
            self.set(VarName::ReqbodyProcessorErrorMsg, e.as_bytes());
        }
        self.update_combined_size();
        None
    }

    fn rule_removed(&self, idx: usize, r: &Rule) -> bool {
        self.removed_ids.iter().any(|x| x.contains(r.id))
            || self.removed_tags.iter().any(|t| t.selects(idx, r))
    }

    pub(crate) fn run_phase(&mut self, phase: u8) -> Option<Stop> {
        self.phase = phase;
        // a phase runs to its end on this thread: its operators look up
        // only answers about this client's values
        crate::recall::set_client(self.client);
        let waf = self.waf;
        let list = waf
            .by_phase
            .get(usize::from(phase))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let mut i = 0;
        while let Some(&idx) = list.get(i) {
            i += 1;
            let Some(rule) = waf.rules.get(idx) else {
                continue;
            };
            if self.rule_removed(idx, rule) {
                continue;
            }
            if !self.eval_rule(idx, rule) {
                continue;
            }
            if self.engine == EngineMode::Off {
                return Some(Stop::Disrupt);
            }
            let disruptive = match &rule.actions.disruptive {
                Some(Disruptive::Block) => Some(&rule.block_action),
                d => d.as_ref(),
            };
            match disruptive {
                Some(Disruptive::Deny) | Some(Disruptive::Drop) | Some(Disruptive::Redirect(_)) => {
                    let action = match disruptive {
                        Some(Disruptive::Drop) => Action::Drop,
                        Some(Disruptive::Redirect(loc)) => Action::Redirect {
                            status: rule
                                .actions
                                .status
                                .filter(|s| (300..400).contains(s))
                                .unwrap_or(302),
                            location: String::from_utf8_lossy(
                                &self.expand(&Macro::parse(loc), rule),
                            )
                            .into_owned(),
                        },
                        _ => Action::Deny {
                            status: rule.actions.status.unwrap_or(403),
                        },
                    };
                    if self.disruption.is_none() {
                        self.disruption = Some((action, rule.id));
                    }
                    if self.engine == EngineMode::On {
                        return Some(Stop::Disrupt);
                    }
                }
                Some(Disruptive::Allow(scope)) if self.engine == EngineMode::On => {
                    return Some(Stop::Allow(*scope));
                }
                _ => {}
            }
            if rule.actions.skip_after.is_some() {
                i = waf
                    .skip_after
                    .get(usize::from(phase))
                    .and_then(|s| s.get(i - 1))
                    .copied()
                    .unwrap_or(list.len());
            } else if rule.actions.skip > 0 {
                // the list holds no markers: each entry is a rule skipped
                i = i
                    .saturating_add(usize::try_from(rule.actions.skip).unwrap_or(usize::MAX))
                    .min(list.len());
            }
        }
        None
    }

    /// Evaluates a rule and its chain; on a full match runs its actions and
    /// records it. Returns whether it matched.
    /// MATCHED_VAR's name and value: the last value a rule matched.
    fn matched_var(&self) -> Option<(&str, &[u8])> {
        match self.matched_at {
            Some(i) => self.matched_vars.get(i).map(|(n, v)| (n.as_ref(), &**v)),
            None => self.matched_var.as_ref().map(|(n, v)| (n.as_ref(), &**v)),
        }
    }

    /// Empties MATCHED_VARS, first moving MATCHED_VAR out of it if it
    /// points there (it outlives the rule that set it).
    #[inline]
    fn clear_matched_vars(&mut self) {
        if !self.matched_vars.is_empty() || self.matched_at.is_some() {
            self.empty_matched_vars();
        }
    }

    /// [`Transaction::clear_matched_vars`] when there is something to do.
    #[inline(never)]
    fn empty_matched_vars(&mut self) {
        if let Some(i) = self.matched_at.take() {
            if let Some(e) = self.matched_vars.get_mut(i) {
                self.matched_var = Some(std::mem::take(e));
            }
        }
        self.matched_vars.clear();
    }

    fn eval_rule(&mut self, idx: usize, rule: &'w Rule) -> bool {
        let matched = match self.told_gate(rule) {
            Some(m) => m,
            None => {
                self.clear_matched_vars();
                self.eval_link(idx, rule, rule)
            }
        };
        if !matched {
            return false;
        }
        self.matched_ids.push(rule.id);
        if rule.actions.log != Some(false) {
            let msg = rule
                .actions
                .msg
                .as_ref()
                .map(|m| self.expand(m, rule))
                .unwrap_or_default();
            let data = rule
                .actions
                .logdata
                .as_ref()
                .map(|m| self.expand(m, rule))
                .unwrap_or_default();
            self.matched_rules.push(RuleMatch {
                id: rule.id,
                phase: rule.phase,
                msg: text(msg),
                data: text(data),
                severity: rule.actions.severity,
                tags: std::sync::Arc::clone(&rule.tags),
                matched_var_name: self
                    .matched_var()
                    .map(|(n, _)| n.to_string())
                    .unwrap_or_default(),
            });
        }
        true
    }

    /// A rule of one link that compares one TX value with a number (CRS's
    /// paranoia-level gates, its `&TX:key "@eq 0"` defaults, about 190 a
    /// request), told as [`Transaction::eval_link`] would tell it, with the
    /// same MATCHED_VAR(S) and actions, but without its set-up; `None` when
    /// the rule is not one, or must take the full way.
    #[inline]
    fn told_gate(&mut self, rule: &'w Rule) -> Option<bool> {
        let c = rule.tx_compare.as_ref().filter(|_| rule.chain.is_none())?;
        let RuleBody::Match { targets, .. } = &rule.body else {
            return None;
        };
        let told = self.tx_compare_hit(c, targets.targets.first()?, rule.actions.capture)?;
        self.clear_matched_vars();
        let Some(hit) = told else {
            return Some(false);
        };
        self.matched_vars.push((hit.name, hit.value));
        self.matched_at = Some(0);
        self.run_actions(rule, rule);
        Some(true)
    }

    fn eval_link(&mut self, idx: usize, top: &'w Rule, link: &'w Rule) -> bool {
        // the number of hits, and their captures when the link captures
        let (n, caps) = match &link.body {
            RuleBody::Match { targets, .. } => {
                // A TX comparison is told without set-up: the one hit it
                // yields when it holds is the one the full way would make,
                // recorded here without the hit buffer (CRS's paranoia-level
                // gates, about 170 links a request).
                if let Some(told) = link
                    .tx_compare
                    .as_ref()
                    .zip(targets.targets.first())
                    .and_then(|(c, t)| self.tx_compare_hit(c, t, link.actions.capture))
                {
                    let Some(hit) = told else {
                        return false;
                    };
                    self.clear_matched_vars();
                    self.matched_vars.push((hit.name, hit.value));
                    (1, Vec::new())
                } else {
                    // one buffer for every link's hits, kept between links
                    let mut hits = std::mem::take(&mut self.hit_buf);
                    if let Some(live) = self.live_targets(link, targets.targets.len()) {
                        self.match_link(idx, top, link, live, &mut hits);
                    }
                    if hits.is_empty() {
                        self.hit_buf = hits;
                        return false;
                    }
                    self.clear_matched_vars();
                    let n = hits.len();
                    // each hit's captures, set as TX.0-9 below before its
                    // actions run (the last hit's stay for the chain)
                    let mut caps = Vec::new();
                    for h in hits.drain(..) {
                        self.matched_vars.push((h.name, h.value));
                        if h.caps.is_some() || !caps.is_empty() {
                            if caps.is_empty() {
                                caps.reserve_exact(n);
                            }
                            caps.resize_with(self.matched_vars.len() - 1, || None);
                            caps.push(h.caps);
                        }
                    }
                    self.hit_buf = hits;
                    (n, caps)
                }
            }
            RuleBody::Action => (0, Vec::new()),
            RuleBody::Marker(_) => return false,
        };
        // Each link's non-disruptive actions (setvar, ctl) run once per
        // matched value as soon as the link matches, before the next link is
        // evaluated, whether or not the rest of the chain matches: CRS chains
        // such as 920420 and 931130 read in link 2 what link 1 set.
        if n == 0 {
            self.run_actions(top, link);
        }
        for i in 0..n {
            if let Some(Some(c)) = caps.get(i) {
                self.set_captures(c);
            }
            // MATCHED_VAR is this hit, read in place from MATCHED_VARS
            self.matched_at = Some(i);
            self.run_actions(top, link);
        }
        match &link.chain {
            Some(child) => self.eval_link(idx, top, child),
            None => true,
        }
    }

    /// A [`TxCompare`] link told without set-up: `Some(None)` when it does
    /// not match (its key's value, or whether it is set, fails the
    /// comparison, or the key is not set), `Some(Some(hit))` with the hit the
    /// full way would record when it does; `None` (take the full way) while
    /// ctl target removals are in force, or for a holding link that captures.
    #[inline(always)]
    fn tx_compare_hit(
        &self,
        c: &TxCompare,
        t: &'w Target,
        capture: bool,
    ) -> Option<Option<Hit<'w>>> {
        if !self.removed_targets_by_id.is_empty() || !self.removed_targets_by_tag.is_empty() {
            return None;
        }
        let value = self.tx_named.get(c.tx_id as usize).and_then(Option::as_ref);
        let mut digits = itoa::Buffer::new();
        let seen: &[u8] = match (c.count, value) {
            (true, v) => {
                let n = i64::from(v.is_some());
                if !c.holds(n) {
                    return Some(None);
                }
                digits.format(n).as_bytes()
            }
            (false, Some(v)) if c.holds(atoi(v)) => v,
            (false, _) => return Some(None),
        };
        if capture {
            return None;
        }
        let name = t.fixed_name.as_deref()?;
        Some(Some(Hit {
            name: Cow::Borrowed(name),
            value: SmallBytes::copy_of(seen),
            caps: None,
        }))
    }

    fn set_captures(&mut self, caps: &[SmallBytes]) {
        // the keys `0` to `9` are ids 0 to 9 (`TxKeys`)
        for (i, c) in caps.iter().enumerate() {
            match self.tx_named.get_mut(i).filter(|_| i < 10) {
                Some(slot) => store_named(slot, c),
                None => self
                    .var_ref(VarName::Tx, None, Cow::Owned(i.to_string()))
                    .put(c),
            }
        }
    }

    /// The targets of a link (of `n`) whose stored collection holds the key
    /// they select and a byte of the link's skip bytes (or that are read
    /// elsewhere), one bit each; `None` when none is left: the link cannot
    /// match and is not set up at all.
    fn live_targets(&self, link: &Rule, n: usize) -> Option<u64> {
        let skip = link.skip_bytes;
        let mut live = u64::MAX;
        if !link.skip_slots.is_empty() {
            for (i, slot) in link.skip_slots.iter().enumerate() {
                if let Some((var, keys, key)) = *slot {
                    let Some(st) = self.slots.get(usize::from(var)) else {
                        live &= !(1u64 << i);
                        continue;
                    };
                    let have = if keys { &st.keys } else { &st.values };
                    // the key it selects is not there, or no value holds
                    // a byte of `skip`
                    if (key != NO_KEY
                        && st.key_mask & 1u64.checked_shl(u32::from(key)).unwrap_or(0) == 0)
                        || skip.as_ref().is_some_and(|s| !have.intersects(s))
                    {
                        live &= !(1u64 << i);
                    }
                }
            }
            if n <= link.skip_slots.len()
                && live & (u64::MAX >> (64 - link.skip_slots.len().max(1))) == 0
            {
                return None;
            }
        }
        Some(live)
    }

    /// Runs the operator over every selected value of a link, of whose
    /// targets only those in `live` ([`Transaction::live_targets`]) can
    /// yield a value.
    fn match_link(
        &self,
        idx: usize,
        top: &'w Rule,
        link: &'w Rule,
        live: u64,
        hits: &mut Vec<Hit<'w>>,
    ) {
        let RuleBody::Match { targets, op } = &link.body else {
            return;
        };
        let skip = link.skip_bytes;
        let mut extra: Vec<&Exclusion> = Vec::new();
        for (ids, ex) in &self.removed_targets_by_id {
            if ids.iter().any(|r| r.contains(top.id)) {
                extra.push(ex);
            }
        }
        for (sel, ex) in &self.removed_targets_by_tag {
            if sel.selects(idx, top) {
                extra.push(ex);
            }
        }
        let mut ctx = LinkCheck {
            top,
            op,
            transforms: &link.actions.transforms,
            tf_path: &link.tf_path,
            tf_bytes: &link.tf_bytes,
            want_caps: link.actions.capture,
            multi: link.actions.multi_match || top.actions.multi_match,
            wants_bytes: match &op.op {
                Op::Rx(rx) => rx.has_prefilter(),
                Op::Pm(_) => true,
                _ => false,
            },
            required: if op.negated {
                None
            } else {
                op.op.required_bytes()
            },
            name: None,
        };
        let pass_over = PassOver {
            lacking: skip,
            found: match &op.op {
                Op::Rx(rx) if !op.negated => rx.prefilter().and_then(|p| p.shared()),
                _ => None,
            },
            last: link.tf_path.last().copied().unwrap_or(ROOT_NODE),
        };
        // exclusions: the rule's own `!VAR:key` plus ctl removals
        let excluded = |v: &Val<'_>| {
            targets.exclusions.iter().any(|e| e.excludes(v.var, &v.key))
                || extra.iter().any(|e| e.excludes(v.var, &v.key))
        };
        for (i, t) in targets.targets.iter().enumerate() {
            // the same for all of a stored collection at once
            if i < SKIP_SLOTS && live & (1u64 << i) == 0 {
                continue;
            }
            if extra.iter().any(|e| e.removes_target(t)) {
                continue;
            }
            ctx.name = t.fixed_name.as_deref();
            if t.count {
                let mut n = 0usize;
                self.collect(t, &mut |v| n += usize::from(!excluded(&v)));
                let mut digits = itoa::Buffer::new();
                let v = Val {
                    var: t.var,
                    key: Cow::Borrowed(""),
                    value: Cow::Borrowed(digits.format(n).as_bytes()),
                    count: true,
                    id: None,
                    bytes: ByteSet::ALL,
                    grams: None,
                };
                self.check_value(&ctx, &v, hits);
            } else {
                // A stored value lacking every byte of `skip` cannot match:
                // it is passed over before its key and exclusions are read.
                self.collect_unless(t, pass_over, &mut |v| {
                    if !excluded(&v) {
                        self.check_value(&ctx, &v, hits);
                    }
                });
            }
        }
    }

    /// Transforms one value as the link asks and runs its operator; records
    /// a hit when the (possibly negated) operator matches.
    fn check_value(&self, ctx: &LinkCheck<'w>, v: &Val<'_>, hits: &mut Vec<Hit<'w>>) {
        // The common case first: a stored value that the chain leaves as
        // it is (its bytes are then the operator's input's) and that lacks
        // every byte the operator needs.
        let root = v.id.map(|_| v.bytes);
        let last = ctx.tf_path.last().copied().unwrap_or(ROOT_NODE);
        let unchanged = root.filter(|r| self.leaves_unchanged(last, r));
        if let (Some(need), Some(root)) = (ctx.required, &root) {
            // A value the chain changes: none of its stages can hold a
            // needed byte when the value lacks them and the transformations
            // that may change it cannot introduce one (lowercase, cmdLine…).
            let may_hold = match unchanged {
                Some(_) => root.intersects(need),
                None => chain_may_hold(ctx.tf_bytes, root, need),
            };
            if !may_hold {
                return;
            }
        }
        let op = ctx.op;
        let mut caps_buf = Vec::new();
        let mut expand = |m: &Macro| self.expand_borrowed(m, ctx.top);
        // `grams`: only with the stored value itself as `input`
        let mut check = |input: &[u8],
                         bytes: Option<&ByteSet>,
                         grams: Option<&ValueFacts>,
                         caps_buf: &mut Vec<SmallBytes>| {
            let caps = if ctx.want_caps {
                Some(&mut *caps_buf)
            } else {
                None
            };
            eval_with(&op.op, input, bytes, grams, &mut expand, caps) != op.negated
        };
        let mut hit = |cur: &[u8], caps_buf: Vec<SmallBytes>| {
            let name = match ctx.name {
                Some(n) => Cow::Borrowed(n),
                None => {
                    let mut name = String::with_capacity(v.var.name().len() + v.key.len() + 1);
                    v.write_name(&mut name);
                    Cow::Owned(name)
                }
            };
            hits.push(Hit {
                name,
                value: SmallBytes::copy_of(cur),
                caps: if ctx.want_caps && !op.negated {
                    Some(caps_buf)
                } else {
                    None
                },
            })
        };
        // A stored value that the whole chain leaves as it is: every stage
        // (of a multiMatch too) is the value itself, checked once.
        if let Some(root) = unchanged {
            if check(&v.value, Some(&root), v.grams, &mut caps_buf) {
                hit(&v.value, caps_buf);
            }
            return;
        }
        // A stored value with a single check: its transformed form (and its
        // byte set for the prefilter) come from the cache.
        if let (Some(id), Some(root), false) = (v.id, root, ctx.multi) {
            let (cur, bytes) = self.transformed_from(
                id,
                &v.value,
                root,
                ctx.tf_path,
                ctx.transforms,
                ctx.wants_bytes,
            );
            let input: &[u8] = cur.as_deref().map_or(&v.value, Vec::as_slice);
            if check(input, bytes.as_ref(), None, &mut caps_buf) {
                hit(input, caps_buf);
            }
            return;
        }
        // MATCHED_VAR(S) and %{MATCHED_VAR} carry the value as the
        // operator saw it, after transformations (ModSecurity, Coraza):
        // CRS chains like 944120 test it again without `t:lowercase`.
        // A stored value's first stage is checked with its byte set (the
        // prefilter's byte tests then spare most of them the literal
        // scan), and the leading transformations it holds no trigger byte
        // of are passed over: they would leave it as it is.
        let mut cur: Cow<'_, [u8]> = Cow::Borrowed(&v.value);
        let mut matched = false;
        if ctx.multi {
            matched = check(&cur, root.as_ref(), v.grams, &mut caps_buf);
        }
        let skip = root.map_or(0, |r| {
            ctx.tf_path
                .iter()
                .take_while(|&&n| self.leaves_unchanged(n, &r))
                .count()
        });
        for tf in ctx.transforms.iter().skip(skip) {
            if matched {
                break;
            }
            if let Some(o) = changed(tf.apply(&cur), cur.len()) {
                cur = Cow::Owned(o);
                if ctx.multi && check(&cur, None, None, &mut caps_buf) {
                    matched = true;
                }
            }
        }
        if !ctx.multi && check(&cur, None, None, &mut caps_buf) {
            matched = true;
        }
        if matched {
            hit(&cur, caps_buf);
        }
    }

    /// `value` (stored, with cache id `id`) after `transforms`, whose
    /// chain-trie nodes are `path` (`None` when they leave it unchanged),
    /// and, when `want_bytes`, the result's byte set. Every prefix of the
    /// chain is cached on the way.
    ///
    /// `root` is the byte set of `value`. Most values hold none of the
    /// bytes that would make the chain change them: they pass through it as
    /// they are, with the byte set of the stored value, without applying or
    /// caching anything.
    fn transformed_from(
        &self,
        id: u64,
        value: &[u8],
        root: ByteSet,
        path: &[u32],
        transforms: &[Transform],
        want_bytes: bool,
    ) -> (Option<Arc<Vec<u8>>>, Option<ByteSet>) {
        let last = path.last().copied().unwrap_or(ROOT_NODE);
        let unchanged = |node: &u32| self.leaves_unchanged(*node, &root);
        if unchanged(&last) {
            return (None, want_bytes.then_some(root));
        }
        // the leading transformations that leave it unchanged
        let skip = path.iter().take_while(|n| unchanged(n)).count();
        let mut cache = self.tf_cache.borrow_mut();
        if let Some(e) = cache.get_mut(&(id, last)) {
            if want_bytes && e.bytes.is_none() {
                e.bytes = Some(e.value.as_deref().map_or(root, |v| ByteSet::of(v)));
            }
            return (e.value.clone(), e.bytes);
        }
        // the longest prefix of the chain already computed
        let mut from = skip;
        let mut cur: Option<Arc<Vec<u8>>> = None;
        for (k, node) in path.iter().enumerate().skip(skip).rev() {
            if let Some(e) = cache.get(&(id, *node)) {
                cur = e.value.clone();
                from = k + 1;
                break;
            }
        }
        for (tf, node) in transforms.iter().zip(path).skip(from) {
            let input: &[u8] = cur.as_deref().map_or(value, Vec::as_slice);
            let mut cost = CACHE_ENTRY_COST;
            if let Some(o) = changed(tf.apply(input), input.len()) {
                cost += o.len();
                cur = Some(self.shared(o));
            }
            if self.charge_cache(cost) {
                cache.insert(
                    (id, *node),
                    Cached {
                        value: cur.clone(),
                        bytes: None,
                    },
                );
            }
        }
        let bytes = want_bytes.then(|| cur.as_deref().map_or(root, |v| ByteSet::of(v)));
        if let Some(e) = cache.get_mut(&(id, last)) {
            e.bytes = bytes;
        }
        (cur, bytes)
    }

    /// `v` as a result the cache can share between entries, in an emptied
    /// shell of an earlier one when there is one (one allocation fewer).
    fn shared(&self, v: Vec<u8>) -> Arc<Vec<u8>> {
        let shell = self
            .tf_shells
            .try_borrow_mut()
            .ok()
            .and_then(|mut s| s.pop());
        match shell {
            Some(mut shell) => match Arc::get_mut(&mut shell) {
                Some(slot) => {
                    *slot = v;
                    shell
                }
                None => Arc::new(v),
            },
            None => Arc::new(v),
        }
    }

    /// True when the chain up to `node` leaves a value holding `bytes` as
    /// it is (it lacks every trigger byte of the chain's transformations).
    fn leaves_unchanged(&self, node: u32, bytes: &ByteSet) -> bool {
        self.waf
            .tf_triggers
            .get(node as usize)
            .copied()
            .flatten()
            .is_some_and(|t| !t.intersects(bytes))
    }

    /// Takes `cost` bytes from the cache's budget; false (do not cache)
    /// when the budget is spent. Hostile requests (many large values that
    /// every transformation changes) then cost time, not memory: what is
    /// not cached is computed again, as without a cache.
    fn charge_cache(&self, cost: usize) -> bool {
        let used = self.tf_cache_bytes.get().saturating_add(cost);
        if used > CACHE_BUDGET {
            return false;
        }
        self.tf_cache_bytes.set(used);
        true
    }

    /// Hands every value `t` selects to `out`, in collection order.
    fn collect<'a>(&'a self, t: &Target, out: &mut impl FnMut(Val<'a>)) {
        self.collect_unless(t, PassOver::NONE, out)
    }

    /// [`Transaction::collect`], passing over the stored values that
    /// [`PassOver`] rules out.
    fn collect_unless<'a>(&'a self, t: &Target, pass: PassOver<'_>, out: &mut impl FnMut(Val<'a>)) {
        let lacks = |b: &ByteSet| pass.lacking.is_some_and(|s| !b.intersects(&s));
        // after the key test: the scan is for values the target selects
        let absent = |b: &ByteSet, facts: &ValueFacts, value: &[u8]| {
            pass.found.is_some_and(|(index, at)| {
                self.leaves_unchanged(pass.last, b) && !facts.found_in(index, value).has(at)
            })
        };
        // A value of a map collection (TX, persistent): no slot, so no id
        // and no byte set.
        let map_val = |k: &'a str, v: &'a [u8]| Val {
            var: t.var,
            key: Cow::Borrowed(k),
            value: Cow::Borrowed(v),
            count: false,
            id: None,
            bytes: ByteSet::ALL,
            grams: None,
        };
        let push_sorted = |out: &mut dyn FnMut(Val<'a>), selected: Vec<(&'a str, &'a [u8])>| {
            for (k, v) in selected {
                out(map_val(k, v));
            }
        };
        match t.var.kind() {
            // setvar stores TX keys lowercased, as key selectors are.
            Kind::Tx => match &t.selector {
                Selector::Key(k) => {
                    if let Some((k, v)) = self.tx_entry(k, t.tx_id) {
                        out(map_val(k, v));
                    }
                }
                sel => push_sorted(out, self.tx_sorted(sel, t.tx_selected.as_deref())),
            },
            Kind::Persist => {
                let map = self.persist.get(&t.var);
                match (&t.selector, map) {
                    (_, None) => {}
                    (Selector::Key(k), Some(m)) => {
                        if let Some((k, v)) = m.get_key_value(k.as_str()) {
                            out(map_val(k.as_ref(), v));
                        }
                    }
                    (_, Some(m)) => {
                        // in key order, as ModSecurity lists a collection
                        let mut selected: Vec<(&'a str, &'a [u8])> = m
                            .iter()
                            .filter(|(k, _)| t.selector.matches(k))
                            .map(|(k, v)| (k.as_ref(), &**v))
                            .collect();
                        selected.sort_unstable_by(|a, b| a.0.cmp(b.0));
                        push_sorted(out, selected)
                    }
                }
            }
            Kind::Keyed => {
                let g = self.generation(t.var);
                for (pos, e) in self.get_slot(t.var).iter().enumerate() {
                    // one key by its id, when it has one
                    if t.key_id.is_some_and(|id| e.key_id != id) {
                        continue;
                    }
                    if !lacks(&e.value_bytes)
                        && (t.key_id.is_some() || t.selector.matches(&e.key))
                        && !absent(&e.value_bytes, &e.value_grams, &e.value)
                    {
                        out(Val {
                            var: t.var,
                            key: Cow::Borrowed(&e.key),
                            value: Cow::Borrowed(&e.value),
                            count: false,
                            id: value_id(t.var, g, pos),
                            bytes: e.value_bytes,
                            grams: Some(&e.value_grams),
                        });
                    }
                }
            }
            Kind::Names(src) => {
                let g = self.generation(src);
                for (pos, e) in self.get_slot(src).iter().enumerate() {
                    if t.key_id.is_some_and(|id| e.key_id != id) {
                        continue;
                    }
                    if !lacks(&e.key_bytes)
                        && (t.key_id.is_some() || t.selector.matches(&e.key))
                        && !absent(&e.key_bytes, &e.key_grams, e.key.as_bytes())
                    {
                        out(Val {
                            var: t.var,
                            key: Cow::Borrowed(&e.key),
                            value: Cow::Borrowed(e.key.as_bytes()),
                            count: false,
                            id: value_id(t.var, g, pos),
                            bytes: e.key_bytes,
                            grams: Some(&e.key_grams),
                        });
                    }
                }
            }
            Kind::Scalar => {
                let g = self.generation(t.var);
                for (pos, e) in self.get_slot(t.var).iter().enumerate() {
                    if lacks(&e.value_bytes) || absent(&e.value_bytes, &e.value_grams, &e.value) {
                        continue;
                    }
                    out(Val {
                        var: t.var,
                        key: Cow::Borrowed(""),
                        value: Cow::Borrowed(&e.value),
                        count: false,
                        id: value_id(t.var, g, pos),
                        bytes: e.value_bytes,
                        grams: Some(&e.value_grams),
                    });
                }
            }
            Kind::Matched => match t.var {
                VarName::MatchedVar | VarName::MatchedVarName => {
                    if let Some((n, v)) = self.matched_var() {
                        let value: &[u8] = if t.var == VarName::MatchedVar {
                            v
                        } else {
                            n.as_bytes()
                        };
                        out(Val {
                            var: t.var,
                            key: Cow::Borrowed(""),
                            value: Cow::Borrowed(value),
                            count: false,
                            id: None,
                            bytes: ByteSet::ALL,
                            grams: None,
                        });
                    }
                }
                _ => {
                    for (n, v) in &self.matched_vars {
                        if t.selector.matches(n) {
                            let value: &[u8] = if t.var == VarName::MatchedVars {
                                v
                            } else {
                                n.as_bytes()
                            };
                            out(Val {
                                var: t.var,
                                key: Cow::Borrowed(n),
                                value: Cow::Borrowed(value),
                                count: false,
                                id: None,
                                bytes: ByteSet::ALL,
                                grams: None,
                            });
                        }
                    }
                }
            },
        }
    }

    fn lookup(&self, seg: &Seg, rule: &Rule) -> Option<Vec<u8>> {
        match seg {
            Seg::Lit(s) => Some(s.as_bytes().to_vec()),
            Seg::Rule(field) => match field.as_str() {
                "id" => Some(rule.id.to_string().into_bytes()),
                "msg" => rule
                    .actions
                    .msg
                    .as_ref()
                    .and_then(|m| m.as_literal())
                    .map(|s| s.as_bytes().to_vec()),
                "severity" => rule.actions.severity.map(|s| s.to_string().into_bytes()),
                "ver" => rule.actions.ver.as_ref().map(|s| s.as_bytes().to_vec()),
                "phase" => Some(rule.phase.to_string().into_bytes()),
                _ => None,
            },
            Seg::Var(var, key, _) => {
                let sel = match key {
                    Some(k) => Selector::Key(k.clone()),
                    None => Selector::All,
                };
                let t = Target {
                    var: *var,
                    selector: sel,
                    count: false,
                    fixed_name: None,
                    tx_id: None,
                    tx_selected: None,
                    key_id: None,
                };
                let mut first = None;
                self.collect(&t, &mut |v| {
                    if first.is_none() {
                        first = Some(v.value.into_owned());
                    }
                });
                first
            }
        }
    }

    fn expand(&self, m: &Macro, rule: &Rule) -> Vec<u8> {
        let mut out = Vec::with_capacity(32);
        self.expand_into(m, rule, &mut out);
        out
    }

    /// [`Transaction::expand`], appending to `out`.
    fn expand_into(&self, m: &Macro, rule: &Rule, out: &mut Vec<u8>) {
        for seg in &m.segs {
            match seg {
                Seg::Lit(s) => out.extend_from_slice(s.as_bytes()),
                // TX (most macros) straight from the map, without a copy
                Seg::Var(VarName::Tx, key, id) => {
                    let value = match key {
                        Some(k) => self.tx_entry(k, *id).map(|e| e.1),
                        // the first in key order
                        None => self.tx_sorted(&Selector::All, None).first().map(|e| e.1),
                    };
                    if let Some(v) = value {
                        out.extend_from_slice(v);
                    }
                }
                Seg::Var(var, key, _) if var.kind() == Kind::Persist => {
                    let map = self.persist.get(var);
                    let value = match key {
                        Some(k) => map.and_then(|m| m.get(k.as_str())),
                        // the first in key order
                        None => map.and_then(|m| m.iter().min_by(|a, b| a.0.cmp(b.0)).map(|e| e.1)),
                    };
                    if let Some(v) = value {
                        out.extend_from_slice(v);
                    }
                }
                other => {
                    if let Some(v) = self.lookup(other, rule) {
                        out.extend_from_slice(&v);
                    }
                }
            }
        }
    }

    /// [`Transaction::expand`], borrowing the value of a lone `%{TX.key}`
    /// (operator arguments such as `%{tx.restricted_headers_basic}`).
    fn expand_borrowed<'s>(&'s self, m: &Macro, rule: &Rule) -> Cow<'s, [u8]> {
        if let [Seg::Var(VarName::Tx, Some(k), id)] = m.segs.as_slice() {
            return Cow::Borrowed(self.tx_entry(k, *id).map_or(&[][..], |e| e.1));
        }
        Cow::Owned(self.expand(m, rule))
    }

    /// A macro's value as a number (`atoi`), reading a lone `%{TX.key}`
    /// in place.
    fn macro_int(&self, m: &Macro, rule: &Rule) -> i64 {
        if let Some(lit) = m.as_literal() {
            return atoi(lit.as_bytes());
        }
        if let [Seg::Var(VarName::Tx, Some(k), id)] = m.segs.as_slice() {
            return self.tx_entry(k, *id).map_or(0, |e| atoi(e.1));
        }
        atoi(&self.expand(m, rule))
    }

    fn run_actions(&mut self, top: &Rule, link: &'w Rule) {
        for sv in &link.actions.setvars {
            let key: Cow<'w, str> = match sv.key.as_literal() {
                Some(k) if sv.key_id.is_some() || !k.bytes().any(|b| b.is_ascii_uppercase()) => {
                    Cow::Borrowed(k)
                }
                _ => {
                    let mut k = self.expand(&sv.key, top);
                    k.make_ascii_lowercase();
                    Cow::Owned(text(k))
                }
            };
            // Values are written into the variable's existing buffer: CRS
            // sets and adds to the same hundred or so TX variables on every
            // request.
            match &sv.op {
                SetOp::Delete => self.var_ref(sv.coll, sv.key_id, key).remove(),
                SetOp::Set(m) => match m.as_literal() {
                    Some(lit) => self.var_ref(sv.coll, sv.key_id, key).put(lit.as_bytes()),
                    None => {
                        let mut v = std::mem::take(&mut self.scratch);
                        v.clear();
                        self.expand_into(m, top, &mut v);
                        self.var_ref(sv.coll, sv.key_id, key).put(&v);
                        self.scratch = v;
                    }
                },
                SetOp::Add(m) | SetOp::Sub(m) => {
                    let delta = self.macro_int(m, top);
                    let var = self.var_ref(sv.coll, sv.key_id, key);
                    let cur = var.get().map_or(0, |v| atoi(v));
                    let new = if matches!(sv.op, SetOp::Add(_)) {
                        cur.saturating_add(delta)
                    } else {
                        cur.saturating_sub(delta)
                    };
                    var.put(itoa::Buffer::new().format(new).as_bytes());
                }
            }
        }
        for ctl in &link.actions.ctls {
            self.apply_ctl(ctl);
        }
    }

    /// Applies the caller's exclusions before any rule runs: the same
    /// `ctl` actions a rule would apply, with tags looked up in the tables
    /// [`Exclusions::resolve`] worked out for this engine, if it did.
    pub(crate) fn exclude(&mut self, ex: &Exclusions) {
        let tables = ex.tables_for(self.waf).unwrap_or(&[]);
        for (i, ctl) in ex.ctls.iter().enumerate() {
            let table = tables.get(i).and_then(Option::as_ref);
            match (ctl, table) {
                (Ctl::RuleRemoveByTag(_), Some(t)) => {
                    self.removed_tags.push(TagSelect::Shared(Arc::clone(t)))
                }
                (Ctl::RuleRemoveTargetByTag(_, e), Some(t)) => self
                    .removed_targets_by_tag
                    .push((TagSelect::Shared(Arc::clone(t)), e.clone())),
                _ => self.apply_ctl(ctl),
            }
        }
    }

    fn apply_ctl(&mut self, ctl: &Ctl) {
        match ctl {
            Ctl::RuleEngine(m) => self.engine = *m,
            Ctl::RuleRemoveById(r) => self.removed_ids.extend(r.iter().copied()),
            Ctl::RuleRemoveByTag(re) => {
                let t = self.tag_select(re);
                self.removed_tags.push(t);
            }
            Ctl::RuleRemoveTargetById(ids, ex) => {
                self.removed_targets_by_id.push((ids.clone(), ex.clone()))
            }
            Ctl::RuleRemoveTargetByTag(re, ex) => {
                let t = self.tag_select(re);
                self.removed_targets_by_tag.push((t, ex.clone()))
            }
            Ctl::RequestBodyProcessor(p) => {
                if self.phase == 1 {
                    self.body_processor = Some(*p);
                    self.set(VarName::ReqbodyProcessor, p.name().as_bytes());
                }
            }
            Ctl::RequestBodyAccess(b) => self.body_access = *b,
            Ctl::ForceRequestBodyVariable(b) => self.force_body_var = *b,
            Ctl::ResponseBodyAccess(b) => self.response_body_access = *b,
            Ctl::Ignored => {}
        }
    }

    /// A TX value and its key, by the key's id when the rules name it (as
    /// read from a rule) or else by the key itself.
    fn tx_entry(&self, key: &str, id: Option<u32>) -> Option<(&str, &[u8])> {
        let id = id.or_else(|| self.waf.tx_ids.get(key).copied());
        match id {
            Some(id) => {
                let v = self.tx_named.get(id as usize)?.as_ref()?;
                let k = self.waf.tx_keys.get(id as usize)?;
                Some((k.as_str(), &**v))
            }
            None => self.tx.get_key_value(key).map(|(k, v)| (k.as_ref(), &**v)),
        }
    }

    /// A TX value by key.
    fn tx_get(&self, key: &str) -> Option<&[u8]> {
        self.tx_entry(key, None).map(|e| e.1)
    }

    /// The TX variables `sel` selects, in key order (as ModSecurity lists
    /// a collection). `named`, when given, are the ids of the keys the
    /// rules name that `sel` selects, in key order ([`Target::tx_selected`]).
    fn tx_sorted(&self, sel: &Selector, named: Option<&[u32]>) -> Vec<(&str, &[u8])> {
        let value = |id: usize| self.tx_named.get(id).and_then(Option::as_ref);
        let mut selected: Vec<(&str, &[u8])> = match named {
            Some(ids) => ids
                .iter()
                .filter_map(|&id| {
                    let v = value(id as usize)?;
                    Some((self.waf.tx_keys.get(id as usize)?.as_str(), &**v))
                })
                .collect(),
            None => self
                .waf
                .tx_keys
                .iter()
                .enumerate()
                .filter_map(|(id, k)| Some((k.as_str(), &**value(id)?)))
                .filter(|(k, _)| sel.matches(k))
                .collect(),
        };
        let before = selected.len();
        selected.extend(
            self.tx
                .iter()
                .map(|(k, v)| (k.as_ref(), &**v))
                .filter(|(k, _)| sel.matches(k)),
        );
        if named.is_none() || selected.len() > before {
            selected.sort_unstable_by(|a, b| a.0.cmp(b.0));
        }
        selected
    }

    /// Where `setvar` writes: a TX variable the rules name by its id, any
    /// other by its key.
    fn var_ref(&mut self, coll: VarName, id: Option<u32>, key: Cow<'w, str>) -> VarRef<'_, 'w> {
        if coll == VarName::Tx {
            let id = id.or_else(|| self.waf.tx_ids.get(key.as_ref()).copied());
            return match id.and_then(|id| self.tx_named.get_mut(id as usize)) {
                Some(v) => VarRef::Named(v),
                None => VarRef::Map(&mut self.tx, key),
            };
        }
        VarRef::Map(self.collection(coll), key)
    }

    fn collection(&mut self, coll: VarName) -> &mut VarMap<'w> {
        if coll == VarName::Tx {
            &mut self.tx
        } else {
            let seed = self.waf.hash_seed;
            self.persist
                .entry(coll)
                .or_insert_with(|| VarMap::with_hasher(SeededState(seed)))
        }
    }
}

/// A variable `setvar` writes.
enum VarRef<'a, 'w> {
    /// A TX variable the rules name.
    Named(&'a mut Option<SmallBytes>),
    /// A variable of a map, by key.
    Map(&'a mut VarMap<'w>, Cow<'w, str>),
}

impl VarRef<'_, '_> {
    fn get(&self) -> Option<&SmallBytes> {
        match self {
            VarRef::Named(v) => v.as_ref(),
            VarRef::Map(m, k) => m.get(k.as_ref()),
        }
    }

    fn put(self, value: &[u8]) {
        match self {
            VarRef::Named(v) => store_named(v, value),
            VarRef::Map(m, k) => store(m, k, value),
        }
    }

    fn remove(self) {
        match self {
            VarRef::Named(v) => *v = None,
            VarRef::Map(m, k) => {
                m.remove(k.as_ref());
            }
        }
    }
}

/// Sets a named TX variable to `value`, reusing the buffer it has.
fn store_named(slot: &mut Option<SmallBytes>, value: &[u8]) {
    match slot {
        Some(v) => v.set(value),
        None => *slot = Some(SmallBytes::copy_of(value)),
    }
}

/// Sets `key` in `map` to `value`, reusing the buffer of an existing value.
fn store<'w>(map: &mut VarMap<'w>, key: Cow<'w, str>, value: &[u8]) {
    match map_entry(map, key) {
        MapEntry::Occupied(mut e) => e.get_mut().set(value),
        MapEntry::Vacant(e) => {
            e.insert(SmallBytes::copy_of(value));
        }
    }
}

/// `key`'s entry in `map`, which takes room at its first key for the
/// variables a request usually adds (CRS: one `header_name_*` per header)
/// at once, instead of growing by doubling.
fn map_entry<'m, 'w>(
    map: &'m mut VarMap<'w>,
    key: Cow<'w, str>,
) -> MapEntry<'m, Cow<'w, str>, SmallBytes> {
    if map.capacity() == 0 {
        map.reserve(16);
    }
    map.entry(key)
}

/// The result of a transformation if it changed the value (of length
/// `len`): an owned result, or a shorter slice (`trim`).
fn changed(out: Cow<'_, [u8]>, len: usize) -> Option<Vec<u8>> {
    match out {
        Cow::Owned(o) => Some(o),
        Cow::Borrowed(b) if b.len() != len => Some(b.to_vec()),
        Cow::Borrowed(_) => None,
    }
}

/// Decodes `%HH` only (no `+`, no `%uHHHH`), leaving bad escapes as sent.
fn percent_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while let Some(&c) = s.get(i) {
        let hex = |j: usize| s.get(j).and_then(|&b| (b as char).to_digit(16));
        if let (b'%', Some(h), Some(l)) = (c, hex(i + 1), hex(i + 2)) {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().take_while(|c| c.is_ascii_whitespace()).count();
    let s = s.get(start..).unwrap_or(&[]);
    let end = s.len()
        - s.iter()
            .rev()
            .take_while(|c| c.is_ascii_whitespace())
            .count();
    s.get(..end).unwrap_or(&[])
}

#[cfg(test)]
mod tests {
    use super::path_and_query;
    use crate::{Request, Waf};

    fn ids(rules: &str, req: &Request) -> Vec<u64> {
        let waf = Waf::from_str_named("t.conf", rules).unwrap();
        waf.evaluate(req).matched_ids
    }

    #[test]
    fn results_stay_right_when_the_cache_budget_is_spent() {
        // ~5 MiB of arguments that lowercase changes: past the budget,
        // values are transformed without being cached
        let rules = r#"
SecRule ARGS "@rx ^a+$" "id:1,phase:2,pass,t:none,t:lowercase"
SecRule ARGS "@rx ^A+$" "id:2,phase:2,pass,t:none"
SecRule ARGS:last "@rx ^zz$" "id:3,phase:2,pass,t:none,t:lowercase"
SecRule ARGS:last "@rx ^zz$" "id:4,phase:2,pass,t:none,t:lowercase"
"#;
        let waf = Waf::from_str_named("t.conf", rules).unwrap();
        let mut body = String::new();
        for i in 0..40 {
            body.push_str(&format!("a{i}={}&", "A".repeat(128 * 1024)));
        }
        body.push_str("last=ZZ");
        let req = Request::new("POST", "/")
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body);
        assert_eq!(waf.evaluate(&req).matched_ids, [1, 2, 3, 4]);
    }

    #[test]
    fn kept_buffers_carry_nothing_into_the_next_transaction() {
        let rules = r#"
SecRule ARGS "@rx ^abc$" "id:1,phase:1,pass,t:none,t:lowercase"
SecRule ARGS_NAMES "@rx ^n$" "id:2,phase:1,pass,t:none,t:lowercase"
"#;
        let waf = Waf::from_str_named("t.conf", rules).unwrap();
        let many: String = (0..400).map(|i| format!("k{i}=ABC&")).collect();
        for _ in 0..3 {
            // the same value ids (variable, generation, position) each time
            assert_eq!(
                waf.evaluate(&Request::new("GET", "/?N=ABC")).matched_ids,
                [1, 2]
            );
            assert!(waf
                .evaluate(&Request::new("GET", "/?x=XYZ"))
                .matched_ids
                .is_empty());
            assert_eq!(
                waf.evaluate(&Request::new("GET", "/?x=aBc")).matched_ids,
                [1]
            );
            let big = waf.evaluate(&Request::new("GET", &format!("/?{many}")));
            assert_eq!(big.matched_ids, [1]);
            assert!(waf
                .evaluate(&Request::new("GET", "/"))
                .matched_ids
                .is_empty());
        }
    }

    /// The current thread's pool: sets of buffers and tables kept.
    fn pooled() -> (usize, usize) {
        super::SPARES.with(|p| {
            let p = p.borrow();
            (p.spares.len(), p.tables.len())
        })
    }

    #[test]
    fn open_transactions_each_give_their_buffers_back_however_they_end() {
        let rules = r#"
SecRuleEngine On
SecResponseBodyAccess On
SecRule ARGS "@rx attack" "id:1,phase:1,deny,status:403,t:none,t:lowercase"
SecRule RESPONSE_BODY "@contains leak" "id:2,phase:4,deny,status:403"
"#;
        let waf = Waf::from_str_named("t.conf", rules).unwrap();
        // a thread of its own: the pool starts empty
        std::thread::spawn(move || {
            let ok = Request::new("GET", "/?q=hello");
            let bad = Request::new("GET", "/?q=ATTACK");
            // Three open at once, as the edge holds them while the
            // upstream answers: each gives its transformation cache back
            // when its request phases end, and the next one takes it.
            let a = waf.inspect(&ok, None);
            assert_eq!(pooled(), (0, 1));
            let b = waf.inspect(&bad, None);
            let c = waf.inspect(&ok, None);
            assert_eq!(pooled(), (0, 1));
            assert_eq!(b.request_verdict().matched_ids, [1]);
            // the blocked one is dropped without a response, the others
            // finish: all three sets of buffers are kept
            drop(b);
            let body = |s: &str| {
                crate::request::Response::new(200)
                    .header("Content-Type", "text/html")
                    .body(s)
            };
            assert!(a.finish(&body("fine")).matched_ids.is_empty());
            assert_eq!(c.finish(&body("a leak")).matched_ids, [2]);
            assert_eq!(pooled().0, 3);
            // the next ones take them, and see nothing of the last ones
            let d = waf.inspect(&ok, None);
            assert!(d.request_verdict().matched_ids.is_empty());
            assert_eq!(pooled().0, 2);
            assert!(d.finish(&body("fine")).matched_ids.is_empty());
            assert_eq!(waf.evaluate(&bad).matched_ids, [1]);
            assert_eq!(pooled().0, 3);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_thread_keeps_a_bounded_pool() {
        let waf =
            Waf::from_str_named("t.conf", r#"SecRule ARGS "@rx x" "id:1,phase:1,pass""#).unwrap();
        std::thread::spawn(move || {
            let req = Request::new("GET", "/?q=hello");
            let open: Vec<_> = (0..super::SPARES_PER_THREAD + 6)
                .map(|_| waf.inspect(&req, None))
                .collect();
            drop(open);
            assert_eq!(pooled().0, super::SPARES_PER_THREAD);
            let bytes = super::SPARES.with(|p| p.borrow().bytes);
            assert!(bytes > 0 && bytes <= super::SPARE_POOL_BYTES);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn kept_hits_and_matched_vars_carry_nothing_over() {
        // rule 1's chain reads MATCHED_VARS, rule 2 MATCHED_VAR
        let rules = r#"
SecRule ARGS "@rx ^attack" "id:1,phase:1,pass,t:none,chain"
    SecRule MATCHED_VARS "@rx ^attack2$" "t:none"
SecRule MATCHED_VAR "@rx attack" "id:2,phase:1,pass,t:none"
"#;
        let waf = Waf::from_str_named("t.conf", rules).unwrap();
        let many: String = (0..100).map(|i| format!("k{i}=attack&")).collect();
        for _ in 0..3 {
            let hit = waf.evaluate(&Request::new("GET", "/?a=attack1&b=attack2"));
            assert_eq!(hit.matched_ids, [1, 2]);
            let big = waf.evaluate(&Request::new("GET", &format!("/?{many}")));
            assert_eq!(big.matched_ids, [2]);
            assert!(waf
                .evaluate(&Request::new("GET", "/?a=benign"))
                .matched_ids
                .is_empty());
        }
    }

    #[test]
    fn values_passed_over_for_lacking_a_links_literals() {
        // the prefilters of 1, 2, 3, 5 and 6 share the literal index; a
        // value the chain changes is never passed over, nor one offered to
        // a negated operator
        let rules = r#"
SecRule ARGS "@rx union\s+select" "id:1,phase:1,pass,t:none"
SecRule ARGS "@rx union\s+select" "id:2,phase:1,pass,t:none,t:lowercase"
SecRule ARGS|ARGS_NAMES "@rx <script" "id:3,phase:1,pass,t:none,t:urlDecode"
SecRule ARGS:q "!@rx union\s+select" "id:4,phase:1,pass,t:none"
SecRule REQUEST_HEADERS|REQUEST_HEADERS_NAMES "@rx javascript:|onerror=" "id:5,phase:1,pass,t:none"
SecRule REQUEST_URI "@rx /etc/passwd" "id:6,phase:1,pass,t:none"
"#;
        let waf = Waf::from_str_named("t.conf", rules).unwrap();
        let cases: [(Request, &[u64]); 9] = [
            (Request::new("GET", "/?q=hello"), &[4]),
            (Request::new("GET", "/?q=union%20select"), &[1, 2]),
            (Request::new("GET", "/?q=UNION%20SELECT"), &[2, 4]),
            (Request::new("GET", "/?q=hello"), &[4]),
            (Request::new("GET", "/?q=%253cscript"), &[3, 4]),
            (Request::new("GET", "/?%3Cscript=1"), &[3]),
            (
                Request::new("GET", "/").header("X", "javascript:alert(1)"),
                &[5],
            ),
            (Request::new("GET", "/").header("X", "JavaScript:"), &[]),
            (Request::new("GET", "/etc/passwd"), &[6]),
        ];
        // twice: kept entries start each transaction without facts
        for _ in 0..2 {
            for (req, want) in &cases {
                assert_eq!(waf.evaluate(req).matched_ids, *want, "{req:?}");
            }
        }
    }

    #[test]
    fn tx_comparisons_decide_as_the_full_path_does() {
        // links that compare one TX key with a number: told without set-up
        // when they fail, the full way when they hold; negated, counted,
        // unset, non-numeric and removed by a ctl
        let rules = r#"
SecAction "id:1,phase:1,pass,nolog,setvar:tx.level=2,setvar:tx.word=abc"
SecRule TX:LEVEL "@lt 2" "id:10,phase:1,pass"
SecRule TX:level "@ge 2" "id:11,phase:1,pass,setvar:tx.seen=%{MATCHED_VAR}"
SecRule TX:seen "@eq 2" "id:12,phase:1,pass"
SecRule TX:level "!@eq 2" "id:13,phase:1,pass"
SecRule TX:level "!@gt 2" "id:14,phase:1,pass"
SecRule &TX:level "@eq 0" "id:15,phase:1,pass"
SecRule &TX:level "@eq 1" "id:16,phase:1,pass"
SecRule &TX:unset "@eq 0" "id:17,phase:1,pass"
SecRule TX:unset "@eq 0" "id:18,phase:1,pass"
SecRule TX:word "@eq 0" "id:19,phase:1,pass"
SecRule TX:word "@le -1" "id:20,phase:1,pass"
SecRule ARGS:drop "@streq 1" "id:30,phase:1,pass,nolog,ctl:ruleRemoveTargetById=31;TX:level"
SecRule TX:level "@eq 2" "id:31,phase:1,pass"
SecRule &TX:level "@eq 0" "id:32,phase:1,pass,ctl:ruleRemoveTargetById=33;TX:level"
SecRule &TX:level "@eq 1" "id:33,phase:1,pass"
"#;
        let waf = Waf::from_str_named("t.conf", rules).unwrap();
        let v = waf.evaluate(&Request::new("GET", "/"));
        assert_eq!(v.matched_ids, [1, 11, 12, 14, 16, 17, 19, 31, 33]);
        let names: Vec<(u64, &str)> = v
            .matched_rules
            .iter()
            .map(|m| (m.id, m.matched_var_name.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                (11, "TX:level"),
                (12, "TX:seen"),
                (14, "TX:level"),
                (16, "&TX"),
                (17, "&TX"),
                (19, "TX:word"),
                (31, "TX:level"),
                (33, "&TX")
            ]
        );
        // rule 31 loses its only target to rule 30's ctl
        let v = waf.evaluate(&Request::new("GET", "/?drop=1"));
        assert_eq!(v.matched_ids, [1, 11, 12, 14, 16, 17, 19, 30, 33]);
    }

    #[test]
    fn matches_carry_the_tags_updates_added() {
        let rules = r#"
SecRule ARGS "@streq x" "id:1,phase:1,pass,log,tag:'first'"
SecRuleUpdateActionById 1 "tag:'second'"
"#;
        let waf = Waf::from_str_named("t.conf", rules).unwrap();
        let v = waf.evaluate(&Request::new("GET", "/?a=x"));
        let m = v.matched_rules.first().unwrap();
        assert_eq!(&*m.tags, ["first", "second"]);
    }

    #[test]
    fn recycled_buffers_are_empty_and_keep_their_room() {
        let v: Vec<(std::borrow::Cow<'_, str>, u64)> = vec![("a".into(), 1); 40];
        let r: Vec<(std::borrow::Cow<'static, str>, u64)> = super::recycle(v);
        assert!(r.is_empty());
        assert!(r.capacity() >= 40);
    }

    #[test]
    fn multi_match_checks_every_stage_of_a_stored_value() {
        let rules = r#"
SecRule REQUEST_HEADERS:X "@rx ^ab c$" "id:1,phase:1,pass,multiMatch,t:none,t:urlDecode,t:lowercase,t:removeWhitespace"
SecRule REQUEST_HEADERS:X "@rx ^abc$" "id:2,phase:1,pass,multiMatch,t:none,t:urlDecode,t:lowercase,t:removeWhitespace"
SecRule REQUEST_HEADERS:X "@rx ^Ab%20c$" "id:3,phase:1,pass,multiMatch,t:none,t:urlDecode,t:lowercase"
"#;
        let with = |x: &str| Request::new("GET", "/").header("X", x);
        assert_eq!(ids(rules, &with("Ab c")), [1, 2]);
        assert_eq!(ids(rules, &with("ab c")), [1, 2]);
        assert_eq!(ids(rules, &with("Ab%20c")), [1, 2, 3]);
        assert_eq!(ids(rules, &with("abc")), [2]);
    }

    #[test]
    fn rules_sharing_a_chain_prefix_see_their_own_chain() {
        let rules = r#"
SecRule ARGS "@rx ^abc$" "id:1,phase:1,pass,t:none,t:lowercase"
SecRule ARGS "@rx ^ABC$" "id:2,phase:1,pass,t:none"
SecRule ARGS "@rx ^abc$" "id:3,phase:1,pass,t:none,t:lowercase,t:trim"
SecRule ARGS "@rx ^ abc $" "id:4,phase:1,pass,t:none,t:lowercase"
SecRule ARGS "@rx ^abc$" "id:5,phase:1,pass,t:none,t:lowercase"
"#;
        assert_eq!(ids(rules, &Request::new("GET", "/?a=ABC")), [1, 2, 3, 5]);
        assert_eq!(ids(rules, &Request::new("GET", "/?a=+ABC+")), [3, 4]);
    }

    #[test]
    fn a_changed_value_is_transformed_again() {
        // REQBODY_PROCESSOR is replaced by the ctl between two rules that
        // ask for the same chain on it.
        let rules = r#"
SecRule REQBODY_PROCESSOR "@streq urlencoded" "id:1,phase:1,pass,t:none,t:lowercase"
SecAction "id:2,phase:1,pass,ctl:requestBodyProcessor=JSON"
SecRule REQBODY_PROCESSOR "@streq json" "id:3,phase:1,pass,t:none,t:lowercase"
SecRule ARGS "@rx ^x$" "id:4,phase:1,pass,t:none,t:lowercase"
SecRule ARGS "@rx ^y$" "id:5,phase:2,pass,t:none,t:lowercase"
"#;
        let req = Request::new("POST", "/?q=X")
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body("b=Y");
        assert_eq!(ids(rules, &req), [1, 2, 3, 4]);
        // the body arguments arrive in phase 2, after ARGS was cached
        let rules = rules.replace("ctl:requestBodyProcessor=JSON", "nolog");
        assert_eq!(ids(&rules, &req), [1, 2, 4, 5]);
    }

    #[test]
    fn collections_skipped_by_their_bytes_still_match_when_they_should() {
        let rules = r#"
SecRule ARGS "@rx <x" "id:1,phase:1,pass,t:none,t:urlDecodeUni"
SecRule ARGS|!ARGS:b "@rx <x" "id:2,phase:1,pass,t:none,t:urlDecodeUni"
SecRule ARGS "!@rx <x" "id:3,phase:1,pass,t:none,t:urlDecodeUni"
SecRule ARGS_NAMES "@rx <x" "id:4,phase:1,pass,t:none,t:urlDecodeUni"
SecRule ARGS "@rx <x" "id:5,phase:1,pass,t:none,multiMatch"
"#;
        // `<` appears only after decoding, in the value of `b`
        let req = Request::new("GET", "/?a=1&b=%253cx");
        assert_eq!(ids(rules, &req), [1, 3]);
        let req = Request::new("GET", "/?a=1&%253cx=2");
        assert_eq!(ids(rules, &req), [3, 4]);
        let req = Request::new("GET", "/?a=%3Cx");
        assert_eq!(ids(rules, &req), [1, 2, 5]);
    }

    #[test]
    fn prefiltered_operators_still_match_through_transformations() {
        let rules = r#"
SecRule ARGS "@rx (?i)<script" "id:1,phase:1,pass,t:none,t:urlDecodeUni,t:htmlEntityDecode"
SecRule ARGS "@pm evil.example" "id:2,phase:1,pass,t:none,t:urlDecodeUni,t:lowercase"
SecRule ARGS "!@rx union" "id:3,phase:1,pass,t:none"
"#;
        // `&lt;` becomes `<` only after the transformations
        assert_eq!(
            ids(rules, &Request::new("GET", "/?q=%26lt;SCRIPT%26gt;")),
            [1, 3]
        );
        assert_eq!(
            ids(rules, &Request::new("GET", "/?q=EVIL%252Eexample")),
            [2, 3]
        );
        assert!(ids(rules, &Request::new("GET", "/?q=union")).is_empty());
    }

    #[test]
    fn remote_addresses_are_written_as_display_does() {
        let rules = r#"
SecRule REMOTE_ADDR "@rx ^(.*)$" "id:1,phase:1,pass,capture,log,logdata:%{TX.1}"
SecRule REMOTE_PORT "@rx ^(.*)$" "id:2,phase:1,pass,capture,log,logdata:%{TX.1}"
"#;
        let waf = Waf::from_str_named("t.conf", rules).unwrap();
        for addr in [
            "0.0.0.0",
            "127.0.0.1",
            "10.200.3.45",
            "255.255.255.255",
            "::1",
        ] {
            let mut req = Request::new("GET", "/");
            req.remote_addr = addr.parse().unwrap();
            req.remote_port = 65535;
            let v = waf.evaluate(&req);
            let data: Vec<&str> = v.matched_rules.iter().map(|m| m.data.as_str()).collect();
            assert_eq!(data, [addr, "65535"]);
        }
    }

    #[test]
    fn every_ctl_target_removal_applies() {
        // one, two and three removals (by id and by tag) for the same rule
        let rules = r#"
SecRuleEngine On
SecRule ARGS:one "@streq 1" "id:1,phase:1,pass,nolog,ctl:ruleRemoveTargetById=10;ARGS:a"
SecRule ARGS:two "@streq 1" "id:2,phase:1,pass,nolog,tag:t,ctl:ruleRemoveTargetByTag=^x$;ARGS:b"
SecRule ARGS:three "@streq 1" "id:3,phase:1,pass,nolog,ctl:ruleRemoveTargetById=10;ARGS:c"
SecRule ARGS "@streq bad" "id:10,phase:1,pass,nolog,tag:x"
"#;
        let req = |q: &str| Request::new("GET", &format!("/?{q}"));
        assert_eq!(ids(rules, &req("a=bad")), vec![10]);
        assert_eq!(ids(rules, &req("one=1&a=bad")), vec![1]);
        assert_eq!(ids(rules, &req("one=1&a=bad&b=bad")), vec![1, 10]);
        assert_eq!(ids(rules, &req("one=1&two=1&a=bad&b=bad")), vec![1, 2]);
        assert_eq!(
            ids(rules, &req("one=1&two=1&three=1&a=bad&b=bad&c=bad")),
            vec![1, 2, 3]
        );
        assert_eq!(
            ids(rules, &req("one=1&two=1&three=1&a=bad&b=bad&c=bad&d=bad")),
            vec![1, 2, 3, 10]
        );
    }

    #[test]
    fn fixed_hit_names_are_the_names_values_are_matched_as() {
        // MATCHED_VAR_NAME as the next link sees it, for each kind of
        // target whose name is fixed at load, and for one that is not
        let rules = r#"
SecRuleEngine On
SecAction "id:1,phase:1,pass,nolog,setvar:tx.Some_Key=5"
SecRule TX:SOME_KEY "@eq 5" "id:2,phase:1,pass,nolog,chain"
  SecRule MATCHED_VAR_NAME "@streq TX:some_key" "t:none"
SecRule &ARGS:a "@eq 2" "id:3,phase:1,pass,nolog,chain"
  SecRule MATCHED_VAR_NAME "@streq &ARGS" "t:none"
SecRule REQUEST_METHOD "@streq GET" "id:4,phase:1,pass,nolog,chain"
  SecRule MATCHED_VAR_NAME "@streq REQUEST_METHOD" "t:none"
SecRule ARGS:A "@streq x" "id:5,phase:1,pass,nolog,chain"
  SecRule MATCHED_VAR_NAME "@streq ARGS:a" "t:none"
SecRule &TX:some_key "@eq 1" "id:6,phase:1,pass,nolog,chain"
  SecRule MATCHED_VARS_NAMES "@streq &TX" "t:none"
"#;
        assert_eq!(
            ids(rules, &Request::new("GET", "/?a=x&a=y")),
            vec![1, 2, 3, 4, 5, 6]
        );
    }

    #[test]
    fn counts_are_written_in_decimal() {
        // `&VAR` values are the count's decimal text, as `to_string` writes it
        let rules = r#"
SecRule &ARGS "@streq 0" "id:1,phase:1,pass,nolog"
SecRule &ARGS "@streq 7" "id:2,phase:1,pass,nolog"
SecRule &ARGS "@streq 12" "id:3,phase:1,pass,nolog"
"#;
        assert_eq!(ids(rules, &Request::new("GET", "/")), vec![1]);
        let seven: Vec<String> = (0..7).map(|i| format!("a{i}=x")).collect();
        assert_eq!(
            ids(
                rules,
                &Request::new("GET", &format!("/?{}", seven.join("&")))
            ),
            vec![2]
        );
        let twelve: Vec<String> = (0..12).map(|i| format!("a{i}=x")).collect();
        assert_eq!(
            ids(
                rules,
                &Request::new("GET", &format!("/?{}", twelve.join("&")))
            ),
            vec![3]
        );
    }

    #[test]
    fn setvar_arithmetic_and_reuse() {
        let rules = r#"
SecAction "id:1,phase:1,pass,nolog,setvar:tx.a=5,setvar:tx.b=%{tx.a},setvar:tx.s=+3,setvar:tx.d=-2"
SecAction "id:2,phase:1,pass,nolog,setvar:tx.a=+%{tx.b},setvar:tx.s=-%{tx.a},setvar:tx.b=x%{tx.a}"
SecRule TX:a "@eq 10" "id:3,phase:1,pass,nolog"
SecRule TX:s "@eq -7" "id:4,phase:1,pass,nolog"
SecRule TX:d "@eq -2" "id:5,phase:1,pass,nolog"
SecRule TX:b "@streq x10" "id:6,phase:1,pass,nolog,setvar:!tx.b"
SecRule &TX:b "@eq 0" "id:7,phase:1,pass,nolog"
"#;
        assert_eq!(ids(rules, &Request::new("GET", "/")), [1, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn tx_keys_named_by_the_rules_and_made_at_run_time_are_one_variable() {
        // `tx.k_a` is named by the rules (an id); the same key made by a
        // macro at run time, and keys no rule names, must meet it
        let rules = r#"
SecAction "id:1,phase:1,pass,nolog,setvar:tx.n=a,setvar:tx.k_a=1"
SecAction "id:2,phase:1,pass,nolog,setvar:tx.k_%{tx.n}=+4,setvar:tx.m_%{tx.n}=7"
SecRule TX:k_a "@eq 5" "id:3,phase:1,pass,nolog"
SecRule TX:/^m_/ "@eq 7" "id:4,phase:1,pass,nolog,setvar:!tx.k_%{tx.n}"
SecRule &TX:k_a "@eq 0" "id:5,phase:1,pass,nolog"
SecRule TX:/^[km]_/ "@rx ." "id:6,phase:1,pass,log"
SecRule REQUEST_URI "@rx (b)(c)" "id:7,phase:1,pass,nolog,capture,setvar:tx.x=%{tx.2}"
SecRule TX:x "@streq c" "id:8,phase:1,pass,nolog"
"#;
        let waf = Waf::from_str_named("t.conf", rules).unwrap();
        for _ in 0..4 {
            let v = waf.evaluate(&Request::new("GET", "/abc"));
            assert_eq!(v.matched_ids, [1, 2, 3, 4, 5, 6, 7, 8]);
            let names: Vec<&str> = v
                .matched_rules
                .iter()
                .map(|m| m.matched_var_name.as_str())
                .collect();
            assert_eq!(names, ["TX:m_a"]);
        }
    }

    #[test]
    fn keys_selected_by_id_match_as_the_names_do() {
        // one key of a stored collection is found by its id: in any case,
        // every value with that key, as a name too, and a count
        let long = "x".repeat(70);
        let rules = format!(
            r#"
SecRule REQUEST_HEADERS:X-Probe "@rx ^v" "id:1,phase:1,pass,log"
SecRule REQUEST_HEADERS_NAMES:x-probe "@rx ." "id:2,phase:1,pass,log"
SecRule &REQUEST_HEADERS:x-PROBE "@eq 2" "id:3,phase:1,pass,nolog"
SecRule &REQUEST_HEADERS:x-absent "@eq 0" "id:4,phase:1,pass,nolog"
SecRule REQUEST_HEADERS:x-absent "@rx ^" "id:5,phase:1,pass,nolog"
SecRule REQUEST_HEADERS:{long} "@rx ^w$" "id:6,phase:1,pass,log"
SecRule ARGS:A|REQUEST_COOKIES:c "@rx ." "id:7,phase:1,pass,log"
"#
        );
        let waf = Waf::from_str_named("t.conf", &rules).unwrap();
        let req = Request::new("GET", "/?a=1&b=2")
            .header("x-probe", "v1")
            .header("Host", "h")
            .header("X-PROBE", "v2")
            .header(&long.to_uppercase(), "w")
            .header("Cookie", "C=3; d=4");
        for _ in 0..4 {
            let v = waf.evaluate(&req);
            assert_eq!(v.matched_ids, [1, 2, 3, 4, 6, 7]);
            let names: Vec<&str> = v
                .matched_rules
                .iter()
                .map(|m| m.matched_var_name.as_str())
                .collect();
            let long_name = format!("REQUEST_HEADERS:{}", long.to_uppercase());
            assert_eq!(
                names,
                [
                    "REQUEST_HEADERS:X-PROBE",
                    "REQUEST_HEADERS_NAMES:X-PROBE",
                    long_name.as_str(),
                    "REQUEST_COOKIES:C"
                ]
            );
        }
    }

    #[test]
    fn kept_entries_of_a_longer_request_are_not_read() {
        let rules = r#"
SecRule &REQUEST_HEADERS "@eq 1" "id:1,phase:1,pass,nolog"
SecRule REQUEST_HEADERS|REQUEST_COOKIES|REQUEST_COOKIES_NAMES "@rx old" "id:2,phase:1,pass,nolog"
SecRule REQUEST_HEADERS:Host "@streq new" "id:3,phase:1,pass,nolog"
"#;
        let waf = Waf::from_str_named("t.conf", rules).unwrap();
        let long = Request::new("GET", "/")
            .header("Host", "old")
            .header("Cookie", "old=old")
            .header("X-Old", &*"old".repeat(500));
        let short = Request::new("GET", "/").header("host", "new");
        for _ in 0..3 {
            assert_eq!(waf.evaluate(&long).matched_ids, [2]);
            assert_eq!(waf.evaluate(&short).matched_ids, [1, 3]);
        }
    }

    #[test]
    fn tx_is_listed_in_key_order() {
        let rules = r#"
SecAction "id:1,phase:1,pass,nolog,setvar:tx.b=1,setvar:tx.a=2,setvar:tx.d=3,setvar:tx.c=4"
SecRule TX:/^[a-d]$/ "@rx ." "id:2,phase:1,pass,log"
SecRule TX "@rx ^2$" "id:3,phase:1,pass,log"
"#;
        let waf = Waf::from_str_named("t.conf", rules).unwrap();
        for _ in 0..8 {
            let v = waf.evaluate(&Request::new("GET", "/"));
            let names: Vec<&str> = v
                .matched_rules
                .iter()
                .map(|m| m.matched_var_name.as_str())
                .collect();
            assert_eq!(names, ["TX:d", "TX:a"]);
        }
    }

    #[test]
    fn origin_and_absolute_form() {
        assert_eq!(path_and_query("/a?u=http://x/y"), "/a?u=http://x/y");
        assert_eq!(path_and_query("http://h:8/p?q=1"), "/p?q=1");
        assert_eq!(path_and_query("https://h"), "/");
        assert_eq!(path_and_query("*"), "*");
    }

    #[test]
    fn path_is_percent_decoded_only() {
        assert_eq!(
            super::percent_decode(b"/a%28b+%u0041%zz%4"),
            b"/a(b+%u0041%zz%4"
        );
    }
}
