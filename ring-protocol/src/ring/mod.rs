//! Xen shared request/response rings, byte-for-byte the ABI of Xen's public `io/ring.h`.
//!
//! # Layout
//!
//! A ring occupies `4096 << ring-page-order` bytes of memory shared between a frontend (guest driver)
//! and a backend:
//!
//! | offset | field                                                                     |
//! |--------|---------------------------------------------------------------------------|
//! | 0      | `req_prod: u32` — requests published by the frontend                      |
//! | 4      | `req_event: u32` — backend wants a notification when `req_prod` passes it |
//! | 8      | `rsp_prod: u32` — responses published by the backend                     |
//! | 12     | `rsp_event: u32` — frontend wants a notification when `rsp_prod` passes it|
//! | 16     | 48 bytes of private/padding space, zeroed by initialisation               |
//! | 64     | slots: each a C union of one request and one response                     |
//!
//! The slot stride is [`slot_size`]: the larger of the two entry types, rounded up to their larger
//! alignment (what a C `union` does). The number of slots, [`ring_size`], is the largest power of two
//! that fits after the header (ring.h's `__RD32`). Indices are free-running `u32`s that wrap; a slot is
//! `index & (size - 1)`.
//!
//! Each side keeps private state beside the shared memory: [`FrontRing`] holds `req_prod_pvt` and
//! `rsp_cons`, [`BackRing`] holds `rsp_prod_pvt` and `req_cons`.
//!
//! # Hostile peers
//!
//! - Every entry is copied out of shared memory once, into a value the caller owns, before the caller
//!   sees it; the API never hands out a reference into the shared pages (XSA-155).
//! - A producer index that claims more unconsumed entries than can exist (more requests than the ring
//!   holds, more responses than requests were sent, or an index that went backwards) halts the ring with
//!   [`RequestOverrun`](crate::Error::RequestOverrun) / [`ResponseOverrun`](crate::Error::ResponseOverrun);
//!   every later call returns that error (XSA-39).
//! - Entries are written whole from a value whose type has no padding (`zerocopy::IntoBytes`), so no
//!   uninitialised byte reaches the peer (XSA-216).
//! - Ids inside entries are the caller's to check; [`IdSlab`] hands out ids and validates returned ones.
//!
//! # Memory ordering (ring.h's `xen_wmb`, `xen_rmb`, `xen_mb`)
//!
//! - `xen_wmb()` before publishing a producer index becomes a `Release` store of the index.
//! - `xen_rmb()` after reading a producer index becomes an `Acquire` load of the index.
//! - `xen_mb()` between publishing an index and reading the peer's event index (push-and-check-notify),
//!   and between re-arming our event index and re-reading the peer's producer index (final check),
//!   becomes `fence(SeqCst)`. The two fences pair up: whichever runs second sees the other side's store,
//!   so a wake-up is never lost.
//! - Slot contents are moved with `Relaxed` word accesses; the index Release/Acquire pair orders them.
//!
//! # Example
//!
//! A frontend and a backend exchanging one request over one page:
//!
//! ```
//! use core::ptr::NonNull;
//! use ring_protocol::ring::{BackRing, FrontRing, XEN_PAGE_SIZE};
//! use zerocopy::{FromBytes, Immutable, IntoBytes};
//!
//! #[derive(FromBytes, IntoBytes, Immutable, Clone, Copy, Debug, PartialEq)]
//! #[repr(C)]
//! struct Req { id: u64, sector: u64 }
//! #[derive(FromBytes, IntoBytes, Immutable, Clone, Copy, Debug, PartialEq)]
//! #[repr(C)]
//! struct Rsp { id: u64, status: i64 }
//!
//! // One page of memory; in a guest this is a page granted to the backend.
//! #[repr(C, align(4096))]
//! struct Page([u8; XEN_PAGE_SIZE]);
//! let mut page = Page([0; XEN_PAGE_SIZE]);
//! let mem = NonNull::from(&mut page).cast::<u8>();
//!
//! // SAFETY: `page` outlives both rings and is not touched except through them.
//! let mut front = unsafe { FrontRing::<Req, Rsp>::init(mem, XEN_PAGE_SIZE) }.unwrap();
//! // SAFETY: as above.
//! let mut back = unsafe { BackRing::<Req, Rsp>::new(mem, XEN_PAGE_SIZE) }.unwrap();
//! assert_eq!(front.size(), 128); // (4096 - 64) / 16 = 252, rounded down to a power of two
//!
//! front.write_request(&Req { id: 7, sector: 42 }).unwrap();
//! let notify_back = front.push_requests_and_check_notify().unwrap();
//! assert!(notify_back); // the backend armed req_event = 1 at init
//!
//! let req = back.read_request().unwrap().expect("one request");
//! assert_eq!(req, Req { id: 7, sector: 42 });
//! back.write_response(&Rsp { id: req.id, status: 0 }).unwrap();
//! let notify_front = back.push_responses_and_check_notify().unwrap();
//! assert!(notify_front);
//! assert!(!back.final_check_for_requests().unwrap()); // nothing more: sleep until notified
//!
//! assert_eq!(front.read_response().unwrap(), Some(Rsp { id: 7, status: 0 }));
//! assert_eq!(front.read_response().unwrap(), None);
//! ```

mod back;
mod front;
mod ids;
#[cfg(any(feature = "alloc", loom))]
mod pages;
mod raw;

pub use back::BackRing;
pub use front::FrontRing;
pub use ids::IdSlab;
#[cfg(feature = "alloc")]
pub use ids::IdSlabBox;
#[cfg(any(feature = "alloc", loom))]
pub use pages::SharedPages;

use core::mem::{align_of, size_of};

/// Size of a page as far as ring protocols are concerned, whatever the host's page size.
pub use crate::abi::xen::XEN_PAGE_SIZE;

/// Size of the shared header before the first slot (`offsetof(struct __name##_sring, ring)`).
pub const RING_HEADER_SIZE: usize = 64;

/// Stride of one slot in bytes: the size of the C `union { Req req; Rsp rsp; }`, i.e. the larger size
/// rounded up to the larger alignment.
pub const fn slot_size<Req, Rsp>() -> usize {
    let size = max(size_of::<Req>(), size_of::<Rsp>());
    let align = max(align_of::<Req>(), align_of::<Rsp>());
    size.div_ceil(align) * align
}

/// Number of slots of a ring occupying `len` bytes (ring.h's `__RING_SIZE`): the largest power of two
/// not above `(len - 64) / slot_size`, or 0 if not even one slot fits. Capped at 2^31 so that the
/// free-running `u32` indices stay unambiguous.
pub const fn ring_size<Req, Rsp>(len: usize) -> u32 {
    let slot = slot_size::<Req, Rsp>();
    if slot == 0 || len < RING_HEADER_SIZE {
        return 0;
    }
    let fit = (len - RING_HEADER_SIZE) / slot;
    if fit == 0 {
        return 0;
    }
    let fit = if fit > (1 << 31) { 1 << 31 } else { fit };
    // Largest power of two <= fit.
    1 << (usize::BITS - 1 - fit.leading_zeros())
}

/// Bytes occupied by a ring of `2^order` pages (`ring-page-order` in XenStore).
pub const fn ring_bytes(order: u32) -> usize {
    XEN_PAGE_SIZE << order
}

const fn max(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
}
