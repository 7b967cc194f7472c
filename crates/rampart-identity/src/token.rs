//! Access tokens: JWTs signed with Ed25519 (`alg: EdDSA`, RFC 8037).
//!
//! Why JWT over PASETO v4.public: both give Ed25519 signatures, but JWT with
//! an OKP key set is what every gateway, SDK and JWKS consumer already
//! speaks, and the usual JWT weaknesses (`alg: none`, algorithm confusion,
//! lenient parsing) are closed here by parsing by hand and strictly: the
//! header must be exactly `{alg: "EdDSA", typ: "JWT", kid}` with no other
//! field, the algorithm is never chosen by the token, base64url must be
//! canonical and unpadded, unknown claims are refused, the token is at most
//! [`MAX_TOKEN_LEN`] bytes, and the signature is checked with
//! `verify_strict` (no small-order keys, no malleable signatures) before the
//! claims are even decoded.

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// The longest token accepted; anything longer is refused before parsing.
pub const MAX_TOKEN_LEN: usize = 4096;

/// The only header an access token may carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Always `EdDSA`.
    pub alg: String,
    /// Always `JWT`.
    pub typ: String,
    /// The signing key's id, as published in the JWKS.
    pub kid: String,
}

/// What an access token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Subject: the principal id.
    pub sub: String,
    /// The principal's name.
    pub name: String,
    /// `user` or `service`.
    pub kind: String,
    /// Effective roles at issue.
    pub roles: Vec<String>,
    /// Environments the principal may act in.
    pub env: Vec<String>,
    /// Teams.
    pub teams: Vec<String>,
    /// Session (refresh family) id; revoking it revokes the token.
    pub sid: String,
    /// How the subject authenticated.
    pub amr: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Token id.
    pub jti: String,
}

/// Why a token was refused; audited, never shown to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Longer than [`MAX_TOKEN_LEN`].
    TooLong,
    /// Not three base64url parts, bad base64, bad JSON, unknown fields.
    Malformed,
    /// An algorithm other than EdDSA (including `none`).
    Algorithm,
    /// A key id that is not (or no longer) published.
    UnknownKey,
    /// The signature does not verify.
    Signature,
    /// Another issuer.
    Issuer,
    /// Another audience.
    Audience,
    /// Expired.
    Expired,
    /// Issued in the future.
    NotYetValid,
    /// Revoked (logout, admin revocation, refresh reuse).
    Revoked,
}

impl Reject {
    /// A short reason for the audit record.
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::TooLong => "token too long",
            Reject::Malformed => "malformed token",
            Reject::Algorithm => "algorithm not EdDSA",
            Reject::UnknownKey => "unknown key id",
            Reject::Signature => "bad signature",
            Reject::Issuer => "wrong issuer",
            Reject::Audience => "wrong audience",
            Reject::Expired => "expired",
            Reject::NotYetValid => "issued in the future",
            Reject::Revoked => "revoked",
        }
    }
}

/// A token split and decoded, its signature not yet checked.
#[derive(Debug, Clone)]
pub struct Parsed<'a> {
    /// The decoded header.
    pub header: Header,
    /// `header.payload`, the bytes the signature covers.
    pub signed: &'a [u8],
    /// The decoded payload (JSON, not yet trusted).
    pub payload: Vec<u8>,
    /// The signature.
    pub signature: [u8; 64],
}

fn b64(part: &str) -> Result<Vec<u8>, Reject> {
    if part.is_empty() {
        return Err(Reject::Malformed);
    }
    B64URL.decode(part).map_err(|_| Reject::Malformed)
}

/// Splits and decodes a token strictly. Pure: no keys, no clock; this is
/// what the fuzz target drives.
pub fn parse(token: &str) -> Result<Parsed<'_>, Reject> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(Reject::TooLong);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Reject::Malformed);
    };
    let header: Header = serde_json::from_slice(&b64(h)?).map_err(|_| Reject::Malformed)?;
    if header.alg != "EdDSA" {
        return Err(Reject::Algorithm);
    }
    if header.typ != "JWT" {
        return Err(Reject::Malformed);
    }
    let payload = b64(p)?;
    let signature: [u8; 64] = b64(s)?.try_into().map_err(|_| Reject::Malformed)?;
    let signed = token
        .get(..h.len() + 1 + p.len())
        .ok_or(Reject::Malformed)?
        .as_bytes();
    Ok(Parsed {
        header,
        signed,
        payload,
        signature,
    })
}

/// Signs `claims` with `key`, naming it `kid`.
pub fn sign(key: &SigningKey, kid: &str, claims: &Claims) -> Result<String, serde_json::Error> {
    let header = Header {
        alg: "EdDSA".into(),
        typ: "JWT".into(),
        kid: kid.into(),
    };
    let mut out = B64URL.encode(serde_json::to_vec(&header)?);
    out.push('.');
    out.push_str(&B64URL.encode(serde_json::to_vec(claims)?));
    let sig = key.sign(out.as_bytes());
    out.push('.');
    out.push_str(&B64URL.encode(sig.to_bytes()));
    Ok(out)
}

/// What a verification checks a token against.
#[derive(Debug)]
pub struct Expectations<'a> {
    /// Published keys by id.
    pub keys: &'a HashMap<String, VerifyingKey>,
    /// The issuer.
    pub issuer: &'a str,
    /// The audience.
    pub audience: &'a str,
    /// Now, seconds since the epoch.
    pub now: u64,
    /// Allowed clock skew for `iat`, seconds.
    pub skew: u64,
}

/// Parses, checks the signature, then the claims. Revocation is the
/// caller's (it needs the revocation list).
pub fn verify(token: &str, want: &Expectations<'_>) -> Result<Claims, Reject> {
    let parsed = parse(token)?;
    let key = want
        .keys
        .get(&parsed.header.kid)
        .ok_or(Reject::UnknownKey)?;
    key.verify_strict(parsed.signed, &Signature::from_bytes(&parsed.signature))
        .map_err(|_| Reject::Signature)?;
    let claims: Claims = serde_json::from_slice(&parsed.payload).map_err(|_| Reject::Malformed)?;
    if claims.iss != want.issuer {
        return Err(Reject::Issuer);
    }
    if claims.aud != want.audience {
        return Err(Reject::Audience);
    }
    if want.now >= claims.exp {
        return Err(Reject::Expired);
    }
    if claims.iat > want.now.saturating_add(want.skew) {
        return Err(Reject::NotYetValid);
    }
    Ok(claims)
}

/// The JWK (RFC 8037 OKP) for a verifying key.
pub fn jwk(kid: &str, key: &VerifyingKey) -> serde_json::Value {
    serde_json::json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "alg": "EdDSA",
        "use": "sig",
        "kid": kid,
        "x": B64URL.encode(key.as_bytes()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn claims(now: u64) -> Claims {
        Claims {
            iss: "rampart".into(),
            aud: "rampart-api".into(),
            sub: "u_1".into(),
            name: "alice".into(),
            kind: "user".into(),
            roles: vec!["admin".into()],
            env: vec!["live".into()],
            teams: vec![],
            sid: "s1".into(),
            amr: "password".into(),
            exp: now + 3600,
            iat: now,
            jti: "j1".into(),
        }
    }

    fn setup() -> (SigningKey, HashMap<String, VerifyingKey>) {
        let sk = SigningKey::from_bytes(&[7u8; 32]);
        let keys = HashMap::from([("k1".to_owned(), sk.verifying_key())]);
        (sk, keys)
    }

    fn want(keys: &HashMap<String, VerifyingKey>, now: u64) -> Expectations<'_> {
        Expectations {
            keys,
            issuer: "rampart",
            audience: "rampart-api",
            now,
            skew: 60,
        }
    }

    #[test]
    fn round_trip() {
        let (sk, keys) = setup();
        let t = sign(&sk, "k1", &claims(1000)).unwrap();
        assert_eq!(verify(&t, &want(&keys, 1000)).unwrap(), claims(1000));
    }

    #[test]
    fn expired_wrong_audience_tampered_and_alg_none_are_refused() {
        let (sk, keys) = setup();
        let t = sign(&sk, "k1", &claims(1000)).unwrap();
        assert_eq!(verify(&t, &want(&keys, 4600)), Err(Reject::Expired));
        let mut c = claims(1000);
        c.aud = "elsewhere".into();
        let t2 = sign(&sk, "k1", &c).unwrap();
        assert_eq!(verify(&t2, &want(&keys, 1000)), Err(Reject::Audience));
        // Tamper: swap in a payload with more roles, keep the signature.
        let mut parts: Vec<&str> = t.split('.').collect();
        let mut evil = claims(1000);
        evil.roles.push("team_admin".into());
        let evil_p = B64URL.encode(serde_json::to_vec(&evil).unwrap());
        parts[1] = &evil_p;
        assert_eq!(
            verify(&parts.join("."), &want(&keys, 1000)),
            Err(Reject::Signature)
        );
        // alg: none, with and without a signature part.
        let none_h = B64URL.encode(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#);
        let p = B64URL.encode(serde_json::to_vec(&claims(1000)).unwrap());
        assert_eq!(
            verify(&format!("{none_h}.{p}."), &want(&keys, 1000)),
            Err(Reject::Algorithm)
        );
        assert_eq!(
            verify(&format!("{none_h}.{p}.{}", parts[2]), &want(&keys, 1000)),
            Err(Reject::Algorithm)
        );
        // HS256 (algorithm confusion) is refused too.
        let hs = B64URL.encode(br#"{"alg":"HS256","typ":"JWT","kid":"k1"}"#);
        assert_eq!(
            verify(&format!("{hs}.{p}.{}", parts[2]), &want(&keys, 1000)),
            Err(Reject::Algorithm)
        );
        // Unknown key id.
        let other = SigningKey::from_bytes(&[8u8; 32]);
        let t3 = sign(&other, "k2", &claims(1000)).unwrap();
        assert_eq!(verify(&t3, &want(&keys, 1000)), Err(Reject::UnknownKey));
        // Right kid, wrong key.
        let t4 = sign(&other, "k1", &claims(1000)).unwrap();
        assert_eq!(verify(&t4, &want(&keys, 1000)), Err(Reject::Signature));
        // Issued in the future beyond the skew.
        assert_eq!(verify(&t, &want(&keys, 900)), Err(Reject::NotYetValid));
    }

    #[test]
    fn strictness() {
        let (sk, keys) = setup();
        let t = sign(&sk, "k1", &claims(1000)).unwrap();
        // Padding, extra parts, extra header fields, whitespace: refused.
        assert!(verify(&format!("{t}="), &want(&keys, 1000)).is_err());
        assert!(verify(&format!("{t}.x"), &want(&keys, 1000)).is_err());
        assert!(verify(&format!(" {t}"), &want(&keys, 1000)).is_err());
        let h = B64URL.encode(br#"{"alg":"EdDSA","typ":"JWT","kid":"k1","jku":"http://x"}"#);
        let rest = t.split_once('.').unwrap().1;
        assert_eq!(
            verify(&format!("{h}.{rest}"), &want(&keys, 1000)),
            Err(Reject::Malformed)
        );
        assert_eq!(
            verify(&"a".repeat(MAX_TOKEN_LEN + 1), &want(&keys, 1000)),
            Err(Reject::TooLong)
        );
        for s in ["", ".", "..", "a.b.c", "e30.e30.", "e30.e30.e30"] {
            assert!(verify(s, &want(&keys, 1000)).is_err(), "{s}");
        }
    }

    #[test]
    fn every_truncation_and_bit_flip_is_refused() {
        let (sk, keys) = setup();
        let t = sign(&sk, "k1", &claims(1000)).unwrap();
        for i in 0..t.len() {
            assert!(verify(&t[..i], &want(&keys, 1000)).is_err());
        }
        let bytes = t.as_bytes();
        for i in 0..bytes.len() {
            let mut b = bytes.to_vec();
            b[i] ^= 0x01;
            if let Ok(s) = std::str::from_utf8(&b) {
                assert!(verify(s, &want(&keys, 1000)).is_err(), "flip at {i}");
            }
        }
    }

    proptest! {
        #[test]
        fn random_input_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let (_, keys) = setup();
            let s = String::from_utf8_lossy(&bytes);
            prop_assert!(verify(&s, &want(&keys, 1000)).is_err());
        }

        #[test]
        fn random_dotted_base64_never_panics(a in "[A-Za-z0-9_-]{0,80}", b in "[A-Za-z0-9_-]{0,200}", c in "[A-Za-z0-9_-]{0,100}") {
            let (_, keys) = setup();
            let t = format!("{a}.{b}.{c}");
            prop_assert!(verify(&t, &want(&keys, 1000)).is_err());
        }
    }
}
