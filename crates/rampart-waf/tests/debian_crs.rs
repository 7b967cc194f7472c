//! Debian's OWASP CRS 3.3.4 (`modsecurity-crs`): loads unmodified, in the
//! order Debian's `owasp-crs.load` gives, blocks the classic attacks and
//! passes benign requests at paranoia level 1. Ignored by default because it
//! needs the package: `scripts/debian-crs` installs it and runs this.
//! `RAMPART_DEBIAN_CRS_SETUP` and `RAMPART_DEBIAN_CRS_RULES` override the
//! paths.

use rampart_waf::{Request, Waf, WafBuilder};
use std::path::PathBuf;

fn path(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from)
}

fn load() -> Waf {
    let setup = path(
        "RAMPART_DEBIAN_CRS_SETUP",
        "/etc/modsecurity/crs/crs-setup.conf",
    );
    let rules = path(
        "RAMPART_DEBIAN_CRS_RULES",
        "/usr/share/modsecurity-crs/rules",
    );
    let mut b = WafBuilder::new();
    // What ModSecurity's recommended configuration sets before CRS.
    b.load_str(
        setup.with_file_name("rampart-modsecurity.conf"),
        r#"
SecRuleEngine On
SecRequestBodyAccess On
SecRule REQUEST_HEADERS:Content-Type "@rx (?:application(?:/soap\+|/)|text/)xml" "id:200000,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=XML"
SecRule REQUEST_HEADERS:Content-Type "@rx ^application/json" "id:200001,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=JSON"
"#,
    )
    .unwrap();
    b.load_file(&setup).unwrap_or_else(|e| panic!("{e}"));
    let mut files: Vec<_> = std::fs::read_dir(&rules)
        .unwrap_or_else(|e| panic!("{}: {e}", rules.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "conf"))
        .collect();
    files.sort();
    let before = setup.with_file_name("REQUEST-900-EXCLUSION-RULES-BEFORE-CRS.conf");
    let after = setup.with_file_name("RESPONSE-999-EXCLUSION-RULES-AFTER-CRS.conf");
    for f in std::iter::once(&before)
        .filter(|p| p.is_file())
        .chain(&files)
        .chain(std::iter::once(&after).filter(|p| p.is_file()))
    {
        b.load_file(f).unwrap_or_else(|e| panic!("{e}"));
    }
    b.build().unwrap_or_else(|e| panic!("{e}"))
}

fn browser(r: Request) -> Request {
    r.header("Host", "example.com")
        .header(
            "User-Agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        )
        .header("Accept", "text/html,application/xhtml+xml")
        .header("Accept-Language", "en-GB,en;q=0.8")
}

#[test]
#[ignore = "needs Debian's modsecurity-crs: scripts/debian-crs"]
fn debian_crs_3_3_4_blocks_classic_attacks() {
    let waf = load();
    let (fast, fancy) = waf.regex_engine_counts();
    println!(
        "CRS 3.3.4: {} rules; @rx on regex: {fast}, on fancy-regex: {fancy}",
        waf.rule_count()
    );
    for w in waf.warnings() {
        println!("warning: {w}");
    }
    assert!(waf.rule_count() > 400);

    let benign = [
        browser(Request::new("GET", "/")),
        browser(Request::new("GET", "/index.html?q=hello+world&page=2")),
        browser(Request::new("GET", "/search?q=union+station+opening+hours")),
        browser(Request::new("POST", "/login"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("Content-Length", "31")
            .body("user=alice&password=s3cret%21ok"),
        browser(Request::new("POST", "/api/items"))
            .header("Content-Type", "application/json")
            .header("Content-Length", "36")
            .body(r#"{"name":"chair","tags":["a","b"]}  "#),
    ];
    for r in &benign {
        let v = waf.evaluate(r);
        assert!(
            v.is_pass(),
            "benign {} {} blocked: {:?}",
            r.method,
            r.uri,
            v.matched_ids
        );
    }

    let attacks = [
        (
            "SQLi",
            browser(Request::new("GET", "/?id=1%27%20OR%201=1--")),
        ),
        (
            "SQLi union",
            browser(Request::new(
                "GET",
                "/item?id=-1%20UNION%20SELECT%20username,password%20FROM%20users",
            )),
        ),
        (
            "XSS",
            browser(Request::new("GET", "/?q=%3Cscript%3Ealert(1)%3C/script%3E")),
        ),
        (
            "XSS body",
            browser(Request::new("POST", "/comment"))
                .header("Content-Type", "application/x-www-form-urlencoded")
                .header("Content-Length", "41")
                .body("text=%3Cimg%20src=x%20onerror=alert(1)%3E"),
        ),
        (
            "path traversal",
            browser(Request::new("GET", "/?file=../../../../etc/passwd")),
        ),
        (
            "RCE",
            browser(Request::new("GET", "/?cmd=;cat%20/etc/passwd")),
        ),
        (
            "scanner UA",
            Request::new("GET", "/")
                .header("Host", "example.com")
                .header("User-Agent", "sqlmap/1.7.2#stable (https://sqlmap.org)")
                .header("Accept", "*/*"),
        ),
    ];
    for (what, r) in &attacks {
        let v = waf.evaluate(r);
        let logged: Vec<u64> = v.matched_rules.iter().map(|m| m.id).collect();
        println!(
            "{what}: {:?}, score {}, logged rules {logged:?}",
            v.action, v.anomaly_score
        );
        assert!(
            !v.is_pass(),
            "{what} ({}) passed: {:?}",
            r.uri,
            v.matched_ids
        );
    }
}
