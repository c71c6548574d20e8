//! pvkit's own echo protocol: the Ethernet frames the guest's net workloads send and the echo peers
//! (the host backends' switch peer, xtask's and dom0's echo programs) answer with the MAC addresses
//! swapped. Both ends must agree on these, so they are defined here, once; the payload format is
//! `pvkit_frontends::workload::net`'s.

/// The EtherType of workload frames (IEEE 802 local experimental EtherType 1).
pub const ETHERTYPE: u16 = 0x88b5;

/// Where workload frames are sent (a locally administered address; the peer answers whatever it
/// is).
pub const PEER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
