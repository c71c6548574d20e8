//! Network device protocol (`xen/include/public/io/netif.h`): transmit and receive ring entries,
//! their flags, extra-info descriptors and status codes.
//!
//! The transmit ring carries [`NetifTxRequest`]s (12 bytes) and [`NetifTxResponse`]s (4 bytes); the
//! receive ring [`NetifRxRequest`]s (8 bytes) and [`NetifRxResponse`]s (8 bytes). A
//! [`NetifExtraInfo`] occupies a request slot on the transmit ring or a response slot on the receive
//! ring when the previous entry carried the `extra_info` flag.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::grant_table::GrantRef;

/// The fewest slots a backend must accept for one packet.
pub const XEN_NETIF_NR_SLOTS_MIN: usize = 18;
/// The largest packet a transmit request may describe, in bytes.
pub const XEN_NETIF_MAX_TX_SIZE: u16 = 0xFFFF;

/// Transmit flag: the protocol checksum field is blank (checksum offload).
#[doc(alias = "NETTXF_csum_blank")]
pub const NETTXF_CSUM_BLANK: u16 = 1 << 0;
/// Transmit flag: the packet's protocol checksum has been validated.
#[doc(alias = "NETTXF_data_validated")]
pub const NETTXF_DATA_VALIDATED: u16 = 1 << 1;
/// Transmit flag: the packet continues in the next request.
#[doc(alias = "NETTXF_more_data")]
pub const NETTXF_MORE_DATA: u16 = 1 << 2;
/// Transmit flag: the request is followed by extra-info descriptor(s).
#[doc(alias = "NETTXF_extra_info")]
pub const NETTXF_EXTRA_INFO: u16 = 1 << 3;

/// Receive flag: the packet's protocol checksum has been validated.
#[doc(alias = "NETRXF_data_validated")]
pub const NETRXF_DATA_VALIDATED: u16 = 1 << 0;
/// Receive flag: the protocol checksum field is blank.
#[doc(alias = "NETRXF_csum_blank")]
pub const NETRXF_CSUM_BLANK: u16 = 1 << 1;
/// Receive flag: the packet continues in the next response.
#[doc(alias = "NETRXF_more_data")]
pub const NETRXF_MORE_DATA: u16 = 1 << 2;
/// Receive flag: the response is followed by extra-info descriptor(s).
#[doc(alias = "NETRXF_extra_info")]
pub const NETRXF_EXTRA_INFO: u16 = 1 << 3;
/// Receive flag: the packet has a GSO prefix (deprecated).
#[doc(alias = "NETRXF_gso_prefix")]
pub const NETRXF_GSO_PREFIX: u16 = 1 << 4;

/// Extra-info type 0: never valid.
pub const XEN_NETIF_EXTRA_TYPE_NONE: u8 = 0;
/// Extra-info type: segmentation offload, see [`NetifExtraInfoGso`].
pub const XEN_NETIF_EXTRA_TYPE_GSO: u8 = 1;
/// Extra-info type: add a multicast address, see [`NetifExtraInfoMcast`].
pub const XEN_NETIF_EXTRA_TYPE_MCAST_ADD: u8 = 2;
/// Extra-info type: remove a multicast address, see [`NetifExtraInfoMcast`].
pub const XEN_NETIF_EXTRA_TYPE_MCAST_DEL: u8 = 3;
/// Extra-info type: packet hash, see [`NetifExtraInfoHash`].
pub const XEN_NETIF_EXTRA_TYPE_HASH: u8 = 4;
/// One past the largest valid extra-info type.
pub const XEN_NETIF_EXTRA_TYPE_MAX: u8 = 5;

/// Extra-info flag: another extra-info descriptor follows.
pub const XEN_NETIF_EXTRA_FLAG_MORE: u8 = 1 << 0;

/// GSO type: none.
pub const XEN_NETIF_GSO_TYPE_NONE: u8 = 0;
/// GSO type: TCP over IPv4.
pub const XEN_NETIF_GSO_TYPE_TCPV4: u8 = 1;
/// GSO type: TCP over IPv6.
pub const XEN_NETIF_GSO_TYPE_TCPV6: u8 = 2;

/// Hash type number (the `type` of a hash extra-info): IPv4 addresses.
#[doc(alias = "_XEN_NETIF_CTRL_HASH_TYPE_IPV4")]
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV4_BIT: u8 = 0;
/// Hash type number: IPv4 addresses and TCP ports.
#[doc(alias = "_XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP")]
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP_BIT: u8 = 1;
/// Hash type number: IPv6 addresses.
#[doc(alias = "_XEN_NETIF_CTRL_HASH_TYPE_IPV6")]
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV6_BIT: u8 = 2;
/// Hash type number: IPv6 addresses and TCP ports.
#[doc(alias = "_XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP")]
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP_BIT: u8 = 3;
/// Hash algorithm: none.
pub const XEN_NETIF_CTRL_HASH_ALGORITHM_NONE: u8 = 0;
/// Hash algorithm: Toeplitz.
pub const XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ: u8 = 1;

/// Response status: the packet was dropped.
pub const NETIF_RSP_DROPPED: i16 = -2;
/// Response status: error.
pub const NETIF_RSP_ERROR: i16 = -1;
/// Response status: success.
pub const NETIF_RSP_OKAY: i16 = 0;
/// Response status of a slot that carries no response (the answer to an extra-info request).
pub const NETIF_RSP_NULL: i16 = 1;

/// A transmit request: `size` bytes at `offset` in the granted page (the first request of a packet
/// gives the whole packet's size).
#[doc(alias = "netif_tx_request")]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct NetifTxRequest {
    /// Grant of the page holding the data.
    pub gref: GrantRef,
    /// Offset of the data in the page.
    pub offset: u16,
    /// `NETTXF_*`.
    pub flags: u16,
    /// Echoed in the response.
    pub id: u16,
    /// Bytes of packet data.
    pub size: u16,
}

const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<NetifTxRequest>() == 12);
    assert!(align_of::<NetifTxRequest>() == 4);
    assert!(offset_of!(NetifTxRequest, gref) == 0);
    assert!(offset_of!(NetifTxRequest, offset) == 4);
    assert!(offset_of!(NetifTxRequest, flags) == 6);
    assert!(offset_of!(NetifTxRequest, id) == 8);
    assert!(offset_of!(NetifTxRequest, size) == 10);
};

/// A transmit response.
#[doc(alias = "netif_tx_response")]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct NetifTxResponse {
    /// Copied from the request.
    pub id: u16,
    /// `NETIF_RSP_*`.
    pub status: i16,
}

const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<NetifTxResponse>() == 4);
    assert!(align_of::<NetifTxResponse>() == 2);
    assert!(offset_of!(NetifTxResponse, id) == 0);
    assert!(offset_of!(NetifTxResponse, status) == 2);
};

/// A receive request: a granted page the backend may fill with a packet.
#[doc(alias = "netif_rx_request")]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct NetifRxRequest {
    /// Echoed in the response.
    pub id: u16,
    /// Padding (named `pad` in C); always zero.
    pub pad: u16,
    /// Grant of the receive buffer page.
    pub gref: GrantRef,
}

const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<NetifRxRequest>() == 8);
    assert!(align_of::<NetifRxRequest>() == 4);
    assert!(offset_of!(NetifRxRequest, id) == 0);
    assert!(offset_of!(NetifRxRequest, pad) == 2);
    assert!(offset_of!(NetifRxRequest, gref) == 4);
};

/// A receive response: `status` bytes (when non-negative) at `offset` in the request's page.
#[doc(alias = "netif_rx_response")]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct NetifRxResponse {
    /// Copied from the request.
    pub id: u16,
    /// Offset of the data in the page.
    pub offset: u16,
    /// `NETRXF_*`.
    pub flags: u16,
    /// Bytes received if non-negative, else `NETIF_RSP_*`.
    pub status: i16,
}

const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<NetifRxResponse>() == 8);
    assert!(align_of::<NetifRxResponse>() == 2);
    assert!(offset_of!(NetifRxResponse, id) == 0);
    assert!(offset_of!(NetifRxResponse, offset) == 2);
    assert!(offset_of!(NetifRxResponse, flags) == 4);
    assert!(offset_of!(NetifRxResponse, status) == 6);
};

/// An extra-info descriptor. `u` is the C union's six bytes; read or write it through the typed
/// accessors matching `type_`.
#[doc(alias = "netif_extra_info")]
#[repr(C, align(2))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct NetifExtraInfo {
    /// `XEN_NETIF_EXTRA_TYPE_*` (named `type` in C).
    pub type_: u8,
    /// `XEN_NETIF_EXTRA_FLAG_*`.
    pub flags: u8,
    /// The union `u`: a [`NetifExtraInfoGso`], [`NetifExtraInfoMcast`] or [`NetifExtraInfoHash`].
    pub u: [u8; 6],
}

const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<NetifExtraInfo>() == 8);
    assert!(align_of::<NetifExtraInfo>() == 2);
    assert!(offset_of!(NetifExtraInfo, type_) == 0);
    assert!(offset_of!(NetifExtraInfo, flags) == 1);
    assert!(offset_of!(NetifExtraInfo, u) == 2);
};

/// The `u.gso` variant of [`NetifExtraInfo`] (type [`XEN_NETIF_EXTRA_TYPE_GSO`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct NetifExtraInfoGso {
    /// Maximum payload size of each segment.
    pub size: u16,
    /// `XEN_NETIF_GSO_TYPE_*` (named `type` in C).
    pub type_: u8,
    /// Padding (named `pad` in C); always zero.
    pub pad: u8,
    /// GSO features (none are defined yet; zero).
    pub features: u16,
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<NetifExtraInfoGso>() == 6);
    assert!(offset_of!(NetifExtraInfoGso, size) == 0);
    assert!(offset_of!(NetifExtraInfoGso, type_) == 2);
    assert!(offset_of!(NetifExtraInfoGso, pad) == 3);
    assert!(offset_of!(NetifExtraInfoGso, features) == 4);
};

/// The `u.mcast` variant of [`NetifExtraInfo`] (types `XEN_NETIF_EXTRA_TYPE_MCAST_ADD`/`_DEL`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct NetifExtraInfoMcast {
    /// The Ethernet multicast address.
    pub addr: [u8; 6],
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<NetifExtraInfoMcast>() == 6);
    assert!(offset_of!(NetifExtraInfoMcast, addr) == 0);
};

/// The `u.hash` variant of [`NetifExtraInfo`] (type [`XEN_NETIF_EXTRA_TYPE_HASH`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct NetifExtraInfoHash {
    /// Hash type number, `XEN_NETIF_CTRL_HASH_TYPE_*_BIT` (named `type` in C).
    pub type_: u8,
    /// `XEN_NETIF_CTRL_HASH_ALGORITHM_*`.
    pub algorithm: u8,
    /// The hash value, least significant byte first.
    pub value: [u8; 4],
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<NetifExtraInfoHash>() == 6);
    assert!(offset_of!(NetifExtraInfoHash, type_) == 0);
    assert!(offset_of!(NetifExtraInfoHash, algorithm) == 1);
    assert!(offset_of!(NetifExtraInfoHash, value) == 2);
};

impl NetifExtraInfo {
    /// The union read as its `gso` variant (meaningful when `type_` is [`XEN_NETIF_EXTRA_TYPE_GSO`]).
    pub fn gso(&self) -> NetifExtraInfoGso {
        zerocopy::transmute!(self.u)
    }

    /// Stores `gso` in the union (does not change `type_`).
    pub fn set_gso(&mut self, gso: NetifExtraInfoGso) {
        self.u = zerocopy::transmute!(gso);
    }

    /// The union read as its `mcast` variant.
    pub fn mcast(&self) -> NetifExtraInfoMcast {
        zerocopy::transmute!(self.u)
    }

    /// Stores `mcast` in the union (does not change `type_`).
    pub fn set_mcast(&mut self, mcast: NetifExtraInfoMcast) {
        self.u = zerocopy::transmute!(mcast);
    }

    /// The union read as its `hash` variant.
    pub fn hash(&self) -> NetifExtraInfoHash {
        zerocopy::transmute!(self.u)
    }

    /// Stores `hash` in the union (does not change `type_`).
    pub fn set_hash(&mut self, hash: NetifExtraInfoHash) {
        self.u = zerocopy::transmute!(hash);
    }
}

// An extra-info descriptor must fit in both slots it may occupy.
const _: () = assert!(core::mem::size_of::<NetifExtraInfo>() <= core::mem::size_of::<NetifTxRequest>());
const _: () = assert!(core::mem::size_of::<NetifExtraInfo>() <= core::mem::size_of::<NetifRxResponse>());

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::IntoBytes;

    #[test]
    fn gso_variant_lands_in_union_bytes_little_endian() {
        let mut e = NetifExtraInfo {
            type_: XEN_NETIF_EXTRA_TYPE_GSO,
            ..Default::default()
        };
        e.set_gso(NetifExtraInfoGso {
            size: 0x05B4,
            type_: XEN_NETIF_GSO_TYPE_TCPV4,
            pad: 0,
            features: 0,
        });
        assert_eq!(e.as_bytes(), &[1, 0, 0xB4, 0x05, 1, 0, 0, 0]);
        assert_eq!(e.gso().size, 1460);
        e.set_hash(NetifExtraInfoHash {
            type_: 1,
            algorithm: 1,
            value: [9, 8, 7, 6],
        });
        assert_eq!(e.hash().value, [9, 8, 7, 6]);
        assert_eq!(e.mcast().addr, [1, 1, 9, 8, 7, 6]);
    }
}
