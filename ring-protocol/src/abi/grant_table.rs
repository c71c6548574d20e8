//! Grant tables (`xen/include/public/grant_table.h`): version-1 grant entries and their flags, and
//! the `GNTTABOP_*` hypercall arguments a guest or backend uses.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::xen::{DomId, XenPfn};

/// A grant reference: an index into the granting domain's grant table.
#[doc(alias = "grant_ref_t")]
pub type GrantRef = u32;

/// A handle for a mapped grant, returned by `GNTTABOP_map_grant_ref`.
#[doc(alias = "grant_handle_t")]
pub type GrantHandle = u32;

/// Grant references reserved for the toolstack at the start of every table.
pub const GNTTAB_NR_RESERVED_ENTRIES: u32 = 8;
/// Reserved grant of the console ring page.
pub const GNTTAB_RESERVED_CONSOLE: GrantRef = 0;
/// Reserved grant of the XenStore ring page.
pub const GNTTAB_RESERVED_XENSTORE: GrantRef = 1;

/// Grant type: the entry grants nothing.
#[doc(alias = "GTF_invalid")]
pub const GTF_INVALID: u16 = 0;
/// Grant type: `domid` may map or copy `frame`.
#[doc(alias = "GTF_permit_access")]
pub const GTF_PERMIT_ACCESS: u16 = 1;
/// Grant type: `domid` may transfer a page into `frame`.
#[doc(alias = "GTF_accept_transfer")]
pub const GTF_ACCEPT_TRANSFER: u16 = 2;
/// Grant type: transitive grant (version 2 tables only).
#[doc(alias = "GTF_transitive")]
pub const GTF_TRANSITIVE: u16 = 3;
/// Mask of the grant type bits in `flags`.
#[doc(alias = "GTF_type_mask")]
pub const GTF_TYPE_MASK: u16 = 3;
/// The grantee may only read the frame.
#[doc(alias = "GTF_readonly")]
pub const GTF_READONLY: u16 = 1 << 2;
/// Set by Xen while the grantee has the frame mapped or is copying from it.
#[doc(alias = "GTF_reading")]
pub const GTF_READING: u16 = 1 << 3;
/// Set by Xen while the grantee has the frame mapped writable or is copying to it.
#[doc(alias = "GTF_writing")]
pub const GTF_WRITING: u16 = 1 << 4;
/// Cache attribute: page write-through.
pub const GTF_PWT: u16 = 1 << 5;
/// Cache attribute: page cache disable.
pub const GTF_PCD: u16 = 1 << 6;
/// Cache attribute: page attribute table.
pub const GTF_PAT: u16 = 1 << 7;
/// Sub-page grant (version 2 tables only).
#[doc(alias = "GTF_sub_page")]
pub const GTF_SUB_PAGE: u16 = 1 << 8;
/// Transfer grant: the grantee has committed to transferring a page.
#[doc(alias = "GTF_transfer_committed")]
pub const GTF_TRANSFER_COMMITTED: u16 = 1 << 2;
/// Transfer grant: the transfer has completed and `frame` holds the new page.
#[doc(alias = "GTF_transfer_completed")]
pub const GTF_TRANSFER_COMPLETED: u16 = 1 << 3;

/// A version-1 grant table entry.
#[doc(alias = "grant_entry_v1")]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct GrantEntryV1 {
    /// `GTF_*` type and flags. The granting guest writes it last when granting; Xen sets
    /// [`GTF_READING`]/[`GTF_WRITING`] while the grant is in use.
    pub flags: u16,
    /// The domain being granted access.
    pub domid: DomId,
    /// The granted frame (a GFN).
    pub frame: u32,
}

const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<GrantEntryV1>() == 8);
    assert!(align_of::<GrantEntryV1>() == 4);
    assert!(offset_of!(GrantEntryV1, flags) == 0);
    assert!(offset_of!(GrantEntryV1, domid) == 2);
    assert!(offset_of!(GrantEntryV1, frame) == 4);
};

/// Map a grant into the caller's address space.
#[doc(alias = "GNTTABOP_map_grant_ref")]
pub const GNTTABOP_MAP_GRANT_REF: u32 = 0;
/// Unmap a mapped grant.
#[doc(alias = "GNTTABOP_unmap_grant_ref")]
pub const GNTTABOP_UNMAP_GRANT_REF: u32 = 1;
/// Set up (and learn the frames of) the caller's grant table.
#[doc(alias = "GNTTABOP_setup_table")]
pub const GNTTABOP_SETUP_TABLE: u32 = 2;
/// Dump a grant table to the hypervisor console (debugging).
#[doc(alias = "GNTTABOP_dump_table")]
pub const GNTTABOP_DUMP_TABLE: u32 = 3;
/// Transfer a page to another domain.
#[doc(alias = "GNTTABOP_transfer")]
pub const GNTTABOP_TRANSFER: u32 = 4;
/// Copy between granted and local frames.
#[doc(alias = "GNTTABOP_copy")]
pub const GNTTABOP_COPY: u32 = 5;
/// Query the current and maximum size of a grant table.
#[doc(alias = "GNTTABOP_query_size")]
pub const GNTTABOP_QUERY_SIZE: u32 = 6;
/// Unmap a grant and replace the mapping.
#[doc(alias = "GNTTABOP_unmap_and_replace")]
pub const GNTTABOP_UNMAP_AND_REPLACE: u32 = 7;
/// Select the grant table version.
#[doc(alias = "GNTTABOP_set_version")]
pub const GNTTABOP_SET_VERSION: u32 = 8;
/// Query the grant table version.
#[doc(alias = "GNTTABOP_get_version")]
pub const GNTTABOP_GET_VERSION: u32 = 10;

/// `GNTTABOP_setup_table` argument.
#[doc(alias = "gnttab_setup_table")]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct GnttabSetupTable {
    /// In: the domain (normally `DOMID_SELF`).
    pub dom: DomId,
    /// Padding to the C alignment; always zero.
    pub _pad0: [u8; 2],
    /// In: number of table frames wanted.
    pub nr_frames: u32,
    /// Out: `GNTST_*`.
    pub status: i16,
    /// Padding to the C alignment; always zero.
    pub _pad1: [u8; 6],
    /// In: guest address of an array of `nr_frames` [`XenPfn`]s Xen fills in
    /// (a `XEN_GUEST_HANDLE(xen_pfn_t)`).
    pub frame_list: u64,
}

const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<GnttabSetupTable>() == 24);
    assert!(align_of::<GnttabSetupTable>() == 8);
    assert!(offset_of!(GnttabSetupTable, dom) == 0);
    assert!(offset_of!(GnttabSetupTable, nr_frames) == 4);
    assert!(offset_of!(GnttabSetupTable, status) == 8);
    assert!(offset_of!(GnttabSetupTable, frame_list) == 16);
};

/// `GNTMAP_*` flag: map for device (I/O) access.
#[doc(alias = "GNTMAP_device_map")]
pub const GNTMAP_DEVICE_MAP: u32 = 1 << 0;
/// `GNTMAP_*` flag: map for host CPU access.
#[doc(alias = "GNTMAP_host_map")]
pub const GNTMAP_HOST_MAP: u32 = 1 << 1;
/// `GNTMAP_*` flag: map read-only.
#[doc(alias = "GNTMAP_readonly")]
pub const GNTMAP_READONLY: u32 = 1 << 2;
/// `GNTMAP_*` flag: the host mapping is usable by applications too.
#[doc(alias = "GNTMAP_application_map")]
pub const GNTMAP_APPLICATION_MAP: u32 = 1 << 3;
/// `GNTMAP_*` flag: `host_addr` is the machine address of the PTE to update.
#[doc(alias = "GNTMAP_contains_pte")]
pub const GNTMAP_CONTAINS_PTE: u32 = 1 << 4;
/// Bits of the map flags left for the guest's own use.
#[doc(alias = "GNTMAP_guest_avail_mask")]
pub const GNTMAP_GUEST_AVAIL_MASK: u32 = !0 << 16;

/// `GNTTABOP_map_grant_ref` argument.
#[doc(alias = "gnttab_map_grant_ref")]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct GnttabMapGrantRef {
    /// In: where to map (guest address, or PTE address with `GNTMAP_CONTAINS_PTE`).
    pub host_addr: u64,
    /// In: `GNTMAP_*`.
    pub flags: u32,
    /// In: the grant to map.
    pub ref_: GrantRef,
    /// In: the granting domain.
    pub dom: DomId,
    /// Out: `GNTST_*`.
    pub status: i16,
    /// Out: handle to unmap with.
    pub handle: GrantHandle,
    /// Out: bus address for device mappings.
    pub dev_bus_addr: u64,
}

const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<GnttabMapGrantRef>() == 32);
    assert!(align_of::<GnttabMapGrantRef>() == 8);
    assert!(offset_of!(GnttabMapGrantRef, host_addr) == 0);
    assert!(offset_of!(GnttabMapGrantRef, flags) == 8);
    assert!(offset_of!(GnttabMapGrantRef, ref_) == 12);
    assert!(offset_of!(GnttabMapGrantRef, dom) == 16);
    assert!(offset_of!(GnttabMapGrantRef, status) == 18);
    assert!(offset_of!(GnttabMapGrantRef, handle) == 20);
    assert!(offset_of!(GnttabMapGrantRef, dev_bus_addr) == 24);
};

/// `GNTTABOP_unmap_grant_ref` argument.
#[doc(alias = "gnttab_unmap_grant_ref")]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct GnttabUnmapGrantRef {
    /// In: the address given at map time.
    pub host_addr: u64,
    /// In: the bus address returned at map time.
    pub dev_bus_addr: u64,
    /// In: the handle returned at map time.
    pub handle: GrantHandle,
    /// Out: `GNTST_*`.
    pub status: i16,
    /// Trailing padding to the C alignment; always zero.
    pub _pad: [u8; 2],
}

const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<GnttabUnmapGrantRef>() == 24);
    assert!(align_of::<GnttabUnmapGrantRef>() == 8);
    assert!(offset_of!(GnttabUnmapGrantRef, host_addr) == 0);
    assert!(offset_of!(GnttabUnmapGrantRef, dev_bus_addr) == 8);
    assert!(offset_of!(GnttabUnmapGrantRef, handle) == 16);
    assert!(offset_of!(GnttabUnmapGrantRef, status) == 20);
};

/// `GnttabCopy::flags` bit: `source.u` is a grant reference (else a local GFN).
#[doc(alias = "GNTCOPY_source_gref")]
pub const GNTCOPY_SOURCE_GREF: u16 = 1 << 0;
/// `GnttabCopy::flags` bit: `dest.u` is a grant reference (else a local GFN).
#[doc(alias = "GNTCOPY_dest_gref")]
pub const GNTCOPY_DEST_GREF: u16 = 1 << 1;

/// One side of a [`GnttabCopy`].
#[doc(alias = "gnttab_copy_ptr")]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct GnttabCopyPtr {
    /// The C union `u`: a [`GrantRef`] in the low 32 bits (x86 is little-endian) when the matching
    /// `GNTCOPY_*_gref` flag is set, else a [`XenPfn`].
    pub u: u64,
    /// The domain owning the frame.
    pub domid: DomId,
    /// Byte offset in the frame.
    pub offset: u16,
    /// Trailing padding to the C alignment; always zero.
    pub _pad: [u8; 4],
}

const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<GnttabCopyPtr>() == 16);
    assert!(align_of::<GnttabCopyPtr>() == 8);
    assert!(offset_of!(GnttabCopyPtr, u) == 0);
    assert!(offset_of!(GnttabCopyPtr, domid) == 8);
    assert!(offset_of!(GnttabCopyPtr, offset) == 10);
};

impl GnttabCopyPtr {
    /// A side naming grant `gref` of `domid`, at byte `offset`.
    pub const fn gref(gref: GrantRef, domid: DomId, offset: u16) -> Self {
        Self {
            u: gref as u64,
            domid,
            offset,
            _pad: [0; 4],
        }
    }

    /// A side naming frame `gmfn` of `domid` (normally the caller's own), at byte `offset`.
    pub const fn gmfn(gmfn: XenPfn, domid: DomId, offset: u16) -> Self {
        Self {
            u: gmfn,
            domid,
            offset,
            _pad: [0; 4],
        }
    }
}

/// `GNTTABOP_copy` argument: copy `len` bytes from `source` to `dest` (neither may cross a page).
#[doc(alias = "gnttab_copy")]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct GnttabCopy {
    /// In: where to copy from.
    pub source: GnttabCopyPtr,
    /// In: where to copy to.
    pub dest: GnttabCopyPtr,
    /// In: bytes to copy.
    pub len: u16,
    /// In: `GNTCOPY_*`.
    pub flags: u16,
    /// Out: `GNTST_*`.
    pub status: i16,
    /// Trailing padding to the C alignment; always zero.
    pub _pad: [u8; 2],
}

const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<GnttabCopy>() == 40);
    assert!(align_of::<GnttabCopy>() == 8);
    assert!(offset_of!(GnttabCopy, source) == 0);
    assert!(offset_of!(GnttabCopy, dest) == 16);
    assert!(offset_of!(GnttabCopy, len) == 32);
    assert!(offset_of!(GnttabCopy, flags) == 34);
    assert!(offset_of!(GnttabCopy, status) == 36);
};

/// `GNTTABOP_query_size` argument.
#[doc(alias = "gnttab_query_size")]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct GnttabQuerySize {
    /// In: the domain (normally `DOMID_SELF`).
    pub dom: DomId,
    /// Padding to the C alignment; always zero.
    pub _pad0: [u8; 2],
    /// Out: current number of table frames.
    pub nr_frames: u32,
    /// Out: the most table frames the domain may have.
    pub max_nr_frames: u32,
    /// Out: `GNTST_*`.
    pub status: i16,
    /// Trailing padding to the C alignment; always zero.
    pub _pad1: [u8; 2],
}

const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<GnttabQuerySize>() == 16);
    assert!(align_of::<GnttabQuerySize>() == 4);
    assert!(offset_of!(GnttabQuerySize, dom) == 0);
    assert!(offset_of!(GnttabQuerySize, nr_frames) == 4);
    assert!(offset_of!(GnttabQuerySize, max_nr_frames) == 8);
    assert!(offset_of!(GnttabQuerySize, status) == 12);
};

/// Grant operation status: success.
#[doc(alias = "GNTST_okay")]
pub const GNTST_OKAY: i16 = 0;
/// Grant operation status: unspecified error.
#[doc(alias = "GNTST_general_error")]
pub const GNTST_GENERAL_ERROR: i16 = -1;
/// Grant operation status: unknown domain.
#[doc(alias = "GNTST_bad_domain")]
pub const GNTST_BAD_DOMAIN: i16 = -2;
/// Grant operation status: unknown or unusable grant reference.
#[doc(alias = "GNTST_bad_gntref")]
pub const GNTST_BAD_GNTREF: i16 = -3;
/// Grant operation status: unknown or unusable map handle.
#[doc(alias = "GNTST_bad_handle")]
pub const GNTST_BAD_HANDLE: i16 = -4;
/// Grant operation status: unusable virtual address.
#[doc(alias = "GNTST_bad_virt_addr")]
pub const GNTST_BAD_VIRT_ADDR: i16 = -5;
/// Grant operation status: unusable device address.
#[doc(alias = "GNTST_bad_dev_addr")]
pub const GNTST_BAD_DEV_ADDR: i16 = -6;
/// Grant operation status: no space in the I/O MMU.
#[doc(alias = "GNTST_no_device_space")]
pub const GNTST_NO_DEVICE_SPACE: i16 = -7;
/// Grant operation status: permission denied.
#[doc(alias = "GNTST_permission_denied")]
pub const GNTST_PERMISSION_DENIED: i16 = -8;
/// Grant operation status: bad page.
#[doc(alias = "GNTST_bad_page")]
pub const GNTST_BAD_PAGE: i16 = -9;
/// Grant operation status: copy arguments cross a page boundary.
#[doc(alias = "GNTST_bad_copy_arg")]
pub const GNTST_BAD_COPY_ARG: i16 = -10;
/// Grant operation status: transfer page address too large.
#[doc(alias = "GNTST_address_too_big")]
pub const GNTST_ADDRESS_TOO_BIG: i16 = -11;
/// Grant operation status: not done, try again.
#[doc(alias = "GNTST_eagain")]
pub const GNTST_EAGAIN: i16 = -12;
/// Grant operation status: out of space (handles etc.).
#[doc(alias = "GNTST_no_space")]
pub const GNTST_NO_SPACE: i16 = -13;
