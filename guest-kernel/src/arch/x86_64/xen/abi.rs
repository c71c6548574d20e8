//! The x86_64 PV guest ABI the kernel needs beyond what `ring_protocol::abi` holds: hypercall
//! numbers, `start_info`, the shared-info and vcpu-info pages, trap table entries, page-table update
//! requests (`xen/include/public/xen.h`, `arch-x86/xen.h`, `arch-x86/xen-x86_64.h`, `sched.h`,
//! `vcpu.h`, `memory.h`). Layouts only; nothing here calls Xen.

use core::mem::{offset_of, size_of};

pub use ring_protocol::abi::xen::{
    HYPERVISOR_CONSOLE_IO, HYPERVISOR_EVENT_CHANNEL_OP, HYPERVISOR_GRANT_TABLE_OP, HYPERVISOR_SCHED_OP,
    VIRQ_TIMER,
};

/// Hypercall `set_trap_table`.
pub const HYPERVISOR_SET_TRAP_TABLE: u32 = 0;
/// Hypercall `mmu_update`.
pub const HYPERVISOR_MMU_UPDATE: u32 = 1;
/// Hypercall `set_callbacks`.
pub const HYPERVISOR_SET_CALLBACKS: u32 = 4;
/// Hypercall `memory_op`.
pub const HYPERVISOR_MEMORY_OP: u32 = 12;
/// Hypercall `update_va_mapping`.
pub const HYPERVISOR_UPDATE_VA_MAPPING: u32 = 14;
/// Hypercall `set_timer_op`.
pub const HYPERVISOR_SET_TIMER_OP: u32 = 15;
/// Hypercall `xen_version`.
pub const HYPERVISOR_XEN_VERSION: u32 = 17;
/// Hypercall `iret` (x86 only; entered by jumping to its stub with the frame on the stack).
pub const HYPERVISOR_IRET: u32 = 23;
/// Hypercall `vcpu_op`.
pub const HYPERVISOR_VCPU_OP: u32 = 24;
/// Hypercall `mmuext_op`.
pub const HYPERVISOR_MMUEXT_OP: u32 = 26;

/// The name of hypercall `nr` (`xen.h`'s `__HYPERVISOR_<name>`), for the hypercalls this kernel
/// makes; `None` for others.
pub fn hypercall_name(nr: u32) -> Option<&'static str> {
    Some(match nr {
        HYPERVISOR_SET_TRAP_TABLE => "set_trap_table",
        HYPERVISOR_MMU_UPDATE => "mmu_update",
        HYPERVISOR_SET_CALLBACKS => "set_callbacks",
        HYPERVISOR_MEMORY_OP => "memory_op",
        HYPERVISOR_UPDATE_VA_MAPPING => "update_va_mapping",
        HYPERVISOR_SET_TIMER_OP => "set_timer_op",
        HYPERVISOR_XEN_VERSION => "xen_version",
        HYPERVISOR_CONSOLE_IO => "console_io",
        HYPERVISOR_GRANT_TABLE_OP => "grant_table_op",
        HYPERVISOR_IRET => "iret",
        HYPERVISOR_VCPU_OP => "vcpu_op",
        HYPERVISOR_MMUEXT_OP => "mmuext_op",
        HYPERVISOR_SCHED_OP => "sched_op",
        HYPERVISOR_EVENT_CHANNEL_OP => "event_channel_op",
        _ => return None,
    })
}

/// `console_io` command: write to the hypervisor console.
pub const CONSOLEIO_WRITE: u64 = 0;

/// `sched_op` command: give up the CPU for now.
pub const SCHEDOP_YIELD: u64 = 0;
/// `sched_op` command: block until an event arrives (re-enables event delivery atomically).
pub const SCHEDOP_BLOCK: u64 = 1;
/// `sched_op` command: shut the domain down with a [`SchedShutdown`] reason.
pub const SCHEDOP_SHUTDOWN: u64 = 2;
/// Shutdown reason: the domain exited normally.
pub const SHUTDOWN_POWEROFF: u32 = 0;
/// Shutdown reason: the domain crashed.
pub const SHUTDOWN_CRASH: u32 = 3;

/// `xen_version` command: major << 16 | minor.
pub const XENVER_VERSION: u64 = 0;

/// `mmu_update` request type: checked `*ptr = val`, `ptr` the machine address of a PTE.
pub const MMU_NORMAL_PT_UPDATE: u64 = 0;
/// `mmuext_op` command: zero a frame (by machine frame number).
pub const MMUEXT_CLEAR_PAGE: u32 = 16;
/// `update_va_mapping` flag: flush just this address from the local TLB.
pub const UVMF_INVLPG: u64 = 2;

/// `vcpu_op` command: stop the periodic timer (Xen starts one at 100 Hz by default on some versions).
pub const VCPUOP_STOP_PERIODIC_TIMER: u64 = 7;

/// `start_info.flags`: this is the initial (control) domain.
pub const SIF_INITDOMAIN: u32 = 1 << 1;
/// `start_info.flags`: `mod_start` is a frame number, not an address.
pub const SIF_MOD_START_PFN: u32 = 1 << 3;

/// Guest kernel code selector (`FLAT_KERNEL_CS64`, ring 3 under 64-bit PV).
pub const FLAT_KERNEL_CS: u16 = 0xe033;

/// Base of the read-only machine-to-physical table every PV guest sees (`MACH2PHYS_VIRT_START`).
pub const MACH2PHYS_VIRT_START: u64 = 0xffff_8000_0000_0000;

/// Page-table entry bits.
pub const PTE_PRESENT: u64 = 1 << 0;
/// Writable.
pub const PTE_RW: u64 = 1 << 1;
/// User-accessible (Xen sets it on 64-bit PV kernel mappings anyway).
pub const PTE_USER: u64 = 1 << 2;
/// Accessed.
pub const PTE_ACCESSED: u64 = 1 << 5;
/// Dirty.
pub const PTE_DIRTY: u64 = 1 << 6;
/// Machine address bits of a PTE (bits 12..52).
pub const PTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Number of event channels of the 2-level ABI on x86_64 (64 x 64).
pub const NR_EVENT_CHANNELS: usize = 4096;
/// vCPU slots in the shared-info page.
pub const LEGACY_MAX_VCPUS: usize = 32;

/// `struct start_info` (64-bit).
#[doc(alias = "start_info")]
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct StartInfo {
    /// "xen-<version>-<platform>".
    pub magic: [u8; 32],
    /// Pages allocated to the domain.
    pub nr_pages: u64,
    /// Machine address of the shared-info page.
    pub shared_info: u64,
    /// `SIF_*`.
    pub flags: u32,
    /// Padding (C alignment of the next field).
    pub _pad0: u32,
    /// Machine frame of the XenStore ring page.
    pub store_mfn: u64,
    /// Event channel of the XenStore ring.
    pub store_evtchn: u32,
    /// Padding.
    pub _pad1: u32,
    /// domU: machine frame of the console ring page; dom0: offset/size of `console_info`.
    pub console_mfn: u64,
    /// domU: event channel of the console ring.
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
    pub cmd_line: [u8; 1024],
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

/// `struct vcpu_time_info`.
#[doc(alias = "vcpu_time_info")]
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct VcpuTimeInfo {
    /// Odd while Xen updates the record.
    pub version: u32,
    /// Padding.
    pub _pad0: u32,
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
    pub _pad1: [u8; 2],
}
const _: () = assert!(size_of::<VcpuTimeInfo>() == 32);

/// Byte offsets inside the shared-info page (`struct shared_info`, `struct vcpu_info`).
pub mod shared {
    /// Size of one `vcpu_info`.
    pub const VCPU_INFO_SIZE: usize = 64;
    /// `vcpu_info.evtchn_upcall_pending` (u8).
    pub const UPCALL_PENDING: usize = 0;
    /// `vcpu_info.evtchn_upcall_mask` (u8).
    pub const UPCALL_MASK: usize = 1;
    /// `vcpu_info.evtchn_pending_sel` (u64).
    pub const PENDING_SEL: usize = 8;
    /// `vcpu_info.arch.cr2` (u64): the faulting address of the last page fault.
    pub const ARCH_CR2: usize = 16;
    /// `vcpu_info.time` (`VcpuTimeInfo`).
    pub const TIME: usize = 32;
    /// `shared_info.evtchn_pending[64]` (u64 words).
    pub const EVTCHN_PENDING: usize = super::LEGACY_MAX_VCPUS * VCPU_INFO_SIZE;
    /// `shared_info.evtchn_mask[64]` (u64 words).
    pub const EVTCHN_MASK: usize = EVTCHN_PENDING + 64 * 8;
    /// `shared_info.wc_version` (u32).
    pub const WC_VERSION: usize = EVTCHN_MASK + 64 * 8;
}
const _: () = assert!(shared::EVTCHN_PENDING == 2048);
const _: () = assert!(shared::WC_VERSION == 3072);

/// `struct trap_info`: one virtual IDT entry for `set_trap_table`.
#[doc(alias = "trap_info")]
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct TrapInfo {
    /// Exception vector.
    pub vector: u8,
    /// Bits 0-1: lowest privilege that may raise it with `int`; bit 2: mask events on entry.
    pub flags: u8,
    /// Code selector.
    pub cs: u16,
    /// Padding.
    pub _pad: u32,
    /// Handler address (0 ends the table).
    pub address: u64,
}
const _: () = assert!(size_of::<TrapInfo>() == 16);

/// [`TrapInfo::flags`] bit: mask event upcalls while the handler runs (an "interrupt gate").
pub const TI_MASK_EVENTS: u8 = 1 << 2;

/// `struct mmu_update`: one page-table write for `mmu_update`.
#[doc(alias = "mmu_update")]
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct MmuUpdate {
    /// Machine address of the entry, low 2 bits = request type.
    pub ptr: u64,
    /// New entry value.
    pub val: u64,
}
const _: () = assert!(size_of::<MmuUpdate>() == 16);

/// `struct mmuext_op`.
#[doc(alias = "mmuext_op")]
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct MmuextOp {
    /// `MMUEXT_*`.
    pub cmd: u32,
    /// Padding.
    pub _pad: u32,
    /// First argument (an mfn or linear address).
    pub arg1: u64,
    /// Second argument (count, vcpu mask pointer or source mfn).
    pub arg2: u64,
}
const _: () = assert!(size_of::<MmuextOp>() == 24);

/// `struct sched_shutdown`.
#[doc(alias = "sched_shutdown")]
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct SchedShutdown {
    /// `SHUTDOWN_*`.
    pub reason: u32,
}
