//! Runs the audit benchmark:
//! `cargo run --release --example bench_audit [DIR [SYNC_THREADS [WRITERS [tasks]]]]`,
//! where WRITERS is a comma-separated list of writer counts (default
//! `1,8,64`) and `tasks` runs the writer tasks only (no baseline, writer
//! threads or verify), for quick A/B runs.
use rampart_audit::bench::{run_bench, BenchOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = match std::env::args().nth(1) {
        Some(d) => std::path::PathBuf::from(d),
        None => std::env::temp_dir().join("rampart-audit-bench"),
    };
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut options = BenchOptions::default();
    if let Some(n) = std::env::args().nth(2) {
        options.sync_threads = n.parse()?;
    }
    if let Some(list) = std::env::args().nth(3) {
        options.writers = list
            .split(',')
            .map(|w| w.trim().parse())
            .collect::<Result<_, _>>()?;
    }
    if std::env::args().nth(4).as_deref() == Some("tasks") {
        options.tasks_only = true;
    }
    let report = run_bench(&dir, options)?;
    println!("{report}");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
