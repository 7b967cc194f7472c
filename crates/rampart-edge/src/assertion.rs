//! The signed assertion the edge attaches to every request it forwards, so a
//! service can refuse traffic that did not come through the edge.
//!
//! The edge strips any `X-Rampart-Assertion` header a client sent and, when it
//! holds a signing key, adds its own:
//!
//! ```text
//! X-Rampart-Assertion: v1.<base64url(claims JSON)>.<base64url(Ed25519 signature)>
//! ```
//!
//! The signature is over the ASCII bytes `v1.<base64url(claims JSON)>`. The
//! claims name the principal, its roles, the service and route, the method,
//! path and request id, and a lifetime of a minute. A service verifies it with
//! [`verify`] (or, outside Rust, with any Ed25519 library and a JSON parser):
//! check the signature with the edge's public key, then that `svc` is itself,
//! that `method` and `path` are the request's, and that `exp` has not passed.
//! Anything else, including a missing header, is traffic that bypassed the
//! edge and must be refused.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// The header carrying the assertion.
pub const HEADER: &str = "x-rampart-assertion";
const PREFIX: &str = "v1.";
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
    /// The request method.
    pub method: String,
    /// The request path (no query).
    pub path: String,
    /// The request id.
    pub rid: String,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Expires at, seconds since the Unix epoch.
    pub exp: u64,
}

/// Why an assertion was refused. Deliberately coarse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssertionError {
    /// Not in the `v1.<claims>.<signature>` form, or too long.
    #[error("malformed assertion")]
    Malformed,
    /// The signature does not verify with the edge's key.
    #[error("assertion signature does not verify")]
    BadSignature,
    /// Past `exp`, or issued in the future.
    #[error("assertion expired or not yet valid")]
    Expired,
    /// Made for another service, method or path.
    #[error("assertion is for another request")]
    WrongRequest,
}

/// Signs assertions. `Debug` never shows the key.
pub struct AssertionSigner {
    key: SigningKey,
    ttl_secs: u64,
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
            ttl_secs,
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

    /// The header value for `claims`.
    pub fn sign(&self, claims: &Claims) -> String {
        // Serialising a struct of strings and integers cannot fail.
        let json = serde_json::to_vec(claims).unwrap_or_default();
        let signed = format!("{PREFIX}{}", B64.encode(json));
        let sig = self.key.sign(signed.as_bytes());
        format!("{signed}.{}", B64.encode(sig.to_bytes()))
    }
}

/// Verifies an assertion for a request to `service` with `method` and `path`
/// at time `now` (seconds since the Unix epoch).
pub fn verify(
    header: &str,
    key: &VerifyingKey,
    now: u64,
    service: &str,
    method: &str,
    path: &str,
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
    if claims.svc != service || claims.method != method || claims.path != path {
        return Err(AssertionError::WrongRequest);
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
            method: "GET".into(),
            path: "/billing/invoices".into(),
            rid: "r-1".into(),
            iat: now,
            exp: now + 60,
        }
    }

    #[test]
    fn verifies_and_refuses_every_kind_of_bad_assertion() {
        let s = AssertionSigner::new(&[7; 32], 60);
        let vk = s.verifying_key();
        let h = s.sign(&claims(1000));
        let ok = verify(&h, &vk, 1010, "billing", "GET", "/billing/invoices").unwrap();
        assert_eq!(ok.sub, "alice");

        assert_eq!(
            verify(&h, &vk, 1060, "billing", "GET", "/billing/invoices"),
            Err(AssertionError::Expired)
        );
        assert_eq!(
            verify(&h, &vk, 1010, "api", "GET", "/billing/invoices"),
            Err(AssertionError::WrongRequest)
        );
        assert_eq!(
            verify(&h, &vk, 1010, "billing", "POST", "/billing/invoices"),
            Err(AssertionError::WrongRequest)
        );
        let other = AssertionSigner::new(&[8; 32], 60);
        assert_eq!(
            verify(
                &h,
                &other.verifying_key(),
                1010,
                "billing",
                "GET",
                "/billing/invoices"
            ),
            Err(AssertionError::BadSignature)
        );
        // A forged claims part with the old signature.
        let mut forged = claims(1000);
        forged.sub = "admin".into();
        let forged_b64 = B64.encode(serde_json::to_vec(&forged).unwrap());
        let sig = h.rsplit_once('.').unwrap().1;
        let tampered = format!("v1.{forged_b64}.{sig}");
        assert_eq!(
            verify(&tampered, &vk, 1010, "billing", "GET", "/billing/invoices"),
            Err(AssertionError::BadSignature)
        );
        for junk in [
            "",
            "v1.",
            "v1..",
            "v2.abc.def",
            "v1.!!!.???",
            &"v1.".repeat(5000),
        ] {
            assert!(
                verify(junk, &vk, 1010, "billing", "GET", "/").is_err(),
                "{junk}"
            );
        }
        assert!(format!("{s:?}").contains("redacted"));
    }
}
