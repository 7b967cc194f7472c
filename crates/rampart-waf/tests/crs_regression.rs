//! Runs the CRS regression suite (go-ftw YAML) directly against the engine.
//! Ignored by default: `scripts/crs-regression PATH_TO_CRS` runs it.
//! Each stage is evaluated on its own; a stage passes when every id in
//! `expect_ids` matched and none in `no_expect_ids` did.

use rampart_waf::{Request, Response, WafBuilder};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
struct File {
    tests: Vec<Test>,
}

#[derive(Deserialize)]
struct Test {
    test_id: serde_norway::Value,
    stages: Vec<Stage>,
}

#[derive(Deserialize)]
struct Stage {
    input: Input,
    output: Output,
}

#[derive(Deserialize, Default)]
struct Input {
    method: Option<String>,
    uri: Option<String>,
    version: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    data: Option<String>,
    encoded_request: Option<String>,
    autocomplete_headers: Option<bool>,
}

#[derive(Deserialize, Default)]
struct Output {
    #[serde(default)]
    log: Log,
}

#[derive(Deserialize, Default)]
struct Log {
    #[serde(default)]
    expect_ids: Vec<u64>,
    #[serde(default)]
    no_expect_ids: Vec<u64>,
}

/// The settings CRS's own test setup uses: detect only, paranoia 4 and the
/// ModSecurity recommended body-processor rules.
const TEST_SETUP: &str = r#"
SecRuleEngine DetectionOnly
SecAction "id:900005,phase:1,nolog,pass,setvar:tx.blocking_paranoia_level=4,setvar:tx.crs_validate_utf8_encoding=1,setvar:tx.arg_name_length=100,setvar:tx.arg_length=400,setvar:tx.total_arg_length=64000,setvar:tx.max_num_args=255,setvar:tx.max_file_size=64100,setvar:tx.combined_file_sizes=65535"
SecRule REQUEST_HEADERS:Content-Type "@rx (?:application(?:/soap\+|/)|text/)xml" "id:200000,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=XML"
SecRule REQUEST_HEADERS:Content-Type "@rx ^application/json" "id:200001,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=JSON"
SecResponseBodyAccess On
SecResponseBodyMimeType text/plain text/html text/xml application/json
SecResponseBodyLimitAction ProcessPartial
"#;

/// Tests whose expectation depends on what the HTTP server in front of the
/// engine does, not on the engine: `(rule, test, reason)`. Each is counted as
/// skipped and printed with its reason. Compare the suite's own override
/// lists (`tests/regression/*-overrides.yaml`) for ModSecurity and Coraza.
const SKIPS: &[(&str, u32, &str)] = &[
    (
        "920181",
        1,
        "expects Apache to drop Content-Length when Transfer-Encoding is present; \
         nginx answers 400 (nginx override); the engine sees both headers as sent",
    ),
    (
        "920620",
        1,
        "httpd joins two Content-Type headers into one, so the test expects no match; \
         like nginx (nginx override), Rampart keeps both and the rule fires as intended",
    ),
    (
        "920640",
        5,
        "a body with neither Content-Length nor Transfer-Encoding is never read by an \
         HTTP/1.1 server; the test says so and expects the rule not to fire",
    ),
    (
        "921140",
        1,
        "a bare CR inside a header value is rejected with 400 by the HTTP server \
         before the WAF (the test expects status 400)",
    ),
];

/// Builds the request go-ftw would send for a stage's `input`.
fn build_request(i: &Input) -> Request {
    let mut req = Request::new(
        i.method.as_deref().unwrap_or("GET"),
        i.uri.as_deref().unwrap_or("/"),
    );
    // A request line without a version is HTTP/0.9 to the server (920430).
    req.protocol = match i.version.as_deref() {
        None => "HTTP/1.1".into(),
        Some("") => "HTTP/0.9".into(),
        Some(v) => v.into(),
    };
    for (k, v) in &i.headers {
        req.headers.push((k.clone(), v.clone().into_bytes()));
    }
    if let Some(d) = &i.data {
        req.body = d.clone().into_bytes();
        let has = |name: &str| i.headers.keys().any(|k| k.eq_ignore_ascii_case(name));
        if i.autocomplete_headers != Some(false) && !has("content-length") {
            req.headers.push((
                "Content-Length".into(),
                req.body.len().to_string().into_bytes(),
            ));
        }
        // go-ftw's autocompletion declares a form body when none is declared.
        if i.autocomplete_headers != Some(false) && !has("content-type") {
            req.headers.push((
                "Content-Type".into(),
                b"application/x-www-form-urlencoded".to_vec(),
            ));
        }
    }
    req
}

/// Splits a raw HTTP/1.x request (go-ftw's `encoded_request`).
fn parse_raw(raw: &[u8]) -> Option<Request> {
    let (head_len, sep) = match raw.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(p) => (p, 4),
        None => (raw.windows(2).position(|w| w == b"\n\n")?, 2),
    };
    let head = String::from_utf8_lossy(raw.get(..head_len)?).into_owned();
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let mut line = lines.next()?.splitn(3, ' ');
    let mut req = Request::new(line.next()?, line.next()?);
    req.protocol = line.next().unwrap_or("HTTP/0.9").to_string();
    for l in lines {
        let (k, v) = l.split_once(':')?;
        req.headers
            .push((k.to_string(), v.trim_start().as_bytes().to_vec()));
    }
    req.body = raw.get(head_len + sep..)?.to_vec();
    let declared = req
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.trim().parse::<usize>().ok());
    if let Some(n) = declared {
        req.body.truncate(n);
    }
    Some(req)
}

/// The response the suite's backend (albedo) sends: `/reflect` answers with
/// the status, headers and body described by the JSON request body, anything
/// else with an empty 200.
fn backend_response(uri: &str, body: Option<&str>) -> Response {
    let plain = || Response::new(200).header("Content-Type", "text/plain; charset=utf-8");
    let path = uri.split('?').next().unwrap_or("");
    if path != "/reflect" {
        return plain();
    }
    let Some(spec) = body.and_then(|b| serde_json::from_str::<serde_json::Value>(b).ok()) else {
        return plain();
    };
    let status = spec
        .get("status")
        .and_then(|s| s.as_u64())
        .and_then(|s| u16::try_from(s).ok())
        .unwrap_or(200);
    let mut resp = Response::new(status);
    if let Some(h) = spec.get("headers").and_then(|h| h.as_object()) {
        for (k, v) in h {
            resp = resp.header(k, v.as_str().unwrap_or("").as_bytes());
        }
    }
    if !resp
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        resp = resp.header("Content-Type", "text/plain; charset=utf-8");
    }
    if let Some(b) = spec.get("body").and_then(|b| b.as_str()) {
        resp.body = b.as_bytes().to_vec();
    } else if let Some(b) = spec.get("encodedBody").and_then(|b| b.as_str()) {
        use base64::Engine;
        resp.body = base64::engine::general_purpose::STANDARD
            .decode(b)
            .unwrap_or_default();
    }
    resp
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "yaml") {
            out.push(p);
        }
    }
}

#[test]
#[ignore = "needs the CRS: scripts/crs-regression PATH_TO_CRS"]
fn crs_regression_suite() {
    let dir = PathBuf::from(std::env::var("RAMPART_CRS_DIR").expect("set RAMPART_CRS_DIR"));
    let mut b = WafBuilder::new();
    b.load_file(dir.join("crs-setup.conf.example")).unwrap();
    b.load_str(dir.join("rules/rampart-test-setup.conf"), TEST_SETUP)
        .unwrap();
    let mut rules: Vec<_> = std::fs::read_dir(dir.join("rules"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "conf"))
        .collect();
    rules.sort();
    for r in rules {
        b.load_file(&r).unwrap();
    }
    let waf = b.build().unwrap();

    let mut yamls = Vec::new();
    files(&dir.join("tests/regression/tests"), &mut yamls);
    yamls.sort();
    // RAMPART_CRS_ONLY=944120 (a prefix of the file name) narrows the run.
    if let Ok(only) = std::env::var("RAMPART_CRS_ONLY") {
        yamls.retain(|y| {
            y.file_stem()
                .is_some_and(|s| s.to_string_lossy().starts_with(&only))
        });
    }
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    let mut no_log_expectation = 0;
    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    for y in yamls {
        let text = std::fs::read_to_string(&y).unwrap();
        let file: File = match serde_norway::from_str(&text) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("SKIP {}: {e}", y.display());
                skipped += 1;
                continue;
            }
        };
        let stem = y.file_stem().unwrap().to_string_lossy().into_owned();
        for t in file.tests {
            for s in t.stages {
                let log = &s.output.log;
                if log.expect_ids.is_empty() && log.no_expect_ids.is_empty() {
                    // Only a status or a connection error is expected: that
                    // is the HTTP server's answer, not something the engine
                    // decides.
                    no_log_expectation += 1;
                    skipped += 1;
                    continue;
                }
                let test_no = t.test_id.as_u64().unwrap_or(0);
                if let Some((_, _, why)) = SKIPS
                    .iter()
                    .find(|(r, n, _)| *r == stem && u64::from(*n) == test_no)
                {
                    eprintln!("SKIP {stem}-{test_no}: {why}");
                    skipped += 1;
                    continue;
                }
                let i = &s.input;
                let req = match &i.encoded_request {
                    Some(enc) => {
                        use base64::Engine;
                        let raw = base64::engine::general_purpose::STANDARD
                            .decode(enc.split_whitespace().collect::<String>())
                            .unwrap_or_default();
                        match parse_raw(&raw) {
                            Some(r) => r,
                            None => {
                                eprintln!("SKIP {stem}-{test_no}: unparsable encoded_request");
                                skipped += 1;
                                continue;
                            }
                        }
                    }
                    None => build_request(i),
                };
                let resp = backend_response(&req.uri, i.data.as_deref());
                let v = waf.evaluate_response(&req, &resp);
                let missing: Vec<u64> = log
                    .expect_ids
                    .iter()
                    .copied()
                    .filter(|id| !v.matched_ids.contains(id))
                    .collect();
                let extra: Vec<u64> = log
                    .no_expect_ids
                    .iter()
                    .copied()
                    .filter(|id| v.matched_ids.contains(id))
                    .collect();
                if missing.is_empty() && extra.is_empty() {
                    passed += 1;
                } else {
                    failed += 1;
                    *failures
                        .entry(stem.get(..3).unwrap_or("").to_string())
                        .or_default() += 1;
                    eprintln!(
                        "FAIL {stem}-{:?}: missing {missing:?} unexpected {extra:?}",
                        t.test_id
                    );
                    if std::env::var_os("RAMPART_CRS_ONLY").is_some() {
                        eprintln!("  matched: {:?}", v.matched_ids);
                    }
                }
            }
        }
    }
    eprintln!("failures by rule family: {failures:?}");
    eprintln!("skipped stages that expect only a status or an error: {no_log_expectation}");
    println!("crs: {passed} passed, {failed} failed, {skipped} skipped");
}
