//! The PV console ring page (`xen/include/public/io/console.h`).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// A console ring index: free-running, a byte's slot is `index & (ring size - 1)`.
#[doc(alias = "XENCONS_RING_IDX")]
pub type XenconsRingIdx = u32;

/// Size of the guest-to-console `out` ring, in bytes.
pub const XENCONS_OUT_SIZE: usize = 2048;
/// Size of the console-to-guest `in` ring, in bytes.
pub const XENCONS_IN_SIZE: usize = 1024;

/// The console ring page shared between a guest and its console backend.
///
/// `in` carries bytes typed at the console to the guest; `out` carries the guest's output. Indices are
/// free-running `u32`s; a byte's slot is `index & (SIZE - 1)`.
#[doc(alias = "xencons_interface")]
#[repr(C)]
#[derive(Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct XenconsInterface {
    /// Console input (backend produces, guest consumes). Named `in` in C.
    pub in_: [u8; XENCONS_IN_SIZE],
    /// Console output (guest produces, backend consumes).
    pub out: [u8; XENCONS_OUT_SIZE],
    /// Bytes of `in_` the guest has consumed.
    pub in_cons: XenconsRingIdx,
    /// Bytes of `in_` the backend has produced.
    pub in_prod: XenconsRingIdx,
    /// Bytes of `out` the backend has consumed.
    pub out_cons: XenconsRingIdx,
    /// Bytes of `out` the guest has produced.
    pub out_prod: XenconsRingIdx,
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<XenconsInterface>() == 3088);
    assert!(offset_of!(XenconsInterface, in_) == 0);
    assert!(offset_of!(XenconsInterface, out) == 1024);
    assert!(offset_of!(XenconsInterface, in_cons) == 3072);
    assert!(offset_of!(XenconsInterface, in_prod) == 3076);
    assert!(offset_of!(XenconsInterface, out_cons) == 3080);
    assert!(offset_of!(XenconsInterface, out_prod) == 3084);
};
