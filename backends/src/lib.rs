//! Host-side backends for pvkit: protocol-independent cores and thin protocol adapters.
//!
//! - [`block`]: the one block path of both block adapters. [`block::BlockCore`] (an image file;
//!   read, write, flush with `fdatasync`, discard; `O_DIRECT` and writethrough options) validates,
//!   makes durable and counts every request; its executors move the bytes in between: inline on
//!   the caller's thread, a worker pool ([`block::BlockQueue`]), or Linux AIO
//!   ([`block::AioQueue`]). vhost-user-blk and blkback only translate their protocols into core
//!   requests and core results into responses;
//! - [`net`]: the net core, a small L2 switch with MAC learning and flooding, guest ports and a host test
//!   port ([`net::EchoPeer`]) that answers the guest's echo frames, ARP, ping and UDP echo;
//! - [`console`]: a byte stream to a log file or a Unix socket;
//! - [`crash`]: the daemons' report of a fatal signal (which thread, where), for the log;
//! - [`ratelimit`]: the rate limiter for peer-triggered events (log lines), used by the vhost-user
//!   daemons and the Xen backends;
//! - [`tap`]: a Linux tap interface as a switch port (guests reach the host's network stack);
//! - [`vhost`]: vhost-user adapters (`vhost-user-blk`, `vhost-user-net`) over rust-vmm, and the
//!   accept/reconnect loop the daemons in `src/bin/` run.
//!
//! - [`xen`]: the Xen userspace backends: XenStore client, grant and event channel devices, the
//!   xenbus state machine, and the blkback, netback and console adapters.

pub mod block;
pub mod console;
pub mod crash;
pub mod net;
pub mod ratelimit;
pub mod tap;
pub mod vhost;
pub mod xen;

use std::io;
use std::path::PathBuf;

/// Everything the cores can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image file could not be opened (missing, no permission, `O_DIRECT` unsupported...).
    #[error("cannot open image {}: {error}", path.display())]
    OpenImage {
        /// The path given.
        path: PathBuf,
        /// What the OS said.
        error: io::Error,
    },
    /// The image's size is not a whole number of sectors.
    #[error("image {} is {len} bytes, not a multiple of {} bytes", path.display(), block::SECTOR_SIZE)]
    ImageSize {
        /// The path given.
        path: PathBuf,
        /// Its length in bytes.
        len: u64,
    },
    /// A request reaches past the end of the image.
    #[error("{op} of {sectors} sectors at sector {sector} is beyond the image's {capacity} sectors")]
    OutOfRange {
        /// The operation.
        op: block::OpKind,
        /// First sector.
        sector: u64,
        /// Length in sectors.
        sectors: u64,
        /// Image capacity in sectors.
        capacity: u64,
    },
    /// A request's data length is not a whole number of sectors.
    #[error("{op} of {len} bytes is not a multiple of {} bytes", block::SECTOR_SIZE)]
    Unaligned {
        /// The operation.
        op: block::OpKind,
        /// Its data length in bytes.
        len: u64,
    },
    /// A write-type request to a read-only device.
    #[error("{op} refused: the device is read-only")]
    ReadOnly {
        /// The operation.
        op: block::OpKind,
    },
    /// The image file's I/O failed.
    #[error("{op} at sector {sector} failed: {error}")]
    Io {
        /// The operation.
        op: block::OpKind,
        /// First sector.
        sector: u64,
        /// What the OS said.
        error: io::Error,
    },
    /// The asynchronous executor moves only memory the request owns ([`block::Data::Buf`]): it
    /// keeps the buffer until the kernel is done with it.
    #[error("{op} refused: the asynchronous executor takes only requests that own their buffer")]
    NotOwned {
        /// The operation.
        op: block::OpKind,
    },
    /// The request queue is full; the caller retries after a completion.
    #[error("request queue full ({capacity} requests queued)")]
    Busy {
        /// The queue's capacity.
        capacity: usize,
    },
    /// A frame too short to carry an Ethernet header.
    #[error("frame of {len} bytes is shorter than an Ethernet header (14 bytes)")]
    ShortFrame {
        /// Its length.
        len: usize,
    },
    /// A frame longer than the switch carries.
    #[error("frame of {len} bytes is longer than {max} bytes")]
    FrameTooLong {
        /// Its length.
        len: usize,
        /// The longest allowed.
        max: usize,
    },
    /// A frame whose source address its port may not use (another port's, a group address, or
    /// not the address the port is bound to).
    #[error("port {port} may not send from {mac}")]
    SourceNotAllowed {
        /// The sending port.
        port: usize,
        /// The source address.
        mac: String,
    },
    /// A port id the switch does not know.
    #[error("no port {port} on the switch")]
    NoSuchPort {
        /// The id given.
        port: usize,
    },
    /// The vhost-user machinery failed (listening, accepting, setting up a connection).
    #[error("vhost-user daemon: {what}: {detail}")]
    Daemon {
        /// What was being done.
        what: String,
        /// The library's error.
        detail: String,
    },
    /// The console sink could not be opened or written.
    #[error("console sink {what}: {error}")]
    Console {
        /// The file or socket.
        what: String,
        /// What the OS said.
        error: io::Error,
    },
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
