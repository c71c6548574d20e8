//! vhost-user-blk's request handling (`backends/src/vhost/blk.rs`: descriptor-chain parsing, the
//! header, data and status split, discard/write-zeroes segments, GET_ID, execution, completion)
//! through the same entry point a kick reaches (`VhostUserBackend::handle_event`), on a split ring
//! the fuzzer builds in guest memory: any descriptors (lengths, addresses, flags, chains, loops,
//! indirect tables), any buffer contents, any available index, notifications with or without
//! EVENT_IDX.
//!
//! Invariants: handling a kick never fails or panics; the used ring only grows by chains the
//! driver made available, each used element names a descriptor of the table; a queue that faults
//! is stopped and later kicks do no work on it; and when the queue was not stopped, an honest
//! write, a read of the same sectors and a GET_ID after the input are answered `OK` with the right
//! bytes and lengths.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use pvkit_backends::block::BlockCore;
use pvkit_backends::ratelimit::RateLimit;
use pvkit_backends::vhost::blk::VhostBlk;
use pvkit_fuzz::vq::{DATA, Driver, F_INDIRECT, F_NEXT, F_WRITE, HONEST, MEM, Queue, memory, vring};
use pvkit_fuzz::{Input, image};
use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_queue::QueueT;
use vm_memory::GuestAddressSpace;
use vmm_sys_util::epoll::EventSet;

const SECTORS: u64 = 64;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;

fn core() -> Arc<BlockCore> {
    static CORE: OnceLock<Arc<BlockCore>> = OnceLock::new();
    CORE.get_or_init(|| image("vhost-blk", SECTORS)).clone()
}

fn header(t: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&t.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let size = 1u16 << (input.u8() % 9);
    let event_idx = input.bool();
    let mem = memory();
    let q = Queue::new(0, size);
    let v = vring(&mem, &q, event_idx);
    let blk = VhostBlk::new(core(), None, mem.clone(), 1, Arc::new(RateLimit::peer_log())).expect("backend");
    blk.set_event_idx(event_idx);
    let guard = mem.memory();
    let mut drv = Driver::new(&guard, q);
    // The device's own used index (the one in memory is the driver's to scribble on).
    let next_used = || v.get_ref().get_queue().next_used();
    let kick = |blk: &VhostBlk| {
        blk.handle_event(0, EventSet::IN, std::slice::from_ref(&v), 0)
            .expect("a kick is always handled");
    };
    let mut offered = 0u32;
    let mut ops = 0;
    while !input.is_empty() && ops < 96 {
        ops += 1;
        match input.u8() % 8 {
            0 | 1 => {
                // A descriptor: mostly inside the data area, sometimes anywhere.
                let i = u16::from(input.u8());
                let addr = match input.u8() % 4 {
                    0 => input.u64(),
                    1 => MEM - u64::from(input.u8()),
                    _ => DATA + u64::from(input.u16()) % (HONEST - DATA),
                };
                let len = if input.u8().is_multiple_of(4) {
                    input.u32()
                } else {
                    u32::from(input.u16() % 2048)
                };
                let flags = u16::from(input.u8()) & (F_NEXT | F_WRITE | F_INDIRECT);
                let next = u16::from(input.u8());
                drv.desc(i, addr, len, flags, next);
            }
            2 => {
                // A request header somewhere in the data area.
                const TYPES: [u32; 7] = [T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES, 0xdead];
                let t = TYPES[input.below(TYPES.len())];
                let sector = if input.bool() {
                    u64::from(input.u8())
                } else {
                    input.u64()
                };
                let at = DATA + u64::from(input.u16()) % (HONEST - DATA);
                drv.poke(at, &header(t, sector));
            }
            3 => {
                // Raw bytes anywhere: discard segments, indirect tables, the rings themselves.
                let at = if input.bool() {
                    u64::from(input.u16())
                } else {
                    DATA + u64::from(input.u16()) % (HONEST - DATA)
                };
                let bytes = input.chunk(64);
                drv.poke(at, bytes);
            }
            4 => {
                drv.offer(u16::from(input.u8()));
                offered += 1;
            }
            5 => {
                let idx = if input.u8().is_multiple_of(8) {
                    input.u16()
                } else {
                    drv.avail_idx
                };
                drv.publish(idx);
            }
            6 => {
                let _ = blk.get_config(u32::from(input.u8()), u32::from(input.u8()));
            }
            _ => {
                let (used0, next0) = (next_used(), v.queue_next_avail());
                let rounds = blk.health().rounds();
                let broken = blk.health().is_broken(0);
                kick(&blk);
                if broken {
                    assert_eq!(blk.health().rounds(), rounds, "a stopped queue does no work");
                    continue;
                }
                let (used1, next1) = (next_used(), v.queue_next_avail());
                let added = used1.wrapping_sub(used0);
                let taken = next1.wrapping_sub(next0);
                if !blk.health().is_broken(0) {
                    assert!(added <= taken, "{added} used entries for {taken} chains taken");
                }
                for k in 0..added.min(size) {
                    let (id, _) = drv.used(used1.wrapping_sub(1 + k));
                    assert!(
                        id < u32::from(size),
                        "used element names descriptor {id} of {size}"
                    );
                }
            }
        }
    }
    let _ = offered;
    if blk.health().is_broken(0) {
        let rounds = blk.health().rounds();
        kick(&blk);
        assert_eq!(blk.health().rounds(), rounds, "a stopped queue does no work");
        return;
    }
    // Honest requests after whatever the input did: a write, a read of the same sectors, GET_ID.
    let pattern: Vec<u8> = (0..1024u32)
        .map(|i| (i * 13 + u32::from(input.u8())) as u8)
        .collect();
    let hdr = HONEST;
    let buf = HONEST + 0x100;
    let status = HONEST + 0x900;
    let reqs: [(u32, u16, u32); 3] = [(T_OUT, 0, 1024), (T_IN, F_WRITE, 1024), (T_GET_ID, F_WRITE, 20)];
    for (t, dflags, dlen) in reqs {
        // Whatever the device wrote so far, the driver's next index is the device's.
        drv.avail_idx = v.queue_next_avail();
        let used0 = next_used();
        drv.poke(hdr, &header(t, 2));
        if t == T_OUT {
            drv.poke(buf, &pattern);
        } else {
            drv.poke(buf, &vec![0u8; dlen as usize]);
        }
        drv.poke(status, &[0xff]);
        drv.desc(0, hdr, 16, F_NEXT, 1);
        drv.desc(1, buf, dlen, F_NEXT | dflags, 2);
        drv.desc(2, status, 1, F_WRITE, 0);
        if size < 4 {
            // A ring this small holds no 3-descriptor chain: one descriptor, header only, is refused.
            break;
        }
        drv.offer(0);
        drv.publish(drv.avail_idx);
        kick(&blk);
        assert!(!blk.health().is_broken(0), "an honest request stopped the queue");
        assert_eq!(
            next_used(),
            used0.wrapping_add(1),
            "one used entry for the honest request"
        );
        assert_eq!(drv.used_idx(), used0.wrapping_add(1), "the used index published");
        let (id, len) = drv.used(used0);
        let want = if t == T_OUT { 1 } else { dlen + 1 };
        assert_eq!((id, len), (0, want), "used element of request type {t}");
        assert_eq!(drv.peek(status, 1), vec![0], "status OK for request type {t}");
        match t {
            T_IN => assert_eq!(drv.peek(buf, 1024), pattern, "read back what was written"),
            T_GET_ID => assert_eq!(&drv.peek(buf, 20)[..], b"pvkit-vhost-user-blk"),
            _ => {}
        }
    }
});
