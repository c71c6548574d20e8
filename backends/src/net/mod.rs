//! The net core: a small L2 switch with MAC learning and flooding, guest ports (bounded frame queues
//! an adapter drains into its receive ring) and a host test port ([`EchoPeer`]).
//!
//! Every port is either bound to one address ([`PortPolicy::Bound`]: a guest whose MAC the daemon
//! configured, the echo peer) or learning ([`PortPolicy::Learning`]: a tap interface, a guest whose
//! address is not known). A bound port's address is in the table from the start, is never learned,
//! moved or evicted, and the port may send only from it: any other source address is dropped and
//! counted on that port. A learning port learns at most its own quota of addresses (its oldest is
//! forgotten to make room, never another port's), cannot claim a bound address, and the table as a
//! whole stops learning at [`MAX_LEARNED`] entries instead of starting over. Unknown unicast is
//! flooded only to learning ports (a bound port's one address is known), so no source address flood
//! turns the switch into a hub for the bound ports' traffic. Frames longer than [`MAX_FRAME_LEN`]
//! are refused.
//!
//! - [`switch`]: the switch, its ports' policies (bound, learning) and counts;
//! - [`queue`]: [`QueuedPort`], a guest port (a bounded frame queue and a wake callback);
//! - [`echo`]: [`EchoPeer`], the host test port;
//! - here: addresses, frame limits and [`PortSink`], what every port is to the switch.

pub mod echo;
pub mod queue;
pub mod switch;

pub use echo::{EchoPeer, EchoStats};
pub use queue::QueuedPort;
pub use switch::{
    BindError, DEFAULT_LEARNED_PER_PORT, MAX_LEARNED, PortCounts, PortPolicy, Switch, SwitchStats,
};

/// An Ethernet address.
pub type Mac = [u8; 6];

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(m: &Mac) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Length of an Ethernet II header (destination, source, EtherType).
pub const ETH_HEADER_LEN: usize = 14;
/// Payload bytes of a standard Ethernet frame (the MTU every port here uses).
pub const ETH_DATA_LEN: usize = 1500;
/// Longest frame the switch carries: header, 1500 bytes of payload and one VLAN tag (no frame
/// check sequence). No port negotiates more (no GSO, no jumbo frames).
pub const MAX_FRAME_LEN: usize = ETH_HEADER_LEN + ETH_DATA_LEN + 4;

/// EtherType of pvkit's echo frames (IEEE local experimental 1).
pub use ring_protocol::abi::pvkit_echo::ETHERTYPE as ETHERTYPE_PVKIT_ECHO;

/// Identifies a port on a [`Switch`].
pub type PortId = usize;

/// Something frames are delivered to.
pub trait PortSink: Send + Sync {
    /// Takes one frame. It must not block; a full port drops the frame (and counts it).
    fn deliver(&self, frame: &[u8]);
}

#[cfg(test)]
mod tests;
