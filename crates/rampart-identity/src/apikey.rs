//! The API key format: `rk_<env>_<id>_<secret>`.
//!
//! `env` names the environment the key may act in (`live`, `test`…; lower
//! case letters and digits), `id` is 16 hex digits that find the record, and
//! `secret` is 160 bits from the CSPRNG in lower-case base32. Only
//! HMAC-SHA-256 of the whole key under a server-side pepper is stored; the
//! key itself is shown once.

use crate::totp::base32_encode;
use crate::IdentityError;

/// The longest key accepted before parsing.
pub const MAX_KEY_LEN: usize = 128;
const ID_LEN: usize = 16;
const SECRET_LEN: usize = 32;

/// A parsed key, borrowed from its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedKey<'a> {
    /// The environment.
    pub env: &'a str,
    /// The id.
    pub id: &'a str,
}

/// Whether `env` is a valid environment name for keys.
pub fn valid_env(env: &str) -> bool {
    !env.is_empty()
        && env.len() <= 16
        && env
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Parses a key strictly; never panics.
pub fn parse(key: &str) -> Result<ParsedKey<'_>, IdentityError> {
    if key.len() > MAX_KEY_LEN {
        return Err(IdentityError::InvalidApiKey);
    }
    let mut it = key.split('_');
    let (Some("rk"), Some(env), Some(id), Some(secret), None) =
        (it.next(), it.next(), it.next(), it.next(), it.next())
    else {
        return Err(IdentityError::InvalidApiKey);
    };
    let ok = valid_env(env)
        && id.len() == ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && secret.len() == SECRET_LEN
        && secret
            .bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b));
    if ok {
        Ok(ParsedKey { env, id })
    } else {
        Err(IdentityError::InvalidApiKey)
    }
}

/// A fresh key for `env`: its id and its full text.
pub fn generate(env: &str) -> Result<(String, String), IdentityError> {
    if !valid_env(env) {
        return Err(IdentityError::InvalidRequest(format!(
            "environment {env:?} is not a valid key environment"
        )));
    }
    let id = hex(&rampart_crypto::random_array::<8>()?);
    let secret = base32_encode(&rampart_crypto::random_array::<20>()?).to_lowercase();
    let text = format!("rk_{env}_{id}_{secret}");
    Ok((id, text))
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        for nibble in [b >> 4, b & 0x0f] {
            s.push(char::from(
                DIGITS.get(usize::from(nibble)).copied().unwrap_or(b'0'),
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn generated_keys_parse() {
        let (id, k) = generate("live").unwrap();
        assert!(k.starts_with("rk_live_"));
        let p = parse(&k).unwrap();
        assert_eq!((p.env, p.id), ("live", id.as_str()));
        let (_, k2) = generate("live").unwrap();
        assert_ne!(k, k2);
        assert!(generate("Live").is_err());
        assert!(generate("a_b").is_err());
    }

    #[test]
    fn malformed_keys_are_errors() {
        let (_, k) = generate("test").unwrap();
        for bad in [
            "",
            "rk",
            "rk___",
            "rk_live",
            &format!("{k}_x"),
            &format!("x{k}"),
            &k[..k.len() - 1],
            &k.to_uppercase(),
            &format!("{k}{}", "a".repeat(200)),
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn random_text_never_panics(s in ".{0,200}") {
            let _ = parse(&s);
        }
    }
}
