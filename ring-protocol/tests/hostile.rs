//! A hostile peer: forged producer indices, out-of-range and replayed ids, slots rewritten while they
//! are being consumed, indices scribbled at random. Every case must end in a typed error or a clean
//! copy; none may panic, loop or read outside the ring.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use common::*;
use ring_protocol::Error;
use ring_protocol::ring::{BackRing, FrontRing, IdSlab, XEN_PAGE_SIZE};

fn back_over(mem: &Mem) -> BackRing<Req64, Rsp64> {
    // SAFETY: `mem` outlives the ring in every test and is accessed only atomically.
    let back = unsafe { BackRing::new(mem.ptr(), mem.len()).unwrap() };
    back.init_shared();
    back
}

fn front_over(mem: &Mem) -> FrontRing<Req64, Rsp64> {
    // SAFETY: as in `back_over`.
    unsafe { FrontRing::init(mem.ptr(), mem.len()).unwrap() }
}

/// Every fallible backend call returns `e`.
fn assert_back_halted(back: &mut BackRing<Req64, Rsp64>, e: Error) {
    assert_eq!(back.halted(), Some(e));
    assert_eq!(back.read_request(), Err(e));
    assert_eq!(back.unconsumed_requests(), Err(e));
    assert_eq!(back.final_check_for_requests(), Err(e));
    assert_eq!(back.write_response(&Rsp64::answer(&Req64::new(0, 0))), Err(e));
    assert_eq!(back.push_responses(), Err(e));
    assert_eq!(back.push_responses_and_check_notify(), Err(e));
}

/// Every fallible frontend call returns `e`.
fn assert_front_halted(front: &mut FrontRing<Req64, Rsp64>, e: Error) {
    assert_eq!(front.halted(), Some(e));
    assert_eq!(front.read_response(), Err(e));
    assert_eq!(front.unconsumed_responses(), Err(e));
    assert_eq!(front.final_check_for_responses(), Err(e));
    assert_eq!(front.write_request(&Req64::new(0, 0)), Err(e));
    assert_eq!(front.push_requests(), Err(e));
    assert_eq!(front.push_requests_and_check_notify(), Err(e));
}

#[test]
fn request_producer_past_ring_size_halts_the_backend() {
    let mem = Mem::new(XEN_PAGE_SIZE);
    let mut back = back_over(&mem);
    mem.set(REQ_PROD, 33); // 33 requests in a 32-slot ring
    let e = Error::RequestOverrun {
        req_prod: 33,
        req_cons: 0,
        ahead: 33,
        room: 32,
        size: 32,
    };
    assert_eq!(back.read_request(), Err(e));
    assert!(
        e.to_string().contains("33") && e.to_string().contains("halted"),
        "{e}"
    );
    // Putting the index back does not un-halt the ring.
    mem.set(REQ_PROD, 1);
    assert_back_halted(&mut back, e);
    // Exactly full is legitimate.
    let mem = Mem::new(XEN_PAGE_SIZE);
    let mut back = back_over(&mem);
    mem.set(REQ_PROD, 32);
    assert_eq!(back.unconsumed_requests(), Ok(32));
}

#[test]
fn request_producer_counting_unanswered_requests_halts() {
    // 20 requests read but not answered leave room for 12 more; a producer claiming 13 is lying
    // (ring.h's RING_REQUEST_PROD_OVERFLOW).
    let mem = Mem::new(XEN_PAGE_SIZE);
    let mut back = back_over(&mem);
    mem.set(REQ_PROD, 20);
    for _ in 0..20 {
        back.read_request().unwrap().unwrap();
    }
    mem.set(REQ_PROD, 32);
    assert_eq!(back.unconsumed_requests(), Ok(12));
    mem.set(REQ_PROD, 33);
    let e = Error::RequestOverrun {
        req_prod: 33,
        req_cons: 20,
        ahead: 13,
        room: 12,
        size: 32,
    };
    assert_eq!(back.unconsumed_requests(), Err(e));
    assert_back_halted(&mut back, e);
}

#[test]
fn request_producer_going_backwards_halts() {
    let mem = Mem::new(XEN_PAGE_SIZE);
    let mut back = back_over(&mem);
    mem.set(REQ_PROD, 5);
    for _ in 0..5 {
        let req = back.read_request().unwrap().unwrap();
        back.write_response(&Rsp64::answer(&req)).unwrap();
    }
    mem.set(REQ_PROD, 3);
    let e = Error::RequestOverrun {
        req_prod: 3,
        req_cons: 5,
        ahead: u32::MAX - 1,
        room: 32,
        size: 32,
    };
    assert_eq!(back.final_check_for_requests(), Err(e));
    assert_back_halted(&mut back, e);
}

#[test]
fn forged_request_producer_near_wrap() {
    let mem = Mem::new(XEN_PAGE_SIZE);
    let start = u32::MAX - 10;
    mem.set(REQ_PROD, start);
    mem.set(RSP_PROD, start);
    // SAFETY: as in `back_over`.
    let mut back = unsafe { BackRing::<Req64, Rsp64>::attach(mem.ptr(), mem.len(), start).unwrap() };
    mem.set(REQ_PROD, start.wrapping_add(32));
    assert_eq!(back.unconsumed_requests(), Ok(32));
    mem.set(REQ_PROD, start.wrapping_add(33));
    assert!(matches!(
        back.unconsumed_requests(),
        Err(Error::RequestOverrun { ahead: 33, .. })
    ));
}

#[test]
fn response_producer_beyond_outstanding_requests_halts_the_frontend() {
    let mem = Mem::new(XEN_PAGE_SIZE);
    let mut front = front_over(&mem);
    for i in 0..3 {
        front.write_request(&Req64::new(i, i)).unwrap();
    }
    // One more queued but not published: the backend cannot have answered it.
    front.push_requests().unwrap();
    front.write_request(&Req64::new(3, 3)).unwrap();
    mem.set(RSP_PROD, 4);
    let e = Error::ResponseOverrun {
        rsp_prod: 4,
        rsp_cons: 0,
        ahead: 4,
        outstanding: 3,
    };
    assert_eq!(front.read_response(), Err(e));
    mem.set(RSP_PROD, 0);
    assert_front_halted(&mut front, e);
}

#[test]
fn response_producer_going_backwards_halts() {
    let mem = Mem::new(XEN_PAGE_SIZE);
    let mut front = front_over(&mem);
    front.write_request(&Req64::new(0, 0)).unwrap();
    front.push_requests().unwrap();
    mem.set(RSP_PROD, u32::MAX);
    let e = Error::ResponseOverrun {
        rsp_prod: u32::MAX,
        rsp_cons: 0,
        ahead: u32::MAX,
        outstanding: 1,
    };
    assert_eq!(front.final_check_for_responses(), Err(e));
    assert_front_halted(&mut front, e);
}

#[test]
fn out_of_range_and_replayed_response_ids_are_refused() {
    let mem = Mem::new(XEN_PAGE_SIZE);
    let mut front = front_over(&mem);
    let mut back = back_over_existing(&mem);
    let mut ids = IdSlab::<u64, 32>::new();
    // Four requests, each tagged with an id from the slab that remembers its sequence number.
    for seq in 0..4 {
        let id = ids.insert(seq).unwrap();
        front.write_request(&Req64::new(u64::from(id), seq)).unwrap();
    }
    front.push_requests().unwrap();
    // A hostile backend answers with: a valid id, an id beyond the slab, the valid id again, and an id
    // in range that was never issued.
    let forged = [0u64, 1000, 0, 17];
    for &id in &forged {
        let mut req = back.read_request().unwrap().unwrap();
        req.id = id;
        back.write_response(&Rsp64::answer(&req)).unwrap();
    }
    back.push_responses().unwrap();
    let mut results = Vec::new();
    while let Some(rsp) = front.read_response().unwrap() {
        results.push(ids.remove(rsp.id));
    }
    assert_eq!(
        results,
        vec![
            Ok(0),
            Err(Error::IdOutOfRange {
                id: 1000,
                capacity: 32
            }),
            Err(Error::IdNotInFlight { id: 0 }),
            Err(Error::IdNotInFlight { id: 17 }),
        ]
    );
    // Ids 1, 2, 3 are still in flight, the ring keeps working.
    assert_eq!(ids.len(), 3);
    assert_eq!(front.halted(), None);
}

fn back_over_existing(mem: &Mem) -> BackRing<Req64, Rsp64> {
    // SAFETY: as in `back_over`.
    unsafe { BackRing::new(mem.ptr(), mem.len()).unwrap() }
}

fn iterations(normal: u32, miri: u32) -> u32 {
    if cfg!(miri) { miri } else { normal }
}

#[test]
fn slot_rewritten_during_copy_gives_a_snapshot_of_peer_words() {
    // The hostile frontend keeps rewriting every slot word with one of two patterns while the backend
    // consumes. Each copy may mix the patterns word by word, but every word must be one the peer wrote,
    // and the backend must neither panic nor stall.
    const A: u32 = 0xAAAA_AAAA;
    const B: u32 = 0x5555_5555;
    let mem = Arc::new(Mem::new(XEN_PAGE_SIZE));
    // Slots start at byte 64 (dword 8). Req64 slots are copied in u64s, so the peer writes u64s too.
    let both = |v: u32| u64::from(v) << 32 | u64::from(v);
    for d in 8..(XEN_PAGE_SIZE / 8) {
        mem.dword(d).store(both(A), Ordering::Relaxed);
    }
    let mut back = back_over_existing(&mem);
    let stop = Arc::new(AtomicBool::new(false));
    let scribbler = {
        let (mem, stop) = (Arc::clone(&mem), Arc::clone(&stop));
        thread::spawn(move || {
            let mut flip = false;
            let mut rounds = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let v = if flip { A } else { B };
                for d in 8..(XEN_PAGE_SIZE / 8) {
                    mem.dword(d).store(both(v), Ordering::Relaxed);
                }
                flip = !flip;
                rounds += 1;
                if cfg!(miri) {
                    thread::yield_now();
                }
            }
            rounds
        })
    };
    let reply = <Rsp64 as zerocopy::FromBytes>::read_from_bytes(&[0xAA; 64]).unwrap();
    let n = iterations(100_000, 200);
    let mut mixed = 0u32;
    for i in 0..n {
        // Play the honest half of the frontend: publish one request per round.
        mem.word(REQ_PROD).store(i + 1, Ordering::Release);
        let req = back.read_request().unwrap().expect("published request");
        let words: Vec<u32> = zerocopy::IntoBytes::as_bytes(&req)
            .chunks(4)
            .map(|c| u32::from_ne_bytes(c.try_into().unwrap()))
            .collect();
        assert!(
            words.iter().all(|&w| w == A || w == B),
            "word not written by the peer: {words:x?}"
        );
        if words.iter().any(|&w| w != words[0]) {
            mixed += 1;
        }
        // Answer with pattern A too, so the slot only ever holds the two patterns.
        back.write_response(&reply).unwrap();
        back.push_responses().unwrap();
        // The consumer's indices advanced exactly once per request.
        assert_eq!(back.req_cons(), i + 1);
    }
    stop.store(true, Ordering::Relaxed);
    let rounds = scribbler.join().unwrap();
    assert!(rounds > 0);
    eprintln!("{n} requests copied while the peer rewrote the slots {rounds} times; {mixed} copies torn");
}

#[test]
fn random_index_scribbling_ends_in_data_or_a_typed_error() {
    // A peer writes pseudo-random values into every header word while the backend and frontend work.
    // Each call must return promptly with data, nothing, or an overrun error.
    let mem = Arc::new(Mem::new(XEN_PAGE_SIZE));
    let mut front = front_over(&mem);
    let mut back = back_over_existing(&mem);
    let stop = Arc::new(AtomicBool::new(false));
    let scribbler = {
        let (mem, stop) = (Arc::clone(&mem), Arc::clone(&stop));
        thread::spawn(move || {
            let mut x = 0x1234_5678_9abc_def0u64;
            while !stop.load(Ordering::Relaxed) {
                x = mix(x);
                // Mostly small offsets from the current value, sometimes wild.
                let w = (x % 4) as usize;
                let cur = mem.get(w);
                let v = if x & 0x30 == 0 {
                    x as u32
                } else {
                    cur.wrapping_add((x >> 40) as u32 % 5)
                };
                mem.set(w, v);
                if cfg!(miri) {
                    thread::yield_now();
                }
            }
        })
    };
    let n = iterations(50_000, 300);
    let (mut back_err, mut front_err) = (None, None);
    for i in 0..n {
        if front_err.is_none() {
            let r = (|| {
                if !front.is_full() {
                    front.write_request(&Req64::new(0, u64::from(i)))?;
                }
                front.push_requests_and_check_notify()?;
                while front.read_response()?.is_some() {}
                front.final_check_for_responses()
            })();
            if let Err(e) = r {
                assert!(matches!(e, Error::ResponseOverrun { .. }), "{e}");
                front_err = Some(e);
            }
        }
        if back_err.is_none() {
            let r = (|| {
                let mut k = 0;
                while let Some(req) = back.read_request()? {
                    back.write_response(&Rsp64::answer(&req))?;
                    k += 1;
                    assert!(k <= 32, "more requests than slots in one drain");
                }
                back.push_responses_and_check_notify()?;
                back.final_check_for_requests()
            })();
            if let Err(e) = r {
                assert!(matches!(e, Error::RequestOverrun { .. }), "{e}");
                back_err = Some(e);
            }
        }
        if back_err.is_some() && front_err.is_some() {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    scribbler.join().unwrap();
    // Once halted, halted for good.
    if let Some(e) = back_err {
        assert_eq!(back.read_request(), Err(e));
    }
    if let Some(e) = front_err {
        assert_eq!(front.read_response(), Err(e));
    }
    eprintln!("backend: {back_err:?}\nfrontend: {front_err:?}");
}
