//! Who is calling: the principal, the plane it calls through, and the
//! per-service API tokens that stand in for the identity plane until it lands.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use rampart_crypto::{ct_eq, hmac_sha256, random_array, SecretBytes};
use rampart_store::{Expect, Store};
use serde::{Deserialize, Serialize};

use crate::{valid_name, KeysError};

const TOKENS_NS: &str = "keys.service-tokens";
const TOKEN_PREFIX: &str = "rst_";

/// An authenticated caller, as the identity layer (for now the caller of this
/// crate) vouches for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Principal {
    /// A stable identifier (`alice`, `svc:payments`).
    pub id: String,
    /// The environment the principal belongs to; a hard wall.
    pub environment: String,
    /// The service the principal is, when it is one.
    #[serde(default)]
    pub service: Option<String>,
    /// Roles, matched by `role:NAME` in policies.
    #[serde(default)]
    pub roles: Vec<String>,
}

impl Principal {
    /// A principal that is the service `service` in `environment`.
    pub fn service(environment: &str, service: &str) -> Self {
        Principal {
            id: format!("svc:{service}"),
            environment: environment.to_owned(),
            service: Some(service.to_owned()),
            roles: Vec::new(),
        }
    }

    /// A human or other non-service principal.
    pub fn user(environment: &str, id: &str, roles: &[&str]) -> Self {
        Principal {
            id: id.to_owned(),
            environment: environment.to_owned(),
            service: None,
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        }
    }
}

/// A request's caller: the principal, the Rampart plane it came through (the
/// via-service condition), and what ties the audit record to the request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who.
    pub principal: Principal,
    /// The plane or service that calls on the principal's behalf (`secrets`).
    pub via_service: Option<String>,
    /// The request id for the audit record.
    pub request_id: Option<String>,
    /// The source address for the audit record.
    pub source: Option<String>,
    /// How the principal authenticated, for the audit record.
    pub auth: String,
    system: bool,
}

impl Caller {
    /// A principal calling directly.
    pub fn direct(principal: Principal) -> Self {
        Caller {
            principal,
            via_service: None,
            request_id: None,
            source: None,
            auth: "api-token".into(),
            system: false,
        }
    }

    /// A principal calling through the Rampart plane or service `via`.
    pub fn via(principal: Principal, via: &str) -> Self {
        Caller {
            via_service: Some(via.to_owned()),
            ..Caller::direct(principal)
        }
    }

    /// Rampart itself (the scheduler, configuration loading) acting in
    /// `environment`. Policy does not apply to it, the environment wall and
    /// the audit log do. Never build one from a network request.
    pub fn system(environment: &str, component: &str) -> Self {
        Caller {
            principal: Principal {
                id: format!("rampart:{component}"),
                environment: environment.to_owned(),
                service: Some("rampart".into()),
                roles: vec!["system".into()],
            },
            via_service: None,
            request_id: None,
            source: None,
            auth: "internal".into(),
            system: true,
        }
    }

    /// The same caller, now calling through `via` (a plane forwarding the request).
    pub fn through(&self, via: &str) -> Self {
        Caller {
            via_service: Some(via.to_owned()),
            ..self.clone()
        }
    }

    /// Whether this is Rampart itself.
    pub fn is_system(&self) -> bool {
        self.system
    }
}

/// A stored service token: only its HMAC, never the token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRecord {
    mac_b64: String,
    principal: Principal,
    created_at: u64,
}

/// A freshly issued token, shown once. `Debug` is redacted.
pub struct IssuedToken {
    /// The token id (not secret; used to revoke).
    pub id: String,
    /// The whole token, `rst_<id>_<secret>`, to hand to the service.
    pub token: SecretBytes,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("id", &self.id)
            .field("token", &"[redacted]")
            .finish()
    }
}

/// Per-service API tokens, stored as HMAC-SHA-256 under a pepper that is kept
/// wrapped by the root key; checked in constant time.
#[derive(Clone)]
pub struct ServiceTokens {
    store: Arc<dyn Store>,
    pepper: Arc<SecretBytes>,
}

impl std::fmt::Debug for ServiceTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceTokens([redacted])")
    }
}

impl ServiceTokens {
    /// Tokens kept in `keyring`'s store, peppered with the keyring secret
    /// `keys/service-token-pepper` (made on first use).
    pub async fn open(keyring: &rampart_store::Keyring) -> Result<Self, KeysError> {
        let pepper = keyring
            .secret("keys/service-token-pepper", || {
                Ok(SecretBytes::new(random_array::<32>()?.to_vec()))
            })
            .await?;
        Ok(ServiceTokens {
            store: keyring.store().clone(),
            pepper: Arc::new(pepper),
        })
    }

    fn mac(&self, id: &str, secret: &[u8]) -> [u8; 32] {
        let mut msg = Vec::with_capacity(id.len() + 1 + secret.len());
        msg.extend_from_slice(id.as_bytes());
        msg.push(0);
        msg.extend_from_slice(secret);
        hmac_sha256(self.pepper.expose(), &msg)
    }

    /// Issues a token that authenticates as the service `service` of `environment`.
    pub async fn issue(
        &self,
        environment: &str,
        service: &str,
        roles: &[String],
        now: u64,
    ) -> Result<IssuedToken, KeysError> {
        valid_name(environment)?;
        valid_name(service)?;
        let id = hex(&random_array::<8>()?);
        let secret = B64URL.encode(random_array::<32>()?);
        let mut principal = Principal::service(environment, service);
        principal.roles = roles.to_vec();
        let rec = TokenRecord {
            mac_b64: B64URL.encode(self.mac(&id, secret.as_bytes())),
            principal,
            created_at: now,
        };
        let json = serde_json::to_vec(&rec).map_err(|e| KeysError::Corrupt(e.to_string()))?;
        self.store
            .put(TOKENS_NS, &id, &json, Expect::Absent)
            .await?;
        let token = format!("{TOKEN_PREFIX}{id}_{secret}");
        Ok(IssuedToken {
            id,
            token: SecretBytes::new(token.into_bytes()),
        })
    }

    /// The principal a token stands for; [`KeysError::InvalidToken`] for any
    /// token that is malformed, unknown, revoked or wrong.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, KeysError> {
        let rest = token
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(KeysError::InvalidToken)?;
        let (id, secret) = rest.split_once('_').ok_or(KeysError::InvalidToken)?;
        if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(KeysError::InvalidToken);
        }
        let Some(entry) = self.store.get(TOKENS_NS, id).await? else {
            return Err(KeysError::InvalidToken);
        };
        let rec: TokenRecord = serde_json::from_slice(&entry.value)
            .map_err(|e| KeysError::Corrupt(format!("{TOKENS_NS}/{id}: {e}")))?;
        let stored = B64URL
            .decode(rec.mac_b64.as_bytes())
            .map_err(|_| KeysError::Corrupt(format!("{TOKENS_NS}/{id}")))?;
        if ct_eq(&stored, &self.mac(id, secret.as_bytes())) {
            Ok(rec.principal)
        } else {
            Err(KeysError::InvalidToken)
        }
    }

    /// Revokes a token by id; returns whether it existed.
    pub async fn revoke(&self, id: &str) -> Result<bool, KeysError> {
        Ok(self.store.delete(TOKENS_NS, id, Expect::Any).await?)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
