//! The bootstrap admin credential that `rampart init` prints once.
//!
//! Format: `rk_admin_<id>_<secret>`: a visible prefix naming what it is, a
//! 16-hex-digit id to look it up by, and 256 bits of CSPRNG secret in
//! base64url. The store keeps only HMAC-SHA-256(pepper, secret), the pepper
//! itself wrapped by the root key; verification compares in constant time.
//! In the identity plane it acts as the local operator, an unelevated
//! platform admin (see the `api` module's doc); identity API keys and user
//! logins are managed there.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use std::collections::HashMap;
use std::sync::RwLock;

use base64::Engine;
use rampart_core::SharedClock;
use rampart_crypto::{ct_eq, hex, hmac_sha256, random_array, SecretBytes};
use rampart_store::{Expect, Keyring, Store, StoreError};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::errors::CliError;

const NS: &str = "credentials";
const PEPPER: &str = "identity/pepper";
const PREFIX: &str = "rk_admin_";
const ID_LEN: usize = 16;
const SECRET_LEN: usize = 43;

/// The stored form of a credential: no secret in it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    id: String,
    principal: String,
    roles: Vec<String>,
    hash: String,
    created_at: u64,
}

/// Who a verified credential belongs to.
#[derive(Debug, Clone, Serialize)]
pub struct Principal {
    pub principal: String,
    pub roles: Vec<String>,
    pub credential_id: String,
    pub authenticated_by: &'static str,
}

async fn pepper(keyring: &Keyring) -> Result<SecretBytes, StoreError> {
    keyring
        .secret(PEPPER, || {
            Ok(SecretBytes::new(random_array::<32>()?.to_vec()))
        })
        .await
}

/// Creates the admin credential and returns the one copy of its token.
pub async fn create_admin(keyring: &Keyring, now: u64) -> Result<Zeroizing<String>, CliError> {
    let pepper = pepper(keyring).await?;
    let id = hex(&random_array::<8>()?);
    let secret = Zeroizing::new(B64URL.encode(random_array::<32>()?));
    let stored = Stored {
        id: id.clone(),
        principal: "admin".into(),
        roles: vec!["admin".into()],
        hash: hex(&hmac_sha256(pepper.expose(), secret.as_bytes())),
        created_at: now,
    };
    let json = serde_json::to_vec(&stored).map_err(|e| CliError::Runtime(e.to_string()))?;
    keyring.store().put(NS, &id, &json, Expect::Absent).await?;
    Ok(Zeroizing::new(format!("{PREFIX}{id}_{}", secret.as_str())))
}

/// How long a looked-up credential record is reused before it is read from
/// the store again. Bootstrap credentials are never revoked through the API
/// (there is no endpoint for it); this bounds how long one removed from the
/// store by hand keeps working on a running node.
const CACHE_SECS: u64 = 30;
/// Most credential records kept; past that the cache starts over.
const CACHE_ENTRIES: usize = 64;

/// Checks bearer tokens against the stored hashes.
pub struct Verifier {
    pepper: SecretBytes,
    store: std::sync::Arc<dyn Store>,
    clock: SharedClock,
    /// Stored records by id with when they were read: the hash is checked
    /// against the presented secret on every call, so only the lookup is
    /// saved (a storage round trip per control API call otherwise).
    cache: RwLock<HashMap<String, (u64, Stored)>>,
}

impl Verifier {
    pub async fn new(keyring: &Keyring, clock: SharedClock) -> Result<Self, StoreError> {
        Ok(Verifier {
            pepper: pepper(keyring).await?,
            store: keyring.store().clone(),
            clock,
            cache: RwLock::default(),
        })
    }

    async fn stored(&self, id: &str) -> Result<Option<Stored>, StoreError> {
        let now = self.clock.unix_secs();
        if let Some((at, rec)) = self.cache.read().unwrap_or_else(|e| e.into_inner()).get(id) {
            if now.saturating_sub(*at) < CACHE_SECS {
                return Ok(Some(rec.clone()));
            }
        }
        let Some(entry) = self.store.get(NS, id).await? else {
            return Ok(None);
        };
        let stored: Stored =
            serde_json::from_slice(&entry.value).map_err(|e| StoreError::Corrupt {
                ns: NS.into(),
                key: id.into(),
                why: e.to_string(),
            })?;
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(id.to_owned(), (now, stored.clone()));
        Ok(Some(stored))
    }

    /// The principal a token proves, or `None` for anything else: malformed,
    /// unknown or wrong tokens are indistinguishable to the caller.
    pub async fn verify(&self, token: &str) -> Result<Option<Principal>, StoreError> {
        let Some((id, secret)) = parse(token) else {
            return Ok(None);
        };
        let Some(stored) = self.stored(id).await? else {
            return Ok(None);
        };
        let presented = hex(&hmac_sha256(self.pepper.expose(), secret.as_bytes()));
        if !ct_eq(presented.as_bytes(), stored.hash.as_bytes()) {
            return Ok(None);
        }
        Ok(Some(Principal {
            principal: stored.principal,
            roles: stored.roles,
            credential_id: stored.id,
            authenticated_by: "api_key",
        }))
    }
}

/// Splits `rk_admin_<id>_<secret>` without trusting its length or content.
fn parse(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_at_checked(ID_LEN)?;
    let secret = secret.strip_prefix('_')?;
    let valid_id = id.bytes().all(|b| b.is_ascii_hexdigit());
    let valid_secret = secret.len() == SECRET_LEN
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (valid_id && valid_secret).then_some((id, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_rejects_everything_malformed() {
        let good = format!("{PREFIX}{}_{}", "0123456789abcdef", "A".repeat(SECRET_LEN));
        assert!(parse(&good).is_some());
        for bad in [
            "",
            "rk_admin_",
            "rk_admin_0123456789abcdef",
            &format!("{PREFIX}0123456789abcdeX_{}", "A".repeat(SECRET_LEN)),
            &format!("{PREFIX}0123456789abcdef_{}", "A".repeat(SECRET_LEN - 1)),
            &format!("{PREFIX}0123456789abcdef_{}é", "A".repeat(SECRET_LEN - 1)),
            "rk_admin_ééééééééééééééééé",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }
}
