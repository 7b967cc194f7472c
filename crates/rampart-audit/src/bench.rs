//! `rampart bench audit`: durable appends per second with 1, 8 and 64
//! concurrent writers under group commit, against a baseline of one fsync
//! per record measured in the same run, and verify throughput (with the
//! public key, then the check of the denials' security copies with the
//! encryption key, as `rampart audit verify` runs both).
//!
//! Writers are measured twice: as OS threads calling the blocking
//! [`Audit::record`], and as tasks on one executor thread awaiting
//! [`Audit::record_async`] (what an async server does). On a small VM the
//! threads pay two context switches per record; the tasks do not.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rampart_core::SystemClock;

use crate::error::AuditError;
use crate::event::{Actor, Event, EventRef, Outcome, Tier};
use crate::keys::AuditKeys;
use crate::log::{Audit, AuditOptions};
use crate::search::AuditReader;
use crate::verify::verify;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Writer counts to try.
    pub writers: Vec<usize>,
    /// Most records per group-commit run.
    pub records: u64,
    /// Most records per baseline run.
    pub baseline_records: u64,
    /// Longest a run may take; a run stops early at this time.
    pub max_run: Duration,
    /// Syncer threads per tier for the group-commit runs (see
    /// [`AuditOptions::sync_threads`]).
    pub sync_threads: usize,
    /// Only the writer tasks: no baseline, no writer threads, no verify
    /// (quick A/B runs).
    pub tasks_only: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            writers: vec![1, 8, 64],
            records: 400_000,
            baseline_records: 20_000,
            max_run: Duration::from_secs(3),
            sync_threads: AuditOptions::new("").sync_threads,
            tasks_only: false,
        }
    }
}

/// One writer count's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchRun {
    /// Concurrent writers.
    pub writers: usize,
    /// Durable records appended with group commit by writer threads.
    pub records: u64,
    /// Their rate.
    pub per_sec: f64,
    /// Durable records appended with group commit by writer tasks.
    pub async_records: u64,
    /// Their rate.
    pub async_per_sec: f64,
    /// Process CPU time per record for the tasks, in microseconds.
    pub async_cpu_us_per_record: Option<f64>,
    /// How the tasks' records were synced.
    pub async_syncs: SyncFigures,
    /// Process CPU time (user + system) per group-commit record, in
    /// microseconds, where `/proc/self/stat` can tell: unlike the rate, it
    /// does not depend on what else the machine is running.
    pub cpu_us_per_record: Option<f64>,
    /// Records appended with one fsync per record.
    pub baseline_records: u64,
    /// Their rate.
    pub baseline_per_sec: f64,
}

impl BenchRun {
    /// Group commit (the better of threads and tasks) over the baseline.
    pub fn ratio(&self) -> f64 {
        self.per_sec.max(self.async_per_sec) / self.baseline_per_sec.max(1e-9)
    }
}

/// Just enough executor to run the async writers: polls every task whose
/// waker fired, parks when none has.
mod exec {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    use std::thread::Thread;

    struct TaskWaker {
        ready: AtomicBool,
        thread: Thread,
    }

    impl Wake for TaskWaker {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.ready.store(true, Ordering::Release);
            self.thread.unpark();
        }
    }

    pub(super) type Task<T> = Pin<Box<dyn Future<Output = T> + Send>>;

    /// A task, its waker, and its output once done.
    type Entry<T> = (Option<Task<T>>, Arc<TaskWaker>, Option<T>);

    pub(super) fn block_on_all<T>(tasks: Vec<Task<T>>) -> Vec<T> {
        let thread = std::thread::current();
        let mut slots: Vec<Entry<T>> = tasks
            .into_iter()
            .map(|t| {
                let w = Arc::new(TaskWaker {
                    ready: AtomicBool::new(true),
                    thread: thread.clone(),
                });
                (Some(t), w, None)
            })
            .collect();
        let mut remaining = slots.len();
        while remaining > 0 {
            let mut progressed = false;
            for (task, waker, out) in slots.iter_mut() {
                let Some(fut) = task.as_mut() else { continue };
                if !waker.ready.swap(false, Ordering::Acquire) {
                    continue;
                }
                progressed = true;
                let w = Waker::from(Arc::clone(waker));
                if let Poll::Ready(v) = fut.as_mut().poll(&mut Context::from_waker(&w)) {
                    *out = Some(v);
                    *task = None;
                    remaining -= 1;
                }
            }
            if !progressed {
                std::thread::park();
            }
        }
        slots.into_iter().filter_map(|(_, _, out)| out).collect()
    }
}

/// Like [`run_writers`] with `writers` async tasks on one executor thread
/// per core.
fn run_tasks(
    dir: &Path,
    writers: usize,
    records: u64,
    max_run: Duration,
    sync_threads: usize,
) -> Result<(u64, f64, SyncFigures), AuditError> {
    let mut options = AuditOptions::new(dir);
    // The shipped defaults (a signed checkpoint every 1,000 records, as
    // `rampart up` writes them), except that no segment rolls mid-run.
    options.segment_roll_interval = None;
    options.sync_threads = sync_threads;
    let (audit, _) = Audit::open(options, AuditKeys::generate()?, SystemClock::shared())?;
    let audit = Arc::new(audit);
    let per_writer = records.div_ceil(writers.max(1) as u64);
    let started = Instant::now();
    let deadline = started + max_run;
    // The tasks are spread over one executor thread per core, as a
    // multi-threaded async server spreads its connections.
    let executors = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(writers.max(1));
    let mut shares: Vec<Vec<exec::Task<Result<u64, AuditError>>>> =
        (0..executors).map(|_| Vec::new()).collect();
    for w in 0..writers.max(1) {
        let audit = Arc::clone(&audit);
        let task: exec::Task<Result<u64, AuditError>> = Box::pin(async move {
            let mut n = 0;
            while n < per_writer && Instant::now() < deadline {
                audit.record_async(sample_event(w, n)).await?;
                n += 1;
            }
            Ok(n)
        });
        if let Some(share) = shares.get_mut(w % executors) {
            share.push(task);
        }
    }
    let mut handles = Vec::new();
    for share in shares {
        let h = std::thread::Builder::new()
            .name("bench-executor".into())
            .spawn(move || exec::block_on_all(share))
            .map_err(|_| AuditError::Closed)?;
        handles.push(h);
    }
    let mut total = 0;
    for h in handles {
        for r in h.join().map_err(|_| AuditError::Closed)? {
            total += r?;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let (syncs, synced, sync_nanos) = audit.sync_stats();
    audit.close()?;
    let stats = SyncFigures {
        records_per_sync: synced as f64 / syncs.max(1) as f64,
        sync_us: sync_nanos as f64 / 1e3 / syncs.max(1) as f64,
    };
    Ok((total, secs, stats))
}

/// How the tasks' records were synced.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SyncFigures {
    /// Records made durable per fdatasync.
    pub records_per_sync: f64,
    /// Mean fdatasync time in microseconds: how fast the disk was during
    /// the run (it varies far more than anything the log does).
    pub sync_us: f64,
}

/// What [`run_bench`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// One per writer count.
    pub runs: Vec<BenchRun>,
    /// Bytes verified.
    pub verify_bytes: u64,
    /// Verify throughput in MB/s (10^6 bytes), wall clock.
    pub verify_mb_per_sec: f64,
    /// Process CPU seconds the verify took (it hashes on two threads).
    pub verify_cpu_secs: Option<f64>,
    /// What checking the denials' security copies found (every tenth
    /// record is a denial recorded with a copy, as the edge's are).
    pub copies: Option<crate::copies::CopyCheck>,
    /// How long that check took (it decrypts both tiers whole).
    pub copies_secs: f64,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:>7} {:>14} {:>10} {:>14} {:>10} {:>20} {:>7} {:>9} {:>8}",
            "writers",
            "threads rec/s",
            "CPU us/rec",
            "tasks rec/s",
            "CPU us/rec",
            "baseline fsync/rec/s",
            "ratio",
            "rec/sync",
            "sync us"
        )?;
        let us = |c: Option<f64>| c.map_or_else(|| "-".to_owned(), |c| format!("{c:.1}"));
        for r in &self.runs {
            writeln!(
                f,
                "{:>7} {:>14.0} {:>10} {:>14.0} {:>10} {:>20.0} {:>7} {:>9.1} {:>8.0}",
                r.writers,
                r.per_sec,
                us(r.cpu_us_per_record),
                r.async_per_sec,
                us(r.async_cpu_us_per_record),
                r.baseline_per_sec,
                if r.baseline_records > 0 {
                    format!("{:.1}x", r.ratio())
                } else {
                    "-".to_owned()
                },
                r.async_syncs.records_per_sync,
                r.async_syncs.sync_us
            )?;
        }
        write!(
            f,
            "verify: {:.1} MB in the log at {:.0} MB/s",
            self.verify_bytes as f64 / 1e6,
            self.verify_mb_per_sec
        )?;
        if let Some(cpu) = self.verify_cpu_secs.filter(|c| *c > 0.0) {
            write!(
                f,
                " ({:.2} CPU s, {:.0} MB per CPU second)",
                cpu,
                self.verify_bytes as f64 / 1e6 / cpu
            )?;
        }
        if let Some(c) = &self.copies {
            write!(
                f,
                "\n{c} (checked in {:.2} s, {:.0} MB/s)",
                self.copies_secs,
                self.verify_bytes as f64 / 1e6 / self.copies_secs.max(1e-9)
            )?;
        }
        Ok(())
    }
}

fn sample_event(writer: usize, i: u64) -> Event {
    let mut e = Event::new(
        Tier::ApiAccess,
        Actor::new(format!("svc-{writer}@prod.example"), "mtls"),
        "secrets.read",
        format!("secret/prod/payments/db-password/{i}"),
        if i.is_multiple_of(10) {
            Outcome::Denied
        } else {
            Outcome::Allowed
        },
    );
    e.node = "node-1".into();
    e.environment = "prod".into();
    e.request_id = Some(format!("req-{writer:04}-{i:012}"));
    e.source = Some("10.0.3.17:51234".into());
    e.reason = (i.is_multiple_of(10)).then(|| "policy secrets-prod denies role reader".into());
    e
}

/// Process CPU seconds so far (user + system, all threads), from
/// `/proc/self/stat` at the usual 100 ticks a second.
fn cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Appends from `writers` threads until `records` or `max_run`; returns
/// (records, seconds).
fn run_writers(
    dir: &Path,
    writers: usize,
    records: u64,
    max_run: Duration,
    baseline: bool,
    sync_threads: usize,
) -> Result<(u64, f64), AuditError> {
    let mut options = AuditOptions::new(dir);
    // The shipped defaults (a signed checkpoint every 1,000 records, as
    // `rampart up` writes them), except that no segment rolls mid-run.
    options.segment_roll_interval = None;
    options.sync_threads = sync_threads;
    if baseline {
        // One record per write, and its own fsync before the next.
        options.max_batch_records = 1;
        options.sync_threads = 0;
    }
    let (audit, _) = Audit::open(options, AuditKeys::generate()?, SystemClock::shared())?;
    let audit = Arc::new(audit);
    let per_writer = records.div_ceil(writers.max(1) as u64);
    let started = Instant::now();
    let deadline = started + max_run;
    let handles: Vec<_> = (0..writers.max(1))
        .map(|w| {
            let audit = Arc::clone(&audit);
            std::thread::spawn(move || -> Result<u64, AuditError> {
                let mut n = 0;
                while n < per_writer && Instant::now() < deadline {
                    audit.record(sample_event(w, n))?;
                    n += 1;
                }
                Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    let mut first_err = None;
    for h in handles {
        match h.join() {
            Ok(Ok(n)) => total += n,
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert(AuditError::Closed);
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    audit.close()?;
    match first_err {
        Some(e) => Err(e),
        None => Ok((total, secs)),
    }
}

/// Runs the benchmark in `dir` (which should be on the disk under test and
/// is filled with throwaway logs).
pub fn run_bench(dir: &Path, options: BenchOptions) -> Result<BenchReport, AuditError> {
    let mut runs = Vec::new();
    for &w in &options.writers {
        // The baseline first, on a quiet disk, so it is not slowed by the
        // group-commit runs' writeback.
        let base_dir = dir.join(format!("baseline-{w}"));
        let (baseline_records, base_secs) = if options.tasks_only {
            (0, 1.0)
        } else {
            run_writers(
                &base_dir,
                w,
                options.baseline_records,
                options.max_run,
                true,
                0,
            )?
        };
        let gc_dir = dir.join(format!("group-commit-{w}"));
        let cpu_before = cpu_secs();
        let (records, secs) = if options.tasks_only {
            (0, 1.0)
        } else {
            run_writers(
                &gc_dir,
                w,
                options.records,
                options.max_run,
                false,
                options.sync_threads,
            )?
        };
        let cpu_after = cpu_secs();
        let (async_records, async_secs, async_syncs) = run_tasks(
            &dir.join(format!("group-commit-async-{w}")),
            w,
            options.records,
            options.max_run,
            options.sync_threads,
        )?;
        let cpu_after_async = cpu_secs();
        let async_cpu_us_per_record = match (cpu_after, cpu_after_async) {
            (Some(a), Some(b)) if async_records > 0 => Some((b - a) * 1e6 / async_records as f64),
            _ => None,
        };
        let cpu_us_per_record = match (cpu_before, cpu_after) {
            (Some(a), Some(b)) if records > 0 => Some((b - a) * 1e6 / records as f64),
            _ => None,
        };
        runs.push(BenchRun {
            writers: w,
            records,
            cpu_us_per_record,
            async_records,
            async_per_sec: async_records as f64 / async_secs.max(1e-9),
            async_cpu_us_per_record,
            async_syncs,
            per_sec: records as f64 / secs.max(1e-9),
            baseline_records,
            baseline_per_sec: baseline_records as f64 / base_secs.max(1e-9),
        });
    }
    if options.tasks_only {
        return Ok(BenchReport {
            runs,
            verify_bytes: 0,
            verify_mb_per_sec: 0.0,
            verify_cpu_secs: None,
            copies: None,
            copies_secs: 0.0,
        });
    }
    // A dedicated log for verify: the runs above threw their keys away.
    let verify_dir = dir.join("verify");
    let keys = AuditKeys::generate()?;
    let vk = keys.verifying_key();
    let encryption_key = keys.encryption_key.clone();
    {
        let mut o = AuditOptions::new(&verify_dir);
        o.segment_roll_interval = None;
        o.copies = vec![(Tier::ApiAccess, Tier::Security)];
        let (audit, _) = Audit::open(o, keys, SystemClock::shared())?;
        let audit = Arc::new(audit);
        let handles: Vec<_> = (0..64usize)
            .map(|w| {
                let audit = Arc::clone(&audit);
                std::thread::spawn(move || -> Result<(), AuditError> {
                    for i in 0..options.records.div_ceil(64).min(5_000) {
                        let e = sample_event(w, i);
                        if e.outcome == Outcome::Denied {
                            // also in security, as a copy (as the edge's denials)
                            audit.record_with_copy(&lend(&e), Tier::Security)?;
                        } else {
                            audit.record(e)?;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| AuditError::Closed)??;
        }
        audit.close()?;
    }
    // Twice: the first read warms the page cache, the second measures verify.
    verify(&verify_dir, &vk, None)?;
    let cpu_before = cpu_secs();
    let report = verify(&verify_dir, &vk, None)?;
    let verify_cpu_secs = cpu_secs().zip(cpu_before).map(|(b, a)| b - a);
    let started = Instant::now();
    let copies = AuditReader::new(&verify_dir, encryption_key)
        .check_copies(Tier::ApiAccess, Tier::Security)?;
    Ok(BenchReport {
        runs,
        verify_bytes: report.bytes,
        verify_mb_per_sec: report.mb_per_sec(),
        verify_cpu_secs,
        copies: Some(copies),
        copies_secs: started.elapsed().as_secs_f64(),
    })
}

/// An event lent as an [`EventRef`] (it has no details).
fn lend(e: &Event) -> EventRef<'_> {
    EventRef {
        tier: e.tier,
        node: &e.node,
        environment: &e.environment,
        principal: &e.actor.principal,
        auth: &e.actor.auth,
        action: &e.action,
        resource: &e.resource,
        outcome: e.outcome,
        reason: e.reason.as_deref(),
        request_id: e.request_id.as_deref(),
        source: e.source.as_deref(),
        details: &[],
    }
}
