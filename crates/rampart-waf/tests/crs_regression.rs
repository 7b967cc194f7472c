//! Runs the CRS regression suite (go-ftw YAML) directly against the engine.
//! Ignored by default: `scripts/crs-regression PATH_TO_CRS` runs it.
//! Each stage is evaluated on its own; a stage passes when every id in
//! `expect_ids` matched and none in `no_expect_ids` did.

use rampart_waf::{Request, WafBuilder};
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
"#;

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
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
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
                if log.expect_ids.is_empty() && log.no_expect_ids.is_empty()
                    || s.input.encoded_request.is_some()
                {
                    skipped += 1;
                    continue;
                }
                let i = &s.input;
                let mut req = Request::new(
                    i.method.as_deref().unwrap_or("GET"),
                    i.uri.as_deref().unwrap_or("/"),
                );
                req.protocol = i.version.clone().unwrap_or_else(|| "HTTP/1.1".into());
                for (k, v) in &i.headers {
                    req.headers.push((k.clone(), v.clone().into_bytes()));
                }
                if let Some(d) = &i.data {
                    req.body = d.clone().into_bytes();
                    let has_len = i
                        .headers
                        .keys()
                        .any(|k| k.eq_ignore_ascii_case("content-length"));
                    let has_ct = i
                        .headers
                        .keys()
                        .any(|k| k.eq_ignore_ascii_case("content-type"));
                    if i.autocomplete_headers != Some(false) && !has_len {
                        req.headers.push((
                            "Content-Length".into(),
                            req.body.len().to_string().into_bytes(),
                        ));
                    }
                    // go-ftw's autocompletion declares a form body when none is declared.
                    if i.autocomplete_headers != Some(false) && !has_ct {
                        req.headers.push((
                            "Content-Type".into(),
                            b"application/x-www-form-urlencoded".to_vec(),
                        ));
                    }
                }
                let v = waf.evaluate(&req);
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
                }
            }
        }
    }
    eprintln!("failures by rule family: {failures:?}");
    println!("crs: {passed} passed, {failed} failed, {skipped} skipped");
}
