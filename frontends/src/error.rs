//! The crate's one error type.

/// What went wrong in a driver, a platform service it uses, or a workload built on the traits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The named device was not found (or did not answer its identification).
    #[error("device {device} absent")]
    Absent {
        /// Device kind as named on the kernel command line (`virtio-blk`, `ide`, ...).
        device: &'static str,
    },
    /// The device was found but could not be brought up.
    #[error("device {device} initialisation failed: {reason}")]
    Init {
        /// Device kind.
        device: &'static str,
        /// What failed.
        reason: &'static str,
    },
    /// The device completed a request with an error status.
    #[error("device {device} reported error status {status:#x} for {op}")]
    DeviceStatus {
        /// Device kind.
        device: &'static str,
        /// Operation (`read`, `write`, `flush`, `transmit`, ...).
        op: &'static str,
        /// The raw status the device returned.
        status: u32,
    },
    /// The device refused a write because the medium is read-only.
    #[error("device {device} is read-only")]
    ReadOnly {
        /// Device kind.
        device: &'static str,
    },
    /// The device cannot do this operation (e.g. flush without a write cache control).
    #[error("device {device} does not support {op}")]
    Unsupported {
        /// Device kind.
        device: &'static str,
        /// Operation.
        op: &'static str,
    },
    /// A block request reaches past the end of the device.
    #[error("request for sectors {sector}..{end} is past the device's {capacity} sectors")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// One past the last sector.
        end: u64,
        /// Capacity in sectors.
        capacity: u64,
    },
    /// A buffer has a length the operation cannot use.
    #[error("buffer of {len} bytes for {op}: must be a non-zero multiple of {unit} and at most {max}")]
    BadLength {
        /// Operation.
        op: &'static str,
        /// Length given.
        len: usize,
        /// Required granularity (sector size, 1 for byte devices).
        unit: usize,
        /// Largest length accepted.
        max: usize,
    },
    /// All request slots are in use; retry after a completion.
    #[error("device {device} queue full ({in_flight} requests in flight)")]
    QueueFull {
        /// Device kind.
        device: &'static str,
        /// Requests outstanding.
        in_flight: usize,
    },
    /// The peer (device or backend) broke the protocol: an id it was never given, a length past the
    /// buffer, an index that moved too far. The driver stops using that queue.
    #[error("device {device} broke the protocol: {what} (value {value})")]
    Protocol {
        /// Device kind.
        device: &'static str,
        /// What was wrong.
        what: &'static str,
        /// The offending value.
        value: u64,
    },
    /// The DMA allocator could not supply the memory.
    #[error("DMA allocation of {pages} pages failed")]
    DmaExhausted {
        /// Pages asked for.
        pages: usize,
    },
    /// A wait ran past its deadline.
    #[error("timed out after {waited_us} us waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: &'static str,
        /// How long was waited.
        waited_us: u64,
    },
    /// The link is down.
    #[error("device {device} link is down")]
    LinkDown {
        /// Device kind.
        device: &'static str,
    },
    /// A workload's check failed: data read back or echoed differs from what was sent.
    #[error("{what} mismatch at {index}: expected {expected:#x}, found {found:#x}")]
    Mismatch {
        /// What was compared (`sector checksum`, `echo payload`, ...).
        what: &'static str,
        /// Where (sector, frame sequence number, byte offset).
        index: u64,
        /// The expected value.
        expected: u64,
        /// The value found.
        found: u64,
    },
    /// An error from the `virtio-drivers` crate.
    #[error("virtio: {0}")]
    Virtio(virtio_drivers::Error),
    /// A shared ring, grant or notification failed (`ring_protocol`'s error).
    #[error("ring protocol: {0}")]
    Ring(ring_protocol::Error),
    /// The XenStore daemon answered a request with an error (boxed to keep this enum small).
    #[error("{0}")]
    XenStore(alloc::boxed::Box<crate::xen::xenstore::XsFailure>),
    /// A Xen backend did not reach the awaited xenbus state in time (boxed, as above).
    #[error("{0}")]
    XenbusTimeout(alloc::boxed::Box<crate::xen::xenbus::XenbusTimeout>),
    /// A hypercall of the platform failed.
    #[error("hypercall {op} failed with {rc}")]
    Hypercall {
        /// Which one.
        op: &'static str,
        /// Xen's return value (`-errno`, or a `GNTST_*` status).
        rc: i64,
    },
}

/// Result with [`Error`].
pub type Result<T, E = Error> = core::result::Result<T, E>;
