//! Block device protocol (`xen/include/public/io/blkif.h`): request and response layouts, operation
//! and status codes, and the xenbus keys a block frontend and backend exchange.
//!
//! Layouts are those of the x86_64 ABI (`protocol = "x86_64-abi"`): a ring slot holds either a
//! [`BlkifRequest`] (112 bytes) or a [`BlkifResponse`] (16 bytes), so slots are 112 bytes and a
//! one-page ring has 32 of them.

use core::mem::size_of;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::grant_table::GrantRef;
use super::xen::XEN_PAGE_SIZE;

/// A virtual device handle (`blkif_vdev_t`).
#[doc(alias = "blkif_vdev_t")]
pub type BlkifVdev = u16;

/// A sector number, in units of 512 bytes unless `feature-large-sector-size` was negotiated
/// (`blkif_sector_t`).
#[doc(alias = "blkif_sector_t")]
pub type BlkifSector = u64;

/// Read sectors into the granted pages.
pub const BLKIF_OP_READ: u8 = 0;
/// Write sectors from the granted pages.
pub const BLKIF_OP_WRITE: u8 = 1;
/// Write after all earlier writes completed, before any later one (`feature-barrier`).
pub const BLKIF_OP_WRITE_BARRIER: u8 = 2;
/// Flush the device's volatile write cache (`feature-flush-cache`).
pub const BLKIF_OP_FLUSH_DISKCACHE: u8 = 3;
/// Reserved (device-specific command packets in SLES).
pub const BLKIF_OP_RESERVED_1: u8 = 4;
/// Discard a sector range; the request is a [`BlkifRequestDiscard`] (`feature-discard`).
pub const BLKIF_OP_DISCARD: u8 = 5;
/// Read or write whose segments sit in separate granted pages; the request is a
/// [`BlkifRequestIndirect`] (`feature-max-indirect-segments`).
pub const BLKIF_OP_INDIRECT: u8 = 6;

/// Segments that fit directly in a [`BlkifRequest`].
pub const BLKIF_MAX_SEGMENTS_PER_REQUEST: usize = 11;
/// Indirect pages a [`BlkifRequestIndirect`] can reference.
pub const BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST: usize = 8;
/// [`BlkifRequestSegment`]s held by one indirect page (not a C macro; blkif.h gives the formula
/// `PAGE_SIZE / sizeof(struct blkif_request_segment)`).
pub const BLKIF_SEGMENTS_PER_INDIRECT_PAGE: usize = XEN_PAGE_SIZE / size_of::<BlkifRequestSegment>();

/// `flag` bit of a discard request: make the discarded data unrecoverable (`discard-secure`).
pub const BLKIF_DISCARD_SECURE: u8 = 1 << 0;

/// The operation is not supported (only barrier writes report it).
pub const BLKIF_RSP_EOPNOTSUPP: i16 = -2;
/// The operation failed.
pub const BLKIF_RSP_ERROR: i16 = -1;
/// The operation completed successfully.
pub const BLKIF_RSP_OKAY: i16 = 0;

/// Bit in the backend's `info` key: the device is a CD-ROM.
pub const VDISK_CDROM: u32 = 0x1;
/// Bit in the backend's `info` key: the medium is removable.
pub const VDISK_REMOVABLE: u32 = 0x2;
/// Bit in the backend's `info` key: the device is read-only.
pub const VDISK_READONLY: u32 = 0x4;

/// log2 of the sector size that sector numbers and `first_sect`/`last_sect` count in, unless
/// `feature-large-sector-size` was negotiated (blkif.h prose; no C macro).
pub const BLKIF_SECTOR_SHIFT: u32 = super::SECTOR_SHIFT;
/// The sector size that sector numbers count in by default (see [`BLKIF_SECTOR_SHIFT`]).
pub const BLKIF_SECTOR_SIZE: u64 = 1 << BLKIF_SECTOR_SHIFT;

/// xenbus key names used by the block protocol (documented in blkif.h's prose; no C macros).
pub mod xenbus_keys {
    /// Frontend: grant reference of a one-page ring; `ring-ref<N>` for page N of a multi-page ring.
    pub const RING_REF: &str = "ring-ref";
    /// Frontend: log2 of the number of ring pages it chose.
    pub const RING_PAGE_ORDER: &str = "ring-page-order";
    /// Backend: the largest `ring-page-order` it accepts.
    pub const MAX_RING_PAGE_ORDER: &str = "max-ring-page-order";
    /// Frontend: the event channel port it allocated.
    pub const EVENT_CHANNEL: &str = "event-channel";
    /// Frontend: the ring ABI it uses (`x86_64-abi`).
    pub const PROTOCOL: &str = "protocol";
    /// Backend: disk size in sectors of `sector-size` bytes.
    pub const SECTORS: &str = "sectors";
    /// Backend: logical sector size in bytes.
    pub const SECTOR_SIZE: &str = "sector-size";
    /// Backend: physical sector size in bytes.
    pub const PHYSICAL_SECTOR_SIZE: &str = "physical-sector-size";
    /// Backend: `VDISK_*` bits.
    pub const INFO: &str = "info";
    /// Backend: `BLKIF_OP_FLUSH_DISKCACHE` supported.
    pub const FEATURE_FLUSH_CACHE: &str = "feature-flush-cache";
    /// Backend: `BLKIF_OP_WRITE_BARRIER` supported.
    pub const FEATURE_BARRIER: &str = "feature-barrier";
    /// Backend: `BLKIF_OP_DISCARD` supported.
    pub const FEATURE_DISCARD: &str = "feature-discard";
    /// Either end: persistent grants.
    pub const FEATURE_PERSISTENT: &str = "feature-persistent";
    /// Backend: the most segments it accepts in one `BLKIF_OP_INDIRECT` request.
    pub const FEATURE_MAX_INDIRECT_SEGMENTS: &str = "feature-max-indirect-segments";
    /// Backend: the most queues (rings) it supports.
    pub const MULTI_QUEUE_MAX_QUEUES: &str = "multi-queue-max-queues";
    /// Frontend: the number of queues it uses.
    pub const MULTI_QUEUE_NUM_QUEUES: &str = "multi-queue-num-queues";
}

/// One scatter/gather segment: sectors `first_sect..=last_sect` of the granted page `gref`.
#[doc(alias = "blkif_request_segment")]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct BlkifRequestSegment {
    /// Grant of the I/O buffer page.
    pub gref: GrantRef,
    /// First sector of the page to transfer (inclusive).
    pub first_sect: u8,
    /// Last sector of the page to transfer (inclusive).
    pub last_sect: u8,
    /// Padding to the C alignment; always zero.
    pub _pad: [u8; 2],
}

const _: () = {
    use core::mem::{align_of, offset_of};
    assert!(size_of::<BlkifRequestSegment>() == 8);
    assert!(align_of::<BlkifRequestSegment>() == 4);
    assert!(offset_of!(BlkifRequestSegment, gref) == 0);
    assert!(offset_of!(BlkifRequestSegment, first_sect) == 4);
    assert!(offset_of!(BlkifRequestSegment, last_sect) == 5);
};

/// A read, write, barrier or flush request.
#[doc(alias = "blkif_request")]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct BlkifRequest {
    /// `BLKIF_OP_*`.
    pub operation: u8,
    /// Number of valid entries in `seg`.
    pub nr_segments: u8,
    /// Virtual device handle (read/write only).
    pub handle: BlkifVdev,
    /// Padding to the C alignment; always zero.
    pub _pad: [u8; 4],
    /// Frontend's private value, echoed in the response.
    pub id: u64,
    /// First sector on the disk (read/write only).
    pub sector_number: BlkifSector,
    /// Scatter/gather list.
    pub seg: [BlkifRequestSegment; BLKIF_MAX_SEGMENTS_PER_REQUEST],
}

const _: () = {
    use core::mem::{align_of, offset_of};
    assert!(size_of::<BlkifRequest>() == 112);
    assert!(align_of::<BlkifRequest>() == 8);
    assert!(offset_of!(BlkifRequest, operation) == 0);
    assert!(offset_of!(BlkifRequest, nr_segments) == 1);
    assert!(offset_of!(BlkifRequest, handle) == 2);
    assert!(offset_of!(BlkifRequest, id) == 8);
    assert!(offset_of!(BlkifRequest, sector_number) == 16);
    assert!(offset_of!(BlkifRequest, seg) == 24);
};

/// A discard request: the slot's layout when `operation == BLKIF_OP_DISCARD`.
#[doc(alias = "blkif_request_discard")]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct BlkifRequestDiscard {
    /// [`BLKIF_OP_DISCARD`].
    pub operation: u8,
    /// [`BLKIF_DISCARD_SECURE`] or zero.
    pub flag: u8,
    /// Virtual device handle.
    pub handle: BlkifVdev,
    /// Padding to the C alignment; always zero.
    pub _pad: [u8; 4],
    /// Frontend's private value, echoed in the response.
    pub id: u64,
    /// First sector to discard.
    pub sector_number: BlkifSector,
    /// Number of contiguous sectors to discard.
    pub nr_sectors: u64,
}

const _: () = {
    use core::mem::{align_of, offset_of};
    assert!(size_of::<BlkifRequestDiscard>() == 32);
    assert!(align_of::<BlkifRequestDiscard>() == 8);
    assert!(offset_of!(BlkifRequestDiscard, operation) == 0);
    assert!(offset_of!(BlkifRequestDiscard, flag) == 1);
    assert!(offset_of!(BlkifRequestDiscard, handle) == 2);
    assert!(offset_of!(BlkifRequestDiscard, id) == 8);
    assert!(offset_of!(BlkifRequestDiscard, sector_number) == 16);
    assert!(offset_of!(BlkifRequestDiscard, nr_sectors) == 24);
};

/// An indirect request: the slot's layout when `operation == BLKIF_OP_INDIRECT`. Its segments are
/// arrays of [`BlkifRequestSegment`] in the pages `indirect_grefs` grant,
/// [`BLKIF_SEGMENTS_PER_INDIRECT_PAGE`] per page.
#[doc(alias = "blkif_request_indirect")]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct BlkifRequestIndirect {
    /// [`BLKIF_OP_INDIRECT`].
    pub operation: u8,
    /// The real operation: [`BLKIF_OP_READ`] or [`BLKIF_OP_WRITE`].
    pub indirect_op: u8,
    /// Number of segments across all indirect pages.
    pub nr_segments: u16,
    /// Padding to the C alignment; always zero.
    pub _pad0: [u8; 4],
    /// Frontend's private value, echoed in the response.
    pub id: u64,
    /// First sector on the disk.
    pub sector_number: BlkifSector,
    /// Virtual device handle.
    pub handle: BlkifVdev,
    /// Padding to the C alignment; always zero.
    pub _pad1: [u8; 2],
    /// Grants of the pages holding the segment arrays.
    pub indirect_grefs: [GrantRef; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST],
    /// Trailing padding to the C alignment; always zero.
    pub _pad2: [u8; 4],
}

const _: () = {
    use core::mem::{align_of, offset_of};
    assert!(size_of::<BlkifRequestIndirect>() == 64);
    assert!(align_of::<BlkifRequestIndirect>() == 8);
    assert!(offset_of!(BlkifRequestIndirect, operation) == 0);
    assert!(offset_of!(BlkifRequestIndirect, indirect_op) == 1);
    assert!(offset_of!(BlkifRequestIndirect, nr_segments) == 2);
    assert!(offset_of!(BlkifRequestIndirect, id) == 8);
    assert!(offset_of!(BlkifRequestIndirect, sector_number) == 16);
    assert!(offset_of!(BlkifRequestIndirect, handle) == 24);
    assert!(offset_of!(BlkifRequestIndirect, indirect_grefs) == 28);
};

/// The response to any request.
#[doc(alias = "blkif_response")]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct BlkifResponse {
    /// Copied from the request.
    pub id: u64,
    /// Copied from the request.
    pub operation: u8,
    /// Padding to the C alignment; always zero.
    pub _pad0: u8,
    /// `BLKIF_RSP_*`.
    pub status: i16,
    /// Trailing padding to the C alignment; always zero.
    pub _pad1: [u8; 4],
}

const _: () = {
    use core::mem::{align_of, offset_of};
    assert!(size_of::<BlkifResponse>() == 16);
    assert!(align_of::<BlkifResponse>() == 8);
    assert!(offset_of!(BlkifResponse, id) == 0);
    assert!(offset_of!(BlkifResponse, operation) == 8);
    assert!(offset_of!(BlkifResponse, status) == 10);
};

// A discard or indirect request must fit in a request slot.
const _: () = assert!(size_of::<BlkifRequestDiscard>() <= size_of::<BlkifRequest>());
const _: () = assert!(size_of::<BlkifRequestIndirect>() <= size_of::<BlkifRequest>());
const _: () = assert!(BLKIF_SEGMENTS_PER_INDIRECT_PAGE == 512);
