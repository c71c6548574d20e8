//! Protocol ABIs: `#[repr(C)]` data layouts only, byte-for-byte those of Xen's public headers
//! (`xen/include/public/`) on x86_64. No logic lives here; rings and drivers sit beside these
//! modules.
//!
//! Every type carries a compile-time size assert and offset asserts next to it, and every constant is
//! defined exactly once. The `pvkit-tests` crate also compiles a C file against the system's Xen
//! headers and compares every size, offset and constant here with what the C compiler sees.

pub mod blkif;
pub mod console;
pub mod errno;
pub mod event_channel;
pub mod grant_table;
pub mod netif;
pub mod xen;
pub mod xenbus;
pub mod xenstore;
