//! XenStore wire protocol (`xen/include/public/io/xs_wire.h`): the shared ring page, the message
//! header, message types, error names and size limits.
//!
//! A message is an [`XsdSockmsg`] header followed by `len` payload bytes (usually NUL-terminated
//! strings). Errors come back as an [`XsdSockmsgType::Error`] message whose payload is one of the
//! names in [`XSD_ERRORS`].

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, TryFromBytes};

use super::errno;

/// A XenStore ring index: free-running, a byte's slot is `index & (XENSTORE_RING_SIZE - 1)`.
#[doc(alias = "XENSTORE_RING_IDX")]
pub type XenstoreRingIdx = u32;

/// Size of each of the two XenStore byte rings.
pub const XENSTORE_RING_SIZE: usize = 1024;

/// Largest message payload (the bytes after the header). Exceeding it is a protocol violation.
pub const XENSTORE_PAYLOAD_MAX: usize = 4096;
/// Longest absolute path the daemon accepts, in bytes.
pub const XENSTORE_ABS_PATH_MAX: usize = 3072;
/// Longest relative path the daemon accepts, in bytes.
pub const XENSTORE_REL_PATH_MAX: usize = 2048;

/// `server_features` bit: the ring can be reconnected.
pub const XENSTORE_SERVER_FEATURE_RECONNECTION: u32 = 1;
/// `server_features` bit: the ring page's `error` field is valid.
pub const XENSTORE_SERVER_FEATURE_ERROR: u32 = 2;

/// `connection` value: steady state.
pub const XENSTORE_CONNECTED: u32 = 0;
/// `connection` value: a reconnection is in progress.
pub const XENSTORE_RECONNECT: u32 = 1;

/// `error` value: no error.
pub const XENSTORE_ERROR_NONE: u32 = 0;
/// `error` value: communication problem.
pub const XENSTORE_ERROR_COMM: u32 = 1;
/// `error` value: invalid ring index.
pub const XENSTORE_ERROR_RINGIDX: u32 = 2;
/// `error` value: protocol violation (payload too long).
pub const XENSTORE_ERROR_PROTO: u32 = 3;

/// Header of every XenStore message, request or reply.
#[doc(alias = "xsd_sockmsg")]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct XsdSockmsg {
    /// The message type, an [`XsdSockmsgType`] (kept as the raw number: the peer may send any
    /// value). Named `type` in C.
    pub type_: u32,
    /// Request identifier, echoed in the reply.
    pub req_id: u32,
    /// Transaction id, 0 outside a transaction.
    pub tx_id: u32,
    /// Payload bytes following the header.
    pub len: u32,
}

const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<XsdSockmsg>() == 16);
    assert!(align_of::<XsdSockmsg>() == 4);
    assert!(offset_of!(XsdSockmsg, type_) == 0);
    assert!(offset_of!(XsdSockmsg, req_id) == 4);
    assert!(offset_of!(XsdSockmsg, tx_id) == 8);
    assert!(offset_of!(XsdSockmsg, len) == 12);
};

/// XenStore message types with their wire numbers (`enum xsd_sockmsg_type`). Number 20 (the removed
/// `XS_RESTRICT`) is unused.
#[doc(alias = "xsd_sockmsg_type")]
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, TryFromBytes, IntoBytes, KnownLayout, Immutable)]
pub enum XsdSockmsgType {
    /// `XS_CONTROL` (alias `XS_DEBUG`): daemon control commands.
    #[doc(alias = "XS_CONTROL")]
    #[doc(alias = "XS_DEBUG")]
    Control = 0,
    /// `XS_DIRECTORY`: list a node's children.
    #[doc(alias = "XS_DIRECTORY")]
    Directory = 1,
    /// `XS_READ`: read a node's value.
    #[doc(alias = "XS_READ")]
    Read = 2,
    /// `XS_GET_PERMS`: read a node's permissions.
    #[doc(alias = "XS_GET_PERMS")]
    GetPerms = 3,
    /// `XS_WATCH`: watch a path (payload: path, token).
    #[doc(alias = "XS_WATCH")]
    Watch = 4,
    /// `XS_UNWATCH`: remove a watch.
    #[doc(alias = "XS_UNWATCH")]
    Unwatch = 5,
    /// `XS_TRANSACTION_START`: begin a transaction; the reply carries its id.
    #[doc(alias = "XS_TRANSACTION_START")]
    TransactionStart = 6,
    /// `XS_TRANSACTION_END`: commit (`"T"`) or abort (`"F"`) a transaction.
    #[doc(alias = "XS_TRANSACTION_END")]
    TransactionEnd = 7,
    /// `XS_INTRODUCE`: introduce a domain to the daemon (dom0).
    #[doc(alias = "XS_INTRODUCE")]
    Introduce = 8,
    /// `XS_RELEASE`: release a domain (dom0).
    #[doc(alias = "XS_RELEASE")]
    Release = 9,
    /// `XS_GET_DOMAIN_PATH`: a domain's home path.
    #[doc(alias = "XS_GET_DOMAIN_PATH")]
    GetDomainPath = 10,
    /// `XS_WRITE`: write a node's value.
    #[doc(alias = "XS_WRITE")]
    Write = 11,
    /// `XS_MKDIR`: create a node.
    #[doc(alias = "XS_MKDIR")]
    Mkdir = 12,
    /// `XS_RM`: remove a node and its children.
    #[doc(alias = "XS_RM")]
    Rm = 13,
    /// `XS_SET_PERMS`: set a node's permissions.
    #[doc(alias = "XS_SET_PERMS")]
    SetPerms = 14,
    /// `XS_WATCH_EVENT`: asynchronous watch firing (payload: path, token).
    #[doc(alias = "XS_WATCH_EVENT")]
    WatchEvent = 15,
    /// `XS_ERROR`: error reply; the payload is an error name from [`XSD_ERRORS`].
    #[doc(alias = "XS_ERROR")]
    Error = 16,
    /// `XS_IS_DOMAIN_INTRODUCED`.
    #[doc(alias = "XS_IS_DOMAIN_INTRODUCED")]
    IsDomainIntroduced = 17,
    /// `XS_RESUME`.
    #[doc(alias = "XS_RESUME")]
    Resume = 18,
    /// `XS_SET_TARGET`.
    #[doc(alias = "XS_SET_TARGET")]
    SetTarget = 19,
    /// `XS_RESET_WATCHES`: drop all of the connection's watches.
    #[doc(alias = "XS_RESET_WATCHES")]
    ResetWatches = 21,
    /// `XS_DIRECTORY_PART`: list children in parts, for long directories.
    #[doc(alias = "XS_DIRECTORY_PART")]
    DirectoryPart = 22,
}

/// Number of message type numbers defined (one past the largest).
pub const XS_TYPE_COUNT: u32 = 23;
/// A message type number guaranteed never to be valid.
pub const XS_INVALID: u32 = 0xffff;

impl XsdSockmsgType {
    /// The type with wire number `raw`, or `None` for an unknown number.
    pub fn from_wire(raw: u32) -> Option<Self> {
        Self::try_read_from_bytes(&raw.to_ne_bytes()).ok()
    }
}

/// In a watch event's payload, the index of the string holding the path that changed.
pub const XS_WATCH_PATH: usize = 0;
/// In a watch event's payload, the index of the string holding the watch's token.
pub const XS_WATCH_TOKEN: usize = 1;

/// `XS_WRITE` mode string: plain write.
pub const XS_WRITE_NONE: &str = "NONE";
/// `XS_WRITE` mode string: create the node if needed.
pub const XS_WRITE_CREATE: &str = "CREATE";
/// `XS_WRITE` mode string: create the node, failing if it exists.
pub const XS_WRITE_CREATE_EXCL: &str = "CREATE|EXCL";

/// An error as the XenStore wire names it: `XS_ERROR` replies carry `name`.
#[doc(alias = "xsd_errors")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XsdError {
    /// The Xen errno value (see [`abi::errno`](crate::abi::errno)).
    pub errnum: i32,
    /// The name sent on the wire, without its NUL.
    pub name: &'static str,
}

/// The XenStore error table, in the order of xs_wire.h's `xsd_errors[]` (new errors are appended).
pub const XSD_ERRORS: [XsdError; 16] = [
    XsdError {
        errnum: errno::EINVAL,
        name: "EINVAL",
    },
    XsdError {
        errnum: errno::EACCES,
        name: "EACCES",
    },
    XsdError {
        errnum: errno::EEXIST,
        name: "EEXIST",
    },
    XsdError {
        errnum: errno::EISDIR,
        name: "EISDIR",
    },
    XsdError {
        errnum: errno::ENOENT,
        name: "ENOENT",
    },
    XsdError {
        errnum: errno::ENOMEM,
        name: "ENOMEM",
    },
    XsdError {
        errnum: errno::ENOSPC,
        name: "ENOSPC",
    },
    XsdError {
        errnum: errno::EIO,
        name: "EIO",
    },
    XsdError {
        errnum: errno::ENOTEMPTY,
        name: "ENOTEMPTY",
    },
    XsdError {
        errnum: errno::ENOSYS,
        name: "ENOSYS",
    },
    XsdError {
        errnum: errno::EROFS,
        name: "EROFS",
    },
    XsdError {
        errnum: errno::EBUSY,
        name: "EBUSY",
    },
    XsdError {
        errnum: errno::EAGAIN,
        name: "EAGAIN",
    },
    XsdError {
        errnum: errno::EISCONN,
        name: "EISCONN",
    },
    XsdError {
        errnum: errno::E2BIG,
        name: "E2BIG",
    },
    XsdError {
        errnum: errno::EPERM,
        name: "EPERM",
    },
];

/// The XenStore ring page shared between a domain and xenstored.
#[doc(alias = "xenstore_domain_interface")]
#[repr(C)]
#[derive(Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct XenstoreDomainInterface {
    /// Requests to the XenStore daemon (guest produces).
    pub req: [u8; XENSTORE_RING_SIZE],
    /// Replies and asynchronous watch events (daemon produces).
    pub rsp: [u8; XENSTORE_RING_SIZE],
    /// Bytes of `req` the daemon has consumed.
    pub req_cons: XenstoreRingIdx,
    /// Bytes of `req` the guest has produced.
    pub req_prod: XenstoreRingIdx,
    /// Bytes of `rsp` the guest has consumed.
    pub rsp_cons: XenstoreRingIdx,
    /// Bytes of `rsp` the daemon has produced.
    pub rsp_prod: XenstoreRingIdx,
    /// Bitmap of features the server supports.
    pub server_features: u32,
    /// Connection state, used by the reconnection feature.
    pub connection: u32,
    /// Error indicator set by the server when it sees a protocol violation.
    pub error: u32,
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<XenstoreDomainInterface>() == 2076);
    assert!(offset_of!(XenstoreDomainInterface, req) == 0);
    assert!(offset_of!(XenstoreDomainInterface, rsp) == 1024);
    assert!(offset_of!(XenstoreDomainInterface, req_cons) == 2048);
    assert!(offset_of!(XenstoreDomainInterface, req_prod) == 2052);
    assert!(offset_of!(XenstoreDomainInterface, rsp_cons) == 2056);
    assert!(offset_of!(XenstoreDomainInterface, rsp_prod) == 2060);
    assert!(offset_of!(XenstoreDomainInterface, server_features) == 2064);
    assert!(offset_of!(XenstoreDomainInterface, connection) == 2068);
    assert!(offset_of!(XenstoreDomainInterface, error) == 2072);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_type_numbers_round_trip_and_reject_gaps() {
        assert_eq!(XsdSockmsgType::from_wire(2), Some(XsdSockmsgType::Read));
        assert_eq!(XsdSockmsgType::from_wire(21), Some(XsdSockmsgType::ResetWatches));
        assert_eq!(XsdSockmsgType::from_wire(20), None, "XS_RESTRICT was removed");
        assert_eq!(XsdSockmsgType::from_wire(XS_TYPE_COUNT), None);
        assert_eq!(XsdSockmsgType::from_wire(XS_INVALID), None);
        let known = (0..XS_TYPE_COUNT)
            .filter(|&n| XsdSockmsgType::from_wire(n).is_some())
            .count();
        assert_eq!(known, 22);
        for n in 0..XS_TYPE_COUNT {
            if let Some(t) = XsdSockmsgType::from_wire(n) {
                assert_eq!(t as u32, n);
            }
        }
    }
}
