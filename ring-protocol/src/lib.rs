//! Xen-ABI shared rings, byte rings and protocol ABIs, hardened against hostile peers.
#![no_std]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod abi;
