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

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use crossbeam_queue::ArrayQueue;

use crate::{Error, Result};

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
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;

/// Learned addresses in the whole table, at most; beyond, new addresses are not learned (their
/// frames are still switched) until entries go away with their ports or their ports' quotas.
pub const MAX_LEARNED: usize = 4096;
/// A learning port's quota of learned addresses when [`Switch::add_port`] attaches it.
pub const DEFAULT_LEARNED_PER_PORT: usize = 64;

/// Identifies a port on a [`Switch`].
pub type PortId = usize;

/// Something frames are delivered to.
pub trait PortSink: Send + Sync {
    /// Takes one frame. It must not block; a full port drops the frame (and counts it).
    fn deliver(&self, frame: &[u8]);
}

/// Which source addresses a port may send from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortPolicy {
    /// Only this one: a guest whose address the daemon configured, the echo peer.
    Bound(Mac),
    /// Any unicast address not bound elsewhere, at most `max` of them remembered at a time (a tap
    /// interface with stations behind it, a guest whose address is not configured).
    Learning {
        /// The port's quota of learned addresses.
        max: usize,
    },
}

/// Why a port could not be bound to an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    /// Another port is bound to it.
    #[error("MAC {} is already bound to port {port}", format_mac(mac))]
    InUse {
        /// The address.
        mac: Mac,
        /// The port holding it.
        port: PortId,
    },
    /// A group address cannot be a port's own.
    #[error("MAC {} is a multicast address", format_mac(mac))]
    Multicast {
        /// The address.
        mac: Mac,
    },
}

/// Counts kept by the switch.
#[derive(Debug, Default)]
pub struct SwitchStats {
    /// Frames sent into the switch.
    pub frames_in: AtomicU64,
    /// Frames forwarded to exactly one port.
    pub unicast: AtomicU64,
    /// Frames flooded (broadcast, multicast, unknown unicast to the learning ports).
    pub flooded: AtomicU64,
    /// Frames dropped because the destination is on the sending port.
    pub filtered: AtomicU64,
    /// Frames dropped for a source address their port may not use (also counted per port).
    pub spoofed: AtomicU64,
    /// Frames refused for their length (shorter than a header, longer than [`MAX_FRAME_LEN`]).
    pub bad_length: AtomicU64,
    /// New addresses not learned because the table was full.
    pub learn_refused: AtomicU64,
    /// Learned addresses that moved from one learning port to another.
    pub moved: AtomicU64,
}

/// One port's counts ([`Switch::port_counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortCounts {
    /// Frames it sent into the switch.
    pub frames_in: u64,
    /// Of those, dropped for a source address it may not use.
    pub spoofed: u64,
    /// Addresses learned on it now.
    pub learned: usize,
    /// Its own learned addresses forgotten to make room for newer ones.
    pub evicted: u64,
}

struct Port {
    sink: Arc<dyn PortSink>,
    policy: PortPolicy,
    /// Addresses learned on it, oldest first.
    learned: VecDeque<Mac>,
    counts: PortCounts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Bound(PortId),
    Learned(PortId),
}

impl Entry {
    fn port(self) -> PortId {
        match self {
            Entry::Bound(p) | Entry::Learned(p) => p,
        }
    }
}

#[derive(Default)]
struct Inner {
    ports: Vec<Option<Port>>,
    table: HashMap<Mac, Entry>,
    learned_total: usize,
}

/// A learning L2 switch with bound ports.
#[derive(Default)]
pub struct Switch {
    inner: Mutex<Inner>,
    stats: SwitchStats,
}

impl fmt::Debug for Switch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.inner.lock().expect("switch lock");
        f.debug_struct("Switch")
            .field("ports", &inner.ports.iter().filter(|p| p.is_some()).count())
            .field("table", &inner.table.len())
            .field("learned", &inner.learned_total)
            .field("stats", &self.stats)
            .finish()
    }
}

fn is_multicast(mac: &Mac) -> bool {
    mac[0] & 1 != 0
}

impl Inner {
    /// Forgets `mac` from the learned list of `port` (if it is there).
    fn unlearn(&mut self, port: PortId, mac: &Mac) {
        if let Some(Some(p)) = self.ports.get_mut(port)
            && let Some(i) = p.learned.iter().position(|m| m == mac)
        {
            p.learned.remove(i);
            p.counts.learned = p.learned.len();
            self.learned_total -= 1;
        }
    }

    /// Learns `src` on learning port `from` (quota `max`); returns whether the address moved from
    /// another port and whether the table refused it for being full.
    fn learn(&mut self, from: PortId, max: usize, src: Mac) -> (bool, bool) {
        let mut moved = false;
        match self.table.get(&src).copied() {
            Some(Entry::Learned(p)) if p == from => return (false, false),
            Some(Entry::Learned(p)) => {
                self.unlearn(p, &src);
                self.table.remove(&src);
                moved = true;
            }
            Some(Entry::Bound(_)) => unreachable!("checked by the caller"),
            None => {}
        }
        let port = self.ports[from].as_mut().expect("sending port exists");
        if port.learned.len() >= max.max(1) {
            // Make room from this port's own entries, oldest first; never another port's.
            if let Some(old) = port.learned.pop_front() {
                port.counts.evicted += 1;
                self.learned_total -= 1;
                self.table.remove(&old);
            }
        } else if self.learned_total >= MAX_LEARNED {
            return (moved, true);
        }
        let port = self.ports[from].as_mut().expect("sending port exists");
        port.learned.push_back(src);
        port.counts.learned = port.learned.len();
        self.learned_total += 1;
        self.table.insert(src, Entry::Learned(from));
        (moved, false)
    }
}

impl Switch {
    /// An empty switch.
    pub fn new() -> Arc<Self> {
        Arc::new(Switch::default())
    }

    /// Attaches a learning port with the default quota ([`DEFAULT_LEARNED_PER_PORT`]); frames for
    /// it go to `sink`.
    pub fn add_port(&self, sink: Arc<dyn PortSink>) -> PortId {
        self.add_port_with(
            sink,
            PortPolicy::Learning {
                max: DEFAULT_LEARNED_PER_PORT,
            },
        )
        .expect("a learning port binds nothing")
    }

    /// Attaches a port with `policy`. Binding an address another port is bound to (or a group
    /// address) is refused; an address a learning port had learned is taken over.
    pub fn add_port_with(
        &self,
        sink: Arc<dyn PortSink>,
        policy: PortPolicy,
    ) -> std::result::Result<PortId, BindError> {
        let mut inner = self.inner.lock().expect("switch lock");
        if let PortPolicy::Bound(mac) = policy {
            if is_multicast(&mac) {
                return Err(BindError::Multicast { mac });
            }
            match inner.table.get(&mac).copied() {
                Some(Entry::Bound(port)) => return Err(BindError::InUse { mac, port }),
                Some(Entry::Learned(p)) => {
                    inner.unlearn(p, &mac);
                    inner.table.remove(&mac);
                }
                None => {}
            }
        }
        let port = Port {
            sink,
            policy,
            learned: VecDeque::new(),
            counts: PortCounts::default(),
        };
        let id = if let Some(free) = inner.ports.iter().position(Option::is_none) {
            inner.ports[free] = Some(port);
            free
        } else {
            inner.ports.push(Some(port));
            inner.ports.len() - 1
        };
        if let PortPolicy::Bound(mac) = policy {
            inner.table.insert(mac, Entry::Bound(id));
        }
        Ok(id)
    }

    /// Detaches a port and forgets its addresses (bound and learned).
    pub fn remove_port(&self, port: PortId) -> Result<()> {
        let mut inner = self.inner.lock().expect("switch lock");
        let removed = match inner.ports.get_mut(port) {
            Some(slot @ Some(_)) => slot.take().expect("checked"),
            _ => return Err(Error::NoSuchPort { port }),
        };
        inner.learned_total -= removed.learned.len();
        inner.table.retain(|_, e| e.port() != port);
        Ok(())
    }

    /// The port an address is bound to or was learned on.
    pub fn lookup(&self, mac: &Mac) -> Option<PortId> {
        self.inner
            .lock()
            .expect("switch lock")
            .table
            .get(mac)
            .map(|e| e.port())
    }

    /// One port's counts, if it exists.
    pub fn port_counts(&self, port: PortId) -> Option<PortCounts> {
        let inner = self.inner.lock().expect("switch lock");
        inner.ports.get(port)?.as_ref().map(|p| p.counts)
    }

    /// The switch's counts.
    pub fn stats(&self) -> &SwitchStats {
        &self.stats
    }

    /// Switches one frame arriving on port `from`: checks its length and its source address
    /// against the port's policy (learning it on a learning port), then delivers it to the port
    /// its destination is on, or floods it: broadcast and multicast to every other port, unknown
    /// unicast to the other learning ports. Sinks run after the switch's lock is released, so a
    /// sink may send.
    pub fn send(&self, from: PortId, frame: &[u8]) -> Result<()> {
        if frame.len() < ETH_HEADER_LEN {
            self.stats.bad_length.fetch_add(1, Ordering::Relaxed);
            return Err(Error::ShortFrame { len: frame.len() });
        }
        if frame.len() > MAX_FRAME_LEN {
            self.stats.bad_length.fetch_add(1, Ordering::Relaxed);
            return Err(Error::FrameTooLong {
                len: frame.len(),
                max: MAX_FRAME_LEN,
            });
        }
        let dst: Mac = frame[0..6].try_into().expect("6 bytes");
        let src: Mac = frame[6..12].try_into().expect("6 bytes");
        self.stats.frames_in.fetch_add(1, Ordering::Relaxed);
        let targets: Vec<Arc<dyn PortSink>> = {
            let mut guard = self.inner.lock().expect("switch lock");
            let inner = &mut *guard;
            let Some(Some(port)) = inner.ports.get_mut(from) else {
                return Err(Error::NoSuchPort { port: from });
            };
            port.counts.frames_in += 1;
            let allowed = match port.policy {
                PortPolicy::Bound(mac) => src == mac,
                PortPolicy::Learning { .. } => {
                    !is_multicast(&src) && !matches!(inner.table.get(&src), Some(Entry::Bound(_)))
                }
            };
            if !allowed {
                port.counts.spoofed += 1;
                self.stats.spoofed.fetch_add(1, Ordering::Relaxed);
                return Err(Error::SourceNotAllowed {
                    port: from,
                    mac: format_mac(&src),
                });
            }
            if let PortPolicy::Learning { max } = port.policy {
                let (moved, refused) = inner.learn(from, max, src);
                if moved {
                    self.stats.moved.fetch_add(1, Ordering::Relaxed);
                }
                if refused {
                    self.stats.learn_refused.fetch_add(1, Ordering::Relaxed);
                }
            }
            let known = if is_multicast(&dst) {
                None
            } else {
                inner.table.get(&dst).map(|e| e.port())
            };
            match known {
                Some(p) if p == from => {
                    self.stats.filtered.fetch_add(1, Ordering::Relaxed);
                    Vec::new()
                }
                Some(p) => {
                    self.stats.unicast.fetch_add(1, Ordering::Relaxed);
                    inner.ports[p].iter().map(|p| p.sink.clone()).collect()
                }
                None => {
                    self.stats.flooded.fetch_add(1, Ordering::Relaxed);
                    let unicast = !is_multicast(&dst);
                    inner
                        .ports
                        .iter()
                        .enumerate()
                        .filter(|&(i, _)| i != from)
                        .filter_map(|(_, p)| p.as_ref())
                        .filter(|p| !unicast || matches!(p.policy, PortPolicy::Learning { .. }))
                        .map(|p| p.sink.clone())
                        .collect()
                }
            }
        };
        for t in targets {
            t.deliver(frame);
        }
        Ok(())
    }
}

/// A guest port: a bounded queue of frames waiting for the guest's receive buffers, and a callback
/// that tells the adapter there is something to deliver.
pub struct QueuedPort {
    frames: ArrayQueue<Vec<u8>>,
    wake: Box<dyn Fn() + Send + Sync>,
    dropped: AtomicU64,
}

impl fmt::Debug for QueuedPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueuedPort")
            .field("queued", &self.frames.len())
            .field("dropped", &self.dropped)
            .finish()
    }
}

impl QueuedPort {
    /// A port holding at most `capacity` frames; `wake` runs after each frame is queued.
    pub fn new(capacity: usize, wake: Box<dyn Fn() + Send + Sync>) -> Arc<Self> {
        Arc::new(QueuedPort {
            frames: ArrayQueue::new(capacity.max(1)),
            wake,
            dropped: AtomicU64::new(0),
        })
    }

    /// The oldest queued frame.
    pub fn pop(&self) -> Option<Vec<u8>> {
        self.frames.pop()
    }

    /// Frames queued.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Frames dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl PortSink for QueuedPort {
    fn deliver(&self, frame: &[u8]) {
        if self.frames.push(frame.to_vec()).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        (self.wake)();
    }
}

/// What the echo peer answered.
#[derive(Debug, Default)]
pub struct EchoStats {
    /// pvkit echo frames (EtherType 0x88b5) sent back.
    pub echoed: AtomicU64,
    /// ARP replies for its IPv4 address.
    pub arp: AtomicU64,
    /// ICMP echo replies.
    pub icmp: AtomicU64,
    /// UDP datagrams to port 7 echoed.
    pub udp: AtomicU64,
    /// Frames for it that it did not understand.
    pub ignored: AtomicU64,
}

/// The host test port: a peer with its own MAC and IPv4 address that answers
/// - pvkit echo frames (EtherType 0x88b5, the guest's `net-echo` workload): sent back with the
///   addresses swapped;
/// - ARP requests for its address, ICMP echo requests (ping) and UDP to port 7 (echo) from a Linux
///   guest.
pub struct EchoPeer {
    mac: Mac,
    ip: [u8; 4],
    switch: Weak<Switch>,
    port: OnceLock<PortId>,
    stats: EchoStats,
    ip_id: AtomicUsize,
}

impl fmt::Debug for EchoPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EchoPeer")
            .field("mac", &self.mac)
            .field("ip", &self.ip)
            .field("stats", &self.stats)
            .finish()
    }
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

impl EchoPeer {
    /// Creates the peer and attaches it to `switch` on a learning port (its address is learned from
    /// its first reply; another learning port could claim it). [`try_attach`](Self::try_attach)
    /// binds the port to `mac` instead, which is what a daemon serving untrusted guests wants.
    pub fn attach(switch: &Arc<Switch>, mac: Mac, ip: [u8; 4]) -> Arc<Self> {
        let peer = Self::new(switch, mac, ip);
        let port = switch.add_port(peer.clone());
        peer.port.set(port).expect("port set once");
        peer
    }

    fn new(switch: &Arc<Switch>, mac: Mac, ip: [u8; 4]) -> Arc<Self> {
        Arc::new(EchoPeer {
            mac,
            ip,
            switch: Arc::downgrade(switch),
            port: OnceLock::new(),
            stats: EchoStats::default(),
            ip_id: AtomicUsize::new(1),
        })
    }

    /// Creates the peer and attaches it to `switch` on a port bound to `mac`: nobody else can send
    /// from its address, and frames for it are never flooded elsewhere.
    pub fn try_attach(
        switch: &Arc<Switch>,
        mac: Mac,
        ip: [u8; 4],
    ) -> std::result::Result<Arc<Self>, BindError> {
        let peer = Self::new(switch, mac, ip);
        let port = switch.add_port_with(peer.clone(), PortPolicy::Bound(mac))?;
        peer.port.set(port).expect("port set once");
        Ok(peer)
    }

    /// What it answered so far.
    pub fn stats(&self) -> &EchoStats {
        &self.stats
    }

    /// Its port on the switch.
    pub fn port(&self) -> PortId {
        *self.port.get().expect("attached")
    }

    /// The reply to one frame, if any.
    pub fn answer(&self, frame: &[u8]) -> Option<Vec<u8>> {
        if frame.len() < ETH_HEADER_LEN {
            return None;
        }
        let dst: Mac = frame[0..6].try_into().ok()?;
        let src: Mac = frame[6..12].try_into().ok()?;
        let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
        let for_me = dst == self.mac;
        let mut out = Vec::with_capacity(frame.len());
        out.extend_from_slice(&src);
        out.extend_from_slice(&self.mac);
        out.extend_from_slice(&frame[12..14]);
        let body = &frame[ETH_HEADER_LEN..];
        match ethertype {
            ETHERTYPE_PVKIT_ECHO if for_me => {
                out.extend_from_slice(body);
                self.stats.echoed.fetch_add(1, Ordering::Relaxed);
                Some(out)
            }
            ETHERTYPE_ARP if body.len() >= 28 => {
                // htype 1, ptype IPv4, hlen 6, plen 4, op 1 (request), target IP ours.
                let request = body[0..8] == [0, 1, 8, 0, 6, 4, 0, 1];
                if !request || body[24..28] != self.ip {
                    return None;
                }
                out.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
                out.extend_from_slice(&self.mac);
                out.extend_from_slice(&self.ip);
                out.extend_from_slice(&body[8..18]); // requester's MAC and IP
                self.stats.arp.fetch_add(1, Ordering::Relaxed);
                Some(out)
            }
            ETHERTYPE_IPV4 if for_me && body.len() >= 20 => self.answer_ipv4(body, out),
            _ => {
                if for_me {
                    self.stats.ignored.fetch_add(1, Ordering::Relaxed);
                }
                None
            }
        }
    }

    fn answer_ipv4(&self, ip: &[u8], mut out: Vec<u8>) -> Option<Vec<u8>> {
        let ihl = usize::from(ip[0] & 0xf) * 4;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        if ip[0] >> 4 != 4 || ihl < 20 || total < ihl || total > ip.len() || ip[16..20] != self.ip {
            self.stats.ignored.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let proto = ip[9];
        let payload = &ip[ihl..total];
        let mut reply_payload = payload.to_vec();
        match proto {
            1 if payload.len() >= 8 && payload[0] == 8 => {
                reply_payload[0] = 0; // echo reply
                reply_payload[2..4].fill(0);
                let c = checksum(&reply_payload);
                reply_payload[2..4].copy_from_slice(&c.to_be_bytes());
                self.stats.icmp.fetch_add(1, Ordering::Relaxed);
            }
            17 if payload.len() >= 8 && payload[2..4] == [0, 7] => {
                reply_payload[0..2].copy_from_slice(&payload[2..4]);
                reply_payload[2..4].copy_from_slice(&payload[0..2]);
                reply_payload[6..8].fill(0); // no UDP checksum (allowed over IPv4)
                self.stats.udp.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                self.stats.ignored.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        }
        let mut hdr = [0u8; 20];
        hdr[0] = 0x45;
        hdr[2..4].copy_from_slice(&((20 + reply_payload.len()) as u16).to_be_bytes());
        let id = self.ip_id.fetch_add(1, Ordering::Relaxed) as u16;
        hdr[4..6].copy_from_slice(&id.to_be_bytes());
        hdr[8] = 64;
        hdr[9] = proto;
        hdr[12..16].copy_from_slice(&self.ip);
        hdr[16..20].copy_from_slice(&ip[12..16]);
        let c = checksum(&hdr);
        hdr[10..12].copy_from_slice(&c.to_be_bytes());
        out.extend_from_slice(&hdr);
        out.extend_from_slice(&reply_payload);
        Some(out)
    }
}

impl PortSink for EchoPeer {
    fn deliver(&self, frame: &[u8]) {
        if let Some(reply) = self.answer(frame)
            && let (Some(switch), Some(&port)) = (self.switch.upgrade(), self.port.get())
        {
            // The peer's replies are never for itself, so this recursion is one level deep.
            let _ = switch.send(port, &reply);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Mac = [2, 0, 0, 0, 0, 0xa];
    const B: Mac = [2, 0, 0, 0, 0, 0xb];
    const C: Mac = [2, 0, 0, 0, 0, 0xc];
    const BCAST: Mac = [0xff; 6];

    fn frame(dst: Mac, src: Mac, ethertype: u16, body: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(body);
        f
    }

    fn port(sw: &Switch) -> (PortId, Arc<QueuedPort>) {
        let p = QueuedPort::new(16, Box::new(|| {}));
        (sw.add_port(p.clone()), p)
    }

    fn drain(p: &QueuedPort) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| p.pop()).collect()
    }

    #[test]
    fn learns_then_forwards_unicast_and_floods_unknown() {
        let sw = Switch::new();
        let (pa, qa) = port(&sw);
        let (pb, qb) = port(&sw);
        let (_pc, qc) = port(&sw);
        // Unknown destination: flooded to everyone but the sender.
        let f1 = frame(B, A, ETHERTYPE_PVKIT_ECHO, b"hello b");
        sw.send(pa, &f1).unwrap();
        assert!(drain(&qa).is_empty());
        assert_eq!(drain(&qb), vec![f1.clone()]);
        assert_eq!(drain(&qc), vec![f1]);
        assert_eq!(sw.lookup(&A), Some(pa));
        // B answers: A is known now, so only A gets it; B is learned too.
        let f2 = frame(A, B, ETHERTYPE_PVKIT_ECHO, b"hello a");
        sw.send(pb, &f2).unwrap();
        assert_eq!(drain(&qa), vec![f2]);
        assert!(drain(&qb).is_empty() && drain(&qc).is_empty());
        // And A to B is unicast from now on.
        let f3 = frame(B, A, ETHERTYPE_PVKIT_ECHO, b"again");
        sw.send(pa, &f3).unwrap();
        assert_eq!(drain(&qb), vec![f3.clone()]);
        assert!(drain(&qc).is_empty());
        // Broadcast floods even with everything learned.
        let f4 = frame(BCAST, A, 0x0806, &[0; 28]);
        sw.send(pa, &f4).unwrap();
        assert_eq!(drain(&qb).len() + drain(&qc).len(), 2);
        assert_eq!(sw.stats().flooded.load(Ordering::Relaxed), 2);
        assert_eq!(sw.stats().unicast.load(Ordering::Relaxed), 2);
        // A port that moves is relearned; a removed port is forgotten and floods again.
        sw.remove_port(pb).unwrap();
        assert_eq!(sw.lookup(&B), None);
        sw.send(pa, &frame(B, A, ETHERTYPE_PVKIT_ECHO, b"x")).unwrap();
        assert_eq!(drain(&qc).len(), 1);
        assert!(matches!(
            sw.send(pa, &[0u8; 10]),
            Err(Error::ShortFrame { len: 10 })
        ));
        assert!(matches!(sw.send(pb, &f3), Err(Error::NoSuchPort { .. })));
    }

    #[test]
    fn full_port_drops_and_counts() {
        let sw = Switch::new();
        let (pa, _) = port(&sw);
        let q = QueuedPort::new(2, Box::new(|| {}));
        sw.add_port(q.clone());
        for i in 0..5u8 {
            sw.send(pa, &frame(B, A, ETHERTYPE_PVKIT_ECHO, &[i])).unwrap();
        }
        assert_eq!(q.len(), 2);
        assert_eq!(q.dropped(), 3);
        assert_eq!(q.pop().unwrap()[14], 0, "oldest frames kept");
    }

    #[test]
    fn echo_peer_answers_pvkit_arp_ping_and_udp() {
        let sw = Switch::new();
        let peer_mac = ring_protocol::abi::pvkit_echo::PEER_MAC;
        let peer_ip = [10, 0, 2, 1];
        let peer = EchoPeer::try_attach(&sw, peer_mac, peer_ip).unwrap();
        let (g, q) = port(&sw);

        let body: Vec<u8> = (0..100u8).collect();
        sw.send(g, &frame(peer_mac, C, ETHERTYPE_PVKIT_ECHO, &body))
            .unwrap();
        let back = drain(&q);
        assert_eq!(back, vec![frame(C, peer_mac, ETHERTYPE_PVKIT_ECHO, &body)]);

        // ARP who-has 10.0.2.1 tell 10.0.2.15.
        let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
        arp.extend_from_slice(&C);
        arp.extend_from_slice(&[10, 0, 2, 15]);
        arp.extend_from_slice(&[0; 6]);
        arp.extend_from_slice(&peer_ip);
        sw.send(g, &frame(BCAST, C, ETHERTYPE_ARP, &arp)).unwrap();
        let reply = drain(&q).pop().expect("arp reply");
        assert_eq!(&reply[0..6], &C);
        assert_eq!(&reply[14 + 6..14 + 8], &[0, 2], "ARP reply op");
        assert_eq!(&reply[14 + 8..14 + 14], &peer_mac, "sender MAC is the peer's");
        assert_eq!(&reply[14 + 24..14 + 28], &[10, 0, 2, 15]);

        // ICMP echo request with a payload.
        let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
        icmp.extend_from_slice(b"ping payload!");
        let c = checksum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0];
        ip.extend_from_slice(&[10, 0, 2, 15]);
        ip.extend_from_slice(&peer_ip);
        let total = (20 + icmp.len()) as u16;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        let c = checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        ip.extend_from_slice(&icmp);
        sw.send(g, &frame(peer_mac, C, ETHERTYPE_IPV4, &ip)).unwrap();
        let reply = drain(&q).pop().expect("icmp reply");
        let rip = &reply[14..];
        assert_eq!(checksum(&rip[..20]), 0, "IPv4 header checksum valid");
        assert_eq!(&rip[12..16], &peer_ip);
        assert_eq!(&rip[16..20], &[10, 0, 2, 15]);
        assert_eq!(rip[20], 0, "echo reply");
        assert_eq!(checksum(&rip[20..]), 0, "ICMP checksum valid");
        assert_eq!(&rip[28..], b"ping payload!");

        // UDP to port 7.
        let mut udp = vec![0x30, 0x39, 0, 7, 0, 13, 0, 0];
        udp.extend_from_slice(b"udp!!");
        let mut ip2 = ip[..20].to_vec();
        ip2[9] = 17;
        ip2[2..4].copy_from_slice(&((20 + udp.len()) as u16).to_be_bytes());
        ip2.extend_from_slice(&udp);
        sw.send(g, &frame(peer_mac, C, ETHERTYPE_IPV4, &ip2)).unwrap();
        let reply = drain(&q).pop().expect("udp reply");
        assert_eq!(&reply[14 + 20..14 + 24], &[0, 7, 0x30, 0x39]);
        assert_eq!(&reply[14 + 28..], b"udp!!");

        let s = peer.stats();
        assert_eq!(
            (
                s.echoed.load(Ordering::Relaxed),
                s.arp.load(Ordering::Relaxed),
                s.icmp.load(Ordering::Relaxed),
                s.udp.load(Ordering::Relaxed)
            ),
            (1, 1, 1, 1)
        );
        // Frames for someone else: no answer.
        sw.send(g, &frame(B, C, ETHERTYPE_PVKIT_ECHO, &body)).unwrap();
        assert!(drain(&q).is_empty());
    }

    fn bound(sw: &Switch, mac: Mac) -> (PortId, Arc<QueuedPort>) {
        let p = QueuedPort::new(64, Box::new(|| {}));
        (sw.add_port_with(p.clone(), PortPolicy::Bound(mac)).unwrap(), p)
    }

    fn learning(sw: &Switch, max: usize) -> (PortId, Arc<QueuedPort>) {
        let p = QueuedPort::new(64, Box::new(|| {}));
        (
            sw.add_port_with(p.clone(), PortPolicy::Learning { max }).unwrap(),
            p,
        )
    }

    /// A cheap deterministic stream of random unicast source addresses.
    fn random_macs(n: usize, seed: u64) -> impl Iterator<Item = Mac> {
        let mut x = seed | 1;
        (0..n).map(move |_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = x.to_le_bytes();
            [b[0] & 0xfe, b[1], b[2], b[3], b[4], b[5]]
        })
    }

    const HOST: Mac = [0x5a, 0, 0, 0, 0, 0x99];

    /// A guest (bound port) sending from another guest's, the echo peer's or the host's address
    /// behind the tap: every such frame is dropped and counted on the sender's port, and the
    /// victims keep their traffic.
    #[test]
    fn switch_mac_spoof_of_another_guest_the_echo_peer_or_the_host_is_dropped_and_counted() {
        let sw = Switch::new();
        let (ga, qa) = bound(&sw, A);
        let (gb, qb) = bound(&sw, B);
        let peer_mac = [2, 0x70, 0x76, 0x6b, 0x69, 0x74];
        let peer = EchoPeer::try_attach(&sw, peer_mac, [10, 0, 2, 1]).unwrap();
        let (tap, qt) = learning(&sw, 16);
        // The host speaks first: its address is learned on the tap.
        sw.send(tap, &frame(BCAST, HOST, ETHERTYPE_ARP, &[0; 28]))
            .unwrap();
        assert_eq!(sw.lookup(&HOST), Some(tap));
        drain(&qa);
        drain(&qb);

        for victim in [B, peer_mac, HOST] {
            let e = sw
                .send(ga, &frame(BCAST, victim, ETHERTYPE_ARP, &[0; 28]))
                .unwrap_err();
            assert!(
                matches!(e, Error::SourceNotAllowed { port, .. } if port == ga),
                "{e}"
            );
        }
        // A multicast source and an unknown one are refused too; its own address passes.
        assert!(
            sw.send(ga, &frame(B, [3, 0, 0, 0, 0, 1], ETHERTYPE_PVKIT_ECHO, b"x"))
                .is_err()
        );
        assert!(sw.send(ga, &frame(B, C, ETHERTYPE_PVKIT_ECHO, b"x")).is_err());
        sw.send(ga, &frame(B, A, ETHERTYPE_PVKIT_ECHO, b"hello")).unwrap();
        assert_eq!(sw.port_counts(ga).unwrap().spoofed, 5);
        assert_eq!(sw.port_counts(ga).unwrap().frames_in, 6);
        assert_eq!(sw.stats().spoofed.load(Ordering::Relaxed), 5);
        // Nothing the spoofer sent reached anyone but B's one good frame; the table is unchanged.
        assert_eq!(drain(&qb), vec![frame(B, A, ETHERTYPE_PVKIT_ECHO, b"hello")]);
        assert!(drain(&qt).is_empty());
        assert_eq!(peer.stats().arp.load(Ordering::Relaxed), 0);
        assert_eq!(
            (sw.lookup(&B), sw.lookup(&peer_mac), sw.lookup(&HOST)),
            (Some(gb), Some(peer.port()), Some(tap))
        );
        // A learning port cannot claim a bound address either.
        assert!(sw.send(tap, &frame(BCAST, B, ETHERTYPE_ARP, &[0; 28])).is_err());
        assert_eq!(sw.port_counts(tap).unwrap().spoofed, 1);
        assert_eq!(sw.lookup(&B), Some(gb));
        // Binding an address twice is refused.
        let q = QueuedPort::new(1, Box::new(|| {}));
        assert_eq!(
            sw.add_port_with(q.clone(), PortPolicy::Bound(A)),
            Err(BindError::InUse { mac: A, port: ga })
        );
        assert!(matches!(
            sw.add_port_with(q, PortPolicy::Bound(BCAST)),
            Err(BindError::Multicast { .. })
        ));
    }

    /// A port sending 100,000 random source addresses: from a bound port they are all dropped;
    /// from a learning port only its own quota is learned (its own oldest entries are evicted).
    /// Either way the other ports' entries stay and their unicast traffic is never flooded to the
    /// flooder (no hub).
    #[test]
    fn switch_random_mac_flood_neither_floods_others_unicast_nor_evicts_their_entries() {
        let sw = Switch::new();
        let (ga, qa) = bound(&sw, A);
        let (gb, qb) = bound(&sw, B);
        let (tap, qt) = learning(&sw, 16);
        let (vm, qv) = learning(&sw, 64);
        sw.send(tap, &frame(B, HOST, ETHERTYPE_PVKIT_ECHO, b"host to b"))
            .unwrap();
        assert_eq!(drain(&qb).len(), 1);
        let b_to_host = frame(HOST, B, ETHERTYPE_PVKIT_ECHO, b"b to host");
        let flooded_before = sw.stats().flooded.load(Ordering::Relaxed);

        let (mut at_tap, mut at_b, mut at_a, mut at_vm) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (sender, seed) in [(ga, 1), (vm, 3)] {
            for (i, src) in random_macs(100_000, seed).enumerate() {
                let _ = sw.send(sender, &frame(C, src, ETHERTYPE_PVKIT_ECHO, &[]));
                // Meanwhile B and the host talk.
                if i % 10_000 == 0 {
                    sw.send(gb, &b_to_host).unwrap();
                    sw.send(tap, &frame(B, HOST, ETHERTYPE_PVKIT_ECHO, b"host to b"))
                        .unwrap();
                    at_tap.extend(drain(&qt));
                    at_b.extend(drain(&qb));
                    at_a.extend(drain(&qa));
                    at_vm.extend(drain(&qv));
                }
                if i % 50 == 0 {
                    // The tap's reader keeps up with the flood it is sent.
                    at_tap.extend(drain(&qt));
                }
            }
        }
        assert_eq!(sw.port_counts(ga).unwrap().spoofed, 100_000, "bound: all dropped");
        let v = sw.port_counts(vm).unwrap();
        assert_eq!(
            (v.learned, v.evicted),
            (64, 100_000 - 64),
            "learning: its own quota only"
        );
        assert_eq!(sw.lookup(&HOST), Some(tap), "the host's entry survives");
        assert_eq!((sw.lookup(&A), sw.lookup(&B)), (Some(ga), Some(gb)));
        assert_eq!(sw.port_counts(tap).unwrap().learned, 1);
        // B's and the host's frames were unicast every time: the flooders never saw them.
        assert_eq!(at_tap.iter().filter(|f| **f == b_to_host).count(), 20);
        assert_eq!(at_b.len(), 20);
        assert!(at_a.is_empty(), "the bound flooder got nothing");
        assert!(at_vm.iter().all(|f| *f != b_to_host), "no hub");
        // The only floods were the learning port's unknown destination C (to the tap, the other
        // learning port), never to the bound ports.
        let flooded = sw.stats().flooded.load(Ordering::Relaxed) - flooded_before;
        assert_eq!(flooded, 100_000);
        assert_eq!(sw.stats().unicast.load(Ordering::Relaxed), 41);
    }

    /// The whole table stops learning at [`MAX_LEARNED`] entries instead of starting over: the
    /// entries it has stay, new addresses are counted as refused.
    #[test]
    fn a_full_table_stops_learning_and_keeps_every_entry() {
        let sw = Switch::new();
        let (tap, _qt) = learning(&sw, 16);
        sw.send(tap, &frame(BCAST, HOST, ETHERTYPE_PVKIT_ECHO, &[]))
            .unwrap();
        let greedy: Vec<(PortId, Arc<QueuedPort>)> = (0..3).map(|_| learning(&sw, 2000)).collect();
        for (i, (p, _)) in greedy.iter().enumerate() {
            for src in random_macs(2000, 100 + 2 * i as u64) {
                sw.send(*p, &frame(BCAST, src, ETHERTYPE_PVKIT_ECHO, &[]))
                    .unwrap();
            }
        }
        let learned: usize = greedy
            .iter()
            .map(|(p, _)| sw.port_counts(*p).unwrap().learned)
            .sum();
        assert_eq!(learned + 1, MAX_LEARNED);
        assert_eq!(
            sw.stats().learn_refused.load(Ordering::Relaxed),
            (6000 + 1 - MAX_LEARNED) as u64
        );
        assert_eq!(sw.lookup(&HOST), Some(tap));
        // Removing a port frees its entries for the others.
        sw.remove_port(greedy[0].0).unwrap();
        sw.send(tap, &frame(BCAST, C, ETHERTYPE_PVKIT_ECHO, &[])).unwrap();
        assert_eq!(sw.lookup(&C), Some(tap));
    }

    #[test]
    fn frames_longer_than_the_mtu_are_refused() {
        let sw = Switch::new();
        let (ga, _) = bound(&sw, A);
        let (_, qb) = bound(&sw, B);
        let mut f = frame(B, A, ETHERTYPE_PVKIT_ECHO, &vec![0; MAX_FRAME_LEN - 14]);
        sw.send(ga, &f).unwrap();
        f.push(0);
        assert!(matches!(
            sw.send(ga, &f),
            Err(Error::FrameTooLong { len, max: MAX_FRAME_LEN }) if len == MAX_FRAME_LEN + 1
        ));
        assert_eq!(drain(&qb).len(), 1);
        assert_eq!(sw.stats().bad_length.load(Ordering::Relaxed), 1);
    }
}
