//! Regression tests in go-ftw's YAML format, the format of the OWASP Core
//! Rule Set's own test suite, read and judged for Rampart's conformance
//! runner (`rampart waf test`) and the `crs_regression` cargo test.
//!
//! Two dialects are read:
//! - CRS v4 (go-ftw 1.x): `tests[].test_id`, `stages[].input/output`, with
//!   `output.log.expect_ids` / `no_expect_ids` (and `match_regex` /
//!   `no_match_regex`);
//! - CRS v3.3 (the Python ftw): `tests[].test_title`, `stages[].stage.input/
//!   output`, with `output.log_contains` / `no_log_contains`, regular
//!   expressions over the log such as `id "942100"`.
//!
//! A stage is judged in one of two ways. [`judge_verdict`] compares the
//! engine's [`Verdict`] with the expectation: expected ids must have matched,
//! unexpected ones must not, and log expressions are matched against
//! [`log_text`], a ModSecurity-style line per logged rule (`[id "942100"]
//! [msg "…"] [data "…"]`). [`judge_status`] is for a request sent over HTTP
//! to a running edge, where rule ids are not visible: like go-ftw's cloud
//! mode it reads 403 as "blocked", so a stage that expects ids must be
//! blocked and one that only forbids ids must not be. That is only as
//! precise as the rule set's blocking threshold allows.
//!
//! Nothing here touches the network: [`Stage::raw_request`] gives the bytes
//! to send and the caller sends them.

use crate::error::Error;
use crate::request::{Request, Response, Verdict};
use base64::Engine as _;
use serde_norway::Value;
use std::path::{Path, PathBuf};

/// One YAML file of tests.
#[derive(Debug, Clone)]
pub struct TestFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its tests, in file order.
    pub tests: Vec<Test>,
}

/// One test: a name and one or more stages sent in order.
#[derive(Debug, Clone)]
pub struct Test {
    /// `RULE-N` (v4: the file's `rule_id` or name and `test_id`; v3.3:
    /// `test_title`).
    pub name: String,
    /// The stages.
    pub stages: Vec<Stage>,
}

/// One request and what must come of it.
#[derive(Debug, Clone)]
pub struct Stage {
    /// The request.
    pub input: Input,
    /// The expectation.
    pub expect: Expect,
}

/// A stage's request as the YAML describes it.
#[derive(Debug, Clone)]
pub struct Input {
    /// `method` (default `GET`).
    pub method: String,
    /// `uri` (default `/`).
    pub uri: String,
    /// `version`: `None` for the default `HTTP/1.1`, `Some("")` for a request
    /// line without a version (HTTP/0.9).
    pub version: Option<String>,
    /// `headers`, in file order.
    pub headers: Vec<(String, String)>,
    /// `data`, the body (a v3.3 list of lines is joined with CRLF).
    pub data: Option<Vec<u8>>,
    /// `encoded_request` (base64, decoded) or v3.3 `raw_request`: the exact
    /// bytes to send, overriding everything else.
    pub raw: Option<Vec<u8>>,
    /// `autocomplete_headers` (default true): add `Content-Length` and a
    /// form `Content-Type` to a body that lacks them, as go-ftw does.
    pub autocomplete_headers: bool,
}

/// What a stage must show.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    /// Rule ids that must match (`expect_ids`).
    pub ids: Vec<u64>,
    /// Rule ids that must not match (`no_expect_ids`).
    pub no_ids: Vec<u64>,
    /// Expressions the log must match (`match_regex`, `log_contains`).
    pub log_matches: Vec<regex::Regex>,
    /// Expressions the log must not match (`no_match_regex`,
    /// `no_log_contains`).
    pub log_no_matches: Vec<regex::Regex>,
    /// Acceptable HTTP statuses (`status`, a number or a list).
    pub status: Vec<u16>,
    /// The server is expected to fail the request (`expect_error`).
    pub error: bool,
}

impl Expect {
    /// True when the expectation says something about the rules that match
    /// (ids or log lines), which the engine alone can decide.
    pub fn is_about_rules(&self) -> bool {
        !(self.ids.is_empty()
            && self.no_ids.is_empty()
            && self.log_matches.is_empty()
            && self.log_no_matches.is_empty())
    }

    /// True when rules are expected to fire (ids or log lines that must
    /// appear).
    fn wants_match(&self) -> bool {
        !self.ids.is_empty() || !self.log_matches.is_empty()
    }
}

/// How one stage came out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// As expected.
    Passed,
    /// Not as expected, and why.
    Failed(String),
    /// Not judged, and why.
    Skipped(String),
}

/// Counts of outcomes; prints as `N passed, N failed, N skipped`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Stages as expected.
    pub passed: usize,
    /// Stages not as expected.
    pub failed: usize,
    /// Stages not judged.
    pub skipped: usize,
}

impl Summary {
    /// Counts one outcome.
    pub fn add(&mut self, o: &Outcome) {
        match o {
            Outcome::Passed => self.passed += 1,
            Outcome::Failed(_) => self.failed += 1,
            Outcome::Skipped(_) => self.skipped += 1,
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        )
    }
}

/// A test of the CRS v4 suite whose expectation depends on the HTTP server in
/// front of the engine rather than on the engine; [`judge_verdict`] callers
/// skip it with its reason.
#[derive(Debug, Clone, Copy)]
pub struct KnownSkip {
    /// The test's name, e.g. `920181-1`.
    pub test: &'static str,
    /// Why it is not judged.
    pub reason: &'static str,
}

/// Tests of CRS v4.28.0 skipped when judging the engine directly. Compare the
/// suite's own override lists (`tests/regression/*-overrides.yaml`) for
/// ModSecurity and Coraza.
pub const CRS_ENGINE_SKIPS: &[KnownSkip] = &[
    KnownSkip {
        test: "920181-1",
        reason: "expects Apache to drop Content-Length when Transfer-Encoding is present; \
                 nginx answers 400 (nginx override); the engine sees both headers as sent",
    },
    KnownSkip {
        test: "920620-1",
        reason: "httpd joins two Content-Type headers into one, so the test expects no match; \
                 like nginx (nginx override), Rampart keeps both and the rule fires as intended",
    },
    KnownSkip {
        test: "920640-5",
        reason: "a body with neither Content-Length nor Transfer-Encoding is never read by an \
                 HTTP/1.1 server; the test says so and expects the rule not to fire",
    },
    KnownSkip {
        test: "921140-1",
        reason: "a bare CR inside a header value is rejected with 400 by the HTTP server \
                 before the WAF (the test expects status 400)",
    },
];

/// The settings CRS's own test setup uses, for loading after `crs-setup.conf`
/// and before the rules: detection only (every rule runs; nothing stops the
/// transaction early), the given paranoia level (v4 and v3.3 variable names),
/// the limits the suite expects, ModSecurity's recommended body-processor
/// rules and response body inspection.
pub fn crs_test_setup(paranoia: u8) -> String {
    format!(
        r#"
SecRuleEngine DetectionOnly
SecAction "id:900005,phase:1,nolog,pass,setvar:tx.blocking_paranoia_level={paranoia},setvar:tx.paranoia_level={paranoia},setvar:tx.crs_validate_utf8_encoding=1,setvar:tx.arg_name_length=100,setvar:tx.arg_length=400,setvar:tx.total_arg_length=64000,setvar:tx.max_num_args=255,setvar:tx.max_file_size=64100,setvar:tx.combined_file_sizes=65535"
SecRule REQUEST_HEADERS:Content-Type "@rx (?:application(?:/soap\+|/)|text/)xml" "id:200000,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=XML"
SecRule REQUEST_HEADERS:Content-Type "@rx ^application/json" "id:200001,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=JSON"
SecResponseBodyAccess On
SecResponseBodyMimeType text/plain text/html text/xml application/json
SecResponseBodyLimitAction ProcessPartial
"#
    )
}

/// The rule files a path stands for, in load order: a file is itself; a CRS
/// directory (one with `rules/`) is its `crs-setup.conf` (else
/// `crs-setup.conf.example`) followed by `rules/*.conf`; any other directory
/// is its `*.conf` files. Files are sorted by name, as CRS expects.
pub fn rule_files(path: &Path) -> Result<Vec<PathBuf>, Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let rules = path.join("rules");
    let dir = if rules.is_dir() {
        for setup in ["crs-setup.conf", "crs-setup.conf.example"] {
            let p = path.join(setup);
            if p.is_file() {
                out.push(p);
                break;
            }
        }
        rules
    } else {
        path.to_path_buf()
    };
    let mut confs = Vec::new();
    for e in std::fs::read_dir(&dir).map_err(|source| Error::Io {
        path: dir.clone(),
        source,
    })? {
        let p = e
            .map_err(|source| Error::Io {
                path: dir.clone(),
                source,
            })?
            .path();
        if p.is_file() && p.extension().is_some_and(|x| x == "conf") {
            confs.push(p);
        }
    }
    confs.sort();
    out.extend(confs);
    Ok(out)
}

/// Every `*.yaml` file under `dir` (or `dir` itself if it is a file), sorted
/// by path. Like go-ftw, other extensions are left alone (CRS keeps a
/// `999999.yml` that its runner never reads).
pub fn test_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), Error> {
        let io = |source| Error::Io {
            path: dir.to_path_buf(),
            source,
        };
        for e in std::fs::read_dir(dir).map_err(io)? {
            let p = e.map_err(io)?.path();
            if p.is_dir() {
                walk(&p, out)?;
            } else if p.extension().is_some_and(|x| x == "yaml") {
                out.push(p);
            }
        }
        Ok(())
    }
    let meta = std::fs::metadata(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    if meta.is_dir() {
        walk(dir, &mut out)?;
    } else {
        out.push(dir.to_path_buf());
    }
    out.sort();
    Ok(out)
}

/// Reads one test file.
pub fn load_file(path: &Path) -> Result<TestFile, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

/// Parses test YAML as if read from `path` (used in messages and, without a
/// `rule_id`, to name v4 tests).
pub fn parse(path: &Path, text: &str) -> Result<TestFile, Error> {
    let bad = |message: String| Error::Test {
        path: path.to_path_buf(),
        message,
    };
    let doc: Value = serde_norway::from_str(text).map_err(|e| bad(e.to_string()))?;
    if doc.is_null() {
        // Only comments: CRS keeps such placeholders for its linter.
        return Ok(TestFile {
            path: path.to_path_buf(),
            tests: Vec::new(),
        });
    }
    let rule = match doc.get("rule_id") {
        Some(v) => scalar(v).ok_or_else(|| bad("`rule_id` is not a scalar".into()))?,
        None => path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    let tests = doc
        .get("tests")
        .and_then(Value::as_sequence)
        .ok_or_else(|| bad("no `tests` list".into()))?;
    let mut out = Vec::with_capacity(tests.len());
    for (n, t) in tests.iter().enumerate() {
        let at = |m: String| bad(format!("test {}: {m}", n + 1));
        let name = match (t.get("test_title"), t.get("test_id")) {
            (Some(title), _) => scalar(title).ok_or_else(|| at("bad `test_title`".into()))?,
            (None, Some(id)) => {
                format!(
                    "{rule}-{}",
                    scalar(id).ok_or_else(|| at("bad `test_id`".into()))?
                )
            }
            (None, None) => format!("{rule}-{}", n + 1),
        };
        let at = |m: String| bad(format!("test {name}: {m}"));
        let stages = t
            .get("stages")
            .and_then(Value::as_sequence)
            .ok_or_else(|| at("no `stages` list".into()))?;
        let mut parsed = Vec::with_capacity(stages.len());
        for (k, s) in stages.iter().enumerate() {
            // v3.3 wraps each stage in `stage:`.
            let s = s.get("stage").unwrap_or(s);
            parsed.push(stage(s).map_err(|m| at(format!("stage {}: {m}", k + 1)))?);
        }
        out.push(Test {
            name,
            stages: parsed,
        });
    }
    Ok(TestFile {
        path: path.to_path_buf(),
        tests: out,
    })
}

/// A scalar as text (`942100`, `"x"`, `true`).
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn stage(s: &Value) -> Result<Stage, String> {
    let input = s.get("input").ok_or("no `input`")?;
    let output = s.get("output").ok_or("no `output`")?;
    let text = |key: &str| -> Result<Option<String>, String> {
        input
            .get(key)
            .map(|v| scalar(v).ok_or(format!("`{key}` is not a scalar")))
            .transpose()
    };
    let mut headers = Vec::new();
    if let Some(h) = input.get("headers") {
        let map = h.as_mapping().ok_or("`headers` is not a mapping")?;
        for (k, v) in map {
            let k = scalar(k).ok_or("a header name is not a scalar")?;
            let v = match v {
                Value::Null => String::new(),
                v => scalar(v).ok_or(format!("header `{k}` is not a scalar"))?,
            };
            headers.push((k, v));
        }
    }
    let data = match input.get("data") {
        None | Some(Value::Null) => None,
        Some(Value::Sequence(lines)) => {
            let lines: Option<Vec<String>> = lines.iter().map(scalar).collect();
            Some(
                lines
                    .ok_or("a `data` line is not a scalar")?
                    .join("\r\n")
                    .into_bytes(),
            )
        }
        Some(v) => Some(scalar(v).ok_or("`data` is not text")?.into_bytes()),
    };
    let raw = match (text("encoded_request")?, text("raw_request")?) {
        (Some(enc), _) => Some(
            base64::engine::general_purpose::STANDARD
                .decode(enc.split_whitespace().collect::<String>())
                .map_err(|e| format!("`encoded_request` is not base64: {e}"))?,
        ),
        (None, Some(raw)) => Some(raw.into_bytes()),
        (None, None) => None,
    };
    let autocomplete_headers = match input.get("autocomplete_headers") {
        None => true,
        Some(v) => v
            .as_bool()
            .ok_or("`autocomplete_headers` is not a boolean")?,
    };
    let input = Input {
        method: text("method")?.unwrap_or_else(|| "GET".into()),
        uri: text("uri")?.unwrap_or_else(|| "/".into()),
        version: text("version")?,
        headers,
        data,
        raw,
        autocomplete_headers,
    };
    Ok(Stage {
        input,
        expect: expect(output)?,
    })
}

fn expect(output: &Value) -> Result<Expect, String> {
    let mut e = Expect::default();
    let ids = |v: Option<&Value>, key: &str| -> Result<Vec<u64>, String> {
        match v {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Sequence(s)) => s
                .iter()
                .map(|i| i.as_u64().ok_or(format!("`{key}` holds a non-number")))
                .collect(),
            Some(v) => Ok(vec![v
                .as_u64()
                .ok_or(format!("`{key}` is not a list of numbers"))?]),
        }
    };
    let regexes = |v: Option<&Value>, key: &str| -> Result<Vec<regex::Regex>, String> {
        let list: Vec<&Value> = match v {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Sequence(s)) => s.iter().collect(),
            Some(v) => vec![v],
        };
        list.into_iter()
            .map(|v| {
                let s = scalar(v).ok_or(format!("`{key}` is not text"))?;
                regex::Regex::new(&s).map_err(|err| format!("`{key}`: {err}"))
            })
            .collect()
    };
    if let Some(log) = output.get("log") {
        e.ids = ids(log.get("expect_ids"), "expect_ids")?;
        e.no_ids = ids(log.get("no_expect_ids"), "no_expect_ids")?;
        e.log_matches = regexes(log.get("match_regex"), "match_regex")?;
        e.log_no_matches = regexes(log.get("no_match_regex"), "no_match_regex")?;
    }
    e.log_matches
        .extend(regexes(output.get("log_contains"), "log_contains")?);
    e.log_no_matches
        .extend(regexes(output.get("no_log_contains"), "no_log_contains")?);
    e.status = ids(output.get("status"), "status")?
        .into_iter()
        .map(|s| u16::try_from(s).map_err(|_| format!("status {s} is out of range")))
        .collect::<Result<_, _>>()?;
    e.error = match output.get("expect_error") {
        None => false,
        Some(v) => v.as_bool().ok_or("`expect_error` is not a boolean")?,
    };
    Ok(e)
}

impl Input {
    fn has_header(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(name))
    }

    /// The headers go-ftw adds to a body: `Content-Length`, and a form
    /// `Content-Type` when none is declared.
    fn autocompleted(&self) -> Vec<(String, String)> {
        let mut extra = Vec::new();
        if let (Some(d), true) = (&self.data, self.autocomplete_headers) {
            if !self.has_header("content-length") {
                extra.push(("Content-Length".into(), d.len().to_string()));
            }
            if !self.has_header("content-type") {
                extra.push((
                    "Content-Type".into(),
                    "application/x-www-form-urlencoded".into(),
                ));
            }
        }
        extra
    }
}

impl Stage {
    /// The request as the engine should see it, or why it cannot be built (an
    /// `encoded_request` that is not an HTTP/1.x request).
    pub fn request(&self) -> Result<Request<'static>, String> {
        let i = &self.input;
        if let Some(raw) = &i.raw {
            return parse_raw(raw).ok_or_else(|| "the raw request is not HTTP/1.x".to_string());
        }
        let mut req = Request::new(&i.method, &i.uri);
        req.protocol = match i.version.as_deref() {
            None => "HTTP/1.1".into(),
            // A request line without a version is HTTP/0.9 to the server (920430).
            Some("") => "HTTP/0.9".into(),
            Some(v) => v.to_string().into(),
        };
        for (k, v) in i.headers.iter().chain(&i.autocompleted()) {
            req.headers
                .push((k.clone().into(), v.clone().into_bytes().into()));
        }
        if let Some(d) = &i.data {
            req.body = d.clone().into();
        }
        Ok(req)
    }

    /// The bytes to send to a server: the raw request if the stage has one,
    /// else the request line, the headers (completed as go-ftw does, plus
    /// `Connection: close` when no `Connection` is given) and the body.
    pub fn raw_request(&self) -> Vec<u8> {
        let i = &self.input;
        if let Some(raw) = &i.raw {
            return raw.clone();
        }
        let mut out = Vec::new();
        out.extend_from_slice(i.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(i.uri.as_bytes());
        match i.version.as_deref() {
            Some("") => {}
            v => {
                out.push(b' ');
                out.extend_from_slice(v.unwrap_or("HTTP/1.1").as_bytes());
            }
        }
        out.extend_from_slice(b"\r\n");
        let mut headers: Vec<(String, String)> = i.headers.clone();
        if i.autocomplete_headers && !i.has_header("connection") {
            headers.push(("Connection".into(), "close".into()));
        }
        headers.extend(i.autocompleted());
        for (k, v) in headers {
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if let Some(d) = &i.data {
            out.extend_from_slice(d);
        }
        out
    }

    /// The response the CRS suite's backend (albedo) would send for this
    /// stage: `/reflect` answers with the status, headers and body its JSON
    /// request body describes, anything else with an empty 200.
    pub fn backend_response(&self, req: &Request<'_>) -> Response<'static> {
        backend_response(&req.uri, self.input.data.as_deref())
    }
}

/// Splits a raw HTTP/1.x request (go-ftw's `encoded_request`); the body is
/// cut to a declared `Content-Length`.
fn parse_raw(raw: &[u8]) -> Option<Request<'static>> {
    let (head_len, sep) = match raw.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(p) => (p, 4),
        None => (raw.windows(2).position(|w| w == b"\n\n")?, 2),
    };
    let head = String::from_utf8_lossy(raw.get(..head_len)?).into_owned();
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let mut line = lines.next()?.splitn(3, ' ');
    let mut req = Request::new(line.next()?, line.next()?);
    req.protocol = line.next().unwrap_or("HTTP/0.9").to_string().into();
    for l in lines {
        let (k, v) = l.split_once(':')?;
        req.headers.push((
            k.to_string().into(),
            v.trim_start().as_bytes().to_vec().into(),
        ));
    }
    req.body = raw.get(head_len + sep..)?.to_vec().into();
    let declared = req
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.trim().parse::<usize>().ok());
    if let Some(n) = declared {
        req.body.to_mut().truncate(n);
    }
    Some(req)
}

fn backend_response(uri: &str, body: Option<&[u8]>) -> Response<'static> {
    let plain = || Response::new(200).header("Content-Type", "text/plain; charset=utf-8");
    let path = uri.split('?').next().unwrap_or("");
    if path != "/reflect" {
        return plain();
    }
    let Some(spec) = body.and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok()) else {
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
        resp.body = b.as_bytes().to_vec().into();
    } else if let Some(b) = spec.get("encodedBody").and_then(|b| b.as_str()) {
        resp.body = base64::engine::general_purpose::STANDARD
            .decode(b)
            .unwrap_or_default()
            .into();
    }
    resp
}

/// The log lines ModSecurity would write for a verdict, one per logged rule:
/// `[id "942100"] [msg "…"] [data "…"] [severity "2"] [tag "…"] against
/// variable `ARGS:x'`, control characters written `\xHH` as ModSecurity
/// does. Log expressions (`log_contains`, `match_regex`) are matched against
/// this text.
pub fn log_text(v: &Verdict) -> String {
    fn escape(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        for c in s.chars() {
            if c.is_ascii_control() {
                out.push_str(&format!("\\x{:02x}", u32::from(c)));
            } else {
                out.push(c);
            }
        }
        out
    }
    let mut out = String::new();
    for r in &v.matched_rules {
        out.push_str(&format!(
            "[id \"{}\"] [msg \"{}\"] [data \"{}\"]",
            r.id,
            escape(&r.msg),
            escape(&r.data)
        ));
        if let Some(s) = r.severity {
            out.push_str(&format!(" [severity \"{s}\"]"));
        }
        for t in r.tags.iter() {
            out.push_str(&format!(" [tag \"{t}\"]"));
        }
        out.push_str(&format!(" against variable `{}'\n", r.matched_var_name));
    }
    out
}

/// Judges the engine's verdict for a stage. Stages that expect only a status
/// or a connection error are skipped: that is the HTTP server's answer, not
/// something the engine decides.
pub fn judge_verdict(stage: &Stage, v: &Verdict) -> Outcome {
    let e = &stage.expect;
    if !e.is_about_rules() {
        return Outcome::Skipped("expects only an HTTP status or error".into());
    }
    let missing: Vec<u64> = e
        .ids
        .iter()
        .copied()
        .filter(|id| !v.matched_ids.contains(id))
        .collect();
    let unexpected: Vec<u64> = e
        .no_ids
        .iter()
        .copied()
        .filter(|id| v.matched_ids.contains(id))
        .collect();
    let mut why = Vec::new();
    if !missing.is_empty() {
        why.push(format!("missing {missing:?}"));
    }
    if !unexpected.is_empty() {
        why.push(format!("unexpected {unexpected:?}"));
    }
    if !(e.log_matches.is_empty() && e.log_no_matches.is_empty()) {
        let log = log_text(v);
        for r in &e.log_matches {
            if !r.is_match(&log) {
                why.push(format!("log lacks /{r}/"));
            }
        }
        for r in &e.log_no_matches {
            if r.is_match(&log) {
                why.push(format!("log has /{r}/"));
            }
        }
    }
    if why.is_empty() {
        Outcome::Passed
    } else {
        why.push(format!("matched {:?}", v.matched_ids));
        Outcome::Failed(why.join("; "))
    }
}

/// Judges the answer of a running server (`Ok(status)`, or `Err` with why
/// there was none). A listed `status` is compared as is; otherwise 403 means
/// blocked: a stage expecting rule ids or log lines must be blocked, one that
/// only forbids them must not be.
pub fn judge_status(stage: &Stage, answer: Result<u16, String>) -> Outcome {
    let e = &stage.expect;
    let status = match answer {
        Err(_) if e.error => return Outcome::Passed,
        Err(why) => return Outcome::Failed(format!("no answer: {why}")),
        Ok(s) if e.error => return Outcome::Failed(format!("expected an error, got status {s}")),
        Ok(s) => s,
    };
    if !e.status.is_empty() {
        return if e.status.contains(&status) {
            Outcome::Passed
        } else {
            Outcome::Failed(format!("status {status}, expected {:?}", e.status))
        };
    }
    if e.wants_match() {
        if status == 403 {
            Outcome::Passed
        } else {
            Outcome::Failed(format!(
                "status {status}, expected 403 (rules {:?} should block)",
                e.ids
            ))
        }
    } else if e.is_about_rules() {
        if status == 403 {
            Outcome::Failed(format!(
                "status 403, expected no block (rules {:?} must not match)",
                e.no_ids
            ))
        } else {
            Outcome::Passed
        }
    } else {
        Outcome::Skipped("nothing to judge from outside".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::RuleMatch;

    const V4: &str = r#"
rule_id: 942100
tests:
  - test_id: 1
    stages:
      - input:
          method: POST
          uri: /post
          headers: {Host: localhost, X-Num: 5}
          data: "var=1 OR 1=1"
        output:
          log:
            expect_ids: [942100]
  - test_id: 2
    stages:
      - input: {uri: /, version: ""}
        output: {status: 400}
"#;

    const V33: &str = r#"
tests:
  - test_title: 942100-1
    stages:
      - stage:
          input:
            uri: /
            data: [a, b]
          output:
            log_contains: id "942100"
            status: [403, 200]
"#;

    fn verdict(ids: &[u64]) -> Verdict {
        Verdict {
            action: crate::request::Action::Pass,
            disrupted_by: None,
            matched_rules: ids
                .iter()
                .map(|&id| RuleMatch {
                    id,
                    phase: 2,
                    msg: "m".into(),
                    data: "found within ARGS:x".into(),
                    severity: Some(2),
                    tags: std::sync::Arc::from([]),
                    matched_var_name: "ARGS:x".into(),
                })
                .collect(),
            matched_ids: ids.to_vec(),
            anomaly_score: 0,
            outbound_anomaly_score: 0,
        }
    }

    #[test]
    fn reads_v4() {
        let f = parse(Path::new("x.yaml"), V4).unwrap();
        assert_eq!(f.tests[0].name, "942100-1");
        let s = &f.tests[0].stages[0];
        assert_eq!(s.expect.ids, vec![942100]);
        let req = s.request().unwrap();
        assert_eq!(req.method, "POST");
        assert!(req.headers.contains(&("X-Num".into(), b"5"[..].into())));
        assert!(req
            .headers
            .contains(&("Content-Length".into(), b"12"[..].into())));
        assert_eq!(f.tests[1].stages[0].expect.status, vec![400]);
        assert_eq!(f.tests[1].stages[0].request().unwrap().protocol, "HTTP/0.9");
        assert!(f.tests[1].stages[0]
            .raw_request()
            .starts_with(b"GET /\r\nConnection: close\r\n"));
        assert_eq!(
            judge_verdict(&f.tests[0].stages[0], &verdict(&[942100])),
            Outcome::Passed
        );
        assert!(matches!(
            judge_verdict(&f.tests[0].stages[0], &verdict(&[1])),
            Outcome::Failed(_)
        ));
        assert!(matches!(
            judge_verdict(&f.tests[1].stages[0], &verdict(&[])),
            Outcome::Skipped(_)
        ));
    }

    #[test]
    fn reads_v33() {
        let f = parse(Path::new("x.yaml"), V33).unwrap();
        let s = &f.tests[0].stages[0];
        assert_eq!(f.tests[0].name, "942100-1");
        assert_eq!(s.input.data.as_deref(), Some(&b"a\r\nb"[..]));
        assert_eq!(judge_verdict(s, &verdict(&[942100])), Outcome::Passed);
        assert!(matches!(
            judge_verdict(s, &verdict(&[9421000])),
            Outcome::Failed(_)
        ));
        assert_eq!(judge_status(s, Ok(200)), Outcome::Passed);
        assert!(matches!(judge_status(s, Ok(500)), Outcome::Failed(_)));
    }

    #[test]
    fn status_judging_reads_403_as_blocked() {
        let f = parse(Path::new("x.yaml"), V4).unwrap();
        let s = &f.tests[0].stages[0];
        assert_eq!(judge_status(s, Ok(403)), Outcome::Passed);
        assert!(matches!(judge_status(s, Ok(200)), Outcome::Failed(_)));
        assert!(matches!(
            judge_status(s, Err("reset".into())),
            Outcome::Failed(_)
        ));
    }

    #[test]
    fn malformed_yaml_names_the_file() {
        for bad in ["tests: [", "tests: 3", "tests:\n  - test_id: 1\n", "x: 1"] {
            let e = parse(Path::new("t/bad.yaml"), bad).unwrap_err();
            assert!(e.to_string().starts_with("t/bad.yaml: "), "{e}");
        }
        let e = parse(
            Path::new("b.yaml"),
            "tests:\n  - test_id: 1\n    stages:\n      - input: {}\n        output: {log: {match_regex: '('}}\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("match_regex"), "{e}");
    }
}
