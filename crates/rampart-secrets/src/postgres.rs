//! PostgreSQL password rotation, in the four steps Secrets Manager's
//! rotation functions use: stage the new password as a pending version,
//! set it on the server, test a login with it, and only then make it
//! current. A failure before the last step puts the old password back.
//! The server is sent a SCRAM-SHA-256 verifier of the new password (with a
//! fresh salt), never the password itself, so its statement logs and
//! statistics do not hold it.
//!
//! Credentials never cross an unencrypted connection to another machine:
//! a server that is not on loopback is reached over TLS only, its
//! certificate checked against the CA the secret names (`tls_ca`) and its
//! name against `host`, with SCRAM channel binding required, so that a
//! machine in the middle can neither ask for the password in the clear nor
//! relay the login.

use std::time::Duration;

use rampart_crypto::random_array;
use serde::{Deserialize, Serialize};
use tokio_postgres::config::{ChannelBinding, SslMode};
use tokio_postgres::{Config, NoTls};
use zeroize::Zeroize;

/// The value of a secret of kind `postgres` (JSON).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSecret {
    /// Server host: a name or address. One that is not loopback
    /// (`localhost`, `127.0.0.0/8`, `::1`) is reached only over TLS, and
    /// must then be the name the server's certificate carries.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Database to log in to.
    pub dbname: String,
    /// The role whose password this secret holds.
    pub user: String,
    /// Its password.
    pub password: String,
    /// How to reach the server as a role allowed to `ALTER ROLE` it.
    pub admin: PostgresAdmin,
    /// The CA certificate(s), PEM, that sign the server's certificate. Given,
    /// every connection is TLS (1.2 or 1.3) with the certificate and host
    /// name checked and SCRAM channel binding required; needed unless the
    /// host is loopback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<String>,
}

/// The admin credentials rotation uses.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum PostgresAdmin {
    /// Given inline.
    Inline {
        /// Admin role.
        user: String,
        /// Its password.
        password: String,
    },
    /// Another `postgres` secret of the same service, whose `user` and
    /// `password` are the admin's.
    Secret {
        /// That secret's name.
        name: String,
    },
}

impl Drop for PostgresSecret {
    fn drop(&mut self) {
        self.password.zeroize();
        if let PostgresAdmin::Inline { password, .. } = &mut self.admin {
            password.zeroize();
        }
    }
}

impl std::fmt::Debug for PostgresSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSecret")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .field("user", &self.user)
            .field("password", &"[redacted]")
            .finish_non_exhaustive()
    }
}

/// Why a value does not parse as a [`PostgresSecret`], without quoting any
/// of it: serde's own messages quote the values they reject (a password of
/// the wrong type, or another secret named as the admin one), and this text
/// goes into errors and audit records.
pub(crate) fn shape_error(e: &serde_json::Error) -> String {
    let what = match e.classify() {
        serde_json::error::Category::Data => "a field is missing, unknown or of the wrong type",
        _ => "not valid JSON",
    };
    format!(
        "not a postgres secret: {what} (line {}, column {})",
        e.line(),
        e.column()
    )
}

impl PostgresSecret {
    /// Checks how the server would be reached: a host that is not loopback
    /// needs `tls_ca`, and `tls_ca` must hold a usable CA certificate.
    /// The error names the field and quotes nothing of the value.
    pub fn check_transport(&self) -> Result<(), (&'static str, String)> {
        match &self.tls_ca {
            Some(pem) => tls_config(pem).map(|_| ()).map_err(|e| ("tls_ca", e)),
            None if is_loopback(&self.host) => Ok(()),
            None => Err((
                "tls_ca",
                "the host is not loopback: give tls_ca, the PEM of the CA that signs the server's certificate (credentials are never sent over an unencrypted connection to another machine)".into(),
            )),
        }
    }
}

/// Whether `host` names this machine: `localhost` or a loopback address.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A TLS client configuration trusting only the CA certificates in `pem`.
fn tls_config(pem: &str) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|_| "not valid PEM".to_owned())?;
        roots
            .add(cert)
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The steps of a rotation, named in errors and audit records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationStep {
    /// Reading the secret and its admin credentials.
    Prepare,
    /// Storing the new password as the pending version.
    Stage,
    /// `ALTER ROLE … PASSWORD` through the admin connection.
    SetPassword,
    /// Logging in with the new password.
    Verify,
    /// Making the pending version current.
    Promote,
}

impl std::fmt::Display for RotationStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RotationStep::Prepare => "prepare",
            RotationStep::Stage => "stage",
            RotationStep::SetPassword => "set-password",
            RotationStep::Verify => "verify",
            RotationStep::Promote => "promote",
        })
    }
}

/// A failure to inject into rotation, for tests of the failure paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationFault {
    /// The login check with the new password fails.
    FailVerify,
    /// Making the pending version current fails.
    FailPromote,
    /// The process dies right after the new password reached the server:
    /// rotation stops there, leaving the staged version pending and
    /// nothing put back (what a crash or kill would leave).
    CrashAfterSet,
    /// The process dies right after staging, before the server was asked.
    CrashAfterStage,
}

/// A strong password: 40 characters from `[A-Za-z0-9]` (about 238 bits),
/// so it never needs quoting in SQL, URLs or shells.
pub fn generate_password() -> Result<String, rampart_crypto::CryptoError> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(40);
    while out.len() < 40 {
        for b in random_array::<64>()? {
            // 62 * 4 = 248: rejecting bytes above it keeps the choice uniform.
            if usize::from(b) < ALPHABET.len() * 4 && out.len() < 40 {
                if let Some(&c) = ALPHABET.get(usize::from(b) % ALPHABET.len()) {
                    out.push(char::from(c));
                }
            }
        }
    }
    Ok(out)
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Logs in to `target`'s server as `user`, over TLS as
/// [`PostgresSecret::check_transport`] demands.
async fn connect(
    target: &PostgresSecret,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, String> {
    target
        .check_transport()
        .map_err(|(field, why)| format!("{field}: {why}"))?;
    let mut cfg = Config::new();
    cfg.host(&target.host)
        .port(target.port)
        .dbname(&target.dbname)
        .user(user)
        .password(password)
        .connect_timeout(Duration::from_secs(10));
    let client = match &target.tls_ca {
        Some(pem) => {
            cfg.ssl_mode(SslMode::Require)
                .channel_binding(ChannelBinding::Require);
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(pem)?);
            let (client, connection) = cfg
                .connect(tls)
                .await
                .map_err(|e| rampart_store::pg_message(&e))?;
            tokio::spawn(connection);
            client
        }
        None => {
            cfg.ssl_mode(SslMode::Disable);
            let (client, connection) = cfg
                .connect(NoTls)
                .await
                .map_err(|e| rampart_store::pg_message(&e))?;
            tokio::spawn(connection);
            client
        }
    };
    Ok(client)
}

/// Sets `target.user`'s password to `password` through the admin role.
pub(crate) async fn set_password(
    target: &PostgresSecret,
    admin_user: &str,
    admin_password: &str,
    password: &str,
) -> Result<(), String> {
    let client = connect(target, admin_user, admin_password)
        .await
        .map_err(|e| format!("admin login as {admin_user}: {e}"))?;
    // The server is sent a SCRAM-SHA-256 verifier (fresh salt), never the
    // password: statement logs, `pg_stat_activity` and
    // `pg_stat_statements` on the server see only the verifier, as with
    // psql's `\password`. ALTER ROLE takes no bind parameters; the
    // verifier is quoted as a literal (it holds no quote anyway).
    let mut verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    let mut sql = format!(
        "ALTER ROLE {} WITH PASSWORD {}",
        quote_ident(&target.user),
        quote_literal(&verifier)
    );
    verifier.zeroize();
    let res = client.batch_execute(&sql).await;
    sql.zeroize();
    res.map_err(|e| format!("ALTER ROLE {}: {}", target.user, e))
}

/// Logs in as `target.user` with `password` and runs `SELECT 1`.
pub(crate) async fn check_login(target: &PostgresSecret, password: &str) -> Result<(), String> {
    let client = connect(target, &target.user, password)
        .await
        .map_err(|e| format!("login as {}: {e}", target.user))?;
    client
        .simple_query("SELECT 1")
        .await
        .map(|_| ())
        .map_err(|e| format!("SELECT 1 as {}: {e}", target.user))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_long_alphanumeric_and_differ() {
        let a = generate_password().unwrap();
        let b = generate_password().unwrap();
        assert_eq!(a.len(), 40);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "LOCALHOST",
            "127.0.0.1",
            "127.8.9.10",
            "::1",
            "[::1]",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in [
            "db",
            "localhost.evil.example",
            "10.0.0.1",
            "::ffff:10.0.0.1",
            "0.0.0.0",
            "",
        ] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn debug_hides_passwords_and_json_is_strict() {
        let s: PostgresSecret = serde_json::from_str(
            r#"{"host":"127.0.0.1","port":5432,"dbname":"app","user":"app","password":"hunter2",
                "admin":{"type":"inline","user":"postgres","password":"root-pw"}}"#,
        )
        .unwrap();
        let d = format!("{s:?}");
        assert!(!d.contains("hunter2") && !d.contains("root-pw"), "{d}");
        assert!(serde_json::from_str::<PostgresSecret>(r#"{"host":"h","port":1,"dbname":"d","user":"u","password":"p","admin":{"type":"secret","name":"x"},"extra":1}"#).is_err());
    }
}
