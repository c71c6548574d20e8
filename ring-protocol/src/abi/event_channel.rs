//! Event channels (`xen/include/public/event_channel.h`): the `EVTCHNOP_*` hypercall arguments a
//! guest driver or backend uses to set up and signal a channel.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::xen::DomId;

/// An event channel port number.
#[doc(alias = "evtchn_port_t")]
pub type EvtchnPort = u32;

/// Event channels of the 2-level ABI on x86_64 (a bit per channel in the shared-info page's
/// `evtchn_pending`/`evtchn_mask`: 64 words of 64 bits, one selector bit per word).
#[doc(alias = "NR_EVENT_CHANNELS")]
pub const EVTCHN_2L_NR_CHANNELS: usize = 64 * 64;

/// Connect to a port another domain allocated with `alloc_unbound`.
#[doc(alias = "EVTCHNOP_bind_interdomain")]
pub const EVTCHNOP_BIND_INTERDOMAIN: u32 = 0;
/// Bind a virtual IRQ (`VIRQ_*`) to a new port.
#[doc(alias = "EVTCHNOP_bind_virq")]
pub const EVTCHNOP_BIND_VIRQ: u32 = 1;
/// Bind a physical IRQ.
#[doc(alias = "EVTCHNOP_bind_pirq")]
pub const EVTCHNOP_BIND_PIRQ: u32 = 2;
/// Close a port.
#[doc(alias = "EVTCHNOP_close")]
pub const EVTCHNOP_CLOSE: u32 = 3;
/// Signal the remote end of a port.
#[doc(alias = "EVTCHNOP_send")]
pub const EVTCHNOP_SEND: u32 = 4;
/// Query a port's status.
#[doc(alias = "EVTCHNOP_status")]
pub const EVTCHNOP_STATUS: u32 = 5;
/// Allocate a port another domain can bind to.
#[doc(alias = "EVTCHNOP_alloc_unbound")]
pub const EVTCHNOP_ALLOC_UNBOUND: u32 = 6;
/// Bind an inter-vCPU IPI.
#[doc(alias = "EVTCHNOP_bind_ipi")]
pub const EVTCHNOP_BIND_IPI: u32 = 7;
/// Choose the vCPU a port notifies.
#[doc(alias = "EVTCHNOP_bind_vcpu")]
pub const EVTCHNOP_BIND_VCPU: u32 = 8;
/// Unmask a port (and deliver any event that arrived while masked).
#[doc(alias = "EVTCHNOP_unmask")]
pub const EVTCHNOP_UNMASK: u32 = 9;

/// `EVTCHNOP_alloc_unbound` argument.
#[doc(alias = "evtchn_alloc_unbound")]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct EvtchnAllocUnbound {
    /// In: the allocating domain (normally `DOMID_SELF`).
    pub dom: DomId,
    /// In: the domain allowed to bind the port.
    pub remote_dom: DomId,
    /// Out: the new port.
    pub port: EvtchnPort,
}

const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<EvtchnAllocUnbound>() == 8);
    assert!(align_of::<EvtchnAllocUnbound>() == 4);
    assert!(offset_of!(EvtchnAllocUnbound, dom) == 0);
    assert!(offset_of!(EvtchnAllocUnbound, remote_dom) == 2);
    assert!(offset_of!(EvtchnAllocUnbound, port) == 4);
};

/// `EVTCHNOP_bind_interdomain` argument.
#[doc(alias = "evtchn_bind_interdomain")]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct EvtchnBindInterdomain {
    /// In: the domain that allocated the port.
    pub remote_dom: DomId,
    /// Padding to the C alignment; always zero.
    pub _pad: [u8; 2],
    /// In: the remote port.
    pub remote_port: EvtchnPort,
    /// Out: the local end's port.
    pub local_port: EvtchnPort,
}

const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<EvtchnBindInterdomain>() == 12);
    assert!(align_of::<EvtchnBindInterdomain>() == 4);
    assert!(offset_of!(EvtchnBindInterdomain, remote_dom) == 0);
    assert!(offset_of!(EvtchnBindInterdomain, remote_port) == 4);
    assert!(offset_of!(EvtchnBindInterdomain, local_port) == 8);
};

/// `EVTCHNOP_bind_virq` argument.
#[doc(alias = "evtchn_bind_virq")]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct EvtchnBindVirq {
    /// In: `VIRQ_*`.
    pub virq: u32,
    /// In: the vCPU to notify.
    pub vcpu: u32,
    /// Out: the new port.
    pub port: EvtchnPort,
}

const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<EvtchnBindVirq>() == 12);
    assert!(align_of::<EvtchnBindVirq>() == 4);
    assert!(offset_of!(EvtchnBindVirq, virq) == 0);
    assert!(offset_of!(EvtchnBindVirq, vcpu) == 4);
    assert!(offset_of!(EvtchnBindVirq, port) == 8);
};

/// `EVTCHNOP_close` argument.
#[doc(alias = "evtchn_close")]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct EvtchnClose {
    /// In: the port to close.
    pub port: EvtchnPort,
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<EvtchnClose>() == 4);
    assert!(offset_of!(EvtchnClose, port) == 0);
};

/// `EVTCHNOP_send` argument.
#[doc(alias = "evtchn_send")]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct EvtchnSend {
    /// In: the local port whose remote end to signal.
    pub port: EvtchnPort,
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<EvtchnSend>() == 4);
    assert!(offset_of!(EvtchnSend, port) == 0);
};

/// `EVTCHNOP_unmask` argument.
#[doc(alias = "evtchn_unmask")]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct EvtchnUnmask {
    /// In: the port to unmask.
    pub port: EvtchnPort,
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<EvtchnUnmask>() == 4);
    assert!(offset_of!(EvtchnUnmask, port) == 0);
};
