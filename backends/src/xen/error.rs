//! What the Xen backend layer refuses or fails at, as one error type.
//!
//! Three groups, in the order a device meets them:
//! - refusals of what a frontend published in XenStore, at connect time (a key missing or
//!   malformed, a value out of range, a feature that is not offered): the device is refused with
//!   the message as the reason, in the daemon's log and in the backend's `error` node;
//! - failures to connect (a grant that cannot be mapped, a ring that is unusable, an event channel
//!   that cannot be bound) and to serve (a ring the frontend broke, a notification that cannot be
//!   sent): the device is closed;
//! - the XenStore client's own errors.
//!
//! The messages name the key, value, grant or port involved; the logs of the Xen scenarios are
//! read by people (and a few phrases by `cargo xtask test`: `refused:`, `ring halted`, the ring
//! reference of a refused mapping).

use std::io;

use ring_protocol::abi::grant_table::GrantRef;
use ring_protocol::abi::xen::{DomId, XEN_IO_PROTO_ABI_X86_64};
use ring_protocol::abi::xenstore::XsdSockmsgType;

use super::gntdev::GrantError;
use crate::aio::AioError;

/// Everything the Xen backends, their state machine and the XenStore client can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A key the protocol needs is absent from the frontend's directory.
    #[error("frontend key {key} is missing")]
    MissingKey {
        /// The key.
        key: String,
    },
    /// A frontend key that must hold a number holds something else.
    #[error("frontend key {key} = {value:?} is not a number")]
    NotANumber {
        /// The key.
        key: String,
        /// Its value, as read.
        value: String,
    },
    /// A frontend key names a grant reference that does not fit 32 bits.
    #[error("{key} {value} is not a grant reference")]
    NotAGrantRef {
        /// The key.
        key: String,
        /// Its value.
        value: u64,
    },
    /// A frontend key names an event channel port that does not fit 32 bits.
    #[error("{key} {value} is out of range")]
    PortOutOfRange {
        /// The key.
        key: String,
        /// Its value.
        value: u64,
    },
    /// The frontend's ring ABI (its `protocol` key) is not the one served.
    #[error("protocol {protocol:?} is not supported (only {XEN_IO_PROTO_ABI_X86_64})")]
    UnsupportedProtocol {
        /// The value of `protocol`.
        protocol: String,
    },
    /// The frontend asks for a bigger ring than offered.
    #[error("ring-page-order {order} exceeds the offered {max}")]
    RingOrder {
        /// The order asked for.
        order: u64,
        /// The largest order offered.
        max: u32,
    },
    /// A netif frontend that does not ask for receive by copy, the only receive mode offered.
    #[error("the frontend does not request rx-copy (the only receive mode offered)")]
    NoRxCopy,
    /// A netif frontend that asks for more queues than the one offered.
    #[error("{queues} queues requested, one is offered")]
    MultiQueue {
        /// The number asked for.
        queues: u64,
    },
    /// Console 0 is the domain's `start_info` console, served by xenconsoled, not a xenbus device.
    #[error("console 0 is the domain's start_info console (xenconsoled's)")]
    StartInfoConsole,
    /// The frontend's ring pages could not be mapped (Xen refused a grant, or the device failed).
    #[error("cannot map the {what} ({key} {refs:?}): {error}")]
    GrantMap {
        /// Which ring or page.
        what: &'static str,
        /// The frontend key that named the grants.
        key: &'static str,
        /// The grant references.
        refs: Vec<GrantRef>,
        /// What the grant device said.
        error: GrantError,
    },
    /// The mapped memory cannot hold a ring (wrong size for the ring's layout).
    #[error("{what} of {bytes} bytes unusable: {error}")]
    RingUnusable {
        /// Which ring.
        what: &'static str,
        /// The mapping's size.
        bytes: usize,
        /// Why the ring refused it.
        error: ring_protocol::Error,
    },
    /// The mapping is smaller than the shared structure it must hold.
    #[error("mapping of {bytes} bytes is smaller than the {what} ({need} bytes)")]
    MappingTooSmall {
        /// The shared structure.
        what: &'static str,
        /// The mapping's size.
        bytes: usize,
        /// The structure's size.
        need: usize,
    },
    /// The frontend's event channel could not be bound.
    #[error("cannot bind {key} {port} of domain {domid}: {error}")]
    BindEventChannel {
        /// The frontend key that named the port.
        key: &'static str,
        /// The frontend's port.
        port: u32,
        /// The frontend's domain.
        domid: DomId,
        /// What the event channel device said.
        error: io::Error,
    },
    /// Waiting on or acknowledging the event channel failed.
    #[error("{what}: {error}")]
    EventChannel {
        /// What was being done (`poll`, `reading the event channel`).
        what: &'static str,
        /// What the OS said.
        error: io::Error,
    },
    /// Sending the frontend an event failed.
    #[error("notify: {0}")]
    Notify(ring_protocol::Error),
    /// The frontend broke a ring's protocol (an index that moved impossibly): the ring is halted
    /// for good and the device closed.
    #[error("{ring} halted: {error}")]
    RingHalted {
        /// Which ring (`ring`, `tx ring`, `rx ring`, `console ring`).
        ring: &'static str,
        /// The ring's own check that failed.
        error: ring_protocol::Error,
    },
    /// blkback's AIO queue failed or its bookkeeping broke: the ring cannot go on.
    #[error("AIO {what}: {error}")]
    Aio {
        /// `context` (creating it) or `queue` (using it).
        what: &'static str,
        /// The queue's error.
        error: AioError,
    },
    /// blkback's AIO queue completed a token that has no request under it.
    #[error("AIO completed token {token} with no request under it")]
    UnknownAioToken {
        /// The token.
        token: usize,
    },
    /// An eventfd could not be made.
    #[error("eventfd: {0}")]
    EventFd(io::Error),
    /// A vif's port could not be bound to its MAC on the switch.
    #[error("switch port: {0}")]
    SwitchPort(crate::net::BindError),
    /// A lock was poisoned by a thread that panicked holding it.
    #[error("{0} lock poisoned")]
    Poisoned(&'static str),
    /// The thread serving a connected device's rings could not be started.
    #[error("thread: {0}")]
    Thread(io::Error),
    /// XenStore answered a request with an error.
    #[error("XenStore {op:?} of {path:?} failed: {error}")]
    XenStore {
        /// The request.
        op: XsdSockmsgType,
        /// The path it was about.
        path: String,
        /// The error name XenStore sent (`ENOENT`, `EACCES`, `EAGAIN`...).
        error: String,
    },
    /// The XenStore connection broke.
    #[error("XenStore: {what}: {error}")]
    XenStoreIo {
        /// What was being done.
        what: String,
        /// What the OS said.
        error: io::Error,
    },
    /// A XenStore message broke the protocol (bad length, unexpected reply, malformed payload).
    #[error("XenStore protocol: {0}")]
    XenStoreProtocol(String),
}

/// The Xen layer's result type.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    /// The phrases the Xen scenarios look for in the daemon's log stay in the messages.
    #[test]
    fn messages_keep_what_the_scenario_checks_look_for() {
        let e = Error::GrantMap {
            what: "ring",
            key: "ring-ref",
            refs: vec![1_234_567],
            error: GrantError::Invalid("x".into()),
        };
        assert!(
            e.to_string()
                .starts_with("cannot map the ring (ring-ref [1234567]): "),
            "{e}"
        );
        let e = Error::RingHalted {
            ring: "ring",
            error: ring_protocol::Error::RingFull { size: 32 },
        };
        assert!(e.to_string().starts_with("ring halted: "), "{e}");
        let e = Error::NotANumber {
            key: "ring-ref".into(),
            value: "junk".into(),
        };
        assert_eq!(e.to_string(), "frontend key ring-ref = \"junk\" is not a number");
    }
}
