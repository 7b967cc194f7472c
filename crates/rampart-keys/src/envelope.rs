//! In-process envelope encryption with cached data keys, for callers that
//! encrypt many messages: the way the AWS Encryption SDK's caching
//! materials manager uses a KMS.
//!
//! An [`Envelope`] belongs to one caller, one key and one set of
//! [`EnvelopeLimits`], and opens only messages whose data key is wrapped
//! under that key (of any version). To encrypt, it asks the keys plane for a data key
//! once ([`KeyService::generate_data_key`]: policy decision and durable
//! audit record, as for any call) and then seals messages with it locally,
//! each with a fresh random nonce; a message carries the wrapped data key,
//! so whoever may unwrap it can decrypt. To decrypt, it asks the plane to
//! unwrap a message's data key once ([`KeyService::decrypt_data_key`]:
//! decision and record again) and keeps it for the messages that follow.
//!
//! What the audit log holds: every data-key generation and every unwrap,
//! allowed or denied, with the caller, key and context, exactly as for the
//! per-call API. What it does not hold: each message. A cached data key
//! keeps working for the messages of its context after a policy change, a
//! key's scheduled deletion or its destruction, until its entry ends: at
//! the latest after [`EnvelopeLimits::max_age_secs`] (5 minutes by
//! default), or earlier after `max_messages` messages or `max_bytes`
//! bytes. Use the per-call API ([`KeyService::encrypt`]) where a refusal
//! must take effect at once.
//!
//! Cached data keys are bound to their encryption context (the plane
//! wraps each one with the context as associated data), so a message is
//! sealed and opened only under the context its data key was made for;
//! the context is also bound to every message as associated data.
//! Plaintext data keys live only inside the AES-GCM ciphers (their round
//! keys wiped on drop); nothing here prints them. Each thread that seals or
//! opens keeps its last key per direction in a thread-local slot (so that
//! threads share no counter per message): dropping or clearing the
//! envelope empties the calling thread's slots, and another thread's slot
//! is emptied at that thread's next seal (or, for the opening slot, open)
//! with any envelope, or when the thread ends: a dropped envelope's key can
//! outlive it in at most one slot per thread and direction until then.
//!
//! Message format, version 1: the version byte `0xE1`, the wrapped data key
//! as a big-endian `u16` length and its bytes (the plane's own ciphertext
//! format), a 96-bit nonce, the sealed plaintext, a 16-byte tag. The
//! associated data is the version byte followed by the context in the
//! plane's canonical encoding ([`crate::ciphertext::aad`]). The wrapped key
//! is not in it: only its own data key opens a message (the tag is under
//! that key), so a header whose wrapped key is replaced by another wrapping
//! of the same data key (a rewrap to a newer key version, which needs the
//! right to unwrap it) still opens, and any other replacement fails. That
//! lets a store rewrap its messages' headers after a key rotation without
//! touching the data, and keeps the associated data short.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use rampart_core::SharedClock;
use rampart_crypto::SecretBytes;

use crate::ciphertext::{self, NONCE_LEN, TAG_LEN};
use crate::service::{key_ref, seal_after_header};
use crate::{Caller, Context, KeyService, KeysError, MAX_PLAINTEXT};

/// The version byte of an envelope message.
pub const ENVELOPE_V1: u8 = 0xE1;

/// Largest wrapped data key a message may carry.
const MAX_WRAPPED: usize = 4096;

/// Most cached data keys per direction; past it the cache starts afresh.
const MAX_ENTRIES: usize = 1024;

/// When a cached data key stops being used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvelopeLimits {
    /// Seconds after it was obtained (default 300).
    pub max_age_secs: u64,
    /// Messages sealed or opened with it (default 2^20, far below the
    /// 2^32 messages a random 96-bit nonce allows per key).
    pub max_messages: u64,
    /// Plaintext bytes sealed or opened with it (default 16 GiB).
    pub max_bytes: u64,
}

impl Default for EnvelopeLimits {
    fn default() -> Self {
        EnvelopeLimits {
            max_age_secs: 300,
            max_messages: 1 << 20,
            max_bytes: 1 << 34,
        }
    }
}

/// Messages and bytes a thread takes from a data key's limits at a time,
/// so that threads sealing with one key do not share a counter per message.
const RESERVE_MESSAGES: u64 = 64;
const RESERVE_BYTES: u64 = 256 << 10;

/// Gives each [`Envelope`] an identity for the per-thread slots.
static NEXT_ENVELOPE: AtomicU64 = AtomicU64::new(1);

/// A cached data key: its cipher, what it is bound to, and how much of
/// its limits the threads have taken.
struct Entry {
    cipher: Aes256Gcm,
    /// The message header: version, length, wrapped key.
    header: Vec<u8>,
    /// The associated data: version byte then canonical context.
    aad: Vec<u8>,
    /// The canonical context.
    context: Vec<u8>,
    /// The context itself, to compare a caller's cheaply.
    context_map: Context,
    created: u64,
    messages: AtomicU64,
    bytes: AtomicU64,
}

impl Entry {
    /// Whether it is still within its age limit (not once the clock has
    /// stepped back before it was obtained).
    fn fresh(&self, now: u64, limits: &EnvelopeLimits) -> bool {
        crate::service::younger_than(now, self.created, limits.max_age_secs)
    }

    /// Takes up to a block of messages and bytes (at least `len`) from
    /// the key's limits; `None` once they are spent.
    fn reserve(&self, len: usize, limits: &EnvelopeLimits) -> Option<(u64, u64)> {
        let len = len as u64;
        let m0 = self.messages.fetch_add(RESERVE_MESSAGES, Ordering::Relaxed);
        let messages = RESERVE_MESSAGES.min(limits.max_messages.checked_sub(m0)?);
        let want = len.max(RESERVE_BYTES);
        let b0 = self.bytes.fetch_add(want, Ordering::Relaxed);
        let bytes = want.min(limits.max_bytes.checked_sub(b0)?);
        (messages > 0 && bytes >= len).then_some((messages, bytes))
    }
}

/// What a thread last used of one envelope, in one direction: the entry
/// and what it has reserved of the entry's limits. Checked without any
/// shared write, so threads do not contend per message.
struct Slot {
    envelope: u64,
    epoch: u64,
    entry: Arc<Entry>,
    messages: u64,
    bytes: u64,
}

impl Slot {
    /// Whether `entry` of `envelope` may take one more message of `len`
    /// bytes, taking more of its limits when this thread's share is spent.
    fn take(&mut self, len: usize, limits: &EnvelopeLimits) -> bool {
        if self.messages == 0 || self.bytes < len as u64 {
            match self.entry.reserve(len, limits) {
                Some((m, b)) => {
                    self.messages = m;
                    self.bytes = b;
                }
                None => return false,
            }
        }
        self.messages -= 1;
        self.bytes -= len as u64;
        true
    }
}

thread_local! {
    static SEALING: RefCell<Option<Slot>> = const { RefCell::new(None) };
    static OPENING: RefCell<Option<Slot>> = const { RefCell::new(None) };
}

/// In-process envelope encryption under one key for one caller (see the
/// module docs for what is audited and the trade-off of caching).
pub struct Envelope {
    id: u64,
    /// Bumped by [`Envelope::clear`]: threads' slots of an older epoch
    /// are not used.
    epoch: AtomicU64,
    keys: KeyService,
    caller: Caller,
    key: String,
    clock: SharedClock,
    limits: EnvelopeLimits,
    /// Data keys for sealing, by canonical context.
    sealing: RwLock<HashMap<Vec<u8>, Arc<Entry>>>,
    /// Data keys for opening, by message header (wrapped key).
    opening: RwLock<HashMap<Vec<u8>, Arc<Entry>>>,
    data_keys_generated: AtomicU64,
    data_keys_unwrapped: AtomicU64,
}

impl Drop for Envelope {
    fn drop(&mut self) {
        self.release_thread_slots();
    }
}

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelope")
            .field("key", &self.key)
            .field("principal", &self.caller.principal)
            .field("limits", &self.limits)
            .field("data_keys_generated", &self.data_keys_generated())
            .field("data_keys_unwrapped", &self.data_keys_unwrapped())
            .finish_non_exhaustive()
    }
}

impl Envelope {
    /// Envelope encryption under `key` (`name` or `env/name`) for `caller`,
    /// with time from the plane's clock.
    pub fn new(keys: &KeyService, caller: Caller, key: &str, limits: EnvelopeLimits) -> Self {
        Envelope {
            id: NEXT_ENVELOPE.fetch_add(1, Ordering::Relaxed),
            epoch: AtomicU64::new(0),
            keys: keys.clone(),
            clock: keys.clock().clone(),
            caller,
            key: key.to_string(),
            limits,
            sealing: RwLock::new(HashMap::new()),
            opening: RwLock::new(HashMap::new()),
            data_keys_generated: AtomicU64::new(0),
            data_keys_unwrapped: AtomicU64::new(0),
        }
    }

    /// How many data keys the plane has generated for this envelope.
    pub fn data_keys_generated(&self) -> u64 {
        self.data_keys_generated.load(Ordering::Relaxed)
    }

    /// How many data keys the plane has unwrapped for this envelope.
    pub fn data_keys_unwrapped(&self) -> u64 {
        self.data_keys_unwrapped.load(Ordering::Relaxed)
    }

    /// Drops every cached data key: the next message asks the plane again.
    /// Other threads stop using theirs at once and release them at their
    /// next seal or open with any envelope.
    pub fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        write(&self.sealing).clear();
        write(&self.opening).clear();
        self.release_thread_slots();
    }

    /// Empties the calling thread's slots if they hold this envelope's keys.
    fn release_thread_slots(&self) {
        for slots in [&SEALING, &OPENING] {
            // During thread teardown the slot may be gone already.
            let _ = slots.try_with(|cell| {
                if let Ok(mut c) = cell.try_borrow_mut() {
                    if c.as_ref().is_some_and(|s| s.envelope == self.id) {
                        *c = None;
                    }
                }
            });
        }
    }

    /// Runs `f` with this thread's slot for this envelope when it holds an
    /// entry that `matches`, is fresh, and admits a message of `len` bytes.
    fn with_slot<R>(
        &self,
        slots: &'static std::thread::LocalKey<RefCell<Option<Slot>>>,
        now: u64,
        len: usize,
        matches: impl Fn(&Entry) -> bool,
        f: impl FnOnce(&Entry) -> R,
    ) -> Option<R> {
        let epoch = self.epoch.load(Ordering::Relaxed);
        slots.with(|cell| {
            let mut slot = cell.try_borrow_mut().ok()?;
            let s = slot.as_mut()?;
            let usable = s.envelope == self.id
                && s.epoch == epoch
                && matches(&s.entry)
                && s.entry.fresh(now, &self.limits)
                && s.take(len, &self.limits);
            if !usable {
                // Whatever comes next replaces it; do not keep its key
                // meanwhile (the plane may refuse the next one).
                *slot = None;
                return None;
            }
            Some(f(&s.entry))
        })
    }

    /// Makes `entry` this thread's slot, taking a share of its limits for
    /// a message of `len` bytes; false when its limits are spent.
    fn install(
        &self,
        slots: &'static std::thread::LocalKey<RefCell<Option<Slot>>>,
        entry: &Arc<Entry>,
        len: usize,
    ) -> bool {
        let Some((messages, bytes)) = entry.reserve(len, &self.limits) else {
            return false;
        };
        let slot = Slot {
            envelope: self.id,
            epoch: self.epoch.load(Ordering::Relaxed),
            entry: Arc::clone(entry),
            messages: messages - 1,
            bytes: bytes - len as u64,
        };
        slots.with(|cell| {
            if let Ok(mut c) = cell.try_borrow_mut() {
                *c = Some(slot);
            }
        });
        true
    }

    /// Seals `plaintext` under a cached data key for `context`, asking the
    /// plane for a new one when there is none or it is past its limits.
    pub async fn encrypt(&self, plaintext: &[u8], context: &Context) -> Result<Vec<u8>, KeysError> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(KeysError::TooLarge {
                len: plaintext.len(),
                max: MAX_PLAINTEXT,
            });
        }
        let now = self.clock.unix_secs();
        let len = plaintext.len();
        if let Some(sealed) = self.with_slot(
            &SEALING,
            now,
            len,
            |e| e.context_map == *context,
            |e| seal(e, plaintext),
        ) {
            return sealed;
        }
        ciphertext::check_context(context)?;
        let ctx = ciphertext::aad(&[], context);
        let cached = read(&self.sealing).get(&ctx).cloned();
        if let Some(e) = cached.filter(|e| e.fresh(now, &self.limits)) {
            if self.install(&SEALING, &e, len) {
                return seal(&e, plaintext);
            }
        }
        let e = self.new_sealing_key(ctx, context, now).await?;
        if !self.install(&SEALING, &e, len) {
            return Err(KeysError::InvalidRequest(
                "the envelope limits admit no message of this size".into(),
            ));
        }
        seal(&e, plaintext)
    }

    async fn new_sealing_key(
        &self,
        ctx: Vec<u8>,
        context: &Context,
        now: u64,
    ) -> Result<Arc<Entry>, KeysError> {
        let dk = self
            .keys
            .generate_data_key(&self.caller, &self.key, context)
            .await?;
        self.data_keys_generated.fetch_add(1, Ordering::Relaxed);
        let len = u16::try_from(dk.wrapped.len())
            .ok()
            .filter(|&n| usize::from(n) <= MAX_WRAPPED)
            .ok_or_else(|| KeysError::Internal("wrapped data key too long".into()))?;
        let mut header = Vec::with_capacity(3 + dk.wrapped.len());
        header.push(ENVELOPE_V1);
        header.extend_from_slice(&len.to_be_bytes());
        header.extend_from_slice(&dk.wrapped);
        let entry = Arc::new(Entry::new(
            Aes256Gcm::new(dk.plaintext.expose().into()),
            header,
            ctx.clone(),
            context,
            now,
        ));
        let mut map = write(&self.sealing);
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert(ctx, Arc::clone(&entry));
        Ok(entry)
    }

    /// Opens a message made by [`Envelope::encrypt`] with the same context,
    /// unwrapping its data key through the plane unless it is cached.
    pub async fn decrypt(
        &self,
        message: &[u8],
        context: &Context,
    ) -> Result<SecretBytes, KeysError> {
        let parsed = parse(message)?;
        let now = self.clock.unix_secs();
        let len = parsed.body.len();
        if let Some(opened) = self.with_slot(
            &OPENING,
            now,
            len,
            |e| e.header == parsed.header && e.context_map == *context,
            |e| open(e, &parsed),
        ) {
            return opened;
        }
        ciphertext::check_context(context)?;
        let ctx = ciphertext::aad(&[], context);
        let cached = read(&self.opening).get(parsed.header).cloned();
        if let Some(e) = cached.filter(|e| e.context == ctx && e.fresh(now, &self.limits)) {
            if self.install(&OPENING, &e, len) {
                return open(&e, &parsed);
            }
        }
        let e = self.new_opening_key(&parsed, ctx, context, now).await?;
        // A message longer than the limits allow was still sealed by
        // someone: it is opened, only not counted in a slot.
        let _ = self.install(&OPENING, &e, len);
        open(&e, &parsed)
    }

    async fn new_opening_key(
        &self,
        parsed: &Parsed<'_>,
        ctx: Vec<u8>,
        context: &Context,
        now: u64,
    ) -> Result<Arc<Entry>, KeysError> {
        // The envelope opens messages of its own key only: another key's
        // message is not one of its writers', whatever else the caller may
        // decrypt.
        let (env, name) = key_ref(&self.caller, &self.key)?;
        let wrapped = ciphertext::parse(parsed.wrapped)?;
        if wrapped.environment != env || wrapped.key != name {
            return Err(KeysError::InvalidRequest(format!(
                "the message's data key is under key {}/{}, not this envelope's key {env}/{name}",
                wrapped.environment, wrapped.key
            )));
        }
        let dk = self
            .keys
            .decrypt_data_key(&self.caller, parsed.wrapped, context)
            .await?;
        self.data_keys_unwrapped.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(Entry::new(
            Aes256Gcm::new(dk.expose().into()),
            parsed.header.to_vec(),
            ctx,
            context,
            now,
        ));
        let mut map = write(&self.opening);
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert(parsed.header.to_vec(), Arc::clone(&entry));
        Ok(entry)
    }
}

impl Entry {
    fn new(cipher: Aes256Gcm, header: Vec<u8>, ctx: Vec<u8>, context: &Context, now: u64) -> Self {
        let mut aad = Vec::with_capacity(1 + ctx.len());
        aad.push(ENVELOPE_V1);
        aad.extend_from_slice(&ctx);
        Entry {
            cipher,
            header,
            aad,
            context: ctx,
            context_map: context.clone(),
            created: now,
            messages: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }
}

/// Seals one message under `e`.
fn seal(e: &Entry, plaintext: &[u8]) -> Result<Vec<u8>, KeysError> {
    let mut out = Vec::with_capacity(e.header.len() + NONCE_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&e.header);
    seal_after_header(&e.cipher, out, plaintext, &e.aad)
}

/// Opens one message under `e` (whose header and context it matches).
fn open(e: &Entry, parsed: &Parsed<'_>) -> Result<SecretBytes, KeysError> {
    let mut plain = parsed.body.to_vec();
    let opened = e.cipher.decrypt_in_place_detached(
        Nonce::from_slice(parsed.nonce),
        &e.aad,
        &mut plain,
        Tag::from_slice(parsed.tag),
    );
    // Wrapped first, so that a failed attempt's bytes are wiped too.
    let plain = SecretBytes::new(plain);
    opened.map_err(|_| KeysError::Decrypt)?;
    Ok(plain)
}

/// An envelope message's parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed<'a> {
    /// Version byte, length and wrapped key: the associated data's prefix.
    pub header: &'a [u8],
    /// The wrapped data key (the plane's ciphertext format).
    pub wrapped: &'a [u8],
    /// The nonce.
    pub nonce: &'a [u8],
    /// The sealed plaintext.
    pub body: &'a [u8],
    /// The tag.
    pub tag: &'a [u8],
}

/// Splits an envelope message into its parts, checking its structure
/// (not its authenticity, which only decryption can).
pub fn parse(message: &[u8]) -> Result<Parsed<'_>, KeysError> {
    let (&version, rest) = message
        .split_first()
        .ok_or(KeysError::Malformed("empty envelope message"))?;
    if version != ENVELOPE_V1 {
        return Err(KeysError::Malformed("unknown envelope message version"));
    }
    let (len, rest) = rest.split_first_chunk::<2>().ok_or(KeysError::Malformed(
        "envelope message truncated in its header",
    ))?;
    let len = usize::from(u16::from_be_bytes(*len));
    if len == 0 || len > MAX_WRAPPED {
        return Err(KeysError::Malformed(
            "envelope data key length out of range",
        ));
    }
    if rest.len() < len + NONCE_LEN + TAG_LEN {
        return Err(KeysError::Malformed("envelope message truncated"));
    }
    let (wrapped, rest) = rest.split_at(len);
    let (nonce, rest) = rest.split_at(NONCE_LEN);
    let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
    let header = message
        .get(..3 + len)
        .ok_or(KeysError::Malformed("envelope message truncated"))?;
    Ok(Parsed {
        header,
        wrapped,
        nonce,
        body,
        tag,
    })
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_refuses_every_truncation_and_bad_headers() {
        let mut msg = vec![ENVELOPE_V1, 0, 5];
        msg.extend_from_slice(b"wkey!");
        msg.extend_from_slice(&[9; NONCE_LEN]);
        msg.extend_from_slice(b"body");
        msg.extend_from_slice(&[7; TAG_LEN]);
        let p = parse(&msg).unwrap();
        assert_eq!(p.wrapped, b"wkey!");
        assert_eq!(p.body, b"body");
        assert_eq!(p.header, &msg[..8]);
        for n in 0..msg.len() - 4 {
            assert!(parse(&msg[..n]).is_err(), "length {n}");
        }
        let mut bad = msg.clone();
        bad[0] = 1;
        assert!(parse(&bad).is_err());
        let mut zero = msg.clone();
        zero[1] = 0;
        zero[2] = 0;
        assert!(parse(&zero).is_err());
        let mut long = msg.clone();
        long[1] = 0xff;
        assert!(parse(&long).is_err());
    }
}
