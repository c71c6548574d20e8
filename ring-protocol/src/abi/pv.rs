//! The x86_64 PV guest ABI (`xen.h`, `arch-x86/xen.h`, `arch-x86/xen-x86_64.h`, `sched.h`,
//! `vcpu.h`, `version.h`): what a paravirtualized kernel is started with (`start_info`), the
//! shared-info page and its per-vCPU `vcpu_info`, the virtual IDT entries, page-table update
//! requests, and the sub-commands of the hypercalls a PV kernel makes (numbers in
//! [`xen`](super::xen)). Layouts only; nothing here calls Xen.
//!
//! Fields Xen and the guest both write (`evtchn_upcall_mask`, the pending bitmaps) are plain
//! integers here: a guest reaches them through atomics at the offsets these types give
//! (`offset_of!`), never through a reference to the struct.

use core::mem::{offset_of, size_of};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::xen::XenPfn;

// ---- start_info (xen.h) ----

/// Length of [`StartInfo::cmd_line`].
pub const MAX_GUEST_CMDLINE: usize = 1024;

/// [`StartInfo::flags`]: the domain is privileged.
pub const SIF_PRIVILEGED: u32 = 1 << 0;
/// [`StartInfo::flags`]: this is the initial (control) domain.
pub const SIF_INITDOMAIN: u32 = 1 << 1;
/// [`StartInfo::flags`]: `mod_start` is a multiboot module.
pub const SIF_MULTIBOOT_MOD: u32 = 1 << 2;
/// [`StartInfo::flags`]: `mod_start` is a frame number, not an address.
pub const SIF_MOD_START_PFN: u32 = 1 << 3;
/// [`StartInfo::flags`]: the toolstack understands a virtually mapped p2m list.
pub const SIF_VIRT_P2M_4TOOLS: u32 = 1 << 4;

/// What a PV domain starts with (64-bit), at the address in `rsi` on entry.
#[doc(alias = "start_info")]
#[doc(alias = "start_info_t")]
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct StartInfo {
    /// `"xen-<version>-<platform>"`.
    pub magic: [u8; 32],
    /// Pages allocated to the domain.
    pub nr_pages: u64,
    /// Machine address of the shared-info page ([`SharedInfo`]).
    pub shared_info: u64,
    /// `SIF_*`.
    pub flags: u32,
    /// Padding (C alignment of the next field).
    pub _pad0: u32,
    /// Machine frame of the XenStore ring page.
    pub store_mfn: XenPfn,
    /// Event channel of the XenStore ring.
    pub store_evtchn: u32,
    /// Padding.
    pub _pad1: u32,
    /// domU: machine frame of the console ring page (`console.domU.mfn`); dom0: the low 32 bits are
    /// `console.dom0.info_off`, the high 32 bits `info_size`.
    pub console_mfn: XenPfn,
    /// domU: event channel of the console ring (`console.domU.evtchn`).
    pub console_evtchn: u32,
    /// Padding.
    pub _pad2: u32,
    /// Virtual address of the initial top-level page table.
    pub pt_base: u64,
    /// Frames of initial page tables.
    pub nr_pt_frames: u64,
    /// Virtual address of the pfn -> mfn list (`nr_pages` entries).
    pub mfn_list: u64,
    /// Virtual address (or pfn, with [`SIF_MOD_START_PFN`]) of the first module.
    pub mod_start: u64,
    /// Module size in bytes.
    pub mod_len: u64,
    /// NUL-terminated command line.
    pub cmd_line: [u8; MAX_GUEST_CMDLINE],
    /// First pfn of the initial p2m table (when relocated).
    pub first_p2m_pfn: u64,
    /// Frames of that table.
    pub nr_p2m_frames: u64,
}
const _: () = assert!(offset_of!(StartInfo, nr_pages) == 32);
const _: () = assert!(offset_of!(StartInfo, store_mfn) == 56);
const _: () = assert!(offset_of!(StartInfo, console_mfn) == 72);
const _: () = assert!(offset_of!(StartInfo, pt_base) == 88);
const _: () = assert!(offset_of!(StartInfo, cmd_line) == 128);
const _: () = assert!(size_of::<StartInfo>() == 1168);

// ---- shared info and vcpu info (xen.h, arch-x86) ----

/// vCPU slots in the shared-info page.
pub const XEN_LEGACY_MAX_VCPUS: usize = 32;

/// [`VcpuTimeInfo::flags`]: the TSC is stable across vCPUs.
pub const XEN_PVCLOCK_TSC_STABLE_BIT: u8 = 1 << 0;
/// [`VcpuTimeInfo::flags`]: the guest was stopped (for watchdogs).
pub const XEN_PVCLOCK_GUEST_STOPPED: u8 = 1 << 1;

/// The per-vCPU clock Xen keeps up to date (`vcpu_info.time`).
#[doc(alias = "vcpu_time_info")]
#[doc(alias = "vcpu_time_info_t")]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct VcpuTimeInfo {
    /// Odd while Xen updates the record.
    pub version: u32,
    /// Padding.
    pub pad0: u32,
    /// TSC at the last update.
    pub tsc_timestamp: u64,
    /// Nanoseconds since boot at the last update.
    pub system_time: u64,
    /// TSC -> ns multiplier (32.32 fixed point, after the shift).
    pub tsc_to_system_mul: u32,
    /// Shift applied to the TSC delta before the multiplication.
    pub tsc_shift: i8,
    /// `XEN_PVCLOCK_*`.
    pub flags: u8,
    /// Padding.
    pub pad1: [u8; 2],
}
const _: () = assert!(size_of::<VcpuTimeInfo>() == 32);

/// The x86_64 part of `vcpu_info`.
#[doc(alias = "arch_vcpu_info")]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct ArchVcpuInfo {
    /// The faulting address of the last page fault Xen delivered.
    pub cr2: u64,
    /// Padding (`vcpu_info` is 64 bytes).
    pub pad: u64,
}
const _: () = assert!(size_of::<ArchVcpuInfo>() == 16);

/// One vCPU's slot in the shared-info page.
#[doc(alias = "vcpu_info")]
#[doc(alias = "vcpu_info_t")]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct VcpuInfo {
    /// Set by Xen when an event is pending for this vCPU.
    pub evtchn_upcall_pending: u8,
    /// Set by the guest to hold back event upcalls (its "interrupt flag").
    pub evtchn_upcall_mask: u8,
    /// Padding.
    pub _pad0: [u8; 6],
    /// One bit per word of [`SharedInfo::evtchn_pending`] that has a pending event.
    pub evtchn_pending_sel: u64,
    /// Architecture part.
    pub arch: ArchVcpuInfo,
    /// The vCPU's clock.
    pub time: VcpuTimeInfo,
}
const _: () = assert!(size_of::<VcpuInfo>() == 64);
const _: () = assert!(offset_of!(VcpuInfo, evtchn_upcall_mask) == 1);
const _: () = assert!(offset_of!(VcpuInfo, evtchn_pending_sel) == 8);
const _: () = assert!(offset_of!(VcpuInfo, time) == 32);

/// The x86 part of the shared-info page.
#[doc(alias = "arch_shared_info")]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct ArchSharedInfo {
    /// Entries in the p2m table.
    pub max_pfn: u64,
    /// Frame of the list of frames of the p2m frame list.
    pub pfn_to_mfn_frame_list_list: XenPfn,
    /// NMI reason bits.
    pub nmi_reason: u64,
    /// Root (cr3 format) of the address space where `p2m_vaddr` is valid; 0 = the two fields
    /// after it are not valid.
    pub p2m_cr3: u64,
    /// Virtual address of the linear p2m list.
    pub p2m_vaddr: u64,
    /// Incremented by the guest around each change of the p2m list's mappings.
    pub p2m_generation: u64,
}
const _: () = assert!(size_of::<ArchSharedInfo>() == 48);

/// The shared-info page: vCPU slots, the 2-level event channel bitmaps, the wall clock.
#[doc(alias = "shared_info")]
#[doc(alias = "shared_info_t")]
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct SharedInfo {
    /// One slot per vCPU (the first [`XEN_LEGACY_MAX_VCPUS`]).
    pub vcpu_info: [VcpuInfo; XEN_LEGACY_MAX_VCPUS],
    /// Pending bit per event channel.
    pub evtchn_pending: [u64; 64],
    /// Mask bit per event channel (a masked channel raises no upcall).
    pub evtchn_mask: [u64; 64],
    /// Odd while Xen updates the wall clock.
    pub wc_version: u32,
    /// Wall-clock seconds at system time 0 (low 32 bits).
    pub wc_sec: u32,
    /// Wall-clock nanoseconds at system time 0.
    pub wc_nsec: u32,
    /// Wall-clock seconds, high 32 bits.
    pub wc_sec_hi: u32,
    /// Architecture part.
    pub arch: ArchSharedInfo,
}
const _: () = assert!(offset_of!(SharedInfo, evtchn_pending) == 2048);
const _: () = assert!(offset_of!(SharedInfo, wc_version) == 3072);
const _: () = assert!(size_of::<SharedInfo>() == 3136);
const _: () = assert!(64 * 64 == super::event_channel::EVTCHN_2L_NR_CHANNELS);

// ---- trap table, page tables (arch-x86/xen.h, xen.h) ----

/// [`TrapInfo::flags`]: the lowest privilege level that may raise the vector with `int`.
#[doc(alias = "TI_GET_DPL")]
pub const TI_DPL_MASK: u8 = 3;
/// [`TrapInfo::flags`]: mask event upcalls while the handler runs (an "interrupt gate").
#[doc(alias = "TI_SET_IF")]
#[doc(alias = "TI_GET_IF")]
pub const TI_MASK_EVENTS: u8 = 1 << 2;

/// One virtual IDT entry for `set_trap_table`.
#[doc(alias = "trap_info")]
#[doc(alias = "trap_info_t")]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct TrapInfo {
    /// Exception vector.
    pub vector: u8,
    /// [`TI_DPL_MASK`] bits and [`TI_MASK_EVENTS`].
    pub flags: u8,
    /// Code selector.
    pub cs: u16,
    /// Padding.
    pub _pad: u32,
    /// Handler address (0 ends the table).
    pub address: u64,
}
const _: () = assert!(size_of::<TrapInfo>() == 16);

/// Guest kernel code selector (`FLAT_RING3_CS64`: a 64-bit PV kernel runs in ring 3).
#[doc(alias = "FLAT_KERNEL_CS64")]
pub const FLAT_KERNEL_CS: u16 = 0xe033;
/// Guest kernel stack selector (`FLAT_RING3_SS64`).
#[doc(alias = "FLAT_KERNEL_SS64")]
pub const FLAT_KERNEL_SS: u16 = 0xe02b;

/// Base of the read-only machine-to-physical table every PV guest sees.
pub const MACH2PHYS_VIRT_START: u64 = 0xffff_8000_0000_0000;

/// [`MmuUpdate::ptr`] request type (low 2 bits): checked `*ptr = val`, `ptr` the machine address of
/// a page-table entry.
pub const MMU_NORMAL_PT_UPDATE: u64 = 0;
/// [`MmuUpdate::ptr`] request type: update the m2p entry of frame `ptr`.
pub const MMU_MACHPHYS_UPDATE: u64 = 1;
/// [`MmuUpdate::ptr`] request type: as normal, keeping the accessed and dirty bits.
pub const MMU_PT_UPDATE_PRESERVE_AD: u64 = 2;

/// One page-table write for `mmu_update`.
#[doc(alias = "mmu_update")]
#[doc(alias = "mmu_update_t")]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct MmuUpdate {
    /// Machine address of the entry, low 2 bits = request type (`MMU_*`).
    pub ptr: u64,
    /// New entry value.
    pub val: u64,
}
const _: () = assert!(size_of::<MmuUpdate>() == 16);

/// `mmuext_op` command: pin an L1 table (by mfn).
pub const MMUEXT_PIN_L1_TABLE: u32 = 0;
/// `mmuext_op` command: pin an L2 table.
pub const MMUEXT_PIN_L2_TABLE: u32 = 1;
/// `mmuext_op` command: pin an L3 table.
pub const MMUEXT_PIN_L3_TABLE: u32 = 2;
/// `mmuext_op` command: pin an L4 table.
pub const MMUEXT_PIN_L4_TABLE: u32 = 3;
/// `mmuext_op` command: unpin a table.
pub const MMUEXT_UNPIN_TABLE: u32 = 4;
/// `mmuext_op` command: switch to another top-level table.
pub const MMUEXT_NEW_BASEPTR: u32 = 5;
/// `mmuext_op` command: flush the local TLB.
pub const MMUEXT_TLB_FLUSH_LOCAL: u32 = 6;
/// `mmuext_op` command: flush one address from the local TLB.
pub const MMUEXT_INVLPG_LOCAL: u32 = 7;
/// `mmuext_op` command: flush the TLBs of every vCPU.
pub const MMUEXT_TLB_FLUSH_ALL: u32 = 10;
/// `mmuext_op` command: flush one address from every vCPU's TLB.
pub const MMUEXT_INVLPG_ALL: u32 = 11;
/// `mmuext_op` command: zero a frame (by machine frame number).
pub const MMUEXT_CLEAR_PAGE: u32 = 16;
/// `mmuext_op` command: copy a frame.
pub const MMUEXT_COPY_PAGE: u32 = 17;

/// One extended MMU operation for `mmuext_op`.
#[doc(alias = "mmuext_op")]
#[doc(alias = "mmuext_op_t")]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct MmuextOp {
    /// `MMUEXT_*`.
    pub cmd: u32,
    /// Padding.
    pub _pad: u32,
    /// First argument (a union in C: an mfn or a linear address).
    pub arg1: u64,
    /// Second argument (a union in C: a count, a vCPU mask pointer or a source mfn).
    pub arg2: u64,
}
const _: () = assert!(size_of::<MmuextOp>() == 24);

/// `update_va_mapping` flags: no flush.
pub const UVMF_NONE: u64 = 0;
/// `update_va_mapping` flags: flush the whole TLB.
pub const UVMF_TLB_FLUSH: u64 = 1;
/// `update_va_mapping` flags: flush just this address.
pub const UVMF_INVLPG: u64 = 2;
/// `update_va_mapping` flags: the flush-type bits.
pub const UVMF_FLUSHTYPE_MASK: u64 = 3;
/// `update_va_mapping` flags: flush the local TLB only (the default).
pub const UVMF_LOCAL: u64 = 0;
/// `update_va_mapping` flags: flush every vCPU's TLB.
pub const UVMF_ALL: u64 = 1 << 2;

// ---- hypercall sub-commands (xen.h, sched.h, version.h, vcpu.h) ----

/// `console_io` command: write to the hypervisor console.
#[doc(alias = "CONSOLEIO_write")]
pub const CONSOLEIO_WRITE: u32 = 0;
/// `console_io` command: read from the hypervisor console.
#[doc(alias = "CONSOLEIO_read")]
pub const CONSOLEIO_READ: u32 = 1;

/// `sched_op` command: give up the CPU for now.
#[doc(alias = "SCHEDOP_yield")]
pub const SCHEDOP_YIELD: u32 = 0;
/// `sched_op` command: block until an event arrives (re-enables event delivery atomically).
#[doc(alias = "SCHEDOP_block")]
pub const SCHEDOP_BLOCK: u32 = 1;
/// `sched_op` command: shut the domain down with a [`SchedShutdown`] reason.
#[doc(alias = "SCHEDOP_shutdown")]
pub const SCHEDOP_SHUTDOWN: u32 = 2;
/// `sched_op` command: block until one of a set of event channels is pending.
#[doc(alias = "SCHEDOP_poll")]
pub const SCHEDOP_POLL: u32 = 3;

/// Shutdown reason: the domain exited normally.
#[doc(alias = "SHUTDOWN_poweroff")]
pub const SHUTDOWN_POWEROFF: u32 = 0;
/// Shutdown reason: restart the domain.
#[doc(alias = "SHUTDOWN_reboot")]
pub const SHUTDOWN_REBOOT: u32 = 1;
/// Shutdown reason: suspend (save) the domain.
#[doc(alias = "SHUTDOWN_suspend")]
pub const SHUTDOWN_SUSPEND: u32 = 2;
/// Shutdown reason: the domain crashed.
#[doc(alias = "SHUTDOWN_crash")]
pub const SHUTDOWN_CRASH: u32 = 3;
/// Shutdown reason: the watchdog expired.
#[doc(alias = "SHUTDOWN_watchdog")]
pub const SHUTDOWN_WATCHDOG: u32 = 4;

/// The argument of `SCHEDOP_shutdown`.
#[doc(alias = "sched_shutdown")]
#[doc(alias = "sched_shutdown_t")]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct SchedShutdown {
    /// `SHUTDOWN_*`.
    pub reason: u32,
}
const _: () = assert!(size_of::<SchedShutdown>() == 4);

/// `xen_version` command: `major << 16 | minor`.
#[doc(alias = "XENVER_version")]
pub const XENVER_VERSION: u32 = 0;
/// `xen_version` command: the extra version string.
#[doc(alias = "XENVER_extraversion")]
pub const XENVER_EXTRAVERSION: u32 = 1;
/// `xen_version` command: the capabilities string.
#[doc(alias = "XENVER_capabilities")]
pub const XENVER_CAPABILITIES: u32 = 3;
/// `xen_version` command: a word of the feature bitmap.
#[doc(alias = "XENVER_get_features")]
pub const XENVER_GET_FEATURES: u32 = 6;
/// `xen_version` command: the page size.
#[doc(alias = "XENVER_pagesize")]
pub const XENVER_PAGESIZE: u32 = 7;

/// `vcpu_op` command: bring a vCPU up.
#[doc(alias = "VCPUOP_up")]
pub const VCPUOP_UP: u32 = 1;
/// `vcpu_op` command: take a vCPU down.
#[doc(alias = "VCPUOP_down")]
pub const VCPUOP_DOWN: u32 = 2;
/// `vcpu_op` command: whether a vCPU is up.
#[doc(alias = "VCPUOP_is_up")]
pub const VCPUOP_IS_UP: u32 = 3;
/// `vcpu_op` command: start a periodic timer.
#[doc(alias = "VCPUOP_set_periodic_timer")]
pub const VCPUOP_SET_PERIODIC_TIMER: u32 = 6;
/// `vcpu_op` command: stop the periodic timer (Xen starts one at 100 Hz by default on some versions).
#[doc(alias = "VCPUOP_stop_periodic_timer")]
pub const VCPUOP_STOP_PERIODIC_TIMER: u32 = 7;
/// `vcpu_op` command: arm the one-shot timer.
#[doc(alias = "VCPUOP_set_singleshot_timer")]
pub const VCPUOP_SET_SINGLESHOT_TIMER: u32 = 8;
/// `vcpu_op` command: cancel the one-shot timer.
#[doc(alias = "VCPUOP_stop_singleshot_timer")]
pub const VCPUOP_STOP_SINGLESHOT_TIMER: u32 = 9;
/// `vcpu_op` command: move `vcpu_info` out of the shared-info page.
#[doc(alias = "VCPUOP_register_vcpu_info")]
pub const VCPUOP_REGISTER_VCPU_INFO: u32 = 10;
