//! End-to-end scenarios on the miniature rule set in `tests/fixtures/mini`.

use rampart_waf::{Action, Error, Request, Verdict, Waf};
use std::path::PathBuf;
use std::sync::OnceLock;

fn fixture(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(p)
}

fn waf() -> &'static Waf {
    static W: OnceLock<Waf> = OnceLock::new();
    W.get_or_init(|| Waf::from_file(fixture("mini/main.conf")).unwrap())
}

fn get(uri: &str) -> Verdict {
    waf().evaluate(&Request::new("GET", uri).header("Host", "example.com"))
}

fn post(uri: &str, ctype: Option<&str>, body: &str) -> Verdict {
    let mut r = Request::new("POST", uri)
        .header("Host", "example.com")
        .body(body);
    if let Some(c) = ctype {
        r = r.header("Content-Type", c);
    }
    waf().evaluate(&r)
}

const DENY: Action = Action::Deny { status: 403 };

#[test]
fn loads_with_include_glob_and_warns_about_ignored_directives() {
    let w = waf();
    assert_eq!(w.rule_count(), 12);
    assert!(
        w.warnings()
            .iter()
            .any(|m| m.contains("SecAuditEngine (1)")),
        "{:?}",
        w.warnings()
    );
}

#[test]
fn benign_request_passes() {
    let v = get("/search?q=union+station&page=2");
    assert_eq!(v.action, Action::Pass);
    assert!(v.matched_rules.is_empty(), "{:?}", v.matched_rules);
    assert_eq!(v.anomaly_score, 0);
}

#[test]
fn sqli_is_blocked_by_anomaly_score_with_details() {
    let v = get("/search?q=1%27%20UNION%20SELECT%20password");
    assert_eq!(v.action, DENY);
    assert_eq!(v.disrupted_by, Some(949110));
    assert_eq!(v.anomaly_score, 5);
    let m = v.matched_rules.iter().find(|m| m.id == 942100).unwrap();
    assert_eq!(m.msg, "SQL Injection Attack");
    assert_eq!(
        m.data,
        "Matched Data: union select found within ARGS:q: 1' union select password"
    );
    assert_eq!(m.severity, Some(2));
    assert_eq!(&*m.tags, ["attack-sqli"]);
    let last = v.matched_rules.last().unwrap();
    assert_eq!(last.msg, "Inbound Anomaly Score Exceeded (Total Score: 5)");
}

#[test]
fn xss_in_urlencoded_body_is_blocked() {
    let v = post(
        "/comment",
        Some("application/x-www-form-urlencoded"),
        "text=%3CScRiPt%3Ealert(1)",
    );
    assert_eq!(v.action, DENY);
    assert!(v.matched_ids.contains(&941100));
}

#[test]
fn xss_in_argument_name_and_entity_encoded() {
    let v = get("/?%3Cscript%3E=1");
    assert!(v.matched_ids.contains(&941100));
    let v = get("/?a=%26lt;script%26gt;");
    assert!(v.matched_ids.contains(&941100));
}

#[test]
fn exclusion_in_variable_list_skips_the_cookie() {
    let req = |cookie: &str| {
        Request::new("GET", "/")
            .header("Host", "example.com")
            .header("Cookie", cookie)
    };
    assert!(waf().evaluate(&req("session=1' or '1'='1")).is_pass());
    assert!(!waf().evaluate(&req("other=1' or '1'='1")).is_pass());
}

#[test]
fn ctl_rule_remove_target_by_id() {
    assert!(post(
        "/login",
        Some("application/x-www-form-urlencoded"),
        "user=bob&password=x' or 1=1"
    )
    .is_pass());
    let v = post(
        "/login",
        Some("application/x-www-form-urlencoded"),
        "user=x' or 1=1&password=a",
    );
    assert_eq!(v.action, DENY);
    assert!(!post(
        "/other",
        Some("application/x-www-form-urlencoded"),
        "password=x' or 1=1"
    )
    .is_pass());
}

#[test]
fn ctl_rule_remove_by_id() {
    assert!(get("/health?x=%3Cscript%3E").is_pass());
    assert!(!get("/status?x=%3Cscript%3E").is_pass());
}

#[test]
fn skip_after_jumps_to_marker() {
    let req = Request::new("GET", "/?q=1'+or+1=1")
        .header("Host", "example.com")
        .header("X-Trusted-Scanner", "yes");
    let v = waf().evaluate(&req);
    assert!(v.is_pass());
    assert!(!v.matched_ids.contains(&942100));
}

#[test]
fn counting_arguments() {
    assert!(get("/?a=1&b=2&c=3&d=4&e=5").is_pass());
    let v = get("/?a=1&b=2&c=3&d=4&e=5&f=6");
    assert!(v.matched_ids.contains(&920300));
    assert_eq!(v.action, DENY);
}

#[test]
fn negated_within_and_macro_logdata() {
    let v = waf().evaluate(&Request::new("PUT", "/").header("Host", "example.com"));
    let m = v.matched_rules.iter().find(|m| m.id == 911100).unwrap();
    assert_eq!(m.data, "PUT");
    assert_eq!(v.action, DENY);
}

#[test]
fn chain_requires_every_link() {
    // JSON-looking body, no Content-Type: the whole chain matches.
    let v = post("/api", None, "{\"a\":1}");
    assert!(v.matched_ids.contains(&920999), "{:?}", v.matched_ids);
    // Declared content type: last link fails.
    let v = post("/api", Some("text/plain"), "{\"a\":1}");
    assert!(!v.matched_ids.contains(&920999));
    // Not a JSON body: second link fails.
    let v = post("/api", None, "hello");
    assert!(!v.matched_ids.contains(&920999));
}

#[test]
fn pm_from_file_relative_to_rule_file() {
    let v = get("/?f=%2Fetc%2Fpasswd");
    assert!(v.matched_ids.contains(&932100));
}

#[test]
fn detection_only_reports_but_passes() {
    let text = std::fs::read_to_string(fixture("mini/main.conf"))
        .unwrap()
        .replace("SecRuleEngine On", "SecRuleEngine DetectionOnly");
    let w = Waf::from_str_named(fixture("mini/main2.conf"), &text).unwrap();
    let v = w.evaluate(&Request::new("GET", "/?q=1'+or+1=1"));
    assert_eq!(v.action, Action::Pass);
    assert_eq!(v.disrupted_by, Some(949110));
}

#[test]
fn multipart_and_json_bodies() {
    let body =
        "--b\r\nContent-Disposition: form-data; name=\"c\"\r\n\r\n<script>x</script>\r\n--b--\r\n";
    let v = post("/up", Some("multipart/form-data; boundary=b"), body);
    assert!(v.matched_ids.contains(&941100), "{:?}", v.matched_ids);

    let w = Waf::from_str_named(
        "json.conf",
        r#"
SecRule REQUEST_HEADERS:Content-Type "@rx ^application/json" "id:1,phase:1,pass,nolog,ctl:requestBodyProcessor=JSON"
SecRule ARGS:json.user.name "@contains admin" "id:2,phase:2,deny,status:401"
SecRule REQBODY_ERROR "!@eq 0" "id:3,phase:2,deny,status:400"
"#,
    )
    .unwrap();
    let req = |b: &str| {
        Request::new("POST", "/")
            .header("Content-Type", "application/json")
            .body(b)
    };
    assert_eq!(
        w.evaluate(&req(r#"{"user":{"name":"the admin"}}"#)).action,
        Action::Deny { status: 401 }
    );
    assert_eq!(
        w.evaluate(&req(r#"{"user":{"name":"bob"}}"#)).action,
        Action::Pass
    );
    assert_eq!(
        w.evaluate(&req(r#"{"user":"#)).action,
        Action::Deny { status: 400 }
    );
    let deep = "[".repeat(10_000);
    assert_eq!(w.evaluate(&req(&deep)).action, Action::Deny { status: 400 });
}

#[test]
fn parse_error_names_file_and_line() {
    let e = Waf::from_file(fixture("mini/bad.conf")).unwrap_err();
    let loc = e.location().unwrap();
    assert!(loc.file.ends_with("mini/bad.conf"));
    assert_eq!(loc.line, 8);
    assert!(
        matches!(e, Error::Unsupported { kind: "action", ref name, .. } if name == "frobnicate")
    );
    assert!(
        e.to_string()
            .ends_with("bad.conf:8: unsupported action `frobnicate`"),
        "{e}"
    );
}

#[test]
fn errors_in_included_files_and_bad_regex() {
    let e = Waf::from_str_named("x.conf", "\nSecRule ARGS \"@rx (\" \"id:1\"").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("x.conf:2: bad regular expression"),
        "{e}"
    );
    let e = Waf::from_str_named("x.conf", "SecRule ARGS \"@rx a\" \"id:1,chain\"").unwrap_err();
    assert!(e.to_string().contains("chain"), "{e}");
    let e = Waf::from_str_named("x.conf", "SecFoo On").unwrap_err();
    assert_eq!(e.to_string(), "x.conf:1: unsupported directive `SecFoo`");
    let e = Waf::from_str_named("x.conf", "SecRule ARGS \"@frobnicate x\" \"id:1\"").unwrap_err();
    assert!(matches!(
        e,
        Error::Unsupported {
            kind: "operator",
            ..
        }
    ));
}

#[test]
fn setvar_arithmetic_and_delete() {
    let w = Waf::from_str_named(
        "s.conf",
        r#"
SecAction "id:1,phase:1,pass,setvar:tx.n=10,setvar:tx.n=+5,setvar:tx.n=-3,setvar:tx.gone=1,setvar:!tx.gone"
SecRule TX:n "@eq 12" "id:2,phase:1,pass,setvar:tx.anomaly_score=7"
SecRule &TX:gone "@eq 0" "id:3,phase:1,deny,status:418"
"#,
    )
    .unwrap();
    let v = w.evaluate(&Request::new("GET", "/"));
    assert_eq!(v.matched_ids, vec![1, 2, 3]);
    assert_eq!(v.anomaly_score, 7);
    assert_eq!(v.action, Action::Deny { status: 418 });
}

#[test]
fn hostile_inputs_do_not_panic() {
    let nasty: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let mut r = Request::new("POST", "/%00%ff%c0%af?%=%%u12&a=%uZZZZ");
    r.headers.push((
        "Content-Type".into(),
        b"multipart/form-data; boundary=\""[..].into(),
    ));
    r.headers.push(("Cookie".into(), nasty.clone().into()));
    r.body = nasty.into();
    let _ = waf().evaluate(&r);
    let _ = post(
        "/",
        Some("multipart/form-data; boundary=x"),
        "--x\r\n\r\n--x\n--x--garbage",
    );
}

/// Rules in the shape CRS uses for XML bodies (`XML:/*`, `XML://@*`) and the
/// ModSecurity recommended `REQBODY_ERROR` check.
const XML_RULES: &str = r#"
SecRuleEngine On
SecRequestBodyAccess On
SecRule REQUEST_HEADERS:Content-Type "@rx ^(?:application|text)/xml" "id:1,phase:1,pass,nolog,t:lowercase,ctl:requestBodyProcessor=XML"
SecRule REQBODY_ERROR "!@eq 0" "id:2,phase:2,deny,status:400,msg:'%{REQBODY_ERROR_MSG}'"
SecRule XML:/* "@rx <script" "id:10,phase:2,pass,t:lowercase,logdata:'%{MATCHED_VAR_NAME}=%{MATCHED_VAR}'"
SecRule XML://@* "@streq evil" "id:11,phase:2,pass,logdata:'%{MATCHED_VAR_NAME}'"
SecRule REQBODY_PROCESSOR "@streq XML" "id:12,phase:2,pass"
SecRule REQUEST_BODY "@rx ." "id:13,phase:2,pass"
"#;

fn xml(body: &str) -> Verdict {
    let w = Waf::from_str_named("xml.conf", XML_RULES).unwrap();
    w.evaluate(
        &Request::new("POST", "/soap")
            .header("Content-Type", "application/xml")
            .body(body),
    )
}

#[test]
fn xml_body_text_and_attributes() {
    let v =
        xml(r#"<?xml version="1.0"?><a k="evil"><b>&lt;SCRIPT&gt;x</b><c><![CDATA[ok]]></c></a>"#);
    // REQUEST_BODY (13) is left empty for XML, as in Coraza and the CRS tests.
    assert_eq!(v.matched_ids, vec![1, 10, 11, 12], "{:?}", v.matched_rules);
    let m = &v.matched_rules[0];
    assert_eq!(m.data, "XML:/*=<script>x");
    assert_eq!(v.matched_rules[1].data, "XML://@*");
    // Element and attribute names are not values.
    let v = xml(r#"<evil evil="no"><script/></evil>"#);
    assert_eq!(v.matched_ids, vec![1, 12]);
}

#[test]
fn malformed_xml_sets_reqbody_error() {
    for bad in ["<a><b></a>", "<a>", "plain text", "<a x=1/>"] {
        let v = xml(bad);
        assert_eq!(v.action, Action::Deny { status: 400 }, "{bad}");
        assert_eq!(v.disrupted_by, Some(2));
        assert!(
            v.matched_rules[0].msg.contains("XML"),
            "{:?}",
            v.matched_rules
        );
    }
    let deep = "<a>".repeat(10_000) + &"</a>".repeat(10_000);
    assert_eq!(xml(&deep).disrupted_by, Some(2));
}

#[test]
fn chain_links_run_their_actions_before_the_next_link() {
    // As in CRS 920420: link 1 captures and sets TX, link 2 reads it; the
    // value link 2 sees through MATCHED_VAR is the transformed one.
    let w = Waf::from_str_named(
        "chain.conf",
        r#"
SecRule ARGS:ct "@rx ^(\w+)" "id:1,phase:1,pass,capture,t:lowercase,setvar:tx.ct=|%{tx.1}|,chain"
    SecRule TX:ct "@streq |abc|" "chain"
        SecRule MATCHED_VAR "@streq |abc|" "setvar:tx.anomaly_score=+5"
SecRule ARGS:x "@streq a" "id:2,phase:1,pass,setvar:tx.first=1,chain"
    SecRule ARGS:y "@streq never" "setvar:tx.anomaly_score=+100"
SecRule TX:first "@eq 1" "id:3,phase:1,pass"
"#,
    )
    .unwrap();
    let v = w.evaluate(&Request::new("GET", "/?ct=ABC&x=a&y=b"));
    assert_eq!(v.matched_ids, vec![1, 3]);
    assert_eq!(v.anomaly_score, 5);
}

/// CRS-shaped response rules: headers in phase 3, body in phase 4.
const RESPONSE_RULES: &str = r#"
SecRuleEngine On
SecResponseBodyAccess On
SecResponseBodyMimeType text/plain text/html
SecAction "id:900,phase:1,pass,nolog,setvar:tx.outbound_threshold=4"
SecRule RESPONSE_STATUS "@rx ^5\d\d$" "id:950100,phase:3,pass,setvar:tx.blocking_outbound_anomaly_score=+4"
SecRule RESPONSE_HEADERS:X-Powered-By "@contains PHP" "id:950200,phase:3,pass,logdata:'%{MATCHED_VAR_NAME}'"
SecRule RESPONSE_PROTOCOL "@streq HTTP/1.0" "id:950300,phase:3,pass"
SecRule RESPONSE_BODY "@rx (?i)you have an error in your sql syntax" "id:951100,phase:4,pass,setvar:tx.blocking_outbound_anomaly_score=+4"
SecRule TX:blocking_outbound_anomaly_score "@ge %{tx.outbound_threshold}" "id:959100,phase:4,deny,status:502"
SecRule ARGS:leak "@streq off" "id:1,phase:1,pass,nolog,ctl:responseBodyAccess=Off"
SecRule ARGS:block "@streq yes" "id:2,phase:2,deny,status:403"
"#;

#[test]
fn response_phases_see_status_headers_and_body() {
    use rampart_waf::Response;
    let w = Waf::from_str_named("resp.conf", RESPONSE_RULES).unwrap();
    let ok = Response::new(200)
        .header("Content-Type", "text/html; charset=utf-8")
        .body("<p>hello</p>");
    let v = w.evaluate_response(&Request::new("GET", "/"), &ok);
    assert!(v.is_pass() && v.outbound_anomaly_score == 0, "{v:?}");
    assert_eq!(v.matched_ids, vec![900]);

    let leak = Response::new(200)
        .header("Content-Type", "text/html")
        .header("X-Powered-By", "PHP/8.3")
        .body("Warning: You have an error in your SQL syntax near ''");
    let v = w.evaluate_response(&Request::new("GET", "/"), &leak);
    assert_eq!(v.action, Action::Deny { status: 502 });
    assert_eq!(v.disrupted_by, Some(959100));
    assert_eq!(v.outbound_anomaly_score, 4);
    let m = v.matched_rules.iter().find(|m| m.id == 950200).unwrap();
    assert_eq!(
        (m.phase, m.data.as_str()),
        (3, "RESPONSE_HEADERS:X-Powered-By")
    );

    // Media types not listed, and ctl:responseBodyAccess=Off, skip the body.
    let json = Response::new(200)
        .header("Content-Type", "application/json")
        .body("You have an error in your SQL syntax");
    assert!(w
        .evaluate_response(&Request::new("GET", "/"), &json)
        .is_pass());
    let v = w.evaluate_response(&Request::new("GET", "/?leak=off"), &leak);
    assert!(v.is_pass(), "{v:?}");

    // Status and protocol in phase 3, scores adding up across phases.
    let mut err = Response::new(503).header("Content-Type", "text/plain");
    err.protocol = "HTTP/1.0".into();
    let v = w.evaluate_response(&Request::new("GET", "/"), &err);
    assert_eq!(v.matched_ids, vec![900, 950100, 950300, 959100]);

    // A request blocked in phase 2 never reaches the response phases.
    let v = w.evaluate_response(&Request::new("GET", "/?block=yes"), &leak);
    assert_eq!(v.action, Action::Deny { status: 403 });
    assert_eq!(v.disrupted_by, Some(2));
}

#[test]
fn capture_is_per_link_of_a_chain() {
    // Like CRS 932207: the top rule and link 2 capture, link 3 does not, so
    // TX.0 in logdata is still what link 2 captured (ModSecurity's reading,
    // which the CRS test 932207-7 checks).
    let w = Waf::from_str_named(
        "chain.conf",
        r#"
SecRule ARGS:a "@rx #.*" "id:1,phase:1,pass,capture,log,logdata:'%{TX.0}',chain"
    SecRule TX:0 "@rx \$[a-z]" "capture,chain"
        SecRule MATCHED_VAR "@rx \s" "t:none"
"#,
    )
    .unwrap();
    let v = w.evaluate(&Request::new("GET", "/?a=%23cat%24u%20/etc"));
    let m = v.matched_rules.iter().find(|m| m.id == 1).unwrap();
    assert_eq!(m.data, "$u");
}

#[test]
fn pcre_brackets_inside_a_class_are_literal() {
    // CRS 3.3's 920470 writes `[^"(),\/:;<=>?![\x5c\]{}]`: in PCRE the inner
    // `[` is a literal, in the regex crate it would open a nested class.
    let w = Waf::from_str_named(
        "class.conf",
        r#"SecRule ARGS:a "@rx ^[^![\x5c\]{}&&~]+$" "id:1,phase:1,deny,status:403"
SecRule ARGS:b "@rx ^[[:digit:]]+$" "id:2,phase:1,deny,status:403""#,
    )
    .unwrap();
    assert!(!w.evaluate(&Request::new("GET", "/?a=abc")).is_pass());
    for bad in ["a[b", "a%5Db", "a%26b", "a%7Eb", "a!b"] {
        let v = w.evaluate(&Request::new("GET", &format!("/?a={bad}")));
        assert!(v.is_pass(), "{bad}: {:?}", v.matched_ids);
    }
    assert!(!w.evaluate(&Request::new("GET", "/?b=123")).is_pass());
    assert!(w.evaluate(&Request::new("GET", "/?b=12x")).is_pass());
}

#[test]
fn operators_needing_geoip_or_dns_never_match_and_are_named_at_load() {
    let w = Waf::from_str_named(
        "reput.conf",
        r#"SecRule REMOTE_ADDR "@geoLookup" "id:1,phase:1,deny,status:403"
SecRule REMOTE_ADDR "@rbl dnsbl.example" "id:2,phase:1,deny,status:403""#,
    )
    .unwrap();
    assert!(w.evaluate(&Request::new("GET", "/")).is_pass());
    let warned = |line: &str, what: &str| {
        w.warnings()
            .iter()
            .any(|m| m.starts_with(&format!("reput.conf:{line}: {what}")))
    };
    assert!(
        warned("1", "@geoLookup never matches"),
        "{:?}",
        w.warnings()
    );
    assert!(warned("2", "@rbl never matches"), "{:?}", w.warnings());
}

/// `skip` counts rules, not markers, and `skipAfter` resumes past the
/// marker or rule it names, in each phase, however markers and rules of
/// other phases lie between.
#[test]
fn skip_and_skip_after_pass_over_markers_and_other_phases() {
    let text = r#"
SecRuleEngine On
SecAction "id:1,phase:1,pass,nolog,skip:2"
SecMarker A
SecAction "id:2,phase:1,pass,nolog"
SecMarker B
SecAction "id:3,phase:1,pass,nolog"
SecAction "id:4,phase:1,pass,nolog"
SecAction "id:5,phase:2,pass,nolog,skipAfter:C"
SecAction "id:6,phase:1,pass,nolog"
SecAction "id:7,phase:2,pass,nolog"
SecMarker C
SecAction "id:8,phase:2,pass,nolog,skipAfter:9"
SecAction "id:9,phase:2,pass,nolog"
SecAction "id:10,phase:2,pass,nolog"
SecAction "id:11,phase:2,pass,nolog,skipAfter:END"
SecAction "id:12,phase:2,pass,nolog"
SecMarker END
SecAction "id:13,phase:1,pass,nolog,skip:5"
SecMarker D
SecAction "id:14,phase:2,pass,nolog"
"#;
    let w = Waf::from_str_named("skips.conf", text).unwrap();
    let v = w.evaluate(&Request::new("GET", "/").header("Host", "example.com"));
    assert_eq!(v.matched_ids, vec![1, 4, 6, 13, 5, 8, 10, 11, 14]);
}
