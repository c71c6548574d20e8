//! Xen split-driver frontends (issue 4), on top of `ring_protocol`:
//! - [`xenstore`]: the XenStore client (read, write, directory, watches, transactions).
//!
//! What they need from the platform comes in as small pieces: a [`ring_protocol::platform::Notify`]
//! (an event channel send), a [`crate::wait::Waiter`] (clock and idle), and the ring pages.

pub mod xenstore;
