//! Differential test of `ring_protocol::ring` against Xen's own `io/ring.h`.
//!
//! A C peer built from ring.h's macros (`tests/c/ring_peer.c`, compiled against `/usr/include/xen`)
//! and our Rust `FrontRing`/`BackRing` share one memory region and exchange requests and responses in
//! both pairings: C front with Rust back, and Rust front with C back. Beside each pair, a reference
//! pair driven purely by C (C front, C back) performs exactly the same operations on a second region.
//!
//! After every operation the test requires:
//! - every request and response read to equal, byte for byte, the one the reference read and the one
//!   the producer wrote;
//! - every notification decision (`push_*_and_check_notify`) and every final check
//!   (`final_check_for_*`) to equal the reference's;
//! - the whole shared region to equal the reference region byte for byte (`memcmp`).
//!
//! Rings: blkif (112-byte slots), netif tx (12) and netif rx (8), ring-page-order 0 to 3, starting
//! at index 0 (after `SHARED_RING_INIT` over garbage), just below `u32::MAX` (so the free-running
//! indices wrap mid-run) and at a random index. Batches vary from 1 request to the whole ring.
//! The PRNG seed is printed; set `PVKIT_DIFF_SEED` to replay one.

use std::env;
use std::ptr::NonNull;
use std::time::Instant;

use pvkit_tests::xen_c::ring::{self as c, Blkif, CBack, CFront, NetifRx, NetifTx, Proto};
use ring_protocol::Error;
use ring_protocol::ring::{BackRing, FrontRing, RING_HEADER_SIZE, SharedPages, XEN_PAGE_SIZE};
use zerocopy::{FromBytes, IntoBytes};

const DEFAULT_SEED: u64 = 0x7076_6b69_7432_0001;
/// Operations per run (one ring type, order, start index and pairing).
const STEPS: usize = 1500;

/// splitmix64: small, deterministic, good enough to pick operations and fill payloads.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    /// An entry of random bytes: every byte, padding included, is exercised.
    fn entry<T: FromBytes + IntoBytes>(&mut self) -> T {
        let mut v = T::new_zeroed();
        self.fill(v.as_mut_bytes());
        v
    }
}

fn seed() -> u64 {
    match env::var("PVKIT_DIFF_SEED") {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("PVKIT_DIFF_SEED={s:?} is not a number: {e}"))
        }
        Err(_) => DEFAULT_SEED,
    }
}

/// The frontend operations both implementations offer.
trait Front<P: Proto> {
    fn size(&self) -> u32;
    fn free_requests(&self) -> u32;
    /// False if the ring is full.
    fn write(&mut self, req: &P::Req) -> bool;
    fn push(&mut self);
    fn push_notify(&mut self) -> bool;
    fn read(&mut self) -> Option<P::Rsp>;
    fn final_check(&mut self) -> bool;
}

/// The backend operations both implementations offer.
trait Back<P: Proto> {
    fn size(&self) -> u32;
    fn read(&mut self) -> Option<P::Req>;
    fn write(&mut self, rsp: &P::Rsp);
    fn push(&mut self);
    fn push_notify(&mut self) -> bool;
    fn final_check(&mut self) -> bool;
}

impl<P: Proto> Front<P> for CFront<P> {
    fn size(&self) -> u32 {
        CFront::size(self)
    }
    fn free_requests(&self) -> u32 {
        CFront::free_requests(self)
    }
    fn write(&mut self, req: &P::Req) -> bool {
        self.write_request(req)
    }
    fn push(&mut self) {
        self.push_requests()
    }
    fn push_notify(&mut self) -> bool {
        self.push_requests_and_check_notify()
    }
    fn read(&mut self) -> Option<P::Rsp> {
        self.read_response().expect("C front saw an impossible rsp_prod")
    }
    fn final_check(&mut self) -> bool {
        self.final_check_for_responses()
    }
}

impl<P: Proto> Back<P> for CBack<P> {
    fn size(&self) -> u32 {
        CBack::size(self)
    }
    fn read(&mut self) -> Option<P::Req> {
        self.read_request().expect("C back saw an impossible req_prod")
    }
    fn write(&mut self, rsp: &P::Rsp) {
        self.write_response(rsp)
    }
    fn push(&mut self) {
        self.push_responses()
    }
    fn push_notify(&mut self) -> bool {
        self.push_responses_and_check_notify()
    }
    fn final_check(&mut self) -> bool {
        self.final_check_for_requests()
    }
}

impl<P: Proto> Front<P> for FrontRing<P::Req, P::Rsp> {
    fn size(&self) -> u32 {
        FrontRing::size(self)
    }
    fn free_requests(&self) -> u32 {
        FrontRing::free_requests(self)
    }
    fn write(&mut self, req: &P::Req) -> bool {
        match self.write_request(req) {
            Ok(()) => true,
            Err(Error::RingFull { .. }) => false,
            Err(e) => panic!("Rust front write_request: {e}"),
        }
    }
    fn push(&mut self) {
        self.push_requests().expect("Rust front push_requests")
    }
    fn push_notify(&mut self) -> bool {
        self.push_requests_and_check_notify()
            .expect("Rust front push_requests_and_check_notify")
    }
    fn read(&mut self) -> Option<P::Rsp> {
        self.read_response().expect("Rust front read_response")
    }
    fn final_check(&mut self) -> bool {
        self.final_check_for_responses()
            .expect("Rust front final_check_for_responses")
    }
}

impl<P: Proto> Back<P> for BackRing<P::Req, P::Rsp> {
    fn size(&self) -> u32 {
        BackRing::size(self)
    }
    fn read(&mut self) -> Option<P::Req> {
        self.read_request().expect("Rust back read_request")
    }
    fn write(&mut self, rsp: &P::Rsp) {
        self.write_response(rsp).expect("Rust back write_response")
    }
    fn push(&mut self) {
        self.push_responses().expect("Rust back push_responses")
    }
    fn push_notify(&mut self) -> bool {
        self.push_responses_and_check_notify()
            .expect("Rust back push_responses_and_check_notify")
    }
    fn final_check(&mut self) -> bool {
        self.final_check_for_requests()
            .expect("Rust back final_check_for_requests")
    }
}

/// What one run exchanged and decided, summed over runs.
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    runs: u64,
    steps: u64,
    requests: u64,
    responses: u64,
    full_rejections: u64,
    notify_checks: u64,
    notify_true: u64,
    final_checks: u64,
    final_true: u64,
    region_compares: u64,
    wrapped_runs: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.runs += o.runs;
        self.steps += o.steps;
        self.requests += o.requests;
        self.responses += o.responses;
        self.full_rejections += o.full_rejections;
        self.notify_checks += o.notify_checks;
        self.notify_true += o.notify_true;
        self.final_checks += o.final_checks;
        self.final_true += o.final_true;
        self.region_compares += o.region_compares;
        self.wrapped_runs += o.wrapped_runs;
    }
}

/// Random bytes in a fresh region, the same in `a` and `b`.
fn same_garbage(rng: &mut Rng, a: &SharedPages, b: &SharedPages) {
    let mut bytes = vec![0u8; a.len()];
    rng.fill(&mut bytes);
    for m in [a, b] {
        // SAFETY: `m` is `len` bytes we own; no ring exists on it yet.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), m.as_ptr().as_ptr(), bytes.len()) };
    }
}

/// The bytes of a region, read between ring operations.
fn region(m: &SharedPages) -> &[u8] {
    // SAFETY: the region is `len` bytes we own; the rings on it are between operations (this thread is
    // the only one touching them), so nothing writes to it while the slice lives.
    unsafe { std::slice::from_raw_parts(m.as_ptr().as_ptr(), m.len()) }
}

/// Requires the two regions to be byte-for-byte equal.
fn assert_same_region(test: &SharedPages, reference: &SharedPages, what: &str) {
    let a = region(test);
    let b = region(reference);
    if a != b {
        let first = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(0);
        let end = (first + 16).min(a.len());
        panic!(
            "{what}: shared region differs from the C-only reference at byte {first} (slot area starts at \
             {RING_HEADER_SIZE}):\n  test      {:02x?}\n  reference {:02x?}",
            &a[first..end],
            &b[first..end]
        );
    }
}

/// One run: `front`/`back` (a mixed C/Rust pair on `mem`) against `rf`/`rb` (a C/C pair on `rmem`).
#[allow(clippy::too_many_arguments)]
fn exchange<P: Proto>(
    label: &str,
    rng: &mut Rng,
    front: &mut dyn Front<P>,
    back: &mut dyn Back<P>,
    mem: &SharedPages,
    rf: &mut CFront<P>,
    rb: &mut CBack<P>,
    rmem: &SharedPages,
    start: u32,
) -> Stats {
    let size = front.size();
    assert_eq!(
        size,
        back.size(),
        "{label}: front and back disagree on the ring size"
    );
    assert_eq!(size, rf.size(), "{label}: Rust and C disagree on RING_SIZE");
    let mut st = Stats {
        runs: 1,
        ..Stats::default()
    };
    // Model: requests published but not yet read by the back; read but not answered; responses
    // published but not yet read by the front.
    let mut to_back = std::collections::VecDeque::new();
    let mut unanswered = 0u32;
    let mut to_front = std::collections::VecDeque::new();
    // Largest batch of this run: sometimes tiny, sometimes the whole ring.
    let max_batch = [1, 2, 3, 8, size / 2, size][rng.below(6) as usize].max(1);
    let mut produced = 0u64;

    for step in 0..STEPS {
        let what = |op: &str| format!("{label} step {step} ({op})");
        match rng.below(100) {
            // Frontend queues a batch and publishes it.
            0..=34 => {
                let free = front.free_requests();
                assert_eq!(free, rf.free_requests(), "{}", what("free requests"));
                let k = if free == 0 {
                    0
                } else {
                    1 + rng.below(u64::from(free.min(max_batch))) as u32
                };
                for _ in 0..k {
                    let req: P::Req = rng.entry();
                    assert!(front.write(&req), "{}", what("write rejected with free slots"));
                    assert!(rf.write_request(&req), "{}", what("reference write rejected"));
                    to_back.push_back(req);
                    produced += 1;
                }
                if front.free_requests() == 0 && rng.chance(50) {
                    let extra: P::Req = rng.entry();
                    let (a, b) = (front.write(&extra), rf.write_request(&extra));
                    assert!(
                        !a && !b,
                        "{}: a full ring accepted a request (test {a}, C {b})",
                        what("write on full")
                    );
                    st.full_rejections += 1;
                }
                if rng.chance(85) {
                    let (a, b) = (front.push_notify(), rf.push_requests_and_check_notify());
                    assert_eq!(a, b, "{}", what("push requests: notify decision"));
                    st.notify_checks += 1;
                    st.notify_true += u64::from(a);
                } else {
                    front.push();
                    rf.push_requests();
                }
            }
            // Backend consumes some requests.
            35..=59 => {
                let k = rng.below(u64::from(max_batch) + 2);
                for _ in 0..k {
                    let (a, b) = (back.read(), rb.read_request().expect("reference C back"));
                    assert_eq!(a, b, "{}", what("read request"));
                    let Some(req) = a else { break };
                    let expected = to_back
                        .pop_front()
                        .expect("model: a request was read that nobody sent");
                    assert_eq!(req.as_bytes(), expected.as_bytes(), "{}", what("request payload"));
                    unanswered += 1;
                    st.requests += 1;
                }
                if rng.chance(30) {
                    let (a, b) = (back.final_check(), rb.final_check_for_requests());
                    assert_eq!(a, b, "{}", what("final check for requests"));
                    assert_eq!(
                        a,
                        !to_back.is_empty(),
                        "{}",
                        what("final check for requests vs model")
                    );
                    st.final_checks += 1;
                    st.final_true += u64::from(a);
                }
            }
            // Backend answers some of the requests it read and publishes the responses.
            60..=79 => {
                if unanswered == 0 {
                    continue;
                }
                let m = 1 + rng.below(u64::from(unanswered)) as u32;
                for _ in 0..m {
                    let rsp: P::Rsp = rng.entry();
                    back.write(&rsp);
                    rb.write_response(&rsp);
                    to_front.push_back(rsp);
                }
                unanswered -= m;
                if rng.chance(85) {
                    let (a, b) = (back.push_notify(), rb.push_responses_and_check_notify());
                    assert_eq!(a, b, "{}", what("push responses: notify decision"));
                    st.notify_checks += 1;
                    st.notify_true += u64::from(a);
                } else {
                    back.push();
                    rb.push_responses();
                }
            }
            // Frontend consumes responses, then maybe re-arms with a final check.
            _ => {
                let k = rng.below(u64::from(max_batch) + 2);
                for _ in 0..k {
                    let (a, b) = (front.read(), rf.read_response().expect("reference C front"));
                    assert_eq!(a, b, "{}", what("read response"));
                    let Some(rsp) = a else { break };
                    let expected = to_front
                        .pop_front()
                        .expect("model: a response was read that nobody sent");
                    assert_eq!(
                        rsp.as_bytes(),
                        expected.as_bytes(),
                        "{}",
                        what("response payload")
                    );
                    st.responses += 1;
                }
                if rng.chance(50) {
                    let (a, b) = (front.final_check(), rf.final_check_for_responses());
                    assert_eq!(a, b, "{}", what("final check for responses"));
                    st.final_checks += 1;
                    st.final_true += u64::from(a);
                }
            }
        }
        assert_same_region(mem, rmem, &what("after operation"));
        st.region_compares += 1;
        st.steps += 1;
    }
    // Did the free-running request index pass u32::MAX during this run?
    if u64::from(start) + produced > u64::from(u32::MAX) {
        st.wrapped_runs += 1;
    }
    st
}

/// Which index a run starts at.
#[derive(Debug, Clone, Copy)]
enum Start {
    /// `SHARED_RING_INIT` over garbage, then index 0.
    Init,
    /// Just below `u32::MAX`, so the indices wrap during the run.
    NearWrap,
    /// A random index.
    Random,
}

/// All runs for one ring type.
fn ring_type<P: Proto>(rng: &mut Rng, total: &mut Stats) {
    assert_eq!(
        RING_HEADER_SIZE,
        c::sring_header_size(),
        "offsetof(struct {}_sring, ring)",
        P::NAME
    );
    assert_eq!(
        ring_protocol::ring::slot_size::<P::Req, P::Rsp>(),
        c::slot_size::<P>(),
        "sizeof(union {}_sring_entry)",
        P::NAME
    );
    // ring_size() must be __CONST_RING_SIZE for every length from one slot to 1 MiB.
    let slot = c::slot_size::<P>();
    for len in (RING_HEADER_SIZE + slot..=1 << 20)
        .step_by(61)
        .chain([4096, 8192, 16384, 32768, 1 << 20])
    {
        assert_eq!(
            ring_protocol::ring::ring_size::<P::Req, P::Rsp>(len),
            c::const_ring_size::<P>(len),
            "__CONST_RING_SIZE({}, {len})",
            P::NAME
        );
    }

    for order in 0..=3u32 {
        let len = XEN_PAGE_SIZE << order;
        for start_kind in [Start::Init, Start::NearWrap, Start::Random] {
            for rust_front in [false, true] {
                let mem = SharedPages::new(len);
                let rmem = SharedPages::new(len);
                same_garbage(rng, &mem, &rmem);
                let size = ring_protocol::ring::ring_size::<P::Req, P::Rsp>(len);
                let start = match start_kind {
                    Start::Init => 0,
                    Start::NearWrap => u32::MAX - rng.below(u64::from(size.min(256))) as u32,
                    Start::Random => rng.next() as u32,
                };
                let init = matches!(start_kind, Start::Init);
                if !init {
                    for m in [&mem, &rmem] {
                        // SAFETY: `m` is ours and no ring is on it yet.
                        unsafe { c::set_indices(m.as_ptr(), start, start.wrapping_add(1)) };
                    }
                }
                let pairing = if rust_front {
                    "Rust front + C back"
                } else {
                    "C front + Rust back"
                };
                let label = format!("{} order {order} start {start:#x} {pairing}", P::NAME);
                let (p, rp) = (mem.as_ptr(), rmem.as_ptr());
                // SAFETY: `mem`/`rmem` outlive the rings (declared first, dropped last); this one
                // thread drives every ring and never runs two operations at once, so the C side's plain
                // accesses never overlap the Rust side's atomic ones. The same holds for every ring below.
                let mut rf = unsafe { CFront::<P>::new(rp, len, start, init) };
                // SAFETY: as above.
                let mut rb = unsafe { CBack::<P>::new(rp, len, start) };
                let st = if rust_front {
                    // SAFETY: as above.
                    let mut front = unsafe { rust_front_ring::<P>(p, len, start, init) };
                    // SAFETY: as above.
                    let mut back = unsafe { CBack::<P>::new(p, len, start) };
                    assert_same_region(&mem, &rmem, &format!("{label}: after init"));
                    exchange(
                        &label, rng, &mut front, &mut back, &mem, &mut rf, &mut rb, &rmem, start,
                    )
                } else {
                    // SAFETY: as above.
                    let mut front = unsafe { CFront::<P>::new(p, len, start, init) };
                    // SAFETY: as above.
                    let mut back =
                        unsafe { BackRing::<P::Req, P::Rsp>::attach(p, len, start) }.expect("Rust back");
                    assert_same_region(&mem, &rmem, &format!("{label}: after init"));
                    exchange(
                        &label, rng, &mut front, &mut back, &mem, &mut rf, &mut rb, &rmem, start,
                    )
                };
                total.add(&st);
            }
        }
    }
}

/// # Safety
/// As [`FrontRing::new`].
unsafe fn rust_front_ring<P: Proto>(
    p: NonNull<u8>,
    len: usize,
    start: u32,
    init: bool,
) -> FrontRing<P::Req, P::Rsp> {
    let ring = if init {
        // SAFETY: forwarded from this function's contract.
        unsafe { FrontRing::init(p, len) }
    } else {
        // SAFETY: forwarded from this function's contract.
        unsafe { FrontRing::attach(p, len, start) }
    };
    ring.expect("Rust front")
}

#[test]
fn rust_and_ring_h_agree_on_every_byte_and_every_notification() {
    let seed = seed();
    println!("ring differential: seed {seed:#x} (replay with PVKIT_DIFF_SEED={seed:#x})");
    let t0 = Instant::now();
    let mut rng = Rng(seed);
    let mut total = Stats::default();
    let mut per_type = Vec::new();
    let mut before = total;
    ring_type::<Blkif>(&mut rng, &mut total);
    per_type.push(("blkif", total.requests - before.requests));
    before = total;
    ring_type::<NetifTx>(&mut rng, &mut total);
    per_type.push(("netif_tx", total.requests - before.requests));
    before = total;
    ring_type::<NetifRx>(&mut rng, &mut total);
    per_type.push(("netif_rx", total.requests - before.requests));

    println!(
        "ring differential: {} runs, {} steps, {} requests and {} responses exchanged ({per_type:?}), \
         {} full-ring rejections, {} notify decisions ({} true), {} final checks ({} true), \
         {} whole-region compares, {} runs wrapped past u32::MAX, {:.2?}",
        total.runs,
        total.steps,
        total.requests,
        total.responses,
        total.full_rejections,
        total.notify_checks,
        total.notify_true,
        total.final_checks,
        total.final_true,
        total.region_compares,
        total.wrapped_runs,
        t0.elapsed()
    );
    // 3 ring types x 4 orders x 3 starts x 2 pairings.
    assert_eq!(total.runs, 72);
    // The comparisons must have had something to compare.
    assert!(
        total.requests >= 20_000,
        "only {} requests exchanged",
        total.requests
    );
    assert!(
        total.responses >= 10_000,
        "only {} responses exchanged",
        total.responses
    );
    assert!(
        total.notify_true > 100 && total.notify_checks - total.notify_true > 100,
        "{total:?}"
    );
    assert!(
        total.final_true > 100 && total.final_checks - total.final_true > 100,
        "{total:?}"
    );
    assert!(total.full_rejections > 10, "{total:?}");
    assert!(
        total.wrapped_runs >= 24,
        "only {} runs wrapped",
        total.wrapped_runs
    );
}

/// Two identical rings after the same well-behaved exchange: one driven by Rust on both ends, one
/// by ring.h on both ends. Fields drop in order: rings before their memory.
struct Twins<P: Proto> {
    rust_front: FrontRing<P::Req, P::Rsp>,
    rust_back: BackRing<P::Req, P::Rsp>,
    c_front: CFront<P>,
    c_back: CBack<P>,
    rust_mem: SharedPages,
    c_mem: SharedPages,
    size: u32,
    /// Back end: next request to read, next response slot.
    req_cons: u32,
    rsp_prod_pvt: u32,
    /// Front end: requests published, next response to read.
    req_prod: u32,
    rsp_cons: u32,
}

impl<P: Proto> Twins<P> {
    /// Builds both rings from `seed` (so the same state can be rebuilt for every forged value).
    fn new(seed: u64) -> Self {
        let mut rng = Rng(seed);
        let len = XEN_PAGE_SIZE << rng.below(2);
        let start = if rng.below(2) == 0 {
            u32::MAX - rng.below(64) as u32
        } else {
            rng.next() as u32
        };
        let (rust_mem, c_mem) = (SharedPages::new(len), SharedPages::new(len));
        same_garbage(&mut rng, &rust_mem, &c_mem);
        for m in [&rust_mem, &c_mem] {
            // SAFETY: `m` is ours and no ring is on it yet.
            unsafe { c::set_indices(m.as_ptr(), start, start.wrapping_add(1)) };
        }
        let (p, cp) = (rust_mem.as_ptr(), c_mem.as_ptr());
        // SAFETY: the memory lives in the same struct and is dropped after the rings; one thread drives
        // the rings one operation at a time. The same holds for the three rings below.
        let mut rust_front =
            unsafe { FrontRing::<P::Req, P::Rsp>::attach(p, len, start) }.expect("Rust front");
        // SAFETY: as above.
        let mut rust_back = unsafe { BackRing::<P::Req, P::Rsp>::attach(p, len, start) }.expect("Rust back");
        // SAFETY: as above.
        let mut c_front = unsafe { CFront::<P>::new(cp, len, start, false) };
        // SAFETY: as above.
        let mut c_back = unsafe { CBack::<P>::new(cp, len, start) };
        let size = rust_front.size();
        // A well-behaved exchange: publish a requests, read them all, answer c <= a, consume all
        // answers. Each consumer has then used up the producer index it last saw, so its next read
        // must look at the (forged) shared index; with entries still pending, our rings would rightly
        // keep using the index they already validated.
        let a = 1 + rng.below(u64::from(size)) as u32;
        let b = a;
        let c = rng.below(u64::from(b) + 1) as u32;
        let d = c;
        for _ in 0..a {
            let req: P::Req = rng.entry();
            assert!(Front::<P>::write(&mut rust_front, &req) && c_front.write_request(&req));
        }
        assert_eq!(
            Front::<P>::push_notify(&mut rust_front),
            c_front.push_requests_and_check_notify()
        );
        for _ in 0..b {
            assert_eq!(
                Back::<P>::read(&mut rust_back),
                c_back.read_request().expect("C back")
            );
        }
        for _ in 0..c {
            let rsp: P::Rsp = rng.entry();
            Back::<P>::write(&mut rust_back, &rsp);
            c_back.write_response(&rsp);
        }
        assert_eq!(
            Back::<P>::push_notify(&mut rust_back),
            c_back.push_responses_and_check_notify()
        );
        for _ in 0..d {
            assert_eq!(
                Front::<P>::read(&mut rust_front),
                c_front.read_response().expect("C front")
            );
        }
        assert_same_region(&rust_mem, &c_mem, "hostile-test setup");
        Self {
            rust_front,
            rust_back,
            c_front,
            c_back,
            rust_mem,
            c_mem,
            size,
            req_cons: start.wrapping_add(b),
            rsp_prod_pvt: start.wrapping_add(c),
            req_prod: start.wrapping_add(a),
            rsp_cons: start.wrapping_add(d),
        }
    }

    /// Writes a forged value into the shared header word at `offset` of both rings.
    fn forge(&self, offset: usize, value: u32) {
        for m in [&self.rust_mem, &self.c_mem] {
            let word = m.as_ptr().as_ptr().wrapping_add(offset).cast::<u32>();
            // SAFETY: `offset` is 0 (req_prod) or 8 (rsp_prod), inside the header of memory we own and
            // 4-byte aligned; no ring operation is running.
            unsafe { word.write(value) };
        }
    }
}

/// Forged values around every boundary that matters for an index `base` in a ring of `size`.
fn forged_values(rng: &mut Rng, base: u32, size: u32, bound: u32) -> Vec<u32> {
    let mut v: Vec<u32> = [
        0,
        1,
        2,
        bound,
        bound.wrapping_add(1),
        bound.wrapping_add(2),
        size,
        size + 1,
        1 << 31,
    ]
    .into_iter()
    .chain([bound.wrapping_sub(1), u32::MAX, u32::MAX - 1, u32::MAX - size])
    .map(|k| base.wrapping_add(k))
    .collect();
    v.extend((0..4).map(|_| rng.next() as u32));
    v.extend((0..4).map(|_| base.wrapping_add(rng.below(u64::from(size) * 2) as u32)));
    v
}

/// Forged producer indices (the XSA-39 class): wherever ring.h's own overflow checks
/// (`RING_REQUEST_PROD_OVERFLOW`, `RING_RESPONSE_PROD_OVERFLOW`) call an index impossible, our rings
/// must refuse it too. Our rings are stricter in exactly two documented ways, and the test pins
/// those down: a request index that moved backwards, and a response index claiming answers to
/// requests never sent. Wherever both accept, both must read the same entry.
fn hostile<P: Proto>(rng: &mut Rng, trials: usize) -> (u64, u64, u64) {
    let (mut cases, mut both_reject, mut only_rust) = (0u64, 0u64, 0u64);
    for trial in 0..trials {
        let seed = rng.next();
        let t = Twins::<P>::new(seed);
        // Backend side: forge req_prod.
        let unanswered = t.req_cons.wrapping_sub(t.rsp_prod_pvt);
        let room = t.size - unanswered;
        for v in forged_values(rng, t.req_cons, t.size, room) {
            let mut t = Twins::<P>::new(seed);
            t.forge(0, v);
            let rust = t.rust_back.read_request();
            let c = t.c_back.read_request();
            let label = format!("{} trial {trial} seed {seed:#x}: forged req_prod {v:#x}", P::NAME);
            let ahead = v.wrapping_sub(t.req_cons);
            match (&rust, &c) {
                (Err(Error::RequestOverrun { .. }), Err(_)) => both_reject += 1,
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{label}: both accepted but read different requests"),
                (Err(Error::RequestOverrun { .. }), Ok(_)) => {
                    // ring.h accepts an index that went back into the read-but-unanswered window.
                    assert!(
                        u64::from(ahead) + u64::from(unanswered) > u64::from(u32::MAX),
                        "{label}: Rust rejected an index ring.h accepts: {rust:?}"
                    );
                    only_rust += 1;
                }
                _ => panic!("{label}: ring.h rejects it but Rust said {rust:?}"),
            }
            if rust.is_err() {
                assert_eq!(
                    t.rust_back.read_request(),
                    rust,
                    "{label}: a halted ring must stay halted"
                );
            }
            cases += 1;
        }
        // Frontend side: forge rsp_prod.
        let outstanding = t.req_prod.wrapping_sub(t.rsp_cons);
        for v in forged_values(rng, t.rsp_cons, t.size, outstanding) {
            let mut t = Twins::<P>::new(seed);
            t.forge(8, v);
            let rust = t.rust_front.read_response();
            let c = t.c_front.read_response();
            let label = format!("{} trial {trial} seed {seed:#x}: forged rsp_prod {v:#x}", P::NAME);
            match (&rust, &c) {
                (Err(Error::ResponseOverrun { .. }), Err(_)) => both_reject += 1,
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{label}: both accepted but read different responses"),
                (Err(Error::ResponseOverrun { .. }), Ok(_)) => {
                    // ring.h accepts up to a ring's worth; only `outstanding` responses can exist.
                    assert!(
                        v.wrapping_sub(t.rsp_cons) > outstanding,
                        "{label}: Rust rejected a possible index"
                    );
                    only_rust += 1;
                }
                _ => panic!("{label}: ring.h rejects it but Rust said {rust:?}"),
            }
            cases += 1;
        }
    }
    (cases, both_reject, only_rust)
}

#[test]
fn forged_producer_indices_rejected_wherever_ring_h_rejects_them() {
    let seed = seed() ^ 0x4053_4139;
    println!("hostile differential: seed {seed:#x}");
    let mut rng = Rng(seed);
    let mut total = (0, 0, 0);
    for (name, r) in [
        ("blkif", hostile::<Blkif>(&mut rng, 150)),
        ("netif_tx", hostile::<NetifTx>(&mut rng, 150)),
        ("netif_rx", hostile::<NetifRx>(&mut rng, 150)),
    ] {
        println!(
            "hostile differential {name}: {} forged indices, {} rejected by both, {} only by Rust",
            r.0, r.1, r.2
        );
        total = (total.0 + r.0, total.1 + r.1, total.2 + r.2);
    }
    assert!(
        total.1 > 1000,
        "too few forged indices were impossible: {total:?}"
    );
    assert!(
        total.0 - total.1 - total.2 > 1000,
        "too few forged indices were plausible: {total:?}"
    );
}
