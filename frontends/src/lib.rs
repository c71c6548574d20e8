//! Guest-side drivers for pvkit.
//!
//! Drivers for three kinds of device sit behind the same small traits, so one workload runs over
//! each and the costs can be compared:
//! - paravirtual virtio devices (`virtio`);
//! - emulated legacy hardware driven as on a real PC (`emulated`);
//! - Xen split frontends (`xen`).
//!
//! What drivers consume from the platform is abstracted here, not what platforms offer, and handed
//! to each driver as a parameter (no globals): [`platform`] lists the traits (DMA memory, grant
//! sharing, event channels, notification, the waiter, virtio's platform) with the kernel's and the
//! test fakes' implementations.
//!
//! What drivers provide: [`block::BlockDevice`], [`net::NetDevice`], [`console::ConsoleDevice`], each
//! with its own [`counters::Counters`] (notifications sent, interrupts handled, bytes the CPU copied).
//!
//! [`pci`] enumerates a PCI bus and assigns its BARs over a config-space trait, for kernels whose
//! virtio and emulated devices sit on PCI.
//!
//! [`workload`] holds the workloads the guest kernel runs over those traits (integrity, throughput,
//! echo, ping), [`runner`] the host-testable half of its test runner (command line, parameters,
//! result lines).
//!
//! Test doubles for all of these live behind `cfg(any(test, feature = "test-utils"))`. Features:
//! `test-utils` (the fakes, for other crates' tests and the examples), `hostile-frontend` (lets
//! blkfront break the ring protocol on purpose, for the guest kernel's backend robustness test).
#![no_std]

extern crate alloc;
#[cfg(any(test, feature = "test-utils"))]
extern crate std;

pub mod block;
pub mod console;
pub mod counters;
pub mod dma;
pub mod emulated;
pub mod error;
pub mod net;
pub mod pci;
pub mod platform;
pub mod runner;
pub mod virtio;
pub mod wait;
pub mod workload;
pub mod xen;

pub use error::{Error, Result};
