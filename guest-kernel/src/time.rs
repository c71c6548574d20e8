//! The kernel clock: the TSC. Its rate comes from the platform's calibration (on the PC platform
//! `arch::x86_64::timer::calibration`).

/// A point in time, in TSC ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Instant(u64);

impl Instant {
    /// Now.
    pub fn now() -> Self {
        Self(crate::arch::read_tsc())
    }

    /// Ticks from `earlier` to `self` (0 if `earlier` is later).
    pub fn ticks_since(self, earlier: Instant) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// TSC at the first Rust instruction of the boot entry.
static BOOT_TSC: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Records the boot time stamp. Called first thing by a boot entry.
pub fn mark_boot() {
    // Relaxed: single CPU, read later by the same CPU.
    BOOT_TSC.store(crate::arch::read_tsc(), core::sync::atomic::Ordering::Relaxed);
}

/// The instant recorded by [`mark_boot`].
pub fn boot_instant() -> Instant {
    Instant(BOOT_TSC.load(core::sync::atomic::Ordering::Relaxed))
}

/// Converts ticks to microseconds at `hz`.
pub fn ticks_to_us(ticks: u64, hz: u64) -> u64 {
    (u128::from(ticks) * 1_000_000 / u128::from(hz.max(1))) as u64
}

/// Converts ticks to nanoseconds at `hz`.
pub fn ticks_to_ns(ticks: u64, hz: u64) -> u64 {
    (u128::from(ticks) * 1_000_000_000 / u128::from(hz.max(1))) as u64
}
