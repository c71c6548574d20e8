//! The shared-ring consumers (`ring_protocol::ring::{BackRing, FrontRing}`) against a hostile peer.
//!
//! Two phases per input:
//!
//! 1. **Scripted**, single-threaded: the input is a script of peer actions (rewrite a slot word,
//!    move the peer's producer index anywhere, including backwards and past the ring, move an event
//!    index) and consumer calls. A model of the ring (the indices of `io/ring.h` and the halting rules)
//!    predicts every call's result, so the target checks that each entry handed out is exactly the
//!    bytes of the right slot at that moment, that nothing more is handed out than the peer may
//!    have published, that a violation halts the ring with the predicted error and every later call
//!    returns it, that the consumer writes its own slots and indices only, and nothing outside the
//!    ring's memory.
//! 2. **Concurrent** (when the input asks for it): a second thread keeps flipping the peer's
//!    producer index, event index and every slot word (with values tagged by slot and word) while the
//!    consumer runs. Every entry handed out must then be one whole copy taken from the slot it names
//!    (every word tagged with that slot and its own position), validated once on the copy, and the
//!    copy must not change afterwards however the memory changes; the consumer never has more
//!    entries outstanding than the ring holds, a halt is for good, and no canary is touched.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use ring_protocol::Error;
use ring_protocol::ring::{BackRing, FrontRing, RING_HEADER_SIZE, ring_size, slot_size};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::{Input, SharedMem, concurrently};

/// An entry of eight words: slots of 32 bytes, copied in 64-bit words.
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Wide(pub [u32; 8]);

/// An entry of three words: slots of 12 bytes, copied in 32-bit words.
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Narrow(pub [u32; 3]);

/// An entry type made of `WORDS` 32-bit words.
pub trait Entry:
    FromBytes + IntoBytes + Immutable + Copy + std::fmt::Debug + PartialEq + Send + 'static
{
    /// Words per entry.
    const WORDS: usize;
    /// The entry with these words.
    fn from_words(w: &[u32]) -> Self;
    /// Its words.
    fn words(&self) -> &[u32];
}

impl Entry for Wide {
    const WORDS: usize = 8;
    fn from_words(w: &[u32]) -> Self {
        Wide(w.try_into().expect("8 words"))
    }
    fn words(&self) -> &[u32] {
        &self.0
    }
}

impl Entry for Narrow {
    const WORDS: usize = 3;
    fn from_words(w: &[u32]) -> Self {
        Narrow(w.try_into().expect("3 words"))
    }
    fn words(&self) -> &[u32] {
        &self.0
    }
}

const REQ_PROD: usize = 0;
const REQ_EVENT: usize = 4;
const RSP_PROD: usize = 8;
const RSP_EVENT: usize = 12;

/// The consumer end under test: a `BackRing` (consumes requests, produces responses) or a
/// `FrontRing` (produces requests, consumes responses), with the same entry type both ways.
pub trait Side<T: Entry>: Send {
    /// Whether this is the backend end.
    const BACK: bool;
    /// Header offset of the index the peer produces into.
    const PEER_PROD: usize = if Self::BACK { REQ_PROD } else { RSP_PROD };
    /// Header offset of our producer index.
    const OWN_PROD: usize = if Self::BACK { RSP_PROD } else { REQ_PROD };
    /// Header offset of the event index we arm.
    const OWN_EVENT: usize = if Self::BACK { REQ_EVENT } else { RSP_EVENT };
    /// Header offset of the event index the peer arms.
    const PEER_EVENT: usize = if Self::BACK { RSP_EVENT } else { REQ_EVENT };

    /// # Safety
    /// As the ring constructors'.
    unsafe fn attach(mem: &SharedMem, index: u32) -> Self;
    fn init_shared(&self);
    fn size(&self) -> u32;
    fn consume(&mut self) -> ring_protocol::Result<Option<T>>;
    fn produce(&mut self, v: &T) -> ring_protocol::Result<()>;
    fn push(&mut self) -> ring_protocol::Result<()>;
    fn push_notify(&mut self) -> ring_protocol::Result<bool>;
    fn final_check(&mut self) -> ring_protocol::Result<bool>;
    fn unconsumed(&mut self) -> ring_protocol::Result<u32>;
    fn cons(&self) -> u32;
    fn prod_pvt(&self) -> u32;
    fn halted(&self) -> Option<Error>;
}

impl<T: Entry> Side<T> for BackRing<T, T> {
    const BACK: bool = true;
    unsafe fn attach(mem: &SharedMem, index: u32) -> Self {
        // SAFETY: forwarded (the caller keeps `mem` alive and accesses it atomically).
        unsafe { BackRing::attach(mem.ptr(), mem.len(), index) }.expect("ring fits")
    }
    fn init_shared(&self) {
        BackRing::init_shared(self)
    }
    fn size(&self) -> u32 {
        BackRing::size(self)
    }
    fn consume(&mut self) -> ring_protocol::Result<Option<T>> {
        self.read_request()
    }
    fn produce(&mut self, v: &T) -> ring_protocol::Result<()> {
        self.write_response(v)
    }
    fn push(&mut self) -> ring_protocol::Result<()> {
        self.push_responses()
    }
    fn push_notify(&mut self) -> ring_protocol::Result<bool> {
        self.push_responses_and_check_notify()
    }
    fn final_check(&mut self) -> ring_protocol::Result<bool> {
        self.final_check_for_requests()
    }
    fn unconsumed(&mut self) -> ring_protocol::Result<u32> {
        self.unconsumed_requests()
    }
    fn cons(&self) -> u32 {
        self.req_cons()
    }
    fn prod_pvt(&self) -> u32 {
        self.rsp_prod_pvt()
    }
    fn halted(&self) -> Option<Error> {
        BackRing::halted(self)
    }
}

impl<T: Entry> Side<T> for FrontRing<T, T> {
    const BACK: bool = false;
    unsafe fn attach(mem: &SharedMem, index: u32) -> Self {
        // SAFETY: forwarded (the caller keeps `mem` alive and accesses it atomically).
        unsafe { FrontRing::attach(mem.ptr(), mem.len(), index) }.expect("ring fits")
    }
    fn init_shared(&self) {
        FrontRing::init_shared(self)
    }
    fn size(&self) -> u32 {
        FrontRing::size(self)
    }
    fn consume(&mut self) -> ring_protocol::Result<Option<T>> {
        self.read_response()
    }
    fn produce(&mut self, v: &T) -> ring_protocol::Result<()> {
        self.write_request(v)
    }
    fn push(&mut self) -> ring_protocol::Result<()> {
        self.push_requests()
    }
    fn push_notify(&mut self) -> ring_protocol::Result<bool> {
        self.push_requests_and_check_notify()
    }
    fn final_check(&mut self) -> ring_protocol::Result<bool> {
        self.final_check_for_responses()
    }
    fn unconsumed(&mut self) -> ring_protocol::Result<u32> {
        self.unconsumed_responses()
    }
    fn cons(&self) -> u32 {
        self.rsp_cons()
    }
    fn prod_pvt(&self) -> u32 {
        self.req_prod_pvt()
    }
    fn halted(&self) -> Option<Error> {
        FrontRing::halted(self)
    }
}

/// What `io/ring.h` says the consumer end must do, independently of the implementation.
#[derive(Debug)]
struct Model {
    back: bool,
    size: u32,
    cons: u32,
    prod_pvt: u32,
    pushed: u32,
    seen: u32,
    halted: Option<Error>,
}

impl Model {
    /// Validates the peer's producer index `prod` as the ring must (and halts on a violation).
    fn refresh(&mut self, prod: u32) -> Result<u32, Error> {
        let ahead = prod.wrapping_sub(self.cons);
        let e = if self.back {
            let room = self.size - self.cons.wrapping_sub(self.prod_pvt);
            (ahead > room).then_some(Error::RequestOverrun {
                req_prod: prod,
                req_cons: self.cons,
                ahead,
                room,
                size: self.size,
            })
        } else {
            let outstanding = self.pushed.wrapping_sub(self.cons);
            (ahead > outstanding).then_some(Error::ResponseOverrun {
                rsp_prod: prod,
                rsp_cons: self.cons,
                ahead,
                outstanding,
            })
        };
        if let Some(e) = e {
            self.halted = Some(e);
            return Err(e);
        }
        self.seen = prod;
        Ok(ahead)
    }

    fn check(&self) -> Result<(), Error> {
        self.halted.map_or(Ok(()), Err)
    }

    /// Whether one more entry may be produced, or the error saying why not.
    fn may_produce(&self) -> Result<(), Error> {
        if self.back {
            if self.cons.wrapping_sub(self.prod_pvt) == 0 {
                return Err(Error::NoRequestToAnswer {
                    rsp_prod_pvt: self.prod_pvt,
                    req_cons: self.cons,
                });
            }
        } else if self.prod_pvt.wrapping_sub(self.cons) >= self.size {
            return Err(Error::RingFull { size: self.size });
        }
        Ok(())
    }
}

/// Ring memory sizes the input picks from: one slot, one page, pages with a ragged tail.
const LENS: [usize; 6] = [RING_HEADER_SIZE + 32, 4096, 4096 + 100, 8192, 3 * 4096, 16 * 4096];

fn slot_off<T: Entry>(size: u32, idx: u32) -> usize {
    RING_HEADER_SIZE + (idx & (size - 1)) as usize * slot_size::<T, T>()
}

/// Stores word `j` of slot `idx` as the ring itself accesses it (64-bit words when `wide`).
fn store_word<T: Entry>(mem: &SharedMem, size: u32, wide: bool, idx: u32, j: usize, v: u32) {
    let at = slot_off::<T>(size, idx) + 4 * j;
    if wide {
        let d = mem.dword(at & !7);
        let old = d.load(Ordering::Relaxed);
        let new = if at.is_multiple_of(8) {
            (old & !0xffff_ffff) | u64::from(v)
        } else {
            (old & 0xffff_ffff) | (u64::from(v) << 32)
        };
        d.store(new, Ordering::Relaxed);
    } else {
        mem.word(at).store(v, Ordering::Relaxed);
    }
}

fn load_slot<T: Entry>(mem: &SharedMem, size: u32, wide: bool, idx: u32) -> Vec<u32> {
    let at = slot_off::<T>(size, idx);
    if wide {
        (0..T::WORDS / 2)
            .flat_map(|i| {
                let d = mem.dword(at + 8 * i).load(Ordering::Relaxed);
                [d as u32, (d >> 32) as u32]
            })
            .collect()
    } else {
        (0..T::WORDS)
            .map(|j| mem.word(at + 4 * j).load(Ordering::Relaxed))
            .collect()
    }
}

/// A word tagged with the slot and word position it was written at (concurrent phase).
fn tag(slot: u32, word: usize, noise: u32) -> u32 {
    (slot << 20) | ((word as u32) << 12) | (noise & 0xfff)
}

fn untag(v: u32) -> (u32, usize) {
    (v >> 20, ((v >> 12) & 0xff) as usize)
}

/// Runs one input against the consumer end `S` with entries `T`.
pub fn run<T: Entry, S: Side<T>>(data: &[u8]) {
    let mut input = Input::new(data);
    let len = LENS[input.below(LENS.len())];
    let start = if input.bool() { input.u32() } else { 0 };
    // Whether the concurrent phase follows the script (decided first: the script runs to the end
    // of the input).
    let flip = input.u8();
    let mem = Arc::new(SharedMem::new(len));
    let size = ring_size::<T, T>(len);
    let wide = slot_size::<T, T>().is_multiple_of(8);
    // SAFETY: `mem` outlives the ring (dropped after it, at the end of this function) and is
    // accessed by this harness only through atomics of the ring's own sizes.
    let mut ring = unsafe { S::attach(&mem, start) };
    assert_eq!(ring.size(), size);
    ring.init_shared();
    // The peer (ours) starts in step with the private indices.
    mem.word(REQ_PROD).store(start, Ordering::Relaxed);
    mem.word(RSP_PROD).store(start, Ordering::Relaxed);
    let mut m = Model {
        back: S::BACK,
        size,
        cons: start,
        prod_pvt: start,
        pushed: start,
        seen: start,
        halted: None,
    };
    let mut ops = 0;
    while !input.is_empty() && ops < 512 {
        ops += 1;
        match input.u8() % 10 {
            0 | 1 => {
                // The peer rewrites a word of a slot (any slot: also one being consumed).
                let idx = u32::from(input.u16());
                let j = input.below(T::WORDS);
                let v = input.u32();
                store_word::<T>(&mem, size, wide, idx, j, v);
            }
            2 => {
                // The peer moves its producer index: a few ahead, behind, or anywhere.
                let prod = match input.u8() % 3 {
                    0 => m.cons.wrapping_add(u32::from(input.u8()) % (size + 3)),
                    1 => m.cons.wrapping_sub(1 + u32::from(input.u8())),
                    _ => input.u32(),
                };
                mem.word(S::PEER_PROD).store(prod, Ordering::Relaxed);
            }
            3 => {
                let at = if input.bool() { S::PEER_EVENT } else { S::OWN_EVENT };
                mem.word(at).store(input.u32(), Ordering::Relaxed);
            }
            4 | 5 => {
                let slot = load_slot::<T>(&mem, size, wide, m.cons);
                let expect = m.check().and_then(|()| {
                    if m.cons == m.seen {
                        let prod = mem.word(S::PEER_PROD).load(Ordering::Relaxed);
                        if m.refresh(prod)? == 0 {
                            return Ok(None);
                        }
                    }
                    Ok(Some(T::from_words(&slot)))
                });
                let got = ring.consume();
                assert_eq!(got, expect, "consume: model {m:?}");
                if let Ok(Some(_)) = got {
                    m.cons = m.cons.wrapping_add(1);
                }
            }
            6 => {
                let words: Vec<u32> = (0..T::WORDS).map(|_| input.u32()).collect();
                let v = T::from_words(&words);
                let expect = m.check().and_then(|()| m.may_produce());
                let got = ring.produce(&v);
                assert_eq!(got, expect, "produce: model {m:?}");
                if got.is_ok() {
                    assert_eq!(
                        load_slot::<T>(&mem, size, wide, m.prod_pvt),
                        words,
                        "entry written whole"
                    );
                    m.prod_pvt = m.prod_pvt.wrapping_add(1);
                }
            }
            7 => {
                let notify = input.bool();
                let event = mem.word(S::PEER_EVENT).load(Ordering::Relaxed);
                let (old, new) = (m.pushed, m.prod_pvt);
                let expect = m
                    .check()
                    .map(|()| new.wrapping_sub(event) < new.wrapping_sub(old));
                if notify {
                    assert_eq!(ring.push_notify(), expect, "push and check notify");
                } else {
                    assert_eq!(ring.push(), expect.map(drop), "push");
                }
                if expect.is_ok() {
                    m.pushed = new;
                    assert_eq!(
                        mem.word(S::OWN_PROD).load(Ordering::Relaxed),
                        new,
                        "index published"
                    );
                }
            }
            8 => {
                // Single-threaded, so the re-check after re-arming sees the same index.
                let prod = mem.word(S::PEER_PROD).load(Ordering::Relaxed);
                let expect = m.check().and_then(|()| {
                    if m.refresh(prod)? > 0 {
                        return Ok(true);
                    }
                    Ok(m.refresh(prod)? > 0)
                });
                let got = ring.final_check();
                assert_eq!(got, expect, "final check: model {m:?}");
                if got == Ok(false) {
                    assert_eq!(
                        mem.word(S::OWN_EVENT).load(Ordering::Relaxed),
                        m.cons.wrapping_add(1),
                        "event re-armed one past the consumer"
                    );
                }
            }
            _ => {
                let prod = mem.word(S::PEER_PROD).load(Ordering::Relaxed);
                let expect = m.check().and_then(|()| m.refresh(prod));
                assert_eq!(ring.unconsumed(), expect, "unconsumed: model {m:?}");
            }
        }
        assert_eq!(ring.halted(), m.halted, "halted");
        assert_eq!(
            (ring.cons(), ring.prod_pvt()),
            (m.cons, m.prod_pvt),
            "private indices"
        );
        // The consumer never writes the shared header's private/padding words.
        for at in (16..RING_HEADER_SIZE).step_by(4) {
            assert_eq!(mem.word(at).load(Ordering::Relaxed), 0, "header padding at {at}");
        }
        mem.check_canaries();
    }
    if flip & 1 != 0 {
        concurrent::<T, S>(&mem, ring, size, wide, flip, data);
    }
    mem.check_canaries();
}

/// Tiny deterministic generator for the concurrent phase (seeded by the input).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 16) as u32
    }
}

/// Validation a consumer would run on its copy (here: every word carries the tag of the slot it
/// came from and of its own position). Returns the slot the copy came from, or `None` if invalid.
fn validate<T: Entry>(e: &T, size: u32) -> Option<u32> {
    let (slot, _) = untag(e.words()[0]);
    e.words()
        .iter()
        .enumerate()
        .all(|(j, &w)| untag(w) == (slot, j))
        .then_some(slot & (size - 1))
}

fn concurrent<T: Entry, S: Side<T>>(
    shared: &Arc<SharedMem>,
    mut ring: S,
    size: u32,
    wide: bool,
    mode: u8,
    data: &[u8],
) {
    let mem: &SharedMem = shared;
    // Seeded by the whole input, so that every input gets its own schedule of flips.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for &b in data {
        seed = (seed ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    // Every slot tagged before the peer thread starts: whatever is read is a tagged word.
    for s in 0..size {
        for j in 0..T::WORDS {
            store_word::<T>(mem, size, wide, s, j, tag(s, j, 0));
        }
    }
    let (peer_mem, peer_prod, peer_event) = (shared.clone(), S::PEER_PROD, S::PEER_EVENT);
    let peer = move |stop: &std::sync::atomic::AtomicBool| {
        let mem = &*peer_mem;
        let mut rng = Rng(seed | 1);
        let mut flips = 0u32;
        while !stop.load(Ordering::Relaxed) && flips < 20_000 {
            flips += 1;
            let r = rng.next();
            match r % 8 {
                0 => {
                    // Producer index: mostly plausible, sometimes wild.
                    let cur = mem.word(peer_prod).load(Ordering::Relaxed);
                    let v = if mode & 2 != 0 && r & 0x100 != 0 {
                        rng.next()
                    } else {
                        cur.wrapping_add(rng.next() % 3)
                    };
                    mem.word(peer_prod).store(v, Ordering::Release);
                }
                1 => mem.word(peer_event).store(rng.next(), Ordering::Relaxed),
                _ => {
                    let s = rng.next() % size;
                    if wide {
                        let j = (rng.next() as usize % (T::WORDS / 2)) * 2;
                        let n = rng.next();
                        let d = u64::from(tag(s, j, n)) | (u64::from(tag(s, j + 1, n >> 12)) << 32);
                        mem.dword(slot_off::<T>(size, s) + 4 * j)
                            .store(d, Ordering::Relaxed);
                    } else {
                        let j = rng.next() as usize % T::WORDS;
                        mem.word(slot_off::<T>(size, s) + 4 * j)
                            .store(tag(s, j, rng.next()), Ordering::Relaxed);
                    }
                }
            }
        }
    };
    concurrently(peer, || {
        let mut rng = Rng(seed.rotate_left(32) | 1);
        let mut halted = ring.halted();
        let mut kept: Vec<(T, Option<u32>)> = Vec::new();
        for _ in 0..400 {
            match rng.next() % 5 {
                0 | 1 => {
                    let at = ring.cons();
                    match ring.consume() {
                        Ok(Some(e)) => {
                            // Copy-then-validate: this copy is what the consumer acts on.
                            let verdict = validate(&e, size);
                            assert_eq!(verdict, Some(at & (size - 1)), "a whole copy of slot {at}: {e:?}");
                            if kept.len() < 32 {
                                kept.push((e, verdict));
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            assert!(halted.is_none_or(|h| h == e), "one halting error");
                            halted = Some(e);
                        }
                    }
                }
                2 => {
                    let at = ring.prod_pvt() & (size - 1);
                    let words: Vec<u32> = (0..T::WORDS).map(|j| tag(at, j, 0xabc)).collect();
                    let _ = ring.produce(&T::from_words(&words));
                }
                3 => {
                    let _ = ring.push_notify();
                }
                _ => {
                    let _ = ring.final_check();
                }
            }
            if let Some(h) = halted {
                assert_eq!(ring.halted(), Some(h), "a halt is for good");
                assert_eq!(ring.consume(), Err(h));
            }
            let outstanding = if S::BACK {
                ring.cons().wrapping_sub(ring.prod_pvt())
            } else {
                ring.prod_pvt().wrapping_sub(ring.cons())
            };
            assert!(
                outstanding <= size,
                "{outstanding} outstanding in a ring of {size}"
            );
        }
        // The copies taken never changed, whatever the peer did to the memory since.
        for (e, verdict) in &kept {
            assert_eq!(validate(e, size), *verdict);
        }
    });
    mem.check_canaries();
}
