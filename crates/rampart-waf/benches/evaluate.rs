//! Engine-only throughput of `Waf::evaluate` with the full OWASP CRS, on a
//! benign and an attack request, next to a baseline measured in the same run:
//! the same requests through an engine with no rules (parsing and variable
//! set-up only).
//!
//! `RAMPART_CRS_DIR=/path/to/crs cargo bench -p rampart-waf --bench evaluate`
//! (`RAMPART_CRS_PL=2` for paranoia level 2). Prints nothing but a notice
//! when `RAMPART_CRS_DIR` is unset.

use rampart_waf::{Request, Waf, WafBuilder};
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

/// The allocator the `rampart` binary ships with, as in `examples/bench_waf`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn crs(dir: &Path, paranoia: u8) -> Waf {
    let mut b = WafBuilder::new();
    let setup = format!(
        "SecRuleEngine On\nSecRequestBodyAccess On\n\
         SecAction \"id:900000,phase:1,pass,nolog,setvar:tx.blocking_paranoia_level={paranoia}\"\n"
    );
    b.load_str(dir.join("rules/rampart-bench-setup.conf"), &setup)
        .and_then(|b| b.load_file(dir.join("crs-setup.conf.example")))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut rules: Vec<_> = std::fs::read_dir(dir.join("rules"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "conf"))
        .collect();
    rules.sort();
    for r in rules {
        b.load_file(&r).unwrap_or_else(|e| panic!("{e}"));
    }
    b.build().unwrap_or_else(|e| panic!("{e}"))
}

fn benign() -> Request<'static> {
    Request::new("POST", "/shop/cart/update?lang=en&currency=EUR")
        .header("Host", "shop.example.com")
        .header(
            "User-Agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        )
        .header("Accept", "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8")
        .header("Accept-Language", "en-GB,en;q=0.5")
        .header("Cookie", "session=6f1c2a9e0b; theme=dark")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("Content-Length", "52")
        .body("item=4711&quantity=2&note=Gift+wrap+please&coupon=")
}

fn attack() -> Request<'static> {
    Request::new(
        "GET",
        "/search?q=1%27+UNION+SELECT+username,password+FROM+users--&next=%3Cscript%3Ealert(1)%3C/script%3E",
    )
    .header("Host", "shop.example.com")
    .header("User-Agent", "sqlmap/1.8")
    .header("Accept", "*/*")
}

/// Requests per second over at least `min` of wall time.
fn rate(waf: &Waf, req: &Request, min: Duration) -> f64 {
    for _ in 0..50 {
        black_box(waf.evaluate(black_box(req)));
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < min {
        for _ in 0..100 {
            black_box(waf.evaluate(black_box(req)));
        }
        n += 100;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let Some(dir) = std::env::var_os("RAMPART_CRS_DIR") else {
        eprintln!("evaluate bench skipped: set RAMPART_CRS_DIR to a CRS checkout");
        return;
    };
    let paranoia = std::env::var("RAMPART_CRS_PL")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(1u8);
    let waf = crs(Path::new(&dir), paranoia);
    let empty = Waf::from_str_named("empty.conf", "SecRuleEngine On\nSecRequestBodyAccess On\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let (b, a) = (benign(), attack());
    let v = waf.evaluate(&a);
    assert!(!v.is_pass(), "the attack request must be blocked: {v:?}");
    assert!(waf.evaluate(&b).is_pass(), "the benign request must pass");
    let min = Duration::from_secs(3);
    println!(
        "CRS paranoia level {paranoia}, one thread, {} rules matched on the attack",
        v.matched_ids.len()
    );
    for (name, req) in [("benign", &b), ("attack", &a)] {
        let base = rate(&empty, req, min);
        let crs = rate(&waf, req, min);
        println!(
            "{name:>6}: {crs:>10.0} req/s with CRS; baseline (no rules) {base:>10.0} req/s; ratio {:.3}",
            crs / base
        );
    }
}
