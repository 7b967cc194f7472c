//! `rampart audit …` and `rampart bench audit`: offline work on the audit
//! log of a data directory. Reading needs the root key (the log's keys are
//! wrapped by it); nothing here writes to the log.

use std::io::Write;
use std::path::Path;

use rampart_audit::{
    parse_rfc3339, verify, verify_proof, AuditReader, InclusionProof, Query, Tier,
};
use rampart_core::SystemClock;

use crate::cli::{AuditCommand, AuditFilter, DataArgs};
use crate::errors::CliError;
use crate::{node, planes};

async fn open(data: &DataArgs) -> Result<(std::path::PathBuf, rampart_audit::AuditKeys), CliError> {
    let config = data
        .config
        .as_deref()
        .map(rampart_config::Config::load)
        .transpose()
        .map_err(CliError::Config)?;
    let dir = node::data_dir(data, config.as_ref());
    let n = node::open(&dir, data, config.as_ref(), SystemClock::shared()).await?;
    let keys = planes::audit_keys(&n.keyring).await?;
    Ok((dir, keys))
}

fn query(f: &AuditFilter) -> Result<Query, CliError> {
    let bad = |flag: &str, e: &dyn std::fmt::Display| CliError::Input(format!("--{flag}: {e}"));
    let time = |flag: &str, v: &Option<String>| {
        v.as_deref()
            .map(parse_rfc3339)
            .transpose()
            .map_err(|e| bad(flag, &e))
    };
    let q = Query {
        tier: f
            .tier
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e| bad("tier", &e))?,
        actor: f.actor.clone(),
        action: f.action.clone(),
        outcome: f
            .outcome
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e| bad("outcome", &e))?,
        from: time("from", &f.from)?,
        to: time("to", &f.to)?,
        limit: f.limit,
        newest_first: false,
    };
    q.validate().map_err(|e| bad("from/--to", &e))?;
    Ok(q)
}

fn audit_err(e: rampart_audit::AuditError) -> CliError {
    CliError::Runtime(e.to_string())
}

pub async fn run(cmd: AuditCommand) -> Result<(), CliError> {
    match cmd {
        AuditCommand::Verify {
            data,
            checkpoint_dir,
        } => {
            let (dir, keys) = open(&data).await?;
            let vk = keys.verifying_key();
            let audit_dir = dir.join(planes::AUDIT_DIR);
            match verify(&audit_dir, &vk, checkpoint_dir.as_deref()) {
                Ok(report) => {
                    println!("{report}");
                    // Derived copies (a denial's in the security tier) are
                    // checked with the encryption key: their marks are
                    // inside the encrypted records.
                    let reader = AuditReader::new(&audit_dir, keys.encryption_key.clone());
                    let mut lost = 0;
                    for (from, to) in reader.copy_pairs() {
                        let check = reader.check_copies(from, to).map_err(|e| {
                            CliError::Verify(format!("audit log verification failed: {e}"))
                        })?;
                        println!("{check}");
                        lost += check.lost.len();
                    }
                    if lost > 0 {
                        return Err(CliError::Verify(format!(
                            "audit log verification failed: {lost} derived copies lost"
                        )));
                    }
                    println!("ok");
                    Ok(())
                }
                Err(rampart_audit::AuditError::VerifyFailed(f)) => Err(CliError::Verify(format!(
                    "audit log verification failed:\n{}",
                    f.report
                ))),
                Err(e) => Err(CliError::Verify(format!(
                    "audit log verification failed: {e}"
                ))),
            }
        }
        AuditCommand::Search { data, filter } => {
            let q = query(&filter)?;
            let (dir, keys) = open(&data).await?;
            let reader = AuditReader::new(dir.join(planes::AUDIT_DIR), keys.encryption_key.clone());
            for r in reader.search(&q).map_err(audit_err)? {
                println!(
                    "{}",
                    serde_json::to_string(&r).map_err(|e| CliError::Runtime(e.to_string()))?
                );
            }
            Ok(())
        }
        AuditCommand::Export {
            data,
            filter,
            format: _,
            out,
        } => {
            let q = query(&filter)?;
            let (dir, keys) = open(&data).await?;
            let reader = AuditReader::new(dir.join(planes::AUDIT_DIR), keys.encryption_key.clone());
            let n = match out {
                Some(path) => {
                    let mut f = std::fs::File::create(&path)
                        .map_err(|e| CliError::Input(format!("{}: {e}", path.display())))?;
                    let n = reader.export_jsonl(&mut f, &q).map_err(audit_err)?;
                    f.flush().map_err(|e| CliError::Runtime(e.to_string()))?;
                    n
                }
                None => reader
                    .export_jsonl(&mut std::io::stdout().lock(), &q)
                    .map_err(audit_err)?,
            };
            eprintln!("exported {n} events");
            Ok(())
        }
        AuditCommand::Prove { data, tier, seq } => {
            let tier: Tier = tier
                .parse()
                .map_err(|e| CliError::Input(format!("--tier: {e}")))?;
            let (dir, keys) = open(&data).await?;
            let reader = AuditReader::new(dir.join(planes::AUDIT_DIR), keys.encryption_key.clone());
            let proof = reader
                .prove(tier, seq, &keys.verifying_key())
                .map_err(|e| CliError::Input(e.to_string()))?;
            println!(
                "{}",
                serde_json::to_string_pretty(&proof)
                    .map_err(|e| CliError::Runtime(e.to_string()))?
            );
            Ok(())
        }
        AuditCommand::VerifyProof { data, file } => {
            let text = read_small(&file)?;
            let proof: InclusionProof = serde_json::from_str(&text).map_err(|e| {
                CliError::Input(format!("{}: not an inclusion proof: {e}", file.display()))
            })?;
            let (_, keys) = open(&data).await?;
            verify_proof(&proof, &keys.verifying_key())
                .map_err(|e| CliError::Verify(format!("proof rejected: {e}")))?;
            println!("ok");
            Ok(())
        }
    }
}

fn read_small(path: &Path) -> Result<String, CliError> {
    let meta =
        std::fs::metadata(path).map_err(|e| CliError::Input(format!("{}: {e}", path.display())))?;
    if meta.len() > 16 * 1024 * 1024 {
        return Err(CliError::Input(format!(
            "{}: file too large",
            path.display()
        )));
    }
    std::fs::read_to_string(path).map_err(|e| CliError::Input(format!("{}: {e}", path.display())))
}

/// `rampart bench audit`.
pub fn bench(dir: Option<&Path>) -> Result<(), CliError> {
    // Always a fresh directory (inside `--dir` when given, so on the disk
    // to measure), removed afterwards: a run that found an earlier run's
    // logs would append to them under new keys, and measure and verify
    // something else.
    let tmp = match dir {
        Some(d) => {
            std::fs::create_dir_all(d)
                .map_err(|e| CliError::Input(format!("{}: {e}", d.display())))?;
            tempfile::tempdir_in(d)
        }
        None => tempfile::tempdir(),
    }
    .map_err(|e| CliError::Runtime(format!("scratch directory: {e}")))?;
    let report =
        rampart_audit::bench::run_bench(tmp.path(), rampart_audit::bench::BenchOptions::default())
            .map_err(audit_err)?;
    println!("{report}");
    Ok(())
}
