//! Differential test of `ring_protocol::byte_ring`'s console rings against a C peer that implements
//! `xencons_interface` exactly as Xen's `io/console.h` documents it (`tests/c/ring_peer.c`, compiled
//! against `/usr/include/xen`).
//!
//! Pairings: C guest with Rust backend, and Rust guest with C backend; beside each, a reference
//! page driven purely by C (C guest, C backend) performs the same operations. After every write or
//! read, the byte counts, the bytes read, and the notify decision (any byte moved) must equal the
//! reference's, the bytes read must be the next bytes of the stream written, and the whole 3088-byte
//! page must equal the reference page. Runs start with all indices at 0, just below `u32::MAX` (so
//! they wrap), or at a random value. The PRNG seed is printed; `PVKIT_DIFF_SEED` replays one.

use std::collections::VecDeque;
use std::env;
use std::ptr::NonNull;

use pvkit_tests::xen_c::console::{CConsole, End};
use ring_protocol::abi::console::{XENCONS_IN_SIZE, XENCONS_OUT_SIZE, XenconsInterface};
use ring_protocol::byte_ring::{ByteReader, ByteWriter, console_backend, console_guest};
use zerocopy::{FromZeros, IntoBytes};

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

/// A heap console page, reached only through its raw pointer while rings use it.
struct Page(NonNull<XenconsInterface>);

impl Page {
    /// A page of random bytes with all four indices set to `start`.
    fn new(garbage: &[u8], start: u32) -> Self {
        let mut page = Box::new(XenconsInterface::new_zeroed());
        page.as_mut_bytes().copy_from_slice(garbage);
        (page.in_cons, page.in_prod, page.out_cons, page.out_prod) = (start, start, start, start);
        Self(NonNull::from(Box::leak(page)))
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the page is live; this is called only between ring operations, from the one thread
        // that drives them, so nothing writes while the slice lives.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast::<u8>(), size_of::<XenconsInterface>()) }
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        // SAFETY: the pointer came from `Box::leak` and the rings using it are gone (declared later,
        // dropped earlier).
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

/// One end of the page: writes one ring, reads the other.
trait ConsoleEnd {
    /// Bytes written and the notify decision.
    fn write(&mut self, data: &[u8]) -> (usize, bool);
    /// Bytes read and the notify decision.
    fn read(&mut self, buf: &mut [u8]) -> (usize, bool);
}

impl ConsoleEnd for CConsole {
    fn write(&mut self, data: &[u8]) -> (usize, bool) {
        let n = CConsole::write(self, data).expect("C console write saw inconsistent indices");
        (n, n > 0)
    }
    fn read(&mut self, buf: &mut [u8]) -> (usize, bool) {
        let n = CConsole::read(self, buf).expect("C console read saw inconsistent indices");
        (n, n > 0)
    }
}

/// The Rust end: a writer and a reader.
struct RustEnd(ByteWriter, ByteReader);

impl ConsoleEnd for RustEnd {
    fn write(&mut self, data: &[u8]) -> (usize, bool) {
        let t = self.0.write(data).expect("Rust console write");
        (t.bytes, t.notify)
    }
    fn read(&mut self, buf: &mut [u8]) -> (usize, bool) {
        let t = self.1.read(buf).expect("Rust console read");
        (t.bytes, t.notify)
    }
}

#[derive(Debug, Default)]
struct Stats {
    runs: u64,
    ops: u64,
    bytes_out: u64,
    bytes_in: u64,
    full_writes: u64,
    empty_reads: u64,
    wrapped_runs: u64,
}

/// Applies the same operation to the pair under test and to the reference pair, and compares.
#[allow(clippy::too_many_arguments)]
fn run(
    label: &str,
    rng: &mut Rng,
    guest: &mut (dyn ConsoleEnd + 'static),
    backend: &mut (dyn ConsoleEnd + 'static),
    page: &Page,
    ref_guest: &mut (dyn ConsoleEnd + 'static),
    ref_backend: &mut (dyn ConsoleEnd + 'static),
    ref_page: &Page,
    start: u32,
    st: &mut Stats,
) {
    // Bytes written and not yet read, per direction: the model of each stream.
    let mut out_stream = VecDeque::new();
    let mut in_stream = VecDeque::new();
    let (mut moved_out, mut moved_in) = (0u64, 0u64);
    for step in 0..STEPS {
        let op = rng.below(4);
        let what = format!("{label} step {step} op {op}");
        // Sizes up to twice the ring, so writes often fill it and reads often drain it.
        let (ring, stream) = if op < 2 {
            (XENCONS_OUT_SIZE, &mut out_stream)
        } else {
            (XENCONS_IN_SIZE, &mut in_stream)
        };
        let len = match rng.below(4) {
            0 => rng.below(8) as usize,
            1 => rng.below(ring as u64 / 4) as usize,
            _ => rng.below(2 * ring as u64 + 1) as usize,
        };
        match op {
            // Writes: the guest into `out`, the backend into `in`.
            0 | 2 => {
                let data = rng.bytes(len);
                let (w, rw) = if op == 0 {
                    (&mut *guest, &mut *ref_guest)
                } else {
                    (&mut *backend, &mut *ref_backend)
                };
                let got = w.write(&data);
                assert_eq!(got, rw.write(&data), "{what}: write of {len} bytes");
                assert_eq!(
                    got.0,
                    len.min(ring - stream.len()),
                    "{what}: bytes written vs free space"
                );
                stream.extend(&data[..got.0]);
                st.full_writes += u64::from(got.0 < len);
                if op == 0 {
                    moved_out += got.0 as u64;
                    st.bytes_out += got.0 as u64;
                } else {
                    moved_in += got.0 as u64;
                    st.bytes_in += got.0 as u64;
                }
            }
            // Reads: the backend from `out`, the guest from `in`.
            _ => {
                let (r, rr) = if op == 1 {
                    (&mut *backend, &mut *ref_backend)
                } else {
                    (&mut *guest, &mut *ref_guest)
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
            panic!("{what}: console page differs from the C-only reference at byte {first}");
        }
        st.ops += 1;
    }
    if u64::from(start) + moved_out.min(moved_in) > u64::from(u32::MAX) {
        st.wrapped_runs += 1;
    }
    st.runs += 1;
}

#[test]
fn rust_console_rings_match_console_h_byte_for_byte() {
    let seed = seed();
    println!("console differential: seed {seed:#x} (replay with PVKIT_DIFF_SEED={seed:#x})");
    let mut rng = Rng(seed);
    let mut st = Stats::default();
    for start_kind in 0..3 {
        for rust_guest in [false, true] {
            let start = match start_kind {
                0 => 0,
                1 => u32::MAX - rng.below(2 * XENCONS_OUT_SIZE as u64) as u32,
                _ => rng.next() as u32,
            };
            let garbage = rng.bytes(size_of::<XenconsInterface>());
            let (page, ref_page) = (Page::new(&garbage, start), Page::new(&garbage, start));
            // SAFETY: the pages outlive the ends (declared first, dropped last), and this one thread
            // drives every end one operation at a time, so the C side's plain accesses never overlap the
            // Rust side's atomic ones. The same holds for every end below.
            let mut ref_guest = unsafe { CConsole::new(ref_page.0, End::Guest) };
            // SAFETY: as above.
            let mut ref_backend = unsafe { CConsole::new(ref_page.0, End::Backend) };
            let pairing = if rust_guest {
                "Rust guest + C backend"
            } else {
                "C guest + Rust backend"
            };
            let label = format!("console start {start:#x} {pairing}");
            if rust_guest {
                // SAFETY: as above.
                let d = unsafe { console_guest(page.0) }.expect("Rust console guest");
                let mut guest = RustEnd(d.tx, d.rx);
                // SAFETY: as above.
                let mut backend = unsafe { CConsole::new(page.0, End::Backend) };
                let args = (
                    &mut ref_guest as &mut dyn ConsoleEnd,
                    &mut ref_backend as &mut dyn ConsoleEnd,
                );
                run(
                    &label,
                    &mut rng,
                    &mut guest,
                    &mut backend,
                    &page,
                    args.0,
                    args.1,
                    &ref_page,
                    start,
                    &mut st,
                );
            } else {
                // SAFETY: as above.
                let mut guest = unsafe { CConsole::new(page.0, End::Guest) };
                // SAFETY: as above.
                let d = unsafe { console_backend(page.0) }.expect("Rust console backend");
                let mut backend = RustEnd(d.tx, d.rx);
                let args = (
                    &mut ref_guest as &mut dyn ConsoleEnd,
                    &mut ref_backend as &mut dyn ConsoleEnd,
                );
                run(
                    &label,
                    &mut rng,
                    &mut guest,
                    &mut backend,
                    &page,
                    args.0,
                    args.1,
                    &ref_page,
                    start,
                    &mut st,
                );
            }
        }
    }
    println!("console differential: {st:?}");
    assert_eq!(st.runs, 6);
    assert!(st.bytes_out > 500_000 && st.bytes_in > 250_000, "{st:?}");
    assert!(st.full_writes > 100 && st.empty_reads > 100, "{st:?}");
    assert!(st.wrapped_runs >= 2, "{st:?}");
}
