//! Xen-ABI shared rings, byte rings and protocol ABIs, hardened against hostile peers.
//!
//! - [`ring`]: request/response rings with the layout of Xen's `io/ring.h` ([`ring::FrontRing`],
//!   [`ring::BackRing`]), plus [`ring::IdSlab`] to validate ids returned by a peer.
//! - [`byte_ring`]: the console and XenStore byte rings.
//! - [`abi`]: data layouts of the Xen protocols (blkif, netif, console, XenStore, grant tables, the
//!   PV and PVH guest ABI) and of virtio (split ring, blk, net).
//! - [`platform`]: the traits drivers consume to notify a peer and share memory with it.
//! - [`xenstore`]: the XenStore wire codec (framing, bounded parsing, reply matching) every
//!   XenStore client uses.
//!
//! `no_std`; the `alloc` feature adds heap-backed helpers (`ring::SharedPages`, `ring::IdSlabBox`),
//! `std` implies `alloc`.
//!
//! # Testing
//!
//! - `cargo test -p ring-protocol --all-features`: unit tests, a property test against a queue model,
//!   two-thread stress tests with checksums, hostile-peer tests, byte-ring and id-slab tests.
//! - `RUSTFLAGS="--cfg loom" cargo test -p ring-protocol --test loom --release`: loom model checks of index
//!   publication, slot reuse and event re-arm (the crate's atomics come from an internal facade that
//!   switches to loom's under `cfg(loom)`).
//! - `cargo +nightly miri test -p ring-protocol --all-features`: the same tests under Miri, with iteration
//!   counts scaled down (`cfg(miri)`).
//! - `cargo bench -p ring-protocol`: round trips/s against `rtrb` and `crossbeam-queue`, and notifications
//!   per 1000 requests.
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
pub mod xenstore;

pub use error::{Error, Result};
