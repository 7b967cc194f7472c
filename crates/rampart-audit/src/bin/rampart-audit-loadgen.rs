//! Test support for the crash test: appends from many threads and prints
//! `<seq>` for every receipt as soon as it is acknowledged, until killed.
//!
//! Usage: `rampart-audit-loadgen DIR CHECKPOINT_DIR THREADS [copies]`. Keys
//! are fixed test keys (see `test_keys`), so the test can reopen the log.
//! With `copies`, each record goes to api-access with a derived copy in
//! security that waits an hour to be written (so a kill leaves them out);
//! the receipts printed are api-access's.
#![forbid(unsafe_code)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use rampart_audit::{Actor, Audit, AuditKeys, AuditOptions, Event, EventRef, Outcome, Tier};
use rampart_core::SystemClock;

/// The fixed keys the crash test uses.
fn test_keys() -> AuditKeys {
    AuditKeys {
        encryption_key: zeroize::Zeroizing::new([7u8; 32]),
        signing_key: ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(copy), Some(threads)) = (args.get(1), args.get(2), args.get(3)) else {
        return Err("usage: rampart-audit-loadgen DIR CHECKPOINT_DIR THREADS".into());
    };
    let threads: usize = threads.parse()?;
    let copies = args.get(4).is_some_and(|a| a == "copies");
    let mut options = AuditOptions::new(dir);
    options.copies = vec![(Tier::ApiAccess, Tier::Security)];
    options.copy_delay = std::time::Duration::from_secs(3600);
    options.checkpoint_dir = Some(copy.into());
    options.checkpoint_every_records = 500;
    options.segment_max_bytes = 256 * 1024;
    options.preallocate_bytes = 64 * 1024;
    let (audit, _) = Audit::open(options, test_keys(), SystemClock::shared())?;
    let audit = Arc::new(audit);
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let audit = Arc::clone(&audit);
            let out = Arc::clone(&out);
            std::thread::spawn(move || {
                let who = format!("loadgen-{t}");
                for i in 0u64.. {
                    let resource = format!("item/{i}");
                    let id = format!("{t}-{i}");
                    let r = if copies {
                        let ev = EventRef {
                            tier: Tier::ApiAccess,
                            node: "",
                            environment: "",
                            principal: &who,
                            auth: "test",
                            action: "load.append",
                            resource: &resource,
                            outcome: Outcome::Denied,
                            reason: Some("loadgen"),
                            request_id: Some(&id),
                            source: None,
                            details: &[],
                        };
                        audit.record_with_copy(&ev, Tier::Security)
                    } else {
                        let mut e = Event::new(
                            Tier::Security,
                            Actor::new(who.clone(), "test"),
                            "load.append",
                            resource,
                            Outcome::Allowed,
                        );
                        e.request_id = Some(id);
                        audit.record(e)
                    };
                    match r {
                        Ok(r) => {
                            let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
                            let _ = writeln!(o, "{}", r.seq);
                            let _ = o.flush();
                        }
                        Err(e) => {
                            eprintln!("record failed: {e}");
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}
