//! Feeds arbitrary connection openings to the PROXY protocol header parser
//! (versions 1 and 2). It must never panic; a whole header's length must lie
//! within the bytes given; and what it says must not depend on how its
//! bytes arrived: every shorter part of a header read as whole is "not
//! whole yet", never an error or another header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_edge::proxy_protocol::parse_header;

fuzz_target!(|data: &[u8]| {
    let Some(Ok((len, client))) = parse_header(data) else {
        return;
    };
    assert!(len > 0 && len <= data.len(), "length {len} of {}", data.len());
    // The same header with nothing after it says the same.
    let alone = parse_header(&data[..len]);
    assert!(matches!(alone, Some(Ok((l, c))) if l == len && c == client));
    for cut in 0..len {
        assert!(parse_header(&data[..cut]).is_none(), "cut at {cut} of {len}");
    }
});
