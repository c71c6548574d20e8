//! Timer calibration and the periodic local APIC timer.
//!
//! Measuring against PIT channel 2 gives both the TSC rate (the kernel's clock, see `crate::time`) and
//! the local APIC timer rate. It runs on first use, not at boot, so a run that needs no timer pays
//! nothing for it.
//!
//! Under emulation the host can stall the vCPU at any moment for milliseconds. A "wait until the PIT
//! fires" window reads long whenever a stall straddles its end (seen: +17% to +200% on a loaded
//! 2-core host). So the PIT runs free and is *sampled*: each end point of the 10 ms window reads the
//! PIT count and the local APIC count between two TSC reads, several times, keeping the read with
//! the narrowest TSC bracket. A stall then costs nothing unless it hits every try of an end point.

use super::{apic, cpu, interrupts, pit};
use crate::error::{Error, Result};

/// Length of the calibration window in PIT ticks (10 ms).
const CALIBRATION_PIT_TICKS: u16 = (pit::PIT_HZ / 100) as u16;
/// Reads per end point; the narrowest bracket wins.
const SAMPLE_TRIES: usize = 8;
/// Whole calibrations tried when the PIT wrapped (a stall of more than 55 ms).
const MAX_ROUNDS: usize = 3;
/// Upper bound on PIT polls before calibration gives up (a stuck PIT must not hang the run).
const MAX_POLLS: u64 = 50_000_000;

/// Result of a calibration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Calibration {
    /// TSC ticks per second.
    pub tsc_hz: u64,
    /// Local APIC timer ticks per second after the /16 divider.
    pub lapic_hz: u64,
    /// Length of the reference window in microseconds.
    pub window_us: u64,
    /// Widest TSC bracket of the two end-point samples: the measurement's uncertainty, in TSC ticks.
    pub bracket_ticks: u64,
}

static CALIBRATION: spin::Once<Result<Calibration>> = spin::Once::new();

/// The calibration, measured on first call.
pub fn calibration() -> Result<Calibration> {
    CALIBRATION.call_once(measure).clone()
}

fn measure() -> Result<Calibration> {
    let mut round = 1;
    loop {
        match cpu::without_interrupts(window) {
            Err(Error::PitWrapped) if round < MAX_ROUNDS => round += 1,
            other => return other,
        }
    }
}

/// PIT, local APIC and TSC read together.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Middle of the TSC bracket.
    tsc: u64,
    /// Width of the TSC bracket.
    width: u64,
    pit: u16,
    lapic: u32,
}

fn sample() -> Sample {
    let mut best: Option<Sample> = None;
    for _ in 0..SAMPLE_TRIES {
        let a = cpu::read_tsc();
        let pit = pit::channel2_count();
        let lapic = apic::timer_current();
        let b = cpu::read_tsc();
        let s = Sample {
            tsc: a + (b - a) / 2,
            width: b - a,
            pit,
            lapic,
        };
        if best.is_none_or(|x| s.width < x.width) {
            best = Some(s);
        }
    }
    best.expect("SAMPLE_TRIES > 0")
}

/// One calibration: the PIT counts down freely from 0xffff (55 ms); samples at both ends of a 10 ms
/// stretch of it.
fn window() -> Result<Calibration> {
    apic::timer_start(u32::MAX, None);
    pit::channel2_start(u16::MAX);
    let s0 = sample();
    let mut polls = 0;
    while s0.pit.wrapping_sub(pit::channel2_count()) < CALIBRATION_PIT_TICKS {
        polls += 1;
        if polls > MAX_POLLS {
            apic::timer_stop();
            return Err(Error::PitStuck(MAX_POLLS));
        }
    }
    let s1 = sample();
    let wrapped = pit::channel2_done();
    apic::timer_stop();
    if wrapped {
        return Err(Error::PitWrapped);
    }
    let pit_ticks = u64::from(s0.pit.wrapping_sub(s1.pit));
    let window_us = pit_ticks * 1_000_000 / pit::PIT_HZ;
    let tsc_hz = (s1.tsc - s0.tsc) * pit::PIT_HZ / pit_ticks;
    let lapic_hz = u64::from(s0.lapic - s1.lapic) * pit::PIT_HZ / pit_ticks;
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
        bracket_ticks: s0.width.max(s1.width),
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
