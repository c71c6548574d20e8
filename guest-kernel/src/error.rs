//! The kernel's error type: what went wrong and with which value.

use thiserror::Error;

/// Errors the kernel's subsystems report to their callers.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// An interrupt vector outside the range handed out to devices.
    #[error("interrupt vector {0:#x} is not a device vector (allowed 0x31..=0xef)")]
    BadVector(u8),
    /// A handler was registered for a vector that already has one.
    #[error("interrupt vector {0:#x} already has a handler")]
    VectorInUse(u8),
    /// No free device vector is left.
    #[error("no free interrupt vector left")]
    NoFreeVector,
    /// The local APIC is not at the architectural default address (we map only that one).
    #[error("local APIC at {0:#x}, expected 0xfee00000")]
    LapicMoved(u64),
    /// A GSI beyond the IOAPIC's redirection table.
    #[error("GSI {gsi} is beyond the IOAPIC's {pins} pins")]
    BadGsi {
        /// The requested GSI.
        gsi: u32,
        /// Pins the IOAPIC has.
        pins: u32,
    },
    /// The page-table frame pool is exhausted.
    #[error("page-table frame pool exhausted ({0} frames used)")]
    OutOfPageTableFrames(usize),
    /// A mapping request collided with an existing, different mapping.
    #[error("virtual address {virt:#x} already maps physical {existing:#x}, wanted {wanted:#x}")]
    MappingConflict {
        /// The virtual address.
        virt: u64,
        /// What it maps today.
        existing: u64,
        /// What the caller asked for.
        wanted: u64,
    },
    /// Mapping failed inside the `x86_64` crate for another reason.
    #[error("mapping {0:#x} failed in the page-table code")]
    MapFailed(u64),
    /// PCI enumeration failed (a BAR that does not fit, bus numbers exhausted).
    #[error(transparent)]
    Pci(#[from] pvkit_frontends::pci::Error),
    /// The timer calibration never saw the PIT count down.
    #[error("PIT channel 2 did not count down within {0} polls")]
    PitStuck(u64),
    /// The PIT ran through its whole range during a calibration (the vCPU stood still > 55 ms).
    #[error("PIT channel 2 wrapped during calibration (the CPU was stalled for more than 55 ms)")]
    PitWrapped,
    /// A calibration produced a frequency nobody can use.
    #[error("calibrated {what} frequency {hz} Hz is implausible")]
    BadFrequency {
        /// Which clock.
        what: &'static str,
        /// The measured frequency.
        hz: u64,
    },
}

/// Result with the kernel's [`enum@Error`].
pub type Result<T> = core::result::Result<T, Error>;
