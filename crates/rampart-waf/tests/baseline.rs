//! The built-in baseline rule set: it loads, refuses the classic attacks
//! wherever they hide, and lets ordinary traffic through.

use rampart_waf::{Action, Request, Verdict, Waf, BASELINE_RULES};
use std::sync::OnceLock;

fn waf() -> &'static Waf {
    static W: OnceLock<Waf> = OnceLock::new();
    W.get_or_init(|| Waf::from_str_named("baseline.conf", BASELINE_RULES).unwrap())
}

fn get(uri: &str) -> Verdict {
    waf().evaluate(&Request::new("GET", uri).header("Host", "example.com"))
}

fn post(uri: &str, ctype: &str, body: &str) -> Verdict {
    waf().evaluate(
        &Request::new("POST", uri)
            .header("Host", "example.com")
            .header("Content-Type", ctype)
            .body(body),
    )
}

const DENY: Action = Action::Deny { status: 403 };

#[test]
fn loads_without_warnings() {
    assert!(waf().rule_count() >= 6);
    assert!(waf().warnings().is_empty(), "{:?}", waf().warnings());
}

#[test]
fn ordinary_traffic_passes() {
    for uri in [
        "/",
        "/index.html?q=hello+world&page=2",
        "/products?category=books&sort=price&order=asc",
        "/search?q=union+station+opening+hours",
        "/search?q=select+a+chair+from+our+shop",
        "/blog/2024/05/hello-world?utm_source=news&utm_medium=email",
        "/static/app.js?v=1.2.3",
        "/docs/a.b/c..d/readme",
        "/account/orders?from=2024-01-01&to=2024-12-31",
        "/q?email=alice%40example.com&name=O%27Brien",
    ] {
        let v = get(uri);
        assert_eq!(v.action, Action::Pass, "{uri}: {:?}", v.matched_ids);
    }
    for (ctype, body) in [
        (
            "application/x-www-form-urlencoded",
            "user=alice&password=s3cret%21ok",
        ),
        (
            "application/json",
            r#"{"name":"chair","qty":2,"tags":["a","b"],"note":"it's great"}"#,
        ),
        (
            "application/x-www-form-urlencoded",
            "text=Nice+article%2C+thanks%21&name=Bob",
        ),
    ] {
        let v = post("/api/items", ctype, body);
        assert_eq!(v.action, Action::Pass, "{body}: {:?}", v.matched_ids);
    }
}

#[test]
fn classic_attacks_are_refused_where_they_hide() {
    let cases = [
        (get("/?id=1%27%20OR%201=1--"), 1000100),
        (
            get("/item?id=-1%20UNION%20SELECT%20username,password%20FROM%20users"),
            1000100,
        ),
        (get("/?q=%3Cscript%3Ealert(1)%3C/script%3E"), 1000200),
        (get("/?file=../../../../etc/passwd"), 1000300),
        (get("/?file=..%2F..%2Fetc%2Fpasswd"), 1000300),
        (get("/?name=a%00b"), 1000020),
        (
            post(
                "/comment",
                "application/x-www-form-urlencoded",
                "text=%3Cimg%20src=x%20onerror=alert(1)%3E",
            ),
            1000200,
        ),
        (
            post("/api", "application/json", r#"{"q":"1' or '1'='1"}"#),
            1000100,
        ),
        (
            post(
                "/api",
                "application/json",
                r#"{"a":{"b":["<svg onload=alert(1)>"]}}"#,
            ),
            1000200,
        ),
    ];
    for (i, (v, rule)) in cases.iter().enumerate() {
        assert_eq!(v.action, DENY, "case {i}: {:?}", v.matched_ids);
        assert_eq!(v.disrupted_by, Some(*rule), "case {i}: {:?}", v.matched_ids);
        assert!(!v.matched_rules.is_empty(), "case {i}");
    }
    // In a cookie and in the User-Agent header.
    let v = waf().evaluate(
        &Request::new("GET", "/")
            .header("Host", "example.com")
            .header("Cookie", "session=1' UNION SELECT password FROM users--"),
    );
    assert_eq!(v.disrupted_by, Some(1000100), "{:?}", v.matched_ids);
    let v = waf().evaluate(
        &Request::new("GET", "/")
            .header("Host", "example.com")
            .header("User-Agent", "<script>alert(1)</script>"),
    );
    assert_eq!(v.disrupted_by, Some(1000200), "{:?}", v.matched_ids);
}

#[test]
fn a_body_that_does_not_parse_is_refused() {
    let v = post("/api", "application/json", r#"{"q": "#);
    assert_eq!(
        v.action,
        Action::Deny { status: 400 },
        "{:?}",
        v.matched_ids
    );
    assert_eq!(v.disrupted_by, Some(1000010));
}
