//! Timer calibration and the periodic local APIC timer.
//!
//! Measuring against PIT channel 2 gives both the TSC rate (the kernel's clock, see `crate::time`) and
//! the local APIC timer rate. It runs on first use, not at boot, so a run that needs no timer pays
//! nothing for it.
//!
//! Under emulation the vCPU can be stalled by the host at any moment; a stall across the end of a
//! window makes it read long (seen: +17% to +75% on a loaded 2-core host). So after a warm-up window
//! (one-time costs such as translating the polling loop, which made a cold window read 24% long)
//! several short windows are measured and the median is kept.

use super::{apic, cpu, interrupts, pit};
use crate::error::{Error, Result};

/// Length of one calibration window in PIT ticks (2 ms).
const CALIBRATION_PIT_TICKS: u16 = (pit::PIT_HZ / 500) as u16;
/// Windows measured; the median is kept.
const CALIBRATION_WINDOWS: usize = 7;
/// The untimed warm-up window (1 ms).
const WARMUP_PIT_TICKS: u16 = (pit::PIT_HZ / 1000) as u16;
/// Upper bound on port-B polls before calibration gives up (a stuck PIT must not hang the run).
const MAX_POLLS: u64 = 50_000_000;

/// Result of a calibration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Calibration {
    /// TSC ticks per second.
    pub tsc_hz: u64,
    /// Local APIC timer ticks per second after the /16 divider.
    pub lapic_hz: u64,
    /// Length of one reference window in microseconds.
    pub window_us: u64,
    /// Lowest and highest TSC rate among the windows (the spread shows how noisy the host was).
    pub tsc_hz_range: (u64, u64),
}

static CALIBRATION: spin::Once<Result<Calibration>> = spin::Once::new();

/// The calibration, measured on first call.
pub fn calibration() -> Result<Calibration> {
    CALIBRATION.call_once(measure).clone()
}

fn measure() -> Result<Calibration> {
    cpu::without_interrupts(|| {
        window(WARMUP_PIT_TICKS)?;
        let mut windows = [Calibration {
            tsc_hz: 0,
            lapic_hz: 0,
            window_us: 0,
            tsc_hz_range: (0, 0),
        }; CALIBRATION_WINDOWS];
        for w in &mut windows {
            *w = window(CALIBRATION_PIT_TICKS)?;
        }
        windows.sort_unstable_by_key(|w| w.tsc_hz);
        let range = (windows[0].tsc_hz, windows[CALIBRATION_WINDOWS - 1].tsc_hz);
        Ok(Calibration {
            tsc_hz_range: range,
            ..windows[CALIBRATION_WINDOWS / 2]
        })
    })
}

/// One calibration window of `pit_ticks`.
fn window(pit_ticks: u16) -> Result<Calibration> {
    apic::timer_start(u32::MAX, None);
    pit::channel2_start(pit_ticks);
    let tsc0 = cpu::read_tsc();
    let apic0 = apic::timer_current();
    let waited = pit::channel2_wait(MAX_POLLS);
    let tsc1 = cpu::read_tsc();
    let apic1 = apic::timer_current();
    apic::timer_stop();
    waited?;
    let window_us = u64::from(pit_ticks) * 1_000_000 / pit::PIT_HZ;
    let tsc_hz = (tsc1 - tsc0) * pit::PIT_HZ / u64::from(pit_ticks);
    let lapic_hz = u64::from(apic0 - apic1) * pit::PIT_HZ / u64::from(pit_ticks);
    if tsc_hz < 1_000_000 {
        return Err(Error::BadFrequency {
            what: "TSC",
            hz: tsc_hz,
        });
    }
    if lapic_hz < 10_000 {
        return Err(Error::BadFrequency {
            what: "local APIC timer",
            hz: lapic_hz,
        });
    }
    Ok(Calibration {
        tsc_hz,
        lapic_hz,
        window_us,
        tsc_hz_range: (tsc_hz, tsc_hz),
    })
}

/// Starts the local APIC timer raising [`interrupts::TIMER_VECTOR`] at `hz`, calling `handler` on
/// each tick. Returns the initial count used.
pub fn start_periodic(hz: u32, handler: interrupts::Handler) -> Result<u32> {
    let cal = calibration()?;
    let initial = (cal.lapic_hz / u64::from(hz.max(1))).clamp(1, u64::from(u32::MAX)) as u32;
    interrupts::register_handler(interrupts::TIMER_VECTOR, handler)?;
    apic::timer_start(initial, Some(interrupts::TIMER_VECTOR));
    Ok(initial)
}

/// Stops the periodic timer and frees its vector.
pub fn stop_periodic() {
    apic::timer_stop();
    interrupts::unregister_handler(interrupts::TIMER_VECTOR);
}
