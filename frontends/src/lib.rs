//! Guest-side drivers for pvkit.
//!
//! This crate will hold the Xen split frontends (XenStore, grant tables, event channels, blkfront,
//! netfront, console), the virtio frontends and the drivers for emulated legacy hardware, all behind
//! the same block, net and console traits. It is empty until those issues land: nothing here claims
//! to work yet.
#![no_std]
