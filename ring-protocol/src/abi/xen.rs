//! Core types and numbers shared by every protocol (`xen/include/public/xen.h`, `io/ring.h`,
//! `io/protocols.h`): domain ids, page size, every hypercall number with its name, and the virtual
//! IRQs a guest may bind.

/// A domain id.
#[doc(alias = "domid_t")]
pub type DomId = u16;

/// A guest frame number (`xen_pfn_t`; an `unsigned long`, 64 bits on x86_64).
#[doc(alias = "xen_pfn_t")]
pub type XenPfn = u64;

/// The first domain id reserved for special purposes; every real domain's id is below it.
pub const DOMID_FIRST_RESERVED: DomId = 0x7FF0;
/// The calling domain, in hypercalls that take a domain id.
pub const DOMID_SELF: DomId = 0x7FF0;
/// The I/O pseudo-domain.
pub const DOMID_IO: DomId = 0x7FF1;
/// The hypervisor itself, as a page owner.
pub const DOMID_XEN: DomId = 0x7FF2;
/// Copy-on-write pseudo-domain.
pub const DOMID_COW: DomId = 0x7FF3;
/// Owner of pages whose owner is unknown.
pub const DOMID_INVALID: DomId = 0x7FF4;
/// The idle domain.
pub const DOMID_IDLE: DomId = 0x7FFF;

/// log2 of the page size used by every ring protocol and hypercall interface (always 4 KiB,
/// whatever page size the guest OS uses).
pub const XEN_PAGE_SHIFT: u32 = 12;
/// The page size used by every ring protocol and hypercall interface.
pub const XEN_PAGE_SIZE: usize = 1 << XEN_PAGE_SHIFT;

/// Value of the xenbus `protocol` key for the x86_64 ring ABI, which the layouts in this module
/// describe.
pub const XEN_IO_PROTO_ABI_X86_64: &str = "x86_64-abi";

/// Defines each hypercall number once, with its `xen.h` name, and [`HYPERCALLS`] from the same list.
macro_rules! hypercalls {
    ($($(#[$doc:meta])* $name:ident = $nr:literal, $c:literal, $alias:literal;)*) => {
        $(
            $(#[$doc])*
            #[doc(alias = $alias)]
            pub const $name: u32 = $nr;
        )*
        /// Every hypercall number defined here with its `xen.h` name (without `__HYPERVISOR_`), in
        /// number order.
        pub const HYPERCALLS: &[(u32, &str)] = &[$(($nr, $c)),*];
    };
}

hypercalls! {
    /// Hypercall `set_trap_table`: install the virtual IDT ([`TrapInfo`](super::pv::TrapInfo)).
    HYPERVISOR_SET_TRAP_TABLE = 0, "set_trap_table", "__HYPERVISOR_set_trap_table";
    /// Hypercall `mmu_update`: checked page-table writes ([`MmuUpdate`](super::pv::MmuUpdate)).
    HYPERVISOR_MMU_UPDATE = 1, "mmu_update", "__HYPERVISOR_mmu_update";
    /// Hypercall `set_gdt`.
    HYPERVISOR_SET_GDT = 2, "set_gdt", "__HYPERVISOR_set_gdt";
    /// Hypercall `stack_switch`.
    HYPERVISOR_STACK_SWITCH = 3, "stack_switch", "__HYPERVISOR_stack_switch";
    /// Hypercall `set_callbacks`: the event upcall and failsafe entry points.
    HYPERVISOR_SET_CALLBACKS = 4, "set_callbacks", "__HYPERVISOR_set_callbacks";
    /// Hypercall `fpu_taskswitch`.
    HYPERVISOR_FPU_TASKSWITCH = 5, "fpu_taskswitch", "__HYPERVISOR_fpu_taskswitch";
    /// Hypercall `sched_op_compat` (superseded by [`HYPERVISOR_SCHED_OP`]).
    HYPERVISOR_SCHED_OP_COMPAT = 6, "sched_op_compat", "__HYPERVISOR_sched_op_compat";
    /// Hypercall `platform_op` (dom0).
    HYPERVISOR_PLATFORM_OP = 7, "platform_op", "__HYPERVISOR_platform_op";
    /// Hypercall `set_debugreg`.
    HYPERVISOR_SET_DEBUGREG = 8, "set_debugreg", "__HYPERVISOR_set_debugreg";
    /// Hypercall `get_debugreg`.
    HYPERVISOR_GET_DEBUGREG = 9, "get_debugreg", "__HYPERVISOR_get_debugreg";
    /// Hypercall `update_descriptor`.
    HYPERVISOR_UPDATE_DESCRIPTOR = 10, "update_descriptor", "__HYPERVISOR_update_descriptor";
    /// Hypercall `memory_op`; its sub-commands are `XENMEM_*`.
    HYPERVISOR_MEMORY_OP = 12, "memory_op", "__HYPERVISOR_memory_op";
    /// Hypercall `multicall`.
    HYPERVISOR_MULTICALL = 13, "multicall", "__HYPERVISOR_multicall";
    /// Hypercall `update_va_mapping`: set the PTE of one virtual address.
    HYPERVISOR_UPDATE_VA_MAPPING = 14, "update_va_mapping", "__HYPERVISOR_update_va_mapping";
    /// Hypercall `set_timer_op`: arm the one-shot timer ([`VIRQ_TIMER`]).
    HYPERVISOR_SET_TIMER_OP = 15, "set_timer_op", "__HYPERVISOR_set_timer_op";
    /// Hypercall `event_channel_op_compat` (superseded by [`HYPERVISOR_EVENT_CHANNEL_OP`]).
    HYPERVISOR_EVENT_CHANNEL_OP_COMPAT = 16, "event_channel_op_compat", "__HYPERVISOR_event_channel_op_compat";
    /// Hypercall `xen_version`; its sub-commands are `XENVER_*`.
    HYPERVISOR_XEN_VERSION = 17, "xen_version", "__HYPERVISOR_xen_version";
    /// Hypercall `console_io`; its sub-commands are `CONSOLEIO_*`.
    HYPERVISOR_CONSOLE_IO = 18, "console_io", "__HYPERVISOR_console_io";
    /// Hypercall `physdev_op_compat` (superseded by [`HYPERVISOR_PHYSDEV_OP`]).
    HYPERVISOR_PHYSDEV_OP_COMPAT = 19, "physdev_op_compat", "__HYPERVISOR_physdev_op_compat";
    /// Hypercall `grant_table_op`; its sub-commands are `GNTTABOP_*` in
    /// [`grant_table`](super::grant_table).
    HYPERVISOR_GRANT_TABLE_OP = 20, "grant_table_op", "__HYPERVISOR_grant_table_op";
    /// Hypercall `vm_assist`.
    HYPERVISOR_VM_ASSIST = 21, "vm_assist", "__HYPERVISOR_vm_assist";
    /// Hypercall `update_va_mapping_otherdomain`.
    HYPERVISOR_UPDATE_VA_MAPPING_OTHERDOMAIN = 22, "update_va_mapping_otherdomain",
        "__HYPERVISOR_update_va_mapping_otherdomain";
    /// Hypercall `iret` (x86 only; entered by jumping to its stub with the frame on the stack).
    HYPERVISOR_IRET = 23, "iret", "__HYPERVISOR_iret";
    /// Hypercall `vcpu_op`; its sub-commands are `VCPUOP_*`.
    HYPERVISOR_VCPU_OP = 24, "vcpu_op", "__HYPERVISOR_vcpu_op";
    /// Hypercall `set_segment_base` (x86_64 only).
    HYPERVISOR_SET_SEGMENT_BASE = 25, "set_segment_base", "__HYPERVISOR_set_segment_base";
    /// Hypercall `mmuext_op`; its commands are `MMUEXT_*` ([`MmuextOp`](super::pv::MmuextOp)).
    HYPERVISOR_MMUEXT_OP = 26, "mmuext_op", "__HYPERVISOR_mmuext_op";
    /// Hypercall `xsm_op`.
    HYPERVISOR_XSM_OP = 27, "xsm_op", "__HYPERVISOR_xsm_op";
    /// Hypercall `nmi_op`.
    HYPERVISOR_NMI_OP = 28, "nmi_op", "__HYPERVISOR_nmi_op";
    /// Hypercall `sched_op`; its sub-commands are `SCHEDOP_*`.
    HYPERVISOR_SCHED_OP = 29, "sched_op", "__HYPERVISOR_sched_op";
    /// Hypercall `callback_op`.
    HYPERVISOR_CALLBACK_OP = 30, "callback_op", "__HYPERVISOR_callback_op";
    /// Hypercall `xenoprof_op`.
    HYPERVISOR_XENOPROF_OP = 31, "xenoprof_op", "__HYPERVISOR_xenoprof_op";
    /// Hypercall `event_channel_op`; its sub-commands are `EVTCHNOP_*` in
    /// [`event_channel`](super::event_channel).
    HYPERVISOR_EVENT_CHANNEL_OP = 32, "event_channel_op", "__HYPERVISOR_event_channel_op";
    /// Hypercall `physdev_op`.
    HYPERVISOR_PHYSDEV_OP = 33, "physdev_op", "__HYPERVISOR_physdev_op";
    /// Hypercall `hvm_op`.
    HYPERVISOR_HVM_OP = 34, "hvm_op", "__HYPERVISOR_hvm_op";
    /// Hypercall `sysctl` (toolstack).
    HYPERVISOR_SYSCTL = 35, "sysctl", "__HYPERVISOR_sysctl";
    /// Hypercall `domctl` (toolstack).
    HYPERVISOR_DOMCTL = 36, "domctl", "__HYPERVISOR_domctl";
    /// Hypercall `kexec_op`.
    HYPERVISOR_KEXEC_OP = 37, "kexec_op", "__HYPERVISOR_kexec_op";
    /// Hypercall `tmem_op` (removed feature; the number stays reserved).
    HYPERVISOR_TMEM_OP = 38, "tmem_op", "__HYPERVISOR_tmem_op";
    /// Hypercall `argo_op`.
    HYPERVISOR_ARGO_OP = 39, "argo_op", "__HYPERVISOR_argo_op";
    /// Hypercall `xenpmu_op`.
    HYPERVISOR_XENPMU_OP = 40, "xenpmu_op", "__HYPERVISOR_xenpmu_op";
    /// Hypercall `dm_op` (device models).
    HYPERVISOR_DM_OP = 41, "dm_op", "__HYPERVISOR_dm_op";
    /// Hypercall `hypfs_op`.
    HYPERVISOR_HYPFS_OP = 42, "hypfs_op", "__HYPERVISOR_hypfs_op";
}

/// The `xen.h` name of hypercall `nr` (`__HYPERVISOR_<name>`), or `None` for a number not defined.
pub fn hypercall_name(nr: u32) -> Option<&'static str> {
    HYPERCALLS.iter().find(|&&(n, _)| n == nr).map(|&(_, name)| name)
}

/// Per-vCPU timer virtual IRQ.
pub const VIRQ_TIMER: u32 = 0;
/// Request to dump debug information.
pub const VIRQ_DEBUG: u32 = 1;
/// Bytes received on the emergency console (dom0 only).
pub const VIRQ_CONSOLE: u32 = 2;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypercall_table_is_ordered_unique_and_named() {
        assert!(
            HYPERCALLS.windows(2).all(|w| w[0].0 < w[1].0),
            "numbers ascend, none twice"
        );
        assert_eq!(hypercall_name(HYPERVISOR_IRET), Some("iret"));
        assert_eq!(hypercall_name(HYPERVISOR_SCHED_OP), Some("sched_op"));
        assert_eq!(hypercall_name(11), None, "11 is unused");
        assert_eq!(HYPERCALLS.len(), 42);
    }
}
