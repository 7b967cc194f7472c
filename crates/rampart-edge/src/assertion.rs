//! The signed assertion the edge attaches to every request it forwards, so a
//! service can refuse traffic that did not come through the edge.
//!
//! The edge strips any `X-Rampart-Assertion` header a client sent and, when it
//! holds a signing key, adds its own:
//!
//! ```text
//! X-Rampart-Assertion: v2.<base64url(claims JSON)>.<base64url(Ed25519 signature)>
//! ```
//!
//! The signature is over the ASCII bytes `v2.<base64url(claims JSON)>`. The
//! claims name the principal, its roles, the service and the route that
//! matched, with a lifetime of a minute: an assertion of the principal and
//! route, as identity-aware proxies issue them (the request id travels
//! unsigned in `X-Request-Id`). A service verifies it with [`verify`] (or,
//! outside Rust, with any Ed25519 library and a JSON parser): check the
//! signature with the edge's public key, then that `svc` is itself and that
//! `exp` has not passed. Anything else, including a missing header, is
//! traffic that bypassed the edge and must be refused.
//!
//! Signing costs tens of microseconds, so the signer keeps each assertion
//! for the same principal, roles, service and route and re-signs it once
//! half its lifetime has passed: every assertion a service receives is
//! valid for at least half the lifetime. Within its lifetime an assertion
//! can be replayed to the same route by whoever captured it on the internal
//! network; services must still be reachable only from the edge.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;

/// The header carrying the assertion.
pub const HEADER: &str = "x-rampart-assertion";
const PREFIX: &str = "v2.";
/// Longest header accepted by [`verify`].
const MAX_LEN: usize = 8192;
/// Clock skew tolerated between the edge and the service, in seconds.
const SKEW: u64 = 5;

/// What the edge asserts about a forwarded request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// The authenticated principal (`anonymous` on open routes).
    pub sub: String,
    /// Its roles.
    pub roles: Vec<String>,
    /// The service the request is for.
    pub svc: String,
    /// The route that matched: host and path prefix.
    pub route: String,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Expires at, seconds since the Unix epoch.
    pub exp: u64,
}

/// Why an assertion was refused. Deliberately coarse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssertionError {
    /// Not in the `v2.<claims>.<signature>` form, or too long.
    #[error("malformed assertion")]
    Malformed,
    /// The signature does not verify with the edge's key.
    #[error("assertion signature does not verify")]
    BadSignature,
    /// Past `exp`, or issued in the future.
    #[error("assertion expired or not yet valid")]
    Expired,
    /// Made for another service.
    #[error("assertion is for another service")]
    WrongService,
}

/// Above this many cached assertions the cache starts afresh.
const CACHE_MAX: usize = 10_000;

/// Signs assertions and keeps them for reuse. `Debug` never shows the key.
pub struct AssertionSigner {
    key: SigningKey,
    ttl_secs: u64,
    cache: Mutex<HashMap<String, (http::HeaderValue, u64)>>,
}

impl std::fmt::Debug for AssertionSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AssertionSigner([redacted])")
    }
}

impl AssertionSigner {
    /// A signer from a 32-byte Ed25519 seed; assertions live `ttl_secs`.
    pub fn new(seed: &[u8; 32], ttl_secs: u64) -> Self {
        AssertionSigner {
            key: SigningKey::from_bytes(seed),
            ttl_secs: ttl_secs.max(2),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The public key services verify with.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The lifetime given to each assertion.
    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    /// The header value for `claims`, freshly signed.
    pub fn sign(&self, claims: &Claims) -> String {
        // Serialising a struct of strings and integers cannot fail.
        let json = serde_json::to_vec(claims).unwrap_or_default();
        let signed = format!("{PREFIX}{}", B64.encode(json));
        let sig = self.key.sign(signed.as_bytes());
        format!("{signed}.{}", B64.encode(sig.to_bytes()))
    }

    /// The header value asserting `sub` with `roles` on `svc` via `route`
    /// at `now` (seconds since the Unix epoch): the cached one while less
    /// than half its lifetime has passed, else a fresh one. `None` only if
    /// the value cannot be a header (it always can: it is base64url).
    pub fn header(
        &self,
        sub: &str,
        roles: &[String],
        svc: &str,
        route: &str,
        now: u64,
    ) -> Option<http::HeaderValue> {
        let mut key = String::with_capacity(sub.len() + svc.len() + route.len() + 16);
        for part in [sub, svc, route]
            .into_iter()
            .chain(roles.iter().map(String::as_str))
        {
            key.push_str(part);
            key.push('\0');
        }
        let fresh_until = |iat: u64| iat + self.ttl_secs / 2;
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((v, iat)) = cache.get(&key) {
                if now >= *iat && now < fresh_until(*iat) {
                    return Some(v.clone());
                }
            }
        }
        let value = http::HeaderValue::from_str(&self.sign(&Claims {
            sub: sub.to_string(),
            roles: roles.to_vec(),
            svc: svc.to_string(),
            route: route.to_string(),
            iat: now,
            exp: now + self.ttl_secs,
        }))
        .ok()?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, (value.clone(), now));
        Some(value)
    }
}

/// Verifies an assertion for a request to `service` at time `now` (seconds
/// since the Unix epoch).
pub fn verify(
    header: &str,
    key: &VerifyingKey,
    now: u64,
    service: &str,
) -> Result<Claims, AssertionError> {
    if header.len() > MAX_LEN || !header.starts_with(PREFIX) {
        return Err(AssertionError::Malformed);
    }
    let (signed, sig) = header.rsplit_once('.').ok_or(AssertionError::Malformed)?;
    let claims_b64 = signed
        .strip_prefix(PREFIX)
        .ok_or(AssertionError::Malformed)?;
    let sig = B64.decode(sig).map_err(|_| AssertionError::Malformed)?;
    let sig = Signature::from_slice(&sig).map_err(|_| AssertionError::Malformed)?;
    key.verify_strict(signed.as_bytes(), &sig)
        .map_err(|_| AssertionError::BadSignature)?;
    let json = B64
        .decode(claims_b64)
        .map_err(|_| AssertionError::Malformed)?;
    let claims: Claims = serde_json::from_slice(&json).map_err(|_| AssertionError::Malformed)?;
    if now >= claims.exp || claims.iat > now + SKEW {
        return Err(AssertionError::Expired);
    }
    if claims.svc != service {
        return Err(AssertionError::WrongService);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(now: u64) -> Claims {
        Claims {
            sub: "alice".into(),
            roles: vec!["team_member".into()],
            svc: "billing".into(),
            route: "api.example.com/billing".into(),
            iat: now,
            exp: now + 60,
        }
    }

    #[test]
    fn verifies_and_refuses_every_kind_of_bad_assertion() {
        let s = AssertionSigner::new(&[7; 32], 60);
        let vk = s.verifying_key();
        let h = s.sign(&claims(1000));
        let ok = verify(&h, &vk, 1010, "billing").unwrap();
        assert_eq!(ok.sub, "alice");

        assert_eq!(
            verify(&h, &vk, 1060, "billing"),
            Err(AssertionError::Expired)
        );
        assert_eq!(
            verify(&h, &vk, 900, "billing"),
            Err(AssertionError::Expired)
        );
        assert_eq!(
            verify(&h, &vk, 1010, "api"),
            Err(AssertionError::WrongService)
        );
        let other = AssertionSigner::new(&[8; 32], 60);
        assert_eq!(
            verify(&h, &other.verifying_key(), 1010, "billing"),
            Err(AssertionError::BadSignature)
        );
        // A forged claims part with the old signature.
        let mut forged = claims(1000);
        forged.sub = "admin".into();
        let forged_b64 = B64.encode(serde_json::to_vec(&forged).unwrap());
        let sig = h.rsplit_once('.').unwrap().1;
        let tampered = format!("v2.{forged_b64}.{sig}");
        assert_eq!(
            verify(&tampered, &vk, 1010, "billing"),
            Err(AssertionError::BadSignature)
        );
        // A v1 assertion (per request, older edges) is not accepted.
        let v1 = h.replacen("v2.", "v1.", 1);
        assert_eq!(
            verify(&v1, &vk, 1010, "billing"),
            Err(AssertionError::Malformed)
        );
        for junk in [
            "",
            "v2.",
            "v2..",
            "v3.abc.def",
            "v2.!!!.???",
            &"v2.".repeat(5000),
        ] {
            assert!(verify(junk, &vk, 1010, "billing").is_err(), "{junk}");
        }
        assert!(format!("{s:?}").contains("redacted"));
    }

    #[test]
    fn cached_assertions_are_reused_for_half_their_life_then_renewed() {
        let s = AssertionSigner::new(&[7; 32], 60);
        let vk = s.verifying_key();
        let roles = vec!["ops".to_string()];
        let a = s.header("alice", &roles, "billing", "r/", 1000).unwrap();
        let b = s.header("alice", &roles, "billing", "r/", 1029).unwrap();
        assert_eq!(a, b, "re-signed within the first half of its life");
        let c = s.header("alice", &roles, "billing", "r/", 1030).unwrap();
        assert_ne!(a, c, "not renewed at half its life");
        let claims = verify(c.to_str().unwrap(), &vk, 1030, "billing").unwrap();
        assert_eq!((claims.iat, claims.exp), (1030, 1090));
        // Every part of the key matters: another principal, role set,
        // service or route never gets alice's assertion.
        for (sub, roles, svc, route) in [
            ("bob", vec!["ops".to_string()], "billing", "r/"),
            ("alice", vec![], "billing", "r/"),
            ("alice", vec!["ops".to_string()], "api", "r/"),
            ("alice", vec!["ops".to_string()], "billing", "r/x"),
        ] {
            let h = s.header(sub, &roles, svc, route, 1031).unwrap();
            let cl = verify(h.to_str().unwrap(), &vk, 1031, svc).unwrap();
            assert_eq!(
                (cl.sub.as_str(), cl.roles, cl.route.as_str()),
                (sub, roles, route)
            );
        }
        // A clock that went backwards gets a fresh assertion, not a future one.
        let back = s
            .header("alice", &["ops".to_string()], "billing", "r/", 900)
            .unwrap();
        assert!(verify(back.to_str().unwrap(), &vk, 900, "billing").is_ok());
    }
}
