//! libinjection's answers about recently seen values, remembered per thread.
//!
//! `@detectSQLi` and `@detectXSS` are the costliest operators CRS runs on
//! ordinary traffic: every value holding a byte that is not a letter, digit
//! or `_` (a User-Agent, a Referer, a search phrase, a cookie) goes through
//! libinjection's tokenizer and fingerprint search, several passes for SQL.
//! The same values come back request after request (a browser sends the
//! same User-Agent and cookies every time), and libinjection's answer
//! depends on the value alone, so each thread keeps its last answers in a
//! small table: a value seen again costs a hash and a comparison.
//!
//! An answer comes quicker from the table than from libinjection, so a
//! client that could time it would learn whether a value it guessed whole
//! was seen lately. Answers are therefore kept per client address (the
//! transaction's, set for each phase with [`set_client`]): a client can
//! only find its own values there, which is also where the repeats are.
//!
//! The table is direct-mapped (one slot per hash, the newest answer
//! replaces the one before) and bounded: [`SLOTS`] values of at most
//! [`MAX_VALUE`] bytes each; longer values are always worked out afresh.
//! The hash is seeded at random per thread and an answer is only taken for
//! a value equal byte for byte to the one it was given for, so a value
//! made to collide costs no more than the work the table saves others.

use crate::small::SmallBytes;
use crate::transaction::SeededState;
use std::cell::{Cell, RefCell};
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;

/// Slots per thread (a power of two).
const SLOTS: usize = 256;
/// Longest value remembered, in bytes: at most `SLOTS * MAX_VALUE`
/// (256 KiB) of values per thread.
const MAX_VALUE: usize = 1024;

/// Which of libinjection's detectors answered.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Detector {
    Sqli,
    Xss,
}

/// A detector's answer: `None` when it finds no injection, else the SQL
/// fingerprint (empty for XSS), which `capture` puts in TX.0.
pub(crate) type Answer = Option<SmallBytes>;

struct Slot {
    hash: u64,
    client: u128,
    detector: Detector,
    value: Vec<u8>,
    answer: Answer,
}

struct Table {
    seed: SeededState,
    slots: Vec<Option<Slot>>,
}

impl Table {
    fn new() -> Table {
        let mut slots = Vec::new();
        slots.resize_with(SLOTS, || None);
        Table {
            // a seed of this thread's own
            seed: SeededState::random(),
            slots,
        }
    }

    fn hash(&self, client: u128, detector: Detector, value: &[u8]) -> u64 {
        let mut h = self.seed.build_hasher();
        h.write(&client.to_le_bytes());
        h.write_u8(detector as u8);
        h.write(value);
        h.finish()
    }
}

thread_local! {
    static TABLE: RefCell<Table> = RefCell::new(Table::new());
    /// The client whose values the operators on this thread look at now.
    static CLIENT: Cell<u128> = const { Cell::new(0) };
}

/// Sets the client whose values this thread's operators look at from now
/// on: only answers about that client's values are reused.
pub(crate) fn set_client(addr: IpAddr) {
    let key = match addr {
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
        IpAddr::V6(a) => u128::from(a),
    };
    let _ = CLIENT.try_with(|c| c.set(key));
}

/// `detect`'s answer about `value`: the remembered one when this thread
/// asked the same detector about the same value of the same client
/// ([`set_client`]) last in its slot, else `detect(value)`, remembered for
/// next time.
pub(crate) fn recall(
    detector: Detector,
    value: &[u8],
    detect: impl FnOnce(&[u8]) -> Answer,
) -> Answer {
    if value.len() > MAX_VALUE {
        return detect(value);
    }
    // the lookup and the store each borrow the table briefly; `detect`
    // runs between them with the table free
    let Ok(client) = CLIENT.try_with(Cell::get) else {
        return detect(value);
    };
    let found = TABLE.try_with(|t| {
        let t = t.try_borrow().ok()?;
        let hash = t.hash(client, detector, value);
        let slot = t.slots.get(slot_of(hash)).and_then(Option::as_ref);
        Some(match slot {
            Some(s)
                if s.hash == hash
                    && s.client == client
                    && s.detector == detector
                    && s.value == value =>
            {
                Ok(s.answer.clone())
            }
            _ => Err(hash),
        })
    });
    let hash = match found {
        Ok(Some(Ok(answer))) => return answer,
        Ok(Some(Err(hash))) => hash,
        // the thread is ending, or the table is in use further up
        _ => return detect(value),
    };
    let answer = detect(value);
    let _ = TABLE.try_with(|t| {
        let Ok(mut t) = t.try_borrow_mut() else {
            return;
        };
        if let Some(place) = t.slots.get_mut(slot_of(hash)) {
            // a slot's buffer is reused for each new value
            let s = place.get_or_insert_with(|| Slot {
                hash,
                client,
                detector,
                value: Vec::new(),
                answer: None,
            });
            s.hash = hash;
            s.client = client;
            s.detector = detector;
            s.value.clear();
            s.value.extend_from_slice(value);
            s.answer = answer.clone();
        }
    });
    answer
}

fn slot_of(hash: u64) -> usize {
    // the high bits, which the hasher mixes best
    (hash >> 56) as usize & (SLOTS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn fp(s: &str) -> Answer {
        Some(SmallBytes::copy_of(s.as_bytes()))
    }

    /// Gives this thread's table fresh seeds until `keys` (values of the
    /// current client) fall in distinct slots: the table is direct-mapped,
    /// so with a random seed two of a test's values share a slot one time
    /// in 256 and the newer one evicts the older, which a test that counts
    /// the detector's calls must not leave to chance.
    fn spread(keys: &[(Detector, &[u8])]) {
        let client = CLIENT.with(Cell::get);
        TABLE.with(|t| loop {
            let fresh = Table::new();
            let mut slots: Vec<usize> = keys
                .iter()
                .map(|&(d, v)| slot_of(fresh.hash(client, d, v)))
                .collect();
            slots.sort_unstable();
            slots.dedup();
            if slots.len() == keys.len() {
                *t.borrow_mut() = fresh;
                break;
            }
        });
    }

    /// An answer as plain bytes, to compare.
    fn b(a: Answer) -> Option<Vec<u8>> {
        a.map(|f| f.to_vec())
    }

    #[test]
    fn a_value_seen_again_is_answered_without_the_detector() {
        let calls = Cell::new(0);
        let detect = |v: &[u8]| {
            calls.set(calls.get() + 1);
            (v == b"1' or '1'='1").then(|| SmallBytes::copy_of(b"s&sos"))
        };
        let attack = b"1' or '1'='1";
        spread(&[
            (Detector::Sqli, attack),
            (Detector::Sqli, b"hello world"),
            (Detector::Xss, attack),
        ]);
        assert_eq!(b(recall(Detector::Sqli, attack, detect)), b(fp("s&sos")));
        assert_eq!(b(recall(Detector::Sqli, attack, detect)), b(fp("s&sos")));
        assert_eq!(calls.get(), 1);
        assert_eq!(b(recall(Detector::Sqli, b"hello world", detect)), b(None));
        assert_eq!(b(recall(Detector::Sqli, b"hello world", detect)), b(None));
        assert_eq!(calls.get(), 2);
        // the other detector's answer about the same value is its own
        let xss = |_: &[u8]| {
            calls.set(calls.get() + 1);
            None
        };
        assert_eq!(b(recall(Detector::Xss, attack, xss)), b(None));
        assert_eq!(calls.get(), 3);
        assert_eq!(b(recall(Detector::Sqli, attack, detect)), b(fp("s&sos")));
        assert_eq!(calls.get(), 3);
    }

    #[test]
    fn a_client_is_never_answered_from_another_clients_values() {
        let calls = Cell::new(0);
        let detect = |_: &[u8]| {
            calls.set(calls.get() + 1);
            fp("sos")
        };
        let value = b"session=abc'def";
        set_client(IpAddr::from([192, 0, 2, 1]));
        assert_eq!(b(recall(Detector::Sqli, value, detect)), b(fp("sos")));
        assert_eq!(b(recall(Detector::Sqli, value, detect)), b(fp("sos")));
        assert_eq!(calls.get(), 1);
        // another client asking the same works it out afresh
        set_client(IpAddr::from([192, 0, 2, 2]));
        assert_eq!(b(recall(Detector::Sqli, value, detect)), b(fp("sos")));
        assert_eq!(calls.get(), 2);
        // and so does the same address in IPv6 that is not the mapped form
        set_client("2001:db8::1".parse().unwrap());
        assert_eq!(b(recall(Detector::Sqli, value, detect)), b(fp("sos")));
        assert_eq!(calls.get(), 3);
        set_client(IpAddr::from([0, 0, 0, 0]));
    }

    #[test]
    fn long_values_are_never_kept_and_every_answer_is_the_detectors() {
        let calls = Cell::new(0);
        let long = vec![b'\''; MAX_VALUE + 1];
        for _ in 0..3 {
            let got = recall(Detector::Xss, &long, |_| {
                calls.set(calls.get() + 1);
                fp("")
            });
            assert_eq!(b(got), b(fp("")));
        }
        assert_eq!(calls.get(), 3);

        // many more values than slots, asked twice over in varying order:
        // whatever stays or goes, each answer is the one for its value
        let answer_for = |v: &[u8]| {
            (v.iter().map(|&b| u32::from(b)).sum::<u32>() % 3 == 0).then(|| SmallBytes::copy_of(v))
        };
        let values: Vec<Vec<u8>> = (0..SLOTS * 4)
            .map(|i| format!("value {i} ' or {}", i * 7).into_bytes())
            .collect();
        for round in 0..2 {
            for (i, v) in values.iter().enumerate() {
                let v = if round == 1 {
                    &values[values.len() - 1 - i]
                } else {
                    v
                };
                assert_eq!(b(recall(Detector::Sqli, v, answer_for)), b(answer_for(v)));
            }
        }
    }

    #[test]
    fn a_detector_that_asks_again_from_inside_gets_its_own_answer() {
        // the table is not borrowed while a detector runs
        spread(&[(Detector::Sqli, b"a'b"), (Detector::Xss, b"<b>")]);
        let outer = recall(Detector::Sqli, b"a'b", |_| {
            let inner = recall(Detector::Xss, b"<b>", |_| fp(""));
            assert_eq!(b(inner), b(fp("")));
            fp("sn")
        });
        assert_eq!(b(outer), b(fp("sn")));
        assert_eq!(b(recall(Detector::Xss, b"<b>", |_| None)), b(fp("")));
    }
}
