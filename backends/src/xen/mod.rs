//! The Xen userspace backends (dom0) and the layer they stand on.
//!
//! - [`xenstore`]: a XenStore client over `/dev/xen/xenbus` or xenstored's socket (read, write,
//!   directories, permissions, watches, transactions);
//! - [`gntdev`]: the frontend's granted pages through `/dev/xen/gntdev`, mapped (rings) or copied
//!   (I/O data);
//! - [`evtchn`]: interdomain event channels through `/dev/xen/evtchn`;
//! - [`xenbus`]: a device's XenStore directories and the backend state machine, generic over a
//!   [`xenbus::Backend`];
//! - [`blkback`] and [`netback`]: the blkif and netif adapters over the block core and the net core's
//!   switch;
//! - [`console`]: a secondary PV console (xenbus kind `console`, id 1 and up) into a console sink,
//!   with an input text for the guest;
//! - [`sys`]: the ioctl layouts of the two device nodes;
//! - [`Error`]: what all of these refuse or fail at.
//!
//! The `pvkit-xen-backend` binary puts these together for one domain.
//!
//! ## Engines apart from Xen
//!
//! Each device kind splits into a [`xenbus::Backend`] (its XenStore keys and how it maps its
//! rings) and an [`Engine`] (the ring protocol alone), which is signalled through a [`Notify`] and
//! reaches the frontend's pages through a [`gntdev::GrantCopy`]. The engines
//! [`netback::NetEngine`] and [`blkback::BlkEngine`] are constructible over any ring memory, so
//! host tests run real frontends against them with no hypervisor. With the `test-utils` feature,
//! ring-protocol's `FakeGrantTable` (over the frontend's real pages, as it grants them) implements
//! [`gntdev::GrantCopy`] as dom0 would see it, `gntdev::FakeGrants` is a simpler table of local
//! pages, and ring-protocol's `CountingNotifier` counts notifications.

pub mod blkback;
pub mod console;
mod error;
pub mod evtchn;
pub mod gntdev;
pub mod netback;
pub mod sys;
pub mod xenbus;
pub mod xenstore;

pub use error::{Error, Result};
pub use xenbus::{Engine, Notify};
