//! Why the relay refused a frontend message, and how a relay ended.

use std::io;

use vhost::vhost_user::message::FrontendReq;

use super::{MAX_FDS, MAX_PAYLOAD};

/// Why the relay refused a frontend message.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// More descriptors than one message may carry.
    #[error("{fds} file descriptors with one message (at most {MAX_FDS})")]
    TooManyFds {
        /// Descriptors received so far (the kernel drops and closes any beyond the buffer).
        fds: usize,
    },
    /// The kernel truncated the descriptors (more than the control buffer holds).
    #[error("more file descriptors with one message than {MAX_FDS} (control data truncated)")]
    FdsTruncated,
    /// A payload larger than the protocol allows.
    #[error("message {req} claims {size} payload bytes (at most {MAX_PAYLOAD})")]
    Oversized {
        /// The request code.
        req: u32,
        /// The size claimed.
        size: usize,
    },
    /// Header flags that are not a version 1 request.
    #[error("message {req} with header flags {flags:#x}")]
    Flags {
        /// The request code.
        req: u32,
        /// The flags.
        flags: u32,
    },
    /// A request these devices do not serve.
    #[error("request {req} not served by this daemon")]
    Request {
        /// The request code.
        req: u32,
    },
    /// A payload of the wrong size.
    #[error("{req:?} with a payload of {size} bytes, {expected} expected")]
    PayloadSize {
        /// The request.
        req: FrontendReq,
        /// Its payload size.
        size: usize,
        /// What it must be.
        expected: usize,
    },
    /// The wrong number of descriptors.
    #[error("{req:?} with {fds} file descriptors, {expected} expected")]
    FdCount {
        /// The request.
        req: FrontendReq,
        /// Descriptors that came.
        fds: usize,
        /// What it takes.
        expected: usize,
    },
    /// Protocol features acked that the backend did not offer.
    #[error("protocol features {acked:#x} ack bits not offered ({offered:#x})")]
    ProtocolFeatures {
        /// The value acked.
        acked: u64,
        /// What the backend offered.
        offered: u64,
    },
    /// A ring index the device does not have.
    #[error("{req:?} for ring {index}; the device has {queues}")]
    RingIndex {
        /// The request.
        req: FrontendReq,
        /// The index.
        index: u64,
        /// The device's queues.
        queues: u32,
    },
    /// A value out of range for its request.
    #[error("{req:?} for ring {index}: {what} {value:#x}")]
    Value {
        /// The request.
        req: FrontendReq,
        /// The ring.
        index: u32,
        /// What is wrong.
        what: &'static str,
        /// The value.
        value: u64,
    },
    /// A ring outside guest memory or misaligned.
    #[error("ring {index}: {what} at {addr:#x} ({len} bytes) {why}")]
    RingAddress {
        /// The ring.
        index: u32,
        /// Descriptor table, available ring or used ring.
        what: &'static str,
        /// Its address in the VMM's address space.
        addr: u64,
        /// Its length for the ring's size.
        len: u64,
        /// What is wrong.
        why: &'static str,
    },
    /// A SET_MEM_TABLE region the daemon will not map.
    #[error("memory region {index}: {why}")]
    Region {
        /// Its index in the message.
        index: usize,
        /// What is wrong.
        why: &'static str,
    },
    /// A kick, call or error descriptor that is not an eventfd.
    #[error("{req:?}: the descriptor is not an eventfd")]
    NotEventfd {
        /// The request.
        req: FrontendReq,
    },
}

/// How a relay ended badly.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A socket failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The frontend sent a message the relay refused; the connection was closed.
    #[error("refused: {0}")]
    Refused(#[from] Refused),
}
