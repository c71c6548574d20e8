//! The crate's one error type.

/// Everything that can go wrong in `ring-protocol`.
///
/// Errors caused by a peer (`*Overrun`) halt the ring they were found on: that ring returns the same
/// error from every later call, and the rest of the program keeps running. The other variants report a
/// mistake by the caller, or a resource limit, and leave the ring usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The memory handed to a ring constructor is not aligned enough for the shared indices.
    #[error("ring memory at address {addr:#x} is not {align}-byte aligned")]
    Misaligned {
        /// Address of the memory.
        addr: usize,
        /// Alignment required.
        align: usize,
    },
    /// The memory handed to a ring constructor cannot hold the 64-byte header and one slot.
    #[error("ring memory of {len} bytes is too small: it needs at least {needed} bytes")]
    TooSmall {
        /// Length given, in bytes.
        len: usize,
        /// Minimum length, in bytes.
        needed: usize,
    },
    /// A frontend tried to queue a request while every slot is in use.
    #[error("shared ring is full: all {size} slots are in use")]
    RingFull {
        /// Number of slots in the ring.
        size: u32,
    },
    /// A backend tried to write a response without an unanswered request it had read.
    #[error(
        "no request left to answer: response producer {rsp_prod_pvt} has caught up with request consumer {req_cons}"
    )]
    NoRequestToAnswer {
        /// The backend's private response producer index.
        rsp_prod_pvt: u32,
        /// The backend's request consumer index.
        req_cons: u32,
    },
    /// The frontend published a request producer index that claims more requests than the ring can
    /// hold (or one that went backwards). The ring is halted.
    #[error(
        "peer's request producer index {req_prod} is {ahead} entries past our consumer index {req_cons}, but only {room} can be outstanding in a ring of {size}; ring halted"
    )]
    RequestOverrun {
        /// The request producer index read from shared memory.
        req_prod: u32,
        /// Our request consumer index.
        req_cons: u32,
        /// `req_prod - req_cons`, wrapping.
        ahead: u32,
        /// How many more requests could legitimately be pending.
        room: u32,
        /// Number of slots in the ring.
        size: u32,
    },
    /// The backend published a response producer index that claims more responses than requests were
    /// sent (or one that went backwards). The ring is halted.
    #[error(
        "peer's response producer index {rsp_prod} is {ahead} entries past our consumer index {rsp_cons}, but only {outstanding} requests are outstanding; ring halted"
    )]
    ResponseOverrun {
        /// The response producer index read from shared memory.
        rsp_prod: u32,
        /// Our response consumer index.
        rsp_cons: u32,
        /// `rsp_prod - rsp_cons`, wrapping.
        ahead: u32,
        /// Requests published and not yet answered.
        outstanding: u32,
    },
    /// A byte ring's indices claim more unread bytes than the ring holds. The byte ring is halted.
    #[error(
        "byte ring indices are inconsistent: producer {prod} minus consumer {cons} is {used} bytes, more than the ring's {size}; ring halted"
    )]
    ByteRingOverrun {
        /// Producer index.
        prod: u32,
        /// Consumer index.
        cons: u32,
        /// `prod - cons`, wrapping.
        used: u32,
        /// Ring size in bytes.
        size: u32,
    },
    /// A peer returned an id that is not below the id table's capacity.
    #[error("id {id} is out of range: only ids below {capacity} are ever handed out")]
    IdOutOfRange {
        /// The id the peer returned.
        id: u64,
        /// Number of ids in the table.
        capacity: usize,
    },
    /// A peer returned an id that is in range but not currently in flight (never issued, or already
    /// completed).
    #[error("id {id} is not in flight (never issued, or already completed)")]
    IdNotInFlight {
        /// The id the peer returned.
        id: u64,
    },
    /// An id claimed for a new request is already in flight (two requests would share it).
    #[error("id {id} is already in flight")]
    IdAlreadyInFlight {
        /// The id.
        id: u64,
    },
    /// Every id is in flight.
    #[error("all {capacity} ids are in flight")]
    IdsExhausted {
        /// Number of ids in the table.
        capacity: usize,
    },
    /// A XenStore message's payload is longer than the protocol allows: claimed by a peer's header
    /// (the byte stream cannot be resynchronised; stop reading it), or asked for by the caller.
    #[error("XenStore payload of {len} bytes exceeds the protocol's 4096")]
    XsPayloadTooLong {
        /// The payload length.
        len: u64,
    },
    /// A XenStore request's string argument (path, token, permission) contains a NUL byte, which
    /// would end it early on the wire.
    #[error("XenStore argument contains a NUL byte")]
    XsNulInArgument,
    /// A XenStore peer sent a message type xs_wire.h does not define.
    #[error("XenStore message of unknown type {ty}")]
    XsUnknownType {
        /// The type number.
        ty: u32,
    },
    /// A XenStore peer sent a message whose payload does not have the form its type requires.
    #[error("malformed XenStore message: {what}")]
    XsMalformed {
        /// What was wrong.
        what: &'static str,
    },
    /// A XenStore peer answered another request than the one waiting, or with another type.
    #[error(
        "expected the XenStore reply of type {expected_type} to request {expected_id}, got type {got_type} for request {got_id}"
    )]
    XsUnexpectedReply {
        /// The request's type.
        expected_type: u32,
        /// The request's id.
        expected_id: u32,
        /// The message's type.
        got_type: u32,
        /// The message's request id.
        got_id: u32,
    },
    /// The platform could not notify the peer (for instance a closed event channel).
    #[error("notifying the peer failed with status {status}")]
    NotifyFailed {
        /// The platform's status code (a negative Xen errno for an event channel send).
        status: i32,
    },
    /// No free grant reference is left to share a page with.
    #[error("grant table is full: all {capacity} references are in use or reserved")]
    GrantTableFull {
        /// Number of references in the table.
        capacity: usize,
    },
    /// A grant reference that is not an active grant (never granted, already revoked, or beyond the
    /// table).
    #[error("grant reference {gref} is not an active grant")]
    BadGrantRef {
        /// The reference.
        gref: u32,
    },
    /// Revoking a grant the peer still has mapped or is copying: the grant stays in place and the page
    /// must not be reused yet.
    #[error("grant reference {gref} is still in use by the peer (flags {flags:#06x}); not revoked")]
    GrantInUse {
        /// The reference.
        gref: u32,
        /// The entry's `GTF_*` flags, with `GTF_reading` and/or `GTF_writing` set.
        flags: u16,
    },
    /// A domain tried to use a grant it was not given, or to write through a read-only grant.
    #[error("domain {domid} may not {} grant reference {gref}", if *write { "write" } else { "read" })]
    GrantAccessDenied {
        /// The reference.
        gref: u32,
        /// The domain that tried.
        domid: u16,
        /// Whether it asked for write access.
        write: bool,
    },
    /// A grant copy whose byte range leaves the 4 KiB page.
    #[error("grant copy of {len} bytes at offset {offset} of grant {gref} crosses the page end")]
    GrantCopyOutOfPage {
        /// The reference.
        gref: u32,
        /// Offset in the page.
        offset: usize,
        /// Bytes to copy.
        len: usize,
    },
    /// A frame number too large for a version-1 grant entry's 32-bit `frame` field.
    #[error("frame {frame:#x} does not fit a version-1 grant entry's 32-bit frame field")]
    FrameTooLarge {
        /// The frame number.
        frame: u64,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = core::result::Result<T, E>;
