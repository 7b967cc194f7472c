//! What the time index saves a time-bounded search:
//! `cargo run --release -p rampart-audit --example search_window [RECORDS [HOURS]]`
//! (default 640,000 records over 18 hours of a manual clock, hourly
//! segments). Writes the log in a temporary directory, then times a search
//! for the last minute's records with the index and without it (the index
//! file removed, so every segment is read, as before it existed).
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use rampart_audit::{Actor, Audit, AuditKeys, AuditOptions, Event, Outcome, Query, Tier};
use rampart_core::{Clock, ManualClock};

const START: u64 = 1_795_000_000;
const WRITERS: u64 = 32;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let records: u64 = std::env::args().nth(1).map_or(Ok(640_000), |n| n.parse())?;
    let hours: u64 = std::env::args().nth(2).map_or(Ok(18), |n| n.parse())?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("audit");
    let clock = Arc::new(ManualClock::at_unix_secs(START));
    let mut options = AuditOptions::new(&dir);
    options.segment_roll_interval = Some(Duration::from_secs(3600));
    let (audit, _) = Audit::open(options, AuditKeys::generate()?, clock.clone())?;
    let audit = Arc::new(audit);
    // Every record moves the clock on by an equal step, so the records
    // spread evenly over `hours` whichever writer takes them.
    let per_writer = records / WRITERS;
    let step = Duration::from_nanos(hours * 3_600_000_000_000 / (per_writer * WRITERS).max(1));
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..WRITERS {
            let (audit, clock) = (audit.clone(), clock.clone());
            s.spawn(move || {
                for _ in 0..per_writer {
                    clock.advance(step);
                    let mut e = Event::new(
                        Tier::Network,
                        Actor::new("svc", "mtls"),
                        "network.flow",
                        "10.0.0.1:443",
                        Outcome::Allowed,
                    );
                    e.node = "node-1".into();
                    if let Err(e) = audit.record(e) {
                        eprintln!("record refused: {e}");
                        return;
                    }
                }
            });
        }
    });
    let segments = std::fs::read_dir(dir.join("network"))?
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "seg"))
        })
        .count();
    let bytes: u64 = std::fs::read_dir(dir.join("network"))?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "{} records over {hours} h in {segments} segments ({:.0} MB), written in {:.1} s",
        per_writer * WRITERS,
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    let last_minute = Query {
        tier: Some(Tier::Network),
        from: Some(UNIX_EPOCH + Duration::from_nanos(clock.unix_nanos() - 60_000_000_000)),
        ..Query::default()
    };
    let time = |label: &str| -> Result<(), Box<dyn std::error::Error>> {
        for _ in 0..3 {
            let t = Instant::now();
            let found = audit.search(&last_minute)?.len();
            println!(
                "{label}: {found} records of the last minute in {:.1} ms",
                t.elapsed().as_secs_f64() * 1e3
            );
        }
        Ok(())
    };
    time("with the time index")?;
    std::fs::remove_file(dir.join("network").join("times"))?;
    time("without it (every segment read)")?;
    Ok(())
}
