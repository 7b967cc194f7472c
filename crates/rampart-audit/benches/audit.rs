//! Criterion benches for the hot paths, plus the end-to-end durable-append
//! benchmark (`rampart bench audit`) run once with its own report.

use criterion::{criterion_group, Criterion, Throughput};
use rampart_audit::bench::{run_bench, BenchOptions};
use rampart_audit::merkle::{leaf_hash, Frontier};

fn merkle(c: &mut Criterion) {
    let body = vec![0x5Au8; 380];
    let mut g = c.benchmark_group("merkle");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("leaf_hash_380B_and_push", |b| {
        let mut f = Frontier::new();
        b.iter(|| f.push(leaf_hash(&body)));
    });
    g.finish();
}

criterion_group!(benches, merkle);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    let dir = std::env::temp_dir().join("rampart-audit-criterion-bench");
    let _ = std::fs::remove_dir_all(&dir);
    match run_bench(&dir, BenchOptions::default()) {
        Ok(report) => println!("{report}"),
        Err(e) => eprintln!("audit bench failed: {e}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
