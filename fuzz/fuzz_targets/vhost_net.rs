//! vhost-user-net's queue handling (`backends/src/vhost/net.rs`: transmit chains copied into one
//! bounded frame, receive buffers filled from the port's queue) through `handle_event`, on split
//! rings the fuzzer builds in guest memory (queue 0 receive, queue 1 transmit), with frames sent to
//! the guest's port from another switch port.
//!
//! Invariants: handling an event never fails or panics; every frame reaching the switch is at
//! most a standard Ethernet frame (1518 bytes), at most one per transmit chain taken; the used
//! rings only grow by chains taken and name descriptors of their table; a receive used length is
//! 0 or the header plus a whole frame that was sent to the guest; a device that faults leaves the
//! switch and does no more work; and otherwise an honest transmit reaches the switch byte for byte
//! and an honest frame for the guest lands whole in a posted buffer.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use pvkit_backends::net::{QueuedPort, Switch};
use pvkit_backends::ratelimit::RateLimit;
use pvkit_backends::vhost::net::{MAX_FRAME, NET_HDR_LEN, VhostNet};
use pvkit_fuzz::Input;
use pvkit_fuzz::vq::{DATA, Driver, F_INDIRECT, F_NEXT, F_WRITE, HONEST, MEM, Queue, memory, vring};
use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_queue::QueueT;
use vm_memory::GuestAddressSpace;
use vmm_sys_util::epoll::EventSet;

const RX: usize = 0;
const TX: usize = 1;
/// The device's "frames for the guest" event id.
const RX_READY_EVENT: u16 = 3;
const OTHER: [u8; 6] = [2, 0, 0, 0, 0, 0x77];

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let size = 1u16 << (input.u8() % 9);
    let event_idx = input.bool();
    let mem = memory();
    let qs = [Queue::new(0, size), Queue::new(1, size)];
    let vrings = [vring(&mem, &qs[0], event_idx), vring(&mem, &qs[1], event_idx)];
    let switch = Switch::new();
    let other = QueuedPort::new(512, Box::new(|| {}));
    let other_port = switch.add_port(other.clone());
    let net = VhostNet::attach(&switch, mem.clone(), Arc::new(RateLimit::peer_log())).expect("backend");
    net.set_event_idx(event_idx);
    let guard = mem.memory();
    let mut drv = [Driver::new(&guard, qs[0]), Driver::new(&guard, qs[1])];
    let next_used = |q: usize| vrings[q].get_ref().get_queue().next_used();
    let mut sent_to_guest: Vec<Vec<u8>> = Vec::new();
    let mut switched = 0u32;
    let mut tx_taken = 0u32;
    let event = |net: &VhostNet,
                 id: u16,
                 drv: &[Driver<'_>; 2],
                 switched: &mut u32,
                 tx_taken: &mut u32,
                 sent: &[Vec<u8>]| {
        let broken = net.health().any_broken();
        let rounds = net.health().rounds();
        let before = [next_used(RX), next_used(TX)];
        let next0 = [vrings[RX].queue_next_avail(), vrings[TX].queue_next_avail()];
        net.handle_event(id, EventSet::IN, &vrings, 0)
            .expect("an event is always handled");
        if broken {
            assert_eq!(net.health().rounds(), rounds, "a stopped device does no work");
            assert_eq!(net.port(), None, "a stopped device is off the switch");
        }
        for q in [RX, TX] {
            let added = next_used(q).wrapping_sub(before[q]);
            let taken = vrings[q].queue_next_avail().wrapping_sub(next0[q]);
            assert!(
                added <= taken,
                "queue {q}: {added} used entries for {taken} chains taken"
            );
            if q == TX {
                *tx_taken += u32::from(taken);
            }
            for k in 0..added.min(size) {
                let (id, len) = drv[q].used(next_used(q).wrapping_sub(1 + k));
                assert!(
                    id < u32::from(size),
                    "queue {q}: used element names descriptor {id}"
                );
                if q == RX && len != 0 {
                    let n = len as usize;
                    assert!(n > NET_HDR_LEN, "receive of {n} bytes");
                    assert!(
                        sent.iter().any(|f| f.len() == n - NET_HDR_LEN),
                        "receive length {n} of no frame sent"
                    );
                }
            }
        }
        while let Some(f) = other.pop() {
            *switched += 1;
            assert!(
                f.len() <= MAX_FRAME,
                "a {}-byte frame reached the switch",
                f.len()
            );
        }
        assert!(
            *switched <= *tx_taken,
            "{switched} frames switched for {tx_taken} transmit chains"
        );
    };
    let mut ops = 0;
    while !input.is_empty() && ops < 96 {
        ops += 1;
        let q = input.u8() as usize & 1;
        match input.u8() % 8 {
            0 | 1 => {
                let i = u16::from(input.u8());
                let addr = match input.u8() % 4 {
                    0 => input.u64(),
                    1 => MEM - u64::from(input.u8()),
                    _ => DATA + u64::from(input.u16()) % (HONEST - DATA),
                };
                let len = match input.u8() % 4 {
                    0 => input.u32(),
                    1 => 1500 + u32::from(input.u8()),
                    _ => u32::from(input.u16() % 2048),
                };
                let flags = u16::from(input.u8()) & (F_NEXT | F_WRITE | F_INDIRECT);
                drv[q].desc(i, addr, len, flags, u16::from(input.u8()));
            }
            2 => {
                let at = if input.bool() {
                    u64::from(input.u16())
                } else {
                    DATA + u64::from(input.u16()) % (HONEST - DATA)
                };
                drv[q].poke(at, input.chunk(64));
            }
            3 => drv[q].offer(u16::from(input.u8())),
            4 => {
                let idx = if input.u8().is_multiple_of(8) {
                    input.u16()
                } else {
                    drv[q].avail_idx
                };
                drv[q].publish(idx);
            }
            5 => {
                // A frame for the guest (broadcast: the guest's port has learned nothing).
                let len = 14 + usize::from(input.u16()) % 1600;
                let mut f: Vec<u8> = (0..len).map(|i| i as u8 ^ 0x5a).collect();
                f[..6].copy_from_slice(&[0xff; 6]);
                f[6..12].copy_from_slice(&OTHER);
                if switch.send(other_port, &f).is_ok() {
                    sent_to_guest.push(f);
                }
            }
            _ => {
                let id = [TX as u16, RX as u16, RX_READY_EVENT, 4][input.below(4)];
                event(&net, id, &drv, &mut switched, &mut tx_taken, &sent_to_guest);
            }
        }
    }
    // Whatever the input left in the rings is served first (it may stop the device).
    event(
        &net,
        TX as u16,
        &drv,
        &mut switched,
        &mut tx_taken,
        &sent_to_guest,
    );
    event(
        &net,
        RX_READY_EVENT,
        &drv,
        &mut switched,
        &mut tx_taken,
        &sent_to_guest,
    );
    if net.health().any_broken() {
        event(
            &net,
            TX as u16,
            &drv,
            &mut switched,
            &mut tx_taken,
            &sent_to_guest,
        );
        return;
    }
    // Entries published and not taken (an index ahead of the chains) are withdrawn.
    for q in [RX, TX] {
        drv[q].publish(vrings[q].queue_next_avail());
    }
    if size < 2 {
        return;
    }
    // An honest transmit: header descriptor and frame descriptor.
    let mut frame = vec![0u8; 120];
    frame[..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 0x42]);
    for (i, b) in frame[12..].iter_mut().enumerate() {
        *b = (i as u8) ^ input.u8();
    }
    let d = &mut drv[TX];
    d.avail_idx = vrings[TX].queue_next_avail();
    d.poke(HONEST, &[0u8; NET_HDR_LEN]);
    d.poke(HONEST + 0x40, &frame);
    d.desc(0, HONEST, NET_HDR_LEN as u32, F_NEXT, 1);
    d.desc(1, HONEST + 0x40, frame.len() as u32, 0, 0);
    d.offer(0);
    d.publish(d.avail_idx);
    while other.pop().is_some() {}
    net.handle_event(TX as u16, EventSet::IN, &vrings, 0)
        .expect("handled");
    assert!(
        !net.health().any_broken(),
        "an honest transmit stopped the device"
    );
    assert_eq!(
        other.pop(),
        Some(frame),
        "the honest frame reached the switch intact"
    );
    // An honest receive: one writable buffer, then a frame for the guest. Frames queued before
    // go first: keep posting until ours lands.
    let f: Vec<u8> = {
        let mut f: Vec<u8> = (0..200).map(|i| (i as u8).wrapping_mul(3)).collect();
        f[..6].copy_from_slice(&[0xff; 6]);
        f[6..12].copy_from_slice(&OTHER);
        f
    };
    switch.send(other_port, &f).expect("send");
    let mut landed = false;
    for _ in 0..400 {
        let d = &mut drv[RX];
        d.avail_idx = vrings[RX].queue_next_avail();
        let used0 = next_used(RX);
        d.poke(HONEST + 0x400, &[0u8; 2048]);
        d.desc(0, HONEST + 0x400, 2048, F_WRITE, 0);
        d.offer(0);
        d.publish(d.avail_idx);
        net.handle_event(RX_READY_EVENT, EventSet::IN, &vrings, 0)
            .expect("handled");
        assert!(
            !net.health().any_broken(),
            "an honest receive buffer stopped the device"
        );
        if next_used(RX) == used0 {
            break;
        }
        let (_, len) = drv[RX].used(used0);
        if len as usize == NET_HDR_LEN + f.len()
            && drv[RX].peek(HONEST + 0x400 + NET_HDR_LEN as u64, f.len()) == f
        {
            let hdr = drv[RX].peek(HONEST + 0x400, NET_HDR_LEN);
            assert_eq!(hdr[10], 1, "num_buffers");
            landed = true;
            break;
        }
    }
    assert!(landed, "the honest frame landed in a posted buffer");
});
