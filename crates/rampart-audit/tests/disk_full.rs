//! A real full filesystem, not an injected fault: the log runs on a small
//! tmpfs until the disk is full. `record` must fail, and after the disk grows
//! and the log reopens, every acknowledged record is there, no refused or
//! partial record is, and `verify` passes. Needs root (to mount tmpfs); skipped
//! with a SKIP line otherwise.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use rampart_audit::{verify, Actor, Audit, AuditKeys, AuditOptions, Event, Outcome, Query, Tier};
use rampart_core::ManualClock;

fn keys() -> AuditKeys {
    AuditKeys {
        encryption_key: zeroize::Zeroizing::new([3u8; 32]),
        signing_key: ed25519_dalek::SigningKey::from_bytes(&[4u8; 32]),
    }
}

fn mount(dir: &Path, size: &str) -> bool {
    Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

struct Unmount<'a>(&'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

#[test]
fn a_full_filesystem_refuses_records_and_loses_no_acknowledged_one() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    if !mount(&mnt, "192k") {
        eprintln!("SKIP: cannot mount a tmpfs here (needs root)");
        return;
    }
    let _guard = Unmount(&mnt);
    let dir = mnt.join("audit");
    let clock = Arc::new(ManualClock::at_unix_secs(1_795_000_000));
    let options = || {
        let mut o = AuditOptions::new(&dir);
        o.preallocate_bytes = 0;
        o.checkpoint_every_records = 50;
        o
    };
    let (audit, _) = Audit::open(options(), keys(), clock.clone()).unwrap();

    let mut acknowledged = Vec::new();
    let mut refused = None;
    for i in 0..100_000u64 {
        let mut e = Event::new(
            Tier::Security,
            Actor::new(format!("user-{i}"), "mtls"),
            "secrets.read",
            "secret/db",
            Outcome::Allowed,
        );
        e.reason = Some("x".repeat(200));
        match audit.record(e) {
            Ok(r) => acknowledged.push(r.seq),
            Err(err) => {
                refused = Some(err);
                break;
            }
        }
    }
    let err = refused.expect("a 192 KiB disk must fill up");
    assert!(!acknowledged.is_empty());
    eprintln!("disk full after {} records: {err}", acknowledged.len());
    // Still full: a record as large as the refused one is still refused.
    let mut e = Event::new(
        Tier::Security,
        Actor::new("mallory", "mtls"),
        "secrets.read",
        "secret/db",
        Outcome::Allowed,
    );
    e.reason = Some("x".repeat(200));
    assert!(audit.record(e).is_err());
    drop(audit);

    // Give the disk room, reopen: exactly the acknowledged records, verify passes.
    assert!(Command::new("mount")
        .args(["-o", "remount,size=4m"])
        .arg(&mnt)
        .status()
        .unwrap()
        .success());
    let (audit, _) = Audit::open(options(), keys(), clock).unwrap();
    let found = audit.search(&Query::default()).unwrap();
    let seqs: Vec<u64> = found.iter().map(|r| r.seq).collect();
    assert_eq!(
        seqs, acknowledged,
        "every acknowledged record, and nothing else"
    );
    assert!(found.iter().all(|r| r.event.actor.principal != "mallory"));
    audit.close().unwrap();
    drop(audit);
    verify(&dir, &keys().verifying_key(), None).unwrap();
}
