//! `rampart config check`'s second pass: the files a valid config names
//! (certificates and keys, CA bundles, WAF rules, JSON Schemas), read and
//! parsed as `rampart up` will read them, so that a deploy pipeline finds
//! a missing or broken file before a node does. Problems name the field
//! and the file, never a key's contents.

use std::path::Path;

use rampart_config::Config;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Every problem with the files `config` names, one line each; `now` (in
/// seconds since the Unix epoch) finds expired edge certificates.
pub fn problems(config: &Config, now: i64) -> Vec<String> {
    let mut out = Vec::new();
    for (i, ca) in config.control.client_ca.iter().enumerate() {
        certificates(&mut out, &format!("control.client_ca[{i}]"), ca);
    }
    if let rampart_config::StoreBackend::Postgres(pg) = &config.store {
        if let Some(ca) = &pg.tls_ca {
            certificates(&mut out, "store.tls_ca", ca);
        }
    }
    if let Some(ca) = config.redis.as_ref().and_then(|r| r.tls_ca.as_ref()) {
        certificates(&mut out, "redis.tls_ca", ca);
    }
    for (i, s) in config.services.iter().enumerate() {
        if let Some(ca) = &s.tls_ca {
            certificates(&mut out, &format!("services[{i}].tls_ca"), ca);
        }
        if let Some(id) = &s.tls_client {
            certificates(
                &mut out,
                &format!("services[{i}].tls_client_cert"),
                &id.cert,
            );
            private_key(&mut out, &format!("services[{i}].tls_client_key"), &id.key);
        }
    }
    if let Some(edge) = &config.edge {
        for (i, c) in edge.certificates.iter().enumerate() {
            let field = format!("edge.certificates[{i}].cert");
            if let Some(leaf) = certificates(&mut out, &field, &c.cert) {
                if rampart_edge::certificate_not_after(&leaf).is_some_and(|t| t <= now) {
                    out.push(format!(
                        "{field}: {}: the certificate has expired",
                        c.cert.display()
                    ));
                }
            }
            private_key(&mut out, &format!("edge.certificates[{i}].key"), &c.key);
        }
        for (i, ca) in edge.client_ca.iter().enumerate() {
            certificates(&mut out, &format!("edge.client_ca[{i}]"), ca);
        }
        if !edge.waf_rules.is_empty() {
            if let Err(e) = crate::edge::load_waf(&edge.waf_rules) {
                out.push(format!("edge.waf_rules: {e}"));
            }
        }
    }
    for (i, r) in config.routes.iter().enumerate() {
        if let Some(schema) = &r.json_schema {
            let field = format!("routes[{i}].json_schema");
            if let Some(bytes) = read(&mut out, &field, schema) {
                if let Err(e) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                    out.push(format!("{field}: {}: not JSON: {e}", schema.display()));
                }
            }
        }
    }
    out
}

fn read(out: &mut Vec<String>, field: &str, path: &Path) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(b) => Some(b),
        Err(e) => {
            out.push(format!("{field}: {}: {e}", path.display()));
            None
        }
    }
}

/// A PEM file with at least one certificate, all of them parsable;
/// returns the first.
fn certificates(
    out: &mut Vec<String>,
    field: &str,
    path: &Path,
) -> Option<CertificateDer<'static>> {
    let pem = read(out, field, path)?;
    let mut first = None;
    for der in CertificateDer::pem_slice_iter(&pem) {
        match der {
            Ok(d) => {
                first.get_or_insert(d);
            }
            Err(e) => {
                out.push(format!("{field}: {}: bad PEM: {e}", path.display()));
                return None;
            }
        }
    }
    if first.is_none() {
        out.push(format!(
            "{field}: {}: no certificate in the file",
            path.display()
        ));
    }
    first
}

/// A PEM file holding a private key. Its contents never reach a message.
fn private_key(out: &mut Vec<String>, field: &str, path: &Path) {
    let Some(pem) = read(out, field, path) else {
        return;
    };
    let pem = zeroize::Zeroizing::new(pem);
    if PrivateKeyDer::from_pem_slice(&pem).is_err() {
        out.push(format!(
            "{field}: {}: no PEM private key in the file",
            path.display()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_broken_files_are_named_by_field() {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
        std::fs::write(dir.path().join("good.pem"), cert.cert.pem()).unwrap();
        std::fs::write(
            dir.path().join("good.key"),
            cert.signing_key.serialize_pem(),
        )
        .unwrap();
        std::fs::write(dir.path().join("junk.key"), "secret words\n").unwrap();
        let old_key = rcgen::KeyPair::generate().unwrap();
        let mut old = rcgen::CertificateParams::new(vec!["c.test".to_string()]).unwrap();
        old.not_before = rcgen::date_time_ymd(2000, 1, 1);
        old.not_after = rcgen::date_time_ymd(2001, 1, 1);
        let old = old.self_signed(&old_key).unwrap();
        std::fs::write(dir.path().join("old.pem"), old.pem()).unwrap();
        std::fs::write(dir.path().join("old.key"), old_key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("empty.pem"), "").unwrap();
        std::fs::write(
            dir.path().join("bad.conf"),
            "SecRule ARGS \"@rx a\" \"id:1,phase:2,nosuchaction\"\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("s.json"), "{not json").unwrap();
        let text = "[control]\nclient_ca = [\"missing.pem\"]\n\
                    [edge]\nclient_ca = [\"empty.pem\"]\nwaf_rules = [\"bad.conf\"]\n\
                    [[edge.certificates]]\nnames = [\"a.test\"]\ncert = \"good.pem\"\nkey = \"junk.key\"\n\
                    [[edge.certificates]]\nnames = [\"b.test\"]\ncert = \"good.pem\"\nkey = \"good.key\"\n
                    [[edge.certificates]]\nnames = [\"c.test\"]\ncert = \"old.pem\"\nkey = \"old.key\"\n\
                    [[environments]]\nname = \"p\"\n[[services]]\nname = \"a\"\nenvironment = \"p\"\nport = 1\n\
                    [[routes]]\nhost = \"a.test\"\nservice = \"a\"\njson_schema = \"s.json\"\n";
        std::fs::write(dir.path().join("r.toml"), text).unwrap();
        let config = Config::load(&dir.path().join("r.toml")).unwrap();
        // 2027-01-15: after old.pem expired, long before good.pem does.
        let p = problems(&config, 1_800_000_000);
        let fields: Vec<&str> = p.iter().map(|l| l.split(':').next().unwrap()).collect();
        assert_eq!(
            fields,
            [
                "control.client_ca[0]",
                "edge.certificates[0].key",
                "edge.certificates[2].cert",
                "edge.client_ca[0]",
                "edge.waf_rules",
                "routes[0].json_schema"
            ],
            "{p:#?}"
        );
        assert!(p.iter().all(|l| !l.contains("secret words")), "{p:#?}");
        assert!(p[2].contains("expired"), "{}", p[2]);
        assert!(p[4].contains("bad.conf"), "{}", p[4]);
    }
}
