//! Xen split-driver frontends, on top of `ring_protocol`:
//! - [`xenstore`]: the XenStore client (read, write, directory, watches, transactions).
//! - [`evtchn`]: the [`EventChannels`](evtchn::EventChannels) trait and the 2-level pending scan
//!   (used by the kernel's upcall).
//! - [`grant`]: grant tables v1 (grant, end access with in-use detection, free list) and
//!   [`grant::Granted`], the handle that owns a shared page together with its grants.
//! - [`xenbus`]: device enumeration and the frontend state machine.
//! - [`blkfront`]: the block frontend, a [`crate::block::BlockDevice`].
//! - [`console`]: the PV console ring as a [`crate::console::ConsoleDevice`], and secondary consoles
//!   (`device/console/N`) with their xenbus handshake.
//! - [`netfront`]: the network frontend, a [`crate::net::NetDevice`].
//!
//! # What a kernel provides
//!
//! The drivers name no global and no concrete platform type. Each takes:
//! - a [`XenStore`](xenstore::XenStore) client over the XenStore ring page, notifying through any
//!   [`Notify`](ring_protocol::platform::Notify) (an event channel send);
//! - a [`Waiter`](crate::wait::Waiter) (clock and idle);
//! - a [`XenPlatform`]: the [`ShareMemory`] that grants pages (this crate's
//!   [`GrantTable`](grant::GrantTable) over the frames Xen set up, or `ring_protocol`'s fake one in
//!   tests), the [`EventChannels`](evtchn::EventChannels), and the
//!   [`DmaAllocator`] the rings and buffers come from.
//!
//! The primary console ([`console::XenConsole`]) needs only its ring page and a `Notify`.
//! `examples/blkfront_on_fakes.rs` plugs blkfront into a host program this way.

use ring_protocol::abi::grant_table::GrantRef;
use ring_protocol::platform::ShareMemory;

use crate::dma::DmaAllocator;

pub mod blkfront;
pub mod console;
pub mod evtchn;
pub mod grant;
pub mod netfront;
pub mod xenbus;
pub mod xenstore;

/// What a Xen frontend takes from the platform besides XenStore and a waiter: the grant mechanism,
/// the event channels and the DMA memory its rings and buffers come from.
///
/// `G` is usually `&'static GrantTable` (or `&FakeGrantTable` in tests) and `E` a reference to the
/// platform's [`EventChannels`](evtchn::EventChannels): both are cloned into every shared buffer and
/// notifier a driver makes, so they should be cheap to clone.
#[derive(Clone, Copy)]
pub struct XenPlatform<G, E> {
    /// Grants pages to the backend's domain.
    pub grants: G,
    /// Allocates, notifies, binds and closes the device's event channel.
    pub events: E,
    /// Where ring pages, indirect pages and buffers come from.
    pub dma: &'static dyn DmaAllocator,
}

impl<G, E> core::fmt::Debug for XenPlatform<G, E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("XenPlatform").finish_non_exhaustive()
    }
}

/// The sharing mechanisms a Xen frontend can grant through: any [`ShareMemory`] whose handles are
/// grant references, cheap to clone (a reference to the table). Implemented for every such type.
///
/// # Safety
///
/// Nothing beyond [`ShareMemory`]'s contract, which its implementations already uphold (it is an
/// `unsafe` trait); this one only names the bound.
pub trait GrantMemory: ShareMemory<Handle = GrantRef> + Clone {}

impl<G: ShareMemory<Handle = GrantRef> + Clone> GrantMemory for G {}
