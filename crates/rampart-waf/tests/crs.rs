//! Loads the real OWASP CRS when `RAMPART_CRS_DIR` names a copy; skipped
//! otherwise, since project tests must not depend on files outside the
//! repository. `scripts/crs-regression PATH` runs the whole suite.

use rampart_waf::{Request, Waf, WafBuilder};
use std::path::PathBuf;

fn crs_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("RAMPART_CRS_DIR")?);
    dir.join("rules").is_dir().then_some(dir)
}

fn load(dir: &std::path::Path, extra: &str) -> Waf {
    let mut b = WafBuilder::new();
    b.load_file(dir.join("crs-setup.conf.example")).unwrap();
    if !extra.is_empty() {
        b.load_str(dir.join("rules/extra.conf"), extra).unwrap();
    }
    let mut files: Vec<_> = std::fs::read_dir(dir.join("rules"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "conf"))
        .collect();
    files.sort();
    for f in files {
        b.load_file(&f).unwrap_or_else(|e| panic!("{e}"));
    }
    b.build().unwrap()
}

#[test]
fn crs_loads_and_blocks_classic_attacks() {
    let Some(dir) = crs_dir() else {
        eprintln!("skipped: no CRS found (set RAMPART_CRS_DIR)");
        return;
    };
    let waf = load(&dir, "SecRuleEngine On\n");
    let (fast, fancy) = waf.regex_engine_counts();
    eprintln!(
        "CRS rules loaded: {}; @rx on regex crate: {fast}, on fancy-regex: {fancy}",
        waf.rule_count()
    );
    for w in waf.warnings() {
        eprintln!("warning: {w}");
    }
    assert!(waf.rule_count() > 500);

    let benign = Request::new("GET", "/index.html?q=hello+world")
        .header("Host", "example.com")
        .header("User-Agent", "Mozilla/5.0")
        .header("Accept", "text/html");
    let v = waf.evaluate(&benign);
    assert!(v.is_pass(), "benign request blocked: {:?}", v.matched_rules);

    for uri in [
        "/?id=1%27%20OR%201=1--",
        "/?q=%3Cscript%3Ealert(1)%3C/script%3E",
        "/?file=../../../../etc/passwd",
        "/?cmd=;cat%20/etc/passwd",
    ] {
        let req = Request::new("GET", uri)
            .header("Host", "example.com")
            .header("User-Agent", "Mozilla/5.0")
            .header("Accept", "text/html");
        let v = waf.evaluate(&req);
        assert!(!v.is_pass(), "{uri} passed: {:?}", v.matched_ids);
        eprintln!("{uri}: score {} ids {:?}", v.anomaly_score, v.matched_ids);
    }
}
