//! `BackRing` (the backend's request consumer) against a hostile frontend: scripted against a model
//! of `io/ring.h`, then with a second thread flipping indices and slots (see `pvkit_fuzz::ring`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pvkit_fuzz::ring::{Narrow, Wide, run};
use ring_protocol::ring::BackRing;

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((k, rest)) if k & 1 == 0 => run::<Wide, BackRing<Wide, Wide>>(rest),
        Some((_, rest)) => run::<Narrow, BackRing<Narrow, Narrow>>(rest),
        None => {}
    }
});
