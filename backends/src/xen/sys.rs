//! The ioctl ABI of dom0's `/dev/xen/gntdev` and `/dev/xen/evtchn` (Linux's `xen/gntdev.h` and
//! `xen/evtchn.h`, which Xen ships as `xen/sys/*.h`). Layouts only, each with size and offset
//! asserts; `pvkit-tests` also compares them with what a C compiler sees in the installed headers.

use core::mem::{offset_of, size_of};

/// `_IOC(_IOC_NONE, ty, nr, size)`: every request of both devices passes its argument by pointer
/// but is encoded with direction "none".
const fn ioc_none(ty: u8, nr: u8, size: usize) -> libc::c_ulong {
    ((size as libc::c_ulong) << 16) | ((ty as libc::c_ulong) << 8) | nr as libc::c_ulong
}

/// `struct ioctl_gntdev_grant_ref`: one grant to map.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct GntdevGrantRef {
    /// The granting domain.
    pub domid: u32,
    /// The grant reference.
    pub gref: u32,
}

/// `struct ioctl_gntdev_map_grant_ref` without its variable-length `refs` array, which follows it
/// in memory (the C struct declares `refs[1]`, so its `sizeof` is 24).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct GntdevMapGrantRefHeader {
    /// In: number of grants.
    pub count: u32,
    /// Zero.
    pub pad: u32,
    /// Out: the offset to give `mmap` for this mapping.
    pub index: u64,
}

/// `IOCTL_GNTDEV_MAP_GRANT_REF`.
pub const IOCTL_GNTDEV_MAP_GRANT_REF: libc::c_ulong = ioc_none(
    b'G',
    0,
    size_of::<GntdevMapGrantRefHeader>() + size_of::<GntdevGrantRef>(),
);

/// `struct ioctl_gntdev_unmap_grant_ref`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct GntdevUnmapGrantRef {
    /// The `index` the map call returned.
    pub index: u64,
    /// Number of pages.
    pub count: u32,
    /// Zero.
    pub pad: u32,
}

/// `IOCTL_GNTDEV_UNMAP_GRANT_REF`.
pub const IOCTL_GNTDEV_UNMAP_GRANT_REF: libc::c_ulong = ioc_none(b'G', 1, size_of::<GntdevUnmapGrantRef>());

/// `struct ioctl_gntdev_set_max_grants`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct GntdevSetMaxGrants {
    /// Grants this file may have mapped at once.
    pub count: u32,
}

/// `IOCTL_GNTDEV_SET_MAX_GRANTS`.
pub const IOCTL_GNTDEV_SET_MAX_GRANTS: libc::c_ulong = ioc_none(b'G', 3, size_of::<GntdevSetMaxGrants>());

/// One side of a grant copy: the `foreign` member of the C union (the `virt` member is a plain
/// pointer stored in the same 8 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct GntdevCopyForeign {
    /// Grant reference.
    pub gref: u32,
    /// Byte offset in the granted page.
    pub offset: u16,
    /// The granting domain.
    pub domid: u16,
}

/// The C union: a local virtual address or a foreign grant.
#[repr(C)]
#[derive(Clone, Copy)]
pub union GntdevCopyPtr {
    /// A buffer in this process.
    pub virt: *mut libc::c_void,
    /// A page granted by another domain.
    pub foreign: GntdevCopyForeign,
}

impl core::fmt::Debug for GntdevCopyPtr {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // SAFETY: both members are 8 bytes of plain data; reading them as one u64 is always valid.
        let bits = unsafe { core::mem::transmute::<GntdevCopyPtr, u64>(*self) };
        write!(f, "GntdevCopyPtr({bits:#018x})")
    }
}

/// `struct ioctl_gntdev_grant_copy_segment`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct GntdevGrantCopySegment {
    /// Where the bytes come from.
    pub source: GntdevCopyPtr,
    /// Where they go.
    pub dest: GntdevCopyPtr,
    /// Bytes; a foreign side must not cross its page's end.
    pub len: u16,
    /// `GNTCOPY_source_gref` / `GNTCOPY_dest_gref`: which sides are foreign.
    pub flags: u16,
    /// Out: `GNTST_*`.
    pub status: i16,
}

/// `struct ioctl_gntdev_grant_copy`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct GntdevGrantCopy {
    /// Number of segments.
    pub count: libc::c_uint,
    /// The segments.
    pub segments: *mut GntdevGrantCopySegment,
}

/// `IOCTL_GNTDEV_GRANT_COPY`.
pub const IOCTL_GNTDEV_GRANT_COPY: libc::c_ulong = ioc_none(b'G', 8, size_of::<GntdevGrantCopy>());

/// `struct ioctl_evtchn_bind_interdomain`; the ioctl returns the local port.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct EvtchnBindInterdomain {
    /// The other domain.
    pub remote_domain: u32,
    /// Its unbound port, allocated for us.
    pub remote_port: u32,
}

/// `IOCTL_EVTCHN_BIND_INTERDOMAIN`.
pub const IOCTL_EVTCHN_BIND_INTERDOMAIN: libc::c_ulong =
    ioc_none(b'E', 1, size_of::<EvtchnBindInterdomain>());

/// `struct ioctl_evtchn_unbind` and `struct ioctl_evtchn_notify`: one local port.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct EvtchnPortArg {
    /// The local port.
    pub port: u32,
}

/// `IOCTL_EVTCHN_UNBIND`.
pub const IOCTL_EVTCHN_UNBIND: libc::c_ulong = ioc_none(b'E', 3, size_of::<EvtchnPortArg>());
/// `IOCTL_EVTCHN_NOTIFY`.
pub const IOCTL_EVTCHN_NOTIFY: libc::c_ulong = ioc_none(b'E', 4, size_of::<EvtchnPortArg>());

const _: () = {
    assert!(size_of::<GntdevGrantRef>() == 8);
    assert!(size_of::<GntdevMapGrantRefHeader>() == 16);
    assert!(offset_of!(GntdevMapGrantRefHeader, index) == 8);
    assert!(size_of::<GntdevUnmapGrantRef>() == 16);
    assert!(offset_of!(GntdevUnmapGrantRef, count) == 8);
    assert!(size_of::<GntdevCopyForeign>() == 8);
    assert!(offset_of!(GntdevCopyForeign, offset) == 4);
    assert!(offset_of!(GntdevCopyForeign, domid) == 6);
    assert!(size_of::<GntdevCopyPtr>() == 8);
    assert!(size_of::<GntdevGrantCopySegment>() == 24);
    assert!(offset_of!(GntdevGrantCopySegment, dest) == 8);
    assert!(offset_of!(GntdevGrantCopySegment, len) == 16);
    assert!(offset_of!(GntdevGrantCopySegment, flags) == 18);
    assert!(offset_of!(GntdevGrantCopySegment, status) == 20);
    assert!(size_of::<GntdevGrantCopy>() == 16);
    assert!(offset_of!(GntdevGrantCopy, segments) == 8);
    assert!(size_of::<EvtchnBindInterdomain>() == 8);
    assert!(IOCTL_GNTDEV_MAP_GRANT_REF == 0x0018_4700);
    assert!(IOCTL_GNTDEV_UNMAP_GRANT_REF == 0x0010_4701);
    assert!(IOCTL_GNTDEV_GRANT_COPY == 0x0010_4708);
    assert!(IOCTL_EVTCHN_BIND_INTERDOMAIN == 0x0008_4501);
    assert!(IOCTL_EVTCHN_NOTIFY == 0x0004_4504);
};
