//! `timer`: periodic interrupts arrive at the programmed rate.
//!
//! Runs two interrupt sources at once for `timer.ms` (default 100) milliseconds, measured with the TSC:
//! the local APIC timer at `timer.hz` (default 1000), and PIT channel 0 at the nearest rate it can
//! do, delivered as ISA IRQ 0 through the IOAPIC (GSI 2) to a vector from the handler-registration
//! API, i.e. the same path a device interrupt takes. Each count must be within `timer.tolerance`
//! percent (default 10) of rate x measured time.

use core::sync::atomic::{AtomicU64, Ordering};

use super::{Outcome, Params, fail};
use crate::arch::x86_64::interrupts::{self, Polarity, Trigger};
use crate::arch::x86_64::{pit, timer};
use crate::platform::{self, Platform};
use crate::time::{Instant, ticks_to_us};

static LAPIC_TICKS: AtomicU64 = AtomicU64::new(0);
static PIT_TICKS: AtomicU64 = AtomicU64::new(0);

fn on_lapic(_: u8) {
    // Relaxed: a plain event counter read after the sources are stopped.
    LAPIC_TICKS.fetch_add(1, Ordering::Relaxed);
}

fn on_pit(_: u8) {
    // Relaxed: as above.
    PIT_TICKS.fetch_add(1, Ordering::Relaxed);
}

fn within(count: u64, expected_milli: u64, tolerance_pct: u64) -> bool {
    let count_milli = count * 1000;
    count_milli.abs_diff(expected_milli) * 100 <= expected_milli * tolerance_pct
}

pub fn run(params: &Params<'_>) -> Outcome {
    if platform::current() != Some(Platform::Pvh) {
        return fail!("the timer test drives the local APIC and PIT; this platform has neither");
    }
    let (hz, ms, tol) = match (
        params.u64_in("hz", 1000, 10..=10_000),
        params.u64_in("ms", 100, 10..=60_000),
        params.u64_in("tolerance", 10, 1..=100),
    ) {
        (Ok(h), Ok(m), Ok(t)) => (h, m, t),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return fail!("{e}"),
    };
    let cal = match timer::calibration() {
        Ok(c) => c,
        Err(e) => return fail!("calibration: {e}"),
    };
    kprintln!(
        "PVKIT INFO timer calibration tsc_hz={} lapic_hz={} window_us={}",
        cal.tsc_hz,
        cal.lapic_hz,
        cal.window_us
    );
    LAPIC_TICKS.store(0, Ordering::Relaxed);
    PIT_TICKS.store(0, Ordering::Relaxed);

    let pit_vector = match interrupts::alloc_vector(on_pit) {
        Ok(v) => v,
        Err(e) => return fail!("PIT vector: {e}"),
    };
    let pit_millihz = pit::channel0_periodic(hz as u32);
    let routed = interrupts::route_gsi(pit::PIT_GSI, pit_vector, Trigger::Edge, Polarity::ActiveHigh);
    let started = timer::start_periodic(hz as u32, on_lapic);

    let window = cal.tsc_hz * ms / 1000;
    let t0 = Instant::now();
    let (l0, p0) = (
        LAPIC_TICKS.load(Ordering::Relaxed),
        PIT_TICKS.load(Ordering::Relaxed),
    );
    let mut t1 = t0;
    // Busy-wait rather than `hlt`: if no interrupt ever comes, the test must still end.
    while routed.is_ok() && started.is_ok() && t1.ticks_since(t0) < window {
        core::hint::spin_loop();
        t1 = Instant::now();
    }
    let (l1, p1) = (
        LAPIC_TICKS.load(Ordering::Relaxed),
        PIT_TICKS.load(Ordering::Relaxed),
    );

    timer::stop_periodic();
    let _ = interrupts::mask_gsi(pit::PIT_GSI);
    pit::channel0_stop();
    interrupts::unregister_handler(pit_vector);
    if let Err(e) = routed {
        return fail!("routing GSI {} to vector {pit_vector:#x}: {e}", pit::PIT_GSI);
    }
    let initial = match started {
        Ok(i) => i,
        Err(e) => return fail!("starting the local APIC timer: {e}"),
    };

    let elapsed_us = ticks_to_us(t1.ticks_since(t0), cal.tsc_hz);
    let (lapic, pit_count) = (l1 - l0, p1 - p0);
    let lapic_expected_milli = hz * elapsed_us / 1000; // hz * us / 1e6, in thousandths
    let pit_expected_milli = pit_millihz * elapsed_us / 1_000_000;
    let summary = alloc::format!(
        "lapic_ticks={lapic} lapic_expected={} pit_ticks={pit_count} pit_expected={} hz={hz} ms={ms} elapsed_us={elapsed_us} \
         tolerance_pct={tol} lapic_initial={initial} tsc_mhz={}",
        (lapic_expected_milli + 500) / 1000,
        (pit_expected_milli + 500) / 1000,
        cal.tsc_hz / 1_000_000
    );
    if !within(lapic, lapic_expected_milli, tol) {
        return fail!("local APIC timer count off by more than {tol}%: {summary}");
    }
    if !within(pit_count, pit_expected_milli, tol) {
        return fail!("PIT (IOAPIC GSI 2) count off by more than {tol}%: {summary}");
    }
    Outcome::Pass(summary)
}
