//! The development PKI: a CA made at init (its key sealed in the store; only
//! its certificate is written out, for clients to trust) and the server
//! certificates it issues when a node starts: the control API's, and the
//! edge's when the configuration gives it none.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rampart_core::Clock;
use rampart_store::{Expect, Keyring, SealedStore};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use zeroize::Zeroizing;

use crate::errors::CliError;

const TLS_NS: &str = "tls";
const STORE_KEY_PURPOSE: &str = "store";

/// The sealed view of the store that holds secrets of the node itself.
pub async fn sealed(keyring: &Keyring) -> Result<SealedStore, CliError> {
    let key = keyring.data_key(STORE_KEY_PURPOSE).await?;
    Ok(SealedStore::new(
        keyring.store().clone(),
        key,
        STORE_KEY_PURPOSE,
    ))
}

fn pki_err(e: rcgen::Error) -> CliError {
    CliError::Runtime(format!("certificate generation failed: {e}"))
}

fn validity(params: &mut CertificateParams, now: u64, days: i64) -> Result<(), CliError> {
    let now = time::OffsetDateTime::from_unix_timestamp(now as i64)
        .map_err(|e| CliError::Runtime(format!("clock out of range: {e}")))?;
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(days);
    Ok(())
}

/// A TLS server certificate's parameters: `names` plus the loopback
/// addresses, server authentication only, valid for `days` from `now`.
fn server_params(
    names: Vec<String>,
    common_name: &str,
    now: u64,
    days: i64,
) -> Result<CertificateParams, CliError> {
    let mut p = CertificateParams::new(names).map_err(pki_err)?;
    p.distinguished_name.push(DnType::CommonName, common_name);
    for ip in [
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    ] {
        p.subject_alt_names.push(SanType::IpAddress(ip));
    }
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut p, now, days)?;
    Ok(p)
}

/// Makes the development CA, stores it (its key sealed), and writes
/// `tls/ca.pem` into `dir`. Server certificates are issued from it when a
/// node starts (see [`control_server_config`]), so each node of a shared
/// store gets one naming its own address.
pub async fn generate_dev_pki(
    keyring: &Keyring,
    dir: &Path,
    clock: &dyn Clock,
) -> Result<(), CliError> {
    let now = clock.unix_secs();
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "Rampart development CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut ca, now, 3650)?;
    let ca_key = KeyPair::generate().map_err(pki_err)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(pki_err)?;

    let store = keyring.store();
    let sealed = sealed(keyring).await?;
    sealed
        .put(
            TLS_NS,
            "ca.key",
            &Zeroizing::new(ca_key.serialize_der()),
            Expect::Absent,
        )
        .await?;
    store
        .put(TLS_NS, "ca.der", ca_cert.der(), Expect::Absent)
        .await?;

    let tls_dir = dir.join("tls");
    std::fs::create_dir_all(&tls_dir)
        .and_then(|_| std::fs::write(tls_dir.join("ca.pem"), ca_cert.pem()))
        .map_err(|e| CliError::Input(format!("{}: {e}", tls_dir.display())))?;
    Ok(())
}

/// The development CA as an issuer, and its certificate.
async fn dev_issuer(
    keyring: &Keyring,
) -> Result<(Issuer<'static, KeyPair>, CertificateDer<'static>), CliError> {
    let store = keyring.store();
    let missing = || CliError::Input("the data directory holds no development CA".into());
    let ca_der = store.get(TLS_NS, "ca.der").await?.ok_or_else(missing)?;
    let (ca_key, _) = sealed(keyring)
        .await?
        .get(TLS_NS, "ca.key")
        .await?
        .ok_or_else(missing)?;
    let ca_key = KeyPair::try_from(ca_key.expose()).map_err(pki_err)?;
    let ca_cert = CertificateDer::from(ca_der.value);
    let issuer = Issuer::from_ca_cert_der(&ca_cert, ca_key).map_err(pki_err)?;
    Ok((issuer, ca_cert))
}

/// Writes `tls/ca.pem` into `dir` from the development CA a shared store
/// already holds (for a node that joins it).
pub async fn write_dev_ca(keyring: &Keyring, dir: &Path) -> Result<(), CliError> {
    let ca = keyring
        .store()
        .get(TLS_NS, "ca.der")
        .await?
        .ok_or_else(|| CliError::Input("the shared store holds no development CA".into()))?;
    let pem = pem::encode(&pem::Pem::new("CERTIFICATE", ca.value));
    let tls_dir = dir.join("tls");
    std::fs::create_dir_all(&tls_dir)
        .and_then(|_| std::fs::write(tls_dir.join("ca.pem"), pem))
        .map_err(|e| CliError::Input(format!("{}: {e}", tls_dir.display())))
}

/// The control API's TLS configuration: TLS 1.3 and 1.2 only, HTTP/2 and 1.1,
/// with a certificate issued now by the development CA for this node:
/// `localhost`, the loopback addresses and `listen_ip` (unless it is the
/// unspecified address). Issued at every start and kept in memory only, so
/// nodes sharing a store each name their own address, and a restart renews
/// it; clients trust the CA (`tls/ca.pem`), not the leaf.
///
/// With `client_ca` (PEM files, `[control] client_ca`), every connection
/// must present a certificate that chains to one of them: the handshake
/// fails without one.
pub async fn control_server_config(
    keyring: &Keyring,
    listen_ip: IpAddr,
    client_ca: &[std::path::PathBuf],
    clock: &dyn Clock,
) -> Result<Arc<rustls::ServerConfig>, CliError> {
    let (issuer, ca_cert) = dev_issuer(keyring).await?;
    let mut names = vec!["localhost".to_string()];
    let always = [
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    ];
    if !listen_ip.is_unspecified() && !always.contains(&listen_ip) {
        names.push(listen_ip.to_string());
    }
    let params = server_params(names, "Rampart control API", clock.unix_secs(), 397)?;
    let key = KeyPair::generate().map_err(pki_err)?;
    let cert = params.signed_by(&key, &issuer).map_err(pki_err)?;
    let chain = vec![cert.der().clone(), ca_cert];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| CliError::Runtime(format!("TLS configuration: {e}")))?;
    let builder = if client_ca.is_empty() {
        builder.with_no_client_auth()
    } else {
        builder.with_client_cert_verifier(client_verifier(client_ca, provider)?)
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| CliError::Runtime(format!("TLS certificate: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A certificate for the edge signed by the development CA, for `names`
/// (plus localhost and the loopback addresses): (chain PEM, key PEM). Used
/// when the configuration gives the edge no certificates of its own.
pub async fn edge_dev_certificate(
    keyring: &Keyring,
    names: &[String],
    clock: &dyn Clock,
) -> Result<(String, Zeroizing<String>), CliError> {
    let (issuer, _) = dev_issuer(keyring).await?;
    let mut all: Vec<String> = vec!["localhost".into()];
    for n in names {
        if !all.contains(n) && n.parse::<IpAddr>().is_err() {
            all.push(n.clone());
        }
    }
    let params = server_params(all, "Rampart edge (development)", clock.unix_secs(), 90)?;
    let key = KeyPair::generate().map_err(pki_err)?;
    let cert = params.signed_by(&key, &issuer).map_err(pki_err)?;
    // The leaf alone: clients trust the development CA itself.
    Ok((cert.pem(), Zeroizing::new(key.serialize_pem())))
}

/// A verifier that requires a client certificate chaining to one of the CA
/// certificates in the PEM files `paths`.
fn client_verifier(
    paths: &[std::path::PathBuf],
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, CliError> {
    let mut roots = rustls::RootCertStore::empty();
    for path in paths {
        let bad =
            |why: String| CliError::Input(format!("control.client_ca: {}: {why}", path.display()));
        let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        if rampart_edge::add_pem_certificates(&mut roots, &pem).map_err(bad)? == 0 {
            return Err(bad("no CA certificate in the file".into()));
        }
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| CliError::Input(format!("control.client_ca: {e}")))
}
