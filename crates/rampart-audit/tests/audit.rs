//! End-to-end scenarios for the audit log: each test opens a real log in a
//! temporary directory through `TestLog`, does something to it, and checks
//! what `verify`, `search` and `prove` say.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use rampart_audit::format::SegmentReader;
use rampart_audit::{
    verify, verify_proof, Actor, Audit, AuditError, AuditKeys, AuditOptions, AuditReader,
    CheckpointError, CheckpointKind, Event, EventRef, FaultInjector, Outcome, Problem, Query, Tier,
};
use rampart_core::ManualClock;

const START: u64 = 1_795_000_000; // 2026-11-18T11:06:40Z

fn keys() -> AuditKeys {
    AuditKeys {
        encryption_key: zeroize::Zeroizing::new([7u8; 32]),
        signing_key: ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]),
    }
}

fn vk() -> ed25519_dalek::VerifyingKey {
    keys().verifying_key()
}

struct TestLog {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    copy: PathBuf,
    clock: Arc<ManualClock>,
}

impl TestLog {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let copy = tmp.path().join("audit-checkpoints");
        TestLog {
            _tmp: tmp,
            dir,
            copy,
            clock: Arc::new(ManualClock::at_unix_secs(START)),
        }
    }

    fn options(&self) -> AuditOptions {
        let mut o = AuditOptions::new(&self.dir);
        o.checkpoint_dir = Some(self.copy.clone());
        o.checkpoint_every_records = 10;
        o.preallocate_bytes = 16 * 1024;
        o
    }

    fn open_with(&self, o: AuditOptions) -> Audit {
        Audit::open(o, keys(), self.clock.clone()).unwrap().0
    }

    fn open(&self) -> Audit {
        self.open_with(self.options())
    }

    fn segments(&self, tier: Tier) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(self.dir.join(tier.as_str()))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        v.sort();
        v
    }

    fn verify(&self) -> Result<rampart_audit::VerifyReport, AuditError> {
        verify(&self.dir, &vk(), Some(&self.copy))
    }
}

fn event(tier: Tier, who: &str, action: &str, outcome: Outcome) -> Event {
    let mut e = Event::new(tier, Actor::new(who, "mtls"), action, "secret/db", outcome);
    e.node = "node-1".into();
    e.environment = "test".into();
    e.request_id = Some("req-1".into());
    e.source = Some("192.0.2.7".into());
    if outcome != Outcome::Allowed {
        e.reason = Some("policy says no".into());
    }
    e
}

fn fill(audit: &Audit, tier: Tier, n: u64) {
    for i in 0..n {
        let r = audit
            .record(event(
                tier,
                &format!("user-{}", i % 3),
                "secrets.read",
                Outcome::Allowed,
            ))
            .unwrap();
        assert_eq!(r.tier, tier);
    }
}

/// Byte ranges of each frame in a segment file.
fn frames(path: &Path) -> Vec<(u64, std::ops::Range<usize>)> {
    let bytes = fs::read(path).unwrap();
    let (_, mut r) = SegmentReader::new(&bytes).unwrap();
    let mut out = Vec::new();
    while let Some(f) = r.next_frame() {
        let f = f.unwrap();
        let start = f.offset as usize;
        out.push((f.seq(), start..start + f.len_on_disk() as usize));
    }
    out
}

/// The findings of a verify that must fail.
fn findings(r: Result<rampart_audit::VerifyReport, AuditError>) -> Vec<rampart_audit::Finding> {
    match r {
        Err(AuditError::VerifyFailed(f)) => {
            assert!(!f.report.findings.is_empty());
            // The CLI prints these; they must read well.
            for finding in &f.report.findings {
                let text = finding.to_string();
                assert!(text.starts_with("tier "), "{text}");
            }
            f.report.findings
        }
        other => panic!("expected a verify failure, got {other:?}"),
    }
}

/// A log of 50 security records in one segment, closed cleanly.
fn closed_log() -> (TestLog, PathBuf) {
    let t = TestLog::new();
    let audit = t.open();
    fill(&audit, Tier::Security, 50);
    audit.close().unwrap();
    drop(audit);
    let seg = t.segments(Tier::Security).remove(0);
    (t, seg)
}

#[test]
fn audit_is_send_sync_and_shareable() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Audit>();
    assert_send_sync::<Arc<Audit>>();
}

#[test]
fn commit_stats_count_each_tiers_syncs_and_records() {
    let t = TestLog::new();
    let audit = t.open();
    fill(&audit, Tier::Network, 5);
    let stats = audit.commit_stats();
    assert_eq!(stats.len(), Tier::ALL.len());
    let of = |tier: Tier| {
        stats
            .iter()
            .find(|(t, _)| *t == tier)
            .map(|(_, s)| *s)
            .unwrap()
    };
    // One caller at a time: every record is synced before the next comes,
    // so each has a sync of its own (checkpoints sync too).
    let net = of(Tier::Network);
    assert_eq!(net.records, 5);
    assert!(net.syncs >= 5, "{net:?}");
    assert!(net.sync_nanos > 0, "{net:?}");
    assert_eq!(of(Tier::Security), rampart_audit::CommitStats::default());
}

#[test]
fn records_come_back_through_search_and_export() {
    let t = TestLog::new();
    let audit = t.open();
    let a = audit
        .record(event(
            Tier::Security,
            "alice",
            "secrets.read",
            Outcome::Allowed,
        ))
        .unwrap();
    t.clock.advance(Duration::from_secs(10));
    let b = audit
        .record(event(
            Tier::Security,
            "bob",
            "secrets.write",
            Outcome::Denied,
        ))
        .unwrap();
    t.clock.advance(Duration::from_secs(10));
    let c = audit
        .record(event(Tier::ApiAccess, "alice", "api.get", Outcome::Error))
        .unwrap();
    assert_eq!((a.seq, b.seq, c.seq), (0, 1, 0));
    assert_ne!(a.hash, b.hash);

    let all = audit.search(&Query::default()).unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[1].event.actor.principal, "bob");
    assert_eq!(all[1].event.reason.as_deref(), Some("policy says no"));

    let q = |f: &dyn Fn(&mut Query)| {
        let mut q = Query::default();
        f(&mut q);
        audit.search(&q).unwrap()
    };
    assert_eq!(q(&|q| q.actor = Some("alice".into())).len(), 2);
    assert_eq!(q(&|q| q.action = Some("secrets.write".into())).len(), 1);
    assert_eq!(
        q(&|q| q.outcome = Some(Outcome::Error))[0].event.tier,
        Tier::ApiAccess
    );
    assert_eq!(q(&|q| q.tier = Some(Tier::ApiAccess)).len(), 1);
    assert_eq!(q(&|q| q.limit = Some(2)).len(), 2);
    let from = UNIX_EPOCH + Duration::from_secs(START + 5);
    let to = UNIX_EPOCH + Duration::from_secs(START + 15);
    let mid = q(&|q| {
        q.from = Some(from);
        q.to = Some(to);
    });
    assert_eq!(mid.len(), 1);
    assert_eq!(mid[0].event.actor.principal, "bob");
    assert_eq!(mid[0].time, "2026-11-18T11:06:50.000000000Z");

    let latest = q(&|q| {
        q.newest_first = true;
        q.limit = Some(2);
    });
    let who: Vec<(&str, Tier)> = latest
        .iter()
        .map(|r| (r.event.actor.principal.as_str(), r.event.tier))
        .collect();
    assert_eq!(
        who,
        vec![("alice", Tier::ApiAccess), ("bob", Tier::Security)]
    );

    let mut out = Vec::new();
    assert_eq!(audit.export_jsonl(&mut out, &Query::default()).unwrap(), 3);
    let lines: Vec<serde_json::Value> = out
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["tier"], "api-access");
    assert_eq!(lines[2]["outcome"], "error");
    assert_eq!(lines[0]["actor"]["principal"], "alice");
}

#[test]
fn a_query_with_from_after_to_is_a_clear_error() {
    let t = TestLog::new();
    let audit = t.open();
    let q = Query {
        from: Some(UNIX_EPOCH + Duration::from_secs(200)),
        to: Some(UNIX_EPOCH + Duration::from_secs(100)),
        ..Query::default()
    };
    let err = audit.search(&q).unwrap_err();
    assert!(
        matches!(err, AuditError::InvalidTimeRange { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("is after"), "{err}");
}

#[test]
fn a_clean_log_verifies_with_and_without_the_copy() {
    let (t, _) = closed_log();
    let report = t.verify().unwrap();
    let sec = report
        .tiers
        .iter()
        .find(|r| r.tier == Tier::Security)
        .unwrap();
    assert_eq!(sec.records, 50);
    // Every line of both checkpoint files matched the records (how many
    // periodic ones there are depends on when the syncer ran: five, or
    // fewer when one came due while the last was still being appended).
    let lines = |f: PathBuf| fs::read_to_string(f).unwrap().lines().count();
    let all = lines(t.dir.join("security/checkpoints.jsonl"))
        + lines(t.copy.join("security/checkpoints.jsonl"));
    assert!(all >= 4, "{sec:?}");
    assert_eq!(sec.checkpoints_matched, all, "{sec:?}");
    verify(&t.dir, &vk(), None).unwrap();
    // The wrong public key finds every checkpoint bad.
    let other = ed25519_dalek::SigningKey::from_bytes(&[1; 32]).verifying_key();
    assert!(verify(&t.dir, &other, None).is_err());
}

#[test]
fn a_flipped_byte_is_found_and_named() {
    let (t, seg) = closed_log();
    let (seq, range) = frames(&seg)[20].clone();
    let mut bytes = fs::read(&seg).unwrap();
    bytes[range.start + 40] ^= 0x01;
    fs::write(&seg, &bytes).unwrap();
    let f = findings(t.verify());
    assert_eq!(f[0].tier, Tier::Security);
    assert_eq!(f[0].file.as_deref(), Some(seg.as_path()));
    assert_eq!(f[0].seq, Some(seq));
    assert_eq!(
        f[0].problem,
        Problem::Frame(rampart_audit::format::FrameError::BadChecksum)
    );
    assert!(f[0].to_string().contains("seq 20"), "{}", f[0]);
}

#[test]
fn a_deleted_record_is_found_and_named() {
    let (t, seg) = closed_log();
    let (_, range) = frames(&seg)[20].clone();
    let mut bytes = fs::read(&seg).unwrap();
    bytes.drain(range);
    fs::write(&seg, &bytes).unwrap();
    let f = findings(t.verify());
    assert_eq!(f[0].seq, Some(20));
    assert_eq!(f[0].file.as_deref(), Some(seg.as_path()));
    assert_eq!(
        f[0].problem,
        Problem::Sequence {
            found: 21,
            expected: 20
        }
    );
}

#[test]
fn swapped_records_are_found_and_named() {
    let (t, seg) = closed_log();
    let fr = frames(&seg);
    let (a, b) = (fr[20].1.clone(), fr[21].1.clone());
    let bytes = fs::read(&seg).unwrap();
    let mut out = bytes[..a.start].to_vec();
    out.extend_from_slice(&bytes[b.clone()]);
    out.extend_from_slice(&bytes[a.clone()]);
    out.extend_from_slice(&bytes[b.end..]);
    fs::write(&seg, &out).unwrap();
    let f = findings(t.verify());
    assert_eq!(f[0].seq, Some(20));
    assert_eq!(
        f[0].problem,
        Problem::Sequence {
            found: 21,
            expected: 20
        }
    );
}

#[test]
fn a_rewritten_record_with_fixed_checksum_breaks_the_chain() {
    let (t, seg) = closed_log();
    let (_, range) = frames(&seg)[30].clone();
    let mut bytes = fs::read(&seg).unwrap();
    // Change the ciphertext and recompute the frame checksum, as a careful
    // attacker would: the chain (next record's predecessor hash) catches it.
    bytes[range.end - 1] ^= 0xff;
    let len = &bytes[range.start..range.start + 4];
    let mut h = crc32fast::Hasher::new();
    h.update(len);
    h.update(&bytes[range.start + 8..range.end]);
    let crc = h.finalize().to_le_bytes();
    bytes[range.start + 4..range.start + 8].copy_from_slice(&crc);
    fs::write(&seg, &bytes).unwrap();
    let f = findings(t.verify());
    // The next record's predecessor hash no longer matches; or, when a
    // checkpoint closes right after record 30 (where group commits fell
    // decides), that checkpoint's hashes already do not.
    match (f[0].seq, &f[0].problem) {
        (Some(31), Problem::ChainBroken) | (Some(30), Problem::RootMismatch { count: 31, .. }) => {}
        _ => panic!("{f:?}"),
    }
}

#[test]
fn a_cut_tail_is_found_against_the_checkpoint_copy() {
    let (t, seg) = closed_log();
    // The attacker cuts the log after record 30 and the primary checkpoints
    // with it, so the log alone is consistent again.
    let (_, range) = frames(&seg)[30].clone();
    let bytes = fs::read(&seg).unwrap();
    fs::write(&seg, &bytes[..range.start]).unwrap();
    let cp_file = t.dir.join("security/checkpoints.jsonl");
    let kept: Vec<String> = fs::read_to_string(&cp_file)
        .unwrap()
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["count"]
                .as_u64()
                .unwrap()
                <= 30
        })
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(&cp_file, kept.concat()).unwrap();
    verify(&t.dir, &vk(), None).expect("the cut is invisible without the copy");
    let f = findings(t.verify());
    assert_eq!(f[0].tier, Tier::Security);
    assert_eq!(f[0].seq, Some(30));
    assert_eq!(
        f[0].file.as_deref(),
        Some(t.copy.join("security/checkpoints.jsonl").as_path())
    );
    assert_eq!(
        f[0].problem,
        Problem::TailMissing {
            checkpoint_count: 50,
            log_count: 30
        }
    );
    // The writer will not reopen over the gap either.
    match Audit::open(t.options(), keys(), t.clock.clone()) {
        Err(AuditError::Corrupt(f)) => assert!(matches!(f.problem, Problem::TailMissing { .. })),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn a_checkpoint_with_a_bad_signature_is_reported() {
    let (t, _) = closed_log();
    let cp_file = t.dir.join("security/checkpoints.jsonl");
    let text = fs::read_to_string(&cp_file).unwrap();
    let mut lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Another count than the one signed (a fixed one, 21, was sometimes the
    // count the line already had, when a group commit ended there).
    let count = lines[1]["count"].as_u64().unwrap();
    lines[1]["count"] = serde_json::json!(count + 1);
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    fs::write(&cp_file, text + "{not json\n").unwrap();
    // How many checkpoints the log took depends on how its group commits
    // fell; the broken line is the one after them.
    let broken = lines.len() + 1;
    let f = findings(verify(&t.dir, &vk(), None));
    assert!(f.iter().any(|f| f.problem
        == Problem::Checkpoint {
            line: 2,
            error: CheckpointError::BadSignature
        }));
    assert!(
        f.iter().any(
            |f| matches!(f.problem, Problem::CheckpointUnreadable { line, .. } if line == broken)
        ),
        "{f:?}"
    );
}

#[test]
fn truncated_or_corrupt_segment_headers_are_clear_errors() {
    for (cut, expected) in [
        (Some(20usize), rampart_audit::format::HeaderError::Truncated),
        (None, rampart_audit::format::HeaderError::BadMagic),
    ] {
        let (t, seg) = closed_log();
        let mut bytes = fs::read(&seg).unwrap();
        match cut {
            Some(n) => bytes.truncate(n),
            None => bytes[0] = b'X',
        }
        fs::write(&seg, &bytes).unwrap();
        let f = findings(t.verify());
        assert_eq!(f[0].problem, Problem::Header(expected));
        assert_eq!(f[0].file.as_deref(), Some(seg.as_path()));
        match Audit::open(t.options(), keys(), t.clock.clone()) {
            Err(AuditError::Corrupt(f)) => assert_eq!(f.problem, Problem::Header(expected)),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }
}

#[test]
fn the_log_takes_one_writer_at_a_time() {
    let t = TestLog::new();
    let _a = t.open();
    assert!(matches!(
        Audit::open(t.options(), keys(), t.clock.clone()),
        Err(AuditError::Locked(_))
    ));
}

#[test]
fn concurrent_writers_get_distinct_durable_receipts() {
    let t = TestLog::new();
    let audit = Arc::new(t.open());
    let handles: Vec<_> = (0..8)
        .map(|w| {
            let audit = Arc::clone(&audit);
            std::thread::spawn(move || {
                (0..100)
                    .map(|_| {
                        audit
                            .record(event(
                                Tier::Application,
                                &format!("w{w}"),
                                "x",
                                Outcome::Allowed,
                            ))
                            .unwrap()
                            .seq
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let seqs: BTreeSet<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert_eq!(seqs, (0..800).collect());
    audit.close().unwrap();
    t.verify().unwrap();
}

#[test]
fn segments_roll_by_size_and_by_day_and_verify_across_them() {
    let t = TestLog::new();
    let mut o = t.options();
    o.segment_max_bytes = 2048;
    let audit = t.open_with(o.clone());
    fill(&audit, Tier::Network, 40);
    t.clock.advance(Duration::from_secs(86_400));
    fill(&audit, Tier::Network, 3);
    let n = t.segments(Tier::Network).len();
    assert!(n >= 4, "{n} segments");
    drop(audit);
    t.verify().unwrap();
    let audit = t.open_with(o);
    assert_eq!(audit.next_seq(Tier::Network), 43);
    fill(&audit, Tier::Network, 2);
    let latest: Vec<u64> = audit
        .search(&Query {
            newest_first: true,
            limit: Some(3),
            ..Query::default()
        })
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(latest, vec![44, 43, 42]);
    let oldest: Vec<u64> = audit
        .search(&Query {
            limit: Some(2),
            ..Query::default()
        })
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(oldest, vec![0, 1]);
    drop(audit);
    t.verify().unwrap();
}

#[test]
fn disk_full_refuses_the_record_and_leaves_no_partial_record() {
    for prealloc in [0u64, 16 * 1024] {
        let t = TestLog::new();
        let fault = FaultInjector::new();
        let mut o = t.options();
        o.preallocate_bytes = prealloc;
        o.fault = Some(fault.clone());
        let audit = t.open_with(o.clone());
        fill(&audit, Tier::Security, 5);
        fault.fail_writes_after(100);
        let err = audit
            .record(event(Tier::Security, "mallory", "x", Outcome::Allowed))
            .unwrap_err();
        match &err {
            AuditError::WriteFailed { tier, source } => {
                assert_eq!(*tier, Tier::Security);
                assert_eq!(source.kind(), std::io::ErrorKind::StorageFull);
            }
            other => panic!("expected WriteFailed, got {other:?}"),
        }
        // Still full: still refused.
        assert!(audit
            .record(event(Tier::Security, "mallory", "x", Outcome::Allowed))
            .is_err());
        fault.heal();
        let r = audit
            .record(event(Tier::Security, "carol", "x", Outcome::Allowed))
            .unwrap();
        assert_eq!(r.seq, 5, "a refused record takes no sequence number");
        drop(audit);
        t.verify().unwrap();
        let audit = t.open_with(o);
        assert_eq!(audit.next_seq(Tier::Security), 6);
        let found = audit.search(&Query::default()).unwrap();
        assert_eq!(found.len(), 6);
        assert!(found.iter().all(|r| r.event.actor.principal != "mallory"));
    }
}

#[test]
fn disk_full_when_rolling_a_segment_refuses_the_record() {
    let t = TestLog::new();
    let fault = FaultInjector::new();
    let mut o = t.options();
    o.segment_max_bytes = 2048;
    o.fault = Some(fault.clone());
    let audit = t.open_with(o);
    fill(&audit, Tier::Security, 3);
    fault.fail_writes_after(0);
    let mut refused = 0;
    for _ in 0..20 {
        if audit
            .record(event(Tier::Security, "x", "x", Outcome::Allowed))
            .is_err()
        {
            refused += 1;
        }
    }
    assert_eq!(refused, 20);
    fault.heal();
    fill(&audit, Tier::Security, 20);
    drop(audit);
    t.verify().unwrap();
}

#[test]
fn a_failed_sync_stops_the_log_until_reopened() {
    let t = TestLog::new();
    let fault = FaultInjector::new();
    let mut o = t.options();
    o.fault = Some(fault.clone());
    let audit = t.open_with(o.clone());
    fill(&audit, Tier::Security, 3);
    fault.fail_syncs(true);
    assert!(matches!(
        audit.record(event(Tier::Security, "x", "x", Outcome::Allowed)),
        Err(AuditError::WriteFailed { .. })
    ));
    fault.heal();
    assert!(matches!(
        audit.record(event(Tier::Security, "x", "x", Outcome::Allowed)),
        Err(AuditError::Poisoned {
            tier: Tier::Security
        })
    ));
    drop(audit);
    let audit = t.open_with(o);
    // The unacknowledged record may or may not have reached the disk whole;
    // either way the log is consistent and takes records again.
    let n = audit.next_seq(Tier::Security);
    assert!(n == 3 || n == 4, "{n}");
    fill(&audit, Tier::Security, 1);
    drop(audit);
    t.verify().unwrap();
}

#[test]
fn a_torn_tail_is_cut_on_open_and_reported() {
    let (t, seg) = closed_log();
    let fr = frames(&seg);
    let (_, last) = fr[49].clone();
    let bytes = fs::read(&seg).unwrap();
    // Half of the last record made it to disk. (Checkpoints said 50; drop
    // them, as a crash before the close checkpoint would have.)
    fs::write(&seg, &bytes[..last.start + (last.len() / 2)]).unwrap();
    for dir in [&t.dir, &t.copy] {
        let f = dir.join("security/checkpoints.jsonl");
        let kept: String = fs::read_to_string(&f)
            .unwrap()
            .lines()
            .filter(|l| !l.contains("\"count\":50"))
            .map(|l| format!("{l}\n"))
            .collect();
        fs::write(&f, kept).unwrap();
    }
    let before = t.verify().expect("a torn tail alone is a warning");
    assert!(matches!(before.warnings[0].problem, Problem::TornTail(_)));
    assert_eq!(before.warnings[0].seq, Some(49));
    let (audit, report) = Audit::open(t.options(), keys(), t.clock.clone()).unwrap();
    let torn: Vec<_> = report.torn_tails().collect();
    assert_eq!(torn.len(), 1);
    assert_eq!(torn[0].segment, seg);
    assert_eq!(torn[0].offset, last.start as u64);
    assert!(torn[0].quarantined.as_ref().unwrap().exists());
    assert_eq!(audit.next_seq(Tier::Security), 49);
    fill(&audit, Tier::Security, 2);
    drop(audit);
    t.verify().unwrap();
}

#[test]
fn a_cut_covered_by_a_checkpoint_refuses_to_open() {
    let (t, seg) = closed_log();
    let fr = frames(&seg);
    let bytes = fs::read(&seg).unwrap();
    fs::write(&seg, &bytes[..fr[45].1.start + 3]).unwrap();
    assert!(matches!(
        Audit::open(t.options(), keys(), t.clock.clone()),
        Err(AuditError::Corrupt(_))
    ));
}

#[test]
fn proofs_verify_and_tampered_proofs_do_not() {
    let t = TestLog::new();
    let audit = t.open();
    fill(&audit, Tier::Processing, 37);
    for seq in [0u64, 1, 17, 35, 36] {
        let proof = audit.prove(Tier::Processing, seq).unwrap();
        assert_eq!(proof.seq, seq);
        let json = serde_json::to_string(&proof).unwrap();
        let back: rampart_audit::InclusionProof = serde_json::from_str(&json).unwrap();
        verify_proof(&back, &vk()).unwrap();
    }
    let proof = audit.prove(Tier::Processing, 17).unwrap();
    let other = ed25519_dalek::SigningKey::from_bytes(&[1; 32]).verifying_key();
    assert!(verify_proof(&proof, &other).is_err());
    let mut bad = proof.clone();
    bad.audit_path[0] = "00".repeat(32);
    assert!(verify_proof(&bad, &vk()).is_err());
    let mut bad = proof.clone();
    bad.seq = 18;
    assert!(verify_proof(&bad, &vk()).is_err());
    let mut bad = proof;
    bad.checkpoint.count += 1;
    bad.tree_size += 1;
    assert!(matches!(
        verify_proof(&bad, &vk()),
        Err(AuditError::InvalidProof(_))
    ));
    assert!(matches!(
        audit.prove(Tier::Processing, 99),
        Err(AuditError::NoSuchRecord { .. })
    ));
}

#[test]
fn retention_drops_whole_old_segments_and_signs_the_disposal() {
    let t = TestLog::new();
    let mut o = t.options();
    o.retention = o.retention.with(Tier::Network, 30);
    let audit = t.open_with(o.clone());
    for _day in 0..3 {
        fill(&audit, Tier::Network, 7);
        fill(&audit, Tier::Security, 1);
        t.clock.advance(Duration::from_secs(86_400));
    }
    t.clock.advance(Duration::from_secs(86_400 * 29)); // day 32: days 0 and 1 are out
    fill(&audit, Tier::Network, 2);
    assert_eq!(t.segments(Tier::Network).len(), 4);
    let report = audit.apply_retention().unwrap();
    assert_eq!(report.disposed.len(), 1);
    let d = &report.disposed[0];
    assert_eq!(
        (d.tier, d.first_seq, d.end_seq, d.segments.len()),
        (Tier::Network, 0, 14, 2)
    );
    assert_eq!(t.segments(Tier::Network).len(), 2);
    assert_eq!(
        t.segments(Tier::Security).len(),
        3,
        "security keeps ten years"
    );
    // Nothing more to do a second time.
    assert!(audit.apply_retention().unwrap().disposed.is_empty());
    t.verify().unwrap();
    let left = audit
        .search(&Query {
            tier: Some(Tier::Network),
            ..Query::default()
        })
        .unwrap();
    assert_eq!(left.first().map(|r| r.seq), Some(14));
    assert_eq!(left.len(), 9);
    verify_proof(&audit.prove(Tier::Network, 15).unwrap(), &vk()).unwrap();
    assert!(audit.prove(Tier::Network, 3).is_err());
    drop(audit);
    let cps = fs::read_to_string(t.copy.join("network/checkpoints.jsonl")).unwrap();
    let disposal: rampart_audit::Checkpoint =
        serde_json::from_str(cps.lines().find(|l| l.contains("\"disposal\"")).unwrap()).unwrap();
    assert_eq!(disposal.kind, CheckpointKind::Disposal);
    assert_eq!(disposal.disposal.as_ref().unwrap().segments.len(), 2);
    // The log reopens and goes on from the cut.
    let audit = t.open_with(o);
    assert_eq!(audit.next_seq(Tier::Network), 23);
    fill(&audit, Tier::Network, 1);
    drop(audit);
    t.verify().unwrap();
    // Deleting a further segment without a disposal checkpoint is found.
    fs::remove_file(&t.segments(Tier::Network)[0]).unwrap();
    let f = findings(t.verify());
    assert_eq!(f[0].problem, Problem::MissingDisposal { first_seq: 21 });
}

/// A log whose network tier keeps 30 days, with a segment for each of
/// days 0 to 2 (7 records each) and day 3's open one (1 record); the
/// segments' paths and sizes.
fn three_days_kept_thirty(t: &TestLog) -> (Audit, Vec<PathBuf>, Vec<u64>) {
    let mut o = t.options();
    o.retention = o.retention.with(Tier::Network, 30);
    let audit = t.open_with(o);
    for _day in 0..3 {
        fill(&audit, Tier::Network, 7);
        t.clock.advance(Duration::from_secs(86_400));
    }
    fill(&audit, Tier::Network, 1);
    let segs = t.segments(Tier::Network);
    assert_eq!(segs.len(), 4);
    let size = segs
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .collect();
    (audit, segs, size)
}

/// Retention runs every minute on a node. It must not read the whole log
/// each time: it learns when a kept segment expires from the time index,
/// without reading it, and reads each segment once, to dispose of it, so
/// that tampering is still found before a segment goes.
#[test]
fn retention_reads_a_segment_only_to_remove_it_and_checks_it_first() {
    let t = TestLog::new();
    let (audit, segs, size) = three_days_kept_thirty(&t);

    // Nothing is old enough, and the index says so: nothing is read.
    for _ in 0..3 {
        let r = audit.apply_retention().unwrap();
        assert_eq!((r.disposed.len(), r.bytes_read), (0, 0));
    }

    // Day 30 and a half: day 0's records are past 30 days, day 1's not.
    t.clock.advance(Duration::from_secs(86_400 * 27 + 43_200));
    let r = audit.apply_retention().unwrap();
    assert_eq!(r.disposed.len(), 1);
    assert_eq!(r.disposed[0].segments, vec![segs[0].clone()]);
    // Read before it went; the new oldest is not read.
    assert_eq!(r.bytes_read, size[0]);
    let r = audit.apply_retention().unwrap();
    assert_eq!((r.disposed.len(), r.bytes_read), (0, 0));

    // A kept segment altered is refused when it expires, and stays on disk.
    let mut bytes = fs::read(&segs[1]).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0x01;
    fs::write(&segs[1], &bytes).unwrap();
    t.clock.advance(Duration::from_secs(86_400));
    assert!(matches!(
        audit.apply_retention(),
        Err(AuditError::Corrupt(_))
    ));
    assert!(segs[1].exists());
}

/// Without a time index (a log older than it, or the file lost), retention
/// reads the oldest kept segment once to learn when it expires, adds its
/// line to the index, and reads it again before it goes.
#[test]
fn retention_without_a_time_index_reads_a_kept_segment_once_and_again_before_disposal() {
    let t = TestLog::new();
    let (audit, segs, size) = three_days_kept_thirty(&t);
    let index = network_time_index(&t);
    let lines = fs::read_to_string(&index).unwrap();
    fs::remove_file(&index).unwrap();

    let r = audit.apply_retention().unwrap();
    assert_eq!((r.disposed.len(), r.bytes_read), (0, size[0]));
    // The oldest segment's line is back, as the writer had written it.
    assert_eq!(
        fs::read_to_string(&index).unwrap(),
        lines.lines().next().unwrap().to_string() + "\n"
    );
    for _ in 0..3 {
        let r = audit.apply_retention().unwrap();
        assert_eq!((r.disposed.len(), r.bytes_read), (0, 0));
    }
    t.clock.advance(Duration::from_secs(86_400 * 27 + 43_200));
    let r = audit.apply_retention().unwrap();
    assert_eq!(r.disposed[0].segments, vec![segs[0].clone()]);
    assert_eq!(r.bytes_read, size[0] + size[1]);
    let r = audit.apply_retention().unwrap();
    assert_eq!((r.disposed.len(), r.bytes_read), (0, 0));
    drop(audit);
    t.verify().unwrap();
}

/// A time index line that makes a segment look older than its records
/// are does not get it removed early: the records decide, and what they
/// say is remembered over the index.
#[test]
fn retention_removes_only_what_the_records_put_past_the_horizon() {
    let t = TestLog::new();
    let (audit, segs, size) = three_days_kept_thirty(&t);
    // Every indexed segment said to hold day 0's times only.
    let path = network_time_index(&t);
    let index = fs::read_to_string(&path).unwrap();
    let first: Vec<&str> = index.lines().next().unwrap().split(' ').collect();
    let lied: String = index
        .lines()
        .map(|l| {
            format!(
                "{} {} {}\n",
                l.split(' ').next().unwrap(),
                first[1],
                first[2]
            )
        })
        .collect();
    fs::write(&path, lied).unwrap();

    // Day 30 and a half: the index puts all three past the horizon; their
    // records put only day 0's there.
    t.clock.advance(Duration::from_secs(86_400 * 27 + 43_200));
    let r = audit.apply_retention().unwrap();
    assert_eq!(r.disposed.len(), 1);
    assert_eq!(r.disposed[0].segments, vec![segs[0].clone()]);
    assert_eq!(r.bytes_read, size[0] + size[1] + size[2]);
    assert!(segs[1].exists() && segs[2].exists());
    // The records' times are remembered: the next run reads nothing.
    let r = audit.apply_retention().unwrap();
    assert_eq!((r.disposed.len(), r.bytes_read), (0, 0));
    // Day 31 and a half: day 1's segment goes, day 2's stays.
    t.clock.advance(Duration::from_secs(86_400));
    let r = audit.apply_retention().unwrap();
    assert_eq!(r.disposed[0].segments, vec![segs[1].clone()]);
    assert_eq!(r.bytes_read, size[1]);
    assert!(segs[2].exists());
}

/// A proof checks only the checkpoints from the record's segment on (the
/// file keeps every line the tier ever had, one every thousand records by
/// default, each with a signature to check): a bad line before that
/// segment does not stop a proof, one within it is passed over, and
/// `verify` still checks and names every line.
#[test]
fn a_bad_checkpoint_line_is_passed_over_by_proofs_and_named_by_verify() {
    let t = TestLog::new();
    let audit = t.open();
    fill(&audit, Tier::Processing, 25); // checkpoints at 10 and 20
    t.clock.advance(Duration::from_secs(86_400));
    fill(&audit, Tier::Processing, 25); // a new segment from 25: 30, 40, 50
    audit.checkpoint_now().unwrap();
    assert_eq!(t.segments(Tier::Processing).len(), 2);
    // Spoil the signature of the line that counts 10 records (line 1).
    spoil_checkpoint(&t.dir.join("processing/checkpoints.jsonl"), 10);

    // A record in the second segment: the spoilt line is not read.
    let proof = audit.prove(Tier::Processing, 45).unwrap();
    verify_proof(&proof, &vk()).unwrap();
    assert_eq!(proof.tree_size, 50);
    // A record in the first: the line is read, found bad and passed over.
    let proof = audit.prove(Tier::Processing, 5).unwrap();
    verify_proof(&proof, &vk()).unwrap();
    drop(audit);
    verify_names_checkpoint_line(&t, 1);
}

/// Spoils the signature of the checkpoint line that counts `count` records.
fn spoil_checkpoint(file: &Path, count: u64) {
    let text = fs::read_to_string(file).unwrap();
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            let mut cp: rampart_audit::Checkpoint = serde_json::from_str(l).unwrap();
            if cp.count == count {
                let last = cp.signature.pop().unwrap();
                cp.signature.push(if last == 'A' { 'B' } else { 'A' });
            }
            serde_json::to_string(&cp).unwrap()
        })
        .collect();
    fs::write(file, lines.join("\n") + "\n").unwrap();
}

/// `verify` fails and names checkpoint line `line` as bad.
fn verify_names_checkpoint_line(t: &TestLog, line: usize) {
    let f = findings(t.verify());
    assert!(
        f.iter()
            .any(|f| matches!(f.problem, Problem::Checkpoint { line: l, .. } if l == line)),
        "{f:?}"
    );
}

/// Runs the load generator on `t`'s log with `args` after its directories
/// until it has acknowledged `want` records, kills it (SIGKILL) and returns
/// every sequence number it acknowledged.
fn acked_before_sigkill(t: &TestLog, args: &[&str], want: usize) -> BTreeSet<u64> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rampart-audit-loadgen"))
        .arg(&t.dir)
        .arg(&t.copy)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut acked = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.len() < want && Instant::now() < deadline {
        match lines.next() {
            Some(Ok(l)) => {
                acked.insert(l.trim().parse::<u64>().unwrap());
            }
            _ => break,
        }
    }
    child.kill().unwrap(); // SIGKILL
                           // Receipts printed after we stopped counting but before the kill count too.
    for l in lines.map_while(Result::ok) {
        acked.insert(l.trim().parse::<u64>().unwrap());
    }
    child.wait().unwrap();
    assert!(
        acked.len() >= want,
        "loadgen acknowledged only {}",
        acked.len()
    );
    acked
}

#[test]
fn every_acknowledged_record_survives_sigkill() {
    let t = TestLog::new();
    let acked = acked_before_sigkill(&t, &["16"], 3000);

    let (audit, report) = Audit::open(t.options(), keys(), t.clock.clone()).unwrap();
    let _ = report.torn_tails().count();
    let found: BTreeSet<u64> = audit
        .search(&Query {
            tier: Some(Tier::Security),
            ..Query::default()
        })
        .unwrap()
        .into_iter()
        .map(|r| r.seq)
        .collect();
    let missing: Vec<_> = acked.difference(&found).take(5).collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    drop(audit);
    t.verify().unwrap();
}

/// A minimal `block_on`: polls, parks until woken.
fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let std::task::Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

#[test]
fn record_async_resolves_once_durable() {
    let t = TestLog::new();
    let audit = t.open();
    let futures: Vec<_> = (0..20)
        .map(|i| {
            audit.record_async(event(
                Tier::Security,
                &format!("task-{i}"),
                "x",
                Outcome::Allowed,
            ))
        })
        .collect();
    let seqs: BTreeSet<u64> = futures
        .into_iter()
        .map(|f| block_on(f).unwrap().seq)
        .collect();
    assert_eq!(seqs, (0..20).collect());
    audit.close().unwrap();
    assert!(matches!(
        block_on(audit.record_async(event(Tier::Security, "late", "x", Outcome::Allowed))),
        Err(AuditError::Closed)
    ));
    drop(audit);
    t.verify().unwrap();
}

#[test]
fn an_idle_log_still_checkpoints_every_t() {
    let t = TestLog::new();
    let mut o = t.options();
    o.checkpoint_every_records = 1000;
    o.checkpoint_every = Duration::from_millis(50);
    let audit = t.open_with(o);
    fill(&audit, Tier::Application, 3);
    let cp_file = t.dir.join("application/checkpoints.jsonl");
    assert!(!fs::read_to_string(&cp_file)
        .unwrap_or_default()
        .contains("\"count\":3"));
    t.clock.advance(Duration::from_secs(1));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fs::read_to_string(&cp_file)
        .unwrap_or_default()
        .contains("\"count\":3")
    {
        assert!(Instant::now() < deadline, "no checkpoint while idle");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn open_resumes_from_the_newest_header_and_verify_checks_every_header() {
    let t = TestLog::new();
    let mut o = t.options();
    o.segment_max_bytes = 2048;
    let audit = t.open_with(o.clone());
    fill(&audit, Tier::Network, 30);
    drop(audit);
    let segs = t.segments(Tier::Network);
    assert!(segs.len() >= 3);
    // A forged chain head in a middle segment's header, checksum fixed.
    let mut bytes = fs::read(&segs[1]).unwrap();
    bytes[40] ^= 0xff; // inside prev_hash (bytes 36..68)
    let k = bytes[11] as usize;
    let end = 68 + 32 * k;
    let crc = crc32fast::hash(&bytes[..end]).to_le_bytes();
    bytes[end..end + 4].copy_from_slice(&crc);
    fs::write(&segs[1], &bytes).unwrap();
    let f = findings(t.verify());
    assert_eq!(f[0].problem, Problem::HeaderState);
    assert_eq!(f[0].file.as_deref(), Some(segs[1].as_path()));
    // The writer reads only the newest segment on open, so it still opens
    // (verify is what reads everything) and carries on from the right seq.
    let audit = t.open_with(o);
    assert_eq!(audit.next_seq(Tier::Network), 30);
    let proof = audit.prove(Tier::Network, 29).unwrap();
    verify_proof(&proof, &vk()).unwrap();
}

#[test]
fn a_failed_sync_under_concurrency_refuses_everyone_and_hangs_nobody() {
    let t = TestLog::new();
    let fault = FaultInjector::new();
    let mut o = t.options();
    o.fault = Some(fault.clone());
    let audit = Arc::new(t.open_with(o.clone()));
    fill(&audit, Tier::Security, 3);
    fault.fail_syncs(true);
    let handles: Vec<_> = (0..16)
        .map(|w| {
            let audit = Arc::clone(&audit);
            std::thread::spawn(move || {
                (0..20)
                    .filter(|_| {
                        audit
                            .record(event(
                                Tier::Security,
                                &format!("w{w}"),
                                "x",
                                Outcome::Allowed,
                            ))
                            .is_ok()
                    })
                    .count()
            })
        })
        .collect();
    let acked: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(
        acked, 0,
        "no record may be acknowledged after a failed sync"
    );
    fault.heal();
    drop(audit);
    let audit = t.open_with(o);
    fill(&audit, Tier::Security, 1);
    drop(audit);
    t.verify().unwrap();
}

/// `tasks` tasks each recording `per_task` records on `runtime`, some of
/// them racing a timer that drops the record future (sometimes after its
/// wake-up); every task ends, and every record it queued is in the log.
fn async_writers(
    runtime: &tokio::runtime::Runtime,
    audit: &Arc<Audit>,
    tasks: usize,
    per_task: u64,
) -> u64 {
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let audit = Arc::clone(audit);
            runtime.spawn(async move {
                let mut queued = 0u64;
                for i in 0..per_task {
                    let fut = audit.record_async(event(
                        Tier::Application,
                        &format!("task-{t}"),
                        "x",
                        Outcome::Allowed,
                    ));
                    queued += 1;
                    if (t as u64 + i).is_multiple_of(5) {
                        // Abandon the wait now and then; the record stays.
                        tokio::select! {
                            r = fut => { r.unwrap(); }
                            () = tokio::time::sleep(Duration::from_micros(50)) => {}
                        }
                    } else {
                        fut.await.unwrap();
                    }
                }
                queued
            })
        })
        .collect();
    runtime.block_on(async {
        let mut total = 0;
        for h in handles {
            total += tokio::time::timeout(Duration::from_secs(60), h)
                .await
                .expect("a task waited for a wake-up that never came")
                .unwrap();
        }
        total
    })
}

/// Runs `writers` against a fresh log; then every record they queued is in
/// it, and it verifies.
fn all_woken(writers: impl FnOnce(&Arc<Audit>) -> u64) {
    let t = TestLog::new();
    let mut o = t.options();
    o.checkpoint_every_records = 1000;
    let audit = Arc::new(t.open_with(o));
    let queued = writers(&audit);
    audit.close().unwrap();
    assert_eq!(audit.next_seq(Tier::Application), queued);
    drop(audit);
    let report = t.verify().unwrap();
    assert!(report.findings.is_empty(), "{:?}", report.findings);
}

#[test]
fn record_futures_on_single_thread_runtimes_are_all_woken() {
    // Two threads, each its own runtime, as the edge's workers run.
    all_woken(|audit| {
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let audit = Arc::clone(audit);
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    async_writers(&rt, &audit, 24, 40)
                })
            })
            .collect();
        threads.into_iter().map(|h| h.join().unwrap()).sum()
    });
}

#[test]
fn record_futures_on_a_multi_thread_runtime_are_all_woken() {
    all_woken(|audit| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(3)
            .enable_all()
            .build()
            .unwrap();
        async_writers(&rt, audit, 48, 30)
    });
}

#[test]
fn a_log_signed_under_another_key_is_refused_at_open() {
    let t = TestLog::new();
    let audit = t.open();
    fill(&audit, Tier::Security, 25);
    audit.close().unwrap();
    drop(audit);
    // Another node's keys (or another data directory's): the log refuses
    // to go on rather than append records nothing will ever verify.
    let other = AuditKeys::generate().unwrap();
    let err = Audit::open(t.options(), other, t.clock.clone()).unwrap_err();
    match &err {
        AuditError::ForeignKey { tier, checkpoints } => {
            assert_eq!(*tier, Tier::Security);
            assert!(*checkpoints >= 2, "{checkpoints}");
        }
        e => panic!("expected ForeignKey, got {e}"),
    }
    assert!(err.to_string().contains("rampart audit verify"));
    // Nothing was written by the refused open; the right key still works
    // and the log verifies.
    let audit = t.open();
    fill(&audit, Tier::Security, 3);
    audit.close().unwrap();
    drop(audit);
    assert!(t.verify().unwrap().findings.is_empty());
}

#[test]
fn one_rewritten_checkpoint_among_good_ones_is_reported_at_open() {
    let t = TestLog::new();
    let audit = t.open();
    fill(&audit, Tier::Security, 25);
    audit.close().unwrap();
    drop(audit);
    let cp_file = t.dir.join("security/checkpoints.jsonl");
    let text = fs::read_to_string(&cp_file).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    // Flip one character of the first checkpoint's merkle root.
    let first = &mut lines[0];
    let at = first.find("\"merkle_root\":\"").unwrap() + 15;
    let c = if &first[at..at + 1] == "0" { "1" } else { "0" };
    first.replace_range(at..at + 1, c);
    fs::write(&cp_file, lines.join("\n") + "\n").unwrap();
    let (audit, report) = Audit::open(t.options(), keys(), t.clock.clone()).unwrap();
    assert_eq!(
        report.checkpoint_problems.len(),
        1,
        "{:?}",
        report.checkpoint_problems
    );
    drop(audit);
}

/// Opening checks the checkpoints from the newest segment's first record on
/// (and the newest line), not every line the tier ever had: those files
/// grow for the life of the log, and checking each signature made every
/// start slower than the last. `verify` still checks them all.
#[test]
fn opening_checks_the_newest_segments_checkpoints_and_verify_checks_all() {
    let t = TestLog::new();
    let audit = t.open();
    fill(&audit, Tier::Security, 25); // segment from 0: 10, 20, and 25 at close
    audit.close().unwrap();
    drop(audit);
    t.clock.advance(Duration::from_secs(86_400));
    let audit = t.open();
    fill(&audit, Tier::Security, 25); // segment from 25: 35, 45, and 50 at close
    audit.close().unwrap();
    drop(audit);
    assert_eq!(t.segments(Tier::Security).len(), 2);
    let spoil = |count: u64| spoil_checkpoint(&t.dir.join("security/checkpoints.jsonl"), count);

    // A bad line before the newest segment: not read at open...
    spoil(10);
    let (audit, report) = Audit::open(t.options(), keys(), t.clock.clone()).unwrap();
    assert!(report.checkpoint_problems.is_empty(), "{report:?}");
    drop(audit);
    // ...but named by verify.
    verify_names_checkpoint_line(&t, 1);
    // One within it: reported at open. (The first periodic checkpoint of
    // each opening counts exactly ten records more than the last line: no
    // earlier one can still be on its way. Later ones may come a record
    // or two late on a busy machine.)
    spoil(35);
    let (audit, report) = Audit::open(t.options(), keys(), t.clock.clone()).unwrap();
    assert_eq!(report.checkpoint_problems.len(), 1, "{report:?}");
    drop(audit);
    // Another node's key is still refused: the lines opening reads are
    // signed under none it holds.
    let other = AuditKeys::generate().unwrap();
    assert!(matches!(
        Audit::open(t.options(), other, t.clock.clone()),
        Err(AuditError::ForeignKey {
            tier: Tier::Security,
            ..
        })
    ));
}

/// A log written before events were stored in their compact form (the
/// fixture holds three events as JSON, written by the code of `25d6c60`
/// with this file's keys): it still opens, verifies and searches, and new
/// records follow the old ones in the same chain.
#[test]
fn a_log_with_json_events_stays_readable_and_takes_compact_ones_after_them() {
    let t = TestLog::new();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/json-events");
    fs::create_dir_all(t.dir.join("security")).unwrap();
    for name in ["00000000000000000000.seg", "checkpoints.jsonl"] {
        fs::copy(
            fixture.join("security").join(name),
            t.dir.join("security").join(name),
        )
        .unwrap();
    }
    verify(&t.dir, &vk(), None).unwrap();

    let mut o = t.options();
    o.checkpoint_dir = None;
    let audit = t.open_with(o);
    assert_eq!(audit.next_seq(Tier::Security), 3);
    let old = audit.search(&Query::default()).unwrap();
    assert_eq!(old.len(), 3);
    assert_eq!(old[1].event.actor.principal, "alice-1");
    assert_eq!(old[1].event.actor.auth, "password+totp");
    assert_eq!(old[1].event.outcome, Outcome::Denied);
    assert_eq!(
        old[1].event.reason.as_deref(),
        Some("policy \"prod\" denies\nrole reader")
    );
    assert_eq!(
        old[2].event.details.get("status").map(String::as_str),
        Some("200")
    );

    let mut e = event(Tier::Security, "bob", "keys.encrypt", Outcome::Denied);
    e.details.insert("bytes".into(), "1024".into());
    e.reason = Some("quote \" newline \n and ünïcode".into());
    audit.record(e.clone()).unwrap();
    let all = audit.search(&Query::default()).unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(all[3].event, e);
    assert_eq!(all[..3], old[..]);
    audit.close().unwrap();
    drop(audit);
    verify(&t.dir, &vk(), None).unwrap();
}

fn checkpoint_counts(file: &Path) -> Vec<u64> {
    fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["count"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

/// Periodic checkpoints are signed and appended by a syncer thread after
/// their records are durable, not by the writer; any other checkpoint, and
/// a proof, first appends the one on its way, so both files stay in order
/// and a proof never waits for a line that is not there.
#[test]
fn deferred_checkpoints_land_in_order_before_any_other() {
    let t = TestLog::new();
    let audit = t.open();
    let main = t.dir.join("network/checkpoints.jsonl");
    let copy = t.copy.join("network/checkpoints.jsonl");
    let landed = |count: u64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while [&main, &copy]
            .iter()
            .any(|f| checkpoint_counts(f).last() < Some(&count))
        {
            assert!(Instant::now() < deadline, "{:?}", checkpoint_counts(&main));
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    for round in 1..=20u64 {
        fill(&audit, Tier::Network, 10); // each tenth record makes one due
        if round % 3 == 0 {
            // At once, while the periodic one may still be on its way.
            audit.checkpoint_now().unwrap();
        }
        if round % 4 == 0 {
            let seq = audit.next_seq(Tier::Network) - 1;
            let proof = audit.prove(Tier::Network, seq).unwrap();
            verify_proof(&proof, &vk()).unwrap();
        }
        // The round's periodic one arrives without any other call. (Not
        // waiting here, a machine busy enough to keep the syncer that
        // appends it off the CPU for ten records makes the next one late:
        // due while that one is being appended, it stays due.)
        landed(round * 10);
    }
    let every_tenth: Vec<u64> = (1..=20).map(|r| r * 10).collect();
    for file in [&main, &copy] {
        assert_eq!(checkpoint_counts(file), every_tenth);
    }
    audit.close().unwrap();
    drop(audit);
    t.verify().unwrap();
}

/// The records of a search, by seq.
fn seqs(audit: &Audit, query: &Query) -> Result<Vec<u64>, AuditError> {
    Ok(audit.search(query)?.iter().map(|r| r.seq).collect())
}

/// A search from `from` (inclusive) to `to` (exclusive), seconds after START.
fn between(from: Option<u64>, to: Option<u64>) -> Query {
    let at = |s: u64| UNIX_EPOCH + Duration::from_secs(START + s);
    Query {
        tier: Some(Tier::Network),
        from: from.map(at),
        to: to.map(at),
        ..Query::default()
    }
}

/// Options for several small segments, rolled by size only.
fn small_segments(t: &TestLog) -> AuditOptions {
    let mut o = t.options();
    o.segment_max_bytes = 2048;
    o.segment_roll_interval = None;
    o
}

/// The network tier's time index file.
fn network_time_index(t: &TestLog) -> PathBuf {
    t.dir.join("network").join("times")
}

/// A network log of 20 records a second apart, over several segments.
fn twenty_seconds_of_network_records() -> (TestLog, Audit) {
    let t = TestLog::new();
    let audit = t.open_with(small_segments(&t));
    for _ in 0..20 {
        fill(&audit, Tier::Network, 1);
        t.clock.advance(Duration::from_secs(1));
    }
    (t, audit)
}

#[test]
fn a_time_bounded_search_reads_only_the_segments_its_range_can_hold() {
    let t = TestLog::new();
    let o = small_segments(&t);
    let audit = t.open_with(o.clone());
    // A record a second, from START + 1000 on; record 12 is stamped
    // 900 s earlier than its neighbours (a clock stepped back), so its
    // segment's span must reach back to it.
    t.clock.advance(Duration::from_secs(1000));
    for i in 0..20 {
        if i == 12 {
            t.clock.set_unix_secs(START + 100);
            fill(&audit, Tier::Network, 1);
            t.clock.set_unix_secs(START + 1012);
        } else {
            fill(&audit, Tier::Network, 1);
        }
        t.clock.advance(Duration::from_secs(1));
    }
    // Reopened mid-segment: the segment it goes on with must keep the span
    // of the records written before.
    drop(audit);
    let audit = t.open_with(o.clone());
    for _ in 0..20 {
        fill(&audit, Tier::Network, 1);
        t.clock.advance(Duration::from_secs(1));
    }
    let segs = t.segments(Tier::Network);
    assert!(segs.len() >= 4, "{} segments", segs.len());
    // Every sealed segment has its line.
    let index = fs::read_to_string(network_time_index(&t)).unwrap();
    assert_eq!(index.lines().count(), segs.len() - 1, "{index}");
    t.verify().unwrap();

    // Bounded searches return exactly what an unbounded one filtered by
    // time does, the record stamped early included.
    let all = audit.search(&between(None, None)).unwrap();
    assert_eq!(all.len(), 40);
    let secs_of = |r: &rampart_audit::Record| r.time_unix_nanos / 1_000_000_000 - START;
    for (from, to) in [
        (None, Some(1005)),
        (Some(1005), Some(1015)),
        (Some(1030), None),
        (Some(50), Some(150)),
        (Some(150), Some(1000)),
        (Some(1039), Some(1040)),
    ] {
        let want: Vec<u64> = all
            .iter()
            .filter(|r| from.is_none_or(|f| secs_of(r) >= f) && to.is_none_or(|t| secs_of(r) < t))
            .map(|r| r.seq)
            .collect();
        assert_eq!(
            seqs(&audit, &between(from, to)).unwrap(),
            want,
            "{from:?}..{to:?}"
        );
    }
    assert_eq!(
        seqs(&audit, &between(Some(50), Some(150))).unwrap(),
        vec![12]
    );

    // Damage to the first segment (records from START + 1000 to about
    // START + 1007) does not touch a search whose range it cannot hold: it
    // is not read. One that can hold it, and an unbounded one, still fail.
    let first = &segs[0];
    let (_, range) = frames(first)[1].clone();
    let mut bytes = fs::read(first).unwrap();
    bytes[range.start + 40] ^= 0x55;
    fs::write(first, &bytes).unwrap();
    let late = seqs(&audit, &between(Some(1030), None)).unwrap();
    assert_eq!(late.len(), 10);
    assert!(matches!(
        audit.search(&between(Some(1000), Some(1003))),
        Err(AuditError::Corrupt(_))
    ));
    assert!(matches!(
        audit.search(&between(None, None)),
        Err(AuditError::Corrupt(_))
    ));
    fs::write(
        first,
        fs::read(first)
            .map(|mut b| {
                b[range.start + 40] ^= 0x55;
                b
            })
            .unwrap(),
    )
    .unwrap();
    drop(audit);
    t.verify().unwrap();
}

#[test]
fn verify_names_a_time_index_line_that_would_hide_records() {
    let (t, audit) = twenty_seconds_of_network_records();
    drop(audit);
    let path = network_time_index(&t);
    let index = fs::read_to_string(&path).unwrap();
    let first = index.lines().next().unwrap().to_string();
    let fields: Vec<u64> = first.split(' ').map(|f| f.parse().unwrap()).collect();
    // The first segment's line narrowed to its last record: a search for
    // its first records would pass it over.
    let forged = format!("{} {} {}", fields[0], fields[2], fields[2]);
    fs::write(&path, index.replacen(&first, &forged, 1)).unwrap();
    let f = findings(t.verify());
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(
        f[0].problem,
        Problem::TimeIndex {
            segment: fields[0],
            indexed: (fields[2], fields[2]),
            actual: Some((fields[1], fields[2])),
        }
    );
    assert!(f[0]
        .to_string()
        .contains("time-bounded searches could miss records"));
    // A line torn by a crash is no line: the segment is read, nothing is
    // reported.
    fs::write(&path, format!("{index}{} 1", fields[0] + 1)).unwrap();
    t.verify().unwrap();
}

/// A time index line torn by a crash is cut when the log is opened, so that
/// the next line appended does not join it: the joined line could parse
/// and give a segment a span it does not have.
#[test]
fn a_torn_time_index_line_is_cut_at_open() {
    let (t, audit) = twenty_seconds_of_network_records();
    drop(audit);
    let path = network_time_index(&t);
    let index = fs::read_to_string(&path).unwrap();
    // A torn line: the first digit of a segment number.
    fs::write(&path, format!("{index}9")).unwrap();
    let audit = t.open_with(small_segments(&t));
    assert_eq!(fs::read_to_string(&path).unwrap(), index);
    // More segments sealed after reopening: every line is whole and
    // matches its segment.
    for _ in 0..20 {
        fill(&audit, Tier::Network, 1);
        t.clock.advance(Duration::from_secs(1));
    }
    drop(audit);
    let after = fs::read_to_string(&path).unwrap();
    assert!(after.len() > index.len() && after.starts_with(&index));
    // One line for each sealed segment (all but the newest), by its number.
    let numbers = |p: &PathBuf| -> u64 {
        let name = p.file_name().unwrap().to_str().unwrap();
        name.trim_end_matches(".seg").parse().unwrap()
    };
    let segs = t.segments(Tier::Network);
    let sealed: BTreeSet<u64> = segs[..segs.len() - 1].iter().map(numbers).collect();
    let indexed: BTreeSet<u64> = after
        .lines()
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(indexed, sealed, "{after}");
    t.verify().unwrap();
}

#[test]
fn an_unreadable_time_index_makes_searches_read_every_segment() {
    let (t, audit) = twenty_seconds_of_network_records();
    let path = network_time_index(&t);
    fs::remove_file(&path).unwrap();
    fs::create_dir(&path).unwrap();
    assert_eq!(
        seqs(&audit, &between(Some(0), Some(3))).unwrap(),
        vec![0, 1, 2]
    );
    assert_eq!(
        seqs(&audit, &between(Some(17), None)).unwrap(),
        vec![17, 18, 19]
    );
    // verify names it
    drop(audit);
    let f = findings(t.verify());
    assert!(
        matches!(&f[0].problem, Problem::Unreadable(_))
            && f[0].file.as_deref() == Some(path.as_path()),
        "{f:?}"
    );
    // and the log still opens (the index is only an aid) and searches
    let audit = t.open_with(small_segments(&t));
    assert_eq!(
        seqs(&audit, &between(Some(17), None)).unwrap(),
        vec![17, 18, 19]
    );
}

/// A denial as the edge records it: in api-access, with a copy in security.
fn denial<'a>(id: &'a str, details: &'a [(&'a str, &'a str)]) -> EventRef<'a> {
    EventRef {
        tier: Tier::ApiAccess,
        node: "node-1",
        environment: "test",
        principal: "anonymous",
        auth: "edge",
        action: "edge.get",
        resource: "shop.example.com/cart",
        outcome: Outcome::Denied,
        reason: Some("status 403: waf"),
        request_id: Some(id),
        source: Some("192.0.2.7"),
        details,
    }
}

fn with_copies(t: &TestLog, delay: Duration) -> AuditOptions {
    let mut o = t.options();
    o.copies = vec![(Tier::ApiAccess, Tier::Security)];
    o.copy_delay = delay;
    o
}

fn request_ids(audit: &Audit, tier: Tier) -> Vec<String> {
    audit
        .search(&Query {
            tier: Some(tier),
            ..Query::default()
        })
        .unwrap()
        .into_iter()
        .map(|r| r.event.request_id.unwrap_or_default())
        .collect()
}

/// Copies every file under `from` to `to`: what a crash of the machine
/// leaves when everything synced so far is on disk and nothing else.
fn snapshot(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            snapshot(&e.path(), &dest);
        } else {
            fs::copy(e.path(), dest).unwrap();
        }
    }
}

#[test]
fn a_record_with_a_copy_is_answered_at_its_sync_and_its_copy_follows() {
    let t = TestLog::new();
    let audit = t.open_with(with_copies(&t, Duration::from_millis(20)));
    let details = [("status", "403"), ("waf_rules", "942100")];
    let mut receipts = Vec::new();
    for i in 0..5 {
        let id = format!("r-{i}");
        receipts.push(
            audit
                .record_with_copy(&denial(&id, &details), Tier::Security)
                .unwrap(),
        );
    }
    assert!(receipts.iter().all(|r| r.tier == Tier::ApiAccess));
    // within the copy delay (and a sync), the copies are in security
    let deadline = Instant::now() + Duration::from_secs(10);
    while request_ids(&audit, Tier::Security).len() < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let api = audit
        .search(&Query {
            tier: Some(Tier::ApiAccess),
            ..Query::default()
        })
        .unwrap();
    let sec = audit
        .search(&Query {
            tier: Some(Tier::Security),
            ..Query::default()
        })
        .unwrap();
    assert_eq!(sec.len(), 5);
    for (a, s) in api.iter().zip(&sec) {
        // the same event, the same time, in the other tier
        assert_eq!(a.time_unix_nanos, s.time_unix_nanos);
        assert_eq!(s.event.tier, Tier::Security);
        let mut same = s.event.clone();
        same.tier = Tier::ApiAccess;
        assert_eq!(same, a.event);
    }
    // a pair the log was not opened for is refused
    assert!(matches!(
        audit.record_with_copy(&denial("x", &details), Tier::Network),
        Err(AuditError::CopyNotDeclared {
            from: Tier::ApiAccess,
            to: Tier::Network
        })
    ));
    // copies still waiting when the log closes are written by the close
    let slow = TestLog::new();
    let audit2 = slow.open_with(with_copies(&slow, Duration::from_secs(3600)));
    audit2
        .record_with_copy(&denial("late", &details), Tier::Security)
        .unwrap();
    audit2.close().unwrap();
    drop(audit2);
    let (reopened, report) = Audit::open(
        with_copies(&slow, Duration::from_secs(3600)),
        keys(),
        slow.clock.clone(),
    )
    .unwrap();
    assert_eq!(
        report.copies_restored,
        vec![(Tier::ApiAccess, Tier::Security, 0)]
    );
    assert_eq!(
        request_ids(&reopened, Tier::Security),
        vec!["late".to_string()]
    );
    drop(reopened);
    slow.verify().unwrap();
    drop(audit);
    t.verify().unwrap();
}

#[test]
fn copies_disposed_of_by_retention_are_not_counted_lost() {
    let t = TestLog::new();
    let mut o = with_copies(&t, Duration::from_secs(3600));
    o.retention = o.retention.with(Tier::Security, 30);
    let deny = |ids: &[&str]| {
        // closing writes the copies still waiting
        let audit = t.open_with(o.clone());
        for id in ids {
            audit
                .record_with_copy(&denial(id, &[]), Tier::Security)
                .unwrap();
        }
        audit.close().unwrap();
    };
    deny(&["day-0-a", "day-0-b"]);
    t.clock.advance(Duration::from_secs(86_400 * 31));
    deny(&["day-31"]);
    let audit = t.open_with(o.clone());
    let report = audit.apply_retention().unwrap();
    assert!(
        report.disposed.iter().any(|d| d.tier == Tier::Security),
        "{report:?}"
    );
    assert_eq!(request_ids(&audit, Tier::Security), vec!["day-31"]);
    drop(audit);
    let reader = AuditReader::new(&t.dir, keys().encryption_key);
    let check = reader
        .check_copies(Tier::ApiAccess, Tier::Security)
        .unwrap();
    assert_eq!(
        (check.marked, check.present, check.disposed),
        (3, 1, 2),
        "{check}"
    );
    assert!(check.pending.is_empty() && check.lost.is_empty());
    assert!(check.to_string().contains("2 disposed of by retention"));
}

#[test]
fn a_crash_before_the_copies_are_written_loses_none_of_them() {
    let t = TestLog::new();
    // the copies would wait an hour: a crash comes first
    let audit = t.open_with(with_copies(&t, Duration::from_secs(3600)));
    // (records of security written after the copies would take them along)
    fill(&audit, Tier::Security, 2);
    for i in 0..3 {
        let id = format!("r-{i}");
        audit
            .record_with_copy(&denial(&id, &[]), Tier::Security)
            .unwrap();
    }
    let crashed = t._tmp.path().join("crashed");
    snapshot(&t.dir, &crashed);
    let forged = t._tmp.path().join("forged");
    snapshot(&t.dir, &forged);
    audit.close().unwrap();
    drop(audit);
    // Checked before opening, the crashed log's copies are pending, not lost.
    let check = |dir: &Path| {
        let reader = AuditReader::new(dir, keys().encryption_key);
        assert_eq!(reader.copy_pairs(), vec![(Tier::ApiAccess, Tier::Security)]);
        reader
            .check_copies(Tier::ApiAccess, Tier::Security)
            .unwrap()
    };
    let before = check(&crashed);
    assert_eq!((before.marked, before.present, before.disposed), (3, 0, 0));
    assert_eq!(before.pending.len(), 3);
    assert!(before.is_ok(), "{before}");
    assert!(before.to_string().contains("3 not written yet"), "{before}");

    let open_crashed = |dir: &Path| {
        let mut o = with_copies(&t, Duration::from_secs(3600));
        o.dir = dir.to_path_buf();
        o.checkpoint_dir = None;
        Audit::open(o, keys(), t.clock.clone()).unwrap()
    };
    let (audit, report) = open_crashed(&crashed);
    assert_eq!(
        report.copies_restored,
        vec![(Tier::ApiAccess, Tier::Security, 3)]
    );
    let mut ids = request_ids(&audit, Tier::Security);
    ids.sort();
    assert_eq!(ids, vec!["r-0", "r-1", "r-2", "req-1", "req-1"]);
    audit.close().unwrap();
    drop(audit);
    verify(&crashed, &vk(), None).unwrap();
    let after = check(&crashed);
    assert_eq!((after.marked, after.present), (3, 3));
    assert!(after.pending.is_empty() && after.lost.is_empty(), "{after}");
    // A mark that says the copies were written when they were not (moved
    // by hand, or by a bug): the check names them lost.
    let mark_name = Path::new("security").join("copies-from-api-access");
    fs::copy(crashed.join(&mark_name), forged.join(&mark_name)).unwrap();
    let lost = check(&forged);
    assert_eq!(lost.lost.len(), 3, "{lost}");
    assert!(!lost.is_ok());
    assert!(lost.to_string().contains("3 LOST"), "{lost}");
    let mark = crashed.join("security").join("copies-from-api-access");
    for damage in [false, true] {
        // Once written, opening again writes none twice; a damaged mark
        // makes it read both tiers from the start, and still none twice.
        if damage {
            fs::write(&mark, b"garbage").unwrap();
        }
        let (audit, report) = open_crashed(&crashed);
        assert_eq!(
            report.copies_restored,
            vec![(Tier::ApiAccess, Tier::Security, 0)]
        );
        assert_eq!(request_ids(&audit, Tier::Security).len(), 5);
        drop(audit);
    }
    verify(&crashed, &vk(), None).unwrap();
}

#[test]
fn every_acknowledged_denial_has_its_copy_after_sigkill() {
    let t = TestLog::new();
    // its copies wait an hour: the kill comes before any is written
    let acked = acked_before_sigkill(&t, &["8", "copies"], 1000);

    let (audit, report) = Audit::open(
        with_copies(&t, Duration::from_secs(3600)),
        keys(),
        t.clock.clone(),
    )
    .unwrap();
    let restored = report.copies_restored[0].2;
    assert!(
        restored >= acked.len(),
        "restored {restored} of {}",
        acked.len()
    );
    let api = audit
        .search(&Query {
            tier: Some(Tier::ApiAccess),
            ..Query::default()
        })
        .unwrap();
    let copied: BTreeSet<String> = request_ids(&audit, Tier::Security).into_iter().collect();
    let mut lost = Vec::new();
    for r in api.iter().filter(|r| acked.contains(&r.seq)) {
        let id = r.event.request_id.clone().unwrap_or_default();
        if !copied.contains(&id) {
            lost.push(id);
        }
    }
    assert_eq!(
        api.iter().filter(|r| acked.contains(&r.seq)).count(),
        acked.len()
    );
    assert!(
        lost.is_empty(),
        "acknowledged denials without a copy: {:?}",
        &lost[..lost.len().min(5)]
    );
    // each denial once in security
    assert_eq!(copied.len(), request_ids(&audit, Tier::Security).len());
    drop(audit);
    t.verify().unwrap();
}

/// The first record of a tier's copy mark (`<to>/copies-from-<from>`:
/// from_seq, to_seq, little-endian, then a CRC).
fn mark_from_seq(dir: &Path) -> u64 {
    let b = fs::read(dir.join("security").join("copies-from-api-access")).unwrap();
    u64::from_le_bytes(b[..8].try_into().unwrap())
}

#[test]
fn the_copy_mark_passes_records_without_copies_but_never_a_copy_on_its_way() {
    let many = |audit: &Audit, n: usize| {
        let futures: Vec<_> = (0..n)
            .map(|_| audit.record_async(event(Tier::ApiAccess, "u", "edge.get", Outcome::Allowed)))
            .collect();
        for f in futures {
            block_on(f).unwrap();
        }
    };
    // A copy that waits an hour: thousands of records later the mark has
    // not passed it, and a crash then loses none.
    let t = TestLog::new();
    let audit = t.open_with(with_copies(&t, Duration::from_secs(3600)));
    audit
        .record_with_copy(&denial("r-0", &[]), Tier::Security)
        .unwrap();
    many(&audit, 5000);
    assert_eq!(mark_from_seq(&t.dir), 0);
    let crashed = t._tmp.path().join("crashed");
    snapshot(&t.dir, &crashed);
    drop(audit);
    let mut o = with_copies(&t, Duration::from_secs(3600));
    o.dir = crashed.clone();
    o.checkpoint_dir = None;
    let (audit, report) = Audit::open(o, keys(), t.clock.clone()).unwrap();
    assert_eq!(
        report.copies_restored,
        vec![(Tier::ApiAccess, Tier::Security, 1)]
    );
    drop(audit);

    // Once the copy is durable, the mark moves past the records after it.
    let t = TestLog::new();
    let audit = t.open_with(with_copies(&t, Duration::from_millis(10)));
    audit
        .record_with_copy(&denial("r-0", &[]), Tier::Security)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while mark_from_seq(&t.dir) < 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(mark_from_seq(&t.dir), 1);
    many(&audit, 5000);
    assert!(mark_from_seq(&t.dir) > 4096, "{}", mark_from_seq(&t.dir));
    drop(audit);
    t.verify().unwrap();
}
