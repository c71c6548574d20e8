//! Xen split-driver frontends (issue 4), on top of `ring_protocol`:
//! - [`xenstore`]: the XenStore client (read, write, directory, watches, transactions).
//! - [`evtchn`]: the 2-level event-channel pending scan (used by the kernel's upcall).
//! - [`grant`]: grant tables v1 (grant, end access with in-use detection, free list) and
//!   [`grant::Granted`], the handle that owns a shared page together with its grants.
//! - [`xenbus`]: device enumeration and the frontend state machine.
//! - [`blkfront`]: the block frontend, a [`crate::block::BlockDevice`].
//! - [`console`]: the PV console ring as a [`crate::console::ConsoleDevice`], and secondary consoles
//!   (`device/console/N`) with their xenbus handshake.
//! - [`netfront`]: the network frontend, a [`crate::net::NetDevice`].
//!
//! What they need from the platform comes in as small pieces: a [`ring_protocol::platform::Notify`]
//! (an event channel send), a [`crate::wait::Waiter`] (clock and idle), and the ring pages.

pub mod blkfront;
pub mod console;
pub mod evtchn;
pub mod grant;
pub mod netfront;
pub mod xenbus;
pub mod xenstore;
