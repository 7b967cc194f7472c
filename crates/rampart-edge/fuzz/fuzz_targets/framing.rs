//! Feeds arbitrary client byte streams to the request-smuggling guard, in
//! one piece and split at a point chosen by the input. It must never panic,
//! and what it flags must not depend on how the bytes arrived.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_edge::framing::{Framing, FramingFlag};

fn first_flagged(parts: &[&[u8]]) -> Option<u64> {
    let flag = FramingFlag::default();
    let mut f = Framing::new(flag.clone());
    for p in parts {
        f.feed(p);
    }
    (0..64).find(|&i| flag.is_conflicting(i))
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    let at = usize::from(split).min(stream.len());
    let (a, b) = stream.split_at(at);
    let whole = first_flagged(&[stream]);
    assert_eq!(whole, first_flagged(&[a, b]), "split at {at}");
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(whole, first_flagged(&bytes));
});
