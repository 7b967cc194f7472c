//! The HTTPS listener's rustls configuration: TLS 1.2 and 1.3 only (ring
//! provider), ALPN `h2` and `http/1.1`, a certificate chosen by SNI, and,
//! for mutual TLS, a WebPKI verifier of client certificates.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::config::{CertConfig, CertSource, ClientAuth};
use crate::error::{Error, Result};

/// The certificates by name.
#[derive(Debug)]
struct CertSet {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
    /// Each certificate's first name and when its leaf expires (seconds
    /// since the Unix epoch), in config order.
    expiry: Vec<(String, i64)>,
}

/// Chooses a certificate by server name: exact, then `*.` wildcard one
/// label deep, then the default (the first configured). The set can be
/// swapped while serving; handshakes already under way keep the old one.
#[derive(Debug)]
pub struct SniResolver {
    set: RwLock<Arc<CertSet>>,
}

impl SniResolver {
    /// Each certificate served (by its first name) and when it expires,
    /// in seconds since the Unix epoch.
    pub fn expiry(&self) -> Vec<(String, i64)> {
        self.set
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .expiry
            .clone()
    }

    /// Loads `certs` and replaces the current set; on error nothing changes.
    pub fn reload(&self, certs: &[CertConfig]) -> Result<()> {
        let new = Arc::new(load_set(certs)?);
        *self.set.write().unwrap_or_else(|p| p.into_inner()) = new;
        Ok(())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = self.set.read().unwrap_or_else(|p| p.into_inner()).clone();
        set.pick(hello.server_name())
    }
}

impl CertSet {
    fn pick(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = server_name else {
            return Some(self.default.clone());
        };
        let name = name.to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return Some(k.clone());
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(k) = self.wildcard.get(parent) {
                return Some(k.clone());
            }
        }
        Some(self.default.clone())
    }
}

/// The HTTPS listener's protocol versions and session resumption.
///
/// Resumption lets a returning client skip the key exchange's signature and
/// certificate (a full handshake costs the edge an ECDSA or RSA signature).
/// By default it works from a cache of sessions held in memory, as nginx's
/// `ssl_session_cache` in Mozilla's recommended configuration; TLS 1.3
/// resumption still runs an (EC)DHE exchange, so forward secrecy holds.
/// Stateless tickets (`session_tickets`) let sessions outlive the cache
/// but are encrypted under a ticket key that, until it rotates (rustls
/// rotates it every 6 hours), could decrypt them all, which is why
/// Mozilla's configuration turns them off and so does the default here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsSettings {
    /// TLS 1.3 only; else 1.2 and 1.3.
    pub tls13_only: bool,
    /// Sessions kept for resumption (0: none).
    pub session_cache: usize,
    /// Stateless session tickets.
    pub session_tickets: bool,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            tls13_only: false,
            session_cache: 20_000,
            session_tickets: false,
        }
    }
}

/// Builds the server configuration; the resolver allows certificate reload.
/// With `client_auth`, clients are asked for a certificate that chains to
/// its CAs (and must send one when it is `required`).
pub fn server_config(
    certs: &[CertConfig],
    client_auth: Option<&ClientAuth>,
    settings: &TlsSettings,
) -> Result<(Arc<ServerConfig>, Arc<SniResolver>)> {
    let resolver = Arc::new(SniResolver {
        set: RwLock::new(Arc::new(load_set(certs)?)),
    });
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&'static rustls::SupportedProtocolVersion] = if settings.tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(versions)?;
    let builder = match client_auth {
        None => builder.with_no_client_auth(),
        Some(ca) => builder.with_client_cert_verifier(client_verifier(ca, provider)?),
    };
    let mut cfg = builder.with_cert_resolver(resolver.clone());
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    cfg.session_storage = match settings.session_cache {
        0 => Arc::new(rustls::server::NoServerSessionStorage {}),
        n => rustls::server::ServerSessionMemoryCache::new(n),
    };
    if settings.session_tickets {
        cfg.ticketer = rustls::crypto::ring::Ticketer::new()?;
    } else if settings.session_cache == 0 {
        // No ticket a client could use: send none.
        cfg.send_tls13_tickets = 0;
    }
    Ok((Arc::new(cfg), resolver))
}

/// Adds every certificate in `pem` to `roots`; returns how many, or what
/// was wrong with the PEM or a certificate. The one reader of CA files for
/// client verifiers (the edge's and the control API's) and for TLS to
/// services.
pub fn add_pem_certificates(
    roots: &mut rustls::RootCertStore,
    pem: &[u8],
) -> std::result::Result<usize, String> {
    let mut n = 0;
    for der in CertificateDer::pem_slice_iter(pem) {
        let der = der.map_err(|e| format!("PEM: {e}"))?;
        roots.add(der).map_err(|e| e.to_string())?;
        n += 1;
    }
    Ok(n)
}

fn client_verifier(
    ca: &ClientAuth,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
    let bad = |reason: String| Error::BadCert {
        name: "client CA".into(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    for pem in &ca.ca_pem {
        add_pem_certificates(&mut roots, pem.as_bytes()).map_err(bad)?;
    }
    if roots.is_empty() {
        return Err(bad("no CA certificate in PEM".into()));
    }
    let b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let b = if ca.required {
        b
    } else {
        b.allow_unauthenticated()
    };
    b.build().map_err(|e| bad(e.to_string()))
}

/// The newest modification time among file-backed certificates and keys.
pub fn newest_mtime(certs: &[CertConfig]) -> Option<SystemTime> {
    certs
        .iter()
        .filter_map(|c| match &c.source {
            CertSource::Files { cert, key } => Some([cert, key]),
            CertSource::Pem { .. } => None,
        })
        .flatten()
        .filter_map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .max()
}

fn load_set(certs: &[CertConfig]) -> Result<CertSet> {
    let provider = rustls::crypto::ring::default_provider();
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    let mut default = None;
    let mut expiry = Vec::new();
    for c in certs {
        let key = Arc::new(load(c, &provider)?);
        default.get_or_insert_with(|| key.clone());
        if let Some(t) = key.cert.first().and_then(|der| not_after(der)) {
            expiry.push((c.names.first().cloned().unwrap_or_default(), t));
        }
        for n in &c.names {
            let n = n.to_ascii_lowercase();
            match n.strip_prefix("*.") {
                Some(parent) => wildcard.insert(parent.to_string(), key.clone()),
                None => exact.insert(n, key.clone()),
            };
        }
    }
    let default = default.ok_or(Error::NoCertificates)?;
    Ok(CertSet {
        exact,
        wildcard,
        default,
        expiry,
    })
}

/// When the certificate `der` expires, in seconds since the Unix epoch.
pub fn not_after(der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

fn load(c: &CertConfig, provider: &rustls::crypto::CryptoProvider) -> Result<CertifiedKey> {
    let name = c.names.first().cloned().unwrap_or_default();
    let bad = |reason: String| Error::BadCert {
        name: name.clone(),
        reason,
    };
    let (cert_pem, key_pem) = match &c.source {
        CertSource::Pem { cert, key } => (cert.as_bytes().to_vec(), key.as_bytes().to_vec()),
        CertSource::Files { cert, key } => (read(cert)?, read(key)?),
    };
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("certificate PEM: {e}")))?;
    if chain.is_empty() {
        return Err(bad("no certificate in PEM".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| bad(format!("key PEM: {e}")))?;
    let ck = CertifiedKey::from_der(chain, key, provider).map_err(|e| bad(e.to_string()))?;
    Ok(ck)
}

fn read(p: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(p).map_err(|source| Error::ReadCert {
        path: p.display().to_string(),
        source,
    })
}
