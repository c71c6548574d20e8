//! Xen-ABI shared rings, byte rings and protocol ABIs, hardened against hostile peers.
//!
//! - [`ring`]: request/response rings with the layout of Xen's `io/ring.h` ([`ring::FrontRing`],
//!   [`ring::BackRing`]), plus [`ring::IdSlab`] to validate ids returned by a peer.
//! - [`byte_ring`]: the console and XenStore byte rings.
//! - [`abi`]: data layouts of the Xen protocols (blkif, netif, console, XenStore, grant tables).
//! - [`platform`]: the traits drivers consume to notify a peer and share memory with it.
//!
//! `no_std`; the `alloc` feature adds heap-backed helpers ([`ring::SharedPages`], [`ring::IdSlabBox`]),
//! `std` implies `alloc`.
#![cfg_attr(not(loom), no_std)]

#[cfg(any(feature = "alloc", loom))]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod abi;
pub mod byte_ring;
mod error;
pub mod platform;
pub mod ring;
mod sync;

pub use error::{Error, Result};
