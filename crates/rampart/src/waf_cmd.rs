//! `rampart waf test`: the conformance runner. It reads go-ftw regression
//! tests (the OWASP CRS suite's format, through `rampart_waf::ftw`) and runs
//! each stage either through the engine loaded here from `--rules`, judged by
//! the rule ids that matched, or over HTTP(S) to a running edge (`--via`),
//! judged by the status alone because rule ids are not visible from outside:
//! 403 means blocked. Only the sending of requests lives here; reading and
//! judging tests is the WAF crate's.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rampart_waf::ftw::{self, Outcome, Summary, TestFile, CRS_ENGINE_SKIPS};
use rampart_waf::{Waf, WafBuilder};

use crate::cli::{WafCommand, WafTestArgs};
use crate::errors::CliError;

/// Judges one stage of the named test.
type Judge = dyn FnMut(&str, &ftw::Stage) -> Outcome;

/// Runs a `rampart waf` command; the exit code is 1 when a test failed.
pub fn run(cmd: WafCommand) -> Result<u8, CliError> {
    match cmd {
        WafCommand::Test(args) => test(&args),
    }
}

fn test(args: &WafTestArgs) -> Result<u8, CliError> {
    let bad = |e: rampart_waf::Error| CliError::Input(e.to_string());
    let mut paths = ftw::test_files(&args.tests).map_err(bad)?;
    if let Some(only) = &args.only {
        paths.retain(|p| {
            p.file_stem()
                .is_some_and(|s| s.to_string_lossy().starts_with(only.as_str()))
        });
    }
    // Every file is read before anything runs, so bad input stops the run
    // with one line naming the file.
    let files: Vec<TestFile> = paths
        .iter()
        .map(|p| ftw::load_file(p))
        .collect::<Result<_, _>>()
        .map_err(bad)?;

    let mut judge: Box<Judge> = match &args.via {
        Some(url) => {
            let target = Target::parse(url, args.ca.as_deref(), args.insecure)?;
            println!("judging by status from {url} (403 = blocked)");
            Box::new(move |_, stage| ftw::judge_status(stage, target.send(&stage.raw_request())))
        }
        None => {
            let waf = load_rules(&args.rules, args.paranoia)?;
            println!(
                "engine: {} rules at paranoia level {}",
                waf.rule_count(),
                args.paranoia
            );
            Box::new(move |name, stage| {
                if let Some(k) = CRS_ENGINE_SKIPS.iter().find(|k| k.test == name) {
                    return Outcome::Skipped(k.reason.into());
                }
                match stage.request() {
                    Ok(req) => ftw::judge_verdict(
                        stage,
                        &waf.evaluate_response(&req, &stage.backend_response(&req)),
                    ),
                    Err(why) => Outcome::Skipped(why),
                }
            })
        }
    };

    let mut summary = Summary::default();
    for f in &files {
        for t in &f.tests {
            let many = t.stages.len() > 1;
            for (n, s) in t.stages.iter().enumerate() {
                let outcome = judge(&t.name, s);
                let name = if many {
                    format!("{} stage {}", t.name, n + 1)
                } else {
                    t.name.clone()
                };
                match &outcome {
                    Outcome::Failed(why) => println!("FAIL {name}: {why}"),
                    Outcome::Skipped(why) => println!("SKIP {name}: {why}"),
                    Outcome::Passed => {}
                }
                summary.add(&outcome);
            }
        }
    }
    println!("{summary}");
    Ok(u8::from(summary.failed > 0))
}

/// Loads the rule paths in order, with CRS's test setup after the last
/// `crs-setup.conf*` (or first, when there is none).
fn load_rules(paths: &[PathBuf], paranoia: u8) -> Result<Waf, CliError> {
    let bad = |e: rampart_waf::Error| CliError::Input(e.to_string());
    let mut files = Vec::new();
    for p in paths {
        files.extend(ftw::rule_files(p).map_err(bad)?);
    }
    let setup_at = files
        .iter()
        .rposition(|f| {
            f.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("crs-setup.conf"))
        })
        .map_or(0, |i| i + 1);
    let setup_name = files
        .get(setup_at)
        .or(files.last())
        .and_then(|f| f.parent())
        .unwrap_or(Path::new("."))
        .join("rampart-test-setup.conf");
    let mut b = WafBuilder::new();
    for (i, f) in files.iter().enumerate() {
        if i == setup_at {
            b.load_str(&setup_name, &ftw::crs_test_setup(paranoia))
                .map_err(bad)?;
        }
        b.load_file(f).map_err(bad)?;
    }
    if setup_at >= files.len() {
        b.load_str(&setup_name, &ftw::crs_test_setup(paranoia))
            .map_err(bad)?;
    }
    b.build().map_err(bad)
}

/// Where `--via` sends requests.
struct Target {
    addr: String,
    host: String,
    tls: Option<Arc<rustls::ClientConfig>>,
}

const TIMEOUT: Duration = Duration::from_secs(10);

impl Target {
    fn parse(url: &str, ca: Option<&Path>, insecure: bool) -> Result<Target, CliError> {
        let bad = |m: &str| CliError::Input(format!("--via {url}: {m}"));
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad("expected http://HOST[:PORT] or https://HOST[:PORT]"));
        };
        let authority = rest.split('/').next().unwrap_or("");
        if authority.is_empty() {
            return Err(bad("no host"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !p.contains(']') => (
                h.to_string(),
                p.parse::<u16>().map_err(|_| bad("bad port"))?,
            ),
            _ => (authority.to_string(), if tls { 443 } else { 80 }),
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let tls = if tls {
            Some(Arc::new(client_config(ca, insecure).map_err(|m| bad(&m))?))
        } else {
            None
        };
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(Target { addr, host, tls })
    }

    /// Sends the bytes and returns the answer's status.
    fn send(&self, raw: &[u8]) -> Result<u16, String> {
        let addr = self
            .addr
            .to_socket_addrs()
            .map_err(|e| format!("{}: {e}", self.addr))?
            .next()
            .ok_or_else(|| format!("{}: no address", self.addr))?;
        let tcp = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(TIMEOUT))
            .and_then(|()| tcp.set_write_timeout(Some(TIMEOUT)))
            .map_err(|e| e.to_string())?;
        match &self.tls {
            None => exchange(tcp, raw),
            Some(cfg) => {
                let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|e| format!("{}: {e}", self.host))?;
                let conn =
                    rustls::ClientConnection::new(cfg.clone(), name).map_err(|e| e.to_string())?;
                exchange(rustls::StreamOwned::new(conn, tcp), raw)
            }
        }
    }
}

/// Writes the request and reads up to the end of the status line.
fn exchange(mut s: impl Read + Write, raw: &[u8]) -> Result<u16, String> {
    s.write_all(raw)
        .and_then(|()| s.flush())
        .map_err(|e| format!("sending: {e}"))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.contains(&b'\n') && got.len() < 8192 {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(buf.get(..n).unwrap_or_default()),
            Err(e) if got.is_empty() => return Err(format!("reading: {e}")),
            Err(_) => break,
        }
    }
    if got.is_empty() {
        return Err("connection closed without an answer".into());
    }
    let line = String::from_utf8_lossy(&got);
    let mut words = line.split_whitespace();
    match (
        words.next(),
        words.next().and_then(|c| c.parse::<u16>().ok()),
    ) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => Ok(code),
        _ => Err(format!(
            "not an HTTP answer: {:?}",
            line.lines().next().unwrap_or("")
        )),
    }
}

fn client_config(ca: Option<&Path>, insecure: bool) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    if insecure {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth());
    }
    let Some(ca) = ca else {
        return Err("an https URL needs --ca FILE or --insecure".into());
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))? {
        let c = c.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// `--insecure`: accepts any certificate (signatures on the handshake are
/// still checked), for a local edge with a throwaway certificate.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
