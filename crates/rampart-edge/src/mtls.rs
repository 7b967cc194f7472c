//! Mutual TLS: what the edge keeps of a verified client certificate, and
//! the set of revoked serials it checks on every request.
//!
//! The handshake (rustls' WebPKI verifier, see [`crate::tls`]) has already
//! checked that the chain leads to a configured client CA and that the
//! certificate is within its validity period and allowed for client auth.
//! What is left here is naming the principal and refusing revoked serials;
//! the revocation list lives with the routing so that a reload swaps it
//! atomically with the routes.

use std::collections::HashSet;

use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;

/// A client certificate that passed the handshake's chain verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// The principal it names: the first URI SAN (for example a SPIFFE
    /// id), else the subject's common name, else the first DNS SAN, else
    /// `cert:<fingerprint>`.
    pub principal: String,
    /// The subject's common name, if any.
    pub common_name: Option<String>,
    /// The serial number as lowercase hex, no leading zeros.
    pub serial: String,
    /// SHA-256 of the DER certificate, lowercase hex.
    pub fingerprint: String,
}

impl ClientCert {
    /// Reads the leaf certificate. `None` when it cannot be parsed (the
    /// handshake would not have accepted it in the first place).
    pub fn from_der(der: &[u8]) -> Option<ClientCert> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let fingerprint = hex(&Sha256::digest(der));
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string);
        let mut uri = None;
        let mut dns = None;
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    GeneralName::URI(u) if uri.is_none() => uri = Some(u.to_string()),
                    GeneralName::DNSName(d) if dns.is_none() => dns = Some(d.to_string()),
                    _ => {}
                }
            }
        }
        let principal = uri
            .or_else(|| common_name.clone())
            .or(dns)
            .filter(|p| valid_principal(p))
            .unwrap_or_else(|| format!("cert:{fingerprint}"));
        let serial = rampart_config::normalise_serial(&hex(cert.raw_serial()))?;
        Some(ClientCert {
            principal,
            common_name,
            serial,
            fingerprint,
        })
    }
}

/// A name fit to be a principal id in logs and assertions: printable
/// ASCII without spaces or quotes, at most 256 bytes.
fn valid_principal(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 256
        && p.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
}

/// `bytes` as lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Serials refused although their certificates chain to a client CA.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevokedSerials(HashSet<String>);

impl RevokedSerials {
    /// From serials in any form [`rampart_config::normalise_serial`]
    /// accepts; entries that are not hex are ignored (config validation
    /// has refused them already).
    pub fn new<S: AsRef<str>>(serials: impl IntoIterator<Item = S>) -> RevokedSerials {
        RevokedSerials(
            serials
                .into_iter()
                .filter_map(|s| rampart_config::normalise_serial(s.as_ref()))
                .collect(),
        )
    }

    /// Whether `cert` is revoked.
    pub fn contains(&self, cert: &ClientCert) -> bool {
        self.0.contains(&cert.serial)
    }

    /// How many serials are listed.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_not_a_certificate() {
        assert_eq!(ClientCert::from_der(b"not a certificate"), None);
        assert_eq!(ClientCert::from_der(&[]), None);
    }

    #[test]
    fn principal_names_are_printable() {
        assert!(valid_principal("spiffe://example.org/billing"));
        assert!(!valid_principal("a b"));
        assert!(!valid_principal("evil\"name"));
        assert!(!valid_principal(""));
    }

    #[test]
    fn revoked_serials_normalise() {
        let r = RevokedSerials::new(["00:0A:ff", "zz"]);
        assert_eq!(r.len(), 1);
        let c = ClientCert {
            principal: "x".into(),
            common_name: None,
            serial: "aff".into(),
            fingerprint: String::new(),
        };
        assert!(r.contains(&c));
    }
}
