//! In-guest workloads, generic over the device traits, run by the kernel's tests.
//!
//! Each returns what it measured: operations, bytes, elapsed guest time, the driver's own
//! [`Counters`] and the per-operation [`Latency`] (by the waiter's clock, [`Waiter::now_ns`]) over
//! the run. Long runs are split into phases; around each phase the workload calls
//! [`Observer::phase`] (the kernel turns that into a marker the host can see in its trace, and
//! snapshots its own kernel-wide counts there) and reports the phase's [`Perf`] through
//! [`Observer::perf`].
//!
//! [`Waiter::now_ns`]: crate::wait::Waiter::now_ns

pub mod blk;
pub mod console;
pub mod latency;
pub mod net;

use crate::counters::Counters;
pub use latency::{Histogram, Latency};

/// I/O port of QEMU's `isa-debugcon` that the guest writes phase markers to (the kernel's
/// [`Observer::phase`]: the phase number at its start, 0 at its end); the host splits its trace of
/// device accesses at those writes.
pub const PHASE_PORT: u16 = 0x402;

/// The guest kernel's tests when its command line names none (`tests=` absent), in order: the safe
/// platform checks. `cargo xtask run` runs the same list before its comparison.
pub const DEFAULT_TESTS: &[&str] = &["hello", "cpuid", "heap", "timer", "pci"];

/// The workloads' parameter defaults: what the guest's tests use when the command line gives none,
/// and what the host's checks (xtask) assume then.
pub mod defaults {
    /// `seed`: offsets, patterns and payloads.
    pub const SEED: u64 = 1;
    /// `blk-integrity` `qd`.
    pub const INTEGRITY_QD: usize = 8;
    /// `blk-integrity` `extents`: random extents written.
    pub const INTEGRITY_EXTENTS: usize = 64;
    /// `blk-throughput` `qd`: the deep queue depth.
    pub const THROUGHPUT_QD: usize = 32;
    /// `ms`: length of each throughput or packet-rate phase.
    pub const PHASE_MS: u64 = 300;
    /// `blk-throughput` `bs`: bytes of the random requests.
    pub const RANDOM_BYTES: usize = 4096;
    /// `net-echo` `frames`.
    pub const NET_FRAMES: u32 = 200;
    /// `net-echo` `window`: frames in flight.
    pub const NET_WINDOW: u32 = 8;
    /// `console-echo` `bytes`.
    pub const CONSOLE_BYTES: usize = 4096;
}

/// What a workload did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    /// Operations completed (requests, frames, console chunks).
    pub ops: u64,
    /// Payload bytes moved.
    pub bytes: u64,
    /// Elapsed guest time in microseconds.
    pub guest_us: u64,
    /// The driver's counts over the run.
    pub counters: Counters,
    /// Per-operation latency (a block request from submission to the completion the workload saw;
    /// a frame from sending to its echo; a console chunk from writing to its last byte's echo).
    pub latency: Latency,
}

/// One measured phase of a throughput run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perf {
    /// Pattern name (`randread4k`, `seqwrite64k`, `echo64`, ...).
    pub pattern: &'static str,
    /// Requests kept in flight (after capping at the device's maximum).
    pub qd: usize,
    /// The measurements.
    pub report: Report,
}

/// Hooks the kernel gives a workload.
///
/// A phase is exactly what lies between `phase(n)` and the following `phase(0)`: the workload
/// calls `phase(n)` right before the phase's work (its latency histogram is allocated before; nothing
/// is allocated per operation) and `phase(0)` right after its last operation, then `perf` with the
/// phase's figures. So an observer can
/// measure the phase itself (the kernel snapshots its exit counters after writing the start marker
/// and before writing the end marker, keeping both marker writes outside).
pub trait Observer {
    /// Phase `n` (1, 2, ...) starts; 0: the phase ended.
    fn phase(&mut self, n: u8);
    /// A phase's figures, right after it ended (after `phase(0)`).
    fn perf(&mut self, perf: &Perf);
}

/// An observer that records everything (tests, or callers that print later).
#[derive(Debug, Default)]
pub struct Recorder {
    /// Markers in order.
    pub phases: alloc::vec::Vec<u8>,
    /// Phase figures in order.
    pub perfs: alloc::vec::Vec<Perf>,
}

impl Observer for Recorder {
    fn phase(&mut self, n: u8) {
        self.phases.push(n);
    }

    fn perf(&mut self, perf: &Perf) {
        self.perfs.push(*perf);
    }
}

/// A small deterministic generator (xorshift64*), so runs are reproducible from a seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Self {
        Self(mix(seed) | 1)
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// splitmix64's finaliser: a well-spread 64-bit hash of `x`.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// CRC-32 (IEEE 802.3, reflected, as zlib's `crc32`), for payload checks the host can repeat.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xedb8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn rng_is_reproducible_and_spread() {
        let a: alloc::vec::Vec<u64> = (0..4).scan(Rng::new(7), |r, _| Some(r.next_u64())).collect();
        let b: alloc::vec::Vec<u64> = (0..4).scan(Rng::new(7), |r, _| Some(r.next_u64())).collect();
        assert_eq!(a, b);
        assert_ne!(Rng::new(7).next_u64(), Rng::new(8).next_u64());
        let mut r = Rng::new(0);
        assert!((0..1000).all(|_| r.below(10) < 10));
    }
}
