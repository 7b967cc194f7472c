//! The writer: group commit, segment rolling, checkpoints, crash recovery
//! and retention.
//!
//! Each tier has a queue, a writer thread and syncer threads. A caller
//! encrypts its event on its own thread and queues it. The writer takes
//! everything queued, chains and frames it, and writes it with one `pwrite`.
//! A syncer runs `fdatasync` for everything written so far and only then
//! hands out the receipts; with two syncers a new batch can start syncing
//! while the previous sync is in flight. So concurrent callers share writes
//! and syncs, and nobody gets a receipt before their record is on disk.
//!
//! When a sync returns, its callers usually come straight back with their
//! next record. Rather than sync at once the few records written meanwhile
//! (which splits the callers into two groups that take turns, each record
//! waiting about two syncs), the log gathers them: with no sync in flight,
//! the writer waits (asleep, so the callers have the CPU) until as many
//! records are queued as callers usually wait at once, or no record has
//! come for 50 µs, or about one sync time has passed; then it writes them
//! with one `pwrite` and syncs. Records written while a sync is in flight
//! are gathered the same way by the syncer. A lone caller is synced at
//! once, as before.
//! Before a checkpoint or a segment roll the writer syncs itself, so a
//! checkpoint never counts a record that is not durable.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ed25519_dalek::{SigningKey, VerifyingKey};
use rampart_core::SharedClock;

use crate::checkpoint::{self, Checkpoint, CheckpointKind, Disposal};
use crate::copies::CopyMark;
use crate::error::AuditError;
use crate::event::{Event, EventRef, Receipt, RetentionPolicy, Tier};
use crate::format::{SegmentHeader, BODY_FIXED, FRAME_PREFIX, MAX_BODY, TAG_LEN};
use crate::keys::{AuditKeys, RecordCipher};
use crate::merkle::{leaf_hash, to_hex, Frontier, Hash};
use crate::proof::InclusionProof;
use crate::search::{AuditReader, Query};
use crate::verify::{
    list_segments, load_checkpoints_from, scan_tier, segment_name, FiledCheckpoint, Finding,
    Problem, SegmentRange,
};

const NANOS_PER_DAY: u64 = 86_400 * 1_000_000_000;

/// [`AuditOptions::commit_delay`] by default.
const DEFAULT_COMMIT_DELAY: Duration = Duration::from_millis(2);
/// [`AuditOptions::commit_siblings`] by default.
const DEFAULT_COMMIT_SIBLINGS: usize = 16;
/// [`AuditOptions::copy_delay`] by default.
const DEFAULT_COPY_DELAY: Duration = Duration::from_millis(50);
/// How many records of a tier with copies may pass, none of them waiting
/// for its copy, before its pair's mark is moved past them: at most this
/// many (and those since the last copy in flight) are read again when the
/// log is opened after a crash.
const MARK_STRIDE: u64 = 4096;

/// How the log is laid out and when it rolls and checkpoints.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// The log directory (`<data>/audit`); each tier gets a subdirectory.
    pub dir: PathBuf,
    /// A second directory that receives a copy of every checkpoint, so that
    /// cutting the log's tail (with its checkpoints) is detectable.
    pub checkpoint_dir: Option<PathBuf>,
    /// Retention per tier.
    pub retention: RetentionPolicy,
    /// Roll to a new segment once a segment reaches this size.
    pub segment_max_bytes: u64,
    /// Roll when the time bucket of this length changes (a day by default,
    /// so retention drops whole days). `None` rolls by size only.
    pub segment_roll_interval: Option<Duration>,
    /// Checkpoint after this many new records.
    pub checkpoint_every_records: u64,
    /// Checkpoint when this much time has passed and there are new records.
    pub checkpoint_every: Duration,
    /// Extend segments with zeros this many bytes at a time, so that most
    /// syncs need not commit a new file size. 0 disables.
    pub preallocate_bytes: u64,
    /// Most records one group commit takes; 1 gives one fsync per record
    /// (the benchmark baseline).
    pub max_batch_records: usize,
    /// Threads per tier that run fdatasync; more than one lets a new batch
    /// start syncing while an earlier sync is still in flight. 0 makes the
    /// writer sync each batch itself before taking the next. The default
    /// is 1: on this project's 2-core VM, back-to-back runs of the
    /// benchmark gave 198–224k records/s with 1 and 146–212k with 2 or 3
    /// (more syncs in flight mean smaller batches and more CPU per record).
    /// Since the writer gathers a whole group of callers and syncs it
    /// itself, the syncers mostly take batches written while a sync is in
    /// flight (callers that do not come back together).
    pub sync_threads: usize,
    /// How long a group may keep gathering records before its sync starts,
    /// like PostgreSQL's `commit_delay`: the quiet spell that ends a group
    /// is at least this long, and its cap at least twice this. It applies
    /// only while at least [`AuditOptions::commit_siblings`] callers
    /// usually wait at once, that is under heavy concurrent load, where
    /// fewer, larger syncs leave more CPU for the callers' own work (each
    /// fdatasync costs about 100 µs of kernel CPU on the project's VM).
    /// A group that holds every caller who usually waits still syncs at
    /// once. Zero keeps the adaptive wait only. Default 2 ms.
    pub commit_delay: Duration,
    /// How many callers must usually wait at once before
    /// [`AuditOptions::commit_delay`] applies, like PostgreSQL's
    /// `commit_siblings`; 0 applies it always. Default 16. They are
    /// counted on each tier and on all tiers together, and either count
    /// will do: a tier with few callers of its own, each of whom also
    /// waits on a busier tier, then syncs as seldom as the busy one
    /// instead of every few records.
    pub commit_siblings: usize,
    /// Pairs of tiers (from, to) whose records may ask for a derived copy
    /// in the other ([`Audit::record_ref_async_with_copy`]): the edge's
    /// denials, recorded in api-access, copied to security. Opening the
    /// log writes every copy a crash left out.
    pub copies: Vec<(Tier, Tier)>,
    /// How long derived copies may gather before their tier writes them
    /// (one write and one sync for all of them). Default 50 ms.
    pub copy_delay: Duration,
    /// Test support: makes writes and syncs fail on demand.
    pub fault: Option<Arc<FaultInjector>>,
}

impl AuditOptions {
    /// Defaults: 64 MiB or one day per segment, a checkpoint every 1,000
    /// records or 60 s (as `rampart.toml` has them), 4 MiB preallocation, a 2 ms commit delay once 16
    /// callers usually wait at once.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        AuditOptions {
            dir: dir.into(),
            checkpoint_dir: None,
            retention: RetentionPolicy::default(),
            segment_max_bytes: 64 << 20,
            segment_roll_interval: Some(Duration::from_secs(86_400)),
            checkpoint_every_records: 1_000,
            checkpoint_every: Duration::from_secs(60),
            preallocate_bytes: 4 << 20,
            max_batch_records: 4096,
            sync_threads: 1,
            commit_delay: DEFAULT_COMMIT_DELAY,
            commit_siblings: DEFAULT_COMMIT_SIBLINGS,
            copies: Vec::new(),
            copy_delay: DEFAULT_COPY_DELAY,
            fault: None,
        }
    }
}

/// Injects storage failures, for tests (running as root, `chmod` cannot
/// make a directory unwritable): a write budget after which writes fail with
/// "no space left" part-way through, and failing syncs.
#[derive(Debug)]
pub struct FaultInjector {
    write_budget: AtomicU64,
    fail_sync: AtomicBool,
}

impl Default for FaultInjector {
    fn default() -> Self {
        FaultInjector {
            write_budget: AtomicU64::new(u64::MAX),
            fail_sync: AtomicBool::new(false),
        }
    }
}

impl FaultInjector {
    /// A new injector that injects nothing yet.
    pub fn new() -> Arc<Self> {
        Arc::new(FaultInjector::default())
    }

    /// Lets `bytes` more bytes be written, then fails (after a partial write).
    pub fn fail_writes_after(&self, bytes: u64) {
        self.write_budget.store(bytes, Ordering::SeqCst);
    }

    /// Makes every sync fail (or succeed again).
    pub fn fail_syncs(&self, fail: bool) {
        self.fail_sync.store(fail, Ordering::SeqCst);
    }

    /// Stops injecting.
    pub fn heal(&self) {
        self.write_budget.store(u64::MAX, Ordering::SeqCst);
        self.fail_sync.store(false, Ordering::SeqCst);
    }
}

fn no_space() -> io::Error {
    io::Error::new(
        io::ErrorKind::StorageFull,
        "no space left on device (injected)",
    )
}

/// Storage calls that go through the fault injector.
struct Disk<'a>(Option<&'a FaultInjector>);

impl Disk<'_> {
    fn write_at(&self, file: &File, buf: &[u8], off: u64) -> io::Result<()> {
        if let Some(f) = self.0 {
            let budget = f.write_budget.load(Ordering::SeqCst);
            if budget != u64::MAX {
                let allowed = usize::try_from(budget).unwrap_or(usize::MAX).min(buf.len());
                f.write_budget
                    .store(budget - allowed as u64, Ordering::SeqCst);
                if allowed < buf.len() {
                    file.write_all_at(buf.get(..allowed).unwrap_or_default(), off)?;
                    return Err(no_space());
                }
            }
        }
        file.write_all_at(buf, off)
    }

    fn sync(&self, file: &File) -> io::Result<()> {
        if self.0.is_some_and(|f| f.fail_sync.load(Ordering::SeqCst)) {
            return Err(io::Error::other("fsync failed (injected)"));
        }
        file.sync_data()
    }

    fn zero_fill(&self, file: &File, from: u64, to: u64) -> io::Result<()> {
        static ZEROS: [u8; 64 * 1024] = [0u8; 64 * 1024];
        let mut at = from;
        while at < to {
            let n = usize::try_from(to - at)
                .unwrap_or(usize::MAX)
                .min(ZEROS.len());
            self.write_at(file, ZEROS.get(..n).unwrap_or_default(), at)?;
            at += n as u64;
        }
        Ok(())
    }
}

/// One tier's group-commit figures (see [`Audit::commit_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// fdatasyncs run.
    pub syncs: u64,
    /// Records those syncs made durable.
    pub records: u64,
    /// Time spent in them, in nanoseconds.
    pub sync_nanos: u64,
}

/// A torn write found and cut on open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The segment.
    pub segment: PathBuf,
    /// Where the whole records end; the file was cut here.
    pub offset: u64,
    /// Bytes cut.
    pub bytes_cut: u64,
    /// Where the cut bytes were kept for inspection.
    pub quarantined: Option<PathBuf>,
    /// What was wrong there.
    pub finding: Finding,
}

/// What opening found, per tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierOpenReport {
    /// The tier.
    pub tier: Tier,
    /// The seq the next record gets.
    pub next_seq: u64,
    /// Segments on disk.
    pub segments: usize,
    /// A torn write that was cut, if any.
    pub torn_tail: Option<TornTail>,
}

/// What [`Audit::open`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// One entry per tier.
    pub tiers: Vec<TierOpenReport>,
    /// Damaged checkpoint lines among those opening reads, the ones from
    /// each tier's newest segment on (skipped; `verify` checks every line).
    pub checkpoint_problems: Vec<Finding>,
    /// Derived copies a crash left out, written by opening, per pair of
    /// tiers (from, to, how many; see [`AuditOptions::copies`]).
    pub copies_restored: Vec<(Tier, Tier, usize)>,
}

impl OpenReport {
    /// The torn tails that were cut.
    pub fn torn_tails(&self) -> impl Iterator<Item = &TornTail> {
        self.tiers.iter().filter_map(|t| t.torn_tail.as_ref())
    }
}

/// What [`Audit::apply_retention`] removed from one tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disposed {
    /// The tier.
    pub tier: Tier,
    /// Segment files removed.
    pub segments: Vec<PathBuf>,
    /// First removed seq.
    pub first_seq: u64,
    /// One past the last removed seq.
    pub end_seq: u64,
}

/// What [`Audit::apply_retention`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// One entry per tier that lost segments.
    pub disposed: Vec<Disposed>,
    /// Segment bytes read to decide and to dispose: a sealed segment is
    /// read when it first becomes the oldest and again when it goes, so a
    /// run that disposes of nothing reads nothing.
    pub bytes_read: u64,
}

/// Where the writer thread leaves one caller's result: a blocked thread
/// waits on the condvar, a future leaves its waker.
#[derive(Default)]
struct Slot {
    inner: Mutex<SlotInner>,
    ready: Condvar,
}

#[derive(Default)]
struct SlotInner {
    result: Option<Result<Receipt, AuditError>>,
    /// The result has been set (it stays set once the caller took it).
    filled: bool,
    waker: Option<std::task::Waker>,
    /// The relay of the thread the future was pending on, if any.
    relay: Option<Arc<Relay>>,
    /// A thread waits on the condvar ([`Slot::wait`]). Only then is it
    /// notified: a notification is a `futex` call whether or not anyone
    /// waits, and most slots have no blocked thread (a future not yet
    /// polled when its record became durable, such as the edge's second
    /// record of a denial, has neither waker nor waiter).
    blocked: bool,
}

impl Slot {
    /// Sets the result and wakes the caller directly (the rare paths:
    /// failures; receipts go through [`TierLog::hand_out`]).
    fn fill(&self, r: Result<Receipt, AuditError>) {
        let wake = {
            let mut g = lock(&self.inner);
            g.result = Some(r);
            g.filled = true;
            g.take_wake()
        };
        self.wake(wake);
    }

    /// Performs what [`SlotInner::take_wake`] said, outside the lock.
    fn wake(&self, wake: Wakeup) {
        match wake {
            Wakeup::Task(w) => w.wake(),
            Wakeup::Thread => self.ready.notify_one(),
            Wakeup::Nobody => {}
        }
    }

    fn wait(&self) -> Result<Receipt, AuditError> {
        let mut g = lock(&self.inner);
        loop {
            if let Some(r) = g.result.take() {
                g.blocked = false;
                return r;
            }
            g.blocked = true;
            g = self.ready.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Whom a filled slot must wake.
enum Wakeup {
    /// The future that left this waker.
    Task(std::task::Waker),
    /// The thread blocked in [`Slot::wait`].
    Thread,
    /// No one yet: the caller finds the result when it first looks.
    Nobody,
}

impl SlotInner {
    /// Whom to wake now that the result is in (under the slot's lock; the
    /// waker is taken).
    fn take_wake(&mut self) -> Wakeup {
        match self.waker.take() {
            Some(w) => Wakeup::Task(w),
            None if self.blocked => Wakeup::Thread,
            None => Wakeup::Nobody,
        }
    }
}

/// Futures pending on one thread share a relay, so a batch of receipts
/// costs one cross-thread wake-up per thread rather than one per record.
///
/// Waking a task from another thread makes its executor's thread wake up
/// too (for tokio, a `write` to its eventfd), even when it is already
/// awake and about to run that task. When a sync completes, the writer
/// fills every slot, then marks each relay concerned `due` and wakes one
/// future per relay; that future, polled on its own thread, wakes the
/// relay's other completed futures from there, which for a single-thread
/// executor is a push onto its own run queue. Under load the edge saw one
/// eventfd write per request from the audit writer before this.
///
/// Any poll or drop of a future registered with a relay that finds it due
/// does that work, so it is done as long as a woken future is polled or
/// dropped, as every executor does.
#[derive(Default)]
struct Relay {
    /// Slots whose futures were pending on this thread.
    waiting: Mutex<Vec<Arc<Slot>>>,
    /// Some of `waiting` have their results: the next poll wakes them.
    due: AtomicBool,
}

thread_local! {
    static RELAY: Arc<Relay> = Arc::new(Relay::default());
}

impl Relay {
    /// Wakes every waiting future whose result is in, if a batch marked
    /// this relay due since the last time.
    fn drain(&self) {
        if !self.due.load(Ordering::Relaxed) || !self.due.swap(false, Ordering::AcqRel) {
            return;
        }
        let mut wake = Vec::new();
        lock(&self.waiting).retain(|slot| {
            let mut g = lock(&slot.inner);
            if !g.filled {
                return true;
            }
            if let Some(w) = g.waker.take() {
                wake.push(w);
            }
            false
        });
        for w in wake {
            w.wake();
        }
    }
}

/// The future of [`Audit::record_async`]: resolves once the record is
/// fsynced. Dropping it does not withdraw the record.
#[must_use = "the receipt says whether the record was taken"]
pub struct RecordFuture {
    state: Result<Arc<Slot>, Option<AuditError>>,
}

impl std::fmt::Debug for RecordFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordFuture")
    }
}

impl std::future::Future for RecordFuture {
    type Output = Result<Receipt, AuditError>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        let slot = match &mut self.get_mut().state {
            Err(early) => return Poll::Ready(Err(early.take().unwrap_or(AuditError::Closed))),
            Ok(slot) => slot,
        };
        let (joined, relay) = {
            let mut g = lock(&slot.inner);
            if let Some(r) = g.result.take() {
                g.waker = None;
                let relay = g.relay.take();
                drop(g);
                if let Some(relay) = relay {
                    relay.drain();
                }
                return Poll::Ready(r);
            }
            match &mut g.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                w => *w = Some(cx.waker().clone()),
            }
            match &g.relay {
                Some(relay) => (false, Arc::clone(relay)),
                None => match RELAY.try_with(Arc::clone) {
                    Ok(relay) => {
                        g.relay = Some(Arc::clone(&relay));
                        (true, relay)
                    }
                    // The thread is exiting: plain wake-ups.
                    Err(_) => return Poll::Pending,
                },
            }
        };
        if joined {
            lock(&relay.waiting).push(Arc::clone(slot));
            // The result may have come in between the two locks; the writer
            // then woke this future itself or left it to the relay.
            let mut g = lock(&slot.inner);
            if let Some(r) = g.result.take() {
                g.waker = None;
                g.relay = None;
                drop(g);
                relay.drain();
                return Poll::Ready(r);
            }
        }
        relay.drain();
        Poll::Pending
    }
}

impl Drop for RecordFuture {
    fn drop(&mut self) {
        // A future dropped after its wake-up must still pass it on.
        if let Ok(slot) = &self.state {
            let relay = lock(&slot.inner).relay.take();
            if let Some(relay) = relay {
                relay.drain();
            }
        }
    }
}

struct Pending {
    /// Whether a caller waits on `slot` (and is counted in `waiting`); a
    /// derived copy has no caller.
    counted: bool,
    /// A derived copy to queue for its tier once this record is written.
    copy: Option<(Tier, Box<Pending>)>,
    time: u64,
    /// When it was queued ([`SyncState::note_arrivals`]). Taken under the
    /// queue's lock, so a batch's records are in this order.
    at: Instant,
    nonce: [u8; 12],
    sealed: Vec<u8>,
    slot: Arc<Slot>,
}

struct Queue {
    items: Vec<Pending>,
    /// Derived copies waiting to be written, in the order their records
    /// were written, each with its record's tier and sequence number.
    copies: Vec<(Tier, u64, Pending)>,
    /// When the oldest of them was queued.
    copies_since: Option<Instant>,
    /// The writer wants waking when this many records are queued (1, or
    /// more while it gathers a group).
    wake_at: usize,
    shutdown: bool,
    /// A syncer has appended the pending checkpoint that kept a due one
    /// from being taken: take it now, even if no record comes.
    retry_checkpoint: bool,
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            items: Vec::new(),
            copies: Vec::new(),
            copies_since: None,
            wake_at: 1,
            shutdown: false,
            retry_checkpoint: false,
        }
    }
}

struct ActiveSegment {
    file: Arc<File>,
    number: u64,
    /// Where the records start (after the header).
    start: u64,
    len: u64,
    allocated: u64,
    bucket: u64,
    /// Its records' oldest and newest times, for the time index once it
    /// is sealed.
    span: Option<crate::times::Span>,
}

struct WriterState {
    tier_dir: PathBuf,
    seg: Option<ActiveSegment>,
    next_segment: u64,
    frontier: Frontier,
    chain_head: Hash,
    last_cp_count: u64,
    /// The record count the every-N-records cadence counts from: the last
    /// checkpoint's count, or for a periodic one taken late (its due point
    /// passed while an earlier one was still being appended), the point it
    /// was due at, so one late checkpoint does not shift every later one.
    cp_cadence_from: u64,
    last_cp_time: u64,
    buf: Vec<u8>,
}

/// A pair's mark file ([`crate::copies`]), for the tier that takes the
/// copies of `from`'s records, and the last mark written to it.
struct MarkFile {
    from: Tier,
    path: PathBuf,
    last: Mutex<(File, CopyMark)>,
    /// Copies of `from`'s records queued and not yet durable (one lost
    /// to a failed write stays counted, so the mark never passes it).
    in_flight: AtomicUsize,
}

impl MarkFile {
    /// Writes `mark` to the file (durably with `sync`) and keeps it as the
    /// last one.
    fn set(
        &self,
        g: &mut MutexGuard<'_, (File, CopyMark)>,
        mark: CopyMark,
        sync: bool,
    ) -> io::Result<()> {
        crate::copies::write(&g.0, &self.path, mark, sync)?;
        g.1 = mark;
        Ok(())
    }
}

struct TierLog {
    tier: Tier,
    /// For each tier whose records this one takes copies of, its mark.
    copy_marks: Vec<MarkFile>,
    queue: Mutex<Queue>,
    cond: Condvar,
    state: Mutex<WriterState>,
    sync: Mutex<SyncState>,
    sync_cond: Condvar,
    poisoned: AtomicBool,
    closed: AtomicBool,
    /// Records queued and not yet answered (callers waiting).
    waiting: AtomicUsize,
    /// The same for every tier together, shared by them all.
    all_waiting: Arc<AtomicUsize>,
    /// When a leading tier last began a sync, shared by them all
    /// ([`follows`]).
    lead: Arc<LeadClock>,
    /// When the callers last said they had nothing else to do
    /// ([`Audit::callers_idle`]), shared by them all.
    idle: Arc<LeadClock>,
    /// A periodic checkpoint the writer took and a syncer thread appends
    /// once the records it counts are durable (see [`PendingCheckpoint`]).
    /// Every checkpoint line is appended with this lock held, so the
    /// checkpoint file stays in order.
    cp_pending: Mutex<Option<PendingCheckpoint>>,
    /// Set while `cp_pending` holds a checkpoint, for the syncer to see
    /// without taking the lock.
    cp_waiting: AtomicBool,
    /// The batch (`written_id`) the pending checkpoint's records end in;
    /// written only with `cp_pending` held.
    cp_upto: AtomicU64,
    /// A deferred checkpoint could not be appended: take another.
    cp_retry: AtomicBool,
    /// A due periodic checkpoint found the previous one still on its way:
    /// the syncer that appends that one wakes the writer to take it.
    cp_blocked: AtomicBool,
    /// Sealed segments that retention has read and found still within the
    /// tier's retention: segment number to its newest record's time. A
    /// sealed segment never changes, so retention reads each one when it
    /// becomes the oldest and again only to dispose of it, not every run.
    retention_seen: Mutex<std::collections::BTreeMap<u64, u64>>,
    /// Syncs run and records they made durable, for the benchmark.
    syncs: AtomicU64,
    synced_records: AtomicU64,
    sync_time_nanos: AtomicU64,
}

/// Batches written but not yet known durable, and the syncs in flight.
/// Several syncer threads may each have an fdatasync in flight: one that
/// started after batch N was written makes batches up to N durable.
#[derive(Default)]
struct SyncState {
    pending: std::collections::VecDeque<WrittenBatch>,
    written_id: u64,
    durable_id: u64,
    syncing_upto: u64,
    /// Records in batches written but not yet in a sync.
    unsynced_records: usize,
    /// When the oldest of those was written, and when the newest.
    first_unsynced_at: Option<Instant>,
    /// When the oldest of those was queued.
    first_queued_at: Option<Instant>,
    last_written_at: Option<Instant>,
    /// When the last record written so far was queued.
    last_queued_at: Option<Instant>,
    /// How many callers usually wait at once: `waiting` sampled as each sync
    /// completes, decaying. Once that many records are written (or fewer,
    /// [`group_target`]), the sync starts at once.
    peak_waiting: usize,
    /// The same for the callers waiting on any tier, sampled at this
    /// tier's syncs: whether the log as a whole is busy enough for the
    /// commit delay ([`gather_wait`]).
    peak_all_waiting: usize,
    /// Recent fdatasync time, in nanoseconds (exponential average).
    sync_nanos: u64,
    /// When the last sync finished.
    last_sync_end: Option<Instant>,
    /// Records already written for the next group when the last sync
    /// finished (those that came in while it was in flight).
    unsynced_at_end: usize,
    /// Of the records written since, how many were queued after it ended,
    /// and when the first and the last of them were.
    fresh: usize,
    fresh_first: Option<Instant>,
    fresh_last: Option<Instant>,
    /// Recent time between records queued after a sync ended, in
    /// nanoseconds (exponential average; 0 = not yet known).
    arrival_gap_nanos: u64,
    /// Recent time from a sync's end to the first record queued after it,
    /// when none came in while it was in flight: how long the callers it
    /// answered take to come back (exponential average).
    return_nanos: u64,
    file: Option<Arc<File>>,
    shutdown: bool,
    /// [`AuditOptions::commit_delay`].
    commit_delay: Duration,
    /// [`AuditOptions::commit_siblings`].
    commit_siblings: usize,
}

struct WrittenBatch {
    id: u64,
    done: Vec<(Arc<Slot>, Receipt)>,
    /// For the derived copies in the batch, per tier they were copied
    /// from: the record sequence number after the last of them and this
    /// tier's after the batch ([`CopyMark`]), and how many there are.
    copied: Vec<(Tier, CopyMark, usize)>,
}

/// The state a periodic checkpoint covers, taken by the writer after a
/// batch. Signing it and appending its line (two files with
/// `checkpoint_dir`, each synced) happen on a syncer thread once the batch
/// is durable, not in the writer, which meanwhile takes the next group.
/// Any other checkpoint (manual, closing, idle, disposal, or a proof's)
/// first appends the pending one, so lines stay in order and nothing reads
/// the files expecting a checkpoint that is not yet there.
struct PendingCheckpoint {
    frontier: Frontier,
    chain_head: Hash,
    time: u64,
}

impl TierLog {
    /// `n` copies of the records of `from`, up to `mark`, are durable
    /// here: moves the pair's mark forward (never back) and counts them
    /// off those in flight. Not synced: a mark lost in a crash only makes
    /// opening read further back.
    fn copies_durable(&self, from: Tier, mark: CopyMark, n: usize) {
        let Some(m) = self.copy_marks.iter().find(|m| m.from == from) else {
            return;
        };
        self.move_mark(m, &mut lock(&m.last), mark);
        m.in_flight.fetch_sub(n, Ordering::SeqCst);
    }

    /// No copy of `from`'s records is on its way here, and `from` has
    /// written records up to `from_seq`: moves the pair's mark past them
    /// once [`MARK_STRIDE`] have passed since it last moved, so opening
    /// after a crash does not read back to the last copy (which may be
    /// long ago). Any later copy comes after this tier's records so far.
    fn pass_copies(&self, from: Tier, from_seq: u64) {
        let Some(m) = self.copy_marks.iter().find(|m| m.from == from) else {
            return;
        };
        if m.in_flight.load(Ordering::SeqCst) > 0 {
            return;
        }
        let mut g = lock(&m.last);
        if from_seq < g.1.from_seq.saturating_add(MARK_STRIDE) {
            return;
        }
        let mark = CopyMark {
            from_seq,
            to_seq: g.1.to_seq,
        };
        self.move_mark(m, &mut g, mark);
    }

    fn move_mark(&self, m: &MarkFile, g: &mut MutexGuard<'_, (File, CopyMark)>, mark: CopyMark) {
        if mark.from_seq <= g.1.from_seq {
            return;
        }
        if let Err(e) = m.set(g, mark, false) {
            tracing::warn!(tier = %self.tier, from = %m.from, error = %e, "cannot update the audit copy mark; the next open reads further back")
        }
    }

    /// Batches up to `id` are on disk: hand out their receipts.
    fn mark_durable(&self, id: u64) {
        let mut done = Vec::new();
        let mut records = 0;
        let mut copied: Vec<(Tier, CopyMark, usize)> = Vec::new();
        {
            let mut sy = lock(&self.sync);
            sy.durable_id = sy.durable_id.max(id);
            let durable = sy.durable_id;
            while sy.pending.front().is_some_and(|b| b.id <= durable) {
                if let Some(mut b) = sy.pending.pop_front() {
                    records += b.done.len();
                    // later batches' marks replace earlier ones
                    for (from, mark, n) in b.copied.drain(..) {
                        match copied.iter_mut().find(|(f, _, _)| *f == from) {
                            Some(c) => *c = (from, mark, c.2 + n),
                            None => copied.push((from, mark, n)),
                        }
                    }
                    done.push(b);
                }
            }
            sample_peak(&mut sy.peak_waiting, self.waiting.load(Ordering::SeqCst));
            sample_peak(
                &mut sy.peak_all_waiting,
                self.all_waiting.load(Ordering::SeqCst),
            );
        }
        self.synced_records
            .fetch_add(records as u64, Ordering::Relaxed);
        self.answered(records);
        for (from, mark, n) in copied {
            self.copies_durable(from, mark, n);
        }
        // Wake the callers outside the lock, so the writer can go on.
        Self::hand_out(done);
    }

    /// Gives durable batches their receipts: fills every slot first, then
    /// wakes blocked threads and futures with no relay directly, and one
    /// future per [`Relay`], which wakes the rest on its own thread.
    fn hand_out(done: Vec<WrittenBatch>) {
        let mut relayed: Vec<(Arc<Relay>, Arc<Slot>)> = Vec::new();
        for b in done {
            for (slot, r) in b.done {
                let direct = {
                    let mut g = lock(&slot.inner);
                    g.result = Some(Ok(r));
                    g.filled = true;
                    match &g.relay {
                        Some(relay) => {
                            relayed.push((Arc::clone(relay), Arc::clone(&slot)));
                            None
                        }
                        None => Some(g.take_wake()),
                    }
                };
                if let Some(wake) = direct {
                    slot.wake(wake);
                }
            }
        }
        if relayed.is_empty() {
            return;
        }
        // Every slot is filled: mark the relays due, then wake one future
        // of each (one whose waker is still there: others may have been
        // woken already by an earlier batch's drain).
        let mut relays: Vec<&Arc<Relay>> = Vec::new();
        for (relay, _) in &relayed {
            if !relays.iter().any(|r| Arc::ptr_eq(r, relay)) {
                relay.due.store(true, Ordering::Release);
                relays.push(relay);
            }
        }
        let mut kicked: Vec<&Arc<Relay>> = Vec::with_capacity(relays.len());
        for (relay, slot) in &relayed {
            if kicked.iter().any(|r| Arc::ptr_eq(r, relay)) {
                continue;
            }
            let waker = lock(&slot.inner).waker.take();
            if let Some(w) = waker {
                w.wake();
                kicked.push(relay);
            }
        }
    }

    /// A sync that began at `started` has just returned.
    fn note_sync(&self, started: Instant) {
        let now = Instant::now();
        let took =
            u64::try_from(now.saturating_duration_since(started).as_nanos()).unwrap_or(u64::MAX);
        self.sync_time_nanos.fetch_add(took, Ordering::Relaxed);
        let mut sy = lock(&self.sync);
        sy.last_sync_end = Some(now);
        sy.unsynced_at_end = sy.unsynced_records;
        sy.sync_nanos = if sy.sync_nanos == 0 {
            took
        } else {
            (sy.sync_nanos.saturating_mul(7) + took) / 8
        };
    }

    /// `n` waiting callers are about to get their answer.
    fn answered(&self, n: usize) {
        if n > 0 {
            self.waiting.fetch_sub(n, Ordering::SeqCst);
            self.all_waiting.fetch_sub(n, Ordering::SeqCst);
        }
    }

    /// Whether a sync should start now rather than wait for more records:
    /// the group holds as many as it waits for ([`group_target`]), or the
    /// records written so far have waited long enough for company, or no
    /// record has come in for a while.
    fn sync_due(&self, sy: &SyncState, now: Instant) -> Option<Duration> {
        let (Some(first), Some(last)) = (sy.first_unsynced_at, sy.last_written_at) else {
            return None;
        };
        let led = self.lead.led_since(sy.first_queued_at.unwrap_or(first));
        let idle = sy.last_queued_at.is_some_and(|at| self.idle.led_since(at));
        gather_wait(sy, sy.unsynced_records, first, last, now, led, idle)
    }

    /// A sync of this tier's group begins: when the tier leads
    /// ([`follows`]), the tiers that follow it and have callers waiting
    /// sync theirs too. Call without this tier's `sync` or `queue` lock.
    fn lead_sync(&self, tiers: &[TierLog], leads: bool) {
        if !leads {
            return;
        }
        self.lead.mark(Instant::now());
        for other in tiers {
            if other.tier == self.tier || other.waiting.load(Ordering::SeqCst) == 0 {
                continue;
            }
            // Under each lock in turn, so that a waiter that read the lead
            // clock before the mark is already waiting when woken.
            drop(lock(&other.sync));
            other.sync_cond.notify_all();
            drop(lock(&other.queue));
            other.cond.notify_one();
        }
    }

    /// A sync failed: nothing written since the last good sync can be
    /// trusted. Refuse it all and everything after.
    fn poison(&self, e: &io::Error) {
        self.poisoned.store(true, Ordering::SeqCst);
        tracing::error!(tier = %self.tier, error = %e, "audit log sync failed; refusing further records until reopened");
        let (kind, msg) = (e.kind(), e.to_string());
        self.fail_pending(&|| AuditError::WriteFailed {
            tier: self.tier,
            source: io::Error::new(kind, msg.clone()),
        });
    }

    /// Refuses every batch not yet known durable.
    fn fail_pending(&self, make: &dyn Fn() -> AuditError) {
        let mut sy = lock(&self.sync);
        let durable = sy.durable_id;
        let failed: Vec<WrittenBatch> = sy.pending.drain(..).filter(|b| b.id > durable).collect();
        sy.unsynced_records = 0;
        drop(sy);
        self.answered(failed.iter().map(|b| b.done.len()).sum());
        for b in failed {
            for (slot, _) in b.done {
                slot.fill(Err(make()));
            }
        }
    }

    /// Syncs the open segment from the writer's side (before a checkpoint
    /// or a roll), so everything written so far is durable.
    fn sync_now(&self, st: &WriterState, disk: &Disk<'_>) -> Result<(), AuditError> {
        let upto = {
            let mut sy = lock(&self.sync);
            sy.syncing_upto = sy.syncing_upto.max(sy.written_id);
            sy.close_group();
            sy.written_id
        };
        self.syncs.fetch_add(1, Ordering::Relaxed);
        if let Some(seg) = &st.seg {
            let started = Instant::now();
            let r = disk.sync(&seg.file);
            self.note_sync(started);
            if let Err(e) = r {
                self.poison(&e);
                return Err(AuditError::WriteFailed {
                    tier: self.tier,
                    source: e,
                });
            }
        }
        self.mark_durable(upto);
        if self.cp_waiting.load(Ordering::SeqCst) {
            self.sync_cond.notify_one();
        }
        Ok(())
    }

    /// Is the pending checkpoint's batch durable? (Call with `sync` held.)
    fn pending_checkpoint_ready(&self, sy: &SyncState) -> bool {
        self.cp_waiting.load(Ordering::SeqCst)
            && self.cp_upto.load(Ordering::SeqCst) <= sy.durable_id
    }
}

thread_local! {
    /// Random bytes for nonces, refilled 341 nonces at a time so that a
    /// record costs no system call for randomness.
    static NONCE_POOL: std::cell::RefCell<([u8; 4092], usize)> = const { std::cell::RefCell::new(([0; 4092], 4092)) };
}

/// A fresh random 96-bit AES-GCM nonce.
fn fresh_nonce() -> Result<[u8; 12], AuditError> {
    NONCE_POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let (bytes, used) = &mut *pool;
        if *used + 12 > bytes.len() {
            getrandom::getrandom(bytes).map_err(AuditError::Random)?;
            *used = 0;
        }
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(bytes.get(*used..*used + 12).ok_or(AuditError::Encrypt)?);
        *used += 12;
        Ok(nonce)
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// After this long with no sync, the count of callers who usually wait
/// (`peak_waiting`, last set while the log was busy) halves, and again for
/// each further spell: a lone record after a burst syncs at once.
const PEAK_HALF_LIFE: Duration = Duration::from_millis(10);

/// `avg` moved a quarter of the way to `sample` (`sample` if `avg` is 0).
fn ewma4(avg: u64, sample: u64) -> u64 {
    if avg == 0 {
        sample
    } else {
        (avg.saturating_mul(3) / 4).saturating_add(sample / 4)
    }
}

impl SyncState {
    /// A batch is written whose records queued after the last sync ended
    /// number `n`, the first of them queued at `first` and the last at
    /// `last`.
    fn note_arrivals(&mut self, n: usize, first: Instant, last: Instant) {
        if n == 0 {
            return;
        }
        self.fresh += n;
        self.fresh_first = Some(self.fresh_first.map_or(first, |f| f.min(first)));
        self.fresh_last = Some(self.fresh_last.map_or(last, |l| l.max(last)));
    }

    /// The records written so far go into a sync that starts now: the next
    /// group starts empty. Notes how far apart this group's records came
    /// after the last sync ended and, when none came while it was in
    /// flight, how long after its end the first of them came.
    fn close_group(&mut self) {
        if let (Some(first), Some(last), true) =
            (self.fresh_first, self.fresh_last, self.fresh >= 2)
        {
            let span = last.saturating_duration_since(first).as_nanos();
            let gap = span / (self.fresh as u128 - 1);
            self.arrival_gap_nanos = ewma4(
                self.arrival_gap_nanos,
                u64::try_from(gap).unwrap_or(u64::MAX),
            );
        }
        if let (Some(end), Some(first), 0) =
            (self.last_sync_end, self.fresh_first, self.unsynced_at_end)
        {
            let back = first.saturating_duration_since(end).as_nanos();
            self.return_nanos = ewma4(self.return_nanos, u64::try_from(back).unwrap_or(u64::MAX));
        }
        self.fresh = 0;
        self.fresh_first = None;
        self.fresh_last = None;
        self.unsynced_records = 0;
        self.unsynced_at_end = 0;
        self.first_unsynced_at = None;
        self.first_queued_at = None;
    }

    /// Whether this tier leads the group that would sync now (it does not
    /// follow another, [`follows`]).
    fn leads(&self, now: Instant) -> bool {
        !follows(self, self.first_unsynced_at.unwrap_or(now))
    }
}

/// An instant shared between threads: when a leading tier ([`follows`])
/// last began a sync, for the tiers that follow it, or when the callers
/// last went idle ([`Audit::callers_idle`]); nanoseconds after `base`,
/// plus one (0: never).
struct LeadClock {
    base: Instant,
    last: AtomicU64,
}

impl LeadClock {
    fn new() -> Self {
        LeadClock {
            base: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn mark(&self, at: Instant) {
        let nanos = at.saturating_duration_since(self.base).as_nanos();
        let v = u64::try_from(nanos)
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1);
        self.last.fetch_max(v, Ordering::SeqCst);
    }

    /// Whether a leading tier began a sync at or after `since`.
    fn led_since(&self, since: Instant) -> bool {
        match self.last.load(Ordering::SeqCst).checked_sub(1) {
            Some(n) => self.base + Duration::from_nanos(n) >= since,
            None => false,
        }
    }
}

/// Whether a tier follows another: fewer than half of the callers waiting
/// on any tier (sampled at its syncs) usually wait on it. The edge's
/// denials wait on security and api-access alike, and every request on
/// api-access: a security record's caller waits for api-access's sync
/// anyway. Such a tier does not sync on its own count of records; its
/// group syncs when a leading tier begins a sync after the group's first
/// record came in (or after its quiet spell or cap, [`gather_wait`]), so
/// the two syncs run side by side for the same callers instead of the
/// quieter tier syncing every few records. A tier on its own leads.
fn follows(sy: &SyncState, first: Instant) -> bool {
    let usual = usual_waiters(sy, first);
    usual.saturating_mul(2) < decayed_peak(sy, sy.peak_all_waiting, first)
}

/// How many records a group waits for before its sync starts: none for a
/// tier that follows another ([`follows`]: it waits for a lead instead),
/// else [`group_target`].
fn own_target(sy: &SyncState, first: Instant) -> usize {
    if follows(sy, first) {
        usize::MAX
    } else {
        group_target(sy, usual_waiters(sy, first))
    }
}

/// How many records a group waits for before its sync starts, of the
/// `usual` callers that wait at once: all of them, less those expected to
/// come in while its sync is in flight and its callers find their way back
/// (the recent sync time and return time over the recent gap between
/// records).
///
/// A group that waits for its last caller leaves every core idle while it
/// syncs: everyone is waiting. When the callers do real work between two
/// records (the edge's requests), the last few are better left to the next
/// group: the CPU works on them while the sync is in flight. When they come
/// back faster than that (a burst, nothing to do between records), the
/// whole group waits for them, as before. Never fewer than a quarter.
fn group_target(sy: &SyncState, usual: usize) -> usize {
    if sy.arrival_gap_nanos == 0 {
        return usual;
    }
    let meanwhile = sy.sync_nanos.saturating_add(sy.return_nanos) / sy.arrival_gap_nanos;
    match usize::try_from(meanwhile) {
        Ok(m) if m < usual => (usual - m).max(usual.div_ceil(4)),
        _ => usual,
    }
}

/// How many callers usually wait at once, for a group whose first record
/// came at `first`: `peak_waiting`, halved for each [`PEAK_HALF_LIFE`] the
/// log sat idle before it. Under steady load syncs end far more often than
/// that, so the figure is the measured one.
fn usual_waiters(sy: &SyncState, first: Instant) -> usize {
    decayed_peak(sy, sy.peak_waiting, first)
}

/// A peak of callers waiting, sampled at a sync: `now` if higher, else the
/// peak less a sixteenth.
fn sample_peak(peak: &mut usize, now: usize) {
    *peak = now.max(*peak - peak.div_ceil(16));
}

/// `peak` halved for each [`PEAK_HALF_LIFE`] the log sat idle before
/// `first`.
fn decayed_peak(sy: &SyncState, peak: usize, first: Instant) -> usize {
    let idle = sy
        .last_sync_end
        .map_or(Duration::ZERO, |end| first.saturating_duration_since(end));
    let halvings = idle.as_nanos() / PEAK_HALF_LIFE.as_nanos();
    u32::try_from(halvings)
        .ok()
        .and_then(|h| peak.checked_shr(h))
        .unwrap_or(0)
}

/// About one sync time, the recent fdatasync time bounded to 50 µs–2 ms:
/// how long a group may wait for company.
fn about_one_sync(sy: &SyncState) -> Duration {
    Duration::from_nanos(sy.sync_nanos.clamp(50_000, 2_000_000))
}

/// How much longer to gather `count` records, the first of which came at
/// `first` and the last at `last`; `None` once the sync should start:
/// when the group holds as many records as it waits for ([`group_target`]:
/// the callers that usually wait at once, less those better left to the
/// next group), after about one sync time, or after 50 µs with no record
/// (with a commit delay in force, at least `commit_siblings` callers
/// usually waiting on this tier or on all tiers together, the quiet spell
/// is at least the delay and the cap at least twice it). A tier that
/// follows another ([`follows`]) waits for no count but for `led`: a
/// leading tier began a sync since the group's first record came in.
///
/// `idle`: the callers said they had nothing else to do after the group's
/// last record came in ([`Audit::callers_idle`]). No company can come
/// until the group is answered, so it syncs at once: waiting would only
/// leave the CPU idle.
#[allow(clippy::too_many_arguments)]
fn gather_wait(
    sy: &SyncState,
    count: usize,
    first: Instant,
    last: Instant,
    now: Instant,
    led: bool,
    idle: bool,
) -> Option<Duration> {
    if idle && count > 0 {
        return None;
    }
    let usual = usual_waiters(sy, first);
    if follows(sy, first) {
        if led && count > 0 {
            return None;
        }
    } else if count >= group_target(sy, usual) {
        return None;
    }
    // Gathering starts when the last sync ended: records written while it
    // was in flight wait a little more so that the callers it just answered
    // can join them (else the callers split into two groups that take
    // turns, each record waiting about two syncs).
    let (first, last) = match sy.last_sync_end {
        Some(end) => (first.max(end), last.max(end)),
        None => (first, last),
    };
    // The siblings are counted over every tier: a caller that waits on two
    // tiers (the edge's denials go to api-access and security) waits for
    // the busier one anyway, so the quieter one need not sync its few
    // records at once, a sync of its own for every few of them.
    let siblings = usual.max(decayed_peak(sy, sy.peak_all_waiting, first));
    let delay = if siblings >= sy.commit_siblings {
        sy.commit_delay
    } else {
        Duration::ZERO
    };
    let cap = about_one_sync(sy).max(delay.saturating_mul(2));
    let quiet = Duration::from_micros(50).max(delay);
    let cap_left = cap.checked_sub(now.saturating_duration_since(first))?;
    let quiet_left = quiet.checked_sub(now.saturating_duration_since(last))?;
    Some(cap_left.min(quiet_left))
}

/// A tamper-evident, encrypted, durable audit log. `Send + Sync`; share it
/// with `Arc`. [`Audit::record`] blocks the calling thread until the record
/// is durable; [`Audit::record_async`] is the same without blocking.
///
/// Each tier has a writer thread (takes everything queued, one `pwrite`)
/// and `sync_threads` syncer threads (`fdatasync`, then receipts), so
/// concurrent callers share writes and syncs.
pub struct Audit {
    core: Arc<Core>,
    cipher: RecordCipher,
    encryption_key: zeroize::Zeroizing<[u8; 32]>,
    workers: Mutex<Vec<std::thread::JoinHandle<()>>>,
    _lock: File,
}

/// What the writer threads share with the callers.
struct Core {
    options: AuditOptions,
    clock: SharedClock,
    signing_key: SigningKey,
    tiers: Vec<TierLog>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("dir", &self.core.options.dir)
            .finish_non_exhaustive()
    }
}

impl Audit {
    /// Opens (or creates) the log, recovering each tier: a torn write at the
    /// end of the newest segment is cut (and kept beside it as
    /// `*.torn-<offset>`) and reported; any other damage refuses the open.
    pub fn open(
        options: AuditOptions,
        keys: AuditKeys,
        clock: SharedClock,
    ) -> Result<(Audit, OpenReport), AuditError> {
        fs::create_dir_all(&options.dir).map_err(|e| AuditError::io(&options.dir, e))?;
        let lock_path = options.dir.join("audit.lock");
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| AuditError::io(&lock_path, e))?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(AuditError::Locked(options.dir.clone()))
            }
            Err(fs::TryLockError::Error(e)) => return Err(AuditError::io(&lock_path, e)),
        }
        if let Some(copy) = &options.checkpoint_dir {
            fs::create_dir_all(copy).map_err(|e| AuditError::io(copy, e))?;
        }
        let now = clock.unix_nanos();
        let core_dir = options.dir.clone();
        let vk = keys.verifying_key();
        let mut report = OpenReport {
            tiers: Vec::new(),
            checkpoint_problems: Vec::new(),
            copies_restored: Vec::new(),
        };
        let mut tiers = Vec::new();
        let all_waiting = Arc::new(AtomicUsize::new(0));
        let lead = Arc::new(LeadClock::new());
        let idle = Arc::new(LeadClock::new());
        for tier in Tier::ALL {
            let (state, tier_report) =
                recover_tier(&options, tier, &vk, now, &mut report.checkpoint_problems)?;
            report.tiers.push(tier_report);
            tiers.push(TierLog {
                tier,
                copy_marks: Vec::new(),
                queue: Mutex::new(Queue::default()),
                cond: Condvar::new(),
                state: Mutex::new(state),
                sync: Mutex::new(SyncState {
                    commit_delay: options.commit_delay,
                    commit_siblings: options.commit_siblings,
                    ..SyncState::default()
                }),
                sync_cond: Condvar::new(),
                poisoned: AtomicBool::new(false),
                closed: AtomicBool::new(false),
                waiting: AtomicUsize::new(0),
                all_waiting: Arc::clone(&all_waiting),
                lead: Arc::clone(&lead),
                idle: Arc::clone(&idle),
                cp_pending: Mutex::new(None),
                cp_waiting: AtomicBool::new(false),
                cp_upto: AtomicU64::new(0),
                cp_retry: AtomicBool::new(false),
                cp_blocked: AtomicBool::new(false),
                retention_seen: Mutex::new(std::collections::BTreeMap::new()),
                syncs: AtomicU64::new(0),
                synced_records: AtomicU64::new(0),
                sync_time_nanos: AtomicU64::new(0),
            });
        }
        for t in report.torn_tails() {
            tracing::warn!(segment = %t.segment.display(), offset = t.offset, bytes = t.bytes_cut, "audit log: cut a torn write left by a crash");
        }
        // Each pair of tiers with copies: its mark, and how far back to
        // look for copies a crash left out (see `crate::copies`).
        let mut restore = Vec::new();
        for &(from, to) in &options.copies {
            if from == to || restore.iter().any(|&(f, t, _)| (f, t) == (from, to)) {
                continue;
            }
            let next = |t: Tier| {
                tiers
                    .get(t.index())
                    .map_or(0, |l: &TierLog| lock(&l.state).frontier.size())
            };
            let path = crate::copies::mark_path(&options.dir, from, to);
            let found = crate::copies::read(&path).map_err(|e| AuditError::io(&path, e))?;
            let file = crate::copies::open(&path).map_err(|e| AuditError::io(&path, e))?;
            let mark = match found {
                crate::copies::Found::None => {
                    // New pair: no record of `from` so far asks for a copy.
                    let mark = CopyMark {
                        from_seq: next(from),
                        to_seq: next(to),
                    };
                    crate::copies::write(&file, &path, mark, true)
                        .map_err(|e| AuditError::io(&path, e))?;
                    mark
                }
                crate::copies::Found::Mark(mark) => {
                    restore.push((from, to, mark));
                    mark
                }
                crate::copies::Found::Damaged => {
                    tracing::warn!(%from, %to, path = %path.display(), "audit copy mark damaged; reading both tiers from the start for missing copies");
                    restore.push((from, to, CopyMark::default()));
                    CopyMark::default()
                }
            };
            if let Some(l) = tiers.get_mut(to.index()) {
                l.copy_marks.push(MarkFile {
                    from,
                    path,
                    last: Mutex::new((file, mark)),
                    in_flight: AtomicUsize::new(0),
                });
            }
        }
        let core = Arc::new(Core {
            options,
            clock,
            signing_key: keys.signing_key.clone(),
            tiers,
        });
        let mut workers = Vec::new();
        for i in 0..core.tiers.len() {
            let writer_core = Arc::clone(&core);
            let name = format!(
                "audit-writer-{}",
                Tier::ALL.get(i).map_or("?", |t| t.as_str())
            );
            let handle = std::thread::Builder::new()
                .name(name)
                .spawn(move || writer_core.writer_loop(i))
                .map_err(|e| AuditError::io(&core_dir, e))?;
            workers.push(handle);
            for k in 0..core.options.sync_threads {
                let core = Arc::clone(&core);
                let name = format!(
                    "audit-sync-{}-{k}",
                    Tier::ALL.get(i).map_or("?", |t| t.as_str())
                );
                let handle = std::thread::Builder::new()
                    .name(name)
                    .spawn(move || core.syncer_loop(i))
                    .map_err(|e| AuditError::io(&core_dir, e))?;
                workers.push(handle);
            }
        }
        let audit = Audit {
            cipher: RecordCipher::new(&keys.encryption_key),
            encryption_key: keys.encryption_key.clone(),
            core,
            workers: Mutex::new(workers),
            _lock: lock_file,
        };
        for (from, to, mark) in restore {
            let n = audit.restore_copies(from, to, mark)?;
            if n > 0 {
                tracing::warn!(%from, %to, copies = n, "audit log: wrote the copies a crash left out");
            }
            report.copies_restored.push((from, to, n));
        }
        Ok((audit, report))
    }

    /// Writes the copies in `to` of records of `from` that a crash left
    /// out, looking back to `mark`, and moves the mark to the end of both
    /// tiers (durably). Returns how many it wrote.
    fn restore_copies(&self, from: Tier, to: Tier, mark: CopyMark) -> Result<usize, AuditError> {
        let found = AuditReader::new(&self.core.options.dir, self.encryption_key.clone())
            .match_copies(from, to, mark)?;
        let log = self.taking(to)?;
        let mut slots = Vec::with_capacity(found.missing.len());
        for (_, time, copy) in found.missing {
            let pending = self.seal(to, time, copy, None)?;
            slots.push(self.push(log, pending)?);
        }
        for slot in &slots {
            slot.wait()?;
        }
        let done = CopyMark {
            from_seq: found.from_next,
            to_seq: self.next_seq(to),
        };
        if let Some(m) = log.copy_marks.iter().find(|m| m.from == from) {
            m.set(&mut lock(&m.last), done, true)
                .map_err(|e| AuditError::io(&m.path, e))?;
        }
        Ok(slots.len())
    }

    /// Tells the log that its callers have nothing else to do until the
    /// records they wait on are durable: the edge calls it when every
    /// worker thread is about to park.
    ///
    /// A group commit gathering records for company (the adaptive wait,
    /// and [`AuditOptions::commit_delay`] under load) then syncs at once:
    /// no more records can come before it is answered, so waiting would
    /// only leave the CPU idle. Records queued after the call gather as
    /// before. Cheap when nothing waits; never blocks for long.
    pub fn callers_idle(&self) {
        let Some(first) = self.core.tiers.first() else {
            return;
        };
        first.idle.mark(Instant::now());
        for t in &self.core.tiers {
            if t.waiting.load(Ordering::SeqCst) == 0 {
                continue;
            }
            // Under each lock in turn, so that a gatherer that read the
            // clock before the mark is already waiting when woken; and
            // only where records gather (written but in no sync yet, or
            // queued), not for those already in a sync.
            let gathering = {
                let sy = lock(&t.sync);
                sy.unsynced_records > 0 && sy.syncing_upto <= sy.durable_id
            };
            if gathering {
                t.sync_cond.notify_all();
            }
            let queued = !lock(&t.queue).items.is_empty();
            if queued {
                t.cond.notify_one();
            }
        }
    }

    /// The public key that checks this log's checkpoints.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.core.signing_key.verifying_key()
    }

    /// The options the log was opened with.
    pub fn options(&self) -> &AuditOptions {
        &self.core.options
    }

    fn tier_log(&self, tier: Tier) -> Result<&TierLog, AuditError> {
        self.core.tiers.get(tier.index()).ok_or(AuditError::Closed)
    }

    /// Records an event. Returns once the record is fsynced; on any error
    /// the record was not taken and the caller must refuse its action.
    /// Blocks the thread; from async code use [`Audit::record_async`].
    pub fn record(&self, event: Event) -> Result<Receipt, AuditError> {
        self.enqueue(&event)?.wait()
    }

    /// Records an event without blocking a thread: encrypts it now and
    /// resolves once the record is fsynced (same guarantees as
    /// [`Audit::record`]). Works on any executor; the future is `'static`.
    /// The event is encoded at once, so a borrowed one can be changed and
    /// recorded again (the same event in another tier) without a copy.
    pub fn record_async(&self, event: impl std::borrow::Borrow<Event>) -> RecordFuture {
        RecordFuture {
            state: self.enqueue(event.borrow()).map_err(Some),
        }
    }

    /// [`Audit::record_async`] for an event lent rather than given (see
    /// [`EventRef`]): the record is the same as the equal [`Event`]'s.
    pub fn record_ref_async(&self, event: &EventRef<'_>) -> RecordFuture {
        RecordFuture {
            state: self
                .enqueue_with(event.tier, |out| event.encode(out))
                .map_err(Some),
        }
    }

    /// [`Audit::record_ref_async`], and the same event as a derived copy in
    /// tier `copy`: the future resolves once the record is durable; the
    /// copy is written and synced within about
    /// [`AuditOptions::copy_delay`], and if a crash comes first, opening
    /// the log writes it from the record. The pair must be in
    /// [`AuditOptions::copies`]. Refused, as a record is, when either
    /// tier refuses records.
    pub fn record_ref_async_with_copy(&self, event: &EventRef<'_>, copy: Tier) -> RecordFuture {
        RecordFuture {
            state: self.enqueue_with_copy(event, copy).map_err(Some),
        }
    }

    /// [`Audit::record_ref_async_with_copy`], blocking the thread until
    /// the record is durable (as [`Audit::record`]).
    pub fn record_with_copy(
        &self,
        event: &EventRef<'_>,
        copy: Tier,
    ) -> Result<Receipt, AuditError> {
        self.enqueue_with_copy(event, copy)?.wait()
    }

    fn enqueue_with_copy(&self, event: &EventRef<'_>, copy: Tier) -> Result<Arc<Slot>, AuditError> {
        let from = event.tier;
        if copy == from || !self.core.options.copies.contains(&(from, copy)) {
            return Err(AuditError::CopyNotDeclared { from, to: copy });
        }
        let log = self.taking(from)?;
        self.taking(copy)?;
        let time = self.core.clock.unix_nanos();
        let (plain, copy_plain) = event.encode_with_copy(copy)?;
        let mut copied = self.seal(copy, time, copy_plain, None)?;
        copied.counted = false;
        let pending = self.seal(from, time, plain, Some((copy, Box::new(copied))))?;
        self.push(log, pending)
    }

    /// Encrypts an event and queues it for its tier's writer.
    fn enqueue(&self, event: &Event) -> Result<Arc<Slot>, AuditError> {
        self.enqueue_with(event.tier, |out| event.encode(out))
    }

    /// [`Audit::enqueue`] of an event of `tier` that `encode` appends to the
    /// buffer it is given.
    fn enqueue_with(
        &self,
        tier: Tier,
        encode: impl FnOnce(Vec<u8>) -> Result<Vec<u8>, AuditError>,
    ) -> Result<Arc<Slot>, AuditError> {
        let log = self.taking(tier)?;
        let time = self.core.clock.unix_nanos();
        // Room for a typical record and the tag, so neither grows the buffer.
        let plain = encode(Vec::with_capacity(512))?;
        let pending = self.seal(tier, time, plain, None)?;
        self.push(log, pending)
    }

    /// The tier's log, if it takes records.
    fn taking(&self, tier: Tier) -> Result<&TierLog, AuditError> {
        let log = self.tier_log(tier)?;
        if log.closed.load(Ordering::SeqCst) {
            return Err(AuditError::Closed);
        }
        if log.poisoned.load(Ordering::SeqCst) {
            return Err(AuditError::Poisoned { tier });
        }
        Ok(log)
    }

    /// Encrypts a stored event of `tier` taken at `time`, as a record
    /// whose caller waits for it.
    fn seal(
        &self,
        tier: Tier,
        time: u64,
        plain: Vec<u8>,
        copy: Option<(Tier, Box<Pending>)>,
    ) -> Result<Pending, AuditError> {
        if plain.len() + BODY_FIXED + TAG_LEN > MAX_BODY {
            return Err(AuditError::TooLarge(plain.len()));
        }
        let nonce = fresh_nonce()?;
        let sealed = self.cipher.seal(tier.code(), time, &nonce, plain)?;
        Ok(Pending {
            counted: true,
            copy,
            time,
            at: Instant::now(),
            nonce,
            sealed,
            slot: Arc::new(Slot::default()),
        })
    }

    /// Queues a sealed record for its tier's writer.
    fn push(&self, log: &TierLog, pending: Pending) -> Result<Arc<Slot>, AuditError> {
        let slot = Arc::clone(&pending.slot);
        {
            let mut q = lock(&log.queue);
            if q.shutdown {
                return Err(AuditError::Closed);
            }
            q.items.push(pending);
            log.waiting.fetch_add(1, Ordering::SeqCst);
            log.all_waiting.fetch_add(1, Ordering::SeqCst);
            if q.items.len() == q.wake_at {
                log.cond.notify_one();
            }
        }
        Ok(slot)
    }

    /// Writes a checkpoint for every tier that has records since the last
    /// one. Returns the checkpoints written.
    pub fn checkpoint_now(&self) -> Result<Vec<Checkpoint>, AuditError> {
        let now = self.core.clock.unix_nanos();
        let mut out = Vec::new();
        for log in &self.core.tiers {
            let mut st = lock(&log.state);
            drop(self.core.flush_pending_checkpoint(log, &st)?);
            if st.frontier.size() > st.last_cp_count
                || (st.frontier.size() > 0 && st.last_cp_count == 0)
            {
                out.push(st.checkpoint(&self.core, log, CheckpointKind::Manual, now)?);
            }
        }
        Ok(out)
    }

    /// Group-commit figures per tier since the log was opened: fdatasyncs,
    /// records they made durable, and time spent in them. Records per sync
    /// and mean sync time show what `commit_delay` and `commit_siblings`
    /// do on a deployment.
    pub fn commit_stats(&self) -> Vec<(Tier, CommitStats)> {
        self.core
            .tiers
            .iter()
            .map(|l| {
                (
                    l.tier,
                    CommitStats {
                        syncs: l.syncs.load(Ordering::Relaxed),
                        records: l.synced_records.load(Ordering::Relaxed),
                        sync_nanos: l.sync_time_nanos.load(Ordering::Relaxed),
                    },
                )
            })
            .collect()
    }

    /// Syncs run, records they made durable and nanoseconds spent in
    /// them, over all tiers (for the benchmark).
    pub(crate) fn sync_stats(&self) -> (u64, u64, u64) {
        self.commit_stats()
            .into_iter()
            .fold((0, 0, 0), |(s, r, t), (_, c)| {
                (s + c.syncs, r + c.records, t + c.sync_nanos)
            })
    }

    /// Number of records ever written to `tier` (the next seq).
    pub fn next_seq(&self, tier: Tier) -> u64 {
        self.tier_log(tier)
            .map_or(0, |l| lock(&l.state).frontier.size())
    }

    /// A reader over this log (search, export, proofs).
    pub fn reader(&self) -> AuditReader {
        AuditReader::new(&self.core.options.dir, self.encryption_key.clone())
    }

    /// Finds records; see [`Query`].
    pub fn search(&self, query: &Query) -> Result<Vec<crate::event::Record>, AuditError> {
        self.reader().search(query)
    }

    /// Writes matching records as JSON lines; returns how many.
    pub fn export_jsonl(&self, out: &mut dyn io::Write, query: &Query) -> Result<u64, AuditError> {
        self.reader().export_jsonl(out, query)
    }

    /// An inclusion proof for record `seq` of `tier`, checkpointing first if
    /// the record is newer than the latest checkpoint.
    pub fn prove(&self, tier: Tier, seq: u64) -> Result<InclusionProof, AuditError> {
        let log = self.tier_log(tier)?;
        {
            let mut st = lock(&log.state);
            if seq >= st.frontier.size() {
                return Err(AuditError::NoSuchRecord { tier, seq });
            }
            drop(self.core.flush_pending_checkpoint(log, &st)?);
            if seq >= st.last_cp_count {
                let now = self.core.clock.unix_nanos();
                st.checkpoint(&self.core, log, CheckpointKind::Manual, now)?;
            }
        }
        self.reader().prove(tier, seq, &self.verifying_key())
    }

    /// Removes, per tier, the oldest whole segments whose newest record is
    /// older than the tier's retention (never the segment being written),
    /// after writing a signed disposal checkpoint that names them and keeps
    /// the chain head and Merkle frontier at the cut. Run it from the
    /// caller's scheduler.
    pub fn apply_retention(&self) -> Result<RetentionReport, AuditError> {
        let now = self.core.clock.unix_nanos();
        let vk = self.verifying_key();
        let mut report = RetentionReport::default();
        for log in &self.core.tiers {
            let tier = log.tier;
            let days = u64::from(self.core.options.retention.days(tier));
            let horizon = now.saturating_sub(days.saturating_mul(NANOS_PER_DAY));
            let (active, tier_dir) = {
                let st = lock(&log.state);
                (st.seg.as_ref().map(|s| s.number), st.tier_dir.clone())
            };
            let Some(active) = active else { continue };
            // Read (and their signatures checked) only if a segment is.
            let mut cps = LazyCheckpoints {
                tier,
                path: checkpoint::path_for(&self.core.options.dir, tier),
                vk: &vk,
                loaded: None,
            };
            // The oldest sealed segments whose newest record is past the
            // horizon: each segment's newest record time from the time
            // index, or else read once (from its header's state) to learn
            // it, remembered while it is kept.
            let found =
                self.expired_prefix(log, &tier_dir, &mut cps, active, horizon, &mut report)?;
            let Some((oldest, cut)) = found else {
                continue;
            };
            let cps = cps.get(&tier_dir.join(segment_name(oldest)))?;
            // Read them all again, from the oldest, before they go: the
            // disposal record states the chain head and Merkle frontier
            // at the cut, so those are computed, not trusted.
            let range = SegmentRange {
                resume_from: None,
                stop_before: Some(cut + 1),
            };
            let scan = scan_tier(tier, &tier_dir, cps, range, &mut |_, _| {})?;
            report.bytes_read += scan.bytes;
            if let Some(f) = scan.findings.into_iter().next().or(scan.torn) {
                return Err(AuditError::Corrupt(Box::new(f)));
            }
            // What goes is what the records say, not the index: a segment
            // the index put past the horizon whose records are not is kept,
            // and its records' time remembered instead of the index's.
            let expired: Vec<_> = scan
                .segments
                .iter()
                .take_while(|s| s.max_time() < horizon)
                .collect();
            {
                let mut seen = lock(&log.retention_seen);
                for s in scan.segments.iter().skip(expired.len()) {
                    seen.insert(s.number, s.max_time());
                }
            }
            let (Some(first), Some(last)) = (expired.first(), expired.last()) else {
                continue;
            };
            let disposal = Disposal {
                segments: expired.iter().map(|s| segment_name(s.number)).collect(),
                first_seq: first.first_seq,
                end_seq: last.end_seq,
                frontier: last
                    .frontier_end
                    .nodes()
                    .iter()
                    .map(|h| to_hex(h))
                    .collect(),
            };
            {
                let st = lock(&log.state);
                let _in_order = self.core.flush_pending_checkpoint(log, &st)?;
                let cp = Checkpoint::sign(
                    &self.core.signing_key,
                    tier,
                    CheckpointKind::Disposal,
                    &last.frontier_end,
                    &last.chain_end,
                    now,
                    Some(disposal),
                );
                append_line(&self.core.options, tier, &cp)?;
                let mut seen = lock(&log.retention_seen);
                for s in &expired {
                    fs::remove_file(&s.path).map_err(|e| AuditError::io(&s.path, e))?;
                    seen.remove(&s.number);
                }
                checkpoint::sync_dir(&st.tier_dir)?;
            }
            tracing::info!(%tier, segments = expired.len(), first_seq = first.first_seq, end_seq = last.end_seq, "audit retention disposed of segments");
            report.disposed.push(Disposed {
                tier,
                segments: expired.iter().map(|s| s.path.clone()).collect(),
                first_seq: first.first_seq,
                end_seq: last.end_seq,
            });
        }
        Ok(report)
    }

    /// The oldest sealed segment (of those before `active`) and the newest
    /// of the run from it in which every record is older than `horizon`, if
    /// there is such a run. A segment not seen before has its newest record
    /// time from the time index, or, when the index has no line for it (or
    /// cannot be read), is read once, from the state its header holds; one
    /// found within retention is remembered, so a run that disposes of
    /// nothing reads nothing. The index only decides which segments the
    /// disposal reads: it reads each one it removes and removes only those
    /// whose records are all past the horizon.
    fn expired_prefix(
        &self,
        log: &TierLog,
        tier_dir: &Path,
        cps: &mut LazyCheckpoints<'_>,
        active: u64,
        horizon: u64,
        report: &mut RetentionReport,
    ) -> Result<Option<(u64, u64)>, AuditError> {
        let sealed: Vec<u64> = list_segments(tier_dir)?
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| *n < active)
            .collect();
        let mut seen = lock(&log.retention_seen);
        // Segments gone since (disposed of) are forgotten.
        seen.retain(|n, _| sealed.binary_search(n).is_ok());
        let mut cut = None;
        // read once a run, and only if a segment is not remembered
        let mut index = None;
        let mut indexed = |n: u64| {
            index
                .get_or_insert_with(|| {
                    crate::times::load_or_empty(
                        log.tier,
                        tier_dir,
                        "retention reads each segment to learn its newest record",
                    )
                })
                .get(&n)
                .map(|s| s.newest)
        };
        for &n in &sealed {
            let newest = match seen.get(&n).copied().or_else(|| indexed(n)) {
                Some(t) => t,
                None => {
                    let range = SegmentRange {
                        resume_from: Some(n),
                        stop_before: Some(n + 1),
                    };
                    let cps = cps.get(&tier_dir.join(segment_name(n)))?;
                    let scan = scan_tier(log.tier, tier_dir, cps, range, &mut |_, _| {})?;
                    report.bytes_read += scan.bytes;
                    if let Some(f) = scan.findings.into_iter().next().or(scan.torn) {
                        return Err(AuditError::Corrupt(Box::new(f)));
                    }
                    let Some(info) = scan.segments.first() else {
                        break;
                    };
                    // The line the index lacks (a log older than the index,
                    // or a crash between sealing and indexing), from the
                    // records just read, so that searches pass it over too.
                    if let Some(span) = info.span {
                        if let Err(e) = crate::times::append(tier_dir, n, span) {
                            tracing::warn!(tier = %log.tier, segment = n, error = %e, "cannot add a segment to the audit time index");
                        }
                    }
                    info.max_time()
                }
            };
            if newest >= horizon {
                seen.insert(n, newest);
                break;
            }
            cut = Some(n);
        }
        Ok(sealed.first().copied().zip(cut))
    }

    /// Refuses further records, writes a closing checkpoint for every tier
    /// with records since the last one, and trims the open segments.
    pub fn close(&self) -> Result<(), AuditError> {
        for log in &self.core.tiers {
            lock(&log.queue).shutdown = true;
            log.cond.notify_all();
        }
        for handle in lock(&self.workers).drain(..) {
            let _ = handle.join();
        }
        let now = self.core.clock.unix_nanos();
        let mut first_err = None;
        for log in &self.core.tiers {
            if log.closed.load(Ordering::SeqCst) {
                continue;
            }
            // Copies queued after this tier's writer stopped (their records
            // were written last): written here, made durable below.
            let mut copies = std::mem::take(&mut lock(&log.queue).copies);
            if !copies.is_empty() {
                let mut batch = Vec::with_capacity(copies.len());
                let copied = take_copies(&mut copies, &mut batch);
                self.core.commit(log, batch, false, copied);
            }
        }
        for log in &self.core.tiers {
            if log.closed.swap(true, Ordering::SeqCst) {
                continue;
            }
            let mut st = lock(&log.state);
            if log.poisoned.load(Ordering::SeqCst) {
                continue;
            }
            if let Err(e) = self.core.flush_pending_checkpoint(log, &st).map(drop) {
                first_err.get_or_insert(e);
            }
            if st.frontier.size() > st.last_cp_count {
                if let Err(e) = st.checkpoint(&self.core, log, CheckpointKind::Close, now) {
                    first_err.get_or_insert(e);
                }
            }
            if let Some(seg) = &st.seg {
                let r = seg.file.set_len(seg.len).and_then(|()| seg.file.sync_all());
                if let Err(e) = r {
                    first_err.get_or_insert(AuditError::io(st.tier_dir.clone(), e));
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for Audit {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::warn!(error = %e, "audit log close failed");
        }
        // Unlocked explicitly, not by closing the file: a child process
        // forked elsewhere in this process (before its exec closes it)
        // shares the open file, and with it the lock, so closing our
        // descriptor alone could leave the directory locked for a moment
        // after the log is gone.
        let _ = self._lock.unlock();
    }
}

impl Core {
    /// The tier's writer thread: takes everything queued, commits it with
    /// one write and one sync, wakes each caller, repeats.
    fn writer_loop(&self, index: usize) {
        let Some(log) = self.tiers.get(index) else {
            return;
        };
        let _guard = PanicGuard(log);
        let max = self.options.max_batch_records.max(1);
        let copy_delay = self.options.copy_delay;
        loop {
            let (batch, gathered, copied) = {
                let mut q = lock(&log.queue);
                if max > 1 {
                    q = Self::await_usual_group(log, q);
                }
                while q.items.is_empty() && !q.shutdown {
                    if q.retry_checkpoint {
                        q.retry_checkpoint = false;
                        drop(q);
                        self.retry_due_checkpoint(log);
                        q = lock(&log.queue);
                        continue;
                    }
                    // Derived copies are written once the oldest has
                    // waited `copy_delay` (or with the next batch).
                    let wait = match q.copies_since {
                        Some(since) => match copy_delay.checked_sub(since.elapsed()) {
                            Some(left) if !left.is_zero() => left,
                            _ => break,
                        },
                        None => self.options.checkpoint_every,
                    };
                    let (guard, waited) = log
                        .cond
                        .wait_timeout(q, wait.min(self.options.checkpoint_every))
                        .unwrap_or_else(|e| e.into_inner());
                    q = guard;
                    if waited.timed_out()
                        && q.items.is_empty()
                        && q.copies.is_empty()
                        && !q.shutdown
                    {
                        // Idle: still checkpoint every T when records came in.
                        drop(q);
                        self.idle_checkpoint(log);
                        q = lock(&log.queue);
                    }
                }
                if q.items.is_empty() && q.copies.is_empty() {
                    drop(q);
                    let st = lock(&log.state);
                    let _ = log.sync_now(&st, &Disk(self.options.fault.as_deref()));
                    drop(st);
                    lock(&log.sync).shutdown = true;
                    log.sync_cond.notify_all();
                    return;
                }
                let gathered = max > 1 && !q.items.is_empty() && {
                    q = self.gather(log, q);
                    true
                };
                // Any copies waiting go first, with the batch.
                let mut batch = Vec::with_capacity(q.copies.len() + q.items.len().min(max));
                let copied = take_copies(&mut q.copies, &mut batch);
                q.copies_since = None;
                let n = q.items.len().min(max);
                if n == q.items.len() {
                    batch.append(&mut q.items);
                } else {
                    batch.extend(q.items.drain(..n));
                }
                (batch, gathered, copied)
            };
            self.commit(log, batch, gathered, copied);
        }
    }

    /// Right after a group is answered, when a group of callers usually
    /// waits, sleeps until that many are back (or about one sync time has
    /// passed) instead of being woken by the first of them: a wake-up that
    /// would only start gathering costs the callers' threads a preemption
    /// and the writer two context switches per group.
    fn await_usual_group<'a>(
        log: &'a TierLog,
        mut q: MutexGuard<'a, Queue>,
    ) -> MutexGuard<'a, Queue> {
        if !q.items.is_empty() || q.shutdown {
            return q;
        }
        let expect = {
            let sy = lock(&log.sync);
            let usual = own_target(&sy, Instant::now());
            (sy.syncing_upto <= sy.durable_id).then(|| {
                (
                    usual.saturating_sub(sy.unsynced_records),
                    about_one_sync(&sy),
                )
            })
        };
        if let Some((n, cap)) = expect.filter(|(n, _)| *n > 1) {
            q.wake_at = n;
            q = log
                .cond
                .wait_timeout(q, cap)
                .map_or_else(|e| e.into_inner().0, |(g, _)| g);
            q.wake_at = 1;
        }
        q
    }

    /// With records queued and no sync in flight, waits (without writing)
    /// for the rest of the group to come in, so that it is written with one
    /// `pwrite` and synced at once, and the writer does not compete for the
    /// CPU with the callers on their way back.
    fn gather<'a>(&self, log: &'a TierLog, mut q: MutexGuard<'a, Queue>) -> MutexGuard<'a, Queue> {
        let started = Instant::now();
        let mut seen = q.items.len();
        let mut seen_at = started;
        while !q.shutdown {
            let now = Instant::now();
            let wait = {
                let sy = lock(&log.sync);
                if sy.syncing_upto > sy.durable_id {
                    // A sync is in flight: write now, sync next.
                    None
                } else {
                    let count = sy.unsynced_records + q.items.len();
                    let queued = sy
                        .first_queued_at
                        .or_else(|| q.items.first().map(|p| p.at))
                        .unwrap_or(started);
                    let led = log.lead.led_since(queued);
                    let idle = q.items.last().is_some_and(|p| log.idle.led_since(p.at));
                    gather_wait(&sy, count, started, seen_at, now, led, idle).map(|w| {
                        let usual = own_target(&sy, started);
                        (w, usual.saturating_sub(sy.unsynced_records))
                    })
                }
            };
            let Some((wait, wake_at)) = wait else { break };
            q.wake_at = wake_at.max(q.items.len() + 1);
            q = log
                .cond
                .wait_timeout(q, wait)
                .map_or_else(|e| e.into_inner().0, |(g, _)| g);
            if q.items.len() > seen {
                seen = q.items.len();
                seen_at = Instant::now();
            }
        }
        q.wake_at = 1;
        q
    }

    /// Takes the periodic checkpoint due after a batch without writing it:
    /// a syncer thread signs and appends it once the batch is durable
    /// (see [`PendingCheckpoint`]). While an earlier one is still on its
    /// way (or being appended), this one stays due; taken late, it still
    /// leaves the next one due where the every-N-records cadence puts it.
    ///
    /// If the earlier one's records are durable but the syncer has not
    /// appended it yet (on a busy machine it may not run for a while), it
    /// is appended here, so periodic checkpoints do not fall behind.
    fn defer_checkpoint(&self, log: &TierLog, st: &mut WriterState, now: u64) {
        // Never wait here for a syncer that is appending the previous one;
        // it wakes the writer once it has (`cp_blocked`), so this one is
        // taken then even if no other record comes.
        let try_slot = || match log.cp_pending.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        let mut slot = match try_slot() {
            Some(g) => g,
            None => {
                log.cp_blocked.store(true, Ordering::SeqCst);
                // Once more, in case the syncer let go before the flag was up.
                match try_slot() {
                    Some(g) => g,
                    None => return,
                }
            }
        };
        if slot.is_some() {
            if log.cp_upto.load(Ordering::SeqCst) > lock(&log.sync).durable_id {
                // The syncer appends it once durable, then wakes the writer.
                log.cp_blocked.store(true, Ordering::SeqCst);
                return;
            }
            if let Err(e) = self.append_pending(log, &mut slot) {
                tracing::warn!(tier = %log.tier, error = %e, "audit checkpoint failed; will retry");
                return;
            }
        }
        // Flagged under the sync lock, under which the syncer checks the
        // flag before it waits, so the wake-up below cannot be missed.
        {
            let sy = lock(&log.sync);
            log.cp_upto.store(sy.written_id, Ordering::SeqCst);
            log.cp_waiting.store(true, Ordering::SeqCst);
        }
        *slot = Some(PendingCheckpoint {
            frontier: st.frontier.clone(),
            chain_head: st.chain_head,
            time: now,
        });
        log.cp_retry.store(false, Ordering::SeqCst);
        let size = st.frontier.size();
        let every = self.options.checkpoint_every_records.max(1);
        st.cp_cadence_from = cadence_after(st.cp_cadence_from, size, every);
        st.last_cp_count = size;
        st.last_cp_time = now;
        drop(slot);
        log.sync_cond.notify_one();
    }

    /// Signs and appends the checkpoint in `slot`, emptying it. On failure
    /// the writer takes a new one after its next batch.
    fn append_pending(
        &self,
        log: &TierLog,
        slot: &mut Option<PendingCheckpoint>,
    ) -> Result<(), AuditError> {
        let Some(p) = slot.take() else {
            return Ok(());
        };
        log.cp_waiting.store(false, Ordering::SeqCst);
        let cp = Checkpoint::sign(
            &self.signing_key,
            log.tier,
            CheckpointKind::Periodic,
            &p.frontier,
            &p.chain_head,
            p.time,
            None,
        );
        append_line(&self.options, log.tier, &cp).inspect_err(|_| {
            log.cp_retry.store(true, Ordering::SeqCst);
        })
    }

    /// A syncer's part: appends the pending checkpoint if its records are
    /// durable by now.
    fn append_pending_if_durable(&self, log: &TierLog) {
        let mut slot = lock(&log.cp_pending);
        let ready =
            slot.is_some() && log.cp_upto.load(Ordering::SeqCst) <= lock(&log.sync).durable_id;
        if ready && !log.poisoned.load(Ordering::SeqCst) {
            if let Err(e) = self.append_pending(log, &mut slot) {
                tracing::warn!(tier = %log.tier, error = %e, "audit checkpoint failed; will retry");
            }
        }
        drop(slot);
        // A due checkpoint waited for this one: have the writer take it.
        if log.cp_blocked.swap(false, Ordering::SeqCst) {
            lock(&log.queue).retry_checkpoint = true;
            log.cond.notify_one();
        }
    }

    /// The writer, woken by [`Core::append_pending_if_durable`]: takes the
    /// periodic checkpoint that came due while the previous one was on its
    /// way, if it still is due.
    fn retry_due_checkpoint(&self, log: &TierLog) {
        if log.poisoned.load(Ordering::SeqCst) {
            return;
        }
        let mut st = lock(&log.state);
        let now = self.clock.unix_nanos();
        self.take_due_checkpoint(log, &mut st, now);
    }

    /// Takes the periodic checkpoint if one is due (or a deferred one
    /// failed): deferred to a syncer thread, or written here without one.
    fn take_due_checkpoint(&self, log: &TierLog, st: &mut WriterState, now: u64) {
        if !log.cp_retry.load(Ordering::SeqCst) && !st.checkpoint_due(&self.options, now) {
            return;
        }
        if self.options.sync_threads > 0 {
            self.defer_checkpoint(log, st, now);
        } else if let Err(e) = st.checkpoint(self, log, CheckpointKind::Periodic, now) {
            tracing::warn!(tier = %log.tier, error = %e, "audit checkpoint failed; will retry");
        }
    }

    /// Before any other checkpoint of the tier is written: makes the
    /// pending one's records durable and appends it. Returns the lock that
    /// keeps checkpoint lines in order; hold it while appending another.
    fn flush_pending_checkpoint<'a>(
        &self,
        log: &'a TierLog,
        st: &WriterState,
    ) -> Result<MutexGuard<'a, Option<PendingCheckpoint>>, AuditError> {
        let mut slot = lock(&log.cp_pending);
        if slot.is_some() {
            if log.cp_upto.load(Ordering::SeqCst) > lock(&log.sync).durable_id {
                log.sync_now(st, &Disk(self.options.fault.as_deref()))?;
            }
            self.append_pending(log, &mut slot)?;
        }
        Ok(slot)
    }

    fn idle_checkpoint(&self, log: &TierLog) {
        if log.poisoned.load(Ordering::SeqCst) {
            return;
        }
        let mut st = lock(&log.state);
        let now = self.clock.unix_nanos();
        if st.checkpoint_due(&self.options, now) {
            if let Err(e) = st.checkpoint(self, log, CheckpointKind::Periodic, now) {
                tracing::warn!(tier = %log.tier, error = %e, "audit checkpoint failed; will retry");
            }
        }
    }

    /// A tier's syncer thread: whenever batches have been written that no
    /// sync in flight covers, fdatasync and hand out their receipts.
    fn syncer_loop(&self, index: usize) {
        let Some(log) = self.tiers.get(index) else {
            return;
        };
        let _guard = PanicGuard(log);
        let disk = Disk(self.options.fault.as_deref());
        let mut sy = lock(&log.sync);
        loop {
            if log.pending_checkpoint_ready(&sy) && !log.poisoned.load(Ordering::SeqCst) {
                drop(sy);
                self.append_pending_if_durable(log);
                sy = lock(&log.sync);
                continue;
            }
            if sy.written_id > sy.syncing_upto && !log.poisoned.load(Ordering::SeqCst) {
                // With no other sync in flight, wait a little for the
                // callers just answered to come back, so that one sync
                // takes them all instead of every other one.
                let idle = sy.syncing_upto <= sy.durable_id;
                if idle && !sy.shutdown {
                    if let Some(wait) = log.sync_due(&sy, Instant::now()) {
                        sy = log
                            .sync_cond
                            .wait_timeout(sy, wait)
                            .map_or_else(|e| e.into_inner().0, |(g, _)| g);
                        continue;
                    }
                }
                let target = sy.written_id;
                sy.syncing_upto = target;
                let leads = sy.leads(Instant::now());
                sy.close_group();
                let file = sy.file.clone();
                drop(sy);
                log.lead_sync(&self.tiers, leads);
                log.syncs.fetch_add(1, Ordering::Relaxed);
                let started = Instant::now();
                let r = file.as_deref().map_or(Ok(()), |f| disk.sync(f));
                log.note_sync(started);
                match r {
                    Ok(()) => log.mark_durable(target),
                    Err(e) => log.poison(&e),
                }
                sy = lock(&log.sync);
                continue;
            }
            if sy.shutdown {
                return;
            }
            sy = log.sync_cond.wait(sy).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Queues the derived copies of records of `from` just written, in
    /// order, for their tiers' writers (see [`crate::copies`]); those a
    /// writer that has stopped leaves are written by [`Audit::close`].
    fn queue_copies(&self, from: Tier, copies: Vec<(Tier, u64, Pending)>) {
        for (to, seq, c) in copies {
            let Some(log) = self.tiers.get(to.index()) else {
                continue;
            };
            if let Some(m) = log.copy_marks.iter().find(|m| m.from == from) {
                m.in_flight.fetch_add(1, Ordering::SeqCst);
            }
            let mut q = lock(&log.queue);
            q.copies.push((from, seq, c));
            if q.copies_since.is_none() {
                q.copies_since = Some(Instant::now());
                log.cond.notify_one();
            }
        }
    }

    /// Writes one batch and hands every caller its result. `copied`: for
    /// the derived copies at the batch's head (see [`crate::copies`]), per
    /// tier they were copied from, the sequence number after the last.
    fn commit(
        &self,
        log: &TierLog,
        mut batch: Vec<Pending>,
        gathered: bool,
        copied: Vec<(Tier, u64, usize)>,
    ) {
        let tier = log.tier;
        let callers = batch.iter().filter(|p| p.counted).count();
        if log.poisoned.load(Ordering::SeqCst) {
            log.answered(callers);
            for p in batch {
                p.slot.fill(Err(AuditError::Poisoned { tier }));
            }
            return;
        }
        let mut st = lock(&log.state);
        let now = self.clock.unix_nanos();
        let (before, ended) = {
            let sy = lock(&log.sync);
            (sy.written_id, sy.last_sync_end)
        };
        match st.write_batch(&self.options, tier, &batch, now) {
            Ok((receipts, rolled)) => {
                if rolled {
                    // The roll synced the old segment: all earlier batches are durable.
                    log.mark_durable(before);
                }
                // The records written that asked for copies: queue them.
                let mut copies = Vec::new();
                for (p, r) in batch.iter_mut().zip(&receipts) {
                    if let Some((to, c)) = p.copy.take() {
                        copies.push((to, r.seq, *c));
                    }
                }
                let next = receipts.last().map_or(0, |r| r.seq + 1);
                if copies.is_empty() {
                    for &(from, to) in &self.options.copies {
                        if from == tier {
                            if let Some(to_log) = self.tiers.get(to.index()) {
                                to_log.pass_copies(from, next);
                            }
                        }
                    }
                } else {
                    self.queue_copies(tier, copies);
                }
                let copied: Vec<(Tier, CopyMark, usize)> = copied
                    .into_iter()
                    .map(|(from, from_seq, n)| {
                        let mark = CopyMark {
                            from_seq,
                            to_seq: next,
                        };
                        (from, mark, n)
                    })
                    .collect();
                // The copies at the head have no callers: the rest is the
                // group whose callers wait.
                let copies_here = batch.len() - callers;
                let batch = batch.split_off(copies_here);
                let mut receipts = receipts;
                let receipts = receipts.split_off(copies_here.min(receipts.len()));
                // queued in order: those after the last sync's end are a tail
                let fresh = match ended {
                    Some(end) => batch
                        .get(batch.partition_point(|p| p.at <= end)..)
                        .unwrap_or_default(),
                    None => &[],
                };
                let arrivals = fresh
                    .first()
                    .zip(fresh.last())
                    .map(|(f, l)| (fresh.len(), f.at, l.at));
                let queued_at = batch.first().map(|p| p.at);
                let last_queued = batch.last().map(|p| p.at);
                let done: Vec<(Arc<Slot>, Receipt)> =
                    batch.into_iter().map(|p| p.slot).zip(receipts).collect();
                // Nobody else queued and no sync in flight: sync here and
                // save the hand-off to a syncer (what a lone writer wants).
                // Otherwise hand it off, so the next batch can be written
                // while this one syncs.
                let queue_empty = lock(&log.queue).items.is_empty();
                let (inline, notify, leads) = {
                    let mut sy = lock(&log.sync);
                    sy.written_id += 1;
                    let id = sy.written_id;
                    let now = Instant::now();
                    let first = sy.first_unsynced_at.is_none();
                    sy.unsynced_records += done.len();
                    if let Some((n, first, last)) = arrivals {
                        sy.note_arrivals(n, first, last);
                    }
                    sy.first_unsynced_at.get_or_insert(now);
                    if first {
                        sy.first_queued_at = queued_at;
                    }
                    sy.last_written_at = Some(now);
                    if last_queued.is_some() {
                        sy.last_queued_at = last_queued;
                    }
                    sy.pending.push_back(WrittenBatch { id, done, copied });
                    sy.file = st.seg.as_ref().map(|s| Arc::clone(&s.file));
                    let idle = sy.syncing_upto <= sy.durable_id;
                    let due = gathered || log.sync_due(&sy, now).is_none();
                    // Inline only when nobody else is coming either (a lone
                    // writer, or the last of a group); otherwise a syncer
                    // gathers them. A gathering syncer times its own wait,
                    // so it is woken only to start or to stop gathering.
                    let inline = self.options.sync_threads == 0 || (idle && queue_empty && due);
                    let leads = inline && sy.leads(now);
                    if inline {
                        sy.syncing_upto = id;
                        sy.close_group();
                    }
                    (inline, !inline && (!idle || due || first), leads)
                };
                log.lead_sync(&self.tiers, leads);
                if inline {
                    let _ = log.sync_now(&st, &Disk(self.options.fault.as_deref()));
                } else if notify {
                    log.sync_cond.notify_one();
                }
                if log.poisoned.load(Ordering::SeqCst) {
                    // A sync failed while this batch was being written.
                    log.fail_pending(&|| AuditError::Poisoned { tier });
                    return;
                }
                self.take_due_checkpoint(log, &mut st, now);
            }
            Err(failure) => {
                if failure.poison {
                    log.poison(&failure.source);
                } else {
                    tracing::error!(%tier, error = %failure.source, "audit log write failed; records refused");
                }
                let (kind, msg) = (failure.source.kind(), failure.source.to_string());
                // Copies in the batch are lost with it; the records they
                // came from are durable or refused, and opening the log
                // writes the copies of the durable ones.
                log.answered(callers);
                for p in batch {
                    p.slot.fill(Err(AuditError::WriteFailed {
                        tier,
                        source: io::Error::new(kind, msg.clone()),
                    }));
                }
            }
        }
    }
}

/// Moves the queued copies into `batch` (its head) and returns, per tier
/// they were copied from, the sequence number after the last of them and
/// how many there are.
fn take_copies(
    copies: &mut Vec<(Tier, u64, Pending)>,
    batch: &mut Vec<Pending>,
) -> Vec<(Tier, u64, usize)> {
    let mut copied: Vec<(Tier, u64, usize)> = Vec::new();
    for (from, seq, c) in copies.drain(..) {
        match copied.iter_mut().find(|(t, _, _)| *t == from) {
            Some((_, upto, n)) => {
                *upto = (*upto).max(seq + 1);
                *n += 1;
            }
            None => copied.push((from, seq + 1, 1)),
        }
        batch.push(c);
    }
    copied
}

/// Where the every-`every` cadence counts from once a periodic checkpoint
/// covering `size` records is taken, having counted from `from`: the last
/// point on the cadence at or below `size` if the checkpoint was due by
/// count (taken on time or late), else `size` (taken by the clock).
fn cadence_after(from: u64, size: u64, every: u64) -> u64 {
    let since = size.saturating_sub(from);
    if since >= every {
        size - since % every
    } else {
        size
    }
}

/// A tier's checkpoints for retention, read and checked the first time
/// they are wanted: a run that reads no segment reads no checkpoint either
/// (the file gains a line every thousand records or minute, each with a
/// signature to check).
struct LazyCheckpoints<'a> {
    tier: Tier,
    path: PathBuf,
    vk: &'a VerifyingKey,
    /// The lines from this count on, once read.
    loaded: Option<(u64, Vec<FiledCheckpoint>)>,
}

impl LazyCheckpoints<'_> {
    /// Those of use to a scan that starts at the segment `first`, of which
    /// only the ones counting at least its first record are checked.
    fn get(&mut self, first: &Path) -> Result<&[FiledCheckpoint], AuditError> {
        let from = crate::verify::read_header(self.tier, first)?.first_seq;
        if self.loaded.as_ref().is_none_or(|(at, _)| *at > from) {
            let mut problems = Vec::new();
            let path = std::slice::from_ref(&self.path);
            let cps = load_checkpoints_from(self.tier, path, self.vk, &mut problems, from)?;
            self.loaded = Some((from, cps));
        }
        Ok(self
            .loaded
            .as_ref()
            .map(|(_, c)| c.as_slice())
            .unwrap_or_default())
    }
}

/// Appends a checkpoint's line to the tier's checkpoint file and its copy,
/// each synced. Callers hold the tier's `cp_pending` lock, so that lines
/// are appended in order.
fn append_line(options: &AuditOptions, tier: Tier, cp: &Checkpoint) -> Result<(), AuditError> {
    checkpoint::append(&checkpoint::path_for(&options.dir, tier), cp)?;
    if let Some(copy) = &options.checkpoint_dir {
        checkpoint::append(&checkpoint::path_for(copy, tier), cp)?;
    }
    Ok(())
}

/// Should a writer or syncer thread ever panic, nobody may wait forever:
/// refuse everything queued or in flight and take no more records.
struct PanicGuard<'a>(&'a TierLog);

impl Drop for PanicGuard<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let log = self.0;
        log.poisoned.store(true, Ordering::SeqCst);
        let queued: Vec<Pending> = {
            let mut q = lock(&log.queue);
            q.shutdown = true;
            q.items.drain(..).collect()
        };
        log.answered(queued.len());
        for p in queued {
            p.slot.fill(Err(AuditError::Poisoned { tier: log.tier }));
        }
        log.fail_pending(&|| AuditError::Poisoned { tier: log.tier });
    }
}

struct BatchFailure {
    poison: bool,
    source: io::Error,
}

impl BatchFailure {
    fn soft(source: io::Error) -> Self {
        BatchFailure {
            poison: false,
            source,
        }
    }
}

impl WriterState {
    fn bucket(options: &AuditOptions, now: u64) -> u64 {
        match options.segment_roll_interval {
            Some(d) => now / u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1),
            None => 0,
        }
    }

    fn checkpoint_due(&self, options: &AuditOptions, now: u64) -> bool {
        let size = self.frontier.size();
        let every = u64::try_from(options.checkpoint_every.as_nanos()).unwrap_or(u64::MAX);
        size > self.last_cp_count
            && (size.saturating_sub(self.cp_cadence_from)
                >= options.checkpoint_every_records.max(1)
                || now.saturating_sub(self.last_cp_time) >= every)
    }

    fn checkpoint(
        &mut self,
        core: &Core,
        log: &TierLog,
        kind: CheckpointKind,
        now: u64,
    ) -> Result<Checkpoint, AuditError> {
        // A checkpoint may only count records that are on disk.
        log.sync_now(self, &Disk(core.options.fault.as_deref()))?;
        let _in_order = core.flush_pending_checkpoint(log, self)?;
        let tier = log.tier;
        let cp = Checkpoint::sign(
            &core.signing_key,
            tier,
            kind,
            &self.frontier,
            &self.chain_head,
            now,
            None,
        );
        append_line(&core.options, tier, &cp)?;
        self.last_cp_count = self.frontier.size();
        self.cp_cadence_from = self.last_cp_count;
        self.last_cp_time = now;
        Ok(cp)
    }

    /// Starts a new segment (written under a temporary name, synced, then
    /// renamed, so a segment file always has a whole header) and trims the
    /// old one.
    fn roll(
        &mut self,
        options: &AuditOptions,
        tier: Tier,
        now: u64,
        bucket: u64,
    ) -> Result<(), BatchFailure> {
        let disk = Disk(options.fault.as_deref());
        let number = self.next_segment;
        let path = self.tier_dir.join(segment_name(number));
        let tmp = path.with_extension("seg.tmp");
        let header = SegmentHeader {
            tier,
            segment: number,
            first_seq: self.frontier.size(),
            created_unix_nanos: now,
            prev_hash: self.chain_head,
            frontier: self.frontier.nodes().to_vec(),
        };
        let start = header.encoded_len() as u64;
        let make = || -> io::Result<File> {
            let file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&tmp)?;
            disk.write_at(&file, &header.encode(), 0)?;
            disk.zero_fill(&file, start, start + options.preallocate_bytes)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)?;
            File::open(&self.tier_dir)?.sync_all()?;
            Ok(file)
        };
        let file = match make() {
            Ok(f) => f,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(BatchFailure::soft(e));
            }
        };
        if let Some(old) = &self.seg {
            // Everything written to the old segment must be durable before
            // the writer moves on (its syncers follow the new file).
            if let Err(e) = disk.sync(&old.file) {
                let _ = fs::remove_file(&path);
                return Err(BatchFailure {
                    poison: true,
                    source: e,
                });
            }
            if let Err(e) = old.file.set_len(old.len).and_then(|()| old.file.sync_all()) {
                tracing::warn!(%tier, error = %e, "could not trim the finished segment; its zero fill stays");
            }
            // Sealed and durable: its span goes to the time index. Without
            // the line, searches read the segment; nothing else depends on it.
            if let Some(span) = old.span {
                if let Err(e) = crate::times::append(&self.tier_dir, old.number, span) {
                    tracing::warn!(%tier, segment = old.number, error = %e, "could not add the sealed segment to the time index; searches will read it");
                }
            }
        }
        self.seg = Some(ActiveSegment {
            file: Arc::new(file),
            number,
            start,
            len: start,
            allocated: start + options.preallocate_bytes,
            bucket,
            span: None,
        });
        self.next_segment += 1;
        Ok(())
    }

    fn write_batch(
        &mut self,
        options: &AuditOptions,
        tier: Tier,
        batch: &[Pending],
        now: u64,
    ) -> Result<(Vec<Receipt>, bool), BatchFailure> {
        let bytes: u64 = batch
            .iter()
            .map(|p| (FRAME_PREFIX + BODY_FIXED + p.sealed.len()) as u64)
            .sum();
        let bucket = Self::bucket(options, now);
        let roll = match &self.seg {
            None => true,
            Some(s) => {
                s.bucket != bucket || (s.len > s.start && s.len + bytes > options.segment_max_bytes)
            }
        };
        if roll {
            self.roll(options, tier, now, bucket)?;
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let mut frontier = self.frontier.clone();
        let mut prev = self.chain_head;
        let mut receipts = Vec::with_capacity(batch.len());
        // the segment's span with this batch's records, kept once written
        let mut span = self.seg.as_ref().and_then(|s| s.span);
        for p in batch {
            span = crate::times::widen(span, p.time);
            let seq = frontier.size();
            let start = buf.len();
            let body_len = u32::try_from(BODY_FIXED + p.sealed.len()).unwrap_or(u32::MAX);
            buf.extend_from_slice(&body_len.to_le_bytes());
            buf.extend_from_slice(&[0u8; 4]);
            buf.extend_from_slice(&seq.to_le_bytes());
            buf.extend_from_slice(&p.time.to_le_bytes());
            buf.extend_from_slice(&prev);
            buf.extend_from_slice(&p.nonce);
            buf.extend_from_slice(&p.sealed);
            let body = buf.get(start + FRAME_PREFIX..).unwrap_or_default();
            let leaf = leaf_hash(body);
            let mut crc = crc32fast::Hasher::new();
            crc.update(&body_len.to_le_bytes());
            crc.update(body);
            let crc = crc.finalize().to_le_bytes();
            if let Some(slot) = buf.get_mut(start + 4..start + 8) {
                slot.copy_from_slice(&crc);
            }
            frontier.push(leaf);
            receipts.push(Receipt {
                tier,
                seq,
                hash: leaf,
            });
            prev = leaf;
        }
        let result = self.write_out(options, &buf);
        self.buf = buf;
        result?;
        if let Some(seg) = self.seg.as_mut() {
            seg.span = span;
        }
        self.frontier = frontier;
        self.chain_head = prev;
        Ok((receipts, roll))
    }

    fn write_out(&mut self, options: &AuditOptions, buf: &[u8]) -> Result<(), BatchFailure> {
        let disk = Disk(options.fault.as_deref());
        let Some(seg) = self.seg.as_mut() else {
            return Err(BatchFailure::soft(io::Error::other("no open segment")));
        };
        let off = seg.len;
        let end = off + buf.len() as u64;
        if options.preallocate_bytes > 0 && end > seg.allocated {
            let new_alloc = end.max(seg.allocated + options.preallocate_bytes);
            if let Err(e) = disk.zero_fill(&seg.file, seg.allocated, new_alloc) {
                // Nothing past `allocated` is ours yet; give the space back.
                let _ = seg.file.set_len(seg.allocated);
                return Err(BatchFailure::soft(e));
            }
            seg.allocated = new_alloc;
        }
        if let Err(e) = disk.write_at(&seg.file, buf, off) {
            // Undo the partial write so no part of this batch can ever be
            // read back as a record; if that fails too, stop taking records.
            let undo = if end <= seg.allocated {
                Disk(None).zero_fill(&seg.file, off, end)
            } else {
                seg.file.set_len(off)
            };
            let undone = undo.and_then(|()| seg.file.sync_data());
            return Err(BatchFailure {
                poison: undone.is_err(),
                source: e,
            });
        }
        // The syncer threads make it durable; receipts wait for them.
        seg.len = end;
        Ok(())
    }
}

fn recover_tier(
    options: &AuditOptions,
    tier: Tier,
    vk: &VerifyingKey,
    now: u64,
    problems: &mut Vec<Finding>,
) -> Result<(WriterState, TierOpenReport), AuditError> {
    let tier_dir = options.dir.join(tier.as_str());
    fs::create_dir_all(&tier_dir).map_err(|e| AuditError::io(&tier_dir, e))?;
    for entry in fs::read_dir(&tier_dir).map_err(|e| AuditError::io(&tier_dir, e))? {
        let entry = entry.map_err(|e| AuditError::io(&tier_dir, e))?;
        if entry.file_name().to_string_lossy().ends_with(".seg.tmp") {
            let _ = fs::remove_file(entry.path());
        }
    }
    let cp_path = checkpoint::path_for(&options.dir, tier);
    checkpoint::repair(&cp_path)?;
    // The time index too: a line appended after a torn one would otherwise
    // join it, and the joined line could parse (a torn `5` and `12 100 200`
    // make `512 100 200`), giving a segment a span it does not have.
    // An index that cannot be repaired is no reason not to open: it is only
    // an aid, and searches read every segment when it cannot be read.
    if let Err(e) = checkpoint::repair(&crate::times::path(&tier_dir)) {
        tracing::warn!(%tier, error = %e, "cannot repair the audit time index");
    }
    if let Some(copy) = &options.checkpoint_dir {
        checkpoint::repair(&checkpoint::path_for(copy, tier))?;
    }
    // The copy too: a copy that counts more records than the log means the
    // tail was cut, and the log must not go on writing over that gap.
    let mut cp_files = vec![cp_path];
    if let Some(copy) = &options.checkpoint_dir {
        cp_files.push(checkpoint::path_for(copy, tier));
    }
    // Resume from the newest segment's header instead of reading the whole
    // tier; `verify` is what reads and checks everything. Of the
    // checkpoints, those from that segment's first record on are checked
    // (and the newest line, whatever it counts): the files keep every
    // checkpoint the tier ever had, so checking them all made opening a
    // long-lived log take longer every day.
    let on_disk = list_segments(&tier_dir)?;
    let from = match on_disk.last() {
        Some((_, path)) => crate::verify::read_header(tier, path)?.first_seq,
        None => 0,
    };
    let before = problems.len();
    let cps = load_checkpoints_from(tier, &cp_files, vk, problems, from)?;
    // Checkpoints signed, but none under this key: appending would make a
    // log that never verifies again. Some bad among good ones (tampering)
    // are reported in the open report and by `verify`.
    let unsigned = problems
        .get(before..)
        .unwrap_or_default()
        .iter()
        .filter(|f| {
            matches!(
                f.problem,
                Problem::Checkpoint {
                    error: crate::checkpoint::CheckpointError::BadSignature,
                    ..
                }
            )
        })
        .count();
    if cps.is_empty() && unsigned > 0 {
        return Err(AuditError::ForeignKey {
            tier,
            checkpoints: unsigned,
        });
    }
    let range = SegmentRange {
        resume_from: on_disk.last().map(|(n, _)| *n),
        stop_before: None,
    };
    let scan = scan_tier(tier, &tier_dir, &cps, range, &mut |_, _| {})?;
    if let Some(f) = scan.findings.into_iter().next() {
        return Err(AuditError::Corrupt(Box::new(f)));
    }
    let mut torn_tail = None;
    let mut seg = None;
    if let Some(last) = scan.segments.last() {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&last.path)
            .map_err(|e| AuditError::io(&last.path, e))?;
        let file_len = file
            .metadata()
            .map_err(|e| AuditError::io(&last.path, e))?
            .len();
        if let Some(finding) = scan.torn {
            let quarantined = quarantine(&file, &last.path, last.data_end, file_len);
            file.set_len(last.data_end)
                .and_then(|()| file.sync_all())
                .map_err(|e| AuditError::io(&last.path, e))?;
            torn_tail = Some(TornTail {
                segment: last.path.clone(),
                offset: last.data_end,
                bytes_cut: file_len - last.data_end,
                quarantined,
                finding,
            });
        }
        let allocated = if torn_tail.is_some() {
            last.data_end
        } else {
            file_len
        };
        seg = Some(ActiveSegment {
            file: Arc::new(file),
            number: last.number,
            start: last.data_start,
            len: last.data_end,
            allocated,
            bucket: WriterState::bucket(options, last.created),
            span: last.span,
        });
    }
    let next_segment = list_segments(&tier_dir)?.last().map_or(0, |(n, _)| n + 1);
    let report = TierOpenReport {
        tier,
        next_seq: scan.frontier.size(),
        segments: on_disk.len(),
        torn_tail,
    };
    let state = WriterState {
        tier_dir,
        seg,
        next_segment,
        last_cp_count: cps.last().map_or(0, |c| c.v.cp.count),
        cp_cadence_from: cps.last().map_or(0, |c| c.v.cp.count),
        last_cp_time: now,
        frontier: scan.frontier,
        chain_head: scan.chain_head,
        buf: Vec::new(),
    };
    Ok((state, report))
}

/// Keeps the non-zero part of a torn tail beside the segment, for forensics.
fn quarantine(file: &File, path: &Path, from: u64, to: u64) -> Option<PathBuf> {
    let len = usize::try_from(to.saturating_sub(from)).ok()?;
    let mut bytes = vec![0u8; len];
    file.read_exact_at(&mut bytes, from).ok()?;
    let keep = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    if keep == 0 {
        return None;
    }
    let q = PathBuf::from(format!("{}.torn-{from}", path.display()));
    fs::write(&q, bytes.get(..keep)?).ok()?;
    Some(q)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll, Wake, Waker};

    /// [`gather_wait`] for a tier that is not led and callers that are
    /// not idle.
    fn plain(
        sy: &SyncState,
        count: usize,
        first: Instant,
        last: Instant,
        now: Instant,
    ) -> Option<Duration> {
        gather_wait(sy, count, first, last, now, false, false)
    }

    /// A waker that counts its wake-ups.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn woken(c: &[Arc<Count>]) -> Vec<usize> {
        c.iter().map(|c| c.0.load(Ordering::SeqCst)).collect()
    }

    /// `n` record futures, each polled once (pending) on this thread with
    /// a counting waker of its own.
    fn pending_futures(n: usize) -> (Vec<Arc<Slot>>, Vec<RecordFuture>, Vec<Arc<Count>>) {
        let slots: Vec<Arc<Slot>> = (0..n).map(|_| Arc::new(Slot::default())).collect();
        let mut futures: Vec<RecordFuture> = slots
            .iter()
            .map(|s| RecordFuture {
                state: Ok(Arc::clone(s)),
            })
            .collect();
        let counts: Vec<Arc<Count>> = (0..n).map(|_| Arc::default()).collect();
        for (f, c) in futures.iter_mut().zip(&counts) {
            let waker = Waker::from(Arc::clone(c));
            assert!(Pin::new(f)
                .poll(&mut Context::from_waker(&waker))
                .is_pending());
        }
        (slots, futures, counts)
    }

    /// Hands out receipts for `slots` from another thread, as the syncer does.
    fn hand_out_elsewhere(slots: &[Arc<Slot>]) {
        let done = vec![WrittenBatch {
            id: 1,
            done: slots
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let receipt = Receipt {
                        tier: Tier::Security,
                        seq: i as u64,
                        hash: [0; 32],
                    };
                    (Arc::clone(s), receipt)
                })
                .collect(),
            copied: Vec::new(),
        }];
        std::thread::spawn(move || TierLog::hand_out(done))
            .join()
            .unwrap();
    }

    fn poll_once(f: &mut RecordFuture, c: &Arc<Count>) -> Poll<Result<Receipt, AuditError>> {
        let waker = Waker::from(Arc::clone(c));
        Pin::new(f).poll(&mut Context::from_waker(&waker))
    }

    #[test]
    fn a_late_periodic_checkpoint_leaves_the_next_where_the_cadence_puts_it() {
        // On time: every 10 records.
        assert_eq!(cadence_after(0, 10, 10), 10);
        // Due at 190, taken at 191 (the one at 180 was still being
        // appended): the next is due at 200, not 201.
        assert_eq!(cadence_after(180, 191, 10), 190);
        // One batch of 35 records: the next is due at 40.
        assert_eq!(cadence_after(0, 35, 10), 30);
        // Taken by the clock after 4 records: counted afresh from there.
        assert_eq!(cadence_after(100, 104, 10), 104);
        assert_eq!(cadence_after(7, 7, 1), 7);
    }

    #[test]
    fn a_batch_wakes_one_future_per_thread_and_it_wakes_the_rest() {
        let (slots, mut futures, counts) = pending_futures(5);
        hand_out_elsewhere(&slots);
        assert_eq!(woken(&counts), [1, 0, 0, 0, 0]);
        // Polled on its thread, the woken one resolves and wakes the others.
        let Poll::Ready(Ok(r)) = poll_once(&mut futures[0], &counts[0]) else {
            panic!("the woken future is not ready");
        };
        assert_eq!(r.seq, 0);
        assert_eq!(woken(&counts), [1, 1, 1, 1, 1]);
        for (i, (f, c)) in futures.iter_mut().zip(&counts).enumerate().skip(1) {
            let Poll::Ready(Ok(r)) = poll_once(f, c) else {
                panic!("future {i} is not ready");
            };
            assert_eq!(r.seq, i as u64);
        }
        assert_eq!(woken(&counts), [1, 1, 1, 1, 1], "no wake-up twice");
    }

    #[test]
    fn a_woken_future_dropped_unpolled_still_wakes_the_rest() {
        let (slots, mut futures, counts) = pending_futures(3);
        hand_out_elsewhere(&slots);
        assert_eq!(woken(&counts), [1, 0, 0]);
        drop(futures.remove(0));
        assert_eq!(woken(&counts), [1, 1, 1]);
        for (f, c) in futures.iter_mut().zip(&counts[1..]) {
            assert!(matches!(poll_once(f, c), Poll::Ready(Ok(_))));
        }
    }

    #[test]
    fn futures_on_two_threads_get_one_wake_up_each_thread() {
        let (slots_here, mut here, counts_here) = pending_futures(3);
        let (tx, rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || {
            let (slots, mut futures, counts) = pending_futures(3);
            tx.send(slots).unwrap();
            go_rx.recv().unwrap();
            let first = woken(&counts);
            for (f, c) in futures.iter_mut().zip(&counts) {
                assert!(matches!(poll_once(f, c), Poll::Ready(Ok(_))));
            }
            first
        });
        let slots_there = rx.recv().unwrap();
        let all: Vec<Arc<Slot>> = slots_here.iter().chain(&slots_there).cloned().collect();
        hand_out_elsewhere(&all);
        go_tx.send(()).unwrap();
        assert_eq!(other.join().unwrap(), [1, 0, 0]);
        assert_eq!(woken(&counts_here), [1, 0, 0]);
        for (f, c) in here.iter_mut().zip(&counts_here) {
            assert!(matches!(poll_once(f, c), Poll::Ready(Ok(_))));
        }
    }

    /// Spawns a thread that blocks in [`Slot::wait`] and returns once it is
    /// blocked there.
    fn blocked_waiter(slot: &Arc<Slot>) -> std::thread::JoinHandle<Result<Receipt, AuditError>> {
        let s = Arc::clone(slot);
        let waiter = std::thread::spawn(move || s.wait());
        while !lock(&slot.inner).blocked {
            std::thread::yield_now();
        }
        waiter
    }

    #[test]
    fn blocked_threads_are_woken_and_a_slot_nobody_waits_on_wakes_no_one() {
        // Neither a waker nor a blocked thread: no notification at all.
        assert!(matches!(SlotInner::default().take_wake(), Wakeup::Nobody));
        // A receipt handed out from another thread wakes a blocked caller.
        let slot = Arc::new(Slot::default());
        let waiter = blocked_waiter(&slot);
        hand_out_elsewhere(std::slice::from_ref(&slot));
        assert_eq!(waiter.join().unwrap().unwrap().seq, 0);
        assert!(!lock(&slot.inner).blocked);
        // So does a failure.
        let slot = Arc::new(Slot::default());
        let waiter = blocked_waiter(&slot);
        slot.fill(Err(AuditError::Closed));
        assert!(matches!(waiter.join().unwrap(), Err(AuditError::Closed)));
    }

    #[test]
    fn a_result_that_comes_in_before_the_first_poll_is_ready_at_once() {
        let slot = Arc::new(Slot::default());
        let mut f = RecordFuture {
            state: Ok(Arc::clone(&slot)),
        };
        hand_out_elsewhere(std::slice::from_ref(&slot));
        let c = Arc::new(Count::default());
        assert!(matches!(poll_once(&mut f, &c), Poll::Ready(Ok(_))));
        assert_eq!(woken(&[c]), [0]);
    }

    #[test]
    fn a_commit_delay_lengthens_the_gathering_wait() {
        let t0 = Instant::now();
        let mut sy = SyncState {
            peak_waiting: 64,
            sync_nanos: 200_000,
            ..SyncState::default()
        };
        // Without a delay: 60 µs after the last record the group is due.
        let at = t0 + Duration::from_micros(60);
        assert_eq!(plain(&sy, 3, t0, t0, at), None);
        // With 1 ms: still gathering after 60 µs and 900 µs of quiet, due
        // after 1 ms of quiet, and never later than 2 ms after the first.
        sy.commit_delay = Duration::from_millis(1);
        assert!(plain(&sy, 3, t0, t0, at).is_some());
        assert!(plain(&sy, 3, t0, t0, t0 + Duration::from_micros(900)).is_some());
        assert_eq!(
            plain(&sy, 3, t0, t0, t0 + Duration::from_micros(1001)),
            None
        );
        let last = t0 + Duration::from_micros(1900);
        assert_eq!(
            plain(&sy, 3, t0, last, t0 + Duration::from_micros(2001)),
            None
        );
        // Everyone who usually waits is in: due at once, delay or not.
        assert_eq!(plain(&sy, 64, t0, t0, at), None);
    }

    #[test]
    fn idle_callers_end_the_gathering_wait() {
        let t0 = Instant::now();
        let at = t0 + Duration::from_micros(60);
        let sy = SyncState {
            peak_waiting: 64,
            sync_nanos: 200_000,
            commit_delay: Duration::from_millis(2),
            commit_siblings: 16,
            ..SyncState::default()
        };
        // Under load a group of 3 keeps gathering for company…
        assert!(plain(&sy, 3, t0, t0, at).is_some());
        // …unless the callers went idle after its last record: then
        // nothing more can come until it is answered.
        assert_eq!(gather_wait(&sy, 3, t0, t0, at, false, true), None);
        // An empty group has nothing to sync.
        assert!(gather_wait(&sy, 0, t0, t0, at, false, true).is_some());
    }

    #[test]
    fn callers_idle_marks_every_tier_for_the_records_queued_before() {
        let tmp = tempfile::tempdir().expect("temporary directory");
        let keys = AuditKeys {
            encryption_key: zeroize::Zeroizing::new([7u8; 32]),
            signing_key: SigningKey::from_bytes(&[9u8; 32]),
        };
        let clock: SharedClock = Arc::new(rampart_core::SystemClock);
        let (audit, _) =
            Audit::open(AuditOptions::new(tmp.path()), keys, clock).expect("open the log");
        let queued = Instant::now();
        let marked = |at: Instant| audit.core.tiers.iter().all(|t| t.idle.led_since(at));
        assert!(!marked(queued));
        audit.callers_idle();
        // Every tier sees it, for records queued before the call…
        assert!(marked(queued));
        // …and a record queued after it gathers as before.
        assert!(!marked(Instant::now() + Duration::from_millis(1)));
    }

    #[test]
    fn the_commit_delay_waits_for_enough_siblings() {
        let t0 = Instant::now();
        let at = t0 + Duration::from_micros(60);
        let mut sy = SyncState {
            peak_waiting: 15,
            sync_nanos: 200_000,
            commit_delay: Duration::from_millis(2),
            commit_siblings: 16,
            ..SyncState::default()
        };
        // Fewer callers than the siblings usually wait together: light
        // load, no delay; 60 µs of quiet ends the group.
        assert_eq!(plain(&sy, 3, t0, t0, at), None);
        // Sixteen or more: the group keeps gathering for up to 2 ms of
        // quiet, 4 ms in all, unless all sixteen are in.
        sy.peak_waiting = 16;
        assert!(plain(&sy, 3, t0, t0, at).is_some());
        assert!(plain(&sy, 3, t0, t0, t0 + Duration::from_micros(1900)).is_some());
        let last = t0 + Duration::from_micros(3900);
        assert_eq!(
            plain(&sy, 15, t0, last, t0 + Duration::from_micros(4001)),
            None
        );
        assert_eq!(plain(&sy, 16, t0, t0, at), None);
        // 0 siblings: the delay applies whatever the load.
        sy.peak_waiting = 2;
        sy.commit_siblings = 0;
        assert!(plain(&sy, 1, t0, t0, at).is_some());
    }

    #[test]
    fn the_siblings_count_callers_waiting_on_any_tier() {
        let t0 = Instant::now();
        let at = t0 + Duration::from_micros(60);
        let mut sy = SyncState {
            peak_waiting: 6,
            peak_all_waiting: 6,
            sync_nanos: 200_000,
            commit_delay: Duration::from_millis(2),
            commit_siblings: 16,
            ..SyncState::default()
        };
        // Six callers on this tier and no more in all: light load, the
        // group of three is due after 60 µs of quiet.
        assert_eq!(plain(&sy, 3, t0, t0, at), None);
        // The same six while 64 callers wait on the log as a whole (the
        // others on a busier tier): the delay applies, and the tier follows
        // the busier one. Its group keeps gathering, even with its six in,
        // until that tier begins a sync or 2 ms pass quietly.
        sy.peak_all_waiting = 64;
        assert!(follows(&sy, t0));
        assert!(plain(&sy, 3, t0, t0, at).is_some());
        assert!(plain(&sy, 3, t0, t0, t0 + Duration::from_micros(1900)).is_some());
        assert_eq!(
            plain(&sy, 3, t0, t0, t0 + Duration::from_micros(2001)),
            None
        );
        assert!(plain(&sy, 6, t0, t0, at).is_some());
        assert_eq!(gather_wait(&sy, 3, t0, t0, at, true, false), None);
        assert_eq!(own_target(&sy, t0), usize::MAX);
        // Half the callers or more: the tier leads, and syncs on its count.
        sy.peak_waiting = 32;
        assert!(!follows(&sy, t0));
        assert_eq!(plain(&sy, 32, t0, t0, at), None);
    }

    #[test]
    fn a_following_tier_sees_only_the_leads_after_its_group_began() {
        let lead = LeadClock::new();
        let t0 = Instant::now();
        assert!(!lead.led_since(lead.base));
        lead.mark(t0 + Duration::from_micros(100));
        assert!(lead.led_since(t0));
        assert!(lead.led_since(t0 + Duration::from_micros(100)));
        assert!(!lead.led_since(t0 + Duration::from_micros(101)));
        // an earlier mark from a slower thread does not move it back
        lead.mark(t0);
        assert!(lead.led_since(t0 + Duration::from_micros(100)));
    }

    #[test]
    fn a_group_leaves_to_the_next_the_callers_due_back_while_it_syncs() {
        let t0 = Instant::now();
        let at = t0 + Duration::from_micros(60);
        let mut sy = SyncState {
            peak_waiting: 64,
            sync_nanos: 200_000,
            commit_delay: Duration::from_millis(2),
            commit_siblings: 16,
            ..SyncState::default()
        };
        // Nothing measured yet: the group waits for all 64.
        assert_eq!(group_target(&sy, 64), 64);
        assert!(plain(&sy, 60, t0, t0, at).is_some());
        // Records 25 µs apart, the callers back 300 µs after a sync ends:
        // in the 500 µs of a sync and a return, 20 more would come in. The
        // group syncs once 44 are in; the CPU works on the other 20
        // meanwhile.
        sy.arrival_gap_nanos = 25_000;
        sy.return_nanos = 300_000;
        assert_eq!(group_target(&sy, 64), 44);
        assert!(plain(&sy, 43, t0, t0, at).is_some());
        assert_eq!(plain(&sy, 44, t0, t0, at), None);
        // Callers with nothing to do between records come back in a burst
        // (1 µs apart): the whole group waits for them, as before.
        sy.arrival_gap_nanos = 1_000;
        sy.return_nanos = 20_000;
        assert_eq!(group_target(&sy, 64), 64);
        // Slow syncs: never fewer than a quarter of the usual waiters.
        sy.arrival_gap_nanos = 25_000;
        sy.sync_nanos = 1_200_000;
        assert_eq!(group_target(&sy, 64), 16);
    }

    #[test]
    fn closing_a_group_measures_how_its_callers_came_back() {
        let end = Instant::now();
        let mut sy = SyncState {
            last_sync_end: Some(end),
            ..SyncState::default()
        };
        // Nothing came while the sync was in flight; the first record came
        // 300 µs after its end, then one every 20 µs, in two batches.
        let us = |n: u64| end + Duration::from_micros(n);
        sy.unsynced_records = 10;
        sy.note_arrivals(10, us(300), us(480));
        sy.unsynced_records += 6;
        sy.note_arrivals(6, us(500), us(600));
        sy.close_group();
        assert_eq!(sy.arrival_gap_nanos, 20_000);
        assert_eq!(sy.return_nanos, 300_000);
        assert_eq!(
            (sy.unsynced_records, sy.fresh, sy.fresh_first),
            (0, 0, None)
        );
        // A group that had records waiting when the sync ended: the first
        // one after it is not a caller coming back, so the return time is
        // kept; the gap moves a quarter of the way to its 80 µs.
        sy.unsynced_at_end = 5;
        sy.unsynced_records = 8;
        sy.note_arrivals(3, us(650), us(810));
        sy.close_group();
        assert_eq!(sy.arrival_gap_nanos, 35_000);
        assert_eq!(sy.return_nanos, 300_000);
        assert_eq!(sy.unsynced_at_end, 0);
    }

    #[test]
    fn a_burst_is_forgotten_once_the_log_sits_idle() {
        let end = Instant::now();
        let mut sy = SyncState {
            peak_waiting: 64,
            sync_nanos: 200_000,
            commit_delay: Duration::from_millis(2),
            commit_siblings: 16,
            last_sync_end: Some(end),
            ..SyncState::default()
        };
        // A lone record `first`, after 60 µs of quiet.
        let lone = |sy: &SyncState, first: Instant| {
            plain(sy, 1, first, first, first + Duration::from_micros(60))
        };
        // Busy: a record 1 ms after the last sync waits for company.
        let first = end + Duration::from_millis(1);
        assert_eq!(usual_waiters(&sy, first), 64);
        assert!(lone(&sy, first).is_some());
        // 25 ms idle: 64 halved twice is 16, still busy enough to wait.
        let first = end + Duration::from_millis(25);
        assert_eq!(usual_waiters(&sy, first), 16);
        assert!(lone(&sy, first).is_some());
        // 35 ms idle: 8 usual waiters, below the siblings: no delay, and
        // after 60 µs of quiet the lone record syncs.
        let first = end + Duration::from_millis(35);
        assert_eq!(usual_waiters(&sy, first), 8);
        assert_eq!(lone(&sy, first), None);
        // Long idle: nobody is expected; sync at once.
        let first = end + Duration::from_secs(5);
        assert_eq!(usual_waiters(&sy, first), 0);
        assert_eq!(plain(&sy, 1, first, first, first), None);
        sy.last_sync_end = None;
        assert_eq!(usual_waiters(&sy, first), 64);
    }
}
