//! Request -> response round trips per second between two threads, 64-byte entries, at batch sizes 1,
//! 8 and 32: the Xen shared ring (with notification decisions and final-check re-arm) against the same
//! exchange over two `rtrb` SPSC queues and over two `crossbeam_queue::ArrayQueue`s.
//!
//! `cargo bench -p ring-protocol`. Every implementation has the same capacity, does the same work per
//! entry (build a request, answer it, verify the answer's checksum) and keeps the pipe full.
//!
//! The ring's consumers follow the protocol a driver would: drain, then poll the producer index for a
//! short while (`POLL_SPINS` checks), then `final_check_*` (re-arming the event index) and wait on a
//! doorbell flag until the peer's push-and-check-notify says "notify". The notifications counted are
//! those push decisions that said "notify".

use std::hint::spin_loop;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use ring_protocol::ring::{BackRing, FrontRing, ring_bytes, ring_size};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Ring pages: order 2 = 4 pages = 128 slots of 64 bytes. The queues get the same capacity.
const RING_ORDER: u32 = 2;
/// Polls of the peer's producer index before re-arming the event and sleeping (a few tens of µs).
const POLL_SPINS: u32 = 2000;
/// Round trips per measurement.
const TOTAL: u64 = 1_000_000;
/// Measurements per configuration (the best is reported).
const REPEATS: usize = 3;

#[derive(FromBytes, IntoBytes, Immutable, Clone, Copy)]
#[repr(C)]
struct Req {
    id: u64,
    seq: u64,
    payload: [u64; 6],
}

#[derive(FromBytes, IntoBytes, Immutable, Clone, Copy)]
#[repr(C)]
struct Rsp {
    id: u64,
    seq: u64,
    payload: [u64; 5],
    sum: u64,
}

const _: () = assert!(size_of::<Req>() == 64 && size_of::<Rsp>() == 64);

#[inline]
fn make_req(seq: u64) -> Req {
    let x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    Req {
        id: seq & 0xffff,
        seq,
        payload: [x, x ^ 1, x ^ 2, x ^ 3, x ^ 4, x ^ 5],
    }
}

#[inline]
fn answer(req: &Req) -> Rsp {
    let p = req.payload;
    let payload = [p[0] + 1, p[1] + 1, p[2] + 1, p[3] + 1, p[4] + 1];
    let sum = p.iter().fold(req.seq, |a, &w| a.rotate_left(7) ^ w);
    Rsp {
        id: req.id,
        seq: req.seq,
        payload,
        sum,
    }
}

#[inline]
fn check(rsp: &Rsp, seq: u64) -> bool {
    let req = make_req(seq);
    rsp.seq == seq && rsp.id == req.id && rsp.payload[0] == req.payload[0] + 1 && rsp.sum == answer(&req).sum
}

/// Zeroed, page-aligned ring memory (the crate's `SharedPages` needs the `alloc` feature, which a plain
/// `cargo bench` does not enable).
struct Pages {
    ptr: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
}

// SAFETY: plain memory; the rings access it only through atomics.
unsafe impl Send for Pages {}
// SAFETY: as above.
unsafe impl Sync for Pages {}

impl Pages {
    fn new(len: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(len, 4096).unwrap();
        // SAFETY: `len` is non-zero.
        let ptr = std::ptr::NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) }).expect("allocation");
        Self { ptr, layout }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// Idle back-off for the polling queues, the same as the doorbell wait's: spin, then yield the CPU, so
/// that neither side starves the other when the two threads share a core with other work.
#[derive(Default)]
struct Idle {
    spins: u32,
}

impl Idle {
    fn wait(&mut self) {
        self.spins += 1;
        if self.spins < 10_000 {
            spin_loop();
        } else {
            thread::yield_now();
        }
    }

    fn reset(&mut self) {
        self.spins = 0;
    }
}

/// An event channel stand-in.
#[derive(Default)]
struct Doorbell {
    rung: AtomicBool,
}

impl Doorbell {
    fn ring(&self) {
        // Release: pairs with the Acquire swap in `wait`.
        self.rung.store(true, Ordering::Release);
    }

    fn wait(&self) {
        let mut spins = 0u32;
        // Acquire: pairs with the Release store in `ring`.
        while !self.rung.swap(false, Ordering::Acquire) {
            spins += 1;
            if spins < 10_000 {
                spin_loop();
            } else {
                thread::yield_now();
            }
        }
    }
}

struct Stats {
    elapsed: Duration,
    front_notifies: u64,
    back_notifies: u64,
}

fn capacity() -> usize {
    ring_size::<Req, Rsp>(ring_bytes(RING_ORDER)) as usize
}

fn run_ring(batch: usize, total: u64, poll_spins: u32) -> Stats {
    let pages = Arc::new(Pages::new(ring_bytes(RING_ORDER)));
    // SAFETY: `pages` stays alive (an Arc clone is held by the backend thread, which is joined before
    // this function returns) and is accessed only through these two rings.
    let mut front = unsafe { FrontRing::<Req, Rsp>::init(pages.ptr, pages.layout.size()).unwrap() };
    // SAFETY: as above.
    let mut back = unsafe { BackRing::<Req, Rsp>::new(pages.ptr, pages.layout.size()).unwrap() };
    let to_back = Arc::new(Doorbell::default());
    let to_front = Arc::new(Doorbell::default());
    let back_notifies = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let backend = {
        let (pages, to_back, to_front, back_notifies) = (
            Arc::clone(&pages),
            Arc::clone(&to_back),
            Arc::clone(&to_front),
            Arc::clone(&back_notifies),
        );
        thread::spawn(move || {
            let _keep = pages;
            let (mut served, mut notifies) = (0u64, 0u64);
            while served < total {
                let mut k = 0;
                while let Some(req) = back.read_request().unwrap() {
                    back.write_response(&answer(&req)).unwrap();
                    k += 1;
                    if k == batch {
                        break;
                    }
                }
                served += k as u64;
                if k > 0 {
                    if back.push_responses_and_check_notify().unwrap() {
                        notifies += 1;
                        to_front.ring();
                    }
                    continue;
                }
                let mut spins = 0;
                while spins < poll_spins && back.unconsumed_requests().unwrap() == 0 {
                    spin_loop();
                    spins += 1;
                }
                if spins == poll_spins && !back.final_check_for_requests().unwrap() {
                    to_back.wait();
                }
            }
            back_notifies.store(notifies, Ordering::Relaxed);
        })
    };
    let (mut next, mut done, mut notifies) = (0u64, 0u64, 0u64);
    while done < total {
        let want = batch.min((total - next) as usize);
        let produced = want > 0 && front.free_requests() as usize >= want;
        if produced {
            for _ in 0..want {
                front.write_request(&make_req(next)).unwrap();
                next += 1;
            }
            if front.push_requests_and_check_notify().unwrap() {
                notifies += 1;
                to_back.ring();
            }
        }
        let mut got = 0;
        while let Some(rsp) = front.read_response().unwrap() {
            assert!(check(&rsp, done), "bad response {done}");
            done += 1;
            got += 1;
        }
        if !produced && got == 0 {
            let mut spins = 0;
            while spins < poll_spins && front.unconsumed_responses().unwrap() == 0 {
                spin_loop();
                spins += 1;
            }
            if spins == poll_spins && !front.final_check_for_responses().unwrap() {
                to_front.wait();
            }
        }
    }
    backend.join().unwrap();
    Stats {
        elapsed: start.elapsed(),
        front_notifies: notifies,
        back_notifies: back_notifies.load(Ordering::Relaxed),
    }
}

fn run_rtrb(batch: usize, total: u64) -> Stats {
    let (mut req_tx, mut req_rx) = rtrb::RingBuffer::<Req>::new(capacity());
    let (mut rsp_tx, mut rsp_rx) = rtrb::RingBuffer::<Rsp>::new(capacity());
    let start = Instant::now();
    let backend = thread::spawn(move || {
        let (mut served, mut idle) = (0u64, Idle::default());
        while served < total {
            let mut k = 0;
            while k < batch {
                let Ok(req) = req_rx.pop() else { break };
                // The response queue has the request queue's capacity and the frontend keeps at most
                // that many in flight, so this never spins for long.
                let mut rsp = answer(&req);
                while let Err(rtrb::PushError::Full(r)) = rsp_tx.push(rsp) {
                    rsp = r;
                    spin_loop();
                }
                k += 1;
            }
            served += k as u64;
            if k == 0 {
                idle.wait();
            } else {
                idle.reset();
            }
        }
    });
    let (mut next, mut done, mut in_flight, mut idle) = (0u64, 0u64, 0usize, Idle::default());
    let cap = capacity();
    while done < total {
        let want = batch.min((total - next) as usize);
        let produced = want > 0 && cap - in_flight >= want;
        if produced {
            for _ in 0..want {
                assert!(req_tx.push(make_req(next)).is_ok(), "room checked");
                next += 1;
            }
            in_flight += want;
        }
        let mut got = 0;
        while let Ok(rsp) = rsp_rx.pop() {
            assert!(check(&rsp, done), "bad response {done}");
            done += 1;
            got += 1;
        }
        in_flight -= got;
        if !produced && got == 0 {
            idle.wait();
        } else {
            idle.reset();
        }
    }
    backend.join().unwrap();
    Stats {
        elapsed: start.elapsed(),
        front_notifies: 0,
        back_notifies: 0,
    }
}

fn run_array_queue(batch: usize, total: u64) -> Stats {
    let reqs = Arc::new(ArrayQueue::<Req>::new(capacity()));
    let rsps = Arc::new(ArrayQueue::<Rsp>::new(capacity()));
    let start = Instant::now();
    let backend = {
        let (reqs, rsps) = (Arc::clone(&reqs), Arc::clone(&rsps));
        thread::spawn(move || {
            let (mut served, mut idle) = (0u64, Idle::default());
            while served < total {
                let mut k = 0;
                while k < batch {
                    let Some(req) = reqs.pop() else { break };
                    let mut rsp = answer(&req);
                    while let Err(r) = rsps.push(rsp) {
                        rsp = r;
                        spin_loop();
                    }
                    k += 1;
                }
                served += k as u64;
                if k == 0 {
                    idle.wait();
                } else {
                    idle.reset();
                }
            }
        })
    };
    let (mut next, mut done, mut in_flight, mut idle) = (0u64, 0u64, 0usize, Idle::default());
    let cap = capacity();
    while done < total {
        let want = batch.min((total - next) as usize);
        let produced = want > 0 && cap - in_flight >= want;
        if produced {
            for _ in 0..want {
                assert!(reqs.push(make_req(next)).is_ok(), "room checked");
                next += 1;
            }
            in_flight += want;
        }
        let mut got = 0;
        while let Some(rsp) = rsps.pop() {
            assert!(check(&rsp, done), "bad response {done}");
            done += 1;
            got += 1;
        }
        in_flight -= got;
        if !produced && got == 0 {
            idle.wait();
        } else {
            idle.reset();
        }
    }
    backend.join().unwrap();
    Stats {
        elapsed: start.elapsed(),
        front_notifies: 0,
        back_notifies: 0,
    }
}

/// Best of `REPEATS` runs (shortest time), with that run's notification counts.
fn best(f: impl Fn(usize, u64) -> Stats, batch: usize) -> Stats {
    (0..REPEATS)
        .map(|_| f(batch, TOTAL))
        .min_by_key(|s| s.elapsed)
        .expect("REPEATS > 0")
}

fn per_1000(s: &Stats) -> f64 {
    (s.front_notifies + s.back_notifies) as f64 * 1000.0 / TOTAL as f64
}

fn ops(s: &Stats) -> f64 {
    TOTAL as f64 / s.elapsed.as_secs_f64()
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too, so keep a quick mode.
    let quick = std::env::args().any(|a| a == "--test") || cfg!(debug_assertions);
    if quick {
        // Smoke run: every implementation completes a small exchange with correct responses.
        for batch in [1, 8, 32] {
            run_ring(batch, 10_000, POLL_SPINS);
            run_ring(batch, 10_000, 0);
            run_rtrb(batch, 10_000);
            run_array_queue(batch, 10_000);
        }
        println!("roundtrip bench: smoke run ok (run `cargo bench -p ring-protocol` for numbers)");
        return;
    }
    let wall = Instant::now();
    println!(
        "round trips of 64-byte entries between two threads; capacity {} entries ({}-page ring); best of {REPEATS} x {TOTAL}",
        capacity(),
        1 << RING_ORDER
    );
    println!(
        "{:>5} | {:>12} | {:>12} | {:>12} | {:>9} | {:>9} | {:>16} | {:>12} | {:>16}",
        "batch",
        "ring ops/s",
        "rtrb ops/s",
        "AQ ops/s",
        "ring/rtrb",
        "ring/AQ",
        "notify/1000 req",
        "no-poll ops/s",
        "no-poll notify/1k"
    );
    for batch in [1usize, 8, 32] {
        let ring = best(|b, t| run_ring(b, t, POLL_SPINS), batch);
        let rtrb = best(run_rtrb, batch);
        let aq = best(run_array_queue, batch);
        let bare = best(|b, t| run_ring(b, t, 0), batch);
        println!(
            "{:>5} | {:>12.0} | {:>12.0} | {:>12.0} | {:>8.2}x | {:>8.2}x | {:>16} | {:>12.0} | {:>16}",
            batch,
            ops(&ring),
            ops(&rtrb),
            ops(&aq),
            ops(&ring) / ops(&rtrb),
            ops(&ring) / ops(&aq),
            format!(
                "{:.2} ({}+{})",
                per_1000(&ring),
                ring.front_notifies,
                ring.back_notifies
            ),
            ops(&bare),
            format!("{:.2}", per_1000(&bare)),
        );
    }
    println!(
        "notify/1000 req: push-and-check-notify decisions that said \"notify\" (front->back + back->front), \
         consumers polling {POLL_SPINS} times before re-arming; no-poll: re-arm and sleep as soon as empty"
    );
    println!("total bench time {:.1} s", wall.elapsed().as_secs_f64());
}
