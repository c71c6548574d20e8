//! Guest-side drivers for pvkit.
//!
//! Drivers for three kinds of device sit behind the same small traits, so one workload runs over
//! each and the costs can be compared:
//! - paravirtual virtio devices (`virtio`);
//! - emulated legacy hardware driven as on a real PC (`emulated`);
//! - Xen split frontends (`xen`).
//!
//! What drivers consume from the platform is abstracted here, not what platforms offer:
//! - [`dma`]: physically contiguous, zeroed memory with a bus address ([`dma::DmaBuf`]), from one
//!   allocator the kernel registers at boot ([`dma::set_allocator`]);
//! - [`wait`]: a [`wait::Waiter`] (clock + "sleep until something may have happened") and the
//!   [`wait::IrqAck`] an interrupt handler calls.
//!
//! What drivers provide: [`block::BlockDevice`], [`net::NetDevice`], [`console::ConsoleDevice`], each
//! with its own [`counters::Counters`] (notifications sent, interrupts handled, bytes the CPU copied).
//!
//! Test doubles for all of these live behind `cfg(any(test, feature = "test-utils"))`.
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
pub mod virtio;
pub mod wait;
pub mod workload;
pub mod xen;

pub use error::{Error, Result};
