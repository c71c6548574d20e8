//! The platform layer: every trait a kernel implements to run these drivers, in one place.
//!
//! | trait | what it is | implemented by the guest kernel with | host fake (`test-utils`) | safety |
//! |---|---|---|---|---|
//! | [`DmaAllocator`] | zeroed, contiguous pages a device or peer can reach, and their bus addresses | the heap (identity-mapped) | `dma::fake::FakeDma` | `unsafe`: drivers build slices over the memory and hand it to devices |
//! | [`ShareMemory`] | share a page with a peer domain and end the sharing (grant tables) | [`GrantTable`] over the frames `GNTTABOP_setup_table` gave | `ring_protocol::platform::fake::FakeGrantTable` | `unsafe`: a page is freed once `revoke` says the peer let go |
//! | [`EventChannels`] | allocate, notify, bind and close a device's event channel | `EVTCHNOP_*` and the upcall's per-port dispatch | `xen::evtchn::fake::FakeEventChannels` | safe: events carry no data |
//! | [`Notify`] | wake a ring's peer (one event channel, a virtio kick) | [`PortNotify`] on its event channels | `ring_protocol::platform::fake::CountingNotifier` | safe |
//! | [`Waiter`] | clock and idle (poll or sleep until an interrupt) | TSC or Xen system time; `sti; hlt` or `SCHEDOP_block` | `wait::fake::StepClock` | safe: every wait is bounded |
//! | [`VirtioPlatform`] | the type-level platform `virtio-drivers`' `Hal` needs: DMA and device-register mapping | `KernelVirtio` | `virtio::fake::FakePlatform` | `unsafe`: the crate maps registers and queues where it says |
//!
//! Drivers implement [`IrqAck`] (what the platform's interrupt handler calls for a device).
//!
//! Which driver takes what:
//! - Xen frontends ([`BlkFront`], [`NetFront`], [`SecondaryConsole`]): a
//!   [`XenStore`] (over any `Notify`), a `Waiter` and a [`XenPlatform`] (a `ShareMemory` with grant
//!   references as handles, the `EventChannels`, the `DmaAllocator`); the primary
//!   [`XenConsole`](crate::xen::console::XenConsole) only its ring page and a `Notify`;
//! - virtio drivers: a `VirtioPlatform` type parameter;
//! - emulated drivers: their register access (`emulated::io`) and a `DmaAllocator`.
//!
//! No driver names a global: everything comes in through these parameters, so another kernel can
//! run them, and host tests can put a real frontend against a real backend over the fakes.
//! `examples/blkfront_on_fakes.rs` shows the whole plumbing for blkfront.
//!
//! [`GrantTable`]: crate::xen::grant::GrantTable
//! [`BlkFront`]: crate::xen::blkfront::BlkFront
//! [`NetFront`]: crate::xen::netfront::NetFront
//! [`SecondaryConsole`]: crate::xen::console::SecondaryConsole
//! [`XenStore`]: crate::xen::xenstore::XenStore

pub use ring_protocol::platform::{Access, Notify, ShareMemory};

pub use crate::dma::{DmaAllocator, DmaBuf, DmaRegion};
pub use crate::virtio::VirtioPlatform;
pub use crate::wait::{IrqAck, SharedIrqAck, WaitMode, Waiter};
pub use crate::xen::evtchn::{EventChannels, PortNotify};
pub use crate::xen::{GrantMemory, XenPlatform};
