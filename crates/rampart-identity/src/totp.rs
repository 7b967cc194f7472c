//! TOTP (RFC 6238) over HMAC-SHA-1, -256 and -512, with base32 secrets,
//! `otpauth://` URIs and QR codes for enrolment.
//!
//! Verification accepts the current step and one step either side, and
//! returns the step that matched so the caller can refuse any step at or
//! before the last one used (codes are single use).

use hmac::{Hmac, Mac};
use qrcode::render::svg;
use qrcode::QrCode;

use crate::IdentityError;

/// The HMAC a TOTP uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// HMAC-SHA-1, what authenticator apps assume.
    Sha1,
    /// HMAC-SHA-256.
    Sha256,
    /// HMAC-SHA-512.
    Sha512,
}

impl Algorithm {
    fn uri_name(self) -> &'static str {
        match self {
            Algorithm::Sha1 => "SHA1",
            Algorithm::Sha256 => "SHA256",
            Algorithm::Sha512 => "SHA512",
        }
    }
}

fn mac(alg: Algorithm, key: &[u8], msg: &[u8]) -> Vec<u8> {
    fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], msg: &[u8]) -> Vec<u8> {
        match <M as hmac::digest::KeyInit>::new_from_slice(key) {
            Ok(mut m) => {
                m.update(msg);
                m.finalize().into_bytes().to_vec()
            }
            Err(_) => Vec::new(),
        }
    }
    match alg {
        Algorithm::Sha1 => run::<Hmac<sha1::Sha1>>(key, msg),
        Algorithm::Sha256 => run::<Hmac<sha2::Sha256>>(key, msg),
        Algorithm::Sha512 => run::<Hmac<sha2::Sha512>>(key, msg),
    }
}

/// The HOTP value (RFC 4226) for `counter`, as a number below 10^digits.
pub fn hotp(alg: Algorithm, key: &[u8], counter: u64, digits: u32) -> u32 {
    let h = mac(alg, key, &counter.to_be_bytes());
    let offset = h.last().map_or(0, |b| usize::from(b & 0x0f));
    let word = match h.get(offset..offset + 4) {
        Some(&[a, b, c, d]) => u32::from_be_bytes([a & 0x7f, b, c, d]),
        _ => 0,
    };
    word % 10u32.pow(digits.min(9))
}

/// A TOTP generator: a secret and its parameters.
#[derive(Clone)]
pub struct Totp {
    /// The HMAC.
    pub algorithm: Algorithm,
    /// Digits per code.
    pub digits: u32,
    /// Step length, seconds.
    pub step: u64,
    secret: zeroize::Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Totp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Totp")
            .field("algorithm", &self.algorithm)
            .field("digits", &self.digits)
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}

impl Totp {
    /// A generator with the usual parameters: SHA-1, 6 digits, 30 s.
    pub fn new(secret: Vec<u8>) -> Self {
        Totp {
            algorithm: Algorithm::Sha1,
            digits: 6,
            step: 30,
            secret: zeroize::Zeroizing::new(secret),
        }
    }

    /// The step number at `unix_secs`.
    pub fn step_at(&self, unix_secs: u64) -> u64 {
        unix_secs / self.step.max(1)
    }

    /// The code for step `step`, zero-padded.
    pub fn code_for_step(&self, step: u64) -> String {
        let v = hotp(self.algorithm, &self.secret, step, self.digits);
        format!("{v:0width$}", width = self.digits as usize)
    }

    /// The code at `unix_secs`.
    pub fn code_at(&self, unix_secs: u64) -> String {
        self.code_for_step(self.step_at(unix_secs))
    }

    /// The step `code` matches at `unix_secs`, allowing one step of drift
    /// either way. Compares in constant time.
    pub fn verify(&self, code: &str, unix_secs: u64) -> Option<u64> {
        if code.len() != self.digits as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let now = self.step_at(unix_secs);
        let mut found = None;
        for step in [now.saturating_sub(1), now, now.saturating_add(1)] {
            let expected = self.code_for_step(step);
            if rampart_crypto::ct_eq(expected.as_bytes(), code.as_bytes()) && found.is_none() {
                found = Some(step);
            }
        }
        found
    }

    /// The `otpauth://totp/` URI authenticator apps enrol from.
    pub fn uri(&self, issuer: &str, account: &str) -> String {
        format!(
            "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm={}&digits={}&period={}",
            pct(issuer),
            pct(account),
            base32_encode(&self.secret),
            pct(issuer),
            self.algorithm.uri_name(),
            self.digits,
            self.step
        )
    }

    /// The secret in base32, for typing in by hand.
    pub fn secret_base32(&self) -> String {
        base32_encode(&self.secret)
    }
}

/// `uri` as a QR code in SVG.
pub fn qr_svg(uri: &str) -> Result<String, IdentityError> {
    let code = QrCode::new(uri.as_bytes())
        .map_err(|e| IdentityError::InvalidRequest(format!("QR code: {e}")))?;
    Ok(code
        .render::<svg::Color<'_>>()
        .min_dimensions(200, 200)
        .build())
}

fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

const B32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// RFC 4648 base32 without padding.
pub fn base32_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let mut buf: u64 = 0;
    let mut bits = 0u32;
    for &b in data {
        buf = (buf << 8) | u64::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            let idx = ((buf >> bits) & 31) as usize;
            out.push(char::from(B32.get(idx).copied().unwrap_or(b'A')));
        }
    }
    if bits > 0 {
        let idx = ((buf << (5 - bits)) & 31) as usize;
        out.push(char::from(B32.get(idx).copied().unwrap_or(b'A')));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 6238 appendix B. The seeds are the ASCII digits repeated to the
    // hash's block-friendly length, as the RFC's reference code uses.
    const SEED20: &[u8] = b"12345678901234567890";
    const SEED32: &[u8] = b"12345678901234567890123456789012";
    const SEED64: &[u8] = b"1234567890123456789012345678901234567890123456789012345678901234";

    const VECTORS: [(u64, &str, &str, &str); 6] = [
        (59, "94287082", "46119246", "90693936"),
        (1111111109, "07081804", "68084774", "25091201"),
        (1111111111, "14050471", "67062674", "99943326"),
        (1234567890, "89005924", "91819424", "93441116"),
        (2000000000, "69279037", "90698825", "38618901"),
        (20000000000, "65353130", "77737706", "47863826"),
    ];

    fn gen(alg: Algorithm, seed: &[u8]) -> Totp {
        Totp {
            algorithm: alg,
            digits: 8,
            step: 30,
            secret: zeroize::Zeroizing::new(seed.to_vec()),
        }
    }

    #[test]
    fn rfc6238_vectors() {
        for (t, sha1, sha256, sha512) in VECTORS {
            assert_eq!(gen(Algorithm::Sha1, SEED20).code_at(t), sha1, "SHA1 at {t}");
            assert_eq!(
                gen(Algorithm::Sha256, SEED32).code_at(t),
                sha256,
                "SHA256 at {t}"
            );
            assert_eq!(
                gen(Algorithm::Sha512, SEED64).code_at(t),
                sha512,
                "SHA512 at {t}"
            );
        }
    }

    #[test]
    fn rfc4226_hotp_vectors() {
        let want = [
            755224, 287082, 359152, 969429, 338314, 254676, 287922, 162583, 399871, 520489,
        ];
        for (c, w) in want.iter().enumerate() {
            assert_eq!(hotp(Algorithm::Sha1, SEED20, c as u64, 6), *w);
        }
    }

    #[test]
    fn drift_of_one_step_only() {
        let t = Totp::new(SEED20.to_vec());
        let now = 1_000_000_000;
        let step = t.step_at(now);
        assert_eq!(t.verify(&t.code_for_step(step), now), Some(step));
        assert_eq!(t.verify(&t.code_for_step(step - 1), now), Some(step - 1));
        assert_eq!(t.verify(&t.code_for_step(step + 1), now), Some(step + 1));
        assert_eq!(t.verify(&t.code_for_step(step - 2), now), None);
        assert_eq!(t.verify(&t.code_for_step(step + 2), now), None);
        for bad in ["", "12345", "1234567", "12345a", "１２３４５６"] {
            assert_eq!(t.verify(bad, now), None);
        }
    }

    #[test]
    fn base32_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foob", "MZXW6YQ"),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI"),
        ] {
            assert_eq!(base32_encode(i.as_bytes()), o);
        }
    }

    #[test]
    fn uri_and_qr() {
        let t = Totp::new(b"12345678901234567890".to_vec());
        let uri = t.uri("Rampart", "alice@example.com");
        assert_eq!(
            uri,
            "otpauth://totp/Rampart:alice%40example.com?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Rampart&algorithm=SHA1&digits=6&period=30"
        );
        let svg = qr_svg(&uri).unwrap();
        assert!(svg.starts_with("<?xml") && svg.contains("<svg"));
    }
}
