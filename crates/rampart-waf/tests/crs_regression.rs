//! Runs the CRS regression suite (go-ftw YAML) directly against the engine,
//! through `rampart_waf::ftw`, the module behind `rampart waf test` (which
//! `scripts/crs-regression PATH_TO_CRS` runs). Ignored by default:
//! `RAMPART_CRS_DIR=PATH cargo test --release -p rampart-waf --test
//! crs_regression -- --ignored --nocapture` (`RAMPART_CRS_ONLY=9341` narrows
//! it and prints each failure's log lines).

use rampart_waf::ftw::{self, Outcome, Summary, CRS_ENGINE_SKIPS};
use rampart_waf::WafBuilder;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[test]
#[ignore = "needs the CRS: set RAMPART_CRS_DIR"]
fn crs_regression_suite() {
    let dir = PathBuf::from(std::env::var("RAMPART_CRS_DIR").expect("set RAMPART_CRS_DIR"));
    let mut b = WafBuilder::new();
    let mut files = ftw::rule_files(&dir).unwrap().into_iter();
    b.load_file(files.next().expect("crs-setup.conf.example"))
        .unwrap();
    b.load_str(
        dir.join("rules/rampart-test-setup.conf"),
        &ftw::crs_test_setup(4),
    )
    .unwrap();
    for r in files {
        b.load_file(&r).unwrap();
    }
    let waf = b.build().unwrap();

    let mut yamls = ftw::test_files(&dir.join("tests/regression/tests")).unwrap();
    // RAMPART_CRS_ONLY=944120 (a prefix of the file name) narrows the run.
    if let Ok(only) = std::env::var("RAMPART_CRS_ONLY") {
        yamls.retain(|y| {
            y.file_stem()
                .is_some_and(|s| s.to_string_lossy().starts_with(&only))
        });
    }
    let mut summary = Summary::default();
    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    for y in yamls {
        let file = ftw::load_file(&y).unwrap_or_else(|e| panic!("{e}"));
        for t in &file.tests {
            for s in &t.stages {
                let outcome = match CRS_ENGINE_SKIPS.iter().find(|k| k.test == t.name) {
                    Some(k) => Outcome::Skipped(k.reason.into()),
                    None => match s.request() {
                        Ok(req) => {
                            let v = waf.evaluate_response(&req, &s.backend_response(&req));
                            if std::env::var_os("RAMPART_CRS_ONLY").is_some() {
                                eprint!("{}", ftw::log_text(&v));
                            }
                            ftw::judge_verdict(s, &v)
                        }
                        Err(why) => Outcome::Skipped(why),
                    },
                };
                match &outcome {
                    Outcome::Failed(why) => {
                        eprintln!("FAIL {}: {why}", t.name);
                        *failures
                            .entry(t.name.get(..3).unwrap_or("").to_string())
                            .or_default() += 1;
                    }
                    Outcome::Skipped(why) => eprintln!("SKIP {}: {why}", t.name),
                    Outcome::Passed => {}
                }
                summary.add(&outcome);
            }
        }
    }
    eprintln!("failures by rule family: {failures:?}");
    println!("crs: {summary}");
    assert_eq!(summary.failed, 0);
}
