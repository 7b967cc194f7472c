//! The one helper every end-to-end test goes through: a temporary directory,
//! the real `rampart` binary run in it, and a client for its control API.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_rampart");

/// A scratch directory to run rampart in.
pub struct Rampart {
    pub dir: tempfile::TempDir,
}

impl Rampart {
    pub fn new() -> Self {
        Rampart {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `rampart ARGS` in the scratch directory, with no inherited RAMPART_ settings.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args).current_dir(self.dir.path());
        for (k, _) in std::env::vars() {
            if k.starts_with("RAMPART_") {
                c.env_remove(k);
            }
        }
        c.env("RAMPART_LOG", "warn");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// `rampart init` into `./data`; returns the admin credential it printed.
    pub fn init(&self) -> String {
        let out = self.run(&["init", "--data-dir", "data"]);
        assert!(out.status.success(), "{}", stderr(&out));
        credential(&stdout(&out))
    }

    /// Starts `rampart up ARGS --control-listen 127.0.0.1:0` and waits until it listens.
    pub fn up(&self, args: &[&str]) -> Server {
        self.up_with(self.cmd(&[]), args)
    }

    pub fn up_with(&self, cmd: Command, args: &[&str]) -> Server {
        self.start(cmd, args, None)
    }

    /// Like [`Rampart::up`], with a client that presents `cert`/`key`
    /// (PEM): for a control API that requires client certificates.
    pub fn up_presenting(&self, args: &[&str], cert: &str, key: &str) -> Server {
        self.start(self.cmd(&[]), args, Some((cert, key)))
    }

    fn start(&self, mut cmd: Command, args: &[&str], client: Option<(&str, &str)>) -> Server {
        cmd.arg("up").args(args);
        if !args.contains(&"--control-listen") {
            cmd.args(["--control-listen", "127.0.0.1:0"]);
        }
        cmd.args(["--edge-http-listen", "127.0.0.1:0"])
            .args(["--edge-https-listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("control API: https://") {
                        break rest.split_whitespace().next().unwrap().to_string();
                    }
                    seen.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    let o = child.wait_with_output().unwrap();
                    panic!(
                        "rampart up did not start: stdout {seen:?} stderr {}",
                        String::from_utf8_lossy(&o.stderr)
                    );
                }
            }
        };
        let data = args
            .windows(2)
            .find(|w| w[0] == "--data-dir")
            .map(|w| w[1].to_string())
            .unwrap_or_else(|| "rampart-data".to_string());
        let ca = std::fs::read(self.path(&data).join("tls/ca.pem")).unwrap();
        let server = Server {
            child,
            addr,
            agent: agent(&ca, client),
            lines: rx,
            printed: seen,
        };
        server.wait_ready();
        server
    }
}

fn agent(ca_pem: &[u8], client: Option<(&str, &str)>) -> ureq::Agent {
    use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};
    let cert = Certificate::from_pem(ca_pem).unwrap();
    let client = client.map(|(cert, key)| {
        ClientCert::new_with_certs(
            &[Certificate::from_pem(cert.as_bytes()).unwrap()],
            PrivateKey::from_pem(key.as_bytes()).unwrap(),
        )
    });
    let tls = TlsConfig::builder()
        .root_certs(RootCerts::Specific(Arc::new(vec![cert])))
        .client_cert(client)
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .new_agent()
}

/// A running `rampart up`.
pub struct Server {
    pub child: Child,
    pub addr: String,
    agent: ureq::Agent,
    lines: mpsc::Receiver<String>,
    /// What it printed before it listened.
    pub printed: Vec<String>,
}

/// A response, read whole.
pub struct Resp {
    pub status: u16,
    pub request_id: Option<String>,
    pub content_type: String,
    /// The `Retry-After` header, if any.
    pub retry_after: Option<String>,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    pub fn request(&self, method: &str, path: &str, token: Option<&str>) -> Resp {
        self.exchange(method, path, token, None)
    }

    /// A request with a raw body (JSON content type).
    pub fn send(&self, method: &str, path: &str, token: Option<&str>, body: &str) -> Resp {
        self.exchange(method, path, token, Some(body))
    }

    fn exchange(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Resp {
        let url = self.url(path);
        let mut req = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let result = match body {
            Some(b) => self.agent.run(
                req.header("Content-Type", "application/json")
                    .body(b.to_string())
                    .unwrap(),
            ),
            None => self.agent.run(req.body(()).unwrap()),
        };
        let mut resp = result.unwrap();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
        };
        let (request_id, content_type, retry_after) = (
            header("x-request-id"),
            header("content-type").unwrap_or_default(),
            header("retry-after"),
        );
        Resp {
            status: resp.status().as_u16(),
            request_id,
            content_type,
            retry_after,
            body: resp.body_mut().read_to_string().unwrap_or_default(),
        }
    }

    pub fn post(&self, path: &str, token: Option<&str>, body: serde_json::Value) -> Resp {
        self.send("POST", path, token, &body.to_string())
    }

    /// `https://127.0.0.1:PORT`, for client commands.
    pub fn base(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> Resp {
        self.request("GET", path, token)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut r) = self.agent.get(self.url("/readyz")).call() {
                if r.status() == 200 {
                    let _ = r.body_mut().read_to_string();
                    return;
                }
            }
            assert!(Instant::now() < deadline, "rampart never became ready");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits for the process to exit; returns its status and
    /// what it printed after starting.
    pub fn terminate(mut self) -> (ExitStatus, Vec<String>) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "rampart ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader thread ends at EOF, now that the process is gone.
        let mut lines = Vec::new();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            lines.push(l);
        }
        (status, lines)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The credential line `rampart init` prints.
pub fn credential(out: &str) -> String {
    out.lines()
        .map(str::trim)
        .find(|l| l.starts_with("rk_admin_"))
        .unwrap_or_else(|| panic!("no credential in {out}"))
        .to_string()
}

/// Every file under `dir`, for "wrote nothing" checks.
pub fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            out.push(e.path());
            if e.path().is_dir() {
                out.extend(tree(&e.path()));
            }
        }
    }
    out.sort();
    out
}

/// A URL to a new, empty database on the PostgreSQL server that
/// `scripts/with-postgres` started (`RAMPART_TEST_PG_URL`), or `None`, with
/// a note, when there is none.
pub fn fresh_pg_database() -> Option<String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(rampart_store::testing::fresh_pg_database("rampart_e2e"))
}

/// The Redis server that `scripts/with-redis` started
/// (`RAMPART_TEST_REDIS_URL`), or `None`, with a SKIP note, when there is
/// none.
pub fn test_redis_url() -> Option<String> {
    let url = std::env::var("RAMPART_TEST_REDIS_URL").ok();
    if url.is_none() {
        println!("SKIP: RAMPART_TEST_REDIS_URL is not set; run under scripts/with-redis");
    }
    url
}
