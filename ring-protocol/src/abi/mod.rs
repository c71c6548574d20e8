//! Protocol ABIs: `#[repr(C)]` data layouts only, byte-for-byte those of Xen's public headers
//! (`xen/include/public/`). No logic lives here; rings and drivers sit beside these modules.
//!
//! Every type carries a compile-time size assert and offset asserts next to it, and every constant is
//! defined exactly once.

pub mod console;
pub mod xenstore;
