//! The segment reader against arbitrary and mutated bytes: it must return
//! errors, never panic. `fuzz/` runs the same entry point under cargo-fuzz.

use proptest::prelude::*;
use rampart_audit::format::{encode_frame, read_segment, SegmentHeader, SegmentReader};
use rampart_audit::Tier;

fn valid_segment(records: usize) -> Vec<u8> {
    let mut v = SegmentHeader {
        tier: Tier::Security,
        segment: 0,
        first_seq: 0,
        created_unix_nanos: 1,
        prev_hash: [0; 32],
        frontier: Vec::new(),
    }
    .encode();
    for i in 0..records as u64 {
        let mut body = i.to_le_bytes().to_vec();
        body.extend_from_slice(&[0xAB; 8 + 32 + 12 + 40]);
        encode_frame(&mut v, &body);
    }
    v.extend_from_slice(&[0u8; 64]);
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = read_segment(&bytes);
    }

    #[test]
    fn a_valid_header_with_arbitrary_frames_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut v = valid_segment(0);
        v.truncate(rampart_audit::format::HEADER_LEN);
        v.extend_from_slice(&tail);
        let _ = read_segment(&v);
    }

    #[test]
    fn mutated_segments_never_panic_and_never_read_past_damage(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut v = valid_segment(5);
        for (i, b) in edits {
            let at = i.index(v.len());
            v[at] = b;
        }
        v.truncate(cut.index(v.len() + 1));
        if let Ok((_, mut r)) = SegmentReader::new(&v) {
            while let Some(f) = r.next_frame() {
                if let Ok(frame) = f {
                    prop_assert!(frame.offset as usize + frame.len_on_disk() as usize <= v.len());
                }
            }
        }
    }
}

fn any_tier() -> impl Strategy<Value = Tier> {
    prop::sample::select(Tier::ALL.to_vec())
}

proptest! {
    #[test]
    fn headers_round_trip(
        tier in any_tier(),
        segment in any::<u64>(),
        first_seq in any::<u64>(),
        created in any::<u64>(),
        prev_hash in any::<[u8; 32]>(),
        seed in any::<u8>(),
    ) {
        let frontier = (0..first_seq.count_ones()).map(|i| [seed.wrapping_add(i as u8); 32]).collect();
        let h = SegmentHeader { tier, segment, first_seq, created_unix_nanos: created, prev_hash, frontier };
        prop_assert_eq!(SegmentHeader::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn frames_round_trip(bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 76..400), 0..20)) {
        let mut v = SegmentHeader {
            tier: Tier::Network,
            segment: 1,
            first_seq: 0,
            created_unix_nanos: 0,
            prev_hash: [0; 32],
            frontier: Vec::new(),
        }
        .encode();
        for b in &bodies {
            encode_frame(&mut v, b);
        }
        let (_, mut r) = SegmentReader::new(&v).unwrap();
        let mut back = Vec::new();
        while let Some(f) = r.next_frame() {
            back.push(f.unwrap().body.to_vec());
        }
        prop_assert_eq!(back, bodies);
    }
}
