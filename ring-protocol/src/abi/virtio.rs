//! virtio 1.x data layouts shared by a driver (guest) and a device (host): the split virtqueue, the
//! device status and feature bits both sides negotiate, and the block and net device ABIs, as
//! Linux's uapi headers define them (`linux/virtio_config.h`, `virtio_ring.h`, `virtio_blk.h`,
//! `virtio_net.h`).
//!
//! Every multi-byte field is little-endian on the wire (a modern, `VIRTIO_F_VERSION_1` device), so
//! fields are zerocopy's byte-order types ([`Le16`], [`Le32`], [`Le64`]): a struct reads and writes
//! the same bytes on any host, and, since those types have alignment 1, can be read from any offset
//! of guest memory or a byte buffer. The C structs have natural alignment (the config spaces are
//! `packed`); sizes and offsets are identical, which `pvkit-tests` checks against the system's
//! headers.
//!
//! Feature bits are bit *numbers*, as in the headers (`1 << VIRTIO_F_VERSION_1` is the mask; see
//! [`feature`]).

use core::mem::{offset_of, size_of};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// A little-endian `u16` (`__virtio16` / `__le16` of a modern device).
pub type Le16 = zerocopy::little_endian::U16;
/// A little-endian `u32` (`__virtio32` / `__le32`).
pub type Le32 = zerocopy::little_endian::U32;
/// A little-endian `u64` (`__virtio64` / `__le64`).
pub type Le64 = zerocopy::little_endian::U64;

/// The feature mask of feature bit number `bit` (`1 << bit`).
pub const fn feature(bit: u32) -> u64 {
    1 << bit
}

// ---- virtio_config.h: device status and device-independent feature bits ----

/// Device status bit: the driver has noticed the device.
pub const VIRTIO_CONFIG_S_ACKNOWLEDGE: u8 = 1;
/// Device status bit: the driver knows how to drive the device.
pub const VIRTIO_CONFIG_S_DRIVER: u8 = 2;
/// Device status bit: the driver is set up and ready.
pub const VIRTIO_CONFIG_S_DRIVER_OK: u8 = 4;
/// Device status bit: feature negotiation is complete.
pub const VIRTIO_CONFIG_S_FEATURES_OK: u8 = 8;
/// Device status bit: the device hit an error and needs a reset.
pub const VIRTIO_CONFIG_S_NEEDS_RESET: u8 = 0x40;
/// Device status bit: the driver gave up on the device.
pub const VIRTIO_CONFIG_S_FAILED: u8 = 0x80;

/// Feature bit: the device accepts any framing of a request over descriptors (legacy).
pub const VIRTIO_F_ANY_LAYOUT: u32 = 27;
/// Feature bit: the device is a modern (virtio 1.x) device; little-endian fields everywhere.
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// Feature bit: the device sits behind an IOMMU or other platform translation.
pub const VIRTIO_F_ACCESS_PLATFORM: u32 = 33;
/// Feature bit: the packed virtqueue layout is supported.
pub const VIRTIO_F_RING_PACKED: u32 = 34;
/// Feature bit: the device uses buffers in the order they were made available.
pub const VIRTIO_F_IN_ORDER: u32 = 35;

// ---- virtio_ring.h: the split virtqueue ----

/// Feature bit: descriptors may point to an indirect descriptor table.
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
/// Feature bit: the `used_event` / `avail_event` fields suppress notifications.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;

/// [`VirtqDesc::flags`]: the chain continues at [`VirtqDesc::next`].
pub const VRING_DESC_F_NEXT: u16 = 1;
/// [`VirtqDesc::flags`]: the buffer is device-writable (otherwise device-readable).
pub const VRING_DESC_F_WRITE: u16 = 2;
/// [`VirtqDesc::flags`]: the buffer is a table of descriptors.
pub const VRING_DESC_F_INDIRECT: u16 = 4;
/// [`VirtqUsed::flags`]: the device asks not to be notified (without EVENT_IDX).
pub const VRING_USED_F_NO_NOTIFY: u16 = 1;
/// [`VirtqAvail::flags`]: the driver asks not to be interrupted (without EVENT_IDX).
pub const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Alignment the spec requires of the descriptor table.
pub const VRING_DESC_ALIGN_SIZE: usize = 16;
/// Alignment the spec requires of the available ring.
pub const VRING_AVAIL_ALIGN_SIZE: usize = 2;
/// Alignment the spec requires of the used ring.
pub const VRING_USED_ALIGN_SIZE: usize = 4;

/// One entry of the descriptor table: a guest-physical buffer.
#[doc(alias = "vring_desc")]
#[doc(alias = "virtq_desc")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct VirtqDesc {
    /// Guest-physical address of the buffer.
    pub addr: Le64,
    /// Its length in bytes.
    pub len: Le32,
    /// `VRING_DESC_F_*`.
    pub flags: Le16,
    /// The next descriptor of the chain, with [`VRING_DESC_F_NEXT`].
    pub next: Le16,
}
const _: () = assert!(size_of::<VirtqDesc>() == 16);
const _: () = assert!(offset_of!(VirtqDesc, len) == 8 && offset_of!(VirtqDesc, next) == 14);

/// The header of the available ring (driver area). `ring[queue size]` of [`Le16`] descriptor
/// heads follows it, then `used_event` ([`VirtqAvail::used_event_offset`]).
#[doc(alias = "vring_avail")]
#[doc(alias = "virtq_avail")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct VirtqAvail {
    /// `VRING_AVAIL_F_*`.
    pub flags: Le16,
    /// Where the driver puts the next head (free-running, wraps at 2^16).
    pub idx: Le16,
}
const _: () = assert!(size_of::<VirtqAvail>() == 4);

impl VirtqAvail {
    /// Byte offset, from the start of the available ring, of `ring[slot]`.
    pub const fn ring_offset(slot: u16) -> usize {
        size_of::<Self>() + 2 * slot as usize
    }

    /// Byte offset of `used_event`, for a queue of `size` entries.
    pub const fn used_event_offset(size: u16) -> usize {
        Self::ring_offset(size)
    }

    /// Bytes of the available ring for a queue of `size` entries (with `used_event`).
    pub const fn size(size: u16) -> usize {
        Self::used_event_offset(size) + 2
    }
}

/// One entry of the used ring: a chain the device finished with.
#[doc(alias = "vring_used_elem")]
#[doc(alias = "virtq_used_elem")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct VirtqUsedElem {
    /// Head index of the chain (a `u32`, though heads are below 2^16).
    pub id: Le32,
    /// Bytes the device wrote into the chain's device-writable buffers.
    pub len: Le32,
}
const _: () = assert!(size_of::<VirtqUsedElem>() == 8);

/// The header of the used ring (device area). `ring[queue size]` of [`VirtqUsedElem`] follows it,
/// then `avail_event` ([`VirtqUsed::avail_event_offset`]).
#[doc(alias = "vring_used")]
#[doc(alias = "virtq_used")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct VirtqUsed {
    /// `VRING_USED_F_*`.
    pub flags: Le16,
    /// Where the device puts the next used element (free-running).
    pub idx: Le16,
}
const _: () = assert!(size_of::<VirtqUsed>() == 4);

impl VirtqUsed {
    /// Byte offset, from the start of the used ring, of `ring[slot]`.
    pub const fn ring_offset(slot: u16) -> usize {
        size_of::<Self>() + size_of::<VirtqUsedElem>() * slot as usize
    }

    /// Byte offset of `avail_event`, for a queue of `size` entries.
    pub const fn avail_event_offset(size: u16) -> usize {
        Self::ring_offset(size)
    }

    /// Bytes of the used ring for a queue of `size` entries (with `avail_event`).
    pub const fn size(size: u16) -> usize {
        Self::avail_event_offset(size) + 2
    }
}

// ---- virtio_pci.h: the modern PCI transport ----

/// [`VirtioPciCap::cfg_type`]: the common configuration structure ([`VirtioPciCommonCfg`]).
pub const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
/// [`VirtioPciCap::cfg_type`]: the notification area ([`VirtioPciNotifyCap`]).
pub const VIRTIO_PCI_CAP_NOTIFY_CFG: u8 = 2;
/// [`VirtioPciCap::cfg_type`]: the ISR status byte.
pub const VIRTIO_PCI_CAP_ISR_CFG: u8 = 3;
/// [`VirtioPciCap::cfg_type`]: the device-specific configuration space.
pub const VIRTIO_PCI_CAP_DEVICE_CFG: u8 = 4;
/// [`VirtioPciCap::cfg_type`]: the PCI configuration access window.
pub const VIRTIO_PCI_CAP_PCI_CFG: u8 = 5;
/// An MSI-X vector number meaning "none" (also what a device answers when it refuses a vector).
pub const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;

/// A vendor-specific PCI capability locating one virtio structure in a BAR.
#[doc(alias = "virtio_pci_cap")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct VirtioPciCap {
    /// PCI capability id (vendor-specific, 0x09).
    pub cap_vndr: u8,
    /// Next capability.
    pub cap_next: u8,
    /// Capability length.
    pub cap_len: u8,
    /// `VIRTIO_PCI_CAP_*`.
    pub cfg_type: u8,
    /// The BAR holding the structure.
    pub bar: u8,
    /// Tells apart several capabilities of one type.
    pub id: u8,
    /// Padding.
    pub padding: [u8; 2],
    /// Offset of the structure in the BAR.
    pub offset: Le32,
    /// Length of the structure.
    pub length: Le32,
}
const _: () = assert!(size_of::<VirtioPciCap>() == 16);

/// The notification capability: a [`VirtioPciCap`] and the multiplier of `queue_notify_off`.
#[doc(alias = "virtio_pci_notify_cap")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct VirtioPciNotifyCap {
    /// The capability header.
    pub cap: VirtioPciCap,
    /// A queue's doorbell is at `queue_notify_off * notify_off_multiplier` in the area.
    pub notify_off_multiplier: Le32,
}
const _: () = assert!(size_of::<VirtioPciNotifyCap>() == 20);

/// The common configuration structure of a modern virtio-pci device (in a BAR).
#[doc(alias = "virtio_pci_common_cfg")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct VirtioPciCommonCfg {
    /// Which 32 bits of the device's features `device_feature` shows.
    pub device_feature_select: Le32,
    /// The device's features (the selected 32 bits).
    pub device_feature: Le32,
    /// Which 32 bits of the driver's features `guest_feature` takes.
    pub guest_feature_select: Le32,
    /// The driver's features (the selected 32 bits).
    pub guest_feature: Le32,
    /// MSI-X vector for configuration changes.
    pub msix_config: Le16,
    /// Queues the device has.
    pub num_queues: Le16,
    /// `VIRTIO_CONFIG_S_*`.
    pub device_status: u8,
    /// Changes whenever the device changes its config space.
    pub config_generation: u8,
    /// The queue the `queue_*` fields below address.
    pub queue_select: Le16,
    /// Its size.
    pub queue_size: Le16,
    /// Its MSI-X vector.
    pub queue_msix_vector: Le16,
    /// Whether it is enabled.
    pub queue_enable: Le16,
    /// Its doorbell's offset in the notification area, in multiplier units.
    pub queue_notify_off: Le16,
    /// Descriptor table address, low 32 bits.
    pub queue_desc_lo: Le32,
    /// Descriptor table address, high 32 bits.
    pub queue_desc_hi: Le32,
    /// Driver area address, low 32 bits.
    pub queue_avail_lo: Le32,
    /// Driver area address, high 32 bits.
    pub queue_avail_hi: Le32,
    /// Device area address, low 32 bits.
    pub queue_used_lo: Le32,
    /// Device area address, high 32 bits.
    pub queue_used_hi: Le32,
}
const _: () = assert!(size_of::<VirtioPciCommonCfg>() == 0x38);
const _: () = assert!(offset_of!(VirtioPciCommonCfg, queue_select) == 0x16);

// ---- virtio_blk.h ----

/// Feature bit: `size_max` holds the largest segment size.
pub const VIRTIO_BLK_F_SIZE_MAX: u32 = 1;
/// Feature bit: `seg_max` holds the most segments per request.
pub const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
/// Feature bit: `geometry` is valid (legacy).
pub const VIRTIO_BLK_F_GEOMETRY: u32 = 4;
/// Feature bit: the device is read-only.
pub const VIRTIO_BLK_F_RO: u32 = 5;
/// Feature bit: `blk_size` holds the logical block size.
pub const VIRTIO_BLK_F_BLK_SIZE: u32 = 6;
/// Feature bit: [`VIRTIO_BLK_T_FLUSH`] is supported.
pub const VIRTIO_BLK_F_FLUSH: u32 = 9;
/// Feature bit: the topology fields are valid.
pub const VIRTIO_BLK_F_TOPOLOGY: u32 = 10;
/// Feature bit: the cache mode in `wce` can be changed.
pub const VIRTIO_BLK_F_CONFIG_WCE: u32 = 11;
/// Feature bit: `num_queues` request queues.
pub const VIRTIO_BLK_F_MQ: u32 = 12;
/// Feature bit: [`VIRTIO_BLK_T_DISCARD`] is supported.
pub const VIRTIO_BLK_F_DISCARD: u32 = 13;
/// Feature bit: [`VIRTIO_BLK_T_WRITE_ZEROES`] is supported.
pub const VIRTIO_BLK_F_WRITE_ZEROES: u32 = 14;
/// Feature bit: [`VIRTIO_BLK_T_SECURE_ERASE`] is supported.
pub const VIRTIO_BLK_F_SECURE_ERASE: u32 = 16;

/// Length of the serial number [`VIRTIO_BLK_T_GET_ID`] returns.
pub const VIRTIO_BLK_ID_BYTES: usize = 20;

/// Request type: read.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Request type: write.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Request type: flush the volatile write cache.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Request type: read the serial number.
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// Request type: discard sector ranges ([`VirtioBlkDiscardWriteZeroes`] segments).
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
/// Request type: write zeroes to sector ranges.
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;
/// Request type: securely erase sector ranges.
pub const VIRTIO_BLK_T_SECURE_ERASE: u32 = 14;

/// Status byte: success.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// Status byte: device or driver error.
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Status byte: request type (or its flags) not supported.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// [`VirtioBlkDiscardWriteZeroes::flags`]: the device may deallocate the zeroed sectors.
pub const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP: u32 = 1;

/// Legacy disk geometry (`struct virtio_blk_geometry`, inside the config space).
#[doc(alias = "virtio_blk_geometry")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct VirtioBlkGeometry {
    /// Cylinders.
    pub cylinders: Le16,
    /// Heads.
    pub heads: u8,
    /// Sectors per track.
    pub sectors: u8,
}
const _: () = assert!(size_of::<VirtioBlkGeometry>() == 4);

/// The block device's configuration space. Capacity and every sector count are in 512-byte
/// sectors ([`super::SECTOR_SIZE`]), whatever `blk_size` says.
#[doc(alias = "virtio_blk_config")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct VirtioBlkConfig {
    /// Size of the disk in 512-byte sectors.
    pub capacity: Le64,
    /// Largest segment in bytes ([`VIRTIO_BLK_F_SIZE_MAX`]).
    pub size_max: Le32,
    /// Most data segments per request ([`VIRTIO_BLK_F_SEG_MAX`]).
    pub seg_max: Le32,
    /// Legacy geometry ([`VIRTIO_BLK_F_GEOMETRY`]).
    pub geometry: VirtioBlkGeometry,
    /// Logical block size ([`VIRTIO_BLK_F_BLK_SIZE`]).
    pub blk_size: Le32,
    /// log2 of logical blocks per physical block ([`VIRTIO_BLK_F_TOPOLOGY`]).
    pub physical_block_exp: u8,
    /// Offset of the first aligned logical block.
    pub alignment_offset: u8,
    /// Suggested minimum I/O size in blocks.
    pub min_io_size: Le16,
    /// Optimal I/O size in blocks.
    pub opt_io_size: Le32,
    /// Writeback cache enabled ([`VIRTIO_BLK_F_CONFIG_WCE`]).
    pub wce: u8,
    /// Reserved.
    pub unused: u8,
    /// Request queues ([`VIRTIO_BLK_F_MQ`]).
    pub num_queues: Le16,
    /// Largest discard segment in sectors ([`VIRTIO_BLK_F_DISCARD`]).
    pub max_discard_sectors: Le32,
    /// Most segments per discard request.
    pub max_discard_seg: Le32,
    /// Discard alignment in sectors.
    pub discard_sector_alignment: Le32,
    /// Largest write-zeroes segment in sectors ([`VIRTIO_BLK_F_WRITE_ZEROES`]).
    pub max_write_zeroes_sectors: Le32,
    /// Most segments per write-zeroes request.
    pub max_write_zeroes_seg: Le32,
    /// Whether a write-zeroes with [`VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP`] may deallocate.
    pub write_zeroes_may_unmap: u8,
    /// Reserved.
    pub unused1: [u8; 3],
    /// Largest secure-erase segment in sectors ([`VIRTIO_BLK_F_SECURE_ERASE`]).
    pub max_secure_erase_sectors: Le32,
    /// Most segments per secure-erase request.
    pub max_secure_erase_seg: Le32,
    /// Secure-erase alignment in sectors.
    pub secure_erase_sector_alignment: Le32,
}
const _: () = assert!(size_of::<VirtioBlkConfig>() == 72);
const _: () = assert!(offset_of!(VirtioBlkConfig, size_max) == 8);
const _: () = assert!(offset_of!(VirtioBlkConfig, num_queues) == 34);
const _: () = assert!(offset_of!(VirtioBlkConfig, max_discard_sectors) == 36);
const _: () = assert!(offset_of!(VirtioBlkConfig, write_zeroes_may_unmap) == 56);
const _: () = assert!(offset_of!(VirtioBlkConfig, max_secure_erase_sectors) == 60);

/// The header that starts every block request (device-readable), followed by the data and a
/// one-byte status (`VIRTIO_BLK_S_*`, device-writable).
#[doc(alias = "virtio_blk_outhdr")]
#[doc(alias = "virtio_blk_req")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct VirtioBlkOuthdr {
    /// `VIRTIO_BLK_T_*`. Named `type` in C.
    pub type_: Le32,
    /// Request priority (reserved in virtio 1.x).
    pub ioprio: Le32,
    /// First 512-byte sector (0 for requests without data).
    pub sector: Le64,
}
const _: () = assert!(size_of::<VirtioBlkOuthdr>() == 16);
const _: () = assert!(offset_of!(VirtioBlkOuthdr, sector) == 8);

/// One range of a discard, write-zeroes or secure-erase request (the request's data).
#[doc(alias = "virtio_blk_discard_write_zeroes")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct VirtioBlkDiscardWriteZeroes {
    /// First sector.
    pub sector: Le64,
    /// Sectors in the range.
    pub num_sectors: Le32,
    /// `VIRTIO_BLK_WRITE_ZEROES_FLAG_*`.
    pub flags: Le32,
}
const _: () = assert!(size_of::<VirtioBlkDiscardWriteZeroes>() == 16);

// ---- virtio_net.h ----

/// Feature bit: the device handles packets with a partial checksum.
pub const VIRTIO_NET_F_CSUM: u32 = 0;
/// Feature bit: the driver handles packets with a partial checksum.
pub const VIRTIO_NET_F_GUEST_CSUM: u32 = 1;
/// Feature bit: `mtu` is valid.
pub const VIRTIO_NET_F_MTU: u32 = 3;
/// Feature bit: `mac` holds the device's address.
pub const VIRTIO_NET_F_MAC: u32 = 5;
/// Feature bit: the driver can merge receive buffers (`num_buffers` > 1).
pub const VIRTIO_NET_F_MRG_RXBUF: u32 = 15;
/// Feature bit: `status` is valid.
pub const VIRTIO_NET_F_STATUS: u32 = 16;
/// Feature bit: a control virtqueue exists.
pub const VIRTIO_NET_F_CTRL_VQ: u32 = 17;
/// Feature bit: multiple queue pairs (`max_virtqueue_pairs`).
pub const VIRTIO_NET_F_MQ: u32 = 22;

/// [`VirtioNetConfig::status`]: the link is up.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;
/// [`VirtioNetConfig::status`]: the driver should announce itself.
pub const VIRTIO_NET_S_ANNOUNCE: u16 = 2;

/// [`VirtioNetHdr::flags`]: checksum from `csum_start`, stored at `csum_start + csum_offset`.
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// [`VirtioNetHdr::flags`]: the checksum is already valid.
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;
/// [`VirtioNetHdr::gso_type`]: not a GSO frame.
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
/// [`VirtioNetHdr::gso_type`]: TCPv4 segmentation.
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
/// [`VirtioNetHdr::gso_type`]: UDP fragmentation.
pub const VIRTIO_NET_HDR_GSO_UDP: u8 = 3;
/// [`VirtioNetHdr::gso_type`]: TCPv6 segmentation.
pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
/// [`VirtioNetHdr::gso_type`] bit: the TCP header has ECN set.
pub const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

/// The net device's configuration space.
#[doc(alias = "virtio_net_config")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct VirtioNetConfig {
    /// The device's MAC address ([`VIRTIO_NET_F_MAC`]).
    pub mac: [u8; 6],
    /// `VIRTIO_NET_S_*` ([`VIRTIO_NET_F_STATUS`]).
    pub status: Le16,
    /// Queue pairs ([`VIRTIO_NET_F_MQ`]).
    pub max_virtqueue_pairs: Le16,
    /// MTU ([`VIRTIO_NET_F_MTU`]).
    pub mtu: Le16,
    /// Link speed in Mb/s.
    pub speed: Le32,
    /// 0 half duplex, 1 full duplex.
    pub duplex: u8,
    /// RSS key size.
    pub rss_max_key_size: u8,
    /// RSS indirection table length.
    pub rss_max_indirection_table_length: Le16,
    /// `VIRTIO_NET_RSS_HASH_TYPE_*`.
    pub supported_hash_types: Le32,
}
const _: () = assert!(size_of::<VirtioNetConfig>() == 24);
const _: () = assert!(offset_of!(VirtioNetConfig, status) == 6);

/// The header before every frame, legacy form (no `num_buffers`): what a transitional device
/// without [`VIRTIO_F_VERSION_1`] or [`VIRTIO_NET_F_MRG_RXBUF`] uses.
#[doc(alias = "virtio_net_hdr")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct VirtioNetHdr {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`.
    pub gso_type: u8,
    /// Bytes of Ethernet + IP + transport headers (GSO).
    pub hdr_len: Le16,
    /// Payload bytes per segment (GSO).
    pub gso_size: Le16,
    /// Where checksumming starts.
    pub csum_start: Le16,
    /// Where the checksum goes, from `csum_start`.
    pub csum_offset: Le16,
}
const _: () = assert!(size_of::<VirtioNetHdr>() == 10);

/// The header before every frame of a modern device ([`VIRTIO_F_VERSION_1`]): the legacy fields and
/// `num_buffers`. With no offloads negotiated it is all zero on transmit and `num_buffers` = 1 on
/// receive.
#[doc(alias = "virtio_net_hdr_v1")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct VirtioNetHdrV1 {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`.
    pub gso_type: u8,
    /// Bytes of Ethernet + IP + transport headers (GSO).
    pub hdr_len: Le16,
    /// Payload bytes per segment (GSO).
    pub gso_size: Le16,
    /// Where checksumming starts (a union with the RSC fields in C).
    pub csum_start: Le16,
    /// Where the checksum goes, from `csum_start`.
    pub csum_offset: Le16,
    /// Receive buffers this frame spans ([`VIRTIO_NET_F_MRG_RXBUF`]; otherwise 1).
    pub num_buffers: Le16,
}
const _: () = assert!(size_of::<VirtioNetHdrV1>() == 12);
const _: () = assert!(offset_of!(VirtioNetHdrV1, num_buffers) == 10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_ring_offsets_for_a_256_entry_queue() {
        // Driver area: flags, idx, 256 heads, used_event; device area: flags, idx, 256 elements,
        // avail_event.
        assert_eq!(VirtqAvail::used_event_offset(256), 4 + 512);
        assert_eq!(VirtqAvail::size(256), 518);
        assert_eq!(VirtqUsed::ring_offset(3), 4 + 24);
        assert_eq!(VirtqUsed::avail_event_offset(256), 4 + 2048);
        assert_eq!(VirtqUsed::size(256), 2054);
    }

    #[test]
    fn fields_are_little_endian_bytes() {
        let h = VirtioBlkOuthdr {
            type_: Le32::new(VIRTIO_BLK_T_OUT),
            ioprio: Le32::ZERO,
            sector: Le64::new(0x0102_0304_0506_0708),
        };
        assert_eq!(h.as_bytes(), &[1, 0, 0, 0, 0, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1]);
        let d = VirtqDesc::read_from_bytes(&[0x10, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 3, 0, 7, 0][..]).unwrap();
        assert_eq!(
            (d.addr.get(), d.len.get(), d.flags.get(), d.next.get()),
            (0x10, 0x200, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 7)
        );
        assert_eq!(feature(VIRTIO_F_VERSION_1), 1 << 32);
    }
}
