//! The vhost-user relay's gate (`backends/src/vhost/relay/gate.rs` `Gate::new` / `Gate::check`): every
//! message a hostile VMM could send (any request code, header flags, payload sizes and values,
//! memory tables, ring addresses and sizes, descriptors of any kind and number), one connection's
//! worth in sequence.
//!
//! Invariants: nothing panics; whatever the gate lets through satisfies the protocol and the
//! daemons' policy as a separate model of it states (version-1 request flags, at most 8
//! descriptors and exactly those the request takes, kick/call/error descriptors that are eventfds,
//! 1 to 8 non-overlapping memory regions inside sealed files within the memory limit, queue sizes
//! that are powers of two up to the maximum, ring indices below the device's queues, 16-bit ring
//! bases, rings aligned and inside the last memory table, no protocol feature that was not
//! offered); and plain well-formed requests are accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pvkit_backends::vhost::relay::{Gate, Policy};
use pvkit_fuzz::Input;
use pvkit_fuzz::relay::{GET_FEATURES, Model, SET_VRING_NUM, make, message};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let queues = 1 + u32::from(input.u8() % 3);
    let policy = Policy {
        protocol_features: if input.bool() {
            0x1 | 0x2 | 0x8 | 0x200
        } else {
            0x8
        },
        queues,
        max_queue_size: 256,
        allow_unsealed_memory: false,
        max_memory: if input.bool() { 1 << 40 } else { 0x180000 },
    };
    let mut model = Model {
        offered: policy.protocol_features,
        queues,
        max_queue: policy.max_queue_size,
        max_memory: policy.max_memory,
        memory: Vec::new(),
        sizes: vec![256; queues as usize],
    };
    let mut gate = Gate::new(policy);
    for _ in 0..24 {
        if input.is_empty() {
            break;
        }
        let m = message(&mut input);
        let fds: Vec<_> = m.fds.iter().map(|&k| make(k)).collect();
        match gate.check(m.req, m.flags, &m.payload, &fds) {
            Ok(_) => model.accepted(&m, &fds),
            Err(e) => {
                // Plain requests are never refused.
                let plain = (m.flags == 1 || m.flags == 9) && fds.is_empty();
                if plain && m.req == GET_FEATURES {
                    panic!("GET_FEATURES refused: {e}");
                }
                if plain && m.req == SET_VRING_NUM && m.payload.len() == 8 {
                    let (i, n) = (
                        u32::from_le_bytes(m.payload[0..4].try_into().expect("4")),
                        u32::from_le_bytes(m.payload[4..8].try_into().expect("4")),
                    );
                    assert!(
                        i >= queues || !n.is_power_of_two() || n > 256,
                        "SET_VRING_NUM {i} {n} refused: {e}"
                    );
                }
            }
        }
    }
});
