//! Two-thread stress: a frontend thread and a backend thread exchange requests and responses over one
//! shared allocation, using the notify decisions and the final-check re-arm to decide when to sleep.
//! Sleeping is a spin-with-yield on a doorbell flag; a lost wake-up shows up as a watchdog panic.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use ring_protocol::ring::{BackRing, FrontRing, IdSlab, ring_bytes};

/// An event channel stand-in: `ring` sets it, `wait` sleeps until it is set and clears it.
#[derive(Default)]
struct Doorbell {
    rung: AtomicBool,
    rings: AtomicU64,
}

impl Doorbell {
    fn ring(&self) {
        self.rings.fetch_add(1, Ordering::Relaxed);
        // Release: pairs with the Acquire swap in `wait` (the ring's own fences order the indices).
        self.rung.store(true, Ordering::Release);
    }

    fn wait(&self, who: &str) {
        let start = Instant::now();
        // Acquire: pairs with the Release store in `ring`.
        while !self.rung.swap(false, Ordering::Acquire) {
            thread::yield_now();
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{who} waited 30 s: lost wake-up"
            );
        }
    }
}

struct Outcome {
    responses: u64,
    sum: u64,
    front_notifies: u64,
    back_notifies: u64,
}

fn run(len: usize, start: u32, total: u64, batch: u32) -> Outcome {
    let mem = Arc::new(Mem::new(len));
    mem.set(REQ_PROD, start);
    mem.set(RSP_PROD, start);
    mem.set(REQ_EVENT, start.wrapping_add(1));
    mem.set(RSP_EVENT, start.wrapping_add(1));
    // SAFETY: `mem` is kept alive by the Arcs moved into both threads, which are joined before it drops;
    // it is accessed only atomically.
    let mut front = unsafe { FrontRing::<Req64, Rsp64>::attach(mem.ptr(), mem.len(), start).unwrap() };
    // SAFETY: as above.
    let mut back = unsafe { BackRing::<Req64, Rsp64>::attach(mem.ptr(), mem.len(), start).unwrap() };
    let to_back = Arc::new(Doorbell::default());
    let to_front = Arc::new(Doorbell::default());

    let backend = {
        let (to_back, to_front, mem) = (Arc::clone(&to_back), Arc::clone(&to_front), Arc::clone(&mem));
        thread::spawn(move || {
            let _keep = mem;
            let mut served = 0u64;
            while served < total {
                let mut k = 0;
                while let Some(req) = back.read_request().unwrap() {
                    assert!(req.valid(), "request {} arrived corrupted", req.seq);
                    back.write_response(&Rsp64::answer(&req)).unwrap();
                    k += 1;
                    served += 1;
                    if k % batch == 0 && back.push_responses_and_check_notify().unwrap() {
                        to_front.ring();
                    }
                }
                if k > 0 {
                    if back.push_responses_and_check_notify().unwrap() {
                        to_front.ring();
                    }
                } else if !back.final_check_for_requests().unwrap() {
                    to_back.wait("backend");
                }
            }
        })
    };

    let size = front.size();
    let mut ids = IdSlab::<u64, 512>::new();
    assert!(size as usize <= ids.capacity());
    let (mut next, mut done, mut sum) = (0u64, 0u64, 0u64);
    while done < total {
        let mut produced = 0;
        while next < total && !front.is_full() && produced < batch {
            let id = ids.insert(next).unwrap();
            front.write_request(&Req64::new(u64::from(id), next)).unwrap();
            next += 1;
            produced += 1;
        }
        if produced > 0 && front.push_requests_and_check_notify().unwrap() {
            to_back.ring();
        }
        let mut got = 0;
        while let Some(rsp) = front.read_response().unwrap() {
            let seq = ids.remove(rsp.id).unwrap();
            assert_eq!(seq, done, "responses come back in order");
            assert!(rsp.valid_for(seq), "response {seq} arrived corrupted");
            sum = sum.wrapping_add(rsp.sum);
            done += 1;
            got += 1;
        }
        if produced == 0 && got == 0 && !front.final_check_for_responses().unwrap() {
            to_front.wait("frontend");
        }
    }
    backend.join().unwrap();
    assert!(ids.is_empty());
    Outcome {
        responses: done,
        sum,
        front_notifies: to_back.rings.load(Ordering::Relaxed),
        back_notifies: to_front.rings.load(Ordering::Relaxed),
    }
}

/// The checksum total of the responses an echoing backend gives to requests `0..total`.
fn expected_sum(total: u64) -> u64 {
    (0..total).fold(0u64, |acc, seq| {
        acc.wrapping_add(Rsp64::answer(&Req64::new(0, seq)).sum)
    })
}

fn scaled(normal: u64, miri: u64) -> u64 {
    if cfg!(miri) { miri } else { normal }
}

#[test]
fn two_threads_one_page_200k_requests() {
    let total = scaled(200_000, 300);
    let out = run(ring_bytes(0), 0, total, 8);
    assert_eq!(out.responses, total);
    assert_eq!(out.sum, expected_sum(total));
    eprintln!(
        "{total} round trips; notifications: front->back {}, back->front {}",
        out.front_notifies, out.back_notifies
    );
}

#[test]
fn two_threads_multi_page_ring_across_index_wrap() {
    // 4 pages of 64-byte slots = 128 slots, indices starting just below u32::MAX.
    let total = scaled(100_000, 300);
    let out = run(ring_bytes(2), u32::MAX - 1000, total, 32);
    assert_eq!(out.responses, total);
    assert_eq!(out.sum, expected_sum(total));
}

#[test]
fn two_threads_unbatched() {
    let total = scaled(50_000, 100);
    let out = run(ring_bytes(0), u32::MAX - 7, total, 1);
    assert_eq!(out.responses, total);
    assert_eq!(out.sum, expected_sum(total));
}
