//! Text the request path writes for every request (client addresses in
//! rate-limit keys, `X-Forwarded-For` and audit records; request ids),
//! written straight into a `String` rather than through `core::fmt`, whose
//! machinery costs more than the few bytes it writes here.

use std::net::{IpAddr, SocketAddr};

/// Appends `ip` as `Display` writes it (dotted quad; RFC 5952 for IPv6).
pub fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_u8(out, octet);
            }
        }
        // Rarer, and its zero-run compression is worth leaving to std.
        IpAddr::V6(v6) => {
            use std::fmt::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

/// `ip` as text, as `ip.to_string()` gives it.
pub fn ip_text(ip: IpAddr) -> String {
    let mut s = String::with_capacity(15);
    push_ip(&mut s, ip);
    s
}

/// `addr` as text, as `addr.to_string()` gives it (`1.2.3.4:80`,
/// `[::1]:80`; a v6 scope id is left to std).
pub fn socket_addr_text(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => {
            let mut s = String::with_capacity(21);
            push_ip(&mut s, IpAddr::V4(*a.ip()));
            s.push(':');
            push_u16(&mut s, a.port());
            s
        }
        SocketAddr::V6(a) if a.scope_id() == 0 => {
            let mut s = String::with_capacity(48);
            s.push('[');
            push_ip(&mut s, IpAddr::V6(*a.ip()));
            s.push_str("]:");
            push_u16(&mut s, a.port());
            s
        }
        SocketAddr::V6(a) => a.to_string(),
    }
}

fn push_u16(out: &mut String, n: u16) {
    out.push_str(itoa::Buffer::new().format(n));
}

fn push_u8(out: &mut String, n: u8) {
    if n >= 100 {
        out.push(char::from(b'0' + n / 100));
    }
    if n >= 10 {
        out.push(char::from(b'0' + (n / 10) % 10));
    }
    out.push(char::from(b'0' + n % 10));
}

/// Appends `n` as `width` lower-case hex digits (the low `4 * width` bits).
pub fn push_hex(out: &mut String, n: u64, width: u32) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..width).rev() {
        let nibble = (n >> (shift * 4)) & 0xf;
        out.push(char::from(
            DIGITS.get(nibble as usize).copied().unwrap_or(b'0'),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn ip_text_is_display(a in any::<[u8; 4]>(), b in any::<[u16; 8]>(), v6 in any::<bool>()) {
            let ip = if v6 {
                IpAddr::from(b)
            } else {
                IpAddr::from(a)
            };
            prop_assert_eq!(ip_text(ip), ip.to_string());
        }

        #[test]
        fn socket_addr_text_is_display(a in any::<[u8; 4]>(), b in any::<[u16; 8]>(), port in any::<u16>(), v6 in any::<bool>(), scope in 0u32..3) {
            let addr = if v6 {
                SocketAddr::V6(std::net::SocketAddrV6::new(b.into(), port, 0, scope))
            } else {
                SocketAddr::from((a, port))
            };
            prop_assert_eq!(socket_addr_text(addr), addr.to_string());
        }

        #[test]
        fn push_hex_is_format(n in any::<u64>(), w in 1u32..=16) {
            let mut s = String::new();
            push_hex(&mut s, n, w);
            let masked = if w == 16 { n } else { n & ((1u64 << (4 * w)) - 1) };
            prop_assert_eq!(s, format!("{:0width$x}", masked, width = w as usize));
        }
    }
}
