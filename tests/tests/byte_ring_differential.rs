//! Differential test of `ring_protocol::byte_ring` against a C peer that implements the console
//! (`xencons_interface`) and XenStore (`xenstore_domain_interface`) byte rings exactly as Xen's
//! `io/console.h` and `io/xs_wire.h` document them (`tests/c/ring_peer.c`, compiled against
//! `/usr/include/xen`).
//!
//! Pairings: C guest with Rust peer (console backend / XenStore daemon), and Rust guest with C peer;
//! beside each, a reference page driven purely by C performs the same operations. After every write
//! or read, the byte counts, the bytes read, and the notify decision (any byte moved) must equal the
//! reference's, the bytes read must be the next bytes of the stream written, and the whole page must
//! equal the reference page. Runs start with all indices at 0, just below `u32::MAX` (so they wrap),
//! or at a random value. The PRNG seed is printed; `PVKIT_DIFF_SEED` replays one.

use std::collections::VecDeque;
use std::env;
use std::ptr::NonNull;

use pvkit_tests::xen_c::byte_ring::{BytePage, CByteEnd};
use ring_protocol::Result;
use ring_protocol::abi::console::{XENCONS_IN_SIZE, XENCONS_OUT_SIZE, XenconsInterface};
use ring_protocol::abi::xenstore::{XENSTORE_RING_SIZE, XenstoreDomainInterface};
use ring_protocol::byte_ring::{
    ByteReader, ByteWriter, Duplex, console_backend, console_guest, xenstore_daemon, xenstore_guest,
};
use zerocopy::{FromBytes, IntoBytes};

const DEFAULT_SEED: u64 = 0x7076_6b69_7463_6f6e;
const STEPS: usize = 3000;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
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

/// A byte-ring page type: its ring sizes, indices, and Rust ends.
trait Page: BytePage + FromBytes + IntoBytes + Sized + 'static {
    const NAME: &'static str;
    /// Size of the ring the guest writes.
    const GUEST_TX: usize;
    /// Size of the ring the guest reads.
    const GUEST_RX: usize;
    fn set_indices(&mut self, start: u32);
    /// # Safety
    /// As [`console_guest`].
    unsafe fn rust_guest(p: NonNull<Self>) -> Result<Duplex>;
    /// # Safety
    /// As [`console_backend`].
    unsafe fn rust_peer(p: NonNull<Self>) -> Result<Duplex>;
}

impl Page for XenconsInterface {
    const NAME: &'static str = "console";
    const GUEST_TX: usize = XENCONS_OUT_SIZE;
    const GUEST_RX: usize = XENCONS_IN_SIZE;
    fn set_indices(&mut self, s: u32) {
        (self.in_cons, self.in_prod, self.out_cons, self.out_prod) = (s, s, s, s);
    }
    unsafe fn rust_guest(p: NonNull<Self>) -> Result<Duplex> {
        // SAFETY: forwarded from this function's contract.
        unsafe { console_guest(p) }
    }
    unsafe fn rust_peer(p: NonNull<Self>) -> Result<Duplex> {
        // SAFETY: forwarded from this function's contract.
        unsafe { console_backend(p) }
    }
}

impl Page for XenstoreDomainInterface {
    const NAME: &'static str = "xenstore";
    const GUEST_TX: usize = XENSTORE_RING_SIZE;
    const GUEST_RX: usize = XENSTORE_RING_SIZE;
    fn set_indices(&mut self, s: u32) {
        (self.req_cons, self.req_prod, self.rsp_cons, self.rsp_prod) = (s, s, s, s);
    }
    unsafe fn rust_guest(p: NonNull<Self>) -> Result<Duplex> {
        // SAFETY: forwarded from this function's contract.
        unsafe { xenstore_guest(p) }
    }
    unsafe fn rust_peer(p: NonNull<Self>) -> Result<Duplex> {
        // SAFETY: forwarded from this function's contract.
        unsafe { xenstore_daemon(p) }
    }
}

/// A heap page, reached only through its raw pointer while rings use it.
struct HeapPage<P: Page>(NonNull<P>);

impl<P: Page> HeapPage<P> {
    /// A page of the given bytes with all four indices set to `start`.
    fn new(garbage: &[u8], start: u32) -> Self {
        let mut page = Box::new(P::new_zeroed());
        page.as_mut_bytes().copy_from_slice(garbage);
        page.set_indices(start);
        Self(NonNull::from(Box::leak(page)))
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the page is live; this is called only between ring operations, from the one thread
        // that drives them, so nothing writes while the slice lives.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast::<u8>(), size_of::<P>()) }
    }
}

impl<P: Page> Drop for HeapPage<P> {
    fn drop(&mut self) {
        // SAFETY: the pointer came from `Box::leak`, and the ends using it are gone (declared later,
        // dropped earlier).
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

/// One end of a page: writes one ring, reads the other.
trait End {
    /// Bytes written and the notify decision.
    fn write(&mut self, data: &[u8]) -> (usize, bool);
    /// Bytes read and the notify decision.
    fn read(&mut self, buf: &mut [u8]) -> (usize, bool);
}

impl<P: BytePage> End for CByteEnd<P> {
    fn write(&mut self, data: &[u8]) -> (usize, bool) {
        let n = CByteEnd::write(self, data).expect("C write saw inconsistent indices");
        (n, n > 0)
    }
    fn read(&mut self, buf: &mut [u8]) -> (usize, bool) {
        let n = CByteEnd::read(self, buf).expect("C read saw inconsistent indices");
        (n, n > 0)
    }
}

/// The Rust end: a writer and a reader.
struct RustEnd(ByteWriter, ByteReader);

impl End for RustEnd {
    fn write(&mut self, data: &[u8]) -> (usize, bool) {
        let t = self.0.write(data).expect("Rust byte ring write");
        (t.bytes, t.notify)
    }
    fn read(&mut self, buf: &mut [u8]) -> (usize, bool) {
        let t = self.1.read(buf).expect("Rust byte ring read");
        (t.bytes, t.notify)
    }
}

#[derive(Debug, Default)]
struct Stats {
    runs: u64,
    ops: u64,
    bytes_from_guest: u64,
    bytes_to_guest: u64,
    short_writes: u64,
    empty_reads: u64,
    wrapped_runs: u64,
}

/// The ends of one run: the pair under test and the C-only reference pair.
struct Ends<'a> {
    guest: &'a mut dyn End,
    peer: &'a mut dyn End,
    ref_guest: &'a mut dyn End,
    ref_peer: &'a mut dyn End,
}

/// Applies the same operations to the pair under test and to the reference pair, and compares.
fn run<P: Page>(
    label: &str,
    rng: &mut Rng,
    e: Ends<'_>,
    page: &HeapPage<P>,
    ref_page: &HeapPage<P>,
    start: u32,
    st: &mut Stats,
) {
    // Bytes written and not yet read, per direction: the model of each stream.
    let mut from_guest = VecDeque::new();
    let mut to_guest = VecDeque::new();
    let (mut moved_from, mut moved_to) = (0u64, 0u64);
    for step in 0..STEPS {
        let op = rng.below(4);
        let what = format!("{label} step {step} op {op}");
        let (ring, stream) = if op < 2 {
            (P::GUEST_TX, &mut from_guest)
        } else {
            (P::GUEST_RX, &mut to_guest)
        };
        // Sizes up to twice the ring, so writes often fill it and reads often drain it.
        let len = match rng.below(4) {
            0 => rng.below(8) as usize,
            1 => rng.below(ring as u64 / 4) as usize,
            _ => rng.below(2 * ring as u64 + 1) as usize,
        };
        match op {
            // Writes: the guest into its tx ring, the peer into the guest's rx ring.
            0 | 2 => {
                let data = rng.bytes(len);
                let (w, rw) = if op == 0 {
                    (&mut *e.guest, &mut *e.ref_guest)
                } else {
                    (&mut *e.peer, &mut *e.ref_peer)
                };
                let got = w.write(&data);
                assert_eq!(got, rw.write(&data), "{what}: write of {len} bytes");
                assert_eq!(
                    got.0,
                    len.min(ring - stream.len()),
                    "{what}: bytes written vs free space"
                );
                stream.extend(&data[..got.0]);
                st.short_writes += u64::from(got.0 < len);
                if op == 0 {
                    moved_from += got.0 as u64;
                    st.bytes_from_guest += got.0 as u64;
                } else {
                    moved_to += got.0 as u64;
                    st.bytes_to_guest += got.0 as u64;
                }
            }
            // Reads: the peer from the guest's tx ring, the guest from its rx ring.
            _ => {
                let (r, rr) = if op == 1 {
                    (&mut *e.peer, &mut *e.ref_peer)
                } else {
                    (&mut *e.guest, &mut *e.ref_guest)
                };
                let (mut buf, mut ref_buf) = (vec![0u8; len], vec![0u8; len]);
                let got = r.read(&mut buf);
                assert_eq!(got, rr.read(&mut ref_buf), "{what}: read of up to {len} bytes");
                assert_eq!(buf, ref_buf, "{what}: bytes read");
                assert_eq!(
                    got.0,
                    len.min(stream.len()),
                    "{what}: bytes read vs bytes waiting"
                );
                let expected: Vec<u8> = stream.drain(..got.0).collect();
                assert_eq!(
                    &buf[..got.0],
                    &expected[..],
                    "{what}: bytes read are not the bytes written"
                );
                st.empty_reads += u64::from(got.0 == 0);
            }
        }
        if page.bytes() != ref_page.bytes() {
            let first = page
                .bytes()
                .iter()
                .zip(ref_page.bytes())
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            panic!("{what}: page differs from the C-only reference at byte {first}");
        }
        st.ops += 1;
    }
    if u64::from(start) + moved_from.min(moved_to) > u64::from(u32::MAX) {
        st.wrapped_runs += 1;
    }
    st.runs += 1;
}

fn page_type<P: Page>(rng: &mut Rng) -> Stats {
    let mut st = Stats::default();
    for start_kind in 0..3 {
        for rust_guest in [false, true] {
            let start = match start_kind {
                0 => 0,
                1 => u32::MAX - rng.below(2 * P::GUEST_TX as u64) as u32,
                _ => rng.next() as u32,
            };
            let garbage = rng.bytes(size_of::<P>());
            let (page, ref_page) = (
                HeapPage::<P>::new(&garbage, start),
                HeapPage::<P>::new(&garbage, start),
            );
            // SAFETY: the pages outlive the ends (declared first, dropped last), and this one thread
            // drives every end one operation at a time, so the C side's plain accesses never overlap the
            // Rust side's atomic ones. The same holds for every end below.
            let mut ref_guest = unsafe { CByteEnd::new(ref_page.0, true) };
            // SAFETY: as above.
            let mut ref_peer = unsafe { CByteEnd::new(ref_page.0, false) };
            let pairing = if rust_guest {
                "Rust guest + C peer"
            } else {
                "C guest + Rust peer"
            };
            let label = format!("{} start {start:#x} {pairing}", P::NAME);
            // SAFETY: as above; the C end plays the side the Rust end does not.
            let mut c_end = unsafe { CByteEnd::new(page.0, !rust_guest) };
            let duplex = if rust_guest {
                // SAFETY: as above.
                unsafe { P::rust_guest(page.0) }
            } else {
                // SAFETY: as above.
                unsafe { P::rust_peer(page.0) }
            };
            let duplex = duplex.expect("Rust end");
            let mut rust_end = RustEnd(duplex.tx, duplex.rx);
            let (guest, peer): (&mut dyn End, &mut dyn End) = if rust_guest {
                (&mut rust_end, &mut c_end)
            } else {
                (&mut c_end, &mut rust_end)
            };
            let ends = Ends {
                guest,
                peer,
                ref_guest: &mut ref_guest,
                ref_peer: &mut ref_peer,
            };
            run(&label, rng, ends, &page, &ref_page, start, &mut st);
        }
    }
    st
}

#[test]
fn rust_byte_rings_match_console_h_and_xs_wire_h_byte_for_byte() {
    let seed = seed();
    println!("byte ring differential: seed {seed:#x} (replay with PVKIT_DIFF_SEED={seed:#x})");
    let mut rng = Rng(seed);
    let console = page_type::<XenconsInterface>(&mut rng);
    println!("byte ring differential console: {console:?}");
    let xenstore = page_type::<XenstoreDomainInterface>(&mut rng);
    println!("byte ring differential xenstore: {xenstore:?}");
    for st in [&console, &xenstore] {
        assert_eq!(st.runs, 6);
        assert!(
            st.bytes_from_guest > 250_000 && st.bytes_to_guest > 250_000,
            "{st:?}"
        );
        assert!(st.short_writes > 100 && st.empty_reads > 100, "{st:?}");
        assert!(st.wrapped_runs >= 2, "{st:?}");
    }
}
