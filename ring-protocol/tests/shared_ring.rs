//! Unit tests of the shared ring: layout against ring.h's rules, initialisation, request/response
//! exchange, notification decisions, the final-check re-arm, wrap-around and a full ring.

mod common;

use std::mem::{ManuallyDrop, size_of};

use common::*;
use ring_protocol::Error;
use ring_protocol::abi::blkif::{BlkifRequest, BlkifResponse};
use ring_protocol::abi::netif::{NetifRxRequest, NetifRxResponse, NetifTxRequest, NetifTxResponse};
use ring_protocol::ring::{
    BackRing, FrontRing, RING_HEADER_SIZE, XEN_PAGE_SIZE, ring_bytes, ring_size, slot_size,
};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes};

/// Front and back over the same memory, the front having initialised the header.
fn pair<Req, Rsp>(mem: &Mem) -> (FrontRing<Req, Rsp>, BackRing<Req, Rsp>)
where
    Req: FromBytes + IntoBytes + Immutable,
    Rsp: FromBytes + IntoBytes + Immutable,
{
    // SAFETY: `mem` outlives the rings in every test, and is only accessed atomically.
    let front = unsafe { FrontRing::init(mem.ptr(), mem.len()).unwrap() };
    // SAFETY: as above.
    let back = unsafe { BackRing::new(mem.ptr(), mem.len()).unwrap() };
    (front, back)
}

/// Front and back attached at `index` (as after a reconnect), header producers set to match.
fn pair_at<Req, Rsp>(mem: &Mem, index: u32) -> (FrontRing<Req, Rsp>, BackRing<Req, Rsp>)
where
    Req: FromBytes + IntoBytes + Immutable,
    Rsp: FromBytes + IntoBytes + Immutable,
{
    mem.set(REQ_PROD, index);
    mem.set(RSP_PROD, index);
    mem.set(REQ_EVENT, index.wrapping_add(1));
    mem.set(RSP_EVENT, index.wrapping_add(1));
    // SAFETY: as in `pair`.
    let front = unsafe { FrontRing::attach(mem.ptr(), mem.len(), index).unwrap() };
    // SAFETY: as in `pair`.
    let back = unsafe { BackRing::attach(mem.ptr(), mem.len(), index).unwrap() };
    (front, back)
}

/// Slot count the way ring.h's `__RD32(avail / sizeof(union))` computes it: halve a power of two from
/// 2^31 until it fits.
fn rd32(avail_slots: usize) -> u32 {
    let mut p: u32 = 1 << 31;
    while p as usize > avail_slots && p > 0 {
        p >>= 1;
    }
    p
}

#[test]
fn slot_size_is_the_c_union_size() {
    #[repr(C)]
    #[allow(dead_code)]
    union U<A: Copy, B: Copy> {
        a: ManuallyDrop<A>,
        b: ManuallyDrop<B>,
    }
    #[derive(Clone, Copy, FromBytes, IntoBytes, Immutable)]
    #[repr(C)]
    struct Odd12([u32; 3]);
    assert_eq!(
        slot_size::<BlkifRequest, BlkifResponse>(),
        size_of::<U<BlkifRequest, BlkifResponse>>()
    );
    assert_eq!(
        slot_size::<NetifTxRequest, NetifTxResponse>(),
        size_of::<U<NetifTxRequest, NetifTxResponse>>()
    );
    // A 12-byte, 4-aligned request with an 8-aligned response: the union pads to 16.
    assert_eq!(slot_size::<Odd12, u64>(), size_of::<U<Odd12, u64>>());
    assert_eq!(slot_size::<Odd12, u64>(), 16);
    assert_eq!(slot_size::<BlkifRequest, BlkifResponse>(), 112);
}

#[test]
fn ring_sizes_match_ring_h_for_blkif_and_netif() {
    // blkif: 112-byte slots, (4096 - 64) / 112 = 36 -> 32 slots on one page (Linux's BLK_RING_SIZE).
    assert_eq!(ring_size::<BlkifRequest, BlkifResponse>(XEN_PAGE_SIZE), 32);
    // netif: NET_TX_RING_SIZE and NET_RX_RING_SIZE are 256 on one page.
    assert_eq!(ring_size::<NetifTxRequest, NetifTxResponse>(XEN_PAGE_SIZE), 256);
    assert_eq!(ring_size::<NetifRxRequest, NetifRxResponse>(XEN_PAGE_SIZE), 256);
    // Multi-page blkif rings (ring-page-order 0..=4).
    for order in 0..=4 {
        let len = ring_bytes(order);
        let expect = rd32((len - RING_HEADER_SIZE) / 112);
        assert_eq!(
            ring_size::<BlkifRequest, BlkifResponse>(len),
            expect,
            "order {order}"
        );
    }
    assert_eq!(ring_size::<BlkifRequest, BlkifResponse>(ring_bytes(4)), 512);
    // 64-byte entries on one page: 63 fit, 32 used.
    assert_eq!(ring_size::<Req64, Rsp64>(XEN_PAGE_SIZE), 32);
}

#[test]
fn constructors_reject_bad_memory() {
    let mem = Mem::new(4096);
    let odd = mem.ptr().map_addr(|a| a.checked_add(2).unwrap());
    // SAFETY: the pointer is inside `mem`; construction fails before any access.
    let err = unsafe { FrontRing::<Req64, Rsp64>::new(odd, 4000) }.unwrap_err();
    assert!(matches!(err, Error::Misaligned { align: 4, .. }), "{err}");
    // SAFETY: `mem` is valid for 4096 bytes; 100 is less.
    let err = unsafe { BackRing::<Req64, Rsp64>::new(mem.ptr(), 100) }.unwrap_err();
    assert_eq!(
        err,
        Error::TooSmall {
            len: 100,
            needed: 128
        }
    );
    assert!(err.to_string().contains("100 bytes"), "{err}");
}

#[test]
fn init_writes_the_shared_ring_init_header() {
    let mem = Mem::new(XEN_PAGE_SIZE);
    for i in 0..16 {
        mem.set(i, 0xdead_beef);
    }
    mem.set(16, 0x1234_5678); // first slot word: init must not touch it
    let (front, back) = pair::<BlkifRequest, BlkifResponse>(&mem);
    assert_eq!([mem.get(0), mem.get(1), mem.get(2), mem.get(3)], [0, 1, 0, 1]);
    assert!((4..16).all(|i| mem.get(i) == 0), "padding zeroed");
    assert_eq!(mem.get(16), 0x1234_5678);
    assert_eq!((front.size(), back.size()), (32, 32));
    assert_eq!(front.free_requests(), 32);
    assert_eq!(
        (
            front.req_prod_pvt(),
            front.rsp_cons(),
            back.req_cons(),
            back.rsp_prod_pvt()
        ),
        (0, 0, 0, 0)
    );
}

#[test]
fn one_exchange_lands_at_the_ring_h_offsets() {
    let mem = Mem::new(XEN_PAGE_SIZE);
    let (mut front, mut back) = pair::<Req64, Rsp64>(&mem);
    let req = Req64::new(5, 77);
    front.write_request(&req).unwrap();
    // Not published yet.
    assert_eq!(mem.get(REQ_PROD), 0);
    assert_eq!(back.read_request().unwrap(), None);
    assert!(front.push_requests_and_check_notify().unwrap());
    assert_eq!(mem.get(REQ_PROD), 1);
    // The request's bytes sit in slot 0, right after the 64-byte header.
    let slot: Vec<u8> = (16..32).flat_map(|i| mem.get(i).to_ne_bytes()).collect();
    assert_eq!(slot, req.as_bytes());

    let got = back.read_request().unwrap().unwrap();
    assert_eq!(got, req);
    back.write_response(&Rsp64::answer(&got)).unwrap();
    assert!(back.push_responses_and_check_notify().unwrap());
    assert_eq!(mem.get(RSP_PROD), 1);
    let rsp = front.read_response().unwrap().unwrap();
    assert!(rsp.valid_for(77));
    assert_eq!(rsp.id, 5);
    assert_eq!(front.read_response().unwrap(), None);
}

#[test]
fn short_response_overwrites_only_its_own_bytes() {
    // blkif: 112-byte slot, 16-byte response; the rest of the slot keeps the request's bytes, as in C.
    let mem = Mem::new(XEN_PAGE_SIZE);
    let (mut front, mut back) = pair::<BlkifRequest, BlkifResponse>(&mem);
    let mut req = BlkifRequest::new_zeroed();
    req.as_mut_bytes()
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = i as u8 | 0x80);
    front.write_request(&req).unwrap();
    front.push_requests().unwrap();
    let got = back.read_request().unwrap().unwrap();
    assert_eq!(got.as_bytes(), req.as_bytes());
    let rsp = BlkifResponse::new_zeroed();
    back.write_response(&rsp).unwrap();
    back.push_responses().unwrap();
    let slot: Vec<u8> = (16..16 + 28).flat_map(|i| mem.get(i).to_ne_bytes()).collect();
    assert_eq!(&slot[..16], &[0u8; 16]);
    assert_eq!(&slot[16..], &req.as_bytes()[16..]);
}

#[test]
fn full_ring_refuses_then_frees_a_slot_per_consumed_response() {
    let mem = Mem::new(XEN_PAGE_SIZE);
    let (mut front, mut back) = pair::<BlkifRequest, BlkifResponse>(&mem);
    let req = BlkifRequest::new_zeroed();
    for _ in 0..32 {
        front.write_request(&req).unwrap();
    }
    assert!(front.is_full());
    assert_eq!(front.write_request(&req), Err(Error::RingFull { size: 32 }));
    front.push_requests().unwrap();
    assert_eq!(back.unconsumed_requests(), Ok(32));
    back.read_request().unwrap().unwrap();
    // Consuming a request does not free the slot: the response still needs it.
    assert!(front.is_full());
    back.write_response(&BlkifResponse::new_zeroed()).unwrap();
    back.push_responses().unwrap();
    assert!(front.is_full());
    assert!(front.read_response().unwrap().is_some());
    assert_eq!(front.free_requests(), 1);
    front.write_request(&req).unwrap();
    assert_eq!(front.write_request(&req), Err(Error::RingFull { size: 32 }));
    // The ring is not halted by a caller's mistake.
    assert_eq!(front.halted(), None);
}

#[test]
fn backend_cannot_answer_more_than_it_read() {
    let mem = Mem::new(XEN_PAGE_SIZE);
    let (mut front, mut back) = pair::<Req64, Rsp64>(&mem);
    let rsp = Rsp64::answer(&Req64::new(0, 0));
    assert_eq!(
        back.write_response(&rsp),
        Err(Error::NoRequestToAnswer {
            rsp_prod_pvt: 0,
            req_cons: 0
        })
    );
    front.write_request(&Req64::new(0, 0)).unwrap();
    front.push_requests().unwrap();
    back.read_request().unwrap().unwrap();
    assert_eq!(back.unanswered_requests(), 1);
    back.write_response(&rsp).unwrap();
    assert_eq!(
        back.write_response(&rsp),
        Err(Error::NoRequestToAnswer {
            rsp_prod_pvt: 1,
            req_cons: 1
        })
    );
}

/// Whether `event` is one of `old+1 ..= new` (wrapping): the meaning of the C macro's test.
fn event_in_batch(old: u32, new: u32, event: u32) -> bool {
    let mut i = old;
    while i != new {
        i = i.wrapping_add(1);
        if i == event {
            return true;
        }
    }
    false
}

#[test]
fn push_notifies_exactly_when_the_event_index_is_in_the_new_batch() {
    let starts: &[u32] = if cfg!(miri) {
        &[0, u32::MAX - 3]
    } else {
        &[0, 1000, u32::MAX - 40, u32::MAX - 3, u32::MAX]
    };
    let batches: &[u32] = if cfg!(miri) { &[1, 5] } else { &[1, 2, 5, 16] };
    for &start in starts {
        for &batch in batches {
            for delta in [-3i64, -1, 0, 1, 2, 5, 15, 16, 17, 40] {
                // 2048 bytes: 31 slots fit, 16 used; enough for every batch here.
                let mem = Mem::new(2048);
                let (mut front, mut back) = pair_at::<Req64, Rsp64>(&mem, start);
                let event = start.wrapping_add(delta as u32);
                mem.set(REQ_EVENT, event);
                for k in 0..batch {
                    front.write_request(&Req64::new(0, u64::from(k))).unwrap();
                }
                let new = start.wrapping_add(batch);
                let notify = front.push_requests_and_check_notify().unwrap();
                assert_eq!(
                    notify,
                    event_in_batch(start, new, event),
                    "requests: start {start} batch {batch} event {event}"
                );
                // Same decision for responses.
                for _ in 0..batch {
                    back.read_request().unwrap().unwrap();
                    back.write_response(&Rsp64::answer(&Req64::new(0, 0))).unwrap();
                }
                mem.set(RSP_EVENT, event);
                let notify = back.push_responses_and_check_notify().unwrap();
                assert_eq!(
                    notify,
                    event_in_batch(start, new, event),
                    "responses: start {start} event {event}"
                );
            }
        }
    }
}

#[test]
fn push_of_nothing_never_notifies() {
    let mem = Mem::new(XEN_PAGE_SIZE);
    let (mut front, mut back) = pair::<Req64, Rsp64>(&mem);
    assert!(!front.push_requests_and_check_notify().unwrap());
    assert!(!back.push_responses_and_check_notify().unwrap());
}

#[test]
fn final_check_rearms_the_event_and_the_next_push_notifies() {
    let mem = Mem::new(XEN_PAGE_SIZE);
    let (mut front, mut back) = pair::<Req64, Rsp64>(&mem);
    // First batch notifies (req_event is 1 after init); the backend is busy meanwhile, so a second batch
    // published before it re-arms does not.
    front.write_request(&Req64::new(0, 0)).unwrap();
    assert!(front.push_requests_and_check_notify().unwrap());
    front.write_request(&Req64::new(1, 1)).unwrap();
    assert!(!front.push_requests_and_check_notify().unwrap());
    // The backend drains; its final check finds nothing and re-arms req_event = req_cons + 1.
    assert!(back.final_check_for_requests().unwrap());
    while back.read_request().unwrap().is_some() {}
    assert!(!back.final_check_for_requests().unwrap());
    assert_eq!(mem.get(REQ_EVENT), 3);
    // So the next push must notify.
    front.write_request(&Req64::new(2, 2)).unwrap();
    assert!(front.push_requests_and_check_notify().unwrap());
    // A request that arrives between re-arm and the second check is seen by the final check itself.
    assert!(back.final_check_for_requests().unwrap());

    // Responses, the other way round.
    for _ in 0..2 {
        back.write_response(&Rsp64::answer(&Req64::new(0, 0))).unwrap();
    }
    assert!(back.push_responses_and_check_notify().unwrap());
    assert_eq!(front.unconsumed_responses(), Ok(2));
    while front.read_response().unwrap().is_some() {}
    assert!(!front.final_check_for_responses().unwrap());
    assert_eq!(mem.get(RSP_EVENT), 3);
    back.read_request().unwrap().unwrap();
    back.write_response(&Rsp64::answer(&Req64::new(0, 0))).unwrap();
    assert!(back.push_responses_and_check_notify().unwrap());
}

#[test]
fn exchange_wraps_around_u32_max() {
    let mem = Mem::new(XEN_PAGE_SIZE);
    let start = u32::MAX - 37;
    let (mut front, mut back) = pair_at::<Req64, Rsp64>(&mem, start);
    let mut seq = 0u64;
    let mut answered = 0u64;
    for round in 0..10u64 {
        let batch = 3 + round * 3 % 29;
        for _ in 0..batch {
            front.write_request(&Req64::new(seq % 32, seq)).unwrap();
            seq += 1;
        }
        front.push_requests().unwrap();
        while let Some(req) = back.read_request().unwrap() {
            assert!(req.valid());
            back.write_response(&Rsp64::answer(&req)).unwrap();
        }
        back.push_responses().unwrap();
        while let Some(rsp) = front.read_response().unwrap() {
            assert!(rsp.valid_for(answered), "response {answered}");
            answered += 1;
        }
    }
    assert_eq!(answered, seq);
    assert_eq!(front.req_prod_pvt(), start.wrapping_add(seq as u32));
    assert!(front.req_prod_pvt() < start, "indices wrapped");
    assert_eq!(mem.get(RSP_PROD), front.req_prod_pvt());
}

#[test]
fn multi_page_ring_uses_all_its_slots() {
    let len = ring_bytes(3);
    let mem = Mem::new(len);
    let (mut front, mut back) = pair::<BlkifRequest, BlkifResponse>(&mem);
    assert_eq!(front.size(), 256);
    let mut req = BlkifRequest::new_zeroed();
    for i in 0..256u64 {
        req.id = i;
        front.write_request(&req).unwrap();
    }
    assert!(front.is_full());
    front.push_requests().unwrap();
    for i in 0..256u64 {
        assert_eq!(back.read_request().unwrap().unwrap().id, i);
    }
    // The last slot ends inside the 8 pages.
    assert!(RING_HEADER_SIZE + 256 * 112 <= len);
}

#[test]
fn narrow_and_partial_word_copies_round_trip() {
    // 12-byte requests and 6-byte responses: a 12-byte slot, copied in 32-bit words, the response's
    // last word only half used (and zero-padded in the slot).
    #[derive(FromBytes, IntoBytes, Immutable, Clone, Copy, Debug, PartialEq)]
    #[repr(C)]
    struct Req12([u32; 3]);
    #[derive(FromBytes, IntoBytes, Immutable, Clone, Copy, Debug, PartialEq)]
    #[repr(C)]
    struct Rsp6([u16; 3]);
    assert_eq!(slot_size::<Req12, Rsp6>(), 12);
    let mem = Mem::new(RING_HEADER_SIZE + 4 * 12);
    let (mut front, mut back) = pair_at::<Req12, Rsp6>(&mem, u32::MAX - 2);
    assert_eq!(front.size(), 4);
    for round in 0..6u32 {
        let req = Req12([round, !round, round.wrapping_mul(0x0101_0101)]);
        front.write_request(&req).unwrap();
        front.push_requests().unwrap();
        assert_eq!(back.read_request().unwrap(), Some(req));
        let slot = (u32::MAX - 2).wrapping_add(round) as usize % 4;
        // The request left non-zero bytes in the word the response only half fills.
        let w = 16 + slot * 3;
        back.write_response(&Rsp6([round as u16, 0xBEEF, 0xCAFE]))
            .unwrap();
        back.push_responses().unwrap();
        assert_eq!(
            mem.get(w + 1).to_ne_bytes()[2..],
            [0, 0],
            "padding of the partial word"
        );
        assert_eq!(
            mem.get(w + 2),
            round.wrapping_mul(0x0101_0101),
            "bytes past the response untouched"
        );
        assert_eq!(
            front.read_response().unwrap(),
            Some(Rsp6([round as u16, 0xBEEF, 0xCAFE]))
        );
    }
}

#[test]
fn ring_only_4_byte_aligned_copies_in_32_bit_words() {
    // The same 64-byte entries as everywhere else, in memory that is 4- but not 8-byte aligned.
    let alloc = Mem::new(XEN_PAGE_SIZE + 8);
    let ptr = alloc.ptr().map_addr(|a| a.checked_add(4).unwrap());
    // SAFETY: `alloc` outlives the rings; the ring's 4096 bytes lie inside it; access is atomic.
    let mut front = unsafe { FrontRing::<Req64, Rsp64>::init(ptr, XEN_PAGE_SIZE).unwrap() };
    // SAFETY: as above.
    let mut back = unsafe { BackRing::<Req64, Rsp64>::new(ptr, XEN_PAGE_SIZE).unwrap() };
    assert_eq!(alloc.get(1 + REQ_EVENT), 1, "header starts 4 bytes in");
    for seq in 0..100 {
        front.write_request(&Req64::new(seq, seq)).unwrap();
        front.push_requests().unwrap();
        let req = back.read_request().unwrap().unwrap();
        assert!(req.valid() && req.seq == seq);
        back.write_response(&Rsp64::answer(&req)).unwrap();
        back.push_responses().unwrap();
        assert!(front.read_response().unwrap().unwrap().valid_for(seq));
    }
}
