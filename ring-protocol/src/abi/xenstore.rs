//! XenStore wire protocol (`xen/include/public/io/xs_wire.h`): the shared ring page.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Size of each of the two XenStore byte rings.
pub const XENSTORE_RING_SIZE: usize = 1024;

/// The XenStore ring page shared between a domain and xenstored.
#[doc(alias = "xenstore_domain_interface")]
#[repr(C)]
#[derive(Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct XenstoreDomainInterface {
    /// Requests to the XenStore daemon (guest produces).
    pub req: [u8; XENSTORE_RING_SIZE],
    /// Replies and asynchronous watch events (daemon produces).
    pub rsp: [u8; XENSTORE_RING_SIZE],
    pub req_cons: u32,
    pub req_prod: u32,
    pub rsp_cons: u32,
    pub rsp_prod: u32,
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
