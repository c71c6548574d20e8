//! Protocol ABIs: `#[repr(C)]` data layouts only, byte-for-byte those of Xen's public headers
//! (`xen/include/public/`) on x86_64 and of Linux's virtio uapi headers. No logic lives here; rings
//! and drivers sit beside these modules.
//!
//! Every type carries a compile-time size assert and offset asserts next to it, and every constant is
//! defined exactly once. The `pvkit-tests` crate also compiles a C file against the system's Xen and
//! Linux headers and compares every size, offset and constant here with what the C compiler sees.

pub mod blkif;
pub mod console;
pub mod elfnote;
pub mod errno;
pub mod event_channel;
pub mod grant_table;
pub mod netif;
pub mod pv;
pub mod pvh;
pub mod pvkit_echo;
pub mod virtio;
pub mod xen;
pub mod xenbus;
pub mod xenstore;

/// log2 of [`SECTOR_SIZE`].
pub const SECTOR_SHIFT: u32 = 9;
/// The 512-byte sector that block protocols count in: blkif sector numbers and segments (unless
/// `feature-large-sector-size`), virtio-blk's capacity and request sectors, ATA LBAs of a
/// 512-byte-sector disk, and the host block core's requests.
pub const SECTOR_SIZE: usize = 1 << SECTOR_SHIFT;

/// The page size of every shared-memory interface here: a Xen ring or grant page
/// ([`xen::XEN_PAGE_SIZE`], always 4 KiB) and the x86 base page a DMA allocator hands out.
pub const PAGE_SIZE: usize = xen::XEN_PAGE_SIZE;
