//! `rampart waf test`, the conformance runner, on the small go-ftw fixtures
//! shipped with rampart-waf: through the engine, through a stand-in server
//! with `--via`, and on bad input.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../rampart-waf/tests/fixtures")
        .join(p)
}

fn rampart(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn waf_test(rules: &str, tests: &str) -> Output {
    let rules = fixture(rules);
    let tests = fixture(tests);
    rampart(&[
        "waf",
        "test",
        "--rules",
        rules.to_str().unwrap(),
        "--tests",
        tests.to_str().unwrap(),
    ])
}

#[test]
fn engine_run_passes_v4_and_v33_tests() {
    let out = waf_test("mini/main.conf", "ftw/pass");
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("SKIP 942100-4: expects only an HTTP status"),
        "{stdout}"
    );
    assert_eq!(stdout.lines().last(), Some("5 passed, 0 failed, 1 skipped"));
}

#[test]
fn failures_are_named_with_their_reason_and_exit_1() {
    let out = waf_test("mini/main.conf", "ftw/fail");
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL 942100-1: missing [942100]"),
        "{stdout}"
    );
    assert_eq!(stdout.lines().last(), Some("1 passed, 1 failed, 0 skipped"));
}

#[test]
fn bad_input_is_one_line_naming_the_file_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = dir.path().join("broken.yaml");
    std::fs::write(&yaml, "tests:\n  - test_id: 1\n    stages: [\n").unwrap();
    let rules = fixture("mini/main.conf");
    let out = rampart(&[
        "waf",
        "test",
        "--rules",
        rules.to_str().unwrap(),
        "--tests",
        dir.path().to_str().unwrap(),
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&*yaml.to_string_lossy()), "{stderr}");

    let out = waf_test("mini/bad.conf", "ftw/pass");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("bad.conf:8: unsupported action"),
        "{stderr}"
    );

    let out = waf_test("mini/main.conf", "ftw/missing");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("ftw/missing"));
}

/// A stand-in for a blocking edge: 403 when the request mentions `union%20select`,
/// `' or '` or `<script`, else 200.
fn blocking_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut s) = conn else { continue };
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            // Head, then as much body as Content-Length says.
            loop {
                let n = s.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
                let t = text(&req).to_ascii_lowercase();
                if let Some(end) = t.find("\r\n\r\n") {
                    let len = t
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if req.len() >= end + 4 + len {
                        break;
                    }
                }
            }
            let t = text(&req).to_ascii_lowercase();
            let blocked = ["union%20select", "' or '", "%3cscript"]
                .iter()
                .any(|w| t.contains(w));
            let status = if blocked { "403 Forbidden" } else { "200 OK" };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    port
}

#[test]
fn via_judges_by_status() {
    let port = blocking_server();
    let tests = fixture("ftw/pass");
    let out = rampart(&[
        "waf",
        "test",
        "--via",
        &format!("http://127.0.0.1:{port}"),
        "--tests",
        tests.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert_eq!(stdout.lines().last(), Some("6 passed, 0 failed, 0 skipped"));

    // Nothing listening: every stage fails with the reason.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = l.local_addr().unwrap().port();
    drop(l);
    let out = rampart(&[
        "waf",
        "test",
        "--via",
        &format!("http://127.0.0.1:{dead}"),
        "--tests",
        tests.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL 942100-1: no answer"), "{stdout}");
}
