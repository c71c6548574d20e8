//! Core types and numbers shared by every protocol (`xen/include/public/xen.h`, `io/ring.h`,
//! `io/protocols.h`): domain ids, page size, the hypercall numbers a guest driver needs, and the
//! virtual IRQs it may bind.

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

/// Hypercall `console_io`.
#[doc(alias = "__HYPERVISOR_console_io")]
pub const HYPERVISOR_CONSOLE_IO: u32 = 18;
/// Hypercall `grant_table_op`; its sub-commands are `GNTTABOP_*` in
/// [`grant_table`](super::grant_table).
#[doc(alias = "__HYPERVISOR_grant_table_op")]
pub const HYPERVISOR_GRANT_TABLE_OP: u32 = 20;
/// Hypercall `sched_op`.
#[doc(alias = "__HYPERVISOR_sched_op")]
pub const HYPERVISOR_SCHED_OP: u32 = 29;
/// Hypercall `event_channel_op`; its sub-commands are `EVTCHNOP_*` in
/// [`event_channel`](super::event_channel).
#[doc(alias = "__HYPERVISOR_event_channel_op")]
pub const HYPERVISOR_EVENT_CHANNEL_OP: u32 = 32;
/// Hypercall `hvm_op`.
#[doc(alias = "__HYPERVISOR_hvm_op")]
pub const HYPERVISOR_HVM_OP: u32 = 34;

/// Per-vCPU timer virtual IRQ.
pub const VIRQ_TIMER: u32 = 0;
/// Request to dump debug information.
pub const VIRQ_DEBUG: u32 = 1;
/// Bytes received on the emergency console (dom0 only).
pub const VIRQ_CONSOLE: u32 = 2;
